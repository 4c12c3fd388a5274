//! `ortho-opt run`: run a model on .npy inputs and write each output as .npy.

use crate::cli::GlobalArgs;
use crate::shard::chain::Runner;
use crate::{CliError, DriverOutput};
use ortho_codegen::cpu::{npy, HostTensor};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Run a model on inputs read from .npy files and write every output to OUTDIR/NAME.npy.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  ortho-opt run model.onnx --input input_ids=ids.npy -o out/   # writes out/logits.npy"
)]
pub struct RunArgs {
    /// The model (.onnx or .oir), or a shard manifest (manifest.json or its folder).
    pub model: PathBuf,
    /// An input as NAME=FILE.npy (repeat for each input).
    #[arg(long = "input", value_name = "NAME=FILE.npy")]
    pub inputs: Vec<String>,
    /// Folder for the outputs (created if missing); output NAME goes to NAME.npy (characters
    /// other than letters, digits, '.', '-' and '_' become '_').
    #[arg(short = 'o', long = "output-dir", value_name = "OUTDIR")]
    pub out_dir: PathBuf,
    /// Print the time per op type to stderr.
    #[arg(long)]
    pub profile: bool,
}

/// Compiles the main graph of the (verified) model at `path`, or the shard chain of a
/// manifest (`manifest.json` or its folder), with progress on stderr unless `quiet`.
pub(crate) fn compile(
    path: &Path,
    threads: Option<usize>,
    quiet: bool,
) -> Result<Runner, CliError> {
    let progress = crate::progress::compile_sink("compile", quiet);
    Runner::compile(path, threads, progress.as_ref())
}

/// The engine's error while running a model.
pub(crate) fn run_error(e: impl Into<crate::error::Source>) -> CliError {
    CliError::Run { source: e.into() }
}

fn file_name_for(output: &str) -> String {
    let s: String = output
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("output{s}")
    } else {
        s
    }
}

pub fn run(a: RunArgs, g: &GlobalArgs) -> DriverOutput {
    DriverOutput::from_result(run_inner(&a, g))
}

fn run_inner(a: &RunArgs, g: &GlobalArgs) -> Result<(String, String), CliError> {
    let mut feeds: Vec<(String, HostTensor)> = Vec::new();
    for spec in &a.inputs {
        let (name, file) = spec
            .split_once('=')
            .ok_or_else(|| CliError::InputSpec(spec.clone()))?;
        let t = npy::read(Path::new(file)).map_err(|e| CliError::ReadInput {
            name: name.to_string(),
            source: e.into(),
        })?;
        feeds.push((name.to_string(), t));
    }
    let t0 = Instant::now();
    let plan = compile(&a.model, g.threads, g.quiet)?;
    let compile_s = t0.elapsed().as_secs_f64();
    let refs: Vec<(&str, HostTensor)> =
        feeds.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let t1 = Instant::now();
    let mut err = String::new();
    let outs = if a.profile {
        let (outs, prof) = plan.run_profiled(&refs)?;
        let _ = writeln!(
            err,
            "op profile ({:.1} ms total):",
            prof.total.as_secs_f64() * 1e3
        );
        for (op, d, n) in &prof.ops {
            let _ = writeln!(
                err,
                "  {op:<24} {:>9.2} ms {:>6} calls",
                d.as_secs_f64() * 1e3,
                n
            );
        }
        outs
    } else {
        plan.run(&refs)?
    };
    let run_s = t1.elapsed().as_secs_f64();
    std::fs::create_dir_all(&a.out_dir).map_err(CliError::io(&a.out_dir))?;
    let mut out = String::new();
    let mut used = std::collections::HashSet::new();
    for (name, t) in &outs {
        let mut file = file_name_for(name);
        while !used.insert(file.clone()) {
            file.push('_');
        }
        let path = a.out_dir.join(format!("{file}.npy"));
        npy::write(&path, t).map_err(|e| CliError::WriteOutput {
            name: name.clone(),
            source: e.into(),
        })?;
        let _ = writeln!(
            out,
            "{name}: {} {:?} -> {}",
            t.dtype(),
            t.shape(),
            path.display()
        );
    }
    let _ = writeln!(err, "compile {compile_s:.2} s, run {:.1} ms", run_s * 1e3);
    Ok((out, err))
}
