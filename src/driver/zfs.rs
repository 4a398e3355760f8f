//! ZFS storage: a [`CowBackend`] over the `zfs`/`zpool` commands (`-H`
//! output, argument vectors, no shell). Each volume is a filesystem
//! dataset holding one raw image `disk.img`: zfs-fuse has no zvols, and the
//! same layout works on kernel OpenZFS. Tested against zfs-fuse.
//!
//! Below the root: `vol/<volume>`, `trash/<name>.<nonce>` (the names
//! [`super::cow`] works with) and `grp/<group>/<volume>`, the volumes of
//! one group ([`Storage::group`](super::Storage::group): the disks of one
//! VM). zfs-fuse takes one snapshot per `zfs snapshot`; a group's are
//! taken by one `zfs snapshot -r grp/<group>@name` (one transaction group,
//! one instant, no guest pause) when a set of snapshots is exactly the
//! group's members. cow.rs still sees `vol/<volume>`: an in-memory index
//! (rebuilt from every listing and at open) maps it to the real dataset.
//! A lazy capture names each disk's snapshot after its new volume; one
//! `-r` takes one name, so it is `lz<nonce>` with the user property
//! `deorch:lazy` = `<member>=<volume>,...` (on every snapshot made), and the
//! listings report `grp/G/<member>@lz<nonce>` as `vol/<member>@lazy.<volume>`.
//! A grouped dataset renamed (to `trash/` or another name) first gets its
//! lazy snapshots' real `lazy.<volume>` names, so the mapping never
//! outlives the member's name. The group's own snapshots (made by `-r`,
//! empty) go once no member carries their name; an empty group goes at
//! [`CowBackend::tidy`]. A received stream goes where `create` would
//! put its volume. Ungrouped volumes (made before groups or never given
//! one) keep one snapshot per command and the pause.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::cmd::{self, CmdError};
use super::cow::{CowBackend, CowStorage, Ds, SnapshotSets, LAZY};
use super::{DatasetConfig, DatasetState, DriverError, VolumeInfo};

const TIMEOUT: Duration = Duration::from_secs(120);
const IMAGE: &str = "disk.img";
/// How long a "dataset is busy" answer is retried before it is returned:
/// zfs-fuse keeps a dataset busy until it has processed the release of
/// every file a process had open there, which lags well behind the
/// process's death on a loaded machine (over 1.3 s beside a compile, and
/// seconds after a SIGKILL of a process holding an image).
const BUSY_PATIENCE: Duration = Duration::from_secs(10);
/// The first pause between two tries; each next one doubles, up to
/// [`BUSY_PAUSE_MAX`].
const BUSY_PAUSE_FIRST: Duration = Duration::from_millis(50);
const BUSY_PAUSE_MAX: Duration = Duration::from_secs(1);
/// User property marking what deorch created.
pub const MANAGED: &str = "deorch:managed";
/// User property of a grouped lazy capture's snapshots: which lazy volume
/// each member's snapshot is (`<member>=<volume>,...`).
pub const LAZY_PROP: &str = "deorch:lazy";
/// Real snapshot names of a grouped lazy capture begin with this.
const LZ: &str = "lz";
/// ZFS's longest name (pool, datasets and `@snapshot`).
const ZFS_NAME_MAX: usize = 255;
/// Room kept after a member's name for its snapshots' names (`@s<nonce>`,
/// `@xfer-fastr-<ms>`).
const SNAPSHOT_ROOM: usize = 40;
/// Room kept after a group's name for a member's lazy snapshot given its
/// real `<member>@lazy.<volume>` name (cow.rs keeps `vol/` and that within
/// 160 bytes).
const LAZY_ROOM: usize = 160;
/// The longest mapping one `-r` capture writes (older ZFS keeps user
/// property values to 1024 bytes); a longer one takes one snapshot per
/// disk.
const MAPPING_MAX: usize = 1000;

/// ZFS storage of one node.
pub type ZfsStorage = CowStorage<ZfsBackend>;

/// The `zfs` commands below `<pool>/<root>`.
#[derive(Debug)]
pub struct ZfsBackend {
    pool: String,
    root: String,
    program: String,
    /// Whether `zfs snapshot a@s b@s` works (not on zfs-fuse).
    multi_snapshot: bool,
    /// Where grouped volumes are (shared with the storage, see [`Groups`]).
    groups: Arc<Groups>,
}

/// The groups of one [`ZfsBackend`]: where its grouped volumes live, and
/// which lazy volume each `lz` snapshot is. Behind its own lock so that
/// [`SnapshotSets`] answers while a command holds the backend's.
#[derive(Debug, Default)]
pub struct Groups {
    index: Mutex<Index>,
}

#[derive(Debug, Default)]
struct Index {
    /// Volume -> the group its next dataset is made in.
    intent: BTreeMap<String, String>,
    /// Volume -> the group it is a member of.
    member: BTreeMap<String, String>,
    /// Group datasets.
    groups: BTreeSet<String>,
    /// A group's own snapshot (group, short name) -> the members holding
    /// a snapshot of that name.
    group_snaps: BTreeMap<(String, String), BTreeSet<String>>,
    /// Lazy volume snapshot `vol/<member>@lazy.<volume>` -> its real name
    /// `grp/<group>/<member>@lz<nonce>` (relative to the root).
    lazy: BTreeMap<String, String>,
    /// Members being received ([`CowBackend::recv_argv`]) that no listing
    /// has shown yet: kept members across listings meanwhile.
    receiving: BTreeMap<String, String>,
}

impl Index {
    fn members(&self, group: &str) -> usize {
        self.member.values().filter(|g| *g == group).count()
    }
}

impl SnapshotSets for Groups {
    fn group(&self, group: &str, volumes: &[String]) {
        let mut ix = self.index.lock().unwrap_or_else(|p| p.into_inner());
        for v in volumes {
            ix.intent.insert(v.clone(), group.to_string());
        }
    }

