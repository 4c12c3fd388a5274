//! AdamW (Loshchilov & Hutter): Adam with decoupled weight decay and bias correction, over
//! parameter groups that each have their own learning rate, weight decay and gradient-norm clip,
//! and whose moments can be reset alone (POET restarts the moments of the parameters it
//! re-initializes). Masks keep chosen weights at exactly zero, so a pruned model keeps its
//! sparsity pattern while it is fine-tuned.
//!
//! One step, per group `g` with step count `t` (counted per group, so a reset also restarts the
//! bias correction):
//! 1. masked entries of the gradient are set to zero;
//! 2. global clipping: when `‖grad‖₂` over every parameter exceeds `max_grad_norm`, all
//!    gradients are scaled by `max_grad_norm / ‖grad‖`; then each group with its own clip is
//!    scaled the same way by its own norm;
//! 3. `p ← p·(1 − lr·wd)`, `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
//!    `p ← p − lr·(m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε)`, with `lr = group lr × schedule`;
//! 4. masked entries of the parameter are set to zero.
//!
//! Parameters and moments are stored in f32; each update is computed in f64 and rounded once.

use rayon::prelude::*;

/// Elements per parallel task of the update (large enough that scheduling is negligible).
const UPDATE_CHUNK: usize = 1 << 16;

/// Why a step was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrainError {
    #[error("parameter {index} has {got} gradient values, expected {want}")]
    GradSize {
        index: usize,
        got: usize,
        want: usize,
    },
    #[error("{got} gradients for {want} parameters")]
    GradCount { got: usize, want: usize },
    #[error("parameter {index} is in group {group}, but there are {groups} groups")]
    NoGroup {
        index: usize,
        group: usize,
        groups: usize,
    },
    #[error("the mask of parameter {index} has {got} entries, expected {want}")]
    MaskSize {
        index: usize,
        got: usize,
        want: usize,
    },
    #[error("gradient of parameter {index} is not finite")]
    NonFinite { index: usize },
}

/// Hyper-parameters shared by every group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm clip (over every parameter); `None` disables it.
    pub max_grad_norm: Option<f64>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            max_grad_norm: Some(1.0),
        }
    }
}

/// One parameter group's own settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSpec {
    pub name: String,
    pub lr: f64,
    pub weight_decay: f64,
    /// The group's own gradient-norm clip, applied after the global one.
    pub max_grad_norm: Option<f64>,
}

#[derive(Debug, Clone)]
struct Group {
    spec: GroupSpec,
    step: u64,
}

/// What a step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepStats {
    /// ‖grad‖₂ over every parameter before clipping (masked entries excluded).
    pub grad_norm: f64,
    /// The factor global clipping applied (1 when it did not clip).
    pub clip_scale: f64,
}

/// The optimizer's mutable state (see [`AdamW::export_state`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AdamWState {
    pub group_steps: Vec<u64>,
    pub group_clips: Vec<Option<f64>>,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    pub masks: Vec<Option<Vec<bool>>>,
}

/// The optimizer state: groups, the group of each parameter, first and second moments, masks.
#[derive(Debug, Clone)]
pub struct AdamW {
    cfg: AdamWConfig,
    groups: Vec<Group>,
    group_of: Vec<usize>,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// `false` entries are held at zero.
    masks: Vec<Option<Vec<bool>>>,
}

impl AdamW {
    /// An optimizer for parameters of `sizes` elements, parameter `i` in group `group_of[i]`.
    pub fn new(
        cfg: AdamWConfig,
        groups: Vec<GroupSpec>,
        sizes: &[usize],
        group_of: Vec<usize>,
    ) -> Result<AdamW, TrainError> {
        if group_of.len() != sizes.len() {
            return Err(TrainError::GradCount {
                got: group_of.len(),
                want: sizes.len(),
            });
        }
        for (index, &g) in group_of.iter().enumerate() {
            if g >= groups.len() {
                return Err(TrainError::NoGroup {
                    index,
                    group: g,
                    groups: groups.len(),
                });
            }
        }
        Ok(AdamW {
            cfg,
            groups: groups
                .into_iter()
                .map(|spec| Group { spec, step: 0 })
                .collect(),
            group_of,
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            masks: vec![None; sizes.len()],
        })
    }

