//! Binary elementwise ops with broadcasting: arithmetic, comparisons, logic, bitwise.
//!
//! `map2` is the one generic loop; dispatch picks the element types. `f16`/`bf16` operands are
//! computed in f32 and rounded back once, as onnxruntime does.

use super::broadcast::{broadcast_shapes, fill_flat, fill_runs, Walk};
use crate::cpu::error::{KernelError, KernelResult};
use crate::cpu::kernel::{ExecCx, Inputs};
use crate::cpu::tensor::{numel, Elem, HostTensor, TensorBuf, BF16, F16};
use ortho_ir::DType;

/// `out[i] = f(a[ia], b[ib])` over the broadcast shape of `a` and `b`.
pub fn map2<A: Elem, B: Elem, O: Elem>(
    cx: &mut ExecCx<'_>,
    a: &HostTensor,
    b: &HostTensor,
    f: impl Fn(A, B) -> O + Sync + Send + Copy,
) -> KernelResult<HostTensor> {
    let ad = a.data::<A>().ok_or_else(|| {
        KernelError::dtype(format!("expected {} operand, got {}", A::DTYPE, a.dtype()))
    })?;
    let bd = b.data::<B>().ok_or_else(|| {
        KernelError::dtype(format!("expected {} operand, got {}", B::DTYPE, b.dtype()))
    })?;
    let out_shape = broadcast_shapes(&[a.shape(), b.shape()])?;
    let n = numel(&out_shape);
    let mut out = cx.pool.alloc::<O>(n)?;
    if a.shape() == out_shape.as_slice() && b.shape() == out_shape.as_slice() {
        fill_flat(cx, &mut out, |o, s| {
            for ((o, x), y) in o.iter_mut().zip(&ad[s..]).zip(&bd[s..]) {
                *o = f(*x, *y);
            }
        });
    } else {
        let walk = Walk::new(&out_shape, &[a.shape(), b.shape()]);
        let (sa, sb) = (walk.inner_strides[0], walk.inner_strides[1]);
        fill_runs(cx, &walk, &mut out, |o, offs| {
            run2(o, &ad[offs[0]..], sa, &bd[offs[1]..], sb, f)
        });
    }
    HostTensor::make(out_shape, O::wrap(out))
}

#[inline(always)]
fn run2<A: Copy, B: Copy, O>(
    o: &mut [O],
    a: &[A],
    sa: usize,
    b: &[B],
    sb: usize,
    f: impl Fn(A, B) -> O,
) {
    match (sa, sb) {
        (1, 1) => {
            for ((o, x), y) in o.iter_mut().zip(a).zip(b) {
                *o = f(*x, *y);
            }
        }
        (1, 0) => {
            let y = b[0];
            for (o, x) in o.iter_mut().zip(a) {
                *o = f(*x, y);
            }
        }
        (0, 1) => {
            let x = a[0];
            for (o, y) in o.iter_mut().zip(b) {
                *o = f(x, *y);
            }
        }
        _ => {
            for (i, o) in o.iter_mut().enumerate() {
                *o = f(a[i * sa], b[i * sb]);
            }
        }
    }
}

/// The in-place variant for f32 when operand 0 dies here and already has the result's shape.
fn map2_f32_inplace(
    cx: &mut ExecCx<'_>,
    mut a: HostTensor,
    b: &HostTensor,
    f: impl Fn(f32, f32) -> f32 + Sync + Send + Copy,
) -> KernelResult<HostTensor> {
    let bd = b
        .as_f32()
        .ok_or(KernelError::dtype("expected f32 operand"))?;
    let shape = a.shape().to_vec();
    let walk = Walk::new(&shape, &[&shape, b.shape()]);
    let sb = walk.inner_strides[1];
    let threads = cx.threads;
    let ad = a
        .data_mut::<f32>()
        .ok_or(KernelError::dtype("expected f32 operand"))?;
    let cx2 = ExecCx {
        pool: cx.pool,
        threads,
    };
    fill_runs(&cx2, &walk, ad, |o, offs| {
        let bs = &bd[offs[1]..];
        if sb == 1 {
            for (o, y) in o.iter_mut().zip(bs) {
                *o = f(*o, *y);
            }
        } else {
            let y = bs[0];
            for o in o.iter_mut() {
                *o = f(*o, y);
            }
        }
    });
    Ok(a)
}

