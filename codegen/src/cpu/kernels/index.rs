//! Index ops: ArgMax / ArgMin, CumSum / CumProd, GatherElements, NonZero, OneHot, EyeLike.

use super::shape::norm_axis;
use crate::cpu::error::{KernelError, KernelResult};
use crate::cpu::kernel::Inputs;
use crate::cpu::tensor::{numel, strides, Elem, HostTensor};
use ortho_ir::DType;

/// (outer, dim, inner) of `shape` around `axis`.
fn split3(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

fn arg_typed<T: Elem + PartialOrd>(
    x: &HostTensor,
    axis: usize,
    keep: bool,
    max: bool,
    last: bool,
) -> KernelResult<HostTensor> {
    let d = x.data::<T>().ok_or(KernelError::dtype("dtype"))?;
    let (outer, n, inner) = split3(x.shape(), axis);
    if n == 0 {
        return Err(KernelError::shape("ArgMax/ArgMin over an empty axis"));
    }
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let mut best = 0usize;
            for k in 1..n {
                let (v, b) = (d[(o * n + k) * inner + i], d[(o * n + best) * inner + i]);
                let better = if max { v > b } else { v < b };
                if better || (last && v == b) {
                    best = k;
                }
            }
            out.push(best as i64);
        }
    }
    let mut shape = x.shape().to_vec();
    if keep {
        shape[axis] = 1;
    } else {
        shape.remove(axis);
    }
    HostTensor::make(shape, i64::wrap(out))
}

pub fn arg_extreme(
    ins: &mut Inputs<'_>,
    axis: i64,
    keep: bool,
    max: bool,
    last: bool,
) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    let a = norm_axis(axis, x.rank())?;
    let wide = super::elementwise::widen_half(x);
    let x = wide.as_ref().unwrap_or(x);
    let d = x.dtype();
    Ok(vec![
        crate::with_dtype!(d, T => arg_typed::<T>(x, a, keep, max, last), _ => Err(KernelError::dtype(format!("not defined for {d}"))))?,
    ])
}

/// Which running reduction `cumsum` computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cumulative {
    Sum,
    Prod,
}

fn cumsum_typed<T: Elem>(
    x: &HostTensor,
    axis: usize,
    exclusive: bool,
    reverse: bool,
    op: Cumulative,
) -> KernelResult<HostTensor> {
    let product = op == Cumulative::Prod;
    let d = x.data::<T>().ok_or(KernelError::dtype("dtype"))?;
    let (outer, n, inner) = split3(x.shape(), axis);
    let float = T::DTYPE.is_float();
    let mut out = vec![T::default(); d.len()];
    for o in 0..outer {
        for i in 0..inner {
            // The running sum starts at 0, the running product at 1.
            let (mut af, mut ai) = if product {
                (1.0f64, 1i64)
            } else {
                (0.0f64, 0i64)
            };
            for step in 0..n {
                let k = if reverse { n - 1 - step } else { step };
                let at = (o * n + k) * inner + i;
                if exclusive {
                    out[at] = if float {
                        T::from_f64(af)
                    } else {
                        T::from_i64(ai)
                    };
                }
                match (float, product) {
                    (true, false) => af += d[at].to_f64(),
                    (true, true) => af *= d[at].to_f64(),
                    (false, false) => ai = ai.wrapping_add(d[at].to_i64()),
                    (false, true) => ai = ai.wrapping_mul(d[at].to_i64()),
                }
                if !exclusive {
                    out[at] = if float {
                        T::from_f64(af)
                    } else {
                        T::from_i64(ai)
                    };
                }
            }
        }
    }
    HostTensor::make(x.shape().to_vec(), T::wrap(out))
}

/// `CumSum(x, axis)` or `CumProd(x, axis)`.
pub fn cumsum(
    ins: &mut Inputs<'_>,
    exclusive: bool,
    reverse: bool,
    op: Cumulative,
) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    let axis = ins
        .req(1)?
        .to_i64_vec()
        .first()
        .copied()
        .ok_or(KernelError::invalid("CumSum needs an axis"))?;
    let a = norm_axis(axis, x.rank())?;
    let d = x.dtype();
    Ok(vec![
        crate::with_dtype!(d, T => cumsum_typed::<T>(x, a, exclusive, reverse, op), _ => Err(KernelError::dtype(format!("not defined for {d}"))))?,
    ])
}

