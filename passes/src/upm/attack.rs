//! The joint-basis attack on a UPM boundary transform (issue 20, use (b); ALGORITHMS.md §6.3.4):
//! an attacker holding two epochs A, B of one shard estimates the epoch change `R` (the stream
//! basis moves as `x_B = x_A R`) from a basis each epoch determines on its own, and bounds the
//! recovery error from observable quantities only.
//!
//! # Statistic
//! Every constant of the shard read along the stream axis (readers q/k/v/gate/up and the head:
//! `W ← RᵀW`; writers o/down and the embedding: `W ← W R`) is a stack of row vectors `X`
//! (others × d) with `X_B = X_A R`. Their Gram `G = Σ XᵀX` (d × d, f64) therefore satisfies
//! `G_B = Rᵀ G_A R + E`: the only difference is the rounding `E` of epoch B's weights (a re-key
//! composes `R` into the stored epoch-A weights in f64 and casts each weight once). The
//! per-linear Grams of different readers do not commute, so they share no exact joint basis
//! and the certificate of `linalg::joint_basis` would not apply to them; `G` alone is the set
//! (N = 1) whose exact basis exists. Each epoch's basis `U` is `joint_basis` of `{G}`
//! (eigenbasis polished by Jacobi sweeps), and `R̂ = U_A S U_Bᵀ` with `S` the signed
//! permutation that matches the eigenvalues in sorted order and the signs by the weights
//! (`s_i = sign⟨X_A u_A,σ(i), X_B u_B,i⟩`, which is `+1` for the exact pair).
//!
//! # Noise (a bound, not an estimate)
//! Rounding to nearest with unit roundoff `u` (f32: 2⁻²⁴) gives `|x − x̃| ≤ u|x| ≤ u/(1−u)·|x̃|`
//! per stored entry `x̃`, so `‖Δ‖_F ≤ u/(1−u)·‖X_B‖_F` for the rounding `Δ` of epoch B, and
//! `E = X_BᵀΔ + ΔᵀX_B − ΔᵀΔ` has `‖E‖₂ ≤ 2‖X_B‖₂‖Δ‖_F + ‖Δ‖²_F`. Epoch A is taken as exact (it
//! is what the re-key started from). Both epochs add the f64 accumulation of `G`
//! (`|fl(XᵀX) − XᵀX| ≤ γ_k |X|ᵀ|X|` entrywise, k rows, so at most `γ_k ‖X‖²_F` in norm).
//!
//! # Certificates
//! - whole basis: `linalg::joint_basis`'s first-order bound for each epoch (σ_min by the Weyl
//!   bound at d > 96: the smallest eigengap), `‖R̂ − R‖_F ≤ bound_A + bound_B` when both are
//!   certified (`R̂ − R = (U_A − U_A,o) S U_Bᵀ + U_A,o S (U_B − U_B,o)ᵀ`);
//! - per direction (rigorous, not first order; Davis–Kahan): with `T = UᵀGU = Λ̂ + O`,
//!   `ρ_i = ‖G u_i − λ̂_i u_i‖` and `Δ = ‖O‖_F + η` (η the noise bound), the sorted eigenvalues of
//!   the noise-free matrix lie within `Δ` of the sorted `λ̂` (Weyl twice), so every one but the
//!   i-th is at least `δ_i = ĝ_i − Δ` from `λ̂_i` (`ĝ_i` the gap of `λ̂_i` to the others), and
//!   `sin∠(u_i, u_i,o) ≤ (ρ_i + η)/δ_i` (expand `u_i` in the noise-free eigenvectors:
//!   `‖(G_o − λ̂_i)u_i‖ ≥ δ_i sin∠`). With matched signs `‖u_i − u_i,o‖ = √(2 − 2cos∠)`. A direction
//!   is *identified* when `ĝ_i > 2Δ` and the sine bound is at most `max_bound`; otherwise it is
//!   inside a near-degenerate cluster and `R` restricted to it is not identified by `G`.
//!   For an identified column i of U_B: `(R̂ − R) u_B,i = s_i(u_A,σ(i) − u_A,o) − R(u_B,i − u_B,o)`,
//!   so its error is at most the sum of the two direction bounds.

