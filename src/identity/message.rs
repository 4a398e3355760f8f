//! BIP-137 "Bitcoin Signed Message" signatures.
//!
//! The signed digest is `SHA256(SHA256("\x18Bitcoin Signed Message:\n" ‖
//! varint(len(message)) ‖ message))`; the signature is 65 bytes, base64:
//! a header byte then `r ‖ s` (32 bytes each, big-endian). The header says
//! the recovery id (0-3) and how to turn the recovered key into an address:
//!
//! | header | address                         |
//! | ------ | ------------------------------- |
//! | 27-30  | P2PKH, uncompressed key         |
//! | 31-34  | P2PKH, compressed key (Bitcoin Core, Electrum also use it for segwit) |
//! | 35-38  | P2SH-P2WPKH (Trezor, BIP-137)   |
//! | 39-42  | P2WPKH (Trezor, BIP-137)        |
//!
//! Verification takes the address type from the *address*: a compressed
//! header (31-34) is accepted for any address type, a segwit header only for
//! its own type. Signatures are produced with low S; a high-S signature is
//! normalised before recovery (it proves the same thing).

use std::time::Instant;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use k256::ecdsa::RecoveryId;
#[cfg(test)]
use k256::ecdsa::{Signature, VerifyingKey};
use thiserror::Error;

use super::address::{Address, AddressError, AddressType, Network};
use super::key::{KeyError, PrivateKey};
use super::sha256d;

/// The message magic prefix (with its own length byte, 0x18 = 24).
pub const MAGIC: &[u8] = b"\x18Bitcoin Signed Message:\n";

/// Why a signature does not prove that `address` signed `message`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    /// The address cannot be parsed.
    #[error("bad address: {0}")]
    BadAddress(AddressError),
    /// A real address type that BIP-137 cannot sign for (P2WSH, taproot).
    #[error("unsupported address type: {0}")]
    UnsupportedAddressType(AddressError),
    /// The signature is not valid base64.
    #[error("signature is not valid base64")]
    BadBase64,
    /// The signature does not decode to 65 bytes.
    #[error("signature is {0} bytes, expected 65")]
    BadLength(usize),
    /// The header byte is outside 27..=42.
    #[error("signature header byte {0} is outside 27..=42")]
    BadHeader(u8),
    /// A segwit header used with another address type.
    #[error("signature header {header} is for {header_type} addresses, but the address is {address_type}")]
    HeaderMismatch {
        /// Header byte.
        header: u8,
        /// What the header declares.
        header_type: AddressType,
        /// What the address is.
        address_type: AddressType,
    },
    /// `r`/`s` out of range, or no public key recovers from them.
    #[error("no public key can be recovered from this signature")]
    RecoveryFailed,
    /// A BIP-322 simple signature is malformed or does not verify.
    #[error("BIP-322: {0}")]
    Bip322(&'static str),
    /// A key was recovered, but it does not control the address.
    #[error("signature was not made by {0} (wrong message, key or address)")]
    AddressMismatch(String),
}

/// Why a message could not be signed.
#[derive(Debug, Error)]
pub enum SignError {
    /// The key cannot have this address type.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The signer failed (practically impossible with a valid key).
    #[error("signing failed: {0}")]
    Ecdsa(String),
}

