//! Normalizations (RMSNormalization, LayerNormalization) and RotaryEmbedding.

use super::shape::norm_axis;
use super::unary::Float;
use crate::cpu::error::{KernelError, KernelResult};
use crate::cpu::kernel::{ExecCx, Inputs};
use crate::cpu::tensor::{numel, HostTensor, TensorBuf};
use ortho_ir::DType;
use rayon::prelude::*;

/// Applies `f(row, out_row)` to every row of `n` elements, in parallel when large.
fn rows<T: Send + Sync>(
    cx: &ExecCx<'_>,
    x: &[T],
    out: &mut [T],
    n: usize,
    f: impl Fn(&[T], &mut [T]) + Sync,
) {
    if cx.parallel(x.len()) {
        let per = (x.len() / n).div_ceil(cx.threads * 4).max(1) * n;
        out.par_chunks_mut(per)
            .zip(x.par_chunks(per))
            .for_each(|(o, xs)| {
                for (o, xs) in o.chunks_mut(n).zip(xs.chunks(n)) {
                    f(xs, o);
                }
            });
    } else {
        for (o, xs) in out.chunks_mut(n).zip(x.chunks(n)) {
            f(xs, o);
        }
    }
}

/// The normalized block: rows of `n = prod(shape[axis..])` elements, and the scale/bias
/// broadcast over one row, in the compute type `T` (f16/bf16 parameters widened to f32).
fn row_params<T: Float>(
    cx: &mut ExecCx<'_>,
    x: &HostTensor,
    axis: i64,
    p: Option<&HostTensor>,
) -> KernelResult<(usize, Option<Vec<T>>)> {
    let a = norm_axis(axis, x.rank())?;
    let row_shape = &x.shape()[a..];
    let n = numel(row_shape);
    let p = match p {
        None => None,
        Some(p) => {
            let w = super::elementwise::widen_half(p);
            let p = w.as_ref().unwrap_or(p);
            if p.data::<T>().is_none() {
                return Err(KernelError::dtype(format!(
                    "scale/bias must be {} like the input, got {}",
                    T::DTYPE,
                    p.dtype()
                )));
            }
            let shape = super::broadcast::broadcast_shapes(&[row_shape, p.shape()])?;
            if shape != row_shape {
                return Err(KernelError::shape(format!("scale/bias of shape {:?} does not broadcast to the normalized shape {row_shape:?}", p.shape())));
            }
            Some(super::shape::expand_to::<T>(cx, p, row_shape)?)
        }
    };
    Ok((n, p))
}

/// What both norms start from: the input in the compute type (`wide`, its widened copy, where
/// `x0` is f16 or bf16), its data, the row length over dims `axis..`, and the scale over one row.
fn norm_input<'t, T: Float>(
    cx: &mut ExecCx<'_>,
    x0: &'t HostTensor,
    wide: &'t Option<HostTensor>,
    axis: i64,
    scale: Option<&HostTensor>,
    op: &'static str,
) -> KernelResult<(&'t HostTensor, &'t [T], usize, Vec<T>)> {
    let x = wide.as_ref().unwrap_or(x0);
    let xd = x
        .data::<T>()
        .ok_or_else(|| KernelError::dtype(format!("{op} is not defined for {}", x0.dtype())))?;
    let (n, scale) = row_params(cx, x, axis, scale)?;
    let scale = scale.ok_or_else(|| KernelError::invalid(format!("{op} needs a scale")))?;
    Ok((x, xd, n, scale))
}

/// RMSNormalization (opset 23): `x / sqrt(mean(x²) + eps) * scale` over dims `axis..`, in f32
/// (f16/bf16 widened) or in f64 for f64 models (the gradient checks run in f64).
pub fn rms_norm(
    cx: &mut ExecCx<'_>,
    ins: &mut Inputs<'_>,
    axis: i64,
    eps: f32,
) -> KernelResult<Vec<HostTensor>> {
    let x0 = ins.req(0)?;
    if x0.dtype() == DType::F64 {
        return rms_norm_in::<f64>(cx, ins, axis, eps);
    }
    let t = rms_norm_in::<f32>(cx, ins, axis, eps)?;
    let x0 = ins.req(0)?;
    t.into_iter()
        .map(|t| super::elementwise::narrow_half(t, x0.dtype()))
        .collect()
}

