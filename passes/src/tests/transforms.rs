//! Each pass on small graphs, through the manager (so every result is also verified) and as a
//! plain function.

use super::{main_graph, parse, print, run};
use crate::transforms::{canonicalize, cse, dce, CanonicalizeOptions};

fn body(src: &str) -> String {
    format!("module {{}}\n{src}")
}

#[test]
fn dce_removes_dead_nodes_but_keeps_inputs_and_side_effects() {
    let mut m = parse(&body(
        r#"graph @main(%x: tensor<4xf32>, %unused: tensor<4xf32>) -> (%y) {
  %c = const tensor<4xf32> dense<[1.0, 2.0, 3.0, 4.0]>
  %dead = onnx.Mul(%x, %c) : tensor<4xf32>
  %dead2 = onnx.Neg(%dead) : tensor<4xf32>
  %y = onnx.Add(%x, %x) : tensor<4xf32>
  %r, %mask = onnx.Dropout(%x) : tensor<4xf32>, tensor<4xbool>
}"#,
    ));
    let r = run("dce", &mut m);
    assert_eq!(r.statistics.get("dce.removed"), Some(3));
    assert_eq!(r.statistics.get("dce.removed-consts"), Some(1));
    assert_eq!(
        main_graph(&m),
        "graph @main(%x: tensor<4xf32>, %unused: tensor<4xf32>) -> (%y) {\n  %y = onnx.Add(%x, %x) : tensor<4xf32>\n  %r, %mask = onnx.Dropout(%x) : tensor<4xf32>, tensor<4xbool>\n}\n"
    );
    assert_eq!(dce(&mut m).removed, 0, "idempotent");
}

const IF_GRAPH: &str = r#"graph @main(%cond: tensor<bool>, %x: tensor<4xf32>) -> (%out) {
  %a = onnx.Neg(%x) : tensor<4xf32>
  %b = onnx.Abs(%x) : tensor<4xf32>
  %out = onnx.If(%cond) {then_branch = graph @then() -> (%t) {
    %a = capture : tensor<4xf32>
    %b = capture : tensor<4xf32>
    %dead = onnx.Neg(%b) : tensor<4xf32>
    %t = onnx.Identity(%a) : tensor<4xf32>
  }, else_branch = graph @else() -> (%e) {
    %x = capture : tensor<4xf32>
    %e = onnx.Identity(%x) : tensor<4xf32>
  }} : tensor<4xf32>
}"#;

#[test]
fn passes_reach_function_bodies() {
    let mut m = parse(&body(
        r#"graph @main(%x: tensor<4xf32>) -> (%x) {
}
func {domain = "local", name = "f", overload = "", attributes = [], attribute_defaults = {}, opset_import = ["" = 21], doc = "", metadata_props = []}
graph @f(%a: ?) -> (%b) {
  %dead = onnx.Neg(%a) : ?
  %i = onnx.Identity(%a) : ?
  %b = onnx.Abs(%i) : ?
}"#,
    ));
    let r = run("canonicalize,dce", &mut m);
    assert_eq!(r.statistics.get("canonicalize.removed-noops"), Some(1));
    assert_eq!(r.statistics.get("dce.removed"), Some(1));
    let text = print(&m);
    assert!(
        text.contains("%b = onnx.Abs(%a)") && !text.contains("%dead"),
        "{text}"
    );
}

#[test]
fn dce_cleans_subgraphs_first_and_respects_captures() {
    let mut m = parse(&body(IF_GRAPH));
    let r = run("dce", &mut m);
    let text = print(&m);
    // In the then-branch the dead Neg and then the unused capture of %b go; in the main graph
    // %b is then dead too, while %a stays because the branch still captures it.
    assert_eq!(r.statistics.get("dce.removed"), Some(3), "{text}");
    assert!(
        text.contains("%a = onnx.Neg(%x)") && !text.contains("onnx.Abs"),
        "{text}"
    );
    assert!(
        !text.contains("%b = capture") && !text.contains("%dead"),
        "{text}"
    );
}

