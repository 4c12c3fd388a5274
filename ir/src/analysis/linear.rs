//! Linear layers: `MatMul(x, W)` with a constant 2-D weight (stored `[in, out]`, or `[out, in]`
//! behind a `Transpose`, as a tied head reads the embedding) and `Gemm(x, B, C)` in either
//! `transB` layout; a constant bias is the `Gemm`'s `C` or an `Add` right after the `MatMul`.
//!
//! Everything is found from the ops and the constants' shapes; names play no part.
//!
//! # Structured linears (extension point)
//!
//! [`LinearKind`] says how a layer computes its product. Every layer recognized today is
//! [`LinearKind::Dense`]: one constant matrix, described by [`Linear::weight`]. A structured
//! linear — factorized (Kronecker, low rank) or reparameterized (POET `R·W0·P`) — comes as a new
//! op; to make the analyses see it, add a `LinearKind` variant carrying its factors (constant
//! operands, as [`WeightRef`]s), an arm in [`match_linear`] that recognizes the op and arms in
//! [`Linear::features`] saying which operand carries each side's features. The structure and
//! gauge analyses then place it like any linear: they only read `node`, `input`, `output`, the
//! feature counts and [`Linear::features`] — a side without a feature operand is still a reader
//! or writer of the stream, but it blocks every transform of it (the gauge analysis records a
//! `StructuredLinear` blocker). A pass that folds a per-feature map (rotations, norm gains) asks
//! [`Linear::features`]; a pass that rewrites the stored matrix itself (prune) asks
//! [`Linear::dense`] first and skips or refuses other kinds; `LinearKind` is `#[non_exhaustive]`
//! so that matches outside this crate already handle kinds added later.

use super::util::{const_data, const_tensor, out0, sole_user_with_const};
use crate::graph::{Graph, NodeId, ValueId};
use crate::module::Module;
use crate::op::Op;
use crate::tensor::TensorId;

/// A constant weight as a linear layer reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightRef {
    /// The node that holds the constant (`Op::Const` or a `Constant` op).
    pub konst: NodeId,
    pub tensor: TensorId,
    /// A `Transpose` between the constant and the layer, when there is one.
    pub transpose: Option<NodeId>,
    /// The axis of the stored constant that runs over the input features.
    pub in_axis: usize,
}

impl WeightRef {
    /// The axis of the stored constant that runs over the output features.
    pub fn out_axis(&self) -> usize {
        1 - self.in_axis
    }
}

/// A constant bias added to a linear layer's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BiasRef {
    /// The node that adds it (the `Gemm` itself or an `Add`) and the operand slot it sits in.
    pub node: NodeId,
    pub slot: usize,
    pub konst: NodeId,
    pub tensor: TensorId,
}

/// Which op computes the product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearOp {
    MatMul,
    Gemm,
}

/// How a linear layer computes its product (see the module docs for adding a kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinearKind {
    /// One constant weight matrix ([`Linear::weight`]) read by a `MatMul` or `Gemm`.
    Dense,
    /// `ortho.FactorizedLinear(x, P, Q)` (see [`crate::factorized`]): [`Linear::weight`] is
    /// the first factor `P` (`A` or `U`), `second` the other (`B` or `V`); neither is the
    /// matrix `W`, so passes that rewrite `W` in place skip this kind.
    Factorized {
        op: crate::factorized::Factorized,
        second: WeightRef,
    },
    /// `ortho.SparseLinear(x, values, indices)` (see [`crate::sparse`]): [`Linear::weight`] is
    /// the kept values `[out, groups·n]`, `indices` the packed positions; a rotation of either
    /// side would break the N:M pattern, so no side has a feature operand.
    Sparse {
        op: crate::sparse::NmSparse,
        indices: WeightRef,
    },
    /// A `MatMul`/`Gemm` whose weight is computed at run time from constants only (e.g. a
    /// POET reparameterization `R·W0·P`, whose factors are trained): [`Linear::weight`] is the
    /// largest constant of the weight's shape in that computation (the frozen base), `root` the
    /// node that yields the weight. A transform folded into the base would be undone or mixed
    /// by the factors around it, so no side has a feature operand: merge first.
    Computed { root: NodeId },
}

/// A linear layer `y = x W (+ b)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linear {
    /// The node computing the product (the `MatMul` or `Gemm` of a dense layer).
    pub node: NodeId,
    pub kind: LinearKind,
    pub op: LinearOp,
    pub input: ValueId,
    /// The operand slot of the weight on `node`.
    pub weight_slot: usize,
    pub weight: WeightRef,
    pub bias: Option<BiasRef>,
    /// The layer's result: the bias `Add` when there is one, else `node`'s result.
    pub output: ValueId,
    pub in_features: i64,
    pub out_features: i64,
}

