//! Driver traits: one per external system the node changes (`Hypervisor`,
//! `Storage`, `Net`), each with an in-memory fake ([`fake`]) that injects
//! failures. Real drivers (QEMU/libvirt, ZFS/qcow2, bridges and taps) come
//! with the storage, VM and network work; the node chooses implementations
//! at construction, never by `cfg(test)` inside logic.
//!
//! Architecture invariant: drivers never read the store; they get fully
//! resolved configurations and report what they observe.

pub mod cmd;
pub mod cow;
pub mod dir;
pub mod fake;
pub mod libvirt;
pub mod linuxnet;
pub mod marker;
pub mod qcow2;
pub mod qemu;
pub mod zfs;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::vm::{Boot, Machine, NicModel};

/// The drivers a node uses, chosen once at start (real ones, or the
/// in-memory fakes of [`fake`] when the node is told to simulate).
#[derive(Clone)]
pub struct Drivers {
    /// Runs VMs.
    pub hypervisor: std::sync::Arc<dyn Hypervisor>,
    /// Holds volumes.
    pub storage: std::sync::Arc<dyn Storage>,
    /// Bridges and taps.
    pub net: std::sync::Arc<dyn Net>,
    /// The node's DHCP servers, one per served bridge (only with a `Net`
    /// driver whose bridges are real interfaces).
    pub dhcp: Option<std::sync::Arc<crate::dhcp::service::DhcpService>>,
}

/// A boxed future (traits with async methods stay object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A driver failure. `Transient` ones are retried with backoff; the others
/// need a change of desired state (or of the world) first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// May succeed if retried (busy, timeout, temporarily unavailable).
    #[error("{op} {target}: {message} (will retry)")]
    Transient {
        /// Operation.
        op: String,
        /// What it was applied to.
        target: String,
        /// What happened.
        message: String,
    },
    /// Will fail again until something changes (no space, bad config).
    #[error("{op} {target}: {message}")]
    Permanent {
        /// Operation.
        op: String,
        /// What it was applied to.
        target: String,
        /// What happened.
        message: String,
    },
    /// A permanent failure with a precise status reason (`PoolFull`,
    /// `PoolMissing`, `NameCollision`, `VolumeMissing`, ...).
    #[error("{op} {target}: {message}")]
    Condition {
        /// Operation.
        op: String,
        /// What it was applied to.
        target: String,
        /// Status condition reason.
        reason: &'static str,
        /// What happened.
        message: String,
    },
    /// The thing does not exist.
    #[error("{op} {target}: not found")]
    NotFound {
        /// Operation.
        op: String,
        /// What was looked for.
        target: String,
    },
}

impl DriverError {
    /// A failure worth retrying with backoff.
    pub fn transient(op: &str, target: &str, message: impl Into<String>) -> DriverError {
        DriverError::Transient {
            op: op.into(),
            target: target.into(),
            message: message.into(),
        }
    }

    /// A failure that retrying does not fix.
    pub fn permanent(op: &str, target: &str, message: impl Into<String>) -> DriverError {
        DriverError::Permanent {
            op: op.into(),
            target: target.into(),
            message: message.into(),
        }
    }

    /// The thing `op` needed does not exist.
    pub fn not_found(op: &str, target: &str) -> DriverError {
        DriverError::NotFound {
            op: op.into(),
            target: target.into(),
        }
    }

    /// The operation that failed (e.g. `start`), for status reasons.
    pub fn op(&self) -> &str {
        match self {
            DriverError::Transient { op, .. }
            | DriverError::Permanent { op, .. }
            | DriverError::Condition { op, .. }
            | DriverError::NotFound { op, .. } => op,
        }
    }
}

/// A fully resolved VM, as a hypervisor needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmConfig {
    /// Stable id: `namespace/name`.
    pub id: String,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in bytes.
    pub memory: u64,
    /// Machine type.
    pub machine: Machine,
    /// CPU model; `None` lets the driver choose for its accelerator.
    pub cpu_model: Option<String>,
    /// Direct kernel boot.
    pub boot: Option<Boot>,
    /// Disks: (disk name, volume name), in boot order.
    pub disks: Vec<(String, String)>,
    /// Where those volumes' images are (filled from the storage driver
    /// just before a start; not part of what a running VM is compared on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disk_images: Vec<DiskImage>,
    /// NICs.
    pub nics: Vec<NicConfig>,
    /// Serve SPICE too, where the hypervisor's QEMU build has it
    /// (`spec.console.spice`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spice: bool,
}

