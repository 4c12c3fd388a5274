//! Element-generic data movement over plain slices: the engine's kernels and the constant
//! folder both run these, so the two cannot disagree. Each function validates its operands
//! and sizes the output once, then copies in tight loops.

use super::broadcast::{broadcast_index, broadcast_shapes};
use super::size::{checked_numel, split_at_axis};
use super::{SemError, SemResult};

/// The output dims of `Gather` along `axis` (normalized) with indices of dims `idx_dims`.
pub fn gather_dims(dims: &[usize], idx_dims: &[usize], axis: usize) -> Vec<usize> {
    let mut out = dims[..axis].to_vec();
    out.extend_from_slice(idx_dims);
    out.extend_from_slice(&dims[axis + 1..]);
    out
}

/// Indices normalized against an axis of size `dim` (negative ones count from the end). Every
/// index is checked, even when the data is empty and none would be read: ONNX makes an out of
/// range index an error whatever the data.
pub fn norm_indices(indices: &[i64], dim: usize) -> SemResult<Vec<usize>> {
    let d = dim as i64;
    indices
        .iter()
        .map(|&i| {
            let j = if i < 0 { i + d } else { i };
            if j < 0 || j >= d {
                Err(SemError::Index { index: i, dim })
            } else {
                Ok(j as usize)
            }
        })
        .collect()
}

/// `Gather` along `axis` (normalized): hands `f` the runs of elements the output consists of,
/// in order (one run of the inner dims per outer index and gathered index).
pub fn gather_runs<T: Copy>(
    data: &[T],
    dims: &[usize],
    indices: &[i64],
    axis: usize,
    mut f: impl FnMut(&[T]),
) -> SemResult<()> {
    let (outer, dim, inner) = split_at_axis(dims, axis)?;
    let idx = norm_indices(indices, dim)?;
    for o in 0..outer {
        for &j in &idx {
            let src = (o * dim + j) * inner;
            f(&data[src..src + inner]);
        }
    }
    Ok(())
}

/// `Gather` along `axis` (normalized) into `out`, which holds the output's elements.
pub fn gather_into<T: Copy>(
    data: &[T],
    dims: &[usize],
    indices: &[i64],
    axis: usize,
    out: &mut [T],
) -> SemResult<()> {
    let mut at = 0;
    gather_runs(data, dims, indices, axis, |run| {
        out[at..at + run.len()].copy_from_slice(run);
        at += run.len();
    })
}

/// `Gather` along `axis` (normalized): the output's dims and elements.
pub fn gather<T: Copy>(
    data: &[T],
    dims: &[usize],
    indices: &[i64],
    idx_dims: &[usize],
    axis: usize,
) -> SemResult<(Vec<usize>, Vec<T>)> {
    let out_dims = gather_dims(dims, idx_dims, axis);
    let mut out = Vec::with_capacity(checked_numel(&out_dims)?);
    gather_runs(data, dims, indices, axis, |run| out.extend_from_slice(run))?;
    Ok((out_dims, out))
}

/// The output dims of `Concat` along `axis` (normalized) of operands with `shapes`: every other
/// dim must agree.
pub fn concat_dims(shapes: &[&[usize]], axis: usize) -> SemResult<Vec<usize>> {
    let first = shapes
        .first()
        .ok_or_else(|| SemError::Invalid("Concat needs operands".into()))?;
    let mut out = first.to_vec();
    out[axis] = 0;
    for s in shapes {
        let same_rest =
            s.len() == first.len() && (0..first.len()).all(|k| k == axis || s[k] == first[k]);
        if !same_rest {
            return Err(SemError::Invalid(format!(
                "cannot concatenate {first:?} with {s:?} on axis {axis}"
            )));
        }
        out[axis] = out[axis]
            .checked_add(s[axis])
            .ok_or_else(|| SemError::Overflow(format!("concatenating {shapes:?}")))?;
    }
    checked_numel(&out)?;
    Ok(out)
}

/// `Concat` along `axis` (normalized): hands `f` the runs of elements the output consists of,
/// in order. `parts` pairs each operand's elements with its dims, which [`concat_dims`] has
/// checked.
pub fn concat_runs<T: Copy>(parts: &[(&[T], &[usize])], axis: usize, mut f: impl FnMut(&[T])) {
    let Some((_, first)) = parts.first() else {
        return;
    };
    // Dims before `axis` agree across operands (checked), and the output's element count fits,
    // so these products do too.
    let outer: usize = first[..axis].iter().product();
    let chunks: Vec<usize> = parts
        .iter()
        .map(|(_, s)| s[axis..].iter().product())
        .collect();
    for o in 0..outer {
        for ((d, _), &n) in parts.iter().zip(&chunks) {
            f(&d[o * n..(o + 1) * n]);
        }
    }
}

