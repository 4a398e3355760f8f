//! Value types shared by several kinds: quantities, CPU counts, durations,
//! tags and tag selectors, references and status conditions.
//!
//! Each type parses its textual form once, here, so that validation, the
//! reconcilers and the radar agree on what `2Gi` or `90s` means.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Error from parsing a value type; the message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// What a quantity or CPU amount may be written as. A JSON schema calls
/// `2.0` an integer, so deorch reads it as one too.
#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Int(u64),
    Float(f64),
    Str(String),
}

/// `f` as a whole number, when it is one and fits.
fn whole(f: f64) -> Option<u64> {
    // 2^64 as f64 is exact; anything at or above it does not fit.
    (f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f)).then_some(f as u64)
}

// ---------------------------------------------------------------------------
// Quantity (bytes)

/// An amount of bytes written like Kubernetes quantities: `512Mi`, `2Gi`,
/// `10G`, `1.5Ti` or a plain integer number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(pub u64);

const QUANTITY_SUFFIXES: &[(&str, u64)] = &[
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("Pi", 1 << 50),
    ("Ei", 1 << 60),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
    ("P", 1_000_000_000_000_000),
    ("E", 1_000_000_000_000_000_000),
];

/// The regular expression the JSON schema uses for quantities.
pub const QUANTITY_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$";

impl Quantity {
    /// Bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for Quantity {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let bad = || {
            ParseError(format!(
                "invalid quantity {s:?}: expected a number with an optional suffix \
                 Ki, Mi, Gi, Ti, Pi, Ei (powers of 1024) or k, M, G, T, P, E (powers of 1000), e.g. \"512Mi\" or \"2Gi\""
            ))
        };
        let (num, mult) = QUANTITY_SUFFIXES
            .iter()
            .find_map(|(suf, m)| s.strip_suffix(suf).map(|n| (n, *m)))
            .unwrap_or((s, 1));
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(bad());
        }
        let (int, frac) = match num.split_once('.') {
            Some((i, f)) if !i.is_empty() && !f.is_empty() && !f.contains('.') => (i, f),
            Some(_) => return Err(bad()),
            None => (num, ""),
        };
        let int: u64 = int.parse().map_err(|_| bad())?;
        let mut total = int.checked_mul(mult).ok_or_else(|| {
            ParseError(format!(
                "quantity {s:?} is too large (more than 2^64 bytes)"
            ))
        })?;
        if !frac.is_empty() {
            // fractional part: frac / 10^len * mult, must come out whole
            let digits = frac.len() as u32;
            let den = 10u128.checked_pow(digits).ok_or_else(bad)?;
            let f: u128 = frac.parse().map_err(|_| bad())?;
            let part = f * mult as u128;
            if !part.is_multiple_of(den) {
                return Err(ParseError(format!(
                    "quantity {s:?} is not a whole number of bytes"
                )));
            }
            total = total
                .checked_add((part / den) as u64)
                .ok_or_else(|| ParseError(format!("quantity {s:?} is too large")))?;
        }
        Ok(Quantity(total))
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (suf, m) in QUANTITY_SUFFIXES[..6].iter().rev() {
            if b >= *m && b.is_multiple_of(*m) {
                return write!(f, "{}{}", b / m, suf);
            }
        }
        write!(f, "{b}")
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Quantity(n)),
            Raw::Float(f) => whole(f).map(Quantity).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid quantity {f}: expected a whole number of bytes"
                ))
            }),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> Cow<'static, str> {
        "Quantity".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An amount of bytes: an integer, or a number with a suffix Ki/Mi/Gi/Ti/Pi/Ei (powers of 1024) or k/M/G/T/P/E (powers of 1000), e.g. \"512Mi\".",
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": u64::MAX},
                {"type": "string", "pattern": QUANTITY_PATTERN}
            ]
        })
    }
}

// ---------------------------------------------------------------------------
// CPU amounts

