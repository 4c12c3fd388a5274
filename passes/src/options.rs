//! Typed pass options: the specs a pass declares in the registry, the values a pipeline string
//! gives, and their canonical text.
//!
//! A [`PassOptions`] always holds a value for every spec (defaults filled in), so the printed form
//! of a pipeline states every option explicitly and means the same thing even if a default
//! changes later. Passes turn it into their own options struct once, when they are built.

use std::fmt;

/// The type of an option value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// One option a pass accepts: kebab-case name, type, default and a doc line. Passes do not
/// write these by hand: [`crate::pass_options!`] generates them from the options struct, so the
/// spec, the struct's `Default`, its parsing and the listing cannot disagree.
#[derive(Debug, Clone, Copy)]
pub struct OptionSpec {
    pub name: &'static str,
    pub kind: OptionKind,
    /// The default value (generated from the typed default of the options struct).
    pub default: fn() -> OptionValue,
    pub doc: &'static str,
}

impl OptionSpec {
    /// The default as pipeline text (what `--list-passes` shows).
    pub fn default_text(&self) -> String {
        (self.default)().to_string()
    }
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
    pub fn parse(kind: OptionKind, text: &str) -> Result<OptionValue, ValueError> {
        let v = match kind {
            OptionKind::Bool => match text {
                "true" => OptionValue::Bool(true),
                "false" => OptionValue::Bool(false),
                _ => return Err(ValueError::Expected(kind)),
            },
            OptionKind::Int { .. } => match text.parse::<i64>() {
                Ok(v) => OptionValue::Int(v),
                _ => return Err(ValueError::Expected(kind)),
            },
            OptionKind::Float => match text.parse::<f64>() {
                Ok(v) => OptionValue::Float(v),
                _ => return Err(ValueError::Expected(kind)),
            },
            OptionKind::Enum(_) | OptionKind::Str => OptionValue::Str(text.to_string()),
        };
        v.check(kind)?;
        Ok(v)
    }

