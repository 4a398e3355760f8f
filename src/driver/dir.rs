//! Directory storage: qcow2 images with backing chains (written by
//! [`super::qcow2`]; `qemu-img` converts imports), the
//! embedded default when no ZFS pool is configured.
//!
//! Layout below the root: `volumes/<name>.qcow2` are the live, writable
//! volumes; `layers/<id>.qcow2` are frozen, read-only layers that volumes
//! (and other layers) are backed by; `tmp/` holds files being made. A
//! clone freezes the source: its file is hard-linked as a new layer, a new
//! empty overlay on that layer atomically replaces the source's name, and
//! the clone is another overlay on the same layer. Every step is atomic
//! (`link`, `rename`), so a crash leaves either the old or the new state
//! plus, at worst, an unreferenced layer link or a `tmp/` file.
//!
//! Removal is transparent by construction: destroying a volume unlinks its
//! own overlay only; a layer lives as long as some volume's backing chain
//! reaches it, and [`Storage::gc`] deletes the unreachable ones (and
//! `tmp/`). Dependencies come from the qcow2 headers themselves, so there is
//! nothing else to keep consistent.
//!
//! A running VM's disk is snapshotted with QEMU's help
//! ([`Storage::clone_volumes_live`]): after the freeze above, QEMU is told
//! over QMP (`blockdev-add` + `blockdev-snapshot`) to write to the new
//! overlay. A disk some QEMU holds that the caller did not declare live is
//! refused (`VolumeInUse`) rather than frozen under the writer.

mod points;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::cmd;
use super::cmd::io_error as io;
use super::cow::{blocking, check_volume_name, collision, nonce};
use super::qcow2;
use super::{
    BoxFuture, CloneRequest, DatasetConfig, DatasetState, DriverError, LiveDisks, Storage,
    VolumeInfo, FASTR_TAG,
};

const TIMEOUT: Duration = Duration::from_secs(600);

/// Directory storage of one node.
pub struct DirStorage {
    inner: Arc<Mutex<Dir>>,
    root: PathBuf,
    /// FASTR, sending: the running disk of each volume a point was taken
    /// of, and for each (volume, point) prepared, the point its stream
    /// starts from (`None`: the whole disk).
    sending: Mutex<Sending>,
}

#[derive(Default)]
struct Sending {
    disks: BTreeMap<String, points::LiveDisk>,
    prepared: BTreeMap<(String, String), Option<String>>,
}

/// The directory itself.
#[derive(Debug)]
pub struct Dir {
    root: PathBuf,
    seq: u64,
}

impl Dir {
    fn volume_path(&self, v: &str) -> PathBuf {
        self.root.join("volumes").join(format!("{v}.qcow2"))
    }

    fn tmp(&mut self, what: &str) -> PathBuf {
        self.seq += 1;
        self.root
            .join("tmp")
            .join(format!("{what}.{}.{}", nonce(), self.seq))
    }

    fn qemu_img(op: &str, target: &str, args: &[&str]) -> Result<(), DriverError> {
        cmd::run("qemu-img", args, TIMEOUT)
            .map(|_| ())
            .map_err(|e| e.into_driver(op, target))
    }

    fn install(&self, op: &str, tmp: &Path, v: &str) -> Result<(), DriverError> {
        std::fs::rename(tmp, self.volume_path(v)).map_err(|e| io(op, v, e))?;
        sync_dir(&self.root.join("volumes"));
        Ok(())
    }

    /// A new empty overlay on `backing` in `tmp/`, of `size` bytes (the
    /// backing file's size when not given).
    fn overlay(
        &mut self,
        op: &str,
        backing: &Path,
        size: Option<u64>,
    ) -> Result<PathBuf, DriverError> {
        let tmp = self.tmp("overlay");
        let target = tmp.display().to_string();
        let size = match size {
            Some(s) => s,
            None => qcow2::header(backing).map_err(|e| io(op, &target, e))?.size,
        };
        qcow2::create(&tmp, size, Some(backing)).map_err(|e| io(op, &target, e))?;
        Ok(tmp)
    }

