//! The optimizer command (the default form of the command line): read → verify → passes → write.

use crate::cli::{GlobalArgs, Log};
use crate::{CliError, DriverOutput};
use ortho_ir::text::{parse_module, print_module, PrintOptions};
use ortho_ir::Module;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The optimizer's own arguments (`ortho-opt IN [-o OUT] --pass-pipeline=… [options]`).
#[derive(Debug, clap::Args)]
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

    /// ONNX export keeps `ortho.SparseLinear` weights in their compact N:M form (kept values +
    /// per-group index bytes, the layout in ortho_ir::sparse; ortho-opt reads it back) instead
    /// of expanding them to dense MatMuls that every runtime loads.
    #[arg(long = "emit-sparse")]
    pub emit_sparse: bool,

    /// Calibration data for passes that run the model (`prune{method=wanda|sparsegpt}`, …).
    #[command(flatten)]
    pub calib: crate::calib::CalibArgs,

    /// Write a JSON report of the run to FILE: the pipeline, each pass's time, the statistics and
    /// notes, parameters / bytes / nodes before and after, and the SHA-256 of each output file.
    #[arg(long = "report", value_name = "FILE.json")]
    pub report: Option<PathBuf>,

    /// Write a self-contained HTML page of the calibration passes' per-layer results to FILE:
    /// sparsity of each linear, entropy before / after and the rotation kept (denoise-prune),
    /// the pruned blocks' reconstruction errors; charts and one table row per layer.
    #[arg(long = "report-html", value_name = "FILE.html")]
    pub report_html: Option<PathBuf>,

    /// Do not record the ortho-opt version and the pipeline in the ONNX output's
    /// metadata_props (`ortho-opt.version`, `ortho-opt.pipeline`).
    #[arg(long = "no-provenance")]
    pub no_provenance: bool,

    /// What the output may use (opset, IR version, domains).
    #[command(flatten)]
    pub policy: crate::output_policy::OutputPolicyArgs,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Emit {
    Onnx,
    Oir,
}

/// Everything the command needs besides the module, resolved from the arguments.
struct Job {
    print: PrintOptions,
    emit: Emit,
    /// Seconds spent reading the input (for `--report`).
    import_s: f64,
}

pub fn run(a: OptArgs, g: &GlobalArgs) -> DriverOutput {
    let mut err = Log::new(g);
    if a.list_passes {
        let mut t = crate::passes_glue::list_passes();
        if !t.ends_with('\n') {
            t.push('\n');
        }
        return DriverOutput::ok(t, String::new());
    }
    let (input, mut job) = match job(&a) {
        Ok(x) => x,
        Err(e) => return DriverOutput::failed(e),
    };
    if a.split_input_file {
        // A case's diagnostics stay in its own chunk, as comments, so chunks map to cases.
        // The cases print to a string; `-o FILE` gets the joined chunks once, and only when
        // every case succeeded.
        let out = crate::input::for_each_case(&input, |case| {
            let mut case_err = Log::collected();
            let mut chunk = String::new();
            let mut failed = false;
            match parse_module(&case.padded()) {
                Err(e) => {
                    failed = true;
                    let _ = writeln!(case_err, "error: {}:{e}", input.display());
                }
                Ok(m) => match process(m, &a, None, g, &input, &job, &mut case_err) {
                    Ok(Some(t)) => chunk.push_str(&t),
                    Ok(None) => {}
                    Err(e) => {
                        failed = true;
                        report(&mut case_err, &e);
                    }
                },
            }
            for l in case_err.into_string().lines() {
                let _ = writeln!(chunk, "// {l}");
            }
            (chunk, failed)
        });
        return split_output(out, a.output.as_deref());
    }
    let t0 = Instant::now();
    let module = match crate::input::read_module(&input) {
        Ok(m) => m,
        Err(e) => return DriverOutput::failed(e),
    };
    let import_time = t0.elapsed();
    job.import_s = import_time.as_secs_f64();
    if a.timing || g.verbose {
        let _ = writeln!(err, "import: {:.3} s", import_time.as_secs_f64());
    }
    match process(module, &a, a.output.as_deref(), g, &input, &job, &mut err) {
        Ok(Some(text)) => DriverOutput::ok(text, err.into_string()),
        Ok(None) => DriverOutput::ok(String::new(), err.into_string()),
        Err(e) => {
            report(&mut err, &e);
            DriverOutput::failed_with(e, err.into_string())
        }
    }
}

