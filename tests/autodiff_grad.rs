//! Gradient checks of every autodiff rule against central finite differences in f64 on the CPU
//! engine: each op in a small graph, several seeded random shapes per op (broadcast patterns
//! included), norm-wise relative error ≤ 1e-6; points within h of a Relu or Where kink skipped.
//!
//! This file: elementwise ops, MatMul / Gemm, reductions, Softmax, Where / Cast, Max / Min, Clip.
//! Shape ops are in `autodiff_grad_shape.rs`, transformer pieces in `autodiff_grad_model.rs`.

mod gradcheck;

use gradcheck::{broadcastable, dims, inp, p, pr, property, Fill};

fn binary(op: &'static str, positive_b: bool) {
    property(op, 4, |rng| {
        let r = rng.int(1, 3);
        let a = dims(rng, r);
        let b = broadcastable(rng, &a);
        // Either operand may be the broadcast one.
        let (sa, sb) = if rng.next_u64() % 2 == 0 {
            (a, b)
        } else {
            (b, a)
        };
        let bi = if positive_b {
            pr("b", &sb, 0.5, 1.5)
        } else {
            p("b", &sb)
        };
        (
            vec![p("a", &sa), bi],
            format!("  %y = onnx.{op}(%a, %b) : ?"),
            "y",
            None,
        )
    });
}

#[test]
fn add_sub_mul_div_with_broadcasting() {
    binary("Add", false);
    binary("Sub", false);
    binary("Mul", false);
    binary("Div", true);
}

fn unary(op: &'static str, lo: f64, hi: f64, kink: bool) {
    property(op, 3, |rng| {
        let r = rng.int(1, 3);
        let s = dims(rng, r);
        (
            vec![pr("x", &s, lo, hi)],
            format!("  %y = onnx.{op}(%x) : ?"),
            "y",
            kink.then_some("x"),
        )
    });
}

#[test]
fn unary_functions() {
    unary("Neg", -1.0, 1.0, false);
    unary("Identity", -1.0, 1.0, false);
    unary("Sqrt", 0.2, 2.0, false);
    unary("Reciprocal", 0.3, 2.0, false);
    unary("Exp", -1.0, 1.0, false);
    unary("Log", 0.2, 2.0, false);
    unary("Tanh", -2.0, 2.0, false);
    unary("Sigmoid", -3.0, 3.0, false);
    unary("Erf", -2.0, 2.0, false);
    unary("Relu", -1.0, 1.0, true);
}

#[test]
fn pow_with_constant_exponent() {
    for e in ["2.0", "3.0", "0.5", "-1.5"] {
        property("Pow", 3, |rng| {
            let s = dims(rng, 2);
            (
                vec![pr("x", &s, 0.3, 2.0)],
                format!("  %e = const tensor<f64> dense<[{e}]>\n  %y = onnx.Pow(%x, %e) : ?"),
                "y",
                None,
            )
        });
    }
}