    fn clone_volumes(
        &mut self,
        reqs: &[CloneRequest],
        live: Option<(&LiveDisks, &tokio::runtime::Handle)>,
    ) -> Result<(), DriverError> {
        // Clones of FASTR copy points (`copy@point`): overlays on the
        // point's layer, which is frozen already.
        let (at_point, reqs): (Vec<&CloneRequest>, Vec<&CloneRequest>) = reqs
            .iter()
            .partition(|r| crate::model::names::parse_at_point(&r.source).is_some());
        for r in &at_point {
            check_volume_name("clone", &r.volume)?;
            if self.volume_path(&r.volume).exists() {
                return Err(collision("clone", &r.volume));
            }
        }
        for r in at_point {
            let (copy, tag) = crate::model::names::parse_at_point(&r.source).expect("partitioned");
            check_volume_name("clone", copy)?;
            self.clone_point(&r.volume, copy, tag, r.size)?;
        }
        let reqs: Vec<CloneRequest> = reqs.into_iter().cloned().collect();
        let reqs = reqs.as_slice();
        for r in reqs {
            check_volume_name("clone", &r.volume)?;
            check_volume_name("clone", &r.source)?;
            if self.volume_path(&r.volume).exists() {
                return Err(collision("clone", &r.volume));
            }
            if !self.volume_path(&r.source).exists() {
                return Err(DriverError::NotFound {
                    op: "clone".into(),
                    target: r.source.clone(),
                });
            }
        }
        let sources: BTreeSet<&str> = reqs.iter().map(|r| r.source.as_str()).collect();
        let is_live = |s: &str| live.is_some_and(|(l, _)| l.volumes.contains_key(s));
        for s in &sources {
            if !is_live(s) {
                self.check_not_in_use(s)?;
            }
        }
        let mut layers = std::collections::BTreeMap::new();
        for s in sources {
            // A source with nothing written since its last freeze (a
            // spacesuit cloned into many VMs) is an empty overlay on a
            // layer already: clone that layer, and its chain does not grow.
            if !is_live(s) {
                if let Some(layer) = self.unchanged_layer(s) {
                    // The overlay may be larger than its layer (grown).
                    let size = qcow2::header(&self.volume_path(s))
                        .map(|h| h.size)
                        .unwrap_or(0);
                    layers.insert(s.to_string(), (layer, size));
                    continue;
                }
            }
            // Freeze: the source's file becomes a layer (same inode), and a
            // fresh overlay on it takes the source's name. A running VM is
            // then switched to that overlay by its hypervisor; until the
            // switch it still writes the layer, which the overlay reads
            // through, so a crash in between loses nothing (the layer is
            // only cloned after the switch).
            let layer = {
                let t = self.tmp(s);
                self.root.join("layers").join(format!(
                    "{}.qcow2",
                    t.file_name().unwrap_or_default().to_string_lossy()
                ))
            };
            std::fs::hard_link(self.volume_path(s), &layer).map_err(|e| io("clone", s, e))?;
            let size = qcow2::header(&layer).map(|h| h.size).ok();
            let over = self.overlay("clone", &layer, size)?;
            if !is_live(s) {
                carry_bitmaps("clone", s, &layer, &over)?;
            }
            self.install("clone", &over, s)?;
            if let Some((l, handle)) = live.filter(|_| is_live(s)) {
                handle.block_on(l.switch(s, &self.volume_path(s)))?;
            }
            layers.insert(s.to_string(), (layer, size.unwrap_or(0)));
        }
        for r in reqs {
            let (layer, base) = &layers[&r.source];
            let over = self.overlay("clone", layer, Some(r.size.unwrap_or(0).max(*base)))?;
            self.install("clone", &over, &r.volume)?;
        }
        Ok(())
    }

    /// The layer a volume is an empty overlay on, if it is one.
    fn unchanged_layer(&self, v: &str) -> Option<PathBuf> {
        let path = self.volume_path(v);
        let backing = qcow2::header(&path).ok()?.backing?;
        let layers = self.root.join("layers");
        (backing.parent() == Some(layers.as_path()) && qcow2::is_empty(&path).ok()?)
            .then_some(backing)
    }

