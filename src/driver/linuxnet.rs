//! The real host network driver: Linux bridges and taps made with
//! iproute2's `ip` (argument vectors through [`super::cmd`], never a shell
//! string).
//!
//! Ownership: every interface deorch creates carries the alias
//! (`IFLA_IFALIAS`) `deorch:bridge` or `deorch:tap`, set right after
//! `ip link add`/`ip tuntap add` (the kernel ignores an alias given at
//! creation); the interface is deleted again if marking fails. An
//! interface of the same name without that mark is someone else's: it is
//! never changed or removed, and ensuring it fails with the condition
//! `InterfaceNotOwned`. Limit: a node killed between creating and marking
//! leaves an unmarked interface, reported as `InterfaceNotOwned` until an
//! operator deletes it.
//!
//! Every operation is idempotent (observe with `ip -j -d link show`, then
//! create what is missing and set MTU, master and up state), so a
//! reconcile repeated after a crash finishes the job.

use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::Value;

use super::cmd::{self, CmdError};
use super::{BoxFuture, DriverError, Net};

/// Alias marking a bridge deorch created.
pub const BRIDGE_MARK: &str = "deorch:bridge";
/// Alias marking a tap deorch created.
pub const TAP_MARK: &str = "deorch:tap";
/// Alias marking a VXLAN device deorch created.
pub const VXLAN_MARK: &str = "deorch:vxlan";
/// The UDP port of interstellar segments (IANA's VXLAN port).
pub const VXLAN_PORT: u16 = 4789;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Bridges and taps of the host (or of the network namespace the node
/// runs in).
#[derive(Debug, Clone)]
pub struct LinuxNet {
    ip: String,
}

impl Default for LinuxNet {
    fn default() -> Self {
        LinuxNet::new("ip")
    }
}

/// What `ip -j -d link show` says about one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Link {
    address: Option<String>,
    vni: Option<u64>,
    alias: Option<String>,
    kind: Option<String>,
    tun_type: Option<String>,
    master: Option<String>,
    mtu: u32,
    up: bool,
}