impl Linear {
    /// The stored weight matrix when the layer is dense (one constant matrix a pass may rewrite
    /// in place); `None` for structured kinds.
    pub fn dense(&self) -> Option<&WeightRef> {
        match self.kind {
            LinearKind::Dense => Some(&self.weight),
            LinearKind::Factorized { .. }
            | LinearKind::Sparse { .. }
            | LinearKind::Computed { .. } => None,
        }
    }

    /// The constant operand through which the layer meets its input (or output) features, and
    /// the axis of it that runs over them: a per-feature linear map `T` on that side (a
    /// rotation of the stream, a norm gain) folds into this operand alone, along that axis.
    /// `None` when no single operand carries those features — a Kronecker sum mixes them
    /// across both factors, so only a transform that is itself a Kronecker product would fold.
    pub fn features(&self, side: Side) -> Option<FeatureOperand> {
        use crate::factorized::Factorized;
        match (self.kind, side) {
            (LinearKind::Dense, Side::Input) => Some(FeatureOperand {
                slot: self.weight_slot,
                weight: self.weight,
                axis: self.weight.in_axis,
            }),
            (LinearKind::Dense, Side::Output) => Some(FeatureOperand {
                slot: self.weight_slot,
                weight: self.weight,
                axis: self.weight.out_axis(),
            }),
            // `W = U·Vᵀ` with `U: [out, r]` (slot 1) and `V: [in, r]` (slot 2): the input
            // features are V's rows, the output features U's rows.
            (
                LinearKind::Factorized {
                    op: Factorized::LowRank { .. },
                    second,
                },
                Side::Input,
            ) => Some(FeatureOperand {
                slot: 2,
                weight: second,
                axis: 0,
            }),
            (
                LinearKind::Factorized {
                    op: Factorized::LowRank { .. },
                    ..
                },
                Side::Output,
            ) => Some(FeatureOperand {
                slot: 1,
                weight: self.weight,
                axis: 0,
            }),
            (
                LinearKind::Factorized {
                    op: Factorized::KronSum { .. },
                    ..
                },
                _,
            ) => None,
            // A rotation (or a per-feature scale, on the input side) of a compact N:M weight
            // changes which entries are zero.
            (LinearKind::Sparse { .. }, _) => None,
            // `R·W0·P`: a transform of the stream folded into `W0` would land between the
            // trained factors.
            (LinearKind::Computed { .. }, _) => None,
        }
    }

    /// What the layer is, in words, for diagnostics (`dense`, `Kronecker-factorized`, …).
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            LinearKind::Dense => "dense",
            LinearKind::Factorized {
                op: crate::factorized::Factorized::KronSum { .. },
                ..
            } => "Kronecker-factorized",
            LinearKind::Factorized {
                op: crate::factorized::Factorized::LowRank { .. },
                ..
            } => "low-rank",
            LinearKind::Sparse { .. } => "N:M-sparse",
            LinearKind::Computed { .. } => "reparameterized",
        }
    }
}

/// A side of a linear layer: its input features or its output features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Input,
    Output,
}

/// The operand of a linear layer that carries one side's features (see [`Linear::features`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureOperand {
    /// The operand slot on [`Linear::node`].
    pub slot: usize,
    pub weight: WeightRef,
    /// The axis of the stored constant that runs over that side's features.
    pub axis: usize,
}

/// The constant 2-D weight behind operand `w`, directly or through one 2-D `Transpose`.
/// `transposed_use` says whether the layer reads the operand transposed (`Gemm` with `transB`).
fn weight_ref(m: &Module, g: &Graph, w: ValueId, transposed_use: bool) -> Option<WeightRef> {
    let (konst_val, through) = match &g.node(w.node).op {
        Op::Transpose(a) => {
            let perm_ok = match &a.perm {
                None => true,
                Some(p) => p.as_slice() == [1, 0],
            };
            if !perm_ok {
                return None;
            }
            (g.node(w.node).operand(0)?, Some(w.node))
        }
        _ => (w, None),
    };
    let tensor = const_tensor(g, konst_val)?;
    let data = m.tensor(tensor);
    if data.dims.len() != 2 || !data.dtype.is_float() {
        return None;
    }
    // The stored constant is [in, out] unless exactly one of (Transpose node, transB) flips it.
    let flipped = through.is_some() != transposed_use;
    Some(WeightRef {
        konst: konst_val.node,
        tensor,
        transpose: through,
        in_axis: if flipped { 1 } else { 0 },
    })
}

/// How many nodes the computation of a run-time weight may have before it is not looked at.
const COMPUTED_WEIGHT_NODES: usize = 256;

