//! The disks of one VM as one zfs group (`Storage::group`): on zfs-fuse,
//! which takes one snapshot per `zfs snapshot`, a group's are taken by one
//! `zfs snapshot -r` (one transaction group, one instant, no guest pause).
//! Real zfs-fuse; every `zfs` command the driver runs is logged by a
//! wrapper program, so the number of snapshot commands is counted, and
//! content is read through the images (`qemu-io`).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use deorch::driver::cow::CowStorage;
use deorch::driver::zfs::{self, ZfsBackend, ZfsStorage};
use deorch::driver::{LiveDisks, Storage};

const MB: u64 = 1 << 20;

/// A zfs storage below a fresh dataset whose `zfs` commands are logged.
struct Logged {
    storage: Arc<ZfsStorage>,
    root: String,
    log: PathBuf,
}

impl Logged {
    fn new(tag: &str) -> Option<Logged> {
        let root = common::zfs_root(tag)?;
        let dir = common::temp_dir(tag);
        let (wrapper, log) = common::zfs_logging_wrapper(&dir);
        let wrapper = wrapper.display().to_string();
        let backend = ZfsBackend::open_with(&root, &wrapper)
            .unwrap_or_else(|e| panic!("open {root}: {e}{}", common::zfs_daemon_note()));
        Some(Logged {
            storage: Arc::new(CowStorage::new(backend)),
            root,
            log,
        })
    }

    /// A replica (`capture`) of `(new volume, source)` pairs, not live:
    /// the `zfs snapshot` commands it ran.
    async fn capture(&self, pairs: &[(&str, &str)]) -> Vec<String> {
        self.snapshot_commands();
        self.storage
            .capture(&requests(pairs), &LiveDisks::default())
            .await
            .unwrap();
        self.snapshot_commands()
    }

    /// The `zfs snapshot` commands run since the last call.
    fn snapshot_commands(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let _ = std::fs::remove_file(&self.log);
        text.lines()
            .filter(|l| l.starts_with("snapshot"))
            .map(str::to_string)
            .collect()
    }

    fn tree(&self) -> Vec<String> {
        common::zfs_tree(&self.root)
    }

    /// VM `t/<vm>`'s disks `root` and `data`, made as its group (of
    /// `size` each) with `markers` written: (disk volumes, group).
    async fn grouped_vm(&self, vm: &str, size: u64, markers: [u8; 2]) -> (Vec<String>, String) {
        let disks = names(&[&format!("vm-t-{vm}-root"), &format!("vm-t-{vm}-data")]);
        let group = deorch::model::names::vm_group("t", vm);
        self.storage.group(&group, &disks);
        for (d, marker) in disks.iter().zip(markers) {
            self.storage.create(d, size).await.unwrap();
            self.write(d, marker).await;
        }
        (disks, group)
    }

    async fn write(&self, volume: &str, marker: u8) {
        let info = self.storage.volume(volume).await.unwrap();
        common::qemu_io_write(&info.path, info.format, marker);
    }

    async fn read(&self, volume: &str) -> u8 {
        let info = self
            .storage
            .volume(volume)
            .await
            .unwrap_or_else(|e| panic!("read {volume}: {e}"));
        common::qemu_io_read(&info.path, info.format)
    }

    /// Whether `volume` is a dataset (a lazy one is not yet).
    fn dataset(&self, volume: &str) -> Option<String> {
        self.tree().into_iter().find(|n| {
            !n.contains('@')
                && (n == &format!("{}/vol/{volume}", self.root)
                    || n.starts_with(&format!("{}/grp/", self.root))
                        && n.ends_with(&format!("/{volume}")))
        })
    }

    /// `createtxg` of a snapshot.
    fn txg(snapshot: &str) -> u64 {
        let out = Command::new("zfs")
            .args(["get", "-Hp", "-o", "value", "createtxg", snapshot])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("createtxg of {snapshot}: {text:?}"))
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{:#?}{}", self.tree(), common::zfs_daemon_note());
        }
        if let Err(e) = common::zfs_cleanup(&self.root) {
            eprintln!("cleanup: {e}");
        }
    }
}

