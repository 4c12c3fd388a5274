//! Hostile and malformed inputs: each must give a clear error that names the file, tensor or
//! node, a non-zero exit status, and no output file. Unknown ops are not errors.

mod common;

use common::{run, TempDir};
use onnx_protobuf::{
    tensor_proto::DataLocation, type_proto, GraphProto, Message, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TypeProto, ValueInfoProto,
};
use std::path::Path;

fn vi(name: &str, dims: &[i64]) -> ValueInfoProto {
    let mut t = type_proto::Tensor::new();
    t.elem_type = 1;
    let mut shape = onnx_protobuf::TensorShapeProto::new();
    for &d in dims {
        let mut dim = onnx_protobuf::tensor_shape_proto::Dimension::new();
        dim.value = Some(onnx_protobuf::tensor_shape_proto::dimension::Value::DimValue(d));
        shape.dim.push(dim);
    }
    t.shape = protobuf::MessageField::some(shape);
    let mut tp = TypeProto::new();
    tp.value = Some(type_proto::Value::TensorType(t));
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = protobuf::MessageField::some(tp);
    v
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = name.into();
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = outputs.iter().map(|s| s.to_string()).collect();
    n
}

fn weight(name: &str) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = 1;
    t.dims = vec![2];
    t.raw_data = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    t
}

/// y = Relu(x + w): a valid model the cases below break one way each.
fn model() -> ModelProto {
    let mut g = GraphProto::new();
    g.name = "g".into();
    g.input.push(vi("x", &[2]));
    g.output.push(vi("y", &[2]));
    g.initializer.push(weight("w"));
    g.node.push(node("Add", "add0", &["x", "w"], &["s"]));
    g.node.push(node("Relu", "relu0", &["s"], &["y"]));
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let mut o = OperatorSetIdProto::new();
    o.version = 17;
    m.opset_import.push(o);
    m.graph = protobuf::MessageField::some(g);
    m
}

fn write(dir: &Path, name: &str, m: &ModelProto) -> String {
    let p = dir.join(name);
    std::fs::write(&p, m.write_to_bytes().expect("encode")).expect("write");
    p.to_string_lossy().into_owned()
}

/// Runs the CLI on `input` and asserts failure, no output, and that stderr mentions each of `needles`.
fn assert_refused(dir: &Path, input: &str, needles: &[&str]) {
    let out = dir.join("out.onnx");
    let r = run(&[input, "-o", out.to_str().expect("utf8")]);
    assert_ne!(
        r.code, 0,
        "expected failure, got success; stderr: {}",
        r.stderr
    );
    for n in needles {
        assert!(
            r.stderr.contains(n),
            "stderr should mention {n:?}:\n{}",
            r.stderr
        );
    }
    assert!(!out.exists(), "no output file may be written on error");
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left behind: {leftovers:?}"
    );
}

