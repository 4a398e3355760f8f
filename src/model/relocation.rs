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
}
