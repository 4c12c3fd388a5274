//! Alternating least squares for a Kronecker sum on the exact activation objective
//! (`kron-factorize{calib=true als-steps=N}`): minimize `f = tr(Δ·H·Δᵀ)`,
//! `Δ = W − Σ_k A_k ⊗ B_k`, `H` the damped input Gram (not its Kronecker-factored
//! approximation, which only starts the iteration: see `whiten`).
//!
//! With the `B_k` fixed, `f` is a quadratic in the `A_k` that splits over the rows `i1` of the
//! `A_k`: the unknowns `a[(k, j1)] = A_k[i1, j1]` (`r·n1` of them) satisfy `G·a = b_{i1}` with
//! one matrix for every `i1`,
//! `G[(k,j1),(k',j1')] = Σ_{j2,j2'} (B_kᵀB_k')[j2,j2'] · H[(j1,j2),(j1',j2')]`, and
//! `b_{i1}[(k,j1)] = Σ_{i2,j2} (W·H)[(i1,i2),(j1,j2)] · B_k[i2,j2]` (rows `i = i1·m2 + i2`,
//! columns `j = j1·n2 + j2`). The `B` step is the same with the roles of the factors swapped.
//! Each half-step is an exact minimization, so `f` never increases (up to rounding; a step
//! that increases it is undone and the iteration stops). Cost per step: `r²·n²` for `G`,
//! `m·n·r` for the right-hand sides, `(r·n1)³ + (r·n2)³` for the solves — cheap at the ranks a
//! multiply-add cap allows, which is why a size limit ([`MAX_UNKNOWNS`]) skips larger systems.

use super::matrix::{kron_dense, KronShape};
use super::whiten::output_error;
use faer::linalg::solvers::Solve;
use faer::{Mat, Side};

/// The largest `r·max(n1, n2)` for which the steps run (a dense solve of that size per step).
pub const MAX_UNKNOWNS: usize = 3072;

/// Solves `G·X = R` for a symmetric positive semi-definite `G`, with a tiny ridge (growing if
/// the factorization fails) so that a rank-deficient `G` still gives the least-norm-ish
/// minimizer.
fn spd_solve(g: &Mat<f64>, rhs: &Mat<f64>) -> Option<Mat<f64>> {
    let k = g.nrows();
    let mean = ((0..k).map(|i| g[(i, i)]).sum::<f64>() / k.max(1) as f64).max(f64::MIN_POSITIVE);
    let mut ridge = 1e-12 * mean;
    for _ in 0..6 {
        let a = Mat::from_fn(k, k, |i, j| g[(i, j)] + if i == j { ridge } else { 0.0 });
        if let Ok(llt) = a.llt(Side::Lower) {
            return Some(llt.solve(rhs));
        }
        ridge *= 100.0;
    }
    None
}

