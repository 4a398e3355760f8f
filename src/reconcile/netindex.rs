//! Which VMs have a NIC on which Network, kept by the engine as VMs change.
//!
//! A Network's reconcile needs its VMs (the DHCP table) and a VM's change
//! needs its Networks looked at again. Without this index each of those
//! went through every object of the other kind: 10,000 Networks beside
//! 1,000 VMs cost a core for minutes. With it, a VM's change touches the
//! Networks it was and is on, and a table is built from the VMs on it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use crate::model::{Kind, ObjectKey};
use crate::store::{Record, Store};

/// VMs by network and networks by VM.
#[derive(Debug, Default)]
pub struct VmsByNetwork {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// False until the first [`VmsByNetwork::rebuild`]: readers then scan.
    built: bool,
    by_vm: HashMap<ObjectKey, Vec<ObjectKey>>,
    by_net: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
}

/// The Networks a VM record's NICs name (its namespace), none for a
/// tombstone.
pub fn networks_of(record: &Record) -> Vec<ObjectKey> {
    if record.deleted {
        return Vec::new();
    }
    let mut out: Vec<ObjectKey> = record
        .object
        .pointer("/spec/nics")
        .and_then(|n| n.as_array())
        .into_iter()
        .flatten()
        .filter_map(|nic| nic.get("network").and_then(|n| n.as_str()))
        .map(|name| ObjectKey::new(Kind::Network, Some(&record.key.namespace), name))
        .collect();
    out.sort();
    out.dedup();
    out
}

impl VmsByNetwork {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Index every VM of `store` again (start-up, missed changes).
    pub fn rebuild(&self, store: &Store) {
        self.rebuild_from(store.list(Some(Kind::VirtualMachine)));
    }

    /// Index exactly these VM records.
    fn rebuild_from(&self, vms: Vec<Record>) {
        let mut fresh = Inner {
            built: true,
            ..Default::default()
        };
        for record in vms {
            fresh.set(&record.key, networks_of(&record));
        }
        *self.lock() = fresh;
    }

    /// Take `vm`'s current record (`None`: gone) into the index; returns
    /// the Networks it was or now is on (whose tables change).
    pub fn update(&self, vm: &ObjectKey, record: Option<&Record>) -> Vec<ObjectKey> {
        let now = record.map(networks_of).unwrap_or_default();
        let mut inner = self.lock();
        let mut touched = inner.set(vm, now.clone());
        touched.extend(now);
        touched.sort();
        touched.dedup();
        touched
    }

    /// The Networks `vm` is on, as last indexed.
    pub fn networks_of_vm(&self, vm: &ObjectKey) -> Vec<ObjectKey> {
        self.lock().by_vm.get(vm).cloned().unwrap_or_default()
    }

    /// The VMs with a NIC on `network`; `None` before the first rebuild.
    pub fn vms_on(&self, network: &ObjectKey) -> Option<Vec<ObjectKey>> {
        let inner = self.lock();
        inner.built.then(|| {
            inner
                .by_net
                .get(network)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default()
        })
    }
}

impl Inner {
    /// Set `vm`'s networks; returns its previous ones.
    fn set(&mut self, vm: &ObjectKey, networks: Vec<ObjectKey>) -> Vec<ObjectKey> {
        let old = self.by_vm.remove(vm).unwrap_or_default();
        for n in &old {
            if let Some(set) = self.by_net.get_mut(n) {
                set.remove(vm);
                if set.is_empty() {
                    self.by_net.remove(n);
                }
            }
        }
        for n in &networks {
            self.by_net.entry(n.clone()).or_default().insert(vm.clone());
        }
        if !networks.is_empty() {
            self.by_vm.insert(vm.clone(), networks);
        }
        old
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vm(name: &str, nets: &[&str], deleted: bool) -> Record {
        let nics: Vec<_> = nets
            .iter()
            .enumerate()
            .map(|(i, n)| json!({"name": format!("eth{i}"), "network": n}))
            .collect();
        Record {
            key: ObjectKey::new(Kind::VirtualMachine, Some("shop"), name),
            generation: 1,
            source: crate::store::SourceId("test".into()),
            hash: String::new(),
            object: json!({"spec": {"nics": nics}}),
            status: None,
            deleted,
            updated_ms: 0,
        }
    }

    fn net(name: &str) -> ObjectKey {
        ObjectKey::new(Kind::Network, Some("shop"), name)
    }

    #[test]
    fn a_vm_touches_the_networks_it_was_and_is_on() {
        let index = VmsByNetwork::default();
        index.rebuild_from(Vec::new());
        let a = vm("a", &["lan", "san", "lan"], false);
        assert_eq!(index.update(&a.key, Some(&a)), vec![net("lan"), net("san")]);
        assert_eq!(index.vms_on(&net("lan")), Some(vec![a.key.clone()]));
        // Moved from san to dmz: san's and dmz's tables change, lan's too.
        let a2 = vm("a", &["lan", "dmz"], false);
        assert_eq!(
            index.update(&a2.key, Some(&a2)),
            vec![net("dmz"), net("lan"), net("san")]
        );
        assert_eq!(index.vms_on(&net("san")), Some(vec![]));
        // Deleted: off every network.
        let gone = vm("a", &["lan", "dmz"], true);
        assert_eq!(
            index.update(&gone.key, Some(&gone)),
            vec![net("dmz"), net("lan")]
        );
        assert_eq!(index.vms_on(&net("lan")), Some(vec![]));
        assert!(index.lock().by_vm.is_empty() && index.lock().by_net.is_empty());
    }

    #[test]
    fn before_the_first_rebuild_readers_are_told_to_scan() {
        assert_eq!(VmsByNetwork::default().vms_on(&net("lan")), None);
    }
}
