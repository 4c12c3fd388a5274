//! The graph side of `denoise-rotate`: finding the decoder layers and their seven linears,
//! building each layer's [`LayerProblem`] from the weights and calibration statistics, and
//! folding the chosen rotations back into the weights (f64, cast once). Not a pass.
//!
//! Folding (ALGORITHMS.md §0.1.4, §0.1.6): every fold site of the residual stream (from the gauge
//! analysis: embedding, readers, writers, stream biases) maps each stream fiber `x ↦ x Q`; `v`
//! additionally maps its output fibers by `R` (blockdiag of the KV heads' `R2_j`, and its bias
//! alike) and `o` its input fibers by `R_rep` (`R2_j` repeated over the query heads of group
//! `j`). With one `Q` per layer (`per-layer`), the embedding takes the first layer's `Q`, the
//! head the last one's, and the stream entering layer `i > 0` is multiplied by the boundary
//! matrix `Q_{i−1}ᵀ Q_i` (one `MatMul`, omitted when it is exactly the identity).

use crate::linalg::weights::{self, Rewrite, WeightError};
use crate::pass::{PassError, PassErrorKind};
use crate::rotation_search::loss::{Heads, Importance, LayerProblem};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use ortho_ir::analysis::transformer::{BranchKind, Placement};
use ortho_ir::analysis::{analyze_transformer, Group, Linear, SiteRole, StreamClass};
use ortho_ir::eval::{Stat, StatKind, StatRequest};
use ortho_ir::{Dim, Module, NodeId, Op, Output, TensorData, Type, ValueId};
use std::collections::HashMap;

/// One decoder layer as the pass sees it.
#[derive(Debug, Clone)]
pub struct LayerParts {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    pub heads: Heads,
    /// The stream value entering the layer (read by its first norm and residual add).
    pub stream_in: ValueId,
}

/// The layers of the main graph and its residual stream class.
#[derive(Debug, Clone)]
pub struct Layers {
    pub d: usize,
    pub layers: Vec<LayerParts>,
    pub class: StreamClass,
    /// The linear nodes of the heads (read the last layer's basis).
    pub heads: Vec<NodeId>,
}

fn need<T>(x: Option<T>, m: &Module, n: NodeId, what: &str) -> Result<T, PassError> {
    x.ok_or_else(|| PassError::at_main(m, n, format!("denoise-rotate needs {what}")))
}

