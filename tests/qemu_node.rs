//! A real node with the QEMU driver boots the tiny guest from manifests,
//! survives its own kill -9 without stopping the VM (re-adoption), restarts
//! a killed QEMU per restartPolicy, stops the guest by ACPI, and deletes it.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{qemu_available, tiny_guest, Node};
use deorch::http::client::{request, NodeUrl, Reply};
use deorch::identity::{AddressType, Network, PrivateKey};

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            != Some("Z")
    })
}

/// The node's console address and VNC range (`--console-address`,
/// `--console-ports`): not the defaults, so the test sees they are used.
const CONSOLE_HOST: &str = "127.0.0.2";
const CONSOLE_PORTS: (u64, u64) = (22000, 22099);

/// The console ports in status, after checking QEMU really serves them
/// where the node's settings say.
fn console(node: &Node) -> (u64, u64) {
    use std::io::Read;
    let st = vm_status(node);
    let c = &st["console"];
    let (vnc, ws) = (
        c["vncPort"].as_u64().expect("vncPort"),
        c["websocketPort"].as_u64().expect("websocketPort"),
    );
    let (first, last) = CONSOLE_PORTS;
    assert!(
        (first..=last).contains(&vnc) && ws == vnc + (last - first + 1),
        "{c}"
    );
    assert_eq!(c["host"], CONSOLE_HOST);
    assert!(
        c["url"].as_str().unwrap().contains(&format!("port={ws}")),
        "{c}"
    );
    let mut rfb =
        std::net::TcpStream::connect((CONSOLE_HOST, vnc as u16)).expect("VNC port answers");
    rfb.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut hello = [0u8; 12];
    rfb.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..4], b"RFB ", "an RFB greeting on the VNC port");
    std::net::TcpStream::connect((CONSOLE_HOST, ws as u16))
        .expect("the noVNC websocket port answers");
    (vnc, ws)
}

static OWNER: std::sync::LazyLock<(PrivateKey, String)> = std::sync::LazyLock::new(|| {
    let k = PrivateKey::generate(Network::Mainnet);
    let a = k.address(AddressType::P2wpkh).unwrap().to_string();
    (k, a)
});

fn user() -> (PrivateKey, String) {
    let k = PrivateKey::generate(Network::Mainnet);
    let a = k.address(AddressType::P2wpkh).unwrap().to_string();
    (k, a)
}

fn post(url: &NodeUrl, path: &str, cookie: Option<&str>, body: &[u8]) -> Reply {
    request(
        url,
        "POST",
        path,
        Some("application/yaml"),
        cookie,
        body,
        Duration::from_secs(10),
    )
    .unwrap()
}

