//! The browser console every node serves: `web/console.html`,
//! `web/console.js`, `web/console.css`, `web/novnc/rfb.js` (noVNC's RFB
//! client, built from npm by `web/novnc/build.sh`) and `web/spice/`
//! (Debian's spice-html5, vendored by `web/spice/build.sh`), embedded in
//! the binary. For VNC the page connects straight to the VM's console
//! websocket (TLS with the node's certificate, on another port of the
//! console's host) with a console ticket's password, which it reads from
//! the URL's fragment: no proxy, and the password never reaches a server
//! log.
//!
//! SPICE has no websocket of its own (QEMU's SPICE server speaks plain
//! TCP), so for it the node bridges: `GET /console/spice/NS/NAME` with
//! `Upgrade: websocket` ([`spice_bridge`]), from a session AccessPolicy
//! allows `console` on the VM (as for a ticket), opens a TCP connection to
//! the VM's SPICE port on this node and carries bytes between the two
//! ([`super::ws`]). The password is still the ticket's, which spice-html5
//! gives SPICE itself (RSA-encrypted to QEMU's key): the bridge sees it
//! only encrypted and never logs it.
//!
//! Its Content-Security-Policy is the node's page's with two openings:
//! `connect-src` also allows `wss:` (the websocket is another origin) and
//! `https:` (one request to the websocket's port before it, which
//! Chromium needs there: `web/console.js`, `decideClientCertificate`), and
//! `img-src` `data:` (noVNC and spice-html5 draw the VM's cursor as a data
//! URL); the page may be framed by this node's own pages only. Assets
//! carry an ETag (their SHA-256), so a browser revalidates and never mixes
//! versions.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::conn::Held;
use super::page::{etags, not_found, serve_with, Asset};
use super::tls::PeerAddr;
use super::{refuse, session_of, ws, HttpApi};
use crate::identity::session::{bounded, Session};

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

/// spice-html5's modules, by their path under `web/spice/` (the list
/// `web/spice/build.sh` vendors).
macro_rules! spice_html5 {
    ($($path:literal),* $(,)?) => {
        &[$(Asset {
            name: $path,
            content_type: JS,
            bytes: include_bytes!(concat!("../../web/spice/", $path)),
        }),*]
    };
}

/// What `/console/spice-html5/{path}` serves: Debian's spice-html5 0.3.0,
/// unmodified.
const SPICE_HTML5: &[Asset] = spice_html5![
    "atKeynames.js",
    "bitmap.js",
    "cursor.js",
    "display.js",
    "enums.js",
    "filexfer.js",
    "inputs.js",
    "lz.js",
    "main.js",
    "playback.js",
    "png.js",
    "port.js",
    "quic.js",
    "resize.js",
    "simulatecursor.js",
    "spiceconn.js",
    "spicedataview.js",
    "spicemsg.js",
    "spicetype.js",
    "ticket.js",
    "utils.js",
    "webm.js",
    "wire.js",
    "thirdparty/jsbn.js",
    "thirdparty/prng4.js",
    "thirdparty/rng.js",
    "thirdparty/rsa.js",
    "thirdparty/sha1.js",
];

/// The ETags of [`SPICE_HTML5`], in its order.
static SPICE_ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| etags(SPICE_HTML5, &PAGE));

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

/// `GET /console/spice-html5/{path}`: a module of spice-html5, or 404.
pub async fn spice_asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    match SPICE_HTML5.iter().position(|a| a.name == path) {
        Some(i) => serve(&SPICE_HTML5[i], &SPICE_ETAGS[i], &headers),
        None => not_found("no such console asset\n"),
    }
}

fn serve(asset: &Asset, etag: &HeaderValue, request: &HeaderMap) -> Response {
    serve_with(asset, etag, request, CONTENT_SECURITY_POLICY, "SAMEORIGIN")
}

/// The subprotocol spice-html5 asks for (`new WebSocket(uri, 'binary')`).
const SPICE_PROTOCOL: &str = "binary";
/// How long the bridge may take to reach the VM's SPICE port.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the request's `Origin`, when it has one (browsers always send
/// it on a websocket), is this node as the request reached it: no other
/// site's page may open a console with the user's cookie (which is
/// `SameSite=Strict` besides).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let authority = origin.to_str().ok().and_then(|o| {
        o.strip_prefix("https://")
            .or_else(|| o.strip_prefix("http://"))
    });
    matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
}

