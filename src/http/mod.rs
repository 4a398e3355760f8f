//! The node's HTTP API (issue 6): wallet login with node-signed session
//! cookies, and the signed push of manifests. Off unless the node runs with
//! `--http-listen`. See `docs/SIGNING.md` ("HTTP API") for the wire format.
//!
//! - `GET  /v1/cluster`: `{cluster, node}` (what a client signs for).
//! - `GET  /v1/auth/challenge`: a fresh single-use challenge
//!   ([`crate::identity::session::Challenge`]) to sign with a wallet.
//! - `POST /v1/auth/login` `{address, signature, challenge}`: checks the
//!   signature against the challenge, consumes the nonce and sets the
//!   `deorch_session` cookie (a [`Session`] token signed by this node).
//! - `GET  /v1/auth/whoami`: the address of a valid session cookie, issued by
//!   this node or by any node address the cluster trusts.
//! - `POST /v1/auth/logout`: clears the cookie in the browser.
//! - `POST /v1/command`, `GET /v1/events`: the web page's command line
//!   and its change stream ([`command`]); `GET /` and `/assets/*`: the
//!   page ([`page`]).
//! - `GET  /metrics`: the node's metrics in the Prometheus text format,
//!   for `--metrics-allow` clients or an owner's or admin's session
//!   ([`crate::metrics`]).
//! - `GET  /healthz`, `GET /readyz`: liveness and readiness for load
//!   balancers and monitors ([`health`]).
//! - `POST /v1/manifests`: multi-document YAML of signed manifests, handed
//!   to admission as one batch ([`crate::admission`], source `push`, only
//!   signed documents): verified, authorised by the trusted `AccessPolicy`
//!   objects (the owner is always admin), at a generation above the stored
//!   one, then all applied in one store transaction, or none.
//!
//! Every refusal is a JSON `{"error", "code", ...}` and one `warn!` line
//! with the peer and the reason; signatures, challenges' nonces and cookies
//! are never logged.
//!
//! Architecture invariant: like the local API, handlers only parse and
//! hand documents to admission.

pub mod client;
pub mod command;
pub mod conn;
pub mod console_page;
pub mod health;
pub mod join;
pub mod page;
pub mod tls;
pub mod ws;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use self::tls::PeerAddr;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::admission::{Admission, Batch, Deletion, SessionSubject, Trust, Verdict};
use crate::identity::level2::{Level2Error, RateLimiter};
use crate::identity::session::{bounded, Challenge, LoginError, NonceStore, Session};
use crate::identity::{Address, AddressType, KeyError, PrivateKey};
use crate::store::SourceId;

/// Name of the session cookie.
pub const COOKIE_NAME: &str = "deorch_session";
/// Source id of objects written by the push API.
pub const PUSH_SOURCE: &str = "push";
/// Largest request body accepted (bytes).
pub const MAX_BODY: usize = 4 << 20;
/// Outstanding login challenges kept per node (oldest dropped first).
pub const NONCE_CAPACITY: usize = 100_000;

/// What the HTTP API needs besides the store.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Cluster owner's address = cluster id.
    pub cluster_owner: String,
    /// This node's key; its P2WPKH address signs session cookies.
    pub node_key: PrivateKey,
    /// Other nodes whose cookies are accepted.
    pub trusted_nodes: Vec<String>,
    /// Login challenge lifetime.
    pub login_ttl: Duration,
    /// Session cookie lifetime.
    pub session_ttl: Duration,
    /// At most this many login challenges per client IP per window
    /// (`(count, seconds)`); `None` only for benchmarks.
    pub challenge_limit: Option<(u32, u64)>,
}

/// The node's challenge limit per client IP: 60 per 10 s. Outstanding
/// challenges are bounded by [`NONCE_CAPACITY`] and evicted oldest first,
/// so without a limit one client could flood out everyone's challenges;
/// with it, one address holds at most 6/s x the challenge lifetime.
pub const CHALLENGE_LIMIT: (u32, u64) = (60, 10);

/// The HTTP API's state (one per node).
pub struct HttpApi {
    admission: Arc<Admission>,
    cluster: String,
    node_key: PrivateKey,
    node_address: String,
    trusted_nodes: Vec<Address>,
    nonces: Mutex<NonceStore>,
    /// Hand-over tokens adopted here, until they expire.
    adopted: Mutex<UsedTokens>,
    challenge_limiter: Option<Mutex<RateLimiter>>,
    login_limiter: Option<Mutex<RateLimiter>>,
    consoles: std::sync::OnceLock<Arc<dyn crate::driver::Hypervisor>>,
    /// The live members, for the command line's `nodes` (gossip only).
    radar: std::sync::OnceLock<tokio::sync::watch::Receiver<Vec<crate::node::cluster::RadarNode>>>,
    /// The node's metrics, for `GET /metrics` ([`crate::metrics`]).
    metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
    /// What `/readyz` checks, once the node has started ([`health`]).
    ready: std::sync::OnceLock<health::ReadyChecks>,
    /// Join requests and what joiners are told ([`join`]).
    join: join::JoinDesk,
    login_ttl: u64,
    session_ttl: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A JSON refusal `{"error": message, "code": code}`.
fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": message.into(), "code": code })),
    )
        .into_response()
}

