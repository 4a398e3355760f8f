//! Login building blocks, without HTTP: challenges a
//! wallet signs, a bounded single-use nonce store, and session tokens
//! signed by the issuing node's key that any node of the cluster can check
//! without shared state.
//!
//! The challenge text a user signs (BIP-137 or BIP-322) is
//!
//! ```text
//! deorch login
//! cluster: <cluster id>
//! node: <issuing node address>
//! issued: <unix seconds>
//! nonce: <32 hex digits>
//! ```
//!
//! Its first line separates it from every other signed payload (manifests
//! sign canonical JSON). A session token is
//! `base64url(canonical JSON {address, cluster, expires, fingerprint, node})`
//! `.` `base64(BIP-137 signature of that JSON by the node's P2WPKH address)`.

use std::collections::{HashMap, VecDeque};

use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::address::{Address, AddressType};
use super::key::PrivateKey;
use super::message::{sign, verify, SignError, VerifyError};
use super::signed::canonical_json;

/// Why a login or a session token is refused.
#[derive(Debug, Error)]
pub enum LoginError {
    /// The challenge text is not one this code produces.
    #[error("malformed challenge")]
    MalformedChallenge,
    /// Issued for another cluster or by another node.
    #[error("challenge was issued for {0}, not here")]
    WrongIssuer(String),
    /// Expired, already used, or never issued here.
    #[error("challenge expired, already used or unknown: request a new one")]
    NonceRejected,
    /// The signature does not prove the address signed the challenge.
    #[error("signature refused: {0}")]
    Signature(#[from] VerifyError),
    /// Malformed token.
    #[error("malformed session token")]
    MalformedToken,
    /// Token for another cluster.
    #[error("session is for cluster {0}")]
    WrongCluster(String),
    /// Token past its expiry.
    #[error("session expired")]
    Expired,
    /// The signing node is not a member of this cluster.
    #[error("session was issued by {0}, which is not a node of this cluster")]
    UnknownNode(String),
    /// Revoked by an AccessPolicy (`revokedSessions`).
    #[error("session {0} was revoked")]
    Revoked(String),
    /// A hand-over token used as a session, or a session as one.
    #[error("{0}")]
    HandOver(&'static str),
    /// The node could not sign.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// The challenge text differs from the one issued with its nonce (an
    /// edited `issued:` line, say).
    #[error("the signed text is not the challenge this node issued")]
    AlteredChallenge,
    /// The address is not a Bitcoin address of the cluster's network.
    #[error("{address} is not a {network} address, the cluster's network")]
    WrongNetwork {
        /// As sent (bounded).
        address: String,
        /// The cluster's.
        network: super::address::Network,
    },
}

/// A login challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Cluster id (owner address).
    pub cluster: String,
    /// Issuing node's address.
    pub node: String,
    /// Unix seconds.
    pub issued: u64,
    /// Random, single use.
    pub nonce: [u8; 16],
}

impl Challenge {
    /// The text the user signs.
    pub fn text(&self) -> String {
        format!(
            "deorch login\ncluster: {}\nnode: {}\nissued: {}\nnonce: {}",
            self.cluster,
            self.node,
            self.issued,
            hex::encode(self.nonce)
        )
    }

    /// Parse [`Challenge::text`] back, strictly.
    pub fn parse(text: &str) -> Result<Challenge, LoginError> {
        let bad = || LoginError::MalformedChallenge;
        let mut lines = text.split('\n');
        if lines.next() != Some("deorch login") {
            return Err(bad());
        }
        let mut field = |name: &str| {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|l| l.strip_prefix(": "))
                .map(str::to_owned)
                .ok_or_else(bad)
        };
        let cluster = field("cluster")?;
        let node = field("node")?;
        let issued = field("issued")?.parse().map_err(|_| bad())?;
        let nonce_hex = field("nonce")?;
        if lines.next().is_some() {
            return Err(bad());
        }
        let nonce = hex::decode(nonce_hex)
            .ok()
            .and_then(|v| <[u8; 16]>::try_from(v).ok())
            .ok_or_else(bad)?;
        Ok(Challenge {
            cluster,
            node,
            issued,
            nonce,
        })
    }
}

