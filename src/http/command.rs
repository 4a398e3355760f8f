//! `POST /v1/command` and `GET /v1/events` (issue 17): the search bar's
//! command line, parsed and planned by the node ([`crate::command`]).
//!
//! - `POST /v1/command` `{q, run}` with a session: the plan (what would
//!   change, the equivalent CLI command, the manifest), the rows to show
//!   and completions, over the objects the session may list. With
//!   `run: true` a plan that changes something is applied as the session,
//!   the same path as a push (admission authorises it; all or nothing).
//!   A query that does not parse or names what does not exist answers 400
//!   `Parse` with its column, what was expected and completions.
//! - `GET /v1/events`: server-sent events, a `change` per store change
//!   (`{"object": "Kind/namespace/name"}`), so the page re-runs its query.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tracing::{info, warn};

use super::tls::PeerAddr;
use super::{refuse, session_of, HttpApi};
use crate::admission::SessionSubject;
use crate::command;
use crate::model::access::Verb;
use crate::store::Record;

/// `POST /v1/command` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandBody {
    q: String,
    #[serde(default)]
    run: bool,
}

/// What `address` may list.
fn visible(api: &HttpApi, address: &str, level2: bool) -> Vec<Arc<Record>> {
    let records = command::plan::with_members(api.admission.store().list_shared(), &api.members());
    let what: Vec<_> = records
        .iter()
        .map(|r| (r.key.kind, r.key.namespace.as_str(), Some(&r.object)))
        .collect();
    let allowed = api
        .admission
        .authorise_session_each(address, level2, Verb::List, &what);
    records
        .into_iter()
        .zip(allowed)
        .filter(|(_, a)| a.is_ok())
        .map(|(r, _)| r)
        .collect()
}

/// `POST /v1/command` `{q, run}`.
pub async fn command(
    State(api): State<Arc<HttpApi>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let session = match session_of(&api, peer, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let req: CommandBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            warn!(%peer, error = %e, "command refused: malformed body");
            return refuse(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("expected JSON {{\"q\": TEXT, \"run\": BOOL}}: {e}"),
            );
        }
    };
    // `approve NODE`: a join request, which the page signs itself.
    if let Some(who) = super::join::approve_words(&req.q) {
        let who = who.to_string();
        return tokio::task::spawn_blocking(move || super::join::approval(&api, &who, req.run))
            .await
            .unwrap_or_else(|e| {
                refuse(StatusCode::INTERNAL_SERVER_ERROR, "Internal", e.to_string())
            });
    }
    let answer = tokio::task::spawn_blocking(move || {
        let records = visible(&api, &session.address, session.level2);
        let (mut v, manifest) = match command::answer(&req.q, &records) {
            Ok(o) => o,
            Err(e) => return (StatusCode::BAD_REQUEST, Json(e)).into_response(),
        };
        if let (true, Some(yaml)) = (req.run, manifest) {
            let subject = SessionSubject {
                address: session.address.clone(),
                level2: session.level2,
            };
            match api.push(peer, yaml.as_bytes(), Some(subject)) {
                Ok(applied) => {
                    info!(%peer, address = %session.address, verb = %v["plan"]["verb"], "command run");
                    v["applied"] = applied["applied"].clone();
                }
                Err((status, body)) => return (status, Json(body)).into_response(),
            }
        }
        Json(v).into_response()
    })
    .await;
    answer.unwrap_or_else(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, "Internal", e.to_string()))
}

/// `GET /v1/events`: server-sent events, one `change` per store change
/// of an object the session may list (others are not even named), a
/// `lagged` one when this client fell behind (re-read everything); the
/// stream ends when the session does.
pub async fn events(
    State(api): State<Arc<HttpApi>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
) -> Response {
    let session = match session_of(&api, peer, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let rx = api.admission.store().subscribe();
    let stream = futures_util::stream::unfold(
        (rx, api, session),
        |(mut rx, api, session)| async move {
            loop {
                let ttl = session.expires.saturating_sub(super::now_secs());
                let next = tokio::time::timeout(Duration::from_secs(ttl), rx.recv()).await;
                let event = match next {
                    // The session ended: so does its stream.
                    Err(_) => return None,
                    Ok(Ok(c)) => {
                        let record = api.admission.store().get(&c.key);
                        let object = record.as_ref().map(|r| &r.object);
                        let allowed = api.admission.authorise_session_each(
                            &session.address,
                            session.level2,
                            Verb::List,
                            &[(c.key.kind, c.key.namespace.as_str(), object)],
                        );
                        if allowed.iter().any(|a| a.is_err()) {
                            continue;
                        }
                        Event::default().event("change").data(
                        json!({
                            "object": format!("{}/{}/{}", c.key.kind.as_str(), c.key.namespace, c.key.name),
                            "statusOnly": c.status_only,
                        })
                        .to_string(),
                    )
                    }
                    Ok(Err(RecvError::Lagged(n))) => {
                        Event::default().event("lagged").data(n.to_string())
                    }
                    Ok(Err(RecvError::Closed)) => return None,
                };
                return Some((Ok::<_, Infallible>(event), (rx, api, session)));
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