/// Consoles through the HTTP API: the console starts locked; a session
/// whose policy allows `console` gets a one-time password that a VNC
/// client logs in with; a viewer, an operator of another namespace and a
/// request without a session get nothing.
fn console_tickets(node: &Node, vnc: u16) {
    use common::vnc::{vnc_login, VncLogin};
    let url = NodeUrl::parse(&node.http_url()).unwrap();
    let (viewer, viewer_addr) = user();
    let (elsewhere, elsewhere_addr) = user();
    let yaml = format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: AccessPolicy\nmetadata:\n  name: people\n  generation: 1\nspec:\n  rules:\n    - subjects: [\"{viewer_addr}\"]\n      role: viewer\n    - subjects: [\"{elsewhere_addr}\"]\n      role: operator\n      namespaces: [other]\n"
    );
    common::push_owner_signed(&url, &OWNER.0, &yaml);

    let locked = vnc_login(CONSOLE_HOST, vnc, None).unwrap();
    assert!(
        matches!(locked, VncLogin::Refused(_)),
        "starts locked: {locked:?}"
    );
    let path = "/v1/vms/default/tiny/console";
    let r = post(&url, path, None, b"");
    assert_eq!(r.status, 401, "no session");
    for (key, want) in [(&viewer, "Denied"), (&elsewhere, "Denied")] {
        let (_, token) = deorch::cli::http::login_once(&url, key, AddressType::P2wpkh).unwrap();
        let r = post(&url, path, Some(&format!("deorch_session={token}")), b"");
        assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["code"], want);
    }
    let (_, token) = deorch::cli::http::login_once(&url, &OWNER.0, AddressType::P2wpkh).unwrap();
    let cookie = format!("deorch_session={token}");
    let r = post(&url, "/v1/vms/default/nosuch/console", Some(&cookie), b"");
    assert_eq!(r.status, 404);
    let t = std::time::Instant::now();
    let r = post(&url, path, Some(&cookie), b"");
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let ticket = r.json();
    assert_eq!(ticket["vncPort"].as_u64(), Some(u64::from(vnc)));
    assert_eq!(ticket["host"], CONSOLE_HOST);
    let password = ticket["password"].as_str().unwrap().to_string();
    assert!(ticket["url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("&password={password}")));
    match vnc_login(CONSOLE_HOST, vnc, Some(&password)).unwrap() {
        VncLogin::Connected { .. } => {}
        other => panic!("the ticket's password was refused: {other:?}"),
    }
    // A browser on the node's HTTPS page: the websocket speaks TLS with
    // the node's certificate (its CA the one the page's chain names), and
    // the same ticket opens the console through it, as noVNC would.
    assert_eq!(ticket["websocketTls"], true, "{ticket}");
    assert!(
        ticket["url"].as_str().unwrap().starts_with(&format!(
            "/console.html#host={CONSOLE_HOST}&port={}",
            ticket["websocketPort"]
        )),
        "{ticket}"
    );
    let ws_port = ticket["websocketPort"].as_u64().unwrap() as u16;
    let ca = node.state.join("tls/ca.pem");
    let wss = common::wss::connect(CONSOLE_HOST, ws_port, &ca).expect("wss handshake");
    match common::vnc::rfb_login(wss, Some(&password)).unwrap() {
        VncLogin::Connected { .. } => {}
        other => panic!("the ticket's password was refused over wss: {other:?}"),
    }
    let wss = common::wss::connect(CONSOLE_HOST, ws_port, &ca).expect("wss handshake");
    assert!(
        matches!(
            common::vnc::rfb_login(wss, Some("wrong-pw")).unwrap(),
            VncLogin::Refused(_)
        ),
        "a wrong password over wss"
    );
    // A plain websocket (what an HTTPS page may not open) is not served.
    let mut plain = std::net::TcpStream::connect((CONSOLE_HOST, ws_port)).unwrap();
    plain
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    std::io::Write::write_all(
        &mut plain,
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n\r\n",
    )
    .unwrap();
    let mut answer = [0u8; 12];
    let n = std::io::Read::read(&mut plain, &mut answer).unwrap_or(0);
    assert!(
        !answer[..n].starts_with(b"HTTP/1.1 101"),
        "a plain websocket upgrade was answered"
    );
    eprintln!("console ticket over HTTPS in {took:?}");
    // The node's own user asks the local API (`deorch console`): a new
    // password, and the one before it no longer works.
    let (rc, out, err) = node.cli(&["console", "tiny", "--json"], None);
    assert_eq!(rc, 0, "{err}");
    let local: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let local_pw = local["password"].as_str().unwrap();
    assert_ne!(local_pw, password);
    assert!(matches!(
        vnc_login(CONSOLE_HOST, vnc, Some(&password)).unwrap(),
        VncLogin::Refused(_)
    ));
    assert!(matches!(
        vnc_login(CONSOLE_HOST, vnc, Some(local_pw)).unwrap(),
        VncLogin::Connected { .. }
    ));
    let (rc, _, err) = node.cli(&["console", "nosuch"], None);
    assert_eq!(rc, 3, "not found: {err}");
    assert!(err.contains("no VirtualMachine default/nosuch"), "{err}");
    // The password never reaches the log.
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(log.contains("console ticket issued"));
    assert!(!log.contains(&password), "the console password was logged");
}

fn vm_yaml(power: &str) -> String {
    format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: tiny\nspec:\n  spacesuit: tiny\n  powerState: {power}\n  stopTimeout: 5s\n  disks:\n    - name: data\n      size: 4Mi\n      source: {{spacesuit: data}}\n  nics:\n    - name: eth0\n      network: default\n"
    )
}

fn vm_status(node: &Node) -> serde_json::Value {
    vm_status_of(node, "tiny")
}

fn vm_status_of(node: &Node, name: &str) -> serde_json::Value {
    node.record("vm", name)
        .and_then(|r| r.status)
        .unwrap_or_default()
}

/// Watchdog: wait for the current boot's ready marker; a boot that prints
/// nothing for 30 s (rare under TCG) is killed, and the VM's own restart
/// policy boots it again. Returns the serial text of the boot that worked.
fn wait_ready(node: &Node) -> String {
    wait_ready_of(node, "tiny")
}

