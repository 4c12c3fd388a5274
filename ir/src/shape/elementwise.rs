//! Element-wise ops: unary maps, broadcasting binary and variadic ops, comparisons and logicals,
//! `Where`, casts and `Dropout`.

use super::cx::{Infer, NodeCx};
use super::dims::{broadcast, dtype_from_onnx, tensor};
use super::ShapeError;
use crate::op::attrs;
use crate::types::{DType, Dim, Type};

/// The result has the type of operand 0 (unary maps, activations, `Clip`, `CumSum`, …).
pub(crate) fn same(cx: &NodeCx) -> Infer {
    Ok(vec![cx.ty(0).clone()])
}

/// The result has operand 0's shape and the element type `dtype`.
pub(crate) fn same_shape_as(cx: &NodeCx, dtype: DType) -> Infer {
    Ok(vec![tensor(dtype, cx.shape(0).map(<[Dim]>::to_vec))])
}

/// Broadcasts the shapes of `slots`; the result's element type is `out`, or else the first
/// element type known among `dtype_slots`.
pub(crate) fn broadcast_slots(
    cx: &NodeCx,
    slots: &[usize],
    dtype_slots: &[usize],
    out: Option<DType>,
) -> Infer {
    let dtype = out.unwrap_or_else(|| {
        dtype_slots
            .iter()
            .map(|&s| cx.dtype(s))
            .find(|d| *d != DType::Undefined)
            .unwrap_or(DType::Undefined)
    });
    let mut shape: Option<Vec<Dim>> = Some(Vec::new());
    for &s in slots {
        shape = match (shape, cx.shape(s)) {
            (Some(acc), Some(sh)) => Some(broadcast(&acc, sh)?),
            _ => None,
        };
    }
    Ok(vec![tensor(dtype, shape)])
}

/// Broadcasting over every operand; element type of the operands or `out`.
pub(crate) fn broadcast_all(cx: &NodeCx, out: Option<DType>) -> Infer {
    let slots: Vec<usize> = (0..cx.n_in()).filter(|&s| cx.has(s)).collect();
    broadcast_slots(cx, &slots, &slots, out)
}

/// `Pow`: the exponent may have another element type; the result has the base's.
pub(crate) fn pow(cx: &NodeCx) -> Infer {
    broadcast_slots(cx, &[0, 1], &[0], None)
}

/// `Where(cond, x, y)`: three-way broadcasting, element type of x and y.
pub(crate) fn where_(cx: &NodeCx) -> Infer {
    broadcast_slots(cx, &[0, 1, 2], &[1, 2], None)
}

pub(crate) fn cast(cx: &NodeCx, a: &attrs::Cast) -> Infer {
    let Some(to) = a.to else {
        return Err(ShapeError::Attribute("Cast has no 'to' attribute".into()));
    };
    same_shape_as(cx, dtype_from_onnx(to))
}

pub(crate) fn cast_like(cx: &NodeCx) -> Infer {
    same_shape_as(cx, cx.dtype(1))
}

/// `Dropout`: the output and a boolean mask of the same shape.
pub(crate) fn dropout(cx: &NodeCx) -> Infer {
    let mut out = vec![cx.ty(0).clone()];
    if cx.n_out() > 1 {
        out.push(tensor(DType::Bool, cx.shape(0).map(<[Dim]>::to_vec)));
    }
    Ok(out)
}

/// `Softmax`, `LogSoftmax` and the normalizations check their axis against the rank.
pub(crate) fn same_with_axis(cx: &NodeCx, axis: Option<i64>, default: i64) -> Infer {
    if let Some(r) = cx.shape(0).map(<[Dim]>::len) {
        super::dims::axis(axis.unwrap_or(default), r, "axis")?;
    }
    same(cx)
}

/// `ortho.FusedElementwise`: a well-formed program, one form per operand, f32 operands; the
/// result is the f32 broadcast of the operands. Each operand's form is checked against the
/// result where both shapes are fully fixed (symbols could still be 1 at run time).
pub(crate) fn fused_elementwise(cx: &NodeCx, f: &crate::fused::FusedElementwise) -> Infer {
    f.validate()?;
    if f.forms.len() != cx.n_in() || (0..cx.n_in()).any(|s| !cx.has(s)) {
        return Err(ShapeError::Arity(format!(
            "has {} operands but {} operand forms",
            cx.node.inputs().count(),
            f.forms.len()
        )));
    }
    for s in 0..cx.n_in() {
        let d = cx.dtype(s);
        if d != DType::Undefined && d != DType::F32 {
            return Err(ShapeError::Type(format!(
                "operand {s} is {d}, but fused elementwise ops compute in f32"
            )));
        }
    }
    let out = broadcast_all(cx, Some(DType::F32))?;
    let fixed = |s: &[Dim]| s.iter().all(|d| matches!(d, Dim::Fixed(_)));
    if let Some(res) = out
        .first()
        .and_then(|t| t.as_tensor())
        .and_then(|t| t.shape.as_deref())
        .filter(|s| fixed(s))
    {
        for (s, form) in f.forms.iter().enumerate() {
            if let Some(sh) = cx.shape(s).filter(|sh| fixed(sh)) {
                if !form.fits(sh, res) {
                    return Err(ShapeError::Mismatch(format!(
                        "operand {s} of shape {} does not broadcast to {} in its form '{}'",
                        super::dims::fmt_shape(sh),
                        super::dims::fmt_shape(res),
                        form.name()
                    )));
                }
            }
        }
    }
    Ok(out)
}

/// `Type::Unknown` for every result (ops we cannot type, such as `Opaque`).
pub(crate) fn unknown() -> Infer {
    Ok(Vec::new())
}

/// The element type of a `Constant`-like tensor attribute, with `f32` as ONNX's default.
pub(crate) fn tensor_attr_dtype(cx: &NodeCx, t: Option<crate::tensor::TensorId>) -> DType {
    match t {
        Some(t) if t.index() < cx.m.tensors.len() => cx.m.tensor(t).dtype,
        _ => DType::F32,
    }
}

/// The type of a constant tensor.
pub(crate) fn tensor_type(td: &crate::tensor::TensorData) -> Type {
    Type::tensor(td.dtype, td.dims.iter().map(|&d| Dim::Fixed(d)).collect())
}
