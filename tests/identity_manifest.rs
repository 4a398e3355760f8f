//! Signed manifests: what the signature binds (object, cluster,
//! generation), what it ignores (status, its own annotations), and the
//! AccessPolicy trust chain from the cluster owner.

use deorch::identity::signed::{SIGNATURE_ANNOTATION, SIGNER_ANNOTATION};
use deorch::identity::{
    authorize, sign_manifest, signing_payload, trusted_policies, verify_manifest, AddressType,
    ManifestError, Network, PrivateKey,
};
use deorch::model::access::{AccessRule, Role, Verb};
use deorch::model::{AccessPolicySpec, AnyObject, Kind, Manifest};
use serde_json::{json, Value};

const CLUSTER: &str = "bc1qowner-cluster-id";

fn vm(generation: i64) -> Value {
    let v = json!({
        "apiVersion": "deorch.dev/v1alpha1",
        "kind": "AccessPolicy",
        "metadata": {"name": "ops", "generation": generation, "labels": {"team": "a"}},
        "spec": {"rules": [{"subjects": ["1BgGZ9tcN4rm9KBzDn7KprQz87SZ26SAMH"], "role": "viewer"}]},
    });
    // Through the model, as the store would hold it.
    AnyObject::from_value(v).unwrap().to_value()
}

fn key() -> PrivateKey {
    PrivateKey::generate(Network::Mainnet)
}

#[test]
fn sign_then_verify_returns_the_signer_for_every_address_type() {
    let k = key();
    for kind in AddressType::ALL {
        let signed = sign_manifest(&vm(3), CLUSTER, &k, kind).unwrap();
        let signer = verify_manifest(&signed, CLUSTER).unwrap();
        assert_eq!(signer, k.address(kind).unwrap().to_string());
        // Still a valid object of its kind.
        AnyObject::from_value(signed).unwrap();
    }
}

#[test]
fn status_and_key_order_do_not_matter_content_does() {
    let k = key();
    let signed = sign_manifest(&vm(3), CLUSTER, &k, AddressType::P2wpkh).unwrap();
    let mut with_status = signed.clone();
    with_status["status"] = json!({"observedGeneration": 3});
    verify_manifest(&with_status, CLUSTER).unwrap();
    // Re-parsing from text with another key order gives the same payload.
    let reordered: Value =
        serde_json::from_str(&serde_json::to_string_pretty(&signed).unwrap()).unwrap();
    verify_manifest(&reordered, CLUSTER).unwrap();

    let mut altered = signed.clone();
    altered["spec"]["rules"][0]["role"] = json!("admin");
    assert!(matches!(
        verify_manifest(&altered, CLUSTER),
        Err(ManifestError::Invalid { .. })
    ));
    let mut relabelled = signed.clone();
    relabelled["metadata"]["labels"]["team"] = json!("b");
    assert!(verify_manifest(&relabelled, CLUSTER).is_err());
    let mut extra_annotation = signed.clone();
    extra_annotation["metadata"]["annotations"]["x"] = json!("y");
    assert!(verify_manifest(&extra_annotation, CLUSTER).is_err());
}

#[test]
fn raw_and_model_normalised_forms_sign_alike() {
    // What a user writes (explicit empty list) and what the store keeps
    // after the model round trip (list dropped) carry the same signature.
    let raw = json!({
        "apiVersion": "deorch.dev/v1alpha1",
        "kind": "AccessPolicy",
        "metadata": {"name": "ops", "generation": 2},
        "spec": {"rules": [{"subjects": ["1BgGZ9tcN4rm9KBzDn7KprQz87SZ26SAMH"], "role": "viewer", "kinds": []}]},
    });
    let k = key();
    let signed_raw = sign_manifest(&raw, CLUSTER, &k, AddressType::P2pkh).unwrap();
    let stored = AnyObject::from_value(signed_raw.clone())
        .unwrap()
        .to_value();
    assert_ne!(stored, signed_raw, "the model round trip changes the JSON");
    verify_manifest(&stored, CLUSTER).unwrap();
    verify_manifest(&signed_raw, CLUSTER).unwrap();
}

#[test]
fn replay_into_another_cluster_or_generation_is_refused() {
    let k = key();
    let signed = sign_manifest(&vm(3), CLUSTER, &k, AddressType::P2wpkh).unwrap();
    assert!(matches!(
        verify_manifest(&signed, "bc1qanother-cluster"),
        Err(ManifestError::Invalid { .. })
    ));
    // Same content presented as another generation (replay of an old
    // document as new, or rollback): the signature no longer verifies.
    for g in [2, 4] {
        let mut moved = signed.clone();
        moved["metadata"]["generation"] = json!(g);
        assert!(verify_manifest(&moved, CLUSTER).is_err(), "generation {g}");
    }
}

