//! `denoise-prune` (DenoiseRotator's layer-by-layer protocol) on the real SmolLM2-135M fixture
//! (decomposed), with a small calibration set (4 × 64 tokens of sotu_calib):
//! - zero iterations rotate nothing and write exactly the bytes of plain `prune`;
//! - with every rotation kept and almost nothing pruned (0.1 %), the model still computes the
//!   original function (`compare` on 8 × 128 of sotu_eval): a rotation folded into one side of a
//!   block but not the other, or a boundary in the wrong place, would wreck the logits;
//!   one d × d boundary per block was added and the head was untied by `fold-norms`;
//! - `keep=better` drops the rotations that make a block prune worse: with magnitude 2:4 some
//!   blocks keep theirs and some drop them, and every decision agrees with the two measured
//!   block output errors the note reports;
//! - refusals before any work: no calibration, norms not folded, an N:M pattern whose M does not
//!   divide a width — and no output file.

mod common;

use common::{compare_on_sotu, fixtures, stat, TempDir};

const VOCAB_X_D: u64 = 49_152 * 576;
const D: u64 = 576;

fn opt(pipeline: &str, out: &std::path::Path, calib: bool) -> ortho_opt::DriverOutput {
    common::opt_smollm(pipeline, out, calib)
}

#[test]
fn denoise_prune_without_iterations_equals_prune() {
    let tmp = TempDir::new("denoise-prune-identity");
    let (a, b) = (tmp.path().join("plain.onnx"), tmp.path().join("dp.onnx"));
    let r = opt("fold-norms,prune{method=sparsegpt pattern=2:4}", &a, true);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = opt(
        "fold-norms,denoise-prune{method=sparsegpt pattern=2:4 iters=0}",
        &b,
        true,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(stat(&r.stderr, "denoise-prune.rotated"), 0);
    assert_eq!(stat(&r.stderr, "denoise-prune.boundaries"), 0);
    let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert!(x.len() > 100_000_000);
    assert!(
        x == y,
        "the two models differ ({} vs {} bytes)",
        x.len(),
        y.len()
    );
}

#[test]
fn denoise_prune_rotations_keep_the_function() {
    let tmp = TempDir::new("denoise-prune-function");
    let out = tmp.path().join("dp.onnx");
    let r = opt(
        "fold-norms,denoise-prune{method=wanda sparsity=0.001 iters=2 keep=always}",
        &out,
        true,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    eprintln!("{}", r.stderr);
    assert_eq!(stat(&r.stderr, "denoise-prune.rotated"), 30);
    assert_eq!(stat(&r.stderr, "denoise-prune.boundaries"), 30);
    // Every block's note reports its entropy and that it was rotated.
    let notes: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("entropy") && l.contains("; rotated"))
        .collect();
    assert_eq!(notes.len(), 30, "{}", r.stderr);
    let model = fixtures().join("smollm2-135m/decomposed.onnx");
    let before = ortho_frontends::import_file(&model)
        .expect("import")
        .parameter_count();
    let after = ortho_frontends::import_file(&out)
        .expect("re-import")
        .parameter_count();
    assert_eq!(after, before + VOCAB_X_D + 30 * D * D);
    let c = compare_on_sotu(&model.to_string_lossy(), &out.to_string_lossy());
    let num = |k: &str| {
        c[k].as_f64()
            .unwrap_or_else(|| panic!("{k} missing in {c}"))
    };
    let (rel, agree) = (num("delta_ppl_rel").abs(), num("argmax_agreement"));
    eprintln!(
        "relative ΔPPL {rel:e}, argmax agreement {agree}, max |Δlogit| {}",
        num("max_abs_logit_diff")
    );
    assert!(rel <= 1e-2, "relative ΔPPL {rel}");
    assert!(agree >= 0.97, "argmax agreement {agree}");
}

#[test]
fn denoise_prune_refusals() {
    let tmp = TempDir::new("denoise-prune-refuse");
    let out = tmp.path().join("dp.onnx");
    let r = opt("fold-norms,denoise-prune{method=magnitude}", &out, false);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("denoise-prune needs calibration data"),
        "{}",
        r.stderr
    );
    let r = opt("denoise-prune{method=wanda iters=1}", &out, true);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("the residual stream does not admit rotations")
            && r.stderr.contains("run fold-norms first"),
        "{}",
        r.stderr
    );
    let r = opt(
        "fold-norms,denoise-prune{method=wanda pattern=3:7}",
        &out,
        true,
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("divisible by 7") && r.stderr.contains("q_proj"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
}

#[test]
fn denoise_prune_drops_rotations_that_prune_worse() {
    let tmp = TempDir::new("denoise-prune-keep");
    let out = tmp.path().join("dp.onnx");
    let r = opt(
        "fold-norms,denoise-prune{method=magnitude pattern=2:4 iters=5}",
        &out,
        true,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut kept = 0;
    let mut dropped = 0;
    for line in r
        .stderr
        .lines()
        .filter(|l| l.contains("pruned block output error"))
    {
        // "...; pruned block output error A unrotated, B rotated; rotated|not rotated"
        let tail = line.split("pruned block output error ").nth(1).unwrap();
        let nums: Vec<f64> = tail
            .split([' ', ',', ';'])
            .filter_map(|w| w.parse().ok())
            .collect();
        let (a, b) = (nums[0], nums[1]);
        if line.ends_with("; rotated") {
            assert!(b < a, "kept a rotation that pruned worse: {line}");
            kept += 1;
        } else {
            assert!(line.ends_with("; not rotated"), "{line}");
            assert!(b >= a, "dropped a rotation that pruned better: {line}");
            dropped += 1;
        }
    }
    eprintln!("{kept} rotations kept, {dropped} dropped");
    assert_eq!(kept + dropped, 30, "{}", r.stderr);
    assert!(kept > 0 && dropped > 0, "{kept} kept, {dropped} dropped");
    assert_eq!(stat(&r.stderr, "denoise-prune.rotated"), kept);
    // 2:4 zeroes exactly half; a kept weight may happen to be zero as well.
    let (zeros, weights) = (
        stat(&r.stderr, "denoise-prune.zeros"),
        stat(&r.stderr, "denoise-prune.weights"),
    );
    assert!(
        zeros >= weights / 2 && zeros < weights / 2 + weights / 1000,
        "{zeros} of {weights}"
    );
}

/// With an N:M pattern, `denoise-prune` also permutes the rotated channels (default
/// `nm-permute=true`; the MLP's hidden channels with `nm-permute-mlp=true`; `nm-weight=0`, since the
/// N:M term of the objective leaves the permutation little to gain): every block's note reports the proxy cost (the row-normalized importance
/// an N:M selection removes) before → after for the stream, o's heads and down's hidden
/// channels — never higher, lower in most blocks — the pattern stays exact, and the model still
/// works: a permutation applied to one side of a layer but not the other (gate rows without down
/// columns, `Q1` without its boundary) scrambles the function and drives perplexity into the
/// thousands; this run stays within a small factor of the dense model.
#[test]
fn nm_permutations_lower_the_proxy_and_keep_the_model_working() {
    let tmp = TempDir::new("denoise-prune-permute");
    let out = tmp.path().join("dp.onnx");
    let r = opt(
        "fold-norms,denoise-prune{method=wanda pattern=2:4 iters=2 keep=always nm-permute-mlp=true nm-weight=0}",
        &out,
        true,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut lower = [0usize; 3];
    let notes: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("permutation proxy cost"))
        .collect();
    assert_eq!(notes.len(), 30, "{}", r.stderr);
    for line in &notes {
        let tail = line.split("permutation proxy cost ").nth(1).unwrap();
        let tail = tail.split(';').next().unwrap();
        let nums: Vec<f64> = tail
            .split([' ', ','])
            .filter_map(|w| w.parse().ok())
            .collect();
        assert_eq!(nums.len(), 6, "{line}");
        for k in 0..3 {
            assert!(nums[2 * k + 1] <= nums[2 * k], "cost raised: {line}");
            if nums[2 * k + 1] < nums[2 * k] {
                lower[k] += 1;
            }
        }
    }
    assert!(
        lower.iter().all(|&n| n >= 20),
        "blocks with a lower cost: {lower:?}"
    );
    let (zeros, weights) = (
        stat(&r.stderr, "denoise-prune.zeros"),
        stat(&r.stderr, "denoise-prune.weights"),
    );
    assert!(
        zeros >= weights / 2 && zeros < weights / 2 + weights / 1000,
        "{zeros} of {weights}"
    );
    let model = fixtures().join("smollm2-135m/decomposed.onnx");
    let c = compare_on_sotu(&model.to_string_lossy(), &out.to_string_lossy());
    let rel = c["delta_ppl_rel"].as_f64().expect("delta_ppl_rel");
    eprintln!("relative ΔPPL against the dense model {rel}");
    assert!(
        rel < 15.0,
        "relative ΔPPL {rel}: the permuted model is broken"
    );
}
