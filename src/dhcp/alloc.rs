//! Deterministic address allocation without a database (see
//! docs/ALGORITHMS.md, "DHCP addresses without a database").
//!
//! Every NIC without a fixed address has a home slot, `SHA-256("dhcp",
//! namespace/vm/nic) mod N` over the N addresses of the range. NICs are
//! placed in the order of their hash (ties broken by identity), each at its
//! home slot or, when taken, at the next free slot (linear probing,
//! wrapping); fixed addresses and the gateway/server are never handed out.
//! The result is a function of the *set* of identities only, never of the
//! order in which VMs appear or ask. The hash and the probing are
//! [`crate::slot`]'s, shared with console ports.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;

use crate::slot;

/// The 64-bit hash that orders identities and picks their home slot: the
/// identity hashed in the `dhcp` domain, so a NIC's slot is independent of
/// its VM's console slot.
pub fn identity_hash(identity: &str) -> u64 {
    slot::hash(b"dhcp\0", identity)
}

/// Allocate an address in `start..=end` to each identity, never one in
/// `reserved`. Identities left without a free address map to `None`.
pub fn allocate(
    start: Ipv4Addr,
    end: Ipv4Addr,
    reserved: &BTreeSet<Ipv4Addr>,
    identities: &BTreeSet<String>,
) -> BTreeMap<String, Option<Ipv4Addr>> {
    let (lo, hi) = (u32::from(start), u32::from(end));
    let mut out = BTreeMap::new();
    if lo > hi {
        for id in identities {
            out.insert(id.clone(), None);
        }
        return out;
    }
    let n = u64::from(hi - lo) + 1;
    let reserved_inside = reserved
        .iter()
        .filter(|a| (lo..=hi).contains(&u32::from(**a)))
        .count() as u64;
    let mut free = n - reserved_inside;
    let mut order: Vec<(u64, &String)> = identities
        .iter()
        .map(|id| (identity_hash(id), id))
        .collect();
    order.sort();
    let mut taken: HashSet<u64> = HashSet::new();
    for (h, id) in order {
        if free == 0 {
            out.insert(id.clone(), None);
            continue;
        }
        let addr = |s: u64| Ipv4Addr::from(lo + s as u32);
        // `free` > 0, so probing finds a slot.
        let got = slot::probe(slot::home(h, n), n, |s| {
            !taken.contains(&s) && !reserved.contains(&addr(s))
        });
        if let Some(s) = got {
            taken.insert(s);
            free -= 1;
        }
        out.insert(id.clone(), got.map(addr));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(n: usize) -> BTreeSet<String> {
        (0..n).map(|i| format!("default/vm{i}/eth0")).collect()
    }

    #[test]
    fn unique_inside_the_range_and_avoiding_reserved() {
        let start: Ipv4Addr = "10.0.0.10".parse().unwrap();
        let end: Ipv4Addr = "10.0.0.29".parse().unwrap();
        let reserved: BTreeSet<Ipv4Addr> = ["10.0.0.12".parse().unwrap()].into();
        let got = allocate(start, end, &reserved, &ids(19));
        let addrs: BTreeSet<Ipv4Addr> = got.values().map(|a| a.unwrap()).collect();
        assert_eq!(addrs.len(), 19, "collisions resolved: {got:?}");
        assert!(!addrs.contains(&"10.0.0.12".parse().unwrap()));
        assert!(addrs.iter().all(|a| (start..=end).contains(a)));
        // One more than fits: exactly one is left without an address.
        let got = allocate(start, end, &reserved, &ids(20));
        assert_eq!(got.values().filter(|a| a.is_none()).count(), 1);
    }

    #[test]
    fn a_collision_goes_to_the_next_free_slot() {
        // Two slots, so with three identities at least two share a home.
        let start: Ipv4Addr = "10.0.0.1".parse().unwrap();
        let end: Ipv4Addr = "10.0.0.2".parse().unwrap();
        let set = ids(2);
        let got = allocate(start, end, &BTreeSet::new(), &set);
        let a: BTreeSet<_> = got.values().collect();
        assert_eq!(a.len(), 2);
    }

    proptest! {
        /// The answer depends on the set only: the same identities given in
        /// any order get the same addresses, all distinct.
        #[test]
        fn same_answer_regardless_of_order(n in 1usize..60, seed in any::<u64>()) {
            let mut list: Vec<String> = ids(n).into_iter().collect();
            let mut s = seed | 1;
            for i in (1..list.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                list.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let shuffled: BTreeSet<String> = list.into_iter().collect();
            let start: Ipv4Addr = "10.1.0.0".parse().unwrap();
            let end: Ipv4Addr = "10.1.0.63".parse().unwrap();
            let a = allocate(start, end, &BTreeSet::new(), &ids(n));
            let b = allocate(start, end, &BTreeSet::new(), &shuffled);
            prop_assert_eq!(&a, &b);
            let unique: BTreeSet<_> = a.values().flatten().collect();
            prop_assert_eq!(unique.len(), n);
        }
    }
}
