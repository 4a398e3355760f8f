//! The replicated entries one node holds (documents, claims, node status),
//! merged by [`Version`], with the anti-entropy digest and the queue of
//! entries still being pushed.
//!
//! Merge rule: for each key the greater version wins; a lower or equal one
//! is ignored. The merge is commutative, associative and idempotent, so any
//! order of delivery, duplicates and losses ends in the same state once
//! every node has seen every version (see docs/ALGORITHMS.md).

use std::collections::BTreeMap;

use super::rng::{hash64, mix64};
use super::wire::{entry_len, Entry, EntryKey, Millis, Version};

/// Number of digest buckets. The digest is `BUCKETS × 8` bytes.
pub const BUCKETS: usize = 64;

/// One stored entry.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The entry.
    pub entry: Entry,
    /// Its version.
    pub version: Version,
    /// Its encoded length.
    pub len: usize,
    /// When this node accepted it.
    pub received: Millis,
}

/// Entries by key, the digest, and the push queue.
#[derive(Debug, Default)]
pub struct EntryStore {
    map: BTreeMap<EntryKey, Stored>,
    buckets: Vec<u64>,
    /// Keys still to push, with the number of transmissions left.
    hot: Vec<(EntryKey, u32)>,
}

/// Result of offering an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// It was newer and replaced (or created) the stored one.
    Newer,
    /// It was not newer; nothing changed.
    Stale,
}

fn bucket_of(key: &EntryKey) -> usize {
    (key_hash(key) % BUCKETS as u64) as usize
}

fn key_hash(key: &EntryKey) -> u64 {
    match key {
        EntryKey::Doc(k) => mix64(k.hash64() ^ 1),
        EntryKey::Claim(k) => mix64(k.hash64() ^ 2),
        EntryKey::Status(n) => mix64(n.hash64() ^ 3),
    }
}

fn entry_hash(key: &EntryKey, v: &Version) -> u64 {
    hash64(&[
        &key_hash(key).to_le_bytes(),
        &v.0.to_le_bytes(),
        &v.1.to_le_bytes(),
        &v.2.to_le_bytes(),
    ])
}

impl EntryStore {
    /// An empty store.
    pub fn new() -> Self {
        EntryStore {
            map: BTreeMap::new(),
            buckets: vec![0; BUCKETS],
            hot: Vec::new(),
        }
    }

    /// Merge `entry` (already verified). A newer entry is queued for push
    /// with `transmits` transmissions.
    pub fn offer(&mut self, entry: Entry, now: Millis, transmits: u32) -> Merge {
        let key = entry.key();
        let version = entry.version();
        if let Some(old) = self.map.get(&key) {
            if old.version >= version {
                return Merge::Stale;
            }
        }
        self.put(key.clone(), entry, version, now);
        if transmits > 0 {
            self.hot.retain(|(k, _)| *k != key);
            self.hot.push((key, transmits));
        }
        Merge::Newer
    }

    fn put(&mut self, key: EntryKey, entry: Entry, version: Version, now: Millis) {
        let b = bucket_of(&key);
        if let Some(old) = self.map.get(&key) {
            self.buckets[b] ^= entry_hash(&key, &old.version);
        }
        self.buckets[b] ^= entry_hash(&key, &version);
        let len = entry_len(&entry);
        self.map.insert(
            key,
            Stored {
                entry,
                version,
                len,
                received: now,
            },
        );
    }

    /// Remove an entry (garbage collection).
    pub fn remove(&mut self, key: &EntryKey) -> Option<Stored> {
        let old = self.map.remove(key)?;
        self.buckets[bucket_of(key)] ^= entry_hash(key, &old.version);
        self.hot.retain(|(k, _)| k != key);
        Some(old)
    }

    /// The stored entry of `key`.
    pub fn get(&self, key: &EntryKey) -> Option<&Stored> {
        self.map.get(key)
    }

