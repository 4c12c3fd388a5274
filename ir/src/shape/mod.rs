//! Type and shape inference with symbolic dimensions.
//!
//! Inference walks a graph in topological order and computes, for every value, the most precise
//! type that both its declaration and its producer's rule allow ([`dims::refine`]): a declared
//! dimension is never replaced by a less precise one, and a declared fixed size that disagrees
//! with an inferred one is reported, naming the node. Symbols propagate (`MatMul` of
//! `[batch, seq, 576] × [576, 1536]` is `[batch, seq, 1536]`), and small integer tensors that
//! hold shapes are tracked by value (see `values.rs`) so that `Reshape`/`Expand` targets built
//! with `Shape`/`Slice`/`Concat` resolve.
//!
//! Rules live in one file per op family: `elementwise`, `nn` (MatMul, Gemm, norms, attention),
//! `einsum`, `reduce`, `layout` (reshape-like), `index` (gather/slice/creation). Ops without a
//! rule (opaque ops) yield unknown results and keep whatever type they declare.
//!
//! Problems found inside a branch of an `If` are warnings, not errors: the branch may never
//! run, and exporters guard shape-specific code with exactly such conditions.
//!
//! Entry points: [`infer_types`] (one graph, read-only), [`infer_graph`] (everything: types,
//! shape values, diagnostics, subgraphs), [`infer_shapes`] (writes refined types into the module).

mod cx;
mod dims;
mod einsum;
mod elementwise;
mod error;
mod factorized;
mod index;
mod layout;
mod nn;
mod reduce;
mod sparse;
mod values;

#[cfg(test)]
mod tests;

use crate::diag::{DiagKind, Diagnostic, Diagnostics};
use crate::graph::{Graph, GraphId, NodeId, ValueId};
use crate::module::Module;
use crate::op::{attrs, Op};
use crate::types::{DType, Dim, Type};
use cx::{Infer, NodeCx};
use std::collections::HashMap;

pub(crate) use dims::dtype_from_onnx;
pub use error::ShapeError;

/// Names visible from enclosing graphs, with their types (what a `Capture` resolves to).
pub type Scope = HashMap<String, Type>;

/// Subgraphs nested deeper than this are assumed to refer to themselves.
const MAX_DEPTH: usize = 64;

/// How to infer a graph.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InferOptions {
    /// Descend into the bodies of `If`/`Loop`/opaque graph attributes; their inferred results
    /// then type the control-flow op's results (otherwise the bodies' declared outputs do).
    pub subgraphs: bool,
    /// The graph may never run (it is, or lies inside, a branch of an `If`): problems found
    /// are warnings, since the branch condition may exist precisely to avoid them.
    pub conditional: bool,
}

/// The result of inferring one graph.
#[derive(Debug, Clone)]
pub struct GraphInference {
    pub graph: GraphId,
    /// The refined type of every value of the graph.
    pub types: HashMap<ValueId, Type>,
    /// Known contents of small integer tensors (shape computations), as dimensions.
    pub shape_values: HashMap<ValueId, Vec<Dim>>,
    /// Problems found in this graph (not in its subgraphs).
    pub diags: Diagnostics,
    /// Problems found in a graph that may never run (see [`InferOptions::conditional`]).
    pub warnings: Diagnostics,
    /// Results for the subgraphs of this graph's nodes (when inferred recursively).
    pub subgraphs: Vec<GraphInference>,
}

impl GraphInference {
    /// The diagnostics of this graph and of all its subgraphs, parents first.
    pub fn all_diags(&self) -> Diagnostics {
        let mut d = self.diags.clone();
        for s in &self.subgraphs {
            d.0.extend(s.all_diags().0);
        }
        d
    }

    /// The warnings of this graph and of all its subgraphs, parents first.
    pub fn all_warnings(&self) -> Diagnostics {
        let mut d = self.warnings.clone();
        for s in &self.subgraphs {
            d.0.extend(s.all_warnings().0);
        }
        d
    }
}

/// What [`infer_shapes`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InferStats {
    /// Graphs visited (the main graph, function bodies, subgraphs).
    pub graphs: usize,
    /// Values visited.
    pub values: usize,
    /// Values whose type was changed (refined).
    pub refined: usize,
    /// Values that now have a tensor type of known rank.
    pub ranked: usize,
    /// Values whose every dimension is now a number or a symbol.
    pub fully_shaped: usize,
    /// Problems found (malformed nodes, conflicts between declared and inferred types).
    pub diags: Diagnostics,
    /// Problems found in `If` branches, which may never run.
    pub warnings: Diagnostics,
}

