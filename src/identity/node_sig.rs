//! Signatures nodes put on what they say about themselves (gossip claims
//! and statuses, the binding of a gossip channel key): 65-byte recoverable
//! ECDSA over SHA-256 of a domain, the cluster and the bytes, checked by
//! recovering the public key and comparing it with the node's address (a
//! node's ID is its address, so no key directory is needed).
//!
//! Cheaper than a BIP-137 message (one SHA-256, no base64) and bound to
//! a purpose by its domain, so a signature made for one purpose is never
//! valid for another.

use sha2::{Digest, Sha256};

use super::{Address, PrivateKey};

/// The digest a node signs: SHA-256(domain ‖ 0 ‖ cluster ‖ 0 ‖ bytes).
pub fn digest(domain: &str, cluster: &str, bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(domain.as_bytes());
    h.update([0]);
    h.update(cluster.as_bytes());
    h.update([0]);
    h.update(bytes);
    h.finalize().into()
}

/// Sign `bytes` for `domain` in `cluster`: recovery id ‖ r ‖ s (low S).
pub fn sign(key: &PrivateKey, domain: &str, cluster: &str, bytes: &[u8]) -> Vec<u8> {
    let secret = secp256k1::SecretKey::from_slice(&key.signing_key().to_bytes())
        .expect("a valid k256 key is a valid secp256k1 key");
    let msg = secp256k1::Message::from_digest(digest(domain, cluster, bytes));
    let sig = secp256k1::SECP256K1.sign_ecdsa_recoverable(&msg, &secret);
    let (id, rs) = sig.serialize_compact();
    let mut out = Vec::with_capacity(65);
    out.push(id.to_i32() as u8);
    out.extend_from_slice(&rs);
    out
}

/// Whether `sig` is `address`'s signature of `bytes` for `domain` in
/// `cluster`. Never panics, whatever the input.
pub fn verify(address: &Address, domain: &str, cluster: &str, bytes: &[u8], sig: &[u8]) -> bool {
    use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
    if sig.len() != 65 {
        return false;
    }
    let Ok(id) = RecoveryId::from_i32(i32::from(sig[0])) else {
        return false;
    };
    let Ok(rs) = RecoverableSignature::from_compact(&sig[1..], id) else {
        return false;
    };
    let msg = secp256k1::Message::from_digest(digest(domain, cluster, bytes));
    match secp256k1::SECP256K1.recover_ecdsa(&msg, &rs) {
        Ok(pk) => address.matches_pubkey(&pk.serialize()),
        Err(_) => false,
    }
}

/// [`verify`] with the address as text (a node ID).
pub fn verify_str(address: &str, domain: &str, cluster: &str, bytes: &[u8], sig: &[u8]) -> bool {
    Address::parse(address).is_ok_and(|a| verify(&a, domain, cluster, bytes, sig))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{AddressType, Network};

    #[test]
    fn signature_binds_signer_domain_cluster_and_bytes() {
        let k = PrivateKey::generate(Network::Mainnet);
        let a = k.address(AddressType::P2wpkh).unwrap();
        let other = PrivateKey::generate(Network::Mainnet)
            .address(AddressType::P2wpkh)
            .unwrap();
        let s = sign(&k, "claim", "C", b"vm web epoch 1");
        assert!(verify(&a, "claim", "C", b"vm web epoch 1", &s));
        assert!(!verify(&other, "claim", "C", b"vm web epoch 1", &s));
        assert!(!verify(&a, "status", "C", b"vm web epoch 1", &s));
        assert!(!verify(&a, "claim", "D", b"vm web epoch 1", &s));
        assert!(!verify(&a, "claim", "C", b"vm web epoch 2", &s));
        let mut bad = s.clone();
        bad[10] ^= 1;
        assert!(!verify(&a, "claim", "C", b"vm web epoch 1", &bad));
        assert!(!verify(&a, "claim", "C", b"vm web epoch 1", &s[..64]));
        assert!(!verify(&a, "claim", "C", b"vm web epoch 1", &[9; 65]));
    }
}
