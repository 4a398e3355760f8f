//! Placement election: which node runs a VM, decided by every node alone
//! with the same pure function over its own view.
//!
//! Filters: not cordoned, `performance` equal when asked, free capacity
//! for the VM, and the VM's [`TagSelector`] over the three tag families.
//! Score: weighted rendezvous hashing, `w / -ln(u)` with `u` a uniform hash
//! of (VM, node) and `w` the number of copies of the VM that still fit in
//! the node's free capacity, so every node computes the same order from the
//! same view, and emptier nodes win more often. See docs/ALGORITHMS.md for
//! the claim protocol built on it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::rng::mix64;
use super::wire::{DocKey, NodeId, NodeStatus, Resources, TagSet};
use crate::model::{Performance, TagSelector, VirtualMachineSpec};

/// What a VM needs from the node that runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRequest {
    /// The VM.
    pub vm: DocKey,
    /// Tags the node must match.
    pub selector: Option<TagSelector>,
    /// Class the node must have.
    pub performance: Option<Performance>,
    /// Resources the VM uses.
    pub need: Resources,
    /// Its disks hold data only its node has (a writable disk, not
    /// `stateless`): when that node dies, nobody starts it elsewhere on
    /// its own (`NodeLost`, until `deorch recover`).
    pub holds_data: bool,
    /// A node that may not win (a relocation's sender).
    pub exclude: Option<NodeId>,
    /// The only node that may win (a relocation to a named node or
    /// address, resolved to its ID).
    pub only: Option<NodeId>,
    /// The accelerator the winner must have (a running VM moves only
    /// between nodes with the same one).
    pub accel: Option<String>,
    /// The host CPU the winner must have (a running VM whose CPU model is
    /// the host's, under KVM, moves only between nodes with the same
    /// CPU).
    pub cpu: Option<String>,
    /// Its spacesuit's image ([`super::wire::image_hint`]): nodes that
    /// hold it rank above those that would fetch it.
    pub image: Option<u64>,
    /// It has a FASTR policy: when its node dies, a holder of its newest
    /// copy point may start it from that point.
    pub fastr: bool,
    /// The only nodes that may win (the holders of the newest FASTR
    /// point, when the VM's node died; of any copy of `copy_source`).
    pub holders: Option<Vec<NodeId>>,
    /// The VM a disk of this one is cloned from at a FASTR copy point
    /// (`source.fastrCopy`): only a node that holds a copy of it may
    /// place it first.
    pub copy_source: Option<DocKey>,
    /// Strict mode (`placement.strict`): run only where a majority of
    /// the cluster is seen (docs/ALGORITHMS.md, "Strict mode").
    pub strict: bool,
    /// A relocation's receiver: these nodes (the holders of the VM's
    /// newest FASTR point) rank above the others (their copy is the base
    /// of the streams: only what changed since moves).
    pub prefer: Vec<NodeId>,
}

impl VmRequest {
    /// The request of a VM that the radar places, or `None` for manual
    /// placement (`placement.node` or `placement.address`), which bypasses
    /// the election.
    pub fn from_spec(vm: DocKey, spec: &VirtualMachineSpec) -> Option<VmRequest> {
        let p = spec.placement.clone().unwrap_or_default();
        if p.by_hand() {
            return None;
        }
        Some(Self::needs(vm, spec))
    }

    /// What the VM needs from a node and its own selector and performance
    /// class, whoever places it (a relocation elects a receiver for a VM
    /// placed by hand too).
    pub fn needs(vm: DocKey, spec: &VirtualMachineSpec) -> VmRequest {
        let p = spec.placement.clone().unwrap_or_default();
        let storage = spec
            .disks
            .iter()
            .filter_map(|d| d.size.map(|q| q.bytes()))
            .sum();
        VmRequest {
            vm: vm.clone(),
            strict: p.strict,
            selector: p.selector,
            performance: p.performance,
            need: Resources {
                cpu_millis: spec.cpu.map(|c| c.millis()).unwrap_or(1000),
                memory: spec.memory.map(|m| m.bytes()).unwrap_or(512 << 20),
                storage,
            },
            holds_data: spec.holds_data(),
            exclude: None,
            only: None,
            accel: None,
            cpu: None,
            image: None,
            fastr: spec.fastr.is_some(),
            holders: None,
            prefer: Vec::new(),
            copy_source: spec.disks.iter().find_map(|d| {
                let r = d.source.fastr_copy.as_ref()?;
                let ns = r.namespace.as_deref().unwrap_or(&vm.namespace);
                Some(DocKey::new("VirtualMachine", ns, &r.name))
            }),
        }
    }

