//! `Einsum`: the operands in f64 through `ortho_ir::semantics::einsum` (the same grammar shape
//! inference reads), the result rounded once to the operands' element type.

use crate::cpu::error::{KernelError, KernelResult};
use crate::cpu::kernel::Inputs;
use crate::cpu::tensor::HostTensor;
use ortho_ir::semantics::einsum::einsum_f64;

pub fn einsum(ins: &mut Inputs<'_>, equation: &str) -> KernelResult<Vec<HostTensor>> {
    let ops: Vec<&HostTensor> = (0..ins.len())
        .map(|i| ins.req(i))
        .collect::<KernelResult<_>>()?;
    let d = ops
        .first()
        .ok_or(KernelError::invalid("Einsum needs an operand"))?
        .dtype();
    if ops.iter().any(|t| t.dtype() != d) {
        return Err(KernelError::dtype(
            "Einsum operands must share one element type",
        ));
    }
    let vals: Vec<Vec<f64>> = ops.iter().map(|t| t.to_f64_vec()).collect();
    let args: Vec<(&[f64], &[usize])> = vals
        .iter()
        .zip(&ops)
        .map(|(v, t)| (v.as_slice(), t.shape()))
        .collect();
    let (dims, out) = einsum_f64(equation, &args)?;
    if d == ortho_ir::DType::Bool {
        return Err(KernelError::dtype("Einsum is not defined for bool"));
    }
    Ok(vec![super::from_f64_as(d, dims, out)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batched_matmul_in_the_operands_type() {
        let a = HostTensor::from_vec(vec![1, 2, 2], vec![1i32, 2, 3, 4]).expect("a");
        let b = HostTensor::from_vec(vec![1, 2, 1], vec![1i32, 1]).expect("b");
        let mut ins = Inputs::borrowed(&[Some(&a), Some(&b)]);
        let out = einsum(&mut ins, "bij,bjk->bik").expect("einsum");
        assert_eq!(out[0].shape(), &[1, 2, 1]);
        assert_eq!(out[0].to_i64_vec(), vec![3, 7]);
    }
}
