//! `AccessPolicy` evaluation and the policy trust chain.
//!
//! [`authorize`] is the one evaluation function: a request (subject
//! address, verb, kind, namespace) is allowed when some rule of some policy
//! allows it; otherwise the denial lists, for every rule naming the
//! subject, why it did not apply. Rules only allow: there are no deny rules.
//!
//! Roles: `admin` = every verb on every kind; `operator` = every verb on
//! every kind except `AccessPolicy`; `viewer` = `get` and `list` only (not
//! `console`: a console is write access to the guest). A rule's `kinds`
//! and `namespaces` filters narrow roles and verbs alike; empty = all. A
//! rule with `namespaces` never matches cluster-scoped kinds. A rule with
//! `tags` applies only to objects placed on satellites matching them
//! ([`authorize_on`]: a VirtualMachine whose placement selector is at
//! least as strict, a Satellite whose tags match); without an object it
//! never matches (fail closed). A rule
//! with both or neither of `role` and `verbs` is invalid and never matches.
//!
//! [`trusted_policies`] decides which signed policies count: those signed
//! by the cluster owner, then those signed by an address the *owner's*
//! policies allow to `apply` `AccessPolicy` (i.e. an admin). Trust is one
//! level deep: an admin-signed policy cannot make further admins whose
//! policies count, so there are no chains and no cycles. The owner is
//! the configured one (the cluster ID) unless a policy carries a valid
//! `ownerHandOver` chain ([`effective_owner`]); then policies signed by
//! the new owner count and those signed by earlier owners do not.

use serde::{Deserialize, Serialize};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

use crate::model::access::{AccessRule, Role, Verb};
use crate::model::{AccessPolicySpec, Kind, Manifest, TagSelector};

use super::address::Address;
use super::signed::verify_manifest;

/// The outcome of [`authorize`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Decision {
    /// Allowed by this rule.
    Allow {
        /// Policy name.
        policy: String,
        /// Index of the rule in `spec.rules`.
        rule: usize,
        /// The rule requires a level-2 (directory password) check.
        level2: bool,
    },
    /// Denied.
    Deny {
        /// One sentence for the user.
        reason: String,
        /// Every rule naming the subject, with why it did not allow.
        misses: Vec<RuleMiss>,
    },
}

impl Decision {
    /// Whether the request is allowed (possibly subject to level 2).
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// A rule that names the subject but did not allow the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleMiss {
    /// Policy name.
    pub policy: String,
    /// Index of the rule in `spec.rules`.
    pub rule: usize,
    /// Why it did not apply.
    pub why: String,
}

/// Whether a rule of `policies` names `subject`.
pub fn names_subject(policies: &[Manifest<AccessPolicySpec>], subject: &str) -> bool {
    policies
        .iter()
        .flat_map(|p| &p.spec.rules)
        .flat_map(|r| &r.subjects)
        .any(|s| same_address(s, subject))
}

