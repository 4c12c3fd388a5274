//! IR → ONNX.
//!
//! Initializers of the main graph are streamed from their storage (often the memory-mapped
//! input) rather than copied into the protobuf message. Outputs are written to temporary files
//! in the destination folder and renamed into place only when complete, so a failure never
//! leaves a half-written model; the input model and its external data are never overwritten.

use super::convert::{dtype_code, type_to_proto};
use super::wire::{encoded_len, write_model_streaming, RawSink};
use super::OnnxError;
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataLocation, AttributeProto, FunctionProto,
    GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, SparseTensorProto,
    StringStringEntryProto, TensorAnnotation, TensorProto, TrainingInfoProto, ValueInfoProto,
};
use ortho_ir::output::{commit_all, PendingFile};
use ortho_ir::tensor::Storage;
use ortho_ir::{Attr, AttrKind, AttrValue, GraphId, Module, Op, OpsetImport, TensorId};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Protobuf cannot encode a message of 2 GiB or more; stay a little below it.
const PROTOBUF_LIMIT: u64 = (2u64 << 30) - (1 << 20);
/// Tensors at least this large go to external data when the limit forces it.
const AUTO_EXTERNAL_MIN_BYTES: u64 = 1024;
/// Alignment of tensors in the external data file, so they can be mapped and read vectorized.
const EXTERNAL_ALIGN: u64 = 64;

/// How to write a model.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Put every tensor of at least this many bytes into `<output>.data`; `None` lets the
    /// exporter decide (external data only when the model would exceed 2 GiB).
    pub external_min_bytes: Option<u64>,
    /// Files that must not be overwritten (the input model and its external data).
    pub protected: Vec<PathBuf>,
}

/// What was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportStats {
    pub model_bytes: u64,
    pub external_bytes: u64,
    pub external_tensors: usize,
    /// External data was used because the model would have exceeded the protobuf limit.
    pub external_forced: bool,
}

struct Exporter<'m> {
    m: &'m Module,
    path: PathBuf,
    /// When set, tensors of at least this many bytes in the main graph go external.
    external_min: Option<u64>,
    data_file_name: String,
    external: Vec<&'m [u8]>,
    external_offset: u64,
}

