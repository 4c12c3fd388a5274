//! The training loop on the CPU engine: a language model (token ids → logits) gets a mean token
//! cross-entropy and its reverse-mode gradient (`ortho_passes::autodiff`), is compiled once into
//! one forward+backward plan whose trainable weights are inputs, and is stepped with AdamW
//! (`ortho_passes::train`) over seeded token windows. Nothing here prints; the `train` command
//! (when it exists) reports progress from the returned [`StepReport`]s.

use ortho_codegen::cpu::{Elem, HostTensor, Plan, Profile, RuntimeError, TensorBuf};
use ortho_ir::{DType, Module, Op, TensorData};
use ortho_passes::autodiff::loss::append_token_cross_entropy;
use ortho_passes::autodiff::{
    autodiff, glob_match, parameters_as_inputs, select_params, AutodiffError, AutodiffSpec,
};
use ortho_passes::train::{
    cosine_with_warmup, AdamW, AdamWConfig, AdamWState, GradAccumulator, GroupSpec,
};

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainLoopError {
    #[error(transparent)]
    Autodiff(#[from] AutodiffError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Optimizer(#[from] ortho_passes::train::TrainError),
    #[error("parameter '{0}' is not f32 (training updates f32 weights)")]
    DType(String),
    #[error("the plan returned no output '{0}'")]
    MissingOutput(String),
    #[error("token data: {0}")]
    Data(String),
    #[error(
        "the saved state does not fit this model: parameter {index} is {got}, the model has {want}"
    )]
    StateMismatch {
        index: usize,
        got: String,
        want: String,
    },
    #[error("the trainer was built without an evaluation plan (TrainConfig::eval)")]
    NoEvalPlan,
}

/// A parameter group: its settings and the name patterns of its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupConfig {
    pub spec: GroupSpec,
    pub patterns: Vec<String>,
}

/// How to train.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// The model's token input and logits output.
    pub input: String,
    pub logits: String,
    /// Name patterns of the weights to train.
    pub trainable: Vec<String>,
    /// Parameter groups; a parameter joins the first group with a matching pattern, else the
    /// first group. Empty: one group with `lr` and `weight_decay`.
    pub groups: Vec<GroupConfig>,
    pub lr: f64,
    pub weight_decay: f64,
    pub adam: AdamWConfig,
    pub warmup_steps: u64,
    pub total_steps: u64,
    /// The schedule's floor, as a fraction of each group's learning rate.
    pub min_lr_ratio: f64,
    /// Weights that are zero at the start stay zero (masked fine-tuning of pruned models).
    pub keep_zeros: bool,
    pub threads: Option<usize>,
    /// Name patterns of constants (any dtype) fed as inputs at every step and never trained,
    /// so a caller can replace them between steps without recompiling the plan (POET's frozen
    /// base and permutations, re-drawn at every merge). They are excluded from `trainable`.
    pub state: Vec<String>,
    /// Also compile a forward-only plan over the same parameters, for held-out evaluation on
    /// the current weights ([`Trainer::logits`]).
    pub eval: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            input: "input_ids".into(),
            logits: "logits".into(),
            trainable: vec!["*".into()],
            groups: Vec::new(),
            lr: 1e-3,
            weight_decay: 0.0,
            adam: AdamWConfig::default(),
            warmup_steps: 0,
            total_steps: 1,
            min_lr_ratio: 0.1,
            keep_zeros: false,
            threads: None,
            state: Vec::new(),
            eval: false,
        }
    }
}

/// One batch of token windows: `batch` rows of `seqlen + 1` ids (inputs and next-token labels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    pub batch: usize,
    pub seqlen: usize,
    pub ids: Vec<i64>,
}

/// Seeded random windows over a token stream: the same seed gives the same windows.
#[derive(Debug, Clone)]
pub struct WindowSampler {
    tokens: Vec<i64>,
    seqlen: usize,
    batch: usize,
    state: u64,
}

