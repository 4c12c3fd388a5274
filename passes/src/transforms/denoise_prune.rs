//! `denoise-prune{method=sparsegpt|wanda|magnitude sparsity=0.5 pattern=unstructured|N:M
//! iters=50 lr=0.01 rotation-samples=32 keep=better|always nm-permute=true nm-weight=0.3 param=cayley|qr
//! head-rotations=true}`: DenoiseRotator's own protocol
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
//!    `rotation_search::optim`; `param=qr` is the reference code's QR(A) parameterization);
//!    with an N:M pattern and `nm-weight > 0`, the objective also counts, per group of M input
//!    columns, the row-normalized importance the pattern would remove (`loss::NmTerm`, scaled
//!    to `nm-weight` × the entropy at the identity), so the search itself sees the groups;
//!    with an N:M pattern (`nm-permute`, default on), the rotated channels are then permuted so
//!    that the important ones spread over the groups of M — the entropy is blind to channel
//!    order, an N:M pattern is not (`rotation_search::permute`): the stream's permutation is
//!    composed into `Q1` and each KV head's into `R2_j`; `nm-permute-mlp=true` also permutes the
//!    MLP's hidden channels (down's input) in gate/up rows and down columns (off by default: it
//!    measured worse);
//! 3. with `keep=better`, prunes the layer's seven linears on those Hessians both in the
//!    original basis and rotated (`denoise_prune::select`), runs the block with each variant's weights
//!    on the same sequences and keeps the rotation only when the block's output is closer to the
//!    dense block's (`‖Y − Y_ref‖ / ‖Y_ref‖`) — a rotation that makes pruning worse is dropped
//!    and reported; `keep=always` keeps every optimized rotation;
//! 4. folds a kept rotation into the block's weights in f64 (`linalg::layer_rotations::fold_layer`) with
//!    `h ↦ h Q1` on the stream entering it and `h ↦ h Q1ᵀ` on the stream leaving it; the exit of
//!    block `i` and the entry of block `i + 1` share one `MatMul` (`Q_iᵀ Q_{i+1}`), and the last
//!    block's exit is folded into the head, so at most one `d × d` `MatMul` per block is added;
//! 5. prunes the block in the true-sequential groups `[k,v,q] → [o] → [up,gate] → [down]`
//!    exactly as `prune` does (`sparsity::linears::prune_block`).
//!
//! Leaves: the rotated, pruned model (dense weights with zeros, exact N:M patterns); one note per
//! block (entropy before → after, both pruning errors, the decision, each linear's sparsity).
//! `iters=0` folds nothing and gives exactly `prune`'s result. The boundary `MatMul`s end the
//! residual stream for the structure analysis, so later layer-wise passes refuse the model.

mod select;

use crate::calib::{block_spans, missing_calibration, walk_layers, Calibration, LayerCx};
use crate::linalg::layer_rotations::{self as rotations, LayerParts, Layers};
use crate::options::{OptionError, OptionKind};
use crate::pass::{PassContext, PassError, PassErrorKind, PassResult};
use crate::rotation_search::loss::{LayerProblem, NmTerm};
use crate::rotation_search::optim::{optimize, AdamOptions, Param};
use crate::rotation_search::permute::{hidden_permutation, permute_columns};
use crate::rotation_search::{check_lr, layer_objective, LR, METHOD_KIND};
use crate::sparsity::linears::{
    linear_weight, prune_block, record, set_linear_weight, PruneStats, ROLES,
};
use crate::sparsity::matrix::{Pattern, PruneMethod, PruneSpec};
use crate::sparsity::options::{PATTERN, SPARSITY};
use faer::Mat;
use ortho_ir::analysis::linear::{match_linear, Linear};
use ortho_ir::eval::{EvalTensor, Gram, Stat, StatKind, StatRequest};
use ortho_ir::{Module, NodeId};
use select::{pruned_layer, LayerHessians, LayerRotation};
use std::fmt::Write as _;

/// Whether a block's rotation must prove itself (`keep=better`) or is always kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Better,
    Always,
}

crate::word_option_type!(Keep {
    Better = "better",
    Always = "always",
});

crate::word_option_type!(Param {
    Cayley = "cayley",
    Qr = "qr",
});

