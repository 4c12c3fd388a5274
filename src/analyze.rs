//! `ortho-opt analyze MODEL [--json]`: the transformer structure and the basis (gauge) analysis
//! of a model, as a readable summary or as one JSON object. Nothing is written.

use crate::input::{for_each_case, read_module};
use crate::{CliError, DriverOutput};
use ortho_ir::analysis::transformer::{Block, Branch, BranchKind, Placement, Structure};
use ortho_ir::analysis::{
    analyze_transformer, head_spaces, Attention, Linear, Mlp, Norm, StreamClass,
};
use ortho_ir::{Graph, Module, NodeId, ValueId};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Find the transformer structure (residual stream, blocks, norms, attention, MLP, embedding
/// and head) and the transforms each residual-stream tensor admits.
#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// Model: .onnx or .oir.
    input: PathBuf,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
    /// Treat the .oir input as several modules separated by `// -----`, each analyzed on its own.
    #[arg(long = "split-input-file")]
    split_input_file: bool,
}

pub fn run(a: AnalyzeArgs) -> DriverOutput {
    let shown = a.input.display().to_string();
    if a.split_input_file {
        return for_each_case(&a.input, |case| {
            let failed = |e: &dyn std::fmt::Display| {
                let text = format!("// error: {shown}: case {}: {e}\n", case.index + 1);
                (text, true)
            };
            let m = match ortho_ir::text::parse_module(case.text) {
                Ok(m) => m,
                Err(e) => return failed(&e),
            };
            if let Err(d) = ortho_ir::verify::verify_module(&m) {
                return failed(&format_args!("failed verification: {d}"));
            }
            match render(&m, &shown, a.json) {
                Ok(t) => (t, false),
                Err(e) => failed(&e),
            }
        });
    }
    let module = match read_module(&a.input) {
        Ok(m) => m,
        Err(e) => return DriverOutput::failed(e),
    };
    if let Err(d) = ortho_ir::verify::verify_module(&module) {
        // analyze has always put a colon after the file name here.
        let text = format!("error: {shown}: failed verification: {d}\n");
        let e = CliError::Verify {
            path: a.input.clone(),
            source: d.into(),
        };
        return DriverOutput::failed_with(e, text);
    }
    match render(&module, &shown, a.json) {
        Ok(t) => DriverOutput::ok(t, String::new()),
        Err(e) => {
            let text = format!("error: {shown}: {e}\n");
            DriverOutput::failed_with(e, text)
        }
    }
}

/// The summary or the JSON report of a verified module.
fn render(m: &Module, shown: &str, json: bool) -> Result<String, CliError> {
    let s = analyze_transformer(m, m.main);
    let g = m.main_graph();
    Ok(if json {
        to_json(m, g, &s, shown).map_err(CliError::Json)? + "\n"
    } else {
        summary(m, g, &s, shown)
    })
}

fn val(g: &Graph, v: ValueId) -> String {
    format!("%{}", g.value_name(v))
}

fn const_name(g: &Graph, n: NodeId) -> String {
    g.node(n)
        .outputs
        .first()
        .map(|o| format!("%{}", o.name))
        .unwrap_or_default()
}

fn linear_text(l: &Linear) -> String {
    format!("{}→{}", l.in_features, l.out_features)
}

fn norm_text(s: &Structure, i: Option<usize>) -> String {
    match i {
        Some(i) => {
            let n = &s.gauge.norms.list[i];
            format!(
                "{}{}",
                n.describe(),
                if n.gain_is_one() { " γ=1" } else { "" }
            )
        }
        None => "no norm".into(),
    }
}

