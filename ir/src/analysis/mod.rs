//! Analyses: side tables computed from a graph, never stored on nodes (DESIGN.md §3). They
//! record `NodeId`s, so they are valid for the graph revision they were computed on; passes
//! recompute them rather than keep them across a mutation.
//!
//! - [`linear`]: linear layers (`MatMul`/`Gemm` with constant weights, either layout, ± bias);
//! - [`norm`]: RMSNorm / LayerNorm in every spelling (ops, ORT contrib ops, decomposed chains);
//! - [`group`]: the lattice of transform groups (O(d), signed permutations, …);
//! - [`gauge`]: which tensors share a basis and which transforms that basis admits;
//! - [`transformer`]: the transformer structure (stream, blocks, attention, MLP, head).
//!
//! None of them looks at tensor or node names.

pub mod gauge;
pub mod group;
pub mod linear;
pub mod norm;
pub mod transformer;
mod transformer_parts;
pub mod util;

pub use gauge::{
    analyze_gauge, Blocker, BlockerKind, FoldSite, GaugeAnalysis, ParamSite, SiteRole, StreamClass,
};
pub use group::{Group, Kind};
pub use linear::{match_linear, Linear};
pub use norm::{Norm, NormForm, NormKind, Norms};
pub use transformer::{analyze_transformer, Structure};
pub use transformer_parts::{head_spaces, Attention, HeadSpace, Mlp, MlpKind, RopeForm};