#[test]
fn canonicalize_keeps_names_that_subgraphs_capture() {
    // %a is captured by the then-branch: removing the Identity that defines it would leave the
    // capture dangling, so it stays; the Identities inside the branches go.
    let mut m = parse(&body(
        &IF_GRAPH.replace("%a = onnx.Neg(%x)", "%a = onnx.Identity(%x)"),
    ));
    let r = run("canonicalize", &mut m);
    let text = print(&m);
    assert!(text.contains("%a = onnx.Identity(%x)"), "{text}");
    assert_eq!(
        r.statistics.get("canonicalize.removed-noops"),
        Some(2),
        "{text}"
    );
    assert!(
        text.contains("-> (%a as \"t\")") && text.contains("-> (%x as \"e\")"),
        "{text}"
    );
}

#[test]
fn cse_merges_equal_nodes_and_constants() {
    let src = body(
        r#"graph @main(%x: tensor<4xf32>) -> (%r1, %r2, %s1, %s2) {
  %c1 = const tensor<4xf32> dense<[1.0, 2.0, 3.0, 4.0]>
  %c2 = const tensor<4xf32> dense<[1.0, 2.0, 3.0, 4.0]>
  %c3 = const tensor<4xf32> dense<[1.0, 2.0, 3.0, 5.0]>
  %a1 = onnx.Add(%x, %c1) : tensor<4xf32>
  %a2 = onnx.Add(%x, %c2) : tensor<4xf32>
  %n1 = onnx.Neg(%a1) : tensor<4xf32>
  %n2 = onnx.Neg(%a2) : tensor<4xf32>
  %r1 = onnx.Sub(%n1, %c3) : tensor<4xf32>
  %r2 = onnx.Sub(%n2, %c3) : tensor<4xf32>
  %s1 = onnx.Softmax(%x) {axis = 0} : tensor<4xf32>
  %s2 = onnx.Softmax(%x) {axis = -1} : tensor<4xf32>
  %d1, %m1 = onnx.Dropout(%x) : tensor<4xf32>, tensor<4xbool>
  %d2, %m2 = onnx.Dropout(%x) : tensor<4xf32>, tensor<4xbool>
}"#,
    );
    let mut m = parse(&src);
    let r = run("cse", &mut m);
    assert_eq!(r.statistics.get("cse.merged"), Some(4));
    assert_eq!(r.statistics.get("cse.merged-consts"), Some(1));
    let text = main_graph(&m);
    assert!(
        text.starts_with("graph @main(%x: tensor<4xf32>) -> (%r1, %r1 as \"r2\", %s1, %s2) {"),
        "{text}"
    );
    assert!(
        text.contains("%d1, %m1 = onnx.Dropout") && text.contains("%d2, %m2 = onnx.Dropout"),
        "{text}"
    );
    assert!(!text.contains("%c2") && text.contains("%c3"), "{text}");
    let mut again = m.clone();
    assert_eq!(cse(&mut again).merged, 0, "idempotent");
}

#[test]
fn canonicalize_removes_no_ops() {
    let mut m = parse(&body(
        r#"graph @main(%x: tensor<2x3xf32>, %b: tensor<"n"x3xf32>) -> (%y, %keep1, %keep2, %keep3) {
  %i = onnx.Identity(%x) : tensor<2x3xf32>
  %t = onnx.Transpose(%i) {perm = [0, 1]} : tensor<2x3xf32>
  %c = onnx.Cast(%t) {to = 1} : tensor<2x3xf32>
  %s = const tensor<2xi64> dense<[-1, 3]>
  %r = onnx.Reshape(%c, %s) : tensor<2x3xf32>
  %z = const tensor<3xf32> dense<[0.0, 0.0, 0.0]>
  %a = onnx.Add(%z, %r) : tensor<2x3xf32>
  %one = const tensor<1x3xf32> dense<[1.0, 1.0, 1.0]>
  %m = onnx.Mul(%a, %one) : tensor<2x3xf32>
  %y = onnx.Div(%m, %one) : tensor<2x3xf32>
  %z3 = const tensor<2x2x3xf32> dense<[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]>
  %keep1 = onnx.Add(%x, %z3) : tensor<2x2x3xf32>
  %keep2 = onnx.Cast(%x) {to = 11} : tensor<2x3xf64>
  %keep3 = onnx.Sub(%z, %b) : tensor<"n"x3xf32>
}"#,
    ));
    let r = run("canonicalize,dce", &mut m);
    assert_eq!(r.statistics.get("canonicalize.removed-noops"), Some(7));
    let text = main_graph(&m);
    assert!(text.starts_with("graph @main(%x: tensor<2x3xf32>, %b: tensor<\"n\"x3xf32>) -> (%x as \"y\", %keep1, %keep2, %keep3)"), "{text}");
    for kept in [
        "%keep1 = onnx.Add",
        "%keep2 = onnx.Cast",
        "%keep3 = onnx.Sub",
    ] {
        assert!(text.contains(kept), "{kept} should stay:\n{text}");
    }
    for gone in ["Identity", "Transpose", "Reshape", "Mul", "Div"] {
        assert!(!text.contains(gone), "{gone} should be gone:\n{text}");
    }
}

