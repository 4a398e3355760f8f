//! `Satellite`: one physical node, its tags, capacity and tenant arrays.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    ip_pattern, Condition, Cpu, Performance, Quantity, Tags, DNS1123_LABEL_PATTERN,
};

/// Desired shape of a satellite (a physical node).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SatelliteSpec {
    /// IP addresses of the node (management and VM-facing). The first is
    /// the one manual placement by address and consoles use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = ip_pattern())))]
    pub addresses: Vec<String>,
    /// The node's identity: the Bitcoin address of its own key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub satellite_id: Option<String>,
    /// Gossip endpoint, `HOST:PORT` with an IP host (`[...]` around an
    /// IPv6 one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = GOSSIP_PATTERN))]
    pub gossip: Option<String>,
    /// Microcosm, macrocosm and intercosm tags.
    #[serde(default)]
    pub tags: Tags,
    /// Performance class of the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performance: Option<Performance>,
    /// Total capacity offered to VMs; defaults to what the node detects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Resources>,
    /// Per-tenant shares of this node's capacity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arrays: Vec<Array>,
    /// Set to true to stop placing new VMs here (cordon).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unschedulable: bool,
}

/// The shape of `HOST:PORT`; whether the host and port are valid deorch
/// checks by parsing.
pub const GOSSIP_PATTERN: &str = r"^([0-9.]+|\[[0-9A-Fa-f:.]+\]):[0-9]+$";

/// CPU, memory, storage and network amounts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// Memory in bytes (quantity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Disk space in bytes (quantity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Quantity>,
    /// Network bandwidth in bits per second (quantity, e.g. `10G`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Quantity>,
}

/// An array: the share of this satellite's CPU, memory, network and storage
/// assigned to one tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Array {
    /// Name of the array, unique on this satellite (DNS-1123 label).
    #[schemars(regex(pattern = DNS1123_LABEL_PATTERN), length(max = 63))]
    pub name: String,
    /// The tenant: the Bitcoin address (or namespace) that owns this share.
    #[schemars(length(min = 1))]
    pub tenant: String,
    /// Resources reserved for the tenant.
    #[serde(default)]
    pub resources: Resources,
    /// Tags the tenant adds for its own placement (merged over the node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
}

/// What a satellite reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SatelliteStatus {
    /// The `metadata.generation` the reconciler last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions (type, status, reason, message).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Accelerator chosen by the probe boot: `kvm` or `tcg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
    /// The host CPU: vendor, family/model, and a hash of its feature
    /// flags. Under KVM a VM with the `host` CPU model moves live only to
    /// nodes with the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Detected total capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Resources>,
    /// Capacity not used by VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free: Option<Resources>,
    /// VMs running here (`namespace/name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_machines: Vec<String>,
    /// deorch version of the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The node's ID: the P2WPKH address of its key (`deorch node id`),
    /// the address an AccessPolicy admits it by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
}
