//! `denoise-prune{method=sparsegpt|wanda|magnitude sparsity=0.5 pattern=unstructured|N:M
//! iters=50 lr=0.01 rotation-samples=32 keep=better|always}`: DenoiseRotator's own protocol
//! (ALGORITHMS.md §2.1) — rotate each decoder layer, then prune it, one layer after the other —
//! with a check that the rotation actually helps.
//!
//! Needs: what `denoise-rotate` needs (a pre-norm transformer whose stream admits O(d): run
//! `fold-norms` first; q/k/v/o linears, a gated MLP) and calibration data (always, also for
//! magnitude: the rotation is chosen on this layer's statistics and checked on them).
//! Does, for block `i` in order, on the outputs of the already rotated and pruned blocks
//! before it (`calib::walk_layers`, "true sequential"):
//! 1. collects the input Hessians of q/k/v, o, gate/up and down with the block still dense,
//!    on the first `rotation-samples` calibration sequences (32 by default; pruning itself
//!    always uses the whole set);
//! 2. minimizes the entropy objective of the method's importance scores over `Q1 ∈ SO(d)` and
//!    one `R2_j ∈ SO(head_dim)` per KV head (Adam through the Cayley map, best iterate kept —
//!    `denoise::optim`);
//! 3. with `keep=better`, prunes the layer's seven linears on those Hessians both in the
//!    original basis and rotated (`denoise::select`), runs the block with each variant's weights
//!    on the same sequences and keeps the rotation only when the block's output is closer to the
//!    dense block's (`‖Y − Y_ref‖ / ‖Y_ref‖`) — a rotation that makes pruning worse is dropped
//!    and reported; `keep=always` keeps every optimized rotation;
//! 4. folds a kept rotation into the block's weights in f64 (`denoise::fold::fold_layer`) with
//!    `h ↦ h Q1` on the stream entering it and `h ↦ h Q1ᵀ` on the stream leaving it; the exit of
//!    block `i` and the entry of block `i + 1` share one `MatMul` (`Q_iᵀ Q_{i+1}`), and the last
//!    block's exit is folded into the head, so at most one `d × d` `MatMul` per block is added;
//! 5. prunes the block in the true-sequential groups `[k,v,q] → [o] → [up,gate] → [down]`
//!    exactly as `prune` does (`prune::prune_block`).
//!
//! Leaves: the rotated, pruned model (dense weights with zeros, exact N:M patterns); one note per
//! block (entropy before → after, both pruning errors, the decision, each linear's sparsity).
//! `iters=0` folds nothing and gives exactly `prune`'s result. The boundary `MatMul`s end the
//! residual stream for the structure analysis, so later layer-wise passes refuse the model.

use crate::calib::{missing_calibration, walk_layers, LayerCx};
use crate::options::{OptionKind, OptionSpec, PassOptions};
use crate::pass::{Pass, PassContext, PassError, PassResult};
use crate::registry::PassInfo;
use crate::transforms::denoise::fold::{self, Layers};
use crate::transforms::denoise::loss::Importance;
use crate::transforms::denoise::optim::{optimize, AdamOptions};
use crate::transforms::denoise::select::{pruned_layer, LayerHessians, LayerRotation};
use crate::transforms::denoise_rotate::layer_objective;
use crate::transforms::prune::{linear_weight, set_linear_weight};
use crate::transforms::prune::{
    prune_block, record, PruneOptions, PruneStats, PATTERN_OPTION, ROLES, SPARSITY_OPTION,
};
use crate::transforms::prune_math::{Pattern, PruneMethod, PruneSpec};
use faer::Mat;
use ortho_ir::analysis::linear::{match_linear, Linear};
use ortho_ir::eval::{EvalTensor, Gram, Stat, StatKind, StatRequest};
use ortho_ir::{Module, NodeId};
use std::fmt::Write as _;

static METHODS: &[&str] = &["sparsegpt", "wanda", "magnitude"];
static KEEP: &[&str] = &["better", "always"];

static OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "method",
        kind: OptionKind::Enum(METHODS),
        default: "sparsegpt",
        doc: "Pruning method; its importance scores are what the rotation concentrates.",
    },
    SPARSITY_OPTION,
    PATTERN_OPTION,
    OptionSpec {
        name: "iters",
        kind: OptionKind::Int { min: 0, max: 100_000 },
        default: "50",
        doc: "Adam steps per layer; 0 rotates nothing (plain true-sequential pruning).",
    },
    OptionSpec {
        name: "lr",
        kind: OptionKind::Float,
        default: "0.01",
        doc: "Adam learning rate on the skew-symmetric Cayley parameters.",
    },
    OptionSpec {
        name: "rotation-samples",
        kind: OptionKind::Int { min: 0, max: 1_000_000 },
        default: "32",
        doc: "Calibration sequences whose statistics choose and check each rotation (the first ones; 0 = all). Pruning always uses all.",
    },
    OptionSpec {
        name: "keep",
        kind: OptionKind::Enum(KEEP),
        default: "better",
        doc: "better: keep a block's rotation only if the pruned block's output is closer to the dense block's (both variants are run); always: keep every rotation.",
    },
];