use crate::linalg::joint_basis::{
    joint_basis, JointBasis, JointBasisError, JointOptions, JointProblem, Structure,
};
use crate::linalg::weights;
use crate::pass::PassError;
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use ortho_ir::analysis::analyze_gauge;
use ortho_ir::{DType, Module, NodeId, TensorId};

/// The dense f64 matrix type of the inputs and results (faer's), named so that callers
/// without a faer dependency (the example) can spell it.
pub type Matrix = Mat<f64>;

/// Options of [`attack`].
#[derive(Debug, Clone)]
pub struct AttackOptions {
    /// Unit roundoff of epoch B's storage dtype (f32: 2⁻²⁴).
    pub unit_roundoff: f64,
    /// A direction is identified when its sine bound is at most this (and the whole-basis
    /// regime uses the same value).
    pub max_bound: f64,
    /// Jacobi sweeps after the eigendecomposition.
    pub sweeps: usize,
}

impl Default for AttackOptions {
    fn default() -> AttackOptions {
        AttackOptions {
            unit_roundoff: f64::powi(2.0, -24),
            max_bound: 0.1,
            sweeps: 2,
        }
    }
}

/// Typed errors of [`attack`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AttackError {
    #[error("no stream constants given")]
    Empty,
    #[error("epoch A has {a} stream constants, epoch B {b}")]
    Count { a: usize, b: usize },
    #[error("stream constant {index}: epoch A is {a:?}, epoch B {b:?} (rows × d)")]
    Shape {
        index: usize,
        a: (usize, usize),
        b: (usize, usize),
    },
    #[error("the stream widths differ: {a} and {b}")]
    Width { a: usize, b: usize },
    #[error(transparent)]
    Basis(#[from] JointBasisError),
}

/// One epoch's basis and its certificates.
#[derive(Debug, Clone)]
pub struct EpochBasis {
    /// `joint_basis` of `{G}` with its whole-basis certificate.
    pub basis: JointBasis,
    /// The bound η on `‖E‖₂` used (rounding + accumulation; see the module doc).
    pub noise: f64,
    /// Per column of `basis.u`: the bound on `‖u_i − u_i,o‖` when the direction is identified.
    pub direction_bounds: Vec<Option<f64>>,
    /// Per column: its eigenvalue gap to the others, `ĝ_i`.
    pub gaps: Vec<f64>,
}

/// What [`attack`] found.
#[derive(Debug, Clone)]
pub struct AttackReport {
    pub d: usize,
    /// Row vectors in the statistic (sum over the stream constants).
    pub rows: usize,
    pub a: EpochBasis,
    pub b: EpochBasis,
    /// Column i of `U_B` is matched to column `perm[i]` of `U_A` with sign `signs[i]`.
    pub perm: Vec<usize>,
    pub signs: Vec<f64>,
    /// `R̂ = U_A S U_Bᵀ`.
    pub r_hat: Mat<f64>,
    /// Per column of `U_B`: the certified bound on `‖(R̂ − R) u_B,i‖` (both directions identified).
    pub column_bounds: Vec<Option<f64>>,
    /// `bound_A + bound_B` when both whole-basis certificates hold.
    pub whole_bound: Option<f64>,
    /// Mean variance `ulp²/12` of epoch B's rounding errors over its stream constants (the
    /// independent-rounding model of [`AttackReport::predicted_column_errors`]).
    pub rounding_variance: f64,
}

impl AttackReport {
    /// Columns of `U_B` whose recovery is certified.
    pub fn identified(&self) -> Vec<usize> {
        (0..self.d)
            .filter(|&i| self.column_bounds[i].is_some())
            .collect()
    }

    /// `√Σ bound_i²` over the identified columns: the certified error of `R̂` restricted to the
    /// identified subspace, `‖(R̂ − R) U_B,I‖_F`.
    pub fn identified_bound(&self) -> f64 {
        self.column_bounds
            .iter()
            .flatten()
            .map(|b| b * b)
            .sum::<f64>()
            .sqrt()
    }