#[test]
fn forged_and_unsigned_documents_are_refused() {
    let k = key();
    let mallory = key();
    let signed = sign_manifest(&vm(3), CLUSTER, &k, AddressType::P2wpkh).unwrap();
    // Claiming someone else's address with one's own signature.
    let mut forged = sign_manifest(&vm(3), CLUSTER, &mallory, AddressType::P2wpkh).unwrap();
    forged["metadata"]["annotations"][SIGNER_ANNOTATION] =
        signed["metadata"]["annotations"][SIGNER_ANNOTATION].clone();
    assert!(verify_manifest(&forged, CLUSTER).is_err());
    let mut unsigned = signed.clone();
    unsigned["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove(SIGNATURE_ANNOTATION);
    assert!(matches!(
        verify_manifest(&unsigned, CLUSTER),
        Err(ManifestError::Unsigned(_))
    ));
    assert!(matches!(
        verify_manifest(&vm(3), CLUSTER),
        Err(ManifestError::Unsigned(_))
    ));
    let mut no_gen = vm(3);
    no_gen["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("generation");
    assert!(matches!(
        sign_manifest(&no_gen, CLUSTER, &k, AddressType::P2wpkh),
        Err(ManifestError::NoGeneration)
    ));
}

#[test]
fn payload_is_the_documented_canonical_form() {
    let obj = json!({"kind": "X", "metadata": {"generation": 7, "name": "n",
        "annotations": {"deorch.dev/signer": "a", "deorch.dev/signature": "s"}},
        "status": {"x": 1}, "spec": {"b": 1, "a": [true, "é"]}});
    assert_eq!(
        signing_payload(&obj, "C").unwrap(),
        r#"{"cluster":"C","generation":7,"object":{"kind":"X","metadata":{"generation":7,"name":"n"},"spec":{"a":[true,"é"],"b":1}},"type":"deorch.dev/signed-manifest/v1"}"#
    );
}

fn policy(name: &str, generation: i64, rules: Vec<AccessRule>) -> Manifest<AccessPolicySpec> {
    let mut m = Manifest::new(
        name,
        AccessPolicySpec {
            rules,
            ..Default::default()
        },
    );
    m.metadata.generation = Some(generation);
    m
}

fn rule(subject: &str, role: Role) -> AccessRule {
    AccessRule {
        subjects: vec![subject.to_string()],
        role: Some(role),
        ..Default::default()
    }
}

fn signed_policy(p: &Manifest<AccessPolicySpec>, k: &PrivateKey) -> Manifest<AccessPolicySpec> {
    let v = sign_manifest(
        &serde_json::to_value(p).unwrap(),
        CLUSTER,
        k,
        AddressType::P2wpkh,
    )
    .unwrap();
    serde_json::from_value(v).unwrap()
}

fn addr(k: &PrivateKey) -> String {
    k.address(AddressType::P2wpkh).unwrap().to_string()
}

#[test]
fn trust_chain_owner_then_admins_named_by_owner_only() {
    let (owner, admin, op, mallory, viewer, deputy) = (key(), key(), key(), key(), key(), key());
    let owner_policy = signed_policy(
        &policy(
            "root",
            1,
            vec![
                rule(&addr(&admin), Role::Admin),
                rule(&addr(&op), Role::Operator),
            ],
        ),
        &owner,
    );
    let by_admin = signed_policy(
        &policy(
            "team",
            1,
            vec![
                rule(&addr(&viewer), Role::Viewer),
                rule(&addr(&deputy), Role::Admin),
            ],
        ),
        &admin,
    );
    // deputy is admin only through an admin-signed policy: deputy's own
    // policies do not count (trust is one level deep, no chains).
    let by_deputy = signed_policy(
        &policy("chain", 1, vec![rule(&addr(&mallory), Role::Admin)]),
        &deputy,
    );
    // mallory names himself admin.
    let by_mallory = signed_policy(
        &policy("evil", 1, vec![rule(&addr(&mallory), Role::Admin)]),
        &mallory,
    );
    // An operator cannot write policies.
    let by_op = signed_policy(&policy("op", 1, vec![rule(&addr(&op), Role::Admin)]), &op);
    // Owner-signed for another cluster.
    let elsewhere = {
        let v = sign_manifest(
            &serde_json::to_value(policy("other", 1, vec![rule(&addr(&mallory), Role::Admin)]))
                .unwrap(),
            "bc1qother",
            &owner,
            AddressType::P2wpkh,
        )
        .unwrap();
        serde_json::from_value(v).unwrap()
    };
    let unsigned = policy("plain", 1, vec![rule(&addr(&mallory), Role::Admin)]);

    // Order must not matter: put the untrusted ones first.
    let all = vec![
        by_mallory,
        by_deputy,
        by_op,
        elsewhere,
        unsigned,
        by_admin,
        owner_policy,
    ];
    let report = trusted_policies(&all, CLUSTER, &addr(&owner));
    let names: Vec<_> = report
        .trusted
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["root", "team"]);
    let rejected: Vec<_> = report.rejected.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(rejected.len(), 5, "{:?}", report.rejected);
    for n in ["evil", "chain", "op", "other", "plain"] {
        assert!(rejected.contains(&n), "{n} rejected: {:?}", report.rejected);
    }
    // The trusted set gives the viewer read access, the deputy admin
    // rights on requests, mallory nothing.
    assert!(authorize(
        &report.trusted,
        &addr(&deputy),
        Verb::Delete,
        Kind::AccessPolicy,
        ""
    )
    .is_allowed());
    assert!(authorize(
        &report.trusted,
        &addr(&viewer),
        Verb::Get,
        Kind::VirtualMachine,
        "default"
    )
    .is_allowed());
    assert!(!authorize(
        &report.trusted,
        &addr(&mallory),
        Verb::Get,
        Kind::VirtualMachine,
        "default"
    )
    .is_allowed());
}
