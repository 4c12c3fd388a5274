//! Unit tests of the DenoiseRotator maths: the analytic gradient against central finite
//! differences of an independent f64 implementation of the loss, and the optimizer.

use super::loss::{Heads, Importance, LayerProblem, NmTerm};
use super::optim::{optimize, orthogonality_error, qr_backward, AdamOptions, Param, StopReason};
use crate::linalg::orthogonal::Rng;
use faer::Mat;

fn random(r: usize, c: usize, rng: &mut Rng) -> Mat<f32> {
    Mat::from_fn(r, c, |_, _| rng.normal() as f32)
}

/// A symmetric positive definite matrix `XᵀX/N + 0.1 I`.
fn spd(n: usize, rng: &mut Rng) -> Mat<f32> {
    let x = random(3 * n, n, rng);
    Mat::from_fn(n, n, |i, j| {
        let mut s = 0.0f64;
        for k in 0..3 * n {
            s += x[(k, i)] as f64 * x[(k, j)] as f64;
        }
        (s / (3 * n) as f64 + if i == j { 0.1 } else { 0.0 }) as f32
    })
}

fn problem(method: Importance, seed: u64) -> LayerProblem {
    let mut rng = Rng::new(seed);
    let heads = Heads {
        heads: 4,
        kv_heads: 2,
        head_dim: 2,
    };
    let (d, hidden) = (8, 12);
    let with_m = method != Importance::Magnitude;
    LayerProblem {
        method,
        heads,
        qk: random(8 + 4, d, &mut rng),
        v: random(4, d, &mut rng),
        o: random(d, 8, &mut rng),
        gate_up: random(2 * hidden, d, &mut rng),
        down: random(d, hidden, &mut rng),
        attn_m: with_m.then(|| spd(d, &mut rng)),
        mlp_m: with_m.then(|| spd(d, &mut rng)),
        o_m: with_m.then(|| spd(8, &mut rng)),
        nm: None,
    }
}

// ---- The independent f64 reference: explicit rotated matrices, explicit scores. ----

type M = Vec<Vec<f64>>;

fn to64(m: &Mat<f32>) -> M {
    (0..m.nrows())
        .map(|i| (0..m.ncols()).map(|j| m[(i, j)] as f64).collect())
        .collect()
}

fn mul(a: &M, b: &M) -> M {
    let (n, k, m) = (a.len(), b.len(), b[0].len());
    (0..n)
        .map(|i| {
            (0..m)
                .map(|j| (0..k).map(|t| a[i][t] * b[t][j]).sum())
                .collect()
        })
        .collect()
}

fn tr(a: &M) -> M {
    (0..a[0].len())
        .map(|j| (0..a.len()).map(|i| a[i][j]).collect())
        .collect()
}

fn entropy(s: &[f64]) -> f64 {
    let sum: f64 = s.iter().sum();
    if sum <= 0.0 {
        return 0.0;
    }
    -s.iter()
        .filter(|&&x| x > 0.0)
        .map(|&x| (x / sum) * (x / sum).ln())
        .sum::<f64>()
}

/// The N:M term's cost, written out: per row, the `m − n` smallest scores of every group of
/// `m` columns over the row's sum.
fn nm_ref(w: &M, c: &[f64], n: usize, m: usize) -> f64 {
    let mut total = 0.0;
    for row in w {
        let s: Vec<f64> = row.iter().zip(c).map(|(x, c)| x * x * c).collect();
        let sum: f64 = s.iter().sum();
        let mut removed = 0.0;
        for g in s.chunks(m) {
            let mut g = g.to_vec();
            g.sort_by(|a, b| a.total_cmp(b));
            removed += g[..m - n].iter().sum::<f64>();
        }
        total += removed / sum;
    }
    total
}

fn scores_loss(w: &M, c: &[f64], rows: bool, cols: bool) -> f64 {
    let s: M = w
        .iter()
        .map(|r| r.iter().zip(c).map(|(x, c)| x * x * c).collect())
        .collect();
    let mut l = 0.0;
    if rows {
        l += s.iter().map(|r| entropy(r)).sum::<f64>();
    }
    if cols {
        l += tr(&s).iter().map(|r| entropy(r)).sum::<f64>();
    }
    l
}