    fn atomic(&self, volumes: &[String]) -> bool {
        let ix = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let Some(group) = volumes.first().and_then(|v| ix.member.get(v)) else {
            return false;
        };
        let distinct: BTreeSet<&String> = volumes.iter().collect();
        distinct.len() == volumes.len()
            && volumes.iter().all(|v| ix.member.get(v) == Some(group))
            && ix.members(group) == volumes.len()
    }
}

/// One line of a listing: the real name (relative to the root), its
/// origin (real, relative where below the root) and its `deorch:lazy`.
struct Entry {
    rel: String,
    origin: Option<String>,
    lazy: Option<String>,
}

/// The lazy volume `member`'s snapshot is, from its `deorch:lazy` mapping.
fn mapped<'a>(mapping: &'a str, member: &str) -> Option<&'a str> {
    mapping
        .split(',')
        .filter_map(|e| e.split_once('='))
        .find(|(m, _)| *m == member)
        .map(|x| x.1)
}

/// The storage a node starts with over `root`: opened (live volumes
/// mounted again) and every removal a crash interrupted finished (`gc`).
/// Returns it with the number of objects `gc` destroyed. The node and the
/// crash tests both recover through here.
///
/// A transient `gc` failure (a dataset still busy after a crash) does not
/// keep the node from starting: what is left is already out of the live
/// names (in `trash/`), and the `gc` after the next removal finishes it.
pub fn open_recovered(root: &str) -> Result<(ZfsStorage, usize), DriverError> {
    let mut backend = ZfsBackend::open(root)?;
    let finished = match super::cow::gc(&mut backend) {
        Ok(n) => n,
        Err(e @ DriverError::Transient { .. }) => {
            tracing::warn!(error = %e, "storage: interrupted removals left for the next gc");
            0
        }
        Err(e) => return Err(e),
    };
    Ok((CowStorage::new(backend), finished))
}

fn zfs_err(e: CmdError, op: &str, target: &str) -> DriverError {
    e.into_driver(op, target)
}

impl ZfsBackend {
    /// Use `root` (e.g. `pool0/deorch`), creating `root/vol` and
    /// `root/trash`. Fails with `PoolMissing` when the pool is not there.
    pub fn open(root: &str) -> Result<ZfsBackend, DriverError> {
        Self::open_with(root, "zfs")
    }

    /// The same with another `zfs` program (e.g. a wrapper entering a mount
    /// namespace).
    pub fn open_with(root: &str, program: &str) -> Result<ZfsBackend, DriverError> {
        let pool = root.split('/').next().unwrap_or(root).to_string();
        let b = ZfsBackend {
            pool: pool.clone(),
            root: root.trim_end_matches('/').to_string(),
            program: program.to_string(),
            multi_snapshot: true,
            groups: Arc::default(),
        };
        let mut b = b;
        if let Err(e) = b.zfs(&["list", "-H", "-o", "name", &pool]) {
            return Err(DriverError::Condition {
                op: "open".into(),
                target: pool.clone(),
                reason: "PoolMissing",
                message: format!("pool {pool} is not available: {}", e.message()),
            });
        }
        for sub in ["vol", "trash", "grp"] {
            let ds = format!("{}/{sub}", b.root);
            if b.zfs(&["list", "-H", "-o", "name", &ds]).is_err() {
                b.zfs(&["create", "-p", &ds])
                    .map_err(|e| zfs_err(e, "open", &ds))?;
            }
        }
        b.mount_live()?;
        b.list()?;
        // Whether one `zfs snapshot` takes several (zfs-fuse's does not):
        // asked of two datasets that do not exist, so nothing is made.
        let probe = |n: &str| format!("{}/vol/.deorch-probe-{n}@p", b.root);
        if let Err(CmdError::Failed(m)) = b.zfs(&["snapshot", &probe("a"), &probe("b")]) {
            b.multi_snapshot = !m.contains("too many arguments");
        }
        Ok(b)
    }

    /// Mount every live volume that is not: the pool was imported without
    /// mounting (zfs-fuse after a restart, a host without zfs-mount), or a
    /// process was killed between a rename's unmount and its remount. An
    /// unmounted volume's image is unreachable, so this runs at open, the
    /// node's recovery point.
    fn mount_live(&self) -> Result<(), DriverError> {
        let vol = format!("{}/vol", self.root);
        let grp = format!("{}/grp", self.root);
        let out = self
            .zfs(&["list", "-H", "-r", "-o", "name,mounted", &vol, &grp])
            .map_err(|e| zfs_err(e, "open", &vol))?;
        // Parents are listed before their children: a group is mounted
        // before its members.
        for line in out.lines() {
            let mut f = line.split('\t');
            let (Some(name), Some(mounted)) = (f.next(), f.next()) else {
                continue;
            };
            let below = |p: &str| name.starts_with(&format!("{p}/"));
            if mounted == "no" && (below(&vol) || below(&grp)) {
                if let Err(e) = self.zfs(&["mount", name]) {
                    tracing::warn!(dataset = name, error = %e.message(), "zfs mount");
                }
            }
        }
        Ok(())
    }

    fn zfs(&self, args: &[&str]) -> Result<String, CmdError> {
        cmd::run(&self.program, args, TIMEOUT).map(|o| o.stdout)
    }

    /// `zfs args...`, tried again while the dataset is busy (see
    /// [`BUSY_PATIENCE`]); any other error is returned at once, and so is
    /// the last busy one once the patience is spent, as a transient error
    /// for the reconciler's own backoff.
    fn zfs_retry(&self, op: &str, target: &str, args: &[&str]) -> Result<String, DriverError> {
        self.zfs_retry_after(op, target, args, &[])
    }

