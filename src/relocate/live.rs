//! The live data path of a relocation between two QEMUs (the qemu
//! driver): disks mirrored to the receiver's NBD export while the guest
//! runs, then memory migrated, then the switch.
//!
//! The receiver runs the sender's command line with its own fresh disks
//! (same node names, same sizes) plus `-S -incoming defer`: it waits,
//! paused, for the migration stream and does not run guest code until
//! [`live_copy`] says `cont`. The sequence (QMP; what
//! `../shared/recipes/live-migration.md` measured, made safe for the
//! switch):
//!
//! ```text
//! receiver: nbd-server-start ADDR; block-export-add (per disk, writable)
//! sender:   blockdev-add nbd target (per disk);
//!           blockdev-mirror sync=full copy-mode=write-blocking
//!           ... every disk BLOCK_JOB_READY (from now on a guest write
//!               completes only once it is on both sides)
//! sender:   migrate-set-parameters downtime-limit, max-bandwidth
//! receiver: migrate-incoming URI;  sender: migrate URI
//!           ... query-migrate until "completed" (every 2 ms near the
//!               end; the sender is paused)
//! sender:   block-job-cancel (per disk: a ready mirror stops with the
//!           target in sync), waited until concluded
//! receiver: cont, query-status until running          <- the switch
//!           then block-export-del; nbd-server-stop
//! sender:   (beside the receiver's cont) job-dismiss; blockdev-del the
//!           targets
//! ```
//!
//! Guest code runs on exactly one side at every moment: the sender until
//! migration completes (QEMU pauses it for the final copy and leaves it
//! paused), the receiver only after `cont`, which comes after every
//! mirror has stopped with its target in sync, so the receiver never
//! sees a write it will not keep and the sender never writes again.
//! Any failure before `cont` leaves the sender as it was or paused (then
//! [`abort`] resumes it) and the receiver paused, never started: the
//! caller kills the receiver and deletes its disks.
//!
//! Data sent: each disk's allocated data once (zero ranges are sent as
//! NBD write-zeroes, without payload), the guest's writes during the copy
//! once more, and the memory with its dirtied pages.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::qemu::overlay;
use crate::qemu::qmp::{Qmp, QmpError};

/// What to move and how.
#[derive(Debug, Clone)]
pub struct LivePlan {
    /// Block node names of the disks (the same on both sides).
    pub disks: Vec<String>,
    /// Where the receiver's NBD server listens.
    pub nbd_listen: SocketAddr,
    /// Where the sender's QEMU connects to reach it (the same address, or
    /// the sender's end of a tunnel to it).
    pub nbd_connect: SocketAddr,
    /// Where the receiver takes the migration stream.
    pub migration_listen: SocketAddr,
    /// Where the sender's QEMU sends it.
    pub migration_connect: SocketAddr,
    /// The longest pause of the guest QEMU may plan for the final copy.
    pub downtime_limit_ms: u64,
    /// Cap on the memory stream, bytes per second (`None`: QEMU's
    /// default).
    pub max_bandwidth: Option<u64>,
    /// Give up if the disks are not in sync within this.
    pub mirror_timeout: Duration,
    /// Give up if memory has not converged within this.
    pub migrate_timeout: Duration,
}

/// Where a live copy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveStage {
    /// Disks are copied while the guest runs.
    Mirroring,
    /// Memory is copied while the guest runs.
    Migrating,
    /// The guest is paused on the sender; the receiver takes over.
    Switching,
}

/// Progress, reported as the copy goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveProgress {
    /// Stage.
    pub stage: LiveStage,
    /// Disk bytes in sync, over all disks.
    pub disk_done: u64,
    /// Disk bytes to bring in sync (grows as the guest writes).
    pub disk_total: u64,
    /// Memory bytes sent.
    pub ram_sent: u64,
    /// Memory bytes left (dirty).
    pub ram_remaining: u64,
    /// Memory pages dirtied per second, as QEMU measures it.
    pub dirty_pages_rate: u64,
}

