//! Tests of the verifier (`verify.rs`), kept apart so the verifier stays readable.

use super::*;
use crate::graph::Output;
use crate::tensor::TensorData;
use crate::text::parse_module;

fn module(body: &str) -> Module {
    let src = format!("module {{opset_import = [\"\" = 17]}}\n{body}");
    parse_module(&src).unwrap_or_else(|e| panic!("parse error {e} in\n{src}"))
}

fn errors(m: &Module) -> Vec<String> {
    match verify_module(m) {
        Ok(()) => Vec::new(),
        Err(d) => d.0.iter().map(|x| x.to_string()).collect(),
    }
}

/// Asserts that every needle is a substring of some error and that there are `count`.
fn expect_all(errs: &[String], needles: &[&str], count: usize) {
    for needle in needles {
        assert!(
            errs.iter().any(|e| e.contains(needle)),
            "{needle:?} not in {errs:?}"
        );
    }
    assert_eq!(errs.len(), count, "{errs:?}");
}

/// The kinds of the module's diagnostics, in report order.
fn kinds(m: &Module) -> Vec<DiagKind> {
    match verify_module(m) {
        Ok(()) => Vec::new(),
        Err(d) => d.0.iter().map(|x| x.kind).collect(),
    }
}

#[test]
fn a_sound_module_verifies() {
    let m = module(
        r#"graph @main(%x: tensor<"b"x"s"x576xf32>, %w: tensor<576xf32>) -> (%y) {
  %c = const tensor<1xi64> dense<[-1]>
  %sq = onnx.Mul(%x, %x) : tensor<"b"x"s"x576xf32>
  %m = onnx.ReduceMean(%sq) {axes = [-1]} : tensor<"b"x"s"x1xf32>
  %d = onnx.Div(%x, %m) : ?
  %y = onnx.Mul(%d, %w) : tensor<"b"x"s"x576xf32>
}"#,
    );
    assert_eq!(errors(&m), Vec::<String>::new());
}

#[test]
fn matmul_shape_conflict_names_the_node() {
    let m = module(
        r#"graph @main(%x: tensor<"b"x576xf32>) -> (%y) {
  %w = const tensor<576x1536xf32> elided<"0000000000000003", 3538944>
  %y = onnx.MatMul(%x, %w) : tensor<"b"x1535xf32> loc("/mlp/up_proj")
}"#,
    );
    let e = errors(&m);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("graph @main: MatMul '/mlp/up_proj': result %y"),
        "{e:?}"
    );
    // Shape inference's conflict keeps its kind through the verifier.
    assert_eq!(kinds(&m), vec![DiagKind::Shape]);
}

#[test]
fn a_cycle_is_reported_at_a_node_on_it() {
    // %a is not on the cycle but cannot be ordered either; the report must name %b or %c.
    let m = module(
        r#"graph @main(%x: tensor<4xf32>) -> (%a) {
  %a = onnx.Relu(%c) : ?
  %b = onnx.Add(%x, %c) : ?
  %c = onnx.Neg(%b) : ?
}"#,
    );
    let e = errors(&m);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("is on a cycle"), "{e:?}");
    assert!(
        e[0].starts_with("graph @main: Add producing '%b'")
            || e[0].starts_with("graph @main: Neg producing '%c'"),
        "{e:?}"
    );
    assert!(!e[0].contains("Relu"), "{e:?}");
}

#[test]
fn independent_errors_are_all_reported() {
    let m = module(
        r#"graph @main(%x: tensor<4xf32>, %h: tensor<4xf16>, %i: tensor<4xf32>) -> (%a) {
  %a = onnx.Add(%x, %h) : ? loc("mixed")
  %b = onnx.Where(%x, %x, %x) : ? loc("cond")
  %c = onnx.Gather(%x, %i) : ? loc("gather")
  %d = onnx.Shape(%x) : tensor<1xf32> loc("shape")
  %e = onnx.Relu(%x, %x) : ? loc("relu")
  %f = onnx.Cast(%x) {to = 7} : tensor<4xi32> loc("cast")
}"#,
    );
    let e = errors(&m);
    expect_all(
        &e,
        &[
            "Add 'mixed': operands 0 and 1 have different element types (f32 and f16)",
            "Where 'cond': operand 0 must be bool",
            "Gather 'gather': operand 1 must be i32 or i64 indices",
            "Shape 'shape': result %d: declared tensor<1xf32> but inferred tensor<1xi64>",
            "Relu 'relu': takes exactly 1 operands but has 2",
            "Cast 'cast': result %f",
        ],
        6,
    );
}

#[test]
fn diagnostics_carry_their_kind_and_node() {
    let m = module(
        r#"graph @main(%x: tensor<4xf32>, %h: tensor<4xf16>, %i: tensor<4xf32>) -> (%a) {
  %a = onnx.Add(%x, %h) : ? loc("mixed")
  %c = onnx.Gather(%x, %i) : ? loc("gather")
  %d = onnx.Shape(%x) : tensor<1xf32> loc("shape")
  %e = onnx.Relu(%x, %x) : ? loc("relu")
  %f = onnx.Cast(%x) {to = 0} : ? loc("cast")
}"#,
    );
    let Err(d) = verify_module(&m) else {
        panic!("the module must not verify")
    };
    let g = m.main_graph();
    let node = |name: &str| {
        g.node_ids()
            .into_iter()
            .find(|&n| g.value_name(ValueId { node: n, output: 0 }) == name)
    };
    let at =
        |kind: DiagKind| -> Vec<Option<NodeId>> { d.of_kind(kind).map(|x| x.node_id).collect() };
    // Element types: the mixed Add and the float indices of the Gather.
    assert_eq!(at(DiagKind::Type), vec![node("a"), node("c")], "{d}");
    assert_eq!(at(DiagKind::Arity), vec![node("e")], "{d}");
    assert_eq!(at(DiagKind::Attribute), vec![node("f")], "{d}");
    // The declared result type of Shape disagrees with inference (reported by `shape`).
    assert!(
        d.of_kind(DiagKind::Shape).any(|x| x.message.contains("%d")),
        "{d}"
    );
    assert!(d.0.iter().all(|x| x.graph_id == Some(m.main)), "{d}");
}

