//! Node configuration, resolved in two phases (as ripgrep does): flags,
//! environment variables (`DEORCH_*`) and an optional YAML config file are
//! read into [`NodeArgs`]/[`FileConfig`] (everything optional), then
//! [`NodeConfig::resolve`] turns them into one immutable [`NodeConfig`] that
//! the rest of the node uses. Precedence: flag > environment > file > default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::Duration as ManifestDuration;

/// `deorch node run` flags (each also readable from the environment).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NodeArgs {
    /// YAML config file (keys as the long flags, e.g. `stateDir`).
    #[arg(long, env = "DEORCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Node (satellite) name; default: the host name.
    #[arg(long, env = "DEORCH_NAME")]
    pub name: Option<String>,
    /// Manifest directory to watch; default /etc/deorch/manifests.
    #[arg(long, env = "DEORCH_MANIFESTS")]
    pub manifests: Option<PathBuf>,
    /// State directory (store, VM runtime files); default /var/lib/deorch.
    #[arg(long, env = "DEORCH_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Local API socket; default /run/deorch/deorch.sock.
    #[arg(long, env = "DEORCH_SOCKET")]
    pub socket: Option<PathBuf>,
    /// This node's IP addresses (repeat or comma-separate).
    #[arg(long = "address", env = "DEORCH_ADDRESSES", value_delimiter = ',')]
    pub addresses: Vec<String>,
    /// Hypervisor driver: `qemu` (default), `libvirt` (domains on a running
    /// libvirtd) or `fake` (VMs simulated in memory).
    #[arg(long, env = "DEORCH_HYPERVISOR")]
    pub hypervisor: Option<String>,
    /// libvirt URI of the `libvirt` driver; default qemu:///system.
    #[arg(long, env = "DEORCH_LIBVIRT_URI")]
    pub libvirt_uri: Option<String>,
    /// Host network driver: `fake` (default: bridges and taps in memory,
    /// NICs on QEMU's user-mode network) or `linux` (real bridges and
    /// taps, made with `ip`; the node serves DHCP on its bridges; needs
    /// CAP_NET_ADMIN).
    #[arg(long, env = "DEORCH_NET")]
    pub net: Option<String>,
    /// Storage driver: `dir` (default: qcow2 files below the storage
    /// root), `zfs` (datasets below the storage root, e.g. `pool0/deorch`)
    /// or `fake` (volumes simulated in memory).
    #[arg(long, env = "DEORCH_STORAGE")]
    pub storage: Option<String>,
    /// Storage root: a directory for `dir` (default STATE_DIR/storage), a
    /// dataset for `zfs` (required).
    #[arg(long, env = "DEORCH_STORAGE_ROOT")]
    pub storage_root: Option<String>,
    /// Directory of the tiny guest used for the accelerator probe boot
    /// (built by guest/build.sh); default /var/lib/deorch/guest.
    #[arg(long, env = "DEORCH_PROBE_GUEST")]
    pub probe_guest: Option<PathBuf>,
    /// Address VM consoles (VNC, its websocket, SPICE) listen on; default:
    /// the node's first `--address`, else 127.0.0.1. The consoles have no
    /// authentication of their own yet: anyone who reaches this address
    /// and a VM's port sees its screen.
    #[arg(long, env = "DEORCH_CONSOLE_ADDRESS")]
    pub console_address: Option<std::net::IpAddr>,
    /// VNC port range of VM consoles, `FIRST-LAST` (default 5900-6899,
    /// FIRST ≥ 5900); the websocket (noVNC) range follows right after it
    /// and the SPICE range after that, each as long.
    #[arg(long, env = "DEORCH_CONSOLE_PORTS")]
    pub console_ports: Option<String>,
    /// Full rescan period of the manifest directory, e.g. `10s`.
    #[arg(long, env = "DEORCH_RESCAN_INTERVAL")]
    pub rescan_interval: Option<ManifestDuration>,
    /// Age a modified but unclosed manifest must reach before a rescan reads it.
    #[arg(long, env = "DEORCH_SETTLE")]
    pub settle: Option<ManifestDuration>,
    /// How long an object must stay undeclared by every manifest file
    /// (its file rewritten without it, removed, renamed away) before it is
    /// deleted, e.g. `10s`: a save in two steps, a git checkout or a
    /// remount that brings it back within that time changes nothing.
    #[arg(long, env = "DEORCH_REMOVAL_GRACE")]
    pub removal_grace: Option<ManifestDuration>,
    /// Start even when the manifest directory is missing and the store
    /// holds objects its files declared (they are then deleted). Without
    /// it a missing or unreadable directory is an error: the node keeps
    /// what it has, says why, and retries.
    #[arg(long, env = "DEORCH_ALLOW_EMPTY_MANIFESTS")]
    pub allow_empty_manifests: bool,
    /// Start with an empty store when the store file is empty, damaged,
    /// or missing while a snapshot of it exists (the damaged file is kept
    /// aside as `store.redb.damaged-<ms>`). Without it the node refuses to
    /// start and names `deorch node recover-store`.
    #[arg(long, env = "DEORCH_INIT_STORE")]
    pub init_store: bool,
    /// How long the volumes of a deleted VM or replica are kept (renamed
    /// `retained.<until>.<volume>`, listed by `deorch volume list`, taken
    /// back if the VM returns) before they are destroyed, e.g. `24h`
    /// (default); `0s` destroys at once, as `deorch delete --purge` does.
    #[arg(long, env = "DEORCH_VOLUME_RETENTION")]
    pub volume_retention: Option<ManifestDuration>,
    /// Cap on the bytes per second this node sends in relocation streams
    /// (disks and memory, all relocations together), e.g. `100Mi`;
    /// uncapped by default.
    #[arg(long, env = "DEORCH_RELOCATION_BANDWIDTH")]
    pub relocation_bandwidth: Option<crate::model::Quantity>,
    /// Versions of each object kept in the history log
    /// (STATE_DIR/history.log, `deorch history`); default 100, `0` turns
    /// the log off.
    #[arg(long, env = "DEORCH_HISTORY_KEEP")]
    pub history_keep: Option<usize>,
    /// About how much the history log may take, e.g. `64Mi` (default);
    /// the newest version of every object is kept even past it.
    #[arg(long, env = "DEORCH_HISTORY_MAX_BYTES")]
    pub history_max_bytes: Option<crate::model::Quantity>,
    /// Serve the HTTP API (login, signed push) on this address, e.g.
    /// `0.0.0.0:8443` (port 0: any free port, written to
    /// STATE_DIR/http-address; the URL clients take, with the TLS pin, to
    /// STATE_DIR/http-url). Off by default.
    #[arg(long, env = "DEORCH_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// This node's key (WIF, 0600); created when absent. Default
    /// STATE_DIR/node.key. Its P2WPKH address is the node's identity.
    #[arg(long, env = "DEORCH_NODE_KEY")]
    pub node_key: Option<PathBuf>,
    /// The cluster owner's Bitcoin address, which is also the cluster id.
    /// Required with `--http-listen`.
    #[arg(long, env = "DEORCH_CLUSTER_OWNER")]
    pub cluster_owner: Option<String>,
    /// Addresses of the other nodes of the cluster whose session cookies
    /// this node accepts (repeat or comma-separate); this node's own
    /// address is always trusted.
    #[arg(
        long = "trusted-node",
        env = "DEORCH_TRUSTED_NODES",
        value_delimiter = ','
    )]
    pub trusted_nodes: Vec<String>,
    /// Lifetime of a login challenge, e.g. `60s` (the default).
    #[arg(long, env = "DEORCH_LOGIN_TTL")]
    pub login_ttl: Option<ManifestDuration>,
    /// Lifetime of a session cookie, e.g. `12h` (the default).
    #[arg(long, env = "DEORCH_SESSION_TTL")]
    pub session_ttl: Option<ManifestDuration>,
    /// TLS certificate chain (PEM) of the HTTP API; default: a self-signed
    /// one kept in STATE_DIR/tls/.
    #[arg(long, env = "DEORCH_HTTP_TLS_CERT", requires = "http_tls_key")]
    pub http_tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "DEORCH_HTTP_TLS_KEY", requires = "http_tls_cert")]
    pub http_tls_key: Option<PathBuf>,
    /// Serve the HTTP API without TLS (behind a TLS proxy, or on loopback).
    #[arg(long, env = "DEORCH_HTTP_PLAIN")]
    pub http_plain: bool,
    /// Networks (CIDRs or single addresses, repeat or comma-separate)
    /// whose clients may read `GET /metrics` without a session, e.g. a
    /// Prometheus server's `10.0.0.5`; `0.0.0.0/0,::/0` makes it public. Default none:
    /// a session of the cluster owner or an admin is needed.
    #[arg(
        long = "metrics-allow",
        env = "DEORCH_METRICS_ALLOW",
        value_delimiter = ','
    )]
    pub metrics_allow: Vec<String>,
    /// Follow this git repository (URL or path) as a source of desired
    /// state; its documents must be signed for the cluster
    /// (`--cluster-owner`) unless `--git-unsigned`.
    #[arg(long, env = "DEORCH_GIT_REPO")]
    pub git_repo: Option<String>,
    /// Branch to follow; default `main`.
    #[arg(long, env = "DEORCH_GIT_BRANCH")]
    pub git_branch: Option<String>,
    /// Directory of the repository holding manifests; default all of it.
    #[arg(long, env = "DEORCH_GIT_PATH")]
    pub git_path: Option<String>,
    /// Poll period of the repository, e.g. `15s` (the default).
    #[arg(long, env = "DEORCH_GIT_POLL")]
    pub git_poll: Option<ManifestDuration>,
    /// Accept unsigned documents from the repository (trust it like the
    /// local manifest directory). Off by default.
    #[arg(long, env = "DEORCH_GIT_UNSIGNED")]
    pub git_unsigned: bool,
    /// Gossip settings (off unless `--gossip-listen` is given).
    #[command(flatten)]
    pub gossip: GossipArgs,
}