/// Writes `m` to `path` as ONNX.
pub fn export_file(
    m: &Module,
    path: &Path,
    opts: &ExportOptions,
) -> Result<ExportStats, OnnxError> {
    let err = |message: String| OnnxError::Model {
        path: path.to_path_buf(),
        message,
    };
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| err("the output path has no file name".into()))?;
    check_mapped_sizes(m)?;
    // The exporter recurses into subgraphs, and onnx reads back only so many levels.
    let depth = ortho_ir::limits::module_graph_depth(m);
    if depth > ortho_ir::limits::MAX_GRAPH_DEPTH {
        return Err(err(format!(
            "subgraphs nested {depth} levels deep, more than the {} that ONNX readers accept",
            ortho_ir::limits::MAX_GRAPH_DEPTH
        )));
    }
    let data_file_name = format!("{file_name}.data");
    let dir = ortho_ir::output::parent_dir(path);
    let data_path = dir.join(&data_file_name);
    // Every file the module's weights are mapped from is protected too: writing over a mapped
    // file would corrupt the very bytes being written.
    let mut protected = opts.protected.clone();
    for (_, t) in m.tensors.iter() {
        if let Storage::Mapped { backing, .. } = &t.storage {
            protected.push(PathBuf::from(backing.describe()));
        }
    }
    protected.sort();
    protected.dedup();
    for target in [path, data_path.as_path()] {
        if let Ok(t) = target.canonicalize() {
            for p in &protected {
                if p.canonicalize().is_ok_and(|c| c == t) {
                    return Err(err(format!(
                        "refusing to overwrite the input file '{}'",
                        p.display()
                    )));
                }
            }
        }
    }
    let mut ex = Exporter {
        m,
        path: path.to_path_buf(),
        external_min: opts.external_min_bytes,
        data_file_name,
        external: Vec::new(),
        external_offset: 0,
    };
    let (mut model, mut inits) = ex.model()?;
    let mut forced = false;
    if ex.external_min.is_none() && encoded_len(&model, &inits) > PROTOBUF_LIMIT {
        forced = true;
        ex = Exporter {
            external_min: Some(AUTO_EXTERNAL_MIN_BYTES),
            external: Vec::new(),
            external_offset: 0,
            ..ex
        };
        (model, inits) = ex.model()?;
        if encoded_len(&model, &inits) > PROTOBUF_LIMIT {
            return Err(err(
                "the model exceeds 2 GiB even with its large tensors in external data".into(),
            ));
        }
    }
    // Both outputs go through exclusive temporaries next to their targets (see
    // `ortho_ir::output`); they are renamed into place together, and on any error both are
    // removed (dropping an uncommitted `PendingFile` deletes it).
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| OnnxError::Io {
            path: p.clone(),
            source,
        }
    };
    let mut stats = ExportStats {
        external_forced: forced,
        external_tensors: ex.external.len(),
        ..Default::default()
    };
    let mut pending = Vec::new();
    if !ex.external.is_empty() {
        let mut data = PendingFile::create(&data_path).map_err(io(&data_path))?;
        let f = data.file().try_clone().map_err(io(&data_path))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let mut off = 0u64;
        for bytes in &ex.external {
            let pad = off.next_multiple_of(EXTERNAL_ALIGN) - off;
            w.write_all(&vec![0u8; pad as usize])
                .map_err(io(data.temp_path()))?;
            w.write_all(bytes).map_err(io(data.temp_path()))?;
            off += pad + bytes.len() as u64;
        }
        w.into_inner().map_err(|e| OnnxError::Io {
            path: data.temp_path().to_path_buf(),
            source: e.into_error(),
        })?;
        stats.external_bytes = off;
        pending.push(data);
    }
    let mut model_file = PendingFile::create(path).map_err(io(path))?;
    let f = model_file.file().try_clone().map_err(io(path))?;
    let mut w = FileSink {
        w: BufWriter::with_capacity(1 << 20, f),
        sources: mapped_sources(m),
        kernel_copy: true,
    };
    stats.model_bytes =
        write_model_streaming(&mut w, &model, &inits).map_err(io(model_file.temp_path()))?;
    w.w.into_inner().map_err(|e| OnnxError::Io {
        path: model_file.temp_path().to_path_buf(),
        source: e.into_error(),
    })?;
    // No fsync: the rename already guarantees that readers see either nothing or the whole
    // file when this process fails; durability across power loss is the caller's choice
    // (and `cp`, the baseline users compare with, does not sync either).
    // The model is renamed last: a model never points at data that is not there yet.
    pending.push(model_file);
    commit_all(pending).map_err(io(path))?;
    Ok(stats)
}

fn opsets(o: &[OpsetImport]) -> Vec<OperatorSetIdProto> {
    o.iter()
        .map(|o| {
            let mut p = OperatorSetIdProto::new();
            p.domain = o.domain.clone();
            p.version = o.version;
            p
        })
        .collect()
}

fn props(p: &[(String, String)]) -> Vec<StringStringEntryProto> {
    p.iter()
        .map(|(k, v)| {
            let mut e = StringStringEntryProto::new();
            e.key = k.clone();
            e.value = v.clone();
            e
        })
        .collect()
}

fn value_info(name: &str, ty: &ortho_ir::Type) -> ValueInfoProto {
    let mut vi = ValueInfoProto::new();
    vi.name = name.to_string();
    vi.type_ = type_to_proto(ty).into();
    vi
}

