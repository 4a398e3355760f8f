//! A multi-document push racing a local apply of one of its objects: the
//! push is all in the store or none of it, never half. The push goes
//! through the real HTTP API (axum on loopback, `POST /v1/manifests`), the
//! local apply through the local API's handler, both over one store and
//! one admission, as in a node.
//!
//! Random interleavings alone rarely overlap on two cores, so the store's
//! fail point (run between a batch's checks and its commit, with the
//! writer lock held) first holds each writer exactly there while the
//! other one starts; then 1,000 runs with random delays, each checked
//! against consistent snapshots of the store taken all along.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deorch::admission::{Admission, AdmissionConfig};
use deorch::api::server::{handle, ServerFacts};
use deorch::api::{Request, Response};
use deorch::http::client::{request, NodeUrl, Reply};
use deorch::http::{HttpApi, HttpListener, HttpSettings};
use deorch::identity::{sign_manifest, AddressType, Network, PrivateKey};
use deorch::model::{Kind, ObjectKey};
use deorch::store::{Record, Store};
use serde_json::json;

mod common;

const T: Duration = Duration::from_secs(20);

struct Rig {
    dir: std::path::PathBuf,
    admission: Arc<Admission>,
    url: NodeUrl,
    owner_key: PrivateKey,
    owner: String,
    _rt: tokio::runtime::Runtime,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rig() -> Rig {
    let dir = common::temp_dir("admission-race");
    let store = Arc::new(Store::open(&dir.join("store.redb")).unwrap());
    let owner_key = PrivateKey::generate(Network::Regtest);
    let owner = owner_key.address(AddressType::P2wpkh).unwrap().to_string();
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
        admission.clone(),
        HttpSettings {
            cluster_owner: owner.clone(),
            node_key: PrivateKey::generate(Network::Regtest),
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
        api,
        stop_rx,
    ));
    Rig {
        dir,
        admission,
        url: NodeUrl::parse(&format!("http://{addr}")).unwrap(),
        owner_key,
        owner,
        _rt: rt,
        _stop: stop,
    }
}

fn net_yaml(name: &str, mtu: u64) -> String {
    format!("apiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata:\n  name: {name}\nspec:\n  mtu: {mtu}\n")
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new(Kind::Network, None, name)
}

impl Rig {
    /// `names` at `generation`, signed by the owner, pushed as one request.
    fn push(&self, names: &[&str], mtu: u64, generation: i64) -> Reply {
        self.post(&self.signed(names, mtu, generation))
    }

    /// The body of such a push.
    fn signed(&self, names: &[&str], mtu: u64, generation: i64) -> Vec<u8> {
        let body: Vec<String> = names
            .iter()
            .map(|n| {
                let parsed = deorch::manifest::parse_str(Path::new("t.yaml"), &net_yaml(n, mtu));
                let mut v = parsed.documents[0].object.to_value();
                v["metadata"]["generation"] = json!(generation);
                let s =
                    sign_manifest(&v, &self.owner, &self.owner_key, AddressType::P2wpkh).unwrap();
                serde_saphyr::to_string(&s).unwrap()
            })
            .collect();
        body.join("---\n").into_bytes()
    }

    fn post(&self, body: &[u8]) -> Reply {
        request(
            &self.url,
            "POST",
            "/v1/manifests",
            Some("application/yaml"),
            None,
            body,
            T,
        )
        .unwrap()
    }

    /// An unsigned apply of `name` through the local API's handler.
    fn local_apply(&self, name: &str, mtu: u64) -> Response {
        handle(
            Request::Apply {
                filename: "local.yaml".into(),
                yaml: net_yaml(name, mtu),
                dry_run: false,
            },
            &self.admission,
            &ServerFacts {
                name: "n".into(),
                hypervisor: "fake".into(),
                storage: "fake".into(),
                manifests: String::new(),
                http_url: None,
                radar: None,
            },
            Instant::now(),
        )
    }

    fn store(&self) -> &Store {
        self.admission.store()
    }

    /// One consistent snapshot of the Networks (one read of the index).
    fn snapshot(&self) -> Vec<Record> {
        self.store().list(Some(Kind::Network))
    }
}

fn find<'a>(snap: &'a [Record], name: &str) -> &'a Record {
    snap.iter().find(|r| r.key == key(name)).unwrap()
}

