//! Materializing a POET weight `Π_rᵀ·D_r·B·D_c·Π_c` on the host in f64, for `poet-merge` and
//! the training loop's merge step.
//!
//! The work is one tile of a few blocks at a time: both block-diagonal sides are applied to a
//! tile while it sits in cache, and the finished tile is scattered to its permuted place. Why:
//! merging a whole model is ≈ 4·b·Σ rows·cols flops, and done side by side over whole matrices
//! it is as many passes over memory and products whose operands leave the cache; the merge of
//! SmolLM2's 210 linears was dominated by those copies, not by the arithmetic.

use super::PoetState;
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};

/// `‖RᵀR − I‖_F` of one orthogonal block.
fn block_orthogonality_error(q: &Mat<f64>) -> f64 {
    let b = q.nrows();
    let mut g = Mat::<f64>::zeros(b, b);
    matmul(
        g.as_mut(),
        Accum::Replace,
        q.transpose(),
        q.as_ref(),
        1.0,
        Par::Seq,
    );
    let mut s = 0.0;
    for j in 0..b {
        for i in 0..b {
            let d = g[(i, j)] - f64::from(u8::from(i == j));
            s += d * d;
        }
    }
    s.sqrt()
}

/// Tiles of `TILE_ROWS × TILE_COLS` blocks: 2 × 4 blocks of 64 are 128 × 256 f64 (256 KB, within
/// L2). Measured with faer on the 2-core AVX2 machine: a 64 × 64 by 64 × 256 product runs at
/// 32–42 GFLOPS, by 64 × 1536 at 12–15 (the operand leaves the cache).
const TILE_ROWS: usize = 2;
const TILE_COLS: usize = 4;

impl PoetState {
    /// Writes the weight the subgraph computes, `Π_rᵀ·D_r·B·D_c·Π_c` (`rows × cols`,
    /// row-major), into `out` through `cast`, and returns the largest `‖RᵀR − I‖_F` of the
    /// blocks of both sides. Single-threaded: a merge runs weights in parallel instead.
    pub fn materialize_into<T: Copy>(&self, out: &mut [T], cast: impl Fn(f64) -> T) -> f64 {
        let (r, c, b) = (self.rows, self.cols, self.block);
        assert_eq!(
            out.len(),
            r * c,
            "materialize_into: output of the wrong size"
        );
        let rows = self.rotations(&self.skew_rows);
        let cols = self.rotations(&self.skew_cols);
        let err = rows
            .iter()
            .chain(&cols)
            .map(block_orthogonality_error)
            .fold(0.0, f64::max);
        // Element (s, v) of `D_r·B·D_c` is element (pos[s], cpos[v]) of the weight
        // (`rows_perm[u] = s`, `cols_perm[w] = v`).
        let inverse = |p: &[usize]| {
            let mut q = vec![0usize; p.len()];
            for (u, &s) in p.iter().enumerate() {
                q[s] = u;
            }
            q
        };
        let (pos, cpos) = (inverse(&self.rows_perm), inverse(&self.cols_perm));
        let base = MatRef::from_row_major_slice(&self.base, r, c);
        let (th, tw) = ((TILE_ROWS * b).min(r), (TILE_COLS * b).min(c));
        let mut tile = Mat::<f64>::zeros(th, tw);
        let mut scratch = Mat::<f64>::zeros(th, b);
        for i0 in (0..r).step_by(th) {
            let h = th.min(r - i0);
            for v0 in (0..c).step_by(tw) {
                let w = tw.min(c - v0);
                let mut t = tile.as_mut().submatrix_mut(0, 0, h, w);
                // Rows: block `j` of `D_r` covers rows j·b … j·b + b; rows past the last
                // block (kind=fs rotates only the first b) pass through.
                for l in (0..h).step_by(b) {
                    let j = (i0 + l) / b;
                    let hh = b.min(h - l);
                    let src = base.submatrix(i0 + l, v0, hh, w);
                    match rows.get(j) {
                        Some(rot) if hh == b => matmul(
                            t.as_mut().subrows_mut(l, b),
                            Accum::Replace,
                            rot.as_ref(),
                            src,
                            1.0,
                            Par::Seq,
                        ),
                        _ => t.as_mut().subrows_mut(l, hh).copy_from(src),
                    }
                }
                // Columns, in place through a `h × b` copy; likewise past the last block.
                for l in (0..w).step_by(b) {
                    let k = (v0 + l) / b;
                    let (Some(rot), true) = (cols.get(k), l + b <= w) else {
                        continue;
                    };
                    let mut sc = scratch.as_mut().subrows_mut(0, h);
                    sc.copy_from(t.as_ref().subcols(l, b));
                    matmul(
                        t.as_mut().subcols_mut(l, b),
                        Accum::Replace,
                        sc.as_ref(),
                        rot.as_ref(),
                        1.0,
                        Par::Seq,
                    );
                }
                let t = t.as_ref();
                for i in 0..h {
                    let row = &mut out[pos[i0 + i] * c..][..c];
                    for (l, &dst) in cpos[v0..v0 + w].iter().enumerate() {
                        row[dst] = cast(t[(i, l)]);
                    }
                }
            }
        }
        err
    }

