//! Console ports without a database.
//!
//! A VM's VNC port is derived from its identity: its *home* slot is
//! `SHA-256(namespace/name) mod size` inside the configured range, and on a
//! collision it takes the next free slot (linear probing, wrapping). The
//! port a VM got is kept in its own runtime directory for as long as the VM
//! exists on the node, so it never changes: not when the node restarts, not
//! when other VMs come and go (a VM never moves to a slot that became free).
//! The websocket port for noVNC sits at the same offset in a second range.
//! The hash and the probing are [`crate::slot`]'s, shared with DHCP
//! addresses. See docs/ALGORITHMS.md.

use std::collections::BTreeSet;

use crate::slot;

/// A range of VNC ports and its parallel websocket range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First VNC port (≥ 5900: QEMU takes a display number).
    pub vnc_base: u16,
    /// First websocket port.
    pub ws_base: u16,
    /// Number of slots.
    pub size: u16,
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange {
            vnc_base: 5900,
            ws_base: 6900,
            size: 1000,
        }
    }
}

impl PortRange {
    /// The websocket port paired with a VNC port.
    pub fn websocket(&self, vnc: u16) -> u16 {
        self.ws_base + (vnc - self.vnc_base)
    }

    /// The SPICE port paired with a VNC port: the same offset in a third
    /// range that starts as far after the websocket range as that one
    /// starts after the VNC range (default 7900-8899).
    pub fn spice(&self, vnc: u16) -> Option<u16> {
        self.websocket(vnc)
            .checked_add(self.ws_base.checked_sub(self.vnc_base)?)
    }
}

/// The home slot of a VM: its identity hashed with no domain prefix.
pub fn home(id: &str, range: PortRange) -> u16 {
    slot::home(slot::hash(b"", id), u64::from(range.size)) as u16
}

/// The VNC port for `id`, given the ports other VMs on this node hold;
/// `None` when the range is full.
pub fn assign(id: &str, range: PortRange, taken: &BTreeSet<u16>) -> Option<u16> {
    let port = |s: u64| range.vnc_base + s as u16;
    slot::probe(u64::from(home(id, range)), u64::from(range.size), |s| {
        !taken.contains(&port(s))
    })
    .map(port)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Random create/delete sequences on one node: no two VMs ever share
        /// a port, and a VM's port never changes while it exists.
        #[test]
        fn ports_are_unique_and_stable(ops in proptest::collection::vec((any::<bool>(), 0u8..40), 1..300)) {
            let range = PortRange { vnc_base: 5900, ws_base: 6900, size: 32 };
            let mut held: BTreeMap<String, u16> = BTreeMap::new();
            for (create, n) in ops {
                let id = format!("default/vm-{n}");
                if create {
                    if held.contains_key(&id) {
                        continue;
                    }
                    let taken: BTreeSet<u16> = held.values().copied().collect();
                    match assign(&id, range, &taken) {
                        Some(p) => {
                            prop_assert!(!taken.contains(&p));
                            prop_assert!((5900..5932).contains(&p));
                            held.insert(id, p);
                        }
                        None => prop_assert_eq!(taken.len(), 32, "refused only when full"),
                    }
                } else {
                    held.remove(&id);
                }
                let ports: BTreeSet<u16> = held.values().copied().collect();
                prop_assert_eq!(ports.len(), held.len(), "two VMs share a port");
            }
        }
    }

    #[test]
    fn an_empty_node_gives_the_home_port_and_collisions_probe_onwards() {
        let range = PortRange::default();
        let p = assign("default/tiny", range, &BTreeSet::new()).unwrap();
        assert_eq!(p, range.vnc_base + home("default/tiny", range));
        let q = assign("default/tiny", range, &[p].into()).unwrap();
        assert_eq!(
            q,
            if p + 1 == range.vnc_base + range.size {
                range.vnc_base
            } else {
                p + 1
            }
        );
        assert_eq!(range.websocket(5907), 6907);
        assert_eq!(range.spice(5907), Some(7907));
    }
}

/// A console a ticket unlocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ticket {
    /// The VNC server of native clients (and of the plain websocket).
    Vnc,
    /// The browsers' VNC server, its websocket over TLS
    /// ([`super::cmdline::WEB_VNC`]).
    WebVnc,
    /// SPICE.
    Spice,
}

/// Set one-time password `password` on each of `what` over QMP, each
/// expiring `valid_for` from now (relative, so steps of the host clock do
/// not matter; at least a second).
pub async fn set_tickets(
    qmp: &mut super::qmp::Qmp,
    password: &str,
    valid_for: std::time::Duration,
    what: &[Ticket],
) -> Result<(), String> {
    let time = format!("+{}", valid_for.as_secs().max(1));
    for t in what {
        let (protocol, display) = match t {
            Ticket::Vnc => ("vnc", None),
            Ticket::WebVnc => ("vnc", Some(super::cmdline::WEB_VNC)),
            Ticket::Spice => ("spice", None),
        };
        let mut set = serde_json::json!({"protocol": protocol, "password": password});
        let mut expire = serde_json::json!({"protocol": protocol, "time": time});
        if let Some(d) = display {
            set["display"] = d.into();
            expire["display"] = d.into();
        }
        qmp.execute("set_password", Some(set))
            .await
            .map_err(|e| format!("set_password {protocol} {}: {e}", display.unwrap_or("")))?;
        qmp.execute("expire_password", Some(expire))
            .await
            .map_err(|e| format!("expire_password {protocol} {}: {e}", display.unwrap_or("")))?;
    }
    Ok(())
}
