//! `DepthToSpace` / `SpaceToDepth` (the plans of `ortho_ir::semantics::blocks`, run through
//! the engine's Transpose) and `ReverseSequence`.

use super::shape::norm_axis;
use crate::cpu::error::{KernelError, KernelResult};
use crate::cpu::kernel::{ExecCx, Inputs};
use crate::cpu::tensor::{Elem, HostTensor};
use ortho_ir::semantics::blocks::{self, BlockPlan};

/// Runs a reshape → transpose → reshape plan on `ins[0]`.
pub fn rearrange(
    cx: &mut ExecCx<'_>,
    ins: &mut Inputs<'_>,
    plan: impl Fn(&[usize]) -> ortho_ir::semantics::SemResult<BlockPlan>,
) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    let (split, perm, out) = plan(x.shape())?;
    let x6 = x.clone().reshaped(split)?;
    let perm: Vec<i64> = perm.iter().map(|&p| p as i64).collect();
    let t = super::shape::transpose(cx, &mut Inputs::borrowed(&[Some(&x6)]), Some(&perm))?;
    let y = t
        .into_iter()
        .next()
        .ok_or_else(|| KernelError::invalid("Transpose gave no result"))?;
    Ok(vec![y.reshaped(out)?])
}

/// `DepthToSpace(input)`.
pub fn depth_to_space(
    cx: &mut ExecCx<'_>,
    ins: &mut Inputs<'_>,
    b: i64,
    mode: blocks::BlockMode,
) -> KernelResult<Vec<HostTensor>> {
    rearrange(cx, ins, |d| blocks::depth_to_space(d, b, mode))
}

/// `SpaceToDepth(input)`.
pub fn space_to_depth(
    cx: &mut ExecCx<'_>,
    ins: &mut Inputs<'_>,
    b: i64,
    mode: blocks::BlockMode,
) -> KernelResult<Vec<HostTensor>> {
    rearrange(cx, ins, |d| blocks::space_to_depth(d, b, mode))
}

/// `ReverseSequence(input, sequence_lens)`.
pub fn reverse_sequence(
    ins: &mut Inputs<'_>,
    batch_axis: i64,
    time_axis: i64,
) -> KernelResult<Vec<HostTensor>> {
    let (x, lens) = (ins.req(0)?, ins.req(1)?.to_i64_vec());
    let (b, t) = (
        norm_axis(batch_axis, x.rank())?,
        norm_axis(time_axis, x.rank())?,
    );
    let d = x.dtype();
    Ok(vec![crate::with_dtype!(d, T => {
        let data = x.data::<T>().ok_or_else(|| KernelError::dtype(format!("not defined for {d}")))?;
        let v = blocks::reverse_sequence(data, x.shape(), &lens, b, t)?;
        HostTensor::make(x.shape().to_vec(), T::wrap(v))?
    }, _ => return Err(KernelError::dtype(format!("ReverseSequence is not defined for {d}"))))])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::pool::BufferPool;

    #[test]
    fn depth_to_space_and_back() {
        let x = HostTensor::from_vec(vec![1, 4, 1, 1], vec![1.0f32, 2.0, 3.0, 4.0]).expect("x");
        let mut pool = BufferPool::new();
        let mut cx = ExecCx {
            pool: &mut pool,
            threads: 1,
        };
        let dcr = blocks::BlockMode::Dcr;
        let y = depth_to_space(&mut cx, &mut Inputs::borrowed(&[Some(&x)]), 2, dcr).expect("d2s");
        assert_eq!(y[0].shape(), &[1, 1, 2, 2]);
        let z =
            space_to_depth(&mut cx, &mut Inputs::borrowed(&[Some(&y[0])]), 2, dcr).expect("s2d");
        assert_eq!(z[0].as_f32().expect("f32"), x.as_f32().expect("f32"));
    }
}
