//! FASTR copy points on `dir` storage (docs/ALGORITHMS.md, "FASTR on
//! qcow2").
//!
//! Sender, the node running the VM: a point is one QMP `transaction`
//! over all the VM's disks, so one instant for all of them. For each
//! disk it adds a dirty bitmap named after the point (it tracks the
//! guest's writes from that instant on) and starts a backup job
//! (`blockdev-backup`) of the disk as it was at that instant into a
//! local qcow2 file: the whole disk (`sync: full`) for a receiver with
//! no point (FASTR serves such receivers in a round of their own, see
//! `round_group` in `relocate/fastr.rs`, so the others still get what
//! changed), otherwise only the clusters the bitmap of the oldest point
//! the receivers hold marks (`sync: bitmap`, `bitmap-mode: never`: the
//! bitmap is left as it was). That file is the stream (`cat`). A bitmap
//! an older point's receivers no longer need is removed when FASTR drops
//! the point; if a round fails, the new bitmap goes and the older one,
//! untouched, still covers every write since its point, so nothing is
//! lost. A disk switched to a new overlay (a live replica) takes its
//! bitmaps along: the hypervisor adds each to the new top node and merges
//! the old one's bits into it in the snapshot's own transaction
//! (`QemuHypervisor::live_snapshot`). Bitmaps are persistent: QEMU
//! stores them in the top image when it closes it (a VM stopped, a QEMU
//! quitting) and loads them when it opens it, so a restarted VM's next
//! round is still incremental (a replica of the stopped VM copies them
//! onto the disk's new overlay: `carry_bitmaps` in `dir.rs`). A QEMU killed leaves them marked in use:
//! loaded again, QEMU calls them inconsistent (they may have missed
//! writes), and they are removed and never used as a base, so that round
//! sends the whole disks.
//!
//! The backup's target is backed by an empty image while it is written:
//! QEMU then records a cluster the guest zeroed as a zero cluster rather
//! than leaving it unallocated (which a receiver would read through to
//! its older point).
//!
//! Receiver: a copy is the volume `fastr.<volume>`, an empty overlay on
//! its newest point; each point is a frozen layer
//! `layers/point.<tag>.<nonce>.qcow2` backed by the point before it (the
//! first one by nothing). A stream lands in `incoming/<copy>.qcow2`
//! (`dd ... conv=fsync`); once it ended whole, the file is checked
//! (`qemu-img check`), given the copy's newest point as its backing
//! (`qemu-img rebase -u`), synced, renamed into `layers/`, and a new
//! overlay on it replaces the copy (`rename`): each step is atomic, and
//! until the last one the copy reads its previous point, untouched.
//! Rolling back is a new overlay on an older point's layer (the newer
//! layers become unreachable and [`super::Dir::gc`] deletes them).
//! Dropping point P whose layer the next point N is backed by: N's
//! clusters are committed into P's layer (`qemu-img commit -d`), which
//! then reads as N, and is renamed over N's layer; a journal in
//! `incoming/` names P first (P is no longer listed, and an interrupted
//! drop is finished when the storage opens). While N's layer is intact
//! N's view never changes (what is read through to P is what P's layer
//! held, which the commit changes only where N has its own clusters). A
//! point another volume is backed by directly (a clone of it) is not
//! dropped; a clone of N is unaffected.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{list_files, sync_dir, Dir, TIMEOUT};
use crate::driver::cmd;
use crate::driver::cmd::io_error as io;
use crate::driver::cow::nonce;
use crate::driver::{qcow2, DriverError, FASTR_TAG};
use crate::qemu::qmp::Qmp;

/// The cluster size of an incremental stream's image.
const DELTA_CLUSTER: &str = "cluster_size=4096";

/// The longest backing chain followed.
const MAX_CHAIN: usize = 10_000;

/// The prefix of a point layer's file name.
const POINT_LAYER: &str = "point.";

