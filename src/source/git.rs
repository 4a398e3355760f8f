//! Desired state from a git repository (GitOps).
//!
//! The node keeps a bare mirror of one branch under its state directory
//! and polls it (`git fetch`, argument vectors, no shell, no prompts). A
//! new commit is read whole: every `*.yaml`/`*.yml` below the configured
//! path (dot-files and dot-directories skipped) is parsed like a manifest
//! file. The commit is then taken **all or nothing**, like a push:
//!
//! - any invalid document (`FILE:LINE:COL` naming the commit), the same
//!   object twice, or any document admission refuses (in signed mode an
//!   unsigned one; in every mode one whose signature does not verify for
//!   this cluster, whose signer may not apply it, or whose generation does
//!   not move forward: a rollback or replay, e.g. a force-push of an older
//!   commit) refuses the commit: nothing changes, every reason is logged
//!   and recorded as a `GitRefused` event, and the next commit is tried
//!   when it comes;
//! - otherwise the commit is this source's declarative set, admitted as
//!   one batch ([`crate::admission`]): new and changed objects are applied
//!   (signed ones at the generation their author signed, so the stored
//!   copy keeps a valid signature) and objects a previous commit declared
//!   and this one does not are deleted, in one store transaction, so a
//!   write by another source at the same moment cannot leave half of it.
//!
//! Unsigned mode (`--git-unsigned`) is an explicit, logged choice for a
//! repository the operator trusts as much as the local manifest directory.
//!
//! Limit: a deletion is the *absence* of a file, which no signature covers:
//! whoever may push to the branch may delete the objects it declared (not
//! others: a source only deletes what it declared).
//!
//! The outcome of the last commit tried is kept in `STATUS_FILE` in the
//! mirror directory (written atomically) for operators and tests.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{info, warn};

use super::Source;
use crate::admission::{Admission, Batch, Trust};
use crate::clock::now_ms;
use crate::store::{Event, SourceId};

/// File in the mirror directory with the outcome of the last commit tried.
pub const STATUS_FILE: &str = "deorch-status.json";
/// How long one git command may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(120);
/// Local ref the branch is fetched into.
const MIRROR_REF: &str = "refs/deorch/head";

/// How documents from the repository are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitVerify {
    /// Every document signed for this cluster (its owner's address) and
    /// authorised.
    Signed {
        /// Cluster id = owner address.
        cluster: String,
    },
    /// Unsigned documents accepted, like the local manifest directory
    /// (signed ones are still verified and authorised).
    Unsigned,
}

impl GitVerify {
    /// The admission trust of this mode.
    pub fn trust(&self) -> Trust {
        match self {
            GitVerify::Signed { .. } => Trust::Signed,
            GitVerify::Unsigned => Trust::UnsignedByChoice,
        }
    }
}

/// Where and how to follow a repository.
#[derive(Debug, Clone)]
pub struct GitConfig {
    /// Repository URL or path, as `git fetch` takes it.
    pub repo: String,
    /// Branch to follow.
    pub branch: String,
    /// Directory inside the repository ("" = all of it).
    pub path: String,
    /// Poll period.
    pub poll: Duration,
    /// Where mirrors live (one per repository and branch below it).
    pub mirrors: PathBuf,
    /// Signature policy.
    pub verify: GitVerify,
}

impl GitConfig {
    /// The mirror directory of this repository and branch.
    pub fn mirror(&self) -> PathBuf {
        let id = Sha256::digest(format!("{}\n{}", self.repo, self.branch).as_bytes());
        self.mirrors.join(hex::encode(&id[..8]))
    }

    /// The store's source id of this repository and branch.
    pub fn source_id(&self) -> SourceId {
        SourceId(format!("git:{}#{}", self.repo, self.branch))
    }
}

/// A git repository source.
pub struct GitSource {
    config: GitConfig,
}

