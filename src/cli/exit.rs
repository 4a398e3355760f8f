//! The exit codes of the command line, in one place: what a script can
//! tell apart without reading the message.

use std::process::ExitCode;

use crate::api::client::ClientError;

// 0: done (`ExitCode::SUCCESS`).
/// Failed: the node refused or could not do it, an invalid manifest, a
/// wait that gave up.
pub const FAILED: u8 = 1;
// 2: bad usage, unknown flags or arguments (clap's own code), and
// `verify`'s "could not be checked".
/// The object (VM, kind, replica, ...) does not exist.
pub const NOT_FOUND: u8 = 3;
/// No node answers on the socket (not running, or not root).
pub const UNREACHABLE: u8 = 4;

/// The table, for `deorch --help`.
pub const HELP: &str = "Exit codes: 0 done; 1 failed or refused (the message says why); \
2 bad usage; 3 not found; 4 cannot reach the node (is `deorch node run` running, and are you root?).";

/// An error answer of the node, kept with its code so the exit code can
/// tell "not found" apart.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct NodeError {
    /// `NotFound`, `BadRequest`, `Conflict`, `NotRunningHere`, ...
    pub code: String,
    /// What went wrong.
    pub message: String,
}

/// The exit code of a node's error code.
pub fn of_code(code: &str) -> ExitCode {
    ExitCode::from(match code {
        "NotFound" => NOT_FOUND,
        _ => FAILED,
    })
}

/// Print a node's error answer; its exit code.
pub fn node_error(code: &str, message: &str) -> ExitCode {
    eprintln!("error: {message}");
    of_code(code)
}

/// The exit code of an error that ended a command.
pub fn of_error(e: &anyhow::Error) -> ExitCode {
    for cause in e.chain() {
        if let Some(ClientError::Connect { .. }) = cause.downcast_ref::<ClientError>() {
            return ExitCode::from(UNREACHABLE);
        }
        if let Some(n) = cause.downcast_ref::<NodeError>() {
            return of_code(&n.code);
        }
    }
    ExitCode::from(FAILED)
}
