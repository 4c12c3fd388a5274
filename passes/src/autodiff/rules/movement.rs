//! Gradient rules of data-movement ops: the reshapes (Reshape, Flatten, Squeeze, Unsqueeze) give
//! the result gradient back the operand's run-time shape, Transpose applies the inverse
//! permutation, Concat splits the gradient at the operands' extents and Split concatenates the
//! results' gradients (zeros for results the loss does not read), and Gather's rows are added
//! back into a zero table by ScatterND.

use super::{unsupported, Site};
use crate::autodiff::builder::{BResult, Builder};
use ortho_ir::semantics::axis::norm_axis;
use ortho_ir::{attrs, Op, ValueId};

pub fn supports(op: &Op, slot: usize) -> Option<bool> {
    Some(match op {
        Op::Reshape(_) | Op::Flatten(_) | Op::Squeeze | Op::Unsqueeze | Op::Transpose(_) => {
            slot == 0
        }
        Op::Split(_) => slot == 0,
        // Constant starts/ends/axes, steps of 1, a fully shaped operand (checked when emitted).
        Op::Slice => slot == 0,
        Op::Concat(_) => true,
        // Rows of a table (an embedding) along axis 0; other axes would need a transpose.
        Op::Gather(a) => slot == 0 && a.axis() == 0,
        _ => return None,
    })
}

pub fn apply(b: &mut Builder<'_>, s: &Site) -> Option<BResult<Vec<Option<ValueId>>>> {
    supports(&s.op, 0)?;
    Some(emit(b, s))
}

fn emit(b: &mut Builder<'_>, s: &Site) -> BResult<Vec<Option<ValueId>>> {
    let mut dx: Vec<Option<ValueId>> = vec![None; s.x.len()];
    match &s.op {
        Op::Reshape(_) | Op::Flatten(_) | Op::Squeeze | Op::Unsqueeze => {
            let x = s.x(b, 0)?;
            let dy = s.dy0(b)?;
            dx[0] = Some(b.reshape_like(dy, x));
        }
        Op::Transpose(a) => {
            let x = s.x(b, 0)?;
            let dy = s.dy0(b)?;
            let r = b.rank(x)?;
            let perm: Vec<usize> = match &a.perm {
                Some(p) => p
                    .iter()
                    .map(|&i| usize::try_from(i).ok().filter(|&i| i < r))
                    .collect::<Option<Vec<usize>>>()
                    .ok_or_else(|| unsupported(b, format!("bad perm {p:?}")))?,
                None => (0..r).rev().collect(),
            };
            let mut inv = vec![0i64; r];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i as i64;
            }
            dx[0] = Some(b.transpose(dy, inv));
        }
        Op::Concat(a) => {
            let dy = s.dy0(b)?;
            let r = b.rank(s.y[0])?;
            let axis = a
                .axis
                .ok_or_else(|| unsupported(b, "Concat without axis"))?;
            let ax = norm_axis(axis, r).map_err(|e| unsupported(b, e.to_string()))?;
            let xs: Vec<ValueId> = s.x.iter().flatten().copied().collect();
            let mut sizes = Vec::with_capacity(xs.len());
            for &x in &xs {
                let d = b.dims(x)?;
                sizes.push(d.get(ax).and_then(|d| d.fixed()));
            }
            let split = if let Some(fixed) = sizes.iter().copied().collect::<Option<Vec<i64>>>() {
                b.ints(&fixed, "split")
            } else if b.opset >= 15 {
                // Extents known only at run time: each operand's dim along the axis.
                let parts: Vec<ValueId> = xs
                    .iter()
                    .map(|&x| {
                        let op = Op::Shape(attrs::Shape {
                            start: Some(ax as i64),
                            end: Some(ax as i64 + 1),
                        });
                        b.one(op, &[x], "extent")
                    })
                    .collect();
                let op = Op::Concat(attrs::Concat { axis: Some(0) });
                b.one(op, &parts, "split")
            } else {
                return Err(unsupported(b, "Concat of run-time extents before opset 15"));
            };
            let op = Op::Split(attrs::Split {
                axis: Some(ax as i64),
                ..Default::default()
            });
            let parts = b.node(op, &[dy, split], xs.len(), "concat_grad");
            let mut k = 0;
            for (slot, x) in s.x.iter().enumerate() {
                if x.is_some() {
                    if s.wants(slot) {
                        dx[slot] = Some(parts[k]);
                    }
                    k += 1;
                }
            }
        }
        Op::Split(a) => {
            let r = b.rank(s.x(b, 0)?)?;
            let ax = norm_axis(a.axis(), r).map_err(|e| unsupported(b, e.to_string()))?;
            let mut parts = Vec::with_capacity(s.y.len());
            for (i, &y) in s.y.iter().enumerate() {
                parts.push(match s.dy.get(i).copied().flatten() {
                    Some(d) => d,
                    None => b.zeros_like(y)?,
                });
            }
            let op = Op::Concat(attrs::Concat {
                axis: Some(ax as i64),
            });
            dx[0] = Some(b.one(op, &parts, "split_grad"));
        }
        Op::Slice => dx[0] = Some(slice(b, s)?),
        Op::Gather(_) => {
            // Each gathered row's gradient is added back into its row of a zero table:
            // ScatterND with reduction `add` (an index repeated in the batch sums).
            let table = s.x(b, 0)?;
            let mut idx = s.x(b, 1)?;
            let dy = s.dy0(b)?;
            if b.ty(idx).dtype() != Some(ortho_ir::DType::I64) {
                let to = Op::Cast(attrs::Cast {
                    to: Some(ortho_ir::DType::I64.code() as i64),
                    ..Default::default()
                });
                idx = b.one(to, &[idx], "indices");
            }
            let tuples = b.unsqueeze(idx, &[-1]);
            let zeros = b.zeros_like(table)?;
            let op = Op::ScatterND(attrs::ScatterND {
                reduction: Some("add".into()),
            });
            dx[0] = Some(b.one(op, &[zeros, tuples, dy], "gather_grad"));
        }
        op => {
            return Err(unsupported(
                b,
                format!("no movement rule for {}", op.name()),
            ))
        }
    }
    Ok(dx)
}

