//! Ops that rearrange or resize without computing: `Reshape` (0 and -1, `allowzero`),
//! `Transpose`, `Unsqueeze`, `Squeeze`, `Flatten`, `Expand`, `Tile`, `Concat`, `Split`, `Pad`.
//! Their shape operands are read from the known-value side table (constants and propagated
//! shape computations, see `values.rs`).

use super::cx::{Infer, NodeCx};
use super::dims::{
    add_dim, axis, broadcast, fmt_shape, mul_dim, split_point, tensor, unify_dim, Product,
};
use super::ShapeError;
use crate::op::attrs;
use crate::types::{DType, Dim, Type};

/// The length of a 1-D shape operand whose contents are not known, when its type says it.
fn operand_len(cx: &NodeCx, slot: usize) -> Option<usize> {
    match cx.shape(slot)? {
        [Dim::Fixed(n)] if (0..=4096).contains(n) => usize::try_from(*n).ok(),
        _ => None,
    }
}

fn unknown_rank(dtype: DType, rank: Option<usize>) -> Type {
    tensor(dtype, rank.map(|r| vec![Dim::Unknown; r]))
}

pub(crate) fn reshape(cx: &NodeCx, at: &attrs::Reshape) -> Infer {
    let dtype = cx.dtype(0);
    let allowzero = at.allowzero() != 0;
    let Some(target) = cx.value(1) else {
        return Ok(vec![unknown_rank(dtype, operand_len(cx, 1))]);
    };
    let input = cx.shape(0);
    let mut out = Vec::with_capacity(target.len());
    let mut minus_one = None;
    let mut opaque_entry = false;
    for (i, d) in target.iter().enumerate() {
        match d {
            Dim::Fixed(-1) => {
                if minus_one.is_some() {
                    return Err(ShapeError::Value(format!(
                        "shape {} has more than one -1",
                        fmt_shape(target)
                    )));
                }
                minus_one = Some(i);
                out.push(Dim::Unknown);
            }
            Dim::Fixed(0) if !allowzero => match input {
                Some(s) => match s.get(i) {
                    Some(x) => out.push(x.clone()),
                    None => {
                        return Err(ShapeError::Value(format!(
                            "0 at position {i} of {} copies a dimension the rank-{} input lacks",
                            fmt_shape(target),
                            s.len()
                        )));
                    }
                },
                None => out.push(Dim::Unknown),
            },
            Dim::Fixed(n) if *n < 0 => {
                return Err(ShapeError::Value(format!(
                    "invalid dimension {n} in shape {}",
                    fmt_shape(target)
                )))
            }
            Dim::Unknown => {
                // The entry may be -1 or 0 at run time: nothing can be inferred from the rest.
                opaque_entry = true;
                out.push(Dim::Unknown);
            }
            d => out.push(d.clone()),
        }
    }
    if allowzero && minus_one.is_some() && target.contains(&Dim::Fixed(0)) {
        return Err(ShapeError::Value(
            "with allowzero = 1 the shape cannot hold both 0 and -1".into(),
        ));
    }
    if let (Some(inp), false) = (input, opaque_entry) {
        let total = Product::of(inp);
        match minus_one {
            Some(i) => {
                let rest: Vec<Dim> = out
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, d)| d.clone())
                    .collect();
                out[i] = total.div(&Product::of(&rest)).map_err(|e| {
                    ShapeError::Mismatch(format!(
                        "cannot reshape {} to {}: {e}",
                        fmt_shape(inp),
                        fmt_shape(target)
                    ))
                })?;
            }
            None => {
                if let (Some(a), Some(b)) = (total.fixed(), Product::of(&out).fixed()) {
                    if a != b {
                        return Err(ShapeError::Mismatch(format!(
                            "cannot reshape {} ({a} elements) to {} ({b} elements)",
                            fmt_shape(inp),
                            fmt_shape(&out)
                        )));
                    }
                }
            }
        }
    }
    Ok(vec![tensor(dtype, Some(out))])
}

pub(crate) fn transpose(cx: &NodeCx, at: &attrs::Transpose) -> Infer {
    let dtype = cx.dtype(0);
    let Some(shape) = cx.shape(0) else {
        return Ok(vec![unknown_rank(dtype, at.perm.as_ref().map(Vec::len))]);
    };
    let r = shape.len();
    let perm: Vec<usize> = match &at.perm {
        None => (0..r).rev().collect(),
        Some(p) => {
            let mut seen = vec![false; r];
            let mut out = Vec::with_capacity(r);
            for &a in p {
                let i = usize::try_from(a).ok().filter(|&i| i < r && !seen[i]);
                match i {
                    Some(i) => {
                        seen[i] = true;
                        out.push(i);
                    }
                    None => {
                        return Err(ShapeError::Attribute(format!(
                            "perm {p:?} is not a permutation of 0..{r}"
                        )))
                    }
                }
            }
            if out.len() != r {
                return Err(ShapeError::Attribute(format!(
                    "perm {p:?} is not a permutation of 0..{r}"
                )));
            }
            out
        }
    };
    Ok(vec![tensor(
        dtype,
        Some(perm.iter().map(|&i| shape[i].clone()).collect()),
    )])
}

