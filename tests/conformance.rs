//! ONNX backend node tests (1,884 models regenerated from the onnx wheel): every model goes
//! import → verify → export; its `.oir` text round-trips (print → parse → print identical); then
//! onnx's checker (full_check) must accept each export, and wherever onnxruntime runs the
//! original, the export must give bitwise the same outputs on the shipped inputs.

mod common;

use common::{fixtures, python_tool, TempDir};
use ortho_ir::text::{parse_module, print_module, PrintOptions};

#[test]
fn node_tests_round_trip() {
    let node_dir = fixtures().join("onnx-node-tests/node");
    let mut tests: Vec<_> = std::fs::read_dir(&node_dir)
        .expect("node tests")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("model.onnx").exists())
        .collect();
    tests.sort();
    assert!(
        tests.len() > 1800,
        "expected the full node-test set, found {}",
        tests.len()
    );
    let tmp = TempDir::new("conformance");
    let mut failures = Vec::new();
    for t in &tests {
        let name = t.file_name().expect("name").to_string_lossy().to_string();
        let model = t.join("model.onnx");
        let m = match ortho_frontends::import_file(&model) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{name}: import: {e}"));
                continue;
            }
        };
        if let Err(d) = ortho_ir::verify::verify_module(&m) {
            failures.push(format!("{name}: verify: {d}"));
        }
        // The text round trip is checked both elided (the default) and with every byte printed.
        for opts in [PrintOptions::default(), PrintOptions { elide_above: None }] {
            let a = print_module(&m, opts);
            match parse_module(&a) {
                Ok(m2) => {
                    let b = print_module(&m2, opts);
                    if a != b {
                        failures.push(format!("{name}: print → parse → print differs"));
                    }
                }
                Err(e) => failures.push(format!("{name}: parse of printed text: {e}")),
            }
        }
        let out_dir = tmp.path().join(&name);
        std::fs::create_dir_all(&out_dir).expect("mkdir");
        if let Err(e) =
            ortho_frontends::export_file(&m, &out_dir.join("model.onnx"), &Default::default())
        {
            std::fs::write(out_dir.join("ERROR"), e.to_string()).expect("write");
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let json_path = tmp.path().join("report.json");
    let summary = python_tool(
        "check_exports.py",
        &[
            node_dir.to_str().expect("utf8"),
            tmp.path().to_str().expect("utf8"),
            "--json",
            json_path.to_str().expect("utf8"),
            "-q",
        ],
    );
    let report = std::fs::read_to_string(&json_path).expect("report");
    let num = |key: &str| -> i64 {
        let pat = format!("\"{key}\": ");
        let at = report
            .find(&pat)
            .unwrap_or_else(|| panic!("key {key} in report"));
        report[at + pat.len()..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .expect("number")
    };
    println!("{summary}");
    println!(
        "node tests: total {} checker_ok {} ort_identical {} ort_unsupported {}",
        num("total"),
        num("checker_ok"),
        num("ort_identical"),
        num("ort_unsupported")
    );
    assert_eq!(num("total"), tests.len() as i64);
    // A model whose original already fails the checker is not counted against us.
    assert_eq!(
        num("checker_ok") + num("checker_failed_orig_too"),
        tests.len() as i64,
        "checker rejected exports:\n{summary}"
    );
    assert_eq!(
        num("ort_identical") + num("ort_unsupported") + num("ort_nondeterministic_ok"),
        tests.len() as i64,
        "onnxruntime outputs differ:\n{summary}"
    );
    assert!(
        num("ort_identical") >= 1600,
        "too few identical runs:\n{summary}"
    );
}
