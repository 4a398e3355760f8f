//! Status: what the VM's status says after a reconcile, from the plan, the
//! outcome of its actions and what the hypervisor reports afterwards.
//! Every phase change goes through [`walk`], which checks each step with
//! [`VmPhase::transition`].

use std::collections::BTreeMap;

use super::super::status::{rfc3339, set_condition};
use super::super::{Ctx, Outcome, ReconcileError};
use super::execute::Failed;
use super::plan::{holds, Action, Next, Plan};
use super::resolve::Desired;
use crate::driver::VmState;
use crate::model::phase::InvalidTransition;
use crate::model::vm::{NicStatus, VmPhase, VmReason};
use crate::model::VirtualMachineStatus;
use crate::store::Record;

/// The record's last status (default when none or unreadable).
pub fn previous(record: &Record) -> VirtualMachineStatus {
    record
        .status
        .clone()
        .and_then(|s| serde_json::from_value(s).ok())
        .unwrap_or_default()
}

/// The phase a hypervisor state is in.
fn phase_of(state: &VmState) -> VmPhase {
    match state {
        VmState::Absent => VmPhase::Pending,
        VmState::Running { .. } => VmPhase::Running,
        VmState::Paused { .. } => VmPhase::Paused,
        VmState::Stopped(_) => VmPhase::Stopped,
    }
}

/// Check that `to` is reachable from what was observed through `actions`
/// (the ones that ran), one [`VmPhase::transition`] per step.
pub fn walk(from: &VmState, actions: &[Action], to: VmPhase) -> Result<(), InvalidTransition> {
    let mut at = phase_of(from);
    for a in actions {
        let next = match a {
            Action::Start { .. } | Action::Resume => VmPhase::Running,
            Action::Pause => VmPhase::Paused,
            Action::Stop { .. } => VmPhase::Stopped,
            _ => continue,
        };
        at.transition(next)?;
        at = next;
    }
    at.transition(to)
}

/// Status of a VM whose references do not resolve: Pending, with why.
pub fn unresolved(
    ctx: &Ctx,
    record: &Record,
    mut status: VirtualMachineStatus,
    e: &ReconcileError,
) -> Result<Outcome, ReconcileError> {
    let g = record.generation;
    status.node = Some(ctx.config.node_name.clone());
    status.observed_generation = Some(g);
    status.phase = Some(VmPhase::Pending);
    set_condition(
        &mut status.conditions,
        "Provisioned",
        false,
        &e.reason,
        &e.message,
        g,
    );
    set_condition(
        &mut status.conditions,
        "Ready",
        false,
        &e.reason,
        &e.message,
        g,
    );
    ctx.write_status(&record.key, &status)?;
    Ok(Outcome::RequeueAfter(ctx.config.blocked_retry))
}

/// Status after an action failed (those before it ran); the error goes on
/// to the engine, which retries with backoff.
pub fn failed(
    ctx: &Ctx,
    record: &Record,
    mut status: VirtualMachineStatus,
    observed: &VmState,
    done: &[Action],
    f: Failed,
) -> ReconcileError {
    let g = record.generation;
    let err = f.error;
    let provisioning = f.action.provisions();
    let phase = if provisioning {
        VmPhase::Provisioning
    } else {
        VmPhase::Pending
    };
    if let Err(e) = walk(observed, done, phase) {
        return ReconcileError::permanent("InvalidTransition", e.to_string());
    }
    status.node = Some(ctx.config.node_name.clone());
    status.observed_generation = Some(g);
    if provisioning {
        let c = &mut status.conditions;
        set_condition(c, "Provisioned", false, &err.reason, &err.message, g);
    }
    let c = &mut status.conditions;
    set_condition(c, "Ready", false, &err.reason, &err.message, g);
    status.phase = Some(phase);
    match ctx.write_status(&record.key, &status) {
        Ok(()) => err,
        Err(e) => e,
    }
}

