//! `deorch node run`: wires one node together. The store is opened with
//! admission in front of it (the one gate every source writes through),
//! the node's own `Satellite` object is registered, then the tasks run
//! until SIGINT/SIGTERM: the sources (manifest directory, replica
//! schedule, and when configured git, HTTP push, gossip), the local API
//! and the reconcile engine.
//!
//! Architecture invariant: this is the only place that chooses driver
//! implementations; everything below receives them as trait objects.
//! The accelerator is chosen here, once, by a probe boot (cached).

pub mod cluster;
pub mod config;
pub mod join;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tracing::{info, warn};

pub use config::{HttpConfig, HttpTls, HypervisorKind, NetKind, NodeArgs, NodeConfig};

use crate::admission::{Admission, AdmissionConfig, Batch, Doc, Trust};
use crate::api;
use crate::driver::dir::DirStorage;
use crate::driver::fake::{FakeHypervisor, FakeNet, FakeStorage};
use crate::driver::libvirt::LibvirtHypervisor;
use crate::driver::qemu::QemuHypervisor;
use crate::driver::zfs;
use crate::driver::{Hypervisor, Net, Storage};
use crate::model::{AnyObject, Kind, Manifest, ObjectKey, SatelliteSpec};
use crate::qemu::probe::{self, Accel, ProbeGuest};
use crate::reconcile::{Drivers, Engine, EngineConfig};
use crate::source::dir::{DirConfig, DirSource};
use crate::source::Source;
use crate::store::{SourceId, Store};
use config::StorageKind;

/// File name of the store inside the state directory.
pub const STORE_FILE: &str = "store.redb";

/// Open the store, refusing an empty, damaged or lost one unless
/// `--init-store` says to start empty (the old file kept aside).
fn open_store(config: &NodeConfig) -> anyhow::Result<Store> {
    let path = config.state_dir.join(STORE_FILE);
    let snap = config.state_dir.join(crate::store::snapshot::FILE);
    if !path.exists() && snap.exists() && !config.init_store {
        anyhow::bail!(
            "the store {} is missing, but the snapshot {} holds this node's desired state: rebuild the store with `deorch node recover-store --state-dir {}`, or start with --init-store to begin empty",
            path.display(),
            snap.display(),
            config.state_dir.display()
        );
    }
    match Store::open(&path) {
        Ok(s) => Ok(s),
        Err(e @ crate::store::StoreError::Damaged { .. }) if config.init_store => {
            let aside = config
                .state_dir
                .join(format!("{STORE_FILE}.damaged-{}", crate::clock::now_ms()));
            std::fs::rename(&path, &aside)
                .with_context(|| format!("setting {} aside", path.display()))?;
            tracing::warn!(error = %e, kept = %aside.display(), "--init-store: the damaged store is set aside, starting empty");
            Store::open(&path).with_context(|| format!("creating the store {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("opening the store {}", path.display())),
    }
}

/// Open `STATE_DIR/history.log` (unless `--history-keep 0`), log what
/// the store holds that it lacks, and have the store log every commit.
fn open_history(config: &NodeConfig, store: &Store) -> anyhow::Result<()> {
    if config.history.keep == 0 {
        return Ok(());
    }
    let path = config.state_dir.join(crate::history::FILE);
    let history = Arc::new(crate::history::History::open(&path, config.history)?);
    history.catch_up(store)?;
    store.set_commit_hook(Some(history.hook()));
    Ok(())
}

/// Keep `STATE_DIR/store.snapshot` at most [`crate::store::snapshot::INTERVAL`]
/// behind the store: at start, whenever desired state changed, and at a
/// graceful stop.
async fn keep_snapshot(
    store: Arc<Store>,
    state_dir: std::path::PathBuf,
    mut shutdown: watch::Receiver<bool>,
) {
    let path = state_dir.join(crate::store::snapshot::FILE);
    let mut written: Option<u64> = None;
    let mut tick = tokio::time::interval(crate::store::snapshot::INTERVAL);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.changed() => true,
        };
        let version = store.version();
        if written != Some(version) {
            let (s, p) = (store.clone(), path.clone());
            match tokio::task::spawn_blocking(move || crate::store::snapshot::write(&s, &p)).await {
                Ok(Ok(n)) => {
                    tracing::debug!(records = n, "store snapshot written");
                    written = Some(version);
                    // Desired state changed: whatever the change and the
                    // snapshot used for a moment goes back.
                    crate::memory::give_back_freed();
                }
                Ok(Err(e)) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write the store snapshot")
                }
                Err(e) => tracing::warn!(error = %e, "store snapshot task failed"),
            }
        }
        if stopping || *shutdown.borrow() {
            return;
        }
    }
}

