//! Joint orthogonal basis of several matrices with an a-posteriori certificate
//! (ALGORITHMS.md §6, Colombo–Vlassis). Not a pass; the `joint-basis` pass and the validation
//! bench use it.
//!
//! # Problem
//! Given observed matrices `M̂_n = M_n + ε W_n` (n = 1..N, d×d, f64) whose noise-free versions
//! share one orthogonal basis, find an orthogonal `U` such that every `T̂_n = Uᵀ M̂_n U` is nearly
//! diagonal ([`Structure::Symmetric`], joint diagonalization) or nearly upper triangular
//! ([`Structure::General`], joint triangularization). The loss is
//! `L(U) = Σ_n ‖r(T̂_n)‖²_F` where `r` keeps the off-diagonal entries (symmetric case, both
//! triangles) or the strictly lower triangle (general case).
//!
//! # Optimizer
//! Both cases start from a seeded random positive combination `Σ μ_n M̂_n`. Symmetric case: its
//! eigenbasis. General case (`flag.rs`): non-commuting triangular sets share one invariant flag,
//! built one vector at a time — at each step every eigenvector of the deflated combination is
//! refined by Gauss–Newton on its joint eigen-residual `Σ_n ‖B_n x − (xᵀB_n x)x‖²` (a well
//! conditioned problem, unlike the eigenvectors of one nearly triangular matrix, whose
//! conditioning degrades exponentially with d), the best refined vector is kept and the matrices
//! are deflated to its complement ([`FlagSearch`]). The symmetric case then
//! runs Jacobi sweeps (Cardoso–Souloumiac): for each plane (p, q) the rotation that minimizes the
//! joint `(p, q)` off-diagonal mass has a closed form (the smallest eigenvector of a 2×2 matrix),
//! and the rest of the off-diagonal mass is invariant under it, so every rotation lowers `L`.
//! The general case runs damped Gauss–Newton on O(d): the step is the least-squares solution of
//! the linearized problem below, applied with a Cayley retraction, accepted only if `L`
//! decreases (otherwise the damping grows). Both are bounded by `max_sweeps` and report why
//! they stopped ([`Stop`]).
//!
//! # Certificate (derivation)
//! Let `U_o` be an exact joint basis of the noise-free set, near `U`, and write it as
//! `U_o = U·exp(Y)` with `Y` skew-symmetric. Moving `U` to `U·exp(Y)` changes each `T̂_n` to
//! `exp(−Y) T̂_n exp(Y) = T̂_n + [T̂_n, Y] + O(‖Y‖²)`, so the linearized operator of the problem
//! at `U` is `𝒜_U : Y ↦ (r([T̂_n, Y]))_n`, acting on the d(d−1)/2-dimensional space of skew
//! generators (with the Frobenius norm, orthonormal basis `(e_p e_qᵀ − e_q e_pᵀ)/√2`, p > q) and
//! landing in the stacked residual space. Because `U_o` is exact for the noise-free set,
//! `r(U_oᵀ M̂_n U_o) = ε·r(U_oᵀ W_n U_o)`, whose stacked norm is at most `ε·√Σ‖W_n‖²_F`
//! (conjugating by an orthogonal matrix and dropping entries does not grow a Frobenius norm).
//! Expanding the left side at `U` gives `r(T̂_n) + 𝒜_U(Y)_n + O(‖Y‖²)`, hence, to first order,
//! `‖𝒜_U(Y)‖ ≤ √L(U) + ε·√Σ‖W_n‖²`. The smallest singular value bounds the correction because
//! `‖𝒜_U(Y)‖ ≥ σ_min(𝒜_U)·‖Y‖_F` for every `Y`; and `‖U − U_o‖_F = ‖I − exp(Y)‖_F ≤ ‖Y‖_F`
//! (the eigenvalues of a skew `Y` are `iθ` and `|1 − e^{iθ}| ≤ |θ|`). Together:
//! `‖U − U_o‖_F ≤ (√L(U) + ε·√Σ‖W_n‖²) / σ_min(𝒜_U)` to first order.
//!
//! **Sharper first term.** The first-order equation is linear in `Y`:
//! `𝒜_U(Y) = −r(T̂) + ε·w` with `w = (r(U_oᵀ W_n U_o))_n`, `‖w‖ ≤ √Σ‖W_n‖²`. `𝒜_U` has full
//! column rank when σ_min > 0, so the equation (consistent, since `U_o` exists) has the unique
//! solution `Y = 𝒜_U⁺(−r(T̂) + ε·w)`, and the triangle inequality with `‖𝒜_U⁺‖ = 1/σ_min` gives
//! `‖Y‖_F ≤ ‖𝒜_U⁺ r(T̂)‖ + ε·√Σ‖W_n‖² / σ_min` — never larger than the bound above, since
//! `‖𝒜_U⁺ r‖ ≤ √L/σ_min`. The first term is computed exactly (least squares,
//! [`JointBasis::bound_lsq`]) wherever 𝒜_U is formed (d ≤ `dense_max_dim`); it is the
//! Gauss–Newton step, and vanishes at a critical point of `L` (the gradient of `L` is `2𝒜_Uᵀ r`),
//! where the bound is then the noise term alone. Both are reported; the regime is judged on the
//! spec's `bound` (the larger), so the certified set does not depend on the sharpening.
//!
//! The neglected term is `O(‖T̂‖·‖Y‖²)`, so the statement is only meaningful when the bound is
//! small and the gap is well above the noise; [`Regime`] is that computed criterion (bound ≤
//! `max_bound`, σ_min ≥ `noise_factor`·ε√Σ‖W_n‖²). Outside it the result is "not certified".
//! Exact joint bases form a discrete set (orderings × column signs); the bound is about the one
//! nearest to `U`, with the same column order.
//!
//! # Consistency
//! The first-order equation `𝒜_U(Y) = −r(T̂) + ε·w` can only hold if the part of `r(T̂)` outside
//! the range of 𝒜_U is noise: `‖(I − P_𝒜) r(T̂)‖ ≤ ‖ε·w‖ ≤ ε√Σ‖W_n‖²`. When it is larger (computed
//! with the least-squares term, d ≤ `dense_max_dim`), no exact basis is within the
//! linearization's reach of U — U is a spurious minimum — and the result is
//! [`NotCertified::Inconsistent`]. (At a critical point `P_𝒜 r = 0`, so this reads `√L ≤ noise`:
//! every exact basis has `L(U_o) ≤ noise²`.)
//!
//! # Ambiguity (general case)
//! The bound assumes that the exact basis is the one near `U`; it cannot see an exact basis
//! elsewhere. Every exact basis `U_o` has `L(U_o) ≤ η²` (η = ε√Σ‖W_n‖²), so another orthogonal
//! point far from `U` with `L ≤ η²` is as consistent with the data as `U`. Triangularization with
//! few matrices meets this (an adjacent swap of the flag is nearly invariant under one scalar
//! coincidence per extra matrix): the general case probes every adjacent swap and compares the
//! restarts (`ambiguity.rs`), and a fit within the noise more than twice the bound away makes
//! the result [`NotCertified::Ambiguous`].
//!
//! # σ_min(𝒜_U)
//! - [`SigmaMethod::DenseSvd`]: singular values of the stacked (N·m)×m matrix of `𝒜_U`
//!   (m = d(d−1)/2), used for m ≤ [`DENSE_SVD_MAX_COLS`].
//! - [`SigmaMethod::GramEigen`]: `√λ_min(𝒜_Uᵀ𝒜_U)` from the sparse columns (each column of `𝒜_U`
//!   has O(d) nonzeros), used up to `dense_max_dim`; accurate while σ_min ≫ 1e-8·σ_max.
//! - [`SigmaMethod::Weyl`] (beyond): a certified lower bound. `T̂_n = Δ_n + O_n` (diagonal plus
//!   off-diagonal part); the Δ part of `𝒜_U` maps each basis generator `(p, q)` to one residual
//!   entry, so its singular values are the column norms — the joint eigengaps
//!   `√Σ_n (T̂_n,pp − T̂_n,qq)²` (divided by √2 in the triangular case). The O part has norm at
//!   most `2·√Σ_n ‖O_n‖²_F` (`‖[O, Y]‖_F ≤ 2‖O‖₂‖Y‖_F`), and Weyl's inequality gives
//!   `σ_min(𝒜_U) ≥ min gap − 2·√Σ‖O_n‖²`. Useful in the symmetric case near a solution (O is
//!   then √L small); in the triangular case O contains the whole upper triangle and the bound
//!   is usually negative (then: not certified).
//!
//! # Noise
//! [`Noise::Given`] takes `ε·√Σ‖W_n‖²_F` directly. [`JointProblem::from_halves`] estimates it by
//! split-half resampling: with two independent half-sample estimates `A_n`, `B_n`, the problem
//! uses `M̂_n = (A_n + B_n)/2` and `‖(A_n − B_n)/2‖` has the same distribution as the noise of the
//! mean when the two halves' noises are independent and symmetric — an estimate, not a bound.

