//! MatMul (numpy semantics: 1-D promotion, broadcast batch dims) and Gemm, through the `gemm`
//! crate for f32/f64. Strided operands are passed as strides, never copied: a transposed
//! weight is just `rs = 1, cs = K`.

use super::broadcast::{broadcast_shapes, Walk};
use crate::cpu::error::{KernelError, KernelResult};
use crate::cpu::handoff;
use crate::cpu::kernel::{ExecCx, Inputs, Kernel};
use crate::cpu::tensor::{numel, Elem, HostTensor};
use ortho_ir::DType;
use rayon::prelude::*;

/// A strided read-only matrix operand.
#[derive(Clone, Copy)]
pub struct Mat<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

/// Element types `gemm` multiplies.
pub trait GemmElem: Elem {
    const ZERO: Self;
    const ONE: Self;
    /// A one-row product through a dedicated kernel (`super::gemv`), when this type has one and
    /// the operands fit it; returns whether it ran.
    #[allow(clippy::too_many_arguments)]
    fn gemv(
        _n: usize,
        _k: usize,
        _a: Mat<'_, Self>,
        _b: Mat<'_, Self>,
        _c: &mut [Self],
        _accumulate: bool,
        _alpha: Self,
        _beta: Self,
        _threads: usize,
    ) -> bool {
        false
    }
}
impl GemmElem for f32 {
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
    fn gemv(
        n: usize,
        k: usize,
        a: Mat<'_, f32>,
        b: Mat<'_, f32>,
        c: &mut [f32],
        accumulate: bool,
        alpha: f32,
        beta: f32,
        threads: usize,
    ) -> bool {
        if !super::gemv::applies(1, &b) {
            return false;
        }
        super::gemv::gemv_f32(n, k, a.data, a.cs, b, c, accumulate, alpha, beta, threads);
        true
    }
}
impl GemmElem for f64 {
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
}

/// `c = alpha·c + beta·a·b` for an `m×k` `a`, a `k×n` `b` and a row-major `m×n` `c` (row
/// stride `ldc`); `alpha` is only read when `accumulate`. Runs on `threads` threads when the
/// product is large enough to gain from it.
#[allow(clippy::too_many_arguments)]
pub fn gemm_into<T: GemmElem>(
    m: usize,
    n: usize,
    k: usize,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    c: &mut [T],
    ldc: usize,
    accumulate: bool,
    alpha: T,
    beta: T,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                c[r * ldc..r * ldc + n].fill(T::ZERO);
            }
        }
        return;
    }
    // The unsafe call below reads and writes through raw pointers: check every extreme index.
    let last = |rs: usize, cs: usize, rows: usize, cols: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(
        last(a.rs, a.cs, m, k) < a.data.len(),
        "gemm: lhs out of bounds"
    );
    assert!(
        last(b.rs, b.cs, k, n) < b.data.len(),
        "gemm: rhs out of bounds"
    );
    assert!(
        last(ldc, 1, m, n) < c.len() && ldc >= n,
        "gemm: dst out of bounds"
    );
    // A decode step's products stream the weights from memory: the dedicated kernel reads them as
    // long contiguous runs on every thread (see `gemv.rs`); `gemm`'s one-row path does not.
    if m == 1 && T::gemv(n, k, a, b, &mut c[..n], accumulate, alpha, beta, threads) {
        return;
    }
    if m == 1 && threads > 1 && n >= 2 * GEMV_SPLIT_COLUMNS && n * k * T::SIZE >= GEMV_SPLIT_BYTES {
        gemv_split_columns(n, k, a, b, &mut c[..n], accumulate, alpha, beta, threads);
        return;
    }
    let flops = m as u64 * n as u64 * k as u64;
    let par = if threads > 1 && flops >= 1 << 18 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every accessed element inside the slices; `c` is borrowed
    // mutably and cannot alias `a` or `b`; T is f32 or f64, which `gemm` supports.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            alpha,
            beta,
            false,
            false,
            false,
            par,
        );
    }
}

/// One-row products (decode: one token times a weight) whose weight is at least this many bytes
/// are split over the threads by output columns. `gemm`'s matrix-vector path runs on one thread
/// whatever parallelism it is given, and a decode step is bound by streaming the weights from
/// memory, which one core cannot do at the machine's full bandwidth; below this size the fork and
/// join cost about what the second thread saves.
const GEMV_SPLIT_BYTES: usize = 1 << 20;

