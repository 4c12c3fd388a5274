//! `rotate-heads{kind=haar|hadamard seed=N}`: an orthogonal change of basis per KV head on the
//! V/O path of every attention layer, folded into `v_proj` and `o_proj` (ALGORITHMS.md §0.1.6).
//!
//! Needs: the transformer structure (`ortho_ir::analysis::transformer`) to find, for every
//! attention branch, the v and o projections, the head counts and the head size; and a V/O path
//! that only moves whole head vectors between them: `Reshape`s whose target ends in a multiple
//! of the head size, `Transpose`s that keep the last axis last, `Unsqueeze`/`Squeeze`/`Expand`
//! off the last axis, `Identity`, and the attention core (`MatMul(p, v)` of the decomposed form,
//! or operand V of the `Attention` op without a KV cache). Anything else on the path — a KV-cache
//! input or output, an elementwise op, an unrecognized attention — is refused, naming the node.
//! Leaves: for KV head `j` with `R_j ∈ O(head_dim)`, the v projection's output features of head
//! `j` (weight and bias) map `v ↦ v R_j`, and the o projection's input features of every query
//! head of group `j` (GQA: query head `h` belongs to group `h / (heads / kv_heads)`, head-major
//! as the `Attention` op and Hugging Face exports lay them out) map by the same `R_j`, so
//! `(v R)(Rᵀ W_o) = v W_o`. Computed in f64, cast once; shared weights are copied. No node is
//! added.
//!
//! [`fold_vo_rotations`] is the reusable half: it takes explicit per-KV-head matrices for every
//! path [`vo_paths`] lists (e.g. learned rotations) and folds them.

use crate::linalg::orthogonal::{self, Orthogonal, Rng};
use crate::linalg::weights::{self, Rewrite, WeightError};
use crate::pass::{PassContext, PassError, PassResult};
use faer::Mat;
use ortho_ir::analysis::transformer::BranchKind;
use ortho_ir::analysis::util::{const_data, out0};
use ortho_ir::analysis::{analyze_transformer, FeatureOperand, Linear, Side};
use ortho_ir::{Graph, Module, NodeId, Op, TensorData, ValueId};
use std::collections::HashSet;

crate::pass_options! {
    /// Options of [`rotate_heads`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct RotateHeadsOptions {
        pub kind: HeadKind = {
            name: "kind",
            default: HeadKind::Haar,
            doc: "The per-KV-head transform: Haar-random rotation or randomized Hadamard (any head size).",
        },
        pub seed: u64 = {
            name: "seed",
            default: 0,
            doc: "Seed of the random construction (one matrix per KV head per layer, drawn in layer order).",
        },
    }
}

crate::declare_pass! {
    name: "rotate-heads",
    summary: "Applies an orthogonal map per KV head on every attention's V/O path (GQA-aware), folded into v_proj and o_proj.",
    options: RotateHeadsOptions,
    run: run_pass,
}

/// The per-head transform [`rotate_heads`] draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    Haar,
    Hadamard,
}

crate::word_option_type!(HeadKind {
    Haar = "haar",
    Hadamard = "hadamard",
});

/// One attention layer's V/O path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoPath {
    /// Index of the branch in `Structure::branches`.
    pub branch: usize,
    pub v: Linear,
    pub o: Linear,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl VoPath {
    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
}

/// What [`fold_vo_rotations`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RotateHeadsStats {
    /// Attention layers rotated.
    pub layers: usize,
    /// Per-KV-head matrices folded.
    pub matrices: usize,
    /// Largest `‖RᵀR − I‖_F` among them.
    pub orthogonality_error: f64,
    /// Constants rewritten, and of those copied because something else reads the original.
    pub rewritten: usize,
    pub copies: usize,
    /// How the matrices were built (set by [`rotate_heads`]).
    pub construction: String,
}

