//! Dataset: exists with its properties; its data is destroyed only when
//! the object is deleted with `deletionPolicy: Destroy`.
//!
//! The storage's `ensure_dataset` is idempotent and reports the dataset's
//! state, so there is nothing to observe before acting: [`plan`] depends on
//! the desired state alone, and the status is made of what the one action
//! reports.

use super::kind::{run, Reconciler};
use super::status::{not_ready, ready};
use super::{decode, previous, Ctx, Outcome, Plan, ReconcileError};
use crate::driver::{BoxFuture, DatasetConfig, DatasetState};
use crate::model::storage_kinds::{DatasetStatus, DeletionPolicy};
use crate::model::{DatasetSpec, Manifest, Quantity};
use crate::store::Record;

/// The dataset as this node should have it.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The object was deleted.
    pub deleted: bool,
    /// Its data goes with the object.
    pub destroy_on_delete: bool,
    /// The driver's view of it.
    pub config: DatasetConfig,
}

/// One step, with everything it needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create it or set its properties.
    Ensure(DatasetConfig),
    /// Destroy it and its data.
    Destroy(DatasetConfig),
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Ensure(c) => {
                write!(f, "ensure dataset {}", c.path)?;
                let props: Vec<String> = c
                    .properties
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                if !props.is_empty() {
                    write!(f, " with {}", props.join(", "))?;
                }
                Ok(())
            }
            Action::Destroy(c) => write!(f, "destroy dataset {} and its data", c.path),
        }
    }
}

/// The Dataset reconciler.
pub struct Datasets;

impl Reconciler for Datasets {
    type Desired = Desired;
    type Observed = ();
    type Action = Action;
    type Executed = Option<DatasetState>;
    fn resolve(_: &Ctx, record: &Record) -> Result<Desired, ReconcileError> {
        resolve(record)
    }
    fn deleted(d: &Desired) -> bool {
        d.deleted
    }
    fn observe<'a>(_: &'a Ctx, _: &'a Desired) -> BoxFuture<'a, Result<(), ReconcileError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn plan(d: &Desired, _: &()) -> Plan<Action> {
        Plan::Act(plan(d))
    }
    fn execute<'a>(
        ctx: &'a Ctx,
        actions: &'a [Action],
    ) -> BoxFuture<'a, Result<Option<DatasetState>, ReconcileError>> {
        Box::pin(execute(ctx, actions))
    }
    fn status(
        ctx: &Ctx,
        record: &Record,
        _: &Desired,
        _: &Plan<Action>,
        result: Result<Option<DatasetState>, ReconcileError>,
    ) -> Result<Outcome, ReconcileError> {
        status(ctx, record, result)
    }
}

/// Reconcile one Dataset.
pub async fn reconcile(ctx: &Ctx, record: &Record) -> Result<Outcome, ReconcileError> {
    run::<Datasets>(ctx, record).await
}

/// The dataset as desired.
pub fn resolve(record: &Record) -> Result<Desired, ReconcileError> {
    let ds: Manifest<DatasetSpec> = decode(record)?;
    Ok(Desired {
        deleted: record.deleted,
        destroy_on_delete: ds.spec.deletion_policy == DeletionPolicy::Destroy,
        config: dataset_config(&ds.spec),
    })
}

/// The driver's view of a declared dataset.
fn dataset_config(spec: &DatasetSpec) -> DatasetConfig {
    let mut properties = spec.user_properties.clone();
    if let Some(c) = &spec.compression {
        properties.insert("compression".into(), c.clone());
    }
    if let Some(q) = spec.quota {
        properties.insert("quota".into(), q.0.to_string());
    }
    if let Some(r) = spec.recordsize {
        properties.insert("recordsize".into(), r.0.to_string());
    }
    DatasetConfig {
        pool: spec.pool.clone(),
        path: spec.path.clone(),
        properties,
    }
}

/// The steps to `d`.
pub fn plan(d: &Desired) -> Vec<Action> {
    match (d.deleted, d.destroy_on_delete) {
        (false, _) => vec![Action::Ensure(d.config.clone())],
        (true, true) => vec![Action::Destroy(d.config.clone())],
        (true, false) => Vec::new(),
    }
}

/// Carry out `actions`; the dataset's state when it was ensured.
pub async fn execute(
    ctx: &Ctx,
    actions: &[Action],
) -> Result<Option<DatasetState>, ReconcileError> {
    let mut state = None;
    for a in actions {
        match a {
            Action::Ensure(c) => state = Some(ctx.drivers.storage.ensure_dataset(c).await?),
            Action::Destroy(c) => ctx.drivers.storage.destroy_dataset(c).await?,
        }
    }
    Ok(state)
}

/// Write the outcome into the status.
fn status(
    ctx: &Ctx,
    record: &Record,
    result: Result<Option<DatasetState>, ReconcileError>,
) -> Result<Outcome, ReconcileError> {
    let mut st: DatasetStatus = previous(record);
    st.observed_generation = Some(record.generation);
    let storage = ctx.drivers.storage.name();
    match result {
        Ok(state) => {
            let state = state.unwrap_or_default();
            st.used = Some(Quantity(state.used));
            st.available = Some(Quantity(state.available));
            let (reason, msg) = if state.unsupported.is_empty() {
                ("Ready", format!("{storage} storage"))
            } else {
                let ignored = state.unsupported.join(", ");
                (
                    "PropertiesIgnored",
                    format!("{storage} storage cannot apply: {ignored}"),
                )
            };
            ready(&mut st.conditions, reason, &msg, record.generation);
            ctx.write_status(&record.key, &st)?;
            Ok(Outcome::Done)
        }
        Err(e) => {
            not_ready(&mut st.conditions, &e, record.generation);
            ctx.write_status(&record.key, &st)?;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_table() {
        let config = DatasetConfig {
            pool: Some("tank".into()),
            path: "data/logs".into(),
            properties: [("compression".to_string(), "lz4".to_string())].into(),
        };
        let d = |deleted, destroy_on_delete| Desired {
            deleted,
            destroy_on_delete,
            config: config.clone(),
        };
        let cases = [
            (
                "kept",
                d(false, false),
                vec![Action::Ensure(config.clone())],
            ),
            (
                "kept, Destroy policy",
                d(false, true),
                vec![Action::Ensure(config.clone())],
            ),
            ("deleted, Retain policy: data kept", d(true, false), vec![]),
            (
                "deleted, Destroy policy",
                d(true, true),
                vec![Action::Destroy(config.clone())],
            ),
        ];
        for (name, desired, want) in cases {
            assert_eq!(plan(&desired), want, "{name}");
        }
    }

    #[test]
    fn the_spec_becomes_driver_properties() {
        let spec: DatasetSpec = serde_json::from_value(serde_json::json!({
            "pool": "tank", "path": "data", "compression": "zstd",
            "quota": "1Gi", "recordsize": "128Ki",
            "userProperties": {"deorch:owner": "ops"}
        }))
        .unwrap();
        let c = dataset_config(&spec);
        assert_eq!(c.properties["compression"], "zstd");
        assert_eq!(c.properties["quota"], (1u64 << 30).to_string());
        assert_eq!(c.properties["recordsize"], (128u64 << 10).to_string());
        assert_eq!(c.properties["deorch:owner"], "ops");
    }
}
