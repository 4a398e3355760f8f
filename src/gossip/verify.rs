//! Which entries a node accepts and relays.
//!
//! A document that fails [`Verifier::verify_document`] is neither stored
//! nor relayed, so forged desired state dies at the first honest node.

use super::trust::Members;
use super::wire::{Claim, Document, NodeId, NodeStatus};

/// Decides whether an entry received by gossip is genuine.
pub trait Verifier: Send + Sync {
    /// Accept this document (or tombstone)? `Err` carries the reason.
    fn verify_document(&self, doc: &Document) -> Result<(), String>;

    /// Accept this placement claim? (Later: signed by the claimant.)
    fn verify_claim(&self, _claim: &Claim) -> Result<(), String> {
        Ok(())
    }

    /// Accept this node status? (Signed by the node it is about, where
    /// nodes are admitted: [`super::trust::Members::check_status`].)
    fn verify_status(&self, _status: &NodeStatus) -> Result<(), String> {
        Ok(())
    }

    /// Whether `id` is a member of the cluster: datagrams from other
    /// senders, and membership news about them, are dropped.
    fn admits(&self, _id: &NodeId) -> bool {
        true
    }
    /// How many nodes the cluster has (the admitted ones), when known:
    /// what a majority is counted against.
    fn cluster_size(&self) -> Option<usize> {
        None
    }
}

/// [`AcceptAll`] documents, but only admitted nodes, signed claims and
/// statuses ([`Members`]): the simulation's trusted mode, and the base of
/// a real node's filter.
pub struct MembersOnly<V: Verifier> {
    /// The admitted nodes.
    pub members: std::sync::Arc<Members>,
    /// Documents.
    pub documents: V,
}

impl<V: Verifier> Verifier for MembersOnly<V> {
    fn verify_document(&self, doc: &Document) -> Result<(), String> {
        self.documents.verify_document(doc)
    }
    fn verify_claim(&self, claim: &Claim) -> Result<(), String> {
        self.members.check_claim(claim)
    }
    fn verify_status(&self, status: &NodeStatus) -> Result<(), String> {
        self.members.check_status(status)
    }
    fn admits(&self, id: &NodeId) -> bool {
        self.members.admits(&id.0)
    }
    fn cluster_size(&self) -> Option<usize> {
        Some(self.members.len())
    }
}

/// Annotation a signed deletion carries (`"true"`): a tombstone's body is
/// the signed manifest of the deletion at the tombstone's generation.
pub const DELETED_ANNOTATION: &str = "deorch.dev/deleted";

/// Accepts everything (tests of the protocol alone, trusted labs).
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptAll;

impl Verifier for AcceptAll {
    fn verify_document(&self, _doc: &Document) -> Result<(), String> {
        Ok(())
    }
}

/// Documents are signed manifests (canonical JSON with the signer and
/// signature annotations, `docs/SIGNING.md`) for one cluster, whose
/// `metadata.generation` is the document's generation. Uses
/// [`crate::identity::verify_manifest`]. This only filters what is stored
/// and relayed: a node's gossip task hands every document to admission
/// (`crate::admission`), which also authorises the signer by AccessPolicy,
/// as for every other source.
#[derive(Debug, Clone)]
pub struct SignedManifests {
    /// The cluster ID signatures are bound to.
    pub cluster: String,
}

impl Verifier for SignedManifests {
    fn verify_document(&self, doc: &Document) -> Result<(), String> {
        let v = document_body(doc)?;
        crate::identity::verify_manifest(&v, &self.cluster)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// A document's body, checked against the document's own fields: the
/// kind, namespace and name of its key, its generation, and the tombstone
/// flag (which travels outside the body, so the body must say the same,
/// or anyone could turn a signed live document into its own tombstone).
/// What a signature over the body then proves holds for the document.
pub fn document_body(doc: &Document) -> Result<serde_json::Value, String> {
    let v: serde_json::Value =
        serde_json::from_slice(&doc.body).map_err(|e| format!("not JSON: {e}"))?;
    let meta = v.get("metadata").ok_or("no metadata")?;
    let field = |f: &str| meta.get(f).and_then(|x| x.as_str()).unwrap_or("");
    if v.get("kind").and_then(|k| k.as_str()) != Some(doc.key.kind.as_str())
        || field("name") != doc.key.name
        || field("namespace") != doc.key.namespace
    {
        return Err("body does not match the document key".into());
    }
    if meta.get("generation").and_then(|g| g.as_u64()) != Some(doc.generation) {
        return Err("body generation differs from the document's".into());
    }
    let says_deleted = meta
        .get("annotations")
        .and_then(|a| a.get(DELETED_ANNOTATION))
        .and_then(|x| x.as_str())
        == Some("true");
    if says_deleted != doc.deleted {
        return Err(format!("tombstone flag differs from {DELETED_ANNOTATION}"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::wire::DocKey;
    use crate::identity::{sign_manifest, AddressType, Network, PrivateKey};

    fn signed(key: &PrivateKey, generation: u64, deleted: bool) -> Document {
        let mut obj = serde_json::json!({
            "apiVersion": crate::model::API_VERSION,
            "kind": "VirtualMachine",
            "metadata": {"name": "web", "namespace": "default", "generation": generation},
            "spec": {}
        });
        if deleted {
            obj["metadata"]["annotations"] = serde_json::json!({DELETED_ANNOTATION: "true"});
        }
        let obj = sign_manifest(&obj, "c1", key, AddressType::P2wpkh).unwrap();
        Document {
            key: DocKey::new("VirtualMachine", "default", "web"),
            generation,
            deleted,
            written_ms: 0,
            body: serde_json::to_vec(&obj).unwrap(),
        }
    }

    #[test]
    fn signed_manifests_accepts_genuine_and_refuses_tampered_documents() {
        let key = PrivateKey::generate(Network::Regtest);
        let v = SignedManifests {
            cluster: "c1".into(),
        };
        let good = signed(&key, 3, false);
        assert_eq!(v.verify_document(&good), Ok(()));
        assert_eq!(v.verify_document(&signed(&key, 4, true)), Ok(()));
        // Another cluster's signature.
        let other = SignedManifests {
            cluster: "c2".into(),
        };
        assert!(other.verify_document(&good).is_err());
        // A live document turned into its own tombstone.
        let mut flipped = good.clone();
        flipped.deleted = true;
        assert!(v.verify_document(&flipped).is_err());
        // A generation raised outside the signature.
        let mut raised = good.clone();
        raised.generation = 9;
        assert!(v.verify_document(&raised).is_err());
        // A body edited after signing.
        let mut edited = good;
        let s = String::from_utf8(edited.body)
            .unwrap()
            .replace("\"spec\":{}", "\"spec\":{\"cpu\":64}");
        edited.body = s.into_bytes();
        assert!(v.verify_document(&edited).is_err());
    }
}
