//! The gradient-check harness shared by the autodiff tests: a seeded RNG, a graph written in
//! `.oir` around the op under test, and the comparison of `autodiff`'s gradients with central
//! finite differences of the loss, all in f64 on the CPU engine.
#![allow(dead_code)]

use ortho_codegen::cpu::{HostTensor, Plan};
use ortho_ir::text::parse_module;
use ortho_passes::autodiff::{autodiff, AutodiffSpec};

/// splitmix64: a small seeded generator, so every test draws the same shapes and values.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
    /// Uniform integer in [lo, hi].
    pub fn int(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
}

/// What a graph input holds.
#[derive(Clone, Debug)]
pub enum Fill {
    /// A trainable f64 parameter, uniform in [lo, hi).
    Param(f64, f64),
    /// A fixed f64 input (not differentiated).
    Fixed(f64, f64),
    /// Random booleans.
    Bool,
    /// Random i64 in [0, n).
    Index(usize),
}

#[derive(Clone, Debug)]
pub struct Inp {
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub fill: Fill,
}

pub fn p(name: &'static str, shape: &[usize]) -> Inp {
    Inp {
        name,
        shape: shape.to_vec(),
        fill: Fill::Param(-1.0, 1.0),
    }
}

pub fn pr(name: &'static str, shape: &[usize], lo: f64, hi: f64) -> Inp {
    Inp {
        name,
        shape: shape.to_vec(),
        fill: Fill::Param(lo, hi),
    }
}

pub fn inp(name: &'static str, shape: &[usize], fill: Fill) -> Inp {
    Inp {
        name,
        shape: shape.to_vec(),
        fill,
    }
}

fn ty(shape: &[usize], dt: &str) -> String {
    if shape.is_empty() {
        format!("tensor<{dt}>")
    } else {
        let d: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        format!("tensor<{}x{dt}>", d.join("x"))
    }
}

fn dtype_of(f: &Fill) -> &'static str {
    match f {
        Fill::Param(..) | Fill::Fixed(..) => "f64",
        Fill::Bool => "bool",
        Fill::Index(_) => "i64",
    }
}

fn module_text(inputs: &[Inp], body: &str, outputs: &[&str]) -> String {
    let sig: Vec<String> = inputs
        .iter()
        .map(|i| format!("%{}: {}", i.name, ty(&i.shape, dtype_of(&i.fill))))
        .collect();
    let outs: Vec<String> = outputs.iter().map(|o| format!("%{o}")).collect();
    // ortho-opt's own ops (a factorized linear) need their domain imported.
    let ortho = if body.contains("ortho.") {
        ", \"ortho\" = 1"
    } else {
        ""
    };
    format!(
        "module {{ir_version = 9, opset_import = [\"\" = 18{ortho}]}}\ngraph @g({}) -> ({}) {{\n{}\n}}\n",
        sig.join(", "),
        outs.join(", "),
        body
    )
}

fn feed_of(i: &Inp, rng: &mut Rng) -> HostTensor {
    let n: usize = i.shape.iter().product();
    let shape = i.shape.clone();
    let t = match i.fill {
        Fill::Param(lo, hi) | Fill::Fixed(lo, hi) => HostTensor::from_vec(
            shape,
            (0..n).map(|_| rng.uniform(lo, hi)).collect::<Vec<f64>>(),
        ),
        Fill::Bool => HostTensor::from_vec(
            shape,
            (0..n)
                .map(|_| rng.next_u64() & 1 == 1)
                .collect::<Vec<bool>>(),
        ),
        Fill::Index(k) => HostTensor::from_vec(
            shape,
            (0..n)
                .map(|_| rng.int(0, k - 1) as i64)
                .collect::<Vec<i64>>(),
        ),
    };
    t.expect("feed")
}

/// The result of one check.
#[derive(Debug)]
pub struct Checked {
    /// Worst norm-wise relative error over the parameters.
    pub rel: f64,
    /// Finite-difference points skipped because a kink lay within h.
    pub skipped: usize,
    pub points: usize,
}

