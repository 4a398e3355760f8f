//! Every example and default manifest validates with the real
//! `check-jsonschema` against `schemas/<kind>.json`, and a broken copy
//! does not (so this test can fail). And a differential test: over
//! documents generated from the examples, whatever check-jsonschema
//! refuses deorch refuses too, and what deorch alone refuses carries the
//! identifier of a check listed as one only deorch makes.

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

// ---------------------------------------------------------------------------
// Differential test: the schemas against deorch.

use serde_json::{json, Value};

/// Strings tried in every string (and number) field: boundary values of
/// the patterns in the schemas (names, addresses, quantities, CPU amounts,
/// durations, paths) and plain oddities.
const STRINGS: &[&str] = &[
    "",
    "a",
    "A",
    "web-1",
    "-web",
    "web-",
    "web_1",
    "x.y",
    "0",
    "1",
    "01",
    "2",
    "2.0",
    "2.000",
    "2.0000",
    "1.5",
    "0.5",
    "500m",
    "1000m",
    "2000m",
    "1024",
    "1025",
    "1024000m",
    "1025000m",
    "0m",
    "1023Ki",
    "1024Ki",
    "1Mi",
    "0.5Mi",
    "1.5Gi",
    "0Gi",
    "0.0Gi",
    "1048575",
    "1048576",
    "1000000",
    "2GB",
    "1.0000001Ki",
    "99999999999999999999",
    "20Ei",
    "512",
    "128Ki",
    "100Ki",
    "0s",
    "0ms",
    "1ms",
    "59s",
    "59s999ms",
    "60s",
    "1m",
    "1h30m",
    "2d",
    "1h 30m",
    "10",
    "10.0.0.1",
    "10.0.0.0",
    "10.0.0.255",
    "10.0.0.256",
    "01.2.3.4",
    "1.2.3",
    "8.8.8.8",
    "fd00::1",
    "::",
    "zz::1",
    "fd00::1::2",
    "10.0.0.0/24",
    "10.0.0.1/24",
    "10.0.0.0/32",
    "10.0.0.0/33",
    "10.0.0.0/08",
    "8.8.8.0/24",
    "52:54:00:12:34:56",
    "53:54:00:12:34:56",
    "52:54:00:12:34",
    "10.0.0.5:7946",
    "10.0.0.5:99999",
    "[fd00::1]:7946",
    "[zz::1]:7946",
    "/srv/x.qcow2",
    "srv/x",
    "tenants/acme",
    "tenants//acme",
    "./a",
    "a/..",
    "..a",
    "lz4",
    "gzip-9",
    "gzip-10",
    "acme:owner",
    "owner",
    "br-lan",
    "br lan",
    "br/lan",
    "averyverylongbridgename",
    "ldap://127.0.0.1",
    "ldaps://127.0.0.1",
    "http://x",
    "uid={user},dc=x",
    "uid=alice",
    "{user}@EXAMPLE.ORG",
    "example.org",
    "ex..org",
    "1BoatSLRHtKNngkdXEeobR76b53LETtpyT",
    "1Boat!",
    "VirtualMachine",
    "Widget",
    "microvm",
    "q35",
    "e1000",
    "virtio",
    "uefi",
    "Running",
    "Runing",
    "Interstellar",
    "high",
    "admin",
    "get",
    "*",
    "Retain",
    "Destroy",
    "Live",
    "a23456789012345678901234567890123456789012345678901234567890123",
    "a234567890123456789012345678901234567890123456789012345678901234",
];

/// Numbers tried in every number (and string) field.
fn numbers() -> Vec<Value> {
    vec![
        json!(-1),
        json!(0),
        json!(1),
        json!(2),
        json!(2.0),
        json!(1.5),
        json!(67),
        json!(68),
        json!(512),
        json!(1000),
        json!(1024),
        json!(1025),
        json!(65535),
        json!(65536),
        json!(1048575),
        json!(1048576),
        json!(4294967295u64),
        json!(4294967296u64),
        json!(18446744073709551u64),
        json!(18446744073709552u64),
        json!(u64::MAX),
    ]
}

