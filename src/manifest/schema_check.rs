//! Checking one document against its kind's JSON schema, turning every
//! schema error into a precise message at the right position.

use std::collections::HashMap;
use std::sync::OnceLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::paths::LocationSegment;
use jsonschema::{ValidationError, Validator};
use serde_json::Value;

use super::yaml::Seg;
use super::Problem;
use crate::model::common::{
    Cpu, Duration, GuestMemory, Quantity, RecordSize, Vcpus, WholeCpus, CPU_PATTERN,
    DURATION_PATTERN, QUANTITY_PATTERN,
};
use crate::model::Kind;
use crate::schema::DNS1123_LABEL_PATTERN;

struct Compiled {
    schema: Value,
    validator: Validator,
}

fn compiled(kind: Kind) -> &'static Compiled {
    static CACHE: OnceLock<HashMap<Kind, Compiled>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| {
        Kind::ALL
            .iter()
            .map(|k| {
                let schema = k.schema().to_value();
                let validator =
                    jsonschema::draft7::new(&schema).expect("generated schemas compile");
                (*k, Compiled { schema, validator })
            })
            .collect()
    });
    &cache[&kind]
}

/// Compile every kind's schema now rather than on the first document: a
/// node calls this before it answers, so its first apply is not the one
/// that pays for compiling the schemas' patterns.
pub fn warm_up() {
    let _ = compiled(Kind::VirtualMachine);
}

/// Every schema problem of `doc` (a `kind` object).
pub fn check(kind: Kind, doc: &Value) -> Vec<Problem> {
    let c = compiled(kind);
    let mut out = Vec::new();
    for err in c.validator.iter_errors(doc) {
        explain(&c.schema, &err, &mut out);
    }
    if out.is_empty() {
        // The schema says "string matching a pattern"; the parsers know
        // more (overflow, fractions of bytes).
        value_types(&c.schema, &c.schema, doc, &mut Vec::new(), &mut out);
    }
    out
}

fn segs(err: &ValidationError<'_>) -> Vec<Seg> {
    err.instance_path()
        .iter()
        .map(|s| match s {
            LocationSegment::Property(p) => Seg::Key(p.into_owned()),
            LocationSegment::Index(i) => Seg::Index(i),
        })
        .collect()
}

/// A short description of a JSON value for messages.
pub fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null (an empty value)".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) if n.is_i64() || n.is_u64() => format!("the integer {n}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

fn type_name(t: &str) -> &str {
    match t {
        "object" => "a mapping",
        "array" => "a list",
        "string" => "a string",
        "integer" => "an integer",
        "number" => "a number",
        "boolean" => "true or false",
        "null" => "nothing",
        other => other,
    }
}

/// The schema node at an instance path (following `$ref`s and the non-null
/// branch of `anyOf`), to list the fields a mapping accepts.
fn schema_at<'a>(root: &'a Value, mut node: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    for seg in path {
        node = resolve(root, node)?;
        node = match seg {
            Seg::Key(k) => node
                .get("properties")
                .and_then(|p| p.get(k))
                .or_else(|| node.get("additionalProperties").filter(|a| a.is_object()))?,
            Seg::Index(_) => node.get("items")?,
        };
    }
    resolve(root, node)
}

fn resolve<'a>(root: &'a Value, node: &'a Value) -> Option<&'a Value> {
    Some(crate::schema::resolve(root, node, &|_| false))
}

