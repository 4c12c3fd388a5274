//! ortho-passes: the pass registry, the pipeline grammar, the pass manager, and the passes.
//!
//! ```text
//! let pipeline = Pipeline::parse("canonicalize,fixpoint{max-iterations=8}(cse,dce)")?;
//! let pm = PassManager::new(pipeline, ManagerOptions::default())?;
//! let report = pm.run(&mut module, "model.onnx", &mut |event| eprintln!("{}", event.render()))?;
//! ```
//! Every pass is also a plain function (`dce(&mut m)`, `canonicalize(&mut m, &opts)`, …) that
//! returns typed statistics, for use without the manager. This crate never prints: the manager
//! hands IR dumps to a caller-supplied sink and returns everything else in its report.
//!
//! Layout: `pass`, `declare`, `options`, `registry`, `pipeline` and `manager` are the machinery;
//! `transforms/` holds the passes only (one file each, or a folder for a pass's private parts);
//! what passes share lives in modules named for what it is: `linalg` (orthogonal matrices,
//! f64 weight rewriting, folding per-layer rotations into weights), `sparsity` (pruning a matrix
//! and a block's linears), `rotation_search` (DenoiseRotator's objective and optimizer),
//! `captures` (names subgraphs capture) and `calib` (running the model on calibration data).

pub mod autodiff;
pub mod calib;
pub mod captures;
pub(crate) mod consteval;
pub mod declare;
pub mod factorize;
pub mod kv_cache;
pub mod linalg;
pub mod manager;
pub mod options;
pub mod pass;
pub mod pipeline;
pub mod poet;
pub mod registry;
pub mod rotation_search;
pub mod selection;
pub mod sparse;
pub mod sparsity;
pub mod train;
pub mod transforms;
pub mod upm;

#[cfg(test)]
mod tests;

/// What the declaration macros name from outside this crate.
#[doc(hidden)]
pub mod __private {
    pub use ortho_ir::Module;
}

pub use manager::{
    DumpWhen, FailureKind, FixpointReport, IrEvent, ManagerError, ManagerOptions, PassFailure,
    PassManager, PassRun, RunReport, StopReason, Verifier,
};
pub use options::{
    OptionDecl, OptionError, OptionKind, OptionSpec, OptionType, OptionValue, PassOptions,
    ValueError,
};
pub use pass::{
    Pass, PassBuilder, PassContext, PassError, PassErrorKind, PassInfo, PassResult, Statistics,
};
pub use pipeline::{
    parse_pipeline, Fixpoint, PassSpec, Pipeline, PipelineError, PipelineErrorKind, PipelineItem,
};
pub use registry::{list_passes, Registry, RegistryError};
pub use transforms::{
    canonicalize, cse, dce, infer_shapes, CanonicalizeOptions, CanonicalizeStats, CseStats,
    DceStats, InferShapesStats,
};
pub use transforms::{
    fold_norms, gauge_verify, rotate_residual, FoldNormsStats, GaugeVerifyOptions,
    RotateResidualOptions, RotateResidualStats, RotationKind,
};