/// `Concat` along `axis` (normalized) into `out`, which holds the output's elements.
pub fn concat_into<T: Copy>(parts: &[(&[T], &[usize])], axis: usize, out: &mut [T]) {
    let mut at = 0;
    concat_runs(parts, axis, |run| {
        out[at..at + run.len()].copy_from_slice(run);
        at += run.len();
    });
}

/// `Concat` along `axis` (normalized): the output's dims and elements.
pub fn concat<T: Copy>(parts: &[(&[T], &[usize])], axis: usize) -> SemResult<(Vec<usize>, Vec<T>)> {
    let shapes: Vec<&[usize]> = parts.iter().map(|p| p.1).collect();
    let dims = concat_dims(&shapes, axis)?;
    let mut out = Vec::with_capacity(checked_numel(&dims)?);
    concat_runs(parts, axis, |run| out.extend_from_slice(run));
    Ok((dims, out))
}

/// `Where`: `x` where `cond` holds, else `y`, all three broadcast together.
pub fn where_select<T: Copy>(
    cond: (&[bool], &[usize]),
    x: (&[T], &[usize]),
    y: (&[T], &[usize]),
) -> SemResult<(Vec<usize>, Vec<T>)> {
    let dims = broadcast_shapes(&[cond.1, x.1, y.1])?;
    let (ic, ix, iy) = (
        broadcast_index(cond.1, &dims)?,
        broadcast_index(x.1, &dims)?,
        broadcast_index(y.1, &dims)?,
    );
    let out = (0..ic.len())
        .map(|k| {
            if cond.0[ic[k]] {
                x.0[ix[k]]
            } else {
                y.0[iy[k]]
            }
        })
        .collect();
    Ok((dims, out))
}

/// `ConstantOfShape`: `value` repeated over `dims` (which must be non-negative).
pub fn constant_of_shape<T: Copy>(dims: &[usize], value: &[T]) -> SemResult<Vec<T>> {
    let [v] = value else {
        return Err(SemError::Invalid("value must have one element".into()));
    };
    super::size::try_filled(
        checked_numel(dims)?,
        *v,
        &format!("ConstantOfShape to {dims:?}"),
    )
}

/// The element count of an integer `Range(start, limit, delta)`:
/// `max(ceil((limit - start) / delta), 0)`, computed exactly.
pub fn range_len_int(start: i64, limit: i64, delta: i64) -> SemResult<usize> {
    if delta == 0 {
        return Err(SemError::Invalid("Range delta is 0".into()));
    }
    let (s, l, d) = (start as i128, limit as i128, delta as i128);
    let n = if d > 0 {
        (l - s + d - 1).div_euclid(d)
    } else {
        (s - l - d - 1).div_euclid(-d)
    }
    .max(0);
    usize::try_from(n).map_err(|_| SemError::Overflow(format!("Range of {n} elements")))
}

/// The element count of a floating-point `Range`: `max(ceil((limit - start) / delta), 0)` in
/// f64; an infinite or NaN count is an error.
pub fn range_len_float(start: f64, limit: f64, delta: f64) -> SemResult<usize> {
    if delta == 0.0 {
        return Err(SemError::Invalid("Range delta is 0".into()));
    }
    let n = ((limit - start) / delta).ceil().max(0.0);
    if !n.is_finite() || n >= usize::MAX as f64 {
        return Err(SemError::Overflow(format!("Range of {n} elements")));
    }
    Ok(n as usize)
}

/// An element type `Range` is defined for: `start + i * delta`, computed in the type itself as
/// the ONNX definition writes it (wrapping for integers).
pub trait RangeElem: Copy {
    fn nth(start: Self, delta: Self, i: usize) -> Self;
}

impl RangeElem for f32 {
    fn nth(start: f32, delta: f32, i: usize) -> f32 {
        start + i as f32 * delta
    }
}

impl RangeElem for f64 {
    fn nth(start: f64, delta: f64, i: usize) -> f64 {
        start + i as f64 * delta
    }
}

impl RangeElem for i64 {
    fn nth(start: i64, delta: i64, i: usize) -> i64 {
        start.wrapping_add((i as i64).wrapping_mul(delta))
    }
}

/// The `n` values of `Range(start, _, delta)`.
pub fn range_values<T: RangeElem>(start: T, delta: T, n: usize) -> Vec<T> {
    (0..n).map(|i| T::nth(start, delta, i)).collect()
}
