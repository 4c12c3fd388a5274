//! f32x4 math in CLIF: splats, fused multiply-add, and the transcendental functions.
//!
//! Each function takes and returns an `F32X4` value and handles the IEEE special cases (NaN
//! propagates, infinities and zeros map as libm maps them). Polynomial coefficients come from
//! `fit_coefficients.py`; accuracy against f64 references is asserted in `tests.rs`.

use super::JitError;
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::types::{F32X4, I32X4};
use cranelift_codegen::ir::{Endianness, FuncRef, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;

/// exp(r) = 1 + r + r^2 P(r), |r| <= ln2/2.
const EXP_P: [f32; 5] = [0.49999994, 0.16666521, 0.04166825, 0.00836867, 0.0013822236];
/// log(1+m) = m - m^2/2 + m^3 P(m), sqrt(1/2)-1 <= m <= sqrt(2)-1.
const LOG_P: [f32; 9] = [
    0.33333313,
    -0.2500001,
    0.20002073,
    -0.16668001,
    0.14220333,
    -0.12405906,
    0.118833564,
    -0.11672326,
    0.06752706,
];
/// tanh(x) = x + x^3 P(x^2), |x| < 0.625.
const TANH_P: [f32; 5] = [
    -0.3333328,
    0.13331407,
    -0.053736717,
    0.020629002,
    -0.005693382,
];
/// erf(x) = x + x P(x^2), |x| < 1.
const ERF_SMALL_P: [f32; 8] = [
    0.12837917,
    -0.3761263,
    0.112836316,
    -0.026856491,
    0.0051957737,
    -0.0008117134,
    8.618771e-05,
    -2.1558778e-06,
];
/// erf(t) = 1 - exp(-t^2 + S(t - 2.5)), 1 <= t <= 4.
const ERF_LARGE_S: [f32; 10] = [
    -1.5568153,
    -0.35268065,
    0.05610648,
    -0.010858725,
    0.0021626146,
    -0.0004239096,
    7.816847e-05,
    -8.21921e-06,
    5.1879642e-06,
    7.826031e-07,
];

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split so that `n * LN2_HI` is exact for |n| < 2^15 (Cody–Waite reduction).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding 1.5 * 2^23 rounds an f32 of magnitude < 2^22 to an integer, readable from the bits.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// What the emitters need to know about the host and the function.
pub(super) struct Math {
    /// Emit `fma` (vfmadd) only when the host has it; otherwise multiply and add.
    pub has_fma: bool,
    /// `powf`, imported into this function, when the program needs it.
    pub powf: Option<FuncRef>,
}

fn le() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}

impl Math {
    /// An f32x4 with `c` in every lane (a constant-pool load, foldable into its user).
    pub fn splat(&self, b: &mut FunctionBuilder, c: f32) -> Value {
        let bytes: Vec<u8> = c.to_le_bytes().repeat(4);
        let h = b.func.dfg.constants.insert(bytes.into());
        b.ins().vconst(F32X4, h)
    }

    fn splat_i(&self, b: &mut FunctionBuilder, c: i32) -> Value {
        let bytes: Vec<u8> = c.to_le_bytes().repeat(4);
        let h = b.func.dfg.constants.insert(bytes.into());
        b.ins().vconst(I32X4, h)
    }

    fn as_int(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        b.ins().bitcast(I32X4, le(), x)
    }

    fn as_float(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        b.ins().bitcast(F32X4, le(), x)
    }

    /// `a * b + c`, fused when the host has FMA.
    fn fma(&self, b: &mut FunctionBuilder, x: Value, y: Value, z: Value) -> Value {
        if self.has_fma {
            b.ins().fma(x, y, z)
        } else {
            let p = b.ins().fmul(x, y);
            b.ins().fadd(p, z)
        }
    }

    /// Horner evaluation of `c[0] + c[1] x + … + c[k] x^k`.
    fn poly(&self, b: &mut FunctionBuilder, x: Value, c: &[f32]) -> Value {
        let Some((&last, rest)) = c.split_last() else {
            return self.splat(b, 0.0);
        };
        let mut acc = self.splat(b, last);
        for &k in rest.iter().rev() {
            let kv = self.splat(b, k);
            acc = self.fma(b, acc, x, kv);
        }
        acc
    }

