//! `denoise-rotate{mode=global|per-layer method=sparsegpt|wanda|magnitude iters=16 lr=0.01}`:
//! DenoiseRotator (ALGORITHMS.md §2) — orthogonal rotations of each decoder layer chosen to
//! concentrate the importance scores of the chosen pruning method on fewer weights, so that a
//! following `prune` removes less importance. The model's function is unchanged.
//!
//! Needs: a pre-norm transformer whose residual stream admits O(d) (norm gains folded: run
//! `fold-norms` first; otherwise the pass fails naming the blocking node), decomposed attention
//! with q/k/v/o linears and a gated MLP; for `wanda`/`sparsegpt`, calibration statistics (the
//! input second moments `H = (2/N) Σ xᵀx` of q/k/v, gate/up and o of every layer) from the
//! caller (through the pass manager's calibration, computed once on the model as it enters the
//! pass; `magnitude` needs none).
//! Does: per layer, the objective of §2.1.6 (sum of Shannon entropies of normalized scores) over
//! a residual rotation `Q1` and one `R2_j ∈ O(head_dim)` per KV head (V/O path only: q/k head
//! dims are never rotated, RoPE would not commute), minimized by Adam on SO(n) through the Cayley
//! map (`rotation_search::optim`) keeping the best iterate; `mode=global` optimizes one `Q1` for the
//! summed loss of all layers (per-layer `R2` still), `mode=per-layer` one `Q1` per layer.
//! Leaves: the rotations folded into the weights in f64, cast once (`linalg::layer_rotations`): no node
//! added in `global` mode (embedding, readers, writers, stream biases, head — a tied head stays
//! tied); in `per-layer` mode one `MatMul` by `Q_{i−1}ᵀ Q_i` on the stream entering each layer
//! `i > 0` (the first layer's `Q` folded into the embedding, the last one's into the head, which
//! is untied if it was tied). The note reports the entropy before/after per layer.
//!
//! Composition: `global` (the default) leaves the graph's structure as it was. The boundary
//! `MatMul`s of `per-layer` split the residual stream into segments, one per layer; the structure
//! analysis records each as the next block's entry and the layer-wise walk runs through them, so
//! a later `prune` or `denoise-prune` still finds every block. Passes that work on one residual
//! basis (`rotate-residual`, `fold-norms`' centering) see the first segment only.

use crate::calib::{missing_calibration, walk_layers};
use crate::linalg::layer_rotations::{self as rotations, FoldStats, Layers, Rotations};
use crate::options::{OptionError, OptionKind};
use crate::pass::{PassContext, PassError, PassErrorKind, PassResult};
use crate::rotation_search::loss::{Importance, LayerProblem};
use crate::rotation_search::optim::{optimize, AdamOptions, Optimized, StopReason};
use crate::rotation_search::{check_lr, layer_objective, LR, METHOD_KIND};
use faer::Mat;
use ortho_ir::eval::{Stat, StatRequest};
use ortho_ir::Module;

/// One rotation per layer or one for the whole stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    PerLayer,
    Global,
}

crate::word_option_type!(Mode {
    Global = "global",
    PerLayer = "per-layer",
});

crate::pass_options! {
    /// Options of [`denoise_rotate`].
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct DenoiseRotateOptions {
        pub mode: Mode = {
            name: "mode",
            default: Mode::Global,
            doc: "One residual rotation for the whole stream (no node added) or one per layer (a d×d MatMul at each layer boundary).",
        },
        pub method: Importance = {
            name: "method",
            default: Importance::SparseGpt,
            doc: "The pruning method whose importance scores are concentrated (wanda and sparsegpt need calibration).",
            kind: METHOD_KIND,
        },
        pub iters: usize = {
            name: "iters",
            default: 16,
            doc: "Adam steps per optimization (per layer, or in total for mode=global); 0 folds the identity.",
            kind: OptionKind::Int { min: 0, max: 100_000 },
        },
        pub lr: f64 = LR,
    }
    check: DenoiseRotateOptions::check;
}

impl DenoiseRotateOptions {
    fn check(&self) -> Result<(), OptionError> {
        check_lr(self.lr)
    }
}

