//! Rotate a model's residual stream and prove the result computes the same function.
//!
//!     cargo run --release --example rotate_and_prove [MODEL.onnx|MODEL.oir]
//!
//! Reads a decoder (by default the small one of the file tests), runs `fold-norms` and a Haar
//! rotation of the residual stream with the pass manager (the verifier runs after each pass),
//! then runs both models on the same tokens with the CPU engine and compares the logits. The
//! rotation is exact in real arithmetic, so the difference is f32 rounding only; the example
//! fails when it is not.

use ortho_codegen::cpu::{HostTensor, Plan};
use ortho_ir::Module;
use ortho_passes::{ManagerOptions, PassManager, Pipeline};
use std::path::{Path, PathBuf};

type Error = Box<dyn std::error::Error>;

/// Reads `.oir` text or an ONNX file.
fn load(path: &Path) -> Result<Module, Error> {
    if path.extension().is_some_and(|e| e == "oir") {
        Ok(ortho_ir::text::parse_module(&std::fs::read_to_string(
            path,
        )?)?)
    } else {
        Ok(ortho_frontends::import_file(path)?)
    }
}

/// The first output of `m` on one sequence of `ids` (other LM inputs filled in as usual).
fn logits(m: &Module, ids: &[i64]) -> Result<Vec<f32>, Error> {
    let plan = Plan::compile(m)?;
    let n = ids.len();
    let mut feeds = Vec::new();
    for name in plan.input_names() {
        let data: Vec<i64> = match name.as_str() {
            "attention_mask" => vec![1; n],
            "position_ids" => (0..n as i64).collect(),
            _ => ids.to_vec(),
        };
        feeds.push((name, HostTensor::from_vec(vec![1, n], data)?));
    }
    let refs: Vec<(&str, HostTensor)> =
        feeds.iter().map(|(k, t)| (k.as_str(), t.clone())).collect();
    let outs = plan.run(&refs)?;
    let (_, first) = outs.into_iter().next().ok_or("the model has no outputs")?;
    Ok(first.as_f32().ok_or("the logits are not f32")?.to_vec())
}

fn main() -> Result<(), Error> {
    let path = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/filecheck/analyze/json.oir")
        });
    let original = load(&path)?;
    let mut rotated = original.clone();
    let pipeline = Pipeline::parse("fold-norms,rotate-residual{kind=haar seed=1}")
        .map_err(|e| e.render("fold-norms,rotate-residual{kind=haar seed=1}"))?;
    let pm = PassManager::new(pipeline, ManagerOptions::default())?;
    let report = pm.run(&mut rotated, &path.display().to_string(), &mut |_| {})?;
    for note in &report.notes {
        println!("note: {note}");
    }
    // Token ids inside every vocabulary: the small model has 6.
    let ids: Vec<i64> = (0..16).map(|i| (i * 5 + 1) % 6).collect();
    let (a, b) = (logits(&original, &ids)?, logits(&rotated, &ids)?);
    let scale = a
        .iter()
        .fold(0f32, |m, x| m.max(x.abs()))
        .max(f32::MIN_POSITIVE);
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    println!(
        "{}: {} logits, max |rotated − original| = {diff:.3e} ({:.3e} of the largest logit)",
        path.display(),
        a.len(),
        diff / scale
    );
    if !(diff / scale < 1e-4) {
        return Err(format!("the rotated model differs by {diff:e}: not equivalent").into());
    }
    println!("equivalent up to f32 rounding");
    Ok(())
}