/// Finds the layers, refusing (with the blocking node) a stream that does not admit O(d).
pub fn find_layers(m: &Module) -> Result<Layers, PassError> {
    let gid = m.main;
    let s = analyze_transformer(m, gid);
    let g = m.graph(gid);
    let Some(class) = s.gauge.main() else {
        return Err(PassError::new(
            "no residual stream found: no embedding lookup (Gather of a constant [vocab, d] table)",
        ));
    };
    if !class.admits.contains(Group::ORTHOGONAL) {
        let msg = |r: String| format!("the residual stream does not admit rotations: {r}");
        return Err(match class.blocker_for(Group::ORTHOGONAL) {
            Some(b) => PassError::at_main(m, b.node, msg(b.reason())),
            None => PassError::new(msg("its norms admit no rotation".into())),
        });
    }
    if s.placement != Placement::PreNorm {
        return Err(PassError::new(
            "denoise-rotate needs a pre-norm transformer (norms reading the stream)",
        ));
    }
    let d = usize::try_from(class.width).unwrap_or(0);
    let mut layers = Vec::new();
    for (i, b) in s.blocks.iter().enumerate() {
        let (Some(ai), Some(mi)) = (b.attention, b.mlp) else {
            let msg = format!("block {i} is not an attention branch followed by an MLP branch");
            return Err(
                match [b.attention, b.mlp, b.other].into_iter().flatten().next() {
                    Some(br) => PassError::at_main(m, s.branches[br].add, msg),
                    None => PassError::new(msg),
                },
            );
        };
        let (ab, mb) = (&s.branches[ai], &s.branches[mi]);
        let BranchKind::Attention(att) = &ab.kind else {
            return Err(PassError::at_main(
                m,
                ab.add,
                "expected an attention branch",
            ));
        };
        let BranchKind::Mlp(mlp) = &mb.kind else {
            return Err(PassError::at_main(m, mb.add, "expected an MLP branch"));
        };
        let at = att.o.node;
        if att.fused.is_some() {
            return Err(PassError::at_main(
                m,
                at,
                "denoise-rotate needs decomposed attention (q/k/v/o as linears)",
            ));
        }
        let q = need(att.q, m, at, "a q projection")?;
        let k = need(att.k, m, at, "a k projection")?;
        let v = need(att.v, m, at, "a v projection")?;
        let heads = Heads {
            heads: need(att.heads, m, at, "the head count")? as usize,
            kv_heads: need(att.kv_heads, m, at, "the KV head count")? as usize,
            head_dim: need(att.head_dim, m, at, "the head size")? as usize,
        };
        if heads.kv_heads == 0 || !heads.heads.is_multiple_of(heads.kv_heads) {
            return Err(PassError::at_main(
                m,
                at,
                "query heads are not a multiple of KV heads",
            ));
        }
        if v.out_features as usize != heads.kv_heads * heads.head_dim
            || att.o.in_features as usize != heads.heads * heads.head_dim
        {
            return Err(PassError::at_main(
                m,
                at,
                "v/o widths do not match the head layout",
            ));
        }
        if k.input != q.input || v.input != q.input {
            return Err(PassError::at_main(
                m,
                q.node,
                "q, k and v do not read the same value",
            ));
        }
        let gate = need(mlp.gate, m, mlp.down.node, "a gated MLP (gate, up, down)")?;
        if gate.input != mlp.up.input {
            return Err(PassError::at_main(
                m,
                gate.node,
                "gate and up do not read the same value",
            ));
        }
        // The layer problem reads every weight as one dense matrix.
        for lin in [&q, &k, &v, &att.o, &gate, &mlp.up, &mlp.down] {
            if lin.dense().is_none() {
                return Err(PassError::at_main(
                    m,
                    lin.node,
                    format!(
                        "per-layer rotations need dense linears; this is a {} linear (rotate before factorizing, or run lower-ortho first)",
                        lin.kind_name()
                    ),
                ));
            }
        }
        let add = g.node(ab.add);
        let stream_in = add.inputs().find(|x| *x != att.o.output).ok_or_else(|| {
            PassError::at_main(m, ab.add, "residual add without a stream operand")
        })?;
        layers.push(LayerParts {
            q,
            k,
            v,
            o: att.o,
            gate,
            up: mlp.up,
            down: mlp.down,
            heads,
            stream_in,
        });
    }
    if layers.is_empty() {
        return Err(PassError::new("no decoder layer found"));
    }
    Ok(Layers {
        d,
        layers,
        class: class.clone(),
        heads: s.heads.iter().map(|h| h.linear.node).collect(),
    })
}

/// Statistics per layer in [`requests`].
pub const REQUESTS_PER_LAYER: usize = 3;

/// The statistics the method needs, three per layer (q/k/v input, gate/up input, o input);
/// none for magnitude. down's input needs none: its groups are columns, over which a
/// per-column factor cancels.
pub fn requests(layers: &Layers, method: Importance) -> Vec<StatRequest> {
    if method == Importance::Magnitude {
        return Vec::new();
    }
    layers
        .layers
        .iter()
        .flat_map(|l| [l.q.input, l.gate.input, l.o.input])
        .map(|value| StatRequest {
            value,
            kind: StatKind::Gram,
        })
        .collect()
}

