//! `ortho.FusedElementwise`: a region of f32 elementwise ops collapsed into one node.
//!
//! The node's operands are the region's leaf values; its one result is the region's root value.
//! What it computes is a small register program, [`FusedElementwise`], held by the op itself
//! (`Op::Ortho(OrthoOp::FusedElementwise(..))`): instruction `i` defines register `i`, operands
//! refer to earlier registers, the last register is the result, and each node operand has a
//! [`Form`] saying how it broadcasts against the result. The payload is built once (by
//! `fuse-elementwise`, the `.oir` parser or the ONNX import) and read as it is by every consumer.
//!
//! In `.oir` the node reads
//! `%y = ortho.FusedElementwise(%x, %g) {program = [r0 = input(0), r1 = input(1), r2 = mul(r0, r1)], forms = [full, last-axis]} : …`
//! (the [`Display`](fmt::Display) of the payload).
//!
//! In ONNX (the export and import mapping, [`FusedElementwise::to_attrs`] and
//! [`FusedElementwise::from_attrs`]) the program is held in integer attributes:
//!
//! - `program` (ints): three ints per instruction, `[opcode, a, b]`.
//! - `constants` (floats): the values `const` and `powf` instructions refer to by index.
//! - `forms` (ints): one per operand (0 full, 1 scalar, 2 last-axis, 3 per-row).
//!
//! | opcode | text | meaning |
//! |---|---|---|
//! | 0 | `input(k)` | element of operand `k` (per its form) |
//! | 1 | `const(c)` | `constants[c]` |
//! | 10–19 | `neg abs sqrt reciprocal exp log tanh sigmoid relu erf` `(r)` | unary op on register `r` |
//! | 30–35 | `add sub mul div max min` `(r, s)` | binary op |
//! | 40 | `powi(r, n)` | `r^n` for an integer `n`, `|n| <=` [`MAX_POWI`], by multiplications |
//! | 41 | `powf(r, c)` | `powf(r, constants[c])` |
//!
//! Semantics are those of the ONNX ops the instructions come from, evaluated in f32 with every
//! instruction's result rounded to f32. `max`/`min` propagate NaN (IEEE 754-2019 maximum and
//! minimum); `relu(x)` is `x < 0 ? 0 : x`, so it keeps NaN.
//!
//! The result's shape is the broadcast of the operand shapes; a consumer computes the number of
//! elements `n` and the row length (the result's last dimension, 1 for a scalar) from it.

use crate::attr::{Attr, AttrValue};
use crate::op::Op;
pub use crate::op_ortho::{OrthoOp, DOMAIN};
use crate::types::Dim;
use std::fmt;
use std::hash::{Hash, Hasher};

/// The op type of the fused elementwise op.
pub const OP_TYPE: &str = "FusedElementwise";
/// Largest `|n|` of a `powi` instruction.
pub const MAX_POWI: i64 = 64;

/// A register: the index of the instruction that defines it.
pub type Reg = u32;

/// How an operand broadcasts against the result, seen as `rows × row_len` where `row_len` is
/// the result's last dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Form {
    /// The result's shape (up to leading 1s): element `i` for result element `i`.
    Full,
    /// One element (all dimensions 1, or rank 0), broadcast everywhere.
    Scalar,
    /// A vector along the last axis (`[1, …, 1, row_len]`): element `j` for column `j`.
    LastAxis,
    /// One value per row (`[d0, …, d(r-2), 1]` with the result's leading dims): element `row`.
    PerRow,
}

impl Form {
    fn code(self) -> i64 {
        match self {
            Form::Full => 0,
            Form::Scalar => 1,
            Form::LastAxis => 2,
            Form::PerRow => 3,
        }
    }
    fn from_code(c: i64) -> Option<Form> {
        Some(match c {
            0 => Form::Full,
            1 => Form::Scalar,
            2 => Form::LastAxis,
            3 => Form::PerRow,
            _ => return None,
        })
    }
    /// The name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Form::Full => "full",
            Form::Scalar => "scalar",
            Form::LastAxis => "last-axis",
            Form::PerRow => "per-row",
        }
    }
    /// The form named `name` (the inverse of [`name`](Self::name)).
    pub fn named(name: &str) -> Option<Form> {
        [Form::Full, Form::Scalar, Form::LastAxis, Form::PerRow]
            .into_iter()
            .find(|f| f.name() == name)
    }
}

/// Whether two dimensions are known to be equal (an unknown dimension equals nothing).
fn same_dim(a: &Dim, b: &Dim) -> bool {
    *a != Dim::Unknown && a == b
}

