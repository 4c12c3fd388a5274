//! Small graph queries the analyses share: constants behind values, reduction axes, scalars.

use crate::graph::{Graph, NodeId, ValueId};
use crate::module::Module;
use crate::op::Op;
use crate::tensor::{TensorData, TensorId};

/// The constant a value is, when its producer is an initializer or a `Constant` op with a tensor.
pub fn const_tensor(g: &Graph, v: ValueId) -> Option<TensorId> {
    match &g.node(v.node).op {
        Op::Const(t) => Some(*t),
        Op::Constant(a) => a.value,
        _ => None,
    }
}

/// The constant's data, when `v` is a constant.
pub fn const_data<'m>(m: &'m Module, g: &Graph, v: ValueId) -> Option<&'m TensorData> {
    const_tensor(g, v).map(|t| m.tensor(t))
}

/// The constant's elements as f64, when `v` is a numeric constant whose bytes are available.
pub fn const_f64(m: &Module, g: &Graph, v: ValueId) -> Option<Vec<f64>> {
    const_data(m, g, v)?.to_f64_vec()
}

/// The single element of a constant with one element.
pub fn const_scalar(m: &Module, g: &Graph, v: ValueId) -> Option<f64> {
    let d = const_data(m, g, v)?;
    if d.numel()? != 1 {
        return None;
    }
    d.to_f64_vec()?.first().copied()
}

/// Whether `v` is a constant whose every element equals `x`.
pub fn const_all_equal(m: &Module, g: &Graph, v: ValueId, x: f64) -> bool {
    const_f64(m, g, v).is_some_and(|e| !e.is_empty() && e.iter().all(|&y| y == x))
}

/// The rank of a value when its declared type has one.
pub fn rank_of(g: &Graph, v: ValueId) -> Option<usize> {
    g.value_type(v).as_tensor()?.rank()
}

/// Whether the reduction of a `Reduce*` node covers exactly the last axis (`[-1]`, or `[r-1]`
/// when the operand's rank `r` is known), with `keepdims` left at its default 1.
pub fn reduces_last_axis(m: &Module, g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    let (axes_attr, keepdims) = match &node.op {
        Op::ReduceMean(a) => (a.axes.clone(), a.keepdims),
        _ => return false,
    };
    if keepdims.unwrap_or(1) != 1 {
        return false;
    }
    // From opset 18 the axes are an operand; before, an attribute.
    let axes = match axes_attr {
        Some(a) => a,
        None => match node
            .operand(1)
            .and_then(|v| const_data(m, g, v))
            .and_then(TensorData::to_i64_vec)
        {
            Some(a) => a,
            None => return false,
        },
    };
    let Some(x) = node.operand(0) else {
        return false;
    };
    match axes.as_slice() {
        [-1] => true,
        [a] => rank_of(g, x).is_some_and(|r| *a >= 0 && *a as usize + 1 == r),
        _ => false,
    }
}

/// The other operand of a binary node, given one of them.
pub fn other_operand(g: &Graph, n: NodeId, v: ValueId) -> Option<ValueId> {
    let node = g.node(n);
    match (node.operand(0), node.operand(1)) {
        (Some(a), Some(b)) if a == v => Some(b),
        (Some(a), Some(b)) if b == v => Some(a),
        _ => None,
    }
}

/// The only user of `v` when it has exactly one (graph outputs count as users).
pub fn sole_user(g: &Graph, v: ValueId) -> Option<NodeId> {
    let users = g.users(v);
    if users.len() != 1 || g.outputs.iter().any(|o| o.value == v) {
        return None;
    }
    Some(users[0].0)
}

/// The first result of a node.
pub fn out0(n: NodeId) -> ValueId {
    ValueId { node: n, output: 0 }
}

/// Whether `v` is a graph output.
pub fn is_graph_output(g: &Graph, v: ValueId) -> bool {
    g.outputs.iter().any(|o| o.value == v)
}

/// When the sole user of `v` is a binary node whose op `is_op` accepts and whose other operand is
/// a constant: that node, the constant's operand slot and the constant's value (a gain `Mul` or
/// bias `Add` right after a norm or a product).
pub fn sole_user_with_const(
    m: &Module,
    g: &Graph,
    v: ValueId,
    is_op: fn(&Op) -> bool,
) -> Option<(NodeId, usize, ValueId)> {
    let u = sole_user(g, v)?;
    if !is_op(&g.node(u).op) {
        return None;
    }
    let c = other_operand(g, u, v)?;
    const_data(m, g, c)?;
    let slot = if g.node(u).operand(0) == Some(c) {
        0
    } else {
        1
    };
    Some((u, slot, c))
}
