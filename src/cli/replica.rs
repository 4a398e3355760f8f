//! `deorch replica create|list|revert|clone|delete`: verbs over Replica
//! objects and the VM they capture, through the node's local API. Each one
//! is an ordinary apply/delete of desired state (so it is recorded,
//! survives restarts and shows in `get`), followed by waiting for the node
//! to report the result.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};

use super::{unexpected, ClientArgs, CALL_TIMEOUT};
use crate::api::client;
use crate::api::{Request, Response};
use crate::store::Record;

/// `deorch replica ...`.
#[derive(Debug, Subcommand)]
pub enum ReplicaCommand {
    /// Capture all disks of a VM now (a writable copy-on-write replica).
    Create {
        /// The VM.
        vm: String,
        /// Replica name; default `VM-YYYYMMDD-HHMMSS`.
        #[arg(long)]
        name: Option<String>,
        /// Namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Client flags.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List replicas (of one VM when given).
    List {
        /// Only the replicas of this VM.
        vm: Option<String>,
        /// Namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Output format (`json`, `yaml`: the Replica objects).
        #[arg(short, long, value_enum, default_value_t = super::OutputFormat::Table)]
        output: super::OutputFormat,
        /// Client flags.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revert the replica's VM to it: the VM stops, its disks become
    /// copies of the replica's, and it starts again if it was meant to run.
    /// The present is kept first: a replica `VM-before-revert-TIME` of the
    /// disks as they are, so a revert can itself be reverted.
    Revert {
        /// The replica.
        replica: String,
        /// Do not keep the present as a replica first.
        #[arg(long)]
        discard_present: bool,
        /// Namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Client flags.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make a new VM from a replica (the source VM's spec, the replica's disks).
    Clone {
        /// The replica.
        replica: String,
        /// Name of the new VM.
        #[arg(long)]
        to: String,
        /// Namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Client flags.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a replica (VMs cloned from it keep working).
    Delete {
        /// The replica.
        replica: String,
        /// Namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Destroy its volumes at once instead of retaining them.
        #[arg(long)]
        purge: bool,
        /// Client flags.
        #[command(flatten)]
        client: ClientArgs,
    },
}

const WAIT: Duration = Duration::from_secs(120);

pub(super) fn get(
    client: &ClientArgs,
    kind: &str,
    ns: &str,
    name: Option<&str>,
) -> anyhow::Result<Vec<Record>> {
    match client::call(
        &client.socket,
        &Request::Get {
            kind: Some(kind.into()),
            namespace: Some(ns.into()),
            name: name.map(str::to_string),
        },
        CALL_TIMEOUT,
    )? {
        Response::Objects { records } => Ok(records),
        Response::Error { code, message } => Err(super::exit::NodeError { code, message }.into()),
        other => unexpected(other).map(|_| Vec::new()),
    }
}

pub(super) fn get_one(
    client: &ClientArgs,
    kind: &str,
    ns: &str,
    name: &str,
) -> anyhow::Result<Record> {
    get(client, kind, ns, Some(name))?
        .into_iter()
        .find(|r| !r.deleted)
        .with_context(|| format!("{kind} {ns}/{name} not found"))
}

/// Apply one object; returns its generation.
pub(super) fn apply(client: &ClientArgs, object: &Value) -> anyhow::Result<i64> {
    let yaml = serde_saphyr::to_string(object).context("rendering the object")?;
    match client::call(
        &client.socket,
        &Request::Apply {
            filename: "<replica command>".into(),
            yaml,
            dry_run: false,
        },
        CALL_TIMEOUT,
    )? {
        Response::Applied { objects } => objects
            .first()
            .map(|a| a.generation)
            .context("nothing applied"),
        Response::Invalid { diagnostics } => {
            bail!(
                "rejected: {}",
                diagnostics
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }
        other => unexpected(other).map(|_| 0),
    }
}

/// The VM a replica captured: its name and its object as applied.
fn replica_vm(client: &ClientArgs, ns: &str, replica: &str) -> anyhow::Result<(String, Value)> {
    let rep = get_one(client, "Replica", ns, replica)?;
    let vm = rep.object["spec"]["virtualMachine"]["name"]
        .as_str()
        .context("replica names no VM")?
        .to_string();
    let object = crate::command::plan::desired(&get_one(client, "VirtualMachine", ns, &vm)?);
    Ok((vm, object))
}

/// Poll `kind ns/name` until `done(status)` says yes, or fail with the
/// object's last `Ready`/`Reverted` condition.
fn wait(
    client: &ClientArgs,
    kind: &str,
    ns: &str,
    name: &str,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + WAIT;
    let mut pause = Duration::from_millis(5);
    // On a terminal only (indicatif draws nothing into a pipe or file).
    let bar = super::spinner();
    loop {
        let r = get_one(client, kind, ns, name)?;
        let status = r.status.clone().unwrap_or(Value::Null);
        if done(&status) {
            bar.finish_and_clear();
            return Ok(status);
        }
        bar.set_message(format!(
            "{kind} {ns}/{name}: {}",
            status["phase"].as_str().unwrap_or("asked")
        ));
        bar.tick();
        if Instant::now() > deadline {
            bar.abandon();
            let why = super::vm::not_ready(&status);
            bail!("{kind} {ns}/{name} not done after {WAIT:?}: {why}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

pub(super) use crate::command::plan::default_name;

/// Declare replica `name` of `vm` and wait until it is Ready; its status.
fn take_replica(
    client: &ClientArgs,
    namespace: &str,
    vm: &str,
    name: &str,
) -> anyhow::Result<Value> {
    apply(
        client,
        &json!({
            "apiVersion": crate::model::API_VERSION,
            "kind": "Replica",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"virtualMachine": {"name": vm}},
        }),
    )?;
    wait(client, "Replica", namespace, name, |s| {
        s["phase"] == "Ready"
    })
}

/// Run a `replica` verb.
pub fn run(command: ReplicaCommand) -> anyhow::Result<ExitCode> {
    match command {
        ReplicaCommand::Create {
            vm,
            name,
            namespace,
            client,
        } => {
            get_one(&client, "VirtualMachine", &namespace, &vm)?;
            let name = name.unwrap_or_else(|| default_name(&vm));
            let started = Instant::now();
            let st = take_replica(&client, &namespace, &vm, &name)?;
            println!(
                "replica {namespace}/{name} of {vm}: {} disk(s) captured on {} in {:.0} ms",
                st["volumes"].as_object().map(|v| v.len()).unwrap_or(0),
                st["node"].as_str().unwrap_or("?"),
                started.elapsed().as_secs_f64() * 1e3
            );
            Ok(ExitCode::SUCCESS)
        }
        ReplicaCommand::List {
            vm,
            namespace,
            output,
            client,
        } if output != super::OutputFormat::Table => {
            let of =
                |r: &Record| r.object["spec"]["virtualMachine"]["name"].as_str() == vm.as_deref();
            let list: Vec<Record> = get(&client, "Replica", &namespace, None)?
                .into_iter()
                .filter(|r| !r.deleted && (vm.is_none() || of(r)))
                .collect();
            let stdout = std::io::stdout();
            super::output::records(&mut stdout.lock(), &list, output, false, false)?;
            Ok(ExitCode::SUCCESS)
        }
        ReplicaCommand::List {
            vm,
            namespace,
            client,
            ..
        } => {
            println!(
                "{:<32} {:<20} {:<8} {:<12} CREATED",
                "NAME", "VM", "PHASE", "NODE"
            );
            for r in get(&client, "Replica", &namespace, None)?
                .iter()
                .filter(|r| !r.deleted)
            {
                let of = r.object["spec"]["virtualMachine"]["name"]
                    .as_str()
                    .unwrap_or("");
                if vm.as_deref().is_some_and(|v| v != of) {
                    continue;
                }
                let st = r.status.clone().unwrap_or(Value::Null);
                println!(
                    "{:<32} {:<20} {:<8} {:<12} {}",
                    r.key.name,
                    of,
                    st["phase"].as_str().unwrap_or("-"),
                    st["node"].as_str().unwrap_or("-"),
                    st["createdAt"].as_str().unwrap_or("-")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ReplicaCommand::Revert {
            replica,
            discard_present,
            namespace,
            client,
        } => {
            let (vm, mut object) = replica_vm(&client, &namespace, &replica)?;
            if !discard_present {
                let kept = format!("{vm}-before-revert-{}", &default_name(&vm)[vm.len() + 1..]);
                take_replica(&client, &namespace, &vm, &kept)?;
                println!("the present is kept as replica {namespace}/{kept}");
            }
            object["metadata"]["annotations"][crate::model::REVERT_ANNOTATION] = json!(replica);
            let generation = apply(&client, &object)?;
            let token = format!("{replica}@{generation}");
            wait(&client, "VirtualMachine", &namespace, &vm, |s| {
                s["lastRevert"].as_str() == Some(token.as_str())
            })?;
            println!("{namespace}/{vm} reverted to replica {replica}");
            Ok(ExitCode::SUCCESS)
        }
        ReplicaCommand::Clone {
            replica,
            to,
            namespace,
            client,
        } => {
            let (vm, mut object) = replica_vm(&client, &namespace, &replica)?;
            object["metadata"] = json!({"name": to, "namespace": namespace});
            if let Some(disks) = object["spec"]["disks"].as_array_mut() {
                for d in disks {
                    let disk = d["name"].clone();
                    d["source"] = json!({"replica": {"name": replica, "disk": disk}});
                }
            }
            apply(&client, &object)?;
            println!("virtualmachine {namespace}/{to} created from replica {replica} of {vm}");
            Ok(ExitCode::SUCCESS)
        }
        ReplicaCommand::Delete {
            replica,
            namespace,
            purge,
            client,
        } => match client::call(
            &client.socket,
            &Request::Delete {
                kind: "Replica".into(),
                namespace: Some(namespace),
                name: replica,
                purge,
            },
            CALL_TIMEOUT,
        )? {
            Response::Deleted { key, generation } => {
                println!("{key} deleted (generation {generation})");
                Ok(ExitCode::SUCCESS)
            }
            Response::Refused { verdicts } => {
                for a in verdicts.iter().filter(|a| a.verdict.is_refusal()) {
                    eprintln!("error: {}: {}", a.key, a.verdict.reason());
                }
                Ok(ExitCode::FAILURE)
            }
            Response::Error { message, .. } => {
                eprintln!("error: {message}");
                Ok(ExitCode::FAILURE)
            }
            other => unexpected(other),
        },
    }
}
