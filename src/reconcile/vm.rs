//! The VirtualMachine reconciler.
//!
//! ```text
//!            spec.powerState        observed (hypervisor)          action
//!   Running  ──────────────  Absent / Stopped(Requested)  ──►  provision, Start
//!                            Stopped(Crashed)             ──►  Start unless restartPolicy Never
//!                            Stopped(GuestShutdown)       ──►  Start if restartPolicy Always
//!                            Paused                       ──►  Resume
//!                            Running (other config)       ──►  flag status.pendingRestart
//!   Paused   ──────────────  Running                      ──►  Pause
//!                            Absent / Stopped             ──►  provision, Start, Pause
//!   Stopped  ──────────────  Running / Paused             ──►  Stop (ACPI, then forced)
//!   (deleted) ─────────────  anything                     ──►  Stop, remove, destroy volumes, remove taps
//! ```
//!
//! [`plan`] is a pure function of the resolved desired VM and what was
//! observed; [`reconcile`] observes, plans and executes.

use std::collections::BTreeMap;
use std::time::Duration;

use super::names;
use super::status::{rfc3339, set_condition};
use super::{Ctx, Outcome, ReconcileError};
use crate::driver::{NicConfig, StopReason, VmConfig, VmState};
use crate::model::storage_kinds::ReplicaStatus;
use crate::model::vm::{
    Machine, NicStatus, PowerState, RestartPolicy, VirtualMachineSpec, VirtualMachineStatus,
};
use crate::model::{Kind, Manifest, NetworkSpec, ObjectKey, SpacesuitSpec};
use crate::store::Record;

/// Where a volume's content comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum VolumeSource {
    /// Clone of another volume.
    Clone {
        /// Source volume.
        source: String,
        /// Grow to this size.
        size: Option<u64>,
    },
    /// Empty.
    Blank {
        /// Size in bytes.
        size: u64,
    },
}

/// A disk volume the VM needs.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredVolume {
    /// Volume name.
    pub volume: String,
    /// Its origin.
    pub source: VolumeSource,
}

/// The VM fully resolved against its spacesuit and networks.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// What the hypervisor runs.
    pub config: VmConfig,
    /// Volumes to provision.
    pub volumes: Vec<DesiredVolume>,
    /// Taps: (tap, bridge, mtu).
    pub taps: Vec<(String, String, u16)>,
    /// Power state.
    pub power: PowerState,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Graceful stop timeout.
    pub stop_timeout: Duration,
}

/// What the node sees.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Hypervisor state.
    pub state: VmState,
    /// Desired volumes that do not exist yet.
    pub missing_volumes: Vec<String>,
    /// Clone sources that do not exist.
    pub missing_sources: Vec<String>,
    /// Missing volumes this VM had before (deleted behind deorch's back):
    /// never silently recreated empty or from the template.
    pub lost_volumes: Vec<String>,
}

/// One step.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create an empty volume.
    CreateVolume {
        /// Name.
        volume: String,
        /// Bytes.
        size: u64,
    },
    /// Clone a volume.
    CloneVolume {
        /// Name.
        volume: String,
        /// Source volume.
        source: String,
        /// Grow to.
        size: Option<u64>,
    },
    /// Create or update a tap.
    EnsureTap {
        /// Tap.
        tap: String,
        /// Bridge.
        bridge: String,
        /// MTU.
        mtu: u16,
    },
    /// Start QEMU.
    Start,
    /// Stop gracefully.
    Stop,
    /// Pause CPUs.
    Pause,
    /// Resume CPUs.
    Resume,
}

/// The plan: actions, and what the status should say.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Steps in order.
    pub actions: Vec<Action>,
    /// Phase once done.
    pub phase: &'static str,
    /// Why the VM cannot be as desired, if so: (reason, message).
    pub blocked: Option<(String, String)>,
    /// Spec fields that differ from the running configuration.
    pub pending_restart: Vec<String>,
    /// True when the start is a restart by the restart policy.
    pub is_restart: bool,
}

