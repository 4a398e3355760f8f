//! A real node process picks up manifest files: drop, edit, rename, delete,
//! partial writes, editor swap files, invalid edits; and the CLI's apply,
//! get, describe and delete against it.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{vm_yaml, Node};

fn memory_of(node: &Node, name: &str) -> Option<String> {
    node.record("vm", name)
        .and_then(|r| r.object["spec"]["memory"].as_str().map(str::to_owned))
}

#[test]
fn file_drop_edit_rename_invalid_edit_and_delete() {
    let mut node = Node::new("files");
    node.start();
    let a = node.manifests.join("a.yaml");

    // Drop.
    std::fs::write(&a, vm_yaml("web", "256Mi")).unwrap();
    node.wait_for("the dropped file", |n| n.record("vm", "web").is_some());
    let r = node.record("vm", "web").unwrap();
    assert_eq!(r.generation, 1);
    assert!(r.source.0.ends_with("/a.yaml"), "{:?}", r.source);

    // Edit.
    std::fs::write(&a, vm_yaml("web", "512Mi")).unwrap();
    node.wait_for("the edit", |n| {
        memory_of(n, "web").as_deref() == Some("512Mi")
    });
    assert_eq!(node.record("vm", "web").unwrap().generation, 2);

    // Rename: same objects, same generation, new source.
    let b = node.manifests.join("b.yaml");
    std::fs::rename(&a, &b).unwrap();
    node.wait_for("the rename", |n| {
        n.record("vm", "web")
            .is_some_and(|r| r.source.0.ends_with("/b.yaml"))
    });
    std::thread::sleep(Duration::from_millis(300));
    let r = node.record("vm", "web").expect("a rename must not delete");
    assert_eq!(r.generation, 2, "a rename must not re-create the object");

    // Invalid edit: rejected, previous version stays, error reported.
    std::fs::write(&b, vm_yaml("web", "lots")).unwrap();
    node.wait_for("the rejection event", |n| {
        let (_, out, _) = n.cli(&["get", "vm"], None);
        out.contains("InvalidManifest")
    });
    let r = node.record("vm", "web").unwrap();
    assert_eq!(r.generation, 2);
    assert_eq!(r.object["spec"]["memory"], "512Mi");
    let (code, out, _) = node.cli(&["get", "vm"], None);
    assert_eq!(code, 0);
    assert!(
        out.contains("b.yaml:7:11"),
        "get shows the error position:\n{out}"
    );
    let (code, out, _) = node.cli(&["describe", "vm", "web"], None);
    assert_eq!(code, 0);
    assert!(
        out.contains("InvalidManifest") && out.contains("b.yaml:7:11"),
        "{out}"
    );

    // A valid edit again is picked up.
    std::fs::write(&b, vm_yaml("web", "1Gi")).unwrap();
    node.wait_for("the fixed file", |n| {
        memory_of(n, "web").as_deref() == Some("1Gi")
    });
    assert_eq!(node.record("vm", "web").unwrap().generation, 3);

    // Delete.
    std::fs::remove_file(&b).unwrap();
    node.wait_for("the deletion", |n| n.record("vm", "web").is_none());
}

#[test]
fn partial_writes_and_editor_files_are_never_applied() {
    let mut node = Node::new("partial");
    node.start();
    let path = node.manifests.join("two.yaml");
    let full = format!(
        "{}---\n{}",
        vm_yaml("first", "128Mi"),
        vm_yaml("second", "128Mi")
    );
    let cut = full.find("---").unwrap() + 4;

    // Half-written and still open: a complete first document, nothing else.
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&full.as_bytes()[..cut]).unwrap();
    f.flush().unwrap();
    // Swap and backup files next to it.
    std::fs::write(node.manifests.join(".two.yaml.swp"), "garbage: [").unwrap();
    std::fs::write(node.manifests.join("two.yaml~"), vm_yaml("backup", "1Mi")).unwrap();
    std::fs::write(node.manifests.join("#two.yaml#"), vm_yaml("emacs", "1Mi")).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let names: Vec<String> = node.records().iter().map(|r| r.key.name.clone()).collect();
    assert!(
        !names.contains(&"first".to_string()),
        "a file still being written was applied: {names:?}"
    );
    for n in ["backup", "emacs"] {
        assert!(
            !names.contains(&n.to_string()),
            "editor file applied: {names:?}"
        );
    }

    // Finish and close: both documents arrive together.
    f.write_all(&full.as_bytes()[cut..]).unwrap();
    drop(f);
    node.wait_for("the completed file", |n| n.record("vm", "second").is_some());
    assert!(node.record("vm", "first").is_some());
    let (_, out, _) = node.cli(&["get"], None);
    assert!(
        !out.contains("Warnings"),
        "swap files must not even warn:\n{out}"
    );
}

