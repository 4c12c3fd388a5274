//! The joint-basis attack on a UPM epoch change (issue 20, use (b); `ortho_passes::upm::attack`).
//!
//!     cargo run --release --example upm_joint_attack -- DIR/epoch-000001/shard-001.onnx \
//!         DIR/epoch-000002/shard-001.onnx [--seed S --epoch E --kind haar|hadamard|signed-perm]
//!
//! An attacker holding two epochs A, B of one shard (`shard rekey --keep-old`, folded placement,
//! epochs ≥ 1 so the norm gains are already folded) estimates the change `R` (`x_B = x_A R`)
//! from each epoch's eigenbasis of the stream Gram `Σ XᵀX`, and bounds the error from the two
//! certificates (noise: the f32 rounding of epoch B's weights, a bound). It prints the
//! certified error next to the measured one, against the Procrustes fit of the same weights and,
//! with `--seed`/`--epoch` (the epoch of B), against the change derived from the seed. Exits 1
//! when a certified bound is below the measured error (the certificate failed).

use ortho_passes::linalg::joint_basis::Regime;
use ortho_passes::transforms::rotate_residual::RotationKind;
use ortho_passes::upm::attack::{
    attack, procrustes, stream_constants, AttackOptions, AttackReport, Matrix,
};
use std::path::PathBuf;
use std::time::Instant;

type Error = Box<dyn std::error::Error>;

fn regime(r: &Regime) -> String {
    match r {
        Regime::Certified => "certified".into(),
        Regime::NotCertified(w) => format!("not certified ({w})"),
    }
}

/// Prints the certified error next to the measured one; true when every certified bound holds.
fn compare(rep: &AttackReport, r: &Matrix, name: &str) -> bool {
    let errs = rep.column_errors(r);
    let ids = rep.identified();
    let measured_ids = ids.iter().map(|&i| errs[i] * errs[i]).sum::<f64>().sqrt();
    let covered = ids
        .iter()
        .filter(|&&i| rep.column_bounds[i].is_some_and(|b| errs[i] <= b))
        .count();
    let ratios: Vec<f64> = ids
        .iter()
        .map(|&i| rep.column_bounds[i].unwrap_or(f64::NAN) / errs[i])
        .collect();
    let mut sorted = ratios.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let med = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
    let pred = rep.predicted_column_errors();
    let predicted_ids = ids.iter().map(|&i| pred[i] * pred[i]).sum::<f64>().sqrt();
    let whole = (&rep.r_hat - r).norm_l2();
    let not_ids: Vec<usize> = (0..rep.d).filter(|i| !ids.contains(i)).collect();
    let measured_rest = not_ids
        .iter()
        .map(|&i| errs[i] * errs[i])
        .sum::<f64>()
        .sqrt();
    println!(
        "against {name}: identified subspace ({} of {} directions): certified ‖(R̂−R)U_B,I‖_F ≤ {:.3e}, measured {:.3e} (independent-rounding estimate {predicted_ids:.3e}); per direction covered {covered}/{} (median bound/measured {med:.1}); not identified directions: measured {:.3e}; whole ‖R̂ − R‖_F measured {whole:.3e}{}",
        ids.len(),
        rep.d,
        rep.identified_bound(),
        measured_ids,
        ids.len(),
        measured_rest,
        match rep.whole_bound {
            Some(b) => format!(", certified ≤ {b:.3e}"),
            None => ", whole basis not certified".into(),
        }
    );
    let whole_ok = rep.whole_bound.is_none_or(|b| whole <= b);
    covered == ids.len() && whole_ok
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let (mut paths, mut seed, mut epoch, mut kind) = (Vec::new(), None, None, RotationKind::Haar);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seed" => seed = Some(args.next().ok_or("--seed needs a value")?.parse::<u64>()?),
            "--epoch" => epoch = Some(args.next().ok_or("--epoch needs a value")?.parse::<u64>()?),
            "--kind" => {
                kind = match args.next().ok_or("--kind needs a value")?.as_str() {
                    "haar" => RotationKind::Haar,
                    "hadamard" => RotationKind::Hadamard,
                    "signed-perm" => RotationKind::SignedPermutation,
                    k => return Err(format!("unknown kind {k}").into()),
                }
            }
            _ => paths.push(PathBuf::from(a)),
        }
    }
    let [pa, pb] = &paths[..] else {
        return Err(
            "usage: upm_joint_attack SHARD_A.onnx SHARD_B.onnx [--seed S --epoch E --kind K]"
                .into(),
        );
    };
    let t = Instant::now();
    let ma = ortho_frontends::import_file(pa)?;
    let mb = ortho_frontends::import_file(pb)?;
    let (xa, _) = stream_constants(&ma).map_err(|e| e.to_string())?;
    let (xb, u) = stream_constants(&mb).map_err(|e| e.to_string())?;
    let opts = AttackOptions {
        unit_roundoff: u,
        ..AttackOptions::default()
    };
    let rep = attack(&xa, &xb, &opts)?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "stream width {}, {} constants, {} row vectors; unit roundoff of B {u:.3e}; {secs:.1} s",
        rep.d,
        xa.len(),
        rep.rows
    );
    for (name, e) in [("A", &rep.a), ("B", &rep.b)] {
        let lam = &e.basis.diagonals[0];
        let max = lam.iter().copied().fold(0.0, f64::max);
        let min_gap = e.gaps.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "epoch {name}: noise bound ‖E‖₂ ≤ {:.3e} ({:.2e} of λ_max {max:.3e}); min eigengap {min_gap:.3e}; whole basis: σ_min ({:?}) {:.3e}, bound {:.3e}: {}; identified directions {}/{}",
            e.noise,
            e.noise / max,
            e.basis.sigma_method,
            e.basis.sigma_min,
            e.basis.bound,
            regime(&e.basis.regime),
            e.direction_bounds.iter().flatten().count(),
            rep.d
        );
    }
    let mut ok = true;
    let p = procrustes(&xa, &xb)?;
    ok &= compare(&rep, &p, "the Procrustes fit");
    if let (Some(s), Some(e)) = (seed, epoch) {
        let r = ortho_passes::upm::change(kind, rep.d, s, e, None).to_dense();
        println!(
            "Procrustes fit vs the seed's change: ‖R_p − R‖_F = {:.3e}",
            (&p - &r).norm_l2()
        );
        ok &= compare(&rep, &r, "the seed's change");
    }
    if !ok {
        return Err("a certified bound is below the measured error".into());
    }
    Ok(())
}