/// Infers the types of one graph (and, for captures, nothing from outside it); `Err` lists
/// every problem found, including those in subgraphs (but not the warnings of `If` branches).
pub fn infer_types(m: &Module, g: GraphId) -> Result<HashMap<ValueId, Type>, Diagnostics> {
    let r = infer_graph(
        m,
        g,
        &Scope::new(),
        InferOptions {
            subgraphs: true,
            conditional: false,
        },
    );
    let d = r.all_diags();
    if d.is_empty() {
        Ok(r.types)
    } else {
        Err(d)
    }
}

/// Infers one graph. `outer` gives the types of names captured from enclosing graphs.
pub fn infer_graph(m: &Module, g: GraphId, outer: &Scope, opts: InferOptions) -> GraphInference {
    infer_impl(m, g, outer, opts, 0)
}

/// Infers every graph of the module (main graph, functions, subgraphs) and writes the refined
/// types back. Declared dimensions are never made less precise.
pub fn infer_shapes(m: &mut Module) -> InferStats {
    let mut tops = vec![m.main];
    for f in &m.functions {
        if !tops.contains(&f.graph) {
            tops.push(f.graph);
        }
    }
    let opts = InferOptions {
        subgraphs: true,
        conditional: false,
    };
    let mut stack: Vec<GraphInference> = tops
        .into_iter()
        .map(|g| infer_graph(m, g, &Scope::new(), opts))
        .collect();
    stack.reverse();
    let mut stats = InferStats::default();
    while let Some(r) = stack.pop() {
        stats.graphs += 1;
        stats.diags.0.extend(r.diags.0);
        stats.warnings.0.extend(r.warnings.0);
        if r.graph.index() < m.graphs.len() {
            let graph = m.graph_mut(r.graph);
            let mut vals: Vec<(ValueId, Type)> = r.types.into_iter().collect();
            vals.sort_by_key(|(v, _)| *v);
            for (v, ty) in vals {
                if !graph.is_valid_value(v) {
                    continue;
                }
                stats.values += 1;
                // A tensor whose element type is not known cannot be written as a declaration.
                let writable = ty.as_tensor().is_none_or(|t| t.dtype != DType::Undefined);
                if writable && graph.value_type(v) != &ty {
                    graph.set_value_type(v, ty.clone());
                    stats.refined += 1;
                }
                if let Some(s) = ty.as_tensor().and_then(|t| t.shape.as_ref()) {
                    stats.ranked += 1;
                    if s.iter().all(|d| *d != Dim::Unknown) {
                        stats.fully_shaped += 1;
                    }
                }
            }
        }
        stack.extend(r.subgraphs.into_iter().rev());
    }
    stats
}

/// Every name of `graph` with its best known type, over the names of `outer`: what a subgraph
/// of one of its nodes can capture.
fn scope_of(graph: &Graph, types: &HashMap<ValueId, Type>, outer: &Scope) -> Scope {
    crate::verify::scope_with(graph, &graph.node_ids(), types, outer)
}

fn infer_impl(
    m: &Module,
    g: GraphId,
    outer: &Scope,
    opts: InferOptions,
    depth: usize,
) -> GraphInference {
    let mut res = GraphInference {
        graph: g,
        types: HashMap::new(),
        shape_values: HashMap::new(),
        diags: Diagnostics::default(),
        warnings: Diagnostics::default(),
        subgraphs: Vec::new(),
    };
    if g.index() >= m.graphs.len() {
        // No graph to name: the id is all there is.
        res.diags.0.push(Diagnostic {
            kind: DiagKind::Structure,
            graph: String::new(),
            graph_id: Some(g),
            node: String::new(),
            node_id: None,
            message: format!("graph #{} does not exist", g.index()),
        });
        return res;
    }
    let graph = m.graph(g);
    if depth > MAX_DEPTH {
        res.diags.error(
            DiagKind::Structure,
            graph,
            Some(g),
            None,
            "subgraphs nest too deeply (a graph contains itself?)",
        );
        return res;
    }
    let order = match graph.toposort() {
        Ok(o) => o,
        Err(_) => {
            let at = crate::verify::find_cycle(graph).first().copied();
            res.diags.error(
                DiagKind::Structure,
                graph,
                Some(g),
                at,
                "is on a cycle; types were not inferred",
            );
            return res;
        }
    };
    for id in order {
        let node = graph.node(id);
        let inferred = node_types(m, graph, id, outer, opts, depth, &mut res);
        // In a graph that may not run, a failing rule may be the reason it does not.
        let sink = if opts.conditional {
            &mut res.warnings
        } else {
            &mut res.diags
        };
        let inferred = match inferred {
            Ok(v) => v,
            Err(e) => {
                sink.error(e.diag_kind(), graph, Some(g), Some(id), e.to_string());
                Vec::new()
            }
        };
        for (i, out) in node.outputs.iter().enumerate() {
            let guess = inferred.get(i).unwrap_or(&Type::Unknown);
            let (ty, conflict) = dims::refine(&out.ty, guess);
            // Unnamed results are omitted optional outputs: whatever they declare does not exist.
            if let (Some(c), false) = (conflict, out.name.is_empty()) {
                sink.error(
                    c.diag_kind(),
                    graph,
                    Some(g),
                    Some(id),
                    format!("result %{}: {c}", out.name),
                );
            }
            res.types.insert(
                ValueId {
                    node: id,
                    output: i as u32,
                },
                ty,
            );
        }
        if node.outputs.len() == 1 {
            let v0 = ValueId {
                node: id,
                output: 0,
            };
            let cx = NodeCx {
                m,
                node,
                types: &res.types,
                values: &res.shape_values,
            };
            let known = res.types.get(&v0).and_then(|t| values::propagate(&cx, t));
            if let Some(known) = known {
                res.shape_values.insert(v0, known);
            }
        }
    }
    res
}