#[test]
fn files_changed_while_the_node_was_down_are_caught_up() {
    let mut node = Node::new("offline");
    std::fs::write(node.manifests.join("keep.yaml"), vm_yaml("keep", "64Mi")).unwrap();
    std::fs::write(node.manifests.join("gone.yaml"), vm_yaml("gone", "64Mi")).unwrap();
    node.start();
    node.wait_for("both", |n| {
        n.record("vm", "keep").is_some() && n.record("vm", "gone").is_some()
    });
    node.stop();
    std::fs::remove_file(node.manifests.join("gone.yaml")).unwrap();
    std::fs::write(node.manifests.join("keep.yaml"), vm_yaml("keep", "96Mi")).unwrap();
    node.start();
    node.wait_for("the catch-up", |n| {
        n.record("vm", "gone").is_none() && memory_of(n, "keep").as_deref() == Some("96Mi")
    });
    assert_eq!(node.record("vm", "keep").unwrap().generation, 2);
}

#[test]
fn cli_apply_get_describe_delete() {
    let mut node = Node::new("cli");
    node.start();
    let mode = std::fs::metadata(&node.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the local API socket must be owner-only");

    let two = format!("{}---\n{}", vm_yaml("one", "64Mi"), vm_yaml("two", "64Mi"));
    let (code, out, err) = node.cli(&["apply", "-f", "-"], Some(&two));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("VirtualMachine/default/one configured (generation 1)"),
        "{out}"
    );
    let (code, out, _) = node.cli(&["apply", "-f", "-"], Some(&two));
    assert_eq!(code, 0);
    assert!(out.contains("unchanged (generation 1)"), "{out}");

    // All-or-nothing: one bad document, nothing applied.
    let bad = format!(
        "{}---\n{}",
        vm_yaml("three", "64Mi"),
        vm_yaml("four", "64 megs")
    );
    let (code, out, _) = node.cli(&["apply", "-f", "-"], Some(&bad));
    assert_eq!(code, 1);
    assert!(out.contains("<stdin>:15:11"), "{out}");
    assert!(node.record("vm", "three").is_none());

    let (code, out, _) = node.cli(&["get", "vms"], None);
    assert_eq!(code, 0);
    assert!(
        out.contains("NAME") && out.contains("one") && out.contains("two"),
        "{out}"
    );
    let (code, out, _) = node.cli(&["get", "vm", "one", "-o", "json"], None);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["metadata"]["generation"], 1);
    let (code, out, _) = node.cli(&["get", "vm", "one", "-o", "yaml"], None);
    assert_eq!(code, 0);
    assert!(out.contains("kind: VirtualMachine"), "{out}");
    let (code, out, _) = node.cli(&["describe", "vm", "one"], None);
    assert_eq!(code, 0);
    assert!(
        out.contains("Generation:  1") && out.contains("Source:      api"),
        "{out}"
    );

    let (code, out, _) = node.cli(&["delete", "vm", "one"], None);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("deleted (generation 2)"), "{out}");
    assert!(node.record("vm", "one").is_none());
    let (code, _, err) = node.cli(&["delete", "vm", "one"], None);
    assert_eq!(code, 3, "not found: {err}");
    assert!(err.contains("not found"), "{err}");
    let (code, _, err) = node.cli(&["get", "gizmos"], None);
    assert_eq!(code, 1);
    assert!(err.contains("unknown kind"), "{err}");
}

/// `sed -i` writes a temp file (`sedXXXXXX`) beside the target and renames
/// it over the target: the rename completes the file, so the edit is taken
/// at once, not at a later rescan once the file is older than `--settle`
/// (2 s here; it used to take until the next rescan after that).
#[test]
fn a_file_edited_in_place_with_sed_is_picked_up_at_once() {
    let mut node = Node::new("sed");
    node.start();
    let a = node.manifests.join("a.yaml");
    std::fs::write(&a, vm_yaml("web", "256Mi")).unwrap();
    node.wait_for("the dropped file", |n| n.record("vm", "web").is_some());
    for (from, to) in [("256Mi", "512Mi"), ("512Mi", "1Gi")] {
        let started = std::time::Instant::now();
        let st = std::process::Command::new("sed")
            .args(["-i", &format!("s/{from}/{to}/")])
            .arg(&a)
            .status()
            .expect("sed is installed");
        assert!(st.success());
        node.wait_for("the sed edit", |n| {
            memory_of(n, "web").as_deref() == Some(to)
        });
        let took = started.elapsed();
        eprintln!("sed -i {from} -> {to}: applied after {took:?}");
        assert!(
            took < Duration::from_millis(1500),
            "sed -i took {took:?}: waited for a rescan and the settle time"
        );
    }
    assert_eq!(node.record("vm", "web").unwrap().generation, 3);
}

