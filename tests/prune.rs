//! Pruning maths on small matrices: pattern validators, hand-computed magnitude and Wanda masks,
//! and SparseGPT against the closed-form OBS step and against a direct (naive, f64, no faer)
//! transliteration of the reference algorithm.

use ortho_passes::transforms::prune_math::{
    check_nm, check_unstructured, prune_matrix, sparsegpt_hinv_upper, Pattern, PruneError,
    PruneMethod, PruneSpec,
};

fn spec(method: PruneMethod, sparsity: f64, pattern: Pattern) -> PruneSpec {
    PruneSpec::new(method, sparsity, pattern)
}

const TWO_FOUR: Pattern = Pattern::NM { n: 2, m: 4 };

#[test]
fn nm_validator_accepts_and_rejects() {
    let ok = [1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0, 4.0];
    assert!(check_nm(&ok, 1, 8, 2, 4).is_ok());
    let bad = [1.0, 0.0, 2.0, 0.0, 0.0, 5.0, 3.0, 4.0];
    let e = check_nm(&bad, 1, 8, 2, 4).unwrap_err();
    assert_eq!(
        e,
        PruneError::GroupTooDense {
            row: 0,
            start: 4,
            kept: 3,
            n: 2,
            m: 4
        }
    );
    assert!(
        e.to_string().contains("row 0, columns 4..8: 3 non-zeros"),
        "{e}"
    );
    assert!(
        matches!(check_nm(&ok, 1, 8, 2, 3), Err(PruneError::NoGroups { .. })),
        "3 does not divide 8"
    );
    // Two rows: the second row's first group breaks the pattern.
    let two = [1.0, 0.0, 2.0, 0.0, 1.0, 1.0, 1.0, 0.0];
    assert!(matches!(
        check_nm(&two, 2, 4, 2, 4),
        Err(PruneError::GroupTooDense { row: 1, .. })
    ));
}

#[test]
fn unstructured_validator() {
    let w = [0.0, 1.0, 0.0, 2.0, 3.0, 4.0];
    assert!(check_unstructured(&w, 2, 3, 0.3, false).is_ok());
    assert!(check_unstructured(&w, 2, 3, 0.5, false).is_err());
    // Per row: row 1 has no zero, so 1/3 per row fails there.
    assert!(matches!(
        check_unstructured(&w, 2, 3, 0.34, true),
        Err(PruneError::TooFewZeros { row: Some(1), .. })
    ));
}

#[test]
fn magnitude_hand_computed_masks() {
    // Per matrix: the 4 smallest |w| of 8 are 0.1, 0.5, 1, 2 (the first of the two 2s).
    let mut w = vec![1.0, -5.0, 3.0, 0.5, 2.0, 2.0, -7.0, 0.1];
    let out = prune_matrix(
        &mut w,
        2,
        4,
        None,
        &spec(PruneMethod::Magnitude, 0.5, Pattern::Unstructured),
    )
    .unwrap();
    assert_eq!(w, vec![0.0, -5.0, 3.0, 0.0, 0.0, 2.0, -7.0, 0.0]);
    assert_eq!((out.zeros, out.total), (4, 8));
    // 2:4 per row group: row 0 keeps -5, 3; row 1 keeps 2 (index 4 loses the tie to 5? no:
    // ties prune the lower index first) and -7.
    let mut w = vec![1.0, -5.0, 3.0, 0.5, 2.0, 2.0, -7.0, 0.1];
    prune_matrix(
        &mut w,
        2,
        4,
        None,
        &spec(PruneMethod::Magnitude, 0.5, TWO_FOUR),
    )
    .unwrap();
    assert_eq!(w, vec![0.0, -5.0, 3.0, 0.0, 0.0, 2.0, -7.0, 0.0]);
    check_nm(&w, 2, 4, 2, 4).unwrap();
}

