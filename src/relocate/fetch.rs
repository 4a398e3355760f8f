//! Copies from other nodes over the relocation tunnels: a VM's disk made
//! from a disk of a VM another node holds (running or not), and spacesuit
//! images fetched by their SHA-256 from any peer that has them.
//!
//! ```text
//! puller ── tunnel "fetch": Volume {source, volume} ──► holder
//!                                          checks: a VM here names `source`, the puller runs it
//!                                          CoW snapshot of `source` (through QEMU if it runs)
//! puller ◄── Size(n) ─────────────────────────────── holder
//! create volume, qemu-nbd on 127.0.0.1 ── Exported ──► holder
//! puller ◄── tunnel "fetched:VOLUME" ◄── qemu-img convert (zeros skipped) ◄── holder
//! puller ◄── Done ─────────────────────────────────── holder; snapshot destroyed
//!
//! puller ── tunnel "fetch": Image {sha256} ──► each peer in turn
//! puller ◄── Size(n), the file in frames, Done ── the first that holds it
//! SHA-256 and size checked, fsync, rename into STATE/images/SHA256
//! ```
//!
//! The holder's copy is a point-in-time snapshot, so the source keeps
//! running and is never read twice at different instants. A failure on
//! either side removes what it made (the puller's volume, the holder's
//! snapshot); snapshots a crash left behind are destroyed when the agent
//! starts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{free_port, Ports, Shared, CONNECT_TIMEOUT, COPY_TIMEOUT};
use crate::driver::{CloneRequest, LiveDisks, VmState};
use crate::gossip::{DocKey, NodeId};
use crate::model::vm::VirtualMachineSpec;
use crate::model::{names, Kind, ObjectKey, SpacesuitSpec};
use crate::reconcile::{Elected, FetchVolume};
use crate::relocate::offline;
use crate::relocate::tunnel::Tunnel;

