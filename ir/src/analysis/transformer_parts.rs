//! Recognizing what a branch computes: attention (fused `Attention` op, or the decomposed
//! `MatMul → Softmax → MatMul` core) with its q/k/v projections, head counts and RoPE; or an
//! MLP (gated or not) with its activation.

use super::linear::Linear;
use super::transformer::Ctx;
use super::util::{const_data, const_scalar};
use crate::graph::{NodeId, ValueId};
use crate::op::Op;
use std::collections::HashSet;

/// How RoPE is applied to q and k.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeForm {
    /// `RotaryEmbedding` (opset 23 or contrib).
    Op,
    /// Products with tables computed from Sin/Cos.
    Decomposed,
}

/// An attention branch.
#[derive(Debug, Clone, PartialEq)]
pub struct Attention {
    pub q: Option<Linear>,
    pub k: Option<Linear>,
    pub v: Option<Linear>,
    pub o: Linear,
    pub heads: Option<i64>,
    pub kv_heads: Option<i64>,
    pub head_dim: Option<i64>,
    pub rope: Option<RopeForm>,
    /// The fused `Attention` op, when the graph uses one.
    pub fused: Option<NodeId>,
}

impl Attention {
    /// Query heads per KV head (GQA group size).
    pub fn group_size(&self) -> Option<i64> {
        match (self.heads, self.kv_heads) {
            (Some(h), Some(k)) if k > 0 && h % k == 0 => Some(h / k),
            _ => None,
        }
    }
}

/// The MLP's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MlpKind {
    SwiGlu,
    GeGlu,
    ReGlu,
    /// A gated MLP with another activation.
    Gated,
    Gelu,
    Relu,
    Silu,
    /// One reader and no recognized activation.
    Plain,
}

impl MlpKind {
    pub fn name(&self) -> &'static str {
        match self {
            MlpKind::SwiGlu => "SwiGLU",
            MlpKind::GeGlu => "GeGLU",
            MlpKind::ReGlu => "ReGLU",
            MlpKind::Gated => "gated",
            MlpKind::Gelu => "GELU",
            MlpKind::Relu => "ReLU",
            MlpKind::Silu => "SiLU",
            MlpKind::Plain => "linear",
        }
    }
}

/// An MLP branch.
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    pub kind: MlpKind,
    /// The activation as found (`SiLU (Sigmoid·x)`, `Gelu`, `GELU (erf)`, …).
    pub activation: String,
    pub gate: Option<Linear>,
    pub up: Linear,
    pub down: Linear,
    pub hidden: i64,
}

/// Nodes of `set` behind value `v` (inclusive of `v`'s producer), not entering reader inputs.
fn behind(cx: &Ctx<'_>, set: &HashSet<NodeId>, v: ValueId) -> HashSet<NodeId> {
    let mut out = HashSet::new();
    let mut stack = vec![v.node];
    while let Some(n) = stack.pop() {
        if !set.contains(&n) || !out.insert(n) || cx.readers.contains(&n) {
            continue;
        }
        stack.extend(cx.g.node(n).inputs().map(|x| x.node));
    }
    out
}

fn reader_in<'l>(readers: &'l [Linear], nodes: &HashSet<NodeId>) -> Option<&'l Linear> {
    let mut it = readers.iter().filter(|l| nodes.contains(&l.node));
    let first = it.next()?;
    if it.next().is_some() {
        return None;
    }
    Some(first)
}

/// Classifies the branch with nodes `set`.
pub(crate) fn classify(
    cx: &Ctx<'_>,
    set: &HashSet<NodeId>,
    readers: &[Linear],
    writer: &Linear,
) -> super::transformer::BranchKind {
    use super::transformer::BranchKind;
    let g = cx.g;
    let mut ids: Vec<NodeId> = set.iter().copied().collect();
    ids.sort_by_key(|n| g.node(*n).seq());
    if let Some(&a) = ids
        .iter()
        .find(|n| matches!(g.node(**n).op, Op::Attention(_)))
    {
        return BranchKind::Attention(fused_attention(cx, set, readers, writer, a));
    }
    if let Some(&s) = ids
        .iter()
        .find(|n| matches!(g.node(**n).op, Op::Softmax(_)))
    {
        if let Some(att) = decomposed_attention(cx, set, readers, writer, s) {
            return BranchKind::Attention(att);
        }
        return BranchKind::Unknown;
    }
    match mlp(cx, set, readers, writer) {
        Some(m) => BranchKind::Mlp(m),
        None => BranchKind::Unknown,
    }
}

