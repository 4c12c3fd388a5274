//! The SSA graph.
//!
//! A petgraph `StableDiGraph` is kept private: callers see typed [`NodeId`]s and [`ValueId`]s.
//! Each node owns its operand list (the source of truth, in slot order); edges mirror it so that
//! use lists and topological order are cheap. Beware that `StableGraph` reuses freed slots: a
//! `NodeId` held across a removal and an insertion may name the new node, so passes collect
//! first and mutate after, and side tables record the [`Graph::revision`] they were built at.

use crate::op::Op;
use crate::tensor::Handle;
use crate::types::Type;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;

pub type GraphId = Handle<Graph>;

/// A node of a graph.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(NodeIndex<u32>);

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0.index())
    }
}

/// One result of a node.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ValueId {
    pub node: NodeId,
    pub output: u32,
}

/// A result slot of a node: its value name (empty when an optional result is absent) and type.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub name: String,
    pub ty: Type,
}

impl Output {
    pub fn new(name: impl Into<String>, ty: Type) -> Self {
        Output {
            name: name.into(),
            ty,
        }
    }
}

/// An operation with its operands and results.
#[derive(Debug, Clone)]
pub struct Node {
    pub op: Op,
    /// The node's name in the source model (may be empty).
    pub name: String,
    pub doc: String,
    operands: Vec<Option<ValueId>>,
    pub outputs: Vec<Output>,
    seq: u64,
}

impl Node {
    /// Operands in slot order; `None` is an omitted optional operand.
    pub fn operands(&self) -> &[Option<ValueId>] {
        &self.operands
    }
    /// Present operands in slot order.
    pub fn inputs(&self) -> impl Iterator<Item = ValueId> + '_ {
        self.operands.iter().flatten().copied()
    }
    /// Operand `slot` when present.
    pub fn operand(&self, slot: usize) -> Option<ValueId> {
        self.operands.get(slot).copied().flatten()
    }
    /// The creation sequence number, used as the stable tie-break of the printing order.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

#[derive(Debug, Clone, Copy)]
struct Edge {
    output: u32,
    slot: u32,
}

/// A graph output: the value and the name the model exposes it under.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphOutput {
    pub value: ValueId,
    pub name: String,
}

/// Graph-level data the IR does not interpret, kept for export.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GraphExtra {
    /// Sparse initializers in the frontend's encoding.
    pub sparse_initializers: Vec<Vec<u8>>,
    /// Quantization annotations in the frontend's encoding.
    pub quantization_annotations: Vec<Vec<u8>>,
    pub metadata_props: Vec<(String, String)>,
}

/// A graph: nodes, inputs (as `Op::Input` nodes) and outputs.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    g: StableDiGraph<Node, Edge>,
    pub name: String,
    pub doc: String,
    inputs: Vec<NodeId>,
    pub outputs: Vec<GraphOutput>,
    pub extra: GraphExtra,
    next_seq: u64,
    revision: u64,
}

