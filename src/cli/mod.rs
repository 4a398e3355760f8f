//! The command line: `deorch node run` and the client verbs (`validate`,
//! `apply`, `delete`, `get`, `describe`, `version`, `completions`).
//! Commands parse their arguments and call the library; the only state they
//! touch is through the local API of a running node.

mod command;
mod dhcp;
mod exit;
mod history;
pub mod http;
mod identity;
mod import;
mod logs;
mod man;
pub(crate) mod output;
mod relocate;
mod replica;
mod vm;
mod watch;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::api::client;
use crate::api::{Request, Response};
use crate::manifest;
use crate::node::{self, config::DEFAULT_SOCKET, NodeArgs, NodeConfig};

/// deorch: a decentralized de-orchestrator for QEMU/KVM virtual machines.
#[derive(Debug, Parser)]
#[command(
    name = "deorch",
    version,
    propagate_version = true,
    after_help = exit::HELP
)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "DEORCH_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax, e.g. `info,deorch=debug`).
    #[arg(long, global = true, default_value = "info", env = "DEORCH_LOG")]
    pub log: String,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Output formats of `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A table.
    Table,
    /// YAML documents.
    Yaml,
    /// JSON.
    Json,
}

/// Local API client flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The node's local API socket.
    #[arg(long, env = "DEORCH_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run this machine's node (satellite) daemon.
    Node {
        /// What to do.
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Check manifests (files or directories, multi-document YAML).
    Validate {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Create or update objects on a running node.
    Apply {
        /// Manifest file, or `-` for standard input.
        #[arg(short = 'f', long = "filename", required = true)]
        file: String,
        /// Show what admission would decide for each document (signature,
        /// authorisation, generation) and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Client flags.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete objects on a running node: `delete KIND NAME` or `delete -f FILE`.
    Delete {
        /// Kind (e.g. `vm`, `virtualmachine`, `spacesuits`).
        kind: Option<String>,
        /// Names.
        names: Vec<String>,
        /// Delete the objects a manifest file declares.
        #[arg(short = 'f', long = "filename", conflicts_with_all = ["kind", "names"])]
        file: Option<String>,
        /// Namespace.
        #[arg(short, long)]
        namespace: Option<String>,
        /// Destroy the volumes of deleted VMs and replicas at once; without
        /// it they are kept for the node's `--volume-retention` (`deorch
        /// volume list`).
        #[arg(long)]
        purge: bool,
        /// Client flags.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List objects; `-w`: then every change, until interrupted.
    Get {
        /// Kind (e.g. `vm`, `satellites`); all kinds when absent.
        kind: Option<String>,
        /// Name.
        name: Option<String>,
        /// Namespace (default: all namespaces).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Output format (with `-w`, `json` is one document per line).
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
        /// Watch: print the objects, then each change (ADDED, MODIFIED,
        /// DELETED) as the node's store sees it.
        #[arg(short, long)]
        watch: bool,
        /// Client flags.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one object in detail, with its events.
    Describe {
        /// Kind.
        kind: String,
        /// Name.
        name: String,
        /// Namespace.
        #[arg(short, long)]
        namespace: Option<String>,
        /// Output format: `table` (the text for people) or `json`/`yaml`
        /// (`{record, object, events}`).
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
        /// Client flags.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Events, oldest first: of one object (refused documents too, which
    /// have no record), or of the whole node.
    Events {
        /// Kind (with a name); all events when absent.
        kind: Option<String>,
        /// Name.
        name: Option<String>,
        /// Namespace.
        #[arg(short, long)]
        namespace: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
        /// Then follow: print each new event as it comes (until
        /// interrupted).
        #[arg(short, long)]
        watch: bool,
        /// Client flags.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the version.
    Version {
        /// Output format (`table`: two lines).
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Print shell completions.
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
    /// Keys: `key new --out FILE`, `key address --key FILE`.
    Key {
        /// What to do.
        #[command(subcommand)]
        command: identity::KeyCommand,
    },
    /// Sign a message (Bitcoin signed message, BIP-137); prints base64.
    Sign {
        /// The key file.
        #[arg(long)]
        key: PathBuf,
        /// The message.
        #[arg(
            long,
            required_unless_present = "message_file",
            conflicts_with = "message_file"
        )]
        message: Option<String>,
        /// Read the message from this file (`-`: standard input), byte for byte.
        #[arg(long)]
        message_file: Option<PathBuf>,
        /// Address type of the signature: p2wpkh, p2sh-p2wpkh or p2pkh.
        #[arg(long = "type", default_value = "p2wpkh")]
        kind: crate::identity::AddressType,
    },
    /// Hand the cluster over to a new owner: the current owner signs the
    /// hand-over (printed as an `ownerHandOver` entry the new owner puts,
    /// with the steps before it, in the policies it re-signs;
    /// docs/SIGNING.md, "Handing the cluster over").
    HandOver {
        /// The current owner's key file.
        #[arg(long)]
        key: PathBuf,
        /// The cluster ID (the first owner's address).
        #[arg(long)]
        cluster: String,
        /// The new owner's address.
        #[arg(long)]
        to: String,
    },
    /// Verify a Bitcoin signed message: exit 0 if valid, 1 if not, 2 if
    /// it could not be checked (bad arguments, unreadable message file).
    Verify {
        /// The signer's address.
        #[arg(long)]
        address: String,
        /// The base64 signature.
        #[arg(long)]
        signature: String,
        /// The message.
        #[arg(
            long,
            required_unless_present = "message_file",
            conflicts_with = "message_file"
        )]
        message: Option<String>,
        /// Read the message from this file (`-`: standard input), byte for byte.
        #[arg(long)]
        message_file: Option<PathBuf>,
    },
    /// Sign the documents of a manifest file for a cluster.
    SignManifest {
        /// The manifest file.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// The key file.
        #[arg(long)]
        key: PathBuf,
        /// The cluster ID (its owner's address).
        #[arg(long, env = "DEORCH_CLUSTER")]
        cluster: String,
        /// Address type of the signer: p2wpkh, p2sh-p2wpkh or p2pkh.
        #[arg(long = "type", default_value = "p2wpkh")]
        kind: crate::identity::AddressType,
    },
    /// FASTR: copies of a VM's disks on other nodes.
    Fastr {
        /// What to do.
        #[command(subcommand)]
        command: FastrCommand,
    },
    /// Start a `NodeLost` VM on this node although its node (and its
    /// disks) are down: from a retained copy of its volumes here, else on
    /// fresh disks. The lost node's copy is kept when it returns.
    Recover {
        /// The VM.
        name: String,
        /// Namespace.
        #[arg(short, long)]
        namespace: Option<String>,
        /// How to reach the node.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The web page's command line: `deorch do create vm web1 from tiny
    /// on city=frankfurt`, `deorch do relocate web1 to 10.0.0.7`,
    /// `deorch do vms on rack=r7`, or words to search. Prints the plan
    /// and the rows; `--run` applies a plan that changes something.
    Do {
        /// The command line (or search words).
        #[arg(required = true)]
        words: Vec<String>,
        /// Apply the plan.
        #[arg(long)]
        run: bool,
        /// Print the outcome as JSON (what the web page gets).
        #[arg(long)]
        json: bool,
        /// How to reach the node.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The web page's URL of a command line on this node: `deorch url vm
    /// web1` prints `https://ADDR/?q=vm%20web1` (the page runs the
    /// query when it opens).
    Url {
        /// The command line (e.g. `vm web1`, `node sat-a`, `replicas of web1`).
        #[arg(required = true)]
        words: Vec<String>,
        /// How to reach the node.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A VM's power: `vm start|stop|restart|pause|resume NAME` (its
    /// `spec.powerState`, then waits for the node to carry it out).
    Vm {
        /// What to do.
        #[command(subcommand)]
        command: vm::VmCommand,
    },
    /// A VM's serial console output, from the node that runs it.
    Logs(logs::LogsArgs),
    /// Unlock a VM's console for a minute: prints where to connect (VNC,
    /// noVNC websocket, SPICE) and a one-time password.
    Console {
        /// The VM.
        name: String,
        /// Namespace.
        #[arg(short, long)]
        namespace: Option<String>,
        /// Print the ticket as JSON (the same as `-o json`).
        #[arg(long, hide = true)]
        json: bool,
        /// Output format of the ticket.
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
        /// Open the noVNC page (`xdg-open`, else `$BROWSER`) with the
        /// password in it.
        #[arg(long)]
        open: bool,
        /// How to reach the node.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The node's volumes: list them, restore or purge a retained one
    /// (what a deleted VM or replica left for the volume retention).
    Volume {
        /// What to do.
        #[command(subcommand)]
        command: VolumeCommand,
    },
    /// Ask for a VM to move to another satellite (`--to NODE|ADDRESS`,
    /// `--select FAMILY.KEY=VALUE`, `--performance`, `--offline`): writes
    /// a Relocation. The nodes elect its receiver; moving the VM is not
    /// built yet (the Relocation stays Pending).
    Relocate(relocate::RelocateArgs),
    /// Replicas: `create VM`, `list`, `revert R`, `clone R --to VM`, `delete R`.
    Replica {
        /// What to do.
        #[command(subcommand)]
        command: replica::ReplicaCommand,
    },
    /// Log in to a node's HTTP API with a key: prints the address and
    /// keeps the session cookie (0600) under $XDG_RUNTIME_DIR/deorch or
    /// ~/.cache/deorch.
    Login {
        /// The node: `https://HOST:PORT#sha256=PIN` as it wrote it to
        /// STATE_DIR/http-url (or `http://HOST:PORT` with `--http-plain`).
        #[arg(long, env = "DEORCH_NODE")]
        node: String,
        /// The key file.
        #[arg(long)]
        key: PathBuf,
        /// Address type to log in as: p2wpkh, p2sh-p2wpkh or p2pkh.
        #[arg(long = "type", default_value = "p2wpkh")]
        kind: crate::identity::AddressType,
        /// The directory password (level 2), first line of this file
        /// (`-`: standard input), when a policy asks one.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Print the address of the session kept by `deorch login`, as the node
    /// sees it.
    Whoami {
        /// The node: `https://HOST:PORT#sha256=PIN` as it wrote it to
        /// STATE_DIR/http-url (or `http://HOST:PORT` with `--http-plain`).
        #[arg(long, env = "DEORCH_NODE")]
        node: String,
    },
    /// Import a disk image (vmdk incl. streamOptimized, vhd, vhdx, qcow2,
    /// raw, vdi) or an appliance (.ova, .ovf) as a Spacesuit: the image
    /// into the image directory, the manifests printed (or written into
    /// a manifest directory with --manifests).
    Import(import::ImportArgs),
    /// Push manifests to a node's HTTP API, signing unsigned documents with
    /// the key (generation 1 when absent, or the node's next one).
    Push {
        /// The node: `https://HOST:PORT#sha256=PIN` as it wrote it to
        /// STATE_DIR/http-url (or `http://HOST:PORT` with `--http-plain`).
        #[arg(long, env = "DEORCH_NODE")]
        node: String,
        /// The key file.
        #[arg(long)]
        key: PathBuf,
        /// The manifest file.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// The cluster ID; default: asked from the node.
        #[arg(long, env = "DEORCH_CLUSTER")]
        cluster: Option<String>,
        /// Address type of the signer: p2wpkh, p2sh-p2wpkh or p2pkh.
        #[arg(long = "type", default_value = "p2wpkh")]
        kind: crate::identity::AddressType,
    },
    /// Run a benchmark (figures for docs/PERFORMANCE.md).
    Bench {
        /// Which.
        #[command(subcommand)]
        which: BenchCommand,
    },
    /// The node's DHCP server outside a node (tests, benchmarks).
    #[command(hide = true)]
    Dhcp {
        /// What to do.
        #[command(subcommand)]
        command: dhcp::DhcpCommand,
    },
    /// The versions of one object the node accepted (its history log),
    /// with source and signer, or a diff of two of them.
    History(history::HistoryArgs),
    /// Check a node's history log offline: its hash chain and every signed
    /// version's signature, for the cluster owner's address.
    VerifyHistory(history::VerifyArgs),
    /// Write (or check) the JSON schemas of every kind.
    #[command(hide = true)]
    Schemas {
        /// Directory.
        #[arg(default_value = "schemas")]
        dir: PathBuf,
    },
    /// Write the manual pages (one per command) into a directory.
    #[command(hide = true)]
    Man {
        /// Directory.
        #[arg(long)]
        out: PathBuf,
    },
}

/// `deorch bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Gossip: document convergence vs cluster size (simulated), bytes per
    /// node, placement decision time.
    Gossip {
        /// Cluster sizes.
        #[arg(long, value_delimiter = ',', default_value = "10,100,1000,10000")]
        sizes: Vec<usize>,
        /// Seeds per size and loss rate.
        #[arg(long, default_value_t = 3)]
        runs: u64,
    },
    /// Node authentication off vs on in the simulated cluster: CPU per
    /// node per minute, bytes, convergence; and one handshake's cost.
    GossipAuth {
        /// Cluster sizes.
        #[arg(long, value_delimiter = ',', default_value = "100,1000")]
        sizes: Vec<usize>,
    },
    /// Membership: our SWIM against foca in the same simulation (join,
    /// kills, loss, partition), side by side.
    Membership {
        /// Cluster sizes.
        #[arg(long, value_delimiter = ',', default_value = "5,100,1000")]
        sizes: Vec<usize>,
        /// Seeds per size and scenario.
        #[arg(long, default_value_t = 3)]
        seeds: u64,
        /// Virtual minutes of each loss scenario (0: none).
        #[arg(long, default_value_t = 10)]
        loss_minutes: u64,
    },
    /// Node authentication off vs on with five real node processes:
    /// convergence of documents applied on one node, CPU and RSS idle.
    ClusterAuth {
        /// Documents applied per round and mode.
        #[arg(long, default_value_t = 30)]
        docs: usize,
        /// Rounds (each starts five nodes per mode, modes alternating).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds of the idle window measured for CPU.
        #[arg(long, default_value_t = 60)]
        idle: u64,
    },
    /// Live relocation between two node daemons (Relocation objects)
    /// beside the same move by raw QEMU over QMP, alternating.
    Relocate(crate::bench_relocate::Args),
    /// FASTR's recovery point and cost under guest writes beside
    /// pvesr's way (zfs send -i through ssh), then a failover.
    Fastr(crate::bench_fastr::Args),
    /// The node-to-node tunnel's throughput beside plain TCP.
    Tunnel(crate::bench_tunnel::Args),
    /// `deorch import` of a disk image beside `qemu-img convert` of the
    /// same file, alternating.
    Import(crate::bench_import::Args),
    /// `GET /metrics` time with many objects, beside node_exporter.
    Metrics(crate::bench_metrics::Args),
    /// Apply latency with the history log on and off, alternately.
    History(crate::bench_history::Args),
    /// Manifest file written -> reconcile started.
    Drop {
        /// Number of files dropped.
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
    /// Store RSS, apply rate and reopen time with many objects.
    Store {
        /// Number of objects.
        #[arg(long, default_value_t = 10_000)]
        objects: usize,
    },
    /// The command line's server side (list, answer, serialize) with
    /// many objects in the store.
    Command {
        /// Number of objects.
        #[arg(long, default_value_t = 10_000)]
        objects: usize,
        /// Samples per query.
        #[arg(long, default_value_t = 20)]
        samples: usize,
    },
    /// Validation throughput, beside check-jsonschema.
    Validate {
        /// Number of documents.
        #[arg(long, default_value_t = 10_000)]
        documents: usize,
        /// The schemas directory (for check-jsonschema).
        #[arg(long, default_value = "schemas")]
        schemas: PathBuf,
    },
    /// Replica latency under write load (dir, and zfs when given a root).
    Replica {
        /// Number of replicas.
        #[arg(long, default_value_t = 50)]
        count: usize,
        /// A ZFS dataset to measure the zfs driver in (e.g. deorchtest/bench).
        #[arg(long)]
        zfs_root: Option<String>,
    },
    /// VM disk from a spacesuit: clone time and extra space, beside a full
    /// copy of the same image (dir, and zfs when given a root).
    Clone {
        /// Number of VM disks cloned.
        #[arg(long, default_value_t = 20)]
        count: usize,
        /// MiB of data written into the spacesuit before cloning.
        #[arg(long, default_value_t = 256)]
        data_mib: u64,
        /// A ZFS dataset to measure the zfs driver in (e.g. deorchtest/bench).
        #[arg(long)]
        zfs_root: Option<String>,
    },
    /// VM boot through a real node (drop -> QMP, drop -> guest ready)
    /// beside `virsh start` of the same guest, and daemon RSS per VM.
    Vm {
        /// Boots measured per side (after one warm-up).
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// VMs run at once for the RSS figure.
        #[arg(long, default_value_t = 4)]
        parallel: usize,
        /// Guest kernel (guest/build.sh makes it).
        #[arg(long, default_value = "/var/lib/deorch/guest/vmlinuz")]
        kernel: PathBuf,
        /// Guest initramfs.
        #[arg(long, default_value = "/var/lib/deorch/guest/initrd.img")]
        initrd: PathBuf,
        /// Machine type (`microvm`, `pc`, `q35`).
        #[arg(long, default_value = "microvm")]
        machine: String,
        /// Also measure `virsh start` against this libvirt URI.
        #[arg(long)]
        libvirt_uri: Option<String>,
        /// The machine type of the `virsh start` side (default: --machine).
        #[arg(long)]
        virsh_machine: Option<String>,
    },
    /// Many Networks beside VMs in one namespace: CPU seconds and RSS of
    /// a node until idle.
    Networks {
        /// Number of Networks.
        #[arg(long, default_value_t = 10_000)]
        networks: usize,
        /// Number of VMs.
        #[arg(long, default_value_t = 1_000)]
        vms: usize,
    },
    /// The local API's latency while a large file loads.
    Load {
        /// Objects in the file.
        #[arg(long, default_value_t = 40_000)]
        objects: usize,
    },
    /// Login round trip over loopback HTTP (challenge, sign, login, whoami).
    Login {
        /// Number of round trips.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Ask level 2 of the user: this directory server
        /// (`ldap://HOST:PORT`), bind DN template with `{user}`, user and
        /// the password's file (`scripts/bench-login.sh` starts a slapd).
        #[arg(long, num_args = 4, value_names = ["URI", "BIND_DN", "USER", "PASSWORD_FILE"])]
        level2: Option<Vec<String>>,
    },
}

/// `deorch node ...`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Run the node daemon in the foreground.
    Run(Box<NodeArgs>),
    /// Rebuild a damaged or lost store (the node stopped) from what is
    /// still readable in it and from its last verified snapshot; the old
    /// file is kept as `store.redb.damaged-<ms>`.
    RecoverStore {
        /// State directory of the node.
        #[arg(long, env = "DEORCH_STATE_DIR", default_value = "/var/lib/deorch")]
        state_dir: PathBuf,
    },
    /// Print the node's ID: the P2WPKH address of its key (made, 0600,
    /// when missing). The cluster owner admits a node by this address
    /// (AccessPolicy `spec.satellites`, docs/SIGNING.md "Nodes").
    Id {
        /// State directory of the node (its key is STATE_DIR/node.key).
        #[arg(long, env = "DEORCH_STATE_DIR", default_value = "/var/lib/deorch")]
        state_dir: PathBuf,
        /// The key file, if not STATE_DIR/node.key.
        #[arg(long, env = "DEORCH_NODE_KEY")]
        node_key: Option<PathBuf>,
        /// The cluster owner's address (sets the key's network: a
        /// testnet owner gives a testnet node address).
        #[arg(long, env = "DEORCH_CLUSTER_OWNER")]
        cluster_owner: Option<String>,
    },
    /// Join a cluster through any member's HTTP API: fetch the cluster's
    /// identity, ask for admission, wait for the owner's approval, then
    /// run the node (docs/SIGNING.md, "Joining").
    Join(Box<crate::node::join::JoinArgs>),
    /// Admit a node that asked to join: the owner signs the next
    /// generation of the members policy with it.
    Approve(crate::node::join::ApproveArgs),
    /// The join requests waiting for the owner.
    Requests(crate::node::join::RequestsArgs),
    /// Move every VM off a node (for maintenance): one automatic
    /// Relocation per VM it runs; the radar picks each receiver by the
    /// VM's own placement.
    Drain(relocate::DrainArgs),
    /// The node's fence (started by the daemon; see src/fence.rs): pause
    /// this node's VMs when the daemon stops renewing its lease.
    #[command(hide = true)]
    Fence {
        /// State directory of the node.
        #[arg(long)]
        state_dir: PathBuf,
        /// `qemu` or `libvirt:URI`.
        #[arg(long)]
        hypervisor: String,
        /// Lease timeout.
        #[arg(long)]
        timeout: crate::model::Duration,
    },
}

const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Run the CLI; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::of_error(&e)
        }
    }
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: a log file or journald gets no escapes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Node {
            command: NodeCommand::Run(args),
        } => {
            let config = NodeConfig::resolve(&args)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(node::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Node {
            command: NodeCommand::RecoverStore { state_dir },
        } => recover_store(&state_dir),
        Command::Node {
            command: NodeCommand::Join(args),
        } => node::join::join(*args),
        Command::Node {
            command: NodeCommand::Approve(args),
        } => node::join::approve(args),
        Command::Node {
            command: NodeCommand::Requests(args),
        } => node::join::requests(args),
        Command::Node {
            command: NodeCommand::Drain(args),
        } => relocate::drain(args),
        Command::Node {
            command:
                NodeCommand::Id {
                    state_dir,
                    node_key,
                    cluster_owner,
                },
        } => {
            let network = match cluster_owner.as_deref() {
                Some(o) => {
                    crate::identity::Address::parse(o)
                        .map_err(|e| anyhow::anyhow!("--cluster-owner {o}: {e}"))?
                        .network
                }
                None => crate::identity::Network::Mainnet,
            };
            let path = node_key.unwrap_or_else(|| state_dir.join("node.key"));
            let key = crate::http::load_or_create_node_key(&path, network)
                .with_context(|| format!("node key {}", path.display()))?;
            println!("{}", key.address(crate::identity::AddressType::P2wpkh)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Node {
            command:
                NodeCommand::Fence {
                    state_dir,
                    hypervisor,
                    timeout,
                },
        } => {
            crate::fence::main(&state_dir, &hypervisor, timeout.0)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { paths } => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let summary = manifest::run_validate(&paths, &mut out);
            out.flush().ok();
            eprintln!(
                "{} file{}, {} document{}, {} error{}{}",
                summary.files,
                plural(summary.files),
                summary.documents,
                plural(summary.documents),
                summary.errors,
                plural(summary.errors),
                match summary.warnings {
                    0 => String::new(),
                    n => format!(", {n} warning{} (fields with no effect yet)", plural(n)),
                }
            );
            Ok(if summary.errors == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Apply {
            file,
            dry_run,
            client,
        } => {
            let (filename, yaml) = read_input(&file)?;
            let response = client::call(
                &client.socket,
                &Request::Apply {
                    filename,
                    yaml,
                    dry_run,
                },
                CALL_TIMEOUT,
            )?;
            match response {
                Response::Applied { objects } => {
                    for a in objects {
                        let what = if a.changed { "configured" } else { "unchanged" };
                        println!("{} {what} (generation {})", a.key, a.generation);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Response::Verdicts { verdicts, plans } => {
                    let mut refused = 0;
                    for (i, a) in verdicts.iter().enumerate() {
                        match &a.verdict {
                            crate::admission::Verdict::Applied { generation } => {
                                println!("{} would be configured (generation {generation})", a.key)
                            }
                            crate::admission::Verdict::Unchanged { generation } => {
                                println!("{} unchanged (generation {generation})", a.key)
                            }
                            v => {
                                refused += 1;
                                println!("{}: {}: {v}", a.at, a.key);
                            }
                        }
                        if let Some(p) = plans.get(i) {
                            print_plan(p);
                        }
                    }
                    eprintln!(
                        "dry run: {} document{}, {refused} refused; nothing changed",
                        verdicts.len(),
                        plural(verdicts.len())
                    );
                    Ok(if refused == 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                }
                Response::Refused { verdicts } => {
                    for a in verdicts.iter().filter(|a| a.verdict.is_refusal()) {
                        println!("{}: {}: {}", a.at, a.key, a.verdict);
                    }
                    eprintln!(
                        "refused: {} of {} document{}, nothing applied",
                        verdicts.iter().filter(|a| a.verdict.is_refusal()).count(),
                        verdicts.len(),
                        plural(verdicts.len())
                    );
                    Ok(ExitCode::FAILURE)
                }
                Response::Invalid { diagnostics } => {
                    for d in &diagnostics {
                        println!("{d}");
                    }
                    eprintln!(
                        "rejected: {} error{}, nothing applied",
                        diagnostics.len(),
                        plural(diagnostics.len())
                    );
                    Ok(ExitCode::FAILURE)
                }
                other => unexpected(other),
            }
        }
        Command::Delete {
            kind,
            names,
            file,
            namespace,
            purge,
            client,
        } => {
            let targets: Vec<(String, Option<String>, String)> = match (file, kind) {
                (Some(file), _) => {
                    let (filename, yaml) = read_input(&file)?;
                    let parsed = manifest::parse_str(std::path::Path::new(&filename), &yaml);
                    if !parsed.diagnostics.is_empty() {
                        for d in &parsed.diagnostics {
                            println!("{d}");
                        }
                        bail!("{filename} is invalid; nothing deleted");
                    }
                    parsed
                        .documents
                        .iter()
                        .map(|d| {
                            let key = crate::model::ObjectKey::of(&d.object);
                            (
                                key.kind.as_str().to_string(),
                                Some(key.namespace).filter(|n| !n.is_empty()),
                                key.name,
                            )
                        })
                        .collect()
                }
                (None, Some(kind)) if !names.is_empty() => names
                    .into_iter()
                    .map(|n| (kind.clone(), namespace.clone(), n))
                    .collect(),
                _ => bail!(
                    "say what to delete: `deorch delete KIND NAME...` or `deorch delete -f FILE`"
                ),
            };
            // The first failure's exit code (3 when that object was not found).
            let mut failed: Option<ExitCode> = None;
            for (kind, namespace, name) in targets {
                match client::call(
                    &client.socket,
                    &Request::Delete {
                        kind,
                        namespace,
                        name,
                        purge,
                    },
                    CALL_TIMEOUT,
                )? {
                    Response::Deleted { key, generation } => {
                        println!("{key} deleted (generation {generation})")
                    }
                    Response::Error { code, message } => {
                        failed.get_or_insert(exit::node_error(&code, &message));
                    }
                    Response::Refused { verdicts } => {
                        for a in verdicts.iter().filter(|a| a.verdict.is_refusal()) {
                            eprintln!("error: {}: {}", a.key, a.verdict.reason());
                        }
                        failed.get_or_insert(ExitCode::FAILURE);
                    }
                    other => return unexpected(other),
                }
            }
            Ok(failed.unwrap_or(ExitCode::SUCCESS))
        }
        Command::Get {
            kind,
            name,
            namespace,
            output,
            watch: true,
            client,
        } => watch::run(kind, name, namespace, output, &client),
        Command::Get {
            kind,
            name,
            namespace,
            output,
            watch: false,
            client,
        } => {
            let one = name.is_some();
            let response = client::call(
                &client.socket,
                &Request::Get {
                    kind: kind.clone(),
                    namespace,
                    name,
                },
                CALL_TIMEOUT,
            )?;
            match response {
                Response::Objects { records } => {
                    let stdout = std::io::stdout();
                    let mut out = stdout.lock();
                    output::records(&mut out, &records, output, kind.is_none(), one)?;
                    if output == OutputFormat::Table {
                        // Rejected manifests are shown where users look.
                        if let Ok(Response::Info(info)) =
                            client::call(&client.socket, &Request::Info, CALL_TIMEOUT)
                        {
                            output::warnings(&mut out, &info.warnings)?;
                        }
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Response::Error { code, message } => Ok(exit::node_error(&code, &message)),
                other => unexpected(other),
            }
        }
        Command::Describe {
            kind,
            name,
            namespace,
            output,
            client,
        } => match client::call(
            &client.socket,
            &Request::Describe {
                kind,
                namespace,
                name,
            },
            CALL_TIMEOUT,
        )? {
            Response::Described { record, events } => {
                let stdout = std::io::stdout();
                match output {
                    OutputFormat::Table => output::describe(&mut stdout.lock(), &record, &events)?,
                    format => output::value(
                        &mut stdout.lock(),
                        &output::described(&record, &events),
                        format,
                    )?,
                }
                Ok(ExitCode::SUCCESS)
            }
            Response::Error { code, message } => Ok(exit::node_error(&code, &message)),
            other => unexpected(other),
        },
        Command::Events {
            kind,
            name,
            namespace,
            output,
            watch,
            client,
        } => events_cmd(kind, name, namespace, output, watch, &client),
        Command::Version { output } if output != OutputFormat::Table => {
            output::value(
                &mut std::io::stdout().lock(),
                &serde_json::json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "apiVersion": crate::model::API_VERSION,
                }),
                output,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Version { .. } => {
            println!("deorch {}", env!("CARGO_PKG_VERSION"));
            println!("apiVersion {}", crate::model::API_VERSION);
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            // Into a buffer, then out: clap_complete panics on a write
            // error, and a reader that closed the pipe early
            // (`deorch completions bash | head -1`) is no error.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "deorch", &mut script);
            use std::io::Write as _;
            match std::io::stdout().lock().write_all(&script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(anyhow::anyhow!("writing the completions: {e}"))
                }
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        Command::Key { command } => identity::key(command),
        Command::Sign {
            key,
            message,
            message_file,
            kind,
        } => identity::sign(&key, message, message_file.as_deref(), kind),
        Command::HandOver { key, cluster, to } => {
            let k = crate::identity::PrivateKey::load(&key)
                .with_context(|| format!("key {}", key.display()))?;
            crate::identity::Address::parse(&to).map_err(|e| anyhow::anyhow!("--to {to}: {e}"))?;
            let from = k.address(crate::identity::AddressType::P2wpkh)?.to_string();
            let msg = crate::identity::access::hand_over_message(&cluster, &from, &to);
            let sig =
                crate::identity::sign(&k, msg.as_bytes(), crate::identity::AddressType::P2wpkh)?;
            println!("ownerHandOver:\n  - to: \"{to}\"\n    signature: \"{sig}\"");
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            address,
            signature,
            message,
            message_file,
        } => identity::verify(&address, &signature, message, message_file.as_deref()),
        Command::SignManifest {
            file,
            key,
            cluster,
            kind,
        } => identity::sign_manifest(&file, &key, &cluster, kind),
        Command::Bench { which } => {
            match which {
                BenchCommand::Drop { count } => crate::bench::drop_latency(count)?,
                BenchCommand::Store { objects } => crate::bench::store_footprint(objects)?,
                BenchCommand::Command { objects, samples } => {
                    crate::bench::command_latency(objects, samples)?;
                    crate::bench::command_tenant_latency(objects, samples)?
                }
                BenchCommand::Validate { documents, schemas } => {
                    crate::bench::validate_throughput(documents, &schemas)?
                }
                BenchCommand::Replica { count, zfs_root } => {
                    crate::bench::replica_latency(count, zfs_root.as_deref())?
                }
                BenchCommand::Clone {
                    count,
                    data_mib,
                    zfs_root,
                } => crate::bench::clone_cost(count, data_mib, zfs_root.as_deref())?,
                BenchCommand::Vm {
                    count,
                    parallel,
                    kernel,
                    initrd,
                    machine,
                    libvirt_uri,
                    virsh_machine,
                } => crate::bench::vm_boot(
                    count,
                    parallel,
                    &kernel,
                    &initrd,
                    &machine,
                    libvirt_uri
                        .as_deref()
                        .map(|u| (u, virsh_machine.as_deref().unwrap_or(&machine))),
                )?,
                BenchCommand::Networks { networks, vms } => {
                    crate::bench_node::networks(networks, vms)?
                }
                BenchCommand::Load { objects } => crate::bench_node::load(objects)?,
                BenchCommand::Login { count, level2 } => {
                    crate::bench::login_latency(count, level2.as_deref())?
                }
                BenchCommand::Gossip { sizes, runs } => crate::gossip::bench::run(&sizes, runs)?,
                BenchCommand::GossipAuth { sizes } => crate::gossip::bench::auth(&sizes)?,
                BenchCommand::Membership {
                    sizes,
                    seeds,
                    loss_minutes,
                } => crate::gossip::membership_eval::bench(&sizes, seeds, loss_minutes)?,
                BenchCommand::Relocate(args) => crate::bench_relocate::run(args)?,
                BenchCommand::Fastr(args) => crate::bench_fastr::run(args)?,
                BenchCommand::Tunnel(args) => crate::bench_tunnel::run(args)?,
                BenchCommand::Import(args) => crate::bench_import::run(args)?,
                BenchCommand::Metrics(args) => crate::bench_metrics::run(args)?,
                BenchCommand::History(args) => crate::bench_history::run(args)?,
                BenchCommand::ClusterAuth { docs, rounds, idle } => {
                    crate::bench_cluster::run(docs, rounds, Duration::from_secs(idle))?
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Login {
            node,
            key,
            kind,
            password_file,
        } => http::login(&node, &key, kind, password_file.as_deref()),
        Command::Whoami { node } => http::whoami(&node),
        Command::Push {
            node,
            key,
            file,
            cluster,
            kind,
        } => http::push(&node, &key, &file, cluster, kind),
        Command::Dhcp { command } => dhcp::run(command),
        Command::Replica { command } => replica::run(command),
        Command::Relocate(args) => relocate::run(args),
        Command::Import(args) => import::run(args),
        Command::Volume { command } => volume(command),
        Command::Do {
            words,
            run,
            json,
            client,
        } => command::run(&words, run, json, &client),
        Command::Url { words, client } => command::url(&words, &client),
        Command::Vm { command } => vm::run(command),
        Command::Logs(args) => logs::run(args),
        Command::Console {
            name,
            namespace,
            json,
            output,
            open,
            client,
        } => match client::call(
            &client.socket,
            &Request::Console { namespace, name },
            CALL_TIMEOUT,
        )? {
            Response::ConsoleTicket { ticket } if open => {
                let http = match client::call(&client.socket, &Request::Info, CALL_TIMEOUT)? {
                    Response::Info(i) => i.http_url,
                    _ => None,
                };
                output::open_console(&ticket, http.as_deref())
            }
            Response::ConsoleTicket { ticket } if json || output == OutputFormat::Json => {
                println!("{ticket}");
                Ok(ExitCode::SUCCESS)
            }
            Response::ConsoleTicket { ticket } if output == OutputFormat::Yaml => {
                print!("{}", serde_saphyr::to_string(&ticket)?);
                Ok(ExitCode::SUCCESS)
            }
            Response::ConsoleTicket { ticket: t } => {
                let port = |k: &str| t[k].as_u64().map_or("-".to_string(), |p| p.to_string());
                println!(
                    "{}: VNC {host}:{} (noVNC websocket {}, SPICE {}), password {} for 60 s",
                    t["vm"].as_str().unwrap_or_default(),
                    port("vncPort"),
                    port("websocketPort"),
                    port("spicePort"),
                    t["password"].as_str().unwrap_or_default(),
                    host = t["host"].as_str().unwrap_or_default(),
                );
                if let Some(url) = t["url"].as_str() {
                    println!("noVNC: {url}");
                }
                Ok(ExitCode::SUCCESS)
            }
            Response::Error { code, message } => Ok(exit::node_error(&code, &message)),
            other => unexpected(other),
        },
        Command::Fastr {
            command:
                FastrCommand::Sync {
                    name,
                    namespace,
                    wait,
                    client,
                },
        } => fastr_sync(&client, namespace, name, wait),
        Command::Fastr {
            command:
                FastrCommand::Points {
                    name,
                    namespace,
                    output,
                    client,
                },
        } => fastr_points(&client, namespace, name, output),
        Command::Fastr {
            command:
                FastrCommand::Recover {
                    name,
                    namespace,
                    at,
                    from,
                    client,
                },
        } => fastr_recover(&client, namespace, name, at, from),
        Command::Recover {
            name,
            namespace,
            client,
        } => volume_answer(client::call(
            &client.socket,
            &Request::Recover { namespace, name },
            CALL_TIMEOUT,
        )?),
        Command::History(args) => history::history(args),
        Command::VerifyHistory(args) => history::verify(args),
        Command::Schemas { dir } => {
            std::fs::create_dir_all(&dir)?;
            for (file, text) in crate::schema::render_all() {
                std::fs::write(dir.join(&file), text)?;
            }
            println!("schemas written to {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { out } => {
            for page in man::write(&out)? {
                println!("{}", page.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `deorch fastr`.
#[derive(Debug, clap::Subcommand)]
pub enum FastrCommand {
    /// Take a copy point of a VM now and send it to its copies (on the
    /// node that runs the VM).
    Sync {
        /// The VM.
        name: String,
        /// Namespace.
        #[arg(short, long)]
        namespace: Option<String>,
        /// Wait until every copy holds a point taken after the ask (at
        /// most 120 s) and print them.
        #[arg(long)]
        wait: bool,
        /// How to reach the node.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The complete copy points of a VM this node holds, oldest first
    /// (`spec.fastr.keep` of them).
    Points {
        /// The VM.
        name: String,
        /// Namespace.
        #[arg(short, long)]
        namespace: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
        /// How to reach the node.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Start a VM on this node from its copy here, at a point (the
    /// newest by default): its node stops it and keeps its disks as a
    /// diverged replica. Run it on the node that holds the copy.
    Recover {
        /// The VM.
        name: String,
        /// Namespace.
        #[arg(short, long)]
        namespace: Option<String>,
        /// The point (`fastr-<unix ms>`, see `deorch fastr points`).
        #[arg(long)]
        at: Option<String>,
        /// The node whose copy to start from: must be this node (the
        /// command says so otherwise).
        #[arg(long)]
        from: Option<String>,
        /// How to reach the node.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `deorch fastr points`.
fn fastr_points(
    client: &ClientArgs,
    namespace: Option<String>,
    name: String,
    format: OutputFormat,
) -> anyhow::Result<ExitCode> {
    match client::call(
        &client.socket,
        &Request::FastrPoints { namespace, name },
        CALL_TIMEOUT,
    )? {
        Response::FastrPoints { points } if format != OutputFormat::Table => {
            let list: Vec<serde_json::Value> = points
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "point": p,
                        "takenMs": crate::relocate::agent::fastr::point_ms(p),
                    })
                })
                .collect();
            output::value(&mut std::io::stdout().lock(), &list.into(), format)?;
            Ok(ExitCode::SUCCESS)
        }
        Response::FastrPoints { points } => {
            let now = crate::clock::now_ms();
            println!("{:<24} AGE", "POINT");
            for p in points {
                let age = crate::relocate::agent::fastr::point_ms(&p)
                    .map(|ms| output::duration_text(now.saturating_sub(ms) / 1000))
                    .unwrap_or_default();
                println!("{p:<24} {age}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { code, message } => Ok(exit::node_error(&code, &message)),
        other => unexpected(other),
    }
}

/// `deorch fastr recover`.
fn fastr_recover(
    client: &ClientArgs,
    namespace: Option<String>,
    name: String,
    at: Option<String>,
    from: Option<String>,
) -> anyhow::Result<ExitCode> {
    if let Some(from) = from {
        let me = match client::call(&client.socket, &Request::Info, CALL_TIMEOUT)? {
            Response::Info(i) => i.name,
            other => return unexpected(other),
        };
        if from != me {
            eprintln!("error: this is node {me}: a recovery starts the VM on the node that holds the copy; run it on {from}");
            return Ok(ExitCode::FAILURE);
        }
    }
    volume_answer(client::call(
        &client.socket,
        &Request::FastrRecover {
            namespace,
            name,
            at,
        },
        std::time::Duration::from_secs(90),
    )?)
}

/// `deorch fastr sync`.
fn fastr_sync(
    client_args: &ClientArgs,
    namespace: Option<String>,
    name: String,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    let get = || {
        client::call(
            &client_args.socket,
            &Request::Get {
                kind: Some("vm".into()),
                namespace: namespace.clone(),
                name: Some(name.clone()),
            },
            CALL_TIMEOUT,
        )
    };
    let record = match get()? {
        Response::Objects { mut records } if !records.is_empty() => records.remove(0),
        Response::Objects { .. } => {
            eprintln!("error: no VM {name} here");
            return Ok(ExitCode::FAILURE);
        }
        Response::Error { code, message } => return Ok(exit::node_error(&code, &message)),
        other => return unexpected(other),
    };
    let copies = record.object["spec"]["fastr"]["copies"].as_u64();
    let Some(copies) = copies else {
        eprintln!("error: VM {name} has no FASTR policy (spec.fastr)");
        return Ok(ExitCode::FAILURE);
    };
    let asked = crate::clock::now_ms();
    match client::call(
        &client_args.socket,
        &Request::FastrSync {
            namespace: namespace.clone(),
            name: name.clone(),
        },
        CALL_TIMEOUT,
    )? {
        Response::VolumeDone { message } => println!("{message}"),
        Response::Error { code, message } => return Ok(exit::node_error(&code, &message)),
        other => return unexpected(other),
    }
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let t = std::time::Instant::now();
    // The copies holding a point taken after the ask, of how many.
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(copies),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {elapsed:>4} [{bar:20}] {pos}/{len} copies hold a new point",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    loop {
        if let Response::Objects { records } = get()? {
            let st = records
                .first()
                .and_then(|r| r.status.clone())
                .unwrap_or_default();
            let list = st["fastr"].as_array().cloned().unwrap_or_default();
            let fresh = list
                .iter()
                .filter(|c| {
                    c["point"]
                        .as_str()
                        .and_then(crate::relocate::agent::fastr::point_ms)
                        .is_some_and(|p| p >= asked)
                })
                .count();
            bar.set_position(fresh as u64);
            if fresh as u64 >= copies {
                bar.finish_and_clear();
                for c in &list {
                    println!(
                        "{}: {} ({} bytes sent)",
                        c["node"].as_str().unwrap_or("?"),
                        c["point"].as_str().unwrap_or("?"),
                        c["bytesSent"]
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            if let Some(e) = list.iter().find_map(|c| c["error"].as_str()) {
                if t.elapsed() > std::time::Duration::from_secs(10) {
                    bar.abandon();
                    eprintln!("error: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        if t.elapsed() > std::time::Duration::from_secs(120) {
            bar.abandon();
            eprintln!("error: not every copy holds a new point within 120 s");
            return Ok(ExitCode::FAILURE);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `deorch volume`.
#[derive(Debug, clap::Subcommand)]
pub enum VolumeCommand {
    /// Every volume of the node; retained ones with their own name and
    /// deadline.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
        /// Client flags.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Take a retained volume back under its own name.
    Restore {
        /// Its retained name (`retained.<until>.<volume>`).
        name: String,
        /// Client flags.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Destroy a retained volume now.
    Purge {
        /// Its retained name.
        name: String,
        /// Client flags.
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn volume(command: VolumeCommand) -> anyhow::Result<ExitCode> {
    let (client, request) = match command {
        VolumeCommand::List { output, client } => {
            if output != OutputFormat::Table {
                return match client::call(&client.socket, &Request::Volumes, CALL_TIMEOUT)? {
                    Response::Volumes { volumes } => {
                        output::value(
                            &mut std::io::stdout().lock(),
                            &serde_json::to_value(&volumes)?,
                            output,
                        )?;
                        Ok(ExitCode::SUCCESS)
                    }
                    other => volume_answer(other),
                };
            }
            (client, Request::Volumes)
        }
        VolumeCommand::Restore { name, client } => (client, Request::RestoreVolume { name }),
        VolumeCommand::Purge { name, client } => (client, Request::PurgeVolume { name }),
    };
    match client::call(&client.socket, &request, CALL_TIMEOUT)? {
        Response::Volumes { volumes } => {
            println!(
                "{:<60} {:<40} {:<14} NOTE",
                "NAME", "RETAINED FROM", "DESTROYED IN"
            );
            let now = crate::clock::now_ms();
            for v in volumes {
                let note = match &v.diverged {
                    Some(d) => {
                        let runs = match &d.node {
                            Some(node) => format!("{} runs on {node}", d.vm),
                            None => format!("of {}", d.vm),
                        };
                        match &d.replica {
                            Some(r) => format!(
                                "diverged replica {r} ({runs}): clone it with source.replica.name={r}"
                            ),
                            None => format!("diverged copy: {runs}; this node's disks were kept"),
                        }
                    }
                    None => String::new(),
                };
                match v.retained {
                    Some((own, until)) => println!(
                        "{:<60} {:<40} {:<14} {note}",
                        v.name,
                        own,
                        output::duration_text(until.saturating_sub(now) / 1000)
                    ),
                    None => println!("{:<60} {:<40} {:<14} {note}", v.name, "-", "-"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        other => volume_answer(other),
    }
}

/// The answer of a volume or recovery request: its message, or its error.
fn volume_answer(response: Response) -> anyhow::Result<ExitCode> {
    match response {
        Response::VolumeDone { message } => {
            println!("{message}");
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { code, message } => Ok(exit::node_error(&code, &message)),
        other => unexpected(other),
    }
}

fn recover_store(state_dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let r = crate::store::recover::recover(state_dir, node::STORE_FILE)?;
    if r.sound {
        println!(
            "the store is sound ({} records) and the snapshot holds nothing newer: nothing changed",
            r.from_store
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(p) = &r.store_problem {
        println!("store: {p}");
    }
    if let Some(p) = &r.snapshot_problem {
        println!("snapshot not used: {p}");
    }
    println!(
        "recovered {} records: {} from the store, {} from the snapshot",
        r.from_store + r.from_snapshot,
        r.from_store,
        r.from_snapshot
    );
    for (key, why) in &r.lost {
        println!("lost here: {key} ({why})");
    }
    if !r.lost.is_empty() {
        println!(
            "objects lost here come back from their source: a manifest file at the next rescan, a signed document from a peer through gossip's sync, else apply them again"
        );
    }
    if let Some(a) = &r.set_aside {
        println!("the old store file is kept as {a}");
    }
    Ok(ExitCode::SUCCESS)
}

/// What this node would do for one object of a dry run, indented under
/// its verdict.
fn print_plan(p: &crate::reconcile::kind::Preview) {
    for action in &p.actions {
        println!("  would {action}");
    }
    if let Some(note) = &p.note {
        println!("  then: {note}");
    }
    if let Some(error) = &p.error {
        println!("  would fail: {error}");
    }
    if p.actions.is_empty() && p.note.is_none() && p.error.is_none() {
        println!("  nothing to do on this node");
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn unexpected(r: Response) -> anyhow::Result<ExitCode> {
    match r {
        Response::Error { code, message } => Err(exit::NodeError { code, message }.into()),
        other => bail!("unexpected answer from the node: {other:?}"),
    }
}

/// Read a file or standard input (`-`); returns (name for messages, text).
fn read_input(file: &str) -> anyhow::Result<(String, String)> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        Ok(("<stdin>".into(), s))
    } else {
        let s = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
        Ok((file.to_string(), s))
    }
}

/// A spinner with the elapsed time and a message, on standard error when
/// it is a terminal (nothing is drawn into a pipe or a file): the long
/// waits of the power verbs and replicas.
pub(crate) fn spinner() -> indicatif::ProgressBar {
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} {wide_msg}")
            .expect("a valid template"),
    );
    bar
}

/// `deorch events [-w]`: the events, then (with `-w`) each new one as the
/// node records it, polled every 500 ms (an event is new when the node's
/// list has it after the last one printed), until interrupted or until
/// the reader of the output goes away.
fn events_cmd(
    kind: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
    format: OutputFormat,
    watch: bool,
    client: &ClientArgs,
) -> anyhow::Result<ExitCode> {
    let fetch = || {
        client::call(
            &client.socket,
            &Request::Events {
                kind: kind.clone(),
                namespace: namespace.clone(),
                name: name.clone(),
            },
            CALL_TIMEOUT,
        )
    };
    let stdout = std::io::stdout();
    let mut last: Option<crate::store::Event> = None;
    let mut first = true;
    loop {
        let events = match fetch()? {
            Response::Events { events } => events,
            Response::Error { code, message } => return Ok(exit::node_error(&code, &message)),
            other => return unexpected(other),
        };
        // What follows the last one printed (events are kept oldest first
        // and bounded: when it has gone, everything is new).
        let from = last
            .as_ref()
            .and_then(|l| events.iter().rposition(|e| e == l))
            .map_or(0, |i| i + 1);
        let fresh = &events[from..];
        if first || !fresh.is_empty() {
            let mut out = stdout.lock();
            let written = if watch && format != OutputFormat::Table {
                // One document per event, as `get -w` prints changes.
                fresh.iter().try_for_each(|e| match format {
                    OutputFormat::Json => writeln!(out, "{}", serde_json::to_string(e)?),
                    _ => write!(
                        out,
                        "---\n{}",
                        serde_saphyr::to_string(e).map_err(std::io::Error::other)?
                    ),
                })
            } else if watch && !first {
                output::event_lines(&mut out, fresh, "")
            } else {
                output::events(&mut out, fresh, format)
            };
            match written.and_then(|()| std::io::Write::flush(&mut out)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    return Ok(ExitCode::SUCCESS)
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(e) = events.last() {
            last = Some(e.clone());
        }
        first = false;
        if !watch {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
