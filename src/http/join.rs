//! Joining a cluster through any node's HTTP API (`deorch node join`,
//! docs/SIGNING.md "Joining").
//!
//! - `GET /v1/join`: what a new machine needs to become a member: the
//!   cluster ID and owner, gossip addresses to join through (this node's
//!   and every live member's), the signed AccessPolicies that admit the
//!   members (the joiner verifies them itself against the owner), and the
//!   requests waiting for the owner. Public: nothing in it is secret (it
//!   is what gossip carries), and the joiner reaches it pinned to the
//!   node's TLS certificate.
//! - `POST /v1/join`: a request to be admitted: name, node address, time,
//!   signed by the node's key (domain [`JOIN_DOMAIN`]), so nobody can ask
//!   in another machine's name. Requests wait here (bounded, persisted in
//!   `STATE_DIR/join-requests.json`, dropped after a day or once the
//!   address is admitted) until the owner signs a new generation of the
//!   members policy (`deorch node approve`, or the web page); nothing is
//!   admitted by asking.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{info, warn};

use super::tls::PeerAddr;
use super::{lock, now_secs, refuse, HttpApi};
use crate::identity::level2::RateLimiter;
use crate::identity::{node_sig, Address};

/// Domain of a join request's signature.
pub const JOIN_DOMAIN: &str = "deorch-join/v1";
/// Requests kept at most (the oldest goes first).
const MAX_PENDING: usize = 64;
/// A request older than this is dropped (seconds).
const PENDING_TTL: u64 = 24 * 3600;
/// How far a request's time may be from the node's clock (seconds).
const CLOCK_SKEW: u64 = 300;

/// A request to be admitted, as the joiner signs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinRequest {
    /// The name the node asks for (a DNS label).
    pub name: String,
    /// Its node ID (P2WPKH address of its key).
    pub address: String,
    /// Unix seconds when it asked.
    pub time: u64,
    /// Hex of the 65-byte node signature of [`JoinRequest::payload`].
    pub signature: String,
}

impl JoinRequest {
    /// What the signature covers.
    pub fn payload(name: &str, address: &str, time: u64) -> Vec<u8> {
        format!("{name}\n{address}\n{time}").into_bytes()
    }

    /// Signed by `key` for `cluster`.
    pub fn signed(
        key: &crate::identity::PrivateKey,
        cluster: &str,
        name: &str,
        address: &str,
        time: u64,
    ) -> JoinRequest {
        let sig = node_sig::sign(
            key,
            JOIN_DOMAIN,
            cluster,
            &JoinRequest::payload(name, address, time),
        );
        JoinRequest {
            name: name.into(),
            address: address.into(),
            time,
            signature: hex::encode(sig),
        }
    }

    /// Why this request is not acceptable in `cluster` at `now`.
    pub fn check(&self, cluster: &str, now: u64) -> Result<(), String> {
        if !crate::manifest::semantic::is_dns_label(&self.name) {
            return Err(format!(
                "name {:?} is not a DNS label (lower-case letters, digits, '-', at most 63)",
                super::bounded(&self.name)
            ));
        }
        Address::parse(&self.address).map_err(|e| {
            format!(
                "address {:?} is not a node address: {e}",
                super::bounded(&self.address)
            )
        })?;
        if self.time.abs_diff(now) > CLOCK_SKEW {
            return Err(format!(
                "time {} is {} s from this node's clock (at most {CLOCK_SKEW} s): set the clock (NTP)",
                self.time,
                self.time.abs_diff(now)
            ));
        }
        let sig = hex::decode(&self.signature).map_err(|_| "signature is not hex".to_string())?;
        if !node_sig::verify_str(
            &self.address,
            JOIN_DOMAIN,
            cluster,
            &JoinRequest::payload(&self.name, &self.address, self.time),
            &sig,
        ) {
            return Err(format!(
                "the signature is not {}'s for cluster {cluster}",
                self.address
            ));
        }
        Ok(())
    }
}

/// A request waiting for the owner, as `GET /v1/join` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pending {
    /// The name asked for.
    pub name: String,
    /// The node's address.
    pub address: String,
    /// Where the request came from.
    pub from: String,
    /// Unix seconds of the request.
    pub time: u64,
}

