//! The training loop on a tiny language model: the loss decreases, and the same seed gives
//! byte-identical weights.

mod common;
mod train_tiny;

use common::{run, TempDir};
use ortho_opt::train::{TrainConfig, Trainer, WindowSampler};
use ortho_passes::train::AdamWConfig;
use train_tiny::TINY;

/// Tokens following a fixed cycle, so the next token is a function of the current one.
fn tokens() -> Vec<i64> {
    let cycle = [3i64, 1, 4, 0, 5, 2, 6, 7];
    (0..400).map(|i| cycle[i % 8]).collect()
}

fn train(seed: u64, steps: u64) -> (Vec<f64>, Vec<Vec<u8>>) {
    let m = ortho_ir::text::parse_module(TINY).expect("tiny model parses");
    let cfg = TrainConfig {
        trainable: vec!["*".into()],
        lr: 0.05,
        weight_decay: 0.01,
        adam: AdamWConfig::default(),
        warmup_steps: 3,
        total_steps: steps,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(m, cfg).expect("trainer");
    let mut data = WindowSampler::new(tokens(), 4, 6, seed).expect("sampler");
    let mut losses = Vec::new();
    for _ in 0..steps {
        // Two micro-batches per step (gradient accumulation).
        let micro = [data.next_batch(), data.next_batch()];
        losses.push(t.step(&micro).expect("step").loss);
    }
    let bytes = t
        .parameters()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    (losses, bytes)
}

#[test]
fn tiny_model_loss_decreases_deterministically() {
    let (losses, w1) = train(11, 40);
    let first = losses[0];
    let last = *losses.last().expect("losses");
    eprintln!("tiny model: loss {first:.4} → {last:.4} over 40 steps");
    // Uniform prediction over 8 tokens is ln 8 ≈ 2.08; the cycle is learnable.
    assert!((first - 8f64.ln()).abs() < 0.1, "{first}");
    assert!(last < 0.5 * first, "{losses:?}");
    let (losses2, w2) = train(11, 40);
    assert_eq!(losses, losses2);
    assert_eq!(w1, w2, "same seed, same bytes");
    let (_, w3) = train(12, 40);
    assert_ne!(w1, w3, "another seed draws other windows");
}

#[test]
fn train_command_writes_a_trained_model_and_its_curve() {
    let dir = TempDir::new("train-cmd");
    let model = dir.0.join("tiny.oir");
    std::fs::write(&model, TINY).expect("model written");
    let ids = dir.0.join("data.ids");
    let text: Vec<String> = tokens().iter().map(|t| t.to_string()).collect();
    std::fs::write(&ids, text.join(" ")).expect("ids written");
    let out = dir.0.join("trained.onnx");
    let curve = dir.0.join("curve.json");
    let p = |x: &std::path::Path| x.to_str().expect("utf-8 path").to_string();
    let r = run(&[
        "train",
        &p(&model),
        "--data",
        &p(&ids),
        "--steps",
        "30",
        "-o",
        &p(&out),
        "--lr",
        "0.05",
        "--batch",
        "4",
        "--seqlen",
        "6",
        "--warmup",
        "2",
        "--curve",
        &p(&curve),
        "-q",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("trained 30 steps (720 tokens)"),
        "{}",
        r.stdout
    );
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&curve).expect("curve")).expect("json");
    let steps = c["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 30);
    let (first, last) = (
        steps[0]["loss"].as_f64().expect("loss"),
        steps[29]["loss"].as_f64().expect("loss"),
    );
    assert!(last < 0.5 * first, "{first} → {last}");
    // The written model loads, and its weights are the trained ones, not the originals.
    let trained = ortho_frontends::import_file(&out).expect("trained model imports");
    let before = ortho_ir::text::parse_module(TINY).expect("parses");
    let w = |m: &ortho_ir::Module| {
        let g = m.main_graph();
        let v = g.value_names()["W2"];
        match g.node(v.node).op {
            ortho_ir::Op::Const(t) => m.tensor(t).to_f64_vec().expect("values"),
            _ => panic!("W2 is an initializer"),
        }
    };
    assert_ne!(w(&trained), w(&before));

    // Text data without a tokenizer: a usage error, nothing written.
    let out2 = dir.0.join("never.onnx");
    let r = run(&[
        "train",
        &p(&model),
        "--data",
        &p(&model),
        "-o",
        &p(&out2),
        "-q",
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("needs --tokenizer"), "{}", r.stderr);
    assert!(!out2.exists());
}