fn mtu(r: &Record) -> u64 {
    r.object["spec"]["mtu"].as_u64().unwrap()
}

/// A fail point that holds batches whose keys satisfy `pick` until
/// released: `reached` receives their keys first.
struct Gate {
    reached: mpsc::Receiver<Vec<ObjectKey>>,
    release: mpsc::Sender<()>,
}

fn gate(store: &Store, pick: impl Fn(&[ObjectKey]) -> bool + Send + Sync + 'static) -> Gate {
    let (reached_tx, reached) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let reached_tx = Mutex::new(reached_tx);
    let release_rx = Mutex::new(release_rx);
    store.set_fail_point(Some(Arc::new(move |keys: &[ObjectKey]| {
        if pick(keys) {
            let _ = reached_tx.lock().unwrap().send(keys.to_vec());
            let _ = release_rx.lock().unwrap().recv_timeout(T);
        }
    })));
    Gate { reached, release }
}

#[test]
fn a_push_held_between_its_checks_and_its_commit_lands_whole_and_a_refused_one_not_at_all() {
    let rig = Arc::new(rig());
    let abc = ["a", "b", "c"];
    assert_eq!(rig.push(&abc, 1500, 1).status, 200);

    // 1. The push is held at the fail point (checks passed, not committed)
    // while a local apply of b starts: the local apply waits, and nobody
    // sees any of the push until all of it is there.
    let g = gate(rig.store(), |k| k.len() == 3);
    let pusher = {
        let rig = rig.clone();
        std::thread::spawn(move || rig.push(&abc, 9000, 2))
    };
    let held = g
        .reached
        .recv_timeout(T)
        .expect("the push reached the fail point");
    assert_eq!(held, abc.map(key).to_vec());
    let local_done = Arc::new(AtomicBool::new(false));
    let local = {
        let rig = rig.clone();
        let done = local_done.clone();
        std::thread::spawn(move || {
            let r = rig.local_apply("b", 7777);
            done.store(true, Ordering::SeqCst);
            r
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !local_done.load(Ordering::SeqCst),
        "the local apply slipped in between the push's checks and its commit"
    );
    let snap = rig.snapshot();
    assert!(
        abc.iter().all(|n| find(&snap, n).generation == 1),
        "part of a held push is visible: {snap:?}"
    );
    g.release.send(()).unwrap();
    let pushed = pusher.join().unwrap();
    assert_eq!(pushed.status, 200, "{:?}", pushed.json());
    match local.join().unwrap() {
        Response::Applied { objects } => assert_eq!(objects[0].generation, 3),
        other => panic!("{other:?}"),
    }
    let snap = rig.snapshot();
    for n in ["a", "c"] {
        assert_eq!((find(&snap, n).generation, mtu(find(&snap, n))), (2, 9000));
        assert_eq!(find(&snap, n).source.0, "push");
    }
    let b = find(&snap, "b");
    assert_eq!(
        (b.generation, mtu(b), b.source.0.as_str()),
        (3, 7777, "api")
    );

    // 2. The local apply is held at the fail point while a push of a, b, c
    // at generation 3 starts: once it commits, b is at 4, so the push is
    // refused (Stale) and none of it lands: a and c stay as they were.
    let g = gate(rig.store(), |k| k.len() == 1);
    let local = {
        let rig = rig.clone();
        std::thread::spawn(move || rig.local_apply("b", 6666))
    };
    g.reached
        .recv_timeout(T)
        .expect("the local apply reached the fail point");
    let pusher = {
        let rig = rig.clone();
        std::thread::spawn(move || rig.push(&abc, 1280, 3))
    };
    std::thread::sleep(Duration::from_millis(300));
    g.release.send(()).unwrap();
    assert!(matches!(local.join().unwrap(), Response::Applied { .. }));
    let refused = pusher.join().unwrap();
    assert_eq!(refused.status, 409, "{:?}", refused.json());
    let v = refused.json();
    assert_eq!(v["refused"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["refused"][0]["object"], "Network/default/b");
    assert_eq!(v["refused"][0]["code"], "Stale");
    let snap = rig.snapshot();
    for n in ["a", "c"] {
        assert_eq!((find(&snap, n).generation, mtu(find(&snap, n))), (2, 9000));
    }
    assert_eq!(find(&snap, "b").generation, 4);
    rig.store().set_fail_point(None);
}

#[test]
fn a_thousand_random_races_never_leave_half_a_push() {
    let rig = Arc::new(rig());
    let abc = ["a", "b", "c"];
    assert_eq!(rig.push(&abc, 1000, 1).status, 200);
    let seed = std::env::var("DEORCH_RACE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("seed {seed} (DEORCH_RACE_SEED replays it)");
    let mut rng = common::Rng(seed);
    // Every batch waits a random moment at the fail point, widening the
    // window between checks and commit.
    let hold_us = Arc::new(AtomicU64::new(0));
    {
        let hold = hold_us.clone();
        rig.store()
            .set_fail_point(Some(Arc::new(move |_: &[ObjectKey]| {
                std::thread::sleep(Duration::from_micros(hold.load(Ordering::SeqCst)));
            })));
    }
    let runs: u64 = std::env::var("DEORCH_RACE_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let (mut whole, mut none, mut samples) = (0, 0, 0u64);
    let started = Instant::now();
    for run in 0..runs {
        let before = rig.snapshot();
        let g = before.iter().map(|r| r.generation).max().unwrap() + 1;
        let push_mtu = 2000 + run;
        let local_mtu = 10_000 + run;
        hold_us.store(rng.below(1500), Ordering::SeqCst);
        // The local apply is quicker than a push (HTTP, three signatures
        // to verify): give it more head start to lose, so both orders come.
        let (push_delay, local_delay) = (rng.below(1000), rng.below(6000));
        let body = rig.signed(&abc, push_mtu, g);
        let stop = Arc::new(AtomicBool::new(false));
        // A reader takes consistent snapshots all along: a and c (which
        // only the push writes) move together, and b never shows the
        // push's content unless a and c do.
        let sampler = {
            let rig = rig.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let s = rig.snapshot();
                    let (a, b, c) = (find(&s, "a"), find(&s, "b"), find(&s, "c"));
                    let pushed = |r: &Record| mtu(r) == push_mtu;
                    assert_eq!(
                        pushed(a),
                        pushed(c),
                        "run {run}: half a push visible: a {a:?} c {c:?}"
                    );
                    assert!(!pushed(b) || pushed(a), "run {run}: b alone from the push");
                    n += 1;
                }
                n
            })
        };
        let pusher = {
            let rig = rig.clone();
            std::thread::spawn(move || {
                spin(push_delay);
                rig.post(&body)
            })
        };
        let local = {
            let rig = rig.clone();
            std::thread::spawn(move || {
                spin(local_delay);
                rig.local_apply("b", local_mtu)
            })
        };
        let pushed = pusher.join().unwrap();
        let applied = local.join().unwrap();
        stop.store(true, Ordering::SeqCst);
        samples += sampler.join().unwrap();
        assert!(matches!(applied, Response::Applied { .. }), "{applied:?}");
        let s = rig.snapshot();
        let (a, b, c) = (find(&s, "a"), find(&s, "b"), find(&s, "c"));
        match pushed.status {
            200 => {
                whole += 1;
                for r in [a, c] {
                    assert_eq!((r.generation, mtu(r)), (g, push_mtu), "run {run}");
                }
                // b: the push's, or the local apply's on top of it.
                assert!(
                    (b.generation, mtu(b)) == (g, push_mtu)
                        || (b.generation == g + 1 && mtu(b) == local_mtu),
                    "run {run}: b {b:?}"
                );
            }
            409 => {
                none += 1;
                assert_eq!(pushed.json()["refused"][0]["code"], "Stale", "run {run}");
                for n in ["a", "c"] {
                    let was = find(&before, n);
                    let now = find(&s, n);
                    assert_eq!(
                        (now.generation, mtu(now)),
                        (was.generation, mtu(was)),
                        "run {run}: a refused push changed {n}"
                    );
                }
                assert_eq!(mtu(b), local_mtu, "run {run}");
            }
            other => panic!("run {run}: push answered {other}: {:?}", pushed.json()),
        }
    }
    rig.store().set_fail_point(None);
    eprintln!(
        "{runs} runs in {:.1} s: push whole {whole}, push refused whole {none}, {samples} snapshots checked",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(whole + none, runs);
}

/// Busy-wait `us` microseconds (a sleep is too coarse to interleave).
fn spin(us: u64) {
    let end = Instant::now() + Duration::from_micros(us);
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}
