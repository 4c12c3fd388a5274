//! The optimizer's machine-readable report (`--report FILE.json`) and the model statistics it
//! shares with `analyze`: parameters, bytes per dtype, nodes, opsets and FLOPs per token.

use ortho_ir::analysis::linear::match_linear;
use ortho_ir::op::Op;
use ortho_ir::Module;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Size and cost of a model, counted over every graph reachable from the main graph (subgraphs
/// of `If`/`Loop` and functions included) for nodes and bytes, and over the main graph for
/// FLOPs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelStats {
    /// Elements of the constant tensors (weights, biases, and small constants).
    pub parameters: u64,
    /// Bytes of the constant tensors.
    pub bytes: u64,
    /// Constant bytes per dtype (`f32`, `i64`, …).
    pub bytes_per_dtype: BTreeMap<String, u64>,
    /// Computing nodes (inputs and constants not counted).
    pub nodes: u64,
    /// Computing nodes per op type, `domain.Op` outside the default domain.
    pub ops: BTreeMap<String, u64>,
    /// Opset imports of the model, domain (`ai.onnx` for the default) → version.
    pub opsets: BTreeMap<String, i64>,
    /// Floating-point operations per token of the linear layers (2 × in × out per layer, plus
    /// one addition per output feature with a bias), dense-equivalent: attention's score and
    /// value products grow with the sequence and are not counted.
    pub flops_per_token: u64,
    /// Linear layers counted in `flops_per_token`.
    pub linear_layers: u64,
}

/// The statistics of `m`.
pub fn model_stats(m: &Module) -> ModelStats {
    let mut s = ModelStats {
        parameters: 0,
        bytes: 0,
        bytes_per_dtype: BTreeMap::new(),
        nodes: 0,
        ops: BTreeMap::new(),
        opsets: m
            .opsets
            .iter()
            .map(|o| {
                let d = if o.domain.is_empty() {
                    "ai.onnx"
                } else {
                    &o.domain
                };
                (d.to_string(), o.version)
            })
            .collect(),
        flops_per_token: 0,
        linear_layers: 0,
    };
    for gid in m.reachable_graphs() {
        let g = m.graph(gid);
        for n in g.node_ids() {
            let op = &g.node(n).op;
            match op {
                Op::Const(t) => {
                    let t = m.tensor(*t);
                    // Saturating: the verifier refuses overflowing shapes, and a count is no
                    // place to fail.
                    s.parameters = s.parameters.saturating_add(t.numel().unwrap_or(0));
                    s.bytes = s.bytes.saturating_add(t.byte_len());
                    let e = s.bytes_per_dtype.entry(t.dtype.to_string()).or_insert(0);
                    *e = e.saturating_add(t.byte_len());
                }
                _ if op.is_structural() => {}
                _ => {
                    s.nodes += 1;
                    let name = match op.domain() {
                        "" => op.name().to_string(),
                        d => format!("{d}.{}", op.name()),
                    };
                    *s.ops.entry(name).or_insert(0) += 1;
                }
            }
        }
    }
    let g = m.main_graph();
    for n in g.node_ids() {
        if let Some(l) = match_linear(m, g, n) {
            let (i, o) = (l.in_features.max(0) as u64, l.out_features.max(0) as u64);
            let bias = if l.bias.is_some() { o } else { 0 };
            s.flops_per_token = s
                .flops_per_token
                .saturating_add((2 * i).saturating_mul(o).saturating_add(bias));
            s.linear_layers += 1;
        }
    }
    s
}

/// One pass execution in the report.
#[derive(Debug, Serialize)]
pub struct PassEntry {
    pub index: usize,
    pub pass: String,
    /// Position in the pipeline (`fixpoint/cse`).
    pub path: String,
    pub ran: bool,
    pub changed: bool,
    pub wall_ms: f64,
    pub verify_ms: f64,
}

/// A file the run wrote, with its SHA-256.
#[derive(Debug, Serialize)]
pub struct OutputFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// The whole report of one optimizer run.
#[derive(Debug, Serialize)]
pub struct RunReport {
    pub tool: &'static str,
    pub version: &'static str,
    /// The command line as given.
    pub command: Vec<String>,
    pub input: String,
    pub pipeline: String,
    pub passes: Vec<PassEntry>,
    /// Each fixpoint loop: where, iterations, why it stopped.
    pub fixpoints: Vec<(String, usize, String)>,
    pub statistics: BTreeMap<String, u64>,
    pub notes: Vec<String>,
    pub import_s: f64,
    pub passes_s: f64,
    pub export_s: f64,
    pub before: ModelStats,
    pub after: ModelStats,
    pub outputs: Vec<OutputFile>,
}

impl RunReport {
    /// The report's pass part from the pass manager's report (empty when no pipeline ran).
    pub fn set_passes(&mut self, r: &ortho_passes::RunReport) {
        self.pipeline = r.pipeline.clone();
        self.passes = r
            .runs
            .iter()
            .map(|p| PassEntry {
                index: p.index,
                pass: p.name.to_string(),
                path: p.path.clone(),
                ran: p.ran,
                changed: p.changed,
                wall_ms: p.wall.as_secs_f64() * 1e3,
                verify_ms: p.verify_wall.as_secs_f64() * 1e3,
            })
            .collect();
        self.fixpoints = r
            .fixpoints
            .iter()
            .map(|f| (f.path.clone(), f.iterations, f.stop.to_string()))
            .collect();
        self.statistics = r
            .statistics
            .iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        self.notes = r.notes.clone();
        self.passes_s = r.total_wall.as_secs_f64();
    }
}

/// The SHA-256 and size of a file (read in chunks: outputs may be gigabytes).
pub fn file_sha256(path: &Path) -> std::io::Result<OutputFile> {
    let (sha256, bytes) = crate::shard::sha256::file_digest(path)?;
    Ok(OutputFile {
        path: path.display().to_string(),
        bytes,
        sha256,
    })
}

/// The SHA-256 of bytes written to stdout.
pub fn bytes_sha256(label: &str, b: &[u8]) -> OutputFile {
    OutputFile {
        path: label.to_string(),
        bytes: b.len() as u64,
        sha256: crate::shard::sha256::bytes_hex(b),
    }
}

/// Where the exporter put the external data of `model` (`<model>.data` beside it).
pub fn external_data_path(model: &Path) -> std::path::PathBuf {
    let mut name = model.file_name().unwrap_or_default().to_os_string();
    name.push(".data");
    ortho_ir::output::parent_dir(model).join(name)
}

/// The key of the ortho-opt version in an output's `metadata_props`.
pub const VERSION_KEY: &str = "ortho-opt.version";
/// The key of the pipeline that made an output.
pub const PIPELINE_KEY: &str = "ortho-opt.pipeline";

/// Records how the output was made in the model's `metadata_props`: the ortho-opt version and
/// the canonical pipeline. Entries of an earlier ortho-opt run are replaced, not repeated.
pub fn set_provenance(m: &mut Module, pipeline: &str) {
    let props = &mut m.meta.metadata_props;
    props.retain(|(k, _)| k != VERSION_KEY && k != PIPELINE_KEY);
    props.push((
        VERSION_KEY.to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    ));
    props.push((PIPELINE_KEY.to_string(), pipeline.to_string()));
}
