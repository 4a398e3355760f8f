//! Per-request signatures for the REST API (a request signed over its body
//! hash, a timestamp and a nonce), without HTTP.
//!
//! The signed text (BIP-137 or BIP-322) is
//!
//! ```text
//! deorch request
//! cluster: <cluster id>
//! method: <HTTP method, upper case>
//! path: <path and query>
//! body-sha256: <hex>
//! timestamp: <unix seconds>
//! nonce: <hex, 16 random bytes>
//! ```
//!
//! A node accepts it once: the timestamp must be within `skew` seconds of
//! its clock, and the nonce must not have been seen in that window
//! ([`ReplayGuard`], bounded memory, fail closed when full).

use std::collections::{HashMap, VecDeque};

use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::address::AddressType;
use super::key::PrivateKey;
use super::message::{sign, verify, SignError, VerifyError};

/// What travels with a request (e.g. as `X-Deorch-*` headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSignature {
    /// Signer's address.
    pub address: String,
    /// Base64 signature of [`request_text`].
    pub signature: String,
    /// Unix seconds.
    pub timestamp: u64,
    /// 32 hex digits.
    pub nonce: String,
}

/// Why a signed request is refused.
#[derive(Debug, Error)]
pub enum RequestError {
    /// Timestamp too far from the node's clock.
    #[error("request timestamp {timestamp} is more than {skew} s from now ({now})")]
    Stale {
        /// Request time.
        timestamp: u64,
        /// Node time.
        now: u64,
        /// Allowed skew.
        skew: u64,
    },
    /// Nonce already used within the window.
    #[error("request replayed (nonce already used)")]
    Replayed,
    /// Nonce malformed.
    #[error("nonce must be 32 hex digits")]
    BadNonce,
    /// The node tracks too many recent nonces; retry shortly.
    #[error("too many recent requests; retry shortly")]
    Busy,
    /// Signature refused.
    #[error("request signature refused: {0}")]
    Signature(#[from] VerifyError),
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// The exact text signed for a request.
pub fn request_text(
    cluster: &str,
    method: &str,
    path: &str,
    body: &[u8],
    timestamp: u64,
    nonce: &str,
) -> String {
    format!(
        "deorch request\ncluster: {cluster}\nmethod: {}\npath: {path}\nbody-sha256: {}\ntimestamp: {timestamp}\nnonce: {nonce}",
        method.to_ascii_uppercase(),
        hex::encode(Sha256::digest(body))
    )
}

/// Sign a request as `key`'s address of type `kind`, at `now`.
pub fn sign_request(
    key: &PrivateKey,
    kind: AddressType,
    cluster: &str,
    method: &str,
    path: &str,
    body: &[u8],
    now: u64,
) -> Result<RequestSignature, RequestError> {
    let mut n = [0u8; 16];
    OsRng.fill_bytes(&mut n);
    let nonce = hex::encode(n);
    let address = key.address(kind).map_err(SignError::from)?.to_string();
    let signature = sign(
        key,
        request_text(cluster, method, path, body, now, &nonce).as_bytes(),
        kind,
    )?;
    Ok(RequestSignature {
        address,
        signature,
        timestamp: now,
        nonce,
    })
}

/// Verifies signed requests and refuses replays.
#[derive(Debug)]
pub struct ReplayGuard {
    cluster: String,
    skew: u64,
    capacity: usize,
    seen: HashMap<[u8; 16], u64>,
    order: VecDeque<([u8; 16], u64)>,
}

impl ReplayGuard {
    /// A guard for `cluster` accepting timestamps within `skew` seconds and
    /// remembering at most `capacity` nonces.
    pub fn new(cluster: &str, skew: u64, capacity: usize) -> ReplayGuard {
        ReplayGuard {
            cluster: cluster.to_string(),
            skew,
            capacity: capacity.max(1),
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Check `sig` for this request at `now`; returns the signer's address
    /// (authorisation is the caller's next step).
    pub fn verify(
        &mut self,
        sig: &RequestSignature,
        method: &str,
        path: &str,
        body: &[u8],
        now: u64,
    ) -> Result<String, RequestError> {
        if sig.timestamp.abs_diff(now) > self.skew {
            return Err(RequestError::Stale {
                timestamp: sig.timestamp,
                now,
                skew: self.skew,
            });
        }
        let nonce: [u8; 16] = hex::decode(&sig.nonce)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(RequestError::BadNonce)?;
        let text = request_text(&self.cluster, method, path, body, sig.timestamp, &sig.nonce);
        verify(&sig.address, &sig.signature, text.as_bytes())?;
        // Forget nonces whose timestamps left the window: they can no
        // longer pass the staleness check.
        while let Some(&(old, ts)) = self.order.front() {
            if ts.saturating_add(self.skew) < now {
                self.order.pop_front();
                self.seen.remove(&old);
            } else {
                break;
            }
        }
        if self.seen.contains_key(&nonce) {
            return Err(RequestError::Replayed);
        }
        if self.seen.len() >= self.capacity {
            return Err(RequestError::Busy);
        }
        self.seen.insert(nonce, sig.timestamp);
        self.order.push_back((nonce, now.max(sig.timestamp)));
        Ok(sig.address.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::address::Network;

    #[test]
    fn forged_altered_replayed_stale_and_wrong_cluster_are_refused() {
        let k = PrivateKey::generate(Network::Mainnet);
        let body = b"apiVersion: deorch.dev/v1alpha1\n";
        let mut g = ReplayGuard::new("C", 30, 1000);
        let s = sign_request(
            &k,
            AddressType::P2wpkh,
            "C",
            "post",
            "/v1/manifests",
            body,
            1000,
        )
        .unwrap();
        assert_eq!(
            g.verify(&s, "POST", "/v1/manifests", body, 1005).unwrap(),
            k.address(AddressType::P2wpkh).unwrap().to_string()
        );
        assert!(matches!(
            g.verify(&s, "POST", "/v1/manifests", body, 1006),
            Err(RequestError::Replayed)
        ));
        let s2 = sign_request(
            &k,
            AddressType::P2wpkh,
            "C",
            "POST",
            "/v1/manifests",
            body,
            1000,
        )
        .unwrap();
        assert!(matches!(
            g.verify(&s2, "POST", "/v1/manifests", b"other", 1001),
            Err(RequestError::Signature(_))
        ));
        assert!(matches!(
            g.verify(&s2, "DELETE", "/v1/manifests", body, 1001),
            Err(RequestError::Signature(_))
        ));
        assert!(matches!(
            g.verify(&s2, "POST", "/v1/manifests", body, 1031),
            Err(RequestError::Stale { .. })
        ));
        let mut forged = s2.clone();
        forged.address = PrivateKey::generate(Network::Mainnet)
            .address(AddressType::P2wpkh)
            .unwrap()
            .to_string();
        assert!(matches!(
            g.verify(&forged, "POST", "/v1/manifests", body, 1001),
            Err(RequestError::Signature(_))
        ));
        let mut other = ReplayGuard::new("D", 30, 10);
        assert!(matches!(
            other.verify(&s2, "POST", "/v1/manifests", body, 1001),
            Err(RequestError::Signature(_))
        ));
        // s2 itself (not yet accepted anywhere in C) still passes once.
        g.verify(&s2, "POST", "/v1/manifests", body, 1001).unwrap();
    }

    #[test]
    fn bounded_and_fail_closed() {
        let k = PrivateKey::generate(Network::Mainnet);
        let mut g = ReplayGuard::new("C", 10, 3);
        for _ in 0..3 {
            let s = sign_request(&k, AddressType::P2pkh, "C", "GET", "/v1/x", b"", 100).unwrap();
            g.verify(&s, "GET", "/v1/x", b"", 100).unwrap();
        }
        let s = sign_request(&k, AddressType::P2pkh, "C", "GET", "/v1/x", b"", 100).unwrap();
        assert!(matches!(
            g.verify(&s, "GET", "/v1/x", b"", 100),
            Err(RequestError::Busy)
        ));
        // Once the window has passed, old nonces are forgotten.
        let s = sign_request(&k, AddressType::P2pkh, "C", "GET", "/v1/x", b"", 111).unwrap();
        g.verify(&s, "GET", "/v1/x", b"", 111).unwrap();
    }
}
