//! BIP-322 "simple" signed messages for native P2WPKH addresses.
//!
//! The message is committed to by a virtual transaction `to_spend` whose
//! output pays the address; the signature is the witness of a virtual
//! transaction `to_sign` spending it (BIP-143 sighash, `SIGHASH_ALL`),
//! serialized as a witness stack and base64-encoded:
//!
//! ```text
//! message_hash = SHA256(SHA256("BIP0322-signed-message") ‖ SHA256("BIP0322-signed-message") ‖ message)
//! to_spend: version 0, input 000…000:0xFFFFFFFF scriptSig [OP_0 PUSH32 message_hash] seq 0,
//!           output value 0 scriptPubKey = address script, locktime 0
//! to_sign:  version 0, input to_spend:0 seq 0, output value 0 OP_RETURN, locktime 0
//! ```
//!
//! Only P2WPKH (a DER ECDSA signature and a compressed key in the witness)
//! is supported: taproot needs Schnorr and P2SH-P2WPKH needs a scriptSig,
//! which "simple" cannot carry.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::address::{Address, AddressType};
use super::key::PrivateKey;
use super::message::{SignError, VerifyError};
use super::{hash160, sha256d};

const TAG: &[u8] = b"BIP0322-signed-message";
const SIGHASH_ALL: u8 = 0x01;

/// The BIP-322 tagged message hash.
pub fn message_hash(message: &[u8]) -> [u8; 32] {
    let tag = Sha256::digest(TAG);
    let mut h = Sha256::new();
    h.update(tag);
    h.update(tag);
    h.update(message);
    h.finalize().into()
}

fn push_varint(out: &mut Vec<u8>, n: usize) {
    match n {
        0..=0xfc => out.push(n as u8),
        0xfd..=0xffff => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
    }
}

/// txid of `to_spend` for a P2WPKH key hash.
fn to_spend_txid(key_hash: &[u8; 20], message: &[u8]) -> [u8; 32] {
    let mut tx = Vec::with_capacity(128);
    tx.extend_from_slice(&0u32.to_le_bytes()); // version
    tx.push(1); // inputs
    tx.extend_from_slice(&[0u8; 32]);
    tx.extend_from_slice(&0xffff_ffffu32.to_le_bytes());
    tx.push(34); // scriptSig: OP_0 PUSH32 message_hash
    tx.push(0x00);
    tx.push(0x20);
    tx.extend_from_slice(&message_hash(message));
    tx.extend_from_slice(&0u32.to_le_bytes()); // sequence
    tx.push(1); // outputs
    tx.extend_from_slice(&0u64.to_le_bytes());
    tx.push(22);
    tx.push(0x00);
    tx.push(0x14);
    tx.extend_from_slice(key_hash);
    tx.extend_from_slice(&0u32.to_le_bytes()); // locktime
    sha256d(&tx)
}

/// BIP-143 sighash of `to_sign`'s only input spending a P2WPKH output.
fn sighash(key_hash: &[u8; 20], message: &[u8]) -> [u8; 32] {
    let txid = to_spend_txid(key_hash, message);
    let mut outpoint = Vec::with_capacity(36);
    outpoint.extend_from_slice(&txid);
    outpoint.extend_from_slice(&0u32.to_le_bytes());
    let sequence = 0u32.to_le_bytes();
    // One output: value 0, script OP_RETURN.
    let output = [0u8, 0, 0, 0, 0, 0, 0, 0, 1, 0x6a];
    let mut pre = Vec::with_capacity(160);
    pre.extend_from_slice(&0u32.to_le_bytes()); // version
    pre.extend_from_slice(&sha256d(&outpoint)); // hashPrevouts
    pre.extend_from_slice(&sha256d(&sequence)); // hashSequence
    pre.extend_from_slice(&outpoint);
    pre.extend_from_slice(&[0x19, 0x76, 0xa9, 0x14]); // scriptCode
    pre.extend_from_slice(key_hash);
    pre.extend_from_slice(&[0x88, 0xac]);
    pre.extend_from_slice(&0u64.to_le_bytes()); // value spent
    pre.extend_from_slice(&sequence);
    pre.extend_from_slice(&sha256d(&output)); // hashOutputs
    pre.extend_from_slice(&0u32.to_le_bytes()); // locktime
    pre.extend_from_slice(&u32::from(SIGHASH_ALL).to_le_bytes());
    sha256d(&pre)
}

