//! Reductions: `Reduce*` (axes as an attribute before opset 18, as an operand from 18 on —
//! whichever the node carries), `ArgMax`/`ArgMin` and `TopK`.

use super::cx::{Infer, NodeCx};
use super::dims::{axis, tensor};
use super::ShapeError;
use crate::types::{DType, Dim};

/// The attributes every `Reduce*` op shares.
pub(crate) struct ReduceAttrs<'a> {
    pub axes: Option<&'a Vec<i64>>,
    /// Resolved (the ONNX defaults applied by the attribute accessors).
    pub keepdims: i64,
    pub noop_with_empty_axes: i64,
}

/// Which axes a reduction removes, when that is known.
enum Axes {
    All,
    Some(Vec<usize>),
    /// Given as an operand whose value is not known.
    Unknown,
}

pub(crate) fn reduce(cx: &NodeCx, at: ReduceAttrs) -> Infer {
    let dtype = cx.dtype(0);
    let keep = at.keepdims != 0;
    let Some(shape) = cx.shape(0) else {
        return Ok(vec![tensor(dtype, None)]);
    };
    let rank = shape.len();
    // No axes at all (neither attribute nor operand) behaves like an empty list.
    let given: Option<Vec<i64>> = match (at.axes, cx.has(1)) {
        (Some(a), _) => Some(a.clone()),
        (None, true) => cx.ints(1),
        (None, false) => Some(Vec::new()),
    };
    let axes = match given {
        None => Axes::Unknown,
        Some(v) if v.is_empty() => {
            if at.noop_with_empty_axes != 0 {
                return Ok(vec![cx.ty(0).clone()]);
            }
            Axes::All
        }
        Some(v) => {
            let mut out = Vec::with_capacity(v.len());
            for a in v {
                out.push(axis(a, rank, "reduction axis")?);
            }
            Axes::Some(out)
        }
    };
    let reduced = |i: usize| match &axes {
        Axes::All => true,
        Axes::Some(v) => v.contains(&i),
        Axes::Unknown => false,
    };
    let out = match (&axes, keep) {
        // With unknown axes and keepdims, the rank is kept but any dimension may become 1.
        (Axes::Unknown, true) => Some(vec![Dim::Unknown; rank]),
        // Without keepdims, the rank drops by the number of axes when the operand's type says it.
        (Axes::Unknown, false) => match cx.shape(1) {
            Some([Dim::Fixed(n)]) if *n > 0 => usize::try_from(*n)
                .ok()
                .and_then(|n| rank.checked_sub(n))
                .map(|r| vec![Dim::Unknown; r]),
            _ => None,
        },
        (_, true) => Some(
            shape
                .iter()
                .enumerate()
                .map(|(i, d)| if reduced(i) { Dim::Fixed(1) } else { d.clone() })
                .collect(),
        ),
        (_, false) => Some(
            shape
                .iter()
                .enumerate()
                .filter(|(i, _)| !reduced(*i))
                .map(|(_, d)| d.clone())
                .collect(),
        ),
    };
    Ok(vec![tensor(dtype, out)])
}

/// `ArgMax`/`ArgMin`: one axis, int64 indices.
pub(crate) fn arg(cx: &NodeCx, ax: i64, keepdims: i64) -> Infer {
    let Some(shape) = cx.shape(0) else {
        return Ok(vec![tensor(DType::I64, None)]);
    };
    let a = axis(ax, shape.len(), "axis")?;
    let mut out = shape.to_vec();
    if keepdims != 0 {
        out[a] = Dim::Fixed(1);
    } else {
        out.remove(a);
    }
    Ok(vec![tensor(DType::I64, Some(out))])
}

/// `TopK(X, K)`: values and int64 indices with K along the axis.
pub(crate) fn topk(cx: &NodeCx, ax: Option<i64>) -> Infer {
    let dtype = cx.dtype(0);
    let Some(shape) = cx.shape(0) else {
        return Ok(vec![tensor(dtype, None), tensor(DType::I64, None)]);
    };
    let a = axis(ax.unwrap_or(-1), shape.len(), "axis")?;
    let k = match cx.value(1) {
        Some([d]) => d.clone(),
        Some(v) => {
            return Err(ShapeError::Value(format!(
                "K must have one element, has {}",
                v.len()
            )))
        }
        None => Dim::Unknown,
    };
    if let (Dim::Fixed(k), Dim::Fixed(n)) = (&k, &shape[a]) {
        if *k < 0 || k > n {
            return Err(ShapeError::Value(format!(
                "K = {k} is out of range for an axis of size {n}"
            )));
        }
    }
    let mut out = shape.to_vec();
    out[a] = k;
    Ok(vec![
        tensor(dtype, Some(out.clone())),
        tensor(DType::I64, Some(out)),
    ])
}
