//! LayerNorm → RMSNorm conversion of a pre-norm residual stream, the part of `fold-norms` that
//! follows SliceGPT (ALGORITHMS.md §0.1.3).
//!
//! A LayerNorm subtracts the mean of its input; if every vector on the stream already has mean
//! zero, that subtraction does nothing and the LayerNorm is exactly an RMSNorm with the same
//! epsilon (the variance of a zero-mean vector is its mean square). The stream is a sum of
//! embedding rows, writer outputs and constant biases, so it has mean zero once each of those
//! has: every embedding row `e ← e − mean(e)`, every writer `W ← W (I − 11ᵀ/d)` on its output
//! axis, every stream bias `b ← b − mean(b)`. This is exact only when nothing but LayerNorms
//! reads the stream (a LayerNorm does not see the mean; anything else would), so [`plan`]
//! requires a pre-norm stream: every norm on it a LayerNorm over the last axis whose output
//! feeds only linear layers, every reader behind such a norm, and no other consumer.
//!
//! [`convert`] then replaces each LayerNorm (after `fold-norms` moved γ and β into the readers)
//! by an RMSNorm with γ = 1: the opset-23 `RMSNormalization` op when the model's opset allows,
//! else the decomposed chain `Mul(x, x) → ReduceMean → Add(eps) → Sqrt → Div(x, ·)`; a
//! decomposed LayerNorm just loses its `ReduceMean → Sub`.

use crate::linalg::weights::{self, Rewrite, WeightError};
use crate::pass::{PassError, PassErrorKind};
use ortho_ir::analysis::util::{const_all_equal, out0};
use ortho_ir::analysis::{
    analyze_gauge, match_linear, BlockerKind, Norm, NormForm, NormKind, SiteRole,
};
use ortho_ir::{attrs, DType, GraphId, Module, NodeId, Op, Output, TensorData, Type, ValueId};
use std::collections::HashSet;

/// What [`plan`] found: the LayerNorms to convert and the weights to center.
pub(crate) struct Plan {
    /// The LayerNorms, as found before any rewrite. Until [`convert`] only constants change
    /// (and reader biases are added), so the ids of their non-constant nodes stay valid.
    pub norms: Vec<Norm>,
    /// Embedding tables, writers and stream biases; `key` is `1 + axis` of the fibers to center.
    pub rewrites: Vec<Rewrite>,
}

/// Why the stream's LayerNorms cannot become RMSNorms: the node that prevents it and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {reason}")]
pub(crate) struct NotConvertible {
    pub node: NodeId,
    /// The node as `Graph::describe` names it.
    pub at: String,
    pub reason: String,
}

/// Whether the main stream of graph `gid` can trade its LayerNorms for RMSNorms. `Ok(None)`:
/// it has no LayerNorm; `Err`: it has, and the node that prevents it.
pub(crate) fn plan(m: &Module, gid: GraphId) -> Result<Option<Plan>, NotConvertible> {
    let a = analyze_gauge(m, gid);
    let g = m.graph(gid);
    let blocked = |node: NodeId, reason: &str| NotConvertible {
        node,
        at: g.describe(node),
        reason: reason.to_string(),
    };
    let Some(class) = a.main() else {
        return Ok(None);
    };
    let list = &a.norms.list;
    if !class.norms.iter().any(|&i| list[i].kind == NormKind::Layer) {
        return Ok(None);
    }
    let mut ln_outputs: HashSet<ValueId> = HashSet::new();
    let mut betas: HashSet<(NodeId, usize)> = HashSet::new();
    for &i in &class.norms {
        let n = &list[i];
        if n.kind != NormKind::Layer {
            return Err(blocked(
                n.node,
                "an RMSNorm on the same stream would see the mean the conversion removes",
            ));
        }
        if !n.last_axis || n.skip.is_some() {
            return Err(blocked(
                n.node,
                "does not normalize the last axis of the stream alone",
            ));
        }
        let only_linear = g
            .users(n.output)
            .iter()
            .all(|&(u, slot)| slot == 0 && match_linear(m, g, u).is_some());
        if !only_linear || g.outputs.iter().any(|o| o.value == n.output) {
            return Err(blocked(
                n.node,
                "its output is not read only by linear layers (post-norm: the norm sits on the stream)",
            ));
        }
        ln_outputs.insert(n.output);
        if let Some(b) = n.bias {
            betas.insert((b.consumer, b.slot));
        }
    }
    for b in &class.blockers {
        let fine = matches!(
            b.kind,
            BlockerKind::LayerNormMean { .. } | BlockerKind::NormGain { foldable: true, .. }
        );
        if !fine {
            return Err(blocked(b.node, &b.reason()));
        }
    }
    if let Some(p) = class.params.iter().find(|p| p.norm.is_none()) {
        return Err(blocked(
            p.consumer,
            "a per-channel product on the stream would see the mean",
        ));
    }
    let mut rewrites = Vec::new();
    for s in &class.sites {
        match s.role {
            SiteRole::Reader => {
                let behind_norm =
                    match_linear(m, g, s.consumer).is_some_and(|l| ln_outputs.contains(&l.input));
                if !behind_norm {
                    return Err(blocked(
                        s.consumer,
                        "reads the stream without a LayerNorm in between",
                    ));
                }
            }
            SiteRole::Bias if betas.contains(&(s.consumer, s.slot)) => {}
            SiteRole::Embedding | SiteRole::Writer | SiteRole::Bias => rewrites.push(Rewrite {
                consumer: s.consumer,
                slot: s.slot,
                konst: s.konst,
                transpose: s.transpose,
                key: 1 + s.axis,
            }),
        }
    }
    let norms = class
        .norms
        .iter()
        .map(|&i| list[i].clone())
        .collect::<Vec<_>>();
    Ok(Some(Plan { norms, rewrites }))
}