/// `operand` aligned at the right to `rank` dimensions (leading 1s added), or `None` when it has
/// more dimensions than that and the extra ones are not all 1.
fn pad_to(operand: &[Dim], rank: usize) -> Option<Vec<Dim>> {
    let one = Dim::Fixed(1);
    if operand.len() > rank {
        let extra = operand.len() - rank;
        return operand[..extra]
            .iter()
            .all(|d| *d == one)
            .then(|| operand[extra..].to_vec());
    }
    let mut v = vec![one; rank - operand.len()];
    v.extend_from_slice(operand);
    Some(v)
}

impl Form {
    /// Whether an operand of shape `operand` broadcasts to `result` in this form, as far as the
    /// dimensions prove it (symbols count as equal to themselves; unknown dimensions never fit).
    pub fn fits(self, operand: &[Dim], result: &[Dim]) -> bool {
        let one = Dim::Fixed(1);
        let r = result.len();
        let Some(p) = pad_to(operand, r) else {
            return false;
        };
        match self {
            Form::Scalar => p.iter().all(|d| *d == one),
            Form::Full => p.iter().zip(result).all(|(a, b)| same_dim(a, b)),
            Form::LastAxis => {
                r > 0 && p[..r - 1].iter().all(|d| *d == one) && same_dim(&p[r - 1], &result[r - 1])
            }
            Form::PerRow => {
                r > 0
                    && p[r - 1] == one
                    && p[..r - 1].iter().zip(result).all(|(a, b)| same_dim(a, b))
            }
        }
    }

    /// The cheapest form in which `operand` broadcasts to `result`: scalar, then full, last-axis,
    /// per-row; `None` when it broadcasts in none of them (a middle axis, an unknown dimension).
    pub fn of(operand: &[Dim], result: &[Dim]) -> Option<Form> {
        [Form::Scalar, Form::Full, Form::LastAxis, Form::PerRow]
            .into_iter()
            .find(|f| f.fits(operand, result))
    }
}

pub use crate::unary::Unary;

/// The opcode of a fusible unary op (`10 + ` its index in [`Unary::FUSIBLE`]).
fn unary_code(u: Unary) -> Option<i64> {
    Unary::FUSIBLE
        .iter()
        .position(|&x| x == u)
        .map(|i| 10 + i as i64)
}

/// Two-operand instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
}

impl Binary {
    pub const ALL: [Binary; 6] = [
        Binary::Add,
        Binary::Sub,
        Binary::Mul,
        Binary::Div,
        Binary::Max,
        Binary::Min,
    ];
    fn code(self) -> i64 {
        30 + Self::ALL.iter().position(|&b| b == self).unwrap_or(0) as i64
    }
    pub fn name(self) -> &'static str {
        match self {
            Binary::Add => "add",
            Binary::Sub => "sub",
            Binary::Mul => "mul",
            Binary::Div => "div",
            Binary::Max => "max",
            Binary::Min => "min",
        }
    }
    /// The op named `name` (the inverse of [`name`](Self::name)).
    pub fn named(name: &str) -> Option<Binary> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }
}

const OP_INPUT: i64 = 0;
const OP_CONST: i64 = 1;
const OP_POWI: i64 = 40;
const OP_POWF: i64 = 41;

/// One instruction; it defines the register equal to its index in the program.
#[derive(Debug, Clone, Copy)]
pub enum Instr {
    /// The current element of operand `k`.
    Input(u32),
    Const(f32),
    Unary(Unary, Reg),
    Binary(Binary, Reg, Reg),
    /// `x^n` by repeated multiplication (and a reciprocal for negative `n`).
    Powi(Reg, i32),
    /// `powf(x, e)` for a constant `e`.
    Powf(Reg, f32),
}

// Constants compare and hash by bits, so that a program with a NaN constant equals itself and
// the kernel cache can key on programs.
impl PartialEq for Instr {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Instr::Input(a), Instr::Input(b)) => a == b,
            (Instr::Const(a), Instr::Const(b)) => a.to_bits() == b.to_bits(),
            (Instr::Unary(u, a), Instr::Unary(v, b)) => u == v && a == b,
            (Instr::Binary(o, a, b), Instr::Binary(p, c, d)) => o == p && a == c && b == d,
            (Instr::Powi(a, n), Instr::Powi(b, m)) => a == b && n == m,
            (Instr::Powf(a, e), Instr::Powf(b, f)) => a == b && e.to_bits() == f.to_bits(),
            _ => false,
        }
    }
}
impl Eq for Instr {}

