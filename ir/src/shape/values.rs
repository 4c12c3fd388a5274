//! Known values of small integer tensors ("shape values"), kept in a side table next to the
//! types so that shapes computed at run time still resolve: `Shape(x)` of a
//! `[batch, seq, 576]` value is known to hold `[batch, seq, 576]`, and a `Reshape` whose target
//! is `Concat(Slice(Shape(x)), [9, 64])` gets a symbolic result shape.
//!
//! Values are lists of [`Dim`]s: numbers where they are known, symbols where they stand for a
//! symbolic dimension, `Unknown` elsewhere. Scalars are one-element lists (their rank is in the
//! type). Only integer and boolean results of rank ≤ 1 with at most [`MAX_ELEMS`] elements are
//! tracked: these are the tensors that feed shape operands, and the limit keeps the table small.

use super::cx::NodeCx;
use super::dims::{add_dim, div_dim, mul_dim, Product};
use super::index::{shape_range, slice_params, slice_range};
use crate::module::Module;
use crate::op::Op;
use crate::tensor::TensorId;
use crate::types::{Dim, Type};

/// The largest tensor whose contents are tracked.
pub(crate) const MAX_ELEMS: usize = 64;

/// The known value of the node's (single) result, whose inferred type is `out`.
pub(crate) fn propagate(cx: &NodeCx, out: &Type) -> Option<Vec<Dim>> {
    let t = out.as_tensor()?;
    if !(t.dtype.is_int() || t.dtype == crate::types::DType::Bool)
        || t.rank().is_some_and(|r| r > 1)
    {
        return None;
    }
    compute(cx).filter(|v| v.len() <= MAX_ELEMS)
}

/// The contents of a small integer constant.
fn int_tensor(m: &Module, t: TensorId) -> Option<Vec<Dim>> {
    if t.index() >= m.tensors.len() {
        return None;
    }
    let td = m.tensor(t);
    if td.dims.len() > 1 || td.numel()? > MAX_ELEMS as u64 {
        return None;
    }
    Some(td.to_i64_vec()?.into_iter().map(Dim::Fixed).collect())
}

