//! The command line of the search bar (issue 17): one grammar for the web
//! page and the CLI (`deorch do`). The node parses what the user typed
//! ([`parse`]), resolves it against what it knows ([`plan`]) into a plan
//! (a sentence, the equivalent CLI command, and the manifest it would
//! apply) and results; nothing changes until the plan is run, and a run
//! is an ordinary apply through admission as the user's session.
//!
//! ```text
//! create vm NAME from SOURCE [on TARGET]     vm NAME from SOURCE [on TARGET]
//! create spacesuit NAME from VM              spacesuit NAME from VM
//! relocate VM [to TARGET] [offline]          replica VM [NAME]
//! replicas [of VM]                           revert VM to REPLICA
//! console VM     start VM     stop VM        vm NAME    spacesuit NAME    node NAME
//! pause VM       resume VM
//! vms [on TARGET]                            nodes [TARGET]
//! anything else: a search over names, tags and addresses
//!
//! TARGET: a node name | an IP address | KEY=VALUE ... [performance=high|low]
//!         KEY is FAMILY.KEY (microcosm, macrocosm, intercosm) or a key
//!         one of the satellites' tags carries (city, rack, team, ...)
//! NAME:   name | namespace/name
//! ```

pub mod plan;

use std::net::IpAddr;

use serde::Serialize;

pub use plan::{plan, Outcome};

/// The words that start a command, for completion.
pub const VERBS: &[&str] = &[
    "create vm",
    "create spacesuit",
    "vm",
    "spacesuit",
    "relocate",
    "replica",
    "replicas",
    "revert",
    "console",
    "start",
    "stop",
    "pause",
    "resume",
    "vms",
    "nodes",
    "node",
];

/// Longest query taken (the search bar sends each keystroke).
pub const MAX_QUERY: usize = 4096;

/// An object named in a query: namespace (if given) and name, with the
/// column it starts at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    /// `namespace/` prefix, if the user gave one.
    pub namespace: Option<String>,
    /// The name.
    pub name: String,
    /// 1-based column of its first character.
    pub column: usize,
}

/// One `KEY=VALUE` of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// `microcosm`, `macrocosm` or `intercosm` when written `FAMILY.KEY`.
    pub family: Option<String>,
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// 1-based column.
    pub column: usize,
}

/// Where: a node by name or address, or tags and a performance class.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// A satellite by name.
    pub node: Option<Name>,
    /// A satellite by IP address.
    pub address: Option<IpAddr>,
    /// Tags the satellite must carry.
    pub labels: Vec<Label>,
    /// `high` or `low`.
    pub performance: Option<String>,
}

impl Target {
    /// Whether nothing is asked.
    pub fn is_empty(&self) -> bool {
        *self == Target::default()
    }
}

/// What the user asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// `create vm NAME from SOURCE [on TARGET]` (or `vm NAME from ...`):
    /// SOURCE is a spacesuit, else a VM.
    CreateVm {
        /// The new VM.
        name: Name,
        /// A spacesuit or a VM.
        from: Name,
        /// Where it runs.
        on: Target,
    },
    /// `spacesuit NAME from VM`.
    Spacesuit {
        /// The new spacesuit.
        name: Name,
        /// The VM whose first disk it is made from.
        from: Name,
    },
    /// `relocate VM [to TARGET] [offline]`.
    Relocate {
        /// The VM.
        vm: Name,
        /// Where to.
        to: Target,
        /// Stop, copy, start.
        offline: bool,
    },
    /// `replica VM [NAME]`.
    Replica {
        /// The VM.
        vm: Name,
        /// The replica's name (default VM-YYYYMMDD-HHMMSS).
        name: Option<Name>,
    },
    /// `replicas [of VM]`.
    Replicas {
        /// Only this VM's.
        vm: Option<Name>,
    },
    /// `revert VM to REPLICA`.
    Revert {
        /// The VM.
        vm: Name,
        /// Its replica.
        replica: Name,
    },
    /// `console VM`.
    Console {
        /// The VM.
        vm: Name,
    },
    /// `start VM` / `stop VM` / `pause VM` / `resume VM` (a start).
    Power {
        /// The VM.
        vm: Name,
        /// `Running`, `Stopped` or `Paused`.
        state: &'static str,
    },
    /// `vm NAME`, `spacesuit NAME`, `node NAME`.
    Get {
        /// `VirtualMachine`, `Spacesuit` or `Satellite`.
        kind: &'static str,
        /// The object.
        name: Name,
    },
    /// `vms [on TARGET]`.
    Vms {
        /// On satellites matching this.
        on: Target,
    },
    /// `nodes [TARGET]`.
    Nodes {
        /// Satellites matching this.
        matching: Target,
    },
    /// Free text.
    Search {
        /// Lower-cased words; every one must match.
        terms: Vec<String>,
    },
}

