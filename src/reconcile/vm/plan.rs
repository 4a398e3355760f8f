//! Plan: a pure function of ([`Desired`], [`Observed`]) to the actions
//! that make the node match, and what the status should say. No I/O, no
//! clock; each action carries all that [`super::execute`] needs.

use std::time::Duration;

use super::resolve::{Desired, Site, SourceVm, SuitCopy, VolumeSource};
use crate::driver::{StopReason, VmConfig, VmState};
use crate::model::vm::{DiskBus, PowerState, RestartPolicy, VmPhase, VmReason};

/// What the node sees before planning.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Hypervisor state.
    pub state: VmState,
    /// Desired volumes that do not exist yet (for a deleted VM: those
    /// already gone).
    pub missing_volumes: Vec<String>,
    /// Missing volumes kept from an earlier deletion of this VM: volume →
    /// its retained name (the newest).
    pub retained: std::collections::BTreeMap<String, String>,
    /// Clone sources that do not exist.
    pub missing_sources: Vec<String>,
    /// Missing volumes this VM had before (deleted behind deorch's back):
    /// never silently recreated empty or from the template.
    pub lost_volumes: Vec<String>,
    /// Other live nodes that report running this VM.
    pub running_elsewhere: Vec<String>,
    /// This node's last status for the VM named it as the VM's node.
    pub reported_here: bool,
}

/// A disk as the hypervisor attaches it; its image (path, format) comes
/// from the storage driver at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Attach {
    /// Disk name in the VM.
    pub name: String,
    /// Its volume.
    pub volume: String,
    /// Bus.
    pub bus: DiskBus,
    /// Read-only.
    pub read_only: bool,
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
        /// The VM whose disk `source` is (cloned live if it runs here).
        from_vm: Option<SourceVm>,
        /// How this node gets the spacesuit volume `source` is when it is
        /// not here (its image fetched, or the disk copied from a node
        /// that holds it).
        suit: Option<Box<SuitCopy>>,
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
    /// Start QEMU with this configuration and these disks.
    Start {
        /// The configuration.
        config: Box<VmConfig>,
        /// Its disks.
        disks: Vec<Attach>,
    },
    /// Stop gracefully, forced after `timeout`.
    Stop {
        /// Graceful stop timeout.
        timeout: Duration,
    },
    /// Pause CPUs.
    Pause,
    /// Resume CPUs.
    Resume,
    /// Forget the stopped VM in the hypervisor.
    Remove,
    /// Destroy a volume of a deleted VM.
    DestroyVolume {
        /// Name.
        volume: String,
    },
    /// Keep a volume of a deleted VM under its retained name.
    RetainVolume {
        /// Name.
        volume: String,
        /// `retained.<until>.<volume>`.
        retained: String,
    },
    /// Take back a volume kept from an earlier deletion.
    RestoreVolume {
        /// Its retained name.
        retained: String,
        /// Its own name.
        volume: String,
    },
    /// Remove a tap of a deleted VM.
    RemoveTap {
        /// Tap.
        tap: String,
    },
    /// Keep the disks of a copy that another node's newer claim replaced
    /// (this node ran the VM, was lost, and the VM runs elsewhere now) as
    /// a diverged replica: renamed, all of them under one replica name
    /// (`names::diverged_replica`), so a new VM can be cloned from them
    /// and this node can hold the VM's volumes again (a FASTR copy, a
    /// relocation).
    KeepDiverged {
        /// `namespace/name` of the VM.
        vm: String,
        /// (volume, disk name) of each disk here.
        disks: Vec<(String, String)>,
    },
}

