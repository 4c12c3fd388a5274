//! The x86 bodies of the 2:4 sparse kernels (see `sparse.rs` for the layout and the dispatch).
//!
//! Both instruction sets share one plan:
//!
//! - **GEMV** (one token): for each output row, 8 (AVX-512) or 4 (AVX2) groups at a time, the
//!   index bytes are widened to one lane per kept value (`4·g + position`), the input's 32 or 16
//!   floats of those groups are permuted into the kept positions (`vpermt2ps`, or two
//!   `vpermps` and a blend), and one FMA with the contiguous kept values accumulates. No
//!   gather; four rows at once for independent accumulators.
//! - **GEMM** (many tokens): the input is transposed to `xt: [in, tp]` (tokens contiguous,
//!   padded with zeros to whole vectors) and the result computed as `yt: [out, tp]`: for each
//!   kept value, a broadcast of the value times contiguous loads of the input row it selects.
//!   Two rows × `NV` vectors of tokens are accumulated in registers; the inputs are walked in
//!   blocks of [`KB`] groups so that the block of `xt` the inner loop reads stays in L1 (each
//!   load feeds one FMA: nothing else would keep the loads off L2).

#![cfg(target_arch = "x86_64")]
// Every function here is a SIMD body whose whole body is pointer arithmetic and intrinsics
// under the contract its `# Safety` section states; one unsafe block per statement would add
// nothing to that contract.
#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

/// Groups per input block of the GEMM (64 inputs × 64 tokens × 4 bytes = 16 KiB of `xt`).
pub const KB: usize = 16;

/// The 2:4 row-dot of one group range: `Σ_g v[2g]·x[4g+p0] + v[2g+1]·x[4g+p1]`, scalar (tails).
#[inline(always)]
pub fn dot_tail(x: &[f32], v: &[f32], idx: &[u8], g0: usize, g1: usize) -> f32 {
    let mut s = 0.0f32;
    for g in g0..g1 {
        let b = idx[g] as usize;
        s += v[2 * g] * x[4 * g + (b & 3)] + v[2 * g + 1] * x[4 * g + ((b >> 2) & 3)];
    }
    s
}

/// `y[o] = Σ W[o, :]·x` for rows `o` of `y` (`y.len()` rows from `row0`), AVX-512.
///
/// # Safety
/// The CPU must have AVX-512F/BW/VL; `x` is `4·groups` long, `vals`/`idx` hold the rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub unsafe fn gemv_avx512(
    x: &[f32],
    vals: &[f32],
    idx: &[u8],
    groups: usize,
    row0: usize,
    y: &mut [f32],
) {
    let shuf = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    let shift = _mm512_setr_epi32(0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2);
    let base = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
    let three = _mm512_set1_epi32(3);
    let chunks = groups / 8;
    let lanes = |ip: *const u8| {
        let b = _mm_loadl_epi64(ip as *const __m128i);
        let l = _mm512_cvtepu8_epi32(_mm_shuffle_epi8(b, shuf));
        _mm512_add_epi32(_mm512_and_si512(_mm512_srlv_epi32(l, shift), three), base)
    };
    let xp = x.as_ptr();
    let rows = y.len();
    let mut r = 0;
    while r < rows {
        let nr = (rows - r).min(4);
        let mut acc = [_mm512_setzero_ps(); 4];
        for c in 0..chunks {
            let xl = _mm512_loadu_ps(xp.add(32 * c));
            let xh = _mm512_loadu_ps(xp.add(32 * c + 16));
            for (k, a) in acc.iter_mut().enumerate().take(nr) {
                let o = row0 + r + k;
                let l = lanes(idx.as_ptr().add(o * groups + 8 * c));
                let xv = _mm512_permutex2var_ps(xl, l, xh);
                let v = _mm512_loadu_ps(vals.as_ptr().add(o * 2 * groups + 16 * c));
                *a = _mm512_fmadd_ps(v, xv, *a);
            }
        }
        for (k, a) in acc.iter().enumerate().take(nr) {
            let o = row0 + r + k;
            let vo = &vals[o * 2 * groups..(o + 1) * 2 * groups];
            let io = &idx[o * groups..(o + 1) * groups];
            y[r + k] = _mm512_reduce_add_ps(*a) + dot_tail(x, vo, io, 8 * chunks, groups);
        }
        r += nr;
    }
}

