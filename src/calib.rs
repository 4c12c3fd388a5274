//! Calibration input for the optimizer command: `--calib-text FILE --tokenizer tokenizer.json`
//! (or `--calib-ids FILE`) with `--calib-samples N --calib-seqlen L --calib-seed S`.
//!
//! Everything is checked before any pass runs: the text must hold at least N × L tokens, the
//! tokenizer's vocabulary must fit the model's embedding table, and every sampled id must be a
//! row of it. Windows of L tokens start at positions drawn uniformly with a seeded SplitMix64,
//! so a seed always gives the same calibration set. The memory estimate is printed (stderr)
//! before any work, and progress lines of the calibration passes go to stderr as they happen.

use ortho_codegen::cpu::CpuEvaluator;
use ortho_ir::analysis::transformer::analyze_transformer;
use ortho_ir::eval::EvalTensor;
use ortho_ir::Module;
use ortho_passes::calib::Calibration;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The calibration flags of the optimizer command.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CalibArgs {
    /// UTF-8 calibration text (needs --tokenizer); tokenized whole, without special tokens.
    #[arg(long = "calib-text", value_name = "FILE")]
    pub calib_text: Option<PathBuf>,
    /// Pre-tokenized calibration ids instead of text: raw little-endian uint16 (`.bin`) or
    /// whitespace-separated decimal ids (any other extension).
    #[arg(long = "calib-ids", value_name = "FILE", conflicts_with = "calib_text")]
    pub calib_ids: Option<PathBuf>,
    /// tokenizer.json (Hugging Face `tokenizers` format) for --calib-text.
    #[arg(long = "tokenizer", value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Number of calibration sequences.
    #[arg(long = "calib-samples", default_value_t = 128)]
    pub samples: usize,
    /// Tokens per calibration sequence.
    #[arg(long = "calib-seqlen", default_value_t = 512)]
    pub seqlen: usize,
    /// Seed of the window sampling.
    #[arg(long = "calib-seed", default_value_t = 0)]
    pub seed: u64,
    /// Sequences per forward pass (default: as many as fit in 4096 tokens).
    #[arg(long = "calib-chunk")]
    pub chunk: Option<usize>,
    /// Threads of the calibration engine (default: all cores).
    #[arg(long = "calib-threads")]
    pub threads: Option<usize>,
    /// No per-layer calibration progress on stderr (the memory estimate is still printed).
    #[arg(long = "calib-quiet")]
    pub quiet: bool,
}

impl CalibArgs {
    pub fn given(&self) -> bool {
        self.calib_text.is_some() || self.calib_ids.is_some()
    }
}

/// SplitMix64: small, seedable, and the same on every platform.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n ≥ 1), without modulo bias.
    fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next();
            if x < zone {
                return x % n;
            }
        }
    }
}

/// `samples` windows of `seqlen` ids drawn from `ids` with `seed` (starts uniform over every
/// position a whole window fits at).
pub fn sample_windows(ids: &[u32], samples: usize, seqlen: usize, seed: u64) -> Vec<Vec<i64>> {
    let mut rng = SplitMix(seed);
    let span = (ids.len() - seqlen + 1) as u64;
    (0..samples)
        .map(|_| {
            let s = rng.below(span) as usize;
            ids[s..s + seqlen].iter().map(|&x| i64::from(x)).collect()
        })
        .collect()
}

fn read_ids(path: &Path) -> Result<Vec<u32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if path.extension().is_some_and(|e| e == "bin") {
        if bytes.len() % 2 != 0 {
            return Err(format!(
                "{}: a .bin file of uint16 ids has an even length, this one has {} bytes",
                path.display(),
                bytes.len()
            ));
        }
        return Ok(bytes
            .chunks_exact(2)
            .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])))
            .collect());
    }
    let text = String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8", path.display()))?;
    text.split_whitespace()
        .map(|w| {
            w.parse::<u32>()
                .map_err(|_| format!("{}: '{w}' is not a token id", path.display()))
        })
        .collect()
}

/// The model's vocabulary (rows of its embedding table) and residual width, when found.
fn model_dims(m: &Module) -> Option<(usize, usize)> {
    let s = analyze_transformer(m, m.main);
    let e = s.embeddings.first()?;
    Some((e.vocab as usize, e.width as usize))
}

