//! Status conditions, Kubernetes style.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use std::time::Duration;

use super::{Outcome, Plan, ReconcileError};
use crate::model::phase::{advance, ReadyPhase};
use crate::model::Condition;

/// How a reconcile of a kind made once and then kept (Spacesuit, Replica)
/// ends: `Failed` after a permanent error, `Pending` after a transient one
/// or while the plan waits (looked at again after `retry`), else `Ready`.
/// Sets the `Ready` condition, except on success, whose reason and message
/// the caller gives. The phase moves from `current` only through
/// [`advance`].
pub fn made_once<A>(
    conditions: &mut Vec<Condition>,
    generation: i64,
    current: Option<ReadyPhase>,
    plan: &Plan<A>,
    result: Result<(), ReconcileError>,
    retry: Duration,
) -> Result<(ReadyPhase, Result<Outcome, ReconcileError>), ReconcileError> {
    let (phase, outcome) = match (result, plan) {
        (Err(e), _) => {
            not_ready(conditions, &e, generation);
            let phase = if e.is_transient() {
                ReadyPhase::Pending
            } else {
                ReadyPhase::Failed
            };
            (phase, Err(e))
        }
        (Ok(()), Plan::Wait { reason, message }) => {
            set_condition(conditions, "Ready", false, reason, message, generation);
            (ReadyPhase::Pending, Ok(Outcome::RequeueAfter(retry)))
        }
        (Ok(()), _) => (ReadyPhase::Ready, Ok(Outcome::Done)),
    };
    Ok((advance(current, phase)?, outcome))
}

/// `Ready` true with `reason` and `message`.
pub fn ready(conditions: &mut Vec<Condition>, reason: &str, message: &str, generation: i64) {
    set_condition(conditions, "Ready", true, reason, message, generation);
}

/// `Ready` false with the failure's reason and message.
pub fn not_ready(conditions: &mut Vec<Condition>, e: &ReconcileError, generation: i64) {
    set_condition(
        conditions, "Ready", false, &e.reason, &e.message, generation,
    );
}

/// Every kind's status says which fields of its object have no effect
/// yet ([`crate::manifest::inert`], what `deorch validate` warns about):
/// the `NoEffectYet` condition, set here for every kind (from
/// [`super::Ctx::write_status`]) and removed once the object has none.
/// An unchanged condition keeps its transition time, so an unchanged
/// status is not rewritten.
pub fn mark_no_effect_yet(status: &mut serde_json::Value, record: &crate::store::Record) {
    use crate::manifest::inert::{no_effect_condition, NO_EFFECT_YET};
    let Some(map) = status.as_object_mut() else {
        return;
    };
    let Ok(object) = crate::model::AnyObject::from_value(record.object.clone()) else {
        return;
    };
    let mut conditions: Vec<Condition> = map
        .get("conditions")
        .cloned()
        .and_then(|c| serde_json::from_value(c).ok())
        .unwrap_or_default();
    match no_effect_condition(&object) {
        Some((reason, message)) => {
            if !conditions.iter().any(|c| c.type_ == NO_EFFECT_YET) {
                // The reconciler built its status afresh: carry over the
                // stored condition (and its transition time).
                let stored = record
                    .status
                    .as_ref()
                    .and_then(|s| s.get("conditions").cloned())
                    .and_then(|c| serde_json::from_value::<Vec<Condition>>(c).ok())
                    .and_then(|cs| cs.into_iter().find(|c| c.type_ == NO_EFFECT_YET));
                conditions.extend(stored);
            }
            set_condition(
                &mut conditions,
                NO_EFFECT_YET,
                true,
                reason,
                &message,
                record.generation,
            );
        }
        None if conditions.iter().any(|c| c.type_ == NO_EFFECT_YET) => {
            conditions.retain(|c| c.type_ != NO_EFFECT_YET)
        }
        None => return,
    }
    map.insert(
        "conditions".into(),
        serde_json::to_value(conditions).expect("conditions serialize"),
    );
}

/// Set condition `type_` (keeping its transition time when its status did
/// not change).
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: i64,
) {
    let status = if ok { "True" } else { "False" };
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status {
            c.last_transition_time = now();
        }
        c.status = status.into();
        c.reason = reason.into();
        c.message = message.into();
        c.observed_generation = Some(generation);
        return;
    }
    conditions.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: Some(generation),
        last_transition_time: now(),
    });
}

/// Now as a Kubernetes `Time`.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// An RFC 3339 time from milliseconds since the epoch.
pub fn rfc3339(ms: u64) -> String {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}