/// Bitcoin's variable-length integer (CompactSize).
fn push_varint(out: &mut Vec<u8>, n: u64) {
    match n {
        0..=0xfc => out.push(n as u8),
        0xfd..=0xffff => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0xfe);
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
        _ => {
            out.push(0xff);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

/// The digest BIP-137 signs: double SHA-256 of magic ‖ varint ‖ message.
pub fn message_hash(message: &[u8]) -> [u8; 32] {
    let mut data = Vec::with_capacity(MAGIC.len() + 9 + message.len());
    data.extend_from_slice(MAGIC);
    push_varint(&mut data, message.len() as u64);
    data.extend_from_slice(message);
    sha256d(&data)
}

/// Sign `message` with `key`, for an address of type `kind` (which sets the
/// header: 27-30/31-34 P2PKH, 35-38 P2SH-P2WPKH, 39-42 P2WPKH). Returns the
/// 65-byte signature in base64. Deterministic (RFC 6979), low S.
pub fn sign(key: &PrivateKey, message: &[u8], kind: AddressType) -> Result<String, SignError> {
    // Segwit types need a compressed key: fail before signing.
    key.address(kind)?;
    let hash = message_hash(message);
    let (mut sig, mut recid) = key
        .signing_key()
        .sign_prehash_recoverable(&hash)
        .map_err(|e| SignError::Ecdsa(e.to_string()))?;
    if let Some(low) = sig.normalize_s() {
        sig = low;
        recid = RecoveryId::new(!recid.is_y_odd(), recid.is_x_reduced());
    }
    let base = match kind {
        AddressType::P2pkh if key.compressed() => 31,
        AddressType::P2pkh => 27,
        AddressType::P2shP2wpkh => 35,
        AddressType::P2wpkh => 39,
    };
    let mut out = [0u8; 65];
    out[0] = base + recid.to_byte();
    out[1..].copy_from_slice(&sig.to_bytes());
    Ok(BASE64.encode(out))
}

/// Check that `signature_b64` is `address`'s BIP-137 signature of
/// `message` (or, for a P2WPKH address and a signature longer than 65
/// bytes, its BIP-322 simple signature). Never panics, whatever the input.
pub fn verify(address: &str, signature_b64: &str, message: &[u8]) -> Result<(), VerifyError> {
    let addr = Address::parse(address).map_err(|e| match e {
        AddressError::Unsupported { .. } => VerifyError::UnsupportedAddressType(e),
        other => VerifyError::BadAddress(other),
    })?;
    verify_parsed(&addr, signature_b64, message)
}

/// [`verify`] with an already parsed address.
pub fn verify_parsed(
    addr: &Address,
    signature_b64: &str,
    message: &[u8],
) -> Result<(), VerifyError> {
    let bytes = BASE64
        .decode(signature_b64.trim())
        .map_err(|_| VerifyError::BadBase64)?;
    if bytes.len() != 65 {
        // Not BIP-137: a BIP-322 simple witness, for P2WPKH addresses.
        if addr.kind == AddressType::P2wpkh && bytes.len() > 65 {
            return super::bip322::verify_simple(addr, signature_b64, message);
        }
        return Err(VerifyError::BadLength(bytes.len()));
    }
    let header = bytes[0];
    if !(27..=42).contains(&header) {
        return Err(VerifyError::BadHeader(header));
    }
    let (header_type, compressed) = match header {
        27..=30 => (AddressType::P2pkh, false),
        31..=34 => (AddressType::P2pkh, true),
        35..=38 => (AddressType::P2shP2wpkh, true),
        _ => (AddressType::P2wpkh, true),
    };
    // Electrum / Bitcoin Core convention: a compressed P2PKH header signs
    // for any address of the key; explicit segwit headers must agree.
    if header >= 35 && header_type != addr.kind {
        return Err(VerifyError::HeaderMismatch {
            header,
            header_type,
            address_type: addr.kind,
        });
    }
    let recid = (header - 27) & 3;
    let hash = message_hash(message);
    let pubkey = recover(&hash, &bytes[1..], recid, compressed)?;
    if addr.matches_pubkey(&pubkey) {
        Ok(())
    } else {
        Err(VerifyError::AddressMismatch(addr.to_string()))
    }
}

/// Recover the public key (serialized compressed or not) from a 64-byte
/// `r ‖ s` signature of `hash` with recovery id 0-3.
///
/// Uses libsecp256k1 (Bitcoin Core's library, through the `secp256k1`
/// crate): about 5× faster than `k256` here, which matters because every
/// gossiped or pushed document is verified (see `docs/PERFORMANCE.md`).
/// libsecp256k1's recovery accepts high-S signatures, which is the
/// normalisation: `(r, s)` and `(r, n−s)` with the opposite parity recover
/// the same key. A unit test checks it agrees with `k256`.
fn recover(
    hash: &[u8; 32],
    rs: &[u8],
    recid: u8,
    compressed: bool,
) -> Result<Vec<u8>, VerifyError> {
    use secp256k1::ecdsa::{RecoverableSignature, RecoveryId as SecpRecoveryId};
    let id = SecpRecoveryId::from_i32(i32::from(recid)).map_err(|_| VerifyError::RecoveryFailed)?;
    let sig =
        RecoverableSignature::from_compact(rs, id).map_err(|_| VerifyError::RecoveryFailed)?;
    let key = secp256k1::SECP256K1
        .recover_ecdsa(&secp256k1::Message::from_digest(*hash), &sig)
        .map_err(|_| VerifyError::RecoveryFailed)?;
    Ok(if compressed {
        key.serialize().to_vec()
    } else {
        key.serialize_uncompressed().to_vec()
    })
}

/// The same recovery with `k256` (pure Rust), kept to cross-check.
#[cfg(test)]
fn recover_k256(
    hash: &[u8; 32],
    rs: &[u8],
    recid: u8,
    compressed: bool,
) -> Result<Vec<u8>, VerifyError> {
    let mut sig = Signature::from_slice(rs).map_err(|_| VerifyError::RecoveryFailed)?;
    let mut id = RecoveryId::from_byte(recid).ok_or(VerifyError::RecoveryFailed)?;
    if let Some(low) = sig.normalize_s() {
        sig = low;
        id = RecoveryId::new(!id.is_y_odd(), id.is_x_reduced());
    }
    let key = VerifyingKey::recover_from_prehash(hash, &sig, id)
        .map_err(|_| VerifyError::RecoveryFailed)?;
    Ok(key.to_encoded_point(compressed).as_bytes().to_vec())
}

/// Measure verification throughput on this thread: sign `n` distinct
/// messages, then verify them all; returns verifications per second.
pub fn bench_verify(n: usize) -> f64 {
    let n = n.max(1);
    let key = PrivateKey::generate(Network::Mainnet);
    let address = key
        .address(AddressType::P2wpkh)
        .expect("generated keys are compressed")
        .to_string();
    let cases: Vec<(Vec<u8>, String)> = (0..n)
        .map(|i| {
            let m = format!("deorch bench message {i}").into_bytes();
            let s = sign(&key, &m, AddressType::P2wpkh).expect("generated keys sign");
            (m, s)
        })
        .collect();
    let start = Instant::now();
    let mut ok = 0usize;
    for (m, s) in &cases {
        ok += usize::from(verify(&address, s, m).is_ok());
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(ok, n, "every benchmark signature verifies");
    n as f64 / secs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_one(compressed: bool, network: Network) -> PrivateKey {
        let mut one = [0u8; 32];
        one[31] = 1;
        PrivateKey::from_bytes(&one, compressed, network).unwrap()
    }

    #[test]
    fn magic_hash_matches_bitcoinjs_message_fixtures() {
        // bitcoinjs/bitcoinjs-message test/fixtures.json, valid.magicHash.
        assert_eq!(
            hex::encode(message_hash(b"")),
            "80e795d4a4caadd7047af389d9f7f220562feb6196032e2131e10563352c4bcc"
        );
        assert_eq!(
            hex::encode(message_hash(b"Vires is Numeris")),
            "f8a5affbef4a3241b19067aa694562f64f513310817297089a8929a930f4f933"
        );
    }

    #[test]
    fn varint_boundaries() {
        let enc = |n| {
            let mut v = Vec::new();
            push_varint(&mut v, n);
            v
        };
        assert_eq!(enc(0xfc), [0xfc]);
        assert_eq!(enc(0xfd), [0xfd, 0xfd, 0x00]);
        assert_eq!(enc(0xffff), [0xfd, 0xff, 0xff]);
        assert_eq!(enc(0x10000), [0xfe, 0, 0, 1, 0]);
        assert_eq!(enc(0x1_0000_0000), [0xff, 0, 0, 0, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn signing_with_key_one_matches_bitcoinjs_message_fixtures() {
        // bitcoinjs-message fixtures.json valid.sign[0]: d = 1, "vires is numeris".
        let m = b"vires is numeris";
        assert_eq!(
            sign(&key_one(false, Network::Mainnet), m, AddressType::P2pkh).unwrap(),
            "HF8nHqFr3K2UKYahhX3soVeoW8W1ECNbr0wfck7lzyXjCS5Q16Ek45zyBuy1Fiy9sTPKVgsqqOuPvbycuVSSVl8="
        );
        let k = key_one(true, Network::Mainnet);
        assert_eq!(
            sign(&k, m, AddressType::P2pkh).unwrap(),
            "IF8nHqFr3K2UKYahhX3soVeoW8W1ECNbr0wfck7lzyXjCS5Q16Ek45zyBuy1Fiy9sTPKVgsqqOuPvbycuVSSVl8="
        );
        assert_eq!(
            sign(&k, m, AddressType::P2shP2wpkh).unwrap(),
            "JF8nHqFr3K2UKYahhX3soVeoW8W1ECNbr0wfck7lzyXjCS5Q16Ek45zyBuy1Fiy9sTPKVgsqqOuPvbycuVSSVl8="
        );
        assert_eq!(
            sign(&k, m, AddressType::P2wpkh).unwrap(),
            "KF8nHqFr3K2UKYahhX3soVeoW8W1ECNbr0wfck7lzyXjCS5Q16Ek45zyBuy1Fiy9sTPKVgsqqOuPvbycuVSSVl8="
        );
    }

    #[test]
    fn header_errors_are_typed() {
        let k = key_one(true, Network::Mainnet);
        let sig = sign(&k, b"m", AddressType::P2wpkh).unwrap();
        let mut raw = BASE64.decode(&sig).unwrap();
        // A P2WPKH header on a P2PKH address.
        let p2pkh = k.address(AddressType::P2pkh).unwrap().to_string();
        assert!(matches!(
            verify(&p2pkh, &sig, b"m"),
            Err(VerifyError::HeaderMismatch { .. })
        ));
        raw[0] = 43;
        assert_eq!(
            verify(&p2pkh, &BASE64.encode(&raw), b"m"),
            Err(VerifyError::BadHeader(43))
        );
        assert_eq!(verify(&p2pkh, "!!!", b"m"), Err(VerifyError::BadBase64));
        assert_eq!(verify(&p2pkh, "AAAA", b"m"), Err(VerifyError::BadLength(3)));
        raw[0] = 31;
        raw[1..].fill(0);
        assert_eq!(
            verify(&p2pkh, &BASE64.encode(&raw), b"m"),
            Err(VerifyError::RecoveryFailed)
        );
    }

    #[test]
    fn libsecp256k1_and_k256_recover_the_same_keys() {
        for i in 0..200u32 {
            let k = PrivateKey::generate(Network::Mainnet);
            let m = format!("agree {i}");
            let raw = BASE64
                .decode(sign(&k, m.as_bytes(), AddressType::P2pkh).unwrap())
                .unwrap();
            let h = message_hash(m.as_bytes());
            let (a, b) = (
                recover(&h, &raw[1..], (raw[0] - 27) & 3, true).unwrap(),
                recover_k256(&h, &raw[1..], (raw[0] - 27) & 3, true).unwrap(),
            );
            assert_eq!(a, b);
            assert_eq!(a, k.public_key());
            // Garbage: both fail, or both recover the same (wrong) key.
            let mut junk = raw.clone();
            junk[1..33].copy_from_slice(&h);
            for id in 0..4 {
                let x = recover(&h, &junk[1..], id, false).ok();
                let y = recover_k256(&h, &junk[1..], id, false).ok();
                assert_eq!(x, y, "recovery id {id}");
            }
        }
    }

    #[test]
    fn high_s_is_normalised() {
        use k256::elliptic_curve::PrimeField;
        let k = key_one(true, Network::Mainnet);
        let addr = k.address(AddressType::P2pkh).unwrap().to_string();
        let sig = sign(&k, b"m", AddressType::P2pkh).unwrap();
        let raw = BASE64.decode(&sig).unwrap();
        let s = Signature::from_slice(&raw[1..]).unwrap();
        let neg: k256::Scalar = -*s.s().as_ref();
        let high = Signature::from_scalars(k256::FieldBytes::from(s.r()), neg.to_repr()).unwrap();
        assert!(
            high.normalize_s().is_some(),
            "the forged signature has high S"
        );
        let mut flipped = raw.clone();
        flipped[0] = 31 + ((raw[0] - 31) ^ 1);
        flipped[1..].copy_from_slice(&high.to_bytes());
        verify(&addr, &BASE64.encode(&flipped), b"m").unwrap();
    }
}
