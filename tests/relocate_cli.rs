//! `deorch relocate` end to end against a real node process (fake
//! drivers): the verb writes a Relocation the node stores and shows,
//! refuses a VM that does not exist and bad flags, and on a node without
//! gossip (no receiver can be elected) says so rather than wait.

mod common;

use common::Node;

#[test]
fn relocate_writes_a_relocation_the_node_stores_and_a_node_without_gossip_says_nothing_moves() {
    let mut node = Node::new("relocate-cli");
    node.start();
    let vm = "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: web\nspec:\n  cpu: 1\n  memory: 64Mi\n";
    let (code, out, err) = node.cli(&["apply", "-f", "-"], Some(vm));
    assert_eq!(code, 0, "{out}{err}");

    let (code, out, err) = node.cli(
        &[
            "relocate",
            "web",
            "--select",
            "macrocosm.region=eu",
            "--performance",
            "high",
            "--name",
            "move-web",
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("relocation/move-web created"), "{out}");
    let r = node
        .record("Relocation", "move-web")
        .expect("the Relocation is stored");
    let spec = &r.object["spec"];
    assert_eq!(spec["virtualMachine"]["name"], "web", "{spec}");
    assert_eq!(spec["target"]["performance"], "high", "{spec}");
    assert_eq!(
        spec["target"]["selector"]["macrocosm"]["matchLabels"]["region"], "eu",
        "{spec}"
    );
    let (code, out, err) = node.cli(&["get", "relocations"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("move-web"), "{out}");

    // --wait on a node without gossip: nothing can move; said at once.
    let t = std::time::Instant::now();
    let (code, out, err) = node.cli(
        &[
            "relocate",
            "web",
            "--name",
            "waits",
            "--wait",
            "--timeout",
            "20s",
        ],
        None,
    );
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("without gossip"), "{err}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        t.elapsed()
    );

    // A VM that does not exist, and a bad selector: refused, nothing stored.
    let (code, _, err) = node.cli(&["relocate", "nope", "--name", "r2"], None);
    assert_ne!(code, 0);
    assert!(err.contains("not found"), "{err}");
    let (code, _, err) = node.cli(
        &["relocate", "web", "--select", "rack=r1", "--name", "r3"],
        None,
    );
    assert_ne!(code, 0);
    assert!(err.contains("FAMILY.KEY=VALUE"), "{err}");
    assert!(node.record("Relocation", "r2").is_none());
    assert!(node.record("Relocation", "r3").is_none());
}
