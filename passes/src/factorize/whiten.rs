//! Activation-aware factorization (`calib=true`): the fit minimizes the error of the layer's
//! output on calibration tokens, `‖X(W − Ŵ)ᵀ‖_F² = tr((W − Ŵ)·H·(W − Ŵ)ᵀ)` with `H = XᵀX` the
//! input Gram (`X`: tokens × `n`), instead of `‖W − Ŵ‖_F²`.
//!
//! Damping: `H ← H + λ·mean(diag H)·I`, `λ = 0.01` (SparseGPT's), so that `H` is positive
//! definite even when some input features never vary on the calibration set. With the Cholesky
//! factor `H = L·Lᵀ`, `tr(Δ·H·Δᵀ) = ‖Δ·L‖_F²`: the objective is the Frobenius error of the
//! *whitened* weight `W·L`.
//!
//! Low rank (SVD-LLM): every rank-`r` `Ŵ` gives a rank-`r` `Ŵ·L` and back (`L` invertible), so
//! the optimum is `Ŵ·L = (W·L)_r`, the truncated SVD `Ũ·Σ_r·Ṽᵀ` of `W·L` (Eckart–Young), and
//! `Ŵ = (W·L)_r·L⁻¹`. As factors `Ŵ = U·Vᵀ`: `U = Ũ·√Σ_r`, `V = L⁻ᵀ·Ṽ·√Σ_r` (one triangular
//! solve with `Lᵀ`). The output error is exactly the tail of `W·L`'s spectrum.
//!
//! Kronecker sums: `(A ⊗ B)·L` is not a Kronecker product for a general `L`, so the
//! whitening uses a Kronecker-factored Gram. With the input index `j = j1·n2 + j2` split as the
//! factors' columns are (`n = n1·n2`), `H ≈ H1 ⊗ H2` is the nearest Kronecker product of `H`
//! in Frobenius norm: the rank-1 SVD of the rearrangement `𝓡(H)` (the same Van Loan –
//! Pitsianis map as for `W`, with `n1×n1` and `n2×n2` factors). For a positive definite `H` the
//! two factors can be taken symmetric positive (semi)definite: they are symmetrized and given a
//! positive trace (the sign of `u·vᵀ` is free), then Cholesky-factored `H1 = L1·L1ᵀ`,
//! `H2 = L2·L2ᵀ`, so `H1 ⊗ H2 = (L1 ⊗ L2)(L1 ⊗ L2)ᵀ`. Since
//! `(A_k ⊗ B_k)(L1 ⊗ L2) = (A_k·L1) ⊗ (B_k·L2)`, the whitened problem is again a nearest
//! Kronecker sum: the truncated SVD of `𝓡(W·(L1 ⊗ L2))` gives `Ã_k ⊗ B̃_k`, and
//! `A_k = Ã_k·L1⁻¹`, `B_k = B̃_k·L2⁻¹`. That is optimal for the factored Gram; the notes report
//! the error under the exact (damped) `H`, computed densely.
//!
//! Rank allocation uses the whitened spectra, so the budget goes where the output error is.

use super::matrix::{rearrange, FactorError, KronShape};
use faer::linalg::triangular_solve::solve_upper_triangular_in_place;
use faer::{Mat, MatRef, Par, Side};
use std::sync::Arc;

/// The damping `λ` of `H + λ·mean(diag H)·I`.
pub const DAMP: f64 = 0.01;

/// `H + λ·mean(diag H)·I` as a faer matrix (`h`: `n×n` row-major, symmetric).
pub fn damped(h: &[f64], n: usize, lambda: f64) -> Mat<f64> {
    let mean = (0..n).map(|i| h[i * n + i]).sum::<f64>() / n.max(1) as f64;
    // A Gram of an input that never varied is all zero: damp against 1 then.
    let d = lambda * if mean > 0.0 { mean } else { 1.0 };
    Mat::from_fn(n, n, |i, j| h[i * n + j] + if i == j { d } else { 0.0 })
}

