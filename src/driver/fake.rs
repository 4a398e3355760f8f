//! In-memory drivers with failure injection, for the engine's logic and
//! fault tests (never instead of the real drivers' own tests).
//!
//! Failures are planned per operation name: `faults().fail_next("start", 3)`
//! makes the next three `start` calls fail transiently. Every call is
//! recorded (`faults().calls()`) so tests can assert what was done.

use crate::clock::now_ms;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::cow::{collision, CowBackend, CowStorage, Ds};
use super::{
    BoxFuture, DatasetConfig, DatasetState, DriverError, Drivers, Hypervisor, Net, StopReason,
    VmConfig, VmState, VolumeInfo,
};

/// Planned failures and the call log, shared by the three fakes.
#[derive(Debug, Default)]
pub struct Faults {
    plan: Mutex<BTreeMap<String, (usize, bool)>>,
    calls: Mutex<Vec<String>>,
}

impl Faults {
    /// Make the next `n` calls of `op` fail transiently.
    pub fn fail_next(&self, op: &str, n: usize) {
        self.plan.lock().unwrap().insert(op.into(), (n, false));
    }
    /// Make the next `n` calls of `op` fail permanently.
    pub fn fail_next_permanently(&self, op: &str, n: usize) {
        self.plan.lock().unwrap().insert(op.into(), (n, true));
    }
    /// Forget every planned failure.
    pub fn clear(&self) {
        self.plan.lock().unwrap().clear();
    }
    /// Every call so far, as `op target`.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    /// How many calls of `op` were made.
    pub fn count(&self, op: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.split(' ').next() == Some(op))
            .count()
    }
    /// Record a call and fail it if planned.
    pub fn check(&self, op: &str, target: &str) -> Result<(), DriverError> {
        self.calls.lock().unwrap().push(format!("{op} {target}"));
        let mut plan = self.plan.lock().unwrap();
        if let Some((left, permanent)) = plan.get_mut(op) {
            if *left > 0 {
                *left -= 1;
                let message = "injected failure".to_string();
                return Err(if *permanent {
                    DriverError::Permanent {
                        op: op.into(),
                        target: target.into(),
                        message,
                    }
                } else {
                    DriverError::Transient {
                        op: op.into(),
                        target: target.into(),
                        message,
                    }
                });
            }
        }
        Ok(())
    }
}

/// A hypervisor that runs nothing.
#[derive(Debug, Default)]
pub struct FakeHypervisor {
    vms: Mutex<BTreeMap<String, VmState>>,
    next_pid: Mutex<u32>,
    faults: Faults,
}

