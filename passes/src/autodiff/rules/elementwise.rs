//! Gradient rules of elementwise ops: arithmetic with broadcasting, the unary functions, Where,
//! Cast and Expand. With `y = f(x)`, each rule multiplies the result gradient by `f'(x)`, written
//! with `y` where that is cheaper (`exp`, `sigmoid`, `tanh`, `sqrt`, `reciprocal`).
//! Max / Min (any number of broadcast operands) pass the gradient to every operand equal to the
//! result (at a tie each tied operand gets all of it: a kink, where only a subgradient exists);
//! Clip passes it to x where `min ≤ x ≤ max` and to the bound that is active elsewhere (for
//! `min ≤ max`; with `min > max` the result is max everywhere, a degenerate clip not handled).

use super::{unsupported, Site};
use crate::autodiff::builder::{BResult, Builder};
use ortho_ir::{attrs, Op, ValueId};

pub fn supports(op: &Op, slot: usize) -> Option<bool> {
    Some(match op {
        Op::Add | Op::Sub | Op::Mul | Op::Div => slot < 2,
        // The exponent's gradient (`y · ln a`) is not needed by the models we train.
        Op::Pow => slot == 0,
        Op::Neg
        | Op::Identity
        | Op::Sqrt
        | Op::Reciprocal
        | Op::Exp
        | Op::Log
        | Op::Tanh
        | Op::Sigmoid
        | Op::Relu
        | Op::Erf
        | Op::Cast(_)
        | Op::Expand => slot == 0,
        Op::Where => slot == 1 || slot == 2,
        Op::Max | Op::Min => true,
        Op::Clip => slot < 3,
        _ => return None,
    })
}

pub fn apply(b: &mut Builder<'_>, s: &Site) -> Option<BResult<Vec<Option<ValueId>>>> {
    supports(&s.op, 0)?;
    Some(emit(b, s))
}