    /// [`Self::zfs_retry`], unmounting `unmount` before every try: rename
    /// and destroy need their datasets unmounted, and zfs-fuse cannot
    /// unmount from inside them, so an unmount refused because a file was
    /// still open (busy) must be retried with the command, not only once.
    fn zfs_retry_after(
        &self,
        op: &str,
        target: &str,
        args: &[&str],
        unmount: &[&str],
    ) -> Result<String, DriverError> {
        let mut backoff = Backoff::new(BUSY_PATIENCE);
        let started = std::time::Instant::now();
        let mut tries = 0;
        loop {
            for ds in unmount {
                self.unmount(ds);
            }
            tries += 1;
            let err = match self.zfs(args) {
                Ok(out) => return Ok(out),
                Err(e) => zfs_err(e, op, target),
            };
            let DriverError::Transient { message, .. } = &err else {
                return Err(err);
            };
            match backoff.next() {
                Some(pause) => {
                    tracing::debug!(op, target, pause_ms = pause.as_millis() as u64, error = %message, "zfs busy, trying again");
                    std::thread::sleep(pause);
                }
                None => {
                    return Err(DriverError::transient(
                        op,
                        target,
                        format!(
                            "{message} (still after {tries} tries in {:.1} s)",
                            started.elapsed().as_secs_f64()
                        ),
                    ))
                }
            }
        }
    }

    /// Unmount before renaming or destroying: zfs-fuse cannot unmount
    /// from inside those commands ("dataset is busy"), but can on its own.
    fn unmount(&self, full: &str) {
        if let Err(CmdError::Failed(m)) = self.zfs(&["umount", full]) {
            if !m.contains("not currently mounted") {
                tracing::debug!(dataset = full, error = %m, "zfs umount");
            }
        }
    }

    /// The real dataset or snapshot of `rel` (relative to the root):
    /// cow.rs's `vol/<volume>[@snap]` of a grouped volume is
    /// `grp/<group>/<volume>[@snap]`, a grouped lazy snapshot its `lz` one.
    fn full(&self, rel: &str) -> String {
        format!("{}/{}", self.root, self.real(rel))
    }

