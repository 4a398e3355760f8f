//! Identity: users and nodes are Bitcoin addresses.
//!
//! - [`key`]: secp256k1 private keys (generate, store 0600 atomically as WIF,
//!   load WIF or hex) and the addresses they control.
//! - [`address`]: P2PKH, nested P2SH-P2WPKH and native P2WPKH addresses on
//!   mainnet, testnet and regtest.
//! - [`message`]: BIP-137 "Bitcoin Signed Message" signatures, the format of
//!   Bitcoin Core, Electrum, Trezor, bitcoinjs-message and python-bitcoinlib.
//! - [`bip322`]: BIP-322 "simple" signatures for P2WPKH (accepted by
//!   [`message::verify`] too).
//! - [`signed`]: signed manifests (canonical form documented in
//!   `docs/SIGNING.md`).
//! - [`session`]: login challenges, a bounded single-use nonce store and
//!   node-signed session tokens (served by [`crate::http`]).
//! - [`level2`]: password check against an ordered list of LDAP / AD
//!   servers, with failover, escaping and rate limiting.
//! - [`request`]: per-request signatures (body hash, timestamp, nonce)
//!   and a bounded replay guard.
//! - [`access`]: `AccessPolicy` evaluation and the policy trust chain from the
//!   cluster owner's address.
//!
//! Architecture invariant: nothing here stores a user secret. Nodes keep
//! addresses; the only private key this module reads or writes is the one
//! the caller names by path.

pub mod access;
pub mod address;
pub mod bip322;
pub mod key;
pub mod level2;
pub mod message;
pub mod node_sig;
pub mod request;
pub mod session;
pub mod signed;

pub use access::{authorize, trusted_policies, Decision, RuleMiss, TrustReport};
pub use address::{Address, AddressError, AddressType, Network};
pub use key::{KeyError, PrivateKey};
pub use message::{bench_verify, sign, verify, SignError, VerifyError};
pub use signed::{canonical_json, sign_manifest, signing_payload, verify_manifest, ManifestError};

use sha2::{Digest, Sha256};

/// RIPEMD-160(SHA-256(data)), Bitcoin's key and script hash.
pub fn hash160(data: &[u8]) -> [u8; 20] {
    use ripemd::Ripemd160;
    let sha = Sha256::digest(data);
    Ripemd160::digest(sha).into()
}

/// SHA-256(SHA-256(data)).
pub fn sha256d(data: &[u8]) -> [u8; 32] {
    Sha256::digest(Sha256::digest(data)).into()
}
