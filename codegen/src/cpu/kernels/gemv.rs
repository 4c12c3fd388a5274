//! Dense one-row products (decode: one token times a weight), `y = alpha·y + beta·x·W` for a
//! row-major `W: [k, n]` (unit column stride), f32.
//!
//! A decode step streams every weight of the model from memory once, so this product is bound by
//! memory bandwidth, not by arithmetic: what matters is that the weight is read as long
//! contiguous runs (the hardware prefetchers follow them) by every thread at once, and that each
//! loaded vector feeds its FMA without a second trip through memory. Rows of `W` are walked eight
//! at a time, each contributing `x[i]·W[i, cols]` to a block of outputs that stays in L1; the
//! columns are split over the threads, so every thread streams its own contiguous share of each
//! row. Each output is the same sum in the same order whatever the thread count (bit-identical).

use super::matmul::Mat;
use crate::cpu::handoff::{self, SyncPtr};
use rayon::prelude::*;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// 0 = follow `ORTHO_GEMV` (read once), 1 = on, 2 = off: set by [`set_enabled`].
static OVERRIDE: AtomicU8 = AtomicU8::new(0);

/// Whether one-row products use this kernel: `ORTHO_GEMV=off` routes them to the `gemm` crate
/// instead (for comparison), unless [`set_enabled`] said otherwise.
pub fn enabled() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    match OVERRIDE.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => *ENV.get_or_init(|| std::env::var("ORTHO_GEMV").as_deref() != Ok("off")),
    }
}

