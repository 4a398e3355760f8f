//! `VirtualMachine`: a QEMU/KVM guest, its disks, NICs, console, placement
//! and replica policy.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use schemars::Schema;

use super::common::{
    add_rule, exactly_one, given, ipv4_pattern, Condition, Cpu, Duration, GuestMemory, ObjectRef,
    Placement, PositiveDuration, Quantity, Vcpus, DNS1123_LABEL_PATTERN, MAC_PATTERN,
};
use super::network::DhcpOptions;
use super::phase::{advance, InvalidTransition, Phase};

/// Desired virtual machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = vm_rules)]
pub struct VirtualMachineSpec {
    /// The spacesuit whose boot settings and defaults this VM inherits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS1123_LABEL_PATTERN), length(max = 63))]
    pub spacesuit: Option<String>,
    /// Desired power state: `Running` (default), `Stopped` or `Paused`.
    #[serde(default)]
    pub power_state: PowerState,
    /// What to do when QEMU exits on its own: `Always` (default),
    /// `OnFailure` or `Never`.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Number of virtual CPUs (whole CPUs); defaults to the spacesuit's or 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Vcpus>")]
    pub cpu: Option<Cpu>,
    /// QEMU CPU model (e.g. `qemu64`, `host`, `max`, `EPYC`); defaults to
    /// `host` under KVM and `qemu64` under TCG. Under KVM a running VM
    /// with `host` or `max` moves live only to nodes with the same host
    /// CPU (the satellites' `status.cpu`); name a model to move freely.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_model: Option<String>,
    /// Guest memory; defaults to the spacesuit's or 512Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<GuestMemory>")]
    pub memory: Option<Quantity>,
    /// Machine type; defaults to the spacesuit's or `q35`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    /// Firmware: `bios` (default) or `uefi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
    /// Direct kernel boot; overrides the spacesuit's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<Boot>,
    /// Disks, in boot order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<Disk>,
    /// Network interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<Nic>,
    /// Graphical console (VNC/SPICE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<Console>,
    /// Where the VM runs; absent means the radar elects a satellite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// The tenant array on the satellite this VM's resources count against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS1123_LABEL_PATTERN), length(max = 63))]
    pub array: Option<String>,
    /// Automatic replicas: take one every `interval`, keep the newest `keep`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_policy: Option<ReplicaPolicy>,
    /// FASTR: asynchronous replication of the disks to other satellites.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fastr: Option<Fastr>,
    /// How long a graceful stop (ACPI power button) may take before the VM
    /// is forced off; default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<Duration>,
    /// The VM keeps nothing worth keeping on its disks (a cache, a build
    /// runner): when the node that runs it dies, another node may start it
    /// on fresh disks at once. Default `false`: a VM with a writable disk
    /// is taken to hold data and is never started elsewhere on a blank
    /// disk; it shows `NodeLost` until its node returns or an operator
    /// runs `deorch recover`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stateless: bool,
}

impl VirtualMachineSpec {
    /// Whether the VM's disks hold data that only its node has: a
    /// writable disk, and not `stateless`.
    pub fn holds_data(&self) -> bool {
        !self.stateless && self.disks.iter().any(|d| !d.read_only)
    }
}

/// Rules across fields: on `microvm` (no PCI bus) every NIC is virtio.
fn vm_rules(schema: &mut Schema) {
    add_rule(
        schema,
        serde_json::json!({
            "if": {"required": ["machine"], "properties": {"machine": {"const": "microvm"}}},
            "then": {"properties": {"nics": {"items": {"properties": {"model": {"enum": ["virtio", null]}}}}}}
        }),
    );
}

/// A disk has a source; a blank one needs a size.
fn disk_rules(schema: &mut Schema) {
    if let Some(serde_json::Value::Array(required)) = schema.get_mut("required") {
        required.push("source".into());
    }
    add_rule(
        schema,
        serde_json::json!({
            "if": {"required": ["source"], "properties": {"source": given("blank")}},
            "then": given("size")
        }),
    );
}

fn disk_source_rules(schema: &mut Schema) {
    exactly_one(
        schema,
        &[
            "spacesuit",
            "virtualMachine",
            "replica",
            "blank",
            "fastrCopy",
        ],
    );
}

/// Desired power state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PowerState {
    /// The VM should run.
    #[default]
    Running,
    /// The VM should be shut down (its disks stay).
    Stopped,
    /// The VM's CPUs should be paused.
    Paused,
}

