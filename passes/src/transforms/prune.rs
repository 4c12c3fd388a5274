//! `prune{method=magnitude|wanda|sparsegpt sparsity=0.5 pattern=unstructured|2:4 layers=all
//! linears=all}`: zeroes weights of the linear layers inside the transformer blocks.
//!
//! Needs: the structure analysis (`ortho_ir::analysis::transformer`) to find the blocks and their
//! linears (q, k, v, o, gate, up, down; embedding and head are never pruned); for `wanda` and
//! `sparsegpt`, calibration data (`PassContext::calibration`, set from `--calib-text …`).
//! Calibration is layer-wise ("true sequential", `calib::walk_layers`): block `i` sees the outputs
//! of the already pruned blocks before it, and inside a block the linears are pruned in the
//! groups `[k, v, q] → [o] → [up, gate] → [down]`, the input Hessian of each group collected
//! after the previous group was pruned. Magnitude pruning needs no data.
//! Leaves: the same graph with dense weights holding zeros (copy-on-write: a constant shared with
//! a reader that is not pruned is copied), in the storage dtype; exact patterns (N:M: every group
//! of M consecutive input weights of a row keeps at most N). Notes: one line per block with the
//! sparsity of each linear, and the totals. Bad options (sparsity outside (0, 1), an N:M pattern
//! whose M does not divide an input width) fail before anything is computed.
//!
//! The maths on one matrix is `prune_math::prune_matrix`, usable without a module.

use crate::calib::{missing_calibration, walk_layers_until, Calibration, LayerCx};
use crate::options::{OptionKind, OptionSpec, PassOptions};
use crate::pass::{Pass, PassContext, PassError, PassResult};
use crate::registry::PassInfo;
use crate::transforms::prune_math::{
    prune_matrix, prune_matrix_diag, Pattern, PruneMethod, PruneOutcome, PruneSpec,
};
use crate::transforms::weights::{self, Rewrite};
use ortho_ir::analysis::linear::{match_linear, Linear};
use ortho_ir::eval::{Stat, StatKind, StatRequest};
use ortho_ir::{Module, ValueId};
use std::fmt::Write as _;

static METHODS: &[&str] = &["magnitude", "wanda", "sparsegpt"];

/// The `sparsity` option, shared with `denoise-prune`.
pub const SPARSITY_OPTION: OptionSpec = OptionSpec {
    name: "sparsity",
    kind: OptionKind::Float,
    default: "0.5",
    doc: "Fraction of weights removed, in (0, 1) (ignored by N:M patterns).",
};

/// The `pattern` option, shared with `denoise-prune`.
pub const PATTERN_OPTION: OptionSpec = OptionSpec {
    name: "pattern",
    kind: OptionKind::Str,
    default: "unstructured",
    doc: "unstructured, or N:M (at most N kept of every M consecutive input weights of a row).",
};

static OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "method",
        kind: OptionKind::Enum(METHODS),
        default: "magnitude",
        doc: "Score: |W| per matrix, Wanda |W|·‖X‖ per row, or SparseGPT (OBS updates, block 128, damping 0.01).",
    },
    SPARSITY_OPTION,
    PATTERN_OPTION,
    OptionSpec {
        name: "layers",
        kind: OptionKind::Str,
        default: "all",
        doc: "Blocks to prune: all, or indices and ranges from 0 joined by '+' (e.g. 0-3+7).",
    },
    OptionSpec {
        name: "linears",
        kind: OptionKind::Str,
        default: "all",
        doc: "Linears to prune in those blocks: all, or roles joined by '+' (q+k+v+o+gate+up+down).",
    },
];

pub const INFO: PassInfo = PassInfo {
    name: "prune",
    summary:
        "Prunes the blocks' linear layers (magnitude, Wanda or SparseGPT; unstructured or N:M).",
    options: OPTIONS,
    build,
};

fn build(o: &PassOptions) -> Result<Box<dyn Pass>, String> {
    Ok(Box::new(Prune {
        opts: PruneOptions::from_options(o)?,
    }))
}

/// The roles of a block's linears.
pub const ROLES: [&str; 7] = ["q", "k", "v", "o", "gate", "up", "down"];

