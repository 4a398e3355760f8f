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
        let policy = record
            .object
            .get("spec")
            .and_then(|s| s.get("fastr"))
            .and_then(|f| serde_json::from_value::<crate::model::vm::Fastr>(f.clone()).ok());
        match policy {
            Some(f) => {
                let (ok, reason, message) = fastr_condition(&status.fastr, &f);
                set_condition(
                    &mut status.conditions,
                    FASTR_CONDITION,
                    ok,
                    reason,
                    &message,
                    g,
                );
            }
            None => status.conditions.retain(|c| c.type_ != FASTR_CONDITION),
        }
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
    // The drop counters are the fabric agent's (src/fabric): kept while
    // the NIC keeps its port.
    let mut old = std::mem::take(&mut status.nics);
    status.nics = d
        .config
        .nics
        .iter()
        .map(|n| {
            let dropped = old
                .remove(&n.name)
                .filter(|o| o.tap.as_deref() == Some(n.tap.as_str()))
                .map(|o| o.dropped)
                .unwrap_or_default();
            let nic = NicStatus {
                mac: n.mac.clone(),
                ipv4: None,
                tap: Some(n.tap.clone()),
                dropped,
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

/// The condition that says whether a VM's FASTR copies are current.
pub const FASTR_CONDITION: &str = "FastrCopies";

/// The recovery point a FASTR policy promises: three intervals (at least
/// 3 s). A copy older than this raises `RpoExceeded` (the condition
/// below, and `deorch_fastr_rpo_exceeded` on `/metrics`).
pub fn rpo_target(f: &crate::model::vm::Fastr) -> std::time::Duration {
    let interval = f
        .interval
        .map(|d| d.0)
        .unwrap_or(crate::relocate::agent::fastr::DEFAULT_INTERVAL);
    (interval * 3).max(std::time::Duration::from_secs(3))
}

/// Whether the copies `copies` meet policy `f`: as many as it asks for,
/// none failing, each point at most three intervals old (at least 3 s):
/// (ok, reason, message).
pub fn fastr_condition(
    copies: &[crate::model::FastrCopy],
    f: &crate::model::vm::Fastr,
) -> (bool, &'static str, String) {
    let limit_ms = rpo_target(f).as_millis() as u64;
    if let Some(c) = copies.iter().find(|c| c.error.is_some()) {
        return (
            false,
            "CopyFailing",
            format!(
                "the copy on {} was not updated: {}",
                c.node,
                c.error.as_deref().unwrap_or("")
            ),
        );
    }
    let stale: Vec<String> = copies
        .iter()
        .filter(|c| c.age_ms.is_none_or(|a| a > limit_ms))
        .map(|c| match c.age_ms {
            Some(a) => format!("{} ({} ms old)", c.node, a),
            None => format!("{} (no point yet)", c.node),
        })
        .collect();
    if !stale.is_empty() {
        return (
            false,
            "RpoExceeded",
            format!(
                "copies older than {} ms (three intervals): {}",
                limit_ms,
                stale.join(", ")
            ),
        );
    }
    if (copies.len() as u32) < f.copies {
        return (
            false,
            "TooFewCopies",
            format!(
                "{} of {} copies: no more nodes may hold one (placement, cordons, storage)",
                copies.len(),
                f.copies
            ),
        );
    }
    let worst = copies.iter().filter_map(|c| c.age_ms).max().unwrap_or(0);
    (
        true,
        "CopiesCurrent",
        format!("{} copies, the oldest point {worst} ms old", copies.len()),
    )
}

#[cfg(test)]
mod fastr_tests {
    use super::*;
    use crate::model::vm::Fastr;
    use crate::model::FastrCopy;

    fn copy(node: &str, age: Option<u64>, error: Option<&str>) -> FastrCopy {
        FastrCopy {
            node: node.into(),
            point: age.map(|_| "fastr-1".into()),
            age_ms: age,
            bytes_sent: 0,
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn the_copies_condition_says_what_is_wrong_first() {
        let f = Fastr {
            copies: 2,
            interval: Some(crate::model::Duration(std::time::Duration::from_secs(2))),
            placement: None,
            keep: None,
            triggers: None,
        };
        let ok = [copy("a", Some(1000), None), copy("b", Some(5900), None)];
        assert_eq!(fastr_condition(&ok, &f).1, "CopiesCurrent");
        let stale = [copy("a", Some(1000), None), copy("b", Some(6100), None)];
        let (good, reason, msg) = fastr_condition(&stale, &f);
        assert!(
            !good && reason == "RpoExceeded" && msg.contains("b (6100 ms old)"),
            "{msg}"
        );
        let none = [copy("a", Some(1000), None), copy("b", None, None)];
        assert_eq!(fastr_condition(&none, &f).1, "RpoExceeded");
        let failing = [
            copy("a", Some(1000), Some("refused")),
            copy("b", Some(1), None),
        ];
        assert_eq!(fastr_condition(&failing, &f).1, "CopyFailing");
        let few = [copy("a", Some(1000), None)];
        assert_eq!(fastr_condition(&few, &f).1, "TooFewCopies");
        assert_eq!(fastr_condition(&[], &f).1, "TooFewCopies");
    }
}
