//! Admission: the one gate between every source of desired state and the
//! store.
//!
//! ```text
//! manifest dir ─┐
//! local API ────┤                  ┌ outside the store's lock ┐ ┌──────── one store transaction ────────┐
//! HTTP push ────┼─► Batch ─► parse ─► verify signature ─────────► authorise ─► generation ─► commit all
//! git commit ───┤   (source,         (cluster, canonical form)   (owner,       (signed: above   or nothing
//! gossip ───────┤    trust)                                       trusted       the stored one)
//! replica sched ┘                                                 policies)
//! ```
//!
//! Every source hands its documents to [`Admission::admit`] as a
//! [`Batch`]; nothing else writes desired state. The rule is the same for
//! every source:
//!
//! - A document that **carries a signature** is verified for the cluster
//!   and its signer authorised by AccessPolicy ([`authorize_signer`]: the
//!   owner always, anyone else by the trusted policies, never by a rule
//!   that needs a level-2 password check), whatever the source: a tampered
//!   or stranger-signed file is refused even from the manifest directory.
//!   It is stored at the generation its author signed, which must be above
//!   the stored one (identical content is `Unchanged`), so the stored copy
//!   keeps verifying and can be gossiped, and a replay or rollback is
//!   `Stale`.
//! - An **unsigned** document is accepted only from a source whose
//!   [`Trust`] allows it: node-local sources reached only by root (the
//!   manifest directory, the local API over its 0600 socket, the node's
//!   own replica schedule), and the modes an operator chose explicitly
//!   (`--git-unsigned`, `--gossip-verify unsigned`). It gets the next
//!   generation.
//! - **Deletions** named by a signed path (gossip tombstones) carry a
//!   signed tombstone manifest: verified, the `delete` verb authorised, at
//!   a generation above the stored one. A declarative source (a file, a
//!   git commit) deletes only objects it declared itself and no longer
//!   declares; absence carries no signature (docs/SIGNING.md).
//! - **Trusted policies** ([`trusted_policies`]) are computed in one
//!   place, under the store's lock: the stored AccessPolicies with the
//!   batch's own overlaid (a commit's policies count for that commit).
//!
//! A batch is all or nothing: if any document is refused, nothing of the
//! batch is written and the others get [`Verdict::Withheld`]. The checks
//! that read the store and the commit run in one store transaction
//! ([`Store::transact`]), so another source writing at the same time can
//! never make half of a batch land. Every verdict is logged (refusals as
//! warnings, with source and object, never a signature) and recorded as a
//! store event whose reason is the verdict's code.
//!
//! Architecture invariant: sources never call the store's write methods;
//! they build batches, and this module alone decides.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::identity::access::{
    authorize_on, authorize_signer, same_address, trusted_policies, verify_signed, Decision,
    Refused, RuleMiss,
};
use crate::identity::signed::{SIGNATURE_ANNOTATION, SIGNER_ANNOTATION};
use crate::manifest::{self, Diagnostic};
use crate::model::access::Verb;
use crate::model::{AccessPolicySpec, AnyObject, Kind, Manifest, ObjectKey};
use crate::store::{Event, Record, SourceId, Store, StoreError, Txn};

/// Ownership of file-declared objects, the one rule: an object whose
/// stored version came from a manifest file of this node (`file:` source)
/// is changed or deleted only by a manifest file. The local API, a push,
/// a git source and the schedules are refused ([`Verdict::OwnedByFile`]),
/// naming the file; an identical copy is not a change and passes.
/// Gossip is not refused (a peer cannot know what this node's files
/// declare, and refusing would leave the cluster divided): a peer's change
/// or deletion is taken, and the file source re-asserts the file at its
/// next rescan, under a higher generation that wins everywhere
/// (`source::dir`, docs/ALGORITHMS.md).
fn owned_by_file(
    tx: &Txn<'_>,
    key: &ObjectKey,
    source: &SourceId,
    object: Option<&Value>,
) -> Option<String> {
    let may = source.0.starts_with("file:")
        || source.0 == crate::node::cluster::GOSSIP_SOURCE
        || source.0 == "node";
    if may {
        return None;
    }
    let stored = tx.get(key).filter(|r| !r.deleted)?;
    let file = stored.source.0.strip_prefix("file:")?;
    if object.is_some_and(|o| crate::store::content_hash(o) == stored.hash) {
        return None;
    }
    Some(file.to_string())
}

/// Whether a source's unsigned documents are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trust {
    /// Node-local and reached only by root (manifest directory, local
    /// API, the node's own schedules): unsigned documents are accepted.
    Local,
    /// Unsigned documents accepted because the operator chose so
    /// (`--git-unsigned`, `--gossip-verify unsigned`; logged at start).
    UnsignedByChoice,
    /// Every document and every named deletion must be signed (push,
    /// signed git, signed gossip).
    Signed,
}

