//! ortho-frontends: model formats in and out of the IR. Only this crate knows protobuf and ONNX's
//! spelling of things; everything else sees `ortho_ir::Module`.

pub mod onnx;

pub use onnx::{export_file, import_file, ExportOptions, ExportStats, OnnxError};