/// Decide what to do. Pure: no I/O, no clock.
pub fn plan(d: &Desired, o: &Observed) -> Plan {
    let mut p = Plan {
        actions: vec![],
        phase: "Pending",
        blocked: None,
        pending_restart: vec![],
        is_restart: false,
    };
    let provision = |p: &mut Plan| {
        for v in &d.volumes {
            if o.missing_volumes.contains(&v.volume) {
                p.actions.push(match &v.source {
                    VolumeSource::Blank { size } => Action::CreateVolume {
                        volume: v.volume.clone(),
                        size: *size,
                    },
                    VolumeSource::Clone { source, size } => Action::CloneVolume {
                        volume: v.volume.clone(),
                        source: source.clone(),
                        size: *size,
                    },
                });
            }
        }
        for (tap, bridge, mtu) in &d.taps {
            p.actions.push(Action::EnsureTap {
                tap: tap.clone(),
                bridge: bridge.clone(),
                mtu: *mtu,
            });
        }
    };
    let needs_start = matches!(o.state, VmState::Absent | VmState::Stopped(_));
    if needs_start && !o.lost_volumes.is_empty() {
        p.blocked = Some((
            "VolumeMissing".into(),
            format!(
                "volume(s) {} existed and are gone (removed outside deorch?); they are not recreated: restore them, or delete the VM",
                o.lost_volumes.join(", ")
            ),
        ));
        return p;
    }
    if needs_start && d.power != PowerState::Stopped && !o.missing_sources.is_empty() {
        p.blocked = Some((
            "SourceMissing".into(),
            format!(
                "source volume(s) {} do not exist",
                o.missing_sources.join(", ")
            ),
        ));
        return p;
    }
    match (d.power, &o.state) {
        (PowerState::Running, VmState::Running { config, .. }) => {
            p.phase = "Running";
            p.pending_restart = diff(config, &d.config);
        }
        (PowerState::Running, VmState::Paused { config, .. }) => {
            p.actions.push(Action::Resume);
            p.phase = "Running";
            p.pending_restart = diff(config, &d.config);
        }
        (PowerState::Paused, VmState::Running { config, .. }) => {
            p.actions.push(Action::Pause);
            p.phase = "Paused";
            p.pending_restart = diff(config, &d.config);
        }
        (PowerState::Paused, VmState::Paused { config, .. }) => {
            p.phase = "Paused";
            p.pending_restart = diff(config, &d.config);
        }
        (PowerState::Stopped, VmState::Running { .. } | VmState::Paused { .. }) => {
            p.actions.push(Action::Stop);
            p.phase = "Stopped";
        }
        (PowerState::Stopped, _) => {
            provision(&mut p);
            p.phase = "Stopped";
        }
        (power, VmState::Stopped(StopReason::Crashed)) if d.restart == RestartPolicy::Never => {
            let _ = power;
            p.phase = "Failed";
            p.blocked = Some((
                "Crashed".into(),
                "QEMU exited unexpectedly and restartPolicy is Never".into(),
            ));
        }
        (_, VmState::Stopped(StopReason::GuestShutdown)) if d.restart != RestartPolicy::Always => {
            p.phase = "Stopped";
            p.blocked = Some((
                "GuestShutdown".into(),
                format!("the guest powered off and restartPolicy is {:?}", d.restart),
            ));
        }
        (power, state) => {
            provision(&mut p);
            p.actions.push(Action::Start);
            p.is_restart = matches!(
                state,
                VmState::Stopped(StopReason::Crashed | StopReason::GuestShutdown)
            );
            if power == PowerState::Paused {
                p.actions.push(Action::Pause);
                p.phase = "Paused";
            } else {
                p.phase = "Running";
            }
        }
    }
    p
}

/// Spec fields of `desired` that differ from the running `config`.
pub fn diff(running: &VmConfig, desired: &VmConfig) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |name: &str, same: bool| {
        if !same {
            out.push(name.to_string());
        }
    };
    check("cpu", running.cpus == desired.cpus);
    check("memory", running.memory == desired.memory);
    check("machine", running.machine == desired.machine);
    check("cpuModel", running.cpu_model == desired.cpu_model);
    check("boot", running.boot == desired.boot);
    check("disks", running.disks == desired.disks);
    check("nics", running.nics == desired.nics);
    out
}

fn blocked(reason: &str, message: String) -> ReconcileError {
    ReconcileError {
        reason: reason.into(),
        message,
        transient: true,
    }
}

