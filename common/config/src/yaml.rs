//! Multi-document YAML (and JSON, which YAML 1.2 contains) into `serde_json::Value` trees,
//! keeping where every field sits in the source.
//!
//! serde's YAML front ends lose positions once a document is parsed, yet every diagnostic
//! Keel prints must name the line of the field it is about, including problems found long
//! after parsing (a weight sum, a subset name). So the event stream of the YAML parser is
//! turned into a value tree and, beside it, an index from field path to source position.
//! Scalars are resolved with the YAML 1.2 core schema; quoted scalars are always strings.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::path::FieldPath;

/// A place in a source file, 1-based.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    fn from_marker(m: Marker) -> Self {
        Pos {
            line: u32::try_from(m.line()).unwrap_or(u32::MAX),
            column: u32::try_from(m.col()).unwrap_or(u32::MAX).saturating_add(1),
        }
    }
}

/// One parsed document: its value and where each of its fields came from.
#[derive(Clone, Debug)]
pub struct YamlDocument {
    pub value: Value,
    /// Where the document's content starts.
    pub start: Pos,
    positions: HashMap<String, Pos>,
}

impl YamlDocument {
    /// The position of `path`, or of its nearest ancestor that exists in the source (a
    /// missing field is reported at the mapping that should have held it).
    pub fn position_of(&self, path: &FieldPath) -> Pos {
        let mut p = Some(path.clone());
        while let Some(cur) = p {
            if let Some(pos) = self.positions.get(&cur.normalized()) {
                return *pos;
            }
            p = cur.parent();
        }
        self.start
    }

    /// Builds a document from a value that did not come from text (tests, API callers).
    pub fn from_value(value: Value) -> Self {
        YamlDocument {
            value,
            start: Pos { line: 1, column: 1 },
            positions: HashMap::new(),
        }
    }
}

/// A syntax error: the input is not YAML, so none of its documents is used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{pos_line}:{pos_col}: {message}", pos_line = pos.line, pos_col = pos.column)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

/// The most values one input may hold once aliases are expanded.
const MAX_NODES: usize = 1_000_000;

fn node_count(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(node_count).sum::<usize>(),
        Value::Object(m) => 1 + m.values().map(node_count).sum::<usize>(),
        _ => 1,
    }
}

/// Parses every document of `text`. Empty documents (only comments, or a trailing `---`)
/// are dropped.
pub fn parse_documents(text: &str) -> Result<Vec<YamlDocument>, YamlError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, true).map_err(|e| YamlError {
        pos: Pos::from_marker(*e.marker()),
        message: e.info().to_owned(),
    })?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    Ok(builder.documents)
}

// === impl Builder ===

/// A node under construction. Positions are recorded as nodes complete.
#[derive(Debug)]
enum Frame {
    Seq {
        items: Vec<Value>,
        anchor: usize,
        start: Pos,
    },
    Map {
        map: Map<String, Value>,
        pending_key: Option<(String, Pos)>,
        anchor: usize,
        start: Pos,
    },
}

#[derive(Debug, Default)]
struct Builder {
    stack: Vec<Frame>,
    /// The path of the node being built: one segment per open collection below the root
    /// plus the slot being filled.
    path: FieldPath,
    positions: HashMap<String, Pos>,
    /// Anchored values and their sizes in nodes.
    anchors: HashMap<usize, (Value, usize)>,
    /// Nodes built so far, alias expansions included: bounded, so a few hundred bytes of
    /// nested aliases cannot expand into gigabytes.
    nodes: usize,
    documents: Vec<YamlDocument>,
    doc_start: Option<Pos>,
    root: Option<Value>,
    error: Option<YamlError>,
}

impl Builder {
    fn fail(&mut self, pos: Pos, message: String) {
        if self.error.is_none() {
            self.error = Some(YamlError { pos, message });
        }
    }

    /// The path of the slot the parser is filling.
    fn slot_path(&self) -> Option<FieldPath> {
        match self.stack.last() {
            None => Some(FieldPath::root()),
            Some(Frame::Seq { items, .. }) => Some(self.path.index(items.len())),
            Some(Frame::Map { pending_key, .. }) => {
                let (key, _) = pending_key.as_ref()?;
                Some(self.path.key(key.clone()))
            }
        }
    }

