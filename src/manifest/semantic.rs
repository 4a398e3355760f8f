//! deorch's own checks of a typed object: everything the JSON schema says
//! again (so that objects that never pass through the schema, and the
//! messages, agree) and the few checks no schema can make, each with a
//! stable identifier ([`OnlyDeorch`]) that ends its message and is listed
//! in docs/MANIFESTS.md. Each check names the field it is about.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;

use super::schema_check::dns_message;
use super::yaml::Seg;
use super::Problem;
use crate::model::access::AccessPolicySpec;
use crate::model::common::ObjectRef;
use crate::model::common::{GuestMemory, PositiveDuration, RecordSize, Vcpus, WholeCpus};
use crate::model::network::{DhcpOptions, Dhcpcast, NetworkSpec};
use crate::model::relocation::RelocationSpec;
use crate::model::satellite::SatelliteSpec;
use crate::model::spacesuit::SpacesuitSpec;
use crate::model::storage_kinds::DatasetSpec;
use crate::model::vm::{Disk, Nic, VirtualMachineSpec};
use crate::model::{AnyObject, Placement};

macro_rules! only_deorch {
    ($($variant:ident = $id:literal: $what:literal;)*) => {
        /// A check only deorch makes: the JSON schema language cannot say
        /// it, so an editor using the schema shows no error where deorch
        /// refuses. The identifier ends the message (`[disk-names-unique]`)
        /// and names the check in docs/MANIFESTS.md.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum OnlyDeorch {
            $(#[doc = $what] $variant,)*
        }

        impl OnlyDeorch {
            /// Every such check.
            pub const ALL: &'static [OnlyDeorch] = &[$(OnlyDeorch::$variant),*];
            /// The stable identifier.
            pub fn id(self) -> &'static str {
                match self { $(OnlyDeorch::$variant => $id),* }
            }
            /// What is checked and why the schema cannot.
            pub fn what(self) -> &'static str {
                match self { $(OnlyDeorch::$variant => $what),* }
            }
        }
    };
}

only_deorch! {
    NamesUnique = "names-unique": "Disk names and NIC names are unique within a VM and within a spacesuit (whose further disks are not named `root`, its first disk's name), array names within a satellite. `uniqueItems` compares whole items, not one field of them.";
    SpacesuitTemplate = "spacesuit-template": "A spacesuit's further disks (`disks`) come with a first one (`source`), and its NICs name no fixed `mac` or `ipv4` (every VM made from it would share them). Conditions between fields, and the same NIC type as a VM's.";
    MemoryRange = "memory-range": "Memory is at least 1Mi and at most 64Ti, however it is written. The schema refuses integers outside and zero written as a string; a quantity string (`\"1023Ki\"`, `\"65Ti\"`, `\"16Ei\"`) is compared only once parsed.";
    RecordSize = "recordsize": "A dataset's `recordsize` is a power of two from 512 to 1Mi. The schema lists the integers; a quantity string (`\"128Ki\"`) is checked only once parsed.";
    DurationMinimum = "duration-minimum": "`replicaPolicy.interval` and `dhcp.leaseTime` are at least 1m. The schema refuses zero; comparing a sum of parts (`\"59s999ms\"`) with a minute is beyond a pattern.";
    ParsedValue = "parsed-value": "A quantity, CPU amount or duration the pattern admits but that does not fit: more than 2^64 bytes or milliseconds, or a fraction of a byte (`\"1.0000001Ki\"`).";
    Ipv6Address = "ipv6-address": "An IPv6 address (satellite addresses, `placement.address`) is well formed. The schema checks IPv4 addresses exactly and only the characters of an IPv6 one.";
    SocketAddress = "socket-address": "A satellite's `gossip` endpoint is an IP address and a port from 0 to 65535. The schema checks the shape `HOST:PORT`.";
    SubnetHostBits = "subnet-host-bits": "A subnet or route destination has no host bits set (`10.0.0.1/24` is refused with a suggestion). The schema checks the CIDR form.";
    AddressInSubnet = "address-in-subnet": "A network's gateway, range and DHCP broadcast address lie inside its subnet: a comparison between two fields' values.";
    RangeOrder = "range-order": "A network's address range starts before it ends: a comparison between two fields' values.";
    PublicMatchesSubnet = "public-matches-subnet": "`ipv4.public` says true exactly when the subnet is public address space.";
    TypedRead = "typed-read": "The object reads as its Rust type. The schema is generated from the same types, so this is a safety net; seeing it is a bug in the schema.";
}

