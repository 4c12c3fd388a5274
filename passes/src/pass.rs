//! The `Pass` trait, what a pass returns, and the statistics it records.
//!
//! A pass is a value built from its typed options (declared with `declare_pass!`, listed by
//! [`PassInfo`] and collected in the `registry`); the manager runs it on a whole
//! [`Module`] with a fresh [`PassContext`] each time, so a pass keeps no state between runs and a
//! fixpoint loop can run the same instance again.

use crate::options::{OptionError, OptionSpec, PassOptions};
use ortho_ir::{Graph, GraphId, Module, NodeId};
use std::fmt;

/// What a successful run reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PassResult {
    /// Whether the module changed. Fixpoint loops stop when an iteration changes nothing, so a
    /// pass must not claim a change it did not make (that would defeat convergence).
    pub changed: bool,
}

impl PassResult {
    pub fn changed(changed: bool) -> Self {
        PassResult { changed }
    }
}

/// What went wrong, for callers that branch on it; the message says the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassErrorKind {
    /// The module lacks a structure the pass needs, or has one it cannot handle (a blocking
    /// node, a missing stream, an unexpected op).
    Unsupported,
    /// An option value that only the module can judge (a block that does not exist, a width an
    /// N:M pattern does not divide).
    InvalidOptions,
    /// The pass needs calibration data and none was given.
    MissingCalibration,
    /// Running the model on calibration data failed or returned something unexpected.
    Evaluation,
    /// A weight could not be read or written (dtype, element count, shape).
    Weights,
    /// The numerics failed (a factorization of a singular matrix, …).
    Numeric,
}

/// A pass failed; like an `ortho_ir::Diagnostic`, it names the graph and node it concerns, both
/// as ids (for callers) and as text (for printing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassError {
    pub kind: PassErrorKind,
    /// The graph concerned; `None` for module-level problems.
    pub graph_id: Option<GraphId>,
    /// The node concerned, in `graph_id`.
    pub node_id: Option<NodeId>,
    /// The graph's name, empty for module-level problems.
    pub graph: String,
    /// How the node is named (`Graph::describe`), empty when no node is concerned.
    pub node: String,
    pub message: String,
}

impl PassError {
    /// A module-level error (kind [`PassErrorKind::Unsupported`] until [`Self::with_kind`]).
    pub fn new(message: impl Into<String>) -> Self {
        PassError {
            kind: PassErrorKind::Unsupported,
            graph_id: None,
            node_id: None,
            graph: String::new(),
            node: String::new(),
            message: message.into(),
        }
    }

    /// An error about node `id` of `g` (kind [`PassErrorKind::Unsupported`] until
    /// [`Self::with_kind`]). A `Graph` does not know its id: [`Self::at_main`] and
    /// [`Self::in_graph`] add it.
    pub fn at(g: &Graph, id: NodeId, message: impl Into<String>) -> Self {
        PassError {
            kind: PassErrorKind::Unsupported,
            graph_id: None,
            node_id: Some(id),
            graph: g.name.clone(),
            node: g.describe(id),
            message: message.into(),
        }
    }

    /// An error about node `id` of graph `gid` of `m`.
    pub fn at_graph(m: &Module, gid: GraphId, id: NodeId, message: impl Into<String>) -> Self {
        PassError::at(m.graph(gid), id, message).in_graph(gid)
    }

    /// An error about node `id` of the main graph.
    pub fn at_main(m: &Module, id: NodeId, message: impl Into<String>) -> Self {
        PassError::at_graph(m, m.main, id, message)
    }

    /// The same error, naming the graph's id.
    pub fn in_graph(mut self, gid: GraphId) -> Self {
        self.graph_id = Some(gid);
        self
    }

    /// The same error with another kind.
    pub fn with_kind(mut self, kind: PassErrorKind) -> Self {
        self.kind = kind;
        self
    }
}
impl fmt::Display for PassError {
    /// `graph @g: node: message`, omitting what is empty (the ids are not printed).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.graph.is_empty(), self.node.is_empty()) {
            (true, _) => f.write_str(&self.message),
            (false, true) => write!(f, "graph @{}: {}", self.graph, self.message),
            (false, false) => write!(f, "graph @{}: {}: {}", self.graph, self.node, self.message),
        }
    }
}

