//! The kernel interface: how the executor calls an op's implementation, and how other code
//! (the Cranelift JIT for fused elementwise chains, tests) supplies kernels for ops.
//!
//! A kernel receives its operands as [`Inputs`] (operands that die at this node are handed over
//! by value, so a kernel may reuse their buffers) and returns its results. Kernels are built
//! once per node at plan compile time by a [`KernelFactory`], which sees the node (attributes,
//! operand count) through a [`KernelSite`].

use crate::cpu::error::{KernelError, KernelResult};
use crate::cpu::pool::BufferPool;
use crate::cpu::tensor::{HostTensor, TensorBuf};
use ortho_ir::{Graph, Module, Node, NodeId};
use std::collections::HashMap;
use std::sync::Arc;

/// What a kernel may use while it runs.
pub struct ExecCx<'p> {
    /// Freed buffers to allocate results from.
    pub pool: &'p mut BufferPool,
    /// How many threads the kernel may use (1 = stay on the calling thread).
    pub threads: usize,
}

impl ExecCx<'_> {
    /// Whether work of `n` elements is worth splitting across threads. Below ~128 K elements a
    /// memory-bound loop gains microseconds from a second thread and, on a busy machine, can
    /// lose milliseconds waiting for it.
    pub fn parallel(&self, n: usize) -> bool {
        self.threads > 1 && n >= 128 * 1024
    }
}

enum In<'a> {
    Absent,
    Ref(&'a HostTensor),
    Owned(HostTensor),
    Taken,
}

/// The operands of one node, in slot order (`None` for an omitted optional operand).
pub struct Inputs<'a> {
    items: Vec<In<'a>>,
}

impl<'a> Inputs<'a> {
    /// Borrowed operands (for tests and for callers outside the executor).
    pub fn borrowed(v: &[Option<&'a HostTensor>]) -> Inputs<'a> {
        Inputs {
            items: v.iter().map(|x| x.map_or(In::Absent, In::Ref)).collect(),
        }
    }

    pub(crate) fn with_capacity(n: usize) -> Inputs<'a> {
        Inputs {
            items: Vec::with_capacity(n),
        }
    }
    pub(crate) fn push_ref(&mut self, t: Option<&'a HostTensor>) {
        self.items.push(t.map_or(In::Absent, In::Ref));
    }
    pub(crate) fn push_owned(&mut self, t: HostTensor) {
        self.items.push(In::Owned(t));
    }

    /// Number of operand slots.
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Operand `i`, when present.
    pub fn get(&self, i: usize) -> Option<&HostTensor> {
        match self.items.get(i)? {
            In::Ref(t) => Some(t),
            In::Owned(t) => Some(t),
            In::Absent | In::Taken => None,
        }
    }

    /// Operand `i`, which the op requires.
    pub fn req(&self, i: usize) -> KernelResult<&HostTensor> {
        match self.items.get(i) {
            Some(In::Taken) => Err(KernelError::invalid(format!(
                "operand {i} was already consumed"
            ))),
            _ => self
                .get(i)
                .ok_or_else(|| KernelError::invalid(format!("missing required operand {i}"))),
        }
    }

    /// Takes operand `i` by value when this node is its last user (its buffer may be reused);
    /// `None` when it is borrowed (a constant, a feed, or a value used later).
    pub fn take(&mut self, i: usize) -> Option<HostTensor> {
        let slot = self.items.get_mut(i)?;
        if matches!(slot, In::Owned(_)) {
            if let In::Owned(t) = std::mem::replace(slot, In::Taken) {
                return Some(t);
            }
        }
        None
    }

    /// Whether operand `i` could be taken by value.
    pub fn is_owned(&self, i: usize) -> bool {
        matches!(self.items.get(i), Some(In::Owned(_)))
    }

    /// The buffers of operands that were handed over but not taken.
    pub(crate) fn into_leftovers(self) -> Vec<TensorBuf> {
        self.items
            .into_iter()
            .filter_map(|x| match x {
                In::Owned(t) => Some(t.into_parts().1),
                _ => None,
            })
            .collect()
    }
}

/// An op implementation.
pub trait Kernel: Send + Sync {
    fn run(&self, cx: &mut ExecCx<'_>, inputs: &mut Inputs<'_>) -> KernelResult<Vec<HostTensor>>;
}

impl<F> Kernel for F
where
    F: Fn(&mut ExecCx<'_>, &mut Inputs<'_>) -> KernelResult<Vec<HostTensor>> + Send + Sync,
{
    fn run(&self, cx: &mut ExecCx<'_>, inputs: &mut Inputs<'_>) -> KernelResult<Vec<HostTensor>> {
        self(cx, inputs)
    }
}

/// Where a kernel is being built: the node and its context, for reading attributes.
pub struct KernelSite<'m> {
    pub module: &'m Module,
    pub graph: &'m Graph,
    pub node_id: NodeId,
    /// The opset version imported for the node's domain (0 when none is imported).
    pub opset: i64,
}

