//! The local API's answers that are streams rather than one line, and the
//! VM actions the node takes itself rather than through desired state:
//!
//! - `Watch` (`deorch get -w`): what matches now (`Objects`), then one
//!   `Watched` per change of a matching object, from the store's change
//!   channel. Bounded: one subscription and one entry per matching object
//!   per watcher; a watcher too slow for the channel (it lagged) rescans
//!   and sends the differences, so it never misses the last state of an
//!   object (intermediate ones of a burst may coalesce, as in any watch).
//! - `Logs` (`deorch logs`): the VM's serial console log, which QEMU
//!   writes into its runtime directory on this node, in chunks; with
//!   `follow`, polled for growth and for the new file a restart begins.
//! - `VmReset` (`deorch vm restart --hard`): QMP `system_reset` of a VM
//!   running here. Imperative, like a console ticket: a reset changes no
//!   desired state, so there is nothing to record or converge to.
//!
//! A stream ends when the client closes its end (noticed while waiting),
//! or, for `Logs` without `follow`, at the end of the file.

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::broadcast::error::RecvError;

use super::Response;
use crate::driver::VmState;
use crate::model::{Kind, ObjectKey};
use crate::reconcile::Ctx;
use crate::store::{Record, Store};

/// Largest chunk of serial output in one `Log` answer (bytes).
const LOG_CHUNK: usize = 64 << 10;
/// How often a followed log is looked at for more output.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

async fn send(write: &mut OwnedWriteHalf, response: &Response) -> io::Result<()> {
    let mut out = serde_json::to_vec(response).expect("responses serialize");
    out.push(b'\n');
    write.write_all(&out).await
}

/// Resolves when the client closed its end of the connection (anything
/// it sends after its request is ignored).
async fn closed(reader: &mut BufReader<OwnedReadHalf>) {
    let mut buf = [0u8; 256];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn error(code: &str, message: String) -> Response {
    Response::Error {
        code: code.into(),
        message,
    }
}

/// Which objects a watch follows: the same filter as `Get`.
struct Filter {
    kind: Option<Kind>,
    namespace: Option<String>,
    name: Option<String>,
}

impl Filter {
    fn matches(&self, key: &ObjectKey) -> bool {
        self.kind.is_none_or(|k| key.kind == k)
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| key.namespace == *ns || key.namespace.is_empty())
            && self.name.as_ref().is_none_or(|n| key.name == *n)
    }
}

/// What a watcher last sent of one object.
#[derive(PartialEq)]
struct Seen {
    generation: i64,
    status: Option<Value>,
}

impl Seen {
    fn of(r: &Record) -> Seen {
        Seen {
            generation: r.generation,
            status: r.status.clone(),
        }
    }
}

/// The change to send for `key`, now `now` (`None`: gone), updating
/// `seen`.
fn diff(
    seen: &mut BTreeMap<ObjectKey, (Seen, Record)>,
    key: &ObjectKey,
    now: Option<Record>,
) -> Option<Response> {
    let watched = |change: &str, record: Record| Response::Watched {
        change: change.into(),
        record: Box::new(record),
    };
    match now.filter(|r| !r.deleted) {
        Some(r) => {
            let s = Seen::of(&r);
            match seen.insert(key.clone(), (s, r.clone())) {
                None => Some(watched("ADDED", r)),
                Some((before, _)) if before != Seen::of(&r) => Some(watched("MODIFIED", r)),
                Some(_) => None,
            }
        }
        None => seen.remove(key).map(|(_, mut last)| {
            last.deleted = true;
            watched("DELETED", last)
        }),
    }
}

/// Answer a `Watch` until the client goes away.
pub(super) async fn watch(
    store: &Store,
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    reader: &mut BufReader<OwnedReadHalf>,
    write: &mut OwnedWriteHalf,
) -> io::Result<()> {
    let kind = match kind.as_deref().map(|k| (k, Kind::from_cli(k))) {
        None => None,
        Some((_, Some(k))) => Some(k),
        Some((k, None)) => {
            let all: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
            let msg = format!("unknown kind {k:?}, expected one of: {}", all.join(", "));
            return send(write, &error("BadRequest", msg)).await;
        }
    };
    let filter = Filter {
        kind,
        namespace,
        name,
    };
    // Subscribed before listing: a change between the two is sent twice
    // at worst (the second time it is no difference), never lost.
    let mut changes = store.subscribe();
    let now: Vec<Record> = store
        .list(filter.kind)
        .into_iter()
        .filter(|r| filter.matches(&r.key))
        .collect();
    let mut seen: BTreeMap<ObjectKey, (Seen, Record)> = now
        .iter()
        .map(|r| (r.key.clone(), (Seen::of(r), r.clone())))
        .collect();
    send(write, &Response::Objects { records: now }).await?;
    loop {
        let change = tokio::select! {
            _ = closed(reader) => return Ok(()),
            change = changes.recv() => change,
        };
        let mut out = Vec::new();
        match change {
            Ok(c) if filter.matches(&c.key) => {
                out.extend(diff(&mut seen, &c.key, store.get(&c.key)));
            }
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => {
                let mut now: BTreeMap<ObjectKey, Record> = store
                    .list(filter.kind)
                    .into_iter()
                    .filter(|r| filter.matches(&r.key))
                    .map(|r| (r.key.clone(), r))
                    .collect();
                let mut keys: Vec<ObjectKey> = seen.keys().cloned().collect();
                keys.extend(now.keys().filter(|k| !seen.contains_key(*k)).cloned());
                for key in keys {
                    out.extend(diff(&mut seen, &key, now.remove(&key)));
                }
            }
            // The store is gone: the node is stopping.
            Err(RecvError::Closed) => return Ok(()),
        }
        for response in out {
            send(write, &response).await?;
        }
    }
}

