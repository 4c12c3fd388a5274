//! Errors of plan compilation and execution. Each names what is wrong (the input, the node).

use ortho_ir::semantics::SemError;
use std::borrow::Cow;
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum RuntimeError {
    #[error("no kernel for op '{op}' ({node}){}", if .domain.is_empty() { String::new() } else { format!(" in domain '{}'", .domain) })]
    UnsupportedOp {
        op: String,
        domain: String,
        node: String,
    },
    /// Several op types without a kernel, all of them named (each with its node count) so that
    /// a user learns the whole list at once; a single missing op type stays `UnsupportedOp`.
    #[error("no kernels for {} ops: {} (first at {first_node})", .ops.len(), .ops.join(", "))]
    UnsupportedOps {
        ops: Vec<String>,
        first_node: String,
    },
    #[error("{node}: {error}")]
    Kernel { node: String, error: KernelError },
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

/// Why a kernel (or its construction) failed. The executor adds the node's description
/// ([`RuntimeError::Kernel`]); the kind lets a caller branch without reading the text, which is
/// the message the engine has always printed.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum KernelError {
    /// Operand shapes the op's definition rejects (ranks, broadcasting, axes, indices).
    #[error(transparent)]
    Semantics(#[from] SemError),
    /// Operand shapes the kernel rejects.
    #[error("{0}")]
    Shape(Cow<'static, str>),
    /// An operand of a dtype the op is not defined (or not implemented) for.
    #[error("{0}")]
    DType(Cow<'static, str>),
    /// A valid op or attribute this engine does not implement.
    #[error("{0}")]
    Unsupported(Cow<'static, str>),
    /// A size computed from the operands that does not fit.
    #[error("{0}")]
    Size(Cow<'static, str>),
    /// Any other invalid operand or attribute (a missing operand, a bad attribute value).
    #[error("{0}")]
    Invalid(Cow<'static, str>),
    /// The memory for a result could not be allocated (the executor names the node).
    #[error("cannot allocate {bytes} bytes ({elements} elements of {dtype}) for a result: out of memory")]
    Alloc {
        bytes: usize,
        elements: usize,
        dtype: String,
    },
}

impl KernelError {
    pub fn shape(msg: impl Into<Cow<'static, str>>) -> Self {
        KernelError::Shape(msg.into())
    }
    pub fn dtype(msg: impl Into<Cow<'static, str>>) -> Self {
        KernelError::DType(msg.into())
    }
    pub fn unsupported(msg: impl Into<Cow<'static, str>>) -> Self {
        KernelError::Unsupported(msg.into())
    }
    pub fn size(msg: impl Into<Cow<'static, str>>) -> Self {
        KernelError::Size(msg.into())
    }
    pub fn invalid(msg: impl Into<Cow<'static, str>>) -> Self {
        KernelError::Invalid(msg.into())
    }
}

/// A message from code that still reports text (custom kernels registered from outside this
/// crate): kept as `Invalid` with its text unchanged.
impl From<String> for KernelError {
    fn from(msg: String) -> Self {
        KernelError::Invalid(msg.into())
    }
}

impl From<&'static str> for KernelError {
    fn from(msg: &'static str) -> Self {
        KernelError::Invalid(msg.into())
    }
}

/// Tensor construction failures inside a kernel (a shape that does not match the data).
impl From<RuntimeError> for KernelError {
    fn from(e: RuntimeError) -> Self {
        KernelError::Shape(e.to_string().into())
    }
}

/// The error type kernels return; the executor adds the node's description.
pub type KernelResult<T> = Result<T, KernelError>;