/// What the node keeps for joins: the requests, their file and where the
/// gossip addresses come from.
pub struct JoinDesk {
    pending: Mutex<BTreeMap<String, Pending>>,
    file: OnceLock<PathBuf>,
    seeds: OnceLock<Arc<dyn Fn() -> Vec<String> + Send + Sync>>,
    limiter: Mutex<RateLimiter>,
}

impl Default for JoinDesk {
    fn default() -> JoinDesk {
        JoinDesk {
            pending: Mutex::new(BTreeMap::new()),
            file: OnceLock::new(),
            seeds: OnceLock::new(),
            // 20 requests a minute per client address.
            limiter: Mutex::new(RateLimiter::new(20, 60, 4096)),
        }
    }
}

impl std::fmt::Debug for JoinDesk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinDesk")
            .field("pending", &lock(&self.pending).len())
            .finish()
    }
}

impl JoinDesk {
    /// Keep requests in `file` (read now: requests survive a restart) and
    /// give joiners the gossip addresses `seeds` returns.
    pub fn set(&self, file: PathBuf, seeds: Arc<dyn Fn() -> Vec<String> + Send + Sync>) {
        if let Ok(text) = std::fs::read(&file) {
            match serde_json::from_slice::<BTreeMap<String, Pending>>(&text) {
                Ok(p) => *lock(&self.pending) = p,
                Err(e) => {
                    warn!(file = %file.display(), error = %e, "join requests unreadable: starting with none")
                }
            }
        }
        let _ = self.file.set(file);
        let _ = self.seeds.set(seeds);
    }

    fn save(&self, pending: &BTreeMap<String, Pending>) {
        let Some(file) = self.file.get() else { return };
        let text = serde_json::to_vec_pretty(pending).unwrap_or_default();
        if let Err(e) =
            crate::state_file::write_with(file, &text, crate::state_file::Options::private())
        {
            warn!(file = %file.display(), error = %e, "could not keep the join requests");
        }
    }

    /// The waiting requests, without those admitted by now or too old.
    fn current(&self, admitted: &BTreeMap<String, String>) -> Vec<Pending> {
        let now = now_secs();
        let mut p = lock(&self.pending);
        let before = p.len();
        p.retain(|a, r| !admitted.contains_key(a) && now.saturating_sub(r.time) < PENDING_TTL);
        if p.len() != before {
            self.save(&p);
        }
        p.values().cloned().collect()
    }
}

/// `GET /v1/join`.
pub async fn info(State(api): State<Arc<HttpApi>>) -> Response {
    let admission = &api.admission;
    let admitted = admission.satellites().unwrap_or_default();
    let seeds = api.join.seeds.get().map(|f| f()).unwrap_or_default();
    Json(json!({
        "cluster": api.cluster,
        "owner": admission.owner_now(),
        "node": api.node_address,
        "nodeName": admitted.get(&api.node_address),
        "seeds": seeds,
        "members": admission.member_policies(),
        "admitted": admitted,
        "requests": api.join.current(&admitted),
    }))
    .into_response()
}

