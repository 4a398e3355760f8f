//! The option set a VM gets: the network's `dhcp` merged with the NIC's
//! override field by field, resolved once into typed values
//! ([`LeaseOptions`]) and encoded into a reply by [`LeaseOptions::encode`].

use std::net::Ipv4Addr;

use dhcproto::v4::{self, DhcpOption, NodeType, OptionCode};
use dhcproto::Name;
use ipnet::Ipv4Net;

use super::ConfigError;
use crate::model::network::{DhcpOptions, Netbios, NetbiosNodeType};

/// Lease time when the manifest names none.
pub const DEFAULT_LEASE_SECS: u32 = 3600;

/// `over` on top of `base`, field by field: a set scalar or a non-empty
/// list in `over` wins; NetBIOS merges its three fields the same way.
pub fn merge(base: &DhcpOptions, over: &DhcpOptions) -> DhcpOptions {
    fn opt<T: Clone>(b: &Option<T>, o: &Option<T>) -> Option<T> {
        o.clone().or_else(|| b.clone())
    }
    fn list<T: Clone>(b: &[T], o: &[T]) -> Vec<T> {
        if o.is_empty() { b } else { o }.to_vec()
    }
    let netbios = match (&base.netbios, &over.netbios) {
        (None, None) => None,
        (b, o) => {
            let empty = Netbios::default();
            let b = b.as_ref().unwrap_or(&empty);
            let o = o.as_ref().unwrap_or(&empty);
            Some(Netbios {
                name_servers: list(&b.name_servers, &o.name_servers),
                datagram_servers: list(&b.datagram_servers, &o.datagram_servers),
                node_type: o.node_type.or(b.node_type),
            })
        }
    };
    DhcpOptions {
        enabled: opt(&base.enabled, &over.enabled),
        lease_time: opt(&base.lease_time, &over.lease_time),
        host_name: opt(&base.host_name, &over.host_name),
        broadcast: opt(&base.broadcast, &over.broadcast),
        mtu: opt(&base.mtu, &over.mtu),
        ntp_servers: list(&base.ntp_servers, &over.ntp_servers),
        dns_servers: list(&base.dns_servers, &over.dns_servers),
        domain_name: opt(&base.domain_name, &over.domain_name),
        domain_search: list(&base.domain_search, &over.domain_search),
        log_servers: list(&base.log_servers, &over.log_servers),
        netbios,
        smtp_servers: list(&base.smtp_servers, &over.smtp_servers),
        pop3_servers: list(&base.pop3_servers, &over.pop3_servers),
        ip_forwarding: opt(&base.ip_forwarding, &over.ip_forwarding),
        tcp_keepalive_interval: opt(&base.tcp_keepalive_interval, &over.tcp_keepalive_interval),
        classless_static_routes: list(&base.classless_static_routes, &over.classless_static_routes),
    }
}

/// Every option value of one client, typed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseOptions {
    /// Option 1.
    pub subnet_mask: Ipv4Addr,
    /// Option 3.
    pub router: Option<Ipv4Addr>,
    /// Option 28.
    pub broadcast: Ipv4Addr,
    /// Option 26.
    pub mtu: Option<u16>,
    /// Option 12.
    pub host_name: String,
    /// Option 6.
    pub dns_servers: Vec<Ipv4Addr>,
    /// Option 42.
    pub ntp_servers: Vec<Ipv4Addr>,
    /// Option 7.
    pub log_servers: Vec<Ipv4Addr>,
    /// Option 69.
    pub smtp_servers: Vec<Ipv4Addr>,
    /// Option 70.
    pub pop3_servers: Vec<Ipv4Addr>,
    /// Option 44.
    pub netbios_name_servers: Vec<Ipv4Addr>,
    /// Option 45.
    pub netbios_datagram_servers: Vec<Ipv4Addr>,
    /// Option 46.
    pub netbios_node_type: Option<NetbiosNodeType>,
    /// Option 15.
    pub domain_name: Option<String>,
    /// Option 119, names without the trailing dot.
    pub domain_search: Vec<String>,
    /// Option 19.
    pub ip_forwarding: Option<bool>,
    /// Option 38, seconds.
    pub tcp_keepalive_secs: Option<u32>,
    /// Option 121, including the default route through the gateway when
    /// the manifest lists routes (clients that take 121 ignore option 3).
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
    /// Option 51, seconds; 58 and 59 are derived (1/2 and 7/8).
    pub lease_secs: u32,
}

