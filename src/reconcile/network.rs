//! Network: the bridge exists; with real host interfaces it also has the
//! node's address on the network and the node's DHCP server answers this
//! node's VMs on it, with the manifest's options (docs/ARCHITECTURE.md,
//! "Network data path").
//!
//! [`resolve`] reads the spec, the node's addresses and the VMs (the DHCP
//! table is made of them); [`observe`] asks the drivers what this node can
//! do; [`plan`] decides; [`execute`] calls the drivers; `status` reports.

use ipnet::Ipv4Net;

use super::kind::{run, Reconciler};
use super::status::{not_ready, ready};
use super::vm::is_mine;
use super::{decode, names, previous, Ctx, Outcome, Plan, ReconcileError};
use crate::dhcp::service::Served;
use crate::dhcp::{ServerConfig, Table};
use crate::driver::{BoxFuture, Vxlan};
use crate::model::network::{InterstellarStatus, Ipv4Config, NetworkStatus};
use crate::model::{Kind, Manifest, NetworkSpec, ObjectKey, VirtualMachineSpec};
use crate::store::Record;

/// The network as this node should have it.
#[derive(Debug, Clone)]
pub struct Desired {
    /// The object was deleted: take it down.
    pub deleted: bool,
    /// `namespace/name`, the DHCP service's name for it.
    pub id: String,
    /// The bridge (the spec's, else derived from the name).
    pub bridge: String,
    /// Bridge MTU.
    pub mtu: u16,
    /// The node's address on the network: `None` without `ipv4`, `Err`
    /// when none of the node's addresses, the gateway or the subnet fits.
    pub address: Option<Result<Ipv4Net, String>>,
    /// The DHCP table when the node serves DHCP and the network has an
    /// address for it and DHCP enabled; `Err` when the VMs' NICs make no
    /// valid table.
    pub dhcp: Option<Result<Table, String>>,
    /// The host interface the bridge is attached to.
    pub uplink: Option<String>,
    /// The interstellar segment's VXLAN device; `Err` when its VNI
    /// collides with another network's.
    pub vxlan: Option<Result<Vxlan, String>>,
    /// A VXLAN device an earlier version of the network had here (its
    /// status says), to remove.
    pub stale_vxlan: Option<String>,
}

/// What the node's drivers can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// Bridges are real interfaces (they can carry an address).
    pub host_interfaces: bool,
    /// The node runs DHCP servers.
    pub serves_dhcp: bool,
}

/// One step, with everything it needs.
#[derive(Debug, Clone)]
pub enum Action {
    /// Create or update the bridge.
    EnsureBridge {
        /// Bridge.
        bridge: String,
        /// MTU.
        mtu: u16,
    },
    /// Give the bridge exactly this address (or none).
    SetAddress {
        /// Bridge.
        bridge: String,
        /// The node's address on the network.
        address: Option<Ipv4Net>,
    },
    /// Serve `table` on the bridge from `address`.
    Serve {
        /// `namespace/name`.
        id: String,
        /// Bridge.
        bridge: String,
        /// Server identifier.
        address: Ipv4Net,
        /// Clients.
        table: Table,
    },
    /// Stop serving DHCP on the network.
    StopDhcp {
        /// `namespace/name`.
        id: String,
    },
    /// Remove the bridge.
    RemoveBridge {
        /// Bridge.
        bridge: String,
    },
    /// Attach exactly this uplink (or none).
    SetUplink {
        /// Bridge.
        bridge: String,
        /// Host interface.
        uplink: Option<String>,
    },
    /// Create or update the interstellar's VXLAN device.
    EnsureVxlan(Vxlan),
    /// Remove a VXLAN device.
    RemoveVxlan {
        /// Device.
        device: String,
    },
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::EnsureBridge { bridge, mtu } => write!(f, "ensure bridge {bridge} (MTU {mtu})"),
            Action::SetAddress {
                bridge,
                address: Some(a),
            } => write!(f, "set address {a} on bridge {bridge}"),
            Action::SetAddress {
                bridge,
                address: None,
            } => write!(f, "remove the node's address from bridge {bridge}"),
            Action::Serve {
                bridge,
                address,
                table,
                ..
            } => write!(
                f,
                "serve DHCP on bridge {bridge} from {address} to {} NIC(s)",
                table.clients.len()
            ),
            Action::StopDhcp { id } => write!(f, "stop serving DHCP for network {id}"),
            Action::RemoveBridge { bridge } => write!(f, "remove bridge {bridge}"),
            Action::SetUplink {
                bridge,
                uplink: Some(u),
            } => write!(f, "attach uplink {u} to bridge {bridge}"),
            Action::SetUplink {
                bridge,
                uplink: None,
            } => write!(f, "keep bridge {bridge} host-only"),
            Action::EnsureVxlan(v) => write!(
                f,
                "ensure VXLAN {} (VNI {}{}) on bridge {}",
                v.device,
                v.vni,
                if v.arpless { ", ARP-less" } else { "" },
                v.bridge
            ),
            Action::RemoveVxlan { device } => write!(f, "remove VXLAN {device}"),
        }
    }
}

