use std::path::PathBuf;

use serde_json::{json, Value};

use super::*;
use crate::identity::{sign_manifest, AddressType, Network, PrivateKey};

struct Tmp(PathBuf);
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct World {
    _tmp: Tmp,
    admission: Arc<Admission>,
    owner_key: PrivateKey,
    owner: String,
}

fn key() -> (PrivateKey, String) {
    let k = PrivateKey::generate(Network::Regtest);
    let a = k.address(AddressType::P2wpkh).unwrap().to_string();
    (k, a)
}

fn world() -> World {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "deorch-admission-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    let store = Arc::new(Store::open(&d.join("s.redb")).unwrap());
    let (owner_key, owner) = key();
    let admission = Admission::new(
        store,
        AdmissionConfig {
            cluster: Some(owner.clone()),
            owner: Some(owner.clone()),
        },
    );
    World {
        _tmp: Tmp(d),
        admission,
        owner_key,
        owner,
    }
}

fn net(name: &str, mtu: u32, generation: i64) -> Value {
    let v = json!({
        "apiVersion": crate::model::API_VERSION,
        "kind": "Network",
        "metadata": {"name": name, "namespace": "default", "generation": generation},
        "spec": {"mtu": mtu},
    });
    AnyObject::from_value(v).unwrap().to_value()
}

fn signed(v: &Value, cluster: &str, k: &PrivateKey) -> AnyObject {
    AnyObject::from_value(sign_manifest(v, cluster, k, AddressType::P2wpkh).unwrap()).unwrap()
}

fn batch(trust: Trust, objects: Vec<AnyObject>) -> Batch {
    let mut b = Batch::new(SourceId("test".into()), trust);
    b.docs = objects
        .into_iter()
        .enumerate()
        .map(|(i, object)| Doc {
            object,
            at: format!("t.yaml:{}", i + 1),
        })
        .collect();
    b
}

fn codes(o: &Outcome) -> Vec<&'static str> {
    o.verdicts.iter().map(|a| a.verdict.code()).collect()
}

fn policy(w: &World, rules: Value) -> AnyObject {
    let v = json!({
        "apiVersion": crate::model::API_VERSION,
        "kind": "AccessPolicy",
        "metadata": {"name": "team", "generation": 1},
        "spec": {"rules": rules},
    });
    let v = AnyObject::from_value(v).unwrap().to_value();
    signed(&v, &w.owner, &w.owner_key)
}

#[test]
fn the_same_rules_hold_for_every_trust_and_signed_documents_keep_their_generation() {
    let w = world();
    let (stranger_key, _) = key();
    for trust in [Trust::Local, Trust::UnsignedByChoice, Trust::Signed] {
        let name = format!("{trust:?}").to_lowercase();
        let owner_doc = signed(&net(&name, 1500, 3), &w.owner, &w.owner_key);
        let o = w
            .admission
            .admit(batch(trust, vec![owner_doc.clone()]))
            .unwrap();
        assert_eq!(codes(&o), ["Applied"], "{trust:?}");
        let r = w.admission.store().get(&ObjectKey::of(&owner_doc)).unwrap();
        assert_eq!(r.generation, 3, "stored at the signed generation");
        crate::identity::verify_manifest(&r.object, &w.owner).expect("still verifies");
        // The same again: unchanged; an older or equal generation with
        // other content: stale.
        let o = w.admission.admit(batch(trust, vec![owner_doc])).unwrap();
        assert_eq!(codes(&o), ["Unchanged"]);
        let older = signed(&net(&name, 9000, 3), &w.owner, &w.owner_key);
        let o = w.admission.admit(batch(trust, vec![older])).unwrap();
        assert_eq!(
            o.verdicts[0].verdict,
            Verdict::Stale {
                generation: 3,
                stored: 3
            }
        );
        // A stranger's signature, a tampered one, another cluster's: refused
        // even from a local source.
        let stranger = signed(&net(&name, 1400, 4), &w.owner, &stranger_key);
        let o = w.admission.admit(batch(trust, vec![stranger])).unwrap();
        assert_eq!(codes(&o), ["Denied"], "{trust:?}");
        let mut tampered = sign_manifest(
            &net(&name, 1400, 4),
            &w.owner,
            &w.owner_key,
            AddressType::P2wpkh,
        )
        .unwrap();
        tampered["spec"]["mtu"] = json!(9000);
        let tampered = AnyObject::from_value(tampered).unwrap();
        let o = w.admission.admit(batch(trust, vec![tampered])).unwrap();
        assert_eq!(codes(&o), ["BadSignature"], "{trust:?}");
        let (_, other_cluster) = key();
        let elsewhere = signed(&net(&name, 1400, 4), &other_cluster, &w.owner_key);
        let o = w.admission.admit(batch(trust, vec![elsewhere])).unwrap();
        assert_eq!(codes(&o), ["BadSignature"], "{trust:?}");
        // Unsigned: only where the trust allows it.
        let unsigned = AnyObject::from_value(net(&format!("{name}-u"), 1500, 1)).unwrap();
        let o = w.admission.admit(batch(trust, vec![unsigned])).unwrap();
        let expect = if trust == Trust::Signed {
            "Unsigned"
        } else {
            "Applied"
        };
        assert_eq!(codes(&o), [expect], "{trust:?}");
        let r = w
            .admission
            .store()
            .get(&ObjectKey::new(Kind::Network, None, &name))
            .unwrap();
        assert_eq!(r.object["spec"]["mtu"], 1500, "nothing refused was written");
    }
    // Every refusal is an event whose reason is the verdict.
    let events = w.admission.store().events(None);
    for code in ["Denied", "BadSignature", "Stale", "Unsigned", "Applied"] {
        assert!(events.iter().any(|e| e.reason == code), "no {code} event");
    }
}

