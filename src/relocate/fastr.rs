//! FASTR: a running VM's volumes replicated to other nodes, incrementally
//! (docs/ALGORITHMS.md, "FASTR").
//!
//! The node that runs a VM with `spec.fastr` takes a copy point of all
//! its volumes every `interval` (transfer points `@xfer-fastr-<unix ms>`,
//! which a relocation's clean-up leaves alone) and sends each elected
//! receiver what changed since the newest point that receiver holds
//! (`zfs send -i`; the whole volume when they share none; on dir storage
//! a backup job's qcow2 file, prepared when the point is taken from the
//! receivers' points, see `driver::dir::points`), through a
//! tunnel (stream `fastr`, the same authenticated channel and bandwidth
//! cap as relocations):
//!
//! ```text
//! sender                                   receiver
//! Offer {volumes, point}  ───────────────►
//!                         ◄─────────────── Have {newest complete point}
//! Plan {from}             ───────────────►
//! per volume: the stream's bytes in frames, then an empty frame
//!                         ◄─────────────── Done {ok | why}
//! ```
//!
//! The receiver keeps each copy as volume `fastr.<volume>`. A point is
//! complete when every volume of the VM holds it. An incremental receive
//! is atomic per volume (`zfs recv` applies all of a stream or nothing),
//! and a whole one goes to `fastr.<volume>.new` and replaces the copy
//! only once every volume is in, so a sender killed mid-transfer leaves
//! the receiver its previous complete point; before answering `Have` the
//! receiver rolls back any volume that got ahead of the others. The
//! receiver keeps the newest `fastr.keep` complete points (default 1);
//! the sender keeps the newest point each receiver acknowledged (the next
//! stream's base).
//!
//! Receivers are elected from the link's live members: the runner
//! excluded, `fastr.placement` (tags, performance) satisfied, not
//! cordoned, ranked by a rendezvous score of (VM, node), the best node of
//! each microcosm first (no two copies in one rack while another rack
//! has room), so the choice stays put while those nodes live. One that
//! lists the VM (a relocation to it) stays elected and skips rounds.
//!
//! A relocation to a holder starts from the copy: see
//! [`Shared::adopt_copies`] and [`Shared::keep_as_copies`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use super::tunnel::Tunnel;
use super::{vm_id, vm_key, Link, Shared, CONNECT_TIMEOUT};
use crate::driver::FASTR_TAG;
use crate::gossip::{DocKey, NodeId};
use crate::model::vm::{Fastr, VirtualMachineSpec};
use crate::model::{names, FastrCopy, Kind, ObjectKey};
use crate::relocate::offline::{finished, spawn_piped};

/// How often a VM's volumes are replicated when its policy does not say.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// How often a node looks at which copies it holds.
const HELD_EVERY: Duration = Duration::from_secs(5);

/// A copy the VM's runner no longer elects this node for is dropped once
/// it has been spare this long (every elected receiver holding a point
/// at least as new).
const SPARE_AFTER: Duration = Duration::from_secs(15);

/// How long a receiver waits for the next frame of a stream.
const FRAME_TIMEOUT: Duration = Duration::from_secs(60);

/// The tag of the copy point taken at `ms`.
fn point_tag(ms: u64) -> String {
    format!("{FASTR_TAG}{ms}")
}

/// When copy point `tag` was taken (unix ms), if it is one.
pub fn point_ms(tag: &str) -> Option<u64> {
    tag.strip_prefix(FASTR_TAG)?.parse().ok()
}

#[derive(Debug, Serialize, Deserialize)]
struct Offer {
    volumes: Vec<String>,
    point: String,
    /// The sender's stream kind ([`crate::driver::Storage::fastr_kind`]);
    /// absent from older senders (zfs).
    #[serde(default)]
    kind: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Have {
    have: Option<String>,
    error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Plan {
    from: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Done {
    error: Option<String>,
}

/// What the sender knows of one VM's replication.
#[derive(Debug, Default)]
pub(super) struct VmRepl {
    /// When the last round began.
    last: Option<Instant>,
    /// Per receiver: its newest complete point, bytes sent to it in the
    /// last round, why the last round failed.
    copies: BTreeMap<NodeId, CopyState>,
    /// `triggers.written`: the VM's disks' written bytes (QEMU's count)
    /// when last looked at after the last round began, and when.
    written_base: Option<(u64, Instant)>,
    /// `triggers.written`: that many bytes were written since: a round.
    written_due: bool,
    /// The last round took no point (the VM not yet running here, a
    /// relocation holding it, or no receiver yet): the next one comes
    /// after [`SKIPPED_RETRY`], not after the interval.
    skipped: bool,
    /// Storage with one stream per round ([`round_group`]): the next
    /// split round serves the receivers that need the whole disks.
    whole_turn: bool,
}

/// How soon a round that took no point is tried again: a VM that has
/// just moved here (its relocation still holds it, the old node still
/// lists it) gets its first copy then, not one interval later.
const SKIPPED_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, Default, Clone)]
struct CopyState {
    point: Option<String>,
    bytes: u64,
    error: Option<String>,
}

/// The receivers one round serves, of `sending` (holding `bases`), on
/// storage that prepares one stream per disk for a whole round
/// ([`crate::driver::Storage::one_stream_per_round`]): that stream goes
/// from the oldest base, so a receiver whose base the disks no longer
/// track, or that holds no point (a new receiver), would make it the
/// whole disks for every receiver. Those and the others are served in
/// turns instead (`whole_turn` says whose, and flips on each split
/// round): the receivers with a point get what changed, and the others
/// get the whole disks in a round of their own (a receiver skipped gets
/// its round soon, [`SKIPPED_RETRY`]).
fn round_group(
    sending: &[NodeId],
    bases: &[Option<String>],
    tracked: &BTreeSet<String>,
    whole_turn: &mut bool,
) -> Vec<NodeId> {
    let usable = |b: &Option<String>| b.as_ref().is_some_and(|b| tracked.contains(b));
    let (changed, whole): (Vec<_>, Vec<_>) =
        sending.iter().zip(bases).partition(|(_, b)| usable(b));
    if changed.is_empty() || whole.is_empty() {
        return sending.to_vec();
    }
    let served = if *whole_turn { whole } else { changed };
    *whole_turn = !*whole_turn;
    served.into_iter().map(|(n, _)| n.clone()).collect()
}

/// The receivers of VM `vm`'s copies, this node running it: see the
/// module doc.
pub fn receivers(link: &Link, vm: &DocKey, f: &Fastr) -> Vec<NodeId> {
    elect_receivers(link, vm, f, link.me.as_ref())
}

/// The receivers of VM `vm`'s copies as `runner` elects them (this node
/// may be one).
fn elect_receivers(link: &Link, vm: &DocKey, f: &Fastr, runner: Option<&NodeId>) -> Vec<NodeId> {
    use crate::gossip::placement::{score, tags_match};
    let sel = f.placement.as_ref();
    let mut cands: Vec<(&NodeId, u64, String)> = link
        .members
        .iter()
        .filter(|(id, m)| {
            Some(*id) != runner
                && (link.addrs.contains_key(*id) || Some(*id) == link.me.as_ref())
                && !m.unschedulable
                && sel.is_none_or(|p| {
                    p.selector.as_ref().is_none_or(|s| tags_match(s, &m.tags))
                        && p.performance.is_none_or(|want| want == m.performance)
                        && p.node
                            .as_ref()
                            .is_none_or(|n| link.names.get(*id) == Some(n))
                        && p.address.as_ref().is_none_or(|a| {
                            link.addrs
                                .get(*id)
                                .is_some_and(|s| s.ip().to_string() == *a)
                        })
                })
        })
        .map(|(id, m)| {
            let s = score(
                vm.hash64(),
                id.hash64(),
                &Default::default(),
                &Default::default(),
            );
            let rack = serde_json::to_string(&m.tags.microcosm).unwrap_or_default();
            (id, s, rack)
        })
        .collect();
    cands.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let want = f.copies as usize;
    let mut racks = BTreeSet::new();
    let mut out: Vec<NodeId> = Vec::new();
    for (id, _, rack) in &cands {
        if out.len() < want && racks.insert(rack.clone()) {
            out.push((*id).clone());
        }
    }
    for (id, _, _) in &cands {
        if out.len() < want && !out.contains(id) {
            out.push((*id).clone());
        }
    }
    out
}

/// Whether `volume` is one of the volumes of VM `ns/name` its spec
/// declares.
fn volume_of(ns: &str, name: &str, spec: &VirtualMachineSpec, volume: &str) -> bool {
    spec.disks
        .iter()
        .any(|d| names::vm_volume(ns, name, &d.name) == volume)
}

impl Shared {
    /// The spec of VM `vm` as the store declares it (not deleted).
    fn vm_spec(&self, vm: &DocKey) -> Option<VirtualMachineSpec> {
        let r = self
            .store
            .get(&ObjectKey::new(
                Kind::VirtualMachine,
                Some(&vm.namespace),
                &vm.name,
            ))
            .filter(|r| !r.deleted)?;
        serde_json::from_value(r.object["spec"].clone()).ok()
    }

