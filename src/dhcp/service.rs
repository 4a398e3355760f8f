//! The node's DHCP servers: one [`DhcpServer`] per served network, bound
//! to that network's bridge, started, updated and stopped by the Network
//! reconciler (`reconcile::network`).
//!
//! A changed table (a VM added, removed or changed, or new options in the
//! Network manifest) is swapped into the running server; a changed bridge
//! or server address rebinds it. What is served, every NIC's MAC, identity
//! and address, is also written durably (temporary file, fsync, rename)
//! to `STATE_DIR/dhcp/NAMESPACE.NETWORK.json`, the record of the node's
//! reservations. Addresses themselves are never read back from it: they
//! are a function of the manifests (docs/ALGORITHMS.md), so a restarted
//! node serves the same ones.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

use crate::model::network::DhcpCounters;
use crate::state_file;

use super::{format_mac, CountersSnapshot, DhcpError, DhcpServer, ServerConfig, Table};

struct Running {
    iface: String,
    config: ServerConfig,
    server: Arc<DhcpServer>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// What one network's server serves now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// NICs answered with an address of this node's.
    pub leases: usize,
    /// NICs relayed to central servers (DHCPCAST).
    pub relayed: usize,
    /// Problems of the table (NICs left out and why).
    pub warnings: Vec<String>,
    /// The server's counters since it started (for the Network's status).
    pub counters: DhcpCounters,
}

impl From<&CountersSnapshot> for DhcpCounters {
    fn from(c: &CountersSnapshot) -> DhcpCounters {
        DhcpCounters {
            offers: c.offers,
            acks: c.acks,
            naks: c.naks,
            inform_acks: c.inform_acks,
            releases: c.releases,
            declines: c.declines,
            relayed_up: c.relayed_up,
            relayed_down: c.relayed_down,
            tunneled_up: c.tunneled_up,
            tunneled_down: c.tunneled_down,
            tunnel_dropped: c.tunnel_dropped(),
            send_errors: c.send_errors,
            dropped: c.dropped_total(),
            dropped_by_reason: c.dropped.clone(),
            live_leases: c.live_leases,
        }
    }
}

/// One reservation in the state file.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Reservation {
    identity: String,
    mac: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    relayed_to: Vec<Ipv4Addr>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StateFile<'a> {
    network: &'a str,
    interface: &'a str,
    server_id: Ipv4Addr,
    reservations: Vec<Reservation>,
}

/// The DHCP servers of a node.
pub struct DhcpService {
    dir: PathBuf,
    running: Mutex<HashMap<String, Running>>,
    /// Tunnels to DHCPCAST gateways (`via`), once the node gossips.
    tunnels: std::sync::OnceLock<Arc<super::gateway::Tunnels>>,
    /// This node as a DHCPCAST gateway, once the node gossips.
    gateway: std::sync::OnceLock<Arc<super::gateway::Gateway>>,
}

