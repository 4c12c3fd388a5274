//! DenoiseRotator's machinery (ALGORITHMS.md §2), used by the `denoise-rotate` pass: the entropy
//! objective of one layer with its analytic gradient (`loss`), Adam on SO(n) through the Cayley
//! map keeping the best iterate (`optim`). Not a pass.

pub mod fold;
pub mod loss;
pub mod optim;
pub mod select;

#[cfg(test)]
mod tests;
