//! Transform groups a tensor can admit, as a small lattice of generator families.
//!
//! A change of basis `x ↦ xT` of a tensor is exact when every consumer can absorb `T`. The
//! families are rotations (general orthogonal), sign flips, permutations and positive diagonal
//! scalings; O(d) holds the first three, signed permutations the middle two. Meeting two
//! constraints intersects their families.

use std::fmt;

/// A set of generator families; [`Group::strongest`] names the largest group it spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Group(pub u8);

impl Group {
    pub const ROTATION: u8 = 1;
    pub const SIGN: u8 = 2;
    pub const PERM: u8 = 4;
    pub const SCALE: u8 = 8;

    /// Any invertible transform (a foldable linear absorbs anything).
    pub const ALL: Group = Group(15);
    pub const ORTHOGONAL: Group = Group(Self::ROTATION | Self::SIGN | Self::PERM);
    pub const SIGNED_PERMUTATION: Group = Group(Self::SIGN | Self::PERM);
    pub const PERMUTATION: Group = Group(Self::PERM);
    /// Signed permutations and positive diagonal scalings (per-channel products).
    pub const MONOMIAL: Group = Group(Self::SIGN | Self::PERM | Self::SCALE);
    /// Permutations and positive diagonal scalings (positively homogeneous functions).
    pub const POSITIVE_MONOMIAL: Group = Group(Self::PERM | Self::SCALE);
    pub const NONE: Group = Group(0);

    pub fn meet(self, o: Group) -> Group {
        Group(self.0 & o.0)
    }

    /// Whether every family of `need` is admitted.
    pub fn contains(self, need: Group) -> bool {
        self.0 & need.0 == need.0
    }

    /// The largest named group admitted.
    pub fn strongest(self) -> Kind {
        if self.contains(Self::ORTHOGONAL) {
            Kind::Orthogonal
        } else if self.contains(Self::SIGNED_PERMUTATION) {
            Kind::SignedPermutation
        } else if self.contains(Self::PERMUTATION) {
            Kind::Permutation
        } else if self.0 & Self::SCALE != 0 {
            Kind::PositiveDiagonal
        } else {
            Kind::None
        }
    }

    /// Names of the families, for machine-readable output.
    pub fn families(self) -> Vec<&'static str> {
        let mut v = Vec::new();
        for (bit, name) in [
            (Self::ROTATION, "rotation"),
            (Self::SIGN, "sign"),
            (Self::PERM, "permutation"),
            (Self::SCALE, "positive-scale"),
        ] {
            if self.0 & bit != 0 {
                v.push(name);
            }
        }
        v
    }
}

/// The named groups, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Orthogonal,
    SignedPermutation,
    Permutation,
    PositiveDiagonal,
    None,
}

impl Kind {
    /// The generator families the kind needs.
    pub fn group(self) -> Group {
        match self {
            Kind::Orthogonal => Group::ORTHOGONAL,
            Kind::SignedPermutation => Group::SIGNED_PERMUTATION,
            Kind::Permutation => Group::PERMUTATION,
            Kind::PositiveDiagonal => Group(Group::SCALE),
            Kind::None => Group::NONE,
        }
    }

    /// A stable machine name.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Orthogonal => "orthogonal",
            Kind::SignedPermutation => "signed-permutation",
            Kind::Permutation => "permutation",
            Kind::PositiveDiagonal => "positive-diagonal",
            Kind::None => "none",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Orthogonal => "orthogonal O(d)",
            Kind::SignedPermutation => "signed permutations",
            Kind::Permutation => "permutations",
            Kind::PositiveDiagonal => "positive diagonal scalings",
            Kind::None => "none",
        })
    }
}

/// What an elementwise op on the stream admits: `f(xT) = f(x)T` for which T.
pub fn unary_group(op: &crate::op::Op) -> Option<Group> {
    use crate::op::Op;
    Some(match op {
        Op::Identity | Op::Neg => Group::ALL,
        Op::Relu | Op::LeakyRelu(_) => Group::POSITIVE_MONOMIAL,
        // Odd functions commute with sign flips too.
        Op::Tanh
        | Op::Sin
        | Op::Erf
        | Op::Atan
        | Op::Asinh
        | Op::Sinh
        | Op::Softsign
        | Op::Tan
        | Op::Asin
        | Op::Atanh
        | Op::Sign => Group::SIGNED_PERMUTATION,
        Op::Abs
        | Op::Sigmoid
        | Op::Exp
        | Op::Log
        | Op::Sqrt
        | Op::Cos
        | Op::Cosh
        | Op::Acos
        | Op::Acosh
        | Op::Floor
        | Op::Ceil
        | Op::Round
        | Op::Reciprocal
        | Op::Softplus
        | Op::Mish
        | Op::HardSwish
        | Op::Gelu(_)
        | Op::Elu(_)
        | Op::Celu(_)
        | Op::Selu(_)
        | Op::HardSigmoid(_)
        | Op::ThresholdedRelu(_) => Group::PERMUTATION,
        _ => return None,
    })
}
