//! `/healthz` and `/readyz` (src/http/health.rs): liveness answers while
//! the API serves; readiness only once the node started, not while it
//! stops, not while its manifest directory cannot be read, and, for a
//! gossiping node given seeds, only once it reached another member.
//! Real node processes over HTTPS (the node's pinned certificate), and
//! one API in this process for the moments a process shows too briefly
//! (before the node's tasks run, during a stop).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use deorch::admission::{Admission, AdmissionConfig};
use deorch::http::client::{request, NodeUrl, Reply};
use deorch::http::health::ReadyChecks;
use deorch::http::{HttpApi, HttpListener, HttpSettings};
use deorch::identity::{AddressType, Network, PrivateKey};
use deorch::store::Store;

use common::{gossip_address, Node};

const T: Duration = Duration::from_secs(10);

fn get(url: &NodeUrl, path: &str) -> Reply {
    request(url, "GET", path, None, None, b"", T).unwrap()
}

/// (status, body) of `GET path`.
fn probe(url: &NodeUrl, path: &str) -> (u16, String) {
    let r = get(url, path);
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

fn owner() -> String {
    PrivateKey::generate(Network::Mainnet)
        .address(AddressType::P2wpkh)
        .unwrap()
        .to_string()
}

fn url_of(n: &Node) -> NodeUrl {
    NodeUrl::parse(&n.http_url()).unwrap()
}

/// Poll `/readyz` until it answers `status` (bounded); the last answer.
fn readyz_becomes(n: &Node, status: u16, limit: Duration) -> (u16, String) {
    let url = url_of(n);
    let deadline = Instant::now() + limit;
    loop {
        let got = probe(&url, "/readyz");
        if got.0 == status {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still answers {got:?}, not {status}; log:\n{}",
            n.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_node_is_ready_once_started_and_not_while_its_manifest_directory_cannot_be_read() {
    let n = common::node_with_http("health-dir", &owner(), &[]);
    let url = url_of(&n);
    assert_eq!(probe(&url, "/healthz"), (200, "ok\n".into()));
    let (_, body) = readyz_becomes(&n, 200, T);
    assert_eq!(body, "ready\n");
    let r = get(&url, "/readyz");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // Without a session: a load balancer has none.
    assert!(r.header("set-cookie").is_none());

    // The directory goes away (an unmount, a rename): not ready, still
    // alive; back: ready again.
    let aside = n.dir.join("manifests-aside");
    std::fs::rename(&n.manifests, &aside).unwrap();
    let (_, body) = readyz_becomes(&n, 503, T);
    assert!(
        body.starts_with("not ready: the manifest directory cannot be read"),
        "{body}"
    );
    assert!(
        !body.contains(&*n.dir.to_string_lossy()),
        "no paths: {body}"
    );
    assert_eq!(probe(&url, "/healthz").0, 200);
    std::fs::rename(&aside, &n.manifests).unwrap();
    readyz_becomes(&n, 200, T);
}

#[test]
fn with_allow_empty_manifests_a_missing_directory_does_not_make_a_node_unready() {
    let n = common::node_with_http("health-empty", &owner(), &["--allow-empty-manifests"]);
    readyz_becomes(&n, 200, T);
    std::fs::remove_dir(&n.manifests).unwrap();
    // Asked several times over a rescan period: it stays ready.
    let url = url_of(&n);
    for _ in 0..10 {
        assert_eq!(probe(&url, "/readyz"), (200, "ready\n".into()));
        std::thread::sleep(Duration::from_millis(150));
    }
}

#[test]
fn with_seeds_a_gossiping_node_is_ready_only_once_it_reached_another_member() {
    let gossip = |seed: Option<&str>| {
        let mut flags = common::fast_gossip_flags();
        if let Some(s) = seed {
            flags.extend(["--seed".to_string(), s.to_string()]);
        }
        flags
    };
    let owner = owner();
    let flags = gossip(None);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut a = Node::new("health-a");
    a.name = "health-a".into();
    a.extra_args.extend(
        ["--http-listen", "127.0.0.1:0", "--cluster-owner", &owner]
            .iter()
            .chain(&flags)
            .map(|s| s.to_string()),
    );
    a.start();
    // No seeds: the first node of a cluster is ready once it gossips.
    readyz_becomes(&a, 200, T);

    // A seed that never answers: a UDP socket this test holds and never
    // reads.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let start = |name: &str, seed: &str| {
        let mut n = Node::new(name);
        n.name = name.into();
        let flags = gossip(Some(seed));
        n.extra_args.extend(
            ["--http-listen", "127.0.0.1:0", "--cluster-owner", &owner]
                .iter()
                .map(|s| s.to_string())
                .chain(flags),
        );
        n.start();
        n
    };
    let cut_off = start("health-b", &silent_addr);
    let joined = start("health-c", &gossip_address(&a));
    readyz_becomes(&joined, 200, T);
    // By now the cut-off node had as long as the joined one, and more.
    let url = url_of(&cut_off);
    for _ in 0..10 {
        let (status, body) = probe(&url, "/readyz");
        assert_eq!(status, 503, "{body}");
        assert_eq!(
            body, "not ready: gossip has reached no other member yet\n",
            "{body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(probe(&url, "/healthz").0, 200);
}

/// An API in this process, on loopback without TLS.
struct Rig {
    api: Arc<HttpApi>,
    url: NodeUrl,
    dir: std::path::PathBuf,
    _rt: tokio::runtime::Runtime,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rig() -> Rig {
    let dir = common::temp_dir("health-rig");
    let store = Arc::new(Store::open(&dir.join("store.redb")).unwrap());
    let owner = owner();
    let admission = Admission::new(
        store,
        AdmissionConfig {
            cluster: Some(owner.clone()),
            owner: Some(owner.clone()),
        },
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let api = HttpApi::new(
        admission,
        HttpSettings {
            cluster_owner: owner,
            node_key: PrivateKey::generate(Network::Mainnet),
            trusted_nodes: Vec::new(),
            login_ttl: Duration::from_secs(60),
            session_ttl: Duration::from_secs(60),
            challenge_limit: None,
        },
    )
    .unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(deorch::http::serve(
        HttpListener::Plain(listener),
        api.clone(),
        stop_rx,
    ));
    Rig {
        api,
        url: NodeUrl::parse(&format!("http://{addr}")).unwrap(),
        dir,
        _rt: rt,
        _stop: stop,
    }
}

#[test]
fn not_ready_before_the_node_started_and_once_it_stops() {
    let rig = rig();
    // Serving, but the node has not said its tasks run.
    assert_eq!(probe(&rig.url, "/healthz"), (200, "ok\n".into()));
    assert_eq!(
        probe(&rig.url, "/readyz"),
        (503, "not ready: starting\n".into())
    );
    let manifests = rig.dir.join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let (node_stop, shutdown) = tokio::sync::watch::channel(false);
    rig.api
        .set_ready_checks(ReadyChecks::new(Some(manifests), None, shutdown));
    assert_eq!(probe(&rig.url, "/readyz"), (200, "ready\n".into()));
    // The node received SIGTERM: out of rotation while requests drain.
    node_stop.send(true).unwrap();
    assert_eq!(
        probe(&rig.url, "/readyz"),
        (503, "not ready: stopping\n".into())
    );
    assert_eq!(probe(&rig.url, "/healthz").0, 200);
}

#[test]
fn a_gossiping_node_is_not_ready_before_its_gossip_task_runs() {
    let rig = rig();
    let (_node_stop, shutdown) = tokio::sync::watch::channel(false);
    rig.api
        .set_ready_checks(ReadyChecks::new(None, Some(false), shutdown));
    // No radar yet: the gossip task has not published this node.
    assert_eq!(
        probe(&rig.url, "/readyz"),
        (503, "not ready: gossip is not running yet\n".into())
    );
}
