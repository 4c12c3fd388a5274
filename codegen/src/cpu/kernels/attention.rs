//! Attention (opset 23): scaled dot-product attention with GQA, causal masking (offset by the
//! past length), an optional boolean or additive mask, softcap and a KV cache (past/present).
//!
//! Per (batch, query head) the scores `Q·Kᵀ·scale` go through one GEMM reading Q and K in place
//! (3-D `[B, S, H·D]` or 4-D `[B, H, S, D]` layouts are just strides), then a row softmax, then
//! a second GEMM with V. Pairs run in parallel.

use super::matmul::{gemm_into, Mat};
use super::reduce::softmax_inplace_f32;
use crate::cpu::error::{KernelError, KernelResult};
use crate::cpu::kernel::{ExecCx, Inputs};
use crate::cpu::tensor::{HostTensor, TensorBuf};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionAttrs {
    pub is_causal: bool,
    pub q_heads: Option<usize>,
    pub kv_heads: Option<usize>,
    pub scale: Option<f32>,
    pub softcap: f32,
    /// What the optional 4th output (`qk_matmul_output`) holds: 0 the scaled scores, 1 those
    /// softcapped, 2 those plus the masks, 3 the attention weights.
    pub qk_mode: i64,
    /// The sliding window (opset 25): query position p sees keys p − left ..= p + right, no
    /// bound on a side without a size.
    pub left_window: Option<usize>,
    pub right_window: Option<usize>,
}

/// A [B, H, S, D] view of a 3-D or 4-D operand: element strides of (b, h, s).
#[derive(Clone, Copy, Debug)]
struct View {
    b: usize,
    h: usize,
    s: usize,
    d: usize,
    sb: usize,
    sh: usize,
    ss: usize,
}

fn view(t: &HostTensor, heads: Option<usize>, what: &str) -> KernelResult<View> {
    let s = t.shape();
    match s.len() {
        4 => Ok(View {
            b: s[0],
            h: s[1],
            s: s[2],
            d: s[3],
            sb: s[1] * s[2] * s[3],
            sh: s[2] * s[3],
            ss: s[3],
        }),
        3 => {
            let h = heads.ok_or_else(|| {
                KernelError::shape(format!("3-D {what} needs the number of heads"))
            })?;
            if h == 0 || !s[2].is_multiple_of(h) {
                return Err(KernelError::shape(format!(
                    "{what} hidden size {} is not a multiple of {h} heads",
                    s[2]
                )));
            }
            let d = s[2] / h;
            Ok(View {
                b: s[0],
                h,
                s: s[1],
                d,
                sb: s[1] * s[2],
                sh: d,
                ss: s[2],
            })
        }
        r => Err(KernelError::shape(format!(
            "{what} must be 3-D or 4-D, got rank {r}"
        ))),
    }
}

/// Copies a view into a contiguous [B, H, S, D] buffer.
fn to_bhsd(x: &[f32], v: View) -> Vec<f32> {
    let mut out = Vec::with_capacity(v.b * v.h * v.s * v.d);
    for b in 0..v.b {
        for h in 0..v.h {
            for s in 0..v.s {
                let o = b * v.sb + h * v.sh + s * v.ss;
                out.extend_from_slice(&x[o..o + v.d]);
            }
        }
    }
    out
}

/// Concatenates past [B, H, P, D] and new (a view) along the sequence: [B, H, P + S, D].
fn with_past(past: &HostTensor, new: &[f32], v: View, what: &str) -> KernelResult<Vec<f32>> {
    let p = past.shape();
    if p.len() != 4 || p[0] != v.b || p[1] != v.h || p[3] != v.d {
        return Err(KernelError::shape(format!(
            "past_{what} of shape {p:?} does not match {what} [{}, {}, _, {}]",
            v.b, v.h, v.d
        )));
    }
    let pd = past
        .as_f32()
        .ok_or(KernelError::dtype("past must be f32"))?;
    let mut out = Vec::with_capacity(pd.len() + v.b * v.h * v.s * v.d);
    for b in 0..v.b {
        for h in 0..v.h {
            let o = (b * v.h + h) * p[2] * v.d;
            out.extend_from_slice(&pd[o..o + p[2] * v.d]);
            for s in 0..v.s {
                let o = b * v.sb + h * v.sh + s * v.ss;
                out.extend_from_slice(&new[o..o + v.d]);
            }
        }
    }
    Ok(out)
}