/// Sign `message` BIP-322-simple with `key`'s P2WPKH address; base64.
pub fn sign_simple(key: &PrivateKey, message: &[u8]) -> Result<String, SignError> {
    let addr = key.address(AddressType::P2wpkh)?;
    let hash = sighash(&addr.hash, message);
    let sig: k256::ecdsa::Signature = key
        .signing_key()
        .sign_prehash_recoverable(&hash)
        .map(|(s, _)| s)
        .map_err(|e| SignError::Ecdsa(e.to_string()))?;
    let sig = sig.normalize_s().unwrap_or(sig);
    let mut der = sig.to_der().as_bytes().to_vec();
    der.push(SIGHASH_ALL);
    let pubkey = key.public_key();
    let mut witness = vec![2u8];
    push_varint(&mut witness, der.len());
    witness.extend_from_slice(&der);
    push_varint(&mut witness, pubkey.len());
    witness.extend_from_slice(&pubkey);
    Ok(BASE64.encode(witness))
}

/// Parse a serialized witness stack; `None` if malformed or trailing bytes.
fn parse_witness(mut b: &[u8]) -> Option<Vec<&[u8]>> {
    fn varint(b: &mut &[u8]) -> Option<usize> {
        let (&first, rest) = b.split_first()?;
        *b = rest;
        let n = match first {
            0xfd => {
                let v = u16::from_le_bytes(b.get(..2)?.try_into().ok()?) as usize;
                *b = &b[2..];
                v
            }
            0xfe => {
                let v = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
                *b = &b[4..];
                v
            }
            0xff => return None,
            n => n as usize,
        };
        Some(n)
    }
    let count = varint(&mut b)?;
    if count > 16 {
        return None;
    }
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        let len = varint(&mut b)?;
        let item = b.get(..len)?;
        b = &b[len..];
        items.push(item);
    }
    b.is_empty().then_some(items)
}

/// Verify a BIP-322-simple signature for a P2WPKH address.
pub fn verify_simple(
    addr: &Address,
    signature_b64: &str,
    message: &[u8],
) -> Result<(), VerifyError> {
    if addr.kind != AddressType::P2wpkh {
        return Err(VerifyError::Bip322(
            "BIP-322 simple is supported for P2WPKH addresses only",
        ));
    }
    let raw = BASE64
        .decode(signature_b64.trim())
        .map_err(|_| VerifyError::BadBase64)?;
    let items = parse_witness(&raw).ok_or(VerifyError::Bip322("malformed witness"))?;
    let [sig, pubkey] = items.as_slice() else {
        return Err(VerifyError::Bip322("a P2WPKH witness has two items"));
    };
    let (der, sighash_type) = sig.split_last().map(|(t, d)| (d, *t)).unzip();
    if sighash_type != Some(SIGHASH_ALL) {
        return Err(VerifyError::Bip322("only SIGHASH_ALL is accepted"));
    }
    if pubkey.len() != 33 || hash160(pubkey) != addr.hash {
        return Err(VerifyError::AddressMismatch(addr.to_string()));
    }
    let der = der.unwrap_or_default();
    let sig = secp256k1::ecdsa::Signature::from_der(der)
        .map_err(|_| VerifyError::Bip322("signature is not strict DER"))?;
    let key = secp256k1::PublicKey::from_slice(pubkey)
        .map_err(|_| VerifyError::Bip322("public key is not on the curve"))?;
    let msg = secp256k1::Message::from_digest(sighash(&addr.hash, message));
    // libsecp256k1 requires low S, as Bitcoin's standardness rules do.
    secp256k1::SECP256K1
        .verify_ecdsa(&msg, &sig, &key)
        .map_err(|_| VerifyError::Bip322("ECDSA signature does not verify"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_hashes_from_bip322() {
        // BIP-322 "Test vectors: Message hashing".
        assert_eq!(
            hex::encode(message_hash(b"")),
            "c90c269c4f8fcbe6880f72a721ddfbf1914268a794cbb21cfafee13770ae19f1"
        );
        assert_eq!(
            hex::encode(message_hash(b"Hello World")),
            "f0eb03b1a75ac6d9847f55c624a99169b5dccba2a31f5b23bea77ba270de0a7a"
        );
    }

    #[test]
    fn to_spend_txids_from_bip322() {
        // BIP-322 "Transaction Hashes" for bc1q9vza2e8x573nczrlzms0wvx3gsqjx7vavgkx0l
        // (txids are displayed byte-reversed).
        let addr = Address::parse("bc1q9vza2e8x573nczrlzms0wvx3gsqjx7vavgkx0l").unwrap();
        let shown = |m: &[u8]| {
            let mut t = to_spend_txid(&addr.hash, m);
            t.reverse();
            hex::encode(t)
        };
        assert_eq!(
            shown(b""),
            "c5680aa69bb8d860bf82d4e9cd3504b55dde018de765a91bb566283c545a99a7"
        );
        assert_eq!(
            shown(b"Hello World"),
            "b79d196740ad5217771c1098fc4a4b51e0535c32236c71f1ea4d61a2d603352b"
        );
    }
}
