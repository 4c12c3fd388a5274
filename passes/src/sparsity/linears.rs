//! Pruning the linears of a transformer block in the module, shared by `prune` and
//! `denoise-prune`: reading and writing a linear's weight as an `out × in` f64 matrix
//! (copy-on-write, cast once), pruning one linear, and pruning a whole block in the
//! true-sequential groups on calibration data. Not a pass.

use super::matrix::{prune_matrix, prune_matrix_diag, PruneMethod, PruneOutcome, PruneSpec};
use crate::calib::LayerCx;
use crate::linalg::weights::{self, Rewrite};
use crate::pass::{PassError, PassErrorKind};
use ortho_ir::analysis::linear::{match_linear, Linear};
use ortho_ir::eval::{Stat, StatKind, StatRequest};
use ortho_ir::{Module, ValueId};
use std::fmt::Write as _;

/// The roles of a block's linears.
pub const ROLES: [&str; 7] = ["q", "k", "v", "o", "gate", "up", "down"];

/// What pruning the blocks did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PruneStats {
    pub blocks: usize,
    pub linears: usize,
    pub zeros: usize,
    pub total: usize,
    /// One line per pruned block: `layer 3: q 50.0 %, k 50.0 %, …`.
    pub per_layer: Vec<String>,
}

/// A block's linears by role, in [`ROLES`] order.
pub fn block_linears(
    attention: Option<&ortho_ir::analysis::transformer::Attention>,
    mlp: Option<&ortho_ir::analysis::transformer::Mlp>,
) -> Vec<(&'static str, Linear)> {
    let mut v = Vec::new();
    if let Some(a) = attention {
        v.extend(a.q.map(|l| ("q", l)));
        v.extend(a.k.map(|l| ("k", l)));
        v.extend(a.v.map(|l| ("v", l)));
        v.push(("o", a.o));
    }
    if let Some(x) = mlp {
        v.extend(x.gate.map(|l| ("gate", l)));
        v.push(("up", x.up));
        v.push(("down", x.down));
    }
    v
}

/// The true-sequential groups: `[k, v, q] → [o] → [up, gate] → [down]`.
const GROUPS: [&[&str]; 4] = [&["k", "v", "q"], &["o"], &["up", "gate"], &["down"]];

