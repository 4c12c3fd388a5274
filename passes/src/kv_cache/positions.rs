//! Position-dependent tables with a cache: the RoPE tables, the causal mask and position ids
//! are computed in the full graph from the sequence length (`Shape(input_ids)`). With a cache
//! the new tokens sit at positions `P … P+S-1` (`P` = the cached length) and attend to all
//! `P+S` keys. Each such table is computed again as the full graph would for `P+S` tokens
//! (its nodes copied, `Shape(input_ids)` replaced by `Shape(input_ids) + [0, P]`), then its
//! rows for the new tokens are sliced off: along the second-to-last axis for a table combined
//! elementwise with the stream (`cos`/`sin` `[…, pos, dim]`, the mask `[…, query, key]`, whose
//! key axis then covers every cached position), along the last axis for position ids
//! (`RotaryEmbedding`'s), and not at all for tables indexed by position (`RotaryEmbedding`'s
//! cos/sin caches). Shape operands (of `Reshape`, `Expand`, …) keep describing the new tokens
//! and stay as they are. Any other use of the sequence length is refused, naming the node,
//! because how it should change with a cache is unknown.

use super::emit::Emit;
use crate::pass::{PassError, PassErrorKind};
use ortho_ir::{Graph, NodeId, Op, Type, ValueId};
use std::collections::{HashMap, HashSet};

/// How a length-dependent value entering the token computation changes with a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// Rows for the new tokens along this axis (counted from the end).
    Rows(i64),
    /// The whole table for `P+S` positions.
    Whole,
    /// Unchanged: it describes the new tokens.
    Keep,
}

/// Which nodes depend on the token data, and which on the sequence length only.
struct Deps {
    data: HashSet<NodeId>,
    length: HashSet<NodeId>,
}

fn deps(g: &Graph, order: &[NodeId], ids: ValueId) -> Deps {
    let mut data: HashSet<NodeId> = HashSet::from([ids.node]);
    let mut length: HashSet<NodeId> = HashSet::new();
    for &n in order {
        let node = g.node(n);
        if let Op::Shape(_) = node.op {
            // A shape does not depend on its operand's data, only on its (length-dependent) size.
            if node
                .inputs()
                .any(|v| data.contains(&v.node) || length.contains(&v.node))
            {
                length.insert(n);
            }
            continue;
        }
        if node.inputs().any(|v| data.contains(&v.node)) {
            data.insert(n);
        } else if node.inputs().any(|v| length.contains(&v.node)) {
            length.insert(n);
        }
    }
    Deps { data, length }
}

/// How the value in `slot` of `user` (a node on the token data) changes, or why it is refused.
fn use_of(op: &Op, slot: usize) -> Option<Use> {
    match (op, slot) {
        (Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Where | Op::Max | Op::Min, _) => {
            Some(Use::Rows(-2))
        }
        (Op::RotaryEmbedding(_), 3) => Some(Use::Rows(-1)),
        (Op::RotaryEmbedding(_), 1 | 2) => Some(Use::Whole),
        (
            Op::Reshape(_)
            | Op::Expand
            | Op::Tile
            | Op::Slice
            | Op::Unsqueeze
            | Op::Squeeze
            | Op::Split(_),
            s,
        ) if s >= 1 => Some(Use::Keep),
        _ => None,
    }
}

/// What [`rewrite`] changed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tables {
    /// Length-dependent values recomputed for the whole sequence.
    pub tables: usize,
    /// Nodes copied to do so.
    pub copied: usize,
}