#[test]
fn policies_authorise_admins_never_through_level2_and_a_batch_is_all_or_nothing() {
    let w = world();
    let (admin_key, admin) = key();
    let (guarded_key, guarded) = key();
    let p = policy(
        &w,
        json!([
            {"subjects": [admin], "role": "admin"},
            {"subjects": [guarded], "role": "operator", "level2": {"servers": [{"uri": "ldap://127.0.0.1:1", "bindDn": "uid={user},dc=x"}]}},
        ]),
    );
    // The policy and an admin-signed document in one batch: the batch's
    // own policy counts.
    let by_admin = signed(&net("a", 1500, 1), &w.owner, &admin_key);
    let o = w
        .admission
        .admit(batch(Trust::Signed, vec![p, by_admin]))
        .unwrap();
    assert_eq!(codes(&o), ["Applied", "Applied"], "{:?}", o.problems());
    let l2 = signed(&net("b", 1500, 1), &w.owner, &guarded_key);
    let o = w.admission.admit(batch(Trust::Local, vec![l2])).unwrap();
    assert_eq!(codes(&o), ["Level2Required"]);
    // One refused document withholds the others.
    let good = signed(&net("c", 1500, 1), &w.owner, &w.owner_key);
    let unsigned = AnyObject::from_value(net("d", 1500, 1)).unwrap();
    let o = w
        .admission
        .admit(batch(Trust::Signed, vec![good.clone(), unsigned]))
        .unwrap();
    assert_eq!(codes(&o), ["Withheld", "Unsigned"]);
    assert!(!o.committed);
    assert!(w.admission.store().get(&ObjectKey::of(&good)).is_none());
    // Twice the same object: refused.
    let o = w
        .admission
        .admit(batch(Trust::Local, vec![good.clone(), good.clone()]))
        .unwrap();
    assert_eq!(codes(&o), ["Withheld", "Duplicate"]);
    // A dry run decides without writing.
    let o = w
        .admission
        .dry_run(batch(Trust::Signed, vec![good.clone()]))
        .unwrap();
    assert_eq!(codes(&o), ["Applied"]);
    assert!(w.admission.store().get(&ObjectKey::of(&good)).is_none());
}

#[test]
fn signed_deletions_are_authorised_for_the_delete_verb() {
    let w = world();
    let (viewer_key, viewer) = key();
    let p = policy(&w, json!([{"subjects": [viewer], "role": "viewer"}]));
    let doc = signed(&net("lan", 1500, 2), &w.owner, &w.owner_key);
    let o = w
        .admission
        .admit(batch(Trust::Signed, vec![p, doc]))
        .unwrap();
    assert!(o.committed);
    let tombstone = |k: &PrivateKey, generation: i64| {
        let mut v = net("lan", 1500, generation);
        v["metadata"]["annotations"] = json!({"deorch.dev/deleted": "true"});
        signed(&v, &w.owner, k)
    };
    let del = |t: Option<AnyObject>| {
        let mut b = Batch::new(SourceId("gossip".into()), Trust::Signed);
        b.deletions.push(Deletion {
            key: ObjectKey::new(Kind::Network, None, "lan"),
            at: "gossip".into(),
            tombstone: t,
            purge: false,
        });
        b
    };
    let o = w.admission.admit(del(None)).unwrap();
    assert_eq!(codes(&o), ["Unsigned"]);
    let o = w
        .admission
        .admit(del(Some(tombstone(&viewer_key, 3))))
        .unwrap();
    assert_eq!(codes(&o), ["Denied"]);
    assert!(
        o.verdicts[0].verdict.reason().contains("not delete"),
        "{}",
        o.verdicts[0].verdict
    );
    let o = w
        .admission
        .admit(del(Some(tombstone(&w.owner_key, 2))))
        .unwrap();
    assert_eq!(codes(&o), ["Stale"]);
    let o = w
        .admission
        .admit(del(Some(tombstone(&w.owner_key, 3))))
        .unwrap();
    assert_eq!(o.verdicts[0].verdict, Verdict::Deleted { generation: 3 });
    assert!(w.admission.store().list(Some(Kind::Network)).is_empty());
}