impl Action {
    /// Whether the action makes the VM's volumes or taps.
    pub fn provisions(&self) -> bool {
        matches!(
            self,
            Action::CreateVolume { .. }
                | Action::CloneVolume { .. }
                | Action::RestoreVolume { .. }
                | Action::EnsureTap { .. }
        )
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::model::Quantity;
        let lower = |d: &dyn std::fmt::Debug| format!("{d:?}").to_lowercase();
        match self {
            Action::CreateVolume { volume, size } => {
                write!(f, "create volume {volume} ({})", Quantity(*size))
            }
            Action::CloneVolume {
                volume,
                source,
                size,
                from_vm,
                suit,
            } => {
                write!(f, "clone volume {source} into volume {volume}")?;
                if let Some(size) = size {
                    write!(f, ", grown to {}", Quantity(*size))?;
                }
                match from_vm {
                    Some(vm) if vm.holder.is_some() => write!(
                        f,
                        " (a disk of VM {}; copied from node {} if not here)",
                        vm.id,
                        vm.holder.as_deref().unwrap_or_default()
                    )?,
                    Some(vm) => write!(f, " (a disk of VM {}, live if it runs here)", vm.id)?,
                    None => {}
                }
                match suit.as_deref() {
                    Some(SuitCopy::Image(img)) => write!(
                        f,
                        " (image sha256:{} fetched from a peer if {} is not here)",
                        img.sha256, img.path
                    )?,
                    Some(SuitCopy::Volume { spacesuit, holders }) => write!(
                        f,
                        " (spacesuit {spacesuit} made from a VM: copied from node {} if not here)",
                        holders.first().map(String::as_str).unwrap_or("(none yet)")
                    )?,
                    None => {}
                }
                Ok(())
            }
            Action::EnsureTap { tap, bridge, mtu } => {
                write!(f, "ensure tap {tap} on bridge {bridge} (MTU {mtu})")
            }
            Action::Start { config, disks } => {
                write!(
                    f,
                    "start the VM: {} vCPU(s), {} memory, machine {}",
                    config.cpus,
                    Quantity(config.memory),
                    lower(&config.machine)
                )?;
                if let Some(cpu) = &config.cpu_model {
                    write!(f, ", CPU {cpu}")?;
                }
                for d in disks {
                    write!(
                        f,
                        "; disk {} = volume {} on {}",
                        d.name,
                        d.volume,
                        lower(&d.bus)
                    )?;
                    if d.read_only {
                        write!(f, " read-only")?;
                    }
                }
                for n in &config.nics {
                    write!(
                        f,
                        "; NIC {} {} ({}) on bridge {}",
                        n.name,
                        n.mac,
                        lower(&n.model),
                        n.bridge
                    )?;
                }
                if config.boot.is_some() {
                    write!(f, "; direct kernel boot")?;
                }
                Ok(())
            }
            Action::Stop { timeout } => {
                write!(f, "stop the VM (forced after {} s)", timeout.as_secs())
            }
            Action::Pause => write!(f, "pause the VM's CPUs"),
            Action::Resume => write!(f, "resume the VM's CPUs"),
            Action::Remove => write!(f, "remove the stopped VM from the hypervisor"),
            Action::DestroyVolume { volume } => write!(f, "destroy volume {volume}"),
            Action::RetainVolume { volume, retained } => {
                write!(f, "keep volume {volume} as {retained} (retention)")
            }
            Action::RestoreVolume { retained, volume } => {
                write!(f, "take back volume {volume} kept as {retained}")
            }
            Action::RemoveTap { tap } => write!(f, "remove tap {tap}"),
            Action::KeepDiverged { vm, disks } => {
                let names: Vec<&str> = disks.iter().map(|(v, _)| v.as_str()).collect();
                write!(
                    f,
                    "keep volume(s) {} of VM {vm} as a diverged replica",
                    names.join(", ")
                )
            }
        }
    }
}

/// When to look at the VM again after a successful reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// At the VM poll period (QEMU may exit at any time).
    Poll,
    /// At the blocked-retry period (waiting for something to appear).
    Retry,
    /// When it or the election changes.
    Done,
}

/// The plan: actions, and what the status should say.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Steps in order.
    pub actions: Vec<Action>,
    /// Phase once done.
    pub phase: VmPhase,
    /// The node the status names as running the VM.
    pub node: Option<String>,
    /// Why the VM is not as desired, if so.
    pub blocked: Option<(VmReason, String)>,
    /// Spec fields that differ from the running configuration.
    pub pending_restart: Vec<String>,
    /// True when the start is a restart by the restart policy.
    pub is_restart: bool,
    /// Whether to write status at all (not for a VM pinned to another
    /// node that never was here, nor a deleted one).
    pub report: bool,
    /// When to look again.
    pub next: Next,
}

impl Plan {
    fn new(phase: VmPhase, node: Option<String>) -> Plan {
        Plan {
            actions: vec![],
            phase,
            node,
            blocked: None,
            pending_restart: vec![],
            is_restart: false,
            report: true,
            next: Next::Poll,
        }
    }

    fn blocked(mut self, reason: VmReason, message: String, next: Next) -> Plan {
        self.blocked = Some((reason, message));
        self.next = next;
        self
    }
}

/// Whether QEMU holds the VM (running or paused).
pub fn holds(state: &VmState) -> bool {
    matches!(state, VmState::Running { .. } | VmState::Paused { .. })
}

/// Decide what to do. Pure: no I/O, no clock.
pub fn plan(d: &Desired, o: &Observed) -> Plan {
    if d.deleted {
        return deletion(d, o);
    }
    let here = holds(&o.state);
    let stopping = d.power == PowerState::Stopped;
    match &d.site {
        Site::Here => {}
        // Keep a VM that runs here rather than stop it on uncertainty (the
        // node restarted and its claim is on its way back from the peers).
        // ... but a paused one (its node's fence paused it while the
        // daemon was away) is resumed only once the claim is back: a peer
        // may have started it meanwhile.
        Site::Pending
            if matches!(o.state, VmState::Paused { .. }) && d.power == PowerState::Running =>
        {
            let message =
                "paused here; resumed once the cluster's election says it is still this node's"
                    .to_string();
            return keep_running(d, o, VmReason::ElectionPending, message);
        }
        Site::Pending if here => {}
        Site::Pending => {
            let message = "waiting for the cluster's placement election".to_string();
            return Plan::new(VmPhase::Pending, None).blocked(
                VmReason::ElectionPending,
                message,
                Next::Done,
            );
        }
        Site::Unschedulable { .. } if here && stopping => {}
        Site::Unschedulable { why } if here => {
            let message = format!("{why}; it keeps running here until it is stopped");
            return keep_running(d, o, VmReason::Unschedulable, message);
        }
        Site::Unschedulable { why } => {
            return Plan::new(VmPhase::Unschedulable, None).blocked(
                VmReason::Unschedulable,
                why.clone(),
                Next::Retry,
            );
        }
        Site::Elsewhere { node, epoch } => return replaced(d, o, node, *epoch),
        // A copy here is not the lost node's: it keeps running.
        Site::NodeLost { node, .. } if here => {
            let message =
                format!("{node}, which held the election, is down; this copy keeps running");
            return keep_running(d, o, VmReason::NodeLost, message);
        }
        Site::NodeLost { node, epoch } => {
            let message = format!(
                "{node} ran it (election epoch {epoch}) and holds its disks, and is down: it is not started elsewhere on a blank disk. It runs again when {node} returns; `deorch recover {}` on another node starts it there without that data",
                d.config.id.rsplit('/').next().unwrap_or_default()
            );
            return Plan::new(VmPhase::NodeLost, None).blocked(
                VmReason::NodeLost,
                message,
                Next::Retry,
            );
        }
        Site::PinnedElsewhere { node, failed } => {
            return pinned_elsewhere(d, o, node, failed.as_deref())
        }
        Site::NoQuorum => return no_quorum(d, o),
    }
    match o.running_elsewhere.first() {
        Some(other) if !here && !stopping => wait_for(d, other),
        _ => on_node(d, o),
    }
}

