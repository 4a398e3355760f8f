//! The browser console every node serves (issue 17, item 4): noVNC,
//! embedded in the binary, connecting straight to the VM's websocket
//! (TLS, the node's certificate) with a console ticket's password.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// `GET /console.html`.
pub async fn page() -> Response {
    (StatusCode::NOT_FOUND, "the console page is not built yet").into_response()
}

/// `GET /console/{name}`: its embedded assets.
pub async fn asset(Path(name): Path<String>) -> Response {
    let _ = name;
    StatusCode::NOT_FOUND.into_response()
}
