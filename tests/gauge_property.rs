//! Property test of the invariance verifier: a random orthogonal change of basis that the
//! gauge analysis admits leaves a model's outputs unchanged (checked in onnxruntime on random
//! tiny models with random weights, several seeds and kinds), and one it does not admit is
//! refused — non-zero exit, no output file, the blocking node named.
//!
//! The models are generated here as `.oir` text: a Llama-like pre-norm decoder (decomposed
//! RMSNorm or the opset-23 `RMSNormalization`, GQA attention with decomposed RoPE, SwiGLU,
//! tied head) and a BERT-like post-LN encoder (LayerNormalization on the stream, biases, GELU
//! written with Erf, untied head).

mod common;

use common::{python_tool, run, TempDir};
use std::fmt::Write as _;
use std::path::Path;

const VOCAB: usize = 16;
const SEQ: usize = 8;

/// SplitMix64, for reproducible weights.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A module under construction: constants first, then nodes.
struct Text {
    rng: Rng,
    consts: String,
    body: String,
}

impl Text {
    fn new(seed: u64) -> Text {
        Text {
            rng: Rng(seed),
            consts: String::new(),
            body: String::new(),
        }
    }

    fn tensor(&mut self, name: &str, dims: &[usize], vals: &[f64]) {
        let shape: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
        let ty = if dims.is_empty() {
            "tensor<f32>".to_string()
        } else {
            format!("tensor<{}xf32>", shape.join("x"))
        };
        let v: Vec<String> = vals.iter().map(|x| format!("{:?}", *x as f32)).collect();
        let _ = writeln!(
            self.consts,
            "  %{name} = const {ty} dense<[{}]>",
            v.join(", ")
        );
    }

    /// A random weight, uniform in ±scale (plus `offset`).
    fn weight(&mut self, name: &str, dims: &[usize], scale: f64, offset: f64) {
        let n: usize = dims.iter().product();
        let vals: Vec<f64> = (0..n)
            .map(|_| offset + scale * (2.0 * self.rng.next() - 1.0))
            .collect();
        self.tensor(name, dims, &vals);
    }

    fn ints(&mut self, name: &str, vals: &[i64]) {
        let v: Vec<String> = vals.iter().map(|x| x.to_string()).collect();
        let ty = if vals.len() == 1 && name.starts_with('s') {
            "tensor<i64>".to_string()
        } else {
            format!("tensor<{}xi64>", vals.len())
        };
        let _ = writeln!(
            self.consts,
            "  %{name} = const {ty} dense<[{}]>",
            v.join(", ")
        );
    }

    fn op(&mut self, line: &str) {
        let _ = writeln!(self.body, "  {line}");
    }

    fn finish(self, header: &str, graph: &str, logits_width: usize) -> String {
        format!(
            "{header}\ngraph @{graph}(%input_ids: tensor<\"batch\"x\"seq\"xi64>) -> (%logits) {{\n{}{}  %logits = onnx.Identity(%logits_raw) : tensor<\"batch\"x\"seq\"x{logits_width}xf32>\n}}\n",
            self.consts, self.body
        )
    }
}

/// How the decoder spells its norms.
#[derive(Clone, Copy, PartialEq)]
enum NormStyle {
    Decomposed,
    Op,
}

