//! A minimal blocking HTTP/1.1 client for `deorch login`, `push`,
//! `whoami` and the login benchmark: `https://HOST:PORT#sha256=HEX` (TLS
//! with the node's certificate pinned by its SHA-256 fingerprint, as the
//! node writes it to `STATE_DIR/http-url`; see `super::tls`) or plain
//! `http://HOST:PORT`; one request per connection, `Content-Length` or
//! chunked bodies. Deliberately small: no redirects, no cookie jar.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use thiserror::Error;

/// Largest response accepted (bytes).
pub const MAX_RESPONSE: usize = 16 << 20;

/// Why a request failed before an HTTP status was received.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The node URL is not `https://HOST:PORT#sha256=HEX` or `http://HOST:PORT`.
    #[error("node URL {0:?}: expected https://HOST:PORT#sha256=FINGERPRINT (as the node writes it to STATE_DIR/http-url) or http://HOST:PORT")]
    BadUrl(String),
    /// Connecting, writing or reading failed.
    #[error("{url}: {source}")]
    Io {
        /// The node.
        url: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The answer is not HTTP/1.x as expected.
    #[error("{url}: malformed HTTP response: {why}")]
    Malformed {
        /// The node.
        url: String,
        /// What was wrong.
        why: &'static str,
    },
}

/// A node's base URL, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeUrl {
    /// `host:port`.
    pub authority: String,
    /// For HTTPS: the SHA-256 of the certificate the node must present.
    pub pin: Option<[u8; 32]>,
}

impl NodeUrl {
    /// Parse `https://HOST:PORT#sha256=HEX` or `http://HOST:PORT` (a
    /// trailing `/` is allowed). HTTPS without a pin is refused: nodes'
    /// certificates are self-signed by default, and the pin is what makes
    /// them trustworthy.
    pub fn parse(url: &str) -> Result<NodeUrl, ClientError> {
        let bad = || ClientError::BadUrl(url.to_string());
        let (rest, pin) = if let Some(rest) = url.strip_prefix("https://") {
            let (rest, pin) = rest.split_once("#sha256=").ok_or_else(bad)?;
            let pin: [u8; 32] = hex::decode(pin)
                .ok()
                .and_then(|p| p.try_into().ok())
                .ok_or_else(bad)?;
            (rest, Some(pin))
        } else {
            (url.strip_prefix("http://").ok_or_else(bad)?, None)
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty()
            || authority.contains('/')
            || authority.contains('@')
            || !authority.contains(':')
        {
            return Err(bad());
        }
        Ok(NodeUrl {
            authority: authority.to_string(),
            pin,
        })
    }

    /// `https://host:port` or `http://host:port`.
    pub fn base(&self) -> String {
        match self.pin {
            Some(_) => format!("https://{}", self.authority),
            None => format!("http://{}", self.authority),
        }
    }
}

/// A TLS stream or a plain one.
pub trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// Connect to `node`: TCP, then TLS with the pinned certificate (the
/// handshake happens at the first read, write or flush).
pub fn connect(node: &NodeUrl, timeout: Duration) -> std::io::Result<Box<dyn Stream>> {
    let tcp = TcpStream::connect(&node.authority)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let _ = tcp.set_nodelay(true);
    let Some(pin) = node.pin else {
        return Ok(Box::new(tcp));
    };
    let config = rustls::ClientConfig::builder_with_provider(super::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(Pinned {
            pin,
            algorithms: super::tls::provider().signature_verification_algorithms,
        }))
        .with_no_client_auth();
    let host = node
        .authority
        .rsplit_once(':')
        .map_or(node.authority.as_str(), |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let name = rustls::pki_types::ServerName::try_from(host)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
        .map_err(std::io::Error::other)?;
    Ok(Box::new(rustls::StreamOwned::new(conn, tcp)))
}

/// Trusts exactly the certificate whose SHA-256 is `pin` (whatever names
/// or issuer it has: nodes' certificates are self-signed), and still checks
/// that the server holds its key (the handshake signature).
#[derive(Debug)]
struct Pinned {
    pin: [u8; 32],
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use sha2::{Digest, Sha256};
        if Sha256::digest(end_entity.as_ref()).as_slice() == self.pin {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the node's certificate (sha256 {}) is not the pinned one ({})",
                hex::encode(Sha256::digest(end_entity.as_ref())),
                hex::encode(self.pin)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers (names lower-cased), in order.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One request: `method path` with optional body and cookie header.
pub fn request(
    node: &NodeUrl,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    cookie: Option<&str>,
    body: &[u8],
    timeout: Duration,
) -> Result<Reply, ClientError> {
    let url = node.base();
    let io = |source| ClientError::Io {
        url: url.clone(),
        source,
    };
    let mut stream = connect(node, timeout).map_err(io)?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\nContent-Length: {}\r\n",
        node.authority,
        body.len()
    );
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    if let Some(c) = cookie {
        head.push_str(&format!("Cookie: {c}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out).map_err(io)?;
    let mut raw = Vec::new();
    match stream.take(MAX_RESPONSE as u64 + 1).read_to_end(&mut raw) {
        Ok(_) => {}
        // A TLS peer that closed without close_notify: fine if what came
        // is a whole response (its length says so).
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && parse_response(&raw).is_ok() => {
        }
        Err(e) => return Err(io(e)),
    }
    parse_response(&raw).map_err(|why| ClientError::Malformed { url, why })
}

fn parse_response(raw: &[u8]) -> Result<Reply, &'static str> {
    if raw.len() > MAX_RESPONSE {
        return Err("response too large");
    }
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty")?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err("not HTTP/1.x");
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or("bad status")?;
    let mut headers = Vec::new();
    for l in lines {
        let (n, v) = l.split_once(':').ok_or("bad header line")?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else if let Some((_, len)) = headers.iter().find(|(n, _)| n == "content-length") {
        let len: usize = len.parse().map_err(|_| "bad content-length")?;
        rest.get(..len)
            .ok_or("body shorter than content-length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk")?;
        let size_text = std::str::from_utf8(&data[..eol]).map_err(|_| "bad chunk")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).ok_or("truncated chunk")?);
        data = data.get(size + 2..).ok_or("truncated chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_responses_parse() {
        assert_eq!(
            NodeUrl::parse("http://127.0.0.1:8080/").unwrap().authority,
            "127.0.0.1:8080"
        );
        let pinned =
            NodeUrl::parse(&format!("https://[::1]:8443#sha256={}", "ab".repeat(32))).unwrap();
        assert_eq!(
            (pinned.authority.as_str(), pinned.pin),
            ("[::1]:8443", Some([0xab; 32]))
        );
        assert_eq!(pinned.base(), "https://[::1]:8443");
        for bad in [
            "https://a:1",
            "https://a:1#sha256=abcd",
            "https://a:1#md5=00",
            "http://a",
            "http://a:1/x",
            "ftp://a:1",
            "http://",
        ] {
            assert!(NodeUrl::parse(bad).is_err(), "{bad}");
        }
        let r = parse_response(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\nSet-Cookie: a=b\r\n\r\n{}xx",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (401, &b"{}"[..]));
        assert_eq!(r.header("set-cookie"), Some("a=b"));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
        for junk in [
            &b""[..],
            b"HTTP/1.1\r\n\r\n",
            b"SSH-2.0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab",
        ] {
            assert!(parse_response(junk).is_err());
        }
    }
}
