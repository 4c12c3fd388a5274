//! Factorizing the blocks' linears of a module: choose the linears (blocks and roles, from the
//! structure analysis), read each weight as an `m×n` f64 matrix, choose factor shapes and ranks
//! (`plan`), compute the factors (`matrix`), and replace each `MatMul(x, W)` by
//! `ortho.FactorizedLinear(x, P, Q)` with the factors stored in the weight's dtype. Shared by
//! `kron-factorize` and `lowrank-factorize`; not a pass.
//!
//! With `calib` (activation-aware, `whiten`), the input Gram of every chosen linear is collected
//! first (one layer-wise walk over the calibration set, on the dense model), and each candidate
//! is fitted and ranked on the whitened weight.
//!
//! Everything that can be refused (options against the module, missing calibration, shapes
//! that do not divide, a rank above full, a weight that cannot be read) is checked before the
//! module changes.

use super::als;
use super::matrix::{self, FactorError, KronShape};
use super::options::{check_target, RankSpec, ShapeSpec};
use super::plan::{allocate, uniform_rank, Item};
use super::whiten::{self, Whitening};
use crate::calib::{missing_calibration, Calibration};
use crate::linalg::replace::{swap_linears, LinearSwap};
use crate::linalg::weights;
use crate::pass::{PassError, PassErrorKind};
use crate::sparsity::linears::{block_linears, linear_weight};
use ortho_ir::analysis::linear::{Linear, LinearOp};
use ortho_ir::factorized::Factorized;
use ortho_ir::op_ortho::OrthoOp;
use ortho_ir::{Module, ValueId};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

/// Which factorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Kron(ShapeSpec),
    LowRank,
}

/// What to factorize and how far.
#[derive(Debug, Clone)]
pub struct FactorizeSpec {
    pub method: Method,
    /// Fraction of parameters removed (unused when `rank` is given).
    pub budget: f64,
    pub rank: RankSpec,
    /// Multiply-add cap per token as a fraction of dense (0: none; budget mode only).
    pub max_flops: f64,
    /// Blocks (`None`: all).
    pub layers: Option<Vec<usize>>,
    /// Roles (q, k, v, o, gate, up, down).
    pub roles: Vec<&'static str>,
    /// Activation-aware: fit `‖X(W − Ŵ)ᵀ‖` on calibration data (see `whiten`).
    pub calib: bool,
    /// ALS steps on the exact activation objective after a Kronecker fit (`calib` only).
    pub als_steps: usize,
}

impl FactorizeSpec {
    /// The pass these options belong to (for errors).
    pub fn pass_name(&self) -> &'static str {
        match self.method {
            Method::Kron(_) => "kron-factorize",
            Method::LowRank => "lowrank-factorize",
        }
    }
}

/// What [`factorize`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FactorizeStats {
    pub linears: usize,
    /// Parameters of the chosen dense weights.
    pub dense_params: usize,
    /// Parameters of their factors.
    pub factor_params: usize,
    /// Multiply-adds per token, dense and factorized.
    pub dense_macs: usize,
    pub factor_macs: usize,
    /// `‖W − Ŵ‖_F / ‖W‖_F` from the spectra: the largest, and over all chosen weights.
    pub max_rel_error: f64,
    pub total_rel_error: f64,
    /// Whether the errors are of the layers' outputs on calibration data (`calib`), not of
    /// the weights.
    pub activation: bool,
    /// Kronecker fits with calibration that start from the weight-only fit (better under the
    /// exact Gram than the fit whitened by its Kronecker-factored approximation).
    pub plain_starts: usize,
    /// ALS: matrices refined, skipped (system too large), and their summed squared output
    /// errors before and after.
    pub als_refined: usize,
    pub als_skipped: usize,
    pub als_before: f64,
    pub als_after: f64,
    /// One line per linear.
    pub lines: Vec<String>,
    /// Chosen linears left as they are because they are factorized already (`layer 0 q`).
    pub skipped: Vec<String>,
}

