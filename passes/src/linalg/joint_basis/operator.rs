//! The residual `r(T)`, the loss and the linearized operator `𝒜_U` (module doc of
//! `joint_basis`) in coordinates: skew generators in the orthonormal basis
//! `E_pq = (e_p e_qᵀ − e_q e_pᵀ)/√2` (p > q, index `p(p−1)/2 + q`), residuals as the entries
//! below the diagonal (scaled by √2 in the symmetric case, so their norm is the norm of both
//! off-diagonal triangles).

use super::{JointBasisError, Structure};
use faer::linalg::matmul::matmul;
use faer::linalg::solvers::Solve;
use faer::{Accum, Mat, Par, Side};

/// Index of the pair (i, j), i > j.
pub(super) fn pair(i: usize, j: usize) -> usize {
    i * (i - 1) / 2 + j
}

/// `Uᵀ M_n U` for every n.
pub(super) fn conjugate_all(mats: &[Mat<f64>], u: &Mat<f64>) -> Vec<Mat<f64>> {
    let d = u.nrows();
    mats.iter()
        .map(|m| {
            let mut mu = Mat::<f64>::zeros(d, d);
            matmul(
                mu.as_mut(),
                Accum::Replace,
                m.as_ref(),
                u.as_ref(),
                1.0,
                Par::Seq,
            );
            let mut t = Mat::<f64>::zeros(d, d);
            matmul(
                t.as_mut(),
                Accum::Replace,
                u.transpose(),
                mu.as_ref(),
                1.0,
                Par::Seq,
            );
            t
        })
        .collect()
}

/// The residual weight of an entry below the diagonal.
fn scale(structure: Structure) -> f64 {
    match structure {
        Structure::Symmetric => std::f64::consts::SQRT_2,
        Structure::General => 1.0,
    }
}

/// The stacked residual `(r(T_n))_n`.
pub(super) fn residual(ts: &[Mat<f64>], structure: Structure) -> Vec<f64> {
    let s = scale(structure);
    let mut r = Vec::new();
    for t in ts {
        let d = t.nrows();
        for i in 1..d {
            for j in 0..i {
                r.push(s * t[(i, j)]);
            }
        }
    }
    r
}

/// `L = Σ_n ‖r(T_n)‖²`.
pub(super) fn loss(ts: &[Mat<f64>], structure: Structure) -> f64 {
    residual(ts, structure).iter().map(|x| x * x).sum()
}

/// The columns of `𝒜_U` as sparse lists `(stacked row, value)`, column index = pair index.
/// `[T, E_pq]` is nonzero only in rows and columns p and q, so each column has O(N·d) entries.
pub(super) fn columns(ts: &[Mat<f64>], structure: Structure) -> Vec<Vec<(usize, f64)>> {
    let d = ts.first().map_or(0, |t| t.nrows());
    let m = d * d.saturating_sub(1) / 2;
    let s = scale(structure);
    let h = std::f64::consts::FRAC_1_SQRT_2;
    let mut cols = Vec::with_capacity(m);
    for p in 1..d {
        for q in 0..p {
            let mut col = Vec::new();
            for (n, t) in ts.iter().enumerate() {
                // [T, E]_ij = (TE)_ij − (ET)_ij with
                // (TE)_ij = [j=q]·T_ip/√2 − [j=p]·T_iq/√2, (ET)_ij = [i=p]·T_qj/√2 − [i=q]·T_pj/√2.
                let c = |i: usize, j: usize| {
                    let mut v = 0.0;
                    if j == q {
                        v += t[(i, p)];
                    }
                    if j == p {
                        v -= t[(i, q)];
                    }
                    if i == p {
                        v -= t[(q, j)];
                    }
                    if i == q {
                        v += t[(p, j)];
                    }
                    v * h
                };
                let base = n * m;
                // Entries below the diagonal in rows p, q or columns p, q, each visited once.
                let mut push = |i: usize, j: usize| {
                    let v = c(i, j);
                    if v != 0.0 {
                        col.push((base + pair(i, j), s * v));
                    }
                };
                for j in 0..p {
                    push(p, j);
                }
                for j in 0..q {
                    push(q, j);
                }
                for i in (q + 1)..d {
                    if i != p {
                        push(i, q);
                    }
                }
                for i in (p + 1)..d {
                    push(i, p);
                }
            }
            cols.push(col);
        }
    }
    cols
}

/// `𝒜ᵀ𝒜` (m×m) from the sparse columns, going through the rows so the cost is
/// Σ_rows (nonzeros in the row)² rather than m²·(N·m).
pub(super) fn gram(cols: &[Vec<(usize, f64)>], rows: usize) -> Mat<f64> {
    let m = cols.len();
    let mut by_row: Vec<Vec<(usize, f64)>> = vec![Vec::new(); rows];
    for (k, col) in cols.iter().enumerate() {
        for &(r, v) in col {
            by_row[r].push((k, v));
        }
    }
    let mut g = Mat::<f64>::zeros(m, m);
    for row in &by_row {
        for &(a, va) in row {
            for &(b, vb) in row {
                g[(a, b)] += va * vb;
            }
        }
    }
    g
}

