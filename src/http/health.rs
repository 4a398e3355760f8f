//! `GET /healthz` and `GET /readyz`: for load balancers and monitors.
//! Neither needs a session, and neither says more than a short reason.
//!
//! - `/healthz` (liveness): `200 ok` whenever the HTTP API answers at all.
//!   A monitor that gets no answer restarts the daemon; VMs are not
//!   touched by that (they outlive the daemon by design).
//! - `/readyz` (readiness): `200 ready` only when every condition below
//!   holds, else `503 not ready: REASON`, the first condition that fails:
//!   1. the node has started: the store is open (the HTTP API is built on
//!      it), this node's Satellite object registered, the drivers built,
//!      and every task (sources, local API, engine, gossip) spawned; the
//!      node says so once, through [`HttpApi::set_ready_checks`];
//!   2. it is not stopping (a SIGTERM was received: a load balancer takes
//!      it out of rotation while requests in flight drain);
//!   3. the manifest directory can be read, the condition under which the
//!      directory source applies anything (unless the node runs with
//!      `--allow-empty-manifests`); a directory that does not answer
//!      within [`FS_TIMEOUT`] (a hung network mount) is not ready either,
//!      and while that look still hangs no other is started (one blocked
//!      thread at most, however often a monitor asks);
//!   4. with gossip: the gossip task runs (this node is on its own radar)
//!      and, when the node was given seeds, it has reached at least one
//!      other member (a node cut off from its cluster is not ready).
//!
//! Not covered: whether the git source's last fetch succeeded (its errors
//! are events of the node, `deorch events`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

use super::HttpApi;

/// How long `/readyz` waits for the manifest directory to be listed.
pub const FS_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/readyz` checks beyond the HTTP API itself, given by the node
/// once all its tasks run.
#[derive(Debug, Clone)]
pub struct ReadyChecks {
    manifests: Option<PathBuf>,
    gossip: Option<bool>,
    shutdown: watch::Receiver<bool>,
    /// One look at the manifest directory at a time (requests at once
    /// wait for each other: a look takes microseconds).
    one_look: Arc<tokio::sync::Mutex<()>>,
    /// A look that timed out is still blocked.
    looking: Arc<AtomicBool>,
}

impl ReadyChecks {
    /// `manifests`: the directory that must be readable (`None` with
    /// `--allow-empty-manifests`); `gossip`: `Some(has_seeds)` when the
    /// node gossips; `shutdown` turns true when the node stops.
    pub fn new(
        manifests: Option<PathBuf>,
        gossip: Option<bool>,
        shutdown: watch::Receiver<bool>,
    ) -> ReadyChecks {
        ReadyChecks {
            manifests,
            gossip,
            shutdown,
            one_look: Arc::new(tokio::sync::Mutex::new(())),
            looking: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl HttpApi {
    /// Say the node has started, and what `/readyz` checks from now on
    /// (once; later calls change nothing).
    pub fn set_ready_checks(&self, checks: ReadyChecks) {
        let _ = self.ready.set(checks);
    }

    /// Why this node is not ready, or `None` when it is.
    pub async fn not_ready(&self) -> Option<String> {
        let Some(checks) = self.ready.get() else {
            return Some("starting".into());
        };
        if *checks.shutdown.borrow() {
            return Some("stopping".into());
        }
        if let Some(dir) = checks.manifests.clone() {
            let Ok(_turn) = tokio::time::timeout(FS_TIMEOUT, checks.one_look.lock()).await else {
                return Some("the manifest directory has not answered yet".into());
            };
            if checks.looking.swap(true, Ordering::AcqRel) {
                return Some("the manifest directory has not answered yet".into());
            }
            let looking = checks.looking.clone();
            let listed = tokio::time::timeout(
                FS_TIMEOUT,
                tokio::task::spawn_blocking(move || {
                    let r = std::fs::read_dir(dir).map(|_| ());
                    looking.store(false, Ordering::Release);
                    r
                }),
            )
            .await;
            match listed {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    return Some(format!("the manifest directory cannot be read ({e})"))
                }
                Ok(Err(_)) => return Some("the manifest directory check failed".into()),
                Err(_) => {
                    return Some(format!(
                        "the manifest directory did not answer within {FS_TIMEOUT:?}"
                    ))
                }
            }
        }
        if let Some(has_seeds) = checks.gossip {
            let members = self.members().len();
            if members == 0 {
                return Some("gossip is not running yet".into());
            }
            if has_seeds && members < 2 {
                return Some("gossip has reached no other member yet".into());
            }
        }
        None
    }
}

/// `GET /healthz`.
pub(super) async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n".into())
}

/// `GET /readyz`.
pub(super) async fn readyz(State(api): State<Arc<HttpApi>>) -> Response {
    match api.not_ready().await {
        None => text(StatusCode::OK, "ready\n".into()),
        Some(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}
