//! Basis (gauge) analysis: which tensors must share one basis, and which transforms that basis
//! admits (ALGORITHMS.md §0.2 and §5.3).
//!
//! Starting from each embedding lookup (`Gather` of a constant `[V, d]` table), the walk joins
//! every tensor that must change basis together: the operands and result of every `Add`/`Sub`
//! on the stream (residual adds, biases), norm inputs and outputs, elementwise ops. It stops at
//! foldable boundaries — linear readers (`x W`, fold `W ← T⁻¹ W`), linear writers (`W ← W T`),
//! the embedding table (`E ← E T`) and constant biases (`b ← b T`) — which it records as
//! [`FoldSite`]s. Every other consumer constrains the group ([`Blocker`]): a norm gain γ ≠ 1
//! admits only signed permutations, a LayerNorm's mean subtraction only permutations, an
//! elementwise nonlinearity what it commutes with, and anything unknown nothing at all.
//!
//! The result is one [`StreamClass`] per connected set; a transform pass may apply a kind only
//! if the class admits it, and its fold sites are then exactly the weights to rewrite.

use super::group::{unary_group, Group};
use super::linear::{match_linear, Linear, Side};
use super::norm::{NormKind, Norms};
use super::util::{const_data, const_tensor, out0};
use crate::graph::{Graph, GraphId, NodeId, ValueId};
use crate::module::Module;
use crate::op::Op;
use crate::tensor::TensorId;
use std::collections::{HashMap, HashSet};

/// Why a class admits less than everything.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BlockerKind {
    /// A norm gain γ ≠ 1. `foldable`: the norm's output feeds only linear readers, so
    /// `fold-norms` can move γ into them; otherwise it sits on the stream (post-LN, sandwich).
    NormGain {
        norm: usize,
        foldable: bool,
    },
    /// LayerNorm subtracts the mean, which only permutations preserve.
    LayerNormMean {
        norm: usize,
    },
    /// A norm over another axis than the last.
    NormAxis {
        norm: usize,
    },
    /// An elementwise nonlinearity applied to the stream.
    Elementwise {
        op: String,
    },
    /// A product with a per-channel constant on the stream (a gain outside a norm).
    ChannelScale,
    /// A scalar or broadcast constant added to the stream.
    BroadcastConstant,
    /// The stream is a graph input or output: its basis is the model's interface.
    GraphInput,
    GraphOutput,
    /// A structured linear (a Kronecker sum, a compact N:M weight) reads or writes the stream in
    /// a stored form no transform of the stream folds into.
    StructuredLinear {
        kind: &'static str,
    },
    /// Anything else, with a description of what was found.
    Unsupported {
        what: String,
    },
}

/// One constraint on a class, at the node that imposes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Blocker {
    pub node: NodeId,
    pub kind: BlockerKind,
    /// The families this node still admits.
    pub allows: Group,
}

impl Blocker {
    /// A sentence naming the reason (the node is named separately by the caller).
    pub fn reason(&self) -> String {
        match &self.kind {
            BlockerKind::NormGain { foldable: true, .. } => "norm gain γ ≠ 1 not yet folded (run fold-norms first)".into(),
            BlockerKind::NormGain { foldable: false, .. } => {
                "norm gain γ ≠ 1 on a norm whose output is the stream itself (post-LN or sandwich norm); it cannot be folded".into()
            }
            BlockerKind::LayerNormMean { .. } => "LayerNorm mean subtraction (only permutations keep the mean)".into(),
            BlockerKind::NormAxis { .. } => "normalization over another axis than the hidden one".into(),
            BlockerKind::Elementwise { op } => format!("elementwise nonlinearity {op} on the stream"),
            BlockerKind::ChannelScale => "per-channel constant product on the stream".into(),
            BlockerKind::BroadcastConstant => "scalar constant added to the stream".into(),
            BlockerKind::GraphInput => "the stream is a graph input (the model's interface)".into(),
            BlockerKind::GraphOutput => "the stream is a graph output (the model's interface)".into(),
            BlockerKind::StructuredLinear { kind } => format!(
                "a {kind} linear meets the stream: no transform folds into its stored form (transform before factorizing, sparsifying or reparameterizing; or run lower-ortho / poet-merge first)"
            ),
            BlockerKind::Unsupported { what } => format!("unsupported use of the stream: {what}"),
        }
    }
}

