//! `fold-norms`: moves the gains of RMSNorm / LayerNorm layers into the linear layers that read
//! them (ALGORITHMS.md §0.1.1), so the norms become O(d)-equivariant.
//!
//! Needs: nothing beyond a valid module; norms are found in every spelling (`ortho_ir::analysis::norm`).
//! Leaves: for every norm over the last axis whose output feeds only linear readers (pre-norm),
//! `W ← diag(γ) W` for each reader and `γ = 1`; for a LayerNorm with a shift β, each reader's
//! bias gets `b ← b + β W` and `β = 0` (only when every reader has a bias; otherwise the norm is
//! left alone and a note says why). Computed in f64 and cast once to each weight's dtype. Weights
//! are copy-on-write: a weight that something else also reads — the embedding table a tied head
//! reads through a Transpose — is copied for the folded reader (the head is untied; the
//! embedding stays unscaled). Norms on the stream itself (post-LN, sandwich norms) cannot be
//! folded and are reported in notes.
//!
//! LayerNorm → RMSNorm (SliceGPT; [`center`]): when every norm on the residual stream is a
//! pre-norm LayerNorm and nothing else reads the stream, the stream is first made zero-mean —
//! embedding rows, writer outputs (`W ← W − mean over output features`) and stream biases
//! (`b ← b − mean(b)`) are centered — then γ and β are folded as above (a reader without a bias
//! gets one, zeros, to take β), and each LayerNorm is replaced by an RMSNorm with γ = 1 and the
//! same epsilon: `RMSNormalization` when the opset is ≥ 23, else the decomposed
//! `Mul → ReduceMean → Add(eps) → Sqrt → Div` chain (a decomposed LayerNorm just loses its
//! `ReduceMean → Sub`). Afterwards the stream admits O(d). A post-norm stream (BERT-like) is
//! left as it was and the note names the norm that prevents it.

use crate::linalg::weights::{self, Rewrite, WeightError};
use crate::pass::{PassContext, PassError, PassErrorKind, PassResult};
use ortho_ir::analysis::norm::{Norm, NormKind, NormParam, Norms};
use ortho_ir::analysis::{match_linear, Linear, Side};
use ortho_ir::{Graph, GraphId, Module, NodeId, TensorData, TensorId};
use std::collections::HashMap;

mod center;

crate::declare_pass! {
    name: "fold-norms",
    summary: "Folds RMSNorm/LayerNorm gains (and LayerNorm shifts) into the linear layers reading them; on a pre-norm stream of LayerNorms, centers the stream and turns them into RMSNorms (SliceGPT).",
    run: run_pass,
}

/// What [`fold_norms`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FoldNormsStats {
    /// Norms whose parameters were folded.
    pub folded: usize,
    /// Reader weights rewritten.
    pub readers: usize,
    /// Weights copied because another reader kept the original (e.g. an untied head).
    pub untied: usize,
    /// Norms with a non-trivial gain or shift that could not be folded, with the reason.
    pub skipped: Vec<String>,
    /// Embedding tables, writers and stream biases centered (LayerNorm → RMSNorm).
    pub centered: usize,
    /// Zero biases given to LayerNorm readers without one, to take β.
    pub biases_added: usize,
    /// LayerNorms replaced by RMSNorms.
    pub converted: usize,
    /// Why the stream's LayerNorms stay LayerNorms (naming the node), when it has some.
    pub not_converted: Option<String>,
}

/// How one rewritten constant is computed.
enum Transform {
    /// Multiply the fibers along `axis` by `s` (a reader's input features by γ).
    Scale {
        axis: usize,
        s: Vec<f64>,
    },
    /// `b + β W` for the bias of a reader with weight `w` (input features on `in_axis`).
    ShiftBias {
        w: TensorId,
        in_axis: usize,
        beta: Vec<f64>,
    },
    Fill(f64),
}

/// Folds every foldable norm of the main graph; on a pre-norm stream of LayerNorms, first
/// centers the stream and then turns the LayerNorms into RMSNorms (see [`center`]).
pub fn fold_norms(m: &mut Module) -> Result<FoldNormsStats, PassError> {
    let gid = m.main;
    let mut stats = FoldNormsStats::default();
    let plan = match center::plan(m, gid) {
        Ok(p) => p,
        Err(why) => {
            stats.not_converted = Some(why.to_string());
            None
        }
    };
    if let Some(p) = &plan {
        let (centered, copies) = center::center(m, gid, p)?;
        stats.centered = centered;
        stats.untied += copies;
    }
    stats.biases_added = center::add_reader_biases(m, gid)?;
    fold_gains(m, gid, &mut stats)?;
    if let Some(p) = &plan {
        stats.converted = center::convert(m, gid, &p.norms)?;
    }
    Ok(stats)
}

/// The rewrites folding the norms needs, and the transform each one's key names.
#[derive(Default)]
struct GainPlan {
    rewrites: Vec<Rewrite>,
    transforms: Vec<Transform>,
}