/// Options of [`prune`].
#[derive(Debug, Clone, PartialEq)]
pub struct PruneOptions {
    pub spec: PruneSpec,
    /// Block indices to prune; `None` = all.
    pub layers: Option<Vec<usize>>,
    /// Roles to prune (subset of [`ROLES`]).
    pub linears: Vec<&'static str>,
}

impl PruneOptions {
    pub fn from_options(o: &PassOptions) -> Result<Self, String> {
        let method = match o.str("method")? {
            "magnitude" => PruneMethod::Magnitude,
            "wanda" => PruneMethod::Wanda,
            "sparsegpt" => PruneMethod::SparseGpt,
            m => return Err(format!("unknown method '{m}'")),
        };
        let pattern = Pattern::parse(o.str("pattern")?)?;
        let spec = PruneSpec::new(method, o.float("sparsity")?, pattern);
        spec.validate()?;
        Ok(PruneOptions {
            spec,
            layers: parse_layers(o.str("layers")?)?,
            linears: parse_linears(o.str("linears")?)?,
        })
    }
}

/// `all` or `0-3+7` (also accepts `,` inside a quoted value).
pub fn parse_layers(s: &str) -> Result<Option<Vec<usize>>, String> {
    if s == "all" {
        return Ok(None);
    }
    let bad = |p: &str| format!("layers: '{p}' is not an index or a range a-b");
    let mut out = Vec::new();
    for part in s.split(['+', ',']).map(str::trim) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.parse().map_err(|_| bad(part))?;
                let b: usize = b.parse().map_err(|_| bad(part))?;
                if a > b {
                    return Err(bad(part));
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad(part))?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(Some(out))
}

fn parse_linears(s: &str) -> Result<Vec<&'static str>, String> {
    if s == "all" {
        return Ok(ROLES.to_vec());
    }
    s.split(['+', ','])
        .map(|p| {
            ROLES
                .iter()
                .copied()
                .find(|r| *r == p.trim())
                .ok_or_else(|| format!("linears: unknown role '{p}' (known: {})", ROLES.join(", ")))
        })
        .collect()
}

struct Prune {
    opts: PruneOptions,
}

impl Pass for Prune {
    fn name(&self) -> &'static str {
        "prune"
    }

    fn run(&self, m: &mut Module, cx: &mut PassContext) -> Result<PassResult, PassError> {
        let calib = cx.calibration().cloned();
        let stats = prune(m, &self.opts, calib.as_ref())?;
        for line in &stats.per_layer {
            cx.note(line.clone());
        }
        cx.note(format!(
            "{} {}: {} of {} weights zero ({:.2} %) in {} linears of {} blocks",
            self.opts.spec.method.name(),
            pattern_text(self.opts.spec.pattern),
            stats.zeros,
            stats.total,
            100.0 * stats.zeros as f64 / stats.total.max(1) as f64,
            stats.linears,
            stats.blocks
        ));
        cx.stat("linears", stats.linears as u64);
        cx.stat("zeros", stats.zeros as u64);
        cx.stat("weights", stats.total as u64);
        Ok(PassResult::changed(stats.linears > 0))
    }
}

fn pattern_text(p: Pattern) -> String {
    match p {
        Pattern::Unstructured => "unstructured".into(),
        Pattern::NM { n, m } => format!("{n}:{m}"),
    }
}

/// What [`prune`] did.
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