mod ambiguity;
mod flag;
mod operator;
mod optimize;
pub mod synthetic;
#[cfg(test)]
mod tests;

use crate::linalg::orthogonal::Rng;
use faer::Mat;

pub use flag::FlagSearch;
pub use operator::{joint_gaps, sigma_min_weyl};

/// Largest number of columns (d(d−1)/2) for which σ_min is taken from a dense SVD of the stacked
/// operator (d = 32 gives 496).
pub const DENSE_SVD_MAX_COLS: usize = 500;

/// Which structure the joint basis exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Structure {
    /// Symmetric matrices, `Uᵀ M U` diagonal.
    Symmetric,
    /// Any real matrices, `Uᵀ M U` upper triangular.
    General,
}

/// The noise level of the observed matrices.
#[derive(Debug, Clone, PartialEq)]
pub enum Noise {
    /// `ε·√Σ‖W_n‖²_F`, the stacked Frobenius norm of `M̂ − M`, supplied by the caller.
    Given(f64),
    /// Estimated by split-half resampling (see the module doc); the value is the estimate.
    SplitHalf(f64),
}

impl Noise {
    /// `ε·√Σ‖W_n‖²_F`.
    pub fn value(&self) -> f64 {
        match self {
            Noise::Given(v) | Noise::SplitHalf(v) => *v,
        }
    }
}

