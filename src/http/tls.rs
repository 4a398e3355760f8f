//! TLS for the HTTP API, on by default.
//!
//! A node serves HTTPS with the certificate and key the operator gives
//! (`--http-tls-cert`/`--http-tls-key`, PEM) or, by default, with a
//! self-signed certificate it makes once and keeps in `STATE_DIR/tls/`
//! (key mode 0600, written atomically), naming the node and its addresses.
//! Clients pin it like an SSH host key: the node logs the certificate's
//! SHA-256 fingerprint and writes its URL, `https://ADDR#sha256=HEX`, to
//! `STATE_DIR/http-url`; `deorch login|push|whoami --node` take that URL and
//! refuse any other certificate. `--http-plain` serves plain HTTP (logged;
//! the session cookie is `Secure`, so browsers then only keep it on
//! localhost).
//!
//! Handshakes run in their own tasks (10 s limit), so a slow or silent
//! client never holds up the accept loop (see [`super::conn`]).

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Longest TLS handshake a client gets.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Self-signed certificate file in the TLS directory.
pub const CERT_FILE: &str = "cert.pem";
/// Its key.
pub const KEY_FILE: &str = "key.pem";

/// The crypto provider of every TLS endpoint of deorch (ring, as ldap3's).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a DER certificate, lower-case hex: what clients pin.
pub fn fingerprint(cert: &[u8]) -> String {
    hex::encode(Sha256::digest(cert))
}

/// A server configuration and its certificate's fingerprint.
pub struct ServerTls {
    /// For the acceptor.
    pub config: Arc<ServerConfig>,
    /// SHA-256 of the leaf certificate.
    pub fingerprint: String,
}

/// Load `cert`/`key` (PEM) given by the operator.
pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    build(certs, key)
}

/// The node's self-signed certificate in `dir`, made on first use for
/// `names` (IP addresses and DNS names).
pub fn self_signed(dir: &Path, names: &[String]) -> Result<ServerTls, String> {
    let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    if !(cert.exists() && key.exists()) {
        let mut names: Vec<String> = names.to_vec();
        names.extend(["localhost".into(), "127.0.0.1".into(), "::1".into()]);
        names.sort();
        names.dedup();
        let made = rcgen::generate_simple_self_signed(names)
            .map_err(|e| format!("making a self-signed certificate: {e}"))?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        write_private(&key, made.key_pair.serialize_pem().as_bytes())?;
        write_atomic(&cert, made.cert.pem().as_bytes())?;
    }
    load(&cert, &key)
}

fn build(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerTls, String> {
    let fingerprint = fingerprint(&certs[0]);
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not fit: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ServerTls {
        config: Arc::new(config),
        fingerprint,
    })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    crate::state_file::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    crate::state_file::write_with(path, bytes, crate::state_file::Options::private())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The peer address of an HTTP connection, plain or TLS.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// A TCP listener whose connections start with a TLS handshake (done by
/// [`super::conn`], each in its own task under [`HANDSHAKE_TIMEOUT`]).
pub struct TlsListener {
    pub(super) tcp: TcpListener,
    pub(super) acceptor: TlsAcceptor,
}

impl TlsListener {
    /// TLS with `tls` on `tcp`.
    pub fn new(tcp: TcpListener, tls: Arc<ServerConfig>) -> io::Result<TlsListener> {
        Ok(TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(tls),
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}
