//! Training checkpoints: everything `train` needs to continue as if it had never stopped — the
//! parameters, the AdamW moments, masks and per-group step counts and clips, the step (which is
//! also the schedule's position), the window sampler's RNG state, the curve so far, and the
//! settings that must not change across a resume (checked by name).
//!
//! Layout (all little-endian): the 16-byte magic, the header's length (u64), the header (JSON),
//! then per parameter its values, first and second moments (f32 each) and, when it has one, its
//! mask (one byte per entry), then the curve's points (u64 and f64 bit patterns, so a resumed
//! curve is exact: JSON would round its floats), and last the SHA-256 of every byte before it. The file is written
//! through `ortho_ir::output` (a temporary renamed over the target), so a killed run leaves the
//! previous checkpoint whole; a truncated or altered file is refused by its length or its
//! digest before anything is restored. Nothing in it depends on the clock, so the same seed and
//! data give byte-identical checkpoints.

use crate::train::TrainerState;
use ortho_passes::train::AdamWState;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 16] = b"ortho-opt ckpt\x00\x01";

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path}: not an ortho-opt checkpoint (wrong magic bytes)")]
    Magic { path: PathBuf },
    #[error("checkpoint {path}: truncated ({len} bytes, the header announces {want})")]
    Truncated { path: PathBuf, len: u64, want: u64 },
    #[error(
        "checkpoint {path}: corrupted (SHA-256 of the contents does not match the stored one)"
    )]
    Digest { path: PathBuf },
    #[error("checkpoint {path}: unreadable header: {source}")]
    Header {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("checkpoint {path} was saved with {key} = {saved}, this run has {now}; resume with the same settings")]
    Settings {
        path: PathBuf,
        key: String,
        saved: String,
        now: String,
    },
}

/// One optimizer step of the curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepPoint {
    pub step: u64,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr_scale: f64,
}

/// One held-out evaluation of the curve: mean NLL (nats per prediction), its perplexity and
/// the number of predictions scored.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalPoint {
    pub step: u64,
    pub nll: f64,
    pub ppl: f64,
    pub predictions: u64,
}

/// The loss and evaluation curve (written by `train --curve` as this JSON object).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Curve {
    pub steps: Vec<StepPoint>,
    pub eval: Vec<EvalPoint>,
}

/// One parameter's entry in the header.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct ParamHeader {
    name: String,
    shape: Vec<usize>,
    masked: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Header {
    settings: BTreeMap<String, String>,
    step: u64,
    sampler_state: u64,
    group_steps: Vec<u64>,
    group_clips: Vec<Option<f64>>,
    params: Vec<ParamHeader>,
    curve_steps: usize,
    curve_evals: usize,
}

/// A training run's saved state.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The settings that must agree on resume (name → value as text).
    pub settings: BTreeMap<String, String>,
    pub trainer: TrainerState,
    pub sampler_state: u64,
    /// The curve up to this step, so a resumed run writes the same curve as an uninterrupted one.
    pub curve: Curve,
}

/// A writer that hashes what goes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads `n` bytes and adds them to the digest.
fn read_hashed(r: &mut impl Read, hash: &mut Sha256, n: usize) -> std::io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; n];
    r.read_exact(&mut bytes)?;
    hash.update(&bytes);
    Ok(bytes)
}

fn to_f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn write_f32s(w: &mut impl Write, v: &[f32]) -> std::io::Result<()> {
    for x in v {
        w.write_all(&x.to_le_bytes())?;
    }
    Ok(())
}