use common::clone_requests as requests;

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A VM's two disks made as one group: a replica of both is one `zfs
/// snapshot -r` (both snapshots in one transaction group), listed as two
/// lazy volumes, made when first opened; clone, revert and FASTR-style
/// points work on the grouped disks; removing the VM keeps the replica
/// and leaves no group, group snapshot or trash behind. A second driver
/// opened over the same datasets (a node restart) sees the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grouped_capture_is_one_command_and_one_instant() {
    let Some(t) = Logged::new("zfs-groups") else {
        return;
    };
    let s = &t.storage;
    let (disks, group) = t.grouped_vm("a", 8 * MB, [1, 2]).await;
    for d in &disks {
        assert_eq!(
            t.dataset(d),
            Some(format!("{}/grp/{group}/{d}", t.root)),
            "{d} is a member of the group: {:#?}",
            t.tree()
        );
    }
    assert!(s.atomic_points_for(&disks), "the group's disks are one set");
    assert!(
        !s.atomic_points_for(&disks[..1]),
        "a part of a group is not taken by one -r"
    );
    assert!(
        !s.atomic_points(),
        "zfs-fuse takes one snapshot per command"
    );

    // The replica: one command, one transaction group, two lazy volumes.
    t.snapshot_commands();
    let replica = requests(&[("rep-a-root", "vm-t-a-root"), ("rep-a-data", "vm-t-a-data")]);
    s.capture(&replica, &LiveDisks::default()).await.unwrap();
    let cmds = t.snapshot_commands();
    assert_eq!(cmds.len(), 1, "one snapshot command: {cmds:?}");
    assert!(cmds[0].starts_with("snapshot -r"), "{cmds:?}");
    let snaps: Vec<String> = t
        .tree()
        .into_iter()
        .filter(|n| n.contains(&format!("/grp/{group}/")) && n.contains('@'))
        .collect();
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    assert_eq!(
        Logged::txg(&snaps[0]),
        Logged::txg(&snaps[1]),
        "both disks' snapshots in one transaction group: {snaps:?}"
    );
    let mut listed = s.list().await.unwrap();
    listed.sort();
    assert_eq!(
        listed,
        names(&["rep-a-data", "rep-a-root", "vm-t-a-data", "vm-t-a-root"])
    );
    assert!(s.exists("rep-a-root").await.unwrap());
    assert_eq!(t.dataset("rep-a-root"), None, "the replica is lazy");
    // Made again under its own name is refused, as for any volume.
    assert!(s.create("rep-a-root", MB).await.is_err());

    // A node restart: a new driver over the same datasets sees the same.
    {
        let (again, _) = zfs::open_recovered(&t.root).unwrap();
        let mut listed2 = again.list().await.unwrap();
        listed2.sort();
        assert_eq!(listed2, listed, "after reopening");
        assert!(again.atomic_points_for(&disks));
    }

    // The VM goes on writing; the replica keeps the instant it was taken.
    t.write("vm-t-a-root", 3).await;
    t.write("vm-t-a-data", 4).await;
    assert_eq!(t.read("rep-a-root").await, 1);
    assert!(t.dataset("rep-a-root").is_some(), "made when first opened");
    assert_eq!(t.read("vm-t-a-root").await, 3);

    // Clones of the grouped disks: one snapshot command for both.
    t.snapshot_commands();
    s.clone_volumes(&requests(&[
        ("c-root", "vm-t-a-root"),
        ("c-data", "vm-t-a-data"),
    ]))
    .await
    .unwrap();
    let cmds = t.snapshot_commands();
    assert_eq!(cmds.len(), 1, "{cmds:?}");
    assert_eq!((t.read("c-root").await, t.read("c-data").await), (3, 4));
    // Points of both disks (FASTR): one command, sent as before.
    s.mark_points(&disks, "p1").await.unwrap();
    let cmds = t.snapshot_commands();
    assert_eq!(cmds.len(), 1, "{cmds:?}");
    assert_eq!(
        s.points("vm-t-a-data").await.unwrap(),
        vec!["p1".to_string()]
    );
    let send = s.send_command("vm-t-a-data", None, "p1").await.unwrap();
    let out = Command::new(&send[0]).args(&send[1..]).output().unwrap();
    assert!(out.status.success() && out.stdout.len() > 1000, "{send:?}");
    s.drop_point("vm-t-a-root", "p1").await.unwrap();
    s.drop_point("vm-t-a-data", "p1").await.unwrap();

    // Revert the VM's disk to the replica: it stays a member.
    s.revert("vm-t-a-data", "rep-a-data").await.unwrap();
    assert_eq!(t.read("vm-t-a-data").await, 2);
    assert_eq!(
        t.dataset("vm-t-a-data"),
        Some(format!("{}/grp/{group}/vm-t-a-data", t.root))
    );
    assert!(s.atomic_points_for(&disks));

    // A second replica, left lazy, then the VM removed: both replicas stay.
    let cmds = t
        .capture(&[("rep-b-root", "vm-t-a-root"), ("rep-b-data", "vm-t-a-data")])
        .await;
    assert_eq!(cmds.len(), 1, "{cmds:?}");
    t.write("vm-t-a-data", 5).await;
    for d in &disks {
        s.destroy(d).await.unwrap();
    }
    let mut listed = s.list().await.unwrap();
    listed.sort();
    assert_eq!(
        listed,
        names(&[
            "c-data",
            "c-root",
            "rep-a-data",
            "rep-a-root",
            "rep-b-data",
            "rep-b-root"
        ])
    );
    assert_eq!(t.read("rep-b-root").await, 3);
    assert_eq!(t.read("rep-b-data").await, 2);
    assert_eq!(t.read("rep-a-data").await, 2);
    assert_eq!(t.read("c-data").await, 4);
    let grp = format!("{}/grp/", t.root);
    assert_eq!(
        t.tree()
            .into_iter()
            .filter(|n| n.starts_with(&grp) || n.contains("/trash/"))
            .collect::<Vec<_>>(),
        Vec::<String>::new(),
        "no group, group snapshot or trash left once the VM is gone"
    );
    for v in s.list().await.unwrap() {
        s.destroy(&v).await.unwrap();
    }
    let left: Vec<String> = t
        .tree()
        .into_iter()
        .filter(|n| n.contains('@') || n.starts_with(&grp) || n.contains("/trash/"))
        .collect();
    assert_eq!(left, Vec::<String>::new());
}

