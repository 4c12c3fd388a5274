//! Transformer structure, found from the graph alone: the residual stream (from the gauge
//! analysis), the branches that write into it (each a writer linear plus everything between it
//! and the stream), their kind (attention with q/k/v/o, heads, GQA and RoPE; or an MLP with its
//! activation), the blocks, the final norm and the head (tied to the embedding or not).
//!
//! Nodes that depend on the stream but belong to no recognized part are reported one by one;
//! nodes that do not depend on it (positions, masks, RoPE tables) are auxiliary.

use super::gauge::{analyze_gauge, GaugeAnalysis, Origin, SiteRole, StreamClass};
use super::linear::{match_linear, Linear};
use super::util::{const_data, is_graph_output, out0};
use crate::diag::{DiagKind, Diagnostics};
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
    /// The boundary linear on the stream entering the block (a basis change between blocks, see
    /// [`Origin::Boundary`](super::gauge::Origin::Boundary)), when there is one: the block's
    /// input is its result. A boundary always begins a new block.
    pub entry: Option<Linear>,
}

/// Which ends of a whole model the graph has. A whole model starts at an embedding and ends in
/// a final norm and head; a shard (a run of blocks cut out of one) may lack either end, its
/// stream then being a graph input or output itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ends {
    /// The stream starts at embedding lookups (`Structure::embeddings`).
    pub embedding: bool,
    /// Graph inputs that are the stream itself (a shard without the embedding).
    pub stream_inputs: Vec<ValueId>,
    /// A linear head reads the stream after the last block (`Structure::heads`; its norm is
    /// `Structure::final_norm`).
    pub head: bool,
    /// Graph outputs that are the stream itself (a shard without the head).
    pub stream_outputs: Vec<ValueId>,
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
    /// Boundary linears on the stream (basis changes between blocks), in stream order; each is
    /// also the `entry` of the block after it, when a block follows.
    pub boundaries: Vec<Linear>,
    pub ends: Ends,
    pub unmatched: Vec<Unmatched>,
    /// Nodes that do not depend on the stream (positions, masks, RoPE tables, shapes).
    pub auxiliary: usize,
}

impl Structure {
    /// The nodes the analysis could not place, as diagnostics of kind
    /// [`DiagKind::Structure`] naming graph and node (for a pass that refuses such a graph).
    pub fn diagnostics(&self, m: &Module) -> Diagnostics {
        let mut d = Diagnostics::default();
        if let Some(gid) = self.gauge.graph {
            let g = m.graph(gid);
            for u in &self.unmatched {
                d.error(
                    DiagKind::Structure,
                    g,
                    Some(gid),
                    Some(u.node),
                    u.why.clone(),
                );
            }
        }
        d
    }
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
        boundaries: Vec::new(),
        ends: Ends::default(),
        unmatched: Vec::new(),
        auxiliary: 0,
    };
    let order = g.toposort().unwrap_or_else(|_| g.node_ids());
    let segments: Vec<&StreamClass> = gauge.chain().iter().map(|&i| &gauge.classes[i]).collect();
    if segments.is_empty() {
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
    }
    let ctx = Ctx::new(m, g, &gauge, &segments, &order);
    s.width = Some(segments[0].width);
    s.embeddings = embeddings(m, g, &segments);
    s.boundaries = ctx.boundaries.clone();
    let mut claimed: HashSet<NodeId> = HashSet::new();
    for b in &s.boundaries {
        claimed.insert(b.node);
        claimed.extend(b.bias.map(|x| x.node));
    }
    let post = residual_branches(&ctx, &segments, &mut s, &mut claimed);
    find_heads(&ctx, &segments, &mut s, &mut claimed);
    s.final_norm = s.heads.first().and_then(|h| h.norm);
    let no_norms = gauge.norms.list.is_empty() || segments.iter().all(|c| c.norms.is_empty());
    s.placement = match (no_norms, post) {
        (true, _) => Placement::NoNorm,
        (false, true) => Placement::PostNorm,
        (false, false) => Placement::PreNorm,
    };
    s.blocks = group_blocks(&ctx, &s.branches);
    s.ends = ends(g, &segments, &s);
    unmatched(&ctx, &segments, &order, &claimed, &mut s);
    s.gauge = gauge;
    s
}