/// One chosen linear and what the plan made of it.
struct Target {
    block: usize,
    role: &'static str,
    l: Linear,
    name: String,
    w: Vec<f64>,
    m: usize,
    n: usize,
    /// Candidate shapes (`None`: low rank), their spectra (of the whitened weight with
    /// `calib`) and their whitening.
    cands: Vec<Cand>,
    /// With `calib`: the Cholesky factor of the input's damped Gram (the exact objective).
    gram_l: Option<Arc<faer::Mat<f64>>>,
    chosen: usize,
    rank: usize,
}

impl Target {
    fn what(&self) -> String {
        let name = if self.name.is_empty() {
            String::new()
        } else {
            format!(" '{}'", self.name)
        };
        format!(
            "layer {} {} weight{name} ({}x{})",
            self.block, self.role, self.m, self.n
        )
    }

    fn item(&self, c: usize) -> Item {
        let Cand { shape, sigma, .. } = &self.cands[c];
        let (cost, macs) = match shape {
            Some(s) => (s.params_per_rank(), s.macs_per_rank()),
            None => (self.m + self.n, self.m + self.n),
        };
        Item {
            sigma: sigma.clone(),
            cost,
            macs,
            dense: self.m * self.n,
        }
    }
}

/// One candidate factorization of a target.
struct Cand {
    shape: Option<KronShape>,
    sigma: Vec<f64>,
    white: Option<Whitening>,
}

impl Target {
    /// The matrix whose truncated SVD is the fit: `W` (or `W·L` whitened), rearranged for a
    /// Kronecker shape.
    fn fitted(&self, c: usize) -> faer::Mat<f64> {
        let Cand { shape, white, .. } = &self.cands[c];
        let w = match white {
            Some(wh) => std::borrow::Cow::Owned(wh.apply(&self.w, self.m, self.n)),
            None => std::borrow::Cow::Borrowed(&self.w),
        };
        match shape {
            Some(s) => matrix::rearrange(&w, *s),
            None => matrix::as_mat(&w, self.m, self.n),
        }
    }
}

/// How the notes name the error: `‖W−Ŵ‖/‖W‖`, or `‖X(W−Ŵ)ᵀ‖/‖XWᵀ‖` with calibration.
pub fn err_name(activation: bool) -> &'static str {
    if activation {
        "rel. output error"
    } else {
        "rel. error"
    }
}

fn invalid(m: &Module, t: &Target, e: impl std::fmt::Display) -> PassError {
    PassError::at_main(m, t.l.node, format!("{}: {e}", t.what()))
        .with_kind(PassErrorKind::InvalidOptions)
}

fn numeric(m: &Module, t: &Target, e: FactorError) -> PassError {
    let kind = match e {
        FactorError::Svd | FactorError::NotPositive => PassErrorKind::Numeric,
        _ => PassErrorKind::InvalidOptions,
    };
    PassError::at_main(m, t.l.node, format!("{}: {e}", t.what())).with_kind(kind)
}

