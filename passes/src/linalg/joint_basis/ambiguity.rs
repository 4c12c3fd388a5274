//! Is the triangularizer the only one the data allow? (General case; module doc of
//! `joint_basis`, "Ambiguity".)
//!
//! An exact joint basis `U_o` of the noise-free set has `L(U_o) = Σ‖r(ε U_oᵀW_nU_o)‖² ≤ η²`
//! (η = ε√Σ‖W_n‖²), so every orthogonal `U'` with `L(U') > η²` is ruled out as an exact basis,
//! and any `U'` with `L(U') ≤ η²` is as consistent with the data as `U`. The first-order bound
//! only speaks of an exact basis near `U`; if another point far from `U` also fits within the
//! noise, the data do not say which one is exact, and the certificate must not be given.
//!
//! Non-commuting triangular sets share one invariant flag, but a flag that differs by an
//! adjacent swap (columns k, k+1 exchanged inside their plane) is nearly invariant whenever the
//! 2×2 blocks `T̂_n[k..k+2, k..k+2]` nearly share their second eigenvector: one scalar condition
//! per extra matrix (codimension N − 1), which is why N = 2 meets it at the noise level. The
//! probe: for each plane, the rotation angle θ acts on the (k+1, k) entry only through
//! `ℓ_n(θ) = c²·b21 − s²·b12 + cs·(b22 − b11)` (the rest of rows/columns k, k+1 below the diagonal
//! rotates within the lower part, keeping its norm), so the swapped point's loss is
//! `L − Σ b21² + min_θ Σ ℓ_n(θ)²` over the other basin of θ (a quartic trigonometric polynomial:
//! grid + golden-section refinement). Candidates within a factor of η² are polished by
//! Gauss–Newton; one that ends at `L ≤ η²` more than twice the bound away from `U` makes the
//! basis ambiguous. Swaps of non-adjacent columns need more coincidences (codimension
//! (j − k)(N − 1)) and are not probed; restarts that land elsewhere are checked by the caller.

use super::operator::{self, conjugate_all};
use super::{JointBasisError, Structure};
use faer::Mat;

/// An alternative triangularizer that fits within the noise.
#[derive(Debug, Clone, PartialEq)]
pub struct Alternative {
    /// The plane (k, k+1) whose swap led to it.
    pub plane: usize,
    /// Its loss after polishing.
    pub loss: f64,
    /// Its distance to `U` (columns sign-matched).
    pub distance: f64,
}

/// `‖U − U'·S‖_F` with column signs S matched.
pub(super) fn signed_distance(u: &Mat<f64>, v: &Mat<f64>) -> f64 {
    let d = u.nrows();
    let mut s2 = 0.0;
    for j in 0..d {
        let dot: f64 = (0..d).map(|i| u[(i, j)] * v[(i, j)]).sum();
        let sg = if dot < 0.0 { -1.0 } else { 1.0 };
        for i in 0..d {
            s2 += (u[(i, j)] - sg * v[(i, j)]).powi(2);
        }
    }
    s2.sqrt()
}

/// `Σ_n ℓ_n(θ)²` for the 2×2 blocks `(b11, b12, b21, b22)`.
fn swap_loss(blocks: &[[f64; 4]], theta: f64) -> f64 {
    let (s, c) = theta.sin_cos();
    blocks
        .iter()
        .map(|b| {
            let l = c * c * b[2] - s * s * b[1] + c * s * (b[3] - b[0]);
            l * l
        })
        .sum()
}

/// The minimum of `swap_loss` over the basin not containing θ = 0 (mod π), if there is one.
fn other_basin(blocks: &[[f64; 4]]) -> Option<(f64, f64)> {
    const K: usize = 720;
    let h = std::f64::consts::PI / K as f64;
    let f: Vec<f64> = (0..K).map(|i| swap_loss(blocks, i as f64 * h)).collect();
    // Local minima of the periodic grid.
    let mins: Vec<usize> = (0..K)
        .filter(|&i| f[i] <= f[(i + K - 1) % K] && f[i] <= f[(i + 1) % K])
        .collect();
    // The current basin: the grid minimum nearest θ = 0 (mod π).
    let circ = |i: usize| i.min(K - i);
    let current = *mins.iter().min_by_key(|&&i| circ(i))?;
    let mut best: Option<(f64, f64)> = None;
    for &i in mins.iter().filter(|&&i| i != current) {
        // Golden-section on [θ_i − h, θ_i + h].
        let (mut a, mut b) = ((i as f64 - 1.0) * h, (i as f64 + 1.0) * h);
        let g = 0.5 * (5f64.sqrt() - 1.0);
        for _ in 0..60 {
            let x1 = b - g * (b - a);
            let x2 = a + g * (b - a);
            if swap_loss(blocks, x1) < swap_loss(blocks, x2) {
                b = x2;
            } else {
                a = x1;
            }
        }
        let t = 0.5 * (a + b);
        let v = swap_loss(blocks, t);
        if best.is_none_or(|(_, bv)| v < bv) {
            best = Some((t, v));
        }
    }
    best
}

/// Probe the adjacent swaps of `u` (module doc). `eta2` = η², `radius` = the distance beyond
/// which an alternative counts as another point (twice the bound), `probe_factor` = how far
/// above η² an unpolished candidate may be and still be polished.
pub(super) fn probe_swaps(
    mats: &[Mat<f64>],
    u: &Mat<f64>,
    eta2: f64,
    radius: f64,
    probe_factor: f64,
) -> Result<Option<Alternative>, JointBasisError> {
    let d = u.nrows();
    let ts = conjugate_all(mats, u);
    let loss = operator::loss(&ts, Structure::General);
    for k in 0..d.saturating_sub(1) {
        let blocks: Vec<[f64; 4]> = ts
            .iter()
            .map(|t| [t[(k, k)], t[(k, k + 1)], t[(k + 1, k)], t[(k + 1, k + 1)]])
            .collect();
        let here: f64 = blocks.iter().map(|b| b[2] * b[2]).sum();
        let Some((theta, f_alt)) = other_basin(&blocks) else {
            continue;
        };
        let swapped = (loss - here).max(0.0) + f_alt;
        if swapped > probe_factor * eta2 {
            continue;
        }
        let (s, c) = theta.sin_cos();
        let mut alt = u.clone();
        for i in 0..d {
            let (a, b) = (u[(i, k)], u[(i, k + 1)]);
            alt[(i, k)] = c * a + s * b;
            alt[(i, k + 1)] = -s * a + c * b;
        }
        let (alt, _) = super::optimize::gauss_newton(mats, alt, 30, 1e-12)?;
        let l = operator::loss(&conjugate_all(mats, &alt), Structure::General);
        let distance = signed_distance(u, &alt);
        if l <= eta2 && distance > radius {
            return Ok(Some(Alternative {
                plane: k,
                loss: l,
                distance,
            }));
        }
    }
    Ok(None)
}
