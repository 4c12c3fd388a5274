//! From-scratch reproduction of POET against AdamW on a tiny Llama-style decoder, sized for
//! the 2-core machine: character-level (the distinct bytes of sotu_calib, others → byte 0's
//! slot), d = ORTHO_POET_D (64), ORTHO_POET_LAYERS (2) pre-norm blocks of single-head causal
//! attention and a SiLU-gated MLP (4d), context 64, batch 8, untied output head. Every arm sees
//! the same token windows for the same number of steps (ORTHO_POET_STEPS, default 300):
//! - AdamW: every weight trained (lr 3e-3);
//! - POET-BS b = d/4 and d/2, POET-FS b = d/2: the block linears are R·W0·P with W0 a
//!   normalized Gaussian (init=normalized-gaussian) and only the skew parameters trained
//!   (lr ORTHO_POET_LR, default 3e-3), merged every 25 steps; embeddings, norms and the head
//!   train with AdamW (lr 3e-3).
//!
//! Prints, per arm: eval loss and PPL on 16 × 64 characters of sotu_eval, trainable parameters
//! of the linears, optimizer state of those (2 floats per trainable parameter), and the mean
//! time per step. `cargo bench --bench poet` (release, fixtures prepared).

use ortho_opt::poet_train::{PoetConfig, PoetTrainer};
use ortho_opt::train::{TokenBatch, TrainConfig, Trainer, WindowSampler};
use ortho_passes::poet::reparam::PoetReparamOptions;
use ortho_passes::poet::{PoetInit, PoetKind};
use std::path::PathBuf;
use std::time::Instant;

fn fixtures() -> PathBuf {
    std::env::var_os("ORTHO_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/ortho-opt/fixtures")
        })
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let d = env("ORTHO_POET_D", 64);
    let layers = env("ORTHO_POET_LAYERS", 2);
    let steps = env("ORTHO_POET_STEPS", 300) as u64;
    let poet_lr: f64 = std::env::var("ORTHO_POET_LR")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3e-3);
    let (ctx, batch) = (64, 8);
    let text = |f: &str| std::fs::read(fixtures().join("text").join(f)).expect("sotu text");
    let (calib, eval) = (text("sotu_calib.txt"), text("sotu_eval.txt"));
    let mut chars: Vec<u8> = calib.clone();
    chars.sort_unstable();
    chars.dedup();
    let id = |b: &u8| chars.binary_search(b).unwrap_or(0) as i64;
    let train_ids: Vec<i64> = calib.iter().map(id).collect();
    let eval_ids: Vec<i64> = eval.iter().map(id).collect();
    let vocab = chars.len();
    // The decoder of `ortho-opt new-model`, single-head and without rotary embedding (as this
    // comparison was first run).
    let model = ortho_opt::new_model::llama_oir(&ortho_opt::new_model::LlamaConfig {
        layers,
        width: d,
        heads: 1,
        kv_heads: None,
        vocab,
        context: ctx,
        mlp: None,
        seed: 1,
        rope: false,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
    })
    .expect("a valid config");
    let m = ortho_ir::text::parse_module(&model).expect("tiny llama parses");
    let mut ev = WindowSampler::new(eval_ids, 16, ctx, 99).expect("eval windows");
    let eval_batch: TokenBatch = ev.next_batch();
    let linear_params = layers * (4 * d * d + 3 * 4 * d * d);
    println!(
        "tiny Llama: vocab {vocab} (characters), d {d}, {layers} layers, context {ctx}, batch {batch}, {steps} steps = {} tokens per arm; {} linear parameters",
        steps as usize * batch * ctx,
        linear_params
    );
    println!("| arm | eval loss | eval PPL | trainable linear params | linear optimizer floats | s/step |");
    println!("|---|---|---|---|---|---|");
    let cfg = || TrainConfig {
        lr: 3e-3,
        warmup_steps: 10,
        total_steps: steps,
        ..TrainConfig::default()
    };
    // AdamW.
    {
        let mut t = Trainer::new(m.clone(), cfg()).expect("trainer");
        let mut data = WindowSampler::new(train_ids.clone(), batch, ctx, 7).expect("windows");
        let t0 = Instant::now();
        for _ in 0..steps {
            t.step(&[data.next_batch()]).expect("step");
        }
        let secs = t0.elapsed().as_secs_f64() / steps as f64;
        let l = t.eval_loss(&eval_batch).expect("eval");
        println!(
            "| AdamW | {l:.4} | {:.3} | {linear_params} | {} | {secs:.3} |",
            l.exp(),
            2 * linear_params
        );
    }
    for (kind, block, label) in [
        (PoetKind::Bs, d / 4, "POET-BS b=d/4"),
        (PoetKind::Bs, d / 2, "POET-BS b=d/2"),
        (PoetKind::Fs, d / 2, "POET-FS b=d/2"),
    ] {
        let pcfg = PoetConfig {
            reparam: PoetReparamOptions {
                kind,
                block,
                init: PoetInit::NormalizedGaussian,
                seed: 3,
                ..PoetReparamOptions::default()
            },
            merge_every: 25,
            lr: poet_lr,
            clip: Some(1.0),
            clip_ramp: 10,
        };
        let mut p = PoetTrainer::new(m.clone(), cfg(), pcfg).expect("poet trainer");
        let mut data = WindowSampler::new(train_ids.clone(), batch, ctx, 7).expect("windows");
        let t0 = Instant::now();
        for _ in 0..steps {
            p.step(&[data.next_batch()]).expect("step");
        }
        let secs = t0.elapsed().as_secs_f64() / steps as f64;
        let l = p.trainer.eval_loss(&eval_batch).expect("eval");
        let k = p.skew_parameters();
        let eps = p
            .merges
            .iter()
            .map(|r| r.max_orthogonality_error)
            .fold(0f64, f64::max);
        println!(
            "| {label} ({} merges, max ‖RᵀR−I‖ {eps:.1e}) | {l:.4} | {:.3} | {k} | {} | {secs:.3} |",
            p.merges.len(),
            l.exp(),
            2 * k
        );
    }
}
