//! Factorizing the blocks' linears of a module: choose the linears (blocks and roles, from the
//! structure analysis), read each weight as an `m×n` f64 matrix, choose factor shapes and ranks
//! (`plan`), compute the factors (`matrix`), and replace each `MatMul(x, W)` by
//! `ortho.FactorizedLinear(x, P, Q)` with the factors stored in the weight's dtype. Shared by
//! `kron-factorize` and `lowrank-factorize`; not a pass.
//!
//! Everything that can be refused (options against the module, shapes that do not divide, a
//! rank above full, a weight that cannot be read) is checked before the module changes.

use super::matrix::{self, FactorError, KronShape};
use super::options::{check_target, RankSpec, ShapeSpec};
use super::plan::{allocate, uniform_rank, Item};
use crate::linalg::replace::{swap_linears, LinearSwap};
use crate::linalg::weights;
use crate::pass::{PassError, PassErrorKind};
use crate::sparsity::linears::{block_linears, linear_weight};
use ortho_ir::analysis::linear::{Linear, LinearOp};
use ortho_ir::factorized::Factorized;
use ortho_ir::op_ortho::OrthoOp;
use ortho_ir::Module;

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
    /// Candidate shapes (`None`: low rank) and their spectra.
    cands: Vec<(Option<KronShape>, Vec<f64>)>,
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
        let (shape, sigma) = &self.cands[c];
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

fn invalid(m: &Module, t: &Target, e: impl std::fmt::Display) -> PassError {
    PassError::at_main(m, t.l.node, format!("{}: {e}", t.what()))
        .with_kind(PassErrorKind::InvalidOptions)
}

fn numeric(m: &Module, t: &Target, e: FactorError) -> PassError {
    let kind = match e {
        FactorError::Svd => PassErrorKind::Numeric,
        _ => PassErrorKind::InvalidOptions,
    };
    PassError::at_main(m, t.l.node, format!("{}: {e}", t.what())).with_kind(kind)
}

/// Factorizes the chosen linears of `m` (see the module docs).
pub fn factorize(m: &mut Module, spec: &FactorizeSpec) -> Result<FactorizeStats, PassError> {
    check_target(spec.budget, spec.max_flops)
        .map_err(|e| PassError::new(e.to_string()).with_kind(PassErrorKind::InvalidOptions))?;
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
                chosen: 0,
                rank: 0,
            });
        }
    }
    // 2. Candidate shapes, each with its spectrum.
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
        for s in shapes {
            let a = match s {
                Some(s) => matrix::rearrange(&t.w, s),
                None => matrix::as_mat(&t.w, t.m, t.n),
            };
            let sigma = matrix::spectrum(&a).map_err(|e| numeric(m, t, e))?;
            t.cands.push((s, sigma));
        }
    }
    // 3. A shape per matrix, then ranks.
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
                let full = t.cands.iter().map(|c| c.1.len()).max().unwrap_or(0);
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
        RankSpec::Full => targets.iter().map(|t| t.cands[t.chosen].1.len()).collect(),
        RankSpec::Fixed(r) => vec![r; targets.len()],
    };
    for (t, r) in targets.iter_mut().zip(ranks) {
        t.rank = r;
    }
    // 4. The factors, in the weight's dtype (still nothing changed in the module).
    let mut stats = FactorizeStats {
        skipped,
        ..FactorizeStats::default()
    };
    let mut total_err = 0.0;
    let mut total_energy = 0.0;
    let mut built: Vec<(Factorized, [ortho_ir::TensorData; 2])> = Vec::new();
    for t in &targets {
        let (shape, _) = t.cands[t.chosen];
        let a = match shape {
            Some(s) => matrix::rearrange(&t.w, s),
            None => matrix::as_mat(&t.w, t.m, t.n),
        };
        let f = matrix::decompose(&a)
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
        let (op, p, q, params, macs) = match shape {
            Some(s) => {
                let (pa, pb) = matrix::kron_factors(&f, s);
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
                let p = enc(vec![t.m as i64, r as i64], &f.left)?;
                let q = enc(vec![t.n as i64, r as i64], &f.right)?;
                (op, p, q, r * (t.m + t.n), r * (t.m + t.n))
            }
        };
        let energy: f64 = f.sigma.iter().map(|s| s * s).sum();
        let tail = f.tail_energy();
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
            "layer {} {}: {how} rank {r}, {:.1} % of {} params, {:.2}x MACs, rel. error {rel:.4}",
            t.block,
            t.role,
            100.0 * params as f64 / (t.m * t.n) as f64,
            t.m * t.n,
            macs as f64 / (t.m * t.n) as f64
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
    // 5. Mutate: new constants and ops first, then the weights nobody reads any more.
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
