//! Resolve: the spec, the objects it names (spacesuit, source VMs,
//! networks) and the cluster's decision, read once, into a complete
//! [`Desired`]. Everything that reads the store or the placement for a VM
//! reconcile happens here; [`super::plan`] and [`super::execute`] never do.

use std::collections::BTreeMap;
use std::time::Duration;

use super::super::{names, Ctx, Elected, ReconcileError};
use crate::driver::{NicConfig, VmConfig};
use crate::gossip::placement::{unmet, VmRequest};
use crate::gossip::{DocKey, NodeId, NodeStatus, Resources, TagSet};
use crate::model::vm::{
    Disk, DiskBus, Machine, Nic, PowerState, RestartPolicy, VirtualMachineSpec,
};
use crate::model::{
    Kind, NetworkSpec, ObjectKey, Performance, SatelliteSpec, SpacesuitSpec, VirtualMachineStatus,
};

/// The name of a spacesuit's disk in the VMs that take it by default (a
/// spacesuit has one disk, its volume).
pub const SPACESUIT_DISK: &str = "root";

/// How long a graceful stop may take when the spec does not say.
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the VM must run, as this node sees it: the cluster's decision,
/// read once per reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Site {
    /// Here: placed here by hand, elected here, or a standalone node whose
    /// Satellite satisfies the VM's placement.
    Here,
    /// The election placed it on another node: a copy here stops, its
    /// disks stay.
    Elsewhere {
        /// The winner.
        node: String,
        /// The winning claim's epoch.
        epoch: u64,
    },
    /// The election has no settled answer yet.
    Pending,
    /// No node satisfies the VM's placement constraints.
    Unschedulable {
        /// Which constraints fail, and where.
        why: String,
    },
    /// Its node is down with its disks (a VM that holds data).
    NodeLost {
        /// The dead node.
        node: String,
        /// Its claim's epoch.
        epoch: u64,
    },
    /// Strict mode: it is this node's, but this node has not seen a
    /// majority of the cluster for a while.
    NoQuorum,
    /// `placement.node` or `placement.address` names another node.
    PinnedElsewhere {
        /// That node (or address).
        node: String,
        /// Why the last live move there failed (the relocation agent's
        /// word), if it did.
        failed: Option<String>,
    },
}

/// The cluster's decision about one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Where it must run.
    pub site: Site,
    /// Other live nodes that report running it.
    pub running_elsewhere: Vec<String>,
}

/// Read the cluster's decision for `key` (the one read of the placement in
/// a VM reconcile).
pub fn decide(ctx: &Ctx, key: &ObjectKey, spec: &VirtualMachineSpec) -> Decision {
    let running_elsewhere = ctx
        .placement
        .as_ref()
        .map(|p| p.running_on(key))
        .unwrap_or_default();
    let pinned = spec
        .placement
        .as_ref()
        .and_then(|p| p.node.clone().map(Ok).or(p.address.clone().map(Err)));
    let site = match pinned {
        Some(Ok(node)) if node == ctx.config.node_name => Site::Here,
        Some(Err(address)) if ctx.config.node_addresses.contains(&address) => Site::Here,
        Some(Ok(node) | Err(node)) => Site::PinnedElsewhere {
            node,
            failed: ctx
                .placement
                .as_ref()
                .and_then(|p| p.relocation_failure(key)),
        },
        None => match &ctx.placement {
            None => standalone(ctx, key, spec),
            Some(p) => match p.elected(key) {
                Elected::Here => Site::Here,
                Elected::Elsewhere { node, epoch } => Site::Elsewhere { node, epoch },
                Elected::Pending => Site::Pending,
                Elected::Unschedulable { why } => Site::Unschedulable { why },
                Elected::NodeLost { node, epoch } => Site::NodeLost { node, epoch },
                Elected::NoQuorum => Site::NoQuorum,
            },
        },
    };
    Decision {
        site,
        running_elsewhere,
    }
}