/// Subtracts from every fiber along `axis` its mean (a vector `v` of the stream becomes
/// `v (I − 11ᵀ/d)`), in f64.
pub(crate) fn center_axis(v: &mut [f64], dims: &[i64], axis: usize) -> Result<(), WeightError> {
    let n = *dims.get(axis).ok_or(WeightError::Axis)? as usize;
    if n == 0 {
        return Ok(());
    }
    let inner: usize = dims[axis + 1..].iter().map(|&d| d as usize).product();
    let outer = v.len() / (n * inner).max(1);
    for o in 0..outer {
        let base = o * n * inner;
        for i in 0..inner {
            let mean = (0..n).map(|k| v[base + k * inner + i]).sum::<f64>() / n as f64;
            for k in 0..n {
                v[base + k * inner + i] -= mean;
            }
        }
    }
    Ok(())
}

/// Centers the weights of `plan` (copy-on-write: a tied head keeps the original table).
/// Returns the number of constants rewritten and copied.
pub(crate) fn center(
    m: &mut Module,
    gid: GraphId,
    plan: &Plan,
) -> Result<(usize, usize), PassError> {
    let make = |key: usize, old: &TensorData| -> Result<TensorData, WeightError> {
        let last = old.dims.len().saturating_sub(1);
        if key - 1 == last && old.dims.len() >= 2 {
            // Rows (an embedding table): block by block, no full f64 copy.
            let n = old.dims[last] as usize;
            return weights::map_rows(old, n, &|v, rows| {
                let mut y = v.to_vec();
                center_axis(&mut y, &[rows as i64, n as i64], 1)?;
                Ok(y)
            });
        }
        let mut v = weights::decode(old)?;
        center_axis(&mut v, &old.dims, key - 1)?;
        weights::encode_like(old, &v)
    };
    let applied = weights::apply(m, gid, &plan.rewrites, "centered", &make)?;
    Ok((applied.in_place + applied.copies, applied.copies))
}

/// A weight that could not be encoded, as a module-level error.
fn weight_error(e: WeightError) -> PassError {
    PassError::new(e.to_string()).with_kind(PassErrorKind::Weights)
}

/// Gives every linear reader of a pre-norm LayerNorm with a shift β ≠ 0 a bias (zeros) when it
/// has none, so that `fold-norms` can move β into it: a `Gemm` gets its `C` operand, a `MatMul`
/// an `Add` after it. Returns how many biases were added.
pub(crate) fn add_reader_biases(m: &mut Module, gid: GraphId) -> Result<usize, PassError> {
    // Collect: (reader node, is Gemm, out features, dtype).
    let mut todo: Vec<(NodeId, bool, i64, DType)> = Vec::new();
    {
        let g = m.graph(gid);
        let norms = ortho_ir::analysis::Norms::find(m, g);
        let mut seen = HashSet::new();
        for n in &norms.list {
            if n.kind != NormKind::Layer || n.bias.is_none_or(|p| p.trivial) || !n.last_axis {
                continue;
            }
            let users = g.users(n.output);
            let readers: Option<Vec<_>> = users
                .iter()
                .map(|&(u, slot)| (slot == 0).then(|| match_linear(m, g, u)).flatten())
                .collect();
            let Some(readers) = readers else { continue };
            if g.outputs.iter().any(|o| o.value == n.output) {
                continue;
            }
            for r in readers.iter().filter(|r| r.bias.is_none()) {
                if seen.insert(r.node) {
                    let dtype = m.tensor(r.weight.tensor).dtype;
                    let gemm = matches!(g.node(r.node).op, Op::Gemm(_));
                    todo.push((r.node, gemm, r.out_features, dtype));
                }
            }
        }
    }
    for &(node, gemm, out, dtype) in &todo {
        let t = m.add_tensor(
            weights::encode(dtype, vec![out], &vec![0.0; out as usize]).map_err(weight_error)?,
        );
        let g = m.graph_mut(gid);
        let mut names = g.value_names();
        let base = g.node(node).outputs[0].name.clone();
        let bname = g.fresh_name(&format!("{base}.bias"), &names);
        names.insert(bname.clone(), out0(node));
        let ty = Type::tensor(dtype, vec![ortho_ir::Dim::Fixed(out)]);
        let k = g.add_node(Op::Const(t), vec![], vec![Output::new(bname, ty)]);
        if gemm {
            g.set_operand(node, 2, Some(out0(k)));
            continue;
        }
        let users = g.users(out0(node));
        let aname = g.fresh_name(&format!("{base}.biased"), &names);
        let ty = g.value_type(out0(node)).clone();
        let add = g.add_node(
            Op::Add,
            vec![Some(out0(node)), Some(out0(k))],
            vec![Output::new(aname, ty)],
        );
        for (u, slot) in users {
            g.set_operand(u, slot, Some(out0(add)));
        }
        if g.outputs.iter().any(|o| o.value == out0(node)) {
            // A graph output keeps its name: the Add takes it, the product gets a new one.
            let free = g.fresh_name(&format!("{base}.unbiased"), &names);
            g.node_mut(node).outputs[0].name = free;
            g.node_mut(add).outputs[0].name = base.clone();
            for o in g.outputs.iter_mut().filter(|o| o.value == out0(node)) {
                o.value = out0(add);
            }
        }
    }
    Ok(todo.len())
}

