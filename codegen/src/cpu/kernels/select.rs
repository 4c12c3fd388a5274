//! Selection ops: GatherND, TopK, Hardmax, Pad, Compress (and Det, a per-matrix reduction). The rules (index tuples and batch dims,
//! TopK's order and tie rule, Pad's modes and crops) are `ortho_ir::semantics::indexing`; this
//! file adds the typed dispatch and the lanes.

use super::shape::norm_axis;
use crate::cpu::error::{KernelError, KernelResult};
use crate::cpu::kernel::Inputs;
use crate::cpu::tensor::{Elem, HostTensor};
use ortho_ir::semantics::indexing::{self as ix, PadMode};
use ortho_ir::semantics::size::split_at_axis;

fn not_defined(op: &str, d: ortho_ir::DType) -> KernelError {
    KernelError::dtype(format!("{op} is not defined for {d}"))
}

/// `GatherND(data, indices)`.
pub fn gather_nd(ins: &mut Inputs<'_>, batch_dims: i64) -> KernelResult<Vec<HostTensor>> {
    let (x, ind) = (ins.req(0)?, ins.req(1)?);
    if !ind.dtype().is_int() {
        return Err(KernelError::dtype("GatherND indices must be integers"));
    }
    let idx = ind.to_i64_vec();
    let d = x.dtype();
    Ok(vec![crate::with_dtype!(d, T => {
        let data = x.data::<T>().ok_or(not_defined("GatherND", d))?;
        let (dims, v) = ix::gather_nd(data, x.shape(), &idx, ind.shape(), batch_dims)?;
        HostTensor::make(dims, T::wrap(v))?
    }, _ => return Err(not_defined("GatherND", d)))])
}

/// The lanes along `axis` of `dims`: (outer, n, inner), so lane (o, i) holds the elements
/// `(o·n + j)·inner + i` for j in 0..n.
fn lanes(dims: &[usize], axis: usize) -> KernelResult<(usize, usize, usize)> {
    Ok(split_at_axis(dims, axis)?)
}

fn topk_typed<T: Elem + PartialOrd>(
    x: &HostTensor,
    axis: usize,
    k: usize,
    largest: bool,
) -> KernelResult<Vec<HostTensor>> {
    let d = x.data::<T>().ok_or(not_defined("TopK", T::DTYPE))?;
    let (outer, n, inner) = lanes(x.shape(), axis)?;
    let mut shape = x.shape().to_vec();
    shape[axis] = k;
    let (mut vals, mut idxs) = (
        vec![T::default(); outer * k * inner],
        vec![0i64; outer * k * inner],
    );
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| d[(o * n + j) * inner + i];
            for (r, p) in ix::topk_lane(n, at, k, largest).into_iter().enumerate() {
                vals[(o * k + r) * inner + i] = at(p);
                idxs[(o * k + r) * inner + i] = p as i64;
            }
        }
    }
    Ok(vec![
        HostTensor::make(shape.clone(), T::wrap(vals))?,
        HostTensor::make(shape, i64::wrap(idxs))?,
    ])
}

/// `TopK(X, K)`: values and int64 positions. `sorted = 0` lets the order be any; this kernel
/// always returns it sorted, which is one of the allowed orders.
pub fn topk(ins: &mut Inputs<'_>, axis: i64, largest: bool) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    let a = norm_axis(axis, x.rank())?;
    let k = ins.req(1)?.to_i64_vec();
    let k = match k.as_slice() {
        [k] if *k >= 0 && (*k as usize) <= x.shape()[a] => *k as usize,
        _ => {
            return Err(KernelError::invalid(format!(
                "TopK: K {k:?} must be one value in 0..={}",
                x.shape()[a]
            )))
        }
    };
    let wide = super::elementwise::widen_half(x);
    let xw = wide.as_ref().unwrap_or(x);
    let d = xw.dtype();
    let mut out = crate::with_dtype!(d, T => topk_typed::<T>(xw, a, k, largest)?, _ => return Err(not_defined("TopK", d)));
    if wide.is_some() {
        // The values go back to the input's half type exactly (they are input elements).
        let v = out.remove(0);
        out.insert(0, super::elementwise::narrow_half(v, x.dtype())?);
    }
    Ok(out)
}

/// `Hardmax`: 1 at the first largest element of each lane along `axis`, 0 elsewhere. Before
/// opset 13 the lane is everything from `axis` on (the input seen as 2-D).
pub fn hardmax(ins: &mut Inputs<'_>, axis: i64, legacy: bool) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    let a = norm_axis(axis, x.rank())?;
    let (outer, n, inner) = if legacy {
        let (o, d, i) = lanes(x.shape(), a)?;
        (o, d * i, 1)
    } else {
        lanes(x.shape(), a)?
    };
    let wide = super::elementwise::widen_half(x);
    let xw = wide.as_ref().unwrap_or(x);
    let d = xw.dtype();
    let mut hot = vec![false; x.numel()];
    crate::with_dtype!(d, T => {
        let v = xw.data::<T>().ok_or(not_defined("Hardmax", d))?;
        for o in 0..outer {
            for i in 0..inner {
                let at = |j: usize| v[(o * n + j) * inner + i];
                if let Some(&p) = ix::topk_lane(n, at, 1, true).first() {
                    hot[(o * n + p) * inner + i] = true;
                }
            }
        }
    }, _ => return Err(not_defined("Hardmax", d)));
    let y = crate::with_dtype!(d, T => {
        let v: Vec<T> = hot.iter().map(|&h| T::from_f64(if h { 1.0 } else { 0.0 })).collect();
        HostTensor::make(x.shape().to_vec(), T::wrap(v))?
    }, _ => return Err(not_defined("Hardmax", d)));
    Ok(vec![if wide.is_some() {
        super::elementwise::narrow_half(y, x.dtype())?
    } else {
        y
    }])
}

