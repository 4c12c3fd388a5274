//! Gradient checks of the transformer pieces' autodiff rules (a decoder block written out, the
//! token cross-entropy helper, RMS / layer normalization, rotary embedding, fused elementwise
//! regions, factorized linears, fused Attention) against central finite differences in f64; the
//! harness and tolerance are `gradcheck`'s (see `autodiff_grad.rs`).

mod gradcheck;

use gradcheck::{dims, inp, p, pr, property, property_ref, Fill, Rng};

#[test]
fn decoder_block_pieces_compose() {
    // An RMSNorm written out (the SmolLM2 spelling), a SwiGLU MLP and a causal softmax attention
    // with a head reshape: the composition of the rules the real model uses.
    property("decomposed block", 3, |rng| {
        let (b, s, h, d) = (rng.int(1, 2), rng.int(2, 4), 2, 2);
        let w = h * d;
        let body = format!(
            r#"  %eps = const tensor<f64> dense<[1e-5]>
  %sq = onnx.Mul(%x, %x) : ?
  %ax = const tensor<1xi64> dense<[-1]>
  %ms = onnx.ReduceMean(%sq, %ax) {{keepdims = 1}} : ?
  %ae = onnx.Add(%ms, %eps) : ?
  %rt = onnx.Sqrt(%ae) : ?
  %nx = onnx.Div(%x, %rt) : ?
  %n = onnx.Mul(%nx, %g) : ?
  %q = onnx.MatMul(%n, %wq) : ?
  %k = onnx.MatMul(%n, %wk) : ?
  %v = onnx.MatMul(%n, %wv) : ?
  %hs = const tensor<4xi64> dense<[{b}, {s}, {h}, {d}]>
  %qr = onnx.Reshape(%q, %hs) : ?
  %kr = onnx.Reshape(%k, %hs) : ?
  %vr = onnx.Reshape(%v, %hs) : ?
  %qt = onnx.Transpose(%qr) {{perm = [0, 2, 1, 3]}} : ?
  %kt = onnx.Transpose(%kr) {{perm = [0, 2, 3, 1]}} : ?
  %vt = onnx.Transpose(%vr) {{perm = [0, 2, 1, 3]}} : ?
  %sc = onnx.MatMul(%qt, %kt) : ?
  %scale = const tensor<f64> dense<[0.5]>
  %ss = onnx.Mul(%sc, %scale) : ?
  %msk = onnx.Add(%ss, %mask) : ?
  %pr = onnx.Softmax(%msk) {{axis = -1}} : ?
  %at = onnx.MatMul(%pr, %vt) : ?
  %ab = onnx.Transpose(%at) {{perm = [0, 2, 1, 3]}} : ?
  %os = const tensor<3xi64> dense<[{b}, {s}, {w}]>
  %ao = onnx.Reshape(%ab, %os) : ?
  %o = onnx.MatMul(%ao, %wo) : ?
  %r = onnx.Add(%x, %o) : ?
  %gt = onnx.MatMul(%r, %wg) : ?
  %sg = onnx.Sigmoid(%gt) : ?
  %si = onnx.Mul(%gt, %sg) : ?
  %up = onnx.MatMul(%r, %wu) : ?
  %gu = onnx.Mul(%si, %up) : ?
  %dn = onnx.MatMul(%gu, %wd) : ?
  %y = onnx.Add(%r, %dn) : ?"#
        );
        let mask: Vec<usize> = vec![s, s];
        (
            vec![
                p("x", &[b, s, w]),
                pr("g", &[w], 0.5, 1.5),
                p("wq", &[w, w]),
                p("wk", &[w, w]),
                p("wv", &[w, w]),
                p("wo", &[w, w]),
                p("wg", &[w, 3]),
                p("wu", &[w, 3]),
                p("wd", &[3, w]),
                inp("mask", &mask, Fill::Fixed(-2.0, 0.0)),
            ],
            body,
            "y",
            None,
        )
    });
}