    fn real(&self, rel: &str) -> String {
        let ix = self.index();
        if let Some(r) = ix.lazy.get(rel) {
            return r.clone();
        }
        if let Some(rest) = rel.strip_prefix("vol/") {
            let name = rest.split_once('@').map_or(rest, |x| x.0);
            if let Some(g) = ix.member.get(name) {
                return format!("grp/{g}/{rest}");
            }
        }
        rel.to_string()
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.groups.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where a new dataset `ds` goes, and its group: the group its volume
    /// was given ([`Storage::group`](super::Storage::group)) where the
    /// names stay within ZFS's limit; `ds` itself otherwise.
    fn target(&self, ds: &str) -> (String, Option<String>) {
        let ix = self.index();
        let grouped = ds.strip_prefix("vol/").and_then(|v| {
            let g = ix.intent.get(v)?;
            let base = self.root.len() + "/grp/".len() + g.len() + 1;
            let fits = base + v.len() + SNAPSHOT_ROOM <= ZFS_NAME_MAX
                && base + LAZY_ROOM <= ZFS_NAME_MAX
                && super::cow::check_volume_name("group", g).is_ok();
            fits.then(|| (format!("grp/{g}/{v}"), g.clone()))
        });
        match grouped {
            Some((real, g)) => (format!("{}/{real}", self.root), Some(g)),
            None => (format!("{}/{ds}", self.root), None),
        }
    }

    /// Make `group`'s dataset if the index has none (`-p` on a member
    /// itself would also take a member that exists).
    fn make_group(&self, group: Option<&str>) -> Result<(), CmdError> {
        let Some(g) = group else { return Ok(()) };
        if self.index().groups.contains(g) {
            return Ok(());
        }
        // A group the index missed (made by a process killed before it
        // listed again) is there already: zfs-fuse's `-p` refuses it.
        match self.zfs(&["create", "-p", &format!("{}/grp/{g}", self.root)]) {
            Ok(_) => {}
            Err(CmdError::Failed(m)) if m.contains("already exists") => {}
            Err(e) => return Err(e),
        }
        self.index().groups.insert(g.to_string());
        Ok(())
    }

    /// `ds` (`vol/<volume>`) was made in `group`.
    fn joined(&self, ds: &str, group: Option<String>) {
        let Some(v) = ds.strip_prefix("vol/") else {
            return;
        };
        let mut ix = self.index();
        ix.receiving.remove(v);
        if let Some(g) = group {
            ix.groups.insert(g.clone());
            ix.member.insert(v.to_string(), g);
        }
    }

    /// Member `member` of `group` holds no snapshot `short` any more: the
    /// group's own snapshot of that name goes when no member holds one.
    fn released(&self, group: &str, member: &str, short: &str) {
        let key = (group.to_string(), short.to_string());
        let spent = {
            let mut ix = self.index();
            match ix.group_snaps.get_mut(&key) {
                Some(holders) => {
                    holders.remove(member);
                    holders.is_empty()
                }
                None => false,
            }
        };
        if spent {
            self.destroy_group_snapshot(group, short);
        }
    }

    fn destroy_group_snapshot(&self, group: &str, short: &str) {
        let full = format!("{}/grp/{group}@{short}", self.root);
        match self.zfs_retry("destroy", &full, &["destroy", &full]) {
            Ok(_) => {
                self.index()
                    .group_snaps
                    .remove(&(group.to_string(), short.to_string()));
            }
            Err(e) => {
                tracing::warn!(snapshot = %full, error = %e, "zfs: a group's snapshot is left for the next gc")
            }
        }
    }

    /// The group and member of `rel` (`vol/<member>[@snap]`), if grouped.
    fn membership(&self, rel: &str) -> Option<(String, String)> {
        let rest = rel.strip_prefix("vol/")?;
        let name = rest.split_once('@').map_or(rest, |x| x.0);
        let g = self.index().member.get(name)?.clone();
        Some((g, name.to_string()))
    }

    /// Everything below `roots` (`-d depth` when given), with the index
    /// rebuilt from what is below `grp/` (the listings always hold all
    /// of it).
    fn listing(&self, roots: &[&str], depth: Option<&str>) -> Result<Vec<Entry>, DriverError> {
        let mut args = vec!["list", "-H", "-r"];
        if let Some(d) = depth {
            args.extend(["-d", d]);
        }
        let props = format!("name,origin,{LAZY_PROP}");
        args.extend(["-t", "filesystem,snapshot", "-o", &props]);
        args.extend(roots);
        let out = self
            .zfs(&args)
            .map_err(|e| zfs_err(e, "list", roots.first().copied().unwrap_or("")))?;
        let mut entries = Vec::new();
        for line in out.lines() {
            let mut f = line.split('\t');
            let (Some(name), Some(origin), Some(lazy)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let Some(rel) = self.rel(name) else { continue };
            let origin = (origin != "-").then(|| self.rel(origin).unwrap_or(origin).to_string());
            let lazy = (lazy != "-" && !lazy.is_empty()).then(|| lazy.to_string());
            entries.push(Entry {
                rel: rel.to_string(),
                origin,
                lazy,
            });
        }
        self.rebuild(&entries);
        Ok(entries)
    }

    fn rebuild(&self, entries: &[Entry]) {
        let mut member = BTreeMap::new();
        let mut groups = BTreeSet::new();
        let mut group_snaps: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        let mut held = Vec::new();
        let mut lazy = BTreeMap::new();
        for e in entries {
            let Some(rest) = e.rel.strip_prefix("grp/") else {
                continue;
            };
            let (ds, snap) = match rest.split_once('@') {
                Some((d, s)) => (d, Some(s)),
                None => (rest, None),
            };
            match (ds.split_once('/'), snap) {
                (None, None) => {
                    groups.insert(ds.to_string());
                }
                (None, Some(s)) => {
                    group_snaps
                        .entry((ds.to_string(), s.to_string()))
                        .or_default();
                }
                (Some((g, m)), None) => {
                    member.insert(m.to_string(), g.to_string());
                }
                (Some((g, m)), Some(s)) => {
                    held.push((g.to_string(), s.to_string(), m.to_string()));
                    let volume = e.lazy.as_deref().and_then(|l| mapped(l, m));
                    if let (true, Some(v)) = (s.starts_with(LZ), volume) {
                        lazy.insert(format!("vol/{m}@{LAZY}{v}"), e.rel.clone());
                    }
                }
            }
        }
        for (g, s, m) in held {
            if let Some(h) = group_snaps.get_mut(&(g, s)) {
                h.insert(m);
            }
        }
        let mut ix = self.index();
        let receiving = std::mem::take(&mut ix.receiving);
        for (v, g) in receiving {
            if !member.contains_key(&v) {
                member.insert(v.clone(), g.clone());
                ix.receiving.insert(v, g);
            }
        }
        ix.member = member;
        ix.groups = groups;
        ix.group_snaps = group_snaps;
        ix.lazy = lazy;
    }

    /// cow.rs's name of a real one (relative to the root): `None` for
    /// groups and their own snapshots, and for what is not below `vol/`,
    /// `trash/` or `grp/`.
    fn virtual_name(&self, rel: &str, lazy: &BTreeMap<String, String>) -> Option<String> {
        if let Some(v) = lazy.get(rel) {
            return Some(v.clone());
        }
        if rel.starts_with("vol/") || rel.starts_with("trash/") {
            return Some(rel.to_string());
        }
        let (_, member) = rel.strip_prefix("grp/")?.split_once('/')?;
        Some(format!("vol/{member}"))
    }

    /// Real lazy snapshot -> cow.rs's name.
    fn lazy_names(&self) -> BTreeMap<String, String> {
        self.index()
            .lazy
            .iter()
            .map(|(v, r)| (r.clone(), v.clone()))
            .collect()
    }

    /// Give the `lz` snapshots of grouped `ds` their real `lazy.<volume>`
    /// names before `ds` is renamed (the mapping names the member).
    fn unpack(&self, ds: &str) -> Result<(), DriverError> {
        let Some((group, member)) = self.membership(ds) else {
            return Ok(());
        };
        let prefix = format!("grp/{group}/{member}@");
        let lz: Vec<(String, String)> = self
            .index()
            .lazy
            .iter()
            .filter(|(_, r)| r.starts_with(&prefix))
            .map(|(v, r)| (v.clone(), r.clone()))
            .collect();
        for (v, r) in lz {
            let short = v.split_once('@').map_or("", |x| x.1);
            let to = format!("{}/{prefix}{short}", self.root);
            let from = format!("{}/{r}", self.root);
            self.zfs_retry("rename", &v, &["rename", &from, &to])?;
            self.index().lazy.remove(&v);
            self.released(&group, &member, &r[prefix.len()..]);
        }
        Ok(())
    }

    /// One `zfs snapshot -r` for `snaps` when they are exactly one group's
    /// members (one short name, or each member's lazy volume); `None`
    /// when they are not.
    fn group_snapshot(&self, snaps: &[String]) -> Option<Result<(), DriverError>> {
        if snaps.len() < 2 {
            return None;
        }
        let parsed: Vec<(&str, &str)> = snaps
            .iter()
            .map(|s| s.strip_prefix("vol/")?.split_once('@'))
            .collect::<Option<_>>()?;
        let names: Vec<String> = parsed.iter().map(|p| p.0.to_string()).collect();
        if !self.groups.atomic(&names) {
            return None;
        }
        let group = self.index().member.get(parsed[0].0)?.clone();
        let first = parsed[0].1;
        let (short, mapping) = if parsed.iter().all(|p| p.1 == first) {
            (first.to_string(), None)
        } else if parsed.iter().all(|p| p.1.starts_with(LAZY)) {
            let m: Vec<String> = parsed
                .iter()
                .map(|(member, s)| format!("{member}={}", &s[LAZY.len()..]))
                .collect();
            let m = m.join(",");
            if m.len() > MAPPING_MAX {
                return None;
            }
            (format!("{LZ}{}", super::cow::nonce()), Some(m))
        } else {
            return None;
        };
        let target = format!("{}/grp/{group}@{short}", self.root);
        let prop = mapping.as_ref().map(|m| format!("{LAZY_PROP}={m}"));
        let mut args = vec!["snapshot", "-r"];
        if let Some(p) = &prop {
            args.extend(["-o", p.as_str()]);
        }
        args.push(&target);
        if let Err(e) = self.zfs(&args) {
            return Some(Err(zfs_err(e, "clone", parsed[0].0)));
        }
        let mut ix = self.index();
        ix.group_snaps
            .insert((group.clone(), short.clone()), names.into_iter().collect());
        if mapping.is_some() {
            for (member, s) in &parsed {
                ix.lazy.insert(
                    format!("vol/{member}@{s}"),
                    format!("grp/{group}/{member}@{short}"),
                );
            }
        }
        Some(Ok(()))
    }

    fn rel<'a>(&self, full: &'a str) -> Option<&'a str> {
        full.strip_prefix(self.root.as_str())?.strip_prefix('/')
    }

