//! Satellite: the node whose name it bears reports its capacity, software
//! and accelerator in the status. Nothing is changed on the host, so there
//! are no actions: [`observe`] measures and the pure [`report`] turns the
//! measurement into the status (the plan of this kind).

use super::status::ready;
use super::{previous, Ctx, Outcome, ReconcileError};
use crate::model::satellite::{Resources, SatelliteStatus};
use crate::model::{Cpu, Quantity};
use crate::store::Record;

/// What the node measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Storage bytes in all.
    pub storage_total: u64,
    /// Storage bytes free.
    pub storage_free: u64,
    /// CPUs the process may use.
    pub cpus: u64,
    /// Memory in bytes (`/proc/meminfo`), when readable.
    pub memory: Option<u64>,
    /// The hypervisor's accelerator (`kvm`, `tcg`).
    pub accel: Option<String>,
    /// The host CPU ([`cpu_signature`]).
    pub cpu: Option<String>,
    /// Driver names, for the condition.
    pub hypervisor: &'static str,
    /// Storage driver name.
    pub storage: &'static str,
    /// The node's ID (its key's address).
    pub node_id: Option<String>,
}

/// Reconcile one Satellite: only this node's, and only while it exists.
pub async fn reconcile(ctx: &Ctx, record: &Record) -> Result<Outcome, ReconcileError> {
    if !is_mine(record.deleted, &record.key.name, &ctx.config.node_name) {
        return Ok(Outcome::Done);
    }
    let observed = observe(ctx).await?;
    let st = report(previous(record), record.generation, &observed);
    ctx.write_status(&record.key, &st)?;
    Ok(Outcome::Done)
}

/// Whether this node (`node_name`) reports the Satellite `name`.
pub fn is_mine(deleted: bool, name: &str, node_name: &str) -> bool {
    !deleted && name == node_name
}

/// Measure the node.
pub async fn observe(ctx: &Ctx) -> Result<Observed, ReconcileError> {
    let (storage_total, storage_free) = ctx.drivers.storage.capacity().await?;
    Ok(Observed {
        storage_total,
        storage_free,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u64)
            .unwrap_or(1),
        memory: meminfo_total(),
        accel: ctx.drivers.hypervisor.accel(),
        cpu: host_cpu(),
        hypervisor: ctx.drivers.hypervisor.name(),
        storage: ctx.drivers.storage.name(),
        node_id: ctx.config.node_id.clone(),
    })
}

/// The status reporting `o` (the previous one's conditions kept).
pub fn report(mut st: SatelliteStatus, generation: i64, o: &Observed) -> SatelliteStatus {
    st.observed_generation = Some(generation);
    st.capacity = Some(Resources {
        cpu: Some(Cpu(o.cpus * 1000)),
        memory: o.memory.map(Quantity),
        storage: Some(Quantity(o.storage_total)),
        network: None,
    });
    st.free = Some(Resources {
        storage: Some(Quantity(o.storage_free)),
        ..Default::default()
    });
    st.version = Some(env!("CARGO_PKG_VERSION").into());
    st.accel = o.accel.clone();
    st.cpu = o.cpu.clone();
    st.node_id = o.node_id.clone();
    let msg = format!("hypervisor {}, storage {}", o.hypervisor, o.storage);
    ready(&mut st.conditions, "NodeRunning", &msg, generation);
    st
}

/// This host's CPU as [`cpu_signature`] names it (read once).
pub fn host_cpu() -> Option<String> {
    static CPU: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    CPU.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
        cpu_signature(&text)
    })
    .clone()
}

