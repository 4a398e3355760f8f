//! Reconcilers of the kinds other than VirtualMachine. Each writes status
//! with conditions and `observedGeneration`; kinds whose behaviour later
//! issues implement say so in their status instead of pretending.

use serde::Serialize;

use super::names;
use super::status::{rfc3339, set_condition};
use super::vm::is_mine;
use super::{Ctx, Outcome, ReconcileError};
use crate::driver::{CloneRequest, DatasetConfig, DriverError};
use crate::model::network::NetworkStatus;
use crate::model::satellite::{Resources, SatelliteStatus};
use crate::model::spacesuit::SpacesuitStatus;
use crate::model::storage_kinds::{DatasetStatus, DeletionPolicy, ReplicaStatus};
use crate::model::{
    Condition, DatasetSpec, Kind, Manifest, NetworkSpec, Quantity, ReplicaSpec, SpacesuitSpec,
    Spec, VirtualMachineSpec,
};
use crate::store::Record;

fn typed<S: Spec>(record: &Record) -> Result<Manifest<S>, ReconcileError> {
    serde_json::from_value(record.object.clone())
        .map_err(|e| ReconcileError::permanent("Unreadable", e.to_string()))
}

fn previous<T: serde::de::DeserializeOwned + Default>(record: &Record) -> T {
    record
        .status
        .clone()
        .and_then(|s| serde_json::from_value(s).ok())
        .unwrap_or_default()
}

/// `Ready` false with the failure's reason and message.
fn not_ready(conditions: &mut Vec<Condition>, e: &ReconcileError, generation: i64) {
    set_condition(
        conditions, "Ready", false, &e.reason, &e.message, generation,
    );
}

/// Network: the bridge exists; with real host interfaces it also has the
/// node's address on the network and the node's DHCP server answers this
/// node's VMs on it, with the manifest's options (docs/ARCHITECTURE.md,
/// "Network data path").
pub async fn network(ctx: &Ctx, record: &Record) -> Result<Outcome, ReconcileError> {
    let net: Manifest<NetworkSpec> = typed(record)?;
    let bridge = net
        .spec
        .bridge
        .clone()
        .unwrap_or_else(|| names::bridge(&record.key.namespace, &record.key.name));
    let net_id = format!("{}/{}", record.key.namespace, record.key.name);
    if record.deleted {
        if let Some(dhcp) = &ctx.drivers.dhcp {
            dhcp.stop(&net_id).await;
        }
        ctx.drivers.net.remove_bridge(&bridge).await?;
        return Ok(Outcome::Done);
    }
    let mut st: NetworkStatus = previous(record);
    st.observed_generation = Some(record.generation);
    let result: Result<String, ReconcileError> = async {
        ctx.drivers
            .net
            .ensure_bridge(&bridge, net.spec.mtu.unwrap_or(1500))
            .await?;
        if !ctx.drivers.net.host_interfaces() {
            return Ok(format!("bridge {bridge} is up"));
        }
        let address = match &net.spec.ipv4 {
            Some(v4) => Some(
                server_address(v4, &ctx.config.node_addresses)
                    .map_err(|m| ReconcileError::permanent("NoServerAddress", m))?,
            ),
            None => None,
        };
        ctx.drivers.net.set_bridge_address(&bridge, address).await?;
        let Some(dhcp) = &ctx.drivers.dhcp else {
            return Ok(format!("bridge {bridge} is up"));
        };
        let enabled = net.spec.dhcp.as_ref().and_then(|d| d.enabled) != Some(false);
        let Some(address) = address.filter(|_| enabled) else {
            dhcp.stop(&net_id).await;
            st.leases = None;
            return Ok(format!("bridge {bridge} is up; no DHCP served"));
        };
        let vms: Vec<Manifest<VirtualMachineSpec>> = ctx
            .store
            .list(Some(Kind::VirtualMachine))
            .into_iter()
            .filter_map(|r| serde_json::from_value(r.object).ok())
            .collect();
        let table = crate::dhcp::Table::build(&net, &vms, address.addr(), |vm| {
            let key = crate::model::ObjectKey::new(
                Kind::VirtualMachine,
                vm.metadata.namespace.as_deref(),
                vm.metadata.name.as_deref().unwrap_or_default(),
            );
            is_mine(ctx, &key, &vm.spec)
        })
        .map_err(|e| ReconcileError::permanent("DhcpConfigInvalid", e.to_string()))?;
        let served = dhcp
            .serve(
                &net_id,
                &bridge,
                crate::dhcp::ServerConfig::new(address.addr()),
                table,
            )
            .await
            .map_err(|e| ReconcileError {
                reason: "DhcpFailed".into(),
                message: e.to_string(),
                transient: true,
            })?;
        st.leases = Some(served.leases as u32);
        let mut msg = format!(
            "bridge {bridge} is up at {address}; DHCP answers {} NIC(s)",
            served.leases
        );
        if served.relayed > 0 {
            msg.push_str(&format!(", relays {}", served.relayed));
        }
        for w in &served.warnings {
            msg.push_str("; ");
            msg.push_str(w);
        }
        Ok(msg)
    }
    .await;
    match result {
        Ok(msg) => {
            st.bridge = Some(bridge.clone());
            set_condition(
                &mut st.conditions,
                "Ready",
                true,
                "BridgeReady",
                &msg,
                record.generation,
            );
            ctx.write_status(&record.key, &st)?;
            Ok(Outcome::Done)
        }
        Err(e) => {
            not_ready(&mut st.conditions, &e, record.generation);
            ctx.write_status(&record.key, &st)?;
            Err(e)
        }
    }
}

