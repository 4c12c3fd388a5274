//! Reverse-mode automatic differentiation as a graph transformation.
//!
//! [`autodiff`] appends to a module's main graph the ops that compute the gradient of a scalar
//! loss with respect to chosen parameters (initializers or graph inputs, selected by name
//! patterns), and exposes each gradient as a graph output named `<param>_grad`. The backward
//! graph is ordinary IR: standard ONNX ops, printed in `.oir`, checked by the verifier and run
//! by the same engine as the forward graph.
//!
//! How it works:
//! 1. Shape inference types every value (rules need ranks and broadcast shapes).
//! 2. Reachability: a value is *active* when it is a floating-point value computed from a
//!    trainable parameter and the loss is computed from it. Nothing else gets gradient ops
//!    (integer and boolean values — shapes, masks, indices — stop the flow).
//! 3. Every active node must have a rule for every active operand; all that lack one are
//!    reported together ([`AutodiffError::Missing`]) before the module is touched.
//! 4. Reverse sweep in reverse topological order: a node's result gradients are summed, its
//!    rule ([`rules`], one per op, grouped by op family) emits the operand gradients.
//!
//! Fused elementwise regions (`ortho.FusedElementwise`) on the gradient path are lowered to their
//! standard ops first (the report counts them), so they differentiate through the ops' rules.
//!
//! The work happens on a copy of the module that replaces the original only on success, so an
//! error leaves the caller's module unchanged.

pub mod builder;
pub mod loss;
pub mod rules;

use builder::Builder;
use ortho_ir::{DType, GraphOutput, Module, NodeId, Op, ValueId};
use std::collections::{HashMap, HashSet};
use std::fmt;

/// What to differentiate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutodiffSpec {
    /// The name of the scalar loss value in the main graph.
    pub loss: String,
    /// Name patterns of the parameters (`*` matches any run of characters); a parameter is an
    /// initializer or a graph input of floating-point type.
    pub trainable: Vec<String>,
}

/// Parameter name patterns as the command line and the `trainable` option spell them: patterns
/// separated by `|`, blanks around them ignored, empty ones dropped.
pub fn split_patterns(spec: &str) -> Vec<String> {
    spec.split('|')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// One operand a rule is missing for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingGrad {
    /// The op type (`LayerNormalization`, an opaque op's type, …).
    pub op: String,
    /// How the node is named (`Graph::describe`).
    pub node: String,
    pub node_id: NodeId,
    /// The operand slot whose gradient has no rule.
    pub slot: usize,
}

/// The list of missing rules, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingList(pub Vec<MissingGrad>);

impl fmt::Display for MissingList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ops: Vec<&str> = self.0.iter().map(|m| m.op.as_str()).collect();
        ops.sort_unstable();
        ops.dedup();
        write!(f, "ops without a gradient rule: {}", ops.join(", "))?;
        for m in &self.0 {
            write!(f, "\n  {} operand {} of {}", m.op, m.slot, m.node)?;
        }
        Ok(())
    }
}

/// Why differentiation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AutodiffError {
    #[error("the loss '{0}' is not a value of the main graph")]
    NoLoss(String),
    #[error("the loss '{name}' must be a floating-point scalar (one element), got {ty}")]
    LossNotScalar { name: String, ty: String },
    #[error("no parameter matches the trainable patterns {0:?}")]
    NoTrainable(Vec<String>),
    #[error("the loss '{0}' does not depend on any trainable parameter")]
    LossIndependent(String),
    #[error("{0}")]
    Missing(MissingList),
    #[error("gradient of {node}: the rank of '{value}' is unknown (run shape inference or declare the input's shape)")]
    UnknownRank { value: String, node: String },
    #[error("gradient of {node}: how '{value}' broadcasts is only known at run time (a symbolic dim beside another dim)")]
    Broadcast { value: String, node: String },
    #[error("'{value}' has element type {dtype}; gradients are computed in f32 or f64 only")]
    DType { value: String, dtype: String },
    #[error("gradient of {node}: {why}")]
    Unsupported { node: String, why: String },
    #[error("the main graph has a cycle")]
    Cycle,
}

/// What [`autodiff`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutodiffReport {
    /// (parameter name, gradient output name), in graph order.
    pub grads: Vec<(String, String)>,
    /// Forward nodes the gradient flows through.
    pub active_nodes: usize,
    /// Nodes added for the backward graph.
    pub added_nodes: usize,
    /// Parameters the loss does not depend on (their gradient is zero).
    pub unused: Vec<String>,
    /// `ortho` nodes on the gradient path; when nonzero the module was lowered to standard ops
    /// (`lower-ortho`) before differentiation.
    pub lowered_fused: usize,
}

