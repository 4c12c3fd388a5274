//! The Cayley–Neumann parameterization (CNP) in f64: a skew-symmetric `Q` built from the
//! strictly-upper-triangular parameters of a `b × b` block, the truncated series the training
//! graph computes, the exact Cayley transform it approximates, and the orthogonality error.
//!
//! Truncation (the one `poet-reparam` emits and `poet-merge` folds): the exact Cayley series
//! `(I+Q)(I−Q)⁻¹ = I + 2Q + 2Q² + 2Q³ + …` cut after the `k`-th power,
//! `R_k = I + 2(Q + Q² + … + Q^k)`, evaluated by Horner's rule `S ← Q + Q·S` (k − 1 products).
//! It differs from the exact Cayley transform by `2Σ_{i>k} Qⁱ`, so `‖R_k − R‖ = O(‖Q‖^{k+1})`
//! while `‖Q‖ < 1`; the orthogonality error `‖R_kᵀR_k − I‖` is `O(‖Q‖^{k+1})` for odd k and
//! `O(‖Q‖^{k+2})` for even k (the leading terms cancel; tested). This is the official code's
//! CPU path at k = 4; its fused GPU kernel adds `Q^{k+1}` once instead.

/// Parameters of one `b × b` block: the strictly upper triangle.
pub fn tri_count(b: usize) -> usize {
    b * b.saturating_sub(1) / 2
}

/// The position of entry `(i, j)`, `i < j`, in a block's parameter vector (row-major upper
/// triangle).
pub fn tri_index(b: usize, i: usize, j: usize) -> usize {
    // Rows before i hold (b−1) + (b−2) + … + (b−i) entries.
    i * (2 * b - i - 1) / 2 + (j - i - 1)
}

/// `Q = A − Aᵀ` (`b × b`, row-major) with `A` the strictly upper triangle holding `params`.
pub fn skew(params: &[f64], b: usize) -> Vec<f64> {
    let mut q = vec![0.0; b * b];
    for i in 0..b {
        for j in i + 1..b {
            let a = params[tri_index(b, i, j)];
            q[i * b + j] = a;
            q[j * b + i] = -a;
        }
    }
    q
}

/// `a · b` for square `n × n` row-major matrices.
pub fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut c = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let x = a[i * n + k];
            if x == 0.0 {
                continue;
            }
            for j in 0..n {
                c[i * n + j] += x * b[k * n + j];
            }
        }
    }
    c
}

fn identity(n: usize) -> Vec<f64> {
    let mut r = vec![0.0; n * n];
    for i in 0..n {
        r[i * n + i] = 1.0;
    }
    r
}

/// The truncated Cayley–Neumann map `R_k = I + 2(Q + … + Q^k)` (see the module docs); `k ≥ 1`.
pub fn cnp(q: &[f64], b: usize, k: usize) -> Vec<f64> {
    let mut s = q.to_vec();
    for _ in 1..k {
        let qs = matmul(q, &s, b);
        s = q.iter().zip(&qs).map(|(x, y)| x + y).collect();
    }
    let mut r = identity(b);
    for (x, y) in r.iter_mut().zip(&s) {
        *x += 2.0 * y;
    }
    r
}

/// The exact Cayley transform `(I − Q)⁻¹(I + Q)` (orthogonal for skew `Q`; `I − Q` is always
/// invertible then), by Gaussian elimination with partial pivoting. The reference the
/// truncation is measured against.
pub fn cayley_exact(q: &[f64], b: usize) -> Vec<f64> {
    let mut a: Vec<f64> = identity(b).iter().zip(q).map(|(i, x)| i - x).collect();
    let mut x: Vec<f64> = identity(b).iter().zip(q).map(|(i, x)| i + x).collect();
    for col in 0..b {
        let piv = (col..b)
            .max_by(|&i, &j| a[i * b + col].abs().total_cmp(&a[j * b + col].abs()))
            .unwrap_or(col);
        if piv != col {
            for j in 0..b {
                a.swap(col * b + j, piv * b + j);
                x.swap(col * b + j, piv * b + j);
            }
        }
        let d = a[col * b + col];
        for row in 0..b {
            if row == col {
                continue;
            }
            let f = a[row * b + col] / d;
            if f == 0.0 {
                continue;
            }
            for j in 0..b {
                a[row * b + j] -= f * a[col * b + j];
                x[row * b + j] -= f * x[col * b + j];
            }
        }
    }
    for row in 0..b {
        let d = a[row * b + row];
        for j in 0..b {
            x[row * b + j] /= d;
        }
    }
    x
}

