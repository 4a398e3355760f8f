//! FASTR copy points on `dir` (qcow2) storage, against a real QEMU
//! holding two disks (paused: no guest runs, the test writes through
//! QEMU's block layer with `qemu-io`): a point of both disks is one QMP
//! transaction, the first stream is the whole disks and the next only
//! the clusters written since; the receiver's points read exactly what
//! the disks held at their instants; a cut stream never becomes a point
//! and leaves the previous one intact; dropping an older point keeps the
//! newer one's view, a point a clone is backed by stays, and an
//! interrupted drop is finished when the storage opens again. Points
//! outlive a QEMU that quits and starts again (persistent bitmaps), also
//! across a replica taken while it is stopped; a
//! QEMU killed costs one whole round, never a wrong one.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use deorch::driver::dir::DirStorage;
use deorch::driver::qemu::QemuHypervisor;
use deorch::driver::{LiveDisks, Storage};
use deorch::qemu::probe::Accel;
use deorch::qemu::qmp::Qmp;

const VM: &str = "default/t";
const MI: u64 = 1 << 20;

struct Qemu(std::process::Child);
impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run `qemu-io ARGS` in QEMU (through its monitor): its report goes to
/// QEMU's standard output; an error comes back here.
async fn qemu_io(q: &mut Qmp, args: String) {
    let out = q
        .execute(
            "human-monitor-command",
            Some(serde_json::json!({ "command-line": format!("qemu-io {args}") })),
        )
        .await
        .unwrap();
    assert_eq!(out.as_str(), Some(""), "{out}");
}

/// Write `pattern` at `offset..offset+len` of node `node` through QEMU.
async fn write(q: &mut Qmp, node: &str, pattern: u8, offset: u64, len: u64) {
    qemu_io(
        q,
        format!("{node} \"write -P {pattern:#x} {offset} {len}\""),
    )
    .await;
}

/// Disk a's device, as `qemu-io -d` names it: writes through it go to the
/// disk's current top node.
const DEV_A: &str = "-d /machine/peripheral/disk-a/virtio-backend";

/// Whether the running disk a reads `pattern` at `offset..offset+len`
/// through QEMU (the guest's view), from qemu-io's report in QEMU's
/// standard output, the file `out`.
async fn qemu_reads(q: &mut Qmp, out: &Path, pattern: u8, offset: u64, len: u64) -> bool {
    let _ = std::fs::write(out, "");
    qemu_io(
        q,
        format!("{DEV_A} \"read -P {pattern:#x} {offset} {len}\""),
    )
    .await;
    let said = std::fs::read_to_string(out).unwrap_or_default();
    said.contains("read ") && !said.contains("failed")
}

