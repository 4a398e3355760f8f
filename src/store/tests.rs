use std::time::{Duration, SystemTime};

use super::*;
use crate::model::{Manifest, Quantity, VirtualMachineSpec};

struct Tmp(PathBuf);
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
fn tmp() -> Tmp {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "deorch-store-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d); // left over by an earlier run with this pid
    std::fs::create_dir_all(&d).unwrap();
    Tmp(d)
}

fn vm(name: &str, mem_mi: u64) -> AnyObject {
    AnyObject::VirtualMachine(Manifest::new(
        name,
        VirtualMachineSpec {
            memory: Some(Quantity(mem_mi << 20)),
            ..Default::default()
        },
    ))
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new(Kind::VirtualMachine, None, name)
}

fn src(s: &str) -> SourceId {
    SourceId(s.into())
}

#[test]
fn generations_are_monotonic_across_delete_and_recreate() {
    let t = tmp();
    let s = Store::open(&t.0.join("s.redb")).unwrap();
    let a = s.apply(&vm("a", 64), &src("api")).unwrap();
    assert_eq!((a.generation, a.changed), (1, true));
    let same = s.apply(&vm("a", 64), &src("api")).unwrap();
    assert_eq!((same.generation, same.changed), (1, false));
    assert_eq!(s.apply(&vm("a", 128), &src("api")).unwrap().generation, 2);
    assert_eq!(s.delete(&key("a"), &src("api")).unwrap(), Some(3));
    assert_eq!(s.delete(&key("a"), &src("api")).unwrap(), None);
    assert!(s.get(&key("a")).unwrap().deleted);
    assert!(s.list(None).is_empty());
    let again = s.apply(&vm("a", 64), &src("api")).unwrap();
    assert_eq!((again.generation, again.changed), (4, true));
    let r = s.get(&key("a")).unwrap();
    assert_eq!(r.object["metadata"]["generation"], 4);
}

#[test]
fn signed_generations_only_move_forward_and_are_kept() {
    let t = tmp();
    let s = Store::open(&t.0.join("s.redb")).unwrap();
    // A node that missed generations 1-4 takes 5 as signed.
    let a = s
        .apply_signed(&vm("a", 64), &src("git"), 5)
        .unwrap()
        .unwrap();
    assert_eq!((a.generation, a.changed), (5, true));
    assert_eq!(
        s.get(&key("a")).unwrap().object["metadata"]["generation"],
        5
    );
    // The same content again: a no-op whatever generation it claims.
    let same = s
        .apply_signed(&vm("a", 64), &src("git"), 5)
        .unwrap()
        .unwrap();
    assert!(!same.changed);
    // New content at an old or equal generation: refused, nothing changes.
    assert_eq!(
        s.apply_signed(&vm("a", 128), &src("git"), 5).unwrap(),
        Err(5)
    );
    assert_eq!(
        s.apply_signed(&vm("a", 128), &src("git"), 3).unwrap(),
        Err(5)
    );
    assert_eq!(s.get(&key("a")).unwrap().generation, 5);
    // A deletion (generation 6) is not undone by a replay of generation 5.
    assert_eq!(s.delete(&key("a"), &src("git")).unwrap(), Some(6));
    assert_eq!(
        s.apply_signed(&vm("a", 32), &src("git"), 6).unwrap(),
        Err(6)
    );
    assert!(s.get(&key("a")).unwrap().deleted);
    let back = s
        .apply_signed(&vm("a", 32), &src("git"), 7)
        .unwrap()
        .unwrap();
    assert_eq!((back.generation, back.changed), (7, true));
}

#[test]
fn hash_ignores_key_order_and_status_and_covers_labels() {
    let t = tmp();
    let s = Store::open(&t.0.join("s.redb")).unwrap();
    let AnyObject::VirtualMachine(mut m) = vm("a", 64) else {
        unreachable!()
    };
    s.apply(&AnyObject::VirtualMachine(m.clone()), &src("api"))
        .unwrap();
    m.status = Some(Default::default());
    assert!(
        !s.apply(&AnyObject::VirtualMachine(m.clone()), &src("api"))
            .unwrap()
            .changed
    );
    m.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
    assert!(
        s.apply(&AnyObject::VirtualMachine(m), &src("api"))
            .unwrap()
            .changed
    );
    let a = serde_json::json!({"spec": {"a": 1, "b": [1, {"d": 2, "c": 3}]}});
    let b = serde_json::json!({"spec": {"b": [1, {"c": 3, "d": 2}], "a": 1}});
    assert_eq!(content_hash(&a), content_hash(&b));
}

