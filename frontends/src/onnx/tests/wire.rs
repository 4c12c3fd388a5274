//! Tests of the zero-copy protobuf reader and the streaming writer.
#![allow(clippy::unwrap_used)]
use super::*;
use onnx_protobuf::{NodeProto, OperatorSetIdProto};

/// A model with two initializers (raw_data and float_data), a node and an opset import.
fn sample() -> ModelProto {
    let w = TensorProto {
        name: "w".into(),
        dims: vec![2, 2],
        data_type: 1,
        raw_data: (0..16).collect(),
        ..Default::default()
    };
    let b = TensorProto {
        name: "b".into(),
        dims: vec![2],
        data_type: 1,
        float_data: vec![1.0, 2.0],
        ..Default::default()
    };
    let node = NodeProto {
        op_type: "MatMul".into(),
        input: vec!["x".into(), "w".into()],
        output: vec!["y".into()],
        ..Default::default()
    };
    let x = onnx_protobuf::ValueInfoProto {
        name: "x".into(),
        ..Default::default()
    };
    let graph = GraphProto {
        name: "g".into(),
        node: vec![node],
        initializer: vec![w, b],
        input: vec![x],
        ..Default::default()
    };
    let (opset, graph) = (
        OperatorSetIdProto {
            version: 17,
            ..Default::default()
        },
        MessageField::some(graph),
    );
    ModelProto {
        ir_version: 8,
        producer_name: "test".into(),
        opset_import: vec![opset],
        graph,
        ..Default::default()
    }
}

/// Splits a model into (model without initializers, headers with empty raw_data, raw bytes).
fn split(model: &ModelProto) -> (ModelProto, Vec<TensorProto>, Vec<Vec<u8>>) {
    let mut head = model.clone();
    let mut headers = std::mem::take(&mut head.graph.mut_or_insert_default().initializer);
    let raws = headers
        .iter_mut()
        .map(|t| std::mem::take(&mut t.raw_data))
        .collect();
    (head, headers, raws)
}

/// Streams a model and returns (bytes, reported count, encoded_len).
fn stream(model: &ModelProto, headers: Vec<TensorProto>, raws: &[&[u8]]) -> (Vec<u8>, u64, u64) {
    let inits: Vec<(TensorProto, &[u8])> = headers.into_iter().zip(raws.iter().copied()).collect();
    let mut out = Vec::new();
    let n = write_model_streaming(&mut out, model, &inits).unwrap();
    (out, n, encoded_len(model, &inits))
}

/// Puts the raw data of a lazy parse back, giving what parse_from_bytes would give.
fn restore(lazy: LazyModel, bytes: &[u8]) -> ModelProto {
    let mut model = lazy.model;
    for r in &lazy.raw {
        let tensor = &mut model.graph.mut_or_insert_default().initializer[r.initializer];
        assert!(tensor.raw_data.is_empty());
        tensor.raw_data = bytes[r.offset..r.offset + r.len].to_vec();
    }
    model
}

/// Number of top-level graph fields; rust-protobuf's last-graph-wins differs from us above 1.
fn graph_fields(bytes: &[u8]) -> usize {
    let (mut pos, mut count) = (0, 0);
    while let Ok(f) = next_field(bytes, pos, bytes.len()) {
        count += usize::from(f.number == MODEL_GRAPH && f.wire_type == 2);
        pos = f.value.end;
    }
    count
}

/// Differential check: whenever the lazy parse succeeds, it agrees with rust-protobuf.
/// Encodings are compared because a mutated float may be NaN, which is unequal to itself.
fn check(bytes: &[u8]) {
    if let (Ok(lazy), true) = (parse_model_lazy(bytes), graph_fields(bytes) <= 1) {
        let reference = ModelProto::parse_from_bytes(bytes).unwrap();
        assert_eq!(
            restore(lazy, bytes).write_to_bytes().unwrap(),
            reference.write_to_bytes().unwrap()
        );
    }
}

#[test]
fn streaming_roundtrip_and_len() {
    let full = sample();
    let (head, headers, raws) = split(&full);
    let raws: Vec<&[u8]> = raws.iter().map(Vec::as_slice).collect();
    let (out, n, len) = stream(&head, headers, &raws);
    assert_eq!((n, len), (out.len() as u64, out.len() as u64));
    assert_eq!(ModelProto::parse_from_bytes(&out).unwrap(), full);
    assert_eq!(
        out,
        full.write_to_bytes().unwrap(),
        "same bytes as rust-protobuf's canonical order"
    );
    assert_eq!(stream(&ModelProto::new(), vec![], &[]), (vec![], 0, 0));
}