/// Rewires every length-dependent value the token computation reads (see the module docs).
/// `past_len` is the cached length as a 1-D i64 tensor of one element.
pub fn rewrite(em: &mut Emit<'_>, ids: ValueId, past_len: ValueId) -> Result<Tables, PassError> {
    let g = em.m.main_graph();
    let order = g
        .toposort()
        .map_err(|c| PassError::at_main(em.m, c.node, "the graph has a cycle"))?;
    let d = deps(g, &order, ids);
    // 1. Collect: each (user, slot) reading a length-only value, and how it changes.
    let mut entries: Vec<(NodeId, usize, ValueId, Use)> = Vec::new();
    for &n in order.iter().filter(|n| d.data.contains(n)) {
        let node = g.node(n);
        for (slot, v) in node.operands().iter().enumerate() {
            let Some(v) = *v else { continue };
            if !d.length.contains(&v.node) || d.data.contains(&v.node) {
                continue;
            }
            let u = use_of(&node.op, slot).ok_or_else(|| {
                PassError::at_main(
                    em.m,
                    n,
                    format!(
                        "operand {slot} depends on the sequence length in a way kv-cache does not know how to extend to cached positions"
                    ),
                )
                .with_kind(PassErrorKind::Unsupported)
            })?;
            if u != Use::Keep {
                entries.push((n, slot, v, u));
            }
        }
    }
    // The nodes each table needs copied: its length-dependent cone, in graph order.
    let needed: Vec<ValueId> = entries.iter().map(|e| e.2).collect();
    let mut cone: HashSet<NodeId> = HashSet::new();
    let mut stack: Vec<NodeId> = needed.iter().map(|v| v.node).collect();
    while let Some(n) = stack.pop() {
        if !d.length.contains(&n) || !cone.insert(n) {
            continue;
        }
        let node = g.node(n);
        if let Op::Shape(_) = node.op {
            if node.operand(0) != Some(ids) {
                return Err(PassError::at_main(
                    em.m,
                    n,
                    "a position table depends on the shape of a value other than the token ids; kv-cache cannot recompute it for cached positions",
                ));
            }
            continue;
        }
        stack.extend(node.inputs().map(|v| v.node));
    }
    let cone_order: Vec<NodeId> = order.iter().copied().filter(|n| cone.contains(n)).collect();
    // 2. Mutate: the full-length copies, then the slices, then the rewiring.
    let zero = em.ints(&[0], "zero");
    let shift = em.concat(&[zero, past_len], 0, "shape_shift", Type::Unknown);
    let mut copy: HashMap<ValueId, ValueId> = HashMap::new();
    for &n in &cone_order {
        let node = em.m.main_graph().node(n).clone();
        let tag = node
            .outputs
            .first()
            .map(|o| o.name.clone())
            .unwrap_or_default();
        if let Op::Shape(a) = &node.op {
            // Shape(ids) for P+S tokens; a start/end window is applied to the shifted shape.
            let full = em.shape(ids, "ids_shape");
            let mut total = em.one(Op::Add, &[full, shift], "total_shape", Type::Unknown);
            if a.start.unwrap_or(0) != 0 || a.end.is_some() {
                let s = em.ints(&[a.start.unwrap_or(0)], "shape_start");
                let e = em.ints(&[a.end.unwrap_or(i64::MAX)], "shape_end");
                let ax = em.ints(&[0], "shape_axis");
                total = em.slice(total, s, e, ax, "total_shape_window");
            }
            copy.insert(ValueId { node: n, output: 0 }, total);
            continue;
        }
        let operands: Vec<Option<ValueId>> = node
            .operands()
            .iter()
            .map(|o| o.map(|v| copy.get(&v).copied().unwrap_or(v)))
            .collect();
        let outs = em.copy_of(
            node.op.clone(),
            operands,
            node.outputs.len(),
            &format!("{tag}_full"),
        );
        for (i, v) in outs.into_iter().enumerate() {
            copy.insert(
                ValueId {
                    node: n,
                    output: i as u32,
                },
                v,
            );
        }
    }
    let mut sliced: HashMap<(ValueId, i64), ValueId> = HashMap::new();
    let big = em.ints(&[i64::MAX], "to_end");
    for &(user, slot, v, u) in &entries {
        let full = copy.get(&v).copied().ok_or_else(|| {
            PassError::at_main(em.m, v.node, "internal: a position table was not copied")
        })?;
        let new = match u {
            Use::Whole | Use::Keep => full,
            Use::Rows(axis) => match sliced.get(&(v, axis)) {
                Some(&s) => s,
                None => {
                    let ax = em.ints(&[axis], "rows_axis");
                    let tag = format!("{}_rows", em.m.main_graph().value_name(v));
                    let s = em.slice(full, past_len, big, ax, &tag);
                    sliced.insert((v, axis), s);
                    s
                }
            },
        };
        em.m.main_graph_mut().set_operand(user, slot, Some(new));
    }
    Ok(Tables {
        tables: needed.iter().collect::<HashSet<_>>().len(),
        copied: cone_order.len(),
    })
}