#[test]
fn matmul_batched_and_broadcast() {
    // A 2-D weight read by a batched activation (the Gemm path).
    property("MatMul 2-D weight", 4, |rng| {
        let (b, m, k, n) = (rng.int(1, 3), rng.int(1, 4), rng.int(1, 5), rng.int(1, 4));
        let a = if rng.next_u64() % 2 == 0 {
            vec![b, m, k]
        } else {
            vec![m, k]
        };
        (
            vec![p("a", &a), p("w", &[k, n])],
            "  %y = onnx.MatMul(%a, %w) : ?".into(),
            "y",
            None,
        )
    });
    // Batched on both sides, with a batch axis broadcast on either operand.
    property("MatMul batched", 4, |rng| {
        let (b, h, m, k, n) = (
            rng.int(2, 3),
            rng.int(1, 3),
            rng.int(1, 3),
            rng.int(1, 4),
            rng.int(1, 3),
        );
        let (sa, sb) = match rng.int(0, 2) {
            0 => (vec![b, h, m, k], vec![b, h, k, n]),
            1 => (vec![b, 1, m, k], vec![b, h, k, n]),
            _ => (vec![b, h, m, k], vec![h, k, n]),
        };
        (
            vec![p("a", &sa), p("b", &sb)],
            "  %y = onnx.MatMul(%a, %b) : ?".into(),
            "y",
            None,
        )
    });
    // A 1-D operand on either side or both (a row or a column vector), the other batched or not.
    property("MatMul 1-D operand", 6, |rng| {
        let (b, m, k, n) = (rng.int(1, 3), rng.int(1, 4), rng.int(1, 5), rng.int(1, 4));
        let batched = rng.next_u64() % 2 == 0;
        let full = |mut d: Vec<usize>| {
            if batched {
                d.insert(0, b);
            }
            d
        };
        let (sa, sb) = match rng.int(0, 2) {
            0 => (vec![k], full(vec![k, n])),
            1 => (full(vec![m, k]), vec![k]),
            _ => (vec![k], vec![k]),
        };
        (
            vec![p("a", &sa), p("b", &sb)],
            "  %y = onnx.MatMul(%a, %b) : ?".into(),
            "y",
            None,
        )
    });
}

#[test]
fn gemm_every_transpose_and_bias() {
    for (ta, tb) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
        property("Gemm", 3, |rng| {
            let (m, k, n) = (rng.int(1, 4), rng.int(1, 4), rng.int(1, 4));
            let sa = if ta == 1 { vec![k, m] } else { vec![m, k] };
            let sb = if tb == 1 { vec![n, k] } else { vec![k, n] };
            let sc = match rng.int(0, 2) {
                0 => vec![m, n],
                1 => vec![n],
                _ => vec![m, 1],
            };
            (
                vec![p("a", &sa), p("b", &sb), p("c", &sc)],
                format!("  %y = onnx.Gemm(%a, %b, %c) {{alpha = 0.7, beta = 1.3, transA = {ta}, transB = {tb}}} : ?"),
                "y",
                None,
            )
        });
    }
}

#[test]
fn reductions_with_and_without_keepdims() {
    for op in ["ReduceSum", "ReduceMean"] {
        for keep in [0, 1] {
            property(op, 3, |rng| {
                let s = dims(rng, 3);
                // A random non-empty set of axes, each written as a positive or negative index.
                let mut axes: Vec<String> = Vec::new();
                for a in 0..3i64 {
                    if rng.next_u64() % 2 == 0 {
                        let neg = rng.next_u64() % 2 == 0;
                        axes.push(if neg { a - 3 } else { a }.to_string());
                    }
                }
                if axes.is_empty() {
                    axes.push("-1".into());
                }
                (
                    vec![p("x", &s)],
                    format!(
                        "  %ax = const tensor<{}xi64> dense<[{}]>\n  %y = onnx.{op}(%x, %ax) {{keepdims = {keep}}} : ?",
                        axes.len(),
                        axes.join(", ")
                    ),
                    "y",
                    None,
                )
            });
        }
        // Every axis (no axes operand).
        property(op, 2, |rng| {
            let s = dims(rng, 2);
            (
                vec![p("x", &s)],
                format!("  %y = onnx.{op}(%x) {{keepdims = 0}} : ?"),
                "y",
                None,
            )
        });
    }
}

#[test]
fn softmax_and_log_softmax() {
    for op in ["Softmax", "LogSoftmax"] {
        property(op, 4, |rng| {
            let s = dims(rng, 3);
            let axis = rng.int(0, 2) as i64 - 3;
            (
                vec![pr("x", &s, -2.0, 2.0)],
                format!("  %y = onnx.{op}(%x) {{axis = {axis}}} : ?"),
                "y",
                None,
            )
        });
    }
}