/// Operations that move whole head vectors without mixing their features.
fn moves_heads(m: &Module, g: &Graph, n: NodeId, hd: i64) -> bool {
    let node = g.node(n);
    let axes_off_last = |axes: Option<Vec<i64>>| axes.is_some_and(|a| a.iter().all(|&x| x >= 0));
    let operand_ints = |slot: usize| {
        node.operand(slot)
            .and_then(|v| const_data(m, g, v))
            .and_then(TensorData::to_i64_vec)
    };
    match &node.op {
        Op::Identity => true,
        Op::Reshape(_) => operand_ints(1)
            .and_then(|s| s.last().copied())
            .is_some_and(|l| l > 0 && l % hd == 0),
        Op::Transpose(a) => match &a.perm {
            Some(p) => p.last().is_some_and(|&l| l as usize + 1 == p.len()),
            None => false,
        },
        Op::Unsqueeze | Op::Squeeze => axes_off_last(operand_ints(1)),
        Op::Expand => operand_ints(1)
            .and_then(|s| s.last().copied())
            .is_some_and(|l| l == 1 || l == hd),
        _ => false,
    }
}

/// Checks that `v`'s output reaches `o` only through head moves and the attention core.
fn check_path(m: &Module, g: &Graph, p: &VoPath) -> Result<(), PassError> {
    let hd = p.head_dim as i64;
    // Phase 0: from v to the core; phase 1: from the core's output to o.
    let mut work: Vec<(ValueId, u8)> = vec![(p.v.output, 0)];
    let mut seen: HashSet<(ValueId, u8)> = HashSet::new();
    let mut reached_o = false;
    while let Some((v, phase)) = work.pop() {
        if !seen.insert((v, phase)) {
            continue;
        }
        if g.outputs.iter().any(|o| o.value == v) {
            return Err(PassError::at_main(
                m,
                v.node,
                "a V/O value is a graph output (a KV cache?): its basis is the model's interface",
            ));
        }
        for (u, slot) in g.users(v) {
            let op = &g.node(u).op;
            if phase == 1 && u == p.o.node && slot == 0 {
                reached_o = true;
                continue;
            }
            if phase == 0 {
                if let Op::Attention(_) = op {
                    let n = g.node(u);
                    let cache = n.operand(4).is_some() || n.operand(5).is_some();
                    let present = g.results(u).iter().skip(1).any(|r| !g.users(*r).is_empty());
                    if slot != 2 || cache || present {
                        return Err(PassError::at_main(m, u, "an Attention op with a KV cache (or V in another slot) on the V/O path"));
                    }
                    work.push((out0(u), 1));
                    continue;
                }
                if matches!(op, Op::MatMul) && slot == 1 && u != p.o.node {
                    work.push((out0(u), 1));
                    continue;
                }
            }
            if moves_heads(m, g, u, hd) && slot == 0 {
                work.push((out0(u), phase));
                continue;
            }
            return Err(PassError::at_main(
                m,
                u,
                format!(
                    "{} on the V/O path does not just move head vectors",
                    op.name()
                ),
            ));
        }
    }
    if !reached_o {
        return Err(PassError::at_main(
            m,
            p.o.node,
            "the v projection's output does not reach o_proj through the attention core",
        ));
    }
    Ok(())
}

