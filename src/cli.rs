//! The command line: the optimizer's own form (`ortho-opt IN [-o OUT] --pass-pipeline=…`, as
//! mlir-opt) and the subcommands, with one set of options shared by all of them.
//!
//! Adding a command is one module with a `#[derive(clap::Args)]` struct and a `run` function,
//! plus one variant of [`Command`] and its arm in [`Command::run`].

use crate::opt::OptArgs;
use crate::{CliError, DriverOutput};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

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

/// Options shared by every command, given before or after the command's name
/// (`ortho-opt --threads 4 eval MODEL …` = `ortho-opt eval MODEL --threads 4 …`) or anywhere in
/// the optimizer's own form.
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
    /// More on stderr: a line per finished pass with its time, the import and export times,
    /// and the wall time of the whole command.
    #[arg(long, short = 'v', global = true, conflicts_with = "quiet")]
    pub verbose: bool,
    /// tokenizer.json (Hugging Face `tokenizers` format): needed by `eval`, `compare` and
    /// `--calib-text`.
    #[arg(long, global = true, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Where stderr text goes as it is produced (the CLI's stderr); unset, it is collected into
    /// [`DriverOutput::stderr`].
    #[arg(skip)]
    pub stream: Stream,
    /// The command line as given, for reproducer lines.
    #[arg(skip)]
    pub argv: Vec<String>,
}

/// A writer that stderr text is streamed to while a command runs.
#[derive(Clone, Default)]
pub struct Stream(Option<Arc<Mutex<Box<dyn std::io::Write + Send>>>>);

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Stream(streaming)"
        } else {
            "Stream(collected)"
        })
    }
}

impl Stream {
    pub fn to(w: Box<dyn std::io::Write + Send>) -> Stream {
        Stream(Some(Arc::new(Mutex::new(w))))
    }

    pub fn is_streaming(&self) -> bool {
        self.0.is_some()
    }
}

/// The stderr text of a command: written through to the [`Stream`] when there is one (so notes
/// and IR dumps appear while the command runs), else collected for [`DriverOutput::stderr`].
#[derive(Debug, Default)]
pub struct Log {
    collected: String,
    stream: Stream,
    /// Whether the last text written ended a line.
    at_line_start: bool,
}

impl Log {
    /// The log of a command run with `g`: streaming when the driver has a stream.
    pub fn new(g: &GlobalArgs) -> Log {
        Log {
            collected: String::new(),
            stream: g.stream.clone(),
            at_line_start: true,
        }
    }

    /// A log that only collects (one case of `--split-input-file`, whose text becomes comments).
    pub fn collected() -> Log {
        Log {
            at_line_start: true,
            ..Log::default()
        }
    }

    /// Ends the current line unless the text so far ends one.
    pub fn end_line(&mut self) {
        if !self.at_line_start {
            use std::fmt::Write as _;
            let _ = self.write_str("\n");
        }
    }

    /// The text not streamed, for [`DriverOutput::stderr`].
    pub fn into_string(self) -> String {
        self.collected
    }
}

impl std::fmt::Write for Log {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if s.is_empty() {
            return Ok(());
        }
        self.at_line_start = s.ends_with('\n');
        match &self.stream.0 {
            Some(w) => {
                // A poisoned lock only means another writer panicked mid-line; keep writing.
                let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
                // stderr going away (a closed pipe) must not fail the command.
                let _ = w.write_all(s.as_bytes()).and_then(|()| w.flush());
            }
            None => self.collected.push_str(s),
        }
        Ok(())
    }
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
    Train(crate::train_cmd::TrainArgs),
    Shard(crate::shard::ShardArgs),
    Generate(crate::generate::GenerateArgs),
    NewModel(crate::new_model::NewModelArgs),
}