/// The session of a request, if AccessPolicy allows it `console` on the VM
/// `namespace/name`; else the refusal to answer, logged, as `POST
/// /v1/vms/{namespace}/{name}/console` refuses.
pub(super) async fn console_session(
    api: &Arc<HttpApi>,
    peer: SocketAddr,
    headers: &HeaderMap,
    namespace: &str,
    name: &str,
) -> Result<Session, Response> {
    use crate::model::{access::Verb, Kind, ObjectKey};
    let session = session_of(api, peer, headers).map_err(|r| *r)?;
    let allowed = {
        let (api, address, level2) = (api.clone(), session.address.clone(), session.level2);
        let (namespace, name) = (namespace.to_string(), name.to_string());
        tokio::task::spawn_blocking(move || {
            let key = ObjectKey::new(Kind::VirtualMachine, Some(&namespace), &name);
            let vm = api.admission.store().get(&key);
            api.admission.authorise_session(
                &address,
                level2,
                Verb::Console,
                Kind::VirtualMachine,
                &namespace,
                vm.as_ref().map(|r| &r.object),
            )
        })
        .await
    };
    match allowed {
        Ok(Ok(())) => Ok(session),
        Ok(Err(r)) => {
            let vm = format!("{}/{}", bounded(namespace), bounded(name));
            warn!(%peer, address = %session.address, %vm, code = r.code, reason = %r.reason, "console refused");
            Err(refuse(StatusCode::FORBIDDEN, r.code, r.reason))
        }
        Err(e) => Err(refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal",
            format!("authorisation failed: {e}"),
        )),
    }
}

/// Where the bridge reaches a console listening on `host`: the address
/// itself, or loopback for a wildcard (`0.0.0.0`, `::`).
fn console_target(host: &str, port: u16) -> String {
    match host
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
    {
        Ok(IpAddr::V4(a)) if a.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)).to_string()
        }
        Ok(IpAddr::V6(a)) if a.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)).to_string()
        }
        Ok(a) => SocketAddr::from((a, port)).to_string(),
        Err(_) => format!("{host}:{port}"),
    }
}

/// Where VM `namespace/name`'s SPICE server listens, when the VM runs on
/// this node with SPICE; else the refusal (status, code, why).
async fn spice_target(
    api: &Arc<HttpApi>,
    namespace: &str,
    name: &str,
) -> Result<String, (StatusCode, &'static str, String)> {
    use crate::model::{Kind, ObjectKey};
    let vm = format!("{}/{}", bounded(namespace), bounded(name));
    let Some(hv) = api.consoles.get() else {
        return Err((
            StatusCode::CONFLICT,
            "NoConsole",
            "this node serves no consoles yet".into(),
        ));
    };
    let key = ObjectKey::new(Kind::VirtualMachine, Some(namespace), name);
    let id = format!("{}/{}", key.namespace, key.name);
    let known = {
        let api = api.clone();
        tokio::task::spawn_blocking(move || api.admission.store().get(&key).is_some())
            .await
            .unwrap_or(false)
    };
    if !known {
        return Err((
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no VirtualMachine {vm}"),
        ));
    }
    let Some(console) = hv.console(&id) else {
        return Err((
            StatusCode::CONFLICT,
            "NotRunningHere",
            format!("{vm} has no console on this node (not running here?): open the page of the node it runs on"),
        ));
    };
    match console.spice_port {
        Some(port) => Ok(console_target(&console.host, port)),
        None => Err((
            StatusCode::CONFLICT,
            "NoSpice",
            format!("{vm} serves no SPICE (spec.console.spice, and a QEMU with SPICE)"),
        )),
    }
}

