//! `poet-merge`: folds every POET weight subgraph (`poet-reparam`'s, found by the record in its
//! last node's `doc`) back into one dense constant `R·W0·P`, computed in f64 from the subgraph's
//! tensors with the same truncated Cayley–Neumann map the graph evaluates, cast once to the
//! weight's dtype.
//!
//! Needs: the subgraphs' named tensors (`<weight>.poet_base`, `.poet_rows_perm`,
//! `.poet_cols_perm`, `.poet_skew_rows`, `.poet_skew_cols`) as constants or as graph inputs with
//! a default (after training wrote its parameters back). Leaves: the graph `poet-reparam` was
//! given — each weight a constant under its own name, read by the same node — with the trained
//! weights; the subgraphs and their tensors removed. A bias is untouched and correct: the
//! subgraph computes the weight alone, the bias is added after the product in both forms.
//! Notes: per weight the orthogonality error `‖RᵀR − I‖_F` of its blocks (the deviation the
//! merge bakes into the spectrum).

use super::{PoetRecord, PoetState};
use crate::pass::{PassContext, PassError, PassErrorKind, PassResult};
use ortho_ir::{Dim, Module, NodeId, Op, Output, TensorData, Type, ValueId};
use std::collections::HashMap;

crate::declare_pass! {
    name: "poet-merge",
    summary: "Folds every POET subgraph back into one dense weight R·W0·P (f64, cast once): the plain model again.",
    run: run_pass,
}

/// What [`poet_merge`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoetMergeStats {
    pub weights: usize,
    /// The largest `‖RᵀR − I‖_F` over every block merged.
    pub max_orthogonality_error: f64,
    pub lines: Vec<String>,
}

/// The last node of every POET subgraph in the main graph and its record, in graph order.
pub fn find_poet(m: &Module) -> Vec<(NodeId, PoetRecord)> {
    let g = m.main_graph();
    let Ok(order) = g.toposort() else {
        return Vec::new();
    };
    order
        .into_iter()
        .filter_map(|n| PoetRecord::parse(&g.node(n).doc).map(|r| (n, r)))
        .collect()
}

/// The values of a named constant or defaulted graph input, as f64, with its dims.
fn read_named(
    m: &Module,
    names: &HashMap<String, ValueId>,
    at: NodeId,
    name: &str,
) -> Result<(Vec<f64>, Vec<i64>), PassError> {
    let missing = || {
        PassError::at_main(m, at, format!("POET tensor '{name}' is missing"))
            .with_kind(PassErrorKind::Unsupported)
    };
    let v = names.get(name).ok_or_else(missing)?;
    let t = match m.main_graph().node(v.node).op {
        Op::Const(t) | Op::Input { default: Some(t) } => m.tensor(t),
        _ => return Err(missing()),
    };
    // Floats and the i64 permutations alike (indices are exact in f64).
    let vals = t.to_f64_vec().ok_or_else(|| {
        PassError::at_main(
            m,
            at,
            format!("POET tensor '{name}' has element type {}", t.dtype.name()),
        )
        .with_kind(PassErrorKind::Weights)
    })?;
    Ok((vals, t.dims.clone()))
}

/// The host state of the POET weight whose subgraph ends at `at`.
pub fn read_state(m: &Module, at: NodeId, rec: &PoetRecord) -> Result<PoetState, PassError> {
    read_state_named(m, &m.main_graph().value_names(), at, rec)
}

/// [`read_state`] with the graph's value names already collected (a merge reads hundreds of
/// weights from one unchanged graph; the names map is built once).
pub fn read_state_named(
    m: &Module,
    names: &HashMap<String, ValueId>,
    at: NodeId,
    rec: &PoetRecord,
) -> Result<PoetState, PassError> {
    let (base, dims) = read_named(m, names, at, &rec.base_name())?;
    let (rp, _) = read_named(m, names, at, &rec.rows_perm_name())?;
    let (cp, _) = read_named(m, names, at, &rec.cols_perm_name())?;
    let (skew_rows, _) = read_named(m, names, at, &rec.skew_rows_name())?;
    let (skew_cols, _) = read_named(m, names, at, &rec.skew_cols_name())?;
    let bad = |why: &str| {
        PassError::at_main(m, at, format!("POET weight '{}': {why}", rec.stem))
            .with_kind(PassErrorKind::Weights)
    };
    if dims.len() != 2 {
        return Err(bad("the base is not a matrix"));
    }
    let (rows, cols) = (dims[0] as usize, dims[1] as usize);
    let perm = |p: Vec<f64>, n: usize| -> Option<Vec<usize>> {
        let p: Vec<usize> = p.into_iter().map(|x| x as usize).collect();
        let mut seen = vec![false; n];
        for &i in &p {
            if i >= n || std::mem::replace(&mut seen[i], true) {
                return None;
            }
        }
        (p.len() == n).then_some(p)
    };
    let rows_perm = perm(rp, rows).ok_or_else(|| bad("the row permutation is not one"))?;
    let cols_perm = perm(cp, cols).ok_or_else(|| bad("the column permutation is not one"))?;
    let t = super::cayley::tri_count(rec.block);
    let blocks_fit = |len: usize, dim: usize| t > 0 && len % t == 0 && (len / t) * rec.block <= dim;
    if !blocks_fit(skew_rows.len(), rows) || !blocks_fit(skew_cols.len(), cols) {
        return Err(bad("the skew parameters do not match the block size"));
    }
    Ok(PoetState {
        rows,
        cols,
        block: rec.block,
        terms: rec.terms,
        base,
        rows_perm,
        cols_perm,
        skew_rows,
        skew_cols,
    })
}

