//! Name scoping across subgraphs: which values of a graph are referenced by name from inside
//! the subgraphs of its nodes (`Op::Capture`). Such a value must keep its producer and its name,
//! so DCE keeps it alive and CSE / canonicalize never remove the node that defines it.

use ortho_ir::{GraphId, Module, NodeId, Op};
use std::collections::HashSet;

/// Names captured anywhere inside the subgraphs of `g`'s nodes (at any depth, since a capture
/// may reach past its parent to any enclosing graph). Over-approximates: a name shadowed in
/// between still counts, which only keeps more alive.
pub(crate) fn captured_names(m: &Module, g: GraphId) -> HashSet<String> {
    let graph = m.graph(g);
    let mut out = HashSet::new();
    for n in graph.node_ids() {
        for sg in graph.node(n).op.subgraphs() {
            subtree_captures(m, sg, &mut out, &mut HashSet::new());
        }
    }
    out
}

/// Names captured inside the subgraphs held by node `n` of `g`.
pub(crate) fn node_captures(m: &Module, g: GraphId, n: NodeId) -> HashSet<String> {
    let mut out = HashSet::new();
    for sg in m.graph(g).node(n).op.subgraphs() {
        subtree_captures(m, sg, &mut out, &mut HashSet::new());
    }
    out
}

fn subtree_captures(
    m: &Module,
    g: GraphId,
    out: &mut HashSet<String>,
    seen: &mut HashSet<GraphId>,
) {
    if !seen.insert(g) {
        return;
    }
    let graph = m.graph(g);
    for n in graph.node_ids() {
        let node = graph.node(n);
        if matches!(node.op, Op::Capture) {
            out.extend(node.outputs.iter().map(|o| o.name.clone()));
        }
        for sg in node.op.subgraphs() {
            subtree_captures(m, sg, out, seen);
        }
    }
}

/// Whether any result name of `n` is in `names`.
pub(crate) fn defines_any(m: &Module, g: GraphId, n: NodeId, names: &HashSet<String>) -> bool {
    !names.is_empty()
        && m.graph(g)
            .node(n)
            .outputs
            .iter()
            .any(|o| !o.name.is_empty() && names.contains(&o.name))
}
