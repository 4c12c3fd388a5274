//! `ortho-opt generate`: text generation with a KV cache. A model without cache inputs is given
//! one in memory (the `kv-cache` pass); the prompt is run once (prefill), then one token per
//! step (decode), each step feeding back the `present_*` outputs as the `past_*` inputs. The
//! plan is compiled once and reused by every step. Prefill and decode speeds are reported
//! separately because they are bound by different things (compute, weight reads).

use crate::cli::GlobalArgs;
use crate::run::run_error;
use crate::{CliError, DriverOutput};
use ortho_codegen::cpu::{HostTensor, Plan, PlanOptions};
use ortho_ir::{DType, Dim, Module};
use ortho_passes::kv_cache::{has_cache, kv_cache, PAST_DIM};
use rand::{Rng, SeedableRng};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

/// Generate text from a prompt with a KV cache (greedy, or seeded temperature / top-p sampling).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  ortho-opt generate model.onnx --tokenizer tokenizer.json --prompt 'The economy' --max-new-tokens 32 --greedy"
)]
pub struct GenerateArgs {
    /// The model (.onnx or .oir): a full-sequence decoder (input_ids → logits), or one with
    /// past_key_i/past_value_i inputs as the kv-cache pass writes.
    pub model: PathBuf,
    /// The prompt text (tokenized without special tokens).
    #[arg(long)]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Always take the most likely token (the default when no --temperature is given).
    #[arg(long, conflicts_with_all = ["temperature", "top_p"])]
    pub greedy: bool,
    /// Sample from softmax(logits / T).
    #[arg(long, value_name = "T")]
    pub temperature: Option<f64>,
    /// Sample only from the smallest set of tokens whose probability reaches P (with --temperature).
    #[arg(long, value_name = "P", requires = "temperature")]
    pub top_p: Option<f64>,
    /// Seed of the sampler: the same seed gives the same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop after generating this token id.
    #[arg(long, value_name = "ID")]
    pub eos: Option<u32>,
}

/// How the next token is chosen.
#[derive(Debug, Clone, Copy)]
enum Sampler {
    Greedy,
    Sample { temperature: f64, top_p: f64 },
}

impl Sampler {
    fn from_args(a: &GenerateArgs) -> Result<Sampler, CliError> {
        match a.temperature {
            None => Ok(Sampler::Greedy),
            Some(t) if t.is_finite() && t > 0.0 => {
                let top_p = a.top_p.unwrap_or(1.0);
                if !(top_p > 0.0 && top_p <= 1.0) {
                    return Err(CliError::Usage("--top-p must be in (0, 1]"));
                }
                Ok(Sampler::Sample {
                    temperature: t,
                    top_p,
                })
            }
            Some(_) => Err(CliError::Usage("--temperature must be a positive number")),
        }
    }

    /// The next token from one row of logits.
    fn pick(&self, logits: &[f32], rng: &mut rand_chacha::ChaCha8Rng) -> usize {
        let argmax = || {
            logits
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, &x)| if x > b.1 { (i, x) } else { b },
                )
                .0
        };
        let (temperature, top_p) = match *self {
            Sampler::Greedy => return argmax(),
            Sampler::Sample { temperature, top_p } => (temperature, top_p),
        };
        // Probabilities in f64, most likely first; the nucleus is the shortest prefix reaching
        // top_p (ties keep the token order, so a seed reproduces the same choice).
        let max = logits.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x)) as f64;
        let mut p: Vec<(usize, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &x)| (i, ((x as f64 - max) / temperature).exp()))
            .collect();
        p.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let total: f64 = p.iter().map(|x| x.1).sum();
        let mut kept = 0.0;
        let mut n = 0;
        for &(_, q) in &p {
            kept += q;
            n += 1;
            if kept >= top_p * total {
                break;
            }
        }
        let mut u = rng.random::<f64>() * kept;
        for &(i, q) in &p[..n] {
            if u < q {
                return i;
            }
            u -= q;
        }
        p[n - 1].0
    }
}

pub fn run(a: GenerateArgs, g: &GlobalArgs) -> DriverOutput {
    DriverOutput::from_result(run_inner(&a, g))
}

/// Zero-length caches for the cache inputs of `m` (batch 1, no cached positions): the feeds of
/// a prefill. Also used by the kv-cache tests and the decode bench.
pub fn empty_caches(m: &Module) -> Result<Vec<(String, HostTensor)>, CliError> {
    let g = m.main_graph();
    let mut out = Vec::new();
    for &n in g.inputs().iter().skip(1) {
        let o = &g.node(n).outputs[0];
        let shape =
            o.ty.as_tensor()
                .and_then(|t| t.shape.clone())
                .ok_or_else(|| {
                    CliError::InputSpec(format!("cache input '{}' has no declared shape", o.name))
                })?;
        let dims: Vec<usize> = shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(x) => *x as usize,
                Dim::Sym(s) if s == PAST_DIM => 0,
                // The only other free dimension of a cache is the batch: one sequence.
                _ => 1,
            })
            .collect();
        out.push((
            o.name.clone(),
            HostTensor::zeros(DType::F32, dims).map_err(run_error)?,
        ));
    }
    Ok(out)
}

