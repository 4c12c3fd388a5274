//! `NegativeLogLikelihoodLoss` (and through it `SoftmaxCrossEntropyLoss`, which is the same loss
//! of the scores' log-softmax along the class axis): the target picks one class per sample
//! position, `weight` scales each class, `ignore_index` drops positions, and the reduction is
//! none (the per-position losses), sum, or mean (the sum over the summed weights of the kept
//! positions, as the ONNX definition states).

use super::size::checked_numel;
use super::{SemError, SemResult};

/// The `reduction` attribute of the loss ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossReduction {
    None,
    Sum,
    Mean,
}

impl LossReduction {
    pub fn from_word(w: &str) -> Option<LossReduction> {
        Some(match w {
            "none" => LossReduction::None,
            "sum" => LossReduction::Sum,
            "mean" => LossReduction::Mean,
            _ => return None,
        })
    }
}

/// The output dims of a loss over input dims `(N, C, d1, …)`: `(N, d1, …)` without a
/// reduction, a scalar with one. Generic over the dim type so shape inference (symbolic dims)
/// and the kernel (sizes) read the same rule.
pub fn loss_dims<D: Clone>(input: &[D], red: LossReduction) -> SemResult<Vec<D>> {
    if input.len() < 2 {
        return Err(SemError::Invalid(format!(
            "the loss input must be (N, C, …), got rank {}",
            input.len()
        )));
    }
    Ok(match red {
        LossReduction::None => {
            let mut d = vec![input[0].clone()];
            d.extend_from_slice(&input[2..]);
            d
        }
        _ => Vec::new(),
    })
}

/// `NegativeLogLikelihoodLoss(x, target, weight?)` in f64: the output dims and values.
pub fn nll_loss(
    x: &[f64],
    dims: &[usize],
    target: &[i64],
    target_dims: &[usize],
    weight: Option<&[f64]>,
    ignore_index: Option<i64>,
    red: LossReduction,
) -> SemResult<(Vec<usize>, Vec<f64>)> {
    let per_position = loss_dims(dims, LossReduction::None)?;
    if target_dims != per_position.as_slice() {
        return Err(SemError::Invalid(format!(
            "target dims {target_dims:?} must be the input's {dims:?} without the class axis"
        )));
    }
    let (n, c) = (dims[0], dims[1]);
    if let Some(w) = weight {
        if w.len() != c {
            return Err(SemError::Invalid(format!(
                "weight has {} values for {c} classes",
                w.len()
            )));
        }
    }
    // Positions per sample: the product of the dims after the class axis.
    let d = checked_numel(&dims[2..])?;
    let mut losses = Vec::with_capacity(n * d);
    let mut weight_sum = 0.0f64;
    for s in 0..n {
        for p in 0..d {
            let t = target[s * d + p];
            if Some(t) == ignore_index {
                losses.push(0.0);
                continue;
            }
            let class = usize::try_from(t)
                .ok()
                .filter(|&k| k < c)
                .ok_or(SemError::Index { index: t, dim: c })?;
            let w = weight.map_or(1.0, |w| w[class]);
            weight_sum += w;
            losses.push(-x[(s * c + class) * d + p] * w);
        }
    }
    Ok(match red {
        LossReduction::None => (per_position, losses),
        LossReduction::Sum => (Vec::new(), vec![losses.iter().sum()]),
        LossReduction::Mean => (Vec::new(), vec![losses.iter().sum::<f64>() / weight_sum]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_loss_weights_ignores_and_reduces() {
        // x (N=2, C=3) holds log-probabilities; targets 2 and 0, class weights 1, 2, 4.
        let x = [-1.0, -2.0, -3.0, -0.5, -1.5, -2.5];
        let w = [1.0, 2.0, 4.0];
        let run = |red, ii| nll_loss(&x, &[2, 3], &[2, 0], &[2], Some(&w), ii, red).expect("nll");
        assert_eq!(run(LossReduction::None, None), (vec![2], vec![12.0, 0.5]));
        assert_eq!(run(LossReduction::Sum, None), (vec![], vec![12.5]));
        // The mean divides by the kept positions' weights (4 + 1), not by the count.
        assert_eq!(run(LossReduction::Mean, None), (vec![], vec![2.5]));
        // Ignoring class 0 drops the second sample from the sum and from the weights.
        assert_eq!(run(LossReduction::Mean, Some(0)), (vec![], vec![3.0]));
        assert!(nll_loss(&x, &[2, 3], &[3, 0], &[2], None, None, LossReduction::Sum).is_err());
        assert!(nll_loss(&x, &[2, 3], &[0], &[1], None, None, LossReduction::Sum).is_err());
    }
}
