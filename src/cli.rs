//! Command-line parsing (clap) and dispatch.

use crate::DriverOutput;
use clap::Parser;
use std::path::PathBuf;

/// ortho-opt: an MLIR-style optimizer for ONNX models.
///
/// Reads IN (.onnx or .oir), verifies it, runs the pass pipeline, verifies after every pass, and
/// writes the result as ONNX or as the textual IR.
#[derive(Debug, Parser)]
#[command(name = "ortho-opt", version, about, long_about = None, after_help = EXAMPLES)]
pub struct OptArgs {
    /// Input model: .onnx (external data allowed) or .oir text. Optional with --list-passes.
    pub input: Option<PathBuf>,

    /// Output file. Its extension picks the format unless --emit is given (.oir → text, else ONNX).
    /// Without -o the textual IR goes to stdout.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,

    /// Pass pipeline, e.g. `canonicalize,cse,dce` or `fixpoint{max-iterations=8}(canonicalize,dce)`.
    #[arg(long = "pass-pipeline", default_value = "")]
    pub pass_pipeline: String,

    /// Output format.
    #[arg(long = "emit", value_parser = ["onnx", "oir"])]
    pub emit: Option<String>,

    /// List the registered passes with their options and exit.
    #[arg(long = "list-passes")]
    pub list_passes: bool,

    /// Print the IR before these passes (comma-separated names) to stderr.
    #[arg(long = "print-ir-before", value_delimiter = ',')]
    pub print_ir_before: Vec<String>,

    /// Print the IR after these passes (comma-separated names) to stderr.
    #[arg(long = "print-ir-after", value_delimiter = ',')]
    pub print_ir_after: Vec<String>,

    /// Print the IR after every pass to stderr.
    #[arg(long = "print-ir-after-all")]
    pub print_ir_after_all: bool,

    /// Print the IR after every pass that changed it to stderr.
    #[arg(long = "print-ir-after-change")]
    pub print_ir_after_change: bool,

    /// Print a table of the time spent in each pass (and in import/export) to stderr.
    #[arg(long = "timing")]
    pub timing: bool,

    /// Print per-pass statistics (`dce.removed`, …) to stderr.
    #[arg(long = "statistics")]
    pub statistics: bool,

    /// Run the verifier after every pass (default true).
    #[arg(long = "verify-each", default_value_t = true, action = clap::ArgAction::Set)]
    pub verify_each: bool,

    /// Run only the first N pass executions, skipping the rest (for bisecting a miscompile).
    #[arg(long = "opt-bisect-limit")]
    pub opt_bisect_limit: Option<usize>,

    /// Write tensors of at least MIN_BYTES (default 1024) to an external data file `<output>.data`.
    /// Models over 2 GiB always get external data.
    #[arg(long = "external-data", num_args = 0..=1, default_missing_value = "1024", value_name = "MIN_BYTES")]
    pub external_data: Option<u64>,

    /// Tensors with more elements than this print elided as a content hash (`none`: print all data).
    #[arg(long = "elide-above", default_value = "16")]
    pub elide_above: String,

    /// Treat the .oir input as several modules separated by `// -----`, each processed on its own.
    #[arg(long = "split-input-file")]
    pub split_input_file: bool,

    /// Calibration data for passes that run the model (`prune{method=wanda|sparsegpt}`, …).
    #[command(flatten)]
    pub calib: crate::calib::CalibArgs,
}

const EXAMPLES: &str = "Commands of the CPU engine (each has its own --help):
  ortho-opt run MODEL --input NAME=FILE.npy ... -o OUTDIR
  ortho-opt eval MODEL --tokenizer tokenizer.json --text FILE [--windows 16 --seqlen 128 --bos ID --json]
  ortho-opt compare A B --tokenizer tokenizer.json --text FILE [--windows N --seqlen L --json]

Examples:
  ortho-opt model.onnx -o out.onnx                      # verify and round-trip
  ortho-opt model.onnx --emit=oir | less                # read the IR
  ortho-opt model.onnx -o out.onnx --pass-pipeline='canonicalize,cse,dce' --timing --statistics
  ortho-opt big.onnx -o out.onnx --external-data        # weights to out.onnx.data";

/// The entry point shared by the CLI and the tests.
pub struct Driver;

impl Driver {
    /// Runs one command line (`args[0]` is the program name) and returns its output and status.
    pub fn run(args: &[String]) -> DriverOutput {
        if args.get(1).map(String::as_str) == Some("analyze") {
            return crate::analyze::run(&args[1..]);
        }
        // The engine's commands come first; anything else is the optimizer's command line.
        match args.get(1).map(String::as_str) {
            Some("run") => parsed(
                crate::run::RunArgs::try_parse_from(&args[1..]),
                crate::run::run,
            ),
            Some("eval") => parsed(
                crate::eval::EvalArgs::try_parse_from(&args[1..]),
                crate::eval::run,
            ),
            Some("compare") => parsed(
                crate::compare::CompareArgs::try_parse_from(&args[1..]),
                crate::compare::run,
            ),
            _ => parsed(OptArgs::try_parse_from(args), crate::opt::run),
        }
    }
}

/// Turns a clap result into the command's output (help and version go to stdout, status 0).
fn parsed<A>(r: Result<A, clap::Error>, f: impl FnOnce(A) -> DriverOutput) -> DriverOutput {
    match r {
        Ok(a) => f(a),
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let text = e.render().to_string();
            if code == 0 {
                DriverOutput::ok(text, String::new())
            } else {
                DriverOutput {
                    code,
                    stdout: String::new(),
                    stderr: text,
                }
            }
        }
    }
}
