//! `Spacesuit`: a VM template. Made from an image file or from a VM (also a
//! running one); VMs are created from spacesuits as copy-on-write clones.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    exactly_one, Condition, Cpu, GuestMemory, ObjectRef, Quantity, WholeCpus, DNS1123_LABEL_PATTERN,
};
use super::phase::ReadyPhase;
use super::vm::{Boot, DiskBus, Firmware, Machine, Nic};

/// Desired spacesuit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpacesuitSpec {
    /// Human description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where the spacesuit's disks come from: exactly one of `image` or
    /// `virtualMachine`. A spacesuit without a source carries only boot
    /// settings (e.g. a direct kernel boot with an in-memory root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SpacesuitSource>,
    /// Boot settings VMs inherit (kernel, initrd, command line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<Boot>,
    /// Firmware VMs inherit: `bios` (default) or `uefi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
    /// Machine type VMs inherit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    /// Default CPUs for VMs made from this spacesuit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<WholeCpus>")]
    pub cpu: Option<Cpu>,
    /// Default memory for VMs made from this spacesuit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<GuestMemory>")]
    pub memory: Option<Quantity>,
    /// Further disks, after the first one (`source`), each from an image
    /// of its own. A VM made from this spacesuit that declares no disks
    /// gets a copy-on-write clone of each, named as here, after `root`.
    /// Needs `source`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<SpacesuitDisk>,
    /// NICs a VM made from this spacesuit gets when it declares none
    /// itself (`spec.nics` of a VM, the same fields). Each names a deorch
    /// Network of the VM's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<Nic>,
}

/// A further disk of a spacesuit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpacesuitDisk {
    /// The disk's name in the VMs made from the spacesuit (DNS-1123
    /// label, not `root`: that is the first disk's).
    #[schemars(regex(pattern = DNS1123_LABEL_PATTERN), length(max = 63))]
    pub name: String,
    /// The image file it is imported from (checked against its SHA-256,
    /// fetched from a peer by it, as the first disk's).
    pub image: ImageSource,
    /// Bus the VMs attach it on (default `virtio`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<DiskBus>,
}

/// The origin of a spacesuit's disk(s).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = source_rules)]
pub struct SpacesuitSource {
    /// A disk image file on the node, converted with `qemu-img`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSource>,
    /// An existing VM (running or not) whose first disk is snapshotted,
    /// once, on the node that holds it; VMs on other nodes copy it from
    /// there (their status of the spacesuit says `SourceElsewhere`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_machine: Option<ObjectRef>,
    /// Bus the VMs made from the spacesuit attach this disk (`root`) on
    /// (default `virtio`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<DiskBus>,
}

fn source_rules(schema: &mut schemars::Schema) {
    exactly_one(schema, &["image", "virtualMachine"]);
}

/// An image file source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageSource {
    /// Absolute path of the image on the node.
    #[schemars(regex(pattern = "^/"))]
    pub path: String,
    /// Format of the file; detected by `qemu-img info` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ImageFormat>,
    /// Expected SHA-256 of the file (hex); the import fails on mismatch. A
    /// node without the file fetches it by this hash from a peer that has
    /// it, when a VM placed there needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[0-9A-Fa-f]{64}$"))]
    pub sha256: Option<String>,
}

/// Disk image formats `qemu-img` converts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// Raw disk image.
    Raw,
    /// QEMU copy-on-write v2.
    Qcow2,
    /// VMware disk.
    Vmdk,
}

impl ImageFormat {
    /// The `qemu-img` format name.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Vmdk => "vmdk",
        }
    }
}

/// What a node reports about a spacesuit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpacesuitStatus {
    /// The `metadata.generation` the reconciler last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions (type, status, reason, message).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Whether its disk is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ReadyPhase>,
    /// Storage volumes holding the spacesuit's disks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// Bytes used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
}
