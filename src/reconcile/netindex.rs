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

/// [`networks_of`], and for a VM that declares no NICs, those of its
/// spacesuit (`spec.nics` of the Spacesuit, which it inherits) as `store`
/// has it.
pub fn networks_in(record: &Record, store: &Store) -> Vec<ObjectKey> {
    let own = networks_of(record);
    let declares = record
        .object
        .pointer("/spec/nics")
        .and_then(|n| n.as_array())
        .is_some_and(|a| !a.is_empty());
    if declares || record.deleted {
        return own;
    }
    let Ok(spec) = serde_json::from_value::<crate::model::VirtualMachineSpec>(
        record.object.get("spec").cloned().unwrap_or_default(),
    ) else {
        return own;
    };
    let mut out: Vec<ObjectKey> = super::vm::vm_nics(store, &record.key.namespace, &spec)
        .into_iter()
        .map(|n| ObjectKey::new(Kind::Network, Some(&record.key.namespace), &n.network))
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
        let mut fresh = Inner {
            built: true,
            ..Default::default()
        };
        for record in store.list(Some(Kind::VirtualMachine)) {
            fresh.set(&record.key, networks_in(&record, store));
        }
        *self.lock() = fresh;
    }

    /// Index exactly these VM records.
    #[cfg(test)]
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
    #[cfg(test)]
    pub fn update(&self, vm: &ObjectKey, record: Option<&Record>) -> Vec<ObjectKey> {
        self.set_networks(vm, record.map(networks_of).unwrap_or_default())
    }

    /// [`VmsByNetwork::update`] with the NICs `vm` inherits from its
    /// spacesuit as `store` has it.
    pub fn update_in(
        &self,
        store: &Store,
        vm: &ObjectKey,
        record: Option<&Record>,
    ) -> Vec<ObjectKey> {
        let now = record.map(|r| networks_in(r, store)).unwrap_or_default();
        self.set_networks(vm, now)
    }

    fn set_networks(&self, vm: &ObjectKey, now: Vec<ObjectKey>) -> Vec<ObjectKey> {
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

    /// A VM that declares no NICs is on its spacesuit's networks, as the
    /// store has the spacesuit; one that declares NICs only on its own.
    #[test]
    fn a_vm_without_nics_is_on_its_spacesuits_networks() {
        let dir = std::env::temp_dir().join(format!("deorch-netindex-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&dir.join("s.redb")).unwrap();
        let parse = |yaml: &str| {
            let p = crate::manifest::parse_str(std::path::Path::new("t.yaml"), yaml);
            assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics);
            p.documents.into_iter().next().unwrap().object
        };
        let suit = |nets: &str| {
            parse(&format!(
                "apiVersion: deorch.dev/v1alpha1\nkind: Spacesuit\nmetadata: {{name: app, namespace: shop}}\nspec:\n  nics: {nets}\n"
            ))
        };
        let src = crate::store::SourceId("test".into());
        store
            .apply(
                &suit("[{name: nic0, network: lan}, {name: nic1, network: san}]"),
                &src,
            )
            .unwrap();
        let bare = parse("apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {name: a, namespace: shop}\nspec: {spacesuit: app}\n");
        let own = parse("apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {name: b, namespace: shop}\nspec:\n  spacesuit: app\n  nics: [{name: eth0, network: dmz}]\n");
        store.apply(&bare, &src).unwrap();
        store.apply(&own, &src).unwrap();
        let record = |name: &str| {
            store
                .get(&ObjectKey::new(Kind::VirtualMachine, Some("shop"), name))
                .unwrap()
        };
        assert_eq!(
            networks_in(&record("a"), &store),
            vec![net("lan"), net("san")]
        );
        assert_eq!(networks_in(&record("b"), &store), vec![net("dmz")]);
        let index = VmsByNetwork::default();
        index.rebuild(&store);
        assert_eq!(index.vms_on(&net("san")), Some(vec![record("a").key]));
        // The spacesuit's NICs change: the VM moves with them.
        store
            .apply(&suit("[{name: nic0, network: wan}]"), &src)
            .unwrap();
        let a = record("a");
        assert_eq!(
            index.update_in(&store, &a.key, Some(&a)),
            vec![net("lan"), net("san"), net("wan")]
        );
        assert_eq!(index.vms_on(&net("san")), Some(vec![]));
        assert_eq!(index.vms_on(&net("wan")), Some(vec![a.key]));
        let _ = std::fs::remove_dir_all(&dir);
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