/// Restart policy when QEMU exits without being asked to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RestartPolicy {
    /// Restart whenever it exits.
    #[default]
    Always,
    /// Restart when it exits with an error or is killed.
    OnFailure,
    /// Never restart.
    Never,
}

/// QEMU machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    /// i440FX PC.
    Pc,
    /// Q35 with PCIe.
    Q35,
    /// Minimal virtio-mmio machine; fastest boot, direct kernel boot only.
    Microvm,
}

impl Machine {
    /// The name the manifest (and QEMU's `-machine`) uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Machine::Pc => "pc",
            Machine::Q35 => "q35",
            Machine::Microvm => "microvm",
        }
    }
}

/// Firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// SeaBIOS.
    Bios,
    /// OVMF.
    Uefi,
}

/// Direct kernel boot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Boot {
    /// Path of the kernel image on the node.
    pub kernel: String,
    /// Path of the initrd on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// Kernel command line. Under TCG deorch appends `tsc_early_khz=<host TSC
    /// kHz> tsc=reliable` (the guest's TSC is the host's; see
    /// `src/qemu/tsc.rs`) unless the line already sets `tsc=` or
    /// `tsc_early_khz=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

/// One virtual disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = disk_rules)]
pub struct Disk {
    /// Name of the disk, unique in the VM (DNS-1123 label).
    #[schemars(regex(pattern = DNS1123_LABEL_PATTERN), length(max = 63))]
    pub name: String,
    /// Where the disk's content comes from; exactly one of its fields.
    #[serde(default)]
    pub source: DiskSource,
    /// Size; a clone is grown to this size if larger than its source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// Bus: `virtio` (default), `scsi`, `sata` or `ide`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<DiskBus>,
    /// Attach read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// A disk's origin. Exactly one field is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = disk_source_rules)]
pub struct DiskSource {
    /// Clone the named spacesuit's disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS1123_LABEL_PATTERN), length(max = 63))]
    pub spacesuit: Option<String>,
    /// Clone a disk of another VM (running or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_machine: Option<VmDiskRef>,
    /// Clone a disk of a replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<VmDiskRef>,
    /// An empty disk of `size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blank: Option<Blank>,
    /// Clone a disk of a FASTR copy point of another VM, on a node that
    /// holds that copy (no data copied; the radar places the VM on such a
    /// node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fastr_copy: Option<CopyPointRef>,
}

/// A disk of a VM at one of its FASTR copy points.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CopyPointRef {
    /// Name of the VM.
    #[schemars(regex(pattern = DNS1123_LABEL_PATTERN), length(max = 63))]
    pub name: String,
    /// Namespace; defaults to this VM's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS1123_LABEL_PATTERN), length(max = 63))]
    pub namespace: Option<String>,
    /// Disk name in that VM; defaults to its first disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS1123_LABEL_PATTERN), length(max = 63))]
    pub disk: Option<String>,
    /// The point, as `deorch fastr points` lists it (`fastr-<unix ms>`).
    #[schemars(regex(pattern = "^fastr-[0-9]{1,20}$"))]
    pub point: String,
}

/// An empty disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Blank {}

/// A disk of another VM or replica.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmDiskRef {
    /// Name of the VM or replica.
    #[schemars(regex(pattern = DNS1123_LABEL_PATTERN), length(max = 63))]
    pub name: String,
    /// Namespace; defaults to this VM's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS1123_LABEL_PATTERN), length(max = 63))]
    pub namespace: Option<String>,
    /// Disk name in that VM; defaults to its first disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS1123_LABEL_PATTERN), length(max = 63))]
    pub disk: Option<String>,
}

/// Disk bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    /// virtio-blk.
    Virtio,
    /// virtio-scsi.
    Scsi,
    /// AHCI.
    Sata,
    /// IDE.
    Ide,
}