impl std::error::Error for PassError {}

/// Named counters (`dce.removed`, `canonicalize.folded`, …) in the order they were first recorded,
/// so that tables list them in pipeline order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Statistics {
    entries: Vec<(String, u64)>,
}

impl Statistics {
    /// Adds `n` to counter `key`, creating it at zero first (so that a pass that ran but found
    /// nothing still shows its counters).
    pub fn add(&mut self, key: &str, n: u64) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v += n,
            None => self.entries.push((key.to_string(), n)),
        }
    }

    pub fn get(&self, key: &str) -> Option<u64> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), *v))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds every counter of `other` into `self`.
    pub fn merge(&mut self, other: &Statistics) {
        for (k, v) in other.iter() {
            self.add(k, v);
        }
    }
}

/// What a running pass can record besides its result.
#[derive(Debug, Clone)]
pub struct PassContext {
    pass: String,
    stats: Statistics,
    notes: Vec<String>,
    /// Calibration data, when the command line supplied it (`ManagerOptions::calibration`).
    calibration: Option<std::sync::Arc<crate::calib::Calibration>>,
}

impl PassContext {
    /// A context for one run of the pass called `pass`; counters are prefixed with that name.
    pub fn new(pass: &str) -> Self {
        PassContext {
            pass: pass.to_string(),
            stats: Statistics::default(),
            notes: Vec::new(),
            calibration: None,
        }
    }

    /// The same context with calibration data attached.
    pub fn with_calibration(
        mut self,
        calibration: Option<std::sync::Arc<crate::calib::Calibration>>,
    ) -> Self {
        self.calibration = calibration;
        self
    }

    /// Calibration data for passes that run the model (pruning, DenoiseRotator); `None` when the
    /// command line gave none (such a pass then fails with `calib::missing_calibration`).
    pub fn calibration(&self) -> Option<&crate::calib::Calibration> {
        self.calibration.as_deref()
    }

    /// Adds `n` to the counter `<pass>.<name>`.
    pub fn stat(&mut self, name: &str, n: u64) {
        let key = format!("{}.{name}", self.pass);
        self.stats.add(&key, n);
    }

    /// Adds each `(name, n)` to the counter `<pass>.<name>`, in order (a pass's statistics
    /// struct, counter by counter).
    pub fn stats(&mut self, counters: &[(&str, usize)]) {
        for &(name, n) in counters {
            self.stat(name, n as u64);
        }
    }

    /// A remark for the report (something skipped and why), not an error.
    pub fn note(&mut self, message: impl Into<String>) {
        self.notes.push(message.into());
    }

    pub fn statistics(&self) -> &Statistics {
        &self.stats
    }

    pub fn notes(&self) -> &[String] {
        &self.notes
    }
}

/// A transformation of a whole module.
pub trait Pass {
    /// The registry name (kebab-case).
    fn name(&self) -> &'static str;

    /// Runs once over the module. An `Err` leaves the module in whatever state the pass reached;
    /// the manager reports it with a reproducer rather than trying to roll back.
    fn run(&self, m: &mut Module, cx: &mut PassContext) -> Result<PassResult, PassError>;
}

/// Builds a pass from its complete options; the error says which option value is unusable.
pub type PassBuilder = fn(&PassOptions) -> Result<Box<dyn Pass>, OptionError>;

/// Everything the registry knows about one pass; each pass file declares its own as `INFO`
/// (with [`crate::declare_pass!`]).
#[derive(Debug, Clone, Copy)]
pub struct PassInfo {
    /// Kebab-case name used in pipelines.
    pub name: &'static str,
    /// One line for `--list-passes`.
    pub summary: &'static str,
    pub options: &'static [OptionSpec],
    pub build: PassBuilder,
}