fn field_list(schema: Option<&Value>) -> Vec<String> {
    schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// The closest candidate by edit distance, if close enough.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let w = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (levenshtein(&w, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The message for a string that failed one of the model's patterns.
fn pattern_message(pattern: &str, value: &Value) -> String {
    let s = value.as_str().unwrap_or_default();
    let parsed = match pattern {
        p if p == QUANTITY_PATTERN => s.parse::<Quantity>().err().map(|e| e.0),
        p if p == CPU_PATTERN => s.parse::<Cpu>().err().map(|e| e.0),
        p if p == DURATION_PATTERN => s.parse::<Duration>().err().map(|e| e.0),
        p if p == DNS1123_LABEL_PATTERN => Some(dns_message(s)),
        _ => None,
    };
    parsed.unwrap_or_else(|| format!("{} does not match the pattern {pattern}", describe(value)))
}

/// What a DNS-1123 label must look like.
pub fn dns_message(s: &str) -> String {
    format!(
        "{s:?} is not a DNS-1123 label: expected at most 63 lower-case letters, digits or '-', starting and ending with a letter or digit (e.g. \"web-1\")"
    )
}

/// The named value-type definition (`Quantity`, `Vcpus`, ...) of the
/// field at `path`, if it has one.
fn value_def_at<'a>(root: &'a Value, path: &[Seg]) -> Option<&'a str> {
    let (last, parent) = path.split_last()?;
    let parent = schema_at(root, root, parent)?;
    let mut node = match last {
        Seg::Key(k) => parent
            .get("properties")
            .and_then(|p| p.get(k))
            .or_else(|| parent.get("additionalProperties").filter(|a| a.is_object()))?,
        Seg::Index(_) => parent.get("items")?,
    };
    for _ in 0..4 {
        if let Some(r) = node.get("$ref").and_then(Value::as_str) {
            return r.strip_prefix("#/definitions/");
        }
        let branches = node
            .get("anyOf")
            .or_else(|| node.get("allOf"))
            .and_then(Value::as_array)?;
        node = branches
            .iter()
            .find(|b| b.get("type").and_then(Value::as_str) != Some("null"))?;
    }
    None
}

/// A whole number from a JSON number (`2` or `2.0`), as the value types
/// read one.
fn whole_number(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 18_446_744_073_709_551_616.0)
            .map(|f| f as u64)
    })
}

/// The message for a value of a value type (`def`) the schema refused,
/// from the type's own parser and range check, and whether the value is
/// unreadable (its parser fails). `None`: not a value type, or a JSON
/// type no value type takes (the generic message says so).
fn value_message(def: &str, v: &Value) -> Option<(String, bool)> {
    let parsed = |v: &Value| -> Option<Result<u64, String>> {
        let cpu = matches!(def, "Cpu" | "Vcpus" | "WholeCpus");
        if let Some(s) = v.as_str() {
            return Some(match def {
                "Cpu" | "Vcpus" | "WholeCpus" => s.parse::<Cpu>().map(|c| c.0).map_err(|e| e.0),
                "Quantity" | "GuestMemory" | "RecordSize" => {
                    s.parse::<Quantity>().map(|q| q.0).map_err(|e| e.0)
                }
                "Duration" | "PositiveDuration" => s
                    .parse::<Duration>()
                    .map(|d| d.0.as_millis() as u64)
                    .map_err(|e| e.0),
                _ => return None,
            });
        }
        let n = whole_number(v)?;
        Some(if cpu {
            n.checked_mul(1000)
                .ok_or_else(|| format!("CPU amount {n} is too large"))
        } else {
            Ok(n)
        })
    };
    let value = match parsed(v)? {
        Ok(n) => n,
        Err(e) => return Some((e, true)),
    };
    let problem = match def {
        "Vcpus" => Vcpus::problem(Cpu(value)),
        "WholeCpus" => WholeCpus::problem(Cpu(value)),
        "GuestMemory" => GuestMemory::problem(Quantity(value)),
        "RecordSize" => RecordSize::problem(Quantity(value)),
        "PositiveDuration" => {
            (value == 0).then(|| format!("must be longer than zero, found {}", describe(v)))
        }
        _ => None,
    };
    problem.map(|p| (p, false))
}

fn explain(root: &Value, err: &ValidationError<'_>, out: &mut Vec<Problem>) {
    let path = segs(err);
    let instance = err.instance();
    if let Some((message, unreadable)) =
        value_def_at(root, &path).and_then(|def| value_message(def, instance))
    {
        out.push(Problem {
            unreadable,
            ..Problem::at_value(path, message)
        });
        return;
    }
    let start = out.len();
    // Rules over present fields (an `if`/`then`, a `not`) leave the value
    // readable; a wrong type, enum value or missing field does not.
    let conditional = err
        .schema_path()
        .as_str()
        .split('/')
        .any(|s| s == "then" || s == "not");
    let unreadable = !conditional
        && match err.kind() {
            ValidationErrorKind::Type { kind } => !matches!(
                kind,
                TypeKind::Single(t) if t.as_str() == "null"
            ),
            ValidationErrorKind::Enum { .. }
            | ValidationErrorKind::Constant { .. }
            | ValidationErrorKind::AdditionalProperties { .. }
            | ValidationErrorKind::Required { .. } => true,
            ValidationErrorKind::Minimum { .. } => instance.as_f64().is_some_and(|f| f < 0.0),
            _ => false,
        };
    explain_kind(root, err, path, out);
    if unreadable {
        for p in &mut out[start..] {
            p.unreadable = true;
        }
    }
}

