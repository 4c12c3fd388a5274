//! Zero-copy import and streaming export of big ONNX models.
//!
//! Large models keep almost all of their bytes in the `raw_data` of the top-level graph's
//! initializers. rust-protobuf's `parse_from_bytes` copies every `raw_data` into its own `Vec`,
//! and `write_to_bytes` builds the whole encoded model in one more `Vec`, so a 10 GB model would
//! need 20 GB or more of memory. This module works on the protobuf wire format by hand at the
//! three levels that matter (ModelProto.graph = 7, GraphProto.initializer = 5,
//! TensorProto.raw_data = 9) and hands everything else to rust-protobuf, so peak memory stays
//! close to one model size: the input buffer (usually a memory map) or the output stream.
//!
//! A protobuf message is a sequence of (tag, value) fields in any order, and parsing a message
//! equals merging its fields one after another. Merging the runs of ordinary fields in place
//! (no copy) and appending the initializers afterwards therefore gives the same message.
//!
//! The streaming writer can emit models above 2 GiB, which protobuf-based readers (including
//! onnxruntime) refuse; [`encoded_len`] lets a caller check the size first and switch to
//! external data.

use std::io::{self, Write};
use std::ops::Range;

use onnx_protobuf::{GraphProto, ModelProto, TensorProto};
use protobuf::{Message, MessageField};

/// The wire-format field numbers this module handles by hand.
const MODEL_GRAPH: u64 = 7;
const GRAPH_INITIALIZER: u64 = 5;
const TENSOR_RAW_DATA: u64 = 9;
/// The corresponding one-byte tags with wire type 2 (length-delimited).
const TAG_GRAPH: u8 = 0x3a;
const TAG_INITIALIZER: u8 = 0x2a;
const TAG_RAW_DATA: u8 = 0x4a;

/// A parsed ModelProto whose top-level graph initializers' `raw_data` were NOT copied:
/// for each such initializer `model.graph.initializer[i].raw_data` is left empty and `raw`
/// records where the bytes are in the input buffer.
///
/// `raw` has one entry, in increasing `initializer` order, for every initializer whose encoding
/// contains a `raw_data` field (even an empty one). Initializers of nested graphs (If/Loop
/// bodies, training info, functions) and sparse initializers are parsed normally, with copies.
pub struct LazyModel {
    pub model: ModelProto,
    pub raw: Vec<RawRef>,
}

/// Where the `raw_data` of initializer `initializer` lies: `bytes[offset..offset + len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRef {
    pub initializer: usize,
    pub offset: usize,
    pub len: usize,
}

/// Why a buffer could not be parsed. Offsets are byte offsets into the whole input buffer.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("truncated varint at byte offset {offset}")]
    TruncatedVarint { offset: usize },
    #[error("varint longer than 10 bytes at byte offset {offset}")]
    MalformedVarint { offset: usize },
    #[error("length {len} at byte offset {offset} runs past the end of its message ({available} bytes left)")]
    LengthPastEnd {
        offset: usize,
        len: u64,
        available: usize,
    },
    #[error("invalid tag {tag} at byte offset {offset}")]
    InvalidTag { offset: usize, tag: u64 },
    #[error("invalid or unsupported wire type {wire_type} at byte offset {offset} (groups are rejected)")]
    InvalidWireType { offset: usize, wire_type: u8 },
    #[error("cannot decode {message}: {source}")]
    Decode {
        message: String,
        #[source]
        source: protobuf::Error,
    },
}

/// One field of a message: its number, wire type, the byte range of the whole field, and the
/// range of its value (for length-delimited fields, the payload without the length prefix).
struct Field {
    number: u64,
    wire_type: u8,
    start: usize,
    value: Range<usize>,
}

/// Reads a varint starting at `pos` that must end before `end`; returns it and the next offset.
fn read_varint(buf: &[u8], pos: usize, end: usize) -> Result<(u64, usize), WireError> {
    let mut value = 0u64;
    for i in 0..10 {
        let p = pos + i;
        let byte = match buf.get(p) {
            Some(&b) if p < end => b,
            _ => return Err(WireError::TruncatedVarint { offset: pos }),
        };
        // Bits beyond 64 in a tenth byte are dropped, as other protobuf decoders do.
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, p + 1));
        }
    }
    Err(WireError::MalformedVarint { offset: pos })
}

/// Returns `pos + len` if `len` bytes fit before `end`, comparing in u64 so no length overflows.
fn advance(pos: usize, len: u64, end: usize) -> Result<usize, WireError> {
    let available = end.saturating_sub(pos);
    if len > available as u64 {
        return Err(WireError::LengthPastEnd {
            offset: pos,
            len,
            available,
        });
    }
    Ok(pos + len as usize)
}

