//! Gradient checks of the shape ops' autodiff rules (Reshape, Transpose, Concat, Split, Expand,
//! Gather, Slice with and without steps) against central finite differences in f64; the harness
//! and tolerance are `gradcheck`'s (see `autodiff_grad.rs`).

mod gradcheck;

use gradcheck::{broadcastable, dims, inp, p, property, Fill, Rng};

#[test]
fn reshapes_and_transpose() {
    property("Reshape", 3, |rng| {
        let s = dims(rng, 3);
        let n: usize = s.iter().product();
        (
            vec![p("x", &s)],
            format!("  %s = const tensor<2xi64> dense<[{n}, 1]>\n  %y = onnx.Reshape(%x, %s) : ?"),
            "y",
            None,
        )
    });
    property("Flatten", 2, |rng| {
        let s = dims(rng, 3);
        (
            vec![p("x", &s)],
            "  %y = onnx.Flatten(%x) {axis = 2} : ?".into(),
            "y",
            None,
        )
    });
    property("Unsqueeze+Squeeze", 3, |rng| {
        let s = dims(rng, 2);
        (
            vec![p("x", &s)],
            "  %a = const tensor<2xi64> dense<[0, 3]>\n  %u = onnx.Unsqueeze(%x, %a) : ?\n  %t = onnx.Tanh(%u) : ?\n  %y = onnx.Squeeze(%t, %a) : ?".into(),
            "y",
            None,
        )
    });
    property("Transpose", 4, |rng| {
        let s = dims(rng, 4);
        let perms = [
            "[0, 2, 3, 1]",
            "[3, 2, 1, 0]",
            "[1, 0, 3, 2]",
            "[0, 2, 1, 3]",
        ];
        let perm = perms[rng.int(0, 3)];
        (
            vec![p("x", &s)],
            format!("  %y = onnx.Transpose(%x) {{perm = {perm}}} : ?"),
            "y",
            None,
        )
    });
}

#[test]
fn concat_split_expand() {
    property("Concat", 4, |rng| {
        let mut a = dims(rng, 3);
        let mut b = a.clone();
        let axis = rng.int(0, 2);
        a[axis] = rng.int(1, 3);
        b[axis] = rng.int(1, 3);
        (
            vec![p("a", &a), p("b", &b)],
            format!(
                "  %y = onnx.Concat(%a, %b, %a) {{axis = {}}} : ?",
                axis as i64 - 3
            ),
            "y",
            None,
        )
    });
    property("Split", 3, |rng| {
        let mut s = dims(rng, 2);
        s[1] = rng.int(2, 5);
        let first = rng.int(1, s[1] - 1);
        (
            vec![p("x", &s)],
            // Only the second part reaches the loss: the first part's gradient is zeros.
            format!(
                "  %sp = const tensor<2xi64> dense<[{first}, {}]>\n  %y0, %y1 = onnx.Split(%x, %sp) {{axis = 1}} : ?, ?\n  %y = onnx.Mul(%y1, %y1) : ?",
                s[1] - first
            ),
            "y",
            None,
        )
    });
    property("Split both", 2, |rng| {
        let s = vec![rng.int(1, 3), 4];
        (
            vec![p("x", &s)],
            "  %sp = const tensor<2xi64> dense<[2, 2]>\n  %y0, %y1 = onnx.Split(%x, %sp) {axis = -1} : ?, ?\n  %n = onnx.Neg(%y1) : ?\n  %y = onnx.Concat(%n, %y0) {axis = -1} : ?".into(),
            "y",
            None,
        )
    });
    property("Expand", 3, |rng| {
        let out = dims(rng, 3);
        let x = broadcastable(rng, &out);
        let sh: Vec<String> = out.iter().map(|d| d.to_string()).collect();
        (
            vec![p("x", &x)],
            format!(
                "  %s = const tensor<3xi64> dense<[{}]>\n  %y = onnx.Expand(%x, %s) : ?",
                sh.join(", ")
            ),
            "y",
            None,
        )
    });
}