crate::declare_pass! {
    name: "denoise-rotate",
    summary: "DenoiseRotator: rotates each layer to concentrate pruning importance (entropy loss, Adam on SO(n)), folded into the weights.",
    options: DenoiseRotateOptions,
    run: run_pass,
}

/// One layer's entropy loss at the identity and at the folded rotations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerEntropy {
    pub before: f64,
    pub after: f64,
}

/// What [`denoise_rotate`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct DenoiseReport {
    pub layers: Vec<LayerEntropy>,
    /// One line per optimization: best step, evaluations, stop reason.
    pub runs: Vec<String>,
    pub fold: FoldStats,
}

/// Supplies calibration statistics: evaluates the requests on the module as given, in order.
pub type MomentSource<'a> =
    dyn FnMut(&mut Module, &[StatRequest]) -> Result<Vec<Stat>, PassError> + 'a;

fn run_line(what: &str, r: &Optimized) -> String {
    format!(
        "{what}: loss {:.4} → {:.4} (best at step {} of {} evaluations; stopped: {})",
        r.initial,
        r.best,
        r.best_iter,
        r.evaluations,
        r.stop.name()
    )
}

/// Runs DenoiseRotator on the main graph of `m`. `moments` is called once (never for
/// `magnitude`) with the statistics the method needs.
pub fn denoise_rotate(
    m: &mut Module,
    opts: &DenoiseRotateOptions,
    moments: &mut MomentSource<'_>,
) -> Result<DenoiseReport, PassError> {
    let layers: Layers = rotations::find_layers(m)?;
    let requests = rotations::requests(&layers, opts.method);
    let stats: Vec<Stat> = if requests.is_empty() {
        Vec::new()
    } else {
        let s = moments(m, &requests)?;
        if s.len() != requests.len() {
            return Err(PassError::new(format!(
                "calibration returned {} statistics for {} requests",
                s.len(),
                requests.len()
            ))
            .with_kind(PassErrorKind::Evaluation));
        }
        s
    };
    let nl = layers.layers.len();
    let per = |i: usize| -> &[Stat] {
        if stats.is_empty() {
            &[]
        } else {
            &stats[rotations::REQUESTS_PER_LAYER * i..rotations::REQUESTS_PER_LAYER * (i + 1)]
        }
    };
    let adam = AdamOptions {
        iters: opts.iters,
        lr: opts.lr,
        ..AdamOptions::default()
    };
    let mut report = DenoiseReport {
        layers: Vec::with_capacity(nl),
        runs: Vec::new(),
        fold: FoldStats::default(),
    };
    let rot = match opts.mode {
        Mode::PerLayer => {
            let mut rot = Rotations {
                q1: Vec::with_capacity(nl),
                r2: Vec::with_capacity(nl),
            };
            for i in 0..nl {
                let p = rotations::problem(m, &layers, i, opts.method, per(i))?;
                let hd = p.heads.head_dim;
                let mut sizes = vec![layers.d];
                sizes.extend(std::iter::repeat_n(hd, p.heads.kv_heads));
                let mut history = Vec::new();
                let r = optimize(&sizes, &adam, &mut layer_objective(&p, &mut history));
                report.layers.push(LayerEntropy {
                    before: r.initial,
                    after: r.best,
                });
                report.runs.push(run_line(&format!("layer {i}"), &r));
                let mut qs = r.qs.into_iter();
                rot.q1.extend(qs.next());
                rot.r2.push(qs.collect());
            }
            rot
        }
        Mode::Global => {
            let problems: Vec<LayerProblem> = (0..nl)
                .map(|i| rotations::problem(m, &layers, i, opts.method, per(i)))
                .collect::<Result<_, _>>()?;
            let kv: Vec<usize> = problems.iter().map(|p| p.heads.kv_heads).collect();
            let mut sizes = vec![layers.d];
            for p in &problems {
                sizes.extend(std::iter::repeat_n(p.heads.head_dim, p.heads.kv_heads));
            }
            // Per-layer losses of every evaluation, to report the best iterate per layer.
            let mut history: Vec<Vec<f64>> = Vec::new();
            let mut objective = |qs: &[Mat<f32>], gs: &mut [Mat<f32>]| -> f64 {
                let (gq, mut rest) = gs.split_at_mut(1);
                let mut at = 1;
                let mut parts = Vec::with_capacity(problems.len());
                for (p, &k) in problems.iter().zip(&kv) {
                    let (gr, tail) = rest.split_at_mut(k);
                    rest = tail;
                    parts.push(
                        p.loss_grad(qs[0].as_ref(), &qs[at..at + k], &mut gq[0], gr)
                            .total(),
                    );
                    at += k;
                }
                let total = parts.iter().sum();
                history.push(parts);
                total
            };
            let r = optimize(&sizes, &adam, &mut objective);
            report.runs.push(run_line("global", &r));
            if let (Some(first), Some(best)) = (history.first(), history.get(r.best_iter)) {
                for (b, a) in first.iter().zip(best) {
                    report.layers.push(LayerEntropy {
                        before: *b,
                        after: *a,
                    });
                }
            }
            let mut qs = r.qs.into_iter();
            let q1: Vec<Mat<f64>> = qs.next().into_iter().collect();
            let r2 = kv.iter().map(|&k| qs.by_ref().take(k).collect()).collect();
            if r.stop == StopReason::NonFinite {
                report.runs.push(
                    "global: a non-finite loss stopped the run; the best finite iterate is folded"
                        .into(),
                );
            }
            Rotations { q1, r2 }
        }
    };
    report.fold = rotations::fold(m, &layers, &rot)?;
    Ok(report)
}