/// One half-step: the factor `X` (`[r, p1, q1]`, the one solved for) given the other `Y`
/// (`[r, p2, q2]`). `first` says whether `X` is the first Kronecker factor (`A`).
fn half_step(
    p: &Mat<f64>,
    h: &Mat<f64>,
    s: KronShape,
    r: usize,
    y: &[f64],
    first: bool,
) -> Option<Vec<f64>> {
    // Dimensions of the unknown factor (rows px, cols qx) and of the fixed one (py, qy).
    let (px, qx, py, qy) = if first {
        (s.m1, s.n1, s.m2, s.n2)
    } else {
        (s.m2, s.n2, s.m1, s.n1)
    };
    let n2 = s.n2;
    // Column index of H / W for (first-factor col, second-factor col).
    let col = |jx: usize, jy: usize| if first { jx * n2 + jy } else { jy * n2 + jx };
    let row = |ix: usize, iy: usize| {
        if first {
            ix * s.m2 + iy
        } else {
            iy * s.m2 + ix
        }
    };
    // C_{kk'} = Y_kᵀ·Y_k' (qy × qy).
    let mut c = vec![0.0; r * r * qy * qy];
    for k in 0..r {
        for k2 in 0..r {
            let base = (k * r + k2) * qy * qy;
            for i in 0..py {
                for a in 0..qy {
                    let ya = y[(k * py + i) * qy + a];
                    if ya == 0.0 {
                        continue;
                    }
                    for b in 0..qy {
                        c[base + a * qy + b] += ya * y[(k2 * py + i) * qy + b];
                    }
                }
            }
        }
    }
    let dim = r * qx;
    let mut g = Mat::<f64>::zeros(dim, dim);
    for k in 0..r {
        for k2 in 0..r {
            let base = (k * r + k2) * qy * qy;
            for jx in 0..qx {
                for jx2 in 0..qx {
                    let mut acc = 0.0;
                    for a in 0..qy {
                        for b in 0..qy {
                            acc += c[base + a * qy + b] * h[(col(jx, a), col(jx2, b))];
                        }
                    }
                    g[(k * qx + jx, k2 * qx + jx2)] = acc;
                }
            }
        }
    }
    // Right-hand sides, one column per row ix of the unknown factor.
    let mut rhs = Mat::<f64>::zeros(dim, px);
    for ix in 0..px {
        for k in 0..r {
            for jx in 0..qx {
                let mut acc = 0.0;
                for iy in 0..py {
                    let pr = row(ix, iy);
                    for jy in 0..qy {
                        acc += p[(pr, col(jx, jy))] * y[(k * py + iy) * qy + jy];
                    }
                }
                rhs[(k * qx + jx, ix)] = acc;
            }
        }
    }
    let sol = spd_solve(&g, &rhs)?;
    let mut x = vec![0.0; r * px * qx];
    for k in 0..r {
        for ix in 0..px {
            for jx in 0..qx {
                x[(k * px + ix) * qx + jx] = sol[(k * qx + jx, ix)];
            }
        }
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// What [`refine`] did: the output error `‖Δ·L‖²` before and after.
#[derive(Debug, Clone, Copy)]
pub struct Refined {
    pub before: f64,
    pub after: f64,
    pub steps: usize,
}

/// Runs up to `steps` ALS steps (an `A` then a `B` half-step each) from `a`, `b` on the exact
/// objective with Gram `h = L·Lᵀ`; `w` is `m×n` row-major. `None` when the system is larger
/// than [`MAX_UNKNOWNS`] (nothing changed).
#[allow(clippy::too_many_arguments)]
pub fn refine(
    w: &[f64],
    h: &Mat<f64>,
    l: &Mat<f64>,
    s: KronShape,
    r: usize,
    a: &mut Vec<f64>,
    b: &mut Vec<f64>,
    steps: usize,
) -> Option<Refined> {
    if r * s.n1.max(s.n2) > MAX_UNKNOWNS {
        return None;
    }
    let (m, n) = (s.m1 * s.m2, s.n1 * s.n2);
    let err = |a: &[f64], b: &[f64]| {
        let approx = kron_dense(a, b, s, r);
        let d: Vec<f64> = w.iter().zip(&approx).map(|(x, y)| x - y).collect();
        output_error(l, &d, m, n)
    };
    let wm = Mat::from_fn(m, n, |i, j| w[i * n + j]);
    let p = wm * h;
    let before = err(a, b);
    let mut cur = before;
    let mut done = 0;
    for _ in 0..steps {
        let Some(na) = half_step(&p, h, s, r, b, true) else {
            break;
        };
        let Some(nb) = half_step(&p, h, s, r, &na, false) else {
            break;
        };
        let e = err(&na, &nb);
        // A step that raises the error (rounding) or is not finite ends the iteration.
        if e.is_nan() || e > cur * (1.0 + 1e-9) {
            break;
        }
        *a = na;
        *b = nb;
        cur = e;
        done += 1;
    }
    Some(Refined {
        before,
        after: cur,
        steps: done,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::factorize::matrix::{kron_factors, rearrange, truncated};
    use crate::factorize::whiten::{cholesky, damped};

    fn rnd(n: usize, seed: u64) -> Vec<f64> {
        crate::factorize::test_rnd(n, seed, 3)
    }

    /// On a general (non-Kronecker) Gram, ALS from the weight-only fit lowers the exact output
    /// error, monotonically, and a step from an exact fit stays exact.
    #[test]
    fn als_lowers_the_exact_output_error() {
        let (m, n) = (6, 12);
        let s = KronShape::new(m, n, 2, 3).expect("shape");
        let w = rnd(m * n, 4);
        let z = rnd(50 * n, 5);
        let x = Mat::from_fn(50, n, |t, j| {
            z[t * n + j] * if j % 5 == 0 { 6.0 } else { 1.0 } + z[t * n + (j + 1) % n]
        });
        let hm = x.transpose() * &x;
        let flat: Vec<f64> = (0..n * n).map(|k| hm[(k / n, k % n)]).collect();
        let h = damped(&flat, n, 0.01);
        let l = cholesky(&h).expect("chol");
        for r in 1..=2 {
            let f = truncated(&rearrange(&w, s), r, "r").expect("svd");
            let (mut a, mut b) = kron_factors(&f, s);
            let one = refine(&w, &h, &l, s, r, &mut a, &mut b, 1).expect("small");
            let more = refine(&w, &h, &l, s, r, &mut a, &mut b, 5).expect("small");
            assert!(one.after < 0.95 * one.before, "{r}: {one:?}");
            assert!(more.after <= one.after * (1.0 + 1e-9), "{r}: {more:?}");
        }
        // Full rank: exact stays exact.
        let full = s.full_rank();
        let f = truncated(&rearrange(&w, s), full, "r").expect("svd");
        let (mut a, mut b) = kron_factors(&f, s);
        let e = refine(&w, &h, &l, s, full, &mut a, &mut b, 2).expect("small");
        assert!(e.after <= 1e-18 * e.before.max(1.0) + 1e-20, "{e:?}");
    }
}