#[test]
fn canonicalize_folds_a_shape_computation_in_one_run() {
    let mut m = parse(&body(
        r#"graph @main(%x: tensor<2x3xf32>) -> (%y) {
  %s = onnx.Shape(%x) : tensor<2xi64>
  %i = const tensor<i64> dense<[1]>
  %d = onnx.Gather(%s, %i) {axis = 0} : tensor<i64>
  %ax = const tensor<1xi64> dense<[0]>
  %u = onnx.Unsqueeze(%d, %ax) : tensor<1xi64>
  %m1 = const tensor<1xi64> dense<[-1]>
  %shape = onnx.Concat(%m1, %u) {axis = 0} : tensor<2xi64>
  %y = onnx.Reshape(%x, %shape) : tensor<2x3xf32>
}"#,
    ));
    let r = run("canonicalize", &mut m);
    assert_eq!(r.statistics.get("canonicalize.folded"), Some(4));
    assert_eq!(
        r.statistics.get("canonicalize.removed-noops"),
        Some(1),
        "the Reshape is now a no-op"
    );
    assert!(
        main_graph(&m).contains("%shape = const tensor<2xi64> dense<[-1, 3]>"),
        "{}",
        main_graph(&m)
    );
    run("dce", &mut m);
    assert_eq!(
        main_graph(&m),
        "graph @main(%x: tensor<2x3xf32>) -> (%x as \"y\") {\n}\n"
    );
}

/// Folds `expr` (one node producing `%y` from the constants `consts`) and returns the line of `%y`.
fn folded(consts: &str, expr: &str, ty: &str, opts: &str) -> String {
    let src = body(&format!(
        "graph @main() -> (%y) {{\n{consts}\n  %y = {expr} : {ty}\n}}"
    ));
    let mut m = parse(&src);
    run(&format!("canonicalize{{{opts}}}"), &mut m);
    let text = main_graph(&m);
    text.lines()
        .find(|l| l.trim_start().starts_with("%y ="))
        .map(|l| l.trim().to_string())
        .unwrap_or(text)
}

