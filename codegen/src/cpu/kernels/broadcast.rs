//! Multidirectional (numpy) broadcasting and a strided walk over a broadcast result.
//!
//! [`Walk`] collapses the output's dims as far as every operand allows (size-1 dims dropped,
//! adjacent dims merged where each operand is contiguous or broadcast across both), so that the
//! innermost loop is as long as possible and has, per operand, stride 1 or 0.

use crate::cpu::error::KernelResult;
use crate::cpu::kernel::ExecCx;
use crate::cpu::tensor::{strides, Elem};
use ortho_ir::semantics;
use rayon::prelude::*;

/// The broadcast shape of several shapes (the rule is `ortho_ir::semantics::broadcast`).
pub fn broadcast_shapes(shapes: &[&[usize]]) -> KernelResult<Vec<usize>> {
    Ok(semantics::broadcast::broadcast_shapes(shapes)?)
}

/// A walk over a broadcast output: `outer` runs of `inner` elements.
#[derive(Debug, Clone)]
pub struct Walk {
    /// Outer dims (outermost first), without the inner one.
    dims: Vec<usize>,
    /// Per operand, the stride of each outer dim.
    strides: Vec<Vec<usize>>,
    pub inner: usize,
    /// Per operand, the stride of the inner dim (1 or 0 for contiguous operands).
    pub inner_strides: Vec<usize>,
    pub outer: usize,
}

impl Walk {
    /// A walk over `out` reading operands of shapes `ins` (each broadcastable to `out`).
    pub fn new(out: &[usize], ins: &[&[usize]]) -> Walk {
        let rank = out.len();
        let per_in: Vec<Vec<usize>> = ins
            .iter()
            .map(|s| {
                let st = strides(s);
                let off = rank - s.len();
                (0..rank)
                    .map(|d| {
                        if d < off || s[d - off] == 1 {
                            0
                        } else {
                            st[d - off]
                        }
                    })
                    .collect()
            })
            .collect();
        Walk::from_strides(out, &per_in)
    }

    /// A walk over `out` with explicit per-operand element strides (one per output dim).
    pub fn from_strides(out: &[usize], per_in: &[Vec<usize>]) -> Walk {
        let n_in = per_in.len();
        // Merged dims, innermost first.
        let mut dims: Vec<usize> = Vec::new();
        let mut st: Vec<Vec<usize>> = vec![Vec::new(); n_in];
        for d in (0..out.len()).rev() {
            if out[d] == 1 {
                continue;
            }
            let mergeable = !dims.is_empty()
                && (0..n_in).all(|k| {
                    let last = dims.len() - 1;
                    per_in[k][d] == st[k][last] * dims[last]
                });
            if mergeable {
                let last = dims.len() - 1;
                dims[last] *= out[d];
            } else {
                dims.push(out[d]);
                for k in 0..n_in {
                    st[k].push(per_in[k][d]);
                }
            }
        }
        if dims.is_empty() {
            dims.push(1);
            for s in st.iter_mut() {
                s.push(0);
            }
        }
        let inner = dims[0];
        let inner_strides = st.iter().map(|s| s[0]).collect();
        let mut odims: Vec<usize> = dims[1..].to_vec();
        odims.reverse();
        let ostrides: Vec<Vec<usize>> = st
            .iter()
            .map(|s| {
                let mut v = s[1..].to_vec();
                v.reverse();
                v
            })
            .collect();
        let outer = odims.iter().product();
        Walk {
            dims: odims,
            strides: ostrides,
            inner,
            inner_strides,
            outer,
        }
    }