impl std::fmt::Debug for HttpApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpApi")
            .field("cluster", &self.cluster)
            .field("node", &self.node_address)
            .finish_non_exhaustive()
    }
}

/// A refused push: status and JSON body.
type Refusal = (StatusCode, Value);

impl HttpApi {
    /// The API of a node whose key and cluster are in `settings`.
    pub fn new(
        admission: Arc<Admission>,
        settings: HttpSettings,
    ) -> Result<Arc<HttpApi>, KeyError> {
        let node_address = settings.node_key.address(AddressType::P2wpkh)?.to_string();
        let cluster = settings.cluster_owner.clone();
        Ok(Arc::new(HttpApi {
            admission,
            nonces: Mutex::new(NonceStore::new(
                &cluster,
                &node_address,
                settings.login_ttl.as_secs(),
                NONCE_CAPACITY,
            )),
            challenge_limiter: settings
                .challenge_limit
                .map(|(max, window)| Mutex::new(RateLimiter::new(max, window, 65_536))),
            // Attempts need a challenge each, so the same bound holds them;
            // its own counter keeps a flood of bad logins from spending
            // the challenges of the same client, and the other way round.
            login_limiter: settings
                .challenge_limit
                .map(|(max, window)| Mutex::new(RateLimiter::new(max, window, 65_536))),
            consoles: std::sync::OnceLock::new(),
            radar: std::sync::OnceLock::new(),
            metrics: std::sync::OnceLock::new(),
            ready: std::sync::OnceLock::new(),
            join: join::JoinDesk::default(),
            adopted: Mutex::new(UsedTokens::default()),
            cluster,
            node_key: settings.node_key,
            node_address,
            trusted_nodes: settings
                .trusted_nodes
                .iter()
                .filter_map(|a| Address::parse(a).ok())
                .collect(),
            login_ttl: settings.login_ttl.as_secs(),
            session_ttl: settings.session_ttl.as_secs(),
        }))
    }

    /// This node's address (P2WPKH of its key).
    pub fn node_address(&self) -> &str {
        &self.node_address
    }

    /// Whether `address` is a node whose session cookies are accepted:
    /// this node, a node the cluster's AccessPolicies admit
    /// (`satellites`, from [`Admission::session_facts`]), or one of the
    /// configured trusted nodes.
    fn is_trusted_node(&self, address: &str, satellites: &BTreeMap<String, String>) -> bool {
        address == self.node_address
            || Address::parse(address).is_ok_and(|a| self.trusted_nodes.contains(&a))
            || satellites
                .keys()
                .any(|n| crate::identity::access::same_address(n, address))
    }

    /// Serve console tickets for the VMs `hypervisor` runs (once; the
    /// node does it when its drivers are up).
    pub fn set_consoles(&self, hypervisor: Arc<dyn crate::driver::Hypervisor>) {
        let _ = self.consoles.set(hypervisor);
    }

    /// The cluster's live members, which the command line lists.
    pub fn set_radar(
        &self,
        radar: tokio::sync::watch::Receiver<Vec<crate::node::cluster::RadarNode>>,
    ) {
        let _ = self.radar.set(radar);
    }

    /// Take join requests (kept in `file`) and tell joiners the gossip
    /// addresses `seeds` returns (once; the node does it with gossip on).
    pub fn set_join(
        &self,
        file: std::path::PathBuf,
        seeds: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    ) {
        self.join.set(file, seeds);
    }

