//! Reading manifests: YAML (multi-document) → validated, typed objects, with
//! every problem reported as a [`Diagnostic`] naming `FILE:LINE:COL`, the
//! field path and what was expected. All problems of a file are reported,
//! not only the first.
//!
//! The pipeline, per document: (1) a spanned YAML tree ([`yaml`]: every
//! node knows its line and column; duplicate keys and syntax errors are
//! caught here); (2) `apiVersion` and `kind`; (3) the kind's JSON schema
//! ([`schema_check`], the same schema editors and external validators use);
//! (4) typed deserialization; (5) semantic checks a schema cannot express
//! ([`semantic`]). Problems carry a field path; the tree turns paths into
//! positions. All problems of a file are reported, sorted by position.
//!
//! Architecture invariant: this is the only manifest parser; the CLI, the
//! manifest directory and the local API all call it.

pub mod inert;
pub mod schema_check;
pub mod semantic;
pub mod yaml;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::model::{AnyObject, Kind, API_VERSION, DEFAULT_NAMESPACE};
use yaml::{Node, NodeValue, Seg};

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Diagnostic {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// Field path, e.g. `spec.disks[0].source`; empty for file-level errors.
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.col)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// One valid document of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedDocument {
    /// 0-based index of the document in its file.
    pub index: usize,
    /// 1-based line where the document starts.
    pub line: usize,
    /// The typed object (namespace defaulted for namespaced kinds).
    pub object: AnyObject,
}

/// The outcome of reading one file: the valid documents and every problem.
/// A file is valid when `diagnostics` is empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedFile {
    /// Valid documents.
    pub documents: Vec<ParsedDocument>,
    /// Problems.
    pub diagnostics: Vec<Diagnostic>,
}

/// A problem at a path inside one document, before it has a position.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Where.
    pub path: Vec<Seg>,
    /// What.
    pub message: String,
    /// Point at the key (unknown fields) rather than the value.
    pub at_key: bool,
    /// The value cannot be read as its Rust type (wrong type, unknown
    /// enum value, unparsable quantity): drop it before reading the rest.
    pub unreadable: bool,
    /// The check, when it is one the JSON schema cannot make
    /// ([`semantic::OnlyDeorch`]); its id ends the message.
    pub only: Option<semantic::OnlyDeorch>,
}

impl Problem {
    /// A problem with the value at `path`.
    pub fn at_value(path: Vec<Seg>, message: String) -> Problem {
        Problem {
            path,
            message,
            at_key: false,
            unreadable: false,
            only: None,
        }
    }
    /// A problem with the key at the end of `path`.
    pub fn at_key(path: Vec<Seg>, message: String) -> Problem {
        Problem {
            path,
            message,
            at_key: true,
            unreadable: true,
            only: None,
        }
    }
    /// The message as shown: with `[ID]` when only deorch makes the check,
    /// so that a user whose editor showed no error knows why.
    pub fn shown(&self) -> String {
        match self.only {
            Some(o) => format!("{} [{}]", self.message, o.id()),
            None => self.message.clone(),
        }
    }
}

/// Largest manifest file accepted.
pub const MAX_FILE: usize = 8 << 20;

/// Parse and validate `text`, reporting positions against `file`.
pub fn parse_str(file: &Path, text: &str) -> ParsedFile {
    parse_str_with_warnings(file, text).0
}

/// [`parse_str`], plus a warning for every field of a valid document that
/// has no effect yet ([`inert::no_effect_yet`]), at the field's key.
pub fn parse_str_with_warnings(file: &Path, text: &str) -> (ParsedFile, Vec<Diagnostic>) {
    let mut out = ParsedFile::default();
    let mut warnings = Vec::new();
    let diag = |line: usize, col: usize, path: String, message: String| Diagnostic {
        file: file.to_path_buf(),
        line,
        col,
        path,
        message,
    };
    if text.len() > MAX_FILE {
        out.diagnostics.push(diag(
            1,
            1,
            String::new(),
            format!("file is larger than {} MiB; refused", MAX_FILE >> 20),
        ));
        return (out, warnings);
    }
    let (docs, errors) = yaml::parse(text);
    for e in errors {
        out.diagnostics
            .push(diag(e.pos.line, e.pos.col, String::new(), e.message));
    }
    for (index, doc) in docs.iter().enumerate() {
        if matches!(doc.root.value, NodeValue::Scalar(Value::Null)) {
            continue; // an empty document, e.g. a trailing `---`
        }
        let (object, problems) = check_document(&doc.root);
        for p in problems {
            let (key_pos, value_pos) = yaml::locate(&doc.root, &p.path);
            let pos = if p.at_key {
                key_pos.unwrap_or(value_pos)
            } else {
                value_pos
            };
            out.diagnostics.push(diag(
                pos.line,
                pos.col,
                yaml::render_path(&p.path),
                p.shown(),
            ));
        }
        if let Some(object) = object {
            for w in inert::no_effect_yet(&object) {
                let (key_pos, value_pos) = yaml::locate(&doc.root, &w.path);
                let pos = key_pos.unwrap_or(value_pos);
                warnings.push(diag(pos.line, pos.col, w.path_string(), w.message));
            }
            out.documents.push(ParsedDocument {
                index,
                line: doc.pos.line,
                object,
            });
        }
    }
    out.diagnostics.sort_by_key(|a| (a.line, a.col));
    if !out.diagnostics.is_empty() {
        // A file is applied whole or not at all.
        out.documents.clear();
    }
    (out, warnings)
}