/// Column factor from `diag(Rᵀ M R)`.
fn factor(method: Importance, m: Option<&Mat<f32>>, r: &M) -> Vec<f64> {
    match (method, m) {
        (Importance::Magnitude, _) | (_, None) => vec![1.0; r[0].len()],
        (_, Some(m)) => {
            let mr = mul(&to64(m), r);
            let e: Vec<f64> = (0..r[0].len())
                .map(|b| (0..r.len()).map(|i| r[i][b] * mr[i][b]).sum())
                .collect();
            if method == Importance::SparseGpt {
                e.iter().map(|e| 1.0 / e).collect()
            } else {
                e
            }
        }
    }
}

fn block(m: &Mat<f32>, r0: usize, c0: usize, n: usize) -> Mat<f32> {
    Mat::from_fn(n, n, |i, j| m[(r0 + i, c0 + j)])
}

fn reference_loss(p: &LayerProblem, q1: &M, r2: &[M]) -> f64 {
    let hd = p.heads.head_dim;
    let ca = factor(p.method, p.attn_m.as_ref(), q1);
    let cm = factor(p.method, p.mlp_m.as_ref(), q1);
    let nm = |w: &M, c: &[f64]| p.nm.map_or(0.0, |t| t.weight * nm_ref(w, c, t.n, t.m));
    let qk = mul(&to64(&p.qk), q1);
    let mut l = scores_loss(&qk, &ca, true, false) + nm(&qk, &ca);
    // v' = Rᵀ Wv Q1 with R block diagonal.
    let kvd = p.heads.kv_heads * hd;
    let mut r = vec![vec![0.0; kvd]; kvd];
    for (j, rj) in r2.iter().enumerate() {
        for a in 0..hd {
            for b in 0..hd {
                r[j * hd + a][j * hd + b] = rj[a][b];
            }
        }
    }
    let v = mul(&tr(&r), &mul(&to64(&p.v), q1));
    l += scores_loss(&v, &ca, true, true) + nm(&v, &ca);
    let gu = mul(&to64(&p.gate_up), q1);
    l += scores_loss(&gu, &cm, true, false) + nm(&gu, &cm);
    let dc = vec![1.0; p.down.ncols()];
    l += scores_loss(&mul(&tr(q1), &to64(&p.down)), &dc, false, true);
    // o' = Q1ᵀ Wo R_rep, factor per query head from its KV head's R.
    let qd = p.heads.heads * hd;
    let mut rr = vec![vec![0.0; qd]; qd];
    let mut co = Vec::new();
    for h in 0..p.heads.heads {
        let rj = &r2[p.heads.kv_of(h)];
        for a in 0..hd {
            for b in 0..hd {
                rr[h * hd + a][h * hd + b] = rj[a][b];
            }
        }
        let mh = p.o_m.as_ref().map(|m| block(m, h * hd, h * hd, hd));
        co.extend(factor(p.method, mh.as_ref(), rj));
    }
    let o = mul(&mul(&tr(q1), &to64(&p.o)), &rr);
    l += scores_loss(&o, &co, true, true) + nm(&o, &co);
    l
}

fn near_identity(n: usize, rng: &mut Rng) -> M {
    (0..n)
        .map(|i| {
            (0..n)
                .map(|j| (if i == j { 1.0 } else { 0.0 }) + 0.2 * rng.normal())
                .collect()
        })
        .collect()
}

fn to32(m: &M) -> Mat<f32> {
    Mat::from_fn(m.len(), m[0].len(), |i, j| m[i][j] as f32)
}