impl WindowSampler {
    pub fn new(
        tokens: Vec<i64>,
        batch: usize,
        seqlen: usize,
        seed: u64,
    ) -> Result<Self, TrainLoopError> {
        if tokens.len() < seqlen + 1 || batch == 0 || seqlen == 0 {
            return Err(TrainLoopError::Data(format!(
                "{} tokens cannot make windows of {} (+1) tokens × {batch}",
                tokens.len(),
                seqlen
            )));
        }
        Ok(WindowSampler {
            tokens,
            seqlen,
            batch,
            state: seed,
        })
    }

    /// splitmix64, so the sampler needs no random-number crate and is the same everywhere.
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The next batch of windows, each starting at a uniformly drawn offset.
    pub fn next_batch(&mut self) -> TokenBatch {
        let span = (self.tokens.len() - self.seqlen) as u64;
        let mut ids = Vec::with_capacity(self.batch * (self.seqlen + 1));
        for _ in 0..self.batch {
            let start = (self.next_u64() % span) as usize;
            ids.extend_from_slice(&self.tokens[start..start + self.seqlen + 1]);
        }
        TokenBatch {
            batch: self.batch,
            seqlen: self.seqlen,
            ids,
        }
    }

    /// The sampler's state, for a checkpoint; [`WindowSampler::set_state`] resumes it.
    pub fn state(&self) -> u64 {
        self.state
    }
    pub fn set_state(&mut self, s: u64) {
        self.state = s;
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    pub step: u64,
    /// Mean loss over the step's micro-batches.
    pub loss: f64,
    pub grad_norm: f64,
    /// The schedule's learning-rate multiplier.
    pub lr_scale: f64,
    pub tokens: usize,
    /// Seconds spent in the forward+backward plan and in the optimizer update.
    pub run_secs: f64,
    pub update_secs: f64,
}

/// Everything a later step depends on, besides the data sampler and the `state` constants:
/// the step count, the parameters and the optimizer state (for checkpoints).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainerState {
    pub step: u64,
    pub names: Vec<String>,
    pub shapes: Vec<Vec<usize>>,
    pub values: Vec<Vec<f32>>,
    pub opt: AdamWState,
}

/// A model compiled for training and its optimizer state.
pub struct Trainer {
    plan: Plan,
    cfg: TrainConfig,
    labels: String,
    loss: String,
    names: Vec<String>,
    grads: Vec<String>,
    shapes: Vec<Vec<usize>>,
    values: Vec<Vec<f32>>,
    /// The `state` constants: their input names and current values.
    state_names: Vec<String>,
    state_values: Vec<HostTensor>,
    opt: AdamW,
    step: u64,
    /// The forward-only plan of the model with the same parameter and state inputs.
    eval_plan: Option<Plan>,
}

