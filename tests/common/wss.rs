//! A minimal websocket-over-TLS client (RFC 6455, binary frames): what a
//! browser's noVNC does to reach QEMU's console websocket (`wss://`),
//! checking the server's certificate against a given CA as a browser
//! that trusts it would.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// A websocket's binary stream: reads the server's frames' payloads,
/// writes masked binary frames.
pub struct Ws<S> {
    s: S,
    buf: Vec<u8>,
    at: usize,
}

impl<S: Read + Write> Read for Ws<S> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.buf.len() {
            let mut h = [0u8; 2];
            self.s.read_exact(&mut h)?;
            let opcode = h[0] & 0x0f;
            let mut len = u64::from(h[1] & 0x7f);
            if len == 126 {
                let mut l = [0u8; 2];
                self.s.read_exact(&mut l)?;
                len = u64::from(u16::from_be_bytes(l));
            } else if len == 127 {
                let mut l = [0u8; 8];
                self.s.read_exact(&mut l)?;
                len = u64::from_be_bytes(l);
            }
            assert!(h[1] & 0x80 == 0, "a server's frame is never masked");
            let mut payload = vec![0u8; len.min(16 << 20) as usize];
            self.s.read_exact(&mut payload)?;
            match opcode {
                0x8 => return Ok(0),
                0x0..=0x2 => {
                    self.buf = payload;
                    self.at = 0;
                }
                _ => {} // ping/pong: nothing to hand on
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl<S: Read + Write> Write for Ws<S> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mask = [0x5a, 0x17, 0xc3, 0x08];
        let mut f = vec![0x82];
        if data.len() < 126 {
            f.push(0x80 | data.len() as u8);
        } else {
            f.push(0x80 | 126);
            f.extend_from_slice(&(data.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(&mask);
        f.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.s.write_all(&f)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.s.flush()
    }
}

/// Open `wss://host:port/` trusting only the CA in `ca_pem`, with
/// protocol `binary` (as noVNC asks): the websocket's stream, or why not.
pub fn connect(
    host: &str,
    port: u16,
    ca_pem: &Path,
) -> Result<Ws<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_pem).map_err(|e| e.to_string())? {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect((host, port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let hello = format!(
        "GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n\r\n"
    );
    s.write_all(hello.as_bytes()).map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).map_err(|e| e.to_string())?;
        head.push(b[0]);
        if head.len() > 8192 {
            return Err("an endless handshake answer".into());
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if !head.starts_with("HTTP/1.1 101") {
        return Err(format!("not upgraded: {head}"));
    }
    Ok(Ws {
        s,
        buf: Vec::new(),
        at: 0,
    })
}