/// What a completed live copy took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveOutcome {
    /// From the first command to the receiver running.
    pub total_ms: u64,
    /// Disks in sync (every mirror ready) after this.
    pub mirror_ready_ms: u64,
    /// QEMU's own measure of the final pause of memory migration.
    pub qemu_downtime_ms: u64,
    /// From migration complete (sender paused) to the receiver's `cont`
    /// answered: what the switch adds to QEMU's downtime.
    pub switch_ms: u64,
    /// Disk bytes the mirrors moved (their progress, zero ranges
    /// included).
    pub disk_bytes: u64,
    /// Memory bytes the migration stream carried.
    pub ram_bytes: u64,
}

/// Why a live copy stopped.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// A QMP command failed or QEMU went away.
    #[error("{side}: {source}")]
    Qmp {
        /// `sender` or `receiver`.
        side: &'static str,
        /// The cause.
        source: QmpError,
    },
    /// A mirror failed or did not get in sync in time.
    #[error("disk {disk}: {why}")]
    Mirror {
        /// The disk.
        disk: String,
        /// What happened.
        why: String,
    },
    /// Memory migration failed or did not converge in time.
    #[error("memory migration: {0}")]
    Migration(String),
}

fn job_id(disk: &str) -> String {
    format!("reloc-{disk}")
}

fn target_node(disk: &str) -> String {
    format!("reloc-target-{disk}")
}

/// The block node of each disk in one QEMU: the root node of the device
/// the qemu driver calls `disk-NAME` and libvirt `ua-disk-NAME` (libvirt
/// names its nodes itself); the disk's name, which is the qemu driver's
/// node name, when no device matches.
async fn disk_nodes(
    qmp: &mut Qmp,
    side: &'static str,
    disks: &[String],
) -> Result<Vec<String>, LiveError> {
    let block = run(qmp, side, "query-block", None).await?;
    Ok(disks
        .iter()
        .map(|disk| node_of(&block, disk).unwrap_or_else(|| disk.clone()))
        .collect())
}

/// Disk `disk`'s root node in a `query-block` answer.
fn node_of(block: &Value, disk: &str) -> Option<String> {
    let ids = [format!("disk-{disk}"), format!("ua-disk-{disk}")];
    block.as_array()?.iter().find_map(|b| {
        let qdev = b["qdev"].as_str()?;
        let id = qdev
            .strip_prefix("/machine/peripheral/")
            .map_or(qdev, |p| p.split('/').next().unwrap_or(p));
        ids.iter()
            .any(|x| x == id)
            .then(|| b["inserted"]["node-name"].as_str().map(str::to_string))?
    })
}

async fn run(
    qmp: &mut Qmp,
    side: &'static str,
    command: &str,
    args: Option<Value>,
) -> Result<Value, LiveError> {
    qmp.execute(command, args)
        .await
        .map_err(|source| LiveError::Qmp { side, source })
}

/// Sum of the mirrors' progress: (done, total), and a job that ended or
/// failed, if any.
async fn mirror_progress(
    sender: &mut Qmp,
    plan: &LivePlan,
) -> Result<(u64, u64, bool, Option<(String, String)>), LiveError> {
    let jobs = run(sender, "sender", "query-block-jobs", None).await?;
    let (mut done, mut total, mut ready) = (0, 0, true);
    for disk in &plan.disks {
        let id = job_id(disk);
        let Some(j) = jobs
            .as_array()
            .and_then(|a| a.iter().find(|j| j["device"] == id.as_str()))
        else {
            return Ok((
                done,
                total,
                false,
                Some((disk.clone(), "the mirror job ended".into())),
            ));
        };
        done += j["offset"].as_u64().unwrap_or(0);
        total += j["len"].as_u64().unwrap_or(0);
        ready &= j["ready"].as_bool().unwrap_or(false);
        if let Some(e) = j.get("error").and_then(Value::as_str) {
            return Ok((done, total, false, Some((disk.clone(), e.to_string()))));
        }
    }
    Ok((done, total, ready, None))
}

