//! Axis normalization: ONNX axes may count from the end.

use super::{SemError, SemResult};

/// Normalizes `axis` (which may be negative) against `rank`: `-rank..rank` → `0..rank`.
pub fn norm_axis(axis: i64, rank: usize) -> SemResult<usize> {
    norm_axis_named("axis", axis, rank)
}

/// [`norm_axis`], naming the attribute in the error (`"axis"`, `"perm entry"`, …).
pub fn norm_axis_named(what: &'static str, axis: i64, rank: usize) -> SemResult<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(SemError::Axis { what, axis, rank });
    }
    Ok(a as usize)
}

/// Normalizes every axis of `axes`.
pub fn norm_axes(axes: &[i64], rank: usize) -> SemResult<Vec<usize>> {
    axes.iter().map(|&a| norm_axis(a, rank)).collect()
}

/// A split point in `0..=rank` (Flatten's axis); a negative value counts from the end, so `-1`
/// is `rank - 1`, not `rank`.
pub fn split_point(what: &'static str, axis: i64, rank: usize) -> SemResult<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a > r {
        return Err(SemError::SplitPoint { what, axis, rank });
    }
    Ok(a as usize)
}

/// The `[start, end)` range of dims that `Shape(start, end)` returns for a tensor of `rank`:
/// both bounds count from the end when negative and are clamped into `0..=rank`; an empty
/// range when `end <= start`.
pub fn shape_range(rank: usize, start: Option<i64>, end: Option<i64>) -> std::ops::Range<usize> {
    let r = rank as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let s = clamp(start.unwrap_or(0));
    let e = clamp(end.unwrap_or(r)).max(s);
    s..e
}
