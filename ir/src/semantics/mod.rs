//! ONNX op semantics, written once: the rules that shape inference (`shape`), the constant folder
//! (`ortho-passes`), lowering and the engine's kernels (`ortho-codegen`) all need.
//!
//! - [`size`]: element counts and byte lengths through checked arithmetic, so no caller can wrap
//!   a size computed from model data;
//! - [`axis`]: negative-axis normalization;
//! - [`cast`]: Cast's element rules (rounded once, truncation, undefined cases);
//! - [`broadcast`]: multidirectional (numpy) broadcasting, for concrete and symbolic dims;
//! - [`slice`]: Slice's clamping of starts/ends/steps;
//! - [`reshape`]: Reshape, Squeeze, Unsqueeze and Flatten output dims;
//! - [`einsum`]: the Einsum equation grammar and a general evaluation in f64;
//! - [`indexing`]: GatherND / ScatterND / ScatterElements offsets, TopK's lane selection, Pad's
//!   source map (element-generic, over plain slices), Compress's positions, Det;
//! - [`loss`]: NegativeLogLikelihoodLoss (and SoftmaxCrossEntropyLoss through it): targets,
//!   class weights, ignored positions and reductions;
//! - [`pool`]: pooling windows (output sizes, explicit and automatic pads, ceil rounding) and
//!   their evaluation;
//! - [`conv`]: Conv and ConvTranspose in f64 over the pooling windows;
//! - [`blocks`]: DepthToSpace / SpaceToDepth plans and ReverseSequence;
//! - [`norm`]: BatchNormalization, InstanceNormalization, MeanVarianceNormalization and
//!   LpNormalization (group moments, training-mode statistics);
//! - [`movement`]: element-generic data movement (Gather, Concat, Where, Slice, Range,
//!   ConstantOfShape) over plain slices, so a kernel and the folder run the same code.
//!
//! Helpers here compute plans and index maps once per call; none adds work per element beyond
//! the copy itself.

pub mod axis;
pub mod blocks;
pub mod broadcast;
pub mod cast;
pub mod conv;
pub mod einsum;
pub mod indexing;
pub mod loss;
pub mod movement;
pub mod norm;
pub mod pool;
pub mod reshape;
pub mod size;
pub mod slice;

#[cfg(test)]
mod tests;

use thiserror::Error;

/// Why an op's semantics reject their operands. The messages are the ones the engine has always
/// printed, so that callers can wrap them unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SemError {
    #[error("{what} {axis} is out of range for rank {rank}")]
    Axis {
        what: &'static str,
        axis: i64,
        rank: usize,
    },
    #[error("{what} {axis} is out of range for rank {rank} (allowed: -{rank}..={rank})")]
    SplitPoint {
        what: &'static str,
        axis: i64,
        rank: usize,
    },
    #[error("repeated axes {0:?}")]
    RepeatedAxes(Vec<i64>),
    #[error("shapes {0} do not broadcast")]
    Broadcast(String),
    #[error("index {index} is out of range for axis of size {dim}")]
    Index { index: i64, dim: usize },
    #[error("{what}: negative dimension {dim}")]
    NegativeDim { what: &'static str, dim: i64 },
    #[error("size overflow: {0}")]
    Overflow(String),
    /// An allocation larger than the memory the system has available, or one the allocator
    /// refused: an error instead of an abort.
    #[error("{what} needs {bytes} bytes ({:.1} GiB), more than the {available} bytes ({:.1} GiB) available", *.bytes as f64 / GIB, *.available as f64 / GIB)]
    OutOfMemory {
        what: String,
        bytes: u64,
        available: u64,
    },
    /// Any other operand that the op's definition rejects.
    #[error("{0}")]
    Invalid(String),
}

/// Bytes per GiB, for messages.
const GIB: f64 = (1u64 << 30) as f64;

/// The result of a semantics function.
pub type SemResult<T> = Result<T, SemError>;
