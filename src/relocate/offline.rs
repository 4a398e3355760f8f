//! The offline data path of a relocation (`mode: Offline`: stop, copy,
//! start): each disk of the stopped VM is copied into a fresh image of
//! the same size on the receiver, which serves it over NBD (`qemu-nbd`)
//! on 127.0.0.1; the sender writes it with `qemu-img convert`, through
//! the nodes' tunnel ([`super::tunnel`]). Only allocated data crosses:
//! the fresh target reads as zeros (`--target-is-zero`), so zero and
//! unallocated ranges are skipped. Any image format QEMU reads works on
//! either side (the export is the guest-visible content).
//!
//! Between two nodes whose storage streams volumes (zfs), the agent
//! pipes the storage's send command into the receiver's receive command
//! instead ([`send_stream`], [`take_streams`]): the bulk while the VM
//! still runs, then only what changed (docs/ALGORITHMS.md, "Relocation").

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// A tool could not be run.
    #[error("{tool}: {source}")]
    Spawn {
        /// `qemu-nbd` or `qemu-img`.
        tool: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// A tool failed.
    #[error("{tool} failed: {stderr}")]
    Failed {
        /// `qemu-nbd` or `qemu-img`.
        tool: &'static str,
        /// What it said.
        stderr: String,
    },
    /// The copy took too long.
    #[error("the copy did not finish within {0:?}")]
    Timeout(Duration),
}

