//! The optimizers of `joint_basis`: the initial basis, Jacobi sweeps (symmetric case) and
//! damped Gauss–Newton on O(d) (general case).

use super::flag::{self, FlagSearch};
use super::operator::{self, pair};
use super::{JointBasisError, Stop, Structure};
use crate::linalg::orthogonal::Rng;
use faer::linalg::solvers::Solve;
use faer::{Mat, Side};

/// The start from a seeded random positive combination `Σ μ_n M_n`, μ_n uniform in [0.5, 1.5].
/// Symmetric: its orthonormal eigenvectors, decreasing eigenvalue. General: the common flag
/// built one refined vector at a time from the combination's eigenvectors (`flag.rs`).
pub(super) fn initial_basis(
    mats: &[Mat<f64>],
    structure: Structure,
    search: FlagSearch,
    rng: &mut Rng,
) -> Result<Mat<f64>, JointBasisError> {
    let d = mats[0].nrows();
    let mu: Vec<f64> = mats.iter().map(|_| 0.5 + rng.uniform()).collect();
    match structure {
        Structure::Symmetric => {
            let mut c = Mat::<f64>::zeros(d, d);
            for (m, &w) in mats.iter().zip(&mu) {
                c += faer::Scale(w) * m;
            }
            let e = c
                .self_adjoint_eigen(Side::Lower)
                .map_err(|_| JointBasisError::Decomposition("eigendecomposition of Σ μ_n M_n"))?;
            // faer sorts eigenvalues increasingly; reverse for a decreasing order.
            let u = e.U();
            Ok(Mat::from_fn(d, d, |i, j| u[(i, d - 1 - j)]))
        }
        Structure::General => flag::common_flag(mats, &mu, search).ok_or(
            JointBasisError::Decomposition("eigendecomposition of Σ μ_n B_n"),
        ),
    }
}

/// Jacobi joint diagonalization. For the plane (p, q) and the rotation `u_p ← c u_p + s u_q`,
/// `u_q ← −s u_p + c u_q`, the new off-diagonal entry of each T is `v·h_n` with
/// `v = (cos 2θ, sin 2θ)` and `h_n = (T_pq, −(T_pp − T_qq)/2)`; the other off-diagonal entries of
/// rows/columns p, q only rotate among themselves. So the best θ makes `v` the smallest
/// eigenvector of `G = Σ h_n h_nᵀ` (2×2, closed form), and no rotation raises `L`.
pub(super) fn jacobi(
    mats: &[Mat<f64>],
    mut u: Mat<f64>,
    max_sweeps: usize,
    tol: f64,
) -> (Mat<f64>, Stop) {
    let d = u.nrows();
    let mut ts = operator::conjugate_all(mats, &u);
    let mut prev = operator::loss(&ts, Structure::Symmetric);
    let mut last_decrease = 0.0;
    for sweep in 1..=max_sweeps {
        for p in 0..d {
            for q in (p + 1)..d {
                let (mut g11, mut g12, mut g22) = (0.0, 0.0, 0.0);
                for t in &ts {
                    let h0 = t[(p, q)];
                    let h1 = -0.5 * (t[(p, p)] - t[(q, q)]);
                    g11 += h0 * h0;
                    g12 += h0 * h1;
                    g22 += h1 * h1;
                }
                if g11 == 0.0 {
                    continue;
                }
                let phi_max = 0.5 * (2.0 * g12).atan2(g11 - g22);
                let (mut vx, mut vy) = (-phi_max.sin(), phi_max.cos());
                if vx < 0.0 {
                    vx = -vx;
                    vy = -vy;
                }
                let theta = 0.5 * vy.atan2(vx);
                let (s, c) = theta.sin_cos();
                if s.abs() < 1e-300 {
                    continue;
                }
                for t in ts.iter_mut() {
                    for i in 0..d {
                        let (a, b) = (t[(i, p)], t[(i, q)]);
                        t[(i, p)] = c * a + s * b;
                        t[(i, q)] = -s * a + c * b;
                    }
                    for j in 0..d {
                        let (a, b) = (t[(p, j)], t[(q, j)]);
                        t[(p, j)] = c * a + s * b;
                        t[(q, j)] = -s * a + c * b;
                    }
                }
                for i in 0..d {
                    let (a, b) = (u[(i, p)], u[(i, q)]);
                    u[(i, p)] = c * a + s * b;
                    u[(i, q)] = -s * a + c * b;
                }
            }
        }
        let now = operator::loss(&ts, Structure::Symmetric);
        last_decrease = if prev > 0.0 { (prev - now) / prev } else { 0.0 };
        prev = now;
        if now == 0.0 || last_decrease < tol {
            return (u, Stop::Converged { sweeps: sweep });
        }
    }
    (
        u,
        Stop::MaxSweeps {
            sweeps: max_sweeps,
            last_decrease,
        },
    )
}

