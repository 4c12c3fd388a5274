//! A module: the main graph, its subgraphs and functions, the weight arena and model metadata.

use crate::attr::Attr;
use crate::graph::{Graph, GraphId};
use crate::tensor::{Arena, TensorData, TensorId};

/// Model-level metadata, carried through unchanged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelMeta {
    pub ir_version: i64,
    pub producer_name: String,
    pub producer_version: String,
    pub domain: String,
    pub model_version: i64,
    pub doc: String,
    pub metadata_props: Vec<(String, String)>,
}

/// An operator set import: (domain, version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsetImport {
    pub domain: String,
    pub version: i64,
}

/// A model-local function: a graph whose inputs are untyped, with attribute parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub name: String,
    pub domain: String,
    pub overload: String,
    pub graph: GraphId,
    /// Attribute parameters without defaults.
    pub attributes: Vec<String>,
    /// Attribute parameters with defaults.
    pub attribute_defaults: Vec<Attr>,
    pub opsets: Vec<OpsetImport>,
    pub doc: String,
    pub metadata_props: Vec<(String, String)>,
}

/// Top-level fields of the source format the IR does not model (field number, encoded bytes).
#[derive(Debug, Clone, PartialEq)]
pub struct OpaqueField {
    pub field: u32,
    pub bytes: Vec<u8>,
}

/// A whole model.
#[derive(Debug, Clone)]
pub struct Module {
    pub graphs: Arena<Graph>,
    pub tensors: Arena<TensorData>,
    pub main: GraphId,
    pub functions: Vec<Function>,
    pub opsets: Vec<OpsetImport>,
    pub meta: ModelMeta,
    pub opaque_fields: Vec<OpaqueField>,
}

impl Module {
    /// A module with an empty main graph.
    pub fn new(main_name: &str) -> Self {
        let mut graphs = Arena::default();
        let main = graphs.alloc(Graph::new(main_name));
        Module {
            graphs,
            tensors: Arena::default(),
            main,
            functions: Vec::new(),
            opsets: Vec::new(),
            meta: ModelMeta::default(),
            opaque_fields: Vec::new(),
        }
    }

    pub fn graph(&self, g: GraphId) -> &Graph {
        self.graphs.get(g)
    }
    pub fn graph_mut(&mut self, g: GraphId) -> &mut Graph {
        self.graphs.get_mut(g)
    }
    pub fn main_graph(&self) -> &Graph {
        self.graphs.get(self.main)
    }
    pub fn main_graph_mut(&mut self) -> &mut Graph {
        self.graphs.get_mut(self.main)
    }
    pub fn tensor(&self, t: TensorId) -> &TensorData {
        self.tensors.get(t)
    }
    pub fn add_tensor(&mut self, t: TensorData) -> TensorId {
        self.tensors.alloc(t)
    }

    /// The opset version imported for a domain (`""` and `"ai.onnx"` are the same domain).
    pub fn opset(&self, domain: &str) -> Option<i64> {
        let norm = |d: &str| {
            if d == "ai.onnx" {
                String::new()
            } else {
                d.to_string()
            }
        };
        self.opsets
            .iter()
            .find(|o| norm(&o.domain) == norm(domain))
            .map(|o| o.version)
    }

    /// Every graph reachable from the main graph and the functions, parents before children.
    pub fn reachable_graphs(&self) -> Vec<GraphId> {
        let mut out = Vec::new();
        let mut stack: Vec<GraphId> = vec![self.main];
        stack.extend(self.functions.iter().rev().map(|f| f.graph));
        let mut seen = std::collections::HashSet::new();
        // Depth-first with an explicit stack; a graph referenced twice is listed once.
        while let Some(g) = stack.pop() {
            if !seen.insert(g) {
                continue;
            }
            out.push(g);
            let graph = self.graph(g);
            let mut children = Vec::new();
            if let Ok(order) = graph.toposort() {
                for n in order {
                    children.extend(graph.node(n).op.subgraphs());
                }
            }
            stack.extend(children.into_iter().rev());
        }
        out
    }

    /// Total number of parameters held by the main graph's constants.
    pub fn parameter_count(&self) -> u64 {
        let g = self.main_graph();
        g.node_ids()
            .into_iter()
            .filter_map(|n| match g.node(n).op {
                crate::op::Op::Const(t) => self.tensor(t).numel(),
                _ => None,
            })
            .sum()
    }
}