impl GitSource {
    /// A source following `config`.
    pub fn new(config: GitConfig) -> GitSource {
        GitSource { config }
    }
}

impl Source for GitSource {
    fn name(&self) -> String {
        format!("git:{}#{}", self.config.repo, self.config.branch)
    }

    fn run(
        self: Box<Self>,
        admission: Arc<Admission>,
        shutdown: watch::Receiver<bool>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(run(self.config, admission, shutdown))
    }
}

async fn run(config: GitConfig, admission: Arc<Admission>, mut shutdown: watch::Receiver<bool>) {
    if config.verify == GitVerify::Unsigned {
        warn!(repo = %config.repo, "git source in unsigned mode: every document of the branch is applied unverified");
    }
    let mut last: Option<String> = None;
    loop {
        match sync_once(&config, &admission, &mut last).await {
            Ok(Synced::Unchanged) => {}
            Ok(Synced::Applied {
                commit,
                changed,
                deleted,
            }) => {
                info!(repo = %config.repo, %commit, changed, deleted, "git commit applied")
            }
            Ok(Synced::Refused { commit, problems }) => warn!(
                repo = %config.repo, %commit,
                "git commit refused; nothing changed:\n{}", problems.join("\n")
            ),
            Err(e) => {
                warn!(repo = %config.repo, error = %e, "git source: fetch failed; will retry")
            }
        }
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(config.poll) => {}
        }
    }
}

/// What one [`sync_once`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Synced {
    /// The branch points where it pointed at the last attempt.
    Unchanged,
    /// The commit's objects are this source's set now.
    Applied {
        /// Commit id.
        commit: String,
        /// Objects applied with a new generation.
        changed: usize,
        /// Objects deleted.
        deleted: usize,
    },
    /// The commit was refused as a whole; nothing changed.
    Refused {
        /// Commit id.
        commit: String,
        /// Every reason, one per line.
        problems: Vec<String>,
    },
}

/// Fetch the branch and, if it moved since `last`, take its commit (all or
/// nothing). `Err` only when git itself fails (the store is untouched).
pub async fn sync_once(
    config: &GitConfig,
    admission: &Admission,
    last: &mut Option<String>,
) -> Result<Synced, String> {
    let mirror = config.mirror();
    if !mirror.join("HEAD").exists() {
        std::fs::create_dir_all(&mirror).map_err(|e| format!("{}: {e}", mirror.display()))?;
        git(&mirror, &["init", "--quiet", "--bare"]).await?;
    }
    let refspec = format!("+refs/heads/{}:{MIRROR_REF}", config.branch);
    git(
        &mirror,
        &[
            "fetch",
            "--quiet",
            "--no-tags",
            "--",
            &config.repo,
            &refspec,
        ],
    )
    .await?;
    let commit = String::from_utf8_lossy(
        &git(
            &mirror,
            &["rev-parse", "--verify", &format!("{MIRROR_REF}^{{commit}}")],
        )
        .await?,
    )
    .trim()
    .to_string();
    if last.as_deref() == Some(commit.as_str()) {
        return Ok(Synced::Unchanged);
    }
    let outcome = take_commit(config, admission, &mirror, &commit).await?;
    *last = Some(commit.clone());
    write_status(&mirror, &commit, &outcome);
    Ok(outcome)
}

