//! Gradient rule of the fused `Attention` op (opset 23; the spelling of `fused.onnx`), for
//! Q, K and V in the 3-D `[B, S, H·D]` or 4-D `[B, H, S, D]` layouts, grouped-query heads, the
//! causal mask and an optional constant mask. The attention weights are recomputed in standard
//! ops from Q and K (the fused kernel does not expose them in every dtype), then, with
//! `P = softmax(scale·Q·Kᵀ + mask)` per head and `Y = P·V`:
//! `dV = Pᵀ·dY`, `dP = dY·Vᵀ`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))`, `dQ = scale·dS·K`,
//! `dK = scale·dSᵀ·Q`; a key/value head serving `G` query heads gets the sum over its group.
//! Refused by name (the models we train use none of them): gradients of the cache or score
//! results, past key/value, `nonpad_kv_seqlen`, softcap and sliding windows.

use super::{unsupported, Site};
use crate::autodiff::builder::{BResult, Builder};
use ortho_ir::{attrs, DType, Op, TensorData, ValueId};

pub fn supports(op: &Op, slot: usize) -> Option<bool> {
    match op {
        Op::Attention(_) => Some(slot < 3),
        _ => None,
    }
}

pub fn apply(b: &mut Builder<'_>, s: &Site) -> Option<BResult<Vec<Option<ValueId>>>> {
    match &s.op {
        Op::Attention(a) => Some(attention(b, s, a)),
        _ => None,
    }
}

/// Head counts and widths, from the attributes (3-D) or the shapes (4-D).
struct Layout {
    rank: usize,
    hq: i64,
    hkv: i64,
    d: i64,
    dv: i64,
}

fn layout(b: &Builder<'_>, s: &Site, a: &attrs::Attention) -> BResult<Layout> {
    let fixed = |b: &Builder<'_>, v: ValueId, i: usize| -> BResult<i64> {
        b.dims(v)?
            .get(i)
            .and_then(|d| d.fixed())
            .ok_or_else(|| unsupported(b, format!("dim {i} of an Attention operand is not fixed")))
    };
    let (q, k, v) = (s.x(b, 0)?, s.x(b, 1)?, s.x(b, 2)?);
    let rank = b.rank(q)?;
    if [b.rank(k)?, b.rank(v)?] != [rank, rank] {
        return Err(unsupported(b, "Q, K and V of different ranks"));
    }
    let l = match rank {
        4 => Layout {
            rank,
            hq: fixed(b, q, 1)?,
            hkv: fixed(b, k, 1)?,
            d: fixed(b, q, 3)?,
            dv: fixed(b, v, 3)?,
        },
        3 => {
            let (hq, hkv) = match (a.q_num_heads, a.kv_num_heads) {
                (Some(hq), Some(hkv)) if hq > 0 && hkv > 0 => (hq, hkv),
                _ => return Err(unsupported(b, "3-D Attention without head counts")),
            };
            Layout {
                rank,
                hq,
                hkv,
                d: fixed(b, q, 2)? / hq,
                dv: fixed(b, v, 2)? / hkv,
            }
        }
        r => return Err(unsupported(b, format!("Attention operands of rank {r}"))),
    };
    if l.hq % l.hkv != 0 || l.d <= 0 || l.dv <= 0 {
        return Err(unsupported(
            b,
            "query heads not a multiple of key/value heads",
        ));
    }
    Ok(l)
}

fn reshape(b: &mut Builder<'_>, x: ValueId, shape: &[i64]) -> ValueId {
    let s = b.ints(shape, "shape");
    b.one(Op::Reshape(attrs::Reshape::default()), &[x, s], "reshape")
}

/// `[B, S, h·w]` → `[B, h, S, w]` (4-D operands are already so).
fn to_heads(b: &mut Builder<'_>, l: &Layout, x: ValueId, h: i64) -> ValueId {
    if l.rank == 4 {
        return x;
    }
    let r = reshape(b, x, &[0, 0, h, -1]);
    b.transpose(r, vec![0, 2, 1, 3])
}

/// The inverse of [`to_heads`].
fn from_heads(b: &mut Builder<'_>, l: &Layout, x: ValueId) -> ValueId {
    if l.rank == 4 {
        return x;
    }
    let t = b.transpose(x, vec![0, 2, 1, 3]);
    reshape(b, t, &[0, 0, -1])
}

/// `[B, hkv, T, w]` → `[B, hkv·g, T, w]`, each head repeated for its group of query heads.
fn repeat(b: &mut Builder<'_>, x: ValueId, hkv: i64, g: i64, w: i64) -> ValueId {
    if g == 1 {
        return x;
    }
    let u = b.unsqueeze(x, &[2]);
    let reps = b.ints(&[1, 1, g, 1, 1], "repeat");
    let e = b.one(Op::Expand, &[u, reps], "repeat");
    reshape(b, e, &[0, hkv * g, -1, w])
}

/// The adjoint of [`repeat`]: the sum over each group.
fn group_sum(b: &mut Builder<'_>, x: ValueId, hkv: i64, g: i64, w: i64) -> ValueId {
    if g == 1 {
        return x;
    }
    let r = reshape(b, x, &[0, hkv, g, -1, w]);
    b.reduce_sum(r, &[2], false)
}