    /// Serve `metrics` on `GET /metrics` (once; the node does it).
    pub fn set_metrics(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// The metrics `GET /metrics` serves, once set.
    pub fn metrics(&self) -> Option<&Arc<crate::metrics::Metrics>> {
        self.metrics.get()
    }

    /// The live members the radar knows now (none without gossip).
    pub fn members(&self) -> Vec<crate::node::cluster::RadarNode> {
        self.radar
            .get()
            .map(|r| r.borrow().clone())
            .unwrap_or_default()
    }

    /// Check a session token (cookie value) now.
    pub fn check_session(&self, token: &str) -> Result<Session, LoginError> {
        let s = self.check_token(token)?;
        if s.hand_over_until.is_some() {
            return Err(LoginError::HandOver(
                "a hand-over token is not a session: POST it to /v1/auth/adopt",
            ));
        }
        Ok(s)
    }

    /// A token's signature, issuer, cluster, expiry and revocation.
    fn check_token(&self, token: &str) -> Result<Session, LoginError> {
        let (satellites, revoked) = self.admission.session_facts().unwrap_or_default();
        let s = Session::from_token(token, &self.cluster, now_secs(), |a| {
            self.is_trusted_node(a, &satellites)
        })?;
        if revoked.contains(&s.fingerprint) {
            return Err(LoginError::Revoked(s.fingerprint));
        }
        Ok(s)
    }

    /// The cookie that makes `s` (signed by this node) the browser's
    /// session here.
    fn session_cookie_for(&self, s: &Session) -> Result<String, LoginError> {
        let token = s.to_token(&self.node_key)?;
        Ok(format!(
            "{COOKIE_NAME}={token}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
            s.expires.saturating_sub(now_secs())
        ))
    }

    /// The routes.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/v1/cluster", get(cluster_info))
            .route("/v1/join", get(join::info).post(join::request))
            .route("/metrics", get(crate::metrics::scrape))
            .route("/healthz", get(health::healthz))
            .route("/readyz", get(health::readyz))
            .route("/v1/auth/challenge", get(challenge))
            .route("/v1/auth/login", post(login))
            .route("/v1/auth/whoami", get(whoami))
            .route("/v1/auth/logout", post(logout))
            .route("/v1/auth/handover", post(hand_over))
            .route("/v1/auth/adopt", post(adopt))
            .route("/v1/manifests", post(push))
            .route("/v1/objects", get(objects).delete(delete_object))
            .route("/v1/vms/{namespace}/{name}/console", post(console_ticket))
            .route("/v1/command", post(command::command))
            .route("/v1/events", get(command::events))
            .route("/", get(page::index))
            .route("/assets/{name}", get(page::asset))
            .route("/console.html", get(console_page::page))
            .route("/console/{name}", get(console_page::asset))
            .route(
                "/console/spice-html5/{*path}",
                get(console_page::spice_asset),
            )
            .route(
                "/console/spice/{namespace}/{name}",
                get(console_page::spice_bridge),
            )
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(self)
    }

    /// Admit a push (blocking: verifies signatures and writes the store).
    /// All documents or none.
    fn push(
        &self,
        peer: SocketAddr,
        body: &[u8],
        session: Option<SessionSubject>,
    ) -> Result<Value, Refusal> {
        let bad = |code: &str, msg: String| {
            warn!(%peer, code, reason = %msg, "push refused");
            (
                StatusCode::BAD_REQUEST,
                json!({ "error": msg, "code": code }),
            )
        };
        let text = std::str::from_utf8(body)
            .map_err(|_| bad("BadRequest", "body is not UTF-8 YAML".into()))?;
        let mut batch = Batch::new(SourceId(PUSH_SOURCE.into()), Trust::Signed);
        batch.session = session;
        batch.parse("<push>", text);
        if !batch.diagnostics.is_empty() {
            warn!(%peer, problems = batch.diagnostics.len(), "push refused: invalid manifests");
            return Err((
                StatusCode::BAD_REQUEST,
                json!({
                    "error": format!("{} problem(s) in the manifests; nothing applied", batch.diagnostics.len()),
                    "code": "Invalid",
                    "diagnostics": batch.diagnostics,
                }),
            ));
        }
        if batch.docs.is_empty() {
            return Err(bad("BadRequest", "no documents; nothing applied".into()));
        }
        self.admit(peer, batch)
    }

    /// Admit `batch` and answer as the push does: every verdict, or every
    /// refusal and nothing applied.
    fn admit(&self, peer: SocketAddr, batch: Batch) -> Result<Value, Refusal> {
        let total = batch.docs.len() + batch.deletions.len();
        let outcome = self.admission.admit(batch).map_err(|e| {
            warn!(%peer, error = %e, "push: store write failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "error": format!("store: {e}"), "code": "Internal" }),
            )
        })?;
        if !outcome.committed {
            let mut forbidden = false;
            let mut duplicate = false;
            let mut refused = Vec::new();
            for (i, a) in outcome.verdicts.iter().enumerate() {
                if !a.verdict.is_refusal() {
                    continue;
                }
                let detail = match &a.verdict {
                    Verdict::Denied { misses, .. } => json!({ "misses": misses }),
                    Verdict::Stale { stored, .. } => json!({ "expected": stored + 1 }),
                    _ => Value::Null,
                };
                match a.verdict {
                    Verdict::Stale { .. } => {}
                    Verdict::Duplicate { .. } => duplicate = true,
                    _ => forbidden = true,
                }
                warn!(%peer, document = i + 1, object = %a.key, code = a.verdict.code(), reason = %a.verdict.reason(), "push refused");
                refused.push(json!({
                    "document": i + 1,
                    "object": a.key.to_string(),
                    "code": a.verdict.code(),
                    "reason": a.verdict.reason(),
                    "detail": detail,
                }));
            }
            let status = if forbidden {
                StatusCode::FORBIDDEN
            } else if duplicate {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::CONFLICT
            };
            return Err((
                status,
                json!({
                    "error": format!("{} of {total} document(s) refused; nothing applied", refused.len()),
                    "code": if forbidden { "Forbidden" } else { "Refused" },
                    "refused": refused,
                }),
            ));
        }
        let applied: Vec<Value> = outcome
            .verdicts
            .iter()
            .map(|a| {
                let (generation, changed) = match a.verdict {
                    Verdict::Applied { generation } | Verdict::Deleted { generation } => {
                        (generation, true)
                    }
                    Verdict::Unchanged { generation } => (generation, false),
                    _ => (0, false),
                };
                if changed {
                    info!(%peer, object = %a.key, generation, verdict = a.verdict.code(), "changed over HTTP");
                }
                json!({
                    "object": a.key.to_string(),
                    "generation": generation,
                    "changed": changed,
                    "verdict": a.verdict.code(),
                })
            })
            .collect();
        Ok(json!({ "applied": applied }))
    }
}