/// A Llama-like decoder: d = 8, 2 query heads sharing 1 KV head of size 4, FFN 12, 2 blocks.
/// `unit_gains`: every norm gain is exactly 1 (then O(d) is admitted without folding).
fn llama(seed: u64, style: NormStyle, unit_gains: bool) -> String {
    let (d, hd, ffn) = (8usize, 4usize, 12usize);
    let mut t = Text::new(seed);
    t.weight("E", &[VOCAB, d], 1.0, 0.0);
    t.tensor("eps", &[], &[1e-5]);
    t.ints("c0", &[0]);
    t.ints("c1", &[1]);
    t.ints("c2", &[2]);
    t.ints("s0", &[0]);
    t.ints("s1", &[1]);
    t.ints("half", &[2, 2]);
    t.ints("q_shape", &[0, 0, 2, hd as i64]);
    t.ints("kv_shape", &[0, 0, 1, hd as i64]);
    t.ints("o_shape", &[0, 0, d as i64]);
    t.tensor("inv_freq", &[2], &[1.0, 0.01]);
    t.tensor("neg_big", &[], &[-1e9]);
    t.tensor("zero", &[], &[0.0]);
    t.tensor("scale", &[], &[0.5]);
    t.op("%shape = onnx.Shape(%input_ids) : ?");
    t.op("%seq = onnx.Slice(%shape, %c1, %c2) : ?");
    t.op("%seq_s = onnx.Squeeze(%seq, %c0) : ?");
    t.op("%pos = onnx.Range(%s0, %seq_s, %s1) : ?");
    t.op("%pos_f = onnx.Cast(%pos) {to = 1} : ?");
    t.op("%pos_col = onnx.Unsqueeze(%pos_f, %c1) : ?");
    t.op("%freqs = onnx.Mul(%pos_col, %inv_freq) : ?");
    t.op("%freqs2 = onnx.Concat(%freqs, %freqs) {axis = -1} : ?");
    t.op("%cos = onnx.Cos(%freqs2) : ?");
    t.op("%sin = onnx.Sin(%freqs2) : ?");
    t.op("%row = onnx.Unsqueeze(%pos, %c1) : ?");
    t.op("%col = onnx.Unsqueeze(%pos, %c0) : ?");
    t.op("%future = onnx.Greater(%col, %row) : ?");
    t.op("%mask = onnx.Where(%future, %neg_big, %zero) : ?");
    t.op("%h0 = onnx.Gather(%E, %input_ids) {axis = 0} : ?");
    let gain = |t: &mut Text, name: &str| {
        if unit_gains {
            t.tensor(name, &[d], &[1.0; 8]);
        } else {
            t.weight(name, &[d], 0.5, 1.0);
        }
    };
    let norm = |t: &mut Text, x: &str, out: &str, g: &str| match style {
        NormStyle::Decomposed => {
            t.op(&format!("%{out}_sq = onnx.Mul(%{x}, %{x}) : ?"));
            t.op(&format!(
                "%{out}_mean = onnx.ReduceMean(%{out}_sq) {{axes = [-1], keepdims = 1}} : ?"
            ));
            t.op(&format!("%{out}_eps = onnx.Add(%{out}_mean, %eps) : ?"));
            t.op(&format!("%{out}_rms = onnx.Sqrt(%{out}_eps) : ?"));
            t.op(&format!("%{out}_n = onnx.Div(%{x}, %{out}_rms) : ?"));
            t.op(&format!("%{out} = onnx.Mul(%{out}_n, %{g}) : ?"));
        }
        NormStyle::Op => t.op(&format!(
            "%{out} = onnx.RMSNormalization(%{x}, %{g}) {{axis = -1, epsilon = 1e-5}} : ?"
        )),
    };
    let rope = |t: &mut Text, x: &str, out: &str| {
        t.op(&format!(
            "%{out}_a, %{out}_b = onnx.Split(%{x}, %half) {{axis = -1}} : ?, ?"
        ));
        t.op(&format!("%{out}_nb = onnx.Neg(%{out}_b) : ?"));
        t.op(&format!(
            "%{out}_rot = onnx.Concat(%{out}_nb, %{out}_a) {{axis = -1}} : ?"
        ));
        t.op(&format!("%{out}_xc = onnx.Mul(%{x}, %cos) : ?"));
        t.op(&format!("%{out}_rs = onnx.Mul(%{out}_rot, %sin) : ?"));
        t.op(&format!("%{out} = onnx.Add(%{out}_xc, %{out}_rs) : ?"));
    };
    let mut x = "h0".to_string();
    for l in 0..2 {
        let p = format!("l{l}");
        gain(&mut t, &format!("{p}_g1"));
        gain(&mut t, &format!("{p}_g2"));
        for (w, dims) in [
            ("wq", [d, d]),
            ("wk", [d, hd]),
            ("wv", [d, hd]),
            ("wo", [d, d]),
            ("wg", [d, ffn]),
            ("wu", [d, ffn]),
            ("wd", [ffn, d]),
        ] {
            t.weight(&format!("{p}_{w}"), &dims, 0.5, 0.0);
        }
        norm(&mut t, &x, &format!("{p}_n1"), &format!("{p}_g1"));
        for (w, shape) in [("q", "q_shape"), ("k", "kv_shape"), ("v", "kv_shape")] {
            t.op(&format!("%{p}_{w} = onnx.MatMul(%{p}_n1, %{p}_w{w}) : ?"));
            t.op(&format!("%{p}_{w}r = onnx.Reshape(%{p}_{w}, %{shape}) : ?"));
            t.op(&format!(
                "%{p}_{w}t = onnx.Transpose(%{p}_{w}r) {{perm = [0, 2, 1, 3]}} : ?"
            ));
        }
        rope(&mut t, &format!("{p}_qt"), &format!("{p}_qrope"));
        rope(&mut t, &format!("{p}_kt"), &format!("{p}_krope"));
        t.op(&format!(
            "%{p}_kT = onnx.Transpose(%{p}_krope) {{perm = [0, 1, 3, 2]}} : ?"
        ));
        t.op(&format!("%{p}_qk = onnx.MatMul(%{p}_qrope, %{p}_kT) : ?"));
        t.op(&format!("%{p}_sc = onnx.Mul(%{p}_qk, %scale) : ?"));
        t.op(&format!("%{p}_masked = onnx.Add(%{p}_sc, %mask) : ?"));
        t.op(&format!(
            "%{p}_p = onnx.Softmax(%{p}_masked) {{axis = -1}} : ?"
        ));
        t.op(&format!("%{p}_pv = onnx.MatMul(%{p}_p, %{p}_vt) : ?"));
        t.op(&format!(
            "%{p}_ot = onnx.Transpose(%{p}_pv) {{perm = [0, 2, 1, 3]}} : ?"
        ));
        t.op(&format!("%{p}_or = onnx.Reshape(%{p}_ot, %o_shape) : ?"));
        t.op(&format!("%{p}_o = onnx.MatMul(%{p}_or, %{p}_wo) : ?"));
        t.op(&format!("%{p}_r1 = onnx.Add(%{x}, %{p}_o) : ?"));
        norm(
            &mut t,
            &format!("{p}_r1"),
            &format!("{p}_n2"),
            &format!("{p}_g2"),
        );
        t.op(&format!("%{p}_gate = onnx.MatMul(%{p}_n2, %{p}_wg) : ?"));
        t.op(&format!("%{p}_up = onnx.MatMul(%{p}_n2, %{p}_wu) : ?"));
        t.op(&format!("%{p}_sig = onnx.Sigmoid(%{p}_gate) : ?"));
        t.op(&format!("%{p}_silu = onnx.Mul(%{p}_gate, %{p}_sig) : ?"));
        t.op(&format!("%{p}_gu = onnx.Mul(%{p}_silu, %{p}_up) : ?"));
        t.op(&format!("%{p}_down = onnx.MatMul(%{p}_gu, %{p}_wd) : ?"));
        t.op(&format!("%{p}_r2 = onnx.Add(%{p}_r1, %{p}_down) : ?"));
        x = format!("{p}_r2");
    }
    gain(&mut t, "gf");
    norm(&mut t, &x, "nf", "gf");
    t.op("%ET = onnx.Transpose(%E) {perm = [1, 0]} : ?");
    t.op("%logits_raw = onnx.MatMul(%nf, %ET) : ?");
    let opset = if style == NormStyle::Op { 23 } else { 17 };
    t.finish(
        &format!("module {{ir_version = 8, opset_import = [\"\" = {opset}]}}"),
        "tiny_llama",
        VOCAB,
    )
}

