//! `deorch relocate VM`: ask for a VM to move to another satellite, by
//! writing a `Relocation` through the node's local API (an ordinary
//! apply: recorded, gossiped, shown by `deorch get relocations`).
//!
//! What happens then (docs/ALGORITHMS.md, "Relocation"): with gossip on,
//! the nodes elect the receiver (the target's node or address, or its
//! selector and performance, the sender excluded), and the node that runs
//! the VM moves it there live (qemu driver). `--wait` follows the
//! Relocation's status on the node asked, with a progress bar.

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use serde_json::{json, Value};

use super::replica::{apply, default_name, get_one};
use super::ClientArgs;

/// `deorch relocate ...`.
#[derive(Debug, Args)]
pub struct RelocateArgs {
    /// The VM to move.
    pub vm: String,
    /// To this satellite: its name, or its IP address.
    #[arg(long)]
    pub to: Option<String>,
    /// To a satellite whose tags match: FAMILY.KEY=VALUE, FAMILY one of
    /// microcosm, macrocosm, intercosm (repeatable).
    #[arg(long = "select", value_name = "FAMILY.KEY=VALUE")]
    pub select: Vec<String>,
    /// To a satellite of this performance class.
    #[arg(long, value_parser = ["high", "low"])]
    pub performance: Option<String>,
    /// Stop, copy, start instead of moving it live.
    #[arg(long)]
    pub offline: bool,
    /// Wait until it succeeds or fails, with a progress bar (the status
    /// as the node asked sees it: ask the node that runs the VM, or the
    /// receiver, to see the copy's progress).
    #[arg(long)]
    pub wait: bool,
    /// With `--wait`: give up waiting after this long (the relocation
    /// goes on).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
    /// Name of the Relocation; default `VM-YYYYMMDD-HHMMSS`.
    #[arg(long)]
    pub name: Option<String>,
    /// Namespace.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Client flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The Relocation object `args` ask for.
pub fn relocation(args: &RelocateArgs, name: &str) -> anyhow::Result<Value> {
    let mut target = json!({});
    if let Some(to) = &args.to {
        if to.parse::<std::net::IpAddr>().is_ok() {
            target["address"] = json!(to);
        } else {
            target["node"] = json!(to);
        }
        if !args.select.is_empty() || args.performance.is_some() {
            bail!("--to names the satellite: it takes no --select or --performance");
        }
    }
    for s in &args.select {
        let Some((path, value)) = s.split_once('=') else {
            bail!("--select {s}: expected FAMILY.KEY=VALUE");
        };
        let Some((family, key)) = path.split_once('.') else {
            bail!("--select {s}: expected FAMILY.KEY=VALUE");
        };
        if !["microcosm", "macrocosm", "intercosm"].contains(&family) {
            bail!("--select {s}: FAMILY is microcosm, macrocosm or intercosm, not {family}");
        }
        target["selector"][family]["matchLabels"][key] = json!(value);
    }
    if let Some(p) = &args.performance {
        target["performance"] = json!(p);
    }
    let mut spec = json!({"virtualMachine": {"name": args.vm}});
    if target.as_object().is_some_and(|o| !o.is_empty()) {
        spec["target"] = target;
    }
    if args.offline {
        spec["mode"] = json!("Offline");
    }
    Ok(json!({
        "apiVersion": crate::model::API_VERSION,
        "kind": "Relocation",
        "metadata": {"name": name, "namespace": args.namespace},
        "spec": spec,
    }))
}

/// Run `deorch relocate`.
pub fn run(args: RelocateArgs) -> anyhow::Result<ExitCode> {
    get_one(&args.client, "VirtualMachine", &args.namespace, &args.vm)?;
    let name = args.name.clone().unwrap_or_else(|| default_name(&args.vm));
    let object = relocation(&args, &name)?;
    let generation = apply(&args.client, &object)?;
    println!(
        "relocation/{name} created (generation {generation}) for virtualmachine/{}",
        args.vm
    );
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    wait(
        &args.client,
        &args.namespace,
        &name,
        generation,
        args.timeout,
    )
}

/// `deorch node drain NAME`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The satellite to empty.
    pub node: String,
    /// Wait until every VM has moved (each Relocation's status as the
    /// node asked sees it: run it on the node being drained).
    #[arg(long)]
    pub wait: bool,
    /// With `--wait`: give up waiting on one relocation after this long.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
    /// Client flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Run `deorch node drain`: one automatic Relocation per VM the node
/// runs, so the radar moves each to a node that satisfies its own
/// placement (the drained node excluded as their sender).
pub fn drain(args: DrainArgs) -> anyhow::Result<ExitCode> {
    let records = match crate::api::client::call(
        &args.client.socket,
        &crate::api::Request::Get {
            kind: Some("VirtualMachine".into()),
            namespace: None,
            name: None,
        },
        super::CALL_TIMEOUT,
    )? {
        crate::api::Response::Objects { records } => records,
        crate::api::Response::Error { message, .. } => bail!("{message}"),
        other => bail!("unexpected answer: {other:?}"),
    };
    let on_node: Vec<_> = records
        .iter()
        .filter(|r| !r.deleted)
        .filter(|r| {
            r.status.as_ref().is_some_and(|s| {
                s["node"] == args.node.as_str()
                    && (s["phase"] == "Running" || s["phase"] == "Paused")
            })
        })
        .collect();
    if on_node.is_empty() {
        println!("node {} runs no VM", args.node);
        return Ok(ExitCode::SUCCESS);
    }
    let mut made = Vec::new();
    for r in on_node {
        let vm = &r.key.name;
        let ns = &r.key.namespace;
        let name = default_name(&format!("drain-{vm}"));
        let object = json!({
            "apiVersion": crate::model::API_VERSION,
            "kind": "Relocation",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"virtualMachine": {"name": vm}},
        });
        let generation = apply(&args.client, &object)?;
        println!("relocation/{name} created for virtualmachine/{vm} (namespace {ns})");
        made.push((ns.clone(), name, generation));
    }
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let mut code = ExitCode::SUCCESS;
    for (ns, name, generation) in made {
        if wait(&args.client, &ns, &name, generation, args.timeout)? != ExitCode::SUCCESS {
            code = ExitCode::FAILURE;
        }
    }
    Ok(code)
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    s.parse::<crate::model::Duration>()
        .map(|d| d.0)
        .map_err(|e| e.to_string())
}