/// Resolve the VM against the store (spacesuit, networks, source VMs).
pub fn resolve(
    ctx: &Ctx,
    key: &ObjectKey,
    spec: &VirtualMachineSpec,
) -> Result<Desired, ReconcileError> {
    let ns = key.namespace.as_str();
    let suit: Option<SpacesuitSpec> = match &spec.spacesuit {
        Some(name) => Some(
            ctx.typed::<SpacesuitSpec>(Kind::Spacesuit, ns, name)
                .ok_or_else(|| {
                    blocked(
                        "SpacesuitNotFound",
                        format!("spacesuit {ns}/{name} does not exist"),
                    )
                })?
                .spec,
        ),
        None => None,
    };
    let cpus = spec
        .cpu
        .or(suit.as_ref().and_then(|s| s.cpu))
        .map(|c| (c.0 / 1000) as u32)
        .unwrap_or(1);
    let memory = spec
        .memory
        .or(suit.as_ref().and_then(|s| s.memory))
        .map(|m| m.0)
        .unwrap_or(512 << 20);
    let machine = spec
        .machine
        .or(suit.as_ref().and_then(|s| s.machine))
        .unwrap_or(Machine::Q35);
    let boot = spec
        .boot
        .clone()
        .or(suit.as_ref().and_then(|s| s.boot.clone()));
    let mut volumes = Vec::new();
    let mut disks = Vec::new();
    for d in &spec.disks {
        let volume = names::vm_volume(ns, &key.name, &d.name);
        let size = d.size.map(|s| s.0);
        let s = &d.source;
        let source = if let Some(suit_name) = &s.spacesuit {
            VolumeSource::Clone {
                source: names::spacesuit_volume(ns, suit_name),
                size,
            }
        } else if let Some(r) = &s.virtual_machine {
            let rns = r.namespace.as_deref().unwrap_or(ns);
            let disk = match &r.disk {
                Some(d) => d.clone(),
                None => ctx
                    .typed::<VirtualMachineSpec>(Kind::VirtualMachine, rns, &r.name)
                    .and_then(|vm| vm.spec.disks.first().map(|d| d.name.clone()))
                    .ok_or_else(|| {
                        blocked(
                            "SourceNotFound",
                            format!("VM {rns}/{} does not exist or has no disk", r.name),
                        )
                    })?,
            };
            VolumeSource::Clone {
                source: names::vm_volume(rns, &r.name, &disk),
                size,
            }
        } else if let Some(r) = &s.replica {
            let rns = r.namespace.as_deref().unwrap_or(ns);
            let disk = r.disk.clone().unwrap_or_else(|| "root".into());
            VolumeSource::Clone {
                source: names::replica_volume(rns, &r.name, &disk),
                size,
            }
        } else {
            VolumeSource::Blank {
                size: size.unwrap_or(0),
            }
        };
        disks.push((d.name.clone(), volume.clone()));
        volumes.push(DesiredVolume { volume, source });
    }
    let mut nics = Vec::new();
    let mut taps = Vec::new();
    for n in &spec.nics {
        let net = ctx
            .typed::<NetworkSpec>(Kind::Network, ns, &n.network)
            .ok_or_else(|| {
                blocked(
                    "NetworkNotFound",
                    format!("network {ns}/{} does not exist", n.network),
                )
            })?;
        let bridge = net
            .spec
            .bridge
            .clone()
            .unwrap_or_else(|| names::bridge(ns, &n.network));
        let tap = names::tap(ns, &key.name, &n.name);
        taps.push((tap.clone(), bridge.clone(), net.spec.mtu.unwrap_or(1500)));
        nics.push(NicConfig {
            name: n.name.clone(),
            mac: n
                .mac
                .clone()
                .unwrap_or_else(|| names::mac(ns, &key.name, &n.name)),
            tap,
            bridge,
            model: n.model.unwrap_or_default(),
            host_tap: ctx.drivers.net.host_interfaces(),
        });
    }
    Ok(Desired {
        config: VmConfig {
            id: format!("{ns}/{}", key.name),
            cpus,
            memory,
            machine,
            cpu_model: spec.cpu_model.clone(),
            boot,
            disks,
            disk_images: Vec::new(),
            nics,
            spice: spec.console.as_ref().is_some_and(|c| c.spice),
        },
        volumes,
        taps,
        power: spec.power_state,
        restart: spec.restart_policy,
        stop_timeout: spec
            .stop_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(30)),
    })
}

/// Carry out a `deorch.dev/revert-to` annotation once per generation: stop
/// the VM, make each disk a copy of the replica's (the storage's crash-safe
/// `revert`), record it, and let the normal plan start the VM again.
async fn revert(
    ctx: &Ctx,
    record: &Record,
    vm: &Manifest<VirtualMachineSpec>,
    desired: &Desired,
    status: &mut VirtualMachineStatus,
) -> Result<Option<Outcome>, ReconcileError> {
    let Some(replica) = vm
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::model::REVERT_ANNOTATION))
    else {
        return Ok(None);
    };
    let token = format!("{replica}@{}", record.generation);
    if status.last_revert.as_deref() == Some(token.as_str()) {
        return Ok(None);
    }
    let key = &record.key;
    let rep = ctx.store.get(&ObjectKey::new(
        Kind::Replica,
        Some(&key.namespace),
        replica,
    ));
    let volumes: Option<BTreeMap<String, String>> = rep
        .filter(|r| !r.deleted)
        .and_then(|r| r.status)
        .and_then(|s| serde_json::from_value::<ReplicaStatus>(s).ok())
        .filter(|s| s.phase.as_deref() == Some("Ready"))
        .map(|s| s.volumes);
    let Some(volumes) = volumes else {
        let msg = format!("replica {replica} does not exist here or is not ready");
        set_condition(
            &mut status.conditions,
            "Reverted",
            false,
            "ReplicaNotReady",
            &msg,
            record.generation,
        );
        ctx.write_status(key, status)?;
        return Ok(Some(Outcome::RequeueAfter(ctx.config.blocked_retry)));
    };
    let id = &desired.config.id;
    let hv = &ctx.drivers.hypervisor;
    if matches!(
        hv.state(id).await?,
        VmState::Running { .. } | VmState::Paused { .. }
    ) {
        hv.stop(id, desired.stop_timeout).await?;
    }
    for (disk, volume) in &desired.config.disks {
        let Some(source) = volumes.get(disk) else {
            let msg = format!("replica {replica} has no disk {disk}");
            set_condition(
                &mut status.conditions,
                "Reverted",
                false,
                "DiskNotInReplica",
                &msg,
                record.generation,
            );
            ctx.write_status(key, status)?;
            return Ok(Some(Outcome::Done));
        };
        ctx.drivers.storage.revert(volume, source).await?;
    }
    status.last_revert = Some(token);
    let msg = format!("disks reverted to replica {replica}");
    set_condition(
        &mut status.conditions,
        "Reverted",
        true,
        "Reverted",
        &msg,
        record.generation,
    );
    ctx.write_status(key, status)?;
    Ok(None)
}

