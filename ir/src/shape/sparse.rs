//! Result type of `ortho.SparseLinear`; the rules themselves are [`NmSparse::infer_shape`] and
//! [`NmSparse::check_dtypes`], written once in [`crate::sparse`].

use super::cx::{Infer, NodeCx};
use crate::sparse::{NmSparse, SparseError};
use crate::types::{DType, Type};

pub(crate) fn sparse_linear(cx: &NodeCx, s: &NmSparse) -> Infer {
    if cx.n_in() != 3 || (0..3).any(|i| !cx.has(i)) {
        return Err(SparseError::Operands(cx.node.inputs().count()).into());
    }
    let dtype = s.check_dtypes([cx.dtype(0), cx.dtype(1), cx.dtype(2)])?;
    let shape = s.infer_shape(cx.shape(0), cx.shape(1), cx.shape(2))?;
    if dtype == DType::Undefined {
        return Ok(Vec::new());
    }
    Ok(vec![match shape {
        Some(v) => Type::tensor(dtype, v),
        None => Type::Tensor(crate::types::TensorType { dtype, shape: None }),
    }])
}