    /// Puts a completed value into its parent (or makes it the document root).
    fn place(&mut self, value: Value, pos: Pos, is_key_candidate: bool) {
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Seq { items, .. }) => {
                let p = self.path.index(items.len()).normalized();
                self.positions.entry(p).or_insert(pos);
                items.push(value);
            }
            Some(Frame::Map {
                map, pending_key, ..
            }) => match pending_key.take() {
                None => {
                    // This scalar is a key.
                    let key = match value {
                        Value::String(s) => s,
                        Value::Null => "null".to_owned(),
                        other if is_key_candidate => other.to_string(),
                        _ => {
                            self.error.get_or_insert(YamlError {
                                pos,
                                message: "mapping keys must be scalars".to_owned(),
                            });
                            return;
                        }
                    };
                    if map.contains_key(&key) {
                        let shown = self.path.key(key.clone());
                        self.error.get_or_insert(YamlError {
                            pos,
                            message: format!("duplicate key \"{key}\" (at {shown})"),
                        });
                    }
                    *pending_key = Some((key, pos));
                }
                Some((key, key_pos)) => {
                    let p = self.path.key(key.clone()).normalized();
                    self.positions.entry(p).or_insert(key_pos);
                    map.insert(key, value);
                }
            },
        }
    }

    /// Adds `n` nodes to the total; false (and an error) past the limit.
    fn count(&mut self, n: usize, pos: Pos) -> bool {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            self.fail(
                pos,
                format!(
                    "the input expands to more than {MAX_NODES} values (aliases nested too deep?)"
                ),
            );
            return false;
        }
        true
    }

    fn open(&mut self, frame: Frame, pos: Pos) {
        // A collection cannot be a mapping key.
        if let Some(Frame::Map {
            pending_key: None, ..
        }) = self.stack.last()
        {
            self.fail(pos, "mapping keys must be scalars".to_owned());
        }
        if let Some(path) = self.slot_path() {
            // Descend: the open collection's path becomes the current path.
            if !self.stack.is_empty() {
                self.path = path;
            }
        }
        self.stack.push(frame);
    }

    fn close(&mut self) {
        let Some(frame) = self.stack.pop() else {
            return;
        };
        let (value, anchor, start) = match frame {
            Frame::Seq {
                items,
                anchor,
                start,
            } => (Value::Array(items), anchor, start),
            Frame::Map {
                map, anchor, start, ..
            } => (Value::Object(map), anchor, start),
        };
        if anchor != 0 {
            let size = node_count(&value);
            self.anchors.insert(anchor, (value.clone(), size));
        }
        if !self.stack.is_empty() {
            self.path.pop();
        }
        self.place(value, start, false);
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let pos = Pos::from_marker(mark);
        match ev {
            Event::DocumentStart => {
                self.doc_start = None;
                self.root = None;
                self.positions.clear();
                self.path = FieldPath::root();
            }
            Event::DocumentEnd => {
                if let Some(value) = self.root.take()
                    && !value.is_null()
                {
                    self.documents.push(YamlDocument {
                        value,
                        start: self.doc_start.unwrap_or(pos),
                        positions: std::mem::take(&mut self.positions),
                    });
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                // The document is placed at its first scalar (the first key of a mapping):
                // collection start marks point past the indicator, not at the content.
                self.doc_start.get_or_insert(pos);
                let value = match resolve_scalar(&text, style, tag.as_ref()) {
                    Ok(v) => v,
                    Err(msg) => {
                        self.fail(pos, msg);
                        return;
                    }
                };
                if anchor != 0 {
                    self.anchors.insert(anchor, (value.clone(), 1));
                }
                if self.count(1, pos) {
                    self.place(value, pos, true);
                }
            }
            Event::Alias(id) => {
                let (value, size) = self.anchors.get(&id).cloned().unwrap_or((Value::Null, 1));
                if self.count(size, pos) {
                    self.place(value, pos, false);
                }
            }
            Event::SequenceStart(anchor, _) => {
                self.open(
                    Frame::Seq {
                        items: Vec::new(),
                        anchor,
                        start: pos,
                    },
                    pos,
                );
            }
            Event::MappingStart(anchor, _) => {
                self.open(
                    Frame::Map {
                        map: Map::new(),
                        pending_key: None,
                        anchor,
                        start: pos,
                    },
                    pos,
                );
            }
            Event::SequenceEnd | Event::MappingEnd => self.close(),
            Event::Nothing | Event::StreamStart | Event::StreamEnd => {}
        }
    }
}

