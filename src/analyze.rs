//! `ortho-opt analyze MODEL [--json]`: the transformer structure and the basis (gauge) analysis
//! of a model, as a readable summary or as one JSON object. Nothing is written.

use crate::DriverOutput;
use clap::Parser;
use ortho_ir::analysis::transformer::{Block, Branch, BranchKind, Placement, Structure};
use ortho_ir::analysis::{
    analyze_transformer, head_spaces, Attention, Linear, Mlp, Norm, StreamClass,
};
use ortho_ir::{Graph, Module, NodeId, ValueId};
use std::fmt::Write as _;
use std::path::PathBuf;

/// ortho-opt analyze: find the transformer structure (residual stream, blocks, norms, attention,
/// MLP, embedding and head) and the transforms each residual-stream tensor admits.
#[derive(Debug, Parser)]
#[command(name = "ortho-opt analyze", about, long_about = None)]
struct AnalyzeArgs {
    /// Model: .onnx or .oir.
    input: PathBuf,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
    /// Treat the .oir input as several modules separated by `// -----`, each analyzed on its own.
    #[arg(long = "split-input-file")]
    split_input_file: bool,
}

/// Runs `analyze`; `args[0]` is `analyze`.
pub fn run(args: &[String]) -> DriverOutput {
    let a = match AnalyzeArgs::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let text = e.render().to_string();
            return if code == 0 {
                DriverOutput::ok(text, String::new())
            } else {
                DriverOutput {
                    code,
                    stdout: String::new(),
                    stderr: text,
                }
            };
        }
    };
    let shown = a.input.display().to_string();
    let is_oir = a.input.extension().is_some_and(|e| e == "oir");
    if a.split_input_file {
        if !is_oir {
            return DriverOutput::error("error: --split-input-file needs a .oir input\n".into());
        }
        let text = match std::fs::read_to_string(&a.input) {
            Ok(t) => t,
            Err(e) => return DriverOutput::error(format!("error: {shown}: {e}\n")),
        };
        let mut outs = Vec::new();
        let mut code = 0;
        for (i, case) in text.split("\n// -----").enumerate() {
            match ortho_ir::text::parse_module(case)
                .map_err(|e| e.to_string())
                .and_then(|m| render(&m, &shown, a.json))
            {
                Ok(t) => outs.push(t),
                Err(e) => {
                    code = 1;
                    outs.push(format!("// error: {shown}: case {}: {e}\n", i + 1));
                }
            }
        }
        return DriverOutput {
            code,
            stdout: outs.join("// -----\n"),
            stderr: String::new(),
        };
    }
    let module = if is_oir {
        match std::fs::read_to_string(&a.input) {
            Ok(t) => match ortho_ir::text::parse_module(&t) {
                Ok(m) => m,
                Err(e) => return DriverOutput::error(format!("error: {shown}:{e}\n")),
            },
            Err(e) => return DriverOutput::error(format!("error: {shown}: {e}\n")),
        }
    } else {
        match ortho_frontends::import_file(&a.input) {
            Ok(m) => m,
            Err(e) => return DriverOutput::error(format!("error: {e}\n")),
        }
    };
    match render(&module, &shown, a.json) {
        Ok(t) => DriverOutput::ok(t, String::new()),
        Err(e) => DriverOutput::error(format!("error: {shown}: {e}\n")),
    }
}

