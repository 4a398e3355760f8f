//! The browser console end to end, on one real guest: a node with the
//! QEMU driver (TCG) and, from its manifests, a `pc` spacesuit whose VGA
//! console is a shell (`deorch.vgashell`) and a stopped VM `tmpl` made
//! from it with SPICE on. Debian's headless chromium, driven by npm's
//! playwright-core (`tests/web/console.mjs`), logs in on the node's page
//! with the owner's key, types `create vm web from tmpl` and `start web`
//! in its command line, and watches `web`'s card reach Running as the
//! guest boots (the only boot of the test). Then `console web` opens the
//! console page: noVNC (the embedded bundle) logs in to QEMU's websocket
//! over TLS, and what the test types on the VM's screen runs in the
//! guest's shell and shows on its serial console; then the page's SPICE
//! switch takes a fresh ticket and spice-html5 (Debian's, embedded) logs
//! in to QEMU's SPICE through the node's websocket bridge
//! (`/console/spice/NS/NAME`), and another line typed there shows on the
//! serial console too.
//!
//! Also: the page opened without a ticket says how to get one; a wrong
//! password shows the refusal; the password leaves the URL at once and no
//! ticket's password is sent anywhere; Ctrl+] takes the keyboard back;
//! Disconnect; axe-core finds no serious or critical violation;
//! screenshots go to `docs/ui/` (`console-running.png`, `console.png`,
//! `console-spice.png`). After the browser: the bridge refuses a request
//! without a session, from another origin, without a websocket handshake,
//! and for a VM not running here, and carries a SPICE link (QEMU's
//! `REDQ` reply) for the owner's session.
//!
//! The npm packages are tests/web/setup.sh's (playwright-core, axe-core
//! under `$DEORCH_CACHE/web`); chromium, QEMU and spice-html5 are Debian
//! packages. Without them the test skips loudly, or fails under `CI`.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::browser::{browser_tools, missing, repo, run_script};
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

/// `web/spice/` is Debian's spice-html5 0.3.0-2 byte for byte, and the
/// installed package's files are as dpkg installed them
/// (`web/spice/build.sh --check`).
#[test]
fn spice_html5_is_debians_package() {
    if !Path::new("/usr/share/spice-html5/main.js").exists() {
        missing("spice-html5 is not installed (apt-get install spice-html5)");
        return;
    }
    let out = Command::new("sh")
        .arg(repo().join("web/spice/build.sh"))
        .arg("--check")
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "web/spice/build.sh --check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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

/// The PID of VM `name`'s QEMU, or 0.
fn qemu_pid(node: &Node, name: &str) -> u64 {
    node.record("vm", name)
        .and_then(|r| r.status)
        .and_then(|s| s["pid"].as_u64())
        .unwrap_or(0)
}

/// VM `name`'s ready marker, with a watchdog: a TCG boot that prints
/// nothing for 30 s (rare) is killed and the VM's restart policy boots it
/// again, once. The serial text of the boot that worked.
fn wait_ready(node: &Node, name: &str, serial: &Path) -> String {
    let limit = Duration::from_secs(30);
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(serial).unwrap_or_default();
        if text.contains("DEORCH-GUEST-READY") {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let stuck = qemu_pid(node, name);
    eprintln!("no ready marker in {limit:?}; killing QEMU {stuck} for another boot");
    assert!(stuck > 0, "no QEMU to kill; node log:\n{}", node.log_text());
    Command::new("kill")
        .args(["-9", &stuck.to_string()])
        .status()
        .unwrap();
    node.wait_for("a new boot", |n| {
        let p = qemu_pid(n, name);
        p != 0 && p != stuck
    });
    wait_serial(serial, "DEORCH-GUEST-READY", limit, node)
}

/// A request to the SPICE bridge of VM `vm` as a browser makes it (a
/// websocket handshake unless `upgrade` is false; `origin` and the
/// session `cookie` when given), over the node's pinned TLS: the status
/// line and the stream, which is the websocket after a 101.
fn bridge_request(
    url: &NodeUrl,
    vm: &str,
    cookie: Option<&str>,
    origin: Option<&str>,
    upgrade: bool,
) -> (String, Box<dyn deorch::http::client::Stream>) {
    let mut s = deorch::http::client::connect(url, Duration::from_secs(10)).unwrap();
    let mut head = format!(
        "GET /console/spice/{vm} HTTP/1.1\r\nHost: {}\r\n",
        url.authority
    );
    if upgrade {
        head += "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: binary\r\n";
    }
    if let Some(o) = origin {
        head += &format!("Origin: {o}\r\n");
    }
    if let Some(c) = cookie {
        head += &format!("Cookie: deorch_session={c}\r\n");
    }
    head += "\r\n";
    s.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut b = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).expect("the bridge answers");
        answer.push(b[0]);
        assert!(answer.len() < 8192, "an endless answer");
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    (answer, s)
}

/// A client's masked binary frame.
fn client_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    deorch::http::ws::encode(
        &mut out,
        true,
        deorch::http::ws::Opcode::Binary,
        payload,
        Some([1, 2, 3, 4]),
    );
    out
}