#[test]
fn wanda_hand_computed_masks() {
    // Column norms √H_jj = [10, 1, 1, 0.1]: scores row 0 = [10, 5, 3, 0.05],
    // row 1 = [1, 2, 7, 1]. Per row, 2 of 4 removed.
    let h = diag(&[100.0, 1.0, 1.0, 0.01]);
    let mut w = vec![1.0, -5.0, 3.0, 0.5, 0.1, 2.0, -7.0, 10.0];
    prune_matrix(
        &mut w,
        2,
        4,
        Some(&h),
        &spec(PruneMethod::Wanda, 0.5, Pattern::Unstructured),
    )
    .unwrap();
    assert_eq!(w, vec![1.0, -5.0, 0.0, 0.0, 0.0, 2.0, -7.0, 0.0]);
    // Magnitude alone would have kept 10.0 in row 1: the activations changed the mask.
    check_unstructured(&w, 2, 4, 0.5, true).unwrap();
    // Per row, not per matrix: a 4 × 8 matrix at 25 % loses exactly 2 per row.
    let h = diag(&[1.0; 8]);
    let mut w: Vec<f64> = (0..32).map(|i| ((i * 37 % 17) as f64) - 8.5).collect();
    prune_matrix(
        &mut w,
        4,
        8,
        Some(&h),
        &spec(PruneMethod::Wanda, 0.25, Pattern::Unstructured),
    )
    .unwrap();
    for r in 0..4 {
        assert_eq!(w[r * 8..r * 8 + 8].iter().filter(|x| **x == 0.0).count(), 2);
    }
}

#[test]
fn bad_options_are_refused() {
    let mut w = vec![1.0; 6];
    for s in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
        let e = prune_matrix(
            &mut w,
            1,
            6,
            None,
            &spec(PruneMethod::Magnitude, s, Pattern::Unstructured),
        )
        .unwrap_err();
        assert!(matches!(e, PruneError::Sparsity(_)), "{e}");
    }
    let e = prune_matrix(
        &mut w,
        1,
        6,
        None,
        &spec(PruneMethod::Magnitude, 0.5, TWO_FOUR),
    )
    .unwrap_err();
    assert_eq!(
        e,
        PruneError::Width {
            n: 2,
            m: 4,
            cols: 6
        }
    );
    assert!(e.to_string().contains("divisible by 4, got 6"), "{e}");
    let e = prune_matrix(
        &mut w,
        1,
        6,
        None,
        &spec(PruneMethod::Wanda, 0.5, Pattern::Unstructured),
    )
    .unwrap_err();
    assert_eq!(e, PruneError::NeedsHessian("wanda"));
    assert!(Pattern::parse("4:2").is_err());
    assert!(Pattern::parse("0:4").is_err());
    assert!(Pattern::parse("dense").is_err());
    assert_eq!(Pattern::parse("2:4").unwrap(), TWO_FOUR);
    assert_eq!(w, vec![1.0; 6], "a refused call changes nothing");
}

fn diag(d: &[f64]) -> Vec<f64> {
    let n = d.len();
    let mut h = vec![0.0; n * n];
    for i in 0..n {
        h[i * n + i] = d[i];
    }
    h
}

/// A deterministic symmetric positive definite H = AᵀA/rows + small ridge, and weights.
fn random_problem(rows: usize, cols: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let mut s = seed;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    };
    let n = 3 * cols;
    let a: Vec<f64> = (0..n * cols).map(|_| next()).collect();
    let mut h = vec![0.0; cols * cols];
    for r in 0..n {
        for i in 0..cols {
            for j in 0..cols {
                h[i * cols + j] += 2.0 * a[r * cols + i] * a[r * cols + j] / n as f64;
            }
        }
    }
    let w: Vec<f64> = (0..rows * cols).map(|_| next()).collect();
    (w, h)
}

/// Inverse by Gauss–Jordan with partial pivoting (independent of faer).
fn inverse(a: &[f64], n: usize) -> Vec<f64> {
    let mut m = a.to_vec();
    let mut inv = diag(&vec![1.0; n]);
    for c in 0..n {
        let p = (c..n)
            .max_by(|&x, &y| m[x * n + c].abs().partial_cmp(&m[y * n + c].abs()).unwrap())
            .unwrap();
        for k in 0..n {
            m.swap(c * n + k, p * n + k);
            inv.swap(c * n + k, p * n + k);
        }
        let d = m[c * n + c];
        for k in 0..n {
            m[c * n + k] /= d;
            inv[c * n + k] /= d;
        }
        for r in 0..n {
            if r != c {
                let f = m[r * n + c];
                for k in 0..n {
                    m[r * n + k] -= f * m[c * n + k];
                    inv[r * n + k] -= f * inv[c * n + k];
                }
            }
        }
    }
    inv
}

