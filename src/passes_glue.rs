//! Glue between the command line and the pass manager: flags → `ManagerOptions`, events and
//! reports → stderr text.

use crate::cli::GlobalArgs;
use crate::opt::OptArgs;
use crate::CliError;
use ortho_ir::text::PrintOptions;
use ortho_ir::Module;
use ortho_passes::{ManagerOptions, PassManager, Pipeline};
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
    err: &mut String,
) -> Result<(), CliError> {
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
        return Ok(());
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
    };
    let pm = PassManager::new(pipeline, opts.clone())
        .map_err(|e| CliError::PassSetup { source: e.into() })?;
    let input = input.display().to_string();
    let mut sink = |ev: ortho_passes::IrEvent| {
        let mut t = ev.render();
        if !t.ends_with('\n') {
            t.push('\n');
        }
        err.push_str(&t);
    };
    let result = pm.run(m, &input, &mut sink);
    match result {
        Ok(report) => {
            if wants_report
                || !report.notes.is_empty()
                || !report.fixpoints.is_empty()
                || !report.bisect_skipped.is_empty()
            {
                err.push_str(&report.render(&opts));
            }
            Ok(())
        }
        Err(f) => Err(CliError::PassFailed { source: f.into() }),
    }
}
