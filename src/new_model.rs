//! `ortho-opt new-model --config cfg.json -o tiny.onnx`: a small Llama-style decoder made from a
//! config, with seeded weights, so a model can be trained from scratch on this machine; with
//! `--train-tokenizer TEXT --tokenizer-out tok.json` also a byte-level BPE vocabulary of the
//! config's size trained on the text (the `tokenizers` crate).
//!
//! The decoder (input `input_ids` int64 [batch, seq], seq ≤ context; output `logits`): token
//! embedding; per layer a pre-norm block (RMSNorm, multi-head causal attention with
//! grouped-query heads and rotary position embedding (rotate-half), residual; RMSNorm,
//! SiLU-gated MLP, residual); a final RMSNorm and an untied output head. Everything is written
//! in standard ONNX ops (decomposed), so every op has a gradient rule; the causal mask and the
//! rotary tables are constants of `context` rows, sliced to the run's sequence length.
//! Initialization: embeddings N(0, 1), linears N(0, 1/width) (the down projection half that),
//! the head N(0, 1/width), norm gains 1; the same seed gives the same bytes.

use crate::{CliError, DriverOutput};
use ortho_passes::poet::rng::SplitMix;
use serde::Deserialize;
use std::fmt::Write as _;
use std::path::PathBuf;

/// The shape of the decoder.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaConfig {
    pub layers: usize,
    pub width: usize,
    pub heads: usize,
    #[serde(default)]
    pub kv_heads: Option<usize>,
    pub vocab: usize,
    pub context: usize,
    /// MLP hidden width (default 4 × width).
    #[serde(default)]
    pub mlp: Option<usize>,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Rotary position embedding (off: position comes from the causal mask only).
    #[serde(default = "default_true")]
    pub rope: bool,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
}

fn default_seed() -> u64 {
    1
}
fn default_true() -> bool {
    true
}
fn default_theta() -> f64 {
    10000.0
}
fn default_eps() -> f64 {
    1e-5
}

/// Why `new-model` failed.
#[derive(Debug, thiserror::Error)]
pub enum NewModelError {
    #[error("config {path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("config {path}: {source}")]
    Config { path: PathBuf, source: ConfigError },
    #[error("the generated model does not parse (a bug): {0}")]
    Generated(String),
}

/// Why a config cannot make a model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} must be positive")]
    Zero(&'static str),
    #[error("width {width} is not a multiple of heads {heads}")]
    Heads { width: usize, heads: usize },
    #[error("heads {heads} is not a multiple of kv_heads {kv}")]
    KvHeads { heads: usize, kv: usize },
    #[error("the head width {0} must be even for rotary embedding")]
    OddHead(usize),
}

impl LlamaConfig {
    fn kv(&self) -> usize {
        self.kv_heads.unwrap_or(self.heads)
    }

    /// Trained parameters: embeddings, head, norms and linears.
    pub fn parameters(&self) -> usize {
        let (d, kvw) = (self.width, self.kv() * (self.width / self.heads.max(1)));
        let mlp = self.mlp.unwrap_or(4 * d);
        2 * self.vocab * d + d + self.layers * (2 * d + 2 * d * d + 2 * d * kvw + 3 * d * mlp)
    }