#[test]
fn where_and_cast() {
    property("Where", 4, |rng| {
        let s = dims(rng, 2);
        let b = broadcastable(rng, &s);
        (
            vec![inp("c", &s, Fill::Bool), p("a", &s), p("b", &b)],
            "  %y = onnx.Where(%c, %a, %b) : ?".into(),
            "y",
            None,
        )
    });
    // A condition computed from a parameter: points where it flips are kinks, skipped.
    property("Where on a computed condition", 2, |rng| {
        let s = dims(rng, 2);
        (
            vec![p("a", &s)],
            "  %z = const tensor<f64> dense<[0.0]>\n  %c = onnx.Greater(%a, %z) : ?\n  %sq = onnx.Mul(%a, %a) : ?\n  %y = onnx.Where(%c, %sq, %a) : ?".into(),
            "y",
            Some("a"),
        )
    });
    property("Cast", 2, |rng| {
        let s = dims(rng, 2);
        (
            vec![p("x", &s)],
            "  %c = onnx.Cast(%x) {to = 11} : ?\n  %y = onnx.Mul(%c, %c) : ?".into(),
            "y",
            None,
        )
    });
}

/// Max and Min over two or three broadcast operands; points within h of a tie are kinks.
#[test]
fn max_and_min() {
    for op in ["Max", "Min"] {
        property(op, 4, |rng| {
            let r = rng.int(1, 3);
            let a = dims(rng, r);
            let b = broadcastable(rng, &a);
            if rng.next_u64() % 2 == 0 {
                (
                    vec![p("a", &a), p("b", &b)],
                    format!("  %y = onnx.{op}(%a, %b) : ?\n  %k = onnx.Sub(%a, %b) : ?"),
                    "y",
                    Some("k"),
                )
            } else {
                let c = broadcastable(rng, &a);
                (
                    vec![p("a", &a), p("b", &b), p("c", &c)],
                    format!(
                        "  %y = onnx.{op}(%a, %b, %c) : ?\n  %ab = onnx.Sub(%a, %b) : ?\n  %ac = onnx.Sub(%a, %c) : ?\n  %bc = onnx.Sub(%b, %c) : ?\n  %k1 = onnx.Mul(%ab, %ac) : ?\n  %k = onnx.Mul(%k1, %bc) : ?"
                    ),
                    "y",
                    Some("k"),
                )
            }
        });
    }
}

/// Clip with constant and with trained bounds (either may be absent); points within h of a
/// bound are kinks.
#[test]
fn clip() {
    property("Clip, constant bounds", 3, |rng| {
        let s = dims(rng, 2);
        (
            vec![p("x", &s)],
            "  %lo = const tensor<f64> dense<[-0.3]>\n  %hi = const tensor<f64> dense<[0.4]>\n  %y = onnx.Clip(%x, %lo, %hi) : ?\n  %xl = onnx.Sub(%x, %lo) : ?\n  %xh = onnx.Sub(%x, %hi) : ?\n  %k = onnx.Mul(%xl, %xh) : ?".into(),
            "y",
            Some("k"),
        )
    });
    property("Clip, trained bounds", 3, |rng| {
        let s = dims(rng, 3);
        (
            vec![p("x", &s), pr("lo", &[], -0.5, -0.1), pr("hi", &[], 0.1, 0.5)],
            "  %y = onnx.Clip(%x, %lo, %hi) : ?\n  %xl = onnx.Sub(%x, %lo) : ?\n  %xh = onnx.Sub(%x, %hi) : ?\n  %k = onnx.Mul(%xl, %xh) : ?".into(),
            "y",
            Some("k"),
        )
    });
    property("Clip, upper bound only", 2, |rng| {
        let s = dims(rng, 2);
        (
            vec![p("x", &s), pr("hi", &[], -0.2, 0.2)],
            "  %y = onnx.Clip(%x, _, %hi) : ?\n  %k = onnx.Sub(%x, %hi) : ?".into(),
            "y",
            Some("k"),
        )
    });
}
