//! The ops of ortho-opt's own domain, `ortho`, as one typed variant of [`Op`]:
//! `Op::Ortho(OrthoOp)`.
//!
//! Each op carries its decoded payload; the ONNX attributes that encode it are read only here
//! ([`OrthoOp::from_parts`], the import mapping) and written only here ([`OrthoOp::to_attrs`],
//! the export mapping). A node in domain `ortho` whose attributes do not decode (or do not
//! re-encode to exactly the same attributes, so that export would change them) stays
//! `Op::Opaque`; [`malformed`] says why, and the verifier reports it.

use crate::attr::{Attr, AttrValue};
use crate::factorized::Factorized;
use crate::fused::{FusedElementwise, FusedError, OP_TYPE};
use crate::op::Op;
use crate::sparse::NmSparse;

/// The domain of the ops ortho-opt adds.
pub const DOMAIN: &str = "ortho";

/// An op of domain `ortho`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OrthoOp {
    /// A region of f32 elementwise ops (see [`crate::fused`]).
    FusedElementwise(FusedElementwise),
    /// A linear layer with a factorized weight (see [`crate::factorized`]).
    Factorized(Factorized),
    /// A linear layer with an N:M sparse weight in compact form (see [`crate::sparse`]).
    SparseLinear(NmSparse),
}

impl OrthoOp {
    /// Every op type of the domain.
    pub const OP_TYPES: [&'static str; 3] =
        [OP_TYPE, crate::factorized::OP_TYPE, crate::sparse::OP_TYPE];

    /// The op type (`FusedElementwise`).
    pub fn op_type(&self) -> &'static str {
        match self {
            OrthoOp::FusedElementwise(_) => OP_TYPE,
            OrthoOp::Factorized(_) => crate::factorized::OP_TYPE,
            OrthoOp::SparseLinear(_) => crate::sparse::OP_TYPE,
        }
    }

    /// Operand and result counts: `(min_in, max_in, min_out, max_out)`. A fused node reads one
    /// operand per form and has one result.
    pub fn arity(&self) -> (usize, usize, usize, usize) {
        match self {
            OrthoOp::FusedElementwise(f) => (f.forms.len(), f.forms.len(), 1, 1),
            OrthoOp::Factorized(_) => (3, 3, 1, 1),
            OrthoOp::SparseLinear(_) => (3, 3, 1, 1),
        }
    }

    /// The typed op for an ONNX node of domain `ortho`, or why it cannot be one (an unknown op
    /// type is `Ok(None)`: it stays opaque and only `lower-ortho` refuses it).
    pub fn decode(op_type: &str, attrs: &[Attr]) -> Result<Option<OrthoOp>, FusedError> {
        if op_type == crate::factorized::OP_TYPE {
            return decode_factorized(attrs).map(Some);
        }
        if op_type == crate::sparse::OP_TYPE {
            return decode_sparse(attrs).map(Some);
        }
        if op_type != OP_TYPE {
            return Ok(None);
        }
        if let Some(a) = attrs.iter().find(|a| !a.doc.is_empty()) {
            return Err(FusedError::AttributeDoc(a.name.clone()));
        }
        let f = FusedElementwise::from_attrs(attrs)?;
        let op = OrthoOp::FusedElementwise(f);
        if !same_attrs(&op.to_attrs(), attrs) {
            return Err(FusedError::NotCanonical);
        }
        Ok(Some(op))
    }

    /// The typed op for an ONNX node of domain `ortho`, when its attributes decode to one and
    /// re-encode to exactly the same attributes.
    pub fn from_parts(op_type: &str, attrs: &[Attr]) -> Option<OrthoOp> {
        Self::decode(op_type, attrs).ok().flatten()
    }

    /// The ONNX attributes of the op (the export mapping).
    pub fn to_attrs(&self) -> Vec<Attr> {
        match self {
            OrthoOp::FusedElementwise(f) => f.to_attrs(),
            OrthoOp::Factorized(f) => f.to_attrs(),
            OrthoOp::SparseLinear(s) => s.to_attrs(),
        }
    }
}