fn attention_text(a: &Attention) -> String {
    let p = |name: &str, l: Option<Linear>| {
        l.map(|l| format!("{name} {}", linear_text(&l)))
            .unwrap_or_else(|| format!("{name} ?"))
    };
    let mut t = format!(
        "attention {}, {}, {}, o {}",
        p("q", a.q),
        p("k", a.k),
        p("v", a.v),
        linear_text(&a.o)
    );
    let opt = |x: Option<i64>| x.map(|v| v.to_string()).unwrap_or_else(|| "?".into());
    let plural = |x: Option<i64>, what: &str| {
        format!("{} {what}{}", opt(x), if x == Some(1) { "" } else { "s" })
    };
    let _ = write!(
        t,
        "; {}, {}",
        plural(a.heads, "head"),
        plural(a.kv_heads, "KV head")
    );
    if let Some(gs) = a.group_size().filter(|&x| x > 1) {
        let _ = write!(t, " (GQA, groups of {gs})");
    }
    let _ = write!(t, ", head_dim {}", opt(a.head_dim));
    match a.rope {
        Some(ortho_ir::analysis::RopeForm::Op) => t.push_str(", RoPE (op)"),
        Some(ortho_ir::analysis::RopeForm::Decomposed) => t.push_str(", RoPE (decomposed)"),
        None => t.push_str(", no RoPE"),
    }
    if a.fused.is_some() {
        t.push_str(", fused Attention op");
    }
    t
}

fn mlp_text(m: &Mlp) -> String {
    let gate = if m.gate.is_some() { "gate/up" } else { "up" };
    format!(
        "{} MLP {}→{}→{} ({gate}, activation {})",
        m.kind.name(),
        m.up.in_features,
        m.hidden,
        m.down.out_features,
        m.activation
    )
}

fn branch_text(s: &Structure, b: &Branch) -> String {
    let what = match &b.kind {
        BranchKind::Attention(a) => attention_text(a),
        BranchKind::Mlp(m) => mlp_text(m),
        BranchKind::Unknown => format!(
            "unrecognized branch writing through {}",
            linear_text(&b.writer)
        ),
    };
    format!("{} → {what}", norm_text(s, b.norm))
}

fn block_text(s: &Structure, b: &Block) -> String {
    [b.attention, b.mlp, b.other]
        .iter()
        .flatten()
        .map(|&i| branch_text(s, &s.branches[i]))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Size and cost lines of the summary: parameters, bytes per dtype, opsets, FLOPs per token.
fn stats_text(o: &mut String, st: &crate::report::ModelStats) {
    let per_dtype: Vec<String> = st
        .bytes_per_dtype
        .iter()
        .map(|(d, b)| format!("{d} {b}"))
        .collect();
    let _ = writeln!(
        o,
        "parameters: {} in constants, {} bytes ({})",
        st.parameters,
        st.bytes,
        per_dtype.join(", ")
    );
    let opsets: Vec<String> = st.opsets.iter().map(|(d, v)| format!("{d} {v}")).collect();
    let _ = writeln!(o, "opsets: {}", opsets.join(", "));
    let _ = writeln!(
        o,
        "FLOPs per token: {} in {} linear layers (dense-equivalent; attention scores not counted)",
        st.flops_per_token, st.linear_layers
    );
}

fn placement(p: Placement) -> &'static str {
    match p {
        Placement::PreNorm => "pre-norm",
        Placement::PostNorm => "post-norm",
        Placement::NoNorm => "no norms",
    }
}

