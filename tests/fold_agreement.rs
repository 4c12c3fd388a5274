//! The constant folder (`canonicalize`) and the engine agree: both compute through
//! `ortho_ir::semantics`, and each case below, where the two used to differ, is decided by the
//! ONNX specification. A case is one graph without inputs whose output `%y` is computed from
//! constants; the engine evaluates it with compile-time folding off, the folder folds it (or
//! leaves it), and the test checks the expected outcome.

use ortho_codegen::cpu::{HostTensor, Plan, PlanOptions, RuntimeError};
use ortho_ir::text::parse_module;
use ortho_ir::{Module, Op};
use ortho_passes::{canonicalize, CanonicalizeOptions};

/// What a case must do.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// The folder folds `%y`, to exactly the engine's bytes.
    Agree,
    /// The operands are invalid: the engine reports an error and the folder leaves the node.
    BothReject,
    /// ONNX leaves the result to the implementation: the folder leaves the node to the engine.
    FolderDefers,
}

fn module(body: &str) -> Module {
    let src = format!(
        "module {{ir_version = 8, opset_import = [\"\" = 17]}}\ngraph @g() -> (%y) {{\n{body}\n}}\n"
    );
    parse_module(&src).unwrap_or_else(|e| panic!("parse: {e}\n{src}"))
}

/// The engine's value of `%y`, without compile-time folding.
fn engine(m: &Module) -> Result<HostTensor, RuntimeError> {
    let opts = PlanOptions {
        fold_constants: false,
        threads: 1,
        ..PlanOptions::default()
    };
    let plan = Plan::compile_with(m, &opts)?;
    let mut out = plan.run(&[])?;
    Ok(out.remove(0).1)
}

/// The folder's value of `%y`, when it folded it.
fn folder(m: &Module) -> Option<HostTensor> {
    let mut m = m.clone();
    canonicalize(&mut m, &CanonicalizeOptions::default());
    let g = m.main_graph();
    let y = g.outputs.first()?.value;
    match &g.node(y.node).op {
        Op::Const(t) => Some(HostTensor::from_tensor_data(m.tensor(*t)).expect("decodes")),
        _ => None,
    }
}

fn check(name: &str, body: &str, expect: Expect) {
    let m = module(body);
    let (e, f) = (engine(&m), folder(&m));
    match expect {
        Expect::Agree => {
            let e = e.unwrap_or_else(|err| panic!("{name}: the engine failed: {err}"));
            let f = f.unwrap_or_else(|| panic!("{name}: the folder did not fold"));
            assert_eq!(e.shape(), f.shape(), "{name}: shapes");
            assert_eq!(e.dtype(), f.dtype(), "{name}: dtypes");
            assert_eq!(
                e.buf().to_le_bytes(),
                f.buf().to_le_bytes(),
                "{name}: engine {e:?} vs folder {f:?}"
            );
        }
        Expect::BothReject => {
            assert!(e.is_err(), "{name}: the engine accepted it: {e:?}");
            assert!(f.is_none(), "{name}: the folder folded it: {f:?}");
        }
        Expect::FolderDefers => {
            assert!(e.is_ok(), "{name}: the engine failed: {e:?}");
            assert!(f.is_none(), "{name}: the folder folded it: {f:?}");
        }
    }
}

/// Slice steps at the extremes of i64: the engine computed `end - start + step` in i64 and
/// overflowed; ONNX defines the count as the number of `start + k*step` inside the clamped range.
#[test]
fn slice_with_extreme_steps() {
    let x =
        "%x = const tensor<5xi64> dense<[0, 1, 2, 3, 4]>\n  %ax = const tensor<1xi64> dense<[0]>";
    for (name, st, en, step, expect) in [
        (
            "max step",
            "0",
            "9223372036854775807",
            "9223372036854775807",
            Expect::Agree,
        ),
        (
            "min step",
            "-1",
            "-9223372036854775808",
            "-9223372036854775808",
            Expect::Agree,
        ),
        (
            "negative step from past the end",
            "9223372036854775807",
            "-9223372036854775808",
            "-2",
            Expect::Agree,
        ),
        ("step 0", "0", "5", "0", Expect::BothReject),
    ] {
        let body = format!(
            "{x}\n  %st = const tensor<1xi64> dense<[{st}]>\n  %en = const tensor<1xi64> dense<[{en}]>\n  %sp = const tensor<1xi64> dense<[{step}]>\n  %y = onnx.Slice(%x, %st, %en, %ax, %sp) : tensor<*xi64>"
        );
        check(name, &body, expect);
    }
}