/// Arithmetic binary ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
    /// Integer `Mod` with the divisor's sign (fmod = 0) or C `fmod` (fmod = 1).
    Mod {
        fmod: bool,
    },
    PRelu,
    BitAnd,
    BitOr,
    BitXor,
    /// `BitShift`: bits shifted out are lost (a signed left shift wraps). A shift by a negative
    /// amount or by the type's width or more gives 0, or −1 for a right shift of a negative
    /// value (the sign fills every bit), as ONNX's reference defines it since opset 28.
    ShiftLeft,
    ShiftRight,
}

/// Numeric element types with the arithmetic ONNX defines for them.
pub trait Num: Elem + PartialOrd {
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn div(self, o: Self) -> Self;
    fn pow(self, o: Self) -> Self;
    fn rem(self, o: Self, fmod: bool) -> Self;
    fn zero() -> Self;
    fn bits(self, o: Self, which: Arith) -> Self;
    /// Whether the value is NaN (Max and Min propagate it); never, for integers.
    fn is_nan(self) -> bool;
}

macro_rules! num_float {
    ($t:ty) => {
        impl Num for $t {
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                self + o
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                self - o
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                self * o
            }
            #[inline(always)]
            fn div(self, o: Self) -> Self {
                self / o
            }
            #[inline(always)]
            fn pow(self, o: Self) -> Self {
                if o == 2.0 {
                    self * self
                } else {
                    self.powf(o)
                }
            }
            fn rem(self, o: Self, fmod: bool) -> Self {
                let r = self % o;
                if fmod || r == 0.0 || (r < 0.0) == (o < 0.0) {
                    r
                } else {
                    r + o
                }
            }
            fn zero() -> Self {
                0.0
            }
            fn bits(self, _o: Self, _w: Arith) -> Self {
                Self::NAN
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
        }
    };
}
num_float!(f32);
num_float!(f64);

macro_rules! num_int {
    ($($t:ty),*) => {$(
        impl Num for $t {
            #[inline(always)]
            fn add(self, o: Self) -> Self { self.wrapping_add(o) }
            #[inline(always)]
            fn sub(self, o: Self) -> Self { self.wrapping_sub(o) }
            #[inline(always)]
            fn mul(self, o: Self) -> Self { self.wrapping_mul(o) }
            #[inline(always)]
            fn is_nan(self) -> bool { false }
            fn div(self, o: Self) -> Self { if o == 0 { 0 } else { self.wrapping_div(o) } }
            fn pow(self, o: Self) -> Self {
                #[allow(unused_comparisons)]
                if o < 0 { return if self == 1 { 1 } else { 0 }; }
                self.wrapping_pow(o as u32)
            }
            fn rem(self, o: Self, fmod: bool) -> Self {
                if o == 0 { return 0; }
                let r = self.wrapping_rem(o);
                #[allow(unused_comparisons)]
                let differ = (r < 0) != (o < 0);
                if fmod || r == 0 || !differ { r } else { r.wrapping_add(o) }
            }
            fn zero() -> Self { 0 }
            fn bits(self, o: Self, w: Arith) -> Self {
                #[allow(unused_comparisons)]
                let wide = o < 0 || (o as u64) >= <$t>::BITS as u64;
                match w {
                    Arith::BitAnd => self & o,
                    Arith::BitOr => self | o,
                    Arith::ShiftLeft => if wide { 0 } else { self << o },
                    // `>>` on signed types is arithmetic, as ONNX wants; `!0` is −1 there.
                    #[allow(unused_comparisons)]
                    Arith::ShiftRight => if !wide { self >> o } else if self < 0 { !0 } else { 0 },
                    _ => self ^ o,
                }
            }
        }
    )*};
}
num_int!(i8, i16, i32, i64, u8, u16, u32, u64);

