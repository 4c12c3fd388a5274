//! `sparsify{pattern=N:M, layers, linears}`: stores the blocks' N:M-pruned linear weights in the
//! compact form `ortho.SparseLinear(x, values, indices)` (see `ortho_ir::sparse` for the
//! layout), so the engine computes only the kept weights and the file holds only them.
//!
//! Needs: the structure analysis (blocks and their linears; dense f32 `MatMul` weights, stored
//! `[in, out]` or read through a `Transpose`) whose weights already have the exact pattern —
//! `prune{pattern=2:4}` or `denoise-prune` leave it. Nothing is approximated: a weight with a
//! group of more than `N` non-zeros is an error naming the matrix, the row and the group (the
//! module is left unchanged: every weight is checked before the first is rewritten), never
//! silently kept dense. Leaves: `ortho.SparseLinear` in place of each chosen `MatMul` (name,
//! result and type kept; a bias `Add` after it stays), the old weights removed when nothing
//! else reads them, the `ortho` opset imported. The product is the same sums of the same
//! weights; only the order of the additions changes. Notes: the linears converted and the
//! compact bytes against the dense bytes. `lower-ortho` (run before every ONNX export unless
//! `--emit-sparse`) expands the weights back to dense `MatMul`s.

use crate::calib::block_spans;
use crate::linalg::replace::{swap_linears, LinearSwap};
use crate::options::OptionError;
use crate::pass::{PassContext, PassError, PassErrorKind, PassResult};
use crate::selection::{BlockSelection, RoleSelection, LAYERS, LINEARS};
use crate::sparsity::linears::{block_linears, linear_weight};
use crate::sparsity::matrix::Pattern;
use ortho_ir::analysis::linear::{Linear, LinearOp};
use ortho_ir::op_ortho::OrthoOp;
use ortho_ir::sparse::NmSparse;
use ortho_ir::{DType, Module, TensorData};

crate::pass_options! {
    /// Options of [`sparsify`].
    #[derive(Debug, Clone, PartialEq)]
    pub struct SparsifyOptions {
        pub pattern: Pattern = {
            name: "pattern",
            default: Pattern::NM { n: 2, m: 4 },
            doc: "N:M (at most N kept of every M consecutive input weights of a row) the weights must already have.",
        },
        pub layers: BlockSelection = LAYERS,
        pub linears: RoleSelection = LINEARS,
    }
    check: SparsifyOptions::check;
}

impl SparsifyOptions {
    /// The compact pattern these options ask for.
    pub fn nm(&self) -> Result<NmSparse, OptionError> {
        match self.pattern {
            Pattern::NM { n, m } => NmSparse::new(n, m).map_err(|e| OptionError::Invalid(e.to_string())),
            Pattern::Unstructured => Err(OptionError::Invalid(
                "pattern: sparsify needs an N:M pattern (unstructured zeros have no compact form here)".into(),
            )),
        }
    }

    fn check(&self) -> Result<(), OptionError> {
        self.nm().map(|_| ())
    }
}

crate::declare_pass! {
    name: "sparsify",
    summary: "Stores the blocks' N:M-pruned linear weights compactly (ortho.SparseLinear: kept values + per-group indices); a weight without the pattern is an error.",
    options: SparsifyOptions,
    run: run_pass,
}

/// What [`sparsify`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SparsifyStats {
    pub linears: usize,
    /// Bytes of the dense weights replaced.
    pub dense_bytes: u64,
    /// Bytes of their values and indices.
    pub compact_bytes: u64,
}

fn run_pass(
    m: &mut Module,
    opts: &SparsifyOptions,
    cx: &mut PassContext,
) -> Result<PassResult, PassError> {
    let st = sparsify(m, opts)?;
    cx.note(format!(
        "{} linears in {} form: {} of {} dense bytes ({:.4}x)",
        st.linears,
        opts.pattern,
        st.compact_bytes,
        st.dense_bytes,
        st.compact_bytes as f64 / st.dense_bytes.max(1) as f64
    ));
    cx.stat("linears", st.linears as u64);
    cx.stat("dense-bytes", st.dense_bytes);
    cx.stat("compact-bytes", st.compact_bytes);
    Ok(PassResult::changed(st.linears > 0))
}

