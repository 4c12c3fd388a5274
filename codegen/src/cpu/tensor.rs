//! Host tensors: a shape and typed, contiguous (C-order) element data.
//!
//! `TensorBuf` has one variant per supported element type; `f16` and `bf16` are stored as
//! their bit patterns in the newtypes [`F16`] and [`BF16`] so that a `Vec<u16>` always means
//! `u16`. The [`Elem`] trait maps a Rust type to its variant, which lets kernels be written
//! once, generically, and dispatched by dtype.

use crate::cpu::error::{KernelError, KernelResult, RuntimeError};
use ortho_ir::semantics::size::checked_numel;
use ortho_ir::{DType, TensorData};

/// An IEEE half-precision value, stored as its bits.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug, Hash)]
#[repr(transparent)]
pub struct F16(pub u16);

/// A bfloat16 value, stored as its bits.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug, Hash)]
#[repr(transparent)]
pub struct BF16(pub u16);

impl F16 {
    pub fn to_f32(self) -> f32 {
        ortho_ir::numeric::f16_to_f32(self.0)
    }
    /// Round to nearest, ties to even; overflow goes to infinity, NaN stays NaN.
    pub fn from_f32(x: f32) -> F16 {
        let b = x.to_bits();
        let sign = ((b >> 16) & 0x8000) as u16;
        let exp = ((b >> 23) & 0xff) as i32;
        let man = b & 0x7f_ffff;
        if exp == 0xff {
            return F16(sign | 0x7c00 | if man != 0 { 0x200 } else { 0 });
        }
        let e = exp - 127 + 15;
        if e >= 0x1f {
            return F16(sign | 0x7c00);
        }
        if e <= 0 {
            // Subnormal or zero: shift the mantissa with its implicit bit, rounding to even.
            if e < -10 {
                return F16(sign);
            }
            let m = man | 0x80_0000;
            let shift = (14 - e) as u32;
            let half = 1u32 << (shift - 1);
            let rest = m & ((1u32 << shift) - 1);
            let mut r = m >> shift;
            if rest > half || (rest == half && (r & 1) == 1) {
                r += 1;
            }
            return F16(sign | r as u16);
        }
        let mut r = ((e as u32) << 10) | (man >> 13);
        let rest = man & 0x1fff;
        if rest > 0x1000 || (rest == 0x1000 && (r & 1) == 1) {
            r += 1; // may carry into the exponent, which is the correct rounding
        }
        F16(sign | r as u16)
    }
}

impl PartialOrd for F16 {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        self.to_f32().partial_cmp(&o.to_f32())
    }
}

impl PartialOrd for BF16 {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        self.to_f32().partial_cmp(&o.to_f32())
    }
}

impl BF16 {
    pub fn to_f32(self) -> f32 {
        ortho_ir::numeric::bf16_to_f32(self.0)
    }
    pub fn from_f32(x: f32) -> BF16 {
        let b = x.to_bits();
        if x.is_nan() {
            return BF16(((b >> 16) as u16) | 0x40);
        }
        let round = 0x7fff + ((b >> 16) & 1);
        BF16((b.wrapping_add(round) >> 16) as u16)
    }
}

