//! One training step (forward + backward + AdamW) of SmolLM2-135M (decomposed spelling) on the
//! CPU engine next to PyTorch doing the same step, and the 2-block prefix's full gradient next
//! to PyTorch's (issue 15, deliverables 5 and 1).
//!
//! `cargo bench --bench train` (release build, fixtures prepared). For each size (ORTHO_BENCH_SIZES,
//! default `1x128,4x128`) both sides get the same weights (the ONNX initializers; PyTorch reads
//! them with the `onnx` package), the same token windows, every weight of the model trainable,
//! mean token cross-entropy, global-norm clip 1.0, AdamW (lr 1e-5, betas 0.9/0.999, eps 1e-8, no
//! weight decay), the same thread count (ORTHO_BENCH_THREADS, default: the machine's cores), one
//! warm-up step and ORTHO_BENCH_RUNS (default 2) timed steps. PyTorch's side is
//! `scripts/train_torch.py`, run with ORTHO_TORCH_PYTHON (default
//! `~/.cache/ortho-opt/torch-venv/bin/python`); without it the comparison is skipped with the
//! reason printed. ORTHO_BENCH_PROFILE=1: one more forward+backward of ours timed per op type.
//! ORTHO_BENCH_GRAD=0 skips the gradient comparison.
//!
//! Peak memory: each side runs each size in its own process (ours: this binary re-run with
//! ORTHO_TRAIN_BENCH_CHILD=BxS). "whole" is the process's peak resident set over its life
//! (loading the ONNX file included); "steps" is VmHWM after resetting it (`/proc/self/clear_refs`
//! ← 5) once the model, plan and optimizer are built: the peak of the training steps alone.

use ortho_codegen::cpu::{HostTensor, Plan};
use ortho_ir::{DType, Op};
use ortho_opt::train::{TokenBatch, TrainConfig, Trainer, WindowSampler};
use ortho_passes::autodiff::{autodiff, parameters_as_inputs, select_params, AutodiffSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const CHILD: &str = "ORTHO_TRAIN_BENCH_CHILD";

fn fixtures() -> PathBuf {
    std::env::var_os("ORTHO_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache/ortho-opt/fixtures"))
}

fn home() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_default())
}

fn model_path() -> PathBuf {
    fixtures().join("smollm2-135m/decomposed.onnx")
}

