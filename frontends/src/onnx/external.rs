//! Memory-mapped files and the external-data resolver.
//!
//! An external-data location comes from the model file, so it is hostile until proven otherwise:
//! absolute paths, `..` components and symlinks that leave the model's folder are refused, and an
//! offset + length past the end of the file is an error, never a read out of bounds.

use super::OnnxError;
use ortho_ir::Backing;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// A read-only memory-mapped file.
#[derive(Debug)]
pub struct MappedFile {
    /// The mapping's entry in the SIGBUS handler's table, so a truncation while mapped is
    /// reported naming this file; declared first so it is dropped before the map.
    _sigbus: Option<ortho_ir::output_sigbus::Registration>,
    map: Option<memmap2::Mmap>,
    file: File,
    path: PathBuf,
}

impl MappedFile {
    pub fn open(path: &Path) -> Result<Arc<MappedFile>, OnnxError> {
        let io = |source| OnnxError::Io {
            path: path.to_path_buf(),
            source,
        };
        let f = File::open(path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        // Mapping an empty file fails on some systems; an empty file simply has no bytes.
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the map is read-only; like every mmap-based reader we rely on the file not
            // being truncated while the module is alive (the exporter refuses to write over it,
            // and the CLI's SIGBUS handler turns a truncation by another process into an error
            // naming the file).
            Some(unsafe { memmap2::Mmap::map(&f) }.map_err(io)?)
        };
        let _sigbus = map
            .as_deref()
            .map(|b| ortho_ir::output_sigbus::register_mapped(path, b));
        Ok(Arc::new(MappedFile {
            _sigbus,
            map,
            file: f,
            path: path.to_path_buf(),
        }))
    }
}

impl Backing for MappedFile {
    fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
    fn file(&self) -> Option<&File> {
        Some(&self.file)
    }
}

/// Resolves external-data locations relative to a model folder, mapping each file once.
pub struct ExternalResolver {
    base: PathBuf,
    canonical_base: Option<PathBuf>,
    files: HashMap<PathBuf, Arc<MappedFile>>,
}

impl ExternalResolver {
    pub fn new(model_path: &Path) -> Self {
        let base = model_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        let canonical_base = base.canonicalize().ok();
        ExternalResolver {
            base,
            canonical_base,
            files: HashMap::new(),
        }
    }

    /// Maps `location` and returns (file, offset, length) after every check.
    pub fn resolve(
        &mut self,
        model: &Path,
        tensor: &str,
        location: &str,
        offset: Option<u64>,
        length: Option<u64>,
    ) -> Result<(Arc<MappedFile>, usize, usize), OnnxError> {
        let err = |message: String| OnnxError::Tensor {
            path: model.to_path_buf(),
            tensor: tensor.to_string(),
            message,
        };
        if location.is_empty() {
            return Err(err("external data has no location".into()));
        }
        let rel = Path::new(location);
        if rel.is_absolute() || location.starts_with('/') || location.starts_with('\\') {
            return Err(err(format!("external data location '{location}' is an absolute path; only paths inside the model's folder are allowed")));
        }
        if rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(err(format!("external data location '{location}' leaves the model's folder ('..' is not allowed)")));
        }
        let joined = self.base.join(rel);
        let canonical = joined
            .canonicalize()
            .map_err(|e| err(format!("external data file '{}': {e}", joined.display())))?;
        if let Some(cb) = &self.canonical_base {
            if !canonical.starts_with(cb) {
                return Err(err(format!(
                    "external data location '{location}' resolves to '{}', outside the model's folder (a symlink?)",
                    canonical.display()
                )));
            }
        }
        // Only regular files are mapped: opening a FIFO blocks until a writer appears, and a
        // device has no size to check ranges against.
        let meta = std::fs::metadata(&canonical)
            .map_err(|e| err(format!("external data file '{}': {e}", joined.display())))?;
        if !meta.is_file() {
            return Err(err(format!(
                "external data location '{location}' is not a regular file (a FIFO, a device or a folder)"
            )));
        }
        let file = match self.files.get(&canonical) {
            Some(f) => f.clone(),
            None => {
                let f = MappedFile::open(&canonical)?;
                self.files.insert(canonical.clone(), f.clone());
                f
            }
        };
        let size = file.bytes().len() as u64;
        let offset = offset.unwrap_or(0);
        let length = match length {
            Some(l) => l,
            None => size.checked_sub(offset).ok_or_else(|| {
                err(format!(
                    "offset {offset} is past the end of '{location}' ({size} bytes)"
                ))
            })?,
        };
        let end = offset
            .checked_add(length)
            .ok_or_else(|| err("offset + length overflows".into()))?;
        if end > size {
            return Err(err(format!(
                "external data range {offset}..{end} is past the end of '{location}' ({size} bytes)"
            )));
        }
        Ok((file, offset as usize, length as usize))
    }
}