pub fn attention(
    cx: &mut ExecCx<'_>,
    ins: &mut Inputs<'_>,
    a: AttentionAttrs,
    n_out: usize,
    want_qk: bool,
) -> KernelResult<Vec<HostTensor>> {
    let dt = ins.req(0)?.dtype();
    if matches!(dt, ortho_ir::DType::F16 | ortho_ir::DType::BF16) {
        // Half precision: compute in f32, round the results once.
        let wide: Vec<Option<HostTensor>> = (0..ins.len())
            .map(|i| ins.get(i).and_then(super::elementwise::widen_half))
            .collect();
        let refs: Vec<Option<&HostTensor>> = (0..ins.len())
            .map(|i| wide[i].as_ref().or(ins.get(i)))
            .collect();
        let r = attention_f32(cx, &mut Inputs::borrowed(&refs), a, n_out, want_qk)?;
        return r
            .into_iter()
            .map(|t| super::elementwise::narrow_half(t, dt))
            .collect();
    }
    attention_f32(cx, ins, a, n_out, want_qk)
}

fn attention_f32(
    cx: &mut ExecCx<'_>,
    ins: &mut Inputs<'_>,
    a: AttentionAttrs,
    n_out: usize,
    want_qk: bool,
) -> KernelResult<Vec<HostTensor>> {
    let (q, k, v) = (ins.req(0)?, ins.req(1)?, ins.req(2)?);
    let (qd, kd, vd) = (
        q.as_f32().ok_or_else(|| {
            KernelError::dtype(format!(
                "Attention is implemented for f32, got {}",
                q.dtype()
            ))
        })?,
        k.as_f32().ok_or(KernelError::dtype("K must be f32"))?,
        v.as_f32().ok_or(KernelError::dtype("V must be f32"))?,
    );
    let three_d = q.rank() == 3;
    let (qv, kv, vv) = qkv_views(q, k, v, a)?;
    let (past_k, past_v) = (ins.get(4), ins.get(5));
    let past_len = past_k
        .map(|p| p.shape().get(2).copied().unwrap_or(0))
        .unwrap_or(0);
    // With a cache, K and V become contiguous [B, H, P + S, D]; without, they are read in place.
    let (k_full, v_full);
    let (kdat, vdat, kv, vv): (&[f32], &[f32], View, View) = match (past_k, past_v) {
        (Some(pk), Some(pv)) => {
            k_full = with_past(pk, kd, kv, "key")?;
            v_full = with_past(pv, vd, vv, "value")?;
            let t = kv.s + past_len;
            (&k_full, &v_full, kv.contiguous(t), vv.contiguous(t))
        }
        (None, None) => (kd, vd, kv, vv),
        _ => {
            return Err(KernelError::invalid(
                "past_key and past_value must be given together",
            ))
        }
    };
    let (bsz, hq, sq, t, dv) = (qv.b, qv.h, qv.s, kv.s, vv.d);
    let rep = hq / kv.h;
    let scale = a.scale.unwrap_or(1.0 / (qv.d as f32).sqrt());
    let mask = mask_view(ins.get(3), [bsz, hq, sq, t])?;
    // Valid keys per batch (opset 24 `nonpad_kv_seqlen`); the causal frontier of query i is
    // key i + offset, offset = the past length, or nonpad − S for an external cache.
    let nonpad: Option<Vec<i64>> = ins.get(6).map(|t| t.to_i64_vec());
    if nonpad.as_ref().is_some_and(|v| v.len() != bsz) {
        return Err(KernelError::shape(
            "nonpad_kv_seqlen must hold one length per batch",
        ));
    }
    let threads = cx.threads;
    let mut out = cx.pool.alloc::<f32>(bsz * hq * sq * dv)?;
    let pairs = bsz * hq;
    // Query rows go in blocks; with a causal mask a block only needs the keys up to its last
    // row, which skips about half of both products for long sequences.
    let rb = if a.is_causal && sq >= 64 {
        32
    } else {
        sq.max(1)
    };
    let heads = Heads {
        qd,
        kdat,
        vdat,
        qv,
        kv,
        vv,
        rep,
        hq,
        sq,
        t,
        dv,
        past_len,
        nonpad: nonpad.as_deref(),
        mask: &mask,
        rb,
        scale,
        causal: a.is_causal,
        softcap: a.softcap,
        left_window: a.left_window,
        right_window: a.right_window,
    };
    let head = |idx: usize, o: &mut [f32], th: usize| heads.run(idx, o, th);
    let block = sq * dv;
    if block > 0 {
        if threads > 1 && pairs > 1 {
            out.par_chunks_mut(block)
                .enumerate()
                .for_each(|(i, o)| head(i, o, 1));
        } else {
            for (i, o) in out.chunks_mut(block).enumerate() {
                head(i, o, threads);
            }
        }
    }
    let y = if three_d {
        let mut y = cx.pool.alloc::<f32>(out.len())?;
        heads_to_hidden(&out, &mut y, [bsz, hq, sq, dv]);
        cx.pool.recycle(TensorBuf::F32(out));
        HostTensor::make(vec![bsz, sq, hq * dv], TensorBuf::F32(y))?
    } else {
        HostTensor::make(vec![bsz, hq, sq, dv], TensorBuf::F32(out))?
    };
    let mut res = vec![y];
    if n_out > 1 || want_qk {
        res.push(present(kdat, kv, past_k.is_some())?);
    }
    if n_out > 2 || want_qk {
        res.push(present(vdat, vv, past_v.is_some())?);
    }
    if want_qk {
        let qk = heads.qk_output(bsz, a.qk_mode)?;
        res.push(HostTensor::make(vec![bsz, hq, sq, t], TensorBuf::F32(qk))?);
    }
    Ok(res)
}

