"""Fits the polynomial coefficients of the JIT's f32 exp, log, tanh and erf (codegen/src/cpu/jit/math.rs).

Weighted least squares on a dense grid, reweighted toward the worst points (Lawson's iteration),
which approaches the minimax polynomial; coefficients are then rounded to f32 and the relative
error of the rounded polynomial is printed. Run with any Python that has numpy:

    python3 codegen/src/cpu/jit/fit_coefficients.py

The Rust tests (cpu::jit::tests) measure the final kernels against f64 references in ulps, so this
script is documentation of where the numbers came from, not a test.
"""
import math

import numpy as np


def lawson(x, f, basis, weight, iters=60):
    """Minimax-like fit of f ≈ sum c_k basis_k(x) minimizing max |weight * (f - p)|."""
    A = np.stack([b(x) for b in basis], axis=1) * weight[:, None]
    y = f * weight
    w = np.ones_like(x)
    for _ in range(iters):
        sw = np.sqrt(w)
        c, *_ = np.linalg.lstsq(A * sw[:, None], y * sw, rcond=None)
        e = np.abs(A @ c - y)
        w = w * e
        w = w / w.sum()
    return c


def lawson32(x, f, basis, weight):
    """Like `lawson`, but rounds the coefficients to f32 one at a time, lowest order first,
    refitting the remaining ones to absorb each rounding."""
    fixed = []
    for k in range(len(basis)):
        rest = f - sum(c * b(x) for c, b in zip(fixed, basis))
        c = lawson(x, rest, basis[k:], weight)
        fixed.append(float(np.float32(c[0])))
    return fixed


def poly_basis(n, lo=0):
    return [lambda x, k=k: x ** k for k in range(lo, lo + n)]


def horner32(c, x):
    r = np.float32(c[-1]) * np.ones_like(x, dtype=np.float32)
    for k in c[-2::-1]:
        r = (r * x + np.float32(k)).astype(np.float32)
    return r


def report(name, doc, c):
    """Prints the coefficients as the Rust constant `name` (lowest order first)."""
    c32 = [np.float32(v) for v in c]
    print(f"/// {doc}")
    print(f"const {name}: [f32; {len(c32)}] = [{', '.join(str(v) for v in c32)}];")
    return [float(v) for v in c32]


# exp(r) = 1 + r + r^2 P(r) on |r| <= ln2/2.
r = np.linspace(-math.log(2) / 2, math.log(2) / 2, 20001)
r = r[np.abs(r) > 1e-6]
P = (np.expm1(r) - r) / r**2
c = lawson32(r, P, poly_basis(5), r**2 / np.exp(r))
c = report("EXP_P", "exp(r) = 1 + r + r^2 P(r), |r| <= ln2/2.", c)
approx = 1 + r + r**2 * np.polyval(c[::-1], r)
print("//   max rel err (f64 eval):", np.max(np.abs(approx / np.exp(r) - 1)) / 2**-24, "ulp")

# log(1+m) = m - m^2/2 + m^3 P(m) on sqrt(1/2)-1 <= m <= sqrt(2)-1.
m = np.linspace(math.sqrt(0.5) - 1, math.sqrt(2) - 1, 20001)
m = m[np.abs(m) > 1e-4]
P = (np.log1p(m) - m + m**2 / 2) / m**3
c = lawson32(m, P, poly_basis(9), np.abs(m**3 / np.log1p(m)))
c = report("LOG_P", "log(1+m) = m - m^2/2 + m^3 P(m), sqrt(1/2)-1 <= m <= sqrt(2)-1.", c)
approx = m - m**2 / 2 + m**3 * np.polyval(c[::-1], m)
print("//   max rel err (f64 eval):", np.max(np.abs(approx / np.log1p(m) - 1)) / 2**-24, "ulp")

# tanh(x) = x + x^3 P(x^2) on 0 < x <= 0.625.
x = np.linspace(1e-3, 0.625, 20001)
P = (np.tanh(x) - x) / x**3
c = lawson32(x * x, P, poly_basis(5), x**3 / np.tanh(x))
c = report("TANH_P", "tanh(x) = x + x^3 P(x^2), |x| < 0.625.", c)
approx = x + x**3 * np.polyval(c[::-1], x * x)
print("//   max rel err (f64 eval):", np.max(np.abs(approx / np.tanh(x) - 1)) / 2**-24, "ulp")

# erf(x) = x + x P(x^2) on 0 < x <= 1 (P is erf(x)/x - 1, so that rounding its leading
# coefficient, 2/sqrt(pi) - 1, costs far less than an ulp of the result).
verf = np.vectorize(math.erf)
verfc = np.vectorize(math.erfc)
x = np.linspace(1e-4, 1.0, 20001)
P = verf(x) / x - 1
c = lawson32(x * x, P, poly_basis(8), x / verf(x))
c = report("ERF_SMALL_P", "erf(x) = x + x P(x^2), |x| < 1.", c)
approx = x + x * np.polyval(c[::-1], x * x)
print("//   max rel err (f64 eval):", np.max(np.abs(approx / verf(x) - 1)) / 2**-24, "ulp")

# erf(t) = 1 - exp(-t^2 + S(u)) on 1 <= t <= 4, u = t - 2.5, S = log(erfc(t)) + t^2 (centred so
# that f32 Horner evaluation does not cancel). Error in S is a relative
# error of erfc(t), an absolute one of erf scaled by erfc(t) <= 0.16.
t = np.linspace(1.0, 4.0, 20001)
S = np.log(verfc(t)) + t * t
c = lawson32(t - 2.5, S, poly_basis(10), verfc(t))
c = report("ERF_LARGE_S", "erf(t) = 1 - exp(-t^2 + S(t - 2.5)), 1 <= t <= 4.", c)
approx = 1 - np.exp(-t * t + np.polyval(c[::-1], t - 2.5))
ulp = np.spacing(verf(t).astype(np.float32)).astype(np.float64)
print("//   max abs err / ulp(erf) (f64 eval):", np.max(np.abs(approx - verf(t)) / ulp))
