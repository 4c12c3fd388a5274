//! ortho-ir: the intermediate representation of ortho-opt.
//!
//! A [`Module`] holds graphs (the main graph, subgraphs of control-flow ops, function bodies) and
//! an arena of weights. Graphs are SSA: every value is a result of exactly one node, graph inputs
//! and constants included. The textual form (`text`) round-trips; `verify` checks invariants and
//! reports every error at once; `shape` infers types with symbolic dimensions.

pub mod analysis;
pub mod attr;
pub mod diag;
pub mod eval;
pub mod factorized;
pub mod fused;
pub mod graph;
pub mod limits;
pub mod module;
pub mod numeric;
pub mod op;
pub mod op_ortho;
pub mod output;
pub mod output_sigbus;
pub mod semantics;
pub mod shape;
pub mod sparse;
pub mod tensor;
pub mod text;
pub mod types;
pub mod unary;
pub mod verify;
mod verify_onnx;

pub use attr::{Attr, AttrKind, AttrValue};
pub use diag::{DiagKind, Diagnostic, Diagnostics};
pub use graph::{Graph, GraphId, GraphOutput, Node, NodeId, Output, ValueId};
pub use module::{Function, ModelMeta, Module, OpsetImport};
pub use op::{attrs, Op, Opaque};
pub use tensor::{Backing, Storage, TensorData, TensorId};
pub use types::{DType, Dim, TensorType, Type};