#[test]
fn gradient_matches_finite_differences() {
    // The last two add the N:M term (2:4, weighted so that it is not negligible).
    for (method, seed, nm) in [
        (Importance::Magnitude, 1, false),
        (Importance::Wanda, 2, false),
        (Importance::SparseGpt, 3, false),
        (Importance::Wanda, 4, true),
        (Importance::SparseGpt, 5, true),
    ] {
        let mut p = problem(method, seed);
        if nm {
            p.nm = Some(NmTerm {
                n: 2,
                m: 4,
                weight: 20.0,
            });
        }
        let mut rng = Rng::new(seed + 100);
        let q1 = near_identity(8, &mut rng);
        let r2: Vec<M> = (0..2).map(|_| near_identity(2, &mut rng)).collect();
        let mut gq = Mat::<f32>::zeros(8, 8);
        let mut gr: Vec<Mat<f32>> = (0..2).map(|_| Mat::zeros(2, 2)).collect();
        let r2_32: Vec<Mat<f32>> = r2.iter().map(to32).collect();
        let parts = p.loss_grad(to32(&q1).as_ref(), &r2_32, &mut gq, &mut gr);
        let reference = reference_loss(&p, &q1, &r2);
        assert!(
            (parts.total() - reference).abs() <= 1e-4 * reference.abs(),
            "{method:?}: loss {} vs reference {reference}",
            parts.total()
        );
        // Central differences in f64 over every entry of Q1 and of each R2_j.
        let h = 1e-6;
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for i in 0..8 {
            for j in 0..8 {
                let (mut a, mut b) = (q1.clone(), q1.clone());
                a[i][j] += h;
                b[i][j] -= h;
                let fd = (reference_loss(&p, &a, &r2) - reference_loss(&p, &b, &r2)) / (2.0 * h);
                num += (fd - gq[(i, j)] as f64).powi(2);
                den += fd * fd;
            }
        }
        for k in 0..2 {
            for i in 0..2 {
                for j in 0..2 {
                    let (mut a, mut b) = (r2.clone(), r2.clone());
                    a[k][i][j] += h;
                    b[k][i][j] -= h;
                    let fd =
                        (reference_loss(&p, &q1, &a) - reference_loss(&p, &q1, &b)) / (2.0 * h);
                    num += (fd - gr[k][(i, j)] as f64).powi(2);
                    den += fd * fd;
                }
            }
        }
        let rel = (num / den).sqrt();
        assert!(rel < 1e-3, "{method:?}: relative gradient error {rel:.3e}");
    }
}

/// `grouped_entropy` alone, on a wide matrix: its loss equals the f64 reference and its
/// gradients in `w` and in the column factor `c` match central differences, for every grouping.
#[test]
fn grouped_entropy_over_several_chunks_matches_the_reference() {
    use super::loss::{grouped_entropy, Groups};
    let mut rng = Rng::new(11);
    for (groups, rows, cols) in [
        (Groups::Rows, true, false),
        (Groups::Cols, false, true),
        (Groups::Both, true, true),
    ] {
        let (n, m) = (6, 75);
        let w = random(n, m, &mut rng);
        let c: Vec<f32> = (0..m).map(|_| 0.5 + rng.normal().abs() as f32).collect();
        let c64: Vec<f64> = c.iter().map(|&x| x as f64).collect();
        let mut gw = Mat::<f32>::zeros(0, 0);
        let mut gc = vec![0.0f64; m];
        let loss = grouped_entropy(w.as_ref(), Some(&c), groups, &mut gw, Some(&mut gc));
        let w64 = to64(&w);
        let reference = scores_loss(&w64, &c64, rows, cols);
        assert!(
            (loss - reference).abs() <= 1e-5 * reference.abs(),
            "{groups:?}: loss {loss} vs reference {reference}"
        );
        let h = 1e-6;
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for i in 0..n {
            for j in 0..m {
                let (mut a, mut b) = (w64.clone(), w64.clone());
                a[i][j] += h;
                b[i][j] -= h;
                let fd = (scores_loss(&a, &c64, rows, cols) - scores_loss(&b, &c64, rows, cols))
                    / (2.0 * h);
                num += (fd - gw[(i, j)] as f64).powi(2);
                den += fd * fd;
            }
        }
        for j in 0..m {
            let (mut a, mut b) = (c64.clone(), c64.clone());
            a[j] += h;
            b[j] -= h;
            let fd =
                (scores_loss(&w64, &a, rows, cols) - scores_loss(&w64, &b, rows, cols)) / (2.0 * h);
            num += (fd - gc[j]).powi(2);
            den += fd * fd;
        }
        let rel = (num / den).sqrt();
        assert!(rel < 1e-3, "{groups:?}: relative gradient error {rel:.3e}");
    }
}