/// A repeated slice axis is undefined in ONNX; the engine used to let the last one win while the
/// folder refused. Both refuse now.
#[test]
fn slice_with_a_repeated_axis() {
    check(
        "repeated axis",
        "%x = const tensor<4xi64> dense<[0, 1, 2, 3]>
  %st = const tensor<2xi64> dense<[0, 1]>
  %en = const tensor<2xi64> dense<[4, 4]>
  %ax = const tensor<2xi64> dense<[0, -1]>
  %y = onnx.Slice(%x, %st, %en, %ax) : tensor<*xi64>",
        Expect::BothReject,
    );
}

/// An out-of-range Gather index is an error even when the data is empty and nothing would be
/// read (both used to accept it then).
#[test]
fn gather_checks_indices_of_empty_data() {
    check(
        "gather on empty data",
        "%x = const tensor<0x3xf32> dense<[]>
  %i = const tensor<1xi64> dense<[5]>
  %y = onnx.Gather(%x, %i) {axis = 1} : tensor<*xf32>",
        Expect::BothReject,
    );
    check(
        "gather with a negative index",
        "%x = const tensor<2x3xf32> dense<[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]>
  %i = const tensor<2xi64> dense<[-1, 0]>
  %y = onnx.Gather(%x, %i) {axis = 1} : tensor<*xf32>",
        Expect::Agree,
    );
}

/// Integer Range counts `ceil((limit - start) / delta)` exactly: the engine computed it in f64
/// from an i64 difference that overflows here.
#[test]
fn integer_range_counts_exactly() {
    check(
        "range across the i64 span",
        "%s = const tensor<i64> dense<[9223372036854775806]>
  %l = const tensor<i64> dense<[-9223372036854775808]>
  %d = const tensor<i64> dense<[-4611686018427387904]>
  %y = onnx.Range(%s, %l, %d) : tensor<*xi64>",
        Expect::Agree,
    );
}

/// Float Range computes `start + i * delta` in the element type, as ONNX writes it (the folder
/// computed in f64 and rounded once, which differs from f32 arithmetic for some elements).
#[test]
fn f32_range_computes_in_f32() {
    check(
        "f32 range",
        "%s = const tensor<f32> dense<[0.1]>
  %l = const tensor<f32> dense<[9.0]>
  %d = const tensor<f32> dense<[0.3]>
  %y = onnx.Range(%s, %l, %d) : tensor<*xf32>",
        Expect::Agree,
    );
    // The two ways of computing do differ on these operands, so the case above decides something.
    let (s, d) = (0.1f32, 0.3f32);
    assert!((0..30).any(|i| s + i as f32 * d != (s as f64 + i as f64 * d as f64) as f32));
    // An infinite count is refused (the engine used to try to allocate it).
    check(
        "infinite f32 range",
        "%s = const tensor<f32> dense<[0.0]>
  %l = const tensor<f32> dense<[inf]>
  %d = const tensor<f32> dense<[1.0]>
  %y = onnx.Range(%s, %l, %d) : tensor<*xf32>",
        Expect::BothReject,
    );
}

/// Integer → float casts round once, to nearest: 2^53 + 2^29 + 1 is 2^53 + 2^30 in f32, while
/// going through f64 (as the engine did) rounds to 2^53.
#[test]
fn int_to_float_casts_round_once() {
    check(
        "i64 to f32",
        "%x = const tensor<2xi64> dense<[9007199791611905, -3]>
  %y = onnx.Cast(%x) {to = 1} : tensor<2xf32>",
        Expect::Agree,
    );
    let m = module(
        "%x = const tensor<1xi64> dense<[9007199791611905]>
  %y = onnx.Cast(%x) {to = 1} : tensor<1xf32>",
    );
    let y = engine(&m).expect("runs");
    assert_eq!(
        y.as_f32(),
        Some(&[(1u64 << 53) as f32 + (1u64 << 30) as f32][..])
    );
}

