//! Deterministic names of host objects derived from object identities, so
//! that any node computes the same names without a database. Pure: the
//! reconcilers and the DHCP tables both derive them from the model.

use sha2::{Digest, Sha256};

fn digest(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize().into()
}

/// Volume of a VM's disk.
pub fn vm_volume(namespace: &str, vm: &str, disk: &str) -> String {
    format!("vm-{namespace}-{vm}-{disk}")
}

/// The storage group of a VM's disks (`Storage::group`: one snapshot
/// command takes them all).
pub fn vm_group(namespace: &str, vm: &str) -> String {
    format!("vm-{namespace}-{vm}")
}

/// The volume that holds a FASTR copy of `volume` on another node.
pub fn fastr_copy(volume: &str) -> String {
    format!("fastr.{volume}")
}

/// A volume at one of its points (`volume@point`), as a clone source or
/// the volume a FASTR copy is restored from.
pub fn at_point(volume: &str, point: &str) -> String {
    format!("{volume}@{point}")
}

/// `(volume, point)` of [`at_point`]'s name; `None` for a plain volume.
pub fn parse_at_point(name: &str) -> Option<(&str, &str)> {
    name.split_once('@')
}

/// Volume of a spacesuit.
pub fn spacesuit_volume(namespace: &str, suit: &str) -> String {
    format!("suit-{namespace}-{suit}")
}

/// Volume of a spacesuit's further disk `disk` (`spec.disks`).
pub fn spacesuit_disk_volume(namespace: &str, suit: &str, disk: &str) -> String {
    format!("suit-{namespace}-{suit}.{disk}")
}

/// Volume of a replica of one disk.
pub fn replica_volume(namespace: &str, replica: &str, disk: &str) -> String {
    format!("rep-{namespace}-{replica}-{disk}")
}

/// The replica a node keeps the disks of a VM's copy under when another
/// node's newer claim replaced it (`at_secs`: when, seconds since the
/// epoch): its volumes are [`replica_volume`]s of this name, so a new VM
/// clones them with `source.replica`.
pub fn diverged_replica(vm: &str, at_secs: u64) -> String {
    format!("{vm}{DIVERGED_INFIX}{at_secs}")
}

/// When a diverged replica of `vm` was kept (seconds since the epoch),
/// from the name of one of its volumes `rep-NS-VM-diverged-SECS-DISK`.
pub fn parse_diverged(namespace: &str, vm: &str, disk: &str, volume: &str) -> Option<u64> {
    let secs = volume
        .strip_prefix(&replica_volume(namespace, vm, ""))?
        .strip_suffix(&format!("-{disk}"))?
        .strip_prefix(DIVERGED_INFIX.trim_start_matches('-'))?;
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    secs.parse().ok()
}

const DIVERGED_INFIX: &str = "-diverged-";

/// The name a deleted object's volume is kept under until `until_ms`
/// (ms since the epoch): `retained.<until_ms>.<volume>`. The name is the
/// whole record of the retention (no database): listing the storage finds
/// every retained volume, its original name and when it may go.
pub fn retained_volume(volume: &str, until_ms: u64) -> String {
    format!("{RETAINED_PREFIX}{until_ms}.{volume}")
}

/// `(until_ms, original volume)` of a retained volume's name.
pub fn parse_retained(name: &str) -> Option<(u64, &str)> {
    let rest = name.strip_prefix(RETAINED_PREFIX)?;
    let (until, volume) = rest.split_once('.')?;
    if volume.is_empty() || until.is_empty() || !until.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((until.parse().ok()?, volume))
}

const RETAINED_PREFIX: &str = "retained.";

/// Volume of a dataset.
pub fn dataset_volume(pool: &str, path: &str) -> String {
    format!("ds-{pool}-{}", path.replace('/', "-"))
}

