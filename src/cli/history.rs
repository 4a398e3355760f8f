//! `deorch history` and `deorch verify-history`: the history log of a
//! state directory (`src/history.rs`), read offline. Reading needs no
//! lock: the log is only appended to, and a rewrite replaces it whole.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

use super::OutputFormat;
use crate::history::{self, LogProblem, Version};
use crate::model::{Kind, ObjectKey};

/// `deorch history KIND NAME`.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// Kind (e.g. `vm`, `network`, `accesspolicy`).
    pub kind: String,
    /// Name.
    pub name: String,
    /// Namespace (namespaced kinds; default `default`).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Show a unified diff of the YAML of two generations instead.
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    pub diff: Option<Vec<i64>>,
    /// Output format (json and yaml carry every version's whole object).
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// State directory of the node (its log is STATE_DIR/history.log).
    #[arg(long, env = "DEORCH_STATE_DIR", default_value = "/var/lib/deorch")]
    pub state_dir: PathBuf,
}

/// `deorch verify-history`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The cluster owner's address: the cluster every signature is bound
    /// to, and the trust anchor of the AccessPolicies.
    #[arg(long, env = "DEORCH_CLUSTER_OWNER")]
    pub owner: String,
    /// State directory of the node (its log is STATE_DIR/history.log).
    #[arg(long, env = "DEORCH_STATE_DIR", default_value = "/var/lib/deorch")]
    pub state_dir: PathBuf,
    /// A log file to check instead (e.g. a copy).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Output format (json: the whole report).
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// `deorch history`.
pub fn history(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let kind = Kind::from_cli(&args.kind)
        .with_context(|| format!("unknown kind {:?} (e.g. vm, network)", args.kind))?;
    let key = ObjectKey::new(kind, args.namespace.as_deref(), &args.name);
    let path = args.state_dir.join(history::FILE);
    let scan = history::read(&path).with_context(|| {
        format!(
            "reading the history log (is {} a node's state directory? --state-dir)",
            args.state_dir.display()
        )
    })?;
    match &scan.problem {
        None | Some(LogProblem::TornTail { .. }) => {}
        Some(p) => eprintln!(
            "warning: {}: {p}; only the records before it are shown (deorch verify-history)",
            path.display()
        ),
    }
    let versions = history::versions_of(&scan, kind.as_str(), &key.namespace, &key.name);
    if versions.is_empty() {
        bail!("{}: no version of {key} is logged", path.display());
    }
    if let Some(d) = &args.diff {
        let pick = |g: i64| -> anyhow::Result<&Version> {
            versions
                .iter()
                .rev()
                .find(|v| v.generation == g)
                .copied()
                .with_context(|| {
                    format!(
                        "{key} has no logged generation {g} (logged: {})",
                        versions
                            .iter()
                            .map(|v| v.generation.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
        };
        let (a, b) = (pick(d[0])?, pick(d[1])?);
        let text =
            |v: &Version| serde_saphyr::to_string(&v.object).map_err(|e| anyhow::anyhow!("{e}"));
        print!(
            "{}",
            unified_diff(
                &text(a)?,
                &text(b)?,
                &format!("{key} generation {}", a.generation),
                &format!("{key} generation {}", b.generation),
            )
        );
        return Ok(ExitCode::SUCCESS);
    }
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&versions)?),
        OutputFormat::Yaml => {
            print!(
                "{}",
                serde_saphyr::to_string(&versions).map_err(|e| anyhow::anyhow!("{e}"))?
            )
        }
        OutputFormat::Table => {
            let rows: Vec<[String; 5]> = versions
                .iter()
                .map(|v| {
                    let mut note = Vec::new();
                    if v.deleted {
                        note.push("deleted");
                    }
                    if v.recovered {
                        note.push("recovered");
                    }
                    [
                        v.generation.to_string(),
                        crate::reconcile::status::rfc3339(v.time_ms),
                        v.source.clone(),
                        v.signer.clone().unwrap_or_else(|| "-".into()),
                        note.join(","),
                    ]
                })
                .collect();
            print_table(&["GENERATION", "TIME", "SOURCE", "SIGNER", "NOTE"], &rows);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table<const N: usize>(head: &[&str; N], rows: &[[String; N]]) {
    let mut width: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            if i + 1 == N {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}   "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(head.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// `deorch verify-history`: exit 0 when the log is sound, 1 naming the
/// first bad record.
pub fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    crate::identity::Address::parse(&args.owner)
        .map_err(|e| anyhow::anyhow!("--owner {}: {e}", args.owner))?;
    let path = args
        .file
        .clone()
        .unwrap_or_else(|| args.state_dir.join(history::FILE));
    let bytes = std::fs::read(&path)
        .with_context(|| format!("reading the history log {}", path.display()))?;
    let report = match history::verify(&bytes, &args.owner) {
        Ok(r) => r,
        Err(problem) => {
            eprintln!("{}: FAILED: {problem}", path.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    if args.output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    print_report(&path, &args.owner, &report);
    Ok(ExitCode::SUCCESS)
}

fn print_report(path: &Path, owner: &str, r: &history::Verified) {
    use history::Authority;
    println!(
        "{}: {} records, {} versions: {} signed, {} unsigned, {} deletions",
        path.display(),
        r.records,
        r.versions,
        r.signed.len(),
        r.unsigned,
        r.deletions
    );
    println!("chain: every record's hash follows from the one before it");
    for a in &r.anchors {
        println!(
            "anchor: log rewritten at {} ({}); it continues a log of {} records whose head was {}; {} versions dropped",
            crate::reconcile::status::rfc3339(a.time_ms),
            a.reason,
            a.previous_records,
            a.previous_head.as_deref().unwrap_or("(none)"),
            a.dropped
        );
    }
    if !r.signed.is_empty() {
        println!("signed versions, each signature verified for the cluster of {owner}:");
    }
    let mut not_shown = 0;
    for s in &r.signed {
        let why = match &s.authority {
            Authority::Owner => "the cluster owner".to_string(),
            Authority::Policy(p) => format!("allowed by AccessPolicy {p}"),
            Authority::NotShown(why) => {
                not_shown += 1;
                format!("authorisation not shown by the logged policies: {why}")
            }
        };
        println!("  {}: signer {}: {why}", s.record, s.signer);
    }
    if let Some(t) = &r.torn_tail {
        println!("note: {t}");
    }
    if not_shown > 0 {
        println!(
            "note: {not_shown} signed version{} whose signer the logged AccessPolicies do not show allowed (the node may have allowed it by a right this check does not replay; docs/SIGNING.md)",
            if not_shown == 1 { "" } else { "s" }
        );
    }
    println!("OK");
}

/// A unified diff (3 lines of context) of two texts, by lines.
pub fn unified_diff(a: &str, b: &str, a_name: &str, b_name: &str) -> String {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let ops = line_ops(&a, &b);
    let mut out = format!("--- {a_name}\n+++ {b_name}\n");
    if ops.iter().all(|o| matches!(o, Op::Same(..))) {
        return out;
    }
    const CONTEXT: usize = 3;
    // Group the changes with their context into hunks.
    let changed: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| !matches!(o, Op::Same(..)))
        .map(|(i, _)| i)
        .collect();
    let mut i = 0;
    while i < changed.len() {
        let start = changed[i].saturating_sub(CONTEXT);
        let mut end = changed[i];
        while i + 1 < changed.len() && changed[i + 1] <= end + 2 * CONTEXT + 1 {
            i += 1;
            end = changed[i];
        }
        let end = (end + CONTEXT + 1).min(ops.len());
        let (mut a_start, mut b_start) = (0, 0);
        for o in &ops[..start] {
            match o {
                Op::Same(..) => {
                    a_start += 1;
                    b_start += 1;
                }
                Op::Del(_) => a_start += 1,
                Op::Add(_) => b_start += 1,
            }
        }
        let (mut a_len, mut b_len) = (0, 0);
        let mut body = String::new();
        for o in &ops[start..end] {
            match o {
                Op::Same(l) => {
                    a_len += 1;
                    b_len += 1;
                    body.push_str(&format!(" {l}\n"));
                }
                Op::Del(l) => {
                    a_len += 1;
                    body.push_str(&format!("-{l}\n"));
                }
                Op::Add(l) => {
                    b_len += 1;
                    body.push_str(&format!("+{l}\n"));
                }
            }
        }
        let pos = |s: usize, n: usize| if n == 0 { s } else { s + 1 };
        out.push_str(&format!(
            "@@ -{},{a_len} +{},{b_len} @@\n{body}",
            pos(a_start, a_len),
            pos(b_start, b_len)
        ));
        i += 1;
    }
    out
}

enum Op<'a> {
    Same(&'a str),
    Del(&'a str),
    Add(&'a str),
}

/// The edit script of `a` into `b` by longest common subsequence (the
/// YAML of one object: small; past 4,000 lines a side, everything is
/// replaced rather than compared).
fn line_ops<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<Op<'a>> {
    if a.len() > 4000 || b.len() > 4000 {
        return a
            .iter()
            .map(|l| Op::Del(l))
            .chain(b.iter().map(|l| Op::Add(l)))
            .collect();
    }
    let (n, m) = (a.len(), b.len());
    // lcs[i][j]: the LCS length of a[i..] and b[j..].
    let mut lcs = vec![0u32; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[at(i, j)] = if a[i] == b[j] {
                lcs[at(i + 1, j + 1)] + 1
            } else {
                lcs[at(i + 1, j)].max(lcs[at(i, j + 1)])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut ops = Vec::new();
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push(Op::Same(a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[at(i + 1, j)] >= lcs[at(i, j + 1)]) {
            ops.push(Op::Del(a[i]));
            i += 1;
        } else {
            ops.push(Op::Add(b[j]));
            j += 1;
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::unified_diff;

    #[test]
    fn a_unified_diff_shows_changed_lines_with_context() {
        let a = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let b = "a\nb\nc\nD\ne\nf\ng\nh\ni\n";
        let d = unified_diff(a, b, "x", "y");
        assert_eq!(
            d,
            "--- x\n+++ y\n@@ -1,8 +1,9 @@\n a\n b\n c\n-d\n+D\n e\n f\n g\n h\n+i\n"
        );
        assert_eq!(unified_diff(a, a, "x", "y"), "--- x\n+++ y\n");
    }
}