crate::pass_options! {
    /// Options of [`denoise_prune`].
    #[derive(Debug, Clone, PartialEq)]
    pub struct DenoisePruneOptions {
        pub method: PruneMethod = {
            name: "method",
            default: PruneMethod::SparseGpt,
            doc: "Pruning method; its importance scores are what the rotation concentrates.",
            kind: METHOD_KIND,
        },
        pub sparsity: f64 = SPARSITY,
        pub pattern: Pattern = PATTERN,
        /// Adam steps per block.
        pub iters: usize = {
            name: "iters",
            default: 50,
            doc: "Adam steps per layer; 0 rotates nothing (plain true-sequential pruning).",
            kind: OptionKind::Int { min: 0, max: 100_000 },
        },
        pub lr: f64 = LR,
        /// Sequences whose statistics choose and check the rotation (0: all; see
        /// [`DenoisePruneOptions::samples`]).
        pub rotation_samples: usize = {
            name: "rotation-samples",
            default: 32,
            doc: "Calibration sequences whose statistics choose and check each rotation (the first ones; 0 = all). Pruning always uses all.",
            kind: OptionKind::Int { min: 0, max: 1_000_000 },
        },
        /// Keep a rotation only when it lowers the block's pruning error.
        pub keep: Keep = {
            name: "keep",
            default: Keep::Better,
            doc: "better: keep a block's rotation only if the pruned block's output is closer to the dense block's (both variants are run); always: keep every rotation.",
        },
        /// How each orthogonal block is parameterized for Adam.
        pub param: Param = {
            name: "param",
            default: Param::Cayley,
            doc: "cayley: Q = Cayley(Ω), Ω skew from 0; qr: Q = Q factor of QR(A), A free from I (DenoiseRotator's code).",
        },
        /// Whether an N:M pattern also permutes the rotated channels (see `rotation_search::permute`).
        pub nm_permute: bool = {
            name: "nm-permute",
            default: true,
            doc: "With an N:M pattern (and iters > 0), compose channel permutations into each block's rotation that spread the important input channels over the groups of M: the stream and each KV head's positions (orthogonal, folded with the rotation). false: the rotation alone.",
        },
        /// Whether `nm-permute` also permutes the MLP's hidden channels.
        pub nm_permute_mlp: bool = {
            name: "nm-permute-mlp",
            default: false,
            doc: "With nm-permute, also permute the MLP's hidden channels (gate/up rows, down columns) for down's groups (measured worse on SmolLM2 SparseGPT 2:4: 79.08 against 75.10).",
        },
        /// Weight of the N:M-aware term of the objective (see `rotation_search::loss::NmTerm`).
        pub nm_weight: f64 = {
            name: "nm-weight",
            default: 0.3,
            doc: "With an N:M pattern, add to the entropy the row-normalized importance the pattern would remove from q, k, v, o, gate and up, scaled to nm-weight × the entropy at the identity (0: the entropy alone; 0.3 measured SparseGPT 2:4 73.28 against 75.10, Wanda 2:4 93.67 against 130.21).",
            kind: OptionKind::Float,
        },
        /// Whether the per-KV-head V/O rotations are optimized too.
        pub head_rotations: bool = {
            name: "head-rotations",
            default: true,
            doc: "Also optimize one head_dim rotation per KV head on the V/O path (false: the residual rotation only).",
        },
    }
    check: DenoisePruneOptions::check;
}

impl DenoisePruneOptions {
    /// How each matrix is pruned.
    pub fn spec(&self) -> PruneSpec {
        PruneSpec::new(self.method, self.sparsity, self.pattern)
    }

    /// How many leading calibration sequences choose and check rotations.
    pub fn samples(&self) -> usize {
        match self.rotation_samples {
            0 => usize::MAX,
            n => n,
        }
    }

    fn check(&self) -> Result<(), OptionError> {
        self.spec()
            .validate()
            .map_err(|e| OptionError::Invalid(e.to_string()))?;
        if !(self.nm_weight >= 0.0 && self.nm_weight.is_finite()) {
            return Err(OptionError::Invalid(format!(
                "nm-weight must be a finite number ≥ 0, got {}",
                self.nm_weight
            )));
        }
        check_lr(self.lr)
    }
}