#[test]
fn valid_model_round_trips() {
    let d = TempDir::new("bad-valid");
    let input = write(d.path(), "m.onnx", &model());
    let out = d.path().join("out.onnx");
    let r = run(&[&input, "-o", out.to_str().expect("utf8")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let back = ModelProto::parse_from_bytes(&std::fs::read(&out).expect("read")).expect("parse");
    assert_eq!(back.graph.node.len(), 2);
    assert_eq!(back.graph.initializer[0].raw_data, weight("w").raw_data);
}

#[test]
fn truncated_file() {
    let d = TempDir::new("bad-trunc");
    let bytes = model().write_to_bytes().expect("encode");
    let p = d.path().join("trunc.onnx");
    std::fs::write(&p, &bytes[..bytes.len() - 7]).expect("write");
    assert_refused(
        d.path(),
        p.to_str().expect("utf8"),
        &["trunc.onnx", "not a valid ONNX model"],
    );
}

#[test]
fn random_bytes() {
    let d = TempDir::new("bad-random");
    // A fixed xorshift stream: deterministic garbage.
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect();
    let p = d.path().join("random.onnx");
    std::fs::write(&p, bytes).expect("write");
    assert_refused(d.path(), p.to_str().expect("utf8"), &["random.onnx"]);
}

#[test]
fn missing_initializer() {
    let d = TempDir::new("bad-missing");
    let mut m = model();
    m.graph.as_mut().expect("graph").initializer.clear();
    let input = write(d.path(), "m.onnx", &m);
    assert_refused(
        d.path(),
        &input,
        &["m.onnx", "Add 'add0'", "input 'w' is not produced"],
    );
}

#[test]
fn edge_to_nothing() {
    let d = TempDir::new("bad-edge");
    let mut m = model();
    m.graph.as_mut().expect("graph").output[0].name = "nowhere".into();
    let input = write(d.path(), "m.onnx", &m);
    assert_refused(
        d.path(),
        &input,
        &["m.onnx", "output 'nowhere' is not produced"],
    );
}

#[test]
fn cycle() {
    let d = TempDir::new("bad-cycle");
    let mut m = model();
    let g = m.graph.as_mut().expect("graph");
    // add0 now reads relu0's result, and relu0 reads add0's: a two-node cycle.
    g.node[0].input[0] = "y".into();
    let input = write(d.path(), "m.onnx", &m);
    assert_refused(d.path(), &input, &["cycle", "add0"]);
}

#[test]
fn duplicate_value_names() {
    let d = TempDir::new("bad-dup");
    let mut m = model();
    let g = m.graph.as_mut().expect("graph");
    g.node.push(node("Neg", "neg0", &["x"], &["s"]));
    let input = write(d.path(), "m.onnx", &m);
    assert_refused(
        d.path(),
        &input,
        &["m.onnx", "Neg 'neg0'", "'s' is produced more than once"],
    );
}

#[test]
fn dims_product_overflows() {
    let d = TempDir::new("bad-overflow");
    let mut m = model();
    let w = &mut m.graph.as_mut().expect("graph").initializer[0];
    w.dims = vec![1 << 40, 1 << 40];
    let input = write(d.path(), "m.onnx", &m);
    assert_refused(d.path(), &input, &["m.onnx", "tensor 'w'", "overflows"]);
}

#[test]
fn data_size_mismatch() {
    let d = TempDir::new("bad-size");
    let mut m = model();
    m.graph.as_mut().expect("graph").initializer[0].dims = vec![3];
    let input = write(d.path(), "m.onnx", &m);
    assert_refused(
        d.path(),
        &input,
        &["tensor 'w'", "has 8 bytes of data", "needs 12"],
    );
}

fn external(m: &mut ModelProto, location: &str, offset: u64, length: u64) {
    let w = &mut m.graph.as_mut().expect("graph").initializer[0];
    w.raw_data.clear();
    w.data_location = DataLocation::EXTERNAL.into();
    for (k, v) in [
        ("location", location.to_string()),
        ("offset", offset.to_string()),
        ("length", length.to_string()),
    ] {
        let mut e = StringStringEntryProto::new();
        e.key = k.into();
        e.value = v;
        w.external_data.push(e);
    }
}

#[test]
fn external_data_works_inside_the_folder() {
    let d = TempDir::new("ext-ok");
    std::fs::write(
        d.path().join("w.bin"),
        [0u8; 4]
            .iter()
            .chain(&weight("w").raw_data)
            .copied()
            .collect::<Vec<u8>>(),
    )
    .expect("write");
    let mut m = model();
    external(&mut m, "w.bin", 4, 8);
    let input = write(d.path(), "m.onnx", &m);
    let out = d.path().join("out.onnx");
    let r = run(&[&input, "-o", out.to_str().expect("utf8")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let back = ModelProto::parse_from_bytes(&std::fs::read(&out).expect("read")).expect("parse");
    assert_eq!(
        back.graph.initializer[0].raw_data,
        weight("w").raw_data,
        "external data is read and inlined"
    );
}

#[test]
fn external_data_with_dotdot() {
    let d = TempDir::new("ext-dotdot");
    let mut m = model();
    external(&mut m, "../secret.bin", 0, 8);
    let input = write(d.path(), "m.onnx", &m);
    assert_refused(d.path(), &input, &["tensor 'w'", "'../secret.bin'", ".."]);
}

#[test]
fn external_data_absolute_path() {
    let d = TempDir::new("ext-abs");
    let mut m = model();
    external(&mut m, "/etc/passwd", 0, 8);
    let input = write(d.path(), "m.onnx", &m);
    assert_refused(
        d.path(),
        &input,
        &["tensor 'w'", "'/etc/passwd'", "absolute"],
    );
}

#[test]
fn external_data_symlink_escape() {
    let d = TempDir::new("ext-link");
    let outside = TempDir::new("ext-link-outside");
    std::fs::write(outside.path().join("secret.bin"), [7u8; 8]).expect("write");
    std::os::unix::fs::symlink(outside.path().join("secret.bin"), d.path().join("w.bin"))
        .expect("symlink");
    let mut m = model();
    external(&mut m, "w.bin", 0, 8);
    let input = write(d.path(), "m.onnx", &m);
    assert_refused(
        d.path(),
        &input,
        &["tensor 'w'", "outside the model's folder"],
    );
}

#[test]
fn external_data_past_end() {
    let d = TempDir::new("ext-past");
    std::fs::write(d.path().join("w.bin"), [0u8; 8]).expect("write");
    let mut m = model();
    external(&mut m, "w.bin", 4, 8);
    let input = write(d.path(), "m.onnx", &m);
    assert_refused(d.path(), &input, &["tensor 'w'", "past the end", "8 bytes"]);
}

#[test]
fn output_over_input_is_refused() {
    let d = TempDir::new("bad-overwrite");
    let input = write(d.path(), "m.onnx", &model());
    let before = std::fs::read(&input).expect("read");
    let r = run(&[&input, "-o", &input]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("refusing"), "{}", r.stderr);
    assert_eq!(
        std::fs::read(&input).expect("read"),
        before,
        "input untouched"
    );
}

#[test]
fn unknown_op_is_carried_through() {
    let d = TempDir::new("unknown-op");
    let mut m = model();
    let g = m.graph.as_mut().expect("graph");
    let mut n = node("FancyNewOp", "fancy", &["s"], &["y"]);
    n.domain = "com.example".into();
    let mut a = onnx_protobuf::AttributeProto::new();
    a.name = "knob".into();
    a.type_ = onnx_protobuf::attribute_proto::AttributeType::INTS.into();
    a.ints = vec![3, 1, 4];
    n.attribute.push(a);
    g.node[1] = n;
    let mut o = OperatorSetIdProto::new();
    o.domain = "com.example".into();
    o.version = 1;
    m.opset_import.push(o);
    let input = write(d.path(), "m.onnx", &m);
    let out = d.path().join("out.onnx");
    let r = run(&[&input, "-o", out.to_str().expect("utf8")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let back = ModelProto::parse_from_bytes(&std::fs::read(&out).expect("read")).expect("parse");
    let f = &back.graph.node[1];
    assert_eq!(
        (f.domain.as_str(), f.op_type.as_str(), f.name.as_str()),
        ("com.example", "FancyNewOp", "fancy")
    );
    assert_eq!(f.attribute[0].ints, vec![3, 1, 4]);
    assert_eq!(
        f.write_to_bytes().expect("enc"),
        m.graph.node[1].write_to_bytes().expect("enc"),
        "opaque node byte-for-byte"
    );
}
