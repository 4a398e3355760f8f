//! A YAML tree whose every node knows its line and column, built from
//! `saphyr-parser` events. Duplicate keys are errors; anchors and aliases
//! work within a budget (alias bombs are refused); scalars are typed by the
//! YAML 1.2 core schema (only plain scalars can be null, booleans or
//! numbers; quoted ones are always strings).

use saphyr_parser::{Event, Parser, ScalarStyle};
use serde_json::{Map, Number, Value};

/// A 1-based position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub col: usize,
}

/// A node and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Position of the node's first character.
    pub pos: Pos,
    /// The value.
    pub value: NodeValue,
}

/// A node's value.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeValue {
    /// A scalar, already typed.
    Scalar(Value),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in source order.
    Map(Vec<Entry>),
}

/// One mapping entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// Where the key is.
    pub key_pos: Pos,
    /// The value.
    pub value: Node,
}

/// One document of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Where it starts.
    pub pos: Pos,
    /// Its root node.
    pub root: Node,
}

/// A problem found while reading YAML.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    /// Where.
    pub pos: Pos,
    /// What.
    pub message: String,
}

/// Limits against hostile input.
const MAX_NODES: usize = 1_000_000;
const MAX_DEPTH: usize = 256;
/// Nodes aliases may add to one parse: a copy costs ~100 bytes a node
/// (then as much again as JSON), so ~10 MB; real manifests alias a few
/// small maps. (Measured: eight bombs at once raise a node's peak RSS by
/// ~22 MB, `tests/http_hardening.rs`.)
pub const MAX_ALIAS_NODES: usize = 50_000;
/// Nodes aliases may add to all parses running at once (eight hostile
/// requests in parallel once took a node from 52 MB to 877 MB).
pub const MAX_ALIAS_NODES_IN_FLIGHT: usize = 150_000;

static ALIAS_NODES_IN_FLIGHT: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// What one parse took of the shared alias budget; given back at its end.
#[derive(Default)]
struct AliasBudget {
    taken: usize,
}

impl AliasBudget {
    fn take(&mut self, n: usize) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        if self.taken + n > MAX_ALIAS_NODES {
            return Err(format!(
                "aliases expand to more than {MAX_ALIAS_NODES} nodes (an alias bomb?); refused"
            ));
        }
        let before = ALIAS_NODES_IN_FLIGHT.fetch_add(n, Ordering::SeqCst);
        self.taken += n;
        if before + n > MAX_ALIAS_NODES_IN_FLIGHT {
            return Err(format!(
                "aliases of the documents this node is parsing at once expand to more than \
                 {MAX_ALIAS_NODES_IN_FLIGHT} nodes; refused, retry later"
            ));
        }
        Ok(())
    }
}

impl Drop for AliasBudget {
    fn drop(&mut self) {
        ALIAS_NODES_IN_FLIGHT.fetch_sub(self.taken, std::sync::atomic::Ordering::SeqCst);
    }
}

fn pos_of(m: saphyr_parser::Marker) -> Pos {
    Pos {
        line: m.line(),
        col: m.col() + 1,
    }
}

enum Frame {
    Seq(Pos, usize, Vec<Node>),
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<Entry>,
        pending_key: Option<(String, Pos)>,
    },
}

