//! Execute: run a plan's actions through the driver traits, in order,
//! stopping at the first failure. Dumb on purpose: every decision was made
//! by [`super::plan`], every input resolved by [`super::resolve`].

use super::super::{Ctx, ReconcileError};
use super::plan::{Action, Attach};
use super::resolve::{SourceVm, SuitCopy, SuitImage};
use crate::driver::{CloneRequest, DiskImage, DriverError, LiveDisks, VmConfig, VmState};

/// An action that failed, and why.
#[derive(Debug)]
pub struct Failed {
    /// Its index in the plan (the actions before it ran).
    pub index: usize,
    /// The action.
    pub action: Action,
    /// The driver's error.
    pub error: ReconcileError,
}

/// Run `actions` on the VM `id`; the actions before the failing one ran.
pub async fn run(ctx: &Ctx, id: &str, actions: &[Action]) -> Result<(), Failed> {
    // The VM's disks made here are made as one group, so that one storage
    // command snapshots them all (a replica, a FASTR point: no pause).
    let made: Vec<String> = actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateVolume { volume, .. } | Action::CloneVolume { volume, .. } => {
                Some(volume.clone())
            }
            _ => None,
        })
        .collect();
    if !made.is_empty() {
        let (ns, name) = id.split_once('/').unwrap_or(("", id));
        let group = crate::model::names::vm_group(ns, name);
        ctx.drivers.storage.group(&group, &made);
    }
    for (index, action) in actions.iter().enumerate() {
        if let Err(e) = one(ctx, id, action).await {
            return Err(Failed {
                index,
                action: action.clone(),
                error: ReconcileError::from(e),
            });
        }
    }
    Ok(())
}

async fn one(ctx: &Ctx, id: &str, action: &Action) -> Result<(), DriverError> {
    let hv = &ctx.drivers.hypervisor;
    let storage = &ctx.drivers.storage;
    match action {
        Action::CreateVolume { volume, size } => storage.create(volume, *size).await,
        Action::CloneVolume {
            volume,
            source,
            size,
            from_vm,
            suit,
        } => {
            match suit.as_deref() {
                Some(SuitCopy::Image(img)) => suit_volume(ctx, source, img).await?,
                Some(SuitCopy::Volume { spacesuit, holders })
                    if !storage.exists(source).await? =>
                {
                    return suit_copy(ctx, id, volume, source, *size, spacesuit, holders).await;
                }
                _ => {}
            }
            clone(ctx, id, volume, source, *size, from_vm.as_ref()).await
        }
        Action::EnsureTap { tap, bridge, mtu } => {
            ctx.drivers.net.ensure_tap(tap, bridge, *mtu).await
        }
        Action::Start { config, disks } => hv.start(&with_images(ctx, config, disks).await?).await,
        Action::Stop { timeout } => hv.stop(id, *timeout).await,
        Action::Pause => hv.pause(id).await,
        Action::Resume => hv.resume(id).await,
        Action::Remove => hv.remove(id).await,
        Action::DestroyVolume { volume } => storage.destroy(volume).await,
        // The cached listing goes after the rename, so no reconcile can
        // refill it with the state before.
        Action::RetainVolume { volume, retained } => {
            let r = storage.rename(volume, retained).await;
            ctx.retained.invalidate();
            r
        }
        // A FASTR copy (`fastr.VOLUME@POINT`) is rolled back to that
        // point first.
        Action::RestoreVolume { retained, volume } => {
            let r = match retained.split_once('@') {
                Some((copy, point)) => {
                    let r = match storage.rollback(copy, point).await {
                        Ok(()) => storage.rename(copy, volume).await,
                        Err(e) => Err(e),
                    };
                    if r.is_ok() {
                        let _ = storage.received(volume).await;
                        tracing::info!(volume = %volume, point = %point, "volume restored from its FASTR copy");
                    }
                    r
                }
                None => storage.rename(retained, volume).await,
            };
            ctx.retained.invalidate();
            r
        }
        Action::RemoveTap { tap } => ctx.drivers.net.remove_tap(tap).await,
        Action::KeepDiverged { vm, disks } => keep_diverged(ctx, vm, disks).await,
    }
}

/// Rename the disks of VM `vm` (`namespace/name`) to the volumes of one
/// diverged replica. A disk renamed before a crash is found again by its
/// name (`names::parse_diverged`); the others follow at the next pass,
/// under a later replica name.
async fn keep_diverged(ctx: &Ctx, vm: &str, disks: &[(String, String)]) -> Result<(), DriverError> {
    let (ns, name) = vm.split_once('/').unwrap_or(("", vm));
    let replica = crate::model::names::diverged_replica(name, crate::clock::now_ms() / 1000);
    for (volume, disk) in disks {
        let to = crate::model::names::replica_volume(ns, &replica, disk);
        ctx.drivers.storage.rename(volume, &to).await?;
    }
    tracing::warn!(vm = %vm, replica = %replica, disks = disks.len(), "another node runs this VM now: this node's copy of its disks is kept as a diverged replica");
    Ok(())
}

/// `config` with each disk's image (path and format, from the storage
/// driver), bus and mode, as the hypervisor attaches it.
async fn with_images(
    ctx: &Ctx,
    config: &VmConfig,
    disks: &[Attach],
) -> Result<VmConfig, DriverError> {
    let mut config = config.clone();
    config.disk_images.clear();
    for d in disks {
        let info = ctx.drivers.storage.volume(&d.volume).await?;
        config.disk_images.push(DiskImage {
            name: d.name.clone(),
            path: info.path,
            format: info.format.to_string(),
            bus: d.bus,
            read_only: d.read_only,
        });
    }
    Ok(config)
}

