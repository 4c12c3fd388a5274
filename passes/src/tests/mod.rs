//! Unit tests: pipelines, the manager, and each pass on small `.oir` graphs.

mod manager;
mod pipeline;
mod transforms;

use crate::manager::{ManagerOptions, PassFailure, PassManager, RunReport};
use crate::pipeline::parse_pipeline;
use crate::registry::Registry;
use ortho_ir::text::{parse_module, print_module, PrintOptions};
use ortho_ir::Module;

/// Parses `.oir` text, panicking with the parser's message (tests only).
pub(crate) fn parse(src: &str) -> Module {
    match parse_module(src) {
        Ok(m) => m,
        Err(e) => panic!("test input does not parse: {e}\n{src}"),
    }
}

/// Prints a module with every tensor in full.
pub(crate) fn print(m: &Module) -> String {
    print_module(m, PrintOptions { elide_above: None })
}

/// The main graph's text only (without the module header line).
pub(crate) fn main_graph(m: &Module) -> String {
    ortho_ir::text::print_graph(m, m.main, PrintOptions { elide_above: None })
}

/// Runs `pipeline` with default manager options (verify-each on) and the given registry.
pub(crate) fn run_with(
    registry: &Registry,
    pipeline: &str,
    m: &mut Module,
    options: ManagerOptions,
) -> Result<RunReport, Box<PassFailure>> {
    let p = match parse_pipeline(pipeline, registry) {
        Ok(p) => p,
        Err(e) => panic!("{}", e.render(pipeline)),
    };
    let pm = match PassManager::new(p, options) {
        Ok(pm) => pm,
        Err(e) => panic!("{e}"),
    };
    pm.run(m, "model.oir", &mut |_| {})
}

/// Runs a builtin pipeline, failing the test on any error.
pub(crate) fn run(pipeline: &str, m: &mut Module) -> RunReport {
    match run_with(&Registry::builtin(), pipeline, m, ManagerOptions::default()) {
        Ok(r) => r,
        Err(e) => panic!("{e}\n{}", print(m)),
    }
}