/// The objective the pass optimizes: blocks `[Q1, R2_0, …]`.
fn objective(p: &LayerProblem) -> impl FnMut(&[Mat<f32>], &mut [Mat<f32>]) -> f64 + '_ {
    move |qs, gs| {
        let (gq, gr) = gs.split_at_mut(1);
        p.loss_grad(qs[0].as_ref(), &qs[1..], &mut gq[0], gr)
            .total()
    }
}

/// Re-evaluating the returned blocks gives the reported best loss (they are the best iterate).
fn assert_best_reevaluates(
    f: &mut impl FnMut(&[Mat<f32>], &mut [Mat<f32>]) -> f64,
    r: &super::optim::Optimized,
) {
    let qs32: Vec<Mat<f32>> =
        r.qs.iter()
            .map(|q| Mat::from_fn(q.nrows(), q.ncols(), |i, j| q[(i, j)] as f32))
            .collect();
    let mut gs: Vec<Mat<f32>> =
        r.qs.iter()
            .map(|q| Mat::zeros(q.nrows(), q.ncols()))
            .collect();
    let again = f(&qs32, &mut gs);
    assert!((again - r.best).abs() <= 1e-9 * r.best.abs().max(1.0));
}

#[test]
fn optimizer_decreases_the_loss_and_stays_orthogonal() {
    for method in [
        Importance::Magnitude,
        Importance::Wanda,
        Importance::SparseGpt,
    ] {
        let p = problem(method, 7);
        let opts = AdamOptions {
            iters: 200,
            ..Default::default()
        };
        let mut f = objective(&p);
        let r = optimize(&[8, 2, 2], &opts, &mut f);
        assert_eq!(r.stop, StopReason::Iterations);
        assert_eq!(r.evaluations, 201);
        assert!(
            r.best < r.initial * 0.98,
            "{method:?}: {} → {}",
            r.initial,
            r.best
        );
        assert!(r.best_iter > 0);
        for q in &r.qs {
            assert!(orthogonality_error(q) < 1e-12);
        }
        // The returned blocks are the best iterate: re-evaluating them gives the best loss.
        assert_best_reevaluates(&mut f, &r);
    }
}

/// `∂L/∂A` of `Q = qf(A)` against central differences of `L(A) = ⟨C, qf(A)⟩` (a linear
/// function of Q, so the only error is the differences' own).
#[test]
fn qr_parameter_gradient_matches_finite_differences() {
    let mut rng = Rng::new(21);
    let n = 6;
    let a = Mat::<f64>::from_fn(n, n, |i, j| {
        (if i == j { 1.0 } else { 0.0 }) + 0.3 * rng.normal()
    });
    let c = Mat::<f64>::from_fn(n, n, |_, _| rng.normal());
    let qf = |a: &Mat<f64>| {
        let f = a.qr();
        let (mut q, r) = (f.compute_Q(), f.R().to_owned());
        for k in 0..n {
            if r[(k, k)] < 0.0 {
                for i in 0..n {
                    q[(i, k)] = -q[(i, k)];
                }
            }
        }
        (q, r)
    };
    let loss = |a: &Mat<f64>| {
        let q = qf(a).0;
        let mut s = 0.0;
        for j in 0..n {
            for i in 0..n {
                s += c[(i, j)] * q[(i, j)];
            }
        }
        s
    };
    let (q, mut r) = qf(&a);
    for k in 0..n {
        if r[(k, k)] < 0.0 {
            for j in 0..n {
                r[(k, j)] = -r[(k, j)];
            }
        }
    }
    let g = qr_backward(&q, &r, &c);
    let h = 1e-6;
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for j in 0..n {
        for i in 0..n {
            let (mut p, mut m) = (a.clone(), a.clone());
            p[(i, j)] += h;
            m[(i, j)] -= h;
            let fd = (loss(&p) - loss(&m)) / (2.0 * h);
            num += (fd - g[(i, j)]).powi(2);
            den += fd * fd;
        }
    }
    let rel = (num / den).sqrt();
    assert!(rel < 1e-7, "relative error {rel}");
}

