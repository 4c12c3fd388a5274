//! `poet-reparam` and `poet-merge` on a tiny decoder (4-wide, one block), run by our engine:
//! - at zero skew the rewritten model computes exactly the original (bit for bit);
//! - after nonzero skew, merging gives the outputs the POET graph computed (with and without a
//!   bias), a graph structurally identical to the input's, and weights whose singular values
//!   are the original's (within the truncation's predicted error);
//! - `kind=fs` likewise.

use ortho_codegen::cpu::{HostTensor, Plan};
use ortho_ir::{Module, Op, TensorData};
use ortho_passes::poet::merge::{find_poet, poet_merge, read_state};
use ortho_passes::poet::reparam::{poet_reparam, PoetReparamOptions};
use ortho_passes::poet::rng::SplitMix;
use ortho_passes::poet::{singular_values, PoetKind};

const DECODER: &str = include_str!("filecheck/poet/reparam.oir");

fn decoder(bias: bool) -> Module {
    let text = if bias {
        DECODER
            .replace(
                "%q = onnx.MatMul(%n1, %wq) : ?",
                "%q0 = onnx.MatMul(%n1, %wq) : ?\n  %q = onnx.Add(%q0, %bq) : ?",
            )
            .replace(
                "%eps = const",
                "%bq = const tensor<4xf32> dense<[0.3, -0.2, 0.5, 0.1]>\n  %eps = const",
            )
    } else {
        DECODER.to_string()
    };
    ortho_ir::text::parse_module(&text).expect("decoder parses")
}

fn logits(m: &Module) -> Vec<f32> {
    let plan = Plan::compile(m).expect("compile");
    let ids = vec![0i64, 3, 5, 1, 2, 4, 4, 0];
    let feed = HostTensor::from_vec(vec![2, 4], ids).expect("feed");
    let out = plan.run(&[("ids", feed)]).expect("run");
    out[0].1.as_f32().expect("f32 logits").to_vec()
}

/// Sets every skew vector to seeded Gaussian values of standard deviation `scale`.
fn perturb(m: &mut Module, scale: f64, seed: u64) -> usize {
    let mut rng = SplitMix::new(seed);
    let g = m.main;
    let mut n = 0;
    for id in m.graph(g).node_ids() {
        let node = m.graph(g).node(id);
        let Op::Const(t) = node.op else { continue };
        if !node.outputs[0].name.contains(".poet_skew_") {
            continue;
        }
        let len = m.tensor(t).numel().expect("numel") as usize;
        let vals: Vec<f32> = (0..len).map(|_| (scale * rng.gaussian()) as f32).collect();
        let t2 = m.add_tensor(TensorData::from_f32(vec![len as i64], &vals));
        m.graph_mut(g).node_mut(id).op = Op::Const(t2);
        n += 1;
    }
    n
}

/// (op, operand names, result names) of every node, sorted: equal for structurally identical
/// graphs whatever the order nodes were created in.
fn structure(m: &Module) -> Vec<String> {
    let g = m.main_graph();
    let mut v: Vec<String> = g
        .node_ids()
        .into_iter()
        .map(|n| {
            let node = g.node(n);
            let ins: Vec<&str> = node.inputs().map(|x| g.value_name(x)).collect();
            let outs: Vec<&str> = node.outputs.iter().map(|o| o.name.as_str()).collect();
            format!("{} {:?} -> {:?}", node.op.name(), ins, outs)
        })
        .collect();
    v.sort();
    v
}

fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    let scale = a.iter().fold(0f64, |s, &x| s.max(x.abs() as f64));
    a.iter()
        .zip(b)
        .fold(0f64, |s, (&x, &y)| s.max((x as f64 - y as f64).abs()))
        / scale
}

fn weight(m: &Module, name: &str) -> (Vec<f64>, usize, usize) {
    let v = m.main_graph().value_names()[name];
    let Op::Const(t) = m.main_graph().node(v.node).op else {
        panic!("{name} is not a constant")
    };
    let t = m.tensor(t);
    let vals = t.to_f64_vec().expect("f32 weight");
    (vals, t.dims[0] as usize, t.dims[1] as usize)
}

