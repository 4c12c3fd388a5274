//! The export form of `ortho.SparseLinear`: `MatMul(x, W)` with the dense weight `W: [in, out]`
//! expanded from the compact values and indices (zeros where nothing is kept), called by
//! `lower-ortho`. The expansion is exact: the kept values are copied bit for bit.

use ortho_ir::sparse::{NmSparse, SparseError};
use ortho_ir::{DType, Dim, GraphId, Module, NodeId, Op, Output, TensorData, Type, ValueId};

/// Why a sparse node cannot be lowered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SparseLowerError {
    #[error("has {0} operands, expected 3 (x, values, indices)")]
    Operands(usize),
    #[error("operand {0} is not a constant, so the dense weight cannot be formed")]
    NotConstant(usize),
    #[error("values are {0}; the dense expansion is written for f32")]
    DType(DType),
    #[error("the compact weight is malformed: {0}")]
    Data(#[from] SparseError),
    #[error("the constant operands' data could not be read")]
    Unreadable,
}

/// The dense `out × in` weight (row-major, one row per output) of a sparse node whose values
/// and indices are constants.
pub fn dense_weight(
    m: &Module,
    g: GraphId,
    id: NodeId,
    p: NmSparse,
) -> Result<(Vec<f32>, usize, usize), SparseLowerError> {
    let graph = m.graph(g);
    let ops: Vec<Option<ValueId>> = graph.node(id).operands().to_vec();
    let [Some(_), Some(v), Some(i)] = ops[..] else {
        return Err(SparseLowerError::Operands(ops.len()));
    };
    let konst = |slot: usize, val: ValueId| match graph.node(val.node).op {
        Op::Const(t) => Ok(m.tensor(t)),
        _ => Err(SparseLowerError::NotConstant(slot)),
    };
    let (vt, it) = (konst(1, v)?, konst(2, i)?);
    if vt.dtype != DType::F32 {
        return Err(SparseLowerError::DType(vt.dtype));
    }
    let (Some(vb), Some(ib)) = (vt.bytes(), it.bytes()) else {
        return Err(SparseLowerError::Unreadable);
    };
    if vt.dims.len() != 2 || it.dims.len() != 2 || it.dtype != DType::U8 {
        return Err(SparseLowerError::Unreadable);
    }
    let rows = usize::try_from(vt.dims[0]).map_err(|_| SparseLowerError::Unreadable)?;
    let groups =
        usize::try_from(it.dims[1]).map_err(|_| SparseLowerError::Unreadable)? / p.group_bytes();
    let cols = groups * p.m;
    let vals: Vec<f32> = vb
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let w = p.expand(&vals, ib, rows, cols)?;
    Ok((w, rows, cols))
}

/// Replaces the sparse node `id` of graph `g` by `MatMul(x, W)` with a new dense constant
/// `W: [in, out]` (the node keeps its name and result); returns the nodes created (one).
pub fn lower_sparse(
    m: &mut Module,
    g: GraphId,
    id: NodeId,
    p: NmSparse,
) -> Result<usize, SparseLowerError> {
    let (w, rows, cols) = dense_weight(m, g, id, p)?;
    let mut t = vec![0.0f32; rows * cols];
    for o in 0..rows {
        for c in 0..cols {
            t[c * rows + o] = w[o * cols + c];
        }
    }
    let graph = m.graph(g);
    let node = graph.node(id);
    let x = node.operands()[0].ok_or(SparseLowerError::Operands(0))?;
    // The dense weight takes the values' initializer name without its compact suffix.
    let base = node
        .operands()
        .get(1)
        .copied()
        .flatten()
        .map(|v| graph.value_name(v).to_string())
        .map(|n| {
            n.strip_suffix(".nm_values")
                .map(str::to_string)
                .unwrap_or(n)
        })
        .unwrap_or_else(|| "sparse_weight".to_string());
    let dims = vec![cols as i64, rows as i64];
    let mut td = TensorData::from_f32(dims.clone(), &t);
    td.name = base.clone();
    let ty = Type::tensor(DType::F32, dims.iter().map(|&d| Dim::Fixed(d)).collect());
    let tid = m.add_tensor(td);
    let graph = m.graph_mut(g);
    let taken = graph.value_names();
    let name = graph.fresh_name(&base, &taken);
    let k = graph.add_node(Op::Const(tid), Vec::new(), Vec::new());
    graph.node_mut(k).outputs.push(Output::new(name, ty));
    let old: Vec<Option<ValueId>> = graph.node(id).operands().to_vec();
    graph.node_mut(id).op = Op::MatMul;
    graph.set_operands(id, vec![Some(x), Some(ValueId { node: k, output: 0 })]);
    // The compact constants go when nothing else reads them.
    for v in old.into_iter().skip(1).flatten() {
        if graph.contains(v.node)
            && graph.users(v).is_empty()
            && !graph.outputs.iter().any(|o| o.value == v)
            && matches!(graph.node(v.node).op, Op::Const(_))
        {
            graph.remove_node(v.node);
        }
    }
    Ok(1)
}