/// An amount of CPU in millicores: `2` (two CPUs), `"1.5"` or `"500m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cpu(pub u64);

/// The regular expression the JSON schema uses for CPU amounts.
pub const CPU_PATTERN: &str = r"^([0-9]+m|[0-9]+(\.[0-9]{1,3})?)$";

impl Cpu {
    /// Millicores.
    pub fn millis(self) -> u64 {
        self.0
    }
}

impl FromStr for Cpu {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let bad = || {
            ParseError(format!(
                "invalid CPU amount {s:?}: expected a whole or decimal number of CPUs (\"2\", \"1.5\") or millicores (\"500m\")"
            ))
        };
        if let Some(m) = s.strip_suffix('m') {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            return m.parse().map(Cpu).map_err(|_| bad());
        }
        let (i, f) = s.split_once('.').unwrap_or((s, ""));
        if i.is_empty()
            || !i.bytes().all(|b| b.is_ascii_digit())
            || !f.bytes().all(|b| b.is_ascii_digit())
            || f.len() > 3
            || (s.contains('.') && f.is_empty())
        {
            return Err(bad());
        }
        let i: u64 = i.parse().map_err(|_| bad())?;
        let f: u64 = if f.is_empty() {
            0
        } else {
            format!("{f:0<3}").parse().map_err(|_| bad())?
        };
        i.checked_mul(1000)
            .and_then(|v| v.checked_add(f))
            .map(Cpu)
            .ok_or_else(bad)
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

impl Serialize for Cpu {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_multiple_of(1000) {
            s.serialize_u64(self.0 / 1000)
        } else {
            s.serialize_str(&self.to_string())
        }
    }
}

impl<'de> Deserialize<'de> for Cpu {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let whole_cpus = |n: u64| {
            n.checked_mul(1000)
                .map(Cpu)
                .ok_or_else(|| serde::de::Error::custom("CPU amount too large"))
        };
        match Raw::deserialize(d)? {
            Raw::Int(n) => whole_cpus(n),
            Raw::Float(f) => whole(f).map(whole_cpus).unwrap_or_else(|| {
                Err(serde::de::Error::custom(format!(
                    "invalid CPU amount {f}: write a fraction as a string (\"1.5\") or in millicores (\"1500m\")"
                )))
            }),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl JsonSchema for Cpu {
    fn schema_name() -> Cow<'static, str> {
        "Cpu".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An amount of CPU: a whole number of CPUs (2), a decimal string (\"1.5\") or millicores (\"500m\").",
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": MAX_WHOLE_CPUS},
                {"type": "string", "pattern": CPU_PATTERN}
            ]
        })
    }
}

// ---------------------------------------------------------------------------
// Durations

/// A duration such as `90s`, `5m`, `1h30m`, `2d` or `250ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

/// The regular expression the JSON schema uses for durations.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h|d))+$";

impl FromStr for Duration {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let bad = || {
            ParseError(format!(
                "invalid duration {s:?}: expected numbers with units ms, s, m, h or d, e.g. \"90s\", \"1h30m\""
            ))
        };
        if s.is_empty() {
            return Err(bad());
        }
        let mut total_ms: u64 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let n = rest.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 {
                return Err(bad());
            }
            let value: u64 = rest[..n].parse().map_err(|_| bad())?;
            rest = &rest[n..];
            let (unit_ms, len) = if rest.starts_with("ms") {
                (1, 2)
            } else if rest.starts_with('s') {
                (1_000, 1)
            } else if rest.starts_with('m') {
                (60_000, 1)
            } else if rest.starts_with('h') {
                (3_600_000, 1)
            } else if rest.starts_with('d') {
                (86_400_000, 1)
            } else {
                return Err(bad());
            };
            rest = &rest[len..];
            total_ms = value
                .checked_mul(unit_ms)
                .and_then(|v| total_ms.checked_add(v))
                .ok_or_else(bad)?;
        }
        Ok(Duration(std::time::Duration::from_millis(total_ms)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis() as u64;
        if ms == 0 {
            return write!(f, "0s");
        }
        let mut rest = ms;
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
            ("ms", 1),
        ] {
            if rest >= size {
                write!(f, "{}{}", rest / size, unit)?;
                rest %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration: numbers with units ms, s, m, h, d, e.g. \"90s\" or \"1h30m\".",
            "type": "string",
            "pattern": DURATION_PATTERN
        })
    }
}