/// RoPE on the nodes behind q or k.
fn rope_in(cx: &Ctx<'_>, nodes: &HashSet<NodeId>) -> Option<RopeForm> {
    let g = cx.g;
    if nodes.iter().any(|n| match &g.node(*n).op {
        Op::RotaryEmbedding(_) => true,
        Op::Opaque(o) => o.op_type == "RotaryEmbedding",
        _ => false,
    }) {
        return Some(RopeForm::Op);
    }
    let trig_operand = nodes.iter().any(|n| {
        g.node(*n)
            .inputs()
            .any(|v| cx.trig.contains(&v.node) && !cx.dep.contains(&v.node))
    });
    trig_operand.then_some(RopeForm::Decomposed)
}

fn fused_attention(
    cx: &Ctx<'_>,
    set: &HashSet<NodeId>,
    readers: &[Linear],
    writer: &Linear,
    a: NodeId,
) -> Attention {
    let g = cx.g;
    let node = g.node(a);
    let side = |slot: usize| {
        node.operand(slot)
            .map(|v| behind(cx, set, v))
            .unwrap_or_default()
    };
    let (qs, ks, vs) = (side(0), side(1), side(2));
    let (mut heads, mut kv_heads) = match &node.op {
        Op::Attention(at) => (at.q_num_heads, at.kv_num_heads),
        _ => (None, None),
    };
    let q = reader_in(readers, &qs).copied();
    let k = reader_in(readers, &ks).copied();
    // The 4-D form gives heads through its input shapes; read them when declared.
    let dim1 = |slot: usize| {
        let v = node.operand(slot)?;
        let t = g.value_type(v).as_tensor()?;
        let s = t.shape.as_ref()?;
        if s.len() == 4 {
            s[1].fixed()
        } else {
            None
        }
    };
    heads = heads.or_else(|| dim1(0));
    kv_heads = kv_heads.or_else(|| dim1(1));
    let head_dim = match (q, heads) {
        (Some(q), Some(h)) if h > 0 && q.out_features % h == 0 => Some(q.out_features / h),
        _ => None,
    };
    Attention {
        q,
        k,
        v: reader_in(readers, &vs).copied(),
        o: *writer,
        heads,
        kv_heads,
        head_dim,
        rope: rope_in(cx, &qs).or_else(|| rope_in(cx, &ks)),
        fused: Some(a),
    }
}

/// `MatMul(q, k) → … → Softmax → … → MatMul(p, v)`.
fn decomposed_attention(
    cx: &Ctx<'_>,
    set: &HashSet<NodeId>,
    readers: &[Linear],
    writer: &Linear,
    s: NodeId,
) -> Option<Attention> {
    let g = cx.g;
    let is_core = |n: NodeId| {
        matches!(g.node(n).op, Op::MatMul) && !cx.readers.contains(&n) && set.contains(&n)
    };
    let qk = score_product(cx, set, s, &is_core)?;
    let pv = output_product(cx, set, s, &is_core)?;
    let qn = g.node(qk);
    let qs = behind(cx, set, qn.operand(0)?);
    let ks = behind(cx, set, qn.operand(1)?);
    let vs = behind(cx, set, g.node(pv).operand(1)?);
    let q = reader_in(readers, &qs).copied();
    let k = reader_in(readers, &ks).copied();
    let v = reader_in(readers, &vs).copied();
    let head_dim = reshape_head_dim(cx, &qs).or_else(|| scale_head_dim(cx, set, qk, s));
    let per = |l: Option<Linear>| match (l, head_dim) {
        (Some(l), Some(h)) if h > 0 && l.out_features % h == 0 => Some(l.out_features / h),
        _ => None,
    };
    Some(Attention {
        q,
        k,
        v,
        o: *writer,
        heads: per(q),
        kv_heads: per(k),
        head_dim,
        rope: rope_in(cx, &qs).or_else(|| rope_in(cx, &ks)),
        fused: None,
    })
}

/// Depth-first from `start`, each node once: the first node `step` reports found (`Err`), or
/// `None` when every path ends (`Ok` lists the nodes to go on to).
fn search(
    start: NodeId,
    mut step: impl FnMut(NodeId) -> Result<Vec<NodeId>, NodeId>,
) -> Option<NodeId> {
    let mut stack = vec![start];
    let mut seen = HashSet::new();
    while let Some(n) = stack.pop() {
        if !seen.insert(n) {
            continue;
        }
        match step(n) {
            Ok(next) => stack.extend(next),
            Err(found) => return Some(found),
        }
    }
    None
}