fn threads() -> usize {
    std::env::var("ORTHO_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn runs() -> usize {
    std::env::var("ORTHO_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2)
}

fn parse_size(size: &str) -> Option<(usize, usize)> {
    let (b, s) = size.split_once('x')?;
    Some((b.trim().parse().ok()?, s.trim().parse().ok()?))
}

/// The warm-up batch and the timed ones: seeded windows over a fixed cycle of token ids (what
/// is measured is time, not loss), the same for both sides.
fn batches(b: usize, s: usize, n: usize) -> Vec<TokenBatch> {
    let tokens: Vec<i64> = (0..8192i64).map(|i| (i * 7919) % 49152).collect();
    let mut data = WindowSampler::new(tokens, b, s, 1).expect("sampler");
    (0..n).map(|_| data.next_batch()).collect()
}

/// A field of /proc/self/status in KiB (VmHWM, VmRSS).
fn status_kib(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Our side of one size, in this (child) process: prints one JSON line.
fn child(size: &str) {
    let (b, s) = parse_size(size).expect("size BxS");
    let runs = runs();
    let m = ortho_frontends::import_file(&model_path()).expect("imports the fixture");
    let t0 = Instant::now();
    let cfg = TrainConfig {
        trainable: vec!["model.*".into()],
        lr: 1e-5,
        total_steps: 100,
        threads: Some(threads()),
        ..TrainConfig::default()
    };
    let mut tr = Trainer::new(m, cfg).expect("trainer");
    let compile = t0.elapsed().as_secs_f64();
    let params: usize = tr.parameters().map(|(_, _, v)| v.len()).sum();
    let data = batches(b, s, 1 + runs);
    let setup_hwm = status_kib("VmHWM");
    // Resetting the high-water mark makes the next VmHWM the peak of the steps alone.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let warm = tr.step(&data[..1]).expect("warm-up step");
    let (mut secs, mut run_secs, mut update_secs, mut losses) = (vec![], vec![], vec![], vec![]);
    for w in &data[1..] {
        let t = Instant::now();
        let r = tr.step(std::slice::from_ref(w)).expect("step");
        secs.push(t.elapsed().as_secs_f64());
        run_secs.push(r.run_secs);
        update_secs.push(r.update_secs);
        losses.push(r.loss);
    }
    let steps_hwm = status_kib("VmHWM");
    // Where the forward+backward time goes, per op type (one more run, after the timed ones).
    let profile: Vec<Value> = if std::env::var("ORTHO_BENCH_PROFILE").is_ok_and(|v| v == "1") {
        let (_, prof) = tr.profile(&data[0]).expect("profiled run");
        let mut rows = vec![json!(["total", prof.total.as_secs_f64(), 0])];
        rows.extend(
            prof.ops
                .iter()
                .map(|(op, d, n)| json!([op, d.as_secs_f64(), n])),
        );
        rows
    } else {
        Vec::new()
    };
    println!(
        "{}",
        json!({
            "params": params,
            "compile_secs": compile,
            "warmup_loss": warm.loss,
            "secs": secs,
            "run_secs": run_secs,
            "update_secs": update_secs,
            "losses": losses,
            "peak_rss_kib": setup_hwm.max(steps_hwm),
            "step_hwm_kib": if reset { steps_hwm } else { 0 },
            "profile": profile,
        })
    );
}

/// The last line of a process's stdout that parses as a JSON object.
fn last_json(stdout: &[u8]) -> Option<Value> {
    String::from_utf8_lossy(stdout).lines().rev().find_map(|l| {
        serde_json::from_str::<Value>(l)
            .ok()
            .filter(Value::is_object)
    })
}

fn run_json(cmd: &mut Command) -> Result<Value, String> {
    let out = cmd.output().map_err(|e| format!("cannot start: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        return Err(format!(
            "exit {}: {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ));
    }
    last_json(&out.stdout).ok_or_else(|| "printed no JSON line".into())
}

/// The PyTorch interpreter, or why there is none.
fn torch_python() -> Result<PathBuf, String> {
    let p = std::env::var_os("ORTHO_TORCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache/ortho-opt/torch-venv/bin/python"));
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "no PyTorch python at {} (set ORTHO_TORCH_PYTHON)",
            p.display()
        ))
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/train_torch.py")
}

fn f64s(v: &Value, key: &str) -> Vec<f64> {
    v[key]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn mib(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(0.0) / 1024.0
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "—".into()
    }
}

fn compare_step(size: &str, py: &Result<PathBuf, String>) {
    let Some((b, s)) = parse_size(size) else {
        eprintln!("bad size {size}");
        return;
    };
    let runs = runs();
    let exe = std::env::current_exe().expect("own path");
    let ours = match run_json(Command::new(exe).env(CHILD, size)) {
        Ok(v) => v,
        Err(e) => {
            println!("{size}: our step failed: {e}");
            return;
        }
    };
    let theirs = py.clone().and_then(|py| {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let ids = dir.path().join("ids.i64");
        let bytes: Vec<u8> = batches(b, s, 1 + runs)
            .iter()
            .flat_map(|w| w.ids.iter().flat_map(|x| x.to_le_bytes()))
            .collect();
        std::fs::write(&ids, bytes).map_err(|e| e.to_string())?;
        run_json(
            Command::new(py)
                .arg(script())
                .arg("step")
                .arg("--model")
                .arg(model_path())
                .arg("--ids")
                .arg(&ids)
                .args(["--batch", &b.to_string(), "--seqlen", &s.to_string()])
                .args(["--threads", &threads().to_string()])
                .args(["--runs", &runs.to_string()]),
        )
    });
    let secs = f64s(&ours, "secs");
    println!(
        "SmolLM2-135M train step {size}, {} threads, {} trainable weights, compile {:.2} s",
        threads(),
        ours["params"],
        ours["compile_secs"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  ortho-opt: steps {:?} s (forward+backward {:?}, AdamW {:?}), warm-up loss {:.5}, losses {:?}",
        secs.iter().map(|x| (x * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
        f64s(&ours, "run_secs").iter().map(|x| (x * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
        f64s(&ours, "update_secs").iter().map(|x| (x * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
        ours["warmup_loss"].as_f64().unwrap_or(f64::NAN),
        f64s(&ours, "losses"),
    );
    if let Some(rows) = ours["profile"].as_array().filter(|r| !r.is_empty()) {
        println!("  ortho-opt forward+backward by op type (ORTHO_BENCH_PROFILE=1, one run):");
        for r in rows.iter().take(16) {
            println!(
                "    {:<22} {:>8.3} s  {:>5} calls",
                r[0].as_str().unwrap_or("?"),
                r[1].as_f64().unwrap_or(0.0),
                r[2]
            );
        }
    }
    match theirs {
        Err(e) => println!("  PyTorch side skipped: {e}"),
        Ok(t) => {
            let tsecs = f64s(&t, "secs");
            let parts: Vec<String> = t["forward_backward_adamw_secs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let v: Vec<String> = p
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|x| format!("{:.3}", x.as_f64().unwrap_or(0.0)))
                        .collect();
                    v.join("/")
                })
                .collect();
            println!(
                "  PyTorch {} ({} threads): steps {:?} s (forward/backward/clip+AdamW {}), warm-up loss {:.5}, losses {:?}",
                t["torch"].as_str().unwrap_or("?"),
                t["threads"],
                tsecs.iter().map(|x| (x * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
                parts.join(", "),
                t["warmup_loss"].as_f64().unwrap_or(f64::NAN),
                f64s(&t, "losses"),
            );
            println!("  | {size} | ortho-opt | PyTorch | ours/torch |");
            println!(
                "  | step time (mean) | {:.3} s | {:.3} s | {} |",
                mean(&secs),
                mean(&tsecs),
                ratio(mean(&secs), mean(&tsecs))
            );
            for (label, key) in [
                ("peak RSS, steps", "step_hwm_kib"),
                ("peak RSS, whole", "peak_rss_kib"),
            ] {
                println!(
                    "  | {label} | {:.0} MiB | {:.0} MiB | {} |",
                    mib(&ours, key),
                    mib(&t, key),
                    ratio(mib(&ours, key), mib(&t, key))
                );
            }
        }
    }
}

/// The full f32 gradient of the 2-block prefix (`ortho_opt::train_prefix`, the same prefix as
/// `tests/autodiff_real.rs`) w.r.t. the embedding and every weight of blocks 0 and 1, ours
/// against PyTorch's, norm-wise relative error per tensor.
fn compare_gradients(py: &Result<PathBuf, String>) {
    let py = match py {
        Ok(p) => p,
        Err(e) => {
            println!("2-block prefix gradient vs PyTorch skipped: {e}");
            return;
        }
    };
    let (seq, width) = (32usize, 576usize);
    let mut m = ortho_frontends::import_file(&model_path()).expect("imports the fixture");
    ortho_opt::train_prefix::prefix_with_probe(&mut m, 2, width, DType::F32).expect("prefix");
    let patterns: Vec<String> = [
        "model.embed_tokens.weight",
        "model.layers.0.*",
        "model.layers.1.*",
    ]
    .map(String::from)
    .to_vec();
    let params = select_params(&m, &patterns);
    let mut weights = Vec::new();
    for &p in &params {
        let g = m.main_graph();
        let Op::Const(t) = g.node(p.node).op else {
            panic!("a parameter is an initializer");
        };
        weights.push(HostTensor::from_tensor_data(m.tensor(t)).expect("weights"));
    }
    let names = parameters_as_inputs(&mut m, &params);
    let r = autodiff(
        &mut m,
        &AutodiffSpec {
            loss: "loss".into(),
            trainable: names.clone(),
        },
    )
    .expect("autodiff of the prefix");
    let mut plan = Plan::compile(&m).expect("compiles");
    plan.set_threads(threads());
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    let ids: Vec<i64> = (0..seq).map(|_| rng.random_range(0..49152i64)).collect();
    let probe: Vec<f32> = (0..seq * width)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let mut feeds: Vec<(&str, HostTensor)> = vec![
        (
            "input_ids",
            HostTensor::from_vec(vec![1, seq], ids.clone()).expect("ids"),
        ),
        (
            "probe",
            HostTensor::from_vec(vec![1, seq, width], probe.clone()).expect("probe"),
        ),
    ];
    for (n, w) in names.iter().zip(weights) {
        feeds.push((n.as_str(), w));
    }
    let out = plan.run(&feeds).expect("runs");
    let dir = tempfile::tempdir().expect("temporary directory");
    let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(
        dir.path().join("ids.i64"),
        ids.iter()
            .flat_map(|x| x.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .expect("write ids");
    std::fs::write(dir.path().join("probe.f32"), le(&probe)).expect("write probe");
    let mut meta = Vec::new();
    for (i, (pname, gname)) in r.grads.iter().enumerate() {
        let t = &out
            .iter()
            .find(|(n, _)| n == gname)
            .unwrap_or_else(|| panic!("no gradient output for {pname}"))
            .1;
        let v: Vec<f32> = t.to_f64_vec().into_iter().map(|x| x as f32).collect();
        std::fs::write(dir.path().join(format!("{i}.f32")), le(&v)).expect("write gradient");
        meta.push(json!([pname, t.shape()]));
    }
    let loss = out
        .iter()
        .find(|(n, _)| n == "loss")
        .map(|(_, t)| t.to_f64_vec()[0])
        .unwrap_or(f64::NAN);
    std::fs::write(
        dir.path().join("meta.json"),
        json!({"seq": seq, "params": meta}).to_string(),
    )
    .expect("write meta");
    let t = match run_json(
        Command::new(py)
            .arg(script())
            .arg("grad")
            .arg("--model")
            .arg(model_path())
            .arg("--dir")
            .arg(dir.path())
            .args(["--threads", &threads().to_string()]),
    ) {
        Ok(t) => t,
        Err(e) => {
            println!("2-block prefix gradient vs PyTorch skipped: {e}");
            return;
        }
    };
    println!(
        "2-block prefix (1×{seq} tokens, loss Σ h⊙probe) in f32: loss ours {loss:.6e}, PyTorch {:.6e}",
        t["loss"].as_f64().unwrap_or(f64::NAN)
    );
    let rows = t["tensors"].as_array().cloned().unwrap_or_default();
    let mut worst = ("", 0.0f64);
    for row in &rows {
        let (n, rel) = (
            row["name"].as_str().unwrap_or("?"),
            row["rel"].as_f64().unwrap_or(f64::NAN),
        );
        println!(
            "  {n:<48} ‖g‖ {:>10.4e}  relative error {rel:.3e}",
            row["norm"].as_f64().unwrap_or(0.0)
        );
        // Written so that a NaN error counts as the worst.
        if !(rel <= worst.1) {
            worst = (n, rel);
        }
    }
    println!(
        "  worst of {} tensors: {} {:.3e} (goal ≤ 1e-4: {})",
        rows.len(),
        worst.0,
        worst.1,
        if worst.1 <= 1e-4 { "met" } else { "missed" }
    );
}

fn main() {
    if let Ok(size) = std::env::var(CHILD) {
        child(&size);
        return;
    }
    let py = torch_python();
    let sizes = std::env::var("ORTHO_BENCH_SIZES").unwrap_or_else(|_| "1x128,4x128".into());
    if std::env::var("ORTHO_BENCH_GRAD").map_or(true, |v| v != "0") {
        compare_gradients(&py);
    }
    for size in sizes.split(',').filter(|s| !s.is_empty()) {
        compare_step(size, &py);
    }
}