    /// Lanes where `cond` holds take `x`, the others `y` (`cond` is an fcmp result).
    fn select(&self, b: &mut FunctionBuilder, cond: Value, x: Value, y: Value) -> Value {
        let m = self.as_float(b, cond);
        b.ins().bitselect(m, x, y)
    }

    /// `x` where it is NaN, else `v`: restores NaN propagation after integer tricks.
    fn keep_nan(&self, b: &mut FunctionBuilder, x: Value, v: Value) -> Value {
        let nan = b.ins().fcmp(FloatCC::Unordered, x, x);
        self.select(b, nan, x, v)
    }

    /// `|v|` with the sign of `s`.
    fn copysign(&self, b: &mut FunctionBuilder, v: Value, s: Value) -> Value {
        let sign_mask = self.splat_i(b, i32::MIN);
        let si = self.as_int(b, s);
        let sign = b.ins().band(si, sign_mask);
        let av = b.ins().fabs(v);
        let vi = self.as_int(b, av);
        let r = b.ins().bor(vi, sign);
        self.as_float(b, r)
    }

    /// `x < 0 ? 0 : x` (NaN stays NaN; one `maxps`-like select).
    pub fn relu(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        let zero = self.splat(b, 0.0);
        let neg = b.ins().fcmp(FloatCC::LessThan, x, zero);
        self.select(b, neg, zero, x)
    }

    /// e^x within about 1 ulp: x = n ln2 + r, e^r by a degree-6 polynomial, 2^n applied in two
    /// halves so that results in the subnormal range and overflow to infinity come out right.
    pub fn exp(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        let v = self.exp_core(b, x, true);
        self.keep_nan(b, x, v)
    }

    /// e^x without NaN propagation (a NaN lane gives garbage), for callers that restore NaNs
    /// themselves; `upper` clamps large arguments (unneeded when x <= 0 is known).
    fn exp_core(&self, b: &mut FunctionBuilder, x: Value, upper: bool) -> Value {
        // Beyond these bounds the result is 0 or infinity anyway; clamping keeps n in range.
        let lo = self.splat(b, -104.0);
        let below = b.ins().fcmp(FloatCC::LessThan, x, lo);
        let mut xc = self.select(b, below, lo, x);
        if upper {
            let hi = self.splat(b, 88.8);
            let above = b.ins().fcmp(FloatCC::GreaterThan, xc, hi);
            xc = self.select(b, above, hi, xc);
        }

        let log2e = self.splat(b, LOG2E);
        let magic = self.splat(b, ROUND_MAGIC);
        let t = self.fma(b, xc, log2e, magic);
        let nf = b.ins().fsub(t, magic);
        let ti = self.as_int(b, t);
        let mi = self.as_int(b, magic);
        let n = b.ins().isub(ti, mi);

        let neg_hi = self.splat(b, -LN2_HI);
        let neg_lo = self.splat(b, -LN2_LO);
        let r = self.fma(b, nf, neg_hi, xc);
        let r = self.fma(b, nf, neg_lo, r);
        let r2 = b.ins().fmul(r, r);
        let p = self.poly(b, r, &EXP_P);
        let q = self.fma(b, p, r2, r);
        let one = self.splat(b, 1.0);
        let e = b.ins().fadd(q, one);

        // 2^n = 2^n1 * 2^n2 with n1 = n >> 1: both halves are normal numbers for n in [-150, 128].
        let n1 = b.ins().sshr_imm_u(n, 1);
        let n2 = b.ins().isub(n, n1);
        let bias = self.splat_i(b, 127);
        let e1 = b.ins().iadd(n1, bias);
        let e1 = b.ins().ishl_imm_u(e1, 23);
        let e2 = b.ins().iadd(n2, bias);
        let e2 = b.ins().ishl_imm_u(e2, 23);
        let s1 = self.as_float(b, e1);
        let s2 = self.as_float(b, e2);
        let v = b.ins().fmul(e, s1);
        b.ins().fmul(v, s2)
    }