#[test]
fn sources_move_without_a_new_generation() {
    let t = tmp();
    let s = Store::open(&t.0.join("s.redb")).unwrap();
    s.apply(&vm("a", 64), &src("file:/m/a.yaml")).unwrap();
    let moved = s.apply(&vm("a", 64), &src("file:/m/b.yaml")).unwrap();
    assert_eq!((moved.generation, moved.changed), (1, false));
    assert!(s.list_by_source(&src("file:/m/a.yaml")).is_empty());
    assert_eq!(s.list_by_source(&src("file:/m/b.yaml")).len(), 1);
}

#[test]
fn status_is_durable_and_does_not_bump_generation() {
    let t = tmp();
    let path = t.0.join("s.redb");
    {
        let s = Store::open(&path).unwrap();
        let mut rx = s.subscribe();
        s.apply(&vm("a", 64), &src("api")).unwrap();
        let c = rx.try_recv().unwrap();
        assert_eq!((c.generation, c.status_only), (1, false));
        s.set_status(&key("a"), serde_json::json!({"phase": "Running"}))
            .unwrap();
        let c = rx.try_recv().unwrap();
        assert!(c.status_only);
        // Same status again: nothing written, nothing sent.
        s.set_status(&key("a"), serde_json::json!({"phase": "Running"}))
            .unwrap();
        assert!(rx.try_recv().is_err());
        // Status survives a spec change.
        s.apply(&vm("a", 128), &src("api")).unwrap();
        assert_eq!(
            s.get(&key("a")).unwrap().status.unwrap()["phase"],
            "Running"
        );
        // Absent keys are ignored.
        s.set_status(&key("zz"), serde_json::json!({})).unwrap();
        assert!(s.get(&key("zz")).is_none());
    }
    let s = Store::open(&path).unwrap();
    let r = s.get(&key("a")).unwrap();
    assert_eq!(r.generation, 2);
    assert_eq!(r.status.unwrap()["phase"], "Running");
    s.delete(&key("a"), &src("api")).unwrap();
    drop(s);
    let s = Store::open(&path).unwrap();
    let r = s.get(&key("a")).unwrap();
    assert!(r.deleted && r.status.is_none());
}

#[test]
fn second_process_is_refused_and_gc_drops_old_tombstones() {
    let t = tmp();
    let path = t.0.join("s.redb");
    let s = Store::open(&path).unwrap();
    let err = Store::open(&path)
        .err()
        .expect("second open must fail")
        .to_string();
    assert!(err.contains("in use"), "{err}");
    s.apply(&vm("a", 64), &src("api")).unwrap();
    s.delete(&key("a"), &src("api")).unwrap();
    assert_eq!(
        s.gc_tombstones(SystemTime::now() - Duration::from_secs(3600))
            .unwrap(),
        0
    );
    assert_eq!(
        s.gc_tombstones(SystemTime::now() + Duration::from_secs(1))
            .unwrap(),
        1
    );
    assert!(s.get(&key("a")).is_none());
    drop(s);
    assert!(Store::open(&path).unwrap().get(&key("a")).is_none());
}

#[test]
fn events_ring_is_bounded_and_filtered() {
    let t = tmp();
    let s = Store::open(&t.0.join("s.redb")).unwrap();
    s.apply(&vm("a", 64), &src("file:/m/a.yaml")).unwrap();
    for i in 0..(EVENT_RING + 10) {
        s.record_event(Event {
            time_ms: i as u64,
            level: "Normal".into(),
            object: None,
            source: None,
            reason: "Filler".into(),
            message: String::new(),
        });
    }
    assert_eq!(s.events(None).len(), EVENT_RING);
    assert_eq!(s.events(None)[0].time_ms, 10);
    s.record_event(Event {
        time_ms: 1,
        level: "Warning".into(),
        object: None,
        source: Some(src("file:/m/a.yaml")),
        reason: "InvalidManifest".into(),
        message: "bad".into(),
    });
    let about_a = s.events(Some(&key("a")));
    assert_eq!(about_a.len(), 1);
    assert_eq!(about_a[0].reason, "InvalidManifest");
    assert!(s.events(Some(&key("b"))).is_empty());
}

