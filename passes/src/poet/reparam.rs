//! `poet-reparam{kind=bs|fs block=b neumann-terms=k init=keep|normalized-gaussian seed layers
//! linears indivisible=error|skip}`: each chosen linear's weight becomes `R·W0·P`, computed
//! from trainable skew parameters that start at zero (see [`crate::poet`] for the layout and
//! why the weight is materialized once per step).
//!
//! Needs: the structure analysis (blocks and their linears q, k, v, o, gate, up, down; dense
//! f32 weights, stored directly or through one Transpose). Leaves: in place of each chosen
//! weight constant, a subgraph of standard ops whose result has the constant's name and layout;
//! new constants `<weight>.poet_base` (the frozen `W0`, stored permuted), `.poet_rows_perm`,
//! `.poet_cols_perm` (i64 inverse permutations) and `.poet_skew_rows`, `.poet_skew_cols` (the
//! trainable parameters, zero; `autodiff{trainable=*.poet_skew_*}`); the last node's `doc`
//! records the configuration for `poet-merge`. With `init=keep` the rewritten model computes
//! exactly the original (every op on the path is exact at zero skew: `R = I`); with
//! `init=normalized-gaussian` `W0` is replaced by a row-normalized Gaussian matrix (training
//! from scratch). Refused before any change: a block size that does not fit a chosen matrix
//! (naming it and the sizes that fit all of them), unless `indivisible=skip`, which leaves that
//! linear dense with a note.

use super::emit::emit_weight;
use super::rng::SplitMix;
use super::{
    block_sizes, gcd, side_blocks, Indivisible, PoetInit, PoetKind, PoetRecord, PoetState,
};
use crate::linalg::weights;
use crate::pass::{PassContext, PassError, PassErrorKind, PassResult};
use crate::selection::{BlockSelection, RoleSelection, LAYERS, LINEARS};
use crate::sparsity::linears::block_linears;
use crate::OptionKind;
use ortho_ir::analysis::linear::Linear;
use ortho_ir::{DType, Module, ValueId};

crate::pass_options! {
    /// Options of [`poet_reparam`].
    #[derive(Debug, Clone, PartialEq)]
    pub struct PoetReparamOptions {
        pub kind: PoetKind = {
            name: "kind",
            default: PoetKind::Bs,
            doc: "bs: random permutation then block-diagonal O(b) blocks; fs: one O(b) block on a random index set.",
        },
        pub block: usize = {
            name: "block",
            default: 64,
            doc: "Block size b (bs: must divide both dimensions of every chosen weight; fs: at most the smaller one).",
            kind: OptionKind::Int { min: 2, max: 65_536 },
        },
        pub neumann_terms: usize = {
            name: "neumann-terms",
            default: 5,
            doc: "Powers of Q kept in the Cayley series R = I + 2(Q + … + Q^k).",
            kind: OptionKind::Int { min: 1, max: 32 },
        },
        pub init: PoetInit = {
            name: "init",
            default: PoetInit::Keep,
            doc: "W0: keep the model's weight, or normalized-gaussian (unit-norm Gaussian rows, from scratch).",
        },
        pub seed: u64 = {
            name: "seed",
            default: 0,
            doc: "Seed of the permutations (and of W0 with init=normalized-gaussian).",
        },
        pub layers: BlockSelection = LAYERS,
        pub linears: RoleSelection = LINEARS,
        pub indivisible: Indivisible = {
            name: "indivisible",
            default: Indivisible::Error,
            doc: "A weight the block does not fit: error, or skip it (left dense, with a note).",
        },
    }
}

crate::declare_pass! {
    name: "poet-reparam",
    summary: "Reparameterizes the blocks' linears as R·W0·P (POET) with trainable Cayley–Neumann skew parameters starting at zero.",
    options: PoetReparamOptions,
    run: run_pass,
}

/// What [`poet_reparam`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoetReparamStats {
    pub linears: usize,
    /// Parameters of the reparameterized dense weights.
    pub dense_params: usize,
    /// Skew parameters (trainable).
    pub trainable: usize,
    /// One line per linear, and one per skipped linear.
    pub lines: Vec<String>,
}

pub(crate) struct Target {
    pub block: usize,
    pub role: &'static str,
    pub l: Linear,
    pub stem: String,
    /// The constant's value, its stored dims and values.
    pub konst: ValueId,
    pub rows: usize,
    pub cols: usize,
    pub w: Vec<f64>,
}