/// Where the HTTP API listens: plain TCP (`--http-plain`) or TLS.
pub enum HttpListener {
    /// Plain HTTP.
    Plain(TcpListener),
    /// HTTPS.
    Tls(tls::TlsListener),
}

/// Serve `api` on `listener` until `shutdown` turns true (connection
/// limits and timeouts: [`conn`]).
pub async fn serve(listener: HttpListener, api: Arc<HttpApi>, shutdown: watch::Receiver<bool>) {
    let (tcp, tls) = match listener {
        HttpListener::Plain(l) => (l, None),
        HttpListener::Tls(t) => (t.tcp, Some(t.acceptor)),
    };
    conn::serve(tcp, tls, api.router(), shutdown).await;
}

async fn cluster_info(State(api): State<Arc<HttpApi>>) -> Response {
    Json(json!({ "cluster": api.cluster, "node": api.node_address })).into_response()
}

async fn challenge(
    State(api): State<Arc<HttpApi>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
) -> Response {
    if let Some(limiter) = &api.challenge_limiter {
        if let Err(Level2Error::RateLimited { retry_after_secs }) =
            lock(limiter).check(&peer.ip().to_string(), now_secs())
        {
            warn!(%peer, retry_after_secs, "login challenge refused: rate limited");
            return rate_limited(
                format!(
                    "too many login challenges from {}: retry in {retry_after_secs} s",
                    peer.ip()
                ),
                retry_after_secs,
            );
        }
    }
    let c = lock(&api.nonces).issue(now_secs());
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "challenge": c.text(),
            "cluster": c.cluster,
            "node": c.node,
            "issued": c.issued,
            "expires": c.issued.saturating_add(api.login_ttl),
            "nonce": hex::encode(c.nonce),
        })),
    )
        .into_response()
}

/// A 429 with `Retry-After`.
fn rate_limited(message: String, retry_after_secs: u64) -> Response {
    let mut r = refuse(StatusCode::TOO_MANY_REQUESTS, "RateLimited", message);
    r.headers_mut().insert(
        header::RETRY_AFTER,
        header::HeaderValue::from(retry_after_secs),
    );
    r
}

/// `POST /v1/auth/login` body (not `Debug`: it may hold a password).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    address: String,
    signature: String,
    challenge: String,
    /// The directory password, when a policy asks level 2 of the address
    /// (a first login without it answers `PasswordRequired`).
    #[serde(default)]
    password: Option<String>,
}

