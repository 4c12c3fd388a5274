//! The manifest of a shard set (`manifest.json`): which ONNX files make up the chain, in what
//! order, how each shard's inputs are fed (a boundary tensor from the shard before, or an input
//! of the original model), the sha256 of every file, the epoch and the transforms applied.
//!
//! Layout of a shard folder: `DIR/manifest.json` names files under `DIR/epoch-NNNNNN/`; a
//! re-key writes a new epoch folder completely and then replaces the manifest by an atomic
//! rename, so the manifest always names one complete epoch.

use super::error::ShardError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The format tag written into every manifest.
pub const FORMAT: &str = "ortho-opt-upm/1";

/// A tensor crossing a shard boundary or entering/leaving the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: String,
    /// Dimensions: numbers, or symbol names as strings ("?" for unknown).
    pub shape: Vec<serde_json::Value>,
}

/// Where a shard input comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// An input of the original model (fed by the caller of the chain).
    ModelInput(String),
    /// The output `name` of the shard before.
    Boundary(String),
}

/// One shard input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInput {
    #[serde(flatten)]
    pub spec: TensorSpec,
    pub from: Source,
}

/// One shard of the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub index: usize,
    /// Path relative to the manifest's folder.
    pub file: String,
    pub sha256: String,
    /// Blocks of the original model the shard holds, `[first, end)`.
    pub blocks: [usize; 2],
    pub embedding: bool,
    pub head: bool,
    /// Parameters held (elements of the shard's constants).
    pub params: u64,
    pub inputs: Vec<ShardInput>,
    pub outputs: Vec<TensorSpec>,
    /// The key file of the basis this shard's weights are written in at this epoch (the
    /// per-shard placement), relative to the manifest's folder; `None` when it uses the
    /// original basis or the chain's one shared basis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Set while the shard is one epoch ahead of the set: its participant re-keyed it on its
    /// own (`shard rekey --shard i`) and the other shards have not caught up yet. Cleared when
    /// the last shard reaches the new epoch (the set's `epoch` then advances).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// One re-key event applied to the set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransformRecord {
    /// The epoch it produced.
    pub epoch: u64,
    pub kind: String,
    pub seed: u64,
    pub placement: String,
    /// Shards whose weights it rewrote.
    pub shards: Vec<usize>,
    /// Condition cap κ of the epoch's absolute V/O head keys (`--head-cond`); `None`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_cond: Option<f64>,
}

/// The options the set was split with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitOptions {
    pub k: usize,
    pub balance: String,
    pub source: String,
    pub source_blocks: usize,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub epoch: u64,
    /// `none` (epoch 0 / original basis), `folded` (one basis for the whole chain, no node
    /// added) or `per-shard` (a basis per shard and a d × d MatMul at each shard's entry).
    pub placement: String,
    pub options: SplitOptions,
    /// The original model's inputs (what a caller feeds) and outputs (what the last shard gives).
    pub model_inputs: Vec<TensorSpec>,
    pub model_outputs: Vec<TensorSpec>,
    pub shards: Vec<ShardEntry>,
    /// Every re-key so far, oldest first.
    pub transforms: Vec<TransformRecord>,
}

/// The folder of epoch `e` inside a shard folder.
pub fn epoch_dir_name(e: u64) -> String {
    format!("epoch-{e:06}")
}

/// Whether `path` names a manifest (by file name) rather than a model.
pub fn is_manifest(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "json")
        || path.is_dir() && path.join("manifest.json").is_file()
}

/// The manifest file for a path naming either the file or its folder.
pub fn manifest_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("manifest.json")
    } else {
        path.to_path_buf()
    }
}

