//! A real node follows a real git repository (the `git` CLI on a local
//! repository the test makes): signed commits are applied, a commit with an
//! unsigned, forged, unauthorised, stale (force-pushed rollback) or invalid
//! document is refused whole and changes nothing, an admin named by an
//! owner-signed AccessPolicy in the repository may sign, and a file removed
//! from the branch deletes its objects.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Node;
use deorch::identity::{AddressType, Network, PrivateKey};
use serde_json::{json, Value};

struct Repo {
    dir: PathBuf,
}

impl Repo {
    fn new(dir: &Path) -> Repo {
        std::fs::create_dir_all(dir).unwrap();
        let r = Repo { dir: dir.into() };
        r.git(&["init", "--quiet", "-b", "main"]);
        r.git(&["config", "user.email", "ops@example.org"]);
        r.git(&["config", "user.name", "ops"]);
        r
    }

    fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.dir)
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

    /// Write `files` (path -> content; `None` removes), commit, return the id.
    fn commit(&self, message: &str, files: &[(&str, Option<String>)]) -> String {
        for (path, content) in files {
            let p = self.dir.join(path);
            match content {
                Some(c) => {
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    std::fs::write(&p, c).unwrap();
                    self.git(&["add", path]);
                }
                None => {
                    self.git(&["rm", "--quiet", path]);
                }
            }
        }
        self.git(&["commit", "--quiet", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }
}

fn key() -> (PrivateKey, String) {
    let k = PrivateKey::generate(Network::Mainnet);
    let a = k.address(AddressType::P2wpkh).unwrap().to_string();
    (k, a)
}

/// A manifest document as the parser types it (namespace defaulted, which
/// the signature covers), at `generation`.
fn doc(yaml: &str, generation: i64) -> Value {
    let parsed = deorch::manifest::parse_str(Path::new("t.yaml"), yaml);
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    let mut v = parsed.documents[0].object.to_value();
    v["metadata"]["generation"] = json!(generation);
    v
}

fn signed(v: &Value, cluster: &str, key: &PrivateKey) -> String {
    let s = deorch::identity::sign_manifest(v, cluster, key, AddressType::P2wpkh).unwrap();
    serde_saphyr::to_string(&s).unwrap()
}

fn net(name: &str, mtu: u32) -> String {
    format!("apiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata:\n  name: {name}\nspec:\n  mtu: {mtu}\n")
}

fn mtu(node: &Node, name: &str) -> Option<i64> {
    node.record("network", name)
        .and_then(|r| r.object.pointer("/spec/mtu").and_then(Value::as_i64))
}

/// The node's record of the last commit it tried.
fn status(node: &Node) -> Option<Value> {
    let git = node.state.join("git");
    let dir = std::fs::read_dir(&git).ok()?.flatten().next()?.path();
    serde_json::from_slice(&std::fs::read(dir.join("deorch-status.json")).ok()?).ok()
}

/// Wait until the node has tried `commit`; its status.
fn tried(node: &Node, commit: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = status(node).filter(|s| s["commit"] == commit) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "commit {commit} not tried within 30 s; status {:?}; log:\n{}",
            status(node),
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn problems(s: &Value) -> String {
    s["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn signed_commits_apply_and_bad_ones_change_nothing() {
    let tmp = common::temp_dir("git-source");
    let repo = Repo::new(&tmp.join("repo"));
    let (owner_key, owner) = key();
    let (admin_key, admin) = key();
    let (stranger_key, _) = key();

    // Commit 1: two owner-signed Networks.
    let c1 = repo.commit(
        "two networks",
        &[
            (
                "clusters/lan.yaml",
                Some(signed(&doc(&net("lan", 1500), 1), &owner, &owner_key)),
            ),
            (
                "clusters/dmz.yaml",
                Some(signed(&doc(&net("dmz", 1500), 1), &owner, &owner_key)),
            ),
            // Outside --git-path: ignored.
            ("docs/readme.yaml", Some("not: a manifest\n".into())),
        ],
    );
    let mut node = Node::new("git-source");
    node.extra_args.extend(
        [
            "--cluster-owner",
            &owner,
            "--git-repo",
            repo.dir.to_str().unwrap(),
            "--git-path",
            "clusters",
            "--git-poll",
            "200ms",
        ]
        .map(String::from),
    );
    node.start();
    let s = tried(&node, &c1);
    assert_eq!(s["applied"], true, "{s}");
    assert_eq!(mtu(&node, "lan"), Some(1500));
    assert_eq!(mtu(&node, "dmz"), Some(1500));
    let lan = node.record("network", "lan").unwrap();
    assert_eq!(lan.generation, 1);
    assert!(lan.source.0.starts_with("git:"), "{:?}", lan.source);

    // Commit 2: an unsigned document beside a good edit: refused whole.
    let c2 = repo.commit(
        "unsigned",
        &[
            (
                "clusters/lan.yaml",
                Some(signed(&doc(&net("lan", 9000), 2), &owner, &owner_key)),
            ),
            ("clusters/wan.yaml", Some(net("wan", 1400))),
        ],
    );
    let s = tried(&node, &c2);
    assert_eq!(s["applied"], false);
    let p = problems(&s);
    assert!(
        p.contains("clusters/wan.yaml:1: Network/default/wan: Unsigned"),
        "{p}"
    );
    assert!(p.contains(&c2[..12]), "the error names the commit: {p}");
    assert_eq!(mtu(&node, "lan"), Some(1500), "nothing changed");
    assert!(node.record("network", "wan").is_none());

    // Commit 3: signed by a stranger, and a forged document (content
    // changed after signing): refused.
    let mut forged: Value =
        serde_saphyr::from_str(&signed(&doc(&net("wan", 1400), 1), &owner, &owner_key)).unwrap();
    forged["spec"]["mtu"] = json!(9000);
    let c3 = repo.commit(
        "stranger and forgery",
        &[
            (
                "clusters/wan.yaml",
                Some(serde_saphyr::to_string(&forged).unwrap()),
            ),
            (
                "clusters/ext.yaml",
                Some(signed(&doc(&net("ext", 1500), 1), &owner, &stranger_key)),
            ),
        ],
    );
    let s = tried(&node, &c3);
    assert_eq!(s["applied"], false);
    let p = problems(&s);
    assert!(p.contains("Network/default/wan: BadSignature"), "{p}");
    assert!(p.contains("Network/default/ext: Denied"), "{p}");
    assert!(node.record("network", "wan").is_none());

    // Commit 4: fixed; the admin is named by an owner-signed AccessPolicy in
    // the same commit and signs a Network of its own.
    let policy = format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: AccessPolicy\nmetadata:\n  name: admins\nspec:\n  rules:\n    - subjects: [{admin}]\n      role: admin\n"
    );
    let c4 = repo.commit(
        "fixed, and an admin",
        &[
            ("clusters/wan.yaml", None),
            ("clusters/ext.yaml", None),
            (
                "clusters/policy.yaml",
                Some(signed(&doc(&policy, 1), &owner, &owner_key)),
            ),
            (
                "clusters/team/app.yaml",
                Some(signed(&doc(&net("app", 1400), 1), &owner, &admin_key)),
            ),
        ],
    );
    let s = tried(&node, &c4);
    assert_eq!(s["applied"], true, "{s}");
    assert_eq!(mtu(&node, "lan"), Some(9000));
    assert_eq!(node.record("network", "lan").unwrap().generation, 2);
    assert_eq!(mtu(&node, "app"), Some(1400));

    // Commit 5: a force-push back to commit 1 (lan at generation 1): a
    // rollback, refused; lan stays at 9000 and app stays.
    repo.git(&["reset", "--quiet", "--hard", &c1]);
    let s = tried(&node, &c1);
    assert_eq!(s["applied"], false);
    let p = problems(&s);
    assert!(
        p.contains("Network/default/lan: Stale: signed generation 1 is not above the stored 2"),
        "{p}"
    );
    assert_eq!(mtu(&node, "lan"), Some(9000));
    assert!(node.record("network", "app").is_some());
    // Forward again to commit 4: taken again, every object a no-op.
    repo.git(&["reset", "--quiet", "--hard", &c4]);
    let s = tried(&node, &c4);
    assert_eq!(
        (&s["applied"], &s["changed"]),
        (&json!(true), &json!(0)),
        "{s}"
    );
    assert_eq!(node.record("network", "lan").unwrap().generation, 2);

    // Commit 6: invalid YAML: refused with its position.
    let c6 = repo.commit(
        "typo",
        &[("clusters/dmz.yaml", Some("apiVersion: [unclosed\n".into()))],
    );
    let s = tried(&node, &c6);
    assert_eq!(s["applied"], false);
    assert!(problems(&s).contains(&format!("@{}:clusters/dmz.yaml:", &c6[..12])));
    assert_eq!(mtu(&node, "dmz"), Some(1500));

    // Commit 7: the file removed: its object is deleted, the rest stays.
    let c7 = repo.commit("no dmz", &[("clusters/dmz.yaml", None)]);
    let s = tried(&node, &c7);
    assert_eq!(s["applied"], true, "{s}");
    assert!(node.record("network", "dmz").is_none());
    assert_eq!(mtu(&node, "lan"), Some(9000));
    node.stop();

    // The refusals were logged with their reasons.
    let log = node.log_text();
    assert!(log.contains("git commit refused"), "{log}");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn without_an_owner_the_node_refuses_to_follow_unverified() {
    let tmp = common::temp_dir("git-noowner");
    let (code, _, err) = common::cli_in(
        None,
        &[
            "node",
            "run",
            "--git-repo",
            tmp.to_str().unwrap(),
            "--state-dir",
            tmp.join("s").to_str().unwrap(),
            "--socket",
            tmp.join("s.sock").to_str().unwrap(),
            "--manifests",
            tmp.join("m").to_str().unwrap(),
            "--hypervisor",
            "fake",
            "--storage",
            "fake",
        ],
        None,
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("clusterOwner") && err.contains("--git-unsigned"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Signed gossip between two real nodes: what the git source accepted on
/// one node reaches the other with its signed generation (so its stored
/// copy still verifies there); an unsigned file dropped on the first node
/// stays there (it cannot be published in signed mode).
#[test]
fn signed_documents_from_git_travel_by_signed_gossip_and_unsigned_ones_do_not() {
    let tmp = common::temp_dir("git-gossip");
    let repo = Repo::new(&tmp.join("repo"));
    let (owner_key, owner) = key();
    let c1 = repo.commit(
        "lan at generation 3",
        &[(
            "lan.yaml",
            Some(signed(&doc(&net("lan", 1400), 3), &owner, &owner_key)),
        )],
    );
    let gossip = |extra: &[&str]| common::gossip_args(&owner, extra);
    let mut a = Node::new("git-gossip-a");
    a.name = "node-a".into();
    let mut b = Node::new("git-gossip-b");
    b.name = "node-b".into();
    // The owner admits both nodes (docs/SIGNING.md, "Nodes").
    let members = common::members_policy(
        1,
        &[
            ("node-a", &common::give_node_key(&a)),
            ("node-b", &common::give_node_key(&b)),
        ],
        "",
    );
    a.extra_args.extend(gossip(&[
        "--git-repo",
        repo.dir.to_str().unwrap(),
        "--git-poll",
        "200ms",
    ]));
    a.start();
    common::apply_owner_signed(&a, &owner_key, &members);
    assert_eq!(tried(&a, &c1)["applied"], true);
    let seed = {
        let file = a.state.join("gossip-address");
        a.wait_for("a's gossip address", |_| file.exists());
        std::fs::read_to_string(&file).unwrap().trim().to_string()
    };
    // An unsigned local file on a: applied there, never published.
    std::fs::write(a.manifests.join("local.yaml"), net("local", 1500)).unwrap();
    a.wait_for("the local file on a", |n| mtu(n, "local").is_some());

    b.extra_args.extend(gossip(&["--seed", &seed]));
    b.start();
    common::apply_owner_signed(&b, &owner_key, &members);
    b.wait_for("lan through gossip", |n| mtu(n, "lan") == Some(1400));
    let lan = b.record("network", "lan").unwrap();
    assert_eq!(lan.generation, 3, "stored at the signed generation");
    assert_eq!(lan.source.0, "gossip");
    let value = lan.object.clone();
    deorch::identity::verify_manifest(&value, &owner)
        .expect("b's stored copy still carries a valid signature");

    // A signed edit travels too; the unsigned file still has not.
    let c2 = repo.commit(
        "lan at generation 4",
        &[(
            "lan.yaml",
            Some(signed(&doc(&net("lan", 9000), 4), &owner, &owner_key)),
        )],
    );
    assert_eq!(tried(&a, &c2)["applied"], true);
    b.wait_for("the edit through gossip", |n| mtu(n, "lan") == Some(9000));
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        b.record("network", "local").is_none(),
        "an unsigned document crossed signed gossip"
    );
    drop((a, b));
    let _ = std::fs::remove_dir_all(&tmp);
}
