//! The `deorch.dev/revert-to` annotation: once per generation, stop the
//! VM, make each disk a copy of the replica's (the storage's crash-safe
//! `revert`), record it, and let the normal plan start the VM again.

use std::collections::BTreeMap;

use super::super::status::set_condition;
use super::super::{Ctx, Outcome, ReconcileError};
use super::resolve::Desired;
use crate::driver::VmState;
use crate::model::storage_kinds::ReplicaStatus;
use crate::model::vm::{VirtualMachineSpec, VirtualMachineStatus, VmReason};
use crate::model::{Kind, Manifest, ObjectKey};
use crate::store::Record;

/// Carry out the annotation if this generation asks for a revert not yet
/// done. `Some(outcome)`: the reconcile ends here (waiting for the
/// replica, or the replica lacks a disk).
pub async fn revert(
    ctx: &Ctx,
    record: &Record,
    vm: &Manifest<VirtualMachineSpec>,
    desired: &Desired,
    status: &mut VirtualMachineStatus,
) -> Result<Option<Outcome>, ReconcileError> {
    let Some(replica) = pending(record, vm, status) else {
        return Ok(None);
    };
    let token = format!("{replica}@{}", record.generation);
    let g = record.generation;
    let mut say = |ok: bool, reason: VmReason, message: &str| {
        set_condition(
            &mut status.conditions,
            "Reverted",
            ok,
            reason.as_str(),
            message,
            g,
        );
    };
    let Some(volumes) = replica_volumes(ctx, &record.key.namespace, replica) else {
        let msg = format!("replica {replica} does not exist here or is not ready");
        say(false, VmReason::ReplicaNotReady, &msg);
        ctx.write_status(&record.key, status)?;
        return Ok(Some(Outcome::RequeueAfter(ctx.config.blocked_retry)));
    };
    if let Some((disk, _)) = desired
        .config
        .disks
        .iter()
        .find(|(d, _)| !volumes.contains_key(d))
    {
        let msg = format!("replica {replica} has no disk {disk}");
        say(false, VmReason::DiskNotInReplica, &msg);
        ctx.write_status(&record.key, status)?;
        return Ok(Some(Outcome::Done));
    }
    let id = &desired.config.id;
    let hv = &ctx.drivers.hypervisor;
    if matches!(
        hv.state(id).await?,
        VmState::Running { .. } | VmState::Paused { .. }
    ) {
        hv.stop(id, desired.stop_timeout).await?;
    }
    // The present is kept first, as retained volumes (listed by `deorch
    // volume list`, taken back by `deorch volume restore`, gone after
    // --volume-retention): a revert never destroys what it replaces. Named
    // by generation, so a revert interrupted and re-run keeps one copy.
    let storage = &ctx.drivers.storage;
    if !ctx.config.volume_retention.is_zero() {
        let until = crate::clock::now_ms() + ctx.config.volume_retention.as_millis() as u64;
        let existing = storage.list().await?;
        for (_, volume) in &desired.config.disks {
            let kept = format!("{volume}.before-revert-g{g}");
            let already = existing
                .iter()
                .any(|n| crate::model::names::parse_retained(n).is_some_and(|(_, v)| v == kept));
            if !already && storage.exists(volume).await? {
                let name = crate::model::names::retained_volume(&kept, until);
                storage.clone_volume(&name, volume, None).await?;
            }
        }
        ctx.retained.invalidate();
    }
    for (disk, volume) in &desired.config.disks {
        storage.revert(volume, &volumes[disk]).await?;
    }
    status.last_revert = Some(token);
    say(
        true,
        VmReason::Reverted,
        &format!("disks reverted to replica {replica}; what they held is kept as retained volumes *.before-revert-g{g} (deorch volume list)"),
    );
    ctx.write_status(&record.key, status)?;
    Ok(None)
}

/// The replica this generation's annotation asks to revert to, when that
/// revert is not done yet.
pub fn pending<'v>(
    record: &Record,
    vm: &'v Manifest<VirtualMachineSpec>,
    status: &VirtualMachineStatus,
) -> Option<&'v String> {
    let replica = vm
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::model::REVERT_ANNOTATION))?;
    let token = format!("{replica}@{}", record.generation);
    (status.last_revert.as_deref() != Some(token.as_str())).then_some(replica)
}

/// Disk → volume of a ready replica.
fn replica_volumes(ctx: &Ctx, ns: &str, replica: &str) -> Option<BTreeMap<String, String>> {
    ctx.get(&ObjectKey::new(Kind::Replica, Some(ns), replica))
        .filter(|r| !r.deleted)
        .and_then(|r| r.status)
        .and_then(|s| serde_json::from_value::<ReplicaStatus>(s).ok())
        .filter(|s| s.phase == Some(crate::model::phase::ReadyPhase::Ready))
        .map(|s| s.volumes)
}