impl Link {
    fn parse(v: &Value) -> Link {
        Link {
            address: v["address"].as_str().map(str::to_string),
            vni: v["linkinfo"]["info_data"]["id"].as_u64(),
            alias: v["ifalias"].as_str().map(str::to_string),
            kind: v["linkinfo"]["info_kind"].as_str().map(str::to_string),
            tun_type: v["linkinfo"]["info_data"]["type"]
                .as_str()
                .map(str::to_string),
            master: v["master"].as_str().map(str::to_string),
            mtu: v["mtu"].as_u64().unwrap_or(0) as u32,
            up: v["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "UP")),
        }
    }
}

/// A name the kernel accepts for an interface.
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl LinuxNet {
    /// A driver running `ip` (a path or a name found on `PATH`).
    pub fn new(ip: impl Into<String>) -> LinuxNet {
        LinuxNet { ip: ip.into() }
    }

    /// Check that `ip` runs and can read links (at node start, so a
    /// missing iproute2 is a clear startup error, not a reconcile loop).
    pub fn check(&self) -> Result<(), DriverError> {
        cmd::run(&self.ip, &["-j", "link", "show", "dev", "lo"], TIMEOUT)
            .map(|_| ())
            .map_err(|e| e.into_driver("check", &self.ip))
    }

    async fn ip(&self, op: &str, target: &str, args: Vec<String>) -> Result<String, DriverError> {
        let ip = self.ip.clone();
        let (op2, target2) = (op.to_string(), target.to_string());
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            cmd::run(&ip, &refs, TIMEOUT)
                .map(|o| o.stdout)
                .map_err(|e| classify(e, &op2, &target2))
        })
        .await
        .map_err(|e| DriverError::transient(op, target, e.to_string()))?
    }

    /// The interface `name`, or `None` when there is none.
    async fn link(&self, op: &str, name: &str) -> Result<Option<Link>, DriverError> {
        let args = ["-j", "-d", "link", "show", "dev", name].map(String::from);
        match self.ip(op, name, args.to_vec()).await {
            Ok(out) => {
                let v: Value = serde_json::from_str(&out).map_err(|e| {
                    DriverError::permanent(op, name, format!("unreadable `ip -j` output: {e}"))
                })?;
                Ok(v.as_array().and_then(|a| a.first()).map(Link::parse))
            }
            Err(DriverError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn check_name(op: &str, name: &str) -> Result<(), DriverError> {
        if valid_ifname(name) {
            Ok(())
        } else {
            Err(DriverError::Condition {
                op: op.into(),
                target: name.into(),
                reason: "InvalidInterfaceName",
                message: "an interface name is 1-15 characters of letters, digits, '-', '_', '.'"
                    .into(),
            })
        }
    }

    fn not_owned(op: &str, name: &str, link: &Link, want: &str) -> DriverError {
        DriverError::Condition {
            op: op.into(),
            target: name.into(),
            reason: "InterfaceNotOwned",
            message: format!(
                "interface {name} exists ({} {}) and deorch did not create it (alias {:?}, expected {want:?}); it is left alone",
                link.kind.as_deref().unwrap_or("device"),
                link.tun_type.as_deref().unwrap_or(""),
                link.alias.as_deref().unwrap_or("")
            ),
        }
    }

    async fn ensure_bridge_impl(&self, bridge: &str, mtu: u16) -> Result<(), DriverError> {
        let op = "ensure_bridge";
        Self::check_name(op, bridge)?;
        match self.link(op, bridge).await? {
            None => {
                let mtu_s = mtu.to_string();
                let args = [
                    "link",
                    "add",
                    "name",
                    bridge,
                    "mtu",
                    &mtu_s,
                    "type",
                    "bridge",
                    "stp_state",
                    "0",
                    "forward_delay",
                    "0",
                ];
                match self
                    .ip(op, bridge, args.iter().map(|s| s.to_string()).collect())
                    .await
                {
                    // The kernel ignores IFLA_IFALIAS when creating a link:
                    // mark it right after (deleted again if that fails).
                    Ok(_) => self.mark(op, bridge, BRIDGE_MARK).await?,
                    // Created concurrently (or by a lost earlier call): look again.
                    Err(DriverError::Condition {
                        reason: "NameCollision",
                        ..
                    }) => {
                        let Some(link) = self.link(op, bridge).await? else {
                            return Err(DriverError::transient(op, bridge, "vanished"));
                        };
                        if link.alias.as_deref() != Some(BRIDGE_MARK) {
                            return Err(Self::not_owned(op, bridge, &link, BRIDGE_MARK));
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            Some(link) if link.alias.as_deref() != Some(BRIDGE_MARK) => {
                return Err(Self::not_owned(op, bridge, &link, BRIDGE_MARK))
            }
            Some(link) if link.kind.as_deref() != Some("bridge") => {
                return Err(DriverError::permanent(
                    op,
                    bridge,
                    format!(
                        "marked {BRIDGE_MARK} but is a {:?}, not a bridge",
                        link.kind
                    ),
                ))
            }
            Some(link) if link.up && link.mtu == u32::from(mtu) => return Ok(()),
            Some(_) => {}
        }
        let args = ["link", "set", "dev", bridge, "mtu", &mtu.to_string(), "up"];
        self.ip(op, bridge, args.iter().map(|s| s.to_string()).collect())
            .await?;
        Ok(())
    }

    async fn ensure_tap_impl(&self, tap: &str, bridge: &str, mtu: u16) -> Result<(), DriverError> {
        let op = "ensure_tap";
        Self::check_name(op, tap)?;
        Self::check_name(op, bridge)?;
        match self.link(op, bridge).await? {
            Some(b) if b.kind.as_deref() == Some("bridge") => {}
            Some(_) => {
                return Err(DriverError::permanent(
                    op,
                    tap,
                    format!("{bridge} is not a bridge"),
                ))
            }
            // The Network reconciler makes it: retry with backoff.
            None => {
                return Err(DriverError::transient(
                    op,
                    tap,
                    format!("bridge {bridge} does not exist yet"),
                ))
            }
        }
        match self.link(op, tap).await? {
            None => {
                let add = ["tuntap", "add", "dev", tap, "mode", "tap"];
                self.ip(op, tap, add.iter().map(|s| s.to_string()).collect())
                    .await?;
                self.mark(op, tap, TAP_MARK).await?;
            }
            Some(link) if link.alias.as_deref() != Some(TAP_MARK) => {
                return Err(Self::not_owned(op, tap, &link, TAP_MARK))
            }
            Some(link)
                if link.up
                    && link.mtu == u32::from(mtu)
                    && link.master.as_deref() == Some(bridge) =>
            {
                return Ok(())
            }
            Some(_) => {}
        }
        let args = [
            "link",
            "set",
            "dev",
            tap,
            "mtu",
            &mtu.to_string(),
            "master",
            bridge,
            "up",
        ];
        self.ip(op, tap, args.iter().map(|s| s.to_string()).collect())
            .await?;
        Ok(())
    }

    /// Set the ownership alias on an interface just created; if that
    /// fails, delete it again: an unmarked interface would be someone
    /// else's from then on.
    async fn mark(&self, op: &str, name: &str, mark: &str) -> Result<(), DriverError> {
        let set = ["link", "set", "dev", name, "alias", mark];
        if let Err(e) = self
            .ip(op, name, set.iter().map(|s| s.to_string()).collect())
            .await
        {
            let del = ["link", "del", "dev", name];
            let _ = self
                .ip(op, name, del.iter().map(|s| s.to_string()).collect())
                .await;
            return Err(e);
        }
        Ok(())
    }

    /// Delete `name` if deorch made it (marked `mark`); absent or foreign
    /// interfaces are left as they are.
    async fn remove_marked(&self, op: &str, name: &str, mark: &str) -> Result<(), DriverError> {
        if !valid_ifname(name) {
            return Ok(());
        }
        match self.link(op, name).await? {
            None => Ok(()),
            Some(link) if link.alias.as_deref() != Some(mark) => {
                tracing::warn!(interface = name, alias = ?link.alias, "not removing an interface deorch did not create");
                Ok(())
            }
            Some(_) => {
                let args = ["link", "del", "dev", name];
                match self
                    .ip(op, name, args.iter().map(|s| s.to_string()).collect())
                    .await
                {
                    Ok(_) | Err(DriverError::NotFound { .. }) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        }
    }

    async fn set_address_impl(
        &self,
        bridge: &str,
        address: Option<Ipv4Net>,
    ) -> Result<(), DriverError> {
        let op = "set_bridge_address";
        Self::check_name(op, bridge)?;
        match self.link(op, bridge).await? {
            None => return Err(DriverError::not_found(op, bridge)),
            Some(link) if link.alias.as_deref() != Some(BRIDGE_MARK) => {
                return Err(Self::not_owned(op, bridge, &link, BRIDGE_MARK))
            }
            Some(_) => {}
        }
        let out = self
            .ip(
                op,
                bridge,
                ["-j", "-4", "addr", "show", "dev", bridge]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            )
            .await?;
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        let present: Vec<Ipv4Net> = v
            .as_array()
            .and_then(|a| a.first())
            .and_then(|l| l["addr_info"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|a| {
                let ip: std::net::Ipv4Addr = a["local"].as_str()?.parse().ok()?;
                let len = a["prefixlen"].as_u64()? as u8;
                Ipv4Net::new(ip, len).ok()
            })
            .collect();
        for old in present.iter().filter(|p| Some(**p) != address) {
            let args = ["addr", "del", &old.to_string(), "dev", bridge];
            self.ip(op, bridge, args.iter().map(|s| s.to_string()).collect())
                .await?;
        }
        if let Some(a) = address {
            if !present.contains(&a) {
                let args = ["addr", "replace", &a.to_string(), "dev", bridge];
                self.ip(op, bridge, args.iter().map(|s| s.to_string()).collect())
                    .await?;
            }
        }
        Ok(())
    }
}

impl LinuxNet {
    async fn run(&self, op: &str, target: &str, args: &[&str]) -> Result<String, DriverError> {
        self.ip(op, target, args.iter().map(|s| s.to_string()).collect())
            .await
    }

    async fn bridge_cmd(&self, op: &str, target: &str, args: &[&str]) -> Result<(), DriverError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (op2, target2) = (op.to_string(), target.to_string());
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            cmd::run("bridge", &refs, TIMEOUT)
                .map(|_| ())
                .map_err(|e| classify(e, &op2, &target2))
        })
        .await
        .map_err(|e| DriverError::transient(op, target, e.to_string()))?
    }

    /// The ports of `bridge`: (name, its alias).
    async fn ports(&self, op: &str, bridge: &str) -> Result<Vec<(String, Link)>, DriverError> {
        let out = self
            .run(op, bridge, &["-j", "-d", "link", "show", "master", bridge])
            .await?;
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| Some((l["ifname"].as_str()?.to_string(), Link::parse(l))))
            .collect())
    }

    async fn set_uplink_impl(&self, bridge: &str, uplink: Option<&str>) -> Result<(), DriverError> {
        let op = "set_uplink";
        Self::check_name(op, bridge)?;
        for (name, link) in self.ports(op, bridge).await? {
            let ours = matches!(link.alias.as_deref(), Some(TAP_MARK | VXLAN_MARK));
            if !ours && Some(name.as_str()) != uplink {
                tracing::info!(bridge, port = %name, "releasing a port the network does not name as its uplink");
                self.run(op, &name, &["link", "set", "dev", &name, "nomaster"])
                    .await?;
            }
        }
        let Some(up) = uplink else { return Ok(()) };
        Self::check_name(op, up)?;
        match self.link(op, up).await? {
            None => Err(DriverError::Condition {
                op: op.into(),
                target: up.into(),
                reason: "UplinkMissing",
                message: format!("the uplink {up} does not exist on this node"),
            }),
            Some(l) if l.master.as_deref() == Some(bridge) && l.up => Ok(()),
            Some(l) if l.master.is_some() => Err(DriverError::Condition {
                op: op.into(),
                target: up.into(),
                reason: "UplinkBusy",
                message: format!(
                    "the uplink {up} is already a port of {}",
                    l.master.unwrap_or_default()
                ),
            }),
            Some(_) => self
                .run(op, up, &["link", "set", "dev", up, "master", bridge, "up"])
                .await
                .map(|_| ()),
        }
    }

    async fn ensure_vxlan_impl(&self, v: &super::Vxlan) -> Result<(), DriverError> {
        let op = "ensure_vxlan";
        let dev = v.device.as_str();
        Self::check_name(op, dev)?;
        Self::check_name(op, &v.bridge)?;
        let (vni, mtu, port) = (v.vni.to_string(), v.mtu.to_string(), VXLAN_PORT.to_string());
        let create = [
            "link",
            "add",
            dev,
            "mtu",
            &mtu,
            "type",
            "vxlan",
            "id",
            &vni,
            "dstport",
            &port,
            "nolearning",
        ];
        match self.link(op, dev).await? {
            None => {
                self.run(op, dev, &create).await?;
                self.mark(op, dev, VXLAN_MARK).await?;
            }
            Some(l) if l.alias.as_deref() != Some(VXLAN_MARK) => {
                return Err(Self::not_owned(op, dev, &l, VXLAN_MARK))
            }
            // The VNI of a device cannot change: make it again.
            Some(l) if l.vni != Some(u64::from(v.vni)) => {
                self.run(op, dev, &["link", "del", "dev", dev]).await?;
                self.run(op, dev, &create).await?;
                self.mark(op, dev, VXLAN_MARK).await?;
            }
            Some(_) => {}
        }
        let bridge = v.bridge.as_str();
        match self.link(op, bridge).await? {
            Some(b) if b.address.as_deref() != Some(v.bridge_mac.as_str()) => {
                self.run(
                    op,
                    bridge,
                    &["link", "set", "dev", bridge, "address", &v.bridge_mac],
                )
                .await?;
            }
            Some(_) => {}
            None => {
                return Err(DriverError::transient(
                    op,
                    dev,
                    format!("bridge {bridge} does not exist yet"),
                ))
            }
        }
        self.run(
            op,
            dev,
            &[
                "link", "set", "dev", dev, "mtu", &mtu, "master", bridge, "up",
            ],
        )
        .await?;
        let (suppress, flood) = if v.arpless {
            ("on", "off")
        } else {
            ("off", "on")
        };
        self.bridge_cmd(
            op,
            dev,
            &[
                "link",
                "set",
                "dev",
                dev,
                "learning",
                "off",
                "neigh_suppress",
                suppress,
                "flood",
                flood,
            ],
        )
        .await
    }
}

/// `ip`'s errors: "File exists" is a name collision, "Cannot find
/// device"/"does not exist" not found, permission problems permanent, the
/// rest as every tool (busy and timeouts transient).
fn classify(e: CmdError, op: &str, target: &str) -> DriverError {
    let message = e.message();
    let lower = message.to_ascii_lowercase();
    if lower.contains("file exists") {
        return DriverError::Condition {
            op: op.into(),
            target: target.into(),
            reason: "NameCollision",
            message,
        };
    }
    if lower.contains("cannot find device") || lower.contains("does not exist") {
        return DriverError::not_found(op, target);
    }
    if lower.contains("operation not permitted") || lower.contains("permission denied") {
        return DriverError::Condition {
            op: op.into(),
            target: target.into(),
            reason: "NetworkPermissionDenied",
            message: format!("{message} (the linux network driver needs CAP_NET_ADMIN)"),
        };
    }
    e.into_driver(op, target)
}

impl Net for LinuxNet {
    fn name(&self) -> &'static str {
        "linux"
    }
    fn ensure_bridge<'a>(
        &'a self,
        bridge: &'a str,
        mtu: u16,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.ensure_bridge_impl(bridge, mtu))
    }
    fn ensure_tap<'a>(
        &'a self,
        tap: &'a str,
        bridge: &'a str,
        mtu: u16,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.ensure_tap_impl(tap, bridge, mtu))
    }
    fn remove_tap<'a>(&'a self, tap: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.remove_marked("remove_tap", tap, TAP_MARK))
    }
    fn remove_bridge<'a>(&'a self, bridge: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.remove_marked("remove_bridge", bridge, BRIDGE_MARK))
    }
    fn set_bridge_address<'a>(
        &'a self,
        bridge: &'a str,
        address: Option<Ipv4Net>,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.set_address_impl(bridge, address))
    }
    fn set_uplink<'a>(
        &'a self,
        bridge: &'a str,
        uplink: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.set_uplink_impl(bridge, uplink))
    }
    fn ensure_vxlan<'a>(&'a self, v: &'a super::Vxlan) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.ensure_vxlan_impl(v))
    }
    fn remove_vxlan<'a>(&'a self, device: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.remove_marked("remove_vxlan", device, VXLAN_MARK))
    }
    fn host_interfaces(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_follow_the_kernel() {
        assert!(valid_ifname("db0123456789ab"));
        assert!(valid_ifname("br-lan.10"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("a-name-longer-than-15"));
        assert!(!valid_ifname("br 0"));
        assert!(!valid_ifname("br/0"));
        assert!(!valid_ifname(".."));
    }

    #[test]
    fn link_json_is_read() {
        let v: Value = serde_json::from_str(
            r#"{"ifname":"dt1","flags":["BROADCAST","UP"],"mtu":1400,"master":"db1",
                "linkinfo":{"info_kind":"tun","info_data":{"type":"tap"}},"ifalias":"deorch:tap"}"#,
        )
        .unwrap();
        assert_eq!(
            Link::parse(&v),
            Link {
                address: None,
                vni: None,
                alias: Some(TAP_MARK.into()),
                kind: Some("tun".into()),
                tun_type: Some("tap".into()),
                master: Some("db1".into()),
                mtu: 1400,
                up: true,
            }
        );
    }

    #[test]
    fn ip_errors_are_classified() {
        let f = |m: &str| classify(CmdError::Failed(m.into()), "ensure_bridge", "x");
        assert!(matches!(
            f("RTNETLINK answers: File exists"),
            DriverError::Condition {
                reason: "NameCollision",
                ..
            }
        ));
        assert!(matches!(
            f("Cannot find device \"x\""),
            DriverError::NotFound { .. }
        ));
        assert!(matches!(
            f("RTNETLINK answers: Operation not permitted"),
            DriverError::Condition {
                reason: "NetworkPermissionDenied",
                ..
            }
        ));
        assert!(matches!(
            f("RTNETLINK answers: Device or resource busy"),
            DriverError::Transient { .. }
        ));
    }
}