/// The embedding lookups that start the stream.
fn embeddings(m: &Module, g: &Graph, segments: &[&StreamClass]) -> Vec<Embedding> {
    segments
        .iter()
        .flat_map(|c| c.seeds.iter().copied())
        .filter_map(|n| {
            let t = g.node(n).operand(0)?;
            let d = const_data(m, g, t)?;
            Some(Embedding {
                node: n,
                table: t.node,
                vocab: d.dims[0],
                width: d.dims[1],
            })
        })
        .collect()
}

/// Walks the stream values in order: residual adds (an `Add` of the stream and a branch output,
/// or a norm with the add fused in) yield the branches; the other values are the stream proper.
/// Returns whether a norm sits on the stream (post-norm).
fn residual_branches(
    ctx: &Ctx<'_>,
    segments: &[&StreamClass],
    s: &mut Structure,
    claimed: &mut HashSet<NodeId>,
) -> bool {
    let (g, gauge) = (ctx.g, ctx.gauge);
    let mut post = false;
    for &v in segments.iter().flat_map(|c| c.values.iter()) {
        let n = v.node;
        let node = g.node(n);
        if let Some(&i) = gauge.norms.by_output.get(&v) {
            let norm = &gauge.norms.list[i];
            claimed.extend(norm.nodes.iter().copied());
            if norm.skip.is_some() {
                // A norm with the residual add fused in: its summands are stream and branch,
                // its `sum` result (when used) is the stream.
                if v == norm.output {
                    let summands = [Some(norm.input), norm.skip].into_iter().flatten();
                    for x in summands.filter(|x| ctx.is_branch_out(*x)) {
                        ctx.add_branches(norm.node, x, &mut s.branches, claimed);
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
                    ctx.add_branches(n, x, &mut s.branches, claimed);
                }
            }
            _ => s.stream.push(v),
        }
    }
    post
}

/// Linear readers of the stream outside every branch (and not boundaries): the LM head(s).
fn find_heads(
    ctx: &Ctx<'_>,
    segments: &[&StreamClass],
    s: &mut Structure,
    claimed: &mut HashSet<NodeId>,
) {
    let in_branch: HashSet<NodeId> = claimed.clone();
    let readers = segments.iter().flat_map(|c| c.linears.iter()).filter(|x| {
        x.role == SiteRole::Reader
            && !in_branch.contains(&x.node)
            && !ctx.boundary_nodes.contains(&x.node)
    });
    for reader in readers {
        let Some(linear) = match_linear(ctx.m, ctx.g, reader.node) else {
            continue;
        };
        let norm = ctx.gauge.norms.by_output.get(&linear.input).copied();
        let tied = s.embeddings.iter().any(|e| e.table == linear.weight.konst);
        s.heads.push(Head { linear, norm, tied });
        claimed.insert(linear.node);
        if let Some(b) = linear.bias {
            claimed.insert(b.node);
        }
        claimed.extend(ctx.downstream(linear.output.node));
    }
}

/// Which ends the stream has (see [`Ends`]).
fn ends(g: &Graph, segments: &[&StreamClass], s: &Structure) -> Ends {
    let stream_inputs = segments
        .iter()
        .filter(|c| c.origin == Origin::Input)
        .flat_map(|c| c.entries.iter().map(|&n| out0(n)))
        .collect();
    let stream_outputs = segments
        .iter()
        .flat_map(|c| c.values.iter().copied())
        .filter(|v| is_graph_output(g, *v))
        .collect();
    Ends {
        embedding: !s.embeddings.is_empty(),
        stream_inputs,
        head: !s.heads.is_empty(),
        stream_outputs,
    }
}

/// Nodes that depend on the stream but no part claims (each with the reason a blocker gives,
/// when one does), then branches of unknown kind; counts the auxiliary nodes.
fn unmatched(
    ctx: &Ctx<'_>,
    segments: &[&StreamClass],
    order: &[NodeId],
    claimed: &HashSet<NodeId>,
    s: &mut Structure,
) {
    let g = ctx.g;
    // The last blocker of a node names it (as a map collected in graph order keeps).
    let blockers: HashMap<NodeId, String> = segments
        .iter()
        .flat_map(|c| c.blockers.iter())
        .map(|b| (b.node, b.reason()))
        .collect();
    for &n in order {
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
}

/// Blocks: each attention branch opens one; an MLP joins the open block unless it has one. A
/// boundary between two branches closes the open block: the next one begins at it.
fn group_blocks(ctx: &Ctx<'_>, branches: &[Branch]) -> Vec<Block> {
    let mut blocks: Vec<Block> = Vec::new();
    let mut segment = None;
    for (i, b) in branches.iter().enumerate() {
        let seg = ctx.segment_of.get(&b.writer.node).copied();
        let entry = match seg {
            Some(k) if segment.is_some_and(|p| p != k) || segment.is_none() => {
                ctx.entry_of_segment.get(&k).copied()
            }
            _ => None,
        };
        segment = seg.or(segment);
        let new = Block {
            attention: None,
            mlp: None,
            other: None,
            entry,
        };
        let open = blocks.last_mut().filter(|_| entry.is_none());
        match (&b.kind, open) {
            (BranchKind::Attention(_), _) => blocks.push(Block {
                attention: Some(i),
                ..new
            }),
            (BranchKind::Mlp(_), Some(bl)) if bl.mlp.is_none() => bl.mlp = Some(i),
            (BranchKind::Mlp(_), _) => blocks.push(Block {
                mlp: Some(i),
                ..new
            }),
            (BranchKind::Unknown, _) => blocks.push(Block {
                other: Some(i),
                ..new
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
    /// The boundary linears of the chain, in stream order, and their nodes.
    boundaries: Vec<Linear>,
    boundary_nodes: HashSet<NodeId>,
    /// The segment (index into the chain) of each writer, and the boundary each segment after
    /// the first begins at.
    segment_of: HashMap<NodeId, usize>,
    entry_of_segment: HashMap<usize, Linear>,
}

impl<'a> Ctx<'a> {
    fn new(
        m: &'a Module,
        g: &'a Graph,
        gauge: &'a GaugeAnalysis,
        segments: &[&StreamClass],
        order: &[NodeId],
    ) -> Self {
        let boundaries: Vec<Linear> = gauge
            .boundaries()
            .into_iter()
            .filter_map(|n| match_linear(m, g, n))
            .collect();
        let boundary_nodes: HashSet<NodeId> = boundaries.iter().map(|l| l.node).collect();
        // A boundary is a reader of the segment before it and a writer of its own; as neither
        // does it belong to a branch.
        let role = |r: SiteRole| {
            segments
                .iter()
                .flat_map(|c| c.linears.iter())
                .filter(|u| u.role == r && !boundary_nodes.contains(&u.node))
                .map(|u| u.node)
                .collect::<HashSet<_>>()
        };
        let mut segment_of = HashMap::new();
        let mut entry_of_segment = HashMap::new();
        for (k, c) in segments.iter().enumerate() {
            for writer in c.linears.iter().filter(|u| u.role == SiteRole::Writer) {
                segment_of.entry(writer.node).or_insert(k);
            }
            if c.origin == Origin::Boundary {
                let entry = c
                    .entries
                    .first()
                    .and_then(|e| boundaries.iter().find(|l| l.node == *e).copied());
                if let Some(l) = entry {
                    entry_of_segment.insert(k, l);
                }
            }
        }
        // The stream starts at the embedding lookups or, in a shard, at its graph inputs.
        let mut dep: HashSet<NodeId> = segments
            .iter()
            .flat_map(|c| {
                let inputs = (c.origin == Origin::Input).then_some(c.entries.iter());
                c.seeds.iter().chain(inputs.into_iter().flatten())
            })
            .copied()
            .collect();
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
            members: segments
                .iter()
                .flat_map(|c| c.values.iter().copied())
                .collect(),
            writers: role(SiteRole::Writer),
            readers: role(SiteRole::Reader),
            dep,
            trig,
            gauge,
            boundaries,
            boundary_nodes,
            segment_of,
            entry_of_segment,
        }
    }

    /// Adds the branches behind branch output `x`, summed into the stream by `add`.
    fn add_branches(
        &self,
        add: NodeId,
        x: ValueId,
        branches: &mut Vec<Branch>,
        claimed: &mut HashSet<NodeId>,
    ) {
        for w in self.writers_of(x) {
            if let Some(b) = self.branch(add, w) {
                claimed.extend(b.nodes.iter().copied());
                branches.push(b);
            }
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
        // `Shape`/`Size` users read only the dims (torch's TorchScript exporter takes the
        // attention reshape sizes from the normed value), never the values a basis acts on.
        let users = self.g.users(v);
        let mut value_users = users
            .iter()
            .filter(|(u, _)| !matches!(self.g.node(*u).op, Op::Shape(_) | Op::Size))
            .peekable();
        value_users.peek().is_some() && value_users.all(|(u, _)| self.readers.contains(u))
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