/// Status after the plan ran: phase, node, what runs here, conditions.
pub async fn report(
    ctx: &Ctx,
    record: &Record,
    previous: VirtualMachineStatus,
    desired: &Desired,
    observed: &VmState,
    plan: &Plan,
) -> Result<Outcome, ReconcileError> {
    walk(observed, &plan.actions, plan.phase)
        .map_err(|e| ReconcileError::permanent("InvalidTransition", e.to_string()))?;
    let next = match plan.next {
        Next::Poll => Outcome::RequeueAfter(ctx.config.vm_poll),
        Next::Retry => Outcome::RequeueAfter(ctx.config.blocked_retry),
        Next::Done => Outcome::Done,
    };
    if !plan.report {
        return Ok(next);
    }
    let g = record.generation;
    let mut status = previous.clone();
    status.observed_generation = Some(g);
    status.phase = Some(plan.phase);
    status.node = plan.node.clone();
    if plan.is_restart {
        status.restarts = Some(previous.restarts.unwrap_or(0) + 1);
    }
    let hv = &ctx.drivers.hypervisor;
    let now = hv.state(&desired.config.id).await?;
    (status.pid, status.started_at) = match &now {
        VmState::Running {
            pid, started_ms, ..
        }
        | VmState::Paused {
            pid, started_ms, ..
        } => (Some(*pid), Some(rfc3339(*started_ms))),
        _ => (None, None),
    };
    if plan.node.as_deref() == Some(desired.me.as_str()) {
        here(ctx, &mut status, desired, plan, g);
        status.fastr = ctx
            .placement
            .as_ref()
            .and_then(|p| p.fastr(&record.key))
            .unwrap_or_default();
    } else if !holds(&now) {
        status.fastr.clear();
        status.pending_restart.clear();
        // The console is where the VM runs (after a relocation, the
        // receiver's): none here.
        status.console = None;
    }
    ready(&mut status, plan, g);
    ctx.write_status(&record.key, &status)?;
    Ok(next)
}

/// What a VM this node runs (or is to run) has here: disks, NICs,
/// console, the Provisioned condition.
fn here(ctx: &Ctx, status: &mut VirtualMachineStatus, d: &Desired, plan: &Plan, g: i64) {
    let hv = &ctx.drivers.hypervisor;
    status.pending_restart = plan.pending_restart.clone();
    status.disks = d.config.disks.iter().cloned().collect::<BTreeMap<_, _>>();
    status.nics = d
        .config
        .nics
        .iter()
        .map(|n| {
            let nic = NicStatus {
                mac: n.mac.clone(),
                ipv4: None,
                tap: Some(n.tap.clone()),
            };
            (n.name.clone(), nic)
        })
        .collect();
    status.console = hv.console(&d.config.id);
    status.accel = hv.accel();
    let missing = plan
        .blocked
        .as_ref()
        .filter(|(r, _)| *r == VmReason::SourceMissing);
    let (ok, reason, message) = match missing {
        Some((r, m)) => (false, r.as_str(), m.clone()),
        None => (
            true,
            VmReason::VolumesReady.as_str(),
            format!("{} volume(s), {} tap(s)", d.disks.len(), d.taps.len()),
        ),
    };
    set_condition(
        &mut status.conditions,
        "Provisioned",
        ok,
        reason,
        &message,
        g,
    );
}

/// The Ready condition: why not, a restart pending, or the phase reached.
fn ready(status: &mut VirtualMachineStatus, plan: &Plan, g: i64) {
    let c = &mut status.conditions;
    match &plan.blocked {
        Some((reason, message)) => set_condition(c, "Ready", false, reason.as_str(), message, g),
        None if !plan.pending_restart.is_empty() => {
            let message = format!(
                "changes to {} apply at the next restart",
                plan.pending_restart.join(", ")
            );
            let reason = VmReason::RestartPending.as_str();
            set_condition(c, "Ready", true, reason, &message, g)
        }
        None => {
            let phase = plan.phase.as_str();
            let message = format!("VM is {}", phase.to_ascii_lowercase());
            set_condition(c, "Ready", true, phase, &message, g)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_keep_their_wire_form() {
        use VmPhase::*;
        for p in [
            Pending,
            Provisioning,
            Running,
            Paused,
            Stopped,
            Failed,
            Elsewhere,
            Unschedulable,
        ] {
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
            let back: VmPhase = serde_json::from_value(p.as_str().into()).unwrap();
            assert_eq!(back, p);
        }
        // A status written before phases were an enum still reads.
        let old: VirtualMachineStatus =
            serde_json::from_value(serde_json::json!({"phase": "Elsewhere", "node": "sat-2"}))
                .unwrap();
        assert_eq!(old.phase, Some(Elsewhere));
    }

    #[test]
    fn paused_is_entered_only_from_running() {
        use VmPhase::*;
        for from in [
            Pending,
            Provisioning,
            Stopped,
            Failed,
            Elsewhere,
            Unschedulable,
        ] {
            assert_eq!(
                from.transition(Paused),
                Err(InvalidTransition {
                    kind: "VirtualMachine",
                    from: format!("{from:?}"),
                    to: "Paused".into()
                })
            );
            assert!(from.transition(Running).is_ok(), "{from:?} → Running");
        }
        assert!(Running.transition(Paused).is_ok());
        assert!(Paused.transition(Paused).is_ok());
        assert!(Paused.transition(Provisioning).is_err());
    }
}
