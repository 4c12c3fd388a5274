//! `kv-cache`: turns a full-sequence causal decoder into one step of cached generation.
//!
//! Needs: a decoder whose only graph input is the token ids `[batch, seq]`, whose attention
//! branches the structure analysis recognizes in the decomposed form (`MatMul(q, kᵀ)` →
//! mask → `Softmax` → `MatMul(p, v)`, any layout, GQA by broadcasting or not, boundary
//! linears between blocks allowed), and whose position tables (RoPE, causal mask) are
//! computed from the sequence length. Names are never looked at.
//!
//! Leaves, for attention branch `i` in stream order: inputs `past_key_i` / `past_value_i`
//! (the keys after RoPE and the values, in the layout where the graph had them, see
//! [`attention`]; the position axis is `past_sequence`, 0 for the first step), outputs
//! `present_key_i` / `present_value_i` (past and new concatenated on that axis), and the
//! position tables recomputed for positions `P … P+S-1` with `P` read from the shape of
//! `past_key_0` (see [`positions`]). Run on `S` new tokens with a cache of `P`, the logits
//! equal rows `P … P+S-1` of the full graph on all `P+S` tokens.
//!
//! Refused, naming the node: an unrecognized part of the stream, a fused `Attention` op
//! (opset 23 aligns `is_causal` top-left, which is wrong once keys outnumber queries), an
//! attention without a length-dependent mask (not causal), other graph inputs, a model that
//! already has cache inputs.

pub mod attention;
mod emit;
pub mod positions;

use crate::pass::{PassContext, PassError, PassErrorKind, PassResult};
use ortho_ir::analysis::analyze_transformer;
use ortho_ir::analysis::transformer::BranchKind;
use ortho_ir::{Dim, Module, Type, ValueId};

crate::declare_pass! {
    name: "kv-cache",
    summary: "Turns a full-sequence causal decoder into a cached one: past_key_i/past_value_i inputs, present_* outputs, positions from the cached length.",
    run: run_pass,
}

/// The name of the cached-length dimension of the past inputs.
pub const PAST_DIM: &str = "past_sequence";
/// The name of the position dimension of the present outputs.
pub const TOTAL_DIM: &str = "total_sequence";

/// What [`kv_cache`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvCacheStats {
    /// Attention layers given a cache.
    pub layers: usize,
    /// Position tables recomputed for cached positions.
    pub tables: usize,
    /// Nodes copied to recompute them.
    pub copied: usize,
}

fn run_pass(m: &mut Module, cx: &mut PassContext) -> Result<PassResult, PassError> {
    let st = kv_cache(m)?;
    cx.note(format!(
        "{} attention layers cached; {} position tables recomputed for cached positions ({} nodes copied)",
        st.layers, st.tables, st.copied
    ));
    cx.stat("layers", st.layers as u64);
    cx.stat("tables", st.tables as u64);
    Ok(PassResult::changed(st.layers > 0))
}

/// The cache input and output names of attention layer `i`.
pub fn cache_names(i: usize) -> [String; 4] {
    [
        format!("past_key_{i}"),
        format!("past_value_{i}"),
        format!("present_key_{i}"),
        format!("present_value_{i}"),
    ]
}

/// Whether the main graph already has cache inputs (the result of this pass).
pub fn has_cache(m: &Module) -> bool {
    let g = m.main_graph();
    let past = &cache_names(0)[0];
    g.inputs()
        .iter()
        .any(|&n| g.node(n).outputs.first().is_some_and(|o| &o.name == past))
}

