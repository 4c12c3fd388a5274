//! The compact N:M form through ONNX: `--emit-sparse` writes `ortho.SparseLinear` with its
//! values and index bytes as initializers and ortho-opt reads them back bit for bit; the default
//! export expands them to exactly the dense-with-zeros weights `prune` alone writes; the engine
//! computes the same logits from the compact and the dense-with-zeros model.

mod common;

use common::{repo, run, TempDir};
use ortho_codegen::cpu::{HostTensor, Plan};
use ortho_ir::op_ortho::OrthoOp;
use ortho_ir::{Module, Op};
use std::collections::BTreeMap;

fn tiny() -> std::path::PathBuf {
    repo().join("tests/filecheck/sparsify/prune-then-sparsify.oir")
}

/// Bytes of every constant operand of every `ortho.SparseLinear`, by result name and slot.
fn sparse_operands(m: &Module) -> BTreeMap<(String, usize), Vec<u8>> {
    let g = m.main_graph();
    let mut out = BTreeMap::new();
    for id in g.node_ids() {
        let n = g.node(id);
        if !matches!(n.op, Op::Ortho(OrthoOp::SparseLinear(_))) {
            continue;
        }
        for (slot, v) in n.operands().iter().enumerate().skip(1) {
            let v = v.unwrap_or_else(|| panic!("operand {slot} of {}", n.outputs[0].name));
            let Op::Const(t) = g.node(v.node).op else {
                panic!("operand {slot} of {} is not a constant", n.outputs[0].name)
            };
            let bytes = m.tensor(t).bytes().expect("bytes").to_vec();
            out.insert((n.outputs[0].name.clone(), slot), bytes);
        }
    }
    out
}

/// Every MatMul's constant weight bytes, by result name.
fn matmul_weights(m: &Module) -> BTreeMap<String, Vec<u8>> {
    let g = m.main_graph();
    let mut out = BTreeMap::new();
    for id in g.node_ids() {
        let n = g.node(id);
        if !matches!(n.op, Op::MatMul) {
            continue;
        }
        if let Some(Some(v)) = n.operands().get(1) {
            if let Op::Const(t) = g.node(v.node).op {
                let bytes = m.tensor(t).bytes().expect("bytes").to_vec();
                out.insert(n.outputs[0].name.clone(), bytes);
            }
        }
    }
    out
}

fn import(p: &std::path::Path) -> Module {
    ortho_frontends::import_file(p).unwrap_or_else(|e| panic!("{e}"))
}

fn parse(p: &std::path::Path) -> Module {
    let text = std::fs::read_to_string(p).expect("read");
    ortho_ir::text::parse_module(&text).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn compact_form_round_trips_through_onnx() {
    let tmp = TempDir::new("sparse-rt");
    let src = tiny();
    let src = src.to_string_lossy();
    let (oir, compact, dense, pruned) = (
        tmp.path().join("s.oir"),
        tmp.path().join("compact.onnx"),
        tmp.path().join("dense.onnx"),
        tmp.path().join("pruned.onnx"),
    );
    let pipe = "--pass-pipeline=prune{pattern=2:4},sparsify";
    for (out, extra) in [
        (&oir, None),
        (&compact, Some("--emit-sparse")),
        (&dense, None),
    ] {
        let mut args = vec![
            &*src,
            pipe,
            "--elide-above=none",
            "-o",
            out.to_str().expect("utf8"),
        ];
        args.extend(extra);
        let r = run(&args);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let r = run(&[
        &src,
        "--pass-pipeline=prune{pattern=2:4}",
        "-o",
        pruned.to_str().expect("utf8"),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    // Compact: read back bit for bit, still typed.
    let direct = parse(&oir);
    let back = import(&compact);
    let want = sparse_operands(&direct);
    assert_eq!(want.len(), 14, "7 linears × (values, indices)");
    assert_eq!(sparse_operands(&back), want);
    assert!(back.opset("ortho").is_some());

    // Dense (the default): no ortho op left, weights equal to prune's dense-with-zeros ones.
    let d = import(&dense);
    assert!(sparse_operands(&d).is_empty());
    assert!(d.opset("ortho").is_none());
    assert_eq!(matmul_weights(&d), matmul_weights(&import(&pruned)));

    // The engine: compact vs dense-with-zeros logits.
    let ids: Vec<i64> = vec![1, 4, 2, 5, 0, 3, 3, 1, 2, 5, 4, 0];
    let logits = |m: &Module| {
        let plan = Plan::compile(m).expect("compile");
        let feed = HostTensor::from_vec(vec![1, ids.len()], ids.clone()).expect("feed");
        plan.run(&[("ids", feed)]).expect("run")[0]
            .1
            .as_f32()
            .expect("f32")
            .to_vec()
    };
    let (a, b) = (logits(&back), logits(&import(&pruned)));
    let max = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(diff <= 1e-5 * max, "max |Δ| {diff} of max |logit| {max}");
}