fn wait_ready_of(node: &Node, name: &str) -> String {
    let serial = node.state.join(format!("vms/default/{name}/serial.log"));
    for attempt in 1..=3 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&serial).unwrap_or_default();
            if text.contains("DEORCH-GUEST-READY") {
                return text;
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let pid = vm_status_of(node, name)["pid"].as_u64().unwrap_or(0);
        eprintln!("{name} boot attempt {attempt}: no ready marker in 30 s; killing QEMU {pid} so restartPolicy boots it again");
        assert!(pid > 0, "no QEMU to kill; node log:\n{}", node.log_text());
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        node.wait_for("a new boot", |n| {
            vm_status_of(n, name)["pid"]
                .as_u64()
                .is_some_and(|p| p != pid)
        });
    }
    panic!(
        "the tiny guest printed nothing in three boots; node log:\n{}",
        node.log_text()
    );
}

#[test]
fn tiny_vm_lifecycle_with_the_qemu_driver() {
    if !qemu_available() {
        return;
    }
    let g = tiny_guest().0.parent().unwrap().to_path_buf();
    let mut node = Node::new("qemu");
    node.extra_args = vec![
        "--hypervisor".into(),
        "qemu".into(),
        "--probe-guest".into(),
        g.display().to_string(),
        "--console-address".into(),
        CONSOLE_HOST.into(),
        "--console-ports".into(),
        format!("{}-{}", CONSOLE_PORTS.0, CONSOLE_PORTS.1),
        "--http-listen".into(),
        "127.0.0.1:0".into(),
        "--cluster-owner".into(),
        OWNER.1.clone(),
    ];
    std::fs::write(node.manifests.join("network.yaml"), "apiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata: {name: default}\nspec:\n  ipv4: {subnet: 10.42.0.0/24, gateway: 10.42.0.1}\n").unwrap();
    std::fs::write(
        node.manifests.join("tiny.yaml"),
        format!(
            "apiVersion: deorch.dev/v1alpha1\nkind: Spacesuit\nmetadata: {{name: tiny}}\nspec:\n  boot: {{kernel: {k}, initrd: {i}, cmdline: \"{c}\"}}\n  machine: microvm\n  cpu: 1\n  memory: 128Mi\n",
            k = g.join("vmlinuz").display(),
            i = g.join("initrd.img").display(),
            c = deorch::qemu::probe::TINY_CMDLINE,
        ),
    )
    .unwrap();
    // A data spacesuit from an image file with a known first sector: the
    // VM's disk is a copy-on-write clone of it, attached by QEMU, and the
    // guest prints what it reads there.
    let img = node.dir.join("data.qcow2");
    assert!(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg("2M")
        .status()
        .unwrap()
        .success());
    assert!(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0xab 0 512"])
        .arg(&img)
        .output()
        .unwrap()
        .status
        .success());
    std::fs::write(
        node.manifests.join("data.yaml"),
        format!(
            "apiVersion: deorch.dev/v1alpha1\nkind: Spacesuit\nmetadata: {{name: data}}\nspec:\n  source: {{image: {{path: {}, format: qcow2}}}}\n",
            img.display()
        ),
    )
    .unwrap();
    let vm = node.manifests.join("vm.yaml");
    std::fs::write(&vm, vm_yaml("Running")).unwrap();
    node.start();

    // Boots: QEMU running, the guest's own DHCP lease and ready marker seen.
    node.wait_for("phase Running", |n| {
        n.record("vm", "tiny")
            .is_some_and(|r| r.status.is_some_and(|s| s["phase"] == "Running"))
    });
    let serial = wait_ready(&node);
    assert!(serial.contains("deorch-guest: lease ip="), "{serial}");
    // 4 MiB (grown from the 2 MiB spacesuit) = 8192 sectors.
    assert!(
        serial.contains("deorch-guest: disk vda sectors=8192 head=abababababababab"),
        "the guest reads the spacesuit's data on its disk: {serial}"
    );
    let st = vm_status(&node);
    let restarts_before = st["restarts"].as_u64().unwrap_or(0);
    let ports = console(&node);
    console_tickets(&node, ports.0 as u16);
    let pid = st["pid"].as_u64().expect("pid in status");
    assert!(alive(pid));

    // A replica of the running VM (qcow2 storage): QEMU is switched to a
    // new overlay over QMP, the old image is frozen and cloned.
    let (code, out, err) = node.cli(&["replica", "create", "tiny", "--name", "live1"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(alive(pid), "the VM kept running");
    let vols = node.state.join("storage/volumes");
    let rep = vols.join("rep-default-live1-data.qcow2");
    assert_eq!(
        common::qemu_io_read(&rep, "qcow2"),
        0xab,
        "the replica holds the disk's data"
    );
    // QEMU now holds the new overlay (its write lock is on it).
    let info = Command::new("qemu-img")
        .arg("info")
        .arg(vols.join("vm-default-tiny-data.qcow2"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&info.stderr).contains("lock"),
        "QEMU writes the new overlay: {}",
        String::from_utf8_lossy(&info.stderr)
    );
    // A VM made from the running VM: its disk is a live clone of tiny's
    // (QEMU switched to a new overlay again), and it boots and reads
    // tiny's data while tiny keeps running. Both on microvm, whose guests
    // under TCG boot only because deorch hands the kernel the host's TSC
    // rate (src/qemu/tsc.rs).
    let twin = node.manifests.join("twin.yaml");
    std::fs::write(&twin, "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: twin\nspec:\n  spacesuit: tiny\n  disks:\n    - name: data\n      source: {virtualMachine: {name: tiny, disk: data}}\n  nics:\n    - name: eth0\n      network: default\n").unwrap();
    let twin_serial = wait_ready_of(&node, "twin");
    assert!(
        twin_serial.contains("deorch-guest: disk vda sectors=8192 head=abababababababab"),
        "the VM made from a running VM reads its data: {twin_serial}"
    );
    assert!(alive(pid), "the source VM kept running");
    let twin_pid = vm_status_of(&node, "twin")["pid"]
        .as_u64()
        .expect("twin pid");
    std::fs::remove_file(&twin).unwrap();
    node.wait_for("twin removed", |n| n.record("vm", "twin").is_none());
    node.wait_for("twin's QEMU gone", |_| !alive(twin_pid));
    assert!(alive(pid), "deleting the clone leaves its source running");

    let accel = st["accel"].as_str().unwrap().to_string();
    assert!(accel == "tcg" || accel == "kvm", "{st}");
    let sat = node
        .record("satellite", "test-node")
        .unwrap()
        .status
        .unwrap();
    assert_eq!(
        sat["accel"],
        accel.as_str(),
        "the satellite shows the probed accelerator"
    );
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    assert_eq!(
        sat["cpu"].as_str(),
        deorch::reconcile::satellite::cpu_signature(&cpu).as_deref(),
        "the satellite shows this host's CPU, which relocation under KVM matches: {sat}"
    );

    // The daemon dies; the VM does not, and is re-adopted.
    node.kill();
    std::thread::sleep(Duration::from_millis(500));
    assert!(alive(pid), "killing the node must not stop its VMs");
    node.start();
    node.wait_for("re-adoption", |n| {
        n.record("vm", "tiny").is_some_and(|r| {
            r.status
                .is_some_and(|s| s["phase"] == "Running" && s["pid"] == pid)
        })
    });
    assert_eq!(
        vm_status(&node)["restarts"].as_u64().unwrap_or(0),
        restarts_before,
        "re-adoption is not a restart"
    );
    assert_eq!(
        console(&node),
        ports,
        "console ports survive a node restart"
    );

    // QEMU killed: restarted by restartPolicy Always.
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    node.wait_for("restart after a crash", |n| {
        let s = vm_status(n);
        s["restarts"].as_u64() == Some(restarts_before + 1)
            && s["phase"] == "Running"
            && s["pid"] != pid
    });
    wait_ready(&node);
    assert_eq!(console(&node), ports, "console ports survive a VM restart");
    let pid2 = node.record("vm", "tiny").unwrap().status.unwrap()["pid"]
        .as_u64()
        .unwrap();

    // Stopped by spec: ACPI power button, the guest powers off.
    std::fs::write(&vm, vm_yaml("Stopped")).unwrap();
    // Graceful (ACPI) or, after stopTimeout (5 s), forced: either way stopped.
    let deadline = Instant::now() + Duration::from_secs(40);
    while vm_status(&node)["phase"] != "Stopped" {
        assert!(
            Instant::now() < deadline,
            "not stopped in 40 s; node log:\n{}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(pid2) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!alive(pid2), "QEMU still running after a stop");
    let serial =
        std::fs::read_to_string(node.state.join("vms/default/tiny/serial.log")).unwrap_or_default();
    eprintln!(
        "graceful power-off seen: {}",
        serial.contains("power button")
    );

    // Deleted: its runtime directory goes away.
    std::fs::remove_file(&vm).unwrap();
    node.wait_for("runtime dir removed", |n| {
        !n.state.join("vms/default/tiny").exists()
    });
}
