//! `ortho-opt shard rekey`: moving a shard set from epoch t to t + 1.
//!
//! Every shard is read, re-keyed and written on its own (one shard in memory at a time; shard i
//! needs only its own file and the changes of epoch t + 1 it shares with shard i − 1, which are
//! derived from the epoch's seed). The new epoch is written into a staging folder, renamed to
//! `epoch-NNNNNN` when complete, and only then does the manifest switch to it (atomic rename):
//! a run killed at any point leaves the manifest naming the previous, complete epoch.

use super::error::ShardError;
use super::manifest::{epoch_dir_name, Manifest, TransformRecord};
use crate::cli::GlobalArgs;
use ortho_passes::transforms::rotate_residual::RotationKind;
use std::fmt::Write as _;
use std::path::PathBuf;
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
    /// Testing hook: fail after writing this many shards of the new epoch (as a killed run).
    #[arg(long, hide = true)]
    pub fail_after: Option<usize>,
}

pub fn run(a: &RekeyArgs, _g: &GlobalArgs) -> Result<(String, String), ShardError> {
    let t0 = Instant::now();
    let mpath = super::manifest::manifest_path(&a.dir);
    let (mut man, dir) = Manifest::load(&mpath, true)?;
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
    let epoch = man.epoch + 1;
    // Staging folders of killed runs hold no published data (the manifest never named them).
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".epoch-") && name.contains(".tmp-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let per_shard = a.placement == Placement::PerShard;
    let stage = dir.join(format!(
        ".{}.tmp-{}",
        epoch_dir_name(epoch),
        std::process::id()
    ));
    let final_dir = dir.join(epoch_dir_name(epoch));
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
        for (i, s) in man.shards.iter().enumerate() {
            if a.fail_after == Some(i) {
                return Err(ShardError::Rekey {
                    path: mpath.clone(),
                    why: format!("stopped after {i} shards (--fail-after)"),
                });
            }
            let path = dir.join(&s.file);
            let mut m = crate::input::load_module(&path).map_err(|e| ShardError::Model {
                path: path.clone(),
                source: Box::new(e),
            })?;
            let width = ortho_ir::analysis::analyze_gauge(&m, m.main)
                .main()
                .map(|c| c.width as usize)
                .ok_or_else(|| ShardError::Rekey {
                    path: path.clone(),
                    why: "no residual stream found".into(),
                })?;
            let kind = a.kind.rotation();
            let own = ortho_passes::upm::change(kind, width, a.seed, epoch, per_shard.then_some(i));
            let incoming = (per_shard && i > 0)
                .then(|| ortho_passes::upm::change(kind, width, a.seed, epoch, Some(i - 1)));
            let st =
                ortho_passes::upm::rekey_shard(&mut m, &own, incoming.as_ref()).map_err(|e| {
                    ShardError::Model {
                        path: path.clone(),
                        source: Box::new(e),
                    }
                })?;
            ortho_ir::verify::verify_module(&m).map_err(|d| ShardError::Model {
                path: path.clone(),
                source: d.into(),
            })?;
            let name = super::shard_file_name(i);
            let out = stage.join(&name);
            super::export(&m, &out)?;
            let sha = super::sha256::file_hex(&out).map_err(|source| ShardError::Io {
                path: out.clone(),
                source,
            })?;
            let _ = writeln!(
                report,
                "  shard {i}: {} weights rewritten{}{}, ‖RᵀR − I‖_F = {:.2e}",
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
    man.placement = placement.into();
    man.transforms.push(TransformRecord {
        epoch,
        kind: a.kind.name().into(),
        seed: a.seed,
        placement: placement.into(),
        shards: (0..man.shards.len()).collect(),
    });
    man.write_atomic(&dir)?;
    if !a.keep_old && old_dir != final_dir {
        let _ = std::fs::remove_dir_all(&old_dir);
    }
    let head = format!(
        "rekeyed {} to epoch {epoch} ({}, {placement}, seed {}) in {:.2} s\n",
        mpath.display(),
        a.kind.name(),
        a.seed,
        t0.elapsed().as_secs_f64()
    );
    Ok((head + &report, String::new()))
}
