//! Pruning shared by `prune` and `denoise-prune`: the maths on one matrix (`matrix`:
//! magnitude, Wanda, SparseGPT; unstructured or N:M), pruning the linears of a transformer block
//! in the module (`linears`), and the options both passes declare alike (`options`). Not passes.

pub mod linears;
pub mod matrix;
pub mod options;
