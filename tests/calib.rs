//! The evaluator (regions fed at intermediate values, streamed Gram matrices), the layer-wise
//! calibration driver, and `prune` end to end on a tiny two-block decoder written here, with
//! calibration from pre-tokenized ids; bad calibration input.

mod common;

use common::{fixtures, run, TempDir};
use ortho_codegen::cpu::{CpuEvaluator, HostTensor, Plan};
use ortho_ir::eval::{EvalTensor, Evaluator, Region, Stat, StatKind, StatRequest, Stats};
use ortho_ir::text::parse_module;
use ortho_ir::{Module, ValueId};
use ortho_passes::calib::{block_spans, walk_layers, Calibration};
use ortho_passes::transforms::prune::{linear_weight, prune_linear};
use ortho_passes::transforms::prune_math::{check_nm, Pattern, PruneMethod, PruneSpec};
use std::sync::Arc;

const D: usize = 8;
const VOCAB: usize = 16;

/// A pre-norm decoder: 2 blocks of RMSNorm → single-head attention (q, k, v, o) and RMSNorm →
/// SwiGLU MLP (gate, up, down), d = 8, vocabulary 16, head tied to the embedding.
fn tiny_decoder() -> String {
    let mut seed = 0x1234_5678_u64;
    let mut vals = |n: usize, scale: f64| -> String {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = ((seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0;
                format!("{:.4}", u * scale)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = String::from("module {ir_version = 8, opset_import = [\"\" = 17]}\n");
    s += "graph @decoder(%ids: tensor<\"b\"x\"s\"xi64>) -> (%logits) {\n";
    s += &format!(
        "  %E = const tensor<{VOCAB}x{D}xf32> dense<[{}]>\n",
        vals(VOCAB * D, 1.0)
    );
    s += "  %eps = const tensor<f32> dense<[1e-5]>\n";
    s += "  %scale = const tensor<f32> dense<[0.35]>\n";
    for b in 0..2 {
        for w in ["q", "k", "v", "o", "g", "u", "d"] {
            s += &format!(
                "  %w{w}{b} = const tensor<{D}x{D}xf32> dense<[{}]>\n",
                vals(D * D, 0.6)
            );
        }
    }
    s += "  %h0 = onnx.Gather(%E, %ids) {axis = 0} : ?\n";
    let norm = |s: &mut String, x: &str, n: &str| {
        *s += &format!("  %{n}_sq = onnx.Mul(%{x}, %{x}) : ?\n");
        *s +=
            &format!("  %{n}_mean = onnx.ReduceMean(%{n}_sq) {{axes = [-1], keepdims = 1}} : ?\n");
        *s += &format!("  %{n}_eps = onnx.Add(%{n}_mean, %eps) : ?\n");
        *s += &format!("  %{n}_rms = onnx.Sqrt(%{n}_eps) : ?\n");
        *s += &format!("  %{n} = onnx.Div(%{x}, %{n}_rms) : ?\n");
    };
    let mut h = "h0".to_string();
    for b in 0..2 {
        norm(&mut s, &h, &format!("a{b}"));
        for w in ["q", "k", "v"] {
            s += &format!("  %{w}{b} = onnx.MatMul(%a{b}, %w{w}{b}) : ?\n");
        }
        s += &format!("  %kT{b} = onnx.Transpose(%k{b}) {{perm = [0, 2, 1]}} : ?\n");
        s += &format!("  %qk{b} = onnx.MatMul(%q{b}, %kT{b}) : ?\n");
        s += &format!("  %qks{b} = onnx.Mul(%qk{b}, %scale) : ?\n");
        s += &format!("  %p{b} = onnx.Softmax(%qks{b}) {{axis = -1}} : ?\n");
        s += &format!("  %pv{b} = onnx.MatMul(%p{b}, %v{b}) : ?\n");
        s += &format!("  %o{b} = onnx.MatMul(%pv{b}, %wo{b}) : ?\n");
        s += &format!("  %r{b} = onnx.Add(%{h}, %o{b}) : ?\n");
        norm(&mut s, &format!("r{b}"), &format!("m{b}"));
        s += &format!("  %gate{b} = onnx.MatMul(%m{b}, %wg{b}) : ?\n");
        s += &format!("  %up{b} = onnx.MatMul(%m{b}, %wu{b}) : ?\n");
        s += &format!("  %sig{b} = onnx.Sigmoid(%gate{b}) : ?\n");
        s += &format!("  %silu{b} = onnx.Mul(%gate{b}, %sig{b}) : ?\n");
        s += &format!("  %gu{b} = onnx.Mul(%silu{b}, %up{b}) : ?\n");
        s += &format!("  %down{b} = onnx.MatMul(%gu{b}, %wd{b}) : ?\n");
        s += &format!("  %s{b} = onnx.Add(%r{b}, %down{b}) : ?\n");
        h = format!("s{b}");
    }
    norm(&mut s, &h, "f");
    s += "  %ET = onnx.Transpose(%E) {perm = [1, 0]} : ?\n";
    s += &format!("  %logits = onnx.MatMul(%f, %ET) : tensor<\"b\"x\"s\"x{VOCAB}xf32>\n}}\n");
    s
}

fn module() -> Module {
    parse_module(&tiny_decoder()).expect("tiny decoder parses")
}

fn ids(n: usize) -> Vec<i64> {
    (0..n).map(|i| ((i * 7 + i / 3) % VOCAB) as i64).collect()
}

fn f32s(t: &HostTensor) -> Vec<f32> {
    t.as_f32().expect("f32").to_vec()
}

/// Σ xᵀx of a `[..., d]` tensor, directly.
fn gram(x: &[f32], d: usize) -> Vec<f64> {
    let mut g = vec![0.0; d * d];
    for r in x.chunks_exact(d) {
        for i in 0..d {
            for j in 0..d {
                g[i * d + j] += f64::from(r[i]) * f64::from(r[j]);
            }
        }
    }
    g
}

fn close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "[{i}] {x} vs {y}");
    }
}