    /// The request of a VirtualMachine manifest given as JSON bytes.
    pub fn from_json(vm: DocKey, body: &[u8]) -> Option<VmRequest> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let spec: VirtualMachineSpec = serde_json::from_value(v.get("spec")?.clone()).ok()?;
        Self::from_spec(vm, &spec)
    }
}

/// Whether `labels` satisfy a Kubernetes label selector (`matchLabels`
/// and `matchExpressions` with `In`, `NotIn`, `Exists`, `DoesNotExist`).
/// An unknown operator matches nothing.
pub fn label_selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(ml) = &sel.match_labels {
        if ml.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let have = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or(&[]);
        let ok = match e.operator.as_str() {
            "In" => have.is_some_and(|h| values.contains(h)),
            "NotIn" => !have.is_some_and(|h| values.contains(h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Whether `tags` satisfy every family given in `sel`.
pub fn tags_match(sel: &TagSelector, tags: &TagSet) -> bool {
    let fam = |s: &Option<LabelSelector>, l: &BTreeMap<String, String>| {
        s.as_ref().is_none_or(|s| label_selector_matches(s, l))
    };
    fam(&sel.microcosm, &tags.microcosm)
        && fam(&sel.macrocosm, &tags.macrocosm)
        && fam(&sel.intercosm, &tags.intercosm)
}

/// A filter a node fails for a VM: why it may not run it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmet {
    /// The node is cordoned.
    Cordoned,
    /// The node's performance class is not the one asked for.
    Performance {
        /// Asked for.
        want: Performance,
        /// The node's.
        have: Performance,
    },
    /// The VM does not fit in the node's free capacity.
    Capacity,
    /// The node's tags do not match the VM's selector.
    Tags,
    /// The node is the relocation's sender.
    Sender,
    /// The relocation names another node.
    NotTarget,
    /// The node's accelerator is not the running VM's.
    Accel,
    /// The node's host CPU is not the one the running VM sees.
    Cpu,
    /// The node holds no copy of the VM's newest FASTR point.
    NoCopy,
}

impl std::fmt::Display for Unmet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unmet::Cordoned => write!(f, "cordoned"),
            Unmet::Performance { want, have } => {
                let class = |p: &Performance| format!("{p:?}").to_lowercase();
                write!(
                    f,
                    "performance {}, the VM asks for {}",
                    class(have),
                    class(want)
                )
            }
            Unmet::Capacity => write!(f, "not enough free capacity"),
            Unmet::Tags => write!(f, "tags do not match the VM's selector"),
            Unmet::Sender => write!(f, "it runs the VM (the relocation's sender)"),
            Unmet::NotTarget => write!(f, "the relocation names another node"),
            Unmet::NoCopy => write!(
                f,
                "no copy of the VM's newest FASTR point (or, for a VM cloned from a copy point, no copy of its source)"
            ),
            Unmet::Accel => write!(f, "another accelerator than the VM runs under"),
            Unmet::Cpu => write!(
                f,
                "another host CPU than the VM sees (its CPU model is the host's)"
            ),
        }
    }
}