/// Builds the calibration set of `a` for model `m`, or `None` when no calibration flag is given.
/// Errors name the file and what does not fit; nothing has run yet when they are returned.
pub fn build(a: &CalibArgs, m: &Module) -> Result<Option<Arc<Calibration>>, String> {
    if !a.given() {
        return Ok(None);
    }
    if a.samples == 0 || a.seqlen < 2 {
        return Err("--calib-samples must be ≥ 1 and --calib-seqlen ≥ 2".into());
    }
    let (vocab, width) = model_dims(m).ok_or(
        "calibration needs a language model whose embedding lookup the structure analysis finds \
         (see `ortho-opt analyze`)",
    )?;
    let (source, ids) = match (&a.calib_text, &a.calib_ids) {
        (Some(text), _) => {
            let tp = a
                .tokenizer
                .as_ref()
                .ok_or("--calib-text needs --tokenizer tokenizer.json")?;
            let tok = tokenizers::Tokenizer::from_file(tp)
                .map_err(|e| format!("{}: cannot load the tokenizer: {e}", tp.display()))?;
            let tv = tok.get_vocab_size(true);
            if tv > vocab {
                return Err(format!(
                    "{}: the tokenizer has {tv} tokens but the model's embedding has {vocab} \
                     rows: it is not this model's tokenizer",
                    tp.display()
                ));
            }
            let s =
                std::fs::read_to_string(text).map_err(|e| format!("{}: {e}", text.display()))?;
            let enc = tok
                .encode(s.as_str(), false)
                .map_err(|e| format!("{}: tokenization failed: {e}", text.display()))?;
            (text, enc.get_ids().to_vec())
        }
        (None, Some(p)) => (p, read_ids(p)?),
        (None, None) => return Ok(None),
    };
    let need = a.samples * a.seqlen;
    if ids.len() < need {
        return Err(format!(
            "{} has {} tokens, fewer than the {} requested (--calib-samples {} × --calib-seqlen {})",
            source.display(),
            ids.len(),
            need,
            a.samples,
            a.seqlen
        ));
    }
    if let Some((i, &bad)) = ids.iter().enumerate().find(|(_, &x)| x as usize >= vocab) {
        return Err(format!(
            "{}: token {i} has id {bad}, outside the model's vocabulary of {vocab}",
            source.display()
        ));
    }
    let windows = sample_windows(&ids, a.samples, a.seqlen, a.seed);
    let chunk = a.chunk.unwrap_or((4096 / a.seqlen).max(1)).max(1);
    let names: Vec<String> = {
        let g = m.main_graph();
        g.inputs()
            .iter()
            .map(|&n| {
                g.value_name(ortho_ir::ValueId { node: n, output: 0 })
                    .to_string()
            })
            .collect()
    };
    let mut chunks = Vec::new();
    for batch in windows.chunks(chunk) {
        chunks.push(feeds(&names, batch)?);
    }
    let threads = a.threads.unwrap_or_else(|| CpuEvaluator::default().threads);
    let estimate = estimate_bytes(m, a.samples, a.seqlen, chunk, width);
    let mib = |b: f64| b / (1024.0 * 1024.0);
    let quiet = a.quiet;
    {
        eprintln!(
            "calibration: {} × {} tokens of {} (seed {}), {} chunks of ≤ {chunk} sequences, {threads} threads; \
             memory estimate ≈ {:.0} MiB (weights mapped + rewritten 2 × {:.0} MiB, residual cache 2 × {:.0} MiB, \
             one chunk's activations ≈ {:.0} MiB, Hessians ≈ {:.0} MiB)",
            a.samples,
            a.seqlen,
            source.display(),
            a.seed,
            chunks.len(),
            mib(estimate.total()),
            mib(estimate.weights),
            mib(estimate.cache),
            mib(estimate.activations),
            mib(estimate.hessians),
        );
    }
    let progress: Option<ortho_passes::calib::ProgressFn> = if quiet {
        None
    } else {
        Some(Arc::new(|line: &str| eprintln!("calibration: {line}")))
    };
    Ok(Some(Arc::new(Calibration {
        evaluator: Arc::new(CpuEvaluator { threads }),
        chunks,
        samples: a.samples,
        seqlen: a.seqlen,
        progress,
    })))
}

/// The feeds of a decoder LM for a batch of windows (as `eval` fills them).
fn feeds(names: &[String], batch: &[Vec<i64>]) -> Result<Vec<(String, EvalTensor)>, String> {
    let (b, s) = (batch.len(), batch.first().map_or(0, |w| w.len()));
    let mut out = Vec::new();
    for n in names {
        let t = match n.as_str() {
            "attention_mask" => EvalTensor::I64 {
                shape: vec![b, s],
                data: vec![1; b * s],
            },
            "position_ids" => EvalTensor::I64 {
                shape: vec![b, s],
                data: (0..b * s).map(|i| (i % s) as i64).collect(),
            },
            x if x == "input_ids" || names.len() == 1 => EvalTensor::I64 {
                shape: vec![b, s],
                data: batch.iter().flatten().copied().collect(),
            },
            other => {
                return Err(format!(
                    "the model has an input '{other}' that calibration cannot fill (it feeds \
                     input_ids, attention_mask, position_ids)"
                ))
            }
        };
        out.push((n.clone(), t));
    }
    Ok(out)
}

/// The parts of the memory estimate, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Estimate {
    /// The model's parameters as f32: mapped from the file, and again as the rewritten copies.
    pub weights: f64,
    /// The residual-stream cache (current and next block), f32.
    pub cache: f64,
    /// The largest activations of one chunk inside a block (attention scores and MLP hidden).
    pub activations: f64,
    /// Input Gram matrices of one group, in f64, and SparseGPT's work copies.
    pub hessians: f64,
}

impl Estimate {
    pub fn total(&self) -> f64 {
        2.0 * self.weights + 2.0 * self.cache + self.activations + self.hessians
    }
}

fn estimate_bytes(m: &Module, samples: usize, seqlen: usize, chunk: usize, d: usize) -> Estimate {
    let s = analyze_transformer(m, m.main);
    let mut heads = 1usize;
    let mut hidden = 4 * d;
    for b in &s.branches {
        match &b.kind {
            ortho_ir::analysis::transformer::BranchKind::Attention(a) => {
                heads = heads.max(a.heads.unwrap_or(1) as usize)
            }
            ortho_ir::analysis::transformer::BranchKind::Mlp(x) => hidden = x.hidden as usize,
            _ => {}
        }
    }
    let toks = (chunk * seqlen) as f64;
    let cache = (samples * seqlen * d * 4) as f64;
    // Scores and softmax of every head, plus a few MLP-hidden-wide tensors.
    let activations =
        3.0 * (chunk * heads * seqlen * seqlen * 4) as f64 + 4.0 * toks * hidden as f64 * 4.0;
    let widest = hidden.max(d) as f64;
    let hessians = 4.0 * widest * widest * 8.0;
    Estimate {
        weights: m.parameter_count() as f64 * 4.0,
        cache,
        activations,
        hessians,
    }
}
