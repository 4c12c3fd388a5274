//! Loss ops: `NegativeLogLikelihoodLoss` and `SoftmaxCrossEntropyLoss`. The rules (targets,
//! class weights, ignored positions, reductions) are `ortho_ir::semantics::loss`, evaluated in
//! f64 and rounded once to the input's element type; the cross-entropy's log-probabilities come
//! from the engine's LogSoftmax kernel along the class axis.

use crate::cpu::error::{KernelError, KernelResult};
use crate::cpu::kernel::{ExecCx, Inputs};
use crate::cpu::tensor::HostTensor;
use ortho_ir::semantics::loss::{nll_loss, LossReduction};
use ortho_ir::DType;

/// The typed attributes both losses share, read once at compile time.
#[derive(Debug, Clone, Copy)]
pub struct LossAttrs {
    pub ignore_index: Option<i64>,
    pub reduction: LossReduction,
}

/// The loss of log-probabilities `logp` against `ins[1]` (targets) and `ins[2]` (weights).
fn nll_of(logp: &HostTensor, ins: &Inputs<'_>, at: LossAttrs) -> KernelResult<HostTensor> {
    let d = logp.dtype();
    if !d.is_float() {
        return Err(KernelError::dtype(format!(
            "the loss is not defined for {d}"
        )));
    }
    let target = ins.req(1)?;
    if !target.dtype().is_int() {
        return Err(KernelError::dtype("the loss target must be integers"));
    }
    let weight = ins.get(2).map(|w| w.to_f64_vec());
    let (dims, v) = nll_loss(
        &logp.to_f64_vec(),
        logp.shape(),
        &target.to_i64_vec(),
        target.shape(),
        weight.as_deref(),
        at.ignore_index,
        at.reduction,
    )?;
    super::from_f64_as(d, dims, v)
}

/// `NegativeLogLikelihoodLoss(input, target, weight?)`.
pub fn nll(ins: &mut Inputs<'_>, at: LossAttrs) -> KernelResult<Vec<HostTensor>> {
    Ok(vec![nll_of(ins.req(0)?, ins, at)?])
}

/// `SoftmaxCrossEntropyLoss(scores, labels, weights?)`: the loss and the log-probabilities.
pub fn softmax_cross_entropy(
    cx: &mut ExecCx<'_>,
    ins: &mut Inputs<'_>,
    at: LossAttrs,
) -> KernelResult<Vec<HostTensor>> {
    let scores = ins.req(0)?;
    if scores.rank() < 2 || scores.dtype() == DType::Bool {
        return Err(KernelError::shape(format!(
            "SoftmaxCrossEntropyLoss scores must be (N, C, …) numbers, got {:?} {}",
            scores.shape(),
            scores.dtype()
        )));
    }
    let mut one = Inputs::borrowed(&[Some(scores)]);
    let logp = super::reduce::softmax(cx, &mut one, 1, true, false)?
        .into_iter()
        .next()
        .ok_or_else(|| KernelError::invalid("LogSoftmax gave no result"))?;
    let loss = nll_of(&logp, ins, at)?;
    Ok(vec![loss, logp])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_through_the_kernel_rounds_once_to_the_input_type() {
        // (N=2, C=2) log-probabilities, targets 1 and 0: the mean of 0.25 and 0.75.
        let x = HostTensor::from_vec(vec![2, 2], vec![-0.5f32, -0.25, -0.75, -1.0]).expect("x");
        let t = HostTensor::from_vec(vec![2], vec![1i64, 0]).expect("t");
        let mut ins = Inputs::borrowed(&[Some(&x), Some(&t)]);
        let at = LossAttrs {
            ignore_index: None,
            reduction: LossReduction::Mean,
        };
        let out = nll(&mut ins, at).expect("nll");
        assert_eq!(out[0].shape(), &[] as &[usize]);
        assert_eq!(out[0].as_f32().expect("f32"), &[0.5]);
    }
}