/// Writes the joined cases of `--split-input-file` to `-o FILE` when all succeeded; a failed
/// run writes nothing and prints the cases (with their diagnostics) to stdout.
fn split_output(mut out: DriverOutput, output: Option<&Path>) -> DriverOutput {
    let Some(path) = output.filter(|p| !is_stdout(p)) else {
        return out;
    };
    if out.code != 0 {
        let _ = writeln!(
            out.stderr,
            "error: a case failed; {} was not written",
            path.display()
        );
        return out;
    }
    match write_atomic(path, out.stdout.as_bytes()) {
        Ok(()) => DriverOutput::ok(String::new(), out.stderr),
        Err(e) => DriverOutput::failed(CliError::io(path)(e)),
    }
}

/// The input and what to do with the result, checked before anything is read.
fn job(a: &OptArgs) -> Result<(PathBuf, Job), CliError> {
    let input = a.input.clone().ok_or(CliError::NoInput)?;
    let print = match a.elide_above.as_str() {
        "none" => PrintOptions { elide_above: None },
        s => PrintOptions {
            elide_above: Some(s.parse().map_err(|_| CliError::ElideAbove(s.to_string()))?),
        },
    };
    let emit = match (a.emit.as_deref(), &a.output) {
        (Some("onnx"), _) => Emit::Onnx,
        (Some(_), _) => Emit::Oir,
        (None, Some(o)) if crate::input::is_oir(o) || is_stdout(o) => Emit::Oir,
        (None, Some(_)) => Emit::Onnx,
        (None, None) => Emit::Oir,
    };
    if emit == Emit::Onnx && a.output.is_none() {
        return Err(CliError::Usage(
            "ONNX output needs -o FILE (or use --emit=oir)",
        ));
    }
    if a.split_input_file && a.report.is_some() {
        return Err(CliError::Usage(
            "--report describes one model; it does not combine with --split-input-file",
        ));
    }
    if a.split_input_file && emit == Emit::Onnx {
        return Err(CliError::Usage(
            "--split-input-file writes textual IR (an .oir output or --emit=oir)",
        ));
    }
    if let Some(o) = &a.output {
        if same_file(o, &input) {
            return Err(CliError::OutputOverInput { input });
        }
    }
    Ok((
        input,
        Job {
            print,
            emit,
            import_s: 0.0,
        },
    ))
}

/// Appends `error: …` for `e` to the stderr text, ending in one newline.
fn report(err: &mut Log, e: &CliError) {
    let _ = write!(err, "error: {e}");
    err.end_line();
}

