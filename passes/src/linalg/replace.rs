//! Swapping a dense linear layer for an `ortho` op that reads new constants (the factorized and
//! the compact N:M forms), shared by `kron-factorize` / `lowrank-factorize` and `sparsify` (not
//! a pass).
//!
//! The caller has checked and computed everything; this only mutates: each new tensor becomes a
//! constant node (its value named after the tensor, or a fallback when the tensor has no name),
//! the linear's node becomes the `ortho` op reading `(x, constants…)` (its name, result and type
//! kept), the old weight constant and its `Transpose` are removed when nothing else reads them
//! (a tied head keeps its weight), and the `ortho` opset is imported.

use ortho_ir::analysis::linear::Linear;
use ortho_ir::op_ortho::{OrthoOp, DOMAIN};
use ortho_ir::{Dim, Module, NodeId, Op, OpsetImport, Output, TensorData, Type, ValueId};

/// One linear to replace.
pub(crate) struct LinearSwap {
    pub linear: Linear,
    pub op: OrthoOp,
    /// The new operands after the input, each with the value name used when the tensor has none.
    pub constants: Vec<(TensorData, String)>,
}

/// Applies every swap to the main graph (see the module doc).
pub(crate) fn swap_linears(m: &mut Module, swaps: Vec<LinearSwap>) {
    let any = !swaps.is_empty();
    let mut dead: Vec<NodeId> = Vec::new();
    for s in swaps {
        let mut operands = vec![Some(s.linear.input)];
        for (t, fallback) in s.constants {
            let ty = Type::tensor(t.dtype, t.dims.iter().map(|&x| Dim::Fixed(x)).collect());
            let base = if t.name.is_empty() {
                fallback
            } else {
                t.name.clone()
            };
            let tid = m.add_tensor(t);
            let g = m.main_graph_mut();
            // Names are taken afresh per constant: the previous one is in the graph by now.
            let name = g.fresh_name(&base, &g.value_names());
            let id = g.add_node(Op::Const(tid), Vec::new(), vec![Output::new(name, ty)]);
            operands.push(Some(ValueId {
                node: id,
                output: 0,
            }));
        }
        let g = m.main_graph_mut();
        g.node_mut(s.linear.node).op = Op::Ortho(s.op);
        g.set_operands(s.linear.node, operands);
        dead.extend(s.linear.weight.transpose);
        dead.push(s.linear.weight.konst);
    }
    // The transposes come before their constants in `dead`, so a constant read only through its
    // transpose is free by the time it is looked at.
    let g = m.main_graph_mut();
    for id in dead {
        let v = ValueId {
            node: id,
            output: 0,
        };
        if g.contains(id) && g.users(v).is_empty() && !g.outputs.iter().any(|o| o.value == v) {
            g.remove_node(id);
        }
    }
    if any && m.opset(DOMAIN).is_none() {
        m.opsets.push(OpsetImport {
            domain: DOMAIN.to_string(),
            version: 1,
        });
    }
}