/// The lower Cholesky factor of a symmetric matrix that should be positive definite; when
/// rounding makes it fail, the diagonal is raised by growing multiples of its mean until it
/// succeeds (a few tries).
pub fn cholesky(h: &Mat<f64>) -> Result<Mat<f64>, FactorError> {
    let n = h.nrows();
    let mean = ((0..n).map(|i| h[(i, i)]).sum::<f64>() / n.max(1) as f64)
        .abs()
        .max(f64::MIN_POSITIVE);
    let mut jitter = 0.0;
    for _ in 0..8 {
        let a = Mat::from_fn(n, n, |i, j| h[(i, j)] + if i == j { jitter } else { 0.0 });
        if let Ok(llt) = a.llt(Side::Lower) {
            return Ok(llt.L().to_owned());
        }
        jitter = if jitter == 0.0 {
            1e-8 * mean
        } else {
            jitter * 100.0
        };
    }
    Err(FactorError::NotPositive)
}

/// The nearest Kronecker product `H1 ⊗ H2` of `h` (`n1·n2` square), both factors symmetric
/// with positive trace.
pub fn nearest_kron_gram(
    h: &Mat<f64>,
    n1: usize,
    n2: usize,
) -> Result<(Mat<f64>, Mat<f64>), FactorError> {
    let n = n1 * n2;
    let flat: Vec<f64> = (0..n * n).map(|k| h[(k / n, k % n)]).collect();
    let s = KronShape {
        m1: n1,
        n1,
        m2: n2,
        n2,
    };
    let svd = rearrange(&flat, s)
        .thin_svd()
        .map_err(|_| FactorError::Svd)?;
    let sigma = svd.S().column_vector()[0];
    let (u, v) = (svd.U(), svd.V());
    let sym = |k: usize, col: MatRef<'_, f64>, scale: f64| {
        let m = Mat::from_fn(k, k, |i, j| {
            0.5 * scale * (col[(i * k + j, 0)] + col[(j * k + i, 0)])
        });
        let tr: f64 = (0..k).map(|i| m[(i, i)]).sum();
        if tr < 0.0 {
            -m
        } else {
            m
        }
    };
    // σ·u·vᵀ: the scale goes to the first factor (it cancels when the factors are undone).
    let h1 = sym(n1, u.get(.., 0..1), sigma);
    let h2 = sym(n2, v.get(.., 0..1), 1.0);
    Ok((h1, h2))
}

/// How a weight's input side is whitened.
#[derive(Debug, Clone)]
pub enum Whitening {
    /// `L` (lower) with `H = L·Lᵀ`.
    Full(Arc<Mat<f64>>),
    /// `L1`, `L2` (lower) with `H ≈ (L1 ⊗ L2)(L1 ⊗ L2)ᵀ`.
    Kron(Arc<Mat<f64>>, Arc<Mat<f64>>),
}

impl Whitening {
    /// `W·L` (or `W·(L1 ⊗ L2)`), `w` row-major `m×n`, the result row-major.
    pub fn apply(&self, w: &[f64], m: usize, n: usize) -> Vec<f64> {
        match self {
            Whitening::Full(l) => {
                let wm = Mat::from_fn(m, n, |i, j| w[i * n + j]);
                let p = wm * l.as_ref();
                (0..m * n).map(|k| p[(k / n, k % n)]).collect()
            }
            Whitening::Kron(l1, l2) => {
                // Row i as an n1×n2 matrix M_i: (vec M_i)(L1 ⊗ L2) = vec(L1ᵀ·M_i·L2).
                let (n1, n2) = (l1.nrows(), l2.nrows());
                let rows = Mat::from_fn(m * n1, n2, |r, j2| w[r * n2 + j2]);
                let t = rows * l2.as_ref(); // (m·n1)×n2: M_i·L2 stacked
                let mut out = vec![0.0; m * n];
                for i in 0..m {
                    for j1 in 0..n1 {
                        for a in j1..n1 {
                            // (L1ᵀ·T)[j1, ·] = Σ_a L1[a, j1]·T[a, ·]; L1 lower: a ≥ j1.
                            let c = l1[(a, j1)];
                            if c == 0.0 {
                                continue;
                            }
                            for j2 in 0..n2 {
                                out[i * n + j1 * n2 + j2] += c * t[(i * n1 + a, j2)];
                            }
                        }
                    }
                }
                out
            }
        }
    }
}

