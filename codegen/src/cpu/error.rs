//! Errors of plan compilation and execution. Each names what is wrong (the input, the node).

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum RuntimeError {
    #[error("no kernel for op '{op}' ({node}){}", if .domain.is_empty() { String::new() } else { format!(" in domain '{}'", .domain) })]
    UnsupportedOp {
        op: String,
        domain: String,
        node: String,
    },
    #[error("{node}: {msg}")]
    Kernel { node: String, msg: String },
    #[error("missing input '{name}' (the model's inputs: {expected})")]
    MissingInput { name: String, expected: String },
    #[error("unknown input '{name}' (the model's inputs: {expected})")]
    UnknownInput { name: String, expected: String },
    #[error("input '{name}': expected dtype {expected}, got {got}")]
    InputDType {
        name: String,
        expected: String,
        got: String,
    },
    #[error("input '{name}': expected shape {expected}, got {got}")]
    InputShape {
        name: String,
        expected: String,
        got: String,
    },
    #[error("constant '{name}': {msg}")]
    Constant { name: String, msg: String },
    #[error("invalid graph: {0}")]
    Graph(String),
    #[error("tensor: {0}")]
    Tensor(String),
}

/// The error type kernels return; the executor adds the node's description.
pub type KernelResult<T> = Result<T, String>;