/// A node without gossip runs an automatically placed VM when its own
/// Satellite's tags and performance class satisfy the VM's placement
/// (capacity and cordon are the election's business).
fn standalone(ctx: &Ctx, key: &ObjectKey, spec: &VirtualMachineSpec) -> Site {
    let vm = DocKey::new(key.kind.as_str(), &key.namespace, &key.name);
    let Some(req) = VmRequest::from_spec(vm, spec) else {
        return Site::Here;
    };
    let node = &ctx.config.node_name;
    let sat = ctx
        .typed::<SatelliteSpec>(Kind::Satellite, "", node)
        .map(|s| s.spec)
        .unwrap_or_default();
    let me = NodeStatus::idle(
        NodeId(node.clone()),
        0,
        TagSet::from(&sat.tags),
        sat.performance.unwrap_or(Performance::Low),
        Resources {
            cpu_millis: u64::MAX,
            memory: u64::MAX,
            storage: u64::MAX,
        },
    );
    let unmet = unmet(&req, &me);
    if unmet.is_empty() {
        return Site::Here;
    }
    let unmet: Vec<String> = unmet.iter().map(|u| u.to_string()).collect();
    Site::Unschedulable {
        why: format!(
            "this node ({node}, without gossip) does not satisfy the VM's placement: {} (see its Satellite object)",
            unmet.join(", ")
        ),
    }
}

/// Whether this node runs the VM `key`: placed here by hand, or here by
/// the cluster's decision.
pub fn is_mine(ctx: &Ctx, key: &ObjectKey, spec: &VirtualMachineSpec) -> bool {
    decide(ctx, key, spec).site == Site::Here
}

/// Whether `spec` is placed automatically (no node name, no address).
pub fn is_auto(spec: &VirtualMachineSpec) -> bool {
    spec.placement
        .as_ref()
        .is_none_or(|p| p.node.is_none() && p.address.is_none())
}

/// Where a volume's content comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum VolumeSource {
    /// Clone of another volume.
    Clone {
        /// Source volume.
        source: String,
        /// Grow to this size.
        size: Option<u64>,
        /// The VM whose disk the source is, when it is one: cloned through
        /// its hypervisor if it runs here.
        from_vm: Option<SourceVm>,
        /// How this node gets the spacesuit volume the source is, when
        /// it is not here: from the spacesuit's image (fetched from a
        /// peer by its hash), or from a node that holds the volume.
        suit: Option<Box<SuitCopy>>,
    },
    /// Empty.
    Blank {
        /// Size in bytes.
        size: u64,
    },
}

/// How a node without a spacesuit's volume gets what a VM's disk is
/// cloned from.
#[derive(Debug, Clone, PartialEq)]
pub enum SuitCopy {
    /// The spacesuit's image, imported here (fetched from a peer by its
    /// SHA-256 when the file is not here).
    Image(SuitImage),
    /// A spacesuit made from a VM on another node: the VM's disk is
    /// copied straight from the spacesuit's volume on a node that holds
    /// it.
    Volume {
        /// The Spacesuit.
        spacesuit: ObjectKey,
        /// Live nodes whose status lists its volume.
        holders: Vec<String>,
    },
}

/// A spacesuit's image, known by its SHA-256.
#[derive(Debug, Clone, PartialEq)]
pub struct SuitImage {
    /// The Spacesuit.
    pub spacesuit: ObjectKey,
    /// The path its spec names.
    pub path: String,
    /// Its format, when the spec says.
    pub format: Option<&'static str>,
    /// Its SHA-256 (lower-case hex).
    pub sha256: String,
}

/// A VM whose disks are cloned, and its disks' volumes.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceVm {
    /// Its hypervisor ID (`namespace/name`).
    pub id: String,
    /// Volume → disk name, for each of its disks.
    pub disks: BTreeMap<String, String>,
    /// The node that holds its disks when that is another node (it runs
    /// the VM, or the election or its placement puts it there): a disk
    /// not here is copied from it.
    pub holder: Option<String>,
}

/// One disk as the VM gets it.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredDisk {
    /// Disk name in the VM.
    pub name: String,
    /// The volume holding it.
    pub volume: String,
    /// Where a new volume's content comes from.
    pub source: VolumeSource,
    /// Bus.
    pub bus: DiskBus,
    /// Attached read-only.
    pub read_only: bool,
}

/// A tap the VM's NIC plugs into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tap {
    /// Host device.
    pub tap: String,
    /// Bridge it is on.
    pub bridge: String,
    /// MTU.
    pub mtu: u16,
}