/// Slice's gradient: the result gradient with zeros concatenated before and after it along each
/// sliced axis, which needs constant slice bounds, unit steps and a fully shaped operand.
fn slice(b: &mut Builder<'_>, s: &Site) -> BResult<ValueId> {
    let x = s.x(b, 0)?;
    let dy = s.dy0(b)?;
    let dims: Vec<usize> = b
        .dims(x)?
        .iter()
        .map(|d| d.fixed().and_then(|v| usize::try_from(v).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| unsupported(b, "Slice of an operand with run-time dims"))?;
    let mut consts = Vec::new();
    for slot in 1..5 {
        consts.push(match s.x.get(slot).copied().flatten() {
            Some(v) => Some(
                b.const_ints(v)
                    .ok_or_else(|| unsupported(b, "Slice bounds computed at run time"))?,
            ),
            None => None,
        });
    }
    let (starts, ends) = match (&consts[0], &consts[1]) {
        (Some(st), Some(en)) => (st.clone(), en.clone()),
        _ => return Err(unsupported(b, "Slice without starts and ends")),
    };
    let plan = ortho_ir::semantics::slice::slice_plan(
        &dims,
        &starts,
        &ends,
        consts[2].as_deref(),
        consts[3].as_deref(),
    )
    .map_err(|e| unsupported(b, e.to_string()))?;
    let dt = b.dtype(x)?;
    let mut cur: Vec<usize> = plan.iter().map(|p| p.len).collect();
    let mut g = dy;
    for (ax, (p, &dim)) in plan.iter().zip(&dims).enumerate() {
        if p.len == dim {
            continue;
        }
        if p.step != 1 {
            return Err(unsupported(b, "Slice with a step other than 1"));
        }
        let before = p.start.max(0) as usize;
        let after = dim - before - p.len;
        let mut parts = Vec::with_capacity(3);
        for (n, first) in [(before, true), (after, false)] {
            if n == 0 {
                continue;
            }
            let mut zs = cur.clone();
            zs[ax] = n;
            // Zeros made at run time from their shape, so the module holds no zero tensors.
            let shape: Vec<i64> = zs.iter().map(|&d| d as i64).collect();
            let sh = b.ints(&shape, "pad_shape");
            let zero =
                b.m.add_tensor(crate::autodiff::builder::scalar_tensor(dt, 0.0, vec![1]));
            let op = Op::ConstantOfShape(attrs::ConstantOfShape { value: Some(zero) });
            let z = b.one(op, &[sh], "slice_pad");
            if first {
                parts.push(z);
                parts.push(g);
            } else {
                if parts.is_empty() {
                    parts.push(g);
                }
                parts.push(z);
            }
        }
        let op = Op::Concat(attrs::Concat {
            axis: Some(ax as i64),
        });
        g = b.one(op, &parts, "slice_grad");
        cur[ax] = dim;
    }
    Ok(g)
}
