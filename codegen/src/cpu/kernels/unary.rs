//! Unary elementwise ops: math functions and activations.

use super::broadcast::fill_flat;
use super::elementwise::via_f32;
use crate::cpu::error::{KernelError, KernelResult};
use crate::cpu::kernel::{ExecCx, Inputs};
use crate::cpu::tensor::{Elem, HostTensor};
use ortho_ir::DType;

/// The op list lives in the IR, shared with the fused elementwise program.
pub use ortho_ir::unary::Unary;

/// Float element types with the math the unary ops need.
pub trait Float:
    Elem
    + PartialOrd
    + std::ops::Neg<Output = Self>
    + std::ops::Add<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Sub<Output = Self>
{
    fn c(x: f64) -> Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn tanh(self) -> Self;
    fn abs(self) -> Self;
    fn is_nan(self) -> bool;
    fn sigmoid(self) -> Self;
    fn mathf(self, op: Unary) -> Self;
}

macro_rules! float_impl {
    ($t:ty, $sig:expr) => {
        impl Float for $t {
            #[inline(always)]
            fn c(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            #[inline(always)]
            fn sigmoid(self) -> Self {
                $sig(self)
            }
            fn mathf(self, op: Unary) -> Self {
                match op {
                    Unary::Sin => self.sin(),
                    Unary::Cos => self.cos(),
                    Unary::Tan => self.tan(),
                    Unary::Asin => self.asin(),
                    Unary::Acos => self.acos(),
                    Unary::Atan => self.atan(),
                    Unary::Sinh => self.sinh(),
                    Unary::Cosh => self.cosh(),
                    Unary::Asinh => self.asinh(),
                    Unary::Acosh => self.acosh(),
                    Unary::Atanh => self.atanh(),
                    Unary::Floor => self.floor(),
                    Unary::Ceil => self.ceil(),
                    Unary::Round => self.round_ties_even(),
                    Unary::Erf => erf(self as f64) as $t,
                    _ => <$t>::NAN,
                }
            }
        }
    };
}
// f32 uses the vectorizable exponential (≤ 2 ulp); f64 the exact one.
float_impl!(f32, super::mathf::sigmoid_f32);
float_impl!(f64, |v: f64| 1.0 / (1.0 + (-v).exp()));

/// The error function in f64: its Maclaurin series for |x| < 2.5 (terms fall fast, the
/// cancellation costs ~1e-14), the continued fraction of erfc above.
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    let r = if a < 2.5 {
        let x2 = a * a;
        let mut term = a;
        let mut sum = a;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -x2 / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else if a > 6.0 {
        1.0
    } else {
        // erfc(a) = exp(-a²)/√π · 1/(a + (1/2)/(a + 1/(a + (3/2)/(a + 2/(a + …)))))
        let mut f = a;
        for k in (1..60).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * f)
    };
    if x < 0.0 {
        -r
    } else {
        r
    }
}

/// `out[i] = f(x[i])`, parallel when large; reuses the operand's buffer when it dies here.
pub fn map1<A: Elem, O: Elem>(
    cx: &mut ExecCx<'_>,
    x: &HostTensor,
    f: impl Fn(A) -> O + Sync + Send + Copy,
) -> KernelResult<HostTensor> {
    let xd = x.data::<A>().ok_or_else(|| {
        KernelError::dtype(format!("expected {} operand, got {}", A::DTYPE, x.dtype()))
    })?;
    let mut out = cx.pool.alloc::<O>(xd.len())?;
    fill_flat(cx, &mut out, |o, s| {
        for (o, v) in o.iter_mut().zip(&xd[s..]) {
            *o = f(*v);
        }
    });
    HostTensor::make(x.shape().to_vec(), O::wrap(out))
}

fn map1_inplace<T: Elem>(
    cx: &mut ExecCx<'_>,
    mut x: HostTensor,
    f: impl Fn(T) -> T + Sync + Send + Copy,
) -> KernelResult<HostTensor> {
    let threads = cx.threads;
    let cx2 = ExecCx {
        pool: cx.pool,
        threads,
    };
    let d = x.data_mut::<T>().ok_or(KernelError::dtype("dtype"))?;
    fill_flat(&cx2, d, |o, _| {
        for v in o.iter_mut() {
            *v = f(*v);
        }
    });
    Ok(x)
}