    pub fn check(&self) -> Result<(), ConfigError> {
        for (v, name) in [
            (self.layers, "layers"),
            (self.width, "width"),
            (self.heads, "heads"),
            (self.kv(), "kv_heads"),
            (self.vocab, "vocab"),
            (self.context, "context"),
            (self.mlp.unwrap_or(1), "mlp"),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if !self.width.is_multiple_of(self.heads) {
            return Err(ConfigError::Heads {
                width: self.width,
                heads: self.heads,
            });
        }
        if !self.heads.is_multiple_of(self.kv()) {
            return Err(ConfigError::KvHeads {
                heads: self.heads,
                kv: self.kv(),
            });
        }
        let dh = self.width / self.heads;
        if self.rope && dh % 2 == 1 {
            return Err(ConfigError::OddHead(dh));
        }
        Ok(())
    }
}

fn constant(out: &mut String, name: &str, dims: &[usize], vals: impl Iterator<Item = String>) {
    let shape: Vec<String> = dims.iter().map(usize::to_string).collect();
    let vals: Vec<String> = vals.collect();
    let _ = writeln!(
        out,
        "  %{name} = const tensor<{}xf32> dense<[{}]>",
        shape.join("x"),
        vals.join(", ")
    );
}

fn dense(out: &mut String, name: &str, dims: &[usize], sd: f64, rng: &mut SplitMix) {
    let n: usize = dims.iter().product();
    let vals: Vec<String> = (0..n)
        .map(|_| format!("{:.5}", sd * rng.gaussian()))
        .collect();
    constant(out, name, dims, vals.into_iter());
}

fn ints(out: &mut String, name: &str, v: &[i64]) {
    let vals: Vec<String> = v.iter().map(i64::to_string).collect();
    let _ = writeln!(
        out,
        "  %{name} = const tensor<{}xi64> dense<[{}]>",
        v.len(),
        vals.join(", ")
    );
}

/// The decoder as `.oir` text.
pub fn llama_oir(c: &LlamaConfig) -> Result<String, ConfigError> {
    c.check()?;
    let (d, ctx, vocab) = (c.width, c.context, c.vocab);
    let (h, kv) = (c.heads, c.kv());
    let dh = d / h;
    let group = h / kv;
    let mlp = c.mlp.unwrap_or(4 * d);
    let mut rng = SplitMix::new(c.seed);
    let mut s = String::from("module {ir_version = 8, opset_import = [\"\" = 17]}\n");
    let _ = writeln!(
        s,
        "graph @llama(%input_ids: tensor<\"b\"x\"s\"xi64>) -> (%logits) {{"
    );
    dense(&mut s, "embed", &[vocab, d], 1.0, &mut rng);
    dense(
        &mut s,
        "head",
        &[d, vocab],
        1.0 / (d as f64).sqrt(),
        &mut rng,
    );
    let _ = writeln!(s, "  %eps = const tensor<f32> dense<[{:e}]>", c.norm_eps);
    let _ = writeln!(
        s,
        "  %scale = const tensor<f32> dense<[{}]>",
        1.0 / (dh as f64).sqrt()
    );
    // Constants of `context` rows, sliced to the run's length s.
    let mask = (0..ctx * ctx).map(|k| {
        if k % ctx > k / ctx {
            "-1e9".to_string()
        } else {
            "0.0".to_string()
        }
    });
    constant(&mut s, "mask_full", &[ctx, ctx], mask);
    let _ = writeln!(
        s,
        "  %seq = onnx.Shape(%input_ids) {{start = 1, end = 2}} : ?"
    );
    ints(&mut s, "zero2", &[0, 0]);
    ints(&mut s, "zero1", &[0]);
    let _ = writeln!(s, "  %seq2 = onnx.Concat(%seq, %seq) {{axis = 0}} : ?");
    let _ = writeln!(s, "  %mask = onnx.Slice(%mask_full, %zero2, %seq2) : ?");
    if c.rope {
        let half = dh / 2;
        let angle = |k: usize| {
            let (p, i) = (k / dh, k % dh % half);
            p as f64 * c.rope_theta.powf(-2.0 * i as f64 / dh as f64)
        };
        constant(
            &mut s,
            "cos_full",
            &[ctx, dh],
            (0..ctx * dh).map(|k| format!("{:.7}", angle(k).cos())),
        );
        constant(
            &mut s,
            "sin_full",
            &[ctx, dh],
            (0..ctx * dh).map(|k| format!("{:.7}", angle(k).sin())),
        );
        let _ = writeln!(s, "  %cos = onnx.Slice(%cos_full, %zero1, %seq) : ?");
        let _ = writeln!(s, "  %sin = onnx.Slice(%sin_full, %zero1, %seq) : ?");
    }
    ints(&mut s, "q_shape", &[0, 0, h as i64, dh as i64]);
    ints(&mut s, "kv_shape", &[0, 0, kv as i64, dh as i64]);
    ints(&mut s, "rep", &[1, 1, group as i64, 1, 1]);
    ints(&mut s, "grouped", &[0, h as i64, -1, dh as i64]);
    ints(&mut s, "merged", &[0, 0, d as i64]);
    if group > 1 {
        ints(&mut s, "rep_axis", &[2]);
    }
    ints(&mut s, "halves", &[dh as i64 / 2, dh as i64 / 2]);
    let sd = 1.0 / (d as f64).sqrt();
    for l in 0..c.layers {
        for g in ["g1", "g2"] {
            constant(
                &mut s,
                &format!("{g}_{l}"),
                &[d],
                (0..d).map(|_| "1.0".into()),
            );
        }
        dense(&mut s, &format!("wq_{l}"), &[d, d], sd, &mut rng);
        dense(&mut s, &format!("wk_{l}"), &[d, kv * dh], sd, &mut rng);
        dense(&mut s, &format!("wv_{l}"), &[d, kv * dh], sd, &mut rng);
        dense(&mut s, &format!("wo_{l}"), &[d, d], sd, &mut rng);
        dense(&mut s, &format!("wg_{l}"), &[d, mlp], sd, &mut rng);
        dense(&mut s, &format!("wu_{l}"), &[d, mlp], sd, &mut rng);
        dense(&mut s, &format!("wd_{l}"), &[mlp, d], 0.5 * sd, &mut rng);
    }
    constant(&mut s, "gf", &[d], (0..d).map(|_| "1.0".into()));
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
    // [b, s, heads·dh] → [b, heads, s, dh], rotated when rope is on.
    let heads = |s: &mut String, x: &str, shape: &str, o: &str, rope: bool| {
        let _ = writeln!(s, "  %{o}_4 = onnx.Reshape(%{x}, %{shape}) : ?");
        let t = if rope {
            format!("{o}_t")
        } else {
            o.to_string()
        };
        let _ = writeln!(
            s,
            "  %{t} = onnx.Transpose(%{o}_4) {{perm = [0, 2, 1, 3]}} : ?"
        );
        if rope {
            let _ = writeln!(
                s,
                "  %{o}_a, %{o}_b = onnx.Split(%{t}, %halves) {{axis = -1}} : ?, ?"
            );
            let _ = writeln!(s, "  %{o}_nb = onnx.Neg(%{o}_b) : ?");
            let _ = writeln!(
                s,
                "  %{o}_rot = onnx.Concat(%{o}_nb, %{o}_a) {{axis = -1}} : ?"
            );
            let _ = writeln!(s, "  %{o}_c = onnx.Mul(%{t}, %cos) : ?");
            let _ = writeln!(s, "  %{o}_s = onnx.Mul(%{o}_rot, %sin) : ?");
            let _ = writeln!(s, "  %{o} = onnx.Add(%{o}_c, %{o}_s) : ?");
        }
    };
    let mut x = "h0".to_string();
    for l in 0..c.layers {
        norm(&mut s, &x, &format!("g1_{l}"), &format!("n1_{l}"));
        for (o, w) in [("q", "wq"), ("k", "wk"), ("v", "wv")] {
            let _ = writeln!(s, "  %{o}_{l} = onnx.MatMul(%n1_{l}, %{w}_{l}) : ?");
        }
        heads(
            &mut s,
            &format!("q_{l}"),
            "q_shape",
            &format!("qh_{l}"),
            c.rope,
        );
        heads(
            &mut s,
            &format!("k_{l}"),
            "kv_shape",
            &format!("kh_{l}"),
            c.rope,
        );
        heads(
            &mut s,
            &format!("v_{l}"),
            "kv_shape",
            &format!("vh_{l}"),
            false,
        );
        // Grouped-query heads: each key/value head serves `group` query heads.
        let (mut k, mut v) = (format!("kh_{l}"), format!("vh_{l}"));
        if group > 1 {
            for t in [&mut k, &mut v] {
                let _ = writeln!(s, "  %{t}_u = onnx.Unsqueeze(%{t}, %rep_axis) : ?");
                let _ = writeln!(s, "  %{t}_e = onnx.Expand(%{t}_u, %rep) : ?");
                let _ = writeln!(s, "  %{t}_g = onnx.Reshape(%{t}_e, %grouped) : ?");
                *t = format!("{t}_g");
            }
        }
        let _ = writeln!(
            s,
            "  %kT_{l} = onnx.Transpose(%{k}) {{perm = [0, 1, 3, 2]}} : ?"
        );
        let _ = writeln!(s, "  %qk_{l} = onnx.MatMul(%qh_{l}, %kT_{l}) : ?");
        let _ = writeln!(s, "  %qks_{l} = onnx.Mul(%qk_{l}, %scale) : ?");
        let _ = writeln!(s, "  %qkm_{l} = onnx.Add(%qks_{l}, %mask) : ?");
        let _ = writeln!(s, "  %p_{l} = onnx.Softmax(%qkm_{l}) {{axis = -1}} : ?");
        let _ = writeln!(s, "  %pv_{l} = onnx.MatMul(%p_{l}, %{v}) : ?");
        let _ = writeln!(
            s,
            "  %pvt_{l} = onnx.Transpose(%pv_{l}) {{perm = [0, 2, 1, 3]}} : ?"
        );
        let _ = writeln!(s, "  %att_{l} = onnx.Reshape(%pvt_{l}, %merged) : ?");
        let _ = writeln!(s, "  %o_{l} = onnx.MatMul(%att_{l}, %wo_{l}) : ?");
        let _ = writeln!(s, "  %r1_{l} = onnx.Add(%{x}, %o_{l}) : ?");
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
        x = format!("r2_{l}");
    }
    norm(&mut s, &x, "gf", "nf");
    let _ = writeln!(
        s,
        "  %logits = onnx.MatMul(%nf, %head) : tensor<\"b\"x\"s\"x{vocab}xf32>"
    );
    s.push_str("}\n");
    Ok(s)
}

/// Create a small Llama-style decoder (and optionally a BPE tokenizer) from a config.
#[derive(Debug, clap::Args)]
pub struct NewModelArgs {
    /// JSON: {"layers", "width", "heads", "kv_heads", "vocab", "context", "mlp", "seed", "rope",
    /// "rope_theta", "norm_eps"} (the last six optional).
    #[arg(long)]
    pub config: PathBuf,
    /// Where the model is written (.onnx, or .oir for the IR text).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Train a byte-level BPE tokenizer of the config's vocabulary size on this text …
    #[arg(long, requires = "tokenizer_out")]
    pub train_tokenizer: Option<PathBuf>,
    /// … and write it here (tokenizer.json).
    #[arg(long, requires = "train_tokenizer")]
    pub tokenizer_out: Option<PathBuf>,
}

pub fn run(a: NewModelArgs) -> DriverOutput {
    DriverOutput::from_result(run_inner(&a))
}

/// A byte-level BPE vocabulary of `vocab` tokens trained on the text at `path`.
pub fn train_bpe(
    path: &std::path::Path,
    vocab: usize,
) -> Result<tokenizers::Tokenizer, tokenizers::Error> {
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::models::TrainerWrapper;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    let mut tok = tokenizers::Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::default()));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.train_from_files(&mut trainer, vec![path.to_string_lossy().into_owned()])?;
    Ok(tok)
}

