//! The history of desired state, on a real node process.
//!
//! Ten versions reach one node from three sources: four unsigned
//! versions of a Network from the manifest directory, three owner-signed
//! versions of another from a git repository the node follows, and, by
//! the signed HTTP push, an owner-signed AccessPolicy naming an admin, an
//! owner-signed Network and its next version signed by that admin. The
//! node is restarted; `deorch history` lists every version with its
//! source and signer and diffs two of them; `deorch verify-history`
//! passes against the owner's address and fails against another's. Then
//! the log is tampered with, offline: one byte changed in one record, one
//! record removed: each is detected, naming the record. A torn tail (half
//! a record, as a kill in the middle of a write leaves) is truncated when
//! the node opens the log.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::Node;
use deorch::history::{self, Entry};
use deorch::http::client::{request, NodeUrl};
use deorch::identity::{sign_manifest, AddressType, Network, PrivateKey};
use serde_json::{json, Value};

fn key() -> (PrivateKey, String) {
    let k = PrivateKey::generate(Network::Mainnet);
    let a = k.address(AddressType::P2wpkh).unwrap().to_string();
    (k, a)
}

fn net(name: &str, mtu: u32) -> String {
    format!("apiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata:\n  name: {name}\nspec:\n  mtu: {mtu}\n")
}

/// `yaml` as the parser types it, at `generation`, signed by `k` for the
/// cluster of `owner`, as JSON (which is YAML).
fn signed(yaml: &str, generation: i64, owner: &str, k: &PrivateKey) -> String {
    let parsed = deorch::manifest::parse_str(Path::new("h.yaml"), yaml);
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    let mut v = parsed.documents[0].object.to_value();
    v["metadata"]["generation"] = json!(generation);
    serde_json::to_string(&sign_manifest(&v, owner, k, AddressType::P2wpkh).unwrap()).unwrap()
}

fn git(dir: &Path, args: &[&str]) {
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
}