/// A disk image as the hypervisor attaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskImage {
    /// Disk name in the VM.
    pub name: String,
    /// Image file.
    pub path: std::path::PathBuf,
    /// `raw` or `qcow2`.
    pub format: String,
    /// Bus.
    pub bus: crate::model::vm::DiskBus,
    /// Attach read-only.
    pub read_only: bool,
}

/// A resolved NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicConfig {
    /// NIC name in the VM.
    pub name: String,
    /// MAC address.
    pub mac: String,
    /// Host tap device.
    pub tap: String,
    /// Bridge the tap is on.
    pub bridge: String,
    /// Device model the guest sees (`spec.nics[].model`). Configs saved
    /// before the model existed read as virtio, which is what they ran.
    #[serde(default)]
    pub model: NicModel,
    /// The tap is a real host interface (the `linux` network driver):
    /// the hypervisor attaches the NIC to it; otherwise the NIC uses
    /// QEMU's restricted user-mode network.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_tap: bool,
}

/// Why a VM is not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// deorch stopped it.
    Requested,
    /// The guest powered itself off.
    GuestShutdown,
    /// QEMU died (crash or killed).
    Crashed,
}

/// What a hypervisor reports about a VM.
#[derive(Debug, Clone, PartialEq)]
pub enum VmState {
    /// Not known to the hypervisor.
    Absent,
    /// Running with this process and since this time (ms since epoch).
    Running {
        /// Process ID.
        pid: u32,
        /// Start time.
        started_ms: u64,
        /// The configuration it was started with.
        config: Box<VmConfig>,
    },
    /// CPUs paused.
    Paused {
        /// Process ID.
        pid: u32,
        /// Start time.
        started_ms: u64,
        /// The configuration it was started with.
        config: Box<VmConfig>,
    },
    /// Not running.
    Stopped(StopReason),
}

/// A fresh console password: 8 characters of `[A-Za-z0-9]` (~47 bits),
/// the most VNC's authentication uses (it keys DES with 8 bytes). It is
/// one-time and short-lived: it unlocks a console for a minute or so.
pub fn console_password() -> String {
    use rand_core::{OsRng, RngCore};
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..8)
        .map(|_| {
            // Rejection sampling: no bias towards the first letters.
            loop {
                let b = (OsRng.next_u32() & 0xff) as usize;
                if b < 248 {
                    return ALPHABET[b % 62] as char;
                }
            }
        })
        .collect()
}

