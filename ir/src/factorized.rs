//! `ortho.FactorizedLinear`: a linear layer `y = x·Wᵀ` whose weight `W` (m×n, out × in) is
//! stored factorized, as a sum of Kronecker products or as a low-rank product. The factors are
//! the node's operands (initializers), so weights stay weights; the attributes only say how to
//! read them, and are checked against the operands' shapes.
//!
//! Operands and semantics (row-major throughout; `x` is `[..., n]`, the result `[..., m]`):
//!
//! - **Kronecker sum** (`kind = "kron"`, `shape = [m1, n1, m2, n2]`, `rank = r`): operands
//!   `(x, A, B)` with `A: [r, m1, n1]`, `B: [r, m2, n2]`, `m = m1·m2`, `n = n1·n2`, and
//!   `W = Σ_k A_k ⊗ B_k`, i.e. `W[i1·m2 + i2, j1·n2 + j2] = Σ_k A[k,i1,j1]·B[k,i2,j2]`.
//!   Per token, reshape `x` to `X: [n1, n2]` (`X[j1, j2] = x[j1·n2 + j2]`); then
//!   `Y = Σ_k A_k·X·B_kᵀ` (`[m1, m2]`) and `y[i1·m2 + i2] = Y[i1, i2]`.
//! - **Low rank** (`kind = "lowrank"`, `rank = r`): operands `(x, U, V)` with `U: [m, r]`,
//!   `V: [n, r]` and `W = U·Vᵀ`, so `y = (x·V)·Uᵀ`.
//!
//! The factors have the dtype of `x` (a float type); the result too.

use crate::attr::{Attr, AttrValue};
use crate::types::{DType, Dim};
use std::fmt;

/// The op type in domain `ortho`.
pub const OP_TYPE: &str = "FactorizedLinear";

/// How the weight of an `ortho.FactorizedLinear` is factorized (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Factorized {
    /// `W = Σ_{k<rank} A_k ⊗ B_k`, `A_k: m1×n1`, `B_k: m2×n2`.
    KronSum {
        m1: usize,
        n1: usize,
        m2: usize,
        n2: usize,
        rank: usize,
    },
    /// `W = U·Vᵀ`, `U: m×rank`, `V: n×rank`.
    LowRank { rank: usize },
}