/// How the GPT-2-like model spells its LayerNorms.
#[derive(Clone, Copy, PartialEq, Debug)]
enum LnStyle {
    /// `LayerNormalization` ops.
    Op,
    /// `ReduceMean → Sub → Pow → ReduceMean → Add → Sqrt → Div → Mul(γ) → Add(β)`.
    Decomposed,
}

/// A GPT-2-like pre-LN decoder: token and position embeddings, LayerNorms with random γ and β,
/// 2 blocks of 2-head attention (biases on q, v and o; none on k, so `fold-norms` must add one)
/// and a GELU (Erf) MLP with biases, a final LayerNorm and a head tied to the token embedding.
fn gpt2(seed: u64, style: LnStyle, opset: u32) -> String {
    let (d, hd, ffn) = (8usize, 4usize, 16usize);
    let mut t = Text::new(seed);
    t.weight("E", &[VOCAB, d], 1.0, 0.0);
    t.weight("P", &[SEQ, d], 0.5, 0.3);
    t.tensor("eps", &[], &[1e-5]);
    t.tensor("two", &[], &[2.0]);
    t.tensor("half", &[], &[0.5]);
    t.tensor("one", &[], &[1.0]);
    t.tensor("rsqrt2", &[], &[std::f64::consts::FRAC_1_SQRT_2]);
    t.tensor("scale", &[], &[0.5]);
    t.tensor("neg_big", &[], &[-1e9]);
    t.tensor("zero", &[], &[0.0]);
    t.ints("c0", &[0]);
    t.ints("c1", &[1]);
    t.ints("c2", &[2]);
    t.ints("s0", &[0]);
    t.ints("s1", &[1]);
    t.ints("h_shape", &[0, 0, 2, hd as i64]);
    t.ints("o_shape", &[0, 0, d as i64]);
    let axes = opset >= 18;
    if axes {
        t.ints("axes", &[-1]);
    }
    t.op("%shape = onnx.Shape(%input_ids) : ?");
    t.op("%seq = onnx.Slice(%shape, %c1, %c2) : ?");
    t.op("%seq_s = onnx.Squeeze(%seq, %c0) : ?");
    t.op("%pos = onnx.Range(%s0, %seq_s, %s1) : ?");
    t.op("%row = onnx.Unsqueeze(%pos, %c1) : ?");
    t.op("%col = onnx.Unsqueeze(%pos, %c0) : ?");
    t.op("%future = onnx.Greater(%col, %row) : ?");
    t.op("%mask = onnx.Where(%future, %neg_big, %zero) : ?");
    t.op("%tok = onnx.Gather(%E, %input_ids) {axis = 0} : ?");
    t.op("%posemb = onnx.Gather(%P, %pos) {axis = 0} : ?");
    t.op("%h0 = onnx.Add(%tok, %posemb) : ?");
    let ln = |t: &mut Text, x: &str, out: &str| {
        t.weight(&format!("{out}_g"), &[d], 0.5, 1.0);
        t.weight(&format!("{out}_b"), &[d], 0.3, 0.0);
        match style {
            LnStyle::Op => t.op(&format!(
                "%{out} = onnx.LayerNormalization(%{x}, %{out}_g, %{out}_b) {{axis = -1, epsilon = 1e-5}} : ?"
            )),
            LnStyle::Decomposed => {
                let rm = |inp: &str| {
                    if axes {
                        format!("onnx.ReduceMean(%{inp}, %axes) {{keepdims = 1}}")
                    } else {
                        format!("onnx.ReduceMean(%{inp}) {{axes = [-1], keepdims = 1}}")
                    }
                };
                t.op(&format!("%{out}_mu = {} : ?", rm(x)));
                t.op(&format!("%{out}_c = onnx.Sub(%{x}, %{out}_mu) : ?"));
                t.op(&format!("%{out}_sq = onnx.Pow(%{out}_c, %two) : ?"));
                t.op(&format!("%{out}_var = {} : ?", rm(&format!("{out}_sq"))));
                t.op(&format!("%{out}_ve = onnx.Add(%{out}_var, %eps) : ?"));
                t.op(&format!("%{out}_sd = onnx.Sqrt(%{out}_ve) : ?"));
                t.op(&format!("%{out}_n = onnx.Div(%{out}_c, %{out}_sd) : ?"));
                t.op(&format!("%{out}_s = onnx.Mul(%{out}_n, %{out}_g) : ?"));
                t.op(&format!("%{out} = onnx.Add(%{out}_s, %{out}_b) : ?"));
            }
        }
    };
    let lin = |t: &mut Text, x: &str, out: &str, i: usize, o: usize, bias: bool| {
        t.weight(&format!("{out}_w"), &[i, o], 0.5, 0.0);
        if bias {
            t.weight(&format!("{out}_bias"), &[o], 0.2, 0.0);
            t.op(&format!("%{out}_mm = onnx.MatMul(%{x}, %{out}_w) : ?"));
            t.op(&format!("%{out} = onnx.Add(%{out}_mm, %{out}_bias) : ?"));
        } else {
            t.op(&format!("%{out} = onnx.MatMul(%{x}, %{out}_w) : ?"));
        }
    };
    let mut x = "h0".to_string();
    for l in 0..2 {
        let p = format!("l{l}");
        ln(&mut t, &x, &format!("{p}_n1"));
        let n1 = format!("{p}_n1");
        for (w, bias) in [("q", true), ("k", false), ("v", true)] {
            lin(&mut t, &n1, &format!("{p}_{w}"), d, d, bias);
            t.op(&format!("%{p}_{w}r = onnx.Reshape(%{p}_{w}, %h_shape) : ?"));
            t.op(&format!(
                "%{p}_{w}t = onnx.Transpose(%{p}_{w}r) {{perm = [0, 2, 1, 3]}} : ?"
            ));
        }
        t.op(&format!(
            "%{p}_kT = onnx.Transpose(%{p}_kt) {{perm = [0, 1, 3, 2]}} : ?"
        ));
        t.op(&format!("%{p}_qk = onnx.MatMul(%{p}_qt, %{p}_kT) : ?"));
        t.op(&format!("%{p}_sc = onnx.Mul(%{p}_qk, %scale) : ?"));
        t.op(&format!("%{p}_masked = onnx.Add(%{p}_sc, %mask) : ?"));
        t.op(&format!(
            "%{p}_p = onnx.Softmax(%{p}_masked) {{axis = -1}} : ?"
        ));
        t.op(&format!("%{p}_pv = onnx.MatMul(%{p}_p, %{p}_vt) : ?"));
        t.op(&format!(
            "%{p}_ot = onnx.Transpose(%{p}_pv) {{perm = [0, 2, 1, 3]}} : ?"
        ));
        t.op(&format!("%{p}_or = onnx.Reshape(%{p}_ot, %o_shape) : ?"));
        lin(&mut t, &format!("{p}_or"), &format!("{p}_o"), d, d, true);
        t.op(&format!("%{p}_r1 = onnx.Add(%{x}, %{p}_o) : ?"));
        ln(&mut t, &format!("{p}_r1"), &format!("{p}_n2"));
        lin(&mut t, &format!("{p}_n2"), &format!("{p}_up"), d, ffn, true);
        t.op(&format!("%{p}_xs = onnx.Mul(%{p}_up, %rsqrt2) : ?"));
        t.op(&format!("%{p}_erf = onnx.Erf(%{p}_xs) : ?"));
        t.op(&format!("%{p}_e1 = onnx.Add(%{p}_erf, %one) : ?"));
        t.op(&format!("%{p}_xh = onnx.Mul(%{p}_up, %half) : ?"));
        t.op(&format!("%{p}_gelu = onnx.Mul(%{p}_xh, %{p}_e1) : ?"));
        lin(
            &mut t,
            &format!("{p}_gelu"),
            &format!("{p}_down"),
            ffn,
            d,
            true,
        );
        t.op(&format!("%{p}_r2 = onnx.Add(%{p}_r1, %{p}_down) : ?"));
        x = format!("{p}_r2");
    }
    ln(&mut t, &x, "nf");
    t.op("%ET = onnx.Transpose(%E) {perm = [1, 0]} : ?");
    t.op("%logits_raw = onnx.MatMul(%nf, %ET) : ?");
    t.finish(
        &format!("module {{ir_version = 8, opset_import = [\"\" = {opset}]}}"),
        "tiny_gpt2",
        VOCAB,
    )
}

