//! `compare --locate`: where two models' activations first part. Both models run the first
//! window; every value of A's main graph is kept by name, and B's values are compared with
//! their namesakes as B computes them. The first value of B (in execution order) whose largest
//! difference exceeds the tolerance, relative to the scale of A's tensor, names the node to look
//! at when a transform that should be exact is not.
//!
//! Values are matched by name, which is what passes keep when they rewrite in place; a value
//! that a transform changes on purpose (a rotated residual stream) diverges by design, so
//! `--locate` is for models that should agree tensor by tensor.

use crate::{CliError, DriverOutput};
use ortho_codegen::cpu::{HostTensor, Plan, PlanOptions};
use ortho_ir::{Module, NodeId, ValueId};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

/// One compared value.
#[derive(Debug, Clone, Serialize)]
pub struct ValueDiff {
    pub value: String,
    /// The node that computes it in B (`MatMul producing '%v'`).
    pub node: String,
    pub max_abs: f64,
    /// `max_abs` over the largest |A| of the tensor.
    pub relative: f64,
}

/// What `--locate` found.
#[derive(Debug, Clone, Serialize)]
pub struct Located {
    /// Values of B compared with a namesake of A of the same shape and dtype.
    pub compared: usize,
    /// Values of B without such a namesake (new or reshaped by a transform).
    pub unmatched: usize,
    pub tolerance: f64,
    /// The first value beyond the tolerance, `None` when every compared value agrees.
    pub first: Option<ValueDiff>,
    /// The last value before it that agreed (the boundary of the bug).
    pub last_agreeing: Option<ValueDiff>,
}

impl Located {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "locate:             {} values compared by name ({} of B's without a namesake), tolerance {:e} relative",
            self.compared, self.unmatched, self.tolerance
        );
        match &self.first {
            None => {
                let _ = writeln!(s, "first divergence:   none");
            }
            Some(d) => {
                let _ = writeln!(
                    s,
                    "first divergence:   {} ({}), max |Δ| {:.6e}, relative {:.3e}",
                    d.value, d.node, d.max_abs, d.relative
                );
                if let Some(l) = &self.last_agreeing {
                    let _ = writeln!(
                        s,
                        "last agreeing:      {} ({}), relative {:.3e}",
                        l.value, l.node, l.relative
                    );
                }
            }
        }
        s
    }
}

/// The main graph's computed values (not inputs or constants), with the node computing each.
fn computed_values(m: &Module) -> Vec<(ValueId, NodeId)> {
    let g = m.main_graph();
    let order = g.toposort().unwrap_or_else(|_| g.node_ids());
    order
        .into_iter()
        .filter(|n| !g.node(*n).op.is_structural())
        .flat_map(|n| g.results(n).into_iter().map(move |v| (v, n)))
        .collect()
}

fn compile(m: &Module, path: &Path, threads: Option<usize>) -> Result<Plan, CliError> {
    let mut opts = PlanOptions::default();
    if let Some(t) = threads {
        opts.threads = t.max(1);
    }
    Plan::compile_with(m, &opts).map_err(|e| CliError::Compile {
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// The largest |B − A| and the largest |A| of two tensors of the same shape, in f64; `None`
/// for dtypes other than f32 and i64 (compared only when both sides have one of them).
fn diff(a: &HostTensor, b: &HostTensor) -> Option<(f64, f64)> {
    if a.shape() != b.shape() || a.dtype() != b.dtype() {
        return None;
    }
    let pairs: Vec<(f64, f64)> = match (a.as_f32(), b.as_f32(), a.as_i64(), b.as_i64()) {
        (Some(x), Some(y), _, _) => x
            .iter()
            .zip(y)
            .map(|(p, q)| (f64::from(*p), f64::from(*q)))
            .collect(),
        (_, _, Some(x), Some(y)) => x
            .iter()
            .zip(y)
            .map(|(p, q)| (*p as f64, *q as f64))
            .collect(),
        _ => return None,
    };
    let mut max_abs = 0.0f64;
    let mut scale = 0.0f64;
    for (p, q) in pairs {
        // NaN on one side only is a divergence; on both it is agreement.
        let d = if p.is_nan() || q.is_nan() {
            if p.is_nan() && q.is_nan() {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            (q - p).abs()
        };
        max_abs = max_abs.max(d);
        scale = scale.max(p.abs());
    }
    Some((max_abs, scale))
}

/// Runs both models on `feeds` and finds the first value of B that departs from A's.
pub fn locate(
    path_a: &Path,
    path_b: &Path,
    feeds: &[(&str, HostTensor)],
    tolerance: f64,
    threads: Option<usize>,
) -> Result<Located, CliError> {
    let ma = crate::input::load_module(path_a)?;
    let mb = crate::input::load_module(path_b)?;
    let (pa, pb) = (
        compile(&ma, path_a, threads)?,
        compile(&mb, path_b, threads)?,
    );
    let ga = ma.main_graph();
    let va = computed_values(&ma);
    let observe_a: Vec<ValueId> = va.iter().map(|(v, _)| *v).collect();
    let mut kept: HashMap<String, HostTensor> = HashMap::new();
    pa.run_with(feeds, &observe_a, &mut |v, t| {
        kept.insert(ga.value_name(v).to_string(), t.clone());
    })
    .map_err(crate::run::run_error)?;

    let gb = mb.main_graph();
    let vb = computed_values(&mb);
    let producer: HashMap<ValueId, NodeId> = vb.iter().copied().collect();
    let observe_b: Vec<ValueId> = vb.iter().map(|(v, _)| *v).collect();
    let mut found = Located {
        compared: 0,
        unmatched: 0,
        tolerance,
        first: None,
        last_agreeing: None,
    };
    pb.run_with(feeds, &observe_b, &mut |v, t| {
        let name = gb.value_name(v);
        let Some((max_abs, scale)) = kept.get(name).and_then(|a| diff(a, t)) else {
            found.unmatched += 1;
            return;
        };
        found.compared += 1;
        if found.first.is_some() {
            return;
        }
        let relative = if scale > 0.0 {
            max_abs / scale
        } else {
            max_abs
        };
        let d = ValueDiff {
            value: format!("%{name}"),
            node: producer
                .get(&v)
                .map_or_else(String::new, |n| gb.describe(*n)),
            max_abs,
            relative,
        };
        if relative > tolerance || relative.is_nan() {
            found.first = Some(d);
        } else {
            found.last_agreeing = Some(d);
        }
    })
    .map_err(crate::run::run_error)?;
    Ok(found)
}

/// `--locate` on a shard manifest is not supported: the values live in several modules.
pub fn refuse_manifests(a: &Path, b: &Path) -> Option<DriverOutput> {
    let manifest = |p: &Path| crate::shard::manifest::is_manifest(p);
    (manifest(a) || manifest(b)).then(|| {
        DriverOutput::failed(CliError::Usage(
            "--locate compares single models, not shard manifests",
        ))
    })
}