    /// A running QEMU holds its images' locks; freezing such a file here
    /// would let QEMU keep writing into the frozen layer. A VM's disk is
    /// captured through its hypervisor (`clone_volumes_live`); a disk held
    /// by a process nobody declared is refused.
    fn check_not_in_use(&self, v: &str) -> Result<(), DriverError> {
        let path = self.volume_path(v);
        match qcow2::locked(&path) {
            Ok(true) => Err(DriverError::Condition {
                op: "clone".into(),
                target: v.into(),
                reason: "VolumeInUse",
                message: format!(
                    "{v} is open in some process (QEMU's image lock), which deorch was not told runs it: a running VM's disk is captured through its VM (live replica); otherwise stop that process"
                ),
            }),
            Ok(false) => Ok(()),
            Err(e) => Err(io("clone", v, e)),
        }
    }

    fn gc(&mut self) -> Result<usize, DriverError> {
        let mut live: BTreeSet<PathBuf> = BTreeSet::new();
        let mut todo: Vec<PathBuf> = list_files(&self.root.join("volumes"));
        while let Some(f) = todo.pop() {
            if let Ok(h) = qcow2::header(&f) {
                if let Some(b) = h.backing {
                    let b = if b.is_absolute() {
                        b
                    } else {
                        f.parent().unwrap_or(Path::new("/")).join(b)
                    };
                    if live.insert(b.clone()) {
                        todo.push(b);
                    }
                }
            }
        }
        let mut n = 0;
        for layer in list_files(&self.root.join("layers")) {
            if !live.contains(&layer) {
                std::fs::remove_file(&layer).map_err(|e| io("gc", &layer.to_string_lossy(), e))?;
                n += 1;
            }
        }
        for t in list_files(&self.root.join("tmp")) {
            let _ = std::fs::remove_file(t);
        }
        Ok(n)
    }

    fn dataset_path(&self, config: &DatasetConfig) -> Result<PathBuf, DriverError> {
        let p = Path::new(&config.path);
        if p.is_absolute()
            || p.components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(DriverError::Permanent {
                op: "dataset".into(),
                target: config.path.clone(),
                message: "a dataset path is relative and has no '.' or '..'".into(),
            });
        }
        Ok(self.root.join("datasets").join(p))
    }
}

/// FASTR's persistent bitmaps in the image of volume `v`, a stopped
/// disk whose file just became the layer `from`, copied onto `to`, the
/// new overlay that takes the volume's name: when the VM runs again its
/// QEMU loads them from there, and the next FASTR round stays
/// incremental. (A running disk's bitmaps move inside QEMU:
/// `QemuHypervisor::live_snapshot`.) Bitmaps a killed QEMU left in use
/// are not carried: they may have missed writes.
fn carry_bitmaps(op: &str, v: &str, from: &Path, to: &Path) -> Result<(), DriverError> {
    if !qcow2::has_bitmaps(from).map_err(|e| io(op, v, e))? {
        return Ok(());
    }
    let from_s = from.display().to_string();
    let info = cmd::run(
        "qemu-img",
        &["info", "--output=json", "-f", "qcow2", &from_s],
        TIMEOUT,
    )
    .map_err(|e| e.into_driver(op, v))?;
    let info: serde_json::Value = serde_json::from_str(&info.stdout)
        .map_err(|e| DriverError::permanent(op, v, format!("qemu-img info: {e}")))?;
    let to_s = to.display().to_string();
    for b in info["format-specific"]["data"]["bitmaps"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(name) = b["name"].as_str().filter(|n| n.starts_with(FASTR_TAG)) else {
            continue;
        };
        let in_use = b["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "in-use"));
        if in_use {
            continue;
        }
        let g = b["granularity"].as_u64().unwrap_or(65536).to_string();
        cmd::run(
            "qemu-img",
            &[
                "bitmap", "--add", "-g", &g, "--merge", name, "-b", &from_s, "-F", "qcow2", "-f",
                "qcow2", &to_s, name,
            ],
            TIMEOUT,
        )
        .map_err(|e| e.into_driver(op, v))?;
    }
    Ok(())
}

fn list_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

fn statvfs(path: &Path) -> std::io::Result<(u64, u64)> {
    let st = rustix::fs::statvfs(path)?;
    Ok((st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize))
}

fn du(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut todo = vec![path.to_path_buf()];
    while let Some(p) = todo.pop() {
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            total += m.blocks() * 512;
            if m.is_dir() {
                todo.extend(list_files(&p));
            }
        }
    }
    total
}

