//! The errors of the command line, one enum for the crate so a caller (the driver, a test) can
//! branch on the kind while the printed text stays what each command always printed.
//!
//! Errors of the layers below (the `.oir` parser, the verifier, the ONNX reader, the engine) are
//! kept as their boxed error values: the kind of failure is this enum's variant, and the layer's
//! own message (which already names the node or tensor) is printed unchanged. Boxing them keeps
//! this crate independent of how each layer spells its error type.

use std::path::PathBuf;
use thiserror::Error;

/// The error value of a lower layer (the parser, the verifier, the engine, `tokenizers`).
pub type Source = Box<dyn std::error::Error + Send + Sync>;

/// Every way a command of `ortho-opt` can fail.
#[derive(Debug, Error)]
pub enum CliError {
    /// A file could not be read, written or created.
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `.oir` text that does not parse (the source carries line and column).
    #[error("{}:{source}", .path.display())]
    Parse { path: PathBuf, source: Source },
    /// An ONNX file that cannot be imported (the source names the file).
    #[error("{source}")]
    Import { source: Source },
    /// A model file that is something else (GGUF, JSON, text): said plainly instead of the
    /// protobuf decoder's complaint.
    #[error("{}: this is {kind}", .path.display())]
    NotOnnx { path: PathBuf, kind: &'static str },
    /// `compare`: measured values outside the limits of its gate options.
    #[error("{count} compare gate(s) failed")]
    GateFailed { count: usize },
    /// A module that does not pass the verifier.
    #[error("{} failed verification: {source}", .path.display())]
    Verify { path: PathBuf, source: Source },
    /// The engine cannot compile the model's main graph.
    #[error("{}: {source}", .path.display())]
    Compile { path: PathBuf, source: Source },
    /// The engine failed while running the model (or building a feed for it).
    #[error("{source}")]
    Run { source: Source },
    /// A command line clap rejects (unknown flag, missing argument, mistyped command).
    #[error("{0}")]
    CommandLine(clap::Error),
    /// The optimizer's form without an input file.
    #[error("no input file (see --help)")]
    NoInput,
    /// `--elide-above` that is neither a number nor `none`.
    #[error("--elide-above expects a number or 'none', got '{0}'")]
    ElideAbove(String),
    /// An output path that is the input file.
    #[error("refusing to write the output over the input '{}'", .input.display())]
    OutputOverInput { input: PathBuf },
    /// A `--pass-pipeline` that does not parse (rendered with a caret under the offending text).
    #[error("invalid --pass-pipeline: {rendered}")]
    InvalidPipeline { rendered: String },
    /// The pass manager refused the pipeline (an unknown pass or option, a bad option value).
    #[error("{source}")]
    PassSetup { source: Source },
    /// A pass failed (the source names the pass and the node).
    #[error("{source}")]
    PassFailed { source: Source },
    /// The calibration data of the optimizer's passes cannot be built.
    #[error("calibration: {0}")]
    Calibration(Box<CliError>),
    /// `ortho.*` ops that cannot be lowered to standard ONNX for export.
    #[error("cannot lower ortho.* ops for export: {source}")]
    LowerOrtho { source: Source },
    /// The ONNX writer failed (the source names the file).
    #[error("{source}")]
    Export { source: Source },
    /// A command-line value outside its range, or a combination of flags that does not work.
    #[error("{0}")]
    Usage(&'static str),
    /// `run --input` not of the form NAME=FILE.npy.
    #[error("--input expects NAME=FILE.npy, got '{0}'")]
    InputSpec(String),
    /// A `.npy` input that cannot be read or does not fit.
    #[error("input '{name}': {source}")]
    ReadInput { name: String, source: Source },
    /// An output that cannot be written as `.npy`.
    #[error("output '{name}': {source}")]
    WriteOutput { name: String, source: Source },
    /// A `tokenizer.json` that does not load.
    #[error("{}: cannot load the tokenizer: {source}", .path.display())]
    Tokenizer { path: PathBuf, source: Source },
    /// Text the tokenizer cannot encode.
    #[error("{}: tokenization failed: {source}", .path.display())]
    Tokenize { path: PathBuf, source: Source },
    /// `eval`/`compare`: the text is shorter than the windows asked for.
    #[error("{} has {tokens} tokens, fewer than {windows} windows × {body}", .path.display())]
    TooFewWindows {
        path: PathBuf,
        tokens: usize,
        windows: usize,
        body: usize,
    },
    /// Calibration: the text or ids are shorter than samples × seqlen.
    #[error(
        "{} has {tokens} tokens, fewer than the {} requested (--calib-samples {samples} × --calib-seqlen {seqlen})",
        .path.display(),
        .samples.saturating_mul(*.seqlen)
    )]
    TooFewCalibrationTokens {
        path: PathBuf,
        tokens: usize,
        samples: usize,
        seqlen: usize,
    },
    /// A model input that a language-model command does not know how to fill.
    #[error("the model has an input '{input}' that {command} cannot fill (it feeds input_ids, attention_mask, position_ids)")]
    UnfillableInput {
        input: String,
        command: &'static str,
    },
    /// A language model without outputs.
    #[error("the model has no outputs")]
    NoOutputs,
    /// Logits that are not f32.
    #[error("the logits are {dtype}, expected f32")]
    LogitsDType { dtype: String },
    /// Logits whose shape is not [batch, seq, vocab].
    #[error("logits of shape {shape:?}, expected [{batch}, {seqlen}, vocab]")]
    LogitsShape {
        shape: Vec<usize>,
        batch: usize,
        seqlen: usize,
    },
    /// The tokenizer's vocabulary differs from the width of the logits.
    #[error("the tokenizer's vocabulary has {vocab} tokens but the model's logits are {width} wide; use the model's own tokenizer.json")]
    VocabularyMismatch { vocab: usize, width: usize },
    /// A tokenizer larger than the model's embedding table.
    #[error("{}: the tokenizer has {tokens} tokens but the model's embedding has {vocab} rows: it is not this model's tokenizer", .path.display())]
    TokenizerTooLarge {
        path: PathBuf,
        tokens: usize,
        vocab: usize,
    },
    /// A calibration id that is not a row of the embedding table.
    #[error("{}: token {index} has id {id}, outside the model's vocabulary of {vocab}", .path.display())]
    TokenOutsideVocabulary {
        path: PathBuf,
        index: usize,
        id: u32,
        vocab: usize,
    },
    /// A `.bin` ids file of odd length.
    #[error("{}: a .bin file of uint16 ids has an even length, this one has {bytes} bytes", .path.display())]
    OddIdsFile { path: PathBuf, bytes: usize },
    /// An ids file that is not UTF-8 text.
    #[error("{}: not UTF-8", .path.display())]
    NotUtf8 { path: PathBuf },
    /// A word of an ids file that is not a token id.
    #[error("{}: '{word}' is not a token id", .path.display())]
    NotATokenId { path: PathBuf, word: String },
    /// A word of a calibration offsets file that is not a token position.
    #[error("{}: '{word}' is not a token offset", .path.display())]
    NotAnOffset { path: PathBuf, word: String },
    /// A calibration window that does not fit in the calibration ids.
    #[error("{}: the window at offset {offset} needs {seqlen} tokens but the calibration ids hold {tokens}", .path.display())]
    CalibrationOffsetOutOfRange {
        path: PathBuf,
        offset: usize,
        seqlen: usize,
        tokens: usize,
    },
    /// A report that serde_json cannot write.
    #[error("cannot write JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// `train` failed (autodiff, the engine, the optimizer or the token data).
    #[error("train: {source}")]
    Train { source: Source },
    /// A size from the input (a shape, windows × seqlen) that overflows, or that needs more
    /// memory than is available.
    #[error("{0}")]
    Size(#[from] ortho_ir::semantics::SemError),
    /// Calibration of a model whose embedding lookup the structure analysis does not find.
    #[error("calibration needs a language model whose embedding lookup the structure analysis finds (see `ortho-opt analyze`)")]
    NotALanguageModel,
    /// A chart of an HTML report that plotters cannot draw.
    #[error("cannot draw a chart: {source}")]
    Plot { source: Source },
    /// An output outside `--max-opset`, `--max-ir-version` or `--allowed-domains`.
    #[error("{0}")]
    OutputPolicy(#[from] crate::output_policy::PolicyError),
    /// `shard` and shard chains (the source names the file).
    #[error(transparent)]
    Shard(#[from] crate::shard::ShardError),
}

impl CliError {
    /// The exit status for this error: 2 for a command line that cannot be run as given, else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::CommandLine(_) | CliError::NoInput => 2,
            _ => 1,
        }
    }

    /// `Io` for `path`, as a closure for `map_err`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CliError {
        let path = path.into();
        move |source| CliError::Io { path, source }
    }
}
