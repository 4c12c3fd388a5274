//! Models written by other exporters than the fixture builder (issue 11, deliverable 2): tiny
//! random-weight Llama and BERT models exported by torch's dynamo exporter
//! (`torch.onnx.export(dynamo=True)`, opset 20) and its TorchScript exporter (`dynamo=False`,
//! opset 17), with and without an `attention_mask` input. They live in `tests/data/exporters/`,
//! written by `scripts/export_torch.py families --tiny --only llama bert --out tests/data/exporters`
//! (seed 0; the BERT variants without a mask were deleted to keep the folder small). torch is not
//! needed here: the engine's outputs are compared with onnxruntime's through `$ORTHO_PYTHON` (the
//! fixtures venv), and those tests skip with a printed reason when it is unset.

mod common;

use common::{repo, run, TempDir};
use ortho_codegen::cpu::{npy, HostTensor, Plan};
use std::path::{Path, PathBuf};

/// Every committed export: (file, output name).
const MODELS: [(&str, &str); 6] = [
    ("llama.dynamo.onnx", "logits"),
    ("llama.torchscript.onnx", "logits"),
    ("llama-mask.dynamo.onnx", "logits"),
    ("llama-mask.torchscript.onnx", "logits"),
    ("bert-mask.dynamo.onnx", "last_hidden_state"),
    ("bert-mask.torchscript.onnx", "last_hidden_state"),
];

fn model_path(file: &str) -> PathBuf {
    repo().join("tests/data/exporters").join(file)
}

/// onnxruntime's Python, or `None` (with the reason printed) when `$ORTHO_PYTHON` is unset.
fn ort_python(test: &str) -> Option<PathBuf> {
    match std::env::var_os("ORTHO_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            eprintln!("{test}: skipped — ORTHO_PYTHON is unset (needs a Python with onnxruntime and numpy)");
            None
        }
    }
}

