//! The verifier: checks the invariants every pass may rely on and reports every violation at
//! once, each naming its graph and node (graph-level problems have an empty node).
//!
//! Checked, per graph and recursively through subgraphs and function bodies:
//! - SSA: operands name existing, named results; value names are unique in a graph and do not
//!   shadow names of enclosing graphs; captures resolve in an enclosing graph; input nodes are
//!   exactly the graph's listed inputs; graph outputs name existing, named values;
//! - acyclicity (naming a node that lies on the cycle);
//! - operand and result counts against [`Op::arity`] (opaque ops are not checked);
//! - tensors: dims whose element count overflows, byte sizes that do not match dtype × dims;
//! - element types per op (operands that must agree, boolean and index operands);
//! - declared result types against inferred ones (`shape`): different element types, ranks or
//!   fixed sizes are errors; symbols and unknown dimensions agree with anything.
//!
//! Type checks run only on graphs whose structure is sound, since inference needs an acyclic
//! graph with valid operands. Inside `If` branches, failing shape rules are not errors (the
//! branch may never run); structural and element-type checks still are.

use crate::diag::{DiagKind, Diagnostic, Diagnostics};
use crate::graph::{Graph, GraphId, NodeId, ValueId};
use crate::module::Module;
use crate::op::{Op, VAR};
use crate::shape::{self, dtype_from_onnx, InferOptions, Scope};
use crate::tensor::{numel, Storage, TensorId};
use crate::types::{DType, Dim, Type};
use std::collections::{HashMap, HashSet};

/// Verifies the main graph, every function body and every subgraph.
pub fn verify_module(m: &Module) -> Result<(), Diagnostics> {
    let mut v = Verifier {
        m,
        diags: Diagnostics::default(),
        stack: Vec::new(),
    };
    v.graph(m.main, &Scope::new(), false);
    for f in &m.functions {
        // Function bodies see nothing of the graphs that call them.
        if f.graph != m.main {
            v.graph(f.graph, &Scope::new(), false);
        }
    }
    // Nesting is checked first: the module-level rules walk every subgraph.
    if crate::limits::module_graph_depth(m) <= crate::limits::MAX_GRAPH_DEPTH {
        crate::verify_onnx::check(m, &mut v.diags);
    }
    v.finish()
}

/// Verifies one graph and its subgraphs; `outer` lists the names its captures may refer to.
pub fn verify_graph(m: &Module, g: GraphId, outer: &[&str]) -> Result<(), Diagnostics> {
    let scope: Scope = outer
        .iter()
        .map(|n| (n.to_string(), Type::Unknown))
        .collect();
    let mut v = Verifier {
        m,
        diags: Diagnostics::default(),
        stack: Vec::new(),
    };
    v.graph(g, &scope, false);
    v.finish()
}

struct Verifier<'m> {
    m: &'m Module,
    diags: Diagnostics,
    /// Graphs being verified, outermost first (to catch a graph that contains itself).
    stack: Vec<GraphId>,
}

/// "exactly 2", "1 to 3", "at least 1".
fn count_text(min: usize, max: usize) -> String {
    match (min, max) {
        (a, b) if a == b => format!("exactly {a}"),
        (a, VAR) => format!("at least {a}"),
        (a, b) => format!("{a} to {b}"),
    }
}

