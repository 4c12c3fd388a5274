//! Adam on the special orthogonal group through the Cayley map (default) or the paper's
//! Q factor of QR(A). Not a pass.
//!
//! Each orthogonal block is `Q = (I − Ω/2)⁻¹ (I + Ω/2)` of a skew-symmetric `Ω`, initialized at 0,
//! so the first iterate is exactly the identity. Adam (elementwise, so it keeps `Ω` skew exactly)
//! runs on `Ω` with the gradient `∂L/∂Ω = skew(Mᵀ G (Q + I)ᵀ)` where `M = (I − Ω/2)⁻¹` and
//! `G = ∂L/∂Q`, clipped to a global norm over the free entries. Why Cayley and not the paper's
//! QR(A): the map is smooth everywhere near I (QR's sign convention is not), every iterate is
//! orthogonal to rounding, and `Ω = 0` gives I exactly, so "no progress" folds nothing.
//!
//! `Param::Qr` is DenoiseRotator's own parameterization, kept for comparison: a free `A = I`
//! at the start, `Q = qf(A)` with the sign convention `diag(R) > 0` (the smooth branch; the
//! reference's LAPACK convention differs from it by a diagonal of signs, which changes neither
//! the entropy nor the pruned model), Adam on all `n²` entries of `A` with
//! `∂L/∂A = (G + Q·copyltu(−GᵀQ)) R⁻ᵀ` (`copyltu` mirrors the lower triangle upwards).
//!
//! The Cayley map and its gradient are computed in f64; the objective sees `Q` cast to f32. The
//! **best** iterate (lowest loss, the identity included) is returned, as f64 matrices rebuilt from
//! its `Ω`, with the reason the loop stopped.

use faer::linalg::matmul::matmul;
use faer::linalg::solvers::DenseSolveCore;
use faer::{Accum, Mat, Par};

/// Options of [`optimize`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamOptions {
    /// Number of Adam steps (the objective is evaluated `iters + 1` times).
    pub iters: usize,
    pub lr: f64,
    /// Global gradient-norm clip over all free entries (≤ 0: none).
    pub clip: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// How an orthogonal block is parameterized.
    pub param: Param,
}

/// The parameterization of each orthogonal block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// `Q = (I − Ω/2)⁻¹ (I + Ω/2)`, `Ω` skew, starting at 0.
    Cayley,
    /// `Q` = the Q factor of `QR(A)`, `A` free, starting at `I` (DenoiseRotator's code).
    Qr,
}

impl Default for AdamOptions {
    fn default() -> Self {
        AdamOptions {
            iters: 20,
            lr: 0.01,
            clip: 1.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            param: Param::Cayley,
        }
    }
}

/// Why [`optimize`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// All `iters` steps were taken.
    Iterations,
    /// The loss or gradient was not finite; the best finite iterate is kept.
    NonFinite,
    /// The gradient vanished (the iterate is stationary).
    Stationary,
}

impl StopReason {
    pub fn name(self) -> &'static str {
        match self {
            StopReason::Iterations => "iterations exhausted",
            StopReason::NonFinite => "non-finite loss or gradient",
            StopReason::Stationary => "zero gradient",
        }
    }
}

/// What [`optimize`] found.
#[derive(Debug, Clone)]
pub struct Optimized {
    /// The best iterate's blocks, orthogonal in f64.
    pub qs: Vec<Mat<f64>>,
    /// Loss at the identity.
    pub initial: f64,
    pub best: f64,
    /// The step whose iterate was best (0 = the identity).
    pub best_iter: usize,
    /// Objective evaluations done.
    pub evaluations: usize,
    pub stop: StopReason,
}

/// The Cayley map of a skew `Ω` and `M = (I − Ω/2)⁻¹`.
fn cayley(omega: &Mat<f64>) -> (Mat<f64>, Mat<f64>) {
    let n = omega.nrows();
    let a = Mat::<f64>::from_fn(n, n, |i, j| {
        (if i == j { 1.0 } else { 0.0 }) - 0.5 * omega[(i, j)]
    });
    let m = if omega.norm_max() == 0.0 {
        Mat::<f64>::identity(n, n)
    } else {
        a.partial_piv_lu().inverse()
    };
    // Q = M (I + Ω/2) = M (2I − A) = 2M − I, since M A = I: no product needed.
    let q = Mat::<f64>::from_fn(n, n, |i, j| {
        2.0 * m[(i, j)] - if i == j { 1.0 } else { 0.0 }
    });
    (q, m)
}