/// The VM fully resolved: everything the plan and its actions need.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// This node's name.
    pub me: String,
    /// Where it must run.
    pub site: Site,
    /// The VM was deleted: stop it and remove what it had here.
    pub deleted: bool,
    /// What the hypervisor runs (disk images are added at start, from the
    /// storage driver).
    pub config: VmConfig,
    /// Disks, in boot order.
    pub disks: Vec<DesiredDisk>,
    /// Taps.
    pub taps: Vec<Tap>,
    /// Power state.
    pub power: PowerState,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Graceful stop timeout.
    pub stop_timeout: Duration,
    /// For a deletion: keep the volumes under retained names until this
    /// time (ms since the epoch); `None`: destroy them (a purge, or no
    /// retention).
    pub retain_until_ms: Option<u64>,
}

fn blocked(reason: crate::model::vm::VmReason, message: String) -> ReconcileError {
    ReconcileError::transient(reason.as_str(), message)
}

/// Resolve the live VM `key` against the store, where `site` says it runs.
pub fn resolve(
    ctx: &Ctx,
    key: &ObjectKey,
    spec: &VirtualMachineSpec,
    site: Site,
) -> Result<Desired, ReconcileError> {
    let ns = key.namespace.as_str();
    let suit = spacesuit(ctx, ns, spec)?;
    let suit = suit.as_ref();
    let disks = disks(ctx, key, spec, suit)?;
    let (nics, taps) = nics(ctx, key, effective_nics(spec, suit))?;
    let config = VmConfig {
        id: format!("{ns}/{}", key.name),
        cpus: spec
            .cpu
            .or(suit.and_then(|s| s.cpu))
            .map(|c| (c.0 / 1000) as u32)
            .unwrap_or(1),
        memory: spec
            .memory
            .or(suit.and_then(|s| s.memory))
            .map(|m| m.0)
            .unwrap_or(512 << 20),
        machine: spec
            .machine
            .or(suit.and_then(|s| s.machine))
            .unwrap_or(Machine::Q35),
        cpu_model: spec.cpu_model.clone(),
        boot: spec.boot.clone().or(suit.and_then(|s| s.boot.clone())),
        disks: disks
            .iter()
            .map(|d| (d.name.clone(), d.volume.clone()))
            .collect(),
        disk_images: Vec::new(),
        nics,
        spice: spec.console.as_ref().is_some_and(|c| c.spice),
    };
    Ok(Desired {
        me: ctx.config.node_name.clone(),
        site,
        deleted: false,
        config,
        disks,
        taps,
        power: spec.power_state,
        restart: spec.restart_policy,
        stop_timeout: stop_timeout(spec),
        retain_until_ms: None,
    })
}

/// What a deleted VM may have left here: its disks (those the spec names,
/// the spacesuit's default ones, those its last status reported) and taps.
/// Never fails: a deleted VM's spacesuit or networks may be gone too.
pub fn for_deletion(
    ctx: &Ctx,
    key: &ObjectKey,
    spec: &VirtualMachineSpec,
    previous: &VirtualMachineStatus,
    purge: bool,
) -> Desired {
    let ns = key.namespace.as_str();
    let suit = spacesuit(ctx, ns, spec).ok().flatten();
    let mut volumes: BTreeMap<String, String> = previous
        .disks
        .iter()
        .map(|(d, v)| (v.clone(), d.clone()))
        .collect();
    for name in disk_names(spec, suit.as_ref()) {
        volumes.insert(names::vm_volume(ns, &key.name, &name), name);
    }
    let disks = volumes
        .into_iter()
        .map(|(volume, name)| DesiredDisk {
            name,
            volume,
            source: VolumeSource::Blank { size: 0 },
            bus: DiskBus::Virtio,
            read_only: false,
        })
        .collect();
    let taps = effective_nics(spec, suit.as_ref())
        .iter()
        .map(|n| Tap {
            tap: names::tap(ns, &key.name, &n.name),
            bridge: String::new(),
            mtu: 0,
        })
        .collect();
    let id = format!("{ns}/{}", key.name);
    Desired {
        me: ctx.config.node_name.clone(),
        site: Site::Here,
        deleted: true,
        config: VmConfig {
            id,
            cpus: 0,
            memory: 0,
            machine: Machine::Q35,
            cpu_model: None,
            boot: None,
            disks: Vec::new(),
            disk_images: Vec::new(),
            nics: Vec::new(),
            spice: false,
        },
        disks,
        taps,
        power: PowerState::Stopped,
        restart: spec.restart_policy,
        stop_timeout: stop_timeout(spec),
        retain_until_ms: super::super::retention::until(ctx, purge),
    }
}