/// Move the running guest from `sender` to `receiver` (see the module
/// doc), both QMPs in this process. `progress` is called about every
/// 100 ms. On error, call [`abort`] before anything else. Across nodes,
/// [`super::session`] runs the same steps, each side driving its own
/// QEMU.
pub async fn live_copy(
    sender: &mut Qmp,
    receiver: &mut Qmp,
    plan: &LivePlan,
    mut progress: impl FnMut(LiveProgress),
) -> Result<LiveOutcome, LiveError> {
    let t0 = Instant::now();
    receiver_export(receiver, plan).await?;
    let disk_bytes = sender_mirror(sender, plan, &mut progress).await?;
    let mirror_ready_ms = t0.elapsed().as_millis() as u64;
    receiver_incoming(receiver, plan).await?;
    let info = sender_migrate(sender, plan, disk_bytes, &mut progress).await?;
    let switch_start = Instant::now();
    let disk_bytes = sender_release(sender, plan, disk_bytes, &info, &mut progress).await?;
    receiver_switch(receiver, plan).await?;
    sender_tidy(sender, plan).await;
    Ok(outcome(
        t0,
        mirror_ready_ms,
        switch_start,
        disk_bytes,
        &info,
    ))
}

/// What a completed copy took, from QEMU's migration info.
pub fn outcome(
    t0: Instant,
    mirror_ready_ms: u64,
    switch_start: Instant,
    disk_bytes: u64,
    info: &Value,
) -> LiveOutcome {
    LiveOutcome {
        total_ms: t0.elapsed().as_millis() as u64,
        mirror_ready_ms,
        qemu_downtime_ms: info["downtime"].as_u64().unwrap_or(0),
        switch_ms: switch_start.elapsed().as_millis() as u64,
        disk_bytes,
        ram_bytes: info["ram"]["transferred"].as_u64().unwrap_or(0),
    }
}

/// Receiver, step 1: its disks are opened inactive (-incoming); they are
/// its own files, not shared with the sender, so it may write them now:
/// activate them, then export them over NBD.
pub async fn receiver_export(receiver: &mut Qmp, plan: &LivePlan) -> Result<(), LiveError> {
    run(
        receiver,
        "receiver",
        "blockdev-set-active",
        Some(json!({"active": true})),
    )
    .await?;
    run(
        receiver,
        "receiver",
        "nbd-server-start",
        Some(json!({"addr": {"type": "inet", "data": {
            "host": plan.nbd_listen.ip().to_string(),
            "port": plan.nbd_listen.port().to_string()}}})),
    )
    .await?;
    let nodes = disk_nodes(receiver, "receiver", &plan.disks).await?;
    for (disk, node) in plan.disks.iter().zip(nodes) {
        run(
            receiver,
            "receiver",
            "block-export-add",
            Some(json!({"type": "nbd", "id": job_id(disk), "node-name": node,
                "name": disk, "writable": true, "allow-inactive": true})),
        )
        .await?;
    }
    Ok(())
}

/// Receiver, step 2: take the migration stream.
pub async fn receiver_incoming(receiver: &mut Qmp, plan: &LivePlan) -> Result<(), LiveError> {
    let incoming = format!("tcp:{}", plan.migration_listen);
    run(
        receiver,
        "receiver",
        "migrate-incoming",
        Some(json!({"uri": incoming})),
    )
    .await?;
    Ok(())
}

