//! The web page (`/`) end to end, in a real browser: Debian's headless
//! chromium driven by npm's playwright-core (`tests/web/*.mjs`), against a
//! real `deorch node run --http-listen` (fake hypervisor and storage) over
//! its self-signed HTTPS, with the keyboard only.
//!
//! - `ui.mjs`: a `?q=` link opened logged out keeps its query through the
//!   login and runs it after; the page generates a key (refused: no policy
//!   names it), imports the cluster owner's WIF and logs in (the key signs
//!   in the browser and never leaves it), lists the nodes, shows a parse
//!   error with its column and suggestions picked with the arrows, shows
//!   the plan and CLI of `create vm web1 from tiny` and applies it on
//!   Enter, lists `vms` (the URL following the query), follows a change
//!   made outside the page through server-sent events, follows a card's
//!   link and comes Back, opens a `?q=` URL directly, takes replicas by
//!   typing and by the VM's button, lists them, reverts to each (typed,
//!   then the button with the replica picked from the suggestions) and sees
//!   the VM's status report it, stops and starts the VM with its buttons,
//!   uses the buttons beside the command line, and logs out (the node
//!   clears the cookie: the next command gets 401). Then, the kept key
//!   forgotten, it logs in with an external wallet: the address typed, the
//!   challenge shown and copied, signed outside the page by `deorch sign`
//!   (Electrum's header), the signature pasted back; a wrong signature and
//!   an expired challenge are refused in an alert and a new challenge
//!   shown. Last, the session handed over: the same node as
//!   `https://localhost:PORT` (another origin, another cookie jar) takes
//!   `#adopt=TOKEN` from `POST /v1/auth/handover` and drops the fragment,
//!   refuses a bogus token and a session cookie as token, and a node's
//!   "Open on NODE" button (its row's `url` added by the test when the
//!   node gives none) hands the session over and opens that page.
//! - `level2.mjs`: an AccessPolicy asks a real slapd for the user's
//!   password; the page asks it, shows the node's refusal of a wrong one,
//!   and logs in with the right one.
//! - `join.mjs`: a machine asks to join (its request posted by the
//!   test); `nodes` shows it with an Approve button that writes `approve
//!   NAME`; Enter signs the members policy's next generation with the
//!   owner's key in the page and pushes it; the node admits the machine.
//! - `bench.mjs` (ignored test, on demand): the figures of
//!   docs/PERFORMANCE.md's web page section, beside noVNC's own page.
//!
//! axe-core finds no serious or critical violation in any state checked.
//! Screenshots of each step go to `docs/ui/`.
//!
//! The npm packages live outside the repository, installed by
//! `tests/web/setup.sh` under `$DEORCH_CACHE` (default `~/.cache/deorch`),
//! which this test runs when they are missing; chromium is the Debian
//! package (`apt-get install chromium`). Without them the test skips
//! loudly, or fails under `CI`.

mod common;

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::browser::{browser_tools, missing, repo, run_script};
use deorch::http::client::NodeUrl;
use deorch::identity::{AddressType, Network, PrivateKey};

/// A key from a fixed secret: the same addresses every run, so the
/// screenshots in docs/ui change only when the page does.
fn fixed_key(byte: u8) -> PrivateKey {
    PrivateKey::from_bytes(&[byte; 32], true, Network::Mainnet).unwrap()
}

/// The committed bundle is what `web/vendor/build.sh` makes from
/// `entry.js` and the pinned packages (esbuild's output is deterministic).
#[test]
fn vendor_bundle_is_built_from_its_lock() {
    common::browser::assert_bundle_fresh("web/vendor/build.sh");
}

/// Every screenshot in `names` was written since `started`.
fn assert_fresh_shots(shots: &Path, names: &[&str], started: Instant) {
    for shot in names {
        let path = shots.join(shot);
        let age = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            age < started.elapsed() + Duration::from_secs(1),
            "{} was not written by this run",
            path.display()
        );
    }
}

