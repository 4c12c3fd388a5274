//! `fold-norms,rotate-residual` on the SmolLM2-135M fixtures, in process: the time of the two
//! passes (per rotation kind) printed next to the time of import + export of the same model.
//! The target: the passes take no more than a few seconds beyond import + export.
//! `passes s` is fold-norms + rotate-residual (medians added), next to import + export.
//!
//! Run with `cargo bench --bench rotate`. Environment: `ORTHO_FIXTURES` (default
//! `$HOME/.cache/ortho-opt/fixtures`), `BENCH_RUNS` (default 3; the median is printed).

use std::path::PathBuf;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let fixtures = std::env::var_os("ORTHO_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/ortho-opt/fixtures")
        });
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-rotate");
    let _ = std::fs::create_dir_all(&out_dir);
    println!(
        "{:<12} {:<20} {:>10} {:>10} {:>10} {:>12} {:>16} {:>16}",
        "model",
        "kind",
        "import s",
        "export s",
        "fold s",
        "rotate s",
        "passes s",
        "import+export s"
    );
    for style in ["decomposed", "fused"] {
        let model = fixtures.join(format!("smollm2-135m/{style}.onnx"));
        if !model.is_file() {
            println!(
                "rotate bench: {} missing (run scripts/fixtures.sh); skipping",
                model.display()
            );
            return;
        }
        for kind in ["haar", "hadamard", "signed-permutation"] {
            let (mut imp, mut exp, mut fold, mut rot) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..runs {
                let t = Instant::now();
                let Ok(mut m) = ortho_frontends::import_file(&model) else {
                    println!("rotate bench: cannot import {}", model.display());
                    return;
                };
                imp.push(t.elapsed().as_secs_f64());
                let t = Instant::now();
                if let Err(e) = ortho_passes::fold_norms(&mut m) {
                    println!("fold-norms failed: {e}");
                    return;
                }
                fold.push(t.elapsed().as_secs_f64());
                let t = Instant::now();
                let opts = ortho_passes::RotateResidualOptions {
                    kind: ortho_passes::RotationKind::parse(kind)
                        .unwrap_or(ortho_passes::RotationKind::Haar),
                    seed: 7,
                };
                if let Err(e) = ortho_passes::rotate_residual(&mut m, &opts) {
                    println!("rotate-residual failed: {e}");
                    return;
                }
                rot.push(t.elapsed().as_secs_f64());
                let t = Instant::now();
                let out = out_dir.join(format!("{style}-{kind}.onnx"));
                if let Err(e) = ortho_frontends::export_file(&m, &out, &Default::default()) {
                    println!("export failed: {e}");
                    return;
                }
                exp.push(t.elapsed().as_secs_f64());
            }
            let (i, e, f, r) = (median(imp), median(exp), median(fold), median(rot));
            println!(
                "{style:<12} {kind:<20} {i:>10.3} {e:>10.3} {f:>10.3} {r:>12.3} {:>16.3} {:>16.3}",
                f + r,
                i + e
            );
        }
    }
}