impl<'m> Exporter<'m> {
    fn err(&self, message: impl Into<String>) -> OnnxError {
        OnnxError::Model {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    fn model(&mut self) -> Result<(ModelProto, Vec<(TensorProto, &'m [u8])>), OnnxError> {
        let m = self.m;
        let mut mp = ModelProto::new();
        mp.ir_version = m.meta.ir_version;
        mp.producer_name = m.meta.producer_name.clone();
        mp.producer_version = m.meta.producer_version.clone();
        mp.domain = m.meta.domain.clone();
        mp.model_version = m.meta.model_version;
        mp.doc_string = m.meta.doc.clone();
        mp.metadata_props = props(&m.meta.metadata_props);
        mp.opset_import = opsets(&m.opsets);
        for f in &m.opaque_fields {
            if f.field == 20 {
                let t = TrainingInfoProto::parse_from_bytes(&f.bytes)
                    .map_err(|e| self.err(format!("training_info: {e}")))?;
                mp.training_info.push(t);
            }
        }
        for f in &m.functions {
            let mut fp = FunctionProto::new();
            fp.name = f.name.clone();
            fp.domain = f.domain.clone();
            fp.overload = f.overload.clone();
            fp.attribute = f.attributes.clone();
            for a in &f.attribute_defaults {
                fp.attribute_proto.push(self.attr(a)?);
            }
            fp.opset_import = opsets(&f.opsets);
            fp.doc_string = f.doc.clone();
            fp.metadata_props = props(&f.metadata_props);
            let (gp, _) = self.graph(f.graph, false)?;
            fp.input = gp.input.iter().map(|v| v.name.clone()).collect();
            fp.output = gp.output.iter().map(|v| v.name.clone()).collect();
            fp.node = gp.node;
            fp.value_info = gp.value_info;
            mp.functions.push(fp);
        }
        let (gp, inits) = self.graph(m.main, true)?;
        mp.graph = protobuf::MessageField::some(gp);
        Ok((mp, inits))
    }

    /// Converts a graph. For the main graph (`top`) initializers are returned separately with
    /// their bytes borrowed; for subgraphs they are embedded with copied bytes.
    fn graph(
        &mut self,
        gid: GraphId,
        top: bool,
    ) -> Result<(GraphProto, Vec<(TensorProto, &'m [u8])>), OnnxError> {
        let g = self.m.graph(gid);
        let mut gp = GraphProto::new();
        gp.name = g.name.clone();
        gp.doc_string = g.doc.clone();
        gp.metadata_props = props(&g.extra.metadata_props);
        for b in &g.extra.quantization_annotations {
            gp.quantization_annotation.push(
                TensorAnnotation::parse_from_bytes(b)
                    .map_err(|e| self.err(format!("quantization annotation: {e}")))?,
            );
        }
        let order = g.toposort().map_err(|c| {
            self.err(format!(
                "graph '{}': cycle through {}",
                g.name,
                g.describe(c.node)
            ))
        })?;
        let mut inits: Vec<(TensorProto, &'m [u8])> = Vec::new();
        let mut push_init = |ex: &mut Self, name: &str, t: TensorId| -> Result<(), OnnxError> {
            let (mut tp, bytes) = ex.tensor(t, top)?;
            tp.name = name.to_string();
            inits.push((tp, bytes));
            Ok(())
        };
        for &i in g.inputs() {
            let n = g.node(i);
            let o = &n.outputs[0];
            gp.input.push(value_info(&o.name, &o.ty));
            if let Op::Input { default: Some(t) } = n.op {
                push_init(self, &o.name, t)?;
            }
        }
        let output_values: std::collections::HashSet<_> = g
            .outputs
            .iter()
            .filter(|o| g.value_name(o.value) == o.name)
            .map(|o| o.value)
            .collect();
        for id in order {
            let n = g.node(id);
            match &n.op {
                Op::Input { .. } | Op::Capture => {}
                Op::Const(t) => push_init(self, &n.outputs[0].name, *t)?,
                op => {
                    let (domain, op_type, attrs) = op.to_parts().unwrap_or_default();
                    let mut np = NodeProto::new();
                    np.domain = domain;
                    np.op_type = op_type;
                    np.name = n.name.clone();
                    np.doc_string = n.doc.clone();
                    np.input = n
                        .operands()
                        .iter()
                        .map(|o| o.map(|v| g.value_name(v).to_string()).unwrap_or_default())
                        .collect();
                    // Trailing omitted operands are dropped, as ONNX writers do.
                    while np.input.last().is_some_and(String::is_empty) {
                        np.input.pop();
                    }
                    np.output = n.outputs.iter().map(|o| o.name.clone()).collect();
                    for a in &attrs {
                        np.attribute.push(self.attr(a)?);
                    }
                    gp.node.push(np);
                    for (k, o) in n.outputs.iter().enumerate() {
                        let v = ortho_ir::ValueId {
                            node: id,
                            output: k as u32,
                        };
                        if !o.name.is_empty() && !o.ty.is_unknown() && !output_values.contains(&v) {
                            gp.value_info.push(value_info(&o.name, &o.ty));
                        }
                    }
                }
            }
        }
        for o in &g.outputs {
            let vname = g.value_name(o.value);
            if vname != o.name {
                // The value feeding this output has another name (a pass replaced it): keep the
                // model's interface by renaming through an Identity.
                let mut np = NodeProto::new();
                np.op_type = "Identity".into();
                np.input = vec![vname.to_string()];
                np.output = vec![o.name.clone()];
                gp.node.push(np);
            }
            gp.output.push(value_info(&o.name, g.value_type(o.value)));
        }
        if !top {
            for (mut tp, bytes) in inits.drain(..) {
                if tp.raw_data.is_empty() && !bytes.is_empty() {
                    tp.raw_data = bytes.to_vec();
                }
                gp.initializer.push(tp);
            }
        }
        Ok((gp, inits))
    }

    /// A tensor's header and its raw bytes. In the main graph, large tensors may be routed to
    /// the external data file instead (the header then points there and the bytes are empty).
    fn tensor(&mut self, t: TensorId, top: bool) -> Result<(TensorProto, &'m [u8]), OnnxError> {
        let td = self.m.tensor(t);
        let mut tp = TensorProto::new();
        tp.dims = td.dims.clone();
        tp.data_type = dtype_code(td.dtype);
        tp.name = td.name.clone();
        tp.doc_string = td.doc.clone();
        match &td.storage {
            Storage::Strings(s) => {
                tp.string_data = s.clone();
                Ok((tp, &[]))
            }
            Storage::Elided { .. } => Err(self.err(format!(
                "tensor '{}' has no data (it was elided in the .oir text this module was parsed from); print with --elide-above=none to keep data",
                td.name
            ))),
            _ => {
                let bytes = td.bytes().ok_or_else(|| self.err(format!("tensor '{}': its data is out of bounds of its file", td.name)))?;
                if top && self.external_min.is_some_and(|min| bytes.len() as u64 >= min && !bytes.is_empty()) {
                    let off = self.external_offset.next_multiple_of(EXTERNAL_ALIGN);
                    self.external_offset = off + bytes.len() as u64;
                    self.external.push(bytes);
                    tp.data_location = DataLocation::EXTERNAL.into();
                    tp.external_data = props(&[
                        ("location".into(), self.data_file_name.clone()),
                        ("offset".into(), off.to_string()),
                        ("length".into(), bytes.len().to_string()),
                    ]);
                    Ok((tp, &[]))
                } else {
                    Ok((tp, bytes))
                }
            }
        }
    }

    fn attr(&mut self, a: &Attr) -> Result<AttributeProto, OnnxError> {
        let mut p = AttributeProto::new();
        p.name = a.name.clone();
        p.doc_string = a.doc.clone();
        let full = |ex: &mut Self, t: TensorId| -> Result<TensorProto, OnnxError> {
            let (mut tp, bytes) = ex.tensor(t, false)?;
            tp.raw_data = bytes.to_vec();
            Ok(tp)
        };
        let kind = match &a.value {
            AttrValue::Float(x) => {
                p.f = *x;
                AttrKind::Float
            }
            AttrValue::Int(x) => {
                p.i = *x;
                AttrKind::Int
            }
            AttrValue::String(s) => {
                p.s = s.clone();
                AttrKind::String
            }
            AttrValue::Tensor(t) => {
                p.t = protobuf::MessageField::some(full(self, *t)?);
                AttrKind::Tensor
            }
            AttrValue::Graph(g) => {
                p.g = protobuf::MessageField::some(self.graph(*g, false)?.0);
                AttrKind::Graph
            }
            AttrValue::SparseTensor(b) => {
                p.sparse_tensor = protobuf::MessageField::some(
                    SparseTensorProto::parse_from_bytes(b)
                        .map_err(|e| self.err(format!("attribute '{}': {e}", a.name)))?,
                );
                AttrKind::SparseTensor
            }
            AttrValue::Type(t) => {
                p.tp = type_to_proto(t).into();
                AttrKind::Type
            }
            AttrValue::Floats(v) => {
                p.floats = v.clone();
                AttrKind::Floats
            }
            AttrValue::Ints(v) => {
                p.ints = v.clone();
                AttrKind::Ints
            }
            AttrValue::Strings(v) => {
                p.strings = v.clone();
                AttrKind::Strings
            }
            AttrValue::Tensors(v) => {
                for t in v {
                    let tp = full(self, *t)?;
                    p.tensors.push(tp);
                }
                AttrKind::Tensors
            }
            AttrValue::Graphs(v) => {
                for g in v {
                    let gp = self.graph(*g, false)?.0;
                    p.graphs.push(gp);
                }
                AttrKind::Graphs
            }
            AttrValue::SparseTensors(v) => {
                for b in v {
                    p.sparse_tensors.push(
                        SparseTensorProto::parse_from_bytes(b)
                            .map_err(|e| self.err(format!("attribute '{}': {e}", a.name)))?,
                    );
                }
                AttrKind::SparseTensors
            }
            AttrValue::Types(v) => {
                p.type_protos = v.iter().filter_map(type_to_proto).collect();
                AttrKind::Types
            }
            AttrValue::Ref { name, kind } => {
                p.ref_attr_name = name.clone();
                *kind
            }
        };
        p.type_ = attr_type(kind).into();
        // The proto3 messages omit scalars equal to their default, but ONNX readers use proto2
        // presence: an INT attribute without `i` is invalid to the checker. Write such zeros as
        // explicit fields through the unknown-field list (f = 2 fixed32, i = 3 varint, s = 4).
        if let AttrValue::Float(x) = a.value {
            if x == 0.0 {
                p.f = 0.0;
                p.special_fields
                    .mut_unknown_fields()
                    .add_fixed32(2, x.to_bits());
            }
        }
        if a.value == AttrValue::Int(0) {
            p.special_fields.mut_unknown_fields().add_varint(3, 0);
        }
        if a.value == AttrValue::String(Vec::new()) {
            p.special_fields
                .mut_unknown_fields()
                .add_length_delimited(4, Vec::new());
        }
        Ok(p)
    }
}

fn attr_type(k: AttrKind) -> AttributeType {
    match k {
        AttrKind::Float => AttributeType::FLOAT,
        AttrKind::Int => AttributeType::INT,
        AttrKind::String => AttributeType::STRING,
        AttrKind::Tensor => AttributeType::TENSOR,
        AttrKind::Graph => AttributeType::GRAPH,
        AttrKind::SparseTensor => AttributeType::SPARSE_TENSOR,
        AttrKind::Type => AttributeType::TYPE_PROTO,
        AttrKind::Floats => AttributeType::FLOATS,
        AttrKind::Ints => AttributeType::INTS,
        AttrKind::Strings => AttributeType::STRINGS,
        AttrKind::Tensors => AttributeType::TENSORS,
        AttrKind::Graphs => AttributeType::GRAPHS,
        AttrKind::SparseTensors => AttributeType::SPARSE_TENSORS,
        AttrKind::Types => AttributeType::TYPE_PROTOS,
        AttrKind::Undefined => AttributeType::UNDEFINED,
    }
}

/// The mapped files behind a module's weights: (their bytes, the open file).
/// Refuses to export from an input file that shrank since it was mapped: reading the mapping
/// past the file's new end would kill the process with SIGBUS. (A file truncated during the
/// write itself is not caught; this covers the common case of an input replaced or cut while
/// the passes ran.)
fn check_mapped_sizes(m: &Module) -> Result<(), OnnxError> {
    for (b, f) in mapped_sources(m) {
        let path = PathBuf::from(
            m.tensors
                .iter()
                .find_map(|(_, t)| match &t.storage {
                    Storage::Mapped { backing, .. } if backing.bytes().as_ptr() == b.as_ptr() => {
                        Some(backing.describe())
                    }
                    _ => None,
                })
                .unwrap_or_default(),
        );
        let len = f.metadata().map_err(|source| OnnxError::Io {
            path: path.clone(),
            source,
        })?;
        if len.len() < b.len() as u64 {
            return Err(OnnxError::Model {
                path,
                message: format!(
                    "the input file shrank from {} to {} bytes while in use (truncated or rewritten by another process)",
                    b.len(),
                    len.len()
                ),
            });
        }
    }
    Ok(())
}

fn mapped_sources(m: &Module) -> Vec<(&[u8], &File)> {
    let mut v: Vec<(&[u8], &File)> = Vec::new();
    for (_, t) in m.tensors.iter() {
        if let Storage::Mapped { backing, .. } = &t.storage {
            if let Some(f) = backing.file() {
                let b = backing.bytes();
                if !v.iter().any(|(x, _)| x.as_ptr() == b.as_ptr()) {
                    v.push((b, f));
                }
            }
        }
    }
    v
}

/// The model file writer: buffered for the small pieces, and for large raw tensors that lie in a
/// mapped input file, an in-kernel `copy_file_range` from that file (what `cp` does), which
/// avoids touching the mapping at all.
struct FileSink<'a> {
    w: BufWriter<File>,
    sources: Vec<(&'a [u8], &'a File)>,
    /// Cleared after the kernel refuses once (another filesystem, an old kernel).
    kernel_copy: bool,
}

impl Write for FileSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.w.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

impl RawSink for FileSink<'_> {
    fn write_raw(&mut self, raw: &[u8]) -> std::io::Result<()> {
        const MIN_KERNEL_COPY: usize = 1 << 16;
        if self.kernel_copy && raw.len() >= MIN_KERNEL_COPY {
            let p = raw.as_ptr() as usize;
            let src = self.sources.iter().find(|(b, _)| {
                let base = b.as_ptr() as usize;
                p >= base && p + raw.len() <= base + b.len()
            });
            if let Some(&(b, file)) = src {
                let offset = (p - b.as_ptr() as usize) as i64;
                self.w.flush()?;
                match copy_range(file, offset, self.w.get_ref(), raw.len()) {
                    Ok(0) => return Ok(()),
                    // Nothing was copied yet: fall back to an ordinary write from now on.
                    Ok(_) => self.kernel_copy = false,
                    Err(e) => return Err(e),
                }
            }
        }
        self.w.write_all(raw)
    }
}

/// Copies `len` bytes from `src` at `offset` to the current position of `dst` inside the kernel.
/// Returns the number of bytes still to copy when the kernel refuses the very first call
/// (`len`), so the caller can fall back to `write`; 0 when everything was copied.
fn copy_range(src: &File, offset: i64, dst: &File, len: usize) -> std::io::Result<usize> {
    use std::os::unix::io::AsRawFd;
    let mut off_in: libc::loff_t = offset;
    let mut left = len;
    while left > 0 {
        // SAFETY: both descriptors are open for the duration of the call; off_in is a valid
        // pointer; a null off_out makes the kernel use and advance dst's file position.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                std::ptr::null_mut(),
                left,
                0,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if left == len
                && matches!(
                    e.raw_os_error(),
                    Some(
                        libc::EXDEV | libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP | libc::EBADF
                    )
                )
            {
                return Ok(len);
            }
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "copy_file_range copied nothing",
            ));
        }
        left -= n as usize;
    }
    Ok(0)
}
