//! The node's local API: newline-delimited JSON over a Unix socket that only
//! root (or the node's own user) may open. The CLI's `apply`, `delete`,
//! `get` and `describe` talk to a running node through it.
//!
//! One request per line, one response per line. Handlers parse and hand
//! documents to admission (source `api`, [`crate::admission::Trust::Local`]:
//! the socket is the node's own), which alone writes the store; reads go
//! to the store. `apply` is all-or-nothing: if any document of the
//! request is invalid or refused, nothing is applied and every reason is
//! returned. `apply` with `dryRun` answers the verdicts and, for each
//! document, what this node's reconciler would do (planned against the
//! store as the batch would leave it); it changes nothing.

pub mod client;
pub mod server;
mod stream;

use serde::{Deserialize, Serialize};

use crate::admission::Admitted;
use crate::manifest::Diagnostic;
use crate::model::ObjectKey;
use crate::store::{Applied, Event, Record};

/// A request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    /// Validate and apply multi-document YAML.
    Apply {
        /// Name shown in diagnostics (the file the CLI read, or `<stdin>`).
        filename: String,
        /// The YAML text.
        yaml: String,
        /// Only answer what admission would decide; change nothing.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        dry_run: bool,
    },
    /// Delete one object.
    Delete {
        /// Kind (as typed by the user: kind, plural or alias).
        kind: String,
        /// Namespace (default namespace when absent).
        namespace: Option<String>,
        /// Name.
        name: String,
        /// Destroy its volumes at once instead of retaining them.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        purge: bool,
    },
    /// List objects.
    Get {
        /// Kind filter.
        kind: Option<String>,
        /// Namespace filter; `None` means all namespaces.
        namespace: Option<String>,
        /// Name filter.
        name: Option<String>,
    },
    /// One object with its events.
    Describe {
        /// Kind.
        kind: String,
        /// Namespace.
        namespace: Option<String>,
        /// Name.
        name: String,
    },
    /// A command line as the web page's search bar takes it
    /// (`deorch do`): its plan and rows, and with `run` the plan applied.
    Command {
        /// The text typed.
        q: String,
        /// Apply the plan (when it changes something).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        run: bool,
    },
    /// Node information.
    Info,
    /// This node's volumes, the retained ones with their deadline.
    Volumes,
    /// Take a retained volume back under its own name (a VM with the same
    /// identity then uses it; it is no longer destroyed at the deadline).
    RestoreVolume {
        /// Its retained name (`retained.<until>.<volume>`).
        name: String,
    },
    /// Destroy a retained volume now.
    PurgeVolume {
        /// Its retained name.
        name: String,
    },
    /// Recover a `NodeLost` VM: this node claims it and starts it from
    /// what it has here (`deorch recover`).
    Recover {
        /// Namespace (default `default`).
        namespace: Option<String>,
        /// The VM.
        name: String,
    },
    /// Take and send a FASTR copy point of a VM running on this node now
    /// (`deorch fastr sync`).
    FastrSync {
        /// Namespace (default `default`).
        namespace: Option<String>,
        /// The VM.
        name: String,
    },
    /// The complete FASTR copy points of a VM this node holds
    /// (`deorch fastr points`).
    FastrPoints {
        /// Namespace (default `default`).
        namespace: Option<String>,
        /// The VM.
        name: String,
    },
    /// Start a VM on this node from its FASTR copy here
    /// (`deorch fastr recover`).
    FastrRecover {
        /// Namespace (default `default`).
        namespace: Option<String>,
        /// The VM.
        name: String,
        /// The point (newest when `None`).
        at: Option<String>,
    },
    /// A console ticket for a VM running on this node: a one-time
    /// password that unlocks its consoles for a minute (`deorch console`).
    Console {
        /// Namespace (default `default`).
        namespace: Option<String>,
        /// The VM.
        name: String,
    },
    /// Watch objects (`deorch get -w`): the answer is a stream on this
    /// connection, first `Objects` (what matches now), then one `Watched`
    /// per change, until the client closes it.
    Watch {
        /// Kind filter.
        kind: Option<String>,
        /// Namespace filter; `None` means all namespaces.
        namespace: Option<String>,
        /// Name filter.
        name: Option<String>,
    },
    /// The serial console output of a VM this node runs (`deorch logs`):
    /// a stream of `Log` chunks, then the connection closes (with `follow`,
    /// it goes on until the client closes it).
    Logs {
        /// Namespace (default `default`).
        namespace: Option<String>,
        /// The VM.
        name: String,
        /// Only the last lines.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tail: Option<usize>,
        /// Go on sending what the guest prints.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        follow: bool,
    },
    /// Reset a VM this node runs at once (QEMU's `system_reset`: the
    /// guest reboots without shutting down; `deorch vm restart --hard`).
    VmReset {
        /// Namespace (default `default`).
        namespace: Option<String>,
        /// The VM.
        name: String,
    },
    /// Events about one object (refused ones too: they have no record),
    /// or all events; oldest first.
    Events {
        /// Kind; all events when absent.
        kind: Option<String>,
        /// Namespace.
        namespace: Option<String>,
        /// Name.
        name: Option<String>,
    },
}

