//! `ortho-opt shard rekey`: moving a shard set from epoch t to t + 1.
//!
//! Every shard is read, re-keyed and written on its own (one shard in memory at a time; shard i
//! needs only its own file and the changes of epoch t + 1 it shares with its neighbours, which
//! are derived from the epoch's seed and the boundary: `(seed, t + 1)` for the folded placement,
//! `(seed, t + 1, i − 1)` and `(seed, t + 1, i)` for the per-shard one). The whole set: the new
//! epoch is written into a staging folder, renamed to `epoch-NNNNNN` when complete, and only
//! then does the manifest switch to it (atomic rename), so a run killed at any point leaves the
//! manifest naming the previous, complete epoch.
//!
//! Participant-local (`--shard i`): only the manifest and shard i's file are opened (the hash of
//! no other shard is checked); the new file is staged, renamed into `epoch-NNNNNN/`, and the
//! manifest marks shard i one epoch ahead. A chain refuses to run while a shard is ahead; the
//! set's epoch advances when the last shard catches up.

use super::error::ShardError;
use super::manifest::{epoch_dir_name, Manifest, TransformRecord};
use crate::cli::GlobalArgs;
use ortho_passes::transforms::rotate_residual::RotationKind;
use ortho_passes::upm::heads::HeadKeys;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The kind of the residual-basis change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyKind {
    /// Haar-random rotation (dense d × d; the strong kind).
    Haar,
    /// Randomized Hadamard (structured, cheap).
    Hadamard,
    /// Random signed permutation (exact in any dtype; cheap, weak).
    SignedPerm,
}

impl KeyKind {
    fn rotation(self) -> RotationKind {
        match self {
            KeyKind::Haar => RotationKind::Haar,
            KeyKind::Hadamard => RotationKind::Hadamard,
            KeyKind::SignedPerm => RotationKind::SignedPermutation,
        }
    }
    fn name(self) -> &'static str {
        match self {
            KeyKind::Haar => "haar",
            KeyKind::Hadamard => "hadamard",
            KeyKind::SignedPerm => "signed-perm",
        }
    }
}

/// Where the residual-basis changes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Placement {
    /// One basis for the whole chain, folded into every shard (no node added).
    Folded,
    /// A basis per shard, and a d × d MatMul at the entry of every shard after the first.
    PerShard,
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Placement::Folded => "folded",
            Placement::PerShard => "per-shard",
        }
    }
}

/// Re-key a shard set: compose fresh seeded orthogonal residual-basis changes into the shard
/// weights (epoch t → t + 1). The first re-key also folds the norm gains into the readers.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  ortho-opt shard rekey shards/ --kind haar --seed 7   # shards/epoch-000001, manifest switched"
)]
pub struct RekeyArgs {
    /// The shard folder (or its manifest.json).
    pub dir: PathBuf,
    #[arg(long, value_enum, default_value_t = KeyKind::Haar)]
    pub kind: KeyKind,
    /// Seed of this epoch's changes (the epoch number is mixed in, so one seed serves many).
    #[arg(long)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = Placement::Folded)]
    pub placement: Placement,
    /// Keep the previous epoch's folder (for experiments that stitch epochs).
    #[arg(long)]
    pub keep_old: bool,
    /// Re-key only shard I (participant-local): reads the manifest, shard I's own file and
    /// nothing else; the shard moves one epoch ahead of the set, which advances when its last
    /// shard has been re-keyed. Every shard of an epoch must use the same kind, seed and placement.
    #[arg(long, value_name = "I")]
    pub shard: Option<usize>,
    /// Also key every attention's V/O path inside the shards: an absolute general invertible
    /// matrix per KV head with condition number ≤ KAPPA, drawn each epoch (the change from the
    /// previous epoch's key is applied, so keys never compound). Leave it out to move the V/O
    /// paths back to (or keep them at) the identity key.
    #[arg(long, value_name = "KAPPA")]
    pub head_cond: Option<f64>,
    /// Testing hook: fail after writing this many shards of the new epoch (as a killed run).
    #[arg(long, hide = true)]
    pub fail_after: Option<usize>,
}

