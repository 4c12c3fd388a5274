//! The orthogonal toolkit (ALGORITHMS.md §0.2): seeded construction of orthogonal matrices for
//! any size, in f64, and their orthogonality error. Not a pass.
//!
//! - Haar: QR of a Gaussian matrix (faer), columns multiplied by `sign(diag R)` so the
//!   distribution is exactly Haar on O(d).
//! - Randomized Hadamard for any d: with `d = 2^k · m`, `m` odd, `Q = diag(s) · (H_{2^k}/√2^k ⊗ R_m)`
//!   where `H` is Sylvester's Hadamard matrix, `R_m` a Haar m×m block and `s` random signs
//!   (plain randomized Hadamard when m = 1; 576 = 64 · 9 gets H₆₄ ⊗ R₉).
//! - Signed permutations and permutations, stored as index maps (applied without products).
//!
//! Convention: a row vector `v` of the stream maps to `v Q`. For a signed permutation,
//! `(vQ)_j = s_j · v_{π(j)}`.

use faer::Mat;

/// A seeded generator (SplitMix64): small, portable, and the same stream on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x6A09_E667_F3BC_C909)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn sign(&mut self) -> f64 {
        if self.next_u64() & 1 == 0 {
            1.0
        } else {
            -1.0
        }
    }
}

/// An orthogonal transform of the stream.
#[derive(Debug, Clone)]
pub enum Orthogonal {
    Dense(Mat<f64>),
    /// `(vQ)_j = signs[j] · v[perm[j]]`.
    SignedPerm {
        perm: Vec<usize>,
        signs: Vec<f64>,
    },
    /// A randomized Hadamard transform `Q = diag(signs) · (H_p/√p ⊗ R)` (see [`hadamard`]),
    /// applied without forming Q: a fast Walsh–Hadamard transform over the `p` axis and an
    /// `m × m` product (`r`, absent when m = 1), O(d (log p + m)) per vector instead of O(d²).
    Hadamard {
        signs: Vec<f64>,
        p: usize,
        r: Option<Mat<f64>>,
    },
}

impl Orthogonal {
    pub fn dim(&self) -> usize {
        match self {
            Orthogonal::Dense(q) => q.nrows(),
            Orthogonal::SignedPerm { perm, .. } => perm.len(),
            Orthogonal::Hadamard { signs, .. } => signs.len(),
        }
    }

    /// The dense matrix (for tests and error reports).
    pub fn to_dense(&self) -> Mat<f64> {
        match self {
            Orthogonal::Dense(q) => q.clone(),
            Orthogonal::SignedPerm { perm, signs } => {
                let d = perm.len();
                Mat::from_fn(d, d, |i, j| if perm[j] == i { signs[j] } else { 0.0 })
            }
            Orthogonal::Hadamard { signs, p, r } => {
                let d = signs.len();
                let m = d / p;
                let scale = 1.0 / (*p as f64).sqrt();
                Mat::from_fn(d, d, |row, col| {
                    let (i, a) = (row / m, row % m);
                    let (j, b) = (col / m, col % m);
                    let h = if (i & j).count_ones() & 1 == 0 {
                        scale
                    } else {
                        -scale
                    };
                    signs[row] * h * r.as_ref().map_or(1.0, |r| r[(a, b)])
                })
            }
        }
    }

    /// `‖QᵀQ − I‖_F`, computed in f64.
    pub fn orthogonality_error(&self) -> f64 {
        match self {
            Orthogonal::SignedPerm { perm, signs } => {
                // Exactly orthogonal when perm is a bijection and every sign is ±1.
                let mut seen = vec![false; perm.len()];
                let bijective = perm
                    .iter()
                    .all(|&p| p < seen.len() && !std::mem::replace(&mut seen[p], true));
                if bijective && signs.iter().all(|s| s.abs() == 1.0) {
                    0.0
                } else {
                    f64::INFINITY
                }
            }
            Orthogonal::Hadamard { .. } => Orthogonal::Dense(self.to_dense()).orthogonality_error(),
            Orthogonal::Dense(q) => {
                let mut qtq = Mat::<f64>::zeros(q.ncols(), q.ncols());
                faer::linalg::matmul::matmul(
                    qtq.as_mut(),
                    faer::Accum::Replace,
                    q.transpose(),
                    q.as_ref(),
                    1.0,
                    faer::Par::rayon(0),
                );
                let mut s = 0.0;
                for j in 0..q.ncols() {
                    for i in 0..q.ncols() {
                        let e = qtq[(i, j)] - if i == j { 1.0 } else { 0.0 };
                        s += e * e;
                    }
                }
                s.sqrt()
            }
        }
    }
}

