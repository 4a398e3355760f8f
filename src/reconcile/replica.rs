//! Replica: every disk of the VM captured as a volume, all at one instant
//! (`Storage::capture`: on ZFS the disks' snapshots only, each volume's
//! clone made when it is first used).
//! A partial capture (a crash midway) is thrown away and taken again as a
//! whole; deleting the replica removes every volume it made.
//!
//! [`resolve`] reads the spec, the VM and the previous status; [`observe`]
//! asks the storage which volumes exist and, only when a capture is due,
//! which of the VM's disks are running; [`plan`] decides; [`execute`] calls
//! the storage; `status` reports.

use std::collections::{BTreeMap, BTreeSet};

use super::kind::run;
use super::status::{made_once, ready, rfc3339};
use super::vm::live_disks;
use super::{decode, names, previous, Ctx, Live, Outcome, Plan, ReconcileError};
use crate::driver::CloneRequest;
use crate::model::phase::ReadyPhase;
use crate::model::storage_kinds::ReplicaStatus;
use crate::model::{Kind, Manifest, ReplicaSpec, VirtualMachineSpec};
use crate::store::Record;

/// The replica as this node should have it.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The object was deleted: remove its volumes.
    pub deleted: bool,
    /// The VM's namespace.
    pub vm_namespace: String,
    /// The VM's name.
    pub vm_name: String,
    /// The VM's spec; `None` when it does not exist.
    pub vm: Option<VirtualMachineSpec>,
    /// Disk name → the clone capturing it.
    pub disks: BTreeMap<String, CloneRequest>,
    /// Volumes the previous status recorded (the VM may have lost disks).
    pub recorded: BTreeSet<String>,
    /// For a deletion: keep the volumes under retained names until then
    /// (ms since the epoch); `None`: destroy them.
    pub retain_until_ms: Option<u64>,
}

impl Desired {
    /// Every volume this replica may have made.
    fn volumes(&self) -> BTreeSet<String> {
        let mut v = self.recorded.clone();
        v.extend(self.disks.values().map(|r| r.volume.clone()));
        v
    }
}

/// What the node has.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Which of [`Desired`]'s volumes exist.
    pub existing: BTreeSet<String>,
    /// The VM's disks, when it runs here and a capture is due.
    pub live: Live,
}

/// One step, with everything it needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Remove a volume (a partial capture, or the replica is deleted).
    Destroy(String),
    /// Keep a volume of a deleted replica under its retained name.
    Retain {
        /// Name.
        volume: String,
        /// `retained.<until>.<volume>`.
        retained: String,
    },
    /// Capture every disk at one instant.
    Capture {
        /// One clone per disk.
        requests: Vec<CloneRequest>,
        /// The VM's disks if it runs.
        live: Live,
        /// The VM, when its FASTR policy asks for a round after each
        /// replica (`triggers.replica`).
        fastr: Option<crate::model::ObjectKey>,
    },
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Destroy(volume) => write!(f, "destroy volume {volume}"),
            Action::Retain { volume, retained } => {
                write!(f, "keep volume {volume} as {retained} (retention)")
            }
            Action::Capture { requests, live, .. } => {
                let disks: Vec<String> = requests
                    .iter()
                    .map(|r| format!("{} -> {}", r.source, r.volume))
                    .collect();
                write!(
                    f,
                    "capture {} disk(s) at one instant: {}",
                    requests.len(),
                    disks.join(", ")
                )?;
                if requests
                    .iter()
                    .any(|r| live.0.volumes.contains_key(&r.source))
                {
                    write!(f, " (live, through the running VM)")?;
                }
                Ok(())
            }
        }
    }
}

/// The Replica reconciler.
pub struct Replicas;

super::kind::reconciler_from_module!(Replicas);

/// Reconcile one Replica.
pub async fn reconcile(ctx: &Ctx, record: &Record) -> Result<Outcome, ReconcileError> {
    run::<Replicas>(ctx, record).await
}

