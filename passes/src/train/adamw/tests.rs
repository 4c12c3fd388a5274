//! AdamW against steps computed by hand.

use super::*;

fn group(lr: f64, wd: f64, clip: Option<f64>) -> GroupSpec {
    GroupSpec {
        name: "g".into(),
        lr,
        weight_decay: wd,
        max_grad_norm: clip,
    }
}

fn close(a: f32, b: f64) -> bool {
    (f64::from(a) - b).abs() <= 1e-6 * b.abs().max(1.0)
}

#[test]
fn two_hand_computed_steps() {
    let cfg = AdamWConfig {
        max_grad_norm: None,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(cfg, vec![group(0.1, 0.01, None)], &[2], vec![0]).expect("opt");
    let mut p = vec![vec![1.0f32, -2.0]];
    // Step 1: m̂ = g and v̂ = g², so the update is g/(|g|+ε) ≈ sign(g):
    // p = 1·(1 − 0.1·0.01) − 0.1 = 0.899; −2·0.999 − 0.1 = −2.098.
    opt.step(&mut p, &[vec![0.5, 0.1]], 1.0).expect("step");
    assert!(close(p[0][0], 0.899) && close(p[0][1], -2.098), "{p:?}");
    // Step 2 with g = (−0.5, 0.3):
    // m = 0.9·0.05 + 0.1·(−0.5) = −0.005, m̂ = −0.005/0.19 = −0.026315789…
    // v = 0.999·0.00025 + 0.001·0.25 = 0.00049975, v̂ = 0.00049975/0.001999 = 0.25000000…
    // update₀ = −0.0263158/(0.5 + 1e−8) = −0.0526315…, p₀ = 0.899·0.999 + 0.1·0.0526315 = 0.9033642…
    // m = 0.9·0.01 + 0.1·0.3 = 0.039, m̂ = 0.205263…; v = 0.999·1e−5 + 0.001·0.09 = 0.00009999,
    // v̂ = 0.0500200…, √ = 0.2236515…; update₁ = 0.9177811…, p₁ = −2.098·0.999 − 0.09177811 = −2.1876801…
    opt.step(&mut p, &[vec![-0.5, 0.3]], 1.0).expect("step");
    let m0 = (0.9 * 0.05 + 0.1 * -0.5) / (1.0 - 0.81);
    let v0 = (0.999 * 0.00025 + 0.001 * 0.25) / (1.0 - 0.998001);
    let want0 = 0.899 * 0.999 - 0.1 * m0 / (f64::sqrt(v0) + 1e-8);
    let m1 = (0.9 * 0.01 + 0.1 * 0.3) / (1.0 - 0.81);
    let v1 = (0.999 * 1e-5 + 0.001 * 0.09) / (1.0 - 0.998001);
    let want1 = -2.098 * 0.999 - 0.1 * m1 / (f64::sqrt(v1) + 1e-8);
    assert!((want0 - 0.9033642).abs() < 1e-6 && (want1 + 2.1876801).abs() < 1e-6);
    assert!(close(p[0][0], want0) && close(p[0][1], want1), "{p:?}");
    assert_eq!(opt.group_step(0), 2);
}

#[test]
fn global_clipping_scales_every_gradient() {
    // ‖g‖ = 5 over two parameters, clip at 1: the moments see g/5.
    let cfg = AdamWConfig {
        max_grad_norm: Some(1.0),
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(cfg, vec![group(0.1, 0.0, None)], &[1, 1], vec![0, 0]).expect("opt");
    let mut p = vec![vec![0.0f32], vec![0.0f32]];
    let s = opt
        .step(&mut p, &[vec![3.0], vec![4.0]], 1.0)
        .expect("step");
    assert_eq!(s.grad_norm, 5.0);
    assert!((s.clip_scale - 0.2).abs() < 1e-15);
    let (m, v) = opt.moments(1);
    assert!(
        close(m[0], 0.1 * 0.8) && close(v[0], 0.001 * 0.64),
        "{m:?} {v:?}"
    );
}

#[test]
fn groups_have_their_own_lr_decay_clip_and_reset() {
    let cfg = AdamWConfig {
        max_grad_norm: None,
        ..AdamWConfig::default()
    };
    let groups = vec![group(0.1, 0.0, None), group(0.01, 0.5, Some(0.1))];
    let mut opt = AdamW::new(cfg, groups, &[1, 1], vec![0, 1]).expect("opt");
    let mut p = vec![vec![1.0f32], vec![1.0f32]];
    opt.step(&mut p, &[vec![2.0], vec![2.0]], 0.5)
        .expect("step");
    // Group 0: lr 0.05, no decay: 1 − 0.05. Group 1: lr 0.005, decay 1 − 0.0025, the gradient
    // clipped to 0.1 (first step's update is still ≈ sign): 0.9975 − 0.005.
    assert!(close(p[0][0], 0.95), "{p:?}");
    assert!(close(p[1][0], 0.9975 - 0.005), "{p:?}");
    assert!(close(opt.moments(1).0[0], 0.1 * 0.1));
    opt.reset_group(1);
    assert_eq!(opt.moments(1), (&[0.0f32][..], &[0.0f32][..]));
    assert_eq!((opt.group_step(0), opt.group_step(1)), (1, 0));
    assert!(opt.moments(0).0[0] != 0.0);
    // After the reset group 1's next step is a first step again (bias correction restarted).
    let before = p[1][0];
    opt.step(&mut p, &[vec![0.0], vec![-0.05]], 1.0)
        .expect("step");
    let want = f64::from(before) * (1.0 - 0.01 * 0.5) + 0.01;
    assert!(close(p[1][0], want), "{} vs {want}", p[1][0]);
}

#[test]
fn masks_keep_pruned_weights_at_zero() {
    let mut opt = AdamW::new(
        AdamWConfig::default(),
        vec![group(0.1, 0.1, None)],
        &[4],
        vec![0],
    )
    .expect("opt");
    opt.set_mask(0, vec![true, false, true, false])
        .expect("mask");
    let mut p = vec![vec![1.0f32, 0.0, -1.0, 0.0]];
    for _ in 0..3 {
        opt.step(&mut p, &[vec![0.1, 5.0, -0.1, -5.0]], 1.0)
            .expect("step");
    }
    assert_eq!((p[0][1], p[0][3]), (0.0, 0.0));
    assert!(p[0][0] < 1.0 && p[0][2] > -1.0);
    // Masked gradients do not count toward the norm.
    let s = opt
        .step(&mut p, &[vec![0.3, 100.0, 0.4, 100.0]], 1.0)
        .expect("step");
    assert!((s.grad_norm - 0.5).abs() < 1e-7);
    assert!(opt.set_mask(0, vec![true]).is_err());
}

#[test]
fn bad_sizes_are_errors() {
    let mut opt = AdamW::new(
        AdamWConfig::default(),
        vec![group(0.1, 0.0, None)],
        &[2],
        vec![0],
    )
    .expect("opt");
    let mut p = vec![vec![0.0f32; 2]];
    assert_eq!(
        opt.step(&mut p, &[vec![0.0; 3]], 1.0),
        Err(TrainError::GradSize {
            index: 0,
            got: 3,
            want: 2
        })
    );
    assert!(matches!(
        opt.step(&mut p, &[vec![f32::NAN, 0.0]], 1.0),
        Err(TrainError::NonFinite { index: 0 })
    ));
    assert!(AdamW::new(AdamWConfig::default(), vec![], &[1], vec![0]).is_err());
}

#[test]
fn exported_state_resumes_exactly_and_bad_sizes_are_refused() {
    let groups = || vec![group(0.1, 0.01, Some(0.7)), group(0.05, 0.0, None)];
    let mut a = AdamW::new(AdamWConfig::default(), groups(), &[3, 2], vec![0, 1]).expect("opt");
    a.set_mask(0, vec![true, false, true]).expect("mask");
    let mut p = vec![vec![1.0f32, 0.0, -1.0], vec![0.5, 0.25]];
    let g1 = vec![vec![0.3f32, 0.2, -0.1], vec![0.4, -0.6]];
    let g2 = vec![vec![-0.2f32, 0.9, 0.5], vec![0.1, 0.2]];
    a.step(&mut p, &g1, 1.0).expect("step");
    a.set_group_clip(0, Some(0.3));
    let saved = (a.export_state(), p.clone());
    // A fresh optimizer (no mask, steps 0) given the state continues exactly as the original.
    let mut b = AdamW::new(AdamWConfig::default(), groups(), &[3, 2], vec![0, 1]).expect("opt");
    b.import_state(saved.0.clone()).expect("import");
    let mut q = saved.1;
    a.step(&mut p, &g2, 0.5).expect("step");
    b.step(&mut q, &g2, 0.5).expect("step");
    assert_eq!(p, q);
    assert_eq!(a.export_state(), b.export_state());
    assert_eq!(b.group_step(0), 2);
    assert_eq!(p[0][1], 0.0, "the imported mask holds");
    // Another layout is refused and leaves the optimizer as it was.
    let mut c = AdamW::new(AdamWConfig::default(), groups(), &[3, 3], vec![0, 1]).expect("opt");
    let before = c.export_state();
    assert!(matches!(
        c.import_state(saved.0),
        Err(TrainError::GradSize { index: 1, .. })
    ));
    assert_eq!(c.export_state(), before);
}
