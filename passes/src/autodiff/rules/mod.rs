//! The gradient rules: one per op, grouped by op family. Each family file exports `supports`
//! (whether the op has a rule for an operand slot; read by the up-front check) and `apply` (emit
//! the operand gradients from the result gradients), both `None` for ops of other families.
//!
//! A rule receives the node, the gradient of each result (`None` where the loss does not depend
//! on that result) and which operands need a gradient; it returns one `Option` per operand.
//! Broadcast operands are reduced back to their shape with [`Builder::sum_to`], the one place
//! that reads broadcasting backwards.
//!
//! Structured ops other issues add (factorized linears, …) get their rule in `linear.rs`, next
//! to MatMul and Gemm, as a new match arm of its `supports` and `apply`.

mod attention;
mod elementwise;
mod linear;
mod movement;
mod norm;
mod reduce;

use super::builder::{BResult, Builder};
use ortho_ir::{Node, NodeId, Op, ValueId};

/// Whether `op` has a gradient rule for operand `slot`.
pub fn supports(op: &Op, slot: usize) -> bool {
    elementwise::supports(op, slot)
        .or_else(|| linear::supports(op, slot))
        .or_else(|| movement::supports(op, slot))
        .or_else(|| reduce::supports(op, slot))
        .or_else(|| norm::supports(op, slot))
        .or_else(|| attention::supports(op, slot))
        .unwrap_or(false)
}

/// What a rule sees of the node it differentiates.
pub struct Site {
    pub op: Op,
    /// Operands in slot order.
    pub x: Vec<Option<ValueId>>,
    /// Results.
    pub y: Vec<ValueId>,
    /// Result gradients, one per result.
    pub dy: Vec<Option<ValueId>>,
    /// Which operands need a gradient.
    pub want: Vec<bool>,
}

impl Site {
    /// Operand `slot` (present: the up-front check only admits nodes whose active operands
    /// exist).
    pub fn x(&self, b: &Builder<'_>, slot: usize) -> BResult<ValueId> {
        self.x
            .get(slot)
            .copied()
            .flatten()
            .ok_or_else(|| super::AutodiffError::Unsupported {
                node: b.site_name(),
                why: format!("operand {slot} is missing"),
            })
    }

    /// The gradient of the single result.
    pub fn dy0(&self, b: &Builder<'_>) -> BResult<ValueId> {
        self.dy
            .first()
            .copied()
            .flatten()
            .ok_or_else(|| super::AutodiffError::Unsupported {
                node: b.site_name(),
                why: "the result has no gradient".into(),
            })
    }

    pub fn wants(&self, slot: usize) -> bool {
        self.want.get(slot).copied().unwrap_or(false)
    }
}

/// An error naming the node being differentiated.
pub fn unsupported(b: &Builder<'_>, why: impl Into<String>) -> super::AutodiffError {
    super::AutodiffError::Unsupported {
        node: b.site_name(),
        why: why.into(),
    }
}

/// Emits the operand gradients of node `n`.
pub fn apply(
    b: &mut Builder<'_>,
    n: NodeId,
    dy: &[Option<ValueId>],
    want: &[bool],
) -> BResult<Vec<Option<ValueId>>> {
    let site = {
        let g = b.m.main_graph();
        let node: &Node = g.node(n);
        Site {
            op: node.op.clone(),
            x: node.operands().to_vec(),
            y: g.results(n),
            dy: dy.to_vec(),
            want: want.to_vec(),
        }
    };
    if let Some(r) = elementwise::apply(b, &site) {
        return r;
    }
    if let Some(r) = linear::apply(b, &site) {
        return r;
    }
    if let Some(r) = movement::apply(b, &site) {
        return r;
    }
    if let Some(r) = reduce::apply(b, &site) {
        return r;
    }
    if let Some(r) = norm::apply(b, &site) {
        return r;
    }
    if let Some(r) = attention::apply(b, &site) {
        return r;
    }
    Err(unsupported(b, format!("no rule for {}", site.op.name())))
}
