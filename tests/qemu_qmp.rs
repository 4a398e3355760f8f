//! The QMP client against a real QEMU process.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deorch::qemu::qmp::{Qmp, QmpError};

/// QEMU must be installed in CI; elsewhere the test says loudly it skipped.
fn qemu_available() -> bool {
    let ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "qemu-system-x86_64 is missing and CI=true: install it (scripts/test.sh does)"
        );
        eprintln!("SKIPPED: qemu-system-x86_64 not installed");
    }
    ok
}

#[tokio::test]
async fn qmp_session_commands_errors_and_close() {
    if !qemu_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("deorch-qmp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("qmp.sock");
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "none",
            "-nodefaults",
            "-display",
            "none",
            "-S",
            "-qmp",
        ])
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn qemu");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "QMP socket never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut qmp = Qmp::connect(&sock, Duration::from_secs(5))
        .await
        .expect("connect");
    assert!(qmp.version.0 >= 6, "QEMU version {:?}", qmp.version);
    let status = qmp.execute("query-status", None).await.unwrap();
    assert_eq!(status["status"], "prelaunch", "{status}");
    match qmp.execute("no-such-command", None).await {
        Err(QmpError::Command { class, .. }) => assert_eq!(class, "CommandNotFound"),
        other => panic!("expected a command error, got {other:?}"),
    }
    // Still usable after an error.
    qmp.execute("query-status", None).await.unwrap();
    qmp.execute("quit", None).await.unwrap();
    let after = qmp.execute("query-status", None).await;
    assert!(
        matches!(
            after,
            Err(QmpError::Closed { .. }) | Err(QmpError::Io { .. })
        ),
        "{after:?}"
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "qemu exited with {status}");
    std::fs::remove_dir_all(&dir).ok();
}
