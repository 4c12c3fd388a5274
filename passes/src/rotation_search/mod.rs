//! DenoiseRotator's search for rotations (ALGORITHMS.md §2), shared by `denoise-rotate` and
//! `denoise-prune`: the entropy objective of one layer with its analytic gradient (`loss`), Adam
//! on SO(n) through the Cayley map keeping the best iterate (`optim`), and the two joined as one
//! layer's objective ([`layer_objective`]). Not a pass.

pub mod loss;
pub mod optim;
pub mod permute;

#[cfg(test)]
mod tests;

use crate::options::{OptionDecl, OptionError, OptionKind};
use faer::Mat;
use loss::LayerProblem;

/// The `lr` option of the passes that run the search (`denoise-rotate`, `denoise-prune`).
pub const LR: OptionDecl<f64> = OptionDecl {
    name: "lr",
    kind: OptionKind::Float,
    default: || 0.01,
    doc: "Adam learning rate on the skew-symmetric Cayley parameters.",
};

/// The pipeline type of the `method` option of those passes (SparseGPT, their default, first).
pub const METHOD_KIND: OptionKind = OptionKind::Enum(&["sparsegpt", "wanda", "magnitude"]);

/// Refuses a learning rate Adam cannot use.
pub fn check_lr(lr: f64) -> Result<(), OptionError> {
    if lr > 0.0 && lr.is_finite() {
        Ok(())
    } else {
        Err(OptionError::Invalid(format!(
            "lr must be positive, got {lr}"
        )))
    }
}

/// The objective over blocks `[Q1, R2_0, …]` of one layer, recording every evaluation's loss.
pub(crate) fn layer_objective<'a>(
    p: &'a LayerProblem,
    history: &'a mut Vec<f64>,
) -> impl FnMut(&[Mat<f32>], &mut [Mat<f32>]) -> f64 + 'a {
    move |qs, gs| {
        let (gq, gr) = gs.split_at_mut(1);
        let l = p
            .loss_grad(qs[0].as_ref(), &qs[1..], &mut gq[0], gr)
            .total();
        history.push(l);
        l
    }
}
