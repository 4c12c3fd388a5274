//! `ortho.SparseLinear` (see `ortho_ir::sparse` for the compact layout): `y = x·Wᵀ` computing
//! only the kept half of a 2:4 weight.
//!
//! Two regimes (bodies in `sparse_simd.rs`):
//! - fewer than [`GEMM_MIN_TOKENS`] tokens (decode): a GEMV per token, which streams the compact
//!   weight once per token (memory-bound: 0.5625 of the dense bytes);
//! - more (prefill): the input is transposed so that the inner loop is a broadcast of a kept
//!   value times contiguous loads of the input row it selects (no gathers), half the dense
//!   multiply-adds.
//!
//! The instruction set is chosen at run time: AVX-512 when the CPU has AVX-512F/BW/VL, else
//! AVX2/FMA, else scalar. `ORTHO_SPARSE_ISA=avx2|avx512|scalar` forces one (a forced set the CPU
//! lacks falls back to the best it has), so both vector paths are tested on one machine.
//! Patterns other than 2:4, and f64, use the scalar path (f64 accumulation).

use crate::cpu::error::{KernelError, KernelResult};
use crate::cpu::handoff::{self, SyncPtr};
use crate::cpu::kernel::{ExecCx, Inputs};
use crate::cpu::tensor::{Elem, HostTensor};
use ortho_ir::sparse::NmSparse;
use ortho_ir::DType;
use rayon::prelude::*;

/// Token count from which the transposed GEMM is used instead of a GEMV per token.
pub const GEMM_MIN_TOKENS: usize = 8;

/// Weights from which a GEMV is split across threads. The split goes through `cpu::handoff`
/// (workers that spin between jobs, ~1 µs per split) rather than rayon (~25 µs to wake a worker
/// on this machine), so that even a layer's smallest products (576 × 192) gain from it.
pub const GEMV_PARALLEL_WEIGHTS: usize = 1 << 16;

/// The instruction set a sparse kernel runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
}

impl Isa {
    /// The best set this CPU has.
    pub fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("fma") {
                return Isa::Avx512;
            }
            if has!("avx2") && has!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// `want`, lowered to what the CPU has.
    pub fn at_most(want: Isa) -> Isa {
        match (want, Isa::best()) {
            (Isa::Scalar, _) => Isa::Scalar,
            (Isa::Avx2, Isa::Scalar) => Isa::Scalar,
            (Isa::Avx2, _) => Isa::Avx2,
            (Isa::Avx512, b) => b,
        }
    }

    /// The set the engine uses: `ORTHO_SPARSE_ISA` when set (read once), else the best.
    pub fn selected() -> Isa {
        static SEL: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *SEL.get_or_init(|| match std::env::var("ORTHO_SPARSE_ISA").as_deref() {
            Ok("scalar") => Isa::Scalar,
            Ok("avx2") => Isa::at_most(Isa::Avx2),
            _ => Isa::best(),
        })
    }
}

/// The kernel body: `ins` are `(x, values, indices)`.
pub fn sparse_linear(
    cx: &mut ExecCx<'_>,
    p: NmSparse,
    ins: &mut Inputs<'_>,
) -> KernelResult<Vec<HostTensor>> {
    let (x, v, i) = (ins.req(0)?, ins.req(1)?, ins.req(2)?);
    if i.dtype() != DType::U8 {
        return Err(KernelError::dtype(format!(
            "SparseLinear indices are {}, expected u8",
            i.dtype()
        )));
    }
    if v.dtype() != x.dtype() {
        return Err(KernelError::dtype(format!(
            "SparseLinear values are {}, the input {}",
            v.dtype(),
            x.dtype()
        )));
    }
    let isa = Isa::selected();
    let r = match x.dtype() {
        DType::F32 => run_f32(cx.threads, p, x, v, i, isa),
        DType::F64 => run_f64(p, x, v, i),
        DType::F16 | DType::BF16 => super::elementwise::via_f32(&[x, v, i], |t| {
            run_f32(cx.threads, p, t[0], t[1], t[2], isa)
        }),
        d => Err(KernelError::dtype(format!(
            "SparseLinear is not defined for {d}"
        ))),
    }?;
    Ok(vec![r])
}

