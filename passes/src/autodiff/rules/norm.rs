//! Gradient rules of the fused normalization and position ops: RMSNormalization and
//! RotaryEmbedding (the spellings of `fused.onnx`; the decomposed spellings differentiate through
//! the elementwise and reduction rules).
//!
//! RMSNorm, `y = g ⊙ x̂` with `x̂ = x·r`, `r = (mean(x²) + ε)^(−1/2)` over the normalized axes:
//! `dg = Σ dy ⊙ x̂` over the axes g is broadcast along, and with `d = dy ⊙ g`,
//! `dx = r·(d − x̂ ⊙ mean(d ⊙ x̂))`.
//! RotaryEmbedding rotates pairs of features by position-dependent angles: an orthogonal map,
//! so its transpose is the rotation by the opposite angles, `RotaryEmbedding(dy, cos, −sin)`.

use super::{unsupported, Site};
use crate::autodiff::builder::{BResult, Builder};
use ortho_ir::semantics::axis::norm_axis;
use ortho_ir::{Op, ValueId};

pub fn supports(op: &Op, slot: usize) -> Option<bool> {
    Some(match op {
        Op::RMSNormalization(_) => slot < 2,
        Op::RotaryEmbedding(_) => slot == 0,
        _ => return None,
    })
}

pub fn apply(b: &mut Builder<'_>, s: &Site) -> Option<BResult<Vec<Option<ValueId>>>> {
    Some(match &s.op {
        Op::RMSNormalization(a) => rms_norm(b, s, a.axis(), a.epsilon()),
        Op::RotaryEmbedding(_) => rotary(b, s),
        _ => return None,
    })
}

fn rms_norm(b: &mut Builder<'_>, s: &Site, axis: i64, eps: f32) -> BResult<Vec<Option<ValueId>>> {
    let x = s.x(b, 0)?;
    let g = s.x(b, 1)?;
    let dy = s.dy0(b)?;
    let xd = b.dims(x)?;
    let r = xd.len();
    let a = norm_axis(axis, r).map_err(|e| unsupported(b, e.to_string()))?;
    let axes: Vec<i64> = (a as i64..r as i64).collect();
    let x2 = b.mul(x, x);
    let ms = b.reduce_mean(x2, &axes);
    let e = b.scalar(b.dtype(x)?, f64::from(eps), "eps");
    let ms = b.add(ms, e);
    let sd = b.one(Op::Sqrt, &[ms], "rms");
    let inv = b.one(Op::Reciprocal, &[sd], "inv_rms");
    let xhat = b.mul(x, inv);
    let mut dx = vec![None, None];
    if s.wants(1) {
        let t = b.mul(dy, xhat);
        let out = b.dims(s.y[0])?;
        dx[1] = Some(b.sum_to(t, g, &out)?);
    }
    if s.wants(0) {
        let d = b.mul(dy, g);
        let dxh = b.mul(d, xhat);
        let m = b.reduce_mean(dxh, &axes);
        let t = b.mul(xhat, m);
        let t = b.sub(d, t);
        dx[0] = Some(b.mul(t, inv));
    }
    Ok(dx)
}

fn rotary(b: &mut Builder<'_>, s: &Site) -> BResult<Vec<Option<ValueId>>> {
    let dy = s.dy0(b)?;
    let cos = s.x(b, 1)?;
    let sin = s.x(b, 2)?;
    let nsin = b.neg(sin);
    let mut operands = vec![dy, cos, nsin];
    if let Some(p) = s.x.get(3).copied().flatten() {
        operands.push(p);
    }
    let mut dx = vec![None; s.x.len()];
    dx[0] = Some(b.one(s.op.clone(), &operands, "rotary_grad"));
    Ok(dx)
}