impl Trainer {
    /// Appends the loss and its gradient to `model`, compiles the forward+backward plan once,
    /// and reads the initial weights.
    pub fn new(mut model: Module, cfg: TrainConfig) -> Result<Trainer, TrainLoopError> {
        // Parameters are chosen before the loss is appended, so the loss's own constants are
        // never among them; autodiff then gets their exact names.
        ortho_ir::shape::infer_shapes(&mut model);
        let is_state = |n: &str| cfg.state.iter().any(|p| glob_match(p, n));
        let params: Vec<_> = select_params(&model, &cfg.trainable)
            .into_iter()
            .filter(|&v| !is_state(model.main_graph().value_name(v)))
            .collect();
        let state: Vec<_> = {
            let g = model.main_graph();
            g.node_ids()
                .into_iter()
                .filter(|&n| matches!(g.node(n).op, Op::Const(_)))
                .map(|n| ortho_ir::ValueId { node: n, output: 0 })
                .filter(|&v| is_state(g.value_name(v)))
                .collect()
        };
        // The forward-only plan is made from the model before the loss is appended; the
        // clone's value ids are the original's, so the same parameters become inputs.
        let eval_plan = if cfg.eval {
            let mut fwd = model.clone();
            parameters_as_inputs(&mut fwd, &params);
            parameters_as_inputs(&mut fwd, &state);
            let mut p = Plan::compile(&fwd)?;
            if let Some(t) = cfg.threads {
                p.set_threads(t);
            }
            Some(p)
        } else {
            None
        };
        let ce = append_token_cross_entropy(&mut model, &cfg.logits, "labels")?;
        let names = parameters_as_inputs(&mut model, &params);
        let state_names = parameters_as_inputs(&mut model, &state);
        let mut state_values = Vec::with_capacity(state.len());
        for (&v, name) in state.iter().zip(&state_names) {
            let t = match model.main_graph().node(v.node).op {
                Op::Input { default: Some(t) } => model.tensor(t),
                _ => return Err(TrainLoopError::MissingOutput(name.clone())),
            };
            let host = HostTensor::from_tensor_data(t).map_err(|e| RuntimeError::Constant {
                name: name.clone(),
                msg: e.to_string(),
            })?;
            state_values.push(host);
        }
        let report = autodiff(
            &mut model,
            &AutodiffSpec {
                loss: ce.loss.clone(),
                trainable: names.clone(),
            },
        )?;
        let mut shapes = Vec::new();
        let mut values = Vec::new();
        let g = model.main_graph();
        for &p in &params {
            let name = g.value_name(p).to_string();
            let t = match g.node(p.node).op {
                Op::Input { default: Some(t) } => model.tensor(t),
                _ => return Err(TrainLoopError::DType(name)),
            };
            if t.dtype != DType::F32 {
                return Err(TrainLoopError::DType(name));
            }
            let v: Vec<f32> = t
                .to_f64_vec()
                .ok_or_else(|| TrainLoopError::DType(name.clone()))?
                .into_iter()
                .map(|x| x as f32)
                .collect();
            shapes.push(t.dims.iter().map(|&d| d.max(0) as usize).collect());
            values.push(v);
        }
        let groups: Vec<GroupConfig> = if cfg.groups.is_empty() {
            vec![GroupConfig {
                spec: GroupSpec {
                    name: "all".into(),
                    lr: cfg.lr,
                    weight_decay: cfg.weight_decay,
                    max_grad_norm: None,
                },
                patterns: vec!["*".into()],
            }]
        } else {
            cfg.groups.clone()
        };
        let group_of: Vec<usize> = names
            .iter()
            .map(|n| {
                groups
                    .iter()
                    .position(|gc| gc.patterns.iter().any(|p| glob_match(p, n)))
                    .unwrap_or(0)
            })
            .collect();
        let sizes: Vec<usize> = values.iter().map(Vec::len).collect();
        let mut opt = AdamW::new(
            cfg.adam,
            groups.into_iter().map(|g| g.spec).collect(),
            &sizes,
            group_of,
        )?;
        if cfg.keep_zeros {
            for (i, v) in values.iter().enumerate() {
                if v.contains(&0.0) {
                    opt.set_mask(i, v.iter().map(|&x| x != 0.0).collect())?;
                }
            }
        }
        let mut plan = Plan::compile(&model)?;
        if let Some(t) = cfg.threads {
            plan.set_threads(t);
        }
        let grads = report.grads.into_iter().map(|(_, g)| g).collect();
        Ok(Trainer {
            plan,
            cfg,
            labels: ce.labels,
            loss: ce.loss,
            names,
            grads,
            shapes,
            values,
            state_names,
            state_values,
            opt,
            step: 0,
            eval_plan,
        })
    }

    /// The token inputs and labels of one batch.
    fn batch_feeds(&self, b: &TokenBatch) -> Result<Vec<(&str, HostTensor)>, TrainLoopError> {
        let (inputs, labels) = split_windows(b);
        Ok(vec![
            (
                self.cfg.input.as_str(),
                HostTensor::from_vec(vec![b.batch, b.seqlen], inputs)?,
            ),
            (
                self.labels.as_str(),
                HostTensor::from_vec(vec![b.batch, b.seqlen], labels)?,
            ),
        ])
    }