#[test]
fn qr_parameterization_decreases_the_loss_and_stays_orthogonal() {
    let p = problem(Importance::SparseGpt, 7);
    let opts = AdamOptions {
        iters: 200,
        param: Param::Qr,
        ..Default::default()
    };
    let mut f = objective(&p);
    let r = optimize(&[8, 2, 2], &opts, &mut f);
    assert_eq!(r.stop, StopReason::Iterations);
    assert!(r.best < r.initial * 0.98, "{} → {}", r.initial, r.best);
    for q in &r.qs {
        assert!(orthogonality_error(q) < 1e-12);
    }
    assert_best_reevaluates(&mut f, &r);
}

#[test]
fn zero_iterations_return_the_exact_identity() {
    let p = problem(Importance::Wanda, 9);
    let mut f = objective(&p);
    let r = optimize(
        &[8, 2, 2],
        &AdamOptions {
            iters: 0,
            ..Default::default()
        },
        &mut f,
    );
    assert_eq!(r.evaluations, 1);
    assert_eq!(r.best, r.initial);
    for q in &r.qs {
        for i in 0..q.nrows() {
            for j in 0..q.ncols() {
                assert_eq!(q[(i, j)], if i == j { 1.0 } else { 0.0 });
            }
        }
    }
}

#[test]
fn a_non_finite_objective_keeps_the_best_finite_iterate() {
    let p = problem(Importance::Magnitude, 11);
    let mut calls = 0;
    let mut inner = objective(&p);
    let mut f = |qs: &[Mat<f32>], gs: &mut [Mat<f32>]| {
        calls += 1;
        if calls > 3 {
            f64::NAN
        } else {
            inner(qs, gs)
        }
    };
    let r = optimize(&[8, 2, 2], &AdamOptions::default(), &mut f);
    assert_eq!(r.stop, StopReason::NonFinite);
    assert_eq!(r.evaluations, 4);
    assert!(r.best.is_finite() && r.best <= r.initial);
}

/// Seconds per objective evaluation at SmolLM2-135M's layer size (for sizing the default
/// iteration count; run by hand with `--ignored --nocapture`).
#[test]
#[ignore]
fn time_one_evaluation_at_smollm2_size() {
    let mut rng = Rng::new(1);
    let (d, hidden, heads) = (
        576,
        1536,
        Heads {
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
        },
    );
    let p = LayerProblem {
        method: Importance::SparseGpt,
        heads,
        qk: random(576 + 192, d, &mut rng),
        v: random(192, d, &mut rng),
        o: random(d, 576, &mut rng),
        gate_up: random(2 * hidden, d, &mut rng),
        down: random(d, hidden, &mut rng),
        attn_m: Some(spd(d, &mut rng)),
        mlp_m: Some(spd(d, &mut rng)),
        o_m: Some(spd(576, &mut rng)),
        nm: None,
    };
    let mut f = objective(&p);
    let t = std::time::Instant::now();
    let r = optimize(
        &[576, 64, 64, 64],
        &AdamOptions {
            iters: 4,
            ..Default::default()
        },
        &mut f,
    );
    eprintln!(
        "{} evaluations in {:.2} s ({} → {})",
        r.evaluations,
        t.elapsed().as_secs_f64(),
        r.initial,
        r.best
    );
}

