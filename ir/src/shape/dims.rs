//! Dimension algebra shared by every op family: broadcasting, unification of dimensions that
//! must be equal, refinement of a declared type by an inferred one, and symbolic products.
//!
//! Dimensions form a small lattice: `Fixed(n)` is more precise than `Sym(s)`, which is more
//! precise than `Unknown`. Two different symbols may still be equal at run time, so they never
//! conflict; only two different fixed sizes do.

use super::ShapeError;
use crate::semantics;
use crate::types::{DType, Dim, TensorType, Type};

/// Builds a tensor type; an unknown dtype with no shape carries no information at all.
pub(crate) fn tensor(dtype: DType, shape: Option<Vec<Dim>>) -> Type {
    if dtype == DType::Undefined && shape.is_none() {
        Type::Unknown
    } else {
        Type::Tensor(TensorType { dtype, shape })
    }
}

/// A shape written for messages: `[batch, 128, ?]`.
pub(crate) fn fmt_shape(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// Normalizes an axis that may be negative against `rank` (the rule is
/// [`crate::semantics::axis`]; `what` names the attribute in the message).
pub(crate) fn axis(a: i64, rank: usize, what: &'static str) -> Result<usize, ShapeError> {
    Ok(semantics::axis::norm_axis_named(what, a, rank)?)
}

/// A split point in `0..=rank` (`Flatten`); a negative value counts from the end, so `-1`
/// is `rank - 1`, not `rank`.
pub(crate) fn split_point(a: i64, rank: usize, what: &'static str) -> Result<usize, ShapeError> {
    Ok(semantics::axis::split_point(what, a, rank)?)
}

/// Broadcasts two shapes (aligned at the right).
pub(crate) fn broadcast(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, ShapeError> {
    semantics::broadcast::broadcast_symbolic(a, b).map_err(|(x, y)| ShapeError::Broadcast {
        a: fmt_shape(a),
        b: fmt_shape(b),
        x,
        y,
    })
}

/// Two dimensions that must be equal (a contraction, a concatenation's other axes): the more
/// precise one wins; two different fixed sizes are an error.
pub(crate) fn unify_dim(a: &Dim, b: &Dim) -> Result<Dim, ShapeError> {
    use Dim::*;
    Ok(match (a, b) {
        (Fixed(x), Fixed(y)) if x != y => return Err(ShapeError::DimConflict(*x, *y)),
        (Fixed(x), _) | (_, Fixed(x)) => Fixed(*x),
        (Sym(s), _) | (_, Sym(s)) => Sym(s.clone()),
        _ => Unknown,
    })
}

/// The most precise dimension that is true of both `a` and `b` when either may occur (the two
/// branches of an `If`, the iterations of a `Loop`).
pub(crate) fn join_dim(a: &Dim, b: &Dim) -> Dim {
    if a == b {
        a.clone()
    } else {
        Dim::Unknown
    }
}

/// [`join_dim`] lifted to types.
pub(crate) fn join_type(a: &Type, b: &Type) -> Type {
    match (a, b) {
        (Type::Tensor(x), Type::Tensor(y)) => {
            let dtype = if x.dtype == y.dtype {
                x.dtype
            } else {
                DType::Undefined
            };
            let shape = match (&x.shape, &y.shape) {
                (Some(p), Some(q)) if p.len() == q.len() => {
                    Some(p.iter().zip(q).map(|(u, v)| join_dim(u, v)).collect())
                }
                _ => None,
            };
            tensor(dtype, shape)
        }
        _ if a == b => a.clone(),
        _ => Type::Unknown,
    }
}

/// Refines a declared dimension with an inferred one; `Err` on two different fixed sizes.
fn refine_dim(declared: &Dim, inferred: &Dim) -> Result<Dim, ()> {
    use Dim::*;
    match (declared, inferred) {
        (Fixed(x), Fixed(y)) if x != y => Err(()),
        (Fixed(x), _) => Ok(Fixed(*x)),
        (Sym(_), Fixed(y)) => Ok(Fixed(*y)),
        (Sym(s), _) => Ok(Sym(s.clone())),
        (Unknown, x) => Ok(x.clone()),
    }
}

/// Combines a declared type with an inferred one: every dimension keeps the more precise of the
/// two, so a declared fact is never lost. On a conflict the declared type is kept whole (the
/// model's own claim, so that downstream nodes report their own mistakes and not this one's) and
/// the error says what differs.
pub(crate) fn refine(declared: &Type, inferred: &Type) -> (Type, Option<ShapeError>) {
    let conflict = || {
        Some(ShapeError::Declared {
            declared: declared.clone(),
            inferred: inferred.clone(),
        })
    };
    match (declared, inferred) {
        (_, Type::Unknown) => (declared.clone(), None),
        (Type::Unknown, _) => (inferred.clone(), None),
        (Type::Tensor(d), Type::Tensor(i)) => match refine_tensor(d, i) {
            Some(t) => (Type::Tensor(t), None),
            None => (declared.clone(), conflict()),
        },
        (Type::SparseTensor(d), Type::SparseTensor(i)) => match refine_tensor(d, i) {
            Some(t) => (Type::SparseTensor(t), None),
            None => (declared.clone(), conflict()),
        },
        // Containers refine their element types; a conflict inside is a conflict of the whole.
        (Type::Sequence(d), Type::Sequence(i)) => match refine(d, i) {
            (t, None) => (Type::Sequence(Box::new(t)), None),
            _ => (declared.clone(), conflict()),
        },
        (Type::Optional(d), Type::Optional(i)) => match refine(d, i) {
            (t, None) => (Type::Optional(Box::new(t)), None),
            _ => (declared.clone(), conflict()),
        },
        (Type::Map(kd, d), Type::Map(ki, i)) if kd == ki => match refine(d, i) {
            (t, None) => (Type::Map(*kd, Box::new(t)), None),
            _ => (declared.clone(), conflict()),
        },
        _ if declared == inferred => (declared.clone(), None),
        _ => (declared.clone(), conflict()),
    }
}

/// [`refine`] on tensor types; `None` on a conflict.
fn refine_tensor(d: &TensorType, i: &TensorType) -> Option<TensorType> {
    let dtype = match (d.dtype, i.dtype) {
        (DType::Undefined, x) | (x, DType::Undefined) => x,
        (x, y) if x == y => x,
        _ => return None,
    };
    let shape = match (&d.shape, &i.shape) {
        (None, s) | (s, None) => s.clone(),
        (Some(p), Some(q)) if p.len() != q.len() => return None,
        (Some(p), Some(q)) => Some(
            p.iter()
                .zip(q)
                .map(|(x, y)| refine_dim(x, y))
                .collect::<Result<Vec<_>, ()>>()
                .ok()?,
        ),
    };
    Some(TensorType { dtype, shape })
}

/// Sum of two dimensions (concatenation, padding, past + new sequence length).
pub(crate) fn add_dim(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (Dim::Fixed(x), Dim::Fixed(y)) => x.checked_add(*y).map_or(Dim::Unknown, Dim::Fixed),
        (Dim::Fixed(0), x) | (x, Dim::Fixed(0)) => x.clone(),
        _ => Dim::Unknown,
    }
}

/// Product of two dimensions.
pub(crate) fn mul_dim(a: &Dim, b: &Dim) -> Dim {
    Product::of(&[a.clone(), b.clone()]).to_dim()
}

/// `a / b` when it is exact; `Err` when both are fixed and `b` does not divide `a`.
pub(crate) fn div_dim(a: &Dim, b: &Dim) -> Result<Dim, ShapeError> {
    Product::of(std::slice::from_ref(a)).div(&Product::of(std::slice::from_ref(b)))
}

/// A product of dimensions kept as `coef × sym₁ × sym₂ × …`, so that symbols cancel in
/// divisions: `[batch, seq, 576]` reshaped to `[batch, seq, -1, 64]` gives 9.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Product {
    coef: i64,
    /// Symbols of the product, sorted (a multiset).
    syms: Vec<String>,
    /// Some factor is unknown (or the coefficient overflowed).
    unknown: bool,
}