pub const INFO: PassInfo = PassInfo {
    name: "denoise-prune",
    summary: "DenoiseRotator's layer-by-layer protocol: rotate each block (kept only if it prunes better), then prune it.",
    options: OPTIONS,
    build,
};

fn build(o: &PassOptions) -> Result<Box<dyn Pass>, String> {
    Ok(Box::new(DenoisePrune {
        opts: DenoisePruneOptions::from_options(o)?,
    }))
}

/// Options of [`denoise_prune`].
#[derive(Debug, Clone, PartialEq)]
pub struct DenoisePruneOptions {
    pub spec: PruneSpec,
    pub iters: usize,
    pub lr: f64,
    /// Keep a rotation only when it lowers the layer's pruning error.
    pub keep_better: bool,
    /// Sequences whose statistics choose and check the rotation (`usize::MAX`: all).
    pub rotation_samples: usize,
}

impl DenoisePruneOptions {
    pub fn from_options(o: &PassOptions) -> Result<Self, String> {
        let method = match o.str("method")? {
            "magnitude" => PruneMethod::Magnitude,
            "wanda" => PruneMethod::Wanda,
            _ => PruneMethod::SparseGpt,
        };
        let spec = PruneSpec::new(
            method,
            o.float("sparsity")?,
            Pattern::parse(o.str("pattern")?)?,
        );
        spec.validate()?;
        let lr = o.float("lr")?;
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(format!("lr must be positive, got {lr}"));
        }
        Ok(DenoisePruneOptions {
            spec,
            iters: o.int("iters")? as usize,
            lr,
            keep_better: o.str("keep")? == "better",
            rotation_samples: match o.int("rotation-samples")? {
                0 => usize::MAX,
                n => n as usize,
            },
        })
    }
}

/// What happened to one block.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockReport {
    pub entropy_before: f64,
    pub entropy_after: f64,
    /// Relative output errors of the block pruned in the original basis and rotated
    /// (`keep=better` only).
    pub error_identity: Option<f64>,
    pub error_rotated: Option<f64>,
    pub rotated: bool,
}

/// What [`denoise_prune`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DenoisePruneReport {
    pub prune: PruneStats,
    pub blocks: Vec<BlockReport>,
    /// `d × d` MatMuls left on the stream.
    pub boundaries: usize,
}

fn importance(m: PruneMethod) -> Importance {
    match m {
        PruneMethod::Magnitude => Importance::Magnitude,
        PruneMethod::Wanda => Importance::Wanda,
        PruneMethod::SparseGpt => Importance::SparseGpt,
    }
}

/// Where the stream entering a block carries a boundary `MatMul` (its constant node and value).
type Boundary = Option<(NodeId, Mat<f64>)>;