/// A factorized linear from its attributes, when they are exactly its canonical encoding.
fn decode_factorized(attrs: &[Attr]) -> Result<OrthoOp, FusedError> {
    if let Some(a) = attrs.iter().find(|a| !a.doc.is_empty()) {
        return Err(FusedError::AttributeDoc(a.name.clone()));
    }
    let f = Factorized::from_attrs(attrs)?;
    if !same_attrs(&f.to_attrs(), attrs) {
        return Err(FusedError::NotCanonical);
    }
    Ok(OrthoOp::Factorized(f))
}

/// An N:M sparse linear from its attributes, when they are exactly its canonical encoding.
fn decode_sparse(attrs: &[Attr]) -> Result<OrthoOp, FusedError> {
    if let Some(a) = attrs.iter().find(|a| !a.doc.is_empty()) {
        return Err(FusedError::AttributeDoc(a.name.clone()));
    }
    let s = NmSparse::from_attrs(attrs)?;
    if !same_attrs(&s.to_attrs(), attrs) {
        return Err(FusedError::NotCanonical);
    }
    Ok(OrthoOp::SparseLinear(s))
}

/// Whether two attribute lists are identical, floats compared by bits (a NaN constant must
/// match itself for a fused node to be typed).
fn same_attrs(a: &[Attr], b: &[Attr]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.name == y.name
                && x.doc == y.doc
                && match (&x.value, &y.value) {
                    (AttrValue::Floats(p), AttrValue::Floats(q)) => {
                        p.len() == q.len()
                            && p.iter().zip(q).all(|(s, t)| s.to_bits() == t.to_bits())
                    }
                    (p, q) => p == q,
                }
        })
}

/// Why `op` is an opaque op of domain `ortho` with a known op type, i.e. a node the import
/// mapping could not type; `None` for every other op.
pub fn malformed(op: &Op) -> Option<FusedError> {
    match op {
        Op::Opaque(o) if o.domain == DOMAIN => OrthoOp::decode(&o.op_type, &o.attrs).err(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::{Form, Instr};
    use crate::unary::Unary;

    fn exp() -> FusedElementwise {
        FusedElementwise {
            program: vec![
                Instr::Input(0),
                Instr::Unary(Unary::Exp, 0),
                Instr::Const(f32::from_bits(0x7fc0_0001)),
                Instr::Binary(crate::fused::Binary::Add, 1, 2),
            ],
            forms: vec![Form::Full],
        }
    }

    #[test]
    fn parts_round_trip() {
        let op = exp().to_op();
        let (domain, op_type, attrs) = op.to_parts().expect("parts");
        assert_eq!((domain.as_str(), op_type.as_str()), (DOMAIN, OP_TYPE));
        assert_eq!(Op::from_parts(&domain, &op_type, attrs), op);
        assert_eq!(op.domain(), DOMAIN);
        assert_eq!(op.name(), OP_TYPE);
        assert_eq!(op.arity().min_in, 1);
        assert!(!op.has_side_effects());
    }

    #[test]
    fn non_canonical_and_malformed_nodes_stay_opaque() {
        let mut attrs = exp().to_attrs();
        // A constant stored twice decodes, but would not export as it was imported.
        if let Some(AttrValue::Floats(c)) = attrs.get_mut(1).map(|a| &mut a.value) {
            c.push(1.0);
        }
        let op = Op::from_parts(DOMAIN, OP_TYPE, attrs);
        assert!(matches!(op, Op::Opaque(_)));
        assert_eq!(malformed(&op), Some(FusedError::NotCanonical));

        let bad = Op::from_parts(
            DOMAIN,
            OP_TYPE,
            vec![
                Attr::new("program", AttrValue::Ints(vec![0, 0, 0, 14, 2, 0])),
                Attr::new("forms", AttrValue::Ints(vec![0])),
            ],
        );
        assert!(matches!(
            malformed(&bad),
            Some(FusedError::UndefinedRegister { reg: 2, .. })
        ));
        // Another op type of the domain is opaque without being malformed.
        let other = Op::from_parts(DOMAIN, "Mystery", vec![]);
        assert!(matches!(other, Op::Opaque(_)));
        assert_eq!(malformed(&other), None);
    }
}