/// The table of [`OnlyDeorch`] checks for docs/MANIFESTS.md.
pub fn render_only_deorch() -> String {
    let mut out =
        String::from("| identifier | what deorch checks beyond the schema |\n|---|---|\n");
    for c in OnlyDeorch::ALL {
        out.push_str(&format!(
            "| `{}` | {} |\n",
            c.id(),
            c.what().replace('|', "\\|")
        ));
    }
    out
}

/// Collects problems under a current path.
struct Checker {
    path: Vec<Seg>,
    out: Vec<Problem>,
}

impl Checker {
    fn at<R>(&mut self, seg: impl Into<SegArg>, f: impl FnOnce(&mut Checker) -> R) -> R {
        self.path.push(seg.into().0);
        let r = f(self);
        self.path.pop();
        r
    }
    fn err(&mut self, msg: impl Into<String>) {
        self.out
            .push(Problem::at_value(self.path.clone(), msg.into()));
    }
    fn field_err(&mut self, field: &str, msg: impl Into<String>) {
        let mut p = self.path.clone();
        p.push(Seg::Key(field.into()));
        self.out.push(Problem::at_value(p, msg.into()));
    }
    /// A problem only deorch can find, at `field` (or here).
    fn only(&mut self, check: OnlyDeorch, field: Option<&str>, msg: impl Into<String>) {
        let mut p = self.path.clone();
        if let Some(f) = field {
            p.push(Seg::Key(f.into()));
        }
        self.out.push(Problem {
            only: Some(check),
            ..Problem::at_value(p, msg.into())
        });
    }
    /// A reference to another object: its name and namespace are names.
    fn object_ref(&mut self, field: &str, r: &ObjectRef) {
        self.at(field, |c| {
            c.dns("name", &r.name);
            if let Some(ns) = &r.namespace {
                c.dns("namespace", ns);
            }
        });
    }
    fn dns(&mut self, field: &str, s: &str) {
        if !is_dns_label(s) {
            self.field_err(field, dns_message(s));
        }
    }
    fn ip(&mut self, s: &str) -> Option<IpAddr> {
        match s.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                let msg = format!(
                    "{s:?} is not an IP address: expected e.g. \"10.0.0.5\" or \"fd00::5\""
                );
                if s.contains(':') {
                    self.only(OnlyDeorch::Ipv6Address, None, msg);
                } else {
                    self.err(msg);
                }
                None
            }
        }
    }
    fn ipv4(&mut self, s: &str) -> Option<Ipv4Addr> {
        match s.parse::<Ipv4Addr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.err(format!(
                    "{s:?} is not an IPv4 address: expected four numbers 0-255, e.g. \"10.0.0.5\""
                ));
                None
            }
        }
    }
    fn ipv4_list(&mut self, field: &str, list: &[String]) {
        self.at(field, |c| {
            for (i, s) in list.iter().enumerate() {
                c.at(i, |c| c.ipv4(s));
            }
        });
    }
}

struct SegArg(Seg);
impl From<&str> for SegArg {
    fn from(s: &str) -> Self {
        SegArg(Seg::Key(s.into()))
    }
}
impl From<usize> for SegArg {
    fn from(i: usize) -> Self {
        SegArg(Seg::Index(i))
    }
}