/// `deorch node run` gossip flags (see [`GossipSettings`]).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GossipArgs {
    /// Take part in a cluster: gossip over UDP on this address, e.g.
    /// `127.0.0.1:7946` (port 0: any free port, written to
    /// STATE_DIR/gossip-address). Off by default.
    #[arg(long, env = "DEORCH_GOSSIP_LISTEN")]
    pub gossip_listen: Option<SocketAddr>,
    /// Gossip address of a member to join through (repeat or comma-separate).
    #[arg(long = "seed", env = "DEORCH_SEEDS", value_delimiter = ',')]
    pub seeds: Vec<SocketAddr>,
    /// Cluster ID signed documents must be bound to; default the cluster
    /// owner's address (`--cluster-owner`), else `deorch`.
    #[arg(long, env = "DEORCH_CLUSTER")]
    pub cluster: Option<String>,
    /// Which gossiped documents are accepted: `signed` (signed manifests of
    /// the cluster only; the default) or `unsigned` (everything a peer
    /// sends: a trusted lab or loopback only; logged as a warning).
    #[arg(long, env = "DEORCH_GOSSIP_VERIFY")]
    pub gossip_verify: Option<String>,
    /// SWIM probe period, e.g. `1s` (the default).
    #[arg(long, env = "DEORCH_GOSSIP_PROBE_INTERVAL")]
    pub gossip_probe_interval: Option<ManifestDuration>,
    /// A suspected member not refuting within this is dead; default `4s`.
    #[arg(long, env = "DEORCH_GOSSIP_SUSPECT_TIMEOUT")]
    pub gossip_suspect_timeout: Option<ManifestDuration>,
    /// A claimant starts a VM after holding the best claim this long;
    /// default `3s`.
    #[arg(long, env = "DEORCH_GOSSIP_CLAIM_SETTLE")]
    pub gossip_claim_settle: Option<ManifestDuration>,
    /// A VM whose claimant died is re-elected this long after the death;
    /// default `5s`.
    #[arg(long, env = "DEORCH_GOSSIP_REELECT_TIMEOUT")]
    pub gossip_reelect_timeout: Option<ManifestDuration>,
    /// Self-fencing (gossip with the qemu or libvirt driver): a process
    /// beside the daemon pauses this node's VMs when the daemon has not
    /// renewed its lease for this long; default `5s`, `0s` turns it off.
    /// Must be at most suspect + re-elect + claim settle − 1s, so that no
    /// peer starts a copy before the fence has acted.
    #[arg(long, env = "DEORCH_FENCE_TIMEOUT")]
    pub fence_timeout: Option<ManifestDuration>,
    /// A graceful stop (an upgrade) announces it is back within this;
    /// the fence and the peers wait that long before acting; default `10m`.
    #[arg(long, env = "DEORCH_FENCE_HOLD")]
    pub fence_hold: Option<ManifestDuration>,
}