fn render(m: &Module, shown: &str, json: bool) -> Result<String, String> {
    if let Err(d) = ortho_ir::verify::verify_module(m) {
        return Err(format!("failed verification: {d}"));
    }
    let s = analyze_transformer(m, m.main);
    let g = m.main_graph();
    Ok(if json {
        to_json(m, g, &s, shown).to_string() + "\n"
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

/// A JSON value, printed compactly with keys in insertion order.
pub enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn obj(kv: Vec<(&str, Json)>) -> Json {
        Json::Obj(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }
    fn s(x: impl Into<String>) -> Json {
        Json::Str(x.into())
    }
    fn opt(x: Option<i64>) -> Json {
        x.map(Json::Int).unwrap_or(Json::Null)
    }
}

impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Json::Null => f.write_str("null"),
            Json::Bool(b) => write!(f, "{b}"),
            Json::Int(i) => write!(f, "{i}"),
            Json::Num(x) if x.is_finite() => write!(f, "{x:?}"),
            Json::Num(_) => f.write_str("null"),
            Json::Str(s) => {
                f.write_str("\"")?;
                for c in s.chars() {
                    match c {
                        '"' => f.write_str("\\\"")?,
                        '\\' => f.write_str("\\\\")?,
                        '\n' => f.write_str("\\n")?,
                        c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
                        c => write!(f, "{c}")?,
                    }
                }
                f.write_str("\"")
            }
            Json::Arr(v) => {
                f.write_str("[")?;
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{x}")?;
                }
                f.write_str("]")
            }
            Json::Obj(kv) => {
                f.write_str("{")?;
                for (i, (k, v)) in kv.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}: {v}", Json::Str(k.clone()))?;
                }
                f.write_str("}")
            }
        }
    }
}

fn linear_json(g: &Graph, l: &Linear) -> Json {
    Json::obj(vec![
        ("node", Json::s(g.describe(l.node))),
        ("in", Json::Int(l.in_features)),
        ("out", Json::Int(l.out_features)),
        ("weight", Json::s(const_name(g, l.weight.konst))),
        (
            "layout",
            Json::s(if l.weight.in_axis == 0 {
                "[in, out]"
            } else {
                "[out, in]"
            }),
        ),
        ("bias", Json::Bool(l.bias.is_some())),
    ])
}

fn branch_json(g: &Graph, s: &Structure, i: usize) -> Json {
    let b = &s.branches[i];
    let body = match &b.kind {
        BranchKind::Attention(a) => Json::obj(vec![
            ("type", Json::s("attention")),
            ("q", a.q.map(|l| linear_json(g, &l)).unwrap_or(Json::Null)),
            ("k", a.k.map(|l| linear_json(g, &l)).unwrap_or(Json::Null)),
            ("v", a.v.map(|l| linear_json(g, &l)).unwrap_or(Json::Null)),
            ("o", linear_json(g, &a.o)),
            ("heads", Json::opt(a.heads)),
            ("kv_heads", Json::opt(a.kv_heads)),
            ("group_size", Json::opt(a.group_size())),
            ("head_dim", Json::opt(a.head_dim)),
            (
                "rope",
                match a.rope {
                    Some(ortho_ir::analysis::RopeForm::Op) => Json::s("op"),
                    Some(ortho_ir::analysis::RopeForm::Decomposed) => Json::s("decomposed"),
                    None => Json::Null,
                },
            ),
            ("fused", Json::Bool(a.fused.is_some())),
        ]),
        BranchKind::Mlp(m) => Json::obj(vec![
            ("type", Json::s("mlp")),
            ("kind", Json::s(m.kind.name())),
            ("activation", Json::s(m.activation.clone())),
            (
                "gate",
                m.gate.map(|l| linear_json(g, &l)).unwrap_or(Json::Null),
            ),
            ("up", linear_json(g, &m.up)),
            ("down", linear_json(g, &m.down)),
            ("hidden", Json::Int(m.hidden)),
        ]),
        BranchKind::Unknown => Json::obj(vec![
            ("type", Json::s("unknown")),
            ("writer", linear_json(g, &b.writer)),
        ]),
    };
    let mut kv = match body {
        Json::Obj(kv) => kv,
        _ => Vec::new(),
    };
    kv.push((
        "norm".into(),
        b.norm.map(|n| Json::Int(n as i64)).unwrap_or(Json::Null),
    ));
    kv.push(("residual_add".into(), Json::s(g.describe(b.add))));
    kv.push(("nodes".into(), Json::Int(b.nodes.len() as i64)));
    Json::Obj(kv)
}

