//! Joining a cluster in minutes (docs/SIGNING.md, "Joining"):
//!
//! ```text
//! new machine                         any member (HTTP API)          owner
//! deorch node join URL ──GET /v1/join──▶ cluster, owner, seeds,
//!                                        signed members policies
//!   makes its node key
//!   ──POST /v1/join (signed by its key)──▶ kept as a request
//!                                                         deorch node approve NAME
//!                                        ◀──signed members policy, generation+1──
//!   polls GET /v1/join until a policy     gossip carries it to every member
//!   lists its address; verifies it;
//!   STATE_DIR/join/approved.json;
//!   the node starts (or the service
//!   does) and admits it first thing
//!   ([`apply_approval`]), then gossips
//!   with the seeds as a member.
//! ```
//!
//! Asking admits nothing: only the owner's signature does, as for any
//! member (AccessPolicy `spec.satellites`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tracing::{info, warn};

use super::config::{NodeArgs, NodeConfig};
use crate::admission::{Admission, Batch, Trust};
use crate::http::client::{request, NodeUrl};
use crate::http::join::{admit_in, JoinRequest};
use crate::identity::{self, Address, AddressType, PrivateKey};
use crate::store::SourceId;

const TIMEOUT: Duration = Duration::from_secs(30);
/// Where a joiner keeps the approval until its node has admitted it.
const APPROVED: &str = "join/approved.json";

/// `deorch node join`.
#[derive(Debug, Clone, clap::Args)]
pub struct JoinArgs {
    /// A member's HTTP API, as it wrote it to STATE_DIR/http-url:
    /// `https://HOST:PORT#sha256=PIN` (or `http://HOST:PORT` behind a
    /// TLS proxy or on a lab network).
    pub url: String,
    /// The cluster owner's address you expect: joining stops if the node
    /// belongs to another cluster. Without it, the owner is printed for
    /// you to check (the URL's pin already proves which node answered).
    #[arg(long)]
    pub expect_owner: Option<String>,
    /// Give up waiting for the owner's approval after this long (e.g.
    /// `30m`); default: wait.
    #[arg(long)]
    pub approval_timeout: Option<crate::model::Duration>,
    /// Once admitted, exit (0) instead of running the node: for a node run
    /// by its service (`systemctl restart deorch` next).
    #[arg(long)]
    pub no_run: bool,
    /// The node's settings, as `deorch node run` takes them; with
    /// `--config FILE`, what joining learns (clusterOwner, seeds,
    /// gossipListen) is added to FILE where it is missing.
    #[command(flatten)]
    pub node: NodeArgs,
}

/// `deorch node approve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ApproveArgs {
    /// The node to admit: the name or address of its join request, or a
    /// node address (with `--name`).
    pub who: String,
    /// The name to admit it under (default: the one it asked for).
    #[arg(long)]
    pub name: Option<String>,
    /// Any member's HTTP API (`https://HOST:PORT#sha256=PIN`).
    #[arg(long, env = "DEORCH_NODE")]
    pub node: String,
    /// The owner's key file (or an admin's whose policy may change the
    /// members policy).
    #[arg(long)]
    pub key: PathBuf,
    /// The AccessPolicy to add it to, when several admit satellites.
    #[arg(long)]
    pub policy: Option<String>,
    /// Address type of the signer: p2wpkh, p2sh-p2wpkh or p2pkh.
    #[arg(long = "type", default_value = "p2wpkh")]
    pub kind: AddressType,
}

/// `deorch node requests`.
#[derive(Debug, Clone, clap::Args)]
pub struct RequestsArgs {
    /// Any member's HTTP API (`https://HOST:PORT#sha256=PIN`).
    #[arg(long, env = "DEORCH_NODE")]
    pub node: String,
    /// Output format: table, json or yaml.
    #[arg(short, long, value_enum, default_value_t = crate::cli::OutputFormat::Table)]
    pub output: crate::cli::OutputFormat,
}

fn get_join(url: &NodeUrl) -> anyhow::Result<Value> {
    let r = request(url, "GET", "/v1/join", None, None, b"", TIMEOUT)
        .with_context(|| format!("asking {} how to join", url.base()))?;
    if r.status != 200 {
        bail!(
            "{} refused to say how to join: {}",
            url.base(),
            crate::cli::http::refusal(&r)
        );
    }
    Ok(r.json())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The members policies of `info` that list `address` and whose signature
/// verifies for `cluster` (the node that takes them checks their trust).
fn admitting(info: &Value, cluster: &str, address: &str) -> Vec<Value> {
    info["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["spec"]["satellites"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["address"] == address))
        })
        .filter(|p| identity::verify_manifest(p, cluster).is_ok())
        .cloned()
        .collect()
}