/// The full model run on `ids` (`[2, 6]`), observing `values`.
fn observe(m: &Module, ids: &[i64], values: &[ValueId]) -> Vec<HostTensor> {
    let plan = Plan::compile(m).unwrap();
    let mut got: Vec<Option<HostTensor>> = vec![None; values.len()];
    let feed = HostTensor::from_vec(vec![2, ids.len() / 2], ids.to_vec()).unwrap();
    plan.run_with(&[("ids", feed)], values, &mut |v, t| {
        for (i, w) in values.iter().enumerate() {
            if *w == v {
                got[i] = Some(t.clone());
            }
        }
    })
    .unwrap();
    got.into_iter().map(|t| t.expect("observed")).collect()
}

#[test]
fn a_block_runs_alone_from_a_fed_residual() {
    let m = module();
    let spans = block_spans(&m).unwrap();
    assert_eq!(spans.len(), 2);
    let b1 = &spans[1];
    let att = b1.attention.as_ref().unwrap();
    let q_in = att.q.unwrap().input;
    let x = ids(12);
    let seen = observe(&m, &x, &[b1.input, b1.output, q_in]);
    // Block 1 alone: fed at its residual input (no graph input needed), full output and the
    // Gram matrix of q's input streamed.
    let ev = CpuEvaluator { threads: 1 };
    let region = Region {
        feeds: vec![b1.input],
        requests: vec![
            StatRequest {
                value: b1.output,
                kind: StatKind::Full,
            },
            StatRequest {
                value: q_in,
                kind: StatKind::Gram,
            },
            StatRequest {
                value: q_in,
                kind: StatKind::ColSumSq,
            },
        ],
    };
    let mut prog = ev.compile(&m, &region).unwrap();
    let mut stats = Stats::for_region(&region);
    let fed = EvalTensor::F32 {
        shape: seen[0].shape().to_vec(),
        data: f32s(&seen[0]),
    };
    prog.run(&[fed.clone()], &mut stats).unwrap();
    prog.run(&[fed], &mut stats).unwrap(); // accumulates
    let Stat::Full(outs) = &stats.stats[0] else {
        panic!("no full tensor")
    };
    assert_eq!(outs.len(), 2);
    let EvalTensor::F32 { data, shape } = &outs[0] else {
        panic!("not f32")
    };
    assert_eq!(shape, seen[1].shape());
    assert_eq!(data, &f32s(&seen[1]), "same kernels, same bits");
    let Stat::Gram(g) = &stats.stats[1] else {
        panic!("no gram")
    };
    assert_eq!(g.rows, 24);
    let direct: Vec<f64> = gram(&f32s(&seen[2]), D).iter().map(|v| 2.0 * v).collect();
    // The engine multiplies blocks of 256 rows in f32 before summing in f64.
    close(&g.xtx, &direct, 1e-6);
    let Stat::ColSumSq { sums, rows } = &stats.stats[2] else {
        panic!("no column sums")
    };
    assert_eq!(*rows, 24);
    close(sums, &g.diag(), 1e-6);
    // A region that reads a graph input it is not fed is refused at compile time.
    let bad = Region {
        feeds: vec![],
        requests: vec![StatRequest {
            value: b1.output,
            kind: StatKind::Full,
        }],
    };
    let e = ev.compile(&m, &bad).err().expect("refused").to_string();
    assert!(e.contains("graph input 'ids'"), "{e}");
}