    /// Every stored entry, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&EntryKey, &Stored)> {
        self.map.iter()
    }

    /// Number of stored entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The digest: XOR of entry hashes per bucket.
    pub fn digest(&self) -> Vec<u64> {
        self.buckets.clone()
    }

    /// The buckets where `theirs` differs from mine, and my versions in
    /// them (at most `limit`; the rest waits for the next exchange).
    pub fn versions_differing(
        &self,
        theirs: &[u64],
        limit: usize,
    ) -> (Vec<u16>, Vec<(EntryKey, Version)>) {
        if theirs.len() != BUCKETS {
            return (Vec::new(), Vec::new());
        }
        let differ: Vec<bool> = (0..BUCKETS).map(|b| theirs[b] != self.buckets[b]).collect();
        let buckets = (0..BUCKETS as u16)
            .filter(|b| differ[*b as usize])
            .collect();
        let versions = self
            .map
            .iter()
            .filter(|(k, _)| differ[bucket_of(k)])
            .take(limit)
            .map(|(k, s)| (k.clone(), s.version))
            .collect();
        (buckets, versions)
    }

    /// Compare a peer's versions (from its buckets that differ from mine)
    /// with mine: returns (keys I hold newer or it lacks, keys it holds
    /// newer or I lack). Only the `buckets` the peer found different are
    /// compared.
    pub fn compare(
        &self,
        buckets: &[u16],
        theirs: &[(EntryKey, Version)],
    ) -> (Vec<EntryKey>, Vec<EntryKey>) {
        let mut push = Vec::new();
        let mut pull = Vec::new();
        let mut seen_buckets = [false; BUCKETS];
        for b in buckets {
            if let Some(x) = seen_buckets.get_mut(*b as usize) {
                *x = true;
            }
        }
        let mut listed = std::collections::HashSet::new();
        for (k, v) in theirs {
            listed.insert(k);
            match self.map.get(k) {
                Some(s) if s.version > *v => push.push(k.clone()),
                Some(s) if s.version == *v => {}
                _ => pull.push(k.clone()),
            }
        }
        for k in self.map.keys() {
            if seen_buckets[bucket_of(k)] && !listed.contains(k) {
                push.push(k.clone());
            }
        }
        (push, pull)
    }

    /// Take entries to push to one peer, at most `budget` encoded bytes;
    /// each taken entry uses one of its transmissions.
    pub fn take_hot(&mut self, budget: usize) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut used = 0;
        for (key, left) in self.hot.iter_mut() {
            let Some(s) = self.map.get(key) else {
                *left = 0;
                continue;
            };
            if used + s.len > budget {
                continue;
            }
            used += s.len;
            out.push(s.entry.clone());
            *left -= 1;
        }
        self.hot.retain(|(_, left)| *left > 0);
        out
    }

    /// Whether anything is waiting to be pushed.
    pub fn has_hot(&self) -> bool {
        !self.hot.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::wire::{DocKey, Document};
    use proptest::prelude::*;

    fn doc(name: &str, generation: u64, deleted: bool, body: &str) -> Entry {
        Entry::Doc(Document {
            key: DocKey::new("VirtualMachine", "default", name),
            generation,
            deleted,
            written_ms: 0,
            body: body.as_bytes().to_vec(),
        })
    }

    proptest! {
        /// Any order and any duplication of the same versions gives the
        /// same state and the same digest (commutative, idempotent).
        #[test]
        fn merge_is_order_independent(
            ops in proptest::collection::vec((0..4u8, 1..4u64, any::<bool>(), 0..3u8), 1..40),
            seed in any::<u64>(),
        ) {
            let entries: Vec<Entry> = ops.iter()
                .map(|(n, g, d, b)| doc(&format!("vm{n}"), *g, *d, &format!("b{b}")))
                .collect();
            let mut a = EntryStore::new();
            for e in &entries { a.offer(e.clone(), 0, 0); }
            let mut shuffled = entries.clone();
            shuffled.extend(entries.iter().cloned());
            super::super::rng::Rng::new(seed).shuffle(&mut shuffled);
            let mut b = EntryStore::new();
            for e in shuffled { b.offer(e, 0, 0); }
            prop_assert_eq!(a.digest(), b.digest());
            let va: Vec<_> = a.iter().map(|(k, s)| (k.clone(), s.version)).collect();
            let vb: Vec<_> = b.iter().map(|(k, s)| (k.clone(), s.version)).collect();
            prop_assert_eq!(va, vb);
        }
    }

    #[test]
    fn anti_entropy_finds_both_directions() {
        let mut a = EntryStore::new();
        let mut b = EntryStore::new();
        a.offer(doc("x", 2, false, "new"), 0, 0);
        b.offer(doc("x", 1, false, "old"), 0, 0);
        b.offer(doc("y", 1, false, "only-b"), 0, 0);
        let (buckets, theirs) = b.versions_differing(&a.digest(), 100);
        let (push, pull) = a.compare(&buckets, &theirs);
        assert_eq!(
            push,
            vec![EntryKey::Doc(DocKey::new("VirtualMachine", "default", "x"))]
        );
        assert_eq!(
            pull,
            vec![EntryKey::Doc(DocKey::new("VirtualMachine", "default", "y"))]
        );
    }

    #[test]
    fn hot_entries_leave_after_their_transmissions() {
        let mut s = EntryStore::new();
        s.offer(doc("x", 1, false, "a"), 0, 2);
        assert_eq!(s.take_hot(10_000).len(), 1);
        assert_eq!(s.take_hot(10_000).len(), 1);
        assert!(!s.has_hot());
        assert_eq!(s.offer(doc("x", 1, false, "a"), 0, 2), Merge::Stale);
        assert!(!s.has_hot());
    }
}