/// Columns per piece of a split one-row product are a multiple of this (four AVX-512 vectors of
/// f32), so every piece but the last has no vector tail and each output is computed by the same
/// instructions as in the unsplit product.
const GEMV_SPLIT_COLUMNS: usize = 64;

/// `c = alpha·c + beta·a·b` for a one-row `a` (`1×k`), split by output columns into one piece
/// per thread; each piece is an independent single-threaded `gemm` call on a column slice of `b`.
#[allow(clippy::too_many_arguments)]
fn gemv_split_columns<T: GemmElem>(
    n: usize,
    k: usize,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    c: &mut [T],
    accumulate: bool,
    alpha: T,
    beta: T,
    threads: usize,
) {
    let per = n.div_ceil(threads).div_ceil(GEMV_SPLIT_COLUMNS) * GEMV_SPLIT_COLUMNS;
    c.par_chunks_mut(per).enumerate().for_each(|(i, ci)| {
        let j0 = i * per;
        let bi = Mat {
            data: &b.data[j0 * b.cs..],
            rs: b.rs,
            cs: b.cs,
        };
        let w = ci.len();
        gemm_into(1, w, k, a, bi, ci, w, accumulate, alpha, beta, 1);
    });
}

/// The shapes of a MatMul after 1-D promotion: (batch of a, batch of b, m, k, n, output shape).
struct MmShape {
    a_batch: Vec<usize>,
    b_batch: Vec<usize>,
    out_batch: Vec<usize>,
    m: usize,
    k: usize,
    n: usize,
    out: Vec<usize>,
}

fn mm_shape(a: &[usize], b: &[usize]) -> KernelResult<MmShape> {
    if a.is_empty() || b.is_empty() {
        return Err(KernelError::shape("MatMul operands must have rank ≥ 1"));
    }
    let (a_batch, m, ka) = if a.len() == 1 {
        (vec![], 1, a[0])
    } else {
        (a[..a.len() - 2].to_vec(), a[a.len() - 2], a[a.len() - 1])
    };
    let (b_batch, kb, n) = if b.len() == 1 {
        (vec![], b[0], 1)
    } else {
        (b[..b.len() - 2].to_vec(), b[b.len() - 2], b[b.len() - 1])
    };
    if ka != kb {
        return Err(KernelError::shape(format!(
            "MatMul shapes {a:?} and {b:?} do not match (K = {ka} vs {kb})"
        )));
    }
    let out_batch = broadcast_shapes(&[&a_batch, &b_batch])?;
    let mut out = out_batch.clone();
    if a.len() > 1 {
        out.push(m);
    }
    if b.len() > 1 {
        out.push(n);
    }
    Ok(MmShape {
        a_batch,
        b_batch,
        out_batch,
        m,
        k: ka,
        n,
        out,
    })
}