/// What the rule of node `id` of `graph` infers for its results: control flow and opaque ops
/// with subgraphs infer their bodies (into `res.subgraphs`), every other op runs its rule on the
/// types and shape values found so far.
fn node_types(
    m: &Module,
    graph: &Graph,
    id: NodeId,
    outer: &Scope,
    opts: InferOptions,
    depth: usize,
    res: &mut GraphInference,
) -> Infer {
    let node = graph.node(id);
    match &node.op {
        Op::If(a) => {
            let scope = scope_of(graph, &res.types, outer);
            if_types(
                m,
                node.outputs.len(),
                a,
                &scope,
                opts,
                depth,
                &mut res.subgraphs,
            )
        }
        Op::Loop(a) => {
            let scope = scope_of(graph, &res.types, outer);
            let carried: Vec<Type> = (2..node.operands().len())
                .map(|s| {
                    node.operand(s)
                        .and_then(|v| res.types.get(&v))
                        .cloned()
                        .unwrap_or_default()
                })
                .collect();
            loop_types(
                m,
                node.outputs.len(),
                a,
                &carried,
                &scope,
                opts,
                depth,
                &mut res.subgraphs,
            )
        }
        Op::Opaque(_) if opts.subgraphs && !node.op.subgraphs().is_empty() => {
            let scope = scope_of(graph, &res.types, outer);
            for sub in node.op.subgraphs() {
                res.subgraphs
                    .push(infer_impl(m, sub, &scope, opts, depth + 1));
            }
            Ok(Vec::new())
        }
        _ => {
            let cx = NodeCx {
                m,
                node,
                types: &res.types,
                values: &res.shape_values,
            };
            infer_node(&cx, outer)
        }
    }
}

/// The output types of a subgraph: inferred when recursing, declared otherwise.
fn body_outputs(
    m: &Module,
    g: GraphId,
    scope: &Scope,
    opts: InferOptions,
    depth: usize,
    subs: &mut Vec<GraphInference>,
) -> Infer {
    if g.index() >= m.graphs.len() {
        return Err(ShapeError::Missing(format!(
            "refers to graph #{} which does not exist",
            g.index()
        )));
    }
    let body = m.graph(g);
    if !opts.subgraphs {
        return Ok(body
            .outputs
            .iter()
            .map(|o| {
                if body.is_valid_value(o.value) {
                    body.value_type(o.value).clone()
                } else {
                    Type::Unknown
                }
            })
            .collect());
    }
    let sub = infer_impl(m, g, scope, opts, depth + 1);
    let tys = body
        .outputs
        .iter()
        .map(|o| sub.types.get(&o.value).cloned().unwrap_or_default())
        .collect();
    subs.push(sub);
    Ok(tys)
}

