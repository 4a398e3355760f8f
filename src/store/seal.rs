//! Every stored value carries its own checksum.
//!
//! redb keeps its pages consistent across crashes, but a flipped bit inside
//! a value (a bad disk, a bad copy, a hand edit) would still decode as a
//! different, valid-looking record. So each value is sealed: two magic
//! bytes, the SHA-256 of the JSON, then the JSON. [`open`] gives back the
//! JSON only when the digest matches. Values written before sealing (plain
//! JSON, first byte `{`) are read as they are; the record's content hash
//! still covers their object.

use sha2::{Digest, Sha256};

/// First bytes of a sealed value: never the first byte of JSON text.
const MAGIC: [u8; 2] = [0xD0, 0x01];
const DIGEST: usize = 32;

/// `json` sealed with its digest.
pub fn seal(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + DIGEST + json.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&Sha256::digest(json));
    out.extend_from_slice(json);
    out
}

/// The JSON inside `bytes`, or what is wrong with them.
pub fn open(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.first() == Some(&b'{') {
        return Ok(bytes);
    }
    let Some(rest) = bytes.strip_prefix(&MAGIC[..]) else {
        return Err("not a deorch record (unknown leading bytes)".into());
    };
    if rest.len() < DIGEST {
        return Err(format!("truncated ({} bytes)", bytes.len()));
    }
    let (digest, json) = rest.split_at(DIGEST);
    if Sha256::digest(json).as_slice() != digest {
        return Err("checksum mismatch: the stored bytes changed after they were written".into());
    }
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_flipped_bit_is_caught() {
        let json = br#"{"a":1,"b":"text"}"#;
        let sealed = seal(json);
        assert_eq!(open(&sealed).unwrap(), json);
        for bit in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(open(&bad).is_err(), "bit {bit} went unnoticed");
        }
        assert!(open(&sealed[..10]).is_err());
        assert_eq!(
            open(json).unwrap(),
            json,
            "an unsealed value reads as it is"
        );
    }
}