impl Verifier<'_> {
    fn finish(self) -> Result<(), Diagnostics> {
        // A subgraph shared by two nodes is verified twice; report each problem once.
        let mut seen = HashSet::new();
        let mut out = Diagnostics::default();
        for d in self.diags.0 {
            if seen.insert((d.graph.clone(), d.node.clone(), d.message.clone())) {
                out.0.push(d);
            }
        }
        out.into_result()
    }

    /// A problem of `kind` at `node` of `g`, the graph being verified (the top of the stack).
    fn err(&mut self, kind: DiagKind, g: &Graph, node: Option<NodeId>, msg: impl Into<String>) {
        let gid = self.stack.last().copied();
        self.diags.error(kind, g, gid, node, msg);
    }

    /// Verifies a graph and its subgraphs. `conditional`: the graph is (inside) a branch of an
    /// `If`, where failing shape rules are not errors (see `shape::InferOptions`).
    fn graph(&mut self, gid: GraphId, outer: &Scope, conditional: bool) {
        let m = self.m;
        if gid.index() >= m.graphs.len() {
            self.diags.0.push(Diagnostic {
                kind: DiagKind::Structure,
                ..Diagnostic::text("", "", format!("graph #{} does not exist", gid.index()))
            });
            return;
        }
        let g = m.graph(gid);
        if self.stack.contains(&gid) {
            self.diags.error(
                DiagKind::Structure,
                g,
                Some(gid),
                None,
                "graph contains itself through a subgraph attribute",
            );
            return;
        }
        // The stack holds the enclosing graphs: its length is this graph's nesting depth. The
        // walk recurses per level, and passes recurse the same way, so deeper modules stop here.
        if self.stack.len() > crate::limits::MAX_GRAPH_DEPTH {
            self.diags.error(
                DiagKind::Structure,
                g,
                Some(gid),
                None,
                format!(
                    "subgraphs nested more than {} levels deep",
                    crate::limits::MAX_GRAPH_DEPTH
                ),
            );
            return;
        }
        self.stack.push(gid);
        let mut nodes = g.node_ids();
        nodes.sort_by_key(|&n| g.node(n).seq());
        let mut sound = self.inputs(g);
        let mut names: HashMap<&str, NodeId> = HashMap::new();
        for &id in &nodes {
            sound &= self.node(g, id, outer, &mut names);
        }
        self.outputs(g);
        if g.toposort().is_err() {
            sound = false;
            let on_cycle = find_cycle(g);
            let path: Vec<String> = on_cycle.iter().take(8).map(|&n| g.describe(n)).collect();
            let more = if on_cycle.len() > 8 { " → …" } else { "" };
            self.err(
                DiagKind::Structure,
                g,
                on_cycle.first().copied(),
                format!("is on a cycle: {}{more}", path.join(" → ")),
            );
        }
        let types = if sound {
            self.types(gid, &nodes, outer, conditional)
        } else {
            HashMap::new()
        };
        let scope = scope_with(g, &nodes, &types, outer);
        for &id in &nodes {
            let op = &g.node(id).op;
            let branch = conditional || matches!(op, Op::If(_));
            for sub in op.subgraphs() {
                self.graph(sub, &scope, branch);
            }
        }
        self.stack.pop();
    }

    /// Type checks of a structurally sound graph: shape inference's diagnostics and the
    /// element-type rules. Returns the inferred types.
    fn types(
        &mut self,
        gid: GraphId,
        nodes: &[NodeId],
        outer: &Scope,
        conditional: bool,
    ) -> HashMap<ValueId, Type> {
        let (m, g) = (self.m, self.m.graph(gid));
        let inf = shape::infer_graph(
            m,
            gid,
            outer,
            InferOptions {
                subgraphs: false,
                conditional,
            },
        );
        // Everything inference reports is a shape or type problem of this graph.
        self.diags.0.extend(
            inf.diags
                .0
                .into_iter()
                .map(|d| d.or_kind(DiagKind::Shape, Some(gid))),
        );
        for &id in nodes {
            self.dtype_rules(g, id, &inf.types);
        }
        inf.types
    }

    /// The input list names existing input nodes, each once. Returns whether it is sound.
    fn inputs(&mut self, g: &Graph) -> bool {
        let mut ok = true;
        let mut seen = HashSet::new();
        for (k, &i) in g.inputs().iter().enumerate() {
            if !g.contains(i) {
                self.err(
                    DiagKind::Structure,
                    g,
                    None,
                    format!("input {k} refers to a node that does not exist"),
                );
                ok = false;
            } else if !matches!(g.node(i).op, Op::Input { .. }) {
                self.err(
                    DiagKind::Structure,
                    g,
                    Some(i),
                    format!("is listed as graph input {k} but is not an input node"),
                );
            } else if !seen.insert(i) {
                self.err(
                    DiagKind::Structure,
                    g,
                    Some(i),
                    "is listed twice among the graph inputs",
                );
            }
        }
        ok
    }

    /// Checks one node; returns false when its operands make the graph unfit for inference.
    fn node<'g>(
        &mut self,
        g: &'g Graph,
        id: NodeId,
        outer: &Scope,
        names: &mut HashMap<&'g str, NodeId>,
    ) -> bool {
        let n = g.node(id);
        let mut sound = true;
        if matches!(n.op, Op::Input { .. }) && !g.inputs().contains(&id) {
            self.err(
                DiagKind::Structure,
                g,
                Some(id),
                "is an input node but is not listed among the graph inputs",
            );
        }
        for o in &n.outputs {
            if o.name.is_empty() {
                if n.op.is_structural() {
                    self.err(DiagKind::Structure, g, Some(id), "has no result name");
                }
                continue;
            }
            if let Some(&prev) = names.get(o.name.as_str()) {
                let p = g.describe(prev);
                self.err(
                    DiagKind::Structure,
                    g,
                    Some(id),
                    format!("defines %{}, which {p} already defines", o.name),
                );
            } else {
                names.insert(&o.name, id);
            }
            match (&n.op, outer.contains_key(&o.name)) {
                (Op::Capture, false) => {
                    self.err(
                        DiagKind::Structure,
                        g,
                        Some(id),
                        format!("captures %{}, which no enclosing graph defines", o.name),
                    );
                }
                (Op::Capture, true) | (_, false) => {}
                (_, true) => self.err(
                    DiagKind::Structure,
                    g,
                    Some(id),
                    format!(
                        "defines %{}, which shadows a value of an enclosing graph",
                        o.name
                    ),
                ),
            }
        }
        for (slot, o) in n.operands().iter().enumerate() {
            let Some(v) = o else { continue };
            if !g.is_valid_value(*v) {
                self.err(
                    DiagKind::Structure,
                    g,
                    Some(id),
                    format!("operand {slot} refers to a value that does not exist"),
                );
                sound = false;
            } else if g.value_name(*v).is_empty() {
                let p = g.describe(v.node);
                self.err(
                    DiagKind::Structure,
                    g,
                    Some(id),
                    format!(
                        "operand {slot} uses result {} of {p}, which has no name",
                        v.output
                    ),
                );
            }
        }
        self.arity(g, id);
        for t in n.op.tensors() {
            self.tensor(g, id, t);
        }
        for o in &n.outputs {
            self.value_type(g, id, &o.name, &o.ty);
        }
        sound
    }

    fn arity(&mut self, g: &Graph, id: NodeId) {
        let n = g.node(id);
        if matches!(n.op, Op::Opaque(_)) {
            return;
        }
        let a = n.op.arity();
        let nin = n.operands().len();
        if nin < a.min_in || nin > a.max_in {
            self.err(
                DiagKind::Arity,
                g,
                Some(id),
                format!(
                    "takes {} operands but has {nin}",
                    count_text(a.min_in, a.max_in)
                ),
            );
        } else if !matches!(n.op, Op::Loop(_)) {
            // Loop's first two operands (trip count, condition) are optional; elsewhere the
            // leading `min_in` operands are required.
            for slot in 0..a.min_in {
                if n.operand(slot).is_none() {
                    self.err(
                        DiagKind::Arity,
                        g,
                        Some(id),
                        format!("required operand {slot} is missing"),
                    );
                }
            }
        }
        let nout = n.outputs.len();
        if nout < a.min_out || nout > a.max_out {
            self.err(
                DiagKind::Arity,
                g,
                Some(id),
                format!(
                    "has {} results but {nout} are given",
                    count_text(a.min_out, a.max_out)
                ),
            );
        }
    }

    fn tensor(&mut self, g: &Graph, id: NodeId, t: TensorId) {
        if t.index() >= self.m.tensors.len() {
            self.err(
                DiagKind::Tensor,
                g,
                Some(id),
                format!("refers to tensor #{} which does not exist", t.index()),
            );
            return;
        }
        let td = self.m.tensor(t);
        let label = if td.name.is_empty() {
            "its tensor".to_string()
        } else {
            format!("tensor '{}'", td.name)
        };
        let Some(n) = numel(&td.dims) else {
            self.err(
                DiagKind::Tensor,
                g,
                Some(id),
                format!(
                    "{label} has dims {:?}, whose element count is negative or overflows",
                    td.dims
                ),
            );
            return;
        };
        match &td.storage {
            Storage::Elided { .. } => {}
            Storage::Strings(s) => {
                if td.dtype != DType::Str {
                    self.err(
                        DiagKind::Tensor,
                        g,
                        Some(id),
                        format!("{label} holds strings but its element type is {}", td.dtype),
                    );
                } else if s.len() as u64 != n {
                    self.err(
                        DiagKind::Tensor,
                        g,
                        Some(id),
                        format!(
                            "{label} holds {} strings but dims {:?} need {n}",
                            s.len(),
                            td.dims
                        ),
                    );
                }
            }
            Storage::Bytes(_) | Storage::Mapped { .. } => {
                if td.bytes().is_none() {
                    self.err(
                        DiagKind::Tensor,
                        g,
                        Some(id),
                        format!("{label} lies outside its backing file"),
                    );
                } else if let Some(need) = td.dtype.bytes_for(n) {
                    if need != td.byte_len() {
                        let have = td.byte_len();
                        self.err(
                            DiagKind::Tensor,
                            g,
                            Some(id),
                            format!(
                                "{label} holds {have} bytes but {} × {:?} needs {need}",
                                td.dtype, td.dims
                            ),
                        );
                    }
                } else if td.dtype == DType::Str {
                    self.err(
                        DiagKind::Tensor,
                        g,
                        Some(id),
                        format!("{label} has element type str but holds raw bytes"),
                    );
                }
            }
        }
    }

    /// A declared type's fixed dimensions must be non-negative and have a representable product.
    fn value_type(&mut self, g: &Graph, id: NodeId, name: &str, ty: &Type) {
        let t = match ty {
            Type::Tensor(t) | Type::SparseTensor(t) => t,
            Type::Sequence(e) | Type::Optional(e) | Type::Map(_, e) => {
                return self.value_type(g, id, name, e)
            }
            Type::Unknown => return,
        };
        let Some(shape) = &t.shape else { return };
        let fixed: Vec<i64> = shape.iter().filter_map(Dim::fixed).collect();
        if let Some(d) = fixed.iter().find(|&&d| d < 0) {
            self.err(
                DiagKind::Shape,
                g,
                Some(id),
                format!("result %{name} has a negative dimension {d} in {ty}"),
            );
        } else if numel(&fixed).is_none() {
            self.err(
                DiagKind::Shape,
                g,
                Some(id),
                format!("result %{name} has type {ty}, whose element count overflows"),
            );
        }
    }

    fn outputs(&mut self, g: &Graph) {
        // An output exposed under a name other than its value's becomes an Identity on export;
        // that name must then be free, or the exported graph would define it twice.
        let names = g.value_names();
        let mut exposed: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for (k, o) in g.outputs.iter().enumerate() {
            if o.name.is_empty() {
                self.err(
                    DiagKind::Structure,
                    g,
                    None,
                    format!("output {k} has no name"),
                );
            } else if !exposed.insert(o.name.as_str()) {
                self.err(
                    DiagKind::Structure,
                    g,
                    None,
                    format!("output {k}: the name '{}' is exposed twice", o.name),
                );
            } else if let Some(v) = names.get(&o.name) {
                if *v != o.value {
                    self.err(
                        DiagKind::Structure,
                        g,
                        None,
                        format!(
                            "output {k} is exposed as '{}', which names another value",
                            o.name
                        ),
                    );
                }
            }
            if !g.is_valid_value(o.value) {
                self.err(
                    DiagKind::Structure,
                    g,
                    None,
                    format!(
                        "output {k} ('{}') refers to a value that does not exist",
                        o.name
                    ),
                );
            } else if g.value_name(o.value).is_empty() {
                self.err(
                    DiagKind::Structure,
                    g,
                    None,
                    format!(
                        "output {k} ('{}') is an unnamed result of {}",
                        o.name,
                        g.describe(o.value.node)
                    ),
                );
            }
        }
    }

    /// Element-type rules on operands (result types are checked against inference).
    fn dtype_rules(&mut self, g: &Graph, id: NodeId, types: &HashMap<ValueId, Type>) {
        use Op::*;
        let n = g.node(id);
        let dt = |slot: usize| -> Option<DType> {
            n.operand(slot)
                .and_then(|v| types.get(&v))
                .and_then(Type::dtype)
                .filter(|d| *d != DType::Undefined)
        };
        let present: Vec<usize> = (0..n.operands().len())
            .filter(|&s| n.operand(s).is_some())
            .collect();
        let mut errs: Vec<(DiagKind, String)> = Vec::new();
        let same = |slots: &[usize], errs: &mut Vec<(DiagKind, String)>| {
            let known: Vec<(usize, DType)> = slots
                .iter()
                .filter_map(|&s| dt(s).map(|d| (s, d)))
                .collect();
            if let Some(&(s0, d0)) = known.first() {
                if let Some(&(s1, d1)) = known.iter().find(|(_, d)| *d != d0) {
                    errs.push((
                        DiagKind::Type,
                        format!(
                            "operands {s0} and {s1} have different element types ({d0} and {d1})"
                        ),
                    ));
                }
            }
        };
        let is = |slot: usize, ok: &[DType], what: &str, errs: &mut Vec<(DiagKind, String)>| {
            if let Some(d) = dt(slot) {
                if !ok.contains(&d) {
                    errs.push((
                        DiagKind::Type,
                        format!("operand {slot} must be {what}, not {d}"),
                    ));
                }
            }
        };
        const IDX: &[DType] = &[DType::I32, DType::I64];
        match &n.op {
            Add | Sub | Mul | Div | Mod(_) | PRelu | BitwiseAnd | BitwiseOr | BitwiseXor | Max
            | Min | Sum | Mean | MatMul | Concat(_) | Range | Equal | Less | LessOrEqual
            | Greater | GreaterOrEqual => same(&present, &mut errs),
            Gemm(_) => same(&[0, 1, 2], &mut errs),
            And | Or | Xor | Not => {
                for &s in &present {
                    is(s, &[DType::Bool], "bool", &mut errs);
                }
            }
            Where => {
                is(0, &[DType::Bool], "bool", &mut errs);
                same(&[1, 2], &mut errs);
            }
            If(_) => is(0, &[DType::Bool], "bool", &mut errs),
            Gather(_) | GatherElements(_) | GatherND(_) => {
                is(1, IDX, "i32 or i64 indices", &mut errs)
            }
            ScatterND(_) | ScatterElements(_) => {
                is(1, IDX, "i32 or i64 indices", &mut errs);
                same(&[0, 2], &mut errs);
            }
            Reshape(_) | Expand | Tile | Unsqueeze | Squeeze | Split(_) => {
                is(1, &[DType::I64], "an i64 shape", &mut errs)
            }
            ConstantOfShape(_) => is(0, &[DType::I64], "an i64 shape", &mut errs),
            Slice => {
                for s in 1..5 {
                    is(s, IDX, "i32 or i64", &mut errs);
                }
                same(&[1, 2, 3, 4], &mut errs);
            }
            // Codes the IR does not name (newer ONNX types) are carried as `Other`; only
            // UNDEFINED and negative codes are certainly wrong.
            Cast(a) => {
                if let Some(c) =
                    a.to.filter(|&c| dtype_from_onnx(c) == DType::Undefined || c < 0)
                {
                    errs.push((
                        DiagKind::Attribute,
                        format!("'to' = {c} is not an element type"),
                    ));
                }
            }
            _ => {}
        }
        for (kind, e) in errs {
            self.err(kind, g, Some(id), e);
        }
    }
}