/// The matrices and their noise level.
#[derive(Debug, Clone)]
pub struct JointProblem {
    pub matrices: Vec<Mat<f64>>,
    pub noise: Noise,
}

impl JointProblem {
    /// Matrices with a known noise level `ε·√Σ‖W_n‖²_F`.
    pub fn new(matrices: Vec<Mat<f64>>, noise: f64) -> JointProblem {
        JointProblem {
            matrices,
            noise: Noise::Given(noise),
        }
    }

    /// Two half-sample estimates of each matrix: the problem is their mean, the noise the
    /// split-half estimate `√Σ‖(A_n − B_n)/2‖²_F`.
    pub fn from_halves(a: &[Mat<f64>], b: &[Mat<f64>]) -> Result<JointProblem, JointBasisError> {
        if a.len() != b.len() {
            return Err(JointBasisError::HalvesMismatch {
                a: a.len(),
                b: b.len(),
            });
        }
        let mut matrices = Vec::with_capacity(a.len());
        let mut noise2 = 0.0;
        for (index, (x, y)) in a.iter().zip(b).enumerate() {
            if x.nrows() != y.nrows() || x.ncols() != y.ncols() {
                return Err(JointBasisError::DimMismatch {
                    index,
                    expected: x.nrows(),
                    got: y.nrows(),
                });
            }
            let mean = Mat::from_fn(x.nrows(), x.ncols(), |i, j| 0.5 * (x[(i, j)] + y[(i, j)]));
            for j in 0..x.ncols() {
                for i in 0..x.nrows() {
                    let h = 0.5 * (x[(i, j)] - y[(i, j)]);
                    noise2 += h * h;
                }
            }
            matrices.push(mean);
        }
        Ok(JointProblem {
            matrices,
            noise: Noise::SplitHalf(noise2.sqrt()),
        })
    }
}

