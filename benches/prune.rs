//! The pruning table's pipelines on SmolLM2-135M (decomposed fixture): for each pipeline, the
//! wall time and peak RSS of `ortho-opt MODEL -o OUT --pass-pipeline=…` with calibration on
//! sotu_calib (measured by `/usr/bin/time -v`, so the whole process is counted: import,
//! calibration, pruning, export), then the perplexity of the result by `ortho-opt eval` on
//! sotu_eval (16 × 128).
//!
//! Run with `cargo bench --bench prune`. Environment: `ORTHO_FIXTURES` (default
//! `$HOME/.cache/ortho-opt/fixtures`), `BENCH_CALIB_SAMPLES` / `BENCH_CALIB_SEQLEN` (default the
//! issue's 128 × 512), `BENCH_PIPELINES` (comma-separated names of the rows to run, default all:
//! dense, magnitude-50, magnitude-2:4, wanda-50, wanda-2:4, sparsegpt-50, sparsegpt-2:4, and
//! the same six with DenoiseRotator in front: dr+magnitude-50, …, dr+sparsegpt-2:4, which run
//! `fold-norms,denoise-prune{…}` with its defaults). A `dr+` row also prints the fraction of the
//! gap to dense it closes, `(plain − rotated) / (plain − dense)`, when its plain row and the
//! dense row ran. Timings on a shared machine are noisy; one run per row.

use std::path::{Path, PathBuf};
use std::process::Command;

const ROWS: &[(&str, &str)] = &[
    ("dense", ""),
    ("magnitude-50", "prune{method=magnitude}"),
    ("magnitude-2:4", "prune{method=magnitude pattern=2:4}"),
    ("wanda-50", "prune{method=wanda}"),
    ("wanda-2:4", "prune{method=wanda pattern=2:4}"),
    ("sparsegpt-50", "prune{method=sparsegpt}"),
    ("sparsegpt-2:4", "prune{method=sparsegpt pattern=2:4}"),
    (
        "dr+magnitude-50",
        "fold-norms,denoise-prune{method=magnitude}",
    ),
    (
        "dr+magnitude-2:4",
        "fold-norms,denoise-prune{method=magnitude pattern=2:4}",
    ),
    ("dr+wanda-50", "fold-norms,denoise-prune{method=wanda}"),
    (
        "dr+wanda-2:4",
        "fold-norms,denoise-prune{method=wanda pattern=2:4}",
    ),
    (
        "dr+sparsegpt-50",
        "fold-norms,denoise-prune{method=sparsegpt}",
    ),
    (
        "dr+sparsegpt-2:4",
        "fold-norms,denoise-prune{method=sparsegpt pattern=2:4}",
    ),
];

/// (wall seconds, peak RSS in MiB) from `/usr/bin/time -v` output.
fn time_v(stderr: &str) -> (f64, f64) {
    let mut wall = f64::NAN;
    let mut rss = f64::NAN;
    for l in stderr.lines() {
        let l = l.trim();
        if let Some(v) = l.strip_prefix("Elapsed (wall clock) time (h:mm:ss or m:ss): ") {
            wall = v
                .split(':')
                .filter_map(|p| p.parse::<f64>().ok())
                .fold(0.0, |acc, x| acc * 60.0 + x);
        }
        if let Some(v) = l.strip_prefix("Maximum resident set size (kbytes): ") {
            rss = v.parse::<f64>().unwrap_or(f64::NAN) / 1024.0;
        }
    }
    (wall, rss)
}

fn perplexity(bin: &str, model: &Path, fx: &Path) -> String {
    let out = Command::new(bin)
        .arg("eval")
        .arg(model)
        .arg("--tokenizer")
        .arg(fx.join("smollm2-135m/tokenizer.json"))
        .arg("--text")
        .arg(fx.join("text/sotu_eval.txt"))
        .arg("--json")
        .arg("-q")
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let s = String::from_utf8_lossy(&o.stdout);
            s.split("\"perplexity\":")
                .nth(1)
                .and_then(|r| r.split([',', '}']).next())
                .map(|v| match v.trim().parse::<f64>() {
                    Ok(x) => format!("{x:.3}"),
                    Err(_) => v.trim().to_string(),
                })
                .unwrap_or_else(|| "?".into())
        }
        Ok(o) => format!("eval failed: {}", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => format!("eval failed: {e}"),
    }
}

