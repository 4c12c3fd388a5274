//! The options `kron-factorize` and `lowrank-factorize` share (declared once here), and their
//! value types: the rank (`none`, `full` or a number) and the factor shapes (`auto` or `m1xn1`).

use crate::options::{OptionDecl, OptionError, OptionKind, OptionType, OptionValue, ValueError};

/// `budget`.
pub const BUDGET: OptionDecl<f64> = OptionDecl {
    name: "budget",
    kind: OptionKind::Float,
    default: || 0.25,
    doc: "Fraction of the chosen linears' parameters REMOVED, in (0, 1): 0.25 keeps 75 % of them; ranks are allocated across matrices (unused when rank is given).",
};

/// `rank`.
pub const RANK: OptionDecl<RankSpec> = OptionDecl {
    name: "rank",
    kind: OptionKind::Str,
    default: || RankSpec::Unset,
    doc: "none (the budget decides), or the same rank for every chosen matrix: a number, or full (exact); overrides budget.",
};

/// `max-flops`.
pub const MAX_FLOPS: OptionDecl<f64> = OptionDecl {
    name: "max-flops",
    kind: OptionKind::Float,
    default: || 0.0,
    doc: "Cap on each factorized linear's multiply-adds per token, as a fraction of the dense layer's (0: no cap).",
};

/// `calib`.
pub const CALIB: OptionDecl<bool> = OptionDecl {
    name: "calib",
    kind: OptionKind::Bool,
    default: || false,
    doc: "Activation-aware: minimize the layers' output error on the calibration data (--calib-text), whitening by the input Gram (damped 0.01), not the weights' error.",
};

/// The `rank` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankSpec {
    /// Not given (`none`): the budget decides.
    Unset,
    /// The full rank of each matrix: an exact factorization.
    Full,
    Fixed(usize),
}

impl OptionType for RankSpec {
    const KIND: OptionKind = OptionKind::Str;
    fn from_value(v: &OptionValue) -> Result<Self, ValueError> {
        let s = match v {
            OptionValue::Str(s) => s.clone(),
            OptionValue::Int(i) => i.to_string(),
            _ => return Err(ValueError::Expected(Self::KIND)),
        };
        match s.as_str() {
            "none" => Ok(RankSpec::Unset),
            "full" => Ok(RankSpec::Full),
            n => match n.parse::<usize>() {
                Ok(r) if r > 0 => Ok(RankSpec::Fixed(r)),
                _ => Err(ValueError::Invalid(format!(
                    "rank: '{n}' is not a positive integer, 'full' or 'none'"
                ))),
            },
        }
    }
    fn to_value(&self) -> OptionValue {
        OptionValue::Str(match self {
            RankSpec::Unset => "none".into(),
            RankSpec::Full => "full".into(),
            RankSpec::Fixed(r) => r.to_string(),
        })
    }
}

/// The `shapes` option of `kron-factorize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapeSpec {
    /// Searched per matrix among a few candidates (see `matrix::auto_candidates`).
    Auto,
    /// The first factor `A_k` is `m1×n1` for every matrix.
    Fixed { m1: usize, n1: usize },
}

impl OptionType for ShapeSpec {
    const KIND: OptionKind = OptionKind::Str;
    fn from_value(v: &OptionValue) -> Result<Self, ValueError> {
        let OptionValue::Str(s) = v else {
            return Err(ValueError::Expected(Self::KIND));
        };
        if s == "auto" {
            return Ok(ShapeSpec::Auto);
        }
        let bad = || {
            ValueError::Invalid(format!(
                "shapes: '{s}' is not 'auto' or m1xn1 (the first factor's shape, e.g. 24x32)"
            ))
        };
        let (a, b) = s.split_once('x').ok_or_else(bad)?;
        let (m1, n1) = (
            a.parse::<usize>().map_err(|_| bad())?,
            b.parse::<usize>().map_err(|_| bad())?,
        );
        if m1 == 0 || n1 == 0 {
            return Err(bad());
        }
        Ok(ShapeSpec::Fixed { m1, n1 })
    }
    fn to_value(&self) -> OptionValue {
        OptionValue::Str(match self {
            ShapeSpec::Auto => "auto".into(),
            ShapeSpec::Fixed { m1, n1 } => format!("{m1}x{n1}"),
        })
    }
}

/// The checks both passes make on their options before touching the module.
pub fn check_target(budget: f64, max_flops: f64) -> Result<(), OptionError> {
    if !(budget > 0.0 && budget < 1.0) {
        return Err(OptionError::Invalid(format!(
            "budget {budget} is outside (0, 1) (the fraction of the chosen parameters removed)"
        )));
    }
    if !(max_flops >= 0.0 && max_flops.is_finite()) {
        return Err(OptionError::Invalid(format!(
            "max-flops {max_flops} must be ≥ 0 (0: no cap)"
        )));
    }
    Ok(())
}