/// A 2-D float weight behind operand `w` (directly or through one 2-D `Transpose`) computed
/// from constants only, within [`COMPUTED_WEIGHT_NODES`] nodes: the weight reference (its
/// base, the largest constant with the weight's shape), the kind, and the weight's stored dims.
fn computed_weight(
    m: &Module,
    g: &Graph,
    w: ValueId,
    transposed_use: bool,
) -> Option<(WeightRef, LinearKind, Vec<i64>)> {
    let (root, through) = match &g.node(w.node).op {
        Op::Transpose(a) if a.perm.as_ref().is_none_or(|p| p.as_slice() == [1, 0]) => {
            (g.node(w.node).operand(0)?, Some(w.node))
        }
        _ => (w, None),
    };
    if const_tensor(g, root).is_some() {
        // A constant that `weight_ref` did not take (not 2-D, not float) is no weight either.
        return None;
    }
    // The whole computation must end in constants: a graph input or a stream value on the
    // way makes it data, not a weight.
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![root.node];
    let mut consts: Vec<(NodeId, crate::TensorId)> = Vec::new();
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        if seen.len() > COMPUTED_WEIGHT_NODES {
            return None;
        }
        let node = g.node(id);
        if let Some(t) = const_tensor(
            g,
            ValueId {
                node: id,
                output: 0,
            },
        ) {
            consts.push((id, t));
            continue;
        }
        if node.operands().is_empty() || matches!(node.op, Op::Input { .. }) {
            return None;
        }
        for v in node.operands().iter().flatten() {
            stack.push(v.node);
        }
    }
    let ty_dims: Option<Vec<i64>> = g.value_type(root).as_tensor().and_then(|t| {
        t.shape
            .as_ref()?
            .iter()
            .map(|d| match d {
                crate::Dim::Fixed(v) => Some(*v),
                _ => None,
            })
            .collect()
    });
    let numel = |d: &[i64]| d.iter().try_fold(1i64, |a, &x| a.checked_mul(x));
    let (konst, tensor) = consts
        .iter()
        .filter(|(_, t)| {
            let d = m.tensor(*t);
            d.dims.len() == 2
                && d.dtype.is_float()
                && ty_dims
                    .as_ref()
                    .is_none_or(|td| numel(td) == numel(&d.dims))
        })
        .max_by_key(|(_, t)| numel(&m.tensor(*t).dims))
        .copied()?;
    let dims = match ty_dims {
        Some(d) if d.len() == 2 => d,
        Some(_) => return None,
        None => m.tensor(tensor).dims.clone(),
    };
    let flipped = through.is_some() != transposed_use;
    Some((
        WeightRef {
            konst,
            tensor,
            transpose: through,
            in_axis: if flipped { 1 } else { 0 },
        },
        LinearKind::Computed { root: root.node },
        dims,
    ))
}

/// The linear layer computed by node `n`, if it is one. Each kind of linear is recognized by
/// its own matcher (one arm per op family; see the module docs).
pub fn match_linear(m: &Module, g: &Graph, n: NodeId) -> Option<Linear> {
    match &g.node(n).op {
        Op::MatMul | Op::Gemm(_) => match_dense(m, g, n),
        Op::Ortho(crate::op_ortho::OrthoOp::Factorized(f)) => match_factorized(m, g, n, *f),
        Op::Ortho(crate::op_ortho::OrthoOp::SparseLinear(s)) => match_sparse(m, g, n, *s),
        _ => None,
    }
}

/// A factorized layer: `ortho.FactorizedLinear(x, P, Q)` with constant factors.
fn match_factorized(
    m: &Module,
    g: &Graph,
    n: NodeId,
    f: crate::factorized::Factorized,
) -> Option<Linear> {
    let node = g.node(n);
    let input = node.operand(0)?;
    if const_tensor(g, input).is_some() {
        return None;
    }
    let factor = |slot: usize| -> Option<WeightRef> {
        let v = node.operand(slot)?;
        Some(WeightRef {
            konst: v.node,
            tensor: const_tensor(g, v)?,
            transpose: None,
            in_axis: 0,
        })
    };
    let (p, q) = (factor(1)?, factor(2)?);
    let (out_features, in_features) = match f {
        crate::factorized::Factorized::KronSum { m1, n1, m2, n2, .. } => {
            (i64::try_from(m1 * m2).ok()?, i64::try_from(n1 * n2).ok()?)
        }
        crate::factorized::Factorized::LowRank { .. } => (
            *m.tensor(p.tensor).dims.first()?,
            *m.tensor(q.tensor).dims.first()?,
        ),
    };
    let (bias, output) = match trailing_bias(m, g, n, out_features) {
        Some(b) => (Some(b), out0(b.node)),
        None => (None, out0(n)),
    };
    Some(Linear {
        node: n,
        kind: LinearKind::Factorized { op: f, second: q },
        op: LinearOp::MatMul,
        input,
        weight_slot: 1,
        weight: p,
        bias,
        output,
        in_features,
        out_features,
    })
}

