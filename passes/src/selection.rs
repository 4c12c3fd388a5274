//! Which blocks and which linears a pass acts on: the `layers` and `linears` options shared by
//! every pass that changes chosen linears of chosen blocks (`prune`, `sparsify`, the factorizing
//! passes, `poet-reparam`, `lora`): one declaration, one parser, one printed form.

use crate::options::{OptionDecl, OptionKind, OptionType, OptionValue, ValueError};
use crate::sparsity::linears::ROLES;

/// `layers`: the blocks a pass changes.
pub const LAYERS: OptionDecl<BlockSelection> = OptionDecl {
    name: "layers",
    kind: OptionKind::Str,
    default: || BlockSelection(None),
    doc: "Blocks the pass changes: all, or indices and ranges from 0 joined by '+' (e.g. 0-3+7).",
};

/// `linears`: the linears a pass changes in the chosen blocks.
pub const LINEARS: OptionDecl<RoleSelection> = OptionDecl {
    name: "linears",
    kind: OptionKind::Str,
    default: || RoleSelection(ROLES.to_vec()),
    doc: "Linears the pass changes in those blocks: all, or roles joined by '+' (q+k+v+o+gate+up+down).",
};

/// The `layers` option: the blocks to act on (`None`: all), sorted and without repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSelection(pub Option<Vec<usize>>);

impl BlockSelection {
    pub fn contains(&self, block: usize) -> bool {
        self.0.as_ref().is_none_or(|l| l.contains(&block))
    }
}

impl OptionType for BlockSelection {
    const KIND: OptionKind = OptionKind::Str;
    fn from_value(v: &OptionValue) -> Result<Self, ValueError> {
        match v {
            OptionValue::Str(s) => parse_layers(s).map(BlockSelection),
            _ => Err(ValueError::Expected(Self::KIND)),
        }
    }
    fn to_value(&self) -> OptionValue {
        OptionValue::Str(match &self.0 {
            None => "all".into(),
            Some(l) => l.iter().map(usize::to_string).collect::<Vec<_>>().join("+"),
        })
    }
}

/// The `linears` option: the roles to act on, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSelection(pub Vec<&'static str>);

impl RoleSelection {
    pub fn contains(&self, role: &str) -> bool {
        self.0.contains(&role)
    }
}

impl OptionType for RoleSelection {
    const KIND: OptionKind = OptionKind::Str;
    fn from_value(v: &OptionValue) -> Result<Self, ValueError> {
        match v {
            OptionValue::Str(s) => parse_linears(s).map(RoleSelection),
            _ => Err(ValueError::Expected(Self::KIND)),
        }
    }
    fn to_value(&self) -> OptionValue {
        OptionValue::Str(if self.0 == ROLES {
            "all".into()
        } else {
            self.0.join("+")
        })
    }
}

/// `all` or `0-3+7` (also accepts `,` inside a quoted value).
pub fn parse_layers(s: &str) -> Result<Option<Vec<usize>>, ValueError> {
    if s == "all" {
        return Ok(None);
    }
    let bad =
        |p: &str| ValueError::Invalid(format!("layers: '{p}' is not an index or a range a-b"));
    let mut out = Vec::new();
    for part in s.split(['+', ',']).map(str::trim) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.parse().map_err(|_| bad(part))?;
                let b: usize = b.parse().map_err(|_| bad(part))?;
                if a > b {
                    return Err(bad(part));
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad(part))?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(Some(out))
}

fn parse_linears(s: &str) -> Result<Vec<&'static str>, ValueError> {
    if s == "all" {
        return Ok(ROLES.to_vec());
    }
    s.split(['+', ','])
        .map(|p| {
            ROLES
                .iter()
                .copied()
                .find(|r| *r == p.trim())
                .ok_or_else(|| {
                    ValueError::Invalid(format!(
                        "linears: unknown role '{p}' (known: {})",
                        ROLES.join(", ")
                    ))
                })
        })
        .collect()
}