/// The fence's settings, when this node has one: gossip (peers may start
/// copies of its VMs) with a real hypervisor and a fence timeout.
#[derive(Debug, Clone, Copy)]
pub struct FenceSettings {
    /// Lease timeout.
    pub timeout: Duration,
    /// Hold written at a graceful stop.
    pub hold: Duration,
}

fn fence_of(config: &NodeConfig) -> Option<FenceSettings> {
    let g = config.gossip.as_ref()?;
    let real = matches!(
        config.hypervisor,
        HypervisorKind::Qemu | HypervisorKind::Libvirt(_)
    );
    (real && !g.fence_timeout.is_zero()).then_some(FenceSettings {
        timeout: g.fence_timeout,
        hold: g.fence_hold,
    })
}

/// Renew the fence's lease every quarter of its timeout; at a graceful
/// stop, write the hold so the fence waits for the daemon's return.
async fn renew_lease(
    state_dir: std::path::PathBuf,
    fence: FenceSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut counter = crate::clock::now_ms();
    let mut tick = tokio::time::interval((fence.timeout / 4).max(Duration::from_millis(50)));
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.changed() => true,
        };
        counter += 1;
        let hold = if stopping { fence.hold } else { Duration::ZERO };
        let dir = state_dir.clone();
        let written =
            tokio::task::spawn_blocking(move || crate::fence::renew(&dir, counter, hold)).await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::warn!(?written, "cannot renew the fence lease");
        }
        if stopping || *shutdown.borrow() {
            info!(?hold, "graceful stop: the fence holds off this long");
            return;
        }
    }
}

/// Run a node until a termination signal.
pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop_tx.send(true);
    });
    run_until(config, stop_rx).await
}

