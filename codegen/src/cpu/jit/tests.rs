//! JIT kernels against the scalar reference (`interp.rs`) and against f64 math, on random data
//! and sweeps over the f32 bit patterns. Every instruction is covered; each transcendental
//! function has an asserted error bound in ulps of the correctly rounded result.

use super::interp::{binary, unary, unary_f64};
use super::*;
use ortho_ir::fused::{Binary, FusedError, Instr, Unary};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [lo, hi).
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    fn bits(&mut self) -> f32 {
        f32::from_bits((self.next() >> 32) as u32)
    }
}

const SPECIALS: [f32; 14] = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::NAN,
    f32::MIN_POSITIVE,
    -f32::MIN_POSITIVE,
    1e-45,
    -1e-45,
    f32::MAX,
    f32::MIN,
    0.5,
];

/// Error of `got` against the exact value `exact`, in ulps of the f32 nearest to `exact`
/// (0 when both are the same NaN-ness or the same infinity).
fn ulp_error(got: f32, exact: f64) -> f64 {
    if exact.is_nan() || got.is_nan() {
        return if exact.is_nan() && got.is_nan() {
            0.0
        } else {
            f64::INFINITY
        };
    }
    let r = exact as f32;
    if r.is_infinite() || got.is_infinite() {
        return if got == r { 0.0 } else { f64::INFINITY };
    }
    let a = r.abs();
    let next = f32::from_bits(a.to_bits() + 1);
    let ulp = if next.is_finite() {
        f64::from(next) - f64::from(a)
    } else {
        2f64.powi(104)
    };
    (f64::from(got) - exact).abs() / ulp
}

fn unary_program(u: Unary) -> FusedElementwise {
    FusedElementwise {
        program: vec![Instr::Input(0), Instr::Unary(u, 0)],
        forms: vec![Form::Full],
    }
}

/// Sample inputs for a unary op: specials, a sweep over the bit patterns, and uniform values in
/// the range where the function is interesting.
fn unary_inputs(u: Unary, rng: &mut Rng) -> Vec<f32> {
    let mut v: Vec<f32> = SPECIALS.to_vec();
    // Every 2039th bit pattern: all exponents, both signs, NaNs and infinities included.
    v.extend((0..=u32::MAX / 2039).map(|i| f32::from_bits(i * 2039)));
    let (lo, hi) = match u {
        Unary::Exp => (-110.0, 95.0),
        Unary::Log => (0.0, 4.0),
        Unary::Tanh => (-10.0, 10.0),
        Unary::Sigmoid => (-110.0, 40.0),
        Unary::Erf => (-5.0, 5.0),
        _ => (-100.0, 100.0),
    };
    v.extend((0..200_000).map(|_| rng.uniform(lo, hi)));
    // Near the branch points of the piecewise approximations.
    for c in [0.625f32, 1.0, 4.0, 88.72, -87.33, -103.97, 0.70710677] {
        let b = c.to_bits();
        v.extend((0..64).flat_map(|d| {
            [
                f32::from_bits(b - d),
                f32::from_bits(b + d),
                -f32::from_bits(b + d),
            ]
        }));
    }
    v
}

/// Max ulp error of the JIT for `u` on its sample inputs; the element count is not a multiple
/// of 4, so the tail runs too.
fn max_ulps(u: Unary) -> (f64, f32) {
    max_ulps_with(u, &mut compile::Options::default())
}

fn max_ulps_with(u: Unary, o: &mut compile::Options) -> (f64, f32) {
    // The op's index among the fusible ops seeds its inputs (its discriminant when the fused
    // program had an enum of its own, so the sampled inputs are those measured before).
    let index = Unary::FUSIBLE.iter().position(|&x| x == u).unwrap_or(0);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ index as u64);
    let mut x = unary_inputs(u, &mut rng);
    if x.len().is_multiple_of(4) {
        x.push(0.25);
    }
    let k = JitKernel::compile_with(&unary_program(u), o).expect("compile");
    let mut out = vec![0f32; x.len()];
    k.run_with(&[&x], &mut out, x.len(), x.len(), 1)
        .expect("run");
    let mut worst = (0.0f64, 0.0f32);
    for (&xi, &yi) in x.iter().zip(&out) {
        let e = ulp_error(yi, unary_f64(u, xi));
        if e > worst.0 {
            worst = (e, xi);
        }
    }
    worst
}

