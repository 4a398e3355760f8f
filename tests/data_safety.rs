//! Desired state that ordinary events must not destroy: a manifest
//! rewritten in place (in a loop, or in two steps), a writer that still
//! has its file open, a manifest directory moved away or missing at
//! start, a file too large to read. Each runs a real node process (fake
//! hypervisor, real `dir` storage) and checks generations, events and the
//! VM's volume file itself.

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Node;

/// A VM with one blank disk (a real qcow2 volume with `dir` storage).
fn vm_with_disk(name: &str) -> String {
    format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: {name}\nspec:\n  cpu: 1\n  memory: 64Mi\n  disks:\n    - name: data\n      source: {{blank: {{}}}}\n      size: 16Mi\n"
    )
}

fn node(tag: &str, extra: &[&str]) -> Node {
    let mut node = Node::new(tag);
    node.extra_args = ["--hypervisor", "fake", "--storage", "dir"]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    node
}

/// The volume file of `vm`'s `data` disk.
fn volume(node: &Node, vm: &str) -> PathBuf {
    node.state
        .join("storage/volumes")
        .join(format!("vm-default-{vm}-data.qcow2"))
}

/// The inode of `vm`'s volume once it exists (a destroyed and re-made
/// volume has another).
fn volume_inode(node: &Node, vm: &str) -> u64 {
    let path = volume(node, vm);
    node.wait_for("the VM's volume", |_| path.exists());
    std::fs::metadata(&path).unwrap().ino()
}

fn generation(node: &Node, vm: &str) -> Option<i64> {
    node.record("vm", vm).map(|r| r.generation)
}

/// The reasons of the events about `vm`.
fn event_reasons(node: &Node, vm: &str) -> Vec<String> {
    let (code, out, err) = node.cli(&["events", "vm", vm, "-o", "json"], None);
    assert_eq!(code, 0, "{err}");
    let events: serde_json::Value = serde_json::from_str(&out).unwrap();
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn sh(script: &str) {
    let status = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(status.success(), "{script}");
}

/// `for i in $(seq 500); do cat web.yaml > m/web.yaml; done`: each `cat`
/// truncates the file and writes it again. The node must never take the
/// empty or half-written file as the new truth: the VM keeps generation 1
/// and its volume (deleting it destroyed the volume before).
#[test]
fn rewriting_a_file_in_place_500_times_changes_nothing() {
    let mut node = node("rewrite-loop", &[]);
    node.start();
    let src = node.dir.join("web.yaml");
    std::fs::write(&src, vm_with_disk("web")).unwrap();
    let dst = node.manifests.join("web.yaml");
    sh(&format!("cat {} > {}", src.display(), dst.display()));
    node.wait_for("the VM", |n| generation(n, "web") == Some(1));
    let inode = volume_inode(&node, "web");
    sh(&format!(
        "for i in $(seq 500); do cat {} > {}; done",
        src.display(),
        dst.display()
    ));
    // Past the removal grace (1 s here) and two rescans.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(generation(&node, "web"), Some(1), "{}", node.log_text());
    let reasons = event_reasons(&node, "web");
    assert!(
        !reasons.iter().any(|r| r == "Deleted"),
        "the rewrites deleted the VM: {reasons:?}"
    );
    assert_eq!(
        std::fs::metadata(volume(&node, "web")).unwrap().ino(),
        inode,
        "the VM's volume was destroyed and made again"
    );
}

/// `cat vm1.yaml > m/all.yaml; cat vm2.yaml >> m/all.yaml`: for a moment
/// the file declares vm1 only. vm2 must not be deleted and re-created.
#[test]
fn a_save_in_two_steps_changes_nothing() {
    let mut node = node("two-step", &[]);
    node.start();
    let (a, b) = (node.dir.join("vm1.yaml"), node.dir.join("vm2.yaml"));
    std::fs::write(&a, vm_with_disk("vm1")).unwrap();
    std::fs::write(&b, format!("---\n{}", vm_with_disk("vm2"))).unwrap();
    let all = node.manifests.join("all.yaml");
    let two_steps = format!(
        "cat {} > {all}; cat {} >> {all}",
        a.display(),
        b.display(),
        all = all.display()
    );
    sh(&two_steps);
    node.wait_for("both VMs", |n| {
        generation(n, "vm1") == Some(1) && generation(n, "vm2") == Some(1)
    });
    let inode = volume_inode(&node, "vm2");
    for _ in 0..20 {
        sh(&two_steps);
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(generation(&node, "vm2"), Some(1), "{}", node.log_text());
    assert!(!event_reasons(&node, "vm2").iter().any(|r| r == "Deleted"));
    assert_eq!(std::fs::metadata(volume(&node, "vm2")).unwrap().ino(), inode);
    // A deliberate removal still happens, once the grace is over.
    std::fs::write(&all, vm_with_disk("vm1")).unwrap();
    node.wait_for("vm2's deletion", |n| generation(n, "vm2").is_none());
    assert_eq!(generation(&node, "vm1"), Some(1));
}

/// A writer that still has the file open: another process closing its own
/// write handle (here `touch`) makes the node look, but the file is not
/// complete until the first writer closes it.
#[test]
fn a_file_open_for_writing_is_not_read() {
    let mut node = node("open-writer", &[]);
    node.start();
    let path = node.manifests.join("two.yaml");
    let full = format!("{}---\n{}", vm_with_disk("first"), vm_with_disk("second"));
    let cut = full.find("---").unwrap() + 4;
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&full.as_bytes()[..cut]).unwrap();
    f.flush().unwrap();
    sh(&format!("touch {}", path.display()));
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        node.record("vm", "first").is_none(),
        "a file still open for writing was read"
    );
    f.write_all(&full.as_bytes()[cut..]).unwrap();
    drop(f);
    node.wait_for("both documents", |n| {
        n.record("vm", "first").is_some() && n.record("vm", "second").is_some()
    });
}

