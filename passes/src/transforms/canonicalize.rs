//! `canonicalize`: removes no-op ops, turns `Constant` ops into constants, and folds ops whose
//! operands are all constants, within a byte budget.
//!
//! Needs: acyclic graphs (a cyclic graph is left alone). Types help: the shape-dependent rules
//! (no-op Reshape, Add of zero, Shape folding) fire only where shapes are known, so running
//! `infer-shapes` first makes it find more.
//! Leaves: in every reachable graph,
//! - no `Identity`; no `Transpose` with the identity permutation; no `Cast` to the operand's
//!   dtype; no `Reshape` to the operand's own fixed shape; no `Add`/`Sub` of zeros or `Mul`/`Div`
//!   by ones whose broadcast keeps the other operand's shape (uses move to the operand; graph
//!   outputs keep their exposed names). `x + 0 → x` differs only for `x = -0.0`, whose sign
//!   only a later division by it could observe; the other three are exact;
//! - no `Constant` op (it becomes a `Const` node of the same value, same result name);
//! - with `fold=true`, every node of a foldable op (Add, Sub, Mul, Div, Neg, Sqrt, Cast, Shape of
//!   a fixed shape, Gather, Concat, Unsqueeze, Squeeze, Reshape, Range, Equal, Where,
//!   ConstantOfShape, Slice) whose operands are constants, whose operands and result each fit in
//!   `max-fold-bytes`, and whose dtype folding can encode, replaced in place by a `Const` (same
//!   node, same result name, so captures and outputs stay valid).
//!
//! Constants that lose their last use are left for `dce`. A node whose result name a subgraph
//! captures is never removed.

use crate::captures::{captured_names, defines_any};
use crate::consteval::{dtype_from_onnx, fixed_dims, fold, reshape_dims, Folded, Operand};
use crate::pass::{PassContext, PassError, PassResult};
use ortho_ir::numeric::{encode_f64, encode_i64};
use ortho_ir::op::attrs;
use ortho_ir::tensor::Storage;
use ortho_ir::types::TensorType;
use ortho_ir::{
    DType, Dim, Graph, GraphId, Module, Node, NodeId, Op, TensorData, TensorId, Type, ValueId,
};
use std::collections::HashMap;

crate::pass_options! {
    /// Options of [`canonicalize`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct CanonicalizeOptions {
        /// Fold constant subexpressions (`fold`).
        pub fold: bool = {
            name: "fold",
            default: true,
            doc: "Fold ops whose operands are all constants into constants.",
        },
        /// Byte budget per folded operand and result (`max-fold-bytes`).
        pub max_fold_bytes: u64 = {
            name: "max-fold-bytes",
            default: 65536,
            doc: "Largest constant operand read and largest result written by folding, in bytes.",
        },
    }
}

crate::declare_pass! {
    name: "canonicalize",
    summary: "Removes no-op ops, materializes Constant ops, folds constants within a size budget.",
    options: CanonicalizeOptions,
    run: run_pass,
}

/// What [`canonicalize`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CanonicalizeStats {
    /// No-op nodes removed (their uses moved to the operand).
    pub removed_noops: usize,
    /// `Constant` ops turned into constants.
    pub materialized: usize,
    /// Nodes folded into constants.
    pub folded: usize,
    /// Bytes of the constants folding created.
    pub folded_bytes: u64,
    /// Foldable nodes skipped because of `max-fold-bytes`.
    pub over_budget: usize,
}

/// Canonicalizes every reachable graph once.
pub fn canonicalize(m: &mut Module, opts: &CanonicalizeOptions) -> CanonicalizeStats {
    let mut stats = CanonicalizeStats::default();
    for g in m.reachable_graphs() {
        let plan = plan(m, g, opts, &mut stats);
        apply(m, g, plan);
    }
    stats
}

/// The constant a rewritten node becomes.
#[derive(Clone, Copy)]
enum NewConst {
    /// A tensor already in the arena (a `Constant` op's `value`).
    Existing(TensorId),
    /// An index into `Plan::tensors`.
    New(usize),
}

#[derive(Default)]
struct Plan {
    /// No-op nodes and the value that replaces their result.
    forwards: Vec<(NodeId, ValueId)>,
    /// Nodes that become constants.
    consts: Vec<(NodeId, NewConst)>,
    tensors: Vec<TensorData>,
}

