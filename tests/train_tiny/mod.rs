//! The tiny language model the `train` tests share.

/// Embedding → MLP with a tanh → logits over 8 tokens; everything is trained.
pub const TINY: &str = r#"module {ir_version = 9, opset_import = ["" = 18]}
graph @tiny(%input_ids: tensor<"b"x"s"xi64>) -> (%logits) {
  %E = const tensor<8x4xf32> dense<[0.9, -0.1, 0.3, 0.5, -0.4, 0.8, -0.6, 0.2, 0.1, 0.7, -0.9, -0.3, 0.6, -0.5, 0.2, 0.9, -0.8, -0.2, 0.4, -0.7, 0.3, 0.6, 0.8, -0.1, -0.2, -0.9, -0.5, 0.4, 0.5, 0.1, -0.3, -0.6]>
  %W1 = const tensor<4x6xf32> dense<[0.1, -0.2, 0.3, 0.0, 0.2, -0.1, 0.05, 0.15, -0.25, 0.1, 0.0, 0.3, -0.3, 0.2, 0.1, -0.1, 0.25, 0.0, 0.2, 0.0, -0.1, 0.3, -0.2, 0.1]>
  %W2 = const tensor<6x8xf32> dense<[0.01, 0.02, -0.03, 0.04, -0.05, 0.06, -0.07, 0.08, 0.02, -0.01, 0.03, 0.0, 0.05, -0.02, 0.01, -0.04, -0.03, 0.04, 0.02, -0.01, 0.0, 0.03, -0.05, 0.02, 0.04, 0.0, -0.02, 0.03, 0.01, -0.04, 0.02, 0.0, 0.0, 0.05, 0.01, -0.03, 0.02, 0.0, 0.04, -0.01, -0.02, 0.01, 0.0, 0.02, -0.03, 0.01, 0.0, 0.05]>
  %b2 = const tensor<8xf32> dense<[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]>
  %h = onnx.Gather(%E, %input_ids) {axis = 0} : ?
  %a = onnx.MatMul(%h, %W1) : ?
  %t = onnx.Tanh(%a) : ?
  %o = onnx.MatMul(%t, %W2) : ?
  %logits = onnx.Add(%o, %b2) : tensor<"b"x"s"x8xf32>
}
"#;