/// The scores: the first core `MatMul` behind the softmax `s`'s input.
fn score_product(
    cx: &Ctx<'_>,
    set: &HashSet<NodeId>,
    s: NodeId,
    is_core: &dyn Fn(NodeId) -> bool,
) -> Option<NodeId> {
    let g = cx.g;
    search(g.node(s).operand(0)?.node, |n| match n {
        n if !set.contains(&n) => Ok(Vec::new()),
        n if is_core(n) => Err(n),
        n => Ok(g.node(n).inputs().map(|v| v.node).collect()),
    })
}

/// The output: the first core `MatMul` after the softmax `s` that takes it on the left (the
/// last such user of the node where one is found).
fn output_product(
    cx: &Ctx<'_>,
    set: &HashSet<NodeId>,
    s: NodeId,
    is_core: &dyn Fn(NodeId) -> bool,
) -> Option<NodeId> {
    let g = cx.g;
    search(s, |n| {
        let users = g.users(crate::graph::ValueId { node: n, output: 0 });
        match users
            .iter()
            .rev()
            .find(|&&(u, slot)| is_core(u) && slot == 0)
        {
            Some(&(u, _)) => Err(u),
            None => Ok(users
                .iter()
                .map(|&(u, _)| u)
                .filter(|u| set.contains(u))
                .collect()),
        }
    })
}

/// The head size as the last entry of a constant `Reshape` target among the q-side nodes `qs`
/// (the last such `Reshape` in graph order).
fn reshape_head_dim(cx: &Ctx<'_>, qs: &HashSet<NodeId>) -> Option<i64> {
    let g = cx.g;
    let mut ids: Vec<NodeId> = qs.iter().copied().collect();
    ids.sort_by_key(|n| g.node(*n).seq());
    let mut head_dim = None;
    for n in ids {
        let node = g.node(n);
        if matches!(node.op, Op::Reshape(_)) {
            if let Some(shape) = node
                .operand(1)
                .and_then(|v| const_data(cx.m, g, v))
                .and_then(|d| d.to_i64_vec())
            {
                if let Some(&last) = shape.last().filter(|&&l| l > 0) {
                    head_dim = Some(last);
                }
            }
        }
    }
    head_dim
}

/// The head size from a `1/sqrt(head_dim)` scale (Mul) or a `sqrt(head_dim)` divisor (Div)
/// between the score product and the softmax.
fn scale_head_dim(cx: &Ctx<'_>, set: &HashSet<NodeId>, qk: NodeId, s: NodeId) -> Option<i64> {
    let g = cx.g;
    for n in set.iter().copied() {
        let node = g.node(n);
        let c = node.inputs().find_map(|v| const_scalar(cx.m, g, v));
        let from_qk = node.inputs().any(|v| v.node == qk);
        let to_s = g
            .users(crate::graph::ValueId { node: n, output: 0 })
            .iter()
            .any(|(u, _)| *u == s)
            || from_qk;
        if let (Some(c), true) = (c, to_s && from_qk) {
            let d = match node.op {
                Op::Mul if c > 0.0 => 1.0 / (c * c),
                Op::Div if c > 0.0 => c * c,
                _ => continue,
            };
            let r = d.round();
            if (d - r).abs() < 1e-3 && r >= 1.0 {
                return Some(r as i64);
            }
        }
    }
    None
}

/// The activation among `nodes`.
fn activation(cx: &Ctx<'_>, nodes: &HashSet<NodeId>) -> Option<(String, MlpKind, MlpKind)> {
    let g = cx.g;
    let has = |f: &dyn Fn(&Op) -> bool| nodes.iter().any(|n| f(&g.node(*n).op));
    if has(&|o| matches!(o, Op::Gelu(_))) {
        return Some(("Gelu".into(), MlpKind::GeGlu, MlpKind::Gelu));
    }
    if has(&|o| matches!(o, Op::Erf)) {
        return Some(("GELU (erf)".into(), MlpKind::GeGlu, MlpKind::Gelu));
    }
    if has(&|o| matches!(o, Op::Tanh)) {
        return Some(("GELU (tanh)".into(), MlpKind::GeGlu, MlpKind::Gelu));
    }
    if has(&|o| matches!(o, Op::Sigmoid)) {
        return Some(("SiLU (x·sigmoid(x))".into(), MlpKind::SwiGlu, MlpKind::Silu));
    }
    if has(&|o| matches!(o, Op::Relu)) {
        return Some(("Relu".into(), MlpKind::ReGlu, MlpKind::Relu));
    }
    for n in nodes {
        if let Op::Opaque(o) = &g.node(*n).op {
            let t = o.op_type.as_str();
            let kinds = match t {
                "Swish" | "Silu" | "QuickGelu" => (MlpKind::SwiGlu, MlpKind::Silu),
                "FastGelu" | "BiasGelu" | "Gelu" => (MlpKind::GeGlu, MlpKind::Gelu),
                _ => continue,
            };
            return Some((t.to_string(), kinds.0, kinds.1));
        }
    }
    None
}

