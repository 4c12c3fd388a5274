//! POET training on the CPU engine: `poet-reparam` rewrites the model, the [`Trainer`] trains
//! the skew parameters (POET's own learning rate, in their own optimizer group) and whatever
//! else `trainable` names (embeddings, norms, the output head) with AdamW, and every
//! `merge_every` steps the POET weights are merged and re-initialized on the host:
//! `W0 ← R·W0·P` in f64 (exactly what the graph computed), new permutations drawn, the skew
//! parameters reset to zero and the optimizer moments of exactly those parameters zeroed (their
//! group's bias correction restarts with them). The frozen bases and permutations are `state`
//! inputs of the compiled plan, so a merge never recompiles.
//!
//! After a merge the model computes what it computed before, up to the f32 rounding of the new
//! base. Following the official code, the POET group's gradient-clipping threshold ramps from
//! 0.1× to 1× over `clip_ramp` steps after each merge.

use crate::train::{GroupConfig, StepReport, TokenBatch, TrainConfig, TrainLoopError, Trainer};
use ortho_codegen::cpu::HostTensor;
use ortho_ir::Module;
use ortho_passes::poet::merge::{find_poet, poet_merge, read_state};
use ortho_passes::poet::reparam::{poet_reparam, PoetReparamOptions};
use ortho_passes::poet::rng::SplitMix;
use ortho_passes::poet::{PoetRecord, PoetState, SKEW_PATTERN};
use ortho_passes::train::GroupSpec;

/// How POET trains.
#[derive(Debug, Clone, PartialEq)]
pub struct PoetConfig {
    pub reparam: PoetReparamOptions,
    /// Steps between merges (0: never merge during training).
    pub merge_every: u64,
    /// Learning rate of the skew parameters (the other parameters use `TrainConfig::lr`).
    pub lr: f64,
    /// The POET group's gradient-norm clip (`None`: only the global clip).
    pub clip: Option<f64>,
    /// Steps over which the POET clip rises from 0.1× to 1× after a merge.
    pub clip_ramp: u64,
}

impl Default for PoetConfig {
    fn default() -> Self {
        PoetConfig {
            reparam: PoetReparamOptions::default(),
            merge_every: 100,
            lr: 1e-3,
            clip: None,
            clip_ramp: 10,
        }
    }
}

/// What one merge did.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeReport {
    pub weights: usize,
    /// The largest `‖RᵀR − I‖_F` of any block at the merge (what the merge bakes into W0).
    pub max_orthogonality_error: f64,
    pub secs: f64,
}

