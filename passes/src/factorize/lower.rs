//! The export form of `ortho.FactorizedLinear` in standard ONNX ops, called by `lower-ortho`.
//!
//! Kronecker sum, for `x: [..., n]` of known rank `R` (zeros in a Reshape target copy the
//! input's dim, so the leading dims need not be known):
//!
//! ```text
//! xr = Reshape(x, [0]*(R-1) ++ [1, n1, n2])        [..., 1, n1, n2]
//! bt = Transpose(B, perm = [0, 2, 1])               [r, n2, m2]
//! z  = MatMul(xr, bt)                               [..., r, n1, m2]   (X·B_kᵀ)
//! w  = MatMul(A, z)                                 [..., r, m1, m2]   (A_k·X·B_kᵀ)
//! s  = ReduceSum(w, axes = [-3], keepdims = 0)      [..., m1, m2]
//! y  = Reshape(s, [0]*(R-1) ++ [m])                 [..., m]           (the node itself)
//! ```
//!
//! Low rank: `h = MatMul(x, V)`, `ut = Transpose(U)`, `y = MatMul(h, ut)`. ReduceSum takes its
//! axes as an operand from opset 13 and as an attribute before.

use ortho_ir::factorized::Factorized;
use ortho_ir::op::attrs;
use ortho_ir::{Dim, GraphId, Module, NodeId, Op, Output, TensorData, Type, ValueId};
use std::collections::HashMap;

/// Why a factorized node cannot be lowered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LowerError {
    #[error("has {0} operands, expected 3 (x and two factors)")]
    Operands(usize),
    #[error("the input's rank is not known, which the Reshape targets of the lowering need")]
    UnknownRank,
    #[error("has no result")]
    NoResult,
}

/// Replaces the factorized node `id` of graph `g` by standard ops; returns how many nodes
/// were created (the node itself is reused as the last one, keeping its name and result).
/// `inferred` are the graph's inferred types, for an input whose type is not declared.
pub fn lower_factorized(
    m: &mut Module,
    g: GraphId,
    id: NodeId,
    f: Factorized,
    inferred: Option<&HashMap<ValueId, Type>>,
) -> Result<usize, LowerError> {
    let (x, p, q, out_name, node_name) = {
        let graph = m.graph(g);
        let node = graph.node(id);
        let ops: Vec<Option<ValueId>> = node.operands().to_vec();
        let [Some(x), Some(p), Some(q)] = ops[..] else {
            return Err(LowerError::Operands(ops.len()));
        };
        let out = node.outputs.first().ok_or(LowerError::NoResult)?;
        (x, p, q, out.name.clone(), node.name.clone())
    };
    let declared = m.graph(g).value_type(x).clone();
    let known = |t: &Type| t.as_tensor().is_some_and(|t| t.shape.is_some());
    let xty = match inferred.and_then(|i| i.get(&x)) {
        Some(t) if !known(&declared) => t.clone(),
        _ => declared,
    };
    // The factors are constants, so their dtype is always known.
    let dtype = m
        .graph(g)
        .value_type(p)
        .dtype()
        .or_else(|| xty.dtype())
        .unwrap_or(ortho_ir::DType::Undefined);
    let mut b = Builder {
        m,
        g,
        taken: HashMap::new(),
        base: out_name,
        node_name,
        created: 0,
    };
    b.taken = b.m.graph(g).value_names();
    let unknown = |rank: usize| Type::tensor(dtype, vec![Dim::Unknown; rank]);
    match f {
        Factorized::KronSum { m1, n1, m2, n2, .. } => {
            let rank = xty
                .as_tensor()
                .and_then(|t| t.shape.as_ref())
                .map(|s| s.len())
                .ok_or(LowerError::UnknownRank)?;
            if rank == 0 {
                return Err(LowerError::UnknownRank);
            }
            let lead = rank - 1;
            let zeros = |tail: &[usize]| -> Vec<i64> {
                std::iter::repeat(0)
                    .take(lead)
                    .chain(tail.iter().map(|&v| v as i64))
                    .collect()
            };
            let shape_in = b.const_i64(&zeros(&[1, n1, n2]), "kron_in_shape");
            let xr = b.node(
                Op::Reshape(attrs::Reshape::default()),
                vec![x, shape_in],
                unknown(rank + 2),
                "kron_x",
            );
            let bt = b.node(
                Op::Transpose(attrs::Transpose {
                    perm: Some(vec![0, 2, 1]),
                }),
                vec![q],
                unknown(3),
                "kron_bt",
            );
            let z = b.node(Op::MatMul, vec![xr, bt], unknown(rank + 2), "kron_xb");
            let w = b.node(Op::MatMul, vec![p, z], unknown(rank + 2), "kron_axb");
            let axes_operand = b.m.opset("").unwrap_or(1) >= 13;
            let s = if axes_operand {
                let axes = b.const_i64(&[-3], "kron_axes");
                b.node(
                    Op::ReduceSum(attrs::ReduceSum {
                        keepdims: Some(0),
                        ..Default::default()
                    }),
                    vec![w, axes],
                    unknown(rank + 1),
                    "kron_sum",
                )
            } else {
                b.node(
                    Op::ReduceSum(attrs::ReduceSum {
                        axes: Some(vec![-3]),
                        keepdims: Some(0),
                        ..Default::default()
                    }),
                    vec![w],
                    unknown(rank + 1),
                    "kron_sum",
                )
            };
            let shape_out = b.const_i64(&zeros(&[m1 * m2]), "kron_out_shape");
            let graph = b.m.graph_mut(g);
            graph.node_mut(id).op = Op::Reshape(attrs::Reshape::default());
            graph.set_operands(id, vec![Some(s), Some(shape_out)]);
        }
        Factorized::LowRank { .. } => {
            let rank = xty
                .as_tensor()
                .and_then(|t| t.shape.as_ref())
                .map_or(2, |s| s.len());
            let h = b.node(Op::MatMul, vec![x, q], unknown(rank), "lowrank_xv");
            let ut = b.node(
                Op::Transpose(attrs::Transpose {
                    perm: Some(vec![1, 0]),
                }),
                vec![p],
                unknown(2),
                "lowrank_ut",
            );
            let graph = b.m.graph_mut(g);
            graph.node_mut(id).op = Op::MatMul;
            graph.set_operands(id, vec![Some(h), Some(ut)]);
        }
    }
    Ok(b.created)
}

