//! What the server remembers between packets: addresses it ACKed to a VM
//! (until their lease ends) and addresses a VM declined (quarantined).
//!
//! Addresses come from the manifests (`alloc.rs`), but the set of VMs
//! changes while leases run: adding a VM can move another VM's computed
//! address onto one a running VM still holds. So the address a VM is
//! offered is its computed one *adjusted by what is live*:
//!
//! - a dynamic VM holding a live lease keeps its leased address (it is
//!   pinned there until the lease ends or the VM is told otherwise);
//! - an address held by a live lease, or declined (quarantined), is never
//!   offered to another VM: a VM whose computed address is one of those
//!   moves to the next free slot from its home slot, the same probing as
//!   `alloc.rs`;
//! - a VM with a fixed address held by another VM's live lease gets no
//!   answer until that lease ends (the table says why).
//!
//! [`adjust`] is a pure function of (table, leases, now); the server calls
//! it whenever the table or the leases change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{alloc, format_mac, Mac, Table};
use crate::slot;

/// How long a declined address stays out of use.
pub const QUARANTINE_MS: u64 = 10 * 60 * 1000;

/// An address ACKed to a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The VM NIC's MAC.
    pub mac: Mac,
    /// `namespace/vm/nic`.
    pub identity: String,
    /// When the lease ends, in ms since the epoch.
    pub until_ms: u64,
}

/// Live leases and quarantined addresses of one server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Stored")]
pub struct Leases {
    held: BTreeMap<Ipv4Addr, Held>,
    quarantined: BTreeMap<Ipv4Addr, u64>,
    /// The address each identity holds (one per NIC), so that binding and
    /// looking up a lease do not walk every lease (an ACK did, twice).
    #[serde(skip)]
    by_identity: HashMap<String, Ipv4Addr>,
}

/// [`Leases`] as written to the lease file.
#[derive(Deserialize)]
struct Stored {
    held: BTreeMap<Ipv4Addr, Held>,
    quarantined: BTreeMap<Ipv4Addr, u64>,
}

impl From<Stored> for Leases {
    fn from(s: Stored) -> Leases {
        let mut l = Leases {
            held: s.held,
            quarantined: s.quarantined,
            by_identity: HashMap::new(),
        };
        l.reindex();
        l
    }
}

impl Leases {
    /// Rebuild the identity index from `held` (the lowest address of an
    /// identity wins, as a walk in address order would find).
    fn reindex(&mut self) {
        self.by_identity.clear();
        for (a, h) in &self.held {
            self.by_identity.entry(h.identity.clone()).or_insert(*a);
        }
    }

    /// Take `addr` out of `held`, and out of the index.
    fn unhold(&mut self, addr: Ipv4Addr) -> Option<Held> {
        let h = self.held.remove(&addr)?;
        if self.by_identity.get(&h.identity) == Some(&addr) {
            self.by_identity.remove(&h.identity);
        }
        Some(h)
    }

    /// Record that `addr` was ACKed to `identity` until `until_ms`; any
    /// other lease of that identity ends (a NIC holds one address).
    pub fn bind(&mut self, addr: Ipv4Addr, mac: Mac, identity: &str, until_ms: u64) {
        if let Some(&old) = self.by_identity.get(identity) {
            self.unhold(old);
        }
        self.unhold(addr);
        self.quarantined.remove(&addr);
        self.held.insert(
            addr,
            Held {
                mac,
                identity: identity.to_string(),
                until_ms,
            },
        );
        self.by_identity.insert(identity.to_string(), addr);
    }

    /// The VM with `mac` gave `addr` back. True when a lease ended.
    pub fn release(&mut self, addr: Ipv4Addr, mac: &Mac) -> bool {
        if self.held.get(&addr).is_some_and(|h| &h.mac == mac) {
            self.unhold(addr);
            return true;
        }
        false
    }

    /// A VM found `addr` in use by someone else: keep it out of use until
    /// `until_ms`.
    pub fn quarantine(&mut self, addr: Ipv4Addr, until_ms: u64) {
        self.unhold(addr);
        self.quarantined.insert(addr, until_ms);
    }

