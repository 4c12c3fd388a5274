//! The errors of `ortho-opt shard` and of running a shard chain. Each names the file at fault.

use std::path::PathBuf;
use thiserror::Error;

/// A lower layer's error (importer, exporter, engine), kept as its value.
pub type Source = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Error)]
pub enum ShardError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", .path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: not a shard manifest: {why}", .path.display())]
    BadManifest { path: PathBuf, why: String },
    #[error("{}: names shard file '{}' outside its folder (a foreign shard)", .manifest.display(), .file.display())]
    ForeignShard { manifest: PathBuf, file: PathBuf },
    #[error("{}: shard file '{}' is missing", .manifest.display(), .file.display())]
    MissingShard { manifest: PathBuf, file: PathBuf },
    #[error("{}: sha256 {found} does not match the manifest's {expected}", .file.display())]
    HashMismatch {
        file: PathBuf,
        expected: String,
        found: String,
    },
    #[error("{}: cannot cut {k} shards from {blocks} blocks (K must be 1..={blocks})", .path.display())]
    TooManyShards {
        path: PathBuf,
        k: usize,
        blocks: usize,
    },
    #[error("{}: the structure analysis finds no transformer blocks to cut at (see `ortho-opt analyze`)", .path.display())]
    NoBlocks { path: PathBuf },
    #[error("{}: cannot be split: {why}", .path.display())]
    NotSplittable { path: PathBuf, why: String },
    #[error("{}: the output folder exists and is not empty", .path.display())]
    OutputNotEmpty { path: PathBuf },
    #[error("{}: {source}", .path.display())]
    Model { path: PathBuf, source: Source },
    #[error("{}: shard {shard}: {why}", .manifest.display())]
    Chain {
        manifest: PathBuf,
        shard: usize,
        why: String,
    },
    #[error("{}: {why}", .path.display())]
    Rekey { path: PathBuf, why: String },
}
