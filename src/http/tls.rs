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

/// The node's own certificate authority in the TLS directory (made with
/// the self-signed certificate; trust it once to open the node's page and
/// its browser consoles without a warning).
pub const CA_FILE: &str = "ca.pem";
/// Its key.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// QEMU's TLS directory for the browser consoles' websockets, below the
/// TLS directory: `ca-cert.pem`, `server-cert.pem`, `server-key.pem`
/// (QEMU's `tls-creds-x509` layout).
pub const CONSOLE_DIR: &str = "console";

/// A certificate authority and a server certificate it signed for
/// `names` (PEM: CA, CA key, leaf, leaf key). QEMU's TLS (gnutls) takes
/// a server certificate only from a CA, with server usages.
fn ca_and_leaf(names: &[String]) -> Result<(String, String, String, String), String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let err = |e: rcgen::Error| format!("making the node's certificates: {e}");
    let mut names: Vec<String> = names.to_vec();
    names.extend(["localhost".into(), "127.0.0.1".into(), "::1".into()]);
    names.sort();
    names.dedup();
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("deorch node CA {}", names.join(" ")),
    );
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let leaf_key = KeyPair::generate().map_err(err)?;
    let mut leaf = CertificateParams::new(names.clone()).map_err(err)?;
    leaf.distinguished_name.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).map_err(err)?;
    Ok((
        ca_cert.pem(),
        ca_key.serialize_pem(),
        leaf_cert.pem(),
        leaf_key.serialize_pem(),
    ))
}

/// The node's self-signed certificate in `dir`, made on first use for
/// `names` (IP addresses and DNS names): a server certificate signed by
/// the node's own CA (`ca.pem`), served with it.
pub fn self_signed(dir: &Path, names: &[String]) -> Result<ServerTls, String> {
    let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    if !(cert.exists() && key.exists()) {
        let (ca, ca_key, leaf, leaf_key) = ca_and_leaf(names)?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        write_private(&dir.join(CA_KEY_FILE), ca_key.as_bytes())?;
        write_atomic(&dir.join(CA_FILE), ca.as_bytes())?;
        write_private(&key, leaf_key.as_bytes())?;
        write_atomic(&cert, format!("{leaf}{ca}").as_bytes())?;
    }
    load(&cert, &key)
}

/// QEMU's TLS directory for the browser consoles (`dir/console`), made
/// from the HTTPS certificate `cert`/`key` when it comes with the CA that
/// issued it (the node's own, or an operator's chain: its last
/// certificate), so the page and the consoles present one certificate;
/// otherwise (a bare self-signed certificate an older node made, or one
/// the operator gave alone) from a CA and certificate of the consoles'
/// own. Returns the directory and whether it shares the page's
/// certificate.
pub fn console_dir(
    dir: &Path,
    cert: &Path,
    key: &Path,
    names: &[String],
) -> Result<(std::path::PathBuf, bool), String> {
    let out = dir.join(CONSOLE_DIR);
    let pems: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let pem = |der: &CertificateDer| {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
            .collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        )
    };
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let (ca, leaf, leaf_key, shared) = match pems.as_slice() {
        [leaf, .., ca] => {
            let key =
                std::fs::read_to_string(key).map_err(|e| format!("{}: {e}", key.display()))?;
            (pem(ca), pem(leaf), key, true)
        }
        _ => {
            let made = out.join("server-cert.pem");
            if made.exists()
                && out.join("ca-cert.pem").exists()
                && out.join("server-key.pem").exists()
            {
                return Ok((out, false));
            }
            let (ca, _, leaf, leaf_key) = ca_and_leaf(names)?;
            (ca, leaf, leaf_key, false)
        }
    };
    write_private(&out.join("server-key.pem"), leaf_key.as_bytes())?;
    write_atomic(&out.join("ca-cert.pem"), ca.as_bytes())?;
    write_atomic(&out.join("server-cert.pem"), leaf.as_bytes())?;
    Ok((out, shared))
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