fn calibration(chunks: &[Vec<i64>]) -> Calibration {
    Calibration {
        evaluator: Arc::new(CpuEvaluator { threads: 1 }),
        chunks: chunks
            .iter()
            .map(|c| {
                vec![(
                    "ids".to_string(),
                    EvalTensor::I64 {
                        shape: vec![2, c.len() / 2],
                        data: c.clone(),
                    },
                )]
            })
            .collect(),
        samples: 2 * chunks.len(),
        seqlen: chunks[0].len() / 2,
        progress: None,
    }
}

#[test]
fn the_driver_calibrates_each_layer_on_the_rewritten_layers_before_it() {
    let mut m = module();
    let chunks = vec![ids(12), ids(20)[8..20].to_vec()];
    let calib = calibration(&chunks);
    let spec = PruneSpec::new(PruneMethod::Magnitude, 0.5, Pattern::Unstructured);
    let mut seen_layer1: Vec<Vec<f64>> = Vec::new();
    let mut down_before_after: Vec<Vec<f64>> = Vec::new();
    walk_layers(&mut m, &calib, &mut |cx| {
        let att = cx.block.attention.clone().unwrap();
        let mlp = cx.block.mlp.clone().unwrap();
        if cx.block.index == 0 {
            // Pruning `up` changes what `down` reads: collect, prune, collect again.
            down_before_after.push(cx.grams(&[mlp.down.input])?[0].xtx.clone());
            for l in [att.q.unwrap(), att.o, mlp.up] {
                prune_linear(cx.module(), &l, None, &spec)?;
            }
            down_before_after.push(cx.grams(&[mlp.down.input])?[0].xtx.clone());
        } else {
            let g = cx.grams(&[att.q.unwrap().input, mlp.down.input])?;
            assert_eq!(g[0].rows, 24);
            seen_layer1 = g.into_iter().map(|g| g.xtx).collect();
        }
        Ok(())
    })
    .unwrap();
    assert_ne!(down_before_after[0], down_before_after[1]);
    // Direct: the whole rewritten model on the same chunks, observed at block 1's inputs.
    let spans = block_spans(&m).unwrap();
    let att = spans[1].attention.clone().unwrap();
    let mlp = spans[1].mlp.clone().unwrap();
    let vals = [att.q.unwrap().input, mlp.down.input];
    let mut direct = vec![vec![0.0; D * D]; 2];
    for c in &chunks {
        let seen = observe(&m, c, &vals);
        for (acc, t) in direct.iter_mut().zip(&seen) {
            for (a, b) in acc.iter_mut().zip(gram(&f32s(t), D)) {
                *a += b;
            }
        }
    }
    close(&seen_layer1[0], &direct[0], 1e-5);
    close(&seen_layer1[1], &direct[1], 1e-5);
    // And block 0 really was rewritten in the module the driver handed out.
    let s0 = block_spans(&m).unwrap();
    let (w, _, _) = linear_weight(&m, &s0[0].attention.clone().unwrap().q.unwrap()).unwrap();
    assert_eq!(w.iter().filter(|x| **x == 0.0).count(), D * D / 2);
}