/// Every attention layer's V/O path of the main graph, in block order, each checked; an error
/// names the first attention whose path is not recognized.
pub fn vo_paths(m: &Module) -> Result<Vec<VoPath>, PassError> {
    let gid = m.main;
    let s = analyze_transformer(m, gid);
    let g = m.graph(gid);
    let mut out = Vec::new();
    for (i, b) in s.branches.iter().enumerate() {
        let BranchKind::Attention(a) = &b.kind else {
            continue;
        };
        let at = g.describe(a.o.node);
        let (Some(v), Some(h), Some(kv), Some(hd)) = (a.v, a.heads, a.kv_heads, a.head_dim) else {
            return Err(PassError::at_main(m,
                a.o.node,
                format!("attention writing through {at}: v projection, head counts or head size not found"),
            ));
        };
        if h <= 0 || kv <= 0 || hd <= 0 || h % kv != 0 {
            return Err(PassError::at_main(
                m,
                a.o.node,
                format!("{h} query heads cannot share {kv} KV heads"),
            ));
        }
        if v.out_features != kv * hd || a.o.in_features != h * hd {
            return Err(PassError::at_main(m,
                a.o.node,
                format!(
                    "v projection has {} outputs and o projection {} inputs; expected {kv}×{hd} and {h}×{hd}",
                    v.out_features, a.o.in_features
                ),
            ));
        }
        let p = VoPath {
            branch: i,
            v,
            o: a.o,
            heads: h as usize,
            kv_heads: kv as usize,
            head_dim: hd as usize,
        };
        check_path(m, g, &p)?;
        out.push(p);
    }
    if out.is_empty() {
        return Err(PassError::new(
            "no attention layer found (the structure analysis recognizes none)",
        ));
    }
    Ok(out)
}

/// `x ↦ x · blockdiag(R_{map(0)}, R_{map(1)}, …)` on every fiber along `axis` of a tensor
/// (the last axis, or axis 0 of a matrix); `map[b]` picks the matrix of block `b`.
fn rotate_blocks(
    x: &[f64],
    dims: &[i64],
    axis: usize,
    mats: &[Mat<f64>],
    map: &[usize],
) -> Result<Vec<f64>, WeightError> {
    let hd = mats.first().map(|r| r.nrows()).unwrap_or(0);
    let n = hd * map.len();
    if dims.get(axis).copied() != Some(n as i64) {
        return Err(WeightError::Shape(format!(
            "axis {axis} of a tensor of shape {dims:?} is not {n} wide"
        )));
    }
    let mut y = vec![0.0; x.len()];
    if axis + 1 == dims.len() {
        let rows = x.len() / n.max(1);
        for (b, &j) in map.iter().enumerate() {
            let r = &mats[j];
            for row in 0..rows {
                let src = &x[row * n + b * hd..row * n + (b + 1) * hd];
                let dst = &mut y[row * n + b * hd..row * n + (b + 1) * hd];
                for (jj, d) in dst.iter_mut().enumerate() {
                    *d = (0..hd).map(|i| src[i] * r[(i, jj)]).sum();
                }
            }
        }
    } else if axis == 0 && dims.len() == 2 {
        let cols = dims[1] as usize;
        for (b, &j) in map.iter().enumerate() {
            let r = &mats[j];
            let xin = faer::MatRef::from_row_major_slice(
                &x[b * hd * cols..(b + 1) * hd * cols],
                hd,
                cols,
            );
            let yout = faer::MatMut::from_row_major_slice_mut(
                &mut y[b * hd * cols..(b + 1) * hd * cols],
                hd,
                cols,
            );
            faer::linalg::matmul::matmul(
                yout,
                faer::Accum::Replace,
                r.transpose(),
                xin,
                1.0,
                faer::Par::Seq,
            );
        }
    } else {
        return Err(WeightError::Shape(format!(
            "cannot rotate axis {axis} of a tensor of shape {dims:?}"
        )));
    }
    Ok(y)
}

/// Folds `rotations[i][j]` (orthogonal, `head_dim × head_dim`, f64) for KV head `j` of path
/// `paths[i]` into the weights: v's output features `v ↦ v R_j`, o's input features of every
/// query head of group `j` by the same map. `paths` must come from [`vo_paths`] on this module
/// (nothing may have changed the graph in between). Matrices further than 1e-6 from orthogonal
/// are refused: the fold uses `Rᵀ` as the inverse.
pub fn fold_vo_rotations(
    m: &mut Module,
    paths: &[VoPath],
    rotations: &[Vec<Mat<f64>>],
) -> Result<RotateHeadsStats, PassError> {
    let mut worst = 0.0f64;
    for (p, rs) in paths.iter().zip(rotations) {
        for r in rs.iter().filter(|r| r.nrows() == r.ncols()) {
            let e = Orthogonal::Dense(r.clone()).orthogonality_error();
            if e.is_nan() || e > 1e-6 {
                return Err(PassError::at_main(
                    m,
                    p.o.node,
                    format!("a head rotation is not orthogonal (‖RᵀR − I‖_F = {e:.3e})"),
                ));
            }
            worst = worst.max(e);
        }
    }
    let mut stats = fold_vo_maps(m, paths, rotations, rotations)?;
    stats.orthogonality_error = worst;
    Ok(stats)
}