/// How σ_min(𝒜_U) was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigmaMethod {
    /// Pick by size: dense SVD, then Gram eigenvalues up to `dense_max_dim`, then Weyl.
    Auto,
    DenseSvd,
    GramEigen,
    Weyl,
}

/// Options of [`joint_basis`].
#[derive(Debug, Clone)]
pub struct JointOptions {
    pub structure: Structure,
    /// Seed of the random positive combination used for the initial basis.
    pub seed: u64,
    /// Bound on Jacobi sweeps (symmetric) or Gauss–Newton steps (general).
    pub max_sweeps: usize,
    /// Stop when a sweep lowers `L` by less than this fraction.
    pub tol: f64,
    pub sigma: SigmaMethod,
    /// Largest d for the Gram-eigenvalue route (and for the general case's Gauss–Newton).
    pub dense_max_dim: usize,
    /// Regime: the bound must be at most this.
    pub max_bound: f64,
    /// Regime: σ_min must be at least this times the noise level.
    pub noise_factor: f64,
    /// General case: starts from this many random combinations (seeds `seed`, `seed + 1`, …),
    /// keeping the basis with the lowest loss. Gauss–Newton can stop near a spurious
    /// approximate triangularizer of another column order whose loss is still at the noise
    /// level; the certificate cannot tell it apart, so the lowest loss over restarts is used.
    pub restarts: usize,
    /// General case: adjacent swaps whose unpolished loss is at most this times noise² are
    /// polished and tested for ambiguity (module doc, "Ambiguity"); 0 turns the probe and the
    /// comparison of restarts off.
    pub probe_factor: f64,
    /// General case: how the start's flag is searched (`flag.rs`): Gauss–Newton steps that
    /// screen every eigenvector of the deflated combination, how many of the best go on, and
    /// for how many more steps. `candidates: 0, screen_steps: 0` is the unrefined greedy start
    /// of issue 20's first rounds.
    pub flag: FlagSearch,
}

impl Default for JointOptions {
    fn default() -> JointOptions {
        JointOptions {
            structure: Structure::Symmetric,
            seed: 0,
            max_sweeps: 50,
            tol: 1e-12,
            sigma: SigmaMethod::Auto,
            dense_max_dim: 96,
            max_bound: 0.1,
            noise_factor: 10.0,
            restarts: 3,
            probe_factor: 25.0,
            flag: FlagSearch {
                screen_steps: 2,
                candidates: 4,
                steps: 6,
            },
        }
    }
}

/// Why the optimizer stopped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// A sweep lowered `L` by less than `tol` (relative), or `L` reached zero.
    Converged { sweeps: usize },
    /// `max_sweeps` were run; `last_decrease` is the relative decrease of the last one.
    MaxSweeps { sweeps: usize, last_decrease: f64 },
    /// Gauss–Newton: no damped step lowered `L`.
    NoDescent { sweeps: usize },
}

