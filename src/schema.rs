//! JSON Schemas of the kinds, generated from the Rust types.
//!
//! The checked-in files under `schemas/` are exactly [`render_all`]'s output;
//! `tests/schemas.rs` fails when they are stale. `deorch validate` checks
//! documents against the same schemas, so editors (yaml-language-server),
//! external validators (check-jsonschema, kubeconform) and deorch agree.

use kube_core::ObjectMeta;
use schemars::generate::SchemaSettings;
use schemars::{json_schema, Schema};
use serde_json::{json, Map, Value};

use crate::model::{Kind, Spec, API_VERSION};

pub use crate::model::common::DNS1123_LABEL_PATTERN;

/// The schema of a whole object whose spec is `S`.
pub fn object_schema<S: Spec>() -> Schema {
    let mut generator = SchemaSettings::draft07().into_generator();
    let spec = generator.subschema_for::<S>();
    let status = generator.subschema_for::<S::Status>();
    let metadata = generator.subschema_for::<ObjectMeta>();
    let mut definitions = generator.take_definitions(true);
    // `metadata` is a `$ref`, and draft-07 ignores keywords beside a `$ref`:
    // tighten the definition itself (only `metadata` uses it).
    for def in definitions.values_mut() {
        if def
            .get("properties")
            .and_then(|p| p.get("generateName"))
            .is_some()
        {
            tighten_metadata(def);
        }
    }

    let mut root = json_schema!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": format!("https://deorch.dev/schemas/{}.json", S::KIND.to_ascii_lowercase()),
        "title": S::KIND,
        "description": format!("A deorch {} ({API_VERSION}).", S::KIND),
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": false,
        "properties": {
            "apiVersion": {"const": API_VERSION, "description": "Always \"deorch.dev/v1alpha1\"."},
            "kind": {"const": S::KIND, "description": format!("Always \"{}\".", S::KIND)},
            "metadata": metadata,
            "spec": spec,
            "status": status,
        },
    });
    if !definitions.is_empty() {
        root.insert("definitions".into(), Value::Object(definitions));
    }
    let mut value = root.to_value();
    close_objects(&mut value);
    Schema::try_from(value).expect("an object schema")
}

/// Object names are DNS-1123 labels and required; unknown metadata fields
/// are refused like unknown fields anywhere else.
fn tighten_metadata(metadata: &mut Value) {
    let Some(obj) = metadata.as_object_mut() else {
        return;
    };
    obj.insert("required".into(), json!(["name"]));
    if let Some(Value::Object(props)) = obj.get_mut("properties") {
        if let Some(Value::Object(name)) = props.get_mut("name") {
            name.insert("pattern".into(), json!(DNS1123_LABEL_PATTERN));
            name.insert("maxLength".into(), json!(63));
            name.insert("type".into(), json!("string"));
        }
        if let Some(Value::Object(ns)) = props.get_mut("namespace") {
            ns.insert("pattern".into(), json!(DNS1123_LABEL_PATTERN));
            ns.insert("maxLength".into(), json!(63));
            ns.insert("type".into(), json!("string"));
        }
    }
}