/// The config file: the same settings, all optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    /// Node name.
    pub name: Option<String>,
    /// Manifest directory.
    pub manifests: Option<PathBuf>,
    /// State directory.
    pub state_dir: Option<PathBuf>,
    /// Socket path.
    pub socket: Option<PathBuf>,
    /// Addresses.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Hypervisor driver.
    pub hypervisor: Option<String>,
    /// libvirt URI.
    pub libvirt_uri: Option<String>,
    /// Host network driver.
    pub net: Option<String>,
    /// Storage driver.
    pub storage: Option<String>,
    /// Storage root.
    pub storage_root: Option<String>,
    /// Probe guest directory.
    pub probe_guest: Option<PathBuf>,
    /// Console listen address.
    pub console_address: Option<std::net::IpAddr>,
    /// Console VNC port range, `FIRST-LAST`.
    pub console_ports: Option<String>,
    /// Rescan period.
    pub rescan_interval: Option<ManifestDuration>,
    /// Settle time.
    pub settle: Option<ManifestDuration>,
    /// Removal grace.
    pub removal_grace: Option<ManifestDuration>,
    /// Volume retention.
    pub volume_retention: Option<ManifestDuration>,
    /// Relocation bandwidth cap, bytes per second.
    pub relocation_bandwidth: Option<crate::model::Quantity>,
    /// Versions kept per object in the history log.
    pub history_keep: Option<usize>,
    /// The history log's byte budget.
    pub history_max_bytes: Option<crate::model::Quantity>,
    /// HTTP API listen address.
    pub http_listen: Option<SocketAddr>,
    /// Node key file.
    pub node_key: Option<PathBuf>,
    /// Cluster owner's address (cluster id).
    pub cluster_owner: Option<String>,
    /// Other nodes whose session cookies are accepted.
    #[serde(default)]
    pub trusted_nodes: Vec<String>,
    /// Login challenge lifetime.
    pub login_ttl: Option<ManifestDuration>,
    /// Session cookie lifetime.
    pub session_ttl: Option<ManifestDuration>,
    /// HTTP API TLS certificate.
    pub http_tls_cert: Option<PathBuf>,
    /// Its key.
    pub http_tls_key: Option<PathBuf>,
    /// Plain HTTP.
    #[serde(default)]
    pub http_plain: bool,
    /// Networks that may read `/metrics` without a session.
    #[serde(default)]
    pub metrics_allow: Vec<String>,
    /// Git repository to follow.
    pub git_repo: Option<String>,
    /// Its branch.
    pub git_branch: Option<String>,
    /// Its manifest directory.
    pub git_path: Option<String>,
    /// Its poll period.
    pub git_poll: Option<ManifestDuration>,
    /// Accept its documents unsigned.
    #[serde(default)]
    pub git_unsigned: bool,
    /// Gossip listen address.
    pub gossip_listen: Option<SocketAddr>,
    /// Gossip seeds.
    #[serde(default)]
    pub seeds: Vec<SocketAddr>,
    /// Cluster name.
    pub cluster: Option<String>,
    /// `signed` or `unsigned`.
    pub gossip_verify: Option<String>,
    /// SWIM probe period.
    pub gossip_probe_interval: Option<ManifestDuration>,
    /// Suspicion timeout.
    pub gossip_suspect_timeout: Option<ManifestDuration>,
    /// Claim settle time.
    pub gossip_claim_settle: Option<ManifestDuration>,
    /// Re-election timeout.
    pub gossip_reelect_timeout: Option<ManifestDuration>,
    /// Fence timeout.
    pub fence_timeout: Option<ManifestDuration>,
    /// Fence hold on a graceful stop.
    pub fence_hold: Option<ManifestDuration>,
}

/// Which hypervisor driver runs VMs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HypervisorKind {
    /// One daemonized QEMU process per VM.
    Qemu,
    /// One libvirt domain per VM, on libvirtd at this URI.
    Libvirt(String),
    /// In-memory simulation.
    Fake,
}

/// Which driver makes bridges and taps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetKind {
    /// In memory (NICs use QEMU's user-mode network).
    #[default]
    Fake,
    /// Linux bridges and taps, and the node's DHCP server on them.
    Linux,
}

/// Which storage driver holds volumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageKind {
    /// In-memory simulation.
    Fake,
    /// qcow2 files in this directory.
    Dir(PathBuf),
    /// ZFS datasets below this dataset.
    Zfs(String),
}