/// What every (batch, head) pair of one Attention call shares: the operands as [B, H, S, D]
/// views, the lengths, the mask and the query-row blocking.
struct Heads<'a> {
    qd: &'a [f32],
    kdat: &'a [f32],
    vdat: &'a [f32],
    qv: View,
    kv: View,
    vv: View,
    /// Query heads per KV head.
    rep: usize,
    hq: usize,
    sq: usize,
    /// Keys (past and new).
    t: usize,
    dv: usize,
    past_len: usize,
    nonpad: Option<&'a [i64]>,
    mask: &'a Mask<'a>,
    /// Query rows per block.
    rb: usize,
    scale: f32,
    causal: bool,
    softcap: f32,
    left_window: Option<usize>,
    right_window: Option<usize>,
}

impl Heads<'_> {
    /// Valid keys of batch `b` (opset 24 `nonpad_kv_seqlen`, else all).
    fn kv_valid(&self, b: usize) -> usize {
        self.nonpad
            .map_or(self.t, |v| (v[b].max(0) as usize).min(self.t))
    }

    /// The keys query `i` of batch `b` may see, `lo..hi`: the valid keys, cut by the causal
    /// frontier and the sliding window. Both are aligned at the query's absolute position
    /// i + offset, the offset being the past length, or nonpad − S for an external cache.
    fn keys(&self, b: usize, i: usize) -> (usize, usize) {
        let offset: i64 = match self.nonpad {
            Some(v) if self.past_len == 0 => v[b] - self.sq as i64,
            _ => self.past_len as i64,
        };
        let (p, t) = (i as i64 + offset, self.t as i64);
        let mut hi = self.kv_valid(b) as i64;
        if self.causal {
            hi = hi.min(p + 1);
        }
        if let Some(r) = self.right_window {
            hi = hi.min(p + r as i64 + 1);
        }
        let lo = self.left_window.map_or(0, |l| p - l as i64);
        (lo.clamp(0, t) as usize, hi.clamp(0, t) as usize)
    }

    /// The `qk_matmul_output` result, [B, Hq, S, T], computed row by row apart from the blocked
    /// products (it is a diagnostic output, so the straightforward loop is enough). Mode 3
    /// gives exactly the weights the output used, fully masked rows zero.
    fn qk_output(&self, bsz: usize, mode: i64) -> KernelResult<Vec<f32>> {
        if !(0..=3).contains(&mode) {
            return Err(KernelError::invalid(format!(
                "qk_matmul_output_mode {mode} (0 to 3)"
            )));
        }
        let (t, d) = (self.t, self.qv.d);
        let mut out = vec![0.0f32; bsz * self.hq * self.sq * t];
        for (r, row) in out
            .chunks_mut(t.max(1))
            .enumerate()
            .take(bsz * self.hq * self.sq)
        {
            let (b, h, i) = (r / (self.hq * self.sq), r / self.sq % self.hq, r % self.sq);
            let qo = b * self.qv.sb + h * self.qv.sh + i * self.qv.ss;
            let ko = b * self.kv.sb + (h / self.rep) * self.kv.sh;
            for (j, x) in row.iter_mut().enumerate() {
                let kj = &self.kdat[ko + j * self.kv.ss..][..d];
                let dot: f32 = self.qd[qo..qo + d].iter().zip(kj).map(|(a, b)| a * b).sum();
                *x = dot * self.scale;
            }
            let (lo, valid) = self.keys(b, i);
            let mrow = b * self.mask.stride[0] + h * self.mask.stride[1] + i * self.mask.stride[2];
            let (live, dead) = row.split_at_mut(valid);
            if mode == 3 {
                finish_row(live, self.mask, mrow, self.softcap, lo);
                dead.fill(0.0);
                continue;
            }
            if mode >= 1 && self.softcap > 0.0 {
                for x in row.iter_mut() {
                    *x = self.softcap * (*x / self.softcap).tanh();
                }
            }
            if mode == 2 {
                let (live, dead) = row.split_at_mut(valid);
                dead.fill(f32::NEG_INFINITY);
                let m = self.mask;
                for (j, x) in live.iter_mut().enumerate() {
                    let mo = mrow + j * m.stride[3];
                    if j < lo || j >= m.len || m.keep.is_some_and(|mb| !mb[mo]) {
                        *x = f32::NEG_INFINITY;
                    } else if let Some(mf) = m.add {
                        *x += mf[mo];
                    }
                }
            }
        }
        Ok(out)
    }

    /// The [S, Dv] output rows of (batch, head) pair `idx` into `o`: per block of query rows,
    /// the scores against the keys it can see, their softmax, and the weighted values; `th`
    /// threads for the products.
    fn run(&self, idx: usize, o: &mut [f32], th: usize) {
        let (b, h) = (idx / self.hq, idx % self.hq);
        let kh = h / self.rep;
        let qo = b * self.qv.sb + h * self.qv.sh;
        let ko = b * self.kv.sb + kh * self.kv.sh;
        let vo = b * self.vv.sb + kh * self.vv.sh;
        let mut scores = vec![0.0f32; self.rb * self.t];
        let mut r0 = 0;
        while r0 < self.sq {
            let r1 = (r0 + self.rb).min(self.sq);
            let rows = r1 - r0;
            // The last row of the block sees the most keys (the bounds grow with the row).
            let tn = self.keys(b, r1 - 1).1;
            let sc = &mut scores[..rows * tn.max(1)];
            gemm_into(
                rows,
                tn,
                self.qv.d,
                Mat {
                    data: &self.qd[qo + r0 * self.qv.ss..],
                    rs: self.qv.ss,
                    cs: 1,
                },
                Mat {
                    data: &self.kdat[ko..],
                    rs: 1,
                    cs: self.kv.ss,
                },
                sc,
                tn,
                false,
                0.0,
                self.scale,
                th,
            );
            for r in 0..rows {
                let i = r0 + r;
                let row = &mut sc[r * tn..(r + 1) * tn];
                let (lo, hi) = self.keys(b, i);
                let (live, dead) = row.split_at_mut(hi.min(tn));
                dead.fill(0.0);
                let mrow =
                    b * self.mask.stride[0] + h * self.mask.stride[1] + i * self.mask.stride[2];
                finish_row(live, self.mask, mrow, self.softcap, lo);
            }
            gemm_into(
                rows,
                self.dv,
                tn,
                Mat {
                    data: sc,
                    rs: tn,
                    cs: 1,
                },
                Mat {
                    data: &self.vdat[vo..],
                    rs: self.vv.ss,
                    cs: 1,
                },
                &mut o[r0 * self.dv..r1 * self.dv],
                self.dv,
                false,
                0.0,
                1.0,
                th,
            );
            r0 = r1;
        }
    }
}

