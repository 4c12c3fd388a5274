//! Linear algebra on weights that several passes share: orthogonal matrices and their fast
//! products (`orthogonal`), rewriting constant weights in f64 and casting them back once
//! (`weights`), and folding per-layer rotations of a decoder into its weights
//! (`layer_rotations`, used by `denoise-rotate` and `denoise-prune`), and swapping a dense linear
//! for an `ortho` op (`replace`). Not passes.

pub mod joint_basis;
pub mod layer_rotations;
pub mod orthogonal;
pub(crate) mod replace;
pub(crate) mod weights;