impl Hash for Instr {
    fn hash<H: Hasher>(&self, h: &mut H) {
        std::mem::discriminant(self).hash(h);
        match *self {
            Instr::Input(k) => k.hash(h),
            Instr::Const(c) => c.to_bits().hash(h),
            Instr::Unary(u, r) => (u, r).hash(h),
            Instr::Binary(b, x, y) => (b, x, y).hash(h),
            Instr::Powi(r, n) => (r, n).hash(h),
            Instr::Powf(r, e) => (r, e.to_bits()).hash(h),
        }
    }
}

impl Instr {
    /// The registers this instruction reads.
    pub fn operands(&self) -> Vec<Reg> {
        match *self {
            Instr::Input(_) | Instr::Const(_) => Vec::new(),
            Instr::Unary(_, r) | Instr::Powi(r, _) | Instr::Powf(r, _) => vec![r],
            Instr::Binary(_, a, b) => vec![a, b],
        }
    }
}

/// An f32 as the text form writes it: Rust's shortest round-trip form (`1e-5`, `2.0`, `inf`),
/// `NaN` for the canonical quiet NaN, and the bits in hex (`0x7fc00001`) for any other NaN, so
/// that a constant reads back with the same bits.
pub fn fmt_f32(x: f32) -> String {
    if x.is_nan() && x.to_bits() != f32::NAN.to_bits() {
        format!("{:#010x}", x.to_bits())
    } else {
        format!("{x:?}")
    }
}

/// `input(0)`, `const(1e-5)`, `exp(r2)`, `add(r1, r2)`, `powi(r5, -3)`, `powf(r6, 0.75)`: the
/// syntax of an instruction in `.oir` and in messages.
impl fmt::Display for Instr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Instr::Input(k) => write!(f, "input({k})"),
            Instr::Const(c) => write!(f, "const({})", fmt_f32(c)),
            Instr::Unary(u, r) => write!(f, "{}(r{r})", u.name()),
            Instr::Binary(b, x, y) => write!(f, "{}(r{x}, r{y})", b.name()),
            Instr::Powi(r, n) => write!(f, "powi(r{r}, {n})"),
            Instr::Powf(r, e) => write!(f, "powf(r{r}, {})", fmt_f32(e)),
        }
    }
}

/// The typed payload of an `ortho.FusedElementwise` node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FusedElementwise {
    pub program: Vec<Instr>,
    /// One per operand of the node.
    pub forms: Vec<Form>,
}

impl fmt::Display for FusedElementwise {
    /// `program = [r0 = input(0), r1 = input(1), r2 = mul(r0, r1)], forms = [full, scalar]`:
    /// the attribute block of the node in `.oir`, also used in messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("program = [")?;
        for (i, ins) in self.program.iter().enumerate() {
            write!(f, "{}r{i} = {ins}", if i == 0 { "" } else { ", " })?;
        }
        let forms: Vec<&str> = self.forms.iter().map(|x| x.name()).collect();
        write!(f, "], forms = [{}]", forms.join(", "))
    }
}