/// Outstanding challenges of one node: single use, valid `ttl` seconds,
/// at most `capacity` kept (the oldest is dropped first when full).
#[derive(Debug)]
pub struct NonceStore {
    cluster: String,
    node: String,
    ttl: u64,
    capacity: usize,
    /// Nonce → (issued, expiry).
    live: HashMap<[u8; 16], (u64, u64)>,
    order: VecDeque<[u8; 16]>,
}

impl NonceStore {
    /// A store for challenges of `node` in `cluster`.
    pub fn new(cluster: &str, node: &str, ttl: u64, capacity: usize) -> NonceStore {
        NonceStore {
            cluster: cluster.to_string(),
            node: node.to_string(),
            ttl,
            capacity: capacity.max(1),
            live: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Number of outstanding challenges.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no challenge is outstanding.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Issue a fresh challenge at time `now` (unix seconds).
    pub fn issue(&mut self, now: u64) -> Challenge {
        let mut nonce = [0u8; 16];
        OsRng.fill_bytes(&mut nonce);
        // Drop expired ones, then the oldest while full.
        while let Some(old) = self.order.front().copied() {
            let expired = self.live.get(&old).is_none_or(|&(_, exp)| exp <= now);
            if expired || self.live.len() >= self.capacity {
                self.order.pop_front();
                self.live.remove(&old);
            } else {
                break;
            }
        }
        self.live.insert(nonce, (now, now.saturating_add(self.ttl)));
        self.order.push_back(nonce);
        Challenge {
            cluster: self.cluster.clone(),
            node: self.node.clone(),
            issued: now,
            nonce,
        }
    }

    /// Check `address`'s `signature` of `challenge_text` and consume the
    /// nonce (even when the signature is refused, so one nonce gets one
    /// attempt). The text must be exactly the one issued with the nonce,
    /// and the address one of the cluster's network (when the cluster id
    /// is an address). Returns the challenge and the address in its
    /// canonical spelling (bech32 lowercase), which is what a session
    /// names.
    pub fn login(
        &mut self,
        challenge_text: &str,
        address: &str,
        signature: &str,
        now: u64,
    ) -> Result<(Challenge, String), LoginError> {
        let c = Challenge::parse(challenge_text)?;
        if c.cluster != self.cluster || c.node != self.node {
            return Err(LoginError::WrongIssuer(format!(
                "{} / {}",
                bounded(&c.cluster),
                bounded(&c.node)
            )));
        }
        let issued = match self.live.remove(&c.nonce) {
            Some((issued, expiry)) if expiry > now => issued,
            _ => return Err(LoginError::NonceRejected),
        };
        self.order.retain(|n| *n != c.nonce);
        let original = Challenge {
            issued,
            ..c.clone()
        };
        if original.text() != challenge_text {
            return Err(LoginError::AlteredChallenge);
        }
        let parsed = Address::parse(address)
            .map_err(|e| LoginError::Signature(super::message::VerifyError::BadAddress(e)))?;
        if let Ok(cluster) = Address::parse(&self.cluster) {
            if !parsed.network.same_chain(cluster.network) {
                return Err(LoginError::WrongNetwork {
                    address: bounded(address),
                    network: cluster.network,
                });
            }
        }
        super::message::verify_parsed(&parsed, signature, challenge_text.as_bytes())?;
        Ok((original, parsed.to_string()))
    }
}

/// `s`, cut to 100 characters for messages and logs (an "address" may be
/// megabytes).
pub fn bounded(s: &str) -> String {
    const MAX: usize = 100;
    match s.char_indices().nth(MAX) {
        None => s.to_string(),
        Some((i, _)) => format!("{}… ({} bytes)", &s[..i], s.len()),
    }
}

/// What a session token asserts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    /// The logged-in user's address.
    pub address: String,
    /// Cluster id.
    pub cluster: String,
    /// Unix seconds after which the token is refused.
    pub expires: u64,
    /// Hex nonce of the challenge the login used.
    pub fingerprint: String,
    /// Address of the node that issued (and signed) the token.
    pub node: String,
    /// The login passed a level-2 (directory password) check; actions
    /// whose rule requires level 2 need it. Absent in older tokens: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub level2: bool,
    /// Set on a hand-over token (the user moves to another node's page):
    /// not a session itself, but for its short life the ticket from which
    /// another node makes a session of its own that ends at this time (the
    /// session's end on the node that handed it over). Nodes that predate
    /// it refuse such a token (unknown field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hand_over_until: Option<u64>,
    /// On a hand-over token: the address of the one node that may adopt
    /// it (a token read on its way to one node is no key to the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hand_over_to: Option<String>,
}

impl Session {
    /// Sign into a token with the issuing node's key (its P2WPKH address
    /// must be `self.node`).
    pub fn to_token(&self, node_key: &PrivateKey) -> Result<String, LoginError> {
        let payload =
            canonical_json(&serde_json::to_value(self).map_err(|_| LoginError::MalformedToken)?);
        let sig = sign(node_key, payload.as_bytes(), AddressType::P2wpkh)?;
        Ok(format!(
            "{}.{}",
            B64URL.encode(&payload),
            B64URL.encode(BASE64.decode(sig).map_err(|_| LoginError::MalformedToken)?)
        ))
    }