impl KernelSite<'_> {
    pub fn node(&self) -> &Node {
        self.graph.node(self.node_id)
    }
    /// Number of results the node declares (optional trailing ones may be unused).
    pub fn num_outputs(&self) -> usize {
        self.node().outputs.len()
    }
    /// Whether result `i` exists and has a name (an omitted optional result has none).
    pub fn output_used(&self, i: usize) -> bool {
        self.node()
            .outputs
            .get(i)
            .is_some_and(|o| !o.name.is_empty())
    }
}

/// Builds a kernel for a node at compile time.
pub type KernelFactory =
    Arc<dyn Fn(&KernelSite<'_>) -> KernelResult<Box<dyn Kernel>> + Send + Sync>;

/// Kernels supplied from outside the built-in set, by (domain, op type). They take precedence
/// over built-in kernels, so a JIT may also replace standard ops.
#[derive(Clone, Default)]
pub struct KernelRegistry {
    map: HashMap<(String, String), KernelFactory>,
}

impl std::fmt::Debug for KernelRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys: Vec<_> = self.map.keys().collect();
        keys.sort();
        f.debug_struct("KernelRegistry")
            .field("ops", &keys)
            .finish()
    }
}

impl KernelRegistry {
    pub fn new() -> KernelRegistry {
        KernelRegistry::default()
    }

    /// Registers a factory for ops `op_type` of `domain` (`""` is the ONNX domain).
    pub fn register(&mut self, domain: &str, op_type: &str, factory: KernelFactory) {
        self.map
            .insert((norm_domain(domain), op_type.to_string()), factory);
    }

    pub fn get(&self, domain: &str, op_type: &str) -> Option<&KernelFactory> {
        self.map.get(&(norm_domain(domain), op_type.to_string()))
    }
}

fn norm_domain(d: &str) -> String {
    if d == "ai.onnx" {
        String::new()
    } else {
        d.to_string()
    }
}

/// The body of an elementwise f32 kernel: `f(inputs, output)`, every slice the output's
/// length. Element `i` of the output may depend only on element `i` of each input, because
/// large tensors are split into chunks that run on different threads.
pub type ElementwiseFn = Arc<dyn Fn(&[&[f32]], &mut [f32]) + Send + Sync>;

/// A kernel for an elementwise op over f32 operands with multidirectional broadcasting: inputs
/// whose shape differs from the broadcast result are expanded first, then `f` runs on
/// contiguous chunks. This is the entry point for JIT-compiled fused elementwise chains.
pub fn elementwise_f32(f: ElementwiseFn) -> Box<dyn Kernel> {
    Box::new(
        move |cx: &mut ExecCx<'_>, ins: &mut Inputs<'_>| -> KernelResult<Vec<HostTensor>> {
            let n_in = ins.len();
            let mut shapes = Vec::with_capacity(n_in);
            for i in 0..n_in {
                let t = ins.req(i)?;
                if t.as_f32().is_none() {
                    return Err(KernelError::dtype(format!(
                        "operand {i} is {}, this kernel takes f32",
                        t.dtype()
                    )));
                }
                shapes.push(t.shape().to_vec());
            }
            let refs: Vec<&[usize]> = shapes.iter().map(|s| s.as_slice()).collect();
            let out_shape = crate::cpu::kernels::broadcast::broadcast_shapes(&refs)?;
            let n: usize = out_shape.iter().product();
            let mut expanded: Vec<Option<Vec<f32>>> = Vec::with_capacity(n_in);
            for (i, shape) in shapes.iter().enumerate() {
                if *shape == out_shape {
                    expanded.push(None);
                } else {
                    let t = ins.req(i)?;
                    let e = crate::cpu::kernels::shape::expand_to::<f32>(cx, t, &out_shape)?;
                    expanded.push(Some(e));
                }
            }
            let mut slices: Vec<&[f32]> = Vec::with_capacity(n_in);
            for (i, e) in expanded.iter().enumerate() {
                match e {
                    Some(v) => slices.push(v),
                    None => slices.push(ins.req(i)?.as_f32().unwrap_or(&[])),
                }
            }
            let mut out = cx.pool.alloc::<f32>(n)?;
            if cx.parallel(n) {
                use rayon::prelude::*;
                let chunk = n.div_ceil(cx.threads * 4).max(4096);
                out.par_chunks_mut(chunk).enumerate().for_each(|(c, o)| {
                    let lo = c * chunk;
                    let sub: Vec<&[f32]> = slices.iter().map(|s| &s[lo..lo + o.len()]).collect();
                    f(&sub, o);
                });
            } else {
                f(&slices, &mut out);
            }
            for v in expanded.into_iter().flatten() {
                cx.pool.recycle(TensorBuf::F32(v));
            }
            Ok(vec![HostTensor::make(out_shape, TensorBuf::F32(out))?])
        },
    )
}
