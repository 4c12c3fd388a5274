//! Transformer structure, found from the graph alone: the residual stream (from the gauge
//! analysis), the branches that write into it (each a writer linear plus everything between it
//! and the stream), their kind (attention with q/k/v/o, heads, GQA and RoPE; or an MLP with its
//! activation), the blocks, the final norm and the head (tied to the embedding or not).
//!
//! Nodes that depend on the stream but belong to no recognized part are reported one by one;
//! nodes that do not depend on it (positions, masks, RoPE tables) are auxiliary.

use super::gauge::{analyze_gauge, GaugeAnalysis, SiteRole, StreamClass};
use super::linear::{match_linear, Linear};
use super::util::{const_data, out0};
use crate::graph::{Graph, GraphId, NodeId, ValueId};
use crate::module::Module;
use crate::op::Op;
use std::collections::{HashMap, HashSet};

pub use super::transformer_parts::{Attention, Mlp, MlpKind, RopeForm};

/// An embedding lookup of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Embedding {
    pub node: NodeId,
    pub table: NodeId,
    pub vocab: i64,
    pub width: i64,
}

/// What a branch computes.
#[derive(Debug, Clone, PartialEq)]
pub enum BranchKind {
    Attention(Attention),
    Mlp(Mlp),
    Unknown,
}

/// One writer into the residual stream and everything it computes from the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Branch {
    /// The residual `Add` that adds the branch to the stream.
    pub add: NodeId,
    /// The norm whose output the branch reads (pre-norm), when there is exactly one.
    pub norm: Option<usize>,
    pub readers: Vec<Linear>,
    pub writer: Linear,
    /// Every node of the branch, readers and writer included.
    pub nodes: Vec<NodeId>,
    pub kind: BranchKind,
}

/// An attention branch and the MLP branch after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub attention: Option<usize>,
    pub mlp: Option<usize>,
    /// Branches of unknown kind.
    pub other: Option<usize>,
}

/// A linear layer that reads the stream outside every branch (the LM head).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub linear: Linear,
    pub norm: Option<usize>,
    /// Reads the embedding table itself (through a Transpose or `Gemm(transB)`).
    pub tied: bool,
}

/// Where the norms sit relative to the residual adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Norms read the stream and feed branches.
    PreNorm,
    /// Norms sit on the stream (applied to residual sums).
    PostNorm,
    NoNorm,
}

/// A node the structure analysis could not place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmatched {
    pub node: NodeId,
    pub why: String,
}

/// The result of [`analyze_transformer`].
#[derive(Debug, Clone)]
pub struct Structure {
    pub gauge: GaugeAnalysis,
    pub width: Option<i64>,
    pub embeddings: Vec<Embedding>,
    /// Values of the residual stream proper: embedding outputs and sums, residual sums, and
    /// norm outputs that are the stream (post-norm).
    pub stream: Vec<ValueId>,
    pub branches: Vec<Branch>,
    pub blocks: Vec<Block>,
    pub final_norm: Option<usize>,
    pub heads: Vec<Head>,
    pub placement: Placement,
    pub unmatched: Vec<Unmatched>,
    /// Nodes that do not depend on the stream (positions, masks, RoPE tables, shapes).
    pub auxiliary: usize,
}