fn arith_typed<T: Num>(
    cx: &mut ExecCx<'_>,
    op: Arith,
    a: &HostTensor,
    b: &HostTensor,
) -> KernelResult<HostTensor> {
    match op {
        Arith::Add => map2::<T, T, T>(cx, a, b, |x, y| x.add(y)),
        Arith::Sub => map2::<T, T, T>(cx, a, b, |x, y| x.sub(y)),
        Arith::Mul => map2::<T, T, T>(cx, a, b, |x, y| x.mul(y)),
        Arith::Div => map2::<T, T, T>(cx, a, b, |x, y| x.div(y)),
        Arith::Pow => map2::<T, T, T>(cx, a, b, |x, y| x.pow(y)),
        Arith::Max => map2::<T, T, T>(cx, a, b, |x, y| if x.is_nan() || x > y { x } else { y }),
        Arith::Min => map2::<T, T, T>(cx, a, b, |x, y| if x.is_nan() || x < y { x } else { y }),
        Arith::Mod { fmod } => map2::<T, T, T>(cx, a, b, move |x, y| x.rem(y, fmod)),
        Arith::PRelu => map2::<T, T, T>(cx, a, b, |x, s| if x < T::zero() { x.mul(s) } else { x }),
        Arith::BitAnd | Arith::BitOr | Arith::BitXor | Arith::ShiftLeft | Arith::ShiftRight => {
            map2::<T, T, T>(cx, a, b, move |x, y| x.bits(y, op))
        }
    }
}

/// Converts f16/bf16 tensors to f32 (other dtypes: `None`).
pub fn widen_half(t: &HostTensor) -> Option<HostTensor> {
    let v: Vec<f32> = match t.buf() {
        TensorBuf::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
        TensorBuf::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
        _ => return None,
    };
    HostTensor::from_vec(t.shape().to_vec(), v).ok()
}

/// Rounds an f32 tensor to f16/bf16; for any other `to` it stays f32.
pub fn narrow_half(t: HostTensor, to: DType) -> KernelResult<HostTensor> {
    let (shape, buf) = t.into_parts();
    let TensorBuf::F32(v) = buf else {
        return Err(KernelError::dtype("expected f32"));
    };
    let buf = match to {
        DType::F16 => TensorBuf::F16(v.iter().map(|&x| F16::from_f32(x)).collect()),
        DType::BF16 => TensorBuf::BF16(v.iter().map(|&x| BF16::from_f32(x)).collect()),
        _ => TensorBuf::F32(v),
    };
    HostTensor::make(shape, buf)
}

/// The element type two operands share; an error naming both when they differ (binary ops take
/// no implicit conversions).
pub fn same_dtype(a: &HostTensor, b: &HostTensor) -> KernelResult<DType> {
    let (da, db) = (a.dtype(), b.dtype());
    if da != db {
        return Err(KernelError::dtype(format!(
            "operand dtypes differ: {da} and {db}"
        )));
    }
    Ok(da)
}

/// Runs `f` on f32 versions of half-precision operands and rounds the result back.
pub fn via_f32(
    ts: &[&HostTensor],
    f: impl FnOnce(&[&HostTensor]) -> KernelResult<HostTensor>,
) -> KernelResult<HostTensor> {
    let dt = ts.first().map(|t| t.dtype()).unwrap_or(DType::F32);
    let wide: Vec<Option<HostTensor>> = ts.iter().map(|t| widen_half(t)).collect();
    let refs: Vec<&HostTensor> = ts
        .iter()
        .zip(&wide)
        .map(|(t, w)| w.as_ref().unwrap_or(t))
        .collect();
    let r = f(&refs)?;
    if matches!(dt, DType::F16 | DType::BF16) && r.dtype() == DType::F32 {
        narrow_half(r, dt)
    } else {
        Ok(r)
    }
}