/// Why a certificate is not given.
#[derive(Debug, Clone, PartialEq)]
pub enum NotCertified {
    /// The first-order bound is larger than the regime allows.
    BoundTooLarge { bound: f64, max: f64 },
    /// σ_min(𝒜_U) is not well above the noise.
    GapBelowNoise {
        sigma_min: f64,
        noise: f64,
        factor: f64,
    },
    /// σ_min(𝒜_U) (or its Weyl lower bound) is not positive.
    Singular { sigma_min: f64 },
    /// The residual outside the range of 𝒜_U, `‖(I − P_𝒜) r(T̂)‖`, exceeds the noise: the
    /// first-order equation `𝒜_U(Y) = −r + ε·w` has no solution with `‖ε·w‖ ≤ noise`, so no
    /// exact basis lies within the linearization's reach of U (a spurious local minimum).
    Inconsistent { residual: f64, noise: f64 },
    /// General case: another orthogonal basis, `distance` away from U (more than twice the
    /// bound), fits the data within the noise (`loss ≤ noise²`), so the data do not determine
    /// which flag is exact (module doc, "Ambiguity"). `plane`: the adjacent swap (k, k+1) that
    /// led to it, or `None` when another restart found it.
    Ambiguous {
        plane: Option<usize>,
        loss: f64,
        noise: f64,
        distance: f64,
    },
}

impl std::fmt::Display for NotCertified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotCertified::BoundTooLarge { bound, max } => {
                write!(f, "bound {bound:.3e} > {max}")
            }
            NotCertified::GapBelowNoise {
                sigma_min,
                noise,
                factor,
            } => write!(f, "σ_min {sigma_min:.3e} < {factor}·noise {noise:.3e}"),
            NotCertified::Singular { sigma_min } => {
                write!(f, "σ_min (lower bound) {sigma_min:.3e} ≤ 0")
            }
            NotCertified::Inconsistent { residual, noise } => write!(
                f,
                "inconsistent: residual outside the range of 𝒜_U {residual:.3e} > noise {noise:.3e} (no exact basis within reach)"
            ),
            NotCertified::Ambiguous {
                plane,
                loss,
                noise,
                distance,
            } => {
                let from = match plane {
                    Some(k) => format!("swapping columns {k}, {}", k + 1),
                    None => "another restart".into(),
                };
                write!(
                    f,
                    "ambiguous: a basis {distance:.3e} away ({from}) fits within the noise (√L {:.3e} ≤ {noise:.3e})",
                    loss.sqrt()
                )
            }
        }
    }
}

/// Whether the first-order regime holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Regime {
    Certified,
    NotCertified(NotCertified),
}

/// The joint basis and its certificate.
#[derive(Debug, Clone)]
pub struct JointBasis {
    /// The orthogonal basis (columns).
    pub u: Mat<f64>,
    /// `L(U)`.
    pub loss: f64,
    /// σ_min(𝒜_U) (or its Weyl lower bound, see `sigma_method`).
    pub sigma_min: f64,
    pub sigma_method: SigmaMethod,
    /// `ε·√Σ‖W_n‖²_F` and where it came from.
    pub noise: Noise,
    /// `(√L + noise)/σ_min`, +∞ when σ_min ≤ 0.
    pub bound: f64,
    /// `‖𝒜_U⁺ r‖ + noise/σ_min` (module doc, "sharper first term"); equal to `bound` when 𝒜_U
    /// is not formed (d > `dense_max_dim`, see `lsq_term`).
    pub bound_lsq: f64,
    /// `‖𝒜_U⁺ r‖`, or `None` when it was not computed (d > `dense_max_dim` or a singular Gram).
    pub lsq_term: Option<f64>,
    pub regime: Regime,
    pub stop: Stop,
    /// `diag(Uᵀ M̂_n U)` per matrix: the joint eigenvalues in the order of U's columns.
    pub diagonals: Vec<Vec<f64>>,
}