/// Analyzes graph `gid` of `m`.
pub fn analyze_transformer(m: &Module, gid: GraphId) -> Structure {
    let gauge = analyze_gauge(m, gid);
    let g = m.graph(gid);
    let mut s = Structure {
        gauge: GaugeAnalysis::default(),
        width: None,
        embeddings: Vec::new(),
        stream: Vec::new(),
        branches: Vec::new(),
        blocks: Vec::new(),
        final_norm: None,
        heads: Vec::new(),
        placement: Placement::NoNorm,
        unmatched: Vec::new(),
        auxiliary: 0,
    };
    let order = g.toposort().unwrap_or_else(|_| g.node_ids());
    let Some(main) = gauge.main() else {
        s.unmatched = order
            .iter()
            .filter(|n| !g.node(**n).op.is_structural())
            .map(|&node| Unmatched {
                node,
                why: "no embedding lookup (Gather of a constant table) starts a residual stream"
                    .into(),
            })
            .collect();
        s.gauge = gauge;
        return s;
    };
    let ctx = Ctx::new(m, g, &gauge, main, &order);
    s.width = Some(main.width);
    s.embeddings = main
        .seeds
        .iter()
        .filter_map(|&n| {
            let t = g.node(n).operand(0)?;
            let d = const_data(m, g, t)?;
            Some(Embedding {
                node: n,
                table: t.node,
                vocab: d.dims[0],
                width: d.dims[1],
            })
        })
        .collect();
    // Residual adds: an Add of the stream and a branch output.
    let mut claimed: HashSet<NodeId> = HashSet::new();
    let mut post = false;
    for &v in &main.values {
        let n = v.node;
        let node = g.node(n);
        if let Some(&i) = gauge.norms.by_output.get(&v) {
            let norm = &gauge.norms.list[i];
            claimed.extend(norm.nodes.iter().copied());
            if norm.skip.is_some() {
                // A norm with the residual add fused in: its summands are stream and branch,
                // its `sum` result (when used) is the stream.
                if v == norm.output {
                    for x in [Some(norm.input), norm.skip]
                        .into_iter()
                        .flatten()
                        .filter(|x| ctx.is_branch_out(*x))
                    {
                        for w in ctx.writers_of(x) {
                            if let Some(b) = ctx.branch(norm.node, w) {
                                claimed.extend(b.nodes.iter().copied());
                                s.branches.push(b);
                            }
                        }
                    }
                } else {
                    s.stream.push(v);
                }
                continue;
            }
            if !ctx.is_branch_out(v) && !ctx.only_readers(v) {
                post = true;
                s.stream.push(v);
            }
            continue;
        }
        claimed.insert(n);
        if ctx.is_branch_out(v) {
            continue;
        }
        match node.op {
            Op::Add | Op::Sub if node.inputs().any(|x| ctx.is_branch_out(x)) => {
                s.stream.push(v);
                for x in node.inputs().filter(|x| ctx.is_branch_out(*x)) {
                    for w in ctx.writers_of(x) {
                        if let Some(b) = ctx.branch(n, w) {
                            claimed.extend(b.nodes.iter().copied());
                            s.branches.push(b);
                        }
                    }
                }
            }
            _ => s.stream.push(v),
        }
    }
    let in_branch: HashSet<NodeId> = claimed.clone();
    for site in main
        .sites
        .iter()
        .filter(|x| x.role == SiteRole::Reader && !in_branch.contains(&x.consumer))
    {
        let Some(linear) = match_linear(m, g, site.consumer) else {
            continue;
        };
        let norm = gauge.norms.by_output.get(&linear.input).copied();
        let tied = s.embeddings.iter().any(|e| e.table == linear.weight.konst);
        s.heads.push(Head { linear, norm, tied });
        claimed.insert(linear.node);
        if let Some(b) = linear.bias {
            claimed.insert(b.node);
        }
        claimed.extend(ctx.downstream(linear.output.node));
    }
    s.final_norm = s.heads.first().and_then(|h| h.norm);
    s.placement = match (gauge.norms.list.is_empty() || main.norms.is_empty(), post) {
        (true, _) => Placement::NoNorm,
        (false, true) => Placement::PostNorm,
        (false, false) => Placement::PreNorm,
    };
    s.blocks = group_blocks(&s.branches);
    let blockers: HashMap<NodeId, String> =
        main.blockers.iter().map(|b| (b.node, b.reason())).collect();
    for &n in &order {
        if g.node(n).op.is_structural() {
            continue;
        }
        if !ctx.dep.contains(&n) {
            s.auxiliary += 1;
        } else if !claimed.contains(&n) {
            let why = blockers.get(&n).cloned().unwrap_or_else(|| {
                "depends on the stream but is part of no recognized layer".into()
            });
            s.unmatched.push(Unmatched { node: n, why });
        }
    }
    for b in &s.branches {
        if b.kind == BranchKind::Unknown {
            s.unmatched.push(Unmatched {
                node: b.writer.node,
                why: "writes the stream from an unrecognized branch (neither attention nor MLP)"
                    .into(),
            });
        }
    }
    s.gauge = gauge;
    s
}

