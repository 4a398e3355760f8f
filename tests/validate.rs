//! `deorch validate`: every broken manifest gives precise `FILE:LINE:COL`
//! errors; valid ones none; hostile input never panics.

mod common;

use common::Rng;
use std::path::{Path, PathBuf};
use std::process::Command;

use deorch::manifest::{parse_file, parse_str, Diagnostic};

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(p)
}

/// (line, col, field path, a fragment of the message) per expected error.
type Want = (usize, usize, &'static str, &'static str);

fn check(file: &str, want: &[Want]) {
    let got = parse_file(&data(&format!("broken/{file}"))).diagnostics;
    let show = |d: &[Diagnostic]| {
        d.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        got.len(),
        want.len(),
        "{file}: expected {} errors, got:\n{}",
        want.len(),
        show(&got)
    );
    for (d, (line, col, path, msg)) in got.iter().zip(want) {
        assert_eq!(
            (d.line, d.col, d.path.as_str()),
            (*line, *col, *path),
            "{file}: {d}"
        );
        assert!(
            d.message.contains(msg),
            "{file}: {d}\n  should contain: {msg}"
        );
    }
}

#[test]
fn each_broken_manifest_gives_precise_errors() {
    check(
        "typo-field.yaml",
        &[(
            6,
            3,
            "spec.cpus",
            "unknown field \"cpus\", expected one of: array, boot, console, cpu,",
        )],
    );
    check(
        "typo-field.yaml",
        &[(6, 3, "spec.cpus", "(did you mean \"cpu\"?)")],
    );
    check(
        "bad-quantity.yaml",
        &[(
            7,
            11,
            "spec.memory",
            "invalid quantity \"2GB\": expected a number with an optional suffix Ki, Mi, Gi",
        )],
    );
    check(
        "bad-cpu.yaml",
        &[(
            6,
            8,
            "spec.cpu",
            "the number 1.5 is not valid here; expected an amount of CPU",
        )],
    );
    check(
        "duplicate-key.yaml",
        &[(8, 3, "", "duplicate key \"memory\" (first at line 6)")],
    );
    check(
        "tab-indent.yaml",
        &[(4, 2, "", "tabs are not allowed for indentation")],
    );
    check(
        "bad-name.yaml",
        &[(
            4,
            9,
            "metadata.name",
            "\"Web_Server\" is not a DNS-1123 label",
        )],
    );
    check(
        "unknown-kind.yaml",
        &[(
            2,
            7,
            "kind",
            "unknown kind \"VirtualMachin\", expected one of: Satellite,",
        )],
    );
    check(
        "unknown-kind.yaml",
        &[(2, 7, "kind", "(did you mean \"VirtualMachine\"?)")],
    );
    check(
        "bad-apiversion.yaml",
        &[(
            1,
            13,
            "apiVersion",
            "unknown apiVersion \"deorch.dev/v1\", expected \"deorch.dev/v1alpha1\"",
        )],
    );
    check(
        "cross-field.yaml",
        &[(9, 9, "spec.disks[0].source", "exactly one of spacesuit, virtualMachine, replica, blank, fastrCopy must be set, found 2 (spacesuit, virtualMachine)")],
    );
    check(
        "bad-fastr.yaml",
        &[
            (6, 28, "spec.fastr.keep", "1 to 64 points"),
            (
                9,
                48,
                "spec.disks[0].source.fastrCopy.point",
                "a copy point, fastr-<unix ms>",
            ),
        ],
    );
    check(
        "bad-addresses.yaml",
        &[
            (
                7,
                13,
                "spec.ipv4.subnet",
                "\"10.20.0.0/33\" is not an IPv4 CIDR",
            ),
            (
                9,
                18,
                "spec.dhcp.dnsServers[0]",
                "\"10.20.0.256\" is not an IPv4 address",
            ),
            (
                19,
                12,
                "spec.nics[0].mac",
                "\"52:54:00:12:34\" is not a MAC address",
            ),
        ],
    );
    check(
        "many-errors.yaml",
        &[
            (7, 8, "spec.cpu", "whole number from 1 to 1024, found 0"),
            (8, 11, "spec.memory", "invalid quantity \"lots\""),
            (9, 15, "spec.powerState", "expected one of: Running, Stopped, Paused, found the string \"Runing\" (did you mean \"Running\"?)"),
            (11, 5, "spec.placement", "give node or address, not both"),
            (15, 11, "spec.replicaPolicy.keep", "must keep at least 1 replica"),
        ],
    );
}