/// A BERT-like post-LN encoder: LayerNorm on the embedding and after each residual add,
/// one single-head attention block with biases and a GELU (Erf) MLP, untied head with a bias.
fn bert(seed: u64) -> String {
    let (d, ffn) = (8usize, 16usize);
    let mut t = Text::new(seed);
    t.weight("E", &[VOCAB, d], 1.0, 0.0);
    t.tensor("half", &[], &[0.5]);
    t.tensor("one", &[], &[1.0]);
    t.tensor("rsqrt2", &[], &[std::f64::consts::FRAC_1_SQRT_2]);
    t.tensor("scale", &[], &[0.35]);
    let ln = |t: &mut Text, x: &str, out: &str| {
        t.weight(&format!("{out}_g"), &[d], 0.5, 1.0);
        t.weight(&format!("{out}_b"), &[d], 0.2, 0.0);
        t.op(&format!("%{out} = onnx.LayerNormalization(%{x}, %{out}_g, %{out}_b) {{axis = -1, epsilon = 1e-5}} : ?"));
    };
    let lin = |t: &mut Text, x: &str, out: &str, i: usize, o: usize| {
        t.weight(&format!("{out}_w"), &[i, o], 0.5, 0.0);
        t.weight(&format!("{out}_bias"), &[o], 0.2, 0.0);
        t.op(&format!("%{out}_mm = onnx.MatMul(%{x}, %{out}_w) : ?"));
        t.op(&format!("%{out} = onnx.Add(%{out}_mm, %{out}_bias) : ?"));
    };
    t.op("%emb = onnx.Gather(%E, %input_ids) {axis = 0} : ?");
    ln(&mut t, "emb", "h0");
    lin(&mut t, "h0", "q", d, d);
    lin(&mut t, "h0", "k", d, d);
    lin(&mut t, "h0", "v", d, d);
    t.op("%kT = onnx.Transpose(%k) {perm = [0, 2, 1]} : ?");
    t.op("%qk = onnx.MatMul(%q, %kT) : ?");
    t.op("%sc = onnx.Mul(%qk, %scale) : ?");
    t.op("%p = onnx.Softmax(%sc) {axis = -1} : ?");
    t.op("%pv = onnx.MatMul(%p, %v) : ?");
    lin(&mut t, "pv", "o", d, d);
    t.op("%r1 = onnx.Add(%h0, %o) : ?");
    ln(&mut t, "r1", "h1");
    lin(&mut t, "h1", "up", d, ffn);
    t.op("%up_s = onnx.Mul(%up, %rsqrt2) : ?");
    t.op("%up_e = onnx.Erf(%up_s) : ?");
    t.op("%up_1 = onnx.Add(%up_e, %one) : ?");
    t.op("%up_x = onnx.Mul(%up, %up_1) : ?");
    t.op("%gelu = onnx.Mul(%up_x, %half) : ?");
    lin(&mut t, "gelu", "down", ffn, d);
    t.op("%r2 = onnx.Add(%h1, %down) : ?");
    ln(&mut t, "r2", "h2");
    lin(&mut t, "h2", "logits_raw", d, VOCAB);
    t.finish(
        "module {ir_version = 8, opset_import = [\"\" = 17]}",
        "tiny_bert",
        VOCAB,
    )
}