/// Folds general invertible per-KV-head maps (UPM's inside-shard keys): v's output features of
/// KV head `j` of path `i` map `v ↦ v A_j` with `A_j = v_maps[i][j]`, o's input features of
/// every query head of group `j` map `u ↦ u M_j` with `M_j = o_maps[i][j]`. The function is kept
/// when `M_j = A_j⁻ᵀ` (the caller computes it in f64; `A_j` itself when orthogonal). Nothing is
/// checked about invertibility here. Products in f64, one cast per weight.
pub fn fold_vo_maps(
    m: &mut Module,
    paths: &[VoPath],
    v_maps: &[Vec<Mat<f64>>],
    o_maps: &[Vec<Mat<f64>>],
) -> Result<RotateHeadsStats, PassError> {
    let rotations = v_maps;
    if paths.len() != rotations.len() || paths.len() != o_maps.len() {
        return Err(PassError::new(format!(
            "{} sets of head rotations for {} attention layers",
            rotations.len(),
            paths.len()
        )));
    }
    let mut stats = RotateHeadsStats::default();
    let mut rewrites = Vec::new();
    // Key → (path, role): role 0 = v (kv-head blocks), 1 = o (query-head blocks).
    let mut keys: Vec<(usize, usize, usize)> = Vec::new();
    for (i, (p, rs)) in paths.iter().zip(rotations).enumerate() {
        if rs.len() != p.kv_heads || o_maps[i].len() != p.kv_heads {
            return Err(PassError::at_main(
                m,
                p.o.node,
                format!("{} head rotations for {} KV heads", rs.len(), p.kv_heads),
            ));
        }
        for r in rs.iter().chain(&o_maps[i]) {
            if r.nrows() != p.head_dim || r.ncols() != p.head_dim {
                return Err(PassError::at_main(
                    m,
                    p.o.node,
                    format!(
                        "a {}×{} head rotation for head size {}",
                        r.nrows(),
                        r.ncols(),
                        p.head_dim
                    ),
                ));
            }
        }
        stats.matrices += rs.len();
        let mut push = |consumer, slot, konst, transpose, axis, role| {
            keys.push((i, role, axis));
            rewrites.push(Rewrite {
                consumer,
                slot,
                konst,
                transpose,
                key: keys.len() - 1,
            });
        };
        // The head rotation folds into the operand carrying v's output and o's input features
        // (the weight of a dense layer, one factor of a low-rank one).
        let (vf, of) = (side(m, &p.v, Side::Output)?, side(m, &p.o, Side::Input)?);
        push(
            p.v.node,
            vf.slot,
            vf.weight.konst,
            vf.weight.transpose,
            vf.axis,
            0,
        );
        if let Some(b) = p.v.bias {
            let axis = m.tensor(b.tensor).dims.len().saturating_sub(1);
            push(b.node, b.slot, b.konst, None, axis, 0);
        }
        push(
            p.o.node,
            of.slot,
            of.weight.konst,
            of.weight.transpose,
            of.axis,
            1,
        );
        stats.layers += 1;
    }
    let maps: Vec<[Vec<usize>; 2]> = paths
        .iter()
        .map(|p| {
            [
                (0..p.kv_heads).collect(),
                (0..p.heads).map(|h| h / p.group()).collect(),
            ]
        })
        .collect();
    let make = |key: usize, old: &TensorData| -> Result<TensorData, WeightError> {
        let (i, role, axis) = keys[key];
        let v = weights::decode(old)?;
        let mats = if role == 0 { &v_maps[i] } else { &o_maps[i] };
        let out = rotate_blocks(&v, &old.dims, axis, mats, &maps[i][role])?;
        weights::encode_like(old, &out)
    };
    let gid = m.main;
    let applied = weights::apply(m, gid, &rewrites, "head_rotated", &make)?;
    stats.rewritten = applied.in_place + applied.copies;
    stats.copies = applied.copies;
    Ok(stats)
}