impl FakeHypervisor {
    /// Failure plan and call log.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }
    /// Simulate QEMU dying (`Crashed`) or the guest powering off.
    pub fn stop_behind_our_back(&self, id: &str, reason: StopReason) {
        if let Some(s) = self.vms.lock().unwrap().get_mut(id) {
            *s = VmState::Stopped(reason);
        }
    }
    /// Ids of VMs that are running or paused.
    pub fn running(&self) -> BTreeSet<String> {
        self.vms
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| matches!(s, VmState::Running { .. } | VmState::Paused { .. }))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

impl Hypervisor for FakeHypervisor {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn start<'a>(&'a self, config: &'a VmConfig) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            self.faults.check("start", &config.id)?;
            let mut vms = self.vms.lock().unwrap();
            if matches!(
                vms.get(&config.id),
                Some(VmState::Running { .. } | VmState::Paused { .. })
            ) {
                return Err(DriverError::Permanent {
                    op: "start".into(),
                    target: config.id.clone(),
                    message: "already running".into(),
                });
            }
            let mut pid = self.next_pid.lock().unwrap();
            *pid += 1;
            vms.insert(
                config.id.clone(),
                VmState::Running {
                    pid: 10_000 + *pid,
                    started_ms: now_ms(),
                    config: Box::new(config.clone()),
                },
            );
            Ok(())
        })
    }
    fn stop<'a>(
        &'a self,
        id: &'a str,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            self.faults.check("stop", id)?;
            match self.vms.lock().unwrap().get_mut(id) {
                Some(s) => {
                    *s = VmState::Stopped(StopReason::Requested);
                    Ok(())
                }
                None => Err(DriverError::NotFound {
                    op: "stop".into(),
                    target: id.into(),
                }),
            }
        })
    }
    fn pause<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            self.faults.check("pause", id)?;
            let mut vms = self.vms.lock().unwrap();
            match vms.get(id).cloned() {
                Some(VmState::Running {
                    pid,
                    started_ms,
                    config,
                }) => {
                    vms.insert(
                        id.into(),
                        VmState::Paused {
                            pid,
                            started_ms,
                            config,
                        },
                    );
                    Ok(())
                }
                _ => Err(DriverError::Permanent {
                    op: "pause".into(),
                    target: id.into(),
                    message: "not running".into(),
                }),
            }
        })
    }
    fn resume<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            self.faults.check("resume", id)?;
            let mut vms = self.vms.lock().unwrap();
            match vms.get(id).cloned() {
                Some(VmState::Paused {
                    pid,
                    started_ms,
                    config,
                }) => {
                    vms.insert(
                        id.into(),
                        VmState::Running {
                            pid,
                            started_ms,
                            config,
                        },
                    );
                    Ok(())
                }
                _ => Err(DriverError::Permanent {
                    op: "resume".into(),
                    target: id.into(),
                    message: "not paused".into(),
                }),
            }
        })
    }
    fn reset<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            self.faults.check("reset", id)?;
            match self.vms.lock().unwrap().get(id) {
                Some(VmState::Running { .. } | VmState::Paused { .. }) => Ok(()),
                _ => Err(DriverError::Permanent {
                    op: "reset".into(),
                    target: id.into(),
                    message: "not running".into(),
                }),
            }
        })
    }
    fn state<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<VmState, DriverError>> {
        Box::pin(async move {
            self.faults.check("state", id)?;
            Ok(self
                .vms
                .lock()
                .unwrap()
                .get(id)
                .cloned()
                .unwrap_or(VmState::Absent))
        })
    }
    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            self.faults.check("remove", id)?;
            self.vms.lock().unwrap().remove(id);
            Ok(())
        })
    }
    /// A simulated VM holds no image open: switching is recording the call.
    fn live_snapshot<'a>(
        &'a self,
        id: &'a str,
        disk: &'a str,
        _overlay: &'a std::path::Path,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move { self.faults.check("live_snapshot", &format!("{id}/{disk}")) })
    }
}

impl Drivers {
    /// In-memory fakes of all three, no DHCP: for tests, benchmarks and a
    /// node told to simulate (`--hypervisor fake` and friends).
    pub fn fake() -> Drivers {
        Drivers {
            hypervisor: Arc::new(FakeHypervisor::default()),
            storage: Arc::new(FakeStorage::default()),
            net: Arc::new(FakeNet::default()),
            dhcp: None,
        }
    }
}

/// Volumes in memory: the copy-on-write algorithm of the real ZFS driver
/// over [`MemBackend`], which keeps ZFS's rules.
pub type FakeStorage = CowStorage<MemBackend>;

impl Default for FakeStorage {
    fn default() -> Self {
        CowStorage::new(MemBackend::new(1 << 40, Arc::default()))
    }
}

impl FakeStorage {
    /// Failure plan and call log.
    pub fn faults(&self) -> Arc<Faults> {
        self.with_sync(|b| b.faults())
    }
    /// Names of all live volumes.
    pub fn volumes(&self) -> BTreeSet<String> {
        self.with_sync(|b| super::cow::volume_names(b).unwrap_or_default())
    }
}

/// Bridges and taps in memory.
#[derive(Debug, Default)]
pub struct FakeNet {
    bridges: Mutex<BTreeMap<String, u16>>,
    taps: Mutex<BTreeMap<String, (String, u16)>>,
    addresses: Mutex<BTreeMap<String, ipnet::Ipv4Net>>,
    faults: Faults,
}

impl FakeNet {
    /// Failure plan and call log.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }
    /// Tap names.
    pub fn taps(&self) -> BTreeSet<String> {
        self.taps.lock().unwrap().keys().cloned().collect()
    }
    /// Bridge names.
    pub fn bridges(&self) -> BTreeSet<String> {
        self.bridges.lock().unwrap().keys().cloned().collect()
    }
    /// Bridge addresses.
    pub fn addresses(&self) -> BTreeMap<String, ipnet::Ipv4Net> {
        self.addresses.lock().unwrap().clone()
    }
}