/// The weight of a linear as an out×in f32 matrix.
fn out_in(m: &Module, l: &Linear) -> Result<Mat<f32>, WeightError> {
    let t = m.tensor(l.weight.tensor);
    let v = weights::decode(t)?;
    let (r, c) = (t.dims[0] as usize, t.dims[1] as usize);
    Ok(if l.weight.in_axis == 1 {
        Mat::from_fn(r, c, |a, b| v[a * c + b] as f32)
    } else {
        Mat::from_fn(c, r, |a, b| v[b * c + a] as f32)
    })
}

fn stack(a: Mat<f32>, b: Mat<f32>) -> Mat<f32> {
    let n = a.nrows();
    Mat::from_fn(n + b.nrows(), a.ncols(), |i, j| {
        if i < n {
            a[(i, j)]
        } else {
            b[(i - n, j)]
        }
    })
}

/// Why a column factor could not be computed; `what` names the linear.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FactorError {
    #[error("no calibration statistics for {0}")]
    Missing(String),
    #[error("the damped input Hessian of {0} is not positive definite")]
    NotPositiveDefinite(String),
}

/// `M` of the column factor from a Gram statistic: `H` (Wanda) or `(H + λI)⁻¹` with
/// `λ = 0.01·mean diag H` (SparseGPT), computed in f64.
fn factor_matrix(stat: &Stat, method: Importance, what: &str) -> Result<Mat<f32>, FactorError> {
    let Stat::Gram(gram) = stat else {
        return Err(FactorError::Missing(what.to_string()));
    };
    let n = gram.dim;
    let h = gram.hessian();
    let h = Mat::<f64>::from_fn(n, n, |i, j| h[i * n + j]);
    if method != Importance::SparseGpt {
        return Ok(Mat::from_fn(n, n, |i, j| h[(i, j)] as f32));
    }
    let mean = (0..n).map(|i| h[(i, i)]).sum::<f64>() / n.max(1) as f64;
    // A dead input (all-zero column) gets a unit diagonal as SparseGPT does, so the damped
    // matrix is definite even when every column is dead.
    let damp = 0.01 * mean;
    let a = Mat::<f64>::from_fn(n, n, |i, j| {
        let mut x = h[(i, j)];
        if i == j {
            x += damp;
            if h[(i, i)] == 0.0 {
                x += 1.0;
            }
        }
        x
    });
    use faer::linalg::solvers::DenseSolveCore;
    let inv = match a.llt(faer::Side::Lower) {
        Ok(c) => c.inverse(),
        Err(_) => return Err(FactorError::NotPositiveDefinite(what.to_string())),
    };
    Ok(Mat::from_fn(n, n, |i, j| inv[(i, j)] as f32))
}

/// The per-input-column factor of a method's importance `s_ab = W_ab² c_b` from a Gram
/// statistic, unrotated: `diag(H)` (Wanda), `1 / diag((H + λI)⁻¹)` (SparseGPT), none
/// (magnitude).
pub(crate) fn column_factor(
    stat: &Stat,
    method: Importance,
    what: &str,
) -> Result<Option<Vec<f32>>, FactorError> {
    if method == Importance::Magnitude {
        return Ok(None);
    }
    let m = factor_matrix(stat, method, what)?;
    let inverse = method == Importance::SparseGpt;
    Ok(Some(
        (0..m.nrows())
            .map(|b| {
                let e = m[(b, b)] as f64;
                if inverse {
                    (1.0 / e.max(1e-30)) as f32
                } else {
                    e.max(0.0) as f32
                }
            })
            .collect(),
    ))
}

