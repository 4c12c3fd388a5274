//! `ortho-opt shard rekey`: moving a shard set from epoch t to t + 1.

use super::error::ShardError;
use crate::cli::GlobalArgs;
use std::path::PathBuf;

/// Re-key a shard set: epoch t → t + 1.
#[derive(Debug, clap::Args)]
pub struct RekeyArgs {
    /// The shard folder (or its manifest.json).
    pub dir: PathBuf,
}

pub fn run(a: &RekeyArgs, _g: &GlobalArgs) -> Result<(String, String), ShardError> {
    Err(ShardError::Rekey {
        path: a.dir.clone(),
        why: "not implemented yet".into(),
    })
}