/// A host CPU's identity for live migration, from `/proc/cpuinfo`:
/// vendor, family and model, and the first 4 bytes of the SHA-256 of its
/// sorted feature flags, e.g. `GenuineIntel 6/167 5e0c1a2b`. A guest
/// running with the `host` CPU model under KVM sees exactly these
/// features, so it moves live only to a node with the same signature.
/// `None` when the text names no vendor or flags (not x86, or no
/// `/proc`).
pub fn cpu_signature(cpuinfo: &str) -> Option<String> {
    use sha2::{Digest, Sha256};
    // The first processor stands for all (they are one model).
    let first = cpuinfo.split("\n\n").next()?;
    let field = |name: &str| {
        first.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    };
    let vendor = field("vendor_id")?;
    let flags = field("flags")?;
    let mut flags: Vec<&str> = flags.split_whitespace().collect();
    flags.sort_unstable();
    flags.dedup();
    let hash = Sha256::digest(flags.join(" ").as_bytes());
    Some(format!(
        "{vendor} {}/{} {}",
        field("cpu family").unwrap_or_else(|| "?".into()),
        field("model").unwrap_or_else(|| "?".into()),
        hex::encode(&hash[..4])
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_table() {
        let o = Observed {
            storage_total: 100 << 30,
            storage_free: 40 << 30,
            cpus: 4,
            memory: Some(8 << 30),
            accel: Some("tcg".into()),
            cpu: Some("GenuineIntel 6/167 0a1b2c3d".into()),
            hypervisor: "qemu",
            storage: "zfs",
            node_id: Some("bc1qnode".into()),
        };
        let no_memory = Observed {
            memory: None,
            ..o.clone()
        };
        let cases = [
            ("measured", &o, Some(Quantity(8 << 30))),
            ("memory unreadable", &no_memory, None),
        ];
        for (name, o, memory) in cases {
            let st = report(SatelliteStatus::default(), 7, o);
            let cap = st.capacity.clone().unwrap();
            assert_eq!(cap.cpu, Some(Cpu(4000)), "{name}");
            assert_eq!(cap.memory, memory, "{name}");
            assert_eq!(cap.storage, Some(Quantity(100 << 30)), "{name}");
            assert_eq!(st.free.unwrap().storage, Some(Quantity(40 << 30)), "{name}");
            assert_eq!(st.accel.as_deref(), Some("tcg"), "{name}");
            assert_eq!(st.cpu, o.cpu, "{name}");
            assert_eq!(st.node_id.as_deref(), Some("bc1qnode"), "{name}");
            assert_eq!(st.observed_generation, Some(7), "{name}");
            let c = &st.conditions[0];
            assert_eq!(
                (c.type_.as_str(), c.status.as_str()),
                ("Ready", "True"),
                "{name}"
            );
            assert_eq!(c.message, "hypervisor qemu, storage zfs", "{name}");
        }
    }

    /// Two hosts of one model with one feature more or less differ; the
    /// order of the flags and other processors' blocks do not matter.
    #[test]
    fn cpu_signatures_tell_feature_sets_apart() {
        let cpu = |flags: &str| {
            format!(
                "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\nmodel name\t: Xeon\nflags\t\t: {flags}\n\nprocessor\t: 1\nvendor_id\t: Other\n"
            )
        };
        let a = cpu_signature(&cpu("fpu sse2 avx512f")).unwrap();
        assert!(a.starts_with("GenuineIntel 6/85 "), "{a}");
        assert_eq!(a.len(), "GenuineIntel 6/85 ".len() + 8, "{a}");
        assert_eq!(
            cpu_signature(&cpu("avx512f fpu sse2")).as_deref(),
            Some(a.as_str())
        );
        assert_ne!(cpu_signature(&cpu("fpu sse2")).unwrap(), a);
        assert_eq!(
            cpu_signature("processor\t: 0\nfeatures\t: fp asimd\n"),
            None
        );
        // This host's, as the node reports it.
        if std::path::Path::new("/proc/cpuinfo").exists() && cfg!(target_arch = "x86_64") {
            assert!(host_cpu().is_some());
        }
    }

    #[test]
    fn only_the_named_live_node_reports() {
        let cases = [
            ("this node", false, "sat-1", true),
            ("another node", false, "sat-2", false),
            ("this node, deleted", true, "sat-1", false),
        ];
        for (case, deleted, name, want) in cases {
            assert_eq!(is_mine(deleted, name, "sat-1"), want, "{case}");
        }
    }
}