/// Runs VMs.
pub trait Hypervisor: Send + Sync {
    /// Driver name (`fake`, `qemu`, `libvirt`).
    fn name(&self) -> &'static str;
    /// The accelerator in use (`kvm`, `tcg`), when there is one.
    fn accel(&self) -> Option<String> {
        None
    }
    /// Console endpoints of a VM, when it has them.
    fn console(&self, id: &str) -> Option<crate::model::vm::ConsoleStatus> {
        let _ = id;
        None
    }
    /// Unlock a running VM's consoles (VNC, its websocket, SPICE) with
    /// `password` for `valid_for`; they refuse every client otherwise
    /// (consoles start locked). A later ticket replaces an earlier one.
    fn console_ticket<'a>(
        &'a self,
        id: &'a str,
        password: &'a str,
        valid_for: Duration,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let _ = (password, valid_for);
        Box::pin(async move {
            Err(DriverError::Permanent {
                op: "console ticket".into(),
                target: id.into(),
                message: format!("the {} driver has no consoles", self.name()),
            })
        })
    }
    /// Start `config` (replacing a stopped VM of the same id).
    fn start<'a>(&'a self, config: &'a VmConfig) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Stop gracefully (ACPI power button), forcing after `timeout`.
    fn stop<'a>(&'a self, id: &'a str, timeout: Duration)
        -> BoxFuture<'a, Result<(), DriverError>>;
    /// Pause the CPUs.
    fn pause<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Resume the CPUs.
    fn resume<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Reset a running VM at once, as its reset button would (QMP
    /// `system_reset`: the guest reboots, the QEMU process stays). By
    /// default through the VM's QMP socket ([`Hypervisor::qmp_socket`]).
    fn reset<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let Some(socket) = self.qmp_socket(id) else {
                return Err(DriverError::permanent(
                    "reset",
                    id,
                    format!("the {} driver cannot reset a VM", self.name()),
                ));
            };
            let mut qmp = crate::qemu::qmp::Qmp::connect(&socket, Duration::from_secs(10))
                .await
                .map_err(|e| DriverError::transient("reset", id, e.to_string()))?;
            qmp.execute("system_reset", None)
                .await
                .map(|_| ())
                .map_err(|e| DriverError::transient("reset", id, e.to_string()))
        })
    }
    /// Observe one VM.
    fn state<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<VmState, DriverError>>;
    /// Forget a stopped VM entirely (after deletion).
    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Start `config` paused, waiting for a migration stream (QEMU's
    /// `-S -incoming defer`): the receiving end of a live relocation. It
    /// runs no guest code until the relocation says `cont`.
    fn start_incoming<'a>(
        &'a self,
        config: &'a VmConfig,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            Err(DriverError::permanent(
                "start_incoming",
                &config.id,
                format!(
                    "the {} driver cannot receive a live relocation yet",
                    self.name()
                ),
            ))
        })
    }
    /// Where the VMs' runtime directories are (`<dir>/<namespace>/<name>`)
    /// for a driver that runs QEMU with deorch's monitor in them: the
    /// defaults below then give each VM its QMP socket and relocation
    /// marker there. `None`: the driver takes no part in relocations.
    fn vms_dir(&self) -> Option<&std::path::Path> {
        None
    }
    /// The QMP socket of a VM this driver runs (`None`: it has none a
    /// relocation can drive).
    fn qmp_socket(&self, id: &str) -> Option<std::path::PathBuf> {
        Some(crate::qemu::cmdline::qmp_socket(&self.vms_dir()?.join(id)))
    }
    /// The relocation that holds VM `id` (its marker's text), if one does:
    /// the VM reconciler leaves such a VM alone. The marker is durable
    /// (it survives a node restart) and goes with the VM's runtime state.
    fn relocation_lock(&self, id: &str) -> Option<String> {
        marker::read(&self.vms_dir()?.join(id))
    }
    /// Every VM a relocation holds: (VM id, the marker's text).
    fn relocation_locks(&self) -> Vec<(String, String)> {
        self.vms_dir().map(marker::list).unwrap_or_default()
    }
    /// Set (`Some`) or clear (`None`) the relocation marker of VM `id`.
    fn set_relocation_lock(&self, id: &str, holder: Option<&str>) -> Result<(), DriverError> {
        if let Some(dir) = self.vms_dir() {
            return marker::set(&dir.join(id), id, holder);
        }
        Err(DriverError::permanent(
            "relocation lock",
            id,
            format!(
                "the {} driver cannot take part in a relocation yet",
                self.name()
            ),
        ))
    }
    /// Switch a running VM's disk to `overlay` (a qcow2 image whose backing
    /// file is the disk's current image): from then on QEMU writes only to
    /// the overlay and the old image is frozen.
    fn live_snapshot<'a>(
        &'a self,
        id: &'a str,
        disk: &'a str,
        overlay: &'a std::path::Path,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let _ = overlay;
        Box::pin(async move {
            Err(DriverError::Permanent {
                op: "live_snapshot".into(),
                target: format!("{id}/{disk}"),
                message: format!(
                    "the {} hypervisor cannot snapshot a running disk",
                    self.name()
                ),
            })
        })
    }
}

/// Snapshots of running disks: for each source volume a running VM uses,
/// how to make that VM switch to a new overlay. Storage that snapshots
/// underneath a running VM safely (ZFS) ignores it.
#[derive(Default, Clone)]
pub struct LiveDisks {
    /// Source volume -> (VM id, disk name).
    pub volumes: std::collections::BTreeMap<String, (String, String)>,
    /// The hypervisor running them.
    pub hypervisor: Option<std::sync::Arc<dyn Hypervisor>>,
}

impl LiveDisks {
    /// Switch `volume`'s VM to `overlay`.
    pub async fn switch(&self, volume: &str, overlay: &std::path::Path) -> Result<(), DriverError> {
        match (self.volumes.get(volume), &self.hypervisor) {
            (Some((id, disk)), Some(hv)) => hv.live_snapshot(id, disk, overlay).await,
            _ => Err(DriverError::Permanent {
                op: "live_snapshot".into(),
                target: volume.into(),
                message: "no running VM known for this volume".into(),
            }),
        }
    }

