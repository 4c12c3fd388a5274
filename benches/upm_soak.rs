//! UPM drift soak: chains many re-key epochs on a shard set and measures, every N epochs, how far
//! the chain's next-token distributions have drifted from the original model (relative ΔPPL,
//! mean / max token Jensen–Shannon divergence, max |Δlogit|), with `ortho-opt compare`.
//!
//! Resumable: the shard folder is the checkpoint (its manifest holds the epoch; a re-key is
//! all-or-nothing), and results are appended to `results.csv`; rerunning continues from the
//! last complete epoch up to `UPM_SOAK_EPOCHS`.
//!
//! Run with `cargo bench --bench upm_soak`. Environment:
//! - `UPM_SOAK_MODEL`: the model (default `target/upm-soak/prefix2.onnx`, a 2-block prefix of
//!   SmolLM2 built by `fixtures/tools/build_llama_onnx.py GGUF OUT --layers 2`);
//! - `UPM_SOAK_DIR`: work folder (default `target/upm-soak/run-<kind>-<placement>`);
//! - `UPM_SOAK_EPOCHS` (default 200), `UPM_SOAK_EVERY` (default 50), `UPM_SOAK_KIND` (haar),
//!   `UPM_SOAK_PLACEMENT` (folded), `UPM_SOAK_K` (shards, default 2), `UPM_SOAK_WINDOWS` (4);
//! - `ORTHO_FIXTURES` for the tokenizer and text.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn driver(args: &[&str]) -> Result<String, String> {
    let mut v = vec!["ortho-opt".to_string()];
    v.extend(args.iter().map(|s| s.to_string()));
    let out = ortho_opt::Driver::run(&v);
    if out.code == 0 {
        Ok(out.stdout)
    } else {
        Err(out.stderr)
    }
}

fn epoch_of(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("manifest.json")).ok()?;
    let j: serde_json::Value = serde_json::from_str(&text).ok()?;
    j["epoch"].as_u64()
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fixtures = std::env::var_os("ORTHO_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/ortho-opt/fixtures")
        });
    let model = std::env::var_os("UPM_SOAK_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/upm-soak/prefix2.onnx"));
    if !model.is_file() {
        println!(
            "upm_soak: {} missing; build it with fixtures/tools/build_llama_onnx.py GGUF {} --layers 2",
            model.display(),
            model.display()
        );
        return;
    }
    let kind = env_or("UPM_SOAK_KIND", "haar");
    let placement = env_or("UPM_SOAK_PLACEMENT", "folded");
    let epochs = num("UPM_SOAK_EPOCHS", 200);
    let every = num("UPM_SOAK_EVERY", 50).max(1);
    let k = num("UPM_SOAK_K", 2);
    let windows = num("UPM_SOAK_WINDOWS", 4).to_string();
    let dir = std::env::var_os("UPM_SOAK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(format!("target/upm-soak/run-{kind}-{placement}")));
    let set = dir.join("set");
    let csv = dir.join("results.csv");
    let _ = std::fs::create_dir_all(&dir);
    let (m, s) = (model.to_string_lossy(), set.to_string_lossy().into_owned());
    if epoch_of(&set).is_none() {
        let _ = std::fs::remove_dir_all(&set);
        if let Err(e) = driver(&["shard", "split", &m, "-k", &k.to_string(), "-o", &s]) {
            println!("upm_soak: split failed: {e}");
            return;
        }
    }
    let tok = fixtures.join("smollm2-135m/tokenizer.json");
    let text = fixtures.join("text/sotu_eval.txt");
    let (tok, text) = (tok.to_string_lossy(), text.to_string_lossy());
    let measure = |epoch: u64, secs: f64| -> Result<(), String> {
        let out = driver(&[
            "compare",
            &m,
            &s,
            "--tokenizer",
            &tok,
            "--text",
            &text,
            "--windows",
            &windows,
            "--seqlen",
            "128",
            "--json",
            "-q",
        ])?;
        let j: serde_json::Value = serde_json::from_str(out.trim()).map_err(|e| e.to_string())?;
        let line = format!(
            "{epoch},{},{},{},{},{},{secs:.3}",
            j["delta_ppl_rel"],
            j["js_mean"],
            j["js_max"],
            j["max_abs_logit_diff"],
            j["argmax_agreement"]
        );
        println!("{line}");
        let new = !csv.exists();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&csv)
            .map_err(|e| e.to_string())?;
        if new {
            writeln!(f, "epoch,delta_ppl_rel,js_mean,js_max,max_abs_logit_diff,argmax_agreement,seconds_per_epoch")
                .map_err(|e| e.to_string())?;
        }
        writeln!(f, "{line}").map_err(|e| e.to_string())
    };
    let start = epoch_of(&set).unwrap_or(0);
    println!(
        "upm_soak: {} ({kind}, {placement}, K = {k}) from epoch {start} to {epochs}, measuring every {every}; {}",
        model.display(),
        csv.display()
    );
    println!(
        "epoch,delta_ppl_rel,js_mean,js_max,max_abs_logit_diff,argmax_agreement,seconds_per_epoch"
    );
    if start == 0 && !csv.exists() {
        if let Err(e) = measure(0, 0.0) {
            println!("upm_soak: compare failed: {e}");
            return;
        }
    }
    let mut t = Instant::now();
    let mut since = 0u64;
    for epoch in start + 1..=epochs {
        // The seed of epoch e is e itself: the run is reproducible, and the epoch number is
        // mixed into every change anyway.
        let seed = epoch.to_string();
        if let Err(e) = driver(&[
            "shard",
            "rekey",
            &s,
            "--kind",
            &kind,
            "--seed",
            &seed,
            "--placement",
            &placement,
        ]) {
            println!("upm_soak: rekey to epoch {epoch} failed: {e}");
            return;
        }
        since += 1;
        if epoch % every == 0 || epoch == epochs {
            let per = t.elapsed().as_secs_f64() / since as f64;
            if let Err(e) = measure(epoch, per) {
                println!("upm_soak: compare failed: {e}");
                return;
            }
            t = Instant::now();
            since = 0;
        }
    }
}
