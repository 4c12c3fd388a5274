//! Reductions (ReduceMean, ReduceSum, …) and Softmax / LogSoftmax.
//!
//! Sums accumulate in f64: one rounding at the end, so long rows (RMSNorm's mean of squares,
//! softmax denominators) do not drift from onnxruntime's results by accumulation order.

use super::mathf::exp_sub_inplace;
use super::shape::norm_axis;
use crate::cpu::error::{KernelError, KernelResult};
use crate::cpu::kernel::{ExecCx, Inputs};
use crate::cpu::tensor::{Elem, HostTensor};
use ortho_ir::DType;
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    L1,
    L2,
    SumSquare,
    LogSum,
    LogSumExp,
}

fn reduce_row(op: Reduce, it: impl Iterator<Item = f64> + Clone, n: usize) -> f64 {
    match op {
        Reduce::Sum => it.sum(),
        Reduce::Mean => it.sum::<f64>() / n as f64,
        Reduce::Max => it.fold(f64::NEG_INFINITY, |a, b| {
            if b.is_nan() || a.is_nan() {
                f64::NAN
            } else {
                a.max(b)
            }
        }),
        Reduce::Min => it.fold(f64::INFINITY, |a, b| {
            if b.is_nan() || a.is_nan() {
                f64::NAN
            } else {
                a.min(b)
            }
        }),
        Reduce::Prod => it.product(),
        Reduce::L1 => it.map(f64::abs).sum(),
        Reduce::L2 => it.map(|v| v * v).sum::<f64>().sqrt(),
        Reduce::SumSquare => it.map(|v| v * v).sum(),
        Reduce::LogSum => it.sum::<f64>().ln(),
        Reduce::LogSumExp => {
            let m = it.clone().fold(f64::NEG_INFINITY, f64::max);
            if m.is_infinite() {
                return m;
            }
            m + it.map(|v| (v - m).exp()).sum::<f64>().ln()
        }
    }
}

fn reduce_typed<T: Elem>(
    cx: &mut ExecCx<'_>,
    op: Reduce,
    x: &HostTensor,
    axes: &[usize],
    keepdims: bool,
) -> KernelResult<HostTensor> {
    let r = x.rank();
    let shape = x.shape();
    let mut out_shape = Vec::with_capacity(r);
    for (i, &d) in shape.iter().enumerate() {
        if axes.contains(&i) {
            if keepdims {
                out_shape.push(1);
            }
        } else {
            out_shape.push(d);
        }
    }
    // Move the reduced axes innermost (a copy only when they are not a trailing block already).
    let contiguous_block = axes.windows(2).all(|w| w[1] == w[0] + 1);
    let (data, outer, red, inner): (std::borrow::Cow<'_, [T]>, usize, usize, usize) =
        if axes.is_empty() {
            (
                x.data::<T>().ok_or(KernelError::dtype("dtype"))?.into(),
                x.numel(),
                1,
                1,
            )
        } else if contiguous_block {
            let (a, b) = (axes[0], axes[axes.len() - 1] + 1);
            (
                x.data::<T>().ok_or(KernelError::dtype("dtype"))?.into(),
                shape[..a].iter().product(),
                shape[a..b].iter().product(),
                shape[b..].iter().product(),
            )
        } else {
            let mut perm: Vec<i64> = (0..r)
                .filter(|i| !axes.contains(i))
                .map(|i| i as i64)
                .collect();
            perm.extend(axes.iter().map(|&i| i as i64));
            let t = super::shape::transpose(cx, &mut Inputs::borrowed(&[Some(x)]), Some(&perm))?;
            let t = t
                .into_iter()
                .next()
                .ok_or(KernelError::invalid("transpose"))?;
            let red: usize = axes.iter().map(|&a| shape[a]).product();
            let outer = t.numel() / red.max(1);
            (
                t.data::<T>()
                    .ok_or(KernelError::dtype("dtype"))?
                    .to_vec()
                    .into(),
                outer,
                red,
                1,
            )
        };
    let mut out = cx.pool.alloc::<T>(outer * inner)?;
    if red == 0 && T::DTYPE == DType::Bool {
        // The empty reduction of bools: Max and Sum give false, Min and Prod true.
        out.fill(T::from_i64(i64::from(matches!(
            op,
            Reduce::Min | Reduce::Prod
        ))));
        return HostTensor::make(out_shape, T::wrap(out));
    }
    if inner == 1 {
        let body = |o: &mut [T], start: usize| {
            for (k, o) in o.iter_mut().enumerate() {
                let row = &data[(start + k) * red..(start + k + 1) * red];
                *o = T::from_f64(reduce_row(op, row.iter().map(|v| v.to_f64()), red));
            }
        };
        if cx.parallel(outer * red) && outer > 1 {
            let chunk = outer.div_ceil(cx.threads * 4).max(1);
            out.par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(c, o)| body(o, c * chunk));
        } else {
            body(&mut out, 0);
        }
    } else {
        for o in 0..outer {
            for i in 0..inner {
                let it = (0..red).map(|k| data[(o * red + k) * inner + i].to_f64());
                out[o * inner + i] = T::from_f64(reduce_row(op, it, red));
            }
        }
    }
    HostTensor::make(out_shape, T::wrap(out))
}

