//! Typed pass options: the specs a pass declares in the registry, the values a pipeline string
//! gives, and their canonical text.
//!
//! A [`PassOptions`] always holds a value for every spec (defaults filled in), so the printed form
//! of a pipeline states every option explicitly and means the same thing even if a default
//! changes later. Passes turn it into their own options struct once, when they are built.

use std::fmt;

/// The type of an option value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptionKind {
    Bool,
    /// An integer in `min..=max`.
    Int {
        min: i64,
        max: i64,
    },
    Float,
    /// One of a fixed set of words.
    Enum(&'static [&'static str]),
    Str,
}

impl OptionKind {
    /// A non-negative integer.
    pub const UINT: OptionKind = OptionKind::Int {
        min: 0,
        max: i64::MAX,
    };

    /// A short description for listings and error messages.
    pub fn describe(&self) -> String {
        match self {
            OptionKind::Bool => "bool".into(),
            OptionKind::Int {
                min: 0,
                max: i64::MAX,
            } => "uint".into(),
            OptionKind::Int { min, max: i64::MAX } => format!("int >= {min}"),
            OptionKind::Int { min, max } => format!("int in {min}..={max}"),
            OptionKind::Float => "float".into(),
            OptionKind::Enum(words) => words.join("|"),
            OptionKind::Str => "string".into(),
        }
    }
}

/// One option a pass accepts: kebab-case name, type, default (as pipeline text) and a doc line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptionSpec {
    pub name: &'static str,
    pub kind: OptionKind,
    /// Parsed like a value written in a pipeline, so a bad default fails the registry test.
    pub default: &'static str,
    pub doc: &'static str,
}

/// A parsed option value.
#[derive(Debug, Clone, PartialEq)]
pub enum OptionValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Strings and enum words.
    Str(String),
}

impl OptionValue {
    /// Parses `text` as a value of `kind`; the error says what was expected.
    pub fn parse(kind: OptionKind, text: &str) -> Result<OptionValue, String> {
        match kind {
            OptionKind::Bool => match text {
                "true" => Ok(OptionValue::Bool(true)),
                "false" => Ok(OptionValue::Bool(false)),
                _ => Err("expected true or false".into()),
            },
            OptionKind::Int { min, max } => match text.parse::<i64>() {
                Ok(v) if (min..=max).contains(&v) => Ok(OptionValue::Int(v)),
                _ if max == i64::MAX => Err(format!("expected an integer >= {min}")),
                _ => Err(format!("expected an integer in {min}..={max}")),
            },
            OptionKind::Float => match text.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(OptionValue::Float(v)),
                _ => Err("expected a finite number".into()),
            },
            OptionKind::Enum(words) => {
                if words.contains(&text) {
                    Ok(OptionValue::Str(text.to_string()))
                } else {
                    Err(format!("expected one of {}", words.join(", ")))
                }
            }
            OptionKind::Str => Ok(OptionValue::Str(text.to_string())),
        }
    }
}

/// Characters a string value may use without quotes in a pipeline.
pub(crate) fn is_bare_value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/' | '+' | '@' | '%' | '*')
}

impl fmt::Display for OptionValue {
    /// The canonical text: reads back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionValue::Bool(b) => write!(f, "{b}"),
            OptionValue::Int(i) => write!(f, "{i}"),
            OptionValue::Float(x) => write!(f, "{x:?}"),
            OptionValue::Str(s) if !s.is_empty() && s.chars().all(is_bare_value_char) => {
                f.write_str(s)
            }
            OptionValue::Str(s) => {
                f.write_str("\"")?;
                for c in s.chars() {
                    match c {
                        '"' => f.write_str("\\\"")?,
                        '\\' => f.write_str("\\\\")?,
                        c => write!(f, "{c}")?,
                    }
                }
                f.write_str("\"")
            }
        }
    }
}

/// The complete option values of one pass instance, in spec order.
#[derive(Debug, Clone, PartialEq)]
pub struct PassOptions {
    specs: &'static [OptionSpec],
    values: Vec<OptionValue>,
}

impl PassOptions {
    /// Every option at its default. An error here is a bug in a registry line.
    pub fn defaults(specs: &'static [OptionSpec]) -> Result<PassOptions, String> {
        let values = specs
            .iter()
            .map(|s| {
                OptionValue::parse(s.kind, s.default)
                    .map_err(|e| format!("default of option '{}': {e}", s.name))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PassOptions { specs, values })
    }

    pub fn specs(&self) -> &'static [OptionSpec] {
        self.specs
    }

    /// Sets option `name` from pipeline text. The error is the message only; the pipeline parser
    /// adds the position and the pass name.
    pub fn set(&mut self, name: &str, text: &str) -> Result<(), SetError> {
        let i = self
            .specs
            .iter()
            .position(|s| s.name == name)
            .ok_or(SetError::Unknown)?;
        self.values[i] =
            OptionValue::parse(self.specs[i].kind, text).map_err(SetError::BadValue)?;
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&OptionValue> {
        self.specs
            .iter()
            .position(|s| s.name == name)
            .map(|i| &self.values[i])
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static OptionSpec, &OptionValue)> {
        self.specs.iter().zip(self.values.iter())
    }

    fn missing(name: &str) -> String {
        format!("option '{name}' is not declared with that type")
    }

    pub fn bool(&self, name: &str) -> Result<bool, String> {
        match self.get(name) {
            Some(OptionValue::Bool(b)) => Ok(*b),
            _ => Err(Self::missing(name)),
        }
    }

    pub fn int(&self, name: &str) -> Result<i64, String> {
        match self.get(name) {
            Some(OptionValue::Int(i)) => Ok(*i),
            _ => Err(Self::missing(name)),
        }
    }

    /// An integer option declared with a non-negative minimum.
    pub fn uint(&self, name: &str) -> Result<u64, String> {
        self.int(name)
            .and_then(|i| u64::try_from(i).map_err(|_| Self::missing(name)))
    }

    pub fn float(&self, name: &str) -> Result<f64, String> {
        match self.get(name) {
            Some(OptionValue::Float(x)) => Ok(*x),
            _ => Err(Self::missing(name)),
        }
    }

    pub fn str(&self, name: &str) -> Result<&str, String> {
        match self.get(name) {
            Some(OptionValue::Str(s)) => Ok(s),
            _ => Err(Self::missing(name)),
        }
    }
}

impl fmt::Display for PassOptions {
    /// `k=v k2=v2` with every option, in spec order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (s, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}={v}", s.name)?;
        }
        Ok(())
    }
}

/// Why [`PassOptions::set`] refused a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetError {
    Unknown,
    BadValue(String),
}
