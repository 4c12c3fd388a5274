//! Prune a model's linear layers with calibration data (Wanda: |weight| × input norm).
//!
//!     cargo run --release --example prune_with_calibration [MODEL] [IDS.txt]
//!
//! Calibration sequences are drawn from token ids (here: generated for the small decoder of the
//! file tests, whose vocabulary has 6 tokens; with a real model pass its tokenized text, e.g.
//! `--calib-ids` style whitespace-separated ids). The library's calibration builder turns them
//! into the feeds the passes run the model on; the pass manager hands them to `prune`.
//! The example prints the notes (per-layer sparsity) and checks that half the weights of
//! every pruned layer are zero, then how far the logits moved.

use ortho_codegen::cpu::{HostTensor, Plan};
use ortho_ir::Module;
use ortho_opt::calib::{build, CalibArgs};
use ortho_opt::GlobalArgs;
use ortho_passes::{ManagerOptions, PassManager, Pipeline};
use std::path::{Path, PathBuf};

type Error = Box<dyn std::error::Error>;

fn load(path: &Path) -> Result<Module, Error> {
    if path.extension().is_some_and(|e| e == "oir") {
        Ok(ortho_ir::text::parse_module(&std::fs::read_to_string(
            path,
        )?)?)
    } else {
        Ok(ortho_frontends::import_file(path)?)
    }
}

fn first_output(m: &Module, ids: &[i64]) -> Result<Vec<f32>, Error> {
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
    let (_, t) = plan.run(&refs)?.into_iter().next().ok_or("no outputs")?;
    Ok(t.as_f32().ok_or("not f32")?.to_vec())
}

fn main() -> Result<(), Error> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("tests/filecheck/analyze/json.oir"));
    let dir = tempfile::tempdir()?;
    let ids = match std::env::args().nth(2) {
        Some(p) => PathBuf::from(p),
        None => {
            // 200 pseudo-random ids in 0..6 (a fixed LCG, so every run sees the same data).
            let mut x: u64 = 7;
            let words: Vec<String> = (0..200)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((x >> 33) % 6).to_string()
                })
                .collect();
            let p = dir.path().join("ids.txt");
            std::fs::write(&p, words.join(" "))?;
            p
        }
    };
    let original = load(&model)?;
    let mut m = original.clone();
    let calib = CalibArgs {
        calib_ids: Some(ids),
        samples: 8,
        seqlen: 16,
        ..Default::default()
    };
    let global = GlobalArgs {
        quiet: true,
        ..Default::default()
    };
    let calibration = build(&calib, &global, &m)?;
    let opts = ManagerOptions {
        calibration,
        statistics: true,
        ..Default::default()
    };
    let text = "prune{method=wanda sparsity=0.5}";
    let pipeline = Pipeline::parse(text).map_err(|e| e.render(text))?;
    let pm = PassManager::new(pipeline, opts.clone())?;
    let report = pm.run(&mut m, &model.display().to_string(), &mut |_| {})?;
    print!("{}", report.render(&opts));
    let zeroed = report.statistics.get("prune.zeros").unwrap_or(0);
    let ids: Vec<i64> = (0..16).map(|i| (i * 5 + 1) % 6).collect();
    let (a, b) = (first_output(&original, &ids)?, first_output(&m, &ids)?);
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |d, (x, y)| d.max((x - y).abs()));
    println!("weights zeroed: {zeroed}; max |Δlogit| after pruning: {diff:.4}");
    if zeroed == 0 {
        return Err("nothing was pruned".into());
    }
    Ok(())
}
