//! The fabric agent: one task per node (linux network driver only) that
//! computes the fabric from desired state and the radar ([`desired`]) and
//! applies it ([`super::kernel`]) whenever either changes: a VM placed,
//! relocated or failed over is a changed election, seen here as soon as
//! the gossip task publishes it. It also writes each local VM port's drop
//! counters into the VM's status (`status.nics.NAME.dropped`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};
use tracing::{debug, warn};

use super::kernel::Kernel;
use super::{counter, resolve, Binding, Desired, Port, SegmentState, RULES};
use crate::dhcp::Table;
use crate::model::{
    names, Kind, Manifest, NetworkSpec, ObjectKey, SpacesuitSpec, VirtualMachineSpec,
};
use crate::reconcile::network::server_address;
use crate::reconcile::vm::is_mine;
use crate::reconcile::Ctx;

/// How often the drop counters are read into status, and the radar's
/// node addresses looked at again.
const TICK: Duration = Duration::from_secs(1);

/// Changes closer together than this are applied together.
const SETTLE: Duration = Duration::from_millis(5);

fn key_of<S: crate::model::Spec>(m: &Manifest<S>, kind: Kind) -> ObjectKey {
    ObjectKey::new(
        kind,
        m.metadata.namespace.as_deref(),
        m.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// The Networks, VMs and Spacesuits of the store, decoded, kept between
/// rounds: a record is decoded again only when its generation changed
/// (the agent recomputes on every change of desired state or election
/// and every second; decoding every VM each time does not scale).
#[derive(Default)]
pub struct Decoded {
    networks: HashMap<ObjectKey, (i64, Arc<Manifest<NetworkSpec>>)>,
    vms: HashMap<ObjectKey, (i64, Arc<Manifest<VirtualMachineSpec>>)>,
    suits: HashMap<ObjectKey, (i64, Arc<Manifest<SpacesuitSpec>>)>,
}

impl Decoded {
    /// Bring the cache to the store's records (live ones only).
    fn refresh(&mut self, records: &[Arc<crate::store::Record>]) {
        fn keep<T: serde::de::DeserializeOwned>(
            map: &mut HashMap<ObjectKey, (i64, Arc<T>)>,
            seen: &mut HashSet<ObjectKey>,
            r: &crate::store::Record,
        ) {
            seen.insert(r.key.clone());
            if map.get(&r.key).is_some_and(|(g, _)| *g == r.generation) {
                return;
            }
            match serde_json::from_value::<T>(r.object.clone()) {
                Ok(v) => {
                    map.insert(r.key.clone(), (r.generation, Arc::new(v)));
                }
                Err(_) => {
                    map.remove(&r.key);
                }
            }
        }
        let mut seen = HashSet::new();
        for r in records.iter().filter(|r| !r.deleted) {
            match r.key.kind {
                Kind::Network => keep(&mut self.networks, &mut seen, r),
                Kind::VirtualMachine => keep(&mut self.vms, &mut seen, r),
                Kind::Spacesuit => keep(&mut self.suits, &mut seen, r),
                _ => {}
            }
        }
        self.networks.retain(|k, _| seen.contains(k));
        self.vms.retain(|k, _| seen.contains(k));
        self.suits.retain(|k, _| seen.contains(k));
    }
}

/// The fabric of this node as desired state and the radar say (decoding
/// the store afresh; the agent keeps a [`Decoded`] between rounds).
pub fn desired(ctx: &Ctx) -> Desired {
    desired_with(ctx, &mut Decoded::default())
}

/// [`desired`] with a decode cache.
pub fn desired_with(ctx: &Ctx, cache: &mut Decoded) -> Desired {
    cache.refresh(&ctx.store.list_shared());
    let mut networks: Vec<(&ObjectKey, &Manifest<NetworkSpec>)> = cache
        .networks
        .iter()
        .map(|(k, (_, m))| (k, m.as_ref()))
        .collect();
    networks.sort_by(|a, b| a.0.cmp(b.0));
    // The VMs on each network (namespace, network name), NICs a VM
    // inherits from its spacesuit counted as its own: one pass over the
    // VMs, not one per network.
    let mut on_net: HashMap<(&str, &str), Vec<Manifest<VirtualMachineSpec>>> = HashMap::new();
    let mut vm_keys: Vec<&ObjectKey> = cache.vms.keys().collect();
    vm_keys.sort();
    for k in vm_keys {
        let vm = &cache.vms[k].1;
        let inherited = match (&vm.spec.spacesuit, vm.spec.nics.is_empty()) {
            (Some(suit), true) => cache
                .suits
                .get(&ObjectKey::new(Kind::Spacesuit, Some(&k.namespace), suit))
                .map(|(_, s)| s.spec.nics.clone()),
            _ => None,
        };
        let mut names: Vec<&str> = Vec::new();
        let nics = inherited.as_ref().unwrap_or(&vm.spec.nics);
        for n in nics {
            if !names.contains(&n.network.as_str()) {
                names.push(n.network.as_str());
            }
        }
        if names.is_empty() {
            continue;
        }
        let mut m = vm.as_ref().clone();
        if let Some(nics) = inherited.clone() {
            m.spec.nics = nics;
        }
        for name in names {
            if let Some((key, _)) = networks
                .iter()
                .find(|(nk, _)| nk.namespace == k.namespace && nk.name == name)
            {
                on_net
                    .entry((key.namespace.as_str(), key.name.as_str()))
                    .or_default()
                    .push(m.clone());
            }
        }
    }
    let underlay = ctx
        .placement
        .as_ref()
        .map(|p| p.node_addresses())
        .unwrap_or_default();
    let me = &ctx.config.node_name;
    let all: Vec<(&ObjectKey, Option<(u32, String)>)> = networks
        .iter()
        .map(|(k, n)| (*k, super::id_of(k, &n.spec)))
        .collect();
    let mut d = Desired {
        nodes: underlay.values().copied().collect(),
        ..Default::default()
    };
    let none = Vec::new();
    for &(key, net) in &networks {
        let on = on_net
            .get(&(key.namespace.as_str(), key.name.as_str()))
            .unwrap_or(&none);
        let segment = match resolve(key, &net.spec, all.iter().cloned()) {
            Some(Ok(s)) => Some(s),
            Some(Err(_)) => {
                if let Some(w) = super::wanted(&key.namespace, &key.name, &net.spec) {
                    d.down.push(w.device);
                }
                None
            }
            None => None,
        };
        // The addresses the node's DHCP would hand out (the whole
        // network's allocation: every VM, wherever it runs).
        let table = net
            .spec
            .ipv4
            .as_ref()
            .and_then(|v4| server_address(v4, &ctx.config.node_addresses).ok())
            .and_then(|server| Table::build(net, on, server.addr(), |_| true).ok());
        // What the node's DHCP server really leased: it moves a NIC off
        // an address another's live lease holds, so a NIC may hold one the
        // allocation does not name.
        let leases = ctx
            .drivers
            .dhcp
            .as_ref()
            .and_then(|s| s.leases(&format!("{}/{}", key.namespace, key.name)));
        let now_ms = crate::clock::now_ms();
        let bridge = net
            .spec
            .bridge
            .clone()
            .unwrap_or_else(|| names::bridge(&key.namespace, &key.name));
        let mut state = segment.map(|segment| SegmentState {
            segment,
            bridge,
            remote_nodes: BTreeSet::new(),
            remote_macs: BTreeMap::new(),
            neighbours: BTreeMap::new(),
        });
        for vm in on {
            let vk = key_of(vm, Kind::VirtualMachine);
            let running_on = ctx
                .placement
                .as_ref()
                .map(|p| p.running_on(&vk))
                .unwrap_or_default();
            // Here: placed here, or still running here (the sender of a
            // relocation until the switch): its port keeps its rules.
            let here = is_mine(ctx, &vk, &vm.spec) || running_on.iter().any(|n| n == me);
            let remote: Option<Ipv4Addr> = if here {
                None
            } else {
                running_on
                    .iter()
                    .filter(|n| *n != me)
                    .find_map(|n| underlay.get(n).copied())
            };
            for nic in vm.spec.nics.iter().filter(|n| n.network == key.name) {
                let mac = nic
                    .mac
                    .clone()
                    .unwrap_or_else(|| names::mac(&vk.namespace, &vk.name, &nic.name))
                    .to_ascii_lowercase();
                let client = table
                    .as_ref()
                    .zip(crate::dhcp::parse_mac(&mac))
                    .and_then(|(t, m)| t.get(&m).cloned());
                let relayed = client.as_ref().is_some_and(|c| c.upstream.is_some());
                let ipv4 = client.as_ref().and_then(|c| c.address);
                let binding = Binding {
                    vm: vk.clone(),
                    nic: nic.name.clone(),
                    mac: mac.clone(),
                    ipv4,
                    tap: names::tap(&vk.namespace, &vk.name, &nic.name),
                };
                if here {
                    let identity = format!("{}/{}/{}", vk.namespace, vk.name, nic.name);
                    let leased = leases.as_ref().and_then(|l| l.of(&identity, now_ms));
                    let mut addresses: Vec<Ipv4Addr> = ipv4.into_iter().chain(leased).collect();
                    addresses.sort();
                    addresses.dedup();
                    d.ports.push(Port {
                        addresses: (!relayed).then_some(addresses),
                        binding,
                    });
                } else if let (Some(node), Some(s)) = (remote, state.as_mut()) {
                    s.remote_nodes.insert(node);
                    s.remote_macs.insert(mac.clone(), node);
                    if let Some(ip) = ipv4 {
                        s.neighbours.insert(ip, mac);
                    }
                }
            }
        }
        d.segments.extend(state);
    }
    d.ports.sort_by(|a, b| a.binding.tap.cmp(&b.binding.tap));
    d.ports.dedup_by(|a, b| a.binding.tap == b.binding.tap);
    d
}

/// Run until `shutdown`: apply the fabric on every change of desired
/// state or election, and the counters into status every [`TICK`].
pub async fn run(
    ctx: Arc<Ctx>,
    net: crate::node::config::NetKind,
    mut shutdown: watch::Receiver<bool>,
) {
    if net != crate::node::config::NetKind::Linux {
        return;
    }
    let mut changes = ctx.store.subscribe();
    let mut elections = ctx.placement.as_ref().map(|p| p.subscribe());
    let kernel = Arc::new(std::sync::Mutex::new(Kernel::default()));
    let mut tick = tokio::time::interval(TICK);
    let mut last: Option<Desired> = None;
    let mut cache = Decoded::default();
    let mut written: BTreeMap<(ObjectKey, String), BTreeMap<String, u64>> = BTreeMap::new();
    loop {
        let mut counters_due = false;
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => counters_due = true,
            c = changes.recv() => match c {
                Ok(c) if c.status_only => continue,
                // Only these kinds make the fabric.
                Ok(c) if !matches!(
                    c.key.kind,
                    Kind::Network | Kind::VirtualMachine | Kind::Spacesuit
                ) => continue,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            Some(_) = async {
                match elections.as_mut() {
                    Some(e) => Some(e.recv().await),
                    None => std::future::pending().await,
                }
            } => {}
        }
        // From the change that woke the agent to the kernel holding it:
        // the latency the fabric adds to a gossip update.
        let started = Instant::now();
        if !counters_due {
            // A burst (a file of many objects, a round of elections) is
            // one application.
            tokio::time::sleep(SETTLE).await;
            while changes.try_recv().is_ok() {}
            if let Some(e) = elections.as_mut() {
                while e.try_recv().is_ok() {}
            }
        }
        let want = desired_with(&ctx, &mut cache);
        if last.as_ref() != Some(&want) || counters_due {
            let k = kernel.clone();
            let w = want.clone();
            let errors = tokio::task::spawn_blocking(move || {
                k.lock().unwrap_or_else(|p| p.into_inner()).apply(&w)
            })
            .await
            .unwrap_or_default();
            if errors.is_empty() {
                if last.as_ref() != Some(&want) {
                    debug!(
                        segments = want.segments.len(),
                        ports = want.ports.len(),
                        remote = want
                            .segments
                            .iter()
                            .map(|s| s.remote_macs.len())
                            .sum::<usize>(),
                        nodes = want.nodes.len(),
                        since_change_us = started.elapsed().as_micros() as u64,
                        "fabric applied"
                    );
                }
                last = Some(want.clone());
            } else {
                for e in &errors {
                    warn!(error = %e, "fabric: a step failed; retried on the next change or tick");
                }
                last = None;
            }
        }
        if counters_due {
            let k = kernel.clone();
            let counts = tokio::task::spawn_blocking(move || {
                k.lock().unwrap_or_else(|p| p.into_inner()).counters()
            })
            .await
            .unwrap_or_default();
            write_counters(&ctx, &want, &counts, &mut written);
        }
    }
}

/// Each local port's non-zero drop counters into its VM's status, when
/// they differ from what the status holds.
fn write_counters(
    ctx: &Ctx,
    d: &Desired,
    counts: &BTreeMap<String, u64>,
    written: &mut BTreeMap<(ObjectKey, String), BTreeMap<String, u64>>,
) {
    for p in &d.ports {
        let b = &p.binding;
        let dropped: BTreeMap<String, u64> = RULES
            .iter()
            .filter_map(|r| {
                let n = *counts.get(&counter(&b.tap, r))?;
                (n > 0).then(|| (r.to_string(), n))
            })
            .collect();
        let id = (b.vm.clone(), b.nic.clone());
        if dropped.is_empty() && !written.contains_key(&id) {
            continue;
        }
        // Changed in one step on the stored status: the VM's reconciler
        // writes the rest of it, and a copy read before its last write
        // would put an old phase back.
        let now = serde_json::to_value(&dropped).unwrap_or_default();
        let written_ok = ctx.store.update_status(&b.vm, |record| {
            let mut status = record.status.clone()?;
            let nic = status
                .pointer_mut(&format!("/nics/{}", b.nic))
                .and_then(|n| n.as_object_mut())?;
            if nic.get("dropped").unwrap_or(&serde_json::Value::Null) == &now
                || (dropped.is_empty() && nic.get("dropped").is_none())
            {
                return None;
            }
            if dropped.is_empty() {
                nic.remove("dropped");
            } else {
                nic.insert("dropped".into(), now.clone());
            }
            Some(status)
        });
        if let Err(e) = written_ok {
            warn!(vm = %b.vm, error = %e, "fabric: writing drop counters");
        }
        written.insert(id, dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::fake::{FakeHypervisor, FakeNet, FakeStorage};
    use crate::reconcile::engine::Engine;
    use crate::reconcile::Drivers;
    use crate::reconcile::EngineConfig;
    use crate::store::{SourceId, Store};

    fn apply(store: &Store, yaml: &str) {
        let parsed = crate::manifest::parse_str(std::path::Path::new("t.yaml"), yaml);
        assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
        for d in &parsed.documents {
            store.apply(&d.object, &SourceId("api".into())).unwrap();
        }
    }

    fn taps(d: &Desired) -> Vec<String> {
        d.ports.iter().map(|p| p.binding.tap.clone()).collect()
    }

    /// The cached round sees what a fresh decode sees, through changes of
    /// the spacesuit a VM takes its NICs from and of the VM itself.
    #[test]
    fn the_decode_cache_follows_vms_their_spacesuits_and_networks() {
        let dir = std::env::temp_dir().join(format!("deorch-fabric-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Arc::new(Store::open(&dir.join("s.redb")).unwrap());
        let drivers = Drivers {
            hypervisor: Arc::new(FakeHypervisor::default()),
            storage: Arc::new(FakeStorage::default()),
            net: Arc::new(FakeNet::default()),
            dhcp: None,
        };
        let engine = Engine::new(
            store.clone(),
            drivers,
            EngineConfig {
                node_name: "n1".into(),
                ..EngineConfig::default()
            },
        );
        let ctx = engine.ctx();
        let head = "apiVersion: deorch.dev/v1alpha1\n";
        apply(
            &store,
            &format!("{head}kind: Network\nmetadata: {{name: lan}}\nspec: {{}}\n---\n{head}kind: Spacesuit\nmetadata: {{name: suit}}\nspec:\n  nics: [{{name: eth0, network: lan}}]\n---\n{head}kind: VirtualMachine\nmetadata: {{name: web}}\nspec: {{cpu: 1, memory: 64Mi, spacesuit: suit}}\n"),
        );
        let mut cache = Decoded::default();
        let tap = names::tap("default", "web", "eth0");
        let first = desired_with(&ctx, &mut cache);
        assert_eq!(taps(&first), vec![tap.clone()], "the inherited NIC's port");
        assert_eq!(first, desired(&ctx));
        // The spacesuit's NIC goes to another network: no port on lan.
        apply(
            &store,
            &format!("{head}kind: Network\nmetadata: {{name: dmz}}\nspec: {{}}\n---\n{head}kind: Spacesuit\nmetadata: {{name: suit}}\nspec:\n  nics: [{{name: eth1, network: dmz}}]\n"),
        );
        let second = desired_with(&ctx, &mut cache);
        assert_eq!(taps(&second), vec![names::tap("default", "web", "eth1")]);
        assert_eq!(second, desired(&ctx));
        // The VM declares its own NIC: the spacesuit's no longer count.
        apply(
            &store,
            &format!("{head}kind: VirtualMachine\nmetadata: {{name: web}}\nspec:\n  cpu: 1\n  memory: 64Mi\n  spacesuit: suit\n  nics: [{{name: eth0, network: lan}}]\n"),
        );
        let third = desired_with(&ctx, &mut cache);
        assert_eq!(taps(&third), vec![tap]);
        assert_eq!(third, desired(&ctx));
        // Deleted: gone from the cache too.
        store
            .delete(
                &ObjectKey::new(Kind::VirtualMachine, Some("default"), "web"),
                &SourceId("api".into()),
            )
            .unwrap();
        let fourth = desired_with(&ctx, &mut cache);
        assert!(fourth.ports.is_empty(), "{:?}", taps(&fourth));
        assert!(cache.vms.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