    /// Run `f` with the CPUs of every running VM that has two or more of
    /// `sources` paused: storage that cannot snapshot several datasets in
    /// one step (zfs-fuse) still takes one instant for all of a VM's
    /// disks (QEMU drains and flushes its disks' I/O as it pauses). A VM
    /// with one such disk, or not running (paused by its user included),
    /// is left alone. Every VM paused here is resumed, whatever `f`
    /// returns; a VM that fails to pause fails the call before `f` runs.
    pub async fn paused_for<T>(
        &self,
        sources: &[&str],
        f: impl std::future::Future<Output = Result<T, DriverError>>,
    ) -> Result<T, DriverError> {
        let Some(hv) = &self.hypervisor else {
            return f.await;
        };
        let mut per_vm: std::collections::BTreeMap<&str, usize> = Default::default();
        for s in sources {
            if let Some((id, _)) = self.volumes.get(*s) {
                *per_vm.entry(id.as_str()).or_default() += 1;
            }
        }
        let mut paused: Vec<&str> = Vec::new();
        let mut failed = None;
        for (id, _) in per_vm.into_iter().filter(|(_, n)| *n > 1) {
            if !matches!(hv.state(id).await, Ok(VmState::Running { .. })) {
                continue;
            }
            match hv.pause(id).await {
                Ok(()) => paused.push(id),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let r = match failed {
            Some(e) => Err(e),
            None => f.await,
        };
        for id in paused {
            if let Err(e) = hv.resume(id).await {
                tracing::warn!(vm = id, error = %e, "storage: a VM paused for a snapshot of its disks was not resumed (its reconciler resumes it)");
            }
        }
        r
    }
}

/// One copy-on-write clone to make: `volume` from `source`'s content now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneRequest {
    /// New volume.
    pub volume: String,
    /// Volume whose current content it starts from.
    pub source: String,
    /// Grow the clone to this many bytes if larger than the source.
    pub size: Option<u64>,
}

/// Where a volume's image is, for the hypervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Image file.
    pub path: std::path::PathBuf,
    /// `raw` or `qcow2`.
    pub format: &'static str,
    /// Virtual size in bytes.
    pub size: u64,
}

/// A declared dataset (a ZFS filesystem, or a directory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatasetConfig {
    /// Pool; the driver's own pool when `None`.
    pub pool: Option<String>,
    /// Path below the pool.
    pub path: String,
    /// Native properties (`compression`, `quota`, `recordsize`) and user
    /// properties (`module:name`), as strings.
    pub properties: std::collections::BTreeMap<String, String>,
}

/// What a driver observes of a dataset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatasetState {
    /// Bytes used.
    pub used: u64,
    /// Bytes available.
    pub available: u64,
    /// Where it is mounted.
    pub mountpoint: Option<String>,
    /// Properties this driver cannot apply (e.g. quota on `dir`).
    pub unsupported: Vec<String>,
}