fn if_types(
    m: &Module,
    n_out: usize,
    a: &attrs::If,
    scope: &Scope,
    opts: InferOptions,
    depth: usize,
    subs: &mut Vec<GraphInference>,
) -> Infer {
    let (Some(t), Some(e)) = (a.then_branch, a.else_branch) else {
        return Err(ShapeError::Attribute(
            "If needs both then_branch and else_branch".into(),
        ));
    };
    let branch = InferOptions {
        conditional: true,
        ..opts
    };
    let tt = body_outputs(m, t, scope, branch, depth, subs)?;
    let et = body_outputs(m, e, scope, branch, depth, subs)?;
    if tt.len() != et.len() || tt.len() != n_out {
        return Err(ShapeError::Arity(format!(
            "If has {n_out} results but its branches return {} and {} values",
            tt.len(),
            et.len()
        )));
    }
    // Either branch may run: keep what both agree on.
    Ok(tt
        .iter()
        .zip(&et)
        .map(|(x, y)| dims::join_type(x, y))
        .collect())
}

#[allow(clippy::too_many_arguments)]
fn loop_types(
    m: &Module,
    n_out: usize,
    a: &attrs::Loop,
    carried: &[Type],
    scope: &Scope,
    opts: InferOptions,
    depth: usize,
    subs: &mut Vec<GraphInference>,
) -> Infer {
    let Some(body) = a.body else {
        return Err(ShapeError::Attribute("Loop has no body".into()));
    };
    let bt = body_outputs(m, body, scope, opts, depth, subs)?;
    let n = carried.len();
    if bt.len() < 1 + n || n_out != bt.len() - 1 {
        return Err(ShapeError::Arity(format!(
            "Loop carries {n} values and has {n_out} results but its body returns {}",
            bt.len()
        )));
    }
    let mut out: Vec<Type> = carried
        .iter()
        .zip(&bt[1..])
        .map(|(init, next)| dims::join_type(init, next))
        .collect();
    // Scan outputs stack one body result per iteration along a new leading axis.
    for t in &bt[1 + n..] {
        out.push(match t.as_tensor() {
            Some(tt) => dims::tensor(
                tt.dtype,
                tt.shape.as_ref().map(|s| {
                    std::iter::once(Dim::Unknown)
                        .chain(s.iter().cloned())
                        .collect()
                }),
            ),
            None => Type::Unknown,
        });
    }
    Ok(out)
}

