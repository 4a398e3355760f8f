//! The web page every node serves at `/`: the search bar that is the
//! command line (`web/index.html`, `web/app.js`, `web/style.css`, and
//! `web/vendor/crypto.js`, the npm crypto it signs logins with, built by
//! `web/vendor/build.sh`; the page loads it only to log in).
//!
//! The files are embedded in the binary at build time, so a node serves its
//! page with nothing beside it and offline. Every answer carries a
//! Content-Security-Policy that lets the page load and talk to this node
//! only (no inline code, no other origin, no framing), `nosniff`, and an
//! ETag (the content's SHA-256): browsers revalidate (`no-cache`) and get a
//! 304 until the node runs another build, so a page and its scripts never
//! come from two versions.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// What the page may load and talk to: this node only. `'self'` for
/// scripts, styles, images and `fetch`/`EventSource`; nothing inline,
/// nothing from another origin, no plugins, no framing; and every DOM sink
/// that parses HTML refused (Trusted Types: the page builds elements).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'; require-trusted-types-for 'script'";

/// One embedded file (of this page and of the console page).
pub(super) struct Asset {
    pub(super) name: &'static str,
    pub(super) content_type: &'static str,
    pub(super) bytes: &'static [u8],
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    bytes: include_bytes!("../../web/index.html"),
};

/// What `/assets/{name}` serves.
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/app.js"),
    },
    Asset {
        name: "crypto.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/vendor/crypto.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../web/style.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("../../web/icon.svg"),
    },
];

/// The ETag of each asset ([`ASSETS`] order, then [`INDEX`]): the first
/// 16 bytes of its SHA-256, quoted.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| etags(ASSETS, &INDEX));

/// The ETags of `assets` then `page`: the first 16 bytes of each one's
/// SHA-256, quoted.
pub(super) fn etags(assets: &[Asset], page: &Asset) -> Vec<HeaderValue> {
    assets
        .iter()
        .chain([page])
        .map(|a| {
            let digest = Sha256::digest(a.bytes);
            HeaderValue::from_str(&format!("\"{}\"", hex::encode(&digest[..16])))
                .expect("hex is a valid header value")
        })
        .collect()
}

/// A 404 for an asset nobody embedded.
pub(super) fn not_found(what: &'static str) -> Response {
    (
        StatusCode::NOT_FOUND,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        what,
    )
        .into_response()
}

/// `GET /`: the page.
pub async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &ETAGS[ASSETS.len()], &headers)
}

/// `GET /assets/{name}`: an embedded asset, or 404.
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().position(|a| a.name == name) {
        Some(i) => serve(&ASSETS[i], &ETAGS[i], &headers),
        None => not_found("no such asset\n"),
    }
}

fn serve(asset: &Asset, etag: &HeaderValue, request: &HeaderMap) -> Response {
    serve_with(asset, etag, request, CONTENT_SECURITY_POLICY, "DENY")
}

