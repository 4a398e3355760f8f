//! The browser console (`/console.html`) end to end: a real node with the
//! QEMU driver (TCG) boots the tiny guest on a `pc` machine with a shell on
//! its VGA console (`deorch.vgashell`); Debian's headless chromium, driven
//! by npm's playwright-core (`tests/web/console.mjs`), takes a console
//! ticket with the owner's session cookie, opens the ticket's link on the
//! node's HTTPS origin, and noVNC (the embedded bundle) logs in to QEMU's
//! websocket over TLS. What the test types with the keyboard into the
//! VM's screen runs in the guest's shell and shows on its serial console.
//!
//! Also: the page opened without a ticket says how to get one; a wrong
//! password shows the refusal; the password leaves the URL at once and is
//! sent nowhere; Ctrl+] takes the keyboard back; Disconnect; axe-core
//! finds no serious or critical violation; a screenshot goes to
//! `docs/ui/console.png`.
//!
//! The npm packages are tests/web/setup.sh's (playwright-core, axe-core
//! under `$DEORCH_CACHE/web`); chromium and QEMU are Debian packages.
//! Without them the test skips loudly, or fails under `CI`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::browser::{browser_tools, repo, run_script};
use common::Node;
use deorch::http::client::{request, NodeUrl};
use deorch::identity::{AddressType, Network, PrivateKey};

/// The node's console range: its own, so other tests' VMs never take it.
const CONSOLE_PORTS: &str = "23100-23199";

/// The committed noVNC bundle is what `web/novnc/build.sh` makes from
/// `entry.js` and the pinned package (esbuild's output is deterministic).
#[test]
fn novnc_bundle_is_built_from_its_lock() {
    common::browser::assert_bundle_fresh("web/novnc/build.sh");
}

/// Wait (bounded) for `what` in the VM's serial log; its text.
fn wait_serial(serial: &Path, what: &str, limit: Duration, node: &Node) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(serial).unwrap_or_default();
        if text.contains(what) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no {what:?} on the serial console in {limit:?}:\n{text}\nnode log:\n{}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The guest's ready marker, with a watchdog: a TCG boot that prints
