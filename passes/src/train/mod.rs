//! Training maths that needs no engine: the AdamW optimizer with parameter groups and masks
//! ([`adamw`]), the learning-rate schedule and gradient accumulation ([`schedule`]). The loop
//! that runs a differentiated model on the CPU engine lives in the driver crate (`src/train.rs`),
//! the one crate that sees both the passes and the engine.

pub mod adamw;
pub mod schedule;

pub use adamw::{AdamW, AdamWConfig, AdamWState, GroupSpec, StepStats, TrainError};
pub use schedule::{cosine_with_warmup, GradAccumulator};