pub fn run(a: &RekeyArgs, _g: &GlobalArgs) -> Result<(String, String), ShardError> {
    let t0 = Instant::now();
    let mpath = super::manifest::manifest_path(&a.dir);
    // Hashes are checked below, for the shards this run reads only.
    let (man, dir) = Manifest::load(&mpath, false)?;
    let placement = a.placement.name();
    if man.placement != "none" && man.placement != placement {
        return Err(ShardError::Rekey {
            path: mpath,
            why: format!(
                "the set is in placement {}; it cannot switch to {placement}",
                man.placement
            ),
        });
    }
    if let Some(k) = a.head_cond {
        if !(k.is_finite() && k >= 1.0) {
            return Err(ShardError::Rekey {
                path: mpath,
                why: format!("--head-cond {k}: a condition cap must be a finite number ≥ 1"),
            });
        }
    }
    let ctx = Ctx {
        a,
        mpath: &mpath,
        dir: &dir,
        epoch: man.epoch + 1,
    };
    let (report, done) = match a.shard {
        None => ctx.all(man)?,
        Some(i) => ctx.one(man, i)?,
    };
    let head = format!(
        "rekeyed {}{} to epoch {} ({}, {placement}, seed {}) in {:.2} s{}\n",
        mpath.display(),
        a.shard.map(|i| format!(" shard {i}")).unwrap_or_default(),
        ctx.epoch,
        a.kind.name(),
        a.seed,
        t0.elapsed().as_secs_f64(),
        if done {
            ""
        } else {
            " (the set stays at the previous epoch until every shard is re-keyed)"
        }
    );
    Ok((head + &report, String::new()))
}

/// What one re-key run works on.
struct Ctx<'a> {
    a: &'a RekeyArgs,
    mpath: &'a Path,
    dir: &'a Path,
    /// The epoch being produced.
    epoch: u64,
}