/// The Network reconciler.
pub struct Networks;

impl Reconciler for Networks {
    type Desired = Desired;
    type Observed = Observed;
    type Action = Action;
    type Executed = Option<Served>;
    fn resolve(ctx: &Ctx, record: &Record) -> Result<Desired, ReconcileError> {
        resolve(ctx, record)
    }
    fn deleted(d: &Desired) -> bool {
        d.deleted
    }
    fn observe<'a>(
        ctx: &'a Ctx,
        _: &'a Desired,
    ) -> BoxFuture<'a, Result<Observed, ReconcileError>> {
        Box::pin(std::future::ready(Ok(observe(ctx))))
    }
    fn plan(d: &Desired, o: &Observed) -> Plan<Action> {
        plan(d, o)
    }
    fn execute<'a>(
        ctx: &'a Ctx,
        actions: &'a [Action],
    ) -> BoxFuture<'a, Result<Option<Served>, ReconcileError>> {
        Box::pin(execute(ctx, actions))
    }
    fn status(
        ctx: &Ctx,
        record: &Record,
        d: &Desired,
        plan: &Plan<Action>,
        result: Result<Option<Served>, ReconcileError>,
    ) -> Result<Outcome, ReconcileError> {
        status(ctx, record, d, plan, result)
    }
}

/// Reconcile one Network.
pub async fn reconcile(ctx: &Ctx, record: &Record) -> Result<Outcome, ReconcileError> {
    run::<Networks>(ctx, record).await
}

/// The network as desired on this node.
pub fn resolve(ctx: &Ctx, record: &Record) -> Result<Desired, ReconcileError> {
    let net: Manifest<NetworkSpec> = decode(record)?;
    let key = &record.key;
    let address = net
        .spec
        .ipv4
        .as_ref()
        .map(|v4| server_address(v4, &ctx.config.node_addresses));
    let enabled = net.spec.dhcp.as_ref().and_then(|d| d.enabled) != Some(false);
    // The table is made of every VM: built only where a DHCP server runs.
    let serves = ctx.drivers.dhcp.is_some() && enabled && !record.deleted;
    let dhcp = match &address {
        Some(Ok(a)) if serves => Some(table(ctx, &net, a)),
        _ => None,
    };
    let bridge = net
        .spec
        .bridge
        .clone()
        .unwrap_or_else(|| names::bridge(&key.namespace, &key.name));
    let mtu = net.spec.effective_mtu();
    let vxlan = if record.deleted {
        None
    } else {
        segment(ctx, key, &net.spec).map(|r| {
            r.map(|s| Vxlan {
                device: s.device,
                bridge: bridge.clone(),
                vni: s.vni,
                mtu,
                arpless: s.arpless,
                bridge_mac: s.anycast_mac,
            })
        })
    };
    let had = previous::<NetworkStatus>(record)
        .interstellar
        .map(|i| i.device);
    let stale_vxlan =
        had.filter(|d| record.deleted || !matches!(&vxlan, Some(Ok(v)) if &v.device == d));
    Ok(Desired {
        deleted: record.deleted,
        id: format!("{}/{}", key.namespace, key.name),
        bridge,
        mtu,
        address,
        dhcp,
        uplink: net.spec.uplink.clone(),
        vxlan,
        stale_vxlan,
    })
}