/// Verifies, runs the pipeline and writes the result. Returns text for stdout when there is no -o.
fn process(
    mut m: Module,
    a: &OptArgs,
    output: Option<&Path>,
    g: &GlobalArgs,
    input: &Path,
    job: &Job,
    err: &mut Log,
) -> Result<Option<String>, CliError> {
    ortho_ir::verify::verify_module(&m).map_err(|d| CliError::Verify {
        path: input.to_path_buf(),
        source: d.into(),
    })?;
    let before = a.report.as_ref().map(|_| crate::report::model_stats(&m));
    let passes = crate::passes_glue::run_pipeline(&mut m, a, g, input, job.print, err)?;
    let t0 = Instant::now();
    if job.emit == Emit::Oir {
        a.policy.check(&m)?;
    }
    let mut outputs = Vec::new();
    let out = match (job.emit, output) {
        (Emit::Oir, None) => Some(print_module(&m, job.print)),
        (Emit::Oir, Some(path)) if is_stdout(path) => Some(print_module(&m, job.print)),
        (Emit::Oir, Some(path)) => {
            let text = print_module(&m, job.print);
            write_atomic(path, text.as_bytes()).map_err(CliError::io(path))?;
            outputs.push(crate::report::bytes_sha256(
                &path.display().to_string(),
                text.as_bytes(),
            ));
            None
        }
        (Emit::Onnx, Some(path)) => {
            // Ops of our own `ortho` domain (fused kernels) are not standard ONNX: lower them
            // before writing, so the output always loads in other runtimes.
            if !a.no_provenance {
                let pipeline = passes.as_ref().map_or("", |r| r.pipeline.as_str());
                crate::report::set_provenance(&mut m, pipeline);
            }
            let sparse = if a.emit_sparse {
                ortho_passes::transforms::SparseExport::Compact
            } else {
                ortho_passes::transforms::SparseExport::Dense
            };
            match ortho_passes::transforms::lower_ortho_with(&mut m, sparse) {
                Ok(st) if st != Default::default() => {
                    let _ = writeln!(
                        err,
                        "note: lowered ortho.* ops to standard ONNX before export"
                    );
                }
                Ok(_) => {}
                Err(e) => return Err(CliError::LowerOrtho { source: e.into() }),
            }
            a.policy.check(&m)?;
            let opts = ortho_frontends::ExportOptions {
                external_min_bytes: a.external_data,
                protected: vec![input.to_path_buf()],
            };
            let exported = if is_stdout(path) {
                export_to_stdout(&m, &opts)
            } else {
                ortho_frontends::export_file(&m, path, &opts)
                    .map_err(|e| CliError::Export { source: e.into() })
            };
            match exported {
                Ok(stats) => {
                    if a.report.is_some() && !is_stdout(path) {
                        outputs.push(crate::report::file_sha256(path).map_err(CliError::io(path))?);
                        if stats.external_tensors > 0 {
                            let data = crate::report::external_data_path(path);
                            outputs.push(
                                crate::report::file_sha256(&data).map_err(CliError::io(&data))?,
                            );
                        }
                    }
                    if stats.external_forced {
                        let _ = writeln!(
                            err,
                            "note: the model exceeds 2 GiB; {} tensors ({} bytes) were written to {}.data",
                            stats.external_tensors,
                            stats.external_bytes,
                            path.display()
                        );
                    }
                }
                Err(e) => return Err(e),
            }
            None
        }
        (Emit::Onnx, None) => None,
    };
    let export_s = t0.elapsed().as_secs_f64();
    if a.timing || g.verbose {
        let _ = writeln!(err, "export: {export_s:.3} s");
    }
    if let (Some(path), Some(before)) = (&a.report, before) {
        if let Some(o) = &out {
            outputs.push(crate::report::bytes_sha256("-", o.as_bytes()));
        }
        let mut r = crate::report::RunReport {
            tool: "ortho-opt",
            version: env!("CARGO_PKG_VERSION"),
            command: g.argv.clone(),
            input: input.display().to_string(),
            pipeline: String::new(),
            passes: Vec::new(),
            fixpoints: Vec::new(),
            statistics: Default::default(),
            notes: Vec::new(),
            import_s: job.import_s,
            passes_s: 0.0,
            export_s,
            before,
            after: crate::report::model_stats(&m),
            outputs,
        };
        if let Some(p) = &passes {
            r.set_passes(p);
        }
        let text = serde_json::to_string_pretty(&r).map_err(CliError::Json)? + "\n";
        write_atomic(path, text.as_bytes()).map_err(CliError::io(path))?;
    }
    if let Some(path) = &a.report_html {
        let summary = vec![
            ("input".to_string(), input.display().to_string()),
            (
                "pipeline".to_string(),
                passes
                    .as_ref()
                    .map_or(String::new(), |p| p.pipeline.clone()),
            ),
            ("command".to_string(), g.argv.join(" ")),
        ];
        let notes = passes.as_ref().map_or(&[][..], |p| &p.notes[..]);
        let html = crate::report_calib::calibration_page(&summary, notes)?;
        write_atomic(path, html.as_bytes()).map_err(CliError::io(path))?;
    }
    Ok(out)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Writes `bytes` to `path` through the one safe-output path (`ortho_ir::output`): an
/// exclusive temporary next to it, renamed into place; non-regular targets are refused.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    ortho_ir::output::write_file(path, bytes)
}

/// Whether `-o` names standard output.
fn is_stdout(p: &Path) -> bool {
    p.as_os_str() == "-"
}

/// `-o -` with ONNX output: the model is exported to a temporary file (the exporter needs a
/// file: external data sits beside it, and large tensors are copied inside the kernel) and
/// streamed to the process's stdout. External data cannot go to stdout, so it is refused.
fn export_to_stdout(
    m: &Module,
    opts: &ortho_frontends::ExportOptions,
) -> Result<ortho_frontends::ExportStats, CliError> {
    if opts.external_min_bytes.is_some() {
        return Err(CliError::Usage(
            "--external-data needs an output file (-o FILE), not stdout",
        ));
    }
    let dir = tempfile::Builder::new()
        .prefix("ortho-opt-stdout")
        .tempdir()
        .map_err(CliError::io(std::env::temp_dir()))?;
    let path = dir.path().join("model.onnx");
    let stats = ortho_frontends::export_file(m, &path, opts)
        .map_err(|e| CliError::Export { source: e.into() })?;
    if stats.external_tensors > 0 {
        return Err(CliError::Usage(
            "the model exceeds 2 GiB and needs external data: write it to a file (-o FILE)",
        ));
    }
    let mut f = std::fs::File::open(&path).map_err(CliError::io(&path))?;
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    std::io::copy(&mut f, &mut lock).map_err(CliError::io("-"))?;
    std::io::Write::flush(&mut lock).map_err(CliError::io("-"))?;
    Ok(stats)
}
