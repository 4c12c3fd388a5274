//! Forward latency of factorized SmolLM2-135M (decomposed fixture) against the dense model in
//! the same run, on the CPU engine with the fused `ortho.FactorizedLinear` kernel (the op is
//! kept, not lowered).
//!
//! `cargo bench --bench factorize` (release build, fixtures prepared). For each configuration
//! (dense; `kron-factorize` and `lowrank-factorize` at 10 / 25 / 50 % of the blocks' linear
//! parameters removed) it prints the parameters and bytes of the blocks' linears, their
//! multiply-adds per token, and the median forward latency at 1 × 1 token (memory-bound) and
//! 1 × 128 tokens, with the ratio to dense (< 1: faster than dense).
//!
//! Environment: ORTHO_BENCH_RUNS (timed runs per cell, default 5), ORTHO_BENCH_BUDGETS
//! (e.g. `0.5`), ORTHO_BENCH_KINDS (e.g. `lowrank`), ORTHO_BENCH_THREADS (default 2).
//! The machine is shared: read ratios, not absolute times, and expect ±20 %.

use ortho_codegen::cpu::{HostTensor, Plan, PlanOptions};
use ortho_ir::op_ortho::OrthoOp;
use ortho_ir::{Module, Op};
use ortho_passes::factorize::apply::FactorizeStats;
use ortho_passes::transforms::kron_factorize::{kron_factorize, KronFactorizeOptions};
use ortho_passes::transforms::lowrank_factorize::{lowrank_factorize, LowrankFactorizeOptions};
use std::path::PathBuf;
use std::time::Instant;

fn fixtures() -> PathBuf {
    std::env::var_os("ORTHO_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/ortho-opt/fixtures")
        })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Median forward time in ms at `b × s` tokens.
fn latency(m: &Module, threads: usize, b: usize, s: usize, runs: usize) -> f64 {
    let opts = PlanOptions {
        threads,
        ..PlanOptions::default()
    };
    let plan = Plan::compile_with(m, &opts).expect("compile");
    let ids: Vec<i64> = (0..b * s).map(|i| (i as i64) * 37 % 1000 + 100).collect();
    let run = || {
        let feed = HostTensor::from_vec(vec![b, s], ids.clone()).expect("feed");
        let t = Instant::now();
        plan.run(&[("input_ids", feed)]).expect("run");
        t.elapsed().as_secs_f64() * 1e3
    };
    run();
    median((0..runs).map(|_| run()).collect())
}

/// Bytes of the factor constants of the factorized linears (what a memory-bound forward reads
/// in place of the dense weights).
fn factor_bytes(m: &Module) -> u64 {
    let g = m.main_graph();
    let mut bytes = 0;
    for n in g.node_ids() {
        let node = g.node(n);
        if let Op::Ortho(OrthoOp::Factorized(_)) = node.op {
            for v in node.operands().iter().skip(1).flatten() {
                if let Op::Const(t) = g.node(v.node).op {
                    bytes += m.tensor(t).byte_len();
                }
            }
        }
    }
    bytes
}

fn main() {
    let model = fixtures().join("smollm2-135m/decomposed.onnx");
    if !model.exists() {
        eprintln!(
            "skipped: {} is missing (scripts/fixtures.sh)",
            model.display()
        );
        return;
    }
    let runs: usize = std::env::var("ORTHO_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let threads: usize = std::env::var("ORTHO_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let budgets: Vec<f64> = env_list("ORTHO_BENCH_BUDGETS", "0.1,0.25,0.5")
        .iter()
        .filter_map(|b| b.parse().ok())
        .collect();
    let kinds = env_list("ORTHO_BENCH_KINDS", "kron,lowrank");
    let dense = ortho_frontends::import_file(&model).expect("import");
    let d1 = latency(&dense, threads, 1, 1, runs);
    let d128 = latency(&dense, threads, 1, 128, runs);
    println!(
        "{threads} threads, median of {runs}; ratio = time / dense time in this run; linears = the blocks' q k v o gate up down"
    );
    println!(
        "{:<18} {:>12} {:>10} {:>9} {:>10} {:>8} {:>11} {:>8}",
        "config", "params", "MiB", "MACs %", "1x1 ms", "ratio", "1x128 ms", "ratio"
    );
    println!(
        "{:<18} {:>12} {:>10} {:>9} {:>10.2} {:>8} {:>11.1} {:>8}",
        "dense", "-", "-", "100.0", d1, "1.00", d128, "1.00"
    );
    for kind in &kinds {
        for &b in &budgets {
            let mut m = ortho_frontends::import_file(&model).expect("import");
            let s: FactorizeStats = match kind.as_str() {
                "kron" => kron_factorize(
                    &mut m,
                    &KronFactorizeOptions {
                        budget: b,
                        ..KronFactorizeOptions::default()
                    },
                    None,
                ),
                _ => lowrank_factorize(
                    &mut m,
                    &LowrankFactorizeOptions {
                        budget: b,
                        ..LowrankFactorizeOptions::default()
                    },
                    None,
                ),
            }
            .expect("factorize");
            let t1 = latency(&m, threads, 1, 1, runs);
            let t128 = latency(&m, threads, 1, 128, runs);
            // The fixture's weights are f32.
            let dense_bytes = 4 * s.dense_params as u64;
            let fb = factor_bytes(&m);
            println!(
                "{:<18} {:>12} {:>10.1} {:>9.1} {:>10.2} {:>8.2} {:>11.1} {:>8.2}",
                format!("{kind} -{:.0}%", b * 100.0),
                s.factor_params,
                fb as f64 / (1 << 20) as f64,
                100.0 * s.factor_macs as f64 / s.dense_macs as f64,
                t1,
                t1 / d1,
                t128,
                t128 / d128
            );
            println!(
                "{:<18} dense linears {} params, {:.1} MiB; bytes ratio B_dense/B_fact = {:.2}",
                "",
                s.dense_params,
                dense_bytes as f64 / (1 << 20) as f64,
                dense_bytes as f64 / fb.max(1) as f64
            );
        }
    }
}