/// A copy the engine asks of the agent.
pub enum Fetch {
    /// A volume another node holds, into a new volume here.
    Volume {
        /// What to copy.
        fetch: FetchVolume,
        /// Done, or why not.
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// An image file by its SHA-256, from any peer that holds it.
    Image {
        /// The spacesuit that names it.
        spacesuit: ObjectKey,
        /// Its SHA-256 (lower-case hex).
        sha256: String,
        /// Its path in this node's cache, or why not.
        reply: oneshot::Sender<Result<PathBuf, String>>,
    },
}

/// What the puller asks on a `fetch` tunnel.
#[derive(Debug, Serialize, Deserialize)]
enum Ask {
    /// A point-in-time copy of `source` into the puller's `volume`.
    Volume { source: String, volume: String },
    /// The image file with this SHA-256.
    Image { sha256: String },
}

/// The messages after the ask, both ways.
#[derive(Debug, Serialize, Deserialize)]
enum Say {
    /// The holder has it: its size in bytes.
    Size(u64),
    /// The puller's fresh volume listens.
    Exported,
    /// All of it was sent.
    Done,
    /// Refused or failed, and why.
    No(String),
}

/// Prefix of volumes a holder snapshots for a copy.
const SNAPSHOT_PREFIX: &str = "fetch-";
/// Free space an image must leave on the cache's filesystem.
const IMAGE_SPARE: u64 = 64 << 20;
/// Bytes of a file in one tunnel message.
const FILE_CHUNK: usize = 60 * 1024;

async fn tell(t: &mut Tunnel, s: &Say) -> Result<(), String> {
    t.send(&serde_json::to_vec(s).expect("messages serialize"))
        .await
        .map_err(|e| e.to_string())
}

async fn hear(t: &mut Tunnel, limit: std::time::Duration) -> Result<Say, String> {
    match tokio::time::timeout(limit, t.recv()).await {
        Err(_) => Err(format!("no answer within {limit:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(None)) => Err("the peer closed the tunnel".into()),
        Ok(Ok(Some(b))) => {
            serde_json::from_slice(&b).map_err(|e| format!("malformed message: {e}"))
        }
    }
}

/// A peer's ask, decoded and checked before the holder acts on it: an
/// image is named by a SHA-256 (it names a file in the cache), volumes by
/// valid volume names (whether the peer may have the volume is
/// `may_copy`'s, against the store).
fn decode_ask(bytes: &[u8]) -> Result<Ask, String> {
    let ask: Ask = serde_json::from_slice(bytes).map_err(|e| format!("malformed ask: {e}"))?;
    match &ask {
        Ask::Image { sha256 } if !is_sha256(sha256) => Err(format!("{sha256:?} is not a SHA-256")),
        Ask::Image { .. } => Ok(ask),
        Ask::Volume { source, volume } => {
            crate::driver::cow::check_volume_name("fetch", source)
                .and_then(|()| crate::driver::cow::check_volume_name("fetch", volume))
                .map_err(|e| e.to_string())?;
            Ok(ask)
        }
    }
}

/// A message of a `fetch` tunnel as a node decodes it: an ask (the
/// holder's [`decode_ask`]), else an answer. Fuzzed
/// (`fuzzing::relocate_fetch`).
pub fn check_message(bytes: &[u8]) -> Result<(), String> {
    match decode_ask(bytes) {
        Ok(_) => Ok(()),
        Err(why) => serde_json::from_slice::<Say>(bytes)
            .map(|_| ())
            .map_err(|e| format!("{why}; nor an answer: {e}")),
    }
}

/// An ask as a puller sends it (the fuzz targets' seed).
pub fn sample_ask() -> Vec<u8> {
    serde_json::to_vec(&Ask::Volume {
        source: "vm-default-mover-data".into(),
        volume: "vm-default-copy-data".into(),
    })
    .expect("messages serialize")
}

/// 64 hex digits: what may name a file in the image cache.
fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn split(id: &str) -> (&str, &str) {
    id.split_once('/').unwrap_or(("default", id))
}

impl Shared {
    /// Carry out one of the engine's copies and answer it.
    pub(super) async fn fetch(self: Arc<Self>, f: Fetch) {
        match f {
            Fetch::Volume { fetch, reply } => {
                let r = self.fetch_volume(&fetch).await;
                match &r {
                    Ok(()) => {
                        info!(source = %fetch.source, from = %fetch.from, volume = %fetch.volume, "volume copied from a peer")
                    }
                    Err(e) => {
                        warn!(source = %fetch.source, from = %fetch.from, error = %e, "volume not copied from a peer")
                    }
                }
                let _ = reply.send(r);
            }
            Fetch::Image {
                spacesuit,
                sha256,
                reply,
            } => {
                let r = self.fetch_image(&spacesuit, &sha256).await;
                if let Err(e) = &r {
                    warn!(spacesuit = %spacesuit, %sha256, error = %e, "image not fetched");
                }
                let _ = reply.send(r);
            }
        }
    }

    /// The member called `name` (its node name or ID).
    fn member(&self, name: &str) -> Result<NodeId, String> {
        let link = self.link.borrow();
        link.addrs
            .keys()
            .find(|id| id.0 == name || link.names.get(*id).is_some_and(|n| n == name))
            .cloned()
            .ok_or_else(|| format!("node {name} is not a live member"))
    }

    async fn fetch_volume(self: &Arc<Self>, f: &FetchVolume) -> Result<(), String> {
        let from = self.member(&f.from)?;
        let (ns, vm) = split(&f.for_vm);
        let key = DocKey::new("Fetch", ns, vm);
        let mut control = self.open(&from, &key, "fetch").await?;
        let ask = Ask::Volume {
            source: f.source.clone(),
            volume: f.volume.clone(),
        };
        control
            .send(&serde_json::to_vec(&ask).expect("asks serialize"))
            .await
            .map_err(|e| e.to_string())?;
        let size = match hear(&mut control, CONNECT_TIMEOUT * 3).await? {
            Say::Size(n) => n,
            Say::No(why) => return Err(format!("{} refused: {why}", f.from)),
            other => return Err(format!("{} said {other:?} before the size", f.from)),
        };
        let storage = &self.drivers.storage;
        storage
            .create(&f.volume, size.max(f.size.unwrap_or(0)))
            .await
            .map_err(|e| e.to_string())?;
        let r = self.take_volume(&mut control, &from, ns, &f.volume).await;
        if r.is_err() {
            if let Err(e) = storage.destroy(&f.volume).await {
                warn!(volume = %f.volume, error = %e, "a failed copy's volume was not removed");
            }
        }
        r
    }

    /// Serve the fresh `volume` over NBD for the holder's copy.
    async fn take_volume(
        self: &Arc<Self>,
        control: &mut Tunnel,
        from: &NodeId,
        ns: &str,
        volume: &str,
    ) -> Result<(), String> {
        let info = self
            .drivers
            .storage
            .volume(volume)
            .await
            .map_err(|e| e.to_string())?;
        let at = free_port().map_err(|e| format!("no local port: {e}"))?;
        let server = offline::serve(&info.path, info.format, at, "disk")
            .await
            .map_err(|e| e.to_string())?;
        let slot = DocKey::new("Fetch", ns, volume);
        self.incoming.lock().unwrap().insert(
            slot.clone(),
            Ports {
                peer: from.clone(),
                streams: BTreeMap::from([(format!("fetched:{volume}"), at)]),
            },
        );
        let r = async {
            tell(control, &Say::Exported).await?;
            match hear(control, COPY_TIMEOUT).await? {
                Say::Done => Ok(()),
                Say::No(why) => Err(why),
                other => Err(format!("unexpected {other:?}")),
            }
        }
        .await;
        self.incoming.lock().unwrap().remove(&slot);
        drop(server);
        r
    }

    /// A peer's `fetch` tunnel, for `vm` (a volume) or a spacesuit (an
    /// image). A refusal is told to the peer and returned (the listener
    /// logs it, at most once per peer per 5 s).
    pub(super) async fn serve_fetch(
        self: Arc<Self>,
        mut t: Tunnel,
        ns: &str,
        name: &str,
    ) -> Result<(), String> {
        let ask = match tokio::time::timeout(CONNECT_TIMEOUT, t.recv()).await {
            Ok(Ok(Some(b))) => decode_ask(&b),
            _ => Err("no ask".to_string()),
        };
        let r = match ask {
            Ok(Ask::Volume { source, volume }) => {
                self.give_volume(&mut t, ns, name, &source, &volume).await
            }
            Ok(Ask::Image { sha256 }) => self.give_image(&mut t, ns, name, &sha256).await,
            Err(e) => Err(e),
        };
        if let Err(why) = &r {
            let _ = tell(&mut t, &Say::No(why.clone())).await;
        }
        r.map_err(|why| format!("copy for {ns}/{name} refused or failed: {why}"))
    }

    /// [`may_copy`] against this node's store and election.
    fn may_copy(
        &self,
        peer: &NodeId,
        ns: &str,
        vm: &str,
        source: &str,
    ) -> Result<Option<(String, String)>, String> {
        let peer_name = self.link.borrow().name(peer);
        let elected = |k: &ObjectKey| self.placement.elected(k);
        may_copy(
            &self.store,
            &elected,
            &[&peer.0, &peer_name],
            ns,
            vm,
            source,
        )
    }

    /// The holder: snapshot `source`, say its size, copy it into the
    /// puller's export, then drop the snapshot.
    async fn give_volume(
        self: &Arc<Self>,
        t: &mut Tunnel,
        ns: &str,
        vm: &str,
        source: &str,
        volume: &str,
    ) -> Result<(), String> {
        // Names checked by `decode_ask`.
        let from_vm = self.may_copy(&t.peer, ns, vm, source)?;
        let storage = &self.drivers.storage;
        let snap = format!("{SNAPSHOT_PREFIX}{source}-{}", crate::driver::cow::nonce());
        let live = match from_vm {
            Some((id, disk)) => self.live_disks_of(&id, &disk, source).await,
            None => LiveDisks::default(),
        };
        storage
            .clone_volumes_live(
                &[CloneRequest {
                    volume: snap.clone(),
                    source: source.to_string(),
                    size: None,
                }],
                &live,
            )
            .await
            .map_err(|e| format!("snapshot of {source}: {e}"))?;
        let r = self.copy_snapshot(t, ns, vm, &snap, volume).await;
        if let Err(e) = storage.destroy(&snap).await {
            warn!(volume = %snap, error = %e, "a copy's snapshot was not removed (the agent removes it at its next start)");
        }
        r
    }

    async fn copy_snapshot(
        self: &Arc<Self>,
        t: &mut Tunnel,
        ns: &str,
        vm: &str,
        snap: &str,
        volume: &str,
    ) -> Result<(), String> {
        let info = self
            .drivers
            .storage
            .volume(snap)
            .await
            .map_err(|e| e.to_string())?;
        tell(t, &Say::Size(info.size)).await?;
        // The puller only makes a volume and starts qemu-nbd: the snapshot
        // is not held long on its account.
        match hear(t, CONNECT_TIMEOUT * 3).await? {
            Say::Exported => {}
            Say::No(why) => return Err(format!("the puller: {why}")),
            other => return Err(format!("unexpected {other:?}")),
        }
        let key = DocKey::new("Fetch", ns, vm);
        let fwd = self
            .forward(&t.peer, &key, format!("fetched:{volume}"))
            .await
            .map_err(|e| e.to_string())?;
        let r = offline::copy(&info.path, info.format, fwd.0, "disk", COPY_TIMEOUT).await;
        fwd.1.abort();
        r.map_err(|e| e.to_string())?;
        tell(t, &Say::Done).await
    }

    /// VM `id`'s disk `disk` (volume `volume`) if the VM runs here, for a
    /// snapshot through its QEMU.
    async fn live_disks_of(&self, id: &str, disk: &str, volume: &str) -> LiveDisks {
        let hv = &self.drivers.hypervisor;
        let mut live = LiveDisks::default();
        if let Ok(VmState::Running { .. } | VmState::Paused { .. }) = hv.state(id).await {
            live.volumes
                .insert(volume.to_string(), (id.to_string(), disk.to_string()));
            live.hypervisor = Some(hv.clone());
        }
        live
    }

    /// Where this node has the image `sha256` for spacesuit `ns/name`: its
    /// cache, or the path the spacesuit names when its spec names that
    /// hash.
    fn image_here(&self, ns: &str, name: &str, sha256: &str) -> Option<PathBuf> {
        let cached = self.images.join(sha256);
        if cached.is_file() {
            return Some(cached);
        }
        let suit = self
            .store
            .get(&ObjectKey::new(Kind::Spacesuit, Some(ns), name))
            .filter(|r| !r.deleted)
            .and_then(|r| serde_json::from_value::<SpacesuitSpec>(r.object["spec"].clone()).ok())?;
        // The first disk's image or a further disk's (`spec.disks`).
        let img = suit
            .source
            .and_then(|s| s.image)
            .into_iter()
            .chain(suit.disks.into_iter().map(|d| d.image))
            .find(|i| {
                i.sha256
                    .as_deref()
                    .is_some_and(|h| h.eq_ignore_ascii_case(sha256))
            })?;
        let path = PathBuf::from(img.path);
        path.is_file().then_some(path)
    }

    /// The holder of an image: its size, then its bytes.
    async fn give_image(
        self: &Arc<Self>,
        t: &mut Tunnel,
        ns: &str,
        name: &str,
        sha256: &str,
    ) -> Result<(), String> {
        // A SHA-256 (`decode_ask`): it names a file in the cache.
        let path = self
            .image_here(ns, name, &sha256.to_ascii_lowercase())
            .ok_or_else(|| format!("no image sha256:{sha256} here"))?;
        let mut f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let size = f.metadata().await.map_err(|e| e.to_string())?.len();
        tell(t, &Say::Size(size)).await?;
        let mut buf = vec![0u8; FILE_CHUNK];
        loop {
            use tokio::io::AsyncReadExt;
            let n = f.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            if let Some(rate) = &self.rate {
                rate.take(n as u64).await;
            }
            t.send(&buf[..n]).await.map_err(|e| e.to_string())?;
        }
        tell(t, &Say::Done).await
    }

    /// The image `sha256` in this node's cache, fetched from the first
    /// peer that holds it when it is not there yet.
    async fn fetch_image(
        self: &Arc<Self>,
        suit: &ObjectKey,
        sha256: &str,
    ) -> Result<PathBuf, String> {
        if !is_sha256(sha256) {
            return Err(format!("{sha256:?} is not a SHA-256"));
        }
        let sha256 = sha256.to_ascii_lowercase();
        let cached = self.images.join(&sha256);
        if cached.is_file() {
            return Ok(cached);
        }
        let (me, peers) = {
            let l = self.link.borrow();
            (l.me.clone(), l.addrs.keys().cloned().collect::<Vec<_>>())
        };
        let key = DocKey::new("Fetch", &suit.namespace, &suit.name);
        let mut tried = Vec::new();
        for peer in peers.iter().filter(|p| Some(*p) != me.as_ref()) {
            match self.image_from(peer, &key, &sha256).await {
                Ok(path) => {
                    info!(%sha256, from = %peer, "image fetched");
                    return Ok(path);
                }
                Err(e) => tried.push(format!("{}: {e}", self.link.borrow().name(peer))),
            }
        }
        if tried.is_empty() {
            return Err("no peer to ask".into());
        }
        Err(format!("no peer gave it ({})", tried.join("; ")))
    }

    async fn image_from(
        self: &Arc<Self>,
        peer: &NodeId,
        key: &DocKey,
        sha256: &str,
    ) -> Result<PathBuf, String> {
        let mut t = self.open(peer, key, "fetch").await?;
        let ask = Ask::Image {
            sha256: sha256.to_string(),
        };
        t.send(&serde_json::to_vec(&ask).expect("asks serialize"))
            .await
            .map_err(|e| e.to_string())?;
        let size = match hear(&mut t, CONNECT_TIMEOUT * 3).await? {
            Say::Size(n) => n,
            Say::No(why) => return Err(why),
            other => return Err(format!("unexpected {other:?}")),
        };
        std::fs::create_dir_all(&self.images).map_err(|e| e.to_string())?;
        let part = self
            .images
            .join(format!(".{sha256}.{}.part", crate::driver::cow::nonce()));
        let r = self.take_image(&mut t, &part, size, sha256).await;
        if r.is_err() {
            let _ = std::fs::remove_file(&part);
        }
        r
    }

    async fn take_image(
        &self,
        t: &mut Tunnel,
        part: &std::path::Path,
        size: u64,
        sha256: &str,
    ) -> Result<PathBuf, String> {
        use tokio::io::AsyncWriteExt;
        // What a peer announces must fit, with room to spare, before a
        // byte of it is written (the hash is checked only at the end).
        let free = rustix::fs::statvfs(&self.images)
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
            .map_err(|e| format!("{}: {e}", self.images.display()))?;
        if size.saturating_add(IMAGE_SPARE) > free {
            return Err(format!(
                "an image of {size} bytes does not fit in {} ({free} bytes free)",
                self.images.display()
            ));
        }
        let mut file = tokio::fs::File::create(part)
            .await
            .map_err(|e| e.to_string())?;
        let mut hash = Sha256::new();
        let mut got = 0u64;
        while got < size {
            let msg = tokio::time::timeout(CONNECT_TIMEOUT * 3, t.recv())
                .await
                .map_err(|_| "the image stopped coming".to_string())?
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("the peer closed after {got} of {size} bytes"))?;
            if got + msg.len() as u64 > size {
                return Err(format!("more than the {size} bytes announced"));
            }
            got += msg.len() as u64;
            hash.update(&msg);
            file.write_all(&msg).await.map_err(|e| e.to_string())?;
        }
        match hear(t, CONNECT_TIMEOUT * 3).await? {
            Say::Done => {}
            Say::No(why) => return Err(why),
            other => return Err(format!("unexpected {other:?} after the data")),
        }
        let have = hex::encode(hash.finalize());
        if have != sha256 {
            return Err(format!("what came hashes to {have}, not {sha256}"));
        }
        file.sync_all().await.map_err(|e| e.to_string())?;
        let path = self.images.join(sha256);
        std::fs::rename(part, &path).map_err(|e| e.to_string())?;
        if let Ok(d) = std::fs::File::open(&self.images) {
            let _ = d.sync_all();
        }
        Ok(path)
    }

    /// Remove cached images no Spacesuit names any more (older than
    /// [`IMAGE_GRACE`]): a deleted or changed spacesuit does not leave
    /// its image on every node that fetched it. Volumes imported from an
    /// image do not depend on the file.
    pub(super) fn prune_images(&self) {
        for path in unused_images(&self.store, &self.images, IMAGE_GRACE) {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    info!(image = %path.display(), "removed a cached image no spacesuit names")
                }
                Err(e) => warn!(image = %path.display(), error = %e, "cached image not removed"),
            }
        }
    }

