//! The options `prune` and `denoise-prune` declare alike: `sparsity` and `pattern` (one
//! declaration each, used by both options structs), and the pipeline words of the method and
//! the pattern.

use super::matrix::{Pattern, PruneMethod};
use crate::options::{OptionDecl, OptionKind, OptionType, OptionValue, ValueError};

/// `sparsity`.
pub const SPARSITY: OptionDecl<f64> = OptionDecl {
    name: "sparsity",
    kind: OptionKind::Float,
    default: || 0.5,
    doc: "Fraction of weights removed, in (0, 1) (ignored by N:M patterns).",
};

/// `pattern`.
pub const PATTERN: OptionDecl<Pattern> = OptionDecl {
    name: "pattern",
    kind: OptionKind::Str,
    default: || Pattern::Unstructured,
    doc: "unstructured, or N:M (at most N kept of every M consecutive input weights of a row).",
};

crate::word_option_type!(PruneMethod {
    Magnitude = "magnitude",
    Wanda = "wanda",
    SparseGpt = "sparsegpt",
});

impl OptionType for Pattern {
    const KIND: OptionKind = OptionKind::Str;
    fn from_value(v: &OptionValue) -> Result<Self, ValueError> {
        match v {
            OptionValue::Str(s) => {
                Pattern::parse(s).map_err(|e| ValueError::Invalid(e.to_string()))
            }
            _ => Err(ValueError::Expected(Self::KIND)),
        }
    }
    fn to_value(&self) -> OptionValue {
        OptionValue::Str(self.to_string())
    }
}