/// Follow the Relocation's status until it succeeds or fails.
fn wait(
    client: &ClientArgs,
    namespace: &str,
    name: &str,
    generation: i64,
    timeout: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {prefix:>9} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {wide_msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    loop {
        let rec = get_one(client, "Relocation", namespace, name)?;
        let st: crate::model::RelocationStatus = rec
            .status
            .clone()
            .and_then(|s| serde_json::from_value(s).ok())
            .unwrap_or_default();
        let fresh = st.observed_generation.is_some_and(|g| g >= generation);
        let phase = st.phase.filter(|_| fresh).unwrap_or_default();
        if let Some(p) = &st.progress {
            bar.set_length(p.disk_total + p.ram_sent + p.ram_remaining);
            bar.set_position(p.disk_done + p.ram_sent);
        }
        bar.set_prefix(format!("{phase:?}"));
        bar.set_message(st.message.clone().unwrap_or_default());
        bar.tick();
        use crate::model::phase::RelocationPhase::*;
        let stuck = st
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.reason == "NoGossip");
        if fresh && stuck {
            bar.finish_and_clear();
            eprintln!(
                "relocation/{name}: {}",
                st.message
                    .as_deref()
                    .unwrap_or("this node runs without gossip")
            );
            return Ok(ExitCode::FAILURE);
        }
        match phase {
            Succeeded => {
                bar.finish_and_clear();
                println!(
                    "relocation/{name} succeeded: {} -> {}{}{}",
                    st.source.as_deref().unwrap_or("?"),
                    st.destination.as_deref().unwrap_or("?"),
                    st.downtime_ms
                        .map(|d| format!(", guest paused {d} ms"))
                        .unwrap_or_default(),
                    st.base
                        .as_deref()
                        .map(|p| format!(", disks sent as the changes since FASTR point {p}"))
                        .unwrap_or_default()
                );
                return Ok(ExitCode::SUCCESS);
            }
            Failed => {
                bar.finish_and_clear();
                eprintln!(
                    "relocation/{name} failed: {}",
                    st.message.as_deref().unwrap_or("(no reason given)")
                );
                return Ok(ExitCode::FAILURE);
            }
            _ => {}
        }
        if started.elapsed() > timeout {
            bar.abandon();
            eprintln!(
                "relocation/{name}: still {phase:?} after {timeout:?}{}; it goes on (deorch get relocation {name})",
                st.message
                    .as_deref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            );
            return Ok(ExitCode::FAILURE);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RelocateArgs,
    }

    fn object(argv: &[&str]) -> anyhow::Result<Value> {
        let mut full = vec!["deorch", "web"];
        full.extend_from_slice(argv);
        let cli = Cli::try_parse_from(full).unwrap();
        relocation(&cli.args, "r1")
    }

    #[test]
    fn flags_become_the_target_and_the_object_validates() {
        let o = object(&["--to", "n2"]).unwrap();
        assert_eq!(o["spec"]["target"], json!({"node": "n2"}));
        let o = object(&["--to", "10.0.0.7", "--offline"]).unwrap();
        assert_eq!(o["spec"]["target"], json!({"address": "10.0.0.7"}));
        assert_eq!(o["spec"]["mode"], "Offline");
        let o = object(&[
            "--select",
            "macrocosm.region=eu",
            "--select",
            "microcosm.rack=r2",
            "--performance",
            "high",
        ])
        .unwrap();
        assert_eq!(
            o["spec"]["target"],
            json!({"selector": {"macrocosm": {"matchLabels": {"region": "eu"}},
                                "microcosm": {"matchLabels": {"rack": "r2"}}},
                   "performance": "high"})
        );
        assert!(object(&[]).unwrap()["spec"].get("target").is_none());
        // Each object passes the one manifest parser.
        for argv in [
            &["--to", "n2"][..],
            &["--select", "intercosm.team=a", "--performance", "low"],
            &[],
        ] {
            let yaml = serde_saphyr::to_string(&object(argv).unwrap()).unwrap();
            let parsed = crate::manifest::parse_str(std::path::Path::new("r.yaml"), &yaml);
            assert!(
                parsed.diagnostics.is_empty(),
                "{argv:?}: {:?}",
                parsed.diagnostics
            );
            assert_eq!(parsed.documents.len(), 1);
        }
        let e = object(&["--select", "galaxy.x=y"]).unwrap_err().to_string();
        assert!(e.contains("microcosm, macrocosm or intercosm"), "{e}");
        let e = object(&["--to", "n2", "--performance", "high"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("takes no --select"), "{e}");
    }
}
