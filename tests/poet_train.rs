//! POET training on a tiny decoder (4-wide, one block, 6 tokens): the loss decreases with only
//! the skew parameters trained, a merge leaves the model's loss unchanged, re-draws the
//! permutations and resets the skew parameters; the merged model keeps every weight's
//! singular values; the `train --poet` command writes a plain (merged) model.

mod common;

use common::{run, TempDir};
use ortho_opt::poet_train::{PoetConfig, PoetTrainer};
use ortho_opt::train::{TrainConfig, WindowSampler};
use ortho_passes::poet::reparam::PoetReparamOptions;
use ortho_passes::poet::singular_values;

const DECODER: &str = include_str!("filecheck/poet/reparam.oir");

fn tokens() -> Vec<i64> {
    let cycle = [3i64, 1, 4, 0, 5, 2];
    (0..600).map(|i| cycle[i % 6]).collect()
}

fn weight(m: &ortho_ir::Module, name: &str) -> Vec<f64> {
    let v = m.main_graph().value_names()[name];
    let ortho_ir::Op::Const(t) = m.main_graph().node(v.node).op else {
        panic!("{name} is not a constant")
    };
    m.tensor(t).to_f64_vec().expect("f32")
}

#[test]
fn poet_trains_merges_exactly_and_keeps_spectra() {
    let m = ortho_ir::text::parse_module(DECODER).expect("decoder parses");
    let cfg = TrainConfig {
        input: "ids".into(),
        // Only the skew parameters train: the spectra of the linears are then fixed.
        trainable: Vec::new(),
        lr: 0.0,
        total_steps: 60,
        ..TrainConfig::default()
    };
    let pcfg = PoetConfig {
        reparam: PoetReparamOptions {
            block: 2,
            seed: 4,
            ..PoetReparamOptions::default()
        },
        merge_every: 0,
        lr: 0.02,
        clip: Some(1.0),
        clip_ramp: 5,
    };
    let mut p = PoetTrainer::new(m.clone(), cfg, pcfg).expect("poet trainer");
    assert_eq!(p.skew_parameters(), 28);
    let mut data = WindowSampler::new(tokens(), 4, 6, 1).expect("sampler");
    let probe = data.next_batch();
    let first = p.trainer.eval_loss(&probe).expect("eval");
    let mut losses = Vec::new();
    for step in 1..=60 {
        losses.push(p.step(&[data.next_batch()]).expect("step").loss);
        if step % 5 == 0 {
            // Merge by hand, comparing the loss on a fixed batch before and after.
            let before = p.trainer.eval_loss(&probe).expect("eval");
            let perms_before: Vec<usize> = p.weights().next().expect("w").1.rows_perm.clone();
            let r = p.merge().expect("merge");
            let after = p.trainer.eval_loss(&probe).expect("eval");
            let rel = ((after - before) / before).abs();
            eprintln!(
                "merge at step {step}: loss {before:.6} → {after:.6} (rel {rel:e}), max ‖RᵀR−I‖ {:e}",
                r.max_orthogonality_error
            );
            assert!(rel <= 1e-6, "merge changed the loss by {rel:e}");
            let (_, s) = p.weights().next().expect("w");
            assert!(s.skew_rows.iter().all(|&x| x == 0.0), "skews reset");
            assert_ne!(s.rows_perm, perms_before, "permutations re-drawn");
        }
    }
    let last = p.trainer.eval_loss(&probe).expect("eval");
    eprintln!(
        "POET tiny decoder: probe loss {first:.4} → {last:.4}; step losses {:.4} → {:.4}",
        losses[0], losses[59]
    );
    assert!(last < 0.8 * first, "loss {first} → {last}");
    // The merged model: plain weights with the original singular values.
    let eps_sum: f64 = p.merges.iter().map(|r| r.max_orthogonality_error).sum();
    assert!(eps_sum < 1e-2, "‖Q‖ stayed small: Σε = {eps_sum:e}");
    let merged = p.merged_model().expect("merged model");
    for name in ["wq", "wk", "wv", "wo", "wg", "wu", "wd"] {
        let (w0, w1) = (weight(&m, name), weight(&merged, name));
        assert_ne!(w0, w1, "{name} trained");
        let (s0, s1) = (
            singular_values(&w0, 4, 4).expect("svd"),
            singular_values(&w1, 4, 4).expect("svd"),
        );
        let d = s0
            .iter()
            .zip(&s1)
            .fold(0f64, |a, (x, y)| a.max((x - y).abs()));
        // Each merge bakes in the truncation's non-orthogonality: ‖RᵀR − I‖ ≤ ε moves the
        // singular values by at most a factor 1 ± ε per side.
        let bound = s0[0] * (1e-5 + 2.0 * eps_sum);
        eprintln!(
            "{name}: max |Δσ| {d:e} (σ_max {:.3}, bound {bound:e})",
            s0[0]
        );
        assert!(d <= bound, "{name}: σ {s0:?} → {s1:?}");
    }
}

#[test]
fn train_command_with_poet_writes_a_merged_model() {
    let dir = TempDir::new("train-poet");
    let model = dir.0.join("decoder.oir");
    // The command feeds `input_ids`.
    std::fs::write(&model, DECODER.replace("%ids", "%input_ids")).expect("model written");
    let ids = dir.0.join("data.ids");
    let text: Vec<String> = tokens().iter().map(|t| t.to_string()).collect();
    std::fs::write(&ids, text.join(" ")).expect("ids written");
    let out = dir.0.join("trained.onnx");
    let r = run(&[
        "train",
        &model.to_string_lossy(),
        "--data",
        &ids.to_string_lossy(),
        "--steps",
        "12",
        "--batch",
        "2",
        "--seqlen",
        "6",
        "--lr",
        "0.01",
        "--poet",
        "kind=bs,block=2,merge-every=5,lr=0.05",
        "-o",
        &out.to_string_lossy(),
        "-q",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let m = ortho_frontends::import_file(&out).expect("trained model imports");
    let names = m.main_graph().value_names();
    assert!(names.contains_key("wq"), "the merged weight keeps its name");
    assert!(
        !names.keys().any(|n| n.contains("poet")),
        "no POET tensor left"
    );
    let bad = run(&[
        "train",
        &model.to_string_lossy(),
        "--data",
        &ids.to_string_lossy(),
        "--poet",
        "block=3",
        "-o",
        &dir.0.join("bad.onnx").to_string_lossy(),
        "-q",
    ]);
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr.contains("block 3 does not divide 4x4"),
        "{}",
        bad.stderr
    );
    assert!(!dir.0.join("bad.onnx").exists());
}
