//! One corpus of documents, every source, the same verdict.
//!
//! The corpus (signed with real keys): an owner-signed AccessPolicy, a
//! document signed by an admin that policy names, a VirtualMachine signed
//! by a stranger (the gossip bug: a peer could make a signed-mode node run
//! a VM signed by any key), one signed for another cluster, an unsigned
//! one, a tampered one, a second version signed with a generation already
//! stored (stale), and one signed by a subject whose only rule needs a
//! level-2 password check (never through a signature).
//!
//! Sent through each source of real `deorch node run` processes: the
//! manifest directory, the local API (`deorch apply`), the HTTP push, a
//! git repository the node follows, and gossip between two real nodes
//! (documents an honest node refuses to publish come from a rogue peer:
//! the gossip library in this process, `AcceptAll`, over UDP). Each
//! verdict is read back as the operator sees it: the node's events about
//! the object (`Request::Events`), whose reason is admission's verdict.
//!
//! The same verdict is expected everywhere, with one documented
//! exception: an unsigned document is `Applied` from the node-local
//! sources (directory, local API) and `Unsigned` from the others.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Node;
use deorch::api::{Request, Response};
use deorch::gossip::membership::SwimConfig;
use deorch::gossip::transport::{run_udp, Command as GossipCommand, UdpTransport};
use deorch::gossip::{AcceptAll, DocKey, Document, GossipConfig, GossipNode, NodeId, Transport};
use deorch::http::client::{request, NodeUrl};
use deorch::identity::{sign_manifest, AddressType, Network, PrivateKey};
use serde_json::{json, Value};

fn key() -> (PrivateKey, String) {
    let k = PrivateKey::generate(Network::Mainnet);
    let a = k.address(AddressType::P2wpkh).unwrap().to_string();
    (k, a)
}

/// A document as the parser types it (defaults applied: what a signature
/// covers), at `generation` if given.
fn doc(yaml: &str, generation: Option<i64>) -> Value {
    let parsed = deorch::manifest::parse_str(Path::new("t.yaml"), yaml);
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    let mut v = parsed.documents[0].object.to_value();
    if let Some(g) = generation {
        v["metadata"]["generation"] = json!(g);
    }
    v
}

fn sign(v: &Value, cluster: &str, k: &PrivateKey) -> Value {
    sign_manifest(v, cluster, k, AddressType::P2wpkh).unwrap()
}

fn net(name: &str, mtu: u32) -> String {
    format!("apiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata:\n  name: {name}\nspec:\n  mtu: {mtu}\n")
}

/// One case: documents sent in order to one object, and the verdict each
/// must get from a source that takes only signed documents.
struct Case {
    label: &'static str,
    kind: &'static str,
    name: &'static str,
    docs: Vec<Value>,
    expect: Vec<&'static str>,
}

struct Corpus {
    owner: String,
    cases: Vec<Case>,
}