/// Where the first of the last `n` lines of the file starts.
fn tail_offset(file: &mut std::fs::File, n: usize) -> io::Result<u64> {
    let len = file.metadata()?.len();
    if n == 0 {
        return Ok(len);
    }
    let mut end = len;
    let mut newlines = 0;
    let mut buf = vec![0u8; LOG_CHUNK];
    // A last line without its newline yet counts as a line; the newline
    // that ends the file does not start one.
    let mut skip_last = true;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        for (i, b) in chunk.iter().enumerate().rev() {
            if *b != b'\n' {
                skip_last = false;
                continue;
            }
            if std::mem::take(&mut skip_last) && start + i as u64 + 1 == len {
                continue;
            }
            newlines += 1;
            if newlines == n {
                return Ok(start + i as u64 + 1);
            }
        }
        end = start;
    }
    Ok(0)
}

/// Split off the text of `pending` that is complete UTF-8 (an incomplete
/// character at its end waits for the next read, unless `last`).
fn take_text(pending: &mut Vec<u8>, last: bool) -> String {
    let mut cut = pending.len();
    if !last {
        for back in 1..=pending.len().min(3) {
            let b = pending[pending.len() - back];
            if b & 0xC0 == 0xC0 {
                let needed = if b >= 0xF0 {
                    4
                } else if b >= 0xE0 {
                    3
                } else {
                    2
                };
                if needed > back {
                    cut = pending.len() - back;
                }
                break;
            }
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    let rest = pending.split_off(cut);
    let text = String::from_utf8_lossy(pending).into_owned();
    *pending = rest;
    text
}

/// A serial log being read: its file and where the reading is.
struct LogFile {
    path: PathBuf,
    file: std::fs::File,
    inode: u64,
    pending: Vec<u8>,
}

impl LogFile {
    fn open(path: &Path, tail: Option<usize>) -> io::Result<LogFile> {
        let mut file = std::fs::File::open(path)?;
        let inode = file.metadata()?.ino();
        let start = match tail {
            Some(n) => tail_offset(&mut file, n)?,
            None => 0,
        };
        file.seek(SeekFrom::Start(start))?;
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            inode,
            pending: Vec::new(),
        })
    }

    /// The next chunk of text (empty at the end of the file).
    fn read(&mut self) -> io::Result<String> {
        let mut buf = vec![0u8; LOG_CHUNK];
        let n = self.file.read(&mut buf)?;
        self.pending.extend_from_slice(&buf[..n]);
        Ok(take_text(&mut self.pending, n == 0))
    }

    /// After the end of the file: the VM restarted (QEMU begins a new
    /// file, the old one is renamed) or the file was cut short; reading
    /// goes on from the start of what is there now.
    fn reopen_if_replaced(&mut self) -> io::Result<bool> {
        let Ok(meta) = std::fs::metadata(&self.path) else {
            return Ok(false);
        };
        let pos = self.file.stream_position()?;
        if meta.ino() != self.inode {
            *self = LogFile::open(&self.path, None)?;
            return Ok(true);
        }
        if meta.len() < pos {
            self.file.seek(SeekFrom::Start(0))?;
            return Ok(true);
        }
        Ok(false)
    }
}