/// Removes `start` and every ancestor that is left without a use (the subgraph reads only its
/// own tensors, so this is exactly the subgraph). Bounded by the graph's node count.
pub(crate) fn remove_dead_chain(m: &mut Module, start: NodeId) {
    let g = m.main_graph_mut();
    let mut work = vec![start];
    let mut budget = g.node_count() + 1;
    while let Some(n) = work.pop() {
        budget = budget.saturating_sub(1);
        if budget == 0 || !g.contains(n) {
            continue;
        }
        let unused = g
            .results(n)
            .iter()
            .all(|&v| g.users(v).is_empty() && !g.outputs.iter().any(|o| o.value == v));
        if !unused {
            continue;
        }
        let operands: Vec<NodeId> = g.node(n).inputs().map(|v| v.node).collect();
        g.remove_node(n);
        work.extend(operands);
    }
}

/// One merged weight, computed before the module changes.
struct Merged {
    w: Vec<f32>,
    rows: usize,
    cols: usize,
    err: f64,
}

/// Merges every POET weight of `m` (see the module docs).
pub fn poet_merge(m: &mut Module) -> Result<PoetMergeStats, PassError> {
    use rayon::prelude::*;
    let found = find_poet(m);
    // Every weight is read and merged before the module changes. Weights run in parallel, each
    // single-threaded: one holds its f64 base only while it is merged, so the peak is the
    // merged f32 weights, not the whole model in f64.
    let names = m.main_graph().value_names();
    let module: &Module = m;
    let merged: Vec<Merged> = found
        .par_iter()
        .map(|(n, rec)| {
            let state = read_state_named(module, &names, *n, rec)?;
            let (w, err) = state.materialize_f32_with_error();
            Ok(Merged {
                w,
                rows: state.rows,
                cols: state.cols,
                err,
            })
        })
        .collect::<Result<_, PassError>>()?;
    let mut stats = PoetMergeStats::default();
    for ((n, rec), done) in found.iter().zip(merged) {
        let out = ValueId {
            node: *n,
            output: 0,
        };
        let name = m.main_graph().value_name(out).to_string();
        let (rows, cols, err) = (done.rows, done.cols, done.err);
        let t = m.add_tensor(TensorData::from_f32(
            vec![rows as i64, cols as i64],
            &done.w,
        ));
        let ty = Type::tensor(
            ortho_ir::DType::F32,
            vec![Dim::Fixed(rows as i64), Dim::Fixed(cols as i64)],
        );
        let g = m.main_graph_mut();
        g.node_mut(*n).outputs[0].name = format!("{name}.merged_away");
        let k = g.add_node(Op::Const(t), Vec::new(), vec![Output::new(name, ty)]);
        g.replace_all_uses(out, ValueId { node: k, output: 0 });
        remove_dead_chain(m, *n);
        stats.weights += 1;
        stats.max_orthogonality_error = stats.max_orthogonality_error.max(err);
        stats.lines.push(format!(
            "{} ({rows}x{cols}, {} b={}): max ‖RᵀR − I‖_F {err:.2e}",
            rec.stem,
            rec.kind.word(),
            rec.block
        ));
    }
    if stats.weights > 0 {
        ortho_ir::shape::infer_shapes(m);
    }
    Ok(stats)
}

fn run_pass(m: &mut Module, cx: &mut PassContext) -> Result<PassResult, PassError> {
    let stats = poet_merge(m)?;
    for line in &stats.lines {
        cx.note(line.clone());
    }
    cx.note(format!(
        "{} POET weights merged; max ‖RᵀR − I‖_F {:.2e}",
        stats.weights, stats.max_orthogonality_error
    ));
    cx.stat("weights", stats.weights as u64);
    Ok(PassResult::changed(stats.weights > 0))
}