/// The outcome for one document or named deletion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code")]
pub enum Verdict {
    /// Written at this generation.
    Applied {
        /// Generation now stored.
        generation: i64,
    },
    /// Identical to what the store holds; nothing written.
    Unchanged {
        /// Generation stored.
        generation: i64,
    },
    /// Tombstoned at this generation.
    Deleted {
        /// Tombstone generation.
        generation: i64,
    },
    /// A deletion of an object the store does not hold (live).
    Absent,
    /// The signed generation is not above the stored one (replay,
    /// rollback, or two versions signed with one number).
    Stale {
        /// The document's (signed) generation.
        generation: i64,
        /// The stored generation.
        stored: i64,
    },
    /// The signer may not do this (no rule allows it).
    Denied {
        /// Signer address.
        signer: String,
        /// Why, naming the rules that did not allow it.
        reason: String,
        /// Every rule naming the signer and why it did not allow.
        misses: Vec<RuleMiss>,
    },
    /// Only a rule with a level-2 (directory password) check allows it,
    /// which a signature cannot give.
    Level2Required {
        /// Signer address.
        signer: String,
        /// Which rule.
        reason: String,
    },
    /// The signature does not verify for this cluster (tampered, another
    /// cluster, malformed).
    BadSignature {
        /// Why.
        reason: String,
    },
    /// No signature, from a source that takes only signed documents.
    Unsigned {
        /// Why.
        reason: String,
    },
    /// Signed without `metadata.generation`.
    NoGeneration {
        /// Why.
        reason: String,
    },
    /// Not a valid manifest (known only for documents whose key is known
    /// without parsing them, e.g. gossip's).
    Invalid {
        /// Why.
        reason: String,
    },
    /// A manifest file of this node declares the object: only that file
    /// changes or deletes it (a change from elsewhere would be undone at
    /// the file's next rescan).
    OwnedByFile {
        /// The file.
        file: String,
    },
    /// The same object twice in one batch.
    Duplicate {
        /// Where it appeared first.
        first: String,
    },
    /// Acceptable, but another document of the batch was refused, so
    /// nothing of the batch was written.
    Withheld,
}

impl Verdict {
    /// The verdict's name, e.g. `Denied`: the HTTP `code`, the event reason.
    pub fn code(&self) -> &'static str {
        match self {
            Verdict::Applied { .. } => "Applied",
            Verdict::Unchanged { .. } => "Unchanged",
            Verdict::Deleted { .. } => "Deleted",
            Verdict::Absent => "Absent",
            Verdict::Stale { .. } => "Stale",
            Verdict::Denied { .. } => "Denied",
            Verdict::Level2Required { .. } => "Level2Required",
            Verdict::BadSignature { .. } => "BadSignature",
            Verdict::Unsigned { .. } => "Unsigned",
            Verdict::NoGeneration { .. } => "NoGeneration",
            Verdict::Invalid { .. } => "Invalid",
            Verdict::OwnedByFile { .. } => "OwnedByFile",
            Verdict::Duplicate { .. } => "Duplicate",
            Verdict::Withheld => "Withheld",
        }
    }

    /// Whether this document was refused (and so its batch).
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            Verdict::Applied { .. }
                | Verdict::Unchanged { .. }
                | Verdict::Deleted { .. }
                | Verdict::Absent
                | Verdict::Withheld
        )
    }

    /// One sentence for the user.
    pub fn reason(&self) -> String {
        match self {
            Verdict::Applied { generation } => format!("applied at generation {generation}"),
            Verdict::Unchanged { generation } => {
                format!("identical to the stored generation {generation}")
            }
            Verdict::Deleted { generation } => format!("deleted at generation {generation}"),
            Verdict::Absent => "not in the store".into(),
            Verdict::Stale { generation, stored } => format!(
                "signed generation {generation} is not above the stored {stored} (a rollback or replay); sign generation {} or higher",
                stored + 1
            ),
            Verdict::Denied { reason, .. }
            | Verdict::Level2Required { reason, .. }
            | Verdict::BadSignature { reason }
            | Verdict::Unsigned { reason }
            | Verdict::NoGeneration { reason }
            | Verdict::Invalid { reason } => reason.clone(),
            Verdict::OwnedByFile { file } => format!(
                "declared by the manifest file {file}: change or delete it there (the file would undo a change made here at its next rescan)"
            ),
            Verdict::Duplicate { first } => {
                format!("the same object appears twice in one batch (first at {first})")
            }
            Verdict::Withheld => {
                "acceptable, but another document of the batch was refused; nothing applied".into()
            }
        }
    }

    fn from_refused(r: Refused, signer: Option<&str>) -> Verdict {
        let signer = signer.unwrap_or_default().to_string();
        match r.code {
            "Unsigned" => Verdict::Unsigned { reason: r.reason },
            "NoGeneration" => Verdict::NoGeneration { reason: r.reason },
            "Level2Required" => Verdict::Level2Required {
                signer,
                reason: r.reason,
            },
            "Denied" => Verdict::Denied {
                signer,
                reason: r.reason,
                misses: r.misses,
            },
            _ => Verdict::BadSignature { reason: r.reason },
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code(), self.reason())
    }
}

/// One document of a batch.
#[derive(Debug, Clone)]
pub struct Doc {
    /// The object as parsed.
    pub object: AnyObject,
    /// Where it came from, for messages (`FILE:LINE`).
    pub at: String,
}

/// A deletion named by a source.
#[derive(Debug, Clone)]
pub struct Deletion {
    /// What to delete.
    pub key: ObjectKey,
    /// Where the request came from, for messages.
    pub at: String,
    /// The signed tombstone manifest (gossip's), if any: then the signer
    /// must be allowed `delete`, and its generation is the tombstone's.
    pub tombstone: Option<AnyObject>,
    /// Destroy the object's volumes at once instead of retaining them
    /// (`deorch delete --purge`).
    pub purge: bool,
}

/// The logged-in user a batch acts for (an HTTP API session): its
/// unsigned documents and deletions are authorised by AccessPolicy as this
/// address, as a signer's are; a rule that needs level 2 only if the
/// session passed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSubject {
    /// The session's address.
    pub address: String,
    /// The session passed a level-2 check at login.
    pub level2: bool,
}