fn corpus() -> (Corpus, PrivateKey) {
    let (owner_key, owner) = key();
    let (admin_key, admin) = key();
    let (guarded_key, guarded) = key();
    let (stranger_key, _) = key();
    let (_, other_cluster) = key();
    let policy = format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: AccessPolicy\nmetadata:\n  name: team\nspec:\n  rules:\n    - subjects: [{admin}]\n      role: admin\n    - subjects: [{guarded}]\n      role: operator\n      level2:\n        servers:\n          - uri: ldap://127.0.0.1:1\n            bindDn: uid={{user}},dc=example\n"
    );
    let mut tampered = sign(&doc(&net("forged", 1500), Some(1)), &owner, &owner_key);
    tampered["spec"]["mtu"] = json!(9000);
    let cases = vec![
        Case {
            label: "owner-signed",
            kind: "AccessPolicy",
            name: "team",
            docs: vec![sign(&doc(&policy, Some(1)), &owner, &owner_key)],
            expect: vec!["Applied"],
        },
        Case {
            label: "admin-via-policy",
            kind: "Network",
            name: "admin-net",
            docs: vec![sign(
                &doc(&net("admin-net", 1500), Some(1)),
                &owner,
                &admin_key,
            )],
            expect: vec!["Applied"],
        },
        Case {
            label: "stranger-signed",
            kind: "VirtualMachine",
            name: "evil",
            docs: vec![sign(
                &doc(&common::vm_yaml("evil", "64Mi"), Some(1)),
                &owner,
                &stranger_key,
            )],
            expect: vec!["Denied"],
        },
        Case {
            label: "other-cluster",
            kind: "Network",
            name: "elsewhere",
            docs: vec![sign(
                &doc(&net("elsewhere", 1500), Some(1)),
                &other_cluster,
                &owner_key,
            )],
            expect: vec!["BadSignature"],
        },
        Case {
            label: "unsigned",
            kind: "Network",
            name: "plain",
            docs: vec![doc(&net("plain", 1500), Some(1))],
            expect: vec!["Unsigned"],
        },
        Case {
            label: "tampered",
            kind: "Network",
            name: "forged",
            docs: vec![tampered],
            expect: vec!["BadSignature"],
        },
        Case {
            label: "stale generation",
            kind: "Network",
            name: "stale",
            docs: vec![
                sign(&doc(&net("stale", 1500), Some(2)), &owner, &owner_key),
                sign(&doc(&net("stale", 9000), Some(2)), &owner, &owner_key),
            ],
            expect: vec!["Applied", "Stale"],
        },
        Case {
            label: "level-2 rule",
            kind: "Network",
            name: "guarded",
            docs: vec![sign(
                &doc(&net("guarded", 1500), Some(1)),
                &owner,
                &guarded_key,
            )],
            expect: vec!["Level2Required"],
        },
    ];
    (Corpus { owner, cases }, owner_key)
}

const VERDICTS: &[&str] = &[
    "Applied",
    "Unchanged",
    "Deleted",
    "Stale",
    "Denied",
    "Level2Required",
    "BadSignature",
    "Unsigned",
    "NoGeneration",
    "Invalid",
    "Duplicate",
];

/// Admission's verdict events about `kind/name` on `node`.
fn verdicts(node: &Node, kind: &str, name: &str) -> Vec<String> {
    let ns = if kind == "AccessPolicy" {
        None
    } else {
        Some("default".to_string())
    };
    let object = deorch::model::ObjectKey::new(
        deorch::model::Kind::from_cli(kind).unwrap(),
        ns.as_deref(),
        name,
    );
    match node.call(&Request::Events {
        kind: Some(kind.into()),
        namespace: ns,
        name: Some(name.into()),
    }) {
        Ok(Response::Events { events }) => events
            .into_iter()
            .filter(|e| e.object.as_ref() == Some(&object))
            .filter(|e| VERDICTS.contains(&e.reason.as_str()))
            .map(|e| e.reason)
            .collect(),
        other => panic!("events: {other:?}"),
    }
}

/// Wait for a verdict on `kind/name` beyond the `seen` first ones.
fn next_verdict(node: &Node, kind: &str, name: &str, seen: usize, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = verdicts(node, kind, name);
        if v.len() > seen {
            return v[seen].clone();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no verdict on {kind}/{name} within 30 s; log:\n{}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(30));
    }
}

fn yaml(v: &Value) -> String {
    serde_saphyr::to_string(v).unwrap()
}

/// Send every document of the corpus through `send` (case, document
/// index, document) and collect the verdicts `node` records.
fn run_row(
    corpus: &Corpus,
    node: &Node,
    row: &str,
    mut send: impl FnMut(&Case, usize, &Value),
) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for case in &corpus.cases {
        let mut got = Vec::new();
        for (i, d) in case.docs.iter().enumerate() {
            let seen = verdicts(node, case.kind, case.name).len();
            send(case, i, d);
            got.push(next_verdict(
                node,
                case.kind,
                case.name,
                seen,
                &format!("{row}: {}", case.label),
            ));
        }
        out.push((case.label.to_string(), got));
    }
    out
}

