//! 2:4 compact weights against the dense-with-zeros model, in one run (`cargo bench --bench
//! sparse`, release build, fixtures prepared):
//!
//! 1. per-layer kernels: the SmolLM2-135M linear shapes at 1 token (GEMV, decode) and 128
//!    tokens (GEMM, prefill), dense `gemm` against the 2:4 kernel on AVX-512 and on AVX2
//!    (forced), 1 and 2 threads, median of runs, and the speed-up;
//! 2. the whole model (decomposed fixture), magnitude 2:4 (`prune{pattern=2:4}`; the kernels do
//!    not depend on how the kept half was chosen), dense-with-zeros against `sparsify`: prefill
//!    1 × 128 (and 4 × 512 with `ORTHO_BENCH_LARGE=1`) and a 1-token forward (no KV cache:
//!    every weight is read once per token, as in decode) at 1 and 2 threads, the max |Δlogit|
//!    relative to max |logit|, and the bytes of the blocks' linear weights and of the exported
//!    files (dense default vs `--emit-sparse`).
//!
//! 3. decode with a KV cache (`kv-cache` pass): one token after a context of 128 and 512,
//!    dense and 2:4 (the same pruned weights, dense-with-zeros against `sparsify`), our engine
//!    and onnxruntime on the same exported cached graph (dense-with-zeros: onnxruntime has no
//!    compact form), 1 and 2 threads, side by side; then our engine's per-op profile of one
//!    dense decode step at context 128.
//!
//! Environment: ORTHO_BENCH_RUNS (timed runs per cell, default 5), ORTHO_BENCH_PARTS (a comma
//! list of kernels, model, decode; default all). The machine is shared and
//! loaded: read the ratios measured side by side, not absolute times.

use ortho_codegen::cpu::kernels::gemv;
use ortho_codegen::cpu::kernels::matmul::{gemm_into, Mat};
use ortho_codegen::cpu::kernels::sparse::{sparse_2_4, Isa};
use ortho_codegen::cpu::{HostTensor, Plan};
use ortho_ir::sparse::NmSparse;
use std::path::PathBuf;
use std::time::Instant;

fn fixtures() -> PathBuf {
    std::env::var_os("ORTHO_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/ortho-opt/fixtures")
        })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut lat = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f();
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    median(lat)
}

