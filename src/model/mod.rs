//! The object model: every kind deorch knows, Kubernetes-style
//! (`apiVersion`, `kind`, `metadata`, `spec`, `status`), built on
//! `kube-core`'s `ObjectMeta` and `Resource`.
//!
//! Architecture invariant: this module is pure data. It does no I/O and
//! knows nothing of the store, the reconcilers or the drivers.

pub mod access;
pub mod canonical;
pub mod common;
pub mod names;
pub mod network;
pub mod phase;
pub mod relocation;
pub mod satellite;
pub mod spacesuit;
pub mod storage_kinds;
pub mod vm;

use std::borrow::Cow;
use std::fmt;

use kube_core::{ObjectMeta, Resource};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use access::{AccessPolicySpec, AccessPolicyStatus};
pub use common::{Condition, Cpu, Duration, Performance, Placement, Quantity, TagSelector, Tags};
pub use network::{NetworkSpec, NetworkStatus};
pub use relocation::{RelocationMode, RelocationProgress, RelocationSpec, RelocationStatus};
pub use satellite::{SatelliteSpec, SatelliteStatus};
pub use spacesuit::{SpacesuitSpec, SpacesuitStatus};
pub use storage_kinds::{DatasetSpec, DatasetStatus, ReplicaSpec, ReplicaStatus};
pub use vm::{FastrCopy, VirtualMachineSpec, VirtualMachineStatus};

/// The API group of every deorch kind.
pub const GROUP: &str = "deorch.dev";
/// The one API version.
pub const VERSION: &str = "v1alpha1";
/// `GROUP/VERSION`, the only accepted `apiVersion`.
pub const API_VERSION: &str = "deorch.dev/v1alpha1";
/// Namespace of namespaced objects that name none.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Annotation on a VirtualMachine: revert its disks to this Replica (same
/// namespace). Carried out once per object generation: the VM is stopped,
/// every disk becomes a copy of the replica's, and it starts again if its
/// power state says so. `deorch replica revert` sets it.
pub const REVERT_ANNOTATION: &str = "deorch.dev/revert-to";
/// On a tombstone: the deletion asked for `--purge`, so the object's
/// volumes are destroyed at once instead of retained.
pub const PURGE_ANNOTATION: &str = "deorch.dev/purge";

/// A kind's spec type, with what the model knows about the kind.
pub trait Spec:
    Serialize + DeserializeOwned + JsonSchema + Clone + fmt::Debug + PartialEq + Send + Sync + 'static
{
    /// The `kind` string.
    const KIND: &'static str;
    /// Lower-case plural, used by the CLI (`deorch get virtualmachines`).
    const PLURAL: &'static str;
    /// Whether objects live in a namespace.
    const NAMESPACED: bool;
    /// The status type.
    type Status: Serialize
        + DeserializeOwned
        + JsonSchema
        + Clone
        + fmt::Debug
        + PartialEq
        + Default
        + Send
        + Sync
        + 'static;
    /// The kube-core scope marker.
    type Scope;
}

/// A typed object of kind `S`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, bound = "S: Spec")]
pub struct Manifest<S: Spec> {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always `S::KIND`.
    pub kind: String,
    /// Name, namespace, labels, annotations, generation.
    pub metadata: ObjectMeta,
    /// Desired state.
    pub spec: S,
    /// Observed state, written by nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<S::Status>,
}

impl<S: Spec> Manifest<S> {
    /// A new object with the given name and spec.
    pub fn new(name: &str, spec: S) -> Self {
        Manifest {
            api_version: API_VERSION.to_string(),
            kind: S::KIND.to_string(),
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: S::NAMESPACED.then(|| DEFAULT_NAMESPACE.to_string()),
                ..Default::default()
            },
            spec,
            status: None,
        }
    }
}

