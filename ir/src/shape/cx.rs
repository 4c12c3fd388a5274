//! The view an op's inference rule has of its node: operand types, known shape values, the
//! declared result types. Every accessor tolerates missing operands and unknown types, so a rule
//! written with `?` on these accessors degrades to "unknown" instead of panicking on a malformed
//! model.

use super::ShapeError;
use crate::graph::{Node, ValueId};
use crate::module::Module;
use crate::types::{DType, Dim, TensorType, Type};
use std::collections::HashMap;

/// What an inference rule returns: one type per result (missing trailing entries mean
/// unknown), or why the node is malformed.
pub(crate) type Infer = Result<Vec<Type>, ShapeError>;

static UNKNOWN: Type = Type::Unknown;

/// A node under inference.
pub(crate) struct NodeCx<'a> {
    pub m: &'a Module,
    pub node: &'a Node,
    pub types: &'a HashMap<ValueId, Type>,
    pub values: &'a HashMap<ValueId, Vec<Dim>>,
}

impl<'a> NodeCx<'a> {
    /// Number of operand slots (present or omitted).
    pub fn n_in(&self) -> usize {
        self.node.operands().len()
    }

    pub fn n_out(&self) -> usize {
        self.node.outputs.len()
    }

    /// Whether operand `slot` is present.
    pub fn has(&self, slot: usize) -> bool {
        self.node.operand(slot).is_some()
    }

    /// The type of operand `slot`; unknown when absent.
    pub fn ty(&self, slot: usize) -> &'a Type {
        self.node
            .operand(slot)
            .and_then(|v| self.types.get(&v))
            .unwrap_or(&UNKNOWN)
    }

    pub fn tensor(&self, slot: usize) -> Option<&'a TensorType> {
        self.ty(slot).as_tensor()
    }

    /// The element type of operand `slot`, `Undefined` when not known.
    pub fn dtype(&self, slot: usize) -> DType {
        self.tensor(slot).map_or(DType::Undefined, |t| t.dtype)
    }

    /// The shape of operand `slot`, when its rank is known.
    pub fn shape(&self, slot: usize) -> Option<&'a [Dim]> {
        self.tensor(slot).and_then(|t| t.shape.as_deref())
    }

    /// The known contents of a small integer operand (a shape tensor), as dimensions.
    pub fn value(&self, slot: usize) -> Option<&'a [Dim]> {
        self.node
            .operand(slot)
            .and_then(|v| self.values.get(&v))
            .map(Vec::as_slice)
    }

    /// The known contents of operand `slot` when every element is a number.
    pub fn ints(&self, slot: usize) -> Option<Vec<i64>> {
        self.value(slot)?.iter().map(Dim::fixed).collect()
    }
}