/// One network interface.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Nic {
    /// Interface name, unique in the VM (DNS-1123 label).
    #[schemars(regex(pattern = DNS1123_LABEL_PATTERN), length(max = 63))]
    pub name: String,
    /// The `Network` this NIC joins.
    #[schemars(regex(pattern = DNS1123_LABEL_PATTERN), length(max = 63))]
    pub network: String,
    /// MAC address; derived from the VM's identity when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = MAC_PATTERN))]
    pub mac: Option<String>,
    /// Fixed IPv4 address; otherwise derived deterministically from the
    /// VM's identity inside the network's range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = ipv4_pattern()))]
    pub ipv4: Option<String>,
    /// Device model: `virtio` (default), `e1000`, `rtl8139`. The `microvm`
    /// machine takes only `virtio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<NicModel>,
    /// DHCP options overriding the network's for this VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<DhcpOptions>,
    /// Relay this VM's DHCP to these central servers (DHCPCAST) instead of
    /// answering locally; overrides the network's setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcpcast: Option<super::network::Dhcpcast>,
}

/// NIC device model. Guests without virtio drivers (older Windows,
/// installers) need an emulated Intel or Realtek card.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NicModel {
    /// virtio-net.
    #[default]
    Virtio,
    /// Intel e1000.
    E1000,
    /// Realtek 8139.
    Rtl8139,
}

impl NicModel {
    /// Whether a VM on `machine` can have this card: `microvm` has no PCI
    /// bus, only virtio-mmio, so only virtio-net fits there.
    pub fn fits(self, machine: Machine) -> bool {
        machine != Machine::Microvm || self == NicModel::Virtio
    }

    /// The name the manifest uses.
    pub fn as_str(self) -> &'static str {
        match self {
            NicModel::Virtio => "virtio",
            NicModel::E1000 => "e1000",
            NicModel::Rtl8139 => "rtl8139",
        }
    }
}

/// Graphical console.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Console {
    /// Serve VNC (default true).
    #[serde(default = "yes")]
    pub vnc: bool,
    /// Serve SPICE where the QEMU build has it (default false).
    #[serde(default)]
    pub spice: bool,
    /// Serve a websocket for the HTML5 client noVNC (default true).
    #[serde(default = "yes")]
    pub websocket: bool,
}

impl Default for Console {
    fn default() -> Self {
        Console {
            vnc: true,
            spice: false,
            websocket: true,
        }
    }
}

fn yes() -> bool {
    true
}

/// Automatic replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicaPolicy {
    /// Take a replica this often (at least 1m).
    #[schemars(with = "PositiveDuration")]
    pub interval: Duration,
    /// Keep this many automatic replicas (oldest deleted first).
    #[schemars(range(min = 1, max = u32::MAX))]
    pub keep: u32,
}

/// FASTR: fast asynchronous triggered replication to other satellites.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fastr {
    /// Number of other satellites holding a copy.
    #[schemars(range(min = 1, max = u32::MAX))]
    pub copies: u32,
    /// Take and send a copy point this often (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Where the copies may go (`strict` has no meaning here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Complete points each receiver keeps, newest first (default 1):
    /// what `deorch fastr recover --at` and `source.fastrCopy` can go
    /// back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub keep: Option<u32>,
    /// Rounds besides the interval's (and `deorch fastr sync`'s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggers: Option<FastrTriggers>,
}

/// What starts a FASTR round besides the interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FastrTriggers {
    /// A round once the VM's disks took this many bytes of writes since
    /// the last round began (QEMU's block statistics, read every second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written: Option<Quantity>,
    /// A round before the VM is relocated (the relocation waits for it,
    /// so the copies are current before the risky part).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relocation: bool,
    /// A round after each replica of the VM is made.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replica: bool,
}

impl Fastr {
    /// Points each receiver keeps.
    pub fn keep(&self) -> usize {
        self.keep.unwrap_or(1).clamp(1, 64) as usize
    }

    /// The triggers, empty when none are set.
    pub fn triggers(&self) -> FastrTriggers {
        self.triggers.clone().unwrap_or_default()
    }
}

/// What the node running a VM reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualMachineStatus {
    /// The `metadata.generation` the reconciler last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions (type, status, reason, message).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Where the VM is in its lifecycle on this node (see [`VmPhase`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<VmPhase>,
    /// The satellite running the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// QEMU's process ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// When the VM last started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// `kvm` or `tcg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
    /// Console endpoints: host, VNC, websocket and SPICE ports, noVNC URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<ConsoleStatus>,
    /// Disks and their volumes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub disks: BTreeMap<String, String>,
    /// NICs: MAC and IPv4 address.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nics: BTreeMap<String, NicStatus>,
    /// Spec changes that take effect at the next restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_restart: Vec<String>,
    /// The last revert carried out: `REPLICA@GENERATION` (see the
    /// `deorch.dev/revert-to` annotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_revert: Option<String>,
    /// Restarts by the restart policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u32>,
    /// The FASTR copies of the VM's disks on other nodes, as the node
    /// that runs it last sent them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fastr: Vec<FastrCopy>,
}