/// nothing for 30 s (rare) is killed and the VM's restart policy boots it
/// again, once. The serial text of the boot that worked.
fn wait_ready(node: &Node, serial: &Path) -> String {
    let limit = Duration::from_secs(30);
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(serial).unwrap_or_default();
        if text.contains("DEORCH-GUEST-READY") {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = |n: &Node| {
        n.record("vm", "tiny")
            .and_then(|r| r.status)
            .and_then(|s| s["pid"].as_u64())
            .unwrap_or(0)
    };
    let stuck = pid(node);
    eprintln!("no ready marker in {limit:?}; killing QEMU {stuck} for another boot");
    assert!(stuck > 0, "no QEMU to kill; node log:\n{}", node.log_text());
    Command::new("kill")
        .args(["-9", &stuck.to_string()])
        .status()
        .unwrap();
    node.wait_for("a new boot", |n| pid(n) != 0 && pid(n) != stuck);
    wait_serial(serial, "DEORCH-GUEST-READY", limit, node)
}

#[test]
fn console_page_types_into_the_guest_through_novnc_over_wss() {
    if !common::qemu_available() || !browser_tools() {
        return;
    }
    let started = Instant::now();
    let (kernel, initrd) = common::tiny_guest();
    let owner = PrivateKey::generate(Network::Mainnet);
    let owner_address = owner.address(AddressType::P2wpkh).unwrap().to_string();

    let mut node = Node::new("web-console");
    // An empty probe directory: TCG at once, no KVM probe boot (KVM does
    // not boot guests on these machines; docs: tiny-guest recipe).
    let no_probe = node.dir.join("no-probe-guest");
    std::fs::create_dir_all(&no_probe).unwrap();
    node.extra_args = [
        "--hypervisor",
        "qemu",
        "--probe-guest",
        no_probe.to_str().unwrap(),
        "--console-address",
        "127.0.0.1",
        "--console-ports",
        CONSOLE_PORTS,
        "--http-listen",
        "127.0.0.1:0",
        "--cluster-owner",
        &owner_address,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    std::fs::write(node.manifests.join("network.yaml"), "apiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata: {name: default}\nspec:\n  ipv4: {subnet: 10.42.0.0/24, gateway: 10.42.0.1}\n").unwrap();
    // A pc machine (microvm has no display device), its VGA console a shell.
    std::fs::write(
        node.manifests.join("suit.yaml"),
        format!(
            "apiVersion: deorch.dev/v1alpha1\nkind: Spacesuit\nmetadata: {{name: tiny-vga}}\nspec:\n  boot: {{kernel: {k}, initrd: {i}, cmdline: \"{c} deorch.vgashell\"}}\n  machine: pc\n  cpu: 1\n  memory: 128Mi\n",
            k = kernel.display(),
            i = initrd.display(),
            c = deorch::qemu::probe::TINY_CMDLINE,
        ),
    )
    .unwrap();
    std::fs::write(node.manifests.join("vm.yaml"), "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: tiny\nspec:\n  spacesuit: tiny-vga\n  powerState: Running\n  nics:\n    - name: eth0\n      network: default\n").unwrap();
    node.start();
    let serial = node.state.join("vms/default/tiny/serial.log");
    let boot = wait_ready(&node, &serial);
    assert!(
        boot.contains("deorch-guest: shell on tty1"),
        "no VGA shell: {boot}"
    );
    let booted = started.elapsed();

    // The owner's session, as the node's page holds it (an HttpOnly
    // cookie the browser gets): the script asks the ticket with it.
    let url = NodeUrl::parse(&node.http_url()).unwrap();
    let (_, token) = deorch::cli::http::login_once(&url, &owner, AddressType::P2wpkh).unwrap();
    let base = node.http_url().split('#').next().unwrap().to_string();
    // The console is locked without a ticket (what the browser opens is
    // the ticket's, not a leftover).
    let locked = request(
        &url,
        "POST",
        "/v1/vms/default/tiny/console",
        None,
        None,
        b"",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(locked.status, 401);

    // What the guest's shell echoes to its serial console: a fixed word
    // (the log is this boot's, so it is there only if this run typed it),
    // so docs/ui/console.png changes only when the page does.
    let word = "novnc-keys-ok".to_string();
    let shots = repo().join("docs/ui");
    let script_started = Instant::now();
    run_script(
        "console.mjs",
        &node.dir,
        &[
            ("DEORCH_URL", base.into()),
            ("DEORCH_SESSION", token.into()),
            ("DEORCH_VM", "default/tiny".into()),
            ("DEORCH_SERIAL", serial.clone().into()),
            ("DEORCH_WORD", word.clone().into()),
            ("DEORCH_SHOTS", shots.clone().into()),
        ],
        Duration::from_secs(120),
    );
    // What was typed in the browser ran in the guest: its output is on
    // the serial console, and only after the browser typed it.
    let text = std::fs::read_to_string(&serial).unwrap();
    assert!(
        text.lines().any(|l| l.trim() == word),
        "{word} not on the serial console:\n{text}"
    );
    let age = std::fs::metadata(shots.join("console.png"))
        .and_then(|m| m.modified())
        .map(|t| t.elapsed().unwrap_or_default())
        .expect("docs/ui/console.png");
    assert!(
        age < script_started.elapsed() + Duration::from_secs(1),
        "docs/ui/console.png was not written by this run"
    );
    // The browser's ticket was the session's (the script checked the
    // password went into no request).
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(log.contains("console ticket issued"), "no ticket issued");
    eprintln!(
        "web console: guest ready in {booted:?}, browser script {:?}, total {:?}",
        script_started.elapsed(),
        started.elapsed()
    );
}