/// A compact N:M layer: `ortho.SparseLinear(x, values, indices)` with constant operands.
fn match_sparse(m: &Module, g: &Graph, n: NodeId, s: crate::sparse::NmSparse) -> Option<Linear> {
    let node = g.node(n);
    let input = node.operand(0)?;
    if const_tensor(g, input).is_some() {
        return None;
    }
    let operand = |slot: usize| -> Option<WeightRef> {
        let v = node.operand(slot)?;
        Some(WeightRef {
            konst: v.node,
            tensor: const_tensor(g, v)?,
            transpose: None,
            in_axis: 1,
        })
    };
    let (values, indices) = (operand(1)?, operand(2)?);
    let (out_features, kept) = match m.tensor(values.tensor).dims.as_slice() {
        [o, k] => (*o, *k),
        _ => return None,
    };
    let (per_group, width) = (i64::try_from(s.n).ok()?, i64::try_from(s.m).ok()?);
    if per_group == 0 || kept % per_group != 0 {
        return None;
    }
    let in_features = (kept / per_group).checked_mul(width)?;
    let (bias, output) = match trailing_bias(m, g, n, out_features) {
        Some(b) => (Some(b), out0(b.node)),
        None => (None, out0(n)),
    };
    Some(Linear {
        node: n,
        kind: LinearKind::Sparse { op: s, indices },
        op: LinearOp::MatMul,
        input,
        weight_slot: 1,
        weight: values,
        bias,
        output,
        in_features,
        out_features,
    })
}

/// A dense layer: `MatMul(x, W)` or `Gemm(x, B, C)` with a constant 2-D weight.
fn match_dense(m: &Module, g: &Graph, n: NodeId) -> Option<Linear> {
    let node = g.node(n);
    let (op, input, wv, trans_b, bias) = match &node.op {
        Op::MatMul => (
            LinearOp::MatMul,
            node.operand(0)?,
            node.operand(1)?,
            false,
            None,
        ),
        Op::Gemm(a) => {
            if a.trans_a() != 0 {
                return None;
            }
            let bias = match node.operand(2) {
                Some(c) => {
                    let t = const_tensor(g, c)?;
                    Some(BiasRef {
                        node: n,
                        slot: 2,
                        konst: c.node,
                        tensor: t,
                    })
                }
                None => None,
            };
            (
                LinearOp::Gemm,
                node.operand(0)?,
                node.operand(1)?,
                a.trans_b() != 0,
                bias,
            )
        }
        _ => return None,
    };
    if const_tensor(g, input).is_some() {
        return None;
    }
    let (weight, kind, dims) = match weight_ref(m, g, wv, trans_b) {
        Some(w) => (w, LinearKind::Dense, m.tensor(w.tensor).dims.clone()),
        None => computed_weight(m, g, wv, trans_b)?,
    };
    let in_features = dims[weight.in_axis];
    let out_features = dims[weight.out_axis()];
    // A `MatMul` has no bias operand: a bias is the `Add` right after it.
    let (bias, output) = match (op, bias) {
        (LinearOp::MatMul, _) => match trailing_bias(m, g, n, out_features) {
            Some(b) => (Some(b), out0(b.node)),
            None => (None, out0(n)),
        },
        (_, b) => (b, out0(n)),
    };
    Some(Linear {
        node: n,
        kind,
        op,
        input,
        weight_slot: 1,
        weight,
        bias,
        output,
        in_features,
        out_features,
    })
}

/// A bias added right after node `n`: the sole user of its result is an `Add` of a constant with
/// `out_features` elements along the last axis.
fn trailing_bias(m: &Module, g: &Graph, n: NodeId, out_features: i64) -> Option<BiasRef> {
    let (user, slot, b) = sole_user_with_const(m, g, out0(n), |o| matches!(o, Op::Add))?;
    let d = const_data(m, g, b)?;
    if d.numel() != Some(out_features as u64) || d.dims.last() != Some(&out_features) {
        return None;
    }
    Some(BiasRef {
        node: user,
        slot,
        konst: b.node,
        tensor: const_tensor(g, b)?,
    })
}

/// Every linear layer of a graph, in node-index order.
pub fn find_linears(m: &Module, g: &Graph) -> Vec<Linear> {
    g.node_ids()
        .into_iter()
        .filter_map(|n| match_linear(m, g, n))
        .collect()
}