/// `Pad(data, pads, constant_value?, axes?)`.
pub fn pad(ins: &mut Inputs<'_>, mode: PadMode) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    let pads = ins.req(1)?.to_i64_vec();
    let axes = ins.get(3).map(|a| a.to_i64_vec());
    let amounts = ix::pad_amounts(x.rank(), &pads, axes.as_deref())?;
    let value = ins.get(2).filter(|v| v.numel() > 0);
    if value.is_some_and(|v| v.dtype() != x.dtype()) {
        return Err(KernelError::dtype(
            "Pad: constant_value must have data's element type",
        ));
    }
    let d = x.dtype();
    Ok(vec![crate::with_dtype!(d, T => {
        let data = x.data::<T>().ok_or(not_defined("Pad", d))?;
        let c = value.and_then(|v| v.data::<T>()).and_then(|v| v.first().copied()).unwrap_or_default();
        let (dims, v) = ix::pad(data, x.shape(), &amounts, mode, c)?;
        HostTensor::make(dims, T::wrap(v))?
    }, _ => return Err(not_defined("Pad", d)))])
}

/// `Compress(input, condition)` along `axis`, or over the flattened input without one.
pub fn compress(ins: &mut Inputs<'_>, axis: Option<i64>) -> KernelResult<Vec<HostTensor>> {
    let (x, c) = (ins.req(0)?, ins.req(1)?);
    let cond: Vec<bool> = c.to_i64_vec().iter().map(|&v| v != 0).collect();
    let (dims, a) = match axis {
        Some(a) => (x.shape().to_vec(), norm_axis(a, x.rank())?),
        None => (vec![x.numel()], 0),
    };
    let keep = ix::compress_positions(&cond, dims[a])?;
    let d = x.dtype();
    Ok(vec![crate::with_dtype!(d, T => {
        let data = x.data::<T>().ok_or(not_defined("Compress", d))?;
        let (od, v) = ortho_ir::semantics::movement::gather(data, &dims, &keep, &[keep.len()], a)?;
        HostTensor::make(od, T::wrap(v))?
    }, _ => return Err(not_defined("Compress", d)))])
}

/// `Det(X)`: the determinant of each trailing square matrix, in f64, rounded once.
pub fn det(ins: &mut Inputs<'_>) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    if !x.dtype().is_float() {
        return Err(not_defined("Det", x.dtype()));
    }
    let (dims, v) = ix::det(&x.to_f64_vec(), x.shape())?;
    Ok(vec![super::from_f64_as(x.dtype(), dims, v)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_values_and_positions() {
        let x = HostTensor::from_vec(vec![2, 3], vec![1.0f32, 5.0, 3.0, 2.0, 2.0, 0.0]).expect("x");
        let k = HostTensor::scalar(2i64).reshaped(vec![1]).expect("k");
        let mut ins = Inputs::borrowed(&[Some(&x), Some(&k)]);
        let out = topk(&mut ins, -1, true).expect("topk");
        assert_eq!(out[0].as_f32().expect("f32"), &[5.0, 3.0, 2.0, 2.0]);
        assert_eq!(out[1].as_i64().expect("i64"), &[1, 2, 0, 1]);
    }

    #[test]
    fn hardmax_marks_the_first_maximum() {
        let x = HostTensor::from_vec(vec![2, 2], vec![3.0f32, 3.0, 1.0, 4.0]).expect("x");
        let mut ins = Inputs::borrowed(&[Some(&x)]);
        let out = hardmax(&mut ins, -1, false).expect("hardmax");
        assert_eq!(out[0].as_f32().expect("f32"), &[1.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn gather_nd_and_pad_through_the_kernels() {
        let x = HostTensor::from_vec(vec![2, 2], vec![1i32, 2, 3, 4]).expect("x");
        let i = HostTensor::from_vec(vec![1, 2], vec![1i64, 0]).expect("i");
        let mut ins = Inputs::borrowed(&[Some(&x), Some(&i)]);
        let out = gather_nd(&mut ins, 0).expect("gather_nd");
        assert_eq!(out[0].to_i64_vec(), vec![3]);
        let p = HostTensor::from_vec(vec![4], vec![0i64, 1, 0, 0]).expect("pads");
        let mut ins = Inputs::borrowed(&[Some(&x), Some(&p)]);
        let out = pad(&mut ins, PadMode::Edge).expect("pad");
        assert_eq!(out[0].shape(), &[2, 3]);
        assert_eq!(out[0].to_i64_vec(), vec![1, 1, 2, 3, 3, 4]);
    }
}