// ---------------------------------------------------------------------------
// Patterns and rules shared by the schemas
//
// Each pattern accepts exactly what the matching check in
// `manifest::semantic` accepts, so the schema and deorch agree; the
// differential test in tests/check_jsonschema.rs holds them to it.

/// DNS-1123 label: what object names (and names that refer to objects,
/// disks, NICs) must look like; at most 63 characters.
pub const DNS1123_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// One IPv4 octet as Rust's parser reads it: 0-255, no leading zero.
const OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";

/// An IPv4 address, e.g. `10.0.0.5`.
pub fn ipv4_pattern() -> String {
    format!("^{OCTET}(\\.{OCTET}){{3}}$")
}

/// An IPv4 network in CIDR form, e.g. `10.20.0.0/24` (host bits are
/// checked by deorch only).
pub fn cidr_pattern() -> String {
    format!("^{OCTET}(\\.{OCTET}){{3}}/(3[0-2]|[12]?[0-9])$")
}

/// An IPv4 address exactly, or something IPv6-shaped (hex digits, ':'
/// and '.', at least one ':') whose exact form deorch checks.
pub fn ip_pattern() -> String {
    format!("^({OCTET}(\\.{OCTET}){{3}}|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)$")
}

/// A unicast MAC address: six hex pairs, the first even.
pub const MAC_PATTERN: &str = "^[0-9A-Fa-f][02468AaCcEe](:[0-9A-Fa-f]{2}){5}$";

/// A domain name: labels of letters, digits and '-', at most 63 each.
pub const DOMAIN_PATTERN: &str = "^[A-Za-z0-9-]{1,63}(\\.[A-Za-z0-9-]{1,63})*$";

/// Schema of "the field `name` is given": present and not null (deorch
/// reads `field: null` as absent).
pub fn given(name: &str) -> serde_json::Value {
    serde_json::json!({"required": [name], "properties": {name: {"not": {"type": "null"}}}})
}

/// Add a rule (an `if`/`then`, a `oneOf`, a `not`) to a schema, beside
/// any it already has.
pub fn add_rule(schema: &mut Schema, rule: serde_json::Value) {
    let rules = schema
        .ensure_object()
        .entry("allOf")
        .or_insert_with(|| serde_json::Value::Array(vec![]));
    if let serde_json::Value::Array(a) = rules {
        a.push(rule);
    }
}

/// Exactly one of `fields` is given.
pub fn exactly_one(schema: &mut Schema, fields: &[&str]) {
    let branches: Vec<serde_json::Value> = fields.iter().map(|f| given(f)).collect();
    add_rule(schema, serde_json::json!({"oneOf": branches}));
}

/// Not both of `a` and `b` are given.
pub fn not_both(schema: &mut Schema, a: &str, b: &str) {
    add_rule(
        schema,
        serde_json::json!({"not": {"allOf": [given(a), given(b)]}}),
    );
}

// ---------------------------------------------------------------------------
// Bounded amounts
//
// A field that allows only part of a value type's range says so with
// `#[schemars(with = "Option<Vcpus>")]`: its schema is then a named
// definition stating the range as `minimum`/`maximum` and a pattern, and
// `deorch validate` checks the parsed value with the same type's
// `problem`, so an editor and deorch refuse the same values with the same
// message. What a pattern cannot state exactly (a quantity string just
// below a minimum) is left to `problem` and listed in docs/MANIFESTS.md.