/// A MAC for a NIC: QEMU's locally administered prefix 52:54:00 and three
/// bytes of the NIC's identity.
pub fn mac(namespace: &str, vm: &str, nic: &str) -> String {
    let d = digest(&["mac", namespace, vm, nic]);
    format!("52:54:00:{:02x}:{:02x}:{:02x}", d[0], d[1], d[2])
}

/// A tap name (≤ 15 characters, the kernel's limit).
pub fn tap(namespace: &str, vm: &str, nic: &str) -> String {
    let d = digest(&["tap", namespace, vm, nic]);
    format!("dt{}", hex::encode(&d[..6]))
}

/// The bridge of a network when its spec names none.
pub fn bridge(namespace: &str, network: &str) -> String {
    let d = digest(&["bridge", namespace, network]);
    format!("db{}", hex::encode(&d[..6]))
}

/// The VXLAN device of an interstellar segment on every node.
pub fn vxlan_device(namespace: &str, interstellar: &str) -> String {
    let d = digest(&["vxlan", namespace, interstellar]);
    format!("dv{}", hex::encode(&d[..6]))
}

/// The VNI an interstellar segment gets unless its spec names one: 24
/// bits of SHA-256 of its namespace and name, never 0 (docs/ALGORITHMS.md,
/// "Interstellar VNIs").
pub fn vni(namespace: &str, interstellar: &str) -> u32 {
    let d = digest(&["vni", namespace, interstellar]);
    let v = u32::from_be_bytes([0, d[0], d[1], d[2]]);
    v.max(1)
}

/// The MAC every node gives the bridge of an interstellar segment: the
/// node's address on it is one anycast gateway, the same IP and MAC on
/// every satellite, so a VM that moves keeps its gateway's neighbour
/// entry (locally administered, unicast).
pub fn anycast_mac(namespace: &str, interstellar: &str) -> String {
    let d = digest(&["anycast", namespace, interstellar]);
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        d[0], d[1], d[2], d[3], d[4]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diverged_replica_volume_names_its_vm_disk_and_time() {
        let r = diverged_replica("web-1", 1_765_000_000);
        let v = replica_volume("prod", &r, "data-2");
        assert_eq!(v, "rep-prod-web-1-diverged-1765000000-data-2");
        assert_eq!(
            parse_diverged("prod", "web-1", "data-2", &v),
            Some(1_765_000_000)
        );
        assert_eq!(parse_diverged("prod", "web", "data-2", &v), None);
        assert_eq!(parse_diverged("prod", "web-1", "2", &v), None);
        assert_eq!(
            parse_diverged("prod", "web-1", "data-2", "rep-prod-web-1-snap-data-2"),
            None
        );
    }

    #[test]
    fn a_retained_name_carries_its_volume_and_its_deadline() {
        let name = retained_volume("vm-my.ns-web-data", 1_700_000_000_123);
        assert_eq!(name, "retained.1700000000123.vm-my.ns-web-data");
        assert_eq!(
            parse_retained(&name),
            Some((1_700_000_000_123, "vm-my.ns-web-data"))
        );
        for not in [
            "vm-default-web-data",
            "retained.",
            "retained.12",
            "retained.x1.v",
            "retained.1.",
        ] {
            assert_eq!(parse_retained(not), None, "{not}");
        }
    }

    #[test]
    fn names_are_stable_and_fit_the_kernel() {
        assert_eq!(
            mac("default", "tiny", "eth0"),
            mac("default", "tiny", "eth0")
        );
        assert_ne!(
            mac("default", "tiny", "eth0"),
            mac("default", "tiny", "eth1")
        );
        assert!(tap("a-very-long-namespace", "a-very-long-vm-name", "eth0").len() <= 15);
        assert!(bridge("ns", "net").len() <= 15);
        let first = u8::from_str_radix(&mac("x", "y", "z")[..2], 16).unwrap();
        assert_eq!(first & 0b11, 0b10, "locally administered unicast");
    }
}