/// `config` with each disk's image (path, format) from the storage
/// driver and its bus and mode from the spec, as the hypervisor needs it.
async fn with_images(
    ctx: &Ctx,
    config: &VmConfig,
    spec: &VirtualMachineSpec,
) -> Result<VmConfig, crate::driver::DriverError> {
    let mut config = config.clone();
    config.disk_images.clear();
    for (disk, volume) in &config.disks {
        let info = ctx.drivers.storage.volume(volume).await?;
        let d = spec.disks.iter().find(|d| &d.name == disk);
        config.disk_images.push(crate::driver::DiskImage {
            name: disk.clone(),
            path: info.path,
            format: info.format.to_string(),
            bus: d
                .and_then(|d| d.bus)
                .unwrap_or(crate::model::vm::DiskBus::Virtio),
            read_only: d.is_some_and(|d| d.read_only),
        });
    }
    Ok(config)
}

/// Whether the last status said every volume was in place.
fn was_provisioned(status: &VirtualMachineStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == "Provisioned" && c.status == "True")
}

/// The disks of VM `ns/name` if it is running here, for snapshots that
/// storage takes through the hypervisor (see `Storage::clone_volumes_live`).
pub async fn live_disks(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    spec: Option<&VirtualMachineSpec>,
) -> crate::driver::LiveDisks {
    let mut live = crate::driver::LiveDisks::default();
    let id = format!("{ns}/{name}");
    let running = matches!(
        ctx.drivers.hypervisor.state(&id).await,
        Ok(VmState::Running { .. } | VmState::Paused { .. })
    );
    if let (true, Some(spec)) = (running, spec) {
        for d in &spec.disks {
            live.volumes.insert(
                names::vm_volume(ns, name, &d.name),
                (id.clone(), d.name.clone()),
            );
        }
        live.hypervisor = Some(ctx.drivers.hypervisor.clone());
    }
    live
}

/// Clone `source` into `volume`. When the disk comes from another VM that
/// runs here, through its hypervisor (`Storage::clone_volumes_live`), so a
/// VM can be made from a running VM on qcow2 storage too.
async fn clone_disk(
    ctx: &Ctx,
    key: &ObjectKey,
    spec: &VirtualMachineSpec,
    volume: &str,
    source: &str,
    size: Option<u64>,
) -> Result<(), crate::driver::DriverError> {
    let from_vm = spec
        .disks
        .iter()
        .find(|d| names::vm_volume(&key.namespace, &key.name, &d.name) == volume)
        .and_then(|d| d.source.virtual_machine.as_ref());
    let Some(r) = from_vm else {
        return ctx.drivers.storage.clone_volume(volume, source, size).await;
    };
    let rns = r.namespace.as_deref().unwrap_or(&key.namespace);
    let source_vm = ctx.typed::<VirtualMachineSpec>(Kind::VirtualMachine, rns, &r.name);
    let live = live_disks(ctx, rns, &r.name, source_vm.as_ref().map(|v| &v.spec)).await;
    let request = [crate::driver::CloneRequest {
        volume: volume.to_string(),
        source: source.to_string(),
        size,
    }];
    ctx.drivers
        .storage
        .clone_volumes_live(&request, &live)
        .await
}

/// Label on the replicas a VM's `replicaPolicy` takes.
pub const POLICY_LABEL: &str = "deorch.dev/replica-policy-of";