#[test]
fn folding_kernels() {
    let f32x2 =
        "  %a = const tensor<2xf32> dense<[1.5, 2.25]>\n  %b = const tensor<1xf32> dense<[0.25]>";
    assert_eq!(
        folded(f32x2, "onnx.Add(%a, %b)", "tensor<2xf32>", ""),
        "%y = const tensor<2xf32> dense<[1.75, 2.5]>"
    );
    assert_eq!(
        folded(f32x2, "onnx.Div(%a, %b)", "tensor<2xf32>", ""),
        "%y = const tensor<2xf32> dense<[6.0, 9.0]>"
    );
    assert_eq!(
        folded(f32x2, "onnx.Neg(%a)", "tensor<2xf32>", ""),
        "%y = const tensor<2xf32> dense<[-1.5, -2.25]>"
    );
    assert_eq!(
        folded(f32x2, "onnx.Sqrt(%b)", "tensor<1xf32>", ""),
        "%y = const tensor<1xf32> dense<[0.5]>"
    );
    assert_eq!(
        folded(f32x2, "onnx.Equal(%a, %b)", "tensor<2xbool>", ""),
        "%y = const tensor<2xbool> dense<[0, 0]>"
    );

    let ints = "  %a = const tensor<2xi32> dense<[7, -7]>\n  %b = const tensor<i32> dense<[2]>\n  %z = const tensor<i32> dense<[0]>";
    assert_eq!(
        folded(ints, "onnx.Div(%a, %b)", "tensor<2xi32>", ""),
        "%y = const tensor<2xi32> dense<[3, -3]>"
    );
    assert_eq!(
        folded(ints, "onnx.Mul(%a, %b)", "tensor<2xi32>", ""),
        "%y = const tensor<2xi32> dense<[14, -14]>"
    );
    assert_eq!(
        folded(ints, "onnx.Sub(%b, %a)", "tensor<2xi32>", ""),
        "%y = const tensor<2xi32> dense<[-5, 9]>"
    );
    assert!(
        folded(ints, "onnx.Div(%a, %z)", "tensor<2xi32>", "").contains("onnx.Div"),
        "integer division by zero stays"
    );

    let casts = "  %f = const tensor<3xf32> dense<[1.9, -1.9, 0.0]>\n  %big = const tensor<1xf32> dense<[3.0e9]>\n  %i = const tensor<2xi64> dense<[3, 300]>";
    assert_eq!(
        folded(casts, "onnx.Cast(%f) {to = 6}", "tensor<3xi32>", ""),
        "%y = const tensor<3xi32> dense<[1, -1, 0]>"
    );
    assert_eq!(
        folded(casts, "onnx.Cast(%f) {to = 9}", "tensor<3xbool>", ""),
        "%y = const tensor<3xbool> dense<[1, 1, 0]>"
    );
    assert!(
        folded(casts, "onnx.Cast(%big) {to = 6}", "tensor<1xi32>", "").contains("onnx.Cast"),
        "out of range stays"
    );
    assert_eq!(
        folded(casts, "onnx.Cast(%i) {to = 1}", "tensor<2xf32>", ""),
        "%y = const tensor<2xf32> dense<[3.0, 300.0]>"
    );
    assert_eq!(
        folded(casts, "onnx.Cast(%i) {to = 2}", "tensor<2xu8>", ""),
        "%y = const tensor<2xu8> dense<[3, 44]>"
    );

    let range = "  %s = const tensor<i64> dense<[0]>\n  %l = const tensor<i64> dense<[10]>\n  %d = const tensor<i64> dense<[3]>\n  %nd = const tensor<i64> dense<[-4]>";
    assert_eq!(
        folded(range, "onnx.Range(%s, %l, %d)", "tensor<4xi64>", ""),
        "%y = const tensor<4xi64> dense<[0, 3, 6, 9]>"
    );
    assert_eq!(
        folded(range, "onnx.Range(%l, %s, %nd)", "tensor<3xi64>", ""),
        "%y = const tensor<3xi64> dense<[10, 6, 2]>"
    );
    let frange = "  %s = const tensor<f32> dense<[1.0]>\n  %l = const tensor<f32> dense<[2.0]>\n  %d = const tensor<f32> dense<[0.25]>";
    assert_eq!(
        folded(frange, "onnx.Range(%s, %l, %d)", "tensor<4xf32>", ""),
        "%y = const tensor<4xf32> dense<[1.0, 1.25, 1.5, 1.75]>"
    );

    let data = "  %x = const tensor<2x3xi64> dense<[0, 1, 2, 3, 4, 5]>\n  %i = const tensor<2xi64> dense<[-1, 0]>\n  %c = const tensor<2x1xbool> dense<[1, 0]>\n  %o = const tensor<1xi64> dense<[9]>";
    assert_eq!(
        folded(
            data,
            "onnx.Gather(%x, %i) {axis = 1}",
            "tensor<2x2xi64>",
            ""
        ),
        "%y = const tensor<2x2xi64> dense<[2, 0, 5, 3]>"
    );
    assert_eq!(
        folded(
            data,
            "onnx.Gather(%x, %i) {axis = 0}",
            "tensor<2x3xi64>",
            ""
        ),
        "%y = const tensor<2x3xi64> dense<[3, 4, 5, 0, 1, 2]>"
    );
    assert_eq!(
        folded(
            data,
            "onnx.Concat(%x, %x) {axis = 1}",
            "tensor<2x6xi64>",
            ""
        ),
        "%y = const tensor<2x6xi64> dense<[0, 1, 2, 0, 1, 2, 3, 4, 5, 3, 4, 5]>"
    );
    assert_eq!(
        folded(data, "onnx.Where(%c, %x, %o)", "tensor<2x3xi64>", ""),
        "%y = const tensor<2x3xi64> dense<[0, 1, 2, 9, 9, 9]>"
    );

    let shapes = "  %x = const tensor<1x3xi64> dense<[4, 5, 6]>\n  %ax = const tensor<2xi64> dense<[0, -1]>\n  %sq = const tensor<1xi64> dense<[0]>\n  %shp = const tensor<2xi64> dense<[2, 2]>";
    assert_eq!(
        folded(shapes, "onnx.Unsqueeze(%x, %ax)", "tensor<1x1x3x1xi64>", ""),
        "%y = const tensor<1x1x3x1xi64> dense<[4, 5, 6]>"
    );
    assert_eq!(
        folded(shapes, "onnx.Squeeze(%x, %sq)", "tensor<3xi64>", ""),
        "%y = const tensor<3xi64> dense<[4, 5, 6]>"
    );
    assert_eq!(
        folded(shapes, "onnx.Squeeze(%x)", "tensor<3xi64>", ""),
        "%y = const tensor<3xi64> dense<[4, 5, 6]>"
    );
    assert_eq!(
        folded(
            shapes,
            "onnx.ConstantOfShape(%shp) {value = tensor<1xi64> dense<[7]>}",
            "tensor<2x2xi64>",
            ""
        ),
        "%y = const tensor<2x2xi64> dense<[7, 7, 7, 7]>"
    );
    assert_eq!(
        folded(shapes, "onnx.ConstantOfShape(%shp)", "tensor<2x2xf32>", ""),
        "%y = const tensor<2x2xf32> dense<[0.0, 0.0, 0.0, 0.0]>"
    );

    let slices = "  %x = const tensor<10xi64> dense<[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]>\n  %s = const tensor<1xi64> dense<[8]>\n  %e = const tensor<1xi64> dense<[1]>\n  %a = const tensor<1xi64> dense<[0]>\n  %st = const tensor<1xi64> dense<[-3]>\n  %s2 = const tensor<1xi64> dense<[-3]>\n  %big = const tensor<1xi64> dense<[9223372036854775807]>";
    assert_eq!(
        folded(
            slices,
            "onnx.Slice(%x, %s, %e, %a, %st)",
            "tensor<3xi64>",
            ""
        ),
        "%y = const tensor<3xi64> dense<[8, 5, 2]>"
    );
    assert_eq!(
        folded(slices, "onnx.Slice(%x, %s2, %big)", "tensor<3xi64>", ""),
        "%y = const tensor<3xi64> dense<[7, 8, 9]>"
    );
}