/// Typed errors of [`joint_basis`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JointBasisError {
    #[error("no matrices given")]
    Empty,
    #[error("matrix {index} is {rows}×{cols}, not square")]
    NotSquare {
        index: usize,
        rows: usize,
        cols: usize,
    },
    #[error("matrix {index} has size {got}, expected {expected}")]
    DimMismatch {
        index: usize,
        expected: usize,
        got: usize,
    },
    #[error("matrix {index} has a non-finite entry")]
    NonFinite { index: usize },
    #[error("matrix {index} is not symmetric (‖M − Mᵀ‖_F/‖M‖_F = {asymmetry:.3e})")]
    NotSymmetric { index: usize, asymmetry: f64 },
    #[error("the two halves have {a} and {b} matrices")]
    HalvesMismatch { a: usize, b: usize },
    #[error("the noise level {0} is negative or not finite")]
    BadNoise(f64),
    #[error("the general (triangular) case is limited to d ≤ {max} (got d = {d})")]
    TooLarge { d: usize, max: usize },
    #[error("{0} failed to converge in faer")]
    Decomposition(&'static str),
}

/// Check the matrices; returns d.
fn validate(p: &JointProblem, structure: Structure) -> Result<usize, JointBasisError> {
    let first = p.matrices.first().ok_or(JointBasisError::Empty)?;
    let d = first.nrows();
    for (index, m) in p.matrices.iter().enumerate() {
        if m.nrows() != m.ncols() {
            return Err(JointBasisError::NotSquare {
                index,
                rows: m.nrows(),
                cols: m.ncols(),
            });
        }
        if m.nrows() != d {
            return Err(JointBasisError::DimMismatch {
                index,
                expected: d,
                got: m.nrows(),
            });
        }
        let mut norm2 = 0.0;
        let mut asym2 = 0.0;
        for j in 0..d {
            for i in 0..d {
                let v = m[(i, j)];
                if !v.is_finite() {
                    return Err(JointBasisError::NonFinite { index });
                }
                norm2 += v * v;
                let a = v - m[(j, i)];
                asym2 += a * a;
            }
        }
        // Symmetric input is required up to rounding of the producer (a Gram accumulated in
        // f32, say); the asymmetric part is dropped by symmetrizing below.
        if structure == Structure::Symmetric && asym2 > 1e-12 * norm2.max(f64::MIN_POSITIVE) {
            return Err(JointBasisError::NotSymmetric {
                index,
                asymmetry: (asym2 / norm2.max(f64::MIN_POSITIVE)).sqrt(),
            });
        }
    }
    let noise = p.noise.value();
    if !noise.is_finite() || noise < 0.0 {
        return Err(JointBasisError::BadNoise(noise));
    }
    Ok(d)
}

/// Find an approximate joint basis of `problem` and certify it (see the module doc).
pub fn joint_basis(
    problem: &JointProblem,
    opts: &JointOptions,
) -> Result<JointBasis, JointBasisError> {
    let d = validate(problem, opts.structure)?;
    if opts.structure == Structure::General && d > opts.dense_max_dim {
        return Err(JointBasisError::TooLarge {
            d,
            max: opts.dense_max_dim,
        });
    }
    let mats: Vec<Mat<f64>> = match opts.structure {
        Structure::Symmetric => problem
            .matrices
            .iter()
            .map(|m| Mat::from_fn(d, d, |i, j| 0.5 * (m[(i, j)] + m[(j, i)])))
            .collect(),
        Structure::General => problem.matrices.clone(),
    };
    let (u, stop) = match opts.structure {
        Structure::Symmetric => {
            let mut rng = Rng::new(opts.seed);
            let u0 = optimize::initial_basis(&mats, opts.structure, opts.flag, &mut rng)?;
            optimize::jacobi(&mats, u0, opts.max_sweeps, opts.tol)
        }
        Structure::General => {
            let mut found: Vec<(f64, Mat<f64>, Stop)> = Vec::new();
            for k in 0..opts.restarts.max(1) {
                let mut rng = Rng::new(opts.seed.wrapping_add(k as u64));
                let u0 = optimize::initial_basis(&mats, opts.structure, opts.flag, &mut rng)?;
                let (u, stop) = optimize::gauss_newton(&mats, u0, opts.max_sweeps, opts.tol)?;
                let l = operator::loss(&operator::conjugate_all(&mats, &u), opts.structure);
                found.push((l, u, stop));
            }
            let best = (0..found.len())
                .min_by(|&a, &b| found[a].0.total_cmp(&found[b].0))
                .ok_or(JointBasisError::Empty)?;
            let (_, u, stop) = found.swap_remove(best);
            let mut jb = certify(&mats, u, stop, problem.noise.clone(), opts)?;
            // Another restart that fits within the noise far from U: ambiguous.
            if jb.regime == Regime::Certified && opts.probe_factor > 0.0 {
                let eta = problem.noise.value();
                for (l, v, _) in &found {
                    let distance = ambiguity::signed_distance(&jb.u, v);
                    if *l <= eta * eta && distance > 2.0 * jb.bound {
                        jb.regime = Regime::NotCertified(NotCertified::Ambiguous {
                            plane: None,
                            loss: *l,
                            noise: eta,
                            distance,
                        });
                        break;
                    }
                }
            }
            return Ok(jb);
        }
    };
    certify(&mats, u, stop, problem.noise.clone(), opts)
}

