//! A parsed [`Query`] resolved against the objects the asker may see: the
//! plan (what would change, as a sentence, the CLI command that does the
//! same, and the manifest to apply) and the rows to show.

use serde::Serialize;
use serde_json::{json, Value};

use super::{Expect, Label, Name, ParseError, Query, Target, VERBS};
use crate::model::{Kind, API_VERSION, DEFAULT_NAMESPACE, REVERT_ANNOTATION};
use std::sync::Arc;

use crate::store::Record;

/// What a query comes to.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// What would happen.
    pub plan: Plan,
    /// The objects to show.
    pub results: Vec<Row>,
    /// Whole queries that complete or correct this one.
    pub suggestions: Vec<String>,
}

/// What a query would do.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// `create-vm`, `relocate`, `vms`, `search`, ...
    pub verb: &'static str,
    /// One sentence.
    pub summary: String,
    /// The same with the CLI.
    pub cli: String,
    /// Whether running it changes desired state.
    pub changes: bool,
    /// The YAML a run applies (as the user's session).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
}

/// One object shown.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Kind.
    pub kind: &'static str,
    /// Namespace ("" for cluster-scoped kinds).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its status' phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The satellite it runs or lives on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// A short line of what matters about it.
    pub detail: String,
    /// The CLI command that shows it.
    pub cli: String,
    /// A satellite's page, where it serves one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A satellite's address (its node ID): what a hand-over to its page
    /// names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// At most this many suggestions.
const SUGGESTIONS: usize = 8;
/// At most this many rows.
pub const ROWS: usize = 500;

/// Tag keys known without a satellite that carries them.
const KNOWN_KEYS: &[(&str, &[&str])] = &[
    (
        "microcosm",
        &["row", "rack", "cpu", "network", "room", "host"],
    ),
    (
        "macrocosm",
        &[
            "region",
            "city",
            "country",
            "continent",
            "zone",
            "area",
            "site",
        ],
    ),
    (
        "intercosm",
        &["team", "provider", "owner", "project", "tenant"],
    ),
];

struct World<'a> {
    records: &'a [Arc<Record>],
}

impl<'a> World<'a> {
    /// Every live record.
    fn all(&self) -> impl Iterator<Item = &'a Record> + 'a {
        self.records.iter().map(|r| &**r).filter(|r| !r.deleted)
    }

    fn live(&self, kind: Kind) -> impl Iterator<Item = &'a Record> + 'a {
        self.all().filter(move |r| r.key.kind == kind)
    }

    fn find(&self, kind: Kind, ns: &str, name: &str) -> Option<&'a Record> {
        let ns = if kind.namespaced() { ns } else { "" };
        self.live(kind)
            .find(|r| r.key.name == name && r.key.namespace == ns)
    }

    fn satellites(&self) -> impl Iterator<Item = &'a Record> + 'a {
        self.live(Kind::Satellite)
    }

    /// The tag family of `key`: the one a satellite uses it in, else the
    /// usual one.
    fn family(&self, l: &Label) -> Option<String> {
        if let Some(f) = &l.family {
            return Some(f.clone());
        }
        for s in self.satellites() {
            for f in super::FAMILIES {
                if s.object["spec"]["tags"][f].get(&l.key).is_some() {
                    return Some((*f).to_string());
                }
            }
        }
        KNOWN_KEYS
            .iter()
            .find(|(_, keys)| keys.contains(&l.key.as_str()))
            .map(|(f, _)| (*f).to_string())
    }

    fn node_matches(&self, sat: &Record, t: &Target) -> bool {
        let spec = &sat.object["spec"];
        if let Some(n) = &t.node {
            if sat.key.name != n.name {
                return false;
            }
        }
        if let Some(a) = &t.address {
            let a = a.to_string();
            let has = spec["addresses"]
                .as_array()
                .is_some_and(|v| v.iter().any(|x| x.as_str() == Some(a.as_str())));
            if !has {
                return false;
            }
        }
        if let Some(p) = &t.performance {
            if spec["performance"].as_str() != Some(p.as_str()) {
                return false;
            }
        }
        t.labels.iter().all(|l| {
            let family = self.family(l).unwrap_or_default();
            spec["tags"][family.as_str()][l.key.as_str()].as_str() == Some(l.value.as_str())
        })
    }
}

fn ns_of(n: &Name) -> &str {
    n.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
}

fn shown(n: &Name) -> String {
    match &n.namespace {
        Some(ns) => format!("{ns}/{}", n.name),
        None => n.name.clone(),
    }
}

fn ns_flag(n: &Name) -> String {
    match &n.namespace {
        Some(ns) if ns != DEFAULT_NAMESPACE => format!(" -n {ns}"),
        _ => String::new(),
    }
}

fn not_found(n: &Name, expected: Expect, what: &str) -> ParseError {
    ParseError {
        column: n.column,
        expected,
        words: Vec::new(),
        message: format!("no {what} `{}`", shown(n)),
        partial: Some(n.name.clone()),
    }
}

