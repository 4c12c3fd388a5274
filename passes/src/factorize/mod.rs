//! Factorized linears (`ortho.FactorizedLinear`): their export form in standard ONNX ops.

pub mod lower;
