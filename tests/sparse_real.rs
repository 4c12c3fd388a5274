//! `prune{pattern=2:4}` → `sparsify` on SmolLM2-135M (decomposed and fused fixtures): the
//! compact model's logits equal the dense-with-zeros model's within 1e-4 × max |logit| on 64
//! tokens of sotu_eval (the same weights; only the order of the additions differs), and the
//! blocks' compact weights take at most 0.57 of their dense bytes. Magnitude pruning, so the
//! test needs no calibration and runs in seconds.

mod common;

use common::fixtures;
use ortho_codegen::cpu::{HostTensor, Plan};
use ortho_passes::sparsity::matrix::Pattern;
use ortho_passes::transforms::prune::{prune, PruneOptions};
use ortho_passes::transforms::sparsify::{sparsify, SparsifyOptions};

fn check(file: &str) {
    let f = fixtures();
    let mut m = ortho_frontends::import_file(&f.join("smollm2-135m").join(file))
        .unwrap_or_else(|e| panic!("{e}"));
    let bytes = std::fs::read(f.join("text/sotu_eval.smollm2-135m.bin")).expect("tokens");
    let ids: Vec<i64> = bytes
        .chunks_exact(2)
        .take(64)
        .map(|b| u16::from_le_bytes([b[0], b[1]]) as i64)
        .collect();
    let o = PruneOptions {
        pattern: Pattern::NM { n: 2, m: 4 },
        ..PruneOptions::default()
    };
    prune(&mut m, &o, None).expect("prune");
    let logits = |m: &ortho_ir::Module| {
        let plan = Plan::compile(m).expect("compile");
        let feed = HostTensor::from_vec(vec![1, ids.len()], ids.clone()).expect("feed");
        plan.run(&[("input_ids", feed)]).expect("run")[0]
            .1
            .as_f32()
            .expect("f32")
            .to_vec()
    };
    let dense = logits(&m);
    let st = sparsify(&mut m, &SparsifyOptions::default()).expect("sparsify");
    let compact = logits(&m);
    let max = dense.iter().fold(0.0f32, |a, x| a.max(x.abs()));
    let diff = dense
        .iter()
        .zip(&compact)
        .fold(0.0f32, |a, (x, y)| a.max((x - y).abs()));
    let ratio = st.compact_bytes as f64 / st.dense_bytes as f64;
    eprintln!(
        "{file}: {} linears, compact/dense bytes {ratio:.4}, max |Δlogit| {diff:e} of max |logit| {max}",
        st.linears
    );
    assert_eq!(st.linears, 30 * 7);
    assert!(ratio <= 0.57, "compact/dense {ratio}");
    assert!(diff <= 1e-4 * max, "max |Δ| {diff} of {max}");
}

#[test]
fn compact_2_4_matches_dense_with_zeros_decomposed() {
    check("decomposed.onnx");
}

#[test]
fn compact_2_4_matches_dense_with_zeros_fused() {
    check("fused.onnx");
}
