//! Indexing and tensor-creating ops: `Gather`, `GatherElements`, `GatherND`, `Scatter*`,
//! `Slice`, `Shape`, `Size`, `Range`, `ConstantOfShape`, `Constant`, `NonZero`, `OneHot`.

use super::cx::{Infer, NodeCx};
use super::dims::{axis, fmt_shape, tensor};
use super::elementwise::{tensor_attr_dtype, tensor_type};
use super::ShapeError;
use crate::op::attrs;
use crate::types::{DType, Dim, Type};

/// An `end` at least this large means "to the end of the axis" (exporters write INT32_MAX or
/// INT64_MAX), so slicing a symbolic dimension with it keeps the symbol.
const TO_END: i64 = i32::MAX as i64;

pub(crate) fn gather(cx: &NodeCx, at: &attrs::Gather) -> Infer {
    let dtype = cx.dtype(0);
    let (Some(data), Some(idx)) = (cx.shape(0), cx.shape(1)) else {
        return Ok(vec![tensor(dtype, None)]);
    };
    let a = axis(at.axis(), data.len(), "axis")?;
    if let (Dim::Fixed(d @ 0..), Some(vals)) = (&data[a], cx.ints(1)) {
        if let Some(bad) = vals.iter().find(|&&i| i < -d || i >= *d) {
            return Err(ShapeError::Value(format!(
                "index {bad} is out of range for an axis of size {d}"
            )));
        }
    }
    let mut out = data[..a].to_vec();
    out.extend(idx.iter().cloned());
    out.extend(data[a + 1..].iter().cloned());
    Ok(vec![tensor(dtype, Some(out))])
}

pub(crate) fn gather_elements(cx: &NodeCx) -> Infer {
    if let (Some(d), Some(i)) = (cx.shape(0), cx.shape(1)) {
        if d.len() != i.len() {
            return Err(ShapeError::Rank(format!(
                "data has rank {} but indices rank {}",
                d.len(),
                i.len()
            )));
        }
    }
    Ok(vec![tensor(cx.dtype(0), cx.shape(1).map(<[Dim]>::to_vec))])
}

pub(crate) fn gather_nd(cx: &NodeCx, at: &attrs::GatherND) -> Infer {
    let dtype = cx.dtype(0);
    let (Some(data), Some(idx)) = (cx.shape(0), cx.shape(1)) else {
        return Ok(vec![tensor(dtype, None)]);
    };
    let b = usize::try_from(at.batch_dims())
        .map_err(|_| ShapeError::Attribute("batch_dims must be ≥ 0".to_string()))?;
    let Some((last, lead)) = idx.split_last() else {
        return Err(ShapeError::Rank("indices must have rank ≥ 1".into()));
    };
    if b >= data.len().min(idx.len()) {
        return Err(ShapeError::Attribute(format!(
            "batch_dims {b} must be less than the ranks of data and indices"
        )));
    }
    let Dim::Fixed(k) = last else {
        return Ok(vec![tensor(dtype, None)]);
    };
    let k = usize::try_from(*k).ok().filter(|k| b + k <= data.len());
    let Some(k) = k else {
        return Err(ShapeError::Rank(format!(
            "index tuples of length {last} do not fit data {} with {b} batch dims",
            fmt_shape(data)
        )));
    };
    let mut out = lead.to_vec();
    out.extend(data[b + k..].iter().cloned());
    Ok(vec![tensor(dtype, Some(out))])
}

/// The number of elements and the first index selected by `start:end:step` on an axis of
/// size `d`, with ONNX's clamping of out-of-range bounds.
pub(crate) fn slice_range(d: i64, start: i64, end: i64, step: i64) -> (i64, i64) {
    let Ok(dim) = usize::try_from(d) else {
        return (0, 0);
    };
    match crate::semantics::slice::slice_axis(dim, start, end, step) {
        Ok(p) => (p.len as i64, p.start),
        Err(_) => (0, 0),
    }
}

/// The parameters of a `Slice` node, per sliced axis, when they are all known.
pub(crate) struct SliceParams {
    pub axes: Vec<usize>,
    pub starts: Vec<Dim>,
    pub ends: Vec<Dim>,
    pub steps: Vec<i64>,
}