/// Differentiates `loss = Σ out ⊙ r` (r a fixed random probe of out's shape) with respect to
/// every `Fill::Param` input and compares with central differences of step `h`.
/// `kink` names a value whose sign pattern must not change between `θ ± h`: a point where it
/// does lies within h of a kink (Relu, Where on a computed condition) and is skipped.
pub fn check(inputs: &[Inp], body: &str, out: &str, kink: Option<&str>, seed: u64) -> Checked {
    check_ref(inputs, body, None, out, kink, seed)
}

/// As [`check`], with the gradient taken of `grad_body` (the op under test, which has no f64
/// kernel) and the differences of `body` (the same function in standard ops): the gradient graph
/// is run without the loss output, so the op's own forward node is dead and never runs; the
/// rule must then build its gradient from operands and result gradients alone, in f64.
pub fn check_ref(
    inputs: &[Inp],
    body: &str,
    grad_body: Option<&str>,
    out: &str,
    kink: Option<&str>,
    seed: u64,
) -> Checked {
    let mut rng = Rng(seed);
    let feeds: Vec<HostTensor> = inputs.iter().map(|i| feed_of(i, &mut rng)).collect();
    // The output's shape, from a forward run.
    let fwd = parse_module(&module_text(inputs, body, &[out])).expect("forward parses");
    let plan = Plan::compile(&fwd).expect("forward compiles");
    let named: Vec<(&str, HostTensor)> = inputs
        .iter()
        .zip(&feeds)
        .map(|(i, t)| (i.name, t.clone()))
        .collect();
    let y = plan.run(&named).expect("forward runs");
    let yshape = y[0].1.shape().to_vec();

    let mut all = inputs.to_vec();
    all.push(Inp {
        name: "probe",
        shape: yshape.clone(),
        fill: Fill::Fixed(-1.0, 1.0),
    });
    let probe = feed_of(all.last().expect("probe"), &mut rng);
    let with_loss = |body: &str| {
        format!(
            "{body}\n  %probed = onnx.Mul(%{out}, %probe) : ?\n  %loss = onnx.ReduceSum(%probed) {{keepdims = 0}} : ?"
        )
    };
    let mut outs = vec!["loss"];
    if let Some(k) = kink {
        outs.push(k);
    }
    let mut m = parse_module(&module_text(
        &all,
        &with_loss(grad_body.unwrap_or(body)),
        &outs,
    ))
    .expect("loss graph parses");
    let params: Vec<&Inp> = inputs
        .iter()
        .filter(|i| matches!(i.fill, Fill::Param(..)))
        .collect();
    let spec = AutodiffSpec {
        loss: "loss".into(),
        trainable: params.iter().map(|i| i.name.to_string()).collect(),
    };
    autodiff(&mut m, &spec).expect("autodiff");
    if let Err(d) = ortho_ir::verify::verify_module(&m) {
        panic!("the backward graph does not verify: {d:?}");
    }
    let fd_plan = grad_body.map(|_| {
        let r =
            parse_module(&module_text(&all, &with_loss(body), &outs)).expect("reference parses");
        Plan::compile(&r).expect("reference compiles")
    });
    if grad_body.is_some() {
        m.main_graph_mut()
            .outputs
            .retain(|o| o.name.ends_with("_grad"));
        // Shapes the gradient reads of the op's result (to spread a reduction's gradient) are
        // static here: folded, so nothing left reads the op's forward result.
        ortho_passes::transforms::canonicalize(&mut m, &Default::default());
    }
    let grad_plan = Plan::compile(&m).expect("backward compiles");
    let plan = fd_plan.as_ref().unwrap_or(&grad_plan);
    let mut feeds: Vec<(&str, HostTensor)> = named;
    feeds.push(("probe", probe));
    let res = grad_plan.run(&feeds).expect("backward runs");
    let get = |res: &[(String, HostTensor)], name: &str| -> Vec<f64> {
        res.iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.to_f64_vec())
            .unwrap_or_else(|| panic!("no output {name}"))
    };
    let h = 1e-5;
    let mut worst = 0.0f64;
    let (mut skipped, mut points) = (0, 0);
    for prm in params {
        let slot = feeds
            .iter()
            .position(|(n, _)| *n == prm.name)
            .expect("param fed");
        let grad = get(&res, &format!("{}_grad", prm.name));
        let base = feeds[slot].1.to_f64_vec();
        assert_eq!(grad.len(), base.len(), "gradient size of {}", prm.name);
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for i in 0..base.len() {
            let eval = |d: f64| {
                let mut v = base.clone();
                v[i] += d;
                let mut f = feeds.clone();
                f[slot].1 = HostTensor::from_vec(prm.shape.clone(), v).expect("feed");
                let r = plan.run(&f).expect("perturbed run");
                let l = get(&r, "loss")[0];
                let signs: Vec<bool> = kink
                    .map(|k| get(&r, k).iter().map(|&x| x > 0.0).collect())
                    .unwrap_or_default();
                (l, signs)
            };
            let (lp, sp) = eval(h);
            let (lm, sm) = eval(-h);
            points += 1;
            if sp != sm {
                skipped += 1;
                continue;
            }
            let fd = (lp - lm) / (2.0 * h);
            num += (grad[i] - fd).powi(2);
            den += fd.powi(2);
        }
        let rel = num.sqrt() / den.sqrt().max(1e-12);
        worst = worst.max(rel);
    }
    Checked {
        rel: worst,
        skipped,
        points,
    }
}