/// The interstellar segment of a network, looked at against every other
/// Network of the cluster (VNI collisions).
fn segment(
    ctx: &Ctx,
    key: &ObjectKey,
    spec: &NetworkSpec,
) -> Option<Result<crate::fabric::Segment, String>> {
    crate::fabric::wanted(&key.namespace, &key.name, spec)?;
    // Read in place: no decode of every Network for each reconcile.
    let others: Vec<(ObjectKey, Option<(u32, String)>)> = match ctx.pending.is_empty() {
        true => ctx
            .store
            .list_shared()
            .iter()
            .filter(|r| !r.deleted)
            .filter_map(|r| Some((r.key.clone(), Some(crate::fabric::segment_of(r)?))))
            .collect(),
        false => ctx
            .list(Some(Kind::Network))
            .iter()
            .filter(|r| !r.deleted)
            .filter_map(|r| Some((r.key.clone(), Some(crate::fabric::segment_of(r)?))))
            .collect(),
    };
    crate::fabric::resolve(key, spec, others.iter().map(|(k, s)| (k, s.clone())))
}

/// The DHCP table of `net`: every VM's NICs on it, this node's answered.
/// The engine's index names the VMs on the network; a dry run (records
/// pending on top of the store) looks at every VM.
fn table(ctx: &Ctx, net: &Manifest<NetworkSpec>, address: &Ipv4Net) -> Result<Table, String> {
    let key = ObjectKey::new(
        Kind::Network,
        net.metadata.namespace.as_deref(),
        net.metadata.name.as_deref().unwrap_or_default(),
    );
    let indexed = match ctx.pending.is_empty() {
        true => ctx.vms_by_network.vms_on(&key),
        false => None,
    };
    let records: Vec<_> = match indexed {
        Some(keys) => keys
            .iter()
            .filter_map(|k| ctx.get(k))
            .filter(|r| !r.deleted)
            .collect(),
        None => ctx.list(Some(Kind::VirtualMachine)),
    };
    let vms: Vec<Manifest<VirtualMachineSpec>> = records
        .into_iter()
        .filter_map(|r| {
            let mut vm: Manifest<VirtualMachineSpec> = serde_json::from_value(r.object).ok()?;
            super::vm::inherit_nics(ctx, &r.key.namespace, &mut vm.spec);
            Some(vm)
        })
        .collect();
    Table::build(net, &vms, address.addr(), |vm| {
        let key = ObjectKey::new(
            Kind::VirtualMachine,
            vm.metadata.namespace.as_deref(),
            vm.metadata.name.as_deref().unwrap_or_default(),
        );
        is_mine(ctx, &key, &vm.spec)
    })
    .map_err(|e| e.to_string())
}

/// What this node's drivers can do.
pub fn observe(ctx: &Ctx) -> Observed {
    Observed {
        host_interfaces: ctx.drivers.net.host_interfaces(),
        serves_dhcp: ctx.drivers.dhcp.is_some(),
    }
}

/// The steps from `o` to `d`. Bridges are ensured (idempotent), so the
/// drivers' capabilities are all there is to observe.
pub fn plan(d: &Desired, o: &Observed) -> Plan<Action> {
    let stop = Action::StopDhcp { id: d.id.clone() };
    let stale = d.stale_vxlan.iter().map(|device| Action::RemoveVxlan {
        device: device.clone(),
    });
    if d.deleted {
        let remove = Action::RemoveBridge {
            bridge: d.bridge.clone(),
        };
        let mut actions: Vec<Action> = stale.collect();
        if o.serves_dhcp {
            actions.push(stop);
        }
        actions.push(remove);
        return Plan::Act(actions);
    }
    let mut actions = vec![Action::EnsureBridge {
        bridge: d.bridge.clone(),
        mtu: d.mtu,
    }];
    if !o.host_interfaces {
        return Plan::Act(actions);
    }
    actions.extend(stale);
    actions.push(Action::SetUplink {
        bridge: d.bridge.clone(),
        uplink: d.uplink.clone(),
    });
    match &d.vxlan {
        None => {}
        Some(Ok(v)) => actions.push(Action::EnsureVxlan(v.clone())),
        Some(Err(m)) => {
            return Plan::Fail(ReconcileError::permanent(
                crate::fabric::COLLISION_REASON,
                m.clone(),
            ))
        }
    }
    let address = match &d.address {
        None => None,
        Some(Ok(a)) => Some(*a),
        Some(Err(m)) => return Plan::Fail(ReconcileError::permanent("NoServerAddress", m.clone())),
    };
    actions.push(Action::SetAddress {
        bridge: d.bridge.clone(),
        address,
    });
    if !o.serves_dhcp {
        return Plan::Act(actions);
    }
    actions.push(match (address, &d.dhcp) {
        (Some(address), Some(Ok(table))) => Action::Serve {
            id: d.id.clone(),
            bridge: d.bridge.clone(),
            address,
            table: table.clone(),
        },
        (_, Some(Err(m))) => {
            return Plan::Fail(ReconcileError::permanent("DhcpConfigInvalid", m.clone()))
        }
        _ => stop,
    });
    Plan::Act(actions)
}

