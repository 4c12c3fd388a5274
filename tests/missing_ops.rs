//! A model with several ops the engine has no kernel for is refused at plan compile, before any
//! work, with every missing op type named (not only the first), through the API and the CLI
//! (`run`; `eval` and `compare` compile the same way before their first window).

mod common;

use common::{python, run, TempDir};
use ortho_codegen::cpu::{Plan, RuntimeError};

/// An ONNX model `y = MaxPool(Conv(x, w)) + LpNormalization(x')` in which three op types lack a
/// kernel (Conv twice), written by the fixtures' onnx.
const MAKE: &str = r#"
import sys, numpy as np, onnx
from onnx import helper as h, TensorProto as T
w = h.make_tensor("w", T.FLOAT, [1, 1, 1, 1], [2.0])
nodes = [
    h.make_node("Conv", ["x", "w"], ["c"]),
    h.make_node("Conv", ["c", "w"], ["c2"]),
    h.make_node("MaxPool", ["c2"], ["p"], kernel_shape=[1, 1]),
    h.make_node("LpNormalization", ["p"], ["n"]),
    h.make_node("Relu", ["n"], ["y"]),
]
g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 1, 2, 2])],
                 [h.make_tensor_value_info("y", T.FLOAT, [1, 1, 2, 2])], [w])
onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 18)]), sys.argv[1])
"#;

#[test]
fn every_missing_op_is_named_before_any_work() {
    let tmp = TempDir::new("missing-ops");
    let model = tmp.path().join("m.onnx");
    let out = std::process::Command::new(python())
        .args(["-c", MAKE])
        .arg(&model)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let m = ortho_frontends::import_file(&model).expect("import");
    match Plan::compile(&m) {
        Err(RuntimeError::UnsupportedOps { ops, first_node }) => {
            assert_eq!(
                ops,
                vec![
                    "'Conv' (2 nodes)".to_string(),
                    "'MaxPool' (1 node)".to_string(),
                    "'LpNormalization' (1 node)".to_string()
                ]
            );
            assert!(first_node.contains("Conv"), "{first_node}");
        }
        Err(e) => panic!("expected every missing op, got {e}"),
        Ok(_) => panic!("compiled a model with ops that have no kernel"),
    }

    let outdir = tmp.path().join("out");
    let o = run(&[
        "run",
        model.to_str().expect("path"),
        "-o",
        outdir.to_str().expect("path"),
    ]);
    assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
    for op in ["'Conv' (2 nodes)", "'MaxPool'", "'LpNormalization'"] {
        assert!(o.stderr.contains(op), "{op} missing from: {}", o.stderr);
    }
    // Nothing was run: no output file was written.
    let written = std::fs::read_dir(&outdir).map_or(0, |d| d.count());
    assert_eq!(written, 0, "outputs written for a refused model");
}