/// Why a fused program, or the attributes that encode it, is not a well-formed one. The
/// messages are those the verifier and the parser show after the node's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FusedError {
    /// The attributes of an `ortho.FactorizedLinear` (which shares the domain's error type).
    #[error(transparent)]
    Factorized(#[from] crate::factorized::FactorizedError),
    /// The attributes of an `ortho.SparseLinear`.
    #[error(transparent)]
    Sparse(#[from] crate::sparse::SparseError),
    #[error("unexpected attribute '{name}' of kind {kind}")]
    UnexpectedAttribute { name: String, kind: &'static str },
    #[error("attribute '{0}' (ints) is missing")]
    MissingAttribute(&'static str),
    #[error("attribute '{0}' has a doc string, which the typed op does not keep")]
    AttributeDoc(String),
    #[error("unknown operand form {0} (expected 0 to 3)")]
    UnknownFormCode(i64),
    #[error("'program' has {0} ints, not a multiple of 3")]
    NotTriples(usize),
    #[error("constant index {index} is out of range ({len} constants)")]
    ConstantIndex { index: i64, len: usize },
    #[error("register {0} is out of range")]
    RegisterRange(i64),
    #[error("operand index {0} is out of range")]
    OperandRange(i64),
    #[error("powi exponent {0} is out of range")]
    PowiRange(i64),
    #[error("unknown opcode {0}")]
    UnknownOpcode(i64),
    #[error("the attributes are not in the canonical encoding (constants stored once, in order of first use, without an empty list)")]
    NotCanonical,
    #[error("the program is empty")]
    Empty,
    #[error("instruction {index} ({instr}) reads register r{reg}, which is not defined before it")]
    UndefinedRegister {
        index: usize,
        instr: String,
        reg: Reg,
    },
    #[error("instruction {index} reads operand {operand}, but the node has {forms} forms")]
    OperandIndex {
        index: usize,
        operand: u32,
        forms: usize,
    },
    #[error("instruction {index}: powi exponent {n} exceeds {MAX_POWI} in magnitude")]
    PowiExponent { index: usize, n: i32 },
    #[error("instruction {index}: {op} cannot be fused")]
    NotFusible { index: usize, op: &'static str },
}

impl FusedError {
    /// Whether the error is in the program's instructions (as opposed to its encoding).
    pub fn is_program_error(&self) -> bool {
        matches!(
            self,
            FusedError::Empty
                | FusedError::UndefinedRegister { .. }
                | FusedError::OperandIndex { .. }
                | FusedError::PowiExponent { .. }
                | FusedError::NotFusible { .. }
        )
    }
}

impl FusedElementwise {
    /// The payload of `op` when it is an `ortho.FusedElementwise` node.
    pub fn from_op(op: &Op) -> Option<&FusedElementwise> {
        match op {
            Op::Ortho(OrthoOp::FusedElementwise(f)) => Some(f),
            _ => None,
        }
    }

    /// Decodes the ONNX attributes of an `ortho.FusedElementwise` node (`program`,
    /// `constants`, `forms`; see the module documentation) and validates the program. Used by
    /// the import mapping ([`OrthoOp::from_parts`]) only; everything else reads the typed op.
    pub fn from_attrs(attrs: &[Attr]) -> Result<FusedElementwise, FusedError> {
        let (mut program, mut constants, mut forms) = (None, None, None);
        for a in attrs {
            match (a.name.as_str(), &a.value) {
                ("program", AttrValue::Ints(v)) if program.is_none() => program = Some(v),
                ("constants", AttrValue::Floats(v)) if constants.is_none() => constants = Some(v),
                ("forms", AttrValue::Ints(v)) if forms.is_none() => forms = Some(v),
                (name, v) => {
                    return Err(FusedError::UnexpectedAttribute {
                        name: name.to_string(),
                        kind: v.kind().name(),
                    })
                }
            }
        }
        let program = program.ok_or(FusedError::MissingAttribute("program"))?;
        let empty = Vec::new();
        let constants = constants.unwrap_or(&empty);
        let forms = forms.ok_or(FusedError::MissingAttribute("forms"))?;
        let forms = forms
            .iter()
            .map(|&c| Form::from_code(c).ok_or(FusedError::UnknownFormCode(c)))
            .collect::<Result<Vec<_>, _>>()?;
        if !program.len().is_multiple_of(3) {
            return Err(FusedError::NotTriples(program.len()));
        }
        let konst = |c: i64| -> Result<f32, FusedError> {
            usize::try_from(c)
                .ok()
                .and_then(|i| constants.get(i).copied())
                .ok_or(FusedError::ConstantIndex {
                    index: c,
                    len: constants.len(),
                })
        };
        let reg = |r: i64| u32::try_from(r).map_err(|_| FusedError::RegisterRange(r));
        let mut out = Vec::with_capacity(program.len() / 3);
        for w in program.chunks_exact(3) {
            let (op, a, b) = (w[0], w[1], w[2]);
            let ins = match op {
                OP_INPUT => {
                    Instr::Input(u32::try_from(a).map_err(|_| FusedError::OperandRange(a))?)
                }
                OP_CONST => Instr::Const(konst(a)?),
                OP_POWI => Instr::Powi(
                    reg(a)?,
                    i32::try_from(b).map_err(|_| FusedError::PowiRange(b))?,
                ),
                OP_POWF => Instr::Powf(reg(a)?, konst(b)?),
                _ => {
                    if let Some(&u) = Unary::FUSIBLE.iter().find(|&&u| unary_code(u) == Some(op)) {
                        Instr::Unary(u, reg(a)?)
                    } else if let Some(&bi) = Binary::ALL.iter().find(|x| x.code() == op) {
                        Instr::Binary(bi, reg(a)?, reg(b)?)
                    } else {
                        return Err(FusedError::UnknownOpcode(op));
                    }
                }
            };
            out.push(ins);
        }
        let f = FusedElementwise {
            program: out,
            forms,
        };
        f.validate()?;
        Ok(f)
    }

    /// Checks that the program is not empty, registers are defined before use, operand
    /// indices exist, unary ops are fusible and `powi` exponents are in range.
    pub fn validate(&self) -> Result<(), FusedError> {
        if self.program.is_empty() {
            return Err(FusedError::Empty);
        }
        for (i, ins) in self.program.iter().enumerate() {
            for r in ins.operands() {
                if r as usize >= i {
                    return Err(FusedError::UndefinedRegister {
                        index: i,
                        instr: ins.to_string(),
                        reg: r,
                    });
                }
            }
            match *ins {
                Instr::Input(k) if k as usize >= self.forms.len() => {
                    return Err(FusedError::OperandIndex {
                        index: i,
                        operand: k,
                        forms: self.forms.len(),
                    });
                }
                Instr::Powi(_, n) if i64::from(n).abs() > MAX_POWI => {
                    return Err(FusedError::PowiExponent { index: i, n });
                }
                Instr::Unary(u, _) if !u.is_fusible() => {
                    return Err(FusedError::NotFusible {
                        index: i,
                        op: u.name(),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The register holding the result.
    pub fn result(&self) -> Reg {
        self.program.len().saturating_sub(1) as Reg
    }

    /// The node op `ortho.FusedElementwise` with this payload.
    pub fn to_op(&self) -> Op {
        Op::Ortho(OrthoOp::FusedElementwise(self.clone()))
    }

    /// The ONNX attributes: `program`, `constants` (when any; each value stored once, in order
    /// of first use) and `forms`. This is the export mapping; [`from_attrs`](Self::from_attrs)
    /// reads it back.
    pub fn to_attrs(&self) -> Vec<Attr> {
        let mut program = Vec::with_capacity(self.program.len() * 3);
        let mut constants: Vec<f32> = Vec::new();
        let mut konst = |c: f32| -> i64 {
            match constants.iter().position(|x| x.to_bits() == c.to_bits()) {
                Some(i) => i as i64,
                None => {
                    constants.push(c);
                    constants.len() as i64 - 1
                }
            }
        };
        for ins in &self.program {
            let w = match *ins {
                Instr::Input(k) => [OP_INPUT, i64::from(k), 0],
                // A non-fusible unary op never gets here from a validated program; opcode -1 keeps
                // the encoding total, and decoding refuses it.
                Instr::Unary(u, r) => [unary_code(u).unwrap_or(-1), i64::from(r), 0],
                Instr::Const(c) => [OP_CONST, konst(c), 0],
                Instr::Binary(b, x, y) => [b.code(), i64::from(x), i64::from(y)],
                Instr::Powi(r, n) => [OP_POWI, i64::from(r), i64::from(n)],
                Instr::Powf(r, e) => [OP_POWF, i64::from(r), konst(e)],
            };
            program.extend_from_slice(&w);
        }
        let mut attrs = vec![Attr::new("program", AttrValue::Ints(program))];
        if !constants.is_empty() {
            attrs.push(Attr::new("constants", AttrValue::Floats(constants)));
        }
        attrs.push(Attr::new(
            "forms",
            AttrValue::Ints(self.forms.iter().map(|f| f.code()).collect()),
        ));
        attrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FusedElementwise {
        FusedElementwise {
            program: vec![
                Instr::Input(0),
                Instr::Input(1),
                Instr::Const(1e-5),
                Instr::Binary(Binary::Add, 1, 2),
                Instr::Unary(Unary::Sqrt, 3),
                Instr::Binary(Binary::Div, 0, 4),
                Instr::Powi(5, -3),
                Instr::Powf(6, 1e-5),
                Instr::Unary(Unary::Erf, 7),
            ],
            forms: vec![Form::Full, Form::PerRow],
        }
    }

    #[test]
    fn round_trips_through_attributes() {
        let f = sample();
        let op = f.to_op();
        assert_eq!(FusedElementwise::from_op(&op), Some(&f));
        let attrs = f.to_attrs();
        assert_eq!(FusedElementwise::from_attrs(&attrs), Ok(f.clone()));
        // The shared constant is stored once.
        assert!(attrs
            .iter()
            .any(|a| a.name == "constants" && a.value == AttrValue::Floats(vec![1e-5])));
        assert_eq!(
            f.to_string(),
            "program = [r0 = input(0), r1 = input(1), r2 = const(1e-5), r3 = add(r1, r2), r4 = sqrt(r3), r5 = div(r0, r4), r6 = powi(r5, -3), r7 = powf(r6, 1e-5), r8 = erf(r7)], forms = [full, per-row]"
        );
    }

    #[test]
    fn nan_payloads_print_as_bits() {
        assert_eq!(fmt_f32(f32::NAN), "NaN");
        assert_eq!(fmt_f32(f32::from_bits(0x7fc0_0001)), "0x7fc00001");
        assert_eq!(fmt_f32(-0.0), "-0.0");
        assert_eq!(fmt_f32(f32::NEG_INFINITY), "-inf");
    }

    #[test]
    fn forms_follow_the_shapes() {
        let d = |v: &[&str]| -> Vec<Dim> {
            v.iter()
                .map(|s| {
                    s.parse::<i64>().map(Dim::Fixed).unwrap_or_else(|_| {
                        if *s == "?" {
                            Dim::Unknown
                        } else {
                            Dim::Sym(s.to_string())
                        }
                    })
                })
                .collect()
        };
        let res = d(&["b", "s", "576"]);
        assert_eq!(Form::of(&d(&["b", "s", "576"]), &res), Some(Form::Full));
        assert_eq!(
            Form::of(&d(&["1", "b", "s", "576"]), &res),
            Some(Form::Full)
        );
        assert_eq!(Form::of(&d(&[]), &res), Some(Form::Scalar));
        assert_eq!(Form::of(&d(&["1", "1"]), &res), Some(Form::Scalar));
        assert_eq!(Form::of(&d(&["576"]), &res), Some(Form::LastAxis));
        assert_eq!(Form::of(&d(&["1", "1", "576"]), &res), Some(Form::LastAxis));
        assert_eq!(Form::of(&d(&["b", "s", "1"]), &res), Some(Form::PerRow));
        assert_eq!(
            Form::of(&d(&["b", "1", "576"]), &res),
            None,
            "a middle broadcast"
        );
        assert_eq!(
            Form::of(&d(&["s", "576"]), &res),
            None,
            "missing leading dim"
        );
        assert_eq!(
            Form::of(&d(&["?", "s", "576"]), &d(&["?", "s", "576"])),
            None,
            "unknown dims prove nothing"
        );
        assert_eq!(Form::of(&d(&["2", "b", "s", "576"]), &res), None);
        assert_eq!(Form::of(&d(&["1"]), &d(&[])), Some(Form::Scalar));
        assert_eq!(Form::of(&d(&["3"]), &d(&[])), None);
    }

    #[test]
    fn malformed_programs_are_refused() {
        let bad = |program: Vec<i64>, forms: Vec<i64>| {
            FusedElementwise::from_attrs(&[
                Attr::new("program", AttrValue::Ints(program)),
                Attr::new("forms", AttrValue::Ints(forms)),
            ])
            .expect_err("malformed")
        };
        assert_eq!(bad(vec![], vec![0]), FusedError::Empty);
        assert_eq!(bad(vec![0, 0], vec![0]), FusedError::NotTriples(2));
        assert!(matches!(
            bad(vec![0, 1, 0], vec![0]),
            FusedError::OperandIndex { operand: 1, .. }
        ));
        let e = bad(vec![0, 0, 0, 30, 0, 1], vec![0]);
        assert!(matches!(e, FusedError::UndefinedRegister { reg: 1, .. }));
        assert_eq!(
            e.to_string(),
            "instruction 1 (add(r0, r1)) reads register r1, which is not defined before it"
        );
        assert_eq!(bad(vec![99, 0, 0], vec![0]), FusedError::UnknownOpcode(99));
        assert!(matches!(
            bad(vec![1, 0, 0], vec![0]),
            FusedError::ConstantIndex { index: 0, len: 0 }
        ));
        assert_eq!(bad(vec![0, 0, 0], vec![7]), FusedError::UnknownFormCode(7));
        assert!(matches!(
            bad(vec![0, 0, 0, 40, 0, 65], vec![0]),
            FusedError::PowiExponent { n: 65, .. }
        ));
        let sin = FusedElementwise {
            program: vec![Instr::Input(0), Instr::Unary(Unary::Sin, 0)],
            forms: vec![Form::Full],
        };
        assert!(matches!(
            sin.validate(),
            Err(FusedError::NotFusible { op: "sin", .. })
        ));
    }
}
