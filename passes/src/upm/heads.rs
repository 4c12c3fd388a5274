//! UPM inside-shard keys (ALGORITHMS.md §3.2): a general invertible `head_dim × head_dim`
//! matrix per KV head on every attention's V/O path, which the verifier admits there (`v ↦ v A`
//! on v_proj's output features, `A⁻¹` on o_proj's input features of the head's query group).
//!
//! Non-orthogonal keys must not compound: the key of epoch t is drawn as an *absolute* key
//! `A_t = Q₁ diag(s) Q₂` (Haar `Q₁`, `Q₂`; `s_k = κ^{u_k − 1/2}` with `u_k` uniform in [0, 1], so
//! `cond(A_t) ≤ κ`), and the weights, which carry `A_{t−1}`, receive the change
//! `C_t = A_{t−1}⁻¹ A_t` (and `C_t⁻ᵀ` on the o side). After any number of epochs the weights carry
//! exactly one key of condition ≤ κ, never a product of them. Inverses come from the
//! factorization (`A⁻¹ = Q₂ᵀ diag(1/s) Q₁ᵀ`), all in f64.
//!
//! Keys derive from (seed, epoch, global layer, KV head): a participant holding shard i needs
//! only its own blocks' layer numbers and the two epochs' seeds from the manifest.

use crate::linalg::orthogonal::{haar, Rng};
use crate::pass::PassError;
use crate::transforms::{fold_vo_maps, vo_paths};
use faer::Mat;
use ortho_ir::Module;

/// One epoch's head-key family: its seed and condition cap κ (≥ 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadKeys {
    pub seed: u64,
    pub epoch: u64,
    pub cond_cap: f64,
}

/// What [`rekey_heads`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeadStats {
    pub layers: usize,
    pub matrices: usize,
    /// Largest condition number among the new absolute keys (≤ κ by construction; 1 when the
    /// paths return to the identity key).
    pub max_cond_key: f64,
    /// Largest condition number among the applied changes `A_{t−1}⁻¹ A_t` (≤ κ² in theory).
    pub max_cond_change: f64,
    /// Largest `‖C C⁻¹ − I‖_max` of the applied change and its inverse (f64 round-off).
    pub inverse_error: f64,
    pub rewritten: usize,
}

/// The absolute key of KV head `head` of global layer `layer`, and its inverse.
pub fn head_key(k: &HeadKeys, d: usize, layer: usize, head: usize) -> (Mat<f64>, Mat<f64>) {
    let mut rng = Rng::new(super::mix_seed(
        k.seed ^ 0x4ead_0000_0000_0000,
        k.epoch,
        ((layer as u64) << 20) | head as u64,
    ));
    let q1 = haar(d, &mut rng);
    let q2 = haar(d, &mut rng);
    let kappa = k.cond_cap.max(1.0);
    let s: Vec<f64> = (0..d).map(|_| kappa.powf(rng.uniform() - 0.5)).collect();
    let a = Mat::from_fn(d, d, |i, j| q1[(i, j)] * s[j]) * &q2;
    let inv = Mat::from_fn(d, d, |i, j| q2[(j, i)] / s[j]) * q1.transpose();
    (a, inv)
}

/// Condition number (σ_max / σ_min) of a square matrix; infinite when singular or failing.
pub fn condition(a: &Mat<f64>) -> f64 {
    match a.singular_values() {
        Ok(s) => {
            let (hi, lo) = s
                .iter()
                .fold((0.0f64, f64::INFINITY), |(h, l), &x| (h.max(x), l.min(x)));
            if lo > 0.0 {
                hi / lo
            } else {
                f64::INFINITY
            }
        }
        Err(_) => f64::INFINITY,
    }
}

/// Moves the V/O head keys of a shard whose first block is global layer `layer0` from `prev`
/// (`None`: the identity, no key yet) to `next` (`None`: back to the identity).
pub fn rekey_heads(
    m: &mut Module,
    layer0: usize,
    prev: Option<&HeadKeys>,
    next: Option<&HeadKeys>,
) -> Result<HeadStats, PassError> {
    let paths = vo_paths(m)?;
    let mut stats = HeadStats::default();
    let (mut vmaps, mut omaps) = (Vec::new(), Vec::new());
    for (i, p) in paths.iter().enumerate() {
        let d = p.head_dim;
        let layer = layer0 + i;
        let (mut vs, mut os) = (Vec::new(), Vec::new());
        for j in 0..p.kv_heads {
            let eye = || Mat::<f64>::identity(d, d);
            let (prev_a, prev_inv) =
                prev.map_or_else(|| (eye(), eye()), |k| head_key(k, d, layer, j));
            let (a, a_inv) = next.map_or_else(|| (eye(), eye()), |k| head_key(k, d, layer, j));
            stats.max_cond_key = stats.max_cond_key.max(condition(&a));
            // C = A_{t−1}⁻¹ A_t on v; C⁻ᵀ = (A_t⁻¹ A_{t−1})ᵀ on o.
            let c = &prev_inv * &a;
            let c_inv = &a_inv * &prev_a;
            let resid = &c * &c_inv - eye();
            let err = (0..d * d).fold(0.0f64, |e, k| e.max(resid[(k / d, k % d)].abs()));
            stats.inverse_error = stats.inverse_error.max(err);
            stats.max_cond_change = stats.max_cond_change.max(condition(&c));
            os.push(c_inv.transpose().to_owned());
            vs.push(c);
        }
        vmaps.push(vs);
        omaps.push(os);
    }
    let st = fold_vo_maps(m, &paths, &vmaps, &omaps)?;
    stats.layers = st.layers;
    stats.matrices = st.matrices;
    stats.rewritten = st.rewritten;
    Ok(stats)
}