/// Decides every rewrite of graph `g` without touching it. Nodes are visited in topological
/// order and see earlier decisions (forwarded operands, pending constants), so chains such as
/// `Shape → Gather → Unsqueeze → Concat` fold in one run.
fn plan(m: &Module, g: GraphId, opts: &CanonicalizeOptions, stats: &mut CanonicalizeStats) -> Plan {
    let graph = m.graph(g);
    let mut plan = Plan::default();
    let Ok(order) = graph.toposort() else {
        return plan;
    };
    let protected = captured_names(m, g);
    let mut fwd: HashMap<ValueId, ValueId> = HashMap::new();
    let mut pending: HashMap<NodeId, NewConst> = HashMap::new();
    for n in order {
        let node = graph.node(n);
        if node.op.is_structural() || node.outputs.len() != 1 {
            continue;
        }
        let operands: Vec<Option<ValueId>> = node
            .operands()
            .iter()
            .map(|o| o.map(|v| fwd.get(&v).copied().unwrap_or(v)))
            .collect();
        let view = View {
            m,
            graph,
            pending: &pending,
            tensors: &plan.tensors,
        };
        if !defines_any(m, g, n, &protected) {
            if let Some(to) = view.noop(node, &operands) {
                fwd.insert(ValueId { node: n, output: 0 }, to);
                plan.forwards.push((n, to));
                stats.removed_noops += 1;
                continue;
            }
        }
        if let Op::Constant(a) = &node.op {
            let nc = match materialize(a) {
                Some(Materialized::Existing(t)) => NewConst::Existing(t),
                Some(Materialized::New(td)) => {
                    plan.tensors.push(td);
                    NewConst::New(plan.tensors.len() - 1)
                }
                None => continue,
            };
            pending.insert(n, nc);
            plan.consts.push((n, nc));
            stats.materialized += 1;
            continue;
        }
        if !opts.fold {
            continue;
        }
        let ins: Vec<Option<Operand<'_>>> = operands
            .iter()
            .map(|o| {
                o.map(|v| Operand {
                    data: view.constant(v),
                    ty: graph.value_type(v),
                })
            })
            .collect();
        match fold(m, &node.op, &ins, opts.max_fold_bytes) {
            Folded::Tensor(td) => {
                stats.folded += 1;
                stats.folded_bytes += td.byte_len();
                plan.tensors.push(td);
                let nc = NewConst::New(plan.tensors.len() - 1);
                pending.insert(n, nc);
                plan.consts.push((n, nc));
            }
            Folded::OverBudget => stats.over_budget += 1,
            Folded::No => {}
        }
    }
    plan
}

fn apply(m: &mut Module, g: GraphId, plan: Plan) {
    let mut tensors: Vec<Option<TensorData>> = plan.tensors.into_iter().map(Some).collect();
    for (n, nc) in plan.consts {
        let t = match nc {
            NewConst::Existing(t) => t,
            NewConst::New(i) => match tensors[i].take() {
                Some(td) => m.add_tensor(td),
                None => continue,
            },
        };
        let td = m.tensor(t);
        let ty = Type::Tensor(TensorType::fixed(td.dtype, &td.dims));
        let graph = m.graph_mut(g);
        // In place: the node keeps its id, location and result name.
        graph.node_mut(n).op = Op::Const(t);
        graph.set_operands(n, Vec::new());
        graph.set_value_type(ValueId { node: n, output: 0 }, ty);
    }
    let graph = m.graph_mut(g);
    for &(n, to) in &plan.forwards {
        graph.replace_all_uses(ValueId { node: n, output: 0 }, to);
    }
    for &(n, _) in &plan.forwards {
        graph.remove_node(n);
    }
}

/// A `Constant` op's value.
enum Materialized {
    /// The `value` attribute's tensor, already in the arena.
    Existing(TensorId),
    /// A tensor built from a scalar or list attribute.
    New(TensorData),
}

fn materialize(a: &attrs::Constant) -> Option<Materialized> {
    if let Some(t) = a.value {
        return Some(Materialized::Existing(t));
    }
    let td = if let Some(x) = a.value_float {
        TensorData::from_f32(vec![], &[x])
    } else if let Some(v) = &a.value_floats {
        TensorData::from_f32(vec![v.len() as i64], v)
    } else if let Some(x) = a.value_int {
        TensorData::from_i64(vec![], &[x])
    } else if let Some(v) = &a.value_ints {
        TensorData::from_i64(vec![v.len() as i64], v)
    } else if let Some(s) = &a.value_string {
        TensorData {
            dtype: DType::Str,
            dims: vec![],
            storage: Storage::Strings(vec![s.as_bytes().to_vec()]),
            name: String::new(),
            doc: String::new(),
        }
    } else {
        return None;
    };
    Some(Materialized::New(td))
}

/// The graph as the plan so far sees it.
struct View<'a> {
    m: &'a Module,
    graph: &'a Graph,
    pending: &'a HashMap<NodeId, NewConst>,
    tensors: &'a [TensorData],
}

