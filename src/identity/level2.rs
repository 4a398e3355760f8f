//! Level 2: a password check of a user against an ordered list of LDAP /
//! Active Directory servers.
//!
//! Servers are tried in order until one accepts the bind. Anything else
//! on one server — connection refused, timeout, server gone mid-session,
//! StartTLS failure, unknown user, wrong password — moves on to the next;
//! the check fails only when none accepts, and the error does not say
//! which servers exist or what each answered (the per-server reasons are
//! returned separately for the node's log, never with the password).
//! Empty passwords are refused before any connection: an LDAP simple bind
//! with an empty password is an *unauthenticated* bind and "succeeds".
//! The user name is escaped for DNs (RFC 4514, `ldap3::dn_escape`);
//! attempts are rate-limited per address by [`RateLimiter`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings, StdStream};
use thiserror::Error;

use crate::model::access::DirectoryServer;

/// Default per-server timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a level-2 check failed (what the user is told).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Level2Error {
    /// Empty password: refused without asking any server.
    #[error("empty password refused")]
    EmptyPassword,
    /// No server accepted (deliberately says nothing about the servers).
    #[error("directory login failed")]
    Refused,
    /// Too many attempts for this address.
    #[error("too many attempts; retry in {retry_after_secs} s")]
    RateLimited {
        /// Seconds until the next attempt is allowed.
        retry_after_secs: u64,
    },
    /// The policy names no server, or a server entry cannot be used.
    #[error("level-2 configuration error: {0}")]
    Config(String),
}

/// What happened on one server, for the node's log (never the password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Server URI.
    pub uri: String,
    /// `None` = accepted; otherwise why not.
    pub failure: Option<String>,
}

/// The bind name for `user` on `server`: the bind DN template with the
/// DN-escaped user, or the user principal name template.
pub fn bind_name(server: &DirectoryServer, user: &str) -> Result<String, Level2Error> {
    if user.is_empty() || user.chars().any(char::is_control) {
        return Err(Level2Error::Config(
            "user name is empty or has control characters".into(),
        ));
    }
    match (&server.bind_dn, &server.user_principal_name) {
        (Some(dn), None) => Ok(dn.replace("{user}", &ldap3::dn_escape(user))),
        (None, Some(upn)) => {
            if user.contains('@') {
                return Err(Level2Error::Config(
                    "user name for a UPN must not contain '@'".into(),
                ));
            }
            Ok(upn.replace("{user}", user))
        }
        _ => Err(Level2Error::Config(format!(
            "server {} must set exactly one of bindDn and userPrincipalName",
            server.uri
        ))),
    }
}

/// Host and port of an `ldap://` or `ldaps://` URI (default ports 389 and
/// 636; `[v6]` literals; an empty host is `localhost`, as in ldap3).
fn host_port(uri: &str) -> Result<(String, u16), String> {
    let (rest, default) = if let Some(r) = uri.strip_prefix("ldap://") {
        (r, 389)
    } else if let Some(r) = uri.strip_prefix("ldaps://") {
        (r, 636)
    } else {
        return Err(format!("{uri}: not ldap:// or ldaps://"));
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{uri}: unclosed '['"))?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| format!("{uri}: bad port"))?,
        None => default,
    };
    let host = if host.is_empty() { "localhost" } else { host };
    Ok((host.to_string(), port))
}