/// Every object type with `properties` and no `additionalProperties`
/// (the Kubernetes types) becomes closed, so that a typo'd field is an
/// error everywhere, as in deorch's own types. Rules over fields (an
/// `if`, a `oneOf` branch) have no `type` and stay open: they constrain
/// the fields they name and leave the others alone.
fn close_objects(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let is_type = map.get("type").is_some_and(|t| {
                t == "object" || t.as_array().is_some_and(|a| a.contains(&json!("object")))
            });
            if is_type
                && map.contains_key("properties")
                && !map.contains_key("additionalProperties")
            {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            for (_, child) in map.iter_mut() {
                close_objects(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// `(file name, pretty JSON)` for every kind, plus `all.json`, which
/// dispatches on `kind` for editors that take one schema per file.
pub fn render_all() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut branches = Vec::new();
    for kind in Kind::ALL {
        let file = format!("{}.json", kind.as_str().to_ascii_lowercase());
        out.push((file.clone(), pretty(&kind.schema().to_value())));
        branches.push(json!({
            "if": {"properties": {"kind": {"const": kind.as_str()}}, "required": ["kind"]},
            "then": {"$ref": file},
        }));
    }
    let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    let mut all = Map::new();
    all.insert(
        "$schema".into(),
        json!("http://json-schema.org/draft-07/schema#"),
    );
    // No `$id`: the `$ref`s above must resolve next to this file, not
    // against a URL (check-jsonschema would try to download them).
    all.insert("title".into(), json!("Any deorch object"));
    all.insert("type".into(), json!("object"));
    all.insert("required".into(), json!(["apiVersion", "kind"]));
    all.insert(
        "properties".into(),
        json!({"apiVersion": {"const": API_VERSION}, "kind": {"enum": kinds}}),
    );
    all.insert("allOf".into(), Value::Array(branches));
    out.push(("all.json".into(), pretty(&Value::Object(all))));
    out
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("JSON serializes");
    s.push('\n');
    s
}

/// Markdown tables of every field of every kind, generated from the
/// schemas (their descriptions are the model's doc comments), for
/// `docs/MANIFESTS.md`.
pub fn render_reference() -> String {
    let mut out = String::new();
    for kind in Kind::ALL {
        let schema = kind.schema().to_value();
        let scope = if kind.namespaced() {
            "namespaced"
        } else {
            "cluster-scoped"
        };
        out.push_str(&format!("### {kind}\n\n`apiVersion: {API_VERSION}`, `kind: {kind}`, {scope}; schema [`schemas/{}.json`](../schemas/{}.json); example [`examples/{}.yaml`](../examples/{}.yaml).\n\n", kind.as_str().to_ascii_lowercase(), kind.as_str().to_ascii_lowercase(), kind.as_str().to_ascii_lowercase(), kind.as_str().to_ascii_lowercase()));
        out.push_str("| field | type | required | description |\n|---|---|---|---|\n");
        let mut rows = Vec::new();
        for (name, ty, desc) in [
            (
                "metadata.name",
                "string (DNS-1123 label)",
                "Name, unique per kind (and namespace).",
            ),
            (
                "metadata.namespace",
                "string (DNS-1123 label)",
                "Namespace (namespaced kinds only); default `default`.",
            ),
            ("metadata.labels", "map of string", "Labels."),
            (
                "metadata.annotations",
                "map of string",
                "Annotations (signatures travel here).",
            ),
            (
                "metadata.generation",
                "integer",
                "Set by the store: bumped by every accepted change.",
            ),
        ] {
            if name == "metadata.namespace" && !kind.namespaced() {
                continue;
            }
            rows.push((
                name.to_string(),
                ty.to_string(),
                if name == "metadata.name" { "yes" } else { "" }.to_string(),
                desc.to_string(),
            ));
        }
        let props = &schema["properties"];
        walk(&schema, &props["spec"], "spec", true, &mut rows, 0);
        walk(&schema, &props["status"], "status", false, &mut rows, 0);
        for (path, ty, req, desc) in rows {
            out.push_str(&format!(
                "| `{path}` | {ty} | {req} | {} |\n",
                desc.replace('\n', " ").replace('|', "\\|")
            ));
        }
        out.push('\n');
    }
    out
}

fn def_name(node: &Value) -> Option<&str> {
    node.get("$ref")?.as_str()?.strip_prefix("#/definitions/")
}

/// Follow `$ref`s into `definitions` (except those `stop` names, which the
/// caller wants to see), single-branch `allOf`s (schemars' way of putting a
/// default beside a `$ref`) and the non-null branch of an `anyOf` (an
/// `Option`).
pub fn resolve<'a>(root: &'a Value, mut node: &'a Value, stop: &dyn Fn(&str) -> bool) -> &'a Value {
    for _ in 0..32 {
        if let Some(name) = def_name(node) {
            match root.get("definitions").and_then(|d| d.get(name)) {
                Some(def) if !stop(name) => {
                    node = def;
                    continue;
                }
                _ => return node,
            }
        }
        if let Some(b) = node
            .get("allOf")
            .and_then(Value::as_array)
            .filter(|b| b.len() == 1 && b[0].get("$ref").is_some())
        {
            node = &b[0];
            continue;
        }
        if let Some(b) = node.get("anyOf").and_then(Value::as_array) {
            let non_null: Vec<&Value> = b
                .iter()
                .filter(|x| x.get("type") != Some(&json!("null")))
                .collect();
            if non_null.len() == 1 {
                node = non_null[0];
                continue;
            }
        }
        return node;
    }
    node
}

/// Value types and Kubernetes types the reference names instead of expanding.
fn named(name: &str) -> bool {
    matches!(
        name,
        "Quantity"
            | "Cpu"
            | "Duration"
            | "Vcpus"
            | "WholeCpus"
            | "GuestMemory"
            | "PositiveDuration"
            | "RecordSize"
    ) || name.starts_with("io.k8s.")
}

fn type_of(root: &Value, node: &Value) -> String {
    let node = resolve(root, node, &named);
    if let Some(name) = def_name(node) {
        return match name {
            "Quantity" => "quantity (`512Mi`, `2Gi`, `10G`)".into(),
            "Cpu" => "CPU amount (`2`, `\"1.5\"`, `\"500m\"`)".into(),
            "Duration" => "duration (`90s`, `1h30m`)".into(),
            "Vcpus" => "whole CPUs, 1-1024 (`2`, `\"2000m\"`)".into(),
            "WholeCpus" => "whole CPUs, ≥ 1 (`2`, `\"2000m\"`)".into(),
            "GuestMemory" => "quantity ≥ 1Mi (`512Mi`, `2Gi`)".into(),
            "PositiveDuration" => "duration > 0 (`90s`, `1h30m`)".into(),
            "RecordSize" => "quantity, a power of two 512-1Mi (`128Ki`)".into(),
            n if n.ends_with("LabelSelector") => {
                "label selector (`matchLabels`, `matchExpressions`)".into()
            }
            n if n.ends_with("Condition") => "condition".into(),
            n => n.rsplit('.').next().unwrap_or(n).to_string(),
        };
    }
    let consts: Vec<String> = node
        .get("oneOf")
        .or_else(|| node.get("anyOf"))
        .and_then(Value::as_array)
        .map(|b| {
            b.iter()
                .filter_map(|x| {
                    x.get("const")
                        .or_else(|| x.get("enum").and_then(|e| e.get(0)))
                })
                .map(|c| format!("`{}`", c.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    if !consts.is_empty() {
        return format!("one of {}", consts.join(", "));
    }
    if let Some(e) = node.get("enum").and_then(Value::as_array) {
        return format!(
            "one of {}",
            e.iter()
                .map(|c| format!("`{}`", c.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let t = match node.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("")
            .to_string(),
        _ => String::new(),
    };
    match t.as_str() {
        "array" => format!("list of {}", type_of(root, &node["items"])),
        "object"
            if node
                .get("additionalProperties")
                .is_some_and(Value::is_object) =>
        {
            format!("map of {}", type_of(root, &node["additionalProperties"]))
        }
        "object" => "mapping".into(),
        "integer" => match (node.get("minimum"), node.get("maximum")) {
            (Some(min), Some(max)) if min != 0 => format!("integer {min}-{max}"),
            (Some(min), _) => format!("integer ≥ {min}"),
            _ => "integer".into(),
        },
        "" => "any".into(),
        other => other.into(),
    }
}

fn walk(
    root: &Value,
    node: &Value,
    path: &str,
    user: bool,
    rows: &mut Vec<(String, String, String, String)>,
    depth: usize,
) {
    let node = resolve(root, node, &named);
    if depth > 8 || def_name(node).is_some() {
        return;
    }
    let node = if node.get("type").and_then(Value::as_str) == Some("array")
        || node
            .get("type")
            .is_some_and(|t| t.as_array().is_some_and(|a| a.contains(&json!("array"))))
    {
        let items = resolve(root, &node["items"], &named);
        if items.get("properties").is_some() {
            return walk(root, items, &format!("{path}[]"), user, rows, depth + 1);
        }
        return;
    } else {
        node
    };
    let Some(props) = node.get("properties").and_then(Value::as_object) else {
        return;
    };
    let required: Vec<&str> = node
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, child) in props {
        let p = format!("{path}.{name}");
        let desc = child
            .get("description")
            .or_else(|| resolve(root, child, &named).get("description"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let default = child
            .get("default")
            .map(|d| format!(" Default: `{d}`."))
            .unwrap_or_default();
        let req = if required.contains(&name.as_str()) {
            "yes"
        } else {
            ""
        };
        let req = if user { req } else { "" };
        rows.push((
            p.clone(),
            type_of(root, child),
            req.into(),
            format!("{desc}{default}"),
        ));
        walk(root, child, &p, user, rows, depth + 1);
    }
}
