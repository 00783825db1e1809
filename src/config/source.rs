//! YAML text -> positioned, env-expanded tree.
//!
//! Owns: reading YAML with `yaml-rust2`'s marked event parser, expanding `${VAR}` and
//! `${VAR:-default}` inside each scalar value (after YAML unescaping, so every position stays
//! the one in the file), resolving plain scalars per the YAML 1.2 core schema, and recording
//! where each field path starts so that later errors can say `line:column`. Must not: know the
//! tether schema (that is `file` and `validate`), or read anything but the text and `env`.
//!
//! Why not `serde_yaml::from_str`: it knows positions only while it parses, it would expand
//! nothing, and it silently keeps the last of two duplicate keys.

use std::collections::{BTreeMap, HashMap};

use serde_yaml::{Mapping, Number, Value};
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// 1-based line and column.
pub(super) type Position = (usize, usize);

/// Containers nest no deeper than this: deeper input is certainly not a tether config, and
/// the tree is later dropped and deserialized recursively.
const MAX_DEPTH: usize = 64;

/// Values in the tree, counting every copy an alias makes: bounds the memory a small file can
/// claim through nested aliases ("billion laughs").
const MAX_NODES: usize = 100_000;

/// The YAML 1.2 tag prefix that `!!str` and friends expand to.
const CORE_TAG_HANDLE: &str = "tag:yaml.org,2002:";

/// One problem in the YAML text itself (syntax, duplicate keys, environment references).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(super) struct SourceError {
    pub(crate) position: Option<Position>,
    /// Field path of the offending value (`serde_path_to_error` format); empty at top level.
    pub(crate) path: String,
    pub(crate) message: String,
}

/// A YAML document as a `serde_yaml::Value` plus where each of its paths was written.
#[derive(Debug)]
pub(super) struct Document {
    /// `Value::Null` for an empty document.
    pub(crate) value: Value,
    pub(crate) index: PositionIndex,
}

/// Field path (`upstreams.app.backends[1].address`) -> where its key and value start.
#[derive(Debug, Default)]
pub(super) struct PositionIndex {
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// Where the mapping key naming this path starts; `None` for sequence items and the root.
    key: Option<Position>,
    value: Position,
}

impl PositionIndex {
    /// Where the value at `path` starts or, for a path that is not in the file (a defaulted
    /// field), where its closest written ancestor starts.
    pub(super) fn value(&self, path: &str) -> Option<Position> {
        let mut path = path;
        loop {
            if let Some(entry) = self.entries.get(path) {
                return Some(entry.value);
            }
            path = parent(path)?;
        }
    }

    /// Where the key naming `path` starts (for "unknown key" errors); falls back to
    /// [`Self::value`].
    pub(super) fn key(&self, path: &str) -> Option<Position> {
        match self.entries.get(path) {
            Some(Entry { key: Some(key), .. }) => Some(*key),
            _ => self.value(path),
        }
    }

    fn insert(&mut self, path: String, entry: Entry) {
        self.entries.insert(path, entry);
    }

    /// Entries at `path` and below it, for copying under an alias.
    fn subtree(&self, path: &str) -> Vec<(String, Entry)> {
        self.entries
            .range(path.to_owned()..)
            .take_while(|(p, _)| p.starts_with(path))
            .filter(|(p, _)| {
                path.is_empty() || p.len() == path.len() || {
                    let next = p.as_bytes()[path.len()];
                    next == b'.' || next == b'['
                }
            })
            .map(|(p, e)| (p.clone(), *e))
            .collect()
    }
}

/// `a.b[2]` -> `a.b`, `a.b` -> `a`, `a` -> `` (the root), `` -> none.
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_owned() } else { format!("{parent}.{key}") }
}

fn position(mark: &Marker) -> Position {
    // yaml-rust2 counts lines from 1 but columns from 0.
    (mark.line(), mark.col() + 1)
}

/// Parse `text` into a positioned tree, expanding `${VAR}` references with `env`.
///
/// A YAML syntax error stops at once; duplicate keys, bad tags and environment problems are
/// collected so they can be reported together.
pub(super) fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Document, Vec<SourceError>> {
    // yaml-rust2 reads a NUL as the end of the input, so whatever follows one would be
    // silently ignored (a route's `auth`, say). YAML allows no NUL in a stream: refuse it.
    if let Some(at) = text.find('\0') {
        return Err(vec![SourceError {
            position: Some(text_position(text, at)),
            path: String::new(),
            message: "the file contains a NUL character, which YAML does not allow".into(),
        }]);
    }
    let mut builder = Builder {
        env,
        stack: Vec::new(),
        root: None,
        documents: 0,
        index: PositionIndex::default(),
        anchors: HashMap::new(),
        nodes: 0,
        errors: Vec::new(),
    };
    let mut parser = Parser::new_from_str(text);
    loop {
        let (event, mark) = parser.next_token().map_err(|e| {
            vec![SourceError {
                position: Some(position(e.marker())),
                path: String::new(),
                message: format!("YAML syntax error: {}", e.info()),
            }]
        })?;
        match event {
            Event::StreamEnd => break,
            event => builder.on_event(event, mark).map_err(|e| vec![e])?,
        }
    }
    if builder.errors.is_empty() {
        Ok(Document { value: builder.root.unwrap_or(Value::Null), index: builder.index })
    } else {
        Err(builder.errors)
    }
}