/// The node's address on a network (the DHCP server identifier, put on
/// the bridge): the first of the node's own addresses inside the subnet,
/// else the network's gateway (the node is then its VMs' gateway on its
/// bridge), else the subnet's last usable address.
pub fn server_address(
    v4: &crate::model::network::Ipv4Config,
    node_addresses: &[String],
) -> Result<ipnet::Ipv4Net, String> {
    let subnet: ipnet::Ipv4Net = v4
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
    ipnet::Ipv4Net::new(addr, subnet.prefix_len()).map_err(|e| e.to_string())
}

/// Spacesuit: its base volume exists (boot-only spacesuits have none).
pub async fn spacesuit(ctx: &Ctx, record: &Record) -> Result<Outcome, ReconcileError> {
    let suit: Manifest<SpacesuitSpec> = typed(record)?;
    let ns = &record.key.namespace;
    let volume = names::spacesuit_volume(ns, &record.key.name);
    let storage = &ctx.drivers.storage;
    if record.deleted {
        if storage.exists(&volume).await? {
            storage.destroy(&volume).await?;
        }
        return Ok(Outcome::Done);
    }
    let mut st: SpacesuitStatus = previous(record);
    st.observed_generation = Some(record.generation);
    let source = suit.spec.source.as_ref();
    let result = if source.is_none() {
        st.volumes.clear();
        Ok("boot-only spacesuit: no disk".to_string())
    } else if storage.exists(&volume).await? {
        Ok(format!("volume {volume}"))
    } else if let Some(img) = source.and_then(|s| s.image.as_ref()) {
        match verify_image(img).await {
            Ok(()) => storage
                .import(&volume, &img.path, img.format.map(|f| f.as_str()))
                .await
                .map(|_| format!("imported {}", img.path)),
            Err(e) => Err(e),
        }
    } else if let Some(vm) = source.and_then(|s| s.virtual_machine.as_ref()) {
        let vns = vm.namespace.as_deref().unwrap_or(ns);
        let source_vm = ctx.typed::<VirtualMachineSpec>(Kind::VirtualMachine, vns, &vm.name);
        let disk = source_vm
            .as_ref()
            .and_then(|v| v.spec.disks.first().map(|d| d.name.clone()));
        match disk {
            Some(d) => {
                // Also while the VM runs (through its hypervisor on qcow2).
                let live =
                    super::vm::live_disks(ctx, vns, &vm.name, source_vm.as_ref().map(|v| &v.spec))
                        .await;
                let request = [CloneRequest {
                    volume: volume.clone(),
                    source: names::vm_volume(vns, &vm.name, &d),
                    size: None,
                }];
                storage
                    .clone_volumes_live(&request, &live)
                    .await
                    .map(|_| format!("snapshot of {vns}/{}", vm.name))
            }
            None => {
                let msg = format!("VM {vns}/{} does not exist or has no disk", vm.name);
                set_condition(
                    &mut st.conditions,
                    "Ready",
                    false,
                    "SourceNotFound",
                    &msg,
                    record.generation,
                );
                st.phase = Some("Pending".into());
                ctx.write_status(&record.key, &st)?;
                return Ok(Outcome::RequeueAfter(ctx.config.blocked_retry));
            }
        }
    } else {
        Ok(String::new())
    };
    match result {
        Ok(msg) => {
            if source.is_some() {
                st.volumes = vec![volume];
            }
            st.phase = Some("Ready".into());
            set_condition(
                &mut st.conditions,
                "Ready",
                true,
                "Ready",
                &msg,
                record.generation,
            );
            ctx.write_status(&record.key, &st)?;
            Ok(Outcome::Done)
        }
        Err(e) => {
            let e = ReconcileError::from(e);
            st.phase = Some("Pending".into());
            not_ready(&mut st.conditions, &e, record.generation);
            ctx.write_status(&record.key, &st)?;
            Err(e)
        }
    }
}

