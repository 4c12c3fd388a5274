//! Glue between the CLI options and the pass manager.

use crate::cli::OptArgs;
use ortho_ir::text::PrintOptions;
use ortho_ir::Module;
use std::path::Path;

pub fn list_passes() -> String {
    String::new()
}

pub fn run_pipeline(_m: &mut Module, a: &OptArgs, _input: &Path, _print: PrintOptions, err: &mut String) -> Result<(), ()> {
    if a.pass_pipeline.is_empty() {
        return Ok(());
    }
    err.push_str("error: passes are not wired yet\n");
    Err(())
}