    /// Every second: start a round for each VM this node runs whose
    /// FASTR interval is up (one round per VM at a time).
    pub(super) fn fastr_scan(self: &Arc<Self>) {
        if self.drivers.storage.fastr_kind().is_none() {
            return;
        }
        let tick = {
            let mut st = self.fastr.lock().unwrap();
            let t = st.entry(DocKey::new("FastrTick", "", "")).or_default();
            let due = t.last.is_none_or(|l| l.elapsed() >= HELD_EVERY);
            if due {
                t.last = Some(Instant::now());
            }
            due
        };
        if tick {
            tokio::spawn(self.clone().refresh_held());
        }
        for (vm, at, reply) in self.placement.take_fastr_recoveries() {
            let sh = self.clone();
            tokio::spawn(async move {
                let _ = reply.send(sh.fastr_recover(&vm, at).await);
            });
        }
        let link = self.link.borrow().clone();
        let Some(me) = link.me.clone() else { return };
        let running = link
            .members
            .get(&me)
            .map(|m| m.vms.clone())
            .unwrap_or_default();
        let mut live = BTreeSet::new();
        for vm in running {
            let Some(spec) = self.vm_spec(&vm) else {
                continue;
            };
            let Some(f) = spec.fastr.clone() else {
                continue;
            };
            live.insert(vm.clone());
            let interval = f.interval.map(|d| d.0).unwrap_or(DEFAULT_INTERVAL);
            let asked = self.placement.take_fastr_sync(&vm_key(&vm));
            let due = {
                let mut st = self.fastr.lock().unwrap();
                let r = st.entry(vm.clone()).or_default();
                let due = asked
                    || r.written_due
                    || r.last.is_none_or(|l| {
                        l.elapsed() >= interval || (r.skipped && l.elapsed() >= SKIPPED_RETRY)
                    });
                if due && self.fastr_busy.lock().unwrap().insert(vm.clone()) {
                    r.last = Some(Instant::now());
                    r.written_due = false;
                    true
                } else {
                    false
                }
            };
            if let (false, Some(limit)) = (due, f.triggers().written) {
                let probe = DocKey::new("FastrWritten", &vm.namespace, &vm.name);
                if self.fastr_busy.lock().unwrap().insert(probe.clone()) {
                    let sh = self.clone();
                    let vm = vm.clone();
                    tokio::spawn(async move {
                        sh.check_written(&vm, limit.0).await;
                        sh.fastr_busy.lock().unwrap().remove(&probe);
                    });
                }
            }
            if due {
                let to = receivers(&link, &vm, &f);
                let sh = self.clone();
                tokio::spawn(async move {
                    sh.fastr_round(&vm, to).await;
                    sh.fastr_busy.lock().unwrap().remove(&vm);
                });
            }
        }
        // VMs no longer running here: forget them and their status.
        let gone: Vec<DocKey> = self
            .fastr
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.kind == "VirtualMachine" && !live.contains(*k))
            .cloned()
            .collect();
        for vm in gone {
            self.fastr.lock().unwrap().remove(&vm);
            self.placement.set_fastr(&vm_key(&vm), None);
        }
    }

    /// `triggers.written`: read how many bytes the VM's disks took
    /// (QMP `query-blockstats`) and mark a round due once `limit` more
    /// were written since the last round began.
    async fn check_written(&self, vm: &DocKey, limit: u64) {
        let id = vm_id(vm);
        let hv = &self.drivers.hypervisor;
        if hv.relocation_lock(&id).is_some() {
            return;
        }
        let Some(sock) = hv.qmp_socket(&id) else {
            return;
        };
        let Ok(now) = disk_writes(&sock).await else {
            return;
        };
        let mut st = self.fastr.lock().unwrap();
        let r = st.entry(vm.clone()).or_default();
        match r.written_base {
            // Measured since the last round began, and QEMU's count went
            // on (a new QEMU starts at 0).
            Some((base, at)) if r.last.is_none_or(|l| l <= at) && now >= base => {
                if now - base >= limit {
                    tracing::debug!(vm = %id, bytes = now - base, "FASTR: written trigger");
                    r.written_due = true;
                    r.written_base = Some((now, Instant::now()));
                }
            }
            _ => r.written_base = Some((now, Instant::now())),
        }
    }

