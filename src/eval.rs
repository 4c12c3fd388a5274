//! `ortho-opt eval`: perplexity of a language model on text, and the pieces `compare` shares
//! (tokenizing into windows, batched forward passes with progress).

use crate::cli::GlobalArgs;
use crate::progress::Progress;
use crate::run::run_error;
use crate::shard::chain::Runner;
use crate::{CliError, DriverOutput};
use ortho_codegen::cpu::HostTensor;
use ortho_codegen::metrics;
use ortho_ir::semantics::size;
use rayon::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Which tokens to score: the text and the window layout (the tokenizer is the global
/// `--tokenizer`).
#[derive(Debug, Clone, clap::Args)]
pub struct TextArgs {
    /// UTF-8 text; it is tokenized whole, without special tokens.
    #[arg(long)]
    pub text: PathBuf,
    /// Number of non-overlapping windows, taken from the start of the tokenized text.
    #[arg(long, default_value_t = 16)]
    pub windows: usize,
    /// Tokens per window; each window gives seqlen − 1 predictions.
    #[arg(long, default_value_t = 128)]
    pub seqlen: usize,
    /// Prepend this token id to every window (the window then holds seqlen − 1 text tokens).
    #[arg(long)]
    pub bos: Option<u32>,
    /// Windows per forward pass (default: as many as fit in 1024 tokens).
    #[arg(long)]
    pub batch: Option<usize>,
}

const EVAL_JSON: &str = "With --json, stdout is one JSON object:
  perplexity      exp(nll_mean) (null when not finite)
  nll_mean        mean negative log-likelihood per prediction, nats
  tokens          number of predictions scored (windows × (seqlen − 1))
  windows, seqlen, bos
  non_finite      number of non-finite logits seen (reported, never skipped)
  non_finite_positions  predictions whose logits row held a non-finite value
  vocab           width of the logits (= the tokenizer's vocabulary size)
  text_tokens     tokens in the whole text
  model, tokenizer, text, threads
  seconds         {tokenize, compile, forward, total}";

/// Perplexity of a language model (input_ids → logits) on text, over non-overlapping windows.
#[derive(Debug, clap::Args)]
#[command(after_help = EVAL_JSON)]
pub struct EvalArgs {
    /// The model (.onnx or .oir, or a shard manifest): input `input_ids` int64 [batch, seq], output logits [batch, seq, vocab].
    pub model: PathBuf,
    #[command(flatten)]
    pub text: TextArgs,
    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    pub json: bool,
}

/// Token windows of the text.
pub(crate) struct Windows {
    pub ids: Vec<Vec<i64>>,
    pub text_tokens: usize,
    pub vocab: usize,
    pub seconds: f64,
}

pub(crate) fn tokenize(t: &TextArgs, tokenizer: &Path) -> Result<Windows, CliError> {
    if t.windows == 0 || t.seqlen < 2 {
        return Err(CliError::Usage("--windows must be ≥ 1 and --seqlen ≥ 2"));
    }
    let t0 = Instant::now();
    let tok = crate::lm::load_tokenizer(tokenizer)?;
    let ids = crate::lm::encode_file(&tok, &t.text)?;
    let body = t.seqlen - usize::from(t.bos.is_some());
    let need = size::checked_mul(t.windows, body, "--windows × --seqlen")?;
    let vocab = tok.get_vocab_size(true);
    precheck_memory(t, vocab)?;
    if ids.len() < need {
        return Err(CliError::TooFewWindows {
            path: t.text.clone(),
            tokens: ids.len(),
            windows: t.windows,
            body,
        });
    }
    let windows = (0..t.windows)
        .map(|w| {
            let mut v: Vec<i64> = Vec::with_capacity(t.seqlen);
            v.extend(t.bos.map(i64::from));
            v.extend(ids[w * body..(w + 1) * body].iter().map(|&x| x as i64));
            v
        })
        .collect();
    Ok(Windows {
        ids: windows,
        text_tokens: ids.len(),
        vocab,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Refuses a window layout whose forward pass cannot fit in memory, before the model is
/// compiled: one batch's logits (batch × seqlen × vocab f32, for each of the two models that
/// `compare` runs) and its attention scores (batch × seqlen² f32 for one head, a lower bound).
/// An engine allocation beyond the available memory would otherwise abort the process.
fn precheck_memory(t: &TextArgs, vocab: usize) -> Result<(), CliError> {
    let batch = default_batch(t);
    let tokens = size::checked_mul(batch, t.seqlen, "--batch × --seqlen")?;
    let logits = size::checked_mul(tokens, vocab, "the logits")?;
    let scores = size::checked_mul(tokens, t.seqlen, "the attention scores")?;
    let bytes = logits
        .checked_mul(2)
        .and_then(|l| l.checked_add(scores))
        .and_then(|e| e.checked_mul(4))
        .ok_or_else(|| {
            ortho_ir::semantics::SemError::Overflow(format!(
                "the memory of a batch of {batch} windows of {} tokens",
                t.seqlen
            ))
        })?;
    size::check_memory(
        bytes as u64,
        &format!(
            "a forward pass over {batch} windows of {} tokens (logits and attention scores; lower --seqlen or --batch)",
            t.seqlen
        ),
    )?;
    Ok(())
}

/// The engine feeds of a decoder LM for a batch of windows.
fn feeds(plan: &Runner, batch: &[Vec<i64>]) -> Result<Vec<(String, HostTensor)>, CliError> {
    crate::lm::feeds(&plan.input_names(), batch, "eval")?
        .into_iter()
        .map(|f| {
            let t = HostTensor::from_vec(f.shape, f.data).map_err(run_error)?;
            Ok((f.name, t))
        })
        .collect()
}

/// Runs `plan` over the windows in batches and hands each batch's logits (and the index of
/// its first window) to `f`.
pub(crate) fn forward_windows(
    plans: &[&Runner],
    w: &Windows,
    batch: usize,
    progress: &mut Progress,
    mut f: impl FnMut(usize, &[HostTensor]) -> Result<(), CliError>,
) -> Result<(), CliError> {
    progress.update(0, "");
    let mut done = 0;
    for chunk in w.ids.chunks(batch.max(1)) {
        let mut logits = Vec::with_capacity(plans.len());
        for plan in plans {
            let (names, tensors): (Vec<String>, Vec<HostTensor>) =
                feeds(plan, chunk)?.into_iter().unzip();
            let refs: Vec<(&str, HostTensor)> =
                names.iter().map(String::as_str).zip(tensors).collect();
            let outs = plan.run(&refs)?;
            let idx = outs.iter().position(|(n, _)| n == "logits").unwrap_or(0);
            let (_, t) = outs.into_iter().nth(idx).ok_or(CliError::NoOutputs)?;
            check_logits(&t, chunk.len(), chunk[0].len(), w.vocab)?;
            logits.push(t);
        }
        f(done, &logits)?;
        done += chunk.len();
        progress.update(done, "");
    }
    Ok(())
}

fn check_logits(t: &HostTensor, b: usize, s: usize, vocab: usize) -> Result<(), CliError> {
    if t.as_f32().is_none() {
        return Err(CliError::LogitsDType {
            dtype: t.dtype().to_string(),
        });
    }
    match t.shape() {
        [tb, ts, v] if *tb == b && *ts == s => {
            if *v != vocab {
                return Err(CliError::VocabularyMismatch { vocab, width: *v });
            }
            Ok(())
        }
        other => Err(CliError::LogitsShape {
            shape: other.to_vec(),
            batch: b,
            seqlen: s,
        }),
    }
}

/// Per-prediction NLL of a batch of windows: (nll, non-finite logits in the row), in order.
pub(crate) fn batch_nll(logits: &HostTensor, windows: &[Vec<i64>]) -> Vec<(f64, usize)> {
    let (s, v) = (logits.shape()[1], logits.shape()[2]);
    let data = logits.as_f32().unwrap_or(&[]);
    let rows: Vec<(usize, usize)> = (0..windows.len())
        .flat_map(|w| (0..s - 1).map(move |t| (w, t)))
        .collect();
    rows.par_iter()
        .map(|&(w, t)| {
            let row = &data[(w * s + t) * v..(w * s + t + 1) * v];
            metrics::nll(row, windows[w][t + 1] as usize)
        })
        .collect()
}

pub(crate) fn default_batch(t: &TextArgs) -> usize {
    t.batch
        .unwrap_or((1024 / t.seqlen).max(1))
        .min(t.windows)
        .max(1)
}

pub fn run(a: EvalArgs, g: &GlobalArgs) -> DriverOutput {
    DriverOutput::from_result(run_inner(&a, g))
}

/// When the phases of `eval` / `compare` ended.
pub(crate) struct Timings {
    pub compile: f64,
    pub forward: f64,
    /// When the command started (the total runs up to the JSON being written).
    pub start: Instant,
}

impl Timings {
    /// The `--json` line of `eval` / `compare`: the command's own keys plus the context both
    /// print (text, tokenizer, window layout, threads, seconds). Keys print sorted.
    pub(crate) fn json(
        &self,
        own: serde_json::Value,
        t: &TextArgs,
        tokenizer: &Path,
        w: &Windows,
        threads: usize,
    ) -> String {
        let mut j = serde_json::json!({
            "tokenizer": tokenizer.display().to_string(),
            "text": t.text.display().to_string(),
            "windows": t.windows,
            "seqlen": t.seqlen,
            "bos": t.bos,
            "threads": threads,
            "seconds": {
                "tokenize": w.seconds,
                "compile": self.compile,
                "forward": self.forward,
                "total": self.start.elapsed().as_secs_f64(),
            },
        });
        if let (Some(all), serde_json::Value::Object(own)) = (j.as_object_mut(), own) {
            all.extend(own);
        }
        format!("{j}\n")
    }
}

/// A JSON number, or `null` for a non-finite value (JSON has no NaN or infinity).
pub(crate) fn finite_or_null(x: f64) -> serde_json::Value {
    serde_json::Number::from_f64(x)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

fn run_inner(a: &EvalArgs, g: &GlobalArgs) -> Result<(String, String), CliError> {
    let t_all = Instant::now();
    let tokenizer = g.tokenizer("eval needs --tokenizer tokenizer.json")?;
    let w = tokenize(&a.text, tokenizer)?;
    let t0 = Instant::now();
    let plan = crate::run::compile(&a.model, g.threads, g.quiet)?;
    let compile_s = t0.elapsed().as_secs_f64();
    let mut progress = Progress::new("eval", "windows", w.ids.len(), g.quiet);
    let t1 = Instant::now();
    let mut nll_sum = 0.0f64;
    let mut count = 0usize;
    let mut non_finite = 0usize;
    let mut nf_positions = 0usize;
    forward_windows(
        &[&plan],
        &w,
        default_batch(&a.text),
        &mut progress,
        |first, logits| {
            let n = logits[0].shape()[0];
            for (x, nf) in batch_nll(&logits[0], &w.ids[first..first + n]) {
                nll_sum += x;
                count += 1;
                non_finite += nf;
                nf_positions += usize::from(nf > 0);
            }
            Ok(())
        },
    )?;
    let forward_s = t1.elapsed().as_secs_f64();
    let nll_mean = nll_sum / count.max(1) as f64;
    let ppl = nll_mean.exp();
    let mut err = String::new();
    if non_finite > 0 {
        let _ = writeln!(err, "warning: {non_finite} non-finite logits in {nf_positions} of {count} predictions; the perplexity is not finite");
    }
    let out = if a.json {
        let j = serde_json::json!({
            "model": a.model.display().to_string(),
            "perplexity": finite_or_null(ppl),
            "nll_mean": finite_or_null(nll_mean),
            "tokens": count,
            "non_finite": non_finite,
            "non_finite_positions": nf_positions,
            "vocab": w.vocab,
            "text_tokens": w.text_tokens,
        });
        Timings {
            compile: compile_s,
            forward: forward_s,
            start: t_all,
        }
        .json(j, &a.text, tokenizer, &w, plan.threads())
    } else {
        let mut s = String::new();
        let _ = writeln!(s, "model:       {}", a.model.display());
        let _ = writeln!(
            s,
            "text:        {} ({} tokens)",
            a.text.text.display(),
            w.text_tokens
        );
        let _ = writeln!(
            s,
            "windows:     {} × {}{} → {count} predictions",
            a.text.windows,
            a.text.seqlen,
            a.text
                .bos
                .map(|b| format!(" (BOS {b})"))
                .unwrap_or_default()
        );
        let _ = writeln!(s, "perplexity:  {ppl:.5}");
        let _ = writeln!(s, "mean NLL:    {nll_mean:.6} nats");
        let _ = writeln!(s, "non-finite:  {non_finite} logits");
        let _ = writeln!(
            s,
            "time:        tokenize {:.2} s, compile {compile_s:.2} s, forward {forward_s:.2} s ({:.0} tokens/s, {} threads)",
            w.seconds,
            (a.text.windows * a.text.seqlen) as f64 / forward_s.max(1e-9),
            plan.threads()
        );
        s
    };
    Ok((out, err))
}
