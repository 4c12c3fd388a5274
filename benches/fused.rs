//! Fused elementwise kernels: the Cranelift JIT (`ortho_codegen::cpu::jit`) against a
//! straightforward compiled-Rust loop computing the same thing, on memory-bound chains of
//! transformer models, at 1M and 16M elements.
//!
//! Run with `cargo bench --bench fused`. `BENCH_RUNS` (default 15) repetitions per case; the
//! median is reported. Chains:
//! - `silu_gate`: `x * sigmoid(x) * y` (SwiGLU's gate; reads 2 arrays, writes 1);
//! - `rmsnorm_tail`: `x / sqrt(mean + eps) * g` with `mean` per row and `g` along the last
//!   axis (576, SmolLM2's hidden size; reads 1 array, writes 1);
//! - `add_mul`: `(a + b) * c` (no transcendental function; pure bandwidth).
//!
//! The Rust loops are what one writes without thinking about SIMD: `f32::exp` (a libm call per
//! element) for the sigmoid, and the loop the compiler auto-vectorizes where it can. Each is
//! timed on one thread and on two (`std::thread::scope`, halves), like the JIT's `run_with`.
//! Ratios are JIT time / Rust time (below 1 means the JIT is faster). Std only.

use ortho_codegen::cpu::jit::JitKernel;
use ortho_ir::fused::{Binary, Form, FusedElementwise, Instr, Unary};
use std::time::Instant;

fn runs() -> usize {
    std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(15)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(mut f: impl FnMut()) -> f64 {
    f(); // warm: page faults of the output, caches
    median(
        (0..runs())
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
        })
        .collect()
}

struct Case {
    name: &'static str,
    program: FusedElementwise,
    /// Bytes moved per element (inputs read + output written), for GB/s.
    bytes_per_elem: f64,
}

fn silu_rust(x: &[f32], y: &[f32], out: &mut [f32], off: usize) {
    for (i, o) in out.iter_mut().enumerate() {
        let v = x[off + i];
        *o = v * (1.0 / (1.0 + (-v).exp())) * y[off + i];
    }
}

fn rms_rust(x: &[f32], mean: &[f32], g: &[f32], out: &mut [f32], off: usize, row_len: usize) {
    for (r, orow) in out.chunks_mut(row_len).enumerate() {
        let row = off / row_len + r;
        let inv = (mean[row] + 1e-5).sqrt();
        let xrow = &x[row * row_len..(row + 1) * row_len];
        for ((o, &v), &gg) in orow.iter_mut().zip(xrow).zip(g) {
            *o = v / inv * gg;
        }
    }
}

fn add_mul_rust(a: &[f32], b: &[f32], c: &[f32], out: &mut [f32], off: usize) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = (a[off + i] + b[off + i]) * c[off + i];
    }
}

fn main() {
    use Binary as B;
    use Instr as I;
    use Unary as U;
    let cases = [
        Case {
            name: "silu_gate",
            program: FusedElementwise {
                program: vec![
                    I::Input(0),
                    I::Unary(U::Sigmoid, 0),
                    I::Binary(B::Mul, 0, 1),
                    I::Input(1),
                    I::Binary(B::Mul, 2, 3),
                ],
                forms: vec![Form::Full, Form::Full],
            },
            bytes_per_elem: 12.0,
        },
        Case {
            name: "rmsnorm_tail",
            program: FusedElementwise {
                program: vec![
                    I::Input(0),
                    I::Const(1e-5),
                    I::Binary(B::Add, 0, 1),
                    I::Unary(U::Sqrt, 2),
                    I::Input(1),
                    I::Binary(B::Div, 4, 3),
                    I::Input(2),
                    I::Binary(B::Mul, 5, 6),
                ],
                forms: vec![Form::PerRow, Form::Full, Form::LastAxis],
            },
            bytes_per_elem: 8.0,
        },
        Case {
            name: "add_mul",
            program: FusedElementwise {
                program: vec![
                    I::Input(0),
                    I::Input(1),
                    I::Binary(B::Add, 0, 1),
                    I::Input(2),
                    I::Binary(B::Mul, 2, 3),
                ],
                forms: vec![Form::Full, Form::Full, Form::Full],
            },
            bytes_per_elem: 16.0,
        },
    ];
    let row_len = 576;
    println!(
        "fused elementwise kernels: Cranelift JIT vs a compiled-Rust loop (median of {} runs)",
        runs()
    );
    println!(
        "{:<13} {:>9} {:>8} | {:>10} {:>10} {:>7} | {:>10} {:>10} {:>7} | {:>8}",
        "chain",
        "elements",
        "compile",
        "jit 1t",
        "rust 1t",
        "ratio",
        "jit 2t",
        "rust 2t",
        "ratio",
        "jit GB/s"
    );
    for case in &cases {
        let t = Instant::now();
        let k = JitKernel::compile(&case.program).expect("compile");
        let compile_ms = t.elapsed().as_secs_f64() * 1e3;
        for n in [1usize << 20, 1 << 24] {
            let n = n / row_len * row_len; // whole rows for the row-wise chain
            let rows = n / row_len;
            let x = data(n, 1);
            let y = data(n, 2);
            let z = data(n, 3);
            let mean: Vec<f32> = data(rows, 4).iter().map(|v| v.abs() + 0.1).collect();
            let g = data(row_len, 5);
            let mut out = vec![0f32; n];
            let ins: Vec<&[f32]> = match case.name {
                "silu_gate" => vec![&x, &y],
                "rmsnorm_tail" => vec![&mean, &x, &g],
                _ => vec![&x, &y, &z],
            };
            let jit1 = time(|| k.run_with(&ins, &mut out, n, row_len, 1).expect("run"));
            let jit2 = time(|| k.run_with(&ins, &mut out, n, row_len, 2).expect("run"));
            let jit_out = out.clone();
            let rust = |off: usize, o: &mut [f32]| match case.name {
                "silu_gate" => silu_rust(&x, &y, o, off),
                "rmsnorm_tail" => rms_rust(&x, &mean, &g, o, off, row_len),
                _ => add_mul_rust(&x, &y, &z, o, off),
            };
            let rust1 = time(|| rust(0, &mut out));
            // Two halves on whole rows, as the JIT splits row-wise programs.
            let rust2 = time(|| {
                let mid = (rows / 2) * row_len;
                let (a, b) = out.split_at_mut(mid);
                std::thread::scope(|s| {
                    s.spawn(|| rust(0, a));
                    rust(mid, b);
                });
            });
            // The two must agree (the sigmoid differs by a few ulps between libm and the JIT).
            let worst = jit_out
                .iter()
                .zip(&out)
                .map(|(a, b)| (a - b).abs() / b.abs().max(1e-3))
                .fold(0f32, f32::max);
            assert!(
                worst < 1e-5,
                "{}: JIT and Rust disagree by {worst}",
                case.name
            );
            println!(
                "{:<13} {:>9} {:>6.2}ms | {:>8.2}ms {:>8.2}ms {:>7.2} | {:>8.2}ms {:>8.2}ms {:>7.2} | {:>8.1}",
                case.name,
                n,
                compile_ms,
                jit1 * 1e3,
                rust1 * 1e3,
                jit1 / rust1,
                jit2 * 1e3,
                rust2 * 1e3,
                jit2 / rust2,
                case.bytes_per_elem * n as f64 / jit2 / 1e9
            );
        }
    }
}