/// Validate one document; the object when it has no problem.
fn check_document(root: &Node) -> (Option<AnyObject>, Vec<Problem>) {
    let value = yaml::to_json(root);
    let Some(map) = value.as_object() else {
        return (
            None,
            vec![Problem::at_value(
                vec![],
                format!(
                    "expected a mapping with apiVersion, kind, metadata and spec, found {}",
                    schema_check::describe(&value)
                ),
            )],
        );
    };
    let mut problems = Vec::new();
    match map.get("apiVersion") {
        None => problems.push(Problem::at_value(
            vec![],
            format!("missing required field \"apiVersion\" (expected {API_VERSION:?})"),
        )),
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(other) => problems.push(Problem::at_value(
            vec![Seg::Key("apiVersion".into())],
            format!(
                "unknown apiVersion {}, expected {API_VERSION:?}",
                match other {
                    Value::String(s) => format!("{s:?}"),
                    v => schema_check::describe(v),
                }
            ),
        )),
    }
    let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    let kind = match map.get("kind") {
        None => {
            problems.push(Problem::at_value(
                vec![],
                format!(
                    "missing required field \"kind\" (one of: {})",
                    kinds.join(", ")
                ),
            ));
            None
        }
        Some(Value::String(k)) => match Kind::from_kind(k) {
            Some(kind) => Some(kind),
            None => {
                let hint = schema_check::did_you_mean(k, kinds.iter().copied())
                    .map(|m| format!(" (did you mean {m:?}?)"))
                    .unwrap_or_default();
                problems.push(Problem::at_value(
                    vec![Seg::Key("kind".into())],
                    format!(
                        "unknown kind {k:?}, expected one of: {}{hint}",
                        kinds.join(", ")
                    ),
                ));
                None
            }
        },
        Some(other) => {
            problems.push(Problem::at_value(
                vec![Seg::Key("kind".into())],
                format!(
                    "expected a kind name, found {}",
                    schema_check::describe(other)
                ),
            ));
            None
        }
    };
    let Some(kind) = kind else {
        return (None, problems);
    };
    if !problems.is_empty() {
        // The schema would only repeat the apiVersion error; still check
        // the rest so every problem of the document is reported.
        let mut fixed = value.clone();
        fixed["apiVersion"] = Value::String(API_VERSION.into());
        problems.extend(schema_check::check(kind, &fixed));
        return (None, problems);
    }
    problems.extend(schema_check::check(kind, &value));
    if !problems.is_empty() {
        // Report the semantic problems too, so one run shows everything.
        // When the object still reads (the schema refused only ranges and
        // patterns) check it whole: where deorch's own check finds the same
        // field wrong, its message ("virtual CPUs must be a whole number
        // from 1 to 1024") replaces the schema's ("must be at least 1").
        // Otherwise drop the fields the schema refused and check the rest.
        let mut readable = value.clone();
        for p in problems.iter().filter(|p| p.unreadable) {
            prune(&mut readable, &p.path);
        }
        let semantic = match AnyObject::from_value(readable) {
            Ok(rest) => semantic::check(&rest),
            Err(_) => {
                let mut pruned = value;
                for p in &problems {
                    prune(&mut pruned, &p.path);
                }
                AnyObject::from_value(pruned)
                    .map(|partial| semantic::check(&partial))
                    .unwrap_or_default()
            }
        };
        // A field dropped as unreadable keeps the schema's problem; what
        // deorch then says about its absence ("a blank disk needs a
        // size") is only an echo.
        let mut semantic = semantic;
        semantic.retain(|s| !problems.iter().any(|p| p.unreadable && p.path == s.path));
        problems.retain(|p| p.unreadable || !semantic.iter().any(|s| s.path == p.path));
        problems.extend(semantic);
        return (None, problems);
    }
    let mut object = match AnyObject::from_value(value) {
        Ok(o) => o,
        Err(e) => {
            return (
                None,
                vec![Problem {
                    only: Some(semantic::OnlyDeorch::TypedRead),
                    ..Problem::at_value(vec![], format!("cannot read the object: {e}"))
                }],
            )
        }
    };
    problems.extend(semantic::check(&object));
    if !problems.is_empty() {
        return (None, problems);
    }
    if kind.namespaced() {
        let meta = object.metadata_mut();
        if meta.namespace.is_none() {
            meta.namespace = Some(DEFAULT_NAMESPACE.into());
        }
    }
    (Some(object), problems)
}

