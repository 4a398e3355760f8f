//! `spec.replicaPolicy` as a source: every VirtualMachine with a replica
//! policy gets a Replica every `interval`, and the newest `keep` are kept.
//!
//! The schedule reads the VMs from the store and *declares* the Replica
//! objects that should exist now, through admission like any other source
//! ([`Trust::Local`]: the schedule is the node's own): one declarative
//! batch per VM with its own source id, [`source_of`], holding the kept
//! replicas and, when one is due, a new one; admission deletes, in the
//! same transaction, the replicas this source declared before and no
//! longer does (the oldest beyond `keep`). The reconcilers then take and
//! destroy them like any Replica.
//!
//! Only VMs this node runs are scheduled (their status names this node
//! and they are not blocked `Pending`), as when the VM reconciler took
//! them: a VM another node runs is that node's to replicate.
//!
//! Replicas are named `VM-auto-<unix ms>` (the name is cut so that it
//! stays a DNS label) and labelled [`POLICY_LABEL`]`: VM`, so they show in
//! `get` and survive restarts: the time of the newest is read back from
//! its name. A VM whose policy is removed, or that is deleted, keeps the
//! replicas it had.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tracing::warn;

use super::Source;
use crate::admission::{Admission, Batch, Doc, Trust};
use crate::clock::now_ms;
use crate::model::{AnyObject, Kind, ObjectKey, VirtualMachineSpec};
use crate::store::{Record, SourceId, Store};

/// Label on the replicas a VM's `replicaPolicy` takes: the VM's name.
pub const POLICY_LABEL: &str = "deorch.dev/replica-policy-of";

/// The schedule of every VM's `replicaPolicy`.
#[derive(Debug, Clone)]
pub struct ReplicaSchedule {
    /// Longest sleep between two looks at the VMs (a VM change wakes the
    /// schedule at once; a replica falling due wakes it on time).
    pub tick: Duration,
    /// This node's name: only VMs whose status says they run here are
    /// scheduled. `None`: every VM (a node without an engine, tests).
    pub node: Option<String>,
}

impl ReplicaSchedule {
    /// The schedule of the VMs node `node` runs.
    pub fn new(node: &str) -> ReplicaSchedule {
        ReplicaSchedule {
            tick: Duration::from_secs(1),
            node: Some(node.to_string()),
        }
    }
}

/// The source id of one VM's scheduled replicas.
pub fn source_of(vm: &ObjectKey) -> SourceId {
    SourceId(format!("schedule:replica/{}/{}", vm.namespace, vm.name))
}

impl Source for ReplicaSchedule {
    fn name(&self) -> String {
        "schedule:replica".into()
    }

    fn run(
        self: Box<Self>,
        admission: Arc<Admission>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let mut changes = admission.store().subscribe();
            // The VMs with a replica policy: a look at them is what each
            // tick costs, not a look at every VM (40,000 VMs decoded every
            // second kept a core busy for ever).
            let mut policies: Option<BTreeSet<ObjectKey>> = None;
            let mut touched: BTreeSet<ObjectKey> = BTreeSet::new();
            loop {
                let next = {
                    let admission = admission.clone();
                    let me = self.clone();
                    let (known, seen) = (policies.take(), std::mem::take(&mut touched));
                    let (next, known) = tokio::task::spawn_blocking(move || {
                        let store = admission.store();
                        let known = match known {
                            None => with_policy(store.list(Some(Kind::VirtualMachine))),
                            Some(mut known) => {
                                for vm in seen {
                                    match store.get(&vm).filter(has_policy) {
                                        Some(_) => known.insert(vm),
                                        None => known.remove(&vm),
                                    };
                                }
                                known
                            }
                        };
                        let vms = known.iter().filter_map(|k| store.get(k)).collect();
                        (me.declare_due_of(&admission, now_ms(), vms), known)
                    })
                    .await
                    .unwrap_or((None, BTreeSet::new()));
                    policies = Some(known);
                    next
                };
                let sleep = next
                    .map(|due| Duration::from_millis(due.saturating_sub(now_ms())))
                    .unwrap_or(self.tick)
                    .clamp(Duration::from_millis(20), self.tick);
                // Wait for the next due time or a VM's spec change. Other
                // changes (every status write of every VM) are passed over
                // here: looking at all VMs again for each of them made
                // 10,000 VMs cost a core for as long as they were
                // reconciled.
                let wake = tokio::time::sleep(sleep);
                tokio::pin!(wake);
                let mut take = |c: crate::store::Change| {
                    if c.key.kind == Kind::VirtualMachine && !c.status_only {
                        touched.insert(c.key);
                        true
                    } else {
                        false
                    }
                };
                loop {
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = &mut wake => break,
                        c = changes.recv() => match c {
                            Ok(c) => if take(c) {
                                break;
                            },
                            Err(broadcast::error::RecvError::Lagged(_)) => {
                                policies = None;
                                break;
                            }
                            Err(broadcast::error::RecvError::Closed) => return,
                        },
                    }
                }
                // A batch of many VMs is one look, not one per VM.
                loop {
                    match changes.try_recv() {
                        Ok(c) => {
                            take(c);
                        }
                        Err(broadcast::error::TryRecvError::Lagged(_)) => policies = None,
                        Err(_) => break,
                    }
                }
            }
        })
    }
}

