//! `rotate-residual{kind=haar|hadamard|signed-permutation|permutation seed=N}`: one orthogonal
//! change of basis `Q` for the whole residual stream, folded into the weights — no node is
//! added, so it costs nothing at run time (ALGORITHMS.md §0.1.4).
//!
//! Needs: the gauge analysis (`ortho_ir::analysis::gauge`) to admit the requested kind for the
//! residual stream (the class grown from the embedding lookup). Haar and Hadamard rotations need
//! O(d), so every norm gain on the stream must be 1 first (run `fold-norms`); signed
//! permutations survive RMSNorm gains, permutations also LayerNorm. When the kind is not
//! admitted the pass fails, naming the blocking node and the strongest kind that is admitted,
//! and changes nothing.
//! Leaves: the embedding table `E ← E Q`, every reader `W ← Qᵀ W`, every writer `W ← W Q` and
//! stream bias `b ← b Q`, and (for permutation kinds) every per-channel gain `γ ← γ |Q|`;
//! computed in f64 and cast once. A tied head stays tied (`(hQ)(EQ)ᵀ = hEᵀ`). The note reports
//! the construction and `‖QᵀQ − I‖_F`.

use crate::linalg::orthogonal::{self, left_multiply_transposed, right_multiply, Orthogonal, Rng};
use crate::linalg::weights::{self, Rewrite, WeightError};
use crate::pass::{PassContext, PassError, PassResult};
use ortho_ir::analysis::{analyze_gauge, Group, Kind};
use ortho_ir::{Module, TensorData};

crate::pass_options! {
    /// Options of [`rotate_residual`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct RotateResidualOptions {
        pub kind: RotationKind = {
            name: "kind",
            default: RotationKind::Haar,
            doc: "The transform: Haar-random rotation, randomized Hadamard (any size), random signed permutation, or permutation.",
        },
        pub seed: u64 = {
            name: "seed",
            default: 0,
            doc: "Seed of the random construction.",
        },
    }
}

crate::declare_pass! {
    name: "rotate-residual",
    summary: "Applies one orthogonal change of basis to the residual stream, folded into the weights.",
    options: RotateResidualOptions,
    run: run_pass,
}

/// The transform [`rotate_residual`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationKind {
    Haar,
    Hadamard,
    SignedPermutation,
    Permutation,
}

crate::word_option_type!(RotationKind {
    Haar = "haar",
    Hadamard = "hadamard",
    SignedPermutation = "signed-permutation",
    Permutation = "permutation",
});

impl RotationKind {
    pub fn parse(s: &str) -> Option<RotationKind> {
        RotationKind::from_word(s)
    }

    pub fn name(self) -> &'static str {
        self.word()
    }

    /// The group the stream must admit.
    pub fn needs(self) -> Group {
        match self {
            RotationKind::Haar | RotationKind::Hadamard => Group::ORTHOGONAL,
            RotationKind::SignedPermutation => Group::SIGNED_PERMUTATION,
            RotationKind::Permutation => Group::PERMUTATION,
        }
    }

    /// The pipeline option value that asks for the strongest kind of a group.
    fn for_kind(k: Kind) -> Option<&'static str> {
        match k {
            Kind::Orthogonal => Some("haar"),
            Kind::SignedPermutation => Some("signed-permutation"),
            Kind::Permutation => Some("permutation"),
            _ => None,
        }
    }
}

/// What [`rotate_residual`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RotateResidualStats {
    pub width: usize,
    /// How Q was built (`Haar 576`, `randomized Hadamard 64 ⊗ Haar 9`, …).
    pub construction: String,
    /// `‖QᵀQ − I‖_F`.
    pub orthogonality_error: f64,
    /// Weights rotated, by role.
    pub embeddings: usize,
    pub readers: usize,
    pub writers: usize,
    pub biases: usize,
    /// Per-channel gains permuted.
    pub gains: usize,
    /// Constants copied because something else reads the original.
    pub copies: usize,
}

/// Builds Q for `kind`.
pub fn build_transform(kind: RotationKind, d: usize, seed: u64) -> (Orthogonal, String) {
    let mut rng = Rng::new(seed);
    match kind {
        RotationKind::Haar => (
            Orthogonal::Dense(orthogonal::haar(d, &mut rng)),
            format!("Haar {d}"),
        ),
        RotationKind::Hadamard => orthogonal::hadamard_fast(d, &mut rng),
        RotationKind::SignedPermutation => {
            let perm = orthogonal::permutation(d, &mut rng);
            let signs = (0..d).map(|_| rng.sign()).collect();
            (
                Orthogonal::SignedPerm { perm, signs },
                format!("signed permutation {d}"),
            )
        }
        RotationKind::Permutation => {
            let perm = orthogonal::permutation(d, &mut rng);
            (
                Orthogonal::SignedPerm {
                    perm,
                    signs: vec![1.0; d],
                },
                format!("permutation {d}"),
            )
        }
    }
}

/// `v ↦ v Q` along `axis` of a tensor (the last axis, or axis 0 of a matrix).
fn rotate(v: &[f64], dims: &[i64], axis: usize, q: &Orthogonal) -> Result<Vec<f64>, WeightError> {
    let d = q.dim();
    if dims.get(axis).copied() != Some(d as i64) {
        return Err(WeightError::Shape(format!(
            "axis {axis} of a tensor of shape {dims:?} is not the stream width {d}"
        )));
    }
    if axis + 1 == dims.len() {
        Ok(right_multiply(v, v.len() / d.max(1), q))
    } else if axis == 0 && dims.len() == 2 {
        Ok(left_multiply_transposed(v, dims[1] as usize, q))
    } else {
        Err(WeightError::Shape(format!(
            "cannot rotate axis {axis} of a tensor of shape {dims:?}"
        )))
    }
}

