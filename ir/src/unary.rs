//! Unary elementwise ops: the one list shared by the fused elementwise program
//! ([`crate::fused`]) and the engine's kernels (`ortho_codegen::cpu::kernels::unary`).
//!
//! Parameters are those of the activation attributes (`LeakyRelu`'s alpha, …). Only the ops in
//! [`Unary::FUSIBLE`] may appear in a fused program; the others run through the engine's
//! kernels only.

use crate::op::Op;
use std::hash::{Hash, Hasher};

/// A unary elementwise op.
#[derive(Clone, Copy, Debug)]
pub enum Unary {
    Neg,
    Abs,
    Sqrt,
    Reciprocal,
    Exp,
    Log,
    Sin,
    Cos,
    Tan,
    Tanh,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Asinh,
    Acosh,
    Atanh,
    Erf,
    Sigmoid,
    Relu,
    Floor,
    Ceil,
    Round,
    Sign,
    Softplus,
    Softsign,
    HardSwish,
    Mish,
    Gelu { tanh: bool },
    LeakyRelu(f32),
    Elu(f32),
    Celu(f32),
    Selu(f32, f32),
    HardSigmoid(f32, f32),
    ThresholdedRelu(f32),
}

/// The parameters as bits, so that equality and hashing agree (a NaN parameter equals itself)
/// and a fused program holding the op can key a kernel cache.
fn param_bits(u: &Unary) -> [u32; 2] {
    match *u {
        Unary::Gelu { tanh } => [u32::from(tanh), 0],
        Unary::LeakyRelu(a) | Unary::Elu(a) | Unary::Celu(a) | Unary::ThresholdedRelu(a) => {
            [a.to_bits(), 0]
        }
        Unary::Selu(a, b) | Unary::HardSigmoid(a, b) => [a.to_bits(), b.to_bits()],
        _ => [0, 0],
    }
}

impl PartialEq for Unary {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && param_bits(self) == param_bits(other)
    }
}
impl Eq for Unary {}

impl Hash for Unary {
    fn hash<H: Hasher>(&self, h: &mut H) {
        std::mem::discriminant(self).hash(h);
        param_bits(self).hash(h);
    }
}

impl Unary {
    /// The ops a fused program may hold, in opcode order (opcode `10 + index`).
    pub const FUSIBLE: [Unary; 10] = [
        Unary::Neg,
        Unary::Abs,
        Unary::Sqrt,
        Unary::Reciprocal,
        Unary::Exp,
        Unary::Log,
        Unary::Tanh,
        Unary::Sigmoid,
        Unary::Relu,
        Unary::Erf,
    ];

    /// Whether the op may appear in a fused program.
    pub fn is_fusible(self) -> bool {
        Self::FUSIBLE.contains(&self)
    }

    /// The lower-case name used in fused programs and messages (`neg`, `leaky_relu`).
    pub fn name(self) -> &'static str {
        match self {
            Unary::Neg => "neg",
            Unary::Abs => "abs",
            Unary::Sqrt => "sqrt",
            Unary::Reciprocal => "reciprocal",
            Unary::Exp => "exp",
            Unary::Log => "log",
            Unary::Sin => "sin",
            Unary::Cos => "cos",
            Unary::Tan => "tan",
            Unary::Tanh => "tanh",
            Unary::Asin => "asin",
            Unary::Acos => "acos",
            Unary::Atan => "atan",
            Unary::Sinh => "sinh",
            Unary::Cosh => "cosh",
            Unary::Asinh => "asinh",
            Unary::Acosh => "acosh",
            Unary::Atanh => "atanh",
            Unary::Erf => "erf",
            Unary::Sigmoid => "sigmoid",
            Unary::Relu => "relu",
            Unary::Floor => "floor",
            Unary::Ceil => "ceil",
            Unary::Round => "round",
            Unary::Sign => "sign",
            Unary::Softplus => "softplus",
            Unary::Softsign => "softsign",
            Unary::HardSwish => "hard_swish",
            Unary::Mish => "mish",
            Unary::Gelu { .. } => "gelu",
            Unary::LeakyRelu(_) => "leaky_relu",
            Unary::Elu(_) => "elu",
            Unary::Celu(_) => "celu",
            Unary::Selu(..) => "selu",
            Unary::HardSigmoid(..) => "hard_sigmoid",
            Unary::ThresholdedRelu(_) => "thresholded_relu",
        }
    }

    /// The fusible op named `name` (the inverse of [`name`](Self::name) on [`Self::FUSIBLE`]).
    pub fn fusible_named(name: &str) -> Option<Unary> {
        Self::FUSIBLE.into_iter().find(|u| u.name() == name)
    }

    /// The fusible op an ONNX op computes, when it is one of them (Neg … Erf, which take no
    /// attributes).
    pub fn fusible_of(op: &Op) -> Option<Unary> {
        Some(match op {
            Op::Neg => Unary::Neg,
            Op::Abs => Unary::Abs,
            Op::Sqrt => Unary::Sqrt,
            Op::Reciprocal => Unary::Reciprocal,
            Op::Exp => Unary::Exp,
            Op::Log => Unary::Log,
            Op::Tanh => Unary::Tanh,
            Op::Sigmoid => Unary::Sigmoid,
            Op::Relu => Unary::Relu,
            Op::Erf => Unary::Erf,
            _ => return None,
        })
    }

    /// The ONNX op of a fusible op (the inverse of [`fusible_of`](Self::fusible_of)); `None`
    /// for the others, whose ONNX ops carry attributes.
    pub fn fusible_op(self) -> Option<Op> {
        Some(match self {
            Unary::Neg => Op::Neg,
            Unary::Abs => Op::Abs,
            Unary::Sqrt => Op::Sqrt,
            Unary::Reciprocal => Op::Reciprocal,
            Unary::Exp => Op::Exp,
            Unary::Log => Op::Log,
            Unary::Tanh => Op::Tanh,
            Unary::Sigmoid => Op::Sigmoid,
            Unary::Relu => Op::Relu,
            Unary::Erf => Op::Erf,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fusible_ops_map_both_ways() {
        for u in Unary::FUSIBLE {
            let op = u.fusible_op().expect("fusible ops have an ONNX op");
            assert_eq!(Unary::fusible_of(&op), Some(u));
            assert_eq!(Unary::fusible_named(u.name()), Some(u));
        }
        assert_eq!(Unary::fusible_op(Unary::Sin), None);
        assert_eq!(Unary::fusible_named("sin"), None);
        assert!(!Unary::LeakyRelu(0.01).is_fusible());
    }

    #[test]
    fn parameters_compare_by_bits() {
        assert_eq!(Unary::LeakyRelu(f32::NAN), Unary::LeakyRelu(f32::NAN));
        assert_ne!(Unary::LeakyRelu(0.0), Unary::LeakyRelu(-0.0));
        assert_ne!(Unary::Elu(1.0), Unary::Celu(1.0));
        assert_ne!(Unary::Gelu { tanh: true }, Unary::Gelu { tanh: false });
    }
}
