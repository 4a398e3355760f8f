//! The web page every node serves at `/` (issue 17): the search bar that
//! is the command line. Assets are embedded in the binary.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// `GET /`: the page.
pub async fn index() -> Response {
    (StatusCode::NOT_FOUND, "the page is not built yet").into_response()
}

/// `GET /assets/{name}`: an embedded asset.
pub async fn asset(Path(name): Path<String>) -> Response {
    let _ = name;
    StatusCode::NOT_FOUND.into_response()
}