/// `A = QR` with `diag(R) > 0`.
fn qr_positive(a: &Mat<f64>) -> (Mat<f64>, Mat<f64>) {
    let f = a.qr();
    let mut q = f.compute_Q();
    let mut r = f.R().to_owned();
    let n = a.nrows();
    for k in 0..n {
        if r[(k, k)] < 0.0 {
            for i in 0..n {
                q[(i, k)] = -q[(i, k)];
            }
            for j in 0..n {
                r[(k, j)] = -r[(k, j)];
            }
        }
    }
    (q, r)
}

fn mm64(a: faer::MatRef<'_, f64>, b: faer::MatRef<'_, f64>) -> Mat<f64> {
    let mut c = Mat::<f64>::zeros(a.nrows(), b.ncols());
    matmul(c.as_mut(), Accum::Replace, a, b, 1.0, Par::rayon(0));
    c
}

/// `∂L/∂A` of `Q = qf(A)` given `G = ∂L/∂Q` (and `∂L/∂R = 0`).
pub(crate) fn qr_backward(q: &Mat<f64>, r: &Mat<f64>, g: &Mat<f64>) -> Mat<f64> {
    let n = q.nrows();
    // M = −GᵀQ, made "copyltu": the lower triangle (with the diagonal) mirrored upwards.
    let gq = mm64(g.transpose(), q.as_ref());
    let c = Mat::<f64>::from_fn(n, n, |i, j| if i >= j { -gq[(i, j)] } else { -gq[(j, i)] });
    let mut x = mm64(q.as_ref(), c.as_ref());
    for j in 0..n {
        for i in 0..n {
            x[(i, j)] += g[(i, j)];
        }
    }
    // X R⁻ᵀ = (R⁻¹ Xᵀ)ᵀ: one triangular solve (R is upper triangular, diagonal positive).
    let mut y = x.transpose().to_owned();
    faer::linalg::triangular_solve::solve_upper_triangular_in_place(
        r.as_ref(),
        y.as_mut(),
        Par::rayon(0),
    );
    y.transpose().to_owned()
}

/// The orthogonal matrix of a block's parameters.
fn block_q(param: Param, x: &Mat<f64>) -> Mat<f64> {
    match param {
        Param::Cayley => cayley_q(x),
        Param::Qr => qr_positive(x).0,
    }
}

/// The orthogonal matrix of a skew `Ω` (f64).
pub fn cayley_q(omega: &Mat<f64>) -> Mat<f64> {
    cayley(omega).0
}

/// `‖QᵀQ − I‖_F`.
pub fn orthogonality_error(q: &Mat<f64>) -> f64 {
    let n = q.ncols();
    let mut qtq = Mat::<f64>::zeros(n, n);
    matmul(
        qtq.as_mut(),
        Accum::Replace,
        q.transpose(),
        q.as_ref(),
        1.0,
        Par::rayon(0),
    );
    let mut s = 0.0;
    for j in 0..n {
        for i in 0..n {
            let e = qtq[(i, j)] - if i == j { 1.0 } else { 0.0 };
            s += e * e;
        }
    }
    s.sqrt()
}

/// The objective: loss at the given blocks, adding `∂L/∂Q` into the gradient blocks.
pub type Objective<'a> = dyn FnMut(&[Mat<f32>], &mut [Mat<f32>]) -> f64 + 'a;

