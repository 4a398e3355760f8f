//! Canonical JSON and the content hash of an object.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Canonical JSON: object keys sorted (recursively), no whitespace. The same
/// document always gives the same bytes, whatever order its author wrote.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write(v, &mut out);
    out
}

fn write(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// SHA-256 (hex) of what a generation covers: `metadata.labels`,
/// `metadata.annotations` and `spec`.
pub fn content_hash(object: &Value) -> String {
    let meta = object.get("metadata");
    let covered = serde_json::json!({
        "labels": meta.and_then(|m| m.get("labels")).cloned().unwrap_or(Value::Null),
        "annotations": meta.and_then(|m| m.get("annotations")).cloned().unwrap_or(Value::Null),
        "spec": object.get("spec").cloned().unwrap_or(Value::Null),
    });
    hex::encode(Sha256::digest(canonical_json(&covered).as_bytes()))
}
