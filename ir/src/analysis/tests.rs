//! The structure analysis on what passes produce besides whole models: boundary linears between
//! blocks (a basis change per layer) and shards (runs of blocks without embedding or head).
//! The graphs are generated as `.oir` text: pre-norm blocks with the opset-23 `RMSNormalization`,
//! single-head decomposed attention and a SwiGLU MLP, width 4.

use super::gauge::Origin;
use super::linear::{match_linear, LinearKind};
use super::transformer::{analyze_transformer, BranchKind, Structure};
use crate::graph::{NodeId, ValueId};
use crate::module::Module;
use crate::text::parse_module;
use std::fmt::Write as _;

const D: usize = 4;

/// Text of a graph under construction: constants, then nodes.
#[derive(Default)]
struct Text {
    consts: String,
    body: String,
    seed: u64,
}

impl Text {
    /// A `D × D` constant with distinct small entries.
    fn matrix(&mut self, name: &str) {
        let vals: Vec<String> = (0..D * D)
            .map(|_| {
                self.seed = self
                    .seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let x = ((self.seed >> 33) % 97) as f64 / 100.0 - 0.48;
                format!("{x:.2}")
            })
            .collect();
        let _ = writeln!(
            self.consts,
            "  %{name} = const tensor<{D}x{D}xf32> dense<[{}]>",
            vals.join(", ")
        );
    }

    fn line(&mut self, s: &str) {
        let _ = writeln!(self.body, "  {s}");
    }

    /// Block `i` reading stream value `x`; returns its output's name.
    fn block(&mut self, i: usize, x: &str) -> String {
        let _ = writeln!(
            self.consts,
            "  %g{i}a = const tensor<{D}xf32> dense<[1.0, 1.0, 1.0, 1.0]>\n  %g{i}b = const tensor<{D}xf32> dense<[1.0, 1.0, 1.0, 1.0]>"
        );
        for w in ["q", "k", "v", "o", "g", "u", "d"] {
            self.matrix(&format!("w{w}{i}"));
        }
        for l in [
            format!(
                "%n{i}a = onnx.RMSNormalization(%{x}, %g{i}a) {{axis = -1, epsilon = 1e-5}} : ?"
            ),
            format!("%q{i} = onnx.MatMul(%n{i}a, %wq{i}) : ?"),
            format!("%k{i} = onnx.MatMul(%n{i}a, %wk{i}) : ?"),
            format!("%v{i} = onnx.MatMul(%n{i}a, %wv{i}) : ?"),
            format!("%kT{i} = onnx.Transpose(%k{i}) {{perm = [0, 2, 1]}} : ?"),
            format!("%qk{i} = onnx.MatMul(%q{i}, %kT{i}) : ?"),
            format!("%qs{i} = onnx.Mul(%qk{i}, %scale) : ?"),
            format!("%p{i} = onnx.Softmax(%qs{i}) {{axis = -1}} : ?"),
            format!("%pv{i} = onnx.MatMul(%p{i}, %v{i}) : ?"),
            format!("%o{i} = onnx.MatMul(%pv{i}, %wo{i}) : ?"),
            format!("%r{i}a = onnx.Add(%{x}, %o{i}) : ?"),
            format!(
                "%n{i}b = onnx.RMSNormalization(%r{i}a, %g{i}b) {{axis = -1, epsilon = 1e-5}} : ?"
            ),
            format!("%gate{i} = onnx.MatMul(%n{i}b, %wg{i}) : ?"),
            format!("%up{i} = onnx.MatMul(%n{i}b, %wu{i}) : ?"),
            format!("%sig{i} = onnx.Sigmoid(%gate{i}) : ?"),
            format!("%silu{i} = onnx.Mul(%gate{i}, %sig{i}) : ?"),
            format!("%gu{i} = onnx.Mul(%silu{i}, %up{i}) : ?"),
            format!("%down{i} = onnx.MatMul(%gu{i}, %wd{i}) : ?"),
            format!("%r{i}b = onnx.Add(%r{i}a, %down{i}) : ?"),
        ] {
            self.line(&l);
        }
        format!("r{i}b")
    }

    /// A boundary `x B` on the stream; returns its result's name.
    fn boundary(&mut self, i: usize, x: &str) -> String {
        self.matrix(&format!("B{i}"));
        self.line(&format!("%x{i} = onnx.MatMul(%{x}, %B{i}) : ?"));
        format!("x{i}")
    }

    /// A final norm and an untied head on `x`.
    fn head(&mut self, x: &str) {
        self.consts += "  %gf = const tensor<4xf32> dense<[1.0, 1.0, 1.0, 1.0]>\n";
        self.consts += "  %wh = const tensor<4x6xf32> dense<[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0, 2.1, 2.2, 2.3, 2.4]>\n";
        self.line(&format!(
            "%nf = onnx.RMSNormalization(%{x}, %gf) {{axis = -1, epsilon = 1e-5}} : ?"
        ));
        self.line("%logits = onnx.MatMul(%nf, %wh) : ?");
    }
}