/// `spec.replicaPolicy`: take a Replica every `interval` and keep the
/// newest `keep`. The replicas are ordinary desired state (source
/// `policy`), named `VM-auto-<ms>`, so they show in `get` and survive
/// restarts; the VM's regular polling drives the schedule.
fn replica_policy(
    ctx: &Ctx,
    record: &Record,
    vm: &Manifest<VirtualMachineSpec>,
) -> Result<(), ReconcileError> {
    let Some(policy) = &vm.spec.replica_policy else {
        return Ok(());
    };
    let key = &record.key;
    let taken = |r: &Record| -> Option<u64> { r.key.name.rsplit_once("-auto-")?.1.parse().ok() };
    let mut autos: Vec<(u64, Record)> = ctx
        .store
        .list(Some(Kind::Replica))
        .into_iter()
        .filter(|r| {
            !r.deleted
                && r.key.namespace == key.namespace
                && r.object["metadata"]["labels"][POLICY_LABEL] == key.name.as_str()
        })
        .filter_map(|r| Some((taken(&r)?, r)))
        .collect();
    autos.sort_by_key(|a| a.0);
    let source = crate::store::SourceId("policy".into());
    let now = crate::source::dir::now_ms();
    let due = autos
        .last()
        .is_none_or(|(t, _)| now.saturating_sub(*t) >= policy.interval.0.as_millis() as u64);
    if due && policy.keep > 0 {
        let base: String = key.name.chars().take(63 - 6 - 13).collect();
        let name = format!("{}-auto-{now}", base.trim_end_matches('-'));
        let object = serde_json::json!({
            "apiVersion": crate::model::API_VERSION,
            "kind": "Replica",
            "metadata": {
                "name": name,
                "namespace": key.namespace,
                "labels": {POLICY_LABEL: key.name},
            },
            "spec": {"virtualMachine": {"name": key.name}},
        });
        let object = crate::model::AnyObject::from_value(object)
            .map_err(|e| ReconcileError::permanent("ReplicaPolicy", e.to_string()))?;
        ctx.store.apply(&object, &source)?;
        autos.push((
            now,
            ctx.store
                .get(&ObjectKey::new(Kind::Replica, Some(&key.namespace), &name))
                .expect("just applied"),
        ));
    }
    let excess = autos.len().saturating_sub(policy.keep as usize);
    for (_, old) in autos.iter().take(excess) {
        ctx.store.delete(&old.key, &source)?;
    }
    Ok(())
}

/// Whether `spec` is placed automatically (no node name, no address).
pub fn is_auto(spec: &VirtualMachineSpec) -> bool {
    spec.placement
        .as_ref()
        .is_none_or(|p| p.node.is_none() && p.address.is_none())
}

/// Whether this node runs `spec`: manual placement by node name or
/// address; automatic placement where the cluster's election says (every
/// VM on a node without gossip).
pub fn is_mine(ctx: &Ctx, key: &ObjectKey, spec: &VirtualMachineSpec) -> bool {
    match &spec.placement {
        Some(p) if p.node.is_some() || p.address.is_some() => match (&p.node, &p.address) {
            (Some(n), _) => *n == ctx.config.node_name,
            (None, Some(a)) => ctx.config.node_addresses.iter().any(|x| x == a),
            (None, None) => unreachable!("guarded"),
        },
        _ => match &ctx.placement {
            None => true,
            Some(p) => p.elected(key) == super::Elected::Here,
        },
    }
}

/// Whether the election has no answer yet for a VM that runs here (e.g.
/// the node restarted and its claim is still on its way back from the
/// peers): keep it as it is rather than stop it on uncertainty; only a
/// winning claim of another node stops it.
async fn running_while_pending(ctx: &Ctx, record: &Record) -> Result<bool, ReconcileError> {
    let pending = ctx
        .placement
        .as_ref()
        .is_some_and(|p| p.elected(&record.key) == super::Elected::Pending);
    if !pending {
        return Ok(false);
    }
    let id = format!("{}/{}", record.key.namespace, record.key.name);
    Ok(matches!(
        ctx.drivers.hypervisor.state(&id).await?,
        VmState::Running { .. } | VmState::Paused { .. }
    ))
}

/// An automatically placed VM another node runs (or not elected yet): stop
/// a copy running here (a healed partition's loser, or a node that lost
/// its claim) without touching its disks, and say where it runs.
async fn not_here(
    ctx: &Ctx,
    record: &Record,
    spec: &VirtualMachineSpec,
) -> Result<Outcome, ReconcileError> {
    let Some(placement) = &ctx.placement else {
        return Ok(Outcome::Done);
    };
    let key = &record.key;
    let id = format!("{}/{}", key.namespace, key.name);
    let hv = &ctx.drivers.hypervisor;
    let elected = placement.elected(key);
    let elsewhere = matches!(elected, super::Elected::Elsewhere { .. });
    if let (true, VmState::Running { .. } | VmState::Paused { .. }) =
        (elsewhere, hv.state(&id).await?)
    {
        let timeout = spec
            .stop_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(30));
        tracing::info!(vm = %id, "the election placed this VM elsewhere: stopping it here, disks kept");
        hv.stop(&id, timeout).await?;
    }
    let mut status: VirtualMachineStatus = record
        .status
        .clone()
        .and_then(|s| serde_json::from_value(s).ok())
        .unwrap_or_default();
    status.observed_generation = Some(record.generation);
    let (reason, message) = match elected {
        super::Elected::Elsewhere { node, epoch } => {
            status.phase = Some("Elsewhere".into());
            let m = format!("runs on {node} (election epoch {epoch})");
            status.node = Some(node);
            ("PlacedElsewhere", m)
        }
        _ => {
            status.phase = Some("Pending".into());
            status.node = None;
            (
                "ElectionPending",
                "waiting for the cluster's placement election".to_string(),
            )
        }
    };
    set_condition(
        &mut status.conditions,
        "Ready",
        false,
        reason,
        &message,
        record.generation,
    );
    ctx.write_status(key, &status)?;
    Ok(Outcome::Done)
}