fn summary(m: &Module, g: &Graph, s: &Structure, shown: &str) -> String {
    let mut o = String::new();
    let ops = g
        .node_ids()
        .into_iter()
        .filter(|n| !g.node(*n).op.is_structural())
        .count();
    let _ = writeln!(o, "model: {shown}");
    let _ = writeln!(o, "graph @{}: {ops} ops ({} independent of the stream: positions, masks, tables, weight layouts)", g.name, s.auxiliary);
    stats_text(&mut o, &crate::report::model_stats(m));
    let Some(main) = s.gauge.main() else {
        let _ = writeln!(
            o,
            "residual stream: none found (no Gather of a constant [vocab, d] table)"
        );
        unmatched(&mut o, g, s);
        return o;
    };
    let _ = writeln!(
        o,
        "residual stream: d = {}, {} stream tensors, {}",
        main.width,
        s.stream.len(),
        placement(s.placement)
    );
    for e in &s.embeddings {
        let _ = writeln!(
            o,
            "embedding: {} of a [{}, {}] table {}",
            g.describe(e.node),
            e.vocab,
            e.width,
            const_name(g, e.table)
        );
    }
    let _ = writeln!(o, "blocks: {}", s.blocks.len());
    let mut i = 0;
    while i < s.blocks.len() {
        let t = block_text(s, &s.blocks[i]);
        let mut j = i + 1;
        while j < s.blocks.len() && block_text(s, &s.blocks[j]) == t {
            j += 1;
        }
        let range = if j - i == 1 {
            format!("block {i}")
        } else {
            format!("blocks {i}–{} ({}×)", j - 1, j - i)
        };
        let _ = writeln!(o, "  {range}: {t}");
        i = j;
    }
    if let Some(f) = s.final_norm {
        let _ = writeln!(
            o,
            "final norm: {} at {}",
            norm_text(s, Some(f)),
            g.describe(s.gauge.norms.list[f].node)
        );
    }
    for h in &s.heads {
        let tie = if h.tied {
            "tied to the embedding"
        } else {
            "untied"
        };
        let _ = writeln!(
            o,
            "head: {} {} ({tie}, weight {})",
            g.describe(h.linear.node),
            linear_text(&h.linear),
            const_name(g, h.linear.weight.konst)
        );
    }
    boundaries_and_ends(&mut o, g, s);
    let norms: Vec<&Norm> = main.norms.iter().map(|&i| &s.gauge.norms.list[i]).collect();
    let gains = norms.iter().filter(|n| !n.gain_is_one()).count();
    let _ = writeln!(
        o,
        "norms: {} on the stream ({gains} with a gain γ ≠ 1)",
        norms.len()
    );
    unmatched(&mut o, g, s);
    for (k, c) in s.gauge.classes.iter().enumerate() {
        class_text(&mut o, m, g, c, k);
    }
    let spaces = head_spaces(s);
    for space in ["q/k", "v/o"] {
        let of: Vec<_> = spaces.iter().filter(|h| h.space == space).collect();
        if let Some(first) = of.first() {
            let why = first
                .blocker
                .as_ref()
                .map(|(n, r)| format!(" — {r} (first at {})", g.describe(*n)))
                .unwrap_or_default();
            let what = match (space, first.admits) {
                ("v/o", ortho_ir::analysis::Kind::Orthogonal) => {
                    "O(head_dim) per KV head".to_string()
                }
                ("q/k", ortho_ir::analysis::Kind::Orthogonal) => {
                    "O(head_dim) per head, shared by q and k".to_string()
                }
                (_, k) => k.to_string(),
            };
            let same = of.iter().filter(|h| h.admits == first.admits).count();
            let _ = writeln!(
                o,
                "head spaces {space}: {same} of {} attention branches admit {what}{why}",
                of.len()
            );
        }
    }
    o
}

/// The block whose entry boundary `b` is, if a block follows it.
fn entry_of(s: &Structure, b: &Linear) -> Option<usize> {
    s.blocks
        .iter()
        .position(|bl| bl.entry.is_some_and(|e| e.node == b.node))
}

/// The values of `vs`, printed as a list.
fn values_text(g: &Graph, vs: &[ValueId]) -> String {
    let names: Vec<String> = vs.iter().map(|v| val(g, *v)).collect();
    names.join(", ")
}

/// The boundary linears on the stream and, for a shard (a graph whose stream is part of its
/// interface), where its stream enters and leaves. Both are printed only where the model has
/// them, so a whole model without boundaries reads as it always did (its ends are the embedding
/// and head lines).
fn boundaries_and_ends(o: &mut String, g: &Graph, s: &Structure) {
    for b in &s.boundaries {
        let entry = entry_of(s, b)
            .map(|i| format!(", entry of block {i}"))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "boundary: {} {} (weight {}{entry})",
            g.describe(b.node),
            linear_text(b),
            const_name(g, b.weight.konst)
        );
    }
    let e = &s.ends;
    if e.stream_inputs.is_empty() && e.stream_outputs.is_empty() {
        return;
    }
    let from = match (e.embedding, e.stream_inputs.is_empty()) {
        (true, _) => "the embedding".to_string(),
        (false, false) => format!("graph input {}", values_text(g, &e.stream_inputs)),
        (false, true) => "no embedding".to_string(),
    };
    let to = match (e.head, e.stream_outputs.is_empty()) {
        (true, _) => "the head".to_string(),
        (false, false) => format!("graph output {}", values_text(g, &e.stream_outputs)),
        (false, true) => "no head".to_string(),
    };
    let _ = writeln!(o, "ends: the stream runs from {from} to {to} (a shard)");
}

