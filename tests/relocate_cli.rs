//! `deorch relocate` end to end against a real node process (fake
//! drivers): the verb writes a Relocation the node stores and shows,
//! refuses a VM that does not exist and bad flags, and says plainly that
//! nothing moves yet.

mod common;

use common::Node;

#[test]
fn relocate_writes_a_relocation_the_node_stores_and_says_nothing_moves_yet() {
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
    assert!(err.contains("not built yet"), "{err}");
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