    /// The loss and every gradient from the plan's outputs; the gradients are moved out of
    /// the outputs, not copied.
    fn read_outputs(
        &self,
        out: Vec<(String, HostTensor)>,
    ) -> Result<(f64, Vec<Vec<f32>>), TrainLoopError> {
        let mut by_name: std::collections::HashMap<String, HostTensor> = out.into_iter().collect();
        let loss = by_name
            .get(&self.loss)
            .ok_or_else(|| TrainLoopError::MissingOutput(self.loss.clone()))?
            .to_f64_vec()
            .first()
            .copied()
            .unwrap_or(f64::NAN);
        let mut grads = Vec::with_capacity(self.grads.len());
        for g in &self.grads {
            let t = by_name
                .remove(g)
                .ok_or_else(|| TrainLoopError::MissingOutput(g.clone()))?;
            let (_, buf) = t.into_parts();
            grads.push(match f32::into_vec(buf) {
                Ok(v) => v,
                Err(other) => HostTensor::new(vec![other.len()], other)?
                    .to_f64_vec()
                    .into_iter()
                    .map(|x| x as f32)
                    .collect(),
            });
        }
        Ok((loss, grads))
    }

    /// Runs the plan on one batch with copies of the weights: the loss and every gradient.
    fn forward_backward(&self, b: &TokenBatch) -> Result<(f64, Vec<Vec<f32>>), TrainLoopError> {
        let mut feeds = self.batch_feeds(b)?;
        feeds.extend(self.weight_feeds()?);
        let out = self.plan.run(&feeds)?;
        self.read_outputs(out)
    }

    /// As [`Trainer::forward_backward`], with the weights moved into the feeds and back rather
    /// than copied (a copy of every weight per step costs time and as much memory again as
    /// the model), optionally timing every op type.
    fn forward_backward_moving(
        &mut self,
        b: &TokenBatch,
        profiled: bool,
    ) -> Result<(f64, Vec<Vec<f32>>, Option<Profile>), TrainLoopError> {
        // Lengths are checked first so that wrapping the moved vectors cannot fail half way
        // (a caller may have resized one through `parameters_mut`).
        for (i, (v, s)) in self.values.iter().zip(&self.shapes).enumerate() {
            if v.len() != s.iter().product::<usize>() {
                return Err(TrainLoopError::StateMismatch {
                    index: i,
                    got: format!("{} values", v.len()),
                    want: format!("'{}' {:?}", self.names[i], s),
                });
            }
        }
        let values = std::mem::take(&mut self.values);
        let mut weights = Vec::with_capacity(values.len());
        for (v, s) in values.into_iter().zip(&self.shapes) {
            weights.push(HostTensor::new(s.clone(), TensorBuf::F32(v))?);
        }
        let run = {
            let mut feeds = self.batch_feeds(b)?;
            feeds.extend(self.names.iter().map(|n| n.as_str()).zip(weights));
            for (n, v) in self.state_names.iter().zip(&self.state_values) {
                feeds.push((n.as_str(), v.clone()));
            }
            let run = if profiled {
                self.plan.run_profiled(&feeds).map(|(o, p)| (o, Some(p)))
            } else {
                self.plan.run(&feeds).map(|o| (o, None))
            };
            // The weights go back whatever the run's outcome (they were built as f32 above).
            let back: Vec<Vec<f32>> = feeds
                .into_iter()
                .skip(2)
                .take(self.names.len())
                .filter_map(|(_, t)| f32::into_vec(t.into_parts().1).ok())
                .collect();
            (run, back)
        };
        let (run, back) = run;
        self.values = back;
        let (out, prof) = run?;
        let (loss, grads) = self.read_outputs(out)?;
        Ok((loss, grads, prof))
    }

    /// Runs the forward+backward plan once on `b` with every op type timed, without updating
    /// anything: where a step's time goes (`cargo bench --bench train` prints it).
    pub fn profile(&mut self, b: &TokenBatch) -> Result<(f64, Profile), TrainLoopError> {
        let (loss, _, prof) = self.forward_backward_moving(b, true)?;
        Ok((loss, prof.unwrap_or_default()))
    }

    /// The feeds of every parameter and `state` constant at their current values.
    fn weight_feeds(&self) -> Result<Vec<(&str, HostTensor)>, TrainLoopError> {
        let mut feeds = Vec::with_capacity(self.names.len() + self.state_names.len());
        for ((n, s), v) in self.names.iter().zip(&self.shapes).zip(&self.values) {
            feeds.push((n.as_str(), HostTensor::from_vec(s.clone(), v.clone())?));
        }
        for (n, v) in self.state_names.iter().zip(&self.state_values) {
            feeds.push((n.as_str(), v.clone()));
        }
        Ok(feeds)
    }