/// A replica's or relocation's default name, `VM-YYYYMMDD-HHMMSS`.
pub fn default_name(vm: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let ts = crate::reconcile::status::rfc3339(secs * 1000);
    // 2026-11-28T22:40:01Z -> 20261128-224001
    let digits: String = ts.chars().filter(char::is_ascii_digit).collect();
    // The name stays a DNS label (63 at most): `-YYYYMMDD-HHMMSS` is 16.
    let vm = vm[..vm.len().min(47)].trim_end_matches('-');
    format!(
        "{vm}-{}-{}",
        &digits[..8.min(digits.len())],
        &digits[8.min(digits.len())..]
    )
}

/// An object as it was applied, ready to be applied again.
pub fn desired(record: &Record) -> Value {
    let mut o = record.object.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("status");
    }
    if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in ["generation", "resourceVersion", "uid", "creationTimestamp"] {
            meta.remove(k);
        }
    }
    o
}

/// The placement (or relocation target) `t` asks for, `None` when empty.
fn placement(w: &World, t: &Target) -> Result<Option<Value>, ParseError> {
    if t.is_empty() {
        return Ok(None);
    }
    let mut p = json!({});
    if let Some(n) = &t.node {
        p["node"] = json!(n.name);
    }
    if let Some(a) = &t.address {
        p["address"] = json!(a.to_string());
    }
    for l in &t.labels {
        let Some(family) = w.family(l) else {
            return Err(ParseError {
                column: l.column,
                expected: Expect::Target,
                words: Vec::new(),
                message: format!(
                    "no satellite has a tag `{}`: write FAMILY.{}={} (microcosm, macrocosm or intercosm)",
                    l.key, l.key, l.value
                ),
                partial: None,
            });
        };
        p["selector"][family.as_str()]["matchLabels"][l.key.as_str()] = json!(l.value);
    }
    if let Some(perf) = &t.performance {
        p["performance"] = json!(perf);
    }
    Ok(Some(p))
}

/// The target as the CLI's flags.
fn target_flags(w: &World, t: &Target) -> String {
    let mut s = String::new();
    if let Some(n) = &t.node {
        s += &format!(" --to {}", n.name);
    }
    if let Some(a) = &t.address {
        s += &format!(" --to {a}");
    }
    for l in &t.labels {
        let family = w.family(l).unwrap_or_default();
        s += &format!(" --select {family}.{}={}", l.key, l.value);
    }
    if let Some(p) = &t.performance {
        s += &format!(" --performance {p}");
    }
    s
}

/// `t` in words.
fn target_words(t: &Target) -> String {
    let mut parts = Vec::new();
    if let Some(n) = &t.node {
        parts.push(format!("satellite {}", n.name));
    }
    if let Some(a) = &t.address {
        parts.push(format!("the satellite at {a}"));
    }
    for l in &t.labels {
        parts.push(format!("{}={}", l.key, l.value));
    }
    if let Some(p) = &t.performance {
        parts.push(format!("performance {p}"));
    }
    parts.join(", ")
}

fn quoted(text: &str) -> String {
    format!("'{}'", text.trim().replace('\'', "'\\''"))
}