fn emit(b: &mut Builder<'_>, s: &Site) -> BResult<Vec<Option<ValueId>>> {
    let dy = s.dy0(b)?;
    let y = s.y[0];
    let out = b.dims(y)?;
    let mut dx: Vec<Option<ValueId>> = vec![None; s.x.len()];
    match &s.op {
        Op::Add | Op::Sub => {
            let a = s.x(b, 0)?;
            let c = s.x(b, 1)?;
            if s.wants(0) {
                dx[0] = Some(b.sum_to(dy, a, &out)?);
            }
            if s.wants(1) {
                let d = if s.op == Op::Sub { b.neg(dy) } else { dy };
                dx[1] = Some(b.sum_to(d, c, &out)?);
            }
        }
        Op::Mul => {
            let a = s.x(b, 0)?;
            let c = s.x(b, 1)?;
            if s.wants(0) {
                let t = b.mul(dy, c);
                dx[0] = Some(b.sum_to(t, a, &out)?);
            }
            if s.wants(1) {
                let t = b.mul(dy, a);
                dx[1] = Some(b.sum_to(t, c, &out)?);
            }
        }
        Op::Div => {
            let a = s.x(b, 0)?;
            let c = s.x(b, 1)?;
            if s.wants(0) {
                let t = b.div(dy, c);
                dx[0] = Some(b.sum_to(t, a, &out)?);
            }
            if s.wants(1) {
                // d(a/c)/dc = -a/c² = -y/c.
                let t = b.mul(dy, y);
                let t = b.div(t, c);
                let t = b.neg(t);
                dx[1] = Some(b.sum_to(t, c, &out)?);
            }
        }
        Op::Pow => {
            let a = s.x(b, 0)?;
            let mut e = s.x(b, 1)?;
            let dt = b.dtype(a)?;
            if b.ty(e).dtype() != Some(dt) {
                // ONNX allows an integer exponent; the derivative is computed in a's type.
                let to = Op::Cast(attrs::Cast {
                    to: Some(dt.code() as i64),
                    ..Default::default()
                });
                e = b.one(to, &[e], "exp_cast");
            }
            let one = b.scalar(dt, 1.0, "one");
            let em1 = b.sub(e, one);
            let p = b.one(Op::Pow, &[a, em1], "pow");
            let t = b.mul(p, e);
            let t = b.mul(dy, t);
            dx[0] = Some(b.sum_to(t, a, &out)?);
        }
        Op::Neg => dx[0] = Some(b.neg(dy)),
        Op::Identity => dx[0] = Some(dy),
        Op::Sqrt => {
            let t = b.scale(dy, y, 0.5)?;
            dx[0] = Some(b.div(t, y));
        }
        Op::Reciprocal => {
            let t = b.mul(dy, y);
            let t = b.mul(t, y);
            dx[0] = Some(b.neg(t));
        }
        Op::Exp => dx[0] = Some(b.mul(dy, y)),
        Op::Log => {
            let x = s.x(b, 0)?;
            dx[0] = Some(b.div(dy, x));
        }
        Op::Tanh => {
            let one = b.scalar(b.dtype(y)?, 1.0, "one");
            let y2 = b.mul(y, y);
            let t = b.sub(one, y2);
            dx[0] = Some(b.mul(dy, t));
        }
        Op::Sigmoid => {
            let one = b.scalar(b.dtype(y)?, 1.0, "one");
            let t = b.sub(one, y);
            let t = b.mul(y, t);
            dx[0] = Some(b.mul(dy, t));
        }
        Op::Relu => {
            let x = s.x(b, 0)?;
            let zero = b.scalar(b.dtype(x)?, 0.0, "zero");
            let pos = b.one(Op::Greater, &[x, zero], "positive");
            dx[0] = Some(b.one(Op::Where, &[pos, dy, zero], "relu_grad"));
        }
        Op::Erf => {
            // d erf(x)/dx = 2/√π · exp(−x²).
            let x = s.x(b, 0)?;
            let x2 = b.mul(x, x);
            let nx2 = b.neg(x2);
            let e = b.one(Op::Exp, &[nx2], "exp");
            let t = b.scale(e, x, std::f64::consts::FRAC_2_SQRT_PI)?;
            dx[0] = Some(b.mul(dy, t));
        }
        Op::Cast(_) => {
            let x = s.x(b, 0)?;
            let dt = b.dtype(x)?;
            let to = Op::Cast(attrs::Cast {
                to: Some(dt.code() as i64),
                ..Default::default()
            });
            dx[0] = Some(b.one(to, &[dy], "cast"));
        }
        Op::Expand => {
            let x = s.x(b, 0)?;
            dx[0] = Some(b.sum_to(dy, x, &out)?);
        }
        Op::Where => {
            let c = s.x(b, 0)?;
            let zero = b.scalar(b.dtype(y)?, 0.0, "zero");
            if s.wants(1) {
                let a = s.x(b, 1)?;
                let t = b.one(Op::Where, &[c, dy, zero], "where_grad");
                dx[1] = Some(b.sum_to(t, a, &out)?);
            }
            if s.wants(2) {
                let a = s.x(b, 2)?;
                let t = b.one(Op::Where, &[c, zero, dy], "where_grad");
                dx[2] = Some(b.sum_to(t, a, &out)?);
            }
        }
        Op::Max | Op::Min => {
            let zero = b.scalar(b.dtype(y)?, 0.0, "zero");
            for (slot, d) in dx.iter_mut().enumerate() {
                if !s.wants(slot) {
                    continue;
                }
                let a = s.x(b, slot)?;
                let hit = b.one(Op::Equal, &[a, y], "selected");
                let t = b.one(Op::Where, &[hit, dy, zero], "select_grad");
                *d = Some(b.sum_to(t, a, &out)?);
            }
        }
        Op::Clip => {
            // Below the lower bound the result is min, above the upper one max, else x.
            let x = s.x(b, 0)?;
            let zero = b.scalar(b.dtype(y)?, 0.0, "zero");
            let lo = s.x.get(1).copied().flatten();
            let hi = s.x.get(2).copied().flatten();
            let below = lo.map(|l| b.one(Op::Less, &[x, l], "below"));
            let above = hi.map(|h| b.one(Op::Greater, &[x, h], "above"));
            if s.wants(0) {
                let mut t = dy;
                for c in [below, above].into_iter().flatten() {
                    t = b.one(Op::Where, &[c, zero, t], "clip_grad");
                }
                dx[0] = Some(t);
            }
            for (slot, bound, hit) in [(1, lo, below), (2, hi, above)] {
                if let (true, Some(v), Some(c)) = (s.wants(slot), bound, hit) {
                    let t = b.one(Op::Where, &[c, dy, zero], "bound_grad");
                    dx[slot] = Some(b.sum_to(t, v, &out)?);
                }
            }
        }
        op => {
            return Err(unsupported(
                b,
                format!("no elementwise rule for {}", op.name()),
            ))
        }
    }
    Ok(dx)
}