/// Strict mode without a majority: a copy running here is paused (guest
/// code stops; memory and disks stay) and none is started. When the
/// majority is back and the VM still this node's, the election says
/// `Here` and it is resumed; if another node took it meanwhile, it stops.
fn no_quorum(d: &Desired, o: &Observed) -> Plan {
    let message = "strict mode: this node has not seen a majority of the cluster for a while; the VM stays paused here until it does (or another node, seeing one, runs it)".to_string();
    match &o.state {
        VmState::Running { .. } => {
            let mut p = Plan::new(VmPhase::Paused, Some(d.me.clone())).blocked(
                VmReason::NoQuorum,
                message,
                Next::Retry,
            );
            p.actions.push(Action::Pause);
            p
        }
        VmState::Paused { .. } => Plan::new(VmPhase::Paused, Some(d.me.clone())).blocked(
            VmReason::NoQuorum,
            message,
            Next::Retry,
        ),
        _ => Plan::new(VmPhase::Pending, None).blocked(VmReason::NoQuorum, message, Next::Retry),
    }
}

/// Stop a copy running here (disks kept) and say where the VM runs.
fn handed_over(d: &Desired, o: &Observed, node: &str, message: String) -> Plan {
    let mut p = Plan::new(VmPhase::Elsewhere, Some(node.to_string())).blocked(
        VmReason::PlacedElsewhere,
        message,
        Next::Done,
    );
    if holds(&o.state) {
        p.actions.push(Action::Stop {
            timeout: d.stop_timeout,
        });
    }
    p
}

/// [`handed_over`] for a VM another node's newer claim holds: a copy
/// this node still has (it ran the VM before it was lost, or a partition
/// let both run it) is stopped and its disks kept as a diverged replica,
/// once that node reports running the VM. Until then the disks stay as
/// they are (the election may still come back here).
fn replaced(d: &Desired, o: &Observed, node: &str, epoch: u64) -> Plan {
    let here: Vec<(String, String)> = d
        .disks
        .iter()
        .filter(|x| !o.missing_volumes.contains(&x.volume))
        .map(|x| (x.volume.clone(), x.name.clone()))
        .collect();
    let mut message = format!("runs on {node} (election epoch {epoch})");
    if here.is_empty() {
        return handed_over(d, o, node, message);
    }
    let confirmed = o.running_elsewhere.iter().any(|n| n == node);
    if confirmed {
        message.push_str(
            "; this node's copy of its disks is kept as a diverged replica (see deorch volume list)",
        );
    } else {
        message.push_str(&format!(
            "; this node's copy of its disks is kept as it is until {node} reports running it"
        ));
    }
    let mut p = handed_over(d, o, node, message);
    if confirmed {
        // The copy is gone for good (a relocation here later needs the
        // hypervisor to have no VM of that name).
        if !matches!(o.state, VmState::Absent) {
            p.actions.push(Action::Remove);
        }
        p.actions.push(Action::KeepDiverged {
            vm: d.config.id.clone(),
            disks: here,
        });
    } else {
        p.next = Next::Retry;
    }
    p
}

/// A VM whose placement names another node. A running VM with local
/// disks keeps running here until the relocation agent has moved it there
/// live (`NAME@placement`; the other node waits for it, see [`wait_for`]),
/// and says so, or why the move failed; one without disks is stopped
/// here, so the other node starts it.
fn pinned_elsewhere(d: &Desired, o: &Observed, node: &str, failed: Option<&str>) -> Plan {
    let here = holds(&o.state);
    if here && !d.disks.is_empty() && d.power != PowerState::Stopped {
        let message = match failed {
            None => format!(
                "placement names {node}: it moves there live with its disks (relocation {}@placement) once that node is up, and runs here until then",
                d.config.id.rsplit('/').next().unwrap_or_default()
            ),
            Some(why) => format!(
                "placement names {node}, and moving it there live failed: {why}; it keeps running here (it is tried again when the VM changes; or stop it, or set its placement back)"
            ),
        };
        return keep_running(d, o, VmReason::RelocationRequired, message);
    }
    let mut p = handed_over(d, o, node, format!("placed on {node}"));
    p.report = here || o.reported_here;
    p
}

