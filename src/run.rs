//! `ortho-opt run`: run a model on .npy inputs and write each output as .npy.

use crate::DriverOutput;
use clap::Parser;
use ortho_codegen::cpu::{npy, HostTensor, Plan, PlanOptions};
use ortho_ir::Module;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Run a model on inputs read from .npy files and write every output to OUTDIR/NAME.npy.
#[derive(Debug, Parser)]
#[command(
    name = "ortho-opt run",
    after_help = "Example:\n  ortho-opt run model.onnx --input input_ids=ids.npy -o out/   # writes out/logits.npy"
)]
pub struct RunArgs {
    /// The model (.onnx or .oir).
    pub model: PathBuf,
    /// An input as NAME=FILE.npy (repeat for each input).
    #[arg(long = "input", value_name = "NAME=FILE.npy")]
    pub inputs: Vec<String>,
    /// Folder for the outputs (created if missing); output NAME goes to NAME.npy (characters
    /// other than letters, digits, '.', '-' and '_' become '_').
    #[arg(short = 'o', long = "output-dir", value_name = "OUTDIR")]
    pub out_dir: PathBuf,
    /// Threads for the engine (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the time per op type to stderr.
    #[arg(long)]
    pub profile: bool,
}

/// Reads a model (.onnx with its external data, or .oir text) and verifies it.
pub(crate) fn load_module(path: &Path) -> Result<Module, String> {
    let m = if path.extension().is_some_and(|e| e == "oir") {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        ortho_ir::text::parse_module(&text).map_err(|e| format!("{}:{e}", path.display()))?
    } else {
        ortho_frontends::import_file(path).map_err(|e| e.to_string())?
    };
    ortho_ir::verify::verify_module(&m)
        .map_err(|d| format!("{} failed verification: {d}", path.display()))?;
    Ok(m)
}

/// Compiles the main graph of the model at `path`.
pub(crate) fn compile(path: &Path, threads: Option<usize>) -> Result<Plan, String> {
    let m = load_module(path)?;
    let mut opts = PlanOptions::default();
    if let Some(t) = threads {
        opts.threads = t.max(1);
    }
    Plan::compile_with(&m, &opts).map_err(|e| format!("{}: {e}", path.display()))
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

pub fn run(a: RunArgs) -> DriverOutput {
    match run_inner(&a) {
        Ok((out, err)) => DriverOutput::ok(out, err),
        Err(e) => DriverOutput::error(format!("error: {e}\n")),
    }
}

fn run_inner(a: &RunArgs) -> Result<(String, String), String> {
    let mut feeds: Vec<(String, HostTensor)> = Vec::new();
    for spec in &a.inputs {
        let (name, file) = spec
            .split_once('=')
            .ok_or_else(|| format!("--input expects NAME=FILE.npy, got '{spec}'"))?;
        let t = npy::read(Path::new(file)).map_err(|e| format!("input '{name}': {e}"))?;
        feeds.push((name.to_string(), t));
    }
    let t0 = Instant::now();
    let plan = compile(&a.model, a.threads)?;
    let compile_s = t0.elapsed().as_secs_f64();
    let refs: Vec<(&str, HostTensor)> =
        feeds.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let t1 = Instant::now();
    let mut err = String::new();
    let outs = if a.profile {
        let (outs, prof) = plan.run_profiled(&refs).map_err(|e| e.to_string())?;
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
        plan.run(&refs).map_err(|e| e.to_string())?
    };
    let run_s = t1.elapsed().as_secs_f64();
    std::fs::create_dir_all(&a.out_dir).map_err(|e| format!("{}: {e}", a.out_dir.display()))?;
    let mut out = String::new();
    let mut used = std::collections::HashSet::new();
    for (name, t) in &outs {
        let mut file = file_name_for(name);
        while !used.insert(file.clone()) {
            file.push('_');
        }
        let path = a.out_dir.join(format!("{file}.npy"));
        npy::write(&path, t).map_err(|e| format!("output '{name}': {e}"))?;
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