fn explain_kind(root: &Value, err: &ValidationError<'_>, path: Vec<Seg>, out: &mut Vec<Problem>) {
    let instance = err.instance();
    match err.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let fields = field_list(schema_at(root, root, &path));
            for key in unexpected {
                let mut p = path.clone();
                p.push(Seg::Key(key.clone()));
                let hint = did_you_mean(key, fields.iter().map(String::as_str))
                    .map(|m| format!(" (did you mean {m:?}?)"))
                    .unwrap_or_default();
                let msg = if fields.is_empty() {
                    format!("unknown field {key:?}: this mapping takes no fields")
                } else {
                    format!(
                        "unknown field {key:?}, expected one of: {}{hint}",
                        fields.join(", ")
                    )
                };
                out.push(Problem::at_key(p, msg));
            }
        }
        ValidationErrorKind::Required { property } => {
            // The path names the missing field; its position is the
            // mapping's (the nearest existing ancestor).
            let name = property.as_str().unwrap_or_default();
            let mut path = path;
            path.push(Seg::Key(name.into()));
            out.push(Problem::at_value(
                path,
                format!("missing required field {name:?}"),
            ));
        }
        ValidationErrorKind::Type { kind } => {
            let expected: Vec<&str> = match kind {
                TypeKind::Single(t) => vec![type_name(t.as_str())],
                TypeKind::Multiple(set) => set
                    .iter()
                    .map(|t| type_name(t.as_str()))
                    .filter(|t| *t != "nothing")
                    .collect(),
            };
            out.push(Problem::at_value(
                path,
                format!(
                    "expected {}, found {}",
                    expected.join(" or "),
                    describe(instance)
                ),
            ));
        }
        ValidationErrorKind::Pattern { pattern } => {
            out.push(Problem::at_value(path, pattern_message(pattern, instance)));
        }
        ValidationErrorKind::Enum { options } => {
            let opts: Vec<String> = options
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|o| {
                            o.as_str()
                                .map(str::to_owned)
                                .unwrap_or_else(|| o.to_string())
                        })
                        .collect()
                })
                .unwrap_or_default();
            let hint = instance
                .as_str()
                .and_then(|s| did_you_mean(s, opts.iter().map(String::as_str)))
                .map(|m| format!(" (did you mean {m:?}?)"))
                .unwrap_or_default();
            out.push(Problem::at_value(
                path,
                format!(
                    "expected one of: {}, found {}{hint}",
                    opts.join(", "),
                    describe(instance)
                ),
            ));
        }
        ValidationErrorKind::Constant { expected_value } => {
            out.push(Problem::at_value(
                path,
                format!("expected {expected_value}, found {}", describe(instance)),
            ));
        }
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            // Prefer the branch whose type fitted: its errors are the real ones.
            let fitting: Vec<&Vec<ValidationError<'static>>> = context
                .iter()
                .filter(|branch| {
                    !branch.iter().any(|e| {
                        matches!(e.kind(), ValidationErrorKind::Type { .. })
                            && e.instance_path() == err.instance_path()
                    })
                })
                .collect();
            if fitting.len() == 1 && !fitting[0].is_empty() {
                for e in fitting[0] {
                    explain(root, e, out);
                }
                return;
            }
            // No branch takes this JSON type at all: the value is unreadable.
            let no_branch_fits = fitting.is_empty();
            let start = out.len();
            explain_branches(root, err, context, path, out);
            if no_branch_fits {
                for p in &mut out[start..] {
                    p.unreadable = true;
                }
            }
        }
        ValidationErrorKind::Minimum { limit } => out.push(Problem::at_value(
            path,
            format!("must be at least {limit}, found {}", describe(instance)),
        )),
        ValidationErrorKind::Maximum { limit } => out.push(Problem::at_value(
            path,
            format!("must be at most {limit}, found {}", describe(instance)),
        )),
        ValidationErrorKind::MaxLength { limit } => out.push(Problem::at_value(
            path,
            format!("must be at most {limit} characters long"),
        )),
        ValidationErrorKind::MinLength { limit } => out.push(Problem::at_value(
            path,
            format!("must be at least {limit} characters long"),
        )),
        ValidationErrorKind::MinItems { limit } => out.push(Problem::at_value(
            path,
            format!("needs at least {limit} item(s)"),
        )),
        _ => out.push(Problem::at_value(path, err.to_string())),
    }
}