/// One FASTR copy of a VM's disks, as its status shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FastrCopy {
    /// The node that holds it.
    pub node: String,
    /// Its newest complete point (`fastr-<unix ms>`), if it holds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<String>,
    /// How old that point is (the live RPO), in ms, when the status was
    /// written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<u64>,
    /// Bytes sent to it in the last round.
    #[serde(default)]
    pub bytes_sent: u64,
    /// Why the last round to it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A VM's lifecycle as its node reports it.
///
/// ```text
///   Pending ──► Provisioning ──► Running ◄──► Paused
///      │              │            │  ▲         │
///      │              ▼            ▼  │         ▼
///      ├──────────► Failed      Stopped ◄───────┘
///      ├──► Unschedulable   (and Elsewhere, from and to any phase)
///      └──► NodeLost        (its node is down with its disks)
/// ```
///
/// One step is one thing happening to the VM (a start, a pause, a stop, a
/// provisioning failure, the cluster's answer); the status writer walks
/// each step of a reconcile through [`VmPhase::transition`], the one judge
/// of which steps exist. Paused is entered only from Running (a VM is
/// started before it is paused); a running or paused VM never goes back to
/// Provisioning or to Unschedulable (it keeps running, and its Ready
/// condition says what is wrong).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum VmPhase {
    /// Not running here yet: waiting for a reference, the election, or a
    /// copy on another node to stop.
    Pending,
    /// Volumes or taps are being made (the last attempt failed).
    Provisioning,
    /// QEMU runs the guest.
    Running,
    /// QEMU holds the guest with its CPUs stopped.
    Paused,
    /// Not running, as desired (or the guest powered off).
    Stopped,
    /// QEMU exited on its own and the restart policy keeps it down.
    Failed,
    /// Another node runs it.
    Elsewhere,
    /// No node satisfies its placement constraints.
    Unschedulable,
    /// The node that ran it (and holds its disks) is down; it is not
    /// started elsewhere on a blank disk. It runs again when that node
    /// returns, or where an operator recovers it (`deorch recover`).
    NodeLost,
}

impl VmPhase {
    /// The phase's wire form (`status.phase`).
    pub fn as_str(self) -> &'static str {
        match self {
            VmPhase::Pending => "Pending",
            VmPhase::Provisioning => "Provisioning",
            VmPhase::Running => "Running",
            VmPhase::Paused => "Paused",
            VmPhase::Stopped => "Stopped",
            VmPhase::Failed => "Failed",
            VmPhase::Elsewhere => "Elsewhere",
            VmPhase::Unschedulable => "Unschedulable",
            VmPhase::NodeLost => "NodeLost",
        }
    }

    /// Whether a VM may go from `self` to `to` in one step (the one check,
    /// [`crate::model::phase::advance`], over [`Phase::can_become`]).
    pub fn transition(self, to: VmPhase) -> Result<(), InvalidTransition> {
        advance(Some(self), to).map(|_| ())
    }
}

impl Phase for VmPhase {
    const KIND: &'static str = "VirtualMachine";
    fn can_become(self, next: VmPhase) -> bool {
        use VmPhase::*;
        match (self, next) {
            (Running | Paused, Provisioning | Unschedulable | NodeLost) => false,
            (_, Paused) => self == Running,
            _ => true,
        }
    }
}