/// `GET /console/spice/{namespace}/{name}` with `Upgrade: websocket`: the
/// VM's SPICE console through this node, for spice-html5 (which speaks
/// websockets only; QEMU's SPICE, plain TCP only). The request must come
/// from this node's own pages (`Origin`) with a session AccessPolicy
/// allows `console` on the VM, and the VM must run here with SPICE; then
/// the node connects to its SPICE port and carries bytes both ways until
/// either side ends ([`ws::bridge`]). SPICE itself still asks the
/// ticket's password. Every refusal is answered before the upgrade, and
/// logged; each bridge logs its end with what it carried.
pub async fn spice_bridge(
    State(api): State<Arc<HttpApi>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    Path((namespace, name)): Path<(String, String)>,
    held: Option<Extension<Held>>,
    mut request: Request,
) -> Response {
    let vm = format!("{}/{}", bounded(&namespace), bounded(&name));
    let headers = request.headers();
    if !same_origin(headers) {
        let origin = headers
            .get(header::ORIGIN)
            .map(|o| bounded(&String::from_utf8_lossy(o.as_bytes())))
            .unwrap_or_default();
        warn!(%peer, %vm, %origin, "SPICE bridge refused: another origin");
        return refuse(
            StatusCode::FORBIDDEN,
            "CrossOrigin",
            "a console opens from this node's own pages only",
        );
    }
    let session = match console_session(&api, peer, headers, &namespace, &name).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let accepted = match ws::handshake(headers, &[SPICE_PROTOCOL]) {
        Ok(a) => a,
        Err(e) => {
            warn!(%peer, %vm, reason = %e, "SPICE bridge refused: no websocket handshake");
            let mut r = refuse(StatusCode::BAD_REQUEST, "NotWebSocket", e.to_string());
            if matches!(e, ws::HandshakeError::Version(_)) {
                r.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            return r;
        }
    };
    let refused = |status, code: &'static str, message: String| {
        warn!(%peer, %vm, code, reason = %message, "SPICE bridge refused");
        refuse(status, code, message)
    };
    let target = match spice_target(&api, &namespace, &name).await {
        Ok(t) => t,
        Err((status, code, message)) => return refused(status, code, message),
    };
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return refused(
                StatusCode::BAD_GATEWAY,
                "ConsoleUnavailable",
                format!("{vm}'s SPICE at {target}: {e}"),
            )
        }
        Err(_) => {
            return refused(
                StatusCode::GATEWAY_TIMEOUT,
                "ConsoleUnavailable",
                format!("{vm}'s SPICE at {target} did not answer in {CONNECT_TIMEOUT:?}"),
            )
        }
    };
    let _ = tcp.set_nodelay(true);
    let upgrade = hyper::upgrade::on(&mut request);
    info!(%peer, address = %session.address, %vm, spice = %target, "SPICE bridge opened");
    tokio::spawn(async move {
        // The connection's place against the caps, while it is a bridge.
        let _held = held;
        let started = Instant::now();
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                debug!(%peer, %vm, error = %e, "SPICE bridge: the upgrade failed");
                return;
            }
        };
        let b = ws::bridge(TokioIo::new(upgraded), tcp, ws::MAX_FRAME).await;
        info!(
            %peer,
            %vm,
            to_spice = b.to_server,
            to_browser = b.to_client,
            seconds = started.elapsed().as_secs(),
            end = ?b.end,
            "SPICE bridge closed"
        );
    });
    ws::switching_protocols(&accepted)
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
            Some(p) if p.starts_with("spice-html5/") => {
                spice_asset(Path(p["spice-html5/".len()..].to_string()), headers).await
            }
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

    /// Every path under this node a file at `/console/DIR` names:
    /// `/console/NAME`, `/assets/NAME`, or a `from './PATH'`, `from
    /// "./PATH"` or `import('./PATH')` import (relative to its directory).
    fn references(text: &str, dir: &str) -> Vec<String> {
        let mut out = Vec::new();
        let here = format!("/console/{dir}");
        for (prefix, base) in [
            ("\"/console/", "/console/"),
            ("\"/assets/", "/assets/"),
            ("from './", here.as_str()),
            ("from \"./", here.as_str()),
            ("import('./", here.as_str()),
        ] {
            for (i, _) in text.match_indices(prefix) {
                let rest = &text[i + prefix.len()..];
                let end = rest
                    .find(|c: char| {
                        !(c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' || c == '/')
                    })
                    .unwrap_or(rest.len());
                out.push(format!("{base}{}", &rest[..end]));
            }
        }
        out
    }

    /// Whether this node serves `path` (a page, console or spice-html5
    /// asset).
    async fn served(path: &str) -> bool {
        match path.strip_prefix("/assets/") {
            Some(name) => {
                super::super::page::asset(Path(name.to_string()), HeaderMap::new())
                    .await
                    .status()
                    == StatusCode::OK
            }
            None => get(path, None).await.0 == StatusCode::OK,
        }
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
            ("spice-html5/main.js", JS),
            ("spice-html5/thirdparty/rsa.js", JS),
        ] {
            let (status, h, body) = get(&format!("/console/{name}"), None).await;
            assert_eq!(status, StatusCode::OK, "{name}");
            assert_eq!(h[header::CONTENT_TYPE], ty, "{name}");
            assert!(!body.is_empty(), "{name}");
        }
        for path in [
            "/console.html",
            "/console/console.js",
            "/console/rfb.js",
            "/console/spice-html5/spiceconn.js",
        ] {
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
            "spice-html5/",
            "spice-html5/spice.html",
            "spice-html5/spicearraybuffer.js",
            "spice-html5/../console.js",
            "spice-html5/thirdparty/../main.js",
            "spice-html5/build.sh",
            "spice-html5/copyright",
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
            for path in references(text(file), "") {
                assert!(
                    served(&path).await,
                    "{} names {path}, which is not served",
                    file.name
                );
                seen.push(path);
            }
        }
        // spice-html5's own imports, from main.js on: all embedded.
        let mut todo = vec!["main.js".to_string()];
        let mut reached = Vec::new();
        while let Some(name) = todo.pop() {
            if reached.contains(&name) {
                continue;
            }
            let a = SPICE_HTML5
                .iter()
                .find(|a| a.name == name)
                .unwrap_or_else(|| panic!("spice-html5 imports {name}, which is not embedded"));
            let dir = match name.rfind('/') {
                Some(i) => format!("spice-html5/{}/", &name[..i]),
                None => "spice-html5/".to_string(),
            };
            for path in references(text(a), &dir) {
                assert!(served(&path).await, "{name} imports {path}, not served");
                let rest = path.strip_prefix("/console/spice-html5/").expect("inside");
                // `thirdparty/../x.js` does not occur; a plain path does.
                todo.push(rest.to_string());
            }
            reached.push(name);
        }
        let mut unreached: Vec<_> = SPICE_HTML5
            .iter()
            .filter(|a| !reached.iter().any(|r| r == a.name))
            .map(|a| a.name)
            .collect();
        unreached.sort();
        assert!(
            unreached.is_empty(),
            "embedded, imported by nothing: {unreached:?}"
        );
        for must in [
            "/console/console.js",
            "/console/console.css",
            "/console/rfb.js",
            "/console/spice-html5/main.js",
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
        crate::http::page::tests::assert_no_inline_code(text(&PAGE));
        for js in [&ASSETS[0], &ASSETS[2]].into_iter().chain(SPICE_HTML5) {
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

    /// web/spice/ holds exactly the files embedded here (and its build
    /// script and copyright), each byte for byte, and each keeps its
    /// license header.
    #[test]
    fn spice_html5_is_embedded_whole_and_unmodified() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web/spice");
        let mut on_disk = Vec::new();
        for dir in ["", "thirdparty"] {
            for e in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".js") {
                    on_disk.push(if dir.is_empty() {
                        name
                    } else {
                        format!("{dir}/{name}")
                    });
                }
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = SPICE_HTML5.iter().map(|a| a.name.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
        for a in SPICE_HTML5 {
            assert_eq!(
                std::fs::read(root.join(a.name)).unwrap(),
                a.bytes,
                "{}",
                a.name
            );
            let head = &text(a)[..text(a).len().min(3000)];
            assert!(
                head.contains("Copyright")
                    || head.contains("Paul Johnston")
                    || head.contains("Tom Wu"),
                "{} lacks its notice",
                a.name
            );
        }
        let copyright = std::fs::read_to_string(root.join("copyright")).unwrap();
        assert!(copyright.contains("License: LGPL-3"), "{copyright}");
    }

    #[test]
    fn only_this_nodes_pages_may_open_the_bridge() {
        let with = |origin: Option<&str>, host: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(o) = origin {
                h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
            }
            if let Some(v) = host {
                h.insert(header::HOST, HeaderValue::from_str(v).unwrap());
            }
            same_origin(&h)
        };
        assert!(
            with(None, Some("10.0.0.1:8443")),
            "no Origin: not a browser"
        );
        assert!(with(Some("https://10.0.0.1:8443"), Some("10.0.0.1:8443")));
        assert!(with(
            Some("https://Node.Example:8443"),
            Some("node.example:8443")
        ));
        assert!(with(Some("http://127.0.0.1:80"), Some("127.0.0.1:80")));
        assert!(!with(Some("https://evil.example"), Some("10.0.0.1:8443")));
        assert!(!with(Some("https://10.0.0.1:9999"), Some("10.0.0.1:8443")));
        assert!(!with(Some("https://10.0.0.1:8443"), None));
        assert!(!with(Some("null"), Some("10.0.0.1:8443")));
        assert!(!with(
            Some("https://10.0.0.1:8443.evil"),
            Some("10.0.0.1:8443")
        ));
    }

    #[test]
    fn a_wildcard_console_address_is_reached_on_loopback() {
        assert_eq!(console_target("127.0.0.1", 7900), "127.0.0.1:7900");
        assert_eq!(console_target("0.0.0.0", 7900), "127.0.0.1:7900");
        assert_eq!(console_target("::", 7900), "[::1]:7900");
        assert_eq!(console_target("[::]", 7900), "[::1]:7900");
        assert_eq!(console_target("fd00::7", 7900), "[fd00::7]:7900");
        assert_eq!(console_target("node.example", 7900), "node.example:7900");
    }
}