/// Rewrites the main graph of `m` for cached generation (see the module docs).
pub fn kv_cache(m: &mut Module) -> Result<KvCacheStats, PassError> {
    crate::infer_shapes(m);
    let gid = m.main;
    let s = analyze_transformer(m, gid);
    let g = m.main_graph();
    // 1. Check and collect, nothing changed yet.
    if let Some(u) = s.unmatched.first() {
        return Err(PassError::at_main(
            m,
            u.node,
            format!("kv-cache needs a recognized decoder: {}", u.why),
        ));
    }
    if has_cache(m) {
        let n = g.inputs()[0];
        return Err(
            PassError::at_main(m, n, "the model already has cache inputs (past_key_0)")
                .with_kind(PassErrorKind::Unsupported),
        );
    }
    let [emb] = s.embeddings.as_slice() else {
        return Err(PassError::new(format!(
            "kv-cache needs exactly one embedding lookup of the token ids (found {})",
            s.embeddings.len()
        )));
    };
    let ids = g
        .node(emb.node)
        .operand(1)
        .filter(|v| g.inputs().contains(&v.node))
        .ok_or_else(|| {
            PassError::at_main(
                m,
                emb.node,
                "the embedding lookup does not read a graph input (the token ids)",
            )
        })?;
    if ortho_ir::analysis::util::rank_of(g, ids) != Some(2) {
        return Err(PassError::at_main(
            m,
            ids.node,
            "the token ids must be [batch, sequence]",
        ));
    }
    if let Some(&other) = g.inputs().iter().find(|&&n| n != ids.node) {
        return Err(PassError::at_main(
            m,
            other,
            "kv-cache handles models whose only input is the token ids",
        ));
    }
    let mut cuts = Vec::new();
    for b in &s.branches {
        let BranchKind::Attention(a) = &b.kind else {
            continue;
        };
        if let Some(f) = a.fused {
            return Err(PassError::at_main(
                m,
                f,
                "fused Attention op: kv-cache handles the decomposed form only (opset 23's is_causal is aligned top-left, wrong with cached keys)",
            ));
        }
        cuts.push(attention::cut(m, g, &b.nodes, b.writer.node)?);
    }
    if cuts.is_empty() {
        return Err(PassError::new("kv-cache found no attention branch"));
    }
    let mut names = g.value_names();
    for i in 0..cuts.len() {
        for n in cache_names(i) {
            if let Some(v) = names.remove(&n) {
                return Err(PassError::at_main(
                    m,
                    v.node,
                    format!("a value is already named '{n}'"),
                ));
            }
        }
    }
    let cache_type = |p: attention::CachePoint, dim: &str| -> Result<Type, PassError> {
        let t = g
            .value_type(p.value)
            .as_tensor()
            .and_then(|t| t.shape.clone().map(|s| (t.dtype, s)));
        let (dtype, mut shape) = t.ok_or_else(|| {
            PassError::at_main(
                m,
                p.value.node,
                "kv-cache needs the shape of the cached tensor",
            )
        })?;
        shape[p.axis] = Dim::Sym(dim.to_string());
        Ok(Type::tensor(dtype, shape))
    };
    let mut types = Vec::new();
    for c in &cuts {
        types.push([
            cache_type(c.key, PAST_DIM)?,
            cache_type(c.value, PAST_DIM)?,
            cache_type(c.key, TOTAL_DIM)?,
            cache_type(c.value, TOTAL_DIM)?,
        ]);
    }
    // 2. Mutate: inputs, concatenations, outputs; then the position tables.
    let mut em = emit::Emit::new(m);
    let mut past_len = None;
    for (i, (c, ty)) in cuts.iter().zip(types).enumerate() {
        let [pk, pv, tk, tv] = ty;
        let [pk_n, pv_n, ok_n, ov_n] = cache_names(i);
        for (point, past_ty, total_ty, past_name, out_name) in
            [(c.key, pk, tk, pk_n, ok_n), (c.value, pv, tv, pv_n, ov_n)]
        {
            let past = em.input(&past_name, past_ty);
            let users = em.m.main_graph().users(point.value);
            let present = em.concat(&[past, point.value], point.axis as i64, &out_name, total_ty);
            let gm = em.m.main_graph_mut();
            for (u, slot) in users {
                gm.set_operand(u, slot, Some(present));
            }
            gm.node_mut(present.node).outputs[0].name = out_name.clone();
            gm.outputs.push(ortho_ir::GraphOutput {
                value: present,
                name: out_name,
            });
            if past_len.is_none() {
                let shape = em.shape(past, "past_shape");
                let a = point.axis as i64;
                let (s, e, ax) = (
                    em.ints(&[a], "past_axis"),
                    em.ints(&[a + 1], "past_axis_end"),
                    em.ints(&[0], "axis0"),
                );
                past_len = Some(em.slice(shape, s, e, ax, "past_length"));
            }
        }
    }
    let past_len: ValueId =
        past_len.ok_or_else(|| PassError::new("kv-cache found no attention branch"))?;
    let t = positions::rewrite(&mut em, ids, past_len)?;
    if t.tables == 0 {
        return Err(PassError::at_main(
            m,
            cuts[0].softmax,
            "no position-dependent mask or table: the attention is not causal, kv-cache would change its result",
        ));
    }
    forget_types(m);
    crate::infer_shapes(m);
    Ok(KvCacheStats {
        layers: cuts.len(),
        tables: t.tables,
        copied: t.copied,
    })
}

/// Forgets the inferred types of every computed value except the graph outputs: lengths that
/// were the sequence length are now past + new positions in some places (the keys after the
/// cache, the mask's key axis), and a stale `seq` would make a runtime that trusts declared
/// shapes (onnxruntime's buffer reuse) refuse the model. Inference then types them afresh.
fn forget_types(m: &mut Module) {
    let g = m.main_graph_mut();
    let outputs: Vec<ValueId> = g.outputs.iter().map(|o| o.value).collect();
    for n in g.node_ids() {
        if g.node(n).op.is_structural() {
            continue;
        }
        for v in g.results(n) {
            if !outputs.contains(&v) {
                g.set_value_type(v, Type::Unknown);
            }
        }
    }
}