/// `asset` with its headers (`csp`, and `X-Frame-Options: frame`), or a
/// bodiless 304 when the client's `If-None-Match` names its ETag.
pub(super) fn serve_with(
    asset: &Asset,
    etag: &HeaderValue,
    request: &HeaderMap,
    csp: &'static str,
    frame: &'static str,
) -> Response {
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/").as_bytes() == etag.as_bytes()
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.bytes.into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::ETAG, etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static(frame));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `html` has no inline script, style or event handler (the CSP
    /// refuses them).
    pub(crate) fn assert_no_inline_code(html: &str) {
        for (i, _) in html.match_indices("<script") {
            let tag = &html[i..i + html[i..].find('>').unwrap()];
            assert!(tag.contains(" src="), "inline script: {tag}");
        }
        assert!(!html.contains("<style"), "inline <style>");
        assert!(!html.contains(" style="), "inline style attribute");
        for (i, _) in html.match_indices(" on") {
            let name: String = html[i + 3..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase())
                .collect();
            assert!(
                !html[i + 3 + name.len()..].starts_with('='),
                "inline event handler on{name}="
            );
        }
    }
    use axum::body::to_bytes;

    async fn get(path: &str, if_none_match: Option<&str>) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut headers = HeaderMap::new();
        if let Some(tag) = if_none_match {
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(tag).unwrap());
        }
        let response = match path.strip_prefix("/assets/") {
            Some(name) => asset(Path(name.to_string()), headers).await,
            None => {
                assert_eq!(path, "/");
                index(headers).await
            }
        };
        let (parts, body) = response.into_parts();
        let body = to_bytes(body, 1 << 24).await.unwrap();
        (parts.status, parts.headers, body.to_vec())
    }

    fn text(a: &Asset) -> &'static str {
        std::str::from_utf8(a.bytes).unwrap()
    }

    /// Every `/assets/NAME` (or `./NAME` import, static or dynamic) a
    /// file names.
    fn references(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for prefix in ["/assets/", "from './", "import('./"] {
            for (i, _) in text.match_indices(prefix) {
                let rest = &text[i + prefix.len()..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-'))
                    .unwrap_or(rest.len());
                out.push(rest[..end].to_string());
            }
        }
        out
    }

    #[tokio::test]
    async fn the_page_and_its_assets_are_served_with_their_headers() {
        let (status, h, body) = get("/", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(body, INDEX.bytes);
        for (name, ty) in [
            ("app.js", "text/javascript; charset=utf-8"),
            ("crypto.js", "text/javascript; charset=utf-8"),
            ("style.css", "text/css; charset=utf-8"),
            ("icon.svg", "image/svg+xml"),
        ] {
            let (status, h, body) = get(&format!("/assets/{name}"), None).await;
            assert_eq!(status, StatusCode::OK, "{name}");
            assert_eq!(h[header::CONTENT_TYPE], ty, "{name}");
            assert!(!body.is_empty(), "{name}");
        }
        for path in ["/", "/assets/app.js"] {
            let (_, h, _) = get(path, None).await;
            let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(csp.starts_with("default-src 'none';"), "{csp}");
            for directive in [
                "script-src 'self'",
                "connect-src 'self'",
                "frame-ancestors 'none'",
            ] {
                assert!(csp.contains(directive), "{csp} lacks {directive}");
            }
            assert!(!csp.contains("unsafe"), "{csp}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(h[header::CACHE_CONTROL], "no-cache");
        }
    }

    #[tokio::test]
    async fn unknown_assets_are_404() {
        for name in ["nope.js", "../Cargo.toml", "index.html", "", "APP.JS"] {
            let (status, h, _) = get(&format!("/assets/{name}"), None).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{name:?}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
    }

    #[tokio::test]
    async fn etags_are_content_hashes_and_revalidate_to_304() {
        let (_, h, body) = get("/assets/style.css", None).await;
        let etag = h[header::ETAG].to_str().unwrap().to_string();
        let digest = Sha256::digest(&body);
        assert_eq!(etag, format!("\"{}\"", hex::encode(&digest[..16])));
        let (_, other, _) = get("/assets/app.js", None).await;
        assert_ne!(other[header::ETAG], etag);

        let (status, h, body) = get("/assets/style.css", Some(&etag)).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert!(body.is_empty());
        assert_eq!(h[header::ETAG], etag.as_str());
        // A list naming it, and a weak validator, are as good.
        let listed = format!("\"00\", W/{etag}");
        assert_eq!(
            get("/assets/style.css", Some(&listed)).await.0,
            StatusCode::NOT_MODIFIED
        );
        // Another version's tag gets the file.
        let (status, _, body) = get("/assets/style.css", Some("\"0123\"")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!body.is_empty());
        let (_, h, _) = get("/", None).await;
        let page_tag = h[header::ETAG].to_str().unwrap().to_string();
        assert_eq!(get("/", Some(&page_tag)).await.0, StatusCode::NOT_MODIFIED);
    }

    /// Every file the page and its script load is embedded (a rename in
    /// web/ that misses one side fails here, not in a browser).
    #[test]
    fn every_referenced_asset_is_embedded() {
        let mut seen = Vec::new();
        for file in [&INDEX].into_iter().chain(ASSETS) {
            if file.content_type.starts_with("image/") {
                continue;
            }
            for name in references(text(file)) {
                assert!(
                    ASSETS.iter().any(|a| a.name == name),
                    "{} names {name}, which is not embedded",
                    file.name
                );
                seen.push(name);
            }
        }
        for must in ["app.js", "style.css", "crypto.js", "icon.svg"] {
            assert!(
                seen.iter().any(|s| s == must),
                "nothing loads {must}: {seen:?}"
            );
        }
    }

    /// The CSP refuses inline code: the page must have none.
    #[test]
    fn the_page_has_no_inline_script_or_style() {
        assert_no_inline_code(text(&INDEX));
        let app = text(&ASSETS[0]);
        assert!(
            !app.contains("innerHTML") && !app.contains("eval("),
            "app.js parses HTML or code"
        );
    }

    /// The first load stays small: everything the page loads, uncompressed,
    /// under the 200 KB the goal allows compressed.
    #[test]
    fn the_page_is_small() {
        let total: usize = [&INDEX]
            .into_iter()
            .chain(ASSETS)
            .map(|a| a.bytes.len())
            .sum();
        assert!(total < 200 * 1024, "the page weighs {total} bytes");
    }
}