impl DhcpService {
    /// Servers whose reservations are recorded in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> DhcpService {
        DhcpService {
            dir: dir.into(),
            running: Mutex::new(HashMap::new()),
            tunnels: std::sync::OnceLock::new(),
            gateway: std::sync::OnceLock::new(),
        }
    }

    /// Relay NICs `via` a gateway node through node tunnels opened with
    /// what `link` says, and act as a gateway (the node named `me`) for
    /// the servers `store` relays via it. Called once, before serving.
    pub fn use_tunnels(
        &self,
        link: tokio::sync::watch::Receiver<crate::relocate::agent::Link>,
        me: &str,
        store: Arc<crate::store::Store>,
    ) {
        let _ = self.tunnels.set(super::gateway::Tunnels::new(link));
        let _ = self.gateway.set(super::gateway::Gateway::new(me, store));
    }

    /// This node as a DHCPCAST gateway ([`DhcpService::use_tunnels`]).
    pub fn gateway(&self) -> Option<Arc<super::gateway::Gateway>> {
        self.gateway.get().cloned()
    }

    fn state_file(&self, network: &str) -> PathBuf {
        self.dir.join(format!("{}.json", network.replace('/', ".")))
    }

    /// The live leases and quarantined addresses of `network`'s server,
    /// kept across restarts of the node.
    fn lease_file(&self, network: &str) -> PathBuf {
        self.dir
            .join(format!("{}.leases.json", network.replace('/', ".")))
    }

    /// The live leases `network`'s server last wrote to its lease file
    /// (at most a second behind an ACK), `None` when it has none.
    pub fn leases(&self, network: &str) -> Option<super::Leases> {
        let text = std::fs::read_to_string(self.lease_file(network)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Serve `table` for `network` (`namespace/name`) on `iface`: start
    /// the server, swap its table, or rebind it when the interface or the
    /// server settings changed.
    pub async fn serve(
        &self,
        network: &str,
        iface: &str,
        config: ServerConfig,
        table: Table,
    ) -> Result<Served, DhcpError> {
        let mut served = Served {
            leases: table
                .clients
                .values()
                .filter(|c| c.upstream.is_none() && c.address.is_some())
                .count(),
            relayed: table
                .clients
                .values()
                .filter(|c| c.upstream.is_some())
                .count(),
            warnings: table.warnings.clone(),
            counters: DhcpCounters::default(),
        };
        self.persist(network, iface, config.server_id, &table)
            .map_err(|source| DhcpError::Socket {
                iface: iface.into(),
                what: "recording the reservations in the state directory",
                source,
            })?;
        let mut running = self.running.lock().await;
        if let Some(r) = running.get(network) {
            if r.iface == iface && r.config == config && !r.task.is_finished() {
                r.server.update(table);
                served.counters = DhcpCounters::from(&r.server.counters());
                return Ok(served);
            }
        }
        if let Some(old) = running.remove(network) {
            stop(old).await;
        }
        let server = Arc::new(DhcpServer::new(iface, config.clone())?);
        if let Some(t) = self.tunnels.get() {
            server.relay_through(t.clone());
        }
        server.keep_leases_in(self.lease_file(network));
        server.update(table);
        served.counters = DhcpCounters::from(&server.counters());
        let (tx, rx) = watch::channel(false);
        let s = server.clone();
        let name = network.to_string();
        let task = tokio::spawn(async move {
            if let Err(e) = s.run(rx).await {
                tracing::warn!(network = %name, "DHCP server stopped: {e}");
            }
        });
        tracing::info!(network, iface, server_id = %config.server_id, "DHCP server started");
        running.insert(
            network.to_string(),
            Running {
                iface: iface.to_string(),
                config,
                server,
                stop: tx,
                task,
            },
        );
        Ok(served)
    }

    /// Stop serving `network` and forget its reservations.
    pub async fn stop(&self, network: &str) {
        let old = self.running.lock().await.remove(network);
        if let Some(old) = old {
            tracing::info!(network, iface = %old.iface, "DHCP server stopped");
            stop(old).await;
        }
        let _ = std::fs::remove_file(self.state_file(network));
        let _ = std::fs::remove_file(self.lease_file(network));
    }

    /// The counters of `network`'s server, when it runs.
    pub async fn counters(&self, network: &str) -> Option<CountersSnapshot> {
        self.running
            .lock()
            .await
            .get(network)
            .map(|r| r.server.counters())
    }

    /// The counters of every server running, by network (metrics).
    pub async fn all_counters(&self) -> Vec<(String, CountersSnapshot)> {
        let running = self.running.lock().await;
        let mut all: Vec<_> = running
            .iter()
            .map(|(network, r)| (network.clone(), r.server.counters()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Write the reservations durably when they changed.
    fn persist(
        &self,
        network: &str,
        iface: &str,
        server_id: Ipv4Addr,
        table: &Table,
    ) -> std::io::Result<()> {
        let text = render(network, iface, server_id, table);
        let path = self.state_file(network);
        if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)?;
        state_file::write(&path, text.as_bytes())
    }
}

/// The state file's text: every NIC served, in identity order.
fn render(network: &str, iface: &str, server_id: Ipv4Addr, table: &Table) -> String {
    let mut reservations: Vec<Reservation> = table
        .clients
        .iter()
        .map(|(mac, c)| Reservation {
            identity: c.identity.clone(),
            mac: format_mac(mac),
            address: if c.upstream.is_some() {
                None
            } else {
                c.address
            },
            relayed_to: c
                .upstream
                .as_ref()
                .map(|u| u.servers.clone())
                .unwrap_or_default(),
        })
        .collect();
    reservations.sort_by(|a, b| a.identity.cmp(&b.identity));
    serde_json::to_string_pretty(&StateFile {
        network,
        interface: iface,
        server_id,
        reservations,
    })
    .expect("reservations serialize")
        + "\n"
}

async fn stop(r: Running) {
    let _ = r.stop.send(true);
    let mut task = r.task;
    if tokio::time::timeout(std::time::Duration::from_secs(5), &mut task)
        .await
        .is_err()
    {
        task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::{Client, LeaseOptions, Upstream};

    fn client(identity: &str, address: Option<&str>, relay: bool) -> Client {
        Client {
            identity: identity.into(),
            address: address.map(|a| a.parse().unwrap()),
            options: LeaseOptions::resolve(
                "10.0.0.0/24".parse().unwrap(),
                None,
                None,
                &Default::default(),
                "vm",
            )
            .unwrap(),
            upstream: relay.then(|| Upstream {
                servers: vec!["10.9.9.9".parse().unwrap()],
                giaddr: "10.0.0.2".parse().unwrap(),
                via: None,
            }),
        }
    }

    #[test]
    fn the_record_lists_every_nic_in_identity_order() {
        let mut table = Table::default();
        table
            .clients
            .insert([2; 6], client("default/b/eth0", Some("10.0.0.7"), false));
        table
            .clients
            .insert([1; 6], client("default/c/eth0", None, true));
        table
            .clients
            .insert([3; 6], client("default/a/eth0", Some("10.0.0.9"), false));
        let text = render("default/lan", "db1", "10.0.0.2".parse().unwrap(), &table);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["interface"], "db1");
        assert_eq!(v["serverId"], "10.0.0.2");
        let r = v["reservations"].as_array().unwrap();
        let ids: Vec<&str> = r.iter().map(|x| x["identity"].as_str().unwrap()).collect();
        assert_eq!(ids, ["default/a/eth0", "default/b/eth0", "default/c/eth0"]);
        assert_eq!(r[0]["mac"], "03:03:03:03:03:03");
        assert_eq!(r[0]["address"], "10.0.0.9");
        assert!(r[2].get("address").is_none());
        assert_eq!(r[2]["relayedTo"][0], "10.9.9.9");
        assert_eq!(
            text,
            render("default/lan", "db1", "10.0.0.2".parse().unwrap(), &table),
            "same table, same bytes (unchanged files are not rewritten)"
        );
    }
}