/// Turns the kernel on or off for the whole process (benches compare both paths in one run).
pub fn set_enabled(on: bool) {
    OVERRIDE.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// Outputs per block: 2,048 f32 (8 KiB of `y`) stay in L1 while eight rows stream through.
const COL_BLOCK: usize = 2048;

/// Columns per thread piece are a multiple of this (four AVX-512 vectors), so every piece but the
/// last has no vector tail.
const SPLIT_COLUMNS: usize = 64;

/// Whether `gemv_f32` applies: a one-row product whose weight has unit column stride, with the
/// kernel enabled.
pub fn applies(m: usize, b: &Mat<'_, f32>) -> bool {
    m == 1 && b.cs == 1 && enabled()
}

/// `y = alpha·y + beta·x·W` (`alpha` read only when `accumulate`), `x: [k]` with stride `xs`,
/// `W` row-major with row stride `b.rs`, `y: [n]`, on `threads` threads.
#[allow(clippy::too_many_arguments)]
pub fn gemv_f32(
    n: usize,
    k: usize,
    x: &[f32],
    xs: usize,
    b: Mat<'_, f32>,
    y: &mut [f32],
    accumulate: bool,
    alpha: f32,
    beta: f32,
    threads: usize,
) {
    assert!(b.cs == 1, "gemv: weight columns must be contiguous");
    assert!(y.len() >= n && (k == 0 || (k - 1) * xs < x.len()));
    assert!(
        k == 0 || (k - 1) * b.rs + n <= b.data.len(),
        "gemv: rhs out of bounds"
    );
    // Gather the (possibly strided) input row once and fold beta into it: each output is then
    // Σ_i xb[i]·W[i, j], and beta·Σ equals Σ beta·x_i only up to rounding, which is accepted here
    // as in any GEMM that scales its packed operand.
    let xb: Vec<f32> = (0..k).map(|i| beta * x[i * xs]).collect();
    let y = &mut y[..n];
    // Every product with room for two pieces is split: a split through `handoff` costs ~1 µs.
    let parts = threads
        .min(handoff::parallelism())
        .min(n / SPLIT_COLUMNS)
        .max(1);
    let per = n.div_ceil(parts).div_ceil(SPLIT_COLUMNS) * SPLIT_COLUMNS;
    let run = |j0: usize, yi: &mut [f32]| {
        if !accumulate {
            yi.fill(0.0);
        } else if alpha != 1.0 {
            yi.iter_mut().for_each(|v| *v *= alpha);
        }
        for c0 in (0..yi.len()).step_by(COL_BLOCK) {
            let c1 = (c0 + COL_BLOCK).min(yi.len());
            rows_into(&xb, b, j0 + c0, &mut yi[c0..c1]);
        }
    };
    if parts == 1 {
        run(0, y);
        return;
    }
    let yp = SyncPtr::new(y);
    let piece = |i: usize| {
        let j0 = i * per;
        if j0 < n {
            // SAFETY: pieces `[i·per, min((i+1)·per, n))` are disjoint parts of `y`, which is
            // borrowed mutably for the whole call; each index `i` runs exactly once.
            let yi = unsafe { yp.slice(j0, per.min(n - j0)) };
            run(j0, yi);
        }
    };
    if !handoff::run(parts, &piece) {
        // The workers are busy with another caller: split on rayon's pool instead.
        (0..parts).into_par_iter().for_each(piece);
    }
}

/// `y += Σ_i x[i]·W[i, j0 .. j0 + y.len()]`, eight rows at a time, on the best instruction set.
fn rows_into(x: &[f32], b: Mat<'_, f32>, j0: usize, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above); the body is safe code.
            unsafe { rows_avx512(x, b, j0, y) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA (checked just above); the body is safe code.
            unsafe { rows_avx2(x, b, j0, y) };
            return;
        }
    }
    rows_body(x, b, j0, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn rows_avx512(x: &[f32], b: Mat<'_, f32>, j0: usize, y: &mut [f32]) {
    rows_body(x, b, j0, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2(x: &[f32], b: Mat<'_, f32>, j0: usize, y: &mut [f32]) {
    rows_body(x, b, j0, y)
}

/// The loop the compiler vectorizes for each instruction set: `mul_add` becomes one FMA per lane
/// when the enclosing function enables FMA. Eight rows per pass keep one load and one store of
/// `y` per eight FMAs and eight weight streams in flight.
#[inline(always)]
fn rows_body(x: &[f32], b: Mat<'_, f32>, j0: usize, y: &mut [f32]) {
    let w = y.len();
    let k = x.len();
    let row = |i: usize| &b.data[i * b.rs + j0..i * b.rs + j0 + w];
    let mut i = 0;
    while i + 8 <= k {
        let r: [&[f32]; 8] = std::array::from_fn(|t| row(i + t));
        let xs: [f32; 8] = std::array::from_fn(|t| x[i + t]);
        for j in 0..w {
            let mut s = y[j];
            s = xs[0].mul_add(r[0][j], s);
            s = xs[1].mul_add(r[1][j], s);
            s = xs[2].mul_add(r[2][j], s);
            s = xs[3].mul_add(r[3][j], s);
            s = xs[4].mul_add(r[4][j], s);
            s = xs[5].mul_add(r[5][j], s);
            s = xs[6].mul_add(r[6][j], s);
            s = xs[7].mul_add(r[7][j], s);
            y[j] = s;
        }
        i += 8;
    }
    while i < k {
        let (r, xi) = (row(i), x[i]);
        for j in 0..w {
            y[j] = xi.mul_add(r[j], y[j]);
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(n: usize, k: usize, x: &[f32], w: &[f32]) -> Vec<f64> {
        (0..n)
            .map(|j| (0..k).map(|i| x[i] as f64 * w[i * n + j] as f64).sum())
            .collect()
    }

    /// Odd shapes (tails that are not multiples of a vector, of eight rows or of a column block)
    /// agree with an f64 reference, and 1, 2 and 3 threads give the same bits.
    #[test]
    fn gemv_matches_reference_and_is_thread_invariant() {
        for &(k, n) in &[(1usize, 1usize), (3, 17), (5, 129), (576, 2100), (13, 4099)] {
            let x: Vec<f32> = (0..k).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
            let w: Vec<f32> = (0..k * n)
                .map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0)
                .collect();
            let want = reference(n, k, &x, &w);
            let b = Mat {
                data: &w[..],
                rs: n,
                cs: 1,
            };
            let mut first: Option<Vec<f32>> = None;
            for threads in [1, 2, 3] {
                let mut y = vec![f32::NAN; n];
                gemv_f32(n, k, &x, 1, b, &mut y, false, 0.0, 1.0, threads);
                for j in 0..n {
                    let tol = 1e-5 * (1.0 + want[j].abs()) * (k as f64).sqrt();
                    assert!((y[j] as f64 - want[j]).abs() <= tol, "k={k} n={n} j={j}");
                }
                match &first {
                    None => first = Some(y),
                    Some(f) => assert!(f.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits())),
                }
            }
            // Accumulating form: y = 0.5·y + 2·x·W.
            let mut y = vec![1.0f32; n];
            gemv_f32(n, k, &x, 1, b, &mut y, true, 0.5, 2.0, 2);
            for j in 0..n {
                let tol = 2e-5 * (1.0 + want[j].abs()) * (k as f64).sqrt();
                assert!(
                    (y[j] as f64 - (0.5 + 2.0 * want[j])).abs() <= tol,
                    "acc k={k} n={n} j={j}"
                );
            }
        }
    }
}