/// The role of a weight the transform is folded into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SiteRole {
    /// The embedding table, `E ← E T`.
    Embedding,
    /// A linear layer reading the stream, `W ← T⁻¹ W`.
    Reader,
    /// A linear layer writing into the stream, `W ← W T`.
    Writer,
    /// A constant added to the stream (writer bias, LayerNorm β), `b ← b T`.
    Bias,
}

/// A constant operand to rewrite: in every fiber along `axis` of the stored tensor, a vector
/// `v` of the stream's width becomes `v T` (for orthogonal `T` this is also `T⁻¹` on a reader's
/// columns, so all roles transform alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FoldSite {
    pub role: SiteRole,
    /// The node reading the operand and the operand slot.
    pub consumer: NodeId,
    pub slot: usize,
    pub konst: NodeId,
    pub tensor: TensorId,
    /// A `Transpose` between the constant and the consumer.
    pub transpose: Option<NodeId>,
    pub axis: usize,
}

/// A linear layer that reads or writes a class, whether or not a transform folds into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinearUse {
    /// [`SiteRole::Reader`] or [`SiteRole::Writer`].
    pub role: SiteRole,
    pub node: NodeId,
    /// Whether the side meeting the stream has a fold site (see [`Linear::features`]); when
    /// not, the class carries a [`BlockerKind::StructuredLinear`] blocker at `node`.
    ///
    /// [`Linear::features`]: super::linear::Linear::features
    pub folds: bool,
}

/// A per-channel multiplier (a norm gain, a stream scale): under a signed permutation `P` it
/// becomes `γ |P|`; any other transform requires it to be trivial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParamSite {
    pub norm: Option<usize>,
    pub consumer: NodeId,
    pub slot: usize,
    pub konst: NodeId,
    pub tensor: TensorId,
}

/// Where a stream class (a segment of the residual stream) begins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Origin {
    /// At one or more embedding lookups (a whole model, or the first shard of one).
    #[default]
    Embedding,
    /// At a float graph input that is the stream itself (a shard without the embedding).
    Input,
    /// At a boundary: a constant `d × d` linear that reads the previous segment and whose result
    /// is the stream again (`denoise-rotate{mode=per-layer}` and shard cuts insert them). The
    /// boundary is a reader fold site of the segment before it and a writer fold site of this one:
    /// the two segments have different bases and admit transforms independently.
    Boundary,
}

/// Tensors that share one basis, with what the basis admits and where to fold a transform.
#[derive(Debug, Clone, Default)]
pub struct StreamClass {
    /// How the class begins; with `entries`, the nodes it begins at (graph `Input` nodes for
    /// [`Origin::Input`], the boundary linears for [`Origin::Boundary`]; empty for embeddings,
    /// whose lookups are in `seeds`).
    pub origin: Origin,
    pub entries: Vec<NodeId>,
    /// Boundary linears that read this class and begin another one (in graph order).
    pub exits: Vec<NodeId>,
    /// Member values in topological order.
    pub values: Vec<ValueId>,
    /// The stream width d.
    pub width: i64,
    /// The embedding lookups the class was grown from.
    pub seeds: Vec<NodeId>,
    /// Indices into [`GaugeAnalysis::norms`].
    pub norms: Vec<usize>,
    pub sites: Vec<FoldSite>,
    /// Every linear layer reading or writing the class (the structure analysis finds blocks
    /// from these; `sites` holds only what a transform folds into).
    pub linears: Vec<LinearUse>,
    pub params: Vec<ParamSite>,
    /// Constraints that exclude a named group (O(d), signed permutations, permutations).
    pub blockers: Vec<Blocker>,
    /// The meet of every constraint.
    pub admits: Group,
}