/// The replica as desired.
pub fn resolve(ctx: &Ctx, record: &Record) -> Result<Desired, ReconcileError> {
    let rep: Manifest<ReplicaSpec> = decode(record)?;
    let ns = &record.key.namespace;
    let vm_ref = &rep.spec.virtual_machine;
    let vm_namespace = vm_ref.namespace.clone().unwrap_or_else(|| ns.clone());
    let vm = ctx
        .typed::<VirtualMachineSpec>(Kind::VirtualMachine, &vm_namespace, &vm_ref.name)
        .map(|m| m.spec);
    // The VM's disks as it has them: its own, else its spacesuit's.
    let disks = vm
        .iter()
        .flat_map(|v| super::vm::vm_disk_names(ctx, &vm_namespace, v))
        .map(|d| {
            let request = CloneRequest {
                volume: names::replica_volume(ns, &record.key.name, &d),
                source: names::vm_volume(&vm_namespace, &vm_ref.name, &d),
                size: None,
            };
            (d, request)
        })
        .collect();
    let recorded = previous::<ReplicaStatus>(record)
        .volumes
        .into_values()
        .collect();
    Ok(Desired {
        deleted: record.deleted,
        vm_namespace,
        vm_name: vm_ref.name.clone(),
        vm,
        disks,
        recorded,
        retain_until_ms: record
            .deleted
            .then(|| super::retention::until(ctx, super::retention::purges(record)))
            .flatten(),
    })
}

/// What the node has, looking only at what the plan may need.
pub async fn observe(ctx: &Ctx, d: &Desired) -> Result<Observed, ReconcileError> {
    let mut o = Observed::default();
    for v in d.volumes() {
        if ctx.drivers.storage.exists(&v).await? {
            o.existing.insert(v);
        }
    }
    let complete = d.disks.values().all(|r| o.existing.contains(&r.volume));
    if !d.deleted && !complete {
        o.live = Live(live_disks(ctx, &d.vm_namespace, &d.vm_name, d.vm.as_ref()).await);
    }
    Ok(o)
}

/// The steps from `o` to `d`.
pub fn plan(d: &Desired, o: &Observed) -> Plan<Action> {
    if d.deleted {
        let existing = d.volumes().into_iter().filter(|v| o.existing.contains(v));
        return Plan::Act(
            existing
                .map(|volume| match d.retain_until_ms {
                    Some(until) => Action::Retain {
                        retained: crate::model::names::retained_volume(&volume, until),
                        volume,
                    },
                    None => Action::Destroy(volume),
                })
                .collect(),
        );
    }
    if d.vm.is_none() {
        return Plan::Wait {
            reason: "VirtualMachineNotFound",
            message: format!("VM {}/{} does not exist", d.vm_namespace, d.vm_name),
        };
    }
    let requests: Vec<CloneRequest> = d.disks.values().cloned().collect();
    if requests.iter().all(|r| o.existing.contains(&r.volume)) {
        return Plan::Act(Vec::new());
    }
    let partial = requests
        .iter()
        .filter(|r| o.existing.contains(&r.volume))
        .map(|r| Action::Destroy(r.volume.clone()));
    let fastr = d
        .vm
        .as_ref()
        .and_then(|v| v.fastr.as_ref())
        .is_some_and(|f| f.triggers().replica)
        .then(|| {
            crate::model::ObjectKey::new(Kind::VirtualMachine, Some(&d.vm_namespace), &d.vm_name)
        });
    let capture = Action::Capture {
        requests: requests.clone(),
        live: o.live.clone(),
        fastr,
    };
    Plan::Act(partial.chain([capture]).collect())
}

