//! `authorize`: roles, filters, and denials that say which rule denied.

use deorch::identity::{authorize, Decision};
use deorch::model::access::{AccessRule, Level2, Role, Verb};
use deorch::model::{AccessPolicySpec, Kind, Manifest, TagSelector};

const ALICE: &str = "bc1qyjjkmdpu7metqt5r36jf872a34syws33s82q2j";
const BOB: &str = "1F3sAm6ZtwLAUnj7d38pGFxtP3RVEvtsbV";
const CAROL: &str = "3CwYaeWxhpXXiHue3ciQez1DLaTEAXcKa1";

fn policy(name: &str, rules: Vec<AccessRule>) -> Manifest<AccessPolicySpec> {
    Manifest::new(
        name,
        AccessPolicySpec {
            rules,
            ..Default::default()
        },
    )
}

fn role(subject: &str, role: Role) -> AccessRule {
    AccessRule {
        subjects: vec![subject.into()],
        role: Some(role),
        ..Default::default()
    }
}

const VERBS: [Verb; 7] = [
    Verb::Get,
    Verb::List,
    Verb::Apply,
    Verb::Delete,
    Verb::Console,
    Verb::Replicate,
    Verb::Relocate,
];

#[test]
fn roles() {
    let ps = [policy(
        "p",
        vec![
            role(ALICE, Role::Admin),
            role(BOB, Role::Operator),
            role(CAROL, Role::Viewer),
        ],
    )];
    for &kind in Kind::ALL {
        let ns = if kind.namespaced() { "default" } else { "" };
        for verb in VERBS {
            assert!(authorize(&ps, ALICE, verb, kind, ns).is_allowed());
            assert_eq!(
                authorize(&ps, BOB, verb, kind, ns).is_allowed(),
                kind != Kind::AccessPolicy,
                "operator {verb:?} {kind}"
            );
            assert_eq!(
                authorize(&ps, CAROL, verb, kind, ns).is_allowed(),
                matches!(verb, Verb::Get | Verb::List),
                "viewer {verb:?} {kind}"
            );
        }
    }
    // Not named anywhere.
    let d = authorize(
        &ps,
        "1BgGZ9tcN4rm9KBzDn7KprQz87SZ26SAMH",
        Verb::Get,
        Kind::Network,
        "default",
    );
    match d {
        Decision::Deny { reason, misses } => {
            assert!(misses.is_empty());
            assert!(
                reason.contains("not a subject of any access policy rule"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn allow_names_the_rule_and_bech32_case_is_ignored() {
    let ps = [
        policy("first", vec![role(BOB, Role::Viewer)]),
        policy(
            "second",
            vec![
                role(BOB, Role::Viewer),
                role(&ALICE.to_uppercase(), Role::Operator),
            ],
        ),
    ];
    assert_eq!(
        authorize(&ps, ALICE, Verb::Apply, Kind::VirtualMachine, "default"),
        Decision::Allow {
            policy: "second".into(),
            rule: 1,
            level2: false
        }
    );
}

#[test]
fn verb_kind_namespace_filters_and_denial_reasons() {
    let rule = AccessRule {
        subjects: vec![ALICE.into()],
        verbs: vec![Verb::Get, Verb::Console],
        kinds: vec!["VirtualMachine".into(), "networks".into()],
        namespaces: vec!["prod".into()],
        ..Default::default()
    };
    let ps = [policy("consoles", vec![rule])];
    assert!(authorize(&ps, ALICE, Verb::Console, Kind::VirtualMachine, "prod").is_allowed());
    assert!(authorize(&ps, ALICE, Verb::Get, Kind::Network, "prod").is_allowed());
    let why = |verb, kind, ns| match authorize(&ps, ALICE, verb, kind, ns) {
        Decision::Deny { reason, misses } => {
            assert_eq!(misses.len(), 1);
            assert_eq!((misses[0].policy.as_str(), misses[0].rule), ("consoles", 0));
            assert!(reason.contains("policy consoles rule 0"), "{reason}");
            misses[0].why.clone()
        }
        other => panic!("{other:?}"),
    };
    assert!(why(Verb::Delete, Kind::VirtualMachine, "prod")
        .contains("verb delete is not in [get, console]"));
    assert!(why(Verb::Get, Kind::Dataset, "prod").contains("kind Dataset is not in"));
    assert!(
        why(Verb::Get, Kind::VirtualMachine, "dev").contains("namespace \"dev\" is not in [prod]")
    );
    // Namespace-limited rules never reach cluster-scoped kinds.
    let ps2 = [policy(
        "ns-admin",
        vec![AccessRule {
            namespaces: vec!["prod".into()],
            ..role(BOB, Role::Admin)
        }],
    )];
    assert!(authorize(&ps2, BOB, Verb::Apply, Kind::VirtualMachine, "prod").is_allowed());
    assert!(!authorize(&ps2, BOB, Verb::Apply, Kind::AccessPolicy, "").is_allowed());
    assert!(!authorize(&ps2, BOB, Verb::Apply, Kind::Satellite, "").is_allowed());
}

#[test]
fn tags_fail_closed_and_invalid_rules_never_match() {
    let tagged = AccessRule {
        tags: Some(TagSelector::default()),
        ..role(ALICE, Role::Admin)
    };
    let both = AccessRule {
        verbs: vec![Verb::All],
        ..role(BOB, Role::Admin)
    };
    let neither = AccessRule {
        subjects: vec![CAROL.into()],
        ..Default::default()
    };
    let ps = [policy("p", vec![tagged, both, neither])];
    for (who, needle) in [
        (ALICE, "tags"),
        (BOB, "exactly one of role and verbs"),
        (CAROL, "exactly one of role and verbs"),
    ] {
        match authorize(&ps, who, Verb::Get, Kind::VirtualMachine, "default") {
            Decision::Deny { reason, .. } => assert!(reason.contains(needle), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_rule_without_level2_wins_over_one_with() {
    let l2 = AccessRule {
        level2: Some(Level2::default()),
        ..role(ALICE, Role::Admin)
    };
    let ps = [
        policy("strict", vec![l2.clone()]),
        policy("plain", vec![role(ALICE, Role::Viewer)]),
    ];
    assert_eq!(
        authorize(&ps, ALICE, Verb::Get, Kind::VirtualMachine, "default"),
        Decision::Allow {
            policy: "plain".into(),
            rule: 0,
            level2: false
        }
    );
    assert_eq!(
        authorize(&ps, ALICE, Verb::Delete, Kind::VirtualMachine, "default"),
        Decision::Allow {
            policy: "strict".into(),
            rule: 0,
            level2: true
        }
    );
    let wildcard = [policy(
        "w",
        vec![AccessRule {
            subjects: vec![BOB.into()],
            verbs: vec![Verb::All],
            kinds: vec!["*".into()],
            ..Default::default()
        }],
    )];
    assert!(authorize(&wildcard, BOB, Verb::Relocate, Kind::VirtualMachine, "x").is_allowed());
}
