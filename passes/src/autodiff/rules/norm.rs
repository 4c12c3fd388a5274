//! Gradient rules of the fused normalization and position ops: RMSNormalization,
//! LayerNormalization and RotaryEmbedding (the spellings of `fused.onnx`; the decomposed
//! spellings differentiate through the elementwise and reduction rules).
//!
//! RMSNorm, `y = g ⊙ x̂` with `x̂ = x·r`, `r = (mean(x²) + ε)^(−1/2)` over the normalized axes:
//! `dg = Σ dy ⊙ x̂` over the axes g is broadcast along, and with `d = dy ⊙ g`,
//! `dx = r·(d − x̂ ⊙ mean(d ⊙ x̂))`.
//! LayerNorm, `y = g ⊙ x̂ + β` with `x̂ = (x − μ)·r`, `r = (var(x) + ε)^(−1/2)` (biased variance)
//! over the normalized axes: `dg = Σ dy ⊙ x̂`, `dβ = Σ dy` over the axes they are broadcast
//! along, and with `d = dy ⊙ g`, `dx = r·(d − mean(d) − x̂ ⊙ mean(d ⊙ x̂))`. Its optional mean and
//! inverse-deviation results are statistics: no gradient flows back from them.
//! RotaryEmbedding rotates pairs of features by position-dependent angles: an orthogonal map,
//! so its transpose is the rotation by the opposite angles, `RotaryEmbedding(dy, cos, −sin)`.

use super::{unsupported, Site};
use crate::autodiff::builder::{BResult, Builder};
use ortho_ir::semantics::axis::norm_axis;
use ortho_ir::{Op, ValueId};

pub fn supports(op: &Op, slot: usize) -> Option<bool> {
    Some(match op {
        Op::RMSNormalization(_) => slot < 2,
        Op::LayerNormalization(_) => slot < 3,
        Op::RotaryEmbedding(_) => slot == 0,
        _ => return None,
    })
}

pub fn apply(b: &mut Builder<'_>, s: &Site) -> Option<BResult<Vec<Option<ValueId>>>> {
    Some(match &s.op {
        Op::RMSNormalization(a) => rms_norm(b, s, a.axis(), a.epsilon()),
        Op::LayerNormalization(a) => layer_norm(b, s, a.axis(), a.epsilon()),
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

fn layer_norm(b: &mut Builder<'_>, s: &Site, axis: i64, eps: f32) -> BResult<Vec<Option<ValueId>>> {
    if s.dy.iter().skip(1).any(Option::is_some) {
        return Err(unsupported(
            b,
            "the loss depends on LayerNormalization's mean or inverse-deviation result",
        ));
    }
    let x = s.x(b, 0)?;
    let dy = s.dy0(b)?;
    let xd = b.dims(x)?;
    let r = xd.len();
    let a = norm_axis(axis, r).map_err(|e| unsupported(b, e.to_string()))?;
    let axes: Vec<i64> = (a as i64..r as i64).collect();
    let mu = b.reduce_mean(x, &axes);
    let xc = b.sub(x, mu);
    let x2 = b.mul(xc, xc);
    let var = b.reduce_mean(x2, &axes);
    let e = b.scalar(b.dtype(x)?, f64::from(eps), "eps");
    let var = b.add(var, e);
    let sd = b.one(Op::Sqrt, &[var], "std");
    let inv = b.one(Op::Reciprocal, &[sd], "inv_std");
    let xhat = b.mul(xc, inv);
    let out = b.dims(s.y[0])?;
    let mut dx = vec![None; s.x.len()];
    if s.wants(2) {
        let beta = s.x(b, 2)?;
        dx[2] = Some(b.sum_to(dy, beta, &out)?);
    }
    if s.wants(1) {
        let g = s.x(b, 1)?;
        let t = b.mul(dy, xhat);
        dx[1] = Some(b.sum_to(t, g, &out)?);
    }
    if s.wants(0) {
        let g = s.x(b, 1)?;
        let d = b.mul(dy, g);
        let md = b.reduce_mean(d, &axes);
        let dxh = b.mul(d, xhat);
        let m = b.reduce_mean(dxh, &axes);
        let t = b.mul(xhat, m);
        let t = b.sub(d, t);
        let t = b.sub(t, md);
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
