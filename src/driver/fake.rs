//! In-memory drivers with failure injection, for the engine's logic and
//! fault tests (never instead of the real drivers' own tests).
//!
//! Failures are planned per operation name: `faults().fail_next("start", 3)`
//! makes the next three `start` calls fail transiently. Every call is
//! recorded (`faults().calls()`) so tests can assert what was done.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::cow::{CowBackend, CowStorage, MemBackend};
use super::{BoxFuture, DriverError, Hypervisor, Net, StopReason, VmConfig, VmState};

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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
        self.with_sync(|b| {
            b.list()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|d| d.name.strip_prefix("vol/").map(str::to_string))
                .collect()
        })
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
