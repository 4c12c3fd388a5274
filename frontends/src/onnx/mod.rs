//! ONNX import and export.
//!
//! Import memory-maps the model file and does not copy the raw bytes of top-level initializers
//! (`wire::parse_model_lazy`); external data is mapped too, after checking that every path stays
//! inside the model's folder. Export streams initializers straight from wherever they live
//! (`wire::write_model_streaming`), moves large tensors to an external data file when asked or
//! when the model would exceed protobuf's 2 GiB limit, and writes atomically (temporary files,
//! then rename), never over the input.

mod convert;
mod export;
mod external;
mod import;
pub mod wire;

pub use export::{export_file, ExportOptions, ExportStats};
pub use import::{import_bytes, import_file};

use std::path::PathBuf;

/// An error reading or writing an ONNX model; each names the file and the tensor or node concerned.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a valid ONNX model: {source}", path.display())]
    Wire {
        path: PathBuf,
        source: wire::WireError,
    },
    #[error("{}: tensor '{tensor}': {message}", path.display())]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    #[error("{}: graph '{graph}': node {node}: {message}", path.display())]
    Node {
        path: PathBuf,
        graph: String,
        node: String,
        message: String,
    },
    #[error("{}: {message}", path.display())]
    Model { path: PathBuf, message: String },
}