#[test]
fn folding_respects_the_budget_and_the_switch() {
    let consts = "  %a = const tensor<4xf32> dense<[1.0, 2.0, 3.0, 4.0]>\n  %b = const tensor<4xf32> dense<[1.0, 2.0, 3.0, 4.0]>";
    assert!(folded(
        consts,
        "onnx.Add(%a, %b)",
        "tensor<4xf32>",
        "max-fold-bytes=16"
    )
    .starts_with("%y = const"));
    assert!(folded(
        consts,
        "onnx.Add(%a, %b)",
        "tensor<4xf32>",
        "max-fold-bytes=15"
    )
    .contains("onnx.Add"));
    assert!(folded(consts, "onnx.Add(%a, %b)", "tensor<4xf32>", "fold=false").contains("onnx.Add"));

    let mut m = parse(&body(&format!(
        "graph @main() -> (%y) {{\n{consts}\n  %y = onnx.Mul(%a, %b) : tensor<4xf32>\n}}"
    )));
    let s = canonicalize(
        &mut m,
        &CanonicalizeOptions {
            fold: true,
            max_fold_bytes: 8,
        },
    );
    assert_eq!((s.folded, s.over_budget), (0, 1));
    let s = canonicalize(&mut m, &CanonicalizeOptions::default());
    assert_eq!((s.folded, s.folded_bytes), (1, 16));
    assert_eq!(
        canonicalize(&mut m, &CanonicalizeOptions::default()),
        Default::default(),
        "idempotent"
    );
}