/// Whether `s` is a DNS-1123 label.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a MAC address (six hex pairs separated by ':').
fn mac_problem(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Some(format!(
            "{s:?} is not a MAC address: expected six hex pairs like \"52:54:00:12:34:56\""
        ));
    }
    let first = u8::from_str_radix(parts[0], 16).unwrap_or(0);
    if first & 1 == 1 {
        return Some(format!(
            "{s:?} is a multicast MAC address: a NIC needs a unicast one (first byte even)"
        ));
    }
    None
}

/// Every semantic problem of one object.
pub fn check(obj: &AnyObject) -> Vec<Problem> {
    let mut c = Checker {
        path: Vec::new(),
        out: Vec::new(),
    };
    let meta = obj.metadata();
    c.at("metadata", |c| {
        if let Some(ns) = &meta.namespace {
            if !obj.kind().namespaced() {
                c.field_err(
                    "namespace",
                    format!(
                        "{} objects are cluster-scoped: remove metadata.namespace",
                        obj.kind()
                    ),
                );
            }
            c.dns("namespace", ns);
        }
    });
    c.at("spec", |c| match obj {
        AnyObject::Satellite(o) => satellite(c, &o.spec),
        AnyObject::Spacesuit(o) => spacesuit(c, &o.spec),
        AnyObject::VirtualMachine(o) => vm(c, &o.spec),
        AnyObject::Replica(o) => c.object_ref("virtualMachine", &o.spec.virtual_machine),
        AnyObject::Relocation(o) => relocation(c, &o.spec),
        AnyObject::Dataset(o) => dataset(c, &o.spec),
        AnyObject::Network(o) => network(c, &o.spec),
        AnyObject::AccessPolicy(o) => access(c, &o.spec),
    });
    c.out
}

fn satellite(c: &mut Checker, s: &SatelliteSpec) {
    c.at("addresses", |c| {
        for (i, a) in s.addresses.iter().enumerate() {
            c.at(i, |c| c.ip(a));
        }
    });
    if let Some(g) = &s.gossip {
        if g.parse::<std::net::SocketAddr>().is_err() {
            c.only(
                OnlyDeorch::SocketAddress,
                Some("gossip"),
                format!("{g:?} is not HOST:PORT with an IP host, e.g. \"10.0.0.5:7946\""),
            );
        }
    }
    let mut names = BTreeSet::new();
    c.at("arrays", |c| {
        for (i, a) in s.arrays.iter().enumerate() {
            c.at(i, |c| {
                c.dns("name", &a.name);
                if !names.insert(a.name.clone()) {
                    c.only(
                        OnlyDeorch::NamesUnique,
                        Some("name"),
                        format!("array name {:?} is used twice", a.name),
                    );
                }
                if a.tenant.is_empty() {
                    c.field_err(
                        "tenant",
                        "must name the tenant (a Bitcoin address or namespace)",
                    );
                }
            });
        }
    });
}