/// The name a weight's constant goes by: its value name, else its tensor's.
fn weight_name(m: &Module, l: &Linear) -> String {
    m.main_graph()
        .node(l.weight.konst)
        .outputs
        .first()
        .map(|o| o.name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| m.tensor(l.weight.tensor).name.clone())
}

/// A row-normalized Gaussian `W0` in the stored layout of `t` (rows of `W` are output neurons;
/// the stored axis `in_axis` runs over the inputs).
fn normalized_gaussian(t: &Target, rng: &mut SplitMix) -> Vec<f64> {
    let in_axis = t.l.weight.in_axis;
    let (outs, ins) = if in_axis == 1 {
        (t.rows, t.cols)
    } else {
        (t.cols, t.rows)
    };
    let mut w = vec![0.0; t.rows * t.cols];
    for o in 0..outs {
        let row: Vec<f64> = (0..ins).map(|_| rng.gaussian()).collect();
        let norm = row
            .iter()
            .map(|x| x * x)
            .sum::<f64>()
            .sqrt()
            .max(f64::MIN_POSITIVE);
        for (i, x) in row.iter().enumerate() {
            let k = if in_axis == 1 {
                o * t.cols + i
            } else {
                i * t.cols + o
            };
            w[k] = x / norm;
        }
    }
    w
}

/// The chosen blocks' dense f32 weights, read before anything changes (shared with `lora`).
pub(crate) fn chosen_weights(
    m: &Module,
    layers: &BlockSelection,
    linears: &RoleSelection,
    verb: &str,
) -> Result<Vec<Target>, PassError> {
    let spans = crate::calib::block_spans(m)?;
    if let Some(l) = &layers.0 {
        if let Some(&bad) = l.iter().find(|&&i| i >= spans.len()) {
            return Err(PassError::new(format!(
                "layers: block {bad} does not exist (the model has {} blocks)",
                spans.len()
            ))
            .with_kind(PassErrorKind::InvalidOptions));
        }
    }
    // 1. The chosen weights, read and checked before anything changes.
    let mut targets = Vec::new();
    for s in &spans {
        if !layers.contains(s.index) {
            continue;
        }
        for (role, l) in block_linears(s.attention.as_ref(), s.mlp.as_ref()) {
            if !linears.contains(role) {
                continue;
            }
            let what = format!("layer {} {role}", s.index);
            if l.dense().is_none() {
                return Err(PassError::at_main(
                    m,
                    l.node,
                    format!("{what}: only dense linears can be {verb}"),
                )
                .with_kind(PassErrorKind::Unsupported));
            }
            let t = m.tensor(l.weight.tensor);
            if t.dtype != DType::F32 || t.dims.len() != 2 {
                return Err(PassError::at_main(
                    m,
                    l.weight.konst,
                    format!(
                        "{what}: POET trains 2-D f32 weights, this one is {} {:?}",
                        t.dtype.name(),
                        t.dims
                    ),
                )
                .with_kind(PassErrorKind::Weights));
            }
            let (rows, cols) = (t.dims[0] as usize, t.dims[1] as usize);
            let w = weights::decode(t).map_err(|e| {
                PassError::at_main(m, l.weight.konst, e.to_string())
                    .with_kind(PassErrorKind::Weights)
            })?;
            targets.push(Target {
                block: s.index,
                role,
                stem: weight_name(m, &l),
                konst: ValueId {
                    node: l.weight.konst,
                    output: 0,
                },
                l,
                rows,
                cols,
                w,
            });
        }
    }
    Ok(targets)
}

/// Replaces `t`'s weight constant, where its linear reads it, by the result of `emit`; the
/// result takes the constant's name when the constant is left unused (and removed), so the
/// rewritten graph and its merge read the weight under the same name.
pub(crate) fn install(
    m: &mut Module,
    t: &Target,
    emit: impl FnOnce(&mut Module) -> ValueId,
) -> Result<(), PassError> {
    let g = m.main_graph();
    let (consumer, slot) = match t.l.weight.transpose {
        Some(tr) => (tr, 0),
        None => (t.l.node, t.l.weight_slot),
    };
    if g.node(consumer).operand(slot) != Some(t.konst) {
        return Err(
            PassError::at_main(m, consumer, "the weight is no longer read here")
                .with_kind(PassErrorKind::Unsupported),
        );
    }
    let out = emit(m);
    let g = m.main_graph_mut();
    g.set_operand(consumer, slot, Some(out));
    let name = if g.users(t.konst).is_empty() && !g.outputs.iter().any(|o| o.value == t.konst) {
        g.remove_node(t.konst.node);
        t.stem.clone()
    } else {
        format!("{}.rewritten", t.stem)
    };
    g.node_mut(out.node).outputs[0].name = name;
    Ok(())
}

