//! The content hash of an object.

use serde_json::Value;

pub use crate::model::canonical::canonical_json;
use sha2::{Digest, Sha256};

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