fn unary_float<T: Float>(
    cx: &mut ExecCx<'_>,
    op: Unary,
    ins: &mut Inputs<'_>,
) -> KernelResult<HostTensor> {
    macro_rules! go {
        (|$v:ident| $e:expr) => {{
            let f = move |$v: T| -> T { $e };
            match ins.take(0) {
                Some(x) => map1_inplace::<T>(cx, x, f),
                None => map1::<T, T>(cx, ins.req(0)?, f),
            }
        }};
    }
    let one = T::c(1.0);
    let zero = T::c(0.0);
    match op {
        Unary::Neg => go!(|v| -v),
        Unary::Abs => go!(|v| v.abs()),
        Unary::Sqrt => go!(|v| v.sqrt()),
        Unary::Reciprocal => go!(|v| one / v),
        Unary::Exp => go!(|v| v.exp()),
        Unary::Log => go!(|v| v.ln()),
        Unary::Tanh => go!(|v| v.tanh()),
        Unary::Sigmoid => go!(|v| v.sigmoid()),
        // NaN passes through (a comparison with NaN is false).
        Unary::Relu => go!(|v| if v > zero || v.is_nan() { v } else { zero }),
        Unary::Sign => go!(|v| if v > zero {
            one
        } else if v < zero {
            -one
        } else {
            v
        }),
        Unary::Softplus => go!(|v| if v > T::c(20.0) {
            v
        } else {
            (v.exp() + one).ln()
        }),
        Unary::Softsign => go!(|v| v / (one + v.abs())),
        Unary::HardSwish => go!(|v| {
            let h = v * T::c(1.0 / 6.0) + T::c(0.5);
            let h = if h < zero {
                zero
            } else if h > one {
                one
            } else {
                h
            };
            v * h
        }),
        Unary::Mish => go!(|v| {
            let sp = if v > T::c(20.0) {
                v
            } else {
                (v.exp() + one).ln()
            };
            v * sp.tanh()
        }),
        Unary::Gelu { tanh: false } => go!(|v| T::c(0.5)
            * v
            * (one + T::c(erf((v * T::c(std::f64::consts::FRAC_1_SQRT_2)).to_f64())))),
        Unary::Gelu { tanh: true } => go!(|v| {
            let inner =
                T::c((2.0 / std::f64::consts::PI).sqrt()) * (v + T::c(0.044715) * v * v * v);
            T::c(0.5) * v * (one + inner.tanh())
        }),
        Unary::LeakyRelu(a) => {
            let a = T::c(a as f64);
            go!(|v| if v < zero { v * a } else { v })
        }
        Unary::Elu(a) => {
            let a = T::c(a as f64);
            go!(|v| if v < zero { a * (v.exp() - one) } else { v })
        }
        Unary::Celu(a) => {
            let a = T::c(a as f64);
            go!(|v| {
                let e = a * ((v / a).exp() - one);
                (if v > zero { v } else { zero }) + if e < zero { e } else { zero }
            })
        }
        Unary::Selu(a, g) => {
            let (a, g) = (T::c(a as f64), T::c(g as f64));
            go!(|v| if v <= zero {
                g * (a * v.exp() - a)
            } else {
                g * v
            })
        }
        Unary::HardSigmoid(a, b) => {
            let (a, b) = (T::c(a as f64), T::c(b as f64));
            go!(|v| {
                let h = a * v + b;
                if h < zero {
                    zero
                } else if h > one {
                    one
                } else {
                    h
                }
            })
        }
        Unary::ThresholdedRelu(a) => {
            let a = T::c(a as f64);
            go!(|v| if v > a { v } else { zero })
        }
        other => go!(|v| v.mathf(other)),
    }
}

fn unary_int<T: Elem + PartialOrd>(
    cx: &mut ExecCx<'_>,
    op: Unary,
    x: &HostTensor,
    neg: impl Fn(T) -> T + Sync + Send + Copy,
) -> KernelResult<HostTensor> {
    let z = T::default();
    let one = T::from_i64(1);
    match op {
        Unary::Neg => map1::<T, T>(cx, x, neg),
        Unary::Abs => map1::<T, T>(cx, x, move |v| if v < z { neg(v) } else { v }),
        Unary::Relu => map1::<T, T>(cx, x, move |v| if v < z { z } else { v }),
        Unary::Sign => map1::<T, T>(cx, x, move |v| {
            if v > z {
                one
            } else if v < z {
                neg(one)
            } else {
                z
            }
        }),
        Unary::Floor | Unary::Ceil | Unary::Round => map1::<T, T>(cx, x, |v| v),
        _ => Err(KernelError::dtype(format!(
            "{op:?} is not defined for {}",
            x.dtype()
        ))),
    }
}

