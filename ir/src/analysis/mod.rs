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
//! Besides whole models they accept what passes leave and shards are: boundary linears between
//! blocks (a constant `d × d` basis change on the stream, which splits it into segments of
//! different bases: [`gauge::Origin::Boundary`], `Block::entry`) and runs of blocks without
//! embedding or head (`Structure::ends`). Structured linears plug in at [`linear::LinearKind`].
//!
//! None of them looks at tensor or node names.

pub mod gauge;
pub mod group;
pub mod linear;
pub mod norm;
pub mod transformer;
mod transformer_parts;
pub mod util;

#[cfg(test)]
mod tests;

pub use gauge::{
    analyze_gauge, Blocker, BlockerKind, FoldSite, GaugeAnalysis, LinearUse, Origin, ParamSite,
    SiteRole, StreamClass,
};
pub use group::{Group, Kind};
pub use linear::{match_linear, FeatureOperand, Linear, LinearKind, Side};
pub use norm::{Norm, NormForm, NormKind, Norms};
pub use transformer::{analyze_transformer, Ends, Structure};
pub use transformer_parts::{head_spaces, Attention, HeadSpace, Mlp, MlpKind, RopeForm};