impl<S: Spec> Resource for Manifest<S> {
    type DynamicType = ();
    type Scope = S::Scope;
    fn kind(_: &()) -> Cow<'_, str> {
        S::KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        S::PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

macro_rules! kinds {
    ($( $variant:ident => $spec:ty, $status:ty, $plural:literal, $namespaced:literal, $scope:ty, [$($alias:literal),*] ;)*) => {
        $(
            impl Spec for $spec {
                const KIND: &'static str = stringify!($variant);
                const PLURAL: &'static str = $plural;
                const NAMESPACED: bool = $namespaced;
                type Status = $status;
                type Scope = $scope;
            }
        )*

        /// Every kind, as a value.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum Kind {
            $(
                #[doc = concat!("`", stringify!($variant), "`")]
                $variant,
            )*
        }

        impl Kind {
            /// All kinds in declaration order.
            pub const ALL: &'static [Kind] = &[$(Kind::$variant),*];

            /// The `kind` string.
            pub fn as_str(self) -> &'static str {
                match self { $(Kind::$variant => <$spec as Spec>::KIND),* }
            }
            /// Lower-case plural.
            pub fn plural(self) -> &'static str {
                match self { $(Kind::$variant => <$spec as Spec>::PLURAL),* }
            }
            /// Whether objects of this kind live in a namespace.
            pub fn namespaced(self) -> bool {
                match self { $(Kind::$variant => <$spec as Spec>::NAMESPACED),* }
            }
            /// Parse a `kind` string exactly (as in manifests).
            pub fn from_kind(s: &str) -> Option<Kind> {
                match s { $(stringify!($variant) => Some(Kind::$variant),)* _ => None }
            }
            /// Parse what a user types on the command line: the kind, its
            /// plural or a short alias, case-insensitively.
            pub fn from_cli(s: &str) -> Option<Kind> {
                let l = s.to_ascii_lowercase();
                $(
                    if l == stringify!($variant).to_ascii_lowercase() || l == $plural $(|| l == $alias)* {
                        return Some(Kind::$variant);
                    }
                )*
                None
            }
            /// The JSON schema of a whole object of this kind.
            pub fn schema(self) -> schemars::Schema {
                match self { $(Kind::$variant => crate::schema::object_schema::<$spec>()),* }
            }
        }

        /// An object of any kind, typed.
        #[derive(Debug, Clone, PartialEq)]
        #[allow(clippy::large_enum_variant)]
        pub enum AnyObject {
            $(
                #[doc = concat!("A `", stringify!($variant), "`.")]
                $variant(Manifest<$spec>),
            )*
        }

        impl AnyObject {
            /// Its kind.
            pub fn kind(&self) -> Kind {
                match self { $(AnyObject::$variant(_) => Kind::$variant),* }
            }
            /// Its metadata.
            pub fn metadata(&self) -> &ObjectMeta {
                match self { $(AnyObject::$variant(o) => &o.metadata),* }
            }
            /// Its metadata, mutably.
            pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
                match self { $(AnyObject::$variant(o) => &mut o.metadata),* }
            }
            /// Deserialize a JSON value whose `kind` says which type it is.
            pub fn from_value(v: serde_json::Value) -> Result<AnyObject, serde_json::Error> {
                use serde::de::Error as _;
                let kind = v.get("kind").and_then(|k| k.as_str()).map(str::to_owned);
                match kind.as_deref().and_then(Kind::from_kind) {
                    $(Some(Kind::$variant) => Ok(AnyObject::$variant(serde_json::from_value(v)?)),)*
                    None => Err(serde_json::Error::custom(format!("unknown kind {:?}", kind))),
                }
            }
            /// Serialize to a JSON value.
            pub fn to_value(&self) -> serde_json::Value {
                match self { $(AnyObject::$variant(o) => serde_json::to_value(o)),* }
                    .expect("model types always serialize")
            }
        }
    };
}

use k8s_openapi::{ClusterResourceScope as Cluster, NamespaceResourceScope as Namespaced};

kinds! {
    Satellite => SatelliteSpec, SatelliteStatus, "satellites", false, Cluster, ["sat", "sats", "node", "nodes"];
    Spacesuit => SpacesuitSpec, SpacesuitStatus, "spacesuits", true, Namespaced, ["suit", "suits"];
    VirtualMachine => VirtualMachineSpec, VirtualMachineStatus, "virtualmachines", true, Namespaced, ["vm", "vms"];
    Replica => ReplicaSpec, ReplicaStatus, "replicas", true, Namespaced, ["rep"];
    Relocation => RelocationSpec, RelocationStatus, "relocations", true, Namespaced, ["reloc"];
    Dataset => DatasetSpec, DatasetStatus, "datasets", true, Namespaced, ["ds"];
    Network => NetworkSpec, NetworkStatus, "networks", true, Namespaced, ["net", "nets"];
    AccessPolicy => AccessPolicySpec, AccessPolicyStatus, "accesspolicies", false, Cluster, ["policy", "policies", "ap"];
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity of an object: kind, namespace (empty for cluster-scoped
/// kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    /// Kind.
    pub kind: Kind,
    /// Namespace, or "" for cluster-scoped kinds.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// Build a key, applying the default namespace rules of `kind`.
    pub fn new(kind: Kind, namespace: Option<&str>, name: &str) -> ObjectKey {
        let namespace = if kind.namespaced() {
            namespace.unwrap_or(DEFAULT_NAMESPACE).to_string()
        } else {
            String::new()
        };
        ObjectKey {
            kind,
            namespace,
            name: name.to_string(),
        }
    }

    /// The key of an object.
    pub fn of(obj: &AnyObject) -> ObjectKey {
        let m = obj.metadata();
        ObjectKey::new(
            obj.kind(),
            m.namespace.as_deref(),
            m.name.as_deref().unwrap_or_default(),
        )
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}