pub(crate) fn unsqueeze(cx: &NodeCx) -> Infer {
    let dtype = cx.dtype(0);
    let (Some(shape), Some(axes)) = (cx.shape(0), cx.ints(1)) else {
        let rank = cx
            .shape(0)
            .zip(operand_len(cx, 1))
            .map(|(s, n)| s.len() + n);
        return Ok(vec![unknown_rank(dtype, rank)]);
    };
    let r = shape.len() + axes.len();
    let mut ins = vec![false; r];
    for &a in &axes {
        let i = axis(a, r, "unsqueeze axis (against the output rank)")?;
        if ins[i] {
            return Err(ShapeError::Value(format!(
                "axis {a} is repeated in {axes:?}"
            )));
        }
        ins[i] = true;
    }
    let mut src = shape.iter();
    let out = ins
        .iter()
        .map(|&new| {
            if new {
                Dim::Fixed(1)
            } else {
                src.next().cloned().unwrap_or(Dim::Unknown)
            }
        })
        .collect();
    Ok(vec![tensor(dtype, Some(out))])
}

pub(crate) fn squeeze(cx: &NodeCx) -> Infer {
    let dtype = cx.dtype(0);
    let Some(shape) = cx.shape(0) else {
        return Ok(vec![tensor(dtype, None)]);
    };
    if !cx.has(1) {
        // Without axes every size-1 dimension goes; a symbol might be 1, so the rank is unknown.
        if shape.iter().any(|d| d.fixed().is_none()) {
            return Ok(vec![tensor(dtype, None)]);
        }
        return Ok(vec![tensor(
            dtype,
            Some(
                shape
                    .iter()
                    .filter(|d| **d != Dim::Fixed(1))
                    .cloned()
                    .collect(),
            ),
        )]);
    }
    let Some(axes) = cx.ints(1) else {
        let rank = operand_len(cx, 1).and_then(|n| shape.len().checked_sub(n));
        return Ok(vec![unknown_rank(dtype, rank)]);
    };
    let mut drop = vec![false; shape.len()];
    for &a in &axes {
        let i = axis(a, shape.len(), "squeeze axis")?;
        if let Dim::Fixed(n) = shape[i] {
            if n != 1 {
                return Err(ShapeError::Mismatch(format!(
                    "cannot squeeze axis {a} of size {n}"
                )));
            }
        }
        drop[i] = true;
    }
    let out = shape
        .iter()
        .zip(&drop)
        .filter(|(_, &d)| !d)
        .map(|(x, _)| x.clone())
        .collect();
    Ok(vec![tensor(dtype, Some(out))])
}

pub(crate) fn flatten(cx: &NodeCx, at: &attrs::Flatten) -> Infer {
    let dtype = cx.dtype(0);
    let Some(shape) = cx.shape(0) else {
        return Ok(vec![unknown_rank(dtype, Some(2))]);
    };
    let a = split_point(at.axis(), shape.len(), "axis")?;
    let (l, r) = shape.split_at(a);
    Ok(vec![tensor(
        dtype,
        Some(vec![Product::of(l).to_dim(), Product::of(r).to_dim()]),
    )])
}

pub(crate) fn expand(cx: &NodeCx) -> Infer {
    let dtype = cx.dtype(0);
    match (cx.shape(0), cx.value(1)) {
        (Some(s), Some(t)) => Ok(vec![tensor(dtype, Some(broadcast(s, t)?))]),
        (s, _) => {
            let rank = s
                .map(<[Dim]>::len)
                .zip(operand_len(cx, 1))
                .map(|(a, b)| a.max(b));
            Ok(vec![unknown_rank(dtype, rank)])
        }
    }
}

pub(crate) fn tile(cx: &NodeCx) -> Infer {
    let dtype = cx.dtype(0);
    let Some(shape) = cx.shape(0) else {
        return Ok(vec![tensor(dtype, None)]);
    };
    let Some(reps) = cx.value(1) else {
        return Ok(vec![unknown_rank(dtype, Some(shape.len()))]);
    };
    if reps.len() != shape.len() {
        return Err(ShapeError::Rank(format!(
            "{} repeats for a rank-{} input",
            reps.len(),
            shape.len()
        )));
    }
    Ok(vec![tensor(
        dtype,
        Some(shape.iter().zip(reps).map(|(d, r)| mul_dim(d, r)).collect()),
    )])
}

