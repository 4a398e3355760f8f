//! `deorch vm start|stop|restart|pause|resume NAME`: a VM's power verbs.
//!
//! Each verb but `restart --hard` is a change of desired state, the VM's
//! `spec.powerState` (`Running`, `Stopped`, `Paused`), applied through the
//! local API like `deorch apply`: admission records it (a new generation,
//! in the history), it survives node restarts and relocations, and the
//! node that runs the VM carries it out (stop: ACPI power button, forced
//! after `spec.stopTimeout`; pause/resume: QMP `stop`/`cont`). The verb
//! then waits until the VM's status reports the phase at that generation.
//! A paused VM stays paused until resumed, across node restarts: its
//! phase is `Paused`, in `get` and on the web page.
//!
//! `start` of a VM that is down by itself (the guest powered off, or QEMU
//! crashed, and the restart policy keeps it down) first records a stop,
//! then asks for it to run: the node only starts a VM whose stop was
//! asked. `restart` is `stop` then `start`; `restart --hard` resets the
//! VM at once (QMP `system_reset`) on the node that runs it, an action
//! that changes no desired state, like a console ticket.
//!
//! A VM declared by a manifest file is changed only through its file: the
//! verbs are refused then, naming the file.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};

use super::exit::NodeError;
use super::{output, unexpected, ClientArgs, OutputFormat, CALL_TIMEOUT};
use crate::api::client;
use crate::api::{Request, Response};
use crate::store::Record;

/// `deorch vm ...`.
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Start a VM (`spec.powerState: Running`); a paused VM is resumed.
    Start(PowerArgs),
    /// Stop a VM (`spec.powerState: Stopped`): ACPI power button, forced
    /// after the VM's `spec.stopTimeout`.
    Stop(PowerArgs),
    /// Stop then start a VM, waiting for each; `--hard`: reset it at once.
    Restart {
        /// The VM and how to wait.
        #[command(flatten)]
        args: PowerArgs,
        /// Reset the VM now, as its reset button would (the guest reboots
        /// without shutting down; QEMU stays): asked of the node that runs
        /// it, nothing recorded.
        #[arg(long)]
        hard: bool,
    },
    /// Pause a VM's CPUs (`spec.powerState: Paused`): it stays paused,
    /// across node restarts too, until `resume`.
    Pause(PowerArgs),
    /// Resume a paused VM (`spec.powerState: Running`).
    Resume(PowerArgs),
}

/// The VM a power verb acts on, and how to wait.
#[derive(Debug, Clone, clap::Args)]
pub struct PowerArgs {
    /// The VM.
    pub name: String,
    /// Namespace.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Return once the change is recorded; do not wait for the node to
    /// carry it out.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting after this long (exit 1; the change stays asked).
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Output format of the VM after the change (`table`: one line).
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Client flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<crate::model::Duration>()
        .map(|d| d.0)
        .map_err(|e| e.to_string())
}

/// Run a `vm` verb.
pub fn run(command: VmCommand) -> anyhow::Result<ExitCode> {
    let (args, verb) = match command {
        VmCommand::Start(a) => (a, Verb::Start),
        VmCommand::Stop(a) => (a, Verb::Stop),
        VmCommand::Pause(a) => (a, Verb::Pause),
        VmCommand::Resume(a) => (a, Verb::Resume),
        VmCommand::Restart { args, hard: true } => return hard_reset(&args),
        VmCommand::Restart { args, hard: false } => (args, Verb::Restart),
    };
    let vm = fetch(&args)?;
    let power = power_of(&vm);
    let phase = phase_of(&vm);
    let steps: Vec<&str> = match verb {
        Verb::Stop => vec!["Stopped"],
        Verb::Pause if power == "Stopped" => bail!(
            "{} is stopped (spec.powerState Stopped): nothing to pause; `deorch vm start` it first",
            shown(&args)
        ),
        Verb::Pause => vec!["Paused"],
        Verb::Resume if power != "Paused" && phase.as_deref() != Some("Paused") => bail!(
            "{} is not paused (phase {}): `deorch vm start` starts a stopped VM",
            shown(&args),
            phase.as_deref().unwrap_or("unknown")
        ),
        Verb::Resume => vec!["Running"],
        // Asked to run but down by itself: record a stop first.
        Verb::Start if power == "Running" && down(phase.as_deref()) => vec!["Stopped", "Running"],
        Verb::Start => vec!["Running"],
        Verb::Restart if power == "Stopped" => vec!["Running"],
        Verb::Restart => vec!["Stopped", "Running"],
    };
    let mut last = vm;
    for (i, power) in steps.iter().enumerate() {
        let generation = set_power(&args, &last, power)?;
        if args.no_wait && i + 1 == steps.len() {
            if args.output == OutputFormat::Table {
                println!(
                    "{}: powerState {power} asked (generation {generation})",
                    shown(&args)
                );
                return Ok(ExitCode::SUCCESS);
            }
            return print(&args, &fetch(&args)?);
        }
        match wait(&args, generation, power)? {
            Ok(r) => last = r,
            Err(code) => return Ok(code),
        }
    }
    if args.output == OutputFormat::Table {
        let st = last.status.clone().unwrap_or(Value::Null);
        println!(
            "{}: {}{} (generation {})",
            shown(&args),
            st["phase"].as_str().unwrap_or("?"),
            st["node"]
                .as_str()
                .map(|n| format!(" on {n}"))
                .unwrap_or_default(),
            last.generation
        );
        return Ok(ExitCode::SUCCESS);
    }
    print(&args, &last)
}

#[derive(Debug, Clone, Copy)]
enum Verb {
    Start,
    Stop,
    Restart,
    Pause,
    Resume,
}