#[test]
fn constant_ops_become_constants_even_without_folding() {
    let mut m = parse(&body(
        r#"graph @main() -> (%a, %b, %c) {
  %a = onnx.Constant() {value_ints = [1, 2]} : tensor<2xi64>
  %b = onnx.Constant() {value_float = 0.5} : tensor<f32>
  %c = onnx.Constant() {value = tensor<2xf32> dense<[1.0, 2.0]>} : tensor<2xf32>
}"#,
    ));
    let r = run("canonicalize{fold=false}", &mut m);
    assert_eq!(r.statistics.get("canonicalize.materialized"), Some(3));
    let text = main_graph(&m);
    assert!(
        text.contains("%a = const tensor<2xi64> dense<[1, 2]>"),
        "{text}"
    );
    assert!(
        text.contains("%b = const tensor<f32> dense<[0.5]>"),
        "{text}"
    );
    assert!(
        text.contains("%c = const tensor<2xf32> dense<[1.0, 2.0]>"),
        "{text}"
    );
}

#[test]
fn infer_shapes_refines_types() {
    let mut m = parse(&body(
        r#"graph @main(%x: tensor<"batch"x3xf32>) -> (%y) {
  %a = onnx.Neg(%x) : ?
  %y = onnx.Add(%a, %x) : ?
}"#,
    ));
    let r = run("infer-shapes", &mut m);
    assert_eq!(r.statistics.get("infer-shapes.refined"), Some(2));
    assert!(r.changed);
    assert!(
        main_graph(&m).contains("%y = onnx.Add(%a, %x) : tensor<\"batch\"x3xf32>"),
        "{}",
        main_graph(&m)
    );
    let r = run("infer-shapes", &mut m);
    assert!(!r.changed);
}

#[test]
fn cse_never_removes_a_captured_name() {
    // %b equals %a, but the then-branch captures %b by name, so it must stay defined.
    let mut m = parse(&body(
        &IF_GRAPH.replace("%b = onnx.Abs(%x)", "%b = onnx.Neg(%x)"),
    ));
    let r = run("cse", &mut m);
    assert_eq!(r.statistics.get("cse.merged"), Some(0));
    assert!(print(&m).contains("%b = onnx.Neg(%x)"));
}

#[test]
fn invalid_or_unencodable_folds_are_left_alone() {
    let c = "  %x = const tensor<3xi64> dense<[1, 2, 3]>\n  %i = const tensor<1xi64> dense<[3]>\n  %h = const tensor<2xf16> dense<\"0x003c003c\">\n  %z = const tensor<0xi64> dense<[]>\n  %s = const tensor<1xi64> dense<[0]>";
    // The verifier rejects this input, so call the pass directly: folding must not either crash
    // or invent a value for an out-of-range index.
    let mut m = parse(&body(&format!("graph @main() -> (%y) {{\n{c}\n  %y = onnx.Gather(%x, %i) {{axis = 0}} : tensor<1xi64>\n}}")));
    assert_eq!(
        canonicalize(&mut m, &CanonicalizeOptions::default()).folded,
        0
    );
    assert!(
        folded(c, "onnx.Add(%h, %h)", "tensor<2xf16>", "").contains("onnx.Add"),
        "f16 results are not encoded"
    );
    assert_eq!(
        folded(c, "onnx.Equal(%h, %h)", "tensor<2xbool>", ""),
        "%y = const tensor<2xbool> dense<[1, 1]>"
    );
    assert_eq!(
        folded(c, "onnx.Slice(%z, %s, %i)", "tensor<0xi64>", ""),
        "%y = const tensor<0xi64> dense<[]>"
    );
}