/// A seeded stream in [-1, 1).
fn rand(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn kernels(runs: usize) {
    println!("\nper-layer kernels (ms, median of {runs}; speed-up = dense / 2:4)");
    println!(
        "  {:<16} {:>6} {:>3} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "layer (in→out)", "tokens", "thr", "dense", "2:4 512", "2:4 avx2", "x 512", "x avx2"
    );
    let p = NmSparse::new(2, 4).expect("2:4");
    let shapes = [
        ("q/o 576→576", 576, 576),
        ("k/v 576→192", 576, 192),
        ("gate/up 576→1536", 576, 1536),
        ("down 1536→576", 1536, 576),
    ];
    for (name, k, n) in shapes {
        let mut w = rand(k as u64 + n as u64, n * k);
        for g in w.chunks_mut(4) {
            g[1] = 0.0;
            g[3] = 0.0;
        }
        let (vals, idx) = p.compress(&w, n, k).expect("2:4");
        // The dense operand as the engine stores a MatMul weight: [in, out].
        let mut wt = vec![0.0f32; k * n];
        for o in 0..n {
            for c in 0..k {
                wt[c * n + o] = w[o * k + c];
            }
        }
        for tokens in [1usize, 128] {
            let x = rand(7, tokens * k);
            for threads in [1usize, 2] {
                let mut y = vec![0.0f32; tokens * n];
                let dense = time(runs * 20, || {
                    gemm_into(
                        tokens,
                        n,
                        k,
                        Mat {
                            data: &x,
                            rs: k,
                            cs: 1,
                        },
                        Mat {
                            data: &wt,
                            rs: n,
                            cs: 1,
                        },
                        &mut y,
                        n,
                        false,
                        0.0,
                        1.0,
                        threads,
                    )
                });
                let mut sp = [0.0f64; 2];
                for (s, isa) in sp.iter_mut().zip([Isa::Avx512, Isa::Avx2]) {
                    let isa = Isa::at_most(isa);
                    *s = time(runs * 20, || {
                        std::hint::black_box(sparse_2_4(
                            &x,
                            &vals,
                            &idx,
                            n,
                            k / 4,
                            tokens,
                            threads,
                            isa,
                        ));
                    });
                }
                println!(
                    "  {name:<16} {tokens:>6} {threads:>3} {dense:>9.4} {:>9.4} {:>9.4} {:>7.2}x {:>7.2}x",
                    sp[0],
                    sp[1],
                    dense / sp[0],
                    dense / sp[1]
                );
            }
        }
    }
}

fn model(runs: usize) {
    let f = fixtures();
    let path = f.join("smollm2-135m/decomposed.onnx");
    if !path.exists() {
        println!("\nno fixtures at {}: model part skipped", f.display());
        return;
    }
    let mut m = ortho_frontends::import_file(&path).expect("import");
    let o = ortho_passes::transforms::prune::PruneOptions {
        pattern: ortho_passes::sparsity::matrix::Pattern::NM { n: 2, m: 4 },
        ..Default::default()
    };
    ortho_passes::transforms::prune::prune(&mut m, &o, None).expect("prune");
    let dense_m = m.clone();
    let st = ortho_passes::transforms::sparsify::sparsify(&mut m, &Default::default())
        .expect("sparsify");
    println!(
        "\nSmolLM2-135M magnitude 2:4: {} block linears, compact {} of dense {} bytes ({:.4}x)",
        st.linears,
        st.compact_bytes,
        st.dense_bytes,
        st.compact_bytes as f64 / st.dense_bytes as f64
    );
    // Exported files: the dense default and the compact form.
    let tmp = std::env::temp_dir().join(format!("ortho-sparse-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&tmp);
    let mut sizes = Vec::new();
    for (tag, keep) in [
        ("dense", ortho_passes::transforms::SparseExport::Dense),
        ("compact", ortho_passes::transforms::SparseExport::Compact),
    ] {
        let mut e = m.clone();
        ortho_passes::transforms::lower_ortho_with(&mut e, keep).expect("lower");
        let out = tmp.join(format!("{tag}.onnx"));
        ortho_frontends::export_file(&e, &out, &Default::default()).expect("export");
        sizes.push(std::fs::metadata(&out).map(|x| x.len()).unwrap_or(0));
    }
    let _ = std::fs::remove_dir_all(&tmp);
    println!(
        "  file: dense export {} bytes, --emit-sparse {} bytes ({:.4}x)",
        sizes[0],
        sizes[1],
        sizes[1] as f64 / sizes[0] as f64
    );
    let mut pd = Plan::compile(&dense_m).expect("compile dense");
    let mut ps = Plan::compile(&m).expect("compile sparse");
    let mut cells = vec![(1usize, 1usize), (1, 128)];
    if std::env::var_os("ORTHO_BENCH_LARGE").is_some() {
        cells.push((4, 512));
    }
    println!(
        "  {:<8} {:>3} {:>10} {:>10} {:>8} {:>12} {:>12}",
        "tokens", "thr", "dense ms", "2:4 ms", "speed-up", "2:4 tok/s", "max|Δ|/max"
    );
    for (b, s) in cells {
        let ids: Vec<i64> = (0..b * s).map(|i| (i as i64) * 37 % 1000 + 100).collect();
        let feed = || HostTensor::from_vec(vec![b, s], ids.clone()).expect("ids");
        let n = if b * s > 1024 { runs.div_ceil(2) } else { runs };
        for threads in [1usize, 2] {
            pd.set_threads(threads);
            ps.set_threads(threads);
            let ld = pd.run(&[("input_ids", feed())]).expect("run")[0].1.clone();
            let ls = ps.run(&[("input_ids", feed())]).expect("run")[0].1.clone();
            let (a, c) = (ld.as_f32().expect("f32"), ls.as_f32().expect("f32"));
            let max = a.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let diff = a
                .iter()
                .zip(c)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            // Interleaved so that load on the shared machine hits both alike.
            let (mut td, mut ts) = (Vec::new(), Vec::new());
            for _ in 0..n {
                let t = Instant::now();
                pd.run(&[("input_ids", feed())]).expect("run");
                td.push(t.elapsed().as_secs_f64() * 1e3);
                let t = Instant::now();
                ps.run(&[("input_ids", feed())]).expect("run");
                ts.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let (md, ms) = (median(td), median(ts));
            println!(
                "  {:<8} {threads:>3} {md:>10.1} {ms:>10.1} {:>7.2}x {:>12.1} {:>12.2e}",
                format!("{b}x{s}"),
                md / ms,
                (b * s) as f64 / ms * 1e3,
                diff / max
            );
        }
    }
}

fn main() {
    let runs: usize = std::env::var("ORTHO_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    println!("sparse kernels: best instruction set {:?}", Isa::best());
    // ORTHO_BENCH_PARTS=kernels,model,decode picks parts (default: all).
    let parts =
        std::env::var("ORTHO_BENCH_PARTS").unwrap_or_else(|_| "kernels,model,decode".into());
    let on = |p: &str| parts.split(',').any(|x| x.trim() == p);
    if on("kernels") {
        kernels(runs);
    }
    if on("model") {
        model(runs);
    }
    if on("decode") {
        decode(runs);
    }
}

/// The caches after a prefill of `context` tokens.
fn caches_after(p: &Plan, m: &ortho_ir::Module, context: usize) -> Vec<(String, HostTensor)> {
    let ids: Vec<i64> = (0..context).map(|i| (i as i64) * 37 % 1000 + 100).collect();
    let mut feeds = vec![(
        "input_ids".to_string(),
        HostTensor::from_vec(vec![1, context], ids).expect("ids"),
    )];
    feeds.extend(ortho_opt::generate::empty_caches(m).expect("empty caches"));
    let refs: Vec<(&str, HostTensor)> =
        feeds.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let out = p.run(&refs).expect("prefill");
    out.into_iter()
        .skip(1)
        .map(|(n, t)| (n.replacen("present", "past", 1), t))
        .collect()
}

fn decode(runs: usize) {
    let f = fixtures();
    let path = f.join("smollm2-135m/decomposed.onnx");
    if !path.exists() {
        return;
    }
    let python = std::env::var_os("ORTHO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| f.join("venv/bin/python"));
    let dense = ortho_frontends::import_file(&path).expect("import");
    let mut pruned = dense.clone();
    let o = ortho_passes::transforms::prune::PruneOptions {
        pattern: ortho_passes::sparsity::matrix::Pattern::NM { n: 2, m: 4 },
        ..Default::default()
    };
    ortho_passes::transforms::prune::prune(&mut pruned, &o, None).expect("prune");
    let mut compact = pruned.clone();
    ortho_passes::transforms::sparsify::sparsify(&mut compact, &Default::default())
        .expect("sparsify");
    let tmp = std::env::temp_dir().join(format!("ortho-decode-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&tmp);
    let mut models = Vec::new();
    for (tag, mut m) in [
        ("dense", dense),
        ("2:4 zeros", pruned),
        ("2:4 compact", compact),
    ] {
        ortho_passes::kv_cache::kv_cache(&mut m).expect("kv-cache");
        let file = tmp.join(format!("{}.onnx", tag.replace([' ', ':'], "_")));
        if tag != "2:4 compact" {
            let mut e = m.clone();
            ortho_passes::transforms::lower_ortho_with(
                &mut e,
                ortho_passes::transforms::SparseExport::Dense,
            )
            .expect("lower");
            ortho_frontends::export_file(&e, &file, &Default::default()).expect("export");
        }
        models.push((tag, m, file));
    }
    println!(
        "\ndecode, 1 token after a context (ms per token, median of {}; tok/s = 1000 / ms)",
        runs * 4
    );
    println!(
        "  {:<8} {:>3} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "context",
        "thr",
        "dense gemm",
        "dense",
        "2:4",
        "ort dense",
        "ort 2:4",
        "2:4/dense",
        "dense/ort",
        "2:4/ort",
        "gemv gain"
    );
    // Ours: the dense and the compact 2:4 model (the zeros model is for onnxruntime only).
    let mut plans: Vec<Plan> = [0usize, 2]
        .iter()
        .map(|&i| Plan::compile(&models[i].1).expect("compile"))
        .collect();
    for context in [128usize, 512] {
        for threads in [1usize, 2] {
            // ours[2]: the dense model with one-row products through the `gemm` crate (the path
            // before `kernels::gemv`), timed alternately with ours[0] run by run so that drift in
            // the machine's load hits both alike.
            let mut ours = [0.0f64; 3];
            for (k, i) in [0usize, 2].into_iter().enumerate() {
                let p = &mut plans[k];
                p.set_threads(threads);
                let cache = caches_after(p, &models[i].1, context);
                let mut feeds = vec![(
                    "input_ids".to_string(),
                    HostTensor::from_vec(vec![1, 1], vec![42i64]).expect("ids"),
                )];
                feeds.extend(cache);
                let once = || {
                    let refs: Vec<(&str, HostTensor)> =
                        feeds.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
                    let t = Instant::now();
                    std::hint::black_box(p.run(&refs).expect("decode"));
                    t.elapsed().as_secs_f64() * 1e3
                };
                let (mut on, mut off) = (Vec::new(), Vec::new());
                for r in 0..=runs * 4 {
                    gemv::set_enabled(true);
                    let a = once();
                    if k == 0 {
                        gemv::set_enabled(false);
                        let b = once();
                        if r > 0 {
                            off.push(b);
                        }
                    }
                    if r > 0 {
                        on.push(a);
                    }
                }
                gemv::set_enabled(true);
                ours[k] = median(on);
                if k == 0 {
                    ours[2] = median(off);
                }
            }
            gemv::set_enabled(true);
            let ort = ort_decode(
                &python,
                &[&models[0].2, &models[1].2],
                context,
                threads,
                runs * 4,
            );
            println!(
                "  {context:<8} {threads:>3} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>8.2}x {:>8.2}x {:>8.2}x {:>8.2}x",
                ours[2],
                ours[0],
                ours[1],
                ort[0],
                ort[1],
                ours[0] / ours[1],
                ort[0] / ours[0],
                ort[1] / ours[1],
                ours[2] / ours[0]
            );
        }
    }
    // Where a dense decode step spends its time (context 128), with and without the gemv kernel.
    let mut p = plans.into_iter().next().expect("plan");
    let cache = caches_after(&p, &models[0].1, 128);
    let mut feeds = vec![(
        "input_ids".to_string(),
        HostTensor::from_vec(vec![1, 1], vec![42i64]).expect("ids"),
    )];
    feeds.extend(cache);
    let refs: Vec<(&str, HostTensor)> =
        feeds.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    for threads in [1usize, 2] {
        for on in [true, false] {
            gemv::set_enabled(on);
            p.set_threads(threads);
            let _ = p.run_profiled(&refs).expect("warm");
            let (_, prof) = p.run_profiled(&refs).expect("profile");
            println!(
                "\ndense decode step, context 128, {threads} thread(s), one-row products by {}: {:.2} ms; per op type:",
                if on { "kernels::gemv" } else { "the gemm crate" },
                prof.total.as_secs_f64() * 1e3
            );
            for (op, d, n) in prof.ops.iter().take(5) {
                println!("  {op:<20} {:>8.3} ms {n:>5} calls", d.as_secs_f64() * 1e3);
            }
        }
    }
    gemv::set_enabled(true);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// onnxruntime's median decode latency (ms) for each cached model at `context`.
fn ort_decode(
    python: &std::path::Path,
    files: &[&PathBuf],
    context: usize,
    threads: usize,
    runs: usize,
) -> Vec<f64> {
    let script = r#"
import sys, time, numpy as np, onnxruntime as ort
ctx, thr, runs = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for path in sys.argv[4:]:
    o = ort.SessionOptions(); o.intra_op_num_threads = thr; o.inter_op_num_threads = 1
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    feeds = {}
    for i in s.get_inputs()[1:]:
        feeds[i.name] = np.zeros([1 if d == "batch" else 0 if isinstance(d, str) else d for d in i.shape], np.float32)
    feeds["input_ids"] = (np.arange(ctx, dtype=np.int64) * 37 % 1000 + 100)[None]
    names = [x.name for x in s.get_outputs()]
    out = s.run(None, feeds)
    for n, v in zip(names[1:], out[1:]):
        feeds[n.replace("present", "past", 1)] = v
    feeds["input_ids"] = np.array([[42]], np.int64)
    s.run(None, feeds)
    lat = []
    for _ in range(runs):
        t = time.perf_counter(); s.run(None, feeds); lat.append((time.perf_counter() - t) * 1e3)
    print(sorted(lat)[len(lat) // 2])
"#;
    let mut args: Vec<String> = vec![
        "-c".into(),
        script.into(),
        context.to_string(),
        threads.to_string(),
        runs.to_string(),
    ];
    args.extend(files.iter().map(|f| f.to_string_lossy().into_owned()));
    let out = std::process::Command::new(python).args(&args).output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect(),
        Ok(o) => {
            println!(
                "  onnxruntime failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            vec![f64::NAN; files.len()]
        }
        Err(e) => {
            println!("  onnxruntime not run ({e})");
            vec![f64::NAN; files.len()]
        }
    }
}