/// A whole number from 1 to 1024 with optional leading zeros, for the
/// patterns below.
const ONE_TO_1024: &str = "(10[01][0-9]|102[0-4]|[1-9][0-9]{0,2})";

/// The largest whole number of CPUs a [`Cpu`] holds.
pub const MAX_WHOLE_CPUS: u64 = u64::MAX / 1000;

/// Virtual CPUs of a VM: a whole number from 1 to [`Vcpus::MAX`]
/// (`2`, `"2"`, `"2.0"`, `"2000m"`).
pub struct Vcpus;

impl Vcpus {
    /// The most vCPUs a VM may ask for.
    pub const MAX: u64 = 1024;

    /// Why `cpu` is not a valid vCPU count, if it is not.
    pub fn problem(cpu: Cpu) -> Option<String> {
        (!cpu.0.is_multiple_of(1000) || cpu.0 == 0 || cpu.0 > Self::MAX * 1000).then(|| {
            format!(
                "virtual CPUs must be a whole number from 1 to {}, found {cpu}",
                Self::MAX
            )
        })
    }

    /// The pattern of the string form.
    pub fn pattern() -> String {
        format!("^0*({ONE_TO_1024}(\\.0{{1,3}})?|{ONE_TO_1024}000m)$")
    }
}

impl JsonSchema for Vcpus {
    fn schema_name() -> Cow<'static, str> {
        "Vcpus".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An amount of CPU for a VM: a whole number of CPUs from 1 to 1024 (2, \"2\" or \"2000m\").",
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": Vcpus::MAX},
                {"type": "string", "pattern": Vcpus::pattern()}
            ]
        })
    }
}

/// A whole number of CPUs, at least 1 (a spacesuit's default for its VMs).
pub struct WholeCpus;

impl WholeCpus {
    /// Why `cpu` is not a whole number of CPUs ≥ 1, if it is not.
    pub fn problem(cpu: Cpu) -> Option<String> {
        (!cpu.0.is_multiple_of(1000) || cpu.0 == 0)
            .then(|| format!("a spacesuit's CPUs must be a whole number ≥ 1, found {cpu}"))
    }

    /// The pattern of the string form.
    pub const PATTERN: &'static str = r"^0*[1-9][0-9]*((\.0{1,3})?|000m)$";
}

impl JsonSchema for WholeCpus {
    fn schema_name() -> Cow<'static, str> {
        "WholeCpus".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An amount of CPU: a whole number of CPUs, at least 1 (2, \"2\" or \"2000m\").",
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_WHOLE_CPUS},
                {"type": "string", "pattern": WholeCpus::PATTERN}
            ]
        })
    }
}

/// Guest memory: from [`GuestMemory::MIN`] to [`GuestMemory::MAX`] bytes.
pub struct GuestMemory;

impl GuestMemory {
    /// The least memory a VM may have (1Mi).
    pub const MIN: u64 = 1 << 20;
    /// The most memory a VM may have (64Ti): the guest physical address
    /// space of x86-64 with 4-level paging (46 bits), beyond which QEMU
    /// refuses to start on common CPUs. One limit, however it is written.
    pub const MAX: u64 = 1 << 46;

    /// Why `m` is too little or too much memory, if it is.
    pub fn problem(m: Quantity) -> Option<String> {
        if m.0 < Self::MIN {
            return Some(format!(
                "at least 1Mi of memory is needed, found {m} bytes (did you forget a unit like Mi?)"
            ));
        }
        (m.0 > Self::MAX).then(|| {
            format!("at most 64Ti of memory is possible (46-bit guest physical addresses), found {m} bytes")
        })
    }

    /// The string form: a quantity that is not zero. Whether a string is
    /// at least 1Mi is known only once parsed.
    pub const PATTERN: &'static str = r"^([0-9]*[1-9][0-9]*(\.[0-9]+)?|[0-9]+\.[0-9]*[1-9][0-9]*)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$";
}