impl Command {
    fn run(self, g: &GlobalArgs) -> DriverOutput {
        match self {
            Command::Run(a) => crate::run::run(a, g),
            Command::Eval(a) => crate::eval::run(a, g),
            Command::Compare(a) => crate::compare::run(a, g),
            Command::Analyze(a) => crate::analyze::run(a),
            Command::Train(a) => crate::train_cmd::run(a, g),
            Command::Shard(a) => crate::shard::run(a, g),
            Command::Generate(a) => crate::generate::run(a, g),
            Command::NewModel(a) => crate::new_model::run(a),
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
  ortho-opt generate MODEL --tokenizer tokenizer.json --prompt TEXT --max-new-tokens N [--greedy | --temperature T --top-p P --seed S]
  ortho-opt train MODEL --data FILE --steps N -o OUT.onnx [--lr --batch --seqlen --trainable --keep-zeros]
  ortho-opt new-model --config cfg.json -o tiny.onnx [--train-tokenizer TEXT --tokenizer-out tok.json]
  ortho-opt help COMMAND                                # a command's options";

/// The entry point shared by the CLI and the tests.
pub struct Driver;

impl Driver {
    /// Runs one command line (`args[0]` is the program name) and returns its output and status.
    pub fn run(args: &[String]) -> DriverOutput {
        Driver::run_with(args, Stream::default())
    }

    /// As [`Driver::run`], with stderr text written to `stream` as it is produced (notes, IR
    /// dumps, per-pass lines); the returned `stderr` holds only what was not streamed.
    pub fn run_streaming(args: &[String], stream: Box<dyn std::io::Write + Send>) -> DriverOutput {
        Driver::run_with(args, Stream::to(stream))
    }

    fn run_with(args: &[String], stream: Stream) -> DriverOutput {
        let t0 = Instant::now();
        let full = Cli::command();
        let args = globals_after_command(&full, args);
        if let Some(e) = misspelled_command(&full, &args) {
            return clap_output(e);
        }
        let (cli, name) = match full.try_get_matches_from(&args).and_then(|m| {
            let name = m.subcommand_name().unwrap_or("ortho-opt").to_string();
            Ok((Cli::from_arg_matches(&m)?, name))
        }) {
            Ok(x) => x,
            Err(e) => return clap_output(e),
        };
        let mut global = cli.global;
        global.stream = stream;
        global.argv = args.to_vec();
        let verbose = global.verbose;
        let mut out = match cli.command {
            Some(c) => c.run(&global),
            None => crate::opt::run(cli.opt, &global),
        };
        if verbose {
            let _ = writeln!(
                out.stderr,
                "{}: exit {} after {:.3} s",
                name,
                out.code,
                t0.elapsed().as_secs_f64()
            );
        }
        out
    }
}

/// The number of words a global option takes at `args[i]` (1, or 2 when its value is the next
/// word), or `None` when `args[i]` is not a global option.
fn global_option_len(cmd: &clap::Command, args: &[String], i: usize) -> Option<usize> {
    let word = args.get(i)?;
    let (arg, inline_value) = if let Some(long) = word.strip_prefix("--") {
        let (name, value) = match long.split_once('=') {
            Some((n, _)) => (n, true),
            None => (long, false),
        };
        let arg = cmd.get_arguments().find(|a| {
            a.get_long() == Some(name)
                || a.get_all_aliases()
                    .is_some_and(|aliases| aliases.contains(&name))
        })?;
        (arg, value)
    } else {
        let mut chars = word.strip_prefix('-')?.chars();
        let (c, rest) = (chars.next()?, chars.as_str());
        let arg = cmd.get_arguments().find(|a| a.get_short() == Some(c))?;
        (arg, !rest.is_empty())
    };
    if !arg.is_global_set() {
        return None;
    }
    Some(if arg.get_action().takes_values() && !inline_value {
        2
    } else {
        1
    })
}

/// The index of the first word after the global options that open the command line.
fn first_word(cmd: &clap::Command, args: &[String]) -> usize {
    let mut i = 1;
    while let Some(n) = global_option_len(cmd, args, i) {
        i += n;
    }
    i
}

/// Moves global options written before a command's name after it (`ortho-opt -q eval …` runs as
/// `ortho-opt eval -q …`). clap takes the first word after any option for the optimizer's input,
/// so without this the shared options would work only after the name.
fn globals_after_command(cmd: &clap::Command, args: &[String]) -> Vec<String> {
    let i = first_word(cmd, args);
    match args.get(i) {
        Some(w) if i > 1 && cmd.find_subcommand(w).is_some() => {
            let mut out = vec![args[0].clone(), w.clone()];
            out.extend_from_slice(&args[1..i]);
            out.extend_from_slice(&args[i + 1..]);
            out
        }
        // `help` reads its operands as command names, and options change no help text.
        Some(w) if i > 1 && w == "help" => {
            let mut out = vec![args[0].clone()];
            out.extend_from_slice(&args[i..]);
            out
        }
        _ => args.to_vec(),
    }
}

/// clap's "unrecognized subcommand … a similar subcommand exists" error when the first word looks
/// like a mistyped command: a bare word (no path separator, dot or dash) that names no existing
/// file and is close to a command's name. Any other first word is the optimizer's input, so a
/// missing model still reports the missing file.
fn misspelled_command(full: &clap::Command, args: &[String]) -> Option<clap::Error> {
    let word = args.get(first_word(full, args))?;
    let bare = !word.starts_with('-')
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !bare || Path::new(word).exists() || full.find_subcommand(word).is_some() {
        return None;
    }
    // The commands alone: without the optimizer's positional IN, clap suggests a near command.
    let commands = clap::Command::new("ortho-opt")
        .subcommand_required(true)
        .subcommand_value_name("COMMAND")
        .subcommands(full.get_subcommands().cloned());
    let bin = args.first().map_or("ortho-opt", String::as_str);
    let e = commands.try_get_matches_from([bin, word.as_str()]).err()?;
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
