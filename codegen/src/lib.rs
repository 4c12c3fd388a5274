//! ortho-codegen: execution back ends for ortho-opt modules.
//!
//! `cpu` is the CPU engine: [`cpu::Plan`] compiles the main graph of an `ir::Module` once
//! (topological order, constants decoded, buffer liveness) and runs it on [`cpu::HostTensor`]
//! feeds. GEMM goes through the `gemm` crate; elementwise chains may be supplied by a JIT
//! through [`cpu::KernelRegistry`].

pub mod cpu;
pub mod metrics;
