//! `lora{rank=r seed layers linears}`: the baseline orthogonal fine-tuning is compared against.
//! Each chosen weight (stored `rows × cols`) becomes `W0 + A·B` with `W0` frozen, `A`
//! (`rows × r`) Gaussian with standard deviation `1/√rows` and `B` (`r × cols`) zero, so the
//! rewritten model computes exactly the original; `A` and `B` train
//! (`autodiff{trainable=*.lora_a|*.lora_b}`, `train --trainable '*.lora_a|*.lora_b'`).
//! Trainable parameters per weight: `r·(rows + cols)`.
//!
//! Needs: the structure analysis (blocks and their dense f32 linears). Leaves: constants
//! `<weight>.lora_base`, `.lora_a`, `.lora_b`, a MatMul and an Add whose result has the
//! weight's name and layout; the Add's `doc` records `lora rank=r stem=<weight>` for
//! `lora-merge`. Refused before any change: a rank above `min(rows, cols)`, naming the matrix.

use super::emit::{f32_tensor, Emitter};
use super::reparam::{chosen_weights, install};
use super::rng::SplitMix;
use crate::pass::{PassContext, PassError, PassErrorKind, PassResult};
use crate::selection::{BlockSelection, RoleSelection, LAYERS, LINEARS};
use crate::OptionKind;
use ortho_ir::{Module, Op};

crate::pass_options! {
    /// Options of [`lora`].
    #[derive(Debug, Clone, PartialEq)]
    pub struct LoraOptions {
        pub rank: usize = {
            name: "rank",
            default: 8,
            doc: "Rank r of the trainable update A·B (r·(rows + cols) parameters per weight).",
            kind: OptionKind::Int { min: 1, max: 65_536 },
        },
        pub seed: u64 = {
            name: "seed",
            default: 0,
            doc: "Seed of A's Gaussian initialization.",
        },
        pub layers: BlockSelection = LAYERS,
        pub linears: RoleSelection = LINEARS,
    }
}

crate::declare_pass! {
    name: "lora",
    summary: "Adds a trainable low-rank update W0 + A·B (B = 0) to the blocks' linears (LoRA, the baseline of POET).",
    options: LoraOptions,
    run: run_pass,
}

/// What [`lora`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoraStats {
    pub linears: usize,
    pub dense_params: usize,
    pub trainable: usize,
}

/// The record in the `doc` of a LoRA update's last node.
pub fn parse_doc(doc: &str) -> Option<(usize, String)> {
    let rest = doc.strip_prefix("lora rank=")?;
    let (r, stem) = rest.split_once(" stem=")?;
    Some((r.parse().ok()?, stem.to_string()))
}

/// Adds the low-rank updates (see the module docs).
pub fn lora(m: &mut Module, opts: &LoraOptions) -> Result<LoraStats, PassError> {
    let targets = chosen_weights(m, &opts.layers, &opts.linears, "adapted")?;
    if let Some(t) = targets.iter().find(|t| opts.rank > t.rows.min(t.cols)) {
        return Err(PassError::at_main(
            m,
            t.l.node,
            format!(
                "layer {} {} weight '{}' ({}x{}): rank {} exceeds {}",
                t.block,
                t.role,
                t.stem,
                t.rows,
                t.cols,
                opts.rank,
                t.rows.min(t.cols)
            ),
        )
        .with_kind(PassErrorKind::InvalidOptions));
    }
    let mut stats = LoraStats::default();
    for (i, t) in targets.iter().enumerate() {
        let mut rng = SplitMix::new(opts.seed ^ (0x10AA_0000 + i as u64).wrapping_mul(0x9E37_79B9));
        let r = opts.rank;
        let sd = 1.0 / (t.rows as f64).sqrt();
        let a: Vec<f64> = (0..t.rows * r).map(|_| sd * rng.gaussian()).collect();
        install(m, t, |m| {
            let mut e = Emitter::new(m, &t.stem);
            let base = e.named_const(
                &format!("{}.lora_base", t.stem),
                f32_tensor(vec![t.rows as i64, t.cols as i64], &t.w),
            );
            let av = e.named_const(
                &format!("{}.lora_a", t.stem),
                f32_tensor(vec![t.rows as i64, r as i64], &a),
            );
            let bv = e.named_const(
                &format!("{}.lora_b", t.stem),
                f32_tensor(vec![r as i64, t.cols as i64], &vec![0.0; r * t.cols]),
            );
            let ab = e.op(Op::MatMul, &[av, bv], "update");
            let out = e.op(Op::Add, &[base, ab], "adapted");
            e.m.main_graph_mut().node_mut(out.node).doc = format!("lora rank={r} stem={}", t.stem);
            out
        })?;
        stats.linears += 1;
        stats.dense_params += t.rows * t.cols;
        stats.trainable += r * (t.rows + t.cols);
    }
    if stats.linears > 0 {
        ortho_ir::shape::infer_shapes(m);
    }
    Ok(stats)
}

fn run_pass(
    m: &mut Module,
    opts: &LoraOptions,
    cx: &mut PassContext,
) -> Result<PassResult, PassError> {
    let s = lora(m, opts)?;
    cx.note(format!(
        "lora r={}: {} linears, {} trainable parameters for {} dense ({:.2} %)",
        opts.rank,
        s.linears,
        s.trainable,
        s.dense_params,
        100.0 * s.trainable as f64 / s.dense_params.max(1) as f64
    ));
    cx.stat("linears", s.linears as u64);
    cx.stat("trainable", s.trainable as u64);
    Ok(PassResult::changed(s.linears > 0))
}