fn spacesuit(c: &mut Checker, s: &SpacesuitSpec) {
    if let Some(src) = &s.source {
        c.at("source", |c| {
            let n = usize::from(src.image.is_some()) + usize::from(src.virtual_machine.is_some());
            if n != 1 {
                c.err(format!(
                    "exactly one of image, virtualMachine must be set, found {n}"
                ));
            }
            if let Some(vm) = &src.virtual_machine {
                c.object_ref("virtualMachine", vm);
            }
            if let Some(img) = &src.image {
                c.at("image", |c| image(c, img));
            }
        });
    }
    if let Some(p) = s.cpu.and_then(WholeCpus::problem) {
        c.field_err("cpu", p);
    }
    if let Some(p) = s.memory.and_then(GuestMemory::problem) {
        c.only(OnlyDeorch::MemoryRange, Some("memory"), p);
    }
    let mut names = BTreeSet::from([crate::reconcile::vm::SPACESUIT_DISK.to_string()]);
    c.at("disks", |c| {
        for (i, d) in s.disks.iter().enumerate() {
            c.at(i, |c| {
                c.dns("name", &d.name);
                if s.source.is_none() {
                    c.only(
                        OnlyDeorch::SpacesuitTemplate,
                        None,
                        "further disks need the first one: set spec.source too",
                    );
                }
                if !names.insert(d.name.clone()) {
                    c.only(
                        OnlyDeorch::NamesUnique,
                        Some("name"),
                        match d.name == crate::reconcile::vm::SPACESUIT_DISK {
                            true => "disk name \"root\" is the first disk's (spec.source): name this one otherwise".to_string(),
                            false => format!("disk name {:?} is used twice", d.name),
                        },
                    );
                }
                c.at("image", |c| image(c, &d.image));
            });
        }
    });
    let mut nic_names = BTreeSet::new();
    c.at("nics", |c| {
        for (i, n) in s.nics.iter().enumerate() {
            c.at(i, |c| {
                nic(c, n, &mut nic_names);
                // Every VM made from the spacesuit would carry the same.
                if n.mac.is_some() {
                    c.only(
                        OnlyDeorch::SpacesuitTemplate,
                        Some("mac"),
                        "a spacesuit's NIC has no fixed MAC: every VM made from it would have the same; each VM's is derived from its identity",
                    );
                }
                if n.ipv4.is_some() {
                    c.only(
                        OnlyDeorch::SpacesuitTemplate,
                        Some("ipv4"),
                        "a spacesuit's NIC has no fixed address: every VM made from it would claim the same; each VM's is derived from its identity",
                    );
                }
                if let (Some(machine), Some(model)) = (s.machine, n.model) {
                    if !model.fits(machine) {
                        c.field_err(
                            "model",
                            format!(
                                "the {} machine has no PCI bus, only virtio-mmio: NICs there are virtio, found {}",
                                machine.as_str(),
                                model.as_str()
                            ),
                        );
                    }
                }
            });
        }
    });
}

fn image(c: &mut Checker, img: &crate::model::spacesuit::ImageSource) {
    if !img.path.starts_with('/') {
        c.field_err(
            "path",
            format!("{:?} must be an absolute path on the node", img.path),
        );
    }
    if let Some(h) = &img.sha256 {
        if h.len() != 64 || !h.chars().all(|ch| ch.is_ascii_hexdigit()) {
            c.field_err("sha256", "expected 64 hexadecimal characters");
        }
    }
}

fn vm(c: &mut Checker, s: &VirtualMachineSpec) {
    if let Some(name) = &s.spacesuit {
        c.dns("spacesuit", name);
    }
    if let Some(p) = s.cpu.and_then(Vcpus::problem) {
        c.field_err("cpu", p);
    }
    if let Some(p) = s.memory.and_then(GuestMemory::problem) {
        c.only(OnlyDeorch::MemoryRange, Some("memory"), p);
    }
    let mut names = BTreeSet::new();
    c.at("disks", |c| {
        for (i, d) in s.disks.iter().enumerate() {
            c.at(i, |c| disk(c, d, &mut names));
        }
    });
    let mut nic_names = BTreeSet::new();
    c.at("nics", |c| {
        for (i, n) in s.nics.iter().enumerate() {
            c.at(i, |c| {
                nic(c, n, &mut nic_names);
                if let (Some(machine), Some(model)) = (s.machine, n.model) {
                    if !model.fits(machine) {
                        c.field_err(
                            "model",
                            format!(
                                "the {} machine has no PCI bus, only virtio-mmio: NICs there are virtio, found {}",
                                machine.as_str(),
                                model.as_str()
                            ),
                        );
                    }
                }
            });
        }
    });
    if let Some(p) = &s.placement {
        c.at("placement", |c| placement(c, p));
    }
    if let Some(r) = &s.replica_policy {
        c.at("replicaPolicy", |c| {
            if r.keep == 0 {
                c.field_err("keep", "must keep at least 1 replica");
            }
            if let Some(p) =
                PositiveDuration::under_a_minute(r.interval, "between automatic replicas")
            {
                c.only(OnlyDeorch::DurationMinimum, Some("interval"), p);
            }
        });
    }
    if let Some(f) = &s.fastr {
        c.at("fastr", |c| {
            if f.copies == 0 {
                c.field_err("copies", "at least 1 copy");
            }
            if f.keep.is_some_and(|k| !(1..=64).contains(&k)) {
                c.field_err("keep", "1 to 64 points");
            }
            if f.triggers
                .as_ref()
                .and_then(|t| t.written)
                .is_some_and(|q| q.0 == 0)
            {
                c.at("triggers", |c| {
                    c.field_err("written", "more than 0 bytes, e.g. \"64Mi\"")
                });
            }
            if let Some(p) = &f.placement {
                c.at("placement", |c| placement(c, p));
            }
        });
    }
    if let Some(a) = &s.array {
        c.dns("array", a);
    }
}