    /// Keeps the entries of parameter `index` where `keep` is false at zero from now on.
    pub fn set_mask(&mut self, index: usize, keep: Vec<bool>) -> Result<(), TrainError> {
        let want = self
            .m
            .get(index)
            .map(Vec::len)
            .ok_or(TrainError::GradCount {
                got: index + 1,
                want: self.m.len(),
            })?;
        if keep.len() != want {
            return Err(TrainError::MaskSize {
                index,
                got: keep.len(),
                want,
            });
        }
        self.masks[index] = Some(keep);
        Ok(())
    }

    /// Zeroes the moments of every parameter of group `g` and restarts its bias correction.
    pub fn reset_group(&mut self, g: usize) {
        for (i, &pg) in self.group_of.iter().enumerate() {
            if pg == g {
                self.m[i].iter_mut().for_each(|x| *x = 0.0);
                self.v[i].iter_mut().for_each(|x| *x = 0.0);
            }
        }
        if let Some(gr) = self.groups.get_mut(g) {
            gr.step = 0;
        }
    }

    /// Sets group `g`'s gradient-norm clip (POET ramps it after every merge).
    pub fn set_group_clip(&mut self, g: usize, max_grad_norm: Option<f64>) {
        if let Some(gr) = self.groups.get_mut(g) {
            gr.spec.max_grad_norm = max_grad_norm;
        }
    }

    /// Steps taken by group `g` since it was created or reset.
    pub fn group_step(&self, g: usize) -> u64 {
        self.groups.get(g).map_or(0, |gr| gr.step)
    }

    /// The first and second moments of parameter `i` (for checkpoints).
    pub fn moments(&self, i: usize) -> (&[f32], &[f32]) {
        (&self.m[i], &self.v[i])
    }

    /// Everything a later step depends on (moments, masks, per-group step counts and clips),
    /// for a checkpoint; [`AdamW::import_state`] restores it exactly.
    pub fn export_state(&self) -> AdamWState {
        AdamWState {
            group_steps: self.groups.iter().map(|g| g.step).collect(),
            group_clips: self.groups.iter().map(|g| g.spec.max_grad_norm).collect(),
            m: self.m.clone(),
            v: self.v.clone(),
            masks: self.masks.clone(),
        }
    }

    /// Restores a state taken by [`AdamW::export_state`] from an optimizer over the same
    /// parameter sizes and groups; anything of another size is refused, nothing changed.
    pub fn import_state(&mut self, s: AdamWState) -> Result<(), TrainError> {
        let n = self.m.len();
        for (got, want) in [(s.m.len(), n), (s.v.len(), n), (s.masks.len(), n)] {
            if got != want {
                return Err(TrainError::GradCount { got, want });
            }
        }
        let groups = self.groups.len();
        for got in [s.group_steps.len(), s.group_clips.len()] {
            if got != groups {
                return Err(TrainError::NoGroup {
                    index: 0,
                    group: got,
                    groups,
                });
            }
        }
        for i in 0..n {
            let want = self.m[i].len();
            let mask = s.masks[i].as_ref().map_or(want, Vec::len);
            for got in [s.m[i].len(), s.v[i].len(), mask] {
                if got != want {
                    return Err(TrainError::GradSize {
                        index: i,
                        got,
                        want,
                    });
                }
            }
        }
        for (g, (step, clip)) in self
            .groups
            .iter_mut()
            .zip(s.group_steps.into_iter().zip(s.group_clips))
        {
            g.step = step;
            g.spec.max_grad_norm = clip;
        }
        self.m = s.m;
        self.v = s.v;
        self.masks = s.masks;
        Ok(())
    }

