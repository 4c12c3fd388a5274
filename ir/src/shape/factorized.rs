//! Result type of `ortho.FactorizedLinear`; the rules themselves are
//! [`Factorized::infer_shape`] and [`Factorized::check_dtypes`], written once in
//! [`crate::factorized`].

use super::cx::{Infer, NodeCx};
use crate::factorized::{Factorized, FactorizedError};
use crate::types::{DType, Type};

pub(crate) fn factorized(cx: &NodeCx, f: &Factorized) -> Infer {
    if cx.n_in() != 3 || (0..3).any(|s| !cx.has(s)) {
        return Err(FactorizedError::Operands(cx.node.inputs().count()).into());
    }
    let dtype = f.check_dtypes([cx.dtype(0), cx.dtype(1), cx.dtype(2)])?;
    let shape = f.infer_shape(cx.shape(0), cx.shape(1), cx.shape(2))?;
    if dtype == DType::Undefined {
        return Ok(Vec::new());
    }
    Ok(vec![match shape {
        Some(s) => Type::tensor(dtype, s),
        None => Type::Tensor(crate::types::TensorType { dtype, shape: None }),
    }])
}
