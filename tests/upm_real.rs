//! UPM on the real SmolLM2-135M (decomposed): K = 3 shards, one Haar re-key (folded), the chain
//! checked against the whole model in our engine (`compare` on a manifest) and in stock
//! onnxruntime (scripts/upm_ort_chain.py). Goals of issue 12: relative ΔPPL ≤ 1e-6,
//! max |Δlogit| ≤ 1e-3, argmax agreement 100 %.

mod common;

use common::{compare_on_sotu, fixtures, python, repo, run, TempDir};

#[test]
fn smollm_three_shards_epoch_one_matches_in_our_engine_and_onnxruntime() {
    let f = fixtures();
    let model = f.join("smollm2-135m/decomposed.onnx");
    let tmp = TempDir::new("upm-real");
    let dir = tmp.path().join("set");
    let (m, d) = (model.to_string_lossy(), dir.to_string_lossy());
    let r = run(&["shard", "split", &m, "-k", "3", "-o", &d]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(&["shard", "rekey", &d, "--kind", "haar", "--seed", "3"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("epoch 1"), "{}", r.stdout);

    let j = compare_on_sotu(&m, &d);
    let rel = j["delta_ppl_rel"].as_f64().expect("delta_ppl_rel").abs();
    let dl = j["max_abs_logit_diff"]
        .as_f64()
        .expect("max_abs_logit_diff");
    let agree = j["argmax_agreement"].as_f64().expect("argmax_agreement");
    eprintln!("our engine, epoch 1: ΔPPL rel {rel:.3e}, max |Δlogit| {dl:.3e}, argmax {agree}");
    assert!(rel <= 1e-6, "relative ΔPPL {rel}");
    assert!(dl <= 1e-3, "max |Δlogit| {dl}");
    assert_eq!(agree, 1.0);

    let out = std::process::Command::new(python())
        .arg(repo().join("scripts/upm_ort_chain.py"))
        .args([&*m, &*d])
        .arg(f.join("text/sotu_eval.smollm2-135m.bin"))
        .args(["--windows", "2"])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let o: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("upm_ort_chain.py prints JSON");
    eprintln!("onnxruntime: {o}");
    assert_eq!(o["shards_loaded"].as_u64(), Some(3));
    assert_eq!(o["epoch"].as_u64(), Some(1));
    assert!(
        o["delta_ppl_rel"].as_f64().expect("ppl").abs() <= 1e-6,
        "{o}"
    );
    assert!(
        o["max_abs_logit_diff"].as_f64().expect("diff") <= 1e-3,
        "{o}"
    );
    assert_eq!(o["argmax_agreement"].as_f64(), Some(1.0), "{o}");
}