/// One linear to convert, checked and compressed before anything changes.
struct Target {
    l: Linear,
    name: String,
    values: TensorData,
    indices: TensorData,
}

/// Converts the chosen block linears of the main graph to `ortho.SparseLinear`.
pub fn sparsify(m: &mut Module, opts: &SparsifyOptions) -> Result<SparsifyStats, PassError> {
    let nm = opts
        .nm()
        .map_err(|e| PassError::new(e.to_string()).with_kind(PassErrorKind::InvalidOptions))?;
    let spans = block_spans(m)?;
    if let Some(l) = &opts.layers.0 {
        if let Some(&bad) = l.iter().find(|&&i| i >= spans.len()) {
            return Err(PassError::new(format!(
                "layers: block {bad} does not exist (the model has {} blocks)",
                spans.len()
            ))
            .with_kind(PassErrorKind::InvalidOptions));
        }
    }
    // 1. Collect and check every weight first: an error leaves the module untouched.
    let mut targets = Vec::new();
    let mut stats = SparsifyStats::default();
    for s in spans.iter().filter(|s| opts.layers.contains(s.index)) {
        for (role, l) in block_linears(s.attention.as_ref(), s.mlp.as_ref()) {
            if !opts.linears.contains(role) {
                continue;
            }
            let name = weight_name(m, &l);
            let what = format!("layer {} {role} (weight '{name}')", s.index);
            let unsupported = |msg: String| {
                PassError::at_main(m, l.node, format!("{what}: {msg}"))
                    .with_kind(PassErrorKind::Unsupported)
            };
            if l.dense().is_none() || l.op != LinearOp::MatMul || l.weight_slot != 1 {
                return Err(unsupported(
                    "only dense MatMul(x, W) linears can be stored in compact form".into(),
                ));
            }
            let dtype = m.tensor(l.weight.tensor).dtype;
            if dtype != DType::F32 {
                return Err(unsupported(format!(
                    "the weight is {dtype}; the compact form is written for f32 weights"
                )));
            }
            let (w, rows, cols) = linear_weight(m, &l)?;
            // f32 → f64 → f32 is exact, so the kept values are the stored bits.
            let w32: Vec<f32> = w.iter().map(|&x| x as f32).collect();
            let (vals, idx) = nm.compress(&w32, rows, cols).map_err(|e| {
                PassError::at_main(
                    m,
                    l.node,
                    format!("{what} does not have the {} pattern: {e}", opts.pattern),
                )
                .with_kind(PassErrorKind::Weights)
            })?;
            let groups = cols / nm.m;
            let vdims = vec![rows as i64, (groups * nm.n) as i64];
            let idims = vec![rows as i64, (groups * nm.group_bytes()) as i64];
            let mut values = TensorData::from_f32(vdims, &vals);
            let mut indices = TensorData::from_bytes(DType::U8, idims, idx);
            if !name.is_empty() {
                values.name = format!("{name}.nm_values");
                indices.name = format!("{name}.nm_indices");
            }
            stats.linears += 1;
            stats.dense_bytes += (rows * cols * 4) as u64;
            stats.compact_bytes += values.byte_len() + indices.byte_len();
            targets.push(Target {
                l,
                name,
                values,
                indices,
            });
        }
    }
    // 2. Mutate: new constants and ops, then the weights nobody reads any more.
    let swaps = targets
        .into_iter()
        .map(|t| {
            let base = if t.name.is_empty() { "sparse" } else { &t.name };
            LinearSwap {
                op: OrthoOp::SparseLinear(nm),
                constants: vec![
                    (t.values, format!("{base}.nm_values")),
                    (t.indices, format!("{base}.nm_indices")),
                ],
                linear: t.l,
            }
        })
        .collect();
    swap_linears(m, swaps);
    Ok(stats)
}

/// The weight's value name (an imported initializer's name), else its tensor's.
fn weight_name(m: &Module, l: &Linear) -> String {
    m.main_graph()
        .node(l.weight.konst)
        .outputs
        .first()
        .map(|o| o.name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| m.tensor(l.weight.tensor).name.clone())
}