/// Parse a (multi-document) YAML stream. Documents completed before a
/// syntax error are returned along with the error.
pub fn parse(text: &str) -> (Vec<Document>, Vec<YamlError>) {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: std::collections::HashMap<usize, Node> = std::collections::HashMap::new();
    let mut doc_pos = Pos { line: 1, col: 1 };
    let mut root: Option<Node> = None;
    let mut nodes = 0usize;
    let mut alias_budget = AliasBudget::default();

    for item in Parser::new_from_str(text) {
        let (event, span) = match item {
            Ok(ev) => ev,
            Err(e) => {
                errors.push(YamlError {
                    pos: pos_of(*e.marker()),
                    message: describe_scan_error(e.info(), text, pos_of(*e.marker())),
                });
                return (docs, errors);
            }
        };
        let pos = pos_of(span.start);
        let complete: Option<Node> = match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing => None,
            Event::DocumentStart(_) => {
                doc_pos = pos;
                anchors.clear();
                root = None;
                None
            }
            Event::DocumentEnd => {
                match root.take() {
                    Some(r) => docs.push(Document {
                        pos: doc_pos,
                        root: r,
                    }),
                    None => docs.push(Document {
                        pos: doc_pos,
                        root: Node {
                            pos: doc_pos,
                            value: NodeValue::Scalar(Value::Null),
                        },
                    }),
                }
                None
            }
            Event::Scalar(text, style, anchor, tag) => {
                let value = if style == ScalarStyle::Plain
                    // `!!str` forces a string.
                    && tag.as_ref().is_none_or(|t| t.suffix != "str")
                {
                    type_plain(&text)
                } else {
                    Value::String(text.into_owned())
                };
                let node = Node {
                    pos,
                    value: NodeValue::Scalar(value),
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                Some(node)
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some(n) => {
                    let size = count(n, MAX_ALIAS_NODES + 1);
                    nodes += size;
                    if let Err(message) = alias_budget.take(size) {
                        errors.push(YamlError { pos, message });
                        return (docs, errors);
                    }
                    let mut n = n.clone();
                    n.pos = pos;
                    Some(n)
                }
                None => {
                    errors.push(YamlError {
                        pos,
                        message: "alias to an unknown anchor".into(),
                    });
                    return (docs, errors);
                }
            },
            Event::SequenceStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    errors.push(YamlError {
                        pos,
                        message: format!("nesting deeper than {MAX_DEPTH} levels"),
                    });
                    return (docs, errors);
                }
                stack.push(Frame::Seq(pos, anchor, Vec::new()));
                None
            }
            Event::MappingStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    errors.push(YamlError {
                        pos,
                        message: format!("nesting deeper than {MAX_DEPTH} levels"),
                    });
                    return (docs, errors);
                }
                stack.push(Frame::Map {
                    pos,
                    anchor,
                    entries: Vec::new(),
                    pending_key: None,
                });
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq(p, anchor, items)) => {
                    let node = Node {
                        pos: p,
                        value: NodeValue::Seq(items),
                    };
                    if anchor > 0 {
                        anchors.insert(anchor, node.clone());
                    }
                    Some(node)
                }
                _ => None,
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map {
                    pos: p,
                    anchor,
                    entries,
                    ..
                }) => {
                    let node = Node {
                        pos: p,
                        value: NodeValue::Map(entries),
                    };
                    if anchor > 0 {
                        anchors.insert(anchor, node.clone());
                    }
                    Some(node)
                }
                _ => None,
            },
        };
        let Some(node) = complete else { continue };
        nodes += 1;
        if nodes > MAX_NODES {
            errors.push(YamlError {
                pos,
                message: format!("more than {MAX_NODES} nodes; refused"),
            });
            return (docs, errors);
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq(_, _, items)) => items.push(node),
            Some(Frame::Map {
                entries,
                pending_key,
                ..
            }) => {
                match pending_key.take() {
                    None => {
                        let key = match &node.value {
                            NodeValue::Scalar(Value::String(s)) => s.clone(),
                            NodeValue::Scalar(Value::Null) => "null".into(),
                            NodeValue::Scalar(v) => v.to_string(),
                            _ => {
                                errors.push(YamlError {
                                pos: node.pos,
                                message: "mapping keys must be plain strings, not sequences or mappings".into(),
                            });
                                "<complex key>".into()
                            }
                        };
                        if let Some(first) = entries.iter().find(|e| e.key == key) {
                            errors.push(YamlError {
                                pos: node.pos,
                                message: format!(
                                    "duplicate key {key:?} (first at line {})",
                                    first.key_pos.line
                                ),
                            });
                        }
                        *pending_key = Some((key, node.pos));
                    }
                    Some((key, key_pos)) => entries.push(Entry {
                        key,
                        key_pos,
                        value: node,
                    }),
                }
            }
        }
    }
    (docs, errors)
}

/// Nodes in `n`, counted up to about `limit` (a count past it is only
/// known to be past it).
fn count(n: &Node, limit: usize) -> usize {
    let mut total = 1;
    match &n.value {
        NodeValue::Scalar(_) => {}
        NodeValue::Seq(items) => {
            for i in items {
                total += count(i, limit);
                if total > limit {
                    break;
                }
            }
        }
        NodeValue::Map(entries) => {
            for e in entries {
                total += 1 + count(&e.value, limit);
                if total > limit {
                    break;
                }
            }
        }
    }
    total
}

/// Make the parser's message say what a person should fix.
fn describe_scan_error(info: &str, text: &str, pos: Pos) -> String {
    let line = text.lines().nth(pos.line.saturating_sub(1)).unwrap_or("");
    let indent: String = line.chars().take_while(|c| c.is_whitespace()).collect();
    if indent.contains('\t') || info.contains("tab") {
        return format!(
            "YAML syntax: tabs are not allowed for indentation; indent with spaces ({info})"
        );
    }
    format!("YAML syntax: {info}")
}

/// Type a plain scalar by the YAML 1.2 core schema.
pub fn type_plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF"
        | ".nan" | ".NaN" | ".NAN" => {
            // JSON has no infinities or NaN; keep the text so the schema
            // reports a precise type error instead of a silent change.
            return Value::String(s.to_string());
        }
        _ => {}
    }
    let b = s.as_bytes();
    let digits = |t: &str, radix: u32| !t.is_empty() && t.chars().all(|c| c.is_digit(radix));
    if let Some(h) = s.strip_prefix("0x") {
        if digits(h, 16) {
            if let Ok(n) = i64::from_str_radix(h, 16) {
                return Value::from(n);
            }
        }
    } else if let Some(o) = s.strip_prefix("0o") {
        if digits(o, 8) {
            if let Ok(n) = i64::from_str_radix(o, 8) {
                return Value::from(n);
            }
        }
    }
    let unsigned = s.strip_prefix(['-', '+']).unwrap_or(s);
    if digits(unsigned, 10) {
        if let Ok(n) = s.parse::<i64>() {
            return Value::from(n);
        }
        if let Ok(n) = s.parse::<u64>() {
            return Value::from(n);
        }
    }
    let is_float = !b.is_empty()
        && unsigned
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '.')
        && unsigned
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        && unsigned.chars().any(|c| c.is_ascii_digit());
    if is_float {
        if let Ok(f) = s.parse::<f64>() {
            if let Some(n) = Number::from_f64(f) {
                return Value::Number(n);
            }
        }
    }
    Value::String(s.to_string())
}

