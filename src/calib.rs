//! Calibration input for the optimizer command: `--calib-text FILE --tokenizer tokenizer.json`
//! (or `--calib-ids FILE`) with `--calib-samples N --calib-seqlen L --calib-seed S` (or `--calib-offsets FILE`); the engine's
//! `--threads` and `--quiet` (alias `--calib-threads`, `--calib-quiet`) are the global options.
//!
//! Everything is checked before any pass runs: the text must hold at least N × L tokens, the
//! tokenizer's vocabulary must fit the model's embedding table, and every sampled id must be a
//! row of it. Windows of L tokens start at positions drawn uniformly with a seeded SplitMix64,
//! so a seed always gives the same calibration set. The memory estimate is printed (stderr)
//! before any work, and progress lines of the calibration passes go to stderr as they happen.

use crate::cli::GlobalArgs;
use crate::CliError;
use ortho_codegen::cpu::CpuEvaluator;
use ortho_ir::analysis::transformer::analyze_transformer;
use ortho_ir::eval::EvalTensor;
use ortho_ir::Module;
use ortho_passes::calib::Calibration;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The calibration flags of the optimizer command (the tokenizer, threads and quiet flags are
/// global: [`GlobalArgs`]).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CalibArgs {
    /// UTF-8 calibration text (needs --tokenizer); tokenized whole, without special tokens.
    #[arg(long = "calib-text", value_name = "FILE")]
    pub calib_text: Option<PathBuf>,
    /// Pre-tokenized calibration ids instead of text: raw little-endian uint16 (`.bin`) or
    /// whitespace-separated decimal ids (any other extension).
    #[arg(long = "calib-ids", value_name = "FILE", conflicts_with = "calib_text")]
    pub calib_ids: Option<PathBuf>,
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
    /// Explicit window starts instead of seeded sampling: whitespace-separated token offsets
    /// into the calibration ids, one window of --calib-seqlen tokens each (their count replaces
    /// --calib-samples). Reproduces another tool's calibration set exactly.
    #[arg(long = "calib-offsets", value_name = "FILE", conflicts_with = "seed")]
    pub offsets: Option<PathBuf>,
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

/// The windows of `seqlen` ids starting at `offsets` (read from `path`); an offset whose window
/// does not fit in `ids` is an error naming the file and the offset.
pub fn windows_at(
    ids: &[u32],
    offsets: &[usize],
    seqlen: usize,
    path: &Path,
) -> Result<Vec<Vec<i64>>, CliError> {
    offsets
        .iter()
        .map(|&s| match s.checked_add(seqlen) {
            Some(end) if end <= ids.len() => {
                Ok(ids[s..end].iter().map(|&x| i64::from(x)).collect())
            }
            _ => Err(CliError::CalibrationOffsetOutOfRange {
                path: path.to_path_buf(),
                offset: s,
                seqlen,
                tokens: ids.len(),
            }),
        })
        .collect()
}

/// The starts of `samples` windows of `seqlen` tokens in `tokens` ids, drawn with `seed`
/// (uniform over every position a whole window fits at).
pub fn sample_offsets(tokens: usize, samples: usize, seqlen: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix(seed);
    let span = (tokens - seqlen + 1) as u64;
    (0..samples).map(|_| rng.below(span) as usize).collect()
}

/// `samples` windows of `seqlen` ids drawn from `ids` with `seed` ([`sample_offsets`]).
pub fn sample_windows(ids: &[u32], samples: usize, seqlen: usize, seed: u64) -> Vec<Vec<i64>> {
    sample_offsets(ids.len(), samples, seqlen, seed)
        .into_iter()
        .map(|s| ids[s..s + seqlen].iter().map(|&x| i64::from(x)).collect())
        .collect()
}

/// Window offsets: whitespace-separated decimal token positions.
fn read_offsets(path: &Path) -> Result<Vec<usize>, CliError> {
    let text = std::fs::read_to_string(path).map_err(CliError::io(path))?;
    text.split_whitespace()
        .map(|w| {
            w.parse::<usize>().map_err(|_| CliError::NotAnOffset {
                path: path.to_path_buf(),
                word: w.to_string(),
            })
        })
        .collect()
}

pub(crate) fn read_ids(path: &Path) -> Result<Vec<u32>, CliError> {
    let bytes = std::fs::read(path).map_err(CliError::io(path))?;
    if path.extension().is_some_and(|e| e == "bin") {
        if bytes.len() % 2 != 0 {
            return Err(CliError::OddIdsFile {
                path: path.to_path_buf(),
                bytes: bytes.len(),
            });
        }
        return Ok(bytes
            .chunks_exact(2)
            .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])))
            .collect());
    }
    let text = String::from_utf8(bytes).map_err(|_| CliError::NotUtf8 {
        path: path.to_path_buf(),
    })?;
    text.split_whitespace()
        .map(|w| {
            w.parse::<u32>().map_err(|_| CliError::NotATokenId {
                path: path.to_path_buf(),
                word: w.to_string(),
            })
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
pub fn build(
    a: &CalibArgs,
    g: &GlobalArgs,
    m: &Module,
) -> Result<Option<Arc<Calibration>>, CliError> {
    if !a.given() {
        return Ok(None);
    }
    let offsets = match &a.offsets {
        Some(p) => Some((p, read_offsets(p)?)),
        None => None,
    };
    let samples = offsets.as_ref().map_or(a.samples, |(_, o)| o.len());
    if samples == 0 || a.seqlen < 2 {
        return Err(CliError::Usage(
            "--calib-samples must be ≥ 1 and --calib-seqlen ≥ 2",
        ));
    }
    let (vocab, width) = model_dims(m).ok_or(CliError::NotALanguageModel)?;
    let (source, ids) = match (&a.calib_text, &a.calib_ids) {
        (Some(text), _) => {
            let tp = g.tokenizer("--calib-text needs --tokenizer tokenizer.json")?;
            let tok = crate::lm::load_tokenizer(tp)?;
            let tv = tok.get_vocab_size(true);
            if tv > vocab {
                return Err(CliError::TokenizerTooLarge {
                    path: tp.to_path_buf(),
                    tokens: tv,
                    vocab,
                });
            }
            (text, crate::lm::encode_file(&tok, text)?)
        }
        (None, Some(p)) => (p, read_ids(p)?),
        (None, None) => return Ok(None),
    };
    if ids.len()
        < ortho_ir::semantics::size::checked_mul(
            samples,
            a.seqlen,
            "--calib-samples × --calib-seqlen",
        )?
    {
        return Err(CliError::TooFewCalibrationTokens {
            path: source.clone(),
            tokens: ids.len(),
            samples,
            seqlen: a.seqlen,
        });
    }
    if let Some((i, &bad)) = ids.iter().enumerate().find(|(_, &x)| x as usize >= vocab) {
        return Err(CliError::TokenOutsideVocabulary {
            path: source.clone(),
            index: i,
            id: bad,
            vocab,
        });
    }
    let windows = match &offsets {
        Some((p, o)) => windows_at(&ids, o, a.seqlen, p)?,
        None => sample_windows(&ids, samples, a.seqlen, a.seed),
    };
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
        let feeds = crate::lm::feeds(&names, batch, "calibration")?;
        chunks.push(
            feeds
                .into_iter()
                .map(|f| {
                    let t = EvalTensor::I64 {
                        shape: f.shape,
                        data: f.data,
                    };
                    (f.name, t)
                })
                .collect(),
        );
    }
    let threads = g.threads.unwrap_or_else(|| CpuEvaluator::default().threads);
    let estimate = estimate_bytes(m, samples, a.seqlen, chunk, width);
    let mib = |b: f64| b / (1024.0 * 1024.0);
    let quiet = g.quiet;
    {
        eprintln!(
            "calibration: {} × {} tokens of {} ({}), {} chunks of ≤ {chunk} sequences, {threads} threads; \
             memory estimate ≈ {:.0} MiB (weights mapped + rewritten 2 × {:.0} MiB, residual cache 2 × {:.0} MiB, \
             one chunk's activations ≈ {:.0} MiB, Hessians ≈ {:.0} MiB)",
            samples,
            a.seqlen,
            source.display(),
            match &a.offsets {
                Some(p) => format!("windows at the offsets of {}", p.display()),
                None => format!("seed {}", a.seed),
            },
            chunks.len(),
            mib(estimate.total()),
            mib(estimate.weights),
            mib(estimate.cache),
            mib(estimate.activations),
            mib(estimate.hessians),
        );
    }
    // An estimate beyond the available memory stops here, with the estimate's parts printed
    // above, rather than hours into calibration.
    ortho_ir::semantics::size::check_memory(
        estimate.total().min(u64::MAX as f64) as u64,
        "calibration (lower --calib-samples, --calib-seqlen or --calib-chunk)",
    )?;
    let progress = crate::progress::calibration_sink(quiet);
    Ok(Some(Arc::new(Calibration {
        evaluator: Arc::new(CpuEvaluator { threads }),
        chunks,
        samples,
        seqlen: a.seqlen,
        progress,
    })))
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
    // In f64: the sizes come from the command line and the model, and must not wrap.
    let (chunk, seqlen, heads) = (chunk as f64, seqlen as f64, heads as f64);
    let toks = chunk * seqlen;
    let cache = samples as f64 * seqlen * d as f64 * 4.0;
    // Scores and softmax of every head, plus a few MLP-hidden-wide tensors.
    let activations =
        3.0 * (chunk * heads * seqlen * seqlen * 4.0) + 4.0 * toks * hidden as f64 * 4.0;
    let widest = hidden.max(d) as f64;
    let hessians = 4.0 * widest * widest * 8.0;
    Estimate {
        weights: m.parameter_count() as f64 * 4.0,
        cache,
        activations,
        hessians,
    }
}