/// Builds layer `i`'s problem; `stats` holds the three statistics of [`requests`] for it
/// (empty for magnitude).
pub fn problem(
    m: &Module,
    layers: &Layers,
    i: usize,
    method: Importance,
    stats: &[Stat],
) -> Result<LayerProblem, PassError> {
    let l = &layers.layers[i];
    let g = m.graph(m.main);
    let w = |lin: &Linear| {
        out_in(m, lin).map_err(|e| {
            PassError::at_main(m, lin.node, e.to_string()).with_kind(PassErrorKind::Weights)
        })
    };
    let fm = |k: usize, lin: &Linear| -> Result<Option<Mat<f32>>, PassError> {
        if method == Importance::Magnitude {
            return Ok(None);
        }
        let st = stats.get(k).ok_or_else(|| {
            PassError::at_main(m, lin.node, "missing calibration statistics")
                .with_kind(PassErrorKind::Evaluation)
        })?;
        let mat = factor_matrix(st, method, &g.describe(lin.node)).map_err(|e| {
            let kind = match e {
                FactorError::Missing(_) => PassErrorKind::Evaluation,
                FactorError::NotPositiveDefinite(_) => PassErrorKind::Numeric,
            };
            PassError::at_main(m, lin.node, e.to_string()).with_kind(kind)
        })?;
        if mat.nrows() != lin.in_features as usize {
            return Err(PassError::at_main(
                m,
                lin.node,
                "calibration statistics of the wrong width",
            )
            .with_kind(PassErrorKind::Evaluation));
        }
        Ok(Some(mat))
    };
    Ok(LayerProblem {
        method,
        heads: l.heads,
        qk: stack(w(&l.q)?, w(&l.k)?),
        v: w(&l.v)?,
        o: w(&l.o)?,
        gate_up: stack(w(&l.gate)?, w(&l.up)?),
        down: w(&l.down)?,
        attn_m: fm(0, &l.q)?,
        mlp_m: fm(1, &l.gate)?,
        o_m: fm(2, &l.o)?,
        nm: None,
    })
}

/// The rotations to fold: one `Q1` (global) or one per layer, and each layer's `R2_j`.
#[derive(Debug, Clone)]
pub struct Rotations {
    pub q1: Vec<Mat<f64>>,
    pub r2: Vec<Vec<Mat<f64>>>,
}

/// What [`fold`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FoldStats {
    pub rewritten: usize,
    pub copies: usize,
    pub boundaries: usize,
}

/// The block-diagonal matrix of `blocks`.
pub(crate) fn block_diag(blocks: &[&Mat<f64>]) -> Mat<f64> {
    let n: usize = blocks.iter().map(|b| b.nrows()).sum();
    let mut out = Mat::<f64>::zeros(n, n);
    let mut at = 0;
    for b in blocks {
        for j in 0..b.ncols() {
            for i in 0..b.nrows() {
                out[(at + i, at + j)] = b[(i, j)];
            }
        }
        at += b.nrows();
    }
    out
}

fn is_identity(m: &Mat<f64>) -> bool {
    (0..m.nrows()).all(|r| (0..m.ncols()).all(|c| m[(r, c)] == if r == c { 1.0 } else { 0.0 }))
}

/// `a · b` in f64.
pub(crate) fn mul64(a: faer::MatRef<'_, f64>, b: faer::MatRef<'_, f64>) -> Mat<f64> {
    let mut c = Mat::<f64>::zeros(a.nrows(), b.ncols());
    matmul(c.as_mut(), Accum::Replace, a, b, 1.0, Par::Seq);
    c
}

/// Maps every fiber along the listed axes of a stored 1-D or 2-D tensor: `x ↦ x M`.
fn transform(v: &[f64], dims: &[i64], ops: &[(usize, &Mat<f64>)]) -> Result<Vec<f64>, WeightError> {
    let (r, c) = match dims {
        [n] => (1, *n as usize),
        [r, c] => (*r as usize, *c as usize),
        _ => {
            return Err(WeightError::Shape(format!(
                "cannot rotate a tensor of shape {dims:?}"
            )))
        }
    };
    let mut s = faer::MatRef::from_row_major_slice(v, r, c).to_owned();
    for &(axis, q) in ops {
        let axis = if dims.len() == 1 { 1 } else { axis };
        let n = if axis == 1 { c } else { r };
        if q.nrows() != n {
            return Err(WeightError::Shape(format!(
                "axis {axis} of a tensor of shape {dims:?} is not {} wide",
                q.nrows()
            )));
        }
        s = if axis == 1 {
            mul64(s.as_ref(), q.as_ref())
        } else {
            mul64(q.transpose(), s.as_ref())
        };
    }
    let mut out = Vec::with_capacity(r * c);
    for i in 0..r {
        for j in 0..c {
            out.push(s[(i, j)]);
        }
    }
    Ok(out)
}

