//! The scalar reference: evaluates a fused program element by element, each instruction in f64
//! and rounded to f32, so every instruction's result is (nearly always) the correctly rounded
//! f32 of its exact value. Slow; for tests, and a fallback where no JIT is available.

use super::{check_operands, JitError};
use ortho_ir::fused::{Binary, Form, FusedElementwise, Instr, Unary};

/// Computes `out[i]` for `i < n` like [`JitKernel::run`](super::JitKernel::run), with the same
/// operand conventions and checks.
pub fn interpret(
    f: &FusedElementwise,
    inputs: &[&[f32]],
    out: &mut [f32],
    n: usize,
    row_len: usize,
) -> Result<(), JitError> {
    f.validate().map_err(JitError::Program)?;
    check_operands(f, inputs, out, n, row_len)?;
    let mut regs = vec![0f32; f.program.len()];
    for (i, o) in out.iter_mut().enumerate() {
        let (row, col) = (i / row_len, i % row_len);
        for (d, ins) in f.program.iter().enumerate() {
            regs[d] = match *ins {
                Instr::Input(k) => {
                    let k = k as usize;
                    let s = inputs[k];
                    match f.forms[k] {
                        Form::Full => s[i],
                        Form::Scalar => s[0],
                        Form::LastAxis => s[col],
                        Form::PerRow => s[row],
                    }
                }
                Instr::Const(c) => c,
                Instr::Unary(u, r) => unary(u, regs[r as usize]),
                Instr::Binary(op, a, b) => binary(op, regs[a as usize], regs[b as usize]),
                Instr::Powi(r, e) => (f64::from(regs[r as usize])).powi(e) as f32,
                Instr::Powf(r, e) => (f64::from(regs[r as usize])).powf(f64::from(e)) as f32,
            };
        }
        *o = regs[regs.len() - 1];
    }
    Ok(())
}

/// One unary instruction on one element.
pub(super) fn unary(u: Unary, x: f32) -> f32 {
    unary_f64(u, x) as f32
}

/// The exact (f64) value of a unary instruction, before rounding to f32.
pub(super) fn unary_f64(u: Unary, x: f32) -> f64 {
    let d = f64::from(x);
    match u {
        Unary::Neg => -d,
        Unary::Abs => d.abs(),
        Unary::Sqrt => d.sqrt(),
        Unary::Reciprocal => 1.0 / d,
        Unary::Exp => d.exp(),
        Unary::Log => d.ln(),
        Unary::Tanh => d.tanh(),
        Unary::Sigmoid => {
            // The same split as the kernel, exact in f64: no overflow of e^-x for x << 0.
            let e = (-d.abs()).exp();
            if d < 0.0 {
                e / (1.0 + e)
            } else {
                1.0 / (1.0 + e)
            }
        }
        Unary::Relu => {
            if d < 0.0 {
                0.0
            } else {
                d
            }
        }
        Unary::Erf => libm::erf(d),
        // `FusedElementwise::validate` refuses every other op before a program gets here.
        _ => f64::NAN,
    }
}

/// One binary instruction on one element. `max`/`min` propagate NaN and order -0 below +0.
pub(super) fn binary(op: Binary, a: f32, b: f32) -> f32 {
    let (x, y) = (f64::from(a), f64::from(b));
    let r = match op {
        Binary::Add => x + y,
        Binary::Sub => x - y,
        Binary::Mul => x * y,
        Binary::Div => x / y,
        Binary::Max | Binary::Min if x.is_nan() || y.is_nan() => f64::NAN,
        Binary::Max if x == y => {
            if x.is_sign_negative() {
                y
            } else {
                x
            }
        }
        Binary::Min if x == y => {
            if x.is_sign_negative() {
                x
            } else {
                y
            }
        }
        Binary::Max => x.max(y),
        Binary::Min => x.min(y),
    };
    r as f32
}