/// The 1-based line and column (in characters) of byte `at` of `text`, counting line breaks
/// as YAML does (LF, CRLF or a lone CR).
fn text_position(text: &str, at: usize) -> Position {
    let (mut line, mut column) = (1, 1);
    let mut chars = text[..at].chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' | '\n' => {
                if c == '\r' {
                    chars.next_if_eq(&'\n');
                }
                line += 1;
                column = 1;
            }
            _ => column += 1,
        }
    }
    (line, column)
}

struct Builder<'e> {
    env: &'e dyn Fn(&str) -> Option<String>,
    stack: Vec<Frame>,
    root: Option<Value>,
    documents: usize,
    index: PositionIndex,
    /// Anchor id -> (path where it was defined, its value, how many nodes it holds).
    anchors: HashMap<usize, (String, Value, usize)>,
    nodes: usize,
    /// Problems that do not stop the parse.
    errors: Vec<SourceError>,
}

struct Frame {
    path: String,
    key_position: Option<Position>,
    position: Position,
    anchor: usize,
    nodes_before: usize,
    kind: FrameKind,
}

enum FrameKind {
    Seq(Vec<Value>),
    Map {
        map: Mapping,
        /// The key whose value comes next; `None` while waiting for a key.
        pending: Option<PendingKey>,
        keys_seen: usize,
    },
}

struct PendingKey {
    key: String,
    position: Position,
    /// A duplicate: its value is parsed (to keep going) but not stored.
    discard: bool,
}

/// Where the node that starts now belongs.
struct Slot {
    path: String,
    key_position: Option<Position>,
}

