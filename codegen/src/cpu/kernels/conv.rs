//! `Conv` and `ConvTranspose` through `ortho_ir::semantics::conv` (f64, rounded once to the input's float type).
//! A direct loop: enough for the node tests and the small convolutions of exported front ends
//! (a speech or patch embedding); large convolutions would want an im2col GEMM.

use crate::cpu::error::{KernelError, KernelResult};
use crate::cpu::kernel::Inputs;
use crate::cpu::tensor::HostTensor;
use ortho_ir::semantics::conv::{conv_f64, conv_transpose_f64, TransposeAttrs};
use ortho_ir::semantics::pool::PoolAttrs;
use ortho_ir::semantics::SemResult;

/// A convolution's f64 evaluation as `(x, x dims, w, w dims, b) → (dims, values)`.
type Eval<'a> = dyn Fn(&[f64], &[usize], &[f64], &[usize], Option<&[f64]>) -> SemResult<(Vec<usize>, Vec<f64>)>
    + 'a;

/// Runs `eval` on X, W (one float type) and the optional B, rounding the result once.
fn run(ins: &Inputs<'_>, op: &str, eval: &Eval<'_>) -> KernelResult<Vec<HostTensor>> {
    let (x, w) = (ins.req(0)?, ins.req(1)?);
    let d = x.dtype();
    if !d.is_float() || w.dtype() != d {
        return Err(KernelError::dtype(format!(
            "{op} needs X and W of one float type, got {d} and {}",
            w.dtype()
        )));
    }
    let b = ins.get(2).map(|b| b.to_f64_vec());
    let (dims, y) = eval(
        &x.to_f64_vec(),
        x.shape(),
        &w.to_f64_vec(),
        w.shape(),
        b.as_deref(),
    )?;
    Ok(vec![super::from_f64_as(d, dims, y)?])
}

/// `Conv(X, W, B?)`.
pub fn conv(ins: &mut Inputs<'_>, at: &PoolAttrs, group: i64) -> KernelResult<Vec<HostTensor>> {
    run(ins, "Conv", &|x, xd, w, wd, b| {
        conv_f64(x, xd, w, wd, b, at, group)
    })
}

/// `ConvTranspose(X, W, B?)`.
pub fn conv_transpose(
    ins: &mut Inputs<'_>,
    at: &TransposeAttrs,
    group: i64,
) -> KernelResult<Vec<HostTensor>> {
    run(ins, "ConvTranspose", &|x, xd, w, wd, b| {
        conv_transpose_f64(x, xd, w, wd, b, at, group)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_in_f32() {
        // A 1-D signal [1, 2, 3] with kernel [1, -1] and bias 0.5: differences plus 0.5.
        let x = HostTensor::from_vec(vec![1, 1, 3], vec![1.0f32, 2.0, 3.0]).expect("x");
        let w = HostTensor::from_vec(vec![1, 1, 2], vec![1.0f32, -1.0]).expect("w");
        let b = HostTensor::from_vec(vec![1], vec![0.5f32]).expect("b");
        let mut ins = Inputs::borrowed(&[Some(&x), Some(&w), Some(&b)]);
        let y = conv(&mut ins, &PoolAttrs::default(), 1).expect("conv");
        assert_eq!(y[0].shape(), &[1, 1, 2]);
        assert_eq!(y[0].as_f32().expect("f32"), &[-0.5, -0.5]);
    }
}