/// `exp`-free retraction: the Cayley transform `(I − Y/2)⁻¹(I + Y/2)` of a skew `Y`, exactly
/// orthogonal and equal to `exp(Y)` to second order.
fn cayley(y: &Mat<f64>) -> Mat<f64> {
    let d = y.nrows();
    let eye = |i: usize, j: usize| if i == j { 1.0 } else { 0.0 };
    let a = Mat::from_fn(d, d, |i, j| eye(i, j) - 0.5 * y[(i, j)]);
    let b = Mat::from_fn(d, d, |i, j| eye(i, j) + 0.5 * y[(i, j)]);
    a.partial_piv_lu().solve(&b)
}

/// Damped Gauss–Newton on the triangular objective: solve
/// `(𝒜ᵀ𝒜 + λ·mean(diag)·I) y = −𝒜ᵀ r`, move `U ← U·cay(Y)`, keep the step only if `L`
/// decreases (then λ shrinks), otherwise grow λ (at most 12 tries per step).
pub(super) fn gauss_newton(
    mats: &[Mat<f64>],
    mut u: Mat<f64>,
    max_sweeps: usize,
    tol: f64,
) -> Result<(Mat<f64>, Stop), JointBasisError> {
    let d = u.nrows();
    let m = d * d.saturating_sub(1) / 2;
    let structure = Structure::General;
    let mut ts = operator::conjugate_all(mats, &u);
    let mut cur = operator::loss(&ts, structure);
    let mut lambda = 1e-10;
    let mut last_decrease = 0.0;
    if m == 0 {
        return Ok((u, Stop::Converged { sweeps: 0 }));
    }
    for sweep in 1..=max_sweeps {
        if cur == 0.0 {
            return Ok((u, Stop::Converged { sweeps: sweep - 1 }));
        }
        let r = operator::residual(&ts, structure);
        let cols = operator::columns(&ts, structure);
        let g = operator::gram(&cols, mats.len() * m);
        let rhs = operator::apply_transpose(&cols, &r);
        let mean_diag = (0..m).map(|k| g[(k, k)]).sum::<f64>() / m as f64;
        let mut accepted = false;
        for _ in 0..12 {
            let mut damped = g.clone();
            for k in 0..m {
                damped[(k, k)] += lambda * mean_diag.max(f64::MIN_POSITIVE);
            }
            let Ok(llt) = damped.llt(Side::Lower) else {
                lambda *= 10.0;
                continue;
            };
            let b = Mat::from_fn(m, 1, |k, _| -rhs[k]);
            let y = llt.solve(&b);
            let h = std::f64::consts::FRAC_1_SQRT_2;
            let mut skew = Mat::<f64>::zeros(d, d);
            for p in 1..d {
                for q in 0..p {
                    let v = y[(pair(p, q), 0)] * h;
                    skew[(p, q)] = v;
                    skew[(q, p)] = -v;
                }
            }
            let cand = &u * cayley(&skew);
            let cand_ts = operator::conjugate_all(mats, &cand);
            let next = operator::loss(&cand_ts, structure);
            if next < cur {
                last_decrease = (cur - next) / cur;
                u = cand;
                ts = cand_ts;
                cur = next;
                lambda = (lambda * 0.1).max(1e-14);
                accepted = true;
                break;
            }
            lambda *= 10.0;
        }
        if !accepted {
            return Ok((u, Stop::NoDescent { sweeps: sweep }));
        }
        if last_decrease < tol {
            return Ok((u, Stop::Converged { sweeps: sweep }));
        }
    }
    Ok((
        u,
        Stop::MaxSweeps {
            sweeps: max_sweeps,
            last_decrease,
        },
    ))
}