    /// An estimate, not a bound: the expected `‖(R̂ − R) u_B,i‖` if epoch B's rounding errors
    /// were independent, zero-mean, of the mean variance σ² (round to nearest: `ulp²/12`).
    /// First order, `δu_i = Σ_j u_j E_ji/(λ_i − λ_j)` with `E_ji = (Xu_j)ᵀΔu_i + (Xu_i)ᵀΔu_j`, whose
    /// variance is `σ²(λ_i + λ_j)`; so `E‖δu_i‖² = σ² Σ_j (λ_i + λ_j)/(λ_i − λ_j)²`.
    pub fn predicted_column_errors(&self) -> Vec<f64> {
        let lam = &self.b.basis.diagonals[0];
        (0..self.d)
            .map(|i| {
                let s: f64 = (0..self.d)
                    .filter(|&j| j != i)
                    .map(|j| (lam[i] + lam[j]).abs() / (lam[i] - lam[j]).powi(2))
                    .sum();
                (self.rounding_variance * s).sqrt()
            })
            .collect()
    }

    /// Measured errors against a known `R`: per column `‖(R̂ − R) u_B,i‖`.
    pub fn column_errors(&self, r: &Mat<f64>) -> Vec<f64> {
        let diff = &self.r_hat - r;
        let e = &diff * &self.b.basis.u;
        (0..self.d).map(|i| e.col(i).norm_l2()).collect()
    }
}

/// `G = Σ XᵀX` in f64 and the accumulation bound `γ_k‖X‖²_F` summed over the constants.
fn gram(xs: &[Mat<f64>]) -> (Mat<f64>, f64, f64) {
    let d = xs[0].ncols();
    let mut g = Mat::<f64>::zeros(d, d);
    let (mut frob2, mut rows) = (0.0, 0usize);
    for x in xs {
        matmul(
            g.as_mut(),
            Accum::Add,
            x.transpose(),
            x.as_ref(),
            1.0,
            Par::rayon(0),
        );
        frob2 += x.squared_norm_l2();
        rows += x.nrows();
    }
    let u64_ = f64::EPSILON / 2.0;
    // Every entry sums `rows` products, plus one addition per constant into g.
    let k = (rows + xs.len()) as f64;
    let gamma = k * u64_ / (1.0 - k * u64_);
    (g, gamma * frob2, frob2)
}

/// The epoch's basis and its per-direction bounds (module doc).
fn epoch(g: &Mat<f64>, noise: f64, opts: &AttackOptions) -> Result<EpochBasis, AttackError> {
    let d = g.nrows();
    let jopts = JointOptions {
        structure: Structure::Symmetric,
        max_sweeps: opts.sweeps,
        max_bound: opts.max_bound,
        ..JointOptions::default()
    };
    let basis = joint_basis(&JointProblem::new(vec![g.clone()], noise), &jopts)?;
    let u = &basis.u;
    let gu = g * u;
    let t = u.transpose() * &gu;
    let lam: Vec<f64> = (0..d).map(|i| t[(i, i)]).collect();
    let mut off2 = 0.0;
    for j in 0..d {
        for i in 0..d {
            if i != j {
                off2 += t[(i, j)] * t[(i, j)];
            }
        }
    }
    let big_delta = off2.sqrt() + noise;
    // Gaps to the nearest other eigenvalue, from the sorted order.
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| lam[a].total_cmp(&lam[b]));
    let mut gaps = vec![f64::INFINITY; d];
    for w in 0..d {
        let i = order[w];
        if w > 0 {
            gaps[i] = gaps[i].min(lam[i] - lam[order[w - 1]]);
        }
        if w + 1 < d {
            gaps[i] = gaps[i].min(lam[order[w + 1]] - lam[i]);
        }
    }
    let direction_bounds = (0..d)
        .map(|i| {
            let rho = (0..d)
                .map(|k| (gu[(k, i)] - lam[i] * u[(k, i)]).powi(2))
                .sum::<f64>()
                .sqrt();
            let delta = gaps[i] - big_delta;
            if gaps[i] <= 2.0 * big_delta || delta <= 0.0 {
                return None;
            }
            let s = (rho + noise) / delta;
            (s <= opts.max_bound).then(|| (2.0 - 2.0 * (1.0 - s * s).sqrt()).max(0.0).sqrt())
        })
        .collect();
    Ok(EpochBasis {
        basis,
        noise,
        direction_bounds,
        gaps,
    })
}