/// `POST /v1/join`.
pub async fn request(
    State(api): State<Arc<HttpApi>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    body: Bytes,
) -> Response {
    if let Err(crate::identity::level2::Level2Error::RateLimited { retry_after_secs }) =
        lock(&api.join.limiter).check(&peer.ip().to_string(), now_secs())
    {
        warn!(%peer, retry_after_secs, "join request refused: rate limited");
        return super::rate_limited(
            format!("too many join requests from {}", peer.ip()),
            retry_after_secs,
        );
    }
    let req: JoinRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            warn!(%peer, "join request refused: not a join request");
            return refuse(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("not a join request ({{name, address, time, signature}}): {e}"),
            );
        }
    };
    if let Err(why) = req.check(&api.cluster, now_secs()) {
        warn!(%peer, name = %super::bounded(&req.name), reason = %why, "join request refused");
        return refuse(StatusCode::BAD_REQUEST, "BadRequest", why);
    }
    let admitted = api.admission.satellites().unwrap_or_default();
    if let Some(name) = admitted.get(&req.address) {
        return Json(json!({ "admitted": true, "name": name })).into_response();
    }
    if let Some((a, _)) = admitted.iter().find(|(_, n)| **n == req.name) {
        warn!(%peer, name = %req.name, "join request refused: the name is taken");
        return refuse(
            StatusCode::CONFLICT,
            "NameTaken",
            format!(
                "the name {} belongs to the member {a}: ask with another --name",
                req.name
            ),
        );
    }
    let mut pending = lock(&api.join.pending);
    if pending
        .get(&req.address)
        .is_some_and(|p| p.time >= req.time)
    {
        // A replay or an older copy: the newer one stands.
        return Json(json!({ "admitted": false, "pending": true })).into_response();
    }
    if !pending.contains_key(&req.address) && pending.len() >= MAX_PENDING {
        if let Some(oldest) = pending
            .iter()
            .min_by_key(|(_, p)| p.time)
            .map(|(a, _)| a.clone())
        {
            pending.remove(&oldest);
        }
    }
    pending.insert(
        req.address.clone(),
        Pending {
            name: req.name.clone(),
            address: req.address.clone(),
            from: peer.ip().to_string(),
            time: req.time,
        },
    );
    api.join.save(&pending);
    info!(%peer, name = %req.name, address = %req.address, "join request: waiting for the owner's approval");
    Json(json!({ "admitted": false, "pending": true })).into_response()
}

/// The members policy `policy` (a signed AccessPolicy object as the store
/// holds it) with `name`/`address` added to `spec.satellites`, at the next
/// generation, without status or signature: what the owner signs to
/// approve a join. Refuses a name or address the policy already lists.
pub fn admit_in(policy: &Value, name: &str, address: &str) -> Result<Value, String> {
    let mut v = policy.clone();
    let obj = v.as_object_mut().ok_or("the policy is not an object")?;
    obj.remove("status");
    let meta = obj
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or("the policy has no metadata")?;
    let generation = meta
        .get("generation")
        .and_then(Value::as_i64)
        .ok_or("the policy has no generation")?;
    meta.insert("generation".into(), json!(generation + 1));
    if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
        a.remove(crate::identity::signed::SIGNER_ANNOTATION);
        a.remove(crate::identity::signed::SIGNATURE_ANNOTATION);
        if a.is_empty() {
            meta.remove("annotations");
        }
    }
    let sats = obj
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .ok_or("the policy has no spec")?
        .entry("satellites")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or("spec.satellites is not a list")?;
    for s in sats.iter() {
        if s["address"] == address {
            return Err(format!(
                "{address} is already admitted as {}",
                s["name"].as_str().unwrap_or("?")
            ));
        }
        if s["name"] == name {
            return Err(format!(
                "the name {name} belongs to {} already",
                s["address"].as_str().unwrap_or("?")
            ));
        }
    }
    sats.push(json!({ "name": name, "address": address }));
    Ok(v)
}

/// The join request a command line `approve NAME` names, if it is one
/// (the web page's approval: [`approval`]).
pub fn approve_words(q: &str) -> Option<&str> {
    let mut w = q.split_whitespace();
    match (w.next(), w.next(), w.next()) {
        (Some("approve"), Some(who), None) => Some(who),
        _ => None,
    }
}

