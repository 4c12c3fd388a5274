//! The typed syntax of `ortho` ops in `.oir`:
//!
//! ```text
//! %y = ortho.FusedElementwise(%x, %g) {program = [r0 = input(0), r1 = input(1), r2 = mul(r0, r1)], forms = [full, last-axis]} : …
//! ```
//!
//! Registers are written `rN` (not `%N`, which would read as a value of the graph), each
//! instruction is labelled with the register it defines, and forms are named as in messages
//! (`full`, `scalar`, `last-axis`, `per-row`). A constant is a float, or its bits in hex
//! (`0x7fc00001`) for a NaN with a payload. The program is validated here, so an invalid one is
//! a parse error that names the node and points at the offending instruction.

use super::{PResult, ParseErrorKind, Parser};
use crate::fused::{Binary, Form, FusedElementwise, FusedError, Instr, Reg, Unary};
use crate::op::Op;
use crate::op_ortho::{OrthoOp, DOMAIN};

impl Parser<'_> {
    /// Whether the text at the cursor is `{program = [` followed by a register label or `]`,
    /// the typed form (the generic form has integers there). Consumes nothing.
    pub(super) fn at_typed_ortho(&mut self) -> bool {
        let saved = self.pos;
        let typed = self.eat("{")
            && self.eat_kw("program")
            && self.eat("=")
            && self.eat("[")
            && (self.peek("r") || self.peek("]"));
        self.pos = saved;
        typed
    }

    /// A register operand `rN`.
    fn register(&mut self) -> PResult<Reg> {
        self.ws();
        let at = self.pos;
        if !self.rest().starts_with('r') {
            return self.err("expected a register (rN)");
        }
        self.pos += 1;
        let r = self.rest();
        let n = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        r[..n]
            .parse::<Reg>()
            .map(|v| {
                self.pos += n;
                v
            })
            .map_err(|_| self.err_at(at, "expected a register (rN)"))
    }

    /// An f32 constant: a number, or `0x…` bits.
    fn f32_or_bits(&mut self) -> PResult<f32> {
        self.ws();
        if let Some(h) = self.rest().strip_prefix("0x") {
            let n = h.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(h.len());
            let at = self.pos;
            let bits = u32::from_str_radix(&h[..n], 16)
                .map_err(|_| self.err_at(at, "expected 8 hex digits of f32 bits"))?;
            self.pos += 2 + n;
            return Ok(f32::from_bits(bits));
        }
        self.float32()
    }

    /// An integer that fits `T`.
    fn int_as<T: TryFrom<i64>>(&mut self, what: &str) -> PResult<T> {
        self.ws();
        let at = self.pos;
        let v = self.int()?;
        T::try_from(v).map_err(|_| self.err_at(at, format!("{what} {v} is out of range")))
    }

    /// One instruction after its label: `name(args)`.
    fn instr(&mut self) -> PResult<Instr> {
        self.ws();
        let at = self.pos;
        let name = self.word()?;
        self.expect("(")?;
        let ins = match name.as_str() {
            "input" => Instr::Input(self.int_as("operand index")?),
            "const" => Instr::Const(self.f32_or_bits()?),
            "powi" => {
                let r = self.register()?;
                self.expect(",")?;
                Instr::Powi(r, self.int_as("powi exponent")?)
            }
            "powf" => {
                let r = self.register()?;
                self.expect(",")?;
                Instr::Powf(r, self.f32_or_bits()?)
            }
            n => {
                if let Some(u) = Unary::fusible_named(n) {
                    Instr::Unary(u, self.register()?)
                } else if let Some(b) = Binary::named(n) {
                    let x = self.register()?;
                    self.expect(",")?;
                    Instr::Binary(b, x, self.register()?)
                } else {
                    let names: Vec<&str> = ["input", "const"]
                        .into_iter()
                        .chain(Unary::FUSIBLE.iter().map(|u| u.name()))
                        .chain(Binary::ALL.iter().map(|b| b.name()))
                        .chain(["powi", "powf"])
                        .collect();
                    return Err(self.err_at(
                        at,
                        format!(
                            "unknown instruction '{n}' (expected one of {})",
                            names.join(", ")
                        ),
                    ));
                }
            }
        };
        self.expect(")")?;
        Ok(ins)
    }

    /// The typed attribute block of an `ortho` op, validated; `results` are the node's result
    /// names, for messages.
    pub(super) fn ortho_op(&mut self, op_type: &str, results: &[(String, usize)]) -> PResult<Op> {
        self.ws();
        let block_at = self.pos;
        let node = results.first().map(|(n, _)| n.clone()).unwrap_or_default();
        let invalid = |p: &Self, at: usize, error: FusedError| {
            p.err_kind(
                at,
                format!("{DOMAIN}.{op_type} producing '%{node}': {error}"),
                ParseErrorKind::InvalidOrthoOp {
                    node: node.clone(),
                    error,
                },
            )
        };
        if op_type != crate::fused::OP_TYPE {
            return Err(self.err_at(
                block_at,
                format!("'{DOMAIN}.{op_type}' has no typed syntax (only {DOMAIN}.FusedElementwise has a program)"),
            ));
        }
        self.expect("{")?;
        if !self.eat_kw("program") {
            return self.err("expected 'program'");
        }
        self.expect("=")?;
        self.expect("[")?;
        let mut program = Vec::new();
        let mut starts = Vec::new();
        while !self.eat("]") {
            self.ws();
            let at = self.pos;
            let label = self.register()?;
            if label as usize != program.len() {
                return Err(self.err_at(
                    at,
                    format!(
                        "expected register r{} here (instruction i defines ri), found r{label}",
                        program.len()
                    ),
                ));
            }
            self.expect("=")?;
            program.push(self.instr()?);
            starts.push(at);
            if !self.eat(",") {
                self.expect("]")?;
                break;
            }
        }
        self.expect(",")?;
        if !self.eat_kw("forms") {
            return self.err("expected 'forms'");
        }
        self.expect("=")?;
        self.expect("[")?;
        let mut forms = Vec::new();
        while !self.eat("]") {
            self.ws();
            let at = self.pos;
            let r = self.rest();
            let n = r
                .find(|c: char| !(c.is_ascii_lowercase() || c == '-'))
                .unwrap_or(r.len());
            let form = Form::named(&r[..n]).ok_or_else(|| {
                self.err_at(
                    at,
                    format!(
                        "unknown operand form '{}' (expected full, scalar, last-axis or per-row)",
                        &r[..n]
                    ),
                )
            })?;
            self.pos += n;
            forms.push(form);
            if !self.eat(",") {
                self.expect("]")?;
                break;
            }
        }
        self.expect("}")?;
        let f = FusedElementwise { program, forms };
        if let Err(e) = f.validate() {
            // Point at the instruction the error is about, or at the block.
            let at = match e {
                FusedError::UndefinedRegister { index, .. }
                | FusedError::OperandIndex { index, .. }
                | FusedError::PowiExponent { index, .. }
                | FusedError::NotFusible { index, .. } => {
                    starts.get(index).copied().unwrap_or(block_at)
                }
                _ => block_at,
            };
            return Err(invalid(self, at, e));
        }
        Ok(Op::Ortho(OrthoOp::FusedElementwise(f)))
    }
}