fn ip(field: &str, s: &str) -> Result<Ipv4Addr, ConfigError> {
    s.parse().map_err(|_| ConfigError::Field {
        field: field.to_string(),
        message: format!("{s:?} is not an IPv4 address"),
    })
}

fn ips(field: &str, list: &[String]) -> Result<Vec<Ipv4Addr>, ConfigError> {
    list.iter().map(|s| ip(field, s)).collect()
}

fn secs(field: &str, d: &crate::model::Duration) -> Result<u32, ConfigError> {
    u32::try_from(d.0.as_secs()).map_err(|_| ConfigError::Field {
        field: field.to_string(),
        message: format!("{d} does not fit in 32 bits of seconds"),
    })
}

impl LeaseOptions {
    /// Resolve merged options for a client of `subnet` whose VM is called
    /// `vm_name`; `network_mtu` is the network's own MTU.
    pub fn resolve(
        subnet: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        network_mtu: Option<u16>,
        d: &DhcpOptions,
        vm_name: &str,
    ) -> Result<LeaseOptions, ConfigError> {
        let mut routes = Vec::new();
        for (i, r) in d.classless_static_routes.iter().enumerate() {
            let field = format!("dhcp.classlessStaticRoutes[{i}]");
            let dest: Ipv4Net = r.destination.parse().map_err(|_| ConfigError::Field {
                field: format!("{field}.destination"),
                message: format!("{:?} is not an IPv4 CIDR", r.destination),
            })?;
            routes.push((dest.trunc(), ip(&format!("{field}.gateway"), &r.gateway)?));
        }
        if let Some(gw) = gateway {
            let has_default = routes.iter().any(|(n, _)| n.prefix_len() == 0);
            if !routes.is_empty() && !has_default {
                routes.push((Ipv4Net::default(), gw));
            }
        }
        let nb = d.netbios.clone().unwrap_or_default();
        let lease_secs = match &d.lease_time {
            Some(t) => secs("dhcp.leaseTime", t)?,
            None => DEFAULT_LEASE_SECS,
        };
        Ok(LeaseOptions {
            subnet_mask: subnet.netmask(),
            router: gateway,
            broadcast: match &d.broadcast {
                Some(b) => ip("dhcp.broadcast", b)?,
                None => subnet.broadcast(),
            },
            mtu: d.mtu.or(network_mtu),
            host_name: d.host_name.clone().unwrap_or_else(|| vm_name.to_string()),
            dns_servers: ips("dhcp.dnsServers", &d.dns_servers)?,
            ntp_servers: ips("dhcp.ntpServers", &d.ntp_servers)?,
            log_servers: ips("dhcp.logServers", &d.log_servers)?,
            smtp_servers: ips("dhcp.smtpServers", &d.smtp_servers)?,
            pop3_servers: ips("dhcp.pop3Servers", &d.pop3_servers)?,
            netbios_name_servers: ips("dhcp.netbios.nameServers", &nb.name_servers)?,
            netbios_datagram_servers: ips("dhcp.netbios.datagramServers", &nb.datagram_servers)?,
            netbios_node_type: nb.node_type,
            domain_name: d.domain_name.clone(),
            domain_search: d
                .domain_search
                .iter()
                .map(|s| s.trim_end_matches('.').to_string())
                .collect(),
            ip_forwarding: d.ip_forwarding,
            tcp_keepalive_secs: match &d.tcp_keepalive_interval {
                Some(t) => Some(secs("dhcp.tcpKeepaliveInterval", t)?),
                None => None,
            },
            routes,
            lease_secs,
        })
        .and_then(|o| {
            o.search_names()?;
            Ok(o)
        })
    }

    fn search_names(&self) -> Result<Vec<Name>, ConfigError> {
        self.domain_search
            .iter()
            .map(|s| {
                Name::from_ascii(format!("{s}.")).map_err(|e| ConfigError::Field {
                    field: "dhcp.domainSearch".into(),
                    message: format!("{s:?} is not a domain name: {e}"),
                })
            })
            .collect()
    }

    /// Renewal time T1 (option 58): half the lease.
    pub fn renewal_secs(&self) -> u32 {
        self.lease_secs / 2
    }

    /// Rebinding time T2 (option 59): 7/8 of the lease.
    pub fn rebinding_secs(&self) -> u32 {
        (u64::from(self.lease_secs) * 7 / 8) as u32
    }