fn push(url: &NodeUrl, body: &str) {
    let r = request(
        url,
        "POST",
        "/v1/manifests",
        Some("application/yaml"),
        None,
        body.as_bytes(),
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

fn wait_generation(n: &Node, kind: &str, name: &str, generation: i64) {
    n.wait_for(&format!("{kind}/{name} at generation {generation}"), |n| {
        n.record(kind, name)
            .is_some_and(|r| r.generation == generation)
    });
}

fn cli(args: &[&str]) -> (i32, String, String) {
    common::cli_in(None, args, None)
}

/// The versions of our objects in the log at `path`: (kind/name,
/// generation, source, signer).
fn logged(path: &Path) -> Vec<(String, i64, String, Option<String>)> {
    let s = history::read(path).unwrap();
    assert!(s.problem.is_none(), "{:?}", s.problem);
    s.frames
        .iter()
        .filter_map(|f| match &f.entry {
            Entry::Version(v) if v.kind != "Satellite" => Some((
                format!("{}/{}", v.kind, v.name),
                v.generation,
                v.source.clone(),
                v.signer.clone(),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn ten_versions_from_three_sources_are_listed_after_a_restart_and_tampering_is_detected() {
    let (owner_key, owner) = key();
    let (admin_key, admin) = key();
    let tmp = common::temp_dir("history");
    let repo = tmp.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "--quiet", "-b", "main"]);
    git(&repo, &["config", "user.email", "ops@example.org"]);
    git(&repo, &["config", "user.name", "ops"]);
    git(
        &repo,
        &["commit", "--quiet", "--allow-empty", "-m", "empty"],
    );

    let mut n = Node::new("history");
    n.extra_args.extend(
        [
            "--cluster-owner",
            &owner,
            "--http-listen",
            "127.0.0.1:0",
            "--git-repo",
            repo.to_str().unwrap(),
            "--git-poll",
            "200ms",
        ]
        .map(String::from),
    );
    n.start();
    let url = NodeUrl::parse(&n.http_url()).unwrap();

    // 1. The manifest directory: four unsigned versions.
    for (i, mtu) in [1400, 1401, 1402, 1403].into_iter().enumerate() {
        std::fs::write(n.manifests.join("net-dir.yaml"), net("net-dir", mtu)).unwrap();
        wait_generation(&n, "network", "net-dir", i as i64 + 1);
    }
    // 2. Git: three owner-signed versions, one commit each.
    for g in 1..=3 {
        std::fs::write(
            repo.join("net-git.yaml"),
            signed(&net("net-git", 1500 + g as u32), g, &owner, &owner_key),
        )
        .unwrap();
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "--quiet", "-m", &format!("net-git {g}")]);
        wait_generation(&n, "network", "net-git", g);
    }
    // 3. The signed push: the owner names an admin, then the owner and
    // the admin each sign a version of net-push.
    let policy = format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: AccessPolicy\nmetadata:\n  name: admins\nspec:\n  rules:\n    - subjects: [\"{admin}\"]\n      role: admin\n"
    );
    push(&url, &signed(&policy, 1, &owner, &owner_key));
    push(&url, &signed(&net("net-push", 1600), 1, &owner, &owner_key));
    push(&url, &signed(&net("net-push", 1601), 2, &owner, &admin_key));
    wait_generation(&n, "network", "net-push", 2);

    // Restart.
    n.stop();
    n.start();
    let log = n.state.join(history::FILE);
    let state = n.state.to_str().unwrap().to_string();

    // Every version, in commit order, with its source and signer.
    let got = logged(&log);
    let o = Some(owner.clone());
    let mut want: Vec<(String, i64, String, Option<String>)> = Vec::new();
    for g in 1..=4 {
        want.push(("Network/net-dir".into(), g, String::new(), None));
    }
    for g in 1..=3 {
        want.push(("Network/net-git".into(), g, String::new(), o.clone()));
    }
    want.push(("AccessPolicy/admins".into(), 1, String::new(), o.clone()));
    want.push(("Network/net-push".into(), 1, String::new(), o.clone()));
    want.push((
        "Network/net-push".into(),
        2,
        String::new(),
        Some(admin.clone()),
    ));
    assert_eq!(got.len(), 10, "{got:#?}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((&g.0, g.1, &g.3), (&w.0, w.1, &w.3), "{got:#?}");
    }
    assert!(got[..4].iter().all(|v| v.2.starts_with("file:")), "{got:?}");
    assert!(got[4..7].iter().all(|v| v.2.starts_with("git")), "{got:?}");
    assert!(got[7..].iter().all(|v| v.2 == got[7].2), "{got:?}");
    assert!(
        !got[7].2.starts_with("file:") && !got[7].2.starts_with("git"),
        "{got:?}"
    );
    // Nothing was logged twice or as recovered by the restart.
    let s = history::read(&log).unwrap();
    assert!(s.frames.iter().all(|f| match &f.entry {
        Entry::Version(v) => !v.recovered,
        Entry::Anchor(_) => false,
    }));

    // `deorch history` lists them with signers, after the restart.
    let (code, out, err) = cli(&["history", "network", "net-push", "--state-dir", &state]);
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("GENERATION"), "{out}");
    assert!(
        lines[1].starts_with('1') && lines[1].contains(&owner),
        "{out}"
    );
    assert!(
        lines[2].starts_with('2') && lines[2].contains(&admin),
        "{out}"
    );
    let (code, out, _) = cli(&["history", "network", "net-dir", "--state-dir", &state]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 5, "{out}");
    assert!(out.contains("file:"), "{out}");
    let (code, out, _) = cli(&[
        "history",
        "network",
        "net-git",
        "--state-dir",
        &state,
        "-o",
        "json",
    ]);
    assert_eq!(code, 0);
    let versions: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(versions.len(), 3);
    assert!(versions
        .iter()
        .all(|v| v["signer"] == json!(owner) && v["object"]["spec"]["mtu"].is_u64()));
    // A diff of two versions.
    let (code, out, err) = cli(&[
        "history",
        "network",
        "net-dir",
        "--state-dir",
        &state,
        "--diff",
        "1",
        "3",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("-  mtu: 1400\n"), "{out}");
    assert!(out.contains("+  mtu: 1402\n"), "{out}");
    assert!(out.contains("@@ "), "{out}");
    let (code, _, err) = cli(&[
        "history",
        "network",
        "net-dir",
        "--state-dir",
        &state,
        "--diff",
        "1",
        "9",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("no logged generation 9"), "{err}");

    // verify-history passes for the owner, naming each signer's authority.
    let (code, out, err) = cli(&["verify-history", "--state-dir", &state, "--owner", &owner]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("6 signed"), "{out}");
    assert!(
        out.contains(&format!("signer {admin}: allowed by AccessPolicy admins")),
        "{out}"
    );
    // Against another cluster's owner, the first signed version fails.
    let (_, stranger) = key();
    let first_signed = s
        .frames
        .iter()
        .find(|f| matches!(&f.entry, Entry::Version(v) if v.signer.is_some()))
        .unwrap()
        .index;
    let (code, _, err) = cli(&[
        "verify-history",
        "--state-dir",
        &state,
        "--owner",
        &stranger,
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("record {first_signed} ")) && err.contains("net-git generation 1"),
        "{err}"
    );
    n.stop();

    // Tampering, offline, each on a copy of the good log.
    let good = std::fs::read(&log).unwrap();
    let frames = history::scan(&good).frames;
    let find = |name: &str, g: i64| {
        frames
            .iter()
            .find(|f| matches!(&f.entry, Entry::Version(v) if v.name == name && v.generation == g))
            .unwrap()
            .clone()
    };
    let copy = |tag: &str, bytes: &[u8]| -> PathBuf {
        let p = tmp.join(format!("history-{tag}.log"));
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let verify_file = |p: &Path| {
        cli(&[
            "verify-history",
            "--file",
            p.to_str().unwrap(),
            "--owner",
            &owner,
        ])
    };
    // One byte changed in an unsigned record (the chain catches it) ...
    let f = find("net-dir", 2);
    let mut bytes = good.clone();
    let at = f.offset as usize + 8 + f.payload.len() - 5;
    bytes[at] ^= 0x04;
    let (code, _, err) = verify_file(&copy("flip", &bytes));
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("record {} ", f.index)) && err.contains("changed"),
        "{err}"
    );
    // ... and in a signed one whose chain was then recomputed by the
    // tamperer: only the signature catches it.
    let f = find("net-push", 2);
    let mut entries: Vec<Vec<u8>> = frames.iter().map(|f| f.payload.clone()).collect();
    let i = (f.index - 1) as usize;
    let text = String::from_utf8(entries[i].clone()).unwrap();
    assert!(text.contains("\"mtu\":1601"), "{text}");
    entries[i] = text.replace("\"mtu\":1601", "\"mtu\":1666").into_bytes();
    let rechained = rechain(&entries);
    assert!(history::scan(&rechained).problem.is_none());
    let (code, _, err) = verify_file(&copy("resigned", &rechained));
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("record {} ", f.index)) && err.contains("signature"),
        "{err}"
    );
    // One record removed: the record after it no longer follows.
    let f = find("net-git", 2);
    let mut bytes = good[..f.offset as usize].to_vec();
    bytes.extend_from_slice(&good[(f.offset + f.size()) as usize..]);
    let (code, _, err) = verify_file(&copy("removed", &bytes));
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("record {} ", f.index)) && err.contains("net-git generation 3"),
        "the record after the removed one is named: {err}"
    );

    // A torn tail: half of a record after the last good one.
    let last = frames.last().unwrap();
    let half = &good[last.offset as usize..(last.offset + last.size() / 2) as usize];
    let mut torn = good.clone();
    torn.extend_from_slice(half);
    std::fs::write(&log, &torn).unwrap();
    let (code, out, err) = verify_file(&log);
    assert_eq!(code, 0, "a torn tail is no tampering: {out}{err}");
    assert!(out.contains("incomplete record"), "{out}");
    n.start();
    assert_eq!(
        std::fs::read(&log).unwrap(),
        good,
        "the node truncated the torn tail on open"
    );
    assert!(
        std::fs::read_to_string(&n.log)
            .unwrap()
            .contains("incomplete last record"),
        "{}",
        n.log_text()
    );
    // And the chain goes on from there: one more version, verified.
    std::fs::write(n.manifests.join("net-dir.yaml"), net("net-dir", 1404)).unwrap();
    wait_generation(&n, "network", "net-dir", 5);
    n.stop();
    let (code, out, err) = cli(&["verify-history", "--state-dir", &state, "--owner", &owner]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(logged(&log).len(), 11);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A log of these payloads with a freshly computed chain (what someone
/// who can rewrite the file can do).
fn rechain(payloads: &[Vec<u8>]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut out = history::MAGIC.to_vec();
    let mut prev = [0u8; 32];
    for p in payloads {
        let len = p.len() as u32;
        let mut h = Sha256::new();
        h.update(prev);
        h.update(len.to_le_bytes());
        h.update(p);
        prev = h.finalize().into();
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(&prev);
    }
    out
}