/// Whether a VM record has a replica policy.
fn has_policy(r: &Record) -> bool {
    !r.deleted
        && r.object
            .pointer("/spec/replicaPolicy")
            .is_some_and(|p| !p.is_null())
}

/// The keys of the VMs among `records` with a replica policy.
fn with_policy(records: Vec<Record>) -> BTreeSet<ObjectKey> {
    records
        .into_iter()
        .filter(has_policy)
        .map(|r| r.key)
        .collect()
}

impl ReplicaSchedule {
    /// Declare what every VM's policy wants at `now` (unix ms). Returns when
    /// the next replica falls due, if any policy exists.
    pub fn declare_due(&self, admission: &Admission, now: u64) -> Option<u64> {
        let vms = admission.store().list(Some(Kind::VirtualMachine));
        self.declare_due_of(admission, now, vms)
    }

    /// [`Self::declare_due`] for these VM records only.
    fn declare_due_of(&self, admission: &Admission, now: u64, vms: Vec<Record>) -> Option<u64> {
        let store = admission.store();
        let mut next: Option<u64> = None;
        for record in vms {
            if let Some(me) = &self.node {
                let status = record.status.as_ref();
                let here = status.and_then(|s| s["node"].as_str()) == Some(me.as_str());
                let blocked = status.and_then(|s| s["phase"].as_str()) == Some("Pending");
                if !here || blocked {
                    continue;
                }
            }
            let Ok(spec) =
                serde_json::from_value::<VirtualMachineSpec>(record.object["spec"].clone())
            else {
                continue;
            };
            let Some(policy) = spec.replica_policy else {
                continue;
            };
            let interval = policy.interval.0.as_millis() as u64;
            let vm = &record.key;
            let mut autos = scheduled(store, vm);
            let due = autos
                .last()
                .is_none_or(|(t, _)| now.saturating_sub(*t) >= interval);
            let source = source_of(vm);
            let mut batch = Batch::new(source.clone(), Trust::Local);
            if due && policy.keep > 0 {
                autos.push((now, new_replica(vm, now)));
            }
            let excess = autos.len().saturating_sub(policy.keep as usize);
            for (_, object) in autos.into_iter().skip(excess) {
                batch.docs.push(Doc {
                    object,
                    at: source.0.clone(),
                });
            }
            let newest = batch
                .docs
                .iter()
                .filter_map(|d| taken_at(&ObjectKey::of(&d.object).name))
                .max();
            if let Some(t) = newest {
                let due_at = t + interval;
                next = Some(next.map_or(due_at, |n| n.min(due_at)));
            }
            // Replicas rotated out by `keep` go at once: retaining them
            // would keep more than the policy says.
            let mut batch = batch.declarative(BTreeSet::new());
            batch.purge_dropped = true;
            match admission.admit(batch) {
                Ok(out) if !out.committed => {
                    warn!(vm = %vm, problems = ?out.problems(), "replica schedule refused")
                }
                Ok(_) => {}
                Err(e) => warn!(vm = %vm, error = %e, "replica schedule: store write failed"),
            }
        }
        next
    }
}

/// When a scheduled replica was taken, from its name.
fn taken_at(name: &str) -> Option<u64> {
    name.rsplit_once("-auto-")?.1.parse().ok()
}

/// The live scheduled replicas of `vm`, oldest first, as objects.
fn scheduled(store: &Store, vm: &ObjectKey) -> Vec<(u64, AnyObject)> {
    let mut autos: Vec<(u64, AnyObject)> = store
        .list(Some(Kind::Replica))
        .into_iter()
        .filter(|r| {
            r.key.namespace == vm.namespace
                && r.object["metadata"]["labels"][POLICY_LABEL] == vm.name.as_str()
        })
        .filter_map(|r: Record| {
            Some((
                taken_at(&r.key.name)?,
                AnyObject::from_value(r.object).ok()?,
            ))
        })
        .collect();
    autos.sort_by_key(|a| a.0);
    autos
}