impl JsonSchema for GuestMemory {
    fn schema_name() -> Cow<'static, str> {
        "GuestMemory".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Memory of a VM, from 1Mi to 64Ti: an integer number of bytes, or a number with a suffix Ki/Mi/Gi/Ti/Pi/Ei (powers of 1024) or k/M/G/T/P/E (powers of 1000), e.g. \"512Mi\".",
            "anyOf": [
                {"type": "integer", "minimum": GuestMemory::MIN, "maximum": GuestMemory::MAX},
                {"type": "string", "pattern": GuestMemory::PATTERN}
            ]
        })
    }
}

/// A duration that is not zero; where a field needs more (at least a
/// minute), the field's own check says so.
pub struct PositiveDuration;

impl PositiveDuration {
    /// At least one part with a digit other than 0.
    pub const PATTERN: &'static str =
        r"^([0-9]+(ms|s|m|h|d))*[0-9]*[1-9][0-9]*(ms|s|m|h|d)([0-9]+(ms|s|m|h|d))*$";

    /// Why `d` is shorter than a minute, if it is (`what` names the field's
    /// meaning, e.g. "between automatic replicas").
    pub fn under_a_minute(d: Duration, what: &str) -> Option<String> {
        (d.0.as_secs() < 60).then(|| format!("at least 1m {what}, found {d}"))
    }
}

impl JsonSchema for PositiveDuration {
    fn schema_name() -> Cow<'static, str> {
        "PositiveDuration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration longer than zero: numbers with units ms, s, m, h, d, e.g. \"90s\" or \"1h30m\".",
            "type": "string",
            "pattern": PositiveDuration::PATTERN
        })
    }
}

/// A ZFS record size: a power of two from 512 to 1Mi.
pub struct RecordSize;

impl RecordSize {
    /// Why `q` is not a record size, if it is not.
    pub fn problem(q: Quantity) -> Option<String> {
        let b = q.0;
        (!(512..=(1 << 20)).contains(&b) || !b.is_power_of_two())
            .then(|| format!("{q}: expected a power of two from 512 to 1Mi"))
    }
}

impl JsonSchema for RecordSize {
    fn schema_name() -> Cow<'static, str> {
        "RecordSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let sizes: Vec<u64> = (9..=20).map(|p| 1u64 << p).collect();
        json_schema!({
            "description": "A power of two from 512 to 1Mi: an integer, or a quantity such as \"128Ki\".",
            "anyOf": [
                {"type": "integer", "enum": sizes},
                {"type": "string", "pattern": QUANTITY_PATTERN}
            ]
        })
    }
}

// ---------------------------------------------------------------------------
// Tags and placement selectors

/// Performance class of a satellite, and the class a VM asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Performance {
    /// Fast CPUs and storage.
    High,
    /// Everything else.
    Low,
}

/// The three tag families a satellite (or an array on it) carries.
///
/// Keys and values follow Kubernetes label syntax, e.g.
/// `microcosm: {rack: a3, cpu: epyc-9654}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tags {
    /// Physical location and hardware: row, rack, CPU type, network.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub microcosm: BTreeMap<String, String>,
    /// Region: city, country, compass area (ne, sw, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub macrocosm: BTreeMap<String, String>,
    /// Organisation: team, provider, owner address.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub intercosm: BTreeMap<String, String>,
}

/// A selector over the three tag families. Each family takes a Kubernetes
/// label selector (`matchLabels`, `matchExpressions`); all given families
/// must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagSelector {
    /// Selector over microcosm tags (row, rack, CPU type, network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub microcosm: Option<LabelSelector>,
    /// Selector over macrocosm tags (region).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macrocosm: Option<LabelSelector>,
    /// Selector over intercosm tags (team, provider, owner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intercosm: Option<LabelSelector>,
}