#[test]
fn token_cross_entropy_helper() {
    use ortho_codegen::cpu::{HostTensor, Plan};
    use ortho_passes::autodiff::loss::append_token_cross_entropy;
    use ortho_passes::autodiff::{autodiff, AutodiffSpec};
    let (b, s, d, v) = (2usize, 3usize, 4usize, 5usize);
    let src = format!(
        "module {{ir_version = 9, opset_import = [\"\" = 18]}}\ngraph @lm(%x: tensor<{b}x{s}x{d}xf64>, %w: tensor<{d}x{v}xf64>) -> (%logits) {{\n  %logits = onnx.MatMul(%x, %w) : ?\n}}\n"
    );
    let mut m = ortho_ir::text::parse_module(&src).expect("parses");
    let ce = append_token_cross_entropy(&mut m, "logits", "labels").expect("loss appended");
    autodiff(
        &mut m,
        &AutodiffSpec {
            loss: ce.loss.clone(),
            trainable: vec!["w".into()],
        },
    )
    .expect("autodiff");
    let plan = Plan::compile(&m).expect("compiles");
    let mut rng = Rng(7);
    let x: Vec<f64> = (0..b * s * d).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let w: Vec<f64> = (0..d * v).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let labels: Vec<i64> = (0..b * s).map(|_| rng.int(0, v - 1) as i64).collect();
    let run = |w: &[f64]| {
        let feeds = vec![
            (
                "x",
                HostTensor::from_vec(vec![b, s, d], x.clone()).expect("x"),
            ),
            (
                "w",
                HostTensor::from_vec(vec![d, v], w.to_vec()).expect("w"),
            ),
            (
                "labels",
                HostTensor::from_vec(vec![b, s], labels.clone()).expect("labels"),
            ),
        ];
        plan.run(&feeds).expect("runs")
    };
    let out = run(&w);
    let get = |o: &[(String, HostTensor)], n: &str| {
        o.iter()
            .find(|(k, _)| k == n)
            .map(|(_, t)| t.to_f64_vec())
            .expect("output")
    };
    // The loss equals the mean of -log softmax at the labels, computed here directly.
    let logits = get(&out, "logits");
    let mut want = 0.0;
    for t in 0..b * s {
        let row = &logits[t * v..(t + 1) * v];
        let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = mx + row.iter().map(|z| (z - mx).exp()).sum::<f64>().ln();
        want += lse - row[labels[t] as usize];
    }
    want /= (b * s) as f64;
    let loss = get(&out, &ce.loss)[0];
    assert!((loss - want).abs() < 1e-12, "{loss} vs {want}");
    let grad = get(&out, "w_grad");
    let h = 1e-5;
    let (mut num, mut den) = (0.0, 0.0);
    for i in 0..w.len() {
        let mut wp = w.clone();
        wp[i] += h;
        let mut wm = w.clone();
        wm[i] -= h;
        let fd = (get(&run(&wp), &ce.loss)[0] - get(&run(&wm), &ce.loss)[0]) / (2.0 * h);
        num += (grad[i] - fd).powi(2);
        den += fd * fd;
    }
    let rel = (num / den).sqrt();
    assert!(rel <= gradcheck::TOL, "cross-entropy gradient: {rel:.3e}");
}

#[test]
fn rms_normalization() {
    property("RMSNormalization", 4, |rng| {
        let s = dims(rng, 3);
        let axis = if rng.next_u64() % 2 == 0 { -1 } else { 1 };
        let gshape: Vec<usize> = if axis == -1 {
            vec![s[2]]
        } else {
            vec![s[1], s[2]]
        };
        (
            vec![p("x", &s), pr("g", &gshape, 0.5, 1.5)],
            format!("  %y = onnx.RMSNormalization(%x, %g) {{axis = {axis}, epsilon = 1e-3}} : ?"),
            "y",
            None,
        )
    });
}