/// Estimate the epoch change from the stream constants of epoch A (`xa`) and B (`xb`), each a
/// list of `others × d` row stacks in the same order, and certify it (module doc).
pub fn attack(
    xa: &[Mat<f64>],
    xb: &[Mat<f64>],
    opts: &AttackOptions,
) -> Result<AttackReport, AttackError> {
    if xa.is_empty() {
        return Err(AttackError::Empty);
    }
    if xa.len() != xb.len() {
        return Err(AttackError::Count {
            a: xa.len(),
            b: xb.len(),
        });
    }
    let d = xa[0].ncols();
    for (index, (a, b)) in xa.iter().zip(xb).enumerate() {
        if a.ncols() != d || b.ncols() != d {
            return Err(AttackError::Width {
                a: a.ncols(),
                b: b.ncols(),
            });
        }
        if a.nrows() != b.nrows() {
            return Err(AttackError::Shape {
                index,
                a: (a.nrows(), a.ncols()),
                b: (b.nrows(), b.ncols()),
            });
        }
    }
    let (ga, acc_a, _) = gram(xa);
    let (gb, acc_b, frob2_b) = gram(xb);
    // Rounding of epoch B: ‖Δ‖_F ≤ u/(1−u)·‖X_B‖_F, ‖E‖₂ ≤ 2‖X_B‖₂‖Δ‖_F + ‖Δ‖²_F, with
    // ‖X_B‖₂² = λ_max(G_B) ≤ ‖G_B‖_F (a cheap upper bound).
    let u = opts.unit_roundoff;
    let delta_f = u / (1.0 - u) * frob2_b.sqrt();
    let x2 = gb.norm_l2().sqrt();
    let eta_b = 2.0 * x2 * delta_f + delta_f * delta_f + acc_b;
    let a = epoch(&ga, acc_a, opts)?;
    let b = epoch(&gb, eta_b, opts)?;
    let sorted = |e: &EpochBasis| {
        let lam = &e.basis.diagonals[0];
        let mut o: Vec<usize> = (0..d).collect();
        o.sort_by(|&x, &y| lam[x].total_cmp(&lam[y]));
        o
    };
    let (oa, ob) = (sorted(&a), sorted(&b));
    let mut perm = vec![0; d];
    for w in 0..d {
        perm[ob[w]] = oa[w];
    }
    // Signs from the weights: ⟨X_A u_A,σ(i), X_B u_B,i⟩ summed over the constants.
    let mut signs = vec![1.0; d];
    {
        let mut dot = vec![0.0; d];
        for (x, y) in xa.iter().zip(xb) {
            let pa = x * &a.basis.u;
            let pb = y * &b.basis.u;
            for (i, v) in dot.iter_mut().enumerate() {
                let (ca, cb) = (pa.col(perm[i]), pb.col(i));
                *v += (0..x.nrows()).map(|k| ca[k] * cb[k]).sum::<f64>();
            }
        }
        for (s, v) in signs.iter_mut().zip(&dot) {
            if *v < 0.0 {
                *s = -1.0;
            }
        }
    }
    let ua_s = Mat::from_fn(d, d, |r, i| a.basis.u[(r, perm[i])] * signs[i]);
    let r_hat = &ua_s * b.basis.u.transpose();
    let column_bounds = (0..d)
        .map(
            |i| match (a.direction_bounds[perm[i]], b.direction_bounds[i]) {
                (Some(x), Some(y)) => Some(x + y),
                _ => None,
            },
        )
        .collect();
    let certified = |e: &EpochBasis| {
        (e.basis.regime == crate::linalg::joint_basis::Regime::Certified).then_some(e.basis.bound)
    };
    let whole_bound = match (certified(&a), certified(&b)) {
        (Some(x), Some(y)) => Some(x + y),
        _ => None,
    };
    let rows = xa.iter().map(Mat::nrows).sum();
    // ulp(x) = 2u·2^⌊log₂|x|⌋ for a stored x (u the unit roundoff).
    let (mut var, mut count) = (0.0, 0usize);
    for x in xb {
        for j in 0..x.ncols() {
            for i in 0..x.nrows() {
                let v = x[(i, j)].abs();
                if v > 0.0 {
                    let ulp = 2.0 * u * v.log2().floor().exp2();
                    var += ulp * ulp / 12.0;
                }
                count += 1;
            }
        }
    }
    let rounding_variance = var / count.max(1) as f64;
    Ok(AttackReport {
        d,
        rows,
        a,
        b,
        perm,
        signs,
        r_hat,
        column_bounds,
        whole_bound,
        rounding_variance,
    })
}