    /// Snapshots of copies a crash interrupted.
    pub(super) async fn remove_stale_snapshots(&self) {
        let storage = &self.drivers.storage;
        for v in storage.list().await.unwrap_or_default() {
            if v.starts_with(SNAPSHOT_PREFIX) {
                match storage.destroy(&v).await {
                    Ok(()) => info!(volume = %v, "removed the snapshot of an interrupted copy"),
                    Err(e) => warn!(volume = %v, error = %e, "stale copy snapshot not removed"),
                }
            }
        }
        for e in std::fs::read_dir(&self.images)
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().ends_with(".part") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Images in the cache `dir` that no Spacesuit in `store` names any
/// more, and that are older than `grace` (a file fetched just now is
/// kept while its Spacesuit's version arrives): what pruning removes.
/// Only files named by a SHA-256 are considered.
fn unused_images(
    store: &crate::store::Store,
    dir: &std::path::Path,
    grace: std::time::Duration,
) -> Vec<std::path::PathBuf> {
    let named: std::collections::BTreeSet<String> = store
        .list(Some(Kind::Spacesuit))
        .into_iter()
        .filter(|r| !r.deleted)
        .filter_map(|r| {
            r.object["spec"]["source"]["image"]["sha256"]
                .as_str()
                .map(str::to_ascii_lowercase)
        })
        .collect();
    let now = std::time::SystemTime::now();
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().to_ascii_lowercase();
            is_sha256(&name) && !named.contains(&name)
        })
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= grace)
        })
        .map(|e| e.path())
        .collect()
}