/// Adds nodes next to the lowered one, with fresh value names derived from its result.
struct Builder<'a> {
    m: &'a mut Module,
    g: GraphId,
    taken: HashMap<String, ValueId>,
    base: String,
    node_name: String,
    created: usize,
}

impl Builder<'_> {
    fn node(&mut self, op: Op, args: Vec<ValueId>, ty: Type, suffix: &str) -> ValueId {
        let graph = self.m.graph_mut(self.g);
        let n = graph.add_node(op, args.into_iter().map(Some).collect(), Vec::new());
        let v = ValueId { node: n, output: 0 };
        let name = graph.fresh_name(&format!("{}_{suffix}", self.base), &self.taken);
        self.taken.insert(name.clone(), v);
        let node = graph.node_mut(n);
        node.outputs.push(Output::new(name, ty));
        if !self.node_name.is_empty() {
            node.name = format!("{}/{suffix}", self.node_name);
        }
        self.created += 1;
        v
    }

    fn const_i64(&mut self, vals: &[i64], suffix: &str) -> ValueId {
        let t = self
            .m
            .add_tensor(TensorData::from_i64(vec![vals.len() as i64], vals));
        let ty = Type::tensor(ortho_ir::DType::I64, vec![Dim::Fixed(vals.len() as i64)]);
        let graph = self.m.graph_mut(self.g);
        let n = graph.add_node(Op::Const(t), Vec::new(), Vec::new());
        let v = ValueId { node: n, output: 0 };
        let name = graph.fresh_name(&format!("{}_{suffix}", self.base), &self.taken);
        self.taken.insert(name.clone(), v);
        graph.node_mut(n).outputs.push(Output::new(name, ty));
        self.created += 1;
        v
    }
}