/// Rotates the residual stream of the main graph.
pub fn rotate_residual(
    m: &mut Module,
    opts: &RotateResidualOptions,
) -> Result<RotateResidualStats, PassError> {
    let gid = m.main;
    let analysis = analyze_gauge(m, gid);
    let g = m.graph(gid);
    let Some(class) = analysis.main() else {
        return Err(PassError::new(
            "no residual stream found: no embedding lookup (Gather of a constant [vocab, d] table)",
        ));
    };
    let need = opts.kind.needs();
    if !class.admits.contains(need) {
        let strongest = class.admits.strongest();
        let hint = match RotationKind::for_kind(strongest) {
            Some(k) => format!("; the strongest kind admitted is {strongest} (kind={k})"),
            None => "; no transform of the stream is admitted".to_string(),
        };
        let msg =
            |reason: String| format!("kind={} is not admitted: {reason}{hint}", opts.kind.name());
        return Err(match class.blocker_for(need) {
            Some(b) => PassError::at(g, b.node, msg(b.reason())).in_graph(gid),
            None => PassError::new(msg(
                "the stream's norms admit no diagonal-free transform".into()
            )),
        });
    }
    let d = usize::try_from(class.width).unwrap_or(0);
    if d == 0 {
        return Err(PassError::new("the residual stream has width 0").in_graph(gid));
    }
    let (q, construction) = build_transform(opts.kind, d, opts.seed);
    let perm_gains = matches!(q, Orthogonal::SignedPerm { .. });
    let mut stats = RotateResidualStats {
        width: d,
        construction,
        orthogonality_error: q.orthogonality_error(),
        ..Default::default()
    };
    // Key 0 rotates a fiber, key 1 permutes a gain by |Q|.
    let mut rewrites: Vec<Rewrite> = Vec::new();
    let mut axes = std::collections::HashMap::new();
    for s in &class.sites {
        use ortho_ir::analysis::SiteRole;
        match s.role {
            SiteRole::Embedding => stats.embeddings += 1,
            SiteRole::Reader => stats.readers += 1,
            SiteRole::Writer => stats.writers += 1,
            SiteRole::Bias => stats.biases += 1,
        }
        // Every fold of one constant must use the same axis (a constant read as [d, n] by one
        // layer and [n, d] by another would need two different copies: keyed apart).
        let key = 2 * (1 + s.axis);
        axes.insert(key, s.axis);
        rewrites.push(Rewrite {
            consumer: s.consumer,
            slot: s.slot,
            konst: s.konst,
            transpose: s.transpose,
            key,
        });
    }
    if perm_gains {
        for p in &class.params {
            stats.gains += 1;
            rewrites.push(Rewrite {
                consumer: p.consumer,
                slot: p.slot,
                konst: p.konst,
                transpose: None,
                key: 1,
            });
        }
    }
    // |Q| for the gains: (γ|Q|)_j = γ_{π(j)}.
    let abs_q = match &q {
        Orthogonal::SignedPerm { perm, signs } => Orthogonal::SignedPerm {
            perm: perm.clone(),
            signs: vec![1.0; signs.len()],
        },
        dense => dense.clone(),
    };
    let make = |key: usize, old: &TensorData| -> Result<TensorData, WeightError> {
        let axis = axes.get(&key).copied();
        // Rows along the last axis (embedding, untied head, readers stored [out, in]): block
        // by block, without a full f64 copy of the table.
        if key != 1 && axis.is_some_and(|a| a + 1 == old.dims.len()) && old.dims.len() >= 2 {
            let d = q.dim();
            if old.dims.last().copied() != Some(d as i64) {
                return Err(WeightError::Shape(format!(
                    "axis {} of a tensor of shape {:?} is not the stream width {d}",
                    old.dims.len() - 1,
                    old.dims
                )));
            }
            return weights::map_rows(old, d, &|v, rows| Ok(right_multiply(v, rows, &q)));
        }
        let v = weights::decode(old)?;
        let out = if key == 1 {
            if v.len() == 1 {
                v
            } else {
                rotate(&v, &old.dims, old.dims.len().saturating_sub(1), &abs_q)?
            }
        } else {
            rotate(&v, &old.dims, axes[&key], &q)?
        };
        weights::encode_like(old, &out)
    };
    let applied = weights::apply(m, gid, &rewrites, "rotated", &make)?;
    stats.copies = applied.copies;
    Ok(stats)
}

fn run_pass(
    m: &mut Module,
    opts: &RotateResidualOptions,
    cx: &mut PassContext,
) -> Result<PassResult, PassError> {
    let s = rotate_residual(m, opts)?;
    cx.stats(&[
        ("embeddings", s.embeddings),
        ("readers", s.readers),
        ("writers", s.writers),
        ("biases", s.biases),
        ("gains", s.gains),
        ("copies", s.copies),
    ]);
    cx.note(format!(
        "Q = {} (d = {}), ‖QᵀQ − I‖_F = {:.3e}",
        s.construction, s.width, s.orthogonality_error
    ));
    Ok(PassResult::changed(true))
}