/// The resolved, immutable node configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Node name (a label; the node's ID is its key's address).
    pub name: String,
    /// The node key (`--node-key`, default STATE_DIR/node.key; created
    /// 0600 at first start): its P2WPKH address is the node's ID.
    pub node_key: PathBuf,
    /// Manifest directory.
    pub manifests: PathBuf,
    /// State directory.
    pub state_dir: PathBuf,
    /// Local API socket.
    pub socket: PathBuf,
    /// Node addresses.
    pub addresses: Vec<String>,
    /// Hypervisor driver.
    pub hypervisor: HypervisorKind,
    /// Host network driver.
    pub net: NetKind,
    /// Storage driver.
    pub storage: StorageKind,
    /// Probe guest directory.
    pub probe_guest: PathBuf,
    /// Where VM consoles listen, and their port ranges.
    pub console: ConsoleSettings,
    /// Manifest directory rescan period.
    pub rescan_interval: Duration,
    /// Settle time for unclosed files.
    pub settle: Duration,
    /// How long an object stays undeclared before it is deleted.
    pub removal_grace: Duration,
    /// A missing manifest directory is taken as empty.
    pub allow_empty_manifests: bool,
    /// An empty, damaged or lost store is replaced by an empty one.
    pub init_store: bool,
    /// How long a deleted VM's or replica's volumes are kept.
    pub volume_retention: Duration,
    /// Cap on relocation streams sent, bytes per second.
    pub relocation_bandwidth: Option<u64>,
    /// What the history log keeps (`keep` 0: no log).
    pub history: crate::history::Retention,
    /// The HTTP API, when enabled.
    pub http: Option<HttpConfig>,
    /// The git source, when enabled.
    pub git: Option<crate::source::git::GitConfig>,
    /// Gossip (cluster membership, document sync, placement), when enabled.
    pub gossip: Option<GossipSettings>,
    /// The cluster owner's address (`--cluster-owner`): the trust anchor
    /// of every signed document, whatever its source.
    pub cluster_owner: Option<String>,
}

/// VM consoles: listen address and port ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleSettings {
    /// Listen address.
    pub listen: std::net::IpAddr,
    /// VNC, websocket and SPICE ranges.
    pub ports: crate::qemu::console::PortRange,
}

/// `FIRST-LAST` as console port ranges: VNC `FIRST..=LAST`, then the
/// websocket range and the SPICE range, each as long, right after it.
fn console_ports(text: &str) -> Result<crate::qemu::console::PortRange, ConfigError> {
    let bad = |why: String| ConfigError::Invalid {
        setting: "consolePorts",
        message: format!("{text:?}: {why}"),
    };
    let (first, last) = text
        .split_once('-')
        .ok_or_else(|| bad("expected FIRST-LAST, e.g. 5900-6899".into()))?;
    let parse = |s: &str| {
        s.trim()
            .parse::<u32>()
            .map_err(|_| bad(format!("{s:?} is not a port number")))
    };
    let (first, last) = (parse(first)?, parse(last)?);
    if first < 5900 {
        return Err(bad(
            "the first port must be ≥ 5900 (QEMU takes a VNC display number)".into(),
        ));
    }
    if last < first {
        return Err(bad("the last port is below the first".into()));
    }
    let size = last - first + 1;
    if first + 3 * size > 65536 {
        return Err(bad(format!(
            "the VNC, websocket and SPICE ranges ({size} ports each, from {first}) must end by 65535"
        )));
    }
    Ok(crate::qemu::console::PortRange {
        vnc_base: first as u16,
        ws_base: (first + size) as u16,
        size: size as u16,
    })
}

/// How gossiped documents are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GossipVerify {
    /// Only signed manifests bound to the cluster name.
    Signed,
    /// Everything (trusted networks only; chosen explicitly, logged).
    Unsigned,
}

/// Settings of the gossip task (`--gossip-listen` and friends).
#[derive(Debug, Clone)]
pub struct GossipSettings {
    /// UDP listen address (port 0: any free port).
    pub listen: SocketAddr,
    /// Members to join through.
    pub seeds: Vec<SocketAddr>,
    /// Cluster name.
    pub cluster: String,
    /// Document verification.
    pub verify: GossipVerify,
    /// SWIM probe period.
    pub probe_interval: Duration,
    /// Suspicion timeout.
    pub suspect_timeout: Duration,
    /// Claim settle time.
    pub claim_settle: Duration,
    /// Re-election timeout.
    pub reelect_timeout: Duration,
    /// Self-fencing lease timeout (zero: no fence).
    pub fence_timeout: Duration,
    /// What a graceful stop announces (fence and peers wait this long).
    pub fence_hold: Duration,
}

/// Settings of the HTTP API (`--http-listen` and friends).
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Listen address (port 0: any free port).
    pub listen: SocketAddr,
    /// Node key file (created 0600 when absent).
    pub node_key: PathBuf,
    /// Cluster owner's address = cluster id.
    pub cluster_owner: String,
    /// Other nodes whose session cookies are accepted.
    pub trusted_nodes: Vec<String>,
    /// Login challenge lifetime.
    pub login_ttl: Duration,
    /// Session cookie lifetime.
    pub session_ttl: Duration,
    /// How the API is served.
    pub tls: HttpTls,
    /// Networks whose clients read `/metrics` without a session.
    pub metrics_allow: Vec<ipnet::IpNet>,
}

/// How the HTTP API is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpTls {
    /// HTTPS with the node's self-signed certificate in this directory.
    SelfSigned(PathBuf),
    /// HTTPS with the operator's certificate chain and key (PEM).
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// Plain HTTP.
    Plain,
}

/// A configuration error, naming the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read or parsed.
    #[error("config file {path}: {message}")]
    File {
        /// Path.
        path: String,
        /// What failed.
        message: String,
    },
    /// A setting has a bad value.
    #[error("setting {setting}: {message}")]
    Invalid {
        /// Setting name.
        setting: &'static str,
        /// What was expected.
        message: String,
    },
}

/// The default socket path.
pub const DEFAULT_SOCKET: &str = "/run/deorch/deorch.sock";