/// A receiver's NBD server for one image: one client, then it exits.
/// Dropping it kills the server if it is still there.
pub struct NbdServer {
    pid_file: PathBuf,
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        {
            // Gone already after its one client, normally.
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// Serve `image` (format `format`) writable as NBD export `export` on
/// `listen`, for one client; returns once the server listens.
pub async fn serve(
    image: &Path,
    format: &str,
    listen: SocketAddr,
    export: &str,
) -> Result<NbdServer, OfflineError> {
    let pid_file = image.with_extension("nbd.pid");
    let out = Command::new("qemu-nbd")
        .arg("--fork")
        .arg(format!("--pid-file={}", pid_file.display()))
        .args([
            "-f",
            format,
            "-x",
            export,
            "--cache=none",
            "--discard=unmap",
        ])
        .arg(format!("--bind={}", listen.ip()))
        .arg(format!("--port={}", listen.port()))
        .arg(image)
        .output()
        .await
        .map_err(|source| OfflineError::Spawn {
            tool: "qemu-nbd",
            source,
        })?;
    if !out.status.success() {
        return Err(OfflineError::Failed {
            tool: "qemu-nbd",
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(NbdServer { pid_file })
}

/// Copy `source` (format `format`) into the fresh export `export`
/// reached at `connect`, skipping what reads as zeros.
pub async fn copy(
    source: &Path,
    format: &str,
    connect: SocketAddr,
    export: &str,
    timeout: Duration,
) -> Result<(), OfflineError> {
    let target = format!("nbd://{connect}/{export}");
    let run = Command::new("qemu-img")
        .args([
            "convert",
            "-n",
            "--target-is-zero",
            // Out-of-order writes: several in flight through the tunnel
            // rather than one at a time.
            "-W",
            "-f",
            format,
            "-O",
            "raw",
        ])
        .arg(source)
        .arg(&target)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| OfflineError::Timeout(timeout))?
        .map_err(|source| OfflineError::Spawn {
            tool: "qemu-img",
            source,
        })?;
    if !out.status.success() {
        return Err(OfflineError::Failed {
            tool: "qemu-img",
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Run `argv` with its standard input (`feed`) or output (otherwise)
/// piped, its errors kept for [`finished`]; killed if dropped.
pub fn spawn_piped(argv: &[String], feed: bool) -> Result<tokio::process::Child, String> {
    let (program, args) = argv.split_first().ok_or("no command")?;
    let pipe = |yes: bool| {
        if yes {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        }
    };
    Command::new(program)
        .args(args)
        .stdin(pipe(feed))
        .stdout(pipe(!feed))
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{program}: {e}"))
}

/// Wait for a child of [`spawn_piped`]; its error output if it failed.
pub async fn finished(child: tokio::process::Child, argv: &[String]) -> Result<(), String> {
    let done = child.wait_with_output().await.map_err(|e| e.to_string())?;
    if !done.status.success() {
        return Err(format!(
            "{}: {}",
            argv.join(" "),
            String::from_utf8_lossy(&done.stderr).trim()
        ));
    }
    Ok(())
}

/// The buffer of each volume stream's copies.
const STREAM_BUF: usize = 1 << 20;

/// Send the output of `argv` (a storage's send command, e.g. `zfs send`)
/// to `to` (a tunnel's local end), then wait for the receiver's answer on
/// the same stream: its receive command's outcome. Returns the bytes
/// sent.
pub async fn send_stream(
    argv: &[String],
    to: SocketAddr,
    timeout: Duration,
) -> Result<u64, OfflineError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tool = "volume send";
    let run = async {
        let (program, args) = argv.split_first().ok_or(OfflineError::Failed {
            tool,
            stderr: "no command".into(),
        })?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| OfflineError::Spawn { tool, source })?;
        let out = child.stdout.take().expect("piped");
        let io = |source| OfflineError::Spawn { tool, source };
        let sock = tokio::net::TcpStream::connect(to).await.map_err(io)?;
        let _ = sock.set_nodelay(true);
        let (mut r, mut w) = sock.into_split();
        // Large reads: `tokio::io::copy`'s 8 KiB buffer made the stream
        // syscall-bound.
        let mut out = tokio::io::BufReader::with_capacity(STREAM_BUF, out);
        let sent = tokio::io::copy_buf(&mut out, &mut w).await.map_err(io)?;
        w.shutdown().await.map_err(io)?;
        let done = child.wait_with_output().await.map_err(io)?;
        if !done.status.success() {
            return Err(OfflineError::Failed {
                tool,
                stderr: format!(
                    "{}: {}",
                    argv.join(" "),
                    String::from_utf8_lossy(&done.stderr).trim()
                ),
            });
        }
        let mut answer = String::new();
        r.read_to_string(&mut answer).await.map_err(io)?;
        match answer.trim() {
            "ok" => Ok(sent),
            "" => Err(OfflineError::Failed {
                tool,
                stderr: "the receiver closed the stream without an answer".into(),
            }),
            other => Err(OfflineError::Failed {
                tool: "volume receive",
                stderr: other.trim_start_matches("error: ").to_string(),
            }),
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| OfflineError::Timeout(timeout))?
}

/// The receiver's end of [`send_stream`]: each connection to `listener`
/// is fed into a new run of `argv` (a storage's receive command, e.g.
/// `zfs recv -F`), one at a time, and answered `ok` or `error: WHY` once
/// that run ends. Runs until dropped (aborted).
pub async fn take_streams(listener: tokio::net::TcpListener, argv: Vec<String>) {
    use tokio::io::AsyncWriteExt;
    while let Ok((sock, _)) = listener.accept().await {
        let (mut r, mut w) = sock.into_split();
        let took = async {
            let mut child = spawn_piped(&argv, true)?;
            let mut stdin = child.stdin.take().expect("piped");
            let mut r = tokio::io::BufReader::with_capacity(STREAM_BUF, &mut r);
            let copied = tokio::io::copy_buf(&mut r, &mut stdin).await;
            drop(stdin);
            finished(child, &argv).await?;
            copied.map_err(|e| format!("the stream broke: {e}"))?;
            Ok::<(), String>(())
        }
        .await;
        let answer = match took {
            Ok(()) => "ok\n".to_string(),
            Err(why) => format!("error: {}\n", why.replace('\n', " ")),
        };
        let _ = w.write_all(answer.as_bytes()).await;
        let _ = w.shutdown().await;
    }
}
