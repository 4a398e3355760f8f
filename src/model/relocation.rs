//! `Relocation`: live migration of a VM with its storage to another
//! satellite, chosen by the radar (automatic) or given (manual).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, ObjectRef, Placement};
use super::phase::RelocationPhase;

/// Desired relocation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelocationSpec {
    /// The VM to move.
    pub virtual_machine: ObjectRef,
    /// Destination: a node name or IP, or a selector and performance class;
    /// absent means automatic (the radar elects the receiver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Placement>,
    /// `Live` (default: memory and disks copied while running) or `Offline`.
    #[serde(default)]
    pub mode: RelocationMode,
}

/// How to move.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RelocationMode {
    /// Live migration with storage.
    #[default]
    Live,
    /// Stop, copy, start.
    Offline,
}

/// Progress of a relocation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelocationStatus {
    /// The `metadata.generation` the reconciler last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions (type, status, reason, message).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// How far it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RelocationPhase>,
    /// Sending satellite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Receiving satellite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Guest downtime in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// The copy so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<RelocationProgress>,
    /// The FASTR copy point the volumes were streamed from (the receiver
    /// held the VM's copy there): only what changed since crossed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// What happens now, or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// How far the copy of a relocation got (the sender reports it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelocationProgress {
    /// Disk bytes in sync, over all disks.
    pub disk_done: u64,
    /// Disk bytes to bring in sync (grows as the guest writes).
    pub disk_total: u64,
    /// Memory bytes sent.
    pub ram_sent: u64,
    /// Memory bytes still dirty.
    pub ram_remaining: u64,
    /// Bytes per second over the copy so far.
    pub bytes_per_second: u64,
    /// Seconds left at that rate (`None`: not known yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    /// Milliseconds since the sender offered the VM to the receiver (the
    /// receiver's wait for its election to settle and its preparation
    /// included).
    pub elapsed_ms: u64,
}