impl NodeConfig {
    /// Merge flags/env over the config file over defaults.
    pub fn resolve(args: &NodeArgs) -> Result<NodeConfig, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let http = resolve_http(args, &file)?;
        let git = resolve_git(args, &file)?;
        let state_dir = state_dir(args, &file);
        let gossip = resolve_gossip(args, &file)?;
        let name = args.name.clone().or(file.name).unwrap_or_else(default_name);
        if !crate::manifest::semantic::is_dns_label(&name) {
            return Err(ConfigError::Invalid {
                setting: "name",
                message: format!("{name:?} is not a DNS-1123 label (lower-case letters, digits, '-', at most 63)"),
            });
        }
        let addresses = if args.addresses.is_empty() {
            file.addresses
        } else {
            args.addresses.clone()
        };
        for a in &addresses {
            if a.parse::<std::net::IpAddr>().is_err() {
                return Err(ConfigError::Invalid {
                    setting: "address",
                    message: format!("{a:?} is not an IP address"),
                });
            }
        }
        let hypervisor = match args.hypervisor.clone().or(file.hypervisor).as_deref() {
            None | Some("qemu") => HypervisorKind::Qemu,
            Some("fake") => HypervisorKind::Fake,
            Some("libvirt") => HypervisorKind::Libvirt(
                args.libvirt_uri
                    .clone()
                    .or(file.libvirt_uri)
                    .unwrap_or_else(|| crate::driver::libvirt::DEFAULT_URI.into()),
            ),
            Some(other) => {
                return Err(ConfigError::Invalid {
                    setting: "hypervisor",
                    message: format!(
                        "unknown driver {other:?}; this build has: qemu, libvirt, fake"
                    ),
                })
            }
        };
        let net = match args.net.clone().or(file.net).as_deref() {
            None | Some("fake") => NetKind::Fake,
            Some("linux") => NetKind::Linux,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    setting: "net",
                    message: format!("unknown driver {other:?}; this build has: linux, fake"),
                })
            }
        };
        let storage_root = args.storage_root.clone().or(file.storage_root);
        let storage = match args.storage.clone().or(file.storage).as_deref() {
            Some("fake") => StorageKind::Fake,
            None | Some("dir") => StorageKind::Dir(
                storage_root
                    .map(PathBuf::from)
                    .unwrap_or_else(|| state_dir.join("storage")),
            ),
            Some("zfs") => match storage_root {
                Some(root) if !root.starts_with('/') && !root.is_empty() => StorageKind::Zfs(root),
                other => {
                    return Err(ConfigError::Invalid {
                        setting: "storageRoot",
                        message: format!(
                            "the zfs driver needs a dataset such as pool0/deorch, got {other:?}"
                        ),
                    })
                }
            },
            Some(other) => {
                return Err(ConfigError::Invalid {
                    setting: "storage",
                    message: format!("unknown driver {other:?}; this build has: dir, zfs, fake"),
                })
            }
        };
        let console = ConsoleSettings {
            listen: args
                .console_address
                .or(file.console_address)
                .or_else(|| addresses.first().and_then(|a| a.parse().ok()))
                .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1])),
            ports: match args.console_ports.clone().or(file.console_ports) {
                Some(text) => console_ports(&text)?,
                None => Default::default(),
            },
        };
        Ok(NodeConfig {
            node_key: args
                .node_key
                .clone()
                .or(file.node_key.clone())
                .unwrap_or_else(|| state_dir.join("node.key")),
            cluster_owner: args.cluster_owner.clone().or(file.cluster_owner.clone()),
            http,
            git,
            gossip,
            name,
            manifests: args
                .manifests
                .clone()
                .or(file.manifests)
                .unwrap_or_else(|| "/etc/deorch/manifests".into()),
            state_dir,
            socket: args
                .socket
                .clone()
                .or(file.socket)
                .unwrap_or_else(|| DEFAULT_SOCKET.into()),
            addresses,
            hypervisor,
            net,
            storage,
            probe_guest: args
                .probe_guest
                .clone()
                .or(file.probe_guest)
                .unwrap_or_else(|| "/var/lib/deorch/guest".into()),
            console,
            rescan_interval: args
                .rescan_interval
                .or(file.rescan_interval)
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(10)),
            settle: args
                .settle
                .or(file.settle)
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(5)),
            removal_grace: args
                .removal_grace
                .or(file.removal_grace)
                .map(|d| d.0)
                .unwrap_or(crate::source::dir::REMOVAL_GRACE),
            allow_empty_manifests: args.allow_empty_manifests,
            init_store: args.init_store,
            volume_retention: args
                .volume_retention
                .or(file.volume_retention)
                .map(|d| d.0)
                .unwrap_or(crate::reconcile::retention::DEFAULT),
            relocation_bandwidth: args
                .relocation_bandwidth
                .or(file.relocation_bandwidth)
                .map(|q| q.0),
            history: crate::history::Retention {
                keep: args
                    .history_keep
                    .or(file.history_keep)
                    .unwrap_or(crate::history::DEFAULT_KEEP),
                max_bytes: args
                    .history_max_bytes
                    .or(file.history_max_bytes)
                    .map_or(crate::history::DEFAULT_MAX_BYTES, |q| q.0),
            },
        })
    }
}

/// The HTTP settings: off unless a listen address is given; then the
/// cluster owner is required and every address must parse.
fn resolve_http(args: &NodeArgs, file: &FileConfig) -> Result<Option<HttpConfig>, ConfigError> {
    let state_dir = state_dir(args, file);
    let Some(listen) = args.http_listen.or(file.http_listen) else {
        return Ok(None);
    };
    let owner = args
        .cluster_owner
        .clone()
        .or(file.cluster_owner.clone())
        .ok_or(ConfigError::Invalid {
            setting: "clusterOwner",
            message: "the HTTP API needs the cluster owner's address (--cluster-owner)".into(),
        })?;
    let trusted_nodes = if args.trusted_nodes.is_empty() {
        file.trusted_nodes.clone()
    } else {
        args.trusted_nodes.clone()
    };
    for (setting, a) in std::iter::once(("clusterOwner", &owner))
        .chain(trusted_nodes.iter().map(|a| ("trustedNodes", a)))
    {
        if let Err(e) = crate::identity::Address::parse(a) {
            return Err(ConfigError::Invalid {
                setting,
                message: format!("{a:?} is not a Bitcoin address: {e}"),
            });
        }
    }
    let metrics_allow = if args.metrics_allow.is_empty() {
        &file.metrics_allow
    } else {
        &args.metrics_allow
    };
    let metrics_allow = metrics_allow
        .iter()
        .map(|n| {
            let n = n.trim();
            n.parse::<ipnet::IpNet>()
                .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| ConfigError::Invalid {
                    setting: "metricsAllow",
                    message: format!(
                        "{n:?} is not a network: expected an address, with a prefix length or not, e.g. 10.0.0.5, 10.0.0.0/24 or 2001:db8::/64"
                    ),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(HttpConfig {
        metrics_allow,
        listen,
        node_key: args
            .node_key
            .clone()
            .or(file.node_key.clone())
            .unwrap_or_else(|| state_dir.join("node.key")),
        cluster_owner: owner,
        trusted_nodes,
        login_ttl: args
            .login_ttl
            .or(file.login_ttl)
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(60)),
        session_ttl: args
            .session_ttl
            .or(file.session_ttl)
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(12 * 3600)),
        tls: match (
            args.http_plain || file.http_plain,
            args.http_tls_cert.clone().or(file.http_tls_cert.clone()),
            args.http_tls_key.clone().or(file.http_tls_key.clone()),
        ) {
            (true, None, None) => HttpTls::Plain,
            (true, _, _) => {
                return Err(ConfigError::Invalid {
                    setting: "httpPlain",
                    message: "--http-plain and a TLS certificate exclude each other".into(),
                })
            }
            (false, Some(cert), Some(key)) => HttpTls::Files { cert, key },
            (false, None, None) => HttpTls::SelfSigned(state_dir.join("tls")),
            (false, _, _) => return Err(ConfigError::Invalid {
                setting: "httpTlsCert",
                message:
                    "give both the TLS certificate and its key (--http-tls-cert, --http-tls-key)"
                        .into(),
            }),
        },
    }))
}

