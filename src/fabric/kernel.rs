//! Applying the fabric to the kernel: VXLAN forwarding entries and
//! neighbour entries by difference (`bridge -batch -`, `ip -batch -`: one
//! process per segment and table, whatever the number of entries), and
//! the nftables ruleset in one `nft -f` transaction when it changed.
//!
//! Blocking: the agent calls it on a blocking thread.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::Value;

use super::{parse_counters, ruleset, Desired, SegmentState};
use crate::driver::cmd;

const TIMEOUT: Duration = Duration::from_secs(10);
const ZERO_MAC: &str = "00:00:00:00:00:00";

/// What the kernel holds of the fabric, and the drop counters of rulesets
/// already replaced.
#[derive(Debug, Default)]
pub struct Kernel {
    /// The ruleset last applied (not applied again while unchanged).
    applied: Option<String>,
    /// Counter values carried over from replaced rulesets (replacing the
    /// tables starts their counters at zero).
    carried: BTreeMap<String, u64>,
}

/// The error of one step, for the log and the agent's status.
pub type StepError = String;

fn run(program: &str, args: &[&str], input: Option<String>) -> Result<String, StepError> {
    cmd::run_input(program, args, input.map(String::into_bytes), TIMEOUT)
        .map(|o| o.stdout)
        .map_err(|e| format!("{program} {}: {}", args.join(" "), e.message()))
}

/// Whether the interface is missing, from a tool's error (not /sys: a
/// node in a network namespace of its own may see the host's sysfs).
fn missing(e: &str) -> bool {
    e.contains("Cannot find device") || e.contains("does not exist")
}

/// A segment's forwarding entries: (MAC, remote node) on the VXLAN
/// device, the MACs the bridge holds as static entries on it, and whether
/// the device is a port of `bridge` yet (the bridge then lists its own
/// MAC on it).
type Fdb = (BTreeSet<(String, Ipv4Addr)>, BTreeSet<String>, bool);

/// The segment's forwarding entries now.
fn fdb(device: &str, bridge: &str) -> Result<Fdb, StepError> {
    let out = run("bridge", &["-j", "fdb", "show", "dev", device], None)?;
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    let (mut remote, mut master, mut port) = (BTreeSet::new(), BTreeSet::new(), false);
    for e in v.as_array().into_iter().flatten() {
        let Some(mac) = e["mac"].as_str() else {
            continue;
        };
        port |= e["master"] == bridge;
        if let Some(dst) = e["dst"].as_str().and_then(|d| d.parse().ok()) {
            remote.insert((mac.to_string(), dst));
        } else if e["master"].is_string() && e["state"] == "static" {
            master.insert(mac.to_string());
        }
    }
    Ok((remote, master, port))
}

/// Make the segment's forwarding entries exactly what `s` says: the
/// all-zero MAC to every remote node (head-end replication of broadcast
/// and multicast), each remote VM's MAC to its node, and each remote MAC
/// a static bridge entry on the VXLAN port (the bridge learns nothing
/// from the underlay).
pub fn sync_fdb(s: &SegmentState) -> Result<usize, StepError> {
    let dev = &s.segment.device;
    let (have, have_master) = match fdb(dev, &s.bridge) {
        Ok((have, master, true)) => (have, master),
        // The Network reconciler makes it and then puts it on the
        // bridge; the next tick fills it.
        Ok((_, _, false)) => return Ok(0),
        Err(e) if missing(&e) => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut want: BTreeSet<(String, Ipv4Addr)> = s
        .remote_nodes
        .iter()
        .map(|n| (ZERO_MAC.to_string(), *n))
        .collect();
    want.extend(s.remote_macs.iter().map(|(m, n)| (m.clone(), *n)));
    let want_master: BTreeSet<String> = s.remote_macs.keys().cloned().collect();
    let mut batch = String::new();
    for (mac, dst) in have.difference(&want) {
        batch.push_str(&format!("fdb del {mac} dev {dev} dst {dst} self\n"));
    }
    for mac in have_master.difference(&want_master) {
        batch.push_str(&format!("fdb del {mac} dev {dev} master\n"));
    }
    for (mac, dst) in want.difference(&have) {
        let verb = if mac == ZERO_MAC { "append" } else { "replace" };
        batch.push_str(&format!(
            "fdb {verb} {mac} dev {dev} dst {dst} self permanent\n"
        ));
    }
    for mac in want_master.difference(&have_master) {
        batch.push_str(&format!("fdb replace {mac} dev {dev} master static\n"));
    }
    let n = batch.lines().count();
    if n > 0 {
        run("bridge", &["-batch", "-"], Some(batch))?;
    }
    Ok(n)
}

/// Make the bridge's permanent neighbour entries exactly the segment's
/// remote bindings (ARP-less), or none.
pub fn sync_neighbours(s: &SegmentState) -> Result<usize, StepError> {
    let br = &s.bridge;
    let out = match run(
        "ip",
        &["-j", "-4", "neigh", "show", "dev", br, "nud", "permanent"],
        None,
    ) {
        Ok(o) => o,
        Err(e) if missing(&e) => return Ok(0),
        Err(e) => return Err(e),
    };
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    let have: BTreeMap<Ipv4Addr, String> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e["dst"].as_str()?.parse().ok()?,
                e["lladdr"].as_str()?.to_string(),
            ))
        })
        .collect();
    let empty = BTreeMap::new();
    let want = if s.segment.arpless {
        &s.neighbours
    } else {
        &empty
    };
    let mut batch = String::new();
    for ip in have.keys().filter(|ip| !want.contains_key(ip)) {
        batch.push_str(&format!("neigh del {ip} dev {br}\n"));
    }
    for (ip, mac) in want.iter().filter(|(ip, mac)| have.get(ip) != Some(mac)) {
        batch.push_str(&format!(
            "neigh replace {ip} lladdr {mac} dev {br} nud permanent\n"
        ));
    }
    let n = batch.lines().count();
    if n > 0 {
        run("ip", &["-batch", "-"], Some(batch))?;
    }
    Ok(n)
}