/// The node as JSON.
pub fn to_json(n: &Node) -> Value {
    match &n.value {
        NodeValue::Scalar(v) => v.clone(),
        NodeValue::Seq(items) => Value::Array(items.iter().map(to_json).collect()),
        NodeValue::Map(entries) => {
            let mut m = Map::new();
            for e in entries {
                m.insert(e.key.clone(), to_json(&e.value));
            }
            Value::Object(m)
        }
    }
}

/// One step of a path into a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// Render a path the way users read it: `spec.disks[0].source`.
pub fn render_path(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Where a path points: the key's position (when the last step is a key
/// that exists) and the value's position. Missing steps fall back to the
/// deepest existing ancestor.
pub fn locate(root: &Node, path: &[Seg]) -> (Option<Pos>, Pos) {
    let mut node = root;
    let mut key_pos = None;
    for seg in path {
        let next = match (&node.value, seg) {
            (NodeValue::Map(entries), Seg::Key(k)) => entries
                .iter()
                .rev()
                .find(|e| e.key == *k)
                .map(|e| (Some(e.key_pos), &e.value)),
            (NodeValue::Seq(items), Seg::Index(i)) => items.get(*i).map(|n| (None, n)),
            _ => None,
        };
        match next {
            Some((kp, n)) => {
                key_pos = kp;
                node = n;
            }
            None => return (None, node.pos),
        }
    }
    (key_pos, node.pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_duplicates_and_typing() {
        let (docs, errs) =
            parse("a: 1\nb:\n  c: \"2\"\n  d: [x, 0x10, 1.5, ~, true]\na: 3\n---\nz: 1\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].pos, Pos { line: 5, col: 1 });
        assert!(errs[0]
            .message
            .contains("duplicate key \"a\" (first at line 1)"));
        let j = to_json(&docs[0].root);
        assert_eq!(j["b"]["c"], "2");
        assert_eq!(j["b"]["d"], serde_json::json!(["x", 16, 1.5, null, true]));
        let path = [Seg::Key("b".into()), Seg::Key("d".into()), Seg::Index(2)];
        assert_eq!(
            locate(&docs[0].root, &path),
            (None, Pos { line: 4, col: 16 })
        );
        let path = [Seg::Key("b".into()), Seg::Key("c".into())];
        assert_eq!(
            locate(&docs[0].root, &path),
            (Some(Pos { line: 3, col: 3 }), Pos { line: 3, col: 6 })
        );
        assert_eq!(
            render_path(&[
                Seg::Key("spec".into()),
                Seg::Key("disks".into()),
                Seg::Index(0),
                Seg::Key("source".into())
            ]),
            "spec.disks[0].source"
        );
        assert_eq!(docs[1].pos.line, 6);
    }

    #[test]
    fn tabs_and_syntax_errors_have_positions() {
        let (_, errs) = parse("a:\n\tb: 1\n");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.contains("tabs"), "{:?}", errs[0]);
        assert_eq!(errs[0].pos.line, 2);
        let (_, errs) = parse("a: [1, 2\nb: 3\n");
        assert_eq!(errs.len(), 1);
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut y = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            y.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n", p = i - 1));
        }
        let (_, errs) = parse(&y);
        assert!(errs.iter().any(|e| e.message.contains("alias")), "{errs:?}");
        // Refused long before a million nodes.
        let mut small = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..4 {
            small.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n", p = i - 1));
        }
        let (docs, errs) = parse(&small);
        assert!(errs.is_empty(), "10^4 nodes are fine: {errs:?}");
        assert_eq!(docs.len(), 1);
        small.push_str("a4: &a4 [*a3, *a3, *a3, *a3, *a3, *a3, *a3, *a3, *a3, *a3]\n");
        let (_, errs) = parse(&small);
        let budget = format!("{MAX_ALIAS_NODES} nodes");
        assert!(errs.iter().any(|e| e.message.contains(&budget)), "{errs:?}");
    }

    #[test]
    fn quoted_scalars_stay_strings() {
        let (docs, _) = parse("a: 'true'\nb: \"1\"\nc: !!str 2\nd: yes\n");
        let j = to_json(&docs[0].root);
        assert_eq!(
            j,
            serde_json::json!({"a": "true", "b": "1", "c": "2", "d": "yes"})
        );
    }
}