impl StreamClass {
    /// How many linears meet the class without a fold site (structured ones).
    pub fn opaque_linears(&self) -> usize {
        self.linears.iter().filter(|u| !u.folds).count()
    }

    /// The first blocker that rules out `need`, in graph order.
    pub fn blocker_for(&self, need: Group) -> Option<&Blocker> {
        self.blockers.iter().find(|b| !b.allows.contains(need))
    }

    /// One line per transform family this stream is denied, naming its first blocker:
    /// `"  orthogonal blocked by Mul 'x': <reason> (and 2 more)"`. Shared by `gauge-verify`'s
    /// report and `ortho-opt analyze`.
    pub fn blocker_lines(&self, g: &Graph) -> Vec<String> {
        let mut lines = Vec::new();
        for need in [
            Group::ORTHOGONAL,
            Group::SIGNED_PERMUTATION,
            Group::PERMUTATION,
        ] {
            let blocking: Vec<_> = self
                .blockers
                .iter()
                .filter(|b| !b.allows.contains(need))
                .collect();
            if let Some(b) = blocking.first() {
                let more = if blocking.len() > 1 {
                    format!(" (and {} more)", blocking.len() - 1)
                } else {
                    String::new()
                };
                lines.push(format!(
                    "  {} blocked by {}: {}{more}",
                    need.strongest(),
                    g.describe(b.node),
                    b.reason()
                ));
            }
        }
        lines
    }

    pub fn count_role(&self, role: SiteRole) -> usize {
        self.sites.iter().filter(|s| s.role == role).count()
    }
}

/// The analysis of one graph.
#[derive(Debug, Clone, Default)]
pub struct GaugeAnalysis {
    pub graph: Option<GraphId>,
    pub norms: Norms,
    /// Largest first (by number of fold sites).
    pub classes: Vec<StreamClass>,
}

impl GaugeAnalysis {
    /// The residual stream: the class with the most fold sites.
    pub fn main(&self) -> Option<&StreamClass> {
        self.classes.first()
    }

    /// The segments of the residual stream that [`main`](Self::main) belongs to, in stream
    /// order (indices into `classes`): back through the boundaries that begin it to the segment
    /// that starts at the embedding or a graph input, then forward through each segment's first
    /// exit boundary. A model without boundaries has one segment.
    pub fn chain(&self) -> Vec<usize> {
        if self.classes.is_empty() {
            return Vec::new();
        }
        let before = |i: usize| {
            let c = &self.classes[i];
            if c.origin != Origin::Boundary {
                return None;
            }
            let entry = c.entries.first()?;
            self.classes.iter().position(|p| p.exits.contains(entry))
        };
        let after = |i: usize| {
            let exit = self.classes[i].exits.first()?;
            self.classes
                .iter()
                .position(|c| c.origin == Origin::Boundary && c.entries.contains(exit))
        };
        let mut seen = HashSet::from([0]);
        let mut start = 0;
        while let Some(p) = before(start).filter(|p| seen.insert(*p)) {
            start = p;
        }
        let mut out = vec![start];
        let mut seen = HashSet::from([start]);
        let mut at = start;
        while let Some(n) = after(at).filter(|n| seen.insert(*n)) {
            out.push(n);
            at = n;
        }
        out
    }

    /// Every boundary linear of the chain ([`chain`](Self::chain)), in stream order.
    pub fn boundaries(&self) -> Vec<NodeId> {
        self.chain()
            .into_iter()
            .filter(|&i| self.classes[i].origin == Origin::Boundary)
            .flat_map(|i| self.classes[i].entries.iter().copied())
            .collect()
    }
}

