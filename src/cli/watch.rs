//! `deorch get -w [KIND [NAME]]`: the objects as they are, then every
//! change, as the node's store sees them (the local API's `Watch` stream:
//! no polling, one connection). Each change is one table row, or with
//! `-o json` one JSON document per line, with `-o yaml` one YAML document:
//! `{type: ADDED|MODIFIED|DELETED, object}`. It runs until interrupted,
//! or until the reader of its output goes away.

use std::process::ExitCode;

use super::{exit, output, ClientArgs, OutputFormat};
use crate::api::client;
use crate::api::{Request, Response};

/// Run `deorch get -w`.
pub fn run(
    kind: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
    format: OutputFormat,
    client_args: &ClientArgs,
) -> anyhow::Result<ExitCode> {
    let show_kind = kind.is_none();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut code = ExitCode::SUCCESS;
    let mut failed: Option<anyhow::Error> = None;
    let mut stopped = false;
    let request = Request::Watch {
        kind,
        namespace,
        name,
    };
    client::stream(&client_args.socket, &request, None, |response| {
        stopped = true;
        let written = match response {
            Response::Objects { records } => (|| {
                if format == OutputFormat::Table {
                    output::watch_header(&mut out, show_kind)?;
                }
                for r in &records {
                    output::watch_event(&mut out, "ADDED", r, format, show_kind)?;
                }
                Ok(())
            })(),
            Response::Watched { change, record } => {
                output::watch_event(&mut out, &change, &record, format, show_kind)
            }
            Response::Error { code: c, message } => {
                code = exit::node_error(&c, &message);
                return false;
            }
            other => {
                failed = Some(anyhow::anyhow!(
                    "unexpected answer from the node: {other:?}"
                ));
                return false;
            }
        };
        match written {
            Ok(()) => {
                stopped = false;
                true
            }
            // The reader went away (`deorch get -w | head`): done.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => false,
            Err(e) => {
                failed = Some(anyhow::anyhow!("writing: {e}"));
                false
            }
        }
    })?;
    match failed {
        Some(e) => Err(e),
        None if !stopped => {
            eprintln!("error: the node ended the watch (is it stopping?)");
            Ok(ExitCode::from(exit::FAILED))
        }
        None => Ok(code),
    }
}