/// Folds `rot` into the weights of graph `main` and, per layer, inserts the boundary matrices.
pub fn fold(m: &mut Module, layers: &Layers, rot: &Rotations) -> Result<FoldStats, PassError> {
    let mut stats = fold_weights(m, layers, rot, true)?;
    if rot.q1.len() > 1 {
        stats.boundaries = insert_boundaries(m, layers, &rot.q1)?;
    }
    Ok(stats)
}

/// Folds layer `i`'s rotation (`q1`, and its KV heads' `r2`) into that layer's weights only —
/// its readers, writers and V/O heads, and the head when `i` is the last layer — and inserts no
/// node: the caller puts `h ↦ h Q` on the stream entering the layer and `h ↦ h Qᵀ` on the stream
/// leaving it (`insert_matmul`, `premultiply_matmul`). The embedding is never touched, so a
/// cached embedding output stays valid for a layer-wise walk.
pub fn fold_layer(
    m: &mut Module,
    layers: &Layers,
    i: usize,
    q1: &Mat<f64>,
    r2: &[Mat<f64>],
) -> Result<FoldStats, PassError> {
    let nl = layers.layers.len();
    let eye = |n: usize| Mat::<f64>::identity(n, n);
    let rot = Rotations {
        q1: (0..nl)
            .map(|j| if j == i { q1.clone() } else { eye(layers.d) })
            .collect(),
        r2: layers
            .layers
            .iter()
            .enumerate()
            .map(|(j, l)| {
                if j == i {
                    r2.to_vec()
                } else {
                    vec![eye(l.heads.head_dim); l.heads.kv_heads]
                }
            })
            .collect(),
    };
    fold_weights(m, layers, &rot, false)
}