fn tokens(dir: &Path) -> String {
    let mut rng = Rng(99);
    let bytes: Vec<u8> = (0..4 * SEQ)
        .flat_map(|_| ((rng.next() * VOCAB as f64) as u16).to_le_bytes())
        .collect();
    let p = dir.join("tokens.bin");
    std::fs::write(&p, bytes).expect("write tokens");
    p.to_string_lossy().into_owned()
}

/// Exports `text` as is and through `pipeline`; returns onnxruntime's max |Δ output|.
fn max_diff(dir: &Path, text: &str, pipeline: &str) -> f64 {
    let src = dir.join("model.oir");
    std::fs::write(&src, text).expect("write model");
    let (a, b) = (dir.join("a.onnx"), dir.join("b.onnx"));
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let r = run(&[&s(&src), "-o", &s(&a)]);
    assert_eq!(r.code, 0, "export: {}", r.stderr);
    let pp = format!("--pass-pipeline={pipeline}");
    let r = run(&[&s(&src), "-o", &s(&b), &pp]);
    assert_eq!(r.code, 0, "{pipeline}: {}", r.stderr);
    let out = python_tool(
        "ort_logits.py",
        &[
            &s(&a),
            &s(&b),
            &tokens(dir),
            "--seqlen",
            &SEQ.to_string(),
            "--windows",
            "4",
        ],
    );
    let key = "\"max_abs_diff\": ";
    let at = out
        .find(key)
        .map(|i| i + key.len())
        .expect("max_abs_diff in the report");
    let num: String = out[at..]
        .chars()
        .take_while(|c| !matches!(c, ',' | '}'))
        .collect();
    num.trim().parse().unwrap_or(f64::INFINITY)
}