/// The git source: off unless a repository is given; then signatures are
/// checked for the cluster owner's address unless explicitly turned off.
fn resolve_git(
    args: &NodeArgs,
    file: &FileConfig,
) -> Result<Option<crate::source::git::GitConfig>, ConfigError> {
    use crate::source::git::{GitConfig, GitVerify};
    let Some(repo) = args.git_repo.clone().or(file.git_repo.clone()) else {
        return Ok(None);
    };
    let state_dir = state_dir(args, file);
    let verify = if args.git_unsigned || file.git_unsigned {
        GitVerify::Unsigned
    } else {
        let owner = args
            .cluster_owner
            .clone()
            .or(file.cluster_owner.clone())
            .ok_or(ConfigError::Invalid {
                setting: "clusterOwner",
                message: "the git source verifies signatures for the cluster owner's address (--cluster-owner), or needs --git-unsigned".into(),
            })?;
        if let Err(e) = crate::identity::Address::parse(&owner) {
            return Err(ConfigError::Invalid {
                setting: "clusterOwner",
                message: format!("{owner:?} is not a Bitcoin address: {e}"),
            });
        }
        GitVerify::Signed { cluster: owner }
    };
    let branch = args
        .git_branch
        .clone()
        .or(file.git_branch.clone())
        .unwrap_or_else(|| "main".into());
    // A ref name git accepts and that cannot be read as an option.
    if branch.is_empty()
        || branch.starts_with('-')
        || branch.contains("..")
        || branch
            .chars()
            .any(|c| c.is_whitespace() || "~^:?*[\\".contains(c))
    {
        return Err(ConfigError::Invalid {
            setting: "gitBranch",
            message: format!("{branch:?} is not a branch name"),
        });
    }
    if repo.starts_with('-') {
        return Err(ConfigError::Invalid {
            setting: "gitRepo",
            message: format!("{repo:?} is not a repository URL or path"),
        });
    }
    Ok(Some(GitConfig {
        repo,
        branch,
        path: args
            .git_path
            .clone()
            .or(file.git_path.clone())
            .unwrap_or_default(),
        poll: args
            .git_poll
            .or(file.git_poll)
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(15)),
        mirrors: state_dir.join("git"),
        verify,
    }))
}

/// The gossip settings: off unless a listen address is given.
fn resolve_gossip(
    node_args: &NodeArgs,
    file: &FileConfig,
) -> Result<Option<GossipSettings>, ConfigError> {
    let args = &node_args.gossip;
    let Some(listen) = args.gossip_listen.or(file.gossip_listen) else {
        return Ok(None);
    };
    let seeds = if args.seeds.is_empty() {
        file.seeds.clone()
    } else {
        args.seeds.clone()
    };
    let verify = match args
        .gossip_verify
        .clone()
        .or(file.gossip_verify.clone())
        .as_deref()
    {
        None | Some("signed") => GossipVerify::Signed,
        Some("unsigned") => GossipVerify::Unsigned,
        Some(other) => {
            return Err(ConfigError::Invalid {
                setting: "gossipVerify",
                message: format!("{other:?}: expected signed or unsigned"),
            })
        }
    };
    let dur = |a: Option<ManifestDuration>, f: Option<ManifestDuration>, d: u64| {
        a.or(f).map(|d| d.0).unwrap_or(Duration::from_millis(d))
    };
    let probe_interval = dur(
        args.gossip_probe_interval,
        file.gossip_probe_interval,
        1_000,
    );
    if probe_interval < Duration::from_millis(20) {
        return Err(ConfigError::Invalid {
            setting: "gossipProbeInterval",
            message: "at least 20ms".into(),
        });
    }
    let suspect_timeout = dur(
        args.gossip_suspect_timeout,
        file.gossip_suspect_timeout,
        4_000,
    );
    let claim_settle = dur(args.gossip_claim_settle, file.gossip_claim_settle, 3_000);
    let reelect_timeout = dur(
        args.gossip_reelect_timeout,
        file.gossip_reelect_timeout,
        5_000,
    );
    let peers_wait = suspect_timeout + reelect_timeout + claim_settle;
    // Default: 5s, or less when the gossip timings are shorter (tests).
    let fence_timeout = args.fence_timeout.or(file.fence_timeout).map_or_else(
        || {
            peers_wait
                .saturating_sub(crate::fence::FENCE_MARGIN)
                .min(Duration::from_secs(5))
        },
        |d| d.0,
    );
    if !fence_timeout.is_zero() && fence_timeout + crate::fence::FENCE_MARGIN > peers_wait {
        return Err(ConfigError::Invalid {
            setting: "fenceTimeout",
            message: format!(
                "{fence_timeout:?}: peers may start a copy of a VM {peers_wait:?} after its node stops answering (gossip suspect + re-elect + claim settle); the fence must act at least {:?} before that: at most {:?}",
                crate::fence::FENCE_MARGIN,
                peers_wait.saturating_sub(crate::fence::FENCE_MARGIN)
            ),
        });
    }
    Ok(Some(GossipSettings {
        listen,
        seeds,
        cluster: args
            .cluster
            .clone()
            .or(file.cluster.clone())
            .or(node_args.cluster_owner.clone())
            .or(file.cluster_owner.clone())
            .unwrap_or_else(|| "deorch".into()),
        verify,
        probe_interval,
        suspect_timeout,
        claim_settle,
        reelect_timeout,
        fence_timeout,
        fence_hold: dur(args.fence_hold, file.fence_hold, 600_000),
    }))
}

