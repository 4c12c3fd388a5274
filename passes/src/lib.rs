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

pub mod calib;
pub(crate) mod consteval;
pub mod manager;
pub mod options;
pub mod pass;
pub mod pipeline;
pub mod registry;
pub mod transforms;

#[cfg(test)]
mod tests;

pub use manager::{
    DumpWhen, FailureKind, FixpointReport, IrEvent, ManagerError, ManagerOptions, PassFailure,
    PassManager, PassRun, RunReport, StopReason, Verifier,
};
pub use options::{OptionKind, OptionSpec, OptionValue, PassOptions};
pub use pass::{Pass, PassContext, PassError, PassResult, Statistics};
pub use pipeline::{parse_pipeline, Fixpoint, PassSpec, Pipeline, PipelineError, PipelineItem};
pub use registry::{list_passes, PassInfo, Registry};
pub use transforms::{
    canonicalize, cse, dce, infer_shapes, CanonicalizeOptions, CanonicalizeStats, CseStats,
    DceStats, InferShapesStats,
};
pub use transforms::{
    fold_norms, gauge_verify, rotate_residual, FoldNormsStats, GaugeVerifyOptions,
    RotateResidualOptions, RotateResidualStats, RotationKind,
};
