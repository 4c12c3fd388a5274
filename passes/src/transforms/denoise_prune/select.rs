//! Deciding whether a layer's DenoiseRotator rotation helps the pruning that follows it.
//!
//! The entropy objective is a proxy: a rotation can lower it and still make the pruned layer
//! worse (moving off a model's own basis spreads its outlier features over every column; see the
//! magnitude rows of fixtures/README). So before a rotation is kept, the layer is pruned both
//! ways on its dense input statistics ([`pruned_layer`]) and the caller runs the block with each
//! variant's weights on calibration data and compares the block outputs with the dense block's.
//! Each variant's weights are returned in the original basis (a rotated, pruned `W'` mapped back
//! through the rotation: the same function, no longer sparse), so both variants run in the
//! unchanged graph. [`PrunedLayer::error`] adds the per-linear relative reconstruction errors
//! `‖ΔW X‖² / ‖W X‖²` (rotation-invariant denominators) for the report. Not a pass.

use crate::linalg::layer_rotations::{block_diag, mul64 as mm, LayerParts};
use crate::pass::{PassError, PassErrorKind};
use crate::sparsity::linears::linear_weight;
use crate::sparsity::matrix::{prune_matrix, PruneError, PruneSpec};
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

/// A layer's rotation: `Q1` on the residual stream, one `R2_j` per KV head, and optionally a
/// permutation of the MLP's hidden channels (new position → old channel: gate/up rows and down
/// columns).
pub struct LayerRotation<'a> {
    pub q1: &'a Mat<f64>,
    pub r2: &'a [Mat<f64>],
    pub mlp: Option<&'a [usize]>,
}

/// The permutation matrix `C` with `(A C)[:, k] = A[:, perm[k]]`.
fn perm_matrix(perm: &[usize]) -> Mat<f64> {
    let n = perm.len();
    let mut c = Mat::<f64>::zeros(n, n);
    for (k, &old) in perm.iter().enumerate() {
        c[(old, k)] = 1.0;
    }
    c
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

/// One linear pruned on its input Hessian: the pruned weight (row-major `out × in`) and its
/// relative reconstruction error `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`.
fn prune_one(w: &Mat<f64>, h: &Mat<f64>, spec: &PruneSpec) -> Result<(Mat<f64>, f64), PruneError> {
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
    let pruned = MatRef::from_row_major_slice(&flat, rows, cols).to_owned();
    let delta = Mat::<f64>::from_fn(rows, cols, |i, j| w[(i, j)] - pruned[(i, j)]);
    let base = quad(w.as_ref(), h.as_ref());
    let err = if base > 0.0 {
        quad(delta.as_ref(), h.as_ref()) / base
    } else {
        0.0
    };
    Ok((pruned, err))
}

/// A layer pruned on its dense statistics in one basis.
pub struct PrunedLayer {
    /// Summed relative reconstruction error of the seven linears.
    pub error: f64,
    /// Each linear's pruned weight mapped back to the original basis, row-major `out × in`.
    pub weights: Vec<(Linear, Vec<f64>)>,
}

/// One pruning job: the linear, its weight and Hessian in the variant's basis, and the factors
/// `(left, right)` that map the pruned weight back to the original basis (`left · P · right`).
type Job<'a> = (
    &'a Linear,
    Mat<f64>,
    Mat<f64>,
    Option<Mat<f64>>,
    Option<Mat<f64>>,
);