/// Every filter `node` fails for `req` (empty: it may run it).
pub fn unmet(req: &VmRequest, node: &NodeStatus) -> Vec<Unmet> {
    let mut out = Vec::new();
    if req.exclude.as_ref() == Some(&node.id) {
        out.push(Unmet::Sender);
    }
    if req.only.as_ref().is_some_and(|o| *o != node.id) {
        out.push(Unmet::NotTarget);
    }
    if req.holders.as_ref().is_some_and(|h| !h.contains(&node.id)) {
        out.push(Unmet::NoCopy);
    }
    if req.accel.as_ref().is_some_and(|a| *a != node.accel) {
        out.push(Unmet::Accel);
    }
    if req.cpu.as_ref().is_some_and(|c| *c != node.cpu) {
        out.push(Unmet::Cpu);
    }
    if node.unschedulable {
        out.push(Unmet::Cordoned);
    }
    if let Some(want) = req.performance.filter(|p| *p != node.performance) {
        out.push(Unmet::Performance {
            want,
            have: node.performance,
        });
    }
    if !node.free.fits(&req.need) {
        out.push(Unmet::Capacity);
    }
    if req
        .selector
        .as_ref()
        .is_some_and(|s| !tags_match(s, &node.tags))
    {
        out.push(Unmet::Tags);
    }
    out
}

/// Whether `node` may run `req` at all.
pub fn eligible(req: &VmRequest, node: &NodeStatus) -> bool {
    unmet(req, node).is_empty()
}

/// Why no node of `candidates` may run `req`, or `None` when one may (or
/// there is no candidate to judge).
pub fn why_unplaceable<'a>(
    req: &VmRequest,
    candidates: impl IntoIterator<Item = &'a NodeStatus>,
) -> Option<String> {
    let mut reasons = Vec::new();
    for n in candidates {
        let u = unmet(req, n);
        if u.is_empty() {
            return None;
        }
        let u: Vec<String> = u.iter().map(|x| x.to_string()).collect();
        reasons.push(format!("{}: {}", n.id, u.join(", ")));
    }
    if reasons.is_empty() {
        return None;
    }
    let n = reasons.len();
    reasons.sort();
    reasons.truncate(5);
    Some(format!(
        "none of the {n} node(s) satisfies the VM's placement ({}{})",
        reasons.join("; "),
        if n > 5 { "; …" } else { "" }
    ))
}

/// How many copies of `need` fit in `free` (at least 1 when eligible).
fn weight(need: &Resources, free: &Resources) -> f64 {
    let ratio = |f: u64, n: u64| {
        if n == 0 {
            f64::INFINITY
        } else {
            f as f64 / n as f64
        }
    };
    let w = ratio(free.cpu_millis, need.cpu_millis)
        .min(ratio(free.memory, need.memory))
        .min(ratio(free.storage, need.storage));
    if w.is_finite() {
        w.max(1.0)
    } else {
        1.0
    }
}

/// The rendezvous score of a node for a VM, as sortable bits (greater
/// wins). `vm_hash` and `node_hash` are [`DocKey::hash64`] and
/// [`NodeId::hash64`].
pub fn score(vm_hash: u64, node_hash: u64, need: &Resources, free: &Resources) -> u64 {
    let h = mix64(vm_hash ^ mix64(node_hash));
    // u in (0, 1): never 0, never 1.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let s = weight(need, free) / -u.ln();
    // Positive finite f64s order like their bit patterns.
    s.to_bits()
}

/// A candidate's score for `req`: [`score`], with the top bit set when
/// the node holds the VM's image, or (a relocation's receiver) a FASTR
/// copy of the VM (a positive finite f64's bits never have it), so every
/// node that holds it ranks above every node that does not, and claims
/// compare the same way everywhere.
pub fn node_score(req: &VmRequest, vm_hash: u64, n: &NodeStatus) -> u64 {
    let s = score(vm_hash, n.id.hash64(), &req.need, &n.free);
    let holds = req.image.is_some_and(|i| n.images.contains(&i)) || req.prefer.contains(&n.id);
    if holds {
        s | 1 << 63
    } else {
        s
    }
}