    /// The logits of equally long token windows on the current weights, from the forward-only
    /// plan (built when `TrainConfig::eval` is set): held-out evaluation without a gradient.
    pub fn logits(&self, windows: &[Vec<i64>]) -> Result<HostTensor, TrainLoopError> {
        let plan = self.eval_plan.as_ref().ok_or(TrainLoopError::NoEvalPlan)?;
        let (b, s) = (windows.len(), windows.first().map_or(0, Vec::len));
        let ids: Vec<i64> = windows.iter().flatten().copied().collect();
        let mut feeds = vec![(
            self.cfg.input.as_str(),
            HostTensor::from_vec(vec![b, s], ids)?,
        )];
        feeds.extend(self.weight_feeds()?);
        plan.run(&feeds)?
            .into_iter()
            .find(|(n, _)| *n == self.cfg.logits)
            .map(|(_, t)| t)
            .ok_or_else(|| TrainLoopError::MissingOutput(self.cfg.logits.clone()))
    }

    /// The trainer's state, for a checkpoint.
    pub fn export_state(&self) -> TrainerState {
        TrainerState {
            step: self.step,
            names: self.names.clone(),
            shapes: self.shapes.clone(),
            values: self.values.clone(),
            opt: self.opt.export_state(),
        }
    }

    /// Continues from a state taken by [`Trainer::export_state`] of a trainer built from the
    /// same model and configuration: every parameter's name and shape must match; on a
    /// mismatch nothing is changed.
    pub fn import_state(&mut self, s: TrainerState) -> Result<(), TrainLoopError> {
        let n = self.names.len();
        if s.names.len() != n || s.shapes.len() != n || s.values.len() != n {
            return Err(TrainLoopError::StateMismatch {
                index: s.names.len().min(n),
                got: format!("one of {} parameters", s.names.len()),
                want: format!("{n} parameters"),
            });
        }
        for i in 0..n {
            let elems: usize = self.shapes[i].iter().product();
            if s.names[i] != self.names[i]
                || s.shapes[i] != self.shapes[i]
                || s.values[i].len() != elems
            {
                return Err(TrainLoopError::StateMismatch {
                    index: i,
                    got: format!("'{}' {:?}", s.names[i], s.shapes[i]),
                    want: format!("'{}' {:?}", self.names[i], self.shapes[i]),
                });
            }
        }
        self.opt.import_state(s.opt)?;
        self.values = s.values;
        self.step = s.step;
        Ok(())
    }

    /// The loss on `b` without updating anything (held-out evaluation).
    pub fn eval_loss(&self, b: &TokenBatch) -> Result<f64, TrainLoopError> {
        Ok(self.forward_backward(b)?.0)
    }

    /// One optimizer step over `micro` batches (their gradients are averaged).
    pub fn step(&mut self, micro: &[TokenBatch]) -> Result<StepReport, TrainLoopError> {
        let t0 = std::time::Instant::now();
        let mut acc = GradAccumulator::new();
        let mut loss = 0.0;
        let mut tokens = 0;
        let mut single = None;
        for b in micro {
            let (l, g, _) = self.forward_backward_moving(b, false)?;
            loss += l;
            tokens += b.batch * b.seqlen;
            if micro.len() == 1 {
                single = Some(g);
            } else {
                acc.add(&g);
            }
        }
        // One micro-batch needs no accumulation (and no f64 copy of every gradient).
        let grads = match single {
            Some(g) => g,
            None => acc.take(),
        };
        let run_secs = t0.elapsed().as_secs_f64();
        let t1 = std::time::Instant::now();
        let c = &self.cfg;
        let scale = cosine_with_warmup(self.step, c.warmup_steps, c.total_steps, c.min_lr_ratio);
        let stats = self.opt.step(&mut self.values, &grads, scale)?;
        let update_secs = t1.elapsed().as_secs_f64();
        self.step += 1;
        Ok(StepReport {
            step: self.step,
            loss: loss / micro.len().max(1) as f64,
            grad_norm: stats.grad_norm,
            lr_scale: scale,
            tokens,
            run_secs,
            update_secs,
        })
    }