/// Check at node start that `nft` and `bridge` run and may change the
/// ruleset here (a missing tool is a startup error, not a reconcile loop
/// that leaves VM ports unfiltered).
pub fn check() -> Result<(), StepError> {
    run("bridge", &["-j", "link", "show"], None)?;
    run("nft", &["list", "tables"], None)?;
    Ok(())
}

/// Delete the VXLAN device `dev` if it exists and deorch made it.
fn take_down(dev: &str) -> Result<(), StepError> {
    let out = match run("ip", &["-j", "link", "show", "dev", dev], None) {
        Ok(o) => o,
        Err(e) if missing(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    if v[0]["ifalias"] != crate::driver::linuxnet::VXLAN_MARK {
        return Ok(());
    }
    tracing::warn!(
        device = dev,
        "fabric: taking down a segment whose VNI collides with another's"
    );
    run("ip", &["link", "del", "dev", dev], None).map(|_| ())
}

impl Kernel {
    /// Apply `d`: every segment's entries, then the ruleset when it
    /// changed. Errors are per step; the other steps still run.
    pub fn apply(&mut self, d: &Desired) -> Vec<StepError> {
        let mut errors = Vec::new();
        for dev in &d.down {
            if let Err(e) = take_down(dev) {
                errors.push(e);
            }
        }
        for s in &d.segments {
            if let Err(e) = sync_fdb(s) {
                errors.push(e);
            }
            if let Err(e) = sync_neighbours(s) {
                errors.push(e);
            }
        }
        let text = ruleset(d);
        if self.applied.as_deref() != Some(text.as_str()) {
            // The tables are replaced: carry their counters over first.
            let before = self.read_counters();
            match run("nft", &["-f", "-"], Some(text.clone())) {
                Ok(_) => {
                    for (k, v) in before {
                        *self.carried.entry(k).or_default() += v;
                    }
                    self.applied = Some(text);
                }
                Err(e) => errors.push(e),
            }
        }
        errors
    }

    fn read_counters(&self) -> BTreeMap<String, u64> {
        match run("nft", &["-j", "list", "counters"], None) {
            Ok(out) => parse_counters(&out),
            Err(_) => BTreeMap::new(),
        }
    }

    /// Every counter's count since the node started: carried over plus
    /// what the tables hold now.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        let mut c = self.carried.clone();
        for (k, v) in self.read_counters() {
            *c.entry(k).or_default() += v;
        }
        c
    }

    /// Remove deorch's tables (the node stops: its VMs keep running, so
    /// this is not done on a stop; tests and `deorch node` cleanup).
    pub fn clear() -> Result<(), StepError> {
        let t = super::TABLE;
        run(
            "nft",
            &["-f", "-"],
            Some(format!(
                "table bridge {t} {{}}\ndelete table bridge {t}\ntable inet {t} {{}}\ndelete table inet {t}\n"
            )),
        )
        .map(|_| ())
    }
}