/// Another node still runs the VM: never start a second copy.
fn wait_for(d: &Desired, other: &str) -> Plan {
    let p = Plan::new(VmPhase::Pending, Some(other.to_string()));
    if d.disks.is_empty() {
        let message = format!("{other} still runs it: waiting for that copy to stop");
        p.blocked(VmReason::RunningElsewhere, message, Next::Retry)
    } else {
        let message = format!(
            "{other} runs it with its own local disks: it does not start here while that copy runs (a Relocation, or its placement naming this node, moves it here live)"
        );
        p.blocked(VmReason::RelocationRequired, message, Next::Retry)
    }
}

/// Leave a running (or paused) VM as it is, saying why it is not as
/// desired.
fn keep_running(d: &Desired, o: &Observed, reason: VmReason, message: String) -> Plan {
    let (phase, config) = match &o.state {
        VmState::Paused { config, .. } => (VmPhase::Paused, Some(config)),
        VmState::Running { config, .. } => (VmPhase::Running, Some(config)),
        _ => (VmPhase::Pending, None),
    };
    let mut p = Plan::new(phase, Some(d.me.clone())).blocked(reason, message, Next::Poll);
    p.pending_restart = config.map(|c| diff(c, &d.config)).unwrap_or_default();
    p
}

/// Everything a deleted VM left here goes: the VM, its volumes, its taps.
fn deletion(d: &Desired, o: &Observed) -> Plan {
    let mut p = Plan::new(VmPhase::Stopped, None);
    p.report = false;
    p.next = Next::Done;
    match o.state {
        VmState::Running { .. } | VmState::Paused { .. } => {
            p.actions.push(Action::Stop {
                timeout: d.stop_timeout,
            });
            p.actions.push(Action::Remove);
        }
        VmState::Stopped(_) => p.actions.push(Action::Remove),
        VmState::Absent => {}
    }
    for disk in &d.disks {
        if o.missing_volumes.contains(&disk.volume) {
            continue;
        }
        let volume = disk.volume.clone();
        p.actions.push(match d.retain_until_ms {
            Some(until) => Action::RetainVolume {
                retained: crate::model::names::retained_volume(&volume, until),
                volume,
            },
            None => Action::DestroyVolume { volume },
        });
    }
    for t in &d.taps {
        p.actions.push(Action::RemoveTap { tap: t.tap.clone() });
    }
    p
}

/// The actions that make the missing volumes and every tap.
fn provision(d: &Desired, o: &Observed) -> Vec<Action> {
    let mut out = Vec::new();
    for disk in d
        .disks
        .iter()
        .filter(|v| o.missing_volumes.contains(&v.volume))
    {
        let volume = disk.volume.clone();
        if let Some(retained) = o.retained.get(&volume) {
            out.push(Action::RestoreVolume {
                retained: retained.clone(),
                volume,
            });
            continue;
        }
        out.push(match &disk.source {
            VolumeSource::Blank { size } => Action::CreateVolume {
                volume,
                size: *size,
            },
            VolumeSource::Clone {
                source,
                size,
                from_vm,
                suit,
            } => Action::CloneVolume {
                volume,
                source: source.clone(),
                size: *size,
                from_vm: from_vm.clone(),
                suit: suit.clone(),
            },
        });
    }
    for t in &d.taps {
        out.push(Action::EnsureTap {
            tap: t.tap.clone(),
            bridge: t.bridge.clone(),
            mtu: t.mtu,
        });
    }
    out
}

/// Start with the desired configuration and disks.
pub fn start(d: &Desired) -> Action {
    Action::Start {
        config: Box::new(d.config.clone()),
        disks: d
            .disks
            .iter()
            .map(|x| Attach {
                name: x.name.clone(),
                volume: x.volume.clone(),
                bus: x.bus,
                read_only: x.read_only,
            })
            .collect(),
    }
}

/// Why a VM that would start cannot: volumes it had are gone, or the
/// volumes to clone from do not exist.
fn cannot_start(d: &Desired, o: &Observed) -> Option<(VmReason, String)> {
    if holds(&o.state) {
        return None;
    }
    if !o.lost_volumes.is_empty() {
        return Some((
            VmReason::VolumeMissing,
            format!(
                "volume(s) {} existed and are gone (removed outside deorch?); they are not recreated: restore them, or delete the VM",
                o.lost_volumes.join(", ")
            ),
        ));
    }
    if d.power != PowerState::Stopped && !o.missing_sources.is_empty() {
        return Some((
            VmReason::SourceMissing,
            format!(
                "source volume(s) {} do not exist",
                o.missing_sources.join(", ")
            ),
        ));
    }
    None
}