/// Carry out `actions`.
pub async fn execute(ctx: &Ctx, actions: &[Action]) -> Result<(), ReconcileError> {
    let storage = &ctx.drivers.storage;
    for a in actions {
        match a {
            Action::Destroy(volume) => storage.destroy(volume).await?,
            Action::Retain { volume, retained } => {
                let r = storage.rename(volume, retained).await;
                ctx.retained.invalidate();
                r?
            }
            Action::Capture {
                requests,
                live,
                fastr,
            } => {
                storage.capture(requests, &live.0).await?;
                // The copies follow the replica (on the VM's node; a VM
                // that runs nowhere has nothing new to send).
                if let (Some(vm), Some(p)) = (fastr, &ctx.placement) {
                    match p.fastr_sync(vm) {
                        Ok(()) => {
                            tracing::info!(vm = %vm, "replica made: a FASTR round is asked (triggers.replica)")
                        }
                        Err(e) => {
                            tracing::debug!(vm = %vm, error = %e, "replica made: no FASTR round")
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Write the outcome into the status.
fn status(
    ctx: &Ctx,
    record: &Record,
    d: &Desired,
    plan: &Plan<Action>,
    result: Result<(), ReconcileError>,
) -> Result<Outcome, ReconcileError> {
    let mut st: ReplicaStatus = previous(record);
    st.observed_generation = Some(record.generation);
    let generation = record.generation;
    let retry = ctx.config.blocked_retry;
    let (phase, outcome) = made_once(
        &mut st.conditions,
        generation,
        st.phase,
        plan,
        result,
        retry,
    )?;
    if phase == ReadyPhase::Ready {
        for (disk, r) in &d.disks {
            st.volumes.insert(disk.clone(), r.volume.clone());
        }
        st.node = Some(ctx.config.node_name.clone());
        if st.created_at.is_none() {
            st.created_at = Some(rfc3339(record.updated_ms));
        }
        let msg = format!("{} disk(s)", st.volumes.len());
        ready(&mut st.conditions, "Captured", &msg, generation);
    }
    st.phase = Some(phase);
    ctx.write_status(&record.key, &st)?;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(disk: &str) -> CloneRequest {
        CloneRequest {
            volume: format!("rep-default-snap-{disk}"),
            source: format!("vm-default-app-{disk}"),
            size: None,
        }
    }

    fn desired(disks: &[&str]) -> Desired {
        Desired {
            deleted: false,
            vm_namespace: "default".into(),
            vm_name: "app".into(),
            vm: Some(VirtualMachineSpec::default()),
            disks: disks.iter().map(|d| (d.to_string(), request(d))).collect(),
            recorded: BTreeSet::new(),
            retain_until_ms: None,
        }
    }

    fn having(volumes: &[&str]) -> Observed {
        Observed {
            existing: volumes
                .iter()
                .map(|v| format!("rep-default-snap-{v}"))
                .collect(),
            live: Live::default(),
        }
    }

    #[test]
    fn plan_table() {
        let capture = |disks: &[&str]| Action::Capture {
            requests: disks.iter().map(|d| request(d)).collect(),
            live: Live::default(),
            fastr: None,
        };
        let destroy = |d: &str| Action::Destroy(format!("rep-default-snap-{d}"));
        let no_vm = Desired {
            vm: None,
            disks: BTreeMap::new(),
            ..desired(&[])
        };
        let deleted = Desired {
            deleted: true,
            recorded: ["rep-default-snap-old".to_string()].into(),
            ..desired(&["root", "data"])
        };
        let cases: Vec<(&str, Desired, Observed, Plan<Action>)> = vec![
            (
                "nothing captured: capture all",
                desired(&["root", "data"]),
                having(&[]),
                Plan::Act(vec![capture(&["data", "root"])]),
            ),
            (
                "all captured: nothing",
                desired(&["root", "data"]),
                having(&["root", "data"]),
                Plan::Act(vec![]),
            ),
            (
                "partial: thrown away, then all again",
                desired(&["root", "data"]),
                having(&["data"]),
                Plan::Act(vec![destroy("data"), capture(&["data", "root"])]),
            ),
            (
                "VM missing: wait",
                no_vm,
                having(&[]),
                Plan::Wait {
                    reason: "VirtualMachineNotFound",
                    message: "VM default/app does not exist".into(),
                },
            ),
            (
                "deleted: every volume made, recorded or named",
                deleted.clone(),
                having(&["root", "old"]),
                Plan::Act(vec![destroy("old"), destroy("root")]),
            ),
            (
                "deleted with retention: every volume kept",
                Desired {
                    retain_until_ms: Some(7),
                    ..deleted.clone()
                },
                having(&["root", "old"]),
                Plan::Act(vec![
                    Action::Retain {
                        volume: "rep-default-snap-old".into(),
                        retained: "retained.7.rep-default-snap-old".into(),
                    },
                    Action::Retain {
                        volume: "rep-default-snap-root".into(),
                        retained: "retained.7.rep-default-snap-root".into(),
                    },
                ]),
            ),
            (
                "deleted, nothing left",
                deleted,
                having(&[]),
                Plan::Act(vec![]),
            ),
        ];
        for (name, d, o, want) in cases {
            assert_eq!(plan(&d, &o), want, "{name}");
        }
    }
}
