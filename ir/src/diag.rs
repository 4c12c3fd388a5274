//! Diagnostics: errors that name the graph and node they concern, collected rather than thrown
//! so that a verifier can report every problem at once.

use std::fmt;

/// One problem, located by graph and node description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The graph's name.
    pub graph: String,
    /// How the node is named (`MatMul '/model/MatMul'`), empty for graph-level problems.
    pub node: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.node.is_empty() {
            write!(f, "graph @{}: {}", self.graph, self.message)
        } else {
            write!(f, "graph @{}: {}: {}", self.graph, self.node, self.message)
        }
    }
}

/// A list of problems; an error when non-empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn push(&mut self, graph: &str, node: impl Into<String>, message: impl Into<String>) {
        self.0.push(Diagnostic {
            graph: graph.to_string(),
            node: node.into(),
            message: message.into(),
        });
    }
    pub fn into_result(self) -> Result<(), Diagnostics> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(f, "{n} error{}:", if n == 1 { "" } else { "s" })?;
        for d in &self.0 {
            writeln!(f, "  error: {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}