/// `records` with the live members the radar knows: a member with no
/// Satellite object (nodes make their own, and keep it to themselves)
/// gets one made from its gossiped status; each carries its page and
/// figures in its status. The result is in the store's order (kind, then
/// name), as the rows are.
pub fn with_members(
    records: Vec<Arc<Record>>,
    members: &[crate::node::cluster::RadarNode],
) -> Vec<Arc<Record>> {
    if members.is_empty() {
        return records;
    }
    let mut out: Vec<Arc<Record>> = Vec::with_capacity(records.len() + members.len());
    let mut known = std::collections::BTreeSet::new();
    for r in records {
        let m = (r.key.kind == Kind::Satellite && !r.deleted)
            .then(|| members.iter().find(|m| m.name == r.key.name))
            .flatten();
        match m {
            Some(m) => {
                known.insert(m.name.as_str());
                let mut r = (*r).clone();
                let mut st = r.status.take().unwrap_or_else(|| json!({}));
                member_status(&mut st, m);
                r.status = Some(st);
                out.push(Arc::new(r));
            }
            None => out.push(r),
        }
    }
    for m in members.iter().filter(|m| !known.contains(m.name.as_str())) {
        let mut st = json!({"phase": "Ready"});
        member_status(&mut st, m);
        out.push(Arc::new(Record {
            key: crate::model::ObjectKey::new(Kind::Satellite, None, &m.name),
            generation: 0,
            source: crate::store::SourceId("gossip".into()),
            hash: String::new(),
            object: json!({
                "apiVersion": API_VERSION,
                "kind": "Satellite",
                "metadata": {"name": m.name},
                "spec": {
                    "tags": m.tags,
                    "performance": m.performance,
                    "unschedulable": m.unschedulable,
                },
            }),
            status: Some(st),
            deleted: false,
            updated_ms: 0,
        }));
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// What the radar says of member `m`, into a Satellite's status.
fn member_status(st: &mut Value, m: &crate::node::cluster::RadarNode) {
    st["nodeId"] = json!(m.node_id);
    st["runningVms"] = json!(m.vms);
    st["loadMilli"] = json!(m.load_milli);
    st["free"] = json!({"cpuMillis": m.free[0], "memory": m.free[1], "storage": m.free[2]});
    if !m.page.is_empty() {
        st["page"] = json!(m.page);
    }
}

fn yaml(object: &Value) -> String {
    serde_saphyr::to_string(object).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}

fn row(r: &Record) -> Row {
    let st = r.status.as_ref().unwrap_or(&Value::Null);
    let spec = &r.object["spec"];
    let kind = r.key.kind.as_str();
    let mut detail = Vec::new();
    let node = match r.key.kind {
        Kind::Satellite => {
            if let Some(a) = spec["addresses"].as_array() {
                detail.extend(a.iter().filter_map(|x| x.as_str().map(str::to_string)));
            }
            for f in super::FAMILIES {
                if let Some(tags) = spec["tags"][f].as_object() {
                    for (k, v) in tags {
                        detail.push(format!("{k}={}", v.as_str().unwrap_or("")));
                    }
                }
            }
            if let Some(p) = spec["performance"].as_str() {
                detail.push(format!("performance={p}"));
            }
            if let Some(n) = st["runningVms"].as_u64() {
                detail.push(format!("{n} VMs"));
            }
            Some(r.key.name.clone())
        }
        Kind::VirtualMachine => {
            if let Some(s) = spec["spacesuit"].as_str() {
                detail.push(format!("from {s}"));
            }
            if let Some(nics) = st["nics"].as_object() {
                for n in nics.values() {
                    if let Some(ip) = n["ipv4"].as_str() {
                        detail.push(ip.to_string());
                    }
                }
            }
            if let Some(c) = st["console"].as_object() {
                if let (Some(h), Some(p)) = (c.get("host"), c.get("vncPort")) {
                    detail.push(format!(
                        "vnc {}:{}",
                        h.as_str().unwrap_or(""),
                        p.as_u64().unwrap_or(0)
                    ));
                }
            }
            st["node"].as_str().map(str::to_string)
        }
        Kind::Replica | Kind::Relocation => {
            if let Some(vm) = spec["virtualMachine"]["name"].as_str() {
                detail.push(format!("of {vm}"));
            }
            st["node"]
                .as_str()
                .or(st["source"].as_str())
                .map(str::to_string)
        }
        _ => st["node"].as_str().map(str::to_string),
    };
    if let Some(m) = st["message"].as_str() {
        detail.push(m.to_string());
    }
    let ns = if r.key.namespace.is_empty() || r.key.namespace == DEFAULT_NAMESPACE {
        String::new()
    } else {
        format!(" -n {}", r.key.namespace)
    };
    Row {
        kind,
        namespace: r.key.namespace.clone(),
        name: r.key.name.clone(),
        phase: st["phase"].as_str().map(str::to_string),
        node,
        detail: detail.join(" · "),
        cli: format!(
            "deorch describe {} {}{ns}",
            kind.to_ascii_lowercase(),
            r.key.name
        ),
        url: (r.key.kind == Kind::Satellite)
            .then(|| st["page"].as_str().map(str::to_string))
            .flatten(),
        address: (r.key.kind == Kind::Satellite)
            .then(|| st["nodeId"].as_str().map(str::to_string))
            .flatten(),
    }
}

/// Whether a search term (lower case) is in what a search matches: the
/// kind, namespace and name, labels, tags, addresses, the satellite ID
/// and spacesuit, and the status' node, NICs and phase (keys and values).
/// Looked at in place: building a text per record per keystroke cost
/// ~10 ms with 10,000 objects.
fn has_term(r: &Record, term: &str) -> bool {
    fn within(s: &str, term: &str) -> bool {
        if s.bytes().any(|b| b.is_ascii_uppercase()) || !s.is_ascii() {
            s.to_lowercase().contains(term)
        } else {
            s.contains(term)
        }
    }
    fn value_has(v: &Value, term: &str) -> bool {
        match v {
            Value::String(s) => within(s, term),
            Value::Number(n) => {
                term.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                    && n.to_string().contains(term)
            }
            Value::Bool(b) => within(if *b { "true" } else { "false" }, term),
            Value::Array(a) => a.iter().any(|x| value_has(x, term)),
            Value::Object(o) => o.iter().any(|(k, x)| within(k, term) || value_has(x, term)),
            Value::Null => false,
        }
    }
    if within(r.key.kind.as_str(), term)
        || within(&r.key.namespace, term)
        || within(&r.key.name, term)
    {
        return true;
    }
    let o = &r.object;
    let spec = [
        &o["metadata"]["labels"],
        &o["spec"]["tags"],
        &o["spec"]["addresses"],
        &o["spec"]["satelliteId"],
        &o["spec"]["spacesuit"],
    ];
    if spec.iter().any(|v| value_has(v, term)) {
        return true;
    }
    r.status.as_ref().is_some_and(|st| {
        [&st["node"], &st["nics"], &st["phase"]]
            .iter()
            .any(|v| value_has(v, term))
    })
}

fn plan_only(verb: &'static str, summary: String, cli: String) -> Plan {
    Plan {
        verb,
        summary,
        cli,
        changes: false,
        manifest: None,
    }
}

fn change(verb: &'static str, summary: String, cli: String, object: &Value) -> Plan {
    Plan {
        verb,
        summary,
        cli,
        changes: true,
        manifest: Some(yaml(object)),
    }
}

fn vm_record<'a>(w: &World<'a>, n: &Name) -> Result<&'a Record, ParseError> {
    w.find(Kind::VirtualMachine, ns_of(n), &n.name)
        .ok_or_else(|| not_found(n, Expect::Vm, "VM"))
}

