//! The real SmolLM2-135M fixtures (decomposed opset 17 and fused opset 23): import → export
//! keeps every parameter, the checker accepts the output, and onnxruntime's logits before and
//! after are bitwise identical; the same with weights moved to external data; `.oir` round-trips.

mod common;

use common::{fixtures, python_tool, run, TempDir};
use ortho_ir::text::{parse_module, print_module, PrintOptions};

const PARAMS: u64 = 134_515_008;

fn check_model(style: &str) {
    let f = fixtures();
    let model = f.join(format!("smollm2-135m/{style}.onnx"));
    let m = ortho_frontends::import_file(&model).expect("import");
    ortho_ir::verify::verify_module(&m).expect("verify");
    // The fixtures hold the model's parameters plus a few small constants (RoPE, eps, shapes).
    let n = m.parameter_count();
    assert!(
        (PARAMS..PARAMS + 100).contains(&n),
        "{style}: {n} parameters"
    );
    let text = print_module(&m, PrintOptions::default());
    let again = print_module(
        &parse_module(&text).expect("parse"),
        PrintOptions::default(),
    );
    assert!(text == again, "{style}: print → parse → print differs");

    let tmp = TempDir::new(&format!("real-{style}"));
    let tokens = f.join("text/sotu_eval.smollm2-135m.bin");
    for (tag, extra) in [("inline", None), ("external", Some("--external-data"))] {
        let out = tmp.path().join(format!("{tag}.onnx"));
        let mut args = vec![
            model.to_str().expect("utf8"),
            "-o",
            out.to_str().expect("utf8"),
        ];
        args.extend(extra);
        let r = run(&args);
        assert_eq!(r.code, 0, "{style}/{tag}: {}", r.stderr);
        if extra.is_some() {
            let data = tmp.path().join(format!("{tag}.onnx.data"));
            assert!(
                std::fs::metadata(&data).expect("data file").len() > 500_000_000,
                "weights went to the data file"
            );
            assert!(
                std::fs::metadata(&out).expect("model").len() < 5_000_000,
                "the model file holds no weights"
            );
        }
        let report = python_tool(
            "ort_logits.py",
            &[
                model.to_str().expect("utf8"),
                out.to_str().expect("utf8"),
                tokens.to_str().expect("utf8"),
                "--windows",
                "1",
            ],
        );
        assert!(
            report.contains("\"identical\": true"),
            "{style}/{tag}: logits differ: {report}"
        );
        assert!(
            report.contains("\"max_abs_diff\": 0.0"),
            "{style}/{tag}: {report}"
        );
    }
}

#[test]
fn decomposed_round_trips_exactly() {
    check_model("decomposed");
}

#[test]
fn fused_round_trips_exactly() {
    check_model("fused");
}

/// A module whose weights exceed 2 GiB is written with external data automatically, and the
/// result is a valid model (never a > 2 GiB protobuf).
#[test]
fn over_two_gib_goes_external_automatically() {
    use ortho_ir::{DType, GraphOutput, Module, Op, Output, TensorData, Type};
    let tmp = TempDir::new("big");
    let mut m = Module::new("big");
    m.meta.ir_version = 8;
    m.opsets.push(ortho_ir::OpsetImport {
        domain: String::new(),
        version: 17,
    });
    // 2 × 1.1 GiB of zeros: calloc'd pages cost no memory until written, and are only read here.
    let n: i64 = 1100 << 20;
    let mut outs = Vec::new();
    for i in 0..2 {
        let t = m.add_tensor(TensorData::from_bytes(
            DType::U8,
            vec![n],
            vec![0u8; n as usize],
        ));
        let g = m.main_graph_mut();
        let id = g.add_node(
            Op::Const(t),
            vec![],
            vec![Output::new(
                format!("w{i}"),
                Type::tensor(DType::U8, vec![ortho_ir::Dim::Fixed(n)]),
            )],
        );
        outs.push(GraphOutput {
            value: ortho_ir::ValueId {
                node: id,
                output: 0,
            },
            name: format!("w{i}"),
        });
    }
    let g = m.main_graph_mut();
    let id = g.add_node(
        Op::Identity,
        vec![Some(outs[0].value)],
        vec![Output::new(
            "y",
            Type::tensor(DType::U8, vec![ortho_ir::Dim::Fixed(n)]),
        )],
    );
    g.outputs.push(GraphOutput {
        value: ortho_ir::ValueId {
            node: id,
            output: 0,
        },
        name: "y".into(),
    });
    g.outputs.push(outs[1].clone());
    ortho_ir::verify::verify_module(&m).expect("verify");
    let out = tmp.path().join("big.onnx");
    let stats = ortho_frontends::export_file(&m, &out, &Default::default()).expect("export");
    assert!(
        stats.external_forced,
        "external data must be chosen automatically"
    );
    assert_eq!(stats.external_tensors, 2);
    assert!(std::fs::metadata(&out).expect("model").len() < 1 << 20);
    assert!(
        std::fs::metadata(tmp.path().join("big.onnx.data"))
            .expect("data")
            .len()
            >= 2 * n as u64
    );
    // The written model reads back, with the weights mapped from the data file.
    let back = ortho_frontends::import_file(&out).expect("re-import");
    assert_eq!(back.parameter_count(), 2 * n as u64);
    drop(m);
    let checker = std::process::Command::new(common::python())
        .args([
            "-c",
            "import onnx,sys; onnx.checker.check_model(sys.argv[1], full_check=True); print('ok')",
            out.to_str().expect("utf8"),
        ])
        .output()
        .expect("python");
    assert!(
        checker.status.success(),
        "checker: {}",
        String::from_utf8_lossy(&checker.stderr)
    );
}