impl Ctx<'_> {
    /// Re-keys shard `i` of `man` from its file into `out`; returns its sha256 and a report line.
    /// Reads shard i's file only.
    fn shard(&self, man: &Manifest, i: usize, out: &Path) -> Result<(String, String), ShardError> {
        let a = self.a;
        let path = self.dir.join(&man.shards[i].file);
        // Where the time goes, reported per shard (issue 12's cost goal).
        let mut t = Instant::now();
        let mut lap = || {
            let s = t.elapsed().as_secs_f64();
            t = Instant::now();
            s
        };
        let mut m = crate::input::load_module(&path).map_err(|e| ShardError::Model {
            path: path.clone(),
            source: Box::new(e),
        })?;
        let t_load = lap();
        let width = ortho_ir::analysis::analyze_gauge(&m, m.main)
            .main()
            .map(|c| c.width as usize)
            .ok_or_else(|| ShardError::Rekey {
                path: path.clone(),
                why: "no residual stream found".into(),
            })?;
        let per_shard = a.placement == Placement::PerShard;
        let kind = a.kind.rotation();
        let own =
            ortho_passes::upm::change(kind, width, a.seed, self.epoch, per_shard.then_some(i));
        let incoming = (per_shard && i > 0)
            .then(|| ortho_passes::upm::change(kind, width, a.seed, self.epoch, Some(i - 1)));
        let st = ortho_passes::upm::rekey_shard(&mut m, &own, incoming.as_ref()).map_err(|e| {
            ShardError::Model {
                path: path.clone(),
                source: Box::new(e),
            }
        })?;
        // The V/O head keys move from the set's current epoch's to this epoch's.
        let prev = man
            .transforms
            .iter()
            .rev()
            .find(|r| r.epoch == man.epoch)
            .and_then(|r| {
                r.head_cond.map(|c| HeadKeys {
                    seed: r.seed,
                    epoch: r.epoch,
                    cond_cap: c,
                })
            });
        let next = a.head_cond.map(|c| HeadKeys {
            seed: a.seed,
            epoch: self.epoch,
            cond_cap: c,
        });
        let heads = if prev.is_some() || next.is_some() {
            let layer0 = man.shards[i].blocks[0];
            let h =
                ortho_passes::upm::heads::rekey_heads(&mut m, layer0, prev.as_ref(), next.as_ref())
                    .map_err(|e| ShardError::Model {
                        path: path.clone(),
                        source: Box::new(e),
                    })?;
            format!(
                "; V/O keys: {} matrices in {} layers, cond(A_t) ≤ {:.3}, cond(A_{{t−1}}⁻¹A_t) ≤ {:.3}, \
                 ‖C·C⁻¹ − I‖_max {:.1e}",
                h.matrices, h.layers, h.max_cond_key, h.max_cond_change, h.inverse_error
            )
        } else {
            String::new()
        };
        let t_fold = lap();
        ortho_ir::verify::verify_module(&m).map_err(|d| ShardError::Model {
            path: path.clone(),
            source: d.into(),
        })?;
        let t_verify = lap();
        super::export(&m, out)?;
        let t_export = lap();
        let sha = super::sha256::file_hex(out).map_err(|source| ShardError::Io {
            path: out.to_path_buf(),
            source,
        })?;
        let t_hash = lap();
        let line = format!(
            "  shard {i}: {} weights rewritten{}{}, ‖RᵀR − I‖_F = {:.2e}; \
             s: load {t_load:.2}, re-key {t_fold:.2}, verify {t_verify:.2}, export {t_export:.2}, \
             sha256 {t_hash:.2}{heads}\n",
            st.rewritten,
            if st.norms_folded > 0 {
                format!(", {} norms folded first", st.norms_folded)
            } else {
                String::new()
            },
            if st.entry_inserted {
                ", entry MatMul inserted"
            } else {
                ""
            },
            st.orthogonality_error
        );
        Ok((sha, line))
    }

    /// This run's staging folder and the new epoch's folder. Staging folders of killed runs
    /// are removed first: they hold no published data (the manifest never named them).
    fn folders(&self) -> (PathBuf, PathBuf) {
        let name = epoch_dir_name(self.epoch);
        if let Ok(rd) = std::fs::read_dir(self.dir) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(".epoch-") && n.contains(".tmp-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let stage = self.dir.join(format!(".{name}.tmp-{}", std::process::id()));
        (stage, self.dir.join(name))
    }

    fn record(&self) -> TransformRecord {
        TransformRecord {
            epoch: self.epoch,
            kind: self.a.kind.name().into(),
            seed: self.a.seed,
            placement: self.a.placement.name().into(),
            shards: Vec::new(),
            head_cond: self.a.head_cond,
        }
    }

    fn err(&self, why: String) -> ShardError {
        ShardError::Rekey {
            path: self.mpath.to_path_buf(),
            why,
        }
    }

    /// The whole set, epoch t → t + 1 (see the module comment).
    fn all(&self, mut man: Manifest) -> Result<(String, bool), ShardError> {
        let (a, dir, epoch) = (self.a, self.dir, self.epoch);
        if let Some((i, e)) = man.ahead() {
            return Err(self.err(format!(
                "shard {i} is already at epoch {e} (participant-local re-key under way): \
                 re-key the remaining shards with --shard"
            )));
        }
        for i in 0..man.shards.len() {
            man.check_shard(self.mpath, dir, i)?;
        }
        let (stage, final_dir) = self.folders();
        if final_dir.exists() {
            return Err(ShardError::Rekey {
                path: final_dir,
                why: "exists already (a previous run was interrupted after its rename; remove it)"
                    .into(),
            });
        }
        std::fs::create_dir_all(&stage).map_err(|source| ShardError::Io {
            path: stage.clone(),
            source,
        })?;
        let mut report = String::new();
        let result = (|| -> Result<Vec<(String, String)>, ShardError> {
            let mut files = Vec::new();
            for i in 0..man.shards.len() {
                if a.fail_after == Some(i) {
                    return Err(self.err(format!("stopped after {i} shards (--fail-after)")));
                }
                let name = super::shard_file_name(i);
                let (sha, line) = self.shard(&man, i, &stage.join(&name))?;
                report.push_str(&line);
                files.push((format!("{}/{name}", epoch_dir_name(epoch)), sha));
            }
            std::fs::rename(&stage, &final_dir).map_err(|source| ShardError::Io {
                path: final_dir.clone(),
                source,
            })?;
            Ok(files)
        })();
        let files = match result {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&stage);
                return Err(e);
            }
        };
        let old_dir = dir.join(epoch_dir_name(man.epoch));
        for (s, (file, sha)) in man.shards.iter_mut().zip(files) {
            s.file = file;
            s.sha256 = sha;
        }
        man.epoch = epoch;
        man.placement = a.placement.name().into();
        let mut rec = self.record();
        rec.shards = (0..man.shards.len()).collect();
        man.transforms.push(rec);
        man.write_atomic(dir)?;
        if !a.keep_old && old_dir != final_dir {
            let _ = std::fs::remove_dir_all(&old_dir);
        }
        Ok((report, true))
    }

    /// Shard `i` alone (participant-local): opens the manifest and shard i's file only.
    fn one(&self, mut man: Manifest, i: usize) -> Result<(String, bool), ShardError> {
        let (a, dir, epoch) = (self.a, self.dir, self.epoch);
        let k = man.shards.len();
        if i >= k {
            return Err(self.err(format!("--shard {i}: the set has {k} shards (0..{k})")));
        }
        if let Some(e) = man.shards[i].epoch {
            return Err(self.err(format!(
                "shard {i} is already at epoch {e}; the others must catch up first"
            )));
        }
        // Every shard of one epoch must take the same changes, or the chain breaks.
        let want = self.record();
        let rec = man.transforms.iter().position(|r| r.epoch == epoch);
        if let Some(r) = rec.map(|r| &man.transforms[r]) {
            let same = (&r.kind, r.seed, &r.placement, r.head_cond)
                == (&want.kind, want.seed, &want.placement, want.head_cond);
            if !same {
                return Err(self.err(format!(
                    "epoch {epoch} is under way with kind {}, seed {}, placement {}, head-cond \
                     {:?}: shard {i} must use the same",
                    r.kind, r.seed, r.placement, r.head_cond
                )));
            }
        }
        man.check_shard(self.mpath, dir, i)?;
        let (stage, final_dir) = self.folders();
        let name = super::shard_file_name(i);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ShardError::Io { path, source }
        };
        std::fs::create_dir_all(&stage).map_err(io(&stage))?;
        let result = (|| -> Result<(String, String), ShardError> {
            let staged = stage.join(&name);
            let (sha, line) = self.shard(&man, i, &staged)?;
            std::fs::create_dir_all(&final_dir).map_err(io(&final_dir))?;
            let dst = final_dir.join(&name);
            std::fs::rename(&staged, &dst).map_err(io(&dst))?;
            Ok((sha, line))
        })();
        let _ = std::fs::remove_dir_all(&stage);
        let (sha, line) = result?;
        let old = dir.join(&man.shards[i].file);
        let s = &mut man.shards[i];
        s.file = format!("{}/{name}", epoch_dir_name(epoch));
        s.sha256 = sha;
        s.epoch = Some(epoch);
        match rec {
            Some(r) => man.transforms[r].shards.push(i),
            None => {
                let mut r = want;
                r.shards.push(i);
                man.transforms.push(r);
            }
        }
        man.placement = a.placement.name().into();
        let done = man.shards.iter().all(|s| s.epoch == Some(epoch));
        if done {
            man.epoch = epoch;
            for s in &mut man.shards {
                s.epoch = None;
            }
        }
        man.write_atomic(dir)?;
        if !a.keep_old && old != dir.join(&man.shards[i].file) {
            let _ = std::fs::remove_file(&old);
            // The old epoch's folder goes with its last file (not empty: kept).
            if let Some(p) = old.parent() {
                let _ = std::fs::remove_dir(p);
            }
        }
        Ok((line, done))
    }
}