/// Resolve `q` (typed as `text`) against `records`, the objects the asker
/// may see.
pub fn plan(text: &str, q: &Query, records: &[Arc<Record>]) -> Result<Outcome, ParseError> {
    let w = World { records };
    let typed = quoted(text);
    let mut results = Vec::new();
    let plan = match q {
        Query::CreateVm { name, from, on } => {
            let ns = ns_of(name);
            if w.find(Kind::VirtualMachine, ns, &name.name).is_some() {
                return Err(ParseError {
                    column: name.column,
                    expected: Expect::NewName,
                    words: Vec::new(),
                    message: format!("VM `{}` exists already", shown(name)),
                    partial: None,
                });
            }
            let place = placement(&w, on)?;
            let suit = w.find(Kind::Spacesuit, ns_of(from), &from.name);
            let (object, what) = if suit.is_some() {
                let mut spec = json!({"spacesuit": from.name});
                if let Some(p) = place.clone() {
                    spec["placement"] = p;
                }
                (
                    json!({"apiVersion": API_VERSION, "kind": "VirtualMachine",
                        "metadata": {"name": name.name, "namespace": ns}, "spec": spec}),
                    format!("spacesuit {}", shown(from)),
                )
            } else {
                let src = w
                    .find(Kind::VirtualMachine, ns_of(from), &from.name)
                    .ok_or_else(|| not_found(from, Expect::Source, "spacesuit or VM"))?;
                let mut object = desired(src);
                object["metadata"] = json!({"name": name.name, "namespace": ns});
                let spec = &mut object["spec"];
                if let Some(disks) = spec.get_mut("disks").and_then(Value::as_array_mut) {
                    for d in disks {
                        let disk = d["name"].clone();
                        d["source"] = json!({"virtualMachine": {"name": from.name, "namespace": ns_of(from), "disk": disk}});
                    }
                }
                // A copy gets MACs and addresses of its own.
                // (`get_mut`: indexing a missing key would insert a null.)
                if let Some(nics) = spec.get_mut("nics").and_then(Value::as_array_mut) {
                    for n in nics {
                        if let Some(n) = n.as_object_mut() {
                            n.remove("mac");
                            n.remove("ipv4");
                        }
                    }
                }
                if let Some(s) = spec.as_object_mut() {
                    s.remove("placement");
                    s.remove("fastr");
                    s.remove("replicaPolicy");
                }
                if let Some(p) = place.clone() {
                    spec["placement"] = p;
                }
                results.push(row(src));
                (
                    object,
                    format!("VM {} (its disks as they are now)", shown(from)),
                )
            };
            let wherever = if on.is_empty() {
                "where the radar elects".to_string()
            } else {
                format!("on {}", target_words(on))
            };
            change(
                "create-vm",
                format!("Create VM {} from {what}, {wherever}.", shown(name)),
                format!("deorch do {typed}"),
                &object,
            )
        }
        Query::Spacesuit { name, from } => {
            let ns = ns_of(name);
            if w.find(Kind::Spacesuit, ns, &name.name).is_some() {
                return Err(ParseError {
                    column: name.column,
                    expected: Expect::NewName,
                    words: Vec::new(),
                    message: format!("spacesuit `{}` exists already", shown(name)),
                    partial: None,
                });
            }
            let src = vm_record(&w, from)?;
            let mut spec = json!({"source": {"virtualMachine": {"name": from.name, "namespace": ns_of(from)}}});
            for k in ["boot", "machine", "firmware", "cpu", "memory"] {
                if let Some(v) = src.object["spec"].get(k) {
                    spec[k] = v.clone();
                }
            }
            results.push(row(src));
            change(
                "spacesuit-from",
                format!(
                    "Make spacesuit {} from the first disk of VM {}, on the node that holds it.",
                    shown(name),
                    shown(from)
                ),
                format!("deorch do {typed}"),
                &json!({"apiVersion": API_VERSION, "kind": "Spacesuit",
                    "metadata": {"name": name.name, "namespace": ns}, "spec": spec}),
            )
        }
        Query::Relocate { vm, to, offline } => {
            let src = vm_record(&w, vm)?;
            results.push(row(src));
            let mut spec = json!({"virtualMachine": {"name": vm.name}});
            if let Some(p) = placement(&w, to)? {
                spec["target"] = p;
            }
            if *offline {
                spec["mode"] = json!("Offline");
            }
            let name = default_name(&vm.name);
            let wherever = if to.is_empty() {
                "to the satellite the radar elects".to_string()
            } else {
                format!("to {}", target_words(to))
            };
            change(
                "relocate",
                format!(
                    "Move VM {} {}{wherever}, with its disks.",
                    shown(vm),
                    if *offline {
                        "(stopped, copied, started) "
                    } else {
                        "live "
                    }
                ),
                format!(
                    "deorch relocate {}{}{}{}",
                    vm.name,
                    target_flags(&w, to),
                    if *offline { " --offline" } else { "" },
                    ns_flag(vm)
                ),
                &json!({"apiVersion": API_VERSION, "kind": "Relocation",
                    "metadata": {"name": name, "namespace": ns_of(vm)}, "spec": spec}),
            )
        }
        Query::Replica { vm, name } => {
            let src = vm_record(&w, vm)?;
            results.push(row(src));
            let rname = name
                .as_ref()
                .map(|n| n.name.clone())
                .unwrap_or_else(|| default_name(&vm.name));
            change(
                "replica",
                format!(
                    "Take replica {rname} of VM {}: all its disks, at one instant.",
                    shown(vm)
                ),
                format!(
                    "deorch replica create {}{}{}",
                    vm.name,
                    name.as_ref()
                        .map(|n| format!(" --name {}", n.name))
                        .unwrap_or_default(),
                    ns_flag(vm)
                ),
                &json!({"apiVersion": API_VERSION, "kind": "Replica",
                    "metadata": {"name": rname, "namespace": ns_of(vm)},
                    "spec": {"virtualMachine": {"name": vm.name}}}),
            )
        }
        Query::Replicas { vm } => {
            if let Some(v) = vm {
                vm_record(&w, v)?;
            }
            results.extend(
                w.live(Kind::Replica)
                    .filter(|r| {
                        vm.as_ref().is_none_or(|v| {
                            r.key.namespace == ns_of(v)
                                && r.object["spec"]["virtualMachine"]["name"].as_str()
                                    == Some(v.name.as_str())
                        })
                    })
                    .map(row),
            );
            plan_only(
                "replicas",
                match vm {
                    Some(v) => format!("The replicas of VM {}.", shown(v)),
                    None => "Every replica.".into(),
                },
                format!(
                    "deorch replica list{}",
                    vm.as_ref()
                        .map(|v| format!(" {}{}", v.name, ns_flag(v)))
                        .unwrap_or_default()
                ),
            )
        }
        Query::Revert { vm, replica } => {
            let src = vm_record(&w, vm)?;
            let rep = w
                .find(Kind::Replica, ns_of(vm), &replica.name)
                .filter(|r| {
                    r.object["spec"]["virtualMachine"]["name"].as_str() == Some(vm.name.as_str())
                })
                .ok_or_else(|| not_found(replica, Expect::Replica, "replica of this VM"))?;
            results.push(row(src));
            results.push(row(rep));
            let mut object = desired(src);
            object["metadata"]["annotations"][REVERT_ANNOTATION] = json!(replica.name);
            change(
                "revert",
                format!(
                    "Revert VM {} to replica {}: it stops, its disks become copies of the replica's, and it starts again. The present disks are not kept: take `replica {}` first to keep them (the CLI command below does).",
                    shown(vm),
                    replica.name,
                    vm.name
                ),
                format!("deorch replica revert {}{}", replica.name, ns_flag(vm)),
                &object,
            )
        }
        Query::Console { vm } => {
            let src = vm_record(&w, vm)?;
            results.push(row(src));
            plan_only(
                "console",
                format!(
                    "The console of VM {}: a one-time password from the node that runs it.",
                    shown(vm)
                ),
                format!("deorch console {}{}", vm.name, ns_flag(vm)),
            )
        }
        Query::Power { vm, state } => {
            let src = vm_record(&w, vm)?;
            results.push(row(src));
            let mut object = desired(src);
            object["spec"]["powerState"] = json!(state);
            let (verb, sentence) = match *state {
                "Running" => ("start", "Start"),
                "Paused" => ("pause", "Pause"),
                _ => ("stop", "Stop"),
            };
            change(
                verb,
                format!("{sentence} VM {}.", shown(vm)),
                format!("deorch vm {verb} {}{}", vm.name, ns_flag(vm)),
                &object,
            )
        }
        Query::Get { kind, name } => {
            let k = match *kind {
                "VirtualMachine" => Kind::VirtualMachine,
                "Spacesuit" => Kind::Spacesuit,
                _ => Kind::Satellite,
            };
            let r = w.find(k, ns_of(name), &name.name).ok_or_else(|| {
                let expected = match k {
                    Kind::VirtualMachine => Expect::Vm,
                    Kind::Spacesuit => Expect::Source,
                    _ => Expect::Target,
                };
                not_found(name, expected, &k.as_str().to_ascii_lowercase())
            })?;
            results.push(row(r));
            plan_only(
                "get",
                format!("{} {}.", k.as_str(), shown(name)),
                format!(
                    "deorch describe {} {}{}",
                    k.as_str().to_ascii_lowercase(),
                    name.name,
                    ns_flag(name)
                ),
            )
        }
        Query::Vms { on } => {
            placement(&w, on)?;
            let sats: Vec<&Record> = w.satellites().filter(|s| w.node_matches(s, on)).collect();
            results.extend(
                w.live(Kind::VirtualMachine)
                    .filter(|r| {
                        on.is_empty()
                            || r.status
                                .as_ref()
                                .and_then(|s| s["node"].as_str())
                                .is_some_and(|n| sats.iter().any(|s| s.key.name == n))
                    })
                    .take(ROWS)
                    .map(row),
            );
            plan_only(
                "vms",
                if on.is_empty() {
                    "Every VM.".into()
                } else {
                    format!("The VMs running on {}.", target_words(on))
                },
                "deorch get vms".into(),
            )
        }
        Query::Nodes { matching } => {
            placement(&w, matching)?;
            results.extend(
                w.satellites()
                    .filter(|s| w.node_matches(s, matching))
                    .map(row),
            );
            plan_only(
                "nodes",
                if matching.is_empty() {
                    "Every satellite.".into()
                } else {
                    format!("The satellites with {}.", target_words(matching))
                },
                "deorch get satellites".into(),
            )
        }
        Query::Search { terms } => {
            if !terms.is_empty() {
                let mut hits: Vec<(bool, &Record)> = w
                    .all()
                    .filter(|r| terms.iter().all(|t| has_term(r, t)))
                    .map(|r| (!terms.iter().any(|t| r.key.name.contains(t.as_str())), r))
                    .collect();
                // Name matches first.
                hits.sort_by_key(|(by_name, r)| (*by_name, r.key.name.clone()));
                results.extend(hits.into_iter().take(ROWS).map(|(_, r)| row(r)));
            }
            plan_only(
                "search",
                if terms.is_empty() {
                    "Type a command, or words to search names, tags and addresses.".into()
                } else {
                    format!(
                        "Objects whose name, tags or addresses hold {}.",
                        terms.join(" and ")
                    )
                },
                format!("deorch do {typed}"),
            )
        }
    };
    results.truncate(ROWS);
    let suggestions = match q {
        Query::Search { terms } => search_suggestions(&w, text, terms),
        _ => Vec::new(),
    };
    Ok(Outcome {
        plan,
        results,
        suggestions,
    })
}