crate::declare_pass! {
    name: "denoise-prune",
    summary: "DenoiseRotator's layer-by-layer protocol: rotate each block (kept only if it prunes better), then prune it.",
    options: DenoisePruneOptions,
    run: run_pass,
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
    /// With `nm-permute`: the proxy cost (row-normalized importance an N:M selection removes,
    /// summed over rows) before → after the permutations, for the stream's readers, o's heads
    /// and down's hidden channels.
    pub permutation: Option<[(f64, f64); 3]>,
}

/// What [`denoise_prune`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DenoisePruneReport {
    pub prune: PruneStats,
    pub blocks: Vec<BlockReport>,
    /// `d × d` MatMuls left on the stream.
    pub boundaries: usize,
}

/// Where the stream entering a block carries a boundary `MatMul` (its constant node and value).
type Boundary = Option<(NodeId, Mat<f64>)>;

/// One block's statistics with its weights still dense, on the rotation samples (step 1).
struct DenseStats {
    /// The input Grams of q/k/v, o, gate/up and down.
    attn: Gram,
    o: Gram,
    mlp: Gram,
    down: Gram,
    /// The dense block's output, kept when rotations must prove themselves.
    reference: Option<Vec<EvalTensor>>,
}

impl DenseStats {
    fn hessians(&self) -> LayerHessians {
        LayerHessians {
            attn: self.attn.hessian(),
            o: self.o.hessian(),
            mlp: self.mlp.hessian(),
            down: self.down.hessian(),
        }
    }

    /// The statistics the rotation objective reads, in `layer_rotations::requests` order.
    fn objective_stats(&self) -> Vec<Stat> {
        [&self.attn, &self.mlp, &self.o]
            .into_iter()
            .map(|g| Stat::Gram(g.clone()))
            .collect()
    }
}

/// The rotation chosen for one block (step 2), with the MLP's hidden-channel permutation
/// (new position → old channel) when `nm-permute` found one.
struct Rotation {
    q1: Mat<f64>,
    r2: Vec<Mat<f64>>,
    mlp: Option<Vec<usize>>,
}

/// Rotates and prunes every block of the main graph in order (see the module doc).
pub fn denoise_prune(
    m: &mut Module,
    opts: &DenoisePruneOptions,
    calib: &Calibration,
) -> Result<DenoisePruneReport, PassError> {
    let layers = checked_layers(m, &opts.spec())?;
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
        let dense = dense_stats(lcx, &lp, opts)?;
        let (rotation, mut block) = search_rotation(lcx, &layers, i, &dense, opts)?;
        if let (true, Some(reference)) = (block.rotated, dense.reference.as_ref()) {
            check_rotation(lcx, &lp, &dense, &rotation, reference, opts, &mut block)?;
        }
        if block.rotated {
            fold_rotation(lcx.module(), &layers, i, &rotation, &mut entry)?;
        }
        let mut line = format!("layer {i}:");
        for (role, out) in prune_block(lcx, &opts.spec(), &ROLES)? {
            record(&mut report.prune, &mut line, role, out);
        }
        block_note(&mut line, &block);
        report.prune.per_layer.push(line);
        report.blocks.push(block);
        Ok(())
    })?;
    report.boundaries = entry.iter().filter(|e| e.is_some()).count();
    Ok(report)
}

/// The decoder layers, checked against the structure analysis' blocks and the pattern.
fn checked_layers(m: &Module, spec: &PruneSpec) -> Result<Layers, PassError> {
    let layers: Layers = rotations::find_layers(m)?;
    let spans = block_spans(m)?;
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
    for l in &layers.layers {
        for lin in [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down] {
            spec.check_width(lin.in_features as usize).map_err(|e| {
                PassError::at_main(m, lin.node, e.to_string())
                    .with_kind(PassErrorKind::InvalidOptions)
            })?;
        }
    }
    Ok(layers)
}

