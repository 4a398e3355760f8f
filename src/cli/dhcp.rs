//! `deorch dhcp serve` (hidden): the node's DHCP server on one interface
//! for the VMs of manifest files, outside a node. Used by the real-client
//! tests and the benchmark; the node will drive [`crate::dhcp::DhcpServer`]
//! itself.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Subcommand;

use crate::dhcp::{DhcpServer, ServerConfig, Table};
use crate::manifest;
use crate::model::AnyObject;

/// `deorch dhcp ...`.
#[derive(Debug, Subcommand)]
pub enum DhcpCommand {
    /// Serve DHCP on one interface to the VMs of manifest files until
    /// SIGINT/SIGTERM, then print the counters as JSON.
    Serve(ServeArgs),
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
    /// Also write the counters (JSON) to this file on exit.
    #[arg(long)]
    pub counters: Option<PathBuf>,
}

/// Run `deorch dhcp ...`.
pub fn run(command: DhcpCommand) -> anyhow::Result<ExitCode> {
    let DhcpCommand::Serve(args) = command;
    let (files, mut problems) = manifest::collect_files(&args.files);
    let mut networks = Vec::new();
    let mut vms = Vec::new();
    for f in &files {
        let parsed = manifest::parse_file(f);
        problems.extend(parsed.diagnostics);
        for d in parsed.documents {
            match d.object {
                AnyObject::Network(n) => networks.push(n),
                AnyObject::VirtualMachine(v) => vms.push(v),
                _ => {}
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