/// Whether node `n` is an embedding lookup: `Gather(axis 0)` of a constant 2-D float table.
pub fn is_embedding(m: &Module, g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    let Op::Gather(a) = &node.op else {
        return false;
    };
    if a.axis() != 0 {
        return false;
    }
    node.operand(0)
        .and_then(|t| const_data(m, g, t))
        .is_some_and(|d| d.dims.len() == 2 && d.dtype.is_float())
}

/// Runs the analysis on graph `gid`: classes grown from the embedding lookups (or, in a graph
/// without one, from float graph inputs that are a residual stream: a shard), then from every
/// boundary linear that continues one of them.
pub fn analyze_gauge(m: &Module, gid: GraphId) -> GaugeAnalysis {
    let g = m.graph(gid);
    let norms = Norms::find(m, g);
    let order = g.toposort().unwrap_or_else(|_| g.node_ids());
    let rank: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let grower = Grower {
        m,
        g,
        norms: &norms,
        rank: &rank,
    };
    let mut claimed: HashSet<ValueId> = HashSet::new();
    let mut classes = grower.embedding_classes(&order, &mut claimed);
    // Only a graph without an embedding is taken for a shard, so that a whole model's analysis
    // never depends on which float inputs it has (KV caches, masks).
    if classes.is_empty() {
        classes = grower.input_classes(&mut claimed);
    }
    grower.boundary_classes(&mut classes, &mut claimed);
    // The main class is the one with most fold sites; a linear without one counts as a site.
    classes.sort_by_key(|c| std::cmp::Reverse(c.sites.len() + c.opaque_linears()));
    GaugeAnalysis {
        graph: Some(gid),
        norms,
        classes,
    }
}

/// Grows classes from seeds; `claimed` holds the values of the classes accepted so far.
struct Grower<'a> {
    m: &'a Module,
    g: &'a Graph,
    norms: &'a Norms,
    rank: &'a HashMap<NodeId, usize>,
}

impl Grower<'_> {
    fn grow(&self, seed: ValueId, width: i64) -> StreamClass {
        let mut w = Walker::new(self.m, self.g, self.norms, width);
        w.join(seed);
        w.run();
        w.finish(self.rank)
    }

    /// One class per set of embedding lookups that share a stream.
    fn embedding_classes(
        &self,
        order: &[NodeId],
        claimed: &mut HashSet<ValueId>,
    ) -> Vec<StreamClass> {
        let (m, g) = (self.m, self.g);
        let mut classes = Vec::new();
        for &n in order {
            if !is_embedding(m, g, n) || claimed.contains(&out0(n)) {
                continue;
            }
            let width = g
                .node(n)
                .operand(0)
                .and_then(|t| const_data(m, g, t))
                .map(|d| d.dims[1])
                .unwrap_or(0);
            let mut class = self.grow(out0(n), width);
            claimed.extend(class.values.iter().copied());
            class.seeds = class
                .values
                .iter()
                .filter(|v| is_embedding(m, g, v.node))
                .map(|v| v.node)
                .collect();
            classes.push(class);
        }
        classes
    }

    /// Classes grown from float graph inputs that are a residual stream: a branch writes into
    /// them, or into the segment after a boundary on them.
    fn input_classes(&self, claimed: &mut HashSet<ValueId>) -> Vec<StreamClass> {
        let mut classes = Vec::new();
        for &n in self.g.inputs() {
            let Some(width) = stream_input_width(self.g, n) else {
                continue;
            };
            if claimed.contains(&out0(n)) {
                continue;
            }
            let mut class = self.grow(out0(n), width);
            // A shard may begin with a boundary on its input: then only the segment after it
            // receives writers.
            let continued = || {
                boundary_candidates(self.m, self.g, &class)
                    .into_iter()
                    .any(|b| {
                        !claimed.contains(&out0(b))
                            && receives_writers(&self.grow(out0(b), width), &[b])
                    })
            };
            if !receives_writers(&class, &[]) && !continued() {
                continue;
            }
            claimed.extend(class.values.iter().copied());
            class.origin = Origin::Input;
            class.entries = vec![n];
            classes.push(class);
        }
        classes
    }

    /// Classes begun by boundaries, each grown from a class found before it (breadth-first), and
    /// linked to it through `exits` / `entries`.
    fn boundary_classes(&self, classes: &mut Vec<StreamClass>, claimed: &mut HashSet<ValueId>) {
        let mut at = 0;
        while at < classes.len() {
            for b in boundary_candidates(self.m, self.g, &classes[at]) {
                if claimed.contains(&out0(b)) {
                    continue;
                }
                let mut class = self.grow(out0(b), classes[at].width);
                if !receives_writers(&class, &[b]) {
                    continue;
                }
                claimed.extend(class.values.iter().copied());
                class.origin = Origin::Boundary;
                class.entries = vec![b];
                classes[at].exits.push(b);
                classes.push(class);
            }
            at += 1;
        }
    }
}

