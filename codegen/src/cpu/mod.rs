//! The CPU engine.
//!
//! - [`HostTensor`]: typed host data (f32, f64, f16, bf16, integers, bool).
//! - [`Plan`]: a module's main graph compiled once (order, kernels, constants, liveness);
//!   [`Plan::run`] executes it, [`Plan::run_with`] also streams chosen intermediate values to a
//!   callback (calibration statistics without keeping every activation).
//! - [`KernelRegistry`] / [`Kernel`]: kernels supplied from outside (the Cranelift JIT of fused
//!   elementwise chains registers `ortho.FusedElementwise` here; see [`elementwise_f32`]).
//! - [`npy`]: reading and writing `.npy` files.

mod error;
mod evaluator;
mod exec;
/// Cranelift-compiled kernels for `ortho.FusedElementwise` (owned by the fusion work).
pub mod handoff;
pub mod jit;
mod kernel;
pub mod kernels;
pub mod npy;
mod plan;
mod pool;
mod tensor;

pub use error::{KernelError, KernelResult, RuntimeError};
pub use evaluator::CpuEvaluator;
pub use exec::Profile;
pub use kernel::{
    elementwise_f32, ElementwiseFn, ExecCx, Inputs, Kernel, KernelFactory, KernelRegistry,
    KernelSite,
};
pub use plan::{CompileProgress, Plan, PlanOptions};
pub use pool::BufferPool;
pub use tensor::{numel, strides, Elem, HostTensor, TensorBuf, BF16, F16};
