//! Glue between the command line and the pass manager: flags → `ManagerOptions`, events and
//! reports → stderr text.

use crate::cli::{GlobalArgs, Log};
use crate::opt::OptArgs;
use crate::CliError;
use ortho_ir::text::PrintOptions;
use ortho_ir::Module;
use ortho_passes::{ManagerOptions, PassManager, Pipeline};
use std::fmt::Write as _;
use std::path::Path;

pub fn list_passes() -> String {
    ortho_passes::list_passes()
}

/// Runs the pipeline of `a` on `m`; IR dumps and reports are appended to `err` as they happen,
/// and a failure is returned for the caller to print after them.
pub fn run_pipeline(
    m: &mut Module,
    a: &OptArgs,
    g: &GlobalArgs,
    input: &Path,
    print: PrintOptions,
    err: &mut Log,
) -> Result<Option<ortho_passes::RunReport>, CliError> {
    let pipeline = Pipeline::parse(&a.pass_pipeline).map_err(|e| {
        // The rendering points at the offending text of the pipeline.
        let rendered = e.render(&a.pass_pipeline);
        CliError::InvalidPipeline {
            rendered: rendered
                .strip_prefix("error: ")
                .unwrap_or(&rendered)
                .to_string(),
        }
    })?;
    let wants_report = a.timing || a.statistics;
    if pipeline.is_empty() && !wants_report && a.opt_bisect_limit.is_none() {
        return Ok(None);
    }
    // Calibration data is built (and checked) before any pass runs.
    let calibration =
        crate::calib::build(&a.calib, g, m).map_err(|e| CliError::Calibration(Box::new(e)))?;
    let opts = ManagerOptions {
        verify_each: a.verify_each,
        print_ir_before: a.print_ir_before.clone(),
        print_ir_after: a.print_ir_after.clone(),
        print_ir_after_all: a.print_ir_after_all,
        print_ir_after_change: a.print_ir_after_change,
        timing: a.timing,
        statistics: a.statistics,
        bisect_limit: a.opt_bisect_limit,
        print_options: print,
        calibration,
        // Notes (and, with -v, a line per pass) are printed as they happen, not at exit.
        progress_events: true,
    };
    let pm = PassManager::new(pipeline, opts.clone())
        .map_err(|e| CliError::PassSetup { source: e.into() })?;
    let input = input.display().to_string();
    let verbose = g.verbose;
    let mut sink = |ev: ortho_passes::IrEvent| {
        if matches!(ev, ortho_passes::IrEvent::PassDone { .. }) && !verbose {
            return;
        }
        let _ = err.write_str(&ev.render());
        err.end_line();
    };
    let result = pm.run(m, &input, &mut sink);
    match result {
        Ok(report) => {
            // The notes were streamed; the rest of the summary and the tables follow them.
            let streamed = ortho_passes::RunReport {
                notes: Vec::new(),
                ..report.clone()
            };
            let _ = err.write_str(&streamed.render(&opts));
            Ok(Some(report))
        }
        Err(mut f) => {
            f.reproducer = reproducer(&g.argv, &f.reproducer);
            Err(CliError::PassFailed { source: f.into() })
        }
    }
}

/// The reproducer of a failed run: the command line as given, with the pipeline replaced by
/// the manager's cut one, so running it stops at the same pass. Every option that influences
/// what the passes compute is kept (calibration data, threads, tokenizer, verification,
/// bisection, and any option not listed below); what only shapes the output or the printing
/// (`-o`, `--report`, `--emit`, IR dumps, tables, output limits, `--split-input-file`) is
/// dropped. `manager_line` is the manager's `ortho-opt INPUT --pass-pipeline='…'`, kept as it
/// is when there is no command line (a library caller).
fn reproducer(argv: &[String], manager_line: &str) -> String {
    const PIPELINE: &str = " --pass-pipeline=";
    let Some((_, cut)) = manager_line.split_once(PIPELINE) else {
        return manager_line.to_string();
    };
    if argv.len() < 2 {
        return manager_line.to_string();
    }
    let with_value = [
        "--pass-pipeline",
        "-o",
        "--output",
        "--report",
        "--emit",
        "--elide-above",
        "--print-ir-before",
        "--print-ir-after",
        "--max-opset",
        "--max-ir-version",
        "--allowed-domains",
    ];
    let flags = [
        "--split-input-file",
        "--timing",
        "--statistics",
        "--print-ir-after-all",
        "--print-ir-after-change",
        "-q",
        "--quiet",
        "--calib-quiet",
        "-v",
        "--verbose",
        "--no-provenance",
        "--emit-sparse",
        "--external-data",
    ];
    let mut words = vec!["ortho-opt".to_string()];
    let mut i = 1;
    while let Some(w) = argv.get(i) {
        i += 1;
        let name = w.split_once('=').map_or(w.as_str(), |(n, _)| n);
        if with_value.contains(&w.as_str()) {
            i += 1;
            continue;
        }
        // `--external-data` takes an optional number.
        if w == "--external-data" && argv.get(i).is_some_and(|v| v.parse::<u64>().is_ok()) {
            i += 1;
            continue;
        }
        let joined_short = w.starts_with("-o") && !w.starts_with("--");
        if with_value.contains(&name) || flags.contains(&name) || joined_short {
            continue;
        }
        words.push(shlex::try_quote(w).map_or_else(|_| w.clone(), |q| q.into_owned()));
    }
    format!("{}{PIPELINE}{cut}", words.join(" "))
}
