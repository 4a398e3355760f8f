//! `deorch relocate VM`: ask for a VM to move to another satellite, by
//! writing a `Relocation` through the node's local API (an ordinary
//! apply: recorded, gossiped, shown by `deorch get relocations`).
//!
//! What happens then (docs/ALGORITHMS.md, "Relocation"): with gossip on,
//! the nodes elect the receiver (the target's node or address, or its
//! selector and performance, the sender excluded); moving the VM is not
//! built yet, so the command says so and the Relocation stays `Pending`.

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
    eprintln!(
        "note: moving VMs is not built yet: with gossip on, the nodes elect a receiver (it logs it); the Relocation stays Pending"
    );
    Ok(ExitCode::SUCCESS)
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
