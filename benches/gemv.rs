//! Decode-step weight streaming (issue 18): the one-row products of one SmolLM2-135M decode step
//! (30 blocks of q, k, v, o, gate, up, down plus the 49,152-wide head; 538 MB of f32 weights, far
//! beyond the caches) through the `gemm` crate's path (as the engine ran it before) and through
//! `kernels::gemv`, on 1 and 2 threads, side by side: ms per step, GB/s, and the ratio.
//!
//! Run with `cargo bench --bench gemv`. Environment: `BENCH_REPS` (default 15, median reported).

use ortho_codegen::cpu::kernels::gemv::{gemv_f32, set_enabled};
use ortho_codegen::cpu::kernels::matmul::{gemm_into, Mat};
use std::time::Instant;

fn main() {
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let (d, f, kv, vocab, layers) = (576usize, 1536usize, 192usize, 49152usize, 30usize);
    let mut shapes = Vec::new();
    for _ in 0..layers {
        shapes.extend([(d, d), (d, kv), (d, kv), (d, d), (d, f), (d, f), (f, d)]);
    }
    shapes.push((d, vocab));
    // `BENCH_SHAPES=head`: five head-sized products only (fork/join cost amortized), to see what
    // two threads can stream when the split is worth it.
    // `BENCH_SHAPES=KxN,...`: 30 copies of each listed shape instead.
    match std::env::var("BENCH_SHAPES").as_deref() {
        Ok("head") => shapes = vec![(d, vocab); 5],
        Ok(list) => {
            shapes = list
                .split(',')
                .filter_map(|p| p.split_once('x'))
                .filter_map(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
                .flat_map(|s| std::iter::repeat_n(s, 30))
                .collect();
        }
        Err(_) => {}
    }
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    // `BENCH_HUGE=1`: the weights in one allocation advised as transparent huge pages.
    let huge = std::env::var("BENCH_HUGE").as_deref() == Ok("1");
    let total: usize = shapes.iter().map(|&(k, n)| k * n).sum();
    let mut arena: Vec<f32> = Vec::with_capacity(total + (1 << 19));
    let off = if huge {
        let p = arena.as_mut_ptr() as usize;
        let a = (p + (1 << 21) - 1) & !((1 << 21) - 1);
        // SAFETY: the range lies inside the allocation's capacity; advice only.
        unsafe { libc::madvise(a as *mut libc::c_void, total * 4, libc::MADV_HUGEPAGE) };
        (a - p) / 4
    } else {
        0
    };
    arena.resize(off, 0.0);
    for _ in 0..total {
        arena.push(rnd());
    }
    let mut weights: Vec<&[f32]> = Vec::new();
    let mut at = off;
    for &(k, n) in &shapes {
        weights.push(&arena[at..at + k * n]);
        at += k * n;
    }
    let bytes: usize = shapes.iter().map(|&(k, n)| k * n * 4).sum();
    let x: Vec<f32> = (0..f).map(|_| rnd()).collect();
    let mut y = vec![0f32; vocab];
    println!(
        "one decode step: {} products, {:.1} MB of weights, median of {reps}",
        shapes.len(),
        bytes as f64 / 1e6
    );
    println!(
        "{:<8} {:>7} {:>12} {:>8} {:>12} {:>8} {:>8}",
        "threads", "", "gemm ms", "GB/s", "gemv ms", "GB/s", "ratio"
    );
    for threads in [1usize, 2] {
        let mut step = |which: u8| {
            let t = Instant::now();
            for (w, &(k, n)) in weights.iter().zip(&shapes) {
                let b = Mat {
                    data: &w[..],
                    rs: n,
                    cs: 1,
                };
                if which == 0 {
                    set_enabled(false);
                    let a = Mat {
                        data: &x[..],
                        rs: k,
                        cs: 1,
                    };
                    gemm_into(1, n, k, a, b, &mut y[..n], n, false, 0.0, 1.0, threads);
                    set_enabled(true);
                } else {
                    gemv_f32(n, k, &x, 1, b, &mut y[..n], false, 0.0, 1.0, threads);
                }
            }
            t.elapsed().as_secs_f64() * 1e3
        };
        // Interleave the two so that drift in the machine's load hits both alike.
        let (mut g, mut v) = (Vec::new(), Vec::new());
        step(0);
        step(1);
        for _ in 0..reps {
            g.push(step(0));
            v.push(step(1));
        }
        g.sort_by(f64::total_cmp);
        v.sort_by(f64::total_cmp);
        let (gm, vm) = (g[reps / 2], v[reps / 2]);
        let gbs = |ms: f64| bytes as f64 / 1e6 / ms;
        println!(
            "{:<8} {:>7} {:>12.2} {:>8.1} {:>12.2} {:>8.1} {:>7.2}x",
            threads,
            "",
            gm,
            gbs(gm),
            vm,
            gbs(vm),
            gm / vm
        );
    }
}
