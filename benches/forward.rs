//! Forward-pass latency of the CPU engine on the SmolLM2-135M fixtures, side by side with
//! onnxruntime in the same run, and GEMM throughput against this machine's FMA peak.
//!
//! `cargo bench --bench forward` (release build, fixtures prepared). For each model
//! (decomposed, fused), size (batch 1 × 128 and 4 × 512 tokens) and thread count (1, 2) it
//! prints the median latency of ortho-opt and of onnxruntime (CPU provider, default graph
//! optimizations, same thread count, same token ids as `fixtures/tools/bench_ort.py`) and
//! their ratio; < 1 means ortho-opt is faster. Then GEMM GFLOP/s of the shapes the model runs
//! and of a 2048³ product, against the 2-core FMA peak (~96 GFLOP/s per core on Zen 3 at the
//! machine's clock, 192 on two).
//!
//! Environment: ORTHO_BENCH_RUNS (timed runs per cell, default 5; 4 × 512 uses half),
//! ORTHO_BENCH_SIZES (e.g. `1x128,4x512`), ORTHO_BENCH_MODELS (e.g. `fused`),
//! ORTHO_BENCH_PROFILE=1 (per-op time of one warm run), ORTHO_BENCH_NO_ORT=1.
//! The machine is shared: read ratios, not absolute times, and expect ±20 %.

use ortho_codegen::cpu::kernels::matmul::{gemm_into, Mat};
use ortho_codegen::cpu::{HostTensor, Plan};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn fixtures() -> PathBuf {
    std::env::var_os("ORTHO_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/ortho-opt/fixtures")
        })
}