fn run_pass(
    m: &mut Module,
    opts: &DenoiseRotateOptions,
    cx: &mut PassContext,
) -> Result<PassResult, PassError> {
    let calib = cx.calibration().cloned();
    // Statistics of every layer from one layer-wise walk over the calibration set on the
    // model as it enters the pass (the rotations change no layer's function, so rotating
    // earlier layers first would not change what later layers see).
    let mut moments = |m: &mut Module, reqs: &[StatRequest]| -> Result<Vec<Stat>, PassError> {
        let calib = calib
            .as_ref()
            .ok_or_else(|| missing_calibration(INFO.name))?;
        let per_layer = reqs.len() / rotations::REQUESTS_PER_LAYER;
        let mut out: Vec<Stat> = Vec::with_capacity(reqs.len());
        walk_layers(m, calib, &mut |lcx| {
            let i = lcx.block.index;
            if i >= per_layer {
                return Err(PassError::new(
                    "the calibration driver found more blocks than denoise-rotate",
                ));
            }
            let k = rotations::REQUESTS_PER_LAYER;
            lcx.progress("denoise-rotate: input statistics");
            out.extend(lcx.collect(&reqs[k * i..k * (i + 1)])?.stats);
            Ok(())
        })?;
        Ok(out)
    };
    let r = denoise_rotate(m, opts, &mut moments)?;
    report(&r, cx);
    if r.fold.boundaries > 0 {
        cx.note(format!(
                "{} boundary MatMul(s) on the residual stream: a later rotate-residual sees only the first segment; use mode=global for one basis",
                r.fold.boundaries
            ));
    }
    Ok(PassResult::changed(true))
}

/// Statistics and notes of a run.
fn report(r: &DenoiseReport, cx: &mut PassContext) {
    cx.stat("layers", r.layers.len() as u64);
    cx.stat("rewritten", r.fold.rewritten as u64);
    cx.stat("copies", r.fold.copies as u64);
    cx.stat("boundaries", r.fold.boundaries as u64);
    for line in &r.runs {
        cx.note(line.clone());
    }
    let (b, a): (f64, f64) = r
        .layers
        .iter()
        .fold((0.0, 0.0), |(b, a), l| (b + l.before, a + l.after));
    cx.note(format!(
        "entropy before/after per layer: {} (total {b:.2} → {a:.2})",
        r.layers
            .iter()
            .enumerate()
            .map(|(i, l)| format!("{i}: {:.2}→{:.2}", l.before, l.after))
            .collect::<Vec<_>>()
            .join(", ")
    ));
}