/// Every (path, value) in `v` below `metadata` and `spec`.
fn leaves(v: &Value, path: &mut Vec<Value>, out: &mut Vec<(Vec<Value>, Value)>) {
    if !path.is_empty() {
        out.push((path.clone(), v.clone()));
    }
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                if path.is_empty() && !matches!(k.as_str(), "metadata" | "spec") {
                    continue;
                }
                path.push(json!(k));
                leaves(c, path, out);
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                path.push(json!(i));
                leaves(c, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn at<'a>(v: &'a mut Value, path: &[Value]) -> &'a mut Value {
    path.iter().fold(v, |node, seg| match seg {
        Value::String(k) => &mut node[k.as_str()],
        Value::Number(i) => &mut node[i.as_u64().unwrap() as usize],
        _ => unreachable!(),
    })
}

/// Whether candidate `i` is tried at `path`. Every candidate at every
/// field is ~27,000 documents, a few minutes of check-jsonschema; by
/// default each field gets every tenth candidate, offset by a hash of its
/// path so that each candidate still reaches many fields (~3,000
/// documents). `DEORCH_DIFF_FULL=1` tries them all.
fn tried(path: &[Value], i: usize) -> bool {
    if std::env::var("DEORCH_DIFF_FULL").is_ok_and(|v| v == "1") {
        return true;
    }
    let h = path
        .iter()
        .flat_map(|s| s.to_string().into_bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    (h as usize + i).is_multiple_of(10)
}

/// The documents: every example and default manifest, and each of them
/// with one field changed to a boundary value, removed, nulled, emptied
/// or (lists of mappings) with its first item repeated; plus the probes
/// the schemas once let through.
fn documents() -> (Vec<Value>, Vec<(usize, &'static str)>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (files, _) =
        deorch::manifest::collect_files(&[root.join("examples"), root.join("manifests")]);
    let mut bases = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        for d in deorch::manifest::yaml::parse(&text).0 {
            bases.push(deorch::manifest::yaml::to_json(&d.root));
        }
    }
    let mut docs = Vec::new();
    let numbers = numbers();
    for base in &bases {
        docs.push(base.clone());
        let mut all = Vec::new();
        leaves(base, &mut Vec::new(), &mut all);
        for (path, value) in all {
            let mut with = |new: Value| {
                let mut d = base.clone();
                *at(&mut d, &path) = new;
                docs.push(d);
            };
            match &value {
                Value::String(_) | Value::Number(_) => {
                    let candidates = STRINGS
                        .iter()
                        .map(|s| json!(s))
                        .chain(numbers.iter().cloned());
                    for (i, c) in candidates.enumerate() {
                        if tried(&path, i) {
                            with(c);
                        }
                    }
                }
                Value::Bool(b) => with(json!(!b)),
                Value::Array(items) => {
                    with(json!([]));
                    if let Some(first) = items.first() {
                        let mut twice = items.clone();
                        twice.push(first.clone());
                        with(Value::Array(twice));
                    }
                }
                Value::Object(_) => with(json!({})),
                Value::Null => {}
            }
            with(Value::Null);
            // Remove the field (not `metadata` or `spec` themselves).
            if let Some((Value::String(k), parent)) = path.split_last().filter(|_| path.len() >= 2)
            {
                let mut d = base.clone();
                at(&mut d, parent).as_object_mut().unwrap().remove(k);
                docs.push(d);
            }
        }
    }
    // Small VirtualMachines: the eight that check-jsonschema accepted and
    // deorch refused before the schemas said as much (the duplicate disk
    // names stay deorch's: `names-unique`), and a few more.
    let vm = |spec: Value| {
        json!({"apiVersion": "deorch.dev/v1alpha1", "kind": "VirtualMachine",
               "metadata": {"name": "probe"}, "spec": spec})
    };
    let mut probes = Vec::new();
    for (i, spec) in [
        json!({"cpu": 0}),
        json!({"cpu": 2000}),
        json!({"cpu": "1.5"}),
        json!({"memory": 0}),
        json!({"memory": 1}),
        json!({"disks": [{"name": "d", "source": {"blank": {}}}]}),
        json!({"disks": [{"name": "d", "source": {"blank": {}}, "size": "1Gi"},
                         {"name": "d", "source": {"blank": {}}, "size": "1Gi"}]}),
        json!({"replicaPolicy": {"interval": "0s", "keep": 1}}),
        json!({"replicaPolicy": {"interval": "1h", "keep": 0}}),
        json!({"cpu": 2, "memory": "512Mi"}),
        json!({"machine": "microvm", "nics": [{"name": "eth0", "network": "lan", "model": "e1000"}]}),
        json!({"placement": {"node": "sat-1", "address": "10.0.0.1"}}),
        json!({"disks": [{"name": "d"}]}),
        json!({"disks": [{"name": "d", "source": {"spacesuit": "s", "blank": null}}]}),
    ]
    .into_iter()
    .enumerate()
    {
        let expect = match i {
            6 => "names-unique",
            0..=8 => "schema",
            _ => "",
        };
        probes.push((docs.len(), expect));
        docs.push(vm(spec));
    }
    (docs, probes)
}

/// The identifier a deorch-only diagnostic ends with (`... [names-unique]`).
fn only_id(message: &str) -> Option<&str> {
    let id = message.strip_suffix(']')?.rsplit_once(" [")?.1;
    deorch::manifest::semantic::OnlyDeorch::ALL
        .iter()
        .find(|c| c.id() == id)
        .map(|c| c.id())
}

/// Whatever the schema refuses, deorch refuses; whatever deorch alone
/// refuses carries the identifier of a check listed in docs/MANIFESTS.md
/// as one only deorch makes. The schema side is the real check-jsonschema
/// on `schemas/all.json`, all documents in one run.
#[test]
fn the_schemas_refuse_nothing_deorch_accepts_and_deorch_alone_refuses_only_listed_checks() {
    let Some(tool) = tool() else { return };
    let started = std::time::Instant::now();
    let (docs, probes) = documents();
    let dir = std::env::temp_dir().join(format!("deorch-diff-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut names = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        let name = format!("{i:05}.json");
        std::fs::write(dir.join(&name), serde_json::to_string(d).unwrap()).unwrap();
        names.push(name);
    }
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/all.json");
    let mut refused_by_schema = std::collections::BTreeSet::new();
    for batch in names.chunks(4000) {
        let out = Command::new(&tool)
            .current_dir(&dir)
            .args(["-o", "json", "--schemafile"])
            .arg(&schema)
            .args(batch)
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "check-jsonschema output is not JSON ({e}):\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(report["parse_errors"], json!([]), "{report}");
        for e in report["errors"].as_array().unwrap() {
            refused_by_schema.insert(e["filename"].as_str().unwrap().to_string());
        }
    }
    let schema_secs = started.elapsed().as_secs_f64();

    let (mut both, mut deorch_only, mut accepted) = (0, 0, 0);
    let mut wrong = Vec::new();
    for (name, doc) in names.iter().zip(&docs) {
        let text = serde_json::to_string(doc).unwrap();
        let diags = deorch::manifest::parse_str(Path::new(name), &text).diagnostics;
        let schema_refuses = refused_by_schema.contains(name);
        match (schema_refuses, diags.is_empty()) {
            (true, true) => wrong.push(format!(
                "{name}: the schema refuses, deorch accepts: {text}"
            )),
            (true, false) => both += 1,
            (false, true) => accepted += 1,
            (false, false) => {
                deorch_only += 1;
                for d in diags.iter().filter(|d| only_id(&d.message).is_none()) {
                    wrong.push(format!(
                        "{name}: only deorch refuses, with no listed check: {d}\n    {text}"
                    ));
                }
            }
        }
    }
    for (i, expect) in probes {
        let name = &names[i];
        let text = serde_json::to_string(&docs[i]).unwrap();
        let diags = deorch::manifest::parse_str(Path::new(name), &text).diagnostics;
        match expect {
            "schema" => assert!(
                refused_by_schema.contains(name) && !diags.is_empty(),
                "the schema must refuse {text}"
            ),
            "" => {}
            id => assert!(
                !refused_by_schema.contains(name)
                    && diags.iter().any(|d| only_id(&d.message) == Some(id)),
                "only deorch refuses {text}, with [{id}]: {diags:?}"
            ),
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    eprintln!(
        "{} documents: {both} refused by both, {deorch_only} by deorch only, {accepted} accepted; \
         check-jsonschema {schema_secs:.1} s, total {:.1} s",
        docs.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        wrong.is_empty(),
        "{} disagreements, e.g.:\n{}",
        wrong.len(),
        wrong
            .iter()
            .take(25)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The generator reaches every side: refusals by both, by deorch alone
    // (so the listed checks are exercised) and acceptances.
    assert!(
        both > 500 && deorch_only > 10 && accepted > 100,
        "{both} {deorch_only} {accepted}"
    );
}
