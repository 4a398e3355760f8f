//! The steps every reconciler runs, written once: [`Reconciler`] is what a
//! kind provides (resolve, observe, plan, execute, status), [`run`] is the
//! engine's reconcile of one object and [`preview`] the same steps without
//! execute and status, for `deorch apply --dry-run`.
//!
//! The VM reconciler drives the same steps itself (its resolve depends on
//! the cluster's election and a revert may come first): `vm::reconcile`
//! and `vm::preview`.

use serde::{Deserialize, Serialize};

use super::{Ctx, Outcome, Plan, ReconcileError};
use crate::driver::BoxFuture;
use crate::store::Record;

/// One kind's reconciler.
pub trait Reconciler {
    /// The complete desired configuration.
    type Desired: Send + Sync;
    /// What the node has, as far as the plan needs it.
    type Observed: Send;
    /// One step; its `Display` is the line a dry run prints.
    type Action: std::fmt::Display + Send + Sync;
    /// What a successful execute reports to the status step.
    type Executed: Send;

    /// The desired configuration of `record` (from its spec and the objects
    /// it references, through [`Ctx::get`]).
    fn resolve(ctx: &Ctx, record: &Record) -> Result<Self::Desired, ReconcileError>;
    /// Whether `d` is the deletion of the object (no status is written).
    fn deleted(d: &Self::Desired) -> bool;
    /// What the node has; read-only.
    fn observe<'a>(
        ctx: &'a Ctx,
        d: &'a Self::Desired,
    ) -> BoxFuture<'a, Result<Self::Observed, ReconcileError>>;
    /// The steps from `o` to `d`: a pure function.
    fn plan(d: &Self::Desired, o: &Self::Observed) -> Plan<Self::Action>;
    /// Carry out `actions` (drivers only).
    fn execute<'a>(
        ctx: &'a Ctx,
        actions: &'a [Self::Action],
    ) -> BoxFuture<'a, Result<Self::Executed, ReconcileError>>;
    /// Write the outcome into the object's status.
    fn status(
        ctx: &Ctx,
        record: &Record,
        d: &Self::Desired,
        plan: &Plan<Self::Action>,
        result: Result<Self::Executed, ReconcileError>,
    ) -> Result<Outcome, ReconcileError>;
}

/// `impl Reconciler for $name` by the module's own `Desired`, `Observed`
/// and `Action` types and its free functions of the same names
/// (`resolve`, `observe` (async), `plan`, `execute` (async, returning
/// nothing), `status`), deletion read from `Desired::deleted`: the shape
/// of the kinds whose steps need nothing more.
macro_rules! reconciler_from_module {
    ($name:ident) => {
        impl $crate::reconcile::kind::Reconciler for $name {
            type Desired = Desired;
            type Observed = Observed;
            type Action = Action;
            type Executed = ();
            fn resolve(
                ctx: &$crate::reconcile::Ctx,
                record: &$crate::store::Record,
            ) -> Result<Desired, $crate::reconcile::ReconcileError> {
                resolve(ctx, record)
            }
            fn deleted(d: &Desired) -> bool {
                d.deleted
            }
            fn observe<'a>(
                ctx: &'a $crate::reconcile::Ctx,
                d: &'a Desired,
            ) -> $crate::driver::BoxFuture<'a, Result<Observed, $crate::reconcile::ReconcileError>>
            {
                Box::pin(observe(ctx, d))
            }
            fn plan(d: &Desired, o: &Observed) -> $crate::reconcile::Plan<Action> {
                plan(d, o)
            }
            fn execute<'a>(
                ctx: &'a $crate::reconcile::Ctx,
                actions: &'a [Action],
            ) -> $crate::driver::BoxFuture<'a, Result<(), $crate::reconcile::ReconcileError>> {
                Box::pin(execute(ctx, actions))
            }
            fn status(
                ctx: &$crate::reconcile::Ctx,
                record: &$crate::store::Record,
                d: &Desired,
                plan: &$crate::reconcile::Plan<Action>,
                result: Result<(), $crate::reconcile::ReconcileError>,
            ) -> Result<$crate::reconcile::Outcome, $crate::reconcile::ReconcileError> {
                status(ctx, record, d, plan, result)
            }
        }
    };
}
pub(crate) use reconciler_from_module;

/// Reconcile one object of `R`'s kind: resolve → observe → plan → execute
/// → status.
pub async fn run<R: Reconciler>(ctx: &Ctx, record: &Record) -> Result<Outcome, ReconcileError> {
    let desired = R::resolve(ctx, record)?;
    let plan = match R::observe(ctx, &desired).await {
        Ok(observed) => R::plan(&desired, &observed),
        Err(e) => Plan::Fail(e),
    };
    let result = match plan.actions() {
        Ok(actions) => R::execute(ctx, actions).await,
        Err(e) => Err(e),
    };
    if R::deleted(&desired) {
        return result.map(|_| Outcome::Done);
    }
    R::status(ctx, record, &desired, &plan, result)
}

/// What reconciling an object would do now; nothing is executed and no
/// status written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    /// The steps, in order (none: already as desired, or waiting).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
    /// Why the object would not be as desired after them (waiting for
    /// another object, elsewhere, blocked): `Reason: message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The error the reconcile would end in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Preview {
    /// The preview of a reconcile that ends in `e` before any step.
    pub fn failed(e: &ReconcileError) -> Preview {
        Preview {
            error: Some(e.to_string()),
            ..Preview::default()
        }
    }

    /// The preview of `plan`.
    pub fn of<A: std::fmt::Display>(plan: &Plan<A>) -> Preview {
        match plan {
            Plan::Act(actions) => Preview {
                actions: actions.iter().map(ToString::to_string).collect(),
                ..Preview::default()
            },
            Plan::Wait { reason, message } => Preview {
                note: Some(format!("{reason}: {message}")),
                ..Preview::default()
            },
            Plan::Fail(e) => Preview::failed(e),
        }
    }
}

/// What reconciling `record` (of `R`'s kind) would do now.
pub async fn preview<R: Reconciler>(ctx: &Ctx, record: &Record) -> Preview {
    let desired = match R::resolve(ctx, record) {
        Ok(d) => d,
        Err(e) => return Preview::failed(&e),
    };
    match R::observe(ctx, &desired).await {
        Ok(observed) => Preview::of(&R::plan(&desired, &observed)),
        Err(e) => Preview::failed(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preview_says_the_steps_the_wait_or_the_failure() {
        let act = Plan::Act(vec!["ensure bridge br0", "remove tap t0"]);
        assert_eq!(
            Preview::of(&act).actions,
            vec!["ensure bridge br0", "remove tap t0"]
        );
        let wait: Plan<&str> = Plan::Wait {
            reason: "SourceNotFound",
            message: "VM default/a does not exist".into(),
        };
        assert_eq!(
            Preview::of(&wait),
            Preview {
                note: Some("SourceNotFound: VM default/a does not exist".into()),
                ..Preview::default()
            }
        );
        let e = ReconcileError::permanent("ChecksumMismatch", "sha256 differs".into());
        let fail: Plan<&str> = Plan::Fail(e);
        assert_eq!(
            Preview::of(&fail).error.as_deref(),
            Some("ChecksumMismatch: sha256 differs")
        );
    }
}