/// Why POET training failed.
#[derive(Debug, thiserror::Error)]
pub enum PoetTrainError {
    #[error(transparent)]
    Train(#[from] TrainLoopError),
    #[error(transparent)]
    Pass(#[from] ortho_passes::PassError),
    #[error("no linear was reparameterized (check layers, linears and the block size)")]
    Nothing,
}

struct Weight {
    rec: PoetRecord,
    state: PoetState,
}

/// A POET model compiled for training.
pub struct PoetTrainer {
    pub trainer: Trainer,
    /// The reparameterized model the trainer was built from (for writing back).
    model: Module,
    weights: Vec<Weight>,
    rng: SplitMix,
    cfg: PoetConfig,
    /// The optimizer group of the skew parameters.
    group: usize,
    since_merge: u64,
    pub merges: Vec<MergeReport>,
}

/// The state tensors POET feeds as plan inputs.
pub const STATE_PATTERNS: [&str; 3] = ["*.poet_base", "*.poet_rows_perm", "*.poet_cols_perm"];

impl PoetTrainer {
    /// Reparameterizes `model` and compiles it for training. `cfg.trainable` names what trains
    /// besides the skew parameters (which always do); POET's tensors are never trained.
    pub fn new(
        mut model: Module,
        mut cfg: TrainConfig,
        pcfg: PoetConfig,
    ) -> Result<PoetTrainer, PoetTrainError> {
        let stats = poet_reparam(&mut model, &pcfg.reparam)?;
        if stats.linears == 0 {
            return Err(PoetTrainError::Nothing);
        }
        let mut weights = Vec::new();
        for (n, rec) in find_poet(&model) {
            let state = read_state(&model, n, &rec)?;
            weights.push(Weight { rec, state });
        }
        cfg.trainable.push(SKEW_PATTERN.into());
        cfg.state = STATE_PATTERNS.iter().map(|s| s.to_string()).collect();
        // The first group whose pattern matches takes a parameter: skews first.
        cfg.groups = vec![
            GroupConfig {
                spec: GroupSpec {
                    name: "poet".into(),
                    lr: pcfg.lr,
                    weight_decay: 0.0,
                    max_grad_norm: pcfg.clip,
                },
                patterns: vec![SKEW_PATTERN.into()],
            },
            GroupConfig {
                spec: GroupSpec {
                    name: "rest".into(),
                    lr: cfg.lr,
                    weight_decay: cfg.weight_decay,
                    max_grad_norm: None,
                },
                patterns: vec!["*".into()],
            },
        ];
        let trainer = Trainer::new(model.clone(), cfg)?;
        Ok(PoetTrainer {
            trainer,
            model,
            weights,
            rng: SplitMix::new(pcfg.reparam.seed ^ 0x00C0_FFEE),
            cfg: pcfg,
            group: 0,
            since_merge: 0,
            merges: Vec::new(),
        })
    }

    /// Skew parameters (trainable by POET) over all weights.
    pub fn skew_parameters(&self) -> usize {
        self.weights.iter().map(|w| w.state.trainable()).sum()
    }

    /// One optimizer step, then a merge when `merge_every` steps have passed since the last.
    pub fn step(&mut self, micro: &[TokenBatch]) -> Result<StepReport, PoetTrainError> {
        if let Some(c) = self.cfg.clip {
            let ramp = self.cfg.clip_ramp.max(1);
            let f = (0.1 + 0.9 * self.since_merge as f64 / ramp as f64).min(1.0);
            self.trainer
                .optimizer_mut()
                .set_group_clip(self.group, Some(c * f));
        }
        let r = self.trainer.step(micro)?;
        self.since_merge += 1;
        if self.cfg.merge_every > 0 && self.since_merge >= self.cfg.merge_every {
            self.merge()?;
        }
        Ok(r)
    }

    /// Copies the trained skew values into the host states.
    fn sync(&mut self) {
        let mut by_name: std::collections::HashMap<String, Vec<f64>> = self
            .trainer
            .parameters()
            .filter(|(n, _, _)| n.contains(".poet_skew_"))
            .map(|(n, _, v)| (n.to_string(), v.iter().map(|&x| f64::from(x)).collect()))
            .collect();
        for w in &mut self.weights {
            if let Some(v) = by_name.remove(&w.rec.skew_rows_name()) {
                w.state.skew_rows = v;
            }
            if let Some(v) = by_name.remove(&w.rec.skew_cols_name()) {
                w.state.skew_cols = v;
            }
        }
    }

    /// Merge-then-reinitialize (see the module docs).
    pub fn merge(&mut self) -> Result<MergeReport, PoetTrainError> {
        let t0 = std::time::Instant::now();
        self.sync();
        let mut max_err = 0f64;
        for w in &mut self.weights {
            let (merged, err) = w.state.materialize_with_error();
            max_err = max_err.max(err);
            w.state.redraw(&merged, &mut self.rng);
            let s = &w.state;
            let base: Vec<f32> = s.base.iter().map(|&x| x as f32).collect();
            let perm = |p: &[usize]| p.iter().map(|&x| x as i64).collect::<Vec<i64>>();
            let t = &mut self.trainer;
            t.set_state(
                &w.rec.base_name(),
                HostTensor::from_vec(vec![s.rows, s.cols], base).map_err(TrainLoopError::from)?,
            )?;
            t.set_state(
                &w.rec.rows_perm_name(),
                HostTensor::from_vec(vec![s.rows], perm(&s.rows_perm))
                    .map_err(TrainLoopError::from)?,
            )?;
            t.set_state(
                &w.rec.cols_perm_name(),
                HostTensor::from_vec(vec![s.cols], perm(&s.cols_perm))
                    .map_err(TrainLoopError::from)?,
            )?;
        }
        for (name, v) in self.trainer.parameters_mut() {
            if name.contains(".poet_skew_") {
                v.iter_mut().for_each(|x| *x = 0.0);
            }
        }
        self.trainer.optimizer_mut().reset_group(self.group);
        self.since_merge = 0;
        let r = MergeReport {
            weights: self.weights.len(),
            max_orthogonality_error: max_err,
            secs: t0.elapsed().as_secs_f64(),
        };
        self.merges.push(r.clone());
        Ok(r)
    }

    /// The host states (base, permutations, skews as of the last merge or sync) and records.
    pub fn weights(&mut self) -> impl Iterator<Item = (&PoetRecord, &PoetState)> {
        self.sync();
        self.weights.iter().map(|w| (&w.rec, &w.state))
    }

    /// The trained model as a plain model: the trained values written into the POET model,
    /// then `poet-merge` (zero inference overhead).
    pub fn merged_model(&self) -> Result<Module, PoetTrainError> {
        let mut m = self.model.clone();
        self.trainer.write_into(&mut m);
        poet_merge(&mut m)?;
        Ok(m)
    }
}

/// Why a `--poet` value was refused.
#[derive(Debug, thiserror::Error)]
pub enum PoetArgError {
    #[error("--poet: '{0}' is not KEY=VALUE")]
    NotKeyValue(String),
    #[error("--poet: {key}={value} is not a valid value")]
    Value { key: String, value: String },
    #[error("--poet: {0}")]
    Reparam(String),
}

impl PoetConfig {
    /// Parses `--poet`: comma-separated `KEY=VALUE`s, the options of `poet-reparam` (`kind`,
    /// `block`, `neumann-terms`, `init`, `seed`, `layers`, `linears`, `indivisible`) and
    /// `merge-every`, `lr`, `clip`, `clip-ramp`.
    pub fn parse(s: &str) -> Result<PoetConfig, PoetArgError> {
        let mut cfg = PoetConfig::default();
        let mut reparam = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| PoetArgError::NotKeyValue(part.to_string()))?;
            let bad = || PoetArgError::Value {
                key: k.to_string(),
                value: v.to_string(),
            };
            match k {
                "merge-every" => cfg.merge_every = v.parse().map_err(|_| bad())?,
                "lr" => cfg.lr = v.parse().map_err(|_| bad())?,
                "clip" => cfg.clip = Some(v.parse().map_err(|_| bad())?),
                "clip-ramp" => cfg.clip_ramp = v.parse().map_err(|_| bad())?,
                _ => reparam.push(format!("{k}={v}")),
            }
        }
        let text = format!("poet-reparam{{{}}}", reparam.join(" "));
        let p = ortho_passes::Pipeline::parse(&text)
            .map_err(|e| PoetArgError::Reparam(e.to_string()))?;
        let [ortho_passes::PipelineItem::Pass(spec)] = p.items.as_slice() else {
            return Err(PoetArgError::Reparam(format!("'{text}' is not one pass")));
        };
        cfg.reparam = PoetReparamOptions::from_options(&spec.options)
            .map_err(|e| PoetArgError::Reparam(e.to_string()))?;
        Ok(cfg)
    }
}