/// Reparameterizes the chosen linears of `m` (see the module docs).
pub fn poet_reparam(
    m: &mut Module,
    opts: &PoetReparamOptions,
) -> Result<PoetReparamStats, PassError> {
    let targets = chosen_weights(m, &opts.layers, &opts.linears, "reparameterized")?;
    let mut stats = PoetReparamStats::default();
    let fits = |t: &Target| {
        side_blocks(opts.kind, opts.block, t.rows).is_some()
            && side_blocks(opts.kind, opts.block, t.cols).is_some()
    };
    if let Some(bad) = targets.iter().find(|t| !fits(t)) {
        if opts.indivisible == Indivisible::Error {
            let g = targets.iter().fold(0, |g, t| gcd(gcd(g, t.rows), t.cols));
            let why = match opts.kind {
                PoetKind::Bs => format!(
                    "block {} does not divide {}x{} (block sizes that divide every chosen matrix: {})",
                    opts.block,
                    bad.rows,
                    bad.cols,
                    block_sizes(g)
                        .iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                PoetKind::Fs => format!(
                    "block {} exceeds a side of {}x{} (at most {})",
                    opts.block,
                    bad.rows,
                    bad.cols,
                    targets.iter().map(|t| t.rows.min(t.cols)).min().unwrap_or(0)
                ),
            };
            return Err(PassError::at_main(
                m,
                bad.l.node,
                format!(
                    "layer {} {} weight '{}': {why}",
                    bad.block, bad.role, bad.stem
                ),
            )
            .with_kind(PassErrorKind::InvalidOptions));
        }
    }
    // 2. Rewrite, one weight at a time; each draws from its own stream so the choice of
    //    linears does not change another linear's permutations.
    for (i, t) in targets.iter().enumerate() {
        if !fits(t) {
            stats.lines.push(format!(
                "layer {} {} ({}x{}): skipped, block {} does not fit",
                t.block, t.role, t.rows, t.cols, opts.block
            ));
            continue;
        }
        let mut rng =
            SplitMix::new(opts.seed ^ (0x5EED_0000_0000 + i as u64).wrapping_mul(0x9E37_79B9));
        let w0 = match opts.init {
            PoetInit::Keep => t.w.clone(),
            PoetInit::NormalizedGaussian => normalized_gaussian(t, &mut rng),
        };
        let Some(state) = PoetState::new(
            &w0,
            t.rows,
            t.cols,
            opts.kind,
            opts.block,
            opts.neumann_terms,
            &mut rng,
        ) else {
            continue;
        };
        let rec = PoetRecord {
            kind: opts.kind,
            block: opts.block,
            terms: opts.neumann_terms,
            stem: t.stem.clone(),
        };
        install(m, t, |m| emit_weight(m, &rec, &state))?;
        stats.linears += 1;
        stats.dense_params += t.rows * t.cols;
        stats.trainable += state.trainable();
        stats.lines.push(format!(
            "layer {} {} ({}x{}): {} skew parameters ({:.2} % of the weight)",
            t.block,
            t.role,
            t.rows,
            t.cols,
            state.trainable(),
            100.0 * state.trainable() as f64 / (t.rows * t.cols) as f64
        ));
    }
    if stats.linears > 0 {
        ortho_ir::shape::infer_shapes(m);
    }
    Ok(stats)
}

fn run_pass(
    m: &mut Module,
    opts: &PoetReparamOptions,
    cx: &mut PassContext,
) -> Result<PassResult, PassError> {
    let stats = poet_reparam(m, opts)?;
    for line in &stats.lines {
        cx.note(line.clone());
    }
    cx.note(format!(
        "poet {} b={} k={}: {} linears, {} trainable skew parameters for {} dense ({:.2} %)",
        opts.kind.word(),
        opts.block,
        opts.neumann_terms,
        stats.linears,
        stats.trainable,
        stats.dense_params,
        100.0 * stats.trainable as f64 / stats.dense_params.max(1) as f64
    ));
    cx.stat("linears", stats.linears as u64);
    cx.stat("trainable", stats.trainable as u64);
    Ok(PassResult::changed(stats.linears > 0))
}
