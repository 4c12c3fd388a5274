//! Pipeline strings: parser and canonical printer.
//!
//! ```text
//! pipeline := item (',' item)*                     (may be empty at top level)
//! item     := NAME options?                        a registered pass
//!           | 'fixpoint' options? '(' pipeline ')'
//! options  := '{' (NAME '=' VALUE)* '}'            separated by spaces (commas are accepted)
//! VALUE    := bare word | "quoted string"
//! ```
//! Names are checked against a [`Registry`] while parsing, and every option is typed, so a parsed
//! [`Pipeline`] is runnable. It prints back with every option explicit
//! (`canonicalize{fold=true max-fold-bytes=65536}`); that string goes into reports and reproducers.

use crate::options::{is_bare_value_char, PassOptions, SetError};
use crate::pass::PassInfo;
use crate::registry::{FixpointOptions, Registry, FIXPOINT_NAME, FIXPOINT_OPTIONS};
use std::fmt;

/// A parsed pipeline.
#[derive(Debug, Clone, Default)]
pub struct Pipeline {
    pub items: Vec<PipelineItem>,
}

/// One element of a pipeline.
#[derive(Debug, Clone)]
pub enum PipelineItem {
    Pass(PassSpec),
    Fixpoint(Fixpoint),
}

/// A registered pass with its complete options.
#[derive(Debug, Clone)]
pub struct PassSpec {
    pub info: &'static PassInfo,
    pub options: PassOptions,
}

/// `fixpoint{max-iterations=N}(body)`.
#[derive(Debug, Clone)]
pub struct Fixpoint {
    pub max_iterations: usize,
    pub body: Pipeline,
}

impl Pipeline {
    /// Parses with the builtin registry.
    pub fn parse(text: &str) -> Result<Pipeline, PipelineError> {
        parse_pipeline(text, &Registry::builtin())
    }

    /// The canonical text (same as `Display`).
    pub fn canonical(&self) -> String {
        self.to_string()
    }

    /// The first `n` top-level items (for reproducers that stop at a failing pass).
    pub fn prefix(&self, n: usize) -> Pipeline {
        Pipeline {
            items: self.items[..n.min(self.items.len())].to_vec(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Names of every pass in the pipeline, nested ones included, in order.
    pub fn pass_names(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for item in &self.items {
            match item {
                PipelineItem::Pass(p) => out.push(p.info.name),
                PipelineItem::Fixpoint(f) => out.extend(f.body.pass_names()),
            }
        }
        out
    }
}

impl fmt::Display for PassSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.info.name)?;
        if !self.options.specs().is_empty() {
            write!(f, "{{{}}}", self.options)?;
        }
        Ok(())
    }
}

impl fmt::Display for PipelineItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PipelineItem::Pass(p) => write!(f, "{p}"),
            PipelineItem::Fixpoint(fp) => {
                write!(
                    f,
                    "{FIXPOINT_NAME}{{max-iterations={}}}({})",
                    fp.max_iterations, fp.body
                )
            }
        }
    }
}

impl fmt::Display for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{item}")?;
        }
        Ok(())
    }
}

/// What is wrong with a pipeline string, for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineErrorKind {
    /// Not the grammar: an unbalanced bracket, a missing separator, a bad escape, ….
    Syntax,
    /// A name that is neither a registered pass nor `fixpoint`.
    UnknownPass,
    /// An option the pass does not declare.
    UnknownOption,
    /// An option given twice.
    DuplicateOption,
    /// A value that does not fit its option's type.
    BadValue,
    /// The pass refused its options when built (combinations, values single types cannot judge).
    Refused,
}

/// A pipeline string that does not parse: what is wrong, byte offset and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineError {
    pub kind: PipelineErrorKind,
    pub pos: usize,
    pub message: String,
}

impl PipelineError {
    /// The message, the pipeline text, and a caret under the offending position.
    pub fn render(&self, text: &str) -> String {
        let col = text.get(..self.pos).map_or(self.pos, |s| s.chars().count());
        format!("error: {}\n  {text}\n  {}^", self.message, " ".repeat(col))
    }
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pipeline error at column {}: {}",
            self.pos + 1,
            self.message
        )
    }
}

impl std::error::Error for PipelineError {}