fn matmul_gemm<T: GemmElem>(
    cx: &mut ExecCx<'_>,
    a: &HostTensor,
    b: &HostTensor,
    b_trans: bool,
) -> KernelResult<HostTensor> {
    let bshape: Vec<usize> = if b_trans {
        b.shape().iter().rev().copied().collect()
    } else {
        b.shape().to_vec()
    };
    let s = mm_shape(a.shape(), &bshape)?;
    let (ad, bd) = (
        a.data::<T>().ok_or(KernelError::dtype("dtype"))?,
        b.data::<T>().ok_or(KernelError::dtype("dtype"))?,
    );
    let (m, k, n) = (s.m, s.k, s.n);
    let (brs, bcs) = if b_trans { (1, k) } else { (n, 1) };
    let mut out = cx.pool.alloc::<T>(numel(&s.out))?;
    let threads = cx.threads;
    if numel(&s.b_batch) == 1 {
        // One GEMM with the batch folded into the rows of a.
        let rows = numel(&s.a_batch) * m;
        gemm_into(
            rows,
            n,
            k,
            Mat {
                data: ad,
                rs: k,
                cs: 1,
            },
            Mat {
                data: bd,
                rs: brs,
                cs: bcs,
            },
            &mut out,
            n,
            false,
            T::ZERO,
            T::ONE,
            threads,
        );
    } else {
        let walk = Walk::new(&s.out_batch, &[&s.a_batch, &s.b_batch]);
        let mut pairs = Vec::with_capacity(numel(&s.out_batch));
        walk.for_runs(0, walk.outer, |_, offs| {
            for i in 0..walk.inner {
                pairs.push((
                    offs[0] + i * walk.inner_strides[0],
                    offs[1] + i * walk.inner_strides[1],
                ));
            }
        });
        let one = |c: &mut [T], &(ai, bi): &(usize, usize), th: usize| {
            let am = Mat {
                data: &ad[ai * m * k..(ai + 1) * m * k],
                rs: k,
                cs: 1,
            };
            let bm = Mat {
                data: &bd[bi * k * n..(bi + 1) * k * n],
                rs: brs,
                cs: bcs,
            };
            gemm_into(m, n, k, am, bm, c, n, false, T::ZERO, T::ONE, th);
        };
        if threads > 1 && pairs.len() > 1 {
            // Decode's attention products (one per head, a few µs each) split through the
            // spinning handoff: waking a rayon worker costs more than such a product.
            let parts = threads.min(handoff::parallelism()).min(pairs.len());
            let per = pairs.len().div_ceil(parts);
            let op = handoff::SyncPtr::new(&mut out);
            let piece = |i: usize| {
                for j in i * per..((i + 1) * per).min(pairs.len()) {
                    // SAFETY: product j writes only `out[j·m·n .. (j+1)·m·n]`, and each j
                    // belongs to exactly one piece.
                    let c = unsafe { op.slice(j * m * n, m * n) };
                    one(c, &pairs[j], 1);
                }
            };
            if parts <= 1 || !handoff::run(parts, &piece) {
                out.par_chunks_mut(m * n)
                    .zip(pairs.par_iter())
                    .for_each(|(c, p)| one(c, p, 1));
            }
        } else {
            for (c, p) in out.chunks_mut(m * n).zip(&pairs) {
                one(c, p, threads);
            }
        }
    }
    HostTensor::make(s.out, T::wrap(out))
}

fn matmul_int<T: Elem>(a: &HostTensor, b: &HostTensor) -> KernelResult<HostTensor> {
    let s = mm_shape(a.shape(), b.shape())?;
    let (ad, bd) = (
        a.data::<T>().ok_or(KernelError::dtype("dtype"))?,
        b.data::<T>().ok_or(KernelError::dtype("dtype"))?,
    );
    let (m, k, n) = (s.m, s.k, s.n);
    let walk = Walk::new(&s.out_batch, &[&s.a_batch, &s.b_batch]);
    let mut out = Vec::with_capacity(numel(&s.out));
    walk.for_runs(0, walk.outer, |_, offs| {
        for i in 0..walk.inner {
            let (ai, bi) = (
                offs[0] + i * walk.inner_strides[0],
                offs[1] + i * walk.inner_strides[1],
            );
            for r in 0..m {
                for c in 0..n {
                    let mut acc: i64 = 0;
                    for x in 0..k {
                        acc = acc.wrapping_add(
                            ad[ai * m * k + r * k + x]
                                .to_i64()
                                .wrapping_mul(bd[bi * k * n + x * n + c].to_i64()),
                        );
                    }
                    out.push(T::from_i64(acc));
                }
            }
        }
    });
    HostTensor::make(s.out, T::wrap(out))
}

pub fn matmul(
    cx: &mut ExecCx<'_>,
    ins: &mut Inputs<'_>,
    b_trans: bool,
) -> KernelResult<Vec<HostTensor>> {
    let (a, b) = (ins.req(0)?, ins.req(1)?);
    let r = match super::elementwise::same_dtype(a, b)? {
        DType::F32 => matmul_gemm::<f32>(cx, a, b, b_trans),
        DType::F64 => matmul_gemm::<f64>(cx, a, b, b_trans),
        DType::F16 | DType::BF16 => {
            super::elementwise::via_f32(&[a, b], |t| matmul_gemm::<f32>(cx, t[0], t[1], b_trans))
        }
        d if b_trans => Err(KernelError::dtype(format!(
            "transposed MatMul is not defined for {d}"
        ))),
        DType::I64 => matmul_int::<i64>(a, b),
        DType::I32 => matmul_int::<i32>(a, b),
        DType::U32 => matmul_int::<u32>(a, b),
        DType::U64 => matmul_int::<u64>(a, b),
        DType::I8 => matmul_int::<i8>(a, b),
        DType::U8 => matmul_int::<u8>(a, b),
        d => Err(KernelError::dtype(format!("MatMul is not defined for {d}"))),
    }?;
    Ok(vec![r])
}