/// Resolves a scalar with the YAML 1.2 core schema (what Kubernetes' YAML reader accepts
/// for the values Istio's schemas use). Quoted and block scalars are strings.
fn resolve_scalar(text: &str, style: TScalarStyle, tag: Option<&Tag>) -> Result<Value, String> {
    if let Some(tag) = tag
        && tag.handle == "tag:yaml.org,2002:"
    {
        return match tag.suffix.as_str() {
            "str" => Ok(Value::String(text.to_owned())),
            "null" => Ok(Value::Null),
            "bool" => match text {
                "true" | "True" | "TRUE" => Ok(Value::Bool(true)),
                "false" | "False" | "FALSE" => Ok(Value::Bool(false)),
                _ => Err(format!("\"{text}\" is not a !!bool")),
            },
            "int" => parse_int(text).ok_or_else(|| format!("\"{text}\" is not an !!int")),
            "float" => parse_float(text).ok_or_else(|| format!("\"{text}\" is not a !!float")),
            _ => Ok(Value::String(text.to_owned())),
        };
    }
    if style != TScalarStyle::Plain {
        return Ok(Value::String(text.to_owned()));
    }
    Ok(match text {
        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        _ => parse_int(text)
            .or_else(|| parse_float(text))
            .unwrap_or_else(|| Value::String(text.to_owned())),
    })
}