/// `X ← L⁻ᵀ·X` in place (`L` lower, `x`: `k×c` row-major), i.e. the solve `Lᵀ·Y = X`.
fn solve_lt(l: &Mat<f64>, x: &mut [f64], c: usize) {
    let k = l.nrows();
    let mut b = Mat::from_fn(k, c, |i, j| x[i * c + j]);
    solve_upper_triangular_in_place(l.transpose(), b.as_mut(), Par::Seq);
    for i in 0..k {
        for j in 0..c {
            x[i * c + j] = b[(i, j)];
        }
    }
}

/// Undoes the whitening on the right factor of a low-rank fit: `V ← L⁻ᵀ·V` (`v`: `n×r`).
pub fn unwhiten_lowrank(l: &Mat<f64>, v: &mut [f64], r: usize) {
    solve_lt(l, v, r);
}

/// Undoes the whitening on Kronecker factors: `A_k ← A_k·L1⁻¹` (`a`: `[r, m1, n1]`), likewise
/// `B_k` with `L2`. Row vectors: `A·L1 = Ã` ⇔ `L1ᵀ·Aᵀ = Ãᵀ`.
pub fn unwhiten_kron(l1: &Mat<f64>, l2: &Mat<f64>, a: &mut [f64], b: &mut [f64], s: KronShape) {
    let go = |l: &Mat<f64>, f: &mut [f64], cols: usize| {
        // Rows of all factors stacked: (r·rows)×cols; transposed to cols×(r·rows) for the solve.
        let rows = f.len() / cols;
        let mut t = vec![0.0; cols * rows];
        for i in 0..rows {
            for j in 0..cols {
                t[j * rows + i] = f[i * cols + j];
            }
        }
        solve_lt(l, &mut t, rows);
        for i in 0..rows {
            for j in 0..cols {
                f[i * cols + j] = t[j * rows + i];
            }
        }
    };
    go(l1, a, s.n1);
    go(l2, b, s.n2);
}

/// `‖Δ·L‖_F²` for `Δ = W − Ŵ` (`m×n` row-major): the output error under the full Gram.
pub fn output_error(l: &Mat<f64>, delta: &[f64], m: usize, n: usize) -> f64 {
    let d = Mat::from_fn(m, n, |i, j| delta[i * n + j]);
    let p = d * l.as_ref();
    let f = p.norm_l2();
    f * f
}