/// Prunes the module's block linears. Wanda and SparseGPT need `calib`.
pub fn prune(
    m: &mut Module,
    opts: &PruneOptions,
    calib: Option<&Calibration>,
) -> Result<PruneStats, PassError> {
    opts.spec.validate().map_err(PassError::new)?;
    let spans = crate::calib::block_spans(m)?;
    let selected = |i: usize| opts.layers.as_ref().is_none_or(|l| l.contains(&i));
    // Every check before any work: widths against the pattern, the layer list, calibration.
    if let Some(l) = &opts.layers {
        if let Some(&bad) = l.iter().find(|&&i| i >= spans.len()) {
            return Err(PassError::new(format!(
                "layers: block {bad} does not exist (the model has {} blocks)",
                spans.len()
            )));
        }
    }
    let g = m.main_graph();
    for s in spans.iter().filter(|s| selected(s.index)) {
        for (role, l) in block_linears(s.attention.as_ref(), s.mlp.as_ref()) {
            if opts.linears.contains(&role) {
                opts.spec.check_width(l.in_features as usize).map_err(|e| {
                    PassError::at(g, l.node, format!("layer {} {role}: {e}", s.index))
                })?;
            }
        }
    }
    let mut stats = PruneStats {
        blocks: spans.iter().filter(|s| selected(s.index)).count(),
        ..PruneStats::default()
    };
    if !opts.spec.method.needs_hessian() {
        for s in spans.iter().filter(|s| selected(s.index)) {
            let mut line = format!("layer {}:", s.index);
            for (role, l) in block_linears(s.attention.as_ref(), s.mlp.as_ref()) {
                if opts.linears.contains(&role) {
                    let out = prune_linear(m, &l, None, &opts.spec)?;
                    record(&mut stats, &mut line, role, out);
                }
            }
            stats.per_layer.push(line);
        }
        return Ok(stats);
    }
    let calib = calib.ok_or_else(|| missing_calibration("prune"))?;
    let last = opts.layers.as_ref().and_then(|l| l.last().copied());
    walk_layers_until(m, calib, last, &mut |lcx: &mut LayerCx<'_>| {
        if !selected(lcx.block.index) {
            lcx.progress("kept dense");
            return Ok(());
        }
        let block = lcx.block.clone();
        let mut line = format!("layer {}:", block.index);
        for (role, out) in prune_block(lcx, opts)? {
            record(&mut stats, &mut line, role, out);
        }
        stats.per_layer.push(line);
        Ok(())
    })?;
    Ok(stats)
}

/// Prunes the block `lcx` stands at, in the true-sequential groups `[k, v, q] → [o] → [up,
/// gate] → [down]`: each group's input statistic is collected with the weights as the previous
/// groups left them. Returns each pruned linear's outcome, in [`ROLES`] order.
pub fn prune_block(
    lcx: &mut LayerCx<'_>,
    opts: &PruneOptions,
) -> Result<Vec<(&'static str, PruneOutcome)>, PassError> {
    let block = lcx.block.clone();
    let linears = block_linears(block.attention.as_ref(), block.mlp.as_ref());
    let mut results: Vec<(&'static str, PruneOutcome)> = Vec::new();
    for group in GROUPS {
        let members: Vec<(&'static str, Linear)> = linears
            .iter()
            .filter(|(r, _)| group.contains(r) && opts.linears.contains(r))
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
        let kind = if opts.spec.method == PruneMethod::Wanda {
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
                Stat::ColSumSq { sums, .. } => {
                    prune_linear_diag(lcx.module(), l, sums, &opts.spec)?
                }
                Stat::Gram(g) => {
                    let h = g.hessian();
                    prune_linear(lcx.module(), l, Some(&h), &opts.spec)?
                }
                _ => return Err(PassError::new("the evaluator returned no statistics")),
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

pub fn record(stats: &mut PruneStats, line: &mut String, role: &str, out: PruneOutcome) {
    stats.linears += 1;
    stats.zeros += out.zeros;
    stats.total += out.total;
    let _ = write!(line, " {role} {:.1} %", 100.0 * out.sparsity());
}

/// The weight of `l` as `rows × cols` f64 (one row per output feature).
pub fn linear_weight(m: &Module, l: &Linear) -> Result<(Vec<f64>, usize, usize), PassError> {
    let g = m.main_graph();
    let t = m.tensor(l.weight.tensor);
    let v = weights::decode(t).map_err(|e| PassError::at(g, l.weight.konst, e))?;
    let (rows, cols) = (l.out_features as usize, l.in_features as usize);
    if v.len() != rows * cols {
        return Err(PassError::at(
            g,
            l.node,
            "weight size does not match the layer",
        ));
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
    let out = prune_matrix_diag(&mut w, rows, cols, diag, spec)
        .map_err(|e| PassError::at(m.main_graph(), l.node, e))?;
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
    let out = prune_matrix(&mut w, rows, cols, h, spec)
        .map_err(|e| PassError::at(m.main_graph(), l.node, e))?;
    set_linear_weight(m, &l, &w)?;
    Ok(out)
}