/// Norm-wise relative error every rule must meet against central differences in f64.
pub const TOL: f64 = 1e-6;

/// Runs `case(rng)` for several seeded draws (each returns inputs, body, output, kink) and
/// asserts every draw is within [`TOL`].
pub fn property(
    tag: &str,
    draws: usize,
    mut case: impl FnMut(&mut Rng) -> (Vec<Inp>, String, &'static str, Option<&'static str>),
) {
    property_ref(tag, draws, |rng| {
        let (inputs, body, out, kink) = case(rng);
        (inputs, body, None, out, kink)
    })
}

/// As [`property`], each draw optionally with a gradient body (see [`check_ref`]).
pub fn property_ref(
    tag: &str,
    draws: usize,
    mut case: impl FnMut(
        &mut Rng,
    ) -> (
        Vec<Inp>,
        String,
        Option<String>,
        &'static str,
        Option<&'static str>,
    ),
) {
    let mut rng = Rng(0x5eed ^ tag.len() as u64 * 7919);
    let mut worst = 0.0f64;
    for d in 0..draws {
        let (inputs, body, grad_body, out, kink) = case(&mut rng);
        let shapes: Vec<String> = inputs
            .iter()
            .map(|i| format!("{}{:?}", i.name, i.shape))
            .collect();
        let c = check_ref(
            &inputs,
            &body,
            grad_body.as_deref(),
            out,
            kink,
            1000 + d as u64,
        );
        assert!(
            c.rel <= TOL,
            "{tag} draw {d} ({}): relative error {:.3e} > {TOL:e}",
            shapes.join(" "),
            c.rel
        );
        assert!(
            c.skipped * 2 < c.points.max(1),
            "{tag}: {} of {} points skipped",
            c.skipped,
            c.points
        );
        worst = worst.max(c.rel);
    }
    eprintln!("{tag}: {draws} draws, worst relative error {worst:.2e}");
}

/// Random dims for a rank-`rank` operand (the range `Rng::int` draws from).
pub fn dims(rng: &mut Rng, rank: usize) -> Vec<usize> {
    (0..rank).map(|_| rng.int(1, 4)).collect()
}

/// A shape `s` broadcasts to: some dims set to 1 and maybe leading dims dropped.
pub fn broadcastable(rng: &mut Rng, s: &[usize]) -> Vec<usize> {
    let drop = rng.int(0, s.len());
    s[drop..]
        .iter()
        .map(|&d| if rng.next_u64() % 2 == 0 { 1 } else { d })
        .collect()
}