/// Step 1: the dense block's input Grams (and output, for `keep=better`). The rotation needs
/// second moments, not the exact Hessians pruning uses: a subset of the calibration set is
/// enough and saves most of this block's extra forward pass.
fn dense_stats(
    lcx: &mut LayerCx<'_>,
    lp: &LayerParts,
    opts: &DenoisePruneOptions,
) -> Result<DenseStats, PassError> {
    lcx.progress("dense statistics");
    let gram = |value| StatRequest {
        value,
        kind: StatKind::Gram,
    };
    let mut reqs = vec![
        gram(lp.q.input),
        gram(lp.o.input),
        gram(lp.gate.input),
        gram(lp.down.input),
    ];
    if opts.keep == Keep::Better && opts.iters > 0 {
        reqs.push(StatRequest {
            value: lcx.block.output,
            kind: StatKind::Full,
        });
    }
    let mut stats = lcx.collect_first(&reqs, opts.samples())?.stats.into_iter();
    let mut next_gram = || match stats.next() {
        Some(Stat::Gram(g)) => Ok(g),
        _ => Err(PassError::new("the evaluator returned no Gram matrix")
            .with_kind(PassErrorKind::Evaluation)),
    };
    let (attn, o, mlp, down) = (next_gram()?, next_gram()?, next_gram()?, next_gram()?);
    let reference = match stats.next() {
        Some(Stat::Full(t)) => Some(t),
        _ => None,
    };
    Ok(DenseStats {
        attn,
        o,
        mlp,
        down,
        reference,
    })
}

/// Step 2: minimizes the block's entropy objective; the report says whether the optimizer
/// moved off the identity (a rotation that `keep=better` may still drop).
fn search_rotation(
    lcx: &mut LayerCx<'_>,
    layers: &Layers,
    i: usize,
    dense: &DenseStats,
    opts: &DenoisePruneOptions,
) -> Result<(Rotation, BlockReport), PassError> {
    let lp = &layers.layers[i];
    let mut problem = rotations::problem(
        lcx.module_ref(),
        layers,
        i,
        opts.method,
        &dense.objective_stats(),
    )?;
    if let (true, Pattern::NM { n, m }) = (opts.nm_weight > 0.0, opts.pattern) {
        problem.nm = nm_term(&problem, n, m, opts.nm_weight);
    }
    let mut sizes = vec![layers.d];
    let (hd, kv) = (lp.heads.head_dim, lp.heads.kv_heads);
    if opts.head_rotations {
        sizes.extend(std::iter::repeat_n(hd, kv));
    }
    let adam = AdamOptions {
        iters: opts.iters,
        lr: opts.lr,
        param: opts.param,
        ..AdamOptions::default()
    };
    let mut history = Vec::new();
    let t = std::time::Instant::now();
    let mut objective = layer_objective(&problem, &mut history);
    let r = if opts.head_rotations {
        optimize(&sizes, &adam, &mut objective)
    } else {
        // The head rotations stay the identity: the objective sees them, Adam does not.
        let eye: Vec<Mat<f32>> = (0..kv).map(|_| Mat::identity(hd, hd)).collect();
        let mut q1_only = |qs: &[Mat<f32>], gs: &mut [Mat<f32>]| {
            let mut all: Vec<Mat<f32>> = qs.to_vec();
            all.extend(eye.iter().cloned());
            let mut g: Vec<Mat<f32>> = all
                .iter()
                .map(|q| Mat::zeros(q.nrows(), q.ncols()))
                .collect();
            let l = objective(&all, &mut g);
            gs[0] = g.swap_remove(0);
            l
        };
        let mut r = optimize(&sizes, &adam, &mut q1_only);
        r.qs.extend((0..kv).map(|_| Mat::identity(hd, hd)));
        r
    };
    lcx.progress(&format!(
        "entropy {:.2} → {:.2} (best step {} of {}, {:.1} s)",
        r.initial,
        r.best,
        r.best_iter,
        opts.iters,
        t.elapsed().as_secs_f64()
    ));
    let mut qs = r.qs.into_iter();
    let mut q1 = qs
        .next()
        .unwrap_or_else(|| Mat::identity(layers.d, layers.d));
    let mut r2: Vec<Mat<f64>> = qs.collect();
    let mut rotated = r.best_iter > 0;
    let mut mlp = None;
    let mut costs = None;
    // `iters=0` means no transform at all (exactly `prune`), so no permutation either.
    if let (true, true, Pattern::NM { n, m }) = (opts.nm_permute, opts.iters > 0, opts.pattern) {
        let f32s =
            |q: &Mat<f64>| Mat::<f32>::from_fn(q.nrows(), q.ncols(), |i, j| q[(i, j)] as f32);
        let r2_32: Vec<Mat<f32>> = r2.iter().map(f32s).collect();
        let p = problem.nm_permutation(f32s(&q1).as_ref(), &r2_32, n, m, 4);
        let moved = p.stream.iter().enumerate().any(|(k, &c)| k != c)
            || p.heads
                .iter()
                .any(|h| h.iter().enumerate().any(|(k, &c)| k != c));
        lcx.progress(&format!(
            "{n}:{m} channel permutation: stream proxy cost {:.2} → {:.2}, o heads {:.2} → {:.2}",
            p.stream_cost.0, p.stream_cost.1, p.head_cost.0, p.head_cost.1
        ));
        if moved {
            q1 = permute_columns(&q1, &p.stream);
            for (r, perm) in r2.iter_mut().zip(&p.heads) {
                *r = permute_columns(r, perm);
            }
            rotated = true;
        }
        // The MLP's hidden channels: a permutation of gate/up rows and down columns, exact
        // through the elementwise gate (biased gate/up would need their biases permuted: skipped).
        if opts.nm_permute_mlp && lp.gate.bias.is_none() && lp.up.bias.is_none() {
            let c = rotations::column_factor(&Stat::Gram(dense.down.clone()), opts.method, "down")
                .map_err(|e| {
                    PassError::at_main(lcx.module_ref(), lp.down.node, e.to_string())
                        .with_kind(PassErrorKind::Numeric)
                })?;
            let q1_32 = f32s(&q1);
            let down_rot =
                crate::rotation_search::loss::mm(q1_32.transpose(), problem.down.as_ref());
            let (perm, b, a) = hidden_permutation(down_rot.as_ref(), c.as_deref(), n, m, 4);
            lcx.progress(&format!(
                "{n}:{m} MLP hidden permutation: down proxy cost {b:.2} → {a:.2}"
            ));
            if perm.iter().enumerate().any(|(k, &c)| k != c) {
                mlp = Some(perm);
                rotated = true;
            }
            costs = Some([p.stream_cost, p.head_cost, (b, a)]);
        } else {
            costs = Some([p.stream_cost, p.head_cost, (0.0, 0.0)]);
        }
    }
    let block = BlockReport {
        entropy_before: r.initial,
        entropy_after: r.best,
        error_identity: None,
        error_rotated: None,
        rotated,
        permutation: costs,
    };
    Ok((Rotation { q1, r2, mlp }, block))
}