/// `MatMul(x, Wᵀ)` where operand 1 is the untransposed 2-D `W` (see the plan's rewrite).
pub fn matmul_transposed_b_kernel() -> Box<dyn Kernel> {
    Box::new(|cx: &mut ExecCx<'_>, ins: &mut Inputs<'_>| matmul(cx, ins, true))
}

fn gemm_op_typed<T: GemmElem>(
    cx: &mut ExecCx<'_>,
    ins: &Inputs<'_>,
    alpha: f32,
    beta: f32,
    ta: bool,
    tb: bool,
) -> KernelResult<HostTensor> {
    let (a, b) = (ins.req(0)?, ins.req(1)?);
    if a.rank() != 2 || b.rank() != 2 {
        return Err(KernelError::shape("Gemm operands must be 2-D"));
    }
    let (m, k) = if ta {
        (a.shape()[1], a.shape()[0])
    } else {
        (a.shape()[0], a.shape()[1])
    };
    let (kb, n) = if tb {
        (b.shape()[1], b.shape()[0])
    } else {
        (b.shape()[0], b.shape()[1])
    };
    if k != kb {
        return Err(KernelError::shape(format!(
            "Gemm shapes {:?} and {:?} do not match",
            a.shape(),
            b.shape()
        )));
    }
    let am = Mat {
        data: a.data::<T>().ok_or(KernelError::dtype("dtype"))?,
        rs: if ta { 1 } else { k },
        cs: if ta { m } else { 1 },
    };
    let bm = Mat {
        data: b.data::<T>().ok_or(KernelError::dtype("dtype"))?,
        rs: if tb { 1 } else { n },
        cs: if tb { k } else { 1 },
    };
    let (mut out, acc) = match ins.get(2) {
        Some(c) if beta != 0.0 => {
            let mut v = super::shape::expand_to::<T>(cx, c, &[m, n])?;
            let bt = T::from_f64(beta as f64);
            if beta != 1.0 {
                for x in v.iter_mut() {
                    *x = T::from_f64(x.to_f64() * bt.to_f64());
                }
            }
            (v, true)
        }
        _ => (cx.pool.alloc::<T>(m * n)?, false),
    };
    gemm_into(
        m,
        n,
        k,
        am,
        bm,
        &mut out,
        n,
        acc,
        T::ONE,
        T::from_f64(alpha as f64),
        cx.threads,
    );
    HostTensor::make(vec![m, n], T::wrap(out))
}

