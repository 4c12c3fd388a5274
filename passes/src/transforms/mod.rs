//! The passes, one file each (or a folder for a pass's private parts). What passes share lives
//! outside, in modules named for what it is (`linalg`, `sparsity`, `rotation_search`,
//! `captures`); `fold` is canonicalize's constant folder.

pub mod autodiff;
pub mod canonicalize;
pub mod cse;
pub mod dce;
pub mod denoise_prune;
pub mod denoise_rotate;
pub mod fold_norms;
pub mod fuse_elementwise;
pub mod gauge_verify;
pub mod infer_shapes;
pub mod joint_basis;
pub mod kron_factorize;
pub mod lower_ortho;
pub mod lowrank_factorize;
pub mod prune;
pub mod rotate_heads;
pub mod rotate_residual;
pub mod sparsify;

/// Compatibility path: pruning maths moved to `crate::sparsity::matrix`.
pub use crate::sparsity::matrix as prune_math;
// POET's passes live with their maths in `crate::poet`; named here like every other pass.
pub use crate::poet::{lora, lora_merge, merge as poet_merge, reparam as poet_reparam};

pub use canonicalize::{canonicalize, CanonicalizeOptions, CanonicalizeStats};
pub use cse::{cse, CseStats};
pub use dce::{dce, DceStats};
pub use fold_norms::{fold_norms, FoldNormsStats};
pub use fuse_elementwise::{fuse_elementwise, FuseElementwiseOptions, FuseElementwiseStats};
pub use gauge_verify::{gauge_verify, GaugeReport, GaugeVerifyOptions};
pub use infer_shapes::{infer_shapes, InferShapesStats};
pub use lower_ortho::{lower_ortho, lower_ortho_with, LowerOrthoStats, SparseExport};
pub use rotate_heads::{
    fold_vo_maps, fold_vo_rotations, rotate_heads, vo_paths, HeadKind, RotateHeadsOptions,
    RotateHeadsStats, VoPath,
};
pub use rotate_residual::{
    rotate_residual, RotateResidualOptions, RotateResidualStats, RotationKind,
};
