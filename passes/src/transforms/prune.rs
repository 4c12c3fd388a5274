//! `prune{method=magnitude|wanda|sparsegpt sparsity=0.5 pattern=unstructured|2:4 layers=all
//! linears=all}`: zeroes weights of the linear layers inside the transformer blocks.
//!
//! Needs: the structure analysis (`ortho_ir::analysis::transformer`) to find the blocks and their
//! linears (q, k, v, o, gate, up, down; embedding and head are never pruned); for `wanda` and
//! `sparsegpt`, calibration data (`PassContext::calibration`, set from `--calib-text …`).
//! Calibration is layer-wise ("true sequential", `calib::walk_layers`): block `i` sees the outputs
//! of the already pruned blocks before it, and inside a block the linears are pruned in the
//! groups `[k, v, q] → [o] → [up, gate] → [down]`, the input Hessian of each group collected
//! after the previous group was pruned. Magnitude pruning needs no data.
//! Leaves: the same graph with dense weights holding zeros (copy-on-write: a constant shared with
//! a reader that is not pruned is copied), in the storage dtype; exact patterns (N:M: every group
//! of M consecutive input weights of a row keeps at most N). Notes: one line per block with the
//! sparsity of each linear, and the totals. Bad options (sparsity outside (0, 1), an N:M pattern
//! whose M does not divide an input width) fail before anything is computed.
//!
//! The maths on one matrix is `sparsity::matrix::prune_matrix`, usable without a module;
//! pruning a block's linears in the module is `sparsity::linears`, shared with `denoise-prune`.

use crate::calib::{missing_calibration, walk_layers_until, Calibration, LayerCx};
use crate::options::OptionError;
use crate::pass::{PassContext, PassError, PassErrorKind, PassResult};
use crate::selection::{BlockSelection, RoleSelection, LAYERS, LINEARS};
use crate::sparsity::linears::{block_linears, prune_block, record};
use crate::sparsity::matrix::{PruneMethod, PruneSpec};
use crate::sparsity::options::{PATTERN, SPARSITY};
use ortho_ir::Module;

/// Compatibility paths: these moved to `crate::sparsity::linears` (shared with
/// `denoise-prune`).
pub use crate::sparsity::linears::{
    linear_weight, prune_linear, prune_linear_diag, set_linear_weight,
};
pub use crate::sparsity::linears::{PruneStats, ROLES};

crate::pass_options! {
    /// Options of [`prune`].
    #[derive(Debug, Clone, PartialEq)]
    pub struct PruneOptions {
        pub method: PruneMethod = {
            name: "method",
            default: PruneMethod::Magnitude,
            doc: "Score: |W| per matrix, Wanda |W|·‖X‖ per row, or SparseGPT (OBS updates, block 128, damping 0.01).",
        },
        pub sparsity: f64 = SPARSITY,
        pub pattern: crate::sparsity::matrix::Pattern = PATTERN,
        pub layers: BlockSelection = LAYERS,
        pub linears: RoleSelection = LINEARS,
    }
    check: PruneOptions::check;
}

impl PruneOptions {
    /// How each matrix is pruned.
    pub fn spec(&self) -> PruneSpec {
        PruneSpec::new(self.method, self.sparsity, self.pattern)
    }

    fn check(&self) -> Result<(), OptionError> {
        self.spec()
            .validate()
            .map_err(|e| OptionError::Invalid(e.to_string()))
    }
}

crate::declare_pass! {
    name: "prune",
    summary: "Prunes the blocks' linear layers (magnitude, Wanda or SparseGPT; unstructured or N:M).",
    options: PruneOptions,
    run: run_pass,
}

fn run_pass(
    m: &mut Module,
    opts: &PruneOptions,
    cx: &mut PassContext,
) -> Result<PassResult, PassError> {
    let calib = cx.calibration().cloned();
    let stats = prune(m, opts, calib.as_ref())?;
    for line in &stats.per_layer {
        cx.note(line.clone());
    }
    cx.note(format!(
        "{} {}: {} of {} weights zero ({:.2} %) in {} linears of {} blocks",
        opts.method.name(),
        opts.pattern,
        stats.zeros,
        stats.total,
        100.0 * stats.zeros as f64 / stats.total.max(1) as f64,
        stats.linears,
        stats.blocks
    ));
    cx.stat("linears", stats.linears as u64);
    cx.stat("zeros", stats.zeros as u64);
    cx.stat("weights", stats.total as u64);
    Ok(PassResult::changed(stats.linears > 0))
}

/// Prunes the module's block linears. Wanda and SparseGPT need `calib`.
pub fn prune(
    m: &mut Module,
    opts: &PruneOptions,
    calib: Option<&Calibration>,
) -> Result<PruneStats, PassError> {
    let spec = opts.spec();
    spec.validate()
        .map_err(|e| PassError::new(e.to_string()).with_kind(PassErrorKind::InvalidOptions))?;
    let spans = crate::calib::block_spans(m)?;
    let selected = |i: usize| opts.layers.contains(i);
    // Every check before any work: widths against the pattern, the layer list, calibration.
    if let Some(l) = &opts.layers.0 {
        if let Some(&bad) = l.iter().find(|&&i| i >= spans.len()) {
            return Err(PassError::new(format!(
                "layers: block {bad} does not exist (the model has {} blocks)",
                spans.len()
            ))
            .with_kind(PassErrorKind::InvalidOptions));
        }
    }
    for s in spans.iter().filter(|s| selected(s.index)) {
        for (role, l) in block_linears(s.attention.as_ref(), s.mlp.as_ref()) {
            if opts.linears.contains(role) {
                spec.check_width(l.in_features as usize).map_err(|e| {
                    PassError::at_main(m, l.node, format!("layer {} {role}: {e}", s.index))
                        .with_kind(PassErrorKind::InvalidOptions)
                })?;
            }
        }
    }
    let mut stats = PruneStats {
        blocks: spans.iter().filter(|s| selected(s.index)).count(),
        ..PruneStats::default()
    };
    if !spec.method.needs_hessian() {
        for s in spans.iter().filter(|s| selected(s.index)) {
            let mut line = format!("layer {}:", s.index);
            for (role, l) in block_linears(s.attention.as_ref(), s.mlp.as_ref()) {
                if opts.linears.contains(role) && l.dense().is_none() {
                    // A structured linear stores no matrix to prune: said on the layer's line.
                    line.push_str(&format!(" {role} kept ({})", l.kind_name()));
                } else if opts.linears.contains(role) {
                    let out = prune_linear(m, &l, None, &spec)?;
                    record(&mut stats, &mut line, role, out);
                }
            }
            stats.per_layer.push(line);
        }
        return Ok(stats);
    }
    let calib = calib.ok_or_else(|| {
        missing_calibration(INFO.name).with_kind(PassErrorKind::MissingCalibration)
    })?;
    let last = opts.layers.0.as_ref().and_then(|l| l.last().copied());
    walk_layers_until(m, calib, last, &mut |lcx: &mut LayerCx<'_>| {
        if !selected(lcx.block.index) {
            lcx.progress("kept dense");
            return Ok(());
        }
        let block = lcx.block.clone();
        let mut line = format!("layer {}:", block.index);
        for (role, out) in prune_block(lcx, &spec, &opts.linears.0)? {
            record(&mut stats, &mut line, role, out);
        }
        stats.per_layer.push(line);
        Ok(())
    })?;
    Ok(stats)
}