/// Reconcile one VM record.
pub async fn reconcile(ctx: &Ctx, record: &Record) -> Result<Outcome, ReconcileError> {
    let vm: Manifest<VirtualMachineSpec> = serde_json::from_value(record.object.clone())
        .map_err(|e| ReconcileError::permanent("Unreadable", e.to_string()))?;
    // A deleted automatically placed VM is cleaned up wherever it may have
    // run (the election forgets deleted VMs; deleting what is absent is a
    // no-op).
    let auto_deleted = record.deleted && is_auto(&vm.spec);
    if !auto_deleted && !is_mine(ctx, &record.key, &vm.spec) {
        if record.deleted || !is_auto(&vm.spec) {
            return Ok(Outcome::Done);
        }
        if !running_while_pending(ctx, record).await? {
            return not_here(ctx, record, &vm.spec).await;
        }
    }
    let key = &record.key;
    let id = format!("{}/{}", key.namespace, key.name);
    let hv = &ctx.drivers.hypervisor;
    if record.deleted {
        return delete(ctx, key, &id, &vm.spec).await;
    }
    let previous: VirtualMachineStatus = record
        .status
        .clone()
        .and_then(|s| serde_json::from_value(s).ok())
        .unwrap_or_default();
    let mut status = previous.clone();
    status.node = Some(ctx.config.node_name.clone());
    status.observed_generation = Some(record.generation);

    let desired = match resolve(ctx, key, &vm.spec) {
        Ok(d) => d,
        Err(e) => {
            status.phase = Some("Pending".into());
            set_condition(
                &mut status.conditions,
                "Provisioned",
                false,
                &e.reason,
                &e.message,
                record.generation,
            );
            set_condition(
                &mut status.conditions,
                "Ready",
                false,
                &e.reason,
                &e.message,
                record.generation,
            );
            ctx.write_status(key, &status)?;
            return Ok(Outcome::RequeueAfter(ctx.config.blocked_retry));
        }
    };
    if let Some(outcome) = revert(ctx, record, &vm, &desired, &mut status).await? {
        return Ok(outcome);
    }
    let state = hv.state(&id).await.map_err(ReconcileError::from)?;
    let mut missing_volumes = Vec::new();
    let mut missing_sources = Vec::new();
    for v in &desired.volumes {
        if !ctx.drivers.storage.exists(&v.volume).await? {
            missing_volumes.push(v.volume.clone());
            if let VolumeSource::Clone { source, .. } = &v.source {
                if !ctx.drivers.storage.exists(source).await? {
                    missing_sources.push(source.clone());
                }
            }
        }
    }
    let observed = Observed {
        state,
        // Volumes of a VM that was fully provisioned before.
        lost_volumes: missing_volumes
            .iter()
            .filter(|v| was_provisioned(&previous) && previous.disks.values().any(|p| p == *v))
            .cloned()
            .collect(),
        missing_volumes,
        missing_sources,
    };
    let plan = plan(&desired, &observed);

    for action in &plan.actions {
        let result = match action {
            Action::CreateVolume { volume, size } => {
                ctx.drivers.storage.create(volume, *size).await
            }
            Action::CloneVolume {
                volume,
                source,
                size,
            } => clone_disk(ctx, key, &vm.spec, volume, source, *size).await,
            Action::EnsureTap { tap, bridge, mtu } => {
                ctx.drivers.net.ensure_tap(tap, bridge, *mtu).await
            }
            Action::Start => match with_images(ctx, &desired.config, &vm.spec).await {
                Ok(config) => hv.start(&config).await,
                Err(e) => Err(e),
            },
            Action::Stop => hv.stop(&id, desired.stop_timeout).await,
            Action::Pause => hv.pause(&id).await,
            Action::Resume => hv.resume(&id).await,
        };
        if let Err(e) = result {
            let err = ReconcileError::from(e);
            let provisioning = matches!(
                action,
                Action::CreateVolume { .. } | Action::CloneVolume { .. } | Action::EnsureTap { .. }
            );
            if provisioning {
                set_condition(
                    &mut status.conditions,
                    "Provisioned",
                    false,
                    &err.reason,
                    &err.message,
                    record.generation,
                );
            }
            set_condition(
                &mut status.conditions,
                "Ready",
                false,
                &err.reason,
                &err.message,
                record.generation,
            );
            status.phase = Some(
                if provisioning {
                    "Provisioning"
                } else {
                    "Pending"
                }
                .into(),
            );
            ctx.write_status(key, &status)?;
            return Err(err);
        }
    }
    if plan.is_restart {
        status.restarts = Some(previous.restarts.unwrap_or(0) + 1);
    }

    // Report what is true now.
    let now = hv.state(&id).await?;
    let (pid, started) = match &now {
        VmState::Running {
            pid, started_ms, ..
        }
        | VmState::Paused {
            pid, started_ms, ..
        } => (Some(*pid), Some(rfc3339(*started_ms))),
        _ => (None, None),
    };
    status.pid = pid;
    status.started_at = started;
    status.phase = Some(plan.phase.into());
    status.pending_restart = plan.pending_restart.clone();
    status.disks = desired
        .config
        .disks
        .iter()
        .cloned()
        .collect::<BTreeMap<_, _>>();
    status.nics = desired
        .config
        .nics
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                NicStatus {
                    mac: n.mac.clone(),
                    ipv4: None,
                    tap: Some(n.tap.clone()),
                },
            )
        })
        .collect();
    status.console = hv.console(&id);
    status.accel = hv.accel();
    let provisioned = plan
        .blocked
        .as_ref()
        .is_none_or(|(r, _)| r != "SourceMissing");
    set_condition(
        &mut status.conditions,
        "Provisioned",
        provisioned,
        if provisioned {
            "VolumesReady"
        } else {
            "SourceMissing"
        },
        &if provisioned {
            format!(
                "{} volume(s), {} tap(s)",
                desired.volumes.len(),
                desired.taps.len()
            )
        } else {
            plan.blocked.clone().unwrap_or_default().1
        },
        record.generation,
    );
    match &plan.blocked {
        Some((reason, message)) => set_condition(
            &mut status.conditions,
            "Ready",
            false,
            reason,
            message,
            record.generation,
        ),
        None if !plan.pending_restart.is_empty() => set_condition(
            &mut status.conditions,
            "Ready",
            true,
            "RestartPending",
            &format!(
                "changes to {} apply at the next restart",
                plan.pending_restart.join(", ")
            ),
            record.generation,
        ),
        None => set_condition(
            &mut status.conditions,
            "Ready",
            true,
            plan.phase,
            &format!("VM is {}", plan.phase.to_ascii_lowercase()),
            record.generation,
        ),
    }
    ctx.write_status(key, &status)?;
    if plan.blocked.is_none() {
        if let Err(e) = replica_policy(ctx, record, &vm) {
            tracing::warn!(vm = %key, error = %e, "replica policy");
        }
    }
    // Keep watching: QEMU may exit at any time.
    Ok(match plan.blocked {
        Some(_) if plan.phase == "Pending" => Outcome::RequeueAfter(ctx.config.blocked_retry),
        _ => Outcome::RequeueAfter(ctx.config.vm_poll),
    })
}