/// Reads the field starting at `pos`, which must lie entirely before `end`.
fn next_field(buf: &[u8], pos: usize, end: usize) -> Result<Field, WireError> {
    let (tag, p) = read_varint(buf, pos, end)?;
    let number = tag >> 3;
    let wire_type = (tag & 7) as u8;
    if tag > u64::from(u32::MAX) || number == 0 {
        return Err(WireError::InvalidTag { offset: pos, tag });
    }
    let value = match wire_type {
        0 => p..read_varint(buf, p, end)?.1,
        1 => p..advance(p, 8, end)?,
        2 => {
            let (len, q) = read_varint(buf, p, end)?;
            q..advance(q, len, end)?
        }
        5 => p..advance(p, 4, end)?,
        _ => {
            return Err(WireError::InvalidWireType {
                offset: pos,
                wire_type,
            })
        }
    };
    Ok(Field {
        number,
        wire_type,
        start: pos,
        value,
    })
}

/// Merges `bytes` (whole fields of `M`) into `msg`, naming `message` in errors.
fn merge<M: Message>(msg: &mut M, bytes: &[u8], message: &str) -> Result<(), WireError> {
    if bytes.is_empty() {
        return Ok(());
    }
    msg.merge_from_bytes(bytes)
        .map_err(|source| WireError::Decode {
            message: message.to_owned(),
            source,
        })
}

/// Scans the message in `buf[range]`: every length-delimited field numbered `special` goes to
/// `on_special` with its payload range, and the runs of other fields in between are merged
/// into `msg` without copying.
fn scan<M: Message>(
    buf: &[u8],
    range: Range<usize>,
    special: u64,
    msg: &mut M,
    message: &str,
    mut on_special: impl FnMut(Range<usize>) -> Result<(), WireError>,
) -> Result<(), WireError> {
    let end = range.end.min(buf.len());
    let mut pos = range.start.min(end);
    let mut run = pos;
    while pos < end {
        let field = next_field(buf, pos, end)?;
        pos = field.value.end;
        if field.number == special && field.wire_type == 2 {
            merge(msg, &buf[run..field.start], message)?;
            on_special(field.value)?;
            run = pos;
        }
    }
    merge(msg, &buf[run..end], message)
}

/// Parses an encoded ModelProto without copying the `raw_data` of the top-level graph's
/// initializers; see [`LazyModel`].
///
/// The result equals `ModelProto::parse_from_bytes(bytes)` once the raw data is put back, with
/// two exceptions. Groups (wire types 3 and 4, deprecated) at the hand-scanned levels are
/// rejected. A `graph` field that occurs more than once is merged, as the protobuf spec and
/// the C++ runtime behind onnx and onnxruntime do: later fields override or extend earlier
/// ones and initializers are appended in order. rust-protobuf 3.4 instead keeps only the last
/// graph, which would silently drop nodes and weights.
pub fn parse_model_lazy(bytes: &[u8]) -> Result<LazyModel, WireError> {
    let mut model = ModelProto::new();
    let mut graph: Option<GraphProto> = None;
    let mut initializers: Vec<TensorProto> = Vec::new();
    let mut raw = Vec::new();
    scan(
        bytes,
        0..bytes.len(),
        MODEL_GRAPH,
        &mut model,
        "ModelProto",
        |graph_range| {
            let graph = graph.get_or_insert_with(GraphProto::new);
            scan(
                bytes,
                graph_range,
                GRAPH_INITIALIZER,
                graph,
                "GraphProto",
                |tensor_range| {
                    let index = initializers.len();
                    let mut tensor = TensorProto::new();
                    let mut raw_range = None;
                    // The last raw_data field wins, as for any singular field.
                    let message = format!("TensorProto #{index}");
                    scan(
                        bytes,
                        tensor_range,
                        TENSOR_RAW_DATA,
                        &mut tensor,
                        &message,
                        |r| {
                            raw_range = Some(r);
                            Ok(())
                        },
                    )?;
                    if let Some(r) = raw_range {
                        raw.push(RawRef {
                            initializer: index,
                            offset: r.start,
                            len: r.len(),
                        });
                    }
                    initializers.push(tensor);
                    Ok(())
                },
            )
        },
    )?;
    if let Some(mut graph) = graph {
        // Runs never hold initializers: every length-delimited field 5 was taken out above.
        graph.initializer.extend(initializers);
        model.graph = MessageField::some(graph);
    }
    Ok(LazyModel { model, raw })
}

/// Number of bytes of `value` as a varint.
fn varint_len(value: u64) -> u64 {
    u64::from((64 - value.leading_zeros()).max(1).div_ceil(7))
}

/// Size of a length-delimited field with a one-byte tag and a payload of `len` bytes.
fn field_len(len: u64) -> u64 {
    1 + varint_len(len) + len
}

/// Payload size of one streamed initializer, given its header's size.
fn tensor_len(header_len: u64, raw: &[u8]) -> u64 {
    header_len
        + if raw.is_empty() {
            0
        } else {
            field_len(raw.len() as u64)
        }
}

