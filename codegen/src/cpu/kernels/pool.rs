//! Pooling: `MaxPool` (with its optional indices), `AveragePool`, `LpPool`, and the global
//! forms. The windows (sizes, pads, ceil rounding, which taps count) are
//! `ortho_ir::semantics::pool`, evaluated in f64 and rounded once to the input's element type
//! (exact for the max of any type).

use crate::cpu::error::{KernelError, KernelResult};
use crate::cpu::kernel::Inputs;
use crate::cpu::tensor::{Elem, HostTensor};
use ortho_ir::semantics::pool::{pool_f64, PoolAttrs, PoolKind};
use ortho_ir::DType;

fn run(
    x: &HostTensor,
    at: &PoolAttrs,
    kind: PoolKind,
    with_indices: bool,
) -> KernelResult<Vec<HostTensor>> {
    let d = x.dtype();
    if d == DType::Bool || (!d.is_float() && !matches!(kind, PoolKind::Max { .. })) {
        return Err(KernelError::dtype(format!(
            "{kind:?} pooling is not defined for {d}"
        )));
    }
    let (dims, v, idx) = pool_f64(&x.to_f64_vec(), x.shape(), at, kind)?;
    let mut out = vec![super::from_f64_as(d, dims.clone(), v)?];
    if with_indices {
        out.push(HostTensor::make(dims, i64::wrap(idx))?);
    }
    Ok(out)
}

/// `MaxPool`, `AveragePool` or `LpPool` with the node's window attributes.
pub fn pool(
    ins: &mut Inputs<'_>,
    at: &PoolAttrs,
    kind: PoolKind,
    with_indices: bool,
) -> KernelResult<Vec<HostTensor>> {
    run(ins.req(0)?, at, kind, with_indices)
}

/// `GlobalAveragePool` / `GlobalMaxPool`: one window over all spatial dims.
pub fn global_pool(ins: &mut Inputs<'_>, kind: PoolKind) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    let at = PoolAttrs {
        kernel: x.shape().iter().skip(2).map(|&d| d as i64).collect(),
        ..PoolAttrs::default()
    };
    run(x, &at, kind, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_pool_keeps_the_type_and_gives_indices() {
        // A 1×1×2×2 int8 plane, one 2×2 window: the max 7 sits at flat index 2.
        let x = HostTensor::from_vec(vec![1, 1, 2, 2], vec![3i8, -1, 7, 7]).expect("x");
        let at = PoolAttrs {
            kernel: vec![2, 2],
            ..PoolAttrs::default()
        };
        let mut ins = Inputs::borrowed(&[Some(&x)]);
        let out = pool(&mut ins, &at, PoolKind::Max { col_major: false }, true).expect("pool");
        assert_eq!(out[0].shape(), &[1, 1, 1, 1]);
        assert_eq!(out[0].to_i64_vec(), vec![7]);
        assert_eq!(out[1].as_i64().expect("i64"), &[2]);
        let mut ins = Inputs::borrowed(&[Some(&x)]);
        let avg = PoolKind::Average {
            count_include_pad: false,
        };
        assert!(
            global_pool(&mut ins, avg).is_err(),
            "average of int8 is not defined"
        );
    }
}