/// Upper Cholesky factor U (A = UᵀU), naive.
fn chol_upper(a: &[f64], n: usize) -> Vec<f64> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            l[i * n + j] = if i == j {
                (a[i * n + i] - s).sqrt()
            } else {
                (a[i * n + j] - s) / l[j * n + j]
            };
        }
    }
    let mut u = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            u[i * n + j] = l[j * n + i];
        }
    }
    u
}

/// SparseGPT as in the reference PyTorch code, written out directly: the full (not lazy)
/// update of every later column after each column, block-wise mask selection.
fn reference_sparsegpt(
    w: &mut [f64],
    rows: usize,
    cols: usize,
    h: &[f64],
    sparsity: f64,
    nm: Option<(usize, usize)>,
    block: usize,
) {
    let mut hd = h.to_vec();
    let mean = (0..cols).map(|i| hd[i * cols + i]).sum::<f64>() / cols as f64;
    for i in 0..cols {
        hd[i * cols + i] += 0.01 * mean;
    }
    let u = chol_upper(&inverse(&hd, cols), cols);
    let mut mask = vec![false; rows * cols];
    for i1 in (0..cols).step_by(block) {
        let i2 = (i1 + block).min(cols);
        if nm.is_none() {
            let mut sc: Vec<(f64, usize)> = Vec::new();
            for r in 0..rows {
                for c in i1..i2 {
                    let d = u[c * cols + c];
                    sc.push((w[r * cols + c].powi(2) / (d * d), r * (i2 - i1) + (c - i1)));
                }
            }
            sc.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let k = (sc.len() as f64 * sparsity) as usize;
            for &(_, idx) in &sc[..k] {
                let (r, c) = (idx / (i2 - i1), idx % (i2 - i1) + i1);
                mask[r * cols + c] = true;
            }
        }
        for c in i1..i2 {
            if let Some((n, m)) = nm {
                if (c - i1) % m == 0 {
                    for r in 0..rows {
                        let mut sc: Vec<(f64, usize)> = (c..c + m)
                            .map(|j| {
                                let d = u[j * cols + j];
                                (w[r * cols + j].powi(2) / (d * d), j)
                            })
                            .collect();
                        sc.sort_by(|a, b| a.partial_cmp(b).unwrap());
                        for &(_, j) in &sc[..m - n] {
                            mask[r * cols + j] = true;
                        }
                    }
                }
            }
            for r in 0..rows {
                let wv = w[r * cols + c];
                let q = if mask[r * cols + c] { 0.0 } else { wv };
                let e = (wv - q) / u[c * cols + c];
                w[r * cols + c] = q;
                // The immediate update of every later column (what the lazy blocks defer).
                for j in c + 1..cols {
                    w[r * cols + j] -= e * u[c * cols + j];
                }
            }
        }
    }
}

#[test]
fn sparsegpt_one_column_is_the_closed_form_obs_step() {
    // One row, 4 inputs, 25 %: only the weight with the lowest w²/[U_jj]² goes. Column 0 has
    // by far the smallest weight, so it is pruned, and OBS moves the others by
    // δ = −(w₀ / [H⁻¹]₀₀) · H⁻¹[0, :] (H damped), the optimum of (w−w')ᵀH(w−w') with w'₀ = 0.
    let (_, h) = random_problem(1, 4, 11);
    let w0 = vec![1e-3, 0.8, -0.6, 0.9];
    let mut w = w0.clone();
    let out = prune_matrix(
        &mut w,
        1,
        4,
        Some(&h),
        &spec(PruneMethod::SparseGpt, 0.25, Pattern::Unstructured),
    )
    .unwrap();
    assert_eq!(out.zeros, 1);
    let mut hd = h.clone();
    let mean = (0..4).map(|i| hd[i * 4 + i]).sum::<f64>() / 4.0;
    for i in 0..4 {
        hd[i * 4 + i] += 0.01 * mean;
    }
    let hinv = inverse(&hd, 4);
    let f = w0[0] / hinv[0];
    let expect: Vec<f64> = (0..4).map(|j| w0[j] - f * hinv[j]).collect();
    assert!(expect[0].abs() < 1e-15);
    for j in 0..4 {
        assert!(
            (w[j] - expect[j]).abs() < 1e-12,
            "{j}: {} vs {}",
            w[j],
            expect[j]
        );
    }
}

