//! The web page (`/`) end to end, in a real browser: Debian's headless
//! chromium driven by npm's playwright-core (`tests/web/ui.mjs`), against a
//! real `deorch node run --http-listen` (fake hypervisor and storage) over
//! its self-signed HTTPS. With the keyboard only, the page generates a key
//! (refused: no policy names it), imports the cluster owner's WIF and logs
//! in (the key signs in the browser and never leaves it), lists the nodes,
//! shows a parse error with its column and suggestions picked with the
//! arrows, shows the plan and CLI of `create vm web1 from tiny` and applies
//! it on Enter, lists `vms`, follows a change made outside the page through
//! server-sent events, and logs out; axe-core finds no serious or critical
//! violation logged out or in. Screenshots of each step go to `docs/ui/`.
//!
//! The npm packages live outside the repository, installed by
//! `tests/web/setup.sh` under `$DEORCH_CACHE` (default `~/.cache/deorch`),
//! which this test runs when they are missing; chromium is the Debian
//! package (`apt-get install chromium`). Without them the test skips
//! loudly, or fails under `CI`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deorch::identity::{AddressType, Network, PrivateKey};

const CHROMIUM: &str = "/usr/bin/chromium";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn cache_dir() -> PathBuf {
    match std::env::var_os("DEORCH_CACHE") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
            .join(".cache/deorch"),
    }
}

/// Skip (false) with a message that is seen, or fail under `CI`.
fn missing(what: &str) -> bool {
    assert!(
        std::env::var("CI").is_err(),
        "{what} and CI is set: failing (scripts/test.sh installs it)"
    );
    // The real stderr: libtest captures eprintln! of passing tests.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "\n!!!!!! SKIPPED: {what} !!!!!!\n");
    false
}

fn node_works() -> bool {
    Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// chromium, node and the npm packages (installed now if missing), or
/// false when the test must skip.
fn browser_tools() -> bool {
    if !Path::new(CHROMIUM).exists() {
        return missing(&format!(
            "{CHROMIUM} is missing (apt-get install --no-install-recommends chromium fonts-dejavu-core)"
        ));
    }
    if !node_works() {
        return missing("node is missing (apt-get install nodejs npm)");
    }
    let web = cache_dir().join("web/node_modules");
    let present = || {
        web.join("playwright-core/package.json").is_file()
            && web.join("axe-core/axe.min.js").is_file()
    };
    let out = Command::new("sh")
        .arg(repo().join("tests/web/setup.sh"))
        .output()
        .expect("run sh");
    if !out.status.success() || !present() {
        return missing(&format!(
            "tests/web/setup.sh could not install playwright-core and axe-core: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    true
}

/// A key from a fixed secret: the same addresses every run, so the
/// screenshots in docs/ui change only when the page does.
fn fixed_key(byte: u8) -> PrivateKey {
    PrivateKey::from_bytes(&[byte; 32], true, Network::Mainnet).unwrap()
}

/// The committed bundle is what `web/vendor/build.sh` makes from
/// `entry.js` and the pinned packages (esbuild's output is deterministic).
#[test]
fn vendor_bundle_is_built_from_its_lock() {
    if !node_works() {
        missing("node is missing (apt-get install nodejs npm)");
        return;
    }
    let out = Command::new("sh")
        .arg(repo().join("web/vendor/build.sh"))
        .arg("--check")
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn page_logs_in_runs_commands_and_follows_changes_with_the_keyboard() {
    if !browser_tools() {
        return;
    }
    let owner = fixed_key(0x11);
    let owner_address = owner.address(AddressType::P2wpkh).unwrap().to_string();
    let mut node = common::Node::new("web-ui");
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
    node.start();
    let url = node.http_url();
    let base = url.split('#').next().unwrap().to_string();

    // The spacesuit `create vm web1 from tiny` names.
    let suit = std::fs::read_to_string(repo().join("manifests/spacesuit-tiny.yaml")).unwrap();
    let (rc, out, err) = node.cli(&["apply", "-f", "-"], Some(&suit));
    assert_eq!(rc, 0, "apply the tiny spacesuit: {out}{err}");

    let shots = repo().join("docs/ui");
    let failshot = node.dir.join("failure.png");
    let log = node.dir.join("ui.log");
    let started = Instant::now();
    let mut child = Command::new("node")
        .arg(repo().join("tests/web/ui.mjs"))
        .env("DEORCH_WEB_DIR", cache_dir().join("web"))
        .env("DEORCH_URL", &base)
        .env("DEORCH_WIF", owner.to_wif())
        .env("DEORCH_ADDRESS", &owner_address)
        .env("DEORCH_NODE", &node.name)
        .env("DEORCH_BIN", env!("CARGO_BIN_EXE_deorch"))
        .env("DEORCH_SOCKET", &node.socket)
        .env("DEORCH_SHOTS", &shots)
        .env("DEORCH_FAILSHOT", &failshot)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(node.dir.join("ui.err")).unwrap())
        .spawn()
        .expect("run node tests/web/ui.mjs");
    let deadline = started + Duration::from_secs(180);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&log).unwrap_or_default();
    let stderr = std::fs::read_to_string(node.dir.join("ui.err")).unwrap_or_default();
    let kept = std::env::temp_dir().join("deorch-web-ui-failure.png");
    if status.is_none_or(|s| !s.success()) {
        // The node's directory goes with it: keep the screenshot.
        let _ = std::fs::copy(&failshot, &kept);
    }
    match status {
        None => panic!(
            "the browser test took over 180 s; so far:\n{stdout}{stderr}\n(screenshot: {})",
            kept.display()
        ),
        Some(s) => assert!(
            s.success(),
            "the browser test failed ({s}):\n{stdout}{stderr}\n(screenshot: {})",
            kept.display()
        ),
    }
    eprintln!("{stdout}browser test: {:?}", started.elapsed());

    // What the page applied is in the node's store.
    assert!(
        node.record("vm", "web1").is_some(),
        "no VM web1 in the store"
    );
    for shot in [
        "login.png",
        "results.png",
        "parse-error.png",
        "suggestions.png",
        "plan.png",
        "applied.png",
        "vms.png",
        "live.png",
    ] {
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