/// The driver's view of a declared dataset.
fn dataset_config(spec: &DatasetSpec) -> DatasetConfig {
    let mut properties = spec.user_properties.clone();
    if let Some(c) = &spec.compression {
        properties.insert("compression".into(), c.clone());
    }
    if let Some(q) = spec.quota {
        properties.insert("quota".into(), q.0.to_string());
    }
    if let Some(r) = spec.recordsize {
        properties.insert("recordsize".into(), r.0.to_string());
    }
    DatasetConfig {
        pool: spec.pool.clone(),
        path: spec.path.clone(),
        properties,
    }
}

/// Dataset: exists with its properties; its data is destroyed only when
/// the object is deleted with `deletionPolicy: Destroy`.
pub async fn dataset(ctx: &Ctx, record: &Record) -> Result<Outcome, ReconcileError> {
    let ds: Manifest<DatasetSpec> = typed(record)?;
    let config = dataset_config(&ds.spec);
    let storage = &ctx.drivers.storage;
    if record.deleted {
        if ds.spec.deletion_policy == DeletionPolicy::Destroy {
            storage.destroy_dataset(&config).await?;
        }
        return Ok(Outcome::Done);
    }
    let mut st: DatasetStatus = previous(record);
    st.observed_generation = Some(record.generation);
    match storage.ensure_dataset(&config).await {
        Ok(state) => {
            st.used = Some(Quantity(state.used));
            st.available = Some(Quantity(state.available));
            let (reason, msg) = if state.unsupported.is_empty() {
                ("Ready", format!("{} storage", storage.name()))
            } else {
                (
                    "PropertiesIgnored",
                    format!(
                        "{} storage cannot apply: {}",
                        storage.name(),
                        state.unsupported.join(", ")
                    ),
                )
            };
            set_condition(
                &mut st.conditions,
                "Ready",
                true,
                reason,
                &msg,
                record.generation,
            );
            ctx.write_status(&record.key, &st)?;
            Ok(Outcome::Done)
        }
        Err(e) => {
            let e = ReconcileError::from(e);
            not_ready(&mut st.conditions, &e, record.generation);
            ctx.write_status(&record.key, &st)?;
            Err(e)
        }
    }
}

/// Check an image's size and checksum before importing it.
async fn verify_image(img: &crate::model::spacesuit::ImageSource) -> Result<(), DriverError> {
    let Some(want) = img.sha256.clone() else {
        return Ok(());
    };
    let path = img.path.clone();
    let got = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        use sha2::{Digest, Sha256};
        let mut f = std::fs::File::open(&path)?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h)?;
        Ok(hex::encode(h.finalize()))
    })
    .await
    .map_err(|e| DriverError::Transient {
        op: "import".into(),
        target: img.path.clone(),
        message: e.to_string(),
    })?
    .map_err(|e| DriverError::Permanent {
        op: "import".into(),
        target: img.path.clone(),
        message: e.to_string(),
    })?;
    if !got.eq_ignore_ascii_case(&want) {
        return Err(DriverError::Condition {
            op: "import".into(),
            target: img.path.clone(),
            reason: "ChecksumMismatch",
            message: format!("sha256 is {got}, the spacesuit expects {want}"),
        });
    }
    Ok(())
}

