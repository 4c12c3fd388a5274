//! `cse`: common subexpression elimination.
//!
//! Needs: acyclic graphs (a cyclic graph is left alone; the verifier reports it).
//! Leaves: in every reachable graph, at most one node per (op with attributes, operands,
//! present-result pattern). The first node in topological order survives and takes over the
//! uses (graph outputs keep their exposed names). Constants merge when dtype, dims and data are
//! equal (bytes are compared). Never merged: graph inputs,
//! captures, side-effecting ops, ops holding subgraphs, constants whose data is elided, and nodes
//! that define a name a subgraph captures (the name must stay defined).

use crate::captures::{captured_names, defines_any};
use crate::pass::{PassContext, PassError, PassResult};
use ortho_ir::tensor::{Storage, TensorData};
use ortho_ir::{GraphId, Module, Node, NodeId, Op, ValueId};
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

crate::declare_pass! {
    name: "cse",
    summary: "Merges identical nodes (same op, attributes and operands; equal constants).",
    run: run_pass,
}

/// What [`cse`] merged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CseStats {
    /// Nodes removed because an identical node exists.
    pub merged: usize,
    /// How many of them were constants.
    pub merged_consts: usize,
}

/// Merges identical nodes in every reachable graph.
pub fn cse(m: &mut Module) -> CseStats {
    let mut stats = CseStats::default();
    for g in m.reachable_graphs() {
        let merges = plan(m, g);
        let graph = m.graph_mut(g);
        for &(old, keep) in &merges {
            if matches!(graph.node(old).op, Op::Const(_)) {
                stats.merged_consts += 1;
            }
            for i in 0..graph.node(old).outputs.len() {
                let (from, to) = (
                    ValueId {
                        node: old,
                        output: i as u32,
                    },
                    ValueId {
                        node: keep,
                        output: i as u32,
                    },
                );
                // Keep what was known about the type when the survivor knew less.
                if graph.value_type(to).is_unknown() {
                    let ty = graph.value_type(from).clone();
                    graph.set_value_type(to, ty);
                }
                graph.replace_all_uses(from, to);
            }
        }
        // Removal after every redirection: a removed node may still be an operand of another
        // removed node until then, never of a surviving one.
        for &(old, _) in &merges {
            graph.remove_node(old);
        }
        stats.merged += merges.len();
    }
    stats
}

/// `(removed, survivor)` pairs for graph `g`; survivors are never removed themselves.
fn plan(m: &Module, g: GraphId) -> Vec<(NodeId, NodeId)> {
    let graph = m.graph(g);
    let Ok(order) = graph.toposort() else {
        return Vec::new();
    };
    let protected = captured_names(m, g);
    let mut survivor: HashMap<NodeId, NodeId> = HashMap::new();
    let mut buckets: HashMap<u64, Vec<NodeId>> = HashMap::new();
    let mut merges = Vec::new();
    for n in order {
        let node = graph.node(n);
        if !eligible(m, node) {
            continue;
        }
        // Operands as they will be after earlier merges, so chains collapse in one run.
        let operands: Vec<Option<ValueId>> = node
            .operands()
            .iter()
            .map(|o| {
                o.map(|v| ValueId {
                    node: survivor.get(&v.node).copied().unwrap_or(v.node),
                    output: v.output,
                })
            })
            .collect();
        let key = key_hash(m, node, &operands);
        let bucket = buckets.entry(key).or_default();
        let found = bucket.iter().copied().find(|&k| {
            same(
                m,
                graph.node(k),
                node,
                &resolved(graph.node(k), &survivor),
                &operands,
            )
        });
        match found {
            Some(k) if !defines_any(m, g, n, &protected) => {
                survivor.insert(n, k);
                merges.push((n, k));
            }
            _ => bucket.push(n),
        }
    }
    merges
}

fn resolved(node: &Node, survivor: &HashMap<NodeId, NodeId>) -> Vec<Option<ValueId>> {
    node.operands()
        .iter()
        .map(|o| {
            o.map(|v| ValueId {
                node: survivor.get(&v.node).copied().unwrap_or(v.node),
                output: v.output,
            })
        })
        .collect()
}

fn eligible(m: &Module, node: &Node) -> bool {
    match &node.op {
        Op::Input { .. } | Op::Capture => false,
        Op::Const(t) => !matches!(m.tensor(*t).storage, Storage::Elided { .. }),
        op => !op.has_side_effects() && op.subgraphs().is_empty() && !node.outputs.is_empty(),
    }
}

/// Which results exist (an absent optional result has an empty name).
fn presence(node: &Node) -> Vec<bool> {
    node.outputs.iter().map(|o| !o.name.is_empty()).collect()
}

fn key_hash(m: &Module, node: &Node, operands: &[Option<ValueId>]) -> u64 {
    let mut h = DefaultHasher::new();
    match &node.op {
        // Not the content hash: that would read every weight on every run. Constants of one
        // dtype and shape share a bucket, and `same` compares bytes, stopping at the first
        // difference, which for distinct weights comes early.
        Op::Const(t) => {
            let td = m.tensor(*t);
            ("const", td.dtype, &td.dims).hash(&mut h);
        }
        // `Op` holds floats and so is not `Hash`; its debug text is a faithful stand-in for
        // bucketing, and `same` decides with `==`.
        op => (format!("{op:?}"), operands).hash(&mut h),
    }
    presence(node).hash(&mut h);
    h.finish()
}

fn same(
    m: &Module,
    a: &Node,
    b: &Node,
    a_ops: &[Option<ValueId>],
    b_ops: &[Option<ValueId>],
) -> bool {
    if presence(a) != presence(b) {
        return false;
    }
    match (&a.op, &b.op) {
        (Op::Const(x), Op::Const(y)) => x == y || same_data(m.tensor(*x), m.tensor(*y)),
        (x, y) => x == y && a_ops == b_ops,
    }
}

fn same_data(a: &TensorData, b: &TensorData) -> bool {
    if a.dtype != b.dtype || a.dims != b.dims {
        return false;
    }
    match (&a.storage, &b.storage) {
        (Storage::Strings(x), Storage::Strings(y)) => x == y,
        _ => matches!((a.bytes(), b.bytes()), (Some(x), Some(y)) if x == y),
    }
}

fn run_pass(m: &mut Module, cx: &mut PassContext) -> Result<PassResult, PassError> {
    let s = cse(m);
    cx.stats(&[("merged", s.merged), ("merged-consts", s.merged_consts)]);
    Ok(PassResult::changed(s.merged > 0))
}