/// Reads starts/ends/axes/steps (operands 1–4); `Ok(None)` when some are not known.
pub(crate) fn slice_params(cx: &NodeCx, rank: usize) -> Result<Option<SliceParams>, ShapeError> {
    let (Some(starts), Some(ends)) = (cx.value(1), cx.value(2)) else {
        return Ok(None);
    };
    if starts.len() != ends.len() {
        return Err(ShapeError::Value(format!(
            "{} starts but {} ends",
            starts.len(),
            ends.len()
        )));
    }
    let n = starts.len();
    let axes: Vec<i64> = if cx.has(3) {
        match cx.ints(3) {
            Some(v) => v,
            None => return Ok(None),
        }
    } else {
        (0..n as i64).collect()
    };
    let steps: Vec<i64> = if cx.has(4) {
        match cx.ints(4) {
            Some(v) => v,
            None => return Ok(None),
        }
    } else {
        vec![1; n]
    };
    if axes.len() != n || steps.len() != n {
        return Err(ShapeError::Value(format!(
            "{n} starts, {} axes and {} steps",
            axes.len(),
            steps.len()
        )));
    }
    if steps.contains(&0) {
        return Err(ShapeError::Value("slice step 0".into()));
    }
    let mut ax = Vec::with_capacity(n);
    for &a in &axes {
        let i = axis(a, rank, "slice axis")?;
        if ax.contains(&i) {
            return Err(ShapeError::Value(format!("axis {a} is sliced twice")));
        }
        ax.push(i);
    }
    Ok(Some(SliceParams {
        axes: ax,
        starts: starts.to_vec(),
        ends: ends.to_vec(),
        steps,
    }))
}

pub(crate) fn slice(cx: &NodeCx) -> Infer {
    let dtype = cx.dtype(0);
    let Some(shape) = cx.shape(0) else {
        return Ok(vec![tensor(dtype, None)]);
    };
    let Some(p) = slice_params(cx, shape.len())? else {
        // The rank is kept; the sliced axes (all of them, if the axes are unknown) are unknown.
        let known_axes = if cx.has(3) { cx.ints(3) } else { None };
        let out = match known_axes {
            Some(axes) => {
                let mut out = shape.to_vec();
                for a in axes {
                    out[axis(a, shape.len(), "slice axis")?] = Dim::Unknown;
                }
                out
            }
            None => vec![Dim::Unknown; shape.len()],
        };
        return Ok(vec![tensor(dtype, Some(out))]);
    };
    let mut out = shape.to_vec();
    for (k, &a) in p.axes.iter().enumerate() {
        let step = p.steps[k];
        out[a] = match (&shape[a], &p.starts[k], &p.ends[k]) {
            (Dim::Fixed(d), Dim::Fixed(s), Dim::Fixed(e)) => {
                Dim::Fixed(slice_range(*d, *s, *e, step).0)
            }
            (d, Dim::Fixed(0), Dim::Fixed(e)) if step == 1 && *e >= TO_END => d.clone(),
            // `x[:n]` with a symbolic n: the symbol, assuming (as exporters do) that it fits.
            (_, Dim::Fixed(0), Dim::Sym(n)) if step == 1 => Dim::Sym(n.clone()),
            _ => Dim::Unknown,
        };
    }
    Ok(vec![tensor(dtype, Some(out))])
}

/// The `[start, end)` range of dimensions a `Shape` node reports, for a rank-`r` input.
pub(crate) fn shape_range(at: &attrs::Shape, r: usize) -> (usize, usize) {
    let range = crate::semantics::axis::shape_range(r, at.start, at.end);
    (range.start, range.end)
}

pub(crate) fn shape(cx: &NodeCx, at: &attrs::Shape) -> Infer {
    let len = match cx.shape(0) {
        Some(s) => {
            let (a, b) = shape_range(at, s.len());
            Dim::Fixed((b - a) as i64)
        }
        None => Dim::Unknown,
    };
    Ok(vec![Type::tensor(DType::I64, vec![len])])
}

pub(crate) fn size(_cx: &NodeCx) -> Infer {
    Ok(vec![Type::tensor(DType::I64, vec![])])
}

pub(crate) fn nonzero(cx: &NodeCx) -> Infer {
    let r = cx
        .shape(0)
        .map_or(Dim::Unknown, |s| Dim::Fixed(s.len() as i64));
    Ok(vec![Type::tensor(DType::I64, vec![r, Dim::Unknown])])
}