impl Builder<'_> {
    fn on_event(&mut self, event: Event, mark: Marker) -> Result<(), SourceError> {
        if self.expects_key() && event != Event::MappingEnd {
            return self.on_key(event, mark);
        }
        match event {
            Event::StreamStart | Event::DocumentEnd | Event::Nothing | Event::StreamEnd => Ok(()),
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(SourceError {
                        position: Some(position(&mark)),
                        path: String::new(),
                        message: "a config file holds one YAML document; found a second one".into(),
                    });
                }
                Ok(())
            }
            Event::Scalar(text, style, anchor, tag) => {
                let slot = self.slot();
                let value_position = if text.is_empty() && style == TScalarStyle::Plain {
                    // An empty value is reported where the next token starts (often the next
                    // line); its key is the place a reader looks for it.
                    slot.key_position.unwrap_or(position(&mark))
                } else {
                    position(&mark)
                };
                let value = self.scalar(&slot.path, value_position, text, style, tag.as_ref());
                self.count(1, &slot.path, value_position)?;
                self.index.insert(slot.path.clone(), Entry { key: slot.key_position, value: value_position });
                if anchor != 0 {
                    self.anchors.insert(anchor, (slot.path, value.clone(), 1));
                }
                self.attach(value);
                Ok(())
            }
            Event::Alias(anchor) => {
                let slot = self.slot();
                let at = position(&mark);
                let Some((defined_at, value, nodes)) = self.anchors.get(&anchor).cloned() else {
                    return Err(SourceError {
                        position: Some(at),
                        path: slot.path,
                        message: "alias refers to an unknown anchor".into(),
                    });
                };
                self.count(nodes, &slot.path, at)?;
                for (path, entry) in self.index.subtree(&defined_at) {
                    let path = format!("{}{}", slot.path, &path[defined_at.len()..]);
                    self.index.insert(path, entry);
                }
                self.index.insert(slot.path, Entry { key: slot.key_position, value: at });
                self.attach(value);
                Ok(())
            }
            Event::SequenceStart(anchor, tag) => self.start_container(false, anchor, tag, mark),
            Event::MappingStart(anchor, tag) => self.start_container(true, anchor, tag, mark),
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = self.stack.pop() else {
                    return Ok(());
                };
                let value = match frame.kind {
                    FrameKind::Seq(items) => Value::Sequence(items),
                    FrameKind::Map { map, .. } => Value::Mapping(map),
                };
                self.index.insert(frame.path.clone(), Entry { key: frame.key_position, value: frame.position });
                if frame.anchor != 0 {
                    let nodes = self.nodes - frame.nodes_before;
                    self.anchors.insert(frame.anchor, (frame.path, value.clone(), nodes));
                }
                self.attach(value);
                Ok(())
            }
        }
    }

    fn start_container(
        &mut self,
        is_map: bool,
        anchor: usize,
        tag: Option<Tag>,
        mark: Marker,
    ) -> Result<(), SourceError> {
        let slot = self.slot();
        let at = position(&mark);
        if self.stack.len() >= MAX_DEPTH {
            return Err(SourceError {
                position: Some(at),
                path: slot.path,
                message: format!("nested deeper than {MAX_DEPTH} levels"),
            });
        }
        let expected = if is_map { "map" } else { "seq" };
        if let Some(tag) = tag.filter(|t| !is_core_tag(t, expected)) {
            self.errors.push(SourceError {
                position: Some(at),
                path: slot.path.clone(),
                message: format!("unsupported tag {}", tag_name(&tag)),
            });
        }
        self.count(1, &slot.path, at)?;
        let kind = if is_map {
            FrameKind::Map { map: Mapping::new(), pending: None, keys_seen: 0 }
        } else {
            FrameKind::Seq(Vec::new())
        };
        self.stack.push(Frame {
            path: slot.path,
            key_position: slot.key_position,
            position: at,
            anchor,
            nodes_before: self.nodes - 1,
            kind,
        });
        Ok(())
    }

    fn expects_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame { kind: FrameKind::Map { pending: None, .. }, .. }))
    }

    fn on_key(&mut self, event: Event, mark: Marker) -> Result<(), SourceError> {
        let at = position(&mark);
        let Some(frame) = self.stack.last_mut() else {
            return Ok(());
        };
        let FrameKind::Map { map, pending, keys_seen } = &mut frame.kind else {
            return Ok(());
        };
        match event {
            Event::Scalar(key, style, _, _) => {
                if key == "<<" && style == TScalarStyle::Plain {
                    return Err(SourceError {
                        position: Some(at),
                        path: frame.path.clone(),
                        message: "merge keys (<<) are not supported; repeat the values or use \
                                  an alias for a whole value"
                            .into(),
                    });
                }
                // A block mapping's start mark lies just after its first key; the key is where
                // the mapping really starts.
                if *keys_seen == 0 && at < frame.position {
                    frame.position = at;
                }
                *keys_seen += 1;
                let discard = map.contains_key(key.as_str());
                if discard {
                    let first = self.index.entries.get(&child_path(&frame.path, &key)).and_then(|e| e.key);
                    let first =
                        first.map(|(line, column)| format!(" (first defined at {line}:{column})")).unwrap_or_default();
                    self.errors.push(SourceError {
                        position: Some(at),
                        path: child_path(&frame.path, &key),
                        message: format!("duplicate key {key:?}{first}"),
                    });
                }
                *pending = Some(PendingKey { key, position: at, discard });
                Ok(())
            }
            _ => Err(SourceError {
                position: Some(at),
                path: frame.path.clone(),
                message: "mapping keys must be plain text, not aliases, lists or mappings".into(),
            }),
        }
    }

    fn slot(&self) -> Slot {
        match self.stack.last() {
            None => Slot { path: String::new(), key_position: None },
            Some(Frame { path, kind: FrameKind::Seq(items), .. }) => {
                Slot { path: format!("{path}[{}]", items.len()), key_position: None }
            }
            Some(Frame { path, kind: FrameKind::Map { pending, .. }, .. }) => match pending {
                Some(key) => Slot { path: child_path(path, &key.key), key_position: Some(key.position) },
                None => Slot { path: path.clone(), key_position: None },
            },
        }
    }

    fn attach(&mut self, value: Value) {
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame { kind: FrameKind::Seq(items), .. }) => items.push(value),
            Some(Frame { kind: FrameKind::Map { map, pending, .. }, .. }) => {
                if let Some(key) = pending.take()
                    && !key.discard
                {
                    map.insert(Value::String(key.key), value);
                }
            }
        }
    }

    fn count(&mut self, nodes: usize, path: &str, at: Position) -> Result<(), SourceError> {
        self.nodes = self.nodes.saturating_add(nodes);
        if self.nodes > MAX_NODES {
            return Err(SourceError {
                position: Some(at),
                path: path.to_owned(),
                message: format!("the document holds more than {MAX_NODES} values (counting alias copies)"),
            });
        }
        Ok(())
    }

    fn scalar(&mut self, path: &str, at: Position, text: String, style: TScalarStyle, tag: Option<&Tag>) -> Value {
        let text = match expand(&text, self.env) {
            Ok(text) => text,
            Err(e) => {
                self.errors.push(SourceError { position: Some(at), path: path.to_owned(), message: e.to_string() });
                return Value::String(text);
            }
        };
        let Some(tag) = tag else {
            return match style {
                TScalarStyle::Plain => resolve_plain(text),
                _ => Value::String(text),
            };
        };
        if tag.handle == "!" && tag.suffix.is_empty() {
            // `! value`: the non-specific tag forces a string.
            return Value::String(text);
        }
        if tag.handle != CORE_TAG_HANDLE {
            self.errors.push(SourceError {
                position: Some(at),
                path: path.to_owned(),
                message: format!("unsupported tag {}", tag_name(tag)),
            });
            return Value::String(text);
        }
        if tag.suffix == "str" {
            return Value::String(text);
        }
        let resolved = resolve_plain(text.clone());
        let matches = match tag.suffix.as_str() {
            "null" => resolved.is_null(),
            "bool" => resolved.is_bool(),
            "int" => is_int(&resolved),
            "float" => resolved.is_number(),
            _ => false,
        };
        if !matches {
            self.errors.push(SourceError {
                position: Some(at),
                path: path.to_owned(),
                message: format!("{text:?} is not a valid {}", tag_name(tag)),
            });
            return Value::String(text);
        }
        resolved
    }
}