/// The kernel body of an arithmetic op.
pub fn arith(
    cx: &mut ExecCx<'_>,
    op: Arith,
    ins: &mut Inputs<'_>,
) -> KernelResult<Vec<HostTensor>> {
    let (da, db) = (ins.req(0)?.dtype(), ins.req(1)?.dtype());
    // A dying f32 operand of the result's shape is overwritten in place.
    if da == DType::F32
        && db == DType::F32
        && matches!(op, Arith::Add | Arith::Sub | Arith::Mul | Arith::Div)
    {
        let (sa, sb) = (ins.req(0)?.shape().to_vec(), ins.req(1)?.shape().to_vec());
        let out = broadcast_shapes(&[&sa, &sb])?;
        let swap = matches!(op, Arith::Add | Arith::Mul)
            && sb == out
            && ins.is_owned(1)
            && !(sa == out && ins.is_owned(0));
        if sa == out && ins.is_owned(0) || swap {
            let (ai, bi) = if swap { (1, 0) } else { (0, 1) };
            if let Some(a) = ins.take(ai) {
                let b = ins.req(bi)?;
                let r = match op {
                    Arith::Add => map2_f32_inplace(cx, a, b, |x, y| x + y),
                    Arith::Mul => map2_f32_inplace(cx, a, b, |x, y| x * y),
                    Arith::Sub => map2_f32_inplace(cx, a, b, |x, y| x - y),
                    _ => map2_f32_inplace(cx, a, b, |x, y| x / y),
                }?;
                return Ok(vec![r]);
            }
        }
    }
    let a = ins.req(0)?;
    let b = ins.req(1)?;
    if op == Arith::Pow && da != db {
        // Pow allows an exponent of another numeric type: convert it to the base's type.
        let e = super::cast::cast(cx, b, da)?;
        return arith_dispatch(cx, op, a, &e).map(|t| vec![t]);
    }
    same_dtype(a, b)?;
    arith_dispatch(cx, op, a, b).map(|t| vec![t])
}

fn arith_dispatch(
    cx: &mut ExecCx<'_>,
    op: Arith,
    a: &HostTensor,
    b: &HostTensor,
) -> KernelResult<HostTensor> {
    let bitwise = matches!(
        op,
        Arith::BitAnd | Arith::BitOr | Arith::BitXor | Arith::ShiftLeft | Arith::ShiftRight
    );
    match a.dtype() {
        DType::F32 if !bitwise => arith_typed::<f32>(cx, op, a, b),
        DType::F64 if !bitwise => arith_typed::<f64>(cx, op, a, b),
        DType::F16 | DType::BF16 if !bitwise => {
            via_f32(&[a, b], |t| arith_typed::<f32>(cx, op, t[0], t[1]))
        }
        DType::I64 => arith_typed::<i64>(cx, op, a, b),
        DType::I32 => arith_typed::<i32>(cx, op, a, b),
        DType::I16 => arith_typed::<i16>(cx, op, a, b),
        DType::I8 => arith_typed::<i8>(cx, op, a, b),
        DType::U8 => arith_typed::<u8>(cx, op, a, b),
        DType::U16 => arith_typed::<u16>(cx, op, a, b),
        DType::U32 => arith_typed::<u32>(cx, op, a, b),
        DType::U64 => arith_typed::<u64>(cx, op, a, b),
        d => Err(KernelError::dtype(format!("{op:?} is not defined for {d}"))),
    }
}

/// Comparison ops (result bool).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

fn cmp_typed<T: Elem + PartialOrd>(
    cx: &mut ExecCx<'_>,
    op: Cmp,
    a: &HostTensor,
    b: &HostTensor,
) -> KernelResult<HostTensor> {
    match op {
        Cmp::Eq => map2::<T, T, bool>(cx, a, b, |x, y| x == y),
        Cmp::Lt => map2::<T, T, bool>(cx, a, b, |x, y| x < y),
        Cmp::Le => map2::<T, T, bool>(cx, a, b, |x, y| x <= y),
        Cmp::Gt => map2::<T, T, bool>(cx, a, b, |x, y| x > y),
        Cmp::Ge => map2::<T, T, bool>(cx, a, b, |x, y| x >= y),
    }
}

pub fn compare(
    cx: &mut ExecCx<'_>,
    op: Cmp,
    ins: &mut Inputs<'_>,
) -> KernelResult<Vec<HostTensor>> {
    let a = ins.req(0)?;
    let b = ins.req(1)?;
    let r = match same_dtype(a, b)? {
        DType::F16 | DType::BF16 => {
            let (wa, wb) = (
                widen_half(a).ok_or(KernelError::dtype("f16"))?,
                widen_half(b).ok_or(KernelError::dtype("f16"))?,
            );
            cmp_typed::<f32>(cx, op, &wa, &wb)
        }
        d => {
            crate::with_dtype!(d, T => cmp_typed::<T>(cx, op, a, b), _ => Err(KernelError::dtype(format!("comparison is not defined for {d}"))))
        }
    }?;
    Ok(vec![r])
}