    /// One update of `params` from `grads`, the learning rates scaled by `lr_scale` (the
    /// schedule's multiplier).
    pub fn step(
        &mut self,
        params: &mut [Vec<f32>],
        grads: &[Vec<f32>],
        lr_scale: f64,
    ) -> Result<StepStats, TrainError> {
        let n = self.m.len();
        if params.len() != n || grads.len() != n {
            return Err(TrainError::GradCount {
                got: grads.len().min(params.len()),
                want: n,
            });
        }
        for i in 0..n {
            for (got, want) in [
                (grads[i].len(), self.m[i].len()),
                (params[i].len(), self.m[i].len()),
            ] {
                if got != want {
                    return Err(TrainError::GradSize {
                        index: i,
                        got,
                        want,
                    });
                }
            }
        }
        // Masked gradient entries count as zero everywhere (norms and moments); gradients are
        // read in f64 without being copied, the clip factors applied on the fly.
        // Tensors are summed in parallel, each one in order, so the norm's bits do not depend
        // on the thread count.
        let masks = &self.masks;
        let sq: Vec<f64> = grads
            .par_iter()
            .enumerate()
            .map(|(i, gi)| {
                let keep = masks[i].as_deref();
                let mut s = 0.0f64;
                for (k, &x) in gi.iter().enumerate() {
                    if keep.is_some_and(|km| !km[k]) {
                        continue;
                    }
                    if !x.is_finite() {
                        return Err(TrainError::NonFinite { index: i });
                    }
                    s += f64::from(x) * f64::from(x);
                }
                Ok(s)
            })
            .collect::<Result<_, _>>()?;
        let grad_norm = sq.iter().sum::<f64>().sqrt();
        let clip_scale = match self.cfg.max_grad_norm {
            Some(max) if grad_norm > max => max / grad_norm,
            _ => 1.0,
        };
        for (gi, group) in self.groups.iter_mut().enumerate() {
            let members: Vec<usize> = (0..n).filter(|&i| self.group_of[i] == gi).collect();
            if members.is_empty() {
                continue;
            }
            let mut scale = clip_scale;
            if let Some(max) = group.spec.max_grad_norm {
                let norm = clip_scale * members.iter().map(|&i| sq[i]).sum::<f64>().sqrt();
                if norm > max {
                    scale *= max / norm;
                }
            }
            group.step += 1;
            let t = group.step as i32;
            let (b1, b2, eps) = (self.cfg.beta1, self.cfg.beta2, self.cfg.eps);
            let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
            let lr = group.spec.lr * lr_scale;
            let decay = 1.0 - lr * group.spec.weight_decay;
            for &i in &members {
                let (p, m, v) = (&mut params[i], &mut self.m[i], &mut self.v[i]);
                let keep = self.masks[i].as_deref();
                let g = &grads[i];
                // Every element's update is independent: chunks run in parallel with results
                // identical to a sequential loop.
                p.par_chunks_mut(UPDATE_CHUNK)
                    .zip(m.par_chunks_mut(UPDATE_CHUNK))
                    .zip(v.par_chunks_mut(UPDATE_CHUNK))
                    .enumerate()
                    .for_each(|(c, ((p, m), v))| {
                        let base = c * UPDATE_CHUNK;
                        for k in 0..p.len() {
                            if keep.is_some_and(|km| !km[base + k]) {
                                p[k] = 0.0;
                                continue;
                            }
                            let gk = f64::from(g[base + k]) * scale;
                            let mk = b1 * f64::from(m[k]) + (1.0 - b1) * gk;
                            let vk = b2 * f64::from(v[k]) + (1.0 - b2) * gk * gk;
                            let upd = (mk / c1) / ((vk / c2).sqrt() + eps);
                            p[k] = (f64::from(p[k]) * decay - lr * upd) as f32;
                            m[k] = mk as f32;
                            v[k] = vk as f32;
                        }
                    });
            }
        }
        Ok(StepStats {
            grad_norm,
            clip_scale,
        })
    }
}

#[cfg(test)]
mod tests;