impl DirStorage {
    /// Use (and create) `root`; finishes interrupted work first.
    pub fn open(root: &Path) -> Result<DirStorage, DriverError> {
        for sub in [
            "volumes",
            "layers",
            "tmp",
            "datasets",
            "incoming",
            "fastr-out",
        ] {
            std::fs::create_dir_all(root.join(sub))
                .map_err(|e| io("open", &root.to_string_lossy(), e))?;
        }
        let root =
            std::fs::canonicalize(root).map_err(|e| io("open", &root.to_string_lossy(), e))?;
        let mut dir = Dir {
            root: root.clone(),
            seq: 0,
        };
        dir.recover_points()?;
        dir.gc()?;
        Ok(DirStorage {
            inner: Arc::new(Mutex::new(dir)),
            root,
            sending: Mutex::new(Sending::default()),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Dir) -> Result<T, DriverError> + Send + 'static,
    ) -> Result<T, DriverError> {
        blocking(&self.inner, f).await
    }
}

impl Storage for DirStorage {
    fn name(&self) -> &'static str {
        "dir"
    }
    fn create<'a>(&'a self, volume: &'a str, size: u64) -> BoxFuture<'a, Result<(), DriverError>> {
        let volume = volume.to_string();
        Box::pin(self.with(move |d| {
            check_volume_name("create", &volume)?;
            if d.volume_path(&volume).exists() {
                return Err(collision("create", &volume));
            }
            let tmp = d.tmp(&volume);
            qcow2::create(&tmp, size, None).map_err(|e| io("create", &volume, e))?;
            d.install("create", &tmp, &volume)
        }))
    }
    fn import<'a>(
        &'a self,
        volume: &'a str,
        path: &'a str,
        format: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let (volume, path, format) = (
            volume.to_string(),
            path.to_string(),
            format.map(str::to_string),
        );
        Box::pin(self.with(move |d| {
            check_volume_name("import", &volume)?;
            if d.volume_path(&volume).exists() {
                return Err(collision("import", &volume));
            }
            let tmp = d.tmp(&volume);
            let t = tmp.to_string_lossy().to_string();
            let mut args = vec!["convert", "-q", "-O", "qcow2"];
            if let Some(f) = &format {
                args.extend(["-f", f.as_str()]);
            }
            args.extend([path.as_str(), t.as_str()]);
            Dir::qemu_img("import", &path, &args)?;
            d.install("import", &tmp, &volume)
        }))
    }
    fn clone_volumes<'a>(
        &'a self,
        requests: &'a [CloneRequest],
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let requests = requests.to_vec();
        Box::pin(self.with(move |d| d.clone_volumes(&requests, None)))
    }
    fn clone_volumes_live<'a>(
        &'a self,
        requests: &'a [CloneRequest],
        live: &'a LiveDisks,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let requests = requests.to_vec();
        let live = live.clone();
        let handle = tokio::runtime::Handle::current();
        Box::pin(self.with(move |d| d.clone_volumes(&requests, Some((&live, &handle)))))
    }
    fn destroy<'a>(&'a self, volume: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        let volume = volume.to_string();
        Box::pin(self.with(move |d| {
            check_volume_name("destroy", &volume)?;
            // A FASTR stream prepared of it (the VM moved away).
            for f in list_files(&d.root.join("fastr-out")) {
                if f.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{volume}@")))
                {
                    let _ = std::fs::remove_file(f);
                }
            }
            match std::fs::remove_file(d.volume_path(&volume)) {
                Ok(()) => sync_dir(&d.root.join("volumes")),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("destroy", &volume, e)),
            }
            d.gc().map(|_| ())
        }))
    }
    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        let (from, to) = (from.to_string(), to.to_string());
        Box::pin(self.with(move |d| {
            check_volume_name("rename", &from)?;
            check_volume_name("rename", &to)?;
            if d.volume_path(&to).exists() {
                return Err(collision("rename", &to));
            }
            std::fs::rename(d.volume_path(&from), d.volume_path(&to))
                .map_err(|e| io("rename", &from, e))?;
            sync_dir(&d.root.join("volumes"));
            Ok(())
        }))
    }
    fn exists<'a>(&'a self, volume: &'a str) -> BoxFuture<'a, Result<bool, DriverError>> {
        let volume = volume.to_string();
        Box::pin(self.with(move |d| {
            check_volume_name("exists", &volume)?;
            Ok(d.volume_path(&volume).exists())
        }))
    }
    fn volume<'a>(&'a self, volume: &'a str) -> BoxFuture<'a, Result<VolumeInfo, DriverError>> {
        let volume = volume.to_string();
        Box::pin(self.with(move |d| {
            check_volume_name("volume", &volume)?;
            let path = d.volume_path(&volume);
            let h = qcow2::header(&path).map_err(|e| io("volume", &volume, e))?;
            Ok(VolumeInfo {
                path,
                format: "qcow2",
                size: h.size,
            })
        }))
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<String>, DriverError>> {
        Box::pin(self.with(|d| {
            let mut v: Vec<String> = list_files(&d.root.join("volumes"))
                .iter()
                .filter_map(|p| {
                    p.file_name()?
                        .to_str()?
                        .strip_suffix(".qcow2")
                        .map(str::to_string)
                })
                .collect();
            v.sort();
            Ok(v)
        }))
    }
    fn gc(&self) -> BoxFuture<'_, Result<usize, DriverError>> {
        Box::pin(self.with(|d| d.gc()))
    }
    fn capacity(&self) -> BoxFuture<'_, Result<(u64, u64), DriverError>> {
        Box::pin(
            self.with(|d| {
                statvfs(&d.root).map_err(|e| io("capacity", &d.root.to_string_lossy(), e))
            }),
        )
    }
    fn ensure_dataset<'a>(
        &'a self,
        config: &'a DatasetConfig,
    ) -> BoxFuture<'a, Result<DatasetState, DriverError>> {
        let config = config.clone();
        Box::pin(self.with(move |d| {
            let path = d.dataset_path(&config)?;
            std::fs::create_dir_all(&path).map_err(|e| io("dataset", &config.path, e))?;
            let (_, free) = statvfs(&path).map_err(|e| io("dataset", &config.path, e))?;
            Ok(DatasetState {
                used: du(&path),
                available: free,
                mountpoint: Some(path.to_string_lossy().to_string()),
                unsupported: config.properties.keys().cloned().collect(),
            })
        }))
    }
    fn destroy_dataset<'a>(
        &'a self,
        config: &'a DatasetConfig,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let config = config.clone();
        Box::pin(self.with(move |d| {
            let path = d.dataset_path(&config)?;
            match std::fs::remove_dir_all(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io("dataset", &config.path, e)),
            }
        }))
    }
    // FASTR: see `points`.
    fn fastr_kind(&self) -> Option<&'static str> {
        Some("qcow2-backup")
    }
    fn one_stream_per_round(&self) -> bool {
        true
    }
    fn atomic_points(&self) -> bool {
        true
    }
    fn mark_points_live<'a>(
        &'a self,
        volumes: &'a [String],
        tag: &'a str,
        live: &'a LiveDisks,
        bases: &'a [Option<String>],
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let mut disks = Vec::new();
            for v in volumes {
                let Some((id, disk)) = live.volumes.get(v) else {
                    return Err(DriverError::permanent(
                        "mark point",
                        v,
                        "a point of a dir volume is taken through the VM running it, and none was named",
                    ));
                };
                let socket = live
                    .hypervisor
                    .as_ref()
                    .and_then(|h| h.qmp_socket(id))
                    .ok_or_else(|| {
                        DriverError::permanent(
                            "mark point",
                            v,
                            format!("VM {id} has no QMP socket"),
                        )
                    })?;
                disks.push((
                    v.clone(),
                    points::LiveDisk {
                        socket,
                        disk: disk.clone(),
                    },
                ));
            }
            {
                let mut s = self.sending.lock().unwrap_or_else(|p| p.into_inner());
                s.prepared.retain(|(v, _), _| !volumes.contains(v));
                for (v, d) in &disks {
                    s.disks.insert(v.clone(), d.clone());
                }
            }
            let base = points::mark(&self.root, &disks, tag, bases).await?;
            let mut s = self.sending.lock().unwrap_or_else(|p| p.into_inner());
            for v in volumes {
                s.prepared
                    .insert((v.clone(), tag.to_string()), base.clone());
            }
            Ok(())
        })
    }
    fn send_command<'a>(
        &'a self,
        volume: &'a str,
        from: Option<&'a str>,
        to: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
        Box::pin(async move {
            let base = self
                .sending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .prepared
                .get(&(volume.to_string(), to.to_string()))
                .cloned()
                .ok_or_else(|| DriverError::not_found("send", &format!("{volume}@{to}")))?;
            // What changed since `base` holds what changed since any later
            // point.
            if let Some(b) = &base {
                if from.and_then(points::point_ms) < points::point_ms(b) || from.is_none() {
                    return Err(DriverError::permanent(
                        "send",
                        &format!("{volume}@{to}"),
                        format!(
                            "the stream holds what changed since {b}, not since {}",
                            from.unwrap_or("nothing (a whole disk)")
                        ),
                    ));
                }
            }
            let path = points::prepared(&self.root, volume, to);
            Ok(vec!["cat".into(), path.display().to_string()])
        })
    }
    fn receive_command<'a>(
        &'a self,
        volume: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
        let volume = volume.to_string();
        Box::pin(self.with(move |d| {
            check_volume_name("receive", &volume)?;
            Ok(d.receive_argv(&volume))
        }))
    }
    fn point_received<'a>(
        &'a self,
        volume: &'a str,
        tag: &'a str,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let (volume, tag) = (volume.to_string(), tag.to_string());
        Box::pin(self.with(move |d| {
            check_volume_name("receive", &volume)?;
            d.point_received(&volume, &tag)
        }))
    }
    fn received<'a>(&'a self, volume: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        let _ = volume;
        Box::pin(async { Ok(()) })
    }
    fn points<'a>(&'a self, volume: &'a str) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
        let volume = volume.to_string();
        Box::pin(async move {
            if !points::is_copy(&volume) {
                let disk = self
                    .sending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .disks
                    .get(&volume)
                    .cloned();
                return match disk {
                    Some(d) => points::bitmaps(&volume, &d).await,
                    None => Ok(Vec::new()),
                };
            }
            self.with(move |d| {
                check_volume_name("points", &volume)?;
                Ok(d.copy_points(&volume))
            })
            .await
        })
    }
    fn rollback<'a>(
        &'a self,
        volume: &'a str,
        tag: &'a str,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let (volume, tag) = (volume.to_string(), tag.to_string());
        Box::pin(self.with(move |d| {
            check_volume_name("rollback", &volume)?;
            d.rollback_copy(&volume, &tag)
        }))
    }
    fn drop_point<'a>(
        &'a self,
        volume: &'a str,
        tag: &'a str,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            if points::is_copy(volume) {
                let (volume, tag) = (volume.to_string(), tag.to_string());
                return self
                    .with(move |d| {
                        check_volume_name("drop point", &volume)?;
                        d.drop_copy_point(&volume, &tag)
                    })
                    .await;
            }
            let disk = {
                let mut s = self.sending.lock().unwrap_or_else(|p| p.into_inner());
                s.prepared.remove(&(volume.to_string(), tag.to_string()));
                s.disks.get(volume).cloned()
            };
            let _ = std::fs::remove_file(points::prepared(&self.root, volume, tag));
            match disk {
                Some(d) => points::drop_bitmap(volume, &d, tag).await,
                None => Ok(()),
            }
        })
    }
}