/// The directory servers (in order) and the user name of a level-2 login.
pub type Level2Login = (Vec<crate::model::access::DirectoryServer>, String);

/// What a source hands to admission: all of it is written, or none.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Who writes (recorded on every object).
    pub source: SourceId,
    /// Whether unsigned documents are accepted.
    pub trust: Trust,
    /// Objects to apply.
    pub docs: Vec<Doc>,
    /// Deletions named explicitly.
    pub deletions: Vec<Deletion>,
    /// `Some(keep)`: the batch is this source's whole declared set:
    /// objects the source wrote before and `docs` no longer declare are
    /// deleted, except those in `keep` (declared by a sibling source now,
    /// e.g. a file renamed in the same moment).
    pub declared_set: Option<BTreeSet<ObjectKey>>,
    /// What the declared set drops is purged: its volumes are destroyed
    /// at once, not retained (a replica schedule's rotation is its policy).
    pub purge_dropped: bool,
    /// Parse problems: any refuses the batch.
    pub diagnostics: Vec<Diagnostic>,
    /// The session it acts for, if any.
    pub session: Option<SessionSubject>,
}

impl Batch {
    /// An empty batch from `source`.
    pub fn new(source: SourceId, trust: Trust) -> Batch {
        Batch {
            source,
            trust,
            docs: Vec::new(),
            deletions: Vec::new(),
            declared_set: None,
            purge_dropped: false,
            diagnostics: Vec::new(),
            session: None,
        }
    }

    /// Parse `text` (multi-document YAML, or JSON) named `name` with the
    /// one manifest parser and add its documents and problems.
    pub fn parse(&mut self, name: &str, text: &str) {
        let parsed = manifest::parse_str(Path::new(name), text);
        self.diagnostics.extend(parsed.diagnostics);
        self.docs.extend(parsed.documents.into_iter().map(|d| Doc {
            object: d.object,
            at: format!("{name}:{}", d.line),
        }));
    }

    /// Make this batch the source's whole declared set (see
    /// [`Batch::declared_set`]).
    pub fn declarative(mut self, keep: BTreeSet<ObjectKey>) -> Batch {
        self.declared_set = Some(keep);
        self
    }
}

/// The verdict on one document or named deletion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admitted {
    /// The object.
    pub key: ObjectKey,
    /// Where it came from (`FILE:LINE`).
    pub at: String,
    /// What admission decided.
    pub verdict: Verdict,
}

/// What [`Admission::admit`] decided for a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The batch was written (possibly with nothing changed).
    pub committed: bool,
    /// One per document, then one per named deletion, in order.
    pub verdicts: Vec<Admitted>,
    /// Objects a declarative batch deleted (its source no longer declares
    /// them), with their tombstone generation.
    pub deleted: Vec<(ObjectKey, i64)>,
    /// Parse problems (the batch was refused).
    pub diagnostics: Vec<Diagnostic>,
}

impl Outcome {
    /// The refused documents.
    pub fn refusals(&self) -> impl Iterator<Item = &Admitted> {
        self.verdicts.iter().filter(|a| a.verdict.is_refusal())
    }

    /// Objects written with a new generation.
    pub fn changed(&self) -> impl Iterator<Item = (&ObjectKey, i64)> {
        self.verdicts.iter().filter_map(|a| match a.verdict {
            Verdict::Applied { generation } => Some((&a.key, generation)),
            _ => None,
        })
    }

    /// Every problem, one line each: `AT: KIND/NS/NAME: CODE: why`, and
    /// the parser's `FILE:LINE:COL` diagnostics.
    pub fn problems(&self) -> Vec<String> {
        self.diagnostics
            .iter()
            .map(|d| d.to_string())
            .chain(
                self.refusals()
                    .map(|a| format!("{}: {}: {}", a.at, a.key, a.verdict)),
            )
            .collect()
    }
}

/// What admission needs to know about the cluster.
#[derive(Debug, Clone, Default)]
pub struct AdmissionConfig {
    /// The cluster id signatures are bound to (`--cluster-owner`, else
    /// gossip's `--cluster`). `None`: no signed document can be accepted.
    pub cluster: Option<String>,
    /// The trust anchor: the cluster owner's address (always allowed
    /// everything; its policies and those of the admins it names count).
    pub owner: Option<String>,
}

/// Whether a document carries a signature, and whose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// Neither signature annotation.
    None,
    /// Verified for the cluster: the signer.
    Valid(String),
    /// Carries a signature that does not verify (or cannot be checked).
    Refused(Verdict),
}