/// Parses a pipeline string, resolving pass names and options in `registry`.
pub fn parse_pipeline(text: &str, registry: &Registry) -> Result<Pipeline, PipelineError> {
    let mut p = Parser {
        src: text,
        pos: 0,
        registry,
        depth: 0,
    };
    let pipeline = p.pipeline(None)?;
    Ok(pipeline)
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    registry: &'a Registry,
    /// How many `fixpoint(…)` enclose the current position: parsing, running and reporting all
    /// recurse per level (and the report grows with its cube), so the nesting is bounded.
    depth: usize,
}

type PResult<T> = Result<T, PipelineError>;

impl Parser<'_> {
    /// A syntax error.
    fn err<T>(&self, pos: usize, message: impl Into<String>) -> PResult<T> {
        self.err_kind(PipelineErrorKind::Syntax, pos, message)
    }

    fn err_kind<T>(
        &self,
        kind: PipelineErrorKind,
        pos: usize,
        message: impl Into<String>,
    ) -> PResult<T> {
        Err(PipelineError {
            kind,
            pos,
            message: message.into(),
        })
    }

    fn ws(&mut self) {
        let rest = &self.src[self.pos..];
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn peek(&mut self) -> Option<char> {
        self.ws();
        self.src[self.pos..].chars().next()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    /// What is at the current position, for messages.
    fn found(&self) -> String {
        match self.src[self.pos..].chars().next() {
            None => "end of pipeline".into(),
            Some(c) => format!("'{c}'"),
        }
    }

    fn ident(&mut self) -> &str {
        self.ws();
        let rest = &self.src[self.pos..];
        let n = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .unwrap_or(rest.len());
        self.pos += n;
        &rest[..n]
    }

    /// `close` is `Some(open_pos)` inside `fixpoint(…)`, where the list ends at ')'.
    fn pipeline(&mut self, close: Option<usize>) -> PResult<Pipeline> {
        let mut items = Vec::new();
        let at_end = |p: &mut Self| match close {
            None => p.peek().is_none(),
            Some(_) => p.peek() == Some(')'),
        };
        if at_end(self) {
            if let Some(open) = close {
                return self.err(
                    open,
                    "empty nested pipeline: fixpoint needs at least one pass",
                );
            }
            return Ok(Pipeline { items });
        }
        loop {
            items.push(self.item()?);
            if !self.eat(',') {
                break;
            }
        }
        match close {
            Some(open) => {
                if !self.eat(')') {
                    if self.peek().is_none() {
                        return self.err(open, "unbalanced '(': missing ')'");
                    }
                    return self.err(
                        self.pos,
                        format!("expected ',' or ')', found {}", self.found()),
                    );
                }
            }
            None => match self.peek() {
                None => {}
                Some(')') => return self.err(self.pos, "unbalanced ')'"),
                Some('}') => return self.err(self.pos, "unbalanced '}'"),
                Some(_) => {
                    return self.err(
                        self.pos,
                        format!("expected ',' between passes, found {}", self.found()),
                    )
                }
            },
        }
        Ok(Pipeline { items })
    }

    fn item(&mut self) -> PResult<PipelineItem> {
        self.ws();
        let start = self.pos;
        let name = self.ident().to_string();
        if name.is_empty() {
            return self.err(
                start,
                format!("expected a pass name, found {}", self.found()),
            );
        }
        if name == FIXPOINT_NAME {
            let mut opts = PassOptions::defaults(FIXPOINT_OPTIONS);
            if self.peek() == Some('{') {
                self.options(&name, &mut opts)?;
            }
            let max = FixpointOptions::from_options(&opts)
                .map_err(|e| PipelineError {
                    kind: PipelineErrorKind::Refused,
                    pos: start,
                    message: e.to_string(),
                })?
                .max_iterations;
            if self.peek() != Some('(') {
                let found = self.found();
                return self.err(
                    self.pos,
                    format!(
                        "fixpoint needs a nested pipeline: fixpoint{{…}}(pass,…), found {found}"
                    ),
                );
            }
            if self.depth >= ortho_ir::limits::MAX_PIPELINE_DEPTH {
                return self.err(
                    start,
                    format!(
                        "fixpoint nested more than {} levels deep",
                        ortho_ir::limits::MAX_PIPELINE_DEPTH
                    ),
                );
            }
            let open = self.pos;
            self.pos += 1;
            self.depth += 1;
            let body = self.pipeline(Some(open))?;
            self.depth -= 1;
            return Ok(PipelineItem::Fixpoint(Fixpoint {
                max_iterations: max,
                body,
            }));
        }
        let Some(info) = self.registry.get(&name) else {
            return self.err_kind(
                PipelineErrorKind::UnknownPass,
                start,
                unknown_pass_message(&name, self.registry),
            );
        };
        let mut options = PassOptions::defaults(info.options);
        if self.peek() == Some('{') {
            self.options(&name, &mut options)?;
        }
        if self.peek() == Some('(') {
            return self.err(
                self.pos,
                format!("pass '{name}' does not take a nested pipeline (only fixpoint does)"),
            );
        }
        // Building validates combinations of options that single values cannot.
        if let Err(m) = (info.build)(&options) {
            return self.err_kind(
                PipelineErrorKind::Refused,
                start,
                format!("pass '{name}': {m}"),
            );
        }
        Ok(PipelineItem::Pass(PassSpec { info, options }))
    }

    fn options(&mut self, pass: &str, opts: &mut PassOptions) -> PResult<()> {
        let open = self.pos;
        self.pos += 1;
        let mut seen: Vec<String> = Vec::new();
        loop {
            self.eat(',');
            match self.peek() {
                Some('}') => {
                    self.pos += 1;
                    return Ok(());
                }
                None => return self.err(open, "unbalanced '{': missing '}'"),
                _ => {}
            }
            let key_pos = self.pos;
            let key = self.ident().to_string();
            if key.is_empty() {
                return self.err(
                    key_pos,
                    format!("expected an option name or '}}', found {}", self.found()),
                );
            }
            if !self.eat('=') {
                return self.err(
                    self.pos,
                    format!("expected '=' after option '{key}', found {}", self.found()),
                );
            }
            self.ws();
            let value_pos = self.pos;
            let value = self.value()?;
            if seen.contains(&key) {
                return self.err_kind(
                    PipelineErrorKind::DuplicateOption,
                    key_pos,
                    format!("option '{key}' of pass '{pass}' is given twice"),
                );
            }
            match opts.set(&key, &value) {
                Ok(()) => seen.push(key),
                Err(SetError::Unknown) => {
                    return self.err_kind(
                        PipelineErrorKind::UnknownOption,
                        key_pos,
                        unknown_option_message(pass, &key, opts),
                    )
                }
                Err(SetError::BadValue(m)) => {
                    return self.err_kind(
                        PipelineErrorKind::BadValue,
                        value_pos,
                        format!("bad value '{value}' for option '{key}' of pass '{pass}': {m}"),
                    )
                }
            }
        }
    }

    /// A bare word or a double-quoted string with `\"` and `\\` escapes.
    fn value(&mut self) -> PResult<String> {
        let start = self.pos;
        let rest = &self.src[self.pos..];
        if let Some(body) = rest.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = body.char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        self.pos += 1 + i + 1;
                        return Ok(out);
                    }
                    '\\' => match chars.next() {
                        Some((_, e @ ('"' | '\\'))) => out.push(e),
                        _ => {
                            return self.err(
                                self.pos + 1 + i,
                                "bad escape in quoted value (only \\\" and \\\\)",
                            )
                        }
                    },
                    c => out.push(c),
                }
            }
            return self.err(start, "unterminated quoted value");
        }
        let n = rest
            .find(|c: char| !is_bare_value_char(c))
            .unwrap_or(rest.len());
        if n == 0 {
            return self.err(start, format!("missing value, found {}", self.found()));
        }
        self.pos += n;
        Ok(rest[..n].to_string())
    }
}