    /// ln x within about 1 ulp: x = m 2^e with m in [sqrt(1/2), sqrt(2)), log(m) by a
    /// polynomial in m - 1. Subnormal inputs are scaled by 2^23 first; log 0 = -inf,
    /// log of a negative number is NaN, log inf = inf.
    pub fn log(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        let min_normal = self.splat(b, f32::MIN_POSITIVE);
        let tiny = b.ins().fcmp(FloatCC::LessThan, x, min_normal);
        let scale = self.splat(b, 8_388_608.0); // 2^23
        let xs_scaled = b.ins().fmul(x, scale);
        let xs = self.select(b, tiny, xs_scaled, x);
        let adj_int = self.splat_i(b, -23);
        let zero_i = self.splat_i(b, 0);
        let tiny_f = self.as_float(b, tiny);
        let adj_f = self.as_float(b, adj_int);
        let zero_f = self.as_float(b, zero_i);
        let adj = b.ins().bitselect(tiny_f, adj_f, zero_f);
        let adj = self.as_int(b, adj);

        let bits = self.as_int(b, xs);
        let ex = b.ins().sshr_imm_u(bits, 23);
        let c126 = self.splat_i(b, 126);
        let ex = b.ins().isub(ex, c126);
        let ex = b.ins().iadd(ex, adj);
        let mant_mask = self.splat_i(b, 0x007f_ffff);
        let half_bits = self.splat_i(b, 0x3f00_0000);
        let mb = b.ins().band(bits, mant_mask);
        let mb = b.ins().bor(mb, half_bits);
        let mf = self.as_float(b, mb); // in [0.5, 1)

        // m < sqrt(1/2): use 2m - 1 and e - 1 (the mask is -1 where true).
        let sqrthf = self.splat(b, std::f32::consts::FRAC_1_SQRT_2);
        let lt = b.ins().fcmp(FloatCC::LessThan, mf, sqrthf);
        let ex = b.ins().iadd(ex, lt);
        let one = self.splat(b, 1.0);
        let m1 = b.ins().fsub(mf, one);
        let ltf = self.as_float(b, lt);
        let extra = b.ins().band(ltf, mf);
        let m = b.ins().fadd(m1, extra);
        let ef = b.ins().fcvt_from_sint(F32X4, ex);

        let z = b.ins().fmul(m, m);
        let p = self.poly(b, m, &LOG_P);
        let mz = b.ins().fmul(m, z);
        let y = b.ins().fmul(p, mz);
        let lo = self.splat(b, LN2_LO);
        let y = self.fma(b, ef, lo, y);
        let mhalf = self.splat(b, -0.5);
        let y = self.fma(b, z, mhalf, y);
        let r = b.ins().fadd(m, y);
        let hi = self.splat(b, LN2_HI);
        let r = self.fma(b, ef, hi, r);

        let zero = self.splat(b, 0.0);
        let is_zero = b.ins().fcmp(FloatCC::Equal, x, zero);
        let ninf = self.splat(b, f32::NEG_INFINITY);
        let r = self.select(b, is_zero, ninf, r);
        let inf = self.splat(b, f32::INFINITY);
        let is_inf = b.ins().fcmp(FloatCC::Equal, x, inf);
        let r = self.select(b, is_inf, inf, r);
        let neg = b.ins().fcmp(FloatCC::LessThan, x, zero);
        let nan = self.splat(b, f32::NAN);
        let r = self.select(b, neg, nan, r);
        self.keep_nan(b, x, r)
    }

