//! Normalization layers over the last axis, whatever their spelling:
//!
//! - `RMSNormalization` (opset 23) and `LayerNormalization` (opset 17);
//! - ONNX Runtime's `SimplifiedLayerNormalization` and `SkipSimplifiedLayerNormalization` (the
//!   latter also adds the residual: `sum = input + skip (+ bias)`, `out = rms(sum) ⊙ γ`);
//! - the decomposed chains `Mul(x,x)|Pow(x,2) → ReduceMean → Add(eps) → Sqrt → Div(x, ·)`
//!   (or `Sqrt → Reciprocal|Div(1, ·) → Mul(x, ·)`, or `Pow(·, -0.5) → Mul(x, ·)`), optionally followed by
//!   `Mul(γ)`; with `ReduceMean(x) → Sub(x, mean)` in front it is a LayerNorm, optionally
//!   followed by `Add(β)`.
//!
//! A norm records every node of its pattern, so callers can treat it as one unit.

use super::util::{
    const_all_equal, const_scalar, const_tensor, other_operand, out0, reduces_last_axis, sole_user,
    sole_user_with_const,
};
use crate::graph::{Graph, NodeId, ValueId};
use crate::module::Module;
use crate::op::Op;
use crate::tensor::TensorId;
use std::collections::HashMap;

/// What the norm computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// `x / sqrt(mean(x²) + eps) ⊙ γ`.
    Rms,
    /// `(x − mean x) / sqrt(var x + eps) ⊙ γ + β`.
    Layer,
}

/// How the graph spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormForm {
    Decomposed,
    /// `RMSNormalization` or `LayerNormalization`.
    Onnx,
    /// ONNX Runtime's `SimplifiedLayerNormalization`.
    OrtSimplified,
    /// ONNX Runtime's `SkipSimplifiedLayerNormalization` (residual add fused in).
    OrtSkip,
}

/// A per-channel parameter (gain or bias) of a norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormParam {
    /// The node that reads it and the operand slot.
    pub consumer: NodeId,
    pub slot: usize,
    pub konst: NodeId,
    pub tensor: TensorId,
    /// Every element is exactly 1 (gain) or 0 (bias).
    pub trivial: bool,
    /// One element per channel (else a scalar or another broadcast shape).
    pub per_channel: bool,
}

/// One normalization layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Norm {
    pub kind: NormKind,
    pub form: NormForm,
    /// The node that produces `output` (the op, or the chain's last node).
    pub node: NodeId,
    /// Every node of the pattern, `node` included.
    pub nodes: Vec<NodeId>,
    pub input: ValueId,
    /// The second summand of a fused residual add (`OrtSkip`).
    pub skip: Option<ValueId>,
    /// The residual sum a fused norm exposes (`OrtSkip` output 3), when used.
    pub sum: Option<ValueId>,
    pub output: ValueId,
    pub gain: Option<NormParam>,
    pub bias: Option<NormParam>,
    pub eps: Option<f64>,
    /// Normalizes over the last axis only (anything else is reported, never transformed).
    pub last_axis: bool,
}

impl Norm {
    /// A short description: `RMSNorm (decomposed)`, `LayerNormalization`, …
    pub fn describe(&self) -> String {
        let k = match self.kind {
            NormKind::Rms => "RMSNorm",
            NormKind::Layer => "LayerNorm",
        };
        let f = match self.form {
            NormForm::Decomposed => "decomposed",
            NormForm::Onnx => "op",
            NormForm::OrtSimplified => "ORT SimplifiedLayerNormalization",
            NormForm::OrtSkip => "ORT SkipSimplifiedLayerNormalization",
        };
        format!("{k} ({f})")
    }

    /// Whether the gain is absent or all ones.
    pub fn gain_is_one(&self) -> bool {
        self.gain.is_none_or(|p| p.trivial)
    }
}

fn param(
    m: &Module,
    g: &Graph,
    consumer: NodeId,
    slot: usize,
    trivial_value: f64,
) -> Option<NormParam> {
    let v = g.node(consumer).operand(slot)?;
    let tensor = const_tensor(g, v)?;
    let d = m.tensor(tensor);
    let n = d.numel()?;
    let per_channel = d.dims.last().is_some_and(|&l| l as u64 == n) && n > 1;
    Some(NormParam {
        consumer,
        slot,
        konst: v.node,
        tensor,
        trivial: const_all_equal(m, g, v, trivial_value),
        per_channel,
    })
}

fn int_attr(attrs: &[crate::attr::Attr], name: &str) -> Option<i64> {
    attrs
        .iter()
        .find(|a| a.name == name)
        .and_then(|a| match a.value {
            crate::attr::AttrValue::Int(i) => Some(i),
            _ => None,
        })
}