/// Runs `pipeline` and expects a refusal that writes nothing and names `expect` in stderr.
fn refused(dir: &Path, text: &str, pipeline: &str, expect: &[&str]) {
    let src = dir.join("model.oir");
    std::fs::write(&src, text).expect("write model");
    let out = dir.join("refused.onnx");
    let pp = format!("--pass-pipeline={pipeline}");
    let r = run(&[&src.to_string_lossy(), "-o", &out.to_string_lossy(), &pp]);
    assert_eq!(r.code, 1, "{pipeline} must be refused: {}", r.stderr);
    assert!(!out.exists(), "a refused pipeline writes nothing");
    for e in expect {
        assert!(
            r.stderr.contains(e),
            "{pipeline}: stderr lacks '{e}': {}",
            r.stderr
        );
    }
}

/// Runs `pipeline` on `text`, expects success and every line of `expect` on stderr.
fn admitted(dir: &Path, text: &str, pipeline: &str, expect: &[String]) {
    let src = dir.join("model.oir");
    std::fs::write(&src, text).expect("write model");
    let out = dir.join("admitted.oir");
    let pp = format!("--pass-pipeline={pipeline}");
    let r = run(&[&src.to_string_lossy(), "-o", &out.to_string_lossy(), &pp]);
    assert_eq!(r.code, 0, "{pipeline}: {}", r.stderr);
    assert!(out.exists(), "{pipeline} wrote nothing");
    for line in expect {
        assert!(
            r.stderr.contains(line),
            "{pipeline}: missing '{line}': {}",
            r.stderr
        );
    }
}

#[test]
fn admitted_rotations_preserve_outputs() {
    let tmp = TempDir::new("gauge-prop");
    for seed in 1..=3u64 {
        for style in [NormStyle::Decomposed, NormStyle::Op] {
            let text = llama(seed, style, false);
            for kind in ["haar", "hadamard", "signed-permutation", "permutation"] {
                let p = format!("fold-norms,rotate-residual{{kind={kind} seed={seed}}}");
                let d = max_diff(tmp.path(), &text, &p);
                assert!(d < 1e-4, "seed {seed}, {p}: max |Δ| = {d}");
            }
            // Per-KV-head rotations of the V/O path (2 query heads share 1 KV head), alone and
            // after a residual rotation.
            for p in [
                format!("rotate-heads{{kind=haar seed={seed}}}"),
                format!("fold-norms,rotate-residual{{kind=haar seed={seed}}},rotate-heads{{kind=hadamard seed={seed}}}"),
            ] {
                let d = max_diff(tmp.path(), &text, &p);
                assert!(d < 1e-4, "seed {seed}, {p}: max |Δ| = {d}");
            }
            // Signed permutations are admitted even with the gains in place (they are permuted).
            let p = format!("rotate-residual{{kind=signed-permutation seed={seed}}}");
            let d = max_diff(tmp.path(), &text, &p);
            assert!(d < 1e-5, "seed {seed}, {p}: max |Δ| = {d}");
        }
        // Unit gains: a rotation is admitted without folding.
        let d = max_diff(
            tmp.path(),
            &llama(seed, NormStyle::Decomposed, true),
            &format!("rotate-residual{{kind=haar seed={seed}}}"),
        );
        assert!(d < 1e-4, "unit gains, seed {seed}: max |Δ| = {d}");
    }
}

/// The harness itself detects a change: a rotation applied to the stream but not folded into
/// the head (here: two models whose heads differ) gives a large difference.
#[test]
fn harness_detects_a_broken_model() {
    let tmp = TempDir::new("gauge-control");
    let a = llama(1, NormStyle::Decomposed, false);
    // Change one element of the first query projection: the outputs must change measurably,
    // so the tolerances above do test something.
    let at = a.find("%l0_wq = const").expect("wq");
    let start = at + a[at..].find('[').expect("data") + 1;
    let end = start + a[start..].find(',').expect("first element");
    let first: f64 = a[start..end].trim().parse().expect("number");
    let b = format!("{}{:?}{}", &a[..start], (3.0 - first) as f32, &a[end..]);
    let src = tmp.path().join("b.oir");
    std::fs::write(&src, &b).expect("write");
    let (pa, pb) = (tmp.path().join("pa.onnx"), tmp.path().join("pb.onnx"));
    std::fs::write(tmp.path().join("model.oir"), &a).expect("write");
    assert_eq!(
        run(&[
            &tmp.path().join("model.oir").to_string_lossy(),
            "-o",
            &pa.to_string_lossy()
        ])
        .code,
        0
    );
    assert_eq!(
        run(&[&src.to_string_lossy(), "-o", &pb.to_string_lossy()]).code,
        0
    );
    let out = python_tool(
        "ort_logits.py",
        &[
            &pa.to_string_lossy(),
            &pb.to_string_lossy(),
            &tokens(tmp.path()),
            "--seqlen",
            "8",
            "--windows",
            "4",
        ],
    );
    let key = "\"max_abs_diff\": ";
    let at = out.find(key).map(|i| i + key.len()).expect("max_abs_diff");
    let d: f64 = out[at..]
        .chars()
        .take_while(|c| !matches!(c, ',' | '}'))
        .collect::<String>()
        .trim()
        .parse()
        .unwrap_or(0.0);
    assert!(d > 1e-3, "a changed weight must show: max |Δ| = {d}");
}