#[test]
fn gather_rows_of_a_table() {
    property("Gather", 4, |rng| {
        let (rows, width) = (rng.int(2, 6), rng.int(1, 4));
        // Indices repeat, so their gradients add.
        let ishape = dims(rng, 2);
        (
            vec![
                p("table", &[rows, width]),
                inp("ids", &ishape, Fill::Index(rows)),
            ],
            "  %y = onnx.Gather(%table, %ids) {axis = 0} : ?".into(),
            "y",
            None,
        )
    });
}

#[test]
fn slice_with_constant_bounds() {
    property("Slice", 4, |rng| {
        let s = vec![rng.int(2, 5), rng.int(2, 5), rng.int(1, 3)];
        let (a0, a1) = (rng.int(0, s[0] - 1), rng.int(0, s[1] - 1));
        let (e0, e1) = (rng.int(a0 + 1, s[0]), rng.int(a1 + 1, s[1]));
        (
            vec![p("x", &s)],
            format!(
                "  %st = const tensor<2xi64> dense<[{a0}, {}]>\n  %en = const tensor<2xi64> dense<[{e0}, {}]>\n  %ax = const tensor<2xi64> dense<[0, -2]>\n  %y = onnx.Slice(%x, %st, %en, %ax) : ?",
                a1 as i64 - s[1] as i64,
                if e1 == s[1] { i64::MAX } else { e1 as i64 }
            ),
            "y",
            None,
        )
    });
}

/// One axis of a stepped slice: (start, end, step) reading at least one element of `d`.
fn stepped_axis(rng: &mut Rng, d: usize) -> (i64, i64, i64) {
    let step = [-3i64, -2, -1, 2, 3][rng.int(0, 4)];
    let start = rng.int(0, d - 1) as i64;
    if step > 0 {
        let end = rng.int(start as usize + 1, d) as i64;
        (start, if end == d as i64 { i64::MAX } else { end }, step)
    } else {
        // Down to an index before `start`, or past the front (i64::MIN: −1 would mean d − 1).
        let end = rng.int(0, start as usize + 1) as i64 - 1;
        (start, if end < 0 { i64::MIN } else { end }, step)
    }
}

/// Slices with steps other than 1, negative ones included, on every axis or some; the first
/// draw also reverses a whole axis (step −1 over all of it), which reads every element.
#[test]
fn slice_with_steps() {
    let mut first = true;
    property("Slice with steps", 6, |rng| {
        let s = vec![rng.int(2, 6), rng.int(1, 5), rng.int(3, 7)];
        let mut axes: Vec<i64> = vec![0, 2];
        let mut parts: Vec<(i64, i64, i64)> = axes
            .iter()
            .map(|&a| stepped_axis(rng, s[a as usize]))
            .collect();
        if first {
            first = false;
            parts[1] = (-1, i64::MIN, -1);
        } else if rng.next_u64() % 2 == 0 {
            // A unit-step axis beside the stepped ones.
            axes.push(1);
            parts.push((0, s[1] as i64, 1));
        }
        let list = |f: fn(&(i64, i64, i64)) -> i64| {
            parts
                .iter()
                .map(|t| f(t).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let k = axes.len();
        let ax: Vec<String> = axes.iter().map(i64::to_string).collect();
        (
            vec![p("x", &s)],
            format!(
                "  %st = const tensor<{k}xi64> dense<[{}]>\n  %en = const tensor<{k}xi64> dense<[{}]>\n  %ax = const tensor<{k}xi64> dense<[{}]>\n  %sp = const tensor<{k}xi64> dense<[{}]>\n  %y = onnx.Slice(%x, %st, %en, %ax, %sp) : ?",
                list(|t| t.0),
                list(|t| t.1),
                ax.join(", "),
                list(|t| t.2),
            ),
            "y",
            None,
        )
    });
}