impl GainPlan {
    fn push(
        &mut self,
        t: Transform,
        consumer: NodeId,
        slot: usize,
        konst: NodeId,
        transpose: Option<NodeId>,
    ) {
        self.transforms.push(t);
        self.rewrites.push(Rewrite {
            consumer,
            slot,
            konst,
            transpose,
            key: self.transforms.len() - 1,
        });
    }
}

/// A reader weight in f64 before any rewrite, with its dims (what a bias shift reads).
struct Original {
    values: Vec<f64>,
    dims: Vec<i64>,
}

/// Moves γ (and β) of every pre-norm norm into its linear readers: plans the rewrites norm by
/// norm, reads the weights the bias shifts need before anything changes, then rewrites.
fn fold_gains(m: &mut Module, gid: GraphId, stats: &mut FoldNormsStats) -> Result<(), PassError> {
    let plan = plan_gains(m, gid, stats)?;
    if plan.rewrites.is_empty() {
        return Ok(());
    }
    let originals = shifted_weights(m, gid, &plan.transforms)?;
    let make = |key: usize, old: &TensorData| transformed(&plan.transforms[key], old, &originals);
    let applied = weights::apply(m, gid, &plan.rewrites, "folded", &make)?;
    stats.untied += applied.copies;
    Ok(())
}

/// The rewrites of every norm whose gain or shift can be folded; the others go to
/// `stats.skipped` with the reason.
fn plan_gains(m: &Module, gid: GraphId, stats: &mut FoldNormsStats) -> Result<GainPlan, PassError> {
    let g = m.graph(gid);
    let norms = Norms::find(m, g);
    let mut plan = GainPlan::default();
    for norm in &norms.list {
        let gain = norm.gain.filter(|p| !p.trivial);
        let shift = norm
            .bias
            .filter(|p| !p.trivial && norm.kind == NormKind::Layer);
        if gain.is_none() && shift.is_none() {
            continue;
        }
        let readers = match foldable_readers(m, g, norm, shift.is_some()) {
            Ok(r) => r,
            Err(why) => {
                stats
                    .skipped
                    .push(format!("{}: {why}", g.describe(norm.node)));
                continue;
            }
        };
        let width = readers[0].in_features;
        for r in &readers {
            // `foldable_readers` admitted only readers with an input-feature operand.
            if let (Some(p), Some(f)) = (gain, r.features(Side::Input)) {
                let t = Transform::Scale {
                    axis: f.axis,
                    s: param_vector(m, gid, p, width)?,
                };
                plan.push(t, r.node, f.slot, f.weight.konst, f.weight.transpose);
            }
            if let (Some(p), Some(b)) = (shift, r.bias) {
                let t = Transform::ShiftBias {
                    w: r.weight.tensor,
                    in_axis: r.weight.in_axis,
                    beta: param_vector(m, gid, p, width)?,
                };
                plan.push(t, b.node, b.slot, b.konst, None);
            }
        }
        if let Some(p) = gain {
            plan.push(Transform::Fill(1.0), p.consumer, p.slot, p.konst, None);
        }
        if let Some(p) = shift {
            plan.push(Transform::Fill(0.0), p.consumer, p.slot, p.konst, None);
        }
        stats.folded += 1;
        stats.readers += readers.len();
    }
    Ok(plan)
}

/// The linear layers that read `norm`'s output, when the norm can be folded into them; else
/// why not.
fn foldable_readers(
    m: &Module,
    g: &Graph,
    norm: &Norm,
    shifted: bool,
) -> Result<Vec<Linear>, &'static str> {
    if !norm.last_axis {
        return Err("normalizes another axis than the last");
    }
    let readers: Option<Vec<Linear>> = g
        .users(norm.output)
        .iter()
        .map(|&(u, slot)| {
            if slot == 0 {
                match_linear(m, g, u)
            } else {
                None
            }
        })
        .collect();
    let readers = match readers {
        Some(r) if !r.is_empty() && !g.outputs.iter().any(|o| o.value == norm.output) => r,
        _ => {
            return Err("its output is not read only by linear layers (a norm on the stream: post-LN or sandwich)")
        }
    };
    let width = readers[0].in_features;
    if readers.iter().any(|r| r.in_features != width) {
        return Err("its readers disagree on the input width");
    }
    if readers.iter().any(|r| r.features(Side::Input).is_none()) {
        return Err("a reader is a structured linear (Kronecker sum or N:M-sparse): γ does not fold into its stored form");
    }
    if shifted && readers.iter().any(|r| r.dense().is_none()) {
        return Err("LayerNorm shift β ≠ 0 and a factorized reader (β moves into biases through a dense weight)");
    }
    if shifted && readers.iter().any(|r| r.bias.is_none()) {
        return Err("LayerNorm shift β ≠ 0 and a reader without a bias to take it");
    }
    Ok(readers)
}