impl Checkpoint {
    /// Writes the checkpoint to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let io = |source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        };
        let t = &self.trainer;
        let header = Header {
            settings: self.settings.clone(),
            step: t.step,
            sampler_state: self.sampler_state,
            group_steps: t.opt.group_steps.clone(),
            group_clips: t.opt.group_clips.clone(),
            params: t
                .names
                .iter()
                .zip(&t.shapes)
                .zip(&t.opt.masks)
                .map(|((name, shape), mask)| ParamHeader {
                    name: name.clone(),
                    shape: shape.clone(),
                    masked: mask.is_some(),
                })
                .collect(),
            curve_steps: self.curve.steps.len(),
            curve_evals: self.curve.eval.len(),
        };
        let json = serde_json::to_vec(&header).map_err(|source| CheckpointError::Header {
            path: path.to_path_buf(),
            source,
        })?;
        let mut pending = ortho_ir::output::PendingFile::create(path).map_err(io)?;
        {
            let mut w = Hashing {
                inner: BufWriter::new(pending.file()),
                hash: Sha256::new(),
            };
            w.write_all(MAGIC).map_err(io)?;
            w.write_all(&(json.len() as u64).to_le_bytes())
                .map_err(io)?;
            w.write_all(&json).map_err(io)?;
            for i in 0..t.values.len() {
                write_f32s(&mut w, &t.values[i]).map_err(io)?;
                write_f32s(&mut w, &t.opt.m[i]).map_err(io)?;
                write_f32s(&mut w, &t.opt.v[i]).map_err(io)?;
                if let Some(mask) = &t.opt.masks[i] {
                    let bytes: Vec<u8> = mask.iter().map(|&k| u8::from(k)).collect();
                    w.write_all(&bytes).map_err(io)?;
                }
            }
            for p in &self.curve.steps {
                let words = [
                    p.step,
                    p.loss.to_bits(),
                    p.grad_norm.to_bits(),
                    p.lr_scale.to_bits(),
                ];
                for x in words {
                    w.write_all(&x.to_le_bytes()).map_err(io)?;
                }
            }
            for p in &self.curve.eval {
                let words = [p.step, p.nll.to_bits(), p.ppl.to_bits(), p.predictions];
                for x in words {
                    w.write_all(&x.to_le_bytes()).map_err(io)?;
                }
            }
            let digest = w.hash.finalize();
            let mut inner = w.inner;
            inner.write_all(&digest).map_err(io)?;
            inner.flush().map_err(io)?;
        }
        pending.file().sync_all().map_err(io)?;
        pending.commit().map_err(io)
    }

    /// Reads and checks a checkpoint: magic, length against the header, then the digest over
    /// everything, before the state is returned.
    pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let p = || path.to_path_buf();
        let io = |source| CheckpointError::Io { path: p(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut r = BufReader::new(file);
        let mut hash = Sha256::new();
        let truncated = |want: u64| CheckpointError::Truncated {
            path: p(),
            len,
            want,
        };
        let mut magic = [0u8; 16];
        let mut len_bytes = [0u8; 8];
        if len < 24 {
            return Err(truncated(24));
        }
        r.read_exact(&mut magic).map_err(io)?;
        if &magic != MAGIC {
            return Err(CheckpointError::Magic { path: p() });
        }
        r.read_exact(&mut len_bytes).map_err(io)?;
        hash.update(magic);
        hash.update(len_bytes);
        let hlen = u64::from_le_bytes(len_bytes);
        if hlen > len - 24 {
            return Err(truncated(24 + hlen));
        }
        let mut json = vec![0u8; hlen as usize];
        r.read_exact(&mut json).map_err(io)?;
        hash.update(&json);
        let header: Header = serde_json::from_slice(&json)
            .map_err(|source| CheckpointError::Header { path: p(), source })?;
        // The announced size, in u64 with overflow refused (a corrupt header may claim
        // anything).
        let points = (header.curve_steps as u64).checked_add(header.curve_evals as u64);
        let mut want = match points
            .and_then(|n| n.checked_mul(32))
            .and_then(|b| b.checked_add(24 + hlen + 32))
        {
            Some(w) => w,
            None => return Err(truncated(u64::MAX)),
        };
        for ph in &header.params {
            let n = ph
                .shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d as u64));
            let bytes = n.and_then(|n| n.checked_mul(12 + u64::from(ph.masked)));
            want = match bytes.and_then(|b| want.checked_add(b)) {
                Some(w) => w,
                None => return Err(truncated(u64::MAX)),
            };
        }
        if len != want {
            return Err(truncated(want));
        }
        let k = header.params.len();
        let (mut values, mut m, mut v, mut masks) = (
            Vec::with_capacity(k),
            Vec::with_capacity(k),
            Vec::with_capacity(k),
            Vec::with_capacity(k),
        );
        for ph in &header.params {
            let n: usize = ph.shape.iter().product();
            values.push(to_f32s(&read_hashed(&mut r, &mut hash, n * 4).map_err(io)?));
            m.push(to_f32s(&read_hashed(&mut r, &mut hash, n * 4).map_err(io)?));
            v.push(to_f32s(&read_hashed(&mut r, &mut hash, n * 4).map_err(io)?));
            masks.push(if ph.masked {
                let b = read_hashed(&mut r, &mut hash, n).map_err(io)?;
                Some(b.into_iter().map(|x| x != 0).collect::<Vec<bool>>())
            } else {
                None
            });
        }
        let mut words = |n: usize| -> std::io::Result<Vec<[u64; 4]>> {
            let bytes = read_hashed(&mut r, &mut hash, n * 32)?;
            Ok(bytes
                .chunks_exact(32)
                .map(|c| {
                    let w = |k: usize| {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&c[8 * k..8 * k + 8]);
                        u64::from_le_bytes(b)
                    };
                    [w(0), w(1), w(2), w(3)]
                })
                .collect())
        };
        let steps = words(header.curve_steps).map_err(io)?;
        let evals = words(header.curve_evals).map_err(io)?;
        let curve = Curve {
            steps: steps
                .into_iter()
                .map(|[step, l, g, s]| StepPoint {
                    step,
                    loss: f64::from_bits(l),
                    grad_norm: f64::from_bits(g),
                    lr_scale: f64::from_bits(s),
                })
                .collect(),
            eval: evals
                .into_iter()
                .map(|[step, n, p, predictions]| EvalPoint {
                    step,
                    nll: f64::from_bits(n),
                    ppl: f64::from_bits(p),
                    predictions,
                })
                .collect(),
        };
        let mut stored = [0u8; 32];
        r.read_exact(&mut stored).map_err(io)?;
        if hash.finalize().as_slice() != stored {
            return Err(CheckpointError::Digest { path: p() });
        }
        Ok(Checkpoint {
            settings: header.settings,
            trainer: TrainerState {
                step: header.step,
                names: header.params.iter().map(|p| p.name.clone()).collect(),
                shapes: header.params.iter().map(|p| p.shape.clone()).collect(),
                values,
                opt: AdamWState {
                    group_steps: header.group_steps,
                    group_clips: header.group_clips,
                    m,
                    v,
                    masks,
                },
            },
            sampler_state: header.sampler_state,
            curve,
        })
    }

    /// Refuses a resume whose settings differ from the saved ones (naming the first that
    /// differs).
    pub fn check_settings(
        &self,
        path: &Path,
        now: &BTreeMap<String, String>,
    ) -> Result<(), CheckpointError> {
        let keys: std::collections::BTreeSet<&String> =
            self.settings.keys().chain(now.keys()).collect();
        for key in keys {
            let (a, b) = (self.settings.get(key), now.get(key));
            if a != b {
                let show = |x: Option<&String>| x.cloned().unwrap_or_else(|| "(unset)".into());
                return Err(CheckpointError::Settings {
                    path: path.to_path_buf(),
                    key: key.clone(),
                    saved: show(a),
                    now: show(b),
                });
            }
        }
        Ok(())
    }
}