    /// Forget what ended before `now_ms`. True when anything did.
    pub fn expire(&mut self, now_ms: u64) -> bool {
        let before = (self.held.len(), self.quarantined.len());
        self.held.retain(|_, h| h.until_ms > now_ms);
        self.quarantined.retain(|_, until| *until > now_ms);
        let changed = before != (self.held.len(), self.quarantined.len());
        if changed {
            self.reindex();
        }
        changed
    }

    /// Who holds `addr` now.
    pub fn holder(&self, addr: Ipv4Addr, now_ms: u64) -> Option<&Held> {
        self.held.get(&addr).filter(|h| h.until_ms > now_ms)
    }

    /// The live lease of `identity`.
    pub fn of(&self, identity: &str, now_ms: u64) -> Option<Ipv4Addr> {
        let a = *self.by_identity.get(identity)?;
        self.holder(a, now_ms).map(|_| a)
    }

    /// Whether `addr` was declined and is still out of use.
    pub fn is_quarantined(&self, addr: Ipv4Addr, now_ms: u64) -> bool {
        self.quarantined.get(&addr).is_some_and(|u| *u > now_ms)
    }

    /// Whether `addr` may be handed to `identity`: neither quarantined
    /// nor held by a live lease of another NIC.
    pub fn free_for(&self, addr: Ipv4Addr, identity: &str, now_ms: u64) -> bool {
        !self.is_quarantined(addr, now_ms)
            && self
                .holder(addr, now_ms)
                .is_none_or(|h| h.identity == identity)
    }

    /// Number of live leases.
    pub fn live(&self, now_ms: u64) -> usize {
        self.held.values().filter(|h| h.until_ms > now_ms).count()
    }
}

/// The range and the whole network's allocation a table was built from:
/// what [`adjust`] needs to move a VM without landing on another's
/// address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// First address of the range.
    pub start: Ipv4Addr,
    /// Last address of the range.
    pub end: Ipv4Addr,
    /// Never handed out: server, gateway, network, broadcast, fixed
    /// addresses.
    pub reserved: BTreeSet<Ipv4Addr>,
    /// Every NIC of the network (this node's or not) and its computed
    /// address.
    pub assigned: BTreeMap<String, Option<Ipv4Addr>>,
    /// NICs whose address is computed (not fixed, not relayed).
    pub dynamic: BTreeSet<String>,
}

impl Pool {
    /// Whether `addr` is in the range and reserved for nobody.
    pub fn in_range(&self, addr: Ipv4Addr) -> bool {
        (self.start..=self.end).contains(&addr) && !self.reserved.contains(&addr)
    }
}