fn run_inner(a: &NewModelArgs) -> Result<(String, String), CliError> {
    let text = std::fs::read_to_string(&a.config).map_err(CliError::io(&a.config))?;
    let err = |e: NewModelError| CliError::Train { source: e.into() };
    let cfg: LlamaConfig = serde_json::from_str(&text).map_err(|source| {
        err(NewModelError::Json {
            path: a.config.clone(),
            source,
        })
    })?;
    let oir = llama_oir(&cfg).map_err(|source| {
        err(NewModelError::Config {
            path: a.config.clone(),
            source,
        })
    })?;
    let mut out = String::new();
    if let (Some(src), Some(dst)) = (&a.train_tokenizer, &a.tokenizer_out) {
        let tok = train_bpe(src, cfg.vocab).map_err(|source| CliError::Tokenizer {
            path: src.clone(),
            source,
        })?;
        let size = tok.get_vocab_size(true);
        let json = tok.to_string(false).map_err(|source| CliError::Tokenizer {
            path: dst.clone(),
            source,
        })?;
        crate::opt::write_atomic(dst, json.as_bytes()).map_err(CliError::io(dst))?;
        let _ = writeln!(
            out,
            "trained a byte-level BPE tokenizer of {size} tokens on {}; wrote {}",
            src.display(),
            dst.display()
        );
    }
    let module = ortho_ir::text::parse_module(&oir)
        .map_err(|e| err(NewModelError::Generated(e.to_string())))?;
    if a.output.extension().and_then(|e| e.to_str()) == Some("oir") {
        crate::opt::write_atomic(&a.output, oir.as_bytes()).map_err(CliError::io(&a.output))?;
    } else {
        let opts = ortho_frontends::ExportOptions {
            external_min_bytes: None,
            protected: vec![a.config.clone()],
        };
        ortho_frontends::export_file(&module, &a.output, &opts)
            .map_err(|e| CliError::Export { source: e.into() })?;
    }
    let params = cfg.parameters();
    let _ = writeln!(
        out,
        "Llama-style decoder: {} layers, width {}, {} heads ({} kv), vocab {}, context {}; {params} parameters; wrote {}",
        cfg.layers,
        cfg.width,
        cfg.heads,
        cfg.kv(),
        cfg.vocab,
        cfg.context,
        a.output.display()
    );
    Ok((out, String::new()))
}