/// Gossip addresses from `info["seeds"]`, an unspecified IP replaced by
/// the one `url` reached.
fn seeds_of(info: &Value, url: &NodeUrl) -> Vec<SocketAddr> {
    let reached = url
        .authority
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .map(|a| a.ip());
    info["seeds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str()?.parse::<SocketAddr>().ok())
        .filter_map(|mut a| {
            if a.ip().is_unspecified() {
                a.set_ip(reached?);
            }
            Some(a)
        })
        .collect()
}

/// `deorch node join URL`.
pub fn join(mut args: JoinArgs) -> anyhow::Result<ExitCode> {
    let url = NodeUrl::parse(&args.url)?;
    let info = get_join(&url)?;
    let cluster = info["cluster"]
        .as_str()
        .context("the node did not say its cluster")?
        .to_string();
    let owner = info["owner"].as_str().unwrap_or(&cluster).to_string();
    let same = |a: &str, b: &str| identity::access::same_address(a, b);
    if let Some(want) = &args.expect_owner {
        if !same(want, &owner) && !same(want, &cluster) {
            bail!(
                "{} belongs to cluster {cluster} owned by {owner}, not to {want}: not joining",
                url.base()
            );
        }
    }
    if let Some(mine) = &args.node.cluster_owner {
        if !same(mine, &cluster) {
            bail!(
                "--cluster-owner {mine} is not the cluster of {} ({cluster}): not joining",
                url.base()
            );
        }
    }
    let seeds = seeds_of(&info, &url);
    if seeds.is_empty() {
        bail!(
            "{} does not gossip (no --gossip-listen): a cluster is joined through a member that does",
            url.base()
        );
    }
    args.node.cluster_owner = Some(cluster.clone());
    if args.node.gossip.seeds.is_empty() {
        args.node.gossip.seeds = seeds.clone();
    }
    let config = NodeConfig::resolve(&args.node)?;
    let Some(gossip) = &config.gossip else {
        bail!(
            "joining needs gossip: give --gossip-listen ADDR:PORT (or gossipListen in the config)"
        );
    };
    let network = Address::parse(&cluster).map_or(identity::Network::Mainnet, |a| a.network);
    let key = crate::http::load_or_create_node_key(&config.node_key, network)
        .with_context(|| format!("node key {}", config.node_key.display()))?;
    let me = key.address(AddressType::P2wpkh)?.to_string();
    eprintln!(
        "cluster {cluster}, owner {owner}, through {} ({}); this node: {} ({me})",
        url.base(),
        info["nodeName"].as_str().unwrap_or("?"),
        config.name
    );
    // The accelerator probe (up to 8 s of a guest boot) runs while the
    // owner decides, and leaves its answer in STATE_DIR/accel.json, where
    // the node's start finds it.
    let probe = early_probe(&config);
    let started = Instant::now();
    let approved = wait_for_approval(&url, &cluster, &key, &me, &config.name, info, &args)?;
    if let Some(p) = probe {
        let _ = p.join();
    }
    let generation = approved
        .iter()
        .filter_map(|p| p.pointer("/metadata/generation"))
        .map(|g| g.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let file = config.state_dir.join(APPROVED);
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
    }
    crate::state_file::write_with(
        &file,
        &serde_json::to_vec(&approved)?,
        crate::state_file::Options::private(),
    )
    .with_context(|| format!("writing {}", file.display()))?;
    eprintln!(
        "admitted after {:.1} s (members policy generation {generation})",
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.node.config {
        remember(path, &cluster, &seeds, gossip.listen)?;
    } else {
        let seeds: Vec<String> = seeds.iter().map(ToString::to_string).collect();
        eprintln!(
            "to run it again later: deorch node run --cluster-owner {cluster} --gossip-listen {} --seed {} (or keep them in a --config file)",
            gossip.listen,
            seeds.join(",")
        );
    }
    if args.no_run {
        return Ok(ExitCode::SUCCESS);
    }
    // Settings again: the config file may have gained keys.
    let config = NodeConfig::resolve(&args.node)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(super::run(config))?;
    Ok(ExitCode::SUCCESS)
}

/// Start the node's accelerator probe on a thread of its own, when the
/// node will run VMs under QEMU (its result is cached in the state
/// directory, keyed by what it depends on).
fn early_probe(config: &NodeConfig) -> Option<std::thread::JoinHandle<()>> {
    use super::config::HypervisorKind;
    if !matches!(
        config.hypervisor,
        HypervisorKind::Qemu | HypervisorKind::Libvirt(_)
    ) {
        return None;
    }
    let guest = super::probe_guest(config);
    if !guest.kernel.exists() {
        return None;
    }
    let state_dir = config.state_dir.clone();
    std::fs::create_dir_all(&state_dir).ok()?;
    std::thread::Builder::new()
        .name("accel-probe".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let r = rt.block_on(crate::qemu::probe::probe_cached(&guest, &state_dir));
            eprintln!(
                "accelerator probed while waiting: {} ({})",
                r.accel.as_str(),
                r.reason
            );
        })
        .ok()
}

/// Ask, then poll until a members policy signed for the cluster lists
/// `me`; returns those policies.
fn wait_for_approval(
    url: &NodeUrl,
    cluster: &str,
    key: &PrivateKey,
    me: &str,
    name: &str,
    mut info: Value,
    args: &JoinArgs,
) -> anyhow::Result<Vec<Value>> {
    let deadline = args.approval_timeout.map(|d| Instant::now() + d.0);
    let mut asked: Option<Instant> = None;
    let mut last_note = Instant::now();
    loop {
        let approved = admitting(&info, cluster, me);
        if !approved.is_empty() {
            return Ok(approved);
        }
        // Ask, and again every 10 minutes (a request lives a day).
        if asked.is_none_or(|t| t.elapsed() > Duration::from_secs(600)) {
            let req = JoinRequest::signed(key, cluster, name, me, now_secs());
            let r = request(
                url,
                "POST",
                "/v1/join",
                Some("application/json"),
                None,
                &serde_json::to_vec(&req)?,
                TIMEOUT,
            )?;
            if r.status != 200 {
                bail!(
                    "{} refused the join request: {}",
                    url.base(),
                    crate::cli::http::refusal(&r)
                );
            }
            if asked.is_none() {
                eprintln!(
                    "asked to join as {name} ({me}); the owner approves with\n  deorch node approve {name} --node '{}' --key OWNER.key\nor on the web page (`nodes waiting`). Waiting…",
                    args.url
                );
            }
            asked = Some(Instant::now());
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            bail!("not approved within {}: giving up (the request stays for a day; join again to go on waiting)",
                args.approval_timeout.map(|d| format!("{:?}", d.0)).unwrap_or_default());
        }
        if last_note.elapsed() > Duration::from_secs(60) {
            eprintln!("still waiting for the owner's approval…");
            last_note = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(500));
        info = match get_join(url) {
            Ok(i) => i,
            Err(e) => {
                // A member restarting: keep waiting.
                eprintln!("{e:#}; trying again");
                std::thread::sleep(Duration::from_secs(2));
                info
            }
        };
    }
}

/// Add what joining learnt to the config file `path`, key by key where it
/// is missing (appended, so the file's comments stay); a key that is there
/// with another value is an error, not overwritten.
fn remember(
    path: &Path,
    cluster: &str,
    seeds: &[SocketAddr],
    listen: SocketAddr,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let file: super::config::FileConfig = if text.trim().is_empty() {
        Default::default()
    } else {
        serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
    };
    let mut add = String::new();
    match &file.cluster_owner {
        Some(o) if !identity::access::same_address(o, cluster) => {
            bail!(
                "{}: clusterOwner is {o}, but this node joined {cluster}",
                path.display()
            )
        }
        Some(_) => {}
        None => add.push_str(&format!("clusterOwner: {cluster}\n")),
    }
    if file.seeds.is_empty() {
        let s: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
        add.push_str(&format!("seeds: [{}]\n", s.join(", ")));
    }
    if file.gossip_listen.is_none() {
        add.push_str(&format!("gossipListen: \"{listen}\"\n"));
    }
    if add.is_empty() {
        return Ok(());
    }
    let mut out = text;
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!("# added by `deorch node join`\n{add}"));
    crate::state_file::write(path, out.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "{}: added {}",
        path.display(),
        add.trim().replace('\n', ", ")
    );
    Ok(())
}