/// Whether image `path` reads `pattern` at `offset..offset+len`.
fn reads(path: &Path, pattern: u8, offset: u64, len: u64) -> bool {
    let out = Command::new("qemu-io")
        .args(["-r", "-f", "qcow2", "-c"])
        .arg(format!("read -P {pattern:#x} {offset} {len}"))
        .arg(path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    out.status.success() && !text.contains("failed") && text.contains("read ")
}

/// Point `tag` of `volume` from the sender, based on `from`, into the
/// receiver's `copy`: the bytes sent. `cut`: only that many bytes of
/// the stream arrive (the sender dies), and the point is not finished.
async fn send(
    s: &DirStorage,
    r: &DirStorage,
    volume: &str,
    copy: &str,
    from: Option<&str>,
    tag: &str,
    cut: Option<usize>,
) -> Result<usize, String> {
    let argv = s
        .send_command(volume, from, tag)
        .await
        .map_err(|e| e.to_string())?;
    let out = Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
    assert!(out.status.success(), "{argv:?}");
    let mut bytes = out.stdout;
    let n = bytes.len();
    if let Some(c) = cut {
        bytes.truncate(c);
    }
    let argv = r.receive_command(copy).await.unwrap();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    assert!(child.wait().unwrap().success());
    if cut.is_none() {
        r.point_received(copy, tag)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(n)
}

fn volume_file(root: &Path, v: &str) -> PathBuf {
    root.join("volumes").join(format!("{v}.qcow2"))
}

/// QEMU holding `disks` (node name, volume of `root`) as the driver's
/// VM `default/t` under `vms` (paused: no guest runs), its standard
/// output into `out`, and the test's own monitor on it.
async fn start_qemu(
    dir: &Path,
    root: &Path,
    vms: &Path,
    disks: &[(&str, &str)],
    out: &Path,
) -> (Qemu, Qmp) {
    std::fs::create_dir_all(vms.join(VM)).unwrap();
    let sock = vms.join(VM).join("qmp.sock");
    let own = dir.join("test.sock");
    let _ = std::fs::remove_file(&own);
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "q35", "-accel", "tcg", "-S", "-nodefaults"])
        .args(["-display", "none"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        // Where the driver finds the QEMU of VM `default/t`.
        .arg("-pidfile")
        .arg(deorch::qemu::cmdline::pidfile(&vms.join(VM)))
        // The test's own monitor (QMP serves one client per socket).
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", own.display()));
    for (node, v) in disks {
        cmd.arg("-blockdev").arg(format!(
            "driver=qcow2,node-name={node},file.driver=file,file.filename={}",
            volume_file(root, v).display()
        ));
        cmd.args([
            "-device",
            &format!("virtio-blk-pci,drive={node},id=disk-{node},share-rw=on"),
        ]);
    }
    let qemu = Qemu(
        cmd.stdout(std::fs::File::create(out).unwrap())
            .spawn()
            .unwrap(),
    );
    let t = std::time::Instant::now();
    let q = loop {
        if let Ok(q) = Qmp::connect(&own, Duration::from_secs(1)).await {
            break q;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "QEMU's monitor");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    (qemu, q)
}

/// The two disks' volumes, and their copies on the receiver.
const VA: &str = "vm-default-t-a";
const VB: &str = "vm-default-t-b";
const CA: &str = "fastr.vm-default-t-a";
const CB: &str = "fastr.vm-default-t-b";

/// A replica of both disks: volumes `<name>-a` and `<name>-b`.
fn replica_of_both(name: &str) -> [deorch::driver::CloneRequest; 2] {
    [("a", VA), ("b", VB)].map(|(d, source)| deorch::driver::CloneRequest {
        volume: format!("{name}-{d}"),
        source: source.into(),
        size: None,
    })
}

/// A sender's and a receiver's storage under one test directory, the
/// sender holding disks a and b (16 MiB each) of VM `default/t`, which the
/// driver finds under `vms` once [`start_qemu`] runs it.
struct Rig {
    dir: PathBuf,
    sroot: PathBuf,
    rroot: PathBuf,
    vms: PathBuf,
    live: LiveDisks,
    vols: Vec<String>,
}

async fn rig(name: &str) -> (Rig, DirStorage, DirStorage) {
    let dir = common::temp_dir(name);
    let (sroot, rroot, vms) = (dir.join("s"), dir.join("r"), dir.join("vms"));
    let s = DirStorage::open(&sroot).unwrap();
    let r = DirStorage::open(&rroot).unwrap();
    s.create(VA, 16 * MI).await.unwrap();
    s.create(VB, 16 * MI).await.unwrap();
    let live = LiveDisks {
        volumes: [(VA, "a"), (VB, "b")]
            .into_iter()
            .map(|(v, d)| (v.to_string(), (VM.to_string(), d.to_string())))
            .collect(),
        hypervisor: Some(Arc::new(QemuHypervisor::new(
            "qemu-system-x86_64",
            &vms,
            Accel::Tcg,
        ))),
    };
    let vols = vec![VA.to_string(), VB.to_string()];
    let rig = Rig {
        dir,
        sroot,
        rroot,
        vms,
        live,
        vols,
    };
    (rig, s, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcow2_points_are_one_instant_incremental_and_survive_a_cut_stream() {
    if !common::qemu_available() {
        return;
    }
    let (rig, s, r) = rig("fastrdir").await;
    let Rig {
        dir,
        sroot: _,
        rroot,
        vms,
        live,
        vols,
    } = &rig;
    let (va, vb, ca, cb) = (VA, VB, CA, CB);
    let qemu_out = dir.join("qemu.out");
    let (_qemu, mut q) = start_qemu(dir, &rig.sroot, vms, &[("a", va), ("b", vb)], &qemu_out).await;
    write(&mut q, "a", 0x11, 0, 2 * MI).await;
    write(&mut q, "b", 0x22, MI, MI).await;

    // Point 1: no receiver holds anything: the whole disks.
    let p1 = "fastr-1000";
    s.mark_points_live(vols, p1, live, &[None]).await.unwrap();
    // Written after the point: not in it.
    write(&mut q, "a", 0x99, 0, MI).await;
    for (v, c) in [(va, ca), (vb, cb)] {
        send(&s, &r, v, c, None, p1, None).await.unwrap();
    }
    assert_eq!(r.points(ca).await.unwrap(), vec![p1]);
    let (fa, fb) = (volume_file(rroot, ca), volume_file(rroot, cb));
    assert!(
        reads(&fa, 0x11, 0, 2 * MI),
        "point 1 is the instant of the transaction"
    );
    assert!(reads(&fb, 0x22, MI, MI) && reads(&fb, 0, 0, MI));
    assert_eq!(s.points(va).await.unwrap(), vec![p1], "a bitmap per point");

    // Point 2, for a receiver holding point 1: only what was written.
    write(&mut q, "b", 0x33, 8 * MI, 64 << 10).await;
    let p2 = "fastr-2000";
    s.mark_points_live(vols, p2, live, &[Some(p1.into())])
        .await
        .unwrap();
    let e = s.send_command(va, None, p2).await.unwrap_err();
    assert!(e.to_string().contains("since fastr-1000"), "{e}");
    let na = send(&s, &r, va, ca, Some(p1), p2, None).await.unwrap();
    let nb = send(&s, &r, vb, cb, Some(p1), p2, None).await.unwrap();
    eprintln!("incremental streams: {na} and {nb} bytes");
    assert!(na < 5 * MI as usize / 4, "1 MiB written: {na} bytes sent");
    assert!(nb < 128 << 10, "64 KiB written: {nb} bytes sent");
    assert_eq!(r.points(ca).await.unwrap(), vec![p1, p2]);
    assert!(reads(&fa, 0x99, 0, MI) && reads(&fa, 0x11, MI, MI));
    assert!(reads(&fb, 0x22, MI, MI) && reads(&fb, 0x33, 8 * MI, 64 << 10));
    // The sender keeps the bitmap of the point its receiver holds now.
    s.drop_point(va, p1).await.unwrap();
    s.drop_point(vb, p1).await.unwrap();
    assert_eq!(s.points(va).await.unwrap(), vec![p2]);

    // A live replica switches both disks to new overlays: the bitmap of
    // point 2 follows them, so the next round is still incremental and
    // holds what was written on either side of the switch.
    // Two replicas in a row: the second moves a top that is itself an
    // overlay (with a backing node to keep).
    write(&mut q, "a", 0x55, 6 * MI, 64 << 10).await;
    for (i, pattern) in [(1, 0x56), (2, 0x57)] {
        s.clone_volumes_live(&replica_of_both(&format!("rep{i}")), live)
            .await
            .unwrap();
        // The guest's view after the switch: what it wrote before, into
        // the image it started on and into the overlay of each replica.
        for (at, p) in [(6, 0x55), (7, 0x56)].into_iter().take(i as usize) {
            assert!(
                qemu_reads(&mut q, &qemu_out, p, at * MI, 64 << 10).await,
                "replica {i}: the running disk reads {p:#x}, written before it"
            );
        }
        write(&mut q, DEV_A, pattern, (6 + i) * MI, 64 << 10).await;
    }
    assert_eq!(s.points(va).await.unwrap(), vec![p2], "the bitmap moved");
    assert_eq!(s.points(vb).await.unwrap(), vec![p2]);

    // Point 3: the sender dies half-way through the stream. The copy
    // keeps point 2, intact, also after the receiver restarts.
    write(&mut q, DEV_A, 0x44, 4 * MI, MI).await;
    let p3 = "fastr-3000";
    s.mark_points_live(vols, p3, live, &[Some(p2.into())])
        .await
        .unwrap();
    // More than 1 MiB was written: 300 KB is the middle of its stream.
    let full = send(&s, &r, va, ca, Some(p2), p3, Some(300_000))
        .await
        .unwrap();
    assert!(full > MI as usize, "{full}");
    let e = r.point_received(ca, p3).await;
    assert!(e.is_err(), "a cut stream is refused: {e:?}");
    assert_eq!(r.points(ca).await.unwrap(), vec![p1, p2]);
    drop(r);
    let r = DirStorage::open(rroot).unwrap();
    assert_eq!(r.points(ca).await.unwrap(), vec![p1, p2]);
    assert!(reads(&fa, 0x99, 0, MI) && reads(&fa, 0, 4 * MI, MI));
    // The next round (the same point, sent again) completes it.
    let na = send(&s, &r, va, ca, Some(p2), p3, None).await.unwrap();
    let nb = send(&s, &r, vb, cb, Some(p2), p3, None).await.unwrap();
    eprintln!("incremental streams across a live replica: {na} and {nb} bytes");
    assert!(
        na < 3 * MI as usize / 2,
        "1 MiB + 192 KiB written: {na} bytes sent"
    );
    assert!(nb < 128 << 10, "nothing written to b: {nb} bytes sent");
    assert!(reads(&fa, 0x44, 4 * MI, MI) && reads(&fa, 0x99, 0, MI));
    assert!(
        reads(&fa, 0x55, 6 * MI, 64 << 10),
        "written before the switch"
    );
    assert!(reads(&fa, 0x56, 7 * MI, 64 << 10) && reads(&fa, 0x57, 8 * MI, 64 << 10));

    // A clone of point 2 (no data copied), then the older points go:
    // point 1 is dropped (point 2 reads the same after), point 2 stays
    // while the clone is backed by it.
    r.clone_volumes(&[deorch::driver::CloneRequest {
        volume: "past".into(),
        source: format!("{ca}@{p2}"),
        size: None,
    }])
    .await
    .unwrap();
    let past = volume_file(rroot, "past");
    assert!(reads(&past, 0x99, 0, MI) && reads(&past, 0, 4 * MI, MI));
    r.drop_point(ca, p1).await.unwrap();
    assert_eq!(r.points(ca).await.unwrap(), vec![p2, p3]);
    assert!(reads(&past, 0x99, 0, MI) && reads(&past, 0x11, MI, MI));
    let e = r.drop_point(ca, p2).await.unwrap_err();
    assert!(e.to_string().contains("clone"), "{e}");
    assert!(r.drop_point(ca, p3).await.is_err(), "the newest stays");
    assert!(reads(&fa, 0x44, 4 * MI, MI) && reads(&fa, 0x11, MI, MI));

    // Rolled back to point 2 the copy reads it; recovery renames it into
    // a volume (an overlay on the point: nothing copied).
    r.rollback(ca, p2).await.unwrap();
    assert_eq!(r.points(ca).await.unwrap(), vec![p2]);
    assert!(reads(&fa, 0, 4 * MI, MI) && reads(&fa, 0x99, 0, MI));
    r.rename(ca, va).await.unwrap();
    let fv = volume_file(rroot, va);
    assert!(std::fs::metadata(&fv).unwrap().len() < MI, "an overlay");
    assert!(reads(&fv, 0x99, 0, MI));

    // An interrupted drop (a journal left, the commit done or not) is
    // finished when the storage opens: point 1 of copy b goes, point 2
    // reads as before.
    let jb = rroot.join("incoming").join(format!("{cb}.drop"));
    let chain_b: Vec<PathBuf> = {
        let mut v = Vec::new();
        let mut at = volume_file(rroot, cb);
        while let Some(b) = deorch::driver::qcow2::header(&at).unwrap().backing {
            v.push(b.clone());
            at = b;
        }
        v
    };
    assert_eq!(chain_b.len(), 3, "{chain_b:?}");
    let (p1_layer, p2_layer) = (&chain_b[2], &chain_b[1]);
    std::fs::write(
        &jb,
        format!("{}\n{}\n", p1_layer.display(), p2_layer.display()),
    )
    .unwrap();
    drop(r);
    let r = DirStorage::open(rroot).unwrap();
    assert!(!jb.exists());
    assert_eq!(r.points(cb).await.unwrap(), vec![p2, p3]);
    assert!(reads(&fb, 0x22, MI, MI) && reads(&fb, 0x33, 8 * MI, 64 << 10));

    // A bitmap the sender's QEMU lost (restarted): the base is not
    // there, so the round sends the whole disks.
    s.mark_points_live(vols, "fastr-4000", live, &[Some("fastr-1".into())])
        .await
        .unwrap();
    assert!(s.send_command(va, None, "fastr-4000").await.is_ok());
    let _ = std::fs::remove_dir_all(dir);
}

/// Stop QEMU as the driver does (`quit`: it closes its images cleanly).
async fn quit(mut qemu: Qemu, mut q: Qmp) {
    let _ = q.execute("quit", None).await;
    let t = std::time::Instant::now();
    while qemu.0.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(30), "QEMU quits");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether QEMU calls point `tag`'s bitmap on disk a's top persistent.
async fn persistent(q: &mut Qmp, tag: &str) -> bool {
    let blocks = q.execute("query-block", None).await.unwrap();
    let a = blocks
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["qdev"].as_str().is_some_and(|d| d.contains("disk-a")))
        .expect("disk a in query-block");
    a["inserted"]["dirty-bitmaps"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|m| m["name"] == tag && m["persistent"] == true)
}

/// A QEMU that quits and starts again keeps its points (QEMU stores the
/// bitmaps in the images and loads them back), also after a live replica
/// moved them to a new top: the next round is incremental. A QEMU that
/// is killed leaves bitmaps that may have missed writes: they are never
/// a base, and the next round sends the whole disks, correct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcow2_points_survive_a_restart_and_a_kill_costs_one_whole_round() {
    if !common::qemu_available() {
        return;
    }
    let (rig, s, r) = rig("fastrdir-restart").await;
    let Rig {
        dir,
        sroot,
        rroot,
        vms,
        live,
        vols,
    } = &rig;
    let (va, vb, ca, cb) = (VA, VB, CA, CB);
    let disks = [("a", va), ("b", vb)];
    let out = dir.join("qemu.out");
    let both = |from: Option<&'static str>, tag: &'static str| {
        let (s, r) = (&s, &r);
        async move {
            let na = send(s, r, va, ca, from, tag, None).await.unwrap();
            let nb = send(s, r, vb, cb, from, tag, None).await.unwrap();
            (na, nb)
        }
    };
    let fa = volume_file(rroot, ca);

    let (qemu, mut q) = start_qemu(dir, sroot, vms, &disks, &out).await;
    write(&mut q, DEV_A, 0x11, 0, 2 * MI).await;
    let p1 = "fastr-1000";
    s.mark_points_live(vols, p1, live, &[None]).await.unwrap();
    assert!(persistent(&mut q, p1).await);
    both(None, p1).await;
    write(&mut q, DEV_A, 0x22, 4 * MI, MI).await;

    // 1. Quit and start again: the point is still there, and the round
    // carries only what was written since it.
    quit(qemu, q).await;
    let (qemu, mut q) = start_qemu(dir, sroot, vms, &disks, &out).await;
    assert_eq!(
        s.points(va).await.unwrap(),
        vec![p1],
        "loaded from the image"
    );
    let p2 = "fastr-2000";
    s.mark_points_live(vols, p2, live, &[Some(p1.into())])
        .await
        .unwrap();
    let e = s.send_command(va, None, p2).await.unwrap_err();
    assert!(e.to_string().contains("since fastr-1000"), "{e}");
    let (na, nb) = both(Some(p1), p2).await;
    eprintln!("after a restart: {na} and {nb} bytes");
    assert!(na < 5 * MI as usize / 4, "1 MiB written: {na} bytes sent");
    assert!(nb < 128 << 10, "nothing written to b: {nb} bytes sent");
    assert!(reads(&fa, 0x11, 0, 2 * MI) && reads(&fa, 0x22, 4 * MI, MI));
    s.drop_point(va, p1).await.unwrap();
    s.drop_point(vb, p1).await.unwrap();

    // 2. A live replica moves the bitmap to a new top, still persistent:
    // after another restart the round is incremental again.
    s.clone_volumes_live(&replica_of_both("rep"), live)
        .await
        .unwrap();
    write(&mut q, DEV_A, 0x33, 8 * MI, 64 << 10).await;
    quit(qemu, q).await;
    // The replica's layer is a sound image after QEMU closed it.
    let chain = deorch::driver::qcow2::header(&volume_file(sroot, va))
        .unwrap()
        .backing
        .unwrap();
    let check = Command::new("qemu-img")
        .args(["check", "-q"])
        .arg(&chain)
        .status()
        .unwrap();
    assert!(check.success(), "qemu-img check {}", chain.display());
    let (qemu, mut q) = start_qemu(dir, sroot, vms, &disks, &out).await;
    assert_eq!(s.points(va).await.unwrap(), vec![p2], "moved, then stored");
    let p3 = "fastr-3000";
    s.mark_points_live(vols, p3, live, &[Some(p2.into())])
        .await
        .unwrap();
    let e = s.send_command(va, None, p3).await.unwrap_err();
    assert!(e.to_string().contains("since fastr-2000"), "{e}");
    let (na, _) = both(Some(p2), p3).await;
    assert!(na < 256 << 10, "64 KiB written: {na} bytes sent");
    assert!(reads(&fa, 0x33, 8 * MI, 64 << 10) && reads(&fa, 0x22, 4 * MI, MI));
    s.drop_point(va, p2).await.unwrap();
    s.drop_point(vb, p2).await.unwrap();

    // 3. A replica of the stopped VM: the disk's file becomes a layer and
    // a new overlay takes its name; the bitmaps are copied onto it, so the
    // round after the VM starts again is still incremental.
    write(&mut q, DEV_A, 0x66, 10 * MI, 64 << 10).await;
    quit(qemu, q).await;
    s.clone_volumes(&replica_of_both("off")).await.unwrap();
    let (qemu, mut q) = start_qemu(dir, sroot, vms, &disks, &out).await;
    assert_eq!(
        s.points(va).await.unwrap(),
        vec![p3],
        "carried onto the overlay"
    );
    write(&mut q, DEV_A, 0x77, 11 * MI, 64 << 10).await;
    let p35 = "fastr-3500";
    s.mark_points_live(vols, p35, live, &[Some(p3.into())])
        .await
        .unwrap();
    let e = s.send_command(va, None, p35).await.unwrap_err();
    assert!(e.to_string().contains("since fastr-3000"), "{e}");
    let (na, _) = both(Some(p3), p35).await;
    eprintln!("after a replica of the stopped VM: {na} bytes");
    assert!(na < 512 << 10, "128 KiB written: {na} bytes sent");
    assert!(reads(&fa, 0x66, 10 * MI, 64 << 10) && reads(&fa, 0x77, 11 * MI, 64 << 10));
    assert!(reads(&volume_file(sroot, "off-a"), 0x66, 10 * MI, 64 << 10));

    // 4. Killed: the bitmaps QEMU loads back are inconsistent, never a
    // base. The round sends whole disks, and the copy reads right.
    // Flushed, as a guest's fsync: QEMU's image metadata is on disk.
    write(&mut q, DEV_A, 0x44, 12 * MI, MI).await;
    qemu_io(&mut q, format!("{DEV_A} flush")).await;
    drop(q);
    drop(qemu);
    let (_qemu, mut q) = start_qemu(dir, sroot, vms, &disks, &out).await;
    assert!(
        s.points(va).await.unwrap().is_empty(),
        "an inconsistent bitmap is no point"
    );
    let p4 = "fastr-4000";
    s.mark_points_live(vols, p4, live, &[Some(p35.into())])
        .await
        .unwrap();
    assert!(
        s.send_command(va, None, p4).await.is_ok(),
        "the whole disks"
    );
    let (na, _) = both(Some(p35), p4).await;
    assert!(na > 4 * MI as usize, "the whole of a: {na} bytes sent");
    assert!(reads(&fa, 0x44, 12 * MI, MI) && reads(&fa, 0x11, 0, 2 * MI));
    assert!(reads(&fa, 0x33, 8 * MI, 64 << 10));
    assert_eq!(s.points(va).await.unwrap(), vec![p4], "the stale one went");
    assert!(persistent(&mut q, p4).await);
    let _ = std::fs::remove_dir_all(dir);
}