/// For a query that is a search: the verbs its first word begins, then
/// names that begin with its last word.
fn search_suggestions(w: &World, text: &str, terms: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    match terms {
        [] => out.extend(VERBS.iter().map(|v| format!("{v} "))),
        [one] if !text.ends_with(char::is_whitespace) => {
            out.extend(
                VERBS
                    .iter()
                    .filter(|v| v.starts_with(one.as_str()))
                    .map(|v| format!("{v} ")),
            );
        }
        _ => {}
    }
    if let Some(last) = terms.last() {
        if !text.ends_with(char::is_whitespace) {
            // The text before the last word as typed (`last` is lower
            // case, whose length may differ: `İ` is 2 bytes, `i̇` 3).
            let start = text
                .char_indices()
                .rev()
                .find(|(_, c)| c.is_whitespace())
                .map_or(0, |(i, c)| i + c.len_utf8());
            let stem = &text[..start];
            for r in w.all() {
                if r.key.name.starts_with(last.as_str()) && r.key.name != *last {
                    out.push(format!("{stem}{}", r.key.name));
                }
            }
        }
    }
    out.dedup();
    out.truncate(SUGGESTIONS);
    out
}

/// Whole queries that would complete or correct `text` where `e` stopped
/// it.
pub fn suggestions(text: &str, e: &ParseError, records: &[Arc<Record>]) -> Vec<String> {
    let w = World { records };
    let mut stem: String = text.chars().take(e.column.saturating_sub(1)).collect();
    let partial = e.partial.clone().unwrap_or_default();
    // `start` + `web1` is `start web1`: a word wanted after the last one
    // the user finished without a space.
    if partial.is_empty() && !stem.is_empty() && !stem.ends_with(char::is_whitespace) {
        stem.push(' ');
    }
    let names = |kind: Kind| -> Vec<String> { w.live(kind).map(|r| r.key.name.clone()).collect() };
    let candidates: Vec<String> = match e.expected {
        Expect::Word => e.words.iter().map(|w| format!("{w} ")).collect(),
        Expect::Vm => names(Kind::VirtualMachine),
        Expect::Source => {
            let mut n = names(Kind::Spacesuit);
            n.extend(names(Kind::VirtualMachine));
            n
        }
        Expect::Replica => names(Kind::Replica),
        Expect::Target => {
            let mut n = names(Kind::Satellite);
            n.push("performance=high".into());
            n.push("performance=low".into());
            for s in w.satellites() {
                for f in super::FAMILIES {
                    if let Some(tags) = s.object["spec"]["tags"][f].as_object() {
                        for (k, v) in tags {
                            n.push(format!("{k}={}", v.as_str().unwrap_or("")));
                        }
                    }
                }
            }
            n
        }
        Expect::NewName | Expect::End => Vec::new(),
    };
    let mut out: Vec<String> = candidates
        .into_iter()
        .filter(|c| c.starts_with(partial.as_str()) && *c != partial)
        .map(|c| format!("{stem}{c}"))
        .collect();
    out.sort();
    out.dedup();
    out.truncate(SUGGESTIONS);
    out
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;
    use crate::model::ObjectKey;
    use crate::store::SourceId;

    fn rec(kind: Kind, name: &str, object: Value, status: Value) -> Record {
        let mut object = object;
        object["apiVersion"] = json!(API_VERSION);
        object["kind"] = json!(kind.as_str());
        object["metadata"]["name"] = json!(name);
        Record {
            key: ObjectKey::new(kind, None, name),
            generation: 1,
            source: SourceId("test".into()),
            hash: String::new(),
            object,
            status: (!status.is_null()).then_some(status),
            deleted: false,
            updated_ms: 0,
        }
    }

    fn world() -> Vec<Arc<Record>> {
        [
            rec(
                Kind::Satellite,
                "sat-a",
                json!({"spec": {"addresses": ["10.0.0.7"], "tags": {"macrocosm": {"city": "frankfurt"}, "microcosm": {"rack": "r7"}}, "performance": "high"}}),
                Value::Null,
            ),
            rec(
                Kind::Satellite,
                "sat-b",
                json!({"spec": {"addresses": ["10.0.0.8"], "tags": {"macrocosm": {"city": "paris"}}, "performance": "low"}}),
                Value::Null,
            ),
            rec(
                Kind::Spacesuit,
                "tiny",
                json!({"spec": {"memory": "128Mi"}}),
                Value::Null,
            ),
            rec(
                Kind::VirtualMachine,
                "web1",
                json!({"spec": {"spacesuit": "tiny", "disks": [{"name": "data", "source": {"blank": {}}, "size": "8Mi"}], "nics": [{"name": "eth0", "network": "lan", "mac": "52:54:00:00:00:01"}]}}),
                json!({"phase": "Running", "node": "sat-a", "nics": {"eth0": {"ipv4": "192.168.7.20"}},
                "console": {"host": "10.0.0.7", "vncPort": 5901}}),
            ),
            rec(
                Kind::VirtualMachine,
                "web2",
                json!({"spec": {"spacesuit": "tiny"}}),
                json!({"phase": "Running", "node": "sat-b"}),
            ),
            rec(
                Kind::Replica,
                "web1-r1",
                json!({"spec": {"virtualMachine": {"name": "web1"}}}),
                json!({"phase": "Ready", "node": "sat-a"}),
            ),
        ]
        .into_iter()
        .map(Arc::new)
        .collect()
    }

    fn run(text: &str) -> Result<Outcome, ParseError> {
        let recs = world();
        let q = parse(text)?;
        plan(text, &q, &recs)
    }

    fn manifest(o: &Outcome) -> Value {
        serde_saphyr::from_str(o.plan.manifest.as_deref().unwrap()).unwrap()
    }

    #[test]
    fn a_vm_from_a_spacesuit_on_tags_is_a_manifest_that_validates() {
        let o = run("create vm web3 from tiny on city=frankfurt performance=high").unwrap();
        assert!(o.plan.changes);
        assert_eq!(o.plan.verb, "create-vm");
        let m = manifest(&o);
        assert_eq!(m["spec"]["spacesuit"], "tiny");
        assert_eq!(
            m["spec"]["placement"]["selector"]["macrocosm"]["matchLabels"]["city"],
            "frankfurt"
        );
        assert_eq!(m["spec"]["placement"]["performance"], "high");
        let parsed = crate::manifest::parse_str(
            std::path::Path::new("<plan>"),
            o.plan.manifest.as_deref().unwrap(),
        );
        assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
        assert_eq!(parsed.documents.len(), 1);
        assert!(
            o.plan.summary.contains("city=frankfurt"),
            "{}",
            o.plan.summary
        );
    }

    #[test]
    fn a_vm_from_a_vm_clones_its_disks_with_macs_of_its_own() {
        let o = run("vm web3 from web1 on sat-b").unwrap();
        let m = manifest(&o);
        assert_eq!(
            m["spec"]["disks"][0]["source"]["virtualMachine"]["name"],
            "web1"
        );
        assert!(m["spec"]["nics"][0].get("mac").is_none(), "{m}");
        assert_eq!(m["spec"]["placement"]["node"], "sat-b");
        assert_eq!(m["metadata"]["name"], "web3");
        // A VM with neither disks nor NICs of its own (found by the fuzz
        // target: the copy had `nics: null`).
        let o = run("vm web3 from web2").unwrap();
        let parsed = crate::manifest::parse_str(
            std::path::Path::new("<plan>"),
            o.plan.manifest.as_deref().unwrap(),
        );
        assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    }

    #[test]
    fn what_does_not_exist_is_an_error_at_its_column_with_suggestions() {
        let text = "relocate web to 10.0.0.8";
        let e = run(text).unwrap_err();
        assert_eq!((e.column, e.expected), (10, Expect::Vm));
        let s = suggestions(text, &e, &world());
        assert_eq!(s, vec!["relocate web1", "relocate web2"]);
        let e = run("create vm web1 from tiny").unwrap_err();
        assert!(e.message.contains("exists"), "{e}");
        let e = run("nodes colour=blue").unwrap_err();
        assert_eq!(e.column, 7);
        assert!(e.message.contains("FAMILY.colour=blue"), "{e}");
        let text = "create vm x fr";
        let e = parse(text).unwrap_err();
        assert_eq!(suggestions(text, &e, &world()), vec!["create vm x from "]);
        let text = "revert web1 to w";
        let e = run(text).unwrap_err();
        assert_eq!(
            suggestions(text, &e, &world()),
            vec!["revert web1 to web1-r1"]
        );
        // A word finished without a space: the next one after a space.
        for (text, want) in [
            ("revert web1 to", "revert web1 to web1-r1"),
            ("start", "start web1"),
            ("start ", "start web1"),
        ] {
            let e = run(text).unwrap_err();
            assert!(
                suggestions(text, &e, &world()).contains(&want.to_string()),
                "{text:?}: {:?}",
                suggestions(text, &e, &world())
            );
        }
    }

    #[test]
    fn lists_filter_by_the_satellites_tags_and_performance() {
        let names = |o: Outcome| o.results.into_iter().map(|r| r.name).collect::<Vec<_>>();
        assert_eq!(names(run("vms on rack=r7").unwrap()), vec!["web1"]);
        assert_eq!(names(run("vms on city=paris").unwrap()), vec!["web2"]);
        assert_eq!(names(run("vms").unwrap()), vec!["web1", "web2"]);
        assert_eq!(names(run("nodes performance=high").unwrap()), vec!["sat-a"]);
        assert_eq!(names(run("nodes 10.0.0.8").unwrap()), vec!["sat-b"]);
        assert_eq!(names(run("replicas of web1").unwrap()), vec!["web1-r1"]);
        assert_eq!(
            names(run("frankfurt").unwrap()),
            vec!["sat-a"],
            "a search over tags"
        );
        assert_eq!(names(run("192.168.7.20").unwrap()), vec!["web1"]);
        let o = run("vm web1").unwrap();
        assert!(
            o.results[0].detail.contains("vnc 10.0.0.7:5901"),
            "{:?}",
            o.results[0]
        );
        let o = run("web").unwrap();
        assert_eq!(names(o.clone()), vec!["web1", "web1-r1", "web2"]);
        assert!(
            o.suggestions.contains(&"web1".to_string()),
            "{:?}",
            o.suggestions
        );
        let o = run("rel").unwrap();
        assert_eq!(o.suggestions, vec!["relocate "]);
    }

    #[test]
    fn changes_name_the_cli_command_that_does_the_same() {
        let o = run("relocate web1 to city=paris").unwrap();
        assert_eq!(
            o.plan.cli,
            "deorch relocate web1 --select macrocosm.city=paris"
        );
        let m = manifest(&o);
        assert_eq!(m["kind"], "Relocation");
        assert_eq!(m["spec"]["virtualMachine"]["name"], "web1");
        let o = run("stop web1").unwrap();
        assert_eq!(manifest(&o)["spec"]["powerState"], "Stopped");
        assert_eq!(o.plan.cli, "deorch vm stop web1");
        let o = run("pause web1").unwrap();
        assert_eq!(manifest(&o)["spec"]["powerState"], "Paused");
        assert_eq!(o.plan.cli, "deorch vm pause web1");
        let o = run("revert web1 to web1-r1").unwrap();
        assert_eq!(
            manifest(&o)["metadata"]["annotations"][REVERT_ANNOTATION],
            "web1-r1"
        );
        assert_eq!(o.plan.cli, "deorch replica revert web1-r1");
        let o = run("console web1").unwrap();
        assert!(!o.plan.changes);
        assert_eq!(o.plan.cli, "deorch console web1");
        let o = run("spacesuit base from web1").unwrap();
        assert_eq!(
            manifest(&o)["spec"]["source"]["virtualMachine"]["name"],
            "web1"
        );
    }

    #[test]
    fn members_without_a_satellite_object_are_listed_with_their_pages() {
        let m = |name: &str, page: &str| crate::node::cluster::RadarNode {
            name: name.into(),
            node_id: format!("bc1q{name}"),
            tags: Default::default(),
            performance: crate::model::Performance::High,
            unschedulable: false,
            vms: 2,
            free: [1000, 1 << 30, 0],
            total: [2000, 2 << 30, 0],
            load_milli: 100,
            page: page.into(),
        };
        let recs = with_members(
            world(),
            &[m("sat-a", "https://10.0.0.1:8443/"), m("sat-z", "")],
        );
        let q = parse("nodes").unwrap();
        let o = plan("nodes", &q, &recs).unwrap();
        let names: Vec<(&str, Option<&str>)> = o
            .results
            .iter()
            .map(|r| (r.name.as_str(), r.url.as_deref()))
            .collect();
        assert_eq!(o.results[0].address.as_deref(), Some("bc1qsat-a"));
        // sat-a's object gets its page; sat-b (an object, no member) has
        // none; sat-z (a member, no object) is made from its status.
        assert_eq!(
            names,
            [
                ("sat-a", Some("https://10.0.0.1:8443/")),
                ("sat-b", None),
                ("sat-z", None)
            ]
        );
        let z = recs.iter().find(|r| r.key.name == "sat-z").unwrap();
        assert_eq!(z.object["spec"]["performance"], "high");
        assert_eq!(z.status.as_ref().unwrap()["nodeId"], "bc1qsat-z");
        // Placement by performance sees it too.
        let o = plan(
            "nodes performance=high",
            &parse("nodes performance=high").unwrap(),
            &recs,
        )
        .unwrap();
        assert!(
            o.results.iter().any(|r| r.name == "sat-z"),
            "{:?}",
            o.results
        );
    }

    #[test]
    fn a_last_word_whose_lower_case_is_longer_completes_without_a_panic() {
        // `İ` lower-cases to `i̇`, a byte longer: the stem was cut at a
        // length taken from the lower-cased word (a fuzz case).
        for text in ["İ", "web İ", "İ w"] {
            let q = parse(text).unwrap();
            plan(text, &q, &world()).unwrap();
        }
        let q = parse("frankfurt WE").unwrap();
        let o = plan("frankfurt WE", &q, &world()).unwrap();
        assert!(
            o.suggestions.iter().all(|s| s.starts_with("frankfurt ")),
            "{:?}",
            o.suggestions
        );
    }
}
