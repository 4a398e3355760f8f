//! The browser console every node serves: `web/console.html`,
//! `web/console.js`, `web/console.css` and `web/novnc/rfb.js` (noVNC's RFB
//! client, built from npm by `web/novnc/build.sh`), embedded in the
//! binary. The page connects straight to the VM's console websocket
//! (TLS with the node's certificate, on another port of the console's
//! host) with a console ticket's password, which it reads from the URL's
//! fragment: no proxy, and the password never reaches a server log.
//!
//! Its Content-Security-Policy is the node's page's with two openings:
//! `connect-src` also allows `wss:` (the websocket is another origin) and
//! `https:` (one request to the websocket's port before it, which
//! Chromium needs there: `web/console.js`, `decideClientCertificate`), and
//! `img-src` `data:` (noVNC draws the VM's cursor as a data URL); the page
//! may be framed by this node's own pages only. Assets carry an ETag
//! (their SHA-256), so a browser revalidates and never mixes versions.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;

use super::page::{etags, not_found, serve_with, Asset};

/// What the console page may load and talk to: this node, and any TLS
/// endpoint (a console's host and port are the ticket's, in the URL's
/// fragment, which this node never sees); nothing inline, no plugins, no
/// HTML parsed from strings (Trusted Types).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self' wss: https:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'self'; require-trusted-types-for 'script'";

const JS: &str = "text/javascript; charset=utf-8";

const PAGE: Asset = Asset {
    name: "console.html",
    content_type: "text/html; charset=utf-8",
    bytes: include_bytes!("../../web/console.html"),
};

/// What `/console/{name}` serves.
const ASSETS: &[Asset] = &[
    Asset {
        name: "console.js",
        content_type: JS,
        bytes: include_bytes!("../../web/console.js"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../web/console.css"),
    },
    Asset {
        name: "rfb.js",
        content_type: JS,
        bytes: include_bytes!("../../web/novnc/rfb.js"),
    },
];

/// The ETag of each asset ([`ASSETS`] order, then [`PAGE`]): the first 16
/// bytes of its SHA-256, quoted.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| etags(ASSETS, &PAGE));

/// `GET /console.html`.
pub async fn page(headers: HeaderMap) -> Response {
    serve(&PAGE, &ETAGS[ASSETS.len()], &headers)
}

/// `GET /console/{name}`: its embedded assets, or 404.
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().position(|a| a.name == name) {
        Some(i) => serve(&ASSETS[i], &ETAGS[i], &headers),
        None => not_found("no such console asset\n"),
    }
}