fn compute(cx: &NodeCx) -> Option<Vec<Dim>> {
    match &cx.node.op {
        Op::Const(t) => int_tensor(cx.m, *t),
        Op::Constant(a) => match (a.value, a.value_int, &a.value_ints) {
            (Some(t), _, _) => int_tensor(cx.m, t),
            (_, Some(v), _) => Some(vec![Dim::Fixed(v)]),
            (_, _, Some(v)) => Some(v.iter().map(|&x| Dim::Fixed(x)).collect()),
            _ => None,
        },
        Op::Shape(a) => {
            let s = cx.shape(0)?;
            let (from, to) = shape_range(a, s.len());
            s.get(from..to).map(<[Dim]>::to_vec)
        }
        Op::Size => Some(vec![Product::of(cx.shape(0)?).to_dim()]),
        // Rank changes between scalar and 1-D, and casts among integers, keep the contents.
        Op::Identity
        | Op::Cast(_)
        | Op::Reshape(_)
        | Op::Unsqueeze
        | Op::Squeeze
        | Op::Flatten(_) => cx.value(0).map(<[Dim]>::to_vec),
        Op::Gather(a) => {
            let data = cx.value(0)?;
            if cx.shape(0).map(<[Dim]>::len) != Some(1) || !matches!(a.axis(), 0 | -1) {
                return None;
            }
            let n = data.len() as i64;
            cx.ints(1)?
                .into_iter()
                .map(|i| {
                    usize::try_from(if i < 0 { i + n } else { i })
                        .ok()
                        .and_then(|i| data.get(i))
                        .cloned()
                })
                .collect()
        }
        Op::Slice => {
            let data = cx.value(0)?;
            let p = slice_params(cx, 1).ok()??;
            let (Dim::Fixed(s), Dim::Fixed(e)) = (p.starts.first()?, p.ends.first()?) else {
                return None;
            };
            let step = *p.steps.first()?;
            let (count, first) = slice_range(data.len() as i64, *s, *e, step);
            (0..count)
                .map(|k| {
                    usize::try_from(first + k * step)
                        .ok()
                        .and_then(|i| data.get(i))
                        .cloned()
                })
                .collect()
        }
        Op::Concat(_) => {
            let mut out = Vec::new();
            for s in 0..cx.n_in() {
                if cx.has(s) {
                    out.extend(cx.value(s)?.iter().cloned());
                }
            }
            Some(out)
        }
        Op::Neg => cx
            .value(0)?
            .iter()
            .map(|d| match d {
                Dim::Fixed(x) => x.checked_neg().map(Dim::Fixed),
                _ => Some(Dim::Unknown),
            })
            .collect(),
        Op::Add => binary(cx, |a, b| Some(add_dim(a, b))),
        Op::Sub => binary(cx, |a, b| match (a, b) {
            (Dim::Fixed(x), Dim::Fixed(y)) => x.checked_sub(*y).map(Dim::Fixed),
            (x, Dim::Fixed(0)) => Some(x.clone()),
            (Dim::Sym(x), Dim::Sym(y)) if x == y => Some(Dim::Fixed(0)),
            _ => Some(Dim::Unknown),
        }),
        Op::Mul => binary(cx, |a, b| Some(mul_dim(a, b))),
        Op::Div => binary(cx, |a, b| match (a, b) {
            (_, Dim::Fixed(0)) => None,
            // Integer division truncates; only exact quotients of symbols are known.
            (Dim::Fixed(x), Dim::Fixed(y)) => x.checked_div(*y).map(Dim::Fixed),
            _ => Some(div_dim(a, b).unwrap_or(Dim::Unknown)),
        }),
        Op::Max | Op::Min => {
            let max = matches!(cx.node.op, Op::Max);
            binary(cx, move |a, b| match (a, b) {
                (Dim::Fixed(x), Dim::Fixed(y)) => {
                    Some(Dim::Fixed(if max { *x.max(y) } else { *x.min(y) }))
                }
                (x, y) if x == y => Some(x.clone()),
                _ => Some(Dim::Unknown),
            })
        }
        Op::Equal => binary(cx, |a, b| match (a, b) {
            (Dim::Fixed(x), Dim::Fixed(y)) => Some(Dim::Fixed(i64::from(x == y))),
            (Dim::Sym(x), Dim::Sym(y)) if x == y => Some(Dim::Fixed(1)),
            // A symbolic dimension is never negative (exporters test shapes against -1).
            (Dim::Sym(_), Dim::Fixed(n)) | (Dim::Fixed(n), Dim::Sym(_)) if *n < 0 => {
                Some(Dim::Fixed(0))
            }
            _ => Some(Dim::Unknown),
        }),
        Op::Where => {
            let cond = cx.value(0)?;
            let (x, y) = (cx.value(1)?, cx.value(2)?);
            let n = cond.len().max(x.len()).max(y.len());
            let at = |v: &[Dim], i: usize| {
                if v.len() == 1 {
                    v.first().cloned()
                } else {
                    v.get(i).cloned()
                }
            };
            (0..n)
                .map(|i| match at(cond, i)? {
                    Dim::Fixed(0) => at(y, i),
                    Dim::Fixed(_) => at(x, i),
                    _ => Some(Dim::Unknown),
                })
                .collect()
        }
        Op::ConstantOfShape(a) => {
            let [n] = cx.ints(0)?[..] else {
                return None;
            };
            let fill = match a.value {
                Some(t) => int_tensor(cx.m, t)?.first()?.clone(),
                None => return None,
            };
            (0..=MAX_ELEMS as i64)
                .contains(&n)
                .then(|| vec![fill; n as usize])
        }
        _ => None,
    }
}

/// Element-wise `f` over two known values, broadcasting a one-element side.
fn binary(cx: &NodeCx, f: impl Fn(&Dim, &Dim) -> Option<Dim>) -> Option<Vec<Dim>> {
    let (a, b) = (cx.value(0)?, cx.value(1)?);
    let n = match (a.len(), b.len()) {
        (x, y) if x == y => x,
        (1, y) => y,
        (x, 1) => x,
        _ => return None,
    };
    let at = |v: &[Dim], i: usize| {
        if v.len() == 1 {
            v.first().cloned()
        } else {
            v.get(i).cloned()
        }
    };
    (0..n).map(|i| f(&at(a, i)?, &at(b, i)?)).collect()
}
