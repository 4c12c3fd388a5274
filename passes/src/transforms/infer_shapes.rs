//! `infer-shapes`: refines every value's declared type with `ortho_ir::shape::infer_shapes`.
//!
//! Needs: nothing; inference tolerates unknown types and skips what it cannot type.
//! Leaves: every reachable graph's value types at least as precise as before (a declared
//! dimension is never made less precise), with symbolic dimensions propagated. Problems that
//! inference finds (malformed nodes, declared types that contradict inferred ones) are not
//! errors of this pass: they become notes and the `problems` counter, and the verifier, which
//! performs the same checks, decides whether the module is valid.

use crate::pass::{PassContext, PassError, PassResult};
use ortho_ir::Module;

crate::declare_pass! {
    name: "infer-shapes",
    summary: "Infers value types and symbolic shapes and writes the refined types into the IR.",
    run: run_pass,
}

/// Notes beyond this many problems are summarized, so a broken model does not flood the report.
const MAX_NOTES: usize = 20;

pub use ortho_ir::shape::InferStats as InferShapesStats;

/// Infers and writes back types for the whole module.
pub fn infer_shapes(m: &mut Module) -> InferShapesStats {
    ortho_ir::shape::infer_shapes(m)
}

fn run_pass(m: &mut Module, cx: &mut PassContext) -> Result<PassResult, PassError> {
    let s = infer_shapes(m);
    cx.stats(&[
        ("refined", s.refined),
        ("ranked", s.ranked),
        ("fully-shaped", s.fully_shaped),
        ("values", s.values),
        ("problems", s.diags.0.len()),
    ]);
    for d in s.diags.0.iter().take(MAX_NOTES) {
        cx.note(d.to_string());
    }
    if s.diags.0.len() > MAX_NOTES {
        cx.note(format!(
            "… and {} more problems",
            s.diags.0.len() - MAX_NOTES
        ));
    }
    Ok(PassResult::changed(s.refined > 0))
}
