//! The search bar's command line (issue 17) against a real node (fake
//! drivers): `deorch do` through the local API and `POST /v1/command`
//! through a session, one grammar and one plan for both; a run is an
//! apply as the session, so a viewer's is refused; `GET /v1/events`
//! streams the store's changes (read with curl, as a browser would).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deorch::api::{Request, Response};
use deorch::http::client::{request, NodeUrl, Reply};
use deorch::identity::{AddressType, Network, PrivateKey};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);

fn post(url: &NodeUrl, cookie: Option<&str>, q: &str, run: bool) -> Reply {
    request(
        url,
        "POST",
        "/v1/command",
        Some("application/json"),
        cookie,
        json!({"q": q, "run": run}).to_string().as_bytes(),
        T,
    )
    .unwrap()
}

fn names(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn exists(node: &common::Node, name: &str) -> bool {
    matches!(
        node.call(&Request::Get {
            kind: Some("VirtualMachine".into()),
            namespace: None,
            name: Some(name.into()),
        }),
        Ok(Response::Objects { records }) if records.iter().any(|r| !r.deleted)
    )
}

#[test]
fn a_typed_command_is_planned_shown_and_run_as_the_session() {
    let owner = PrivateKey::generate(Network::Mainnet);
    let owner_addr = owner.address(AddressType::P2wpkh).unwrap().to_string();
    let viewer = PrivateKey::generate(Network::Mainnet);
    let viewer_addr = viewer.address(AddressType::P2wpkh).unwrap().to_string();
    let teamop = PrivateKey::generate(Network::Mainnet);
    let teamop_addr = teamop.address(AddressType::P2wpkh).unwrap().to_string();
    let node = common::node_with_http("cmdline", &owner_addr, &[]);
    let url = NodeUrl::parse(&node.http_url()).unwrap();
    std::fs::write(
        node.manifests.join("base.yaml"),
        "apiVersion: deorch.dev/v1alpha1\nkind: Spacesuit\nmetadata: {name: tiny}\nspec: {cpu: 1, memory: 64Mi}\n---\napiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {name: web1}\nspec: {spacesuit: tiny}\n",
    )
    .unwrap();
    node.wait_for("web1 exists", |n| exists(n, "web1"));
    common::push_owner_signed(
        &url,
        &owner,
        &format!(
            "apiVersion: deorch.dev/v1alpha1\nkind: AccessPolicy\nmetadata:\n  name: people\n  generation: 1\nspec:\n  rules:\n    - subjects: [\"{viewer_addr}\"]\n      role: viewer\n    - subjects: [\"{teamop_addr}\"]\n      role: operator\n      namespaces: [team]\n"
        ),
    );

    // The CLI: a plan first, nothing applied; then --run applies it.
    let (rc, out, err) = node.cli(&["do", "nodes"], None);
    assert_eq!(rc, 0, "{out}{err}");
    assert!(
        out.contains("Satellite") && out.contains(&node.name),
        "{out}"
    );
    let (rc, out, err) = node.cli(&["do", "create", "vm", "web2", "from", "tiny"], None);
    assert_eq!(rc, 0, "{out}{err}");
    assert!(
        out.contains("Create VM web2 from spacesuit tiny")
            && out.contains("would apply")
            && out.contains("spacesuit: tiny"),
        "{out}"
    );
    assert!(!exists(&node, "web2"), "a plan changes nothing");
    let (rc, out, err) = node.cli(
        &["do", "--run", "create", "vm", "web2", "from", "tiny"],
        None,
    );
    assert_eq!(rc, 0, "{out}{err}");
    assert!(out.contains("applied:"), "{out}");
    node.wait_for("web2 exists", |n| exists(n, "web2"));
    // What does not parse or does not exist: the column, and completions.
    let (rc, out, err) = node.cli(&["do", "relocate", "we", "to", "10.0.0.9"], None);
    assert_eq!(rc, 2, "{out}{err}");
    assert!(err.contains("column 10: no VM `we`"), "{err}");
    assert!(
        err.contains("deorch do relocate web1") && err.contains("deorch do relocate web2"),
        "{err}"
    );
    let (rc, out, _) = node.cli(&["do", "--json", "create", "vm", "x", "form", "tiny"], None);
    assert_eq!(rc, 2);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["column"], 13);
    assert_eq!(v["words"], json!(["from"]));

    // The page's URL of any object (the page runs its query on open).
    let (rc, out, err) = node.cli(&["url", "vm", "web1"], None);
    assert_eq!(rc, 0, "{err}");
    let base = node.http_url();
    assert_eq!(
        out.trim(),
        format!("{}/?q=vm%20web1", base.split('#').next().unwrap())
    );

    // HTTP: no session, no answer; logging out clears the cookie.
    let r = post(&url, None, "vms", false);
    assert_eq!(r.status, 401, "{}", r.json());
    let r = request(&url, "POST", "/v1/auth/logout", None, None, b"", T).unwrap();
    assert_eq!(r.status, 200);
    let c = r.header("set-cookie").unwrap();
    assert!(
        c.starts_with("deorch_session=;") && c.contains("Max-Age=0"),
        "{c}"
    );
    let (_, owner_token) =
        deorch::cli::http::login_once(&url, &owner, AddressType::P2wpkh).unwrap();
    let owner_cookie = format!("deorch_session={owner_token}");
    let (_, viewer_token) =
        deorch::cli::http::login_once(&url, &viewer, AddressType::P2wpkh).unwrap();
    let viewer_cookie = format!("deorch_session={viewer_token}");

    let r = post(&url, Some(&owner_cookie), "vms", false);
    assert_eq!(r.status, 200, "{}", r.json());
    let v = r.json();
    assert_eq!(names(&v), vec!["web1", "web2"]);
    assert_eq!(v["plan"]["cli"], "deorch get vms");
    assert_eq!(v["plan"]["changes"], false);
    let r = post(&url, Some(&owner_cookie), "relocate web", false);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "Parse");
    assert_eq!(
        r.json()["suggestions"],
        json!(["relocate web1", "relocate web2"])
    );

    // The viewer sees, but a run is an apply as the viewer: refused, and
    // nothing changes.
    let r = post(&url, Some(&viewer_cookie), "vms", false);
    assert_eq!(names(&r.json()), vec!["web1", "web2"]);
    let r = post(&url, Some(&viewer_cookie), "create vm web3 from tiny", true);
    assert_eq!(r.status, 403, "{}", r.json());
    assert!(!exists(&node, "web3"));

    // Events: a change the owner runs reaches a listener within the bound;
    // a session that may list only namespace `team` hears of nothing else
    // (not even the name), but of a change there.
    let (_, team_token) =
        deorch::cli::http::login_once(&url, &teamop, AddressType::P2wpkh).unwrap();
    let team_cookie = format!("deorch_session={team_token}");
    let base = node.http_url();
    let base = base.split('#').next().unwrap();
    let listen = |cookie: &str| {
        Command::new("curl")
            .args(["-sSN", "-k", "--max-time", "20", "-H"])
            .arg(format!("Cookie: {cookie}"))
            .arg(format!("{base}/v1/events"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("curl (scripts/test.sh installs it)")
    };
    let (mut owner_events, mut team_events) = (listen(&owner_cookie), listen(&team_cookie));
    std::thread::sleep(Duration::from_millis(300));
    let r = post(&url, Some(&owner_cookie), "create vm web3 from tiny", true);
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["applied"][0]["changed"], true, "{}", r.json());
    let r = post(
        &url,
        Some(&owner_cookie),
        "create vm team/web4 from tiny",
        true,
    );
    assert_eq!(r.status, 200, "{}", r.json());
    // The lines a stream carries until one names `until`.
    let read_until = |curl: &mut std::process::Child, until: &str| {
        let t = Instant::now();
        let mut lines = Vec::new();
        for line in BufReader::new(curl.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            let done = line.starts_with("data:") && line.contains(until);
            lines.push(line);
            if done {
                break;
            }
            assert!(t.elapsed() < T, "no event for {until} in {T:?}: {lines:?}");
        }
        let _ = curl.kill();
        let _ = curl.wait();
        assert!(
            lines.iter().any(|l| l.contains(until)),
            "the event stream ended without {until}: {lines:?}"
        );
        lines
    };
    read_until(&mut owner_events, "VirtualMachine/default/web3");
    let team = read_until(&mut team_events, "VirtualMachine/team/web4");
    assert!(
        !team.iter().any(|l| l.contains("web3")),
        "an object the session may not list was named: {team:?}"
    );
    assert!(exists(&node, "web3"));
    // The node's log is a file, not a terminal: no colour escapes in it.
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(log.contains("command run"), "the log has no command lines");
    assert!(
        !log.contains('\x1b'),
        "colour escapes in a log that is no terminal"
    );
}

/// `deorch completions bash | head -1`: a reader that closed the pipe
/// before the script was written is no failure and no panic.
#[test]
fn completions_to_a_closed_pipe_end_quietly() {
    for shell in ["bash", "zsh", "fish"] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_deorch"))
            .args(["completions", shell])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The read end, closed before the child writes.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !err.contains("panicked"),
            "{shell}: {:?} {err}",
            out.status
        );
    }
}