/// Carry out `actions`; what the DHCP server serves, when it was asked to.
pub async fn execute(ctx: &Ctx, actions: &[Action]) -> Result<Option<Served>, ReconcileError> {
    let net = &ctx.drivers.net;
    let mut served = None;
    for a in actions {
        match a {
            Action::EnsureBridge { bridge, mtu } => net.ensure_bridge(bridge, *mtu).await?,
            Action::SetAddress { bridge, address } => {
                net.set_bridge_address(bridge, *address).await?
            }
            Action::RemoveBridge { bridge } => net.remove_bridge(bridge).await?,
            Action::SetUplink { bridge, uplink } => {
                net.set_uplink(bridge, uplink.as_deref()).await?
            }
            Action::EnsureVxlan(v) => net.ensure_vxlan(v).await?,
            Action::RemoveVxlan { device } => net.remove_vxlan(device).await?,
            Action::StopDhcp { id } => {
                if let Some(dhcp) = &ctx.drivers.dhcp {
                    dhcp.stop(id).await;
                }
            }
            Action::Serve {
                id,
                bridge,
                address,
                table,
            } => {
                let Some(dhcp) = &ctx.drivers.dhcp else {
                    continue;
                };
                let config = ServerConfig::new(address.addr());
                let s = dhcp
                    .serve(id, bridge, config, table.clone())
                    .await
                    .map_err(|e| ReconcileError::transient("DhcpFailed", e.to_string()))?;
                served = Some(s);
            }
        }
    }
    Ok(served)
}

/// Write the outcome into the status.
fn status(
    ctx: &Ctx,
    record: &Record,
    d: &Desired,
    plan: &Plan<Action>,
    result: Result<Option<Served>, ReconcileError>,
) -> Result<Outcome, ReconcileError> {
    let mut st: NetworkStatus = previous(record);
    st.observed_generation = Some(record.generation);
    let served = match result {
        Ok(served) => served,
        Err(e) => {
            not_ready(&mut st.conditions, &e, record.generation);
            ctx.write_status(&record.key, &st)?;
            return Err(e);
        }
    };
    let actions = match plan {
        Plan::Act(a) => a.as_slice(),
        _ => &[],
    };
    let bridge = &d.bridge;
    let mut msg = format!("bridge {bridge} is up");
    if let (Some(s), Some(Action::Serve { address, .. })) = (&served, actions.last()) {
        st.leases = Some(s.leases as u32);
        st.dhcp = Some(s.counters.clone());
        msg = format!("{msg} at {address}; DHCP answers {} NIC(s)", s.leases);
        if s.relayed > 0 {
            msg.push_str(&format!(", relays {}", s.relayed));
        }
        for w in &s.warnings {
            msg.push_str("; ");
            msg.push_str(w);
        }
    } else if matches!(actions.last(), Some(Action::StopDhcp { .. })) {
        st.leases = None;
        st.dhcp = None;
        msg.push_str("; no DHCP served");
    }
    st.bridge = Some(bridge.clone());
    st.interstellar = actions.iter().find_map(|a| match a {
        Action::EnsureVxlan(v) => Some(InterstellarStatus {
            vni: v.vni,
            device: v.device.clone(),
        }),
        _ => None,
    });
    if let Some(i) = &st.interstellar {
        msg.push_str(&format!("; interstellar VNI {} on {}", i.vni, i.device));
    }
    if let Some(u) = &d.uplink {
        msg.push_str(&format!("; uplink {u}"));
    }
    ready(&mut st.conditions, "BridgeReady", &msg, record.generation);
    ctx.write_status(&record.key, &st)?;
    Ok(Outcome::Done)
}