/// Logical ops on bool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logic {
    And,
    Or,
    Xor,
}

pub fn logic(
    cx: &mut ExecCx<'_>,
    op: Logic,
    ins: &mut Inputs<'_>,
) -> KernelResult<Vec<HostTensor>> {
    let a = ins.req(0)?;
    let b = ins.req(1)?;
    let r = match op {
        Logic::And => map2::<bool, bool, bool>(cx, a, b, |x, y| x && y),
        Logic::Or => map2::<bool, bool, bool>(cx, a, b, |x, y| x || y),
        Logic::Xor => map2::<bool, bool, bool>(cx, a, b, |x, y| x != y),
    }?;
    Ok(vec![r])
}

/// Variadic Max/Min/Sum/Mean: folds the operands pairwise with broadcasting.
pub fn variadic(
    cx: &mut ExecCx<'_>,
    op: Arith,
    mean: bool,
    ins: &mut Inputs<'_>,
) -> KernelResult<Vec<HostTensor>> {
    let mut acc = ins.req(0)?.clone();
    for i in 1..ins.len() {
        let b = ins.req(i)?;
        acc = arith_dispatch(cx, op, &acc, b)?;
    }
    if mean {
        let n = ins.len() as f64;
        let d = acc.dtype();
        let div = crate::with_dtype!(d, T => HostTensor::scalar(T::from_f64(n)), _ => return Err(KernelError::dtype(format!("Mean is not defined for {d}"))));
        acc = arith_dispatch(cx, Arith::Div, &acc, &div)?;
    }
    Ok(vec![acc])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::pool::BufferPool;

    fn t(shape: &[usize], v: &[f32]) -> HostTensor {
        HostTensor::from_vec(shape.to_vec(), v.to_vec()).expect("tensor")
    }

    #[test]
    fn broadcasting_add_and_inplace_agree() {
        let mut pool = BufferPool::new();
        let mut cx = ExecCx {
            pool: &mut pool,
            threads: 1,
        };
        let a = t(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        let b = t(&[3], &[10., 20., 30.]);
        let r = arith(
            &mut cx,
            Arith::Add,
            &mut Inputs::borrowed(&[Some(&a), Some(&b)]),
        )
        .expect("add");
        assert_eq!(r[0].as_f32().expect("f32"), &[11., 22., 33., 14., 25., 36.]);
        let c = t(&[2, 1], &[2., 4.]);
        let mut ins = Inputs::with_capacity(2);
        ins.push_owned(a.clone());
        ins.push_ref(Some(&c));
        let r = arith(&mut cx, Arith::Div, &mut ins).expect("div");
        assert_eq!(r[0].as_f32().expect("f32"), &[0.5, 1., 1.5, 1., 1.25, 1.5]);
        let r = arith(
            &mut cx,
            Arith::Sub,
            &mut Inputs::borrowed(&[Some(&c), Some(&b)]),
        )
        .expect("sub");
        assert_eq!(r[0].shape(), &[2, 3]);
        assert_eq!(
            r[0].as_f32().expect("f32"),
            &[-8., -18., -28., -6., -16., -26.]
        );
    }

    #[test]
    fn integer_mod_follows_the_divisor_sign() {
        let mut pool = BufferPool::new();
        let mut cx = ExecCx {
            pool: &mut pool,
            threads: 1,
        };
        let a = HostTensor::from_vec(vec![4], vec![-7i64, 7, -7, 7]).expect("a");
        let b = HostTensor::from_vec(vec![4], vec![3i64, -3, -3, 3]).expect("b");
        let r = arith(
            &mut cx,
            Arith::Mod { fmod: false },
            &mut Inputs::borrowed(&[Some(&a), Some(&b)]),
        )
        .expect("mod");
        assert_eq!(r[0].as_i64().expect("i64"), &[2, -2, -1, 1]);
        let r = compare(
            &mut cx,
            Cmp::Gt,
            &mut Inputs::borrowed(&[Some(&a), Some(&b)]),
        )
        .expect("gt");
        assert_eq!(
            r[0].data::<bool>().expect("bool"),
            &[false, true, false, true]
        );
    }
}