fn disk(c: &mut Checker, d: &Disk, names: &mut BTreeSet<String>) {
    c.dns("name", &d.name);
    if !names.insert(d.name.clone()) {
        c.only(
            OnlyDeorch::NamesUnique,
            Some("name"),
            format!("disk name {:?} is used twice", d.name),
        );
    }
    c.at("source", |c| {
        let src = &d.source;
        let set: Vec<&str> = [
            ("spacesuit", src.spacesuit.is_some()),
            ("virtualMachine", src.virtual_machine.is_some()),
            ("replica", src.replica.is_some()),
            ("blank", src.blank.is_some()),
            ("fastrCopy", src.fastr_copy.is_some()),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| n)
        .collect();
        if set.len() != 1 {
            let found = if set.is_empty() { "none".to_string() } else { format!("{} ({})", set.len(), set.join(", ")) };
            c.err(format!("exactly one of spacesuit, virtualMachine, replica, blank, fastrCopy must be set, found {found}"));
        }
        if let Some(s) = &src.spacesuit {
            c.dns("spacesuit", s);
        }
        for (field, r) in [
            ("virtualMachine", &src.virtual_machine),
            ("replica", &src.replica),
        ] {
            if let Some(r) = r {
                c.at(field, |c| {
                    c.dns("name", &r.name);
                    if let Some(ns) = &r.namespace {
                        c.dns("namespace", ns);
                    }
                    if let Some(d) = &r.disk {
                        c.dns("disk", d);
                    }
                });
            }
        }
    });
    if let Some(r) = &d.source.fastr_copy {
        c.at("source", |c| {
            c.at("fastrCopy", |c| {
                c.dns("name", &r.name);
                if let Some(ns) = &r.namespace {
                    c.dns("namespace", ns);
                }
                if let Some(d) = &r.disk {
                    c.dns("disk", d);
                }
                if crate::relocate::agent::fastr::point_ms(&r.point).is_none() {
                    c.field_err(
                        "point",
                        "a copy point, fastr-<unix ms> (see deorch fastr points)",
                    );
                }
            });
        });
    }
    if d.source.blank.is_some() && d.size.is_none() {
        c.field_err("size", "a blank disk needs a size, e.g. \"10Gi\"");
    }
}

fn nic(c: &mut Checker, n: &Nic, names: &mut BTreeSet<String>) {
    c.dns("name", &n.name);
    if !names.insert(n.name.clone()) {
        c.only(
            OnlyDeorch::NamesUnique,
            Some("name"),
            format!("NIC name {:?} is used twice", n.name),
        );
    }
    c.dns("network", &n.network);
    if let Some(mac) = &n.mac {
        if let Some(p) = mac_problem(mac) {
            c.field_err("mac", p);
        }
    }
    if let Some(ip) = &n.ipv4 {
        c.at("ipv4", |c| c.ipv4(ip));
    }
    if let Some(d) = &n.dhcp {
        c.at("dhcp", |c| dhcp(c, d));
    }
    if let Some(d) = &n.dhcpcast {
        c.at("dhcpcast", |c| dhcpcast(c, d));
    }
}

