//! Shared helpers of the integration tests: where the fixtures are, how to call the driver.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The fixtures folder: `$ORTHO_FIXTURES`, else `~/.cache/ortho-opt/fixtures` (what
/// `scripts/fixtures.sh` prepares). Panics with instructions when it is missing, because a test
/// that silently skips proves nothing.
pub fn fixtures() -> PathBuf {
    let p = std::env::var_os("ORTHO_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/ortho-opt/fixtures")
        });
    assert!(
        p.join("smollm2-135m/decomposed.onnx").exists(),
        "fixtures not found in {} — run scripts/fixtures.sh (or set ORTHO_FIXTURES)",
        p.display()
    );
    p
}

/// The Python of the fixtures' virtual environment (onnx, onnxruntime).
pub fn python() -> PathBuf {
    std::env::var_os("ORTHO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| fixtures().join("venv/bin/python"))
}

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh temporary folder under target/, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = repo().join("target/test-tmp").join(format!(
            "{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the driver in-process with string arguments.
pub fn run(args: &[&str]) -> ortho_opt::DriverOutput {
    let mut v = vec!["ortho-opt".to_string()];
    v.extend(args.iter().map(|s| s.to_string()));
    ortho_opt::Driver::run(&v)
}

/// Runs a Python script of fixtures/tools and returns its stdout.
pub fn python_tool(script: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(python())
        .arg(repo().join("fixtures/tools").join(script))
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `ortho-opt compare A B --json` (our own engine) on 8 windows × 128 tokens of sotu_eval with the
/// SmolLM2 tokenizer: the equivalence check of the rewriting tests. Panics when it fails.
pub fn compare_on_sotu(a: &str, b: &str) -> serde_json::Value {
    let f = fixtures();
    let tok = f.join("smollm2-135m/tokenizer.json");
    let text = f.join("text/sotu_eval.txt");
    let r = run(&[
        "compare",
        a,
        b,
        "--tokenizer",
        &tok.to_string_lossy(),
        "--text",
        &text.to_string_lossy(),
        "--windows",
        "8",
        "--seqlen",
        "128",
        "--json",
        "-q",
    ]);
    assert_eq!(r.code, 0, "compare failed: {}", r.stderr);
    serde_json::from_str(r.stdout.trim())
        .unwrap_or_else(|e| panic!("compare printed no JSON ({e}): {}", r.stdout))
}

/// Runs `pipeline` on the decomposed SmolLM2 fixture into `out` with `--statistics`, and with a
/// small calibration set (4 × 64 tokens of sotu_calib) when `calib`.
#[allow(dead_code)]
pub fn opt_smollm(pipeline: &str, out: &Path, calib: bool) -> ortho_opt::DriverOutput {
    let f = fixtures();
    let model = f.join("smollm2-135m/decomposed.onnx");
    let mut args: Vec<String> = vec![
        model.to_string_lossy().into_owned(),
        "-o".into(),
        out.to_string_lossy().into_owned(),
        format!("--pass-pipeline={pipeline}"),
        "--statistics".into(),
        // Tests compare the bytes of models written by different pipelines; the pipeline text
        // recorded in metadata_props would make them differ where the weights do not.
        "--no-provenance".into(),
    ];
    if calib {
        for a in [
            "--calib-text",
            &f.join("text/sotu_calib.txt").to_string_lossy(),
            "--tokenizer",
            &f.join("smollm2-135m/tokenizer.json").to_string_lossy(),
            "--calib-samples",
            "4",
            "--calib-seqlen",
            "64",
            "--calib-quiet",
        ] {
            args.push(a.to_string());
        }
    }
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    run(&refs)
}

/// The value of `--statistics` line `key` in a driver's stderr; panics when it is missing.
#[allow(dead_code)]
pub fn stat(stderr: &str, key: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(key)).then(|| it.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no statistic {key} in:\n{stderr}"))
}