/// A reduction; `axes` come from the attribute or from operand 1 (opset 18+).
pub fn reduce(
    cx: &mut ExecCx<'_>,
    op: Reduce,
    ins: &mut Inputs<'_>,
    attr_axes: Option<&[i64]>,
    keepdims: bool,
    noop_empty: bool,
) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    let axes: Vec<i64> = match ins.get(1) {
        Some(a) => a.to_i64_vec(),
        None => attr_axes.map(|a| a.to_vec()).unwrap_or_default(),
    };
    if axes.is_empty() && noop_empty {
        return Ok(vec![x.clone()]);
    }
    let mut ax: Vec<usize> = if axes.is_empty() {
        (0..x.rank()).collect()
    } else {
        axes.iter()
            .map(|&a| norm_axis(a, x.rank()))
            .collect::<KernelResult<_>>()?
    };
    ax.sort_unstable();
    ax.dedup();
    let d = x.dtype();
    let r = match d {
        DType::F16 | DType::BF16 => {
            super::elementwise::via_f32(&[x], |t| reduce_typed::<f32>(cx, op, t[0], &ax, keepdims))
        }
        _ => {
            crate::with_dtype!(d, T => reduce_typed::<T>(cx, op, x, &ax, keepdims), _ => Err(KernelError::dtype(format!("not defined for {d}"))))
        }
    }?;
    Ok(vec![r])
}

/// The largest value of a row (NaN if any is NaN), in 8 lanes so that it vectorizes.
#[inline]
fn row_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut nan = false;
    let mut ch = x.chunks_exact(8);
    for c in &mut ch {
        for i in 0..8 {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
            nan |= c[i].is_nan();
        }
    }
    let mut m = acc
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    for &v in ch.remainder() {
        m = if v > m { v } else { m };
        nan |= v.is_nan();
    }
    if nan {
        f32::NAN
    } else {
        m
    }
}

/// Softmax (or log-softmax) of one contiguous f32 row, written to `o`. The exponentials are
/// summed in f32 lanes of 8 and the lanes in f64.
#[inline]
pub fn softmax_row_f32(x: &[f32], o: &mut [f32], log: bool) {
    let m = row_max(x);
    if m == f32::NEG_INFINITY || m.is_nan() {
        // All masked (or NaN): 0/0, as onnxruntime.
        o.fill(f32::NAN);
        return;
    }
    o.copy_from_slice(x);
    exp_sub_inplace(o, m);
    let mut lanes = [0.0f32; 8];
    let mut ch = o.chunks_exact(8);
    for c in &mut ch {
        for i in 0..8 {
            lanes[i] += c[i];
        }
    }
    let sum: f64 = lanes.iter().map(|&v| v as f64).sum::<f64>()
        + ch.remainder().iter().map(|&v| v as f64).sum::<f64>();
    if log {
        let ls = sum.ln() as f32;
        for (o, &v) in o.iter_mut().zip(x) {
            *o = v - m - ls;
        }
    } else {
        let inv = (1.0 / sum) as f32;
        for o in o.iter_mut() {
            *o *= inv;
        }
    }
}

