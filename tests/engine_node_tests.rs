//! The ONNX backend node tests through our own engine: each model's shipped inputs are run by
//! `ortho_codegen::cpu::Plan` and compared with the shipped expected outputs (rtol 1e-3,
//! atol 1e-7 as `fixtures/tools/run_node_tests_ort.py` uses for onnxruntime; integers and bools
//! exactly). Prints passed / total and the ops without a kernel; fails if the pass count drops
//! below the floor measured when this test was written.

mod common;

use common::{fixtures, python, TempDir};
use ortho_codegen::cpu::{npy, HostTensor, Plan, RuntimeError};
use std::collections::BTreeMap;

/// Converts every test's `test_data_set_0/{input,output}_N.pb` to `.npy` and writes an index:
/// one line per test, `name<TAB>in:NAME=FILE,...<TAB>out:NAME=FILE,...` or `name<TAB>skip:REASON`.
const CONVERT: &str = r#"
import os, sys, numpy as np, onnx
from onnx import numpy_helper
src, dst = sys.argv[1:3]
lines = []
for name in sorted(os.listdir(src)):
    d = os.path.join(src, name)
    if not os.path.exists(os.path.join(d, "model.onnx")):
        continue
    try:
        m = onnx.load(os.path.join(d, "model.onnx"), load_external_data=False)
        inits = {i.name for i in m.graph.initializer}
        ins = [i.name for i in m.graph.input if i.name not in inits]
        outs = [o.name for o in m.graph.output]
        data = os.path.join(d, "test_data_set_0")
        od = os.path.join(dst, name); os.makedirs(od, exist_ok=True)
        parts = []
        for kind, names in (("input", ins), ("output", outs)):
            files = []
            for i, n in enumerate(names):
                p = os.path.join(data, f"{kind}_{i}.pb")
                if not os.path.exists(p):
                    continue
                t = onnx.TensorProto()
                with open(p, "rb") as f:
                    t.ParseFromString(f.read())
                a = numpy_helper.to_array(t)
                if a.dtype.kind not in "fiub" or a.dtype.itemsize > 8 or str(a.dtype) == "bfloat16":
                    raise ValueError(f"dtype {a.dtype}")
                fn = os.path.join(od, f"{kind}_{i}.npy")
                np.save(fn, np.array(a, order="C"))  # keeps 0-d arrays 0-d
                files.append(f"{n}={fn}")
            parts.append(("in:" if kind == "input" else "out:") + ",".join(files))
        lines.append(name + "\t" + "\t".join(parts))
    except Exception as e:
        lines.append(name + "\tskip:" + str(e).replace("\t", " ").replace("\n", " ")[:120])
with open(os.path.join(dst, "index.tsv"), "w") as f:
    f.write("\n".join(lines) + "\n")
"#;

fn close(got: &HostTensor, want: &HostTensor) -> Result<(), String> {
    if got.shape() != want.shape() {
        return Err(format!("shape {:?} vs {:?}", got.shape(), want.shape()));
    }
    if got.dtype() != want.dtype() {
        return Err(format!("dtype {} vs {}", got.dtype(), want.dtype()));
    }
    if got.dtype().is_float() {
        for (i, (a, b)) in got.to_f64_vec().iter().zip(want.to_f64_vec()).enumerate() {
            let ok =
                (a.is_nan() && b.is_nan()) || a == &b || (a - b).abs() <= 1e-7 + 1e-3 * b.abs();
            if !ok {
                return Err(format!("element {i}: {a} vs {b}"));
            }
        }
        Ok(())
    } else if got.buf() == want.buf() {
        Ok(())
    } else {
        Err("values differ".into())
    }
}

#[test]
fn node_tests_through_the_engine() {
    let node_dir = fixtures().join("onnx-node-tests/node");
    let tmp = TempDir::new("engine-node");
    let out = std::process::Command::new(python())
        .args(["-c", CONVERT])
        .arg(&node_dir)
        .arg(tmp.path())
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "convert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index = std::fs::read_to_string(tmp.path().join("index.tsv")).expect("index");
    let (mut total, mut passed, mut skipped) = (0usize, 0usize, 0usize);
    let mut unsupported: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    for line in index.lines().filter(|l| !l.is_empty()) {
        total += 1;
        let cols: Vec<&str> = line.split('\t').collect();
        let name = cols[0];
        if cols.get(1).is_some_and(|c| c.starts_with("skip:")) {
            skipped += 1;
            continue;
        }
        let pairs = |c: Option<&&str>, tag: &str| -> Vec<(String, String)> {
            c.and_then(|c| c.strip_prefix(tag))
                .map(|c| {
                    c.split(',')
                        .filter(|x| !x.is_empty())
                        .filter_map(|x| x.split_once('='))
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let (ins, outs) = (pairs(cols.get(1), "in:"), pairs(cols.get(2), "out:"));
        let result = (|| -> Result<(), String> {
            let m = ortho_frontends::import_file(&node_dir.join(name).join("model.onnx"))
                .map_err(|e| format!("import: {e}"))?;
            let plan = match Plan::compile(&m) {
                Ok(p) => p,
                Err(RuntimeError::UnsupportedOp { op, domain, .. }) => {
                    *unsupported
                        .entry(if domain.is_empty() {
                            op
                        } else {
                            format!("{domain}.{op}")
                        })
                        .or_default() += 1;
                    return Err("unsupported".into());
                }
                Err(e) => return Err(format!("compile: {e}")),
            };
            let feeds: Vec<(String, HostTensor)> = ins
                .iter()
                .map(|(n, f)| Ok((n.clone(), npy::read(std::path::Path::new(f))?)))
                .collect::<Result<_, String>>()?;
            let refs: Vec<(&str, HostTensor)> =
                feeds.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
            let got = plan.run(&refs).map_err(|e| format!("run: {e}"))?;
            for (n, f) in &outs {
                let want = npy::read(std::path::Path::new(f))?;
                let g = got
                    .iter()
                    .find(|(x, _)| x == n)
                    .ok_or_else(|| format!("no output {n}"))?;
                close(&g.1, &want).map_err(|e| format!("output {n}: {e}"))?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => passed += 1,
            Err(e) if e == "unsupported" => {}
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    let unsup_tests: usize = unsupported.values().sum();
    println!("engine node tests: {passed} passed / {total} total ({skipped} with non-numeric data skipped, {unsup_tests} need an op without a kernel, {} failed)", failures.len());
    println!(
        "ops without a kernel ({}): {}",
        unsupported.len(),
        unsupported
            .iter()
            .map(|(k, v)| format!("{k} ({v})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("failures:\n{}", failures.join("\n"));
    assert!(
        total > 1800,
        "expected the full node-test set, found {total}"
    );
    assert!(
        passed >= PASS_FLOOR,
        "{passed} passed, fewer than the floor {PASS_FLOOR}"
    );
}

/// The pass count when this test was last tightened; raise it as kernels are added.
const PASS_FLOOR: usize = 1000;