/// How long an image no Spacesuit names stays in the cache.
pub(super) const IMAGE_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// Whether the node known as `peer` (its ID and name) may copy volume
/// `source`: a VM `ns/vm` in `store` names that volume as a disk source
/// (a disk of another VM, or the volume of a spacesuit one of its disks
/// is cloned from), and `peer` is where that VM runs (its pinned node,
/// else its elected one). The source VM's ID and disk name, for a
/// snapshot through its QEMU if it runs here; `None` for a spacesuit's
/// volume.
fn may_copy(
    store: &crate::store::Store,
    elected: &dyn Fn(&ObjectKey) -> Elected,
    peer: &[&str],
    ns: &str,
    vm: &str,
    source: &str,
) -> Result<Option<(String, String)>, String> {
    fn typed<S: serde::de::DeserializeOwned>(
        store: &crate::store::Store,
        kind: Kind,
        ns: &str,
        name: &str,
    ) -> Option<S> {
        store
            .get(&ObjectKey::new(kind, Some(ns), name))
            .filter(|r| !r.deleted)
            .and_then(|r| serde_json::from_value(r.object["spec"].clone()).ok())
    }
    let spec: VirtualMachineSpec = typed(store, Kind::VirtualMachine, ns, vm)
        .ok_or_else(|| format!("no VM {ns}/{vm} here"))?;
    let suit: Option<SpacesuitSpec> = spec
        .spacesuit
        .as_ref()
        .and_then(|n| typed(store, Kind::Spacesuit, ns, n));
    let disks = crate::reconcile::vm::effective_disks(&spec, suit.as_ref());
    let names_suit = disks.iter().any(|d| {
        d.source.spacesuit.as_ref().is_some_and(|s| {
            names::spacesuit_volume(ns, s) == source
                && typed::<SpacesuitSpec>(store, Kind::Spacesuit, ns, s).is_some()
        })
    });
    let names_it = disks.iter().find_map(|d| {
        let r = d.source.virtual_machine.as_ref()?;
        let rns = r.namespace.as_deref().unwrap_or(ns);
        // Its first disk as the reconciler resolves it (its own, else its
        // spacesuit's).
        let disk = r.disk.clone().or_else(|| {
            let src: VirtualMachineSpec = typed(store, Kind::VirtualMachine, rns, &r.name)?;
            let suit: Option<SpacesuitSpec> = src
                .spacesuit
                .as_ref()
                .and_then(|n| typed(store, Kind::Spacesuit, rns, n));
            crate::reconcile::vm::disk_names(&src, suit.as_ref())
                .into_iter()
                .next()
        });
        disk.filter(|d| names::vm_volume(rns, &r.name, d) == source)
            .map(|d| (format!("{rns}/{}", r.name), d))
    });
    if names_it.is_none() && !names_suit {
        return Err(format!(
            "VM {ns}/{vm} does not take a disk from volume {source}"
        ));
    }
    let is_peer = |n: &str| peer.contains(&n);
    let runs_there = match spec.placement.as_ref().and_then(|p| p.node.clone()) {
        Some(node) => is_peer(&node),
        None => matches!(
            elected(&ObjectKey::new(Kind::VirtualMachine, Some(ns), vm)),
            Elected::Elsewhere { node, .. } if is_peer(&node)
        ),
    };
    if !runs_there {
        return Err(format!(
            "VM {ns}/{vm} does not run on {}",
            peer.last().copied().unwrap_or_default()
        ));
    }
    Ok(names_it)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AnyObject;
    use crate::store::{SourceId, Store};

    fn vm(name: &str, spec: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": crate::model::API_VERSION, "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        })
    }

    /// Pruning removes only cache files named by a SHA-256 that no live
    /// Spacesuit names, and only once they are older than the grace.
    #[test]
    fn the_cache_drops_images_no_spacesuit_names() {
        let dir = std::env::temp_dir().join(format!("deorch-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("images")).unwrap();
        let store = Store::open(&dir.join("s.redb")).unwrap();
        let (kept, dropped) = ("ab".repeat(32), "cd".repeat(32));
        let suit = serde_json::json!({
            "apiVersion": crate::model::API_VERSION, "kind": "Spacesuit",
            "metadata": {"name": "base", "namespace": "default"},
            "spec": {"source": {"image": {"path": "/nowhere/base.qcow2", "sha256": kept.to_uppercase()}}},
        });
        store
            .apply(
                &AnyObject::from_value(suit).unwrap(),
                &SourceId("api".into()),
            )
            .unwrap();
        let images = dir.join("images");
        for f in [kept.as_str(), dropped.as_str(), "notes.txt", "x.part"] {
            std::fs::write(images.join(f), b"x").unwrap();
        }
        // Within the grace: nothing.
        assert!(unused_images(&store, &images, std::time::Duration::from_secs(3600)).is_empty());
        // After it: only the image no spacesuit names.
        assert_eq!(
            unused_images(&store, &images, std::time::Duration::ZERO),
            vec![images.join(&dropped)]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Only a SHA-256 names a cached image: a peer's ask cannot reach
    /// another file.
    #[test]
    fn only_a_sha256_names_an_image() {
        assert!(is_sha256(&"ab".repeat(32)));
        for bad in [
            "../../etc/shadow",
            "",
            &"g".repeat(64),
            &"a".repeat(63),
            &format!("{}/", "a".repeat(63)),
        ] {
            assert!(!is_sha256(bad), "{bad:?}");
            let ask = serde_json::json!({"Image": {"sha256": bad}}).to_string();
            assert!(decode_ask(ask.as_bytes()).is_err(), "{bad:?}");
        }
    }

    /// A holder gives a disk only to the node that runs a VM naming it.
    #[test]
    fn a_disk_goes_only_to_the_node_that_runs_a_vm_naming_it() {
        let dir = std::env::temp_dir().join(format!("deorch-may-copy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&dir.join("s.redb")).unwrap();
        let disk = |src: serde_json::Value| serde_json::json!({"cpu": 1, "memory": "64Mi", "disks": [{"name": "root", "source": src}]});
        let mut pinned = disk(serde_json::json!({"virtualMachine": {"name": "web"}}));
        pinned["placement"] = serde_json::json!({"node": "sat-b"});
        let mut fromsuit = disk(serde_json::json!({"spacesuit": "gold"}));
        fromsuit["placement"] = serde_json::json!({"node": "sat-b"});
        for o in [
            vm("web", disk(serde_json::json!({"blank": {}}))),
            vm("copy", pinned),
            vm(
                "auto",
                disk(serde_json::json!({"virtualMachine": {"name": "web", "disk": "root"}})),
            ),
            vm("fromsuit", fromsuit),
            vm(
                "whole",
                serde_json::json!({"cpu": 1, "memory": "64Mi", "spacesuit": "gold"}),
            ),
            serde_json::json!({
                "apiVersion": crate::model::API_VERSION, "kind": "Spacesuit",
                "metadata": {"name": "gold", "namespace": "default"},
                "spec": {"source": {"virtualMachine": {"name": "web"}}},
            }),
        ] {
            store
                .apply(&AnyObject::from_value(o).unwrap(), &SourceId("api".into()))
                .unwrap();
        }
        let on_c = |_: &ObjectKey| Elected::Elsewhere {
            node: "sat-c".into(),
            epoch: 1,
        };
        let web = "vm-default-web-root";
        assert_eq!(
            may_copy(&store, &on_c, &["id-b", "sat-b"], "default", "copy", web),
            Ok(Some(("default/web".into(), "root".into())))
        );
        assert_eq!(
            may_copy(&store, &on_c, &["id-c", "sat-c"], "default", "auto", web),
            Ok(Some(("default/web".into(), "root".into())))
        );
        // A spacesuit's volume, to the node that runs a VM cloned from it
        // (by a disk, or as its spacesuit).
        assert_eq!(
            may_copy(
                &store,
                &on_c,
                &["id-b", "sat-b"],
                "default",
                "fromsuit",
                "suit-default-gold"
            ),
            Ok(None)
        );
        assert_eq!(
            may_copy(
                &store,
                &on_c,
                &["id-c", "sat-c"],
                "default",
                "whole",
                "suit-default-gold"
            ),
            Ok(None)
        );
        let refused = [
            // Not where the VM runs.
            (["id-c", "sat-c"], "copy", web, "does not run on sat-c"),
            (["id-b", "sat-b"], "auto", web, "does not run on sat-b"),
            // A volume the VM does not name.
            (
                ["id-b", "sat-b"],
                "copy",
                "vm-default-other-root",
                "does not take a disk",
            ),
            // No such VM.
            (["id-b", "sat-b"], "ghost", web, "no VM default/ghost"),
            // A spacesuit's volume to a node that does not run the VM, or
            // for a VM not cloned from that spacesuit.
            (
                ["id-c", "sat-c"],
                "fromsuit",
                "suit-default-gold",
                "does not run on sat-c",
            ),
            (
                ["id-b", "sat-b"],
                "copy",
                "suit-default-gold",
                "does not take a disk",
            ),
        ];
        for (peer, vm, source, why) in refused {
            let e = may_copy(&store, &on_c, &peer, "default", vm, source).unwrap_err();
            assert!(e.contains(why), "{vm} {source}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