fn gather_elements_typed<T: Elem>(
    x: &HostTensor,
    idx: &[i64],
    ishape: &[usize],
    axis: usize,
) -> KernelResult<HostTensor> {
    let d = x.data::<T>().ok_or(KernelError::dtype("dtype"))?;
    let xs = strides(x.shape());
    let is = strides(ishape);
    let dim = x.shape()[axis] as i64;
    let mut out = Vec::with_capacity(idx.len());
    for (e, &j) in idx.iter().enumerate() {
        let j = if j < 0 { j + dim } else { j };
        if j < 0 || j >= dim {
            return Err(KernelError::shape(format!(
                "index {j} is out of range for axis of size {dim}"
            )));
        }
        let mut off = 0;
        for a in 0..ishape.len() {
            let c = e / is[a] % ishape[a];
            off += if a == axis { j as usize } else { c } * xs[a];
        }
        out.push(d[off]);
    }
    HostTensor::make(ishape.to_vec(), T::wrap(out))
}

pub fn gather_elements(ins: &mut Inputs<'_>, axis: i64) -> KernelResult<Vec<HostTensor>> {
    let (x, ind) = (ins.req(0)?, ins.req(1)?);
    if x.rank() != ind.rank() || x.rank() == 0 {
        return Err(KernelError::shape(
            "data and indices must have the same rank ≥ 1",
        ));
    }
    let a = norm_axis(axis, x.rank())?;
    let idx = ind.to_i64_vec();
    let d = x.dtype();
    Ok(vec![
        crate::with_dtype!(d, T => gather_elements_typed::<T>(x, &idx, ind.shape(), a), _ => Err(KernelError::dtype(format!("not defined for {d}"))))?,
    ])
}

pub fn nonzero(ins: &mut Inputs<'_>) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    let v = x.to_f64_vec();
    let st = strides(x.shape());
    let hits: Vec<usize> = v
        .iter()
        .enumerate()
        .filter(|(_, &e)| e != 0.0)
        .map(|(i, _)| i)
        .collect();
    let r = x.rank();
    let mut out = vec![0i64; r * hits.len()];
    for (k, &h) in hits.iter().enumerate() {
        for a in 0..r {
            out[a * hits.len() + k] = (h / st[a] % x.shape()[a]) as i64;
        }
    }
    Ok(vec![HostTensor::make(vec![r, hits.len()], i64::wrap(out))?])
}

fn onehot_typed<T: Elem>(
    idx: &[i64],
    ishape: &[usize],
    depth: i64,
    off: T,
    on: T,
    axis: usize,
) -> KernelResult<HostTensor> {
    let mut shape = ishape.to_vec();
    shape.insert(axis, depth as usize);
    let (outer, inner) = (
        ishape[..axis].iter().product::<usize>(),
        ishape[axis..].iter().product::<usize>(),
    );
    let mut out = vec![off; numel(&shape)];
    for o in 0..outer {
        for i in 0..inner {
            let mut j = idx[o * inner + i];
            if j < 0 {
                j += depth;
            }
            if (0..depth).contains(&j) {
                out[(o * depth as usize + j as usize) * inner + i] = on;
            }
        }
    }
    HostTensor::make(shape, T::wrap(out))
}

pub fn onehot(ins: &mut Inputs<'_>, axis: i64) -> KernelResult<Vec<HostTensor>> {
    let (ind, depth, values) = (ins.req(0)?, ins.req(1)?, ins.req(2)?);
    let depth = depth
        .to_f64_vec()
        .first()
        .copied()
        .ok_or(KernelError::shape("depth must be a scalar"))? as i64;
    if depth < 0 || values.numel() != 2 {
        return Err(KernelError::invalid(
            "depth must be ≥ 0 and values hold [off, on]",
        ));
    }
    let a = norm_axis(axis, ind.rank() + 1)?;
    let idx = ind.to_i64_vec();
    let d = values.dtype();
    Ok(vec![crate::with_dtype!(d, T => {
        let v = values.data::<T>().ok_or(KernelError::dtype("dtype"))?;
        onehot_typed::<T>(&idx, ind.shape(), depth, v[0], v[1], a)?
    }, _ => return Err(KernelError::dtype(format!("not defined for {d}"))))])
}

/// `EyeLike(input)`: ones on the `k`-th diagonal of a 2-D tensor of the input's shape, in
/// `dtype` (the input's element type when absent).
pub fn eye_like(
    ins: &mut Inputs<'_>,
    dtype: Option<DType>,
    k: i64,
) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    let [rows, cols] = *x.shape() else {
        return Err(KernelError::shape(format!(
            "EyeLike needs a 2-D input, got {:?}",
            x.shape()
        )));
    };
    let d = dtype.unwrap_or(x.dtype());
    let on = |e: usize| (e % cols.max(1)) as i64 - (e / cols.max(1)) as i64 == k;
    Ok(vec![crate::with_dtype!(d, T => {
        let v: Vec<T> = (0..rows * cols).map(|e| T::from_f64(if on(e) { 1.0 } else { 0.0 })).collect();
        HostTensor::make(vec![rows, cols], T::wrap(v))?
    }, _ => return Err(KernelError::dtype(format!("EyeLike is not defined for {d}"))))])
}