/// Writes the inputs for `batch × seq` (token ids from a seeded generator; a mask of ones with
/// three left-padding zeros in the last row) and onnxruntime's output into `dir`.
fn ort_reference(py: &Path, model: &Path, dir: &Path, batch: usize, seq: usize) {
    let script = r#"
import sys, numpy as np, onnxruntime as ort
model, out, batch, seq = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.log_severity_level = 3
s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(batch * 1000 + seq)
feeds = {}
for i in s.get_inputs():
    if i.name == "attention_mask":
        m = np.ones((batch, seq), dtype=np.int64); m[-1, :3] = 0; feeds[i.name] = m
    else:
        feeds[i.name] = rng.integers(0, 128, size=(batch, seq), dtype=np.int64)
for k, v in feeds.items():
    np.save(f"{out}/{k}.npy", v)
np.save(f"{out}/expected.npy", s.run(None, feeds)[0])
"#;
    let out = std::process::Command::new(py)
        .args(["-c", script])
        .arg(model)
        .arg(dir)
        .args([batch.to_string(), seq.to_string()])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "onnxruntime on {}: {}",
        model.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Max |ours − onnxruntime| over every element, relative to max |onnxruntime|.
fn relative_difference(got: &HostTensor, want: &HostTensor) -> f64 {
    assert_eq!(got.shape(), want.shape(), "output shapes differ");
    let (g, w) = (
        got.as_f32().expect("f32 output"),
        want.as_f32().expect("f32 output"),
    );
    let scale = w.iter().fold(0.0f64, |m, &x| m.max(f64::from(x).abs()));
    let diff = g.iter().zip(w).fold(0.0f64, |m, (&a, &b)| {
        m.max((f64::from(a) - f64::from(b)).abs())
    });
    diff / scale
}

/// Each export runs in the engine and equals onnxruntime within 1e-4 relative, at two shapes
/// (the exports have symbolic batch and sequence dims; 7 tokens also leaves the mask rows short).
#[test]
fn exports_equal_onnxruntime() {
    let Some(py) = ort_python("exports_equal_onnxruntime") else {
        return;
    };
    for (file, output) in MODELS {
        let model = model_path(file);
        let m = ortho_frontends::import_file(&model).expect("import");
        let plan = Plan::compile(&m).unwrap_or_else(|e| panic!("{file}: compile: {e}"));
        for (batch, seq) in [(2, 16), (1, 7)] {
            let tmp = TempDir::new(&format!("exporters-{file}-{batch}x{seq}"));
            ort_reference(&py, &model, tmp.path(), batch, seq);
            let mut feeds = vec![(
                "input_ids",
                npy::read(&tmp.path().join("input_ids.npy")).expect("ids"),
            )];
            if file.contains("-mask") {
                let mask = npy::read(&tmp.path().join("attention_mask.npy")).expect("mask");
                feeds.push(("attention_mask", mask));
            }
            let want = npy::read(&tmp.path().join("expected.npy")).expect("expected");
            let mut outs = plan
                .run(&feeds)
                .unwrap_or_else(|e| panic!("{file}: run: {e}"));
            let (name, got) = outs.remove(0);
            assert_eq!(name, output, "{file}: first output");
            let rel = relative_difference(&got, &want);
            eprintln!(
                "{file} {batch}x{seq}: max |ours − onnxruntime| / max |onnxruntime| = {rel:.2e}"
            );
            assert!(
                rel <= 1e-4,
                "{file} {batch}x{seq}: relative difference {rel:.3e} > 1e-4"
            );
        }
    }
}

/// `ortho-opt analyze --json` of a model, parsed.
fn analyze(model: &Path) -> serde_json::Value {
    let r = run(&["analyze", &model.to_string_lossy(), "--json"]);
    assert_eq!(r.code, 0, "analyze {}: {}", model.display(), r.stderr);
    serde_json::from_str(r.stdout.trim()).expect("analyze printed JSON")
}

/// The structure the pruning and rotation passes need, on a 2-block Llama export: pre-norm
/// stream, two blocks each with its RMSNorms, q/k/v/o and a SwiGLU MLP, a final norm and a head,
/// nothing unmatched.
fn assert_llama_structure(s: &serde_json::Value, what: &str) {
    assert_eq!(s["placement"], "pre-norm", "{what}: placement");
    assert_eq!(s["width"], 32, "{what}: width");
    let blocks = s["blocks"].as_array().expect("blocks");
    assert_eq!(blocks.len(), 2, "{what}: blocks");
    for b in blocks {
        let a = &b["attention"];
        for (proj, out) in [("q", 32), ("k", 16), ("v", 16), ("o", 32)] {
            assert_eq!(a[proj]["out"], out, "{what}: {proj} projection of {b}");
        }
        let text = b.to_string();
        assert!(
            text.contains("SwiGLU") || text.contains("swiglu"),
            "{what}: MLP of {b}"
        );
    }
    let norms = s["norms"].as_array().expect("norms");
    assert_eq!(
        norms.len(),
        5,
        "{what}: two norms per block and the final one"
    );
    assert!(
        norms
            .iter()
            .all(|n| n["description"] == "RMSNorm (decomposed)"),
        "{what}: {norms:?}"
    );
    assert!(!s["final_norm"].is_null(), "{what}: final norm");
    assert_eq!(s["heads"].as_array().map(Vec::len), Some(1), "{what}: head");
    assert_eq!(
        s["unmatched"].as_array().map(Vec::len),
        Some(0),
        "{what}: unmatched nodes"
    );
}

/// The dynamo export is analyzed as imported.
#[test]
fn dynamo_llama_structure() {
    for file in ["llama.dynamo.onnx", "llama-mask.dynamo.onnx"] {
        assert_llama_structure(&analyze(&model_path(file)), file);
    }
}

/// The TorchScript export keeps float→float `Cast`s around each RMSNorm and spells `rsqrt` as
/// `Div(1, Sqrt(·))`: after `infer-shapes,canonicalize` (which drops the no-op casts) the norms,
/// blocks and head are found.
#[test]
fn torchscript_llama_structure_after_canonicalize() {
    for file in ["llama.torchscript.onnx", "llama-mask.torchscript.onnx"] {
        let tmp = TempDir::new(&format!("exporters-canon-{file}"));
        let out = tmp.path().join(file);
        let r = run(&[
            &model_path(file).to_string_lossy(),
            "--pass-pipeline=infer-shapes,canonicalize",
            "-o",
            &out.to_string_lossy(),
        ]);
        assert_eq!(r.code, 0, "{file}: canonicalize: {}", r.stderr);
        assert_llama_structure(&analyze(&out), file);
    }
}