fn check_cycle(kind: PoetKind, block: usize, bias: bool) {
    let orig = decoder(bias);
    let want = logits(&orig);
    let mut m = orig.clone();
    let opts = PoetReparamOptions {
        kind,
        block,
        seed: 5,
        ..PoetReparamOptions::default()
    };
    let stats = poet_reparam(&mut m, &opts).expect("poet-reparam");
    assert_eq!(stats.linears, 7);
    assert_eq!(
        logits(&m),
        want,
        "{kind:?}: zero skew computes the original bit for bit"
    );

    assert_eq!(perturb(&mut m, 0.05, 9), 14);
    let poet = logits(&m);
    assert!(max_rel(&poet, &want) > 1e-3, "the skew changed the model");
    // The host's f64 weight agrees with the graph's f32 one.
    let found = find_poet(&m);
    assert_eq!(found.len(), 7);
    let max_orth = found
        .iter()
        .map(|(n, r)| read_state(&m, *n, r).expect("state").orthogonality_error())
        .fold(0f64, f64::max);
    poet_merge(&mut m).expect("poet-merge");
    let merged = logits(&m);
    let d = max_rel(&merged, &poet);
    eprintln!("{kind:?} b={block} bias={bias}: merged vs POET graph max rel {d:e}, max ‖RᵀR−I‖ {max_orth:e}");
    assert!(d < 1e-5, "{kind:?}: merge changed the outputs by {d:e}");
    assert_eq!(
        structure(&m),
        structure(&orig),
        "merge gives the input's structure back"
    );
    // Spectra: each merged weight keeps its original singular values, up to the truncation's
    // non-orthogonality (‖Q‖ ≈ 0.1 here, k = 5: ~1e-6) and f32 storage.
    for name in ["wq", "wk", "wv", "wo", "wg", "wu", "wd"] {
        let (w0, r, c) = weight(&orig, name);
        let (w1, _, _) = weight(&m, name);
        assert_ne!(w0, w1, "{name} was trained");
        let (s0, s1) = (
            singular_values(&w0, r, c).expect("svd"),
            singular_values(&w1, r, c).expect("svd"),
        );
        let dmax = s0
            .iter()
            .zip(&s1)
            .fold(0f64, |a, (x, y)| a.max((x - y).abs()));
        assert!(
            dmax <= 1e-5 * s0[0] + 2.0 * max_orth * s0[0],
            "{name}: σ {s0:?} → {s1:?}"
        );
    }
}

#[test]
fn bs_zero_skew_is_exact_and_merge_preserves_outputs_and_spectra() {
    check_cycle(PoetKind::Bs, 2, false);
}

#[test]
fn merge_is_function_preserving_with_a_bias() {
    check_cycle(PoetKind::Bs, 2, true);
}

#[test]
fn fs_cycle() {
    check_cycle(PoetKind::Fs, 3, true);
}

/// LoRA, the baseline: exact at zero B, and `lora-merge` gives the outputs the adapted graph
/// computed and the input's structure.
#[test]
fn lora_is_exact_at_zero_and_merges_back() {
    use ortho_passes::poet::lora::{lora, LoraOptions};
    use ortho_passes::poet::lora_merge::lora_merge;
    let orig = decoder(true);
    let want = logits(&orig);
    let mut m = orig.clone();
    let s = lora(
        &mut m,
        &LoraOptions {
            rank: 2,
            ..LoraOptions::default()
        },
    )
    .expect("lora");
    assert_eq!((s.linears, s.trainable), (7, 7 * 2 * 8));
    assert_eq!(logits(&m), want, "B = 0 computes the original bit for bit");
    // Train-like change: B nonzero.
    let mut rng = SplitMix::new(3);
    let g = m.main;
    for id in m.graph(g).node_ids() {
        let node = m.graph(g).node(id);
        if !node.outputs[0].name.ends_with(".lora_b") {
            continue;
        }
        let vals: Vec<f32> = (0..8).map(|_| (0.1 * rng.gaussian()) as f32).collect();
        let t = m.add_tensor(TensorData::from_f32(vec![2, 4], &vals));
        m.graph_mut(g).node_mut(id).op = Op::Const(t);
    }
    let adapted = logits(&m);
    assert!(max_rel(&adapted, &want) > 1e-3);
    assert_eq!(lora_merge(&mut m).expect("lora-merge"), 7);
    let d = max_rel(&logits(&m), &adapted);
    assert!(d < 1e-5, "merge changed the outputs by {d:e}");
    assert_eq!(structure(&m), structure(&orig));
}