    /// Take FASTR slot `key` (a VM's round here, or its receive slot),
    /// waiting up to a minute for the one who holds it; whether it was
    /// taken.
    async fn take_slot(&self, key: &DocKey) -> bool {
        let t = Instant::now();
        while !self.fastr_busy.lock().unwrap().insert(key.clone()) {
            if t.elapsed() > FRAME_TIMEOUT {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        true
    }

    /// `triggers.relocation`: a round of VM `vm` now, before it is
    /// relocated (waiting for a round under way first, up to a minute).
    /// Whether it ran.
    pub(super) async fn fastr_before_relocation(self: &Arc<Self>, vm: &DocKey) -> bool {
        let Some(f) = self.vm_spec(vm).and_then(|s| s.fastr) else {
            return false;
        };
        if !f.triggers().relocation || self.drivers.storage.fastr_kind().is_none() {
            return false;
        }
        if !self.take_slot(vm).await {
            return false;
        }
        if let Some(r) = self.fastr.lock().unwrap().get_mut(vm) {
            r.last = Some(Instant::now());
        }
        let to = receivers(&self.link.borrow().clone(), vm, &f);
        self.fastr_round(vm, to).await;
        self.fastr_busy.lock().unwrap().remove(vm);
        info!(vm = %vm_id(vm), "FASTR: a round before the relocation (triggers.relocation)");
        true
    }

    /// A relocation's receiver holding FASTR copies of VM `vm`: the newest
    /// point its copies hold whole that the sender holds too (`bases`).
    /// The copies, rolled back to it, become the VM's `volumes` (the
    /// fresh ones made for the offer go), so the sender streams only what
    /// changed since that point, not the whole disks. `intent` makes the
    /// point durable (the relocation's marker) before anything is
    /// renamed, so a restart gives the copies back ([`Self::give_back`]).
    /// The VM's receive slot stays held (no round lands in the volumes)
    /// until [`Self::release_copies`]. `None`, with nothing changed, when
    /// there is no such point or the copies cannot be taken now (a round
    /// under way, volumes cloned from their points).
    pub(super) async fn adopt_copies(
        &self,
        vm: &DocKey,
        volumes: &[String],
        bases: &[String],
        intent: impl Fn(&str) -> Result<(), String>,
    ) -> Option<String> {
        let storage = &self.drivers.storage;
        if bases.is_empty() || storage.stream_kind().is_none() {
            return None;
        }
        let slot = DocKey::new("Fastr", &vm.namespace, &vm.name);
        if !self.fastr_busy.lock().unwrap().insert(slot.clone()) {
            info!(vm = %vm_id(vm), "relocation: a FASTR round of the VM is under way here: its copy is not the base");
            return None;
        }
        let copies: Vec<String> = volumes.iter().map(|v| names::fastr_copy(v)).collect();
        let point = async {
            for c in &copies {
                let live = storage.point_clones(c).await.ok()?;
                if live.iter().any(|v| names::parse_retained(v).is_none()) {
                    info!(copy = %c, clones = ?live, "relocation: volumes are cloned from the copy's points: it is not the base");
                    return None;
                }
            }
            complete_points(storage.as_ref(), &copies)
                .await
                .into_iter()
                .rev()
                .find(|p| bases.contains(p))
        }
        .await;
        let Some(point) = point else {
            self.fastr_busy.lock().unwrap().remove(&slot);
            return None;
        };
        if let Err(e) = intent(&point) {
            warn!(vm = %vm_id(vm), error = %e, "relocation: the base was not marked: the whole disks come");
            self.fastr_busy.lock().unwrap().remove(&slot);
            return None;
        }
        let taken = async {
            for (v, c) in volumes.iter().zip(&copies) {
                storage.destroy(v).await.map_err(|e| format!("{v}: {e}"))?;
                held_at(storage.as_ref(), c, &point).await?;
                storage
                    .rename(c, v)
                    .await
                    .map_err(|e| format!("{c} to {v}: {e}"))?;
            }
            Ok::<(), String>(())
        };
        if let Err(e) = taken.await {
            // Fresh volumes are made again by the whole streams.
            let (_, notes) = self.give_back(volumes, &point).await;
            warn!(vm = %vm_id(vm), error = %e, ?notes, "relocation: the copies were not taken: the whole disks come");
            self.fastr_busy.lock().unwrap().remove(&slot);
            return None;
        }
        self.placement.set_held_copy(&vm_key(vm), None);
        info!(vm = %vm_id(vm), point = %point, "relocation: this node's FASTR copy is the base: only what changed since comes");
        Some(point)
    }

    /// Undo [`Self::adopt_copies`] for a relocation that did not switch
    /// (or a restart before it): each volume made from a copy is rolled
    /// back to `point` (what the sender streamed since goes) and renamed
    /// back; a copy still in place is left as it is. The volumes given
    /// back (no longer the relocation's to destroy), and what failed.
    pub(super) async fn give_back(
        &self,
        volumes: &[String],
        point: &str,
    ) -> (Vec<String>, Vec<String>) {
        let storage = &self.drivers.storage;
        let (mut given, mut notes) = (Vec::new(), Vec::new());
        for v in volumes {
            let c = names::fastr_copy(v);
            if storage.exists(&c).await.unwrap_or(true) {
                continue;
            }
            let back = async {
                if !storage.exists(v).await.map_err(|e| e.to_string())? {
                    return Ok(false);
                }
                if !roll_back_to(storage.as_ref(), v, point).await? {
                    return Ok(false);
                }
                storage.rename(v, &c).await.map_err(|e| e.to_string())?;
                Ok::<bool, String>(true)
            };
            match back.await {
                Ok(true) => given.push(v.clone()),
                Ok(false) => {}
                Err(e) => notes.push(format!("copy {c}: {e}")),
            }
        }
        (given, notes)
    }

    /// The sender of a relocation that streamed what changed since FASTR
    /// point `point` (the receiver's copies became the VM's volumes): its
    /// own volumes, rolled back to that point, become its copies of the
    /// VM, so the new runner's first round to this node sends only what
    /// changed since (and if the runner elects another receiver, the
    /// copies are spare and dropped as any). Whether all were kept; on
    /// failure what is left of them is deleted by the caller.
    pub(super) async fn keep_as_copies(
        &self,
        vm: &DocKey,
        volumes: &[String],
        point: &str,
    ) -> bool {
        let storage = &self.drivers.storage;
        if self.vm_spec(vm).and_then(|s| s.fastr).is_none() {
            return false;
        }
        let copies: Vec<String> = volumes.iter().map(|v| names::fastr_copy(v)).collect();
        for c in &copies {
            if storage.exists(c).await.unwrap_or(true) {
                return false;
            }
        }
        let kept = async {
            for v in volumes {
                held_at(storage.as_ref(), v, point).await?;
            }
            for (v, c) in volumes.iter().zip(&copies) {
                storage
                    .rename(v, c)
                    .await
                    .map_err(|e| format!("{v} to {c}: {e}"))?;
            }
            Ok::<(), String>(())
        };
        match kept.await {
            Ok(()) => {
                self.placement.set_held_copy(&vm_key(vm), point_ms(point));
                info!(vm = %vm_id(vm), point = %point, "relocation: the disks left here are the VM's FASTR copy at the point the move started from");
                true
            }
            Err(e) => {
                warn!(vm = %vm_id(vm), error = %e, "relocation: the disks left here were not kept as a copy");
                for c in &copies {
                    let _ = storage.destroy(c).await;
                }
                false
            }
        }
    }

    /// The end of a relocation that took this node's copies of `vm` as
    /// its base: rounds of the VM may land here again.
    pub(super) fn release_copies(&self, vm: &DocKey) {
        let slot = DocKey::new("Fastr", &vm.namespace, &vm.name);
        self.fastr_busy.lock().unwrap().remove(&slot);
    }

    /// `deorch fastr recover`: start VM `vm` on this node from its copy
    /// here at point `at` (the newest complete one when `None`). While it
    /// runs, and until the VM runs here, no round of the VM is taken here
    /// (its receive slot is held), so the point chosen is the one it
    /// starts from. The copies are rolled back to that point, then this
    /// node claims the VM above its node's claim; that node stops its
    /// copy (its disks become a diverged replica), and the VM reconciler
    /// here restores the copies into the VM's volumes and starts it.
    async fn fastr_recover(
        self: &Arc<Self>,
        vm: &ObjectKey,
        at: Option<String>,
    ) -> Result<String, String> {
        let slot = DocKey::new("Fastr", &vm.namespace, &vm.name);
        if !self.take_slot(&slot).await {
            return Err("a FASTR round of this VM is still under way here".into());
        }
        let r = self.recover_here(vm, at).await;
        match &r {
            Ok(_) => {
                let sh = self.clone();
                let dk = DocKey::new("VirtualMachine", &vm.namespace, &vm.name);
                tokio::spawn(async move {
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_secs(300) {
                        let here = {
                            let link = sh.link.borrow();
                            link.me
                                .as_ref()
                                .and_then(|me| link.members.get(me))
                                .is_some_and(|m| m.vms.contains(&dk))
                        };
                        if here {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    sh.fastr_busy.lock().unwrap().remove(&slot);
                });
            }
            Err(_) => {
                self.fastr_busy.lock().unwrap().remove(&slot);
            }
        }
        r
    }

    async fn recover_here(&self, vm: &ObjectKey, at: Option<String>) -> Result<String, String> {
        let dk = DocKey::new("VirtualMachine", &vm.namespace, &vm.name);
        let spec = self
            .vm_spec(&dk)
            .ok_or_else(|| format!("{vm} does not exist"))?;
        let storage = &self.drivers.storage;
        let (runs_on, here): (Vec<String>, bool) = {
            let link = self.link.borrow();
            let on: Vec<&NodeId> = link
                .members
                .iter()
                .filter(|(_, m)| m.vms.contains(&dk))
                .map(|(id, _)| id)
                .collect();
            let here = link.me.as_ref().is_some_and(|me| on.contains(&me));
            (on.into_iter().map(|id| link.name(id)).collect(), here)
        };
        if here {
            return Err(format!("{vm} runs on this node: a recovery starts it from a copy on another node (a replica reverts it here)"));
        }
        let volumes: Vec<String> = spec
            .disks
            .iter()
            .map(|d| names::vm_volume(&vm.namespace, &vm.name, &d.name))
            .collect();
        for v in &volumes {
            if storage.exists(v).await.map_err(|e| e.to_string())? {
                return Err(format!("this node has volume {v} of the VM (a diverged copy?): it would not be replaced; move it away first"));
            }
        }
        let copies: Vec<String> = volumes.iter().map(|v| names::fastr_copy(v)).collect();
        // The copies become the VM's volumes by a rename, which unmounts
        // the volumes cloned from their points (zfs): refused up front,
        // not half-way with the VM stopped on its node.
        for c in &copies {
            let clones: Vec<String> = storage
                .point_clones(c)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|v| names::parse_retained(v).is_none())
                .collect();
            if !clones.is_empty() {
                return Err(format!("copy {c} has volumes cloned from its points ({}): the recovery renames it, which zfs does only with them unmounted; stop or delete the VMs using them first", clones.join(", ")));
            }
        }
        let points = complete_points(storage.as_ref(), &copies).await;
        let Some(newest) = points.last().cloned() else {
            return Err(format!("this node holds no complete FASTR copy of {vm}"));
        };
        let point = match at {
            None => newest,
            Some(p) => {
                let p = if p.starts_with(FASTR_TAG) {
                    p
                } else {
                    point_tag(
                        p.parse()
                            .map_err(|_| format!("{p} is not a copy point (fastr-<unix ms>)"))?,
                    )
                };
                if !points.contains(&p) {
                    return Err(format!(
                        "no complete point {p} here; the points here: {}",
                        points.join(", ")
                    ));
                }
                p
            }
        };
        for c in &copies {
            held_at(storage.as_ref(), c, &point)
                .await
                .map_err(|e| format!("copy {e}"))?;
        }
        self.placement.set_held_copy(vm, point_ms(&point));
        let p = self.placement.clone();
        let k = vm.clone();
        let epoch = tokio::task::spawn_blocking(move || p.recover(&k, true))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| {
                format!("copies rolled back to {point}, but the VM was not claimed: {e}")
            })?;
        warn!(vm = %vm, point = %point, epoch, "FASTR: recovery from this node's copy: the VM is claimed here");
        let from = if runs_on.is_empty() {
            "its node".to_string()
        } else {
            runs_on.join(", ")
        };
        Ok(format!("{vm} claimed by this node at election epoch {epoch}: it starts here from copy point {point} once {from} has stopped it (that node keeps its disks as a diverged replica)"))
    }

    /// Tell the node's status which VMs this node holds complete copies
    /// of, and their newest points (every few seconds, and after each
    /// received round).
    pub(super) async fn refresh_held(self: Arc<Self>) {
        let flag = DocKey::new("FastrHeld", "", "");
        if !self.fastr_busy.lock().unwrap().insert(flag.clone()) {
            return;
        }
        let storage = &self.drivers.storage;
        let here: Vec<DocKey> = {
            let link = self.link.borrow();
            link.me
                .as_ref()
                .and_then(|me| link.members.get(me))
                .map(|m| m.vms.clone())
                .unwrap_or_default()
        };
        // One listing: which copies (and which VMs' own volumes) exist
        // here at all.
        let all: BTreeSet<String> = match storage.list().await {
            Ok(v) => v.into_iter().collect(),
            Err(_) => {
                self.fastr_busy.lock().unwrap().remove(&flag);
                return;
            }
        };
        let present: BTreeSet<&String> = all.iter().filter(|n| n.starts_with("fastr.")).collect();
        for r in self.store.list(Some(Kind::VirtualMachine)) {
            let ns = r.key.namespace.clone();
            let vm = DocKey::new("VirtualMachine", &ns, &r.key.name);
            let spec: Option<VirtualMachineSpec> =
                serde_json::from_value(r.object["spec"].clone()).ok();
            // Copies of a deleted VM, or of one whose policy is gone, go
            // (its own node keeps its volumes, and retains them when the
            // VM is deleted), and so do copies of a VM that runs here now
            // once its own volumes are here (moved here). A VM failed
            // over to this node is listed here before its reconciler has
            // made its volumes from these copies: they are what it starts
            // from, and dropping them then would start it blank. Not
            // while a round of it runs here.
            let own_volumes_here = spec.as_ref().is_some_and(|s| {
                s.disks
                    .iter()
                    .all(|d| all.contains(&names::vm_volume(&ns, &r.key.name, &d.name)))
            });
            let mut unwanted = r.deleted
                || (here.contains(&vm) && own_volumes_here)
                || spec.as_ref().is_some_and(|s| s.fastr.is_none());
            // So does a copy the runner no longer elects this node for, once
            // the elected receivers hold a point at least as new.
            if let Some(f) = spec
                .as_ref()
                .and_then(|s| s.fastr.as_ref())
                .filter(|_| !unwanted)
            {
                unwanted = self.spare_copy(&vm, f, self.placement.held_copy(&r.key));
            }
            if unwanted && storage.fastr_kind().is_some() {
                if let Some(s) = &spec {
                    let key = DocKey::new("Fastr", &ns, &r.key.name);
                    if self.fastr_busy.lock().unwrap().insert(key.clone()) {
                        for d in &s.disks {
                            let copy =
                                names::fastr_copy(&names::vm_volume(&ns, &r.key.name, &d.name));
                            for c in [copy.clone(), format!("{copy}.new")] {
                                if present.contains(&c) {
                                    match storage.destroy(&c).await {
                                        Ok(()) => {
                                            info!(copy = %c, "FASTR: copy of a VM without a policy (or deleted, or running here, or no longer elected here) dropped")
                                        }
                                        Err(e) => {
                                            warn!(copy = %c, error = %e, "FASTR: an unwanted copy was not dropped")
                                        }
                                    }
                                }
                            }
                        }
                        self.fastr_busy.lock().unwrap().remove(&key);
                    }
                }
            }
            let spec = spec.filter(|_| !r.deleted);
            let point = match spec.filter(|s| s.fastr.is_some()) {
                Some(s) if !here.contains(&vm) && storage.fastr_kind().is_some() => {
                    let copies: Vec<String> = s
                        .disks
                        .iter()
                        .map(|d| names::fastr_copy(&names::vm_volume(&ns, &r.key.name, &d.name)))
                        .collect();
                    if !copies.iter().all(|c| present.contains(c)) {
                        self.placement.set_held_copy(&r.key, None);
                        continue;
                    }
                    common_point(storage.as_ref(), &copies)
                        .await
                        .and_then(|(p, _)| point_ms(&p))
                }
                _ => None,
            };
            self.placement.set_held_copy(&r.key, point);
        }
        self.fastr_busy.lock().unwrap().remove(&flag);
    }

    /// Whether this node's copy of `vm` (newest point `held_ms`) has been
    /// spare for [`SPARE_AFTER`]: another node runs the VM, does not elect
    /// this node as a receiver in this node's view, and every receiver it
    /// elects lists a copy at least as new.
    fn spare_copy(&self, vm: &DocKey, f: &Fastr, held_ms: Option<u64>) -> bool {
        let key = DocKey::new("FastrSpare", &vm.namespace, &vm.name);
        let spare = held_ms.is_some_and(|mine| {
            let link = self.link.borrow();
            let Some(me) = link.me.as_ref() else {
                return false;
            };
            let Some(runner) = link
                .members
                .iter()
                .find(|(id, m)| *id != me && m.vms.contains(vm))
                .map(|(id, _)| id)
            else {
                return false;
            };
            let elected = elect_receivers(&link, vm, f, Some(runner));
            let h = vm.hash64();
            !elected.is_empty()
                && !elected.contains(me)
                && elected.iter().all(|r| {
                    link.members
                        .get(r)
                        .is_some_and(|m| m.copies.iter().any(|c| c.0 == h && c.1 >= mine))
                })
        });
        let mut st = self.fastr.lock().unwrap();
        if !spare {
            st.remove(&key);
            return false;
        }
        st.entry(key)
            .or_default()
            .last
            .get_or_insert_with(Instant::now)
            .elapsed()
            >= SPARE_AFTER
    }

    /// One round: a new point of all the VM's volumes, sent to each
    /// receiver; then the points no receiver needs are dropped here.
    async fn fastr_round(self: &Arc<Self>, vm: &DocKey, to: Vec<NodeId>) {
        let storage = &self.drivers.storage;
        let id = vm_id(vm);
        let skipped = |sh: &Self| {
            if let Some(r) = sh.fastr.lock().unwrap().get_mut(vm) {
                r.skipped = true;
            }
        };
        let disks: Vec<(String, String)> = match self.drivers.hypervisor.state(&id).await {
            Ok(crate::driver::VmState::Running { config, .. }) => config.disks.clone(),
            _ => return skipped(self),
        };
        let volumes: Vec<String> = disks.iter().map(|d| d.1.clone()).collect();
        // A relocation holds the VM: its own streams go first.
        if self.drivers.hypervisor.relocation_lock(&id).is_some() {
            return skipped(self);
        }
        // An elected receiver that lists the VM (a relocation to it under
        // way or just over, its status not caught up yet) gets no round
        // now: it stays elected (the election does not look at it, so the
        // copies do not move to another node) and gets the next one.
        let listing: Vec<NodeId> = {
            let link = self.link.borrow();
            to.iter()
                .filter(|n| link.members.get(*n).is_some_and(|m| m.vms.contains(vm)))
                .cloned()
                .collect()
        };
        let mut sending: Vec<NodeId> = to
            .iter()
            .filter(|n| !listing.contains(n))
            .cloned()
            .collect();
        let base_of = |sh: &Self, of: &[NodeId]| -> Vec<Option<String>> {
            let st = sh.fastr.lock().unwrap();
            let copies = st.get(vm).map(|r| &r.copies);
            of.iter()
                .map(|r| copies.and_then(|c| c.get(r)).and_then(|c| c.point.clone()))
                .collect()
        };
        if storage.one_stream_per_round() && sending.len() > 1 {
            // The points every disk still tracks (a bitmap lost to a
            // killed QEMU is none).
            let mut tracked: Option<BTreeSet<String>> = None;
            for v in &volumes {
                let have: BTreeSet<String> = storage
                    .points(v)
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                tracked = Some(match tracked {
                    Some(t) => t.intersection(&have).cloned().collect(),
                    None => have,
                });
            }
            let bases = base_of(self, &sending);
            let mut st = self.fastr.lock().unwrap();
            let turn = &mut st.entry(vm.clone()).or_default().whole_turn;
            sending = round_group(&sending, &bases, &tracked.unwrap_or_default(), turn);
        }
        if sending.is_empty() && !to.is_empty() {
            return skipped(self);
        }
        // With no node to copy to, no point is taken, and the status says
        // there is no copy.
        if to.is_empty() {
            if let Some(r) = self.fastr.lock().unwrap().get_mut(vm) {
                r.copies.clear();
                r.skipped = true;
            }
            self.publish_fastr(vm);
            return;
        }
        // A receiver skipped now gets its round soon, not one interval on.
        if let Some(r) = self.fastr.lock().unwrap().get_mut(vm) {
            r.skipped = sending.len() < to.len();
        }
        let tag = point_tag(crate::clock::now_ms());
        // One instant for all the VM's disks: where the storage cannot
        // take several points at once, the guest is paused around them
        // (QEMU drains its disks' I/O on the pause).
        let hv = &self.drivers.hypervisor;
        let pause = volumes.len() > 1 && !storage.atomic_points_for(&volumes);
        if pause {
            if let Err(e) = hv.pause(&id).await {
                warn!(vm = %id, error = %e, "FASTR: the guest was not paused for a point of its disks");
                return;
            }
        }
        let t0 = Instant::now();
        // Storage that takes points through the VM (dir) prepares the
        // streams the receivers need now: from the points they hold.
        let live = crate::driver::LiveDisks {
            volumes: disks
                .iter()
                .map(|(disk, v)| (v.clone(), (id.clone(), disk.clone())))
                .collect(),
            hypervisor: Some(hv.clone()),
        };
        let bases = base_of(self, &sending);
        let marked = storage
            .mark_points_live(&volumes, &tag, &live, &bases)
            .await;
        if pause {
            if let Err(e) = hv.resume(&id).await {
                warn!(vm = %id, error = %e, "FASTR: the guest was not resumed after a point (its reconciler resumes it)");
            }
            tracing::debug!(vm = %id, disks = volumes.len(), ms = t0.elapsed().as_millis() as u64, "FASTR: guest paused for one point of its disks");
        }
        if let Err(e) = marked {
            warn!(vm = %id, error = %e, "FASTR: no copy point");
            return;
        }
        let mut tasks = tokio::task::JoinSet::new();
        for r in sending.iter().cloned() {
            let sh = self.clone();
            let (vm, volumes, tag) = (vm.clone(), volumes.clone(), tag.clone());
            tasks.spawn(async move {
                let t0 = Instant::now();
                let mut have = None;
                let res = sh.fastr_send(&r, &vm, &volumes, &tag, &mut have).await;
                (r, res, t0.elapsed(), have)
            });
        }
        while let Some(Ok((r, res, took, have))) = tasks.join_next().await {
            let mut st = self.fastr.lock().unwrap();
            let c = st
                .entry(vm.clone())
                .or_default()
                .copies
                .entry(r.clone())
                .or_default();
            match res {
                Ok(bytes) => {
                    tracing::debug!(vm = %id, to = %r, bytes, ms = took.as_millis() as u64, "FASTR: point sent");
                    *c = CopyState {
                        point: Some(tag.clone()),
                        bytes,
                        error: None,
                    };
                }
                Err(e) => {
                    if c.error.as_deref() != Some(e.as_str()) {
                        warn!(vm = %id, to = %r, error = %e, "FASTR: the copy was not updated");
                    }
                    c.error = Some(e);
                    c.bytes = 0;
                    // What the receiver said it holds is the next base.
                    if let Some(h) = have {
                        c.point = h;
                    }
                }
            }
        }
        // Keep, here, each current receiver's newest point (the base of
        // its next stream; a receiver skipped this round included); drop
        // the rest.
        let keep: BTreeSet<String> = {
            let mut st = self.fastr.lock().unwrap();
            let r = st.entry(vm.clone()).or_default();
            r.copies.retain(|n, _| to.contains(n));
            r.copies.values().filter_map(|c| c.point.clone()).collect()
        };
        for v in &volumes {
            for p in storage.points(v).await.unwrap_or_default() {
                if p.starts_with(FASTR_TAG) && !keep.contains(&p) {
                    if let Err(e) = storage.drop_point(v, &p).await {
                        warn!(vm = %id, point = %p, error = %e, "FASTR: an old point was not dropped");
                    }
                }
            }
        }
        self.publish_fastr(vm);
    }

    /// The VM's copies as its status shows them.
    fn publish_fastr(&self, vm: &DocKey) {
        let link = self.link.borrow().clone();
        let now = crate::clock::now_ms();
        let copies: Vec<FastrCopy> = self
            .fastr
            .lock()
            .unwrap()
            .get(vm)
            .map(|r| {
                r.copies
                    .iter()
                    .map(|(n, c)| FastrCopy {
                        node: link.name(n),
                        point: c.point.clone(),
                        age_ms: c
                            .point
                            .as_deref()
                            .and_then(point_ms)
                            .map(|ms| now.saturating_sub(ms)),
                        bytes_sent: c.bytes,
                        error: c.error.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.placement.set_fastr(&vm_key(vm), Some(copies));
    }

    /// Send point `tag` of `volumes` to `to`; the bytes sent.
    async fn fastr_send(
        self: &Arc<Self>,
        to: &NodeId,
        vm: &DocKey,
        volumes: &[String],
        tag: &str,
        answered: &mut Option<Option<String>>,
    ) -> Result<u64, String> {
        let storage = &self.drivers.storage;
        let mut t = self.open(to, vm, "fastr").await?;
        send_json(
            &mut t,
            &Offer {
                volumes: volumes.to_vec(),
                point: tag.to_string(),
                kind: storage.fastr_kind().map(str::to_string),
            },
        )
        .await?;
        let have: Have = recv_json(&mut t).await?;
        if let Some(e) = have.error {
            return Err(format!("refused: {e}"));
        }
        *answered = Some(have.have.clone());
        // The receiver's newest point is the base if this node still has
        // it on every volume.
        let mut from = have.have.filter(|h| h != tag);
        if let Some(f) = &from {
            for v in volumes {
                if !storage.points(v).await.unwrap_or_default().contains(f) {
                    from = None;
                    break;
                }
            }
        }
        send_json(&mut t, &Plan { from: from.clone() }).await?;
        let mut sent = 0u64;
        for v in volumes {
            let argv = storage
                .send_command(v, from.as_deref(), tag)
                .await
                .map_err(|e| format!("volume {v}: {e}"))?;
            sent += self.pipe_out(&mut t, &argv).await?;
            let done: Done = recv_json(&mut t).await?;
            if let Some(e) = done.error {
                return Err(format!("volume {v} on the receiver: {e}"));
            }
        }
        Ok(sent)
    }

    /// The output of `argv` into the tunnel, in frames, then an empty
    /// frame; the bytes.
    async fn pipe_out(&self, t: &mut Tunnel, argv: &[String]) -> Result<u64, String> {
        let mut child = spawn_piped(argv, false)?;
        let mut out = child.stdout.take().expect("piped");
        let mut buf = vec![0u8; super::tunnel::MAX_MESSAGE];
        let mut sent = 0u64;
        loop {
            let n = out.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            if let Some(l) = &self.rate {
                l.take(n as u64).await;
            }
            t.send(&buf[..n]).await.map_err(|e| e.to_string())?;
            sent += n as u64;
        }
        finished(child, argv).await?;
        t.send(&[]).await.map_err(|e| e.to_string())?;
        Ok(sent)
    }

    /// A peer's replication of VM `ns/name` to this node.
    pub(super) async fn serve_fastr(
        self: Arc<Self>,
        mut t: Tunnel,
        ns: &str,
        name: &str,
    ) -> Result<(), String> {
        let vm = DocKey::new("VirtualMachine", ns, name);
        let peer = t.peer.clone();
        let checked = self.fastr_check(&vm, &peer);
        let key = DocKey::new("Fastr", ns, name);
        let checked = checked.and_then(|spec| {
            if self.fastr_busy.lock().unwrap().insert(key.clone()) {
                Ok(spec)
            } else {
                Err("a replication or a recovery of this VM is under way here".to_string())
            }
        });
        let spec = match checked {
            Ok(s) => s,
            Err(e) => {
                let _ = send_json(
                    &mut t,
                    &Have {
                        have: None,
                        error: Some(e.clone()),
                    },
                )
                .await;
                return Err(format!("FASTR of {ns}/{name} from {peer}: {e}"));
            }
        };
        let r = self.take_fastr(&mut t, ns, name, &spec).await;
        self.fastr_busy.lock().unwrap().remove(&key);
        r
    }

    /// Whether `peer` may replicate VM `vm` here: the VM exists with a
    /// FASTR policy, `peer` runs it, this node does not, and this
    /// node's storage takes volume streams.
    fn fastr_check(&self, vm: &DocKey, peer: &NodeId) -> Result<VirtualMachineSpec, String> {
        let spec = self.vm_spec(vm).ok_or("no such VM here")?;
        if spec.fastr.is_none() {
            return Err("the VM has no FASTR policy".into());
        }
        if self.drivers.storage.fastr_kind().is_none() {
            return Err(format!(
                "the {} storage here takes no volume streams",
                self.drivers.storage.name()
            ));
        }
        let link = self.link.borrow();
        if !link.members.get(peer).is_some_and(|m| m.vms.contains(vm)) {
            return Err("the sender does not run the VM".into());
        }
        if link
            .me
            .as_ref()
            .and_then(|me| link.members.get(me))
            .is_some_and(|m| m.vms.contains(vm))
        {
            return Err("the VM runs here".into());
        }
        Ok(spec)
    }

    async fn take_fastr(
        &self,
        t: &mut Tunnel,
        ns: &str,
        name: &str,
        spec: &VirtualMachineSpec,
    ) -> Result<(), String> {
        let storage = &self.drivers.storage;
        let offer: Offer = recv_json(t).await?;
        if offer.volumes.is_empty()
            || offer.volumes.iter().any(|v| !volume_of(ns, name, spec, v))
            || point_ms(&offer.point).is_none()
        {
            let e = "the offer names volumes the VM does not have".to_string();
            let _ = send_json(
                t,
                &Have {
                    have: None,
                    error: Some(e.clone()),
                },
            )
            .await;
            return Err(e);
        }
        let theirs = offer.kind.as_deref().unwrap_or("zfs");
        if Some(theirs) != storage.fastr_kind() {
            let e = format!(
                "the sender's storage streams {theirs}, this node's {} storage takes {}",
                storage.name(),
                storage.fastr_kind().unwrap_or("none")
            );
            let _ = send_json(
                t,
                &Have {
                    have: None,
                    error: Some(e.clone()),
                },
            )
            .await;
            return Err(e);
        }
        let copies: Vec<String> = offer.volumes.iter().map(|v| names::fastr_copy(v)).collect();
        let have = settle_copies(storage.as_ref(), &copies).await;
        send_json(
            t,
            &Have {
                have: have.clone(),
                error: None,
            },
        )
        .await?;
        let plan: Plan = recv_json(t).await?;
        if plan.from.is_some() && plan.from != have {
            return Err("the plan's base is not this node's point".into());
        }
        let whole = plan.from.is_none();
        for copy in &copies {
            let target = if whole {
                format!("{copy}.new")
            } else {
                copy.clone()
            };
            if whole && storage.exists(&target).await.unwrap_or(false) {
                storage.destroy(&target).await.map_err(|e| e.to_string())?;
            }
            let mut r = self.pipe_in(t, &target).await;
            if r.is_ok() {
                r = storage
                    .point_received(&target, &offer.point)
                    .await
                    .map_err(|e| e.to_string());
            }
            let _ = send_json(
                t,
                &Done {
                    error: r.as_ref().err().cloned(),
                },
            )
            .await;
            r?;
        }
        if whole {
            for copy in &copies {
                if storage.exists(copy).await.unwrap_or(false) {
                    storage.destroy(copy).await.map_err(|e| e.to_string())?;
                }
                storage
                    .rename(&format!("{copy}.new"), copy)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        // The newest `keep` points stay (the new one among them); a point
        // a clone was made from stays until that clone goes (the storage
        // refuses to drop it).
        let keep = spec.fastr.as_ref().map_or(1, Fastr::keep);
        for (copy, mut pts) in points_of(storage.as_ref(), &copies).await {
            pts.sort_by_key(|p| std::cmp::Reverse(point_ms(p)));
            for p in pts.iter().filter(|p| **p != offer.point).skip(keep - 1) {
                let _ = storage.drop_point(&copy, p).await;
            }
        }
        info!(vm = %format!("{ns}/{name}"), point = %offer.point, whole, "FASTR: copy point received");
        self.placement.set_held_copy(
            &ObjectKey::new(Kind::VirtualMachine, Some(ns), name),
            point_ms(&offer.point),
        );
        Ok(())
    }

    /// Frames from the tunnel, until an empty one, into the storage's
    /// receive command for `volume`.
    async fn pipe_in(&self, t: &mut Tunnel, volume: &str) -> Result<(), String> {
        let argv = self
            .drivers
            .storage
            .receive_command(volume)
            .await
            .map_err(|e| e.to_string())?;
        let mut child = spawn_piped(&argv, true)?;
        let mut stdin = child.stdin.take().expect("piped");
        let fed = async {
            loop {
                let m = tokio::time::timeout(FRAME_TIMEOUT, t.recv())
                    .await
                    .map_err(|_| "the stream stalled".to_string())?
                    .map_err(|e| e.to_string())?
                    .ok_or("the sender closed mid-stream")?;
                if m.is_empty() {
                    return Ok::<(), String>(());
                }
                stdin.write_all(&m).await.map_err(|e| e.to_string())?;
            }
        }
        .await;
        drop(stdin);
        if let Err(e) = fed {
            // An incomplete stream is not applied: the copy keeps its
            // point.
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(e);
        }
        finished(child, &argv).await
    }
}

/// The newest copy point every one of `copies` holds, after rolling back
/// any copy that got ahead of it (a round cut short between volumes);
/// `None` when a copy is missing or they share no point.
pub async fn settle_copies(
    storage: &dyn crate::driver::Storage,
    copies: &[String],
) -> Option<String> {
    let (newest, each) = common_point(storage, copies).await?;
    for (c, pts) in each {
        if pts.last() != Some(&newest) {
            if let Err(e) = storage.rollback(&c, &newest).await {
                warn!(copy = %c, error = %e, "FASTR: a copy ahead of the others was not rolled back");
                return None;
            }
        }
    }
    Some(newest)
}

/// The bytes a QEMU's block devices took in writes so far.
async fn disk_writes(sock: &std::path::Path) -> Result<u64, String> {
    let mut q = crate::qemu::qmp::Qmp::connect(sock, Duration::from_secs(2))
        .await
        .map_err(|e| e.to_string())?;
    let v = tokio::time::timeout(Duration::from_secs(2), q.execute("query-blockstats", None))
        .await
        .map_err(|_| "query-blockstats timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["stats"]["wr_bytes"].as_u64())
        .sum())
}

/// `volume` rolled back to its point `point` (the later ones dropped),
/// unless that is its newest already. `Ok(false)`, nothing done, when it
/// does not hold that point; an error naming the volume when the storage
/// fails.
async fn roll_back_to(
    storage: &dyn crate::driver::Storage,
    volume: &str,
    point: &str,
) -> Result<bool, String> {
    let pts = storage
        .points(volume)
        .await
        .map_err(|e| format!("{volume}: {e}"))?;
    if !pts.iter().any(|p| p == point) {
        return Ok(false);
    }
    if pts.last().map(String::as_str) != Some(point) {
        storage
            .rollback(volume, point)
            .await
            .map_err(|e| format!("{volume}: {e}"))?;
    }
    Ok(true)
}

/// [`roll_back_to`], a volume without the point being an error.
async fn held_at(
    storage: &dyn crate::driver::Storage,
    volume: &str,
    point: &str,
) -> Result<(), String> {
    match roll_back_to(storage, volume, point).await? {
        true => Ok(()),
        false => Err(format!("{volume} does not hold {point}")),
    }
}

/// Each of `copies` with its copy points, oldest first (a missing copy
/// has none).
async fn points_of(
    storage: &dyn crate::driver::Storage,
    copies: &[String],
) -> Vec<(String, Vec<String>)> {
    let mut each = Vec::new();
    for c in copies {
        let pts: Vec<String> = storage
            .points(c)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|p| point_ms(p).is_some())
            .collect();
        each.push((c.clone(), pts));
    }
    each
}

/// The points all of `each` hold, oldest first.
fn common(each: &[(String, Vec<String>)]) -> Vec<String> {
    let mut sets = each
        .iter()
        .map(|(_, p)| p.iter().cloned().collect::<BTreeSet<String>>());
    let first = sets.next().unwrap_or_default();
    let mut out: Vec<String> = sets
        .fold(first, |acc, s| acc.intersection(&s).cloned().collect())
        .into_iter()
        .collect();
    out.sort_by_key(|p| point_ms(p));
    out
}

/// The points every one of `copies` holds, oldest first (none when a
/// copy is missing).
pub async fn complete_points(
    storage: &dyn crate::driver::Storage,
    copies: &[String],
) -> Vec<String> {
    common(&points_of(storage, copies).await)
}

/// The newest point every one of `copies` holds, and each copy's points
/// (oldest first); `None` when a copy is missing or they share none.
async fn common_point(
    storage: &dyn crate::driver::Storage,
    copies: &[String],
) -> Option<(String, Vec<(String, Vec<String>)>)> {
    let each = points_of(storage, copies).await;
    let newest = common(&each).pop()?;
    Some((newest, each))
}

async fn send_json<T: Serialize>(t: &mut Tunnel, v: &T) -> Result<(), String> {
    let b = serde_json::to_vec(v).expect("in-memory encoding cannot fail");
    t.send(&b).await.map_err(|e| e.to_string())
}

async fn recv_json<T: for<'de> Deserialize<'de>>(t: &mut Tunnel) -> Result<T, String> {
    let m = tokio::time::timeout(CONNECT_TIMEOUT, t.recv())
        .await
        .map_err(|_| "no answer in time".to_string())?
        .map_err(|e| e.to_string())?
        .ok_or("closed by the other node")?;
    serde_json::from_slice(&m).map_err(|e| format!("malformed message: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::wire::TagSet;
    use crate::model::Performance;

    fn link(nodes: &[(&str, &str)]) -> Link {
        let mut l = Link {
            me: Some(NodeId("10.0.0.1:7000".into())),
            ..Default::default()
        };
        for (i, (id, rack)) in nodes.iter().enumerate() {
            let id = NodeId((*id).into());
            l.addrs.insert(
                id.clone(),
                format!("10.0.0.{}:7000", i + 1).parse().unwrap(),
            );
            let mut tags = TagSet::default();
            tags.microcosm.insert("rack".into(), (*rack).into());
            l.members.insert(
                id,
                super::super::Member {
                    tags,
                    performance: Performance::High,
                    unschedulable: false,
                    vms: vec![],
                    copies: vec![],
                },
            );
        }
        l
    }

    #[test]
    fn receivers_spread_over_racks_exclude_the_runner_and_stay_put() {
        let nodes = [
            ("10.0.0.1:7000", "r1"),
            ("10.0.0.2:7000", "r1"),
            ("10.0.0.3:7000", "r1"),
            ("10.0.0.4:7000", "r2"),
            ("10.0.0.5:7000", "r2"),
        ];
        let l = link(&nodes);
        let f = Fastr {
            copies: 2,
            interval: None,
            placement: None,
            keep: None,
            triggers: None,
        };
        for i in 0..50 {
            let vm = DocKey::new("VirtualMachine", "default", &format!("vm{i}"));
            let r = receivers(&l, &vm, &f);
            assert_eq!(r.len(), 2, "{r:?}");
            assert!(!r.contains(l.me.as_ref().unwrap()), "not the runner");
            let racks: BTreeSet<&str> = r
                .iter()
                .map(|n| l.members[n].tags.microcosm["rack"].as_str())
                .collect();
            assert_eq!(racks.len(), 2, "one copy per rack: {r:?}");
            // A node that is not chosen going away changes nothing.
            let mut l2 = l.clone();
            let spare = l
                .members
                .keys()
                .find(|n| !r.contains(n) && Some(*n) != l.me.as_ref())
                .unwrap()
                .clone();
            l2.members.remove(&spare);
            assert_eq!(receivers(&l2, &vm, &f), r, "stable");
        }
        // More copies than racks: the rest from the racks already used.
        let f3 = Fastr {
            copies: 3,
            ..f.clone()
        };
        let vm = DocKey::new("VirtualMachine", "default", "x");
        assert_eq!(receivers(&l, &vm, &f3).len(), 3);
    }

    #[test]
    fn a_receiver_elects_as_the_runner_does() {
        let nodes = [
            ("10.0.0.1:7000", "r1"),
            ("10.0.0.2:7000", "r1"),
            ("10.0.0.3:7000", "r2"),
            ("10.0.0.4:7000", "r2"),
            ("10.0.0.5:7000", "r3"),
        ];
        let f = Fastr {
            copies: 2,
            interval: None,
            placement: None,
            keep: None,
            triggers: None,
        };
        let runner_view = link(&nodes);
        let runner = runner_view.me.clone().unwrap();
        for i in 0..30 {
            let vm = DocKey::new("VirtualMachine", "default", &format!("vm{i}"));
            let want = receivers(&runner_view, &vm, &f);
            for (id, _) in &nodes[1..] {
                // The same members, seen from another node (its own
                // address is not among the ones it dials).
                let mut mine = runner_view.clone();
                let me = NodeId((*id).into());
                mine.addrs.remove(&me);
                mine.me = Some(me);
                assert_eq!(elect_receivers(&mine, &vm, &f, Some(&runner)), want);
            }
        }
    }

    #[test]
    fn a_receiver_without_a_tracked_point_gets_a_round_of_its_own() {
        let n = |s: &str| NodeId(s.into());
        let sending = [n("a"), n("b"), n("c")];
        let tracked: BTreeSet<String> = ["fastr-1".to_string(), "fastr-2".to_string()].into();
        let p = |s: &str| Some(s.to_string());
        let mut turn = false;
        // All hold a tracked point (not the same one): one round for all,
        // from the oldest; no turn taken.
        let bases = [p("fastr-1"), p("fastr-2"), p("fastr-1")];
        assert_eq!(round_group(&sending, &bases, &tracked, &mut turn), sending);
        assert!(!turn);
        // None holds one: one whole round for all.
        let none = [None, p("fastr-0"), None];
        assert_eq!(round_group(&sending, &none, &tracked, &mut turn), sending);
        // b is new and c's point is no longer tracked: a gets what
        // changed first, then b and c the whole disks, then a again.
        let split = [p("fastr-2"), None, p("fastr-0")];
        assert_eq!(round_group(&sending, &split, &tracked, &mut turn), [n("a")]);
        assert_eq!(
            round_group(&sending, &split, &tracked, &mut turn),
            [n("b"), n("c")]
        );
        assert_eq!(round_group(&sending, &split, &tracked, &mut turn), [n("a")]);
    }

    #[test]
    fn points_carry_their_time() {
        assert_eq!(point_ms(&point_tag(1234)), Some(1234));
        assert_eq!(point_ms("xfer-1"), None);
        assert_eq!(point_ms("abc"), None);
    }
}
