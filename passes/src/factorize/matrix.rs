//! The maths of factorizing one weight matrix `W` (`m×n`, one row per output feature), in f64:
//! the nearest sum of Kronecker products by SVD of the rearrangement `𝓡(W)` (Van Loan –
//! Pitsianis) and the truncated SVD of `W` itself (low rank). Both are optimal in Frobenius
//! norm for their rank (Eckart–Young), and the squared error of a rank-`r` truncation is the
//! sum of the squared singular values after the `r`-th.
//!
//! Rearrangement (row-major, matching the op's factor layout `A[k, i1, j1]`, `B[k, i2, j2]`):
//! `𝓡(W)[i1·n1 + j1, i2·n2 + j2] = W[i1·m2 + i2, j1·n2 + j2]`, so `W = Σ_k A_k ⊗ B_k` exactly
//! when `𝓡(W) = Σ_k vec(A_k)·vec(B_k)ᵀ`. The map is a permutation of entries, hence an isometry.

use faer::Mat;

/// Why a matrix cannot be factorized as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactorError {
    #[error("factor shape {m1}x{n1} does not divide the {m}x{n} weight")]
    NotDividing {
        m: usize,
        n: usize,
        m1: usize,
        n1: usize,
    },
    #[error("rank {rank} is above the full rank {full} of the {what}")]
    RankAboveFull {
        rank: usize,
        full: usize,
        what: &'static str,
    },
    #[error("the SVD did not converge")]
    Svd,
    #[error("the calibration Gram is not positive definite, even damped")]
    NotPositive,
}

/// Factor shapes of a Kronecker sum: `A_k: m1×n1`, `B_k: m2×n2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KronShape {
    pub m1: usize,
    pub n1: usize,
    pub m2: usize,
    pub n2: usize,
}

impl KronShape {
    /// The shape with first factor `m1×n1` for an `m×n` weight.
    pub fn new(m: usize, n: usize, m1: usize, n1: usize) -> Result<KronShape, FactorError> {
        if m1 == 0 || n1 == 0 || !m.is_multiple_of(m1) || !n.is_multiple_of(n1) {
            return Err(FactorError::NotDividing { m, n, m1, n1 });
        }
        Ok(KronShape {
            m1,
            n1,
            m2: m / m1,
            n2: n / n1,
        })
    }

    /// Parameters of one Kronecker term.
    pub fn params_per_rank(&self) -> usize {
        self.m1 * self.n1 + self.m2 * self.n2
    }

    /// Multiply-adds per token of one term in the kernel's order (`X·Bᵀ`, then `A·`).
    pub fn macs_per_rank(&self) -> usize {
        self.n1 * self.n2 * self.m2 + self.m1 * self.n1 * self.m2
    }

    /// The rank of `𝓡(W)` at most.
    pub fn full_rank(&self) -> usize {
        (self.m1 * self.n1).min(self.m2 * self.n2)
    }

    /// A shape whose Kronecker product is a plain outer product (`A` a column and `B` a row, or
    /// the reverse): a low-rank factorization in disguise, which `lowrank-factorize` covers.
    pub fn is_outer_product(&self) -> bool {
        (self.n1 == 1 && self.m2 == 1) || (self.m1 == 1 && self.n2 == 1)
    }
}

/// `𝓡(W)` as an `(m1·n1) × (m2·n2)` matrix.
pub fn rearrange(w: &[f64], s: KronShape) -> Mat<f64> {
    let n = s.n1 * s.n2;
    Mat::from_fn(s.m1 * s.n1, s.m2 * s.n2, |r, c| {
        let (i1, j1) = (r / s.n1, r % s.n1);
        let (i2, j2) = (c / s.n2, c % s.n2);
        w[(i1 * s.m2 + i2) * n + j1 * s.n2 + j2]
    })
}

/// `W` (`m×n`, row-major) as a faer matrix.
pub fn as_mat(w: &[f64], m: usize, n: usize) -> Mat<f64> {
    Mat::from_fn(m, n, |i, j| w[i * n + j])
}

/// Singular values of `a`, largest first.
pub fn spectrum(a: &Mat<f64>) -> Result<Vec<f64>, FactorError> {
    a.singular_values().map_err(|_| FactorError::Svd)
}