impl View {
    /// The same logical [B, H, S, D] tensor stored contiguously with `s` positions.
    fn contiguous(self, s: usize) -> View {
        View {
            s,
            sb: self.h * s * self.d,
            sh: s * self.d,
            ss: self.d,
            ..self
        }
    }
}

/// Views of Q, K and V, checked to fit together (batch, head size, KV length, GQA heads).
fn qkv_views(
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    a: AttentionAttrs,
) -> KernelResult<(View, View, View)> {
    let qv = view(q, a.q_heads, "Q")?;
    let kv = view(k, a.kv_heads, "K")?;
    let vv = view(v, a.kv_heads, "V")?;
    if qv.b != kv.b || kv.b != vv.b || qv.d != kv.d || kv.s != vv.s || kv.h != vv.h {
        return Err(KernelError::shape(format!(
            "Q {:?}, K {:?} and V {:?} do not fit together",
            q.shape(),
            k.shape(),
            v.shape()
        )));
    }
    if kv.h == 0 || qv.h % kv.h != 0 {
        return Err(KernelError::invalid(format!(
            "{} query heads are not a multiple of {} KV heads",
            qv.h, kv.h
        )));
    }
    Ok((qv, kv, vv))
}

/// The attention mask broadcast (right-aligned) to [B, Hq, S, T]: bool (true = attend) or
/// additive f32, with element strides per dim; keys at or past `len` are masked.
#[derive(Default)]
struct Mask<'a> {
    add: Option<&'a [f32]>,
    keep: Option<&'a [bool]>,
    stride: [usize; 4],
    len: usize,
}

