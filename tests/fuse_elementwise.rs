//! `fuse-elementwise`, `lower-ortho` and the fused-kernel JIT end to end, against onnxruntime:
//! - a chain that uses every instruction and every operand form fuses into one node whose JIT
//!   kernel matches onnxruntime running the original ops, and fuse → lower → export gives a
//!   model whose onnxruntime outputs match the original's;
//! - on SmolLM2-135M (decomposed), every fused region compiles, the fused module round-trips
//!   through `.oir`, and fuse → lower → export keeps onnxruntime's logits.

mod common;

use common::{fixtures, python, python_tool, run, TempDir};
use ortho_codegen::cpu::jit::{interpret, JitKernel};
use ortho_ir::fused::FusedElementwise;
use ortho_ir::text::{parse_module, print_module, PrintOptions};
use ortho_ir::Module;
use ortho_passes::transforms::{fuse_elementwise, lower_ortho, FuseElementwiseOptions};
use std::path::Path;

/// Runs a model in onnxruntime on raw f32 inputs (`name` → file, shape) and returns output 0.
fn ort_run(model: &Path, inputs: &[(&str, &Path, &[usize])], out: &Path) -> Vec<f32> {
    const SCRIPT: &str = r#"
import json, sys
import numpy as np, onnxruntime as ort
spec = json.loads(sys.argv[1])
so = ort.SessionOptions()
so.intra_op_num_threads = 1
so.log_severity_level = 3
sess = ort.InferenceSession(spec["model"], so, providers=["CPUExecutionProvider"])
feeds = {k: np.fromfile(p, dtype=np.float32).reshape(s) for k, (p, s) in spec["inputs"].items()}
sess.run(None, feeds)[0].astype(np.float32).tofile(spec["out"])
"#;
    let inputs_json: Vec<String> = inputs
        .iter()
        .map(|(name, p, s)| {
            let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
            format!("\"{name}\": [\"{}\", [{}]]", p.display(), dims.join(", "))
        })
        .collect();
    let spec = format!(
        "{{\"model\": \"{}\", \"inputs\": {{{}}}, \"out\": \"{}\"}}",
        model.display(),
        inputs_json.join(", "),
        out.display()
    );
    let o = std::process::Command::new(python())
        .arg("-c")
        .arg(SCRIPT)
        .arg(&spec)
        .output()
        .expect("run python");
    assert!(
        o.status.success(),
        "onnxruntime failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let bytes = std::fs::read(out).expect("read output");
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn write_f32(path: &Path, v: &[f32]) {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).expect("write input");
}

/// Deterministic uniform values in [lo, hi).
fn uniform(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

fn fused_nodes(m: &Module) -> Vec<(FusedElementwise, Vec<String>)> {
    let g = m.main_graph();
    let mut v = Vec::new();
    for id in g.toposort().expect("acyclic") {
        let n = g.node(id);
        if let Some(f) = FusedElementwise::from_op(&n.op) {
            v.push((
                f.clone(),
                n.inputs().map(|x| g.value_name(x).to_string()).collect(),
            ));
        }
    }
    v
}

/// Every instruction and every form in one region: x full [3, 37], m per-row [3, 1], g along the
/// last axis [37], s scalar []; 37 is not a multiple of 4, so the vector tail runs in each row.
const CHAIN: &str = r#"module {ir_version = 8, opset_import = ["" = 17]}
graph @chain(%x: tensor<3x37xf32>, %m: tensor<3x1xf32>, %g: tensor<37xf32>, %s: tensor<f32>) -> (%y) {
  %eps = const tensor<f32> dense<[1e-5]>
  %lo = const tensor<f32> dense<[-1.5]>
  %hi = const tensor<f32> dense<[2.5]>
  %two = const tensor<f32> dense<[2.0]>
  %frac = const tensor<f32> dense<[0.75]>
  %a = onnx.Add(%m, %eps) : tensor<3x1xf32>
  %r = onnx.Sqrt(%a) : tensor<3x1xf32>
  %d = onnx.Div(%x, %r) : tensor<3x37xf32>
  %gm = onnx.Mul(%d, %g) : tensor<3x37xf32>
  %sg = onnx.Sigmoid(%gm) : tensor<3x37xf32>
  %si = onnx.Mul(%gm, %sg) : tensor<3x37xf32>
  %sb = onnx.Sub(%si, %s) : tensor<3x37xf32>
  %t = onnx.Tanh(%sb) : tensor<3x37xf32>
  %e = onnx.Erf(%t) : tensor<3x37xf32>
  %ex = onnx.Exp(%e) : tensor<3x37xf32>
  %lg = onnx.Log(%ex) : tensor<3x37xf32>
  %ab = onnx.Abs(%lg) : tensor<3x37xf32>
  %ng = onnx.Neg(%ab) : tensor<3x37xf32>
  %rl = onnx.Relu(%ng) : tensor<3x37xf32>
  %mx = onnx.Max(%rl, %lg, %d) : tensor<3x37xf32>
  %mn = onnx.Min(%mx, %g) : tensor<3x37xf32>
  %cl = onnx.Clip(%mn, %lo, %hi) : tensor<3x37xf32>
  %p2 = onnx.Pow(%cl, %two) : tensor<3x37xf32>
  %rc = onnx.Reciprocal(%r) : tensor<3x1xf32>
  %sum = onnx.Sum(%p2, %rc, %si) : tensor<3x37xf32>
  %pa = onnx.Abs(%sum) : tensor<3x37xf32>
  %y = onnx.Pow(%pa, %frac) : tensor<3x37xf32>
}
"#;

#[test]
fn fused_chain_matches_onnxruntime() {
    let tmp = TempDir::new("fuse-chain");
    let original = parse_module(CHAIN).expect("parse");
    ortho_ir::verify::verify_module(&original).expect("verify");
    let orig_path = tmp.path().join("original.onnx");
    ortho_frontends::export_file(&original, &orig_path, &Default::default())
        .expect("export original");

    let mut fused = original.clone();
    let stats = fuse_elementwise(&mut fused, &FuseElementwiseOptions::default());
    ortho_ir::verify::verify_module(&fused).expect("verify fused");
    assert_eq!(stats.regions, 1, "one region");
    let nodes = fused_nodes(&fused);
    assert_eq!(nodes.len(), 1);
    let (program, operand_names) = &nodes[0];
    // Four inputs, five constants that nothing reads any more (left for dce), one fused node.
    assert_eq!(fused.main_graph().node_count(), 4 + 5 + 1);
    assert_eq!(operand_names.len(), 4, "{operand_names:?}");

    // The inputs, by name, in the fused node's operand order.
    let (rows, row_len) = (3usize, 37usize);
    let data: Vec<(&str, Vec<f32>, Vec<usize>)> = vec![
        (
            "x",
            uniform(rows * row_len, 1, -3.0, 3.0),
            vec![rows, row_len],
        ),
        ("m", uniform(rows, 2, 0.2, 2.0), vec![rows, 1]),
        ("g", uniform(row_len, 3, 0.5, 1.5), vec![row_len]),
        ("s", uniform(1, 4, -0.5, 0.5), vec![]),
    ];
    let mut feeds = Vec::new();
    for (name, v, shape) in &data {
        let p = tmp.path().join(format!("{name}.bin"));
        write_f32(&p, v);
        feeds.push((*name, p, shape.clone()));
    }
    let feed_refs: Vec<(&str, &Path, &[usize])> = feeds
        .iter()
        .map(|(n, p, s)| (*n, p.as_path(), s.as_slice()))
        .collect();
    let want = ort_run(&orig_path, &feed_refs, &tmp.path().join("want.bin"));

    let by_name = |n: &str| {
        data.iter()
            .find(|(name, _, _)| *name == n)
            .map(|(_, v, _)| v.as_slice())
            .expect("operand is an input")
    };
    let ins: Vec<&[f32]> = operand_names.iter().map(|n| by_name(n)).collect();
    let n = rows * row_len;
    let mut jit = vec![0f32; n];
    JitKernel::compile(program)
        .expect("compile")
        .run(&ins, &mut jit, n, row_len)
        .expect("run");
    let mut reference = vec![0f32; n];
    interpret(program, &ins, &mut reference, n, row_len).expect("interpret");
    let mut worst = 0f32;
    for i in 0..n {
        let tol = 1e-6 + 1e-5 * want[i].abs();
        assert!(
            (jit[i] - want[i]).abs() <= tol,
            "element {i}: jit {} vs onnxruntime {}",
            jit[i],
            want[i]
        );
        assert!(
            (reference[i] - want[i]).abs() <= tol,
            "element {i}: reference {} vs onnxruntime {}",
            reference[i],
            want[i]
        );
        worst = worst.max((jit[i] - want[i]).abs());
    }
    println!("fused chain: max |jit - onnxruntime| = {worst:e}");

    // fuse → lower → export runs in onnxruntime and agrees with the original model.
    let mut lowered = fused.clone();
    let ls = lower_ortho(&mut lowered).expect("lower");
    assert_eq!(ls.lowered, 1);
    ortho_ir::verify::verify_module(&lowered).expect("verify lowered");
    assert!(lowered.opset("ortho").is_none());
    let low_path = tmp.path().join("lowered.onnx");
    ortho_frontends::export_file(&lowered, &low_path, &Default::default()).expect("export lowered");
    let got = ort_run(&low_path, &feed_refs, &tmp.path().join("got.bin"));
    for i in 0..n {
        assert!(
            (got[i] - want[i]).abs() <= 1e-6 + 1e-6 * want[i].abs(),
            "element {i}: lowered {} vs original {}",
            got[i],
            want[i]
        );
    }
}

#[test]
fn smollm2_fuse_lower_keeps_logits() {
    let f = fixtures();
    let model = f.join("smollm2-135m/decomposed.onnx");
    let mut m = ortho_frontends::import_file(&model).expect("import");
    let stats = fuse_elementwise(&mut m, &FuseElementwiseOptions::default());
    ortho_ir::verify::verify_module(&m).expect("verify fused");
    // 30 layers: two RMSNorm tails and one SiLU gate each, plus the final norm.
    assert_eq!(stats.regions, 91, "{stats:?}");

    // Every fused program compiles (the distinct ones once, through the cache).
    let mut distinct = std::collections::HashSet::new();
    let t0 = std::time::Instant::now();
    for (p, _) in fused_nodes(&m) {
        if distinct.insert(p.clone()) {
            JitKernel::cached(&p).expect("compile");
        }
    }
    println!(
        "{} fused nodes, {} distinct programs compiled in {:?}",
        stats.regions,
        distinct.len(),
        t0.elapsed()
    );

    // The fused module prints and parses back to the same text.
    let text = print_module(&m, PrintOptions::default());
    let again = print_module(
        &parse_module(&text).expect("parse fused"),
        PrintOptions::default(),
    );
    assert!(
        text == again,
        "print → parse → print of the fused module differs"
    );

    // Through the driver: fuse, lower, export; onnxruntime's logits stay what they were.
    let tmp = TempDir::new("fuse-smollm2");
    let out = tmp.path().join("lowered.onnx");
    let r = run(&[
        model.to_str().expect("utf8"),
        "-o",
        out.to_str().expect("utf8"),
        "--pass-pipeline=fuse-elementwise,lower-ortho",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let tokens = f.join("text/sotu_eval.smollm2-135m.bin");
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
    println!("{report}");
    let diff: f64 = report
        .split("\"max_abs_diff\": ")
        .nth(1)
        .and_then(|s| s.split([',', '}']).next())
        .and_then(|s| s.trim().parse().ok())
        .expect("max_abs_diff in the report");
    assert!(diff <= 1e-4, "logits moved by {diff}: {report}");
}

/// A fused node exports as the integer attributes it always had (`program`, `constants`,
/// `forms`; the SiLU gate's encoding below is the one `.oir` printed before the typed syntax),
/// imports back as the typed op, and exporting the imported module writes the same bytes.
#[test]
fn fused_nodes_export_as_integer_attributes() {
    let src = r#"module {ir_version = 8, opset_import = ["" = 17]}
graph @silu_gate(%x: tensor<2x8xf32>, %y: tensor<2x8xf32>, %g: tensor<8xf32>) -> (%out) {
  %eps = const tensor<f32> dense<[1.0e-5]>
  %sig = onnx.Sigmoid(%x) : tensor<2x8xf32>
  %silu = onnx.Mul(%x, %sig) : tensor<2x8xf32>
  %gate = onnx.Mul(%silu, %y) : tensor<2x8xf32>
  %sh = onnx.Add(%gate, %eps) : tensor<2x8xf32>
  %out = onnx.Mul(%sh, %g) : tensor<2x8xf32>
}
"#;
    let mut m = parse_module(src).expect("parse");
    let stats = fuse_elementwise(&mut m, &FuseElementwiseOptions::default());
    assert_eq!(stats.regions, 1);
    let fused = fused_nodes(&m);
    let (f, _) = fused.first().expect("one fused node");
    let op = f.to_op();
    let (domain, op_type, attrs) = op.to_parts().expect("parts");
    assert_eq!(
        (domain.as_str(), op_type.as_str()),
        ("ortho", "FusedElementwise")
    );
    let names: Vec<(&str, &ortho_ir::AttrValue)> =
        attrs.iter().map(|a| (a.name.as_str(), &a.value)).collect();
    assert_eq!(
        names,
        vec![
            (
                "program",
                &ortho_ir::AttrValue::Ints(vec![
                    0, 0, 0, 17, 0, 0, 32, 0, 1, 0, 1, 0, 32, 2, 3, 1, 0, 0, 30, 4, 5, 0, 2, 0, 32,
                    6, 7
                ])
            ),
            ("constants", &ortho_ir::AttrValue::Floats(vec![1e-5])),
            ("forms", &ortho_ir::AttrValue::Ints(vec![0, 0, 2])),
        ]
    );

    let tmp = TempDir::new("fused-export");
    let first = tmp.path().join("fused.onnx");
    ortho_frontends::export_file(&m, &first, &Default::default()).expect("export");
    let imported = ortho_frontends::import_file(&first).expect("import");
    let back = fused_nodes(&imported);
    assert_eq!(back.len(), 1);
    assert_eq!(
        &back[0].0, f,
        "the import yields the typed op with the same program"
    );
    let second = tmp.path().join("again.onnx");
    ortho_frontends::export_file(&imported, &second, &Default::default()).expect("re-export");
    assert!(
        std::fs::read(&first).expect("read") == std::fs::read(&second).expect("read"),
        "export → import → export changed the model's bytes"
    );
}