/// A Haar-distributed orthogonal d×d matrix.
///
/// The QR factorization runs single-threaded (`Par::Seq`): faer's default parallelism splits
/// the blocked Householder updates by the thread count, which changes the rounding, so the
/// same seed gave different bytes under RAYON_NUM_THREADS=1, 2 and 3.
pub fn haar(d: usize, rng: &mut Rng) -> Mat<f64> {
    use faer::dyn_stack::{MemBuffer, MemStack};
    use faer::linalg::householder;
    use faer::linalg::qr::no_pivoting::factor;
    let par = faer::Par::Seq;
    let mut qr = Mat::from_fn(d, d, |_, _| rng.normal());
    let block = factor::recommended_block_size::<f64>(d, d);
    let mut coeff = Mat::<f64>::zeros(block, d);
    factor::qr_in_place(
        qr.as_mut(),
        coeff.as_mut(),
        par,
        MemStack::new(&mut MemBuffer::new(factor::qr_in_place_scratch::<f64>(
            d,
            d,
            block,
            par,
            Default::default(),
        ))),
        Default::default(),
    );
    // The factorization holds R in the upper triangle and the Householder vectors below the
    // diagonal (with an implicit unit diagonal).
    let r_diag: Vec<f64> = (0..d).map(|j| qr[(j, j)]).collect();
    let basis = Mat::from_fn(d, d, |i, j| match i.cmp(&j) {
        std::cmp::Ordering::Greater => qr[(i, j)],
        std::cmp::Ordering::Equal => 1.0,
        std::cmp::Ordering::Less => 0.0,
    });
    let mut q = Mat::<f64>::identity(d, d);
    householder::apply_block_householder_sequence_on_the_left_in_place_with_conj(
        basis.as_ref(),
        coeff.as_ref(),
        faer::Conj::No,
        q.as_mut(),
        par,
        MemStack::new(&mut MemBuffer::new(
            householder::apply_block_householder_sequence_on_the_left_in_place_scratch::<f64>(
                d, block, d,
            ),
        )),
    );
    for (j, &r) in r_diag.iter().enumerate() {
        if r < 0.0 {
            for i in 0..d {
                q[(i, j)] = -q[(i, j)];
            }
        }
    }
    q
}

/// A randomized Hadamard transform for any d (see the module doc); returns it and a description.
pub fn hadamard(d: usize, rng: &mut Rng) -> (Mat<f64>, String) {
    let k = d.trailing_zeros();
    let p = 1usize << k;
    let m = d / p;
    if p == 1 {
        return (
            haar(d, rng),
            format!("Haar {d} (d has no power-of-two factor)"),
        );
    }
    // Sylvester: H[i][j] = (-1)^popcount(i & j), normalized.
    let scale = 1.0 / (p as f64).sqrt();
    let h = |i: usize, j: usize| {
        if (i & j).count_ones() & 1 == 0 {
            scale
        } else {
            -scale
        }
    };
    let r = if m > 1 { Some(haar(m, rng)) } else { None };
    let signs: Vec<f64> = (0..d).map(|_| rng.sign()).collect();
    let q = Mat::from_fn(d, d, |row, col| {
        let (i, a) = (row / m, row % m);
        let (j, b) = (col / m, col % m);
        let block = match &r {
            Some(r) => r[(a, b)],
            None => 1.0,
        };
        signs[row] * h(i, j) * block
    });
    let desc = if m == 1 {
        format!("randomized Hadamard {p}")
    } else {
        format!("randomized Hadamard {p} ⊗ Haar {m}")
    };
    (q, desc)
}

/// The same transform as [`hadamard`] (same seed, same matrix) in its fast form.
pub fn hadamard_fast(d: usize, rng: &mut Rng) -> (Orthogonal, String) {
    let p = 1usize << d.trailing_zeros();
    let m = d / p;
    if p == 1 {
        return (
            Orthogonal::Dense(haar(d, rng)),
            format!("Haar {d} (d has no power-of-two factor)"),
        );
    }
    let r = if m > 1 { Some(haar(m, rng)) } else { None };
    let signs: Vec<f64> = (0..d).map(|_| rng.sign()).collect();
    let desc = if m == 1 {
        format!("randomized Hadamard {p}")
    } else {
        format!("randomized Hadamard {p} ⊗ Haar {m}")
    };
    (Orthogonal::Hadamard { signs, p, r }, desc)
}