/// Element data of a tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorBuf {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<F16>),
    BF16(Vec<BF16>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    I16(Vec<i16>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    Bool(Vec<bool>),
}

/// Little-endian element bytes of an element type (what initializers and .npy files hold).
pub trait LeBytes: Sized {
    const SIZE: usize;
    /// Reads one element from exactly `SIZE` bytes.
    fn read_le(b: &[u8]) -> Self;
    fn write_le(self, out: &mut Vec<u8>);
}

macro_rules! le_bytes {
    ($($t:ty),*) => {$(
        impl LeBytes for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn read_le(b: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(b);
                <$t>::from_le_bytes(a)
            }
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
le_bytes!(f32, f64, i64, i32, i16, i8, u8, u16, u32, u64);

impl LeBytes for F16 {
    const SIZE: usize = 2;
    fn read_le(b: &[u8]) -> Self {
        F16(u16::read_le(b))
    }
    fn write_le(self, out: &mut Vec<u8>) {
        self.0.write_le(out)
    }
}

impl LeBytes for BF16 {
    const SIZE: usize = 2;
    fn read_le(b: &[u8]) -> Self {
        BF16(u16::read_le(b))
    }
    fn write_le(self, out: &mut Vec<u8>) {
        self.0.write_le(out)
    }
}

impl LeBytes for bool {
    const SIZE: usize = 1;
    fn read_le(b: &[u8]) -> Self {
        b[0] != 0
    }
    fn write_le(self, out: &mut Vec<u8>) {
        out.push(self as u8)
    }
}

/// Evaluates `$e` with `$v` bound to the vector inside whichever variant `$buf` is.
macro_rules! on_buf {
    ($buf:expr, $v:ident => $e:expr) => {
        match $buf {
            TensorBuf::F32($v) => $e,
            TensorBuf::F64($v) => $e,
            TensorBuf::F16($v) => $e,
            TensorBuf::BF16($v) => $e,
            TensorBuf::I64($v) => $e,
            TensorBuf::I32($v) => $e,
            TensorBuf::I16($v) => $e,
            TensorBuf::I8($v) => $e,
            TensorBuf::U8($v) => $e,
            TensorBuf::U16($v) => $e,
            TensorBuf::U32($v) => $e,
            TensorBuf::U64($v) => $e,
            TensorBuf::Bool($v) => $e,
        }
    };
}

/// The little-endian bytes of a slice.
fn le_bytes<T: Elem>(v: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * T::SIZE);
    for &x in v {
        x.write_le(&mut out);
    }
    out
}

/// The dtype of a slice's element type (lets [`on_buf!`] name it).
fn dtype_of<T: Elem>(_: &[T]) -> DType {
    T::DTYPE
}

/// A Rust element type that a [`TensorBuf`] variant holds.
pub trait Elem:
    LeBytes + Copy + Send + Sync + Default + PartialEq + std::fmt::Debug + 'static
{
    const DTYPE: DType;
    fn slice(b: &TensorBuf) -> Option<&[Self]>;
    fn vec_mut(b: &mut TensorBuf) -> Option<&mut Vec<Self>>;
    fn into_vec(b: TensorBuf) -> Result<Vec<Self>, TensorBuf>;
    fn wrap(v: Vec<Self>) -> TensorBuf;
    fn to_f64(self) -> f64;
    fn from_f64(x: f64) -> Self;
    fn to_i64(self) -> i64;
    fn from_i64(x: i64) -> Self;
}

macro_rules! elem {
    ($t:ty, $v:ident, $d:expr, |$x:ident| $tof:expr, |$y:ident| $fromf:expr, |$p:ident| $toi:expr, |$q:ident| $fromi:expr) => {
        impl Elem for $t {
            const DTYPE: DType = $d;
            fn slice(b: &TensorBuf) -> Option<&[Self]> {
                match b {
                    TensorBuf::$v(v) => Some(v),
                    _ => None,
                }
            }
            fn vec_mut(b: &mut TensorBuf) -> Option<&mut Vec<Self>> {
                match b {
                    TensorBuf::$v(v) => Some(v),
                    _ => None,
                }
            }
            fn into_vec(b: TensorBuf) -> Result<Vec<Self>, TensorBuf> {
                match b {
                    TensorBuf::$v(v) => Ok(v),
                    other => Err(other),
                }
            }
            fn wrap(v: Vec<Self>) -> TensorBuf {
                TensorBuf::$v(v)
            }
            fn to_f64(self) -> f64 {
                let $x = self;
                $tof
            }
            fn from_f64(x: f64) -> Self {
                let $y = x;
                $fromf
            }
            fn to_i64(self) -> i64 {
                let $p = self;
                $toi
            }
            fn from_i64(x: i64) -> Self {
                let $q = x;
                $fromi
            }
        }
    };
}

elem!(
    f32,
    F32,
    DType::F32,
    |x| x as f64,
    |y| y as f32,
    |p| p as i64,
    |q| q as f32
);
elem!(f64, F64, DType::F64, |x| x, |y| y, |p| p as i64, |q| q
    as f64);
elem!(
    F16,
    F16,
    DType::F16,
    |x| x.to_f32() as f64,
    |y| F16::from_f32(y as f32),
    |p| p.to_f32() as i64,
    |q| F16::from_f32(q as f32)
);
elem!(
    BF16,
    BF16,
    DType::BF16,
    |x| x.to_f32() as f64,
    |y| BF16::from_f32(y as f32),
    |p| p.to_f32() as i64,
    |q| BF16::from_f32(q as f32)
);
elem!(
    i64,
    I64,
    DType::I64,
    |x| x as f64,
    |y| y as i64,
    |p| p,
    |q| q
);
elem!(
    i32,
    I32,
    DType::I32,
    |x| x as f64,
    |y| y as i32,
    |p| p as i64,
    |q| q as i32
);
elem!(
    i16,
    I16,
    DType::I16,
    |x| x as f64,
    |y| y as i16,
    |p| p as i64,
    |q| q as i16
);
elem!(
    i8,
    I8,
    DType::I8,
    |x| x as f64,
    |y| y as i8,
    |p| p as i64,
    |q| q as i8
);
elem!(
    u8,
    U8,
    DType::U8,
    |x| x as f64,
    |y| y as u8,
    |p| p as i64,
    |q| q as u8
);
elem!(
    u16,
    U16,
    DType::U16,
    |x| x as f64,
    |y| y as u16,
    |p| p as i64,
    |q| q as u16
);
elem!(
    u32,
    U32,
    DType::U32,
    |x| x as f64,
    |y| y as u32,
    |p| p as i64,
    |q| q as u32
);
elem!(
    u64,
    U64,
    DType::U64,
    |x| x as f64,
    |y| y as u64,
    |p| p as i64,
    |q| q as u64
);
elem!(
    bool,
    Bool,
    DType::Bool,
    |x| x as u8 as f64,
    |y| y != 0.0,
    |p| p as i64,
    |q| q != 0
);

/// Runs `$body` with `$T` bound to the Rust type of `$dtype`; `$other` handles the rest.
#[macro_export]
macro_rules! with_dtype {
    ($dtype:expr, $T:ident => $body:expr, _ => $other:expr) => {
        $crate::with_dtype!(@arms $dtype, $T, $body, $other;
            F32 = f32, F64 = f64, F16 = $crate::cpu::F16, BF16 = $crate::cpu::BF16,
            I64 = i64, I32 = i32, I16 = i16, I8 = i8,
            U8 = u8, U16 = u16, U32 = u32, U64 = u64, Bool = bool)
    };
    // One match arm per element type, each binding `$T` before running the body.
    (@arms $dtype:expr, $T:ident, $body:expr, $other:expr; $($V:ident = $ty:ty),*) => {{
        use ortho_ir::DType as __D;
        match $dtype {
            $(__D::$V => {
                type $T = $ty;
                $body
            })*
            #[allow(unreachable_patterns)]
            _ => $other,
        }
    }};
}

impl TensorBuf {
    pub fn dtype(&self) -> DType {
        on_buf!(self, v => dtype_of(v))
    }

    pub fn len(&self) -> usize {
        on_buf!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Capacity in elements (for the buffer pool).
    pub fn capacity(&self) -> usize {
        on_buf!(self, v => v.capacity())
    }

    /// Whether the dtype is one the engine can hold.
    pub fn supports(dtype: DType) -> bool {
        with_dtype!(dtype, T => { let _ = std::marker::PhantomData::<T>; true }, _ => false)
    }

    /// Decodes little-endian element bytes.
    pub fn from_le_bytes(dtype: DType, b: &[u8]) -> KernelResult<TensorBuf> {
        fn rd<T: Elem>(b: &[u8]) -> KernelResult<TensorBuf> {
            if !b.len().is_multiple_of(T::SIZE) {
                return Err(KernelError::size(format!(
                    "{} bytes is not a multiple of the element size {}",
                    b.len(),
                    T::SIZE
                )));
            }
            let mut v: Vec<T> = Vec::with_capacity(b.len() / T::SIZE);
            advise_huge_pages(v.as_mut_ptr() as *mut u8, b.len());
            v.extend(b.chunks_exact(T::SIZE).map(T::read_le));
            Ok(T::wrap(v))
        }
        with_dtype!(dtype, T => rd::<T>(b), _ => Err(KernelError::dtype(format!("dtype {dtype} is not supported by the CPU engine"))))
    }

    /// Little-endian element bytes.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        on_buf!(self, v => le_bytes(v))
    }
}

/// Asks the kernel to back the 2 MiB-aligned part of a fresh, not yet written allocation of at
/// least 2 MiB with transparent huge pages (this machine's default is `madvise`). Decode streams
/// every weight once per token, and with 4 KiB pages the hardware prefetchers stop at each page:
/// `benches/gemv.rs` measured one decode step's products at 29.8 ms with 4 KiB pages against
/// 24.5 ms advised (1 thread), 23.1 against 19.0 ms (2 threads). Advice only: failure is ignored.
fn advise_huge_pages(p: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 1 << 21;
        let start = (p as usize).next_multiple_of(HUGE);
        let end = (p as usize + len) & !(HUGE - 1);
        if end > start {
            // SAFETY: [start, end) lies inside the allocation `p` points to; madvise only changes
            // how the kernel backs those pages and never their contents.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (p, len);
}

/// A tensor in host memory: shape plus contiguous row-major data.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    shape: Vec<usize>,
    buf: TensorBuf,
}

impl HostTensor {
    /// A tensor from a shape and data; the element count must match the shape.
    pub fn new(shape: Vec<usize>, buf: TensorBuf) -> Result<HostTensor, RuntimeError> {
        let n = checked_numel(&shape).map_err(|e| RuntimeError::Tensor(e.to_string()))?;
        if n != buf.len() {
            return Err(RuntimeError::Tensor(format!(
                "shape {shape:?} needs {n} elements, the data has {}",
                buf.len()
            )));
        }
        Ok(HostTensor { shape, buf })
    }

    /// Like `new`, for kernels: the error is a [`KernelError`].
    pub fn make(shape: Vec<usize>, buf: TensorBuf) -> KernelResult<HostTensor> {
        Ok(HostTensor::new(shape, buf)?)
    }

    pub fn from_vec<T: Elem>(shape: Vec<usize>, v: Vec<T>) -> Result<HostTensor, RuntimeError> {
        HostTensor::new(shape, T::wrap(v))
    }

    pub fn scalar<T: Elem>(x: T) -> HostTensor {
        HostTensor {
            shape: Vec::new(),
            buf: T::wrap(vec![x]),
        }
    }

    /// A tensor of zeros (false, 0, +0.0).
    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Result<HostTensor, RuntimeError> {
        let n = checked_numel(&shape).map_err(|e| RuntimeError::Tensor(e.to_string()))?;
        let buf = with_dtype!(dtype, T => T::wrap(vec![T::default(); n]),
            _ => return Err(RuntimeError::Tensor(format!("dtype {dtype} is not supported by the CPU engine"))));
        Ok(HostTensor { shape, buf })
    }

    pub fn dtype(&self) -> DType {
        self.buf.dtype()
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        self.buf.len()
    }
    pub fn buf(&self) -> &TensorBuf {
        &self.buf
    }
    pub fn into_parts(self) -> (Vec<usize>, TensorBuf) {
        (self.shape, self.buf)
    }
    /// The same data under another shape with the same element count.
    pub fn reshaped(self, shape: Vec<usize>) -> KernelResult<HostTensor> {
        HostTensor::make(shape, self.buf)
    }

    /// Typed elements, when the dtype is `T`.
    pub fn data<T: Elem>(&self) -> Option<&[T]> {
        T::slice(&self.buf)
    }
    pub fn data_mut<T: Elem>(&mut self) -> Option<&mut [T]> {
        T::vec_mut(&mut self.buf).map(|v| v.as_mut_slice())
    }
    pub fn as_f32(&self) -> Option<&[f32]> {
        self.data::<f32>()
    }
    pub fn as_i64(&self) -> Option<&[i64]> {
        self.data::<i64>()
    }

    /// Elements of a numeric tensor as f64 (any dtype).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        with_dtype!(self.dtype(), T => self.data::<T>().map(|s| s.iter().map(|x| x.to_f64()).collect()).unwrap_or_default(), _ => Vec::new())
    }

    /// Elements as i64 (floats truncate toward zero).
    pub fn to_i64_vec(&self) -> Vec<i64> {
        with_dtype!(self.dtype(), T => self.data::<T>().map(|s| s.iter().map(|x| x.to_i64()).collect()).unwrap_or_default(), _ => Vec::new())
    }

    /// Decodes an IR constant (inline or memory-mapped) into typed host data.
    pub fn from_tensor_data(t: &TensorData) -> KernelResult<HostTensor> {
        let shape = t
            .dims
            .iter()
            .map(|&d| {
                usize::try_from(d)
                    .map_err(|_| KernelError::shape(format!("negative dimension {d}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bytes = t.bytes().ok_or(KernelError::unsupported(
            "its data is not available (elided or string)",
        ))?;
        let buf = TensorBuf::from_le_bytes(t.dtype, bytes)?;
        HostTensor::make(shape, buf)
    }

    /// The tensor as IR constant data (owned little-endian bytes).
    pub fn to_tensor_data(&self) -> TensorData {
        TensorData::from_bytes(
            self.dtype(),
            self.shape.iter().map(|&d| d as i64).collect(),
            self.buf.to_le_bytes(),
        )
    }
}

/// The product of a shape's dims, for the shape of a tensor that exists (its element count fits,
/// being the length of its buffer). A shape computed from operands goes through
/// [`ortho_ir::semantics::size::checked_numel`] first.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Contiguous row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_round_trips_and_rounds_to_even() {
        for bits in [0u16, 1, 0x3c00, 0x7bff, 0x8001, 0x0400, 0x03ff, 0xfc00] {
            assert_eq!(F16::from_f32(F16(bits).to_f32()).0, bits, "{bits:#x}");
        }
        assert_eq!(F16::from_f32(1.0 + 1.0 / 2048.0).0, 0x3c00); // tie → even
        assert_eq!(F16::from_f32(65520.0).0, 0x7c00); // overflow → inf
        assert_eq!(BF16::from_f32(1.0).0, 0x3f80);
        assert!(BF16::from_f32(f32::NAN).to_f32().is_nan());
    }

    #[test]
    fn shape_must_match_data() {
        assert!(HostTensor::from_vec(vec![2, 2], vec![1.0f32; 3]).is_err());
        let t = HostTensor::from_vec(vec![2, 2], vec![1i64, 2, 3, 4]).expect("tensor");
        assert_eq!(t.to_f64_vec(), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(strides(&[2, 3, 4]), vec![12, 4, 1]);
    }
}
