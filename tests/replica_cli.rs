//! The replica verbs end to end: a real node process with the real `dir`
//! storage (qcow2, `qemu-img`) and the fake hypervisor; content is checked
//! in the real images with `qemu-io`.

mod common;

use std::path::Path;
use std::process::Command;

use common::Node;

fn write(img: &Path, marker: u8) {
    common::qemu_io_write(img, "qcow2", marker)
}

fn read(img: &Path) -> u8 {
    common::qemu_io_read(img, "qcow2")
}

fn ok(node: &Node, args: &[&str]) -> String {
    let (code, out, err) = node.cli(args, None);
    assert_eq!(code, 0, "deorch {args:?}: {out}{err}");
    out
}

#[test]
fn create_list_revert_clone_delete_on_real_qcow2_storage() {
    if Command::new("qemu-io").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "qemu-io is missing and CI=true"
        );
        eprintln!("SKIPPED: qemu-io not installed");
        return;
    }
    let mut node = Node::new("replica");
    node.extra_args = vec![
        "--hypervisor".into(),
        "fake".into(),
        "--storage".into(),
        "dir".into(),
    ];
    node.start();
    let vols = node.state.join("storage/volumes");
    let web = vols.join("vm-default-web-root.qcow2");
    let vm = "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: web\nspec:\n  cpu: 1\n  memory: 64Mi\n  disks:\n    - name: root\n      size: 8Mi\n      source:\n        blank: {}\n";
    let (code, out, err) = node.cli(&["apply", "-f", "-"], Some(vm));
    assert_eq!(code, 0, "{out}{err}");
    node.wait_for("web's disk", |_| web.exists());
    node.wait_for("web running", |n| {
        n.record("VirtualMachine", "web")
            .and_then(|r| r.status)
            .is_some_and(|s| s["phase"] == "Running")
    });
    write(&web, 1);

    let out = ok(&node, &["replica", "create", "web", "--name", "r1"]);
    assert!(out.contains("1 disk(s) captured"), "{out}");
    let out = ok(&node, &["replica", "list", "web"]);
    assert!(out.contains("r1") && out.contains("Ready"), "{out}");
    let rep = vols.join("rep-default-r1-root.qcow2");
    assert_eq!(read(&rep), 1);

    // The VM moves on; revert brings its disk back and it runs again.
    write(&web, 2);
    assert_eq!(read(&web), 2);
    let out = ok(&node, &["replica", "revert", "r1"]);
    assert!(out.contains("reverted"), "{out}");
    assert_eq!(read(&web), 1);
    assert_eq!(read(&rep), 1, "the replica itself is untouched");
    node.wait_for("web running again", |n| {
        n.record("VirtualMachine", "web")
            .and_then(|r| r.status)
            .is_some_and(|s| s["phase"] == "Running" && s["lastRevert"].as_str().is_some())
    });
    // The present was kept first: reverting to it undoes the revert.
    let kept = out
        .lines()
        .find_map(|l| l.strip_prefix("the present is kept as replica default/"))
        .unwrap_or_else(|| panic!("no kept replica in: {out}"))
        .to_string();
    assert_eq!(
        read(&vols.join(format!("rep-default-{kept}-root.qcow2"))),
        2
    );
    let out = ok(&node, &["replica", "revert", &kept, "--discard-present"]);
    assert!(!out.contains("kept as replica"), "{out}");
    assert_eq!(read(&web), 2, "back to the present");
    let out = ok(&node, &["replica", "revert", "r1", "--discard-present"]);
    assert!(out.contains("reverted"), "{out}");
    assert_eq!(read(&web), 1);
    ok(&node, &["replica", "delete", &kept, "--purge"]);

    // A new VM from the replica.
    ok(&node, &["replica", "clone", "r1", "--to", "web2"]);
    let web2 = vols.join("vm-default-web2-root.qcow2");
    node.wait_for("web2's disk", |_| web2.exists());
    assert_eq!(read(&web2), 1);

    // Deleting the replica breaks nothing that came from it; its volume
    // is kept (retained) until purged.
    ok(&node, &["replica", "delete", "r1"]);
    node.wait_for("replica volume set aside", |_| !rep.exists());
    assert_eq!(read(&web), 1);
    assert_eq!(read(&web2), 1);
    let out = ok(&node, &["volume", "list"]);
    let retained_rep = retained_name(&out, "rep-default-r1-root");
    assert_eq!(read(&vols.join(format!("{retained_rep}.qcow2"))), 1);

    // The VMs' volumes are kept too; purged, nothing is left: no volume,
    // no layer.
    ok(&node, &["delete", "vm", "web", "web2"]);
    node.wait_for("VM volumes set aside", |_| !web.exists() && !web2.exists());
    let out = ok(&node, &["volume", "list"]);
    for own in [
        "rep-default-r1-root",
        "vm-default-web-root",
        "vm-default-web2-root",
    ] {
        ok(&node, &["volume", "purge", &retained_name(&out, own)]);
    }
    // The revert kept what it replaced too (besides the CLI's replica).
    // (one per revert of the test).
    let before: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|own| own.starts_with("vm-default-web-root.before-revert-g"))
        .collect();
    assert!(
        !before.is_empty(),
        "no copy of the present kept by the revert:\n{out}"
    );
    for own in before {
        ok(&node, &["volume", "purge", &retained_name(&out, own)]);
    }
    node.wait_for("volumes gone", |_| {
        std::fs::read_dir(&vols).unwrap().count() == 0
            && std::fs::read_dir(node.state.join("storage/layers"))
                .unwrap()
                .count()
                == 0
    });
}

/// The retained name `deorch volume list` shows for volume `own`.
fn retained_name(list: &str, own: &str) -> String {
    list.lines()
        .find_map(|l| {
            let mut cols = l.split_whitespace();
            let name = cols.next()?;
            (cols.next()? == own).then(|| name.to_string())
        })
        .unwrap_or_else(|| panic!("no retained copy of {own} in:\n{list}"))
}