/// Polish a given orthogonal start `u0` with this module's optimizer (Jacobi sweeps or
/// Gauss–Newton) and certify the result, ambiguity probe included but without restarts: for a
/// rotation from elsewhere (a learned one, an attacker's estimate) and for oracle starts in the
/// validation bench.
pub fn joint_basis_from(
    problem: &JointProblem,
    u0: Mat<f64>,
    opts: &JointOptions,
) -> Result<JointBasis, JointBasisError> {
    let d = validate(problem, opts.structure)?;
    if u0.nrows() != d || u0.ncols() != d {
        return Err(JointBasisError::DimMismatch {
            index: problem.matrices.len(),
            expected: d,
            got: u0.nrows(),
        });
    }
    if opts.structure == Structure::General && d > opts.dense_max_dim {
        return Err(JointBasisError::TooLarge {
            d,
            max: opts.dense_max_dim,
        });
    }
    let (mats, (u, stop)) = match opts.structure {
        Structure::Symmetric => {
            let mats: Vec<Mat<f64>> = problem
                .matrices
                .iter()
                .map(|m| Mat::from_fn(d, d, |i, j| 0.5 * (m[(i, j)] + m[(j, i)])))
                .collect();
            let r = optimize::jacobi(&mats, u0, opts.max_sweeps, opts.tol);
            (mats, r)
        }
        Structure::General => {
            let mats = problem.matrices.clone();
            let r = optimize::gauss_newton(&mats, u0, opts.max_sweeps, opts.tol)?;
            (mats, r)
        }
    };
    certify(&mats, u, stop, problem.noise.clone(), opts)
}