/// The thin SVD of a matrix `a` (`p×q`), from which truncations of any rank are read.
pub struct Decomp {
    u: Mat<f64>,
    v: Mat<f64>,
    /// Every singular value, largest first.
    pub sigma: Vec<f64>,
}

/// The thin SVD of `a`.
pub fn decompose(a: &Mat<f64>) -> Result<Decomp, FactorError> {
    let svd = a.thin_svd().map_err(|_| FactorError::Svd)?;
    let s = svd.S().column_vector();
    let sigma = (0..a.nrows().min(a.ncols())).map(|k| s[k]).collect();
    Ok(Decomp {
        u: svd.U().to_owned(),
        v: svd.V().to_owned(),
        sigma,
    })
}

impl Decomp {
    /// The best rank-`r` pair of factors: `L: p×r`, `R: q×r` (row-major), with `a ≈ L·Rᵀ`,
    /// each column scaled by `√σ` so both factors have the same magnitude (which keeps them
    /// in range when stored as f16). `what` names the matrix kind in the error.
    pub fn factors(&self, r: usize, what: &'static str) -> Result<Factors, FactorError> {
        let full = self.sigma.len();
        if r > full {
            return Err(FactorError::RankAboveFull {
                rank: r,
                full,
                what,
            });
        }
        let (p, q) = (self.u.nrows(), self.v.nrows());
        let mut left = vec![0.0; p * r];
        let mut right = vec![0.0; q * r];
        for k in 0..r {
            let g = self.sigma[k].max(0.0).sqrt();
            for i in 0..p {
                left[i * r + k] = self.u[(i, k)] * g;
            }
            for j in 0..q {
                right[j * r + k] = self.v[(j, k)] * g;
            }
        }
        Ok(Factors {
            left,
            right,
            rank: r,
            sigma: self.sigma.clone(),
        })
    }
}

/// The best rank-`r` factors of `a` (see [`Decomp::factors`]).
pub fn truncated(a: &Mat<f64>, r: usize, what: &'static str) -> Result<Factors, FactorError> {
    decompose(a)?.factors(r, what)
}

/// The two factors of a truncated SVD (see [`truncated`]) and the full spectrum.
#[derive(Debug, Clone)]
pub struct Factors {
    /// `p×r`, row-major.
    pub left: Vec<f64>,
    /// `q×r`, row-major.
    pub right: Vec<f64>,
    pub rank: usize,
    /// Every singular value, largest first.
    pub sigma: Vec<f64>,
}

impl Factors {
    /// `‖a − L·Rᵀ‖_F²` as the spectrum predicts it: the squared tail.
    pub fn tail_energy(&self) -> f64 {
        self.sigma[self.rank.min(self.sigma.len())..]
            .iter()
            .map(|s| s * s)
            .sum()
    }
}

/// `A: [r, m1, n1]` and `B: [r, m2, n2]` (row-major) from the rank-`r` factors of `𝓡(W)`.
pub fn kron_factors(f: &Factors, s: KronShape) -> (Vec<f64>, Vec<f64>) {
    let r = f.rank;
    let (pa, pb) = (s.m1 * s.n1, s.m2 * s.n2);
    let mut a = vec![0.0; r * pa];
    let mut b = vec![0.0; r * pb];
    for k in 0..r {
        for i in 0..pa {
            a[k * pa + i] = f.left[i * r + k];
        }
        for j in 0..pb {
            b[k * pb + j] = f.right[j * r + k];
        }
    }
    (a, b)
}

/// `Σ_k A_k ⊗ B_k` as a dense `m×n` matrix (for tests and error reports).
pub fn kron_dense(a: &[f64], b: &[f64], s: KronShape, r: usize) -> Vec<f64> {
    let (m, n) = (s.m1 * s.m2, s.n1 * s.n2);
    let mut w = vec![0.0; m * n];
    for k in 0..r {
        for i1 in 0..s.m1 {
            for j1 in 0..s.n1 {
                let x = a[(k * s.m1 + i1) * s.n1 + j1];
                for i2 in 0..s.m2 {
                    for j2 in 0..s.n2 {
                        w[(i1 * s.m2 + i2) * n + j1 * s.n2 + j2] +=
                            x * b[(k * s.m2 + i2) * s.n2 + j2];
                    }
                }
            }
        }
    }
    w
}