/// `deorch apply --dry-run` answers admission's verdict per document and
/// changes nothing.
#[test]
fn apply_dry_run_answers_the_verdicts_and_changes_nothing() {
    let mut node = Node::new("dry-run");
    node.start();
    let two = format!("{}---\n{}", vm_yaml("one", "64Mi"), vm_yaml("two", "64Mi"));
    let (code, out, err) = node.cli(&["apply", "--dry-run", "-f", "-"], Some(&two));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("VirtualMachine/default/one would be configured (generation 1)"),
        "{out}"
    );
    assert!(err.contains("nothing changed"), "{err}");
    // Each verdict is followed by what this node's reconciler would do.
    assert!(
        out.contains("  would start the VM: 1 vCPU(s), 64Mi memory"),
        "{out}"
    );
    assert!(
        node.record("vm", "one").is_none(),
        "a dry run changed the store"
    );
    let (code, _, _) = node.cli(&["apply", "-f", "-"], Some(&two));
    assert_eq!(code, 0);
    // An edit and an unchanged document.
    let edit = format!("{}---\n{}", vm_yaml("one", "128Mi"), vm_yaml("two", "64Mi"));
    let (code, out, _) = node.cli(&["apply", "--dry-run", "-f", "-"], Some(&edit));
    assert_eq!(code, 0);
    assert!(
        out.contains("one would be configured (generation 2)"),
        "{out}"
    );
    assert!(out.contains("two unchanged (generation 1)"), "{out}");
    assert!(
        out.contains("PendingRestart: memory differ(s) from the running VM"),
        "{out}"
    );
    assert!(out.contains("  nothing to do on this node"), "{out}");
    assert_eq!(memory_of(&node, "one").as_deref(), Some("64Mi"));
    // Planned against the store as the batch would leave it: a VM of a
    // spacesuit declared in the same batch resolves it (and waits for its
    // volume, which the spacesuit's plan imports first).
    let image = node.dir.join("base.raw");
    std::fs::write(&image, vec![0u8; 4096]).unwrap();
    let suit = format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: Spacesuit\nmetadata:\n  name: base\nspec:\n  source:\n    image:\n      path: {}\n---\n{}  spacesuit: base\n",
        image.display(),
        vm_yaml("four", "64Mi")
    );
    let (code, out, _) = node.cli(&["apply", "--dry-run", "-f", "-"], Some(&suit));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "  would import {} into volume suit-default-base",
            image.display()
        )),
        "{out}"
    );
    assert!(
        out.contains("then: SourceMissing: source volume(s) suit-default-base do not exist"),
        "{out}"
    );
    assert!(node.record("spacesuit", "base").is_none());
    // A document claiming a signature this node cannot check is refused,
    // in a dry run as for real, and names why.
    let signed = vm_yaml("three", "64Mi").replace(
        "  name: three\n",
        "  name: three\n  generation: 1\n  annotations:\n    deorch.dev/signer: bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4\n    deorch.dev/signature: AAAA\n",
    );
    let (code, out, _) = node.cli(&["apply", "--dry-run", "-f", "-"], Some(&signed));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("VirtualMachine/default/three: Denied"),
        "{out}"
    );
    let (code, out, _) = node.cli(&["apply", "-f", "-"], Some(&signed));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("Denied") && out.contains("--cluster-owner"),
        "{out}"
    );
    assert!(node.record("vm", "three").is_none());
    // The refusal is an event of the object, though it has no record.
    let (code, out, err) = node.cli(&["events", "vm", "three"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Denied") && out.contains("VirtualMachine/default/three  (from api)"),
        "{out}"
    );
    let (code, all, _) = node.cli(&["events", "-o", "json"], None);
    assert_eq!(code, 0);
    let all: serde_json::Value = serde_json::from_str(&all).unwrap();
    assert!(
        all.as_array().is_some_and(|a| a.len() > 1),
        "every event of the node: {all}"
    );
    let (code, _, err) = node.cli(&["events", "vm"], None);
    assert_eq!(code, 1);
    assert!(err.contains("give both kind and name"), "{err}");
}