/// Run a node until `shutdown` turns true.
pub async fn run_until(config: NodeConfig, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state directory {}", config.state_dir.display()))?;
    {
        // Keys, the store and VM configurations: the node's user's only.
        // libvirt runs QEMU as its own user (libvirt-qemu), which must
        // reach the disks below: it may pass through (0711), not list;
        // what is secret in here is 0600 itself.
        use std::os::unix::fs::PermissionsExt;
        let mode = match config.hypervisor {
            config::HypervisorKind::Libvirt(_) => 0o711,
            _ => 0o700,
        };
        std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("making {} private ({mode:o})", config.state_dir.display()))?;
    }
    // Deep enough for vms/NAMESPACE/NAME and git/MIRROR.
    for orphan in crate::state_file::sweep_orphans(&config.state_dir, 3) {
        info!(file = %orphan.display(), "removed a temporary file its dead writer left");
    }
    let store = Arc::new(open_store(&config)?);
    open_history(&config, &store)?;
    let admission = Admission::new(store.clone(), admission_config(&config));
    // Handed to each owner of a figure below; served on `/metrics`.
    let metrics = crate::metrics::Metrics::new(
        store.clone(),
        config
            .http
            .as_ref()
            .map(|h| h.metrics_allow.clone())
            .unwrap_or_default(),
    );
    metrics.set_admission(admission.clone());
    admission.set_metrics(metrics.clone());
    register_satellite(&admission, &config)?;
    join::apply_approval(&admission, &config.state_dir);

    // Before the socket exists: the first request must not pay for it.
    tokio::task::spawn_blocking(crate::manifest::schema_check::warm_up)
        .await
        .context("compiling the manifest schemas")?;
    let listener = api::server::bind(&config.socket)
        .with_context(|| format!("binding the local API socket {}", config.socket.display()))?;
    let drivers = drivers(&config).await?;
    let hypervisor = drivers.hypervisor.clone();
    metrics.set_hypervisor(hypervisor.clone());
    if let Some(dhcp) = &drivers.dhcp {
        metrics.set_dhcp(dhcp.clone());
    }
    let mut facts = api::server::ServerFacts {
        name: config.name.clone(),
        hypervisor: drivers.hypervisor.name().into(),
        storage: drivers.storage.name().into(),
        manifests: config.manifests.display().to_string(),
        http_url: None,
        radar: None,
    };

    let node_key = load_node_key(&config)?;
    let mut cluster = match &config.gossip {
        Some(g) => Some(
            cluster::Cluster::bind(
                g,
                &config.name,
                node_key.clone(),
                admission.clone(),
                &config.state_dir,
            )
            .await?,
        ),
        None => None,
    };
    if let Some(c) = &cluster {
        c.set_metrics(metrics.clone());
        metrics.set_placement(c.placement());
    }
    let agent = cluster
        .as_ref()
        .map(|c| c.relocation_agent(drivers.clone(), config.relocation_bandwidth));
    if let (Some(a), Some(dhcp)) = (&agent, &drivers.dhcp) {
        // DHCPCAST via a gateway node goes through node tunnels.
        dhcp.use_tunnels(a.link.clone(), &config.name, store.clone());
    }
    let engine = Engine::with_placement(
        store.clone(),
        drivers,
        EngineConfig {
            node_name: config.name.clone(),
            node_id: node_key
                .address(crate::identity::AddressType::P2wpkh)
                .ok()
                .map(|a| a.to_string()),
            node_addresses: config.addresses.clone(),
            volume_retention: config.volume_retention,
            ..EngineConfig::default()
        },
        cluster
            .as_ref()
            .map(|c| c.placement() as Arc<dyn crate::reconcile::Placement>),
    )
    .with_metrics(metrics.clone());
    let dir = Box::new(DirSource::new(DirConfig {
        root: config.manifests.clone(),
        rescan_every: config.rescan_interval,
        settle: config.settle,
        removal_grace: config.removal_grace,
        allow_missing: config.allow_empty_manifests,
    }));
    info!(
        node = %config.name,
        manifests = %config.manifests.display(),
        socket = %config.socket.display(),
        source = %dir.name(),
        "node starting"
    );
    let mut tasks = Vec::new();
    let mut http_api = None;
    if let Some(http) = &config.http {
        let (listener, api, url) = start_http(http, &admission, &config).await?;
        if let Some(c) = cluster.as_mut() {
            c.set_page(&url);
            api.set_radar(c.radar());
        }
        api.set_join(
            config.state_dir.join("join-requests.json"),
            cluster
                .as_ref()
                .map_or_else(|| Arc::new(Vec::new) as _, |c| c.join_seeds()),
        );
        facts.http_url = Some(url);
        api.set_consoles(hypervisor.clone());
        api.set_metrics(metrics.clone());
        http_api = Some(api.clone());
        tasks.push(tokio::spawn(crate::http::serve(
            listener,
            api,
            shutdown.clone(),
        )));
    }
    if let Some(fence) = fence_of(&config) {
        let hypervisor = match &config.hypervisor {
            HypervisorKind::Libvirt(uri) => format!("libvirt:{uri}"),
            _ => "qemu".to_string(),
        };
        crate::fence::renew(&config.state_dir, crate::clock::now_ms(), Duration::ZERO)
            .context("writing the fence lease")?;
        let pid = crate::fence::ensure(&config.state_dir, fence.timeout, &hypervisor)?;
        info!(pid, timeout = ?fence.timeout, hold = ?fence.hold, "fence running beside the daemon");
        tasks.push(tokio::spawn(renew_lease(
            config.state_dir.clone(),
            fence,
            shutdown.clone(),
        )));
    }
    if let Some(c) = cluster {
        facts.radar = Some(c.radar());
        tasks.push(tokio::spawn(c.run(shutdown.clone())));
    }
    if let Some(a) = agent {
        tasks.push(tokio::spawn(a.run(shutdown.clone())));
    }
    let schedule = Box::new(crate::source::replica_schedule::ReplicaSchedule::new(
        &config.name,
    ));
    tasks.extend([
        tokio::spawn(keep_snapshot(
            store.clone(),
            config.state_dir.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(dir.run(admission.clone(), shutdown.clone())),
        tokio::spawn(schedule.run(admission.clone(), shutdown.clone())),
        api::server::serve_on_own_thread(
            listener,
            config.socket.clone(),
            admission.clone(),
            facts,
            engine.ctx(),
            shutdown.clone(),
        )
        .context("starting the local API's thread")?,
        tokio::spawn(crate::fabric::agent::run(
            engine.ctx(),
            config.net,
            shutdown.clone(),
        )),
        tokio::spawn(engine.run(shutdown.clone())),
        tokio::spawn(metrics.clone().watch_durations(shutdown.clone())),
    ]);
    if let Some(git) = &config.git {
        let source = Box::new(crate::source::git::GitSource::new(git.clone()));
        info!(source = %source.name(), "following a git repository");
        tasks.push(tokio::spawn(
            source.run(admission.clone(), shutdown.clone()),
        ));
    }
    // Every task runs: `/readyz` may answer ready from now on.
    if let Some(api) = &http_api {
        api.set_ready_checks(crate::http::health::ReadyChecks::new(
            (!config.allow_empty_manifests).then(|| config.manifests.clone()),
            config.gossip.as_ref().map(|g| !g.seeds.is_empty()),
            shutdown.clone(),
        ));
    }
    info!(node = %config.name, "node ready");
    for t in tasks {
        let _ = t.await;
    }
    info!(node = %config.name, "node stopped");
    Ok(())
}

/// File in the state directory holding the HTTP API's bound address
/// (useful with port 0).
pub const HTTP_ADDRESS_FILE: &str = "http-address";
/// File in the state directory holding the HTTP API's URL as clients
/// take it: `https://ADDR#sha256=FINGERPRINT` (or `http://ADDR`).
pub const HTTP_URL_FILE: &str = "http-url";

/// Load (or create) the node key, bind the HTTP listener and build the API.
async fn start_http(
    http: &HttpConfig,
    admission: &Arc<Admission>,
    config: &NodeConfig,
) -> anyhow::Result<(crate::http::HttpListener, Arc<crate::http::HttpApi>, String)> {
    let network = crate::identity::Address::parse(&http.cluster_owner)
        .map_err(|e| anyhow::anyhow!("cluster owner {}: {e}", http.cluster_owner))?
        .network;
    let node_key = crate::http::load_or_create_node_key(&http.node_key, network)
        .with_context(|| format!("node key {}", http.node_key.display()))?;
    let api = crate::http::HttpApi::new(
        admission.clone(),
        crate::http::HttpSettings {
            cluster_owner: http.cluster_owner.clone(),
            node_key,
            trusted_nodes: http.trusted_nodes.clone(),
            login_ttl: http.login_ttl,
            session_ttl: http.session_ttl,
            challenge_limit: Some(crate::http::CHALLENGE_LIMIT),
        },
    )?;
    let listener = tokio::net::TcpListener::bind(http.listen)
        .await
        .with_context(|| format!("binding the HTTP API on {}", http.listen))?;
    let bound = listener.local_addr()?;
    let tls = match &http.tls {
        HttpTls::Plain => {
            warn!("HTTP API without TLS (--http-plain): put it on loopback or behind a TLS proxy");
            None
        }
        HttpTls::Files { cert, key } => Some(crate::http::tls::load(cert, key)),
        HttpTls::SelfSigned(dir) => {
            let mut names = config.addresses.clone();
            names.push(config.name.clone());
            if !bound.ip().is_unspecified() {
                names.push(bound.ip().to_string());
            }
            Some(crate::http::tls::self_signed(dir, &names))
        }
    }
    .transpose()
    .map_err(|e| anyhow::anyhow!("HTTP API TLS: {e}"))?;
    let (listener, url) = match tls {
        None => (
            crate::http::HttpListener::Plain(listener),
            format!("http://{bound}"),
        ),
        Some(t) => (
            crate::http::HttpListener::Tls(crate::http::tls::TlsListener::new(listener, t.config)?),
            format!("https://{bound}#sha256={}", t.fingerprint),
        ),
    };
    for (file, text) in [
        (HTTP_ADDRESS_FILE, bound.to_string()),
        (HTTP_URL_FILE, url.clone()),
    ] {
        let path = config.state_dir.join(file);
        crate::state_file::write(&path, format!("{text}\n").as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    info!(%url, node = api.node_address(), cluster = %http.cluster_owner, "HTTP API listening");
    Ok((listener, api, url))
}

/// The node's key (made at first start): its address is the node's ID in
/// gossip, on sessions it issues and in admissions.
fn load_node_key(config: &NodeConfig) -> anyhow::Result<crate::identity::PrivateKey> {
    let network = config
        .cluster_owner
        .as_deref()
        .and_then(|o| crate::identity::Address::parse(o).ok())
        .map_or(crate::identity::Network::Mainnet, |a| a.network);
    crate::http::load_or_create_node_key(&config.node_key, network)
        .with_context(|| format!("node key {}", config.node_key.display()))
}

/// The cluster signatures are bound to and its owner, the same for every
/// source: `--cluster-owner` (the owner's address is the cluster id), else
/// gossip's `--cluster` (then its owner only if it is an address).
fn admission_config(config: &NodeConfig) -> AdmissionConfig {
    let owner = config.cluster_owner.clone().or_else(|| {
        config
            .gossip
            .as_ref()
            .map(|g| g.cluster.clone())
            .filter(|c| crate::identity::Address::parse(c).is_ok())
    });
    let cluster = owner
        .clone()
        .or_else(|| config.gossip.as_ref().map(|g| g.cluster.clone()));
    if let (Some(g), None) = (&config.gossip, &owner) {
        if g.verify == config::GossipVerify::Signed {
            warn!(
                cluster = %g.cluster,
                "signed gossip without --cluster-owner: no signer can be authorised, so every signed document will be refused"
            );
        }
    }
    AdmissionConfig { cluster, owner }
}

/// Choose the drivers: the hypervisor is QEMU, the storage `dir` and the
/// host network the in-memory fake unless configured otherwise.
/// The drivers the configuration names, each built only in its own arm
/// (a fake only when the flags ask for one).
async fn drivers(config: &NodeConfig) -> anyhow::Result<Drivers> {
    let (net, dhcp) = net_driver(config)?;
    Ok(Drivers {
        hypervisor: hypervisor_driver(config).await,
        storage: storage_driver(config).await?,
        net,
        dhcp,
    })
}

async fn storage_driver(config: &NodeConfig) -> anyhow::Result<Arc<dyn Storage>> {
    Ok(match &config.storage {
        StorageKind::Fake => {
            warn!("storage: fake (volumes are simulated)");
            Arc::new(FakeStorage::default())
        }
        StorageKind::Dir(root) => {
            let s = DirStorage::open(root)
                .map_err(|e| anyhow::anyhow!("storage root {}: {e}", root.display()))?;
            info!(root = %root.display(), "storage: dir (qcow2)");
            Arc::new(s)
        }
        StorageKind::Zfs(root) => {
            // A pool not there yet (the ZFS daemon restarting, an import
            // still running at boot) is waited for a while before the node
            // gives up: a node that exits at once is restarted only by a
            // supervisor, which a test or a shell does not have.
            let deadline = std::time::Instant::now() + ZFS_POOL_WAIT;
            let (s, n) = loop {
                let r = root.clone();
                match tokio::task::spawn_blocking(move || zfs::open_recovered(&r)).await? {
                    Ok(opened) => break opened,
                    Err(
                        e @ crate::driver::DriverError::Condition {
                            reason: "PoolMissing",
                            ..
                        },
                    ) if std::time::Instant::now() < deadline => {
                        warn!(error = %e, "storage: the zfs pool is not available yet; trying again in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            info!(finished = n, "storage: zfs");
            Arc::new(s)
        }
    })
}

/// How long a node waits at start for its zfs pool to be available.
const ZFS_POOL_WAIT: Duration = Duration::from_secs(30);

/// The guest the accelerator probe boots (`--probe-guest`).
pub(crate) fn probe_guest(config: &NodeConfig) -> ProbeGuest {
    ProbeGuest {
        qemu: "qemu-system-x86_64".into(),
        kernel: config.probe_guest.join("vmlinuz"),
        initrd: config.probe_guest.join("initrd.img"),
        timeout: Duration::from_secs(8),
    }
}

async fn hypervisor_driver(config: &NodeConfig) -> Arc<dyn Hypervisor> {
    match &config.hypervisor {
        HypervisorKind::Fake => {
            warn!("hypervisor: fake (VMs are simulated, nothing boots)");
            Arc::new(FakeHypervisor::default())
        }
        HypervisorKind::Qemu | HypervisorKind::Libvirt(_) => {
            let guest = probe_guest(config);
            let probe = if guest.kernel.exists() {
                probe::probe_cached(&guest, &config.state_dir).await
            } else {
                probe::ProbeResult {
                    accel: Accel::Tcg,
                    reason: format!(
                        "no probe guest in {} (guest/build.sh makes one): TCG",
                        config.probe_guest.display()
                    ),
                    key: String::new(),
                }
            };
            info!(accel = probe.accel.as_str(), reason = %probe.reason, "accelerator chosen");
            if probe.accel == Accel::Tcg {
                // Measure the host's TSC rate (~60 ms, once per process)
                // beside the start-up rather than in the first VM's start.
                tokio::task::spawn_blocking(|| {
                    let khz = crate::qemu::tsc::host_khz();
                    info!(
                        tsc_khz = khz.unwrap_or(0),
                        "TCG guests get the host's TSC rate (0: not invariant, none given)"
                    );
                });
            }
            let c = config.console;
            info!(
                listen = %c.listen,
                vnc = %format!("{}-{}", c.ports.vnc_base, c.ports.vnc_base as u32 + c.ports.size as u32 - 1),
                "VM consoles"
            );
            if !c.listen.is_loopback() {
                warn!(
                    listen = %c.listen,
                    "VM consoles listen beyond loopback: each is locked until a session gets a one-time password, but native VNC and SPICE are unencrypted (the browsers' websocket has TLS when the HTTP API has)"
                );
            }
            let tls = console_tls(config);
            match &config.hypervisor {
                HypervisorKind::Libvirt(uri) => {
                    info!(%uri, "hypervisor: libvirt");
                    Arc::new(
                        LibvirtHypervisor::new(
                            uri.clone(),
                            config.state_dir.join("vms"),
                            probe.accel,
                        )
                        .with_console(c.listen, c.ports)
                        .with_console_tls(tls),
                    )
                }
                _ => Arc::new(
                    QemuHypervisor::new(
                        "qemu-system-x86_64",
                        config.state_dir.join("vms"),
                        probe.accel,
                    )
                    .with_console(c.listen, c.ports)
                    .with_console_tls(tls),
                ),
            }
        }
    }
}

/// QEMU's TLS directory for the browser consoles' websockets, from the
/// HTTP API's certificate (the node's page and its consoles then show one
/// certificate); `None` (plain websockets, which an HTTPS page cannot
/// open) without an HTTP API or with `--http-plain`.
fn console_tls(config: &NodeConfig) -> Option<std::path::PathBuf> {
    use crate::http::tls;
    let http = config.http.as_ref()?;
    let mut names = config.addresses.clone();
    names.push(config.name.clone());
    for ip in [http.listen.ip(), config.console.listen] {
        if !ip.is_unspecified() {
            names.push(ip.to_string());
        }
    }
    let made = match &http.tls {
        HttpTls::Plain => return None,
        HttpTls::SelfSigned(dir) => tls::self_signed(dir, &names).and_then(|_| {
            tls::console_dir(
                dir,
                &dir.join(tls::CERT_FILE),
                &dir.join(tls::KEY_FILE),
                &names,
            )
        }),
        HttpTls::Files { cert, key } => {
            tls::console_dir(&config.state_dir.join("tls"), cert, key, &names)
        }
    };
    match made {
        Ok((dir, shared)) => {
            if shared {
                info!(dir = %dir.display(), "browser consoles: websockets over TLS with the HTTP API's certificate");
            } else {
                warn!(dir = %dir.display(), "browser consoles: websockets over TLS with a certificate of their own (the HTTP API's comes without its CA): browsers must trust ca-cert.pem there");
            }
            Some(dir)
        }
        Err(e) => {
            warn!(error = %e, "browser consoles: plain websockets (no TLS for them)");
            None
        }
    }
}

/// The host network: the in-memory fake (NICs on QEMU's user-mode
/// network) or Linux bridges and taps with the node's DHCP servers.
/// The network driver, and the node's DHCP servers when its bridges are
/// real interfaces.
#[allow(clippy::type_complexity)]
fn net_driver(
    config: &NodeConfig,
) -> anyhow::Result<(Arc<dyn Net>, Option<Arc<crate::dhcp::service::DhcpService>>)> {
    Ok(match config.net {
        NetKind::Fake => {
            warn!("host networking: fake (in memory): NICs use QEMU's user-mode network");
            (Arc::new(FakeNet::default()), None)
        }
        NetKind::Linux => {
            let net = crate::driver::linuxnet::LinuxNet::default();
            net.check()
                .context("the linux network driver needs iproute2's `ip`")?;
            crate::fabric::kernel::check().map_err(|e| {
                anyhow::anyhow!("the linux network driver enforces anti-spoofing and interstellars with nftables and iproute2's `bridge`: {e}")
            })?;
            info!("host networking: linux bridges and taps, DHCP served on bridges");
            let dhcp = crate::dhcp::service::DhcpService::new(config.state_dir.join("dhcp"));
            (Arc::new(net), Some(Arc::new(dhcp)))
        }
    })
}

/// Make sure a `Satellite` object names this node (a declared one, e.g.
/// with tags, wins: only a missing one is created).
fn register_satellite(admission: &Admission, config: &NodeConfig) -> anyhow::Result<()> {
    let key = ObjectKey::new(Kind::Satellite, None, &config.name);
    if admission.store().get(&key).is_some_and(|r| !r.deleted) {
        return Ok(());
    }
    let spec = SatelliteSpec {
        addresses: config.addresses.clone(),
        ..Default::default()
    };
    let mut batch = Batch::new(SourceId("node".into()), Trust::Local);
    batch.docs.push(Doc {
        object: AnyObject::Satellite(Manifest::new(&config.name, spec)),
        at: "node start".into(),
    });
    let out = admission
        .admit(batch)
        .context("registering this node's Satellite object")?;
    if !out.committed {
        anyhow::bail!(
            "registering this node's Satellite object: {}",
            out.problems().join("; ")
        );
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    info!("termination signal received; stopping");
}