fn to_json(_m: &Module, g: &Graph, s: &Structure, shown: &str) -> Json {
    let norms = s
        .gauge
        .norms
        .list
        .iter()
        .map(|n| {
            Json::obj(vec![
                ("description", Json::s(n.describe())),
                ("node", Json::s(g.describe(n.node))),
                ("input", Json::s(val(g, n.input))),
                ("output", Json::s(val(g, n.output))),
                ("gain_is_one", Json::Bool(n.gain_is_one())),
                ("eps", n.eps.map(Json::Num).unwrap_or(Json::Null)),
            ])
        })
        .collect();
    let blocks = s
        .blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let part = |x: Option<usize>| x.map(|x| branch_json(g, s, x)).unwrap_or(Json::Null);
            Json::obj(vec![
                ("index", Json::Int(i as i64)),
                ("attention", part(b.attention)),
                ("mlp", part(b.mlp)),
                ("other", part(b.other)),
            ])
        })
        .collect();
    let classes = s
        .gauge
        .classes
        .iter()
        .map(|c| {
            let admits = Json::s(c.admits.strongest().key());
            Json::obj(vec![
                ("width", Json::Int(c.width)),
                ("admits", admits),
                (
                    "families",
                    Json::Arr(c.admits.families().into_iter().map(Json::s).collect()),
                ),
                (
                    "tensors",
                    Json::Arr(
                        c.values
                            .iter()
                            .map(|v| {
                                Json::obj(vec![
                                    ("value", Json::s(val(g, *v))),
                                    ("admits", Json::s(c.admits.strongest().key())),
                                ])
                            })
                            .collect(),
                    ),
                ),
                (
                    "blockers",
                    Json::Arr(
                        c.blockers
                            .iter()
                            .map(|b| {
                                Json::obj(vec![
                                    ("node", Json::s(g.describe(b.node))),
                                    ("reason", Json::s(b.reason())),
                                    ("allows", Json::s(b.allows.strongest().key())),
                                ])
                            })
                            .collect(),
                    ),
                ),
                ("fold_sites", Json::Int(c.sites.len() as i64)),
                ("gains", Json::Int(c.params.len() as i64)),
            ])
        })
        .collect();
    let spaces = head_spaces(s)
        .into_iter()
        .map(|h| {
            Json::obj(vec![
                ("branch", Json::Int(h.branch as i64)),
                ("space", Json::s(h.space)),
                ("admits", Json::s(h.admits.key())),
                (
                    "blocker",
                    h.blocker
                        .map(|(n, r)| Json::s(format!("{}: {r}", g.describe(n))))
                        .unwrap_or(Json::Null),
                ),
            ])
        })
        .collect();
    Json::obj(vec![
        ("model", Json::s(shown)),
        ("graph", Json::s(g.name.clone())),
        ("width", Json::opt(s.width)),
        ("placement", Json::s(placement(s.placement))),
        (
            "embeddings",
            Json::Arr(
                s.embeddings
                    .iter()
                    .map(|e| {
                        Json::obj(vec![
                            ("node", Json::s(g.describe(e.node))),
                            ("table", Json::s(const_name(g, e.table))),
                            ("vocab", Json::Int(e.vocab)),
                            ("width", Json::Int(e.width)),
                        ])
                    })
                    .collect(),
            ),
        ),
        (
            "stream",
            Json::Arr(s.stream.iter().map(|v| Json::s(val(g, *v))).collect()),
        ),
        ("blocks", Json::Arr(blocks)),
        ("norms", Json::Arr(norms)),
        (
            "final_norm",
            s.final_norm
                .map(|i| Json::Int(i as i64))
                .unwrap_or(Json::Null),
        ),
        (
            "heads",
            Json::Arr(
                s.heads
                    .iter()
                    .map(|h| {
                        Json::obj(vec![
                            ("linear", linear_json(g, &h.linear)),
                            ("tied", Json::Bool(h.tied)),
                            (
                                "norm",
                                h.norm.map(|i| Json::Int(i as i64)).unwrap_or(Json::Null),
                            ),
                        ])
                    })
                    .collect(),
            ),
        ),
        (
            "unmatched",
            Json::Arr(
                s.unmatched
                    .iter()
                    .map(|u| {
                        Json::obj(vec![
                            ("node", Json::s(g.describe(u.node))),
                            ("why", Json::s(u.why.clone())),
                        ])
                    })
                    .collect(),
            ),
        ),
        ("auxiliary_nodes", Json::Int(s.auxiliary as i64)),
        (
            "gauge",
            Json::obj(vec![
                ("classes", Json::Arr(classes)),
                ("head_spaces", Json::Arr(spaces)),
            ]),
        ),
    ])
}