async fn login(
    State(api): State<Arc<HttpApi>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    body: Bytes,
) -> Response {
    let req: LoginBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let e = bounded(&e.to_string());
            warn!(%peer, error = %e, "login refused: malformed body");
            return refuse(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("expected JSON {{\"address\", \"signature\", \"challenge\"}}: {e}"),
            );
        }
    };
    let now = now_secs();
    if let Some(limiter) = &api.login_limiter {
        if let Err(Level2Error::RateLimited { retry_after_secs }) =
            lock(limiter).check(&peer.ip().to_string(), now)
        {
            warn!(%peer, retry_after_secs, "login refused: rate limited");
            return rate_limited(
                format!(
                    "too many login attempts from {}: retry in {retry_after_secs} s",
                    peer.ip()
                ),
                retry_after_secs,
            );
        }
    }
    let result = lock(&api.nonces).login(&req.challenge, &req.address, &req.signature, now);
    let (c, address) = match result {
        Ok(r) => r,
        Err(e) => {
            let (code, message) = match &e {
                LoginError::NonceRejected => match Challenge::parse(&req.challenge) {
                    Ok(c) if c.issued.saturating_add(api.login_ttl) <= now => (
                        "ChallengeExpired",
                        format!(
                            "challenge expired (issued {}, lifetime {} s): request a new one",
                            c.issued, api.login_ttl
                        ),
                    ),
                    _ => (
                        "ChallengeRejected",
                        "challenge already used or unknown here: request a new one".to_string(),
                    ),
                },
                LoginError::MalformedChallenge => ("BadChallenge", e.to_string()),
                LoginError::WrongIssuer(_) => ("WrongIssuer", e.to_string()),
                LoginError::Signature(_) => ("BadSignature", e.to_string()),
                LoginError::AlteredChallenge => ("AlteredChallenge", e.to_string()),
                LoginError::WrongNetwork { .. } => ("WrongNetwork", e.to_string()),
                _ => ("Refused", e.to_string()),
            };
            // Bounded: what a client sends is not what the log may hold.
            let message = bounded(&message);
            warn!(%peer, address = %bounded(&req.address), code, reason = %message, "login refused");
            return refuse(StatusCode::UNAUTHORIZED, code, message);
        }
    };
    // One read of the policies: may the address log in at all, and does a
    // rule naming it ask a directory password (level 2)?
    let gate = {
        let (api, address) = (api.clone(), address.clone());
        tokio::task::spawn_blocking(move || api.admission.may_log_in(&address))
            .await
            .unwrap_or_else(|e| Err(format!("the policy check failed: {e}")))
    };
    let level2 = match gate {
        Ok(l) => l,
        Err(reason) => {
            warn!(%peer, address = %bounded(&address), reason = %reason, "login refused: not authorised");
            return refuse(StatusCode::FORBIDDEN, "NotAuthorised", reason);
        }
    };
    let passed_level2 = match (level2, req.password.as_deref()) {
        (None, _) => false,
        (Some(_), None | Some("")) => {
            info!(%peer, %address, "login: level-2 password required");
            return refuse(
                StatusCode::UNAUTHORIZED,
                "PasswordRequired",
                "password required: an access policy asks a directory password (level 2) of this address; sign a new challenge and send it with \"password\"",
            );
        }
        (Some((servers, user)), Some(password)) => {
            let (result, attempts) =
                crate::identity::level2::check_password(&servers, &user, password).await;
            for a in &attempts {
                if let Some(f) = &a.failure {
                    // The server's reason, never the password.
                    warn!(%peer, %address, server = %a.uri, reason = %bounded(f), "level 2: directory server did not accept");
                }
            }
            match result {
                Ok(i) => {
                    info!(%peer, %address, server = %servers[i].uri, tried = attempts.len(), "level 2 passed");
                    true
                }
                Err(e) => {
                    warn!(%peer, %address, tried = attempts.len(), reason = %e, "login refused: level 2");
                    return refuse(StatusCode::UNAUTHORIZED, "Level2Refused", e.to_string());
                }
            }
        }
    };
    let session = Session {
        address,
        cluster: api.cluster.clone(),
        expires: now.saturating_add(api.session_ttl),
        fingerprint: hex::encode(c.nonce),
        node: api.node_address.clone(),
        level2: passed_level2,
        hand_over_until: None,
        hand_over_to: None,
    };
    info!(%peer, address = ?session.address, expires = session.expires, "login");
    session_answer(&api, &session)
}

/// The answer that makes `s` (signed here) the browser's session on this
/// node: its cookie, and what it says.
fn session_answer(api: &HttpApi, s: &Session) -> Response {
    match api.session_cookie_for(s) {
        Ok(cookie) => (
            [
                (header::SET_COOKIE, cookie),
                (header::CACHE_CONTROL, "no-store".to_string()),
            ],
            Json(json!({
                "address": s.address,
                "node": s.node,
                "expires": s.expires,
                "level2": s.level2,
            })),
        )
            .into_response(),
        Err(e) => {
            warn!(error = %e, "could not sign a session token");
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal",
                "could not sign the session",
            )
        }
    }
}

/// Hand-over tokens already adopted (their SHA-256), each kept until it
/// expires; at most [`UsedTokens::MAX`], the soonest to expire dropped
/// first when full (a flood of adoptions then costs its oldest a replay
/// window, never memory).
#[derive(Default)]
struct UsedTokens {
    by_digest: std::collections::HashMap<[u8; 32], u64>,
}

impl UsedTokens {
    const MAX: usize = 100_000;

    /// Record `digest` (expiring at `expires`); false when it was there.
    fn insert(&mut self, digest: [u8; 32], expires: u64, now: u64) -> bool {
        if self.by_digest.len() >= Self::MAX {
            self.by_digest.retain(|_, e| *e > now);
        }
        if self.by_digest.len() >= Self::MAX {
            if let Some(k) = self
                .by_digest
                .iter()
                .min_by_key(|(_, e)| **e)
                .map(|(k, _)| *k)
            {
                self.by_digest.remove(&k);
            }
        }
        self.by_digest.insert(digest, expires).is_none()
    }
}

/// How long a hand-over token may be adopted: time to load another
/// node's page.
pub const HAND_OVER_TTL: u64 = 60;