/// Rotates and prunes every block of the main graph in order (see the module doc).
pub fn denoise_prune(
    m: &mut Module,
    opts: &DenoisePruneOptions,
    calib: &crate::calib::Calibration,
) -> Result<DenoisePruneReport, PassError> {
    let layers: Layers = fold::find_layers(m)?;
    let spans = crate::calib::block_spans(m)?;
    if spans.len() != layers.layers.len()
        || spans
            .iter()
            .zip(&layers.layers)
            .any(|(s, l)| s.input != l.stream_in)
    {
        return Err(PassError::new(
            "the blocks of the structure analysis and the decoder layers do not line up",
        ));
    }
    let g = m.main_graph();
    for l in &layers.layers {
        for lin in [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down] {
            opts.spec
                .check_width(lin.in_features as usize)
                .map_err(|e| PassError::at(g, lin.node, e))?;
        }
    }
    let prune_opts = PruneOptions {
        spec: opts.spec,
        layers: None,
        linears: ROLES.to_vec(),
    };
    let adam = AdamOptions {
        iters: opts.iters,
        lr: opts.lr,
        ..AdamOptions::default()
    };
    let nl = layers.layers.len();
    let mut entry: Vec<Boundary> = vec![None; nl];
    let mut report = DenoisePruneReport {
        prune: PruneStats {
            blocks: nl,
            ..PruneStats::default()
        },
        ..DenoisePruneReport::default()
    };
    walk_layers(m, calib, &mut |lcx: &mut LayerCx<'_>| {
        let i = lcx.block.index;
        let lp = layers.layers[i].clone();
        lcx.progress("dense statistics");
        // The rotation needs second moments, not the exact Hessians pruning uses: a subset of
        // the calibration set is enough and saves most of this block's extra forward pass. The
        // same run keeps the dense block's output on that subset for the check of step 3.
        let mut reqs: Vec<StatRequest> = [lp.q.input, lp.o.input, lp.gate.input, lp.down.input]
            .into_iter()
            .map(|value| StatRequest {
                value,
                kind: StatKind::Gram,
            })
            .collect();
        if opts.keep_better && opts.iters > 0 {
            reqs.push(StatRequest {
                value: lcx.block.output,
                kind: StatKind::Full,
            });
        }
        let mut collected = lcx.collect_first(&reqs, opts.rotation_samples)?.stats;
        let reference = match collected.get_mut(4) {
            Some(Stat::Full(t)) => Some(std::mem::take(t)),
            _ => None,
        };
        let grams: Vec<Gram> = collected
            .into_iter()
            .take(4)
            .map(|s| match s {
                Stat::Gram(g) => Ok(g),
                _ => Err(PassError::new("the evaluator returned no Gram matrix")),
            })
            .collect::<Result<_, _>>()?;
        let h: Vec<Vec<f64>> = grams.iter().map(|g| g.hessian()).collect();
        let stats: Vec<Stat> = [0usize, 2, 1]
            .iter()
            .map(|&k| Stat::Gram(grams[k].clone()))
            .collect();
        let problem = fold::problem(
            lcx.module_ref(),
            &layers,
            i,
            importance(opts.spec.method),
            &stats,
        )?;
        let mut sizes = vec![layers.d];
        sizes.extend(std::iter::repeat_n(lp.heads.head_dim, lp.heads.kv_heads));
        let mut history = Vec::new();
        let t = std::time::Instant::now();
        let r = optimize(&sizes, &adam, &mut layer_objective(&problem, &mut history));
        lcx.progress(&format!(
            "entropy {:.2} → {:.2} (best step {} of {}, {:.1} s)",
            r.initial,
            r.best,
            r.best_iter,
            opts.iters,
            t.elapsed().as_secs_f64()
        ));
        let mut qs = r.qs.into_iter();
        let q1 = qs
            .next()
            .unwrap_or_else(|| Mat::identity(layers.d, layers.d));
        let r2: Vec<Mat<f64>> = qs.collect();
        let moved = r.best_iter > 0;
        let mut block = BlockReport {
            entropy_before: r.initial,
            entropy_after: r.best,
            error_identity: None,
            error_rotated: None,
            rotated: moved,
        };
        if let (true, Some(reference)) = (moved, reference.as_ref()) {
            let hs = LayerHessians {
                attn: h[0].clone(),
                o: h[1].clone(),
                mlp: h[2].clone(),
                down: h[3].clone(),
            };
            let rot = LayerRotation { q1: &q1, r2: &r2 };
            let plain = pruned_layer(lcx.module_ref(), &lp, &hs, None, &opts.spec)?;
            let turned = pruned_layer(lcx.module_ref(), &lp, &hs, Some(&rot), &opts.spec)?;
            let e0 = block_error(lcx, &plain.weights, reference, opts.rotation_samples)?;
            let e1 = block_error(lcx, &turned.weights, reference, opts.rotation_samples)?;
            block.error_identity = Some(e0);
            block.error_rotated = Some(e1);
            block.rotated = e1 < e0;
            lcx.progress(&format!(
                "pruned block output error {e0:.4} unrotated, {e1:.4} rotated: {}",
                if block.rotated {
                    "rotation kept"
                } else {
                    "rotation dropped"
                }
            ));
        }
        if block.rotated {
            let m = lcx.module();
            fold::fold_layer(m, &layers, i, &q1, &r2)?;
            // The stream entering the block: merge into the previous block's exit if it has
            // one, else a fresh MatMul.
            match entry[i].take() {
                Some((k, b)) => {
                    let p = fold::premultiply_matmul(m, k, &b, &q1)?;
                    entry[i] = Some((k, p));
                }
                None => {
                    let k = fold::insert_matmul(m, lp.stream_in, &q1)?;
                    entry[i] = Some((k, q1.clone()));
                }
            }
            // The exit: the next block's entry (the last block's is folded into the head).
            if i + 1 < nl {
                let qt = q1.transpose().to_owned();
                let k = fold::insert_matmul(m, layers.layers[i + 1].stream_in, &qt)?;
                entry[i + 1] = Some((k, qt));
            }
        }
        let mut line = format!("layer {i}:");
        for (role, out) in prune_block(lcx, &prune_opts)? {
            record(&mut report.prune, &mut line, role, out);
        }
        let _ = write!(
            line,
            "; entropy {:.2} → {:.2}",
            block.entropy_before, block.entropy_after
        );
        if let (Some(a), Some(b)) = (block.error_identity, block.error_rotated) {
            let _ = write!(
                line,
                "; pruned block output error {a:.4} unrotated, {b:.4} rotated"
            );
        }
        let _ = write!(
            line,
            "; {}",
            if block.rotated {
                "rotated"
            } else {
                "not rotated"
            }
        );
        report.prune.per_layer.push(line);
        report.blocks.push(block);
        Ok(())
    })?;
    report.boundaries = entry.iter().filter(|e| e.is_some()).count();
    Ok(report)
}

