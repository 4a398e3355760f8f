//! The checked-in schemas and the generated part of docs/MANIFESTS.md are
//! exactly what the code generates. `DEORCH_BLESS=1 cargo test --test
//! schemas` rewrites them.

use std::path::Path;

const BEGIN: &str = "<!-- BEGIN GENERATED REFERENCE -->\n";
const END: &str = "<!-- END GENERATED REFERENCE -->";

fn bless() -> bool {
    std::env::var("DEORCH_BLESS").is_ok_and(|v| v == "1")
}

#[test]
fn schemas_are_fresh() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let generated = deorch::schema::render_all();
    let mut stale = Vec::new();
    for (file, text) in &generated {
        let path = dir.join(file);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            if bless() {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, text).unwrap();
            } else {
                stale.push(file.clone());
            }
        }
    }
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") && !generated.iter().any(|(f, _)| *f == name) {
            stale.push(format!("{name} (not generated any more)"));
        }
    }
    assert!(stale.is_empty(), "stale schemas: {stale:?}; run `DEORCH_BLESS=1 cargo test --test schemas` and commit schemas/");
}

/// The list of checks only deorch makes is the code's.
#[test]
fn the_only_deorch_checks_are_fresh() {
    const BEGIN: &str = "<!-- BEGIN GENERATED CHECKS -->\n";
    const END: &str = "<!-- END GENERATED CHECKS -->";
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/MANIFESTS.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let start = doc.find(BEGIN).expect("BEGIN marker") + BEGIN.len();
    let end = doc.find(END).expect("END marker");
    let want = deorch::manifest::semantic::render_only_deorch();
    if doc[start..end] != want {
        if bless() {
            std::fs::write(&path, format!("{}{}{}", &doc[..start], want, &doc[end..])).unwrap();
        } else {
            panic!("docs/MANIFESTS.md's list of checks only deorch makes is stale; run `DEORCH_BLESS=1 cargo test --test schemas` and commit it");
        }
    }
    for c in deorch::manifest::semantic::OnlyDeorch::ALL {
        assert!(want.contains(&format!("| `{}` |", c.id())), "{c:?}");
    }
}

#[test]
fn the_field_reference_is_fresh() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/MANIFESTS.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let start = doc.find(BEGIN).expect("BEGIN marker") + BEGIN.len();
    let end = doc.find(END).expect("END marker");
    let want = deorch::schema::render_reference();
    if doc[start..end] != want {
        if bless() {
            let new = format!("{}{}{}", &doc[..start], want, &doc[end..]);
            std::fs::write(&path, new).unwrap();
        } else {
            panic!("docs/MANIFESTS.md's field reference is stale; run `DEORCH_BLESS=1 cargo test --test schemas` and commit it");
        }
    }
    for kind in deorch::model::Kind::ALL {
        assert!(
            want.contains(&format!("### {kind}\n")),
            "{kind} missing from the reference"
        );
    }
}