/// Answer a `Logs`: the serial log's chunks; with `follow`, until the
/// client goes away.
pub(super) async fn logs(
    ctx: &Ctx,
    namespace: Option<String>,
    name: String,
    tail: Option<usize>,
    follow: bool,
    reader: &mut BufReader<OwnedReadHalf>,
    write: &mut OwnedWriteHalf,
) -> io::Result<()> {
    let key = ObjectKey::new(Kind::VirtualMachine, namespace.as_deref(), &name);
    let vm = format!("{}/{}", key.namespace, key.name);
    let Some(record) = ctx.store.get(&key).filter(|r| !r.deleted) else {
        return send(write, &error("NotFound", format!("no VirtualMachine {vm}"))).await;
    };
    let hv = ctx.drivers.hypervisor.as_ref();
    let Some(dir) = hv.vms_dir() else {
        let msg = format!(
            "the {} hypervisor driver keeps no serial console",
            hv.name()
        );
        return send(write, &error("BadRequest", msg)).await;
    };
    let path = crate::qemu::cmdline::serial_log(&dir.join(&key.namespace).join(&key.name));
    let runs_on = record
        .status
        .as_ref()
        .and_then(|s| s["node"].as_str())
        .map(str::to_string);
    let mut log = loop {
        match LogFile::open(&path, tail) {
            Ok(l) => break l,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(other) = runs_on.as_ref().filter(|n| **n != ctx.config.node_name) {
                    let msg = format!("{vm} runs on node {other}: its serial console is there (run `deorch logs` on that node)");
                    return send(write, &error("NotRunningHere", msg)).await;
                }
                if !follow {
                    let msg = format!(
                        "{vm} has printed nothing on this node (it has not started here yet)"
                    );
                    return send(write, &error("NotRunningHere", msg)).await;
                }
            }
            Err(e) => {
                let msg = format!("reading {}: {e}", path.display());
                return send(write, &error("Internal", msg)).await;
            }
        }
        tokio::select! {
            _ = closed(reader) => return Ok(()),
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
        }
    };
    loop {
        let (back, text) = tokio::task::spawn_blocking(move || {
            let text = log.read();
            (log, text)
        })
        .await
        .map_err(io::Error::other)?;
        log = back;
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                let msg = format!("reading {}: {e}", path.display());
                return send(write, &error("Internal", msg)).await;
            }
        };
        if !text.is_empty() {
            send(write, &Response::Log { text }).await?;
            continue;
        }
        if !follow {
            return Ok(());
        }
        if log.reopen_if_replaced()? {
            continue;
        }
        tokio::select! {
            _ = closed(reader) => return Ok(()),
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
        }
    }
}

/// Answer a `VmReset`: reset the VM if it runs on this node.
pub(super) async fn reset(ctx: &Ctx, namespace: Option<String>, name: String) -> Response {
    let key = ObjectKey::new(Kind::VirtualMachine, namespace.as_deref(), &name);
    let vm = format!("{}/{}", key.namespace, key.name);
    if ctx.store.get(&key).is_none_or(|r| r.deleted) {
        return error("NotFound", format!("no VirtualMachine {vm}"));
    }
    let hv = ctx.drivers.hypervisor.as_ref();
    match hv.state(&vm).await {
        Ok(VmState::Running { .. } | VmState::Paused { .. }) => {}
        Ok(_) => {
            return error(
                "NotRunningHere",
                format!("{vm} does not run on this node: reset it on the node that runs it"),
            )
        }
        Err(e) => return error("Internal", e.to_string()),
    }
    match hv.reset(&vm).await {
        Ok(()) => {
            tracing::info!(vm = %vm, "VM reset (local API)");
            Response::VolumeDone {
                message: format!("{vm} reset: the guest reboots"),
            }
        }
        Err(e) => error("Internal", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tail_of(text: &str, n: usize) -> String {
        let path = std::env::temp_dir().join(format!(
            "deorch-tail-{}-{n}-{}",
            std::process::id(),
            text.len()
        ));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        let at = tail_offset(&mut f, n).unwrap() as usize;
        std::fs::remove_file(&path).unwrap();
        text[at..].to_string()
    }

    #[test]
    fn tail_counts_lines_with_and_without_a_final_newline() {
        assert_eq!(tail_of("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail_of("a\nb\nc", 2), "b\nc");
        assert_eq!(tail_of("a\nb\nc\n", 5), "a\nb\nc\n");
        assert_eq!(tail_of("a\nb\nc\n", 0), "");
        assert_eq!(tail_of("", 3), "");
        assert_eq!(tail_of("a\n\n\n", 2), "\n\n");
        // Across the read blocks.
        let long: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(tail_of(&long, 3), "line 19997\nline 19998\nline 19999\n");
    }

    #[test]
    fn a_character_cut_by_a_read_waits_for_its_end() {
        let mut p = "é€".as_bytes()[..4].to_vec(); // é whole, € cut after 2 of 3
        assert_eq!(take_text(&mut p, false), "é");
        assert_eq!(p.len(), 2);
        p.push("€".as_bytes()[2]);
        assert_eq!(take_text(&mut p, false), "€");
        assert!(p.is_empty());
        let mut bad = vec![b'a', 0xff, b'b'];
        assert_eq!(take_text(&mut bad, false), "a\u{fffd}b");
        let mut cut = vec![b'x', 0xe2];
        assert_eq!(take_text(&mut cut, true), "x\u{fffd}");
    }
}
