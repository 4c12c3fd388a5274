//! The ONNX backend node tests through our own engine: each model's shipped inputs are run by
//! `ortho_codegen::cpu::Plan` and compared with the shipped expected outputs (rtol 1e-3,
//! atol 1e-7 as `fixtures/tools/run_node_tests_ort.py` uses for onnxruntime; integers and bools
//! exactly).
//!
//! Each test gets one outcome: passed, a wrong answer (the engine ran and an output differs),
//! an error (import, compile or run refused it), no kernel for one of its ops, or skipped (data
//! that is not a numeric tensor). The harness prints, per op, how many tests have each outcome
//! next to how many onnxruntime passes, and the gap. CI fails, naming each test, when a test of
//! the committed list `tests/engine_node_tests_passing.txt` stops passing, and when any test
//! gives a wrong answer that `tests/engine_node_tests_exceptions.txt` does not name with its
//! reason. `ORTHO_NODE_TESTS_UPDATE=1` rewrites the passing list from this run (read the diff
//! before committing it: a name that leaves the list is a regression).

mod common;

use common::{fixtures, python, repo, TempDir};
use ortho_codegen::cpu::{npy, HostTensor, Plan, RuntimeError};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Converts every test's `test_data_set_0/{input,output}_N.pb` to `.npy` and writes an index:
/// one line per test, `name<TAB>op:KEY<TAB>in:NAME=FILE,...<TAB>out:NAME=FILE,...` or
/// `name<TAB>op:KEY<TAB>skip:REASON`. KEY is the op the test exercises: the type of its one
/// node, `Op (expanded)` for the function-body expansion of a single-op test, else the sorted
/// distinct op types of its graph.
const CONVERT: &str = r#"
import os, re, sys, numpy as np, onnx
from onnx import numpy_helper
src, dst = sys.argv[1:3]
names = sorted(n for n in os.listdir(src) if os.path.exists(os.path.join(src, n, "model.onnx")))
keys, lines = {}, {}
for name in names:
    d = os.path.join(src, name)
    try:
        m = onnx.load(os.path.join(d, "model.onnx"), load_external_data=False)
        ops = sorted({(n.domain + "." if n.domain not in ("", "ai.onnx") else "") + n.op_type
                      for n in m.graph.node if n.op_type != "Constant"})
        keys[name] = ops[0] if len(ops) == 1 else "+".join(ops)[:60] or "Constant"
        inits = {i.name for i in m.graph.initializer}
        ins = [i.name for i in m.graph.input if i.name not in inits]
        outs = [o.name for o in m.graph.output]
        data = os.path.join(d, "test_data_set_0")
        od = os.path.join(dst, name); os.makedirs(od, exist_ok=True)
        parts = []
        for kind, vnames in (("input", ins), ("output", outs)):
            files = []
            for i, n in enumerate(vnames):
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
        lines[name] = "\t".join(parts)
    except Exception as e:
        keys.setdefault(name, "?")
        lines[name] = "skip:" + str(e).replace("\t", " ").replace("\n", " ")[:120]
out = []
for name in names:
    base = re.sub(r"_expanded(_ver\d+)?$", "", name)
    key = keys[name]
    if base != name and base in keys and "+" not in keys[base]:
        key = keys[base] + " (expanded)"
    out.append(f"{name}\top:{key}\t{lines[name]}")
with open(os.path.join(dst, "index.tsv"), "w") as f:
    f.write("\n".join(out) + "\n")
"#;

/// What happened to one node test.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Passed,
    /// The engine ran the model and an output differs from the expected one.
    Wrong(String),
    /// Import, compile or run refused the model for a reason other than a missing kernel.
    Error(String),
    /// An op of the model has no kernel.
    NoKernel(String),
    /// The test's data is not a numeric tensor the harness can feed.
    Skipped(String),
}

impl Outcome {
    fn column(&self) -> usize {
        match self {
            Outcome::Passed => 0,
            Outcome::Wrong(_) => 1,
            Outcome::Error(_) => 2,
            Outcome::NoKernel(_) => 3,
            Outcome::Skipped(_) => 4,
        }
    }
    fn describe(&self) -> String {
        match self {
            Outcome::Passed => "passed".into(),
            Outcome::Wrong(e) => format!("wrong answer: {e}"),
            Outcome::Error(e) => format!("error: {e}"),
            Outcome::NoKernel(op) => format!("no kernel for {op}"),
            Outcome::Skipped(e) => format!("skipped: {e}"),
        }
    }
}

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