impl Manifest {
    /// Reads and checks a manifest: format, order, wiring, and (when `check_hashes`) that every
    /// shard file exists, lies inside the manifest's folder and has the recorded sha256.
    pub fn load(path: &Path, check_hashes: bool) -> Result<(Manifest, PathBuf), ShardError> {
        let path = manifest_path(path);
        let text = std::fs::read_to_string(&path).map_err(|source| ShardError::Io {
            path: path.clone(),
            source,
        })?;
        let m: Manifest = serde_json::from_str(&text).map_err(|source| ShardError::Json {
            path: path.clone(),
            source,
        })?;
        let bad = |why: String| ShardError::BadManifest {
            path: path.clone(),
            why,
        };
        if m.format != FORMAT {
            return Err(bad(format!("format '{}', expected '{FORMAT}'", m.format)));
        }
        if m.shards.is_empty() {
            return Err(bad("no shards".into()));
        }
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        for (i, s) in m.shards.iter().enumerate() {
            if s.index != i {
                return Err(bad(format!("shard {i} has index {}", s.index)));
            }
            // A shard file must live under the manifest's folder: a manifest naming a file
            // elsewhere (`..`, an absolute path) names a foreign shard.
            let rel = Path::new(&s.file);
            if rel.is_absolute()
                || rel
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(ShardError::ForeignShard {
                    manifest: path.clone(),
                    file: rel.to_path_buf(),
                });
            }
            for inp in &s.inputs {
                match &inp.from {
                    Source::Boundary(name) => {
                        let ok = i > 0 && m.shards[i - 1].outputs.iter().any(|o| &o.name == name);
                        if !ok {
                            return Err(bad(format!(
                                "shard {i} reads boundary '{name}', which no shard before it outputs"
                            )));
                        }
                    }
                    Source::ModelInput(name) => {
                        if !m.model_inputs.iter().any(|x| &x.name == name) {
                            return Err(bad(format!(
                                "shard {i} reads model input '{name}', which the model does not have"
                            )));
                        }
                    }
                }
            }
            if let Some(e) = s.epoch {
                if e != m.epoch + 1 {
                    return Err(bad(format!(
                        "shard {i} is at epoch {e}, the set at {} (a shard may be one epoch ahead)",
                        m.epoch
                    )));
                }
            }
            if check_hashes {
                m.check_shard(&path, &dir, i)?;
            }
        }
        Ok((m, dir))
    }

    /// Checks that shard `i`'s file exists and has the recorded sha256; opens no other file.
    pub fn check_shard(&self, manifest: &Path, dir: &Path, i: usize) -> Result<(), ShardError> {
        let s = &self.shards[i];
        let file = dir.join(&s.file);
        if !file.is_file() {
            return Err(ShardError::MissingShard {
                manifest: manifest.to_path_buf(),
                file,
            });
        }
        let got = super::sha256::file_hex(&file).map_err(|source| ShardError::Io {
            path: file.clone(),
            source,
        })?;
        if got != s.sha256 {
            return Err(ShardError::HashMismatch {
                file,
                expected: s.sha256.clone(),
                found: got,
            });
        }
        Ok(())
    }

    /// The first shard that is ahead of the set (re-keyed on its own with `--shard`, its
    /// neighbours not yet): such a set is mid-epoch and does not run as a chain.
    pub fn ahead(&self) -> Option<(usize, u64)> {
        self.shards
            .iter()
            .find_map(|s| s.epoch.map(|e| (s.index, e)))
    }

    /// Writes the manifest to `dir/manifest.json` atomically (a temporary file renamed over it).
    pub fn write_atomic(&self, dir: &Path) -> Result<(), ShardError> {
        let path = dir.join("manifest.json");
        let tmp = dir.join(".manifest.json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|source| ShardError::Json {
            path: path.clone(),
            source,
        })?;
        write_synced(&tmp, format!("{text}\n").as_bytes())?;
        std::fs::rename(&tmp, &path).map_err(|source| ShardError::Io { path, source })
    }
}

/// Writes a file and flushes it to disk before returning, so a rename after it publishes
/// complete bytes.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ShardError> {
    use std::io::Write;
    let io = |source| ShardError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::create(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}