/// Writes the tiny decoder and an ids file; returns (dir, model path, ids path).
fn setup(tag: &str, n_ids: usize) -> (TempDir, String, String) {
    let dir = TempDir::new(tag);
    let model = dir.path().join("tiny.oir");
    std::fs::write(&model, tiny_decoder()).unwrap();
    let idp = dir.path().join("ids.txt");
    let text: Vec<String> = ids(n_ids).iter().map(|x| x.to_string()).collect();
    std::fs::write(&idp, text.join(" ")).unwrap();
    let s = |p: std::path::PathBuf| p.display().to_string();
    (dir, s(model), s(idp))
}

fn prune_cli(model: &str, idp: &str, pipeline: &str, seed: &str) -> ortho_opt::DriverOutput {
    run(&[
        model,
        "--elide-above=none",
        &format!("--pass-pipeline={pipeline}"),
        "--calib-ids",
        idp,
        "--calib-samples",
        "4",
        "--calib-seqlen",
        "6",
        "--calib-seed",
        seed,
        "--calib-chunk",
        "2",
        "--calib-quiet",
    ])
}

/// The weights of every block linear of a printed module, rows × cols.
fn block_weights(oir: &str) -> Vec<Vec<f64>> {
    let m = parse_module(oir).unwrap();
    let mut out = Vec::new();
    for s in block_spans(&m).unwrap() {
        let a = s.attention.unwrap();
        let x = s.mlp.unwrap();
        for l in [
            a.q.unwrap(),
            a.k.unwrap(),
            a.v.unwrap(),
            a.o,
            x.gate.unwrap(),
            x.up,
            x.down,
        ] {
            out.push(linear_weight(&m, &l).unwrap().0);
        }
    }
    out
}

#[test]
fn prune_end_to_end_is_exact_and_deterministic() {
    let (_d, model, idp) = setup("prune-e2e", 200);
    let a = prune_cli(&model, &idp, "prune{method=sparsegpt pattern=2:4}", "1");
    assert_eq!(a.code, 0, "{}", a.stderr);
    assert!(
        a.stderr.contains("sparsegpt 2:4: 448 of 896 weights zero"),
        "{}",
        a.stderr
    );
    for w in block_weights(&a.stdout) {
        check_nm(&w, D, D, 2, 4).unwrap();
    }
    let b = prune_cli(&model, &idp, "prune{method=sparsegpt pattern=2:4}", "1");
    assert_eq!(a.stdout, b.stdout, "same seed, same result");
    let c = prune_cli(&model, &idp, "prune{method=sparsegpt pattern=2:4}", "2");
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert_ne!(a.stdout, c.stdout, "another seed samples other windows");
    // Wanda, only block 1 and only its MLP: block 0 and attention keep their weights.
    let orig = block_weights(&tiny_decoder());
    let w = prune_cli(
        &model,
        &idp,
        "prune{method=wanda layers=1 linears=gate+up+down}",
        "1",
    );
    assert_eq!(w.code, 0, "{}", w.stderr);
    let got = block_weights(&w.stdout);
    for i in 0..11 {
        assert_eq!(got[i], orig[i], "linear {i} must stay dense");
    }
    for i in 11..14 {
        for r in 0..D {
            let z = got[i][r * D..(r + 1) * D]
                .iter()
                .filter(|x| **x == 0.0)
                .count();
            assert_eq!(z, D / 2, "Wanda removes half of every row");
        }
    }
}