#[test]
fn every_broken_file_is_covered_and_rejected_whole() {
    for entry in std::fs::read_dir(data("broken")).unwrap() {
        let path = entry.unwrap().path();
        let parsed = parse_file(&path);
        assert!(
            !parsed.diagnostics.is_empty(),
            "{} has no error",
            path.display()
        );
        assert!(
            parsed.documents.is_empty(),
            "{}: a file with errors must yield no objects",
            path.display()
        );
    }
}

#[test]
fn valid_files_and_examples_have_no_errors() {
    for dir in ["tests/data/valid", "examples", "manifests"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let (files, missing) = deorch::manifest::collect_files(std::slice::from_ref(&dir));
        assert!(missing.is_empty(), "{missing:?}");
        assert!(!files.is_empty(), "no manifests in {}", dir.display());
        for f in files {
            let parsed = parse_file(&f);
            let errs: Vec<String> = parsed.diagnostics.iter().map(|d| d.to_string()).collect();
            assert!(errs.is_empty(), "{}:\n{}", f.display(), errs.join("\n"));
            assert!(
                !parsed.documents.is_empty(),
                "{} has no documents",
                f.display()
            );
        }
    }
    let two = parse_file(&data("valid/two-documents.yaml"));
    assert_eq!(
        two.documents.len(),
        2,
        "the trailing empty document is ignored"
    );
    assert_eq!(two.documents[1].line, 15, "a document starts at its `---`");
    assert_eq!(
        two.documents[1].object.metadata().namespace.as_deref(),
        Some("shop")
    );
    assert_eq!(
        two.documents[0].object.metadata().namespace.as_deref(),
        Some("default")
    );
}