fn is_int(value: &Value) -> bool {
    value.as_i64().is_some() || value.as_u64().is_some()
}

fn is_core_tag(tag: &Tag, suffix: &str) -> bool {
    tag.handle == CORE_TAG_HANDLE && tag.suffix == suffix
}

fn tag_name(tag: &Tag) -> String {
    if tag.handle == CORE_TAG_HANDLE { format!("!!{}", tag.suffix) } else { format!("{}{}", tag.handle, tag.suffix) }
}

/// A plain scalar's type per the YAML 1.2 core schema; anything else is a string.
fn resolve_plain(text: String) -> Value {
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Number(f64::INFINITY.into());
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Number(f64::NEG_INFINITY.into()),
        ".nan" | ".NaN" | ".NAN" => return Value::Number(f64::NAN.into()),
        _ => {}
    }
    if let Some(number) = resolve_int(&text) {
        return Value::Number(number);
    }
    // An integer too large for 64 bits stays text rather than silently losing digits as a
    // float; the field it belongs to then reports the wrong type.
    let digits = text.strip_prefix(['-', '+']).unwrap_or(&text);
    let is_integer_form = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    if !is_integer_form && let Some(number) = resolve_float(&text) {
        return Value::Number(number);
    }
    Value::String(text)
}

/// `[-+]?[0-9]+`, `0o[0-7]+`, `0x[0-9a-fA-F]+`; `None` when it is not one, or does not fit
/// 64 bits (it then stays a string and its field reports the type).
fn resolve_int(text: &str) -> Option<Number> {
    if let Some(octal) = text.strip_prefix("0o") {
        return u64::from_str_radix(octal, 8).ok().map(Number::from);
    }
    if let Some(hex) = text.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).ok().map(Number::from);
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if text.starts_with('-') {
        text.parse::<i64>().ok().map(Number::from)
    } else {
        digits.parse::<u64>().ok().map(Number::from)
    }
}

/// `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`
fn resolve_float(text: &str) -> Option<Number> {
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (mantissa, None),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = all_digits(whole)
        && fraction.is_none_or(all_digits)
        && (!whole.is_empty() || fraction.is_some_and(|f| !f.is_empty()));
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && all_digits(e)
    });
    if !mantissa_ok || !exponent_ok {
        return None;
    }
    text.parse::<f64>().ok().map(Number::from)
}

/// Why a `${...}` reference could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum ExpandError {
    #[error("environment variable {0} is not set (write ${{{0}:-default}} to give a default)")]
    Unset(String),
    #[error("unterminated \"${{\" (write \"$${{\" for a literal \"${{\")")]
    Unterminated,
    #[error("invalid environment variable name {0:?} in \"${{...}}\"")]
    BadName(String),
}

/// Expand `${VAR}` and `${VAR:-default}` in one scalar; `$${` is a literal `${`.
///
/// As in the shell, `${VAR:-default}` uses the default when `VAR` is unset or empty, and
/// `${VAR}` of a set but empty variable is empty. Defaults are taken literally (no nesting).
pub(super) fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    if !text.contains("${") {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        if rest[..start].ends_with('$') {
            // `$${`: the first `$` escapes the reference.
            out.push_str(&rest[..start - 1]);
            out.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or(ExpandError::Unterminated)?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        if !is_env_name(name) {
            return Err(ExpandError::BadName(name.to_owned()));
        }
        match (env(name), default) {
            (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => return Err(ExpandError::Unset(name.to_owned())),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `[A-Za-z_][A-Za-z0-9_]*`: what a POSIX shell accepts as a variable name.
pub(super) fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests;