/// In-place unnormalized Walsh–Hadamard transform over `p` chunks of `w` elements each
/// (chunk `i` is `x[i*w..(i+1)*w]`): every butterfly adds and subtracts whole chunks.
fn fwht_chunks(x: &mut [f64], p: usize, w: usize) {
    let mut h = 1;
    while h < p {
        for start in (0..p).step_by(2 * h) {
            for i in start..start + h {
                let (lo, hi) = x.split_at_mut((i + h) * w);
                let (u, v) = (&mut lo[i * w..(i + 1) * w], &mut hi[..w]);
                for (a, b) in u.iter_mut().zip(v.iter_mut()) {
                    let (s, t) = (*a + *b, *a - *b);
                    *a = s;
                    *b = t;
                }
            }
        }
        h *= 2;
    }
}

/// A uniformly random permutation (Fisher–Yates).
pub fn permutation(d: usize, rng: &mut Rng) -> Vec<usize> {
    let mut p: Vec<usize> = (0..d).collect();
    for i in (1..d).rev() {
        let j = rng.below(i + 1);
        p.swap(i, j);
    }
    p
}

/// `Y = X Q` for `X` stored row-major as `rows × d` (single-threaded: callers parallelize
/// over tensors).
pub fn right_multiply(x: &[f64], rows: usize, q: &Orthogonal) -> Vec<f64> {
    let d = q.dim();
    match q {
        Orthogonal::SignedPerm { perm, signs } => {
            let mut y = vec![0.0; x.len()];
            for r in 0..rows {
                let (src, dst) = (&x[r * d..(r + 1) * d], &mut y[r * d..(r + 1) * d]);
                for j in 0..d {
                    dst[j] = signs[j] * src[perm[j]];
                }
            }
            y
        }
        Orthogonal::Hadamard { signs, p, r } => {
            // Signs and butterflies row by row; then all rows' m-wide chunks, seen as one
            // (rows·p) × m matrix, times R in a single product.
            let m = d / p;
            let mut y = x.to_vec();
            for row in y.chunks_mut(d) {
                for (v, s) in row.iter_mut().zip(signs) {
                    *v *= s;
                }
                fwht_chunks(row, *p, m);
            }
            let scale = 1.0 / (*p as f64).sqrt();
            match r {
                Some(r) => {
                    let n = y.len() / m;
                    let mut out = vec![0.0; y.len()];
                    let ym = faer::MatRef::from_row_major_slice(&y, n, m);
                    let om = faer::MatMut::from_row_major_slice_mut(&mut out, n, m);
                    faer::linalg::matmul::matmul(
                        om,
                        faer::Accum::Replace,
                        ym,
                        r.as_ref(),
                        scale,
                        faer::Par::Seq,
                    );
                    out
                }
                None => {
                    y.iter_mut().for_each(|v| *v *= scale);
                    y
                }
            }
        }
        Orthogonal::Dense(qm) => {
            let mut y = vec![0.0; x.len()];
            let xm = faer::MatRef::from_row_major_slice(x, rows, d);
            let ym = faer::MatMut::from_row_major_slice_mut(&mut y, rows, d);
            faer::linalg::matmul::matmul(
                ym,
                faer::Accum::Replace,
                xm,
                qm.as_ref(),
                1.0,
                faer::Par::Seq,
            );
            y
        }
    }
}