/// The Replica a policy takes of `vm` at `now`.
fn new_replica(vm: &ObjectKey, now: u64) -> AnyObject {
    let base: String = vm.name.chars().take(63 - 6 - 13).collect();
    let name = format!("{}-auto-{now}", base.trim_end_matches('-'));
    let object = serde_json::json!({
        "apiVersion": crate::model::API_VERSION,
        "kind": "Replica",
        "metadata": {
            "name": name,
            "namespace": vm.namespace,
            "labels": {POLICY_LABEL: vm.name},
        },
        "spec": {"virtualMachine": {"name": vm.name}},
    });
    AnyObject::from_value(object).expect("a Replica of a valid VM name is valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::AdmissionConfig;
    use crate::store::Store;

    fn vm(name: &str, policy: Option<(&str, u32)>) -> AnyObject {
        let mut v = serde_json::json!({
            "apiVersion": crate::model::API_VERSION,
            "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"cpu": 1, "memory": "64Mi"},
        });
        if let Some((interval, keep)) = policy {
            v["spec"]["replicaPolicy"] = serde_json::json!({"interval": interval, "keep": keep});
        }
        AnyObject::from_value(v).unwrap()
    }

    fn replicas(store: &Store) -> Vec<String> {
        store
            .list(Some(Kind::Replica))
            .into_iter()
            .map(|r| r.key.name)
            .collect()
    }

    #[test]
    fn replicas_are_declared_on_schedule_and_only_the_newest_are_kept() {
        let dir = std::env::temp_dir().join(format!("deorch-sched-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Arc::new(Store::open(&dir.join("s.redb")).unwrap());
        let admission = Admission::new(store.clone(), AdmissionConfig::default());
        store
            .apply(&vm("db", Some(("1m", 2))), &SourceId("api".into()))
            .unwrap();
        store
            .apply(&vm("web", None), &SourceId("api".into()))
            .unwrap();
        let t0 = 1_000_000_000_000u64;
        let sched = ReplicaSchedule {
            tick: Duration::from_secs(1),
            node: None,
        };
        assert_eq!(sched.declare_due(&admission, t0), Some(t0 + 60_000));
        assert_eq!(replicas(&store), vec![format!("db-auto-{t0}")]);
        let r = store
            .get(&ObjectKey::new(
                Kind::Replica,
                None,
                &format!("db-auto-{t0}"),
            ))
            .unwrap();
        assert_eq!(r.object["metadata"]["labels"][POLICY_LABEL], "db");
        assert_eq!(r.object["spec"]["virtualMachine"]["name"], "db");
        assert_eq!(
            r.source,
            source_of(&ObjectKey::new(Kind::VirtualMachine, None, "db"))
        );
        // Not due yet: nothing new, nothing rewritten.
        assert_eq!(
            sched.declare_due(&admission, t0 + 30_000),
            Some(t0 + 60_000)
        );
        assert_eq!(replicas(&store).len(), 1);
        assert_eq!(store.get(&r.key).unwrap().generation, 1);
        // Due twice more: keep 2, the oldest goes, in the same batch.
        sched.declare_due(&admission, t0 + 60_000);
        sched.declare_due(&admission, t0 + 120_000);
        assert_eq!(
            replicas(&store),
            vec![
                format!("db-auto-{}", t0 + 60_000),
                format!("db-auto-{}", t0 + 120_000)
            ]
        );
        let old = store
            .get(&ObjectKey::new(
                Kind::Replica,
                None,
                &format!("db-auto-{t0}"),
            ))
            .unwrap();
        assert!(old.deleted);
        // A long name is cut to stay a DNS label.
        let long = "a".repeat(60);
        store
            .apply(&vm(&long, Some(("1m", 1))), &SourceId("api".into()))
            .unwrap();
        sched.declare_due(&admission, t0 + 130_000);
        assert!(replicas(&store)
            .iter()
            .any(|n| n.len() <= 63 && n.ends_with(&format!("-auto-{}", t0 + 130_000))));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_vms_this_node_runs_and_not_blocked_are_scheduled() {
        let dir = std::env::temp_dir().join(format!("deorch-sched-mine-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Arc::new(Store::open(&dir.join("s.redb")).unwrap());
        let admission = Admission::new(store.clone(), AdmissionConfig::default());
        let sched = ReplicaSchedule::new("n1");
        for name in ["here", "there", "blocked", "new"] {
            store
                .apply(&vm(name, Some(("1m", 1))), &SourceId("api".into()))
                .unwrap();
        }
        let key = |n: &str| ObjectKey::new(Kind::VirtualMachine, None, n);
        let st = |node: &str, phase: &str| serde_json::json!({"node": node, "phase": phase});
        store.set_status(&key("here"), st("n1", "Running")).unwrap();
        store
            .set_status(&key("there"), st("n2", "Running"))
            .unwrap();
        store
            .set_status(&key("blocked"), st("n1", "Pending"))
            .unwrap();
        sched.declare_due(&admission, 1_000);
        assert_eq!(replicas(&store), vec!["here-auto-1000".to_string()]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
