//! The VirtualMachine reconciler: resolve → observe → plan → execute →
//! status, one file each.
//!
//! ```text
//!  spec + store + cluster decision ──resolve──► Desired ─┐
//!  hypervisor, storage, gossip ─────observe──► Observed ─┴─plan──► Plan ──execute──► drivers
//!                                                                    └────status───► status
//! ```
//!
//! What [`plan`] decides, on the node that runs the VM:
//!
//! ```text
//!            spec.powerState        observed (hypervisor)          action
//!   Running  ──────────────  Absent / Stopped(Requested)  ──►  provision, Start
//!                            Stopped(Crashed)             ──►  Start unless restartPolicy Never
//!                            Stopped(GuestShutdown)       ──►  Start if restartPolicy Always
//!                            Paused                       ──►  Resume
//!                            Running (other config)       ──►  flag status.pendingRestart
//!   Paused   ──────────────  Running                      ──►  Pause
//!                            Absent / Stopped             ──►  provision, Start, Pause
//!   Stopped  ──────────────  Running / Paused             ──►  Stop (ACPI, then forced)
//!                            Stopped(Crashed/GuestShutdown) ► Stop (recorded as asked:
//!                                                              the next start is no restart)
//!   (deleted) ─────────────  anything                     ──►  Stop, remove, destroy volumes, remove taps
//! ```
//!
//! and where it runs: elected elsewhere → a copy here stops, disks kept;
//! election pending → a copy here keeps running, none starts; no node
//! satisfies the placement → `Unschedulable`; another node still reports
//! running it → it does not start here (never two copies); its
//! `placement.node` moved while it runs here with local disks → it keeps
//! running here with reason `RelocationRequired`; a VM a relocation holds
//! (its marker, `Hypervisor::relocation_lock`) is left alone until the
//! relocation ends (`crate::relocate::agent`).
//!
//! The cluster's decision ([`resolve::decide`]) is read once, before
//! anything is resolved: plan and execute never call back into the
//! placement or the store.

mod execute;
mod plan;
mod resolve;
mod revert;
mod status;

pub use execute::Failed;
pub use plan::{diff, plan, start, Action, Attach, Next, Observed, Plan};
pub use resolve::{
    decide, disk_names, effective_disks, effective_nics, for_deletion, inherit_nics, is_auto,
    is_mine, resolve, vm_disk_names, vm_nics, Decision, Desired, DesiredDisk, Site, SourceVm,
    SuitCopy, Tap, VolumeSource, SPACESUIT_DISK,
};
pub use status::{fastr_condition, rpo_target, walk};

use std::collections::BTreeMap;

use super::kind::Preview;
use super::{names, Ctx, Outcome, ReconcileError};
use crate::model::vm::{VirtualMachineSpec, VirtualMachineStatus};
use crate::model::{Manifest, ObjectKey};
use crate::store::Record;

/// How often a VM held by a relocation is looked at again.
const RELOCATION_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Reconcile one VM record.
pub async fn reconcile(ctx: &Ctx, record: &Record) -> Result<Outcome, ReconcileError> {
    let vm: Manifest<VirtualMachineSpec> = serde_json::from_value(record.object.clone())
        .map_err(|e| ReconcileError::permanent("Unreadable", e.to_string()))?;
    let previous = status::previous(record);
    let decision = decide(ctx, &record.key, &vm.spec);
    let desired = match desired(ctx, record, &vm.spec, &previous, &decision) {
        Ok(d) => d,
        Err(e) => return status::unresolved(ctx, record, previous, &e),
    };
    // A relocation moving this VM drives its QEMU and disks until it
    // ends (on either node); nothing here may start, resume or stop it.
    if let Some(holder) = ctx.drivers.hypervisor.relocation_lock(&desired.config.id) {
        tracing::debug!(vm = %record.key, %holder, "held by a relocation: left alone");
        return Ok(Outcome::RequeueAfter(RELOCATION_POLL));
    }
    let mut status = previous.clone();
    if !record.deleted && desired.site == Site::Here {
        if let Some(outcome) = revert::revert(ctx, record, &vm, &desired, &mut status).await? {
            return Ok(outcome);
        }
    }
    let observed = observe(ctx, &desired, &status, decision.running_elsewhere).await?;
    let plan = plan(&desired, &observed);
    if let Err(f) = execute::run(ctx, &desired.config.id, &plan.actions).await {
        let done = &plan.actions[..f.index];
        return Err(status::failed(
            ctx,
            record,
            status,
            &observed.state,
            done,
            f,
        ));
    }
    status::report(ctx, record, status, &desired, &observed.state, &plan).await
}