impl Net for FakeNet {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn ensure_bridge<'a>(
        &'a self,
        bridge: &'a str,
        mtu: u16,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            self.faults.check("ensure_bridge", bridge)?;
            self.bridges.lock().unwrap().insert(bridge.into(), mtu);
            Ok(())
        })
    }
    fn ensure_tap<'a>(
        &'a self,
        tap: &'a str,
        bridge: &'a str,
        mtu: u16,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            self.faults.check("ensure_tap", tap)?;
            self.taps
                .lock()
                .unwrap()
                .insert(tap.into(), (bridge.into(), mtu));
            Ok(())
        })
    }
    fn remove_tap<'a>(&'a self, tap: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            self.faults.check("remove_tap", tap)?;
            self.taps.lock().unwrap().remove(tap);
            Ok(())
        })
    }
    fn remove_bridge<'a>(&'a self, bridge: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            self.faults.check("remove_bridge", bridge)?;
            self.bridges.lock().unwrap().remove(bridge);
            self.addresses.lock().unwrap().remove(bridge);
            Ok(())
        })
    }
    fn set_bridge_address<'a>(
        &'a self,
        bridge: &'a str,
        address: Option<ipnet::Ipv4Net>,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            self.faults.check("set_bridge_address", bridge)?;
            let mut a = self.addresses.lock().unwrap();
            match address {
                Some(x) => a.insert(bridge.into(), x),
                None => a.remove(bridge),
            };
            Ok(())
        })
    }
}

/// One in-memory dataset: its content is one number (a marker) so tests
/// can check that no volume ever reads something it should not.
#[derive(Debug, Clone, Default)]
struct MemDs {
    origin: Option<String>,
    size: u64,
    marker: u64,
    /// (name, txg, marker at snapshot time).
    snaps: Vec<(String, u64, u64)>,
}

/// ZFS's rules in memory, with planned failures ([`Faults`]).
#[derive(Debug, Default)]
pub struct MemBackend {
    ds: BTreeMap<String, MemDs>,
    datasets: BTreeMap<String, BTreeMap<String, String>>,
    txg: u64,
    total: u64,
    faults: Arc<Faults>,
}

impl MemBackend {
    /// An empty store of `total` bytes whose failures `faults` plans.
    pub fn new(total: u64, faults: Arc<Faults>) -> Self {
        MemBackend {
            total,
            faults,
            ..Default::default()
        }
    }
    /// Set a volume's content marker (`vol/<name>`).
    pub fn write_marker(&mut self, ds: &str, marker: u64) -> Result<(), DriverError> {
        self.get_mut("write", ds)?.marker = marker;
        Ok(())
    }
    /// A volume's content marker.
    pub fn read_marker(&mut self, ds: &str) -> Result<u64, DriverError> {
        Ok(self.get_mut("read", ds)?.marker)
    }
    /// Its failure plan.
    pub fn faults(&self) -> Arc<Faults> {
        self.faults.clone()
    }
    /// Number of snapshots held (tests: nothing leaks).
    pub fn snapshot_count(&self) -> usize {
        self.ds.values().map(|d| d.snaps.len()).sum()
    }
    fn get_mut(&mut self, op: &str, ds: &str) -> Result<&mut MemDs, DriverError> {
        self.ds.get_mut(ds).ok_or_else(|| DriverError::NotFound {
            op: op.into(),
            target: ds.into(),
        })
    }
    fn snap(&self, full: &str) -> Option<(u64, u64)> {
        let (d, s) = full.split_once('@')?;
        self.ds
            .get(d)?
            .snaps
            .iter()
            .find(|x| x.0 == s)
            .map(|x| (x.1, x.2))
    }
    fn refuse(op: &str, target: &str, message: &str) -> DriverError {
        DriverError::Permanent {
            op: op.into(),
            target: target.into(),
            message: message.into(),
        }
    }
}