/// Softmax of a contiguous f32 row in place (the same arithmetic as [`softmax_row_f32`]).
#[inline]
pub fn softmax_inplace_f32(row: &mut [f32]) {
    let m = row_max(row);
    if m == f32::NEG_INFINITY || m.is_nan() {
        row.fill(f32::NAN);
        return;
    }
    exp_sub_inplace(row, m);
    let mut lanes = [0.0f32; 8];
    let mut ch = row.chunks_exact(8);
    for c in &mut ch {
        for i in 0..8 {
            lanes[i] += c[i];
        }
    }
    let sum: f64 = lanes.iter().map(|&v| v as f64).sum::<f64>()
        + ch.remainder().iter().map(|&v| v as f64).sum::<f64>();
    let inv = (1.0 / sum) as f32;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

fn softmax_f64(x: &[f64], o: &mut [f64], log: bool) {
    let m = x.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
    let sum: f64 = x.iter().map(|&v| (v - m).exp()).sum();
    for (o, &v) in o.iter_mut().zip(x) {
        *o = if log {
            v - m - sum.ln()
        } else {
            (v - m).exp() / sum
        };
    }
}

/// Softmax / LogSoftmax along `axis` (opset ≥ 13), or over the flattened trailing dims from
/// `axis` (opset < 13).
pub fn softmax(
    cx: &mut ExecCx<'_>,
    ins: &mut Inputs<'_>,
    axis: i64,
    log: bool,
    legacy: bool,
) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    if matches!(x.dtype(), DType::F16 | DType::BF16) {
        let r = super::elementwise::via_f32(&[x], |t| {
            let mut i = Inputs::borrowed(&[Some(t[0])]);
            softmax(cx, &mut i, axis, log, legacy).and_then(|v| {
                v.into_iter()
                    .next()
                    .ok_or_else(|| KernelError::invalid("softmax"))
            })
        })?;
        return Ok(vec![r]);
    }
    let a = norm_axis(axis, x.rank())?;
    let s = x.shape();
    let (outer, n, inner) = if legacy {
        (
            s[..a].iter().product::<usize>(),
            s[a..].iter().product::<usize>(),
            1,
        )
    } else {
        (
            s[..a].iter().product::<usize>(),
            s[a],
            s[a + 1..].iter().product::<usize>(),
        )
    };
    let shape = s.to_vec();
    if n == 0 || outer * inner == 0 {
        return Ok(vec![x.clone()]);
    }
    match x.dtype() {
        DType::F32 if inner == 1 => {
            let xd = x.as_f32().ok_or(KernelError::dtype("dtype"))?;
            let mut out = cx.pool.alloc::<f32>(xd.len())?;
            if cx.parallel(xd.len()) {
                let rows = outer.div_ceil(cx.threads * 8).max(1);
                out.par_chunks_mut(rows * n)
                    .zip(xd.par_chunks(rows * n))
                    .for_each(|(o, xs)| {
                        for (o, xs) in o.chunks_mut(n).zip(xs.chunks(n)) {
                            softmax_row_f32(xs, o, log);
                        }
                    });
            } else {
                for (o, xs) in out.chunks_mut(n).zip(xd.chunks(n)) {
                    softmax_row_f32(xs, o, log);
                }
            }
            Ok(vec![HostTensor::make(shape, f32::wrap(out))?])
        }
        DType::F32 | DType::F64 => {
            // Strided axis: gather each row, compute in f64, scatter.
            let xd = x.to_f64_vec();
            let mut out = vec![0.0f64; xd.len()];
            let mut row = vec![0.0f64; n];
            let mut orow = vec![0.0f64; n];
            for o in 0..outer {
                for i in 0..inner {
                    for k in 0..n {
                        row[k] = xd[(o * n + k) * inner + i];
                    }
                    softmax_f64(&row, &mut orow, log);
                    for k in 0..n {
                        out[(o * n + k) * inner + i] = orow[k];
                    }
                }
            }
            let t = HostTensor::make(shape, f64::wrap(out))?;
            if x.dtype() == DType::F32 {
                Ok(vec![super::cast::cast(cx, &t, DType::F32)?])
            } else {
                Ok(vec![t])
            }
        }
        d => Err(KernelError::dtype(format!("not defined for {d}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::pool::BufferPool;

    #[test]
    fn reduce_mean_and_softmax_by_hand() {
        let mut pool = BufferPool::new();
        let mut cx = ExecCx {
            pool: &mut pool,
            threads: 1,
        };
        let x = HostTensor::from_vec(vec![2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).expect("x");
        let r = reduce(
            &mut cx,
            Reduce::Mean,
            &mut Inputs::borrowed(&[Some(&x)]),
            Some(&[-1]),
            true,
            false,
        )
        .expect("mean");
        assert_eq!(r[0].shape(), &[2, 1]);
        assert_eq!(r[0].as_f32().expect("f"), &[2.0, 5.0]);
        let r = reduce(
            &mut cx,
            Reduce::Sum,
            &mut Inputs::borrowed(&[Some(&x)]),
            Some(&[0]),
            false,
            false,
        )
        .expect("sum");
        assert_eq!(r[0].as_f32().expect("f"), &[5.0, 7.0, 9.0]);
        let r = reduce(
            &mut cx,
            Reduce::Max,
            &mut Inputs::borrowed(&[Some(&x)]),
            None,
            false,
            false,
        )
        .expect("max");
        assert_eq!(r[0].shape(), &[] as &[usize]);
        assert_eq!(r[0].as_f32().expect("f"), &[6.0]);
        let s = softmax(
            &mut cx,
            &mut Inputs::borrowed(&[Some(&x)]),
            -1,
            false,
            false,
        )
        .expect("softmax");
        let v = s[0].as_f32().expect("f");
        let e = [1f64.exp(), 2f64.exp(), 3f64.exp()];
        let tot: f64 = e.iter().sum();
        for k in 0..3 {
            assert!((v[k] as f64 - e[k] / tot).abs() < 1e-7);
            assert!((v[3 + k] - v[k]).abs() < 1e-7);
        }
        let s0 = softmax(&mut cx, &mut Inputs::borrowed(&[Some(&x)]), 0, false, false)
            .expect("softmax axis 0");
        let v0 = s0[0].as_f32().expect("f");
        assert!((v0[0] as f64 - 1.0 / (1.0 + 3f64.exp())).abs() < 1e-7);
        let ls = softmax(&mut cx, &mut Inputs::borrowed(&[Some(&x)]), 1, true, false)
            .expect("log softmax");
        assert!((ls[0].as_f32().expect("f")[2] as f64 - (e[2] / tot).ln()).abs() < 1e-6);
    }
}