fn rms_norm_in<T: Float>(
    cx: &mut ExecCx<'_>,
    ins: &mut Inputs<'_>,
    axis: i64,
    eps: f32,
) -> KernelResult<Vec<HostTensor>> {
    let x0 = ins.req(0)?;
    let wide = super::elementwise::widen_half(x0);
    let (x, xd, n, scale) = norm_input::<T>(cx, x0, &wide, axis, ins.get(1), "RMSNormalization")?;
    let mut out = cx.pool.alloc::<T>(xd.len())?;
    let eps = T::c(f64::from(eps));
    if n > 0 {
        rows(cx, xd, &mut out, n, |r, o| {
            let ss: f64 = r.iter().map(|&v| v.to_f64() * v.to_f64()).sum();
            // The mean is rounded to the compute type as the decomposed graph (and onnxruntime)
            // do.
            let ms = T::c(ss / n as f64);
            let d = (ms + eps).sqrt();
            for ((o, &v), &s) in o.iter_mut().zip(r).zip(&scale) {
                *o = v / d * s;
            }
        });
    }
    Ok(vec![HostTensor::make(x.shape().to_vec(), T::wrap(out))?])
}

/// LayerNormalization: `(x − mean) / sqrt(var + eps) * scale + bias`; also returns the mean and
/// inverse standard deviation when the node asks for them.
pub fn layer_norm(
    cx: &mut ExecCx<'_>,
    ins: &mut Inputs<'_>,
    axis: i64,
    eps: f32,
    n_out: usize,
) -> KernelResult<Vec<HostTensor>> {
    let x0 = ins.req(0)?;
    let wide = super::elementwise::widen_half(x0);
    let (x, xd, n, scale) =
        norm_input::<f32>(cx, x0, &wide, axis, ins.get(1), "LayerNormalization")?;
    let (_, bias) = row_params::<f32>(cx, x, axis, ins.get(2))?;
    let nrows = xd.len().checked_div(n).unwrap_or(0);
    let mut out = cx.pool.alloc::<f32>(xd.len())?;
    let mut stats = vec![(0.0f32, 0.0f32); nrows];
    for (i, (r, o)) in xd
        .chunks(n.max(1))
        .zip(out.chunks_mut(n.max(1)))
        .enumerate()
        .take(nrows)
    {
        let mean = r.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = r.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for (k, (o, &v)) in o.iter_mut().zip(r).enumerate() {
            let y = ((v as f64 - mean) * inv) as f32 * scale[k];
            *o = match &bias {
                Some(b) => y + b[k],
                None => y,
            };
        }
        stats[i] = (mean as f32, inv as f32);
    }
    let a = norm_axis(axis, x.rank())?;
    let t = HostTensor::make(x.shape().to_vec(), TensorBuf::F32(out))?;
    // Mean and inverse standard deviation stay f32 (the stash type); only Y is rounded back.
    let mut res = vec![super::elementwise::narrow_half(t, x0.dtype())?];
    if n_out > 1 {
        let mut sshape = x.shape()[..a].to_vec();
        sshape.extend(std::iter::repeat_n(1, x.rank() - a));
        res.push(HostTensor::make(
            sshape.clone(),
            TensorBuf::F32(stats.iter().map(|s| s.0).collect()),
        )?);
        res.push(HostTensor::make(
            sshape,
            TensorBuf::F32(stats.iter().map(|s| s.1).collect()),
        )?);
    }
    Ok(res)
}

