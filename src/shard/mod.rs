//! `ortho-opt shard`: split a model into transform-guarded shards (UPM, ALGORITHMS.md §3),
//! re-key them epoch after epoch, and run a shard chain wherever a model is accepted.
//!
//! - [`split`]: cutting at block boundaries; [`manifest`]: `manifest.json` and its checks;
//! - [`chain`]: compiling and running a manifest's shards in sequence on the CPU engine;
//! - [`rekey`]: moving a shard set from epoch t to t + 1.

pub mod chain;
pub mod error;
pub mod manifest;
pub mod rekey;
pub mod sha256;
pub mod split;

use crate::cli::GlobalArgs;
use crate::{CliError, DriverOutput};
pub use error::ShardError;
use manifest::{epoch_dir_name, Manifest, ShardEntry, SplitOptions, FORMAT};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Split a model into shards, or re-key a shard set.
#[derive(Debug, clap::Args)]
pub struct ShardArgs {
    #[command(subcommand)]
    pub command: ShardCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ShardCommand {
    Split(SplitArgs),
    Rekey(rekey::RekeyArgs),
}

/// Cut MODEL at block boundaries into K ONNX shards plus DIR/manifest.json (epoch 0).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  ortho-opt shard split model.onnx -k 3 -o shards/   # shards/manifest.json, shards/epoch-000000/shard-00{0,1,2}.onnx"
)]
pub struct SplitArgs {
    /// The whole model (.onnx or .oir): embedding, blocks, final norm and head.
    pub model: PathBuf,
    /// Number of shards (1 ..= number of blocks).
    #[arg(short = 'k', long = "shards", value_name = "K")]
    pub k: usize,
    /// How blocks are spread over the shards.
    #[arg(long, value_enum, default_value_t = split::Balance::Blocks)]
    pub balance: split::Balance,
    /// Output folder (must not exist, or be empty).
    #[arg(short = 'o', long = "output-dir", value_name = "DIR")]
    pub out_dir: PathBuf,
}

pub fn run(a: ShardArgs, g: &GlobalArgs) -> DriverOutput {
    match a.command {
        ShardCommand::Split(s) => DriverOutput::from_result(split_cmd(&s).map_err(CliError::from)),
        ShardCommand::Rekey(r) => {
            DriverOutput::from_result(rekey::run(&r, g).map_err(CliError::from))
        }
    }
}

/// The file name of shard `i`.
pub fn shard_file_name(i: usize) -> String {
    format!("shard-{i:03}.onnx")
}

/// A fresh staging folder next to `dir` (same file system, so the final rename is atomic).
pub(crate) fn staging_dir(dir: &Path, what: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "shards".into());
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    parent.join(format!(".{name}.{what}-{}", std::process::id()))
}

/// Exports one shard module to `path`.
pub(crate) fn export(m: &ortho_ir::Module, path: &Path) -> Result<(), ShardError> {
    ortho_frontends::export_file(m, path, &ortho_frontends::ExportOptions::default())
        .map(|_| ())
        .map_err(|e| ShardError::Model {
            path: path.to_path_buf(),
            source: e.into(),
        })
}

fn split_cmd(a: &SplitArgs) -> Result<(String, String), CliError> {
    let out = &a.out_dir;
    if out.exists() {
        let empty = std::fs::read_dir(out)
            .map_err(CliError::io(out))?
            .next()
            .is_none();
        if !empty {
            return Err(ShardError::OutputNotEmpty { path: out.clone() }.into());
        }
    }
    let m = crate::input::load_module(&a.model)?;
    let split = split::split_module(&m, &a.model, a.k, a.balance)?;
    // Everything is written into a staging folder and renamed into place at the end: a failure
    // part-way leaves no output folder.
    let stage = staging_dir(out, "split");
    let result = (|| -> Result<Manifest, ShardError> {
        let edir = stage.join(epoch_dir_name(0));
        std::fs::create_dir_all(&edir).map_err(|source| ShardError::Io {
            path: edir.clone(),
            source,
        })?;
        let mut shards = Vec::new();
        for (i, s) in split.shards.iter().enumerate() {
            let rel = format!("{}/{}", epoch_dir_name(0), shard_file_name(i));
            let path = stage.join(&rel);
            export(&s.module, &path)?;
            let sha256 = sha256::file_hex(&path).map_err(|source| ShardError::Io {
                path: path.clone(),
                source,
            })?;
            shards.push(ShardEntry {
                index: i,
                file: rel,
                sha256,
                blocks: s.blocks,
                embedding: s.embedding,
                head: s.head,
                params: s.params,
                inputs: s.inputs.clone(),
                outputs: s.outputs.clone(),
                key: None,
                epoch: None,
            });
        }
        let man = Manifest {
            format: FORMAT.into(),
            epoch: 0,
            placement: "none".into(),
            options: SplitOptions {
                k: a.k,
                balance: a.balance.name().into(),
                source: a.model.display().to_string(),
                source_blocks: split.blocks,
            },
            model_inputs: split.model_inputs.clone(),
            model_outputs: split.model_outputs.clone(),
            shards,
            transforms: Vec::new(),
        };
        man.write_atomic(&stage)?;
        if out.exists() {
            std::fs::remove_dir(out).map_err(|source| ShardError::Io {
                path: out.clone(),
                source,
            })?;
        }
        std::fs::rename(&stage, out).map_err(|source| ShardError::Io {
            path: out.clone(),
            source,
        })?;
        Ok(man)
    })();
    let man = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&stage);
            return Err(e.into());
        }
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "split {} ({} blocks) into {} shards, balance {} -> {}",
        a.model.display(),
        split.blocks,
        a.k,
        a.balance.name(),
        out.join("manifest.json").display()
    );
    for e in &man.shards {
        let ins: Vec<&str> = e.inputs.iter().map(|x| x.spec.name.as_str()).collect();
        let outs: Vec<&str> = e.outputs.iter().map(|x| x.name.as_str()).collect();
        let _ = writeln!(
            s,
            "  shard {}: blocks {}..{}{}{}, {} params, in [{}] out [{}] {}",
            e.index,
            e.blocks[0],
            e.blocks[1],
            if e.embedding { " +embedding" } else { "" },
            if e.head { " +head" } else { "" },
            e.params,
            ins.join(", "),
            outs.join(", "),
            e.file
        );
    }
    Ok((s, String::new()))
}