/// RotaryEmbedding has an f32 kernel only, and is linear in x, so its rule is checked exactly
/// instead of by differences: for `L = Σ Rope(x) ⊙ p`, `∂L/∂x = Ropeᵀ p`, hence
/// `⟨∂L/∂x, x⟩ = L` and, for a second point z, `⟨∂L/∂x, z⟩ = L(z)` (up to f32 rounding).
#[test]
fn rotary_embedding_adjoint() {
    use ortho_codegen::cpu::{HostTensor, Plan};
    use ortho_passes::autodiff::{autodiff, AutodiffSpec};
    let (b, s, h, d, maxpos) = (2usize, 3usize, 2usize, 4usize, 5usize);
    let mut rng = Rng(99);
    let cache = |rng: &mut Rng, f: fn(f64) -> f64| -> String {
        let v: Vec<String> = (0..maxpos * d / 2)
            .map(|_| format!("{:.6}", f(rng.uniform(-3.0, 3.0))))
            .collect();
        v.join(", ")
    };
    let (cos, sin) = (cache(&mut rng, f64::cos), cache(&mut rng, f64::sin));
    let src = format!(
        "module {{ir_version = 9, opset_import = [\"\" = 23]}}\ngraph @r(%x: tensor<{b}x{s}x{w}xf32>, %p: tensor<{b}x{s}x{w}xf32>, %pos: tensor<{b}x{s}xi64>) -> (%loss) {{\n  %cos = const tensor<{maxpos}x{hd}xf32> dense<[{cos}]>\n  %sin = const tensor<{maxpos}x{hd}xf32> dense<[{sin}]>\n  %y = onnx.RotaryEmbedding(%x, %cos, %sin, %pos) {{num_heads = {h}}} : ?\n  %yp = onnx.Mul(%y, %p) : ?\n  %loss = onnx.ReduceSum(%yp) {{keepdims = 0}} : ?\n}}\n",
        w = h * d,
        hd = d / 2
    );
    let mut m = ortho_ir::text::parse_module(&src).expect("parses");
    autodiff(
        &mut m,
        &AutodiffSpec {
            loss: "loss".into(),
            trainable: vec!["x".into()],
        },
    )
    .expect("autodiff");
    let plan = Plan::compile(&m).expect("compiles");
    let n = b * s * h * d;
    let vec =
        |rng: &mut Rng| -> Vec<f32> { (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect() };
    let (x, z, p) = (vec(&mut rng), vec(&mut rng), vec(&mut rng));
    let pos: Vec<i64> = (0..b * s).map(|_| rng.int(0, maxpos - 1) as i64).collect();
    let run = |x: &[f32]| {
        let feeds = vec![
            (
                "x",
                HostTensor::from_vec(vec![b, s, h * d], x.to_vec()).expect("x"),
            ),
            (
                "p",
                HostTensor::from_vec(vec![b, s, h * d], p.clone()).expect("p"),
            ),
            (
                "pos",
                HostTensor::from_vec(vec![b, s], pos.clone()).expect("pos"),
            ),
        ];
        let out = plan.run(&feeds).expect("runs");
        let get = |k: &str| {
            out.iter()
                .find(|(nm, _)| nm == k)
                .map(|(_, t)| t.to_f64_vec())
                .expect("output")
        };
        (get("loss")[0], get("x_grad"))
    };
    let (lx, g) = run(&x);
    let (lz, _) = run(&z);
    let dot = |a: &[f64], v: &[f32]| a.iter().zip(v).map(|(p, q)| p * f64::from(*q)).sum::<f64>();
    for (l, v) in [(lx, &x), (lz, &z)] {
        let gv = dot(&g, v);
        assert!(
            (gv - l).abs() <= 1e-5 * l.abs().max(1.0),
            "⟨g, v⟩ = {gv}, L = {l}"
        );
    }
}

/// A fused elementwise region (`ortho.FusedElementwise`, made by `fuse-elementwise`) on the
/// gradient path is lowered and differentiated through its ops.
#[test]
fn fused_elementwise_regions_are_lowered_then_differentiated() {
    use ortho_codegen::cpu::{HostTensor, Plan};
    use ortho_passes::autodiff::{autodiff, AutodiffSpec};
    let src = "module {ir_version = 9, opset_import = [\"\" = 18]}\ngraph @f(%x: tensor<3x4xf32>, %w: tensor<4x4xf32>) -> (%loss) {\n  %h = onnx.MatMul(%x, %w) : ?\n  %s = onnx.Sigmoid(%h) : ?\n  %g = onnx.Mul(%h, %s) : ?\n  %t = onnx.Tanh(%g) : ?\n  %loss = onnx.ReduceSum(%t) {keepdims = 0} : ?\n}\n";
    let plain = ortho_ir::text::parse_module(src).expect("parses");
    let mut fused = plain.clone();
    let st = ortho_passes::transforms::fuse_elementwise(&mut fused, &Default::default());
    assert!(st != Default::default(), "the chain is fused");
    let spec = AutodiffSpec {
        loss: "loss".into(),
        trainable: vec!["w".into()],
    };
    let grads = |mut m: ortho_ir::Module| {
        let r = autodiff(&mut m, &spec).expect("autodiff");
        let plan = Plan::compile(&m).expect("compiles");
        let mut rng = Rng(5);
        let x: Vec<f32> = (0..12).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
        let w: Vec<f32> = (0..16).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
        let out = plan
            .run(&[
                ("x", HostTensor::from_vec(vec![3, 4], x).expect("x")),
                ("w", HostTensor::from_vec(vec![4, 4], w).expect("w")),
            ])
            .expect("runs");
        let g = out
            .iter()
            .find(|(n, _)| n == "w_grad")
            .map(|(_, t)| t.to_f64_vec())
            .expect("w_grad");
        (r.lowered_fused, g)
    };
    let (l0, g0) = grads(plain);
    let (l1, g1) = grads(fused);
    assert_eq!(l0, 0);
    assert!(l1 > 0);
    // The same ops in the same order once lowered: the same gradient to f32 rounding.
    for (a, b) in g0.iter().zip(&g1) {
        assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{a} vs {b}");
    }
}

/// LayerNormalization has an f32 kernel only: its rule is checked in f64 against differences of
/// the same function written in standard ops (mean, biased variance, ε inside the root).
#[test]
fn layer_normalization() {
    property_ref("LayerNormalization", 4, |rng| {
        let s = dims(rng, 3);
        let two = rng.next_u64() % 2 == 0;
        let (axis, axes, gshape) = if two {
            (1, "1, 2", vec![s[1], s[2]])
        } else {
            (-1, "2", vec![s[2]])
        };
        let n_axes = if two { 2 } else { 1 };
        // The bias sometimes broadcasts along the normalized axes.
        let bshape = if rng.next_u64() % 2 == 0 {
            gshape.clone()
        } else {
            vec![*gshape.last().expect("dims")]
        };
        let reference = format!(
            "  %ax = const tensor<{n_axes}xi64> dense<[{axes}]>\n  %eps = const tensor<f64> dense<[0.001]>\n  %mu = onnx.ReduceMean(%x, %ax) {{keepdims = 1}} : ?\n  %xc = onnx.Sub(%x, %mu) : ?\n  %sq = onnx.Mul(%xc, %xc) : ?\n  %var = onnx.ReduceMean(%sq, %ax) {{keepdims = 1}} : ?\n  %ve = onnx.Add(%var, %eps) : ?\n  %sd = onnx.Sqrt(%ve) : ?\n  %xh = onnx.Div(%xc, %sd) : ?\n  %gy = onnx.Mul(%xh, %g) : ?\n  %y = onnx.Add(%gy, %b) : ?"
        );
        let fused = format!(
            "  %y = onnx.LayerNormalization(%x, %g, %b) {{axis = {axis}, epsilon = 1e-3}} : ?"
        );
        (
            vec![p("x", &s), pr("g", &gshape, 0.5, 1.5), p("b", &bshape)],
            reference,
            Some(fused),
            "y",
            None,
        )
    });
}

/// `ortho.FactorizedLinear` (Kronecker sum and low rank, see `ortho_ir::factorized`): the
/// gradient w.r.t. the input and both factors, through the op's lowering to standard ops, against
/// differences of the op's own f64 kernel.
#[test]
fn factorized_linear() {
    property("FactorizedLinear kron", 4, |rng| {
        let (m1, n1, m2, n2, r) = (
            rng.int(1, 3),
            rng.int(1, 3),
            rng.int(1, 3),
            rng.int(1, 3),
            rng.int(1, 3),
        );
        let lead_rank = rng.int(0, 2);
        let lead = dims(rng, lead_rank);
        let mut xs = lead;
        xs.push(n1 * n2);
        (
            vec![p("x", &xs), p("a", &[r, m1, n1]), p("b", &[r, m2, n2])],
            format!(
                "  %y = ortho.FactorizedLinear(%x, %a, %b) {{kind = \"kron\", rank = {r}, shape = [{m1}, {n1}, {m2}, {n2}]}} : ?"
            ),
            "y",
            None,
        )
    });
    property("FactorizedLinear lowrank", 4, |rng| {
        let (m, n, r) = (rng.int(1, 5), rng.int(1, 5), rng.int(1, 3));
        let lead_rank = rng.int(0, 2);
        let lead = dims(rng, lead_rank);
        let mut xs = lead;
        xs.push(n);
        (
            vec![p("x", &xs), p("u", &[m, r]), p("v", &[n, r])],
            format!(
                "  %y = ortho.FactorizedLinear(%x, %u, %v) {{kind = \"lowrank\", rank = {r}}} : ?"
            ),
            "y",
            None,
        )
    });
}

/// One Attention case: the fused op, and the same function in standard ops (the reference the
/// differences are taken of). `layout3` picks `[B, S, H·D]` operands, else `[B, H, S, D]`.
struct AttnCase {
    b: usize,
    s: usize,
    t: usize,
    hq: usize,
    hkv: usize,
    d: usize,
    dv: usize,
    layout3: bool,
    causal: bool,
    mask: bool,
    scale: Option<f64>,
}

impl AttnCase {
    fn draw(rng: &mut Rng, layout3: bool) -> AttnCase {
        let hkv = rng.int(1, 2);
        let hq = hkv * rng.int(1, 2);
        let s = rng.int(1, 4);
        let causal = rng.next_u64() % 2 == 0;
        // Without a causal mask the keys may outnumber the queries (4-D only: the 3-D layout
        // here keeps one sequence length).
        let t = if causal || layout3 { s } else { rng.int(1, 4) };
        AttnCase {
            b: rng.int(1, 2),
            s,
            t,
            hq,
            hkv,
            d: rng.int(1, 3),
            dv: rng.int(1, 3),
            layout3,
            causal,
            mask: rng.next_u64() % 2 == 0,
            scale: (rng.next_u64() % 2 == 0).then(|| rng.uniform(0.3, 1.2)),
        }
    }

    fn shapes(&self) -> [Vec<usize>; 3] {
        let (b, s, t) = (self.b, self.s, self.t);
        if self.layout3 {
            [
                vec![b, s, self.hq * self.d],
                vec![b, t, self.hkv * self.d],
                vec![b, t, self.hkv * self.dv],
            ]
        } else {
            [
                vec![b, self.hq, s, self.d],
                vec![b, self.hkv, t, self.d],
                vec![b, self.hkv, t, self.dv],
            ]
        }
    }

    fn inputs(&self) -> Vec<gradcheck::Inp> {
        let [q, k, v] = self.shapes();
        let mut i = vec![p("q", &q), p("k", &k), p("v", &v)];
        if self.mask {
            i.push(inp("m", &[self.s, self.t], Fill::Fixed(-1.0, 1.0)));
        }
        i
    }

    fn fused(&self) -> String {
        let mut attrs = vec![format!("is_causal = {}", i64::from(self.causal))];
        if self.layout3 {
            attrs.push(format!("q_num_heads = {}", self.hq));
            attrs.push(format!("kv_num_heads = {}", self.hkv));
        }
        if let Some(sc) = self.scale {
            attrs.push(format!("scale = {sc}"));
        }
        let m = if self.mask { ", %m" } else { "" };
        format!(
            "  %y = onnx.Attention(%q, %k, %v{m}) {{{}}} : ?",
            attrs.join(", ")
        )
    }

    fn reference(&self) -> String {
        let mut b = String::new();
        let mut line = |s: String| {
            b.push_str(&s);
            b.push('\n');
        };
        let g = self.hq / self.hkv;
        let heads = |line: &mut dyn FnMut(String), x: &str, h: usize| {
            if self.layout3 {
                line(format!(
                    "  %{x}_s = const tensor<4xi64> dense<[0, 0, {h}, -1]>"
                ));
                line(format!("  %{x}_r = onnx.Reshape(%{x}, %{x}_s) : ?"));
                line(format!(
                    "  %{x}4 = onnx.Transpose(%{x}_r) {{perm = [0, 2, 1, 3]}} : ?"
                ));
            } else {
                line(format!("  %{x}4 = onnx.Identity(%{x}) : ?"));
            }
        };
        heads(&mut line, "q", self.hq);
        heads(&mut line, "k", self.hkv);
        heads(&mut line, "v", self.hkv);
        for (x, w) in [("k", self.d), ("v", self.dv)] {
            line(format!("  %{x}_ax = const tensor<1xi64> dense<[2]>"));
            line(format!("  %{x}_u = onnx.Unsqueeze(%{x}4, %{x}_ax) : ?"));
            line(format!(
                "  %{x}_rep = const tensor<5xi64> dense<[1, 1, {g}, 1, 1]>"
            ));
            line(format!("  %{x}_e = onnx.Expand(%{x}_u, %{x}_rep) : ?"));
            line(format!(
                "  %{x}_hs = const tensor<4xi64> dense<[0, {}, -1, {w}]>",
                self.hq
            ));
            line(format!("  %{x}h = onnx.Reshape(%{x}_e, %{x}_hs) : ?"));
        }
        let scale = self
            .scale
            .map_or(1.0 / (self.d as f32).sqrt(), |s| s as f32);
        line(format!(
            "  %scale = const tensor<f64> dense<[{:e}]>",
            f64::from(scale)
        ));
        line("  %kt = onnx.Transpose(%kh) {perm = [0, 1, 3, 2]} : ?".into());
        line("  %qk = onnx.MatMul(%q4, %kt) : ?".into());
        line("  %sc0 = onnx.Mul(%qk, %scale) : ?".into());
        let mut sc = "sc0".to_string();
        if self.mask {
            line(format!("  %sc1 = onnx.Add(%{sc}, %m) : ?"));
            sc = "sc1".into();
        }
        if self.causal {
            // Key j is hidden from query i when j > i (S = T here): −1e30, whose exponential
            // is exactly 0 in f64.
            let vals: Vec<&str> = (0..self.s * self.t)
                .map(|k| {
                    if k % self.t > k / self.t {
                        "-1e30"
                    } else {
                        "0.0"
                    }
                })
                .collect();
            line(format!(
                "  %cm = const tensor<{}x{}xf64> dense<[{}]>",
                self.s,
                self.t,
                vals.join(", ")
            ));
            line(format!("  %sc2 = onnx.Add(%{sc}, %cm) : ?"));
            sc = "sc2".into();
        }
        line(format!("  %p = onnx.Softmax(%{sc}) {{axis = -1}} : ?"));
        if self.layout3 {
            line("  %o4 = onnx.MatMul(%p, %vh) : ?".into());
            line("  %ot = onnx.Transpose(%o4) {perm = [0, 2, 1, 3]} : ?".into());
            line("  %os = const tensor<3xi64> dense<[0, 0, -1]>".into());
            line("  %y = onnx.Reshape(%ot, %os) : ?".into());
        } else {
            line("  %y = onnx.MatMul(%p, %vh) : ?".into());
        }
        b
    }
}

/// The fused kernel (f32 only) and the reference agree on the forward pass, so the reference
/// the differences are taken of is the op's own function.
fn attention_reference_matches_kernel(c: &AttnCase, rng: &mut Rng) {
    use ortho_codegen::cpu::{HostTensor, Plan};
    let inputs = c.inputs();
    let sig: Vec<String> = inputs
        .iter()
        .map(|i| {
            let d: Vec<String> = i.shape.iter().map(|x| x.to_string()).collect();
            format!("%{}: tensor<{}xf32>", i.name, d.join("x"))
        })
        .collect();
    let module = |body: &str| {
        let text = format!(
            "module {{ir_version = 10, opset_import = [\"\" = 23]}}\ngraph @g({}) -> (%y) {{\n{}\n}}\n",
            sig.join(", "),
            body.replace("xf64>", "xf32>").replace("tensor<f64>", "tensor<f32>")
        );
        Plan::compile(&ortho_ir::text::parse_module(&text).expect("parses")).expect("compiles")
    };
    let feeds: Vec<(&str, HostTensor)> = inputs
        .iter()
        .map(|i| {
            let n: usize = i.shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
            (
                i.name,
                HostTensor::from_vec(i.shape.clone(), v).expect("feed"),
            )
        })
        .collect();
    let a = module(&c.fused()).run(&feeds).expect("fused runs");
    let r = module(&c.reference()).run(&feeds).expect("reference runs");
    assert_eq!(a[0].1.shape(), r[0].1.shape());
    let (x, y) = (a[0].1.to_f64_vec(), r[0].1.to_f64_vec());
    for (u, w) in x.iter().zip(&y) {
        assert!((u - w).abs() <= 1e-5, "fused {u} vs reference {w}");
    }
}

#[test]
fn fused_attention() {
    for layout3 in [true, false] {
        let tag = if layout3 {
            "Attention 3-D"
        } else {
            "Attention 4-D"
        };
        let mut probe = Rng(77 + u64::from(layout3));
        property_ref(tag, 6, |rng| {
            let c = AttnCase::draw(rng, layout3);
            attention_reference_matches_kernel(&c, &mut probe);
            (c.inputs(), c.reference(), Some(c.fused()), "y", None)
        });
    }
}