/// A node (fake drivers) serving the page for the cluster `owner` owns,
/// with a fixed node key and the `tiny` spacesuit; its page's base URL.
fn page_node(tag: &str, owner: &PrivateKey, extra: &[&str]) -> (common::Node, String) {
    let owner_address = owner.address(AddressType::P2wpkh).unwrap().to_string();
    let mut node = common::Node::new(tag);
    node.name = "web-ui-node".into();
    std::fs::create_dir_all(&node.state).unwrap();
    fixed_key(0x22).save(&node.state.join("node.key")).unwrap();
    node.extra_args.extend(
        [
            "--http-listen",
            "127.0.0.1:0",
            "--cluster-owner",
            &owner_address,
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    node.extra_args.extend(extra.iter().map(|s| s.to_string()));
    node.start();
    let base = node.http_url().split('#').next().unwrap().to_string();
    // The spacesuit `create vm web1 from tiny` names.
    let suit = std::fs::read_to_string(repo().join("manifests/spacesuit-tiny.yaml")).unwrap();
    let (rc, out, err) = node.cli(&["apply", "-f", "-"], Some(&suit));
    assert_eq!(rc, 0, "apply the tiny spacesuit: {out}{err}");
    (node, base)
}

#[test]
fn page_logs_in_runs_commands_and_follows_changes_with_the_keyboard() {
    if !browser_tools() {
        return;
    }
    let owner = fixed_key(0x11);
    let owner_address = owner.address(AddressType::P2wpkh).unwrap().to_string();
    // Login challenges live 8 s here, so the page's expiry of one it
    // shows for an external wallet is seen in a few seconds (the page's
    // own key signs at once).
    let (node, base) = page_node("web-ui", &owner, &["--login-ttl", "8s"]);
    // The owner's key as a file, for `deorch sign`: the external wallet,
    // a signer outside the page.
    let key_file = node.dir.join("owner.key");
    owner.save(&key_file).unwrap();
    let shots = repo().join("docs/ui");
    let started = Instant::now();
    run_script(
        "ui.mjs",
        &node.dir,
        &[
            ("DEORCH_URL", base.into()),
            ("DEORCH_WIF", owner.to_wif().into()),
            ("DEORCH_ADDRESS", owner_address.into()),
            ("DEORCH_NODE", node.name.clone().into()),
            ("DEORCH_BIN", env!("CARGO_BIN_EXE_deorch").into()),
            ("DEORCH_SOCKET", node.socket.clone().into()),
            ("DEORCH_KEY_FILE", key_file.into()),
            ("DEORCH_SHOTS", shots.clone().into()),
        ],
        Duration::from_secs(240),
    );

    // The node saw what the page said it did.
    let log = node.log_text();
    assert!(
        log.contains("BadSignature"),
        "no wrong signature refused in the node's log"
    );
    assert!(
        log.contains("ChallengeExpired"),
        "no expired challenge refused in the node's log"
    );
    assert_eq!(
        log.matches("session adopted from a hand-over").count(),
        2,
        "two hand-overs adopted"
    );
    assert_eq!(
        log.matches("adopt refused").count(),
        3,
        "a bogus token, a session cookie and a used token refused"
    );
    assert_eq!(
        log.matches("adopt refused: hand-over token already used")
            .count(),
        1,
        "the used token refused as used"
    );

    // What the page applied is in the node's store.
    assert!(
        node.record("vm", "web1").is_some(),
        "no VM web1 in the store"
    );
    let replicas: Vec<String> = node
        .records()
        .into_iter()
        .filter(|r| r.key.kind == deorch::model::Kind::Replica && !r.deleted)
        .map(|r| r.key.name)
        .collect();
    assert_eq!(replicas.len(), 2, "{replicas:?}");
    assert!(replicas.iter().any(|r| r == "r1"), "{replicas:?}");
    let web1 = node.record("vm", "web1").unwrap();
    let last = web1.status.as_ref().unwrap()["lastRevert"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        last.starts_with("web1-") && last.ends_with(&format!("@{}", web1.generation)),
        "the last revert is {last:?}, not the button's at generation {}",
        web1.generation
    );
    assert_fresh_shots(
        &shots,
        &[
            "login.png",
            "results.png",
            "parse-error.png",
            "suggestions.png",
            "plan.png",
            "applied.png",
            "vms.png",
            "live.png",
            "vm.png",
            "revert.png",
            "actions.png",
            "logged-out.png",
            "wallet.png",
            "wallet-refused.png",
            "adopt-refused.png",
            "open-on-node.png",
        ],
        started,
    );
}

/// The user's directory password in the level-2 test.
const PASSWORD: &str = "correct horse battery staple";

#[test]
fn page_asks_the_level_2_password_a_real_slapd_checks() {
    if !browser_tools() || !common::slapd::slapd_available() {
        return;
    }
    let slapd = common::slapd::start("web-ui", &[("alice", PASSWORD)]);
    let owner = fixed_key(0x11);
    let user = fixed_key(0x33);
    let user_address = user.address(AddressType::P2wpkh).unwrap().to_string();
    let (node, base) = page_node("web-ui-level2", &owner, &[]);
    common::push_owner_signed(
        &NodeUrl::parse(&node.http_url()).unwrap(),
        &owner,
        &common::level2_policy(
            &user_address,
            &[common::slapd::directory_server(slapd.port)],
            "alice",
        ),
    );
    let shots = repo().join("docs/ui");
    let started = Instant::now();
    run_script(
        "level2.mjs",
        &node.dir,
        &[
            ("DEORCH_URL", base.into()),
            ("DEORCH_WIF", user.to_wif().into()),
            ("DEORCH_ADDRESS", user_address.into()),
            ("DEORCH_PASSWORD", PASSWORD.into()),
            ("DEORCH_SHOTS", shots.clone().into()),
        ],
        Duration::from_secs(120),
    );
    assert_fresh_shots(&shots, &["level2.png"], started);
    // slapd said no, then yes; the node never wrote the password down.
    let log = node.log_text();
    assert!(log.contains("level-2 password required"), "not asked");
    assert!(
        log.contains("login refused: level 2"),
        "the wrong password passed"
    );
    assert!(log.contains("level 2 passed"), "the right password failed");
    assert!(!log.contains(PASSWORD), "the password is in the node's log");
    drop(slapd);
}

/// The web page's figures (docs/PERFORMANCE.md), beside noVNC's own page
/// (Debian's `novnc`, served here by `python3 -m http.server`): the first
/// load's bytes, load to usable, a store change to the page, and a typed
/// query to its results with 10,000 VMs in the store (`tests/web/bench.mjs`
/// says how each is taken). On demand:
///
/// ```sh
/// CI=true cargo nextest run --test web_ui --run-ignored only bench_page_figures --no-capture
/// ```
///
/// `DEORCH_SAMPLES` (20) and `DEORCH_OBJECTS` (10000) change the counts.
#[test]
#[ignore = "benchmark, on demand (a few minutes)"]
fn bench_page_figures() {
    if !browser_tools() {
        return;
    }
    let novnc = Path::new("/usr/share/novnc/vnc.html");
    if !novnc.is_file() {
        missing("noVNC is missing (apt-get install --no-install-recommends novnc)");
        return;
    }
    let owner = fixed_key(0x11);
    let (node, base) = page_node("web-ui-bench", &owner, &[]);
    // noVNC's page from a static server, as a browser would get it.
    let port = common::slapd::free_port();
    /// The static server, stopped however the test ends.
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Server(
        Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
            .arg(novnc.parent().unwrap())
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the static server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut vars = vec![
        ("DEORCH_URL", OsString::from(base)),
        ("DEORCH_WIF", owner.to_wif().into()),
        ("DEORCH_BIN", env!("CARGO_BIN_EXE_deorch").into()),
        ("DEORCH_SOCKET", node.socket.clone().into()),
        (
            "DEORCH_NOVNC_URL",
            format!("http://127.0.0.1:{port}/vnc.html").into(),
        ),
    ];
    for name in ["DEORCH_SAMPLES", "DEORCH_OBJECTS"] {
        if let Some(v) = std::env::var_os(name) {
            vars.push((name, v));
        }
    }
    let out = run_script("bench.mjs", &node.dir, &vars, Duration::from_secs(1800));
    assert!(out.contains("FIGURES {"), "no figures:\n{out}");
}

/// A join request approved from the page (`tests/web/join.mjs`): a new
/// machine's request (signed by its own key, posted here), the owner's
/// key in the page signs the members policy's next generation, and the
/// node admits it: the policy in the store lists the machine and carries
/// the owner's signature.
#[test]
fn page_approves_a_join_request_signed_by_the_owners_key() {
    if !browser_tools() {
        return;
    }
    let owner = fixed_key(0x11);
    let owner_address = owner.address(AddressType::P2wpkh).unwrap().to_string();
    let (node, base) = page_node("web-ui-join", &owner, &[]);
    let node_id = fixed_key(0x22)
        .address(AddressType::P2wpkh)
        .unwrap()
        .to_string();
    let url = NodeUrl::parse(&node.http_url()).unwrap();
    common::push_owner_signed(
        &url,
        &owner,
        &common::members_policy(1, &[("web-ui-node", &node_id)], ""),
    );
    let joiner = fixed_key(0x44);
    let joiner_id = joiner.address(AddressType::P2wpkh).unwrap().to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let req = deorch::http::join::JoinRequest::signed(
        &joiner,
        &owner_address,
        "sat-new",
        &joiner_id,
        now,
    );
    let r = deorch::http::client::request(
        &url,
        "POST",
        "/v1/join",
        Some("application/json"),
        None,
        &serde_json::to_vec(&req).unwrap(),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.json());
    let shots = repo().join("docs/ui");
    let started = Instant::now();
    run_script(
        "join.mjs",
        &node.dir,
        &[
            ("DEORCH_URL", base.into()),
            ("DEORCH_WIF", owner.to_wif().into()),
            ("DEORCH_ADDRESS", owner_address.clone().into()),
            ("DEORCH_JOINER", "sat-new".into()),
            ("DEORCH_SHOTS", shots.clone().into()),
        ],
        Duration::from_secs(120),
    );
    assert_fresh_shots(&shots, &["join.png"], started);
    let policy = node.record("accesspolicy", "members").unwrap();
    assert_eq!(policy.generation, 2);
    assert!(
        policy.object["spec"]["satellites"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "sat-new" && s["address"] == joiner_id.as_str()),
        "{}",
        policy.object
    );
    assert_eq!(
        deorch::identity::verify_manifest(&policy.object, &owner_address).unwrap(),
        owner_address
    );
}