fn python() -> PathBuf {
    std::env::var_os("ORTHO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| fixtures().join("venv/bin/python"))
}

/// The token ids bench_ort.py uses, for `b` rows.
fn ids(b: usize, s: usize) -> Vec<i64> {
    (0..b)
        .flat_map(|_| (0..s as i64).map(|i| i * 37 % 1000 + 100))
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

const ORT_SNIPPET: &str = r#"
import sys, time, statistics, json
import numpy as np, onnxruntime as ort
ort.set_default_logger_severity(3)
path = sys.argv[1]; cells = json.loads(sys.argv[2])
res = {}
sessions = {}
for b, s, threads, runs in cells:
    if threads not in sessions:
        so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
        sessions[threads] = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    sess = sessions[threads]
    x = np.tile((np.arange(s, dtype=np.int64) * 37 % 1000 + 100)[None], (b, 1))
    for _ in range(2): sess.run(None, {"input_ids": x})
    lat = []
    for _ in range(runs):
        t = time.perf_counter(); sess.run(None, {"input_ids": x}); lat.append(1000 * (time.perf_counter() - t))
    res[f"{b}x{s}x{threads}"] = statistics.median(lat)
print(json.dumps(res))
"#;

fn ort_latencies(
    model: &Path,
    cells: &[(usize, usize, usize, usize)],
) -> Option<serde_json::Value> {
    let spec = serde_json::to_string(cells).ok()?;
    let out = Command::new(python())
        .arg("-c")
        .arg(ORT_SNIPPET)
        .arg(model)
        .arg(spec)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "onnxruntime failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn bench_model(name: &str, sizes: &[(usize, usize)], runs: usize, profile: bool, no_ort: bool) {
    let path = fixtures().join(format!("smollm2-135m/{name}.onnx"));
    if !path.exists() {
        eprintln!(
            "skipping {name}: {} not found (run scripts/fixtures.sh)",
            path.display()
        );
        return;
    }
    let t0 = Instant::now();
    let m = ortho_frontends::import_file(&path).expect("import");
    let mut plan = Plan::compile(&m).expect("compile");
    println!(
        "\n{name}.onnx: import + compile {:.2} s, {} steps",
        t0.elapsed().as_secs_f64(),
        plan.num_steps()
    );
    let mut cells = Vec::new();
    let mut ours = Vec::new();
    for &(b, s) in sizes {
        let n = if b * s > 1024 {
            runs.div_ceil(2).max(2)
        } else {
            runs
        };
        for threads in [1usize, 2] {
            plan.set_threads(threads);
            let x = HostTensor::from_vec(vec![b, s], ids(b, s)).expect("ids");
            let feeds = [("input_ids", x)];
            for _ in 0..2 {
                plan.run(&feeds).expect("run");
            }
            let mut lat = Vec::new();
            for _ in 0..n {
                let t = Instant::now();
                plan.run(&feeds).expect("run");
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            if profile {
                let (_, p) = plan.run_profiled(&feeds).expect("profile");
                println!(
                    "  profile {b}x{s}, {threads} thread(s), {:.1} ms:",
                    p.total.as_secs_f64() * 1e3
                );
                for (op, d, c) in p.ops.iter().take(8) {
                    println!(
                        "    {op:<20} {:>8.2} ms {c:>5} calls",
                        d.as_secs_f64() * 1e3
                    );
                }
            }
            ours.push(((b, s, threads), median(lat)));
            cells.push((b, s, threads, n));
        }
    }
    drop(plan);
    let ort = if no_ort {
        None
    } else {
        ort_latencies(&path, &cells)
    };
    println!(
        "  {:<10} {:>7} {:>14} {:>16} {:>9}",
        "tokens", "threads", "ortho-opt ms", "onnxruntime ms", "ratio"
    );
    for ((b, s, threads), ms) in ours {
        let o = ort
            .as_ref()
            .and_then(|j| j.get(format!("{b}x{s}x{threads}")))
            .and_then(|v| v.as_f64());
        match o {
            Some(o) => println!(
                "  {:<10} {threads:>7} {ms:>14.1} {o:>16.1} {:>8.2}x",
                format!("{b}x{s}"),
                ms / o
            ),
            None => println!(
                "  {:<10} {threads:>7} {ms:>14.1} {:>16} {:>9}",
                format!("{b}x{s}"),
                "-",
                "-"
            ),
        }
    }
}

fn gemm_throughput() {
    println!("\nGEMM (f32, gemm crate) GFLOP/s; FMA peak ≈ 96 per core, 192 on two");
    println!(
        "  {:<22} {:>9} {:>9} {:>12}",
        "m x k x n", "1 thread", "2 threads", "2t % of 192"
    );
    for (m, k, n) in [
        (128, 576, 576),
        (128, 576, 1536),
        (128, 1536, 576),
        (128, 576, 49152),
        (2048, 576, 1536),
        (2048, 2048, 2048),
    ] {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut c = vec![0.0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        let mut g = [0.0f64; 2];
        for (ti, threads) in [1usize, 2].into_iter().enumerate() {
            let reps = ((2e10 / flops) as usize).clamp(2, 200);
            let mut best = f64::INFINITY;
            for _ in 0..3 {
                let t = Instant::now();
                for _ in 0..reps {
                    gemm_into(
                        m,
                        n,
                        k,
                        Mat {
                            data: &a,
                            rs: k,
                            cs: 1,
                        },
                        Mat {
                            data: &b,
                            rs: n,
                            cs: 1,
                        },
                        &mut c,
                        n,
                        false,
                        0.0,
                        1.0,
                        threads,
                    );
                }
                best = best.min(t.elapsed().as_secs_f64() / reps as f64);
            }
            g[ti] = flops / best / 1e9;
        }
        println!(
            "  {:<22} {:>9.1} {:>9.1} {:>11.0}%",
            format!("{m} x {k} x {n}"),
            g[0],
            g[1],
            g[1] / 192.0 * 100.0
        );
    }
}

fn main() {
    // `cargo bench` passes --bench; a filter argument selects parts: "gemm" or "forward".
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |p: &str| args.is_empty() || args.iter().any(|a| p.contains(a.as_str()));
    let runs: usize = std::env::var("ORTHO_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let sizes: Vec<(usize, usize)> = std::env::var("ORTHO_BENCH_SIZES")
        .unwrap_or_else(|_| "1x128,4x512".into())
        .split(',')
        .filter_map(|c| {
            c.split_once('x')
                .and_then(|(b, s)| Some((b.trim().parse().ok()?, s.trim().parse().ok()?)))
        })
        .collect();
    let models = std::env::var("ORTHO_BENCH_MODELS").unwrap_or_else(|_| "decomposed,fused".into());
    let profile = std::env::var_os("ORTHO_BENCH_PROFILE").is_some();
    let no_ort = std::env::var_os("ORTHO_BENCH_NO_ORT").is_some();
    if want("forward") {
        for m in models.split(',') {
            bench_model(m.trim(), &sizes, runs, profile, no_ort);
        }
    }
    if want("gemm") {
        gemm_throughput();
    }
}
