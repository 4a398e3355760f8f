//! `AccessPolicy`: which Bitcoin addresses may do what, where; optional
//! level-2 (LDAP / Active Directory) password check.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{exactly_one, Condition, Duration, TagSelector};

/// Desired access policy (cluster-scoped; signed by the owner or an admin).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessPolicySpec {
    /// Rules; a request is allowed when any rule allows it.
    #[serde(default)]
    pub rules: Vec<AccessRule>,
    /// Admitted satellites: the nodes that are members of the cluster,
    /// each a node's address (`deorch node id`) with its name. Only nodes
    /// listed by a policy that counts join gossip, and their claims,
    /// statuses and documents are believed; removing a node revokes it
    /// everywhere (docs/SIGNING.md, "Nodes").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub satellites: Vec<SatelliteAdmission>,
    /// Fingerprints of login sessions revoked before they expire
    /// (`deorch whoami` shows a session's fingerprint); every node refuses
    /// them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = "^[0-9a-f]{8,64}$")))]
    pub revoked_sessions: Vec<String>,
    /// A hand-over of the cluster's ownership: the owner this policy's
    /// trust chain starts from signs the next owner's address (`deorch
    /// owner hand-over`). Once a node sees a valid chain, the last address
    /// is the owner there (the cluster ID stays the first owner's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_hand_over: Vec<OwnerHandOver>,
}

/// One admitted node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SatelliteAdmission {
    /// The node's name (a label: what status and events show).
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The node's address (P2WPKH of its key in `STATE_DIR/node.key`).
    #[schemars(regex(pattern = "^[A-Za-z0-9]{26,90}$"))]
    pub address: String,
}

/// One step of an ownership hand-over chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OwnerHandOver {
    /// The new owner's address.
    #[schemars(regex(pattern = "^[A-Za-z0-9]{26,90}$"))]
    pub to: String,
    /// The previous owner's Bitcoin signed message (base64) of
    /// `deorch owner hand-over\ncluster: C\nfrom: OLD\nto: NEW`.
    #[schemars(length(min = 1))]
    pub signature: String,
}

/// One rule: these subjects get this role or these verbs, in this scope.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = rule_rules)]
pub struct AccessRule {
    /// Bitcoin addresses the rule applies to.
    #[schemars(length(min = 1), inner(regex(pattern = "^[A-Za-z0-9]{26,90}$")))]
    pub subjects: Vec<String>,
    /// A predefined role: `admin`, `operator` or `viewer`. Exactly one of
    /// `role` and `verbs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Explicit verbs (`get`, `list`, `apply`, `delete`, `console`,
    /// `replicate`, `relocate`, `*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verbs: Vec<Verb>,
    /// Kinds the verbs apply to; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// Namespaces; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Only objects placed on satellites matching these tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<TagSelector>,
    /// Require a level-2 password check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level2: Option<Level2>,
}

/// Exactly one of `role` and (non-empty) `verbs`; `kinds` are kind names.
fn rule_rules(schema: &mut schemars::Schema) {
    let kinds: Vec<&str> = super::Kind::ALL.iter().map(|k| k.as_str()).collect();
    if let Some(items) = schema
        .get_mut("properties")
        .and_then(|p| p.get_mut("kinds"))
        .and_then(|k| k.get_mut("items"))
    {
        items["enum"] = serde_json::json!(kinds);
    }
    super::common::add_rule(
        schema,
        serde_json::json!({"oneOf": [
            super::common::given("role"),
            {"required": ["verbs"], "properties": {"verbs": {"minItems": 1}}}
        ]}),
    );
}

/// Predefined roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including access policies.
    Admin,
    /// Everything but access policies.
    Operator,
    /// Read only.
    Viewer,
}

/// Verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// Read one object.
    Get,
    /// List objects.
    List,
    /// Create or change objects.
    Apply,
    /// Delete objects.
    Delete,
    /// Open a VM console.
    Console,
    /// Create, revert and clone replicas.
    Replicate,
    /// Relocate VMs.
    Relocate,
    /// All verbs.
    #[serde(rename = "*")]
    All,
}

/// Level-2: a password check against directory servers tried in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Level2 {
    /// Directory servers, tried in order until one accepts.
    #[schemars(length(min = 1))]
    pub servers: Vec<DirectoryServer>,
    /// Directory user name per subject address; absent subjects use the
    /// address itself.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub usernames: std::collections::BTreeMap<String, String>,
}

/// One LDAP / Active Directory server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = server_rules)]
pub struct DirectoryServer {
    /// `ldap://HOST[:PORT]` or `ldaps://HOST[:PORT]`.
    #[schemars(regex(pattern = "^ldaps?://"))]
    pub uri: String,
    /// Bind DN template with `{user}`, e.g. `uid={user},ou=people,dc=example,dc=org`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"\{user\}"))]
    pub bind_dn: Option<String>,
    /// Active Directory user principal name template, e.g. `{user}@EXAMPLE.ORG`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"\{user\}"))]
    pub user_principal_name: Option<String>,
    /// Upgrade `ldap://` with StartTLS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub start_tls: bool,
    /// PEM file of the CA certificate(s) that signed this server's TLS
    /// certificate (`ldaps://` or StartTLS), trusted instead of the
    /// system's CA store, e.g. a domain's own CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Give up on this server after this long (default 2s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// One of `bindDn` and `userPrincipalName`; no StartTLS on `ldaps://`.
fn server_rules(schema: &mut schemars::Schema) {
    exactly_one(schema, &["bindDn", "userPrincipalName"]);
    super::common::add_rule(
        schema,
        serde_json::json!({
            "if": {"required": ["uri"], "properties": {"uri": {"pattern": "^ldaps://"}}},
            "then": {"properties": {"startTls": {"const": false}}}
        }),
    );
}

/// Status of a policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessPolicyStatus {
    /// The `metadata.generation` the reconciler last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions (type, status, reason, message).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