    fn mountpoint(&self, full: &str, op: &str) -> Result<PathBuf, DriverError> {
        let out = self
            .zfs(&["get", "-H", "-o", "value", "mountpoint", full])
            .map_err(|e| zfs_err(e, op, full))?;
        let mp = out.trim();
        if !mp.starts_with('/') {
            return Err(DriverError::Permanent {
                op: op.into(),
                target: full.into(),
                message: format!("dataset is not mounted (mountpoint {mp:?})"),
            });
        }
        Ok(PathBuf::from(mp))
    }

    fn image(&self, rel: &str, op: &str) -> Result<PathBuf, DriverError> {
        Ok(self.mountpoint(&self.full(rel), op)?.join(IMAGE))
    }

    fn grow(&self, rel: &str, size: u64, op: &str) -> Result<(), DriverError> {
        let img = self.image(rel, op)?;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&img)
            .map_err(|e| cmd::io_error(op, rel, e))?;
        let len = f.metadata().map_err(|e| cmd::io_error(op, rel, e))?.len();
        if size > len {
            f.set_len(size).map_err(|e| cmd::io_error(op, rel, e))?;
        }
        Ok(())
    }

    fn prop(&self, full: &str, prop: &str) -> Result<String, CmdError> {
        Ok(self
            .zfs(&["get", "-H", "-p", "-o", "value", prop, full])?
            .trim()
            .to_string())
    }
}

/// Pauses between tries of a busy command: exponential from
/// [`BUSY_PAUSE_FIRST`], capped at [`BUSY_PAUSE_MAX`], and none once the
/// next pause would end past the patience.
#[derive(Debug)]
struct Backoff {
    pause: Duration,
    left: Duration,
}

impl Backoff {
    fn new(patience: Duration) -> Backoff {
        Backoff {
            pause: BUSY_PAUSE_FIRST,
            left: patience,
        }
    }

    fn next(&mut self) -> Option<Duration> {
        let pause = self.pause;
        self.left = self.left.checked_sub(pause)?;
        self.pause = (pause * 2).min(BUSY_PAUSE_MAX);
        Some(pause)
    }
}