fn mask_view(mask: Option<&HostTensor>, full: [usize; 4]) -> KernelResult<Mask<'_>> {
    let t = full[3];
    let Some(m) = mask else {
        return Ok(Mask {
            len: t,
            ..Mask::default()
        });
    };
    let ms = m.shape();
    if ms.len() > 4 || ms.is_empty() {
        return Err(KernelError::unsupported(format!(
            "attn_mask of rank {} is not supported",
            ms.len()
        )));
    }
    let mut shape4 = vec![1usize; 4 - ms.len()];
    shape4.extend_from_slice(ms);
    let st = crate::cpu::tensor::strides(&shape4);
    let mut stride = [0usize; 4];
    let mut len = t;
    for i in 0..4 {
        if shape4[i] == full[i] {
            stride[i] = st[i];
        } else if i == 3 && shape4[3] > 1 && shape4[3] < t {
            // A mask shorter than the keys: the keys past its end are masked.
            stride[3] = st[3];
            len = shape4[3];
        } else if shape4[i] != 1 {
            return Err(KernelError::shape(format!(
                "attn_mask of shape {ms:?} does not broadcast to {full:?}"
            )));
        }
    }
    match m.buf() {
        TensorBuf::Bool(b) => Ok(Mask {
            keep: Some(b.as_slice()),
            stride,
            len,
            ..Mask::default()
        }),
        TensorBuf::F32(f) => Ok(Mask {
            add: Some(f.as_slice()),
            stride,
            len,
            ..Mask::default()
        }),
        _ => Err(KernelError::dtype(format!(
            "attn_mask must be bool or f32, got {}",
            m.dtype()
        ))),
    }
}

/// Turns one row of live scores into attention weights: softcap, the keys before `lo` (left
/// of the sliding window) and the mask (its row starts at element `mrow`) removed, then a
/// softmax; a fully masked row attends to nothing (all zeros).
#[inline]
fn finish_row(live: &mut [f32], mask: &Mask<'_>, mrow: usize, softcap: f32, lo: usize) {
    if softcap > 0.0 {
        for x in live.iter_mut() {
            *x = softcap * (*x / softcap).tanh();
        }
    }
    let lo = lo.min(live.len());
    live[..lo].fill(f32::NEG_INFINITY);
    let mut any = lo < live.len();
    if mask.keep.is_some() || mask.add.is_some() {
        any = false;
        for (j, x) in live.iter_mut().enumerate().skip(lo) {
            let mo = mrow + j * mask.stride[3];
            if j >= mask.len || mask.keep.is_some_and(|mb| !mb[mo]) {
                *x = f32::NEG_INFINITY;
            } else {
                if let Some(mf) = mask.add {
                    *x += mf[mo];
                }
                any |= *x != f32::NEG_INFINITY;
            }
        }
    }
    if any {
        softmax_inplace_f32(live);
    } else {
        live.fill(0.0);
    }
}

/// The present key or value ([B, H, T, D]): the cache-extended data, already contiguous when
/// there was a past, else the operand gathered out of its layout.
fn present(data: &[f32], v: View, had_past: bool) -> KernelResult<HostTensor> {
    let d = if had_past {
        data.to_vec()
    } else {
        to_bhsd(data, v)
    };
    HostTensor::make(vec![v.b, v.h, v.s, v.d], TensorBuf::F32(d))
}