    /// Put every option into `opts`; the lease options (51, 58, 59) only
    /// when `with_lease` (not in the answer to an INFORM).
    pub fn encode(&self, opts: &mut v4::DhcpOptions, with_lease: bool) {
        opts.insert(DhcpOption::SubnetMask(self.subnet_mask));
        if let Some(r) = self.router {
            opts.insert(DhcpOption::Router(vec![r]));
        }
        opts.insert(DhcpOption::BroadcastAddr(self.broadcast));
        if let Some(m) = self.mtu {
            opts.insert(DhcpOption::InterfaceMtu(m));
        }
        opts.insert(DhcpOption::Hostname(self.host_name.clone()));
        let lists = [
            (OptionCode::DomainNameServer, &self.dns_servers),
            (OptionCode::NtpServers, &self.ntp_servers),
            (OptionCode::LogServer, &self.log_servers),
            (OptionCode::SmtpServer, &self.smtp_servers),
            (OptionCode::Pop3Server, &self.pop3_servers),
            (OptionCode::NetBiosNameServers, &self.netbios_name_servers),
            (
                OptionCode::NetBiosDatagramDistributionServer,
                &self.netbios_datagram_servers,
            ),
        ];
        for (code, list) in lists {
            if list.is_empty() {
                continue;
            }
            let l = list.clone();
            opts.insert(match code {
                OptionCode::DomainNameServer => DhcpOption::DomainNameServer(l),
                OptionCode::NtpServers => DhcpOption::NtpServers(l),
                OptionCode::LogServer => DhcpOption::LogServer(l),
                OptionCode::SmtpServer => DhcpOption::SmtpServer(l),
                OptionCode::Pop3Server => DhcpOption::Pop3Server(l),
                OptionCode::NetBiosNameServers => DhcpOption::NetBiosNameServers(l),
                _ => DhcpOption::NetBiosDatagramDistributionServer(l),
            });
        }
        if let Some(t) = self.netbios_node_type {
            opts.insert(DhcpOption::NetBiosNodeType(match t {
                NetbiosNodeType::B => NodeType::B,
                NetbiosNodeType::P => NodeType::P,
                NetbiosNodeType::M => NodeType::M,
                NetbiosNodeType::H => NodeType::H,
            }));
        }
        if let Some(d) = &self.domain_name {
            opts.insert(DhcpOption::DomainName(d.clone()));
        }
        if let Ok(names) = self.search_names() {
            if !names.is_empty() {
                opts.insert(DhcpOption::DomainSearch(names));
            }
        }
        if let Some(f) = self.ip_forwarding {
            opts.insert(DhcpOption::IpForwarding(f));
        }
        if let Some(k) = self.tcp_keepalive_secs {
            opts.insert(DhcpOption::TcpKeepaliveInterval(k));
        }
        if !self.routes.is_empty() {
            opts.insert(DhcpOption::ClasslessStaticRoute(self.routes.clone()));
        }
        if with_lease {
            opts.insert(DhcpOption::AddressLeaseTime(self.lease_secs));
            opts.insert(DhcpOption::Renewal(self.renewal_secs()));
            opts.insert(DhcpOption::Rebinding(self.rebinding_secs()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::network::StaticRoute;
    use dhcproto::{Decodable, Decoder, Encodable, Encoder};

    fn encoded(o: &LeaseOptions) -> Vec<u8> {
        let mut opts = v4::DhcpOptions::new();
        o.encode(&mut opts, true);
        let mut buf = Vec::new();
        opts.encode(&mut Encoder::new(&mut buf)).unwrap();
        buf
    }

    /// The bytes of option `code` in an encoded option list.
    fn raw(buf: &[u8], code: u8) -> Vec<u8> {
        let mut i = 0;
        let mut out = Vec::new();
        while i < buf.len() && buf[i] != 255 {
            if buf[i] == 0 {
                i += 1;
                continue;
            }
            let len = buf[i + 1] as usize;
            if buf[i] == code {
                out.extend_from_slice(&buf[i + 2..i + 2 + len]);
            }
            i += 2 + len;
        }
        out
    }

    fn base() -> DhcpOptions {
        DhcpOptions {
            classless_static_routes: vec![
                StaticRoute {
                    destination: "192.168.50.0/24".into(),
                    gateway: "10.20.0.254".into(),
                },
                StaticRoute {
                    destination: "172.16.0.0/12".into(),
                    gateway: "10.20.0.253".into(),
                },
                StaticRoute {
                    destination: "10.0.0.0/8".into(),
                    gateway: "10.20.0.252".into(),
                },
            ],
            domain_search: vec!["eng.apple.com".into(), "marketing.apple.com".into()],
            ..Default::default()
        }
    }

    #[test]
    fn classless_routes_use_rfc3442_and_add_the_default_route() {
        let o = LeaseOptions::resolve(
            "10.20.0.0/24".parse().unwrap(),
            Some("10.20.0.1".parse().unwrap()),
            None,
            &base(),
            "vm",
        )
        .unwrap();
        let bytes = raw(&encoded(&o), 121);
        assert_eq!(
            bytes,
            vec![
                24, 192, 168, 50, 10, 20, 0, 254, // 192.168.50.0/24 via .254
                12, 172, 16, 10, 20, 0, 253, // 172.16.0.0/12: two octets
                8, 10, 10, 20, 0, 252, // 10.0.0.0/8: one octet
                0, 10, 20, 0, 1, // default route: no octets
            ]
        );
    }

    #[test]
    fn no_routes_means_no_option_121_and_explicit_default_is_kept() {
        let gw = Some("10.20.0.1".parse().unwrap());
        let net = "10.20.0.0/24".parse().unwrap();
        let o = LeaseOptions::resolve(net, gw, None, &DhcpOptions::default(), "vm").unwrap();
        assert!(raw(&encoded(&o), 121).is_empty());
        let mut d = DhcpOptions::default();
        d.classless_static_routes.push(StaticRoute {
            destination: "0.0.0.0/0".into(),
            gateway: "10.20.0.9".into(),
        });
        let o = LeaseOptions::resolve(net, gw, None, &d, "vm").unwrap();
        assert_eq!(raw(&encoded(&o), 121), vec![0, 10, 20, 0, 9]);
    }

    #[test]
    fn domain_search_is_rfc1035_encoded_and_round_trips() {
        let o = LeaseOptions::resolve("10.20.0.0/24".parse().unwrap(), None, None, &base(), "vm")
            .unwrap();
        let buf = encoded(&o);
        let bytes = raw(&buf, 119);
        // RFC 3397 section 3's example: the second name points back at
        // "apple.com" in the first (offset 4).
        let mut want = b"\x03eng\x05apple\x03com\x00".to_vec();
        want.extend_from_slice(b"\x09marketing\xc0\x04");
        assert_eq!(bytes, want);
        let back = v4::DhcpOptions::decode(&mut Decoder::new(&buf)).unwrap();
        match back.get(OptionCode::DomainSearch) {
            Some(DhcpOption::DomainSearch(names)) => {
                let s: Vec<String> = names.iter().map(|n| n.to_ascii()).collect();
                assert_eq!(s, ["eng.apple.com.", "marketing.apple.com."]);
            }
            other => panic!("no option 119: {other:?}"),
        }
    }

    #[test]
    fn nic_overrides_field_by_field() {
        let net = DhcpOptions {
            dns_servers: vec!["10.0.0.2".into()],
            ntp_servers: vec!["10.0.0.4".into()],
            domain_name: Some("net.example".into()),
            netbios: Some(Netbios {
                name_servers: vec!["10.0.0.6".into()],
                datagram_servers: vec![],
                node_type: Some(NetbiosNodeType::H),
            }),
            ..Default::default()
        };
        let nic = DhcpOptions {
            dns_servers: vec!["10.0.0.3".into()],
            netbios: Some(Netbios {
                node_type: Some(NetbiosNodeType::B),
                ..Default::default()
            }),
            ..Default::default()
        };
        let m = merge(&net, &nic);
        assert_eq!(m.dns_servers, ["10.0.0.3"]);
        assert_eq!(m.ntp_servers, ["10.0.0.4"]);
        assert_eq!(m.domain_name.as_deref(), Some("net.example"));
        let nb = m.netbios.unwrap();
        assert_eq!(nb.name_servers, ["10.0.0.6"]);
        assert_eq!(nb.node_type, Some(NetbiosNodeType::B));
    }

    #[test]
    fn lease_timers() {
        let d = DhcpOptions {
            lease_time: Some("12h".parse().unwrap()),
            ..Default::default()
        };
        let o = LeaseOptions::resolve("10.0.0.0/8".parse().unwrap(), None, None, &d, "v").unwrap();
        assert_eq!(
            (o.lease_secs, o.renewal_secs(), o.rebinding_secs()),
            (43200, 21600, 37800)
        );
    }
}