fn unmatched(o: &mut String, g: &Graph, s: &Structure) {
    if s.unmatched.is_empty() {
        let _ = writeln!(o, "unmatched: none");
        return;
    }
    let _ = writeln!(o, "unmatched: {} nodes", s.unmatched.len());
    for u in &s.unmatched {
        let _ = writeln!(o, "  {}: {}", g.describe(u.node), u.why);
    }
}

fn class_text(o: &mut String, _m: &Module, g: &Graph, c: &StreamClass, k: usize) {
    use ortho_ir::analysis::SiteRole;
    let _ = writeln!(
        o,
        "gauge class {k}: {} tensors of width {}, from {} to {}: admits {}",
        c.values.len(),
        c.width,
        c.values.first().map(|v| val(g, *v)).unwrap_or_default(),
        c.values.last().map(|v| val(g, *v)).unwrap_or_default(),
        c.admits.strongest()
    );
    let _ = writeln!(
        o,
        "  fold sites: {} embedding, {} readers, {} writers, {} biases; {} per-channel gains",
        c.count_role(SiteRole::Embedding),
        c.count_role(SiteRole::Reader),
        c.count_role(SiteRole::Writer),
        c.count_role(SiteRole::Bias),
        c.params.len()
    );
    for l in c.blocker_lines(g) {
        let _ = writeln!(o, "{l}");
    }
}

/// serde_json's compact output with a space after `,` and `:`, floats in Rust's shortest
/// round-trip form (`1e-5`, not `0.00001`), and control characters other than newline as
/// `\u00XX`: the layout `analyze --json` has always printed, so reports stay comparable.
struct Spaced;

impl serde_json::ser::Formatter for Spaced {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.begin_array_value(w, first)
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
    fn write_f64<W: ?Sized + std::io::Write>(&mut self, w: &mut W, x: f64) -> std::io::Result<()> {
        write!(w, "{x:?}")
    }
    fn write_char_escape<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        escape: serde_json::ser::CharEscape,
    ) -> std::io::Result<()> {
        use serde_json::ser::CharEscape;
        let byte = match escape {
            CharEscape::Backspace => 0x08,
            CharEscape::Tab => 0x09,
            CharEscape::FormFeed => 0x0c,
            CharEscape::CarriageReturn => 0x0d,
            other => return serde_json::ser::CompactFormatter.write_char_escape(w, other),
        };
        write!(w, "\\u{byte:04x}")
    }
}

#[derive(Serialize)]
struct LinearJson {
    node: String,
    #[serde(rename = "in")]
    in_features: i64,
    #[serde(rename = "out")]
    out_features: i64,
    weight: String,
    layout: &'static str,
    bias: bool,
}

impl LinearJson {
    fn new(g: &Graph, l: &Linear) -> LinearJson {
        LinearJson {
            node: g.describe(l.node),
            in_features: l.in_features,
            out_features: l.out_features,
            weight: const_name(g, l.weight.konst),
            layout: if l.weight.in_axis == 0 {
                "[in, out]"
            } else {
                "[out, in]"
            },
            bias: l.bias.is_some(),
        }
    }
    fn opt(g: &Graph, l: Option<Linear>) -> Option<LinearJson> {
        l.map(|l| LinearJson::new(g, &l))
    }
}

/// What a branch computes; `type` names the variant.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum BranchBody {
    Attention {
        q: Option<LinearJson>,
        k: Option<LinearJson>,
        v: Option<LinearJson>,
        o: LinearJson,
        heads: Option<i64>,
        kv_heads: Option<i64>,
        group_size: Option<i64>,
        head_dim: Option<i64>,
        rope: Option<&'static str>,
        fused: bool,
    },
    Mlp {
        kind: &'static str,
        activation: String,
        gate: Option<LinearJson>,
        up: LinearJson,
        down: LinearJson,
        hidden: i64,
    },
    Unknown {
        writer: LinearJson,
    },
}