/// What the parser wanted where it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Expect {
    /// One of the words in the message.
    Word,
    /// A VM's name.
    Vm,
    /// A spacesuit's or a VM's name.
    Source,
    /// A new object's name.
    NewName,
    /// A replica's name.
    Replica,
    /// A node name, an address, or `KEY=VALUE`.
    Target,
    /// Nothing more.
    End,
}

/// A query that does not parse: where, what was expected, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParseError {
    /// 1-based column (one past the end when the query ended too soon).
    pub column: usize,
    /// What would have been right there.
    pub expected: Expect,
    /// The words that would have been right, when [`Expect::Word`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub words: Vec<&'static str>,
    /// The sentence.
    pub message: String,
    /// The unfinished word at the end of the query, if the error is there
    /// (what completion extends).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partial: Option<String>,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for ParseError {}

#[derive(Debug, Clone, Copy)]
struct Tok<'a> {
    text: &'a str,
    column: usize,
}

struct Parser<'a> {
    toks: Vec<Tok<'a>>,
    at: usize,
    end_column: usize,
}

fn tokens(text: &str) -> Vec<Tok<'_>> {
    let mut out = Vec::new();
    let mut start: Option<(usize, usize)> = None;
    for (col, (i, c)) in text.char_indices().enumerate() {
        if c.is_whitespace() {
            if let Some((s, sc)) = start.take() {
                out.push(Tok {
                    text: &text[s..i],
                    column: sc + 1,
                });
            }
        } else if start.is_none() {
            start = Some((i, col));
        }
    }
    if let Some((s, sc)) = start {
        out.push(Tok {
            text: &text[s..],
            column: sc + 1,
        });
    }
    out
}

/// Whether `s` is a name: a DNS-1123 label, as every object's name.
fn is_name(s: &str) -> bool {
    crate::manifest::semantic::is_dns_label(s)
}