#[test]
fn blocked_rotations_are_refused() {
    let tmp = TempDir::new("gauge-refuse");
    // γ ≠ 1 not folded: O(d) refused, the first norm gain named, signed permutations offered.
    refused(
        tmp.path(),
        &llama(5, NormStyle::Decomposed, false),
        "rotate-residual{kind=haar seed=1}",
        &["Mul producing '%l0_n1'", "γ ≠ 1", "kind=signed-permutation"],
    );
    refused(
        tmp.path(),
        &llama(5, NormStyle::Op, false),
        "rotate-residual{kind=hadamard}",
        &[
            "RMSNormalization producing '%l0_n1'",
            "kind=signed-permutation",
        ],
    );
    // Post-LN LayerNorm: O(d) and signed permutations refused, permutations offered.
    let b = bert(7);
    refused(
        tmp.path(),
        &b,
        "rotate-residual{kind=haar seed=1}",
        &["LayerNormalization producing '%h0'", "kind=permutation"],
    );
    refused(
        tmp.path(),
        &b,
        "fold-norms,rotate-residual{kind=signed-permutation}",
        &["LayerNorm mean subtraction"],
    );
    refused(
        tmp.path(),
        &b,
        "gauge-verify{require=orthogonal}",
        &["does not admit orthogonal"],
    );
}