/// A scalar int64 from a one-element shape slice.
fn dim_of(b: &mut Builder<'_>, x: ValueId, axis: i64) -> ValueId {
    let op = Op::Shape(attrs::Shape {
        start: Some(axis),
        end: Some(axis + 1),
    });
    let s = b.one(op, &[x], "dim");
    let zero = b.ints(&[0], "axes");
    b.one(Op::Squeeze, &[s, zero], "dim")
}

/// `[S, T]` booleans: key j is visible to query i when `j ≤ i + (T − S)` (the causal frontier
/// offset by the keys before the queries, as the kernel has it).
fn causal(b: &mut Builder<'_>, q4: ValueId, k4: ValueId) -> ValueId {
    let sq = dim_of(b, q4, 2);
    let t = dim_of(b, k4, 2);
    let zero = b.konst(TensorData::from_i64(vec![], &[0]), "zero");
    let one = b.konst(TensorData::from_i64(vec![], &[1]), "one");
    let rows = b.one(Op::Range, &[zero, sq, one], "rows");
    let cols = b.one(Op::Range, &[zero, t, one], "cols");
    let off = b.sub(t, sq);
    let rows = b.add(rows, off);
    let rows = b.unsqueeze(rows, &[1]);
    b.one(Op::LessOrEqual, &[cols, rows], "visible")
}

fn attention(b: &mut Builder<'_>, s: &Site, a: &attrs::Attention) -> BResult<Vec<Option<ValueId>>> {
    if s.dy.iter().skip(1).any(Option::is_some) {
        return Err(unsupported(
            b,
            "the loss depends on Attention's cache or score results",
        ));
    }
    if s.x.iter().skip(4).any(Option::is_some) {
        return Err(unsupported(
            b,
            "Attention with past key/value or nonpad_kv_seqlen",
        ));
    }
    if a.softcap() != 0.0 || a.left_window_size() != -1 || a.right_window_size() != -1 {
        return Err(unsupported(b, "Attention with softcap or a sliding window"));
    }
    let l = layout(b, s, a)?;
    let (q, k, v) = (s.x(b, 0)?, s.x(b, 1)?, s.x(b, 2)?);
    let dy = s.dy0(b)?;
    let dt = b.dtype(q)?;
    let g = l.hq / l.hkv;
    let q4 = to_heads(b, &l, q, l.hq);
    let k4 = to_heads(b, &l, k, l.hkv);
    let v4 = to_heads(b, &l, v, l.hkv);
    let dy4 = to_heads(b, &l, dy, l.hq);
    let kh = repeat(b, k4, l.hkv, g, l.d);
    let vh = repeat(b, v4, l.hkv, g, l.dv);
    // The kernel's scale is an f32; the same value is used here.
    let scale = f64::from(a.scale.unwrap_or(1.0 / (l.d as f32).sqrt()));
    let kt = b.transpose(kh, vec![0, 1, 3, 2]);
    let qk = b.one(Op::MatMul, &[q4, kt], "scores");
    let mut sc = b.scale(qk, q, scale)?;
    let ninf = b.scalar(dt, f64::NEG_INFINITY, "masked");
    if let Some(m) = s.x.get(3).copied().flatten() {
        sc = if b.ty(m).dtype() == Some(DType::Bool) {
            b.one(Op::Where, &[m, sc, ninf], "masked")
        } else {
            b.add(sc, m)
        };
    }
    if a.is_causal() != 0 {
        let vis = causal(b, q4, kh);
        sc = b.one(Op::Where, &[vis, sc, ninf], "causal");
    }
    let p = b.one(
        Op::Softmax(attrs::Softmax { axis: Some(-1) }),
        &[sc],
        "weights",
    );
    let mut dx = vec![None; s.x.len()];
    if s.wants(2) {
        let pt = b.transpose(p, vec![0, 1, 3, 2]);
        let dvh = b.one(Op::MatMul, &[pt, dy4], "dV");
        let dv4 = group_sum(b, dvh, l.hkv, g, l.dv);
        dx[2] = Some(from_heads(b, &l, dv4));
    }
    if s.wants(0) || s.wants(1) {
        let vt = b.transpose(vh, vec![0, 1, 3, 2]);
        let dp = b.one(Op::MatMul, &[dy4, vt], "dP");
        let pdp = b.mul(dp, p);
        let row = b.reduce_sum(pdp, &[-1], true);
        let centered = b.sub(dp, row);
        let ds = b.mul(p, centered);
        let ds = b.scale(ds, q, scale)?;
        if s.wants(0) {
            let dq4 = b.one(Op::MatMul, &[ds, kh], "dQ");
            dx[0] = Some(from_heads(b, &l, dq4));
        }
        if s.wants(1) {
            let dst = b.transpose(ds, vec![0, 1, 3, 2]);
            let dkh = b.one(Op::MatMul, &[dst, q4], "dK");
            let dk4 = group_sum(b, dkh, l.hkv, g, l.d);
            dx[1] = Some(from_heads(b, &l, dk4));
        }
    }
    Ok(dx)
}
