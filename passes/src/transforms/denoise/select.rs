//! Deciding whether a layer's DenoiseRotator rotation helps the pruning that follows it.
//!
//! The entropy objective is a proxy: a rotation can lower it and still make the pruned layer
//! worse (moving off a model's own basis spreads its outlier features over every column, see
//! the magnitude rows of fixtures/README). So before a rotation is kept, the layer is pruned
//! both ways on its dense input statistics and the two reconstruction errors are compared:
//! for each of the seven linears, `‖ΔW X‖² / ‖W X‖² = tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)` with `ΔW` the
//! change pruning made (SparseGPT's own objective; for magnitude and Wanda the removed weights),
//! summed over the linears. Rotations preserve `tr(W H Wᵀ)` (the input side turns `H` into
//! `QᵀHQ` as `W` into `WQ`; the output side is an isometry), so the two sums measure the same
//! thing in two bases. Not a pass.

use super::fold::{block_diag, mul64 as mm, LayerParts};
use crate::pass::PassError;
use crate::transforms::prune::linear_weight;
use crate::transforms::prune_math::{prune_matrix, PruneSpec};
use faer::{Mat, MatRef};
use ortho_ir::analysis::Linear;
use ortho_ir::Module;

/// The input Hessians `H = (2/N) Σ xᵀx` of one layer's linears, f64, row-major.
#[derive(Debug, Clone)]
pub struct LayerHessians {
    /// q, k, v input (`d × d`).
    pub attn: Vec<f64>,
    /// o input (`heads·head_dim` square).
    pub o: Vec<f64>,
    /// gate, up input (`d × d`).
    pub mlp: Vec<f64>,
    /// down input (intermediate width square).
    pub down: Vec<f64>,
}

/// A layer's rotation: `Q1` on the residual stream and one `R2_j` per KV head.
pub struct LayerRotation<'a> {
    pub q1: &'a Mat<f64>,
    pub r2: &'a [Mat<f64>],
}

fn square(h: &[f64]) -> Mat<f64> {
    let n = (h.len() as f64).sqrt() as usize;
    MatRef::from_row_major_slice(h, n, n).to_owned()
}

/// `tr(A H Aᵀ)` for `A` rows × n and `H` n × n.
fn quad(a: MatRef<'_, f64>, h: MatRef<'_, f64>) -> f64 {
    let ah = mm(a, h);
    let mut s = 0.0;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            s += ah[(i, j)] * a[(i, j)];
        }
    }
    s
}

/// One linear's relative pruning error: `W` (out × in) and its input Hessian `H`.
fn relative_error(w: Mat<f64>, h: Mat<f64>, spec: &PruneSpec) -> Result<f64, String> {
    let (rows, cols) = (w.nrows(), w.ncols());
    let mut flat = Vec::with_capacity(rows * cols);
    for i in 0..rows {
        for j in 0..cols {
            flat.push(w[(i, j)]);
        }
    }
    let mut hflat = Vec::with_capacity(cols * cols);
    for i in 0..cols {
        for j in 0..cols {
            hflat.push(h[(i, j)]);
        }
    }
    prune_matrix(&mut flat, rows, cols, Some(&hflat), spec)?;
    let delta = Mat::<f64>::from_fn(rows, cols, |i, j| w[(i, j)] - flat[i * cols + j]);
    let base = quad(w.as_ref(), h.as_ref());
    Ok(if base > 0.0 {
        quad(delta.as_ref(), h.as_ref()) / base
    } else {
        0.0
    })
}

/// The summed relative pruning error of the layer's seven linears, in the original basis
/// (`rot = None`) or rotated. Each linear's pruning runs on its own thread pair.
pub fn pruning_error(
    m: &Module,
    lp: &LayerParts,
    h: &LayerHessians,
    rot: Option<&LayerRotation<'_>>,
    spec: &PruneSpec,
) -> Result<f64, PassError> {
    let g = m.main_graph();
    let weight = |l: &Linear| -> Result<Mat<f64>, PassError> {
        let (w, r, c) = linear_weight(m, l)?;
        Ok(MatRef::from_row_major_slice(&w, r, c).to_owned())
    };
    let (ha, ho, hm, hd) = (
        square(&h.attn),
        square(&h.o),
        square(&h.mlp),
        square(&h.down),
    );
    // (linear, rotated weight, rotated Hessian)
    let mut jobs: Vec<(&Linear, Mat<f64>, Mat<f64>)> = Vec::with_capacity(7);
    match rot {
        None => {
            for (l, hh) in [
                (&lp.q, &ha),
                (&lp.k, &ha),
                (&lp.v, &ha),
                (&lp.o, &ho),
                (&lp.gate, &hm),
                (&lp.up, &hm),
                (&lp.down, &hd),
            ] {
                jobs.push((l, weight(l)?, hh.clone()));
            }
        }
        Some(r) => {
            let q = r.q1.as_ref();
            let heads = lp.heads;
            let rv = block_diag(&r.r2.iter().collect::<Vec<_>>());
            let rep: Vec<&Mat<f64>> = (0..heads.heads).map(|x| &r.r2[heads.kv_of(x)]).collect();
            let ro = block_diag(&rep);
            let rot_h =
                |h: &Mat<f64>, q: MatRef<'_, f64>| mm(mm(q.transpose(), h.as_ref()).as_ref(), q);
            let ha_r = rot_h(&ha, q);
            let hm_r = rot_h(&hm, q);
            let ho_r = rot_h(&ho, ro.as_ref());
            for l in [&lp.q, &lp.k] {
                jobs.push((l, mm(weight(l)?.as_ref(), q), ha_r.clone()));
            }
            let v = mm(rv.transpose(), mm(weight(&lp.v)?.as_ref(), q).as_ref());
            jobs.push((&lp.v, v, ha_r.clone()));
            let o = mm(
                mm(q.transpose(), weight(&lp.o)?.as_ref()).as_ref(),
                ro.as_ref(),
            );
            jobs.push((&lp.o, o, ho_r));
            for l in [&lp.gate, &lp.up] {
                jobs.push((l, mm(weight(l)?.as_ref(), q), hm_r.clone()));
            }
            jobs.push((
                &lp.down,
                mm(q.transpose(), weight(&lp.down)?.as_ref()),
                hd.clone(),
            ));
        }
    }
    for (l, w, hh) in &jobs {
        if hh.nrows() != w.ncols() {
            return Err(PassError::at(
                g,
                l.node,
                "calibration statistics of the wrong width",
            ));
        }
    }
    // Two worker threads (the machine's cores); each takes every other linear.
    let results: Vec<(usize, Result<f64, String>)> = std::thread::scope(|s| {
        let jobs = &jobs;
        let handles: Vec<_> = (0..2)
            .map(|t| {
                s.spawn(move || {
                    jobs.iter()
                        .enumerate()
                        .filter(|(i, _)| i % 2 == t)
                        .map(|(i, (_, w, h))| (i, relative_error(w.clone(), h.clone(), spec)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    if results.len() != jobs.len() {
        return Err(PassError::new("a pruning-error worker failed"));
    }
    let mut total = 0.0;
    for (i, r) in results {
        total += r.map_err(|e| PassError::at(g, jobs[i].0.node, e))?;
    }
    Ok(total)
}
