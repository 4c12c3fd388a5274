//! Diagnostics: errors that name the graph and node they concern, collected rather than thrown
//! so that a verifier can report every problem at once.
//!
//! A [`Diagnostic`] carries what a caller needs to act on it — its [`DiagKind`], the graph's
//! [`GraphId`] and the node's [`NodeId`] where known — besides the text it prints (the graph's
//! name and the node's description), so that a caller can branch on the kind or point at the
//! node without parsing the message. Build one with [`Diagnostic::at`] /
//! [`Diagnostics::error`]; [`Diagnostics::push`] remains for text-only reports (kind
//! [`DiagKind::Other`], no ids).

use crate::graph::{Graph, GraphId, NodeId};
use std::fmt;

/// What kind of problem a diagnostic reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiagKind {
    /// The graph's structure: SSA names and operands, inputs and outputs, captures, cycles.
    Structure,
    /// Operand or result counts against the op's arity.
    Arity,
    /// Element types (operands that must agree, bool or index operands).
    Type,
    /// Shapes: declared against inferred, impossible dimensions, shape rules that fail.
    Shape,
    /// An attribute value the op cannot take.
    Attribute,
    /// A constant tensor's data against its element type and dims.
    Tensor,
    /// Anything else (and every diagnostic built from text alone).
    Other,
}

/// One problem, located by graph and node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub kind: DiagKind,
    /// The graph's name.
    pub graph: String,
    /// The graph, where the reporter knew it.
    pub graph_id: Option<GraphId>,
    /// How the node is named (`MatMul '/model/MatMul'`), empty for graph-level problems.
    pub node: String,
    /// The node, for problems at one that exists in the graph.
    pub node_id: Option<NodeId>,
    pub message: String,
}

impl Diagnostic {
    /// A problem at node `node` of graph `g` (graph-level when `None`, or when `g` has no such
    /// node); `gid` is `g`'s id where the caller knows it.
    pub fn at(
        kind: DiagKind,
        g: &Graph,
        gid: Option<GraphId>,
        node: Option<NodeId>,
        message: impl Into<String>,
    ) -> Self {
        let node = node.filter(|n| g.contains(*n));
        Diagnostic {
            kind,
            graph: g.name.clone(),
            graph_id: gid,
            node: node.map(|n| g.describe(n)).unwrap_or_default(),
            node_id: node,
            message: message.into(),
        }
    }

    /// A problem known only by text (kind [`DiagKind::Other`], no ids).
    pub fn text(graph: &str, node: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            kind: DiagKind::Other,
            graph: graph.to_string(),
            graph_id: None,
            node: node.into(),
            node_id: None,
            message: message.into(),
        }
    }

    /// This diagnostic with kind `kind` if it has none more specific ([`DiagKind::Other`]), and
    /// graph id `gid` if it has none: for a reporter that knows what every problem of a
    /// sub-analysis is about.
    pub fn or_kind(mut self, kind: DiagKind, gid: Option<GraphId>) -> Self {
        if self.kind == DiagKind::Other {
            self.kind = kind;
        }
        self.graph_id = self.graph_id.or(gid);
        self
    }
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

impl std::error::Error for Diagnostic {}

/// A list of problems; an error when non-empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A text-only problem (kind [`DiagKind::Other`], no ids); prefer [`error`](Self::error).
    pub fn push(&mut self, graph: &str, node: impl Into<String>, message: impl Into<String>) {
        self.0.push(Diagnostic::text(graph, node, message));
    }

    /// A problem of kind `kind` at node `node` of graph `g` (see [`Diagnostic::at`]).
    pub fn error(
        &mut self,
        kind: DiagKind,
        g: &Graph,
        gid: Option<GraphId>,
        node: Option<NodeId>,
        message: impl Into<String>,
    ) {
        self.0.push(Diagnostic::at(kind, g, gid, node, message));
    }

    /// The problems of kind `kind`.
    pub fn of_kind(&self, kind: DiagKind) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(move |d| d.kind == kind)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Output;
    use crate::op::Op;
    use crate::types::Type;

    #[test]
    fn typed_and_text_diagnostics_print_alike() {
        let mut g = Graph::default();
        g.name = "main".into();
        let n = g.add_node(Op::Relu, vec![], vec![Output::new("r", Type::Unknown)]);
        let typed = Diagnostic::at(DiagKind::Arity, &g, None, Some(n), "takes 1 operand");
        let text = Diagnostic::text("main", g.describe(n), "takes 1 operand");
        assert_eq!(typed.to_string(), text.to_string());
        assert_eq!(
            typed.to_string(),
            "graph @main: Relu producing '%r': takes 1 operand"
        );
        assert_eq!((typed.kind, typed.node_id), (DiagKind::Arity, Some(n)));
        assert_eq!((text.kind, text.node_id), (DiagKind::Other, None));
        // A graph-level problem has neither node text nor id.
        let graph_level =
            Diagnostic::at(DiagKind::Structure, &g, None, None, "output 0 has no name");
        assert_eq!(graph_level.to_string(), "graph @main: output 0 has no name");
        assert_eq!(graph_level.node_id, None);
        // `or_kind` refines only what is untyped.
        assert_eq!(text.or_kind(DiagKind::Shape, None).kind, DiagKind::Shape);
        assert_eq!(typed.or_kind(DiagKind::Shape, None).kind, DiagKind::Arity);
    }
}