/// The N:M term weighted so that it starts at `weight` × the entropy (both at the identity,
/// where every search starts): the two are in unrelated units, and Adam's steps only see
/// their ratio. `None` when the layer's matrices have no N:M groups to count.
fn nm_term(problem: &LayerProblem, n: usize, m: usize, weight: f64) -> Option<NmTerm> {
    let mut probe = problem.clone();
    probe.nm = Some(NmTerm { n, m, weight: 1.0 });
    let d = problem.d();
    let hd = problem.heads.head_dim;
    let eye = Mat::<f32>::identity(d, d);
    let r2: Vec<Mat<f32>> = (0..problem.heads.kv_heads)
        .map(|_| Mat::identity(hd, hd))
        .collect();
    let mut gq = Mat::<f32>::zeros(d, d);
    let mut gr: Vec<Mat<f32>> = r2.iter().map(|_| Mat::zeros(hd, hd)).collect();
    let parts = probe.loss_grad(eye.as_ref(), &r2, &mut gq, &mut gr);
    let entropy = parts.total() - parts.nm;
    (parts.nm > 0.0 && entropy.is_finite()).then(|| NmTerm {
        n,
        m,
        weight: weight * entropy / parts.nm,
    })
}

/// Step 3 (`keep=better`): prunes the block both ways on its dense statistics, runs each
/// variant and keeps the rotation only when the rotated one's output is closer to `reference`.
fn check_rotation(
    lcx: &mut LayerCx<'_>,
    lp: &LayerParts,
    dense: &DenseStats,
    rotation: &Rotation,
    reference: &[EvalTensor],
    opts: &DenoisePruneOptions,
    block: &mut BlockReport,
) -> Result<(), PassError> {
    let hs = dense.hessians();
    let spec = opts.spec();
    let rot = LayerRotation {
        q1: &rotation.q1,
        r2: &rotation.r2,
        mlp: rotation.mlp.as_deref(),
    };
    let plain = pruned_layer(lcx.module_ref(), lp, &hs, None, &spec)?;
    let turned = pruned_layer(lcx.module_ref(), lp, &hs, Some(&rot), &spec)?;
    let e0 = block_error(lcx, &plain.weights, reference, opts.samples())?;
    let e1 = block_error(lcx, &turned.weights, reference, opts.samples())?;
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
    Ok(())
}