/// RotaryEmbedding (opset 23). `x` is [B, H, S, D] or [B, S, H·D] (with `num_heads`);
/// `cos`/`sin` are [max_pos, R/2] indexed by `position_ids` [B, S], or [B, S, R/2] without
/// them. The first R = rotary_embedding_dim (default D) features of each head rotate, as
/// halves (x1 = x[:R/2], x2 = x[R/2:R]) or interleaved pairs.
pub fn rotary(
    cx: &mut ExecCx<'_>,
    ins: &mut Inputs<'_>,
    interleaved: bool,
    num_heads: i64,
    rot_dim: i64,
) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    let (cos_t, sin_t) = (ins.req(1)?, ins.req(2)?);
    let pos = ins.get(3).map(|p| p.to_i64_vec());
    let xd = x.as_f32().ok_or_else(|| {
        KernelError::dtype(format!(
            "RotaryEmbedding is implemented for f32, got {}",
            x.dtype()
        ))
    })?;
    let (cd, sd) = (
        cos_t
            .as_f32()
            .ok_or(KernelError::dtype("cos_cache must be f32"))?,
        sin_t
            .as_f32()
            .ok_or(KernelError::dtype("sin_cache must be f32"))?,
    );
    // Logical layout: (b, s, h, d) with element strides.
    let s = x.shape();
    let (b, seq, heads, hd, st_b, st_s, st_h) = match s.len() {
        4 => (
            s[0],
            s[2],
            s[1],
            s[3],
            s[1] * s[2] * s[3],
            s[3],
            s[2] * s[3],
        ),
        3 => {
            if num_heads <= 0 {
                return Err(KernelError::shape("3-D input needs num_heads"));
            }
            let h = num_heads as usize;
            if s[2] % h != 0 {
                return Err(KernelError::shape(format!(
                    "hidden size {} is not a multiple of num_heads {h}",
                    s[2]
                )));
            }
            (s[0], s[1], h, s[2] / h, s[1] * s[2], s[2], s[2] / h)
        }
        r => {
            return Err(KernelError::shape(format!(
                "input must be 3-D or 4-D, got rank {r}"
            )))
        }
    };
    let rd = if rot_dim > 0 { rot_dim as usize } else { hd };
    if rd > hd || rd % 2 != 0 {
        return Err(KernelError::shape(format!(
            "rotary_embedding_dim {rd} does not fit head size {hd}"
        )));
    }
    let half = rd / 2;
    let cache_row = |bi: usize, si: usize| -> KernelResult<usize> {
        match &pos {
            Some(p) => {
                let idx = *p
                    .get(bi * seq + si)
                    .ok_or(KernelError::invalid("position_ids must be [batch, seq]"))?;
                let rows = cos_t.shape().first().copied().unwrap_or(0);
                if idx < 0 || idx as usize >= rows {
                    return Err(KernelError::shape(format!(
                        "position {idx} is outside the cache ({rows} rows)"
                    )));
                }
                Ok(idx as usize * half)
            }
            None => Ok((bi * seq + si) * half),
        }
    };
    if cos_t.shape().last().copied() != Some(half) || cd.len() != sd.len() {
        return Err(KernelError::shape(format!(
            "cos/sin caches of shape {:?} do not hold {half} values per row",
            cos_t.shape()
        )));
    }
    let mut out = cx.pool.alloc::<f32>(xd.len())?;
    out.copy_from_slice(xd);
    for bi in 0..b {
        for si in 0..seq {
            let c0 = cache_row(bi, si)?;
            if c0 + half > cd.len() {
                return Err(KernelError::shape("cos/sin cache is too small"));
            }
            let (c, sn) = (&cd[c0..c0 + half], &sd[c0..c0 + half]);
            for h in 0..heads {
                let base = bi * st_b + si * st_s + h * st_h;
                let row = &xd[base..base + hd];
                let o = &mut out[base..base + hd];
                for i in 0..half {
                    let (i1, i2) = if interleaved {
                        (2 * i, 2 * i + 1)
                    } else {
                        (i, i + half)
                    };
                    let (x1, x2) = (row[i1], row[i2]);
                    o[i1] = x1 * c[i] - x2 * sn[i];
                    o[i2] = x2 * c[i] + x1 * sn[i];
                }
            }
        }
    }
    Ok(vec![HostTensor::make(s.to_vec(), TensorBuf::F32(out))?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::pool::BufferPool;

    #[test]
    fn rms_norm_in_f64_by_hand() {
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

    #[test]
    fn rms_norm_and_rotary_by_hand() {
        let mut pool = BufferPool::new();
        let mut cx = ExecCx {
            pool: &mut pool,
            threads: 1,
        };
        let x = HostTensor::from_vec(vec![1, 2], vec![3.0f32, 4.0]).expect("x");
        let w = HostTensor::from_vec(vec![2], vec![1.0f32, 2.0]).expect("w");
        let r = rms_norm(
            &mut cx,
            &mut Inputs::borrowed(&[Some(&x), Some(&w)]),
            -1,
            0.0,
        )
        .expect("rms");
        let rms = (12.5f32).sqrt();
        assert_eq!(r[0].as_f32().expect("f"), &[3.0 / rms, 4.0 / rms * 2.0]);
        let ln = layer_norm(
            &mut cx,
            &mut Inputs::borrowed(&[Some(&x), Some(&w)]),
            -1,
            0.0,
            1,
        )
        .expect("ln");
        assert_eq!(ln[0].as_f32().expect("f"), &[-1.0, 2.0]);
        // One head of 4 features at positions 0 and 1; angle θ at position 1.
        let xr = HostTensor::from_vec(
            vec![1, 2, 4],
            vec![1.0f32, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0],
        )
        .expect("x");
        let th = 0.5f32;
        let cos =
            HostTensor::from_vec(vec![2, 2], vec![1.0, 1.0, th.cos(), th.cos()]).expect("cos");
        let sin =
            HostTensor::from_vec(vec![2, 2], vec![0.0, 0.0, th.sin(), th.sin()]).expect("sin");
        let p = HostTensor::from_vec(vec![1, 2], vec![0i64, 1]).expect("p");
        let r = rotary(
            &mut cx,
            &mut Inputs::borrowed(&[Some(&xr), Some(&cos), Some(&sin), Some(&p)]),
            false,
            1,
            0,
        )
        .expect("rope");
        let v = r[0].as_f32().expect("f");
        assert_eq!(&v[..4], &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(v[4], 1.0 * th.cos() - 3.0 * th.sin());
        assert_eq!(v[6], 3.0 * th.cos() + 1.0 * th.sin());
    }
}