/// A norm parameter as `n` values (a scalar is broadcast).
fn param_vector(m: &Module, gid: GraphId, p: NormParam, n: i64) -> Result<Vec<f64>, PassError> {
    let v = weights::decode(m.tensor(p.tensor)).map_err(|e| {
        PassError::at_graph(m, gid, p.konst, e.to_string()).with_kind(PassErrorKind::Weights)
    })?;
    match v.len() {
        1 => Ok(vec![v[0]; n as usize]),
        k if k as i64 == n => Ok(v),
        k => Err(PassError::at_graph(
            m,
            gid,
            p.konst,
            format!("a norm parameter of {k} elements for {n} features"),
        )
        .with_kind(PassErrorKind::Weights)),
    }
}

/// The original values of every weight a bias shift reads.
fn shifted_weights(
    m: &Module,
    gid: GraphId,
    transforms: &[Transform],
) -> Result<HashMap<TensorId, Original>, PassError> {
    transforms
        .iter()
        .filter_map(|t| match t {
            Transform::ShiftBias { w, .. } => Some(*w),
            _ => None,
        })
        .map(|w| {
            let t = m.tensor(w);
            let values = weights::decode(t).map_err(|e| {
                PassError::new(e.to_string())
                    .in_graph(gid)
                    .with_kind(PassErrorKind::Weights)
            })?;
            let dims = t.dims.clone();
            Ok((w, Original { values, dims }))
        })
        .collect()
}

/// The new value of a constant under `t`.
fn transformed(
    t: &Transform,
    old: &TensorData,
    originals: &HashMap<TensorId, Original>,
) -> Result<TensorData, WeightError> {
    // A scale along the last axis (an untied head stored [vocab, d]) goes block by block.
    if let Transform::Scale { axis, s } = t {
        if *axis + 1 == old.dims.len() && old.dims.len() >= 2 && s.len() as i64 == old.dims[*axis] {
            return weights::map_rows(old, s.len(), &|v, _| {
                Ok(v.iter().zip(s.iter().cycle()).map(|(x, g)| x * g).collect())
            });
        }
    }
    let mut v = weights::decode(old)?;
    match t {
        Transform::Scale { axis, s } => weights::scale_axis(&mut v, &old.dims, *axis, s)?,
        Transform::Fill(x) => v.iter_mut().for_each(|e| *e = *x),
        Transform::ShiftBias { w, in_axis, beta } => {
            let o = originals
                .get(w)
                .ok_or_else(|| WeightError::Shape("a bias shift without its weight".into()))?;
            shift_bias(&mut v, o, *in_axis, beta)?;
        }
    }
    weights::encode_like(old, &v)
}

/// `b ← b + β W` for a reader weight `w` whose input features lie on `in_axis`.
fn shift_bias(
    b: &mut [f64],
    w: &Original,
    in_axis: usize,
    beta: &[f64],
) -> Result<(), WeightError> {
    let (rows, cols) = (w.dims[0] as usize, w.dims[1] as usize);
    let out = if in_axis == 0 { cols } else { rows };
    if b.len() != out {
        return Err(WeightError::Shape(format!(
            "a bias of {} elements for {out} outputs",
            b.len()
        )));
    }
    for (o, bo) in b.iter_mut().enumerate() {
        *bo += (0..beta.len())
            .map(|i| {
                beta[i]
                    * if in_axis == 0 {
                        w.values[i * cols + o]
                    } else {
                        w.values[o * cols + i]
                    }
            })
            .sum::<f64>();
    }
    Ok(())
}

fn run_pass(m: &mut Module, cx: &mut PassContext) -> Result<PassResult, PassError> {
    let s = fold_norms(m)?;
    cx.stats(&[
        ("folded", s.folded),
        ("readers", s.readers),
        ("untied", s.untied),
        ("skipped", s.skipped.len()),
    ]);
    // Only models with LayerNorms have these; the others' reports stay as they were.
    for (k, v) in [
        ("centered", s.centered),
        ("biases-added", s.biases_added),
        ("converted", s.converted),
    ] {
        if v > 0 {
            cx.stat(k, v as u64);
        }
    }
    for n in &s.skipped {
        cx.note(format!("not folded: {n}"));
    }
    if s.untied > 0 {
        cx.note(format!("{} weight(s) copied so that other readers keep the original values (e.g. a head untied from the embedding)", s.untied));
    }
    if let Some(why) = &s.not_converted {
        cx.note(format!("LayerNorms kept (not converted to RMSNorm): {why}"));
    }
    if s.converted > 0 {
        cx.note(format!(
            "{} LayerNorm(s) converted to RMSNorm after centering {} weight(s) of the stream",
            s.converted, s.centered
        ));
    }
    Ok(PassResult::changed(
        s.folded > 0 || s.converted > 0 || s.centered > 0 || s.biases_added > 0,
    ))
}
