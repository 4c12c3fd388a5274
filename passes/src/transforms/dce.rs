//! `dce`: dead code elimination.
//!
//! Needs: nothing beyond a valid module (an acyclic graph is not required: liveness is a
//! reachability walk from the roots, so it also works on a graph the verifier would reject).
//! Leaves: every graph reachable from the main graph and the functions with only nodes that
//! reach a root. Roots are graph outputs, graph inputs (never removed, they are the signature),
//! side-effecting ops (`Op::has_side_effects`), and values that subgraphs of live nodes
//! capture by name. Subgraphs are processed before their parents, so a capture that dies in a
//! subgraph no longer keeps the outer value alive. Tensors of removed constants stay in the
//! append-only arena; export writes only referenced ones.

use crate::captures::node_captures;
use crate::pass::{PassContext, PassError, PassResult};
use ortho_ir::{GraphId, Module, NodeId, Op};
use std::collections::HashSet;

crate::declare_pass! {
    name: "dce",
    summary: "Removes nodes whose results are unused (keeps inputs, side effects and captured values).",
    run: run_pass,
}

/// What [`dce`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DceStats {
    /// Nodes removed, all graphs together.
    pub removed: usize,
    /// How many of them were constants.
    pub removed_consts: usize,
}

/// Removes dead nodes from every reachable graph.
pub fn dce(m: &mut Module) -> DceStats {
    let mut stats = DceStats::default();
    // Parents come before children in `reachable_graphs`; reversed, every subgraph is cleaned
    // before the graph that holds it.
    for g in m.reachable_graphs().into_iter().rev() {
        let dead = dead_nodes(m, g);
        let graph = m.graph_mut(g);
        for n in dead {
            if matches!(graph.node(n).op, Op::Const(_)) {
                stats.removed_consts += 1;
            }
            graph.remove_node(n);
            stats.removed += 1;
        }
    }
    stats
}

/// Nodes of `g` that no root reaches, in index order.
fn dead_nodes(m: &Module, g: GraphId) -> Vec<NodeId> {
    let graph = m.graph(g);
    let mut live: HashSet<NodeId> = HashSet::new();
    let mut work: Vec<NodeId> = Vec::new();
    for o in &graph.outputs {
        work.push(o.value.node);
    }
    for n in graph.node_ids() {
        let op = &graph.node(n).op;
        if matches!(op, Op::Input { .. }) || op.has_side_effects() {
            work.push(n);
        }
    }
    let mut names = None;
    while let Some(n) = work.pop() {
        if !graph.contains(n) || !live.insert(n) {
            continue;
        }
        let node = graph.node(n);
        work.extend(node.inputs().map(|v| v.node));
        if !node.op.subgraphs().is_empty() {
            let names = names.get_or_insert_with(|| graph.value_names());
            for name in node_captures(m, g, n) {
                if let Some(v) = names.get(&name) {
                    work.push(v.node);
                }
            }
        }
    }
    graph
        .node_ids()
        .into_iter()
        .filter(|n| !live.contains(n))
        .collect()
}

fn run_pass(m: &mut Module, cx: &mut PassContext) -> Result<PassResult, PassError> {
    let s = dce(m);
    cx.stats(&[("removed", s.removed), ("removed-consts", s.removed_consts)]);
    Ok(PassResult::changed(s.removed > 0))
}