impl<'a> View<'a> {
    /// The data of `v` when it is (or is about to become) a constant.
    fn constant(&self, v: ValueId) -> Option<&'a TensorData> {
        if v.output != 0 {
            return None;
        }
        match self.pending.get(&v.node) {
            Some(NewConst::Existing(t)) => Some(self.m.tensor(*t)),
            Some(NewConst::New(i)) => self.tensors.get(*i),
            None => match self.graph.node(v.node).op {
                Op::Const(t) => Some(self.m.tensor(t)),
                _ => None,
            },
        }
    }

    /// The type of `v`, exact for (pending) constants.
    fn ty(&self, v: ValueId) -> Type {
        match self.constant(v) {
            Some(td) => Type::Tensor(TensorType::fixed(td.dtype, &td.dims)),
            None => self.graph.value_type(v).clone(),
        }
    }

    /// The value that can replace the result of `node`, when `node` computes nothing.
    fn noop(&self, node: &Node, operands: &[Option<ValueId>]) -> Option<ValueId> {
        let x = operands.first().copied().flatten()?;
        match &node.op {
            Op::Identity => Some(x),
            Op::Transpose(a) => {
                let identity = match &a.perm {
                    Some(p) => p.iter().enumerate().all(|(i, &v)| v == i as i64),
                    // The default permutation reverses the dims: the identity up to rank 1.
                    None => self.ty(x).as_tensor()?.rank()? <= 1,
                };
                identity.then_some(x)
            }
            Op::Cast(a) => (Some(dtype_from_onnx(a.to?)) == self.ty(x).dtype()).then_some(x),
            Op::Reshape(a) => {
                let dims = fixed_dims(&self.ty(x))?;
                let shape = self
                    .constant(operands.get(1).copied().flatten()?)?
                    .to_i64_vec()?;
                (reshape_dims(&dims, &shape, a.allowzero == Some(1))? == dims).then_some(x)
            }
            Op::Add => self.neutral(operands, 0.0, true),
            Op::Mul => self.neutral(operands, 1.0, true),
            Op::Sub => self.neutral(operands, 0.0, false),
            Op::Div => self.neutral(operands, 1.0, false),
            _ => None,
        }
    }

    /// For `x ∘ c` (or `c ∘ x` when `commutes`) with `c` all `unit`: `x`, when broadcasting `c`
    /// leaves the shape and dtype of `x` unchanged.
    fn neutral(&self, operands: &[Option<ValueId>], unit: f64, commutes: bool) -> Option<ValueId> {
        let (a, b) = (
            operands.first().copied().flatten()?,
            operands.get(1).copied().flatten()?,
        );
        let candidates = if commutes {
            vec![(a, b), (b, a)]
        } else {
            vec![(a, b)]
        };
        candidates.into_iter().find_map(|(x, c)| {
            let c = self.constant(c)?;
            let xt = self.ty(x);
            let xt = xt.as_tensor()?;
            // Cheap checks first: the constant may be a large weight.
            (c.dtype == xt.dtype
                && keeps_shape(&c.dims, xt.shape.as_deref()?)
                && all_equal(c, unit))
            .then_some(x)
        })
    }
}

/// Whether every element of `c` is `unit` (0 or 1), compared on the encoded bytes without
/// decoding the tensor. `-0.0` does not count as zero here, which only misses a removal.
fn all_equal(c: &TensorData, unit: f64) -> bool {
    let one = unit == 1.0;
    let pattern: Option<Vec<u8>> = match c.dtype {
        DType::F32 | DType::F64 => encode_f64(c.dtype, &[unit]),
        DType::F16 => Some((if one { 0x3C00u16 } else { 0 }).to_le_bytes().to_vec()),
        DType::BF16 => Some((if one { 0x3F80u16 } else { 0 }).to_le_bytes().to_vec()),
        d if d.is_int() => encode_i64(d, &[unit as i64]),
        _ => None,
    };
    match (pattern, c.bytes()) {
        (Some(p), Some(b)) if !p.is_empty() => {
            let mut elems = b.chunks_exact(p.len());
            elems.remainder().is_empty() && elems.all(|e| e == p.as_slice())
        }
        _ => false,
    }
}

/// Whether broadcasting a tensor of dims `c` against shape `x` gives shape `x`.
fn keeps_shape(c: &[i64], x: &[Dim]) -> bool {
    c.len() <= x.len()
        && c.iter()
            .rev()
            .zip(x.iter().rev())
            .all(|(&cd, xd)| cd == 1 || xd.fixed() == Some(cd))
}

fn run_pass(
    m: &mut Module,
    opts: &CanonicalizeOptions,
    cx: &mut PassContext,
) -> Result<PassResult, PassError> {
    let s = canonicalize(m, opts);
    cx.stat("removed-noops", s.removed_noops as u64);
    cx.stat("materialized", s.materialized as u64);
    cx.stat("folded", s.folded as u64);
    cx.stat("folded-bytes", s.folded_bytes);
    cx.stat("over-budget", s.over_budget as u64);
    Ok(PassResult::changed(
        s.removed_noops + s.materialized + s.folded > 0,
    ))
}
