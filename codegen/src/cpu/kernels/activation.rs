//! Activations with parameters outside the shared `Unary` list: `Shrink`, evaluated in f64
//! and rounded once to the input's type. (`Swish` stays an opaque op: the structure analysis
//! recognizes a SwiGLU MLP by its opaque `Swish` node, and a typed op would change that.)

use crate::cpu::error::{KernelError, KernelResult};
use crate::cpu::kernel::Inputs;
use crate::cpu::tensor::HostTensor;

fn map_f64(ins: &Inputs<'_>, op: &str, f: impl Fn(f64) -> f64) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    if !x.dtype().is_float() && !x.dtype().is_int() {
        return Err(KernelError::dtype(format!(
            "{op} is not defined for {}",
            x.dtype()
        )));
    }
    let v = x.to_f64_vec().into_iter().map(f).collect();
    Ok(vec![super::from_f64_as(x.dtype(), x.shape().to_vec(), v)?])
}

/// `Shrink`: x + bias below −lambd, x − bias above lambd, 0 between.
pub fn shrink(ins: &mut Inputs<'_>, lambd: f64, bias: f64) -> KernelResult<Vec<HostTensor>> {
    map_f64(ins, "Shrink", |x| {
        if x < -lambd {
            x + bias
        } else if x > lambd {
            x - bias
        } else {
            0.0
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrink_bands() {
        let x = HostTensor::from_vec(vec![3], vec![-2.0f32, 0.5, 2.0]).expect("x");
        let y = shrink(&mut Inputs::borrowed(&[Some(&x)]), 1.0, 0.5).expect("shrink");
        assert_eq!(y[0].as_f32().expect("f32"), &[-1.5, 0.0, 1.5]);
    }
}