#[test]
fn the_cli_exits_1_on_errors_and_0_when_clean() {
    let bin = env!("CARGO_BIN_EXE_deorch");
    let out = Command::new(bin)
        .arg("validate")
        .arg(data("broken"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 19, "{stdout}");
    assert!(
        lines.iter().all(|l| l.contains("tests/data/broken/")
            && l.split(':')
                .nth(1)
                .is_some_and(|n| n.parse::<usize>().is_ok())),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("12 files, 12 documents, 19 errors"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let out = Command::new(bin)
        .arg("validate")
        .arg(&examples)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = Command::new(bin)
        .args(["validate", "/nonexistent/x.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("/nonexistent/x.yaml:1:1: cannot read"));
}

#[test]
fn garbage_and_truncated_input_never_panics() {
    let mut corpus: Vec<String> = Vec::new();
    for dir in ["tests/data/valid", "tests/data/broken", "examples"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        for f in deorch::manifest::collect_files(&[dir]).0 {
            corpus.push(std::fs::read_to_string(f).unwrap());
        }
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let file = Path::new("fuzz.yaml");
    for text in &corpus {
        // Every truncation on a char boundary.
        for cut in (0..text.len()).filter(|i| text.is_char_boundary(*i)) {
            let _ = parse_str(file, &text[..cut]);
        }
        // Random byte flips and splices.
        for _ in 0..200 {
            let mut bytes = text.as_bytes().to_vec();
            for _ in 0..1 + rng.next() % 4 {
                let i = (rng.next() as usize) % bytes.len().max(1);
                let b = b" \t\n:-[]{}&*!|>'\"#%@`,?0aZ~"[(rng.next() % 26) as usize];
                if bytes.is_empty() {
                    bytes.push(b);
                } else {
                    bytes[i] = b;
                }
            }
            let _ = parse_str(file, &String::from_utf8_lossy(&bytes));
        }
    }
    for _ in 0..2000 {
        let len = (rng.next() % 200) as usize;
        let s: String = (0..len)
            .map(|_| char::from(b" \t\n:-[]{}&*!|>'\"#%@`,?0aZ~k"[(rng.next() % 27) as usize]))
            .collect();
        let _ = parse_str(file, &s);
    }
}

/// Fields that validate but have no effect yet: `deorch validate` warns at
/// each one's key with its path, and they are not errors (the documents
/// are accepted, the exit code is 0). One entry per listed field, so a
/// feature that lands must take its entry out here and in
/// `manifest::inert`.
#[test]
fn fields_with_no_effect_yet_are_warned_about_not_refused() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/inert/all.yaml");
    let (parsed, warnings) = deorch::manifest::parse_file_with_warnings(&file);
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    assert_eq!(parsed.documents.len(), 6, "every document is accepted");
    let got: Vec<(usize, usize, &str)> = warnings
        .iter()
        .map(|w| (w.line, w.col, w.path.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (7, 3, "spec.firmware"),
            (9, 5, "spec.console.vnc"),
            (10, 5, "spec.console.websocket"),
            (13, 5, "spec.placement.strict"),
            (14, 3, "spec.array"),
            (21, 3, "spec.firmware"),
            (28, 3, "spec.isolation"),
            (36, 3, "spec.satelliteId"),
            (37, 3, "spec.gossip"),
            (39, 5, "spec.capacity.network"),
            (40, 3, "spec.arrays"),
        ]
    );
    for w in &warnings {
        assert!(w.message.contains("has no effect yet"), "{w}");
    }
    assert!(
        warnings[4].message.contains("tenant arrays"),
        "{}",
        warnings[4]
    );

    // The values a node carries out anyway are not warned about.
    let quiet = "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: q\nspec:\n  firmware: bios\n  console: {vnc: true}\n  placement: {strict: false}\n---\napiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata:\n  name: n\nspec:\n  isolation: {mode: None}\n";
    let (parsed, warnings) =
        deorch::manifest::parse_str_with_warnings(Path::new("quiet.yaml"), quiet);
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    assert!(warnings.is_empty(), "{warnings:?}");

    // The CLI prints them as warnings and still exits 0.
    let out = Command::new(env!("CARGO_BIN_EXE_deorch"))
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .contains("inert/all.yaml:14:3: warning: spec.array: has no effect yet: tenant arrays"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 11, "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0 errors, 11 warnings"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The node's status condition comes from the same list: `True` with
/// every inert field named, absent when there is none.
#[test]
fn the_no_effect_condition_names_the_same_fields() {
    use deorch::manifest::inert::{no_effect_condition, no_effect_yet};
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/inert/all.yaml");
    let parsed = parse_file(&file);
    let vm = &parsed.documents[0].object;
    let (reason, message) = no_effect_condition(vm).expect("the VM has inert fields");
    assert_eq!(reason, "FieldsIgnored");
    for f in no_effect_yet(vm) {
        assert!(message.contains(&f.path_string()), "{message}");
    }
    assert!(
        message.starts_with("spec.firmware: has no effect yet"),
        "{message}"
    );
    let clean = parse_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/replica.yaml"));
    assert_eq!(no_effect_condition(&clean.documents[0].object), None);
}

/// An interstellar spans satellites: it takes no uplink.
#[test]
fn an_interstellar_with_an_uplink_is_refused_at_the_uplink() {
    let doc = "apiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata:\n  name: n\nspec:\n  uplink: eth1\n  isolation: {mode: ArplessInterstellar}\n";
    let (parsed, _) = deorch::manifest::parse_str_with_warnings(Path::new("n.yaml"), doc);
    let errors: Vec<String> = parsed.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("n.yaml:6:11: spec.uplink: an interstellar spans satellites"),
        "{errors:?}"
    );
    let plain = doc.replace("ArplessInterstellar", "None");
    let (parsed, _) = deorch::manifest::parse_str_with_warnings(Path::new("n.yaml"), &plain);
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
}

/// A VirtualMachine document with `spec` (indented YAML lines).
fn vm_doc(spec: &str) -> String {
    format!("apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: v\nspec:\n{spec}")
}

/// What deorch reports for a VM with `spec`: `LINE:COL: PATH: MESSAGE`.
fn vm_errors(spec: &str) -> Vec<String> {
    parse_str(Path::new("t.yaml"), &vm_doc(spec))
        .diagnostics
        .iter()
        .map(|d| format!("{}:{}: {}: {}", d.line, d.col, d.path, d.message))
        .collect()
}

/// A few rules the schemas gained, as deorch reports them: an emulated NIC
/// on microvm, a reference that is not a name, a duplicate disk name
/// (a check only deorch makes, so its id ends the message), and `2.0`
/// read as the integer 2, as JSON Schema reads it.
#[test]
fn nic_models_references_duplicates_and_whole_floats() {
    let errors = vm_errors;
    assert_eq!(
        errors("  machine: microvm\n  nics:\n    - {name: eth0, network: lan, model: e1000}\n"),
        ["8:41: spec.nics[0].model: the microvm machine has no PCI bus, only virtio-mmio: NICs there are virtio, found e1000"]
    );
    assert!(
        errors("  machine: q35\n  nics:\n    - {name: eth0, network: lan, model: e1000}\n")
            .is_empty()
    );
    assert_eq!(
        errors("  disks:\n    - name: d\n      source:\n        virtualMachine: {name: Web_1}\n"),
        ["9:32: spec.disks[0].source.virtualMachine.name: \"Web_1\" is not a DNS-1123 label: expected at most 63 lower-case letters, digits or '-', starting and ending with a letter or digit (e.g. \"web-1\")"]
    );
    assert_eq!(
        errors("  disks:\n    - {name: d, source: {blank: {}}, size: 1Gi}\n    - {name: d, source: {blank: {}}, size: 1Gi}\n"),
        ["8:14: spec.disks[1].name: disk name \"d\" is used twice [names-unique]"]
    );
    let two = parse_str(
        Path::new("t.yaml"),
        &vm_doc("  cpu: 2.0\n  memory: 134217728.0\n"),
    );
    assert!(two.diagnostics.is_empty(), "{:?}", two.diagnostics);
    let deorch::model::AnyObject::VirtualMachine(vm) = &two.documents[0].object else {
        panic!("a VM")
    };
    assert_eq!(vm.spec.cpu, Some(deorch::model::Cpu(2000)));
    assert_eq!(vm.spec.memory, Some(deorch::model::Quantity(128 << 20)));
}

/// One memory limit (1Mi to 64Ti) whatever the spelling, and every
/// out-of-range number named at its line and column, not at 1:1.
#[test]
fn memory_has_one_limit_and_out_of_range_numbers_are_placed() {
    let errors = vm_errors;
    for ok in ["64Ti", "70368744177664", "1Mi", "\"1048576\""] {
        assert!(errors(&format!("  memory: {ok}\n")).is_empty(), "{ok}");
    }
    for bad in [
        "65Ti",
        "70368744177665",
        "18446744073709551615",
        "18446744073709551616",
        "16Ei",
        "1e30",
        "\"99999999999999999999999\"",
    ] {
        let e = errors(&format!("  memory: {bad}\n"));
        assert_eq!(e.len(), 1, "{bad}: {e:?}");
        assert!(e[0].starts_with("6:11: spec.memory: "), "{bad}: {e:?}");
        assert!(
            !e[0].contains("untagged") && !e[0].contains("typed-read"),
            "{bad}: {e:?}"
        );
    }
    for bad in ["1e9", "18446744073709551616", "-3"] {
        let e = errors(&format!("  cpu: {bad}\n"));
        assert_eq!(e.len(), 1, "{bad}: {e:?}");
        assert!(e[0].starts_with("6:8: spec.cpu: "), "{bad}: {e:?}");
    }
}

/// What deorch reports for a Spacesuit with `spec`: `LINE:COL: PATH: MESSAGE`.
fn suit_errors(spec: &str) -> Vec<String> {
    let doc = format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: Spacesuit\nmetadata:\n  name: s\nspec:\n{spec}"
    );
    parse_str(Path::new("s.yaml"), &doc)
        .diagnostics
        .iter()
        .map(|d| format!("{}:{}: {}: {}", d.line, d.col, d.path, d.message))
        .collect()
}

/// A spacesuit's further disks and its NICs: each problem at its line,
/// column and field; a valid one reads with both.
#[test]
fn a_spacesuits_disks_and_nics_are_checked_where_they_are_written() {
    let h = "a".repeat(64);
    let good = format!(
        "  source:\n    image: {{path: /i/a.qcow2, sha256: {h}}}\n    bus: scsi\n  disks:\n    - name: data\n      image: {{path: /i/b.qcow2, format: qcow2}}\n      bus: sata\n  nics:\n    - {{name: nic0, network: lan, model: e1000}}\n"
    );
    assert!(suit_errors(&good).is_empty(), "{:?}", suit_errors(&good));
    let parsed = parse_str(
        Path::new("s.yaml"),
        &format!(
            "apiVersion: deorch.dev/v1alpha1\nkind: Spacesuit\nmetadata:\n  name: s\nspec:\n{good}"
        ),
    );
    let deorch::model::AnyObject::Spacesuit(s) = &parsed.documents[0].object else {
        panic!("a Spacesuit")
    };
    assert_eq!(s.spec.disks[0].name, "data");
    assert_eq!(s.spec.nics[0].network, "lan");
    assert_eq!(
        suit_errors("  disks:\n    - name: data\n      image: {path: /i/b.qcow2}\n"),
        ["7:7: spec.disks[0]: further disks need the first one: set spec.source too [spacesuit-template]"]
    );
    let bad = "  source: {image: {path: /i/a.qcow2}}\n  disks:\n    - name: root\n      image: {path: /i/b.qcow2}\n    - name: x\n      image: {path: i/c.qcow2, sha256: abc}\n    - name: x\n      image: {path: /i/d.qcow2}\n  nics:\n    - {name: nic0, network: lan, mac: \"52:54:00:00:00:01\", ipv4: 10.0.0.5}\n    - {name: nic0, network: Lan}\n";
    assert_eq!(
        suit_errors(bad),
        [
            "8:13: spec.disks[0].name: disk name \"root\" is the first disk's (spec.source): name this one otherwise [names-unique]",
            "11:21: spec.disks[1].image.path: \"i/c.qcow2\" must be an absolute path on the node",
            "11:40: spec.disks[1].image.sha256: expected 64 hexadecimal characters",
            "12:13: spec.disks[2].name: disk name \"x\" is used twice [names-unique]",
            "15:39: spec.nics[0].mac: a spacesuit's NIC has no fixed MAC: every VM made from it would have the same; each VM's is derived from its identity [spacesuit-template]",
            "15:66: spec.nics[0].ipv4: a spacesuit's NIC has no fixed address: every VM made from it would claim the same; each VM's is derived from its identity [spacesuit-template]",
            "16:14: spec.nics[1].name: NIC name \"nic0\" is used twice [names-unique]",
            "16:29: spec.nics[1].network: \"Lan\" is not a DNS-1123 label: expected at most 63 lower-case letters, digits or '-', starting and ending with a letter or digit (e.g. \"web-1\")",
        ]
    );
}