impl CowBackend for MemBackend {
    const READS_IMAGE_FILES: bool = false;
    fn kind(&self) -> &'static str {
        "fake"
    }
    fn list(&mut self) -> Result<Vec<Ds>, DriverError> {
        Ok(self
            .ds
            .iter()
            .map(|(n, d)| Ds {
                name: n.clone(),
                origin: d.origin.clone(),
                snapshots: d.snaps.iter().map(|s| (s.0.clone(), s.1)).collect(),
            })
            .collect())
    }
    fn create(&mut self, ds: &str, size: u64) -> Result<(), DriverError> {
        self.faults.check("create", ds)?;
        if self.ds.contains_key(ds) {
            return Err(Self::refuse("create", ds, "dataset already exists"));
        }
        let used: u64 = self.ds.values().map(|d| d.size).sum();
        if used + size > self.total {
            return Err(DriverError::Condition {
                op: "create".into(),
                target: ds.into(),
                reason: "PoolFull",
                message: "out of space".into(),
            });
        }
        self.ds.insert(
            ds.into(),
            MemDs {
                size,
                ..Default::default()
            },
        );
        Ok(())
    }
    fn import(&mut self, ds: &str, path: &str, _format: Option<&str>) -> Result<(), DriverError> {
        self.faults.check("import", ds)?;
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(1 << 30);
        self.create(ds, size)
    }
    fn snapshot(&mut self, snaps: &[String]) -> Result<(), DriverError> {
        self.faults.check("snapshot", &snaps.join(" "))?;
        for s in snaps {
            let (d, n) = s.split_once('@').unwrap_or((s, ""));
            let d = self.ds.get(d).ok_or_else(|| DriverError::NotFound {
                op: "clone".into(),
                target: d.strip_prefix("vol/").unwrap_or(d).into(),
            })?;
            if d.snaps.iter().any(|x| x.0 == n) {
                return Err(Self::refuse("snapshot", s, "dataset already exists"));
            }
        }
        self.txg += 1;
        for s in snaps {
            let (d, n) = s.split_once('@').unwrap_or((s, ""));
            let d = self.ds.get_mut(d).expect("checked");
            d.snaps.push((n.into(), self.txg, d.marker));
        }
        Ok(())
    }
    fn clone(&mut self, snap: &str, ds: &str, size: Option<u64>) -> Result<(), DriverError> {
        self.faults.check("clone", ds)?;
        let (_, marker) = self.snap(snap).ok_or_else(|| DriverError::NotFound {
            op: "clone".into(),
            target: snap.into(),
        })?;
        if self.ds.contains_key(ds) {
            return Err(collision("clone", ds.strip_prefix("vol/").unwrap_or(ds)));
        }
        let src = snap.split_once('@').map(|x| x.0).unwrap_or(snap);
        let base = self.ds.get(src).map(|d| d.size).unwrap_or(0);
        self.ds.insert(
            ds.into(),
            MemDs {
                origin: Some(snap.into()),
                size: size.unwrap_or(0).max(base),
                marker,
                snaps: Vec::new(),
            },
        );
        Ok(())
    }
    fn promote(&mut self, ds: &str) -> Result<(), DriverError> {
        self.faults.check("promote", ds)?;
        let origin = self
            .get_mut("promote", ds)?
            .origin
            .clone()
            .ok_or_else(|| Self::refuse("promote", ds, "not a cloned filesystem"))?;
        let (parent, snap) = origin.split_once('@').expect("origin has @");
        let (txg, _) = self
            .snap(&origin)
            .ok_or_else(|| Self::refuse("promote", ds, "origin is gone"))?;
        let p = self.ds.get_mut(parent).expect("origin exists");
        let (moved, kept): (Vec<_>, Vec<_>) = p.snaps.drain(..).partition(|s| s.1 <= txg);
        p.snaps = kept;
        let parent_origin = p.origin.clone();
        p.origin = Some(format!("{ds}@{snap}"));
        let moved_names: BTreeSet<String> = moved.iter().map(|s| s.0.clone()).collect();
        let c = self.ds.get_mut(ds).expect("exists");
        c.origin = parent_origin;
        c.snaps.extend(moved);
        c.snaps.sort_by_key(|s| s.1);
        for (name, d) in self.ds.iter_mut() {
            if name == ds {
                continue;
            }
            if let Some(o) = &d.origin {
                if let Some((od, os)) = o.split_once('@') {
                    if od == parent && moved_names.contains(os) {
                        d.origin = Some(format!("{ds}@{os}"));
                    }
                }
            }
        }
        Ok(())
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<(), DriverError> {
        self.faults.check("rename", from)?;
        if self.ds.contains_key(to) {
            return Err(Self::refuse("rename", to, "dataset already exists"));
        }
        let d = self.ds.remove(from).ok_or_else(|| DriverError::NotFound {
            op: "rename".into(),
            target: from.into(),
        })?;
        self.ds.insert(to.into(), d);
        let prefix = format!("{from}@");
        for d in self.ds.values_mut() {
            if let Some(o) = &d.origin {
                if let Some(rest) = o.strip_prefix(&prefix) {
                    d.origin = Some(format!("{to}@{rest}"));
                }
            }
        }
        Ok(())
    }
    fn rename_snapshot(&mut self, snap: &str, to: &str) -> Result<(), DriverError> {
        self.faults.check("rename", snap)?;
        let (ds, from) = snap.split_once('@').unwrap_or((snap, ""));
        let d = self.get_mut("rename", ds)?;
        if d.snaps.iter().any(|x| x.0 == to) {
            return Err(Self::refuse("rename", to, "dataset already exists"));
        }
        let s = d
            .snaps
            .iter_mut()
            .find(|x| x.0 == from)
            .ok_or_else(|| DriverError::NotFound {
                op: "rename".into(),
                target: snap.into(),
            })?;
        s.0 = to.into();
        let renamed = format!("{ds}@{to}");
        for d in self.ds.values_mut() {
            if d.origin.as_deref() == Some(snap) {
                d.origin = Some(renamed.clone());
            }
        }
        Ok(())
    }
    fn destroy(&mut self, name: &str) -> Result<(), DriverError> {
        self.faults.check("destroy", name)?;
        if let Some((d, s)) = name.split_once('@') {
            if self.ds.values().any(|x| x.origin.as_deref() == Some(name)) {
                return Err(Self::refuse(
                    "destroy",
                    name,
                    "snapshot has dependent clones",
                ));
            }
            let d = self.get_mut("destroy", d)?;
            d.snaps.retain(|x| x.0 != s);
            return Ok(());
        }
        let prefix = format!("{name}@");
        if self
            .ds
            .values()
            .any(|x| x.origin.as_deref().is_some_and(|o| o.starts_with(&prefix)))
        {
            return Err(Self::refuse(
                "destroy",
                name,
                "filesystem has dependent clones",
            ));
        }
        self.ds.remove(name).ok_or_else(|| DriverError::NotFound {
            op: "destroy".into(),
            target: name.into(),
        })?;
        Ok(())
    }
    fn exists(&mut self, ds: &str) -> Result<bool, DriverError> {
        Ok(self.ds.contains_key(ds))
    }
    fn info(&mut self, ds: &str) -> Result<VolumeInfo, DriverError> {
        let size = self.get_mut("volume", ds)?.size;
        Ok(VolumeInfo {
            path: std::path::PathBuf::from(format!("/fake/{ds}")),
            format: "raw",
            size,
        })
    }
    fn capacity(&mut self) -> Result<(u64, u64), DriverError> {
        let used: u64 = self.ds.values().map(|d| d.size).sum();
        Ok((self.total, self.total.saturating_sub(used)))
    }
    fn ensure_dataset(&mut self, config: &DatasetConfig) -> Result<DatasetState, DriverError> {
        self.faults.check("ensure_dataset", &config.path)?;
        self.datasets
            .insert(config.path.clone(), config.properties.clone());
        let (_, free) = self.capacity()?;
        Ok(DatasetState {
            used: 0,
            available: free,
            mountpoint: None,
            unsupported: Vec::new(),
        })
    }
    fn destroy_dataset(&mut self, config: &DatasetConfig) -> Result<(), DriverError> {
        self.faults.check("destroy_dataset", &config.path)?;
        self.datasets.remove(&config.path);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{CloneRequest, LiveDisks, Storage};

    fn vm(id: &str) -> VmConfig {
        VmConfig {
            id: id.into(),
            cpus: 1,
            memory: 1 << 20,
            machine: crate::model::vm::Machine::Microvm,
            cpu_model: None,
            boot: None,
            disks: vec![("root".into(), "r".into()), ("data".into(), "d".into())],
            disk_images: Vec::new(),
            nics: Vec::new(),
            spice: false,
        }
    }

    /// Storage that snapshots one dataset per command (zfs-fuse, as the
    /// fake) takes a running VM's two disks with its CPUs paused, and
    /// resumes it after; one disk, or a VM its user paused, is left as
    /// it is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_running_vms_disks_are_captured_with_its_cpus_paused() {
        let storage = Arc::new(FakeStorage::default());
        assert!(!storage.atomic_points());
        for v in ["r", "d", "x"] {
            storage.create(v, 1 << 20).await.unwrap();
        }
        let faults = storage.faults();
        let hv = Arc::new(FakeHypervisor::default());
        hv.start(&vm("ns/a")).await.unwrap();
        let live = LiveDisks {
            volumes: [("r", "root"), ("d", "data")]
                .into_iter()
                .map(|(v, d)| (v.to_string(), ("ns/a".to_string(), d.to_string())))
                .collect(),
            hypervisor: Some(hv.clone()),
        };
        let req = |v: &str, s: &str| CloneRequest {
            volume: v.into(),
            source: s.into(),
            size: None,
        };
        // Hold the storage's lock: the capture waits for it, and the VM
        // must already be paused then.
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let s = storage.clone();
        let holder = std::thread::spawn(move || {
            s.with_sync(|_| {
                held_tx.send(()).unwrap();
                go_rx.recv().unwrap();
            })
        });
        held_rx.recv().unwrap();
        let (st, l) = (storage.clone(), live.clone());
        let capture =
            tokio::spawn(async move { st.capture(&[req("r1", "r"), req("d1", "d")], &l).await });
        let paused = async {
            loop {
                if matches!(hv.state("ns/a").await, Ok(VmState::Paused { .. })) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), paused)
            .await
            .expect("the VM is paused before its disks are snapshotted");
        assert_eq!(faults.count("snapshot"), 0);
        go_tx.send(()).unwrap();
        holder.join().unwrap();
        capture.await.unwrap().unwrap();
        assert!(matches!(
            hv.state("ns/a").await,
            Ok(VmState::Running { .. })
        ));
        assert_eq!(hv.faults().count("pause"), 1);
        assert_eq!(hv.faults().count("resume"), 1);

        // A failed snapshot still resumes the VM.
        storage.faults().fail_next("snapshot", 1);
        assert!(storage
            .capture(&[req("r2", "r"), req("d2", "d")], &live)
            .await
            .is_err());
        assert!(matches!(
            hv.state("ns/a").await,
            Ok(VmState::Running { .. })
        ));
        // A VM that fails to pause is not snapshotted.
        hv.faults().fail_next("pause", 1);
        let before = storage.faults().count("snapshot");
        assert!(storage
            .capture(&[req("r3", "r"), req("d3", "d")], &live)
            .await
            .is_err());
        assert_eq!(storage.faults().count("snapshot"), before);
        // One disk of the VM, or a VM its user paused: not paused (or
        // resumed) by the capture.
        let (pauses, resumes) = (hv.faults().count("pause"), hv.faults().count("resume"));
        storage.capture(&[req("r4", "r")], &live).await.unwrap();
        hv.pause("ns/a").await.unwrap();
        storage
            .capture(&[req("r5", "r"), req("d5", "d")], &live)
            .await
            .unwrap();
        assert!(matches!(hv.state("ns/a").await, Ok(VmState::Paused { .. })));
        assert_eq!(hv.faults().count("pause"), pauses + 1);
        assert_eq!(hv.faults().count("resume"), resumes);
        // A clone of the running VM's disks takes the same pause.
        hv.resume("ns/a").await.unwrap();
        storage
            .clone_volumes_live(&[req("r6", "r"), req("d6", "d")], &live)
            .await
            .unwrap();
        assert_eq!(hv.faults().count("pause"), pauses + 2);
        assert!(matches!(
            hv.state("ns/a").await,
            Ok(VmState::Running { .. })
        ));
    }
}
