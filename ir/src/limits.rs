//! Nesting limits shared by every reader and writer of the IR, so that no input can make a
//! recursive walk overflow the stack, and no output is nested deeper than ortho-opt or onnx can
//! read back.
//!
//! onnx (and onnxruntime) parse models with protobuf's default recursion limit of 100 messages;
//! each level of subgraph costs three (GraphProto → NodeProto → AttributeProto) and a value's
//! type up to five more, so 24 levels of subgraphs below the main graph is what every consumer
//! reads. Real models nest two or three (a Loop in an If).

use crate::{GraphId, Module};

/// The deepest subgraph nesting accepted anywhere: the main graph is depth 0, a subgraph of
/// one of its nodes depth 1.
pub const MAX_GRAPH_DEPTH: usize = 24;

/// The deepest nesting of brackets the `.oir` parser accepts in one value (attribute lists,
/// nested types such as `seq<seq<…>>`), counted together with subgraphs.
pub const MAX_TEXT_NESTING: usize = 256;

/// The deepest pass-pipeline nesting (`fixpoint(fixpoint(…))`).
pub const MAX_PIPELINE_DEPTH: usize = 32;

/// The depth of the deepest subgraph below `root` (0 when it has none), walked without
/// recursion. A graph reached again (a cycle, which the verifier reports) is not entered twice.
pub fn graph_depth(m: &Module, root: GraphId) -> usize {
    let mut deepest = 0;
    let mut seen = vec![false; m.graphs.len()];
    let mut stack = vec![(root, 0usize)];
    while let Some((gid, depth)) = stack.pop() {
        if gid.index() >= seen.len() || std::mem::replace(&mut seen[gid.index()], true) {
            continue;
        }
        deepest = deepest.max(depth);
        let g = m.graph(gid);
        for n in g.node_ids() {
            for sub in g.node(n).op.subgraphs() {
                stack.push((sub, depth + 1));
            }
        }
    }
    deepest
}

/// The deepest subgraph nesting of the whole module (the main graph and every function body).
pub fn module_graph_depth(m: &Module) -> usize {
    std::iter::once(m.main)
        .chain(m.functions.iter().map(|f| f.graph))
        .map(|g| graph_depth(m, g))
        .max()
        .unwrap_or(0)
}
