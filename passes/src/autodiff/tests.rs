//! Structural tests of the autodiff transformation (numeric gradient checks against finite
//! differences run on the engine, in the workspace's `tests/autodiff_grad*.rs`).

use super::*;
use ortho_ir::text::parse_module;

fn module(src: &str) -> Module {
    parse_module(src).expect("test module parses")
}

const MLP: &str = r#"module {ir_version = 8, opset_import = ["" = 18]}
graph @g(%x: tensor<2x3xf32>, %w: tensor<3x4xf32>, %u: tensor<4x2xf32>, %k: tensor<2x3xf32>) -> (%loss) {
  %h = onnx.MatMul(%x, %w) : ?
  %a = onnx.Relu(%h) : ?
  %o = onnx.MatMul(%a, %u) : ?
  %side = onnx.Mul(%k, %x) : ?
  %sq = onnx.Mul(%o, %o) : ?
  %loss = onnx.ReduceSum(%sq) {keepdims = 0} : ?
}
"#;

#[test]
fn gradients_become_outputs_and_verify() {
    let mut m = module(MLP);
    let r = autodiff(
        &mut m,
        &AutodiffSpec {
            loss: "loss".into(),
            trainable: vec!["w".into(), "u".into()],
        },
    )
    .expect("differentiates");
    assert_eq!(
        r.grads,
        vec![
            ("w".to_string(), "w_grad".to_string()),
            ("u".to_string(), "u_grad".to_string())
        ]
    );
    let names: Vec<&str> = m
        .main_graph()
        .outputs
        .iter()
        .map(|o| o.name.as_str())
        .collect();
    assert_eq!(names, ["loss", "w_grad", "u_grad"]);
    let diags = ortho_ir::verify::verify_module(&m);
    assert!(diags.is_ok(), "{diags:?}");
    // Gradient shapes are inferred equal to the parameters'.
    let g = m.main_graph();
    for o in &g.outputs[1..] {
        let p = o.name.trim_end_matches("_grad");
        let pv = g.value_names()[p];
        assert_eq!(g.value_type(o.value), g.value_type(pv), "{}", o.name);
    }
}

#[test]
fn values_not_depending_on_parameters_get_no_gradient_ops() {
    let mut m = module(MLP);
    autodiff(
        &mut m,
        &AutodiffSpec {
            loss: "loss".into(),
            trainable: vec!["u".into()],
        },
    )
    .expect("differentiates");
    let g = m.main_graph();
    // Only u is trainable: nothing upstream of the second MatMul (x·w, Relu, the unused side
    // product) is differentiated, so no node reads the first MatMul's operands for a gradient.
    let names: Vec<String> = g
        .node_ids()
        .into_iter()
        .flat_map(|n| g.node(n).outputs.iter().map(|o| o.name.clone()))
        .filter(|s| s.starts_with("grad/"))
        .collect();
    assert!(!names.is_empty());
    for bad in ["grad/h/", "grad/a/", "grad/side/"] {
        assert!(
            names.iter().all(|n| !n.starts_with(bad)),
            "{bad} in {names:?}"
        );
    }
}

#[test]
fn every_missing_rule_is_reported_at_once_and_nothing_changes() {
    let src = r#"module {ir_version = 8, opset_import = ["" = 18]}
graph @g(%x: tensor<2x4xf32>, %w: tensor<4x4xf32>, %s: tensor<4xf32>) -> (%loss) {
  %h = onnx.MatMul(%x, %w) : ?
  %c = onnx.Cos(%h) : ?
  %m = onnx.ReduceMax(%c) {keepdims = 0} : ?
  %t = onnx.Sin(%h) : ?
  %ts = onnx.ReduceSum(%t) {keepdims = 0} : ?
  %loss = onnx.Add(%m, %ts) : ?
}
"#;
    let mut m = module(src);
    let before = ortho_ir::text::print_module(&m, Default::default());
    let err = autodiff(
        &mut m,
        &AutodiffSpec {
            loss: "loss".into(),
            trainable: vec!["w".into()],
        },
    )
    .expect_err("Cos, ReduceMax and Sin have no rule");
    let AutodiffError::Missing(list) = &err else {
        panic!("expected Missing, got {err}");
    };
    let ops: Vec<&str> = list.0.iter().map(|m| m.op.as_str()).collect();
    assert_eq!(ops, ["Cos", "ReduceMax", "Sin"]);
    let text = err.to_string();
    assert!(
        text.starts_with("ops without a gradient rule: Cos, ReduceMax, Sin"),
        "{text}"
    );
    assert_eq!(ortho_ir::text::print_module(&m, Default::default()), before);
}

#[test]
fn bad_specs_are_typed_errors() {
    let spec = |loss: &str, t: &str| AutodiffSpec {
        loss: loss.into(),
        trainable: vec![t.into()],
    };
    let mut m = module(MLP);
    assert_eq!(
        autodiff(&mut m, &spec("nope", "w")),
        Err(AutodiffError::NoLoss("nope".into()))
    );
    assert!(matches!(
        autodiff(&mut m, &spec("h", "w")),
        Err(AutodiffError::LossNotScalar { .. })
    ));
    assert_eq!(
        autodiff(&mut m, &spec("loss", "zz*")),
        Err(AutodiffError::NoTrainable(vec!["zz*".into()]))
    );
    assert_eq!(
        autodiff(&mut m, &spec("loss", "k")),
        Err(AutodiffError::LossIndependent("loss".into()))
    );
}

#[test]
fn glob_patterns() {
    assert!(glob_match(
        "model.layers.*.mlp.*",
        "model.layers.3.mlp.up_proj.weight"
    ));
    assert!(glob_match("*", "anything"));
    assert!(glob_match("a*b*c", "abc"));
    assert!(!glob_match("a*b*c", "acb"));
    assert!(!glob_match("w", "w2"));
    assert!(glob_match("*.weight", "x.weight"));
    assert!(!glob_match("ab*ba", "aba"));
}