/// Minimizes `objective` over a product of SO(n) blocks of the given sizes, starting from the
/// identity. `objective(qs, grads)` returns the loss at `qs` and adds `∂L/∂Q` into `grads`
/// (zeroed before each call).
pub fn optimize(sizes: &[usize], opts: &AdamOptions, objective: &mut Objective<'_>) -> Optimized {
    // The free parameters of each block: Ω (Cayley, at 0) or A (QR, at I).
    let start = |n: usize| match opts.param {
        Param::Cayley => Mat::zeros(n, n),
        Param::Qr => Mat::identity(n, n),
    };
    let mut omega: Vec<Mat<f64>> = sizes.iter().map(|&n| start(n)).collect();
    let mut m1: Vec<Mat<f64>> = sizes.iter().map(|&n| Mat::zeros(n, n)).collect();
    let mut m2: Vec<Mat<f64>> = sizes.iter().map(|&n| Mat::zeros(n, n)).collect();
    let mut best_omega = omega.clone();
    let (mut best, mut initial, mut best_iter) = (f64::INFINITY, f64::NAN, 0);
    let mut stop = StopReason::Iterations;
    let mut evaluations = 0;
    for t in 0..=opts.iters {
        // (Q, M) for Cayley, (Q, R) for QR.
        let maps: Vec<(Mat<f64>, Mat<f64>)> = omega
            .iter()
            .map(|x| match opts.param {
                Param::Cayley => cayley(x),
                Param::Qr => qr_positive(x),
            })
            .collect();
        let qs32: Vec<Mat<f32>> = maps
            .iter()
            .map(|(q, _)| Mat::from_fn(q.nrows(), q.ncols(), |i, j| q[(i, j)] as f32))
            .collect();
        let mut grads: Vec<Mat<f32>> = sizes.iter().map(|&n| Mat::zeros(n, n)).collect();
        let loss = objective(&qs32, &mut grads);
        evaluations += 1;
        if t == 0 {
            initial = loss;
        }
        if !loss.is_finite() {
            stop = StopReason::NonFinite;
            break;
        }
        if loss < best {
            best = loss;
            best_iter = t;
            best_omega.clone_from(&omega);
        }
        if t == opts.iters {
            break;
        }
        // ∂L/∂Ω for each block, projected on the skew matrices.
        let mut gs: Vec<Mat<f64>> = Vec::with_capacity(sizes.len());
        let mut norm2 = 0.0f64;
        for ((q, m), g) in maps.iter().zip(&grads) {
            let n = q.nrows();
            let g64 = Mat::<f64>::from_fn(n, n, |i, j| g[(i, j)] as f64);
            if opts.param == Param::Qr {
                let a = qr_backward(q, m, &g64);
                norm2 += a.norm_l2().powi(2);
                gs.push(a);
                continue;
            }
            // ∂L/∂Ω = skew(½ Mᵀ G (Q + I)ᵀ) and Q + I = 2M, so the product is Mᵀ G Mᵀ.
            let mut mg = Mat::<f64>::zeros(n, n);
            matmul(
                mg.as_mut(),
                Accum::Replace,
                m.transpose(),
                g64.as_ref(),
                1.0,
                Par::rayon(0),
            );
            let mut x = Mat::<f64>::zeros(n, n);
            matmul(
                x.as_mut(),
                Accum::Replace,
                mg.as_ref(),
                m.transpose(),
                1.0,
                Par::rayon(0),
            );
            let a = Mat::<f64>::from_fn(n, n, |i, j| x[(i, j)] - x[(j, i)]);
            // Each free entry appears twice in ‖A‖²_F.
            norm2 += a.norm_l2().powi(2) / 2.0;
            gs.push(a);
        }
        let norm = norm2.sqrt();
        if !norm.is_finite() {
            stop = StopReason::NonFinite;
            break;
        }
        if norm == 0.0 {
            stop = StopReason::Stationary;
            break;
        }
        let scale = if opts.clip > 0.0 && norm > opts.clip {
            opts.clip / norm
        } else {
            1.0
        };
        let step = (t + 1) as i32;
        let (c1, c2) = (1.0 - opts.beta1.powi(step), 1.0 - opts.beta2.powi(step));
        for (k, g) in gs.iter().enumerate() {
            let n = g.nrows();
            for j in 0..n {
                for i in 0..n {
                    let gij = g[(i, j)] * scale;
                    let a = &mut m1[k][(i, j)];
                    *a = opts.beta1 * *a + (1.0 - opts.beta1) * gij;
                    let b = &mut m2[k][(i, j)];
                    *b = opts.beta2 * *b + (1.0 - opts.beta2) * gij * gij;
                    let upd = (m1[k][(i, j)] / c1) / ((m2[k][(i, j)] / c2).sqrt() + opts.eps);
                    omega[k][(i, j)] -= opts.lr * upd;
                }
            }
        }
    }
    if !best.is_finite() {
        // Not even the identity had a finite loss: fold nothing.
        best_omega = sizes.iter().map(|&n| start(n)).collect();
        best_iter = 0;
    }
    Optimized {
        qs: best_omega.iter().map(|x| block_q(opts.param, x)).collect(),
        initial,
        best,
        best_iter,
        evaluations,
        stop,
    }
}
