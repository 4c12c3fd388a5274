//! Tests of shape inference, written as `.oir` text: the shapes SmolLM2's decomposed and fused
//! exports need, symbolic broadcasting, shape computations that resolve through the value side
//! table, control flow, conflicts, and write-back.

use super::*;
use crate::text::parse_module;

fn module(body: &str) -> Module {
    let src = format!("module {{opset_import = [\"\" = 23]}}\n{body}");
    parse_module(&src).unwrap_or_else(|e| panic!("parse error {e} in\n{src}"))
}

/// Inferred types of the main graph's values, printed, by value name.
fn infer(body: &str) -> (HashMap<String, String>, Diagnostics) {
    let m = module(body);
    let r = infer_graph(
        &m,
        m.main,
        &Scope::new(),
        InferOptions {
            subgraphs: true,
            conditional: false,
        },
    );
    let g = m.main_graph();
    let names = g
        .value_names()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                r.types.get(&v).map(|t| t.to_string()).unwrap_or_default(),
            )
        })
        .collect();
    (names, r.all_diags())
}

/// Inference must succeed without diagnostics; returns the printed types.
fn ok(body: &str) -> HashMap<String, String> {
    let (t, d) = infer(body);
    assert!(d.is_empty(), "unexpected diagnostics:\n{d}");
    t
}

fn check(types: &HashMap<String, String>, expect: &[(&str, &str)]) {
    for (name, ty) in expect {
        assert_eq!(
            types.get(*name).map(String::as_str),
            Some(*ty),
            "type of %{name}"
        );
    }
}