fn expected(corpus: &Corpus, local: bool) -> Vec<(String, Vec<String>)> {
    corpus
        .cases
        .iter()
        .map(|c| {
            let e = c
                .expect
                .iter()
                .map(|v| {
                    // The documented exception: node-local sources take
                    // unsigned documents.
                    if local && *v == "Unsigned" {
                        "Applied".to_string()
                    } else {
                        v.to_string()
                    }
                })
                .collect();
            (c.label.to_string(), e)
        })
        .collect()
}

fn node_with(tag: &str, name: &str, args: &[&str]) -> Node {
    let mut n = Node::new(tag);
    n.name = name.into();
    n.extra_args.extend(args.iter().map(|s| s.to_string()));
    n.start();
    n
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git is installed");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The gossip document of a manifest, as a node publishes it.
fn gossip_doc(v: &Value, written_ms: u64) -> Document {
    let kind = v["kind"].as_str().unwrap();
    let ns = v["metadata"]["namespace"].as_str().unwrap_or("");
    let name = v["metadata"]["name"].as_str().unwrap();
    Document {
        key: DocKey::new(kind, ns, name),
        generation: v["metadata"]["generation"].as_u64().unwrap_or(0),
        deleted: false,
        written_ms,
        body: serde_json::to_vec(v).unwrap(),
    }
}

/// A peer that publishes whatever it is told (the gossip library with
/// `AcceptAll` for documents, over the real authenticated channel: an
/// admitted node gone bad), joined to `seed`.
struct Rogue {
    _rt: tokio::runtime::Runtime,
    commands: tokio::sync::mpsc::Sender<GossipCommand>,
}

impl Rogue {
    fn join(
        seed: &str,
        key: &deorch::identity::PrivateKey,
        cluster: &str,
        members: &[(&str, &str)],
    ) -> Rogue {
        use deorch::gossip::channel::{Channel, ChannelConfig, ChannelKey};
        use deorch::gossip::trust::{KeySigner, Members};
        use deorch::gossip::verify::MembersOnly;
        let admitted = std::sync::Arc::new(Members::new(cluster));
        admitted.set(
            &members
                .iter()
                .map(|(n, a)| (a.to_string(), n.to_string()))
                .collect(),
        );
        let verifier: std::sync::Arc<dyn deorch::gossip::Verifier> =
            std::sync::Arc::new(MembersOnly {
                members: admitted,
                documents: AcceptAll,
            });
        let me = key
            .address(deorch::identity::AddressType::P2wpkh)
            .unwrap()
            .to_string();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let transport = rt
            .block_on(UdpTransport::bind("127.0.0.1:0".parse().unwrap()))
            .unwrap();
        let cfg = GossipConfig {
            swim: SwimConfig {
                probe_interval_ms: 200,
                ack_timeout_ms: 80,
                suspicion_timeout_ms: 4_000,
                reconnect_interval_ms: 400,
                ..SwimConfig::default()
            },
            tick_ms: 100,
            anti_entropy_interval_ms: 200,
            ..GossipConfig::default()
        };
        let now = deorch::gossip::transport::unix_ms();
        let node = GossipNode::new(
            cfg,
            NodeId(me),
            transport.local_addr(),
            now / 1000,
            verifier.clone(),
            now,
        )
        .with_signer(std::sync::Arc::new(KeySigner::new(key.clone(), cluster)));
        let channel = Channel::new(
            ChannelConfig::default(),
            std::sync::Arc::new(ChannelKey::new(key, cluster)),
            cluster,
            verifier,
            now,
        );
        let (commands, rx) = tokio::sync::mpsc::channel(64);
        let (events, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
        rt.spawn(async move { while events_rx.recv().await.is_some() {} });
        rt.spawn(run_udp(node, transport, 100, Some(channel), rx, events));
        commands
            .blocking_send(GossipCommand::Join(seed.parse().unwrap()))
            .unwrap();
        Rogue { _rt: rt, commands }
    }

    fn publish(&self, d: Document) {
        self.commands
            .blocking_send(GossipCommand::Publish(d))
            .unwrap();
    }
}

#[test]
fn every_source_gives_a_document_the_same_verdict() {
    let (corpus, owner_key) = corpus();
    let owner = corpus.owner.clone();
    let tmp = common::temp_dir("admission-sources");
    let mut results: BTreeMap<&str, Vec<(String, Vec<String>)>> = BTreeMap::new();

    // 1. The manifest directory: one file per case (the stale case's file
    // rewritten with its second version).
    {
        let mut n = node_with("adm-dir", "dir", &["--cluster-owner", &owner]);
        let manifests = n.manifests.clone();
        results.insert(
            "directory",
            run_row(&corpus, &n, "directory", |c, _, d| {
                let file = manifests.join(format!("{}.yaml", c.name));
                std::fs::write(file, yaml(d)).unwrap();
            }),
        );
        assert!(
            n.record("vm", "evil").is_none(),
            "the stranger's VM is stored"
        );
        n.stop();
    }

    // 2. The local API: `deorch apply -f -`.
    {
        let mut n = node_with("adm-api", "api", &["--cluster-owner", &owner]);
        let mut answers = Vec::new();
        let row = run_row(&corpus, &n, "local API", |_, _, d| {
            let (code, out, err) = n.cli(&["apply", "-f", "-"], Some(&yaml(d)));
            answers.push((code, format!("{out}{err}")));
        });
        // The CLI says the same as the events.
        let flat: Vec<&String> = row.iter().flat_map(|(_, v)| v).collect();
        for ((code, text), verdict) in answers.iter().zip(&flat) {
            assert_eq!(*code == 0, *verdict == "Applied", "{verdict}: {text}");
            if *verdict != "Applied" {
                assert!(text.contains(verdict.as_str()), "{verdict}: {text}");
            }
        }
        results.insert("local API", row);
        n.stop();
    }

    // 3. The HTTP push.
    {
        let mut n = node_with(
            "adm-push",
            "push",
            &["--cluster-owner", &owner, "--http-listen", "127.0.0.1:0"],
        );
        let url = NodeUrl::parse(&n.http_url()).unwrap();
        let mut codes = Vec::new();
        let row = run_row(&corpus, &n, "push", |_, _, d| {
            let r = request(
                &url,
                "POST",
                "/v1/manifests",
                Some("application/yaml"),
                None,
                yaml(d).as_bytes(),
                Duration::from_secs(20),
            )
            .unwrap();
            let v = r.json();
            codes.push(if r.status == 200 {
                "Applied".to_string()
            } else {
                v["refused"][0]["code"].as_str().unwrap_or("?").to_string()
            });
        });
        // The HTTP answer says the same as the events.
        let flat: Vec<String> = row.iter().flat_map(|(_, v)| v.clone()).collect();
        assert_eq!(codes, flat);
        results.insert("push", row);
        n.stop();
    }

    // 4. Git: one commit per document; a refused document's file is left
    // out of the next commit.
    {
        let repo = tmp.join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "--quiet", "-b", "main"]);
        git(&repo, &["config", "user.email", "ops@example.org"]);
        git(&repo, &["config", "user.name", "ops"]);
        git(
            &repo,
            &["commit", "--quiet", "--allow-empty", "-m", "empty"],
        );
        let mut n = node_with(
            "adm-git",
            "git",
            &[
                "--cluster-owner",
                &owner,
                "--git-repo",
                repo.to_str().unwrap(),
                "--git-poll",
                "200ms",
            ],
        );
        let mut accepted: BTreeMap<PathBuf, String> = BTreeMap::new();
        let row = run_row(&corpus, &n, "git", |c, i, d| {
            for f in std::fs::read_dir(&repo).unwrap().flatten() {
                if f.path().extension().is_some_and(|e| e == "yaml") {
                    std::fs::remove_file(f.path()).unwrap();
                }
            }
            for (p, text) in &accepted {
                std::fs::write(p, text).unwrap();
            }
            let file = repo.join(format!("{}.yaml", c.name));
            std::fs::write(&file, yaml(d)).unwrap();
            git(&repo, &["add", "-A"]);
            git(&repo, &["commit", "--quiet", "-m", c.label]);
            if c.expect[i] == "Applied" {
                accepted.insert(file, yaml(d));
            }
        });
        results.insert("git", row);
        n.stop();
    }

    // 5. Gossip between two real nodes: b (under test) learns from a
    // (honest; gets the documents it accepts through its local API) and
    // from a rogue peer (the documents an honest node never publishes).
    {
        let gossip = |extra: &[&str]| common::gossip_args(&owner, extra);
        // All three are admitted: the rogue is a member gone bad, whose
        // documents only admission can refuse.
        let mut a = Node::new("adm-gossip-a");
        a.name = "node-a".into();
        let mut b = Node::new("adm-gossip-b");
        b.name = "node-b".into();
        let rogue_key = deorch::identity::PrivateKey::generate(deorch::identity::Network::Mainnet);
        let rogue_addr = rogue_key
            .address(deorch::identity::AddressType::P2wpkh)
            .unwrap()
            .to_string();
        let (a_addr, b_addr) = (common::give_node_key(&a), common::give_node_key(&b));
        let sats = [
            ("node-a", a_addr.as_str()),
            ("node-b", b_addr.as_str()),
            ("rogue", rogue_addr.as_str()),
        ];
        let members = common::members_policy(1, &sats, "");
        a.extra_args.extend(gossip(&[]));
        a.start();
        common::apply_owner_signed(&a, &owner_key, &members);
        let seed = common::gossip_address(&a);
        b.extra_args.extend(gossip(&["--seed", &seed]));
        b.start();
        common::apply_owner_signed(&b, &owner_key, &members);
        let rogue = Rogue::join(&common::gossip_address(&b), &rogue_key, &owner, &sats);
        // The rogue's versions of one object must win gossip's order (the
        // content hash breaks ties of one generation): pick written times.
        let mut last_hash: BTreeMap<String, u64> = BTreeMap::new();
        let row = run_row(&corpus, &b, "gossip", |c, i, d| {
            let honest = c.expect[i] == "Applied" && c.docs.len() == 1;
            if honest {
                let (code, out, err) = a.cli(&["apply", "-f", "-"], Some(&yaml(d)));
                assert_eq!(code, 0, "node a refused {}: {out}{err}", c.label);
                return;
            }
            let mut written = 1u64;
            let mut doc = gossip_doc(d, written);
            while last_hash
                .get(c.name)
                .is_some_and(|h| doc.content_hash() <= *h)
            {
                written += 1;
                doc = gossip_doc(d, written);
            }
            last_hash.insert(c.name.to_string(), doc.content_hash());
            rogue.publish(doc);
        });
        // The bug this pins: the stranger's VM is in neither store, and
        // b said why.
        for n in [&a, &b] {
            assert!(
                n.record("vm", "evil").is_none(),
                "{}: the stranger's VM is stored",
                n.name
            );
        }
        let log = std::fs::read_to_string(&b.log).unwrap();
        assert!(
            log.lines().any(|l| l.contains("refused by admission")
                && l.contains("VirtualMachine/default/evil")
                && l.contains("Denied")),
            "b did not log the refusal"
        );
        results.insert("gossip", row);
        drop(rogue);
    }

    for (source, got) in &results {
        eprintln!("{source:>10}: {got:?}");
    }
    for (source, got) in &results {
        let local = matches!(*source, "directory" | "local API");
        assert_eq!(
            got,
            &expected(&corpus, local),
            "{source} disagrees with the others"
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
