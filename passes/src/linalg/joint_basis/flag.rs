//! The general case's start: the common invariant flag of a jointly triangularizable set, built
//! one vector at a time (module doc of `joint_basis`, "Optimizer").
//!
//! Non-commuting matrices that share a triangularizer share exactly one invariant flag, so the
//! start must find it in its order: step k picks the common eigenvector of the matrices deflated
//! to the complement of the k vectors already chosen. Candidates are the eigenvectors of a
//! random positive combination `Σ μ_n B_n`; but those are the eigenvectors of one (nearly)
//! triangular matrix, whose conditioning degrades exponentially with d (the off-triangular
//! part of a random triangular matrix makes its eigenvector matrix ill-conditioned), so at
//! moderate noise even the right candidate can be far from the common eigenvector, and the
//! wrong one may score better. The *joint* problem for one vector is well conditioned: moving a
//! unit x by `x ← x + Q z` (Q an orthonormal basis of x^⊥) changes the residual
//! `s_n = Qᵀ B_n x` (the first column of `[x Q]ᵀ B_n [x Q]` below the diagonal) by
//! `(Qᵀ B_n Q − (xᵀ B_n x) I) z` to first order, and the stacked Jacobian is singular only if
//! the same value is an eigenvalue of every deflated `B_n` — a joint separation, far better
//! than any single matrix's. So the best-scoring candidates (score
//! `Σ_n ‖B_n x − (xᵀ B_n x) x‖²`) are each refined by damped Gauss–Newton on that residual over
//! the sphere before the best refined one is chosen and deflated. This needs only faer, so the
//! validation bench can include it directly for experiments.

use faer::linalg::solvers::Solve;
use faer::{Mat, Side};

/// How the flag is searched at each step: every eigenvector of the deflated combination is
/// screened by `screen_steps` Gauss–Newton steps (the right one can score badly before
/// refinement, so all are screened), then the `candidates` best go on for `steps` more, and
/// the lowest refined score wins. `candidates: 0` (with `screen_steps: 0`) picks the
/// best-scoring eigenvector as it is — the unrefined greedy start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagSearch {
    pub screen_steps: usize,
    pub candidates: usize,
    pub steps: usize,
}

/// `Σ_n ‖B_n x − (xᵀ B_n x) x‖²` for a unit `x`.
fn score(bs: &[Mat<f64>], x: &Mat<f64>) -> f64 {
    let mut s = 0.0;
    for b in bs {
        let bx = b * x;
        let a = (x.transpose() * &bx)[(0, 0)];
        for i in 0..x.nrows() {
            s += (bx[(i, 0)] - a * x[(i, 0)]).powi(2);
        }
    }
    s
}

/// Orthonormal basis of the complement of the unit column `x` (the last columns of a full QR).
fn complement(x: &Mat<f64>) -> Mat<f64> {
    let rem = x.nrows();
    let q = x.qr().compute_Q();
    Mat::from_fn(rem, rem - 1, |i, j| q[(i, j + 1)])
}

/// Damped Gauss–Newton on `score` over the unit sphere from `x` (module doc); returns the
/// refined vector and its score. A step is kept only if the score decreases.
fn refine(bs: &[Mat<f64>], mut x: Mat<f64>, steps: usize) -> (Mat<f64>, f64) {
    let rem = x.nrows();
    let mut cur = score(bs, &x);
    let mut lambda = 1e-10;
    for _ in 0..steps {
        if cur == 0.0 {
            break;
        }
        let q = complement(&x);
        let m = rem - 1;
        let mut h = Mat::<f64>::zeros(m, m);
        let mut g = Mat::<f64>::zeros(m, 1);
        for b in bs {
            let bx = b * &x;
            let a = (x.transpose() * &bx)[(0, 0)];
            let s = q.transpose() * &bx;
            let mut j = q.transpose() * (b * &q);
            for i in 0..m {
                j[(i, i)] -= a;
            }
            h += j.transpose() * &j;
            g += j.transpose() * &s;
        }
        let mean_diag = (0..m).map(|i| h[(i, i)]).sum::<f64>() / m as f64;
        let mut accepted = false;
        for _ in 0..10 {
            let mut damped = h.clone();
            for i in 0..m {
                damped[(i, i)] += lambda * mean_diag.max(f64::MIN_POSITIVE);
            }
            let Ok(llt) = damped.llt(Side::Lower) else {
                lambda *= 10.0;
                continue;
            };
            let z = llt.solve(&g);
            let mut cand = &x - &q * &z;
            let n = cand.norm_l2();
            if !(n.is_finite() && n > 0.0) {
                lambda *= 10.0;
                continue;
            }
            cand *= faer::Scale(1.0 / n);
            let next = score(bs, &cand);
            if next < cur {
                let decrease = (cur - next) / cur;
                x = cand;
                cur = next;
                lambda = (lambda * 0.1).max(1e-14);
                accepted = decrease >= 1e-10;
                break;
            }
            lambda *= 10.0;
        }
        if !accepted {
            break;
        }
    }
    (x, cur)
}

