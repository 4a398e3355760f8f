//! `deorch dhcp serve` (hidden): the node's DHCP server on one interface
//! for the VMs of manifest files, outside a node. Used by the real-client
//! tests and the benchmark; the node will drive [`crate::dhcp::DhcpServer`]
//! itself. `deorch dhcp perf`: load as directly attached clients
//! ([`crate::dhcp::perf`]), for any DHCP server.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;

use crate::dhcp::perf::{PerfConfig, Relay};
use crate::dhcp::{parse_mac, DhcpServer, ServerConfig, Table};
use crate::manifest;
use crate::model::AnyObject;

/// `deorch dhcp ...`.
#[derive(Debug, Subcommand)]
pub enum DhcpCommand {
    /// Serve DHCP on one interface to the VMs of manifest files until
    /// SIGINT/SIGTERM, then print the counters as JSON.
    Serve(ServeArgs),
    /// Measure a DHCP server as VMs on its bridge see it: clients with
    /// these MACs run DISCOVER-OFFER-REQUEST-ACK from a packet socket on
    /// the interface (no giaddr, unlike perfdhcp); prints a JSON report.
    Perf(PerfArgs),
}

/// `deorch dhcp perf` flags.
#[derive(Debug, clap::Args)]
pub struct PerfArgs {
    /// The interface the clients sit behind (e.g. a veth on the server's
    /// bridge).
    #[arg(long)]
    pub interface: String,
    /// DISCOVERs per second.
    #[arg(long)]
    pub rate: u32,
    /// Seconds of DISCOVERs.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Milliseconds replies are awaited after that.
    #[arg(long, default_value_t = 1000)]
    pub wait_ms: u64,
    /// File of client MACs, one per line (perfdhcp's `-M` format).
    #[arg(long)]
    pub macs: PathBuf,
    /// Set the broadcast flag: replies are then broadcast.
    #[arg(long)]
    pub broadcast: bool,
    /// Act as a relay agent with this address (giaddr, bound on port 67),
    /// as perfdhcp does; needs --server.
    #[arg(long, requires = "server")]
    pub relay: Option<Ipv4Addr>,
    /// The server's address (relay mode).
    #[arg(long, requires = "relay")]
    pub server: Option<Ipv4Addr>,
}

fn perf(args: PerfArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.macs)
        .with_context(|| format!("reading {}", args.macs.display()))?;
    let mut macs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_mac(line) {
            Some(m) => macs.push(m),
            None => bail!(
                "{}:{}: {line:?} is not a MAC address (expected aa:bb:cc:dd:ee:ff)",
                args.macs.display(),
                i + 1
            ),
        }
    }
    if macs.is_empty() {
        bail!("{}: no MAC address in the file", args.macs.display());
    }
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        bail!(
            "--seconds: expected a positive number, got {}",
            args.seconds
        );
    }
    let report = crate::dhcp::perf::run(&PerfConfig {
        iface: args.interface.clone(),
        rate: args.rate,
        period: Duration::from_secs_f64(args.seconds),
        wait: Duration::from_millis(args.wait_ms),
        macs,
        broadcast: args.broadcast,
        relay: args
            .relay
            .zip(args.server)
            .map(|(giaddr, server)| Relay { giaddr, server }),
    })
    .with_context(|| format!("DHCP load on {}", args.interface))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(ExitCode::SUCCESS)
}

/// `deorch dhcp serve` flags.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The interface (bridge) to serve.
    #[arg(long)]
    pub interface: String,
    /// This node's address on the interface (server identifier; never
    /// handed out; default DHCPCAST relay address).
    #[arg(long)]
    pub server_id: Ipv4Addr,
    /// Manifest files (or directories): one Network and its VirtualMachines.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// The Network to serve when the files hold several.
    #[arg(long)]
    pub network: Option<String>,
    /// Answer relayed requests from this relay agent (giaddr); repeatable.
    #[arg(long = "trust-relay")]
    pub trusted_relays: Vec<Ipv4Addr>,
    /// UDP port.
    #[arg(long, default_value_t = 67)]
    pub port: u16,
    /// Remember leases in this file (JSON), as the node does in its state
    /// directory: a restarted server keeps them.
    #[arg(long)]
    pub leases: Option<PathBuf>,
    /// Also write the counters (JSON) to this file on exit.
    #[arg(long)]
    pub counters: Option<PathBuf>,
}

/// Run `deorch dhcp ...`.
pub fn run(command: DhcpCommand) -> anyhow::Result<ExitCode> {
    let args = match command {
        DhcpCommand::Serve(args) => args,
        DhcpCommand::Perf(args) => return perf(args),
    };
    let (files, mut problems) = manifest::collect_files(&args.files);
    let mut networks = Vec::new();
    let mut vms = Vec::new();
    let mut suits = Vec::new();
    for f in &files {
        let parsed = manifest::parse_file(f);
        problems.extend(parsed.diagnostics);
        for d in parsed.documents {
            match d.object {
                AnyObject::Network(n) => networks.push(n),
                AnyObject::VirtualMachine(v) => vms.push(v),
                AnyObject::Spacesuit(s) => suits.push(s),
                _ => {}
            }
        }
    }
    // A VM that declares no NICs has its spacesuit's.
    for vm in &mut vms {
        if vm.spec.nics.is_empty() {
            let ns = |m: &kube_core::ObjectMeta| {
                m.namespace
                    .clone()
                    .unwrap_or_else(|| crate::model::DEFAULT_NAMESPACE.to_string())
            };
            if let Some(s) = suits.iter().find(|s| {
                vm.spec.spacesuit.is_some()
                    && s.metadata.name == vm.spec.spacesuit
                    && ns(&s.metadata) == ns(&vm.metadata)
            }) {
                vm.spec.nics = s.spec.nics.clone();
            }
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        bail!("invalid manifests: nothing served");
    }
    if let Some(name) = &args.network {
        networks.retain(|n| n.metadata.name.as_deref() == Some(name.as_str()));
    }
    let network = match networks.as_slice() {
        [one] => one,
        [] => bail!("no Network in the files (or none named by --network)"),
        _ => bail!("several Networks in the files: name one with --network"),
    };
    let table =
        Table::build(network, &vms, args.server_id, |_| true).context("building the DHCP table")?;
    for w in &table.warnings {
        eprintln!("warning: {w}");
    }
    let clients = table.clients.len();
    let config = ServerConfig {
        server_id: args.server_id,
        trusted_relays: args.trusted_relays.clone(),
        port: args.port,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let snapshot = rt.block_on(async {
        let server = Arc::new(DhcpServer::new(&args.interface, config)?);
        if let Some(path) = &args.leases {
            server.keep_leases_in(path.clone());
        }
        server.update(table);
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            let _ = tx.send(true);
        });
        eprintln!(
            "dhcp: serving {clients} client{} on {}",
            if clients == 1 { "" } else { "s" },
            args.interface
        );
        server.run(rx).await?;
        anyhow::Ok(server.counters())
    })?;
    let json = serde_json::to_string_pretty(&snapshot)?;
    println!("{json}");
    if let Some(path) = &args.counters {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