#[test]
fn sparsegpt_matches_a_direct_implementation() {
    // Block 8 on 24 columns: three lazy blocks, so the deferred update across blocks is tested.
    for (pattern, nm) in [(Pattern::Unstructured, None), (TWO_FOUR, Some((2, 4)))] {
        let (w0, h) = random_problem(6, 24, 5);
        let mut ours = w0.clone();
        let mut s = spec(PruneMethod::SparseGpt, 0.5, pattern);
        s.block = 8;
        prune_matrix(&mut ours, 6, 24, Some(&h), &s).unwrap();
        let mut direct = w0.clone();
        reference_sparsegpt(&mut direct, 6, 24, &h, 0.5, nm, 8);
        for (i, (a, b)) in ours.iter().zip(&direct).enumerate() {
            assert!((a - b).abs() < 1e-9, "{pattern:?} [{i}]: {a} vs {b}");
            assert_eq!(*a == 0.0, *b == 0.0, "{pattern:?} [{i}]: masks differ");
        }
        if let Some((n, m)) = nm {
            check_nm(&ours, 6, 24, n, m).unwrap();
        } else {
            check_unstructured(&ours, 6, 24, 0.5, false).unwrap();
        }
        // The update lowers the layer-output error against the plain mask (same zeros).
        let err = |v: &[f64]| -> f64 {
            let mut t = 0.0;
            for r in 0..6 {
                let d: Vec<f64> = (0..24).map(|j| v[r * 24 + j] - w0[r * 24 + j]).collect();
                for i in 0..24 {
                    for j in 0..24 {
                        t += d[i] * h[i * 24 + j] * d[j];
                    }
                }
            }
            t
        };
        let masked: Vec<f64> = w0
            .iter()
            .zip(&ours)
            .map(|(w, o)| if *o == 0.0 { 0.0 } else { *w })
            .collect();
        assert!(
            err(&ours) < err(&masked),
            "{pattern:?}: OBS updates must help"
        );
    }
}

#[test]
fn sparsegpt_inverse_factor_is_upper_cholesky_of_the_damped_inverse() {
    let (_, h) = random_problem(1, 12, 3);
    let u = sparsegpt_hinv_upper(&h, 12, 0.01).unwrap();
    let mut hd = h.clone();
    let mean = (0..12).map(|i| hd[i * 12 + i]).sum::<f64>() / 12.0;
    for i in 0..12 {
        hd[i * 12 + i] += 0.01 * mean;
    }
    let hinv = inverse(&hd, 12);
    for i in 0..12 {
        for j in 0..12 {
            let utu: f64 = (0..12).map(|k| u[k * 12 + i] * u[k * 12 + j]).sum();
            assert!((utu - hinv[i * 12 + j]).abs() < 1e-10);
            if j < i {
                assert_eq!(u[i * 12 + j], 0.0);
            }
        }
    }
}

#[test]
fn wanda_from_the_diagonal_equals_wanda_from_the_full_hessian() {
    use ortho_passes::transforms::prune_math::prune_matrix_diag;
    for pattern in [Pattern::Unstructured, TWO_FOUR] {
        let (w0, h) = random_problem(5, 12, 9);
        let d: Vec<f64> = (0..12).map(|i| h[i * 12 + i]).collect();
        let s = spec(PruneMethod::Wanda, 0.5, pattern);
        let (mut a, mut b) = (w0.clone(), w0.clone());
        prune_matrix(&mut a, 5, 12, Some(&h), &s).unwrap();
        prune_matrix_diag(&mut b, 5, 12, &d, &s).unwrap();
        assert_eq!(a, b, "{pattern:?}");
        assert_ne!(a, w0);
    }
    let mut w = vec![1.0; 4];
    let s = spec(PruneMethod::SparseGpt, 0.5, Pattern::Unstructured);
    assert!(prune_matrix_diag(&mut w, 1, 4, &[1.0; 4], &s).is_err());
}