/// As [`gemv_avx512`], AVX2/FMA.
///
/// # Safety
/// The CPU must have AVX2 and FMA; the slices as for [`gemv_avx512`].
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gemv_avx2(
    x: &[f32],
    vals: &[f32],
    idx: &[u8],
    groups: usize,
    row0: usize,
    y: &mut [f32],
) {
    let shuf = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, -1, -1, -1, -1, -1, -1, -1, -1);
    let shift = _mm256_setr_epi32(0, 2, 0, 2, 0, 2, 0, 2);
    let base = _mm256_setr_epi32(0, 0, 4, 4, 0, 0, 4, 4);
    let three = _mm256_set1_epi32(3);
    let chunks = groups / 4;
    let lanes = |ip: *const u8| {
        let b = _mm_cvtsi32_si128((ip as *const i32).read_unaligned());
        let l = _mm256_cvtepu8_epi32(_mm_shuffle_epi8(b, shuf));
        _mm256_add_epi32(_mm256_and_si256(_mm256_srlv_epi32(l, shift), three), base)
    };
    let xp = x.as_ptr();
    let rows = y.len();
    let mut r = 0;
    while r < rows {
        let nr = (rows - r).min(4);
        let mut acc = [_mm256_setzero_ps(); 4];
        for c in 0..chunks {
            let xl = _mm256_loadu_ps(xp.add(16 * c));
            let xh = _mm256_loadu_ps(xp.add(16 * c + 8));
            for (k, a) in acc.iter_mut().enumerate().take(nr) {
                let o = row0 + r + k;
                let l = lanes(idx.as_ptr().add(o * groups + 4 * c));
                // Lanes 0-3 select from groups 0-1 (xl), lanes 4-7 from groups 2-3 (xh).
                let xv = _mm256_blend_ps::<0xF0>(
                    _mm256_permutevar8x32_ps(xl, l),
                    _mm256_permutevar8x32_ps(xh, l),
                );
                let v = _mm256_loadu_ps(vals.as_ptr().add(o * 2 * groups + 8 * c));
                *a = _mm256_fmadd_ps(v, xv, *a);
            }
        }
        for (k, a) in acc.iter().enumerate().take(nr) {
            let o = row0 + r + k;
            let vo = &vals[o * 2 * groups..(o + 1) * 2 * groups];
            let io = &idx[o * groups..(o + 1) * groups];
            y[r + k] = hsum256(*a) + dot_tail(x, vo, io, 4 * chunks, groups);
        }
        r += nr;
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn hsum256(a: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

/// One GEMM job: rows `row0 .. row0 + yt.len() / tp` of `yt: [out, tp]` from `xt: [4·groups,
/// tp]`; `tp` is a multiple of the vector width.
pub struct GemmJob<'a> {
    pub xt: &'a [f32],
    pub vals: &'a [f32],
    pub idx: &'a [u8],
    pub groups: usize,
    pub tp: usize,
    pub row0: usize,
}

macro_rules! gemm_tile {
    ($name:ident, $feat:literal, $w:expr, $vec:ty, $zero:ident, $set1:ident, $load:ident, $store:ident, $fma:ident) => {
        /// `NV` vectors of tokens from `t0`, rows `o0` and `o0 + 1` (relative to the job), one
        /// block of groups `g0 .. g1`, accumulated into `yt`.
        ///
        /// # Safety
        /// The CPU must have the target features; indices within the job's slices.
        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name<const NV: usize, const NR: usize>(
            j: &GemmJob<'_>,
            yt: &mut [f32],
            o0: usize,
            t0: usize,
            g0: usize,
            g1: usize,
        ) {
            let tp = j.tp;
            let mut acc = [[$zero(); NV]; NR];
            for r in 0..NR {
                for v in 0..NV {
                    acc[r][v] = $load(yt.as_ptr().add((o0 + r) * tp + t0 + $w * v));
                }
            }
            let xt = j.xt.as_ptr().add(t0);
            for g in g0..g1 {
                for r in 0..NR {
                    let o = j.row0 + o0 + r;
                    let b = *j.idx.get_unchecked(o * j.groups + g) as usize;
                    let vp = j.vals.as_ptr().add(o * 2 * j.groups + 2 * g);
                    let (v0, v1) = ($set1(*vp), $set1(*vp.add(1)));
                    let r0 = xt.add((4 * g + (b & 3)) * tp);
                    let r1 = xt.add((4 * g + ((b >> 2) & 3)) * tp);
                    for v in 0..NV {
                        acc[r][v] = $fma(v0, $load(r0.add($w * v)), acc[r][v]);
                        acc[r][v] = $fma(v1, $load(r1.add($w * v)), acc[r][v]);
                    }
                }
            }
            for r in 0..NR {
                for v in 0..NV {
                    $store(yt.as_mut_ptr().add((o0 + r) * tp + t0 + $w * v), acc[r][v]);
                }
            }
        }
    };
}

gemm_tile!(
    tile512,
    "avx512f,avx2,fma",
    16,
    __m512,
    _mm512_setzero_ps,
    _mm512_set1_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_fmadd_ps
);
gemm_tile!(
    tile256,
    "avx2,fma",
    8,
    __m256,
    _mm256_setzero_ps,
    _mm256_set1_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_fmadd_ps
);

macro_rules! gemm_driver {
    ($name:ident, $feat:literal, $w:expr, $tile:ident) => {
        /// The rows of one job: token tiles of 4, 2 or 1 vectors, input blocks of [`KB`]
        /// groups, row pairs (and a last single row). `yt` starts zeroed.
        ///
        /// # Safety
        /// The CPU must have the target features; `j.tp` a multiple of the vector width.
        #[target_feature(enable = $feat)]
        pub unsafe fn $name(j: &GemmJob<'_>, yt: &mut [f32]) {
            let rows = yt.len() / j.tp;
            let mut t0 = 0;
            while t0 < j.tp {
                let nv = ((j.tp - t0) / $w).min(4);
                let mut g0 = 0;
                while g0 < j.groups {
                    let g1 = (g0 + KB).min(j.groups);
                    let mut o = 0;
                    while o < rows {
                        let two = rows - o >= 2;
                        match (nv, two) {
                            (4, true) => $tile::<4, 2>(j, yt, o, t0, g0, g1),
                            (4, false) => $tile::<4, 1>(j, yt, o, t0, g0, g1),
                            (2 | 3, true) => $tile::<2, 2>(j, yt, o, t0, g0, g1),
                            (2 | 3, false) => $tile::<2, 1>(j, yt, o, t0, g0, g1),
                            (_, true) => $tile::<1, 2>(j, yt, o, t0, g0, g1),
                            (_, false) => $tile::<1, 1>(j, yt, o, t0, g0, g1),
                        }
                        o += if two { 2 } else { 1 };
                    }
                    g0 = g1;
                }
                t0 += $w * if nv == 3 { 2 } else { nv };
            }
        }
    };
}

gemm_driver!(gemm_avx512, "avx512f,avx2,fma", 16, tile512);
gemm_driver!(gemm_avx2, "avx2,fma", 8, tile256);