pub(crate) fn concat(cx: &NodeCx, at: &attrs::Concat) -> Infer {
    let Some(ax) = at.axis else {
        return Err(ShapeError::Attribute(
            "Concat has no 'axis' attribute".into(),
        ));
    };
    let slots: Vec<usize> = (0..cx.n_in()).filter(|&s| cx.has(s)).collect();
    let dtype = slots
        .iter()
        .map(|&s| cx.dtype(s))
        .find(|d| *d != DType::Undefined)
        .unwrap_or(DType::Undefined);
    let Some(rank) = slots.iter().find_map(|&s| cx.shape(s).map(<[Dim]>::len)) else {
        return Ok(vec![tensor(dtype, None)]);
    };
    let a = axis(ax, rank, "axis")?;
    let mut out = vec![Dim::Unknown; rank];
    let mut sum = Some(Dim::Fixed(0));
    for &s in &slots {
        let Some(sh) = cx.shape(s) else {
            sum = None;
            continue;
        };
        if sh.len() != rank {
            return Err(ShapeError::Rank(format!(
                "operand {s} has rank {} but operands before it have rank {rank}",
                sh.len()
            )));
        }
        for (i, d) in sh.iter().enumerate() {
            if i == a {
                sum = sum.map(|acc| add_dim(&acc, d));
            } else {
                out[i] = unify_dim(&out[i], d).map_err(|e| {
                    ShapeError::Mismatch(format!("operand {s} differs on axis {i} ({e})"))
                })?;
            }
        }
    }
    out[a] = sum.unwrap_or(Dim::Unknown);
    Ok(vec![tensor(dtype, Some(out))])
}

pub(crate) fn split(cx: &NodeCx, at: &attrs::Split) -> Infer {
    let dtype = cx.dtype(0);
    let n = cx.n_out();
    if let Some(k) = at.num_outputs {
        if usize::try_from(k).ok() != Some(n) {
            return Err(ShapeError::Arity(format!(
                "num_outputs = {k} but the node has {n} results"
            )));
        }
    }
    let Some(shape) = cx.shape(0) else {
        return Ok(vec![tensor(dtype, None); n]);
    };
    let a = axis(at.axis(), shape.len(), "axis")?;
    let sizes: Option<Vec<Dim>> = match (&at.split, cx.has(1)) {
        (Some(s), _) => Some(s.iter().map(|&x| Dim::Fixed(x)).collect()),
        (None, true) => cx.value(1).map(<[Dim]>::to_vec),
        (None, false) => match shape[a] {
            Dim::Fixed(d) if n > 0 && d >= 0 => {
                let k = n as i64;
                if at.num_outputs.is_none() && d % k != 0 {
                    return Err(ShapeError::Mismatch(format!(
                        "axis of size {d} cannot be split evenly into {n} parts"
                    )));
                }
                // Opset 18: every chunk has ceil(d/n) elements except a smaller last one.
                let chunk = d / k + i64::from(d % k != 0);
                let last = chunk.checked_mul(k - 1).map(|c| d - c).filter(|l| *l >= 0);
                let Some(last) = last else {
                    return Err(ShapeError::Mismatch(format!(
                        "axis of size {d} cannot be split into {n} non-empty parts"
                    )));
                };
                Some(
                    (0..n)
                        .map(|i| Dim::Fixed(if i + 1 == n { last } else { chunk }))
                        .collect(),
                )
            }
            _ => None,
        },
    };
    let sizes = match sizes {
        Some(s) => {
            if s.len() != n {
                return Err(ShapeError::Arity(format!(
                    "{} split sizes for {n} results",
                    s.len()
                )));
            }
            let parts: Option<Vec<i64>> = s.iter().map(Dim::fixed).collect();
            if let (Some(parts), Dim::Fixed(d)) = (parts, &shape[a]) {
                if parts.iter().any(|&p| p < 0) || parts.iter().sum::<i64>() != *d {
                    return Err(ShapeError::Mismatch(format!(
                        "split sizes {parts:?} do not add up to the axis size {d}"
                    )));
                }
            }
            s
        }
        None => vec![Dim::Unknown; n],
    };
    Ok(sizes
        .into_iter()
        .map(|d| {
            let mut s = shape.to_vec();
            s[a] = d;
            tensor(dtype, Some(s))
        })
        .collect())
}

pub(crate) fn pad(cx: &NodeCx) -> Infer {
    let dtype = cx.dtype(0);
    let Some(shape) = cx.shape(0) else {
        return Ok(vec![tensor(dtype, None)]);
    };
    let r = shape.len();
    let Some(pads) = cx.value(1) else {
        return Ok(vec![unknown_rank(dtype, Some(r))]);
    };
    let axes: Vec<usize> = if cx.has(3) {
        let Some(v) = cx.ints(3) else {
            return Ok(vec![unknown_rank(dtype, Some(r))]);
        };
        v.iter()
            .map(|&a| axis(a, r, "pad axis"))
            .collect::<Result<_, _>>()?
    } else {
        (0..r).collect()
    };
    if pads.len() != 2 * axes.len() {
        return Err(ShapeError::Rank(format!(
            "{} pads for {} axes (need begin and end for each)",
            pads.len(),
            axes.len()
        )));
    }
    let mut out = shape.to_vec();
    for (k, &i) in axes.iter().enumerate() {
        out[i] = add_dim(&add_dim(&out[i], &pads[k]), &pads[k + axes.len()]);
    }
    Ok(vec![tensor(dtype, Some(out))])
}
