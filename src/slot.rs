//! Hashed slots: where a name lands in a fixed range of N slots without a
//! database, so every node that knows the same names computes the same
//! places. A name's *home* slot is `hash mod N`, its hash the first 64 bits
//! (big-endian) of `SHA-256(domain || name)`; when the home is not free the
//! name takes the next free slot (linear probing, wrapping). Console ports
//! (`qemu::console`) and DHCP addresses (`dhcp::alloc`) are both this rule;
//! they differ in what they hash (the domain) and in what "free" means.
//! See docs/ALGORITHMS.md.

use sha2::{Digest, Sha256};

/// The 64-bit hash of `name` in `domain` (a prefix that keeps two uses of
/// one name apart; empty for console ports, `b"dhcp\0"` for addresses).
pub fn hash(domain: &[u8], name: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(domain);
    h.update(name.as_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first)
}

/// The home slot of `hash` among `n` slots (0 when there are none).
pub fn home(hash: u64, n: u64) -> u64 {
    hash.checked_rem(n).unwrap_or(0)
}

/// The first slot, starting at `home` and wrapping after `n - 1`, for
/// which `free` holds; `None` when none of the `n` does.
pub fn probe(home: u64, n: u64, mut free: impl FnMut(u64) -> bool) -> Option<u64> {
    (0..n).map(|i| (home + i) % n).find(|&s| free(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_sha256_of_domain_and_name() {
        // SHA-256("abc") = ba7816bf 8f01cfea ...
        assert_eq!(hash(b"", "abc"), 0xba78_16bf_8f01_cfea);
        assert_eq!(hash(b"a", "bc"), hash(b"", "abc"));
        assert_ne!(hash(b"dhcp\0", "x"), hash(b"", "x"));
    }

    #[test]
    fn probing_starts_at_home_and_wraps() {
        assert_eq!(home(17, 5), 2);
        assert_eq!(home(17, 0), 0);
        assert_eq!(probe(2, 5, |_| true), Some(2));
        assert_eq!(probe(3, 5, |s| s == 1 || s == 4), Some(4));
        assert_eq!(probe(4, 5, |s| s == 1), Some(1), "wraps past the end");
        assert_eq!(probe(0, 5, |_| false), None);
        assert_eq!(probe(0, 0, |_| true), None);
        let mut seen = Vec::new();
        assert_eq!(
            probe(3, 4, |s| {
                seen.push(s);
                false
            }),
            None
        );
        assert_eq!(seen, [3, 0, 1, 2], "each slot is looked at once");
    }
}