/// Draws one matrix per KV head per attention layer and folds them ([`fold_vo_rotations`]).
pub fn rotate_heads(
    m: &mut Module,
    opts: &RotateHeadsOptions,
) -> Result<RotateHeadsStats, PassError> {
    let paths = vo_paths(m)?;
    let mut rng = Rng::new(opts.seed);
    let mut desc = String::new();
    let rotations: Vec<Vec<Mat<f64>>> = paths
        .iter()
        .map(|p| {
            (0..p.kv_heads)
                .map(|_| match opts.kind {
                    HeadKind::Haar => {
                        desc = format!("Haar {}", p.head_dim);
                        orthogonal::haar(p.head_dim, &mut rng)
                    }
                    HeadKind::Hadamard => {
                        let (q, d) = orthogonal::hadamard(p.head_dim, &mut rng);
                        desc = d;
                        q
                    }
                })
                .collect()
        })
        .collect();
    let mut stats = fold_vo_rotations(m, &paths, &rotations)?;
    stats.construction = desc;
    Ok(stats)
}

fn run_pass(
    m: &mut Module,
    opts: &RotateHeadsOptions,
    cx: &mut PassContext,
) -> Result<PassResult, PassError> {
    let s = rotate_heads(m, opts)?;
    cx.stats(&[
        ("layers", s.layers),
        ("matrices", s.matrices),
        ("rewritten", s.rewritten),
        ("copies", s.copies),
    ]);
    cx.note(format!(
        "{} per-KV-head matrices ({}) over {} attention layers, max ‖RᵀR − I‖_F = {:.3e}",
        s.matrices, s.construction, s.layers, s.orthogonality_error
    ));
    Ok(PassResult::changed(s.layers > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_follow_the_group_map() {
        // Two 2×2 blocks: a swap for group 0, a sign flip for group 1; three query heads
        // per group would repeat them (here map [0, 1]).
        let swap = Mat::from_fn(2, 2, |i, j| if i != j { 1.0 } else { 0.0 });
        let flip = Mat::from_fn(2, 2, |i, j| if i == j { -1.0 } else { 0.0 });
        let mats = vec![swap, flip];
        let x = [1.0, 2.0, 3.0, 4.0];
        let y = rotate_blocks(&x, &[4], 0, &mats, &[0, 1]).expect("rotate");
        assert_eq!(y, vec![2.0, 1.0, -3.0, -4.0]);
        // Axis 0 of a [4, 1] matrix gives the same numbers.
        let y0 = rotate_blocks(&x, &[4, 1], 0, &mats, &[0, 1]).expect("rotate");
        assert_eq!(y0, y);
        let y1 = rotate_blocks(&x, &[4], 0, &mats, &[1, 1]).expect("rotate");
        assert_eq!(y1, vec![-1.0, -2.0, -3.0, -4.0]);
    }
}

/// The operand of `l` carrying one side's features, or an error naming a linear no per-head
/// rotation folds into (a Kronecker sum, a compact N:M weight, a reparameterized weight).
fn side(m: &Module, l: &Linear, side: Side) -> Result<FeatureOperand, PassError> {
    l.features(side).ok_or_else(|| {
        PassError::at_main(
            m,
            l.node,
            format!(
                "a {} linear: no per-head rotation folds into its stored form (rotate before factorizing, sparsifying or reparameterizing; or merge first)",
                l.kind_name()
            ),
        )
    })
}