fn stop_timeout(spec: &VirtualMachineSpec) -> Duration {
    spec.stop_timeout
        .map(|d| d.0)
        .unwrap_or(DEFAULT_STOP_TIMEOUT)
}

fn spacesuit(
    ctx: &Ctx,
    ns: &str,
    spec: &VirtualMachineSpec,
) -> Result<Option<SpacesuitSpec>, ReconcileError> {
    let Some(name) = &spec.spacesuit else {
        return Ok(None);
    };
    ctx.typed::<SpacesuitSpec>(Kind::Spacesuit, ns, name)
        .map(|s| Some(s.spec))
        .ok_or_else(|| {
            blocked(
                crate::model::vm::VmReason::SpacesuitNotFound,
                format!("spacesuit {ns}/{name} does not exist"),
            )
        })
}

/// The disks a VM has: `spec.disks`, or else a copy-on-write clone of each
/// of its spacesuit's disks (as a template clone does in Proxmox).
pub fn effective_disks(spec: &VirtualMachineSpec, suit: Option<&SpacesuitSpec>) -> Vec<Disk> {
    if !spec.disks.is_empty() {
        return spec.disks.clone();
    }
    let (Some(name), Some(_)) = (&spec.spacesuit, suit.and_then(|s| s.source.as_ref())) else {
        return Vec::new();
    };
    let mut disks = vec![Disk {
        name: SPACESUIT_DISK.into(),
        source: crate::model::vm::DiskSource {
            spacesuit: Some(name.clone()),
            ..Default::default()
        },
        bus: suit.and_then(|s| s.source.as_ref()).and_then(|s| s.bus),
        ..Default::default()
    }];
    // Its further disks (`spec.disks` of the spacesuit), in order; their
    // volumes are resolved by [`suit_disk`].
    for d in suit.map(|s| s.disks.as_slice()).unwrap_or_default() {
        disks.push(Disk {
            name: d.name.clone(),
            source: crate::model::vm::DiskSource {
                spacesuit: Some(name.clone()),
                ..Default::default()
            },
            bus: d.bus,
            ..Default::default()
        });
    }
    disks
}

/// The NICs a VM has: `spec.nics`, or else its spacesuit's (`spec.nics`
/// of the spacesuit).
pub fn effective_nics<'a>(
    spec: &'a VirtualMachineSpec,
    suit: Option<&'a SpacesuitSpec>,
) -> &'a [Nic] {
    match suit {
        Some(s) if spec.nics.is_empty() && spec.spacesuit.is_some() => &s.nics,
        _ => &spec.nics,
    }
}

/// The NICs of VM `ns`/`spec`, its spacesuit looked up in `store` (for
/// those that read VMs outside a reconcile: DHCP, the fabric).
pub fn vm_nics(store: &crate::store::Store, ns: &str, spec: &VirtualMachineSpec) -> Vec<Nic> {
    if !spec.nics.is_empty() {
        return spec.nics.clone();
    }
    let Some(name) = &spec.spacesuit else {
        return Vec::new();
    };
    store
        .get(&ObjectKey::new(Kind::Spacesuit, Some(ns), name))
        .filter(|r| !r.deleted)
        .and_then(|r| serde_json::from_value::<SpacesuitSpec>(r.object["spec"].clone()).ok())
        .map(|s| s.nics)
        .unwrap_or_default()
}

/// Give `spec` (a VM of namespace `ns`) its spacesuit's NICs when it
/// declares none, so that what reads `spec.nics` (DHCP tables, the
/// fabric) sees the NICs the VM really has.
pub fn inherit_nics(ctx: &Ctx, ns: &str, spec: &mut VirtualMachineSpec) {
    if spec.nics.is_empty() {
        if let Ok(Some(s)) = spacesuit(ctx, ns, spec) {
            spec.nics = s.nics;
        }
    }
}