/// Whether `volume` is a FASTR copy (the receiver's side).
pub fn is_copy(volume: &str) -> bool {
    volume.starts_with("fastr.")
}

/// The tag of point layer `path`, if it is one.
fn layer_tag(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?.strip_prefix(POINT_LAYER)?;
    let tag = name.split('.').next()?;
    tag.starts_with(FASTR_TAG).then(|| tag.to_string())
}

fn absolute(of: &Path, backing: PathBuf) -> PathBuf {
    if backing.is_absolute() {
        backing
    } else {
        of.parent().unwrap_or(Path::new("/")).join(backing)
    }
}

/// The backing file of `path`, if any.
fn backing(path: &Path) -> Option<PathBuf> {
    let b = qcow2::header(path).ok()?.backing?;
    Some(absolute(path, b))
}

impl Dir {
    fn incoming(&self, volume: &str) -> PathBuf {
        self.root.join("incoming").join(format!("{volume}.qcow2"))
    }

    fn journal(&self, copy: &str) -> PathBuf {
        self.root.join("incoming").join(format!("{copy}.drop"))
    }

    /// The point layers `copy` reads through, newest first, a pending
    /// drop's point left out.
    pub(super) fn chain(&self, copy: &str) -> Vec<(String, PathBuf)> {
        let dropping = std::fs::read_to_string(self.journal(copy)).unwrap_or_default();
        let dropping = dropping.lines().next().unwrap_or_default();
        let mut out = Vec::new();
        let mut at = self.volume_path(copy);
        // (Bounded: a backing loop, which QEMU would refuse, ends here.)
        for _ in 0..MAX_CHAIN {
            let Some(b) = backing(&at) else { break };
            if let Some(tag) = layer_tag(&b) {
                if b.to_str() != Some(dropping) {
                    out.push((tag, b.clone()));
                }
            }
            at = b;
        }
        out
    }

    /// Points of copy `copy`, oldest first.
    pub(super) fn copy_points(&self, copy: &str) -> Vec<String> {
        let mut v: Vec<String> = self.chain(copy).into_iter().map(|(t, _)| t).collect();
        v.reverse();
        v
    }

    fn point_layer(&self, op: &str, copy: &str, tag: &str) -> Result<PathBuf, DriverError> {
        self.chain(copy)
            .into_iter()
            .find(|(t, _)| t == tag)
            .map(|(_, p)| p)
            .ok_or_else(|| DriverError::not_found(op, &format!("{copy}@{tag}")))
    }

    /// A new empty overlay on `layer` becomes volume `volume` (replacing
    /// it, atomically).
    fn overlay_as(
        &mut self,
        op: &str,
        layer: &Path,
        size: Option<u64>,
        volume: &str,
    ) -> Result<(), DriverError> {
        let over = self.overlay(op, layer, size)?;
        self.install(op, &over, volume)
    }

    /// `copy` reads its point `tag` again (later points are dropped).
    pub(super) fn rollback_copy(&mut self, copy: &str, tag: &str) -> Result<(), DriverError> {
        let layer = self.point_layer("rollback", copy, tag)?;
        if backing(&self.volume_path(copy)).as_deref() == Some(layer.as_path())
            && qcow2::is_empty(&self.volume_path(copy)).unwrap_or(false)
        {
            return Ok(());
        }
        self.overlay_as("rollback", &layer, None, copy)
    }

    /// The command that writes a stream into `volume`'s incoming file.
    pub(super) fn receive_argv(&self, volume: &str) -> Vec<String> {
        vec![
            "dd".into(),
            format!("of={}", self.incoming(volume).display()),
            "bs=1M".into(),
            "conv=fsync".into(),
            "status=none".into(),
        ]
    }