#[test]
fn lazy_parse_recovers_model() {
    let full = sample();
    let bytes = full.write_to_bytes().unwrap();
    let lazy = parse_model_lazy(&bytes).unwrap();
    assert_eq!(lazy.raw.len(), 1);
    let r = lazy.raw[0];
    assert_eq!((r.initializer, r.len), (0, 16));
    assert_eq!(
        &bytes[r.offset..r.offset + r.len],
        full.graph.initializer[0].raw_data.as_slice()
    );
    // Writing the lazy model back with its borrowed raw data reproduces the input exactly.
    let (head, headers, _) = split(&lazy.model);
    let (out, _, _) = stream(&head, headers, &[&bytes[r.offset..r.offset + r.len], &[]]);
    assert_eq!(out, bytes);
    assert_eq!(restore(lazy, &bytes), full);
}

#[test]
fn repeated_graph_fields_merge() {
    let mut bytes = sample().write_to_bytes().unwrap();
    let c = TensorProto {
        name: "c".into(),
        raw_data: vec![9, 9, 9],
        ..Default::default()
    };
    let extra = GraphProto {
        name: "renamed".into(),
        initializer: vec![c],
        ..Default::default()
    };
    bytes.extend(
        ModelProto {
            graph: MessageField::some(extra.clone()),
            ..Default::default()
        }
        .write_to_bytes()
        .unwrap(),
    );
    let lazy = parse_model_lazy(&bytes).unwrap();
    assert_eq!(
        lazy.raw.iter().map(|r| r.initializer).collect::<Vec<_>>(),
        vec![0, 2]
    );
    let mut expected = sample();
    expected
        .graph
        .mut_or_insert_default()
        .merge_from_bytes(&extra.write_to_bytes().unwrap())
        .unwrap();
    assert_eq!(
        (
            expected.graph.name.as_str(),
            expected.graph.node.len(),
            expected.graph.initializer.len()
        ),
        ("renamed", 1, 3)
    );
    assert_eq!(restore(lazy, &bytes), expected);
    // rust-protobuf 3.4 keeps only the last graph; we deliberately differ.
    assert_eq!(
        ModelProto::parse_from_bytes(&bytes)
            .unwrap()
            .graph
            .node
            .len(),
        0
    );
}

#[test]
fn truncated_and_random_inputs_never_panic() {
    let bytes = sample().write_to_bytes().unwrap();
    (0..bytes.len()).for_each(|n| check(&bytes[..n]));
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        (0..3).fold(state, |s, i| {
            state = s ^ [s << 13, s >> 7, s << 17][i];
            state
        })
    };
    for _ in 0..300 {
        let len = next() % 200;
        check(&(0..len).map(|_| next() as u8).collect::<Vec<_>>());
    }
    for _ in 0..2000 {
        let mut mutated = bytes.clone();
        for _ in 0..=next() % 3 {
            let i = (next() % mutated.len() as u64) as usize;
            mutated[i] ^= 1 << (next() % 8);
        }
        check(&mutated);
    }
}

#[test]
fn hostile_inputs_error() {
    let parse = |b: &[u8]| parse_model_lazy(b).err();
    let huge = [
        TAG_GRAPH, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
    ];
    assert!(matches!(
        parse(&huge),
        Some(WireError::LengthPastEnd {
            offset: 11,
            len: 0x8000_0000_0000_0000,
            available: 0
        })
    ));
    let max = [
        TAG_GRAPH, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0,
    ];
    assert!(matches!(
        parse(&max),
        Some(WireError::LengthPastEnd {
            len: u64::MAX,
            available: 1,
            ..
        })
    ));
    let long = [
        TAG_GRAPH, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    ];
    assert!(matches!(
        parse(&long),
        Some(WireError::MalformedVarint { offset: 1 })
    ));
    assert!(matches!(
        parse(&[TAG_GRAPH, 0x80]),
        Some(WireError::TruncatedVarint { offset: 1 })
    ));
    assert!(matches!(
        parse(&[0x0b]),
        Some(WireError::InvalidWireType {
            wire_type: 3,
            offset: 0
        })
    ));
    assert!(matches!(parse(&[0x00]), Some(WireError::InvalidTag { .. })));
    // A tensor name that is not UTF-8 is rejected by rust-protobuf and names the tensor.
    let bad = [TAG_GRAPH, 5, TAG_INITIALIZER, 3, 0x42, 1, 0xff];
    let err = parse(&bad).map(|e| e.to_string()).unwrap_or_default();
    assert!(err.starts_with("cannot decode TensorProto #0"), "{err}");
}