fn shown(args: &PowerArgs) -> String {
    format!("vm {}/{}", args.namespace, args.name)
}

fn power_of(r: &Record) -> String {
    r.object["spec"]["powerState"]
        .as_str()
        .unwrap_or("Running")
        .to_string()
}

fn phase_of(r: &Record) -> Option<String> {
    r.status.as_ref()?["phase"].as_str().map(str::to_string)
}

/// Not running although asked to: the guest powered off or QEMU crashed
/// and the restart policy keeps it down.
fn down(phase: Option<&str>) -> bool {
    matches!(phase, Some("Stopped" | "Failed"))
}

fn print(args: &PowerArgs, r: &Record) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    output::records(
        &mut stdout.lock(),
        std::slice::from_ref(r),
        args.output,
        false,
        true,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The VM's record; a node's "not found" keeps its code (exit 3).
fn fetch(args: &PowerArgs) -> anyhow::Result<Record> {
    match client::call(
        &args.client.socket,
        &Request::Get {
            kind: Some("VirtualMachine".into()),
            namespace: Some(args.namespace.clone()),
            name: Some(args.name.clone()),
        },
        CALL_TIMEOUT,
    )? {
        Response::Objects { records } => records
            .into_iter()
            .find(|r| !r.deleted && r.key.namespace == args.namespace)
            .ok_or_else(|| {
                NodeError {
                    code: "NotFound".into(),
                    message: format!("no VirtualMachine {}/{}", args.namespace, args.name),
                }
                .into()
            }),
        Response::Error { code, message } => {
            let message = if code == "NotFound" {
                format!("no VirtualMachine {}/{}", args.namespace, args.name)
            } else {
                message
            };
            Err(NodeError { code, message }.into())
        }
        other => unexpected(other).map(|_| unreachable!("unexpected() always fails")),
    }
}

/// Apply `vm` with `spec.powerState: power`; its generation after (the
/// same when the VM already had that power state).
fn set_power(args: &PowerArgs, vm: &Record, power: &str) -> anyhow::Result<i64> {
    if power_of(vm) == power {
        return Ok(vm.generation);
    }
    let mut object = crate::command::plan::desired(vm);
    object["spec"]["powerState"] = json!(power);
    // A signed document changed here is no longer what its signer signed:
    // it is applied as this node's root (the socket), unsigned.
    if let Some(a) = object
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.remove(crate::identity::signed::SIGNATURE_ANNOTATION);
        a.remove(crate::identity::signed::SIGNER_ANNOTATION);
    }
    let yaml = serde_saphyr::to_string(&object).context("rendering the VM")?;
    match client::call(
        &args.client.socket,
        &Request::Apply {
            filename: format!("<deorch vm: powerState {power}>"),
            yaml,
            dry_run: false,
        },
        CALL_TIMEOUT,
    )? {
        Response::Applied { objects } => objects
            .first()
            .map(|a| a.generation)
            .context("the node applied nothing"),
        Response::Refused { verdicts } => bail!(
            "{}: refused: {}",
            shown(args),
            verdicts
                .iter()
                .filter(|a| a.verdict.is_refusal())
                .map(|a| a.verdict.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ),
        Response::Invalid { diagnostics } => bail!(
            "{}: rejected: {}",
            shown(args),
            diagnostics
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ),
        other => unexpected(other).map(|_| 0),
    }
}

/// Poll the VM until its status, at `generation` or later, reports the
/// phase of `power`. `Err(code)`: it failed or the wait gave up (said).
fn wait(
    args: &PowerArgs,
    generation: i64,
    power: &str,
) -> anyhow::Result<Result<Record, ExitCode>> {
    let bar = super::spinner();
    let started = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        let r = fetch(args)?;
        let st = r.status.clone().unwrap_or(Value::Null);
        let fresh = st["observedGeneration"]
            .as_i64()
            .is_some_and(|g| g >= generation);
        let phase = st["phase"].as_str().unwrap_or("-");
        bar.set_message(format!("{}: {phase}, waiting for {power}", shown(args)));
        bar.tick();
        if fresh && phase == power {
            bar.finish_and_clear();
            return Ok(Ok(r));
        }
        let why = not_ready(&st);
        if fresh && phase == "Failed" {
            bar.finish_and_clear();
            eprintln!("error: {}: Failed: {why}", shown(args));
            return Ok(Err(ExitCode::from(super::exit::FAILED)));
        }
        if started.elapsed() > args.timeout {
            bar.abandon();
            eprintln!(
                "error: {}: still {phase} after {:?}, not {power}{}; the change stays asked (deorch describe vm {} -n {})",
                shown(args),
                args.timeout,
                if why.is_empty() { String::new() } else { format!(" ({why})") },
                args.name,
                args.namespace,
            );
            return Ok(Err(ExitCode::from(super::exit::FAILED)));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// The reasons of the status' false conditions.
pub(super) fn not_ready(status: &Value) -> String {
    status["conditions"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter(|c| c["status"] == "False")
                .map(|c| {
                    format!(
                        "{}: {}",
                        c["reason"].as_str().unwrap_or(""),
                        c["message"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

/// `deorch vm restart --hard`.
fn hard_reset(args: &PowerArgs) -> anyhow::Result<ExitCode> {
    fetch(args)?;
    match client::call(
        &args.client.socket,
        &Request::VmReset {
            namespace: Some(args.namespace.clone()),
            name: args.name.clone(),
        },
        CALL_TIMEOUT,
    )? {
        Response::VolumeDone { message } => {
            if args.output == OutputFormat::Table {
                println!("{message}");
                Ok(ExitCode::SUCCESS)
            } else {
                print(args, &fetch(args)?)
            }
        }
        Response::Error { code, message } => Ok(super::exit::node_error(&code, &message)),
        other => unexpected(other),
    }
}