/// `POST /v1/auth/handover`: a hand-over token for the session (the user
/// moves to another node's page, whose cookie is its own): it lives
/// [`HAND_OVER_TTL`] and is no session itself; another node that trusts
/// this one makes a session from it ([`adopt`]) ending when this one
/// does. The page carries it in the other page's URL fragment (never
/// sent to a server but by that page's own POST).
async fn hand_over(
    State(api): State<Arc<HttpApi>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let s = match session_of(&api, peer, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct HandOver {
        to: String,
    }
    let to = match serde_json::from_slice::<HandOver>(&body) {
        Ok(h) => h.to,
        Err(e) => {
            warn!(%peer, error = %e, "hand-over refused: malformed body");
            return refuse(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("expected JSON {{\"to\": ADDRESS}}, the node that is to take the session over: {e}"),
            );
        }
    };
    // Only to a node whose sessions this cluster trusts: a token for any
    // other address could never be adopted anyway.
    let (satellites, _) = api.admission.session_facts().unwrap_or_default();
    if !api.is_trusted_node(&to, &satellites) {
        warn!(%peer, %to, "hand-over refused: not a node of the cluster");
        return refuse(
            StatusCode::BAD_REQUEST,
            "UnknownNode",
            format!("{to} is not a node of this cluster"),
        );
    }
    let now = now_secs();
    let ticket = Session {
        node: api.node_address.clone(),
        expires: now.saturating_add(HAND_OVER_TTL).min(s.expires),
        hand_over_until: Some(s.expires),
        hand_over_to: Some(to),
        ..s
    };
    match ticket.to_token(&api.node_key) {
        Ok(token) => {
            info!(%peer, address = %ticket.address, to = ?ticket.hand_over_to, "session handed over");
            (
                [(header::CACHE_CONTROL, "no-store")],
                Json(json!({"token": token, "expires": ticket.expires})),
            )
                .into_response()
        }
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "Internal", e.to_string()),
    }
}

/// `POST /v1/auth/adopt` `{token}`: a session here from another node's
/// (or this one's) hand-over token: the same address, level 2 and login
/// fingerprint (so revoking the login revokes both), ending when the
/// handed-over session does.
async fn adopt(
    State(api): State<Arc<HttpApi>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    body: Bytes,
) -> Response {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Adopt {
        token: String,
    }
    let Ok(req) = serde_json::from_slice::<Adopt>(&body) else {
        warn!(%peer, "adopt refused: malformed body");
        return refuse(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "expected JSON {\"token\"}",
        );
    };
    let s = match api.check_token(&req.token) {
        Ok(s) => s,
        Err(e) => {
            warn!(%peer, reason = %e, "adopt refused");
            return refuse(StatusCode::UNAUTHORIZED, "BadHandOver", e.to_string());
        }
    };
    let Some(until) = s.hand_over_until else {
        warn!(%peer, "adopt refused: a session, not a hand-over token");
        return refuse(
            StatusCode::UNAUTHORIZED,
            "BadHandOver",
            "a session token, not a hand-over token (POST /v1/auth/handover on its node)",
        );
    };
    if s.hand_over_to.as_deref() != Some(api.node_address.as_str()) {
        warn!(%peer, to = ?s.hand_over_to, "adopt refused: handed over to another node");
        return refuse(
            StatusCode::UNAUTHORIZED,
            "BadHandOver",
            "the session was handed over to another node",
        );
    }
    // Once: a token read on its way here is no second session.
    let digest: [u8; 32] = Sha256::digest(req.token.as_bytes()).into();
    if !lock(&api.adopted).insert(digest, s.expires, now_secs()) {
        warn!(%peer, "adopt refused: hand-over token already used");
        return refuse(
            StatusCode::UNAUTHORIZED,
            "BadHandOver",
            "this hand-over token was already used: hand the session over again",
        );
    }
    let session = Session {
        node: api.node_address.clone(),
        expires: until,
        hand_over_until: None,
        hand_over_to: None,
        ..s
    };
    info!(%peer, address = %session.address, "session adopted from a hand-over");
    session_answer(&api, &session)
}

/// `POST /v1/auth/logout`: the browser drops its session cookie. The
/// token itself stays valid until it expires (sessions are signed, not
/// stored); revoking it is the owner's `AccessPolicy` `revokedSessions`.
async fn logout() -> Response {
    (
        [
            (
                header::SET_COOKIE,
                format!("{COOKIE_NAME}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict"),
            ),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        Json(json!({"loggedOut": true})),
    )
        .into_response()
}

/// The value of the session cookie in `headers`, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == COOKIE_NAME)
        .map(|(_, v)| v)
}

async fn whoami(
    State(api): State<Arc<HttpApi>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
) -> Response {
    match session_of(&api, peer, &headers) {
        Ok(s) => Json(json!({
            "address": s.address,
            "cluster": s.cluster,
            "node": s.node,
            "expires": s.expires,
            "level2": s.level2,
            "fingerprint": s.fingerprint,
        }))
        .into_response(),
        Err(r) => *r,
    }
}

async fn push(
    State(api): State<Arc<HttpApi>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // With a session cookie, unsigned documents are authorised as the
    // session's address; without one, only signed documents are taken.
    let session = if session_cookie(&headers).is_some() {
        match session_of(&api, peer, &headers) {
            Ok(s) => Some(SessionSubject {
                address: s.address,
                level2: s.level2,
            }),
            Err(r) => return *r,
        }
    } else {
        None
    };
    match tokio::task::spawn_blocking(move || api.push(peer, &body, session)).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err((status, v))) => (status, Json(v)).into_response(),
        Err(e) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal",
            format!("push handler failed: {e}"),
        ),
    }
}

