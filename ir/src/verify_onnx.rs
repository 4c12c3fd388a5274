//! Module-level rules that onnx's checker and onnxruntime enforce and the graph verifier does
//! not see: opset versions, recursion among model-local functions, element types left
//! UNDEFINED, and input defaults (initializers of graph inputs) whose shape contradicts the
//! input's. A model breaking one of them would be written out and then refused by every
//! consumer, so the verifier refuses it up front.

use crate::{DType, DiagKind, Diagnostic, Diagnostics, Dim, GraphId, Module, Op, Type};
use std::collections::HashMap;

/// Appends a diagnostic for every rule `m` breaks.
pub(crate) fn check(m: &Module, diags: &mut Diagnostics) {
    opsets(m, diags);
    recursive_functions(m, diags);
    for gid in reachable_graphs(m) {
        graph(m, gid, diags);
    }
}

fn module_error(diags: &mut Diagnostics, message: String) {
    diags.0.push(Diagnostic {
        kind: DiagKind::Structure,
        ..Diagnostic::text("", "", message)
    });
}

/// Opset versions start at 1; onnx registers no operator for 0 or a negative version.
fn opsets(m: &Module, diags: &mut Diagnostics) {
    let all = m
        .opsets
        .iter()
        .map(|o| (o, String::from("the model")))
        .chain(m.functions.iter().flat_map(|f| {
            f.opsets
                .iter()
                .map(move |o| (o, format!("function '{}::{}'", f.domain, f.name)))
        }));
    for (o, owner) in all {
        if o.version < 1 {
            let domain = if o.domain.is_empty() {
                "ai.onnx"
            } else {
                &o.domain
            };
            module_error(
                diags,
                format!(
                    "{owner} imports opset {} of domain '{domain}'; opset versions start at 1",
                    o.version
                ),
            );
        }
    }
}

/// The graphs below `root` (itself included), walked without recursion.
fn graphs_below(m: &Module, root: GraphId, seen: &mut [bool], out: &mut Vec<GraphId>) {
    let mut stack = vec![root];
    while let Some(gid) = stack.pop() {
        if gid.index() >= seen.len() || std::mem::replace(&mut seen[gid.index()], true) {
            continue;
        }
        out.push(gid);
        let g = m.graph(gid);
        for n in g.node_ids() {
            stack.extend(g.node(n).op.subgraphs());
        }
    }
}

/// The main graph, the function bodies and all their subgraphs.
fn reachable_graphs(m: &Module) -> Vec<GraphId> {
    let mut seen = vec![false; m.graphs.len()];
    let mut out = Vec::new();
    graphs_below(m, m.main, &mut seen, &mut out);
    for f in &m.functions {
        graphs_below(m, f.graph, &mut seen, &mut out);
    }
    out
}

/// Model-local functions must not call themselves, directly or through others (onnx: "Model-
/// local functions must not be recursive"); an inliner would never finish.
fn recursive_functions(m: &Module, diags: &mut Diagnostics) {
    let index: HashMap<(&str, &str), usize> = m
        .functions
        .iter()
        .enumerate()
        .map(|(i, f)| ((f.domain.as_str(), f.name.as_str()), i))
        .collect();
    // Calls of each function, through its body and the body's subgraphs.
    let calls: Vec<Vec<usize>> = m
        .functions
        .iter()
        .map(|f| {
            let mut seen = vec![false; m.graphs.len()];
            let mut graphs = Vec::new();
            graphs_below(m, f.graph, &mut seen, &mut graphs);
            let mut callees = Vec::new();
            for gid in graphs {
                let g = m.graph(gid);
                for n in g.node_ids() {
                    if let Op::Opaque(o) = &g.node(n).op {
                        if let Some(&c) = index.get(&(o.domain.as_str(), o.op_type.as_str())) {
                            callees.push(c);
                        }
                    }
                }
            }
            callees
        })
        .collect();
    // Iterative depth-first search: 0 unvisited, 1 on the current path, 2 done.
    let mut state = vec![0u8; calls.len()];
    for start in 0..calls.len() {
        if state[start] != 0 {
            continue;
        }
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        state[start] = 1;
        while let Some(&mut (f, ref mut next)) = path.last_mut() {
            if let Some(&c) = calls[f].get(*next) {
                *next += 1;
                match state[c] {
                    0 => {
                        state[c] = 1;
                        path.push((c, 0));
                    }
                    1 => {
                        let from = path.iter().position(|&(p, _)| p == c).unwrap_or(0);
                        let mut cycle: Vec<String> = path[from..]
                            .iter()
                            .map(|&(p, _)| {
                                format!("{}::{}", m.functions[p].domain, m.functions[p].name)
                            })
                            .collect();
                        cycle.push(format!(
                            "{}::{}",
                            m.functions[c].domain, m.functions[c].name
                        ));
                        module_error(
                            diags,
                            format!(
                                "model-local functions call themselves ({}); functions must not be recursive",
                                cycle.join(" -> ")
                            ),
                        );
                        return;
                    }
                    _ => {}
                }
            } else {
                state[f] = 2;
                path.pop();
            }
        }
    }
}

/// Graph inputs, outputs and tensors with an UNDEFINED element type, and input defaults whose
/// dims contradict the input's declared shape.
fn graph(m: &Module, gid: GraphId, diags: &mut Diagnostics) {
    let g = m.graph(gid);
    let undefined = |ty: &Type| matches!(ty, Type::Tensor(t) if t.dtype == DType::Undefined);
    for n in g.node_ids() {
        let node = g.node(n);
        if let Op::Input { default } = &node.op {
            let ty = node.outputs.first().map(|o| &o.ty);
            if ty.is_some_and(undefined) {
                diags.error(
                    DiagKind::Type,
                    g,
                    Some(gid),
                    Some(n),
                    "the input's element type is UNDEFINED",
                );
            }
            if let (Some(t), Some(Type::Tensor(tt))) = (default, ty) {
                let data = m.tensor(*t);
                if let Some(shape) = &tt.shape {
                    let fits = shape.len() == data.dims.len()
                        && shape
                            .iter()
                            .zip(&data.dims)
                            .all(|(d, &k)| !matches!(d, Dim::Fixed(f) if *f != k));
                    if !fits {
                        diags.error(
                            DiagKind::Shape,
                            g,
                            Some(gid),
                            Some(n),
                            format!(
                                "the input's default (initializer) has dims {:?}, which its declared shape {:?} does not admit",
                                data.dims, shape
                            ),
                        );
                    }
                }
            }
        }
        for t in node.op.tensors() {
            if m.tensor(t).dtype == DType::Undefined {
                diags.error(
                    DiagKind::Tensor,
                    g,
                    Some(gid),
                    Some(n),
                    "holds a tensor whose element type is UNDEFINED",
                );
            }
        }
    }
    for (k, o) in g.outputs.iter().enumerate() {
        // Outputs that name no value are the graph verifier's to report.
        let ty = g
            .contains(o.value.node)
            .then(|| g.node(o.value.node).outputs.get(o.value.output as usize))
            .flatten()
            .map(|out| &out.ty);
        if ty.is_some_and(undefined) {
            diags.error(
                DiagKind::Type,
                g,
                Some(gid),
                None,
                format!("output {k} has the element type UNDEFINED"),
            );
        }
    }
}