#[test]
fn structural_problems_are_structure_diagnostics() {
    let m = module(
        r#"graph @main(%x: tensor<4xf32>) -> (%a) {
  %stray = input : tensor<4xf32>
  %a = onnx.Relu(%x) : ?
  %b = onnx.Add(%c, %x) : ?
  %c = onnx.Neg(%b) : ?
}"#,
    );
    let k = kinds(&m);
    assert!(!k.is_empty());
    assert!(k.iter().all(|&x| x == DiagKind::Structure), "{k:?}");
}

#[test]
fn scoping_captures_and_subgraphs() {
    let m = module(
        r#"graph @main(%c: tensor<bool>, %x: tensor<4xf32>) -> (%r) {
  %r = onnx.If(%c) {then_branch = graph @then() -> (%t) {
%x = capture : ?
%t = onnx.Relu(%x) : ?
  }, else_branch = graph @else() -> (%e) {
%nope = capture : ?
%c = onnx.Neg(%nope) : ?
%e = onnx.MatMul(%c, %c, %c) : ?
  }} : ?
}"#,
    );
    let e = errors(&m);
    expect_all(
        &e,
        &[
            "graph @else: capture producing '%nope': captures %nope, which no enclosing graph defines",
            "graph @else: Neg producing '%c': defines %c, which shadows a value of an enclosing graph",
            "graph @else: MatMul producing '%e': takes exactly 2 operands but has 3",
        ],
        3,
    );
}

#[test]
fn inputs_duplicates_and_outputs() {
    let m = module(
        r#"graph @main(%x: tensor<4xf32>) -> (%a) {
  %stray = input : tensor<4xf32>
  %a = onnx.Relu(%x) : ?
  %b = op<"com.example", "Y">(%stray) : tensor<9223372036854775807x4xf32>
  %m = onnx.Add(_, %x) : ?
}"#,
    );
    let e = errors(&m);
    expect_all(
        &e,
        &[
            "input producing '%stray': is an input node but is not listed",
            "Y producing '%b': result %b has type tensor<9223372036854775807x4xf32>, whose element count overflows",
            "Add producing '%m': required operand 0 is missing",
        ],
        3,
    );
}

#[test]
fn programmatic_breakage_is_reported_without_panics() {
    let mut m = module(
        r#"graph @main(%x: tensor<4xf32>) -> (%a) {
  %a = onnx.Relu(%x) : ?
}"#,
    );
    let bad = m.add_tensor(TensorData::from_bytes(DType::F32, vec![3], vec![0; 4]));
    let huge = m.add_tensor(TensorData::from_bytes(
        DType::F32,
        vec![i64::MAX, 4],
        vec![],
    ));
    let g = m.main_graph_mut();
    let c = g.add_node(
        Op::Const(bad),
        vec![],
        vec![Output::new("w", Type::Unknown)],
    );
    g.add_node(
        Op::Const(huge),
        vec![],
        vec![Output::new("big", Type::Unknown)],
    );
    // A result without a name, used as an operand and as a graph output.
    let anon = g.add_node(
        Op::Neg,
        vec![Some(ValueId { node: c, output: 0 })],
        vec![Output::new("", Type::Unknown)],
    );
    let user = g.add_node(
        Op::Relu,
        vec![Some(ValueId {
            node: anon,
            output: 0,
        })],
        vec![Output::new("u", Type::Unknown)],
    );
    // A dangling operand: the node it named is gone.
    let gone = g.add_node(Op::Relu, vec![], vec![Output::new("gone", Type::Unknown)]);
    g.add_node(
        Op::Abs,
        vec![Some(ValueId {
            node: gone,
            output: 0,
        })],
        vec![Output::new("dangling", Type::Unknown)],
    );
    g.remove_node(gone);
    g.outputs.push(crate::graph::GraphOutput {
        value: ValueId {
            node: anon,
            output: 0,
        },
        name: "anon".into(),
    });
    let _ = user;
    let e = errors(&m);
    expect_all(
        &e,
        &[
            "const producing '%w': its tensor holds 4 bytes but f32 × [3] needs 12",
            "const producing '%big': its tensor has dims",
            "Relu producing '%u': operand 0 uses result 0 of Neg",
            "Abs producing '%dangling': operand 0 refers to a value that does not exist",
            "graph @main: output 1 ('anon') is an unnamed result",
        ],
        5,
    );
}

#[test]
fn verify_graph_accepts_outer_names() {
    let m = module(
        r#"graph @main(%c: tensor<bool>) -> (%r) {
  %r = onnx.If(%c) {then_branch = graph @then() -> (%t) {
%y = capture : tensor<2xf32>
%t = onnx.Relu(%y) : ?
  }, else_branch = graph @else() -> (%e) {
%y = capture : tensor<2xf32>
%e = onnx.Neg(%y) : ?
  }} : ?
}"#,
    );
    // From the main graph, %y resolves nowhere; checked alone with %y in scope, it does.
    assert!(verify_module(&m).is_err());
    let then =
        m.main_graph()
            .node_ids()
            .into_iter()
            .find_map(|n| match &m.main_graph().node(n).op {
                Op::If(a) => a.then_branch,
                _ => None,
            });
    let then = then.unwrap_or_else(|| panic!("no If"));
    assert_eq!(verify_graph(&m, then, &["y"]), Ok(()));
}