/// The further disk `disk` of the spacesuit a VM takes its disks from,
/// when the VM declares none (`None`: not such a disk).
fn suit_disk<'a>(
    spec: &VirtualMachineSpec,
    suit: Option<&'a SpacesuitSpec>,
    disk: &str,
) -> Option<&'a crate::model::spacesuit::SpacesuitDisk> {
    if !spec.disks.is_empty() || spec.spacesuit.is_none() {
        return None;
    }
    suit?.disks.iter().find(|d| d.name == disk)
}

/// The names of a VM's disks (see [`effective_disks`]).
pub fn disk_names(spec: &VirtualMachineSpec, suit: Option<&SpacesuitSpec>) -> Vec<String> {
    effective_disks(spec, suit)
        .into_iter()
        .map(|d| d.name)
        .collect()
}

/// The names of the disks of VM `ns`/`spec` (its spacesuit looked up in
/// the store), for the reconcilers that copy a VM's disks.
pub fn vm_disk_names(ctx: &Ctx, ns: &str, spec: &VirtualMachineSpec) -> Vec<String> {
    disk_names(spec, spacesuit(ctx, ns, spec).ok().flatten().as_ref())
}

fn disks(
    ctx: &Ctx,
    key: &ObjectKey,
    spec: &VirtualMachineSpec,
    suit: Option<&SpacesuitSpec>,
) -> Result<Vec<DesiredDisk>, ReconcileError> {
    let ns = key.namespace.as_str();
    let mut out = Vec::new();
    for d in effective_disks(spec, suit) {
        let source = match (suit_disk(spec, suit, &d.name), &spec.spacesuit) {
            // A spacesuit's further disk: a clone of its own volume,
            // imported from its image (fetched by its hash when absent).
            (Some(f), Some(suit_name)) => VolumeSource::Clone {
                source: names::spacesuit_disk_volume(ns, suit_name, &f.name),
                size: None,
                from_vm: None,
                suit: f
                    .image
                    .sha256
                    .as_ref()
                    .map(|h| {
                        SuitCopy::Image(SuitImage {
                            spacesuit: ObjectKey::new(Kind::Spacesuit, Some(ns), suit_name),
                            sha256: h.to_ascii_lowercase(),
                            format: f.image.format.map(|f| f.as_str()),
                            path: f.image.path.clone(),
                        })
                    })
                    .map(Box::new),
            },
            _ => disk_source(ctx, ns, &d)?,
        };
        out.push(DesiredDisk {
            volume: names::vm_volume(ns, &key.name, &d.name),
            source,
            bus: d.bus.unwrap_or(DiskBus::Virtio),
            read_only: d.read_only,
            name: d.name,
        });
    }
    Ok(out)
}

