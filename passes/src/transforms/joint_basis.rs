//! `joint-basis{fold=false layers=0 sweeps=6 seed=0 noise=0}`: the joint orthogonal basis of each
//! block input on the residual stream, with its a-posteriori certificate (ALGORITHMS.md §6,
//! `linalg::joint_basis`).
//!
//! Needs: a pre-norm transformer whose residual stream admits O(d) (norm gains folded: run
//! `fold-norms` first; otherwise the pass fails naming the blocking node — the basis verifier),
//! and calibration data.
//! Does: for every analysed block and each of its two inputs (the attention input read by q/k/v,
//! the MLP input read by gate/up), the matrices are the calibration second moment `H` of that
//! input and every reader's `WᵢᵀWᵢ`, each scaled to unit Frobenius norm so that no statistic
//! dominates by its units; their joint basis (Jacobi sweeps from the eigenbasis of a random
//! positive combination) is certified against the noise of `H`, estimated by split-half
//! resampling (the calibration chunks in two halves, one walk each; `noise=` overrides it; the
//! weights are taken as exact). σ_min(𝒜_U) is the Weyl lower bound at this width (d > 96).
//! Reported per block input (notes): the relative off-diagonal mass `L/N`, the smallest joint
//! eigengap, the noise, σ_min, the bound and "certified" or "not certified (why)", and which
//! subspaces are identified: columns whose joint eigenvalues are within `10·(√L + noise)` of
//! each other are grouped (a rotation inside a group is not determined by these statistics);
//! a group of one is an identified direction.
//! Leaves: with `fold=false` the model unchanged. With `fold=true` each analysed layer's
//! attention-input basis U is folded as that layer's residual basis (`linalg::layer_rotations`,
//! f64, cast once): the stream entering layer i > 0 is multiplied by `U_{i−1}ᵀ U_i` (one d×d
//! `MatMul` per boundary), the embedding takes `U_0`, the head the last one — an exact rewrite.
//! The MLP-input basis is only reported: the stream between a layer's two branches shares the
//! layer's basis, so folding it too would need another boundary inside the layer.

use crate::calib::{missing_calibration, walk_layers_until, Calibration};
use crate::linalg::joint_basis::{
    clusters, joint_basis as solve, JointBasis, JointOptions, JointProblem, Noise, Regime,
    Structure,
};
use crate::linalg::layer_rotations::{self as rotations, FoldStats, Layers, Rotations};
use crate::linalg::weights;
use crate::options::{OptionError, OptionKind};
use crate::pass::{PassContext, PassError, PassErrorKind, PassResult};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use ortho_ir::analysis::Linear;
use ortho_ir::eval::{Stat, StatKind, StatRequest};
use ortho_ir::Module;

crate::pass_options! {
    /// Options of [`joint_basis`].
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct JointBasisOptions {
        pub fold: bool = {
            name: "fold",
            default: false,
            doc: "Fold each layer's attention-input joint basis into the weights (one d×d MatMul per layer boundary); false only reports.",
        },
        pub layers: usize = {
            name: "layers",
            default: 0,
            doc: "Number of leading blocks analysed (0 = all).",
            kind: OptionKind::Int { min: 0, max: 100_000 },
        },
        pub sweeps: usize = {
            name: "sweeps",
            default: 6,
            doc: "Bound on the Jacobi sweeps per block input.",
            kind: OptionKind::Int { min: 1, max: 1000 },
        },
        pub seed: usize = {
            name: "seed",
            default: 0,
            doc: "Seed of the random positive combination that gives the initial basis.",
            kind: OptionKind::Int { min: 0, max: 1_000_000_000 },
        },
        pub noise: f64 = {
            name: "noise",
            default: 0.0,
            doc: "Relative noise level of the calibration second moment; 0 estimates it by split-half resampling of the calibration chunks.",
            kind: OptionKind::Float,
        },
    }
    check: JointBasisOptions::check;
}