fn pairs(col: Option<&&str>, tag: &str) -> Vec<(String, String)> {
    col.and_then(|c| c.strip_prefix(tag))
        .map(|c| {
            c.split(',')
                .filter(|x| !x.is_empty())
                .filter_map(|x| x.split_once('='))
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs one test's model on its inputs through the engine and compares every output.
fn run_one(model: &Path, ins: &[(String, String)], outs: &[(String, String)]) -> Outcome {
    let m = match ortho_frontends::import_file(model) {
        Ok(m) => m,
        Err(e) => return Outcome::Error(format!("import: {e}")),
    };
    let plan = match Plan::compile(&m) {
        Ok(p) => p,
        Err(RuntimeError::UnsupportedOp { op, domain, .. }) => {
            return Outcome::NoKernel(if domain.is_empty() {
                op
            } else {
                format!("{domain}.{op}")
            })
        }
        Err(RuntimeError::UnsupportedOps { ops, .. }) => return Outcome::NoKernel(ops.join(", ")),
        Err(e) => return Outcome::Error(format!("compile: {e}")),
    };
    let mut feeds: Vec<(&str, HostTensor)> = Vec::new();
    for (n, f) in ins {
        match npy::read(Path::new(f)) {
            Ok(t) => feeds.push((n.as_str(), t)),
            Err(e) => return Outcome::Error(format!("input {n}: {e}")),
        }
    }
    let got = match plan.run(&feeds) {
        Ok(g) => g,
        Err(e) => return Outcome::Error(format!("run: {e}")),
    };
    for (n, f) in outs {
        let want = match npy::read(Path::new(f)) {
            Ok(t) => t,
            Err(e) => return Outcome::Error(format!("expected output {n}: {e}")),
        };
        let Some((_, g)) = got.iter().find(|(x, _)| x == n) else {
            return Outcome::Error(format!("no output {n}"));
        };
        if let Err(e) = close(g, &want) {
            return Outcome::Wrong(format!("output {n}: {e}"));
        }
    }
    Outcome::Passed
}

/// The names of the tests onnxruntime passes, from `run_node_tests_ort.py`'s JSON, cached in the
/// fixtures (made here once when absent: about a minute).
fn ort_passing(node_dir: &Path) -> BTreeSet<String> {
    let cache = node_dir.with_file_name("ort-results.json");
    if !cache.exists() {
        let out = std::process::Command::new(python())
            .arg(repo().join("fixtures/tools/run_node_tests_ort.py"))
            .arg(node_dir)
            .arg("--json")
            .arg(&cache)
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "run_node_tests_ort.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&cache).expect("read the onnxruntime results");
    let v: serde_json::Value = serde_json::from_str(&text).expect("onnxruntime results are JSON");
    v["passed"]
        .as_array()
        .unwrap_or_else(|| {
            panic!(
                "{} has no 'passed' list: delete it to regenerate",
                cache.display()
            )
        })
        .iter()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

const PASSING_LIST: &str = "tests/engine_node_tests_passing.txt";
const EXCEPTIONS: &str = "tests/engine_node_tests_exceptions.txt";

/// The named exceptions: `name<TAB>reason` per line, `#` starts a comment line.
fn exceptions() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(repo().join(EXCEPTIONS)).expect("read the exceptions");
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once('\t') {
            Some((n, r)) => (n.trim().to_string(), r.trim().to_string()),
            None => panic!("{EXCEPTIONS}: '{l}' has no reason (name<TAB>reason)"),
        })
        .collect()
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
    let mut results: BTreeMap<String, (String, Outcome)> = BTreeMap::new();
    for line in index.lines().filter(|l| !l.is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        let name = cols[0].to_string();
        let key = cols
            .get(1)
            .and_then(|c| c.strip_prefix("op:"))
            .unwrap_or("?")
            .to_string();
        let outcome = match cols.get(2).and_then(|c| c.strip_prefix("skip:")) {
            Some(reason) => Outcome::Skipped(reason.to_string()),
            None => run_one(
                &node_dir.join(&name).join("model.onnx"),
                &pairs(cols.get(2), "in:"),
                &pairs(cols.get(3), "out:"),
            ),
        };
        results.insert(name, (key, outcome));
    }
    let ort = ort_passing(&node_dir);
    report(&results, &ort);

    let ours: BTreeSet<&str> = results
        .iter()
        .filter(|(_, (_, o))| *o == Outcome::Passed)
        .map(|(n, _)| n.as_str())
        .collect();
    let list_path = repo().join(PASSING_LIST);
    if std::env::var_os("ORTHO_NODE_TESTS_UPDATE").is_some() {
        let text: String = ours.iter().map(|n| format!("{n}\n")).collect();
        std::fs::write(&list_path, text).expect("write the passing list");
        println!("wrote {} names to {PASSING_LIST}", ours.len());
    }
    let listed = std::fs::read_to_string(&list_path).expect("read the passing list");
    let listed: BTreeSet<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let newly: Vec<&&str> = ours.difference(&listed).collect();
    if !newly.is_empty() {
        println!(
            "{} tests pass that {PASSING_LIST} does not list (add them: ORTHO_NODE_TESTS_UPDATE=1): {}",
            newly.len(),
            newly.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    let regressions: Vec<String> = listed
        .iter()
        .filter(|n| !ours.contains(*n))
        .map(|n| match results.get(*n) {
            Some((_, o)) => format!("{n}: {}", o.describe()),
            None => format!("{n}: no longer in the node-test set"),
        })
        .collect();
    let known = exceptions();
    for (n, reason) in &known {
        match results.get(n) {
            Some((_, Outcome::Passed)) => {
                println!("named exception {n} passes now: remove it from {EXCEPTIONS}")
            }
            Some((_, o)) => println!("named exception {n}: {} — {reason}", o.describe()),
            None => println!("named exception {n} is not in the node-test set"),
        }
    }
    let wrong: Vec<String> = results
        .iter()
        .filter(|(n, (_, o))| matches!(o, Outcome::Wrong(_)) && !known.contains_key(*n))
        .map(|(n, (_, o))| format!("{n}: {}", o.describe()))
        .collect();
    assert!(
        results.len() > 1800,
        "expected the full node-test set, found {}",
        results.len()
    );
    assert!(
        regressions.is_empty(),
        "{} listed tests stopped passing:\n{}",
        regressions.len(),
        regressions.join("\n")
    );
    assert!(
        wrong.is_empty(),
        "{} wrong answers:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// Prints the totals, the per-op table (ours by outcome, onnxruntime's passes, the gap) and every
/// test that failed for a reason other than a missing kernel.
fn report(results: &BTreeMap<String, (String, Outcome)>, ort: &BTreeSet<String>) {
    // Per op: counts by outcome column, onnxruntime's passes, and the gap (tests onnxruntime
    // passes that we do not).
    let mut per_op: BTreeMap<&str, ([usize; 5], usize, usize)> = BTreeMap::new();
    let mut totals = [0usize; 5];
    for (name, (key, o)) in results {
        let e = per_op.entry(key.as_str()).or_default();
        e.0[o.column()] += 1;
        totals[o.column()] += 1;
        if ort.contains(name) {
            e.1 += 1;
            if *o != Outcome::Passed {
                e.2 += 1;
            }
        }
    }
    let gap: usize = per_op.values().map(|e| e.2).sum();
    let ours_not_ort = results
        .iter()
        .filter(|(n, (_, o))| *o == Outcome::Passed && !ort.contains(*n))
        .count();
    println!(
        "engine node tests: {} passed / {} total ({} wrong answers, {} errors, {} need an op without a kernel, {} skipped: non-numeric data)",
        totals[0], results.len(), totals[1], totals[2], totals[3], totals[4]
    );
    println!(
        "onnxruntime passes {}; of those the engine does not pass {gap}; the engine passes {ours_not_ort} that onnxruntime does not",
        ort.len()
    );
    println!("per op (passed / wrong / error / no kernel / skipped | onnxruntime passes, gap), ops with a gap first:");
    let mut rows: Vec<_> = per_op.iter().collect();
    rows.sort_by_key(|(k, e)| (std::cmp::Reverse(e.2), *k));
    for (k, (c, o, g)) in rows {
        println!(
            "  {k:<40} {:>3} / {:>2} / {:>2} / {:>2} / {:>2} | ort {:>3}, gap {g}",
            c[0], c[1], c[2], c[3], c[4], o
        );
    }
    println!("wrong answers and errors:");
    for (n, (_, o)) in results {
        if matches!(o, Outcome::Wrong(_) | Outcome::Error(_)) {
            println!("  {n}: {}", o.describe());
        }
    }
}