#[test]
fn unary_ops_within_their_ulp_bounds() {
    // Exact ops must be correctly rounded (0.5 ulp); the approximations stay within these
    // bounds (measured on this machine: exp 0.98, log 0.77, tanh 1.27, sigmoid 2.04, erf 0.91;
    // the table prints with --no-capture).
    let bounds = [
        (Unary::Neg, 0.5),
        (Unary::Abs, 0.5),
        (Unary::Sqrt, 0.5),
        (Unary::Reciprocal, 0.5),
        (Unary::Relu, 0.5),
        (Unary::Exp, 1.25),
        (Unary::Log, 1.0),
        (Unary::Tanh, 1.5),
        (Unary::Sigmoid, 2.5),
        (Unary::Erf, 1.25),
    ];
    let mut failures = Vec::new();
    for (u, bound) in bounds {
        let (e, at) = max_ulps(u);
        println!("{:<11} max error {e:.3} ulp (at x = {at:e})", u.name());
        if e > bound {
            failures.push(format!(
                "{}: {e:.3} ulp at x = {at:e} (bound {bound})",
                u.name()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn transcendentals_without_fma() {
    // Hosts without FMA get multiply-then-add (erf's bound is a little wider).
    let mut failures = Vec::new();
    for (u, bound) in [
        (Unary::Exp, 1.25),
        (Unary::Log, 1.0),
        (Unary::Tanh, 1.5),
        (Unary::Sigmoid, 2.5),
        (Unary::Erf, 1.5),
    ] {
        let (e, at) = max_ulps_with(
            u,
            &mut compile::Options {
                no_fma: true,
                vcode: None,
            },
        );
        println!(
            "{:<11} max error {e:.3} ulp without FMA (at x = {at:e})",
            u.name()
        );
        if e > bound {
            failures.push(format!(
                "{}: {e:.3} ulp at x = {at:e} (bound {bound})",
                u.name()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `cargo nextest run --release -E 'test(print_vcode)' --run-ignored all --no-capture` prints
/// the machine code of the SiLU gate and of the RMSNorm tail.
#[test]
#[ignore]
fn print_vcode() {
    use Binary as B;
    use Instr as I;
    for f in [
        FusedElementwise {
            program: vec![
                I::Input(0),
                I::Unary(Unary::Sigmoid, 0),
                I::Binary(B::Mul, 0, 1),
                I::Input(1),
                I::Binary(B::Mul, 2, 3),
            ],
            forms: vec![Form::Full, Form::Full],
        },
        FusedElementwise {
            program: vec![
                I::Input(0),
                I::Const(1e-5),
                I::Binary(B::Add, 0, 1),
                I::Unary(Unary::Sqrt, 2),
                I::Input(1),
                I::Binary(B::Div, 4, 3),
                I::Input(2),
                I::Binary(B::Mul, 5, 6),
            ],
            forms: vec![Form::PerRow, Form::Full, Form::LastAxis],
        },
    ] {
        let mut o = compile::Options {
            no_fma: false,
            vcode: Some(String::new()),
        };
        JitKernel::compile_with(&f, &mut o).expect("compile");
        println!("{f}\n{}", o.vcode.unwrap_or_default());
    }
}

#[test]
fn binary_ops_are_exact() {
    let mut rng = Rng(42);
    let n = 100_003;
    let mut a: Vec<f32> = (0..n).map(|_| rng.uniform(-1e3, 1e3)).collect();
    let mut b: Vec<f32> = (0..n).map(|_| rng.bits()).collect();
    // Signed zeros, NaNs and infinities on both sides.
    for (i, s) in SPECIALS.iter().enumerate() {
        for (j, t) in SPECIALS.iter().enumerate() {
            a[i * SPECIALS.len() + j] = *s;
            b[i * SPECIALS.len() + j] = *t;
        }
    }
    for op in Binary::ALL {
        let f = FusedElementwise {
            program: vec![Instr::Input(0), Instr::Input(1), Instr::Binary(op, 0, 1)],
            forms: vec![Form::Full, Form::Full],
        };
        let k = JitKernel::compile(&f).expect("compile");
        let mut out = vec![0f32; n];
        k.run_with(&[&a, &b], &mut out, n, n, 1).expect("run");
        for i in 0..n {
            let want = binary(op, a[i], b[i]);
            let ok = (want.is_nan() && out[i].is_nan()) || want.to_bits() == out[i].to_bits();
            assert!(
                ok,
                "{} {:e} {:e}: got {:e}, want {:e}",
                op.name(),
                a[i],
                b[i],
                out[i],
                want
            );
        }
    }
}

#[test]
fn powers() {
    let mut rng = Rng(7);
    let mut x: Vec<f32> = (0..50_001).map(|_| rng.uniform(-8.0, 8.0)).collect();
    x[..SPECIALS.len()].copy_from_slice(&SPECIALS);
    for n in [-4, -3, -2, -1, 0, 1, 2, 3, 4, 7] {
        let f = FusedElementwise {
            program: vec![Instr::Input(0), Instr::Powi(0, n)],
            forms: vec![Form::Full],
        };
        let k = JitKernel::compile(&f).expect("compile");
        let mut out = vec![0f32; x.len()];
        k.run_with(&[&x], &mut out, x.len(), x.len(), 1)
            .expect("run");
        // One rounding per multiplication: at most about (number of multiplications) ulps.
        let bound = if n.abs() <= 1 {
            0.5
        } else {
            1.0 + f64::from(n.unsigned_abs())
        };
        for (&xi, &yi) in x.iter().zip(&out) {
            let exact = f64::from(xi).powi(n);
            assert!(
                ulp_error(yi, exact) <= bound,
                "powi {n}: x = {xi:e} gives {yi:e}, exact {exact:e}"
            );
        }
        if n == 2 {
            assert!(
                x.iter()
                    .zip(&out)
                    .all(|(a, b)| (a * a).to_bits() == b.to_bits() || b.is_nan()),
                "x^2 is x*x"
            );
        }
    }
    for e in [0.5f32, -0.5, 1.5, 2.2, -3.7] {
        let f = FusedElementwise {
            program: vec![Instr::Input(0), Instr::Powf(0, e)],
            forms: vec![Form::Full],
        };
        let k = JitKernel::compile(&f).expect("compile");
        let mut out = vec![0f32; x.len()];
        k.run_with(&[&x], &mut out, x.len(), x.len(), 1)
            .expect("run");
        for (&xi, &yi) in x.iter().zip(&out) {
            let want = xi.powf(e);
            assert!(
                want.to_bits() == yi.to_bits() || (want.is_nan() && yi.is_nan()),
                "powf {e}: {xi:e}"
            );
        }
    }
}

/// A program that reads every form and uses every instruction kind.
fn mixed_program() -> FusedElementwise {
    use Binary as B;
    use Instr as I;
    use Unary as U;
    FusedElementwise {
        program: vec![
            I::Input(0),                // %0 full x
            I::Input(1),                // %1 per-row mean
            I::Const(1e-5),             // %2
            I::Binary(B::Add, 1, 2),    // %3
            I::Unary(U::Sqrt, 3),       // %4
            I::Binary(B::Div, 0, 4),    // %5 x / sqrt(mean + eps)
            I::Input(2),                // %6 last-axis gain
            I::Binary(B::Mul, 5, 6),    // %7
            I::Unary(U::Sigmoid, 7),    // %8
            I::Binary(B::Mul, 7, 8),    // %9 silu
            I::Input(3),                // %10 scalar
            I::Binary(B::Sub, 9, 10),   // %11
            I::Unary(U::Tanh, 11),      // %12
            I::Unary(U::Erf, 12),       // %13
            I::Unary(U::Exp, 13),       // %14
            I::Unary(U::Log, 14),       // %15 (= %13 up to rounding)
            I::Unary(U::Abs, 15),       // %16
            I::Unary(U::Neg, 16),       // %17
            I::Unary(U::Relu, 17),      // %18 = 0
            I::Binary(B::Max, 18, 15),  // %19
            I::Binary(B::Min, 19, 6),   // %20
            I::Powi(20, 2),             // %21
            I::Unary(U::Reciprocal, 4), // %22
            I::Binary(B::Add, 21, 22),  // %23
            I::Powf(23, 0.75),          // %24
        ],
        forms: vec![Form::Full, Form::PerRow, Form::LastAxis, Form::Scalar],
    }
}

fn mixed_inputs(rows: usize, row_len: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng(seed);
    vec![
        (0..rows * row_len)
            .map(|_| rng.uniform(-3.0, 3.0))
            .collect(),
        (0..rows).map(|_| rng.uniform(0.1, 2.0)).collect(),
        (0..row_len).map(|_| rng.uniform(0.5, 1.5)).collect(),
        vec![rng.uniform(-0.5, 0.5)],
    ]
}

/// Relative closeness with an absolute floor, for composite programs where rounding
/// differences of a few ulps pass through several instructions.
fn close(a: f32, b: f32, rtol: f32, atol: f32) -> bool {
    (a.is_nan() && b.is_nan()) || (a - b).abs() <= atol + rtol * b.abs()
}

#[test]
fn every_form_on_every_row_length() {
    let f = mixed_program();
    let k = JitKernel::compile(&f).expect("compile");
    for (rows, row_len) in [
        (1, 1),
        (3, 1),
        (5, 3),
        (4, 4),
        (2, 7),
        (9, 13),
        (3, 64),
        (2, 67),
        (1, 1000),
        (17, 576),
    ] {
        let data = mixed_inputs(rows, row_len, (rows * 1000 + row_len) as u64);
        let ins: Vec<&[f32]> = data.iter().map(Vec::as_slice).collect();
        let n = rows * row_len;
        let mut got = vec![0f32; n];
        let mut want = vec![0f32; n];
        k.run_with(&ins, &mut got, n, row_len, 1).expect("run");
        interpret(&f, &ins, &mut want, n, row_len).expect("interpret");
        for i in 0..n {
            assert!(
                close(got[i], want[i], 1e-5, 1e-6),
                "{rows}x{row_len} element {i}: jit {} vs reference {}",
                got[i],
                want[i]
            );
        }
    }
}

#[test]
fn threads_give_the_same_bits() {
    let f = mixed_program();
    let k = JitKernel::compile(&f).expect("compile");
    let (rows, row_len) = (301, 577);
    let data = mixed_inputs(rows, row_len, 5);
    let ins: Vec<&[f32]> = data.iter().map(Vec::as_slice).collect();
    let n = rows * row_len;
    let mut one = vec![0f32; n];
    k.run_with(&ins, &mut one, n, row_len, 1).expect("run");
    for t in [2, 3, 8, 1000] {
        let mut many = vec![0f32; n];
        k.run_with(&ins, &mut many, n, row_len, t).expect("run");
        assert!(
            one.iter()
                .zip(&many)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{t} threads differ"
        );
    }
    // A flat program (full and scalar operands only) splits by element ranges.
    let flat = FusedElementwise {
        program: vec![
            Instr::Input(0),
            Instr::Input(1),
            Instr::Binary(Binary::Mul, 0, 1),
            Instr::Unary(Unary::Exp, 2),
        ],
        forms: vec![Form::Full, Form::Scalar],
    };
    let k = JitKernel::compile(&flat).expect("compile");
    let n = 200_003;
    let x: Vec<f32> = (0..n).map(|i| (i as f32 * 1e-3).sin()).collect();
    let s = [0.7f32];
    let mut one = vec![0f32; n];
    let mut two = vec![0f32; n];
    k.run_with(&[&x, &s], &mut one, n, 1, 1).expect("run");
    k.run(&[&x, &s], &mut two, n, 1).expect("run");
    assert!(one
        .iter()
        .zip(&two)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    let mut want = vec![0f32; n];
    interpret(&flat, &[&x, &s], &mut want, n, 1).expect("interpret");
    assert!(one
        .iter()
        .zip(&want)
        .all(|(a, b)| ulp_error(*a, f64::from(*b)) <= 2.0));
}

#[test]
fn bad_operands_are_errors_not_crashes() {
    let f = mixed_program();
    let k = JitKernel::compile(&f).expect("compile");
    let data = mixed_inputs(4, 8, 1);
    let ins: Vec<&[f32]> = data.iter().map(Vec::as_slice).collect();
    let mut out = vec![0f32; 32];
    assert!(k.run(&ins, &mut out, 32, 8).is_ok());
    assert!(matches!(
        k.run(&ins[..3], &mut out, 32, 8),
        Err(JitError::Shape(_))
    ));
    assert!(
        matches!(k.run(&ins, &mut out, 32, 6), Err(JitError::Shape(_))),
        "32 is not whole rows of 6"
    );
    assert!(matches!(
        k.run(&ins, &mut out[..31], 32, 8),
        Err(JitError::Shape(_))
    ));
    let short = &data[2][..7];
    let bad = [ins[0], ins[1], short, ins[3]];
    assert_eq!(
        k.run(&bad, &mut out, 32, 8),
        Err(JitError::Operand {
            index: 2,
            form: "last-axis",
            expected: 8,
            got: 7
        })
    );
    let two = [1f32, 2.0];
    let bad = [ins[0], ins[1], ins[2], &two[..]];
    assert!(matches!(
        k.run(&bad, &mut out, 32, 8),
        Err(JitError::Operand { index: 3, .. })
    ));
    // Nothing to do is fine.
    let empty: [&[f32]; 4] = [&[], &[], &[], &[]];
    assert!(k.run(&empty, &mut [], 0, 0).is_ok());
    // Malformed programs are refused at compile time.
    let bad = FusedElementwise {
        program: vec![Instr::Unary(Unary::Exp, 0)],
        forms: vec![],
    };
    assert!(matches!(
        JitKernel::compile(&bad),
        Err(JitError::Program(FusedError::UndefinedRegister {
            reg: 0,
            ..
        }))
    ));
    assert!(matches!(
        interpret(&bad, &[], &mut [], 0, 1),
        Err(JitError::Program(FusedError::UndefinedRegister {
            reg: 0,
            ..
        }))
    ));
    // The engine's unary ops that have no fused instruction are refused, not miscompiled.
    let sin = FusedElementwise {
        program: vec![Instr::Input(0), Instr::Unary(Unary::Sin, 0)],
        forms: vec![Form::Full],
    };
    assert!(matches!(
        JitKernel::compile(&sin),
        Err(JitError::Program(FusedError::NotFusible { op: "sin", .. }))
    ));
}

#[test]
fn cache_compiles_each_program_once() {
    let cache = KernelCache::new();
    let a = cache.get_or_compile(&mixed_program()).expect("compile");
    let b = cache.get_or_compile(&mixed_program()).expect("compile");
    assert!(Arc::ptr_eq(&a, &b));
    let mut other = mixed_program();
    other.program[2] = Instr::Const(1e-6);
    let c = cache.get_or_compile(&other).expect("compile");
    assert!(!Arc::ptr_eq(&a, &c));
    assert_eq!(cache.len(), 2);
    let g1 = JitKernel::cached(&other).expect("compile");
    let g2 = JitKernel::cached(&other).expect("compile");
    assert!(Arc::ptr_eq(&g1, &g2));
}

#[test]
fn interpreter_matches_f64_rounding() {
    // The reference itself: each instruction is the f32 rounding of the f64 result.
    assert_eq!(unary(Unary::Exp, 1.0), std::f64::consts::E as f32);
    assert_eq!(unary(Unary::Sigmoid, -200.0), 0.0);
    assert_eq!(unary(Unary::Relu, -0.0), -0.0);
    assert!(unary(Unary::Relu, f32::NAN).is_nan());
    assert_eq!(binary(Binary::Max, -0.0, 0.0).to_bits(), 0.0f32.to_bits());
    assert_eq!(
        binary(Binary::Min, -0.0, 0.0).to_bits(),
        (-0.0f32).to_bits()
    );
    assert!(binary(Binary::Max, f32::NAN, 1.0).is_nan());
}