/// `Y = Qᵀ X` for `X` stored row-major as `d × cols` (every column `w` becomes `Qᵀ w`, i.e.
/// the row vector `wᵀ` becomes `wᵀ Q`).
pub fn left_multiply_transposed(x: &[f64], cols: usize, q: &Orthogonal) -> Vec<f64> {
    let d = q.dim();
    match q {
        Orthogonal::SignedPerm { perm, signs } => {
            let mut y = vec![0.0; x.len()];
            for j in 0..d {
                let src = &x[perm[j] * cols..(perm[j] + 1) * cols];
                for (c, v) in y[j * cols..(j + 1) * cols].iter_mut().enumerate() {
                    *v = signs[j] * src[c];
                }
            }
            y
        }
        Orthogonal::Hadamard { signs, p, r } => {
            // Qᵀ X = (H/√p ⊗ Rᵀ) diag(s) X: scale rows, butterflies over whole row blocks
            // (block i = rows i·m … i·m+m−1), then Rᵀ mixes the m rows of each block.
            let m = d / p;
            let mut y = x.to_vec();
            for (row, s) in y.chunks_mut(cols).zip(signs) {
                row.iter_mut().for_each(|v| *v *= s);
            }
            fwht_chunks(&mut y, *p, m * cols);
            let scale = 1.0 / (*p as f64).sqrt();
            match r {
                Some(r) => {
                    let mut block = vec![0.0; m * cols];
                    for chunk in y.chunks_mut(m * cols) {
                        let xin = faer::MatRef::from_row_major_slice(chunk, m, cols);
                        let out = faer::MatMut::from_row_major_slice_mut(&mut block, m, cols);
                        faer::linalg::matmul::matmul(
                            out,
                            faer::Accum::Replace,
                            r.transpose(),
                            xin,
                            scale,
                            faer::Par::Seq,
                        );
                        chunk.copy_from_slice(&block);
                    }
                }
                None => y.iter_mut().for_each(|v| *v *= scale),
            }
            y
        }
        Orthogonal::Dense(qm) => {
            let mut y = vec![0.0; x.len()];
            let xm = faer::MatRef::from_row_major_slice(x, d, cols);
            let ym = faer::MatMut::from_row_major_slice_mut(&mut y, d, cols);
            faer::linalg::matmul::matmul(
                ym,
                faer::Accum::Replace,
                qm.transpose(),
                xm,
                1.0,
                faer::Par::Seq,
            );
            y
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haar_is_independent_of_the_thread_count() {
        // Wide enough that faer's blocked QR would split work across threads.
        let bits = |threads: usize| -> Vec<u64> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            let q = pool.install(|| haar(320, &mut Rng::new(11)));
            (0..320)
                .flat_map(|j| (0..320).map(move |i| (i, j)))
                .map(|(i, j)| q[(i, j)].to_bits())
                .collect()
        };
        let one = bits(1);
        for t in [2, 3, 16] {
            assert!(one == bits(t), "{t} threads give other bytes than 1");
        }
        let q = {
            let mut rng = Rng::new(11);
            haar(320, &mut rng)
        };
        let qtq = q.transpose() * &q;
        let err = (0..320)
            .flat_map(|i| (0..320).map(move |j| (i, j)))
            .map(|(i, j)| (qtq[(i, j)] - if i == j { 1.0 } else { 0.0 }).abs())
            .fold(0.0f64, f64::max);
        assert!(err < 1e-12, "orthogonality error {err}");
    }

    #[test]
    fn constructions_are_orthogonal() {
        let mut rng = Rng::new(7);
        for d in [1, 2, 9, 64, 576] {
            let q = Orthogonal::Dense(haar(d, &mut rng));
            assert!(
                q.orthogonality_error() < 1e-12,
                "haar {d}: {}",
                q.orthogonality_error()
            );
        }
        for d in [8, 12, 576, 3] {
            let (h, desc) = hadamard(d, &mut rng);
            let e = Orthogonal::Dense(h).orthogonality_error();
            assert!(e < 1e-12, "{desc}: {e}");
        }
        let p = permutation(10, &mut rng);
        let mut s = p.clone();
        s.sort();
        assert_eq!(s, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn products_agree_with_the_dense_form() {
        let mut rng = Rng::new(3);
        let d = 6;
        let perm = permutation(d, &mut rng);
        let signs: Vec<f64> = (0..d).map(|_| rng.sign()).collect();
        let sp = Orthogonal::SignedPerm { perm, signs };
        let dense = Orthogonal::Dense(sp.to_dense());
        let x: Vec<f64> = (0..2 * d).map(|i| i as f64 * 0.5 - 1.0).collect();
        assert_eq!(right_multiply(&x, 2, &sp), right_multiply(&x, 2, &dense));
        let w: Vec<f64> = (0..d * 3).map(|i| (i as f64).sin()).collect();
        let a = left_multiply_transposed(&w, 3, &sp);
        let b = left_multiply_transposed(&w, 3, &dense);
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-15));
    }

    #[test]
    fn fast_hadamard_is_the_dense_one() {
        for d in [8usize, 12, 576, 6] {
            let (fast, _) = hadamard_fast(d, &mut Rng::new(11));
            let (dense, _) = hadamard(d, &mut Rng::new(11));
            let dense = Orthogonal::Dense(dense);
            let e = fast.orthogonality_error();
            assert!(e < 1e-12, "d {d}: {e}");
            let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
            let (fd, dd) = (fast.to_dense(), dense.to_dense());
            assert!((0..d).all(|i| (0..d).all(|j| (fd[(i, j)] - dd[(i, j)]).abs() < 1e-12)));
            let x: Vec<f64> = (0..3 * d).map(|i| ((i * 7 % 13) as f64).sin()).collect();
            assert!(
                close(
                    &right_multiply(&x, 3, &fast),
                    &right_multiply(&x, 3, &dense)
                ),
                "right {d}"
            );
            let w: Vec<f64> = (0..d * 5).map(|i| ((i * 3 % 11) as f64).cos()).collect();
            assert!(
                close(
                    &left_multiply_transposed(&w, 5, &fast),
                    &left_multiply_transposed(&w, 5, &dense)
                ),
                "left {d}"
            );
        }
    }
}
