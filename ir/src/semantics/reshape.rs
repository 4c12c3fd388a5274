//! Output dims of the ops that relabel a tensor without moving data: Reshape, Squeeze,
//! Unsqueeze, Flatten.

use super::axis::{norm_axis, split_point};
use super::size::checked_numel;
use super::{SemError, SemResult};

/// The dims `Reshape` produces for an input of dims `input` and the shape operand `spec`: a 0
/// copies the input's dim at that position (unless `allowzero`), one -1 is inferred from the
/// element count, and the element counts must agree.
pub fn reshape_dims(input: &[usize], spec: &[i64], allowzero: bool) -> SemResult<Vec<usize>> {
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            0 if !allowzero => out.push(*input.get(i).ok_or_else(|| {
                SemError::Invalid(format!("shape {spec:?}: no input dim {i} to copy"))
            })?),
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            d if d >= 0 => out.push(d as usize),
            d => {
                return Err(SemError::Invalid(format!(
                    "invalid shape element {d} in {spec:?}"
                )))
            }
        }
    }
    let total = checked_numel(input)?;
    let mismatch = || SemError::Invalid(format!("cannot reshape {input:?} to {spec:?}"));
    let known = checked_numel(&out).map_err(|_| mismatch())?;
    if let Some(i) = infer {
        if known == 0 || total % known != 0 {
            return Err(mismatch());
        }
        out[i] = total / known;
    } else if known != total {
        return Err(SemError::Invalid(format!(
            "cannot reshape {input:?} to {out:?}"
        )));
    }
    Ok(out)
}

/// The dims `Squeeze` leaves: without `axes`, every dim of size 1 is dropped; with them, each
/// named dim must be 1.
pub fn squeeze_dims(dims: &[usize], axes: Option<&[i64]>) -> SemResult<Vec<usize>> {
    match axes {
        None => Ok(dims.iter().copied().filter(|&d| d != 1).collect()),
        Some(axes) => {
            let ax = axes
                .iter()
                .map(|&a| norm_axis(a, dims.len()))
                .collect::<SemResult<Vec<_>>>()?;
            if let Some(&a) = ax.iter().find(|&&a| dims[a] != 1) {
                return Err(SemError::Invalid(format!(
                    "cannot squeeze axis {a} of size {}",
                    dims[a]
                )));
            }
            Ok(dims
                .iter()
                .enumerate()
                .filter(|(i, _)| !ax.contains(i))
                .map(|(_, &d)| d)
                .collect())
        }
    }
}

/// The dims `Unsqueeze` produces: a 1 inserted at each of `axes` (normalized against the output
/// rank); repeated axes are an error.
pub fn unsqueeze_dims(dims: &[usize], axes: &[i64]) -> SemResult<Vec<usize>> {
    let r = dims.len() + axes.len();
    let mut ones = vec![false; r];
    for &a in axes {
        let a = norm_axis(a, r)?;
        if std::mem::replace(&mut ones[a], true) {
            return Err(SemError::RepeatedAxes(axes.to_vec()));
        }
    }
    let mut rest = dims.iter();
    Ok(ones
        .iter()
        .map(|&one| {
            if one {
                1
            } else {
                rest.next().copied().unwrap_or(1)
            }
        })
        .collect())
}

/// The two dims `Flatten` produces around `axis` (in `-rank..=rank`).
pub fn flatten_dims(dims: &[usize], axis: i64) -> SemResult<[usize; 2]> {
    let a = split_point("axis", axis, dims.len())?;
    Ok([checked_numel(&dims[..a])?, checked_numel(&dims[a..])?])
}
