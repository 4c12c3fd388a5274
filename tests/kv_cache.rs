//! `kv-cache`: the cached graph equals the full graph at every generation step.
//! - a 2-block prefix of SmolLM2 (`build_llama_onnx.py --layers 2`): prefill 16 tokens, then 64
//!   greedy steps; each step's logits equal the full graph's last row on all tokens so far
//!   within 1e-5 × max |logit|;
//! - the real fixture (30 blocks) over 8 steps, the same bound;
//! - a DenoiseRotator-style prefix (`denoise-rotate{mode=per-layer}`: a boundary MatMul between
//!   the blocks) over 32 steps, the same bound;
//! - the exported cached prefix runs in stock onnxruntime and agrees with our engine;
//! - a bidirectional (maskless) or fused-attention model is refused naming the node.

mod common;

use common::{fixtures, python, python_tool, run, TempDir};
use ortho_codegen::cpu::{HostTensor, Plan};
use ortho_ir::Module;
use ortho_passes::kv_cache::{cache_names, kv_cache};

/// The first `n` tokens of sotu_eval.
fn tokens(n: usize) -> Vec<i64> {
    let bytes = std::fs::read(fixtures().join("text/sotu_eval.smollm2-135m.bin")).expect("tokens");
    bytes
        .chunks_exact(2)
        .take(n)
        .map(|b| u16::from_le_bytes([b[0], b[1]]) as i64)
        .collect()
}

/// The SmolLM2 prefix with `layers` blocks, written by the fixture builder into `dir`.
fn prefix(dir: &std::path::Path, layers: usize) -> std::path::PathBuf {
    let out = dir.join(format!("l{layers}.onnx"));
    let gguf = fixtures().join("smollm2-135m/source.gguf");
    python_tool(
        "build_llama_onnx.py",
        &[
            &gguf.to_string_lossy(),
            &out.to_string_lossy(),
            "--layers",
            &layers.to_string(),
        ],
    );
    out
}

/// Generates `steps` greedy tokens after `prompt` with the cached graph, checking every step's
/// logits against the full graph's last row. Returns the largest |Δ| / max |logit| seen.
fn cached_equals_full(full: &Module, prompt: &[i64], steps: usize) -> f64 {
    let mut cached = full.clone();
    let st = kv_cache(&mut cached).unwrap_or_else(|e| panic!("kv-cache: {e}"));
    assert!(st.layers >= 2, "{st:?}");
    let fp = Plan::compile(full).expect("compile full");
    let cp = Plan::compile(&cached).expect("compile cached");
    let layers = st.layers;
    let mut cache = ortho_opt::generate::empty_caches(&cached).expect("empty caches");
    let mut all = prompt.to_vec();
    let mut new = prompt.to_vec();
    let mut worst = 0.0f64;
    for step in 0..=steps {
        let mut feeds = vec![(
            "input_ids".to_string(),
            HostTensor::from_vec(vec![1, new.len()], new.clone()).expect("ids"),
        )];
        feeds.extend(cache.drain(..));
        let refs: Vec<(&str, HostTensor)> =
            feeds.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        let out = cp.run(&refs).expect("run cached");
        let logits = out[0].1.as_f32().expect("f32");
        let vocab = out[0].1.shape()[2];
        let last = &logits[logits.len() - vocab..];
        for i in 0..layers {
            let [pk, pv, ok, ov] = cache_names(i);
            let find = |n: &str| {
                out.iter()
                    .find(|(o, _)| o == n)
                    .unwrap_or_else(|| panic!("{n}"))
                    .1
                    .clone()
            };
            cache.push((pk, find(&ok)));
            cache.push((pv, find(&ov)));
        }
        let fo = fp
            .run(&[(
                "input_ids",
                HostTensor::from_vec(vec![1, all.len()], all.clone()).expect("ids"),
            )])
            .expect("run full");
        let fl = fo[0].1.as_f32().expect("f32");
        let flast = &fl[fl.len() - vocab..];
        let max = flast.iter().fold(0.0f32, |a, x| a.max(x.abs())) as f64;
        let diff = last
            .iter()
            .zip(flast)
            .fold(0.0f32, |a, (x, y)| a.max((x - y).abs())) as f64;
        worst = worst.max(diff / max);
        assert!(
            diff <= 1e-5 * max,
            "step {step}: max |Δ| {diff} of max |logit| {max}"
        );
        if step == 0 {
            // The prefill's other rows match too.
            let n = all.len() * vocab;
            let d = logits
                .iter()
                .zip(&fl[..n])
                .fold(0.0f32, |a, (x, y)| a.max((x - y).abs())) as f64;
            assert!(d <= 1e-5 * max, "prefill rows: max |Δ| {d} of {max}");
        }
        let next = last
            .iter()
            .enumerate()
            .fold(
                (0usize, f32::MIN),
                |b, (i, &x)| if x > b.1 { (i, x) } else { b },
            )
            .0 as i64;
        all.push(next);
        new = vec![next];
    }
    worst
}

