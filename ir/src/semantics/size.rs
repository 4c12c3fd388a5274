//! Sizes computed from model data (element counts, byte lengths) with checked arithmetic.

use super::{SemError, SemResult};

/// The product of `dims`, an error when it overflows `usize`.
pub fn checked_numel(dims: &[usize]) -> SemResult<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| SemError::Overflow(format!("the element count of {dims:?}")))
}

/// The product of signed `dims` (as ONNX stores them); negative dims are an error.
pub fn checked_numel_i64(dims: &[i64]) -> SemResult<usize> {
    let mut acc = 1usize;
    for &d in dims {
        let d = usize::try_from(d).map_err(|_| SemError::NegativeDim {
            what: "shape",
            dim: d,
        })?;
        acc = acc
            .checked_mul(d)
            .ok_or_else(|| SemError::Overflow(format!("the element count of {dims:?}")))?;
    }
    Ok(acc)
}

/// The byte length of `n` elements of `elem_bytes` bytes each.
pub fn checked_bytes(n: usize, elem_bytes: usize) -> SemResult<usize> {
    n.checked_mul(elem_bytes)
        .ok_or_else(|| SemError::Overflow(format!("{n} elements of {elem_bytes} bytes")))
}

/// Signed dims as `usize`, naming `what` when one is negative.
pub fn dims_to_usize(dims: &[i64], what: &'static str) -> SemResult<Vec<usize>> {
    dims.iter()
        .map(|&d| usize::try_from(d).map_err(|_| SemError::NegativeDim { what, dim: d }))
        .collect()
}

/// `usize` dims as the signed dims ONNX stores.
pub fn dims_to_i64(dims: &[usize]) -> SemResult<Vec<i64>> {
    dims.iter()
        .map(|&d| i64::try_from(d).map_err(|_| SemError::Overflow(format!("dimension {d} as i64"))))
        .collect()
}

/// Row-major element strides of `dims` (the last dim has stride 1). Callers hold a tensor of
/// these dims, so the element count (and every stride, which divides it) fits.
pub fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; dims.len()];
    for k in (0..dims.len().saturating_sub(1)).rev() {
        s[k] = s[k + 1] * dims[k + 1];
    }
    s
}

/// `(outer, dim, inner)` around `axis`: the element counts before, at and after it.
pub fn split_at_axis(dims: &[usize], axis: usize) -> SemResult<(usize, usize, usize)> {
    Ok((
        checked_numel(&dims[..axis])?,
        dims[axis],
        checked_numel(&dims[axis + 1..])?,
    ))
}