/// The weight side of [`fold`]; `embedding` says whether the embedding takes the first `Q`.
fn fold_weights(
    m: &mut Module,
    layers: &Layers,
    rot: &Rotations,
    embedding: bool,
) -> Result<FoldStats, PassError> {
    let gid = m.main;
    let per_layer = rot.q1.len() > 1;
    let nl = layers.layers.len();
    // The matrix table: Q1s first, then per layer R (v) and R_rep (o).
    let mut mats: Vec<Mat<f64>> = rot.q1.clone();
    let mut v_mat = Vec::with_capacity(nl);
    let mut o_mat = Vec::with_capacity(nl);
    for (l, r2) in layers.layers.iter().zip(&rot.r2) {
        let refs: Vec<&Mat<f64>> = r2.iter().collect();
        v_mat.push(mats.len());
        mats.push(block_diag(&refs));
        let rep: Vec<&Mat<f64>> = (0..l.heads.heads).map(|h| &r2[l.heads.kv_of(h)]).collect();
        o_mat.push(mats.len());
        mats.push(block_diag(&rep));
    }
    let q_of = |layer: usize| if per_layer { layer } else { 0 };
    // Which layer each stream site belongs to.
    let mut layer_of: HashMap<NodeId, usize> = HashMap::new();
    for (i, l) in layers.layers.iter().enumerate() {
        for lin in [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down] {
            layer_of.insert(lin.node, i);
            if let Some(b) = lin.bias {
                layer_of.insert(b.node, i);
            }
        }
    }
    // (consumer, slot) → (konst, transpose, [(axis, matrix)]).
    type Ops = Vec<(usize, usize)>;
    type Use = (NodeId, usize, NodeId, Option<NodeId>);
    let mut plan: Vec<(Use, Ops)> = Vec::new();
    let mut index: HashMap<(NodeId, usize), usize> = HashMap::new();
    let mut add = |key: Use, op: (usize, usize)| {
        let at = *index.entry((key.0, key.1)).or_insert_with(|| {
            plan.push((key, Vec::new()));
            plan.len() - 1
        });
        plan[at].1.push(op);
    };
    {
        for s in &layers.class.sites {
            let layer = match (layer_of.get(&s.consumer), s.role) {
                (Some(&i), _) => i,
                (None, SiteRole::Embedding) if !embedding => continue,
                (None, SiteRole::Embedding) => 0,
                (None, SiteRole::Reader) if layers.heads.contains(&s.consumer) => nl - 1,
                (None, _) if !per_layer => 0,
                (None, _) => {
                    return Err(PassError::at_main(m,
                        s.consumer,
                        "reads or writes the residual stream outside every decoder layer; per-layer rotations cannot place it (use mode=global)",
                    ))
                }
            };
            add(
                (s.consumer, s.slot, s.konst, s.transpose),
                (s.axis, q_of(layer)),
            );
        }
        for (i, l) in layers.layers.iter().enumerate() {
            let w = &l.v.weight;
            add(
                (l.v.node, l.v.weight_slot, w.konst, w.transpose),
                (w.out_axis(), v_mat[i]),
            );
            if let Some(b) = l.v.bias {
                add((b.node, b.slot, b.konst, None), (0, v_mat[i]));
            }
            let w = &l.o.weight;
            add(
                (l.o.node, l.o.weight_slot, w.konst, w.transpose),
                (w.in_axis, o_mat[i]),
            );
        }
    }
    // Equal op lists share a key (a tied embedding and head stay one tensor in global mode).
    let mut keys: HashMap<Ops, usize> = HashMap::new();
    let mut ops_of: Vec<Ops> = Vec::new();
    let mut rewrites = Vec::new();
    // An exactly-identity factor is not folded (an all-identity rewrite is skipped), so a
    // rotation that did not move leaves the weights bit for bit (x·1 + 0 would turn −0 into +0).
    let identity: Vec<bool> = mats.iter().map(is_identity).collect();
    for ((consumer, slot, konst, transpose), mut ops) in plan {
        ops.retain(|&(_, k)| !identity[k]);
        if ops.is_empty() {
            continue;
        }
        ops.sort();
        let key = *keys.entry(ops.clone()).or_insert_with(|| {
            ops_of.push(ops.clone());
            ops_of.len() - 1
        });
        rewrites.push(Rewrite {
            consumer,
            slot,
            konst,
            transpose,
            key,
        });
    }
    let make = |key: usize, old: &TensorData| -> Result<TensorData, WeightError> {
        let v = weights::decode(old)?;
        let ops: Vec<(usize, &Mat<f64>)> =
            ops_of[key].iter().map(|&(a, k)| (a, &mats[k])).collect();
        let out = transform(&v, &old.dims, &ops)?;
        weights::encode_like(old, &out)
    };
    let applied = weights::apply(m, gid, &rewrites, "denoised", &make)?;
    Ok(FoldStats {
        rewritten: applied.in_place + applied.copies,
        copies: applied.copies,
        boundaries: 0,
    })
}

/// `h ↦ h Q_{i−1}ᵀ Q_i` on the stream entering layer `i`, for every `i > 0` whose boundary is
/// not exactly the identity.
fn insert_boundaries(m: &mut Module, layers: &Layers, q1: &[Mat<f64>]) -> Result<usize, PassError> {
    let mut done = 0;
    for i in 1..layers.layers.len() {
        let b = mul64(q1[i - 1].transpose(), q1[i].as_ref());
        if is_identity(&b) {
            continue;
        }
        insert_matmul(m, layers.layers[i].stream_in, &b)?;
        done += 1;
    }
    Ok(done)
}