/// Holds volumes (disk images) and datasets.
///
/// Volumes are copy-on-write: clones share blocks with their source. The
/// contract every driver keeps (tested by `tests/storage_contract.rs` on
/// every driver): destroying a volume never changes what any other volume
/// reads, and once every volume is destroyed no space is left over;
/// destruction that has to wait for dependents is recorded on the storage
/// itself, so [`Storage::gc`] after a crash finishes it.
pub trait Storage: Send + Sync {
    /// Driver name (`fake`, `dir`, `zfs`).
    fn name(&self) -> &'static str;
    /// Create an empty volume of `size` bytes.
    fn create<'a>(&'a self, volume: &'a str, size: u64) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Whether the image file `path` is on this node, for
    /// [`Storage::import`] (otherwise a VM that needs it fetches it from a
    /// peer).
    fn has_image(&self, path: &str) -> bool {
        std::path::Path::new(path).exists()
    }
    /// Import an image file as a volume (`format`: raw, qcow2, vmdk;
    /// detected when `None`).
    fn import<'a>(
        &'a self,
        volume: &'a str,
        path: &'a str,
        format: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Copy-on-write clones of several sources taken at one instant.
    fn clone_volumes<'a>(
        &'a self,
        requests: &'a [CloneRequest],
    ) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Copy-on-write clone of `source` (grown to `size` if larger).
    fn clone_volume<'a>(
        &'a self,
        volume: &'a str,
        source: &'a str,
        size: Option<u64>,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            self.clone_volumes(&[CloneRequest {
                volume: volume.into(),
                source: source.into(),
                size,
            }])
            .await
        })
    }
    /// [`Storage::clone_volumes`] where some sources are disks of running
    /// VMs (`live`): those are snapshotted through their hypervisor where
    /// the storage needs it (qcow2 files), directly where it does not (ZFS).
    fn clone_volumes_live<'a>(
        &'a self,
        requests: &'a [CloneRequest],
        live: &'a LiveDisks,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let _ = live;
        self.clone_volumes(requests)
    }
    /// A replica: [`Storage::clone_volumes_live`], where the new volumes
    /// may be made lazily. On copy-on-write storage (ZFS) it is only the
    /// sources' snapshots, taken together, each named after its new
    /// volume; a volume's clone is made when it is first opened
    /// ([`Storage::volume`]), cloned, reverted to or renamed. Until then
    /// the volume exists, is listed and is destroyed like any other.
    fn capture<'a>(
        &'a self,
        requests: &'a [CloneRequest],
        live: &'a LiveDisks,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        self.clone_volumes_live(requests, live)
    }
    /// Destroy a volume; its dependents stay intact (transparent removal).
    fn destroy<'a>(&'a self, volume: &'a str) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Rename a volume (dependents follow).
    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Whether a volume exists.
    fn exists<'a>(&'a self, volume: &'a str) -> BoxFuture<'a, Result<bool, DriverError>>;
    /// Where a volume's image is.
    fn volume<'a>(&'a self, volume: &'a str) -> BoxFuture<'a, Result<VolumeInfo, DriverError>>;
    /// Names of all live volumes.
    fn list(&self) -> BoxFuture<'_, Result<Vec<String>, DriverError>>;
    /// Finish interrupted or deferred removals; returns how many objects
    /// (volumes, snapshots, layers) it destroyed.
    fn gc(&self) -> BoxFuture<'_, Result<usize, DriverError>>;
    /// (total, free) bytes.
    fn capacity(&self) -> BoxFuture<'_, Result<(u64, u64), DriverError>>;
    /// Create a dataset or bring its properties to `config`. A dataset of
    /// that name that deorch did not create is never touched.
    fn ensure_dataset<'a>(
        &'a self,
        config: &'a DatasetConfig,
    ) -> BoxFuture<'a, Result<DatasetState, DriverError>>;
    /// Destroy a dataset deorch created, with its content.
    fn destroy_dataset<'a>(
        &'a self,
        config: &'a DatasetConfig,
    ) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Make `volume` a writable copy of `source`'s current content (revert a
    /// VM's disk to a replica). Crash-safe: re-running finishes it.
    fn revert<'a>(
        &'a self,
        volume: &'a str,
        source: &'a str,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let tmp = format!("{volume}.revert");
            if !self.exists(&tmp).await? {
                self.clone_volume(&tmp, source, None).await?;
            }
            if self.exists(volume).await? {
                self.destroy(volume).await?;
            }
            self.rename(&tmp, volume).await
        })
    }
    /// The kind of volume stream this storage sends and takes between
    /// nodes (`zfs`: `zfs send` / `zfs recv`), `None` if it has none: two
    /// nodes of one kind move a stopped VM's disks as such streams, the
    /// bulk while it still runs (docs/ALGORITHMS.md, "Relocation").
    fn stream_kind(&self) -> Option<&'static str> {
        None
    }
    /// The kind of stream FASTR sends and takes between nodes for this
    /// storage (`None`: a node with it neither sends nor holds copies).
    /// Relocation streams ([`Storage::stream_kind`]) give FASTR's too;
    /// `dir` has FASTR's only (a running disk's incremental backups,
    /// see `dir::points`).
    fn fastr_kind(&self) -> Option<&'static str> {
        self.stream_kind()
    }
    /// Whether [`Storage::mark_points_live`] prepares one stream per
    /// volume for all of a round's receivers (`dir`: one backup job per
    /// disk, from the oldest base they hold, whole when one holds no
    /// point it tracks) rather than each receiver's stream from its own
    /// base (zfs: `zfs send -i` per receiver).
    fn one_stream_per_round(&self) -> bool {
        false
    }
    /// Take FASTR point `tag` of the disks of one running VM (`live`
    /// names the VM and disk of each of `volumes`), to be sent to
    /// receivers holding points `bases` (`None`: a receiver with no
    /// point). Storage that takes points underneath the VM
    /// ([`Storage::mark_points`]) ignores `live` and `bases`; `dir` takes
    /// them through the VM's QEMU and prepares, at that instant, the
    /// streams those receivers need.
    fn mark_points_live<'a>(
        &'a self,
        volumes: &'a [String],
        tag: &'a str,
        live: &'a LiveDisks,
        bases: &'a [Option<String>],
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let _ = (live, bases);
        self.mark_points(volumes, tag)
    }
    /// A stream into `volume` (by [`Storage::receive_command`]) ended
    /// whole, carrying point `tag`: make it the volume's newest point.
    /// Nothing to do where the stream names its point itself (zfs).
    fn point_received<'a>(
        &'a self,
        volume: &'a str,
        tag: &'a str,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let _ = (volume, tag);
        Box::pin(async { Ok(()) })
    }
    /// Whether [`Storage::mark_points`] takes the points of several
    /// volumes at one instant (one command, one transaction group); when
    /// not, a running VM's guest is paused around them.
    fn atomic_points(&self) -> bool {
        false
    }
    /// Whether snapshots or points of exactly `volumes` are taken at one
    /// instant by one command (where the storage cannot do so for any set,
    /// [`Storage::atomic_points`], it may still for a [`Storage::group`]).
    /// When not, a running VM's guest is paused around them.
    fn atomic_points_for(&self, volumes: &[String]) -> bool {
        let _ = volumes;
        self.atomic_points()
    }
    /// Keep `volumes` (the disks of one VM) together as group `group`
    /// where the storage can, so that one command snapshots all of them
    /// ([`Storage::atomic_points_for`]; zfs: one parent dataset and
    /// `zfs snapshot -r`). An intent for the next volume made under each
    /// of these names (created, imported or cloned); existing volumes stay
    /// where they are. Nothing where the storage has no groups.
    fn group(&self, group: &str, volumes: &[String]) {
        let _ = (group, volumes);
    }
    /// Take transfer point `tag` of each volume (a snapshot `@xfer-TAG`,
    /// one instant per volume). `gc` leaves transfer points alone; whoever
    /// takes one drops it ([`Storage::drop_points`]) or destroys the
    /// volume.
    fn mark_points<'a>(
        &'a self,
        volumes: &'a [String],
        tag: &'a str,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let _ = (volumes, tag);
        Box::pin(async move { Err(no_streams(self.name())) })
    }
    /// The command whose standard output is `volume` at point `to`, only
    /// what changed since point `from` when given.
    fn send_command<'a>(
        &'a self,
        volume: &'a str,
        from: Option<&'a str>,
        to: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
        let _ = (volume, from, to);
        Box::pin(async move { Err(no_streams(self.name())) })
    }
    /// The command that takes such a stream on its standard input into
    /// `volume`: made by a whole volume's stream (it must not exist:
    /// zfs-fuse now and then fails to receive over an existing one), or,
    /// for what changed since a point, one holding that point, rolled
    /// back to it first.
    fn receive_command<'a>(
        &'a self,
        volume: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
        let _ = volume;
        Box::pin(async move { Err(no_streams(self.name())) })
    }
    /// After a receive command ran into `volume`: make its image read what
    /// was received (zfs-fuse does not tell the kernel's page cache of a
    /// file that a receive rewrote it: pages read before would stay).
    fn received<'a>(&'a self, volume: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        let _ = volume;
        Box::pin(async move { Err(no_streams(self.name())) })
    }
    /// The transfer points of `volume` (tags), oldest first.
    fn points<'a>(&'a self, volume: &'a str) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
        let _ = volume;
        Box::pin(async move { Err(no_streams(self.name())) })
    }
    /// Roll `volume` back to its transfer point `tag`, destroying the
    /// points after it.
    fn rollback<'a>(
        &'a self,
        volume: &'a str,
        tag: &'a str,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let _ = (volume, tag);
        Box::pin(async move { Err(no_streams(self.name())) })
    }
    /// Drop transfer point `tag` of `volume` (one that is gone: fine).
    fn drop_point<'a>(
        &'a self,
        volume: &'a str,
        tag: &'a str,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let _ = (volume, tag);
        Box::pin(async move { Err(no_streams(self.name())) })
    }
    /// The live volumes cloned from a transfer point of `volume` (a VM
    /// made from a FASTR copy point): renaming `volume` unmounts them.
    fn point_clones<'a>(
        &'a self,
        volume: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
        let _ = volume;
        Box::pin(async move { Ok(Vec::new()) })
    }
    /// Drop every transfer point of each of `volumes` but FASTR's (one
    /// listing for all; a volume that is gone has none).
    fn drop_points<'a>(&'a self, volumes: &'a [String]) -> BoxFuture<'a, Result<(), DriverError>> {
        let _ = volumes;
        Box::pin(async move { Err(no_streams(self.name())) })
    }
}

