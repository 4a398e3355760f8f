//! `deorch logs NAME [-f] [--tail N]`: a VM's serial console, as QEMU
//! wrote it on the node that runs the VM, read through that node's local
//! API (so it works wherever the socket is, without knowing the state
//! directory). A VM's restart begins a new log; `-f` follows into it.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use super::{exit, ClientArgs};
use crate::api::client;
use crate::api::{Request, Response};

/// `deorch logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The VM.
    pub name: String,
    /// Namespace.
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Go on printing what the guest prints (until interrupted).
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// Client flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Run `deorch logs`.
pub fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let request = Request::Logs {
        namespace: args.namespace,
        name: args.name,
        tail: args.tail,
        follow: args.follow,
    };
    // A followed log may stay silent for hours; a plain read answers at once.
    let timeout = (!args.follow).then_some(Duration::from_secs(60));
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut code = ExitCode::SUCCESS;
    let mut failed: Option<anyhow::Error> = None;
    client::stream(&args.client.socket, &request, timeout, |response| {
        match response {
            Response::Log { text } => {
                match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                    Ok(()) => return true,
                    // The reader went away (`deorch logs vm | head`): done.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                    Err(e) => failed = Some(anyhow::anyhow!("writing the log: {e}")),
                }
            }
            Response::Error { code: c, message } => code = exit::node_error(&c, &message),
            other => {
                failed = Some(anyhow::anyhow!(
                    "unexpected answer from the node: {other:?}"
                ))
            }
        }
        false
    })?;
    match failed {
        Some(e) => Err(e),
        None => Ok(code),
    }
}