/// A decoder of `blocks` blocks, with a boundary before every block listed in `boundaries`;
/// `embedding` / `head` choose whether the graph has those ends (else it is a shard whose input
/// and output are the stream).
fn model(blocks: usize, boundaries: &[usize], embedding: bool, head: bool) -> Module {
    let mut t = Text {
        seed: 7,
        ..Text::default()
    };
    t.consts += "  %scale = const tensor<f32> dense<[0.5]>\n";
    let input = if embedding {
        t.consts += "  %E = const tensor<6x4xf32> dense<[-0.10, 0.12, 0.85, -0.07, 0.02, 0.17, -0.63, 0.02, 0.26, 0.59, -0.81, -0.39, -0.82, 0.62, 0.39, -0.92, 0.96, 0.93, 0.31, 0.23, -0.69, -0.97, 0.06, -0.88]>\n";
        t.line("%h = onnx.Gather(%E, %ids) {axis = 0} : ?");
        "%ids: tensor<\"b\"x\"s\"xi64>".to_string()
    } else {
        format!("%h: tensor<\"b\"x\"s\"x{D}xf32>")
    };
    let mut x = "h".to_string();
    for i in 0..blocks {
        if boundaries.contains(&i) {
            x = t.boundary(i, &x);
        }
        x = t.block(i, &x);
    }
    let out = if head {
        t.head(&x);
        "logits".to_string()
    } else {
        x
    };
    let src = format!(
        "module {{ir_version = 10, opset_import = [\"\" = 23]}}\ngraph @g({input}) -> (%{out}) {{\n{}{}}}\n",
        t.consts, t.body
    );
    parse_module(&src).unwrap_or_else(|e| panic!("parse error {e} in\n{src}"))
}

fn node_named(m: &Module, name: &str) -> NodeId {
    let g = m.main_graph();
    g.node_ids()
        .into_iter()
        .find(|&n| g.value_name(ValueId { node: n, output: 0 }) == name)
        .unwrap_or_else(|| panic!("no %{name}"))
}

/// Every block has attention and an MLP, and nothing is left unplaced.
fn assert_blocks(m: &Module, s: &Structure, blocks: usize) {
    let g = m.main_graph();
    let unmatched: Vec<String> = s
        .unmatched
        .iter()
        .map(|u| format!("{}: {}", g.describe(u.node), u.why))
        .collect();
    assert!(unmatched.is_empty(), "{unmatched:#?}");
    assert_eq!(s.blocks.len(), blocks, "{:?}", s.blocks);
    for b in &s.blocks {
        let att = b.attention.map(|i| &s.branches[i].kind);
        let mlp = b.mlp.map(|i| &s.branches[i].kind);
        assert!(matches!(att, Some(BranchKind::Attention(_))), "{b:?}");
        assert!(matches!(mlp, Some(BranchKind::Mlp(_))), "{b:?}");
    }
}

#[test]
fn a_whole_model_has_both_ends_and_no_boundaries() {
    let m = model(2, &[], true, true);
    let s = analyze_transformer(&m, m.main);
    assert_blocks(&m, &s, 2);
    assert!(s.ends.embedding && s.ends.head, "{:?}", s.ends);
    assert!(s.ends.stream_inputs.is_empty() && s.ends.stream_outputs.is_empty());
    assert!(s.boundaries.is_empty());
    assert!(s.blocks.iter().all(|b| b.entry.is_none()));
    assert_eq!(s.gauge.classes.len(), 1);
    assert_eq!(s.gauge.chain(), vec![0]);
}