/// Removes a constant node that nothing reads any more.
fn drop_if_unused(g: &mut ortho_ir::Graph, n: NodeId) {
    if g.contains(n) && !g.has_uses(n) && matches!(g.node(n).op, Op::Const(_) | Op::Constant(_)) {
        g.remove_node(n);
    }
}

/// Replaces each LayerNorm of `norms` by an RMSNorm (γ = 1). Call after the stream is centered
/// and γ, β are folded (a γ or β that is not trivial by then stays in the graph, which keeps
/// the model exact). Returns how many were converted.
pub(crate) fn convert(m: &mut Module, gid: GraphId, norms: &[Norm]) -> Result<usize, PassError> {
    let opset = m.opset("").unwrap_or(0);
    let mut count = 0;
    for n in norms {
        match n.form {
            NormForm::Decomposed => {
                convert_decomposed(m, gid, n);
                count += 1;
            }
            NormForm::Onnx if convert_op(m, gid, n, opset)? => count += 1,
            _ => {}
        }
    }
    Ok(count)
}

/// `ReduceMean(x) → Sub(x, mean)` goes (the input is already centered); a unit γ `Mul` and a
/// zero β `Add` go too.
fn convert_decomposed(m: &mut Module, gid: GraphId, n: &Norm) {
    let trivial = |m: &Module, p: ortho_ir::analysis::norm::NormParam, x: f64| {
        let g = m.graph(gid);
        g.contains(p.consumer)
            && g.node(p.consumer)
                .operand(p.slot)
                .is_some_and(|v| const_all_equal(m, g, v, x))
    };
    let drop_param = |m: &mut Module, p: ortho_ir::analysis::norm::NormParam| {
        let g = m.graph_mut(gid);
        let node = p.consumer;
        let Some(other) = g.node(node).operand(1 - p.slot.min(1)) else {
            return;
        };
        let konst = g.node(node).operand(p.slot).map(|v| v.node);
        g.replace_all_uses(out0(node), other);
        g.remove_node(node);
        if let Some(k) = konst {
            drop_if_unused(g, k);
        }
    };
    if let Some(p) = n.bias {
        if trivial(m, p, 0.0) {
            drop_param(m, p);
        }
    }
    if let Some(p) = n.gain {
        if trivial(m, p, 1.0) {
            drop_param(m, p);
        }
    }
    let g = m.graph_mut(gid);
    let sub = n
        .nodes
        .iter()
        .copied()
        .find(|&x| matches!(g.node(x).op, Op::Sub) && g.node(x).operand(0) == Some(n.input));
    if let Some(sub) = sub {
        let mean = g.node(sub).operand(1).map(|v| v.node);
        g.replace_all_uses(out0(sub), n.input);
        g.remove_node(sub);
        if let Some(mean) = mean {
            if g.contains(mean) && !g.has_uses(mean) {
                let axes = g.node(mean).operand(1).map(|v| v.node);
                g.remove_node(mean);
                if let Some(a) = axes {
                    drop_if_unused(g, a);
                }
            }
        }
    }
}

