//! The textual form `.oir`: a deterministic printer and a parser; print → parse → print is identical.
//!
//! ```text
//! module {ir_version = 8, opset_import = ["" = 17], producer_name = "", ...}
//! graph @main(%x: tensor<"batch"x128xi64>) -> (%logits) {
//!   %w = const tensor<49152x576xf32> elided<"9f0c1d2e3a4b5c6d", 113246208>
//!   %h = onnx.Gather(%w, %x) {axis = 0} : tensor<"batch"x128x576xf32> loc("/model/Gather")
//! }
//! ```
//! Large tensors print elided (content hash and byte length); a module parsed from elided text
//! can be printed and verified but not exported or run.

mod parser;
mod printer;

pub use parser::{parse_module, ParseError, ParseErrorKind};
pub use printer::{print_graph, print_module, PrintOptions};

/// Characters allowed in an unquoted name.
pub(crate) fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '$' | '/' | '-')
}

/// A name as written after `%` or `@`: bare when it is safe, quoted otherwise.
pub fn quote_name(s: &str) -> String {
    if !s.is_empty() && s.chars().all(is_name_char) && !s.starts_with('-') {
        s.to_string()
    } else {
        quote(s)
    }
}

/// A double-quoted string literal with escapes.
pub fn quote(s: &str) -> String {
    quote_bytes(s.as_bytes())
}

/// A double-quoted literal of arbitrary bytes; bytes that are not printable UTF-8 are `\xHH`.
pub fn quote_bytes(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len() + 2);
    out.push('"');
    let mut rest = b;
    while !rest.is_empty() {
        let (valid, bad) = match std::str::from_utf8(rest) {
            Ok(s) => (s, &[][..]),
            Err(e) => {
                let (v, tail) = rest.split_at(e.valid_up_to());
                (std::str::from_utf8(v).unwrap_or(""), tail)
            }
        };
        for c in valid.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                c => out.push(c),
            }
        }
        if let Some((&first, tail)) = bad.split_first() {
            out.push_str(&format!("\\x{first:02x}"));
            rest = tail;
        } else {
            rest = &[];
        }
    }
    out.push('"');
    out
}
