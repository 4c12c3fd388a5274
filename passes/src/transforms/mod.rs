//! The passes, one file each, plus helpers they share (`scope`) and canonicalize's folding
//! kernels (`fold`, not a pass).

pub mod canonicalize;
pub mod cse;
pub mod dce;
pub(crate) mod fold;
pub mod infer_shapes;
pub(crate) mod scope;

pub use canonicalize::{canonicalize, CanonicalizeOptions, CanonicalizeStats};
pub use cse::{cse, CseStats};
pub use dce::{dce, DceStats};
pub use infer_shapes::{infer_shapes, InferShapesStats};
