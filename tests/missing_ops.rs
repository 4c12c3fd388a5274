//! A model with several ops the engine has no kernel for is refused at plan compile, before any
//! work, with every missing op type named (not only the first), through the API and the CLI
//! (`run`; `eval` and `compare` compile the same way before their first window).

mod common;

use common::{python, run, TempDir};
use ortho_codegen::cpu::{Plan, RuntimeError};

/// An ONNX model `y = Bernoulli(GlobalLpPool(LRN(LRN(x)))) · w` in which three op types lack
/// a kernel (LRN twice), written by the fixtures' onnx.
const MAKE: &str = r#"
import sys, numpy as np, onnx
from onnx import helper as h, TensorProto as T
w = h.make_tensor("w", T.FLOAT, [1, 1, 1, 1], [2.0])
nodes = [
    h.make_node("LRN", ["x"], ["c"], size=1),
    h.make_node("LRN", ["c"], ["c2"], size=1),
    h.make_node("GlobalLpPool", ["c2"], ["p"]),
    h.make_node("Bernoulli", ["p"], ["n"]),
    h.make_node("Mul", ["n", "w"], ["y"]),
]
g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 1, 2, 2])],
                 [h.make_tensor_value_info("y", T.FLOAT, [1, 1, 1, 1])], [w])
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
                    "'LRN' (2 nodes)".to_string(),
                    "'GlobalLpPool' (1 node)".to_string(),
                    "'Bernoulli' (1 node)".to_string()
                ]
            );
            assert!(first_node.contains("LRN"), "{first_node}");
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
    for op in ["'LRN' (2 nodes)", "'GlobalLpPool'", "'Bernoulli'"] {
        assert!(o.stderr.contains(op), "{op} missing from: {}", o.stderr);
    }
    // Nothing was run: no output file was written.
    let written = std::fs::read_dir(&outdir).map_or(0, |d| d.count());
    assert_eq!(written, 0, "outputs written for a refused model");
}