/// The manifest directory moved away (unmounted, renamed): nothing it
/// declared is deleted; the node says why; once it is back, edits are
/// picked up again (the watch follows the new directory).
#[test]
fn a_manifest_directory_moved_away_deletes_nothing() {
    let mut node = node("moved-away", &[]);
    node.start();
    std::fs::write(node.manifests.join("web.yaml"), vm_with_disk("web")).unwrap();
    node.wait_for("the VM", |n| generation(n, "web") == Some(1));
    let inode = volume_inode(&node, "web");
    let away = node.dir.join("manifests.away");
    std::fs::rename(&node.manifests, &away).unwrap();
    // Past the removal grace and several rescans.
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(generation(&node, "web"), Some(1), "{}", node.log_text());
    assert_eq!(std::fs::metadata(volume(&node, "web")).unwrap().ino(), inode);
    assert!(!node.manifests.exists(), "the node made an empty directory");
    let (_, out, _) = node.cli(&["events"], None);
    assert!(out.contains("ManifestDirectoryMissing"), "{out}");
    let (_, out, _) = node.cli(&["get"], None);
    assert!(out.contains("does not exist"), "get warns:\n{out}");

    std::fs::rename(&away, &node.manifests).unwrap();
    let edited = vm_with_disk("web").replace("memory: 64Mi", "memory: 96Mi");
    let t = Instant::now();
    std::fs::write(node.manifests.join("web.yaml"), edited).unwrap();
    node.wait_for("the edit after the return", |n| generation(n, "web") == Some(2));
    eprintln!("edit picked up {:?} after the directory came back", t.elapsed());
}

/// Missing at start while the store holds objects from it: kept, and the
/// directory is not made empty; `--allow-empty-manifests` deletes them.
#[test]
fn a_manifest_directory_missing_at_start_is_an_error_not_an_empty_set() {
    let mut node = node("missing-at-start", &[]);
    node.start();
    std::fs::write(node.manifests.join("web.yaml"), vm_with_disk("web")).unwrap();
    node.wait_for("the VM", |n| generation(n, "web") == Some(1));
    node.stop();
    let away = node.dir.join("manifests.away");
    std::fs::rename(&node.manifests, &away).unwrap();
    node.start();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(generation(&node, "web"), Some(1), "{}", node.log_text());
    assert!(!node.manifests.exists());
    node.stop();
    node.extra_args.push("--allow-empty-manifests".into());
    node.start();
    node.wait_for("the deletion, when allowed", |n| {
        generation(n, "web").is_none()
    });
    assert!(node.manifests.is_dir());
}

/// `truncate -s 1G m/huge.yaml`: refused by its size, without reading it.
#[test]
fn a_huge_file_is_refused_without_being_read() {
    let mut node = node("huge", &[]);
    node.start();
    let huge = node.manifests.join("huge.yaml");
    let f = std::fs::File::create(&huge).unwrap();
    f.set_len(1 << 30).unwrap();
    drop(f);
    node.wait_for("the refusal", |n| {
        let (_, out, _) = n.cli(&["events"], None);
        out.contains("refused without reading it")
    });
    let (_, out, _) = node.cli(&["get"], None);
    assert!(out.contains("huge.yaml"), "{out}");
}
