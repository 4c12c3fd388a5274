//! f64 forms of the normalization kernels of `nn.rs` (which compute in f32), for models cast to
//! f64 — the gradient checks run the fused spellings in f64 against finite differences. Kept in
//! their own file so `nn.rs` stays as it is.

use super::shape::{expand_to, norm_axis};
use crate::cpu::error::{KernelError, KernelResult};
use crate::cpu::kernel::{ExecCx, Inputs};
use crate::cpu::tensor::{numel, HostTensor, TensorBuf};

/// RMSNormalization in f64: `x / sqrt(mean(x²) + eps) * scale` over dims `axis..`.
pub fn rms_norm(
    cx: &mut ExecCx<'_>,
    ins: &mut Inputs<'_>,
    axis: i64,
    eps: f32,
) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    let xd = x
        .data::<f64>()
        .ok_or(KernelError::dtype("expected f64 input"))?;
    let a = norm_axis(axis, x.rank())?;
    let row = &x.shape()[a..];
    let n = numel(row);
    let scale = ins.req(1)?.clone();
    if scale.data::<f64>().is_none() {
        return Err(KernelError::dtype(
            "the scale of an f64 RMSNormalization must be f64",
        ));
    }
    let shape = super::broadcast::broadcast_shapes(&[row, scale.shape()])?;
    if shape != row {
        return Err(KernelError::shape(format!(
            "scale of shape {:?} does not broadcast to the normalized shape {row:?}",
            scale.shape()
        )));
    }
    let sc = expand_to::<f64>(cx, &scale, row)?;
    let mut out = vec![0.0f64; xd.len()];
    if n > 0 {
        for (o, r) in out.chunks_mut(n).zip(xd.chunks(n)) {
            let ms = r.iter().map(|v| v * v).sum::<f64>() / n as f64;
            let d = (ms + f64::from(eps)).sqrt();
            for ((o, &v), &s) in o.iter_mut().zip(r).zip(&sc) {
                *o = v / d * s;
            }
        }
    }
    Ok(vec![HostTensor::make(
        x.shape().to_vec(),
        TensorBuf::F64(out),
    )?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::pool::BufferPool;

    #[test]
    fn rms_norm_by_hand() {
        let mut pool = BufferPool::new();
        let mut cx = ExecCx {
            pool: &mut pool,
            threads: 1,
        };
        let x = HostTensor::from_vec(vec![1, 2], vec![3.0f64, 4.0]).expect("x");
        let w = HostTensor::from_vec(vec![2], vec![1.0f64, 2.0]).expect("w");
        let r = rms_norm(
            &mut cx,
            &mut Inputs::borrowed(&[Some(&x), Some(&w)]),
            -1,
            0.0,
        )
        .expect("rms");
        let rms = 12.5f64.sqrt();
        assert_eq!(
            r[0].data::<f64>().expect("f64"),
            &[3.0 / rms, 4.0 / rms * 2.0]
        );
    }
}