/// `‖RᵀR − I‖_F`.
pub fn orthogonality_error(r: &[f64], b: usize) -> f64 {
    let mut s = 0.0;
    for i in 0..b {
        for j in 0..b {
            let mut d: f64 = (0..b).map(|k| r[k * b + i] * r[k * b + j]).sum();
            if i == j {
                d -= 1.0;
            }
            s += d * d;
        }
    }
    s.sqrt()
}

/// The spectral norm of a square matrix (power iteration on `AᵀA`, a fixed 200 rounds: enough
/// for the few digits the error slope needs).
pub fn spectral_norm(a: &[f64], n: usize) -> f64 {
    let mut v = vec![1.0 / (n as f64).sqrt(); n];
    let mut sigma = 0.0;
    for _ in 0..200 {
        let av: Vec<f64> = (0..n)
            .map(|i| (0..n).map(|j| a[i * n + j] * v[j]).sum())
            .collect();
        let atav: Vec<f64> = (0..n)
            .map(|j| (0..n).map(|i| a[i * n + j] * av[i]).sum())
            .collect();
        let norm = atav.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return 0.0;
        }
        sigma = norm.sqrt();
        v = atav.iter().map(|x| x / norm).collect();
    }
    sigma
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(b: usize, scale: f64, seed: u64) -> Vec<f64> {
        let mut rng = crate::poet::rng::SplitMix::new(seed);
        (0..tri_count(b)).map(|_| scale * rng.gaussian()).collect()
    }

    #[test]
    fn tri_index_enumerates_the_upper_triangle_in_order() {
        let b = 5;
        let mut next = 0;
        for i in 0..b {
            for j in i + 1..b {
                assert_eq!(tri_index(b, i, j), next);
                next += 1;
            }
        }
        assert_eq!(next, tri_count(b));
    }

    #[test]
    fn exact_cayley_is_orthogonal_and_zero_maps_to_identity() {
        let b = 8;
        let q = skew(&params(b, 0.3, 1), b);
        let r = cayley_exact(&q, b);
        assert!(orthogonality_error(&r, b) < 1e-12);
        let r0 = cnp(&vec![0.0; b * b], b, 5);
        assert_eq!(r0, identity(b));
    }

    /// The truncation's distance to the exact Cayley transform falls as ‖Q‖^{k+1}: the
    /// log–log slope between two small norms is k + 1 within 0.15. Its orthogonality error
    /// `‖RᵀR − I‖` falls as ‖Q‖^{k+1} for odd k but ‖Q‖^{k+2} for even k: with `E = 2Σ_{i>k}Qⁱ`
    /// the leading terms of `CᵀE + EᵀC` are `2Q^{k+1} + 2(−Q)^{k+1}`, which cancel when k + 1
    /// is odd.
    #[test]
    fn cnp_error_slope_is_k_plus_one() {
        let b = 16;
        let base = params(b, 1.0, 7);
        let slope = |e1: f64, e2: f64, n1: f64, n2: f64| (e1 / e2).ln() / (n1 / n2).ln();
        for k in 1..=5 {
            let err = |s: f64| {
                let q = skew(&base.iter().map(|x| x * s).collect::<Vec<_>>(), b);
                let r = cnp(&q, b, k);
                let dist: f64 = r
                    .iter()
                    .zip(cayley_exact(&q, b))
                    .map(|(a, c)| (a - c).powi(2))
                    .sum::<f64>()
                    .sqrt();
                (spectral_norm(&q, b), dist, orthogonality_error(&r, b))
            };
            let (n1, d1, o1) = err(0.004);
            let (n2, d2, o2) = err(0.002);
            let sd = slope(d1, d2, n1, n2);
            let so = slope(o1, o2, n1, n2);
            let want_o = if k % 2 == 1 { k + 1 } else { k + 2 } as f64;
            assert!(
                (sd - (k as f64 + 1.0)).abs() < 0.15,
                "k = {k}: distance slope {sd}"
            );
            assert!(
                (so - want_o).abs() < 0.15,
                "k = {k}: orthogonality slope {so}"
            );
        }
    }
}