    /// Calls `f(run, offsets)` for runs `lo..hi`; run `r` covers output elements
    /// `r*inner .. (r+1)*inner`, and `offsets[k]` is where operand `k`'s elements for it start.
    pub fn for_runs(&self, lo: usize, hi: usize, mut f: impl FnMut(usize, &[usize])) {
        let nd = self.dims.len();
        let n_in = self.strides.len();
        let mut idx = vec![0usize; nd];
        let mut rem = lo;
        for d in (0..nd).rev() {
            idx[d] = rem % self.dims[d];
            rem /= self.dims[d];
        }
        let mut offs: Vec<usize> = (0..n_in)
            .map(|k| (0..nd).map(|d| idx[d] * self.strides[k][d]).sum())
            .collect();
        for r in lo..hi {
            f(r, &offs);
            // Odometer increment.
            let mut d = nd;
            while d > 0 {
                d -= 1;
                idx[d] += 1;
                for (o, st) in offs.iter_mut().zip(&self.strides) {
                    *o += st[d];
                }
                if idx[d] < self.dims[d] {
                    break;
                }
                for (o, st) in offs.iter_mut().zip(&self.strides) {
                    *o -= st[d] * self.dims[d];
                }
                idx[d] = 0;
            }
        }
    }
}

/// Fills `out` (the broadcast result, `walk.outer * walk.inner` elements) run by run, splitting
/// runs across threads when large. `f(out_run, run_index, offsets)` writes one run.
pub fn fill_runs<O: Elem>(
    cx: &ExecCx<'_>,
    walk: &Walk,
    out: &mut [O],
    f: impl Fn(&mut [O], &[usize]) + Sync,
) {
    let inner = walk.inner.max(1);
    let n = out.len();
    if n == 0 {
        return;
    }
    if cx.parallel(n) && walk.outer > 1 {
        let runs_per_chunk = walk.outer.div_ceil(cx.threads * 4).max(1);
        out.par_chunks_mut(runs_per_chunk * inner)
            .enumerate()
            .for_each(|(c, chunk)| {
                let lo = c * runs_per_chunk;
                let hi = lo + chunk.len() / inner;
                walk.for_runs(lo, hi, |r, offs| {
                    f(&mut chunk[(r - lo) * inner..(r - lo + 1) * inner], offs)
                });
            });
    } else {
        walk.for_runs(0, walk.outer, |r, offs| {
            f(&mut out[r * inner..(r + 1) * inner], offs)
        });
    }
}

/// Splits a flat output into chunks and runs `f(chunk, start)` on threads when large.
pub fn fill_flat<O: Elem>(cx: &ExecCx<'_>, out: &mut [O], f: impl Fn(&mut [O], usize) + Sync) {
    let n = out.len();
    if cx.parallel(n) {
        let chunk = n.div_ceil(cx.threads * 4).max(16 * 1024);
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(c, o)| f(o, c * chunk));
    } else {
        f(out, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_broadcast_like_numpy() {
        assert_eq!(
            broadcast_shapes(&[&[2, 1, 4], &[3, 1]]).expect("ok"),
            vec![2, 3, 4]
        );
        assert_eq!(broadcast_shapes(&[&[], &[5]]).expect("ok"), vec![5]);
        assert!(broadcast_shapes(&[&[2, 3], &[4]]).is_err());
    }

    #[test]
    fn walk_merges_contiguous_dims() {
        let w = Walk::new(&[2, 3, 4], &[&[2, 3, 4], &[4]]);
        assert_eq!((w.outer, w.inner), (6, 4));
        assert_eq!(w.inner_strides, vec![1, 1]);
        let w = Walk::new(&[2, 3, 4], &[&[2, 3, 4], &[2, 3, 4]]);
        assert_eq!((w.outer, w.inner), (1, 24));
        let mut seen = Vec::new();
        let w = Walk::new(&[2, 3], &[&[2, 1], &[1, 3]]);
        w.for_runs(0, w.outer, |r, o| seen.push((r, o.to_vec())));
        assert_eq!(w.inner, 3);
        assert_eq!(w.inner_strides, vec![0, 1]);
        assert_eq!(seen, vec![(0, vec![0, 0]), (1, vec![1, 0])]);
    }
}
