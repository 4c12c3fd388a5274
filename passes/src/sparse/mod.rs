//! Code about the compact N:M weights (`ortho.SparseLinear`) that more than one place uses:
//! expanding them back to a dense `MatMul` for export (`lower-ortho`). Not a pass.

pub mod lower;