/// The payloads of the server's frames until `n` bytes arrived.
fn read_payload(s: &mut impl Read, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < n {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).expect("a frame");
        assert_eq!(h[1] & 0x80, 0, "a server frame is not masked");
        let len = match h[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                s.read_exact(&mut l).unwrap();
                u16::from_be_bytes(l) as usize
            }
            127 => panic!("a frame over 64 KiB"),
            n => n as usize,
        };
        let mut p = vec![0u8; len];
        s.read_exact(&mut p).unwrap();
        assert_eq!(h[0] & 0x0f, 2, "a binary frame: {p:?}");
        out.extend(p);
    }
    out
}

/// The bridge as a client other than a browser sees it: refusals before
/// any upgrade, and a SPICE link message answered by QEMU's link reply.
fn check_the_bridge(url: &NodeUrl, token: &str, node: &Node) {
    let origin = format!("https://{}", url.authority);
    let status = |vm: &str, cookie: Option<&str>, origin: Option<&str>, upgrade: bool| {
        let (answer, _) = bridge_request(url, vm, cookie, origin, upgrade);
        answer.lines().next().unwrap_or_default().to_string()
    };
    let o = Some(origin.as_str());
    assert!(
        status("default/web", None, o, true).contains(" 401 "),
        "without a session"
    );
    assert!(
        status(
            "default/web",
            Some(token),
            Some("https://evil.example"),
            true
        )
        .contains(" 403 "),
        "from another origin"
    );
    assert!(
        status("default/web", Some(token), o, false).contains(" 400 "),
        "without a handshake"
    );
    assert!(
        status("default/tmpl", Some(token), o, true).contains(" 409 "),
        "a stopped VM"
    );
    assert!(
        status("default/nope", Some(token), o, true).contains(" 404 "),
        "no such VM"
    );

    let (answer, mut ws) = bridge_request(url, "default/web", Some(token), o, true);
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    let header = |name: &str| {
        answer.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    // RFC 6455's example key, answered as the RFC says.
    assert_eq!(
        header("sec-websocket-accept").as_deref(),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{answer}"
    );
    assert_eq!(
        header("sec-websocket-protocol").as_deref(),
        Some("binary"),
        "{answer}"
    );
    // SPICE's link message for the main channel, as spice-html5 sends it
    // first (no capabilities): the reply is QEMU's, magic and all.
    let mut mess = Vec::new();
    mess.extend(0u32.to_le_bytes());
    mess.extend([1u8, 0]);
    mess.extend(0u32.to_le_bytes());
    mess.extend(0u32.to_le_bytes());
    mess.extend(18u32.to_le_bytes());
    let mut link = b"REDQ".to_vec();
    link.extend(2u32.to_le_bytes());
    link.extend(2u32.to_le_bytes());
    link.extend((mess.len() as u32).to_le_bytes());
    link.extend(mess);
    // In two frames, as a fragmented send could.
    ws.write_all(&client_frame(&link[..7])).unwrap();
    ws.write_all(&client_frame(&link[7..])).unwrap();
    let head = read_payload(&mut ws, 16);
    assert_eq!(
        &head[..4],
        b"REDQ",
        "SPICE's magic through the bridge: {head:?}"
    );
    assert_eq!(u32::from_le_bytes(head[4..8].try_into().unwrap()), 2);
    drop(ws);
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read_to_string(&node.log).unwrap();
        if log.matches("SPICE bridge closed").count() >= log.matches("SPICE bridge opened").count()
            || Instant::now() > deadline
        {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for line in [
        "SPICE bridge refused: another origin",
        "SPICE bridge refused: no websocket handshake",
        "NotRunningHere",
        "SPICE bridge opened",
        "SPICE bridge closed",
    ] {
        assert!(log.contains(line), "the node logged no {line:?}");
    }
    assert_eq!(
        log.matches("SPICE bridge closed").count(),
        log.matches("SPICE bridge opened").count(),
        "a bridge outlived its client"
    );
}

#[test]
fn a_vm_typed_in_the_page_boots_and_both_consoles_type_into_it() {
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
    // A spacesuit carries no console settings and the command line sets
    // none, so the VM the page makes copies a stopped VM that has SPICE
    // (`create vm NAME from VM` copies its spec; it never boots itself).
    std::fs::write(node.manifests.join("tmpl.yaml"), "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: tmpl\nspec:\n  spacesuit: tiny-vga\n  powerState: Stopped\n  console: {spice: true}\n  nics:\n    - name: eth0\n      network: default\n").unwrap();
    node.start();
    node.wait_for("the template VM", |n| {
        n.record("vm", "tmpl")
            .and_then(|r| r.status)
            .is_some_and(|s| s["phase"] == "Stopped")
    });

    // The owner's session for the requests the test makes itself.
    let url = NodeUrl::parse(&node.http_url()).unwrap();
    let (_, token) = deorch::cli::http::login_once(&url, &owner, AddressType::P2wpkh).unwrap();
    let base = node.http_url().split('#').next().unwrap().to_string();
    // The console is locked without a ticket (what the browser opens is
    // the ticket's, not a leftover).
    let locked = request(
        &url,
        "POST",
        "/v1/vms/default/tmpl/console",
        None,
        None,
        b"",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(locked.status, 401);

    // What the guest's shell echoes to its serial console through each
    // viewer: fixed words (the log is this boot's, so each is there only
    // if this run typed it), so the screenshots change only when the page
    // does.
    let (word, spice_word) = ("novnc-keys-ok", "spice-keys-ok");
    let serial = node.state.join("vms/default/web/serial.log");
    let shots = repo().join("docs/ui");
    let script_started = Instant::now();
    let vars: Vec<(&'static str, std::ffi::OsString)> = vec![
        ("DEORCH_URL", base.into()),
        ("DEORCH_WIF", owner.to_wif().into()),
        ("DEORCH_ADDRESS", owner_address.clone().into()),
        ("DEORCH_SOURCE", "tmpl".into()),
        ("DEORCH_VM", "default/web".into()),
        ("DEORCH_SERIAL", serial.clone().into()),
        ("DEORCH_WORD", word.into()),
        ("DEORCH_SPICE_WORD", spice_word.into()),
        ("DEORCH_SHOTS", shots.clone().into()),
    ];
    let dir = node.dir.clone();
    let browser = std::thread::spawn(move || {
        run_script("console.mjs", &dir, &vars, Duration::from_secs(240))
    });
    // The browser starts the VM; meanwhile the guest's boot is watched
    // here (the script waits for its ready marker before it types).
    let deadline = Instant::now() + Duration::from_secs(120);
    while qemu_pid(&node, "web") == 0 {
        if browser.is_finished() {
            let _ = browser.join().map_err(std::panic::resume_unwind);
            panic!("the browser ended before it started the VM");
        }
        assert!(
            Instant::now() < deadline,
            "the page never started the VM; node log:\n{}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let boot_started = Instant::now();
    let boot = wait_ready(&node, "web", &serial);
    let booted = boot_started.elapsed();
    assert!(
        boot.contains("deorch-guest: shell on tty1"),
        "no VGA shell: {boot}"
    );
    let stdout = browser
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(stdout.contains("all steps passed"), "{stdout}");

    // What was typed in the browser ran in the guest: its output is on
    // the serial console, and only after the browser typed it.
    let text = std::fs::read_to_string(&serial).unwrap();
    for w in [word, spice_word] {
        assert!(
            text.lines().any(|l| l.trim() == w),
            "{w} not on the serial console:\n{text}"
        );
    }
    for shot in ["console-running.png", "console.png", "console-spice.png"] {
        let age = std::fs::metadata(shots.join(shot))
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().unwrap_or_default())
            .unwrap_or_else(|e| panic!("docs/ui/{shot}: {e}"));
        assert!(
            age < script_started.elapsed() + Duration::from_secs(1),
            "docs/ui/{shot} was not written by this run"
        );
    }
    // The browser's tickets were the session's (the script checked no
    // password went into a request), and SPICE went through the bridge.
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(log.contains("console ticket issued"), "no ticket issued");
    assert!(log.contains("SPICE bridge opened"), "no SPICE bridge");

    check_the_bridge(&url, &token, &node);
    eprintln!(
        "web console: guest ready {booted:?} after its QEMU started, browser script {:?}, total {:?}",
        script_started.elapsed(),
        started.elapsed()
    );
}
