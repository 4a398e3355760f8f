//! Every example and default manifest validates with the real
//! `check-jsonschema` against `schemas/<kind>.json`, and a broken copy
//! does not (so this test can fail).

use std::path::{Path, PathBuf};
use std::process::Command;

fn tool() -> Option<PathBuf> {
    let venv = PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/deorch/venv/bin/check-jsonschema");
    for candidate in [venv, PathBuf::from("check-jsonschema")] {
        if Command::new(&candidate)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(candidate);
        }
    }
    assert!(
        std::env::var("CI").is_err(),
        "check-jsonschema is missing and CI=true: scripts/test.sh installs it"
    );
    eprintln!("SKIPPED: check-jsonschema not installed (scripts/test.sh installs it)");
    None
}

fn kind_of(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("kind: "))
        .map(|k| k.trim().to_ascii_lowercase())
        .expect("a kind line")
}

fn check(tool: &Path, file: &Path) -> (bool, String) {
    let text = std::fs::read_to_string(file).unwrap();
    let schema = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(format!("{}.json", kind_of(&text)));
    let out = Command::new(tool)
        .arg("--schemafile")
        .arg(&schema)
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn examples_and_default_manifests_pass_check_jsonschema() {
    let Some(tool) = tool() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (files, _) =
        deorch::manifest::collect_files(&[root.join("examples"), root.join("manifests")]);
    assert!(files.len() >= 8, "{files:?}");
    let mut kinds = std::collections::BTreeSet::new();
    for f in &files {
        let (ok, out) = check(&tool, f);
        assert!(ok, "{} fails check-jsonschema:\n{out}", f.display());
        // all.json dispatches on kind; its $refs must resolve locally.
        let all = root.join("schemas/all.json");
        let out = Command::new(&tool)
            .arg("--schemafile")
            .arg(&all)
            .arg(f)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} fails all.json:\n{}",
            f.display(),
            String::from_utf8_lossy(&out.stdout)
        );
        kinds.insert(kind_of(&std::fs::read_to_string(f).unwrap()));
    }
    assert_eq!(
        kinds.len(),
        deorch::model::Kind::ALL.len(),
        "one example per kind: {kinds:?}"
    );

    // The same tool refuses a typo'd field and a bad quantity.
    let dir = std::env::temp_dir().join(format!("deorch-cj-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, broken) in [
        (
            "typo.yaml",
            std::fs::read_to_string(root.join("examples/virtualmachine.yaml"))
                .unwrap()
                .replace("  memory: 8Gi", "  memroy: 8Gi"),
        ),
        (
            "quantity.yaml",
            std::fs::read_to_string(root.join("examples/virtualmachine.yaml"))
                .unwrap()
                .replace("memory: 8Gi", "memory: 8GB"),
        ),
        (
            "name.yaml",
            std::fs::read_to_string(root.join("examples/network.yaml"))
                .unwrap()
                .replace("name: shop-lan", "name: Shop_LAN"),
        ),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, broken).unwrap();
        let (ok, out) = check(&tool, &path);
        assert!(!ok, "check-jsonschema accepted {name}:\n{out}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