fn unknown_pass_message(name: &str, registry: &Registry) -> String {
    let mut known: Vec<&str> = registry.passes().iter().map(|p| p.name).collect();
    known.push(FIXPOINT_NAME);
    let mut msg = format!("unknown pass '{name}'");
    if let Some(s) = closest(name, &known) {
        msg.push_str(&format!(" (did you mean '{s}'?)"));
    }
    msg.push_str(&format!("; known: {}", known.join(", ")));
    msg
}

fn unknown_option_message(pass: &str, key: &str, opts: &PassOptions) -> String {
    let names: Vec<&str> = opts.specs().iter().map(|s| s.name).collect();
    if names.is_empty() {
        return format!("pass '{pass}' takes no options (got '{key}')");
    }
    let mut msg = format!("unknown option '{key}' for pass '{pass}'");
    if let Some(s) = closest(key, &names) {
        msg.push_str(&format!(" (did you mean '{s}'?)"));
    }
    msg.push_str(&format!("; options: {}", names.join(", ")));
    msg
}

/// The candidate within a small edit distance of `word`, if any.
fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (word.len() / 3).max(1);
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c)
}

/// Edit distance counting an adjacent transposition as one edit (`fodl` → `fold`).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, v) in d[0].iter_mut().enumerate() {
        *v = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}
