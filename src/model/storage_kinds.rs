//! Storage-side kinds: `Replica`, `Dataset`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, ObjectRef, Quantity, RecordSize};
use super::phase::ReadyPhase;

/// A writable copy-on-write snapshot of all of a VM's disks at one instant.
/// It stays on the satellite where it was taken when the VM relocates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicaSpec {
    /// The VM whose disks are captured.
    pub virtual_machine: ObjectRef,
    /// Human description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// What a node reports about a replica.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicaStatus {
    /// The `metadata.generation` the reconciler last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions (type, status, reason, message).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Whether every disk is captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ReadyPhase>,
    /// Satellite holding the replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// When it was taken (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Disk name to volume.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, String>,
}

/// A declared storage dataset (ZFS filesystem or directory).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatasetSpec {
    /// Pool; defaults to the node's configured pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Path below the pool, e.g. `tenants/acme/data`.
    #[schemars(regex(pattern = DATASET_PATH_PATTERN))]
    pub path: String,
    /// Compression: `off`, `on`, `lz4`, `gzip`, `gzip-1`..`gzip-9`, `zle`,
    /// `lzjb`, `zstd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^(off|on|lz4|gzip|gzip-[1-9]|zle|lzjb|zstd)$"))]
    pub compression: Option<String>,
    /// Quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quantity>,
    /// Record size: a power of two from 512 to 1Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<RecordSize>")]
    pub recordsize: Option<Quantity>,
    /// User properties (`module:property` names, as ZFS requires).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("propertyNames" = {"pattern": ":"}))]
    pub user_properties: BTreeMap<String, String>,
    /// What deleting the object does: `Retain` (default) keeps the data,
    /// `Destroy` destroys it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// A relative path below a pool: parts separated by '/', none empty,
/// `.` or `..`.
pub const DATASET_PATH_PATTERN: &str =
    r"^([^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+)(/([^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+))*$";

/// Deletion policy of a dataset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the data when the object is deleted.
    #[default]
    Retain,
    /// Destroy the data when the object is deleted.
    Destroy,
}

/// What a node reports about a dataset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatasetStatus {
    /// The `metadata.generation` the reconciler last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions (type, status, reason, message).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Bytes used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<Quantity>,
    /// Bytes available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<Quantity>,
}