/// The 2:4 channel permutation is a permutation of the stream and of each KV head's positions,
/// leaves the entropy objective unchanged (it is blind to the order of channels — the reason
/// the permutation is searched separately), and never raises the proxy cost it minimizes.
#[test]
fn nm_permutation_keeps_the_objective_and_lowers_the_proxy() {
    use super::permute::permute_columns;
    let mut rng = Rng::new(5);
    let heads = Heads {
        heads: 4,
        kv_heads: 2,
        head_dim: 4,
    };
    let (d, hidden) = (16, 24);
    // Heavy channels side by side (columns 0..4 scaled up), as a rotation that concentrates
    // importance may leave them.
    let mut heavy = |r: usize, c: usize| {
        let mut m = random(r, c, &mut rng);
        for i in 0..r {
            for j in 0..4.min(c) {
                m[(i, j)] *= 6.0;
            }
        }
        m
    };
    let p = LayerProblem {
        method: Importance::SparseGpt,
        heads,
        qk: heavy(16 + 8, d),
        v: heavy(8, d),
        o: heavy(d, 16),
        gate_up: heavy(2 * hidden, d),
        down: heavy(d, hidden),
        attn_m: Some(spd(d, &mut rng)),
        mlp_m: Some(spd(d, &mut rng)),
        o_m: Some(spd(16, &mut rng)),
        nm: None,
    };
    let q1 = Mat::<f64>::identity(d, d);
    let r2 = vec![Mat::<f64>::identity(4, 4); 2];
    let f32s = |q: &Mat<f64>| Mat::<f32>::from_fn(q.nrows(), q.ncols(), |i, j| q[(i, j)] as f32);
    let r2_32: Vec<Mat<f32>> = r2.iter().map(f32s).collect();
    let perm = p.nm_permutation(f32s(&q1).as_ref(), &r2_32, 2, 4, 4);
    let is_perm = |v: &[usize]| {
        let mut s = v.to_vec();
        s.sort();
        s == (0..v.len()).collect::<Vec<_>>()
    };
    assert!(is_perm(&perm.stream) && perm.heads.iter().all(|h| is_perm(h)));
    assert!(
        perm.stream_cost.1 < 0.9 * perm.stream_cost.0,
        "stream proxy {:?}",
        perm.stream_cost
    );
    assert!(perm.head_cost.1 <= perm.head_cost.0);
    let loss = |q1: &Mat<f64>, r2: &[Mat<f64>]| {
        let r2_32: Vec<Mat<f32>> = r2.iter().map(f32s).collect();
        let mut g1 = Mat::zeros(d, d);
        let mut g2: Vec<Mat<f32>> = vec![Mat::zeros(4, 4); 2];
        p.loss_grad(f32s(q1).as_ref(), &r2_32, &mut g1, &mut g2)
            .total()
    };
    let q1p = permute_columns(&q1, &perm.stream);
    let r2p: Vec<Mat<f64>> = r2
        .iter()
        .zip(&perm.heads)
        .map(|(r, h)| permute_columns(r, h))
        .collect();
    assert!(orthogonality_error(&q1p) < 1e-15);
    let (a, b) = (loss(&q1, &r2), loss(&q1p, &r2p));
    assert!(
        (a - b).abs() <= 1e-5 * a.abs(),
        "entropy {a} vs {b} after the permutation"
    );
}

/// Seconds of one QR-parameterized step's linear algebra at SmolLM2's width (run by hand with
/// `--ignored --nocapture`).
#[test]
#[ignore]
fn time_qr_step_at_smollm2_size() {
    let mut rng = Rng::new(2);
    let n = 576;
    let a = Mat::<f64>::from_fn(n, n, |i, j| {
        (if i == j { 1.0 } else { 0.0 }) + 0.01 * rng.normal()
    });
    let g = Mat::<f64>::from_fn(n, n, |_, _| rng.normal());
    let t = std::time::Instant::now();
    let f = a.qr();
    let t_qr = t.elapsed().as_secs_f64();
    let q = f.compute_Q();
    let t_q = t.elapsed().as_secs_f64();
    let r = f.R().to_owned();
    let _ = qr_backward(&q, &r, &g);
    eprintln!(
        "qr {:.3} s, Q {:.3} s, backward {:.3} s",
        t_qr,
        t_q - t_qr,
        t.elapsed().as_secs_f64() - t_q
    );
}