/// The scalar in a known-value operand.
fn scalar(cx: &NodeCx, slot: usize) -> Option<Dim> {
    match cx.value(slot) {
        Some([d]) => Some(d.clone()),
        _ => None,
    }
}

pub(crate) fn range(cx: &NodeCx) -> Infer {
    let dtype = [0, 1, 2]
        .into_iter()
        .map(|s| cx.dtype(s))
        .find(|d| *d != DType::Undefined)
        .unwrap_or(DType::Undefined);
    let len = match (scalar(cx, 0), scalar(cx, 1), scalar(cx, 2)) {
        (_, _, Some(Dim::Fixed(0))) => return Err(ShapeError::Value("Range delta is 0".into())),
        (Some(Dim::Fixed(s)), Some(Dim::Fixed(l)), Some(Dim::Fixed(d))) => {
            // In i128 so that no pair of i64 bounds can overflow.
            let (span, d) = (i128::from(l) - i128::from(s), i128::from(d));
            let n = if (span > 0) != (d > 0) || span == 0 {
                0
            } else {
                1 + (span.abs() - 1) / d.abs()
            };
            i64::try_from(n).map_or(Dim::Unknown, Dim::Fixed)
        }
        (Some(Dim::Fixed(0)), Some(Dim::Sym(l)), Some(Dim::Fixed(1))) => Dim::Sym(l),
        _ => Dim::Unknown,
    };
    Ok(vec![tensor(dtype, Some(vec![len]))])
}

pub(crate) fn constant_of_shape(cx: &NodeCx, at: &attrs::ConstantOfShape) -> Infer {
    let dtype = tensor_attr_dtype(cx, at.value);
    let shape = match cx.value(0) {
        Some(v) => {
            if let Some(n) = v.iter().find_map(|d| d.fixed().filter(|n| *n < 0)) {
                return Err(ShapeError::Value(format!(
                    "negative dimension {n} in shape {}",
                    fmt_shape(v)
                )));
            }
            Some(v.to_vec())
        }
        None => match cx.shape(0) {
            Some([Dim::Fixed(n)]) if (0..=4096).contains(n) => {
                Some(vec![Dim::Unknown; *n as usize])
            }
            _ => None,
        },
    };
    Ok(vec![tensor(dtype, shape)])
}

pub(crate) fn constant(cx: &NodeCx, at: &attrs::Constant) -> Infer {
    let given = [
        at.value.is_some(),
        at.value_float.is_some(),
        at.value_floats.is_some(),
        at.value_int.is_some(),
        at.value_ints.is_some(),
        at.value_string.is_some(),
    ];
    if given.iter().filter(|&&g| g).count() != 1 {
        return Err(ShapeError::Attribute(
            "Constant needs exactly one value attribute".into(),
        ));
    }
    let ty = if let Some(t) = at.value {
        if t.index() >= cx.m.tensors.len() {
            return Err(ShapeError::Missing(
                "Constant refers to a tensor that does not exist".into(),
            ));
        }
        tensor_type(cx.m.tensor(t))
    } else if at.value_float.is_some() {
        Type::tensor(DType::F32, vec![])
    } else if let Some(v) = &at.value_floats {
        Type::tensor(DType::F32, vec![Dim::Fixed(v.len() as i64)])
    } else if at.value_int.is_some() {
        Type::tensor(DType::I64, vec![])
    } else if let Some(v) = &at.value_ints {
        Type::tensor(DType::I64, vec![Dim::Fixed(v.len() as i64)])
    } else {
        Type::tensor(DType::Str, vec![])
    };
    Ok(vec![ty])
}

pub(crate) fn one_hot(cx: &NodeCx, at: &attrs::OneHot) -> Infer {
    let dtype = cx.dtype(2);
    let Some(idx) = cx.shape(0) else {
        return Ok(vec![tensor(dtype, None)]);
    };
    let a = axis(at.axis(), idx.len() + 1, "axis")?;
    let depth = scalar(cx, 1).unwrap_or(Dim::Unknown);
    let mut out = idx.to_vec();
    out.insert(a, depth);
    Ok(vec![tensor(dtype, Some(out))])
}
