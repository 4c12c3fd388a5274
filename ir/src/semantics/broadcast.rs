//! Multidirectional (numpy) broadcasting: shapes are aligned at the right and each pair of dims
//! must be equal or contain a 1.

use super::size::strides;
use super::{SemError, SemResult};
use crate::types::Dim;

/// A concrete dimension type broadcasting works on (`usize` in the engine, `i64` in IR data).
pub trait ConcreteDim: Copy + PartialEq + std::fmt::Debug {
    const ONE: Self;
    /// The dim as an element count; `None` for a negative dim.
    fn count(self) -> Option<usize>;
}

impl ConcreteDim for usize {
    const ONE: Self = 1;
    fn count(self) -> Option<usize> {
        Some(self)
    }
}

impl ConcreteDim for i64 {
    const ONE: Self = 1;
    fn count(self) -> Option<usize> {
        usize::try_from(self).ok()
    }
}

/// The broadcast shape of several concrete shapes. Its element count is checked, so callers may
/// multiply its dims freely.
pub fn broadcast_shapes<D: ConcreteDim>(shapes: &[&[D]]) -> SemResult<Vec<D>> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![D::ONE; rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[off + i];
            if *o == D::ONE {
                *o = d;
            } else if d != D::ONE && d != *o {
                return Err(SemError::Broadcast(format!("{shapes:?}")));
            }
        }
    }
    let counts = out
        .iter()
        .map(|d| d.count())
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| SemError::Invalid(format!("negative dimension in {shapes:?}")))?;
    super::size::checked_numel(&counts)?;
    Ok(out)
}

/// Broadcasting of one pair of symbolic dimensions; `Err((x, y))` names two fixed sizes that
/// conflict. A symbol is either 1 or equal to a fixed size met beside it, so the result is that
/// size; two different symbols (or an unknown) may each be 1 at run time, so nothing is known.
pub fn broadcast_dim(a: &Dim, b: &Dim) -> Result<Dim, (i64, i64)> {
    use Dim::*;
    Ok(match (a, b) {
        (Fixed(1), x) | (x, Fixed(1)) => x.clone(),
        (Fixed(x), Fixed(y)) if x == y => Fixed(*x),
        (Fixed(x), Fixed(y)) => return Err((*x, *y)),
        (Fixed(x), _) | (_, Fixed(x)) => Fixed(*x),
        (Sym(s), Sym(t)) if s == t => Sym(s.clone()),
        _ => Unknown,
    })
}

/// Broadcasting of two symbolic shapes, dim by dim from the right; the error names the first
/// conflicting pair of fixed sizes.
pub fn broadcast_symbolic(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, (i64, i64)> {
    let n = a.len().max(b.len());
    let one = Dim::Fixed(1);
    let at = |s: &'_ [Dim], i: usize| -> Dim {
        if i + s.len() >= n {
            s[i + s.len() - n].clone()
        } else {
            one.clone()
        }
    };
    (0..n)
        .map(|i| broadcast_dim(&at(a, i), &at(b, i)))
        .collect()
}

/// For each element of the broadcast result `out` (row-major), the linear index of the element
/// of an operand with shape `dims` that it reads. Used where a plain index map is simplest (the
/// constant folder); the engine walks strides instead.
pub fn broadcast_index(dims: &[usize], out: &[usize]) -> SemResult<Vec<usize>> {
    let n = super::size::checked_numel(out)?;
    let st = strides(dims);
    let shift = out.len() - dims.len();
    // Per output dim, the operand's stride (0 where it is broadcast).
    let ost: Vec<usize> = (0..out.len())
        .map(|k| {
            if k < shift || dims[k - shift] == 1 {
                0
            } else {
                st[k - shift]
            }
        })
        .collect();
    let mut v = Vec::with_capacity(n);
    if n == 0 {
        return Ok(v);
    }
    let mut idx = vec![0usize; out.len()];
    let mut off = 0usize;
    for _ in 0..n {
        v.push(off);
        // Odometer step: bump the innermost dim, carrying outwards.
        for k in (0..out.len()).rev() {
            idx[k] += 1;
            off += ost[k];
            if idx[k] < out[k] {
                break;
            }
            off -= ost[k] * out[k];
            idx[k] = 0;
        }
    }
    Ok(v)
}
