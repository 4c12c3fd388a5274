//! `autodiff{loss=NAME trainable=PATTERNS}`: appends the reverse-mode gradient of a scalar loss
//! with respect to the parameters whose names match (see [`crate::autodiff`]).
//!
//! Needs: a scalar floating-point value named `loss` in the main graph (a model without one can
//! get a token cross-entropy from `autodiff::loss::append_token_cross_entropy`), ranks known
//! after shape inference. Leaves: the forward graph unchanged, the loss as a graph output, and
//! one graph output `<param>_grad` per matched parameter, computed by standard ONNX ops. A node
//! on the gradient path without a rule fails the pass before anything is changed, with every
//! such node listed.

use crate::autodiff::{autodiff, AutodiffError, AutodiffSpec};
use crate::pass::{PassContext, PassError, PassResult};
use ortho_ir::Module;

crate::pass_options! {
    /// Options of the `autodiff` pass.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct AutodiffOptions {
        pub loss: String = {
            name: "loss",
            default: String::from("loss"),
            doc: "The name of the scalar loss value to differentiate.",
        },
        pub trainable: String = {
            name: "trainable",
            default: String::from("*"),
            doc: "Parameters to differentiate for: name patterns ('*' matches any run of characters), separated by '|'.",
        },
    }
}

crate::declare_pass! {
    name: "autodiff",
    summary: "Appends reverse-mode gradients of a scalar loss w.r.t. the matching parameters as graph outputs <param>_grad.",
    options: AutodiffOptions,
    run: run_pass,
}

fn run_pass(
    m: &mut Module,
    opts: &AutodiffOptions,
    cx: &mut PassContext,
) -> Result<PassResult, PassError> {
    let spec = AutodiffSpec {
        loss: opts.loss.clone(),
        trainable: crate::autodiff::split_patterns(&opts.trainable),
    };
    let r = autodiff(m, &spec).map_err(|e| match &e {
        AutodiffError::Missing(list) => match list.0.first() {
            Some(first) => PassError::at_main(m, first.node_id, e.to_string()),
            None => PassError::new(e.to_string()),
        },
        _ => PassError::new(e.to_string()),
    })?;
    cx.stats(&[
        ("parameters", r.grads.len()),
        ("active-nodes", r.active_nodes),
        ("added-nodes", r.added_nodes),
        ("unused", r.unused.len()),
    ]);
    if !r.unused.is_empty() {
        cx.note(format!(
            "the loss does not depend on {} parameters (zero gradient): {}",
            r.unused.len(),
            r.unused.join(", ")
        ));
    }
    Ok(PassResult::changed(true))
}