/// The table to serve: `base` adjusted by what `leases` hold at `now_ms`.
pub fn adjust(base: &Table, leases: &Leases, now_ms: u64) -> Table {
    let mut t = base.clone();
    let Some(pool) = &base.pool else {
        // A table without a pool (built by hand): no VM can be moved, but
        // none is offered an address another NIC holds.
        for c in t.clients.values_mut() {
            if let Some(a) = c.address {
                if c.upstream.is_none() && !leases.free_for(a, &c.identity, now_ms) {
                    c.address = None;
                }
            }
        }
        return t;
    };
    let local: BTreeSet<String> = t.clients.values().map(|c| c.identity.clone()).collect();
    // Addresses in use whatever happens here: reserved ones, other nodes'
    // NICs, live leases and quarantined addresses.
    let mut used: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for (id, a) in &pool.assigned {
        if let (Some(a), false) = (a, local.contains(id)) {
            used.insert(*a, id.clone());
        }
    }
    for (a, h) in &leases.held {
        if h.until_ms > now_ms {
            used.insert(*a, h.identity.clone());
        }
    }
    for (a, until) in &leases.quarantined {
        if *until > now_ms {
            used.insert(*a, "(declined)".into());
        }
    }
    let mut order: Vec<(u64, Mac)> = t
        .clients
        .iter()
        .filter(|(_, c)| c.upstream.is_none())
        .map(|(m, c)| (alloc::identity_hash(&c.identity), *m))
        .collect();
    order.sort();
    // First, dynamic NICs holding a live lease keep it; every other NIC
    // keeps its computed address unless something above uses it.
    let mut movers = Vec::new();
    for (h, mac) in &order {
        let c = t.clients.get_mut(mac).expect("listed");
        let dynamic = pool.dynamic.contains(&c.identity);
        if let Some(l) = leases.of(&c.identity, now_ms) {
            if dynamic && pool.in_range(l) && leases.free_for(l, &c.identity, now_ms) {
                c.address = Some(l);
                continue;
            }
        }
        match c.address {
            Some(a) if used.get(&a).is_some_and(|who| *who != c.identity) => {
                if dynamic {
                    movers.push((*h, *mac, a));
                } else {
                    t.warnings.push(format!(
                        "{}: fixed address {a} is held by {}; it gets no lease until that ends",
                        c.identity, used[&a]
                    ));
                    c.address = None;
                }
            }
            Some(a) => {
                used.insert(a, c.identity.clone());
            }
            None => {}
        }
    }
    let (lo, hi) = (u32::from(pool.start), u32::from(pool.end));
    let n = u64::from(hi.saturating_sub(lo)) + 1;
    for (h, mac, was) in movers {
        let c = t.clients.get_mut(&mac).expect("listed");
        let addr = |s: u64| Ipv4Addr::from(lo + s as u32);
        let got = (lo <= hi)
            .then(|| {
                slot::probe(slot::home(h, n), n, |s| {
                    !pool.reserved.contains(&addr(s)) && !used.contains_key(&addr(s))
                })
            })
            .flatten()
            .map(addr);
        t.warnings.push(match got {
            Some(a) => format!(
                "{}: {was} is held by {}; offered {a} instead",
                c.identity, used[&was]
            ),
            None => format!(
                "{}: {was} is held by {} and no other address is free",
                c.identity, used[&was]
            ),
        });
        if let Some(a) = got {
            used.insert(a, c.identity.clone());
        }
        c.address = got;
    }
    t
}

/// One line per live lease, for logs and the state file.
pub fn describe(leases: &Leases, now_ms: u64) -> Vec<String> {
    leases
        .held
        .iter()
        .filter(|(_, h)| h.until_ms > now_ms)
        .map(|(a, h)| format!("{a} {} {}", format_mac(&h.mac), h.identity))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const M1: Mac = [2, 0, 0, 0, 0, 1];
    const M2: Mac = [2, 0, 0, 0, 0, 2];

    fn a(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, n)
    }

    /// The identity index agrees with a walk over the leases through
    /// rebinding, takeover, release, quarantine, expiry and a reload.
    #[test]
    fn the_identity_index_follows_every_change() {
        let walk = |l: &Leases, id: &str, now: u64| {
            l.held
                .iter()
                .find(|(_, h)| h.identity == id && h.until_ms > now)
                .map(|(a, _)| *a)
        };
        let check = |l: &Leases, now: u64| {
            for id in ["x", "y"] {
                assert_eq!(l.of(id, now), walk(l, id, now), "{id} in {l:?}");
            }
        };
        let mut l = Leases::default();
        l.bind(a(1), M1, "x", 100);
        check(&l, 0);
        l.bind(a(2), M1, "x", 100); // x moves: a(1) is free again
        assert_eq!(l.holder(a(1), 0), None);
        check(&l, 0);
        l.bind(a(2), M2, "y", 200); // y takes x's address over
        assert_eq!(l.of("x", 0), None);
        check(&l, 0);
        l.bind(a(3), M1, "x", 100);
        l.quarantine(a(2), 500);
        check(&l, 0);
        assert!(!l.release(a(3), &M2), "only the holder releases");
        assert!(l.release(a(3), &M1));
        check(&l, 0);
        l.bind(a(4), M1, "x", 100);
        let reloaded: Leases = serde_json::from_str(&serde_json::to_string(&l).unwrap()).unwrap();
        assert_eq!(reloaded, l);
        assert!(l.expire(150));
        check(&l, 150);
        assert_eq!(l.of("x", 150), None);
    }
}