/// The certificate of a given orthogonal `u` (any source: this module's optimizer, a learned
/// rotation, …) for the matrices `mats`.
pub fn certify(
    mats: &[Mat<f64>],
    u: Mat<f64>,
    stop: Stop,
    noise: Noise,
    opts: &JointOptions,
) -> Result<JointBasis, JointBasisError> {
    let d = u.nrows();
    let ts = operator::conjugate_all(mats, &u);
    let loss = operator::loss(&ts, opts.structure);
    let method = match opts.sigma {
        SigmaMethod::Auto => {
            if d * d.saturating_sub(1) / 2 <= DENSE_SVD_MAX_COLS {
                SigmaMethod::DenseSvd
            } else if d <= opts.dense_max_dim {
                SigmaMethod::GramEigen
            } else {
                SigmaMethod::Weyl
            }
        }
        m => m,
    };
    let sigma_min = match method {
        SigmaMethod::DenseSvd => operator::sigma_min_svd(&ts, opts.structure)?,
        SigmaMethod::GramEigen => operator::sigma_min_gram(&ts, opts.structure)?,
        _ => sigma_min_weyl(&ts, opts.structure),
    };
    let eta = noise.value();
    let bound = if sigma_min > 0.0 {
        (loss.sqrt() + eta) / sigma_min
    } else {
        f64::INFINITY
    };
    let lsq = if sigma_min > 0.0 && d <= opts.dense_max_dim {
        operator::lsq_step_norm(&ts, opts.structure)
    } else {
        None
    };
    let lsq_term = lsq.map(|(t, _)| t);
    // ‖(I − P_𝒜) r‖: the part of the residual no first-order step removes.
    let orthogonal_residual = lsq.map(|(_, p2)| (loss - p2).max(0.0).sqrt());
    // f64 rounding of `UᵀM̂U` (and of an exact set's own construction) is not noise the caller
    // declared: allow a few d·ε_mach of the matrices' norm before calling the residual
    // inconsistent.
    let scale = ts.iter().map(|t| t.squared_norm_l2()).sum::<f64>().sqrt();
    let rounding = 64.0 * d as f64 * f64::EPSILON * scale;
    let bound_lsq = match lsq_term {
        // min: the two are equal in exact arithmetic when 𝒜ᵀr is parallel to the smallest
        // singular direction; rounding must not make the sharper figure the larger one.
        Some(t) => (t + eta / sigma_min).min(bound),
        None => bound,
    };
    let regime = if sigma_min <= 0.0 || d < 2 && loss > 0.0 {
        Regime::NotCertified(NotCertified::Singular { sigma_min })
    } else if sigma_min < opts.noise_factor * eta {
        Regime::NotCertified(NotCertified::GapBelowNoise {
            sigma_min,
            noise: eta,
            factor: opts.noise_factor,
        })
    } else if bound > opts.max_bound {
        Regime::NotCertified(NotCertified::BoundTooLarge {
            bound,
            max: opts.max_bound,
        })
    } else if let Some(rho) = orthogonal_residual.filter(|&rho| rho > eta + rounding) {
        Regime::NotCertified(NotCertified::Inconsistent {
            residual: rho,
            noise: eta,
        })
    } else {
        Regime::Certified
    };
    let regime = match regime {
        Regime::Certified if opts.structure == Structure::General && opts.probe_factor > 0.0 => {
            match ambiguity::probe_swaps(mats, &u, eta * eta, 2.0 * bound, opts.probe_factor)? {
                Some(a) => Regime::NotCertified(NotCertified::Ambiguous {
                    plane: Some(a.plane),
                    loss: a.loss,
                    noise: eta,
                    distance: a.distance,
                }),
                None => Regime::Certified,
            }
        }
        r => r,
    };
    let diagonals = ts
        .iter()
        .map(|t| (0..d).map(|i| t[(i, i)]).collect())
        .collect();
    Ok(JointBasis {
        u,
        loss,
        sigma_min,
        sigma_method: method,
        noise,
        bound,
        bound_lsq,
        lsq_term,
        regime,
        stop,
        diagonals,
    })
}

/// Groups of U's columns whose joint eigenvalues are closer than `threshold`
/// (`√Σ_n (δ_n,i − δ_n,j)² < threshold`, joined transitively): a group of one column is an
/// identified direction, a larger group a subspace identified only as a whole (a rotation
/// inside it is not determined by the data). Groups are sorted by their first column.
pub fn clusters(diagonals: &[Vec<f64>], threshold: f64) -> Vec<Vec<usize>> {
    let d = diagonals.first().map_or(0, Vec::len);
    let mut parent: Vec<usize> = (0..d).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        // Path halving; every step moves strictly up a finite forest, so this ends.
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for i in 0..d {
        for j in 0..i {
            let g2: f64 = diagonals.iter().map(|v| (v[i] - v[j]).powi(2)).sum();
            if g2.sqrt() < threshold {
                let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                if a != b {
                    parent[a.max(b)] = a.min(b);
                }
            }
        }
    }
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for i in 0..d {
        let r = root(&mut parent, i);
        groups.entry(r).or_default().push(i);
    }
    groups.into_values().collect()
}