fn main() {
    let fx = std::env::var_os("ORTHO_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/ortho-opt/fixtures")
        });
    let model = fx.join("smollm2-135m/decomposed.onnx");
    if !model.is_file() {
        println!(
            "prune bench: {} missing (run scripts/fixtures.sh); skipping",
            model.display()
        );
        return;
    }
    if !Path::new("/usr/bin/time").is_file() {
        println!("prune bench: /usr/bin/time is needed for peak RSS; skipping");
        return;
    }
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let samples = env("BENCH_CALIB_SAMPLES", 128);
    let seqlen = env("BENCH_CALIB_SEQLEN", 512);
    let wanted: Option<Vec<String>> = std::env::var("BENCH_PIPELINES")
        .ok()
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    let bin = env!("CARGO_BIN_EXE_ortho-opt");
    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-prune");
    let _ = std::fs::create_dir_all(&out_dir);
    println!(
        "calibration: {samples} × {seqlen} tokens of sotu_calib (seed 0); perplexity: 16 × 128 of sotu_eval"
    );
    println!(
        "{:<16} {:>12} {:>10} {:>14}  pipeline",
        "row", "perplexity", "wall s", "peak RSS MiB"
    );
    let mut seen: Vec<(&str, f64)> = Vec::new();
    for (name, pipeline) in ROWS {
        if wanted
            .as_ref()
            .is_some_and(|w| !w.iter().any(|x| x == name))
        {
            continue;
        }
        if pipeline.is_empty() {
            let ppl = perplexity(bin, &model, &fx);
            seen.extend(ppl.parse().ok().map(|p| (*name, p)));
            println!(
                "{name:<16} {ppl:>12} {:>10} {:>14}  (the original model)",
                "-", "-"
            );
            continue;
        }
        let out = out_dir.join(format!("{}.onnx", name.replace(':', "-")));
        let mut cmd = Command::new("/usr/bin/time");
        cmd.arg("-v").arg(bin).arg(&model).arg("-o").arg(&out);
        cmd.arg(format!("--pass-pipeline={pipeline}"));
        if pipeline.contains("denoise") || !pipeline.contains("magnitude") {
            cmd.arg("--calib-text")
                .arg(fx.join("text/sotu_calib.txt"))
                .arg("--tokenizer")
                .arg(fx.join("smollm2-135m/tokenizer.json"))
                .args(["--calib-samples", &samples.to_string()])
                .args(["--calib-seqlen", &seqlen.to_string()])
                .args(["--calib-seed", "0", "--calib-quiet"]);
        }
        let res = match cmd.output() {
            Ok(r) => r,
            Err(e) => {
                println!("{name:<16} cannot run: {e}");
                continue;
            }
        };
        let stderr = String::from_utf8_lossy(&res.stderr);
        if !res.status.success() {
            println!("{name:<16} failed: {}", stderr.lines().last().unwrap_or(""));
            continue;
        }
        let (wall, rss) = time_v(&stderr);
        let ppl = perplexity(bin, &out, &fx);
        let _ = std::fs::remove_file(&out);
        let value: Option<f64> = ppl.parse().ok();
        let find = |n: &str| seen.iter().find(|(k, _)| *k == n).map(|(_, p)| *p);
        let gap = match (name.strip_prefix("dr+"), value, find("dense")) {
            (Some(plain), Some(v), Some(dense)) => find(plain)
                .map(|p| format!("  gap closed {:.1} %", 100.0 * (p - v) / (p - dense)))
                .unwrap_or_default(),
            _ => String::new(),
        };
        seen.extend(value.map(|v| (*name, v)));
        println!("{name:<16} {ppl:>12} {wall:>10.1} {rss:>14.0}  {pipeline}{gap}");
    }
}