/// Size in bytes that write_model_streaming would write (to decide whether a model exceeds
/// 2 GiB before writing).
pub fn encoded_len(model: &ModelProto, initializers: &[(TensorProto, &[u8])]) -> u64 {
    let graph_field = model
        .graph
        .as_ref()
        .map_or(0, |g| field_len(g.compute_size()));
    let head = model.compute_size().saturating_sub(graph_field);
    // Like rust-protobuf, an unset graph is omitted unless there are initializers to hold.
    if model.graph.is_none() && initializers.is_empty() {
        return head;
    }
    let body = model.graph.as_ref().map_or(0, |g| g.compute_size());
    let inits: u64 = initializers
        .iter()
        .map(|(h, raw)| field_len(tensor_len(h.compute_size(), raw)))
        .sum();
    head + field_len(body + inits)
}

/// A copy of `model` without its graph, built field by field so the graph is never cloned.
/// The exhaustive struct literal fails to compile if onnx-protobuf ever adds a field.
fn without_graph(model: &ModelProto) -> ModelProto {
    ModelProto {
        ir_version: model.ir_version,
        opset_import: model.opset_import.clone(),
        producer_name: model.producer_name.clone(),
        producer_version: model.producer_version.clone(),
        domain: model.domain.clone(),
        model_version: model.model_version,
        doc_string: model.doc_string.clone(),
        graph: MessageField::none(),
        metadata_props: model.metadata_props.clone(),
        training_info: model.training_info.clone(),
        functions: model.functions.clone(),
        special_fields: model.special_fields.clone(),
    }
}

/// Serializes a small message, turning protobuf errors into I/O errors.
fn to_bytes<M: Message>(msg: &M) -> io::Result<Vec<u8>> {
    msg.write_to_bytes().map_err(io::Error::other)
}

/// Writes `bytes` and counts them.
fn put<W: Write>(w: &mut W, written: &mut u64, bytes: &[u8]) -> io::Result<()> {
    w.write_all(bytes)?;
    *written += bytes.len() as u64;
    Ok(())
}

/// Writes a one-byte tag and a varint length.
fn put_header<W: Write>(w: &mut W, written: &mut u64, tag: u8, len: u64) -> io::Result<()> {
    let mut buf = [0u8; 11];
    buf[0] = tag;
    let mut n = 1;
    let mut v = len;
    while v >= 0x80 {
        buf[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    buf[n] = v as u8;
    put(w, written, &buf[..=n])
}

/// A writer that may copy large raw tensor bytes by a faster route than `write_all`
/// (the exporter copies ranges of mapped files inside the kernel).
pub trait RawSink: Write {
    fn write_raw(&mut self, raw: &[u8]) -> io::Result<()> {
        self.write_all(raw)
    }
}

impl RawSink for Vec<u8> {}

/// Writes a ModelProto. `model.graph.initializer` must be empty (the caller passes them
/// separately); each initializer is (header TensorProto with empty raw_data, raw bytes which,
/// when non-empty, are written as field raw_data=9).
/// Streams: never materializes the initializer bytes in a second buffer. Returns bytes written.
///
/// Should `model.graph.initializer` not be empty, those initializers are still written, after
/// `initializers`. Should a header carry raw_data as well as a
/// non-empty `raw`, both are written and `raw` wins on reading. Many small writes are made, so
/// `w` should be buffered.
pub fn write_model_streaming<W: RawSink>(
    w: &mut W,
    model: &ModelProto,
    initializers: &[(TensorProto, &[u8])],
) -> io::Result<u64> {
    let mut written = 0u64;
    put(w, &mut written, &to_bytes(&without_graph(model))?)?;
    if model.graph.is_none() && initializers.is_empty() {
        return Ok(written);
    }
    let body = match model.graph.as_ref() {
        Some(g) => to_bytes(g)?,
        None => Vec::new(),
    };
    // Every length is known before the graph starts, so nothing needs to be buffered.
    let header_lens: Vec<u64> = initializers.iter().map(|(h, _)| h.compute_size()).collect();
    let inits: u64 = initializers
        .iter()
        .zip(&header_lens)
        .map(|((_, raw), &h)| field_len(tensor_len(h, raw)))
        .sum();
    put_header(w, &mut written, TAG_GRAPH, body.len() as u64 + inits)?;
    // The initializers go after `node` (1) and `name` (2), where rust-protobuf puts them, so a
    // model without stray fields comes out byte for byte as `write_to_bytes` would write it.
    let mut split = 0;
    while let Ok(field) = next_field(&body, split, body.len()) {
        if field.number > 2 {
            break;
        }
        split = field.value.end;
    }
    put(w, &mut written, &body[..split])?;
    for ((header, raw), &header_len) in initializers.iter().zip(&header_lens) {
        let header_bytes = to_bytes(header)?;
        if header_bytes.len() as u64 != header_len {
            return Err(io::Error::other(
                "TensorProto size changed between compute_size and write",
            ));
        }
        put_header(
            w,
            &mut written,
            TAG_INITIALIZER,
            tensor_len(header_len, raw),
        )?;
        put(w, &mut written, &header_bytes)?;
        if !raw.is_empty() {
            put_header(w, &mut written, TAG_RAW_DATA, raw.len() as u64)?;
            w.write_raw(raw)?;
            written += raw.len() as u64;
        }
    }
    put(w, &mut written, &body[split..])?;
    Ok(written)
}

#[cfg(test)]
#[path = "tests/wire.rs"]
mod tests;