/// Factorizes the chosen linears of `m` (see the module docs).
/// Factorizes the chosen linears of `m` (see the module docs); `calib` is needed when
/// `spec.calib` is set.
pub fn factorize(
    m: &mut Module,
    spec: &FactorizeSpec,
    calib: Option<&Calibration>,
) -> Result<FactorizeStats, PassError> {
    check_target(spec.budget, spec.max_flops)
        .map_err(|e| PassError::new(e.to_string()).with_kind(PassErrorKind::InvalidOptions))?;
    let calib = match (spec.calib, calib) {
        (false, _) => None,
        (true, Some(c)) => Some(c),
        (true, None) => return Err(missing_calibration(spec.pass_name())),
    };
    let cap = (spec.max_flops > 0.0).then_some(spec.max_flops);
    let spans = crate::calib::block_spans(m)?;
    if let Some(l) = &spec.layers {
        if let Some(&bad) = l.iter().find(|&&i| i >= spans.len()) {
            return Err(PassError::new(format!(
                "layers: block {bad} does not exist (the model has {} blocks)",
                spans.len()
            ))
            .with_kind(PassErrorKind::InvalidOptions));
        }
    }
    // 1. The chosen linears and their weights.
    let mut targets: Vec<Target> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    for s in &spans {
        if spec.layers.as_ref().is_some_and(|l| !l.contains(&s.index)) {
            continue;
        }
        for (role, l) in block_linears(s.attention.as_ref(), s.mlp.as_ref()) {
            if !spec.roles.contains(&role) {
                continue;
            }
            // A factorized linear has no dense weight left to factorize: a second pass over the
            // same layers keeps it and says so.
            if l.dense().is_none() {
                skipped.push(format!("layer {} {role} ({})", s.index, l.kind_name()));
                continue;
            }
            if l.op != LinearOp::MatMul {
                return Err(PassError::at_main(
                    m,
                    l.node,
                    format!(
                        "layer {} {role}: only dense MatMul linears can be factorized",
                        s.index
                    ),
                )
                .with_kind(PassErrorKind::Unsupported));
            }
            let (w, rows, cols) = linear_weight(m, &l)?;
            targets.push(Target {
                block: s.index,
                role,
                // The weight's value name (an imported initializer's name), else its tensor's.
                name: m
                    .main_graph()
                    .node(l.weight.konst)
                    .outputs
                    .first()
                    .map(|o| o.name.clone())
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| m.tensor(l.weight.tensor).name.clone()),
                l,
                w,
                m: rows,
                n: cols,
                cands: Vec::new(),
                gram_l: None,
                chosen: 0,
                rank: 0,
            });
        }
    }
    // 2. With calibration, the input Grams (the module is only read by the walk).
    let grams_mut: HashMap<ValueId, faer::Mat<f64>> = match calib {
        Some(c) => {
            let wanted: Vec<(usize, ValueId)> =
                targets.iter().map(|t| (t.block, t.l.input)).collect();
            whiten::collect_grams(m, c, &wanted)?
        }
        None => HashMap::new(),
    };
    let mut grams = grams_mut;
    let mut full_l: HashMap<ValueId, Arc<faer::Mat<f64>>> = HashMap::new();
    let mut kron_l: HashMap<(ValueId, usize), Whitening> = HashMap::new();
    // 3. Candidate shapes, each with its spectrum.
    for t in &mut targets {
        let shapes: Vec<Option<KronShape>> = match spec.method {
            Method::LowRank => vec![None],
            Method::Kron(ShapeSpec::Fixed { m1, n1 }) => {
                let s = KronShape::new(t.m, t.n, m1, n1).map_err(|e| numeric(m, t, e))?;
                vec![Some(s)]
            }
            Method::Kron(ShapeSpec::Auto) => {
                let c = matrix::auto_candidates(t.m, t.n);
                if c.is_empty() {
                    return Err(invalid(
                        m,
                        t,
                        "has no factor shape other than an outer product",
                    ));
                }
                c.into_iter().map(Some).collect()
            }
        };
        let v = t.l.input;
        if let Some(h) = grams.get(&v) {
            if let Entry::Vacant(slot) = full_l.entry(v) {
                let l = whiten::cholesky(h).map_err(|e| numeric(m, t, e))?;
                slot.insert(Arc::new(l));
            }
            t.gram_l = full_l.get(&v).cloned();
        }
        for s in shapes {
            let white = match (s, grams.get(&v)) {
                (_, None) => None,
                (None, Some(_)) => t.gram_l.clone().map(Whitening::Full),
                (Some(s), Some(h)) => {
                    if let Entry::Vacant(slot) = kron_l.entry((v, s.n1)) {
                        let (h1, h2) = whiten::nearest_kron_gram(h, s.n1, s.n2)
                            .map_err(|e| numeric(m, t, e))?;
                        let l1 = whiten::cholesky(&h1).map_err(|e| numeric(m, t, e))?;
                        let l2 = whiten::cholesky(&h2).map_err(|e| numeric(m, t, e))?;
                        slot.insert(Whitening::Kron(Arc::new(l1), Arc::new(l2)));
                    }
                    kron_l.get(&(v, s.n1)).cloned()
                }
            };
            t.cands.push(Cand {
                shape: s,
                sigma: Vec::new(),
                white,
            });
            let c = t.cands.len() - 1;
            let sigma = matrix::spectrum(&t.fitted(c)).map_err(|e| numeric(m, t, e))?;
            t.cands[c].sigma = sigma;
        }
    }
    // The Grams stay for the Kronecker fits' exact error (and ALS); low rank needs only `L`.
    if spec.method == Method::LowRank {
        grams.clear();
    }
    drop(kron_l);
    // 4. A shape per matrix, then ranks.
    let keep = 1.0 - spec.budget;
    for t in &mut targets {
        let score = |c: usize| -> Option<(f64, usize)> {
            let it = t.item(c);
            let full = it.sigma.len();
            let r = match spec.rank {
                RankSpec::Unset => uniform_rank(&it, keep, cap),
                RankSpec::Full => full,
                RankSpec::Fixed(r) if r <= full => r,
                RankSpec::Fixed(_) => return None,
            };
            Some((it.tail(r) / it.energy().max(f64::MIN_POSITIVE), r * it.cost))
        };
        let best = (0..t.cands.len())
            .filter_map(|c| score(c).map(|s| (c, s)))
            .min_by(|a, b| a.1 .0.total_cmp(&b.1 .0).then(a.1 .1.cmp(&b.1 .1)));
        match best {
            Some((c, _)) => t.chosen = c,
            None => {
                let full = t.cands.iter().map(|c| c.sigma.len()).max().unwrap_or(0);
                let RankSpec::Fixed(rank) = spec.rank else {
                    unreachable!("only a fixed rank can exceed the full rank")
                };
                return Err(numeric(
                    m,
                    t,
                    FactorError::RankAboveFull {
                        rank,
                        full,
                        what: "weight's factorization",
                    },
                ));
            }
        }
    }
    let ranks: Vec<usize> = match spec.rank {
        RankSpec::Unset => {
            let items: Vec<Item> = targets.iter().map(|t| t.item(t.chosen)).collect();
            allocate(&items, keep, cap)
        }
        RankSpec::Full => targets
            .iter()
            .map(|t| t.cands[t.chosen].sigma.len())
            .collect(),
        RankSpec::Fixed(r) => vec![r; targets.len()],
    };
    for (t, r) in targets.iter_mut().zip(ranks) {
        t.rank = r;
    }
    // 5. The factors, in the weight's dtype (still nothing changed in the module).
    let mut stats = FactorizeStats {
        activation: calib.is_some(),
        skipped,
        ..FactorizeStats::default()
    };
    let mut total_err = 0.0;
    let mut total_energy = 0.0;
    let mut built: Vec<(Factorized, [ortho_ir::TensorData; 2])> = Vec::new();
    for t in &targets {
        let shape = t.cands[t.chosen].shape;
        let white = &t.cands[t.chosen].white;
        let f = matrix::decompose(&t.fitted(t.chosen))
            .and_then(|d| d.factors(t.rank, "weight's factorization"))
            .map_err(|e| numeric(m, t, e))?;
        let r = t.rank;
        let old = m.tensor(t.l.weight.tensor);
        let enc = |dims: Vec<i64>, v: &[f64]| {
            weights::encode(old.dtype, dims, v).map_err(|e| {
                PassError::at_main(m, t.l.weight.konst, e.to_string())
                    .with_kind(PassErrorKind::Weights)
            })
        };
        let energy: f64 = f.sigma.iter().map(|s| s * s).sum();
        let mut tail = f.tail_energy();
        let (op, p, q, params, macs) = match shape {
            Some(s) => {
                let (mut pa, mut pb) = matrix::kron_factors(&f, s);
                if let Some(Whitening::Kron(l1, l2)) = white {
                    whiten::unwhiten_kron(l1, l2, &mut pa, &mut pb, s);
                }
                // The factored Gram's tail is not the error under the exact one: measure it,
                // start from the weight-only fit where that is better, then refine (ALS).
                if let (Some(l), Some(h)) = (&t.gram_l, grams.get(&t.l.input)) {
                    let err = |a: &[f64], b: &[f64]| {
                        let approx = matrix::kron_dense(a, b, s, r);
                        let d: Vec<f64> = t.w.iter().zip(&approx).map(|(x, y)| x - y).collect();
                        whiten::output_error(l, &d, t.m, t.n)
                    };
                    tail = err(&pa, &pb);
                    let plain = matrix::decompose(&matrix::rearrange(&t.w, s))
                        .and_then(|d| d.factors(r, "weight's factorization"))
                        .map_err(|e| numeric(m, t, e))?;
                    let (qa, qb) = matrix::kron_factors(&plain, s);
                    let plain_err = err(&qa, &qb);
                    if plain_err < tail {
                        (pa, pb, tail) = (qa, qb, plain_err);
                        stats.plain_starts += 1;
                    }
                    if spec.als_steps > 0 {
                        match als::refine(&t.w, h, l, s, r, &mut pa, &mut pb, spec.als_steps) {
                            Some(done) => {
                                tail = done.after;
                                stats.als_before += done.before;
                                stats.als_after += done.after;
                                stats.als_refined += 1;
                            }
                            None => stats.als_skipped += 1,
                        }
                    }
                }
                let op = Factorized::KronSum {
                    m1: s.m1,
                    n1: s.n1,
                    m2: s.m2,
                    n2: s.n2,
                    rank: r,
                };
                let p = enc(vec![r as i64, s.m1 as i64, s.n1 as i64], &pa)?;
                let q = enc(vec![r as i64, s.m2 as i64, s.n2 as i64], &pb)?;
                (op, p, q, r * s.params_per_rank(), r * s.macs_per_rank())
            }
            None => {
                let op = Factorized::LowRank { rank: r };
                let mut right = f.right.clone();
                if let Some(Whitening::Full(l)) = white {
                    whiten::unwhiten_lowrank(l, &mut right, r);
                }
                let p = enc(vec![t.m as i64, r as i64], &f.left)?;
                let q = enc(vec![t.n as i64, r as i64], &right)?;
                (op, p, q, r * (t.m + t.n), r * (t.m + t.n))
            }
        };
        // `+ 0.0` turns the square root of a zero tail into +0 for the notes.
        let rel = (tail / energy.max(f64::MIN_POSITIVE)).sqrt() + 0.0;
        stats.max_rel_error = stats.max_rel_error.max(rel);
        total_err += tail;
        total_energy += energy;
        stats.linears += 1;
        stats.dense_params += t.m * t.n;
        stats.factor_params += params;
        stats.dense_macs += t.m * t.n;
        stats.factor_macs += macs;
        let how = match shape {
            Some(s) => format!("kron {}x{} ⊗ {}x{}", s.m1, s.n1, s.m2, s.n2),
            None => "lowrank".into(),
        };
        stats.lines.push(format!(
            "layer {} {}: {how} rank {r}, {:.1} % of {} params, {:.2}x MACs, {} {rel:.4}",
            t.block,
            t.role,
            100.0 * params as f64 / (t.m * t.n) as f64,
            t.m * t.n,
            macs as f64 / (t.m * t.n) as f64,
            err_name(t.gram_l.is_some())
        ));
        let mut p = p;
        let mut q = q;
        if !t.name.is_empty() {
            let (a, b) = match shape {
                Some(_) => ("kron_a", "kron_b"),
                None => ("lowrank_u", "lowrank_v"),
            };
            p.name = format!("{}.{a}", t.name);
            q.name = format!("{}.{b}", t.name);
        }
        built.push((op, [p, q]));
    }
    stats.total_rel_error = (total_err / total_energy.max(f64::MIN_POSITIVE)).sqrt();
    // 6. Mutate: new constants and ops first, then the weights nobody reads any more.
    let swaps = targets
        .into_iter()
        .zip(built)
        .map(|(t, (op, [p, q]))| LinearSwap {
            linear: t.l,
            op: OrthoOp::Factorized(op),
            constants: vec![(p, "factor_p".into()), (q, "factor_q".into())],
        })
        .collect();
    swap_linears(m, swaps);
    Ok(stats)
}