async fn delete(
    ctx: &Ctx,
    key: &ObjectKey,
    id: &str,
    spec: &VirtualMachineSpec,
) -> Result<Outcome, ReconcileError> {
    let hv = &ctx.drivers.hypervisor;
    match hv.state(id).await? {
        VmState::Running { .. } | VmState::Paused { .. } => {
            let timeout = spec
                .stop_timeout
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(30));
            hv.stop(id, timeout).await?;
            hv.remove(id).await?;
        }
        VmState::Stopped(_) => hv.remove(id).await?,
        VmState::Absent => {}
    }
    for d in &spec.disks {
        let volume = names::vm_volume(&key.namespace, &key.name, &d.name);
        if ctx.drivers.storage.exists(&volume).await? {
            ctx.drivers.storage.destroy(&volume).await?;
        }
    }
    for n in &spec.nics {
        ctx.drivers
            .net
            .remove_tap(&names::tap(&key.namespace, &key.name, &n.name))
            .await?;
    }
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(power: PowerState, restart: RestartPolicy) -> Desired {
        Desired {
            config: VmConfig {
                id: "default/a".into(),
                cpus: 1,
                memory: 1 << 29,
                machine: Machine::Q35,
                cpu_model: None,
                boot: None,
                disks: vec![("root".into(), "vm-default-a-root".into())],
                disk_images: Vec::new(),
                nics: vec![],
                spice: false,
            },
            volumes: vec![DesiredVolume {
                volume: "vm-default-a-root".into(),
                source: VolumeSource::Clone {
                    source: "suit-default-tiny".into(),
                    size: None,
                },
            }],
            taps: vec![],
            power,
            restart,
            stop_timeout: Duration::from_secs(30),
        }
    }

    fn observed(state: VmState, missing: bool) -> Observed {
        Observed {
            state,
            missing_volumes: if missing {
                vec!["vm-default-a-root".into()]
            } else {
                vec![]
            },
            missing_sources: vec![],
            lost_volumes: vec![],
        }
    }

    fn running(cfg: &VmConfig) -> VmState {
        VmState::Running {
            pid: 1,
            started_ms: 0,
            config: Box::new(cfg.clone()),
        }
    }

    #[test]
    fn a_new_vm_is_provisioned_then_started() {
        let d = desired(PowerState::Running, RestartPolicy::Always);
        let p = plan(&d, &observed(VmState::Absent, true));
        assert_eq!(
            p.actions,
            vec![
                Action::CloneVolume {
                    volume: "vm-default-a-root".into(),
                    source: "suit-default-tiny".into(),
                    size: None
                },
                Action::Start
            ]
        );
        assert_eq!(p.phase, "Running");
        assert!(!p.is_restart);
    }

    #[test]
    fn missing_sources_block_the_start() {
        let d = desired(PowerState::Running, RestartPolicy::Always);
        let mut o = observed(VmState::Absent, true);
        o.missing_sources.push("suit-default-tiny".into());
        let p = plan(&d, &o);
        assert!(p.actions.is_empty());
        assert_eq!(p.blocked.unwrap().0, "SourceMissing");
    }

    #[test]
    fn a_volume_lost_behind_our_back_is_not_recreated() {
        let d = desired(PowerState::Running, RestartPolicy::Always);
        let mut o = observed(VmState::Stopped(StopReason::Crashed), true);
        o.lost_volumes.push("vm-default-a-root".into());
        let p = plan(&d, &o);
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        assert_eq!(p.blocked.unwrap().0, "VolumeMissing");
        // A running VM keeps running (QEMU still holds the file).
        let cfg = d.config.clone();
        let mut o = observed(running(&cfg), true);
        o.lost_volumes.push("vm-default-a-root".into());
        assert_eq!(plan(&d, &o).phase, "Running");
    }

    #[test]
    fn restart_policy_decides_after_a_crash_or_guest_shutdown() {
        for (policy, reason, restarts) in [
            (RestartPolicy::Always, StopReason::Crashed, true),
            (RestartPolicy::OnFailure, StopReason::Crashed, true),
            (RestartPolicy::Never, StopReason::Crashed, false),
            (RestartPolicy::Always, StopReason::GuestShutdown, true),
            (RestartPolicy::OnFailure, StopReason::GuestShutdown, false),
            (RestartPolicy::Never, StopReason::GuestShutdown, false),
            (RestartPolicy::Never, StopReason::Requested, true),
        ] {
            let p = plan(
                &desired(PowerState::Running, policy),
                &observed(VmState::Stopped(reason), false),
            );
            assert_eq!(
                p.actions.contains(&Action::Start),
                restarts,
                "{policy:?} after {reason:?}"
            );
            assert_eq!(
                p.is_restart,
                restarts && reason != StopReason::Requested,
                "{policy:?} after {reason:?}"
            );
        }
    }

    #[test]
    fn power_state_transitions() {
        let d = desired(PowerState::Running, RestartPolicy::Always);
        let run = running(&d.config);
        let paused = VmState::Paused {
            pid: 1,
            started_ms: 0,
            config: Box::new(d.config.clone()),
        };
        let cases = [
            (PowerState::Running, run.clone(), vec![]),
            (PowerState::Running, paused.clone(), vec![Action::Resume]),
            (PowerState::Paused, run.clone(), vec![Action::Pause]),
            (
                PowerState::Paused,
                VmState::Absent,
                vec![Action::Start, Action::Pause],
            ),
            (PowerState::Stopped, run.clone(), vec![Action::Stop]),
            (PowerState::Stopped, paused, vec![Action::Stop]),
            (
                PowerState::Stopped,
                VmState::Stopped(StopReason::Requested),
                vec![],
            ),
        ];
        for (power, state, want) in cases {
            let mut d = d.clone();
            d.power = power;
            assert_eq!(
                plan(&d, &observed(state.clone(), false)).actions,
                want,
                "{power:?} with {state:?}"
            );
        }
    }

    #[test]
    fn config_changes_while_running_wait_for_a_restart() {
        let d = desired(PowerState::Running, RestartPolicy::Always);
        let mut old = d.config.clone();
        old.cpus = 2;
        old.memory = 1 << 28;
        let p = plan(&d, &observed(running(&old), false));
        assert!(p.actions.is_empty());
        assert_eq!(p.pending_restart, vec!["cpu", "memory"]);
    }
}
