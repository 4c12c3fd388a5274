//! `--report-html FILE.html`: the calibration passes' per-layer results as a self-contained page,
//! on a 2-block prefix of the real SmolLM2-135M (the fixture builder's `--layers 2`) with a small
//! calibration set (4 × 64 tokens). The page
//! has one table row per layer, and every number of that layer's note in the JSON report
//! (`--report`) appears in its row with the same digits.

mod common;

use common::{fixtures, python_tool, run, TempDir};

/// The `<td>` texts of each `<tr>` of the page's per-layer table.
fn table_rows(html: &str) -> Vec<Vec<String>> {
    let start = html.find("id=\"layers\"").expect("the per-layer table");
    let table = &html[start..html[start..].find("</table>").expect("table end") + start];
    table
        .split("<tr>")
        .skip(1)
        .map(|r| {
            r.split("<td>")
                .skip(1)
                .map(|c| c.split("</td>").next().unwrap_or("").to_string())
                .collect::<Vec<String>>()
        })
        .filter(|cells| !cells.is_empty())
        .collect()
}

#[test]
fn calibration_html_has_a_row_per_layer_matching_the_json_report() {
    let f = fixtures();
    let tmp = TempDir::new("calib-html");
    let (out, json, html) = (
        tmp.path().join("dp.onnx"),
        tmp.path().join("r.json"),
        tmp.path().join("r.html"),
    );
    let model = tmp.path().join("l2.onnx");
    let gguf = f.join("smollm2-135m/source.gguf");
    python_tool(
        "build_llama_onnx.py",
        &[
            &gguf.to_string_lossy(),
            &model.to_string_lossy(),
            "--layers",
            "2",
        ],
    );
    let text = f.join("text/sotu_calib.txt");
    let tok = f.join("smollm2-135m/tokenizer.json");
    let args: Vec<String> = vec![
        model.display().to_string(),
        "-o".into(),
        out.display().to_string(),
        "--pass-pipeline=fold-norms,denoise-prune{method=magnitude pattern=2:4 iters=1 keep=better}"
            .into(),
        "--calib-text".into(),
        text.display().to_string(),
        "--tokenizer".into(),
        tok.display().to_string(),
        "--calib-samples".into(),
        "4".into(),
        "--calib-seqlen".into(),
        "64".into(),
        "-q".into(),
        format!("--report={}", json.display()),
        format!("--report-html={}", html.display()),
    ];
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run(&refs);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("parse");
    let notes: Vec<&str> = report["notes"]
        .as_array()
        .expect("notes")
        .iter()
        .filter_map(|n| n.as_str())
        .filter(|n| n.starts_with("denoise-prune: layer "))
        .collect();
    assert_eq!(
        notes.len(),
        2,
        "one note per block of the prefix: {notes:?}"
    );
    let page = std::fs::read_to_string(&html).expect("html");
    assert!(page.starts_with("<!DOCTYPE html>") && page.contains("<svg"));
    // Self-contained: no scripts, no links or images to fetch (the SVG namespace URI is a name).
    for fetch in ["<script", "src=", "href=", "https://"] {
        assert!(!page.contains(fetch), "{fetch}");
    }
    let rows = table_rows(&page);
    assert_eq!(rows.len(), 2, "one row per layer");
    let rotated = |cells: &Vec<String>| cells.last().map(String::as_str) == Some("yes");
    for (i, (note, cells)) in notes.iter().zip(&rows).enumerate() {
        assert_eq!(cells[0], "denoise-prune");
        assert_eq!(cells[1], i.to_string());
        let body = note.split_once(&format!("layer {i}:")).expect("layer").1;
        // Every number the note prints appears in the row, with the same digits.
        let numbers: Vec<&str> = body
            .split_whitespace()
            .map(|w| w.trim_end_matches([',', ';']))
            .filter(|w| w.parse::<f64>().is_ok())
            .collect();
        assert!(
            numbers.len() >= 7 + 2 + 2,
            "sparsity, entropy and errors: {note}"
        );
        for n in numbers {
            assert!(
                cells.iter().any(|c| c == n),
                "{n} of {note:?} not in {cells:?}"
            );
        }
        assert_eq!(rotated(cells), note.ends_with("; rotated"), "{note}");
    }
    let kept = report["statistics"]["denoise-prune.rotated"]
        .as_u64()
        .expect("rotated statistic");
    assert_eq!(rows.iter().filter(|c| rotated(c)).count() as u64, kept);
}
