//! Normalizations without a fast path: `BatchNormalization` (inference and training mode),
//! `InstanceNormalization`, `MeanVarianceNormalization`, `LpNormalization`. The rules are
//! `ortho_ir::semantics::norm`, in f64, rounded once to the input's float type.
//! (`LayerNormalization` and `RMSNormalization` have their own kernels in `nn`.)

use super::shape::norm_axis;
use crate::cpu::error::{KernelError, KernelResult};
use crate::cpu::kernel::Inputs;
use crate::cpu::tensor::HostTensor;
use ortho_ir::semantics::norm;

use super::from_f64_as as make;

fn float_input<'a>(ins: &'a Inputs<'_>, op: &str) -> KernelResult<&'a HostTensor> {
    let x = ins.req(0)?;
    if !x.dtype().is_float() {
        return Err(KernelError::dtype(format!(
            "{op} is not defined for {}",
            x.dtype()
        )));
    }
    Ok(x)
}

/// `BatchNormalization(X, scale, B, input_mean, input_var)`; `momentum` set means training
/// mode, which also gives the running mean and variance.
pub fn batch_norm(
    ins: &mut Inputs<'_>,
    epsilon: f64,
    momentum: Option<f64>,
) -> KernelResult<Vec<HostTensor>> {
    let x = float_input(ins, "BatchNormalization")?;
    let v = |i: usize| ins.req(i).map(|t| t.to_f64_vec());
    let (scale, bias, mean, var) = (v(1)?, v(2)?, v(3)?, v(4)?);
    let r = norm::batch_norm(
        &x.to_f64_vec(),
        x.shape(),
        &scale,
        &bias,
        &mean,
        &var,
        epsilon,
        momentum,
    )?;
    let mut out = vec![make(x.dtype(), x.shape().to_vec(), r.y)?];
    if let Some((m, v)) = r.running {
        let (md, vd) = (ins.req(3)?.dtype(), ins.req(4)?.dtype());
        let c = m.len();
        out.push(make(md, vec![c], m)?);
        out.push(make(vd, vec![c], v)?);
    }
    Ok(out)
}

/// `InstanceNormalization(input, scale, B)`.
pub fn instance_norm(ins: &mut Inputs<'_>, epsilon: f64) -> KernelResult<Vec<HostTensor>> {
    let x = float_input(ins, "InstanceNormalization")?;
    let (s, b) = (ins.req(1)?.to_f64_vec(), ins.req(2)?.to_f64_vec());
    let y = norm::instance_norm(&x.to_f64_vec(), x.shape(), &s, &b, epsilon)?;
    Ok(vec![make(x.dtype(), x.shape().to_vec(), y)?])
}

/// `MeanVarianceNormalization(X)` over `axes` (default 0, 2, 3).
pub fn mean_variance(ins: &mut Inputs<'_>, axes: &[i64]) -> KernelResult<Vec<HostTensor>> {
    let x = float_input(ins, "MeanVarianceNormalization")?;
    let axes: Vec<usize> = axes
        .iter()
        .map(|&a| norm_axis(a, x.rank()))
        .collect::<KernelResult<_>>()?;
    let y = norm::mean_variance(&x.to_f64_vec(), x.shape(), &axes)?;
    Ok(vec![make(x.dtype(), x.shape().to_vec(), y)?])
}

/// `LpNormalization(input)` along `axis` with `p`.
pub fn lp_normalize(ins: &mut Inputs<'_>, axis: i64, p: i64) -> KernelResult<Vec<HostTensor>> {
    let x = float_input(ins, "LpNormalization")?;
    let a = norm_axis(axis, x.rank())?;
    let y = norm::lp_normalize(&x.to_f64_vec(), x.shape(), a, p)?;
    Ok(vec![make(x.dtype(), x.shape().to_vec(), y)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_mode_gives_running_statistics() {
        let x = HostTensor::from_vec(vec![2, 1], vec![1.0f32, 3.0]).expect("x");
        let one = |v: f32| HostTensor::from_vec(vec![1], vec![v]).expect("param");
        let (s, b, m, v) = (one(1.0), one(0.0), one(0.0), one(1.0));
        let mut ins = Inputs::borrowed(&[Some(&x), Some(&s), Some(&b), Some(&m), Some(&v)]);
        let out = batch_norm(&mut ins, 0.0, Some(0.5)).expect("bn");
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].as_f32().expect("f32"), &[-1.0, 1.0]);
        assert_eq!(out[1].as_f32().expect("f32"), &[1.0]);
    }
}