impl CowBackend for ZfsBackend {
    fn kind(&self) -> &'static str {
        "zfs"
    }

    fn stream_kind(&self) -> Option<&'static str> {
        Some("zfs")
    }
    fn atomic_snapshots(&self) -> bool {
        self.multi_snapshot
    }

    fn snapshot_sets(&self) -> Option<Arc<dyn SnapshotSets>> {
        Some(self.groups.clone())
    }

    /// Destroy the group snapshots no member holds and the groups with
    /// no member (from the index of the last listing: `gc` lists last;
    /// `destroy` without `-r`, so a group that has a member after all
    /// stays).
    fn tidy(&mut self) {
        let (spent, empty): (Vec<(String, String)>, Vec<String>) = {
            let ix = self.index();
            let empty: Vec<String> = ix
                .groups
                .iter()
                .filter(|g| ix.members(g) == 0)
                .cloned()
                .collect();
            let spent = ix
                .group_snaps
                .iter()
                .filter(|(k, held)| held.is_empty() || empty.contains(&k.0))
                .map(|(k, _)| k.clone())
                .collect();
            (spent, empty)
        };
        for (g, s) in spent {
            self.destroy_group_snapshot(&g, &s);
        }
        for g in empty {
            let full = format!("{}/grp/{g}", self.root);
            match self.zfs_retry_after("destroy", &full, &["destroy", &full], &[&full]) {
                Ok(_) => {
                    self.index().groups.remove(&g);
                }
                Err(e) => {
                    tracing::warn!(group = %full, error = %e, "zfs: an empty group is left for the next gc")
                }
            }
        }
    }

    fn send_argv(&self, ds: &str, from: Option<&str>, to: &str) -> Option<Vec<String>> {
        let mut argv = vec![self.program.clone(), "send".into()];
        if let Some(f) = from {
            argv.extend(["-i".into(), f.to_string()]);
        }
        argv.push(self.full(&format!("{ds}@{to}")));
        Some(argv)
    }

    /// `-F`: the volume is rolled back to its newest point (or, holding
    /// none, replaced) first; nothing else writes it meanwhile. A new
    /// volume is received where `create` would make it (in its group if it
    /// was given one): a relocation's receiver destroys the volume it made
    /// and receives it again at the same path, which its paused QEMU has.
    fn recv_argv(&self, ds: &str) -> Option<Vec<String>> {
        let full = match self.membership(ds) {
            Some(_) => self.full(ds),
            None => {
                let (full, group) = self.target(ds);
                match self.make_group(group.as_deref()) {
                    Ok(()) => {
                        self.joined(ds, group.clone());
                        if let (Some(v), Some(g)) = (ds.strip_prefix("vol/"), group) {
                            self.index().receiving.insert(v.to_string(), g);
                        }
                        full
                    }
                    Err(_) => self.full(ds),
                }
            }
        };
        Some(vec![self.program.clone(), "recv".into(), "-F".into(), full])
    }

    fn rollback(&mut self, snap: &str) -> Result<(), DriverError> {
        self.zfs_retry("rollback", snap, &["rollback", "-r", &self.full(snap)])
            .map(|_| ())
    }

    fn list(&mut self) -> Result<Vec<Ds>, DriverError> {
        let entries = self.listing(&[&self.root], None)?;
        let lazy = self.lazy_names();
        let mut out: BTreeMap<String, Ds> = BTreeMap::new();
        for e in entries.iter().filter(|e| !e.rel.contains('@')) {
            let Some(name) = self.virtual_name(&e.rel, &lazy) else {
                continue;
            };
            let origin = e.origin.as_ref().map(|o| {
                let (ds, snap) = o.split_once('@').unwrap_or((o, ""));
                match lazy.get(o) {
                    Some(v) => v.clone(),
                    None => match self.virtual_name(ds, &lazy) {
                        Some(d) => format!("{d}@{snap}"),
                        None => o.clone(),
                    },
                }
            });
            out.insert(
                name.clone(),
                Ds {
                    name,
                    origin,
                    snapshots: Vec::new(),
                },
            );
        }
        // Creation order: a dataset's snapshots are listed oldest first
        // (zfs-fuse's `list -o createtxg` prints a rounded size, not the
        // number).
        for (order, e) in entries.iter().enumerate() {
            let Some((ds, snap)) = e.rel.split_once('@') else {
                continue;
            };
            let Some(d) = self.virtual_name(ds, &lazy) else {
                continue;
            };
            let short = match lazy.get(&e.rel) {
                Some(v) => v.split_once('@').map_or(snap, |x| x.1),
                None => snap,
            };
            if let Some(d) = out.get_mut(&d) {
                d.snapshots.push((short.to_string(), order as u64));
            }
        }
        Ok(out.into_values().collect())
    }

    fn create(&mut self, ds: &str, size: u64) -> Result<(), DriverError> {
        let (full, group) = self.target(ds);
        self.make_group(group.as_deref())
            .and_then(|_| self.zfs(&["create", &full]))
            .map_err(|e| zfs_err(e, "create", ds))?;
        self.joined(ds, group);
        if let Err(e) = self.grow(ds, size, "create") {
            let _ = self.zfs_retry_after("create", ds, &["destroy", &full], &[&full]);
            return Err(e);
        }
        Ok(())
    }

    fn import(&mut self, ds: &str, path: &str, format: Option<&str>) -> Result<(), DriverError> {
        let (full, group) = self.target(ds);
        self.make_group(group.as_deref())
            .and_then(|_| self.zfs(&["create", &full]))
            .map_err(|e| zfs_err(e, "import", ds))?;
        self.joined(ds, group);
        let result = self.image(ds, "import").and_then(|img| {
            let img = img.to_string_lossy().to_string();
            let mut args = vec!["convert", "-O", "raw"];
            if let Some(f) = format {
                args.extend(["-f", f]);
            }
            args.extend([path, img.as_str()]);
            cmd::run("qemu-img", &args, TIMEOUT)
                .map(|_| ())
                .map_err(|e| e.into_driver("import", path))
        });
        if result.is_err() {
            let _ = self.zfs_retry_after("import", ds, &["destroy", &full], &[&full]);
        }
        result
    }

    fn snapshot(&mut self, snaps: &[String]) -> Result<(), DriverError> {
        if let Some(r) = self.group_snapshot(snaps) {
            return r;
        }
        let full: Vec<String> = snaps.iter().map(|s| self.full(s)).collect();
        let root = format!("{}/", self.root);
        let err = move |e: CmdError, s: &str| {
            let target = s.split_once('@').map(|x| x.0).unwrap_or(s);
            let rel = target.strip_prefix(root.as_str()).unwrap_or(target);
            let volume = match rel.strip_prefix("grp/") {
                Some(r) => r.split_once('/').map_or(r, |x| x.1),
                None => rel.strip_prefix("vol/").unwrap_or(rel),
            };
            zfs_err(e, "clone", volume)
        };
        if full.len() > 1 && self.multi_snapshot {
            let mut args = vec!["snapshot"];
            args.extend(full.iter().map(String::as_str));
            match self.zfs(&args) {
                Ok(_) => return Ok(()),
                Err(CmdError::Failed(m)) if m.contains("too many arguments") => {
                    self.multi_snapshot = false;
                }
                Err(e) => return Err(err(e, &full[0])),
            }
        }
        // Older zfs (zfs-fuse) takes one snapshot per command: still one
        // instant per disk, but not across disks; issued at once, they are
        // as close together as the pool allows.
        let this = &*self;
        let results = std::thread::scope(|sc| {
            let running: Vec<_> = full
                .iter()
                .map(|s| sc.spawn(move || this.zfs(&["snapshot", s]).map_err(|e| (e, s))))
                .collect();
            running
                .into_iter()
                .map(|h| h.join().expect("zfs snapshot thread"))
                .collect::<Vec<_>>()
        });
        for r in results {
            r.map_err(|(e, s)| err(e, s))?;
        }
        Ok(())
    }

    fn clone_all(&mut self, clones: &[(String, String, Option<u64>)]) -> Result<(), DriverError> {
        // Each `zfs clone` waits for a transaction group to commit; issued
        // at once, the clones of one replica share commits instead of
        // queueing behind each other (the replica latency under load).
        // The groups first, one by one: two threads making one group at
        // once can fail its mount on zfs-fuse.
        let targets: Vec<(String, Option<String>)> =
            clones.iter().map(|(_, ds, _)| self.target(ds)).collect();
        for ((_, ds, _), (_, group)) in clones.iter().zip(&targets) {
            self.make_group(group.as_deref())
                .map_err(|e| zfs_err(e, "clone", ds.strip_prefix("vol/").unwrap_or(ds)))?;
        }
        let this = &*self;
        let results = std::thread::scope(|sc| {
            let running: Vec<_> = clones
                .iter()
                .zip(&targets)
                .map(|((snap, ds, _), (full, group))| {
                    sc.spawn(move || {
                        this.zfs(&["clone", &this.full(snap), full])
                            .map(|_| group.clone())
                            .map_err(|e| zfs_err(e, "clone", ds.strip_prefix("vol/").unwrap_or(ds)))
                    })
                })
                .collect();
            running
                .into_iter()
                .map(|h| h.join().expect("zfs clone thread"))
                .collect::<Vec<_>>()
        });
        let mut failed = None;
        for (r, (_, ds, _)) in results.into_iter().zip(clones) {
            match r {
                Ok(group) => self.joined(ds, group),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        for (_, ds, size) in clones {
            if let Some(size) = size {
                self.grow(ds, *size, "clone")?;
            }
        }
        Ok(())
    }

    fn clone(&mut self, snap: &str, ds: &str, size: Option<u64>) -> Result<(), DriverError> {
        let (full, group) = self.target(ds);
        self.make_group(group.as_deref())
            .and_then(|_| self.zfs(&["clone", &self.full(snap), &full]))
            .map_err(|e| zfs_err(e, "clone", ds.strip_prefix("vol/").unwrap_or(ds)))?;
        self.joined(ds, group);
        if let Some(size) = size {
            self.grow(ds, size, "clone")?;
        }
        Ok(())
    }

    fn promote(&mut self, ds: &str) -> Result<(), DriverError> {
        self.zfs_retry("promote", ds, &["promote", &self.full(ds)])
            .map(|_| ())
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), DriverError> {
        // `zfs rename` also unmounts and remounts the clones of the
        // dataset's snapshots, which zfs-fuse cannot do from inside it.
        let prefix = format!("{from}@");
        let clones: Vec<(String, bool)> = self
            .list()?
            .into_iter()
            .filter(|d| d.origin.as_deref().is_some_and(|o| o.starts_with(&prefix)))
            .map(|d| (self.full(&d.name), d.name.starts_with("vol/")))
            .collect();
        // The mapping of a grouped capture names the member: its lazy
        // snapshots take their own names before it is renamed.
        self.unpack(from)?;
        let f = self.full(from);
        let left = self.membership(from);
        // A grouped volume renamed to another volume stays in its group
        // (or goes to the one its new name was given).
        let (t, group) = match (to.strip_prefix("vol/"), &left) {
            (Some(v), Some((g, _))) if !self.index().intent.contains_key(v) => {
                (format!("{}/grp/{g}/{v}", self.root), Some(g.clone()))
            }
            (Some(_), _) => self.target(to),
            (None, _) => (self.full(to), None),
        };
        self.make_group(group.as_deref())
            .map_err(|e| zfs_err(e, "rename", to))?;
        let mut unmount: Vec<&str> = clones.iter().map(|c| c.0.as_str()).collect();
        unmount.push(&f);
        let result = self.zfs_retry_after("rename", from, &["rename", &f, &t], &unmount);
        for (c, _) in clones.iter().filter(|c| c.1) {
            let _ = self.zfs(&["mount", c]);
        }
        // A live volume is mounted again (its image must be reachable);
        // trash stays unmounted. On failure, the original is remounted.
        let mounted = if result.is_ok() { &t } else { &f };
        if result.is_err() || to.starts_with("vol/") {
            let _ = self.zfs(&["mount", mounted]);
        }
        result?;
        // The index follows: the member's snapshots went with it.
        if let Some((g, m)) = &left {
            let held: Vec<String> = {
                let mut ix = self.index();
                ix.member.remove(m);
                ix.receiving.remove(m);
                ix.group_snaps
                    .iter()
                    .filter(|(k, h)| k.0 == *g && h.contains(m))
                    .map(|(k, _)| k.1.clone())
                    .collect()
            };
            let stays = group.as_deref() == Some(g.as_str());
            let new = to.strip_prefix("vol/").unwrap_or(to).to_string();
            for s in held {
                if stays {
                    if let Some(h) = self.index().group_snaps.get_mut(&(g.clone(), s.clone())) {
                        h.insert(new.clone());
                    }
                }
                self.released(g, m, &s);
            }
        }
        self.joined(to, group);
        Ok(())
    }

    fn rename_snapshot(&mut self, snap: &str, to: &str) -> Result<(), DriverError> {
        let real = self.full(snap);
        let (ds, short) = real.split_once('@').unwrap_or((&real, ""));
        let target = format!("{ds}@{to}");
        self.zfs_retry("rename", snap, &["rename", &real, &target])?;
        let short = short.to_string();
        self.index().lazy.remove(snap);
        if let Some((g, m)) = self.membership(snap) {
            self.released(&g, &m, &short);
        }
        Ok(())
    }

    fn destroy(&mut self, name: &str) -> Result<(), DriverError> {
        let full = self.full(name);
        let member = self.membership(name);
        if let Some((_, short)) = full.split_once('@') {
            let short = short.to_string();
            self.zfs_retry("destroy", name, &["destroy", &full])?;
            self.index().lazy.remove(name);
            if let Some((g, m)) = member {
                self.released(&g, &m, &short);
            }
            return Ok(());
        }
        self.zfs_retry_after("destroy", name, &["destroy", "-r", &full], &[&full])?;
        if let Some((g, m)) = member {
            let held: Vec<String> = {
                let mut ix = self.index();
                ix.member.remove(&m);
                ix.receiving.remove(&m);
                ix.lazy.retain(|v, _| !v.starts_with(&format!("vol/{m}@")));
                ix.group_snaps
                    .iter()
                    .filter(|(k, h)| k.0 == g && h.contains(&m))
                    .map(|(k, _)| k.1.clone())
                    .collect()
            };
            for s in held {
                self.released(&g, &m, &s);
            }
        }
        Ok(())
    }

    fn exists(&mut self, ds: &str) -> Result<bool, DriverError> {
        match self.zfs(&["list", "-H", "-o", "name", &self.full(ds)]) {
            Ok(_) => Ok(true),
            Err(CmdError::Failed(m)) if m.contains("does not exist") => Ok(false),
            Err(e) => Err(zfs_err(e, "exists", ds)),
        }
    }

    fn vol_names(&mut self) -> Result<Vec<String>, DriverError> {
        let (vol, grp) = (format!("{}/vol", self.root), format!("{}/grp", self.root));
        let entries = self.listing(&[&vol, &grp], Some("3"))?;
        let lazy = self.lazy_names();
        Ok(entries
            .iter()
            .filter_map(|e| match e.rel.split_once('@') {
                None => self.virtual_name(&e.rel, &lazy),
                Some((ds, snap)) => lazy.get(&e.rel).cloned().or_else(|| {
                    let d = self.virtual_name(ds, &lazy)?;
                    Some(format!("{d}@{snap}"))
                }),
            })
            .collect())
    }

    fn info(&mut self, ds: &str) -> Result<VolumeInfo, DriverError> {
        let path = self.image(ds, "volume")?;
        let size = std::fs::metadata(&path)
            .map_err(|e| DriverError::Condition {
                op: "volume".into(),
                target: ds.into(),
                reason: "VolumeMissing",
                message: format!("{}: {e}", path.display()),
            })?
            .len();
        Ok(VolumeInfo {
            path,
            format: "raw",
            size,
        })
    }

    fn capacity(&mut self) -> Result<(u64, u64), DriverError> {
        let used = self.prop(&self.pool, "used");
        let avail = self.prop(&self.pool, "available");
        match (used, avail) {
            (Ok(u), Ok(a)) => {
                let (u, a): (u64, u64) = (u.parse().unwrap_or(0), a.parse().unwrap_or(0));
                Ok((u + a, a))
            }
            (Err(e), _) | (_, Err(e)) => Err(zfs_err(e, "capacity", &self.pool)),
        }
    }

    fn ensure_dataset(&mut self, config: &DatasetConfig) -> Result<DatasetState, DriverError> {
        let pool = config.pool.as_deref().unwrap_or(&self.pool);
        let full = format!("{pool}/{}", config.path);
        let exists = self.zfs(&["list", "-H", "-o", "name", &full]).is_ok();
        if exists {
            let managed = self.prop(&full, MANAGED).unwrap_or_default();
            if managed != "yes" {
                return Err(DriverError::Condition {
                    op: "dataset".into(),
                    target: full.clone(),
                    reason: "NameCollision",
                    message: format!(
                        "{full} exists and was not created by deorch; it is left untouched"
                    ),
                });
            }
            for (k, v) in &config.properties {
                let current = self.prop(&full, k).unwrap_or_default();
                if &current != v {
                    let kv = format!("{k}={v}");
                    self.zfs(&["set", &kv, &full])
                        .map_err(|e| zfs_err(e, "set", &kv))?;
                }
            }
        } else {
            let mut args: Vec<String> = vec!["create".into(), "-p".into()];
            args.extend(["-o".into(), format!("{MANAGED}=yes")]);
            for (k, v) in &config.properties {
                args.extend(["-o".into(), format!("{k}={v}")]);
            }
            args.push(full.clone());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.zfs(&args).map_err(|e| zfs_err(e, "dataset", &full))?;
        }
        let num = |p: &str| {
            self.prop(&full, p)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(DatasetState {
            used: num("used"),
            available: num("available"),
            mountpoint: self.prop(&full, "mountpoint").ok(),
            unsupported: Vec::new(),
        })
    }

    fn destroy_dataset(&mut self, config: &DatasetConfig) -> Result<(), DriverError> {
        let pool = config.pool.as_deref().unwrap_or(&self.pool);
        let full = format!("{pool}/{}", config.path);
        if self.zfs(&["list", "-H", "-o", "name", &full]).is_err() {
            return Ok(());
        }
        if self.prop(&full, MANAGED).unwrap_or_default() != "yes" {
            return Err(DriverError::Condition {
                op: "dataset".into(),
                target: full.clone(),
                reason: "NameCollision",
                message: format!("{full} was not created by deorch; not destroyed"),
            });
        }
        self.zfs_retry_after("destroy", &full, &["destroy", "-r", &full], &[&full])
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_backoff_doubles_to_its_cap_and_stops_within_the_patience() {
        let mut b = Backoff::new(BUSY_PATIENCE);
        let pauses: Vec<Duration> = std::iter::from_fn(|| b.next()).collect();
        assert_eq!(pauses[0], BUSY_PAUSE_FIRST);
        assert_eq!(pauses[1], BUSY_PAUSE_FIRST * 2);
        assert!(pauses.iter().all(|p| *p <= BUSY_PAUSE_MAX));
        assert!(pauses.contains(&BUSY_PAUSE_MAX), "{pauses:?}");
        let total: Duration = pauses.iter().sum();
        assert!(total <= BUSY_PATIENCE, "{total:?}");
        // Within one capped pause of the patience: it is not given up early.
        assert!(total + BUSY_PAUSE_MAX > BUSY_PATIENCE, "{total:?}");
        assert_eq!(Backoff::new(Duration::from_millis(10)).next(), None);
    }
}