fn placement(c: &mut Checker, p: &Placement) {
    if p.node.is_some() && p.address.is_some() {
        c.err("give node or address, not both");
    }
    if let Some(n) = &p.node {
        c.dns("node", n);
    }
    if let Some(a) = &p.address {
        c.at("address", |c| c.ip(a));
    }
    if p.by_hand() && (p.selector.is_some() || p.performance.is_some()) {
        c.err("a manual placement (node or address) cannot also have a selector or performance: they would be ignored");
    }
}

fn relocation(c: &mut Checker, s: &RelocationSpec) {
    c.object_ref("virtualMachine", &s.virtual_machine);
    if let Some(t) = &s.target {
        c.at("target", |c| placement(c, t));
    }
}

fn dataset(c: &mut Checker, s: &DatasetSpec) {
    if s.path.is_empty()
        || s.path.starts_with('/')
        || s.path
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
    {
        c.field_err("path", format!("{:?} must be a relative path below the pool without empty, '.' or '..' parts, e.g. \"tenants/acme\"", s.path));
    }
    if let Some(comp) = &s.compression {
        let ok = matches!(
            comp.as_str(),
            "off" | "on" | "lz4" | "gzip" | "zle" | "lzjb" | "zstd"
        ) || comp
            .strip_prefix("gzip-")
            .is_some_and(|n| matches!(n, "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9"));
        if !ok {
            c.field_err(
                "compression",
                format!("{comp:?}: expected off, on, lz4, gzip, gzip-1..gzip-9, zle, lzjb or zstd"),
            );
        }
    }
    if let Some(p) = s.recordsize.and_then(RecordSize::problem) {
        c.only(OnlyDeorch::RecordSize, Some("recordsize"), p);
    }
    c.at("userProperties", |c| {
        for k in s.user_properties.keys() {
            if !k.contains(':') {
                c.err(format!(
                    "user property {k:?} needs a module prefix with ':', e.g. \"acme:owner\""
                ));
            }
        }
    });
}