/// The width of graph input `n` when it may be a residual stream: a float tensor of rank ≥ 2
/// whose last dimension is fixed.
fn stream_input_width(g: &Graph, n: NodeId) -> Option<i64> {
    let t = g.value_type(out0(n)).as_tensor()?;
    if !t.dtype.is_float() {
        return None;
    }
    let shape = t.shape.as_ref()?;
    if shape.len() < 2 {
        return None;
    }
    shape.last()?.fixed().filter(|&d| d > 0)
}

/// Whether a class grown from a seed is a residual stream: some linear other than `entry`
/// writes into it (a branch adds to it), which neither a head's logits nor a projection's
/// output (q, a KV cache) ever receive.
fn receives_writers(c: &StreamClass, entry: &[NodeId]) -> bool {
    c.linears
        .iter()
        .any(|l| l.role == SiteRole::Writer && !entry.contains(&l.node))
}

/// The square linears reading class `c` (`d × d`, in either layout): each may be a boundary.
fn boundary_candidates(m: &Module, g: &Graph, c: &StreamClass) -> Vec<NodeId> {
    c.linears
        .iter()
        .filter(|u| u.role == SiteRole::Reader)
        .filter(|u| {
            match_linear(m, g, u.node)
                .is_some_and(|l| l.in_features == c.width && l.out_features == c.width)
        })
        .map(|u| u.node)
        .collect()
}

const WRITES_WITHOUT_WEIGHT: &str =
    "a product without a constant weight of the stream's width writes the stream";
const READS_WITHOUT_WEIGHT: &str =
    "a product without a constant weight of the stream's width reads the stream";

struct Walker<'a> {
    m: &'a Module,
    g: &'a Graph,
    norms: &'a Norms,
    width: i64,
    members: HashSet<ValueId>,
    work: Vec<ValueId>,
    norm_set: Vec<usize>,
    sites: Vec<FoldSite>,
    site_keys: HashSet<(NodeId, usize)>,
    linears: Vec<LinearUse>,
    params: Vec<ParamSite>,
    blockers: Vec<Blocker>,
    blocker_keys: HashSet<(NodeId, BlockerKind)>,
    admits: Group,
    produced: HashSet<NodeId>,
}

impl<'a> Walker<'a> {
    fn new(m: &'a Module, g: &'a Graph, norms: &'a Norms, width: i64) -> Self {
        Walker {
            m,
            g,
            norms,
            width,
            members: HashSet::new(),
            work: Vec::new(),
            norm_set: Vec::new(),
            sites: Vec::new(),
            site_keys: HashSet::new(),
            linears: Vec::new(),
            params: Vec::new(),
            blockers: Vec::new(),
            blocker_keys: HashSet::new(),
            admits: Group::ALL,
            produced: HashSet::new(),
        }
    }

    fn join(&mut self, v: ValueId) {
        if self.members.insert(v) {
            self.work.push(v);
        }
    }