/// The shared attributes of a `Reduce*` op's attribute struct.
macro_rules! reduce_attrs {
    ($a:expr) => {
        reduce::ReduceAttrs {
            axes: $a.axes.as_ref(),
            keepdims: $a.keepdims(),
            noop_with_empty_axes: $a.noop_with_empty_axes(),
        }
    };
}
/// The rule for one node that is not control flow.
fn infer_node(cx: &NodeCx, outer: &Scope) -> Infer {
    use elementwise as ew;
    use Op::*;
    let node = cx.node;
    match &node.op {
        // A graph input keeps its declaration; a default value only pins its element type
        // (the input can be fed with another shape).
        Input { default } => Ok(vec![match default {
            Some(t) if t.index() < cx.m.tensors.len() => dims::tensor(cx.m.tensor(*t).dtype, None),
            _ => Type::Unknown,
        }]),
        Const(t) => {
            if t.index() >= cx.m.tensors.len() {
                return Err(ShapeError::Missing(
                    "refers to a tensor that does not exist".into(),
                ));
            }
            Ok(vec![ew::tensor_type(cx.m.tensor(*t))])
        }
        Capture => Ok(vec![node
            .outputs
            .first()
            .and_then(|o| outer.get(&o.name))
            .cloned()
            .unwrap_or_default()]),
        Identity
        | Neg
        | Abs
        | Sqrt
        | Reciprocal
        | Exp
        | Log
        | Sin
        | Cos
        | Tan
        | Tanh
        | Asin
        | Acos
        | Atan
        | Sinh
        | Cosh
        | Asinh
        | Acosh
        | Atanh
        | Erf
        | Sigmoid
        | Relu
        | Floor
        | Ceil
        | Round
        | Sign
        | Softplus
        | Softsign
        | HardSwish
        | Mish
        | BitwiseNot
        | Clip
        | Gelu(_)
        | LeakyRelu(_)
        | Elu(_)
        | Celu(_)
        | Selu(_)
        | HardSigmoid(_)
        | ThresholdedRelu(_)
        | CumSum(_)
        | Trilu(_)
        | ScatterND(_)
        | ScatterElements(_)
        | Hardmax(_)
        | CumProd(_)
        | BatchNormalization(_)
        | InstanceNormalization(_)
        | MeanVarianceNormalization(_)
        | LpNormalization(_)
        | Scatter(_)
        | ReverseSequence(_)
        | Shrink(_) => ew::same(cx),
        EyeLike(a) => match a.dtype {
            Some(code) => ew::same_shape_as(cx, DType::from_code(code)),
            None => ew::same(cx),
        },
        Conv(a) => nn::conv(cx, &crate::semantics::pool::PoolAttrs::from(a)),
        Not | IsNaN | IsInf(_) => ew::same_shape_as(cx, DType::Bool),
        Add | Sub | Mul | Div | Mod(_) | PRelu | BitwiseAnd | BitwiseOr | BitwiseXor | Max
        | Min | Sum | Mean | BitShift(_) => ew::broadcast_all(cx, None),
        And | Or | Xor | Equal | Less | LessOrEqual | Greater | GreaterOrEqual => {
            ew::broadcast_all(cx, Some(DType::Bool))
        }
        Pow => ew::pow(cx),
        Where => ew::where_(cx),
        Cast(a) => ew::cast(cx, a),
        CastLike(_) => ew::cast_like(cx),
        Dropout(_) => ew::dropout(cx),
        Softmax(a) => ew::same_with_axis(cx, a.axis, -1),
        LogSoftmax(a) => ew::same_with_axis(cx, a.axis, -1),
        MatMul => nn::matmul(cx),
        Gemm(a) => nn::gemm(cx, a),
        Einsum(a) => einsum::einsum(cx, a),
        LayerNormalization(a) => nn::layer_norm(cx, a),
        RMSNormalization(a) => nn::rms_norm(cx, a),
        RotaryEmbedding(a) => nn::rotary(cx, a),
        Attention(a) => nn::attention(cx, a),
        MaxPool(a) => nn::pool(cx, Some(&crate::semantics::pool::PoolAttrs::from(a))),
        AveragePool(a) => nn::pool(cx, Some(&crate::semantics::pool::PoolAttrs::from(a))),
        LpPool(a) => nn::pool(cx, Some(&crate::semantics::pool::PoolAttrs::from(a))),
        GlobalAveragePool | GlobalMaxPool => nn::pool(cx, None),
        NegativeLogLikelihoodLoss(a) => nn::loss(cx, &a.reduction()),
        SoftmaxCrossEntropyLoss(a) => nn::loss(cx, &a.reduction()),
        ReduceMean(a) => reduce::reduce(cx, reduce_attrs!(a)),
        ReduceSum(a) => reduce::reduce(cx, reduce_attrs!(a)),
        ReduceMax(a) => reduce::reduce(cx, reduce_attrs!(a)),
        ReduceMin(a) => reduce::reduce(cx, reduce_attrs!(a)),
        ReduceProd(a) => reduce::reduce(cx, reduce_attrs!(a)),
        ReduceL2(a) => reduce::reduce(cx, reduce_attrs!(a)),
        ReduceSumSquare(a) => reduce::reduce(cx, reduce_attrs!(a)),
        ArgMax(a) => reduce::arg(cx, a.axis(), a.keepdims()),
        ArgMin(a) => reduce::arg(cx, a.axis(), a.keepdims()),
        TopK(a) => reduce::topk(cx, a.axis),
        Reshape(a) => layout::reshape(cx, a),
        Transpose(a) => layout::transpose(cx, a),
        Unsqueeze => layout::unsqueeze(cx),
        Squeeze => layout::squeeze(cx),
        Flatten(a) => layout::flatten(cx, a),
        Expand => layout::expand(cx),
        Tile => layout::tile(cx),
        Concat(a) => layout::concat(cx, a),
        Split(a) => layout::split(cx, a),
        Pad(_) => layout::pad(cx),
        Gather(a) => index::gather(cx, a),
        GatherElements(_) => index::gather_elements(cx),
        GatherND(a) => index::gather_nd(cx, a),
        Slice => index::slice(cx),
        Shape(a) => index::shape(cx, a),
        Size => index::size(cx),
        NonZero => index::nonzero(cx),
        Range => index::range(cx),
        ConstantOfShape(a) => index::constant_of_shape(cx, a),
        Constant(a) => index::constant(cx, a),
        OneHot(a) => index::one_hot(cx, a),
        Ortho(crate::op_ortho::OrthoOp::FusedElementwise(f)) => ew::fused_elementwise(cx, f),
        Ortho(crate::op_ortho::OrthoOp::Factorized(f)) => factorized::factorized(cx, f),
        Ortho(crate::op_ortho::OrthoOp::SparseLinear(s)) => sparse::sparse_linear(cx, s),
        // An `ortho` node the import could not type is an error here, so the verifier names it.
        Opaque(_) => match crate::op_ortho::malformed(&node.op) {
            Some(e) => Err(e.into()),
            None => ew::unknown(),
        },
        // Control flow is handled by the caller; ops added to `Op` later start out unknown.
        _ => ew::unknown(),
    }
}