/// Prunes the layer's seven linears on their dense Hessians, in the original basis
/// (`rot = None`) or rotated. The linears are spread over two threads.
pub fn pruned_layer(
    m: &Module,
    lp: &LayerParts,
    h: &LayerHessians,
    rot: Option<&LayerRotation<'_>>,
    spec: &PruneSpec,
) -> Result<PrunedLayer, PassError> {
    let (gid, g) = (m.main, m.main_graph());
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
    let mut jobs: Vec<Job<'_>> = Vec::with_capacity(7);
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
                jobs.push((l, weight(l)?, hh.clone(), None, None));
            }
        }
        Some(r) => {
            let q = r.q1.as_ref();
            let qt = r.q1.transpose().to_owned();
            let heads = lp.heads;
            let rv = block_diag(&r.r2.iter().collect::<Vec<_>>());
            let rep: Vec<&Mat<f64>> = (0..heads.heads).map(|x| &r.r2[heads.kv_of(x)]).collect();
            let ro = block_diag(&rep);
            let rot_h =
                |h: &Mat<f64>, q: MatRef<'_, f64>| mm(mm(q.transpose(), h.as_ref()).as_ref(), q);
            let ha_r = rot_h(&ha, q);
            let hm_r = rot_h(&hm, q);
            let ho_r = rot_h(&ho, ro.as_ref());
            // Input side W' = W Q (P = P' Qᵀ); v: W' = Rᵀ W Q (P = R P' Qᵀ); o: W' = Qᵀ W R_rep
            // (P = Q P' R_repᵀ); down: W' = Qᵀ W (P = Q P').
            for l in [&lp.q, &lp.k] {
                jobs.push((
                    l,
                    mm(weight(l)?.as_ref(), q),
                    ha_r.clone(),
                    None,
                    Some(qt.clone()),
                ));
            }
            let v = mm(rv.transpose(), mm(weight(&lp.v)?.as_ref(), q).as_ref());
            jobs.push((&lp.v, v, ha_r.clone(), Some(rv.clone()), Some(qt.clone())));
            let o = mm(
                mm(q.transpose(), weight(&lp.o)?.as_ref()).as_ref(),
                ro.as_ref(),
            );
            jobs.push((
                &lp.o,
                o,
                ho_r,
                Some(r.q1.clone()),
                Some(ro.transpose().to_owned()),
            ));
            // The MLP permutation C: gate/up W' = Cᵀ W Q (P = C P' Qᵀ); down W' = Qᵀ W C with
            // the Hessian Cᵀ H C (P = Q P' Cᵀ).
            let c = r.mlp.map(perm_matrix);
            for l in [&lp.gate, &lp.up] {
                let w = mm(weight(l)?.as_ref(), q);
                let w = match &c {
                    Some(c) => mm(c.transpose(), w.as_ref()),
                    None => w,
                };
                jobs.push((l, w, hm_r.clone(), c.clone(), Some(qt.clone())));
            }
            let down = mm(q.transpose(), weight(&lp.down)?.as_ref());
            match &c {
                Some(c) => {
                    let down = mm(down.as_ref(), c.as_ref());
                    let hd_c = mm(mm(c.transpose(), hd.as_ref()).as_ref(), c.as_ref());
                    jobs.push((
                        &lp.down,
                        down,
                        hd_c,
                        Some(r.q1.clone()),
                        Some(c.transpose().to_owned()),
                    ));
                }
                None => jobs.push((&lp.down, down, hd.clone(), Some(r.q1.clone()), None)),
            }
        }
    }
    for (l, w, hh, _, _) in &jobs {
        if hh.nrows() != w.ncols() {
            return Err(
                PassError::at(g, l.node, "calibration statistics of the wrong width")
                    .in_graph(gid)
                    .with_kind(PassErrorKind::Evaluation),
            );
        }
    }
    // Two worker threads (the machine's cores); each takes every other linear.
    type Out = (usize, Result<(Mat<f64>, f64), PruneError>);
    let results: Vec<Out> = std::thread::scope(|s| {
        let jobs = &jobs;
        let handles: Vec<_> = (0..2)
            .map(|t| {
                s.spawn(move || {
                    jobs.iter()
                        .enumerate()
                        .filter(|(i, _)| i % 2 == t)
                        .map(|(i, (_, w, h, _, _))| (i, prune_one(w, h, spec)))
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
        return Err(PassError::new("a pruning worker failed").with_kind(PassErrorKind::Numeric));
    }
    let mut out = PrunedLayer {
        error: 0.0,
        weights: Vec::with_capacity(jobs.len()),
    };
    let mut sorted: Vec<Out> = results;
    sorted.sort_by_key(|(i, _)| *i);
    for (i, r) in sorted {
        let (l, _, _, left, right) = &jobs[i];
        let (p, err) = r.map_err(|e| {
            PassError::at(g, l.node, e.to_string())
                .in_graph(gid)
                .with_kind(PassErrorKind::Numeric)
        })?;
        out.error += err;
        let p = match left {
            Some(a) => mm(a.as_ref(), p.as_ref()),
            None => p,
        };
        let p = match right {
            Some(b) => mm(p.as_ref(), b.as_ref()),
            None => p,
        };
        let mut flat = Vec::with_capacity(p.nrows() * p.ncols());
        for i in 0..p.nrows() {
            for j in 0..p.ncols() {
                flat.push(p[(i, j)]);
            }
        }
        out.weights.push((**l, flat));
    }
    Ok(out)
}