    fn constrain(&mut self, node: NodeId, kind: BlockerKind, allows: Group) {
        self.admits = self.admits.meet(allows);
        // Only constraints that exclude a named orthogonal-family group are worth a report.
        if !allows.contains(Group::ORTHOGONAL) && self.blocker_keys.insert((node, kind.clone())) {
            self.blockers.push(Blocker { node, kind, allows });
        }
    }

    fn unsupported(&mut self, node: NodeId, what: impl Into<String>) {
        self.constrain(
            node,
            BlockerKind::Unsupported { what: what.into() },
            Group::NONE,
        );
    }

    fn site(
        &mut self,
        role: SiteRole,
        consumer: NodeId,
        slot: usize,
        transpose: Option<NodeId>,
        axis: usize,
    ) {
        let Some(v) = self.g.node(consumer).operand(slot) else {
            return;
        };
        let (kv, transpose) = match transpose {
            Some(t) => match self.g.node(t).operand(0) {
                Some(k) => (k, Some(t)),
                None => return,
            },
            None => (v, None),
        };
        let Some(tensor) = const_tensor(self.g, kv) else {
            return;
        };
        if self.site_keys.insert((consumer, slot)) {
            self.sites.push(FoldSite {
                role,
                consumer,
                slot,
                konst: kv.node,
                tensor,
                transpose,
                axis,
            });
        }
    }

    /// Linear layer `l` reading (its input) or writing (its output) the stream: a fold site on
    /// the operand carrying that side's features, or — when no operand does — a blocker.
    fn linear(&mut self, l: &Linear, role: SiteRole) {
        let side = if role == SiteRole::Reader {
            Side::Input
        } else {
            Side::Output
        };
        let feature = l.features(side);
        match feature {
            Some(f) => self.site(role, l.node, f.slot, f.weight.transpose, f.axis),
            None => self.constrain(
                l.node,
                BlockerKind::StructuredLinear {
                    kind: l.kind_name(),
                },
                Group::NONE,
            ),
        }
        if !self
            .linears
            .iter()
            .any(|u| u.node == l.node && u.role == role)
        {
            self.linears.push(LinearUse {
                role,
                node: l.node,
                folds: feature.is_some(),
            });
        }
    }

    fn run(&mut self) {
        while let Some(v) = self.work.pop() {
            self.backward(v);
            self.forward(v);
        }
    }

    /// A constant or stream operand of an `Add`/`Sub` on the stream.
    fn summand(&mut self, n: NodeId, slot: usize) {
        let Some(v) = self.g.node(n).operand(slot) else {
            return;
        };
        let Some(d) = const_data(self.m, self.g, v) else {
            self.join(v);
            return;
        };
        let numel = d.numel().unwrap_or(0);
        if d.dims.last() == Some(&self.width) && numel == self.width as u64 {
            let axis = d.dims.len() - 1;
            self.site(SiteRole::Bias, n, slot, None, axis);
        } else if numel == 1 {
            if d.to_f64_vec().is_some_and(|x| x.iter().all(|&e| e == 0.0)) {
                return;
            }
            self.constrain(n, BlockerKind::BroadcastConstant, Group::PERMUTATION);
        } else {
            self.unsupported(
                n,
                format!(
                    "{} adds a constant of shape {:?}",
                    self.g.node(n).op.name(),
                    d.dims
                ),
            );
        }
    }

    /// A `Mul` of a stream value by a constant: a scalar commutes with everything, a
    /// per-channel vector only with monomial transforms.
    fn scaled(&mut self, n: NodeId, stream: ValueId) -> bool {
        let node = self.g.node(n);
        let slot = if node.operand(0) == Some(stream) {
            1
        } else {
            0
        };
        let Some(c) = node.operand(slot) else {
            return false;
        };
        let Some(d) = const_data(self.m, self.g, c) else {
            return false;
        };
        let numel = d.numel().unwrap_or(0);
        if numel == 1 {
            return true;
        }
        if d.dims.last() == Some(&self.width) && numel == self.width as u64 {
            if let Some(tensor) = const_tensor(self.g, c) {
                self.params.push(ParamSite {
                    norm: None,
                    consumer: n,
                    slot,
                    konst: c.node,
                    tensor,
                });
            }
            self.constrain(n, BlockerKind::ChannelScale, Group::MONOMIAL);
            return true;
        }
        false
    }

