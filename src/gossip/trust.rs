//! Who may speak in the cluster, and for whom.
//!
//! A node's ID is its address (the P2WPKH address of the key in
//! `STATE_DIR/node.key`). The cluster's members are the nodes the
//! trusted AccessPolicies admit (`spec.satellites`, docs/SIGNING.md,
//! "Nodes"); [`Members`] holds that set as the node's gossip task last
//! computed it. A node signs its claims and statuses ([`KeySigner`]);
//! [`Members::check_claim`] and [`Members::check_status`] accept them
//! only from an admitted node and signed by that node, on receipt and so
//! on relay too (a relayed entry is checked again by every receiver, so a
//! node can only speak for itself).

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use super::wire::{Claim, NodeId, NodeStatus, CLAIM_DOMAIN, STATUS_DOMAIN};
use crate::identity::{node_sig, Address, PrivateKey};

/// Signs what a node says about itself.
pub trait Signer: Send + Sync {
    /// Signature of `bytes` for `domain`.
    fn sign(&self, domain: &str, bytes: &[u8]) -> Vec<u8>;
}

/// A node's key, bound to its cluster.
pub struct KeySigner {
    key: PrivateKey,
    cluster: String,
}

impl KeySigner {
    /// Sign with `key` for `cluster`.
    pub fn new(key: PrivateKey, cluster: &str) -> KeySigner {
        KeySigner {
            key,
            cluster: cluster.to_string(),
        }
    }
}

impl Signer for KeySigner {
    fn sign(&self, domain: &str, bytes: &[u8]) -> Vec<u8> {
        node_sig::sign(&self.key, domain, &self.cluster, bytes)
    }
}

/// The admitted members (address → name) and the checks that use them.
pub struct Members {
    cluster: String,
    admitted: RwLock<HashMap<String, (String, Address)>>,
}

impl Members {
    /// Nobody admitted yet, in `cluster`.
    pub fn new(cluster: &str) -> Members {
        Members {
            cluster: cluster.to_string(),
            admitted: RwLock::new(HashMap::new()),
        }
    }

    /// The cluster signatures are bound to.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Replace the admitted set (address → name); addresses that do not
    /// parse are left out. Returns (admitted now, revoked) relative to the
    /// previous set.
    pub fn set(&self, members: &BTreeMap<String, String>) -> (Vec<String>, Vec<String>) {
        let mut next = HashMap::new();
        for (a, n) in members {
            if let Ok(parsed) = Address::parse(a) {
                next.insert(a.clone(), (n.clone(), parsed));
            }
        }
        let mut m = self.admitted.write().unwrap_or_else(|p| p.into_inner());
        let added = next
            .keys()
            .filter(|a| !m.contains_key(*a))
            .cloned()
            .collect();
        let revoked = m
            .keys()
            .filter(|a| !next.contains_key(*a))
            .cloned()
            .collect();
        *m = next;
        (added, revoked)
    }

    /// Whether `id` is admitted.
    pub fn admits(&self, id: &str) -> bool {
        self.admitted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }

    /// The name an admission gives `id`.
    pub fn name_of(&self, id: &str) -> Option<String> {
        self.admitted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|x| x.0.clone())
    }

    /// The admitted node named `name`, if one is.
    pub fn address_of(&self, name: &str) -> Option<String> {
        self.admitted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(_, (n, _))| n == name)
            .map(|(a, _)| a.clone())
    }

    /// How many nodes are admitted.
    pub fn len(&self) -> usize {
        self.admitted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Whether no node is admitted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check(&self, id: &NodeId, domain: &str, bytes: &[u8], sig: &[u8]) -> Result<(), String> {
        let m = self.admitted.read().unwrap_or_else(|p| p.into_inner());
        let Some((_, addr)) = m.get(&id.0) else {
            return Err(format!("{id} is not an admitted node of this cluster"));
        };
        if node_sig::verify(addr, domain, &self.cluster, bytes, sig) {
            Ok(())
        } else {
            Err(format!("not signed by {id}"))
        }
    }

    /// A claim is accepted only from an admitted claimant, signed by it.
    pub fn check_claim(&self, c: &Claim) -> Result<(), String> {
        self.check(&c.node, CLAIM_DOMAIN, &c.signed_bytes(), &c.sig)
            .map_err(|e| format!("claim of {} for {}: {e}", c.vm, c.node))
    }

    /// A status is accepted only about an admitted node, signed by it.
    pub fn check_status(&self, s: &NodeStatus) -> Result<(), String> {
        self.check(&s.id, STATUS_DOMAIN, &s.signed_bytes(), &s.sig)
            .map_err(|e| format!("status of {}: {e}", s.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::wire::{DocKey, Resources, TagSet};
    use crate::identity::{AddressType, Network};
    use crate::model::Performance;

    fn node() -> (PrivateKey, NodeId) {
        let k = PrivateKey::generate(Network::Mainnet);
        let a = k.address(AddressType::P2wpkh).unwrap().to_string();
        (k, NodeId(a))
    }

    #[test]
    fn only_admitted_nodes_speak_and_only_for_themselves() {
        let (ka, a) = node();
        let (kb, b) = node();
        let (kx, x) = node();
        let members = Members::new("C");
        members.set(&BTreeMap::from([
            (a.0.clone(), "a".to_string()),
            (b.0.clone(), "b".to_string()),
        ]));
        let sign_claim = |k: &PrivateKey, node: &NodeId| {
            let mut c = Claim {
                vm: DocKey::new("VirtualMachine", "default", "web"),
                node: node.clone(),
                epoch: 1,
                score: 7,
                claimed_ms: 1,
                sig: Vec::new(),
            };
            c.sig = KeySigner::new(k.clone(), "C").sign(CLAIM_DOMAIN, &c.signed_bytes());
            c
        };
        assert_eq!(members.check_claim(&sign_claim(&ka, &a)), Ok(()));
        // b claims for a: refused.
        assert!(members.check_claim(&sign_claim(&kb, &a)).is_err());
        // x is not admitted, even for itself.
        assert!(members.check_claim(&sign_claim(&kx, &x)).is_err());
        // A claim altered on relay.
        let mut c = sign_claim(&ka, &a);
        c.epoch = 9;
        assert!(members.check_claim(&c).is_err());
        // Unsigned.
        let mut c = sign_claim(&ka, &a);
        c.sig.clear();
        assert!(members.check_claim(&c).is_err());

        let mut s = NodeStatus::idle(
            b.clone(),
            1,
            TagSet::default(),
            Performance::High,
            Resources::default(),
        );
        s.sig = KeySigner::new(kb.clone(), "C").sign(STATUS_DOMAIN, &s.signed_bytes());
        assert_eq!(members.check_status(&s), Ok(()));
        let mut forged = s.clone();
        forged.free.memory = 1 << 40;
        assert!(members.check_status(&forged).is_err());
        let mut as_b = s.clone();
        as_b.sig = KeySigner::new(ka, "C").sign(STATUS_DOMAIN, &s.signed_bytes());
        assert!(members.check_status(&as_b).is_err());
        // Revoking b.
        let (_, revoked) = members.set(&BTreeMap::from([(a.0.clone(), "a".to_string())]));
        assert_eq!(revoked, vec![b.0.clone()]);
        assert!(members.check_status(&s).is_err());
        assert_eq!(members.name_of(&a.0).as_deref(), Some("a"));
        assert_eq!(members.address_of("a"), Some(a.0));
    }
}