/// What reconciling the VM would do now: the same decision, resolve,
/// observe and plan as [`reconcile`], with nothing executed and no status
/// written (`deorch apply --dry-run`).
pub async fn preview(ctx: &Ctx, record: &Record) -> Preview {
    let vm: Manifest<VirtualMachineSpec> = match super::decode(record) {
        Ok(vm) => vm,
        Err(e) => return Preview::failed(&e),
    };
    let previous = status::previous(record);
    let decision = decide(ctx, &record.key, &vm.spec);
    let desired = match desired(ctx, record, &vm.spec, &previous, &decision) {
        Ok(d) => d,
        Err(e) => return Preview::failed(&e),
    };
    let observed = match observe(ctx, &desired, &previous, decision.running_elsewhere).await {
        Ok(o) => o,
        Err(e) => return Preview::failed(&e),
    };
    let plan = plan(&desired, &observed);
    let mut actions: Vec<String> = plan.actions.iter().map(ToString::to_string).collect();
    if !record.deleted && desired.site == Site::Here {
        if let Some(replica) = revert::pending(record, &vm, &previous) {
            actions.insert(
                0,
                format!("stop the VM and revert its disks to replica {replica}"),
            );
        }
    }
    let restart = (!plan.pending_restart.is_empty()).then(|| {
        format!(
            "PendingRestart: {} differ(s) from the running VM and take(s) effect at its next restart",
            plan.pending_restart.join(", ")
        )
    });
    let blocked = plan
        .blocked
        .map(|(reason, message)| format!("{}: {message}", reason.as_str()));
    Preview {
        actions,
        note: match (blocked, restart) {
            (Some(b), Some(r)) => Some(format!("{b}; {r}")),
            (b, r) => b.or(r),
        },
        error: None,
    }
}

/// The desired VM: resolved for where the election put it, or for its
/// deletion.
fn desired(
    ctx: &Ctx,
    record: &Record,
    spec: &VirtualMachineSpec,
    previous: &VirtualMachineStatus,
    decision: &Decision,
) -> Result<Desired, ReconcileError> {
    let key = &record.key;
    if record.deleted {
        let purge = super::retention::purges(record);
        return Ok(for_deletion(ctx, key, spec, previous, purge));
    }
    match resolve(ctx, key, spec, decision.site.clone()) {
        Ok(d) => Ok(d),
        // What runs elsewhere needs nothing resolved here: say where.
        Err(_)
            if matches!(
                decision.site,
                Site::Elsewhere { .. } | Site::PinnedElsewhere { .. }
            ) =>
        {
            Ok(resolve_elsewhere(ctx, key, spec, decision.site.clone()))
        }
        Err(e) => Err(e),
    }
}

/// A VM placed elsewhere whose references do not resolve here (e.g. its
/// network is not on this node): enough to stop a copy here and say where
/// it runs.
fn resolve_elsewhere(ctx: &Ctx, key: &ObjectKey, spec: &VirtualMachineSpec, site: Site) -> Desired {
    let mut d = for_deletion(ctx, key, spec, &VirtualMachineStatus::default(), false);
    d.deleted = false;
    d.site = site;
    d.power = spec.power_state;
    d
}