/// Rows, groups, tokens and the result shape, checked against the operands.
struct Dims {
    out: usize,
    groups: usize,
    tokens: usize,
    shape: Vec<usize>,
}

fn dims(p: NmSparse, x: &HostTensor, v: &HostTensor, i: &HostTensor) -> KernelResult<Dims> {
    let (vs, is) = (v.shape(), i.shape());
    if vs.len() != 2 || is.len() != 2 || vs[0] != is[0] {
        return Err(KernelError::shape(format!(
            "SparseLinear values {vs:?} and indices {is:?} are not [out, ·] matrices of the same rows"
        )));
    }
    let gb = p.group_bytes();
    let groups = is[1] / gb;
    if is[1] % gb != 0 || vs[1] != groups * p.n {
        return Err(KernelError::shape(format!(
            "SparseLinear {}:{} values {vs:?} and indices {is:?} disagree on the group count",
            p.n, p.m
        )));
    }
    let Some((&k, lead)) = x.shape().split_last() else {
        return Err(KernelError::shape("SparseLinear input is a scalar"));
    };
    if k != groups * p.m {
        return Err(KernelError::shape(format!(
            "SparseLinear input width {k}, expected {}",
            groups * p.m
        )));
    }
    let mut shape = lead.to_vec();
    shape.push(vs[0]);
    Ok(Dims {
        out: vs[0],
        groups,
        tokens: lead.iter().product(),
        shape,
    })
}

fn f32s(t: &HostTensor) -> KernelResult<&[f32]> {
    t.data::<f32>().ok_or_else(|| KernelError::dtype("f32"))
}

fn run_f32(
    threads: usize,
    p: NmSparse,
    x: &HostTensor,
    v: &HostTensor,
    i: &HostTensor,
    isa: Isa,
) -> KernelResult<HostTensor> {
    let d = dims(p, x, v, i)?;
    let (xd, vd) = (f32s(x)?, f32s(v)?);
    let id = i.data::<u8>().ok_or_else(|| KernelError::dtype("u8"))?;
    let y = if p.n == 2 && p.m == 4 {
        sparse_2_4(xd, vd, id, d.out, d.groups, d.tokens, threads, isa)
    } else {
        let xs: Vec<f64> = xd.iter().map(|&a| a as f64).collect();
        let vs: Vec<f64> = vd.iter().map(|&a| a as f64).collect();
        scalar_nm(p, &xs, &vs, id, d.out, d.groups, d.tokens)
            .into_iter()
            .map(|a| a as f32)
            .collect()
    };
    HostTensor::make(d.shape, f32::wrap(y))
}

fn run_f64(
    p: NmSparse,
    x: &HostTensor,
    v: &HostTensor,
    i: &HostTensor,
) -> KernelResult<HostTensor> {
    let d = dims(p, x, v, i)?;
    fn f(t: &HostTensor) -> KernelResult<&[f64]> {
        t.data::<f64>().ok_or_else(|| KernelError::dtype("f64"))
    }
    let id = i.data::<u8>().ok_or_else(|| KernelError::dtype("u8"))?;
    let y = scalar_nm(p, f(x)?, f(v)?, id, d.out, d.groups, d.tokens);
    HostTensor::make(d.shape, f64::wrap(y))
}

/// Any N:M pattern, one token and one row at a time, accumulated in f64. Indices are trusted
/// only as far as `unpack_group` masks them: a position `≥ m` would read another group, so it
/// is clamped into the group (the verifier-side check, `NmSparse::check_indices`, refuses such
/// data at import).
pub fn scalar_nm(
    p: NmSparse,
    x: &[f64],
    vals: &[f64],
    idx: &[u8],
    out: usize,
    groups: usize,
    tokens: usize,
) -> Vec<f64> {
    let (n, m, gb) = (p.n, p.m, p.group_bytes());
    let k = groups * m;
    let mut y = vec![0.0; tokens * out];
    let mut pos = vec![0usize; n];
    for o in 0..out {
        for g in 0..groups {
            let at = (o * groups + g) * gb;
            p.unpack_group(&idx[at..at + gb], &mut pos);
            for (kk, &ps) in pos.iter().enumerate() {
                let w = vals[(o * groups + g) * n + kk];
                let col = g * m + ps.min(m - 1);
                for t in 0..tokens {
                    y[t * out + o] += w * x[t * k + col];
                }
            }
        }
    }
    y
}