fn no_streams(driver: &str) -> DriverError {
    DriverError::permanent(
        "volume stream",
        driver,
        format!("the {driver} storage has no volume streams"),
    )
}

/// The tags of FASTR's points begin with this: a relocation's
/// [`Storage::drop_points`] leaves them (FASTR's next incremental stream
/// starts from them).
pub const FASTR_TAG: &str = "fastr-";

/// The snapshot name of transfer point `tag` ([`Storage::mark_points`]).
pub fn transfer_point(tag: &str) -> String {
    format!("{TRANSFER_POINT}{tag}")
}

/// The prefix of transfer points' snapshot names.
pub const TRANSFER_POINT: &str = "xfer-";

/// An interstellar segment's VXLAN device on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxlan {
    /// The device (`names::vxlan_device`).
    pub device: String,
    /// The bridge it is a port of.
    pub bridge: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// MTU of the device (the bridge's).
    pub mtu: u16,
    /// No ARP over the underlay: the port suppresses ARP (answered from
    /// the bridge's neighbour entries) and floods no unknown unicast.
    pub arpless: bool,
    /// The bridge's MAC (the segment's anycast gateway).
    pub bridge_mac: String,
}

/// Host networking: bridges, taps, uplinks and VXLAN devices.
pub trait Net: Send + Sync {
    /// Driver name.
    fn name(&self) -> &'static str;
    /// Create or update a bridge.
    fn ensure_bridge<'a>(
        &'a self,
        bridge: &'a str,
        mtu: u16,
    ) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Create or update a tap on a bridge.
    fn ensure_tap<'a>(
        &'a self,
        tap: &'a str,
        bridge: &'a str,
        mtu: u16,
    ) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Remove a tap deorch created (others are never touched).
    fn remove_tap<'a>(&'a self, tap: &'a str) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Remove a bridge deorch created.
    fn remove_bridge<'a>(&'a self, bridge: &'a str) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Give a bridge deorch created exactly this IPv4 address (the node's
    /// address on the network, from which its DHCP server answers), or
    /// none; other IPv4 addresses on it are removed.
    fn set_bridge_address<'a>(
        &'a self,
        bridge: &'a str,
        address: Option<ipnet::Ipv4Net>,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let _ = (bridge, address);
        Box::pin(async { Ok(()) })
    }
    /// Make `uplink` (a host interface) a port of `bridge`, or none; ports
    /// of the bridge deorch did not make (its taps and VXLAN devices carry
    /// its mark) are released, except the uplink.
    fn set_uplink<'a>(
        &'a self,
        bridge: &'a str,
        uplink: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let _ = (bridge, uplink);
        Box::pin(async { Ok(()) })
    }
    /// Create or update the VXLAN device of an interstellar segment as a
    /// port of its bridge.
    fn ensure_vxlan<'a>(&'a self, v: &'a Vxlan) -> BoxFuture<'a, Result<(), DriverError>> {
        let _ = v;
        Box::pin(async { Ok(()) })
    }
    /// Remove a VXLAN device deorch created.
    fn remove_vxlan<'a>(&'a self, device: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        let _ = device;
        Box::pin(async { Ok(()) })
    }
    /// True when bridges and taps are real host interfaces: VMs' NICs are
    /// then attached to their taps and the node serves DHCP on bridges.
    /// False for in-memory drivers (NICs use QEMU's user-mode network).
    fn host_interfaces(&self) -> bool {
        false
    }
}