fn mlp(cx: &Ctx<'_>, set: &HashSet<NodeId>, readers: &[Linear], writer: &Linear) -> Option<Mlp> {
    let g = cx.g;
    match readers {
        [only] => {
            let (act, kind) = match activation(cx, set) {
                Some((a, _, k)) => (a, k),
                None => ("none".into(), MlpKind::Plain),
            };
            Some(Mlp {
                kind,
                activation: act,
                gate: None,
                up: *only,
                down: *writer,
                hidden: only.out_features,
            })
        }
        [_, _] => {
            // The product of the two paths: a Mul whose operands lie behind different readers.
            for &n in set {
                let node = g.node(n);
                if !matches!(node.op, Op::Mul) || cx.readers.contains(&n) {
                    continue;
                }
                let (Some(a), Some(b)) = (node.operand(0), node.operand(1)) else {
                    continue;
                };
                let (sa, sb) = (behind(cx, set, a), behind(cx, set, b));
                let (Some(ra), Some(rb)) = (reader_in(readers, &sa), reader_in(readers, &sb))
                else {
                    continue;
                };
                if ra.node == rb.node {
                    continue;
                }
                let strip = |s: &HashSet<NodeId>, r: &Linear| {
                    s.iter()
                        .copied()
                        .filter(|x| *x != r.node)
                        .collect::<HashSet<_>>()
                };
                let (pa, pb) = (strip(&sa, ra), strip(&sb, rb));
                let (gate, up, act) = match (activation(cx, &pa), activation(cx, &pb)) {
                    (Some(x), None) => (ra, rb, x),
                    (None, Some(x)) => (rb, ra, x),
                    _ => continue,
                };
                return Some(Mlp {
                    kind: act.1,
                    activation: act.0,
                    gate: Some(*gate),
                    up: *up,
                    down: *writer,
                    hidden: up.out_features,
                });
            }
            None
        }
        _ => None,
    }
}

/// A per-block head space and what it admits (ALGORITHMS.md §0.1.6): q/k are rotated only by
/// transforms that commute with RoPE; v/o admit any orthogonal map per KV head, repeated over
/// the query heads of its GQA group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadSpace {
    /// Index into `Structure::branches`.
    pub branch: usize,
    /// `"q/k"` or `"v/o"`.
    pub space: &'static str,
    pub admits: super::group::Kind,
    /// The node and reason that restrict it, when something does.
    pub blocker: Option<(NodeId, String)>,
}

/// The head spaces of every attention branch.
pub fn head_spaces(s: &super::transformer::Structure) -> Vec<HeadSpace> {
    use super::group::Kind;
    use super::transformer::BranchKind;
    let mut out = Vec::new();
    for (i, b) in s.branches.iter().enumerate() {
        let BranchKind::Attention(a) = &b.kind else {
            continue;
        };
        let qk = match a.rope {
            Some(_) => {
                let node = a.q.map(|q| q.node).unwrap_or(a.o.node);
                HeadSpace {
                    branch: i,
                    space: "q/k",
                    admits: Kind::None,
                    blocker: Some((
                        node,
                        "RoPE'd q/k: only RoPE-commuting 2×2 maps per frequency pair".into(),
                    )),
                }
            }
            None => HeadSpace {
                branch: i,
                space: "q/k",
                admits: Kind::Orthogonal,
                blocker: None,
            },
        };
        out.push(qk);
        let vo = match (a.v, a.head_dim) {
            (Some(_), Some(_)) => HeadSpace {
                branch: i,
                space: "v/o",
                admits: Kind::Orthogonal,
                blocker: None,
            },
            _ => HeadSpace {
                branch: i,
                space: "v/o",
                admits: Kind::None,
                blocker: Some((a.o.node, "v projection or head size not found".into())),
            },
        };
        out.push(vo);
    }
    out
}