impl JointBasisOptions {
    fn check(&self) -> Result<(), OptionError> {
        if !self.noise.is_finite() || self.noise < 0.0 {
            return Err(OptionError::Invalid(format!(
                "noise must be finite and non-negative, got {}",
                self.noise
            )));
        }
        Ok(())
    }
}

crate::declare_pass! {
    name: "joint-basis",
    summary: "Joint orthogonal basis of each block input's calibration moment and readers' WᵀW, with an a-posteriori certificate; optionally folded.",
    options: JointBasisOptions,
    run: run_pass,
}

/// One block input's joint basis.
#[derive(Debug, Clone)]
pub struct InputBasis {
    pub layer: usize,
    /// "attention" or "mlp".
    pub input: &'static str,
    pub basis: JointBasis,
    /// Smallest joint eigengap of the diagonals.
    pub min_gap: f64,
    /// Groups of columns (see the module doc).
    pub groups: Vec<Vec<usize>>,
}

/// What [`joint_basis`] did.
#[derive(Debug, Clone)]
pub struct JointBasisReport {
    pub inputs: Vec<InputBasis>,
    pub fold: Option<FoldStats>,
    /// How the noise was obtained, in words.
    pub noise_source: String,
}

/// The weight of a linear as an in×in `WᵀW` in f64, scaled to unit Frobenius norm.
fn wtw(m: &Module, l: &Linear) -> Result<Mat<f64>, PassError> {
    let t = m.tensor(l.weight.tensor);
    let v = weights::decode(t).map_err(|e| {
        PassError::at_main(m, l.node, e.to_string()).with_kind(PassErrorKind::Weights)
    })?;
    let (r, c) = match t.dims.as_slice() {
        [r, c] => (*r as usize, *c as usize),
        _ => {
            return Err(PassError::at_main(m, l.node, "weight is not a matrix")
                .with_kind(PassErrorKind::Weights))
        }
    };
    let w = if l.weight.in_axis == 1 {
        Mat::from_fn(r, c, |a, b| v[a * c + b])
    } else {
        Mat::from_fn(c, r, |a, b| v[b * c + a])
    };
    let mut g = Mat::<f64>::zeros(w.ncols(), w.ncols());
    matmul(
        g.as_mut(),
        Accum::Replace,
        w.transpose(),
        w.as_ref(),
        1.0,
        Par::Seq,
    );
    Ok(unit(g))
}

fn unit(mut a: Mat<f64>) -> Mat<f64> {
    let n = a.norm_l2();
    if n > 0.0 {
        a *= faer::Scale(1.0 / n);
    }
    a
}

/// The mean second moment `Σ xᵀx / rows` of a Gram statistic.
fn moment(stat: &Stat, m: &Module, l: &Linear) -> Result<Mat<f64>, PassError> {
    let Stat::Gram(g) = stat else {
        return Err(
            PassError::at_main(m, l.node, "missing calibration statistics")
                .with_kind(PassErrorKind::Evaluation),
        );
    };
    if g.dim != l.in_features as usize || g.rows == 0 {
        return Err(PassError::at_main(
            m,
            l.node,
            "calibration statistics of the wrong width or without rows",
        )
        .with_kind(PassErrorKind::Evaluation));
    }
    let n = g.dim;
    let s = 1.0 / g.rows as f64;
    Ok(Mat::from_fn(n, n, |i, j| g.xtx[i * n + j] * s))
}

/// Supplies the Gram statistics of the requests: one list per calibration half (two lists), or
/// one list for the whole set.
pub type GramSource<'a> =
    dyn FnMut(&mut Module, &[StatRequest], usize) -> Result<Vec<Vec<Stat>>, PassError> + 'a;

