//! `POST /v1/command` and `GET /v1/events` (issue 17): the search bar's
//! command line, parsed by the node.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::HttpApi;

/// `POST /v1/command` `{q, run}`.
pub async fn command(State(api): State<Arc<HttpApi>>) -> Response {
    let _ = api;
    (StatusCode::NOT_IMPLEMENTED, "not yet").into_response()
}

/// `GET /v1/events`: server-sent events, one per store change.
pub async fn events(State(api): State<Arc<HttpApi>>) -> Response {
    let _ = api;
    (StatusCode::NOT_IMPLEMENTED, "not yet").into_response()
}