    /// Check a token at time `now` in `cluster`; `is_node` says whether an
    /// address is a node of the cluster (from the trusted Satellite
    /// objects). No shared state between nodes is needed.
    pub fn from_token(
        token: &str,
        cluster: &str,
        now: u64,
        is_node: impl Fn(&str) -> bool,
    ) -> Result<Session, LoginError> {
        let (p, s) = token.split_once('.').ok_or(LoginError::MalformedToken)?;
        let payload = B64URL.decode(p).map_err(|_| LoginError::MalformedToken)?;
        let sig = B64URL.decode(s).map_err(|_| LoginError::MalformedToken)?;
        let session: Session =
            serde_json::from_slice(&payload).map_err(|_| LoginError::MalformedToken)?;
        if session.cluster != cluster {
            return Err(LoginError::WrongCluster(session.cluster));
        }
        if !is_node(&session.node) {
            return Err(LoginError::UnknownNode(session.node));
        }
        verify(&session.node, &BASE64.encode(sig), &payload)?;
        if now >= session.expires {
            return Err(LoginError::Expired);
        }
        Ok(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::address::Network;

    fn node() -> (PrivateKey, String) {
        let k = PrivateKey::generate(Network::Mainnet);
        let a = k.address(AddressType::P2wpkh).unwrap().to_string();
        (k, a)
    }

    #[test]
    fn login_is_single_use_and_expires() {
        let (_, node_addr) = node();
        let mut store = NonceStore::new("C", &node_addr, 60, 100);
        let user = PrivateKey::generate(Network::Mainnet);
        let addr = user.address(AddressType::P2pkh).unwrap().to_string();
        let c = store.issue(1000);
        let text = c.text();
        assert_eq!(Challenge::parse(&text).unwrap(), c);
        let sig = sign(&user, text.as_bytes(), AddressType::P2pkh).unwrap();
        let (_, canonical) = store.login(&text, &addr, &sig, 1010).unwrap();
        assert_eq!(canonical, addr);
        assert!(matches!(
            store.login(&text, &addr, &sig, 1011),
            Err(LoginError::NonceRejected)
        ));
        // Expired.
        let c2 = store.issue(2000).text();
        let sig2 = sign(&user, c2.as_bytes(), AddressType::P2pkh).unwrap();
        assert!(matches!(
            store.login(&c2, &addr, &sig2, 2060),
            Err(LoginError::NonceRejected)
        ));
        // Wrong signer burns the nonce.
        let c3 = store.issue(3000).text();
        let other = PrivateKey::generate(Network::Mainnet);
        let sig3 = sign(&other, c3.as_bytes(), AddressType::P2pkh).unwrap();
        assert!(matches!(
            store.login(&c3, &addr, &sig3, 3001),
            Err(LoginError::Signature(_))
        ));
        let good3 = sign(&user, c3.as_bytes(), AddressType::P2pkh).unwrap();
        assert!(matches!(
            store.login(&c3, &addr, &good3, 3002),
            Err(LoginError::NonceRejected)
        ));
        // Another node's or cluster's challenge.
        let mut elsewhere = NonceStore::new("D", &node_addr, 60, 10);
        let c4 = elsewhere.issue(4000).text();
        let sig4 = sign(&user, c4.as_bytes(), AddressType::P2pkh).unwrap();
        assert!(matches!(
            store.login(&c4, &addr, &sig4, 4001),
            Err(LoginError::WrongIssuer(_))
        ));
    }

    #[test]
    fn the_whole_text_is_checked_the_network_too_and_addresses_are_canonical() {
        let owner = PrivateKey::generate(Network::Mainnet);
        let cluster = owner.address(AddressType::P2wpkh).unwrap().to_string();
        let (_, node_addr) = node();
        let mut store = NonceStore::new(&cluster, &node_addr, 60, 100);
        let user = PrivateKey::generate(Network::Mainnet);
        let addr = user.address(AddressType::P2wpkh).unwrap().to_string();

        // An edited `issued:` line, signed as edited: refused.
        let c = store.issue(1000);
        let edited = Challenge { issued: 5000, ..c }.text();
        let sig = sign(&user, edited.as_bytes(), AddressType::P2wpkh).unwrap();
        assert!(matches!(
            store.login(&edited, &addr, &sig, 1001),
            Err(LoginError::AlteredChallenge)
        ));

        // Uppercase bech32 is the same address, named in lowercase.
        let text = store.issue(1000).text();
        let sig = sign(&user, text.as_bytes(), AddressType::P2wpkh).unwrap();
        let (_, canonical) = store
            .login(&text, &addr.to_uppercase(), &sig, 1001)
            .unwrap();
        assert_eq!(canonical, addr);

        // The same key's testnet address on a mainnet cluster: refused.
        let test_user = user.clone().with_network(Network::Testnet);
        let taddr = test_user.address(AddressType::P2wpkh).unwrap().to_string();
        assert!(taddr.starts_with("tb1"), "{taddr}");
        let text = store.issue(1000).text();
        let sig = sign(&test_user, text.as_bytes(), AddressType::P2wpkh).unwrap();
        assert!(matches!(
            store.login(&text, &taddr, &sig, 1001),
            Err(LoginError::WrongNetwork { .. })
        ));
        assert!(bounded(&"x".repeat(4 << 20)).len() < 200);
    }

    #[test]
    fn nonce_store_is_bounded() {
        let mut store = NonceStore::new("C", "n", 60, 8);
        let first = store.issue(0).text();
        for t in 0..100 {
            store.issue(t / 10);
            assert!(store.len() <= 8);
        }
        let user = PrivateKey::generate(Network::Mainnet);
        let addr = user.address(AddressType::P2wpkh).unwrap().to_string();
        let sig = sign(&user, first.as_bytes(), AddressType::P2wpkh).unwrap();
        assert!(matches!(
            store.login(&first, &addr, &sig, 10),
            Err(LoginError::NonceRejected)
        ));
    }

    #[test]
    fn tokens_verify_on_any_node_and_refuse_tampering() {
        let (nk, na) = node();
        let s = Session {
            hand_over_until: None,
            hand_over_to: None,
            address: "bc1qyjjkmdpu7metqt5r36jf872a34syws33s82q2j".into(),
            cluster: "C".into(),
            expires: 5000,
            fingerprint: "00".repeat(16),
            node: na.clone(),
            level2: false,
        };
        let t = s.to_token(&nk).unwrap();
        let members = |a: &str| a == na;
        assert_eq!(Session::from_token(&t, "C", 4999, members).unwrap(), s);
        assert!(matches!(
            Session::from_token(&t, "C", 5000, members),
            Err(LoginError::Expired)
        ));
        assert!(matches!(
            Session::from_token(&t, "D", 1, members),
            Err(LoginError::WrongCluster(_))
        ));
        assert!(matches!(
            Session::from_token(&t, "C", 1, |_| false),
            Err(LoginError::UnknownNode(_))
        ));
        // Extend the expiry: the node's signature no longer matches.
        let (p, sig) = t.split_once('.').unwrap();
        let forged = String::from_utf8(B64URL.decode(p).unwrap())
            .unwrap()
            .replace("5000", "9999");
        let forged = format!("{}.{}", B64URL.encode(forged), sig);
        assert!(matches!(
            Session::from_token(&forged, "C", 1, members),
            Err(LoginError::Signature(_))
        ));
        for junk in ["", ".", "a.b", "!!.??"] {
            assert!(Session::from_token(junk, "C", 1, members).is_err());
        }
    }
}