/// Why attributes or operands do not describe a factorized linear.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactorizedError {
    #[error("attribute '{0}' is missing or has the wrong kind")]
    Missing(&'static str),
    #[error("unknown factorization kind '{0}' (expected \"kron\" or \"lowrank\")")]
    UnknownKind(String),
    #[error("attribute '{name}' has the value {value}, which must be a positive size")]
    NotPositive { name: &'static str, value: i64 },
    #[error("'shape' has {0} ints, expected [m1, n1, m2, n2]")]
    ShapeLen(usize),
    #[error("unexpected attribute '{0}'")]
    Unexpected(String),
    #[error("expects 3 operands (x and two factors), found {0}")]
    Operands(usize),
    #[error("operand {slot} ({what}) has shape {found}, expected {expected}")]
    FactorShape {
        slot: usize,
        what: &'static str,
        found: String,
        expected: String,
    },
    #[error("the input's last dim is {found}, expected {expected} (the weight's input width)")]
    InputWidth { found: String, expected: usize },
    #[error("the input is a scalar; a linear needs a last axis")]
    ScalarInput,
    #[error("operand {slot} is {found}, expected {expected} (every operand has the input's float dtype)")]
    DType {
        slot: usize,
        found: DType,
        expected: DType,
    },
    #[error("the input is {0}, which is not a float type")]
    NotFloat(DType),
}

impl Factorized {
    /// The rank (number of Kronecker terms, or the inner width of the low-rank product).
    pub fn rank(&self) -> usize {
        match *self {
            Factorized::KronSum { rank, .. } | Factorized::LowRank { rank } => rank,
        }
    }

    /// The short name of the kind, as in the `kind` attribute.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Factorized::KronSum { .. } => "kron",
            Factorized::LowRank { .. } => "lowrank",
        }
    }

    /// The shapes `(A or U, B or V)` of the two factor operands for a weight of `m×n`.
    pub fn factor_shapes(&self, m: usize, n: usize) -> ([usize; 3], [usize; 3]) {
        match *self {
            Factorized::KronSum {
                m1,
                n1,
                m2,
                n2,
                rank,
            } => ([rank, m1, n1], [rank, m2, n2]),
            // Rank-2 factors are reported with a leading 1 so both kinds have one shape type.
            Factorized::LowRank { rank } => ([1, m, rank], [1, n, rank]),
        }
    }

    /// Parameters the factors hold for a weight of `m×n`.
    pub fn params(&self, m: usize, n: usize) -> usize {
        match *self {
            Factorized::KronSum {
                m1,
                n1,
                m2,
                n2,
                rank,
            } => rank * (m1 * n1 + m2 * n2),
            Factorized::LowRank { rank } => rank * (m + n),
        }
    }

    /// Multiply-adds per token of the kernel (`y = Σ A_k X B_kᵀ` computed as `X·Bᵀ` first).
    pub fn macs_per_token(&self, m: usize, n: usize) -> usize {
        match *self {
            Factorized::KronSum {
                m1,
                n1,
                m2,
                n2,
                rank,
            } => rank * (n1 * n2 * m2 + m1 * n1 * m2),
            Factorized::LowRank { rank } => rank * (m + n),
        }
    }

    /// Decodes the ONNX attributes (`kind`, `rank`, and `shape` for a Kronecker sum).
    pub fn from_attrs(attrs: &[Attr]) -> Result<Factorized, FactorizedError> {
        let find = |name: &str| attrs.iter().find(|a| a.name == name).map(|a| &a.value);
        for a in attrs {
            if !matches!(a.name.as_str(), "kind" | "rank" | "shape") {
                return Err(FactorizedError::Unexpected(a.name.clone()));
            }
        }
        let kind = match find("kind") {
            Some(AttrValue::String(s)) => String::from_utf8_lossy(s).into_owned(),
            _ => return Err(FactorizedError::Missing("kind")),
        };
        let positive = |name: &'static str, v: i64| {
            usize::try_from(v)
                .ok()
                .filter(|&x| x > 0)
                .ok_or(FactorizedError::NotPositive { name, value: v })
        };
        let rank = match find("rank") {
            Some(AttrValue::Int(r)) => positive("rank", *r)?,
            _ => return Err(FactorizedError::Missing("rank")),
        };
        match kind.as_str() {
            "kron" => {
                let s = match find("shape") {
                    Some(AttrValue::Ints(s)) => s,
                    _ => return Err(FactorizedError::Missing("shape")),
                };
                if s.len() != 4 {
                    return Err(FactorizedError::ShapeLen(s.len()));
                }
                Ok(Factorized::KronSum {
                    m1: positive("shape", s[0])?,
                    n1: positive("shape", s[1])?,
                    m2: positive("shape", s[2])?,
                    n2: positive("shape", s[3])?,
                    rank,
                })
            }
            "lowrank" => {
                if find("shape").is_some() {
                    return Err(FactorizedError::Unexpected("shape".into()));
                }
                Ok(Factorized::LowRank { rank })
            }
            k => Err(FactorizedError::UnknownKind(k.to_string())),
        }
    }

    /// The ONNX attributes, in the canonical order `kind, rank[, shape]`.
    pub fn to_attrs(&self) -> Vec<Attr> {
        let mut v = vec![
            Attr::new(
                "kind",
                AttrValue::String(self.kind_name().as_bytes().to_vec()),
            ),
            Attr::new("rank", AttrValue::Int(self.rank() as i64)),
        ];
        if let Factorized::KronSum { m1, n1, m2, n2, .. } = *self {
            v.push(Attr::new(
                "shape",
                AttrValue::Ints(vec![m1 as i64, n1 as i64, m2 as i64, n2 as i64]),
            ));
        }
        v
    }

    /// The result shape for operand shapes `x`, `f1`, `f2` (any may be unknown: `None`), and
    /// the checks between them: factor shapes as the attributes say, the input width `n`.
    pub fn infer_shape(
        &self,
        x: Option<&[Dim]>,
        f1: Option<&[Dim]>,
        f2: Option<&[Dim]>,
    ) -> Result<Option<Vec<Dim>>, FactorizedError> {
        let fixed = |s: &[Dim]| -> Option<Vec<usize>> {
            s.iter()
                .map(|d| match d {
                    Dim::Fixed(v) => usize::try_from(*v).ok(),
                    _ => None,
                })
                .collect()
        };
        let show = |s: &[Dim]| {
            format!(
                "[{}]",
                s.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let check = |slot: usize,
                     what: &'static str,
                     s: Option<&[Dim]>,
                     want: &[Option<usize>]|
         -> Result<Option<Vec<usize>>, FactorizedError> {
            let Some(s) = s else { return Ok(None) };
            let found = fixed(s);
            let ok = s.len() == want.len()
                && s.iter().zip(want).all(|(d, w)| match (d, w) {
                    (Dim::Fixed(v), Some(w)) => usize::try_from(*v).ok() == Some(*w),
                    _ => true,
                });
            if !ok {
                let expected = want
                    .iter()
                    .map(|w| w.map_or("?".to_string(), |v| v.to_string()))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(FactorizedError::FactorShape {
                    slot,
                    what,
                    found: show(s),
                    expected: format!("[{expected}]"),
                });
            }
            Ok(found)
        };
        let (m, n) = match *self {
            Factorized::KronSum {
                m1,
                n1,
                m2,
                n2,
                rank,
            } => {
                check(1, "A", f1, &[Some(rank), Some(m1), Some(n1)])?;
                check(2, "B", f2, &[Some(rank), Some(m2), Some(n2)])?;
                (Some(m1 * m2), Some(n1 * n2))
            }
            Factorized::LowRank { rank } => {
                let u = check(1, "U", f1, &[None, Some(rank)])?;
                let v = check(2, "V", f2, &[None, Some(rank)])?;
                (u.map(|u| u[0]), v.map(|v| v[0]))
            }
        };
        let Some(x) = x else { return Ok(None) };
        let Some((last, lead)) = x.split_last() else {
            return Err(FactorizedError::ScalarInput);
        };
        if let (Dim::Fixed(v), Some(n)) = (last, n) {
            if usize::try_from(*v).ok() != Some(n) {
                return Err(FactorizedError::InputWidth {
                    found: v.to_string(),
                    expected: n,
                });
            }
        }
        let mut out = lead.to_vec();
        out.push(m.map_or(Dim::Unknown, |m| Dim::Fixed(m as i64)));
        Ok(Some(out))
    }

    /// The dtype checks: `x` a float type, both factors the same (unknown dtypes pass).
    pub fn check_dtypes(&self, d: [DType; 3]) -> Result<DType, FactorizedError> {
        let x = d[0];
        if x != DType::Undefined && !matches!(x, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
        {
            return Err(FactorizedError::NotFloat(x));
        }
        for (slot, &f) in d.iter().enumerate().skip(1) {
            if x != DType::Undefined && f != DType::Undefined && f != x {
                return Err(FactorizedError::DType {
                    slot,
                    found: f,
                    expected: x,
                });
            }
        }
        Ok(x)
    }
}

/// The typed syntax in `.oir` is the attribute list itself (`{kind = "kron", rank = 2,
/// shape = [2, 3, 4, 5]}`), which the generic attribute parser reads back into this op.
impl fmt::Display for Factorized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kind = \"{}\", rank = {}", self.kind_name(), self.rank())?;
        if let Factorized::KronSum { m1, n1, m2, n2, .. } = *self {
            write!(f, ", shape = [{m1}, {n1}, {m2}, {n2}]")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_round_trip_and_refuse_bad_values() {
        let k = Factorized::KronSum {
            m1: 2,
            n1: 3,
            m2: 4,
            n2: 5,
            rank: 2,
        };
        assert_eq!(Factorized::from_attrs(&k.to_attrs()), Ok(k));
        let l = Factorized::LowRank { rank: 7 };
        assert_eq!(Factorized::from_attrs(&l.to_attrs()), Ok(l));
        assert_eq!(k.params(8, 15), 2 * (6 + 20));
        let mut bad = k.to_attrs();
        bad[1].value = AttrValue::Int(0);
        assert_eq!(
            Factorized::from_attrs(&bad),
            Err(FactorizedError::NotPositive {
                name: "rank",
                value: 0
            })
        );
        let mut bad = k.to_attrs();
        bad[0].value = AttrValue::String(b"tucker".to_vec());
        assert!(matches!(
            Factorized::from_attrs(&bad),
            Err(FactorizedError::UnknownKind(_))
        ));
    }

    #[test]
    fn shapes_are_inferred_and_checked() {
        let k = Factorized::KronSum {
            m1: 2,
            n1: 3,
            m2: 4,
            n2: 5,
            rank: 2,
        };
        let f = |v: &[i64]| v.iter().map(|&x| Dim::Fixed(x)).collect::<Vec<_>>();
        let x = vec![Dim::Unknown, Dim::Fixed(15)];
        let out = k
            .infer_shape(Some(&x), Some(&f(&[2, 2, 3])), Some(&f(&[2, 4, 5])))
            .expect("ok");
        assert_eq!(out, Some(vec![Dim::Unknown, Dim::Fixed(8)]));
        assert!(matches!(
            k.infer_shape(Some(&x), Some(&f(&[3, 2, 3])), None),
            Err(FactorizedError::FactorShape { slot: 1, .. })
        ));
        assert!(matches!(
            k.infer_shape(Some(&f(&[4, 16])), None, None),
            Err(FactorizedError::InputWidth { .. })
        ));
        let l = Factorized::LowRank { rank: 3 };
        let out = l
            .infer_shape(Some(&f(&[4, 6])), Some(&f(&[5, 3])), Some(&f(&[6, 3])))
            .expect("ok");
        assert_eq!(out, Some(f(&[4, 5])));
        assert!(l
            .check_dtypes([DType::F32, DType::F16, DType::F32])
            .is_err());
        assert!(l
            .check_dtypes([DType::I64, DType::I64, DType::I64])
            .is_err());
    }

    /// The linear analysis sees a factorized linear (its kind, factors, widths and bias), and
    /// reports it as not dense, so passes that rewrite `W` in place skip it.
    #[test]
    fn the_linear_analysis_recognizes_the_op() {
        use crate::analysis::linear::{match_linear, LinearKind};
        let src = r#"module {ir_version = 8, opset_import = ["" = 17, "ortho" = 1]}
graph @g(%x: tensor<3x6xf32>) -> (%z) {
  %a = const tensor<2x2x3xf32> dense<[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.5, -1.0, 0.0, 2.0, 1.0, 1.0]>
  %b = const tensor<2x2x2xf32> dense<[1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]>
  %c = const tensor<4xf32> dense<[1.0, 2.0, 3.0, 4.0]>
  %y = ortho.FactorizedLinear(%x, %a, %b) {kind = "kron", rank = 2, shape = [2, 3, 2, 2]} : tensor<3x4xf32>
  %z = onnx.Add(%y, %c) : tensor<3x4xf32>
}
"#;
        let m = crate::text::parse_module(src).unwrap_or_else(|e| panic!("{e}"));
        let g = m.main_graph();
        let y = g
            .node_ids()
            .into_iter()
            .find(|&n| g.node(n).outputs.first().is_some_and(|o| o.name == "y"))
            .unwrap_or_else(|| panic!("no %y"));
        let l = match_linear(&m, g, y).unwrap_or_else(|| panic!("not a linear"));
        assert!(matches!(
            l.kind,
            LinearKind::Factorized {
                op: Factorized::KronSum { rank: 2, .. },
                ..
            }
        ));
        assert_eq!((l.in_features, l.out_features), (6, 4));
        assert!(l.dense().is_none());
        assert!(l.bias.is_some());
    }
}