    /// The weight the subgraph computes (`rows × cols`, row-major) in f64, and the largest
    /// `‖RᵀR − I‖_F` of its blocks.
    pub fn materialize_with_error(&self) -> (Vec<f64>, f64) {
        let mut w = vec![0.0f64; self.rows * self.cols];
        let err = self.materialize_into(&mut w, |x| x);
        (w, err)
    }

    /// [`PoetState::materialize_with_error`] cast once to f32 (what `poet-merge` stores),
    /// without an f64 matrix of the whole weight.
    pub fn materialize_f32_with_error(&self) -> (Vec<f32>, f64) {
        let mut w = vec![0.0f32; self.rows * self.cols];
        let err = self.materialize_into(&mut w, |x| x as f32);
        (w, err)
    }
}

#[cfg(test)]
mod tests {
    use super::super::rng::SplitMix;
    use super::super::PoetKind;
    use super::*;

    /// The weight by dense products: `W[u, v] = (D_r·B·D_c)[rows_perm[u], cols_perm[v]]`,
    /// `D` the block-diagonal matrices with identity past the last block.
    fn reference(s: &PoetState) -> Vec<f64> {
        let dense = |rots: Vec<Mat<f64>>, n: usize| {
            Mat::<f64>::from_fn(n, n, |i, j| {
                let (bi, bj) = (i / s.block, j / s.block);
                if bi == bj && bi < rots.len() {
                    rots[bi][(i % s.block, j % s.block)]
                } else {
                    f64::from(u8::from(i == j))
                }
            })
        };
        let dr = dense(s.rotations(&s.skew_rows), s.rows);
        let dc = dense(s.rotations(&s.skew_cols), s.cols);
        let b = Mat::<f64>::from_fn(s.rows, s.cols, |i, j| s.base[i * s.cols + j]);
        let m = &dr * &b * &dc;
        (0..s.rows * s.cols)
            .map(|k| m[(s.rows_perm[k / s.cols], s.cols_perm[k % s.cols])])
            .collect()
    }

    #[test]
    fn row_blocks_agree_with_dense_products() {
        // bs: 12 × 8 in blocks of 4; fs: 10 × 7 with one block of 4 per side (partial tail).
        for (kind, rows, cols) in [
            (PoetKind::Bs, 12, 8),
            (PoetKind::Bs, 36, 40),
            (PoetKind::Fs, 10, 7),
            (PoetKind::Fs, 21, 38),
        ] {
            let mut g = SplitMix::new(4);
            let w: Vec<f64> = (0..rows * cols).map(|_| g.gaussian()).collect();
            let mut s = PoetState::new(&w, rows, cols, kind, 4, 5, &mut g).unwrap();
            s.skew_rows
                .iter_mut()
                .for_each(|x| *x = 0.05 * g.gaussian());
            s.skew_cols
                .iter_mut()
                .for_each(|x| *x = 0.05 * g.gaussian());
            let (got, err) = s.materialize_with_error();
            let want = reference(&s);
            let d = got
                .iter()
                .zip(&want)
                .fold(0f64, |a, (x, y)| a.max((x - y).abs()));
            assert!(d < 1e-12, "{kind:?}: max |Δ| {d:e}");
            // Nonzero skews at k = 5 are not exactly orthogonal, and the error says so.
            assert!(err > 0.0 && err < 0.1, "{kind:?}: {err:e}");
            let (got32, _) = s.materialize_f32_with_error();
            assert!(got32.iter().zip(&got).all(|(&a, &b)| a == b as f32));
        }
    }
}