#[test]
fn two_block_prefix_cached_equals_full_over_64_tokens() {
    let tmp = TempDir::new("kv-prefix");
    let path = prefix(tmp.path(), 2);
    let m = ortho_frontends::import_file(&path).expect("import");
    let worst = cached_equals_full(&m, &tokens(16), 64);
    eprintln!("2-block prefix, 64 steps: max |Δ| / max |logit| = {worst:e}");
}

#[test]
fn denoise_rotated_prefix_with_boundaries_cached_equals_full() {
    let tmp = TempDir::new("kv-boundary");
    let path = prefix(tmp.path(), 2);
    let out = tmp.path().join("rotated.onnx");
    let f = fixtures();
    let r = run(&[
        &path.to_string_lossy(),
        "-o",
        &out.to_string_lossy(),
        "--pass-pipeline=fold-norms,denoise-rotate{mode=per-layer iters=2}",
        "--calib-text",
        &f.join("text/sotu_calib.txt").to_string_lossy(),
        "--tokenizer",
        &f.join("smollm2-135m/tokenizer.json").to_string_lossy(),
        "--calib-samples",
        "2",
        "--calib-seqlen",
        "32",
        "--calib-quiet",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let m = ortho_frontends::import_file(&out).expect("import");
    let s = ortho_ir::analysis::analyze_transformer(&m, m.main);
    assert!(
        !s.boundaries.is_empty(),
        "no boundary MatMul between the blocks"
    );
    let worst = cached_equals_full(&m, &tokens(16), 32);
    eprintln!(
        "rotated prefix with {} boundaries, 32 steps: max |Δ| / max |logit| = {worst:e}",
        s.boundaries.len()
    );
}

#[test]
fn real_model_cached_equals_full_over_8_tokens() {
    let m = ortho_frontends::import_file(&fixtures().join("smollm2-135m/decomposed.onnx"))
        .expect("import");
    let worst = cached_equals_full(&m, &tokens(12), 8);
    eprintln!("SmolLM2-135M, 8 steps: max |Δ| / max |logit| = {worst:e}");
}

/// The exported cached prefix in onnxruntime: prefill then 8 greedy steps, each step's logits
/// against onnxruntime's own full graph on all tokens.
#[test]
fn exported_cached_graph_runs_in_onnxruntime() {
    let tmp = TempDir::new("kv-ort");
    let full = prefix(tmp.path(), 2);
    let cached = tmp.path().join("cached.onnx");
    let r = run(&[
        &full.to_string_lossy(),
        "-o",
        &cached.to_string_lossy(),
        "--pass-pipeline=kv-cache",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let script = r#"
import sys, numpy as np, onnxruntime as ort
full = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
cached = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
ids = [int(x) for x in sys.argv[3].split(",")]
feeds = {}
for i in cached.get_inputs()[1:]:
    shape = [1 if d == "batch" else 0 if isinstance(d, str) else d for d in i.shape]
    feeds[i.name] = np.zeros(shape, np.float32)
names = [o.name for o in cached.get_outputs()]
new, allt, worst = ids, list(ids), 0.0
for step in range(9):
    feeds["input_ids"] = np.array([new], np.int64)
    out = dict(zip(names, cached.run(None, feeds)))
    last = out[names[0]][0, -1]
    ref = full.run(None, {"input_ids": np.array([allt], np.int64)})[0][0, -1]
    worst = max(worst, float(np.abs(last - ref).max() / np.abs(ref).max()))
    for n in names[1:]:
        feeds[n.replace("present", "past")] = out[n]
    nxt = int(last.argmax()); allt.append(nxt); new = [nxt]
print(worst)
"#;
    let ids: Vec<String> = tokens(12).iter().map(|x| x.to_string()).collect();
    let out = std::process::Command::new(python())
        .args([
            "-c",
            script,
            &full.to_string_lossy(),
            &cached.to_string_lossy(),
            &ids.join(","),
        ])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let worst: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a number");
    eprintln!("onnxruntime, cached vs full over 9 steps: max |Δ| / max |logit| = {worst:e}");
    assert!(worst <= 1e-5, "{worst}");
}

/// The fused fixture's opset-23 `Attention(is_causal=1)` aligns its mask top-left, which is wrong
/// once cached keys outnumber the queries: refused, naming the node, the module unchanged.
#[test]
fn fused_attention_is_refused_by_node() {
    let mut m =
        ortho_frontends::import_file(&fixtures().join("smollm2-135m/fused.onnx")).expect("import");
    let e = kv_cache(&mut m).expect_err("fused attention accepted");
    let msg = e.to_string();
    assert!(msg.contains("fused Attention op"), "{msg}");
    // The error names the Attention node itself, by id and in the printed text.
    let id = e.node_id.expect("no node named");
    assert!(
        m.main_graph().node(id).op.name().ends_with("Attention"),
        "{msg}"
    );
    assert!(!e.node.is_empty() && msg.contains(&e.node), "{msg}");
    assert!(!ortho_passes::kv_cache::has_cache(&m));
}