/// At node start: admit the members policies `deorch node join` kept
/// (signed by the owner, checked as any signed document), so the node
/// knows it is a member before it first gossips. Done once: the file goes
/// when the store holds them (or newer generations).
pub fn apply_approval(admission: &Admission, state_dir: &Path) {
    let file = state_dir.join(APPROVED);
    let Ok(bytes) = std::fs::read(&file) else {
        return;
    };
    let docs: Vec<Value> = match serde_json::from_slice(&bytes) {
        Ok(d) => d,
        Err(e) => {
            warn!(file = %file.display(), error = %e, "join approval unreadable: ignored");
            return;
        }
    };
    let text: Vec<String> = docs.iter().map(Value::to_string).collect();
    let mut batch = Batch::new(SourceId("join".into()), Trust::Signed);
    batch.parse(&file.display().to_string(), &text.join("\n---\n"));
    let outcome = match admission.admit(batch) {
        Ok(o) => o,
        Err(e) => {
            warn!(file = %file.display(), error = %e, "join approval: store write failed");
            return;
        }
    };
    // Stale or the same: the store already has it (or newer).
    let taken = outcome.committed
        || outcome.verdicts.iter().all(|v| {
            matches!(
                v.verdict,
                crate::admission::Verdict::Stale { .. }
                    | crate::admission::Verdict::Duplicate { .. }
            ) || !v.verdict.is_refusal()
        });
    if taken {
        info!(file = %file.display(), "join approval admitted: this node is a member");
        let _ = std::fs::remove_file(&file);
    } else {
        warn!(file = %file.display(), problems = ?outcome.problems(), "join approval refused");
    }
}

