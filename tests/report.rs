//! What the optimizer records about a run: `--report FILE.json`, the provenance in the output's
//! `metadata_props`, the output limits (`--max-opset`, `--max-ir-version`, `--allowed-domains`)
//! and the model statistics of `analyze`.

mod common;

use common::{repo, run, TempDir};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A small decoder of the file tests (embedding, one block, tied head).
fn model() -> PathBuf {
    repo().join("tests/filecheck/analyze/json.oir")
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn sha256_hex(p: &Path) -> String {
    let bytes = std::fs::read(p).expect("read output");
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn json(p: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(p).expect("report written");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn report_records_passes_sizes_and_output_hashes() {
    let tmp = TempDir::new("report-json");
    let out = tmp.path().join("out.onnx");
    let rep = tmp.path().join("run.json");
    // A dead node, so dce has something to remove and the node counts differ.
    let text = std::fs::read_to_string(model()).expect("model");
    let dead = text.replacen(
        "%h0 = onnx.Gather",
        "%dead = onnx.Neg(%E) : ?\n  %h0 = onnx.Gather",
        1,
    );
    assert_ne!(dead, text, "the model has the Gather this test edits");
    let input = tmp.path().join("in.oir");
    std::fs::write(&input, dead).expect("write input");
    let r = run(&[
        &s(&input),
        "-o",
        &s(&out),
        "--pass-pipeline=canonicalize,cse,dce",
        "--report",
        &s(&rep),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = json(&rep);
    assert_eq!(
        v["pipeline"],
        "canonicalize{fold=true max-fold-bytes=65536},cse,dce"
    );
    let passes = v["passes"].as_array().expect("passes");
    let names: Vec<&str> = passes.iter().filter_map(|p| p["pass"].as_str()).collect();
    assert_eq!(names, ["canonicalize", "cse", "dce"]);
    assert!(passes.iter().all(|p| p["wall_ms"].as_f64().is_some()));
    assert!(
        v["statistics"]["dce.removed"].as_u64().unwrap_or(0) >= 1,
        "{v}"
    );
    let (before, after) = (&v["before"], &v["after"]);
    assert!(
        after["nodes"].as_u64() < before["nodes"].as_u64(),
        "dce removed a node: {before} → {after}"
    );
    assert_eq!(before["ops"]["Neg"], 1, "{before}");
    assert!(after["ops"].get("Neg").is_none(), "{after}");
    assert!(before["parameters"].as_u64().unwrap_or(0) > 0, "{before}");
    assert_eq!(before["opsets"]["ai.onnx"], 17, "{before}");
    let outputs = v["outputs"].as_array().expect("outputs");
    assert_eq!(outputs.len(), 1, "{v}");
    assert_eq!(outputs[0]["sha256"], sha256_hex(&out));
    assert_eq!(
        outputs[0]["bytes"].as_u64(),
        Some(std::fs::metadata(&out).expect("out").len())
    );
    assert_eq!(v["command"][0], "ortho-opt");
}

#[test]
fn report_hashes_external_data_too() {
    let tmp = TempDir::new("report-ext");
    let out = tmp.path().join("out.onnx");
    let rep = tmp.path().join("run.json");
    let r = run(&[
        &s(&model()),
        "-o",
        &s(&out),
        "--external-data=16",
        "--report",
        &s(&rep),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = json(&rep);
    let outputs = v["outputs"].as_array().expect("outputs");
    assert_eq!(outputs.len(), 2, "{v}");
    let data = tmp.path().join("out.onnx.data");
    assert_eq!(outputs[1]["sha256"], sha256_hex(&data));
    // No pipeline ran: the report still says what was read and written.
    assert_eq!(v["passes"].as_array().map(Vec::len), Some(0));
    assert_eq!(v["before"], v["after"]);
}

#[test]
fn a_failed_run_writes_no_report() {
    let tmp = TempDir::new("report-fail");
    let rep = tmp.path().join("run.json");
    let out = tmp.path().join("out.onnx");
    let r = run(&[
        &s(&model()),
        "-o",
        &s(&out),
        "--max-opset=13",
        "--report",
        &s(&rep),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(!rep.exists() && !out.exists());
}

/// The `metadata_props` of an ONNX file.
fn props(p: &Path) -> Vec<(String, String)> {
    let m = ortho_frontends::import_file(p).expect("import output");
    m.meta.metadata_props
}

#[test]
fn outputs_record_version_and_pipeline_unless_opted_out() {
    let tmp = TempDir::new("report-provenance");
    let out = tmp.path().join("out.onnx");
    let r = run(&[&s(&model()), "-o", &s(&out), "--pass-pipeline=cse,dce"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let p = props(&out);
    let get = |k: &str| p.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    assert_eq!(
        get("ortho-opt.version").as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(get("ortho-opt.pipeline").as_deref(), Some("cse,dce"));
    // A second run replaces the entries instead of adding to them.
    let again = tmp.path().join("again.onnx");
    let r = run(&[&s(&out), "-o", &s(&again), "--pass-pipeline=dce"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let p = props(&again);
    let pipelines: Vec<&str> = p
        .iter()
        .filter(|(k, _)| k == "ortho-opt.pipeline")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(pipelines, ["dce"]);
    let bare = tmp.path().join("bare.onnx");
    let r = run(&[&s(&model()), "-o", &s(&bare), "--no-provenance"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        !props(&bare)
            .iter()
            .any(|(k, _)| k.starts_with("ortho-opt.")),
        "{:?}",
        props(&bare)
    );
}

#[test]
fn output_limits_are_enforced_and_nothing_is_written() {
    let tmp = TempDir::new("report-limits");
    let out = tmp.path().join("out.onnx");
    // json.oir imports ai.onnx 17 with IR version 8.
    for (flag, needle) in [
        (
            "--max-opset=16",
            "opset 17 of ai.onnx, above --max-opset 16",
        ),
        (
            "--max-ir-version=7",
            "IR version 8, above --max-ir-version 7",
        ),
    ] {
        let r = run(&[&s(&model()), "-o", &s(&out), flag]);
        assert_eq!(r.code, 1, "{flag}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{flag}: {}", r.stderr);
        assert!(!out.exists(), "{flag} wrote the output");
    }
    for flag in [
        "--max-opset=17",
        "--max-ir-version=8",
        "--allowed-domains=x.y",
    ] {
        let r = run(&[&s(&model()), "-o", &s(&out), flag]);
        assert_eq!(r.code, 0, "{flag}: {}", r.stderr);
        std::fs::remove_file(&out).expect("written");
    }
    // An op of another domain is refused by name unless its domain is allowed.
    let text = std::fs::read_to_string(model()).expect("model");
    let custom = text
        .replacen(
            "%h0 = onnx.Gather(%E, %ids) {axis = 0} : ?",
            "%h0g = onnx.Gather(%E, %ids) {axis = 0} : ?\n  %h0 = op<\"com.example\", \"Swish\">(%h0g) : ?",
            1,
        )
        .replacen("\"\" = 17", "\"\" = 17, \"com.example\" = 1", 1);
    assert_ne!(custom, text);
    let input = tmp.path().join("custom.oir");
    std::fs::write(&input, custom).expect("write");
    let r = run(&[
        &s(&input),
        "-o",
        &s(&out),
        "--allowed-domains=com.microsoft",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("'com.example'") && r.stderr.contains("Swish"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
    let r = run(&[
        &s(&input),
        "-o",
        &s(&out),
        "--allowed-domains=com.microsoft,com.example",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn analyze_reports_parameters_bytes_opsets_and_flops() {
    let r = run(&["analyze", &s(&model()), "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).expect("JSON");
    let st = &v["statistics"];
    // json.oir: embedding 6×4, 7 linears 4×4 (q k v o gate up down, all bias-free), norm gains.
    assert_eq!(st["linear_layers"], 8, "{st}");
    // 7 × (2 × 4 × 4) + the head's 2 × 4 × 6.
    assert_eq!(st["flops_per_token"], 272, "{st}");
    // 24 (embedding) + 2 scalars + 3 × 4 (gains) + 7 × 16 (linears).
    assert_eq!(st["parameters"], 150, "{st}");
    assert_eq!(st["opsets"]["ai.onnx"], 17, "{st}");
    assert_eq!(st["bytes_per_dtype"]["f32"], 600, "{st}");
    let summary = run(&["analyze", &s(&model())]);
    assert_eq!(summary.code, 0, "{}", summary.stderr);
    assert!(
        summary.stdout.contains("FLOPs per token"),
        "{}",
        summary.stdout
    );
    assert!(
        summary.stdout.contains("opsets: ai.onnx 17"),
        "{}",
        summary.stdout
    );
}
