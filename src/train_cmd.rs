//! `ortho-opt train MODEL --data FILE --steps N -o OUT.onnx`: fine-tunes (or trains) a language
//! model on the CPU engine with the loop of [`crate::train`], and writes the trained model as
//! ONNX. Progress (loss, tokens/s, ETA) goes to stderr; `--curve FILE` writes the loss curve as
//! JSON (`--plot FILE.svg` draws it); `--eval-text` adds held-out perplexity every
//! `--eval-every` steps on the current weights; `--save-every N` writes a checkpoint
//! ([`crate::train_ckpt`]) and `--resume CKPT` continues one, with the same result as a run
//! that never stopped.

use crate::cli::GlobalArgs;
use crate::progress::Progress;
use crate::train::{TrainConfig, Trainer, WindowSampler};
use crate::train_ckpt::{Checkpoint, Curve, EvalPoint, StepPoint};
use crate::{CliError, DriverOutput};
use std::collections::BTreeMap;
use std::fmt::Write as _;
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
    /// Write a checkpoint every N steps (to --checkpoint), atomically.
    #[arg(long)]
    pub save_every: Option<u64>,
    /// Where checkpoints are written (default: the output path with `.ckpt` appended); a
    /// `{step}` in the name is replaced by the step, keeping every checkpoint.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Continue the run saved in this checkpoint (same model, data and settings).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Held-out text (tokenized with --tokenizer) whose perplexity on the current weights is
    /// recorded in the curve before training, every --eval-every steps and at the end.
    #[arg(long)]
    pub eval_text: Option<PathBuf>,
    /// Steps between evaluations (default: a tenth of --steps).
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Non-overlapping windows of the held-out text scored at each evaluation.
    #[arg(long, default_value_t = 8)]
    pub eval_windows: usize,
    /// Tokens per evaluation window (default: --seqlen).
    #[arg(long)]
    pub eval_seqlen: Option<usize>,
    /// Draw the loss (and evaluation) curve into this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
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

/// The settings a resumed run must share with the saved one: everything that changes what a
/// step computes (the model and data by their SHA-256).
fn settings(a: &TrainArgs, ids: &[i64]) -> Result<BTreeMap<String, String>, CliError> {
    let model = crate::shard::sha256::file_hex(&a.model).map_err(CliError::io(&a.model))?;
    let id_bytes: Vec<u8> = ids.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut s = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        s.insert(k.to_string(), v);
    };
    put("model sha256", model);
    put(
        "data tokens sha256",
        crate::shard::sha256::bytes_hex(&id_bytes),
    );
    put("steps", a.steps.to_string());
    put("lr", a.lr.to_string());
    put("weight-decay", a.weight_decay.to_string());
    put("warmup", a.warmup.to_string());
    put("batch", a.batch.to_string());
    put("seqlen", a.seqlen.to_string());
    put("accum", a.accum.to_string());
    put("trainable", a.trainable.clone());
    put("keep-zeros", a.keep_zeros.to_string());
    put("seed", a.seed.to_string());
    Ok(s)
}

/// Held-out evaluation: the tokenized windows and how often to score them.
struct HeldOut {
    windows: crate::eval::Windows,
    batch: usize,
    every: u64,
}

impl HeldOut {
    fn new(a: &TrainArgs, g: &GlobalArgs) -> Result<Option<HeldOut>, CliError> {
        let Some(text) = &a.eval_text else {
            return Ok(None);
        };
        let tokenizer = g.tokenizer("train --eval-text needs --tokenizer")?;
        let t = crate::eval::TextArgs {
            text: text.clone(),
            windows: a.eval_windows,
            seqlen: a.eval_seqlen.unwrap_or(a.seqlen),
            bos: None,
            batch: None,
        };
        let windows = crate::eval::tokenize(&t, tokenizer)?;
        Ok(Some(HeldOut {
            windows,
            batch: crate::eval::default_batch(&t),
            every: a.eval_every.unwrap_or((a.steps / 10).max(1)).max(1),
        }))
    }

