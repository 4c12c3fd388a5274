//! `ortho-opt train MODEL --data FILE --steps N -o OUT.onnx`: fine-tunes (or trains) a language
//! model on the CPU engine with the loop of [`crate::train`], and writes the trained model as
//! ONNX. Progress (loss, tokens/s, ETA) goes to stderr; `--curve FILE` writes the loss curve as
//! JSON. Not yet: checkpoints and `--resume`, periodic evaluation, a plot of the curve.

use crate::cli::GlobalArgs;
use crate::train::{TrainConfig, Trainer, WindowSampler};
use crate::{CliError, DriverOutput};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::time::Instant;

/// Train a language model (input_ids → logits) on token data with AdamW.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// The model (.onnx or .oir): input `input_ids` int64 [batch, seq], output `logits`.
    pub model: PathBuf,
    /// Training tokens: UTF-8 text (tokenized with --tokenizer), a `.bin` of uint16 ids, or a
    /// `.ids` file of whitespace-separated ids.
    #[arg(long)]
    pub data: PathBuf,
    /// Optimizer steps.
    #[arg(long, default_value_t = 100)]
    pub steps: u64,
    /// Where the trained model is written (.onnx).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Decoupled weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Linear warm-up steps before the cosine decay.
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// Windows per micro-batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Tokens per window.
    #[arg(long, default_value_t = 128)]
    pub seqlen: usize,
    /// Micro-batches whose gradients are averaged per step.
    #[arg(long, default_value_t = 1)]
    pub accum: usize,
    /// Weights to train: name patterns ('*' any run of characters), separated by '|'.
    #[arg(long, default_value = "*")]
    pub trainable: String,
    /// Keep weights that are zero at the start at zero (healing a pruned model).
    #[arg(long)]
    pub keep_zeros: bool,
    /// Seed of the window sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the loss curve here as JSON.
    #[arg(long)]
    pub curve: Option<PathBuf>,
    /// Train the blocks' linears with POET (R·W0·P, merged every T steps): comma-separated
    /// poet-reparam options and merge-every, lr (of the skew parameters), clip, clip-ramp, e.g.
    /// `kind=bs,block=32,merge-every=50,lr=1e-3`. The written model is merged (plain dense).
    #[arg(long)]
    pub poet: Option<String>,
}

/// The plain trainer or POET's.
enum Engine {
    Plain(Box<Trainer>),
    Poet(Box<crate::poet_train::PoetTrainer>),
}

pub fn run(a: TrainArgs, g: &GlobalArgs) -> DriverOutput {
    DriverOutput::from_result(run_inner(&a, g))
}

fn tokens(a: &TrainArgs, g: &GlobalArgs) -> Result<Vec<i64>, CliError> {
    let ext = a.data.extension().and_then(|e| e.to_str()).unwrap_or("");
    let ids = if ext == "bin" || ext == "ids" {
        crate::calib::read_ids(&a.data)?
    } else {
        let tok = crate::lm::load_tokenizer(g.tokenizer("train --data TEXT needs --tokenizer")?)?;
        crate::lm::encode_file(&tok, &a.data)?
    };
    Ok(ids.into_iter().map(i64::from).collect())
}

fn run_inner(a: &TrainArgs, g: &GlobalArgs) -> Result<(String, String), CliError> {
    if a.steps == 0 || a.batch == 0 || a.seqlen == 0 || a.accum == 0 {
        return Err(CliError::Usage(
            "--steps, --batch, --seqlen and --accum must be positive",
        ));
    }
    if a.output == a.model {
        return Err(CliError::OutputOverInput {
            input: a.model.clone(),
        });
    }
    let t_start = Instant::now();
    let ids = tokens(a, g)?;
    let module = crate::input::load_module(&a.model)?;
    let cfg = TrainConfig {
        trainable: ortho_passes::autodiff::split_patterns(&a.trainable),
        lr: a.lr,
        weight_decay: a.weight_decay,
        warmup_steps: a.warmup,
        total_steps: a.steps,
        keep_zeros: a.keep_zeros,
        threads: g.threads,
        ..TrainConfig::default()
    };
    let train_err = |e: crate::train::TrainLoopError| CliError::Train { source: e.into() };
    let poet_err = |e: crate::poet_train::PoetTrainError| CliError::Train { source: e.into() };
    let mut trainer = match &a.poet {
        None => Engine::Plain(Box::new(
            Trainer::new(module.clone(), cfg).map_err(train_err)?,
        )),
        Some(p) => {
            let pcfg = crate::poet_train::PoetConfig::parse(p)
                .map_err(|e| CliError::Train { source: e.into() })?;
            Engine::Poet(Box::new(
                crate::poet_train::PoetTrainer::new(module.clone(), cfg, pcfg).map_err(poet_err)?,
            ))
        }
    };
    let mut data = WindowSampler::new(ids, a.batch, a.seqlen, a.seed).map_err(train_err)?;
    let tty = std::io::stderr().is_terminal();
    let mut curve = Vec::new();
    let t0 = Instant::now();
    let mut seen = 0usize;
    for step in 0..a.steps {
        let micro: Vec<_> = (0..a.accum).map(|_| data.next_batch()).collect();
        let r = match &mut trainer {
            Engine::Plain(t) => t.step(&micro).map_err(train_err)?,
            Engine::Poet(t) => t.step(&micro).map_err(poet_err)?,
        };
        seen += r.tokens;
        curve.push(serde_json::json!({"step": r.step, "loss": r.loss, "grad_norm": r.grad_norm, "lr_scale": r.lr_scale}));
        if !g.quiet {
            let el = t0.elapsed().as_secs_f64();
            let eta = el / (step + 1) as f64 * (a.steps - step - 1) as f64;
            let line = format!(
                "train step {}/{}: loss {:.4}, {:.0} tokens/s, {el:.1} s, eta {eta:.1} s",
                r.step,
                a.steps,
                r.loss,
                seen as f64 / el.max(1e-9)
            );
            let mut e = std::io::stderr();
            if tty {
                let _ = write!(e, "\r{line} ");
                if r.step == a.steps {
                    let _ = writeln!(e);
                }
            } else {
                let _ = writeln!(e, "{line}");
            }
        }
    }
    let out_module = match &trainer {
        Engine::Plain(t) => {
            let mut m = module;
            t.write_into(&mut m);
            m
        }
        Engine::Poet(t) => t.merged_model().map_err(poet_err)?,
    };
    let opts = ortho_frontends::ExportOptions {
        external_min_bytes: None,
        protected: vec![a.model.clone()],
    };
    ortho_frontends::export_file(&out_module, &a.output, &opts)
        .map_err(|e| CliError::Export { source: e.into() })?;
    if let Some(path) = &a.curve {
        let text = serde_json::to_string_pretty(&serde_json::json!({ "steps": curve }))
            .map_err(CliError::Json)?;
        crate::opt::write_atomic(path, text.as_bytes()).map_err(CliError::io(path))?;
    }
    let mut out = String::new();
    let last = curve
        .last()
        .and_then(|c| c["loss"].as_f64())
        .unwrap_or(f64::NAN);
    let _ = writeln!(
        out,
        "trained {} steps ({seen} tokens) in {:.1} s; final loss {last:.4}; wrote {}",
        a.steps,
        t_start.elapsed().as_secs_f64(),
        a.output.display()
    );
    Ok((out, String::new()))
}
