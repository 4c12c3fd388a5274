//! Running a shard chain: what `run`, `eval` and `compare` compile when they are given a
//! manifest instead of a model. The shards run in order on the CPU engine; each shard is fed
//! the boundary tensors of the shard before and the caller's inputs it reads.

use super::error::ShardError;
use super::manifest::{Manifest, Source};
use crate::CliError;
use ortho_codegen::cpu::{HostTensor, Plan, PlanOptions, Profile};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A manifest's shards, compiled.
pub struct Chain {
    pub manifest: Manifest,
    pub manifest_path: PathBuf,
    plans: Vec<Plan>,
}

/// What a command runs: one model, or a chain of shards behaving as one.
pub enum Runner {
    One(Plan),
    Chain(Chain),
}

fn compile_file(
    path: &Path,
    threads: Option<usize>,
    progress: Option<&ortho_codegen::cpu::CompileProgress>,
) -> Result<Plan, CliError> {
    let m = crate::input::load_module(path)?;
    let mut opts = PlanOptions::default();
    if let Some(t) = threads {
        opts.threads = t.max(1);
    }
    opts.progress = progress.cloned();
    Plan::compile_with(&m, &opts).map_err(|e| CliError::Compile {
        path: path.to_path_buf(),
        source: e.into(),
    })
}

impl Chain {
    /// Loads a manifest (checking every shard's hash) and compiles its shards, telling
    /// `progress` about each one's nodes.
    pub fn compile(
        path: &Path,
        threads: Option<usize>,
        progress: Option<&ortho_codegen::cpu::CompileProgress>,
    ) -> Result<Chain, CliError> {
        let (manifest, dir) = Manifest::load(path, true)?;
        if let Some((shard, e)) = manifest.ahead() {
            return Err(ShardError::Chain {
                manifest: super::manifest::manifest_path(path),
                shard,
                why: format!(
                    "is at epoch {e}, the set at {}: a participant-local re-key is under way; \
                     re-key the remaining shards (`shard rekey --shard i`) before running the chain",
                    manifest.epoch
                ),
            }
            .into());
        }
        let plans = manifest
            .shards
            .iter()
            .map(|s| compile_file(&dir.join(&s.file), threads, progress))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Chain {
            manifest,
            manifest_path: super::manifest::manifest_path(path),
            plans,
        })
    }

    fn feeds_for(
        &self,
        i: usize,
        caller: &HashMap<&str, &HostTensor>,
        prev: &HashMap<String, HostTensor>,
    ) -> Result<Vec<(String, HostTensor)>, ShardError> {
        let err = |why: String| ShardError::Chain {
            manifest: self.manifest_path.clone(),
            shard: i,
            why,
        };
        self.manifest.shards[i]
            .inputs
            .iter()
            .map(|inp| {
                let t = match &inp.from {
                    Source::ModelInput(n) => caller
                        .get(n.as_str())
                        .map(|t| (*t).clone())
                        .ok_or_else(|| err(format!("no feed for model input '{n}'")))?,
                    Source::Boundary(n) => prev
                        .get(n)
                        .cloned()
                        .ok_or_else(|| err(format!("the shard before gave no '{n}'")))?,
                };
                Ok((inp.spec.name.clone(), t))
            })
            .collect()
    }

    /// Runs the chain; with `profile`, the engine's per-op times summed over the shards.
    pub fn run(
        &self,
        feeds: &[(&str, HostTensor)],
        mut profile: Option<&mut Profile>,
    ) -> Result<Vec<(String, HostTensor)>, CliError> {
        let caller: HashMap<&str, &HostTensor> = feeds.iter().map(|(n, t)| (*n, t)).collect();
        let mut prev: HashMap<String, HostTensor> = HashMap::new();
        let mut outs = Vec::new();
        for (i, plan) in self.plans.iter().enumerate() {
            let f = self.feeds_for(i, &caller, &prev)?;
            let refs: Vec<(&str, HostTensor)> =
                f.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
            outs = match profile.as_deref_mut() {
                Some(p) => {
                    let (o, pr) = plan.run_profiled(&refs).map_err(crate::run::run_error)?;
                    merge_profile(p, pr);
                    o
                }
                None => plan.run(&refs).map_err(crate::run::run_error)?,
            };
            prev = outs.iter().cloned().collect();
        }
        Ok(outs)
    }
}

fn merge_profile(into: &mut Profile, p: Profile) {
    into.total += p.total;
    for (op, d, n) in p.ops {
        match into.ops.iter_mut().find(|(o, _, _)| *o == op) {
            Some(e) => {
                e.1 += d;
                e.2 += n;
            }
            None => into.ops.push((op, d, n)),
        }
    }
    into.ops.sort_by(|a, b| b.1.cmp(&a.1));
}

impl Runner {
    /// Compiles a model, or the chain of a manifest (a `.json` file or a folder holding
    /// `manifest.json`), telling `progress` how far each compilation is.
    pub fn compile(
        path: &Path,
        threads: Option<usize>,
        progress: Option<&ortho_codegen::cpu::CompileProgress>,
    ) -> Result<Runner, CliError> {
        if super::manifest::is_manifest(path) {
            Chain::compile(path, threads, progress).map(Runner::Chain)
        } else {
            compile_file(path, threads, progress).map(Runner::One)
        }
    }

    /// The inputs a caller feeds.
    pub fn input_names(&self) -> Vec<String> {
        match self {
            Runner::One(p) => p.input_names(),
            Runner::Chain(c) => c
                .manifest
                .model_inputs
                .iter()
                .map(|x| x.name.clone())
                .collect(),
        }
    }

    pub fn threads(&self) -> usize {
        match self {
            Runner::One(p) => p.threads(),
            Runner::Chain(c) => c.plans.first().map_or(1, Plan::threads),
        }
    }

    pub fn run(&self, feeds: &[(&str, HostTensor)]) -> Result<Vec<(String, HostTensor)>, CliError> {
        match self {
            Runner::One(p) => p.run(feeds).map_err(crate::run::run_error),
            Runner::Chain(c) => c.run(feeds, None),
        }
    }

    pub fn run_profiled(
        &self,
        feeds: &[(&str, HostTensor)],
    ) -> Result<(Vec<(String, HostTensor)>, Profile), CliError> {
        match self {
            Runner::One(p) => p.run_profiled(feeds).map_err(crate::run::run_error),
            Runner::Chain(c) => {
                let mut prof = Profile {
                    ops: Vec::new(),
                    total: Duration::ZERO,
                };
                let o = c.run(feeds, Some(&mut prof))?;
                Ok((o, prof))
            }
        }
    }
}