#[cfg(test)]
mod tests {
    use crate::fused::{FusedElementwise, FusedError};
    use crate::text::{parse_module, print_module, ParseErrorKind, PrintOptions};

    const FUSED: &str = r#"module {ir_version = 8, opset_import = ["" = 17, "ortho" = 1], producer_name = "", producer_version = "", domain = "", model_version = 0, doc = "", metadata_props = []}
graph @g(%x: tensor<2x3xf32>, %v: tensor<3xf32>) -> (%y) {
  %y = ortho.FusedElementwise(%x, %v) {program = [r0 = input(0), r1 = input(1), r2 = const(nan), r3 = const(0xffc00001), r4 = powf(r0, -0.0), r5 = mul(r4, r1), r6 = max(r5, r2), r7 = min(r6, r3)], forms = [full, last-axis]} : tensor<2x3xf32>
}
"#;

    #[test]
    fn typed_syntax_round_trips() {
        let m = parse_module(FUSED).expect("parse");
        let g = m.main_graph();
        let f = g
            .node_ids()
            .into_iter()
            .find_map(|n| FusedElementwise::from_op(&g.node(n).op).cloned())
            .expect("a typed fused node");
        assert_eq!(f.program.len(), 8);
        let printed = print_module(&m, PrintOptions::default());
        // `nan` reads as the canonical NaN, which prints as `NaN`; everything else is as written.
        assert_eq!(printed, FUSED.replace("const(nan)", "const(NaN)"));
        let again = print_module(
            &parse_module(&printed).expect("reparse"),
            PrintOptions::default(),
        );
        assert_eq!(again, printed);
    }

    #[test]
    fn invalid_programs_name_the_node() {
        let bad = FUSED.replace("r5 = mul(r4, r1)", "r5 = mul(r6, r1)");
        let e = parse_module(&bad).expect_err("forward reference");
        assert_eq!((e.line, e.col), (3, 143));
        assert!(matches!(
            &e.kind,
            ParseErrorKind::InvalidOrthoOp {
                node,
                error: FusedError::UndefinedRegister { index: 5, reg: 6, .. },
            } if node == "y"
        ));
        assert!(e
            .to_string()
            .starts_with("3:143: ortho.FusedElementwise producing '%y': instruction 5"));
        let e = parse_module(&FUSED.replace("mul(", "mull(")).expect_err("unknown instruction");
        assert_eq!(e.kind, ParseErrorKind::Syntax);
        assert!(e.message.starts_with("unknown instruction 'mull'"), "{e}");
    }
}