fn disk_source(ctx: &Ctx, ns: &str, d: &Disk) -> Result<VolumeSource, ReconcileError> {
    let size = d.size.map(|s| s.0);
    let s = &d.source;
    if let Some(suit) = &s.spacesuit {
        let key = ObjectKey::new(Kind::Spacesuit, Some(ns), suit);
        let volume = names::spacesuit_volume(ns, suit);
        let source = ctx
            .typed::<SpacesuitSpec>(Kind::Spacesuit, ns, suit)
            .and_then(|m| m.spec.source);
        let copy = match source {
            Some(src) if src.virtual_machine.is_some() => Some(SuitCopy::Volume {
                spacesuit: key,
                holders: ctx
                    .placement
                    .as_ref()
                    .map(|p| p.volume_holders(&volume))
                    .unwrap_or_default(),
            }),
            Some(src) => src.image.and_then(|img| {
                Some(SuitCopy::Image(SuitImage {
                    spacesuit: key,
                    sha256: img.sha256?.to_ascii_lowercase(),
                    format: img.format.map(|f| f.as_str()),
                    path: img.path,
                }))
            }),
            None => None,
        };
        return Ok(VolumeSource::Clone {
            source: volume,
            size,
            from_vm: None,
            suit: copy.map(Box::new),
        });
    }
    if let Some(r) = &s.virtual_machine {
        let rns = r.namespace.as_deref().unwrap_or(ns);
        let not_found = || {
            blocked(
                crate::model::vm::VmReason::SourceNotFound,
                format!("VM {rns}/{} does not exist or has no disk", r.name),
            )
        };
        let vm = ctx.typed::<VirtualMachineSpec>(Kind::VirtualMachine, rns, &r.name);
        let suit = vm
            .as_ref()
            .and_then(|vm| spacesuit(ctx, rns, &vm.spec).ok().flatten());
        let names_of = vm
            .as_ref()
            .map(|vm| disk_names(&vm.spec, suit.as_ref()))
            .unwrap_or_default();
        let disk = match &r.disk {
            Some(d) => d.clone(),
            None => names_of.first().cloned().ok_or_else(not_found)?,
        };
        let holder = vm.as_ref().and_then(|vm| {
            let key = ObjectKey::new(Kind::VirtualMachine, Some(rns), &r.name);
            let d = decide(ctx, &key, &vm.spec);
            match d.site {
                Site::Here => None,
                Site::Elsewhere { node, .. } | Site::PinnedElsewhere { node, .. } => Some(node),
                _ => d.running_elsewhere.into_iter().next(),
            }
        });
        return Ok(VolumeSource::Clone {
            source: names::vm_volume(rns, &r.name, &disk),
            size,
            suit: None,
            from_vm: Some(SourceVm {
                id: format!("{rns}/{}", r.name),
                disks: names_of
                    .into_iter()
                    .map(|d| (names::vm_volume(rns, &r.name, &d), d))
                    .collect(),
                holder,
            }),
        });
    }
    if let Some(r) = &s.replica {
        let rns = r.namespace.as_deref().unwrap_or(ns);
        let disk = r.disk.clone().unwrap_or_else(|| "root".into());
        return Ok(VolumeSource::Clone {
            source: names::replica_volume(rns, &r.name, &disk),
            size,
            from_vm: None,
            suit: None,
        });
    }
    if let Some(r) = &s.fastr_copy {
        let rns = r.namespace.as_deref().unwrap_or(ns);
        let disk = match &r.disk {
            Some(d) => d.clone(),
            None => ctx
                .typed::<VirtualMachineSpec>(Kind::VirtualMachine, rns, &r.name)
                .and_then(|vm| vm.spec.disks.first().map(|d| d.name.clone()))
                .ok_or_else(|| {
                    blocked(
                        crate::model::vm::VmReason::SourceNotFound,
                        format!("VM {rns}/{} does not exist or has no disk", r.name),
                    )
                })?,
        };
        return Ok(VolumeSource::Clone {
            source: names::at_point(
                &names::fastr_copy(&names::vm_volume(rns, &r.name, &disk)),
                &r.point,
            ),
            size,
            from_vm: None,
            suit: None,
        });
    }
    Ok(VolumeSource::Blank {
        size: size.unwrap_or(0),
    })
}

fn nics(
    ctx: &Ctx,
    key: &ObjectKey,
    declared: &[Nic],
) -> Result<(Vec<NicConfig>, Vec<Tap>), ReconcileError> {
    let ns = key.namespace.as_str();
    let mut nics = Vec::new();
    let mut taps = Vec::new();
    for n in declared {
        let net = ctx
            .typed::<NetworkSpec>(Kind::Network, ns, &n.network)
            .ok_or_else(|| {
                blocked(
                    crate::model::vm::VmReason::NetworkNotFound,
                    format!("network {ns}/{} does not exist", n.network),
                )
            })?;
        let bridge = net
            .spec
            .bridge
            .clone()
            .unwrap_or_else(|| names::bridge(ns, &n.network));
        let tap = names::tap(ns, &key.name, &n.name);
        taps.push(Tap {
            tap: tap.clone(),
            bridge: bridge.clone(),
            mtu: net.spec.effective_mtu(),
        });
        // One field per spec setting the hypervisor needs: a new NIC
        // setting (e.g. the device model) is one line here.
        nics.push(NicConfig {
            name: n.name.clone(),
            mac: n
                .mac
                .clone()
                .unwrap_or_else(|| names::mac(ns, &key.name, &n.name)),
            tap,
            bridge,
            host_tap: ctx.drivers.net.host_interfaces(),
            model: n.model.unwrap_or_default(),
        });
    }
    Ok((nics, taps))
}