const FAMILIES: &[&str] = &["microcosm", "macrocosm", "intercosm"];

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<Tok<'a>> {
        self.toks.get(self.at).copied()
    }

    fn peek_is(&self, words: &[&str]) -> bool {
        self.peek()
            .is_some_and(|t| words.iter().any(|w| t.text.eq_ignore_ascii_case(w)))
    }

    fn next(&mut self) -> Option<Tok<'a>> {
        let t = self.peek();
        self.at += 1;
        t
    }

    /// Whether token `t` is the last one and the query did not end with
    /// a space after it (the user is still typing it).
    fn partial(&self, t: Option<Tok<'a>>) -> Option<String> {
        let t = t?;
        (t.column + t.text.chars().count() == self.end_column).then(|| t.text.to_string())
    }

    fn fail(
        &self,
        t: Option<Tok<'a>>,
        expected: Expect,
        words: &[&'static str],
        message: String,
    ) -> ParseError {
        ParseError {
            column: t.map_or(self.end_column, |t| t.column),
            expected,
            words: words.to_vec(),
            message,
            partial: self.partial(t),
        }
    }

    fn word(&mut self, words: &[&'static str]) -> Result<(), ParseError> {
        let t = self.next();
        if t.is_some_and(|t| words.iter().any(|w| t.text.eq_ignore_ascii_case(w))) {
            return Ok(());
        }
        let list = words
            .iter()
            .map(|w| format!("`{w}`"))
            .collect::<Vec<_>>()
            .join(" or ");
        Err(self.fail(
            t,
            Expect::Word,
            words,
            match t {
                Some(t) => format!("expected {list}, found `{}`", t.text),
                None => format!("expected {list}"),
            },
        ))
    }

    fn name(&mut self, expected: Expect, what: &str) -> Result<Name, ParseError> {
        let t = self.next();
        let Some(tok) = t else {
            return Err(self.fail(t, expected, &[], format!("expected {what}")));
        };
        let (namespace, name) = match tok.text.split_once('/') {
            Some((ns, n)) => (Some(ns), n),
            None => (None, tok.text),
        };
        if !is_name(name) || namespace.is_some_and(|ns| !is_name(ns)) {
            return Err(self.fail(
                t,
                expected,
                &[],
                format!(
                    "expected {what} (at most 63 lower-case letters, digits and `-`, or NAMESPACE/NAME), found `{}`",
                    tok.text
                ),
            ));
        }
        Ok(Name {
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
            column: tok.column,
        })
    }

    /// The target words up to the end, or up to one of `stop`.
    fn target(&mut self, stop: &[&str], required: bool) -> Result<Target, ParseError> {
        let mut target = Target::default();
        let start = self.peek();
        while let Some(t) = self.peek() {
            if self.peek_is(stop) {
                break;
            }
            self.at += 1;
            if let Some((k, v)) = t.text.split_once('=') {
                let bad = |m: String| self.fail(Some(t), Expect::Target, &[], m);
                if v.is_empty() || k.is_empty() {
                    return Err(bad(format!("expected KEY=VALUE, found `{}`", t.text)));
                }
                if k.eq_ignore_ascii_case("performance") {
                    let v = v.to_ascii_lowercase();
                    if v != "high" && v != "low" {
                        return Err(bad(format!("performance is `high` or `low`, not `{v}`")));
                    }
                    target.performance = Some(v);
                    continue;
                }
                let (family, key) = match k.split_once('.') {
                    Some((f, key)) if FAMILIES.contains(&f) => (Some(f.to_string()), key),
                    Some((f, _)) => {
                        return Err(bad(format!(
                            "the tag family is microcosm, macrocosm or intercosm, not `{f}`"
                        )))
                    }
                    None => (None, k),
                };
                target.labels.push(Label {
                    family,
                    key: key.to_string(),
                    value: v.to_string(),
                    column: t.column,
                });
            } else if let Ok(ip) = t.text.parse::<IpAddr>() {
                if target.address.is_some() || target.node.is_some() {
                    return Err(self.fail(Some(t), Expect::Target, &[], "one node only".into()));
                }
                target.address = Some(ip);
            } else {
                if target.address.is_some() || target.node.is_some() {
                    return Err(self.fail(
                        Some(t),
                        Expect::Target,
                        &[],
                        format!("one node only, found `{}` too", t.text),
                    ));
                }
                self.at -= 1;
                target.node =
                    Some(self.name(Expect::Target, "a node name, an address or KEY=VALUE")?);
            }
        }
        let by_hand = target.node.is_some() || target.address.is_some();
        if by_hand && (!target.labels.is_empty() || target.performance.is_some()) {
            return Err(self.fail(
                start,
                Expect::Target,
                &[],
                "a node by name or address takes no tags or performance class".into(),
            ));
        }
        if required && target.is_empty() {
            return Err(self.fail(
                self.peek(),
                Expect::Target,
                &[],
                "expected a node name, an address or KEY=VALUE".into(),
            ));
        }
        Ok(target)
    }

    fn end(&mut self) -> Result<(), ParseError> {
        match self.peek() {
            None => Ok(()),
            t => Err(self.fail(
                t,
                Expect::End,
                &[],
                format!("unexpected `{}`", t.map(|t| t.text).unwrap_or_default()),
            )),
        }
    }

    fn create_vm(&mut self, name: Name) -> Result<Query, ParseError> {
        self.word(&["from"])?;
        let from = self.name(Expect::Source, "a spacesuit or VM name")?;
        let on = if self.peek().is_some() {
            self.word(&["on"])?;
            self.target(&[], true)?
        } else {
            Target::default()
        };
        Ok(Query::CreateVm { name, from, on })
    }

    fn spacesuit(&mut self, name: Name) -> Result<Query, ParseError> {
        self.word(&["from"])?;
        let from = self.name(Expect::Vm, "a VM name")?;
        self.end()?;
        Ok(Query::Spacesuit { name, from })
    }

    fn query(&mut self) -> Result<Query, ParseError> {
        let Some(first) = self.peek() else {
            return Ok(Query::Search { terms: Vec::new() });
        };
        let verb = first.text.to_ascii_lowercase();
        let q = match verb.as_str() {
            "create" => {
                self.next();
                let t = self.peek();
                self.word(&["vm", "spacesuit"])?;
                let kind = t.map(|t| t.text.to_ascii_lowercase()).unwrap_or_default();
                let name = self.name(Expect::NewName, "the new object's name")?;
                if kind == "vm" {
                    self.create_vm(name)?
                } else {
                    self.spacesuit(name)?
                }
            }
            "vm" | "spacesuit" | "node" | "satellite" => {
                self.next();
                let name = self.name(
                    if verb == "node" || verb == "satellite" {
                        Expect::Target
                    } else if verb == "vm" {
                        Expect::Vm
                    } else {
                        Expect::Source
                    },
                    "a name",
                )?;
                if self.peek().is_none() {
                    let kind = match verb.as_str() {
                        "vm" => "VirtualMachine",
                        "spacesuit" => "Spacesuit",
                        _ => "Satellite",
                    };
                    return Ok(Query::Get { kind, name });
                }
                match verb.as_str() {
                    "vm" => self.create_vm(name)?,
                    "spacesuit" => self.spacesuit(name)?,
                    // A node's name is all there is to it.
                    _ => return Err(self.end().expect_err("a word follows")),
                }
            }
            "relocate" | "move" => {
                self.next();
                let vm = self.name(Expect::Vm, "a VM name")?;
                let mut to = Target::default();
                let mut offline = false;
                loop {
                    if self.peek_is(&["offline"]) {
                        self.next();
                        offline = true;
                    } else if self.peek_is(&["to"]) {
                        self.next();
                        to = self.target(&["offline"], true)?;
                    } else if self.peek().is_some() {
                        self.word(&["to", "offline"])?;
                    } else {
                        break;
                    }
                }
                Query::Relocate { vm, to, offline }
            }
            "replica" | "snapshot" => {
                self.next();
                let vm = self.name(Expect::Vm, "a VM name")?;
                let name = if self.peek().is_some() {
                    Some(self.name(Expect::NewName, "the replica's name")?)
                } else {
                    None
                };
                self.end()?;
                Query::Replica { vm, name }
            }
            "replicas" => {
                self.next();
                let vm = if self.peek().is_some() {
                    self.word(&["of"])?;
                    Some(self.name(Expect::Vm, "a VM name")?)
                } else {
                    None
                };
                self.end()?;
                Query::Replicas { vm }
            }
            "revert" => {
                self.next();
                let vm = self.name(Expect::Vm, "a VM name")?;
                self.word(&["to"])?;
                let replica = self.name(Expect::Replica, "a replica's name")?;
                self.end()?;
                Query::Revert { vm, replica }
            }
            "console" | "start" | "stop" | "pause" | "resume" => {
                self.next();
                let vm = self.name(Expect::Vm, "a VM name")?;
                self.end()?;
                match verb.as_str() {
                    "console" => Query::Console { vm },
                    "start" | "resume" => Query::Power {
                        vm,
                        state: "Running",
                    },
                    "pause" => Query::Power {
                        vm,
                        state: "Paused",
                    },
                    _ => Query::Power {
                        vm,
                        state: "Stopped",
                    },
                }
            }
            "vms" => {
                self.next();
                if self.peek_is(&["on"]) {
                    self.next();
                    Query::Vms {
                        on: self.target(&[], true)?,
                    }
                } else {
                    Query::Vms {
                        on: self.target(&[], false)?,
                    }
                }
            }
            "nodes" | "satellites" => {
                self.next();
                Query::Nodes {
                    matching: self.target(&[], false)?,
                }
            }
            _ => {
                self.at = self.toks.len();
                Query::Search {
                    terms: self.toks.iter().map(|t| t.text.to_lowercase()).collect(),
                }
            }
        };
        self.end()?;
        Ok(q)
    }
}

/// Parse and plan `q` over `records` (the objects the asker may see):
/// the outcome as JSON with the manifest a run applies, or the refusal as
/// JSON (`code: Parse`, the column, what was expected, completions). The
/// web page's endpoint and the local API (`deorch do`) both answer this.
pub fn answer(
    q: &str,
    records: &[std::sync::Arc<crate::store::Record>],
) -> Result<(serde_json::Value, Option<String>), serde_json::Value> {
    let planned = parse(q)
        .and_then(|query| plan(q, &query, records))
        .map_err(|e| {
            serde_json::json!({
                "error": e.to_string(),
                "code": "Parse",
                "column": e.column,
                "expected": e.expected,
                "words": e.words,
                "suggestions": plan::suggestions(q, &e, records),
            })
        })?;
    let manifest = planned
        .plan
        .changes
        .then(|| planned.plan.manifest.clone())
        .flatten();
    Ok((
        serde_json::to_value(&planned).expect("outcomes serialize"),
        manifest,
    ))
}

/// Parse a query. Text no verb starts is a search.
pub fn parse(text: &str) -> Result<Query, ParseError> {
    if text.len() > MAX_QUERY {
        return Err(ParseError {
            column: MAX_QUERY + 1,
            expected: Expect::End,
            words: Vec::new(),
            message: format!("a query is at most {MAX_QUERY} bytes"),
            partial: None,
        });
    }
    let mut p = Parser {
        toks: tokens(text),
        at: 0,
        end_column: text.chars().count() + 1,
    };
    p.query()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(name: &str, column: usize) -> Name {
        Name {
            namespace: None,
            name: name.into(),
            column,
        }
    }

    #[test]
    fn the_issue_s_examples_parse() {
        let q = parse("create vm web1 from tiny on city=frankfurt performance=high").unwrap();
        let Query::CreateVm { name, from, on } = q else {
            panic!("{q:?}")
        };
        assert_eq!(name, n("web1", 11));
        assert_eq!(from, n("tiny", 21));
        assert_eq!(on.labels.len(), 1);
        assert_eq!(on.labels[0].key, "city");
        assert_eq!(on.labels[0].value, "frankfurt");
        assert_eq!(on.labels[0].family, None);
        assert_eq!(on.performance.as_deref(), Some("high"));
        assert!(matches!(
            parse("vm web2 from web1").unwrap(),
            Query::CreateVm { .. }
        ));
        assert!(matches!(
            parse("spacesuit base from web1").unwrap(),
            Query::Spacesuit { .. }
        ));
        assert_eq!(
            parse("relocate web1").unwrap(),
            Query::Relocate {
                vm: n("web1", 10),
                to: Target::default(),
                offline: false
            }
        );
        let Query::Relocate { to, .. } = parse("relocate web1 to 10.0.0.7").unwrap() else {
            panic!()
        };
        assert_eq!(to.address, Some("10.0.0.7".parse().unwrap()));
        let Query::Relocate { to, offline, .. } = parse("relocate web1 to sat-b offline").unwrap()
        else {
            panic!()
        };
        assert_eq!(to.node.unwrap().name, "sat-b");
        assert!(offline);
        assert!(matches!(
            parse("replica web1").unwrap(),
            Query::Replica { name: None, .. }
        ));
        assert!(matches!(
            parse("replicas of web1").unwrap(),
            Query::Replicas { vm: Some(_) }
        ));
        assert!(matches!(
            parse("revert web1 to r1").unwrap(),
            Query::Revert { .. }
        ));
        assert!(matches!(
            parse("console web1").unwrap(),
            Query::Console { .. }
        ));
        assert!(matches!(
            parse("stop web1").unwrap(),
            Query::Power {
                state: "Stopped",
                ..
            }
        ));
        assert!(matches!(
            parse("pause web1").unwrap(),
            Query::Power {
                state: "Paused",
                ..
            }
        ));
        assert!(matches!(
            parse("resume web1").unwrap(),
            Query::Power {
                state: "Running",
                ..
            }
        ));
        let Query::Vms { on } = parse("vms on rack=r7").unwrap() else {
            panic!()
        };
        assert_eq!(on.labels[0].key, "rack");
        let Query::Nodes { matching } = parse("nodes performance=high").unwrap() else {
            panic!()
        };
        assert_eq!(matching.performance.as_deref(), Some("high"));
        assert_eq!(
            parse("  Frankfurt  web ").unwrap(),
            Query::Search {
                terms: vec!["frankfurt".into(), "web".into()]
            }
        );
        assert!(matches!(
            parse("vm prod/web1").unwrap(),
            Query::Get {
                kind: "VirtualMachine",
                name: Name {
                    namespace: Some(_),
                    ..
                }
            }
        ));
    }

    #[test]
    fn errors_name_the_column_and_what_was_expected() {
        let e = parse("create vm web1 form tiny").unwrap_err();
        assert_eq!(e.column, 16);
        assert_eq!(e.expected, Expect::Word);
        assert_eq!(e.words, vec!["from"]);
        assert_eq!(e.message, "expected `from`, found `form`");
        let e = parse("relocate").unwrap_err();
        assert_eq!((e.column, e.expected), (9, Expect::Vm));
        let e = parse("relocate web1 to").unwrap_err();
        assert_eq!((e.column, e.expected), (17, Expect::Target));
        let e = parse("relocate web1 to 10.0.0.7 rack=r1").unwrap_err();
        assert_eq!(e.column, 18, "{e}");
        let e = parse("nodes performance=fast").unwrap_err();
        assert_eq!(e.column, 7);
        assert!(e.message.contains("high"), "{e}");
        let e = parse("nodes cosmos.rack=r1").unwrap_err();
        assert!(e.message.contains("microcosm"), "{e}");
        let e = parse("create vm Web1 from tiny").unwrap_err();
        assert_eq!((e.column, e.expected), (11, Expect::NewName));
        let e = parse("stop web1 now").unwrap_err();
        assert_eq!((e.column, e.expected), (11, Expect::End));
        let e = parse("create pod x").unwrap_err();
        assert_eq!(e.words, vec!["vm", "spacesuit"]);
        assert_eq!(e.partial, None);
        let e = parse("create v").unwrap_err();
        assert_eq!(e.partial.as_deref(), Some("v"));
        let e = parse("create v ").unwrap_err();
        assert_eq!(e.partial, None, "a word the user ended with a space");
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let e = parse("vm é").unwrap_err();
        assert_eq!(e.column, 4);
        assert_eq!(
            parse(&"x".repeat(MAX_QUERY + 1)).unwrap_err().column,
            MAX_QUERY + 1
        );
    }
}