/// What the subgraphs of `g`'s nodes can capture: `outer` and every named result of `nodes`
/// (in that order, so a later definition wins), with its inferred type where known.
// Shape inference builds its subgraphs' scope through this too (`shape::scope_of`).
pub(crate) fn scope_with(
    g: &Graph,
    nodes: &[NodeId],
    types: &HashMap<ValueId, Type>,
    outer: &Scope,
) -> Scope {
    let mut scope = outer.clone();
    for &id in nodes {
        for (i, o) in g.node(id).outputs.iter().enumerate() {
            if !o.name.is_empty() {
                let v = ValueId {
                    node: id,
                    output: i as u32,
                };
                scope.insert(
                    o.name.clone(),
                    types.get(&v).cloned().unwrap_or_else(|| o.ty.clone()),
                );
            }
        }
    }
    scope
}

/// A node on a cycle, followed by the rest of that cycle, found by depth-first search along
/// operands (petgraph's own error names any node it could not order, which may lie downstream
/// of the cycle rather than on it).
pub(crate) fn find_cycle(g: &Graph) -> Vec<NodeId> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Active,
        Done,
    }
    let preds = |n: NodeId| -> Vec<NodeId> {
        g.node(n)
            .inputs()
            .filter(|v| g.is_valid_value(*v))
            .map(|v| v.node)
            .collect()
    };
    let mut mark: HashMap<NodeId, Mark> = HashMap::new();
    let mut order = g.node_ids();
    order.sort_by_key(|&n| g.node(n).seq());
    for root in order {
        if mark.contains_key(&root) {
            continue;
        }
        // Each frame: the node and its predecessors not yet explored.
        let mut stack: Vec<(NodeId, Vec<NodeId>)> = vec![(root, preds(root))];
        mark.insert(root, Mark::Active);
        while let Some((node, pending)) = stack.last_mut() {
            let node = *node;
            match pending.pop() {
                Some(p) => match mark.get(&p) {
                    Some(Mark::Active) => {
                        // The stack from `p` to here is the cycle, read against the edges.
                        let start = stack.iter().position(|(n, _)| *n == p).unwrap_or(0);
                        let mut cyc: Vec<NodeId> = stack[start..].iter().map(|(n, _)| *n).collect();
                        cyc.reverse();
                        cyc.rotate_right(1);
                        return cyc;
                    }
                    Some(Mark::Done) => {}
                    None => {
                        mark.insert(p, Mark::Active);
                        stack.push((p, preds(p)));
                    }
                },
                None => {
                    mark.insert(node, Mark::Done);
                    stack.pop();
                }
            }
        }
    }
    Vec::new()
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