/// The tiny decoder after `denoise-rotate{mode=per-layer}`: one rotation per layer, so a
/// boundary `MatMul` by `Q0ᵀ Q1` on the stream entering block 1.
fn rotated_per_layer(model: &str) -> String {
    let r = run(&[
        model,
        "--elide-above=none",
        "--pass-pipeline=denoise-rotate{mode=per-layer method=magnitude iters=8}",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.stdout
}

#[test]
fn the_walk_and_prune_run_through_boundary_matmuls() {
    let (dir, model, idp) = setup("prune-boundary", 200);
    // denoise-rotate reads the head size from the score scale: make it exactly 1/√d.
    let exact = tiny_decoder().replace("dense<[0.35]>", "dense<[0.35355339]>");
    std::fs::write(&model, exact).unwrap();
    let rotated = rotated_per_layer(&model);
    let mut m = parse_module(&rotated).unwrap();
    // Both blocks are found; block 1 begins at the boundary, whose result is its input.
    let spans = block_spans(&m).unwrap();
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0].entry, None);
    let entry = spans[1].entry.expect("a boundary enters block 1");
    assert_eq!(m.main_graph().node(entry).op, ortho_ir::Op::MatMul);
    assert_eq!(
        spans[1].input,
        ValueId {
            node: entry,
            output: 0
        }
    );
    assert_ne!(spans[1].input, spans[0].output);
    // The walk advances the cache through the boundary: block 1's statistics equal those of
    // the whole model observed directly.
    let chunks = vec![ids(12), ids(20)[8..20].to_vec()];
    let calib = calibration(&chunks);
    let att = spans[1].attention.clone().unwrap();
    let mlp = spans[1].mlp.clone().unwrap();
    let vals = [att.q.unwrap().input, mlp.down.input];
    let mut walked: Vec<Vec<f64>> = Vec::new();
    let report = walk_layers(&mut m, &calib, &mut |cx| {
        if cx.block.index == 1 {
            walked = cx.grams(&vals)?.into_iter().map(|g| g.xtx).collect();
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(report.blocks, 2);
    let mut direct = vec![vec![0.0; D * D]; 2];
    for c in &chunks {
        for (acc, t) in direct.iter_mut().zip(observe(&m, c, &vals)) {
            for (a, b) in acc.iter_mut().zip(gram(&f32s(&t), D)) {
                *a += b;
            }
        }
    }
    close(&walked[0], &direct[0], 1e-5);
    close(&walked[1], &direct[1], 1e-5);
    // `prune` after per-layer rotation (refused before boundaries were understood) prunes
    // every linear of both blocks to the requested sparsity, with and without calibration.
    let path = dir.path().join("rotated.oir");
    std::fs::write(&path, &rotated).unwrap();
    let path = path.display().to_string();
    for method in ["magnitude", "wanda"] {
        let r = prune_cli(&path, &idp, &format!("prune{{method={method}}}"), "1");
        assert_eq!(r.code, 0, "{method}: {}", r.stderr);
        assert!(
            r.stderr.contains(&format!(
                "{method} unstructured: 448 of 896 weights zero (50.00 %) in 14 linears of 2 blocks"
            )),
            "{method}: {}",
            r.stderr
        );
        let w = block_weights(&r.stdout);
        assert_eq!(w.len(), 14);
        for (i, w) in w.iter().enumerate() {
            let z = w.iter().filter(|x| **x == 0.0).count();
            assert_eq!(z, D * D / 2, "{method}: linear {i}");
        }
        // The boundary itself is no layer: it keeps every weight.
        let pruned = parse_module(&r.stdout).unwrap();
        let b = block_spans(&pruned).unwrap()[1].entry.unwrap();
        let g = pruned.main_graph();
        let k = g.node(b).operand(1).unwrap();
        let ortho_ir::Op::Const(t) = g.node(k.node).op else {
            panic!("the boundary's matrix is a constant")
        };
        let vals = pruned.tensor(t).to_f64_vec().unwrap();
        assert!(vals.iter().filter(|x| **x == 0.0).count() < D * D / 2);
    }
}

#[test]
fn bad_calibration_input_fails_before_any_work() {
    let (_d, model, idp) = setup("prune-bad", 20);
    // 20 ids < 4 × 6 requested.
    let r = prune_cli(&model, &idp, "prune{method=wanda}", "0");
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("has 20 tokens, fewer than the 24 requested"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty());
    // A pass that needs calibration, run without it.
    let r = run(&[&model, "--pass-pipeline=prune{method=sparsegpt}"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("prune needs calibration data: pass --calib-text"),
        "{}",
        r.stderr
    );
    // Bad sparsity and an N:M pattern whose M does not divide the width.
    for (p, msg) in [
        (
            "prune{sparsity=1.5}",
            "sparsity must lie in (0, 1), got 1.5",
        ),
        ("prune{sparsity=0}", "sparsity must lie in (0, 1), got 0"),
        (
            "prune{pattern=3:5}",
            "pattern 3:5 needs an input width divisible by 5, got 8",
        ),
        ("prune{pattern=2to4}", "neither 'unstructured' nor N:M"),
        (
            "prune{layers=7}",
            "block 7 does not exist (the model has 2 blocks)",
        ),
    ] {
        let r = run(&[&model, &format!("--pass-pipeline={p}")]);
        assert_eq!(r.code, 1, "{p}");
        assert!(r.stderr.contains(msg), "{p}: {}", r.stderr);
    }
    // An id outside the model's vocabulary.
    let dir = TempDir::new("prune-bad-ids");
    let big = dir.path().join("ids.txt");
    std::fs::write(&big, "1 2 3 99 4 5 6 7 8 9 10 11").unwrap();
    let r = run(&[
        &model,
        "--pass-pipeline=prune{method=wanda}",
        "--calib-ids",
        &big.display().to_string(),
        "--calib-samples",
        "2",
        "--calib-seqlen",
        "4",
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("token 3 has id 99, outside the model's vocabulary of 16"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_tokenizer_that_does_not_fit_the_model_is_refused() {
    let (_d, model, _) = setup("prune-tok", 10);
    let f = fixtures();
    let r = run(&[
        &model,
        "--pass-pipeline=prune{method=wanda}",
        "--calib-text",
        &f.join("text/sotu_calib.txt").display().to_string(),
        "--tokenizer",
        &f.join("smollm2-135m/tokenizer.json").display().to_string(),
        "--calib-samples",
        "2",
        "--calib-seqlen",
        "4",
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("the tokenizer has 49152 tokens but the model's embedding has 16 rows"),
        "{}",
        r.stderr
    );
}

#[test]
fn window_sampling_is_seeded() {
    let ids: Vec<u32> = (0..1000).collect();
    let a = ortho_opt::calib::sample_windows(&ids, 8, 16, 3);
    assert_eq!(a, ortho_opt::calib::sample_windows(&ids, 8, 16, 3));
    assert_ne!(a, ortho_opt::calib::sample_windows(&ids, 8, 16, 4));
    for w in &a {
        assert_eq!(w.len(), 16);
        assert!(w.windows(2).all(|p| p[1] == p[0] + 1), "contiguous windows");
    }
}

/// `--calib-offsets` takes another tool's windows exactly: the offsets the seed would draw give
/// the seed's bytes; an offset whose window does not fit, or a word that is not a number, is an
/// error naming the file, before any work.
#[test]
fn explicit_window_offsets_reproduce_a_calibration_set() {
    let (d, model, idp) = setup("prune-offsets", 200);
    let pipeline = "prune{method=sparsegpt pattern=2:4}";
    let seeded = prune_cli(&model, &idp, pipeline, "1");
    assert_eq!(seeded.code, 0, "{}", seeded.stderr);
    let offsets = ortho_opt::calib::sample_offsets(200, 4, 6, 1);
    let with = |name: &str, text: &str| {
        let p = d.path().join(name);
        std::fs::write(&p, text).unwrap();
        let p = p.display().to_string();
        let r = run(&[
            &model,
            "--elide-above=none",
            &format!("--pass-pipeline={pipeline}"),
            "--calib-ids",
            &idp,
            "--calib-offsets",
            &p,
            "--calib-seqlen",
            "6",
            "--calib-chunk",
            "2",
            "--calib-quiet",
        ]);
        (p, r)
    };
    let words: Vec<String> = offsets.iter().map(|o| o.to_string()).collect();
    let (_, r) = with("offsets.txt", &words.join("\n"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout, seeded.stdout,
        "the same windows give the same model"
    );
    // Other windows give another model.
    let (_, r) = with("other.txt", "0 10 20 30");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_ne!(r.stdout, seeded.stdout);
    let (p, r) = with("far.txt", "0 195");
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains(&format!(
            "{p}: the window at offset 195 needs 6 tokens but the calibration ids hold 200"
        )),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty());
    let (p, r) = with("word.txt", "0 ten");
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains(&format!("{p}: 'ten' is not a token offset")),
        "{}",
        r.stderr
    );
}