#[test]
fn post_norm_encoder_accepts_a_permutation() {
    let tmp = TempDir::new("gauge-bert");
    let b = bert(7);
    for seed in [1u64, 2] {
        let d = max_diff(
            tmp.path(),
            &b,
            &format!("rotate-residual{{kind=permutation seed={seed}}}"),
        );
        assert!(d < 1e-5, "permutation seed {seed}: max |Δ| = {d}");
    }
    // fold-norms leaves post-LN norms alone (their output is the stream) and says so.
    let src = tmp.path().join("bert.oir");
    std::fs::write(&src, &b).expect("write");
    let r = run(&[
        &src.to_string_lossy(),
        "--pass-pipeline=fold-norms",
        "--statistics",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Only the last LayerNorm feeds nothing but a linear layer (the head): it is folded,
    // shift included (the head has a bias); the two on the stream are reported.
    assert!(
        r.stderr
            .lines()
            .any(|l| l.contains("fold-norms.folded") && l.trim_end().ends_with(" 1")),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.matches("not folded").count(), 2, "{}", r.stderr);
}

/// LayerNorm → RMSNorm (SliceGPT): on a pre-LN GPT-2-like model `fold-norms` centers the
/// stream, folds γ and β and replaces every LayerNorm by an RMSNorm; the verifier then admits
/// O(d), and the outputs stay equal — after the conversion alone and after a Haar or Hadamard
/// rotation — in every spelling: LayerNormalization ops at opset 17 (→ decomposed RMS chain,
/// ReduceMean axes attribute) and 18 (axes operand) and 23 (→ RMSNormalization), and the
/// decomposed LayerNorm chain.
#[test]
fn layernorm_becomes_rmsnorm_and_admits_rotations() {
    let tmp = TempDir::new("gauge-gpt2");
    let cases = [
        (LnStyle::Op, 17u32),
        (LnStyle::Op, 18),
        (LnStyle::Op, 23),
        (LnStyle::Decomposed, 17),
        (LnStyle::Decomposed, 18),
    ];
    for (i, &(style, opset)) in cases.iter().enumerate() {
        let seed = 11 + i as u64;
        let text = gpt2(seed, style, opset);
        // Before: the LayerNorm mean admits permutations only.
        refused(
            tmp.path(),
            &text,
            "rotate-residual{kind=haar seed=1}",
            &["kind=haar is not admitted", "kind=permutation"],
        );
        let src = tmp.path().join("gpt2.oir");
        std::fs::write(&src, &text).expect("write");
        let r = run(&[
            &src.to_string_lossy(),
            "--pass-pipeline=fold-norms,gauge-verify{require=orthogonal}",
            "--statistics",
        ]);
        assert_eq!(r.code, 0, "{style:?} opset {opset}: {}", r.stderr);
        let out = &r.stdout;
        assert!(
            !out.contains("LayerNormalization") && !out.contains("onnx.Sub"),
            "{style:?} opset {opset}: a LayerNorm is left:\n{out}"
        );
        if style == LnStyle::Op && opset >= 23 {
            assert_eq!(out.matches("onnx.RMSNormalization").count(), 5, "{out}");
        }
        for stat in ["fold-norms.converted", "fold-norms.biases-added"] {
            assert!(
                r.stderr.lines().any(|l| l.contains(stat)
                    && l.trim_end().ends_with(if stat.ends_with("converted") {
                        " 5"
                    } else {
                        " 3"
                    })),
                "{style:?} opset {opset}: {stat}: {}",
                r.stderr
            );
        }
        for p in [
            "fold-norms".to_string(),
            format!("fold-norms,rotate-residual{{kind=haar seed={seed}}}"),
            format!("fold-norms,rotate-residual{{kind=hadamard seed={seed}}}"),
            // The V/O path with a v bias (2 heads, 2 KV heads).
            format!("fold-norms,rotate-residual{{kind=haar seed={seed}}},rotate-heads{{kind=haar seed={seed}}}"),
        ] {
            let d = max_diff(tmp.path(), &text, &p);
            assert!(d < 1e-4, "{style:?} opset {opset}, {p}: max |Δ| = {d}");
        }
    }
}

/// Structure passes compose with the factorized linears `kron-factorize` / `lowrank-factorize`
/// leave behind: a low-rank layer takes every fold a dense one takes (its stream-side factor
/// carries the features), so norm folding, a residual rotation and per-head rotations after
/// an exact low-rank factorization keep the outputs; pruning after a Kronecker factorization
/// prunes the dense linears and leaves the factorized ones; a rotation after it is refused with
/// the factorized linear named (no single factor carries the stream's features).
#[test]
fn factorized_linears_compose_with_structure_passes() {
    let tmp = TempDir::new("gauge-factorized");
    for seed in 1..=2u64 {
        let text = llama(seed, NormStyle::Decomposed, false);
        let p = format!(
            "lowrank-factorize{{rank=full}},fold-norms,rotate-residual{{kind=haar seed={seed}}},rotate-heads{{kind=haar seed={seed}}},lower-ortho"
        );
        let d = max_diff(tmp.path(), &text, &p);
        assert!(d < 1e-4, "seed {seed}, {p}: max |Δ| = {d}");
    }
    let text = llama(3, NormStyle::Decomposed, false);
    let lines: Vec<String> = (0..2).map(|layer| format!(
        "note: prune: layer {layer}: q kept (Kronecker-factorized) k 50.0 % v 50.0 % o kept (Kronecker-factorized) gate 50.0 % up 50.0 % down 50.0 %"
    )).collect();
    admitted(
        tmp.path(),
        &text,
        "kron-factorize{rank=full shapes=2x2 linears=q+o},prune{method=magnitude}",
        &lines,
    );
    refused(
        tmp.path(),
        &text,
        "kron-factorize{rank=full shapes=2x2 linears=q},fold-norms,rotate-residual{kind=haar seed=1}",
        &["FactorizedLinear producing", "Kronecker-factorized linear meets the stream"],
    );
    refused(
        tmp.path(),
        &text,
        "kron-factorize{rank=full shapes=2x2 linears=v},rotate-heads{kind=haar seed=1}",
        &[
            "FactorizedLinear producing",
            "no per-head rotation folds into its stored form",
        ],
    );
}

/// The compact N:M linears `sparsify` leaves behind are linears to the structure analysis: a
/// later `prune` keeps them (said on each layer's line) and a rotation of the stream is refused
/// naming the sparse layer (a rotation would break the pattern), instead of the analysis losing
/// the stream at the first compact layer.
#[test]
fn sparse_linears_are_recognized() {
    let tmp = TempDir::new("gauge-sparse");
    let text = llama(4, NormStyle::Decomposed, false);
    let lines: Vec<String> = (0..2).map(|layer| format!(
        "note: prune: layer {layer}: q kept (N:M-sparse) k 50.0 % v 50.0 % o 50.0 % gate 50.0 % up kept (N:M-sparse) down 50.0 %"
    )).collect();
    admitted(
        tmp.path(),
        &text,
        "prune{method=magnitude pattern=2:4 linears=q+up},sparsify{pattern=2:4 linears=q+up},prune{method=magnitude}",
        &lines,
    );
    refused(
        tmp.path(),
        &text,
        "fold-norms,prune{method=magnitude pattern=2:4 linears=q},sparsify{pattern=2:4 linears=q},rotate-residual{kind=haar seed=1}",
        &["SparseLinear producing", "N:M-sparse linear meets the stream"],
    );
}

/// A POET-reparameterized linear (its weight computed at run time from the frozen base and the
/// trainable skew factors) is a linear to the structure analysis: the blocks are still found,
/// a later `prune` keeps it (said on each layer's line), a rotation of the stream or of the
/// heads is refused naming it, and after `poet-merge` everything composes again.
#[test]
fn reparameterized_linears_are_recognized() {
    let tmp = TempDir::new("gauge-reparam");
    let text = llama(5, NormStyle::Decomposed, false);
    let lines: Vec<String> = (0..2)
        .map(|layer| format!(
            "note: prune: layer {layer}: q kept (reparameterized) k 50.0 % v 50.0 % o 50.0 % gate 50.0 % up kept (reparameterized) down 50.0 %"
        ))
        .collect();
    admitted(
        tmp.path(),
        &text,
        "poet-reparam{block=2 seed=1 linears=q+up},prune{method=magnitude}",
        &lines,
    );
    refused(
        tmp.path(),
        &text,
        "poet-reparam{block=2 seed=1 linears=q},fold-norms,rotate-residual{kind=haar seed=1}",
        &["reparameterized linear meets the stream"],
    );
    refused(
        tmp.path(),
        &text,
        "poet-reparam{block=2 seed=1 linears=v},rotate-heads{kind=haar seed=1}",
        &["reparameterized"],
    );
    let p = "poet-reparam{block=2 seed=1},poet-merge,fold-norms,rotate-residual{kind=haar seed=2},prune{method=magnitude}";
    admitted(tmp.path(), &text, p, &[]);
}