/// Read one commit and hand it to admission as one declarative batch.
async fn take_commit(
    config: &GitConfig,
    admission: &Admission,
    mirror: &Path,
    commit: &str,
) -> Result<Synced, String> {
    let source = config.source_id();
    let short = &commit[..commit.len().min(12)];
    let mut problems = Vec::new();
    let mut batch = Batch::new(source.clone(), config.verify.trust());
    for (path, oid) in manifest_blobs(mirror, commit, &config.path).await? {
        let bytes = git(mirror, &["cat-file", "blob", &oid]).await?;
        let name = format!("{}@{short}:{path}", config.repo);
        match String::from_utf8(bytes) {
            Ok(text) => batch.parse(&name, &text),
            Err(_) => problems.push(format!("{name}: not UTF-8 text")),
        }
    }
    let outcome = if problems.is_empty() {
        admission
            .admit(batch.declarative(Default::default()))
            .map_err(|e| format!("store: {e}"))?
    } else {
        // Not even parsed whole: run the rest of the checks for the report.
        admission
            .dry_run(batch)
            .map_err(|e| format!("store: {e}"))?
    };
    problems.extend(outcome.problems());
    if !problems.is_empty() {
        admission.store().record_event(Event {
            time_ms: now_ms(),
            level: "Warning".into(),
            object: None,
            source: Some(source.clone()),
            reason: "GitRefused".into(),
            message: format!(
                "commit {commit} refused ({} problem(s)); nothing changed:\n{}",
                problems.len(),
                problems.join("\n")
            ),
        });
        return Ok(Synced::Refused {
            commit: commit.to_string(),
            problems,
        });
    }
    for (key, generation) in outcome.changed() {
        info!(object = %key, generation, %commit, "applied from git");
    }
    for (key, generation) in &outcome.deleted {
        info!(object = %key, generation, %commit, "deleted: no longer in the git branch");
    }
    Ok(Synced::Applied {
        commit: commit.to_string(),
        changed: outcome.changed().count(),
        deleted: outcome.deleted.len(),
    })
}

/// `(path, blob id)` of every manifest file of `commit` below `dir`.
async fn manifest_blobs(
    mirror: &Path,
    commit: &str,
    dir: &str,
) -> Result<Vec<(String, String)>, String> {
    let mut args = vec!["ls-tree", "-r", "-z", "--full-tree", commit];
    let dir = dir.trim_matches('/');
    if !dir.is_empty() {
        args.extend(["--", dir]);
    }
    let out = git(mirror, &args).await?;
    let mut blobs = Vec::new();
    for entry in out.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        let entry = String::from_utf8_lossy(entry);
        // "<mode> <type> <oid>\t<path>"
        let Some((meta, path)) = entry.split_once('\t') else {
            continue;
        };
        let mut meta = meta.split(' ');
        let (Some(_mode), Some("blob"), Some(oid)) = (meta.next(), meta.next(), meta.next()) else {
            continue;
        };
        let hidden = path.split('/').any(|c| c.starts_with('.'));
        let yaml = path.ends_with(".yaml") || path.ends_with(".yml");
        if yaml && !hidden {
            blobs.push((path.to_string(), oid.to_string()));
        }
    }
    Ok(blobs)
}

/// Run `git` on the mirror; its stdout, or an error with its stderr.
async fn git(mirror: &Path, args: &[&str]) -> Result<Vec<u8>, String> {
    let run = tokio::process::Command::new("git")
        .arg("--git-dir")
        .arg(mirror)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "/bin/false")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(GIT_TIMEOUT, run)
        .await
        .map_err(|_| format!("git {} timed out after {GIT_TIMEOUT:?}", args[0]))?
        .map_err(|e| format!("git {}: {e} (is git installed?)", args[0]))?;
    if !out.status.success() {
        return Err(format!(
            "git {}: {}",
            args[0],
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

fn write_status(mirror: &Path, commit: &str, outcome: &Synced) {
    let v = match outcome {
        Synced::Unchanged => return,
        Synced::Applied {
            changed, deleted, ..
        } => {
            json!({"commit": commit, "applied": true, "changed": changed, "deleted": deleted, "problems": []})
        }
        Synced::Refused { problems, .. } => {
            json!({"commit": commit, "applied": false, "problems": problems})
        }
    };
    let done = crate::state_file::write(&mirror.join(STATUS_FILE), v.to_string().as_bytes());
    if let Err(e) = done {
        warn!(file = %mirror.join(STATUS_FILE).display(), error = %e, "cannot write the git status");
    }
}
