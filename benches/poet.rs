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
use std::fmt::Write as _;
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

/// Seeded Gaussian values (splitmix64 + Box–Muller).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64 + 1e-12
    }
    fn gauss(&mut self) -> f64 {
        let (u, v) = (self.next(), self.next());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

fn dense(out: &mut String, name: &str, dims: &[usize], sd: f64, rng: &mut Rng) {
    let n: usize = dims.iter().product();
    let vals: Vec<String> = (0..n).map(|_| format!("{:.5}", sd * rng.gauss())).collect();
    let shape: Vec<String> = dims.iter().map(usize::to_string).collect();
    let _ = writeln!(
        out,
        "  %{name} = const tensor<{}xf32> dense<[{}]>",
        shape.join("x"),
        vals.join(", ")
    );
}

fn ones(out: &mut String, name: &str, d: usize) {
    let _ = writeln!(
        out,
        "  %{name} = const tensor<{d}xf32> dense<[{}]>",
        vec!["1.0"; d].join(", ")
    );
}

/// The tiny decoder as `.oir` text (input `input_ids` [b, ctx], output `logits`).
fn tiny_llama(vocab: usize, d: usize, layers: usize, ctx: usize, seed: u64) -> String {
    let mut rng = Rng(seed);
    let mut s = String::from("module {ir_version = 8, opset_import = [\"\" = 17]}\n");
    let _ = writeln!(
        s,
        "graph @tiny(%input_ids: tensor<\"b\"x{ctx}xi64>) -> (%logits) {{"
    );
    dense(&mut s, "embed", &[vocab, d], 1.0, &mut rng);
    dense(
        &mut s,
        "head",
        &[d, vocab],
        1.0 / (d as f64).sqrt(),
        &mut rng,
    );
    let _ = writeln!(s, "  %eps = const tensor<f32> dense<[1e-5]>");
    let _ = writeln!(
        s,
        "  %scale = const tensor<f32> dense<[{}]>",
        1.0 / (d as f64).sqrt()
    );
    let mask: Vec<String> = (0..ctx * ctx)
        .map(|k| {
            if k % ctx > k / ctx {
                "-1e9".into()
            } else {
                "0.0".to_string()
            }
        })
        .collect();
    let _ = writeln!(
        s,
        "  %mask = const tensor<{ctx}x{ctx}xf32> dense<[{}]>",
        mask.join(", ")
    );
    let sd = 1.0 / (d as f64).sqrt();
    for l in 0..layers {
        ones(&mut s, &format!("g1_{l}"), d);
        ones(&mut s, &format!("g2_{l}"), d);
        for w in ["wq", "wk", "wv", "wo"] {
            dense(&mut s, &format!("{w}_{l}"), &[d, d], sd, &mut rng);
        }
        dense(&mut s, &format!("wg_{l}"), &[d, 4 * d], sd, &mut rng);
        dense(&mut s, &format!("wu_{l}"), &[d, 4 * d], sd, &mut rng);
        dense(&mut s, &format!("wd_{l}"), &[4 * d, d], 0.5 * sd, &mut rng);
    }
    ones(&mut s, "gf", d);
    let _ = writeln!(
        s,
        "  %h0 = onnx.Gather(%embed, %input_ids) {{axis = 0}} : ?"
    );
    let norm = |s: &mut String, x: &str, g: &str, o: &str| {
        let _ = writeln!(s, "  %{o}_sq = onnx.Mul(%{x}, %{x}) : ?");
        let _ = writeln!(
            s,
            "  %{o}_mean = onnx.ReduceMean(%{o}_sq) {{axes = [-1], keepdims = 1}} : ?"
        );
        let _ = writeln!(s, "  %{o}_eps = onnx.Add(%{o}_mean, %eps) : ?");
        let _ = writeln!(s, "  %{o}_rms = onnx.Sqrt(%{o}_eps) : ?");
        let _ = writeln!(s, "  %{o}_n = onnx.Div(%{x}, %{o}_rms) : ?");
        let _ = writeln!(s, "  %{o} = onnx.Mul(%{o}_n, %{g}) : ?");
    };
    let mut h = "h0".to_string();
    for l in 0..layers {
        norm(&mut s, &h, &format!("g1_{l}"), &format!("n1_{l}"));
        for (o, w) in [("q", "wq"), ("k", "wk"), ("v", "wv")] {
            let _ = writeln!(s, "  %{o}_{l} = onnx.MatMul(%n1_{l}, %{w}_{l}) : ?");
        }
        let _ = writeln!(
            s,
            "  %kT_{l} = onnx.Transpose(%k_{l}) {{perm = [0, 2, 1]}} : ?"
        );
        let _ = writeln!(s, "  %qk_{l} = onnx.MatMul(%q_{l}, %kT_{l}) : ?");
        let _ = writeln!(s, "  %qks_{l} = onnx.Mul(%qk_{l}, %scale) : ?");
        let _ = writeln!(s, "  %qkm_{l} = onnx.Add(%qks_{l}, %mask) : ?");
        let _ = writeln!(s, "  %p_{l} = onnx.Softmax(%qkm_{l}) {{axis = -1}} : ?");
        let _ = writeln!(s, "  %pv_{l} = onnx.MatMul(%p_{l}, %v_{l}) : ?");
        let _ = writeln!(s, "  %o_{l} = onnx.MatMul(%pv_{l}, %wo_{l}) : ?");
        let _ = writeln!(s, "  %r1_{l} = onnx.Add(%{h}, %o_{l}) : ?");
        norm(
            &mut s,
            &format!("r1_{l}"),
            &format!("g2_{l}"),
            &format!("n2_{l}"),
        );
        let _ = writeln!(s, "  %gate_{l} = onnx.MatMul(%n2_{l}, %wg_{l}) : ?");
        let _ = writeln!(s, "  %up_{l} = onnx.MatMul(%n2_{l}, %wu_{l}) : ?");
        let _ = writeln!(s, "  %sig_{l} = onnx.Sigmoid(%gate_{l}) : ?");
        let _ = writeln!(s, "  %silu_{l} = onnx.Mul(%gate_{l}, %sig_{l}) : ?");
        let _ = writeln!(s, "  %gu_{l} = onnx.Mul(%silu_{l}, %up_{l}) : ?");
        let _ = writeln!(s, "  %down_{l} = onnx.MatMul(%gu_{l}, %wd_{l}) : ?");
        let _ = writeln!(s, "  %r2_{l} = onnx.Add(%r1_{l}, %down_{l}) : ?");
        h = format!("r2_{l}");
    }
    norm(&mut s, &h, "gf", "nf");
    let _ = writeln!(
        s,
        "  %logits = onnx.MatMul(%nf, %head) : tensor<\"b\"x{ctx}x{vocab}xf32>"
    );
    s.push_str("}\n");
    s
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
    let model = tiny_llama(vocab, d, layers, ctx, 1);
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