/// Step 4: folds a kept rotation into block `i` and the stream around it. The stream entering
/// the block merges into the previous block's exit if it has one, else gets a fresh `MatMul`;
/// the exit becomes the next block's entry (the last block's is folded into the head).
fn fold_rotation(
    m: &mut Module,
    layers: &Layers,
    i: usize,
    rotation: &Rotation,
    entry: &mut [Boundary],
) -> Result<(), PassError> {
    let q1 = &rotation.q1;
    rotations::fold_layer(m, layers, i, q1, &rotation.r2)?;
    if let Some(perm) = &rotation.mlp {
        permute_hidden(m, &layers.layers[i], perm)?;
    }
    match entry[i].take() {
        Some((k, b)) => {
            let p = rotations::premultiply_matmul(m, k, &b, q1)?;
            entry[i] = Some((k, p));
        }
        None => {
            let k = rotations::insert_matmul(m, layers.layers[i].stream_in, q1)?;
            entry[i] = Some((k, q1.clone()));
        }
    }
    if i + 1 < layers.layers.len() {
        let qt = q1.transpose().to_owned();
        let k = rotations::insert_matmul(m, layers.layers[i + 1].stream_in, &qt)?;
        entry[i + 1] = Some((k, qt));
    }
    Ok(())
}

/// Permutes the MLP's hidden channels of one block: gate/up rows and down columns (new
/// position `k` takes old channel `perm[k]`); the block computes the same function.
fn permute_hidden(m: &mut Module, lp: &LayerParts, perm: &[usize]) -> Result<(), PassError> {
    let current = |m: &Module, l: &Linear| match_linear(m, m.main_graph(), l.node).unwrap_or(*l);
    for l in [&lp.gate, &lp.up] {
        let l = current(m, l);
        let (w, _, cols) = linear_weight(m, &l)?;
        let p: Vec<f64> = perm
            .iter()
            .flat_map(|&old| w[old * cols..(old + 1) * cols].iter().copied())
            .collect();
        set_linear_weight(m, &l, &p)?;
    }
    let l = current(m, &lp.down);
    let (w, rows, cols) = linear_weight(m, &l)?;
    let mut p = vec![0.0; rows * cols];
    for r in 0..rows {
        for (k, &old) in perm.iter().enumerate() {
            p[r * cols + k] = w[r * cols + old];
        }
    }
    set_linear_weight(m, &l, &p)
}

/// The rotation part of a block's note line.
fn block_note(line: &mut String, block: &BlockReport) {
    let _ = write!(
        line,
        "; entropy {:.2} → {:.2}",
        block.entropy_before, block.entropy_after
    );
    if let Some([s, h, d]) = block.permutation {
        let _ = write!(
            line,
            "; permutation proxy cost stream {:.2} → {:.2}, heads {:.2} → {:.2}, mlp {:.2} → {:.2}",
            s.0, s.1, h.0, h.1, d.0, d.1
        );
    }
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
        return Err(PassError::new("the evaluator returned no block output")
            .with_kind(PassErrorKind::Evaluation));
    };
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (a, b) in got.iter().zip(reference) {
        let (EvalTensor::F32 { data: a, .. }, EvalTensor::F32 { data: b, .. }) = (a, b) else {
            return Err(PassError::new("the block output is not float32")
                .with_kind(PassErrorKind::Evaluation));
        };
        for (x, y) in a.iter().zip(b) {
            let d = f64::from(*x) - f64::from(*y);
            num += d * d;
            den += f64::from(*y) * f64::from(*y);
        }
    }
    Ok((num / den.max(f64::MIN_POSITIVE)).sqrt())
}

fn run_pass(
    m: &mut Module,
    opts: &DenoisePruneOptions,
    cx: &mut PassContext,
) -> Result<PassResult, PassError> {
    let calib = cx
        .calibration()
        .cloned()
        .ok_or_else(|| missing_calibration(INFO.name))?;
    let r = denoise_prune(m, opts, &calib)?;
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
        opts.method.name(),
        opts.pattern,
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