/// The parameters of `/v1/objects`.
#[derive(Default)]
struct ObjectQuery {
    kind: Option<crate::model::Kind>,
    namespace: Option<String>,
    name: Option<String>,
    purge: bool,
}

/// `kind`, `namespace`, `name` and `purge` of a query string (names are
/// DNS labels: no escapes are needed, and none are taken).
fn object_query(uri: &axum::http::Uri) -> Result<ObjectQuery, Box<Response>> {
    let mut q = ObjectQuery::default();
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if v.contains('%') || v.contains('+') {
            return Err(Box::new(refuse(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("{}: escapes are not taken in names", bounded(k)),
            )));
        }
        match k {
            "kind" => q.kind = kind_of(Some(v))?,
            "namespace" => q.namespace = Some(v.to_string()),
            "name" => q.name = Some(v.to_string()),
            "purge" => q.purge = v == "true" || v.is_empty(),
            other => {
                return Err(Box::new(refuse(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!(
                        "unknown parameter {:?}: expected kind, namespace, name, purge",
                        bounded(other)
                    ),
                )))
            }
        }
    }
    Ok(q)
}

fn kind_of(kind: Option<&str>) -> Result<Option<crate::model::Kind>, Box<Response>> {
    kind.map(|k| {
        crate::model::Kind::from_cli(k).ok_or_else(|| {
            Box::new(refuse(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("unknown kind {:?}", bounded(k)),
            ))
        })
    })
    .transpose()
}

/// The session and the `/v1/objects` parameters of a request.
fn session_and_query(
    api: &HttpApi,
    peer: SocketAddr,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
) -> Result<(Session, ObjectQuery), Box<Response>> {
    Ok((session_of(api, peer, headers)?, object_query(uri)?))
}

/// `GET /v1/objects?kind=&namespace=&name=`: the objects the session may
/// see (`get` with a name, else `list`), with status. An object the
/// session may not see is left out of a list; asked by name, refused.
async fn objects(
    State(api): State<Arc<HttpApi>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    use crate::model::access::Verb;
    let (
        session,
        ObjectQuery {
            kind,
            namespace,
            name,
            ..
        },
    ) = match session_and_query(&api, peer, &headers, &uri) {
        Ok(q) => q,
        Err(r) => return *r,
    };
    let verb = if name.is_some() {
        Verb::Get
    } else {
        Verb::List
    };
    let answer = tokio::task::spawn_blocking(move || {
        let records: Vec<_> = api
            .admission
            .store()
            .list(kind)
            .into_iter()
            .filter(|r| namespace.as_ref().is_none_or(|ns| r.key.namespace == *ns || r.key.namespace.is_empty()))
            .filter(|r| name.as_ref().is_none_or(|n| r.key.name == *n))
            .collect();
        let what: Vec<_> = records
            .iter()
            .map(|r| (r.key.kind, r.key.namespace.as_str(), Some(&r.object)))
            .collect();
        let allowed = api.admission.authorise_session_each(&session.address, session.level2, verb, &what);
        if name.is_some() {
            if let Some(Err(r)) = allowed.iter().find(|a| a.is_err()) {
                warn!(%peer, address = %session.address, code = r.code, reason = %r.reason, "get refused");
                return refuse(StatusCode::FORBIDDEN, r.code, r.reason.clone());
            }
            if records.is_empty() {
                return refuse(StatusCode::NOT_FOUND, "NotFound", "no such object");
            }
        }
        let visible: Vec<_> = records
            .into_iter()
            .zip(allowed)
            .filter(|(_, a)| a.is_ok())
            .map(|(r, _)| r)
            .collect();
        Json(json!({ "records": visible })).into_response()
    })
    .await;
    answer.unwrap_or_else(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, "Internal", e.to_string()))
}

/// `DELETE /v1/objects?kind=&namespace=&name=[&purge]`: delete one
/// object as the session (AccessPolicy `delete`); volumes are retained
/// unless `purge`.
async fn delete_object(
    State(api): State<Arc<HttpApi>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let (
        session,
        ObjectQuery {
            kind,
            namespace,
            name,
            purge,
        },
    ) = match session_and_query(&api, peer, &headers, &uri) {
        Ok(q) => q,
        Err(r) => return *r,
    };
    let (kind, name) = match (kind, name) {
        (Some(k), Some(n)) => (k, n),
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "kind and name are required",
            )
        }
    };
    let key = crate::model::ObjectKey::new(kind, namespace.as_deref(), &name);
    let mut batch = Batch::new(SourceId(PUSH_SOURCE.into()), Trust::Signed);
    batch.session = Some(SessionSubject {
        address: session.address,
        level2: session.level2,
    });
    batch.deletions.push(Deletion {
        key,
        at: "<http delete>".into(),
        tombstone: None,
        purge,
    });
    match tokio::task::spawn_blocking(move || api.admit(peer, batch)).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err((status, v))) => (status, Json(v)).into_response(),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "Internal", e.to_string()),
    }
}