/// A response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum Response {
    /// Objects applied (one entry per document, in order).
    Applied {
        /// Outcomes.
        objects: Vec<Applied>,
    },
    /// The request's YAML was invalid; nothing was applied.
    Invalid {
        /// Every problem.
        diagnostics: Vec<Diagnostic>,
    },
    /// Admission refused a document, so nothing was applied; one verdict
    /// per document (the acceptable ones `Withheld`).
    Refused {
        /// Verdicts, in document order.
        verdicts: Vec<Admitted>,
    },
    /// What admission would decide (a dry run); nothing changed.
    Verdicts {
        /// Verdicts, in document order (`Applied`: would be applied).
        verdicts: Vec<Admitted>,
        /// What this node would then do for each (same order; empty when
        /// the batch would be refused as a whole).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        plans: Vec<crate::reconcile::kind::Preview>,
    },
    /// Events.
    Events {
        /// Oldest first.
        events: Vec<Event>,
    },
    /// An object was deleted.
    Deleted {
        /// Key.
        key: ObjectKey,
        /// Tombstone generation.
        generation: i64,
    },
    /// A command's outcome ([`crate::command::answer`]): the plan, rows
    /// and completions, `applied` when it ran; or its refusal (`code`).
    Command {
        /// The JSON the web page gets too.
        outcome: serde_json::Value,
    },
    /// Records.
    Objects {
        /// Live records.
        records: Vec<Record>,
    },
    /// One record and its events.
    Described {
        /// The record.
        record: Box<Record>,
        /// Events about it, oldest first.
        events: Vec<Event>,
    },
    /// Node information.
    Info(Box<NodeInfo>),
    /// Volumes, by name.
    Volumes {
        /// Every volume of the node's storage.
        volumes: Vec<VolumeEntry>,
    },
    /// A console ticket: `{vm, host, vncPort, websocketPort, spicePort,
    /// password, expires, url}` (as the HTTP API's).
    ConsoleTicket {
        /// The ticket.
        ticket: serde_json::Value,
    },
    /// The complete FASTR copy points of a VM held here, oldest first.
    FastrPoints {
        /// `fastr-<unix ms>` each.
        points: Vec<String>,
    },
    /// One change of a watch: the record as it is now.
    Watched {
        /// `ADDED`, `MODIFIED` or `DELETED`.
        #[serde(rename = "type")]
        change: String,
        /// The record (for `DELETED`, the last one seen, or its tombstone).
        record: Box<Record>,
    },
    /// A piece of a VM's serial console output.
    Log {
        /// Text as the guest printed it (invalid UTF-8 replaced).
        text: String,
    },
    /// A volume was restored or purged.
    VolumeDone {
        /// What was done, in words.
        message: String,
    },
    /// The request failed.
    Error {
        /// `NotFound`, `BadRequest`, `Internal`.
        code: String,
        /// What went wrong.
        message: String,
    },
}

/// One volume of `Volumes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeEntry {
    /// Its name in the storage.
    pub name: String,
    /// For a retained volume: its own name, and when it is destroyed
    /// (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained: Option<(String, u64)>,
    /// For a disk of a diverged copy of a VM (this node ran the VM and
    /// another node's newer claim replaced it): which.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diverged: Option<Diverged>,
}

/// What a volume of a diverged copy belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Diverged {
    /// The VM (`namespace/name`).
    pub vm: String,
    /// The node the VM runs on, as this node's status of it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The diverged replica the volume belongs to (a new VM clones it
    /// with `source.replica`); `None`: the VM's own disk, kept under its
    /// name until the other node reports running the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

/// What `Info` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// Node (satellite) name.
    pub name: String,
    /// deorch version.
    pub version: String,
    /// Live objects in the store.
    pub objects: usize,
    /// Hypervisor driver in use.
    pub hypervisor: String,
    /// Storage driver in use.
    pub storage: String,
    /// Manifest directory watched.
    pub manifests: String,
    /// Seconds since the node started.
    pub uptime_secs: u64,
    /// Recent warning events of the node (e.g. rejected manifest files).
    pub warnings: Vec<Event>,
    /// The HTTP API's URL, when it listens (the web page is at its `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_url: Option<String>,
}

/// Largest request line accepted (bytes).
pub const MAX_REQUEST: usize = 16 << 20;