    /// Whether the value has type `kind` and lies in its range (integer bounds, finite floats,
    /// one of the enum's words).
    pub fn check(&self, kind: OptionKind) -> Result<(), ValueError> {
        let fits = match (kind, self) {
            (OptionKind::Bool, OptionValue::Bool(_)) => true,
            (OptionKind::Int { min, max }, OptionValue::Int(v)) => (min..=max).contains(v),
            (OptionKind::Float, OptionValue::Float(x)) => x.is_finite(),
            (OptionKind::Enum(words), OptionValue::Str(s)) => words.contains(&s.as_str()),
            (OptionKind::Str, OptionValue::Str(_)) => true,
            _ => false,
        };
        if fits {
            Ok(())
        } else {
            Err(ValueError::Expected(kind))
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

/// Why a value does not fit an option's type; printed after the option's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not a value of the declared type or outside its range.
    #[error("{}", expected(.0))]
    Expected(OptionKind),
    /// A value of the right type that the option's meaning refuses (a sparsity outside (0, 1),
    /// an unknown layer role, …).
    #[error("{0}")]
    Invalid(String),
}

fn expected(kind: &OptionKind) -> String {
    match *kind {
        OptionKind::Bool => "expected true or false".into(),
        OptionKind::Int { min, max: i64::MAX } => format!("expected an integer >= {min}"),
        OptionKind::Int { min, max } => format!("expected an integer in {min}..={max}"),
        OptionKind::Float => "expected a finite number".into(),
        OptionKind::Enum(words) => format!("expected one of {}", words.join(", ")),
        OptionKind::Str => "expected a string".into(),
    }
}

/// Why a pass could not be built from its [`PassOptions`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// The options were made for other specs: `name` is missing or has another type.
    #[error("option '{name}' is not declared with that type")]
    NotDeclared { name: &'static str },
    /// One option's value is refused (the message says which option where it needs to).
    #[error("{error}")]
    Value {
        name: &'static str,
        error: ValueError,
    },
    /// A combination of values is refused, or a value in a way that names itself (`lr must be
    /// positive, got -1`).
    #[error("{0}")]
    Invalid(String),
}

/// The complete option values of one pass instance, in spec order.
#[derive(Debug, Clone)]
pub struct PassOptions {
    specs: &'static [OptionSpec],
    values: Vec<OptionValue>,
}

impl PartialEq for PassOptions {
    /// Same option names and values (specs are compared by name: their defaults are functions).
    fn eq(&self, other: &Self) -> bool {
        self.specs.len() == other.specs.len()
            && self
                .specs
                .iter()
                .zip(other.specs)
                .all(|(a, b)| a.name == b.name)
            && self.values == other.values
    }
}

impl PassOptions {
    /// Every option at its default.
    pub fn defaults(specs: &'static [OptionSpec]) -> PassOptions {
        let values = specs.iter().map(|s| (s.default)()).collect();
        PassOptions { specs, values }
    }

    /// Options with the given values, in spec order (what an options struct turns back into).
    /// The error names the first value that does not fit its spec.
    pub fn from_values(
        specs: &'static [OptionSpec],
        values: Vec<OptionValue>,
    ) -> Result<Self, OptionError> {
        for (i, s) in specs.iter().enumerate() {
            let v = values
                .get(i)
                .ok_or(OptionError::NotDeclared { name: s.name })?;
            v.check(s.kind).map_err(|error| OptionError::Value {
                name: s.name,
                error,
            })?;
        }
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

    /// The value of option `name` as `T` (how generated `from_options` reads each field).
    pub fn typed<T: OptionType>(&self, name: &'static str) -> Result<T, OptionError> {
        let v = self.get(name).ok_or(OptionError::NotDeclared { name })?;
        T::from_value(v).map_err(|error| match error {
            ValueError::Expected(_) => OptionError::NotDeclared { name },
            error => OptionError::Value { name, error },
        })
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
#[derive(Debug, Clone, PartialEq)]
pub enum SetError {
    Unknown,
    BadValue(ValueError),
}

/// A Rust type an option can have: its pipeline type and the conversions both ways. The
/// conversions must round-trip (`from_value(&x.to_value()) == Ok(x)`); the registry test checks
/// it for every default.
pub trait OptionType: Sized {
    /// The pipeline type an option of this type gets unless its declaration names one (integer
    /// bounds, the order of enum words).
    const KIND: OptionKind;
    fn from_value(v: &OptionValue) -> Result<Self, ValueError>;
    fn to_value(&self) -> OptionValue;
}

impl OptionType for bool {
    const KIND: OptionKind = OptionKind::Bool;
    fn from_value(v: &OptionValue) -> Result<Self, ValueError> {
        match v {
            OptionValue::Bool(b) => Ok(*b),
            _ => Err(ValueError::Expected(Self::KIND)),
        }
    }
    fn to_value(&self) -> OptionValue {
        OptionValue::Bool(*self)
    }
}

impl OptionType for f64 {
    const KIND: OptionKind = OptionKind::Float;
    fn from_value(v: &OptionValue) -> Result<Self, ValueError> {
        match v {
            OptionValue::Float(x) => Ok(*x),
            _ => Err(ValueError::Expected(Self::KIND)),
        }
    }
    fn to_value(&self) -> OptionValue {
        OptionValue::Float(*self)
    }
}

impl OptionType for String {
    const KIND: OptionKind = OptionKind::Str;
    fn from_value(v: &OptionValue) -> Result<Self, ValueError> {
        match v {
            OptionValue::Str(s) => Ok(s.clone()),
            _ => Err(ValueError::Expected(Self::KIND)),
        }
    }
    fn to_value(&self) -> OptionValue {
        OptionValue::Str(self.clone())
    }
}

/// Unsigned integers: the value must fit the type (the declared bounds usually say more).
macro_rules! uint_option_type {
    ($($t:ty),*) => {$(
        impl OptionType for $t {
            const KIND: OptionKind = OptionKind::UINT;
            fn from_value(v: &OptionValue) -> Result<Self, ValueError> {
                match v {
                    OptionValue::Int(i) => {
                        <$t>::try_from(*i).map_err(|_| ValueError::Expected(Self::KIND))
                    }
                    _ => Err(ValueError::Expected(Self::KIND)),
                }
            }
            fn to_value(&self) -> OptionValue {
                OptionValue::Int(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }
    )*};
}
uint_option_type!(u64, usize);

/// Implements [`OptionType`] for a fieldless enum by its pipeline words, in listing order, and
/// gives the enum `word()` and `from_word()`:
/// `word_option_type!(RotationKind { Haar = "haar", Hadamard = "hadamard" });`.
#[macro_export]
macro_rules! word_option_type {
    ($t:ty { $($variant:ident = $word:literal),+ $(,)? }) => {
        impl $t {
            /// The pipeline word of this value.
            pub fn word(self) -> &'static str {
                match self { $(<$t>::$variant => $word,)+ }
            }

            /// The value a pipeline word names.
            pub fn from_word(word: &str) -> Option<Self> {
                match word {
                    $($word => Some(<$t>::$variant),)+
                    _ => None,
                }
            }
        }

        impl $crate::options::OptionType for $t {
            const KIND: $crate::options::OptionKind =
                $crate::options::OptionKind::Enum(&[$($word),+]);
            fn from_value(
                v: &$crate::options::OptionValue,
            ) -> Result<Self, $crate::options::ValueError> {
                match v {
                    $crate::options::OptionValue::Str(s) => <$t>::from_word(s)
                        .ok_or($crate::options::ValueError::Expected(Self::KIND)),
                    _ => Err($crate::options::ValueError::Expected(Self::KIND)),
                }
            }
            fn to_value(&self) -> $crate::options::OptionValue {
                $crate::options::OptionValue::Str(self.word().to_string())
            }
        }
    };
}

/// An option declared apart from any options struct, so that several passes share it (prune's
/// and denoise-prune's `sparsity` and `pattern`). [`crate::pass_options!`] takes it in place of
/// an inline declaration.
pub struct OptionDecl<T> {
    pub name: &'static str,
    pub kind: OptionKind,
    pub default: fn() -> T,
    pub doc: &'static str,
}
