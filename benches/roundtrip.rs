//! ONNX import+export round-trip benchmark: ortho-opt vs `cp` (the I/O floor)
//! vs Python `onnx.load` + `onnx.save`, on the SmolLM2-135M fixtures.
//!
//! Run with `cargo build --release && cargo bench --bench roundtrip`.
//! Environment: `ORTHO_FIXTURES` (fixture dir, default
//! `$HOME/.cache/ortho-opt/fixtures`), `ORTHO_PYTHON` (default
//! `$ORTHO_FIXTURES/venv/bin/python`), `BENCH_RUNS` (default 3).
//! Peak RSS comes from GNU time (`/usr/bin/time`); without it only wall
//! time is reported. Std only, no extra dependencies.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const GNU_TIME: &str = "/usr/bin/time";
const MODELS: [&str; 2] = ["decomposed.onnx", "fused.onnx"];
const PY_ROUNDTRIP: &str = "import onnx,sys; m=onnx.load(sys.argv[1]); onnx.save(m, sys.argv[2])";
const TARGET_TIME: f64 = 1.5;
const TARGET_RSS: f64 = 1.2;

/// One measured tool invocation: a label and the argv (output path last-ish).
struct Tool {
    label: &'static str,
    argv: Vec<String>,
}

/// Median wall time (s) and median peak RSS (KiB, if GNU time is available).
struct Measurement {
    secs: f64,
    rss_kib: Option<u64>,
}

