//! Running the host's storage tools (`zfs`, `zpool`, `qemu-img`): argument
//! vectors only (never a shell string built from user input), a deadline,
//! and stderr kept for the error message.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::DriverError;

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    /// Standard output.
    pub stdout: String,
}

/// Why a command failed.
#[derive(Debug)]
pub enum CmdError {
    /// It could not be started (not installed?).
    Spawn(String),
    /// It ran past its deadline and was killed.
    Timeout,
    /// It exited non-zero; its stderr (trimmed).
    Failed(String),
}

impl CmdError {
    /// The message as a driver would report it.
    pub fn message(&self) -> String {
        match self {
            CmdError::Spawn(m) => format!("cannot run: {m}"),
            CmdError::Timeout => "timed out".into(),
            CmdError::Failed(m) => m.clone(),
        }
    }

    /// A driver error for `op` on `target`, classified by what the tool
    /// said: busy and timeouts are transient, a full pool or a missing one
    /// get their own reasons, everything else is permanent.
    pub fn into_driver(self, op: &str, target: &str) -> DriverError {
        let message = self.message();
        let lower = message.to_ascii_lowercase();
        let condition = |reason: &'static str| DriverError::Condition {
            op: op.into(),
            target: target.into(),
            reason,
            message: message.clone(),
        };
        if matches!(self, CmdError::Timeout) || lower.contains("busy") {
            DriverError::Transient {
                op: op.into(),
                target: target.into(),
                message,
            }
        } else if lower.contains("out of space")
            || lower.contains("no space left")
            || lower.contains("quota exceeded")
        {
            condition("PoolFull")
        } else if lower.contains("no such pool") {
            condition("PoolMissing")
        } else if lower.contains("already exists") {
            condition("NameCollision")
        } else if lower.contains("does not exist") || lower.contains("no such file") {
            DriverError::NotFound {
                op: op.into(),
                target: target.into(),
            }
        } else {
            DriverError::Permanent {
                op: op.into(),
                target: target.into(),
                message,
            }
        }
    }
}

/// A file-system error on a volume or dataset, classified like the tools'
/// errors: no space or quota is `PoolFull`, a missing file `NotFound`.
pub fn io_error(op: &str, target: &str, e: std::io::Error) -> DriverError {
    let message = e.to_string();
    match e.raw_os_error() {
        // ENOSPC, EDQUOT
        Some(28) | Some(122) => DriverError::Condition {
            op: op.into(),
            target: target.into(),
            reason: "PoolFull",
            message,
        },
        Some(2) => DriverError::NotFound {
            op: op.into(),
            target: target.into(),
        },
        _ => DriverError::Permanent {
            op: op.into(),
            target: target.into(),
            message,
        },
    }
}

/// Run `program args...` with a deadline.
pub fn run(program: &str, args: &[&str], timeout: Duration) -> Result<Output, CmdError> {
    run_input(program, args, None, timeout)
}

/// Run `program args...` with `input` on its standard input (e.g. `nft -f
/// -`, `bridge -batch -`), with a deadline.
pub fn run_input(
    program: &str,
    args: &[&str],
    input: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Output, CmdError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CmdError::Spawn(format!("{program}: {e}")))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // On a thread: a tool that answers before reading all of it
        // cannot block us on a full pipe.
        std::thread::spawn(move || {
            use std::io::Write as _;
            let _ = stdin.write_all(&input);
        });
    }
    // Drain both pipes on threads so a chatty tool cannot block on a full
    // pipe while we wait for it.
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(200);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CmdError::Timeout);
            }
            Ok(None) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(5));
            }
            Err(e) => return Err(CmdError::Spawn(e.to_string())),
        }
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    if status.success() {
        Ok(Output { stdout })
    } else {
        let msg = stderr.trim();
        Err(CmdError::Failed(if msg.is_empty() {
            format!("{program} exited with {status}")
        } else {
            msg.to_string()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_tool_errors() {
        let e = CmdError::Failed("cannot destroy 'p/x': dataset is busy".into());
        assert!(matches!(
            e.into_driver("destroy", "x"),
            DriverError::Transient { .. }
        ));
        let e = CmdError::Failed("cannot create 'p/x': out of space".into());
        assert!(matches!(
            e.into_driver("create", "x"),
            DriverError::Condition {
                reason: "PoolFull",
                ..
            }
        ));
        assert!(matches!(
            run("false", &[], Duration::from_secs(5)),
            Err(CmdError::Failed(_))
        ));
        assert!(matches!(
            run("sleep", &["5"], Duration::from_millis(50)),
            Err(CmdError::Timeout)
        ));
        assert_eq!(
            run("echo", &["hi"], Duration::from_secs(5)).unwrap().stdout,
            "hi\n"
        );
    }
}