#[test]
fn decomposed_prologue_resolves_symbolically() {
    // The shared part of decomposed.onnx: sizes from Shape, positions, the causal mask.
    let t = ok(
        r#"graph @main(%ids: tensor<"batch"x"seq"xi64>) -> (%mask, %h) {
  %emb = const tensor<100x8xf32> elided<"00000000000000aa", 3200>
  %c0 = const tensor<1xi64> dense<[0]>
  %c1 = const tensor<1xi64> dense<[1]>
  %c2 = const tensor<1xi64> dense<[2]>
  %zero = const tensor<i64> dense<[0]>
  %one = const tensor<i64> dense<[1]>
  %neg = const tensor<f32> dense<[-3.4e38]>
  %zf = const tensor<f32> dense<[0.0]>
  %shape = onnx.Shape(%ids) : ?
  %B = onnx.Slice(%shape, %c0, %c1) : ?
  %S = onnx.Slice(%shape, %c1, %c2) : ?
  %s = onnx.Squeeze(%S, %c0) : ?
  %pos = onnx.Range(%zero, %s, %one) : ?
  %posf = onnx.Cast(%pos) {to = 1} : ?
  %row = onnx.Unsqueeze(%pos, %c1) : ?
  %col = onnx.Unsqueeze(%pos, %c0) : ?
  %fut = onnx.Greater(%col, %row) : ?
  %mask = onnx.Where(%fut, %neg, %zf) : ?
  %h = onnx.Gather(%emb, %ids) {axis = 0} : ?
  %BS = onnx.Concat(%B, %S) {axis = 0} : ?
  %pid = onnx.Expand(%col, %BS) : ?
}"#,
    );
    check(
        &t,
        &[
            ("shape", "tensor<2xi64>"),
            ("s", "tensor<i64>"),
            ("pos", r#"tensor<"seq"xi64>"#),
            ("posf", r#"tensor<"seq"xf32>"#),
            ("mask", r#"tensor<"seq"x"seq"xf32>"#),
            ("fut", r#"tensor<"seq"x"seq"xbool>"#),
            ("h", r#"tensor<"batch"x"seq"x8xf32>"#),
            ("pid", r#"tensor<"batch"x"seq"xi64>"#),
        ],
    );
}

#[test]
fn decomposed_attention_block() {
    // GQA through a 5-D broadcasting MatMul, as decomposed.onnx builds it (9 query / 3 KV heads).
    let t = ok(
        r#"graph @main(%x: tensor<"batch"x"seq"x576xf32>, %mask: tensor<"seq"x"seq"xf32>) -> (%out) {
  %wq = const tensor<576x576xf32> elided<"0000000000000001", 1327104>
  %wk = const tensor<576x192xf32> elided<"0000000000000002", 442368>
  %q5s = const tensor<5xi64> dense<[0, 0, 3, 3, 64]>
  %kv4s = const tensor<4xi64> dense<[0, 0, 3, 64]>
  %o3s = const tensor<3xi64> dense<[0, 0, 576]>
  %half = const tensor<2xi64> dense<[32, 32]>
  %c2 = const tensor<1xi64> dense<[2]>
  %q = onnx.MatMul(%x, %wq) : ?
  %k = onnx.MatMul(%x, %wk) : ?
  %qr = onnx.Reshape(%q, %q5s) : ?
  %q5 = onnx.Transpose(%qr) {perm = [0, 2, 3, 1, 4]} : ?
  %kr = onnx.Reshape(%k, %kv4s) : ?
  %k4 = onnx.Transpose(%kr) {perm = [0, 2, 1, 3]} : ?
  %x1, %x2 = onnx.Split(%q5, %half) {axis = -1} : ?, ?
  %nx2 = onnx.Neg(%x2) : ?
  %rot = onnx.Concat(%nx2, %x1) {axis = -1} : ?
  %kt = onnx.Transpose(%k4) {perm = [0, 1, 3, 2]} : ?
  %k5t = onnx.Unsqueeze(%kt, %c2) : ?
  %qk = onnx.MatMul(%rot, %k5t) : ?
  %m = onnx.Add(%qk, %mask) : ?
  %p = onnx.Softmax(%m) {axis = -1} : ?
  %v5 = onnx.Unsqueeze(%k4, %c2) : ?
  %o5 = onnx.MatMul(%p, %v5) : ?
  %ot = onnx.Transpose(%o5) {perm = [0, 3, 1, 2, 4]} : ?
  %out = onnx.Reshape(%ot, %o3s) : ?
}"#,
    );
    check(
        &t,
        &[
            ("q", r#"tensor<"batch"x"seq"x576xf32>"#),
            ("q5", r#"tensor<"batch"x3x3x"seq"x64xf32>"#),
            ("x1", r#"tensor<"batch"x3x3x"seq"x32xf32>"#),
            ("rot", r#"tensor<"batch"x3x3x"seq"x64xf32>"#),
            ("k5t", r#"tensor<"batch"x3x1x64x"seq"xf32>"#),
            ("qk", r#"tensor<"batch"x3x3x"seq"x"seq"xf32>"#),
            ("p", r#"tensor<"batch"x3x3x"seq"x"seq"xf32>"#),
            ("o5", r#"tensor<"batch"x3x3x"seq"x64xf32>"#),
            ("out", r#"tensor<"batch"x"seq"x576xf32>"#),
        ],
    );
}

#[test]
fn rmsnorm_decomposed_and_fused() {
    let t = ok(
        r#"graph @main(%x: tensor<"batch"x"seq"x576xf32>, %w: tensor<576xf32>) -> (%y, %z, %r18) {
  %eps = const tensor<f32> dense<[1e-5]>
  %axes = const tensor<1xi64> dense<[-1]>
  %sq = onnx.Mul(%x, %x) : ?
  %ms = onnx.ReduceMean(%sq) {axes = [-1], keepdims = 1} : ?
  %r18 = onnx.ReduceMean(%sq, %axes) {keepdims = 0} : ?
  %a = onnx.Add(%ms, %eps) : ?
  %rt = onnx.Sqrt(%a) : ?
  %d = onnx.Div(%x, %rt) : ?
  %y = onnx.Mul(%d, %w) : ?
  %z = onnx.RMSNormalization(%x, %w) {axis = -1, epsilon = 1e-5} : ?
}"#,
    );
    check(
        &t,
        &[
            ("ms", r#"tensor<"batch"x"seq"x1xf32>"#),
            ("r18", r#"tensor<"batch"x"seq"xf32>"#),
            ("y", r#"tensor<"batch"x"seq"x576xf32>"#),
            ("z", r#"tensor<"batch"x"seq"x576xf32>"#),
        ],
    );
}

#[test]
fn fused_attention_gqa_shapes() {
    let t = ok(
        r#"graph @main(%q: tensor<"batch"x"seq"x576xf32>, %k: tensor<"batch"x"seq"x192xf32>, %v: tensor<"batch"x"seq"x192xf32>, %cos: tensor<"seq"x32xf32>, %sin: tensor<"seq"x32xf32>, %pid: tensor<"batch"x"seq"xi64>) -> (%y, %pk) {
  %qr = onnx.RotaryEmbedding(%q, %cos, %sin, %pid) {num_heads = 9} : ?
  %kr = onnx.RotaryEmbedding(%k, %cos, %sin, %pid) {num_heads = 3} : ?
  %y, %pk, %pv, %qk = onnx.Attention(%qr, %kr, %v) {is_causal = 1, q_num_heads = 9, kv_num_heads = 3, scale = 0.125} : ?, ?, ?, ?
}"#,
    );
    check(
        &t,
        &[
            ("qr", r#"tensor<"batch"x"seq"x576xf32>"#),
            ("y", r#"tensor<"batch"x"seq"x576xf32>"#),
            ("pk", r#"tensor<"batch"x3x"seq"x64xf32>"#),
            ("pv", r#"tensor<"batch"x3x"seq"x64xf32>"#),
            ("qk", r#"tensor<"batch"x9x"seq"x"seq"xf32>"#),
        ],
    );
}

#[test]
fn attention_4d_with_past_and_bad_heads() {
    let t = ok(
        r#"graph @main(%q: tensor<2x9x5x64xf16>, %k: tensor<2x3x5x64xf16>, %v: tensor<2x3x5x32xf16>, %pk: tensor<2x3x10x64xf16>, %pv: tensor<2x3x10x32xf16>) -> (%y) {
  %y, %nk, %nv = onnx.Attention(%q, %k, %v, _, %pk, %pv) : ?, ?, ?
}"#,
    );
    check(
        &t,
        &[
            ("y", "tensor<2x9x5x32xf16>"),
            ("nk", "tensor<2x3x15x64xf16>"),
            ("nv", "tensor<2x3x15x32xf16>"),
        ],
    );
    let (_, d) = infer(
        r#"graph @main(%q: tensor<1x4x8xf32>, %k: tensor<1x4x6xf32>) -> (%y) {
  %y = onnx.Attention(%q, %k, %k) {q_num_heads = 4, kv_num_heads = 3} : ?
}"#,
    );
    assert_eq!(d.0.len(), 1, "{d}");
    assert_eq!(d.0[0].kind, DiagKind::Shape, "{d}");
    assert!(d.0[0].message.contains("not a multiple"), "{d}");
}

#[test]
fn reshape_with_minus_one_and_zero() {
    let t = ok(
        r#"graph @main(%x: tensor<"b"x"s"x576xf32>, %y: tensor<2x3x4xf32>, %y0: tensor<2x0x4xf32>) -> (%a, %b, %c, %d) {
  %s1 = const tensor<4xi64> dense<[0, 0, -1, 64]>
  %s2 = const tensor<2xi64> dense<[-1, 576]>
  %s3 = const tensor<2xi64> dense<[0, -1]>
  %s4 = const tensor<3xi64> dense<[4, 0, 2]>
  %a = onnx.Reshape(%x, %s1) : ?
  %b = onnx.Reshape(%x, %s2) : ?
  %c = onnx.Reshape(%y, %s3) : ?
  %d = onnx.Reshape(%y0, %s4) {allowzero = 1} : ?
}"#,
    );
    check(
        &t,
        &[
            ("a", r#"tensor<"b"x"s"x9x64xf32>"#),
            ("b", "tensor<?x576xf32>"),
            ("c", "tensor<2x12xf32>"),
            ("d", "tensor<4x0x2xf32>"),
        ],
    );
    let (_, d) = infer(
        r#"graph @main(%y: tensor<2x3x4xf32>) -> (%a) {
  %s = const tensor<2xi64> dense<[5, -1]>
  %a = onnx.Reshape(%y, %s) : ? loc("/bad/Reshape")
}"#,
    );
    assert_eq!(d.0.len(), 1, "{d}");
    assert_eq!(d.0[0].node, "Reshape '/bad/Reshape'");
}

#[test]
fn reshape_target_from_shape_computation() {
    // A torch-style target: Concat(Shape(x)[0:2], [9, 64]), with a Gather of a scalar too.
    let t = ok(
        r#"graph @main(%x: tensor<"batch"x"seq"x576xf32>) -> (%r, %n) {
  %c0 = const tensor<1xi64> dense<[0]>
  %c2 = const tensor<1xi64> dense<[2]>
  %tail = const tensor<2xi64> dense<[9, 64]>
  %i1 = const tensor<i64> dense<[1]>
  %sh = onnx.Shape(%x) : ?
  %bs = onnx.Slice(%sh, %c0, %c2) : ?
  %tgt = onnx.Concat(%bs, %tail) {axis = 0} : ?
  %r = onnx.Reshape(%x, %tgt) : ?
  %seq = onnx.Gather(%sh, %i1) {axis = 0} : ?
  %seq1 = onnx.Unsqueeze(%seq, %c0) : ?
  %tgt2 = onnx.Concat(%seq1, %tail) {axis = 0} : ?
  %fill = onnx.ConstantOfShape(%tgt2) {value = tensor<1xf32> dense<[0.0]>} : ?
  %n = onnx.Shape(%x) {start = -1} : ?
}"#,
    );
    check(
        &t,
        &[
            ("r", r#"tensor<"batch"x"seq"x9x64xf32>"#),
            ("seq", "tensor<i64>"),
            ("fill", r#"tensor<"seq"x9x64xf32>"#),
            ("n", "tensor<1xi64>"),
        ],
    );
}

#[test]
fn broadcasting_with_symbols() {
    let t = ok(
        r#"graph @main(%a: tensor<"b"x1x"s"xf32>, %b: tensor<"s"xf32>, %c: tensor<"b"x7x1xf32>, %d: tensor<"t"xf32>) -> (%x, %y, %z) {
  %x = onnx.Add(%a, %b) : ?
  %y = onnx.Mul(%a, %c) : ?
  %z = onnx.Sub(%x, %d) : ?
  %w = onnx.Less(%a, %c) : ?
}"#,
    );
    check(
        &t,
        &[
            ("x", r#"tensor<"b"x1x"s"xf32>"#),
            ("y", r#"tensor<"b"x7x"s"xf32>"#),
            ("z", r#"tensor<"b"x1x?xf32>"#),
            ("w", r#"tensor<"b"x7x"s"xbool>"#),
        ],
    );
    let (_, d) = infer(
        r#"graph @main(%a: tensor<3x4xf32>, %b: tensor<5x4xf32>) -> (%x) {
  %x = onnx.Add(%a, %b) : ?
}"#,
    );
    assert_eq!(d.0.len(), 1, "{d}");
}

#[test]
fn slices_clamp_and_count_from_the_end() {
    let t = ok(r#"graph @main(%x: tensor<10x"s"x8xf32>) -> (%a, %b, %c) {
  %s1 = const tensor<2xi64> dense<[-3, 0]>
  %e1 = const tensor<2xi64> dense<[100, 9223372036854775807]>
  %ax = const tensor<2xi64> dense<[0, 1]>
  %a = onnx.Slice(%x, %s1, %e1, %ax) : ?
  %s2 = const tensor<1xi64> dense<[-1]>
  %e2 = const tensor<1xi64> dense<[-9223372036854775807]>
  %st = const tensor<1xi64> dense<[-2]>
  %a2 = const tensor<1xi64> dense<[2]>
  %b = onnx.Slice(%x, %s2, %e2, %a2, %st) : ?
  %s3 = const tensor<1xi64> dense<[1]>
  %e3 = const tensor<1xi64> dense<[3]>
  %c = onnx.Slice(%x, %s3, %e3) : ?
}"#);
    check(
        &t,
        &[
            ("a", r#"tensor<3x"s"x8xf32>"#),
            ("b", r#"tensor<10x"s"x4xf32>"#),
            ("c", r#"tensor<2x"s"x8xf32>"#),
        ],
    );
}

#[test]
fn split_reduce_gemm_einsum_and_friends() {
    let t = ok(
        r#"graph @main(%x: tensor<"b"x12x6xf32>, %a: tensor<4x3xf32>, %w: tensor<5x3xf32>, %p: tensor<"b"x3x4xf32>, %q: tensor<"b"x4x7xf32>, %i: tensor<"b"x5xi64>, %i3: tensor<"b"x5x6xi64>) -> (%g) {
  %p1, %p2, %p3 = onnx.Split(%x) {axis = 1, num_outputs = 3} : ?, ?, ?
  %sz = const tensor<2xi64> dense<[2, 4]>
  %q1, %q2 = onnx.Split(%x, %sz) {axis = -1} : ?, ?
  %r = onnx.ReduceSum(%x) {keepdims = 0} : ?
  %g = onnx.Gemm(%a, %w) {transB = 1} : ?
  %e = onnx.Einsum(%p, %q) {equation = "bij,bjk->bik"} : ?
  %e2 = onnx.Einsum(%p) {equation = "...ij"} : ?
  %e3 = onnx.Einsum(%p, %q) {equation = "bij,bjk"} : ?
  %ln, %mean, %inv = onnx.LayerNormalization(%x, %w) {axis = -1} : ?, ?, ?
  %k = const tensor<1xi64> dense<[2]>
  %tv, %ti = onnx.TopK(%x, %k) {axis = 1} : ?, ?
  %am = onnx.ArgMax(%x) {axis = -1, keepdims = 0} : ?
  %fl = onnx.Flatten(%x) {axis = 1} : ?
  %reps = const tensor<3xi64> dense<[1, 2, 3]>
  %ti3 = onnx.Tile(%x, %reps) : ?
  %pads = const tensor<6xi64> dense<[0, 1, 0, 0, 1, 2]>
  %pd = onnx.Pad(%x, %pads) : ?
  %depth = const tensor<i64> dense<[10]>
  %vals = const tensor<2xf32> dense<[0.0, 1.0]>
  %oh = onnx.OneHot(%i, %depth, %vals) : ?
  %cs = onnx.CumSum(%x, %depth) : ?
  %nz = onnx.NonZero(%x) : ?
  %sz2 = onnx.Size(%x) : ?
  %ge = onnx.GatherElements(%x, %i3) : ?
  %tr = onnx.Trilu(%x) : ?
}"#,
    );
    check(
        &t,
        &[
            ("p1", r#"tensor<"b"x4x6xf32>"#),
            ("p3", r#"tensor<"b"x4x6xf32>"#),
            ("q2", r#"tensor<"b"x12x4xf32>"#),
            ("r", "tensor<f32>"),
            ("g", "tensor<4x5xf32>"),
            ("e", r#"tensor<"b"x3x7xf32>"#),
            ("e2", r#"tensor<"b"x3x4xf32>"#),
            // Implicit output: labels used once (i, k), in alphabetical order; b is summed.
            ("e3", "tensor<3x7xf32>"),
            ("ln", r#"tensor<"b"x12x6xf32>"#),
            ("mean", r#"tensor<"b"x12x1xf32>"#),
            ("tv", r#"tensor<"b"x2x6xf32>"#),
            ("ti", r#"tensor<"b"x2x6xi64>"#),
            ("am", r#"tensor<"b"x12xi64>"#),
            ("fl", r#"tensor<"b"x72xf32>"#),
            ("ti3", r#"tensor<"b"x24x18xf32>"#),
            ("pd", r#"tensor<"b"x14x8xf32>"#),
            ("oh", r#"tensor<"b"x5x10xf32>"#),
            ("cs", r#"tensor<"b"x12x6xf32>"#),
            ("nz", "tensor<3x?xi64>"),
            ("sz2", "tensor<i64>"),
            ("ge", r#"tensor<"b"x5x6xf32>"#),
            ("tr", r#"tensor<"b"x12x6xf32>"#),
        ],
    );
}

#[test]
fn matmul_conflict_names_the_node() {
    let (_, d) = infer(
        r#"graph @main(%x: tensor<"b"x576xf32>) -> (%y) {
  %w = const tensor<576x1536xf32> elided<"0000000000000003", 3538944>
  %y = onnx.MatMul(%x, %w) : tensor<"b"x1000xf32> loc("/mlp/up")
}"#,
    );
    assert_eq!(d.0.len(), 1, "{d}");
    assert_eq!(d.0[0].node, "MatMul '/mlp/up'");
    assert_eq!(d.0[0].kind, DiagKind::Shape, "{d}");
    assert!(d.0[0].message.contains("result %y"), "{d}");
    let (_, d) = infer(
        r#"graph @main(%x: tensor<"b"x500xf32>) -> (%y) {
  %w = const tensor<576x1536xf32> elided<"0000000000000003", 3538944>
  %y = onnx.MatMul(%x, %w) : ?
}"#,
    );
    assert!(
        d.0.len() == 1 && d.0[0].message.contains("inner dimensions"),
        "{d}"
    );
}

/// Each rule failure is a diagnostic of the kind its [`ShapeError`] names, at its node of its
/// graph, printed as the rule's message.
#[test]
fn rule_failures_carry_kind_graph_and_node() {
    let m = module(
        r#"graph @main(%x: tensor<2x3xf32>, %i: tensor<2xi64>) -> (%a) {
  %a = onnx.MatMul(%x, %x) : ? loc("mm")
  %b = onnx.Concat(%x, %x) : ? loc("cat")
  %c = onnx.Transpose(%x) {perm = [0, 0]} : ? loc("tr")
  %d = onnx.Add(%x, %i) : ? loc("add")
}"#,
    );
    let r = infer_graph(&m, m.main, &Scope::new(), InferOptions::default());
    let g = m.main_graph();
    let by_loc = |loc: &str| {
        r.diags
            .0
            .iter()
            .find(|d| d.node.ends_with(&format!("'{loc}'")))
            .unwrap_or_else(|| panic!("no diagnostic at {loc}:\n{}", r.diags))
    };
    for (loc, kind, text) in [
        (
            "mm",
            DiagKind::Shape,
            "inner dimensions differ (3 vs 2): [2, 3] × [2, 3]",
        ),
        ("cat", DiagKind::Attribute, "Concat has no 'axis' attribute"),
        (
            "tr",
            DiagKind::Attribute,
            "perm [0, 0] is not a permutation of 0..2",
        ),
    ] {
        let d = by_loc(loc);
        assert_eq!((d.kind, d.message.as_str()), (kind, text));
        assert_eq!(d.graph_id, Some(m.main));
        let n = d.node_id.expect("a rule failure names its node");
        assert!(g.describe(n).ends_with(&format!("'{loc}'")));
    }
    // The broadcast failure is the typed `Broadcast` error, printed as it always was.
    let e = ShapeError::Broadcast {
        a: "[2, 3]".into(),
        b: "[2]".into(),
        x: 3,
        y: 2,
    };
    assert_eq!(e.diag_kind(), DiagKind::Shape);
    assert_eq!(by_loc("add").message, format!("{e}"), "{}", r.diags);
}

#[test]
fn infer_shapes_refines_in_place_without_losing_precision() {
    let mut m = module(
        r#"graph @main(%x: tensor<"b"x4xf32>) -> (%z) {
  %y = onnx.Relu(%x) : tensor<7x?xf32>
  %z = onnx.Neg(%y) : ?
  %u = op<"com.example", "Mystery">(%z) : tensor<3xf32>
}"#,
    );
    let stats = infer_shapes(&mut m);
    assert!(stats.diags.is_empty(), "{}", stats.diags);
    let g = m.main_graph();
    let names = g.value_names();
    let ty = |n: &str| {
        names
            .get(n)
            .map(|v| g.value_type(*v).to_string())
            .unwrap_or_default()
    };
    // The declared 7 is more precise than the symbol "b" and stays; ? becomes 4.
    assert_eq!(ty("y"), "tensor<7x4xf32>");
    assert_eq!(ty("z"), "tensor<7x4xf32>");
    assert_eq!(ty("u"), "tensor<3xf32>");
    assert_eq!(stats.refined, 2);
    assert_eq!(stats.graphs, 1);
    let again = infer_shapes(&mut m);
    assert_eq!(again.refined, 0);
}

#[test]
fn if_branches_and_captures() {
    let t = ok(
        r#"graph @main(%c: tensor<bool>, %x: tensor<"b"x4xf32>) -> (%r) {
  %r = onnx.If(%c) {then_branch = graph @then() -> (%t) {
    %x = capture : ?
    %t = onnx.Relu(%x) : ?
  }, else_branch = graph @else() -> (%e) {
    %x = capture : ?
    %e = onnx.Neg(%x) : ?
  }} : ?
}"#,
    );
    check(&t, &[("r", r#"tensor<"b"x4xf32>"#)]);
}

#[test]
fn opaque_ops_and_unknown_operands_stay_unknown() {
    let t = ok(r#"graph @main(%x: ?) -> (%z) {
  %y = op<"com.example", "Mystery">(%x) : ?
  %z = onnx.MatMul(%y, %y) : ?
  %w = onnx.Cast(%x) {to = 10} : ?
}"#);
    check(&t, &[("y", "?"), ("z", "?"), ("w", "tensor<*xf16>")]);
}

#[test]
fn malformed_nodes_give_diagnostics_not_panics() {
    let src = r#"graph @main(%x: tensor<2x3xf32>, %n: tensor<4611686018427387904x9223372036854775807xf32>, %i: tensor<2xi64>) -> (%a) {
  %big = const tensor<2xi64> dense<[9223372036854775807, -9223372036854775808]>
  %neg = const tensor<1xi64> dense<[-9223372036854775808]>
  %zero = const tensor<1xi64> dense<[0]>
  %a = onnx.Transpose(%x) {perm = [0, 0]} : ?
  %b = onnx.Transpose(%x) {perm = [-9223372036854775808, 1]} : ?
  %c = onnx.Concat(%x, %x) {axis = -9223372036854775808} : ?
  %d = onnx.Gather(%n, %i) {axis = 0} : ?
  %e = onnx.Squeeze(%x, %neg) : ?
  %f = onnx.Unsqueeze(%x, %big) : ?
  %g = onnx.Reshape(%n, %big) : ?
  %h = onnx.Split(%n) {axis = 1, num_outputs = 3} : ?
  %j = onnx.Slice(%x, %neg, %big, %zero, %zero) : ?
  %k = onnx.Range(%neg, %big, %zero) : ?
  %l = onnx.Einsum(%x) {equation = "i,j->k"} : ?
  %m, %m2 = onnx.TopK(%x, %neg) : ?, ?
  %o = onnx.Tile(%n, %big) : ?
  %p = onnx.Flatten(%n) {axis = 9} : ?
  %q = onnx.Expand(%x, %big) : ?
  %r = onnx.ConstantOfShape(%big) : ?
  %s = onnx.Attention(%x, %x, %x) : ?
  %t = onnx.Pad(%n, %big) : ?
  %u = onnx.Cast(%x) : ?
  %v = onnx.GatherND(%x, %big) {batch_dims = 5} : ?
  %w = onnx.OneHot(%i, %neg, %x) {axis = 7} : ?
  %y = onnx.ReduceSum(%x, %big) : ?
  %z = onnx.Shape(%n) {start = -9223372036854775808, end = 9223372036854775807} : ?
}"#;
    let mut m = module(src);
    let errs = crate::verify::verify_module(&m).err().unwrap_or_default();
    // Every node above except %z is malformed; each must be reported against its own node.
    for name in [
        "%a", "%b", "%c", "%e", "%f", "%j", "%k", "%l", "%m", "%p", "%r", "%s", "%u", "%v", "%w",
        "%y",
    ] {
        assert!(
            errs.0
                .iter()
                .any(|d| d.node.ends_with(&format!("'{name}'"))),
            "no diagnostic for {name}:\n{errs}"
        );
    }
    let stats = infer_shapes(&mut m);
    assert!(!stats.diags.is_empty());
}

#[test]
fn problems_in_if_branches_are_warnings() {
    // The then-branch only works for 6-element inputs; the condition may exist to avoid it.
    let src = r#"graph @main(%c: tensor<bool>, %x: tensor<2x4xf32>) -> (%r) {
  %r = onnx.If(%c) {then_branch = graph @then() -> (%t) {
    %x = capture : ?
    %s = const tensor<2xi64> dense<[3, 2]>
    %t = onnx.Reshape(%x, %s) : ?
  }, else_branch = graph @else() -> (%e) {
    %x = capture : ?
    %e = onnx.Neg(%x) : ?
  }} : ?
}"#;
    let m = module(src);
    let r = infer_graph(
        &m,
        m.main,
        &Scope::new(),
        InferOptions {
            subgraphs: true,
            conditional: false,
        },
    );
    assert!(r.all_diags().is_empty(), "{}", r.all_diags());
    assert_eq!(r.all_warnings().0.len(), 1, "{}", r.all_warnings());
    assert_eq!(crate::verify::verify_module(&m), Ok(()));
}

#[test]
fn flatten_counts_negative_axes_from_the_end() {
    let t = ok(r#"graph @main(%x: tensor<2x3x4x5xf32>) -> (%a, %b, %c) {
  %a = onnx.Flatten(%x) {axis = -1} : ?
  %b = onnx.Flatten(%x) {axis = 0} : ?
  %c = onnx.Flatten(%x) {axis = 4} : ?
}"#);
    check(
        &t,
        &[
            ("a", "tensor<24x5xf32>"),
            ("b", "tensor<1x120xf32>"),
            ("c", "tensor<120x1xf32>"),
        ],
    );
}

#[test]
fn containers_refine_their_elements() {
    let d = Type::Sequence(Box::new(Type::Tensor(crate::types::TensorType {
        dtype: DType::F32,
        shape: None,
    })));
    let i = Type::Sequence(Box::new(Type::tensor(DType::F32, vec![Dim::Fixed(5)])));
    assert_eq!(dims::refine(&d, &i), (i.clone(), None));
    let bad = Type::Sequence(Box::new(Type::tensor(DType::I64, vec![Dim::Fixed(5)])));
    assert!(dims::refine(&i, &bad).1.is_some());
}