/// The disks of `vm` if it runs here, for snapshots that storage takes
/// through the hypervisor (see `Storage::clone_volumes_live`).
pub async fn live_disks(ctx: &Ctx, vm: &SourceVm) -> LiveDisks {
    let mut live = LiveDisks::default();
    let running = matches!(
        ctx.drivers.hypervisor.state(&vm.id).await,
        Ok(VmState::Running { .. } | VmState::Paused { .. })
    );
    if running {
        for (volume, disk) in &vm.disks {
            live.volumes
                .insert(volume.clone(), (vm.id.clone(), disk.clone()));
        }
        live.hypervisor = Some(ctx.drivers.hypervisor.clone());
    }
    live
}

/// Make the spacesuit's volume `volume` from its image fetched from a
/// peer, when neither the volume nor the image file is on this node (with
/// the file here, the Spacesuit reconciler imports it, checked).
async fn suit_volume(ctx: &Ctx, volume: &str, img: &SuitImage) -> Result<(), DriverError> {
    let storage = &ctx.drivers.storage;
    if storage.exists(volume).await? {
        return Ok(());
    }
    let failed = |reason: &'static str, message: String| DriverError::Condition {
        op: "fetch".into(),
        target: format!("sha256:{}", img.sha256),
        reason,
        message,
    };
    if storage.has_image(&img.path) {
        return Err(failed(
            "SourceMissing",
            format!("spacesuit {} is not imported yet", img.spacesuit),
        ));
    }
    let placement = ctx.placement.as_ref().ok_or_else(|| {
        failed(
            "ImageNotFound",
            format!(
                "{} is not on this node and this node does not gossip",
                img.path
            ),
        )
    })?;
    let path = placement
        .fetch_image(img.spacesuit.clone(), img.sha256.clone())
        .await
        .map_err(|e| {
            failed(
                "ImageNotFound",
                format!("{} is not on this node; from peers: {e}", img.path),
            )
        })?;
    match storage
        .import(volume, &path.to_string_lossy(), img.format)
        .await
    {
        // Another VM's reconcile made it meanwhile.
        Err(_) if storage.exists(volume).await? => Ok(()),
        r => r,
    }
}

/// The VM `id`'s disk `volume` copied from the spacesuit volume `source`
/// on a node that holds it (a spacesuit made from a VM on another node):
/// a point-in-time copy of the whole volume, grown to `size`. This node
/// keeps no copy of the spacesuit's volume itself: a second VM here
/// copies again, and no half-copied volume is ever visible under the
/// spacesuit's name.
async fn suit_copy(
    ctx: &Ctx,
    id: &str,
    volume: &str,
    source: &str,
    size: Option<u64>,
    spacesuit: &crate::model::ObjectKey,
    holders: &[String],
) -> Result<(), DriverError> {
    let failed = |reason: &'static str, message: String| DriverError::Condition {
        op: "fetch".into(),
        target: source.to_string(),
        reason,
        message,
    };
    let placement = ctx.placement.as_ref().ok_or_else(|| {
        failed(
            "SourceMissing",
            format!("spacesuit {spacesuit} is not on this node and this node does not gossip"),
        )
    })?;
    if holders.is_empty() {
        return Err(failed(
            "SourceMissing",
            format!("spacesuit {spacesuit} is made on no live node yet"),
        ));
    }
    let mut tried = Vec::new();
    for from in holders {
        let fetch = super::super::FetchVolume {
            from: from.clone(),
            for_vm: id.to_string(),
            source: source.to_string(),
            volume: volume.to_string(),
            size,
        };
        match placement.fetch_volume(fetch).await {
            Ok(()) => return Ok(()),
            Err(e) => tried.push(format!("node {from}: {e}")),
        }
    }
    Err(failed(
        "FetchFailed",
        format!("spacesuit {spacesuit}'s volume: {}", tried.join("; ")),
    ))
}

/// Clone `source` into `volume` for the VM `id`. When the disk comes
/// from another VM that runs here, through its hypervisor
/// (`Storage::clone_volumes_live`), so a VM can be made from a running VM
/// on qcow2 storage too; when that VM's disks are on another node, a
/// point-in-time copy from that node (`Placement::fetch_volume`).
async fn clone(
    ctx: &Ctx,
    id: &str,
    volume: &str,
    source: &str,
    size: Option<u64>,
    from_vm: Option<&SourceVm>,
) -> Result<(), DriverError> {
    let Some(vm) = from_vm else {
        return ctx.drivers.storage.clone_volume(volume, source, size).await;
    };
    if let Some(holder) = &vm.holder {
        if !ctx.drivers.storage.exists(source).await? {
            let fetch = super::super::FetchVolume {
                from: holder.clone(),
                for_vm: id.to_string(),
                source: source.to_string(),
                volume: volume.to_string(),
                size,
            };
            let failed = |message: String| DriverError::Condition {
                op: "fetch".into(),
                target: source.to_string(),
                reason: "FetchFailed",
                message,
            };
            let placement = ctx.placement.as_ref().ok_or_else(|| {
                failed(format!(
                    "the disk is on node {holder} and this node does not gossip"
                ))
            })?;
            return placement
                .fetch_volume(fetch)
                .await
                .map_err(|e| failed(format!("copying it from node {holder}: {e}")));
        }
    }
    let live = live_disks(ctx, vm).await;
    let request = [CloneRequest {
        volume: volume.to_string(),
        source: source.to_string(),
        size,
    }];
    ctx.drivers
        .storage
        .clone_volumes_live(&request, &live)
        .await
}