/// The web page's answer to `approve WHO`: the plan, the request as a
/// row, and what the page signs (the members policy's next generation
/// and its signing payload). Nothing is applied here: the page signs in
/// the browser with the user's key and pushes the signed policy
/// (`POST /v1/manifests`), which admission checks as any.
pub fn approval(api: &HttpApi, who: &str, run: bool) -> Response {
    let bad = |code: &str, msg: String| refuse(StatusCode::BAD_REQUEST, code, msg);
    if run {
        return bad(
            "SignInPage",
            "an approval is signed with the owner's key: the page signs it and pushes the signed members policy".into(),
        );
    }
    let admitted = api.admission.satellites().unwrap_or_default();
    let waiting = api.join.current(&admitted);
    let Some(req) = waiting.iter().find(|r| r.name == who || r.address == who) else {
        let names: Vec<&str> = waiting.iter().map(|r| r.name.as_str()).collect();
        return bad(
            "NotFound",
            format!(
                "no node named {} asks to join (waiting: {})",
                super::bounded(who),
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ),
        );
    };
    let members = api.admission.member_policies();
    let policy = match members.as_slice() {
        [one] => one,
        [] => {
            return bad(
                "NoMembersPolicy",
                "no AccessPolicy admits satellites yet: sign one listing the first nodes".into(),
            )
        }
        _ => {
            return bad(
                "SeveralMembersPolicies",
                "several AccessPolicies admit satellites: approve with deorch node approve --policy NAME"
                    .into(),
            )
        }
    };
    let next = match admit_in(policy, &req.name, &req.address) {
        Ok(n) => n,
        Err(e) => return bad("Conflict", e),
    };
    let payload = match crate::identity::signing_payload(&next, &api.cluster) {
        Ok(p) => p,
        Err(e) => return bad("Internal", e.to_string()),
    };
    let policy_name = next["metadata"]["name"].as_str().unwrap_or("members");
    let generation = next["metadata"]["generation"].clone();
    let ago = now_secs().saturating_sub(req.time);
    Json(json!({
        "plan": {
            "verb": "approve-node",
            "summary": format!(
                "Admit {} ({}) as a member: AccessPolicy/{policy_name} generation {generation}, signed by your key",
                req.name, req.address
            ),
            "cli": format!("deorch node approve {} --node URL --key OWNER.key", req.name),
            "changes": true,
            "manifest": serde_saphyr::to_string(&next).unwrap_or_default(),
            "sign": { "object": next, "payload": payload },
        },
        "results": [{
            "kind": "JoinRequest",
            "namespace": "",
            "name": req.name,
            "detail": format!("asks to join, from {}, {ago} s ago", req.from),
            "cli": "deorch node requests --node URL",
            "address": req.address,
        }],
        "suggestions": [],
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{AddressType, Network, PrivateKey};

    #[test]
    fn a_request_is_checked_for_its_signer_cluster_name_and_clock() {
        let key = PrivateKey::generate(Network::Mainnet);
        let addr = key.address(AddressType::P2wpkh).unwrap().to_string();
        let r = JoinRequest::signed(&key, "c1", "sat-c", &addr, 1000);
        assert_eq!(r.check("c1", 1100), Ok(()));
        assert!(r.check("c2", 1100).unwrap_err().contains("signature"));
        assert!(r.check("c1", 2000).unwrap_err().contains("clock"));
        let other = PrivateKey::generate(Network::Mainnet);
        let other_addr = other.address(AddressType::P2wpkh).unwrap().to_string();
        // Asking in another machine's name.
        let mut forged = JoinRequest::signed(&other, "c1", "sat-c", &other_addr, 1000);
        forged.address = addr.clone();
        assert!(forged.check("c1", 1000).unwrap_err().contains("signature"));
        let bad = JoinRequest::signed(&key, "c1", "Not_A_Label", &addr, 1000);
        assert!(bad.check("c1", 1000).unwrap_err().contains("name"));
    }

    #[test]
    fn approval_adds_the_satellite_at_the_next_generation_unsigned() {
        let policy = json!({
            "apiVersion": "deorch.dev/v1alpha1", "kind": "AccessPolicy",
            "metadata": {"name": "members", "generation": 3, "annotations": {
                "deorch.dev/signer": "x", "deorch.dev/signature": "y"}},
            "spec": {"satellites": [{"name": "a", "address": "bc1qa"}], "rules": []},
            "status": {"x": 1}
        });
        let v = admit_in(&policy, "c", "bc1qc").unwrap();
        assert_eq!(v["metadata"]["generation"], 4);
        assert!(v["metadata"].get("annotations").is_none());
        assert!(v.get("status").is_none());
        assert_eq!(
            v["spec"]["satellites"][1],
            json!({"name": "c", "address": "bc1qc"})
        );
        assert!(admit_in(&policy, "a", "bc1qz")
            .unwrap_err()
            .contains("belongs"));
        assert!(admit_in(&policy, "z", "bc1qa")
            .unwrap_err()
            .contains("already"));
    }
}