/// The orthogonal Procrustes fit `argmin_R ‖X_A R − X_B‖_F` over all constants (`U Vᵀ` from the
/// SVD of `Σ X_Aᵀ X_B`): the transform a plaintext/ciphertext attacker gets, used as the
/// reference when the seed is not known.
pub fn procrustes(xa: &[Mat<f64>], xb: &[Mat<f64>]) -> Result<Mat<f64>, AttackError> {
    let d = xa.first().ok_or(AttackError::Empty)?.ncols();
    let mut c = Mat::<f64>::zeros(d, d);
    for (a, b) in xa.iter().zip(xb) {
        matmul(
            c.as_mut(),
            Accum::Add,
            a.transpose(),
            b.as_ref(),
            1.0,
            Par::rayon(0),
        );
    }
    let svd = c
        .svd()
        .map_err(|_| AttackError::Basis(JointBasisError::Decomposition("SVD of Σ X_Aᵀ X_B")))?;
    Ok(svd.U() * svd.V().transpose())
}

/// The stream constants of a shard, as `others × d` row stacks in graph-analysis order (the
/// same order in every epoch of the shard, which keeps one graph), with the unit roundoff of
/// the coarsest storage dtype among them. Constants read along the stream on two axes (the
/// entry matrix of a per-shard placement) are left out: they do not move by `R` alone.
pub fn stream_constants(m: &Module) -> Result<(Vec<Mat<f64>>, f64), PassError> {
    let gid = m.main;
    let gauge = analyze_gauge(m, gid);
    let chain = gauge.chain();
    if chain.is_empty() {
        return Err(PassError::new("no residual stream found in the shard").in_graph(gid));
    }
    let mut axes: Vec<(TensorId, NodeId, Vec<usize>)> = Vec::new();
    for &c in &chain {
        for s in &gauge.classes[c].sites {
            match axes.iter_mut().find(|(t, _, _)| *t == s.tensor) {
                Some((_, _, a)) if !a.contains(&s.axis) => a.push(s.axis),
                Some(_) => {}
                None => axes.push((s.tensor, s.konst, vec![s.axis])),
            }
        }
    }
    let mut out = Vec::new();
    let mut u: f64 = 0.0;
    for (tid, konst, a) in axes {
        let [axis] = a[..] else { continue };
        let t = m.tensor(tid);
        let [r, c] = t.dims[..] else { continue };
        let (r, c) = (r as usize, c as usize);
        let v = weights::decode(t).map_err(|e| PassError::at_main(m, konst, e.to_string()))?;
        u = u.max(match t.dtype {
            DType::F64 => f64::EPSILON / 2.0,
            DType::F16 => f64::powi(2.0, -11),
            DType::BF16 => f64::powi(2.0, -8),
            _ => f64::powi(2.0, -24),
        });
        out.push(if axis == 1 {
            Mat::from_fn(r, c, |i, j| v[i * c + j])
        } else {
            Mat::from_fn(c, r, |i, j| v[j * c + i])
        });
    }
    if out.is_empty() {
        return Err(PassError::new("the shard's stream has no matrix constants").in_graph(gid));
    }
    Ok((out, u))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::orthogonal::{haar, Rng};

    /// A synthetic shard: constants with spread row scales, epoch B = f32(epoch A · R).
    fn shard(d: usize, rng: &mut Rng) -> (Vec<Mat<f64>>, Vec<Mat<f64>>, Mat<f64>) {
        let r = haar(d, rng);
        let scales: Vec<f64> = (0..d).map(|j| 0.2 + 2.0 * (j as f64 / d as f64)).collect();
        let mut xa = Vec::new();
        for rows in [3 * d, 2 * d, d / 2] {
            let x = Mat::from_fn(rows, d, |_, j| ((rng.normal() * scales[j]) as f32) as f64);
            xa.push(x);
        }
        let xb = xa
            .iter()
            .map(|x| {
                let y = x * &r;
                Mat::from_fn(y.nrows(), d, |i, j| (y[(i, j)] as f32) as f64)
            })
            .collect();
        (xa, xb, r)
    }

    #[test]
    fn recovery_is_certified_and_covered_on_a_synthetic_shard() {
        let mut rng = Rng::new(41);
        let (xa, xb, r) = shard(24, &mut rng);
        let rep = attack(&xa, &xb, &AttackOptions::default()).unwrap();
        let errs = rep.column_errors(&r);
        let ids = rep.identified();
        assert!(ids.len() >= 20, "only {} of 24 identified", ids.len());
        for &i in &ids {
            let b = rep.column_bounds[i].unwrap();
            assert!(errs[i] <= b, "column {i}: error {} > bound {b}", errs[i]);
        }
        // f32 rounding: the estimate is accurate to ~1e-6 where identified.
        let worst = ids.iter().map(|&i| errs[i]).fold(0.0, f64::max);
        assert!(worst < 1e-4, "worst identified error {worst}");
        // The independent-rounding estimate explains the measured error (an estimate: loose
        // factor both ways).
        let pred = rep.predicted_column_errors();
        let (m2, p2): (f64, f64) = ids
            .iter()
            .map(|&i| (errs[i] * errs[i], pred[i] * pred[i]))
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        let ratio = (m2 / p2).sqrt();
        assert!(ratio > 0.2 && ratio < 5.0, "measured/predicted {ratio}");
        // The Procrustes fit agrees with the true change to rounding.
        let p = procrustes(&xa, &xb).unwrap();
        assert!((&p - &r).norm_l2() < 1e-5);
    }

    #[test]
    fn a_degenerate_pair_is_not_identified() {
        // Two equal row scales in an otherwise spread spectrum: G has (nearly) a double
        // eigenvalue, so those two directions (and only a few) are not identified.
        let mut rng = Rng::new(43);
        let d = 12;
        let r = haar(d, &mut rng);
        let q = haar(d, &mut rng);
        let mut s: Vec<f64> = (0..d).map(|j| 1.0 + j as f64).collect();
        s[5] = s[4];
        // X = Q diag(s) arranged as d rows: XᵀX = Q diag(s²) Qᵀ exactly up to rounding.
        let x = Mat::from_fn(d, d, |i, j| ((q[(j, i)] * s[i]) as f32) as f64);
        let y = &x * &r;
        let xb = Mat::from_fn(d, d, |i, j| (y[(i, j)] as f32) as f64);
        let rep = attack(&[x], &[xb], &AttackOptions::default()).unwrap();
        let ids = rep.identified();
        assert!(ids.len() <= d - 2, "{} identified", ids.len());
        assert!(ids.len() >= d - 4, "{} identified", ids.len());
        assert!(rep.whole_bound.is_none());
        let errs = rep.column_errors(&r);
        for &i in &ids {
            assert!(errs[i] <= rep.column_bounds[i].unwrap());
        }
    }

    #[test]
    fn mismatched_inputs_get_typed_errors() {
        let a = Mat::<f64>::zeros(3, 4);
        let b = Mat::<f64>::zeros(2, 4);
        assert_eq!(
            attack(&[], &[], &AttackOptions::default()).unwrap_err(),
            AttackError::Empty
        );
        assert!(matches!(
            attack(std::slice::from_ref(&a), &[b], &AttackOptions::default()),
            Err(AttackError::Shape { index: 0, .. })
        ));
        assert!(matches!(
            attack(
                std::slice::from_ref(&a),
                &[a.clone(), a.clone()],
                &AttackOptions::default()
            ),
            Err(AttackError::Count { a: 1, b: 2 })
        ));
    }
}