#[test]
fn corrupt_records_are_named() {
    let t = tmp();
    let path = t.0.join("s.redb");
    {
        let db = Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(RECORDS)
            .unwrap()
            .insert("VirtualMachine/default/x", b"{not json".as_slice())
            .unwrap();
        tx.commit().unwrap();
    }
    let err = Store::open(&path).err().unwrap().to_string();
    assert!(err.contains("VirtualMachine/default/x"), "{err}");
}

#[test]
fn a_batch_commits_whole_or_not_at_all_and_a_preview_never() {
    let t = tmp();
    let s = Store::open(&t.0.join("s.redb")).unwrap();
    s.apply(&vm("a", 64), &src("api")).unwrap();
    let mut changes = s.subscribe();
    // Refused after staging two writes: nothing is written or notified.
    let refused: Result<(), &str> = s
        .transact(|tx| {
            tx.apply(&vm("a", 128), &src("push"), None).unwrap();
            tx.apply(&vm("b", 64), &src("push"), None).unwrap();
            assert_eq!(
                tx.get(&key("b")).unwrap().generation,
                1,
                "reads see the batch"
            );
            Err("no")
        })
        .unwrap();
    assert_eq!(refused, Err("no"));
    assert_eq!(s.get(&key("a")).unwrap().generation, 1);
    assert!(s.get(&key("b")).is_none());
    assert!(changes.try_recv().is_err());
    // A preview decides the same way and writes nothing.
    let previewed = s
        .preview(|tx| tx.apply(&vm("b", 64), &src("push"), Some(4)))
        .unwrap();
    assert_eq!(previewed.unwrap().generation, 4);
    assert!(s.get(&key("b")).is_none());
    // Accepted: both, durably, then both notified.
    s.transact(|tx| {
        tx.apply(&vm("a", 128), &src("push"), None)?;
        tx.delete(&key("a"), &src("push"), None)?;
        tx.apply(&vm("b", 64), &src("push"), Some(4))
    })
    .unwrap()
    .unwrap();
    drop(s);
    let s = Store::open(&t.0.join("s.redb")).unwrap();
    let a = s.get(&key("a")).unwrap();
    assert!(a.deleted && a.generation == 3, "{a:?}");
    assert_eq!(s.get(&key("b")).unwrap().generation, 4);
    let mut keys = vec![
        changes.try_recv().unwrap().key,
        changes.try_recv().unwrap().key,
    ];
    keys.sort();
    assert_eq!(keys, vec![key("a"), key("b")]);
}

/// A store of `n` VMs with status, closed; its records (without status).
fn populated(dir: &Path, n: usize) -> (PathBuf, Vec<Record>) {
    let path = dir.join("store.redb");
    let store = Store::open(&path).unwrap();
    for i in 0..n {
        store
            .apply(&vm(&format!("vm{i}"), 64 + i as u64), &src("api"))
            .unwrap();
        store
            .set_status(
                &key(&format!("vm{i}")),
                serde_json::json!({"phase": "Running"}),
            )
            .unwrap();
    }
    store.delete(&key("vm0"), &src("api")).unwrap();
    let records = store.all_records();
    (path, records)
}

/// Records of an opened store as comparable text.
fn texts(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {} {} {}",
                r.key, r.generation, r.source.0, r.hash, r.deleted, r.object
            )
        })
        .collect()
}

#[test]
fn an_empty_store_file_is_refused_not_started_empty() {
    let t = tmp();
    let (path, _) = populated(&t.0, 3);
    std::fs::write(&path, b"").unwrap();
    let err = Store::open(&path)
        .err()
        .expect("a 0-byte store must be refused");
    assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("empty (0 bytes)") && text.contains("recover-store"),
        "{text}"
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        0,
        "nothing changed"
    );
}