/// Why a VM's condition is what it is: the `reason` of its conditions
/// (failures of a driver operation keep the operation's own reason, e.g.
/// `StartFailed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmReason {
    /// The VM's spacesuit does not exist.
    SpacesuitNotFound,
    /// The VM a disk is cloned from does not exist or has no disk.
    SourceNotFound,
    /// A NIC's network does not exist.
    NetworkNotFound,
    /// Volumes it had are gone (removed outside deorch).
    VolumeMissing,
    /// A clone source volume does not exist (yet).
    SourceMissing,
    /// Every volume and tap is in place.
    VolumesReady,
    /// QEMU exited unexpectedly and the restart policy keeps it down.
    Crashed,
    /// The guest powered off and the restart policy keeps it down.
    GuestShutdown,
    /// Spec changes wait for the next restart.
    RestartPending,
    /// The election placed it on another node.
    PlacedElsewhere,
    /// The election has no answer yet.
    ElectionPending,
    /// No node satisfies its placement constraints.
    Unschedulable,
    /// Its node is down with its data.
    NodeLost,
    /// Its placement names another node while it runs with local disks
    /// here: it runs here until it has moved there live (or says why the
    /// move failed).
    RelocationRequired,
    /// Another node still runs it: this node waits for that copy to stop.
    RunningElsewhere,
    /// Strict mode: this node does not see a majority of the cluster, so
    /// the VM is paused (or not started) here.
    NoQuorum,
    /// The replica to revert to is missing or not ready.
    ReplicaNotReady,
    /// The replica to revert to lacks one of the VM's disks.
    DiskNotInReplica,
    /// The disks were reverted to a replica.
    Reverted,
    /// As desired: running.
    Running,
    /// As desired: paused.
    Paused,
    /// As desired: stopped.
    Stopped,
}

impl VmReason {
    /// The CamelCase wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            VmReason::SpacesuitNotFound => "SpacesuitNotFound",
            VmReason::SourceNotFound => "SourceNotFound",
            VmReason::NetworkNotFound => "NetworkNotFound",
            VmReason::VolumeMissing => "VolumeMissing",
            VmReason::SourceMissing => "SourceMissing",
            VmReason::VolumesReady => "VolumesReady",
            VmReason::Crashed => "Crashed",
            VmReason::GuestShutdown => "GuestShutdown",
            VmReason::RestartPending => "RestartPending",
            VmReason::PlacedElsewhere => "PlacedElsewhere",
            VmReason::ElectionPending => "ElectionPending",
            VmReason::Unschedulable => "Unschedulable",
            VmReason::NodeLost => "NodeLost",
            VmReason::RelocationRequired => "RelocationRequired",
            VmReason::RunningElsewhere => "RunningElsewhere",
            VmReason::NoQuorum => "NoQuorum",
            VmReason::ReplicaNotReady => "ReplicaNotReady",
            VmReason::DiskNotInReplica => "DiskNotInReplica",
            VmReason::Reverted => "Reverted",
            VmReason::Running => "Running",
            VmReason::Paused => "Paused",
            VmReason::Stopped => "Stopped",
        }
    }
}

/// Console endpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsoleStatus {
    /// Address the console listens on.
    pub host: String,
    /// VNC (RFB) TCP port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnc_port: Option<u16>,
    /// Websocket port for noVNC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket_port: Option<u16>,
    /// SPICE port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spice_port: Option<u16>,
    /// Whether the websocket speaks TLS (`wss://`, the node's
    /// certificate): what a browser on the node's HTTPS page needs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub websocket_tls: bool,
    /// URL of the HTML5 console: the node's console page (`/console.html`,
    /// noVNC, with `&password=` of a ticket appended to its fragment) when
    /// the websocket has TLS, else a noVNC `vnc.html` query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl ConsoleStatus {
    /// A console served on `host`: VNC, its noVNC websocket (over TLS with
    /// `tls`) and maybe SPICE. QEMU serves the websocket on path `/` only.
    pub fn served(
        host: String,
        vnc: u16,
        websocket: u16,
        spice: Option<u16>,
        tls: bool,
    ) -> ConsoleStatus {
        ConsoleStatus {
            url: Some(if tls {
                format!("/console.html#host={host}&port={websocket}")
            } else {
                format!("vnc.html?host={host}&port={websocket}&path=")
            }),
            host,
            vnc_port: Some(vnc),
            websocket_port: Some(websocket),
            spice_port: spice,
            websocket_tls: tls,
        }
    }
}

/// One NIC as realised.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NicStatus {
    /// MAC address.
    pub mac: String,
    /// IPv4 address handed out by DHCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    /// Host tap device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// Frames the node's anti-spoofing rules dropped on this NIC's port,
    /// by rule (`mac`, `ip`, `arp`, `dhcpServer`, `chaddr`,
    /// `routerAdvert`, `vlan`), counted since the rules were installed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dropped: BTreeMap<String, u64>,
}

/// A reference to a VM (used by replicas and relocations).
pub type VmRef = ObjectRef;