/// Runs the analysis (and the fold) on the main graph of `m`.
pub fn joint_basis(
    m: &mut Module,
    opts: &JointBasisOptions,
    grams: &mut GramSource<'_>,
) -> Result<JointBasisReport, PassError> {
    let layers: Layers = rotations::find_layers(m)?;
    let nl = layers.layers.len();
    let count = if opts.layers == 0 {
        nl
    } else {
        opts.layers.min(nl)
    };
    let requests: Vec<StatRequest> = layers.layers[..count]
        .iter()
        .flat_map(|l| [l.q.input, l.gate.input])
        .map(|value| StatRequest {
            value,
            kind: StatKind::Gram,
        })
        .collect();
    let sets = grams(m, &requests, count)?;
    if sets.is_empty() || sets.iter().any(|s| s.len() != requests.len()) {
        return Err(
            PassError::new("calibration returned the wrong number of statistics")
                .with_kind(PassErrorKind::Evaluation),
        );
    }
    let noise_source = if opts.noise > 0.0 {
        format!("given ({:.3e})", opts.noise)
    } else if sets.len() == 2 {
        "split-half estimate of the calibration moment".to_string()
    } else {
        "not estimated (fewer than two calibration chunks; pass noise=…): taken as 0".to_string()
    };
    let jopts = JointOptions {
        structure: Structure::Symmetric,
        seed: opts.seed as u64,
        max_sweeps: opts.sweeps,
        ..JointOptions::default()
    };
    let mut inputs = Vec::with_capacity(2 * count);
    for (i, l) in layers.layers[..count].iter().enumerate() {
        for (k, (name, readers)) in [
            ("attention", vec![&l.q, &l.k, &l.v]),
            ("mlp", vec![&l.gate, &l.up]),
        ]
        .into_iter()
        .enumerate()
        {
            let r = 2 * i + k;
            let halves: Vec<Mat<f64>> = sets
                .iter()
                .map(|s| moment(&s[r], m, readers[0]))
                .collect::<Result<_, _>>()?;
            let mean = if halves.len() == 2 {
                Mat::from_fn(halves[0].nrows(), halves[0].ncols(), |a, b| {
                    0.5 * (halves[0][(a, b)] + halves[1][(a, b)])
                })
            } else {
                halves[0].clone()
            };
            let scale = mean.norm_l2();
            let noise = if opts.noise > 0.0 {
                Noise::Given(opts.noise)
            } else if halves.len() == 2 && scale > 0.0 {
                let diff = Mat::from_fn(mean.nrows(), mean.ncols(), |a, b| {
                    0.5 * (halves[0][(a, b)] - halves[1][(a, b)])
                });
                Noise::SplitHalf(diff.norm_l2() / scale)
            } else {
                Noise::Given(0.0)
            };
            let mut mats = vec![unit(mean)];
            for w in &readers {
                mats.push(wtw(m, w)?);
            }
            let problem = JointProblem {
                matrices: mats,
                noise,
            };
            let basis = solve(&problem, &jopts).map_err(|e| {
                PassError::at_main(m, readers[0].node, format!("joint basis: {e}"))
                    .with_kind(PassErrorKind::Numeric)
            })?;
            let d = basis.u.nrows();
            let mut min_gap = f64::INFINITY;
            for a in 0..d {
                for b in 0..a {
                    let g2: f64 = basis.diagonals.iter().map(|v| (v[a] - v[b]).powi(2)).sum();
                    min_gap = min_gap.min(g2.sqrt());
                }
            }
            let threshold = (basis.loss.sqrt() + basis.noise.value()) / jopts.max_bound;
            let groups = clusters(&basis.diagonals, threshold);
            inputs.push(InputBasis {
                layer: i,
                input: name,
                basis,
                min_gap,
                groups,
            });
        }
    }
    let fold = if opts.fold {
        let eye = |n: usize| Mat::<f64>::identity(n, n);
        let mut q1 = Vec::with_capacity(nl);
        for i in 0..nl {
            q1.push(
                inputs
                    .iter()
                    .find(|b| b.layer == i && b.input == "attention")
                    .map_or_else(|| eye(layers.d), |b| b.basis.u.clone()),
            );
        }
        let r2 = layers
            .layers
            .iter()
            .map(|l| vec![eye(l.heads.head_dim); l.heads.kv_heads])
            .collect();
        Some(rotations::fold(m, &layers, &Rotations { q1, r2 })?)
    } else {
        None
    };
    Ok(JointBasisReport {
        inputs,
        fold,
        noise_source,
    })
}