    /// A stream into `volume` ended whole: it becomes point `tag`, the
    /// newest, of `volume` (see the module doc).
    pub(super) fn point_received(&mut self, volume: &str, tag: &str) -> Result<(), DriverError> {
        let op = "receive point";
        let file = self.incoming(volume);
        let target = file.display().to_string();
        let h = qcow2::header(&file).map_err(|e| io(op, &target, e))?;
        let prev = if self.volume_path(volume).exists() {
            self.chain(volume).into_iter().next().map(|(_, p)| p)
        } else {
            None
        };
        let prev_s = prev
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mut args = vec!["rebase", "-q", "-u", "-f", "qcow2", "-b", prev_s.as_str()];
        if prev.is_some() {
            args.extend(["-F", "qcow2"]);
        }
        args.push(&target);
        cmd::run("qemu-img", &args, TIMEOUT).map_err(|e| e.into_driver(op, volume))?;
        // Whole: its metadata consistent, every cluster it maps inside.
        cmd::run(
            "qemu-img",
            &["check", "-q", "-f", "qcow2", &target],
            TIMEOUT,
        )
        .map_err(|e| e.into_driver(op, &format!("{volume}@{tag}")))?;
        std::fs::File::open(&file)
            .and_then(|f| f.sync_all())
            .map_err(|e| io(op, &target, e))?;
        let layer =
            self.root
                .join("layers")
                .join(format!("{POINT_LAYER}{tag}.{}.{}.qcow2", nonce(), {
                    self.seq += 1;
                    self.seq
                }));
        std::fs::rename(&file, &layer).map_err(|e| io(op, volume, e))?;
        sync_dir(&self.root.join("layers"));
        self.overlay_as(op, &layer, Some(h.size), volume)
    }