fn main() {
    let fixtures = std::env::var_os("ORTHO_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/ortho-opt/fixtures")
        });
    let model_dir = fixtures.join("smollm2-135m");
    let missing: Vec<&str> = MODELS
        .iter()
        .copied()
        .filter(|m| !model_dir.join(m).is_file())
        .collect();
    if !missing.is_empty() {
        println!(
            "roundtrip bench: fixtures missing in {} ({}).\n\
             Prepare them with `scripts/fixtures.sh` (or set ORTHO_FIXTURES); skipping.",
            model_dir.display(),
            missing.join(", ")
        );
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = root.join("target/release/ortho-opt");
    if !bin.is_file() {
        println!(
            "roundtrip bench: {} not found; run `cargo build --release` first. Skipping.",
            bin.display()
        );
        return;
    }
    let python = std::env::var_os("ORTHO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| fixtures.join("venv/bin/python"));
    let have_python = python.is_file();
    if !have_python {
        println!(
            "note: {} not found (set ORTHO_PYTHON); skipping the Python reference",
            python.display()
        );
    }
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3);
    let gnu_time = Path::new(GNU_TIME).is_file();
    if !gnu_time {
        println!("note: {GNU_TIME} not found; reporting wall time only (no peak RSS)");
    }

    let tmp = root.join(format!("target/bench-roundtrip-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("create temp dir under target/");
    let out = tmp.join("out.onnx");
    let s = |p: &Path| p.display().to_string();

    println!("roundtrip bench: {runs} run(s) per tool, median reported (after one warm-up each)\n");
    println!(
        "{:<16} {:<28} {:>9} {:>12} {:>8} {:>17}",
        "model", "tool", "median s", "peak RSS MB", "vs cp", "RSS / model size"
    );
    let mut verdicts = Vec::new();
    for name in MODELS {
        let model = model_dir.join(name);
        let model_bytes = std::fs::metadata(&model).map(|m| m.len()).unwrap_or(1) as f64;
        let mut tools = vec![
            Tool {
                label: "cp",
                argv: vec!["/bin/cp".into(), s(&model), s(&out)],
            },
            Tool {
                label: "ortho-opt (import+export)",
                argv: vec![s(&bin), s(&model), "-o".into(), s(&out)],
            },
            Tool {
                label: "ortho-opt --external-data",
                argv: vec![
                    s(&bin),
                    s(&model),
                    "-o".into(),
                    s(&out),
                    "--external-data".into(),
                ],
            },
        ];
        if have_python {
            tools.push(Tool {
                label: "python onnx.load+save",
                argv: vec![
                    s(&python),
                    "-c".into(),
                    PY_ROUNDTRIP.into(),
                    s(&model),
                    s(&out),
                ],
            });
        }
        let mut cp_secs = None;
        let mut verdict: Option<(f64, Option<f64>)> = None;
        for tool in &tools {
            let m = match measure(tool, runs, gnu_time, &tmp) {
                Ok(m) => m,
                Err(e) => {
                    println!("{:<16} {:<28} FAILED: {e}", name, tool.label);
                    continue;
                }
            };
            if tool.label == "cp" {
                cp_secs = Some(m.secs);
            }
            let vs_cp = cp_secs.map(|c| m.secs / c.max(1e-9));
            let rss_ratio = m.rss_kib.map(|k| k as f64 * 1024.0 / model_bytes);
            if tool.label.starts_with("ortho-opt (") {
                verdict = vs_cp.map(|v| (v, rss_ratio));
            }
            println!(
                "{:<16} {:<28} {:>9.2} {:>12} {:>8} {:>17}",
                name,
                tool.label,
                m.secs,
                m.rss_kib
                    .map_or("-".into(), |k| format!("{:.0}", k as f64 / 1024.0)),
                vs_cp.map_or("-".into(), |v| format!("{v:.2}×")),
                if tool.label == "cp" {
                    String::new()
                } else {
                    rss_ratio.map_or("-".into(), |r| format!("{r:.2}×"))
                },
            );
        }
        verdicts.push((name, verdict));
    }
    let _ = std::fs::remove_dir_all(&tmp);

    println!("\ntarget: ortho-opt ≤ {TARGET_TIME}× cp, peak RSS ≤ {TARGET_RSS}× model size");
    for (name, v) in verdicts {
        let line = match v {
            None => "MISS (ortho-opt or cp failed)".to_string(),
            Some((t, rss)) => {
                let t_ok = t <= TARGET_TIME;
                let r_ok = rss.is_none_or(|r| r <= TARGET_RSS);
                let rss_txt = rss.map_or("RSS n/a".into(), |r| {
                    format!("RSS {r:.2}× {}", ok(r <= TARGET_RSS))
                });
                format!(
                    "{} (time {t:.2}× {}, {rss_txt})",
                    if t_ok && r_ok { "PASS" } else { "MISS" },
                    ok(t_ok)
                )
            }
        };
        println!("  {name:<16} {line}");
    }
}

fn ok(b: bool) -> &'static str {
    if b {
        "ok"
    } else {
        "over"
    }
}

/// One warm-up, then `runs` timed runs; returns medians.
fn measure(tool: &Tool, runs: usize, gnu_time: bool, tmp: &Path) -> Result<Measurement, String> {
    run_once(tool, gnu_time, tmp)?;
    let mut secs = Vec::with_capacity(runs);
    let mut rss = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (t, r) = run_once(tool, gnu_time, tmp)?;
        secs.push(t);
        rss.extend(r);
    }
    secs.sort_by(f64::total_cmp);
    rss.sort_unstable();
    Ok(Measurement {
        secs: secs[secs.len() / 2],
        rss_kib: if rss.len() == runs {
            Some(rss[rss.len() / 2])
        } else {
            None
        },
    })
}

/// Runs the tool once (clearing previous outputs), returning wall seconds and
/// the peak RSS in KiB as reported by GNU time.
fn run_once(tool: &Tool, gnu_time: bool, tmp: &Path) -> Result<(f64, Option<u64>), String> {
    for f in ["out.onnx", "out.onnx.data"] {
        let _ = std::fs::remove_file(tmp.join(f));
    }
    let time_file = tmp.join("time.txt");
    let mut cmd = if gnu_time {
        let mut c = Command::new(GNU_TIME);
        c.arg("-f")
            .arg("%e %M")
            .arg("-o")
            .arg(&time_file)
            .args(&tool.argv);
        c
    } else {
        let mut c = Command::new(&tool.argv[0]);
        c.args(&tool.argv[1..]);
        c
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let output = cmd
        .output()
        .map_err(|e| format!("spawn {}: {e}", tool.argv[0]))?;
    let secs = start.elapsed().as_secs_f64();
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!("{} — {}", output.status, tail.join(" | ")));
    }
    let rss = if gnu_time {
        std::fs::read_to_string(&time_file).ok().and_then(|t| {
            t.lines()
                .last()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse().ok())
        })
    } else {
        None
    };
    Ok((secs, rss))
}