#[derive(Serialize)]
struct BranchJson {
    #[serde(flatten)]
    body: BranchBody,
    norm: Option<usize>,
    residual_add: String,
    nodes: usize,
}

impl BranchJson {
    fn new(g: &Graph, b: &Branch) -> BranchJson {
        let body = match &b.kind {
            BranchKind::Attention(a) => BranchBody::Attention {
                q: LinearJson::opt(g, a.q),
                k: LinearJson::opt(g, a.k),
                v: LinearJson::opt(g, a.v),
                o: LinearJson::new(g, &a.o),
                heads: a.heads,
                kv_heads: a.kv_heads,
                group_size: a.group_size(),
                head_dim: a.head_dim,
                rope: a.rope.map(|r| match r {
                    ortho_ir::analysis::RopeForm::Op => "op",
                    ortho_ir::analysis::RopeForm::Decomposed => "decomposed",
                }),
                fused: a.fused.is_some(),
            },
            BranchKind::Mlp(m) => BranchBody::Mlp {
                kind: m.kind.name(),
                activation: m.activation.clone(),
                gate: LinearJson::opt(g, m.gate),
                up: LinearJson::new(g, &m.up),
                down: LinearJson::new(g, &m.down),
                hidden: m.hidden,
            },
            BranchKind::Unknown => BranchBody::Unknown {
                writer: LinearJson::new(g, &b.writer),
            },
        };
        BranchJson {
            body,
            norm: b.norm,
            residual_add: g.describe(b.add),
            nodes: b.nodes.len(),
        }
    }
}

#[derive(Serialize)]
struct BlockJson {
    index: usize,
    attention: Option<BranchJson>,
    mlp: Option<BranchJson>,
    other: Option<BranchJson>,
}

#[derive(Serialize)]
struct NormJson {
    description: String,
    node: String,
    input: String,
    output: String,
    gain_is_one: bool,
    eps: Option<f64>,
}

#[derive(Serialize)]
struct EmbeddingJson {
    node: String,
    table: String,
    vocab: i64,
    width: i64,
}

#[derive(Serialize)]
struct HeadJson {
    linear: LinearJson,
    tied: bool,
    norm: Option<usize>,
}

#[derive(Serialize)]
struct BoundaryJson {
    linear: LinearJson,
    /// The block this boundary is the entry of, when a block follows it.
    entry_of_block: Option<usize>,
}

/// `Structure::ends`: which ends of a whole model the graph has, and the graph inputs and
/// outputs that are the stream itself where it lacks them (a shard).
#[derive(Serialize)]
struct EndsJson {
    embedding: bool,
    stream_inputs: Vec<String>,
    head: bool,
    stream_outputs: Vec<String>,
}

#[derive(Serialize)]
struct UnmatchedJson {
    node: String,
    why: String,
}

#[derive(Serialize)]
struct TensorJson {
    value: String,
    admits: &'static str,
}

#[derive(Serialize)]
struct BlockerJson {
    node: String,
    reason: String,
    allows: &'static str,
}

#[derive(Serialize)]
struct ClassJson {
    width: i64,
    admits: &'static str,
    families: Vec<&'static str>,
    tensors: Vec<TensorJson>,
    blockers: Vec<BlockerJson>,
    fold_sites: usize,
    gains: usize,
}

#[derive(Serialize)]
struct HeadSpaceJson {
    branch: usize,
    space: &'static str,
    admits: &'static str,
    blocker: Option<String>,
}

#[derive(Serialize)]
struct GaugeJson {
    classes: Vec<ClassJson>,
    head_spaces: Vec<HeadSpaceJson>,
}

