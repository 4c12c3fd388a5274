//! Cast, Where and Clip.

use super::broadcast::{broadcast_shapes, fill_runs, Walk};
use crate::cpu::error::{KernelError, KernelResult};
use crate::cpu::kernel::{ExecCx, Inputs};
use crate::cpu::tensor::{numel, Elem, HostTensor};
use ortho_ir::semantics::cast::{int_like, int_reads_negative};
use ortho_ir::DType;

fn convert<S: Elem, D: Elem>(cx: &mut ExecCx<'_>, x: &HostTensor) -> KernelResult<HostTensor> {
    let src = x.data::<S>().ok_or(KernelError::dtype("dtype"))?;
    let mut out = cx.pool.alloc::<D>(src.len())?;
    // The element rules are `ortho_ir::semantics::cast`'s: integers (and bool) through i64,
    // integer → float rounded once, float sources through f64 (float → integer truncates toward
    // zero; in the cases ONNX leaves undefined, which the folder never folds, Rust's `as`
    // saturates).
    if int_like(S::DTYPE) && int_like(D::DTYPE) {
        for (o, v) in out.iter_mut().zip(src) {
            *o = D::from_i64(v.to_i64());
        }
    } else if int_like(S::DTYPE) {
        for (o, v) in out.iter_mut().zip(src) {
            let i = v.to_i64();
            *o = if int_reads_negative(S::DTYPE, i) {
                D::from_f64(v.to_f64())
            } else {
                D::from_i64(i)
            };
        }
    } else {
        for (o, v) in out.iter_mut().zip(src) {
            *o = D::from_f64(v.to_f64());
        }
    }
    HostTensor::make(x.shape().to_vec(), D::wrap(out))
}

/// Converts `x` to `to`.
pub fn cast(cx: &mut ExecCx<'_>, x: &HostTensor, to: DType) -> KernelResult<HostTensor> {
    if x.dtype() == to {
        return Ok(x.clone());
    }
    // f32 → f16/bf16 rounds once from f32 (not through f64, which would round twice).
    if let (DType::F32, DType::F16 | DType::BF16) = (x.dtype(), to) {
        return super::elementwise::narrow_half(x.clone(), to);
    }
    let from = x.dtype();
    crate::with_dtype!(from, S => crate::with_dtype!(to, D => convert::<S, D>(cx, x),
        _ => Err(KernelError::unsupported(format!("cast to {to} is not supported")))),
        _ => Err(KernelError::unsupported(format!("cast from {from} is not supported"))))
}

pub fn cast_kernel(
    cx: &mut ExecCx<'_>,
    ins: &mut Inputs<'_>,
    to: DType,
) -> KernelResult<Vec<HostTensor>> {
    Ok(vec![cast(cx, ins.req(0)?, to)?])
}

fn where_typed<T: Elem>(
    cx: &mut ExecCx<'_>,
    c: &HostTensor,
    x: &HostTensor,
    y: &HostTensor,
) -> KernelResult<HostTensor> {
    let cd = c
        .data::<bool>()
        .ok_or(KernelError::dtype("condition must be bool"))?;
    let xd = x.data::<T>().ok_or(KernelError::dtype("dtype"))?;
    let yd = y.data::<T>().ok_or(KernelError::dtype("dtype"))?;
    let shape = broadcast_shapes(&[c.shape(), x.shape(), y.shape()])?;
    let walk = Walk::new(&shape, &[c.shape(), x.shape(), y.shape()]);
    let (sc, sx, sy) = (
        walk.inner_strides[0],
        walk.inner_strides[1],
        walk.inner_strides[2],
    );
    let mut out = cx.pool.alloc::<T>(numel(&shape))?;
    fill_runs(cx, &walk, &mut out, |o, offs| {
        for (i, o) in o.iter_mut().enumerate() {
            *o = if cd[offs[0] + i * sc] {
                xd[offs[1] + i * sx]
            } else {
                yd[offs[2] + i * sy]
            };
        }
    });
    HostTensor::make(shape, T::wrap(out))
}

pub fn where_kernel(cx: &mut ExecCx<'_>, ins: &mut Inputs<'_>) -> KernelResult<Vec<HostTensor>> {
    let (c, x, y) = (ins.req(0)?, ins.req(1)?, ins.req(2)?);
    if x.dtype() != y.dtype() {
        return Err(KernelError::dtype(format!(
            "X is {} and Y is {}",
            x.dtype(),
            y.dtype()
        )));
    }
    let d = x.dtype();
    let r = crate::with_dtype!(d, T => where_typed::<T>(cx, c, x, y), _ => Err(KernelError::dtype(format!("not defined for {d}"))))?;
    Ok(vec![r])
}

fn clip_typed<T: Elem + PartialOrd>(
    cx: &mut ExecCx<'_>,
    x: &HostTensor,
    lo: Option<T>,
    hi: Option<T>,
) -> KernelResult<HostTensor> {
    super::unary::map1::<T, T>(cx, x, move |v| {
        let v = match lo {
            Some(l) if v < l => l,
            _ => v,
        };
        match hi {
            Some(h) if v > h => h,
            _ => v,
        }
    })
}

/// Clip with optional scalar min/max operands (opset ≥ 11) or attributes (older).
pub fn clip(
    cx: &mut ExecCx<'_>,
    ins: &mut Inputs<'_>,
    attr_min: Option<f32>,
    attr_max: Option<f32>,
) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    let bound = |i: usize, attr: Option<f32>| -> KernelResult<Option<f64>> {
        match ins.get(i) {
            Some(t) if t.numel() == 1 => Ok(t.to_f64_vec().first().copied()),
            Some(t) => Err(KernelError::shape(format!(
                "min/max must be scalars, got shape {:?}",
                t.shape()
            ))),
            None => Ok(attr.map(|v| v as f64)),
        }
    };
    let (lo, hi) = (bound(1, attr_min)?, bound(2, attr_max)?);
    let d = x.dtype();
    let r = match d {
        DType::F16 | DType::BF16 => super::elementwise::via_f32(&[x], |t| {
            clip_typed::<f32>(cx, t[0], lo.map(|v| v as f32), hi.map(|v| v as f32))
        }),
        _ => {
            crate::with_dtype!(d, T => clip_typed::<T>(cx, x, lo.map(T::from_f64), hi.map(T::from_f64)), _ => Err(KernelError::dtype(format!("not defined for {d}"))))
        }
    }?;
    Ok(vec![r])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::pool::BufferPool;

    #[test]
    fn cast_truncates_and_where_broadcasts() {
        let mut pool = BufferPool::new();
        let mut cx = ExecCx {
            pool: &mut pool,
            threads: 1,
        };
        let x = HostTensor::from_vec(vec![3], vec![1.7f32, -1.7, 0.0]).expect("x");
        let r = cast(&mut cx, &x, DType::I64).expect("cast");
        assert_eq!(r.as_i64().expect("i64"), &[1, -1, 0]);
        let b = cast(&mut cx, &x, DType::Bool).expect("cast");
        assert_eq!(b.data::<bool>().expect("bool"), &[true, true, false]);
        let c = HostTensor::from_vec(vec![2, 1], vec![true, false]).expect("c");
        let y = HostTensor::scalar(9.0f32);
        let r = where_kernel(
            &mut cx,
            &mut Inputs::borrowed(&[Some(&c), Some(&x), Some(&y)]),
        )
        .expect("where");
        assert_eq!(r[0].shape(), &[2, 3]);
        assert_eq!(
            r[0].as_f32().expect("f32"),
            &[1.7, -1.7, 0.0, 9.0, 9.0, 9.0]
        );
    }
}