/// Two address strings name the same address (bech32 is case-insensitive);
/// unparsable strings compare exactly.
pub fn same_address(a: &str, b: &str) -> bool {
    match (Address::parse(a), Address::parse(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

fn verb_name(v: Verb) -> &'static str {
    match v {
        Verb::Get => "get",
        Verb::List => "list",
        Verb::Apply => "apply",
        Verb::Delete => "delete",
        Verb::Console => "console",
        Verb::Replicate => "replicate",
        Verb::Relocate => "relocate",
        Verb::All => "*",
    }
}

/// Whether `expr`, a requirement of a rule's selector, is implied by the
/// VM's selector `vm` (every label set `vm` admits satisfies `expr`).
fn implies_expr(vm: &LabelSelector, key: &str, op: &str, values: &[String]) -> bool {
    let labels = vm.match_labels.as_ref();
    let exprs = vm.match_expressions.as_deref().unwrap_or(&[]);
    let pinned = labels.and_then(|l| l.get(key));
    match op {
        "In" => {
            pinned.is_some_and(|v| values.contains(v))
                || exprs.iter().any(|e| {
                    e.key == key
                        && e.operator == "In"
                        && e.values.as_ref().is_some_and(|vs| {
                            !vs.is_empty() && vs.iter().all(|v| values.contains(v))
                        })
                })
        }
        "Exists" => {
            pinned.is_some()
                || exprs
                    .iter()
                    .any(|e| e.key == key && (e.operator == "Exists" || e.operator == "In"))
        }
        "NotIn" => {
            pinned.is_some_and(|v| !values.contains(v))
                || exprs.iter().any(|e| {
                    e.key == key
                        && ((e.operator == "NotIn"
                            && values
                                .iter()
                                .all(|v| e.values.as_ref().is_some_and(|vs| vs.contains(v))))
                            || (e.operator == "In"
                                && e.values
                                    .as_ref()
                                    .is_some_and(|vs| vs.iter().all(|v| !values.contains(v))))
                            || e.operator == "DoesNotExist")
                })
        }
        "DoesNotExist" => exprs
            .iter()
            .any(|e| e.key == key && e.operator == "DoesNotExist"),
        _ => false,
    }
}

/// Whether every satellite `vm_sel` lets a VM run on matches `rule_sel`.
fn selector_implies(vm_sel: Option<&LabelSelector>, rule_sel: &LabelSelector) -> bool {
    let empty = LabelSelector::default();
    let vm = vm_sel.unwrap_or(&empty);
    rule_sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| implies_expr(vm, k, "In", std::slice::from_ref(v)))
        && rule_sel
            .match_expressions
            .iter()
            .flatten()
            .all(|e| implies_expr(vm, &e.key, &e.operator, e.values.as_deref().unwrap_or(&[])))
}

/// Whether `object` is placed on satellites matching `tags`: a
/// VirtualMachine whose own placement selector is at least as strict (it
/// can only be elected onto matching satellites), or a Satellite whose
/// tags match. Anything else is not scoped by tags: the rule does not
/// apply to it.
fn within_tags(tags: &TagSelector, kind: Kind, object: &Value) -> bool {
    match kind {
        Kind::VirtualMachine => {
            let sel: Option<TagSelector> = object
                .pointer("/spec/placement/selector")
                .and_then(|s| serde_json::from_value(s.clone()).ok());
            let sel = sel.unwrap_or_default();
            [
                (&tags.microcosm, &sel.microcosm),
                (&tags.macrocosm, &sel.macrocosm),
                (&tags.intercosm, &sel.intercosm),
            ]
            .iter()
            .all(|(rule, vm)| {
                rule.as_ref()
                    .is_none_or(|r| selector_implies(vm.as_ref(), r))
            })
        }
        Kind::Satellite => {
            let t: crate::model::Tags = object
                .pointer("/spec/tags")
                .and_then(|s| serde_json::from_value(s.clone()).ok())
                .unwrap_or_default();
            crate::gossip::placement::tags_match(tags, &crate::gossip::TagSet::from(&t))
        }
        _ => false,
    }
}

/// Why `rule` does not allow (verb, kind, namespace) on `objects` (the
/// new and the stored version, where known), or `None` if it does.
fn rule_miss(
    rule: &AccessRule,
    verb: Verb,
    kind: Kind,
    namespace: &str,
    objects: &[&Value],
) -> Option<String> {
    if let Some(tags) = &rule.tags {
        if objects.is_empty() {
            return Some(
                "rule is scoped by tags and the request names no object placed by tags".into(),
            );
        }
        if !objects.iter().all(|o| within_tags(tags, kind, o)) {
            return Some(format!(
                "rule is scoped by tags: this {kind} is not placed only on satellites matching them (a VirtualMachine's placement.selector must be at least as strict)"
            ));
        }
    }
    match (&rule.role, rule.verbs.is_empty()) {
        (Some(_), false) | (None, true) => {
            return Some("invalid rule: it must set exactly one of role and verbs".into())
        }
        (Some(Role::Admin), true) => {}
        (Some(Role::Operator), true) => {
            if kind == Kind::AccessPolicy {
                return Some("role operator does not cover AccessPolicy objects".into());
            }
        }
        (Some(Role::Viewer), true) => {
            if !matches!(verb, Verb::Get | Verb::List) {
                return Some(format!(
                    "role viewer allows get and list, not {}",
                    verb_name(verb)
                ));
            }
        }
        (None, false) => {
            if !rule.verbs.iter().any(|v| *v == Verb::All || *v == verb) {
                let list: Vec<_> = rule.verbs.iter().map(|v| verb_name(*v)).collect();
                return Some(format!(
                    "verb {} is not in [{}]",
                    verb_name(verb),
                    list.join(", ")
                ));
            }
        }
    }
    if !rule.kinds.is_empty()
        && !rule.kinds.iter().any(|k| {
            k == "*"
                || k.eq_ignore_ascii_case(kind.as_str())
                || k.eq_ignore_ascii_case(kind.plural())
        })
    {
        return Some(format!(
            "kind {} is not in [{}]",
            kind,
            rule.kinds.join(", ")
        ));
    }
    if !rule.namespaces.is_empty() {
        if !kind.namespaced() {
            return Some(format!(
                "rule is limited to namespaces [{}]; {} is cluster-scoped",
                rule.namespaces.join(", "),
                kind
            ));
        }
        if !rule.namespaces.iter().any(|n| n == "*" || n == namespace) {
            return Some(format!(
                "namespace {namespace:?} is not in [{}]",
                rule.namespaces.join(", ")
            ));
        }
    }
    None
}

/// Decide whether `subject` may `verb` objects of `kind` in `namespace`
/// (`""` for cluster-scoped kinds). Pure. A rule without a level-2
/// requirement wins over one with; the first allowing rule (policies in
/// the given order, rules in order) is reported.
pub fn authorize(
    policies: &[Manifest<AccessPolicySpec>],
    subject: &str,
    verb: Verb,
    kind: Kind,
    namespace: &str,
) -> Decision {
    authorize_on(policies, subject, verb, kind, namespace, &[])
}

/// [`authorize`] for a request on particular objects (the new and the
/// stored version of what is applied or deleted, the object read): rules
/// scoped by `tags` apply only when every one is placed on matching
/// satellites.
pub fn authorize_on(
    policies: &[Manifest<AccessPolicySpec>],
    subject: &str,
    verb: Verb,
    kind: Kind,
    namespace: &str,
    objects: &[&Value],
) -> Decision {
    let mut misses = Vec::new();
    let mut level2_allow = None;
    for p in policies {
        let policy = p.metadata.name.clone().unwrap_or_default();
        for (i, rule) in p.spec.rules.iter().enumerate() {
            if !rule.subjects.iter().any(|s| same_address(s, subject)) {
                continue;
            }
            match rule_miss(rule, verb, kind, namespace, objects) {
                None if rule.level2.is_none() => {
                    return Decision::Allow {
                        policy,
                        rule: i,
                        level2: false,
                    }
                }
                None => {
                    level2_allow.get_or_insert(Decision::Allow {
                        policy: policy.clone(),
                        rule: i,
                        level2: true,
                    });
                }
                Some(why) => misses.push(RuleMiss {
                    policy: policy.clone(),
                    rule: i,
                    why,
                }),
            }
        }
    }
    if let Some(allow) = level2_allow {
        return allow;
    }
    let what = format!("{} {} in {:?}", verb_name(verb), kind, namespace);
    let reason = match misses.as_slice() {
        [] => format!("{subject} is not a subject of any access policy rule (request: {what})"),
        [m] => format!(
            "denied {what} to {subject}: policy {} rule {}: {}",
            m.policy, m.rule, m.why
        ),
        ms => format!(
            "denied {what} to {subject}: none of {} rules naming it applies ({})",
            ms.len(),
            ms.iter()
                .map(|m| format!("policy {} rule {}: {}", m.policy, m.rule, m.why))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    };
    Decision::Deny { reason, misses }
}

/// Why a signed document may not be applied ([`verify_signed`],
/// [`authorize_signer`]; `crate::admission` runs both for every source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Short code: `Unsigned`, `NoGeneration`, `BadSignature`,
    /// `Level2Required` or `Denied`.
    pub code: &'static str,
    /// One sentence for the user.
    pub reason: String,
    /// For `Denied`: every rule naming the signer and why it did not allow.
    pub misses: Vec<RuleMiss>,
}

/// Verify a signed document for `cluster`: its signer, or why not
/// (`Unsigned`, `NoGeneration`, `BadSignature`).
pub fn verify_signed(doc: &serde_json::Value, cluster: &str) -> Result<String, Refused> {
    use super::signed::ManifestError;
    verify_manifest(doc, cluster).map_err(|e| {
        let code = match e {
            ManifestError::Unsigned(_) => "Unsigned",
            ManifestError::NoGeneration => "NoGeneration",
            _ => "BadSignature",
        };
        Refused {
            code,
            reason: e.to_string(),
            misses: Vec::new(),
        }
    })
}

/// Whether a verified `signer` may `verb` this kind in this namespace: the
/// cluster `owner` always may, anyone else by the `trusted` policies, and
/// not by a rule that needs a level-2 password check (a signature cannot
/// give one): `Level2Required` or `Denied` otherwise.
pub fn authorize_signer(
    signer: &str,
    verb: Verb,
    kind: Kind,
    namespace: &str,
    owner: &str,
    trusted: &[Manifest<AccessPolicySpec>],
    objects: &[&Value],
) -> Result<(), Refused> {
    if same_address(signer, owner) {
        return Ok(());
    }
    match authorize_on(trusted, signer, verb, kind, namespace, objects) {
        Decision::Allow { level2: false, .. } => Ok(()),
        Decision::Allow { policy, rule, .. } => Err(Refused {
            code: "Level2Required",
            reason: format!("policy {policy} rule {rule} allows {signer} only with a level-2 password check, which a signature cannot give"),
            misses: Vec::new(),
        }),
        Decision::Deny { reason, misses } => Err(Refused {
            code: "Denied",
            reason,
            misses,
        }),
    }
}

/// The text an owner signs (a Bitcoin signed message, so a wallet can)
/// to hand the cluster over to `to`.
pub fn hand_over_message(cluster: &str, from: &str, to: &str) -> String {
    format!("deorch owner hand-over\ncluster: {cluster}\nfrom: {from}\nto: {to}")
}

/// The cluster's owner now: `configured` (the cluster ID), followed along
/// the `ownerHandOver` chains the policies carry, each step signed by the
/// owner before it. Every chain is checked from the start and kept up to
/// its first bad step; the owner is the end of the longest, when all the
/// others are its prefixes. Chains that diverge (an owner signed two
/// hand-overs) stop at their last common owner: a fork is reported, never
/// resolved in favour of either branch. Returns the owner and the
/// problems found.
pub fn effective_owner(
    policies: &[Manifest<AccessPolicySpec>],
    cluster: &str,
    configured: &str,
) -> (String, Vec<String>) {
    let mut problems = Vec::new();
    let mut chains: Vec<Vec<String>> = Vec::new();
    for p in policies
        .iter()
        .filter(|p| !p.spec.owner_hand_over.is_empty())
    {
        let name = p.metadata.name.clone().unwrap_or_default();
        let mut chain = Vec::new();
        let mut from = configured.to_string();
        for (i, step) in p.spec.owner_hand_over.iter().enumerate() {
            let msg = hand_over_message(cluster, &from, &step.to);
            if let Err(e) = super::verify(&from, &step.signature, msg.as_bytes()) {
                problems.push(format!(
                    "policy {name}: ownerHandOver[{i}] (to {}) is not signed by {from}: {e}",
                    step.to
                ));
                break;
            }
            chain.push(step.to.clone());
            from = step.to.clone();
        }
        if !chain.is_empty() {
            chains.push(chain);
        }
    }
    chains.sort_by_key(|c| std::cmp::Reverse(c.len()));
    let Some(longest) = chains.first().cloned() else {
        return (configured.to_string(), problems);
    };
    let mut agreed = longest.len();
    for c in &chains[1..] {
        let common = c
            .iter()
            .zip(&longest)
            .take_while(|(a, b)| same_address(a, b))
            .count();
        if common < c.len() {
            problems.push(format!(
                "ownership forked: {} handed the cluster to both {} and {}; the owner stays {}",
                if common == 0 {
                    configured
                } else {
                    &longest[common - 1]
                },
                c[common],
                longest[common],
                if common == 0 {
                    configured
                } else {
                    &longest[common - 1]
                },
            ));
            agreed = agreed.min(common);
        }
    }
    let owner = if agreed == 0 {
        configured.to_string()
    } else {
        longest[agreed - 1].clone()
    };
    (owner, problems)
}

/// The result of [`trusted_policies`].
#[derive(Debug, Clone, Default)]
pub struct TrustReport {
    /// The owner now ([`effective_owner`]).
    pub owner: String,
    /// Policies that count, owner-signed first.
    pub trusted: Vec<Manifest<AccessPolicySpec>>,
    /// (policy name, why it does not count).
    pub rejected: Vec<(String, String)>,
}

/// Filter signed policies down to those that count in `cluster` whose
/// owner (trust anchor) is `owner`; see the module doc for the rule.
pub fn trusted_policies(
    policies: &[Manifest<AccessPolicySpec>],
    cluster: &str,
    configured_owner: &str,
) -> TrustReport {
    let (owner, problems) = effective_owner(policies, cluster, configured_owner);
    let owner = owner.as_str();
    let mut report = TrustReport {
        owner: owner.to_string(),
        ..TrustReport::default()
    };
    report
        .rejected
        .extend(problems.into_iter().map(|p| (String::new(), p)));
    let mut by_others = Vec::new();
    for p in policies {
        let name = p.metadata.name.clone().unwrap_or_default();
        let value = match serde_json::to_value(p) {
            Ok(v) => v,
            Err(e) => {
                report
                    .rejected
                    .push((name, format!("cannot serialize: {e}")));
                continue;
            }
        };
        match verify_manifest(&value, cluster) {
            Ok(signer) if same_address(&signer, owner) => report.trusted.push(p.clone()),
            Ok(signer) => by_others.push((p, signer)),
            Err(e) => report.rejected.push((name, e.to_string())),
        }
    }
    let owner_policies = report.trusted.clone();
    for (p, signer) in by_others {
        let name = p.metadata.name.clone().unwrap_or_default();
        match authorize(&owner_policies, &signer, Verb::Apply, Kind::AccessPolicy, "") {
            Decision::Allow { level2: false, .. } => report.trusted.push(p.clone()),
            Decision::Allow { level2: true, .. } => report.rejected.push((
                name,
                format!("signer {signer} is an admin only with a level-2 check, which a signature cannot give"),
            )),
            Decision::Deny { reason, .. } => report.rejected.push((
                name,
                format!("signer {signer} is neither the owner nor an admin of the owner's policies: {reason}"),
            )),
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{sign, AddressType, Network, PrivateKey};
    use crate::model::access::OwnerHandOver;

    fn key() -> (PrivateKey, String) {
        let k = PrivateKey::generate(Network::Mainnet);
        let a = k.address(AddressType::P2wpkh).unwrap().to_string();
        (k, a)
    }

    fn step(from: &PrivateKey, from_addr: &str, to: &str) -> OwnerHandOver {
        let msg = hand_over_message("C", from_addr, to);
        OwnerHandOver {
            to: to.into(),
            signature: sign(from, msg.as_bytes(), AddressType::P2wpkh).unwrap(),
        }
    }

    fn policy(name: &str, chain: Vec<OwnerHandOver>) -> Manifest<AccessPolicySpec> {
        Manifest::new(
            name,
            AccessPolicySpec {
                owner_hand_over: chain,
                ..Default::default()
            },
        )
    }

    #[test]
    fn ownership_follows_valid_chains_and_stops_at_forks_and_bad_steps() {
        let (k0, a0) = key();
        let (k1, a1) = key();
        let (_, a2) = key();
        let (_, a3) = key();
        // No chain: the configured owner.
        assert_eq!(effective_owner(&[], "C", &a0).0, a0);
        // 0 → 1 → 2.
        let chain = vec![step(&k0, &a0, &a1), step(&k1, &a1, &a2)];
        let (o, problems) = effective_owner(&[policy("p", chain.clone())], "C", &a0);
        assert_eq!((o.as_str(), problems.len()), (a2.as_str(), 0));
        // A prefix of it elsewhere agrees.
        let (o, _) = effective_owner(
            &[policy("p", chain.clone()), policy("q", chain[..1].to_vec())],
            "C",
            &a0,
        );
        assert_eq!(o, a2);
        // 1 also handed over to 3: a fork after 1; the owner stays 1.
        let fork = vec![step(&k0, &a0, &a1), step(&k1, &a1, &a3)];
        let (o, problems) =
            effective_owner(&[policy("p", chain.clone()), policy("q", fork)], "C", &a0);
        assert_eq!(o, a1);
        assert!(problems[0].contains("forked"), "{problems:?}");
        // A step not signed by the owner before it counts for nothing
        // from there on.
        let forged = vec![step(&k1, &a0, &a3)];
        let (o, problems) = effective_owner(&[policy("p", forged)], "C", &a0);
        assert_eq!(o, a0);
        assert!(problems[0].contains("not signed by"), "{problems:?}");
        // Another cluster's hand-over does not apply here.
        let msg = hand_over_message("D", &a0, &a1);
        let other = vec![OwnerHandOver {
            to: a1.clone(),
            signature: sign(&k0, msg.as_bytes(), AddressType::P2wpkh).unwrap(),
        }];
        assert_eq!(effective_owner(&[policy("p", other)], "C", &a0).0, a0);
    }

    #[test]
    fn tag_rules_apply_to_objects_placed_by_those_tags_only() {
        let (_, user) = key();
        let rule: crate::model::access::AccessRule = serde_json::from_value(serde_json::json!({
            "subjects": [user],
            "role": "operator",
            "tags": {"microcosm": {"matchLabels": {"rack": "r1"}}}
        }))
        .unwrap();
        let p = Manifest::new(
            "racks",
            AccessPolicySpec {
                rules: vec![rule],
                ..Default::default()
            },
        );
        let vm = |sel: serde_json::Value| serde_json::json!({"kind": "VirtualMachine", "spec": {"placement": {"selector": sel}}});
        let ok = |o: &serde_json::Value, kind| {
            authorize_on(
                std::slice::from_ref(&p),
                &user,
                Verb::Apply,
                kind,
                "default",
                &[o],
            )
            .is_allowed()
        };
        assert!(ok(
            &vm(serde_json::json!({"microcosm": {"matchLabels": {"rack": "r1", "row": "a"}}})),
            Kind::VirtualMachine
        ));
        assert!(ok(
            &vm(
                serde_json::json!({"microcosm": {"matchExpressions": [{"key": "rack", "operator": "In", "values": ["r1"]}]}})
            ),
            Kind::VirtualMachine
        ));
        // Could land on r2, or anywhere: the rule does not apply.
        assert!(!ok(
            &vm(
                serde_json::json!({"microcosm": {"matchExpressions": [{"key": "rack", "operator": "In", "values": ["r1", "r2"]}]}})
            ),
            Kind::VirtualMachine
        ));
        assert!(!ok(
            &serde_json::json!({"kind": "VirtualMachine", "spec": {}}),
            Kind::VirtualMachine
        ));
        assert!(!ok(
            &vm(serde_json::json!({"macrocosm": {"matchLabels": {"rack": "r1"}}})),
            Kind::VirtualMachine
        ));
        // Without an object, fail closed; a Satellite by its own tags.
        assert!(!authorize(
            std::slice::from_ref(&p),
            &user,
            Verb::Apply,
            Kind::VirtualMachine,
            "default"
        )
        .is_allowed());
        let sat = |rack: &str| serde_json::json!({"kind": "Satellite", "spec": {"tags": {"microcosm": {"rack": rack}}}});
        assert!(ok(&sat("r1"), Kind::Satellite));
        assert!(!ok(&sat("r2"), Kind::Satellite));
        // Both versions must be within: moving a VM out of the rack is
        // not the rule's to allow.
        let inside = vm(serde_json::json!({"microcosm": {"matchLabels": {"rack": "r1"}}}));
        let outside = vm(serde_json::json!({}));
        assert!(!authorize_on(
            std::slice::from_ref(&p),
            &user,
            Verb::Apply,
            Kind::VirtualMachine,
            "default",
            &[&outside, &inside]
        )
        .is_allowed());
    }
}