/// The VM runs here: power state and restart policy decide.
fn on_node(d: &Desired, o: &Observed) -> Plan {
    let me = Some(d.me.clone());
    if let Some((reason, message)) = cannot_start(d, o) {
        return Plan::new(VmPhase::Pending, me).blocked(reason, message, Next::Retry);
    }
    let mut p = Plan::new(VmPhase::Pending, me);
    match (d.power, &o.state) {
        (PowerState::Running, VmState::Running { config, .. }) => {
            p.phase = VmPhase::Running;
            p.pending_restart = diff(config, &d.config);
        }
        (PowerState::Running, VmState::Paused { config, .. }) => {
            p.actions.push(Action::Resume);
            p.phase = VmPhase::Running;
            p.pending_restart = diff(config, &d.config);
        }
        (PowerState::Paused, VmState::Running { config, .. }) => {
            p.actions.push(Action::Pause);
            p.phase = VmPhase::Paused;
            p.pending_restart = diff(config, &d.config);
        }
        (PowerState::Paused, VmState::Paused { config, .. }) => {
            p.phase = VmPhase::Paused;
            p.pending_restart = diff(config, &d.config);
        }
        (PowerState::Stopped, VmState::Running { .. } | VmState::Paused { .. }) => {
            p.actions.push(Action::Stop {
                timeout: d.stop_timeout,
            });
            p.phase = VmPhase::Stopped;
        }
        // Down by itself (a guest power-off, which leaves QEMU in its
        // `shutdown` state, or a crash): a stop asked now is recorded (and
        // ends the lingering process), so a later start is a start, not
        // a restart the restart policy may refuse (`deorch vm start`).
        (PowerState::Stopped, VmState::Stopped(reason)) if *reason != StopReason::Requested => {
            p.actions = provision(d, o);
            p.actions.push(Action::Stop {
                timeout: d.stop_timeout,
            });
            p.phase = VmPhase::Stopped;
        }
        (PowerState::Stopped, _) => {
            p.actions = provision(d, o);
            p.phase = VmPhase::Stopped;
        }
        (_, VmState::Stopped(StopReason::Crashed)) if d.restart == RestartPolicy::Never => {
            let message = "QEMU exited unexpectedly and restartPolicy is Never".to_string();
            p.phase = VmPhase::Failed;
            p = p.blocked(VmReason::Crashed, message, Next::Poll);
        }
        (_, VmState::Stopped(StopReason::GuestShutdown)) if d.restart != RestartPolicy::Always => {
            let message = format!("the guest powered off and restartPolicy is {:?}", d.restart);
            p.phase = VmPhase::Stopped;
            p = p.blocked(VmReason::GuestShutdown, message, Next::Poll);
        }
        (power, state) => {
            p.actions = provision(d, o);
            p.actions.push(start(d));
            p.is_restart = matches!(
                state,
                VmState::Stopped(StopReason::Crashed | StopReason::GuestShutdown)
            );
            p.phase = VmPhase::Running;
            if power == PowerState::Paused {
                p.actions.push(Action::Pause);
                p.phase = VmPhase::Paused;
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

#[cfg(test)]
mod tests {
    use super::super::resolve::DesiredDisk;
    use super::super::status::walk;
    use super::*;
    use crate::model::vm::Machine;

    fn desired(power: PowerState, restart: RestartPolicy) -> Desired {
        Desired {
            me: "sat-1".into(),
            site: Site::Here,
            deleted: false,
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
            disks: vec![DesiredDisk {
                name: "root".into(),
                volume: "vm-default-a-root".into(),
                source: VolumeSource::Clone {
                    source: "suit-default-tiny".into(),
                    size: None,
                    from_vm: None,
                    suit: None,
                },
                bus: DiskBus::Virtio,
                read_only: false,
            }],
            taps: vec![],
            power,
            restart,
            stop_timeout: Duration::from_secs(30),
            retain_until_ms: None,
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
            retained: Default::default(),
            missing_sources: vec![],
            lost_volumes: vec![],
            running_elsewhere: vec![],
            reported_here: false,
        }
    }

    fn running(cfg: &VmConfig) -> VmState {
        VmState::Running {
            pid: 1,
            started_ms: 0,
            config: Box::new(cfg.clone()),
        }
    }

    fn paused(cfg: &VmConfig) -> VmState {
        VmState::Paused {
            pid: 1,
            started_ms: 0,
            config: Box::new(cfg.clone()),
        }
    }

    #[test]
    fn a_dry_run_reads_each_step_in_words() {
        let d = desired(PowerState::Running, RestartPolicy::Always);
        let plan = plan(&d, &observed(VmState::Absent, true));
        let lines: Vec<String> = plan.actions.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec![
                "clone volume suit-default-tiny into volume vm-default-a-root".to_string(),
                "start the VM: 1 vCPU(s), 512Mi memory, machine q35; disk root = volume vm-default-a-root on virtio".to_string(),
            ]
        );
        assert_eq!(stop().to_string(), "stop the VM (forced after 30 s)");
    }

    #[test]
    fn a_deletion_keeps_the_volumes_and_a_return_takes_them_back() {
        let mut gone = desired(PowerState::Running, RestartPolicy::Always);
        gone.deleted = true;
        gone.retain_until_ms = Some(1000);
        let p = plan(&gone, &observed(running(&gone.config), false));
        let kept = "retained.1000.vm-default-a-root".to_string();
        assert_eq!(
            p.actions,
            vec![
                stop(),
                Action::Remove,
                Action::RetainVolume {
                    volume: "vm-default-a-root".into(),
                    retained: kept.clone(),
                },
            ]
        );
        // A purge (or no retention) destroys.
        gone.retain_until_ms = None;
        let p = plan(&gone, &observed(VmState::Absent, false));
        assert_eq!(
            p.actions,
            vec![Action::DestroyVolume {
                volume: "vm-default-a-root".into()
            }]
        );
        // The VM declared again: its kept volume comes back, not a clone.
        let back = desired(PowerState::Running, RestartPolicy::Always);
        let mut o = observed(VmState::Absent, true);
        o.retained.insert("vm-default-a-root".into(), kept.clone());
        let p = plan(&back, &o);
        assert_eq!(
            p.actions[0],
            Action::RestoreVolume {
                retained: kept,
                volume: "vm-default-a-root".into(),
            }
        );
        assert!(
            matches!(p.actions[1], Action::Start { .. }),
            "{:?}",
            p.actions
        );
    }

    fn clone_root() -> Action {
        Action::CloneVolume {
            volume: "vm-default-a-root".into(),
            source: "suit-default-tiny".into(),
            size: None,
            from_vm: None,
            suit: None,
        }
    }

    fn stop() -> Action {
        Action::Stop {
            timeout: Duration::from_secs(30),
        }
    }

    #[test]
    fn a_new_vm_is_provisioned_then_started() {
        let d = desired(PowerState::Running, RestartPolicy::Always);
        let p = plan(&d, &observed(VmState::Absent, true));
        assert_eq!(p.actions, vec![clone_root(), start(&d)]);
        assert_eq!(p.phase, VmPhase::Running);
        assert!(!p.is_restart);
        // The start carries the configuration and each disk's bus and mode.
        let Action::Start { config, disks } = &p.actions[1] else {
            unreachable!()
        };
        assert_eq!(**config, d.config);
        assert_eq!(
            disks,
            &vec![Attach {
                name: "root".into(),
                volume: "vm-default-a-root".into(),
                bus: DiskBus::Virtio,
                read_only: false,
            }]
        );
    }

    #[test]
    fn missing_sources_block_the_start() {
        let d = desired(PowerState::Running, RestartPolicy::Always);
        let mut o = observed(VmState::Absent, true);
        o.missing_sources.push("suit-default-tiny".into());
        let p = plan(&d, &o);
        assert!(p.actions.is_empty());
        assert_eq!(p.blocked.unwrap().0, VmReason::SourceMissing);
    }

    #[test]
    fn a_volume_lost_behind_our_back_is_not_recreated() {
        let d = desired(PowerState::Running, RestartPolicy::Always);
        let mut o = observed(VmState::Stopped(StopReason::Crashed), true);
        o.lost_volumes.push("vm-default-a-root".into());
        let p = plan(&d, &o);
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        assert_eq!(p.blocked.unwrap().0, VmReason::VolumeMissing);
        // A running VM keeps running (QEMU still holds the file).
        let cfg = d.config.clone();
        let mut o = observed(running(&cfg), true);
        o.lost_volumes.push("vm-default-a-root".into());
        assert_eq!(plan(&d, &o).phase, VmPhase::Running);
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
            let d = desired(PowerState::Running, policy);
            let p = plan(&d, &observed(VmState::Stopped(reason), false));
            assert_eq!(
                p.actions.contains(&start(&d)),
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
        let paused = paused(&d.config);
        let cases = [
            (PowerState::Running, run.clone(), vec![]),
            (PowerState::Running, paused.clone(), vec![Action::Resume]),
            (PowerState::Paused, run.clone(), vec![Action::Pause]),
            (
                PowerState::Paused,
                VmState::Absent,
                vec![start(&d), Action::Pause],
            ),
            (PowerState::Stopped, run.clone(), vec![stop()]),
            (PowerState::Stopped, paused, vec![stop()]),
            (
                PowerState::Stopped,
                VmState::Stopped(StopReason::Requested),
                vec![],
            ),
            // A guest that powered off, or a crash, then a stop: recorded
            // as asked, so the next start is not refused as a restart.
            (
                PowerState::Stopped,
                VmState::Stopped(StopReason::GuestShutdown),
                vec![stop()],
            ),
            (
                PowerState::Stopped,
                VmState::Stopped(StopReason::Crashed),
                vec![stop()],
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

    /// One row of the table: the situation, and what the plan must say.
    struct Row {
        name: &'static str,
        site: Site,
        power: PowerState,
        deleted: bool,
        state: VmState,
        missing: bool,
        elsewhere: Vec<&'static str>,
        reported_here: bool,
        actions: Vec<Action>,
        phase: VmPhase,
        node: Option<&'static str>,
        reason: Option<VmReason>,
        report: bool,
        next: Next,
    }

    fn row(name: &'static str, site: Site, state: VmState) -> Row {
        Row {
            name,
            site,
            power: PowerState::Running,
            deleted: false,
            state,
            missing: false,
            elsewhere: vec![],
            reported_here: false,
            actions: vec![],
            phase: VmPhase::Running,
            node: Some("sat-1"),
            reason: None,
            report: true,
            next: Next::Poll,
        }
    }

    fn diverged() -> Action {
        Action::KeepDiverged {
            vm: "default/a".into(),
            disks: vec![("vm-default-a-root".into(), "root".into())],
        }
    }

    fn table(d: &Desired) -> Vec<Row> {
        let run = running(&d.config);
        let mut drift = d.config.clone();
        drift.cpus = 4;
        let pinned = Site::PinnedElsewhere {
            node: "sat-2".into(),
            failed: None,
        };
        let elected = Site::Elsewhere {
            node: "sat-2".into(),
            epoch: 3,
        };
        let unsched = Site::Unschedulable {
            why: "no node is high".into(),
        };
        let ours = Site::Here;
        vec![
            Row {
                missing: true,
                actions: vec![clone_root(), start(d)],
                ..row("absent: create and start", ours.clone(), VmState::Absent)
            },
            row("running, same config: nothing", ours.clone(), run.clone()),
            Row {
                reason: None,
                ..row(
                    "config drift: wait for a restart",
                    ours.clone(),
                    running(&drift),
                )
            },
            Row {
                power: PowerState::Stopped,
                actions: vec![stop()],
                phase: VmPhase::Stopped,
                ..row("stopped desired: stop", ours.clone(), run.clone())
            },
            Row {
                power: PowerState::Stopped,
                missing: true,
                actions: vec![clone_root()],
                phase: VmPhase::Stopped,
                ..row(
                    "stopped desired, absent: provision only",
                    ours.clone(),
                    VmState::Absent,
                )
            },
            Row {
                actions: vec![stop()],
                phase: VmPhase::Elsewhere,
                node: Some("sat-2"),
                reason: Some(VmReason::PlacedElsewhere),
                next: Next::Retry,
                ..row(
                    "elected elsewhere, not yet running there: stop, keep disks as they are",
                    elected.clone(),
                    run.clone(),
                )
            },
            Row {
                actions: vec![stop(), Action::Remove, diverged()],
                phase: VmPhase::Elsewhere,
                node: Some("sat-2"),
                reason: Some(VmReason::PlacedElsewhere),
                elsewhere: vec!["sat-2"],
                next: Next::Done,
                ..row(
                    "elected elsewhere and running there: stop, keep disks as a diverged replica",
                    elected.clone(),
                    run.clone(),
                )
            },
            Row {
                actions: vec![Action::Remove, diverged()],
                phase: VmPhase::Elsewhere,
                node: Some("sat-2"),
                reason: Some(VmReason::PlacedElsewhere),
                elsewhere: vec!["sat-2"],
                next: Next::Done,
                ..row(
                    "elected elsewhere and running there, stopped here: keep disks as a diverged replica",
                    elected.clone(),
                    VmState::Stopped(StopReason::Requested),
                )
            },
            Row {
                phase: VmPhase::Elsewhere,
                node: Some("sat-2"),
                reason: Some(VmReason::PlacedElsewhere),
                elsewhere: vec!["sat-2"],
                missing: true,
                next: Next::Done,
                ..row(
                    "elected elsewhere, nothing here: say where",
                    elected,
                    VmState::Absent,
                )
            },
            Row {
                actions: vec![Action::Pause],
                phase: VmPhase::Paused,
                reason: Some(VmReason::NoQuorum),
                next: Next::Retry,
                ..row(
                    "strict, no majority seen, running: pause",
                    Site::NoQuorum,
                    run.clone(),
                )
            },
            Row {
                phase: VmPhase::Paused,
                reason: Some(VmReason::NoQuorum),
                next: Next::Retry,
                ..row(
                    "strict, no majority seen, paused: stay paused",
                    Site::NoQuorum,
                    paused(&d.config),
                )
            },
            Row {
                phase: VmPhase::Pending,
                node: None,
                reason: Some(VmReason::NoQuorum),
                next: Next::Retry,
                ..row(
                    "strict, no majority seen, absent: not started",
                    Site::NoQuorum,
                    VmState::Absent,
                )
            },
            row("pending while running: keep", Site::Pending, run.clone()),
            Row {
                phase: VmPhase::Paused,
                reason: Some(VmReason::ElectionPending),
                ..row(
                    "pending while paused (fenced): not resumed until the claim is back",
                    Site::Pending,
                    paused(&d.config),
                )
            },
            Row {
                actions: vec![Action::Resume],
                ..row(
                    "elected here while paused: resume",
                    ours.clone(),
                    paused(&d.config),
                )
            },
            Row {
                phase: VmPhase::Pending,
                node: None,
                reason: Some(VmReason::ElectionPending),
                next: Next::Done,
                ..row("pending, absent: wait", Site::Pending, VmState::Absent)
            },
            Row {
                phase: VmPhase::Unschedulable,
                node: None,
                reason: Some(VmReason::Unschedulable),
                next: Next::Retry,
                ..row(
                    "unschedulable: not started",
                    unsched.clone(),
                    VmState::Absent,
                )
            },
            Row {
                reason: Some(VmReason::Unschedulable),
                ..row(
                    "unschedulable while running: keep, say why",
                    unsched.clone(),
                    run.clone(),
                )
            },
            Row {
                power: PowerState::Stopped,
                actions: vec![stop()],
                phase: VmPhase::Stopped,
                ..row("unschedulable, stop asked: stop", unsched, run.clone())
            },
            Row {
                reason: Some(VmReason::RelocationRequired),
                ..row(
                    "re-pinned while running with disks: refuse, keep",
                    pinned.clone(),
                    run.clone(),
                )
            },
            Row {
                power: PowerState::Stopped,
                actions: vec![stop()],
                phase: VmPhase::Elsewhere,
                node: Some("sat-2"),
                reason: Some(VmReason::PlacedElsewhere),
                next: Next::Done,
                ..row(
                    "re-pinned and stopped: stop here",
                    pinned.clone(),
                    run.clone(),
                )
            },
            Row {
                phase: VmPhase::Elsewhere,
                node: Some("sat-2"),
                reason: Some(VmReason::PlacedElsewhere),
                report: false,
                next: Next::Done,
                ..row(
                    "pinned elsewhere, never here: silent",
                    pinned.clone(),
                    VmState::Absent,
                )
            },
            Row {
                reported_here: true,
                phase: VmPhase::Elsewhere,
                node: Some("sat-2"),
                reason: Some(VmReason::PlacedElsewhere),
                next: Next::Done,
                ..row(
                    "pinned elsewhere, was here: say where",
                    pinned,
                    VmState::Absent,
                )
            },
            Row {
                elsewhere: vec!["sat-0"],
                missing: true,
                phase: VmPhase::Pending,
                node: Some("sat-0"),
                reason: Some(VmReason::RelocationRequired),
                next: Next::Retry,
                ..row(
                    "pinned here, runs on sat-0: never a second copy",
                    ours.clone(),
                    VmState::Absent,
                )
            },
            Row {
                elsewhere: vec!["sat-0"],
                ..row("runs here and elsewhere: keep", ours.clone(), run.clone())
            },
            Row {
                deleted: true,
                actions: vec![
                    stop(),
                    Action::Remove,
                    Action::DestroyVolume {
                        volume: "vm-default-a-root".into(),
                    },
                ],
                phase: VmPhase::Stopped,
                node: None,
                report: false,
                next: Next::Done,
                ..row("deleted: stop, remove, destroy", ours.clone(), run)
            },
            Row {
                deleted: true,
                missing: true,
                phase: VmPhase::Stopped,
                node: None,
                report: false,
                next: Next::Done,
                ..row("deleted, nothing here: nothing", ours, VmState::Absent)
            },
        ]
    }

    #[test]
    fn the_plan_table() {
        let base = desired(PowerState::Running, RestartPolicy::Always);
        for r in table(&base) {
            let mut d = base.clone();
            d.site = r.site.clone();
            d.power = r.power;
            d.deleted = r.deleted;
            let mut o = observed(r.state.clone(), r.missing);
            o.running_elsewhere = r.elsewhere.iter().map(|s| s.to_string()).collect();
            o.reported_here = r.reported_here;
            let p = plan(&d, &o);
            let n = r.name;
            assert_eq!(p.actions, r.actions, "{n}: actions");
            assert_eq!(p.phase, r.phase, "{n}: phase");
            assert_eq!(p.node.as_deref(), r.node, "{n}: node");
            assert_eq!(p.blocked.as_ref().map(|b| b.0), r.reason, "{n}: reason");
            assert_eq!(p.report, r.report, "{n}: report");
            assert_eq!(p.next, r.next, "{n}: next");
            // Every plan's phase is reachable through its own actions.
            walk(&o.state, &p.actions, p.phase).unwrap_or_else(|e| panic!("{n}: {e}"));
        }
    }

    #[test]
    fn a_diskless_vm_hands_over_instead_of_waiting_for_relocation() {
        let mut d = desired(PowerState::Running, RestartPolicy::Always);
        d.disks.clear();
        d.config.disks.clear();
        // The old node stops its copy...
        d.site = Site::PinnedElsewhere {
            node: "sat-2".into(),
            failed: None,
        };
        let p = plan(&d, &observed(running(&d.config), false));
        assert_eq!(p.actions, vec![stop()]);
        assert_eq!(p.phase, VmPhase::Elsewhere);
        // ...and the new one waits for that, then starts it.
        d.site = Site::Here;
        let mut o = observed(VmState::Absent, false);
        o.running_elsewhere = vec!["sat-1".into()];
        let p = plan(&d, &o);
        assert!(p.actions.is_empty());
        assert_eq!(p.blocked.unwrap().0, VmReason::RunningElsewhere);
        o.running_elsewhere.clear();
        assert_eq!(plan(&d, &o).actions, vec![start(&d)]);
    }

    #[test]
    fn the_transition_check_rejects_a_pause_before_a_start() {
        let d = desired(PowerState::Paused, RestartPolicy::Always);
        let stopped = VmState::Stopped(StopReason::Requested);
        assert!(walk(&stopped, &[start(&d), Action::Pause], VmPhase::Paused).is_ok());
        assert!(walk(&stopped, &[Action::Pause], VmPhase::Paused).is_err());
        assert!(walk(&stopped, &[], VmPhase::Paused).is_err());
        assert!(walk(&running(&d.config), &[], VmPhase::Provisioning).is_err());
        assert!(walk(&running(&d.config), &[], VmPhase::Unschedulable).is_err());
    }
}
