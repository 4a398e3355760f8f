//! The reconcile engine (temporary stub in main; the engine branch replaces it).
#![allow(missing_docs)]
use crate::store::Store;
use std::sync::Arc;
pub struct Drivers;
impl Drivers {
    pub fn fake() -> Drivers {
        Drivers
    }
}
#[derive(Default)]
pub struct EngineConfig {
    pub node_name: String,
    pub node_addresses: Vec<String>,
}
pub struct Engine;
impl Engine {
    pub fn new(_: Arc<Store>, _: Drivers, _: EngineConfig) -> Engine {
        Engine
    }
    pub async fn run(self, _: tokio::sync::watch::Receiver<bool>) {}
}
#[derive(Clone, Debug)]
pub struct ReconcileStarted {
    pub key: crate::model::ObjectKey,
    pub generation: i64,
    pub at: std::time::Instant,
}
impl Engine {
    pub fn started(&self) -> tokio::sync::broadcast::Receiver<ReconcileStarted> {
        tokio::sync::broadcast::channel(1).1
    }
}