fn serve(asset: &Asset, etag: &HeaderValue, request: &HeaderMap) -> Response {
    serve_with(asset, etag, request, CONTENT_SECURITY_POLICY, "SAMEORIGIN")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;
    use axum::http::{header, StatusCode};
    use sha2::{Digest, Sha256};

    async fn get(path: &str, if_none_match: Option<&str>) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut headers = HeaderMap::new();
        if let Some(tag) = if_none_match {
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(tag).unwrap());
        }
        let response = match path.strip_prefix("/console/") {
            Some(name) => asset(Path(name.to_string()), headers).await,
            None => {
                assert_eq!(path, "/console.html");
                page(headers).await
            }
        };
        let (parts, body) = response.into_parts();
        let body = to_bytes(body, 1 << 24).await.unwrap();
        (parts.status, parts.headers, body.to_vec())
    }

    fn text(a: &Asset) -> &'static str {
        std::str::from_utf8(a.bytes).unwrap()
    }

    /// Every path under this node a file names: `/console/NAME`,
    /// `/assets/NAME`, or a `from './NAME'` or `import('./NAME')` import
    /// (relative to `/console/`).
    fn references(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (prefix, base) in [
            ("\"/console/", "/console/"),
            ("\"/assets/", "/assets/"),
            ("from './", "/console/"),
            ("import('./", "/console/"),
        ] {
            for (i, _) in text.match_indices(prefix) {
                let rest = &text[i + prefix.len()..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-'))
                    .unwrap_or(rest.len());
                out.push(format!("{base}{}", &rest[..end]));
            }
        }
        out
    }

    #[tokio::test]
    async fn the_page_and_its_assets_are_served_with_their_headers() {
        let (status, h, body) = get("/console.html", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(body, PAGE.bytes);
        for (name, ty) in [
            ("console.js", JS),
            ("rfb.js", JS),
            ("console.css", "text/css; charset=utf-8"),
        ] {
            let (status, h, body) = get(&format!("/console/{name}"), None).await;
            assert_eq!(status, StatusCode::OK, "{name}");
            assert_eq!(h[header::CONTENT_TYPE], ty, "{name}");
            assert!(!body.is_empty(), "{name}");
        }
        for path in ["/console.html", "/console/console.js", "/console/rfb.js"] {
            let (_, h, _) = get(path, None).await;
            let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
            for want in [
                "default-src 'none'",
                "script-src 'self'",
                "style-src 'self'",
                "img-src 'self' data:",
                "connect-src 'self' wss: https:",
                "frame-ancestors 'self'",
                "base-uri 'none'",
            ] {
                assert!(directives.contains(&want), "{csp} lacks {want}");
            }
            assert!(!csp.contains("unsafe"), "{csp}");
            assert!(!csp.contains('*'), "{csp}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
            assert_eq!(h[header::REFERRER_POLICY], "no-referrer", "{path}");
            assert_eq!(h[header::X_FRAME_OPTIONS], "SAMEORIGIN", "{path}");
            assert_eq!(h[header::CACHE_CONTROL], "no-cache", "{path}");
        }
    }

    #[tokio::test]
    async fn unknown_assets_are_404() {
        for name in [
            "nope.js",
            "../Cargo.toml",
            "console.html",
            "",
            "RFB.JS",
            "entry.js",
            "app.js",
        ] {
            let (status, h, body) = get(&format!("/console/{name}"), None).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{name:?}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(body, b"no such console asset\n");
        }
    }

    #[tokio::test]
    async fn etags_are_content_hashes_and_revalidate_to_304() {
        let (_, h, body) = get("/console/rfb.js", None).await;
        let etag = h[header::ETAG].to_str().unwrap().to_string();
        let digest = Sha256::digest(&body);
        assert_eq!(etag, format!("\"{}\"", hex::encode(&digest[..16])));
        let (status, h, body) = get("/console/rfb.js", Some(&etag)).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert!(body.is_empty());
        assert_eq!(h[header::ETAG], etag.as_str());
        assert_eq!(
            get("/console/rfb.js", Some(&format!("\"00\", W/{etag}")))
                .await
                .0,
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            get("/console/rfb.js", Some("\"0123\"")).await.0,
            StatusCode::OK
        );
        let (_, h, _) = get("/console.html", None).await;
        let tag = h[header::ETAG].to_str().unwrap().to_string();
        assert_ne!(tag, etag);
        assert_eq!(
            get("/console.html", Some(&tag)).await.0,
            StatusCode::NOT_MODIFIED
        );
    }

    /// Every file the page and its scripts load is embedded here, or is
    /// one of the node's page's assets (a rename in web/ that misses one
    /// side fails here, not in a browser).
    #[tokio::test]
    async fn every_referenced_asset_is_embedded() {
        let mut seen = Vec::new();
        for file in [&PAGE, &ASSETS[0], &ASSETS[1]] {
            for path in references(text(file)) {
                let served = match path.strip_prefix("/assets/") {
                    Some(name) => {
                        super::super::page::asset(Path(name.to_string()), HeaderMap::new())
                            .await
                            .status()
                            == StatusCode::OK
                    }
                    None => ASSETS
                        .iter()
                        .any(|a| path == format!("/console/{}", a.name)),
                };
                assert!(served, "{} names {path}, which is not served", file.name);
                seen.push(path);
            }
        }
        for must in [
            "/console/console.js",
            "/console/console.css",
            "/console/rfb.js",
        ] {
            assert!(
                seen.iter().any(|s| s == must),
                "nothing loads {must}: {seen:?}"
            );
        }
    }

    /// The CSP refuses inline code, and Trusted Types any HTML parsed from
    /// a string: neither the page nor the scripts may rely on them.
    #[test]
    fn no_inline_code_and_no_html_from_strings() {
        let html = text(&PAGE);
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
        for js in [&ASSETS[0], &ASSETS[2]] {
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "eval(",
                "document.write",
            ] {
                assert!(!text(js).contains(sink), "{} uses {sink}", js.name);
            }
        }
    }

    /// The bundle keeps noVNC's license notices (MPL-2.0, pako's MIT, the
    /// DES code's BSD terms) and says where its source is.
    #[test]
    fn the_bundle_carries_its_licenses() {
        let rfb = text(&ASSETS[2]);
        assert!(rfb.starts_with("/*! noVNC "), "{}", &rfb[..80]);
        for notice in [
            "subject to the terms of the Mozilla Public",
            "https://mozilla.org/MPL/2.0/",
            "https://github.com/novnc/noVNC/tree/v",
            "The MIT License",
            "Copyright (C) 2014-2016 by Vitaly Puzrin",
            "Copyright (C) 1996 by Jef Poskanzer",
        ] {
            assert!(rfb.contains(notice), "the bundle lacks {notice:?}");
        }
    }
}