/// The divisor of `v` nearest to `target` in log scale (ties to the smaller).
fn nearest_divisor(v: usize, target: f64) -> usize {
    let mut best = 1;
    let mut best_d = f64::INFINITY;
    for d in (1..=v).filter(|d| v.is_multiple_of(*d)) {
        let dist = ((d as f64).ln() - target.ln()).abs();
        if dist < best_d - 1e-12 {
            best = d;
            best_d = dist;
        }
    }
    best
}

/// Candidate factor shapes for `shapes=auto`: the first factor's sides near `m^α` and `n^α`
/// for α ∈ {1/4, 1/2, 3/4} (from a small `A` and large `B` to the reverse), deduplicated,
/// without outer-product shapes. Few candidates keep the search to a few SVDs per matrix.
pub fn auto_candidates(m: usize, n: usize) -> Vec<KronShape> {
    let mut v: Vec<KronShape> = Vec::new();
    for alpha in [0.25, 0.5, 0.75] {
        let m1 = nearest_divisor(m, (m as f64).powf(alpha));
        let n1 = nearest_divisor(n, (n as f64).powf(alpha));
        if let Ok(s) = KronShape::new(m, n, m1, n1) {
            if !s.is_outer_product() && s.full_rank() > 1 && !v.contains(&s) {
                v.push(s);
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rnd(n: usize, seed: u64) -> Vec<f64> {
        crate::factorize::test_rnd(n, seed, 7)
    }

    fn frob2(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
    }

    /// The truncation error of the Kronecker sum, computed densely, equals the tail of
    /// `𝓡(W)`'s spectrum at every rank; full rank reproduces `W`.
    #[test]
    fn kron_truncation_error_is_the_spectral_tail() {
        let (m, n) = (12, 10);
        let w = rnd(m * n, 3);
        let s = KronShape::new(m, n, 4, 2).expect("shape");
        let rw = rearrange(&w, s);
        let full = s.full_rank();
        assert_eq!(full, 8);
        for r in 1..=full {
            let f = truncated(&rw, r, "rearranged weight").expect("svd");
            let (a, b) = kron_factors(&f, s);
            let err = frob2(&kron_dense(&a, &b, s, r), &w);
            let tail = f.tail_energy();
            assert!(
                (err - tail).abs() <= 1e-10 * (1.0 + tail),
                "rank {r}: {err} vs {tail}"
            );
        }
        assert!(matches!(
            truncated(&rw, full + 1, "rearranged weight"),
            Err(FactorError::RankAboveFull {
                rank: 9,
                full: 8,
                ..
            })
        ));
    }

    /// A matrix that is exactly a sum of two Kronecker products has rank-2 rearrangement.
    #[test]
    fn exact_kronecker_sum_has_rank_two() {
        let s = KronShape::new(6, 6, 2, 3).expect("shape");
        let (a, b) = (rnd(2 * 6, 1), rnd(2 * 6, 2));
        let w = kron_dense(&a, &b, s, 2);
        let sig = spectrum(&rearrange(&w, s)).expect("svd");
        assert!(sig[1] > 1e-6 && sig[2] < 1e-12 * sig[0], "{sig:?}");
    }

    #[test]
    fn low_rank_truncation_error_is_the_spectral_tail() {
        let (m, n) = (9, 7);
        let w = rnd(m * n, 5);
        let a = as_mat(&w, m, n);
        for r in 1..=7 {
            let f = truncated(&a, r, "weight").expect("svd");
            let mut approx = vec![0.0; m * n];
            for i in 0..m {
                for j in 0..n {
                    approx[i * n + j] =
                        (0..r).map(|k| f.left[i * r + k] * f.right[j * r + k]).sum();
                }
            }
            let tail = f.tail_energy();
            assert!((frob2(&approx, &w) - tail).abs() <= 1e-10 * (1.0 + tail));
        }
    }

    #[test]
    fn shapes_must_divide_and_candidates_are_proper() {
        assert!(matches!(
            KronShape::new(576, 1536, 5, 2),
            Err(FactorError::NotDividing { m1: 5, .. })
        ));
        let c = auto_candidates(576, 1536);
        assert!(!c.is_empty());
        for s in &c {
            assert_eq!((s.m1 * s.m2, s.n1 * s.n2), (576, 1536));
            assert!(!s.is_outer_product());
        }
    }
}