fn vm_value(name: &str, placement_node: Option<&str>, ann: Value) -> Value {
    let mut v = json!({
        "apiVersion": crate::model::API_VERSION,
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "default", "generation": 1, "annotations": ann},
        "spec": {"cpu": 1, "memory": "64Mi"},
    });
    if let Some(n) = placement_node {
        v["spec"]["placement"] = json!({"node": n});
    }
    AnyObject::from_value(v).unwrap().to_value()
}

#[test]
fn a_node_publishes_its_own_vms_and_attested_session_changes_only() {
    let w = world();
    let (node_key, node) = key();
    let (_, stranger_node) = key();
    let (stranger_key, _) = (PrivateKey::generate(Network::Regtest), ());
    let (_, user) = key();
    let policy = json!({
        "apiVersion": crate::model::API_VERSION,
        "kind": "AccessPolicy",
        "metadata": {"name": "members", "generation": 1},
        "spec": {
            "satellites": [{"name": "sat1", "address": node}],
            "rules": [{"subjects": [user], "role": "operator",
                       "level2": {"servers": [{"uri": "ldap://127.0.0.1:1", "bindDn": "uid={user}"}]}}]
        }
    });
    let policy = signed(&policy, &w.owner, &w.owner_key);
    let out = w
        .admission
        .admit(batch(Trust::Signed, vec![policy]))
        .unwrap();
    assert!(out.committed, "{:?}", out.verdicts);
    let try_one = |v: Value, k: &PrivateKey| {
        let out = w
            .admission
            .admit(batch(Trust::Signed, vec![signed(&v, &w.owner, k)]))
            .unwrap();
        out.verdicts[0].verdict.code()
    };
    // Placed on itself (by name or address): the node may.
    assert_eq!(
        try_one(vm_value("own", Some("sat1"), json!({})), &node_key),
        "Applied"
    );
    assert_eq!(
        try_one(vm_value("own2", Some(&node), json!({})), &node_key),
        "Applied"
    );
    // Placed elsewhere, or nowhere: not without a session's attestation.
    assert_eq!(
        try_one(vm_value("other", Some("sat2"), json!({})), &node_key),
        "Denied"
    );
    // A session's change: as the user; their rule needs level 2.
    let by_user = |l2: bool| {
        let mut a = json!({ON_BEHALF_OF_ANNOTATION: user});
        if l2 {
            a[LEVEL2_ANNOTATION] = json!("true");
        }
        a
    };
    assert_eq!(
        try_one(vm_value("s1", None, by_user(false)), &node_key),
        "Level2Required"
    );
    assert_eq!(
        try_one(vm_value("s2", None, by_user(true)), &node_key),
        "Applied"
    );
    // The same attestation signed by a node nobody admitted counts for
    // nothing, and a stranger cannot claim a node's placement.
    assert_eq!(
        try_one(vm_value("s3", None, by_user(true)), &stranger_key),
        "Denied"
    );
    assert_eq!(
        try_one(
            vm_value("s4", Some(&stranger_node), json!({})),
            &stranger_key
        ),
        "Denied"
    );
    // A node cannot take over a VM placed elsewhere by re-placing it on
    // itself.
    let owners = vm_value("taken", Some("sat2"), json!({}));
    assert_eq!(try_one(owners, &w.owner_key), "Applied");
    let mut mine = vm_value("taken", Some("sat1"), json!({}));
    mine["metadata"]["generation"] = json!(2);
    assert_eq!(try_one(mine, &node_key), "Denied");
}

#[test]
fn unsigned_input_cannot_carry_an_attestation() {
    let w = world();
    let (_, user) = key();
    let v = vm_value(
        "forged",
        None,
        json!({ON_BEHALF_OF_ANNOTATION: user, LEVEL2_ANNOTATION: "true", "keep": "me"}),
    );
    let out = w
        .admission
        .admit(batch(Trust::Local, vec![AnyObject::from_value(v).unwrap()]))
        .unwrap();
    assert!(out.committed);
    let rec = w
        .admission
        .store()
        .get(&ObjectKey::new(
            Kind::VirtualMachine,
            Some("default"),
            "forged",
        ))
        .unwrap();
    let ann = &rec.object["metadata"]["annotations"];
    assert!(ann.get(ON_BEHALF_OF_ANNOTATION).is_none() && ann.get(LEVEL2_ANNOTATION).is_none());
    assert_eq!(ann["keep"], "me");
}