/// The calibration split into two halves of its chunks (`None` with fewer than two chunks).
fn halves(c: &Calibration) -> Option<(Calibration, Calibration)> {
    if c.chunks.len() < 2 {
        return None;
    }
    let mid = c.chunks.len() / 2;
    let mut a = c.clone();
    let mut b = c.clone();
    a.chunks.truncate(mid);
    b.chunks.drain(..mid);
    Some((a, b))
}

fn run_pass(
    m: &mut Module,
    opts: &JointBasisOptions,
    cx: &mut PassContext,
) -> Result<PassResult, PassError> {
    let calib = cx.calibration().cloned();
    let want_halves = opts.noise == 0.0;
    let mut grams =
        |m: &mut Module, reqs: &[StatRequest], count: usize| -> Result<Vec<Vec<Stat>>, PassError> {
            let calib = calib.as_ref().ok_or_else(|| {
                missing_calibration(INFO.name).with_kind(PassErrorKind::MissingCalibration)
            })?;
            let sets: Vec<Calibration> = match (want_halves, halves(calib)) {
                (true, Some((a, b))) => vec![a, b],
                _ => vec![calib.clone()],
            };
            let mut out = Vec::with_capacity(sets.len());
            for c in &sets {
                let mut stats: Vec<Stat> = Vec::with_capacity(reqs.len());
                walk_layers_until(m, c, count.checked_sub(1), &mut |lcx| {
                    let i = lcx.block.index;
                    if i >= count {
                        return Ok(());
                    }
                    lcx.progress("joint-basis: input moments");
                    stats.extend(lcx.collect(&reqs[2 * i..2 * i + 2])?.stats);
                    Ok(())
                })?;
                out.push(stats);
            }
            Ok(out)
        };
    let r = joint_basis(m, opts, &mut grams)?;
    let certified = r
        .inputs
        .iter()
        .filter(|b| b.basis.regime == Regime::Certified)
        .count();
    cx.stat("inputs", r.inputs.len() as u64);
    cx.stat("certified", certified as u64);
    cx.note(format!("noise: {}", r.noise_source));
    for b in &r.inputs {
        let jb = &b.basis;
        let n = jb.diagonals.len().max(1) as f64;
        let identified = b.groups.iter().filter(|g| g.len() == 1).count();
        let largest = b.groups.iter().map(Vec::len).max().unwrap_or(0);
        let regime = match &jb.regime {
            Regime::Certified => "certified".to_string(),
            Regime::NotCertified(why) => format!("not certified ({why})"),
        };
        cx.note(format!(
            "layer {} {}: off-diagonal mass {:.3e}, min joint gap {:.3e}, noise {:.3e}, σ_min ({:?}) {:.3e}, bound {:.3e}{}: {regime}; identified {identified} of {} directions, {} groups (largest {largest}); stop {:?}",
            b.layer,
            b.input,
            jb.loss / n,
            b.min_gap,
            jb.noise.value(),
            jb.sigma_method,
            jb.sigma_min,
            jb.bound,
            match jb.lsq_term {
                Some(_) => format!(" (least-squares form {:.3e})", jb.bound_lsq),
                None => String::new(),
            },
            jb.u.nrows(),
            b.groups.len(),
            jb.stop
        ));
    }
    if let Some(f) = r.fold {
        cx.stat("rewritten", f.rewritten as u64);
        cx.stat("boundaries", f.boundaries as u64);
        cx.note(format!(
            "folded each layer's attention-input basis: {} boundary MatMul(s) on the residual stream",
            f.boundaries
        ));
        Ok(PassResult::changed(true))
    } else {
        Ok(PassResult::changed(false))
    }
}
