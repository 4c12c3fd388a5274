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
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.contains(".tmp-") || n.contains(ortho_ir::output::TEMP_MARK)
        })
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

// ---- Output files: exclusive temporaries, non-regular targets, cleanup on every error path.

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn predictable_temporary_symlink_is_not_followed() {
    // The old temporary name `.out.onnx.tmp-PID` was predictable and opened following
    // symlinks: a link planted there made the run overwrite the link's target.
    let d = TempDir::new("out-tmp-link");
    let input = write(d.path(), "m.onnx", &model());
    let victim = d.path().join("victim");
    std::fs::write(&victim, b"precious").expect("write");
    let out = d.path().join("out.onnx");
    std::os::unix::fs::symlink(
        &victim,
        d.path()
            .join(format!(".out.onnx.tmp-{}", std::process::id())),
    )
    .expect("symlink");
    let r = run(&[&input, "-o", s(&out)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read(&victim).expect("read"), b"precious");
    ModelProto::parse_from_bytes(&std::fs::read(&out).expect("read")).expect("parse");
}

#[test]
fn symlink_output_is_replaced_not_written_through() {
    let d = TempDir::new("out-link");
    let input = write(d.path(), "m.onnx", &model());
    let victim = d.path().join("victim");
    std::fs::write(&victim, b"precious").expect("write");
    let out = d.path().join("out.oir");
    std::os::unix::fs::symlink(&victim, &out).expect("symlink");
    let r = run(&[&input, "-o", s(&out)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read(&victim).expect("read"), b"precious");
    let meta = std::fs::symlink_metadata(&out).expect("meta");
    assert!(meta.file_type().is_file());
}

#[test]
fn fifo_and_device_outputs_are_refused() {
    let d = TempDir::new("out-fifo");
    let input = write(d.path(), "m.onnx", &model());
    let fifo = d.path().join("pipe.onnx");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(st.success());
    for target in [s(&fifo), "/dev/null"] {
        let r = run(&[&input, "-o", target]);
        assert_eq!(r.code, 1, "{target}: {}", r.stderr);
        assert!(r.stderr.contains("not a regular file"), "{}", r.stderr);
    }
    use std::os::unix::fs::FileTypeExt;
    let ft = std::fs::symlink_metadata(&fifo).expect("meta").file_type();
    assert!(ft.is_fifo(), "the FIFO is still a FIFO");
    assert!(std::fs::symlink_metadata("/dev/null")
        .expect("meta")
        .file_type()
        .is_char_device());
    assert_eq!(listing(d.path()), vec!["m.onnx", "pipe.onnx"]);
}

#[test]
fn external_data_is_removed_when_the_model_cannot_be_written() {
    // The model's target is a non-empty folder: the final rename fails, and the external data
    // written before it must not stay behind.
    let d = TempDir::new("out-ext-fail");
    let input = write(d.path(), "m.onnx", &model());
    let out = d.path().join("out.onnx");
    std::fs::create_dir(&out).expect("mkdir");
    std::fs::write(out.join("keep"), b"x").expect("write");
    let r = run(&[&input, "-o", s(&out), "--external-data", "0"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(
        listing(d.path()),
        vec!["m.onnx", "out.onnx"],
        "{}",
        r.stderr
    );
}

#[test]
fn split_input_file_with_a_failing_case_writes_nothing() {
    let d = TempDir::new("out-split");
    let input = d.path().join("cases.oir");
    let m = write(d.path(), "m.onnx", &model());
    let good = run(&[&m, "-o", "-"]).stdout;
    assert!(good.contains("module"), "{good}");
    std::fs::write(&input, format!("{good}// -----\nnot a module\n")).expect("write");
    let out = d.path().join("out.oir");
    let r = run(&["--split-input-file", s(&input), "-o", s(&out)]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(!out.exists(), "a failed run writes no output");
    assert!(r.stderr.contains("was not written"), "{}", r.stderr);
    // All cases valid: the joined output goes to the file.
    std::fs::write(&input, format!("{good}// -----\n{good}")).expect("write");
    let r = run(&["--split-input-file", s(&input), "-o", s(&out)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = std::fs::read_to_string(&out).expect("read");
    assert_eq!(text.matches("// -----").count(), 1, "{text}");
    assert_eq!(listing(d.path()), vec!["cases.oir", "m.onnx", "out.oir"]);
    assert!(r.stdout.is_empty());
}

#[test]
fn stale_temporaries_of_a_killed_run_are_removed() {
    let d = TempDir::new("out-stale");
    let input = write(d.path(), "m.onnx", &model());
    // PIDs above the kernel's limit (2^22) never run: this is a killed run's partial output.
    let stale = d.path().join(format!(
        ".out.onnx{}4294967.Ab12Cd",
        ortho_ir::output::TEMP_MARK
    ));
    std::fs::write(&stale, vec![0u8; 4096]).expect("write");
    let out = d.path().join("out.onnx");
    let r = run(&[&input, "-o", s(&out)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(listing(d.path()), vec!["m.onnx", "out.onnx"]);
}

#[test]
fn dash_output_writes_to_stdout() {
    let d = TempDir::new("out-dash");
    let input = write(d.path(), "m.onnx", &model());
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ortho-opt"))
        .current_dir(d.path())
        .args(["m.onnx", "--emit=onnx", "-o", "-"])
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let back = ModelProto::parse_from_bytes(&o.stdout).expect("stdout is the model");
    assert_eq!(back.graph.node.len(), 2);
    // The textual form too; no file named '-' either way.
    let r = run(&[&input, "-o", "-"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("onnx.Relu"), "{}", r.stdout);
    assert_eq!(listing(d.path()), vec!["m.onnx"]);
}

/// A `.npy` file of `n` elements of numpy type `descr` with shape `[n]`, from their bytes.
fn npy(path: &Path, descr: &str, n: usize, data: &[u8]) {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({n},), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(header.len() as u16).to_le_bytes());
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    std::fs::write(path, b).expect("write npy");
}

/// A `.npy` file of f32 `values` with shape `[values.len()]`.
fn npy_f32(path: &Path, values: &[f32]) {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    npy(path, "<f4", values.len(), &data);
}

#[test]
fn run_outputs_do_not_write_through_symlinks() {
    let d = TempDir::new("run-link");
    let input = write(d.path(), "m.onnx", &model());
    let x = d.path().join("x.npy");
    npy_f32(&x, &[1.0, -5.0]);
    let out_dir = d.path().join("out");
    std::fs::create_dir(&out_dir).expect("mkdir");
    let victim = d.path().join("victim");
    std::fs::write(&victim, b"precious").expect("write");
    std::os::unix::fs::symlink(&victim, out_dir.join("y.npy")).expect("symlink");
    let spec = format!("x={}", s(&x));
    let r = run(&["run", &input, "--input", &spec, "-o", s(&out_dir)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read(&victim).expect("read"), b"precious");
    let y = std::fs::read(out_dir.join("y.npy")).expect("read");
    assert_eq!(
        &y[y.len() - 8..],
        [2.0f32, 0.0].map(f32::to_le_bytes).concat()
    );
}

// ---- Sizes from input data: checked arithmetic and a memory pre-check, never an abort.

#[test]
fn constant_of_shape_beyond_memory_is_an_error() {
    // ConstantOfShape to [2^40] f32 (4 TiB): an error naming the op, not an allocation abort.
    let d = TempDir::new("size-cos");
    let mut shape = TensorProto::new();
    shape.name = "s".into();
    shape.data_type = 7;
    shape.dims = vec![1];
    shape.int64_data = vec![1 << 40];
    let mut g = GraphProto::new();
    g.name = "g".into();
    g.initializer.push(shape);
    g.node.push(node("ConstantOfShape", "cos", &["s"], &["y"]));
    let mut y = vi("y", &[1 << 40]);
    y.name = "y".into();
    g.output.push(y);
    let mut m = model();
    m.graph = protobuf::MessageField::some(g);
    let input = write(d.path(), "cos.onnx", &m);
    let out_dir = d.path().join("out");
    let r = run(&["run", &input, "-o", s(&out_dir)]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("ConstantOfShape"), "{}", r.stderr);
    assert!(r.stderr.contains("available"), "{}", r.stderr);
    assert!(!out_dir.exists());
}

/// An intermediate whose size comes from input data (Expand to a shape read from a `.npy`),
/// so no static pre-check can see it: 2^44 f32 elements (64 TiB) cannot be allocated, and the
/// engine reports that with the node instead of aborting.
#[test]
fn intermediate_beyond_memory_is_an_error_naming_the_node() {
    let d = TempDir::new("size-expand");
    let mut g = GraphProto::new();
    g.name = "g".into();
    g.input.push(vi("x", &[1]));
    let mut shape_in = vi("s", &[2]);
    if let Some(type_proto::Value::TensorType(t)) =
        &mut shape_in.type_.as_mut().expect("type").value
    {
        t.elem_type = 7;
    }
    g.input.push(shape_in);
    g.node
        .push(node("Expand", "big_expand", &["x", "s"], &["e"]));
    let mut sum = node("ReduceSum", "sum", &["e"], &["y"]);
    let mut keep = onnx_protobuf::AttributeProto::new();
    keep.name = "keepdims".into();
    keep.type_ = onnx_protobuf::attribute_proto::AttributeType::INT.into();
    keep.i = 0;
    sum.attribute.push(keep);
    g.node.push(sum);
    g.output.push(vi("y", &[]));
    let mut m = model();
    m.graph = protobuf::MessageField::some(g);
    let input = write(d.path(), "expand.onnx", &m);
    let x = d.path().join("x.npy");
    npy_f32(&x, &[1.0]);
    let sh = d.path().join("s.npy");
    let dims: Vec<u8> = [1i64 << 22, 1 << 22]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    npy(&sh, "<i8", 2, &dims);
    let out_dir = d.path().join("out");
    let (xs, ss) = (format!("x={}", s(&x)), format!("s={}", s(&sh)));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ortho-opt"))
        .args([
            "run",
            &input,
            "--input",
            &xs,
            "--input",
            &ss,
            "-o",
            s(&out_dir),
        ])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{:?}: {err}", o.status);
    assert!(
        err.contains("big_expand") && err.contains("cannot allocate 70368744177664 bytes"),
        "{err}"
    );
    assert!(!out_dir.exists());
}

#[test]
fn eval_windows_times_seqlen_overflow_is_an_error() {
    let f = common::fixtures();
    let tok = f.join("smollm2-135m/tokenizer.json");
    let text = f.join("text/sotu_eval.txt");
    let d = TempDir::new("size-eval");
    let input = write(d.path(), "m.onnx", &model());
    let big = (1u64 << 40).to_string();
    for (windows, seqlen, needle) in [
        (big.as_str(), big.as_str(), "overflow"),
        // One window of a million tokens: its attention scores alone are 4 TB.
        ("1", "1000000", "available"),
    ] {
        let r = run(&[
            "eval",
            &input,
            "--tokenizer",
            s(&tok),
            "--text",
            s(&text),
            "--windows",
            windows,
            "--seqlen",
            seqlen,
        ]);
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(r.stderr.contains(needle), "{needle}: {}", r.stderr);
    }
}

#[test]
fn byte_length_overflow_is_refused() {
    // 2^60 f32 elements: the element count fits in u64 but its byte length does not; 8 bytes
    // of data must not pass as matching.
    let d = TempDir::new("size-bytes");
    let mut m = model();
    let w = &mut m.graph.as_mut().expect("graph").initializer[0];
    w.dims = vec![1 << 60];
    let input = write(d.path(), "m.onnx", &m);
    assert_refused(d.path(), &input, &["tensor 'w'", "overflows"]);
}

// ---- Recursion: nesting limits with clear errors instead of stack overflows.

/// An `.oir` module whose main graph holds an If nested `depth` levels deep.
fn nested_if(depth: usize) -> String {
    let leaf = |name: &str| {
        format!(
            "graph @{name}() -> (%{name}) {{\n%x = capture : tensor<2xf32>\n%{name} = onnx.Identity(%x) : tensor<2xf32>\n}}"
        )
    };
    let mut g = leaf("y0");
    for k in 1..=depth {
        g = format!(
            "graph @g{k}() -> (%y{k}) {{\n%c = capture : tensor<bool>\n%y{k} = onnx.If(%c) {{then_branch = {g}, else_branch = {}}} : tensor<2xf32>\n}}",
            leaf(&format!("e{k}"))
        );
    }
    format!(
        "module {{ir_version = 8, opset_import = [\"\" = 17]}}\ngraph @main(%c: tensor<bool>, %x: tensor<2xf32>) -> (%y) {{\n%y = onnx.If(%c) {{then_branch = {g}, else_branch = {}}} : tensor<2xf32>\n}}\n",
        leaf("ez")
    )
}

#[test]
fn deeply_nested_text_is_refused() {
    let d = TempDir::new("deep-text");
    let brackets = format!(
        "module {{ir_version = 8, opset_import = [\"\" = 17]}}\ngraph @main(%x: tensor<2xf32>) -> (%y) {{\n%y = onnx.Identity(%x) {{a = {}1{}}} : tensor<2xf32>\n}}\n",
        "[".repeat(15_000),
        "]".repeat(15_000)
    );
    let types = format!(
        "module {{ir_version = 8, opset_import = [\"\" = 17]}}\ngraph @main(%x: {}tensor<2xf32>{}) -> (%x) {{\n}}\n",
        "seq<".repeat(15_000),
        ">".repeat(15_000)
    );
    for (name, text, needle) in [
        ("brackets.oir", brackets, "nested more than 256 levels"),
        ("types.oir", types, "nested more than 256 levels"),
        (
            "if2000.oir",
            nested_if(2000),
            "subgraphs nested more than 24 levels",
        ),
    ] {
        let p = d.path().join(name);
        std::fs::write(&p, text).expect("write");
        assert_refused(d.path(), s(&p), &[name, needle]);
    }
}

#[test]
fn nesting_within_the_limit_round_trips_through_onnx() {
    // 23 levels below the If of the main graph: 24 in all, the limit, which onnx reads back.
    let d = TempDir::new("deep-ok");
    let p = d.path().join("if.oir");
    std::fs::write(&p, nested_if(23)).expect("write");
    let out = d.path().join("out.onnx");
    let r = run(&[s(&p), "-o", s(&out)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(&[s(&out), "-o", s(&d.path().join("back.oir"))]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn deeply_nested_pipeline_is_refused() {
    let d = TempDir::new("deep-pipe");
    let input = write(d.path(), "m.onnx", &model());
    let pipeline = format!(
        "--pass-pipeline={}dce{}",
        "fixpoint(".repeat(2000),
        ")".repeat(2000)
    );
    let out = d.path().join("out.onnx");
    let r = run(&[&input, "-o", s(&out), &pipeline]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("nested more than 32 levels"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
}

#[test]
fn external_data_fifo_is_refused_without_blocking() {
    let d = TempDir::new("ext-fifo");
    let st = std::process::Command::new("mkfifo")
        .arg(d.path().join("w.bin"))
        .status()
        .expect("mkfifo");
    assert!(st.success());
    let mut m = model();
    external(&mut m, "w.bin", 0, 8);
    let input = write(d.path(), "m.onnx", &m);
    assert_refused(d.path(), &input, &["tensor 'w'", "not a regular file"]);
}

#[test]
fn input_truncated_while_mapped_is_an_error_not_sigbus() {
    let d = TempDir::new("trunc-mapped");
    let mut m = model();
    // A weight large enough to stay in the mapped file rather than being copied.
    let w = &mut m.graph.as_mut().expect("graph").initializer[0];
    w.dims = vec![4096];
    w.raw_data = vec![0u8; 4 * 4096];
    let g = m.graph.as_mut().expect("graph");
    g.input[0] = vi("x", &[4096]);
    g.output[0] = vi("y", &[4096]);
    let input = write(d.path(), "m.onnx", &m);
    let module = ortho_frontends::import_file(Path::new(&input)).expect("import");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&input)
        .expect("open")
        .set_len(0)
        .expect("truncate");
    let out = d.path().join("out.onnx");
    let e = ortho_frontends::export_file(&module, &out, &Default::default())
        .expect_err("a truncated input cannot be exported");
    assert!(e.to_string().contains("shrank"), "{e}");
    assert!(!out.exists());
}

/// An input truncated by another process during the write itself (after the exporter's size
/// check) faults with SIGBUS inside the write; the CLI's handler turns that into an error naming
/// the file, status 1, and no output or temporary. The test-only hook
/// `ortho_ir::output_sigbus::TEST_HOLD_ENV` stops the run right after the output temporary is
/// created, so the truncation happens at a known point.
#[test]
fn input_truncated_during_the_write_is_an_error_naming_it() {
    use std::io::{BufRead, Read};
    use std::process::{Command, Stdio};
    for extra in [None, Some("--external-data=0")] {
        let d = TempDir::new("trunc-write");
        let (inp, outd) = (d.path().join("in"), d.path().join("out"));
        std::fs::create_dir_all(&inp).expect("mkdir");
        std::fs::create_dir_all(&outd).expect("mkdir");
        // 16 KiB of weights: below the exporter's in-kernel copy threshold (64 KiB), so the
        // write reads them through the mapping.
        let n = 4096usize;
        let data: Vec<u8> = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let bin = inp.join("w.bin");
        std::fs::write(&bin, &data).expect("write");
        // The resolver maps the canonical path, and the message names what was mapped.
        let named = bin.canonicalize().expect("canonical");
        let mut m = model();
        {
            let g = m.graph.as_mut().expect("graph");
            g.initializer[0].dims = vec![n as i64];
            g.input[0] = vi("x", &[n as i64]);
            g.output[0] = vi("y", &[n as i64]);
        }
        external(&mut m, "w.bin", 0, data.len() as u64);
        let input = write(&inp, "m.onnx", &m);
        let go = d.path().join("go");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ortho-opt"));
        cmd.args([input.as_str(), "-o", s(&outd.join("out.onnx"))]);
        cmd.args(extra);
        let mut child = cmd
            .env(ortho_ir::output_sigbus::TEST_HOLD_ENV, &go)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut err = std::io::BufReader::new(child.stderr.take().expect("stderr"));
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            let got = err.read_line(&mut line).expect("read stderr");
            seen.push_str(&line);
            if got == 0 || line.contains(ortho_ir::output_sigbus::TEST_HOLD_LINE) {
                break;
            }
        }
        assert!(
            seen.contains(ortho_ir::output_sigbus::TEST_HOLD_LINE),
            "the run never reached the write: {seen}"
        );
        std::fs::OpenOptions::new()
            .write(true)
            .open(&bin)
            .expect("open")
            .set_len(0)
            .expect("truncate");
        std::fs::write(&go, b"").expect("go");
        err.read_to_string(&mut seen).expect("read stderr");
        let status = child.wait().expect("wait");
        assert_eq!(status.code(), Some(1), "{extra:?}: {status:?}\n{seen}");
        assert!(
            seen.contains(&format!("input file '{}'", named.display()))
                && seen.contains("truncated"),
            "{extra:?}: {seen}"
        );
        let left: Vec<_> = std::fs::read_dir(&outd)
            .expect("read dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{extra:?}: files left behind: {left:?}");
    }
}

// ---- Models that onnx's checker and onnxruntime reject are refused up front.

#[test]
fn what_onnx_rejects_is_refused() {
    let d = TempDir::new("onnx-rules");
    let mut undefined_input = model();
    {
        let g = undefined_input.graph.as_mut().expect("graph");
        let mut x = vi("x", &[2]);
        if let Some(type_proto::Value::TensorType(t)) = &mut x.type_.as_mut().expect("type").value {
            t.elem_type = 0;
        }
        g.input[0] = x;
    }
    let mut undefined_weight = model();
    undefined_weight.graph.as_mut().expect("graph").initializer[0].data_type = 0;
    let mut negative_opset = model();
    negative_opset.opset_import[0].version = -1;
    let mut recursive = model();
    {
        let mut f = onnx_protobuf::FunctionProto::new();
        f.name = "F".into();
        f.domain = "local".into();
        f.input = vec!["a".into()];
        f.output = vec!["b".into()];
        let mut call = node("F", "self_call", &["a"], &["b"]);
        call.domain = "local".into();
        f.node.push(call);
        let mut o = OperatorSetIdProto::new();
        o.domain = "local".into();
        o.version = 1;
        f.opset_import.push(o.clone());
        recursive.opset_import.push(o);
        recursive.functions.push(f);
        let g = recursive.graph.as_mut().expect("graph");
        let mut n = node("F", "call", &["s"], &["y"]);
        n.domain = "local".into();
        g.node[1] = n;
    }
    let mut default_mismatch = model();
    {
        let g = default_mismatch.graph.as_mut().expect("graph");
        let mut x = weight("x");
        x.dims = vec![1];
        x.raw_data.truncate(4);
        g.initializer.push(x);
    }
    for (name, m, needles) in [
        ("undef_input.onnx", undefined_input, vec!["UNDEFINED"]),
        ("undef_weight.onnx", undefined_weight, vec!["UNDEFINED"]),
        (
            "neg_opset.onnx",
            negative_opset,
            vec!["opset -1", "start at 1"],
        ),
        (
            "recursive.onnx",
            recursive,
            vec!["local::F -> local::F", "recursive"],
        ),
        ("default.onnx", default_mismatch, vec!["default", "[1]"]),
    ] {
        let input = write(d.path(), name, &m);
        assert_refused(d.path(), &input, &needles);
    }
}

#[test]
fn out_of_range_integer_literal_is_refused() {
    let d = TempDir::new("i8-range");
    let p = d.path().join("i8.oir");
    std::fs::write(
        &p,
        "module {ir_version = 8, opset_import = [\"\" = 17]}\ngraph @main() -> (%y) {\n  %y = const tensor<2xi8> dense<[300, 1]>\n}\n",
    )
    .expect("write");
    assert_refused(d.path(), s(&p), &["300 is out of range for i8", "i8.oir:3"]);
}

#[test]
fn gguf_json_and_text_inputs_get_a_plain_message() {
    let d = TempDir::new("not-onnx");
    for (name, bytes, needle) in [
        (
            "m.gguf",
            &b"GGUF\x03\x00\x00\x00rest of a llama.cpp file"[..],
            "GGUF",
        ),
        ("tokenizer.json", b"{\"version\": \"1.0\"}\n", "JSON"),
        ("notes.txt", b"hello, this is not a model\n", "text"),
        ("ir.txt", b"module {ir_version = 8}\n", ".oir extension"),
    ] {
        let p = d.path().join(name);
        std::fs::write(&p, bytes).expect("write");
        assert_refused(d.path(), s(&p), &[name, needle]);
        assert!(
            !r_contains_wire_type(s(&p)),
            "{name}: the decoder's message is replaced"
        );
    }
}

fn r_contains_wire_type(input: &str) -> bool {
    run(&[input, "--emit=oir"]).stderr.contains("wire type")
}
