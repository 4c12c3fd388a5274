//! Gradient rules of reductions and of the softmax family.
//!
//! ReduceSum spreads the gradient back over the reduced axes (`Expand` to the operand's shape,
//! after re-inserting the axes a `keepdims = 0` reduction removed); ReduceMean also divides by
//! the number of reduced elements. Softmax: `dx = y·(dy − Σ dy·y)`; LogSoftmax:
//! `dx = dy − exp(y)·Σ dy`, sums along the softmax axis.

use super::{unsupported, Site};
use crate::autodiff::builder::{BResult, Builder};
use ortho_ir::semantics::axis::{norm_axes, norm_axis};
use ortho_ir::{Op, ValueId};

pub fn supports(op: &Op, slot: usize) -> Option<bool> {
    Some(match op {
        Op::ReduceSum(_) | Op::ReduceMean(_) => slot == 0,
        Op::Softmax(_) | Op::LogSoftmax(_) => slot == 0,
        _ => return None,
    })
}

pub fn apply(b: &mut Builder<'_>, s: &Site) -> Option<BResult<Vec<Option<ValueId>>>> {
    Some(match &s.op {
        Op::ReduceSum(a) => reduction(
            b,
            s,
            a.axes.clone(),
            a.keepdims() != 0,
            a.noop_with_empty_axes() != 0,
            false,
        ),
        Op::ReduceMean(a) => reduction(
            b,
            s,
            a.axes.clone(),
            a.keepdims() != 0,
            a.noop_with_empty_axes() != 0,
            true,
        ),
        Op::Softmax(a) => softmax(b, s, a.axis, false),
        Op::LogSoftmax(a) => softmax(b, s, a.axis, true),
        _ => return None,
    })
}

fn reduction(
    b: &mut Builder<'_>,
    s: &Site,
    attr_axes: Option<Vec<i64>>,
    keepdims: bool,
    noop_empty: bool,
    mean: bool,
) -> BResult<Vec<Option<ValueId>>> {
    let x = s.x(b, 0)?;
    let dy = s.dy0(b)?;
    let xd = b.dims(x)?;
    let r = xd.len();
    let axes = match (attr_axes, s.x.get(1).copied().flatten()) {
        (Some(a), _) => a,
        (None, Some(v)) => b
            .const_ints(v)
            .ok_or_else(|| unsupported(b, "axes computed at run time"))?,
        (None, None) => Vec::new(),
    };
    if axes.is_empty() && noop_empty {
        let mut dx = vec![None; s.x.len()];
        dx[0] = Some(dy);
        return Ok(dx);
    }
    let axes: Vec<usize> = if axes.is_empty() {
        (0..r).collect()
    } else {
        norm_axes(&axes, r).map_err(|e| unsupported(b, e.to_string()))?
    };
    let mut g = dy;
    if !keepdims {
        let mut sorted: Vec<i64> = axes.iter().map(|&a| a as i64).collect();
        sorted.sort_unstable();
        sorted.dedup();
        g = b.unsqueeze(g, &sorted);
    }
    let shape = b.shape_of(x);
    let mut g = b.one(Op::Expand, &[g, shape], "spread");
    if mean {
        let n: Option<i64> = axes.iter().map(|&a| xd[a].fixed()).product();
        g = match n {
            Some(n) => b.scale(g, x, 1.0 / n as f64)?,
            None => {
                // The count is known only at run time: |y| / |x| elements.
                let dt = b.dtype(x)?;
                let to = Op::Cast(ortho_ir::attrs::Cast {
                    to: Some(dt.code() as i64),
                    ..Default::default()
                });
                let sy = b.one(Op::Size, &[s.y[0]], "size");
                let sx = b.one(Op::Size, &[x], "size");
                let sy = b.one(to.clone(), &[sy], "size");
                let sx = b.one(to, &[sx], "size");
                let f = b.div(sy, sx);
                b.mul(g, f)
            }
        };
    }
    let mut dx = vec![None; s.x.len()];
    dx[0] = Some(g);
    Ok(dx)
}

fn softmax(
    b: &mut Builder<'_>,
    s: &Site,
    axis: Option<i64>,
    log: bool,
) -> BResult<Vec<Option<ValueId>>> {
    if b.opset < 13 {
        // Before opset 13 the op flattens to 2-D around the axis; not needed by our models.
        return Err(unsupported(b, "Softmax before opset 13 (coerced to 2-D)"));
    }
    let y = s.y[0];
    let dy = s.dy0(b)?;
    let r = b.rank(y)?;
    let ax = norm_axis(axis.unwrap_or(-1), r).map_err(|e| unsupported(b, e.to_string()))? as i64;
    let g = if log {
        let sum = b.reduce_sum(dy, &[ax], true);
        let p = b.one(Op::Exp, &[y], "prob");
        let t = b.mul(p, sum);
        b.sub(dy, t)
    } else {
        let t = b.mul(dy, y);
        let sum = b.reduce_sum(t, &[ax], true);
        let d = b.sub(dy, sum);
        b.mul(y, d)
    };
    Ok(vec![Some(g)])
}
