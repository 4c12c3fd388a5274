//! `ortho.FusedElementwise`: a region of f32 elementwise ops collapsed into one node.
//!
//! The node's operands are the region's leaf values; its one result is the region's root value.
//! What it computes is a small register program held in its attributes:
//!
//! - `program` (ints): three ints per instruction, `[opcode, a, b]`. Instruction `i` defines
//!   register `i`; operands refer to earlier registers; the last register is the result.
//! - `constants` (floats): the values `const` and `powf` instructions refer to by index.
//! - `forms` (ints): one per operand, how the operand broadcasts against the result (see [`Form`]).
//!
//! | opcode | text | meaning |
//! |---|---|---|
//! | 0 | `input k` | element of operand `k` (per its form) |
//! | 1 | `const c` | `constants[c]` |
//! | 10–19 | `neg abs sqrt reciprocal exp log tanh sigmoid relu erf` `r` | unary op on register `r` |
//! | 30–35 | `add sub mul div max min` `r s` | binary op |
//! | 40 | `powi r n` | `r^n` for an integer `n`, `|n| <=` [`MAX_POWI`], by multiplications |
//! | 41 | `powf r c` | `powf(r, constants[c])` |
//!
//! Semantics are those of the ONNX ops the instructions come from, evaluated in f32 with every
//! instruction's result rounded to f32. `max`/`min` propagate NaN (IEEE 754-2019 maximum and
//! minimum); `relu(x)` is `x < 0 ? 0 : x`, so it keeps NaN.
//!
//! The result's shape is the broadcast of the operand shapes; a consumer computes the number of
//! elements `n` and the row length (the result's last dimension, 1 for a scalar) from it.

use crate::attr::{Attr, AttrValue};
use crate::op::{Op, Opaque};
use crate::types::Dim;
use std::fmt;
use std::hash::{Hash, Hasher};

/// The domain of the ops ortho-opt adds.
pub const DOMAIN: &str = "ortho";
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

/// One-operand instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unary {
    Neg,
    Abs,
    Sqrt,
    Reciprocal,
    Exp,
    Log,
    Tanh,
    Sigmoid,
    Relu,
    Erf,
}

impl Unary {
    pub const ALL: [Unary; 10] = [
        Unary::Neg,
        Unary::Abs,
        Unary::Sqrt,
        Unary::Reciprocal,
        Unary::Exp,
        Unary::Log,
        Unary::Tanh,
        Unary::Sigmoid,
        Unary::Relu,
        Unary::Erf,
    ];
    fn code(self) -> i64 {
        10 + Self::ALL.iter().position(|&u| u == self).unwrap_or(0) as i64
    }
    pub fn name(self) -> &'static str {
        match self {
            Unary::Neg => "neg",
            Unary::Abs => "abs",
            Unary::Sqrt => "sqrt",
            Unary::Reciprocal => "reciprocal",
            Unary::Exp => "exp",
            Unary::Log => "log",
            Unary::Tanh => "tanh",
            Unary::Sigmoid => "sigmoid",
            Unary::Relu => "relu",
            Unary::Erf => "erf",
        }
    }
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

impl fmt::Display for Instr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Instr::Input(k) => write!(f, "input {k}"),
            Instr::Const(c) => write!(f, "const {c:?}"),
            Instr::Unary(u, r) => write!(f, "{} %{r}", u.name()),
            Instr::Binary(b, x, y) => write!(f, "{} %{x}, %{y}", b.name()),
            Instr::Powi(r, n) => write!(f, "powi %{r}, {n}"),
            Instr::Powf(r, e) => write!(f, "powf %{r}, {e:?}"),
        }
    }
}

/// The typed view of an `ortho.FusedElementwise` node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FusedElementwise {
    pub program: Vec<Instr>,
    /// One per operand of the node.
    pub forms: Vec<Form>,
}

impl fmt::Display for FusedElementwise {
    /// `(full, scalar) { %0 = input 0; %1 = input 1; %2 = mul %0, %1 }`, for messages and notes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let forms: Vec<&str> = self.forms.iter().map(|x| x.name()).collect();
        write!(f, "({}) {{", forms.join(", "))?;
        for (i, ins) in self.program.iter().enumerate() {
            write!(f, "{} %{i} = {ins}", if i == 0 { "" } else { ";" })?;
        }
        f.write_str(" }")
    }
}

impl FusedElementwise {
    /// Whether `op` is an `ortho.FusedElementwise` (well-formed or not).
    pub fn is_fused(op: &Op) -> bool {
        matches!(op, Op::Opaque(o) if o.domain == DOMAIN && o.op_type == OP_TYPE)
    }

    /// The typed view of `op`, or `None` when it is not a well-formed `ortho.FusedElementwise`.
    pub fn from_op(op: &Op) -> Option<FusedElementwise> {
        Self::decode(op).ok()
    }

