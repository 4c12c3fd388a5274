//! ONNX Slice: clamping of starts and ends, and the element count per axis.

use super::axis::norm_axis;
use super::size::{checked_numel, strides};
use super::{SemError, SemResult};

/// The slice of one axis: the first index read, the step, and how many elements are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceAxis {
    pub start: i64,
    pub step: i64,
    pub len: usize,
}

impl SliceAxis {
    /// The whole axis of size `dim`.
    pub fn full(dim: usize) -> SliceAxis {
        SliceAxis {
            start: 0,
            step: 1,
            len: dim,
        }
    }
}

/// Slice of one axis of size `dim`: negative starts/ends count from the end, then starts and
/// ends are clamped to `[0, dim]` for positive steps and to `[0, dim-1]` / `[-1, dim-1]` for
/// negative steps. Computed in i128 because ends are often `i64::MAX` and steps may be
/// `i64::MIN`, where `end - start + step` would overflow i64.
pub fn slice_axis(dim: usize, start: i64, end: i64, step: i64) -> SemResult<SliceAxis> {
    if step == 0 {
        return Err(SemError::Invalid("slice step 0".into()));
    }
    let (d, st) = (dim as i128, step as i128);
    let adj = |v: i64| if v < 0 { v as i128 + d } else { v as i128 };
    let (s, e) = (adj(start), adj(end));
    let (s, count) = if d == 0 {
        (0, 0)
    } else if st > 0 {
        let (s, e) = (s.clamp(0, d), e.clamp(0, d));
        (s, if e > s { (e - s + st - 1) / st } else { 0 })
    } else {
        let (s, e) = (s.clamp(0, d - 1), e.clamp(-1, d - 1));
        (s, if s > e { (s - e - st - 1) / -st } else { 0 })
    };
    // `count <= dim` and `s` lies in `[0, dim]`, so both fit.
    Ok(SliceAxis {
        start: s as i64,
        step,
        len: count as usize,
    })
}

/// The per-axis slices of a tensor with `dims` for Slice's operands; omitted `axes` are
/// `0..starts.len()` and omitted `steps` are 1. A repeated axis is an error (ONNX leaves it
/// undefined).
pub fn slice_plan(
    dims: &[usize],
    starts: &[i64],
    ends: &[i64],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
) -> SemResult<Vec<SliceAxis>> {
    let k = starts.len();
    let default_axes: Vec<i64>;
    let axes = match axes {
        Some(a) => a,
        None => {
            default_axes = (0..k as i64).collect();
            &default_axes
        }
    };
    let ones: Vec<i64>;
    let steps = match steps {
        Some(s) => s,
        None => {
            ones = vec![1; k];
            &ones
        }
    };
    if ends.len() != k || axes.len() != k || steps.len() != k {
        return Err(SemError::Invalid(
            "starts, ends, axes and steps differ in length".into(),
        ));
    }
    let mut plan: Vec<SliceAxis> = dims.iter().map(|&d| SliceAxis::full(d)).collect();
    let mut seen = vec![false; dims.len()];
    for i in 0..k {
        let a = norm_axis(axes[i], dims.len())?;
        if std::mem::replace(&mut seen[a], true) {
            return Err(SemError::RepeatedAxes(axes.to_vec()));
        }
        plan[a] = slice_axis(dims[a], starts[i], ends[i], steps[i])?;
    }
    Ok(plan)
}

/// The output dims of a slice plan.
pub fn plan_dims(plan: &[SliceAxis]) -> Vec<usize> {
    plan.iter().map(|s| s.len).collect()
}

/// Copies the elements a slice plan selects from `data` (shape `dims`), row-major.
pub fn slice_copy<T: Copy>(data: &[T], dims: &[usize], plan: &[SliceAxis]) -> SemResult<Vec<T>> {
    let out_dims = plan_dims(plan);
    let n = checked_numel(&out_dims)?;
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return Ok(out);
    }
    let st = strides(dims);
    let r = dims.len();
    // The offset of the first element, and per axis the signed offset change of one step.
    let base: i64 = (0..r).map(|a| plan[a].start * st[a] as i64).sum();
    let step: Vec<i64> = (0..r).map(|a| plan[a].step * st[a] as i64).collect();
    let mut idx = vec![0usize; r];
    let mut off = base;
    for _ in 0..n {
        out.push(data[off as usize]);
        for k in (0..r).rev() {
            idx[k] += 1;
            off += step[k];
            if idx[k] < out_dims[k] {
                break;
            }
            off -= step[k] * out_dims[k] as i64;
            idx[k] = 0;
        }
    }
    Ok(out)
}