/// A cycle was found; `node` lies on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cycle {
    pub node: NodeId,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Self {
        Graph {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Increases on every structural change; side tables compare it to detect staleness.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    fn bump(&mut self) {
        self.revision += 1;
    }

    /// Adds a node; operands may be set later with [`Graph::set_operands`].
    pub fn add_node(
        &mut self,
        op: Op,
        operands: Vec<Option<ValueId>>,
        outputs: Vec<Output>,
    ) -> NodeId {
        let seq = self.next_seq;
        self.next_seq += 1;
        let idx = self.g.add_node(Node {
            op,
            name: String::new(),
            doc: String::new(),
            operands: Vec::new(),
            outputs,
            seq,
        });
        let id = NodeId(idx);
        self.set_operands(id, operands);
        id
    }

    /// Adds a graph input and returns its value.
    pub fn add_input(&mut self, name: impl Into<String>, ty: Type) -> ValueId {
        let id = self.add_node(
            Op::Input { default: None },
            Vec::new(),
            vec![Output::new(name, ty)],
        );
        self.inputs.push(id);
        ValueId {
            node: id,
            output: 0,
        }
    }

    /// The graph's inputs in order.
    pub fn inputs(&self) -> &[NodeId] {
        &self.inputs
    }

    /// Reorders or replaces the input list (each must be an `Op::Input` node of this graph).
    pub fn set_inputs(&mut self, inputs: Vec<NodeId>) {
        self.inputs = inputs;
        self.bump();
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.g.contains_node(id.0)
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id.0]
    }

    /// Mutable access to a node's op, name and outputs (operands change through `set_operand`).
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.revision += 1;
        &mut self.g[id.0]
    }

    pub fn node_count(&self) -> usize {
        self.g.node_count()
    }

    /// Node ids in index order (not topological).
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.g.node_indices().map(NodeId).collect()
    }

    /// Replaces a node's operand list and its edges.
    pub fn set_operands(&mut self, id: NodeId, operands: Vec<Option<ValueId>>) {
        let old: Vec<_> = self
            .g
            .edges_directed(id.0, Direction::Incoming)
            .map(|e| e.id())
            .collect();
        for e in old {
            self.g.remove_edge(e);
        }
        for (slot, v) in operands.iter().enumerate() {
            if let Some(v) = v {
                self.g.add_edge(
                    v.node.0,
                    id.0,
                    Edge {
                        output: v.output,
                        slot: slot as u32,
                    },
                );
            }
        }
        self.g[id.0].operands = operands;
        self.bump();
    }

    /// Sets one operand slot.
    pub fn set_operand(&mut self, id: NodeId, slot: usize, v: Option<ValueId>) {
        let mut ops = self.g[id.0].operands.clone();
        if ops.len() <= slot {
            ops.resize(slot + 1, None);
        }
        ops[slot] = v;
        self.set_operands(id, ops);
    }

    pub fn value_name(&self, v: ValueId) -> &str {
        &self.g[v.node.0].outputs[v.output as usize].name
    }

    pub fn value_type(&self, v: ValueId) -> &Type {
        &self.g[v.node.0].outputs[v.output as usize].ty
    }

    pub fn set_value_type(&mut self, v: ValueId, ty: Type) {
        self.g[v.node.0].outputs[v.output as usize].ty = ty;
    }

    /// Whether `v` names an existing result of an existing node.
    pub fn is_valid_value(&self, v: ValueId) -> bool {
        self.g
            .node_weight(v.node.0)
            .is_some_and(|n| (v.output as usize) < n.outputs.len())
    }

    /// The values of a node's results.
    pub fn results(&self, id: NodeId) -> Vec<ValueId> {
        (0..self.g[id.0].outputs.len() as u32)
            .map(|output| ValueId { node: id, output })
            .collect()
    }

    /// Users of a value as (node, operand slot), in a deterministic order.
    pub fn users(&self, v: ValueId) -> Vec<(NodeId, usize)> {
        let mut u: Vec<(NodeId, usize, u64)> = self
            .g
            .edges_directed(v.node.0, Direction::Outgoing)
            .filter(|e| e.weight().output == v.output)
            .map(|e| {
                (
                    NodeId(e.target()),
                    e.weight().slot as usize,
                    self.g[e.target()].seq,
                )
            })
            .collect();
        u.sort_by_key(|&(_, slot, seq)| (seq, slot));
        u.into_iter().map(|(n, s, _)| (n, s)).collect()
    }

    /// Whether any node or graph output uses a result of `id`.
    pub fn has_uses(&self, id: NodeId) -> bool {
        self.g
            .edges_directed(id.0, Direction::Outgoing)
            .next()
            .is_some()
            || self.outputs.iter().any(|o| o.value.node == id)
    }

    /// Nodes that consume a result of `id`.
    pub fn successors(&self, id: NodeId) -> Vec<NodeId> {
        let mut s: Vec<NodeId> = self
            .g
            .neighbors_directed(id.0, Direction::Outgoing)
            .map(NodeId)
            .collect();
        s.sort();
        s.dedup();
        s
    }

    /// Redirects every use of `old` (operands and graph outputs) to `new`.
    pub fn replace_all_uses(&mut self, old: ValueId, new: ValueId) {
        for (user, slot) in self.users(old) {
            self.set_operand(user, slot, Some(new));
        }
        for o in &mut self.outputs {
            if o.value == old {
                o.value = new;
            }
        }
        self.bump();
    }

    /// Removes a node and its edges. Callers make sure nothing uses it any more.
    pub fn remove_node(&mut self, id: NodeId) -> Option<Node> {
        self.inputs.retain(|&i| i != id);
        self.bump();
        self.g.remove_node(id.0)
    }

    /// Kahn's algorithm with the creation sequence as tie-break: stable and deterministic, and a
    /// graph that was built in a topological order prints back in that order.
    pub fn toposort(&self) -> Result<Vec<NodeId>, Cycle> {
        let mut indeg: HashMap<NodeIndex<u32>, usize> = HashMap::new();
        let mut heap = BinaryHeap::new();
        for n in self.g.node_indices() {
            let mut preds: Vec<NodeIndex<u32>> =
                self.g.neighbors_directed(n, Direction::Incoming).collect();
            preds.sort();
            preds.dedup();
            indeg.insert(n, preds.len());
            if preds.is_empty() {
                heap.push(std::cmp::Reverse((self.g[n].seq, n)));
            }
        }
        let mut order = Vec::with_capacity(self.g.node_count());
        while let Some(std::cmp::Reverse((_, n))) = heap.pop() {
            order.push(NodeId(n));
            let mut succ: Vec<NodeIndex<u32>> =
                self.g.neighbors_directed(n, Direction::Outgoing).collect();
            succ.sort();
            succ.dedup();
            for s in succ {
                if let Some(d) = indeg.get_mut(&s) {
                    *d -= 1;
                    if *d == 0 {
                        heap.push(std::cmp::Reverse((self.g[s].seq, s)));
                    }
                }
            }
        }
        if order.len() == self.g.node_count() {
            Ok(order)
        } else {
            let stuck = self
                .g
                .node_indices()
                .filter(|n| indeg.get(n).copied().unwrap_or(0) > 0)
                .min_by_key(|n| self.g[*n].seq)
                .map(NodeId);
            Err(Cycle {
                node: stuck.unwrap_or(NodeId(NodeIndex::new(0))),
            })
        }
    }

    /// A map from value name to value, for the values that have names.
    pub fn value_names(&self) -> HashMap<String, ValueId> {
        let mut m = HashMap::new();
        for n in self.g.node_indices() {
            for (i, o) in self.g[n].outputs.iter().enumerate() {
                if !o.name.is_empty() {
                    m.insert(
                        o.name.clone(),
                        ValueId {
                            node: NodeId(n),
                            output: i as u32,
                        },
                    );
                }
            }
        }
        m
    }

    /// A value name not used in this graph, derived from `base`.
    pub fn fresh_name(&self, base: &str, taken: &HashMap<String, ValueId>) -> String {
        if !taken.contains_key(base) {
            return base.to_string();
        }
        (1..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| !taken.contains_key(n))
            .unwrap_or_default()
    }

    /// How a node is named in diagnostics: its name, or its first result, or its op.
    pub fn describe(&self, id: NodeId) -> String {
        let n = self.node(id);
        let first = n
            .outputs
            .iter()
            .find(|o| !o.name.is_empty())
            .map(|o| o.name.as_str());
        match (n.name.is_empty(), first) {
            (false, _) => format!("{} '{}'", n.op.name(), n.name),
            (true, Some(v)) => format!("{} producing '%{}'", n.op.name(), v),
            (true, None) => format!("{} {:?}", n.op.name(), id),
        }
    }
}