/// Volumes given no group (made before groups existed, or by a driver
/// that was never told) behave as before: one snapshot per command, and
/// the set is not atomic (the guest is paused around it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ungrouped_disks_take_one_snapshot_per_command() {
    let Some(t) = Logged::new("zfs-nogroup") else {
        return;
    };
    let s = &t.storage;
    let disks = names(&["vm-u-a-root", "vm-u-a-data"]);
    for d in &disks {
        s.create(d, 4 * MB).await.unwrap();
        assert_eq!(t.dataset(d), Some(format!("{}/vol/{d}", t.root)));
    }
    t.write("vm-u-a-root", 7).await;
    assert!(!s.atomic_points_for(&disks));
    let cmds = t
        .capture(&[("r-root", "vm-u-a-root"), ("r-data", "vm-u-a-data")])
        .await;
    assert_eq!(cmds.len(), 2, "{cmds:?}");
    assert!(
        cmds.iter().all(|c| !c.starts_with("snapshot -r")),
        "{cmds:?}"
    );
    t.write("vm-u-a-root", 8).await;
    assert_eq!(t.read("r-root").await, 7);
    // A group given once the disks exist does not move them.
    s.group("vm-u-a", &disks);
    assert!(!s.atomic_points_for(&disks));
    for v in s.list().await.unwrap() {
        s.destroy(&v).await.unwrap();
    }
    assert_eq!(
        t.tree()
            .into_iter()
            .filter(|n| n.contains('@') || n.contains("/trash/") || n.contains("/grp/"))
            .collect::<Vec<_>>(),
        Vec::<String>::new()
    );
}

/// A grouped disk renamed (retention keeps a removed VM's disks under
/// other names) stays in its group with its lazy replicas: their
/// snapshots take their real `lazy.<volume>` names first, so nothing
/// depends on the member's old name; renamed back, the pair is one set
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_member_keeps_its_group_and_its_replicas() {
    let Some(t) = Logged::new("zfs-grp-rename") else {
        return;
    };
    let s = &t.storage;
    let (disks, group) = t.grouped_vm("b", 4 * MB, [11, 12]).await;
    s.capture(
        &requests(&[("r-root", "vm-t-b-root"), ("r-data", "vm-t-b-data")]),
        &LiveDisks::default(),
    )
    .await
    .unwrap();
    t.write("vm-t-b-root", 13).await;
    s.rename("vm-t-b-root", "kept-root").await.unwrap();
    assert_eq!(
        t.dataset("kept-root"),
        Some(format!("{}/grp/{group}/kept-root", t.root))
    );
    let kept_snaps: Vec<String> = t
        .tree()
        .into_iter()
        .filter(|n| n.contains("/kept-root@"))
        .collect();
    assert_eq!(
        kept_snaps,
        vec![format!("{}/grp/{group}/kept-root@lazy.r-root", t.root)]
    );
    let mut listed = s.list().await.unwrap();
    listed.sort();
    assert_eq!(
        listed,
        names(&["kept-root", "r-data", "r-root", "vm-t-b-data"])
    );
    assert_eq!(t.read("kept-root").await, 13);
    s.rename("kept-root", "vm-t-b-root").await.unwrap();
    assert!(s.atomic_points_for(&disks));
    t.snapshot_commands();
    s.mark_points(&disks, "p2").await.unwrap();
    assert_eq!(t.snapshot_commands().len(), 1);
    assert_eq!((t.read("r-root").await, t.read("r-data").await), (11, 12));
    for v in s.list().await.unwrap() {
        s.destroy(&v).await.unwrap();
    }
    let grp = format!("{}/grp/", t.root);
    let left: Vec<String> = t
        .tree()
        .into_iter()
        .filter(|n| n.contains('@') || n.starts_with(&grp) || n.contains("/trash/"))
        .collect();
    assert_eq!(left, Vec::<String>::new());
}