/// The `d × d` constant `b` in the dtype of `like` (f64 values cast once).
fn boundary_tensor(b: &Mat<f64>, dtype: ortho_ir::DType) -> Result<TensorData, WeightError> {
    let (r, c) = (b.nrows(), b.ncols());
    let mut vals = Vec::with_capacity(r * c);
    for i in 0..r {
        for j in 0..c {
            vals.push(b[(i, j)]);
        }
    }
    let bytes = dtype.bytes_for((r * c) as u64).unwrap_or(0) as usize;
    let like = TensorData::from_bytes(dtype, vec![r as i64, c as i64], vec![0; bytes]);
    weights::encode_like(&like, &vals)
}

/// Inserts `h ↦ h B` on the stream value `h` of the main graph: every user of `h` reads the
/// product instead. Returns the new `Const` node holding `B` (see [`premultiply_matmul`]).
pub fn insert_matmul(m: &mut Module, h: ValueId, b: &Mat<f64>) -> Result<NodeId, PassError> {
    let gid = m.main;
    let g = m.graph(gid);
    if g.outputs.iter().any(|o| o.value == h) {
        return Err(PassError::at_main(m, h.node, "a stream value between layers is a graph output; per-layer rotations would change it (use mode=global)"));
    }
    let d = b.nrows();
    let ty = g.value_type(h).clone();
    let dtype = ty.dtype().unwrap_or(ortho_ir::DType::F32);
    let t = boundary_tensor(b, dtype).map_err(|e| {
        PassError::at_main(m, h.node, e.to_string())
            .in_graph(gid)
            .with_kind(PassErrorKind::Weights)
    })?;
    let users = g.users(h);
    let mut names = g.value_names();
    let base = g.value_name(h).to_string();
    let kname = g.fresh_name(&format!("{base}.denoise_boundary"), &names);
    let tid = m.add_tensor(t);
    let g = m.graph_mut(gid);
    let k = g.add_node(
        Op::Const(tid),
        vec![],
        vec![Output::new(
            kname.clone(),
            Type::tensor(dtype, vec![Dim::Fixed(d as i64); 2]),
        )],
    );
    names.insert(kname, ValueId { node: k, output: 0 });
    let oname = g.fresh_name(&format!("{base}.denoise_rotated"), &names);
    let mm = g.add_node(
        Op::MatMul,
        vec![Some(h), Some(ValueId { node: k, output: 0 })],
        vec![Output::new(oname, ty)],
    );
    for (u, slot) in users {
        g.set_operand(
            u,
            slot,
            Some(ValueId {
                node: mm,
                output: 0,
            }),
        );
    }
    Ok(k)
}

/// Replaces the constant `B` of a boundary inserted by [`insert_matmul`] (node `konst`, whose
/// value `b` the caller kept in f64) by `B · Q`, so one `MatMul` carries both the previous
/// layer's exit and the next layer's entry. Returns the new product.
pub fn premultiply_matmul(
    m: &mut Module,
    konst: NodeId,
    b: &Mat<f64>,
    q: &Mat<f64>,
) -> Result<Mat<f64>, PassError> {
    let gid = m.main;
    let g = m.graph(gid);
    let Op::Const(old) = g.node(konst).op else {
        return Err(PassError::at_main(
            m,
            konst,
            "the boundary matrix is not a constant",
        ));
    };
    let p = mul64(b.as_ref(), q.as_ref());
    let dtype = m.tensor(old).dtype;
    let t = boundary_tensor(&p, dtype).map_err(|e| {
        PassError::at_graph(m, gid, konst, e.to_string()).with_kind(PassErrorKind::Weights)
    })?;
    let tid = m.add_tensor(t);
    m.graph_mut(gid).node_mut(konst).op = Op::Const(tid);
    Ok(p)
}