/// The whole `--json` report; fields print in this order.
#[derive(Serialize)]
struct Report<'a> {
    model: &'a str,
    graph: &'a str,
    width: Option<i64>,
    placement: &'static str,
    embeddings: Vec<EmbeddingJson>,
    stream: Vec<String>,
    blocks: Vec<BlockJson>,
    norms: Vec<NormJson>,
    final_norm: Option<usize>,
    heads: Vec<HeadJson>,
    boundaries: Vec<BoundaryJson>,
    ends: EndsJson,
    unmatched: Vec<UnmatchedJson>,
    auxiliary_nodes: usize,
    gauge: GaugeJson,
    statistics: crate::report::ModelStats,
}

fn class_json(g: &Graph, c: &StreamClass) -> ClassJson {
    let admits = c.admits.strongest().key();
    ClassJson {
        width: c.width,
        admits,
        families: c.admits.families(),
        tensors: c
            .values
            .iter()
            .map(|v| TensorJson {
                value: val(g, *v),
                admits,
            })
            .collect(),
        blockers: c
            .blockers
            .iter()
            .map(|b| BlockerJson {
                node: g.describe(b.node),
                reason: b.reason(),
                allows: b.allows.strongest().key(),
            })
            .collect(),
        fold_sites: c.sites.len(),
        gains: c.params.len(),
    }
}

fn to_json(m: &Module, g: &Graph, s: &Structure, shown: &str) -> Result<String, serde_json::Error> {
    let branch = |x: Option<usize>| x.map(|i| BranchJson::new(g, &s.branches[i]));
    let report = Report {
        model: shown,
        graph: &g.name,
        width: s.width,
        placement: placement(s.placement),
        embeddings: s
            .embeddings
            .iter()
            .map(|e| EmbeddingJson {
                node: g.describe(e.node),
                table: const_name(g, e.table),
                vocab: e.vocab,
                width: e.width,
            })
            .collect(),
        stream: s.stream.iter().map(|v| val(g, *v)).collect(),
        blocks: s
            .blocks
            .iter()
            .enumerate()
            .map(|(index, b)| BlockJson {
                index,
                attention: branch(b.attention),
                mlp: branch(b.mlp),
                other: branch(b.other),
            })
            .collect(),
        norms: s
            .gauge
            .norms
            .list
            .iter()
            .map(|n| NormJson {
                description: n.describe(),
                node: g.describe(n.node),
                input: val(g, n.input),
                output: val(g, n.output),
                gain_is_one: n.gain_is_one(),
                eps: n.eps,
            })
            .collect(),
        final_norm: s.final_norm,
        heads: s
            .heads
            .iter()
            .map(|h| HeadJson {
                linear: LinearJson::new(g, &h.linear),
                tied: h.tied,
                norm: h.norm,
            })
            .collect(),
        boundaries: s
            .boundaries
            .iter()
            .map(|b| BoundaryJson {
                linear: LinearJson::new(g, b),
                entry_of_block: entry_of(s, b),
            })
            .collect(),
        ends: EndsJson {
            embedding: s.ends.embedding,
            stream_inputs: s.ends.stream_inputs.iter().map(|v| val(g, *v)).collect(),
            head: s.ends.head,
            stream_outputs: s.ends.stream_outputs.iter().map(|v| val(g, *v)).collect(),
        },
        unmatched: s
            .unmatched
            .iter()
            .map(|u| UnmatchedJson {
                node: g.describe(u.node),
                why: u.why.clone(),
            })
            .collect(),
        auxiliary_nodes: s.auxiliary,
        gauge: GaugeJson {
            classes: s.gauge.classes.iter().map(|c| class_json(g, c)).collect(),
            head_spaces: head_spaces(s)
                .into_iter()
                .map(|h| HeadSpaceJson {
                    branch: h.branch,
                    space: h.space,
                    admits: h.admits.key(),
                    blocker: h.blocker.map(|(n, r)| format!("{}: {r}", g.describe(n))),
                })
                .collect(),
        },
        statistics: crate::report::model_stats(m),
    };
    let mut out = Vec::new();
    report.serialize(&mut serde_json::Serializer::with_formatter(
        &mut out, Spaced,
    ))?;
    // The serializer writes only valid UTF-8 (it copies Rust strings and ASCII).
    Ok(String::from_utf8_lossy(&out).into_owned())
}