/// A `LayerNormalization` node becomes `RMSNormalization(x, γ)` (opset ≥ 23) or the decomposed
/// RMS chain without a gain; its result keeps its name. A LayerNorm whose β is still non-zero
/// stays (it is exact on the centered stream too). Returns whether it was converted.
fn convert_op(m: &mut Module, gid: GraphId, n: &Norm, opset: i64) -> Result<bool, PassError> {
    let ln = n.node;
    let (x, gamma, beta, stash, old) = {
        let g = m.graph(gid);
        let node = g.node(ln);
        let stash = match &node.op {
            Op::LayerNormalization(a) => a.stash_type,
            _ => {
                return Err(PassError::at_graph(
                    m,
                    gid,
                    ln,
                    "expected a LayerNormalization",
                ))
            }
        };
        let (Some(x), Some(gamma)) = (node.operand(0), node.operand(1)) else {
            return Err(PassError::at_graph(
                m,
                gid,
                ln,
                "a LayerNormalization without input or scale",
            ));
        };
        (x, gamma, node.operand(2), stash, node.outputs[0].clone())
    };
    if let Some(b) = beta {
        if !const_all_equal(m, m.graph(gid), b, 0.0) {
            return Ok(false);
        }
    }
    let eps = n.eps.unwrap_or(1e-5);
    let gamma_is_one = const_all_equal(m, m.graph(gid), gamma, 1.0);
    let dtype = {
        let g = m.graph(gid);
        ortho_ir::analysis::util::const_data(m, g, gamma)
            .map(|d| d.dtype)
            .unwrap_or(DType::F32)
    };
    let eps_t = m.add_tensor(weights::encode(dtype, vec![], &[eps]).map_err(weight_error)?);
    let axes_t = if (18..23).contains(&opset) {
        Some(m.add_tensor(TensorData::from_i64(vec![1], &[-1])))
    } else {
        None
    };
    let g = m.graph_mut(gid);
    let mut names = g.value_names();
    let mut fresh = |g: &ortho_ir::Graph, suffix: &str| {
        let s = g.fresh_name(&format!("{}.rms_{suffix}", old.name), &names);
        names.insert(s.clone(), x);
        s
    };
    let unknown = || Type::Unknown;
    let result = if opset >= 23 {
        let op = Op::RMSNormalization(attrs::RMSNormalization {
            axis: Some(-1),
            epsilon: Some(eps as f32),
            stash_type: stash,
        });
        let name = fresh(g, "norm");
        g.add_node(
            op,
            vec![Some(x), Some(gamma)],
            vec![Output::new(name, old.ty.clone())],
        )
    } else {
        let c = |g: &mut ortho_ir::Graph, t, name: String| {
            g.add_node(Op::Const(t), vec![], vec![Output::new(name, unknown())])
        };
        let eps_name = fresh(g, "eps");
        let eps_k = c(g, eps_t, eps_name);
        let sq = fresh(g, "sq");
        let sq = g.add_node(
            Op::Mul,
            vec![Some(x), Some(x)],
            vec![Output::new(sq, unknown())],
        );
        let (rm_attrs, rm_ops) = match axes_t {
            Some(t) => {
                let an = fresh(g, "axes");
                let ak = c(g, t, an);
                (
                    attrs::ReduceMean {
                        keepdims: Some(1),
                        ..Default::default()
                    },
                    vec![Some(out0(sq)), Some(out0(ak))],
                )
            }
            None => (
                attrs::ReduceMean {
                    axes: Some(vec![-1]),
                    keepdims: Some(1),
                    ..Default::default()
                },
                vec![Some(out0(sq))],
            ),
        };
        let mn = fresh(g, "mean");
        let mean = g.add_node(
            Op::ReduceMean(rm_attrs),
            rm_ops,
            vec![Output::new(mn, unknown())],
        );
        let an = fresh(g, "add_eps");
        let add = g.add_node(
            Op::Add,
            vec![Some(out0(mean)), Some(out0(eps_k))],
            vec![Output::new(an, unknown())],
        );
        let sn = fresh(g, "sqrt");
        let sqrt = g.add_node(
            Op::Sqrt,
            vec![Some(out0(add))],
            vec![Output::new(sn, unknown())],
        );
        let dn = fresh(g, "div");
        let div = g.add_node(
            Op::Div,
            vec![Some(x), Some(out0(sqrt))],
            vec![Output::new(dn, old.ty.clone())],
        );
        if !gamma_is_one {
            let gn = fresh(g, "scale");
            g.add_node(
                Op::Mul,
                vec![Some(out0(div)), Some(gamma)],
                vec![Output::new(gn, old.ty.clone())],
            )
        } else {
            div
        }
    };
    g.replace_all_uses(out0(ln), out0(result));
    g.remove_node(ln);
    g.node_mut(result).outputs[0].name = old.name;
    drop_if_unused(g, gamma.node);
    if let Some(b) = beta {
        drop_if_unused(g, b.node);
    }
    Ok(true)
}
