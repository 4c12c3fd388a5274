//! One training step (forward + backward + AdamW) of SmolLM2-135M (decomposed spelling) on the
//! CPU engine: every weight of the model trainable (`model.*`: the tied embedding, the decoder
//! layers, the final norm), mean token cross-entropy, batch × 128 tokens.
//!
//! `cargo bench --bench train` (release build, fixtures prepared). Prints the plan's compile
//! time and the time of each timed step. Environment: ORTHO_BENCH_SIZES (default `1x128`, e.g.
//! `1x128,4x128`), ORTHO_BENCH_RUNS (timed steps per size after one warm-up step, default 2).
//! The PyTorch side of issue 15's comparison is not written yet.

use ortho_opt::train::{TrainConfig, Trainer, WindowSampler};
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

fn main() {
    let path = fixtures().join("smollm2-135m/decomposed.onnx");
    let sizes = std::env::var("ORTHO_BENCH_SIZES").unwrap_or_else(|_| "1x128".into());
    let runs: usize = std::env::var("ORTHO_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    for size in sizes.split(',') {
        let Some((b, s)) = size.split_once('x') else {
            eprintln!("bad size {size}");
            continue;
        };
        let (b, s): (usize, usize) = match (b.parse(), s.parse()) {
            (Ok(b), Ok(s)) => (b, s),
            _ => {
                eprintln!("bad size {size}");
                continue;
            }
        };
        let m = ortho_frontends::import_file(&path).expect("imports the fixture");
        let t0 = Instant::now();
        let cfg = TrainConfig {
            trainable: vec!["model.*".into()],
            lr: 1e-5,
            total_steps: 100,
            ..TrainConfig::default()
        };
        let mut tr = Trainer::new(m, cfg).expect("trainer");
        let compile = t0.elapsed();
        let n: usize = tr.parameters().map(|(_, _, v)| v.len()).sum();
        // Token ids from a fixed cycle over the vocabulary (what is measured is time, not loss).
        let tokens: Vec<i64> = (0..4096i64).map(|i| (i * 7919) % 49152).collect();
        let mut data = WindowSampler::new(tokens, b, s, 1).expect("sampler");
        let warm = tr.step(&[data.next_batch()]).expect("warm-up step");
        println!(
            "SmolLM2-135M train step {b}x{s}: {n} trainable weights, compile {:.2} s, warm-up loss {:.4}",
            compile.as_secs_f64(),
            warm.loss
        );
        for _ in 0..runs {
            let t = Instant::now();
            let r = tr.step(&[data.next_batch()]).expect("step");
            let dt = t.elapsed().as_secs_f64();
            println!(
                "  step {}: {:.3} s (plan + accumulation {:.3} s, AdamW {:.3} s; {:.0} tokens/s), loss {:.4}, ‖g‖ {:.3}",
                r.step,
                dt,
                r.run_secs,
                r.update_secs,
                r.tokens as f64 / dt,
                r.loss,
                r.grad_norm
            );
        }
    }
}
