//! Kinds whose reconcile only reports: Relocation (carried out by the
//! relocation agents, which write its phases) and AccessPolicy (the
//! sources that admit signed objects enforce it; there is nothing to do on
//! the host). Both write a `Ready` condition and `observedGeneration`.

use serde::{Deserialize, Serialize};

use super::status::set_condition;
use super::{previous, Ctx, Outcome, ReconcileError};
use crate::model::Condition;
use crate::store::Record;

/// Relocation: the relocation agents of the two nodes carry it out and
/// write its phase (`crate::relocate::agent`); until one does, its status
/// says what it waits for. A node without gossip has no agent and says so.
pub fn relocation(ctx: &Ctx, record: &Record) -> Result<Outcome, ReconcileError> {
    if record.deleted {
        return Ok(Outcome::Done);
    }
    let (reason, what) = if ctx.placement.is_some() {
        (
            "Waiting",
            "waiting for the node that runs the VM and the receiver the radar elects",
        )
    } else {
        (
            "NoGossip",
            "this node runs without gossip: no receiver can be elected, nothing moves",
        )
    };
    // Read and written in one step on the stored status, not on
    // `record`'s: the agent may have started the move (and written where
    // it goes) since `record` was read, and that status is the agent's.
    ctx.update_status(&record.key, |stored| {
        let mut st: crate::model::RelocationStatus = previous(stored);
        if st.phase.is_some() && st.observed_generation == Some(stored.generation) {
            return None;
        }
        st.observed_generation = Some(stored.generation);
        st.phase = Some(crate::model::phase::RelocationPhase::Pending);
        st.message = Some(what.into());
        set_condition(
            &mut st.conditions,
            "Ready",
            false,
            reason,
            what,
            stored.generation,
        );
        Some(st)
    })?;
    Ok(Outcome::Done)
}

/// AccessPolicy: what it does, once stored.
pub fn access_policy(ctx: &Ctx, record: &Record) -> Result<Outcome, ReconcileError> {
    let what = "in force for signed sources: objects pushed to the API or read from git are \
                authorised by it when it is signed by the cluster owner or an admin the \
                owner's policies name";
    write(ctx, record, true, "InForce", what)
}

/// The status both kinds share (the first fields of their own statuses).
#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Generic {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    observed_generation: Option<i64>,
    #[serde(default)]
    conditions: Vec<Condition>,
}

fn write(
    ctx: &Ctx,
    record: &Record,
    ok: bool,
    reason: &str,
    message: &str,
) -> Result<Outcome, ReconcileError> {
    if record.deleted {
        return Ok(Outcome::Done);
    }
    let mut st: Generic = previous(record);
    st.observed_generation = Some(record.generation);
    set_condition(
        &mut st.conditions,
        "Ready",
        ok,
        reason,
        message,
        record.generation,
    );
    ctx.write_status(&record.key, &st)?;
    Ok(Outcome::Done)
}