fn network(c: &mut Checker, s: &NetworkSpec) {
    if let Some(b) = &s.bridge {
        let printable = |ch: char| ch.is_ascii_graphic() && ch != '/';
        if b.is_empty() || b.len() > 15 || !b.chars().all(printable) {
            c.field_err(
                "bridge",
                format!("{b:?}: an interface name of 1-15 printable ASCII characters without '/' or spaces"),
            );
        }
    }
    if let Some(m) = s.mtu {
        if m < 68 {
            c.field_err("mtu", format!("{m}: the MTU must be from 68 to 65535"));
        }
    }
    let mut subnet = None;
    if let Some(v4) = &s.ipv4 {
        c.at("ipv4", |c| {
            match v4.subnet.parse::<Ipv4Net>() {
                Ok(net) if net.trunc() != net => c.only(
                    OnlyDeorch::SubnetHostBits,
                    Some("subnet"),
                    format!(
                        "{:?} has host bits set: did you mean \"{}\"?",
                        v4.subnet,
                        net.trunc()
                    ),
                ),
                Ok(net) => subnet = Some(net),
                Err(_) => c.field_err(
                    "subnet",
                    format!(
                        "{:?} is not an IPv4 CIDR: expected e.g. \"10.20.0.0/24\"",
                        v4.subnet
                    ),
                ),
            }
            let inside = |c: &mut Checker, field: &str, s: &str| -> Option<Ipv4Addr> {
                let ip = c.at(field, |c| c.ipv4(s))?;
                if let Some(net) = subnet {
                    if !net.contains(&ip) {
                        c.only(
                            OnlyDeorch::AddressInSubnet,
                            Some(field),
                            format!("{ip} is outside the subnet {net}"),
                        );
                    }
                }
                Some(ip)
            };
            if let Some(g) = &v4.gateway {
                inside(c, "gateway", g);
            }
            if let Some(r) = &v4.range {
                c.at("range", |c| {
                    let a = inside(c, "start", &r.start);
                    let b = inside(c, "end", &r.end);
                    if let (Some(a), Some(b)) = (a, b) {
                        if a > b {
                            c.only(
                                OnlyDeorch::RangeOrder,
                                None,
                                format!("start {a} is after end {b}"),
                            );
                        }
                    }
                });
            }
            if let Some(net) = subnet {
                let private = is_private(net);
                if v4.public && private {
                    c.only(
                        OnlyDeorch::PublicMatchesSubnet,
                        Some("public"),
                        format!("{net} is private address space: set public: false"),
                    );
                } else if !v4.public && !private {
                    c.only(
                        OnlyDeorch::PublicMatchesSubnet,
                        Some("public"),
                        format!("{net} is public address space: set public: true"),
                    );
                }
            }
        });
    }
    if let Some(d) = &s.dhcp {
        c.at("dhcp", |c| dhcp(c, d));
        if let (Some(b), Some(net)) = (&d.broadcast, subnet) {
            if b.parse::<Ipv4Addr>().is_ok_and(|ip| !net.contains(&ip)) {
                c.at("dhcp", |c| {
                    c.only(
                        OnlyDeorch::AddressInSubnet,
                        Some("broadcast"),
                        format!("{b} is outside the subnet {net}"),
                    )
                });
            }
        }
    }
    if let Some(d) = &s.dhcpcast {
        c.at("dhcpcast", |c| dhcpcast(c, d));
    }
    if let Some(iso) = &s.isolation {
        if let Some(name) = &iso.interstellar {
            c.at("isolation", |c| c.dns("interstellar", name));
        }
        if iso.mode != crate::model::network::IsolationMode::None && s.uplink.is_some() {
            c.at("uplink", |c| {
                c.err("an interstellar spans satellites over VXLAN: it takes no uplink (a bridge with an uplink is the physical segment behind it)")
            });
        }
    }
}

fn is_private(net: Ipv4Net) -> bool {
    let a = net.network();
    a.is_private()
        || a.is_loopback()
        || a.is_link_local()
        || (a.octets()[0] == 100 && (a.octets()[1] & 0xc0) == 64)
}

fn dhcp(c: &mut Checker, d: &DhcpOptions) {
    if let Some(b) = &d.broadcast {
        c.at("broadcast", |c| c.ipv4(b));
    }
    if let Some(m) = d.mtu {
        if m < 68 {
            c.field_err("mtu", format!("{m}: the MTU must be from 68 to 65535"));
        }
    }
    c.ipv4_list("ntpServers", &d.ntp_servers);
    c.ipv4_list("dnsServers", &d.dns_servers);
    c.ipv4_list("logServers", &d.log_servers);
    c.ipv4_list("smtpServers", &d.smtp_servers);
    c.ipv4_list("pop3Servers", &d.pop3_servers);
    if let Some(nb) = &d.netbios {
        c.at("netbios", |c| {
            c.ipv4_list("nameServers", &nb.name_servers);
            c.ipv4_list("datagramServers", &nb.datagram_servers);
        });
    }
    if let Some(p) = d
        .lease_time
        .and_then(|lt| PositiveDuration::under_a_minute(lt, "of lease"))
    {
        c.only(OnlyDeorch::DurationMinimum, Some("leaseTime"), p);
    }
    let domain_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
            })
    };
    if let Some(dn) = &d.domain_name {
        if !domain_ok(dn) {
            c.field_err("domainName", format!("{dn:?} is not a domain name"));
        }
    }
    c.at("domainSearch", |c| {
        for (i, dn) in d.domain_search.iter().enumerate() {
            if !domain_ok(dn) {
                c.at(i, |c| c.err(format!("{dn:?} is not a domain name")));
            }
        }
    });
    c.at("classlessStaticRoutes", |c| {
        for (i, r) in d.classless_static_routes.iter().enumerate() {
            c.at(i, |c| {
                match r.destination.parse::<Ipv4Net>() {
                    Ok(n) if n.trunc() != n => c.only(
                        OnlyDeorch::SubnetHostBits,
                        Some("destination"),
                        format!(
                            "{:?} has host bits set: did you mean \"{}\"?",
                            r.destination,
                            n.trunc()
                        ),
                    ),
                    Ok(_) => {}
                    Err(_) => c.field_err(
                        "destination",
                        format!(
                            "{:?} is not an IPv4 CIDR: expected e.g. \"192.168.10.0/24\"",
                            r.destination
                        ),
                    ),
                }
                c.at("gateway", |c| c.ipv4(&r.gateway));
            });
        }
    });
}

