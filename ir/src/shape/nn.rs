//! Linear algebra and the transformer building blocks: `MatMul` (batched, broadcasting),
//! `Gemm`, `LayerNormalization`, `RMSNormalization`, `RotaryEmbedding` and `Attention`
//! (opset 23, 3-D and 4-D forms, grouped-query heads, KV cache outputs).

use super::cx::{Infer, NodeCx};
use super::dims::{
    add_dim, axis, broadcast, div_dim, dtype_from_onnx, fmt_shape, mul_dim, tensor, unify_dim,
};
use super::ShapeError;
use crate::op::attrs;
use crate::types::{DType, Dim};

/// `MatMul` with numpy semantics: 1-D operands are promoted and the added axis removed again,
/// batch dimensions broadcast.
pub(crate) fn matmul(cx: &NodeCx) -> Infer {
    let dtype = if cx.dtype(0) != DType::Undefined {
        cx.dtype(0)
    } else {
        cx.dtype(1)
    };
    let (Some(a), Some(b)) = (cx.shape(0), cx.shape(1)) else {
        return Ok(vec![tensor(dtype, None)]);
    };
    Ok(vec![tensor(dtype, Some(matmul_shape(a, b)?))])
}

/// The result shape of a matrix product of shapes `a` and `b`.
pub(crate) fn matmul_shape(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, ShapeError> {
    if a.is_empty() || b.is_empty() {
        return Err(ShapeError::Rank(
            "MatMul operands must have rank ≥ 1".into(),
        ));
    }
    let mut a2 = a.to_vec();
    let mut b2 = b.to_vec();
    if a.len() == 1 {
        a2.insert(0, Dim::Fixed(1));
    }
    if b.len() == 1 {
        b2.push(Dim::Fixed(1));
    }
    let (ab, am) = a2.split_at(a2.len() - 2);
    let (bb, bm) = b2.split_at(b2.len() - 2);
    unify_dim(&am[1], &bm[0]).map_err(|e| {
        ShapeError::Mismatch(format!(
            "inner dimensions differ ({e}): {} × {}",
            fmt_shape(a),
            fmt_shape(b)
        ))
    })?;
    let mut out =
        broadcast(ab, bb).map_err(|e| ShapeError::Mismatch(format!("batch dimensions: {e}")))?;
    if a.len() > 1 {
        out.push(am[0].clone());
    }
    if b.len() > 1 {
        out.push(bm[1].clone());
    }
    Ok(out)
}

/// `Gemm`: `alpha·op(A)·op(B) + beta·C` on 2-D operands.
pub(crate) fn gemm(cx: &NodeCx, at: &attrs::Gemm) -> Infer {
    let dtype = cx.dtype(0);
    let (Some(a), Some(b)) = (cx.shape(0), cx.shape(1)) else {
        return Ok(vec![tensor(dtype, None)]);
    };
    if a.len() != 2 || b.len() != 2 {
        return Err(ShapeError::Rank(format!(
            "Gemm needs 2-D operands, got {} and {}",
            fmt_shape(a),
            fmt_shape(b)
        )));
    }
    let (m, ka) = if at.trans_a() != 0 {
        (&a[1], &a[0])
    } else {
        (&a[0], &a[1])
    };
    let (kb, n) = if at.trans_b() != 0 {
        (&b[1], &b[0])
    } else {
        (&b[0], &b[1])
    };
    unify_dim(ka, kb)
        .map_err(|e| ShapeError::Mismatch(format!("Gemm inner dimensions differ ({e})")))?;
    let out = vec![m.clone(), n.clone()];
    if let Some(c) = cx.shape(2) {
        // C broadcasts unidirectionally to the result.
        let r = broadcast(&out, c).map_err(|e| ShapeError::Mismatch(format!("Gemm C: {e}")))?;
        if r.len() != 2 {
            return Err(ShapeError::Mismatch(format!(
                "Gemm C of shape {} does not broadcast to a matrix",
                fmt_shape(c)
            )));
        }
    }
    Ok(vec![tensor(dtype, Some(out))])
}

/// `LayerNormalization`: Y like X; Mean and InvStdDev keep the leading axes and have size 1 on
/// the normalized ones, in the `stash_type` element type.
pub(crate) fn layer_norm(cx: &NodeCx, at: &attrs::LayerNormalization) -> Infer {
    let x = cx.ty(0).clone();
    let stash = dtype_from_onnx(at.stash_type());
    let Some(shape) = cx.shape(0) else {
        return Ok(vec![x, tensor(stash, None), tensor(stash, None)]);
    };
    let ax = axis(at.axis(), shape.len(), "axis")?;
    let stats: Vec<Dim> = shape
        .iter()
        .enumerate()
        .map(|(i, d)| if i < ax { d.clone() } else { Dim::Fixed(1) })
        .collect();
    Ok(vec![
        x,
        tensor(stash, Some(stats.clone())),
        tensor(stash, Some(stats)),
    ])
}

/// `RMSNormalization` (opset 23): Y has X's shape and the scale's element type (`V`).
pub(crate) fn rms_norm(cx: &NodeCx, at: &attrs::RMSNormalization) -> Infer {
    if let Some(r) = cx.shape(0).map(<[Dim]>::len) {
        axis(at.axis(), r, "axis")?;
    }
    let dtype = if cx.dtype(1) != DType::Undefined {
        cx.dtype(1)
    } else {
        cx.dtype(0)
    };
    Ok(vec![tensor(dtype, cx.shape(0).map(<[Dim]>::to_vec))])
}

/// `RotaryEmbedding` (opset 23): Y like X, which is `[batch, seq, hidden]` or
/// `[batch, heads, seq, head_size]`.
pub(crate) fn rotary(cx: &NodeCx, at: &attrs::RotaryEmbedding) -> Infer {
    if let Some(x) = cx.shape(0) {
        match x.len() {
            3 | 4 => {}
            r => {
                return Err(ShapeError::Rank(format!(
                    "RotaryEmbedding input must be 3-D or 4-D, got rank {r}"
                )))
            }
        }
        if let (3, Some(h), Dim::Fixed(hidden)) = (x.len(), at.num_heads, &x[2]) {
            if h <= 0 || hidden % h != 0 {
                return Err(ShapeError::Mismatch(format!(
                    "hidden size {hidden} is not a multiple of num_heads {h}"
                )));
            }
        }
    }
    super::elementwise::same(cx)
}

fn dim(shape: Option<&[Dim]>, i: usize) -> Dim {
    shape
        .and_then(|s| s.get(i))
        .cloned()
        .unwrap_or(Dim::Unknown)
}

/// Splits `[batch, seq, heads·head]` or `[batch, heads, seq, head]` into (batch, heads, seq, head).
fn heads_form(
    shape: Option<&[Dim]>,
    heads_attr: Option<i64>,
    what: &str,
) -> Result<[Dim; 4], ShapeError> {
    match shape.map(<[Dim]>::len) {
        Some(3) => {
            let hidden = dim(shape, 2);
            let (heads, head) = match heads_attr {
                Some(h) if h > 0 => {
                    let head = div_dim(&hidden, &Dim::Fixed(h)).map_err(|_| {
                        ShapeError::Mismatch(format!(
                            "{what} hidden size {hidden} is not a multiple of its {h} heads"
                        ))
                    })?;
                    (Dim::Fixed(h), head)
                }
                Some(h) => {
                    return Err(ShapeError::Attribute(format!(
                        "{what} head count {h} must be positive"
                    )))
                }
                None => {
                    return Err(ShapeError::Attribute(format!(
                        "3-D {what} needs the q_num_heads and kv_num_heads attributes"
                    )))
                }
            };
            Ok([dim(shape, 0), heads, dim(shape, 1), head])
        }
        Some(4) => {
            let heads = dim(shape, 1);
            if let (Some(h), Dim::Fixed(n)) = (heads_attr, &heads) {
                if h != *n {
                    return Err(ShapeError::Mismatch(format!(
                        "{what} has {n} heads but the attribute says {h}"
                    )));
                }
            }
            Ok([dim(shape, 0), heads, dim(shape, 2), dim(shape, 3)])
        }
        Some(r) => Err(ShapeError::Rank(format!(
            "{what} must be 3-D or 4-D, got rank {r}"
        ))),
        None => Ok([Dim::Unknown, Dim::Unknown, Dim::Unknown, Dim::Unknown]),
    }
}

/// `Attention` (opset 23). Inputs Q, K, V, attn_mask, past_key, past_value; outputs Y,
/// present_key, present_value, qk_matmul_output. With 3-D inputs the head counts come from
/// `q_num_heads`/`kv_num_heads`; with 4-D inputs from the shapes. Y has Q's layout.
pub(crate) fn attention(cx: &NodeCx, at: &attrs::Attention) -> Infer {
    let q_rank = cx.shape(0).map(<[Dim]>::len);
    let [qb, qh, qs, qd] = heads_form(cx.shape(0), at.q_num_heads, "Q")?;
    let [kb, kh, ks, kd] = heads_form(cx.shape(1), at.kv_num_heads, "K")?;
    let [vb, vh, vs, vd] = heads_form(cx.shape(2), at.kv_num_heads, "V")?;
    let batch = unify_dim(&qb, &kb)
        .and_then(|b| unify_dim(&b, &vb))
        .map_err(|e| ShapeError::Mismatch(format!("batch sizes differ ({e})")))?;
    let kvh = unify_dim(&kh, &vh)
        .map_err(|e| ShapeError::Mismatch(format!("K and V head counts differ ({e})")))?;
    let kv_seq = unify_dim(&ks, &vs)
        .map_err(|e| ShapeError::Mismatch(format!("K and V sequence lengths differ ({e})")))?;
    let head = unify_dim(&qd, &kd)
        .map_err(|e| ShapeError::Mismatch(format!("Q and K head sizes differ ({e})")))?;
    if let (Dim::Fixed(q), Dim::Fixed(k)) = (&qh, &kvh) {
        if *k <= 0 || q % k != 0 {
            return Err(ShapeError::Mismatch(format!(
                "q_num_heads {q} is not a multiple of kv_num_heads {k}"
            )));
        }
    }
    // A KV cache extends the key/value sequence: present = concat(past, new) on the seq axis.
    let total = match cx.shape(4) {
        Some(p) if p.len() == 4 => add_dim(&p[2], &kv_seq),
        Some(p) => {
            return Err(ShapeError::Rank(format!(
                "past_key must be 4-D, got {}",
                fmt_shape(p)
            )))
        }
        None if cx.has(4) => Dim::Unknown,
        None => kv_seq.clone(),
    };
    let y_shape = match q_rank {
        Some(3) => Some(vec![batch.clone(), qs.clone(), mul_dim(&qh, &vd)]),
        Some(_) => Some(vec![batch.clone(), qh.clone(), qs.clone(), vd.clone()]),
        None => None,
    };
    let qdt = cx.dtype(0);
    let mut out = vec![tensor(qdt, y_shape)];
    if cx.n_out() > 1 {
        out.push(tensor(
            cx.dtype(1),
            Some(vec![batch.clone(), kvh.clone(), total.clone(), head]),
        ));
    }
    if cx.n_out() > 2 {
        out.push(tensor(
            cx.dtype(2),
            Some(vec![batch.clone(), kvh, total.clone(), vd]),
        ));
    }
    if cx.n_out() > 3 {
        out.push(tensor(qdt, Some(vec![batch, qh, qs, total])));
    }
    Ok(out)
}

/// `NegativeLogLikelihoodLoss` / `SoftmaxCrossEntropyLoss`: the loss (per position without a
/// reduction, else a scalar) in the input's element type, and for the latter the optional
/// log-probabilities like the scores.
pub(crate) fn loss(cx: &NodeCx, reduction: &str) -> Infer {
    let red = crate::semantics::loss::LossReduction::from_word(reduction)
        .ok_or_else(|| ShapeError::Attribute(format!("unknown reduction '{reduction}'")))?;
    let dims = match cx.shape(0) {
        Some(s) => Some(
            crate::semantics::loss::loss_dims(s, red)
                .map_err(|e| ShapeError::Rank(e.to_string()))?,
        ),
        None => None,
    };
    let mut out = vec![tensor(cx.dtype(0), dims), cx.ty(0).clone()];
    out.truncate(cx.n_out());
    Ok(out)
}

/// Pooling: `(N, C, out…)` with each spatial size from the window rule, unknown where the
/// input's is; MaxPool's indices have the same dims (int64).
pub(crate) fn pool(cx: &NodeCx, at: Option<&crate::semantics::pool::PoolAttrs>) -> Infer {
    let Some(x) = cx.shape(0) else {
        return Ok(vec![cx.ty(0).clone(), tensor(DType::I64, None)]);
    };
    if x.len() < 3 {
        return Err(ShapeError::Rank(format!(
            "pooling needs (N, C, spatial…) input, got rank {}",
            x.len()
        )));
    }
    let fixed: Option<Vec<usize>> = x[2..]
        .iter()
        .map(|d| d.fixed().and_then(|v| usize::try_from(v).ok()))
        .collect();
    let spatial: Vec<Dim> = match (at, fixed) {
        // A global pooling keeps one position per spatial axis.
        (None, _) => vec![Dim::Fixed(1); x.len() - 2],
        (Some(at), Some(f)) => crate::semantics::pool::pool_axes(&f, at)
            .map_err(|e| ShapeError::Attribute(e.to_string()))?
            .iter()
            .map(|a| Dim::Fixed(a.output as i64))
            .collect(),
        (Some(_), None) => vec![Dim::Unknown; x.len() - 2],
    };
    let mut dims = x[..2].to_vec();
    dims.extend(spatial);
    let mut out = vec![
        tensor(cx.dtype(0), Some(dims.clone())),
        tensor(DType::I64, Some(dims)),
    ];
    out.truncate(cx.n_out());
    Ok(out)
}

/// `Conv`: `(N, M, out…)`, M from W, each spatial size from the window rule with W's kernel.
pub(crate) fn conv(cx: &NodeCx, at: &crate::semantics::pool::PoolAttrs) -> Infer {
    let (Some(x), Some(w)) = (cx.shape(0), cx.shape(1)) else {
        return Ok(vec![tensor(cx.dtype(0), None)]);
    };
    if x.len() < 3 || w.len() != x.len() {
        return Err(ShapeError::Rank(format!(
            "Conv needs X (N, C, spatial…) and W of the same rank, got ranks {} and {}",
            x.len(),
            w.len()
        )));
    }
    let fixed = |d: &[Dim]| -> Option<Vec<usize>> {
        d.iter()
            .map(|d| d.fixed().and_then(|v| usize::try_from(v).ok()))
            .collect()
    };
    let spatial = match (fixed(&x[2..]), fixed(&w[2..])) {
        (Some(xs), Some(ks)) => {
            let at = crate::semantics::pool::PoolAttrs {
                kernel: ks.iter().map(|&k| k as i64).collect(),
                ..at.clone()
            };
            crate::semantics::pool::pool_axes(&xs, &at)
                .map_err(|e| ShapeError::Attribute(e.to_string()))?
                .iter()
                .map(|a| Dim::Fixed(a.output as i64))
                .collect()
        }
        _ => vec![Dim::Unknown; x.len() - 2],
    };
    let mut dims = vec![x[0].clone(), w[0].clone()];
    dims.extend(spatial);
    Ok(vec![tensor(cx.dtype(0), Some(dims))])
}
