//! UPM re-keying (ALGORITHMS.md §3): composing a fresh orthogonal residual-basis change into one
//! shard's weights, so that a chain of shards keeps its function while shards of different
//! epochs stop fitting together.
//!
//! A shard is a run of blocks cut out of a model (`ortho-opt shard split`): its residual stream
//! enters at a graph input (or the embedding) and leaves at a graph output (or the head). The
//! gauge analysis blocks every transform of such a stream because the input and output are the
//! shard's interface; here changing that interface is the point, in lockstep with the
//! neighbours, so those two blockers are the only ones waived.
//!
//! Two placements:
//! - **folded**: one change `R` for the whole chain, applied to every shard's stream (embedding
//!   `E ← E R`, readers `W ← Rᵀ W`, writers `W ← W R`, head `W ← Rᵀ W`); no node is added and
//!   the boundary tensors change basis with it;
//! - **per-shard**: shard `i` gets its own change `R_i`; a `d × d` MatMul `B_i` at the entry of
//!   every shard but the first carries the basis of the shard before into the shard's own
//!   (`B_i ← R_{i−1}ᵀ B_i R_i`, inserted as `R_{i−1}ᵀ R_i` the first time).
//!
//! Re-keying shard `i` reads only shard `i` and the changes `R_{i−1}`, `R_i` it shares with its
//! neighbours. Numerics: every weight is decoded to f64, transformed and encoded once into its
//! storage dtype per epoch; `B_i` is composed in f64 from its stored value.

pub mod attack;
pub mod heads;

use crate::linalg::orthogonal::{left_multiply_transposed, right_multiply, Orthogonal};
use crate::linalg::weights::{self, Rewrite, WeightError};
use crate::pass::PassError;
use crate::transforms::rotate_residual::{build_transform, RotationKind};
use faer::Mat;
use ortho_ir::analysis::{analyze_gauge, BlockerKind, Group, Origin, StreamClass};
use ortho_ir::{Module, NodeId, Op, TensorData, ValueId};

/// The change of one shard at one epoch, derived from the epoch's seed: `(seed, epoch, shard)`
/// for per-shard placement, `(seed, epoch)` for the folded one (`shard = None`).
pub fn change(
    kind: RotationKind,
    d: usize,
    seed: u64,
    epoch: u64,
    shard: Option<usize>,
) -> Orthogonal {
    build_transform(
        kind,
        d,
        mix_seed(seed, epoch, shard.map_or(u64::MAX, |i| i as u64)),
    )
    .0
}

/// One seed from three words (SplitMix64 finalizer over each): nearby seeds, epochs and tags
/// give unrelated streams.
pub(crate) fn mix_seed(seed: u64, epoch: u64, tag: u64) -> u64 {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    };
    mix(seed ^ mix(epoch.wrapping_add(0x9e3779b97f4a7c15)) ^ mix(tag ^ 0x51ed))
}

/// What [`rekey_shard`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RekeyStats {
    pub width: usize,
    /// Weights rewritten by the stream change (embedding, readers, writers, head).
    pub rewritten: usize,
    /// Constants copied because another reader kept the old values.
    pub copies: usize,
    /// Norm gains folded first (only on a shard's first re-key).
    pub norms_folded: usize,
    /// The entry MatMul was inserted (first per-shard re-key of a shard after the first).
    pub entry_inserted: bool,
    /// `‖RᵀR − I‖_F` of the shard's own change.
    pub orthogonality_error: f64,
}

fn blocking(class: &StreamClass, need: Group) -> Option<&ortho_ir::analysis::Blocker> {
    class.blockers.iter().find(|b| {
        !b.allows.contains(need)
            && !matches!(b.kind, BlockerKind::GraphInput | BlockerKind::GraphOutput)
    })
}

fn need_of(q: &Orthogonal) -> Group {
    match q {
        Orthogonal::SignedPerm { .. } => Group::SIGNED_PERMUTATION,
        _ => Group::ORTHOGONAL,
    }
}

/// `v ↦ v Q` along `axis` (the last axis, or axis 0 of a matrix).
fn rotate_tensor(old: &TensorData, axis: usize, q: &Orthogonal) -> Result<TensorData, WeightError> {
    let d = q.dim();
    if old.dims.get(axis).copied() != Some(d as i64) {
        return Err(WeightError::Shape(format!(
            "axis {axis} of a tensor of shape {:?} is not the stream width {d}",
            old.dims
        )));
    }
    if axis + 1 == old.dims.len() {
        return weights::map_rows(old, d, &|v, rows| Ok(right_multiply(v, rows, q)));
    }
    if axis == 0 && old.dims.len() == 2 {
        let v = weights::decode(old)?;
        return weights::encode_like(old, &left_multiply_transposed(&v, old.dims[1] as usize, q));
    }
    Err(WeightError::Shape(format!(
        "cannot rotate axis {axis} of a tensor of shape {:?}",
        old.dims
    )))
}

/// Rewrites the fold sites of `class` with `q`, skipping the constants in `skip`.
fn rotate_class(
    m: &mut Module,
    class: &StreamClass,
    q: &Orthogonal,
    skip: &[NodeId],
) -> Result<(usize, usize), PassError> {
    let gid = m.main;
    let mut axes = std::collections::HashMap::new();
    let mut rewrites = Vec::new();
    for s in class.sites.iter().filter(|s| !skip.contains(&s.konst)) {
        // One key per axis: a constant read along two different axes needs two copies.
        let key = s.axis;
        axes.insert(key, s.axis);
        rewrites.push(Rewrite {
            consumer: s.consumer,
            slot: s.slot,
            konst: s.konst,
            transpose: s.transpose,
            key,
        });
    }
    let n = rewrites.len();
    let make = |key: usize, old: &TensorData| rotate_tensor(old, axes[&key], q);
    let applied = weights::apply(m, gid, &rewrites, "rekeyed", &make)?;
    Ok((n, applied.copies))
}

