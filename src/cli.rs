//! The command line: the optimizer's own form (`ortho-opt IN [-o OUT] --pass-pipeline=…`, as
//! mlir-opt) and the subcommands, with one set of options shared by all of them.
//!
//! Adding a command is one module with a `#[derive(clap::Args)]` struct and a `run` function,
//! plus one variant of [`Command`] and its arm in [`Command::run`].

use crate::opt::OptArgs;
use crate::{CliError, DriverOutput};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::{Path, PathBuf};

/// ortho-opt: an MLIR-style optimizer for ONNX models.
///
/// Reads IN (.onnx or .oir), verifies it, runs the pass pipeline, verifies after every pass, and
/// writes the result as ONNX or as the textual IR. The commands below run, evaluate, compare and
/// analyze models instead.
#[derive(Debug, Parser)]
#[command(
    name = "ortho-opt",
    version,
    about,
    long_about = None,
    after_help = EXAMPLES,
    // A file named like a command stays reachable as `./run`; once IN or an optimizer flag is
    // seen, no later word is taken for a command.
    args_conflicts_with_subcommands = true,
    subcommand_value_name = "COMMAND",
    subcommand_help_heading = "Commands (each has its own --help)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    opt: OptArgs,
    #[command(flatten)]
    global: GlobalArgs,
}

/// Options shared by every command. They are given after the command's name
/// (`ortho-opt eval MODEL --threads 4 …`) or anywhere in the optimizer's own form.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Threads of the CPU engine (`run`, `eval`, `compare`, and the calibration of the optimizer's
    /// passes); default: all cores.
    #[arg(long, global = true, value_name = "N", visible_alias = "calib-threads")]
    pub threads: Option<usize>,
    /// No progress on stderr (`eval`/`compare` windows, per-layer calibration progress; the
    /// calibration memory estimate is still printed).
    #[arg(long, short = 'q', global = true, visible_alias = "calib-quiet")]
    pub quiet: bool,
    /// tokenizer.json (Hugging Face `tokenizers` format): needed by `eval`, `compare` and
    /// `--calib-text`.
    #[arg(long, global = true, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
}

impl GlobalArgs {
    /// The tokenizer, or the usage error `missing` when none was given.
    pub fn tokenizer(&self, missing: &'static str) -> Result<&Path, CliError> {
        self.tokenizer.as_deref().ok_or(CliError::Usage(missing))
    }
}

/// The commands besides the optimizer's own form.
#[derive(Debug, Subcommand)]
enum Command {
    Run(crate::run::RunArgs),
    Eval(crate::eval::EvalArgs),
    Compare(crate::compare::CompareArgs),
    Analyze(crate::analyze::AnalyzeArgs),
}

impl Command {
    fn run(self, g: &GlobalArgs) -> DriverOutput {
        match self {
            Command::Run(a) => crate::run::run(a, g),
            Command::Eval(a) => crate::eval::run(a, g),
            Command::Compare(a) => crate::compare::run(a, g),
            Command::Analyze(a) => crate::analyze::run(a),
        }
    }
}

const EXAMPLES: &str = "Examples:
  ortho-opt model.onnx -o out.onnx                      # verify and round-trip
  ortho-opt model.onnx --emit=oir | less                # read the IR
  ortho-opt model.onnx -o out.onnx --pass-pipeline='canonicalize,cse,dce' --timing --statistics
  ortho-opt big.onnx -o out.onnx --external-data        # weights to out.onnx.data
  ortho-opt run MODEL --input NAME=FILE.npy ... -o OUTDIR
  ortho-opt eval MODEL --tokenizer tokenizer.json --text FILE [--windows 16 --seqlen 128 --bos ID --json]
  ortho-opt compare A B --tokenizer tokenizer.json --text FILE [--windows N --seqlen L --json]
  ortho-opt analyze MODEL [--json]
  ortho-opt help COMMAND                                # a command's options";

/// The entry point shared by the CLI and the tests.
pub struct Driver;

impl Driver {
    /// Runs one command line (`args[0]` is the program name) and returns its output and status.
    pub fn run(args: &[String]) -> DriverOutput {
        if let Some(e) = misspelled_command(args) {
            return clap_output(e);
        }
        let cli = match Cli::command()
            .try_get_matches_from(args)
            .and_then(|m| Cli::from_arg_matches(&m))
        {
            Ok(cli) => cli,
            Err(e) => return clap_output(e),
        };
        match cli.command {
            Some(c) => c.run(&cli.global),
            None => crate::opt::run(cli.opt, &cli.global),
        }
    }
}

/// clap's "unrecognized subcommand … a similar subcommand exists" error when the first word looks
/// like a mistyped command: a bare word (no path separator, dot or dash) that names no existing
/// file and is close to a command's name. Any other first word is the optimizer's input, so a
/// missing model still reports the missing file.
fn misspelled_command(args: &[String]) -> Option<clap::Error> {
    let word = args.get(1)?;
    let bare = !word.starts_with('-')
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !bare || Path::new(word).exists() {
        return None;
    }
    let full = Cli::command();
    if full.find_subcommand(word).is_some() {
        return None;
    }
    // The commands alone: without the optimizer's positional IN, clap suggests a near command.
    let commands = clap::Command::new("ortho-opt")
        .subcommand_required(true)
        .subcommand_value_name("COMMAND")
        .subcommands(full.get_subcommands().cloned());
    let e = commands
        .try_get_matches_from([args[0].as_str(), word.as_str()])
        .err()?;
    let suggested = e
        .get(clap::error::ContextKind::SuggestedSubcommand)
        .is_some();
    (e.kind() == clap::error::ErrorKind::InvalidSubcommand && suggested).then_some(e)
}

/// Turns a clap error into the command's output (help and version go to stdout with status 0,
/// usage errors to stderr with status 2).
fn clap_output(e: clap::Error) -> DriverOutput {
    let text = e.render().to_string();
    if e.use_stderr() {
        DriverOutput::failed_with(CliError::CommandLine(e), text)
    } else {
        DriverOutput::ok(text, String::new())
    }
}