    /// The trained parameters: (name, shape, values).
    pub fn parameters(&self) -> impl Iterator<Item = (&str, &[usize], &[f32])> {
        self.names
            .iter()
            .zip(&self.shapes)
            .zip(&self.values)
            .map(|((n, s), v)| (n.as_str(), s.as_slice(), v.as_slice()))
    }

    /// The trained parameters' values, to change between steps (a POET merge zeroes its skew
    /// parameters); shapes are fixed.
    pub fn parameters_mut(&mut self) -> impl Iterator<Item = (&str, &mut Vec<f32>)> {
        self.names
            .iter()
            .map(String::as_str)
            .zip(self.values.iter_mut())
    }

    /// The index of parameter `name` (its optimizer index), when it is trained.
    pub fn parameter_index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The current value of a `state` constant.
    pub fn state(&self, name: &str) -> Option<&HostTensor> {
        let i = self.state_names.iter().position(|n| n == name)?;
        self.state_values.get(i)
    }

    /// Replaces a `state` constant's value (same dtype and shape) for the following steps.
    pub fn set_state(&mut self, name: &str, value: HostTensor) -> Result<(), TrainLoopError> {
        let i = self
            .state_names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| TrainLoopError::MissingOutput(name.to_string()))?;
        let old = &self.state_values[i];
        if old.dtype() != value.dtype() || old.shape() != value.shape() {
            return Err(TrainLoopError::Data(format!(
                "state '{name}': {:?} {:?} cannot replace {:?} {:?}",
                value.dtype(),
                value.shape(),
                old.dtype(),
                old.shape()
            )));
        }
        self.state_values[i] = value;
        Ok(())
    }

    /// Steps taken so far.
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// The optimizer, for group resets and masks.
    pub fn optimizer_mut(&mut self) -> &mut AdamW {
        &mut self.opt
    }

    /// Writes the trained weights into `m` (the model the trainer was built from): each
    /// parameter's initializer is replaced by a new tensor (copy-on-write).
    pub fn write_into(&self, m: &mut Module) -> usize {
        let main = m.main;
        let by_name = m.graph(main).value_names();
        let mut written = 0;
        for (name, shape, vals) in self.parameters() {
            let Some(&v) = by_name.get(name) else {
                continue;
            };
            if let Op::Const(_) | Op::Input { default: Some(_) } = m.graph(main).node(v.node).op {
                let dims = shape.iter().map(|&d| d as i64).collect();
                let t = m.add_tensor(TensorData::from_f32(dims, vals));
                let node = m.graph_mut(main).node_mut(v.node);
                node.op = match node.op {
                    Op::Const(_) => Op::Const(t),
                    _ => Op::Input { default: Some(t) },
                };
                written += 1;
            }
        }
        for (name, value) in self.state_names.iter().zip(&self.state_values) {
            let Some(&v) = by_name.get(name) else {
                continue;
            };
            if let Op::Const(_) | Op::Input { default: Some(_) } = m.graph(main).node(v.node).op {
                let t = m.add_tensor(value.to_tensor_data());
                let node = m.graph_mut(main).node_mut(v.node);
                node.op = match node.op {
                    Op::Const(_) => Op::Const(t),
                    _ => Op::Input { default: Some(t) },
                };
                written += 1;
            }
        }
        written
    }
}

/// A batch's model inputs (each window but its last token) and labels (each but its first).
fn split_windows(b: &TokenBatch) -> (Vec<i64>, Vec<i64>) {
    let w = b.seqlen + 1;
    let mut x = Vec::with_capacity(b.batch * b.seqlen);
    let mut y = Vec::with_capacity(b.batch * b.seqlen);
    for r in b.ids.chunks(w) {
        x.extend_from_slice(&r[..b.seqlen]);
        y.extend_from_slice(&r[1..]);
    }
    (x, y)
}
