//! Where a decomposed attention's keys and values are cut for the cache.
//!
//! The structure analysis finds each attention branch and its q/k/v/o linears, but not the
//! core products it classified them by (`ir/src/analysis` does not expose them), so
//! this module finds them again from the branch's nodes: the score product
//! `MatMul(q, kᵀ)` behind the `Softmax` and the output product `MatMul(p, v)` after it. The
//! right operand of the score product runs over the key positions on its last axis, that of
//! the output product on its second-to-last axis, whatever layout the exporter chose; that is
//! what makes the cut exact without looking at names. From there the cut moves back through
//! pure layout ops (`Transpose`, `Unsqueeze`) that only this path reads, so the cached tensor
//! is the keys after RoPE and the values before any broadcast towards the query heads.

use crate::pass::PassError;
use ortho_ir::analysis::match_linear;
use ortho_ir::analysis::util::{const_data, rank_of};
use ortho_ir::{Graph, Module, NodeId, Op, ValueId};
use std::collections::{HashSet, VecDeque};

/// A value to cache and the axis of it that runs over sequence positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePoint {
    pub value: ValueId,
    pub axis: usize,
}

/// The cache points of one attention branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionCut {
    pub key: CachePoint,
    pub value: CachePoint,
    /// The score product, where the mask must be found.
    pub scores: NodeId,
    pub softmax: NodeId,
}

/// Whether `n` is an attention core product: a `MatMul` of the branch that is no linear layer.
fn is_core(m: &Module, g: &Graph, set: &HashSet<NodeId>, n: NodeId) -> bool {
    set.contains(&n) && matches!(g.node(n).op, Op::MatMul) && match_linear(m, g, n).is_none()
}

/// The rank of `v` as inferred, or an error naming the node that computes it.
fn rank(m: &Module, g: &Graph, v: ValueId) -> Result<usize, PassError> {
    rank_of(g, v).ok_or_else(|| {
        PassError::at_main(
            m,
            v.node,
            "kv-cache needs the rank of the attention operands; shape inference found none",
        )
    })
}

/// Finds the cut of the attention branch with nodes `nodes` (in graph order).
pub fn cut(
    m: &Module,
    g: &Graph,
    nodes: &[NodeId],
    writer: NodeId,
) -> Result<AttentionCut, PassError> {
    let set: HashSet<NodeId> = nodes.iter().copied().collect();
    let softmax = nodes
        .iter()
        .copied()
        .find(|n| matches!(g.node(*n).op, Op::Softmax(_)))
        .ok_or_else(|| {
            PassError::at_main(m, writer, "attention branch without a Softmax: kv-cache handles the decomposed MatMul → Softmax → MatMul form")
        })?;
    // Backwards from the softmax input: the first core product is the score product.
    let mut queue: VecDeque<NodeId> = g.node(softmax).inputs().map(|v| v.node).collect();
    let mut seen = HashSet::new();
    let mut scores = None;
    while let Some(n) = queue.pop_front() {
        if !set.contains(&n) || !seen.insert(n) {
            continue;
        }
        if is_core(m, g, &set, n) {
            scores = Some(n);
            break;
        }
        queue.extend(g.node(n).inputs().map(|v| v.node));
    }
    let scores = scores.ok_or_else(|| {
        PassError::at_main(
            m,
            softmax,
            "no score product MatMul(q, kᵀ) found behind this Softmax",
        )
    })?;
    // Forwards from the softmax: the first core product that reads the probabilities on its left.
    let mut queue: VecDeque<NodeId> = VecDeque::from([softmax]);
    let mut seen = HashSet::new();
    let mut output = None;
    while let Some(n) = queue.pop_front() {
        if !seen.insert(n) {
            continue;
        }
        let users = g.users(ValueId { node: n, output: 0 });
        if let Some(&(u, _)) = users
            .iter()
            .find(|&&(u, slot)| slot == 0 && is_core(m, g, &set, u))
        {
            output = Some(u);
            break;
        }
        queue.extend(users.iter().map(|&(u, _)| u).filter(|u| set.contains(u)));
    }
    let output = output.ok_or_else(|| {
        PassError::at_main(
            m,
            softmax,
            "no output product MatMul(p, v) found after this Softmax",
        )
    })?;
    let k = g
        .node(scores)
        .operand(1)
        .ok_or_else(|| PassError::at_main(m, scores, "score product without a key operand"))?;
    let v = g
        .node(output)
        .operand(1)
        .ok_or_else(|| PassError::at_main(m, output, "output product without a value operand"))?;
    let (kr, vr) = (rank(m, g, k)?, rank(m, g, v)?);
    if kr < 2 || vr < 2 {
        return Err(PassError::at_main(
            m,
            scores,
            "attention operands of rank < 2",
        ));
    }
    Ok(AttentionCut {
        key: walk_back(
            m,
            g,
            CachePoint {
                value: k,
                axis: kr - 1,
            },
        ),
        value: walk_back(
            m,
            g,
            CachePoint {
                value: v,
                axis: vr - 2,
            },
        ),
        scores,
        softmax,
    })
}

/// Moves a cache point back through `Transpose` and `Unsqueeze` nodes whose input only they
/// read, keeping track of the sequence axis. Bounded by the graph's size: each step moves to
/// an earlier node.
fn walk_back(m: &Module, g: &Graph, mut p: CachePoint) -> CachePoint {
    for _ in 0..g.node_ids().len() {
        let node = g.node(p.value.node);
        let Some(input) = node.operand(0) else { break };
        let sole = g.users(input).len() == 1 && !g.outputs.iter().any(|o| o.value == input);
        if !sole {
            break;
        }
        let axis = match &node.op {
            Op::Transpose(t) => match t.perm.as_ref().and_then(|perm| perm.get(p.axis)) {
                Some(&a) if a >= 0 => a as usize,
                _ => break,
            },
            Op::Unsqueeze => {
                let Some(axes) = node
                    .operand(1)
                    .and_then(|a| const_data(m, g, a))
                    .and_then(|d| d.to_i64_vec())
                else {
                    break;
                };
                let Some(out_rank) = rank_of(g, p.value) else {
                    break;
                };
                let axes: Vec<usize> = axes
                    .iter()
                    .map(|&a| if a < 0 { a + out_rank as i64 } else { a } as usize)
                    .collect();
                if axes.contains(&p.axis) {
                    break;
                }
                p.axis - axes.iter().filter(|&&a| a < p.axis).count()
            }
            _ => break,
        };
        p = CachePoint { value: input, axis };
    }
    p
}