/// `𝒜ᵀ r`.
pub(super) fn apply_transpose(cols: &[Vec<(usize, f64)>], r: &[f64]) -> Vec<f64> {
    cols.iter()
        .map(|col| col.iter().map(|&(i, v)| v * r[i]).sum())
        .collect()
}

/// σ_min from the singular values of the dense stacked matrix.
pub(super) fn sigma_min_svd(ts: &[Mat<f64>], structure: Structure) -> Result<f64, JointBasisError> {
    let cols = columns(ts, structure);
    let m = cols.len();
    if m == 0 {
        return Ok(f64::INFINITY);
    }
    let rows = ts.len() * m;
    let mut a = Mat::<f64>::zeros(rows, m);
    for (k, col) in cols.iter().enumerate() {
        for &(r, v) in col {
            a[(r, k)] = v;
        }
    }
    let s = a
        .singular_values()
        .map_err(|_| JointBasisError::Decomposition("SVD of the linearized operator"))?;
    Ok(s.iter().copied().fold(f64::INFINITY, f64::min))
}

/// σ_min as `√λ_min(𝒜ᵀ𝒜)`.
pub(super) fn sigma_min_gram(
    ts: &[Mat<f64>],
    structure: Structure,
) -> Result<f64, JointBasisError> {
    let cols = columns(ts, structure);
    let m = cols.len();
    if m == 0 {
        return Ok(f64::INFINITY);
    }
    let g = gram(&cols, ts.len() * m);
    let ev = g
        .self_adjoint_eigenvalues(Side::Lower)
        .map_err(|_| JointBasisError::Decomposition("eigenvalues of 𝒜ᵀ𝒜"))?;
    let min = ev.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(min.max(0.0).sqrt())
}

/// The joint eigengaps `√Σ_n (T_n,pp − T_n,qq)²` of every pair (p > q), pair-indexed.
pub fn joint_gaps(ts: &[Mat<f64>]) -> Vec<f64> {
    let d = ts.first().map_or(0, |t| t.nrows());
    let mut g = Vec::with_capacity(d * d.saturating_sub(1) / 2);
    for p in 1..d {
        for q in 0..p {
            let s: f64 = ts.iter().map(|t| (t[(p, p)] - t[(q, q)]).powi(2)).sum();
            g.push(s.sqrt());
        }
    }
    g
}

/// Weyl lower bound `σ_min(𝒜_U) ≥ min gap·c − 2·√Σ_n ‖O_n‖²_F` (c = 1 symmetric, 1/√2
/// general; O_n the off-diagonal part of T_n). May be negative.
pub fn sigma_min_weyl(ts: &[Mat<f64>], structure: Structure) -> f64 {
    let c = match structure {
        Structure::Symmetric => 1.0,
        Structure::General => std::f64::consts::FRAC_1_SQRT_2,
    };
    let min_gap = joint_gaps(ts).into_iter().fold(f64::INFINITY, f64::min);
    let mut off2 = 0.0;
    for t in ts {
        let d = t.nrows();
        for j in 0..d {
            for i in 0..d {
                if i != j {
                    off2 += t[(i, j)] * t[(i, j)];
                }
            }
        }
    }
    c * min_gap - 2.0 * off2.sqrt()
}

/// `‖𝒜⁺ r‖` for the stacked residual `r` of `ts` (the first-order step that the residual alone
/// asks for) and `‖P_𝒜 r‖²` (its projection on the range of 𝒜), by least squares through the normal equations `𝒜ᵀ𝒜 y = 𝒜ᵀ r` (Cholesky of the
/// sparse-built Gram). `None` when the Gram is not positive definite (σ_min = 0 numerically):
/// the caller falls back to `√L/σ_min`.
pub(super) fn lsq_step_norm(ts: &[Mat<f64>], structure: Structure) -> Option<(f64, f64)> {
    let cols = columns(ts, structure);
    let m = cols.len();
    if m == 0 {
        return Some((0.0, 0.0));
    }
    let rows = ts.len() * m;
    let g = gram(&cols, rows);
    let r = residual(ts, structure);
    let rhs = apply_transpose(&cols, &r);
    let llt = g.llt(Side::Lower).ok()?;
    let b = Mat::from_fn(m, 1, |k, _| rhs[k]);
    let mut y = llt.solve(&b);
    // One step of iterative refinement: the normal equations square the condition number, and
    // the term is tiny near a critical point (𝒜ᵀ r ≈ 0), so correct the solve once in f64.
    let gy = &g * &y;
    let res = Mat::from_fn(m, 1, |k, _| b[(k, 0)] - gy[(k, 0)]);
    y += llt.solve(&res);
    let n = y.norm_l2();
    // ‖𝒜y‖² = yᵀ(𝒜ᵀ𝒜)y: the part of ‖r‖² that a first-order step can remove.
    let gy = &g * &y;
    let proj2 = (0..m).map(|k| y[(k, 0)] * gy[(k, 0)]).sum::<f64>().max(0.0);
    (n.is_finite() && proj2.is_finite()).then_some((n, proj2))
}