/// ONNX Gemm: `alpha·A'·B' + beta·C`.
pub fn gemm_op(
    cx: &mut ExecCx<'_>,
    ins: &mut Inputs<'_>,
    alpha: f32,
    beta: f32,
    ta: bool,
    tb: bool,
) -> KernelResult<Vec<HostTensor>> {
    let r = match ins.req(0)?.dtype() {
        DType::F32 => gemm_op_typed::<f32>(cx, ins, alpha, beta, ta, tb),
        DType::F64 => gemm_op_typed::<f64>(cx, ins, alpha, beta, ta, tb),
        d => Err(KernelError::dtype(format!("Gemm is not defined for {d}"))),
    }?;
    Ok(vec![r])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::pool::BufferPool;

    fn t(shape: &[usize], v: Vec<f32>) -> HostTensor {
        HostTensor::from_vec(shape.to_vec(), v).expect("t")
    }

    /// A one-row product over 2 threads (split by columns) equals the 1-thread product bit for
    /// bit, for a row-major and a transposed weight, with a column count that leaves a tail, and
    /// both equal an f64 reference.
    #[test]
    fn one_row_product_split_over_threads_equals_one_thread() {
        let (k, n) = (301usize, 1037usize);
        assert!(n * k * 4 >= GEMV_SPLIT_BYTES);
        // A fixed linear congruential sequence in [-1, 1): no random-number crate needed.
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32) / (1u64 << 23) as f32 - 1.0
        };
        let a: Vec<f32> = (0..k).map(|_| next()).collect();
        let w: Vec<f32> = (0..k * n).map(|_| next()).collect();
        let am = Mat {
            data: &a,
            rs: k,
            cs: 1,
        };
        let reference: Vec<f64> = (0..n)
            .map(|j| (0..k).map(|i| a[i] as f64 * w[i * n + j] as f64).sum())
            .collect();
        // Row-major `k×n` weight, and the same values stored transposed (`n×k`).
        let wt: Vec<f32> = (0..n * k).map(|x| w[(x % k) * n + x / k]).collect();
        for b in [
            Mat {
                data: &w,
                rs: n,
                cs: 1,
            },
            Mat {
                data: &wt,
                rs: 1,
                cs: k,
            },
        ] {
            for accumulate in [false, true] {
                let run = |threads: usize| {
                    let mut c = vec![0.5f32; n];
                    gemm_into(1, n, k, am, b, &mut c, n, accumulate, 1.0, 1.0, threads);
                    c
                };
                let (one, two) = (run(1), run(2));
                assert_eq!(one, two, "accumulate {accumulate}, b.rs {}", b.rs);
                let base = if accumulate { 0.5 } else { 0.0 };
                for (j, (&x, &r)) in two.iter().zip(&reference).enumerate() {
                    assert!(
                        (x as f64 - base - r).abs() <= 1e-4,
                        "column {j}: {x} vs {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn matmul_by_hand_batched_and_transposed() {
        let mut pool = BufferPool::new();
        let mut cx = ExecCx {
            pool: &mut pool,
            threads: 1,
        };
        let a = t(&[2, 3], vec![1., 2., 3., 4., 5., 6.]);
        let b = t(&[3, 2], vec![7., 8., 9., 10., 11., 12.]);
        let r = matmul(&mut cx, &mut Inputs::borrowed(&[Some(&a), Some(&b)]), false).expect("mm");
        assert_eq!(r[0].as_f32().expect("f"), &[58., 64., 139., 154.]);
        // bᵀ stored as [2, 3]
        let bt = t(&[2, 3], vec![7., 9., 11., 8., 10., 12.]);
        let r = matmul(&mut cx, &mut Inputs::borrowed(&[Some(&a), Some(&bt)]), true).expect("mm t");
        assert_eq!(r[0].as_f32().expect("f"), &[58., 64., 139., 154.]);
        // 5-D broadcast: [1, 2, 1, 1, 3] x [1, 1, 3, 3, 2] -> [1, 2, 3, 1, 2]
        let a5 = t(&[1, 2, 1, 1, 3], vec![1., 0., 0., 0., 1., 0.]);
        let b5 = t(&[1, 1, 3, 3, 2], (0..18).map(|x| x as f32).collect());
        let r = matmul(
            &mut cx,
            &mut Inputs::borrowed(&[Some(&a5), Some(&b5)]),
            false,
        )
        .expect("mm5");
        assert_eq!(r[0].shape(), &[1, 2, 3, 1, 2]);
        assert_eq!(
            r[0].as_f32().expect("f"),
            &[0., 1., 6., 7., 12., 13., 2., 3., 8., 9., 14., 15.]
        );
        // 1-D operands
        let v = t(&[3], vec![1., 1., 1.]);
        let r = matmul(&mut cx, &mut Inputs::borrowed(&[Some(&v), Some(&b)]), false).expect("mv");
        assert_eq!(r[0].shape(), &[2]);
        assert_eq!(r[0].as_f32().expect("f"), &[27., 30.]);
        let i = HostTensor::from_vec(vec![1, 2], vec![2i64, 3]).expect("i");
        let j = HostTensor::from_vec(vec![2, 1], vec![4i64, 5]).expect("j");
        let r = matmul(&mut cx, &mut Inputs::borrowed(&[Some(&i), Some(&j)]), false).expect("int");
        assert_eq!(r[0].as_i64().expect("i"), &[23]);
        let c = t(&[2], vec![100., 200.]);
        let r = gemm_op(
            &mut cx,
            &mut Inputs::borrowed(&[Some(&a), Some(&bt), Some(&c)]),
            1.0,
            0.5,
            false,
            true,
        )
        .expect("gemm");
        assert_eq!(r[0].as_f32().expect("f"), &[108., 164., 189., 254.]);
    }
}