/// Float → integer casts of values out of the target's range (and NaN) are left undefined by
/// ONNX: the folder leaves them to the engine, which saturates.
#[test]
fn out_of_range_float_to_int_casts_are_left_to_the_engine() {
    check(
        "f32 to i32 out of range",
        "%x = const tensor<2xf32> dense<[3.0e9, 1.5]>
  %y = onnx.Cast(%x) {to = 6} : tensor<2xi32>",
        Expect::FolderDefers,
    );
    check(
        "f32 to i32 in range",
        "%x = const tensor<3xf32> dense<[-2.7, 1.5, 100.0]>
  %y = onnx.Cast(%x) {to = 6} : tensor<3xi32>",
        Expect::Agree,
    );
}

/// ConstantOfShape's value must hold exactly one element (the engine used to take the first).
#[test]
fn constant_of_shape_needs_one_value() {
    check(
        "two values",
        "%s = const tensor<1xi64> dense<[3]>
  %y = onnx.ConstantOfShape(%s) {value = tensor<2xi32> dense<[7, 8]>} : tensor<3xi32>",
        Expect::BothReject,
    );
    check(
        "one value",
        "%s = const tensor<2xi64> dense<[2, 0]>
  %y = onnx.ConstantOfShape(%s) {value = tensor<1xi32> dense<[7]>} : tensor<2x0xi32>",
        Expect::Agree,
    );
}

/// The data-movement ops agree on ordinary operands, empty tensors included.
#[test]
fn data_movement_agrees() {
    let cases = [
        (
            "concat with an empty part",
            "%a = const tensor<2x0xi32> dense<[]>
  %b = const tensor<2x2xi32> dense<[1, 2, 3, 4]>
  %y = onnx.Concat(%a, %b, %a) {axis = -1} : tensor<2x2xi32>",
        ),
        (
            "where with broadcasting",
            "%c = const tensor<2x1xbool> dense<[1, 0]>
  %a = const tensor<3xf32> dense<[1.0, 2.0, 3.0]>
  %b = const tensor<2x3xf32> dense<[4.0, 5.0, 6.0, 7.0, 8.0, 9.0]>
  %y = onnx.Where(%c, %a, %b) : tensor<2x3xf32>",
        ),
        (
            "slice of an empty axis with a negative step",
            "%x = const tensor<0x2xf32> dense<[]>
  %st = const tensor<1xi64> dense<[-1]>
  %en = const tensor<1xi64> dense<[-9223372036854775808]>
  %ax = const tensor<1xi64> dense<[0]>
  %sp = const tensor<1xi64> dense<[-1]>
  %y = onnx.Slice(%x, %st, %en, %ax, %sp) : tensor<*xf32>",
        ),
        (
            "squeeze and reshape",
            "%x = const tensor<1x3x1xi64> dense<[1, 2, 3]>
  %sq = onnx.Squeeze(%x) : tensor<3xi64>
  %t = const tensor<2xi64> dense<[-1, 1]>
  %y = onnx.Reshape(%sq, %t) : tensor<3x1xi64>",
        ),
        (
            "unsqueeze with negative axes",
            "%x = const tensor<3xf32> dense<[1.0, 2.0, 3.0]>
  %ax = const tensor<2xi64> dense<[0, -1]>
  %y = onnx.Unsqueeze(%x, %ax) : tensor<1x3x1xf32>",
        ),
        (
            "wrapping integer arithmetic",
            "%a = const tensor<2xi64> dense<[9223372036854775807, 5]>
  %b = const tensor<i64> dense<[2]>
  %y = onnx.Mul(%a, %b) : tensor<2xi64>",
        ),
    ];
    for (name, body) in cases {
        check(name, body, Expect::Agree);
    }
}
