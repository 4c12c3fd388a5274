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
        // Constant starts/ends/axes/steps and a fully shaped operand (checked when emitted).
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

/// Slice's gradient, which needs constant slice bounds and a fully shaped operand. With unit
/// steps: the result gradient with zeros concatenated before and after it along each sliced
/// axis. With any other step (negative ones included): the result gradient scattered into a
/// zero tensor of the operand's shape at the constant index of every element read
/// ([`strided_slice`]).
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
    if plan.iter().any(|p| p.step != 1 && p.len > 1) {
        return strided_slice(b, x, dy, &plan);
    }
    let dt = b.dtype(x)?;
    let mut cur: Vec<usize> = plan.iter().map(|p| p.len).collect();
    let mut g = dy;
    for (ax, (p, &dim)) in plan.iter().zip(&dims).enumerate() {
        // A whole axis read forwards needs no padding (a reversed one took the strided path).
        if p.len == dim {
            continue;
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

/// The largest index table [`strided_slice`] builds (elements × rank), so a stepped slice of a
/// huge tensor is refused by name instead of filling memory with indices.
const MAX_STRIDED_INDICES: usize = 1 << 24;

/// The gradient of a slice with steps other than 1: `ScatterND(zeros, idx, dy)` where `idx`
/// holds, for each result element in row-major order, the operand index it was read from
/// (`start + i · step` on every axis). The indices are distinct, so no reduction is needed.
fn strided_slice(
    b: &mut Builder<'_>,
    x: ValueId,
    dy: ValueId,
    plan: &[ortho_ir::semantics::slice::SliceAxis],
) -> BResult<ValueId> {
    let out: Vec<usize> = plan.iter().map(|p| p.len).collect();
    let n: usize = out.iter().product();
    let rank = plan.len();
    if n == 0 {
        return b.zeros_like(x);
    }
    if n.saturating_mul(rank) > MAX_STRIDED_INDICES {
        return Err(unsupported(
            b,
            format!("Slice with steps reading {n} elements (index table too large)"),
        ));
    }
    let mut idx = Vec::with_capacity(n * rank);
    let mut pos = vec![0usize; rank];
    for _ in 0..n {
        idx.extend(
            plan.iter()
                .zip(&pos)
                .map(|(p, &i)| p.start + i as i64 * p.step),
        );
        // The next result position in row-major order (the last axis fastest).
        for ax in (0..rank).rev() {
            pos[ax] += 1;
            if pos[ax] < out[ax] {
                break;
            }
            pos[ax] = 0;
        }
    }
    let mut shape: Vec<i64> = out.iter().map(|&d| d as i64).collect();
    shape.push(rank as i64);
    let idx = b.konst(ortho_ir::TensorData::from_i64(shape, &idx), "slice_indices");
    let zeros = b.zeros_like(x)?;
    let op = Op::ScatterND(attrs::ScatterND::default());
    Ok(b.one(op, &[zeros, idx, dy], "slice_grad"))
}