/// Whether `name` matches `pattern`, where `*` matches any (possibly empty) run of characters.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// The parameters of the main graph whose names match `patterns`: floating-point initializers
/// and graph inputs, in graph order.
pub fn select_params(m: &Module, patterns: &[String]) -> Vec<ValueId> {
    let g = m.main_graph();
    let Ok(order) = g.toposort() else {
        return Vec::new();
    };
    order
        .into_iter()
        .filter(|&n| matches!(g.node(n).op, Op::Const(_) | Op::Input { .. }))
        .map(|n| ValueId { node: n, output: 0 })
        .filter(|&v| {
            let name = g.value_name(v);
            let float = matches!(
                g.value_type(v).dtype(),
                Some(DType::F32 | DType::F64) | None
            );
            float && patterns.iter().any(|p| glob_match(p, name))
        })
        .collect()
}

/// Turns the initializers among `params` into graph inputs whose default is the initializer
/// (ONNX's initializer-backed inputs), so a compiled plan can be fed updated parameters without
/// being recompiled; the model's meaning is unchanged when they are not fed. Returns the names
/// of the parameters converted, in order.
pub fn parameters_as_inputs(m: &mut Module, params: &[ValueId]) -> Vec<String> {
    let g = m.main_graph_mut();
    let mut inputs = g.inputs().to_vec();
    let mut done = Vec::new();
    for &v in params {
        if let Op::Const(t) = g.node(v.node).op {
            g.node_mut(v.node).op = Op::Input { default: Some(t) };
            inputs.push(v.node);
            done.push(g.value_name(v).to_string());
        }
    }
    g.set_inputs(inputs);
    done
}

fn is_float(m: &Module, v: ValueId) -> bool {
    matches!(
        m.main_graph().value_type(v).dtype(),
        Some(DType::F32 | DType::F64)
    )
}

/// The forward nodes the gradient flows through, in topological order, and the active values.
fn active_region(
    m: &Module,
    params: &[ValueId],
    loss: ValueId,
) -> Result<(Vec<NodeId>, HashSet<ValueId>), AutodiffError> {
    let g = m.main_graph();
    let order = g.toposort().map_err(|_| AutodiffError::Cycle)?;
    // Forward: floating-point values computed from a parameter.
    let mut dep: HashSet<ValueId> = params.iter().copied().collect();
    for &n in &order {
        let node = g.node(n);
        if node.op.is_structural() || !node.inputs().any(|v| dep.contains(&v)) {
            continue;
        }
        for v in g.results(n) {
            if is_float(m, v) {
                dep.insert(v);
            }
        }
    }
    // Backward: of those, the ones the loss is computed from.
    let mut needed: HashSet<ValueId> = HashSet::new();
    if dep.contains(&loss) {
        needed.insert(loss);
    }
    let mut active = Vec::new();
    for &n in order.iter().rev() {
        let node = g.node(n);
        if node.op.is_structural() || !g.results(n).iter().any(|v| needed.contains(v)) {
            continue;
        }
        active.push(n);
        for v in node.inputs() {
            if dep.contains(&v) {
                needed.insert(v);
            }
        }
    }
    active.reverse();
    Ok((active, needed))
}