/// `Pᵀ B R` in f64 for the row-major d × d matrix `b`.
fn sandwich(b: &[f64], d: usize, p: &Orthogonal, r: &Orthogonal) -> Vec<f64> {
    // Pᵀ B: rows of B combined; then (Pᵀ B) R: right multiply.
    let pb = left_multiply_transposed(b, d, p);
    right_multiply(&pb, d, r)
}

/// The entry MatMul of a per-shard shard: the boundary linear that begins the chain's second
/// segment, with its constant.
fn entry_linear(m: &Module, class: &StreamClass) -> Option<(NodeId, NodeId)> {
    let g = m.main_graph();
    let mm = *class.entries.first()?;
    let w = g.node(mm).operand(1)?;
    matches!(g.node(w.node).op, Op::Const(_)).then_some((mm, w.node))
}

/// Composes the shard's change into its weights (see the module comment). `incoming` is the
/// change of the shard before (per-shard placement, shards after the first); `None` for the
/// folded placement and the first shard.
pub fn rekey_shard(
    m: &mut Module,
    own: &Orthogonal,
    incoming: Option<&Orthogonal>,
) -> Result<RekeyStats, PassError> {
    let gid = m.main;
    let d = own.dim();
    let mut stats = RekeyStats {
        width: d,
        orthogonality_error: own.orthogonality_error(),
        ..Default::default()
    };
    // Orthogonal changes of the stream need every norm gain to be 1: fold them into the
    // readers first (function-preserving inside the shard; done once, at the first re-key).
    let gauge = analyze_gauge(m, gid);
    let has_gains = gauge.classes.iter().any(|c| {
        c.blockers
            .iter()
            .any(|b| matches!(b.kind, BlockerKind::NormGain { foldable: true, .. }))
    });
    if has_gains {
        let f = crate::transforms::fold_norms::fold_norms(m)?;
        stats.norms_folded = f.folded;
    }
    let gauge = analyze_gauge(m, gid);
    let chain = gauge.chain();
    let g = m.graph(gid);
    if chain.is_empty() {
        return Err(PassError::new("no residual stream found in the shard").in_graph(gid));
    }
    for &c in &chain {
        let class = &gauge.classes[c];
        if class.width as usize != d {
            return Err(PassError::new(format!(
                "the shard's stream has width {}, the key {d}",
                class.width
            ))
            .in_graph(gid));
        }
        if let Some(b) = blocking(class, need_of(own)) {
            return Err(PassError::at(
                g,
                b.node,
                format!("cannot re-key the stream: {}", b.reason()),
            )
            .in_graph(gid));
        }
    }
    let first = &gauge.classes[chain[0]];
    match (incoming, chain.len()) {
        (None, 1) => {
            let (n, c) = rotate_class(m, first, own, &[])?;
            stats.rewritten = n;
            stats.copies = c;
        }
        (Some(p), 1) if first.origin == Origin::Input => {
            // First per-shard re-key: the entry MatMul is inserted after the stream input,
            // holding Pᵀ R (one rounding), and the rest of the shard turns by R.
            let input = ValueId {
                node: *first.entries.first().ok_or_else(|| PassError::new("shard input not found"))?,
                output: 0,
            };
            let (n, c) = rotate_class(m, first, own, &[])?;
            let eye: Vec<f64> = (0..d * d).map(|i| f64::from(u8::from(i / d == i % d))).collect();
            let b = sandwich(&eye, d, p, own);
            let bm = Mat::from_fn(d, d, |i, j| b[i * d + j]);
            crate::linalg::layer_rotations::insert_matmul(m, input, &bm)?;
            stats.rewritten = n + 1;
            stats.copies = c;
            stats.entry_inserted = true;
        }
        (Some(p), 2) if gauge.classes[chain[1]].origin == Origin::Boundary => {
            let inner = &gauge.classes[chain[1]];
            let (mm, k) = entry_linear(m, inner).ok_or_else(|| {
                PassError::new("the shard's entry boundary has no constant matrix").in_graph(gid)
            })?;
            let (n, c) = rotate_class(m, inner, own, &[k])?;
            let g = m.graph(gid);
            let Op::Const(tid) = g.node(k).op else {
                return Err(PassError::at(g, mm, "entry matrix is not a constant").in_graph(gid));
            };
            let old = m.tensor(tid).clone();
            let v = weights::decode(&old).map_err(|e| PassError::at(m.graph(gid), k, e.to_string()))?;
            let nb = weights::encode_like(&old, &sandwich(&v, d, p, own))
                .map_err(|e| PassError::at(m.graph(gid), k, e.to_string()))?;
            let nt = m.add_tensor(nb);
            m.graph_mut(gid).node_mut(k).op = Op::Const(nt);
            stats.rewritten = n + 1;
            stats.copies = c;
        }
        (None, _) => {
            return Err(PassError::new(
                "the shard has an entry basis change (per-shard placement): re-key it with placement per-shard",
            )
            .in_graph(gid))
        }
        _ => {
            return Err(PassError::new(format!(
                "unexpected stream layout for a per-shard re-key ({} segments)",
                chain.len()
            ))
            .in_graph(gid))
        }
    }
    Ok(stats)
}