/// Blocks: each attention branch opens one; an MLP joins the open block unless it has one.
fn group_blocks(branches: &[Branch]) -> Vec<Block> {
    let mut blocks: Vec<Block> = Vec::new();
    for (i, b) in branches.iter().enumerate() {
        let open = blocks.last_mut();
        match (&b.kind, open) {
            (BranchKind::Attention(_), _) => blocks.push(Block {
                attention: Some(i),
                mlp: None,
                other: None,
            }),
            (BranchKind::Mlp(_), Some(bl)) if bl.mlp.is_none() => bl.mlp = Some(i),
            (BranchKind::Mlp(_), _) => blocks.push(Block {
                attention: None,
                mlp: Some(i),
                other: None,
            }),
            (BranchKind::Unknown, _) => blocks.push(Block {
                attention: None,
                mlp: None,
                other: Some(i),
            }),
        }
    }
    blocks
}

/// Lookups shared by the steps of the analysis.
pub(crate) struct Ctx<'a> {
    pub m: &'a Module,
    pub g: &'a Graph,
    pub members: HashSet<ValueId>,
    pub writers: HashSet<NodeId>,
    pub readers: HashSet<NodeId>,
    /// Nodes that depend on the stream.
    pub dep: HashSet<NodeId>,
    /// Nodes that depend on a Sin or Cos (RoPE tables).
    pub trig: HashSet<NodeId>,
    pub gauge: &'a GaugeAnalysis,
}

impl<'a> Ctx<'a> {
    fn new(
        m: &'a Module,
        g: &'a Graph,
        gauge: &'a GaugeAnalysis,
        main: &'a StreamClass,
        order: &[NodeId],
    ) -> Self {
        let role = |r: SiteRole| {
            main.sites
                .iter()
                .filter(|s| s.role == r)
                .map(|s| s.consumer)
                .collect::<HashSet<_>>()
        };
        let mut dep: HashSet<NodeId> = main.seeds.iter().copied().collect();
        let mut trig: HashSet<NodeId> = HashSet::new();
        for &n in order {
            let node = g.node(n);
            if node.inputs().any(|v| dep.contains(&v.node)) {
                dep.insert(n);
            }
            if matches!(node.op, Op::Sin | Op::Cos) || node.inputs().any(|v| trig.contains(&v.node))
            {
                trig.insert(n);
            }
        }
        Ctx {
            m,
            g,
            members: main.values.iter().copied().collect(),
            writers: role(SiteRole::Writer),
            readers: role(SiteRole::Reader),
            dep,
            trig,
            gauge,
        }
    }

    /// Whether a stream value is (a sum of) branch outputs: a writer's result, plus a bias,
    /// or through a norm on the branch (sandwich norm).
    fn is_branch_out(&self, v: ValueId) -> bool {
        let mut seen = HashSet::new();
        self.branch_out_rec(v, &mut seen)
    }

    fn branch_out_rec(&self, v: ValueId, seen: &mut HashSet<ValueId>) -> bool {
        if !seen.insert(v) || !self.members.contains(&v) {
            return false;
        }
        if self.writers.contains(&v.node) {
            return true;
        }
        if let Some(&i) = self.gauge.norms.by_output.get(&v) {
            let n = &self.gauge.norms.list[i];
            return n.skip.is_none() && self.branch_out_rec(n.input, seen);
        }
        let node = self.g.node(v.node);
        match node.op {
            Op::Add => {
                let ins: Vec<ValueId> =
                    node.inputs().filter(|x| self.members.contains(x)).collect();
                !ins.is_empty() && ins.iter().all(|&x| self.branch_out_rec(x, seen))
            }
            _ => false,
        }
    }