/// Prunes the block `lcx` stands at, in the true-sequential groups `[k, v, q] → [o] → [up,
/// gate] → [down]`: each group's input statistic is collected with the weights as the previous
/// groups left them. Returns each pruned linear's outcome, in [`ROLES`] order.
/// Only the linears whose role is in `roles` are pruned.
pub fn prune_block(
    lcx: &mut LayerCx<'_>,
    spec: &PruneSpec,
    roles: &[&str],
) -> Result<Vec<(&'static str, PruneOutcome)>, PassError> {
    let block = lcx.block.clone();
    let mut linears = block_linears(block.attention.as_ref(), block.mlp.as_ref());
    // Pruning rewrites one stored matrix; a structured linear (factorized) has none, so it
    // is left as it is and said so.
    let structured: Vec<String> = linears
        .iter()
        .filter(|(r, l)| roles.contains(r) && l.dense().is_none())
        .map(|(r, l)| format!("{r} ({})", l.kind_name()))
        .collect();
    if !structured.is_empty() {
        lcx.progress(&format!(
            "not pruned, structured: {}",
            structured.join(", ")
        ));
    }
    linears.retain(|(_, l)| l.dense().is_some());
    let mut results: Vec<(&'static str, PruneOutcome)> = Vec::new();
    for group in GROUPS {
        let members: Vec<(&'static str, Linear)> = linears
            .iter()
            .filter(|(r, _)| group.contains(r) && roles.contains(r))
            .copied()
            .collect();
        if members.is_empty() {
            continue;
        }
        // Linears reading the same value (q, k, v; gate, up) share one statistic.
        let mut inputs: Vec<ValueId> = Vec::new();
        for (_, l) in &members {
            if !inputs.contains(&l.input) {
                inputs.push(l.input);
            }
        }
        let t = std::time::Instant::now();
        // Wanda reads only the diagonal: column sums of squares, no d × d Gram.
        let kind = if spec.method == PruneMethod::Wanda {
            StatKind::ColSumSq
        } else {
            StatKind::Gram
        };
        let mut reqs: Vec<StatRequest> = inputs
            .iter()
            .map(|&value| StatRequest { value, kind })
            .collect();
        // The first MLP group runs after the attention linears are final: the same run also
        // keeps the stream between the branches, so later groups and the walk's advance start
        // there instead of recomputing attention.
        let mid = block.mid.filter(|_| {
            !lcx.has_mid() && group.iter().any(|r| matches!(*r, "up" | "gate" | "down"))
        });
        if let Some(v) = mid {
            reqs.push(StatRequest {
                value: v,
                kind: StatKind::Full,
            });
        }
        let mut stats = lcx.collect(&reqs)?.stats;
        if let (Some(v), Some(Stat::Full(tensors))) = (mid, stats.get_mut(inputs.len())) {
            let tensors = std::mem::take(tensors);
            lcx.feed_mid(v, tensors);
        }
        for (role, l) in &members {
            let i = inputs.iter().position(|v| *v == l.input).unwrap_or(0);
            let out = match &stats[i] {
                Stat::ColSumSq { sums, .. } => prune_linear_diag(lcx.module(), l, sums, spec)?,
                Stat::Gram(g) => {
                    let h = g.hessian();
                    prune_linear(lcx.module(), l, Some(&h), spec)?
                }
                _ => {
                    return Err(PassError::new("the evaluator returned no statistics")
                        .with_kind(PassErrorKind::Evaluation))
                }
            };
            results.push((role, out));
        }
        lcx.progress(&format!(
            "{} pruned ({:.1} s)",
            members
                .iter()
                .map(|(r, _)| *r)
                .collect::<Vec<_>>()
                .join(","),
            t.elapsed().as_secs_f64()
        ));
    }
    results.sort_by_key(|(r, _)| ROLES.iter().position(|x| x == r));
    Ok(results)
}

/// Adds one pruned linear to the totals and to its block's line.
pub fn record(stats: &mut PruneStats, line: &mut String, role: &str, out: PruneOutcome) {
    stats.linears += 1;
    stats.zeros += out.zeros;
    stats.total += out.total;
    let _ = write!(line, " {role} {:.1} %", 100.0 * out.sparsity());
}

/// The weight of `l` as `rows × cols` f64 (one row per output feature).
pub fn linear_weight(m: &Module, l: &Linear) -> Result<(Vec<f64>, usize, usize), PassError> {
    let t = m.tensor(l.weight.tensor);
    let v = weights::decode(t).map_err(|e| {
        PassError::at_main(m, l.weight.konst, e.to_string()).with_kind(PassErrorKind::Weights)
    })?;
    let (rows, cols) = (l.out_features as usize, l.in_features as usize);
    if v.len() != rows * cols {
        return Err(
            PassError::at_main(m, l.node, "weight size does not match the layer")
                .with_kind(PassErrorKind::Weights),
        );
    }
    if l.weight.in_axis == 1 {
        // Stored [out, in]: already rows × cols.
        return Ok((v, rows, cols));
    }
    // Stored [in, out]: transpose.
    let mut w = vec![0.0; rows * cols];
    for i in 0..cols {
        for o in 0..rows {
            w[o * cols + i] = v[i * rows + o];
        }
    }
    Ok((w, rows, cols))
}

/// Writes `w` (`rows × cols`, as [`linear_weight`] returns it) as the weight of `l`,
/// copy-on-write, cast once to the storage dtype.
pub fn set_linear_weight(m: &mut Module, l: &Linear, w: &[f64]) -> Result<(), PassError> {
    let (rows, cols) = (l.out_features as usize, l.in_features as usize);
    let stored: Vec<f64> = if l.weight.in_axis == 1 {
        w.to_vec()
    } else {
        let mut s = vec![0.0; rows * cols];
        for o in 0..rows {
            for i in 0..cols {
                s[i * rows + o] = w[o * cols + i];
            }
        }
        s
    };
    let rewrite = Rewrite {
        consumer: l.node,
        slot: l.weight_slot,
        konst: l.weight.konst,
        transpose: l.weight.transpose,
        key: 0,
    };
    let gid = m.main;
    weights::apply(m, gid, &[rewrite], "pruned", &|_, old| {
        weights::encode_like(old, &stored)
    })?;
    Ok(())
}

/// Prunes one linear with magnitude or Wanda from the input's `Σ x²` per column.
pub fn prune_linear_diag(
    m: &mut Module,
    l: &Linear,
    diag: &[f64],
    spec: &PruneSpec,
) -> Result<PruneOutcome, PassError> {
    let l = match_linear(m, m.main_graph(), l.node).unwrap_or(*l);
    let (mut w, rows, cols) = linear_weight(m, &l)?;
    let out = prune_matrix_diag(&mut w, rows, cols, diag, spec).map_err(|e| pruning(m, &l, e))?;
    set_linear_weight(m, &l, &w)?;
    Ok(out)
}

/// Prunes one linear of the main graph in place (reads its weight, prunes, writes it back).
/// `h` is the `in × in` input Hessian (required by Wanda and SparseGPT).
pub fn prune_linear(
    m: &mut Module,
    l: &Linear,
    h: Option<&[f64]>,
    spec: &PruneSpec,
) -> Result<PruneOutcome, PassError> {
    // The record may predate a copy-on-write of an earlier rewrite: match it again.
    let l = match_linear(m, m.main_graph(), l.node).unwrap_or(*l);
    let (mut w, rows, cols) = linear_weight(m, &l)?;
    let out = prune_matrix(&mut w, rows, cols, h, spec).map_err(|e| pruning(m, &l, e))?;
    set_linear_weight(m, &l, &w)?;
    Ok(out)
}

/// A failure of the maths on `l`'s weight, as an error at its node.
fn pruning(m: &Module, l: &Linear, e: super::matrix::PruneError) -> PassError {
    use super::matrix::PruneError as E;
    let kind = match e {
        E::NotPositiveDefinite | E::InverseNotPositiveDefinite => PassErrorKind::Numeric,
        E::Width { .. } | E::Sparsity(_) | E::BadPattern(_) | E::Block | E::Damping(_) => {
            PassErrorKind::InvalidOptions
        }
        _ => PassErrorKind::Weights,
    };
    PassError::at_main(m, l.node, e.to_string()).with_kind(kind)
}
