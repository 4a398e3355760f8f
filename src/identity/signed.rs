//! Signed manifests. The canonical form (see `docs/SIGNING.md`):
//!
//! ```text
//! canonical_json({"cluster": CLUSTER, "generation": G, "object": OBJ,
//!                 "type": "deorch.dev/signed-manifest/v1"})
//! ```
//!
//! where `OBJ` is the object as the object model serialises it (when its
//! kind parses; otherwise as given), without `status` and without the
//! `deorch.dev/signer` / `deorch.dev/signature` annotations (an
//! `annotations` map left empty by that removal is dropped too), and
//! `G = metadata.generation` (required). That string is signed as a BIP-137
//! message, so any Bitcoin wallet can produce the signature by hand.

use serde_json::{Map, Value};
use thiserror::Error;

use crate::model::AnyObject;

use super::address::AddressType;
use super::key::PrivateKey;
use super::message::{sign, verify, SignError, VerifyError};

/// Annotation holding the signer's address.
pub const SIGNER_ANNOTATION: &str = "deorch.dev/signer";
/// Annotation holding the BIP-137 signature (base64).
pub const SIGNATURE_ANNOTATION: &str = "deorch.dev/signature";
/// Domain separator inside the signed payload: a manifest signature cannot
/// be mistaken for a login challenge or any other signed message.
pub const PAYLOAD_TYPE: &str = "deorch.dev/signed-manifest/v1";

/// Why a manifest could not be signed or its signature is not valid.
#[derive(Debug, Error)]
pub enum ManifestError {
    /// Not a JSON object with a `metadata` object.
    #[error("not a manifest object (no metadata)")]
    NotAnObject,
    /// `metadata.generation` missing or not a positive integer.
    #[error("metadata.generation must be set (a positive integer) to sign or verify: the signature binds it")]
    NoGeneration,
    /// The object carries no signer / signature annotation.
    #[error("unsigned: annotation {0} is missing")]
    Unsigned(&'static str),
    /// The signature does not verify for the claimed signer.
    #[error("signature by {signer} does not verify (for cluster {cluster:?}, generation {generation}): {source}")]
    Invalid {
        /// Claimed signer.
        signer: String,
        /// Cluster the verifier expected.
        cluster: String,
        /// Generation in the object.
        generation: i64,
        /// Why.
        source: VerifyError,
    },
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] SignError),
}

pub use crate::model::canonical::canonical_json;

fn generation(obj: &Value) -> Result<i64, ManifestError> {
    let meta = obj
        .get("metadata")
        .and_then(Value::as_object)
        .ok_or(ManifestError::NotAnObject)?;
    match meta.get("generation").and_then(Value::as_i64) {
        Some(g) if g > 0 => Ok(g),
        _ => Err(ManifestError::NoGeneration),
    }
}

fn annotation<'a>(obj: &'a Value, name: &'static str) -> Option<&'a str> {
    obj.pointer("/metadata/annotations")?.get(name)?.as_str()
}

/// The exact bytes signed for `obj` in `cluster` (see the module doc).
pub fn signing_payload(obj: &Value, cluster: &str) -> Result<String, ManifestError> {
    let g = generation(obj)?;
    // Through the object model when the kind is known, so that the raw
    // YAML a user signed and the object a node stores (defaults applied,
    // empty lists dropped) give the same payload.
    let mut stripped = match AnyObject::from_value(obj.clone()) {
        Ok(o) => o.to_value(),
        Err(_) => obj.clone(),
    };
    let top = stripped.as_object_mut().ok_or(ManifestError::NotAnObject)?;
    top.remove("status");
    if let Some(meta) = top.get_mut("metadata").and_then(Value::as_object_mut) {
        let now_empty = match meta.get_mut("annotations").and_then(Value::as_object_mut) {
            Some(ann) => {
                ann.remove(SIGNER_ANNOTATION);
                ann.remove(SIGNATURE_ANNOTATION);
                ann.is_empty()
            }
            None => false,
        };
        if now_empty {
            meta.remove("annotations");
        }
    }
    let mut wrapper = Map::new();
    wrapper.insert("cluster".into(), Value::String(cluster.to_string()));
    wrapper.insert("generation".into(), Value::from(g));
    wrapper.insert("object".into(), stripped);
    wrapper.insert("type".into(), Value::String(PAYLOAD_TYPE.into()));
    Ok(canonical_json(&Value::Object(wrapper)))
}

/// Sign `obj` for `cluster` with `key`, as the key's address of type
/// `kind`: returns the object with the signer and signature annotations
/// set (replacing any earlier ones).
pub fn sign_manifest(
    obj: &Value,
    cluster: &str,
    key: &PrivateKey,
    kind: AddressType,
) -> Result<Value, ManifestError> {
    let payload = signing_payload(obj, cluster)?;
    let signer = key.address(kind).map_err(SignError::from)?.to_string();
    let signature = sign(key, payload.as_bytes(), kind)?;
    let mut out = obj.clone();
    let meta = out
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or(ManifestError::NotAnObject)?;
    let ann = meta
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    if !ann.is_object() {
        *ann = Value::Object(Map::new());
    }
    let ann = ann.as_object_mut().ok_or(ManifestError::NotAnObject)?;
    ann.insert(SIGNER_ANNOTATION.into(), Value::String(signer));
    ann.insert(SIGNATURE_ANNOTATION.into(), Value::String(signature));
    Ok(out)
}

/// Verify the signature annotations of `obj` for `cluster`; returns the
/// signer's address. Authorisation (may this signer write this object?) is
/// the caller's next step, with [`super::access::authorize`].
pub fn verify_manifest(obj: &Value, cluster: &str) -> Result<String, ManifestError> {
    let signer =
        annotation(obj, SIGNER_ANNOTATION).ok_or(ManifestError::Unsigned(SIGNER_ANNOTATION))?;
    let signature = annotation(obj, SIGNATURE_ANNOTATION)
        .ok_or(ManifestError::Unsigned(SIGNATURE_ANNOTATION))?;
    let payload = signing_payload(obj, cluster)?;
    verify(signer, signature, payload.as_bytes()).map_err(|source| ManifestError::Invalid {
        signer: signer.to_string(),
        cluster: cluster.to_string(),
        generation: generation(obj).unwrap_or_default(),
        source,
    })?;
    Ok(signer.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_and_strips_whitespace() {
        let v = json!({"b": [1, {"z": "é\n", "a": null}], "a": true, "A": 1.5});
        assert_eq!(
            canonical_json(&v),
            r#"{"A":1.5,"a":true,"b":[1,{"a":null,"z":"é\n"}]}"#
        );
    }
}