/// The best eligible candidate and its score, in one pass (O(n)).
/// Ties (equal scores) go to the greater node hash.
pub fn best<'a>(
    req: &VmRequest,
    candidates: impl IntoIterator<Item = &'a NodeStatus>,
) -> Option<(NodeId, u64)> {
    let vm_hash = req.vm.hash64();
    let mut best: Option<(&NodeStatus, (u64, u64))> = None;
    for n in candidates {
        if !eligible(req, n) {
            continue;
        }
        let nh = n.id.hash64();
        let key = (node_score(req, vm_hash, n), nh);
        if best.as_ref().is_none_or(|b| key > b.1) {
            best = Some((n, key));
        }
    }
    best.map(|(n, k)| (n.id.clone(), k.0))
}

/// Every eligible candidate, best first, with its score.
pub fn rank<'a>(
    req: &VmRequest,
    candidates: impl IntoIterator<Item = &'a NodeStatus>,
) -> Vec<(NodeId, u64)> {
    let vm_hash = req.vm.hash64();
    let mut v: Vec<(u64, u64, &NodeId)> = candidates
        .into_iter()
        .filter(|n| eligible(req, n))
        .map(|n| {
            let nh = n.id.hash64();
            (node_score(req, vm_hash, n), nh, &n.id)
        })
        .collect();
    v.sort_by_key(|x| std::cmp::Reverse((x.0, x.1)));
    v.into_iter().map(|(s, _, id)| (id.clone(), s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::wire::NodeStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    pub(crate) fn status(id: &str, rack: &str, perf: Performance, free_gib: u64) -> NodeStatus {
        let mut tags = TagSet::default();
        tags.microcosm.insert("rack".into(), rack.into());
        tags.macrocosm.insert("region".into(), "eu".into());
        let r = Resources {
            cpu_millis: 64_000,
            memory: free_gib << 30,
            storage: 1 << 40,
        };
        NodeStatus {
            name: id.into(),
            sig: Vec::new(),
            id: NodeId(id.into()),
            incarnation: 0,
            seq: 1,
            tags,
            performance: perf,
            total: r,
            free: r,
            load_milli: 0,
            vms: vec![],
            unschedulable: false,
            away_until_ms: 0,
            accel: String::new(),
            cpu: String::new(),
            images: vec![],
            copies: vec![],
            page: String::new(),
        }
    }

    fn req(sel: Option<TagSelector>, perf: Option<Performance>) -> VmRequest {
        VmRequest {
            vm: DocKey::new("VirtualMachine", "default", "web"),
            selector: sel,
            performance: perf,
            need: Resources {
                cpu_millis: 1000,
                memory: 1 << 30,
                storage: 0,
            },
            holds_data: false,
            exclude: None,
            only: None,
            accel: None,
            cpu: None,
            image: None,
            fastr: false,
            holders: None,
            copy_source: None,
            strict: false,
            prefer: Vec::new(),
        }
    }

    #[test]
    fn nodes_that_hold_the_image_rank_above_those_that_would_fetch_it() {
        let image = crate::gossip::wire::image_hint(&"ab".repeat(32)).unwrap();
        let mut nodes: Vec<NodeStatus> = (0..8)
            .map(|i| status(&format!("n{i}"), "r1", Performance::Low, 64))
            .collect();
        let mut r = req(None, None);
        let plain = rank(&r, &nodes);
        // The last in the plain ranking holds the image; the VM names none
        // yet: nothing changes.
        let holder = plain.last().unwrap().0.clone();
        nodes
            .iter_mut()
            .find(|n| n.id == holder)
            .unwrap()
            .images
            .push(image);
        assert_eq!(rank(&r, &nodes), plain);
        // It names that image: the holder comes first, the others keep
        // their order; best() agrees.
        r.image = Some(image);
        let with = rank(&r, &nodes);
        assert_eq!(with[0].0, holder);
        let others: Vec<_> = with[1..].iter().map(|x| x.0.clone()).collect();
        let before: Vec<_> = plain[..plain.len() - 1]
            .iter()
            .map(|x| x.0.clone())
            .collect();
        assert_eq!(others, before);
        assert_eq!(best(&r, &nodes).unwrap(), with[0]);
        // A hash that is not a SHA-256 is no hint.
        assert_eq!(crate::gossip::wire::image_hint("../../etc"), None);
    }

    #[test]
    fn a_relocation_prefers_the_nodes_holding_a_copy_of_the_vm() {
        let nodes: Vec<NodeStatus> = (0..8)
            .map(|i| status(&format!("n{i}"), "r1", Performance::Low, 64))
            .collect();
        let mut r = req(None, None);
        let plain = rank(&r, &nodes);
        let holder = plain.last().unwrap().0.clone();
        r.prefer = vec![holder.clone()];
        let with = rank(&r, &nodes);
        assert_eq!(with[0].0, holder, "the holder first");
        assert_eq!(best(&r, &nodes).unwrap(), with[0]);
        // Only a preference: a holder that cannot take the VM is skipped.
        r.exclude = Some(holder.clone());
        assert_ne!(best(&r, &nodes).unwrap().0, holder);
    }

    #[test]
    fn filters_select_by_tags_performance_and_capacity() {
        let nodes = vec![
            status("a", "r1", Performance::High, 64),
            status("b", "r2", Performance::High, 64),
            status("c", "r1", Performance::Low, 64),
            status("d", "r1", Performance::High, 0),
        ];
        let sel = TagSelector {
            microcosm: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "rack".into(),
                    operator: "In".into(),
                    values: Some(vec!["r1".into()]),
                }]),
                match_labels: None,
            }),
            ..Default::default()
        };
        let r = rank(&req(Some(sel.clone()), Some(Performance::High)), &nodes);
        assert_eq!(
            r.iter().map(|x| x.0 .0.as_str()).collect::<Vec<_>>(),
            vec!["a"]
        );
        assert_eq!(rank(&req(None, None), &nodes).len(), 3);
        // Each filter a node fails is named.
        let why = why_unplaceable(&req(Some(sel), Some(Performance::High)), &nodes[1..])
            .expect("b, c and d all fail");
        assert!(why.contains("b: tags do not match"), "{why}");
        assert!(
            why.contains("c: performance low, the VM asks for high"),
            "{why}"
        );
        assert!(why.contains("d: not enough free capacity"), "{why}");
        assert_eq!(why_unplaceable(&req(None, None), &nodes), None);
    }

    #[test]
    fn best_is_the_head_of_rank_whatever_the_order() {
        let mut nodes: Vec<NodeStatus> = (0..200)
            .map(|i| status(&format!("n{i}"), "r1", Performance::High, 2 + i % 50))
            .collect();
        let r = req(None, None);
        let b = best(&r, &nodes).unwrap();
        assert_eq!(rank(&r, &nodes)[0], b);
        nodes.reverse();
        assert_eq!(best(&r, &nodes).unwrap(), b);
    }

    #[test]
    fn more_free_capacity_wins_proportionally_more_often() {
        // Two nodes, one with 4× the room: over many VMs it should win ~80%.
        let nodes = [
            status("small", "r", Performance::High, 4),
            status("large", "r", Performance::High, 16),
        ];
        let mut large = 0;
        for i in 0..4000 {
            let mut r = req(None, None);
            r.vm = DocKey::new("VirtualMachine", "default", &format!("vm{i}"));
            if best(&r, &nodes).unwrap().0 .0 == "large" {
                large += 1;
            }
        }
        assert!((3000..3400).contains(&large), "{large}");
    }

    #[test]
    fn manual_placement_bypasses_the_election() {
        let spec: VirtualMachineSpec = serde_json::from_value(serde_json::json!({
            "placement": {"node": "sat-1"}
        }))
        .unwrap();
        assert!(VmRequest::from_spec(DocKey::new("VirtualMachine", "d", "x"), &spec).is_none());
        let spec: VirtualMachineSpec = serde_json::from_value(serde_json::json!({
            "memory": "2Gi", "placement": {"performance": "high"}
        }))
        .unwrap();
        let r = VmRequest::from_spec(DocKey::new("VirtualMachine", "d", "x"), &spec).unwrap();
        assert_eq!(r.need.memory, 2 << 30);
        assert_eq!(r.performance, Some(Performance::High));
    }
}