/// Appends the gradient of `spec.loss` with respect to the parameters matching
/// `spec.trainable` to `m`'s main graph; see the module documentation.
pub fn autodiff(m: &mut Module, spec: &AutodiffSpec) -> Result<AutodiffReport, AutodiffError> {
    let mut work = m.clone();
    ortho_ir::shape::infer_shapes(&mut work);
    let g = work.main_graph();
    let loss = *g
        .value_names()
        .get(&spec.loss)
        .ok_or_else(|| AutodiffError::NoLoss(spec.loss.clone()))?;
    let lt = g.value_type(loss);
    let scalar = lt
        .as_tensor()
        .and_then(|t| t.shape.as_ref())
        .is_some_and(|s| s.iter().all(|d| d.fixed() == Some(1)));
    if !scalar || !is_float(&work, loss) {
        return Err(AutodiffError::LossNotScalar {
            name: spec.loss.clone(),
            ty: lt.to_string(),
        });
    }
    let params = select_params(&work, &spec.trainable);
    if params.is_empty() {
        return Err(AutodiffError::NoTrainable(spec.trainable.clone()));
    }
    let mut loss = loss;
    let (mut active, mut needed) = active_region(&work, &params, loss)?;
    // A fused elementwise region on the gradient path is differentiated through its standard
    // ops: the module is lowered (lower-ortho) and the region found again.
    let fused_on_path = active
        .iter()
        .filter(|&&n| matches!(work.main_graph().node(n).op, Op::Ortho(_)))
        .count();
    if fused_on_path > 0 {
        crate::transforms::lower_ortho(&mut work).map_err(|e| AutodiffError::Unsupported {
            node: e.node.clone(),
            why: format!("lowering ortho ops before differentiation: {}", e.message),
        })?;
        ortho_ir::shape::infer_shapes(&mut work);
        // The loss may have been a fused node's result: found again by its name.
        loss = *work
            .main_graph()
            .value_names()
            .get(&spec.loss)
            .ok_or_else(|| AutodiffError::NoLoss(spec.loss.clone()))?;
        (active, needed) = active_region(&work, &params, loss)?;
    }
    let g = work.main_graph();
    if active.is_empty() && !params.contains(&loss) {
        return Err(AutodiffError::LossIndependent(spec.loss.clone()));
    }

    // Every missing rule at once, before anything is emitted.
    let mut missing = Vec::new();
    for &n in &active {
        let node = g.node(n);
        for (slot, v) in node.operands().iter().enumerate() {
            if v.is_some_and(|v| needed.contains(&v)) && !rules::supports(&node.op, slot) {
                missing.push(MissingGrad {
                    op: node.op.name().to_string(),
                    node: g.describe(n),
                    node_id: n,
                    slot,
                });
            }
        }
    }
    if !missing.is_empty() {
        return Err(AutodiffError::Missing(MissingList(missing)));
    }

    let mut b = Builder::new(&mut work);
    let mut grads: HashMap<ValueId, Vec<ValueId>> = HashMap::new();
    // The seed: dL/dL = 1 in the loss's shape.
    let dt = b.dtype(loss)?;
    let ones = b.m.add_tensor(builder::scalar_tensor(dt, 1.0, vec![1]));
    let s = b.shape_of(loss);
    let seed = b.one(
        Op::ConstantOfShape(ortho_ir::attrs::ConstantOfShape { value: Some(ones) }),
        &[s],
        "seed",
    );
    grads.insert(loss, vec![seed]);

    for &n in active.iter().rev() {
        b.site = Some(n);
        let (operands, outs) = {
            let g = b.m.main_graph();
            (g.node(n).operands().to_vec(), g.results(n))
        };
        let mut dys = Vec::with_capacity(outs.len());
        for o in &outs {
            let parts = grads.remove(o).unwrap_or_default();
            dys.push(accumulate(&mut b, parts));
        }
        if dys.iter().all(Option::is_none) {
            continue;
        }
        let want: Vec<bool> = operands
            .iter()
            .map(|v| v.is_some_and(|v| needed.contains(&v)))
            .collect();
        let dxs = rules::apply(&mut b, n, &dys, &want)?;
        for (slot, dx) in dxs.into_iter().enumerate() {
            if let (Some(dx), Some(Some(v))) = (dx, operands.get(slot)) {
                if want[slot] {
                    grads.entry(*v).or_default().push(dx);
                }
            }
        }
    }

    b.site = None;
    let mut report = AutodiffReport {
        grads: Vec::new(),
        active_nodes: active.len(),
        added_nodes: 0,
        unused: Vec::new(),
        lowered_fused: fused_on_path,
    };
    let mut outputs = Vec::new();
    for &p in &params {
        let name = b.m.main_graph().value_name(p).to_string();
        let parts = grads.remove(&p).unwrap_or_default();
        let gv = match accumulate(&mut b, parts) {
            Some(gv) => gv,
            None => {
                report.unused.push(name.clone());
                b.zeros_like(p)?
            }
        };
        let out = format!("{name}_grad");
        report.grads.push((name, out.clone()));
        outputs.push(GraphOutput {
            value: gv,
            name: out,
        });
    }
    report.added_nodes = b.emitted;
    let graph = work.main_graph_mut();
    if !graph.outputs.iter().any(|o| o.value == loss) {
        graph.outputs.push(GraphOutput {
            value: loss,
            name: spec.loss.clone(),
        });
    }
    graph.outputs.extend(outputs);
    ortho_ir::shape::infer_shapes(&mut work);
    *m = work;
    Ok(report)
}

/// The sum of a value's gradient contributions (`None` when it has none).
fn accumulate(b: &mut Builder<'_>, parts: Vec<ValueId>) -> Option<ValueId> {
    let mut it = parts.into_iter();
    let first = it.next()?;
    Some(it.fold(first, |acc, p| b.add(acc, p)))
}

#[cfg(test)]
mod tests;