fn dhcpcast(c: &mut Checker, d: &Dhcpcast) {
    if d.servers.is_empty() {
        c.field_err("servers", "name at least one central DHCP server");
    }
    c.ipv4_list("servers", &d.servers);
    if let Some(r) = &d.relay_address {
        c.at("relayAddress", |c| c.ipv4(r));
    }
}

fn access(c: &mut Checker, s: &AccessPolicySpec) {
    c.at("rules", |c| {
        for (i, r) in s.rules.iter().enumerate() {
            c.at(i, |c| {
                if r.subjects.is_empty() {
                    c.field_err("subjects", "name at least one Bitcoin address");
                }
                c.at("subjects", |c| {
                    for (j, a) in r.subjects.iter().enumerate() {
                        let ok = (26..=90).contains(&a.len()) && a.chars().all(|ch| ch.is_ascii_alphanumeric());
                        if !ok {
                            c.at(j, |c| c.err(format!("{a:?} does not look like a Bitcoin address")));
                        }
                    }
                });
                match (r.role.is_some(), !r.verbs.is_empty()) {
                    (true, true) => c.err("give role or verbs, not both"),
                    (false, false) => c.err("give a role (admin, operator, viewer) or verbs"),
                    _ => {}
                }
                c.at("kinds", |c| {
                    for (j, k) in r.kinds.iter().enumerate() {
                        if crate::model::Kind::from_kind(k).is_none() {
                            c.at(j, |c| c.err(format!("unknown kind {k:?}")));
                        }
                    }
                });
                if let Some(l2) = &r.level2 {
                    c.at("level2", |c| {
                        if l2.servers.is_empty() {
                            c.field_err("servers", "name at least one directory server");
                        }
                        c.at("servers", |c| {
                            for (j, srv) in l2.servers.iter().enumerate() {
                                c.at(j, |c| {
                                    if !(srv.uri.starts_with("ldap://") || srv.uri.starts_with("ldaps://")) {
                                        c.field_err("uri", format!("{:?}: expected ldap://HOST[:PORT] or ldaps://HOST[:PORT]", srv.uri));
                                    }
                                    match (&srv.bind_dn, &srv.user_principal_name) {
                                        (None, None) => c.err("give bindDn or userPrincipalName"),
                                        (Some(_), Some(_)) => c.err("give bindDn or userPrincipalName, not both"),
                                        (Some(dn), None) if !dn.contains("{user}") => c.field_err("bindDn", "must contain {user}"),
                                        (None, Some(upn)) if !upn.contains("{user}") => c.field_err("userPrincipalName", "must contain {user}"),
                                        _ => {}
                                    }
                                    if srv.start_tls && srv.uri.starts_with("ldaps://") {
                                        c.field_err("startTls", "StartTLS is for ldap:// URIs; ldaps:// is already TLS");
                                    }
                                });
                            }
                        });
                    });
                }
            });
        }
    });
}