/// The damped input Gram `H + λ·mean(diag H)·I` of each value in `wanted` (`(block, value)`,
/// the inputs of the linears to factorize), from one layer-wise walk over the calibration set.
///
/// One-shot, not sequential: every Gram is taken on the *dense* model, because the ranks are
/// allocated across all blocks at once and need every block's whitened spectrum before any
/// block is factorized (a sequential fit would need a second walk with the ranks fixed).
pub fn collect_grams(
    m: &mut ortho_ir::Module,
    calib: &crate::calib::Calibration,
    wanted: &[(usize, ortho_ir::ValueId)],
) -> Result<std::collections::HashMap<ortho_ir::ValueId, Mat<f64>>, crate::pass::PassError> {
    let mut out = std::collections::HashMap::new();
    let Some(last) = wanted.iter().map(|w| w.0).max() else {
        return Ok(out);
    };
    crate::calib::walk_layers_until(m, calib, Some(last), &mut |lcx| {
        let mut vals: Vec<ortho_ir::ValueId> = Vec::new();
        for &(b, v) in wanted {
            if b == lcx.block.index && !vals.contains(&v) {
                vals.push(v);
            }
        }
        if vals.is_empty() {
            lcx.progress("not factorized");
            return Ok(());
        }
        let t = std::time::Instant::now();
        for (v, g) in vals.iter().zip(lcx.grams(&vals)?) {
            out.insert(*v, damped(&g.hessian(), g.dim, DAMP));
        }
        lcx.progress(&format!(
            "{} input Grams ({:.1} s)",
            vals.len(),
            t.elapsed().as_secs_f64()
        ));
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::factorize::matrix::{as_mat, kron_dense, kron_factors, truncated};

    fn rnd(n: usize, seed: u64) -> Vec<f64> {
        crate::factorize::test_rnd(n, seed, 11)
    }

    /// `XᵀX` of `tokens` rows of correlated features (`X = Z·M`, `M` random), damped.
    fn gram(n: usize, tokens: usize, seed: u64) -> Mat<f64> {
        let z = rnd(tokens * n, seed);
        let mix = rnd(n * n, seed + 1);
        let x = Mat::from_fn(tokens, n, |t, j| {
            (0..n).map(|k| z[t * n + k] * mix[k * n + j]).sum::<f64>()
                // A few features with large activations, as in LLMs.
                * if j % 5 == 0 { 8.0 } else { 1.0 }
        });
        let h = x.transpose() * &x;
        let flat: Vec<f64> = (0..n * n).map(|k| h[(k / n, k % n)]).collect();
        damped(&flat, n, DAMP)
    }

    fn sub(a: &[f64], b: &[f64]) -> Vec<f64> {
        a.iter().zip(b).map(|(x, y)| x - y).collect()
    }

    fn lowrank_dense(u: &[f64], v: &[f64], m: usize, n: usize, r: usize) -> Vec<f64> {
        let mut w = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                w[i * n + j] = (0..r).map(|k| u[i * r + k] * v[j * r + k]).sum();
            }
        }
        w
    }

    /// Low rank, activation-aware: the output error equals the Eckart–Young tail of `W·L`'s
    /// spectrum at every rank, never exceeds the weight-only fit's output error, is clearly
    /// below it at a middle rank, and vanishes at full rank.
    #[test]
    fn whitened_lowrank_is_optimal_for_the_output_error() {
        let (m, n) = (10, 12);
        let w = rnd(m * n, 1);
        let l = cholesky(&gram(n, 40, 2)).expect("chol");
        let wl = Whitening::Full(Arc::new(l.clone())).apply(&w, m, n);
        let full = m.min(n);
        let mut gained = false;
        for r in 1..=full {
            let f = truncated(&as_mat(&wl, m, n), r, "w").expect("svd");
            let mut v = f.right.clone();
            unwhiten_lowrank(&l, &mut v, r);
            let err = output_error(&l, &sub(&w, &lowrank_dense(&f.left, &v, m, n, r)), m, n);
            let tail = f.tail_energy();
            assert!(
                (err - tail).abs() <= 1e-9 * (1.0 + tail),
                "rank {r}: {err} vs {tail}"
            );
            let plain = truncated(&as_mat(&w, m, n), r, "w").expect("svd");
            let plain_err = output_error(
                &l,
                &sub(&w, &lowrank_dense(&plain.left, &plain.right, m, n, r)),
                m,
                n,
            );
            let scale = output_error(&l, &w, m, n);
            assert!(
                err <= plain_err + 1e-12 * scale,
                "rank {r}: {err} > {plain_err}"
            );
            gained |= err < 0.9 * plain_err;
            if r == full {
                assert!(err <= 1e-18 * output_error(&l, &w, m, n).max(1.0), "{err}");
            }
        }
        assert!(gained, "whitening never helped on a correlated Gram");
    }

    /// The nearest Kronecker product of an exact `H1 ⊗ H2` is that product (up to the scale
    /// split between the factors).
    #[test]
    fn nearest_kron_gram_recovers_a_kronecker_gram() {
        let (h1, h2) = (gram(3, 20, 5), gram(4, 20, 7));
        let h = Mat::from_fn(12, 12, |i, j| h1[(i / 4, j / 4)] * h2[(i % 4, j % 4)]);
        let (g1, g2) = nearest_kron_gram(&h, 3, 4).expect("kron");
        let back = Mat::from_fn(12, 12, |i, j| g1[(i / 4, j / 4)] * g2[(i % 4, j % 4)]);
        let d = (&back - &h).norm_l2() / h.norm_l2();
        assert!(d < 1e-12, "{d}");
        assert!((0..3).all(|i| g1[(i, i)] > 0.0) && (0..4).all(|i| g2[(i, i)] > 0.0));
    }

    /// Kronecker sums, activation-aware: with a Gram that is a Kronecker product, the output
    /// error equals the tail of `𝓡(W·(L1 ⊗ L2))`'s spectrum and is at most the weight-only
    /// fit's; at full rank the fit is exact. With a general Gram (factored approximately) the
    /// fit is exact at full rank (the errors against the weight-only fit are printed).
    #[test]
    fn whitened_kron_fits_the_output() {
        let s = KronShape::new(6, 12, 2, 3).expect("shape");
        let (m, n) = (6, 12);
        let w = rnd(m * n, 9);
        let (h1, h2) = (gram(3, 20, 5), gram(4, 20, 7));
        let hk = Mat::from_fn(n, n, |i, j| h1[(i / 4, j / 4)] * h2[(i % 4, j % 4)]);
        for (h, exact_gram) in [(hk, true), (gram(n, 60, 21), false)] {
            let l = cholesky(&h).expect("chol");
            let (g1, g2) = nearest_kron_gram(&h, 3, 4).expect("kron");
            let (l1, l2) = (cholesky(&g1).expect("l1"), cholesky(&g2).expect("l2"));
            let wh = Whitening::Kron(Arc::new(l1.clone()), Arc::new(l2.clone()));
            let ww = wh.apply(&w, m, n);
            let full = s.full_rank();
            let mut gained = false;
            for r in 1..=full {
                let f = truncated(&rearrange(&ww, s), r, "r").expect("svd");
                let (mut a, mut b) = kron_factors(&f, s);
                unwhiten_kron(&l1, &l2, &mut a, &mut b, s);
                let err = output_error(&l, &sub(&w, &kron_dense(&a, &b, s, r)), m, n);
                let plain = truncated(&rearrange(&w, s), r, "r").expect("svd");
                let (pa, pb) = kron_factors(&plain, s);
                let plain_err = output_error(&l, &sub(&w, &kron_dense(&pa, &pb, s, r)), m, n);
                if exact_gram {
                    let tail = f.tail_energy();
                    assert!(
                        (err - tail).abs() <= 1e-9 * (1.0 + tail),
                        "{r}: {err} vs {tail}"
                    );
                    let scale = output_error(&l, &w, m, n);
                    assert!(err <= plain_err + 1e-12 * scale, "{r}: {err} > {plain_err}");
                }
                eprintln!("exact Kronecker Gram {exact_gram}, rank {r}: output error {err:.4e}, weight-only fit {plain_err:.4e}");
                if r < full {
                    gained |= err < 0.9 * plain_err;
                } else {
                    assert!(err <= 1e-18 * output_error(&l, &w, m, n).max(1.0), "{err}");
                }
            }
            // A general Gram is only approximately Kronecker: no gain is promised there.
            assert!(gained || !exact_gram, "whitening never helped");
        }
    }
}