    /// Like [`from_op`](Self::from_op), with the reason when `op` is not a well-formed one.
    pub fn decode(op: &Op) -> Result<FusedElementwise, String> {
        let Op::Opaque(o) = op else {
            return Err(format!("{} is not {DOMAIN}.{OP_TYPE}", op.name()));
        };
        if o.domain != DOMAIN || o.op_type != OP_TYPE {
            return Err(format!(
                "{}.{} is not {DOMAIN}.{OP_TYPE}",
                o.domain, o.op_type
            ));
        }
        let (mut program, mut constants, mut forms) = (None, None, None);
        for a in &o.attrs {
            match (a.name.as_str(), &a.value) {
                ("program", AttrValue::Ints(v)) if program.is_none() => program = Some(v),
                ("constants", AttrValue::Floats(v)) if constants.is_none() => constants = Some(v),
                ("forms", AttrValue::Ints(v)) if forms.is_none() => forms = Some(v),
                (name, v) => {
                    return Err(format!(
                        "unexpected attribute '{name}' of kind {}",
                        v.kind().name()
                    ))
                }
            }
        }
        let program = program.ok_or("attribute 'program' (ints) is missing")?;
        let empty = Vec::new();
        let constants = constants.unwrap_or(&empty);
        let forms = forms.ok_or("attribute 'forms' (ints) is missing")?;
        let forms = forms
            .iter()
            .map(|&c| {
                Form::from_code(c)
                    .ok_or_else(|| format!("unknown operand form {c} (expected 0 to 3)"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !program.len().is_multiple_of(3) {
            return Err(format!(
                "'program' has {} ints, not a multiple of 3",
                program.len()
            ));
        }
        let konst = |c: i64| -> Result<f32, String> {
            usize::try_from(c)
                .ok()
                .and_then(|c| constants.get(c).copied())
                .ok_or_else(|| {
                    format!(
                        "constant index {c} is out of range ({} constants)",
                        constants.len()
                    )
                })
        };
        let reg = |r: i64| u32::try_from(r).map_err(|_| format!("register {r} is out of range"));
        let mut out = Vec::with_capacity(program.len() / 3);
        for w in program.chunks_exact(3) {
            let (op, a, b) = (w[0], w[1], w[2]);
            let ins = match op {
                OP_INPUT => Instr::Input(
                    u32::try_from(a).map_err(|_| format!("operand index {a} is out of range"))?,
                ),
                OP_CONST => Instr::Const(konst(a)?),
                OP_POWI => Instr::Powi(
                    reg(a)?,
                    i32::try_from(b).map_err(|_| format!("powi exponent {b} is out of range"))?,
                ),
                OP_POWF => Instr::Powf(reg(a)?, konst(b)?),
                _ => {
                    if let Some(&u) = Unary::ALL.iter().find(|u| u.code() == op) {
                        Instr::Unary(u, reg(a)?)
                    } else if let Some(&bi) = Binary::ALL.iter().find(|x| x.code() == op) {
                        Instr::Binary(bi, reg(a)?, reg(b)?)
                    } else {
                        return Err(format!("unknown opcode {op}"));
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

    /// Checks that registers are defined before use, operand indices exist, the program is not
    /// empty and `powi` exponents are in range.
    pub fn validate(&self) -> Result<(), String> {
        if self.program.is_empty() {
            return Err("the program is empty".into());
        }
        for (i, ins) in self.program.iter().enumerate() {
            for r in ins.operands() {
                if r as usize >= i {
                    return Err(format!("instruction {i} ({ins}) reads register %{r}, which is not defined before it"));
                }
            }
            match *ins {
                Instr::Input(k) if k as usize >= self.forms.len() => {
                    return Err(format!(
                        "instruction {i} reads operand {k}, but the node has {} forms",
                        self.forms.len()
                    ));
                }
                Instr::Powi(_, n) if i64::from(n).abs() > MAX_POWI => {
                    return Err(format!(
                        "instruction {i}: powi exponent {n} exceeds {MAX_POWI} in magnitude"
                    ));
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

    /// The node op: `Op::Opaque` in domain `ortho` with `program`, `constants` and `forms`.
    pub fn to_op(&self) -> Op {
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
                Instr::Const(c) => [OP_CONST, konst(c), 0],
                Instr::Unary(u, r) => [u.code(), i64::from(r), 0],
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
        Op::Opaque(Opaque {
            domain: DOMAIN.to_string(),
            op_type: OP_TYPE.to_string(),
            attrs,
        })
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
    fn round_trips_through_op() {
        let f = sample();
        let op = f.to_op();
        assert!(FusedElementwise::is_fused(&op));
        assert_eq!(FusedElementwise::decode(&op), Ok(f.clone()));
        // The shared constant is stored once.
        let Op::Opaque(o) = &op else { panic!("opaque") };
        assert!(o
            .attrs
            .iter()
            .any(|a| a.name == "constants" && a.value == AttrValue::Floats(vec![1e-5])));
        assert_eq!(f.to_string(), "(full, per-row) { %0 = input 0; %1 = input 1; %2 = const 1e-5; %3 = add %1, %2; %4 = sqrt %3; %5 = div %0, %4; %6 = powi %5, -3; %7 = powf %6, 1e-5; %8 = erf %7 }");
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
            let op = Op::Opaque(Opaque {
                domain: DOMAIN.into(),
                op_type: OP_TYPE.into(),
                attrs: vec![
                    Attr::new("program", AttrValue::Ints(program)),
                    Attr::new("forms", AttrValue::Ints(forms)),
                ],
            });
            FusedElementwise::decode(&op).expect_err("malformed")
        };
        assert!(bad(vec![], vec![0]).contains("empty"));
        assert!(bad(vec![0, 0], vec![0]).contains("multiple of 3"));
        assert!(bad(vec![0, 1, 0], vec![0]).contains("operand 1"));
        assert!(bad(vec![0, 0, 0, 30, 0, 1], vec![0]).contains("not defined"));
        assert!(bad(vec![99, 0, 0], vec![0]).contains("unknown opcode"));
        assert!(bad(vec![1, 0, 0], vec![0]).contains("constant index"));
        assert!(bad(vec![0, 0, 0], vec![7]).contains("form"));
        assert!(bad(vec![0, 0, 0, 40, 0, 65], vec![0]).contains("powi"));
        assert!(FusedElementwise::decode(&Op::Relu).is_err());
    }
}