/// A TLS client configuration trusting only the CA certificates in the PEM
/// file `path` (a server's `caFile`). Read on every attempt: a renewed CA
/// file is picked up without a restart, and it is a few hundred bytes.
async fn tls_config(path: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let pem = tokio::fs::read(path)
        .await
        .map_err(|e| format!("caFile {path}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("caFile {path}: {e}"))?;
        roots.add(cert).map_err(|e| format!("caFile {path}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("caFile {path}: no certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn try_server(server: &DirectoryServer, name: &str, password: &str) -> Result<(), String> {
    let timeout = server.timeout.map(|d| d.0).unwrap_or(DEFAULT_TIMEOUT);
    let mut settings = LdapConnSettings::new()
        .set_conn_timeout(timeout)
        .set_starttls(server.start_tls);
    if let Some(file) = &server.ca_file {
        settings = settings.set_config(tls_config(file).await?);
    }
    let attempt = async {
        // Our own socket, for TCP_NODELAY (ldap3 does not set it): over
        // TLS the bind request follows the client's handshake flight, and
        // Nagle held it back until the server's delayed ACK, ~40 ms per
        // login (measured against a Samba AD DC).
        let (host, port) = host_port(&server.uri)?;
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let stream = stream
            .set_nodelay(true)
            .and_then(|()| stream.into_std())
            .map_err(|e| format!("connect: {e}"))?;
        let settings = settings.set_std_stream(StdStream::Tcp(stream));
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &server.uri)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        ldap3::drive!(conn);
        let result = ldap
            .simple_bind(name, password)
            .await
            .map_err(|e| format!("bind: {e}"))?;
        let _ = ldap.unbind().await;
        result
            .success()
            .map(|_| ())
            .map_err(|e| format!("bind refused: {e}"))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("timed out after {timeout:?}")))
}

/// Check `user`'s `password` against `servers` in order. Returns the index
/// of the server that accepted, and every attempt (for the log).
pub async fn check_password(
    servers: &[DirectoryServer],
    user: &str,
    password: &str,
) -> (Result<usize, Level2Error>, Vec<Attempt>) {
    if password.is_empty() {
        return (Err(Level2Error::EmptyPassword), Vec::new());
    }
    if servers.is_empty() {
        return (
            Err(Level2Error::Config("no directory server".into())),
            Vec::new(),
        );
    }
    let mut attempts = Vec::with_capacity(servers.len());
    for (i, server) in servers.iter().enumerate() {
        let failure = match bind_name(server, user) {
            Ok(name) => try_server(server, &name, password).await.err(),
            Err(e) => Some(e.to_string()),
        };
        let accepted = failure.is_none();
        attempts.push(Attempt {
            uri: server.uri.clone(),
            failure,
        });
        if accepted {
            return (Ok(i), attempts);
        }
    }
    (Err(Level2Error::Refused), attempts)
}

/// Per-address attempt limiter: at most `max` attempts per `window`
/// seconds, fixed windows, bounded memory (`capacity` addresses; when
/// full, entries whose window has passed are dropped, and if none has, the
/// attempt is refused: fail closed under a flood).
#[derive(Debug)]
pub struct RateLimiter {
    max: u32,
    window: u64,
    capacity: usize,
    seen: HashMap<String, (u64, u32)>,
}

impl RateLimiter {
    /// A limiter.
    pub fn new(max: u32, window: u64, capacity: usize) -> RateLimiter {
        RateLimiter {
            max,
            window: window.max(1),
            capacity: capacity.max(1),
            seen: HashMap::new(),
        }
    }

    /// Record an attempt by `address` at `now` (unix seconds).
    pub fn check(&mut self, address: &str, now: u64) -> Result<(), Level2Error> {
        let start = now - now % self.window;
        if !self.seen.contains_key(address) && self.seen.len() >= self.capacity {
            self.seen.retain(|_, (s, _)| *s == start);
            if self.seen.len() >= self.capacity {
                return Err(Level2Error::RateLimited {
                    retry_after_secs: start + self.window - now,
                });
            }
        }
        let e = self.seen.entry(address.to_string()).or_insert((start, 0));
        if e.0 != start {
            *e = (start, 0);
        }
        if e.1 >= self.max {
            return Err(Level2Error::RateLimited {
                retry_after_secs: start + self.window - now,
            });
        }
        e.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(uri: &str) -> DirectoryServer {
        DirectoryServer {
            uri: uri.into(),
            bind_dn: Some("uid={user},ou=people,dc=example,dc=org".into()),
            ..Default::default()
        }
    }

    #[test]
    fn dn_values_are_escaped() {
        let s = server("ldap://x");
        assert_eq!(
            bind_name(&s, "a,ou=admins").unwrap(),
            "uid=a\\2cou\\3dadmins,ou=people,dc=example,dc=org"
        );
        assert!(bind_name(&s, "").is_err());
        assert!(bind_name(&s, "a\0b").is_err());
        let upn = DirectoryServer {
            uri: "ldap://x".into(),
            user_principal_name: Some("{user}@EXAMPLE.ORG".into()),
            ..Default::default()
        };
        assert_eq!(bind_name(&upn, "alice").unwrap(), "alice@EXAMPLE.ORG");
        assert!(bind_name(&upn, "alice@evil").is_err());
    }

    #[test]
    fn host_and_port_of_a_uri() {
        let hp = host_port;
        assert_eq!(
            hp("ldap://dc1.example.org"),
            Ok(("dc1.example.org".into(), 389))
        );
        assert_eq!(hp("ldaps://10.0.0.1"), Ok(("10.0.0.1".into(), 636)));
        assert_eq!(hp("ldaps://10.0.0.1:3269/"), Ok(("10.0.0.1".into(), 3269)));
        assert_eq!(hp("ldap://[::1]:1389/dc=x?y"), Ok(("::1".into(), 1389)));
        assert_eq!(hp("ldaps://[fe80::1]"), Ok(("fe80::1".into(), 636)));
        assert_eq!(hp("ldap://"), Ok(("localhost".into(), 389)));
        assert!(hp("ldapi:///run/slapd.sock").is_err());
        assert!(hp("ldap://h:port").is_err());
        assert!(hp("ldap://[::1").is_err());
    }

    #[tokio::test]
    async fn empty_password_never_reaches_a_server() {
        let (r, attempts) = check_password(&[server("ldap://127.0.0.1:1")], "alice", "").await;
        assert_eq!(r, Err(Level2Error::EmptyPassword));
        assert!(attempts.is_empty());
    }

    #[test]
    fn rate_limiter() {
        let mut r = RateLimiter::new(3, 60, 2);
        for _ in 0..3 {
            r.check("a", 120).unwrap();
        }
        assert_eq!(
            r.check("a", 130),
            Err(Level2Error::RateLimited {
                retry_after_secs: 50
            })
        );
        r.check("b", 130).unwrap();
        // Full (capacity 2) within the window: a third address is refused.
        assert!(r.check("c", 131).is_err());
        // Next window: old entries are dropped.
        r.check("c", 180).unwrap();
        r.check("a", 180).unwrap();
    }
}