/// The gate (one per node).
pub struct Admission {
    store: Arc<Store>,
    config: AdmissionConfig,
    /// Counts each verdict reported (by source), once the node sets it.
    metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Admission {
    /// The gate in front of `store`.
    pub fn new(store: Arc<Store>, config: AdmissionConfig) -> Arc<Admission> {
        Arc::new(Admission {
            store,
            config,
            metrics: std::sync::OnceLock::new(),
        })
    }

    /// Count the verdicts reported from now on in `metrics`.
    pub fn set_metrics(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// The store, for reads.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The cluster id signatures are bound to, if any.
    pub fn cluster(&self) -> Option<&str> {
        self.config.cluster.as_deref()
    }

    /// The owner and the AccessPolicies that count now (the trusted ones,
    /// as for signed documents).
    fn trusted_now(&self) -> Result<(String, Vec<Manifest<AccessPolicySpec>>), String> {
        let (Some(cluster), Some(owner)) = (&self.config.cluster, &self.config.owner) else {
            return Err(
                "this node has no cluster owner (--cluster-owner): nobody can be authorised".into(),
            );
        };
        let policies: Vec<Manifest<AccessPolicySpec>> = self
            .store
            .list(Some(Kind::AccessPolicy))
            .into_iter()
            .filter_map(|r| serde_json::from_value(r.object).ok())
            .collect();
        let report = trusted_policies(&policies, cluster, owner);
        Ok((report.owner, report.trusted))
    }

    /// The cluster's owner now (the configured one, or where an ownership
    /// hand-over led).
    pub fn owner_now(&self) -> Option<String> {
        self.trusted_now().ok().map(|(o, _)| o)
    }

    /// The admitted satellites (address → name): `spec.satellites` of the
    /// AccessPolicies that count. Revoked sessions come with them
    /// ([`Admission::revoked_sessions`]).
    pub fn satellites(&self) -> Result<BTreeMap<String, String>, String> {
        let (_, trusted) = self.trusted_now()?;
        Ok(satellites_of(&trusted))
    }

    /// The AccessPolicies that count and admit satellites, as the store
    /// holds them (signed objects, without status): what a joining node
    /// verifies and takes (`GET /v1/join`).
    pub fn member_policies(&self) -> Vec<Value> {
        let Ok((_, trusted)) = self.trusted_now() else {
            return Vec::new();
        };
        trusted
            .iter()
            .filter(|p| !p.spec.satellites.is_empty())
            .filter_map(|p| {
                let key = ObjectKey::new(
                    Kind::AccessPolicy,
                    p.metadata.namespace.as_deref(),
                    p.metadata.name.as_deref()?,
                );
                self.store
                    .get(&key)
                    .filter(|r| !r.deleted)
                    .map(|r| r.object)
            })
            .collect()
    }

    /// What a session cookie is checked against, from one read of the
    /// policies: the admitted satellites (address → name) and the
    /// fingerprints of revoked sessions.
    pub fn session_facts(&self) -> Result<(BTreeMap<String, String>, BTreeSet<String>), String> {
        let (_, trusted) = self.trusted_now()?;
        let revoked = trusted
            .iter()
            .flat_map(|p| p.spec.revoked_sessions.iter().cloned())
            .collect();
        Ok((satellites_of(&trusted), revoked))
    }

    /// Whether `address` may hold a session here: the cluster owner, or a
    /// subject of a rule of an AccessPolicy that counts. What the session
    /// may do is decided per action ([`Admission::authorise_session`]); an
    /// address nobody named gets no session at all. `Ok(Some(..))`: the
    /// directory servers (in order) and user name with which it must first
    /// pass a level-2 password check, those of the first trusted rule
    /// naming it that asks level 2. One read of the policies for both.
    pub fn may_log_in(&self, address: &str) -> Result<Option<Level2Login>, String> {
        let (owner, trusted) = self.trusted_now()?;
        if !(same_address(address, &owner)
            || crate::identity::access::names_subject(&trusted, address))
        {
            return Err(format!(
                "{address} is not named by any access policy of this cluster: ask the cluster owner for a rule"
            ));
        }
        Ok(trusted
            .iter()
            .flat_map(|p| &p.spec.rules)
            .filter(|r| r.subjects.iter().any(|s| same_address(s, address)))
            .find_map(|r| r.level2.as_ref())
            .map(|l2| {
                let user = l2
                    .usernames
                    .iter()
                    .find(|(a, _)| same_address(a, address))
                    .map_or_else(|| address.to_string(), |(_, u)| u.clone());
                (l2.servers.clone(), user)
            }))
    }

    /// Whether a session of `address` (which passed a level-2 check when
    /// `level2`) may `verb` objects of `kind` in `namespace`: the owner
    /// always may, anyone else by the trusted policies, and a rule that
    /// needs level 2 only for a session that passed it.
    pub fn authorise_session(
        &self,
        address: &str,
        level2: bool,
        verb: Verb,
        kind: Kind,
        namespace: &str,
        object: Option<&Value>,
    ) -> Result<(), Refused> {
        self.authorise_session_each(address, level2, verb, &[(kind, namespace, object)])
            .pop()
            .expect("one answer per request")
    }

    /// [`Admission::authorise_session`] for several (kind, namespace,
    /// object) requests, with one read of the policies.
    pub fn authorise_session_each(
        &self,
        address: &str,
        level2: bool,
        verb: Verb,
        what: &[(Kind, &str, Option<&Value>)],
    ) -> Vec<Result<(), Refused>> {
        let (owner, trusted) = match self.trusted_now() {
            Ok(t) => t,
            Err(reason) => {
                let r = Refused {
                    code: "Denied",
                    reason,
                    misses: Vec::new(),
                };
                return what.iter().map(|_| Err(r.clone())).collect();
            }
        };
        let is_owner = same_address(address, &owner);
        // Where no rule naming the address is scoped by tags, the object
        // does not matter: one decision per (kind, namespace), not one
        // per object (a tenant's command line over 10,000 objects spent
        // ~17 ms deciding each).
        let by_scope = !is_owner
            && trusted
                .iter()
                .flat_map(|p| &p.spec.rules)
                .filter(|r| r.subjects.iter().any(|s| same_address(s, address)))
                .all(|r| r.tags.is_none());
        let mut decided: std::collections::HashMap<(Kind, &str), Result<(), Refused>> =
            std::collections::HashMap::new();
        what.iter()
            .map(|(kind, namespace, object)| {
                if is_owner {
                    return Ok(());
                }
                if by_scope {
                    if let Some(d) = decided.get(&(*kind, *namespace)) {
                        return d.clone();
                    }
                }
                let objs: Vec<&Value> = object.iter().copied().collect();
                let d = match authorize_on(&trusted, address, verb, *kind, namespace, &objs) {
                    Decision::Allow { level2: false, .. } => Ok(()),
                    Decision::Allow { .. } if level2 => Ok(()),
                    Decision::Allow { policy, rule, .. } => Err(Refused {
                        code: "Level2Required",
                        reason: format!(
                            "policy {policy} rule {rule} allows {address} only after a level-2 password check at login"
                        ),
                        misses: Vec::new(),
                    }),
                    Decision::Deny { reason, misses } => Err(Refused {
                        code: "Denied",
                        reason,
                        misses,
                    }),
                };
                if by_scope {
                    decided.insert((*kind, *namespace), d.clone());
                }
                d
            })
            .collect()
    }

    /// Check a document's signature (pure; no store access): none, the
    /// verified signer, or why it is refused.
    pub fn check_signature(&self, value: &Value) -> Signature {
        let ann = value.pointer("/metadata/annotations");
        let has = |a: &str| ann.and_then(|m| m.get(a)).is_some();
        if !has(SIGNER_ANNOTATION) && !has(SIGNATURE_ANNOTATION) {
            return Signature::None;
        }
        if !(has(SIGNER_ANNOTATION) && has(SIGNATURE_ANNOTATION)) {
            return Signature::Refused(Verdict::BadSignature {
                reason: format!(
                    "half a signature: {SIGNER_ANNOTATION} and {SIGNATURE_ANNOTATION} go together"
                ),
            });
        }
        let Some(cluster) = self.config.cluster.as_deref() else {
            return Signature::Refused(Verdict::Denied {
                signer: ann
                    .and_then(|m| m.get(SIGNER_ANNOTATION))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                reason: "this node has no cluster (--cluster-owner): no signature can be checked or authorised; remove the signature annotations to apply it as a local document".into(),
                misses: Vec::new(),
            });
        };
        match verify_signed(value, cluster) {
            Ok(signer) => Signature::Valid(signer),
            Err(r) => {
                let mut v = Verdict::from_refused(r, None);
                if let Verdict::BadSignature { reason } = &mut v {
                    reason.push_str(
                        " (edited after signing? sign it again, or remove the signature annotations)",
                    );
                }
                Signature::Refused(v)
            }
        }
    }

    /// Decide and, when every document passes, write the batch.
    pub fn admit(&self, batch: Batch) -> Result<Outcome, StoreError> {
        self.run(batch, true, &mut Vec::new())
    }

    /// Decide without writing anything: the verdicts the batch would get
    /// now (`Applied` meaning "would be applied").
    pub fn dry_run(&self, batch: Batch) -> Result<Outcome, StoreError> {
        self.preview(batch).map(|(outcome, _)| outcome)
    }

    /// A dry run that also hands out the records the batch would write
    /// (what the reconcilers would then see; `apply --dry-run` plans
    /// against them).
    pub fn preview(&self, batch: Batch) -> Result<(Outcome, Vec<Record>), StoreError> {
        let mut staged = Vec::new();
        let outcome = self.run(batch, false, &mut staged)?;
        Ok((outcome, staged))
    }

    fn run(
        &self,
        batch: Batch,
        commit: bool,
        staged: &mut Vec<Record>,
    ) -> Result<Outcome, StoreError> {
        let source = batch.source.clone();
        if !batch.diagnostics.is_empty() {
            let outcome = Outcome {
                committed: false,
                verdicts: Vec::new(),
                deleted: Vec::new(),
                diagnostics: batch.diagnostics.clone(),
            };
            if commit {
                warn!(
                    source = %source.0,
                    problems = outcome.diagnostics.len(),
                    "batch refused: invalid manifests"
                );
            }
            return Ok(outcome);
        }
        // Signatures first, outside the store's lock: they are pure.
        let signatures: Vec<Signature> = batch
            .docs
            .iter()
            .map(|d| self.check_signature(&d.object.to_value()))
            .collect();
        let tombstones: Vec<Signature> = batch
            .deletions
            .iter()
            .map(|d| match &d.tombstone {
                Some(t) => self.check_signature(&t.to_value()),
                None => Signature::None,
            })
            .collect();
        let decide = |tx: &mut Txn<'_>| {
            let decided = self.decide(tx, &batch, &signatures, &tombstones);
            if !commit {
                *staged = tx.staged();
            }
            decided
        };
        let decided = if commit {
            self.store.transact(decide)?
        } else {
            self.store.preview(decide)?
        };
        let outcome = match decided {
            Ok(o) => o,
            Err(o) => o,
        };
        if commit {
            self.report_outcome(&source, &outcome);
        }
        Ok(outcome)
    }

    /// The decision, under the store's lock; `Err` refuses (nothing of the
    /// batch is committed).
    fn decide(
        &self,
        tx: &mut Txn<'_>,
        batch: &Batch,
        signatures: &[Signature],
        tombstones: &[Signature],
    ) -> Result<Outcome, Outcome> {
        let source = &batch.source;
        let trust = self.trusted(tx, batch, signatures, tombstones);
        let mut verdicts = Vec::with_capacity(batch.docs.len() + batch.deletions.len());
        let mut seen: BTreeMap<ObjectKey, String> = BTreeMap::new();
        for (doc, sig) in batch.docs.iter().zip(signatures) {
            let key = ObjectKey::of(&doc.object);
            let verdict = if let Some(first) = seen.get(&key) {
                Verdict::Duplicate {
                    first: first.clone(),
                }
            } else {
                seen.insert(key.clone(), doc.at.clone());
                match owned_by_file(tx, &key, source, Some(&doc.object.to_value())) {
                    Some(file) => Verdict::OwnedByFile { file },
                    None => match self.authorised(
                        sig,
                        batch,
                        Verb::Apply,
                        &key,
                        &trust,
                        [
                            Some(&doc.object.to_value()),
                            tx.get(&key)
                                .filter(|r| !r.deleted)
                                .map(|r| r.object)
                                .as_ref(),
                        ],
                    ) {
                        Err(v) => v,
                        Ok(signed) => {
                            let at = signed.then(|| signed_generation(&doc.object));
                            let attested = (!signed).then(|| attest(&doc.object, batch)).flatten();
                            match tx.apply(attested.as_ref().unwrap_or(&doc.object), source, at) {
                                Ok(a) if a.changed => Verdict::Applied {
                                    generation: a.generation,
                                },
                                Ok(a) => Verdict::Unchanged {
                                    generation: a.generation,
                                },
                                Err(stored) => Verdict::Stale {
                                    generation: at.unwrap_or_default(),
                                    stored,
                                },
                            }
                        }
                    },
                }
            };
            verdicts.push(Admitted {
                key,
                at: doc.at.clone(),
                verdict,
            });
        }
        for (del, sig) in batch.deletions.iter().zip(tombstones) {
            let owner = owned_by_file(tx, &del.key, source, None);
            let verdict = match owner.map(|file| Verdict::OwnedByFile { file }).map_or_else(
                || {
                    let stored = tx.get(&del.key).filter(|r| !r.deleted).map(|r| r.object);
                    let tomb = del.tombstone.as_ref().map(|t| t.to_value());
                    self.authorised(
                        sig,
                        batch,
                        Verb::Delete,
                        &del.key,
                        &trust,
                        [tomb.as_ref(), stored.as_ref()],
                    )
                },
                Err,
            ) {
                Err(v) => v,
                Ok(signed) => {
                    let at = del
                        .tombstone
                        .as_ref()
                        .filter(|_| signed)
                        .map(signed_generation);
                    match tx.delete(&del.key, source, at) {
                        Ok(Some(generation)) => {
                            if del.purge {
                                tx.purge(&del.key);
                            }
                            Verdict::Deleted { generation }
                        }
                        Ok(None) => Verdict::Absent,
                        Err(stored) => Verdict::Stale {
                            generation: at.unwrap_or_default(),
                            stored,
                        },
                    }
                }
            };
            verdicts.push(Admitted {
                key: del.key.clone(),
                at: del.at.clone(),
                verdict,
            });
        }
        let mut deleted = Vec::new();
        if let Some(keep) = &batch.declared_set {
            for record in tx.list_by_source(source) {
                if seen.contains_key(&record.key) || keep.contains(&record.key) {
                    continue;
                }
                if let Ok(Some(generation)) = tx.delete(&record.key, source, None) {
                    if batch.purge_dropped {
                        tx.purge(&record.key);
                    }
                    deleted.push((record.key, generation));
                }
            }
        }
        let refused = verdicts.iter().any(|a| a.verdict.is_refusal());
        if refused {
            for a in &mut verdicts {
                if !a.verdict.is_refusal() {
                    a.verdict = Verdict::Withheld;
                }
            }
            return Err(Outcome {
                committed: false,
                verdicts,
                deleted: Vec::new(),
                diagnostics: Vec::new(),
            });
        }
        Ok(Outcome {
            committed: true,
            verdicts,
            deleted,
            diagnostics: Vec::new(),
        })
    }

    /// Whether a document (or deletion) with signature `sig` may `verb`
    /// `key` from a source of `trust`: `Ok(true)` signed and authorised,
    /// `Ok(false)` unsigned and accepted, `Err` the refusal.
    fn authorised(
        &self,
        sig: &Signature,
        batch: &Batch,
        verb: Verb,
        key: &ObjectKey,
        policies: &Trusted,
        objects: [Option<&Value>; 2],
    ) -> Result<bool, Verdict> {
        let (owner_now, policies) = match policies {
            Trusted::Computed(o, p) => (Some(o.as_str()), p.as_slice()),
            Trusted::NotNeeded => (None, &[][..]),
        };
        let objs: Vec<&Value> = objects.iter().flatten().copied().collect();
        match sig {
            Signature::Refused(v) => Err(v.clone()),
            Signature::None if batch.session.is_some() => {
                let s = batch.session.as_ref().expect("checked");
                let Some(owner) = owner_now.or(self.config.owner.as_deref()) else {
                    return Err(Verdict::Denied {
                        signer: s.address.clone(),
                        reason: "this node has no cluster owner (--cluster-owner): nobody can be authorised".into(),
                        misses: Vec::new(),
                    });
                };
                if same_address(&s.address, owner) {
                    return Ok(false);
                }
                match authorize_on(policies, &s.address, verb, key.kind, &key.namespace, &objs) {
                    Decision::Allow { level2: false, .. } => Ok(false),
                    Decision::Allow { .. } if s.level2 => Ok(false),
                    Decision::Allow { policy, rule, .. } => Err(Verdict::from_refused(
                        Refused {
                            code: "Level2Required",
                            reason: format!("policy {policy} rule {rule} allows {} only after a level-2 password check at login", s.address),
                            misses: Vec::new(),
                        },
                        Some(&s.address),
                    )),
                    Decision::Deny { reason, misses } => Err(Verdict::from_refused(
                        Refused {
                            code: "Denied",
                            reason,
                            misses,
                        },
                        Some(&s.address),
                    )),
                }
            }
            Signature::None => match batch.trust {
                Trust::Local | Trust::UnsignedByChoice => Ok(false),
                Trust::Signed => Err(Verdict::Unsigned {
                    reason: format!(
                        "unsigned: this source takes only documents signed for the cluster ({SIGNER_ANNOTATION} and {SIGNATURE_ANNOTATION} are missing; deorch sign-manifest)"
                    ),
                }),
            },
            Signature::Valid(signer) => {
                let Some(owner) = owner_now.or(self.config.owner.as_deref()) else {
                    return Err(Verdict::Denied {
                        signer: signer.clone(),
                        reason: "this node has no cluster owner (--cluster-owner): no signer can be authorised".into(),
                        misses: Vec::new(),
                    });
                };
                match authorize_signer(signer, verb, key.kind, &key.namespace, owner, policies, &objs) {
                    Ok(()) => Ok(true),
                    // A node publishes what is placed on itself.
                    Err(_) if placed_on_satellite(signer, policies, key, objects) => Ok(true),
                    // A node publishes a session's change as that user,
                    // with the level 2 it checked.
                    Err(r) => match on_behalf_of(signer, policies, objects[0]) {
                        Some((user, level2)) => {
                            if same_address(&user, owner) {
                                return Ok(true);
                            }
                            match authorize_on(policies, &user, verb, key.kind, &key.namespace, &objs) {
                                Decision::Allow { level2: false, .. } => Ok(true),
                                Decision::Allow { .. } if level2 => Ok(true),
                                Decision::Allow { policy, rule, .. } => Err(Verdict::from_refused(
                                    Refused {
                                        code: "Level2Required",
                                        reason: format!("policy {policy} rule {rule} allows {user} only after a level-2 check, which node {signer} does not attest"),
                                        misses: Vec::new(),
                                    },
                                    Some(&user),
                                )),
                                Decision::Deny { reason, misses } => Err(Verdict::from_refused(
                                    Refused { code: "Denied", reason: format!("{reason} (on behalf of {user}, attested by node {signer})"), misses },
                                    Some(&user),
                                )),
                            }
                        }
                        None => Err(Verdict::from_refused(r, Some(signer))),
                    },
                }
            }
        }
    }

    /// The AccessPolicies that count for this batch: the stored ones with
    /// the batch's own overlaid (what the batch deletes no longer counts),
    /// filtered by [`trusted_policies`]. Computed only when a document is
    /// signed by someone other than the owner.
    fn trusted(
        &self,
        tx: &Txn<'_>,
        batch: &Batch,
        signatures: &[Signature],
        tombstones: &[Signature],
    ) -> Trusted {
        let (Some(cluster), Some(owner)) = (&self.config.cluster, &self.config.owner) else {
            return Trusted::NotNeeded;
        };
        // Unsigned documents without a session need no policy (the common
        // case of a node's own directory): do not read them.
        if batch.session.is_none()
            && !signatures
                .iter()
                .chain(tombstones)
                .any(|s| matches!(s, Signature::Valid(_)))
        {
            return Trusted::NotNeeded;
        }
        let mut policies: BTreeMap<ObjectKey, Manifest<AccessPolicySpec>> = tx
            .list(Some(Kind::AccessPolicy))
            .into_iter()
            .filter_map(|r| Some((r.key.clone(), serde_json::from_value(r.object).ok()?)))
            .collect();
        // The configured owner's documents need no policy, unless the
        // cluster was handed over (then the owner is someone else).
        let handed_over = policies
            .values()
            .any(|p| !p.spec.owner_hand_over.is_empty())
            || batch.docs.iter().any(|d| {
                matches!(&d.object, AnyObject::AccessPolicy(p) if !p.spec.owner_hand_over.is_empty())
            });
        let needed = handed_over
            || signatures
                .iter()
                .chain(tombstones)
                .any(|s| matches!(s, Signature::Valid(signer) if signer != owner))
            || batch
                .session
                .as_ref()
                .is_some_and(|s| !same_address(&s.address, owner));
        if !needed {
            return Trusted::NotNeeded;
        }
        if batch.declared_set.is_some() {
            for r in tx.list_by_source(&batch.source) {
                if r.key.kind == Kind::AccessPolicy {
                    policies.remove(&r.key);
                }
            }
        }
        for d in &batch.deletions {
            policies.remove(&d.key);
        }
        for d in &batch.docs {
            if let AnyObject::AccessPolicy(p) = &d.object {
                policies.insert(ObjectKey::of(&d.object), p.clone());
            }
        }
        let policies: Vec<_> = policies.into_values().collect();
        let report = trusted_policies(&policies, cluster, owner);
        Trusted::Computed(report.owner, report.trusted)
    }

    /// Log every verdict and record it as a store event.
    fn report_outcome(&self, source: &SourceId, outcome: &Outcome) {
        for a in &outcome.verdicts {
            self.report(source, &a.at, &a.key, &a.verdict);
        }
        for (key, generation) in &outcome.deleted {
            self.report(
                source,
                &source.0,
                key,
                &Verdict::Deleted {
                    generation: *generation,
                },
            );
        }
    }

    /// Log one verdict and record it as an event on its object (also for
    /// verdicts reached before a batch, e.g. gossip's relay filter).
    /// Refusals are warnings; `Unchanged` and `Withheld` are not recorded.
    pub fn report(&self, source: &SourceId, at: &str, key: &ObjectKey, verdict: &Verdict) {
        if let Some(m) = self.metrics.get() {
            m.verdict(source, verdict);
        }
        let level = match verdict {
            Verdict::Unchanged { .. } | Verdict::Withheld | Verdict::Absent => return,
            Verdict::Applied { generation } | Verdict::Deleted { generation } => {
                info!(source = %source.0, object = %key, generation, "{}", verdict.code());
                "Normal"
            }
            v => {
                warn!(
                    source = %source.0, object = %key, %at, code = v.code(), reason = %v.reason(),
                    "refused by admission"
                );
                "Warning"
            }
        };
        self.store.record_event(Event {
            time_ms: now_ms(),
            level: level.into(),
            object: Some(key.clone()),
            source: Some(source.clone()),
            reason: verdict.code().into(),
            message: format!("{at}: {key}: {verdict} (source {})", source.0),
        });
    }
}

enum Trusted {
    NotNeeded,
    /// The owner now and the policies that count.
    Computed(String, Vec<Manifest<AccessPolicySpec>>),
}

/// The generation a signed object carries (its signature binds it).
/// Annotation: the user whose session applied this document on the node
/// that signed it (set by that node, never taken from input).
pub const ON_BEHALF_OF_ANNOTATION: &str = "deorch.dev/on-behalf-of";
/// Annotation: `"true"` when that session passed level 2 at login.
pub const LEVEL2_ANNOTATION: &str = "deorch.dev/level2";

/// An unsigned document as stored: the attestation annotations removed
/// (only this node sets them), then, for a session's change, set to the
/// session's user and level 2, so that once this node signs it for
/// gossip its peers authorise the user, not the node.
fn attest(object: &AnyObject, batch: &Batch) -> Option<AnyObject> {
    // Nothing to stamp or strip (a node's own files): stored as it is.
    let carries = object.metadata().annotations.as_ref().is_some_and(|a| {
        a.contains_key(ON_BEHALF_OF_ANNOTATION) || a.contains_key(LEVEL2_ANNOTATION)
    });
    if batch.session.is_none() && !carries {
        return None;
    }
    let mut o = object.clone();
    let ann = o
        .metadata_mut()
        .annotations
        .get_or_insert_with(Default::default);
    ann.remove(ON_BEHALF_OF_ANNOTATION);
    ann.remove(LEVEL2_ANNOTATION);
    if let Some(s) = &batch.session {
        ann.insert(ON_BEHALF_OF_ANNOTATION.into(), s.address.clone());
        if s.level2 {
            ann.insert(LEVEL2_ANNOTATION.into(), "true".into());
        }
    }
    if ann.is_empty() {
        o.metadata_mut().annotations = None;
    }
    Some(o)
}

/// The user (and level 2) an admitted node attests a document was applied
/// by, when `signer` is an admitted satellite and the document says so.
fn on_behalf_of(
    signer: &str,
    policies: &[Manifest<AccessPolicySpec>],
    object: Option<&Value>,
) -> Option<(String, bool)> {
    let ann = object?.pointer("/metadata/annotations")?;
    let user = ann.get(ON_BEHALF_OF_ANNOTATION)?.as_str()?.to_string();
    let is_satellite = policies
        .iter()
        .flat_map(|p| &p.spec.satellites)
        .any(|s| same_address(&s.address, signer));
    is_satellite.then(|| {
        (
            user,
            ann.get(LEVEL2_ANNOTATION).and_then(|v| v.as_str()) == Some("true"),
        )
    })
}

/// Admitted satellites of `policies` (address → name; the first policy
/// to name an address wins).
pub fn satellites_of(policies: &[Manifest<AccessPolicySpec>]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for p in policies {
        for s in &p.spec.satellites {
            out.entry(s.address.clone())
                .or_insert_with(|| s.name.clone());
        }
    }
    out
}

/// The default right of a node (docs/SIGNING.md, "Nodes"): an admitted
/// satellite may publish a VirtualMachine placed on itself
/// (`spec.placement.node` its name or address), when what it replaces
/// or deletes was placed on itself too (so it cannot take over another's
/// VM by its name).
fn placed_on_satellite(
    signer: &str,
    policies: &[Manifest<AccessPolicySpec>],
    key: &ObjectKey,
    objects: [Option<&Value>; 2],
) -> bool {
    if key.kind != Kind::VirtualMachine {
        return false;
    }
    let Some(name) = policies
        .iter()
        .flat_map(|p| &p.spec.satellites)
        .find(|s| same_address(&s.address, signer))
        .map(|s| s.name.clone())
    else {
        return false;
    };
    let on_me = |v: &Value| {
        v.pointer("/spec/placement/node")
            .and_then(|n| n.as_str())
            .is_some_and(|n| n == name || same_address(n, signer))
    };
    objects[0].is_some_and(on_me) && objects[1].is_none_or(on_me)
}

fn signed_generation(obj: &AnyObject) -> i64 {
    obj.to_value()
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