impl Product {
    pub(crate) fn of(dims: &[Dim]) -> Product {
        let mut p = Product {
            coef: 1,
            syms: Vec::new(),
            unknown: false,
        };
        for d in dims {
            match d {
                Dim::Fixed(n) if *n >= 0 => match p.coef.checked_mul(*n) {
                    Some(c) => p.coef = c,
                    None => p.unknown = true,
                },
                Dim::Sym(s) => p.syms.push(s.clone()),
                _ => p.unknown = true,
            }
        }
        p.syms.sort();
        p
    }

    /// The product as a dimension: fixed, a single symbol, or unknown. A zero factor makes the
    /// whole product zero even when other factors are not known.
    pub(crate) fn to_dim(&self) -> Dim {
        if self.coef == 0 && !self.unknown {
            return Dim::Fixed(0);
        }
        match (self.unknown, self.syms.len(), self.coef) {
            (false, 0, c) => Dim::Fixed(c),
            (false, 1, 1) => Dim::Sym(self.syms[0].clone()),
            _ => Dim::Unknown,
        }
    }

    /// Whether every factor is a known number.
    pub(crate) fn fixed(&self) -> Option<i64> {
        (!self.unknown && self.syms.is_empty()).then_some(self.coef)
    }

    /// Exact division; symbols of the divisor must appear in the dividend to cancel.
    pub(crate) fn div(&self, d: &Product) -> Result<Dim, ShapeError> {
        if self.unknown || d.unknown || d.coef == 0 {
            return Ok(Dim::Unknown);
        }
        let mut rest = self.syms.clone();
        for s in &d.syms {
            match rest.iter().position(|x| x == s) {
                Some(i) => {
                    rest.remove(i);
                }
                None => return Ok(Dim::Unknown),
            }
        }
        if self.coef % d.coef != 0 {
            // Only a fully numeric division is certainly wrong; with symbols left over, the
            // product could still divide at run time.
            if rest.is_empty() && d.syms.is_empty() && self.syms.is_empty() {
                return Err(ShapeError::NotDivisible(self.coef, d.coef));
            }
            return Ok(Dim::Unknown);
        }
        Ok(Product {
            coef: self.coef / d.coef,
            syms: rest,
            unknown: false,
        }
        .to_dim())
    }
}