/// A refused transform's error carries the graph and node as ids (for callers) and as text (for
/// printing), and says what kind of failure it is.
#[test]
fn pass_errors_carry_graph_and_node_ids() {
    use crate::pass::PassErrorKind;
    use crate::transforms::{rotate_residual, RotateResidualOptions};
    let mut m = parse(
        r#"module {ir_version = 8, opset_import = ["" = 23]}
graph @rms(%ids: tensor<"b"x"s"xi64>) -> (%logits) {
  %E = const tensor<3x2xf32> dense<[-0.64, 0.32, -0.33, -0.60, -0.02, -0.01]>
  %w1 = const tensor<2x2xf32> dense<[-0.28, -0.20, -0.49, 0.48]>
  %wh = const tensor<2x3xf32> dense<[-0.41, -0.35, -0.35, -0.42, 0.15, 0.04]>
  %g1 = const tensor<2xf32> dense<[0.64, 0.84]>
  %h0 = onnx.Gather(%E, %ids) {axis = 0} : ?
  %n1 = onnx.RMSNormalization(%h0, %g1) {axis = -1, epsilon = 1e-5} : ?
  %a = onnx.MatMul(%n1, %w1) : ?
  %r1 = onnx.Add(%h0, %a) : ?
  %logits = onnx.MatMul(%r1, %wh) : tensor<"b"x"s"x3xf32>
}
"#,
    );
    let e = match rotate_residual(&mut m, &RotateResidualOptions::default()) {
        Ok(s) => panic!("rotated a stream with a gain: {s:?}"),
        Err(e) => e,
    };
    assert_eq!(e.kind, PassErrorKind::Unsupported);
    assert_eq!(e.graph_id, Some(m.main));
    let g = m.main_graph();
    let node = e.node_id.unwrap_or_else(|| panic!("no node in {e}"));
    assert_eq!(g.value_name(ortho_ir::ValueId { node, output: 0 }), "n1");
    assert!(
        e.to_string().starts_with(
            "graph @rms: RMSNormalization producing '%n1': kind=haar is not admitted: norm gain"
        ),
        "{e}"
    );
}

/// `lower-ortho` and the calibration driver name the graph by id as well as by name; a pass run
/// without calibration data fails with its own kind.
#[test]
fn lowering_and_calibration_errors_carry_graph_ids_and_kinds() {
    use crate::pass::PassErrorKind;
    use crate::transforms::lower_ortho;
    let mut m = parse(
        r#"module {ir_version = 8, opset_import = ["" = 17, "ortho" = 1]}
graph @unknown(%a: tensor<4xf32>) -> (%r) {
  %r = ortho.Mystery(%a) : tensor<4xf32>
}
"#,
    );
    let e = match lower_ortho(&mut m) {
        Ok(s) => panic!("lowered an op with no lowering: {s:?}"),
        Err(e) => e,
    };
    assert_eq!(
        (e.kind, e.graph_id),
        (PassErrorKind::Unsupported, Some(m.main))
    );
    let node = e.node_id.unwrap_or_else(|| panic!("no node in {e}"));
    assert_eq!(
        m.main_graph()
            .value_name(ortho_ir::ValueId { node, output: 0 }),
        "r"
    );
    // A model without transformer blocks: the walk refuses it, naming the main graph.
    let m = parse(
        r#"module {ir_version = 8, opset_import = ["" = 17]}
graph @flat(%a: tensor<4xf32>) -> (%r) {
  %r = onnx.Relu(%a) : tensor<4xf32>
}
"#,
    );
    let e = crate::calib::block_spans(&m).expect_err("no blocks to walk");
    assert_eq!(e.graph_id, Some(m.main), "{e}");
    let e = crate::calib::missing_calibration("denoise-prune");
    assert_eq!(e.kind, PassErrorKind::MissingCalibration);
    assert!(
        e.to_string()
            .starts_with("denoise-prune needs calibration data"),
        "{e}"
    );
}