/// The node's address on a network (the DHCP server identifier, put on
/// the bridge): the first of the node's own addresses inside the subnet,
/// else the network's gateway (the node is then its VMs' gateway on its
/// bridge), else the subnet's last usable address.
pub fn server_address(v4: &Ipv4Config, node_addresses: &[String]) -> Result<Ipv4Net, String> {
    let subnet: Ipv4Net = v4
        .subnet
        .parse()
        .map_err(|_| format!("ipv4.subnet {:?} is not an IPv4 CIDR", v4.subnet))?;
    let subnet = subnet.trunc();
    let own = node_addresses
        .iter()
        .filter_map(|a| a.parse::<std::net::Ipv4Addr>().ok())
        .find(|a| subnet.contains(a));
    let gateway = v4
        .gateway
        .as_deref()
        .and_then(|g| g.parse::<std::net::Ipv4Addr>().ok());
    let last = u32::from(subnet.broadcast())
        .checked_sub(1)
        .map(std::net::Ipv4Addr::from)
        .filter(|a| subnet.prefix_len() < 31 && subnet.contains(a));
    let addr = own
        .or(gateway)
        .or(last)
        .ok_or_else(|| format!("subnet {subnet} has no address for the node"))?;
    Ipv4Net::new(addr, subnet.prefix_len()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_address_is_its_own_then_the_gateway_then_the_last() {
        let mut v4 = Ipv4Config {
            subnet: "10.9.0.0/24".into(),
            gateway: Some("10.9.0.1".into()),
            ..Default::default()
        };
        let own = vec!["192.168.1.5".to_string(), "10.9.0.7".to_string()];
        assert_eq!(
            server_address(&v4, &own).unwrap().to_string(),
            "10.9.0.7/24"
        );
        assert_eq!(server_address(&v4, &[]).unwrap().to_string(), "10.9.0.1/24");
        v4.gateway = None;
        assert_eq!(
            server_address(&v4, &[]).unwrap().to_string(),
            "10.9.0.254/24"
        );
        v4.subnet = "10.9.0.4/31".into();
        assert!(server_address(&v4, &[]).is_err());
        v4.subnet = "nonsense".into();
        assert!(server_address(&v4, &[]).is_err());
    }

    /// An action as a short line, so that plans compare as text (a table
    /// has no equality of its own).
    fn show(a: &Action) -> String {
        match a {
            Action::EnsureBridge { bridge, mtu } => format!("ensure {bridge} mtu {mtu}"),
            Action::SetAddress { bridge, address } => format!("address {bridge} {address:?}"),
            Action::Serve {
                id,
                bridge,
                address,
                table,
            } => format!(
                "serve {id} on {bridge} from {address}, {} client(s)",
                table.clients.len()
            ),
            Action::StopDhcp { id } => format!("stop dhcp {id}"),
            Action::RemoveBridge { bridge } => format!("remove {bridge}"),
            Action::SetUplink { bridge, uplink } => format!("uplink {bridge} {uplink:?}"),
            Action::EnsureVxlan(v) => format!(
                "vxlan {} vni {} on {} arpless {}",
                v.device, v.vni, v.bridge, v.arpless
            ),
            Action::RemoveVxlan { device } => format!("remove vxlan {device}"),
        }
    }

    fn shown(p: &Plan<Action>) -> Result<Vec<String>, String> {
        match p {
            Plan::Act(a) => Ok(a.iter().map(show).collect()),
            Plan::Wait { reason, .. } => Err(format!("wait {reason}")),
            Plan::Fail(e) => Err(format!("fail {}", e.reason)),
        }
    }

    #[test]
    fn plan_table() {
        let addr: Ipv4Net = "10.9.0.1/24".parse().unwrap();
        let base = Desired {
            deleted: false,
            id: "default/lan".into(),
            bridge: "br0".into(),
            mtu: 1400,
            address: Some(Ok(addr)),
            dhcp: Some(Ok(Table::default())),
            uplink: None,
            vxlan: None,
            stale_vxlan: None,
        };
        let fake = Observed {
            host_interfaces: false,
            serves_dhcp: false,
        };
        let linux = Observed {
            host_interfaces: true,
            serves_dhcp: true,
        };
        let no_dhcp_server = Observed {
            host_interfaces: true,
            serves_dhcp: false,
        };
        let deleted = Desired {
            deleted: true,
            ..base.clone()
        };
        let dhcp_off = Desired {
            dhcp: None,
            ..base.clone()
        };
        let no_ipv4 = Desired {
            address: None,
            dhcp: None,
            ..base.clone()
        };
        let no_address = Desired {
            address: Some(Err("subnet has no address".into())),
            dhcp: None,
            ..base.clone()
        };
        let bad_table = Desired {
            dhcp: Some(Err("two NICs want 10.9.0.5".into())),
            ..base.clone()
        };
        let vx = Vxlan {
            device: "dv1".into(),
            bridge: "br0".into(),
            vni: 7,
            mtu: 1400,
            arpless: true,
            bridge_mac: "02:00:00:00:00:01".into(),
        };
        let interstellar = Desired {
            vxlan: Some(Ok(vx.clone())),
            stale_vxlan: Some("dv0".into()),
            ..base.clone()
        };
        let collision = Desired {
            vxlan: Some(Err("VNI 7 is also wanted by t/x".into())),
            ..base.clone()
        };
        let uplinked = Desired {
            uplink: Some("eth1".into()),
            ..base.clone()
        };
        let deleted_interstellar = Desired {
            deleted: true,
            stale_vxlan: Some("dv1".into()),
            ..base.clone()
        };
        let up = "uplink br0 None".to_string();
        let ensure = "ensure br0 mtu 1400".to_string();
        let address = format!("address br0 Some({addr})");
        let stop = "stop dhcp default/lan".to_string();
        type Case<'a> = (&'a str, &'a Desired, Observed, Result<Vec<String>, String>);
        let cases: Vec<Case> = vec![
            (
                "in memory: the bridge only",
                &base,
                fake,
                Ok(vec![ensure.clone()]),
            ),
            (
                "linux: bridge, address, DHCP",
                &base,
                linux,
                Ok(vec![
                    ensure.clone(),
                    up.clone(),
                    address.clone(),
                    format!("serve default/lan on br0 from {addr}, 0 client(s)"),
                ]),
            ),
            (
                "an interstellar: the old device removed, the VXLAN port made",
                &interstellar,
                linux,
                Ok(vec![
                    ensure.clone(),
                    "remove vxlan dv0".into(),
                    up.clone(),
                    "vxlan dv1 vni 7 on br0 arpless true".into(),
                    address.clone(),
                    format!("serve default/lan on br0 from {addr}, 0 client(s)"),
                ]),
            ),
            (
                "a VNI collision keeps the segment down",
                &collision,
                linux,
                Err("fail VniCollision".into()),
            ),
            (
                "an uplink",
                &uplinked,
                no_dhcp_server,
                Ok(vec![
                    ensure.clone(),
                    "uplink br0 Some(\"eth1\")".into(),
                    address.clone(),
                ]),
            ),
            (
                "a deleted interstellar takes its device down first",
                &deleted_interstellar,
                linux,
                Ok(vec![
                    "remove vxlan dv1".into(),
                    stop.clone(),
                    "remove br0".into(),
                ]),
            ),
            (
                "no DHCP server on the node",
                &base,
                no_dhcp_server,
                Ok(vec![ensure.clone(), up.clone(), address.clone()]),
            ),
            (
                "DHCP disabled: stopped",
                &dhcp_off,
                linux,
                Ok(vec![
                    ensure.clone(),
                    up.clone(),
                    address.clone(),
                    stop.clone(),
                ]),
            ),
            (
                "no ipv4: no address, no DHCP",
                &no_ipv4,
                linux,
                Ok(vec![
                    ensure.clone(),
                    up.clone(),
                    "address br0 None".into(),
                    stop.clone(),
                ]),
            ),
            (
                "no address fits",
                &no_address,
                linux,
                Err("fail NoServerAddress".into()),
            ),
            (
                "no address, in memory",
                &no_address,
                fake,
                Ok(vec![ensure.clone()]),
            ),
            (
                "invalid table",
                &bad_table,
                linux,
                Err("fail DhcpConfigInvalid".into()),
            ),
            (
                "invalid table, no server",
                &bad_table,
                no_dhcp_server,
                Ok(vec![ensure, up, address]),
            ),
            (
                "deleted",
                &deleted,
                linux,
                Ok(vec![stop, "remove br0".into()]),
            ),
            (
                "deleted, in memory",
                &deleted,
                fake,
                Ok(vec!["remove br0".into()]),
            ),
        ];
        for (name, d, o, want) in cases {
            assert_eq!(shown(&plan(d, &o)), want, "{name}");
        }
    }
}