/// The dtype of an ONNX `DataType` code (`Cast.to`, `stash_type`).
pub(crate) fn dtype_from_onnx(code: i64) -> DType {
    DType::from_code(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::semantics::broadcast::broadcast_dim;
    use Dim::*;

    fn s(x: &str) -> Dim {
        Sym(x.to_string())
    }

    #[test]
    fn broadcasting_with_symbols() {
        assert_eq!(broadcast_dim(&s("b"), &Fixed(1)), Ok(s("b")));
        assert_eq!(broadcast_dim(&s("b"), &s("b")), Ok(s("b")));
        assert_eq!(broadcast_dim(&s("b"), &s("c")), Ok(Unknown));
        assert_eq!(broadcast_dim(&s("b"), &Fixed(4)), Ok(Fixed(4)));
        assert!(broadcast_dim(&Fixed(3), &Fixed(4)).is_err());
        let r = broadcast(&[s("b"), Fixed(1), Fixed(5)], &[Fixed(7), Fixed(1)]);
        assert_eq!(r, Ok(vec![s("b"), Fixed(7), Fixed(5)]));
    }

    #[test]
    fn products_cancel_symbols() {
        let total = Product::of(&[s("batch"), s("seq"), Fixed(576)]);
        let known = Product::of(&[s("seq"), s("batch"), Fixed(64)]);
        assert_eq!(total.div(&known), Ok(Fixed(9)));
        let known = Product::of(&[Fixed(576)]);
        assert_eq!(total.div(&known), Ok(Unknown));
        let known = Product::of(&[s("seq"), Fixed(576)]);
        assert_eq!(total.div(&known), Ok(s("batch")));
        assert!(Product::of(&[Fixed(10)])
            .div(&Product::of(&[Fixed(3)]))
            .is_err());
    }

    #[test]
    fn refine_keeps_the_more_precise_dim() {
        let d = Type::tensor(DType::F32, vec![s("batch"), Fixed(3), Unknown]);
        let i = Type::tensor(DType::F32, vec![Unknown, Fixed(3), s("seq")]);
        let (t, c) = refine(&d, &i);
        assert!(c.is_none());
        assert_eq!(
            t,
            Type::tensor(DType::F32, vec![s("batch"), Fixed(3), s("seq")])
        );
        let bad = Type::tensor(DType::F32, vec![Unknown, Fixed(4), Unknown]);
        assert!(refine(&d, &bad).1.is_some());
    }
}