/// Every single-bit flip and every garbled 4 KiB page of a store file
/// either is refused with a clear error or leaves every record exactly as
/// written: never a silent change, never a panic.
#[test]
fn flipped_bits_and_garbled_pages_are_refused_or_harmless() {
    let t = tmp();
    let (path, records) = populated(&t.0, 40);
    let want = texts(&records);
    let pristine = std::fs::read(&path).unwrap();
    // xorshift64: reproducible, no dependency.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut refused, mut harmless) = (0, 0);
    let mut check = |bytes: &[u8], what: &str| {
        let copy = t.0.join("copy.redb");
        let _ = std::fs::remove_file(&copy);
        std::fs::write(&copy, bytes).unwrap();
        match Store::open(&copy) {
            Ok(s) => {
                assert_eq!(
                    texts(&s.all_records()),
                    want,
                    "{what} changed a record silently"
                );
                harmless += 1;
            }
            Err(e) => {
                let text = e.to_string();
                assert!(
                    text.contains("damaged") || text.contains("store "),
                    "{what}: unclear error {text}"
                );
                refused += 1;
            }
        }
    };
    for i in 0..400 {
        let mut bytes = pristine.clone();
        let bit = (next() % (bytes.len() as u64 * 8)) as usize;
        bytes[bit / 8] ^= 1 << (bit % 8);
        check(&bytes, &format!("flip {i} (bit {bit})"));
    }
    let pages = pristine.len() / 4096;
    for page in 0..pages.min(40) {
        let mut bytes = pristine.clone();
        for b in &mut bytes[page * 4096..(page + 1) * 4096] {
            *b = next() as u8;
        }
        check(&bytes, &format!("garbled page {page}"));
    }
    eprintln!("{refused} refused, {harmless} harmless (redb free space or padding)");
    assert!(refused > 0);
}

