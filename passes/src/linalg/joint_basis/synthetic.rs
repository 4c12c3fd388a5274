//! Synthetic ground truth for validating the certificate (tests and `benches/joint_basis.rs`):
//! matrices with a known exact joint basis, their noisy observations, and the distance of an
//! approximate basis to the nearest exact one.
//!
//! Construction: V Haar on O(d); `T_n = diag(λ_n) + S_n` with λ_n,i standard normal and, in
//! the general case, a strictly upper `S_n` with N(0, 1/d) entries (zero when symmetric);
//! `M_n = V T_n Vᵀ`; noise `W_n` standard normal (symmetrized when symmetric) scaled to
//! `‖W_n‖_F = 1`, so the noise level is exactly `ε·√N`.
//!
//! Distance (alignment): exact joint bases are determined only up to the order and signs of
//! their columns (and, for a triangularizer, the order fixes the basis: column k spans the k-th
//! step of the invariant flag). Symmetric case: each column of U is matched to the column of V
//! with the largest |overlap| (greedy on descending |VᵀU| entries, which is the optimal
//! assignment whenever U is within distance ~1 of a signed permutation of V), then signs are
//! matched. General case: the T_n do not commute (their upper parts are independent), so the
//! matrices share exactly one invariant flag, the one of V in its column order; V with matched
//! signs is then the only exact triangularizer (another order would need a common eigenvector
//! that does not exist). The distance is the
//! Frobenius norm of the difference. The construction has distinct joint eigenvalues almost
//! surely, so there are no degenerate clusters to align within.

use super::Structure;
use crate::linalg::orthogonal::{haar, Rng};
use faer::Mat;

/// A synthetic joint-basis problem.
pub struct Synthetic {
    pub exact: Vec<Mat<f64>>,
    pub noisy: Vec<Mat<f64>>,
    pub basis: Mat<f64>,
    /// `ε·√Σ‖W_n‖²_F` (= ε·√N).
    pub noise: f64,
}

fn normalized(mut w: Mat<f64>) -> Mat<f64> {
    let n = w.norm_l2();
    if n > 0.0 {
        w *= faer::Scale(1.0 / n);
    }
    w
}

/// Generate one problem (see the module doc).
pub fn generate(d: usize, n: usize, structure: Structure, eps: f64, rng: &mut Rng) -> Synthetic {
    let v = haar(d, rng);
    let mut exact = Vec::with_capacity(n);
    let mut noisy = Vec::with_capacity(n);
    let upper = 1.0 / (d as f64).sqrt();
    for _ in 0..n {
        let t = Mat::from_fn(d, d, |i, j| match (i.cmp(&j), structure) {
            (std::cmp::Ordering::Equal, _) => rng.normal(),
            (std::cmp::Ordering::Less, Structure::General) => upper * rng.normal(),
            _ => 0.0,
        });
        let m = &v * &t * v.transpose();
        let g = Mat::from_fn(d, d, |_, _| rng.normal());
        let w = match structure {
            Structure::Symmetric => Mat::from_fn(d, d, |i, j| g[(i, j)] + g[(j, i)]),
            Structure::General => g,
        };
        let w = normalized(w);
        noisy.push(Mat::from_fn(d, d, |i, j| m[(i, j)] + eps * w[(i, j)]));
        exact.push(m);
    }
    Synthetic {
        exact,
        noisy,
        basis: v,
        noise: eps * (n as f64).sqrt(),
    }
}

/// Greedy assignment on a score matrix (rows: candidates, columns: U's columns): pairs taken in
/// decreasing score, each row and column once. Returns `assign[col] = row`.
fn greedy(score: &Mat<f64>) -> Vec<usize> {
    let d = score.ncols();
    let mut entries: Vec<(f64, usize, usize)> = Vec::with_capacity(d * d);
    for j in 0..d {
        for i in 0..score.nrows() {
            entries.push((score[(i, j)], i, j));
        }
    }
    entries.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut assign = vec![usize::MAX; d];
    let mut used = vec![false; score.nrows()];
    for (_, i, j) in entries {
        if assign[j] == usize::MAX && !used[i] {
            assign[j] = i;
            used[i] = true;
        }
    }
    assign
}

/// `‖U − U_o·S‖_F` with signs S matched column by column.
fn signed_distance(u: &Mat<f64>, uo: &Mat<f64>) -> f64 {
    let d = u.nrows();
    let mut s2 = 0.0;
    for j in 0..d {
        let dot: f64 = (0..d).map(|i| u[(i, j)] * uo[(i, j)]).sum();
        let sg = if dot < 0.0 { -1.0 } else { 1.0 };
        for i in 0..d {
            s2 += (u[(i, j)] - sg * uo[(i, j)]).powi(2);
        }
    }
    s2.sqrt()
}

/// Distance from `u` to the nearest exact joint basis of `s.exact` (see the module doc; the
/// general case assumes N ≥ 2, since a single matrix has one Schur basis per eigenvalue order).
pub fn distance_to_exact(u: &Mat<f64>, s: &Synthetic, structure: Structure) -> f64 {
    let d = u.nrows();
    match structure {
        Structure::Symmetric => {
            let overlap = s.basis.transpose() * u;
            let score = Mat::from_fn(d, d, |i, j| overlap[(i, j)].abs());
            let assign = greedy(&score);
            let uo = Mat::from_fn(d, d, |i, j| s.basis[(i, assign[j])]);
            signed_distance(u, &uo)
        }
        // Non-commuting triangular sets share one flag, so V itself (up to signs) is the
        // only exact triangularizer.
        Structure::General => signed_distance(u, &s.basis),
    }
}