/// Receiver, step 3, the switch: every mirror write was acknowledged
/// before the sender's jobs concluded, so nothing is in flight and only
/// a job writes through the sender's NBD connection: the guest runs here
/// at once, then the exports are removed (cutting that connection, whose
/// close may still be crossing the tunnel).
pub async fn receiver_switch(receiver: &mut Qmp, plan: &LivePlan) -> Result<(), LiveError> {
    // The guest first: the sender's mirrors are gone (cancelled in sync
    // before Switch), so nothing writes into the exports any more, and
    // removing them can wait until the guest runs (two QMP round trips
    // less in the guest's pause).
    run(receiver, "receiver", "cont", None).await?;
    // The sender's migration can complete before this side has loaded
    // the last device state: `cont` then only marks the guest to start
    // once loaded. "Running" is said only once it runs; if it never
    // does, the caller kills this QEMU (its guest never ran) and the
    // sender resumes.
    let until = Instant::now() + SWITCH_LOAD_TIMEOUT;
    loop {
        let st = run(receiver, "receiver", "query-status", None).await?;
        if st["running"] == true {
            break;
        }
        if Instant::now() >= until {
            return Err(LiveError::Migration(format!(
                "the receiver did not run the guest within {SWITCH_LOAD_TIMEOUT:?} of cont (status {})",
                st["status"]
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The guest runs here now: what is left is tidying, never a failure.
    for disk in &plan.disks {
        let id = job_id(disk);
        if let Err(e) = run(
            receiver,
            "receiver",
            "block-export-del",
            Some(json!({"id": id, "mode": "hard"})),
        )
        .await
        {
            tracing::warn!(export = %id, error = %e, "the guest runs; its NBD export was not removed");
        }
    }
    if let Err(e) = run(receiver, "receiver", "nbd-server-stop", None).await {
        tracing::warn!(error = %e, "the guest runs; the NBD server was not stopped");
    }
    Ok(())
}

/// How long the receiver may take to finish loading the guest's state
/// after `cont`.
const SWITCH_LOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Sender, step 1: mirror each disk into the receiver's export until all
/// are in sync; the bytes moved.
pub async fn sender_mirror(
    sender: &mut Qmp,
    plan: &LivePlan,
    progress: &mut impl FnMut(LiveProgress),
) -> Result<u64, LiveError> {
    let nodes = disk_nodes(sender, "sender", &plan.disks).await?;
    for (disk, node) in plan.disks.iter().zip(nodes) {
        // On a transfer overlay, the volume below is on the receiver
        // already (streamed): only the overlay's clusters go.
        let sync = if node == overlay::node(disk) {
            "top"
        } else {
            "full"
        };
        run(
            sender,
            "sender",
            "blockdev-add",
            Some(json!({"driver": "nbd", "node-name": target_node(disk),
                "server": {"type": "inet", "host": plan.nbd_connect.ip().to_string(),
                           "port": plan.nbd_connect.port().to_string()},
                "export": disk})),
        )
        .await?;
        run(
            sender,
            "sender",
            "blockdev-mirror",
            Some(
                json!({"job-id": job_id(disk), "device": node, "target": target_node(disk),
                "sync": sync, "copy-mode": "write-blocking", "auto-dismiss": false}),
            ),
        )
        .await?;
    }
    let deadline = Instant::now() + plan.mirror_timeout;
    loop {
        let (done, total, ready, failed) = mirror_progress(sender, plan).await?;
        if let Some((disk, why)) = failed {
            return Err(LiveError::Mirror { disk, why });
        }
        progress(LiveProgress {
            stage: LiveStage::Mirroring,
            disk_done: done,
            disk_total: total,
            ram_sent: 0,
            ram_remaining: 0,
            dirty_pages_rate: 0,
        });
        if ready {
            return Ok(done);
        }
        if Instant::now() >= deadline {
            return Err(LiveError::Mirror {
                disk: plan.disks.join(","),
                why: format!("not in sync within {:?}", plan.mirror_timeout),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sender, step 2 (the receiver takes the stream): migrate memory until
/// QEMU completes (the sender is then paused for good); QEMU's final
/// migration info.
pub async fn sender_migrate(
    sender: &mut Qmp,
    plan: &LivePlan,
    disk_bytes: u64,
    progress: &mut impl FnMut(LiveProgress),
) -> Result<Value, LiveError> {
    let mut params = json!({"downtime-limit": plan.downtime_limit_ms});
    if let Some(bw) = plan.max_bandwidth {
        params["max-bandwidth"] = json!(bw);
    }
    run(sender, "sender", "migrate-set-parameters", Some(params)).await?;
    let uri = format!("tcp:{}", plan.migration_connect);
    run(sender, "sender", "migrate", Some(json!({"uri": uri}))).await?;
    let deadline = Instant::now() + plan.migrate_timeout;
    loop {
        let info = run(sender, "sender", "query-migrate", None).await?;
        let ram = &info["ram"];
        progress(LiveProgress {
            stage: LiveStage::Migrating,
            disk_done: disk_bytes,
            disk_total: disk_bytes,
            ram_sent: ram["transferred"].as_u64().unwrap_or(0),
            ram_remaining: ram["remaining"].as_u64().unwrap_or(0),
            dirty_pages_rate: ram["dirty-pages-rate"].as_u64().unwrap_or(0),
        });
        match info["status"].as_str() {
            Some("completed") => return Ok(info),
            Some("failed") | Some("cancelled") => {
                return Err(LiveError::Migration(
                    info["error-desc"].as_str().unwrap_or("failed").to_string(),
                ))
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(LiveError::Migration(format!(
                "not converged within {:?}",
                plan.migrate_timeout
            )));
        }
        // The guest's pause runs from QEMU's last pass until the
        // receiver's `cont`, so its end is looked for closely once little
        // is left (or the device state is on its way).
        let near_end =
            info["status"] != "active" || ram["remaining"].as_u64().unwrap_or(0) < NEAR_END_BYTES;
        let nap = if near_end { 2 } else { 20 };
        tokio::time::sleep(Duration::from_millis(nap)).await;
    }
}

/// Memory left below which the sender polls its migration every 2 ms
/// rather than 20 (QEMU's last pass moves about this much within its
/// downtime limit on a fast link).
const NEAR_END_BYTES: u64 = 32 << 20;

/// Sender, step 3 (it is paused): stop the mirrors with their targets in
/// sync; the disk bytes moved in all. Their NBD clients stay until
/// [`sender_tidy`], which may come after the receiver was told to run:
/// a concluded job writes nothing more.
pub async fn sender_release(
    sender: &mut Qmp,
    plan: &LivePlan,
    disk_bytes: u64,
    info: &Value,
    progress: &mut impl FnMut(LiveProgress),
) -> Result<u64, LiveError> {
    let (done, _, _, _) = mirror_progress(sender, plan).await?;
    let disk_bytes = disk_bytes.max(done);
    for disk in &plan.disks {
        run(
            sender,
            "sender",
            "block-job-cancel",
            Some(json!({"device": job_id(disk)})),
        )
        .await?;
    }
    for disk in &plan.disks {
        wait_job_concluded(sender, disk).await?;
    }
    progress(LiveProgress {
        stage: LiveStage::Switching,
        disk_done: disk_bytes,
        disk_total: disk_bytes,
        ram_sent: info["ram"]["transferred"].as_u64().unwrap_or(0),
        ram_remaining: 0,
        dirty_pages_rate: 0,
    });
    Ok(disk_bytes)
}

/// Sender, after [`sender_release`]: dismiss the concluded mirror jobs
/// and remove their NBD clients. The guest's data is on the receiver
/// already, so a failure here is only logged.
pub async fn sender_tidy(sender: &mut Qmp, plan: &LivePlan) {
    for disk in &plan.disks {
        let dismissed = sender
            .execute("job-dismiss", Some(json!({"id": job_id(disk)})))
            .await;
        let deleted = sender
            .execute(
                "blockdev-del",
                Some(json!({"node-name": target_node(disk)})),
            )
            .await;
        if let Err(e) = dismissed.and(deleted) {
            tracing::warn!(disk = %disk, error = %e, "a stopped mirror's job or NBD client was not removed");
        }
    }
}

/// Wait until the job of `disk` is concluded (a cancelled ready mirror
/// first drains what is in flight).
async fn wait_job_concluded(sender: &mut Qmp, disk: &str) -> Result<(), LiveError> {
    let id = job_id(disk);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let jobs = run(sender, "sender", "query-jobs", None).await?;
        let status = jobs.as_array().and_then(|a| {
            a.iter()
                .find(|j| j["id"] == id.as_str())
                .map(|j| j["status"].as_str().unwrap_or("").to_string())
        });
        match status.as_deref() {
            Some("concluded") | None => return Ok(()),
            _ if Instant::now() >= deadline => {
                return Err(LiveError::Mirror {
                    disk: disk.into(),
                    why: "the mirror did not stop within 30 s".into(),
                })
            }
            // In the guest's pause: looked at closely.
            _ => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// A disk's row in a `query-block` answer: (root node, the image's file
/// name, its format, its virtual size).
fn image_of(block: &Value, disk: &str) -> Option<(String, String, String, u64)> {
    let node = node_of(block, disk)?;
    let row = block
        .as_array()?
        .iter()
        .find(|b| b["inserted"]["node-name"] == node.as_str())?;
    let image = &row["inserted"]["image"];
    Some((
        node,
        image["filename"].as_str()?.to_string(),
        image["format"].as_str()?.to_string(),
        image["virtual-size"].as_u64()?,
    ))
}

/// Sender, before a volume stream: put a transfer overlay (in runtime
/// directory `dir`) on top of each disk, so the guest writes there from
/// now on and each volume holds still for its transfer point. Overlays a
/// previous attempt left are folded first. Returns each disk's volume
/// file (to flush before the point is taken).
pub async fn sender_overlays(
    sender: &mut Qmp,
    disks: &[String],
    dir: &Path,
) -> Result<Vec<String>, LiveError> {
    fold_overlays(sender, disks).await?;
    let block = run(sender, "sender", "query-block", None).await?;
    let mut bases = Vec::new();
    for disk in disks {
        let fail = |why: String| LiveError::Mirror {
            disk: disk.clone(),
            why,
        };
        let (top, base, format, size) =
            image_of(&block, disk).ok_or_else(|| fail("not found in query-block".into()))?;
        let file = overlay::path(dir, disk);
        overlay::create(&file, &base, &format, size)
            .await
            .map_err(fail)?;
        run(
            sender,
            "sender",
            "blockdev-add",
            Some(json!({"driver": "qcow2", "node-name": overlay::node(disk),
                "file": {"driver": "file", "filename": file}, "backing": null})),
        )
        .await?;
        run(
            sender,
            "sender",
            "blockdev-snapshot",
            Some(json!({"node": top, "overlay": overlay::node(disk)})),
        )
        .await?;
        bases.push(base);
    }
    Ok(bases)
}

/// Fold each disk's transfer overlay, if it runs on one, back into its
/// volume while the guest runs (active `block-commit`, completed once in
/// sync), and drop the overlay's node. The caller deletes the files.
pub async fn fold_overlays(sender: &mut Qmp, disks: &[String]) -> Result<(), LiveError> {
    let block = run(sender, "sender", "query-block", None).await?;
    for disk in disks {
        let ov = overlay::node(disk);
        if node_of(&block, disk).as_deref() != Some(ov.as_str()) {
            continue;
        }
        let id = format!("fold-{disk}");
        run(
            sender,
            "sender",
            "block-commit",
            Some(json!({"job-id": id, "device": ov, "auto-dismiss": false})),
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut completed = false;
        loop {
            let jobs = run(sender, "sender", "query-jobs", None).await?;
            let job = jobs
                .as_array()
                .and_then(|a| a.iter().find(|j| j["id"] == id.as_str()).cloned())
                .unwrap_or(Value::Null);
            match job["status"].as_str() {
                Some("ready") if !completed => {
                    run(sender, "sender", "job-complete", Some(json!({"id": id}))).await?;
                    completed = true;
                }
                Some("concluded") | None => {
                    let _ = sender.execute("job-dismiss", Some(json!({"id": id}))).await;
                    if let Some(e) = job["error"].as_str() {
                        return Err(LiveError::Mirror {
                            disk: disk.clone(),
                            why: format!("folding the transfer overlay back: {e}"),
                        });
                    }
                    break;
                }
                _ if Instant::now() >= deadline => {
                    return Err(LiveError::Mirror {
                        disk: disk.clone(),
                        why: "the transfer overlay was not folded back within 600 s".into(),
                    })
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        run(
            sender,
            "sender",
            "blockdev-del",
            Some(json!({"node-name": ov})),
        )
        .await?;
    }
    Ok(())
}

/// Undo a live copy that failed before the switch: stop the migration
/// and the mirrors on the sender and let its guest run again. The
/// receiver never ran guest code; the caller kills it and deletes its
/// disks. Best effort: each step is tried whatever the previous gave.
pub async fn abort(sender: &mut Qmp, plan: &LivePlan) -> Vec<String> {
    let mut notes = Vec::new();
    let mut note = |what: &str, r: Result<Value, QmpError>| {
        if let Err(e) = r {
            notes.push(format!("{what}: {e}"));
        }
    };
    note(
        "migrate_cancel",
        sender.execute("migrate_cancel", None).await,
    );
    let jobs = sender.execute("query-jobs", None).await.unwrap_or_default();
    for disk in &plan.disks {
        let id = job_id(disk);
        let status = jobs.as_array().and_then(|a| {
            a.iter()
                .find(|j| j["id"] == id.as_str())
                .and_then(|j| j["status"].as_str())
        });
        // A job that failed (or never started) has nothing to cancel.
        if status.is_some_and(|s| s != "concluded") {
            let r = sender
                .execute(
                    "block-job-cancel",
                    Some(json!({"device": id, "force": true})),
                )
                .await;
            note("block-job-cancel", r);
        }
        let _ = wait_job_concluded(sender, disk).await;
        let _ = sender.execute("job-dismiss", Some(json!({"id": id}))).await;
        let target = target_node(disk);
        let added = sender
            .execute("query-named-block-nodes", Some(json!({"flat": true})))
            .await
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .any(|n| n["node-name"] == target.as_str());
        if added {
            let r = sender
                .execute("blockdev-del", Some(json!({"node-name": target})))
                .await;
            note("blockdev-del", r);
        }
    }
    // A sender paused by the migration's last phase runs again.
    if let Ok(s) = sender.execute("query-status", None).await {
        if s["running"] != true {
            note("cont", sender.execute("cont", None).await);
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `query-block` as QEMU 10 answers it: a qemu-driver disk (node named
    /// after the disk) and a libvirt one (node named by libvirt).
    #[test]
    fn disks_are_found_by_their_device_under_either_driver() {
        let block = json!([
            {"device": "", "qdev": "/machine/peripheral/disk-root/virtio-backend",
             "inserted": {"node-name": "root"}},
            {"device": "", "qdev": "/machine/peripheral/ua-disk-data/virtio-backend",
             "inserted": {"node-name": "libvirt-1-format"}},
            {"device": "", "qdev": "ua-disk-scratch", "inserted": {"node-name": "libvirt-2-format"}},
            {"device": "", "qdev": "/machine/peripheral/ua-disk-database/virtio-backend",
             "inserted": {"node-name": "libvirt-3-format"}},
        ]);
        assert_eq!(node_of(&block, "root").as_deref(), Some("root"));
        assert_eq!(node_of(&block, "data").as_deref(), Some("libvirt-1-format"));
        assert_eq!(
            node_of(&block, "scratch").as_deref(),
            Some("libvirt-2-format")
        );
        assert_eq!(
            node_of(&block, "database").as_deref(),
            Some("libvirt-3-format")
        );
        assert_eq!(node_of(&block, "nope"), None);
        assert_eq!(node_of(&json!({}), "root"), None);
    }
}