#[test]
fn boundaries_between_blocks_begin_new_segments_and_blocks() {
    let m = model(3, &[1, 2], true, true);
    let s = analyze_transformer(&m, m.main);
    assert_blocks(&m, &s, 3);
    let (x1, x2) = (node_named(&m, "x1"), node_named(&m, "x2"));
    let entries: Vec<Option<NodeId>> = s.blocks.iter().map(|b| b.entry.map(|l| l.node)).collect();
    assert_eq!(entries, vec![None, Some(x1), Some(x2)]);
    assert_eq!(
        s.boundaries.iter().map(|l| l.node).collect::<Vec<_>>(),
        vec![x1, x2]
    );
    // The head is the LM head, not a boundary.
    assert_eq!(s.heads.len(), 1);
    assert_eq!(s.heads[0].linear.node, node_named(&m, "logits"));
    assert!(s.ends.embedding && s.ends.head);
    // Three segments in stream order; each boundary reads the one before it and writes the
    // next one: the two sides have different bases.
    let chain = s.gauge.chain();
    assert_eq!(chain.len(), 3);
    let seg = |k: usize| &s.gauge.classes[chain[k]];
    assert_eq!(seg(0).origin, Origin::Embedding);
    assert_eq!(seg(0).exits, vec![x1]);
    assert_eq!(
        (seg(1).origin, seg(1).entries.clone()),
        (Origin::Boundary, vec![x1])
    );
    assert_eq!(
        (seg(2).origin, seg(2).entries.clone()),
        (Origin::Boundary, vec![x2])
    );
    use super::gauge::SiteRole::{Reader, Writer};
    let role_at = |k: usize, n: NodeId| {
        seg(k)
            .sites
            .iter()
            .filter(|x| x.consumer == n)
            .map(|x| x.role)
            .collect::<Vec<_>>()
    };
    assert_eq!(role_at(0, x1), vec![Reader]);
    assert_eq!(role_at(1, x1), vec![Writer]);
    assert_eq!(role_at(1, x2), vec![Reader]);
    assert_eq!(role_at(2, x2), vec![Writer]);
    assert!(role_at(0, x2).is_empty() && role_at(2, x1).is_empty());
    // Each segment is a residual stream of its own, admitting O(d) (unit gains).
    assert!(chain.iter().all(|&i| s.gauge.classes[i]
        .admits
        .contains(super::group::Group::ORTHOGONAL)));
}

#[test]
fn a_shard_without_embedding_or_head_is_a_run_of_blocks() {
    let m = model(2, &[], false, false);
    let s = analyze_transformer(&m, m.main);
    assert_blocks(&m, &s, 2);
    let (h, out) = (node_named(&m, "h"), node_named(&m, "r1b"));
    assert!(!s.ends.embedding && !s.ends.head, "{:?}", s.ends);
    assert_eq!(s.ends.stream_inputs, vec![ValueId { node: h, output: 0 }]);
    assert_eq!(
        s.ends.stream_outputs,
        vec![ValueId {
            node: out,
            output: 0
        }]
    );
    assert!(s.embeddings.is_empty() && s.heads.is_empty() && s.final_norm.is_none());
    assert_eq!(s.width, Some(D as i64));
    // The stream is the shard's interface: no transform may change its basis.
    let main = &s.gauge.classes[s.gauge.chain()[0]];
    assert_eq!(main.origin, Origin::Input);
    assert_eq!(main.admits, super::group::Group::NONE);
}

#[test]
fn shards_with_one_end_and_boundaries() {
    // The first shard of a model (embedding, no head), with a boundary inside.
    let m = model(2, &[1], true, false);
    let s = analyze_transformer(&m, m.main);
    assert_blocks(&m, &s, 2);
    assert!(s.ends.embedding && !s.ends.head);
    assert_eq!(
        s.blocks[1].entry.map(|l| l.node),
        Some(node_named(&m, "x1"))
    );
    // The last shard (head, no embedding), starting at a boundary on its input.
    let m = model(2, &[0, 1], false, true);
    let s = analyze_transformer(&m, m.main);
    assert_blocks(&m, &s, 2);
    assert!(!s.ends.embedding && s.ends.head);
    assert_eq!(s.boundaries.len(), 2);
    assert_eq!(
        s.blocks[0].entry.map(|l| l.node),
        Some(node_named(&m, "x0"))
    );
}

#[test]
fn a_float_input_that_nothing_writes_to_is_no_stream() {
    // One linear on a float input: no branch writes into it, so it is no residual stream.
    let src = "module {ir_version = 10, opset_import = [\"\" = 17]}\ngraph @g(%x: tensor<\"b\"x4xf32>) -> (%y) {\n  %w = const tensor<4x4xf32> dense<[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]>\n  %y = onnx.MatMul(%x, %w) : ?\n}\n";
    let m = parse_module(src).unwrap_or_else(|e| panic!("{e}"));
    let s = analyze_transformer(&m, m.main);
    assert!(s.gauge.classes.is_empty());
    assert!(s.width.is_none());
    assert_eq!(s.unmatched.len(), 1);
    // As a typed diagnostic: kind, graph and node, printed with the reason.
    let d = s.diagnostics(&m);
    assert_eq!(d.0.len(), 1);
    assert_eq!(d.0[0].kind, crate::diag::DiagKind::Structure);
    assert_eq!(d.0[0].graph_id, Some(m.main));
    assert_eq!(d.0[0].node_id, Some(node_named(&m, "y")));
    assert!(d.0[0]
        .to_string()
        .starts_with("graph @g: MatMul producing '%y': no embedding"));
}

#[test]
fn linears_are_dense_today() {
    let m = model(1, &[], true, true);
    let g = m.main_graph();
    let l = match_linear(&m, g, node_named(&m, "q0")).unwrap_or_else(|| panic!("no linear"));
    assert_eq!(l.kind, LinearKind::Dense);
    assert_eq!(l.dense(), Some(&l.weight));
    assert!(match_linear(&m, g, node_named(&m, "qk0")).is_none());
}