    /// Whether every user of `v` is a linear reader.
    fn only_readers(&self, v: ValueId) -> bool {
        let users = self.g.users(v);
        !users.is_empty() && users.iter().all(|(u, _)| self.readers.contains(u))
    }

    /// The writer nodes behind a branch output.
    fn writers_of(&self, v: ValueId) -> Vec<NodeId> {
        let mut out = Vec::new();
        let mut stack = vec![v];
        let mut seen = HashSet::new();
        while let Some(x) = stack.pop() {
            if !seen.insert(x) || !self.members.contains(&x) {
                continue;
            }
            if self.writers.contains(&x.node) {
                out.push(x.node);
                continue;
            }
            if let Some(&i) = self.gauge.norms.by_output.get(&x) {
                stack.push(self.gauge.norms.list[i].input);
                continue;
            }
            stack.extend(self.g.node(x.node).inputs());
        }
        out.sort_by_key(|n| self.g.node(*n).seq());
        out
    }

    /// Nodes downstream of `n` (inclusive).
    fn downstream(&self, n: NodeId) -> Vec<NodeId> {
        let mut out = Vec::new();
        let mut stack = vec![n];
        let mut seen = HashSet::new();
        while let Some(x) = stack.pop() {
            if !seen.insert(x) {
                continue;
            }
            out.push(x);
            stack.extend(self.g.successors(x));
        }
        out
    }

    /// The branch of writer `w`, added to the stream by `add`.
    fn branch(&self, add: NodeId, w: NodeId) -> Option<Branch> {
        let writer = match_linear(self.m, self.g, w)?;
        // The branch: every stream-dependent node behind the writer, up to the stream.
        let mut nodes = vec![w];
        let mut seen: HashSet<NodeId> = HashSet::from([w]);
        let mut stack: Vec<ValueId> = vec![writer.input];
        while let Some(v) = stack.pop() {
            if self.members.contains(&v) || !self.dep.contains(&v.node) || !seen.insert(v.node) {
                continue;
            }
            nodes.push(v.node);
            stack.extend(self.g.node(v.node).inputs());
        }
        // Bias adds and sandwich norms between the writer and the residual add.
        let mut x = writer.output;
        while x.node != add {
            let Some(&(u, _)) = self.g.users(x).first() else {
                break;
            };
            if u == add || !self.members.contains(&out0(u)) {
                break;
            }
            if let Some(&i) = self.gauge.norms.by_node.get(&u) {
                nodes.extend(self.gauge.norms.list[i].nodes.iter().copied());
                x = self.gauge.norms.list[i].output;
            } else {
                nodes.push(u);
                x = out0(u);
            }
        }
        if let Some(b) = writer.bias {
            nodes.push(b.node);
        }
        let set: HashSet<NodeId> = nodes.iter().copied().collect();
        let mut readers: Vec<Linear> = nodes
            .iter()
            .filter(|n| self.readers.contains(n))
            .filter_map(|&n| match_linear(self.m, self.g, n))
            .collect();
        readers.sort_by_key(|l| self.g.node(l.node).seq());
        let norms: HashSet<usize> = readers
            .iter()
            .filter_map(|l| self.gauge.norms.by_output.get(&l.input).copied())
            .collect();
        let norm = if norms.len() == 1 {
            norms.into_iter().next()
        } else {
            None
        };
        let kind = super::transformer_parts::classify(self, &set, &readers, &writer);
        nodes.sort_by_key(|n| self.g.node(*n).seq());
        nodes.dedup();
        Some(Branch {
            add,
            norm,
            readers,
            writer,
            nodes,
            kind,
        })
    }
}
