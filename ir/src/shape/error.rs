//! Why an inference rule rejects its node.
//!
//! A [`ShapeError`] says what kind of problem a rule found, so that a caller can branch on it
//! (and [`ShapeError::diag_kind`] files it under the verifier's [`DiagKind`]); its text is the
//! message the rule has always printed. Inference turns each into a [`crate::diag::Diagnostic`]
//! naming the graph and the node, so the variants carry no location themselves.

use crate::diag::DiagKind;
use crate::factorized::FactorizedError;
use crate::fused::FusedError;
use crate::semantics::SemError;
use crate::sparse::SparseError;
use crate::types::Type;
use thiserror::Error;

/// What an inference rule found wrong with its node.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ShapeError {
    /// The shared op semantics reject an axis or a split point.
    #[error(transparent)]
    Sem(#[from] SemError),
    /// An `ortho.FusedElementwise` program that is not well formed.
    #[error(transparent)]
    Fused(#[from] FusedError),
    /// An `ortho.FactorizedLinear` whose attributes, operands or dtypes do not fit.
    #[error(transparent)]
    Factorized(#[from] FactorizedError),
    /// An `ortho.SparseLinear` whose attributes, operands or dtypes do not fit.
    #[error(transparent)]
    Sparse(#[from] SparseError),
    /// Two operand shapes that do not broadcast (`a` and `b` as printed, `x` and `y` the first
    /// pair of dimensions that disagree).
    #[error("shapes {a} and {b} do not broadcast: dimensions {x} and {y} do not broadcast")]
    Broadcast {
        a: String,
        b: String,
        x: i64,
        y: i64,
    },
    /// Two fixed dimensions that must be equal differ.
    #[error("{0} vs {1}")]
    DimConflict(i64, i64),
    /// A fixed size that is not a multiple of the size it is divided by.
    #[error("{0} is not divisible by {1}")]
    NotDivisible(i64, i64),
    /// A declared result type that inference contradicts (reported naming the result).
    #[error("declared {declared} but inferred {inferred}")]
    Declared { declared: Type, inferred: Type },
    /// An operand of a rank the op does not accept.
    #[error("{0}")]
    Rank(String),
    /// Dimensions or sizes that the op needs to agree do not (contractions, concatenation,
    /// splits, element counts of a reshape, head counts).
    #[error("{0}")]
    Mismatch(String),
    /// The contents of a shape-like operand that the op rejects (indices out of range, a zero
    /// step, a negative dimension, a reshape target with two `-1`).
    #[error("{0}")]
    Value(String),
    /// An attribute that is missing or holds a value the op cannot take.
    #[error("{0}")]
    Attribute(String),
    /// Operand or result counts that do not match what the op's attributes describe.
    #[error("{0}")]
    Arity(String),
    /// An operand's element type that the op cannot compute in.
    #[error("{0}")]
    Type(String),
    /// A reference to a tensor or graph that does not exist in the module.
    #[error("{0}")]
    Missing(String),
}

impl ShapeError {
    /// The diagnostic kind this problem is reported under.
    pub fn diag_kind(&self) -> DiagKind {
        match self {
            ShapeError::Attribute(_) | ShapeError::Fused(_) => DiagKind::Attribute,
            ShapeError::Arity(_) => DiagKind::Arity,
            ShapeError::Type(_) => DiagKind::Type,
            ShapeError::Missing(_) => DiagKind::Structure,
            ShapeError::Factorized(e) => match e {
                FactorizedError::Operands(_) => DiagKind::Arity,
                FactorizedError::DType { .. } | FactorizedError::NotFloat(_) => DiagKind::Type,
                FactorizedError::FactorShape { .. }
                | FactorizedError::InputWidth { .. }
                | FactorizedError::ScalarInput => DiagKind::Shape,
                _ => DiagKind::Attribute,
            },
            ShapeError::Sparse(e) => match e {
                SparseError::Operands(_) => DiagKind::Arity,
                SparseError::NotFloat(_)
                | SparseError::ValuesDType { .. }
                | SparseError::IndicesDType(_) => DiagKind::Type,
                SparseError::OperandShape { .. }
                | SparseError::InputWidth { .. }
                | SparseError::ScalarInput => DiagKind::Shape,
                _ => DiagKind::Attribute,
            },
            ShapeError::Sem(_)
            | ShapeError::Broadcast { .. }
            | ShapeError::DimConflict(..)
            | ShapeError::NotDivisible(..)
            | ShapeError::Declared { .. }
            | ShapeError::Rank(_)
            | ShapeError::Mismatch(_)
            | ShapeError::Value(_) => DiagKind::Shape,
        }
    }
}