/// Where a VM runs, or where a relocation sends it.
///
/// At most one of `node` and `address` may be given; either bypasses the
/// radar's election. Without them, the radar elects a satellite among those
/// matching `selector` and `performance`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = placement_rules)]
pub struct Placement {
    /// Run on the satellite of this name (manual placement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS1123_LABEL_PATTERN), length(max = 63))]
    pub node: Option<String>,
    /// Run on the satellite with this IP address (manual placement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = ip_pattern()))]
    pub address: Option<String>,
    /// Tag selector the elected satellite must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<TagSelector>,
    /// Performance class the elected satellite must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performance: Option<Performance>,
    /// Strict mode (default false): a node that has not seen a majority
    /// of the cluster for a while pauses the VM, and the others start it
    /// again only once they see a majority and its node has been dead
    /// longer than that, so a partition never runs it twice (and a side
    /// without a majority does not run it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
}

impl Placement {
    /// Placed by hand: `node` or `address` names where it runs, and the
    /// radar has no say.
    pub fn by_hand(&self) -> bool {
        self.node.is_some() || self.address.is_some()
    }
}

/// `node` or `address`, not both; and a manual placement has no selector
/// or performance class (they would be ignored).
fn placement_rules(schema: &mut Schema) {
    not_both(schema, "node", "address");
    for manual in ["node", "address"] {
        for elected in ["selector", "performance"] {
            not_both(schema, manual, elected);
        }
    }
}

/// A reference to another object by name (and namespace, defaulting to the
/// referring object's own).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectRef {
    /// Name of the object.
    #[schemars(regex(pattern = DNS1123_LABEL_PATTERN), length(max = 63))]
    pub name: String,
    /// Namespace of the object; defaults to the referrer's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS1123_LABEL_PATTERN), length(max = 63))]
    pub namespace: Option<String>,
}

/// A status condition (Kubernetes `metav1.Condition`): `type`, `status`
/// (`True`/`False`/`Unknown`), `reason`, `message`, `observedGeneration`,
/// `lastTransitionTime`.
pub type Condition = k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse() {
        assert_eq!("2Gi".parse::<Quantity>().unwrap().0, 2 << 30);
        assert_eq!("512Mi".parse::<Quantity>().unwrap().0, 512 << 20);
        assert_eq!("1.5Gi".parse::<Quantity>().unwrap().0, 3 << 29);
        assert_eq!("10G".parse::<Quantity>().unwrap().0, 10_000_000_000);
        assert_eq!("123".parse::<Quantity>().unwrap().0, 123);
        for bad in ["", "2GB", "Gi", "-1", "1.", ".5", "1..5Gi", "2 Gi", "1.5"] {
            assert!(bad.parse::<Quantity>().is_err(), "{bad:?} accepted");
        }
        assert!("99999999999Ei".parse::<Quantity>().is_err());
        assert_eq!(Quantity(2 << 30).to_string(), "2Gi");
        assert_eq!(Quantity(1000).to_string(), "1000");
    }

    #[test]
    fn cpus_parse() {
        assert_eq!("2".parse::<Cpu>().unwrap().0, 2000);
        assert_eq!("1.5".parse::<Cpu>().unwrap().0, 1500);
        assert_eq!("500m".parse::<Cpu>().unwrap().0, 500);
        for bad in ["", "m", "1.", "1.2345", "two", "-1", "1.5m"] {
            assert!(bad.parse::<Cpu>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(Cpu(1500).to_string(), "1500m");
    }

    #[test]
    fn durations_parse_and_print() {
        let d: Duration = "1h30m".parse().unwrap();
        assert_eq!(d.0.as_secs(), 5400);
        assert_eq!(d.to_string(), "1h30m");
        assert_eq!("250ms".parse::<Duration>().unwrap().0.as_millis(), 250);
        for bad in ["", "10", "h", "1x", "1h 2m"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} accepted");
        }
    }
}