/// The 2:4 f32 kernel on `isa`, rows split over `threads`.
#[allow(clippy::too_many_arguments)]
pub fn sparse_2_4(
    x: &[f32],
    vals: &[f32],
    idx: &[u8],
    out: usize,
    groups: usize,
    tokens: usize,
    threads: usize,
    isa: Isa,
) -> Vec<f32> {
    let k = 4 * groups;
    let mut y = vec![0.0f32; tokens * out];
    if tokens == 0 || out == 0 {
        return y;
    }
    // Rows per thread: whole multiples of 4 so the GEMV's row blocks stay full.
    let parts = threads.clamp(1, out.div_ceil(4).max(1));
    let rows_per = out.div_ceil(parts).div_ceil(4) * 4;
    if isa == Isa::Scalar {
        for t in 0..tokens {
            for o in 0..out {
                y[t * out + o] = dot_2_4(&x[t * k..(t + 1) * k], vals, idx, groups, o);
            }
        }
        return y;
    }
    if tokens < GEMM_MIN_TOKENS {
        // A GEMV over fewer than ~2 M weights is done in tens of microseconds: a second thread
        // costs more than it saves (measured on every SmolLM2 layer, benches/sparse.rs).
        let parts = if out * k >= GEMV_PARALLEL_WEIGHTS {
            parts
        } else {
            1
        };
        let parts = parts.min(handoff::parallelism());
        let rows_per = out.div_ceil(parts).div_ceil(4) * 4;
        let mut yr = vec![0.0f32; out];
        for t in 0..tokens {
            let xt = &x[t * k..(t + 1) * k];
            let body =
                |(c, ys): (usize, &mut [f32])| gemv(isa, xt, vals, idx, groups, c * rows_per, ys);
            if parts > 1 {
                let yp = SyncPtr::new(&mut yr);
                let piece = |c: usize| {
                    let r0 = c * rows_per;
                    if r0 < out {
                        // SAFETY: pieces `[c·rows_per, min((c+1)·rows_per, out))` are disjoint
                        // parts of `yr`, borrowed mutably for this call; each `c` runs once.
                        let ys = unsafe { yp.slice(r0, rows_per.min(out - r0)) };
                        body((c, ys));
                    }
                };
                if !handoff::run(parts, &piece) {
                    (0..parts).into_par_iter().for_each(piece);
                }
            } else {
                yr.chunks_mut(rows_per).enumerate().for_each(body);
            }
            y[t * out..(t + 1) * out].copy_from_slice(&yr);
        }
        return y;
    }
    // Transposed input, tokens padded to whole vectors (zeros: they only feed padded results).
    let w = if isa == Isa::Avx512 { 16 } else { 8 };
    let tp = tokens.div_ceil(w) * w;
    let mut xt = vec![0.0f32; k * tp];
    for t in 0..tokens {
        for c in 0..k {
            xt[c * tp + t] = x[t * k + c];
        }
    }
    let mut yt = vec![0.0f32; out * tp];
    let body = |(c, ys): (usize, &mut [f32])| {
        let job = sparse_job(&xt, vals, idx, groups, tp, c * rows_per);
        gemm(isa, &job, ys)
    };
    if parts > 1 {
        yt.par_chunks_mut(rows_per * tp).enumerate().for_each(body);
    } else {
        yt.chunks_mut(rows_per * tp).enumerate().for_each(body);
    }
    for o in 0..out {
        for t in 0..tokens {
            y[t * out + o] = yt[o * tp + t];
        }
    }
    y
}

/// One row's 2:4 dot product, scalar.
fn dot_2_4(x: &[f32], vals: &[f32], idx: &[u8], groups: usize, o: usize) -> f32 {
    let v = &vals[o * 2 * groups..(o + 1) * 2 * groups];
    let ix = &idx[o * groups..(o + 1) * groups];
    let mut s = 0.0f32;
    for g in 0..groups {
        let b = ix[g] as usize;
        s += v[2 * g] * x[4 * g + (b & 3)] + v[2 * g + 1] * x[4 * g + ((b >> 2) & 3)];
    }
    s
}