    /// Drop point `tag` of copy `copy` (see the module doc). The newest
    /// point stays; a point another volume is backed by is refused.
    pub(super) fn drop_copy_point(&mut self, copy: &str, tag: &str) -> Result<(), DriverError> {
        let op = "drop point";
        let chain = self.chain(copy);
        let Some(i) = chain.iter().position(|(t, _)| t == tag) else {
            return Ok(());
        };
        if i == 0 {
            return Err(DriverError::permanent(
                op,
                &format!("{copy}@{tag}"),
                "the copy's newest point stays",
            ));
        }
        let (layer, next) = (chain[i].1.clone(), chain[i - 1].1.clone());
        // What else is backed by the point's layer directly.
        let users: Vec<PathBuf> = self
            .reachable()
            .into_iter()
            .filter(|f| *f != next && backing(f).as_deref() == Some(layer.as_path()))
            .collect();
        if !users.is_empty() {
            return Err(DriverError::Condition {
                op: op.into(),
                target: format!("{copy}@{tag}"),
                reason: "PointInUse",
                message: format!(
                    "{} is backed by it (a clone of the point): it stays while that does",
                    users
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let journal = self.journal(copy);
        let text = format!("{}\n{}\n", layer.display(), next.display());
        write_synced(&journal, text.as_bytes()).map_err(|e| io(op, copy, e))?;
        finish_drop(&journal)
    }

    /// Every file some volume reads through (volumes and layers).
    fn reachable(&self) -> BTreeSet<PathBuf> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<PathBuf> = list_files(&self.root.join("volumes"));
        while let Some(f) = todo.pop() {
            if seen.insert(f.clone()) {
                if let Some(b) = backing(&f) {
                    todo.push(b);
                }
            }
        }
        seen
    }

    /// At open: finish interrupted drops; forget streams cut short and
    /// the sender's files of rounds that were under way.
    pub(super) fn recover_points(&mut self) -> Result<(), DriverError> {
        for f in list_files(&self.root.join("incoming")) {
            if f.extension().is_some_and(|e| e == "drop") {
                finish_drop(&f)?;
            } else {
                let _ = std::fs::remove_file(f);
            }
        }
        for f in list_files(&self.root.join("fastr-out")) {
            let _ = std::fs::remove_file(f);
        }
        Ok(())
    }

    /// A clone of copy point `copy@tag`: an overlay on its layer.
    pub(super) fn clone_point(
        &mut self,
        volume: &str,
        copy: &str,
        tag: &str,
        size: Option<u64>,
    ) -> Result<(), DriverError> {
        let layer = self.point_layer("clone", copy, tag)?;
        let base = qcow2::header(&layer).map(|h| h.size).unwrap_or(0);
        self.overlay_as("clone", &layer, Some(size.unwrap_or(0).max(base)), volume)
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new("/")));
    Ok(())
}

/// Carry out drop journal `journal` (`<point layer>\n<next layer>\n`):
/// commit the next layer into the point's, rename it over the next's.
/// Re-running after a crash at any step finishes it.
fn finish_drop(journal: &Path) -> Result<(), DriverError> {
    let op = "drop point";
    let target = journal.display().to_string();
    let text = std::fs::read_to_string(journal).map_err(|e| io(op, &target, e))?;
    let mut lines = text.lines();
    let (Some(layer), Some(next)) = (lines.next(), lines.next()) else {
        let _ = std::fs::remove_file(journal);
        return Ok(());
    };
    if Path::new(layer).exists() {
        if Path::new(next).exists() {
            cmd::run(
                "qemu-img",
                &["commit", "-q", "-d", "-f", "qcow2", next],
                TIMEOUT,
            )
            .map_err(|e| e.into_driver(op, next))?;
            std::fs::File::open(layer)
                .and_then(|f| f.sync_all())
                .map_err(|e| io(op, layer, e))?;
            std::fs::rename(layer, next).map_err(|e| io(op, layer, e))?;
            sync_dir(Path::new(next).parent().unwrap_or(Path::new("/")));
        } else {
            // The next layer is gone (its copy destroyed): nothing reads
            // the point through it.
            let _ = std::fs::remove_file(layer);
        }
    }
    std::fs::remove_file(journal).map_err(|e| io(op, &target, e))?;
    Ok(())
}

/// A running disk of the sender: the VM's QMP socket and the disk's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveDisk {
    /// The VM's QMP socket.
    pub socket: PathBuf,
    /// The disk's name in the VM (its device is `disk-<name>`).
    pub disk: String,
}

/// What one disk's top node is, as QMP's `query-block` says.
#[derive(Debug)]
struct Top {
    node: String,
    size: u64,
    /// FASTR bitmaps QEMU can use (oldest first is not implied).
    bitmaps: Vec<String>,
    /// FASTR bitmaps QEMU loaded from the image but marked inconsistent:
    /// it was not closed cleanly (a QEMU killed), so they may have missed
    /// writes and are never a base.
    stale: Vec<String>,
}

fn qmp_err(op: &str, target: &str, e: impl std::fmt::Display) -> DriverError {
    DriverError::transient(op, target, e.to_string())
}

async fn connect(op: &str, target: &str, socket: &Path) -> Result<Qmp, DriverError> {
    Qmp::connect(socket, Duration::from_secs(5))
        .await
        .map_err(|e| qmp_err(op, target, e))
}

/// The top node, size and FASTR bitmaps of each of `disks`.
async fn tops(q: &mut Qmp, op: &str, disks: &[String]) -> Result<Vec<Top>, DriverError> {
    let blocks = q
        .execute("query-block", None)
        .await
        .map_err(|e| qmp_err(op, "query-block", e))?;
    disks
        .iter()
        .map(|disk| {
            let device = format!("disk-{disk}");
            let b = crate::driver::qemu::block_of(&blocks, disk)
                .ok_or_else(|| DriverError::not_found(op, &device))?;
            let ins = &b["inserted"];
            Ok(Top {
                node: ins["node-name"]
                    .as_str()
                    .ok_or_else(|| DriverError::not_found(op, &device))?
                    .to_string(),
                size: ins["image"]["virtual-size"].as_u64().unwrap_or(0),
                bitmaps: fastr(ins, false),
                stale: fastr(ins, true),
            })
        })
        .collect()
}

/// The names of the FASTR bitmaps of a disk's `inserted` block info,
/// those QEMU marks inconsistent or the others.
fn fastr(inserted: &Value, inconsistent: bool) -> Vec<String> {
    crate::driver::qemu::fastr_bitmaps(Some(inserted))
        .into_iter()
        .filter(|b| b.inconsistent == inconsistent)
        .map(|b| b.name)
        .collect()
}

/// The FASTR points (bitmaps on its top node) of the running disk `d`.
pub async fn bitmaps(volume: &str, d: &LiveDisk) -> Result<Vec<String>, DriverError> {
    let mut q = connect("points", volume, &d.socket).await?;
    let mut t = tops(&mut q, "points", std::slice::from_ref(&d.disk)).await?;
    let mut b = t.pop().map(|t| t.bitmaps).unwrap_or_default();
    b.sort_by_key(|p| point_ms(p));
    Ok(b)
}

/// Remove point `tag`'s bitmap from the running disk `d` (gone: fine).
pub async fn drop_bitmap(volume: &str, d: &LiveDisk, tag: &str) -> Result<(), DriverError> {
    let mut q = connect("drop point", volume, &d.socket).await?;
    let t = tops(&mut q, "drop point", std::slice::from_ref(&d.disk)).await?;
    for top in t.iter().filter(|t| t.bitmaps.iter().any(|b| b == tag)) {
        q.execute(
            "block-dirty-bitmap-remove",
            Some(json!({"node": top.node, "name": tag})),
        )
        .await
        .map_err(|e| qmp_err("drop point", volume, e))?;
    }
    Ok(())
}

/// The file the stream of `volume` at point `tag` is prepared in.
pub fn prepared(root: &Path, volume: &str, tag: &str) -> PathBuf {
    root.join("fastr-out").join(format!("{volume}@{tag}.qcow2"))
}

/// Take point `tag` of `disks` (volume, disk) of one running VM, its
/// streams prepared under `root`, for receivers holding `bases` (`None`:
/// one holds no point): see the module doc. The point whose bitmap gave
/// what changed, `None` when the streams are the whole disks.
pub async fn mark(
    root: &Path,
    disks: &[(String, LiveDisk)],
    tag: &str,
    bases: &[Option<String>],
) -> Result<Option<String>, DriverError> {
    let op = "mark point";
    let Some((first, d0)) = disks.first() else {
        return Ok(None);
    };
    let mut q = connect(op, first, &d0.socket).await?;
    let names: Vec<String> = disks.iter().map(|(_, d)| d.disk.clone()).collect();
    let tops = tops(&mut q, op, &names).await?;
    let have: Vec<&[String]> = tops.iter().map(|t| t.bitmaps.as_slice()).collect();
    let base = choose_base(bases, &have);
    let out = root.join("fastr-out");
    // Leftovers of an earlier round (its stream sent or abandoned).
    for f in list_files(&out) {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if disks
            .iter()
            .any(|(v, _)| name.starts_with(&format!("{v}@")))
        {
            let _ = std::fs::remove_file(&f);
        }
    }
    let mut files = Vec::new();
    let mut actions = Vec::new();
    for (i, ((v, _), top)) in disks.iter().zip(&tops).enumerate() {
        let file = prepared(root, v, tag);
        let zero = out.join(format!("{v}@{tag}.zero.qcow2"));
        let _ = std::fs::remove_file(&file);
        let _ = std::fs::remove_file(&zero);
        qcow2::create(&zero, top.size, None).map_err(|e| io(op, v, e))?;
        if base.is_some() {
            // What changed is a few clusters: small clusters keep the
            // file's metadata (a cluster each for the header, refcounts,
            // L1, and an L2 per region written) from outweighing them.
            let (f, z) = (file.display().to_string(), zero.display().to_string());
            let size = top.size.to_string();
            cmd::run(
                "qemu-img",
                &[
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-o",
                    DELTA_CLUSTER,
                    "-b",
                    &z,
                    "-F",
                    "qcow2",
                    &f,
                    &size,
                ],
                TIMEOUT,
            )
            .map_err(|e| e.into_driver(op, v))?;
        } else {
            qcow2::create(&file, top.size, Some(&zero)).map_err(|e| io(op, v, e))?;
        }
        files.push((file.clone(), zero));
        let (job, node) = (format!("fastr-j{i}"), format!("fastr-t{i}"));
        // A round cut short (the node restarted) may have left its job
        // and target behind.
        let _ = q.execute("job-cancel", Some(json!({"id": job}))).await;
        let _ = q.execute("job-dismiss", Some(json!({"id": job}))).await;
        let _ = q
            .execute("blockdev-del", Some(json!({"node-name": node})))
            .await;
        let added = q
            .execute(
                "blockdev-add",
                Some(json!({
                    "driver": "qcow2",
                    "node-name": node,
                    "file": {"driver": "file", "filename": file},
                })),
            )
            .await;
        if let Err(e) = added {
            cleanup(&mut q, &files, disks.len(), None).await;
            return Err(qmp_err(op, v, e));
        }
        // Bitmaps QEMU found inconsistent (it was killed) can never be
        // a base: they go, and the receivers that held their points get
        // the whole disks this round.
        for b in &top.stale {
            let _ = q
                .execute(
                    "block-dirty-bitmap-remove",
                    Some(json!({"node": top.node, "name": b})),
                )
                .await;
        }
        // Persistent: QEMU writes it into the image when it closes it
        // (a VM stopped or restarted), and loads it when it opens the
        // image again, so a restart costs no whole-disk round.
        actions.push(json!({"type": "block-dirty-bitmap-add",
            "data": {"node": top.node, "name": tag, "persistent": true}}));
        let mut backup = json!({"job-id": job, "device": top.node, "target": node,
            "sync": "full", "auto-dismiss": false});
        if let Some(b) = &base {
            backup["sync"] = json!("bitmap");
            backup["bitmap"] = json!(b);
            backup["bitmap-mode"] = json!("never");
        }
        actions.push(json!({"type": "blockdev-backup", "data": backup}));
    }
    if let Err(e) = q
        .execute("transaction", Some(json!({"actions": actions})))
        .await
    {
        cleanup(&mut q, &files, disks.len(), None).await;
        return Err(qmp_err(op, first, e));
    }
    // The monitor serves one client at a time: free it for the node's
    // other users (its VM's state, written bytes) while the jobs run.
    drop(q);
    let waited = wait_jobs(&d0.socket, disks.len()).await;
    let mut q = connect(op, first, &d0.socket).await?;
    let tops_now: Vec<String> = tops.iter().map(|t| t.node.clone()).collect();
    match waited {
        Ok(()) => {
            cleanup(&mut q, &[], disks.len(), None).await;
            for (_, zero) in &files {
                let _ = std::fs::remove_file(zero);
            }
            Ok(base)
        }
        Err(e) => {
            cleanup(&mut q, &files, disks.len(), Some((&tops_now, tag))).await;
            Err(qmp_err(op, first, e))
        }
    }
}

/// Wait for backup jobs `fastr-j0..n` to end (connecting for each look);
/// the first error.
async fn wait_jobs(socket: &Path, n: usize) -> Result<(), String> {
    let t = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut q = Qmp::connect(socket, Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        let jobs = q
            .execute("query-jobs", None)
            .await
            .map_err(|e| e.to_string())?;
        drop(q);
        let ours: Vec<&Value> = jobs
            .as_array()
            .into_iter()
            .flatten()
            .filter(|j| {
                j["id"]
                    .as_str()
                    .is_some_and(|id| (0..n).any(|i| id == format!("fastr-j{i}")))
            })
            .collect();
        if let Some(e) = ours.iter().find_map(|j| j["error"].as_str()) {
            return Err(format!("backup job: {e}"));
        }
        if ours.len() == n && ours.iter().all(|j| j["status"] == "concluded") {
            return Ok(());
        }
        if ours.len() < n {
            return Err("a backup job vanished".into());
        }
        if t.elapsed() > TIMEOUT {
            return Err("backup jobs still running after 10 minutes".into());
        }
    }
}

/// Dismiss the jobs, remove the targets; delete `files`; remove the new
/// bitmap `tag` from `nodes` when given (a failed round).
async fn cleanup(
    q: &mut Qmp,
    files: &[(PathBuf, PathBuf)],
    n: usize,
    bitmap: Option<(&[String], &str)>,
) {
    for i in 0..n {
        let job = format!("fastr-j{i}");
        if bitmap.is_some() {
            let _ = q.execute("job-cancel", Some(json!({"id": job}))).await;
        }
        let _ = q.execute("job-dismiss", Some(json!({"id": job}))).await;
        let _ = q
            .execute(
                "blockdev-del",
                Some(json!({"node-name": format!("fastr-t{i}")})),
            )
            .await;
    }
    if let Some((nodes, tag)) = bitmap {
        for node in nodes {
            let _ = q
                .execute(
                    "block-dirty-bitmap-remove",
                    Some(json!({"node": node, "name": tag})),
                )
                .await;
        }
    }
    for (f, z) in files {
        let _ = std::fs::remove_file(f);
        let _ = std::fs::remove_file(z);
    }
}

/// The base for receivers holding `bases` (`None`: one holds no point):
/// the oldest, when every disk has its bitmap; `None` (whole disks) when
/// a receiver holds no point this QEMU tracks.
fn choose_base(bases: &[Option<String>], have: &[&[String]]) -> Option<String> {
    let mut oldest: Option<&String> = None;
    for b in bases {
        let b = b.as_ref()?;
        if !have.iter().all(|bm| bm.contains(b)) {
            return None;
        }
        if oldest.is_none_or(|o| point_ms(o) > point_ms(b)) {
            oldest = Some(b);
        }
    }
    oldest.cloned()
}

/// When point `tag` was taken (unix ms).
pub fn point_ms(tag: &str) -> Option<u64> {
    tag.strip_prefix(FASTR_TAG)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_is_the_oldest_point_every_disk_tracks_else_whole_disks() {
        let p = |s: &str| Some(s.to_string());
        let both = ["fastr-10".to_string(), "fastr-20".to_string()];
        let one = ["fastr-20".to_string()];
        let have: [&[String]; 2] = [&both, &both];
        assert_eq!(
            choose_base(&[p("fastr-20"), p("fastr-10")], &have),
            p("fastr-10")
        );
        assert_eq!(choose_base(&[p("fastr-20")], &have), p("fastr-20"));
        // A receiver with no point, or a point a disk lost: whole disks.
        assert_eq!(choose_base(&[p("fastr-20"), None], &have), None);
        assert_eq!(choose_base(&[p("fastr-10")], &[&both, &one]), None);
        assert_eq!(choose_base(&[p("fastr-5")], &have), None);
    }

    #[test]
    fn point_layers_are_told_by_name() {
        let t = |s: &str| layer_tag(Path::new(s));
        assert_eq!(
            t("/s/layers/point.fastr-12.ab.3.qcow2"),
            Some("fastr-12".into())
        );
        assert_eq!(t("/s/layers/fastr.vm-a.ab.3.qcow2"), None);
        assert_eq!(t("/s/layers/point.xfer-1.ab.qcow2"), None);
        assert!(is_copy("fastr.vm-default-a-data"));
        assert!(!is_copy("vm-default-a-data"));
    }
}