/// [B, H, S, D] → [B, S, H·D] (the 3-D layout of the output).
fn heads_to_hidden(src: &[f32], dst: &mut [f32], [bsz, hq, sq, dv]: [usize; 4]) {
    for b in 0..bsz {
        for h in 0..hq {
            for s in 0..sq {
                let from = ((b * hq + h) * sq + s) * dv;
                let to = (b * sq + s) * hq * dv + h * dv;
                dst[to..to + dv].copy_from_slice(&src[from..from + dv]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::pool::BufferPool;

    /// Naive reference: per head, softmax(q·kᵀ·scale + causal) · v.
    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        hq: usize,
        hkv: usize,
        s: usize,
        d: usize,
    ) -> Vec<f32> {
        let mut out = vec![0.0; s * hq * d];
        for h in 0..hq {
            let kh = h / (hq / hkv);
            for i in 0..s {
                let mut sc: Vec<f64> = (0..s)
                    .map(|j| {
                        if j > i {
                            return f64::NEG_INFINITY;
                        }
                        (0..d)
                            .map(|x| {
                                q[i * hq * d + h * d + x] as f64
                                    * k[j * hkv * d + kh * d + x] as f64
                            })
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                for x in sc.iter_mut() {
                    *x = (*x - m).exp() / z;
                }
                for x in 0..d {
                    out[i * hq * d + h * d + x] = (0..s)
                        .map(|j| sc[j] * v[j * hkv * d + kh * d + x] as f64)
                        .sum::<f64>() as f32;
                }
            }
        }
        out
    }

    #[test]
    fn causal_gqa_matches_naive() {
        for s in [5, 70] {
            causal_gqa_case(s);
        }
    }

    fn causal_gqa_case(s: usize) {
        let (hq, hkv, d) = (4, 2, 3);
        let gen = |n: usize, seed: u32| -> Vec<f32> {
            (0..n)
                .map(|i| (((i as u32 * 2654435761u32) ^ seed) % 1000) as f32 / 500.0 - 1.0)
                .collect()
        };
        let q = gen(s * hq * d, 1);
        let k = gen(s * hkv * d, 2);
        let v = gen(s * hkv * d, 3);
        let mut pool = BufferPool::new();
        for threads in [1, 2] {
            let mut cx = ExecCx {
                pool: &mut pool,
                threads,
            };
            let qt = HostTensor::from_vec(vec![1, s, hq * d], q.clone()).expect("q");
            let kt = HostTensor::from_vec(vec![1, s, hkv * d], k.clone()).expect("k");
            let vt = HostTensor::from_vec(vec![1, s, hkv * d], v.clone()).expect("v");
            let a = AttentionAttrs {
                is_causal: true,
                q_heads: Some(hq),
                kv_heads: Some(hkv),
                scale: None,
                softcap: 0.0,
                ..AttentionAttrs::default()
            };
            let r = attention(
                &mut cx,
                &mut Inputs::borrowed(&[Some(&qt), Some(&kt), Some(&vt)]),
                a,
                1,
                false,
            )
            .expect("attention");
            let want = naive(&q, &k, &v, hq, hkv, s, d);
            let got = r[0].as_f32().expect("f");
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "{g} vs {w}");
            }
        }
    }

    #[test]
    fn qk_matmul_output_modes() {
        // One head, 2 queries, 2 keys, head size 1, causal: q = [1, 2], k = [1, 3], scale 1.
        let q = HostTensor::from_vec(vec![1, 1, 2, 1], vec![1.0f32, 2.0]).expect("q");
        let k = HostTensor::from_vec(vec![1, 1, 2, 1], vec![1.0f32, 3.0]).expect("k");
        let v = HostTensor::from_vec(vec![1, 1, 2, 1], vec![10.0f32, 20.0]).expect("v");
        let mut pool = BufferPool::new();
        let mut cx = ExecCx {
            pool: &mut pool,
            threads: 1,
        };
        let mut qk = |mode| {
            let a = AttentionAttrs {
                is_causal: true,
                scale: Some(1.0),
                qk_mode: mode,
                ..AttentionAttrs::default()
            };
            let ins = [Some(&q), Some(&k), Some(&v)];
            let r = attention(&mut cx, &mut Inputs::borrowed(&ins), a, 1, true).expect("att");
            assert_eq!(r.len(), 4);
            r[3].as_f32().expect("f32").to_vec()
        };
        // Raw scores q·k: [[1, 3], [2, 6]]; the causal mask hides key 1 from query 0.
        assert_eq!(qk(0), vec![1.0, 3.0, 2.0, 6.0]);
        assert_eq!(qk(2), vec![1.0, f32::NEG_INFINITY, 2.0, 6.0]);
        let w = qk(3);
        let e = (-4.0f32).exp();
        assert_eq!(w[..2], [1.0, 0.0]);
        assert!((w[2] - e / (1.0 + e)).abs() < 1e-6 && (w[3] - 1.0 / (1.0 + e)).abs() < 1e-6);
    }
}