/// The kernel body of a unary op.
pub fn unary(
    cx: &mut ExecCx<'_>,
    op: Unary,
    ins: &mut Inputs<'_>,
) -> KernelResult<Vec<HostTensor>> {
    let d = ins.req(0)?.dtype();
    if d == DType::F32 && op == Unary::Sigmoid {
        // The hot activation of SwiGLU: a dedicated vectorized loop.
        let mut t = match ins.take(0) {
            Some(t) => t,
            None => {
                let x = ins.req(0)?;
                let mut v = cx.pool.alloc::<f32>(x.numel())?;
                v.copy_from_slice(x.as_f32().ok_or(KernelError::dtype("dtype"))?);
                HostTensor::from_vec(x.shape().to_vec(), v)?
            }
        };
        let threads = cx.threads;
        let cx2 = ExecCx {
            pool: cx.pool,
            threads,
        };
        fill_flat(
            &cx2,
            t.data_mut::<f32>().ok_or(KernelError::dtype("dtype"))?,
            |o, _| super::mathf::sigmoid_inplace(o),
        );
        return Ok(vec![t]);
    }
    let r = match d {
        DType::F32 => unary_float::<f32>(cx, op, ins),
        DType::F64 => unary_float::<f64>(cx, op, ins),
        DType::F16 | DType::BF16 => {
            let x = ins.req(0)?;
            via_f32(&[x], |t| {
                let mut i = Inputs::borrowed(&[Some(t[0])]);
                unary_float::<f32>(cx, op, &mut i)
            })
        }
        DType::I64 => unary_int::<i64>(cx, op, ins.req(0)?, |v| v.wrapping_neg()),
        DType::I32 => unary_int::<i32>(cx, op, ins.req(0)?, |v| v.wrapping_neg()),
        DType::I16 => unary_int::<i16>(cx, op, ins.req(0)?, |v| v.wrapping_neg()),
        DType::I8 => unary_int::<i8>(cx, op, ins.req(0)?, |v| v.wrapping_neg()),
        DType::U8 | DType::U16 | DType::U32 | DType::U64
            if matches!(
                op,
                Unary::Abs | Unary::Relu | Unary::Floor | Unary::Ceil | Unary::Round
            ) =>
        {
            Ok(ins.req(0)?.clone())
        }
        _ => Err(KernelError::dtype(format!("{op:?} is not defined for {d}"))),
    }?;
    Ok(vec![r])
}

/// `IsNaN` and `IsInf`.
pub fn classify(
    cx: &mut ExecCx<'_>,
    ins: &mut Inputs<'_>,
    nan: bool,
    neg: bool,
    pos: bool,
) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    let wide = super::elementwise::widen_half(x);
    let x = wide.as_ref().unwrap_or(x);
    let test = move |v: f64| {
        if nan {
            v.is_nan()
        } else {
            v.is_infinite() && ((v > 0.0 && pos) || (v < 0.0 && neg))
        }
    };
    let r = match x.dtype() {
        DType::F32 => map1::<f32, bool>(cx, x, move |v| test(v as f64)),
        DType::F64 => map1::<f64, bool>(cx, x, test),
        d => Err(KernelError::dtype(format!("not defined for {d}"))),
    }?;
    Ok(vec![r])
}

/// `Not` (bool) and `BitwiseNot` (integers).
pub fn not(cx: &mut ExecCx<'_>, ins: &mut Inputs<'_>) -> KernelResult<Vec<HostTensor>> {
    let x = ins.req(0)?;
    let r = match x.dtype() {
        DType::Bool => map1::<bool, bool>(cx, x, |v| !v),
        DType::I64 => map1::<i64, i64>(cx, x, |v| !v),
        DType::I32 => map1::<i32, i32>(cx, x, |v| !v),
        DType::I16 => map1::<i16, i16>(cx, x, |v| !v),
        DType::I8 => map1::<i8, i8>(cx, x, |v| !v),
        DType::U8 => map1::<u8, u8>(cx, x, |v| !v),
        DType::U16 => map1::<u16, u16>(cx, x, |v| !v),
        DType::U32 => map1::<u32, u32>(cx, x, |v| !v),
        DType::U64 => map1::<u64, u64>(cx, x, |v| !v),
        d => Err(KernelError::dtype(format!("not defined for {d}"))),
    }?;
    Ok(vec![r])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::pool::BufferPool;

    #[test]
    fn erf_matches_known_values() {
        for (x, e) in [
            (0.0, 0.0),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (2.0, 0.9953222650189527),
            (3.0, 0.9999779095030014),
            (-1.5, -0.9661051464753108),
        ] {
            assert!((erf(x) - e).abs() < 1e-13, "erf({x}) = {} vs {e}", erf(x));
        }
    }

    #[test]
    fn sigmoid_and_sqrt_by_hand() {
        let mut pool = BufferPool::new();
        let mut cx = ExecCx {
            pool: &mut pool,
            threads: 1,
        };
        let x = HostTensor::from_vec(vec![3], vec![0.0f32, 4.0, -100.0]).expect("x");
        let r =
            unary(&mut cx, Unary::Sigmoid, &mut Inputs::borrowed(&[Some(&x)])).expect("sigmoid");
        let v = r[0].as_f32().expect("f32");
        assert_eq!(v[0], 0.5);
        assert!((v[1] - 0.98201376).abs() < 1e-7);
        assert_eq!(v[2], 0.0);
        let r = unary(&mut cx, Unary::Sqrt, &mut Inputs::borrowed(&[Some(&x)])).expect("sqrt");
        assert_eq!(r[0].as_f32().expect("f32")[1], 2.0);
        let i = HostTensor::from_vec(vec![2], vec![-3i64, 4]).expect("i");
        let r = unary(&mut cx, Unary::Abs, &mut Inputs::borrowed(&[Some(&i)])).expect("abs");
        assert_eq!(r[0].as_i64().expect("i64"), &[3, 4]);
    }
}