    /// tanh x: an odd polynomial below 0.625, else 1 - 2 / (e^{2|x|} + 1) with x's sign.
    pub fn tanh(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        let ax = b.ins().fabs(x);
        let x2 = b.ins().fmul(x, x);
        let p = self.poly(b, x2, &TANH_P);
        let x3 = b.ins().fmul(x2, x);
        let small = self.fma(b, x3, p, x);

        let two_ax = b.ins().fadd(ax, ax);
        let e = self.exp_core(b, two_ax, true);
        let one = self.splat(b, 1.0);
        let two = self.splat(b, 2.0);
        let d = b.ins().fadd(e, one);
        let q = b.ins().fdiv(two, d);
        let large = b.ins().fsub(one, q);
        let large = self.copysign(b, large, x);

        let bound = self.splat(b, 0.625);
        let is_small = b.ins().fcmp(FloatCC::LessThan, ax, bound);
        let r = self.select(b, is_small, small, large);
        self.keep_nan(b, x, r)
    }

    /// 1 / (1 + e^-x), computed as e / (1 + e) with e = e^{-|x|} for negative x, so that the
    /// left tail keeps its relative accuracy.
    pub fn sigmoid(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        let ax = b.ins().fabs(x);
        let nax = b.ins().fneg(ax);
        let e = self.exp_core(b, nax, false);
        let one = self.splat(b, 1.0);
        let d = b.ins().fadd(one, e);
        let zero = self.splat(b, 0.0);
        let neg = b.ins().fcmp(FloatCC::LessThan, x, zero);
        let num = self.select(b, neg, e, one);
        let r = b.ins().fdiv(num, d);
        self.keep_nan(b, x, r)
    }

    /// erf x: x + x P(x^2) below 1; above, 1 - e^{-t^2 + S(t - 2.5)} with t = min(|x|, 4)
    /// (erf rounds to 1 from about 3.92 on), with x's sign.
    pub fn erf(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        let ax = b.ins().fabs(x);
        let x2 = b.ins().fmul(x, x);
        let p = self.poly(b, x2, &ERF_SMALL_P);
        let small = self.fma(b, x, p, x);

        let four = self.splat(b, 4.0);
        let over = b.ins().fcmp(FloatCC::GreaterThan, ax, four);
        let t = self.select(b, over, four, ax);
        let c = self.splat(b, 2.5);
        let u = b.ins().fsub(t, c);
        let s = self.poly(b, u, &ERF_LARGE_S);
        let nt = b.ins().fneg(t);
        let q = self.fma(b, nt, t, s);
        let e = self.exp_core(b, q, false);
        let one = self.splat(b, 1.0);
        let large = b.ins().fsub(one, e);
        let large = self.copysign(b, large, x);

        let is_small = b.ins().fcmp(FloatCC::LessThan, ax, one);
        let r = self.select(b, is_small, small, large);
        self.keep_nan(b, x, r)
    }

    /// x^n by binary powering (n = 2 and 3 give x*x and x*x*x, as onnxruntime computes them);
    /// a negative n takes the reciprocal at the end; x^0 = 1.
    pub fn powi(&self, b: &mut FunctionBuilder, x: Value, n: i32) -> Value {
        let mut k = n.unsigned_abs();
        let mut acc: Option<Value> = None;
        let mut base = x;
        while k > 0 {
            if k & 1 == 1 {
                acc = Some(match acc {
                    None => base,
                    Some(a) => b.ins().fmul(a, base),
                });
            }
            k >>= 1;
            if k > 0 {
                base = b.ins().fmul(base, base);
            }
        }
        let one = self.splat(b, 1.0);
        let v = acc.unwrap_or(one);
        if n < 0 {
            b.ins().fdiv(one, v)
        } else {
            v
        }
    }

    /// powf(x, e) lane by lane through the host's `f32::powf`.
    pub fn powf(&self, b: &mut FunctionBuilder, x: Value, e: f32) -> Result<Value, JitError> {
        let f = self
            .powf
            .ok_or_else(|| JitError::Codegen("powf is used but was not imported".into()))?;
        let ev = b.ins().f32const(e);
        let mut acc = x;
        for lane in 0..4u8 {
            let xl = b.ins().extractlane(x, lane);
            let call = b.ins().call(f, &[xl, ev]);
            let r = b.inst_results(call)[0];
            acc = b.ins().insertlane(acc, r, lane);
        }
        Ok(acc)
    }
}
