//! Which entries a node accepts and relays.
//!
//! A document that fails [`Verifier::verify_document`] is neither stored
//! nor relayed, so forged desired state dies at the first honest node.

use super::wire::{Claim, Document, NodeStatus};

/// Decides whether an entry received by gossip is genuine.
pub trait Verifier: Send + Sync {
    /// Accept this document (or tombstone)? `Err` carries the reason.
    fn verify_document(&self, doc: &Document) -> Result<(), String>;

    /// Accept this placement claim? (Later: signed by the claimant.)
    fn verify_claim(&self, _claim: &Claim) -> Result<(), String> {
        Ok(())
    }

    /// Accept this node status? (Later: signed by the node.)
    fn verify_status(&self, _status: &NodeStatus) -> Result<(), String> {
        Ok(())
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
/// [`crate::identity::verify_manifest`]; authorisation by AccessPolicy is
/// the store's next step, as for pushed manifests.
#[derive(Debug, Clone)]
pub struct SignedManifests {
    /// The cluster ID signatures are bound to.
    pub cluster: String,
}

impl Verifier for SignedManifests {
    fn verify_document(&self, doc: &Document) -> Result<(), String> {
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
        // The tombstone flag travels outside the body, so the body must say
        // the same, or anyone could turn a signed live document into its
        // own tombstone.
        let says_deleted = meta
            .get("annotations")
            .and_then(|a| a.get(DELETED_ANNOTATION))
            .and_then(|x| x.as_str())
            == Some("true");
        if says_deleted != doc.deleted {
            return Err(format!("tombstone flag differs from {DELETED_ANNOTATION}"));
        }
        crate::identity::verify_manifest(&v, &self.cluster)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