/// The relative error `‖Y − Y_ref‖ / ‖Y_ref‖` of the block's output on the leading
/// `sequences` calibration sequences when its linears carry `weights` (original basis), against
/// the dense block's output `reference`. The block's weights are restored afterwards (the f32
/// values round-trip through f64 exactly).
fn block_error(
    lcx: &mut LayerCx<'_>,
    weights: &[(Linear, Vec<f64>)],
    reference: &[EvalTensor],
    sequences: usize,
) -> Result<f64, PassError> {
    let current = |m: &Module, l: &Linear| match_linear(m, m.main_graph(), l.node).unwrap_or(*l);
    let mut dense = Vec::with_capacity(weights.len());
    for (l, w) in weights {
        let l = current(lcx.module_ref(), l);
        dense.push((l, linear_weight(lcx.module_ref(), &l)?.0));
        set_linear_weight(lcx.module(), &l, w)?;
    }
    let out = lcx.collect_first(
        &[StatRequest {
            value: lcx.block.output,
            kind: StatKind::Full,
        }],
        sequences,
    );
    for (l, w) in &dense {
        let l = current(lcx.module_ref(), l);
        set_linear_weight(lcx.module(), &l, w)?;
    }
    let Some(Stat::Full(got)) = out?.stats.into_iter().next() else {
        return Err(PassError::new("the evaluator returned no block output"));
    };
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (a, b) in got.iter().zip(reference) {
        let (EvalTensor::F32 { data: a, .. }, EvalTensor::F32 { data: b, .. }) = (a, b) else {
            return Err(PassError::new("the block output is not float32"));
        };
        for (x, y) in a.iter().zip(b) {
            let d = f64::from(*x) - f64::from(*y);
            num += d * d;
            den += f64::from(*y) * f64::from(*y);
        }
    }
    Ok((num / den.max(f64::MIN_POSITIVE)).sqrt())
}

struct DenoisePrune {
    opts: DenoisePruneOptions,
}

impl Pass for DenoisePrune {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn run(&self, m: &mut Module, cx: &mut PassContext) -> Result<PassResult, PassError> {
        let calib = cx
            .calibration()
            .cloned()
            .ok_or_else(|| missing_calibration(INFO.name))?;
        let r = denoise_prune(m, &self.opts, &calib)?;
        for line in &r.prune.per_layer {
            cx.note(line.clone());
        }
        let kept = r.blocks.iter().filter(|b| b.rotated).count();
        let (b, a) = r.blocks.iter().fold((0.0, 0.0), |(b, a), x| {
            (b + x.entropy_before, a + x.entropy_after)
        });
        cx.note(format!(
            "{} {}: {} of {} weights zero ({:.2} %); rotations kept in {kept} of {} blocks \
             (entropy {b:.2} → {a:.2} summed over all blocks), {} boundary MatMul(s)",
            self.opts.spec.method.name(),
            match self.opts.spec.pattern {
                Pattern::Unstructured => "unstructured".to_string(),
                Pattern::NM { n, m } => format!("{n}:{m}"),
            },
            r.prune.zeros,
            r.prune.total,
            100.0 * r.prune.zeros as f64 / r.prune.total.max(1) as f64,
            r.blocks.len(),
            r.boundaries
        ));
        cx.stat("rotated", kept as u64);
        cx.stat("boundaries", r.boundaries as u64);
        cx.stat("zeros", r.prune.zeros as u64);
        cx.stat("weights", r.prune.total as u64);
        Ok(PassResult::changed(true))
    }
}