fn run_inner(a: &GenerateArgs, g: &GlobalArgs) -> Result<(String, String), CliError> {
    let sampler = Sampler::from_args(a)?;
    let tok_path = g.tokenizer("generate needs --tokenizer tokenizer.json")?;
    let tok = crate::lm::load_tokenizer(tok_path)?;
    let prompt: Vec<i64> = tok
        .encode(a.prompt.as_str(), false)
        .map_err(|source| CliError::Tokenize {
            path: PathBuf::from("--prompt"),
            source,
        })?
        .get_ids()
        .iter()
        .map(|&x| x as i64)
        .collect();
    if prompt.is_empty() {
        return Err(CliError::Usage("--prompt gives no tokens"));
    }
    let mut m = crate::input::load_module(&a.model)?;
    let mut err = String::new();
    if !has_cache(&m) {
        let st = kv_cache(&mut m).map_err(|e| CliError::PassFailed { source: e.into() })?;
        let _ = writeln!(err, "kv-cache: {} attention layers cached", st.layers);
    }
    let t0 = Instant::now();
    let mut opts = PlanOptions::default();
    if let Some(t) = g.threads {
        opts.threads = t.max(1);
    }
    opts.progress = crate::progress::compile_sink("compile", g.quiet);
    let plan = Plan::compile_with(&m, &opts).map_err(|e| CliError::Compile {
        path: a.model.clone(),
        source: e.into(),
    })?;
    let compile = t0.elapsed().as_secs_f64();
    let outputs = plan.output_names();
    let input0 = plan.input_names().into_iter().next().unwrap_or_default();
    let mut cache = empty_caches(&m)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let mut generated: Vec<u32> = Vec::new();
    let mut step_ids = prompt.clone();
    let (mut prefill, mut decode) = (0.0f64, 0.0f64);
    for step in 0..a.max_new_tokens {
        let t = Instant::now();
        let ids =
            HostTensor::from_vec(vec![1, step_ids.len()], step_ids.clone()).map_err(run_error)?;
        let mut feeds: Vec<(&str, HostTensor)> = vec![(input0.as_str(), ids)];
        feeds.extend(cache.iter().map(|(n, t)| (n.as_str(), t.clone())));
        let out = plan.run(&feeds).map_err(run_error)?;
        let (name, logits) = &out[0];
        let shape = logits.shape().to_vec();
        let data = logits.as_f32().ok_or_else(|| CliError::LogitsDType {
            dtype: logits.dtype().name(),
        })?;
        let vocab = *shape.last().unwrap_or(&0);
        if shape.len() != 3 || vocab == 0 || data.len() < vocab {
            return Err(CliError::InputSpec(format!(
                "output '{name}' is not logits [batch, seq, vocab]: {shape:?}"
            )));
        }
        let next = sampler.pick(&data[data.len() - vocab..], &mut rng);
        // The presents become the next step's pasts (outputs after the logits, in input order).
        cache = outputs
            .iter()
            .skip(1)
            .zip(out.into_iter().skip(1))
            .map(|(n, (_, t))| (n.replacen("present", "past", 1), t))
            .collect();
        let dt = t.elapsed().as_secs_f64();
        if step == 0 {
            prefill = dt;
        } else {
            decode += dt;
        }
        generated.push(next as u32);
        if a.eos == Some(next as u32) {
            break;
        }
        step_ids = vec![next as i64];
    }
    let all: Vec<u32> = prompt
        .iter()
        .map(|&x| x as u32)
        .chain(generated.iter().copied())
        .collect();
    let text = tok
        .decode(&all, false)
        .map_err(|source| CliError::Tokenize {
            path: PathBuf::from("--prompt"),
            source,
        })?;
    let steps = generated.len().saturating_sub(1);
    let _ = writeln!(
        err,
        "compile {compile:.2} s; prefill {} tokens in {prefill:.3} s ({:.1} tokens/s); decode {steps} tokens in {decode:.3} s ({:.1} tokens/s); {} threads",
        prompt.len(),
        prompt.len() as f64 / prefill.max(1e-9),
        steps as f64 / decode.max(1e-9),
        plan.threads()
    );
    Ok((format!("{text}\n"), err))
}