/// The message for a value no branch of an `anyOf`/`oneOf` took.
fn explain_branches(
    root: &Value,
    err: &ValidationError<'_>,
    context: &[Vec<ValidationError<'static>>],
    path: Vec<Seg>,
    out: &mut Vec<Problem>,
) {
    let instance = err.instance();
    // An enum written as one constant per variant.
    let consts: Vec<String> = context
        .iter()
        .flat_map(|b| b.iter())
        .filter_map(|e| match e.kind() {
            ValidationErrorKind::Constant { expected_value } => Some(
                expected_value
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| expected_value.to_string()),
            ),
            _ => None,
        })
        .collect();
    if !consts.is_empty() && consts.len() == context.len() {
        let hint = instance
            .as_str()
            .and_then(|s| did_you_mean(s, consts.iter().map(String::as_str)))
            .map(|m| format!(" (did you mean {m:?}?)"))
            .unwrap_or_default();
        out.push(Problem {
            unreadable: true,
            ..Problem::at_value(
                path,
                format!(
                    "expected one of: {}, found {}{hint}",
                    consts.join(", "),
                    describe(instance)
                ),
            )
        });
        return;
    }
    // A quantity, CPU amount or duration written wrong.
    for branch in context {
        for e in branch {
            if let ValidationErrorKind::Pattern { pattern } = e.kind() {
                out.push(Problem::at_value(path, pattern_message(pattern, instance)));
                return;
            }
        }
    }
    let wanted: Vec<String> = context
        .iter()
        .flat_map(|b| b.iter())
        .filter_map(|e| match e.kind() {
            ValidationErrorKind::Type {
                kind: TypeKind::Single(t),
            } if t.as_str() != "null" => Some(type_name(t.as_str()).to_string()),
            _ => None,
        })
        .collect();
    let described = schema_at(root, root, &path)
        .and_then(|n| n.get("description"))
        .and_then(Value::as_str)
        .filter(|_| context.len() > 1);
    let msg = if let Some(desc) = described {
        format!(
            "{} is not valid here; expected {}",
            describe(instance),
            lower_first(desc)
        )
    } else if wanted.is_empty() {
        format!("{} is not valid here", describe(instance))
    } else {
        format!(
            "expected {}, found {}",
            wanted.join(" or "),
            describe(instance)
        )
    };
    out.push(Problem::at_value(path, msg));
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f
            .to_lowercase()
            .chain(c)
            .collect::<String>()
            .trim_end_matches('.')
            .to_string(),
        None => String::new(),
    }
}

/// Parse every Quantity/Cpu/Duration value the schema accepted by pattern,
/// to catch what a regular expression cannot (overflow, fractions of bytes).
fn value_types(
    root: &Value,
    schema: &Value,
    v: &Value,
    path: &mut Vec<Seg>,
    out: &mut Vec<Problem>,
) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/definitions/");
        if let Some(s) = v.as_str() {
            let err = match name {
                "Quantity" | "GuestMemory" => s.parse::<Quantity>().err().map(|e| e.0),
                "Cpu" => s.parse::<Cpu>().err().map(|e| e.0),
                "Duration" => s.parse::<Duration>().err().map(|e| e.0),
                _ => None,
            };
            if let Some(e) = err {
                out.push(Problem {
                    unreadable: true,
                    only: Some(super::semantic::OnlyDeorch::ParsedValue),
                    ..Problem::at_value(path.clone(), e)
                });
                return;
            }
        }
        if let Some(def) = root.get("definitions").and_then(|d| d.get(name)) {
            value_types(root, def, v, path, out);
        }
        return;
    }
    if let Some(branches) = schema.get("anyOf").and_then(Value::as_array) {
        for b in branches {
            value_types(root, b, v, path, out);
        }
        return;
    }
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let sub = schema
                    .get("properties")
                    .and_then(|p| p.get(k))
                    .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()));
                if let Some(sub) = sub {
                    path.push(Seg::Key(k.clone()));
                    value_types(root, sub, child, path, out);
                    path.pop();
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, child) in items.iter().enumerate() {
                    path.push(Seg::Index(i));
                    value_types(root, sub, child, path, out);
                    path.pop();
                }
            }
        }
        _ => {}
    }
}