/// What the node sees: the hypervisor's state, which volumes exist, and
/// the other nodes that report running the VM.
async fn observe(
    ctx: &Ctx,
    desired: &Desired,
    previous: &VirtualMachineStatus,
    running_elsewhere: Vec<String>,
) -> Result<Observed, ReconcileError> {
    let storage = &ctx.drivers.storage;
    let state = ctx.drivers.hypervisor.state(&desired.config.id).await?;
    let mut missing_volumes = Vec::new();
    for d in &desired.disks {
        if !storage.exists(&d.volume).await? {
            missing_volumes.push(d.volume.clone());
        }
    }
    // A missing volume kept from an earlier deletion of this VM is taken
    // back, not made anew.
    let mut retained = BTreeMap::new();
    if !desired.deleted && !missing_volumes.is_empty() {
        let all = super::retention::retained_cached(ctx).await?;
        for v in &missing_volumes {
            if let Some((_, name)) = all.get(v).and_then(|copies| copies.first()) {
                retained.insert(v.clone(), name.clone());
            }
        }
    }
    // A VM to start here whose volumes are missing but whose FASTR copies
    // this node holds (it was a receiver of the node that ran it) starts
    // from the copies' newest complete point.
    let lacking: Vec<String> = missing_volumes
        .iter()
        .filter(|v| !retained.contains_key(*v))
        .cloned()
        .collect();
    if !desired.deleted
        && matches!(desired.site, Site::Here)
        && !lacking.is_empty()
        && storage.fastr_kind().is_some()
    {
        let copies: Vec<String> = lacking.iter().map(|v| names::fastr_copy(v)).collect();
        if let Some(point) =
            crate::relocate::agent::fastr::settle_copies(storage.as_ref(), &copies).await
        {
            for (v, c) in lacking.iter().zip(&copies) {
                retained.insert(v.clone(), format!("{c}@{point}"));
            }
        }
    }
    let mut missing_sources = Vec::new();
    for d in &desired.disks {
        if !missing_volumes.contains(&d.volume) || retained.contains_key(&d.volume) {
            continue;
        }
        if let VolumeSource::Clone {
            source,
            from_vm,
            suit,
            ..
        } = &d.source
        {
            // Copied from a peer when not here (see execute).
            let fetchable = match suit.as_deref() {
                Some(SuitCopy::Image(i)) => !storage.has_image(&i.path),
                Some(SuitCopy::Volume { holders, .. }) => !holders.is_empty(),
                None => false,
            } || from_vm.as_ref().is_some_and(|v| v.holder.is_some());
            let present = match names::parse_at_point(source) {
                Some((volume, point)) => storage
                    .points(volume)
                    .await
                    .is_ok_and(|p| p.iter().any(|p| p == point)),
                None => storage.exists(source).await?,
            };
            if !desired.deleted && !fetchable && !present {
                missing_sources.push(source.clone());
            }
        }
    }
    // Volumes of a VM that was fully provisioned before.
    let provisioned = previous
        .conditions
        .iter()
        .any(|c| c.type_ == "Provisioned" && c.status == "True");
    let lost_volumes = missing_volumes
        .iter()
        .filter(|v| provisioned && previous.disks.values().any(|p| p == *v))
        .filter(|v| !retained.contains_key(*v))
        .cloned()
        .collect();
    Ok(Observed {
        state,
        missing_volumes,
        retained,
        missing_sources,
        lost_volumes,
        running_elsewhere,
        reported_here: previous.node.as_deref() == Some(ctx.config.node_name.as_str()),
    })
}

/// The disks of VM `ns/name` if it is running here, for snapshots that
/// storage takes through the hypervisor (see `Storage::clone_volumes_live`).
pub async fn live_disks(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    spec: Option<&VirtualMachineSpec>,
) -> crate::driver::LiveDisks {
    let Some(spec) = spec else {
        return crate::driver::LiveDisks::default();
    };
    let vm = SourceVm {
        id: format!("{ns}/{name}"),
        disks: vm_disk_names(ctx, ns, spec)
            .into_iter()
            .map(|d| (names::vm_volume(ns, name, &d), d))
            .collect(),
        holder: None,
    };
    execute::live_disks(ctx, &vm).await
}