    fn norm(&mut self, i: usize) {
        if self.norm_set.contains(&i) {
            return;
        }
        self.norm_set.push(i);
        let norm = &self.norms.list[i];
        for v in [Some(norm.input), norm.skip, Some(norm.output), norm.sum]
            .into_iter()
            .flatten()
        {
            self.join(v);
        }
        if !norm.last_axis {
            self.constrain(norm.node, BlockerKind::NormAxis { norm: i }, Group::NONE);
            return;
        }
        // A norm rescales every row by its own statistic: no diagonal scaling survives.
        self.admits = self.admits.meet(Group::ORTHOGONAL);
        // Its output feeds only foldable readers (pre-norm): fold-norms can take γ.
        let foldable = self.g.users(norm.output).iter().all(|&(u, slot)| {
            slot == 0
                && match_linear(self.m, self.g, u)
                    .is_some_and(|l| l.features(Side::Input).is_some())
        }) && !self.g.outputs.iter().any(|o| o.value == norm.output);
        // A structured reader (Kronecker sum) blocks every transform itself, with a blocker of
        // its own that names the real reason: the gain then adds none.
        let structured_reader = self.g.users(norm.output).iter().any(|&(u, slot)| {
            slot == 0
                && match_linear(self.m, self.g, u)
                    .is_some_and(|l| l.features(Side::Input).is_none())
        });
        if let Some(gain) = norm.gain.filter(|p| !p.trivial) {
            if gain.per_channel {
                self.params.push(ParamSite {
                    norm: Some(i),
                    consumer: gain.consumer,
                    slot: gain.slot,
                    konst: gain.konst,
                    tensor: gain.tensor,
                });
            }
            if gain.per_channel && !structured_reader {
                self.constrain(
                    gain.consumer,
                    BlockerKind::NormGain { norm: i, foldable },
                    Group::SIGNED_PERMUTATION,
                );
            }
        }
        if norm.kind == NormKind::Layer {
            self.constrain(
                norm.node,
                BlockerKind::LayerNormMean { norm: i },
                Group::PERMUTATION,
            );
            if let Some(b) = norm.bias.filter(|p| !p.trivial && p.per_channel) {
                let axis = self.m.tensor(b.tensor).dims.len().saturating_sub(1);
                self.site(SiteRole::Bias, b.consumer, b.slot, None, axis);
            }
        }
    }

    fn backward(&mut self, v: ValueId) {
        let p = v.node;
        if let Some(&i) = self.norms.by_output.get(&v) {
            self.norm(i);
            return;
        }
        if !self.produced.insert(p) {
            return;
        }
        let node = self.g.node(p);
        // Any op the linear matcher recognizes (dense or structured) writes like a linear.
        let linear = match_linear(self.m, self.g, p);
        match &node.op {
            Op::Input { .. } => self.constrain(p, BlockerKind::GraphInput, Group::NONE),
            Op::Add | Op::Sub => {
                self.summand(p, 0);
                self.summand(p, 1);
            }
            _ if linear.is_some() => match linear {
                Some(l) if l.out_features == self.width => {
                    self.linear(&l, SiteRole::Writer);
                    if let Some(b) = l.bias.filter(|b| b.node == p) {
                        let axis = self.m.tensor(b.tensor).dims.len().saturating_sub(1);
                        self.site(SiteRole::Bias, p, b.slot, None, axis);
                    }
                }
                _ => self.unsupported(p, WRITES_WITHOUT_WEIGHT),
            },
            Op::MatMul | Op::Gemm(_) => self.unsupported(p, WRITES_WITHOUT_WEIGHT),
            Op::Gather(_) if is_embedding(self.m, self.g, p) => {
                self.site(SiteRole::Embedding, p, 0, None, 1)
            }
            Op::Identity | Op::Cast(_) => {
                if let Some(x) = node.operand(0) {
                    self.join(x);
                }
            }
            Op::Mul if node.inputs().any(|x| const_tensor(self.g, x).is_some()) => {
                let x = node.inputs().find(|x| const_tensor(self.g, *x).is_none());
                match x {
                    Some(x) if self.scaled(p, x) => self.join(x),
                    _ => self.unsupported(p, "Mul by a constant of another shape"),
                }
            }
            op => match unary_group(op) {
                Some(grp) => {
                    self.constrain(
                        p,
                        BlockerKind::Elementwise {
                            op: op.name().to_string(),
                        },
                        grp,
                    );
                    if let Some(x) = node.operand(0) {
                        self.join(x);
                    }
                }
                None => self.unsupported(p, format!("{} produces a stream tensor", op.name())),
            },
        }
    }

