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