/// How long a console ticket's password unlocks the console: time to
/// open a viewer with it; a session asks again for the next connection.
pub const CONSOLE_TICKET_TTL: Duration = Duration::from_secs(60);

/// The session of a request, or the 401 to answer.
fn session_of(
    api: &HttpApi,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<Session, Box<Response>> {
    let Some(token) = session_cookie(headers) else {
        warn!(%peer, "session refused: no cookie");
        return Err(Box::new(refuse(
            StatusCode::UNAUTHORIZED,
            "NoSession",
            "no session cookie: log in first (deorch login)",
        )));
    };
    api.check_session(token).map_err(|e| {
        let code = match e {
            LoginError::Expired => "SessionExpired",
            LoginError::Revoked(_) => "SessionRevoked",
            LoginError::UnknownNode(_) => "UntrustedNode",
            LoginError::WrongCluster(_) => "WrongCluster",
            _ => "BadSession",
        };
        warn!(%peer, code, reason = %e, "session refused");
        Box::new(refuse(StatusCode::UNAUTHORIZED, code, e.to_string()))
    })
}

/// `POST /v1/vms/{namespace}/{name}/console`: a one-time password that
/// unlocks the VM's consoles (VNC, its websocket, SPICE) on this node for
/// [`CONSOLE_TICKET_TTL`], for a session AccessPolicy allows `console` on
/// the VM. The consoles are locked otherwise; the viewer connects to the
/// node directly (no proxy).
async fn console_ticket(
    State(api): State<Arc<HttpApi>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    axum::extract::Path((namespace, name)): axum::extract::Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let session = match console_page::console_session(&api, peer, &headers, &namespace, &name).await
    {
        Ok(s) => s,
        Err(r) => return r,
    };
    let vm = format!("{}/{}", bounded(&namespace), bounded(&name));
    let Some(hv) = api.consoles.get() else {
        return refuse(
            StatusCode::CONFLICT,
            "NoConsole",
            "this node serves no consoles yet",
        );
    };
    match issue_console_ticket(hv.as_ref(), api.admission.store(), &namespace, &name).await {
        Ok(ticket) => {
            info!(%peer, address = %session.address, %vm, expires = %ticket["expires"], "console ticket issued");
            ([(header::CACHE_CONTROL, "no-store")], Json(ticket)).into_response()
        }
        Err((code, message)) => {
            warn!(%peer, %vm, code, reason = %message, "console refused");
            let status = if code == "NotFound" {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::CONFLICT
            };
            refuse(status, code, message)
        }
    }
}

/// A console ticket for the VM `namespace/name` on this node's
/// hypervisor: `{vm, host, vncPort, websocketPort, spicePort, password,
/// expires, url}`, or (code, why) — `NotFound`, `NotRunningHere`,
/// `ConsoleUnavailable`. Who may ask is the caller's business (the HTTP
/// API checks the session's policy; the local API is the node's user's).
pub async fn issue_console_ticket(
    hv: &dyn crate::driver::Hypervisor,
    store: &crate::store::Store,
    namespace: &str,
    name: &str,
) -> Result<Value, (&'static str, String)> {
    use crate::model::{Kind, ObjectKey};
    let key = ObjectKey::new(Kind::VirtualMachine, Some(namespace), name);
    let vm = format!("{}/{}", key.namespace, key.name);
    if store.get(&key).is_none() {
        return Err(("NotFound", format!("no VirtualMachine {}", bounded(&vm))));
    }
    let Some(console) = hv.console(&vm) else {
        return Err((
            "NotRunningHere",
            format!(
                "{vm} has no console on this node (not running here?): ask the node it runs on"
            ),
        ));
    };
    let password = crate::driver::console_password();
    hv.console_ticket(&vm, &password, CONSOLE_TICKET_TTL)
        .await
        .map_err(|e| ("ConsoleUnavailable", e.to_string()))?;
    let url = console
        .url
        .as_ref()
        .map(|u| format!("{u}&password={password}"));
    Ok(json!({
        "vm": vm,
        "host": console.host,
        "vncPort": console.vnc_port,
        "websocketPort": console.websocket_port,
        "websocketTls": console.websocket_tls,
        "spicePort": console.spice_port,
        "password": password,
        "expires": now_secs() + CONSOLE_TICKET_TTL.as_secs(),
        "url": url,
    }))
}

/// Load the node key at `path`, creating it (0600, on `network`) when the
/// file does not exist; the key is used on `network` either way.
pub fn load_or_create_node_key(
    path: &Path,
    network: crate::identity::Network,
) -> Result<PrivateKey, KeyError> {
    if !path.exists() {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| KeyError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        match PrivateKey::generate(network).save(path) {
            Ok(()) => info!(key = %path.display(), "generated the node key"),
            Err(KeyError::Exists(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(PrivateKey::load(path)?.with_network(network))
}