/// Real vectors from complex eigenvectors: each column is first multiplied by the phase that
/// makes its largest entry real (an eigenvector of a real eigenvalue is a real vector times a
/// complex scalar), then its real part is taken.
pub fn real_eigenvectors(v: faer::MatRef<'_, faer::c64>) -> Mat<f64> {
    let (d, k) = (v.nrows(), v.ncols());
    let mut out = Mat::<f64>::zeros(d, k);
    for j in 0..k {
        let mut best = faer::c64::new(1.0, 0.0);
        let mut best_abs = 0.0;
        for i in 0..d {
            let z = v[(i, j)];
            let a = (z.re * z.re + z.im * z.im).sqrt();
            if a > best_abs {
                best_abs = a;
                best = z;
            }
        }
        let (pr, pi) = if best_abs > 0.0 {
            (best.re / best_abs, -best.im / best_abs)
        } else {
            (1.0, 0.0)
        };
        for i in 0..d {
            let z = v[(i, j)];
            out[(i, j)] = z.re * pr - z.im * pi;
        }
    }
    out
}

/// The common flag of `mats` (module doc) from the combination weights `mu`: an orthogonal
/// matrix whose k-th column is the k-th chosen vector. `None` when an eigendecomposition fails.
pub fn common_flag(mats: &[Mat<f64>], mu: &[f64], search: FlagSearch) -> Option<Mat<f64>> {
    let d = mats.first()?.nrows();
    let mut u = Mat::<f64>::zeros(d, d);
    // `basis`: orthonormal columns spanning the complement of the chosen vectors; `bs`: the
    // matrices deflated to it.
    let mut basis = Mat::<f64>::identity(d, d);
    let mut bs: Vec<Mat<f64>> = mats.to_vec();
    for k in 0..d {
        let rem = d - k;
        let x = if rem == 1 {
            Mat::from_fn(1, 1, |_, _| 1.0)
        } else {
            let mut c = Mat::<f64>::zeros(rem, rem);
            for (b, &w) in bs.iter().zip(mu) {
                c += faer::Scale(w) * b;
            }
            let e = c.eigen().ok()?;
            let vecs = real_eigenvectors(e.U());
            let mut scored: Vec<(f64, Mat<f64>)> = (0..rem)
                .filter_map(|j| {
                    let x = vecs.col(j);
                    let n = x.norm_l2();
                    (n > 0.0 && n.is_finite()).then(|| {
                        let x = Mat::from_fn(rem, 1, |i, _| x[i] / n);
                        (score(&bs, &x), x)
                    })
                })
                .collect();
            let polish = |v: Vec<(f64, Mat<f64>)>, steps: usize| -> Vec<(f64, Mat<f64>)> {
                v.into_iter()
                    .map(|(s, x)| {
                        if steps == 0 {
                            return (s, x);
                        }
                        let (x, s) = refine(&bs, x, steps);
                        (s, x)
                    })
                    .collect()
            };
            scored = polish(scored, search.screen_steps);
            scored.sort_by(|a, b| a.0.total_cmp(&b.0));
            scored.truncate(search.candidates.max(1));
            if search.candidates > 0 {
                scored = polish(scored, search.steps);
            }
            scored.into_iter().min_by(|a, b| a.0.total_cmp(&b.0))?.1
        };
        let col = &basis * &x;
        for i in 0..d {
            u[(i, k)] = col[(i, 0)];
        }
        if rem > 1 {
            let rest = complement(&x);
            basis = &basis * &rest;
            for b in bs.iter_mut() {
                *b = rest.transpose() * (&*b * &rest);
            }
        }
    }
    Some(u)
}