/// Replica: every disk of the VM captured as a volume.
pub async fn replica(ctx: &Ctx, record: &Record) -> Result<Outcome, ReconcileError> {
    let rep: Manifest<ReplicaSpec> = typed(record)?;
    let ns = &record.key.namespace;
    let vm_ns = rep.spec.virtual_machine.namespace.as_deref().unwrap_or(ns);
    let vm = ctx.typed::<VirtualMachineSpec>(
        Kind::VirtualMachine,
        vm_ns,
        &rep.spec.virtual_machine.name,
    );
    let storage = &ctx.drivers.storage;
    let disks: Vec<String> = vm
        .as_ref()
        .map(|v| v.spec.disks.iter().map(|d| d.name.clone()).collect())
        .unwrap_or_default();
    if record.deleted {
        // Every volume this replica made: those its status recorded and
        // those its VM's disks name (the status may be gone with the object).
        let prev: ReplicaStatus = previous(record);
        let mut volumes: std::collections::BTreeSet<String> =
            prev.volumes.values().cloned().collect();
        volumes.extend(
            disks
                .iter()
                .map(|d| names::replica_volume(ns, &record.key.name, d)),
        );
        for volume in &volumes {
            if storage.exists(volume).await? {
                storage.destroy(volume).await?;
            }
        }
        return Ok(Outcome::Done);
    }
    let mut st: ReplicaStatus = previous(record);
    st.observed_generation = Some(record.generation);
    if vm.is_none() {
        let msg = format!(
            "VM {vm_ns}/{} does not exist",
            rep.spec.virtual_machine.name
        );
        st.phase = Some("Pending".into());
        set_condition(
            &mut st.conditions,
            "Ready",
            false,
            "VirtualMachineNotFound",
            &msg,
            record.generation,
        );
        ctx.write_status(&record.key, &st)?;
        return Ok(Outcome::RequeueAfter(ctx.config.blocked_retry));
    }
    // All disks at one instant: a partial capture (crash midway) is
    // thrown away and taken again as a whole.
    let requests: Vec<CloneRequest> = disks
        .iter()
        .map(|d| CloneRequest {
            volume: names::replica_volume(ns, &record.key.name, d),
            source: names::vm_volume(vm_ns, &rep.spec.virtual_machine.name, d),
            size: None,
        })
        .collect();
    let mut present = 0;
    for r in &requests {
        if storage.exists(&r.volume).await? {
            present += 1;
        }
    }
    if present != requests.len() {
        let mut result = Ok(());
        for r in &requests {
            if result.is_ok() && storage.exists(&r.volume).await? {
                result = storage.destroy(&r.volume).await;
            }
        }
        if result.is_ok() {
            let live = super::vm::live_disks(
                ctx,
                vm_ns,
                &rep.spec.virtual_machine.name,
                vm.as_ref().map(|v| &v.spec),
            )
            .await;
            result = storage.clone_volumes_live(&requests, &live).await;
        }
        if let Err(e) = result {
            let e = ReconcileError::from(e);
            st.phase = Some("Pending".into());
            not_ready(&mut st.conditions, &e, record.generation);
            ctx.write_status(&record.key, &st)?;
            return Err(e);
        }
    }
    for (d, r) in disks.iter().zip(&requests) {
        st.volumes.insert(d.clone(), r.volume.clone());
    }
    st.phase = Some("Ready".into());
    st.node = Some(ctx.config.node_name.clone());
    if st.created_at.is_none() {
        st.created_at = Some(rfc3339(record.updated_ms));
    }
    set_condition(
        &mut st.conditions,
        "Ready",
        true,
        "Captured",
        &format!("{} disk(s)", st.volumes.len()),
        record.generation,
    );
    ctx.write_status(&record.key, &st)?;
    Ok(Outcome::Done)
}

/// Satellite: this node reports its capacity.
pub async fn satellite(ctx: &Ctx, record: &Record) -> Result<Outcome, ReconcileError> {
    if record.deleted || record.key.name != ctx.config.node_name {
        return Ok(Outcome::Done);
    }
    let mut st: SatelliteStatus = previous(record);
    st.observed_generation = Some(record.generation);
    let (total, free) = ctx.drivers.storage.capacity().await?;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let memory = meminfo_total();
    st.capacity = Some(Resources {
        cpu: Some(crate::model::Cpu(cpus * 1000)),
        memory: memory.map(Quantity),
        storage: Some(Quantity(total)),
        network: None,
    });
    st.free = Some(Resources {
        storage: Some(Quantity(free)),
        ..Default::default()
    });
    st.version = Some(env!("CARGO_PKG_VERSION").into());
    st.accel = ctx.drivers.hypervisor.accel();
    set_condition(
        &mut st.conditions,
        "Ready",
        true,
        "NodeRunning",
        &format!(
            "hypervisor {}, storage {}",
            ctx.drivers.hypervisor.name(),
            ctx.drivers.storage.name()
        ),
        record.generation,
    );
    ctx.write_status(&record.key, &st)?;
    Ok(Outcome::Done)
}

fn meminfo_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Kinds whose behaviour is not built yet: say so in their status.
pub async fn not_yet(ctx: &Ctx, record: &Record, what: &str) -> Result<Outcome, ReconcileError> {
    if record.deleted {
        return Ok(Outcome::Done);
    }
    #[derive(Serialize, Default, serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Generic {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        observed_generation: Option<i64>,
        #[serde(default)]
        conditions: Vec<Condition>,
    }
    let mut st: Generic = previous(record);
    st.observed_generation = Some(record.generation);
    set_condition(
        &mut st.conditions,
        "Ready",
        false,
        "NotImplemented",
        what,
        record.generation,
    );
    ctx.write_status(&record.key, &st)?;
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::network::Ipv4Config;

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
}
