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

/// DNS-1123 label: what object names must look like.
pub const DNS1123_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

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

/// Every object schema with `properties` and no `additionalProperties`
/// (the Kubernetes types) becomes closed, so that a typo'd field is an
/// error everywhere, as in deorch's own types.
fn close_objects(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
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
    all.insert("$id".into(), json!("https://deorch.dev/schemas/all.json"));
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