/// The state directory: flag, environment, file, or /var/lib/deorch.
fn state_dir(args: &NodeArgs, file: &FileConfig) -> PathBuf {
    args.state_dir
        .clone()
        .or(file.state_dir.clone())
        .unwrap_or_else(|| "/var/lib/deorch".into())
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let err = |message: String| ConfigError::File {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    serde_saphyr::from_str(&text).map_err(|e| err(e.to_string()))
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let label: String = host
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let label = label.trim_matches('-').to_string();
    if label.is_empty() {
        "satellite".into()
    } else {
        label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_override_defaults() {
        let dir = std::env::temp_dir().join(format!("deorch-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("node.yaml");
        std::fs::write(
            &file,
            "name: from-file\nstateDir: /tmp/x\nrescanInterval: 3s\n",
        )
        .unwrap();
        let args = NodeArgs {
            config: Some(file.clone()),
            name: Some("from-flag".into()),
            ..Default::default()
        };
        let cfg = NodeConfig::resolve(&args).unwrap();
        assert_eq!(cfg.name, "from-flag");
        assert_eq!(cfg.state_dir, PathBuf::from("/tmp/x"));
        assert_eq!(cfg.rescan_interval, Duration::from_secs(3));
        assert_eq!(cfg.socket, PathBuf::from(DEFAULT_SOCKET));
        std::fs::write(&file, "nmae: typo\n").unwrap();
        let e = NodeConfig::resolve(&args).unwrap_err().to_string();
        assert!(e.contains("nmae"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn metrics_allow_takes_networks_from_flags_over_the_file() {
        let dir = std::env::temp_dir().join(format!("deorch-cfg-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("node.yaml");
        std::fs::write(
            &file,
            "httpListen: 127.0.0.1:0\nclusterOwner: bc1qyjjkmdpu7metqt5r36jf872a34syws33s82q2j\nmetricsAllow: [10.0.0.5/32, \"2001:db8::/64\"]\n",
        )
        .unwrap();
        let mut args = NodeArgs {
            config: Some(file.clone()),
            ..Default::default()
        };
        let allow =
            |args: &NodeArgs| NodeConfig::resolve(args).map(|c| c.http.unwrap().metrics_allow);
        let from_file = allow(&args).unwrap();
        assert_eq!(from_file.len(), 2);
        assert!(from_file[1].contains(&"2001:db8::1".parse::<std::net::IpAddr>().unwrap()));
        args.metrics_allow = vec!["0.0.0.0/0".into()];
        assert_eq!(
            allow(&args).unwrap(),
            vec!["0.0.0.0/0".parse::<ipnet::IpNet>().unwrap()]
        );
        args.metrics_allow = vec!["10.0.0.5".into()];
        assert_eq!(
            allow(&args).unwrap(),
            vec!["10.0.0.5/32".parse::<ipnet::IpNet>().unwrap()]
        );
        args.metrics_allow = vec!["10.0.0.5/33".into()];
        let e = allow(&args).unwrap_err().to_string();
        assert!(
            e.contains("metricsAllow") && e.contains("\"10.0.0.5/33\""),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn http_is_off_by_default_and_follows_precedence() {
        assert!(NodeConfig::resolve(&NodeArgs::default())
            .unwrap()
            .http
            .is_none());
        let dir = std::env::temp_dir().join(format!("deorch-cfg-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("node.yaml");
        std::fs::write(
            &file,
            "httpListen: 127.0.0.1:8080\nclusterOwner: bc1qyjjkmdpu7metqt5r36jf872a34syws33s82q2j\nstateDir: /tmp/s\nloginTtl: 5s\n",
        )
        .unwrap();
        let mut args = NodeArgs {
            config: Some(file.clone()),
            ..Default::default()
        };
        let http = NodeConfig::resolve(&args).unwrap().http.unwrap();
        assert_eq!(http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(http.node_key, PathBuf::from("/tmp/s/node.key"));
        assert_eq!(http.login_ttl, Duration::from_secs(5));
        assert_eq!(http.session_ttl, Duration::from_secs(12 * 3600));
        args.http_listen = Some("127.0.0.1:9090".parse().unwrap());
        args.cluster_owner = Some("not-an-address".into());
        let e = NodeConfig::resolve(&args).unwrap_err().to_string();
        assert!(e.contains("setting clusterOwner"), "{e}");
        std::fs::write(&file, "httpListen: 127.0.0.1:8080\n").unwrap();
        args.cluster_owner = None;
        let e = NodeConfig::resolve(&args).unwrap_err().to_string();
        assert!(e.contains("--cluster-owner"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn console_address_and_port_ranges() {
        use crate::qemu::console::PortRange;
        let c = NodeConfig::resolve(&NodeArgs::default()).unwrap().console;
        assert_eq!(c.listen.to_string(), "127.0.0.1");
        assert_eq!(c.ports, PortRange::default());
        assert_eq!(
            console_ports("5900-6899").unwrap(),
            PortRange::default(),
            "the default, spelled out"
        );
        let r = console_ports("20000-20099").unwrap();
        assert_eq!((r.vnc_base, r.ws_base, r.size), (20000, 20100, 100));
        assert_eq!(r.spice(20000), Some(20200));
        for (bad, why) in [
            ("5900", "FIRST-LAST"),
            ("5000-5100", "≥ 5900"),
            ("6000-5999", "below the first"),
            ("60000-63000", "must end by 65535"),
            ("x-6000", "not a port number"),
        ] {
            let e = console_ports(bad).unwrap_err().to_string();
            assert!(e.contains("consolePorts") && e.contains(why), "{bad}: {e}");
        }
        let mut args = NodeArgs {
            addresses: vec!["10.9.9.9".into(), "10.8.8.8".into()],
            ..Default::default()
        };
        let c = NodeConfig::resolve(&args).unwrap().console;
        assert_eq!(c.listen.to_string(), "10.9.9.9", "the node's first address");
        args.console_address = Some("10.1.2.3".parse().unwrap());
        args.console_ports = Some("30000-30009".into());
        let c = NodeConfig::resolve(&args).unwrap().console;
        assert_eq!(c.listen.to_string(), "10.1.2.3");
        assert_eq!(c.ports.ws_base, 30010);
    }

    #[test]
    fn net_driver_defaults_to_fake() {
        assert_eq!(
            NodeConfig::resolve(&NodeArgs::default()).unwrap().net,
            NetKind::Fake
        );
        let args = NodeArgs {
            net: Some("linux".into()),
            ..Default::default()
        };
        assert_eq!(NodeConfig::resolve(&args).unwrap().net, NetKind::Linux);
        let args = NodeArgs {
            net: Some("ovs".into()),
            ..Default::default()
        };
        assert!(NodeConfig::resolve(&args)
            .unwrap_err()
            .to_string()
            .contains("setting net"));
    }

    #[test]
    fn gossip_is_off_by_default_and_signed_unless_told() {
        assert!(NodeConfig::resolve(&NodeArgs::default())
            .unwrap()
            .gossip
            .is_none());
        let mut args = NodeArgs::default();
        args.gossip.gossip_listen = Some("127.0.0.1:0".parse().unwrap());
        let g = NodeConfig::resolve(&args).unwrap().gossip.unwrap();
        assert_eq!(g.verify, GossipVerify::Signed);
        assert_eq!(g.cluster, "deorch");
        assert_eq!(g.probe_interval, Duration::from_secs(1));
        args.gossip.gossip_verify = Some("unsigned".into());
        args.gossip.gossip_suspect_timeout = Some("700ms".parse().unwrap());
        let g = NodeConfig::resolve(&args).unwrap().gossip.unwrap();
        assert_eq!(g.verify, GossipVerify::Unsigned);
        assert_eq!(g.suspect_timeout, Duration::from_millis(700));
        args.gossip.gossip_verify = Some("trust-me".into());
        let e = NodeConfig::resolve(&args).unwrap_err().to_string();
        assert!(e.contains("setting gossipVerify"), "{e}");
    }

    #[test]
    fn the_fence_acts_before_any_peer_may_start_a_copy() {
        let mut args = NodeArgs::default();
        args.gossip.gossip_listen = Some("127.0.0.1:0".parse().unwrap());
        let g = NodeConfig::resolve(&args).unwrap().gossip.unwrap();
        assert_eq!(g.fence_timeout, Duration::from_secs(5));
        assert_eq!(g.fence_hold, Duration::from_secs(600));
        // Short gossip timings shorten the default fence.
        for (flag, v) in [("suspect", "1s"), ("settle", "1s"), ("reelect", "1s")] {
            let d = Some(v.parse().unwrap());
            match flag {
                "suspect" => args.gossip.gossip_suspect_timeout = d,
                "settle" => args.gossip.gossip_claim_settle = d,
                _ => args.gossip.gossip_reelect_timeout = d,
            }
        }
        let g = NodeConfig::resolve(&args).unwrap().gossip.unwrap();
        assert_eq!(g.fence_timeout, Duration::from_secs(2));
        // One that would act after a peer may start a copy is refused.
        args.gossip.fence_timeout = Some("2500ms".parse().unwrap());
        let e = NodeConfig::resolve(&args).unwrap_err().to_string();
        assert!(
            e.contains("fenceTimeout") && e.contains("at most 2s"),
            "{e}"
        );
        args.gossip.fence_timeout = Some("0s".parse().unwrap());
        let g = NodeConfig::resolve(&args).unwrap().gossip.unwrap();
        assert!(g.fence_timeout.is_zero(), "0s turns the fence off");
    }

    #[test]
    fn bad_settings_are_named() {
        let args = NodeArgs {
            name: Some("Bad_Name".into()),
            ..Default::default()
        };
        assert!(NodeConfig::resolve(&args)
            .unwrap_err()
            .to_string()
            .contains("setting name"));
        let args = NodeArgs {
            addresses: vec!["10.0.0.300".into()],
            ..Default::default()
        };
        assert!(NodeConfig::resolve(&args)
            .unwrap_err()
            .to_string()
            .contains("setting address"));
    }

    #[test]
    fn libvirt_uri_defaults_to_the_system_daemon_and_follows_precedence() {
        let libvirt = |args: NodeArgs| NodeConfig::resolve(&args).unwrap().hypervisor;
        assert_eq!(libvirt(NodeArgs::default()), HypervisorKind::Qemu);
        let args = NodeArgs {
            hypervisor: Some("libvirt".into()),
            ..Default::default()
        };
        assert_eq!(
            libvirt(args.clone()),
            HypervisorKind::Libvirt("qemu:///system".into())
        );
        let dir = std::env::temp_dir().join(format!("deorch-cfg-virt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("node.yaml");
        std::fs::write(&file, "libvirtUri: qemu+ssh://h/system\n").unwrap();
        let from_file = NodeArgs {
            config: Some(file),
            ..args.clone()
        };
        assert_eq!(
            libvirt(from_file.clone()),
            HypervisorKind::Libvirt("qemu+ssh://h/system".into())
        );
        let from_flag = NodeArgs {
            libvirt_uri: Some("qemu:///session".into()),
            ..from_file
        };
        assert_eq!(
            libvirt(from_flag),
            HypervisorKind::Libvirt("qemu:///session".into())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