/// A record whose bytes changed is reported by key; recovery takes it from
/// the snapshot, keeps every sound record, and sets the old file aside.
#[test]
fn a_damaged_record_is_named_and_recovered_from_the_snapshot() {
    let t = tmp();
    let path = t.0.join("store.redb");
    {
        let store = Store::open(&path).unwrap();
        for i in 0..5 {
            store
                .apply(&vm(&format!("vm{i}"), 64), &src("api"))
                .unwrap();
        }
        snapshot::write(&store, &t.0.join(snapshot::FILE)).unwrap();
        // Newer than the snapshot: must survive from the store itself.
        store.apply(&vm("vm4", 128), &src("api")).unwrap();
    }
    let before = texts(&Store::open(&path).unwrap().all_records());
    // Damage vm2's value in place: find its JSON in the file and flip a
    // byte of its memory size.
    let mut bytes = std::fs::read(&path).unwrap();
    let needle = br#""name":"vm2""#;
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("vm2's record is in the file");
    bytes[at + 9] ^= 0x01; // "vm2" -> "vm3"
    std::fs::write(&path, &bytes).unwrap();
    let err = Store::open(&path).err().expect("damage must be found");
    let StoreError::Damaged { records, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(records.len(), 1, "{err}");
    assert_eq!(records[0].0, "VirtualMachine/default/vm2");

    let report = recover::recover(&t.0, "store.redb").unwrap();
    assert_eq!(report.from_snapshot, 1, "{report:?}");
    assert_eq!(report.from_store, 4, "{report:?}");
    assert!(report.lost.is_empty());
    assert!(report.set_aside.is_some());
    let after = texts(&Store::open(&path).unwrap().all_records());
    assert_eq!(after, before, "every record as it was, vm4 at its newest");
}

/// A store file that is gone or empty is rebuilt whole from the snapshot;
/// with neither, recovery says there is nothing to recover from.
#[test]
fn a_lost_store_is_rebuilt_from_the_snapshot() {
    let t = tmp();
    let (path, records) = populated(&t.0, 10);
    {
        let store = Store::open(&path).unwrap();
        snapshot::write(&store, &t.0.join(snapshot::FILE)).unwrap();
    }
    std::fs::write(&path, b"").unwrap();
    let report = recover::recover(&t.0, "store.redb").unwrap();
    assert_eq!(report.from_snapshot, records.len(), "{report:?}");
    assert_eq!(
        texts(&Store::open(&path).unwrap().all_records()),
        texts(&records)
    );

    // A damaged snapshot is refused, not half-used.
    let snap = t.0.join(snapshot::FILE);
    let mut bytes = std::fs::read(&snap).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x20;
    std::fs::write(&snap, &bytes).unwrap();
    assert!(snapshot::read(&snap)
        .unwrap_err()
        .contains("checksum mismatch"));
    std::fs::remove_file(&path).unwrap();
    let err = recover::recover(&t.0, "store.redb")
        .unwrap_err()
        .to_string();
    assert!(err.contains("nothing to recover from"), "{err}");
}

#[test]
fn shared_lists_decode_only_what_changed_and_never_show_an_old_record() {
    let t = tmp();
    let s = Store::open(&t.0.join("s.redb")).unwrap();
    for n in ["a", "b", "c"] {
        s.apply(&vm(n, 64), &src("api")).unwrap();
    }
    let first = s.list_shared();
    let names: Vec<&str> = first.iter().map(|r| r.key.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    // Nothing changed: the same records, not decoded again.
    let again = s.list_shared();
    assert!(first.iter().zip(&again).all(|(x, y)| Arc::ptr_eq(x, y)));
    // A status, a new spec, a deletion and a new object: each seen, and
    // only those records are new.
    s.set_status(&key("a"), serde_json::json!({"phase": "Running"}))
        .unwrap();
    s.apply(&vm("b", 128), &src("api")).unwrap();
    s.delete(&key("c"), &src("api")).unwrap();
    s.apply(&vm("d", 64), &src("api")).unwrap();
    let now = s.list_shared();
    let names: Vec<&str> = now.iter().map(|r| r.key.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "d"]);
    assert_eq!(now[0].status.as_ref().unwrap()["phase"], "Running");
    assert_eq!(now[1].generation, 2);
    let listed = s.list(None);
    for (shared, plain) in now.iter().zip(&listed) {
        assert_eq!(
            (
                &shared.key,
                shared.generation,
                &shared.object,
                &shared.status
            ),
            (&plain.key, plain.generation, &plain.object, &plain.status)
        );
    }
    assert!(!Arc::ptr_eq(&first[0], &now[0]), "a's status changed");
    // Writing the same status again still writes: a fresh record, equal.
    s.set_status(&key("d"), serde_json::json!({"phase": "Pending"}))
        .unwrap();
    let last = s.list_shared();
    assert!(Arc::ptr_eq(&now[0], &last[0]) && Arc::ptr_eq(&now[1], &last[1]));
    assert_eq!(last[2].status.as_ref().unwrap()["phase"], "Pending");
}

/// Two writers of one status, each setting its own field from what is
/// stored: with one read-change-write step neither undoes the other
/// (the relocation agent's `source` was lost to the reconciler's
/// `Pending` when each read, then wrote).
#[test]
fn status_updates_of_two_writers_keep_both_fields() {
    let t = tmp();
    let s = std::sync::Arc::new(Store::open(&t.0.join("s.redb")).unwrap());
    s.apply(&vm("a", 64), &src("api")).unwrap();
    let writer = |field: &'static str| {
        let s = s.clone();
        std::thread::spawn(move || {
            for i in 0..200u64 {
                s.update_status(&key("a"), |r| {
                    let mut v = r.status.clone().unwrap_or_else(|| serde_json::json!({}));
                    v[field] = i.into();
                    // Widen the window a read-then-write would lose in.
                    std::thread::yield_now();
                    Some(v)
                })
                .unwrap();
            }
        })
    };
    let (a, b) = (writer("source"), writer("phase"));
    a.join().unwrap();
    b.join().unwrap();
    let st = s.get(&key("a")).unwrap().status.unwrap();
    assert_eq!(
        (st["source"].as_u64(), st["phase"].as_u64()),
        (Some(199), Some(199)),
        "{st}"
    );
    // Unchanged: not rewritten; `None`: left as it is.
    s.update_status(&key("a"), |_| None).unwrap();
    assert_eq!(s.get(&key("a")).unwrap().status.unwrap(), st);
}