/// Remove the mapping key nearest to the end of the part of `path` that
/// exists (the whole list when the path ends inside one; the mapping
/// holding a missing required field).
fn prune(v: &mut Value, path: &[Seg]) {
    let mut node = &*v;
    let mut end = None;
    for (i, seg) in path.iter().enumerate() {
        let next = match (node, seg) {
            (Value::Object(m), Seg::Key(k)) => m.get(k),
            (Value::Array(a), Seg::Index(i)) => a.get(*i),
            _ => None,
        };
        let Some(n) = next else { break };
        node = n;
        if matches!(seg, Seg::Key(_)) {
            end = Some(i);
        }
    }
    let Some(last) = end else {
        return;
    };
    let mut node = v;
    for seg in &path[..last] {
        node = match (node, seg) {
            (Value::Object(m), Seg::Key(k)) => match m.get_mut(k) {
                Some(n) => n,
                None => return,
            },
            (Value::Array(a), Seg::Index(i)) => match a.get_mut(*i) {
                Some(n) => n,
                None => return,
            },
            _ => return,
        };
    }
    if let (Value::Object(m), Seg::Key(k)) = (node, &path[last]) {
        m.remove(k);
    }
}

/// Read and validate one file (I/O errors become a diagnostic at 1:1).
pub fn parse_file(path: &Path) -> ParsedFile {
    parse_file_with_warnings(path).0
}

/// [`parse_file`] with [`parse_str_with_warnings`]'s warnings.
pub fn parse_file_with_warnings(path: &Path) -> (ParsedFile, Vec<Diagnostic>) {
    let bytes = match std::fs::metadata(path).and_then(|m| {
        if m.len() as usize > MAX_FILE {
            Err(std::io::Error::other(format!(
                "file is larger than {} MiB; refused",
                MAX_FILE >> 20
            )))
        } else {
            std::fs::read(path)
        }
    }) {
        Ok(b) => b,
        Err(e) => return (io_problem(path, e.to_string()), vec![]),
    };
    match String::from_utf8(bytes) {
        Ok(text) => parse_str_with_warnings(path, &text),
        Err(e) => (
            io_problem(
                path,
                format!(
                    "not UTF-8 text (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
            ),
            vec![],
        ),
    }
}

fn io_problem(path: &Path, message: String) -> ParsedFile {
    ParsedFile {
        documents: vec![],
        diagnostics: vec![Diagnostic {
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            path: String::new(),
            message,
        }],
    }
}

/// Whether `path` names a manifest: `*.yaml`/`*.yml`, not a hidden file
/// and not an editor's temp, swap or backup file.
pub fn is_manifest_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if name.starts_with('.')
        || name.starts_with('#')
        || name.ends_with('~')
        || name.contains(".dpkg-")
    {
        return false;
    }
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// Files under `paths` (directories recursively, sorted); missing paths
/// are diagnostics.
pub fn collect_files(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<Diagnostic>) {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for p in paths {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => walk(p, &mut files),
            Ok(_) => files.push(p.clone()),
            Err(e) => problems.push(Diagnostic {
                file: p.clone(),
                line: 1,
                col: 1,
                path: String::new(),
                message: format!("cannot read: {e}"),
            }),
        }
    }
    (files, problems)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else if is_manifest_file(&p) {
            out.push(p);
        }
    }
}

/// Summary of a `validate` run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ValidateSummary {
    /// Files read.
    pub files: usize,
    /// Documents read (valid or not).
    pub documents: usize,
    /// Problems found.
    pub errors: usize,
    /// Fields that validate but have no effect yet (not errors).
    pub warnings: usize,
}

impl Diagnostic {
    /// The line `deorch validate` prints for a warning:
    /// `FILE:LINE:COL: warning: PATH: MESSAGE`.
    pub fn warning_line(&self) -> String {
        format!(
            "{}:{}:{}: warning: {}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.path,
            self.message
        )
    }
}

/// Validate files and directories, printing one line per problem (and
/// per warning) to `out`.
pub fn run_validate(paths: &[PathBuf], out: &mut dyn std::io::Write) -> ValidateSummary {
    let (files, missing) = collect_files(paths);
    let mut summary = ValidateSummary {
        files: files.len(),
        documents: 0,
        errors: missing.len(),
        warnings: 0,
    };
    for d in &missing {
        let _ = writeln!(out, "{d}");
    }
    for f in &files {
        let (parsed, warnings) = parse_file_with_warnings(f);
        summary.documents += if parsed.diagnostics.is_empty() {
            parsed.documents.len()
        } else {
            count_documents(f)
        };
        summary.errors += parsed.diagnostics.len();
        let mut lines: Vec<(usize, usize, String)> = parsed
            .diagnostics
            .iter()
            .map(|d| (d.line, d.col, d.to_string()))
            .collect();
        lines.extend(warnings.iter().map(|w| (w.line, w.col, w.warning_line())));
        lines.sort_by_key(|(line, col, _)| (*line, *col));
        for (_, _, l) in lines {
            let _ = writeln!(out, "{l}");
        }
        summary.warnings += warnings.len();
    }
    summary
}

/// Documents in a file that failed, for the summary line.
fn count_documents(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| {
            yaml::parse(&t)
                .0
                .iter()
                .filter(|d| !matches!(d.root.value, NodeValue::Scalar(Value::Null)))
                .count()
        })
        .unwrap_or(0)
}
