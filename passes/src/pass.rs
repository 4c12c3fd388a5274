//! The `Pass` trait, what a pass returns, and the statistics it records.
//!
//! A pass is a value built from its typed options (see `registry`); the manager runs it on a whole
//! [`Module`] with a fresh [`PassContext`] each time, so a pass keeps no state between runs and a
//! fixpoint loop can run the same instance again.

use ortho_ir::{Graph, Module, NodeId};
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

/// A pass failed; like an `ortho_ir::Diagnostic`, it names the graph and node it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassError {
    /// The graph's name, empty for module-level problems.
    pub graph: String,
    /// How the node is named (`Graph::describe`), empty when no node is concerned.
    pub node: String,
    pub message: String,
}

impl PassError {
    /// A module-level error.
    pub fn new(message: impl Into<String>) -> Self {
        PassError {
            graph: String::new(),
            node: String::new(),
            message: message.into(),
        }
    }

    /// An error about node `id` of `g`.
    pub fn at(g: &Graph, id: NodeId, message: impl Into<String>) -> Self {
        PassError {
            graph: g.name.clone(),
            node: g.describe(id),
            message: message.into(),
        }
    }
}

impl fmt::Display for PassError {
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