fn float_attr(attrs: &[crate::attr::Attr], name: &str) -> Option<f64> {
    attrs
        .iter()
        .find(|a| a.name == name)
        .and_then(|a| match a.value {
            crate::attr::AttrValue::Float(f) => Some(f as f64),
            _ => None,
        })
}

/// A norm written as one op at node `n`.
fn match_op(m: &Module, g: &Graph, n: NodeId) -> Option<Norm> {
    let node = g.node(n);
    let input = node.operand(0)?;
    let unit = |kind, form, axis: Option<i64>, eps: Option<f32>| Norm {
        kind,
        form,
        node: n,
        nodes: vec![n],
        input,
        skip: None,
        sum: None,
        output: out0(n),
        gain: param(m, g, n, 1, 1.0),
        bias: None,
        eps: eps.map(f64::from),
        last_axis: axis.unwrap_or(-1) == -1,
    };
    match &node.op {
        Op::RMSNormalization(a) => Some(unit(NormKind::Rms, NormForm::Onnx, a.axis, a.epsilon)),
        Op::LayerNormalization(a) => {
            // Mean and inverse std-dev outputs, when used, expose statistics a rotation changes.
            if g.results(n).iter().skip(1).any(|v| !g.users(*v).is_empty()) {
                return None;
            }
            let mut u = unit(NormKind::Layer, NormForm::Onnx, a.axis, a.epsilon);
            u.bias = param(m, g, n, 2, 0.0);
            Some(u)
        }
        Op::Opaque(o) if o.domain.is_empty() || o.domain == "com.microsoft" => {
            let axis = int_attr(&o.attrs, "axis");
            let eps = float_attr(&o.attrs, "epsilon");
            match o.op_type.as_str() {
                "SimplifiedLayerNormalization" => {
                    if g.results(n).iter().skip(1).any(|v| !g.users(*v).is_empty()) {
                        return None;
                    }
                    let mut u = unit(NormKind::Rms, NormForm::OrtSimplified, axis, None);
                    u.eps = eps;
                    Some(u)
                }
                "SkipSimplifiedLayerNormalization" => {
                    let res = g.results(n);
                    if res.iter().skip(1).take(2).any(|v| !g.users(*v).is_empty())
                        || node.operand(3).is_some()
                    {
                        return None;
                    }
                    let mut u = unit(NormKind::Rms, NormForm::OrtSkip, None, None);
                    u.eps = eps;
                    u.skip = node.operand(1);
                    u.gain = param(m, g, n, 2, 1.0);
                    u.sum = res.get(3).copied().filter(|v| {
                        !g.users(*v).is_empty() || g.outputs.iter().any(|o| o.value == *v)
                    });
                    Some(u)
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// `x²` as `Mul(x, x)` or `Pow(x, 2)`.
fn is_square_of(m: &Module, g: &Graph, n: NodeId, x: ValueId) -> bool {
    let node = g.node(n);
    match node.op {
        Op::Mul => node.operand(0) == Some(x) && node.operand(1) == Some(x),
        Op::Pow => {
            node.operand(0) == Some(x)
                && node.operand(1).and_then(|e| const_scalar(m, g, e)) == Some(2.0)
        }
        _ => false,
    }
}

/// The RMS core on `x`: `x / sqrt(mean(x²) + eps)`. Returns the normalized value, the nodes and eps.
fn rms_core(m: &Module, g: &Graph, x: ValueId) -> Option<(ValueId, Vec<NodeId>, Option<f64>)> {
    let users = g.users(x);
    let sq = users
        .iter()
        .map(|u| u.0)
        .find(|&u| is_square_of(m, g, u, x))?;
    let mean = sole_user(g, out0(sq))?;
    if !reduces_last_axis(m, g, mean) {
        return None;
    }
    let add = sole_user(g, out0(mean))?;
    if !matches!(g.node(add).op, Op::Add) {
        return None;
    }
    let eps_v = other_operand(g, add, out0(mean))?;
    let eps = const_scalar(m, g, eps_v)?;
    let mut nodes = vec![sq, mean, add];
    let next = sole_user(g, out0(add))?;
    // The scaling by 1/rms: Sqrt→Div, Sqrt→Reciprocal|Div(1, ·)→Mul, or Pow(-0.5)→Mul.
    let scale_user = |r: ValueId, nodes: &mut Vec<NodeId>| -> Option<ValueId> {
        let u = sole_user(g, r)?;
        let un = g.node(u);
        match un.op {
            Op::Div if un.operand(0) == Some(x) && un.operand(1) == Some(r) => {
                nodes.push(u);
                Some(out0(u))
            }
            Op::Mul if other_operand(g, u, r) == Some(x) => {
                nodes.push(u);
                Some(out0(u))
            }
            _ => None,
        }
    };
    let normalized = match g.node(next).op {
        Op::Sqrt => {
            nodes.push(next);
            let s = out0(next);
            let u = sole_user(g, s)?;
            let un = g.node(u);
            // 1/rms as `Reciprocal(s)` or, as torch's TorchScript exporter spells `rsqrt`, as
            // `Div(1, s)`.
            let is_reciprocal = match un.op {
                Op::Reciprocal => true,
                Op::Div => {
                    un.operand(1) == Some(s)
                        && un.operand(0).and_then(|o| const_scalar(m, g, o)) == Some(1.0)
                }
                _ => false,
            };
            if is_reciprocal {
                nodes.push(u);
                scale_user(out0(u), &mut nodes)?
            } else {
                scale_user(s, &mut nodes)?
            }
        }
        Op::Pow => {
            let e = g
                .node(next)
                .operand(1)
                .and_then(|e| const_scalar(m, g, e))?;
            if e != -0.5 || g.node(next).operand(0) != Some(out0(add)) {
                return None;
            }
            nodes.push(next);
            scale_user(out0(next), &mut nodes)?
        }
        _ => return None,
    };
    Some((normalized, nodes, Some(eps)))
}

/// A decomposed norm whose input is `x`.
fn match_decomposed(m: &Module, g: &Graph, x: ValueId) -> Option<Norm> {
    // LayerNorm: ReduceMean(x) → Sub(x, mean), then the RMS core on the centred value.
    let mut centred = None;
    for (u, _) in g.users(x) {
        let un = g.node(u);
        if matches!(un.op, Op::ReduceMean(_))
            && un.operand(0) == Some(x)
            && reduces_last_axis(m, g, u)
        {
            for (s, _) in g.users(out0(u)) {
                let sn = g.node(s);
                if matches!(sn.op, Op::Sub)
                    && sn.operand(0) == Some(x)
                    && sn.operand(1) == Some(out0(u))
                {
                    centred = Some((u, s));
                }
            }
        }
    }
    let (kind, core_in, mut nodes) = match centred {
        Some((mean, sub)) => (NormKind::Layer, out0(sub), vec![mean, sub]),
        None => (NormKind::Rms, x, Vec::new()),
    };
    let (normalized, core_nodes, eps) = rms_core(m, g, core_in)?;
    nodes.extend(core_nodes);
    let mut output = normalized;
    let mut gain = None;
    let mut bias = None;
    // A gain (`Mul` by a constant) and, for LayerNorm, a bias (`Add` of one) after the core.
    if let Some((u, slot, _)) = sole_user_with_const(m, g, output, |o| matches!(o, Op::Mul)) {
        gain = param(m, g, u, slot, 1.0);
        nodes.push(u);
        output = out0(u);
    }
    if kind == NormKind::Layer {
        if let Some((u, slot, _)) = sole_user_with_const(m, g, output, |o| matches!(o, Op::Add)) {
            bias = param(m, g, u, slot, 0.0);
            nodes.push(u);
            output = out0(u);
        }
    }
    let node = output.node;
    Some(Norm {
        kind,
        form: NormForm::Decomposed,
        node,
        nodes,
        input: x,
        skip: None,
        sum: None,
        output,
        gain,
        bias,
        eps,
        last_axis: true,
    })
}

/// Every norm of a graph, with lookups by input, output and member node.
#[derive(Debug, Clone, Default)]
pub struct Norms {
    pub list: Vec<Norm>,
    pub by_node: HashMap<NodeId, usize>,
    pub by_output: HashMap<ValueId, usize>,
}

impl Norms {
    /// Finds every norm: ops first, then decomposed chains from every value.
    pub fn find(m: &Module, g: &Graph) -> Norms {
        let mut out = Norms::default();
        let mut order = g.toposort().unwrap_or_else(|_| g.node_ids());
        order.retain(|&n| !matches!(g.node(n).op, Op::Const(_)));
        for &n in &order {
            if let Some(norm) = match_op(m, g, n) {
                out.push(norm);
            }
        }
        for &n in &order {
            for v in g.results(n) {
                if g.users(v).len() < 2 {
                    continue;
                }
                if let Some(norm) = match_decomposed(m, g, v) {
                    if norm.nodes.iter().all(|x| !out.by_node.contains_key(x)) {
                        out.push(norm);
                    }
                }
            }
        }
        out
    }

    fn push(&mut self, norm: Norm) {
        let i = self.list.len();
        for &n in &norm.nodes {
            self.by_node.insert(n, i);
        }
        self.by_output.insert(norm.output, i);
        if let Some(s) = norm.sum {
            self.by_output.insert(s, i);
        }
        self.list.push(norm);
    }
}