#[cfg(target_arch = "x86_64")]
fn sparse_job<'a>(
    xt: &'a [f32],
    vals: &'a [f32],
    idx: &'a [u8],
    groups: usize,
    tp: usize,
    row0: usize,
) -> super::sparse_simd::GemmJob<'a> {
    super::sparse_simd::GemmJob {
        xt,
        vals,
        idx,
        groups,
        tp,
        row0,
    }
}

#[cfg(target_arch = "x86_64")]
fn gemv(isa: Isa, x: &[f32], vals: &[f32], idx: &[u8], groups: usize, row0: usize, y: &mut [f32]) {
    // SAFETY: `isa` is never above what `Isa::best` found on this CPU; the slices hold the
    // rows `row0 .. row0 + y.len()` (checked shapes), and `x` holds `4·groups` values.
    unsafe {
        match isa {
            Isa::Avx512 => super::sparse_simd::gemv_avx512(x, vals, idx, groups, row0, y),
            _ => super::sparse_simd::gemv_avx2(x, vals, idx, groups, row0, y),
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn gemm(isa: Isa, job: &super::sparse_simd::GemmJob<'_>, yt: &mut [f32]) {
    // SAFETY: as for `gemv`; `job.tp` is a multiple of the chosen set's vector width.
    unsafe {
        match isa {
            Isa::Avx512 => super::sparse_simd::gemm_avx512(job, yt),
            _ => super::sparse_simd::gemm_avx2(job, yt),
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn gemv(_: Isa, x: &[f32], vals: &[f32], idx: &[u8], groups: usize, row0: usize, y: &mut [f32]) {
    for (r, yo) in y.iter_mut().enumerate() {
        *yo = dot_2_4(x, vals, idx, groups, row0 + r);
    }
}

/// Without x86 there is no vector GEMM: [`Isa::best`] is scalar, so this is never reached with
/// a job; it computes the same rows scalar for completeness.
#[cfg(not(target_arch = "x86_64"))]
struct ScalarJob<'a> {
    xt: &'a [f32],
    vals: &'a [f32],
    idx: &'a [u8],
    groups: usize,
    tp: usize,
    row0: usize,
}

#[cfg(not(target_arch = "x86_64"))]
fn sparse_job<'a>(
    xt: &'a [f32],
    vals: &'a [f32],
    idx: &'a [u8],
    groups: usize,
    tp: usize,
    row0: usize,
) -> ScalarJob<'a> {
    ScalarJob {
        xt,
        vals,
        idx,
        groups,
        tp,
        row0,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn gemm(_: Isa, j: &ScalarJob<'_>, yt: &mut [f32]) {
    for (r, row) in yt.chunks_mut(j.tp).enumerate() {
        let o = j.row0 + r;
        for g in 0..j.groups {
            let b = j.idx[o * j.groups + g] as usize;
            for (kk, p) in [b & 3, (b >> 2) & 3].into_iter().enumerate() {
                let v = j.vals[o * 2 * j.groups + 2 * g + kk];
                let xr = &j.xt[(4 * g + p) * j.tp..(4 * g + p + 1) * j.tp];
                for (y, x) in row.iter_mut().zip(xr) {
                    *y += v * x;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seeded xorshift stream in [-1, 1).
    fn rand(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// A random 2:4 matrix (`out × k`) with varied group patterns, some groups with fewer than
    /// two non-zeros.
    fn random_2_4(seed: u64, out: usize, k: usize) -> Vec<f32> {
        let mut w = rand(seed, out * k);
        let r = rand(seed + 1, out * k / 4);
        for (g, chunk) in w.chunks_mut(4).enumerate() {
            let a = ((r[g] + 1.0) * 3.0) as usize % 4;
            let b = (a + 1 + ((r[g] + 1.0) * 7.0) as usize % 3) % 4;
            for (p, x) in chunk.iter_mut().enumerate() {
                if p != a && p != b {
                    *x = 0.0;
                }
            }
            if g % 7 == 3 {
                chunk[a] = 0.0;
            }
        }
        w
    }

    fn dense(x: &[f32], w: &[f32], tokens: usize, out: usize, k: usize) -> Vec<f64> {
        let mut y = vec![0.0; tokens * out];
        for t in 0..tokens {
            for o in 0..out {
                y[t * out + o] = (0..k)
                    .map(|c| x[t * k + c] as f64 * w[o * k + c] as f64)
                    .sum();
            }
        }
        y
    }

    /// Every instruction set, GEMV and GEMM sizes, rows and groups that are not multiples of
    /// the vector widths or of the row blocks, 1 and 3 threads: equal to the dense product.
    #[test]
    fn kernels_match_dense_on_random_shapes() {
        let p = NmSparse::new(2, 4).expect("2:4");
        let mut isas = vec![Isa::Scalar];
        for want in [Isa::Avx2, Isa::Avx512] {
            let got = Isa::at_most(want);
            if !isas.contains(&got) {
                isas.push(got);
            }
        }
        let shapes = [
            (1, 5, 4),
            (1, 13, 36),
            (3, 9, 68),
            (7, 17, 100),
            (8, 6, 32),
            (19, 11, 132),
            (33, 10, 64),
            (70, 23, 260),
        ];
        for (s, &(tokens, out, k)) in shapes.iter().enumerate() {
            let w = random_2_4(s as u64 * 10 + 1, out, k);
            let x = rand(s as u64 * 10 + 5, tokens * k);
            let (v, i) = p.compress(&w, out, k).expect("2:4");
            let want = dense(&x, &w, tokens, out, k);
            let scale = want.iter().fold(1.0f64, |a, b| a.max(b.abs()));
            for &isa in &isas {
                for threads in [1, 3] {
                    let got = sparse_2_4(&x, &v, &i, out, k / 4, tokens, threads, isa);
                    let err = got
                        .iter()
                        .zip(&want)
                        .fold(0.0f64, |a, (g, w)| a.max((*g as f64 - w).abs()));
                    assert!(
                        err <= 1e-5 * scale,
                        "{isa:?} {threads} threads, {tokens}×{k} → {out}: max |Δ| {err}"
                    );
                }
            }
        }
    }

    /// Another pattern (4:8, two index bytes per group) on the scalar path, against dense.
    #[test]
    fn other_patterns_use_the_scalar_path() {
        let p = NmSparse::new(4, 8).expect("4:8");
        let (out, k, tokens) = (5, 24, 3);
        let mut w = rand(3, out * k);
        for chunk in w.chunks_mut(8) {
            for x in chunk.iter_mut().skip(1).step_by(2) {
                *x = 0.0;
            }
        }
        let x = rand(4, tokens * k);
        let (v, i) = p.compress(&w, out, k).expect("4:8");
        let xs: Vec<f64> = x.iter().map(|&a| a as f64).collect();
        let vs: Vec<f64> = v.iter().map(|&a| a as f64).collect();
        let got = scalar_nm(p, &xs, &vs, &i, out, k / 8, tokens);
        let want = dense(&x, &w, tokens, out, k);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-9, "{g} vs {w}");
        }
    }

    /// Hand-computed: W = [[1 0 2 0], [0 0 0 3]], x = [1 2 3 4] → y = [7, 12].
    #[test]
    fn hand_computed() {
        let p = NmSparse::new(2, 4).expect("2:4");
        let w = [1.0f32, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0];
        let (v, i) = p.compress(&w, 2, 4).expect("2:4");
        let x = HostTensor::from_vec(vec![1, 4], vec![1.0f32, 2.0, 3.0, 4.0]).expect("x");
        let vt = HostTensor::from_vec(vec![2, 2], v).expect("v");
        let it = HostTensor::from_vec(vec![2, 1], i).expect("i");
        let mut pool = crate::cpu::pool::BufferPool::new();
        let mut cx = ExecCx {
            pool: &mut pool,
            threads: 1,
        };
        let r = sparse_linear(
            &mut cx,
            p,
            &mut Inputs::borrowed(&[Some(&x), Some(&vt), Some(&it)]),
        )
        .expect("runs");
        assert_eq!(r[0].shape(), &[1, 2]);
        assert_eq!(r[0].as_f32(), Some(&[7.0f32, 12.0][..]));
    }
}