    fn forward(&mut self, v: ValueId) {
        if self.g.outputs.iter().any(|o| o.value == v) {
            self.constrain(v.node, BlockerKind::GraphOutput, Group::NONE);
        }
        for (u, slot) in self.g.users(v) {
            if let Some(&i) = self.norms.by_node.get(&u) {
                let norm = &self.norms.list[i];
                if norm.input == v || norm.skip == Some(v) {
                    self.norm(i);
                } else {
                    self.unsupported(u, "a stream tensor enters the middle of a norm");
                }
                continue;
            }
            let node = self.g.node(u);
            // Any op the linear matcher recognizes reads the stream like a linear (slot 0).
            let linear = match_linear(self.m, self.g, u);
            match &node.op {
                Op::Add | Op::Sub => {
                    self.summand(u, 1 - slot.min(1));
                    self.join(out0(u));
                }
                _ if slot == 0 && linear.is_some() => match linear {
                    Some(l) if l.in_features == self.width => self.linear(&l, SiteRole::Reader),
                    _ => self.unsupported(u, READS_WITHOUT_WEIGHT),
                },
                Op::MatMul | Op::Gemm(_) if slot == 0 => self.unsupported(u, READS_WITHOUT_WEIGHT),
                Op::Identity | Op::Cast(_) => self.join(out0(u)),
                Op::Mul if self.scaled(u, v) => self.join(out0(u)),
                op => match unary_group(op) {
                    Some(grp) => {
                        self.constrain(
                            u,
                            BlockerKind::Elementwise {
                                op: op.name().to_string(),
                            },
                            grp,
                        );
                        self.join(out0(u));
                    }
                    None => self.unsupported(u, format!("{} reads a stream tensor", op.name())),
                },
            }
        }
    }

    fn finish(self, rank: &HashMap<NodeId, usize>) -> StreamClass {
        let mut values: Vec<ValueId> = self.members.into_iter().collect();
        values.sort_by_key(|v| (rank.get(&v.node).copied().unwrap_or(usize::MAX), v.output));
        let key = |n: &NodeId| rank.get(n).copied().unwrap_or(usize::MAX);
        let mut sites = self.sites;
        sites.sort_by_key(|s| (key(&s.consumer), s.slot));
        let mut blockers = self.blockers;
        blockers.sort_by_key(|b| key(&b.node));
        let mut norms = self.norm_set;
        norms.sort_by_key(|&i| key(&self.norms.list[i].node));
        let mut params = self.params;
        params.sort_by_key(|p| (key(&p.consumer), p.slot));
        let mut linears = self.linears;
        linears.sort_by_key(|u| key(&u.node));
        StreamClass {
            origin: Origin::Embedding,
            entries: Vec::new(),
            exits: Vec::new(),
            values,
            width: self.width,
            seeds: Vec::new(),
            norms,
            sites,
            linears,
            params,
            blockers,
            admits: self.admits,
        }
    }
}