    /// Mean NLL (nats per prediction) and the number of predictions, on the current weights.
    fn score(&self, t: &Trainer) -> Result<(f64, usize), CliError> {
        let err = |e: crate::train::TrainLoopError| CliError::Train { source: e.into() };
        let (mut sum, mut count) = (0.0f64, 0usize);
        for chunk in self.windows.ids.chunks(self.batch) {
            let logits = t.logits(chunk).map_err(err)?;
            let width = logits.shape().last().copied().unwrap_or(0);
            if logits.shape().len() != 3 || logits.as_f32().is_none() {
                return Err(CliError::LogitsShape {
                    shape: logits.shape().to_vec(),
                    batch: chunk.len(),
                    seqlen: chunk[0].len(),
                });
            }
            if chunk
                .iter()
                .flatten()
                .any(|&id| id < 0 || id as usize >= width)
            {
                return Err(CliError::VocabularyMismatch {
                    vocab: self.windows.vocab,
                    width,
                });
            }
            for (x, _) in crate::eval::batch_nll(&logits, chunk) {
                sum += x;
                count += 1;
            }
        }
        Ok((sum / count.max(1) as f64, count))
    }
}

fn run_inner(a: &TrainArgs, g: &GlobalArgs) -> Result<(String, String), CliError> {
    if a.steps == 0 || a.batch == 0 || a.seqlen == 0 || a.accum == 0 {
        return Err(CliError::Usage(
            "--steps, --batch, --seqlen and --accum must be positive",
        ));
    }
    if a.save_every == Some(0) || a.eval_every == Some(0) {
        return Err(CliError::Usage(
            "--save-every and --eval-every must be positive",
        ));
    }
    if a.poet.is_some() && (a.save_every.is_some() || a.resume.is_some()) {
        return Err(CliError::Usage(
            "--save-every and --resume are not supported with --poet yet",
        ));
    }
    if let Some(p) = &a.plot {
        if p.extension().and_then(|e| e.to_str()) != Some("svg") {
            return Err(CliError::Usage("--plot writes SVG: give a FILE.svg"));
        }
    }
    if a.output == a.model {
        return Err(CliError::OutputOverInput {
            input: a.model.clone(),
        });
    }
    let t_start = Instant::now();
    let ids = tokens(a, g)?;
    let held_out = HeldOut::new(a, g)?;
    let settings = if a.save_every.is_some() || a.resume.is_some() {
        settings(a, &ids)?
    } else {
        BTreeMap::new()
    };
    let ckpt_err = |e: crate::train_ckpt::CheckpointError| CliError::Train { source: e.into() };
    let resume = match &a.resume {
        Some(p) => {
            let c = Checkpoint::load(p).map_err(ckpt_err)?;
            c.check_settings(p, &settings).map_err(ckpt_err)?;
            Some(c)
        }
        None => None,
    };
    let module = crate::input::load_module(&a.model)?;
    let cfg = TrainConfig {
        trainable: ortho_passes::autodiff::split_patterns(&a.trainable),
        lr: a.lr,
        weight_decay: a.weight_decay,
        warmup_steps: a.warmup,
        total_steps: a.steps,
        keep_zeros: a.keep_zeros,
        threads: g.threads,
        eval: held_out.is_some(),
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
    let mut curve = Curve::default();
    let mut first = 0;
    if let (Some(c), Engine::Plain(t)) = (resume, &mut trainer) {
        first = c.trainer.step;
        t.import_state(c.trainer).map_err(train_err)?;
        data.set_state(c.sampler_state);
        curve = c.curve;
    }
    let evaluate = |t: &Trainer, step: u64, evals: &mut Vec<EvalPoint>| {
        if let Some(h) = &held_out {
            let (nll, n) = h.score(t)?;
            evals.push(EvalPoint {
                step,
                nll,
                ppl: nll.exp(),
                predictions: n as u64,
            });
        }
        Ok::<(), CliError>(())
    };
    if first == 0 {
        evaluate(trainer.inner(), 0, &mut curve.eval)?;
    }
    let mut progress = Progress::new("train", "steps", a.steps as usize, g.quiet);
    progress.update(first as usize, "");
    let t0 = Instant::now();
    let mut seen = 0usize;
    for step in first..a.steps {
        let micro: Vec<_> = (0..a.accum).map(|_| data.next_batch()).collect();
        let r = match &mut trainer {
            Engine::Plain(t) => t.step(&micro).map_err(train_err)?,
            Engine::Poet(t) => t.step(&micro).map_err(poet_err)?,
        };
        seen += r.tokens;
        curve.steps.push(StepPoint {
            step: r.step,
            loss: r.loss,
            grad_norm: r.grad_norm,
            lr_scale: r.lr_scale,
        });
        if held_out
            .as_ref()
            .is_some_and(|h| r.step % h.every == 0 || r.step == a.steps)
        {
            evaluate(trainer.inner(), r.step, &mut curve.eval)?;
        }
        if let (Some(n), Engine::Plain(t)) = (a.save_every, &trainer) {
            if r.step % n == 0 {
                let path = ckpt_path(a, r.step);
                Checkpoint {
                    settings: settings.clone(),
                    trainer: t.export_state(),
                    sampler_state: data.state(),
                    curve: curve.clone(),
                }
                .save(&path)
                .map_err(ckpt_err)?;
            }
        }
        let el = t0.elapsed().as_secs_f64();
        let done = step + 1 - first;
        let eta = el / done as f64 * (a.steps - step - 1) as f64;
        let last_eval = curve
            .eval
            .last()
            .map(|e| format!(", eval PPL {:.3}", e.ppl))
            .unwrap_or_default();
        progress.update(
            r.step as usize,
            &format!(
                "loss {:.4}{last_eval}, {:.0} tokens/s, eta {eta:.0} s",
                r.loss,
                seen as f64 / el.max(1e-9)
            ),
        );
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
        let text = serde_json::to_string_pretty(&curve).map_err(CliError::Json)?;
        crate::opt::write_atomic(path, text.as_bytes()).map_err(CliError::io(path))?;
    }
    if let Some(path) = &a.plot {
        let svg = plot(&curve)?;
        crate::opt::write_atomic(path, svg.as_bytes()).map_err(CliError::io(path))?;
    }
    let mut out = String::new();
    let last = curve.steps.last().map_or(f64::NAN, |p| p.loss);
    let _ = writeln!(
        out,
        "trained {} steps ({seen} tokens) in {:.1} s; final loss {last:.4}; wrote {}",
        a.steps - first,
        t_start.elapsed().as_secs_f64(),
        a.output.display()
    );
    if let Some(e) = curve.eval.last() {
        let _ = writeln!(
            out,
            "eval at step {}: NLL {:.4}, perplexity {:.4}",
            e.step, e.nll, e.ppl
        );
    }
    Ok((out, String::new()))
}

impl Engine {
    /// The trainer that holds the current weights.
    fn inner(&self) -> &Trainer {
        match self {
            Engine::Plain(t) => t,
            Engine::Poet(p) => &p.trainer,
        }
    }
}

/// Where the checkpoint of `step` goes: `--checkpoint` with `{step}` replaced, or the output's
/// path with `.ckpt` appended.
fn ckpt_path(a: &TrainArgs, step: u64) -> PathBuf {
    match &a.checkpoint {
        Some(p) => match p.to_str() {
            Some(t) if t.contains("{step}") => {
                PathBuf::from(t.replace("{step}", &step.to_string()))
            }
            _ => p.clone(),
        },
        None => {
            let mut s = a.output.as_os_str().to_owned();
            s.push(".ckpt");
            PathBuf::from(s)
        }
    }
}

/// The curve as an SVG chart: training loss per step and held-out NLL at its steps, both in
/// nats per token over the step number (x = step; position 0 is before training).
fn plot(curve: &Curve) -> Result<String, CliError> {
    use crate::report_html::{line_chart_svg, Series, COLOR_A, COLOR_B};
    // Index = step; the curve's points fill their steps, the rest stay NaN (not drawn).
    let n = curve.steps.iter().map(|p| p.step).max().unwrap_or(0) as usize + 1;
    let mut loss = vec![f64::NAN; n];
    let mut held = vec![f64::NAN; n];
    for p in &curve.steps {
        loss[p.step as usize] = p.loss;
    }
    for p in &curve.eval {
        if let Some(slot) = held.get_mut(p.step as usize) {
            *slot = p.nll;
        }
    }
    let mut series = vec![Series {
        label: "training loss",
        values: &loss,
        color: COLOR_A,
    }];
    if !curve.eval.is_empty() {
        series.push(Series {
            label: "held-out NLL",
            values: &held,
            color: COLOR_B,
        });
    }
    line_chart_svg("train", "step", "nats per token", &series)
}