/// `deorch node approve`.
pub fn approve(args: ApproveArgs) -> anyhow::Result<ExitCode> {
    let url = NodeUrl::parse(&args.node)?;
    let info = get_join(&url)?;
    let cluster = info["cluster"]
        .as_str()
        .context("the node did not say its cluster")?;
    let requests: Vec<&Value> = info["requests"].as_array().into_iter().flatten().collect();
    let asked = requests
        .iter()
        .find(|r| r["name"] == args.who.as_str() || r["address"] == args.who.as_str());
    let (name, address) = match (asked, &args.name) {
        (Some(r), name) => (
            name.clone()
                .unwrap_or_else(|| r["name"].as_str().unwrap_or_default().to_string()),
            r["address"].as_str().unwrap_or_default().to_string(),
        ),
        (None, Some(name)) if Address::parse(&args.who).is_ok() => (name.clone(), args.who.clone()),
        (None, _) => {
            let waiting: Vec<String> = requests
                .iter()
                .map(|r| {
                    format!(
                        "{} ({})",
                        r["name"].as_str().unwrap_or("?"),
                        r["address"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            bail!(
                "no join request from {:?} at {} (waiting: {}); to admit an address that did not ask, give it with --name",
                args.who,
                url.base(),
                if waiting.is_empty() { "none".into() } else { waiting.join(", ") }
            );
        }
    };
    let members: Vec<&Value> = info["members"].as_array().into_iter().flatten().collect();
    let policy = match &args.policy {
        Some(p) => members
            .iter()
            .find(|m| m["metadata"]["name"] == p.as_str())
            .with_context(|| format!("no members policy named {p}"))?,
        None if members.len() == 1 => &members[0],
        None if members.is_empty() => bail!(
            "no AccessPolicy of cluster {cluster} admits satellites yet: sign one listing the first nodes (docs/SIGNING.md, \"Nodes\")"
        ),
        None => bail!(
            "several AccessPolicies admit satellites ({}): say which with --policy",
            members
                .iter()
                .filter_map(|m| m["metadata"]["name"].as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let next = admit_in(policy, &name, &address).map_err(|e| anyhow::anyhow!(e))?;
    let key = PrivateKey::load(&args.key)
        .with_context(|| format!("reading key {}", args.key.display()))?;
    let signed = identity::sign_manifest(&next, cluster, &key, args.kind)?;
    let r = request(
        &url,
        "POST",
        "/v1/manifests",
        Some("application/yaml"),
        None,
        signed.to_string().as_bytes(),
        TIMEOUT,
    )?;
    if r.status != 200 {
        bail!(
            "{} refused the new members policy: {}",
            url.base(),
            crate::cli::http::refusal(&r)
        );
    }
    println!(
        "approved {name} ({address}): AccessPolicy/{} generation {}",
        next["metadata"]["name"].as_str().unwrap_or("?"),
        next["metadata"]["generation"]
    );
    Ok(ExitCode::SUCCESS)
}

/// `deorch node requests`.
pub fn requests(args: RequestsArgs) -> anyhow::Result<ExitCode> {
    let url = NodeUrl::parse(&args.node)?;
    let info = get_join(&url)?;
    let requests = info["requests"].as_array().cloned().unwrap_or_default();
    if args.output != crate::cli::OutputFormat::Table {
        crate::cli::output::value(&mut std::io::stdout().lock(), &json!(requests), args.output)?;
        return Ok(ExitCode::SUCCESS);
    }
    if requests.is_empty() {
        println!("no join requests waiting");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<20} {:<44} {:<16} ASKED", "NAME", "ADDRESS", "FROM");
    let now = now_secs();
    for r in &requests {
        println!(
            "{:<20} {:<44} {:<16} {} s ago",
            r["name"].as_str().unwrap_or("?"),
            r["address"].as_str().unwrap_or("?"),
            r["from"].as_str().unwrap_or("?"),
            now.saturating_sub(r["time"].as_u64().unwrap_or(now))
        );
    }
    Ok(ExitCode::SUCCESS)
}