fn parse_int(text: &str) -> Option<Value> {
    let (neg, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let magnitude: u64 = if let Some(hex) = digits.strip_prefix("0x") {
        u64::from_str_radix(hex, 16).ok()?
    } else if let Some(oct) = digits.strip_prefix("0o") {
        u64::from_str_radix(oct, 8).ok()?
    } else {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()?
    };
    if neg {
        let n = i64::try_from(magnitude).ok()?;
        Some(Value::Number(Number::from(-n)))
    } else {
        Some(Value::Number(Number::from(magnitude)))
    }
}

fn parse_float(text: &str) -> Option<Value> {
    let body = text.trim_start_matches(['-', '+']);
    let looks_numeric = !body.is_empty()
        && body.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && body
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && body.bytes().any(|b| b.is_ascii_digit());
    if !looks_numeric {
        // .inf and .nan have no JSON form; leave them as strings for the schema to refuse.
        return None;
    }
    let f: f64 = text.parse().ok()?;
    Number::from_f64(f).map(Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_multiple_documents_with_positions() {
        let text = "\
apiVersion: v1
kind: A
spec:
  list:
  - name: x
    weight: 50
---
# comment only
---
kind: B
value: \"2\"
";
        let docs = parse_documents(text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(
            docs[0].value,
            json!({"apiVersion": "v1", "kind": "A", "spec": {"list": [{"name": "x", "weight": 50}]}})
        );
        assert_eq!(docs[1].value, json!({"kind": "B", "value": "2"}));
        assert_eq!(docs[0].start.line, 1);
        assert_eq!(docs[1].start.line, 10);
        let pos = docs[0].position_of(&FieldPath::parse("spec.list[0].weight"));
        assert_eq!((pos.line, pos.column), (6, 5));
        let pos = docs[0].position_of(&FieldPath::parse("spec.list[0]"));
        assert_eq!(pos.line, 5);
        // A missing field is placed at its nearest existing ancestor.
        let pos = docs[0].position_of(&FieldPath::parse("spec.list[0].subset"));
        assert_eq!(pos.line, 5);
        let pos = docs[1].position_of(&FieldPath::parse("value"));
        assert_eq!(pos.line, 11);
    }

    #[test]
    fn resolves_scalars_like_the_core_schema() {
        let docs = parse_documents(
            "a: 1\nb: -2\nc: 1.5\nd: true\ne: ~\nf: 'true'\ng: 7s\nh: 0x1F\ni: !!str 5\nj: 1e3\nk: .inf\n",
        )
        .unwrap();
        assert_eq!(
            docs[0].value,
            json!({"a": 1, "b": -2, "c": 1.5, "d": true, "e": null, "f": "true", "g": "7s", "h": 31, "i": "5", "j": 1000.0, "k": ".inf"})
        );
    }

    #[test]
    fn reads_json() {
        let docs =
            parse_documents(r#"{"kind": "X", "spec": {"hosts": ["a", "b"], "n": 3}}"#).unwrap();
        assert_eq!(
            docs[0].value,
            json!({"kind": "X", "spec": {"hosts": ["a", "b"], "n": 3}})
        );
    }

    #[test]
    fn reports_syntax_errors_with_position() {
        let err = parse_documents("a: b\n  c: d\n").unwrap_err();
        assert_eq!(err.pos.line, 2);
        let err = parse_documents("a: [1, 2\n").unwrap_err();
        assert!(err.pos.line >= 1, "{err}");
    }

    #[test]
    fn refuses_duplicate_keys() {
        let err = parse_documents("spec:\n  hosts: [a]\n  hosts: [b]\n").unwrap_err();
        assert_eq!(err.pos.line, 3);
        assert!(
            err.message.contains("duplicate key \"hosts\""),
            "{}",
            err.message
        );
    }

    #[test]
    fn refuses_alias_bombs() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = parse_documents(&text).unwrap_err();
        assert!(err.message.contains("more than"), "{}", err.message);
    }

    #[test]
    fn expands_aliases() {
        let docs = parse_documents("base: &b {x: 1}\ncopy: *b\n").unwrap();
        assert_eq!(docs[0].value, json!({"base": {"x": 1}, "copy": {"x": 1}}));
    }
}

/// Renders a value as a YAML document (without the leading `---`), keys in the value's
/// order. Used for `get -o yaml` and for the files galley writes.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    let mut emitter = yaml_rust2::YamlEmitter::new(&mut out);
    emitter.multiline_strings(true);
    if emitter.dump(&to_yaml_node(value)).is_err() {
        // Writing into a String cannot fail; JSON is the faithful fallback anyway.
        return serde_json::to_string_pretty(value).unwrap_or_default();
    }
    let body = out.strip_prefix("---\n").unwrap_or(&out).to_owned() + "\n";
    // The emitter quotes by its own rules, which are not quite the reader's (a string such as
    // "0o17" could come back a number). Whatever does not read back identically is written
    // as JSON, which is YAML too.
    match parse_documents(&body) {
        Ok(docs) if docs.len() == 1 && docs[0].value == *value => body,
        _ => serde_json::to_string_pretty(value).unwrap_or_default() + "\n",
    }
}

fn to_yaml_node(value: &Value) -> yaml_rust2::Yaml {
    use yaml_rust2::Yaml;
    match value {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(items) => Yaml::Array(items.iter().map(to_yaml_node).collect()),
        Value::Object(map) => {
            let mut h = yaml_rust2::yaml::Hash::new();
            for (k, v) in map {
                h.insert(Yaml::String(k.clone()), to_yaml_node(v));
            }
            Yaml::Hash(h)
        }
    }
}

#[cfg(test)]
mod emit_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_output_reads_back_identically() {
        let v = json!({
            "apiVersion": "config.istio.io/v1alpha2",
            "kind": "metric",
            "metadata": {"name": "doublerequestcount", "namespace": "istio-system"},
            "spec": {
                "value": "2",
                "dimensions": {"message": "\"twice the fun!\"", "source": "source.service | \"unknown\""},
                "flag": true, "n": 5, "x": 1.5, "empty": null, "list": ["a", "7s", "true", "10", "0o17", "NULL", "True", ".inf", "0x1F"],
                "multi": "line one\nline two\n"
            }
        });
        let text = to_yaml(&v);
        let back = parse_documents(&text).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].value, v, "{text}");
    }
}
