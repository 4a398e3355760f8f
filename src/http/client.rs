//! A minimal blocking HTTP/1.1 client for `deorch login`, `push`,
//! `whoami` and the login benchmark: plain `http://` only (loopback or a
//! trusted network; put a TLS proxy in front of a node for anything else),
//! one request per connection, `Content-Length` or chunked bodies.
//! Deliberately small: no redirects, no cookies jar, no TLS.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use thiserror::Error;

/// Largest response accepted (bytes).
pub const MAX_RESPONSE: usize = 16 << 20;

/// Why a request failed before an HTTP status was received.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The node URL is not `http://HOST:PORT[/]`.
    #[error("node URL {0:?}: expected http://HOST:PORT (https is not built into this client)")]
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
}

impl NodeUrl {
    /// Parse `http://HOST:PORT` (a trailing `/` is allowed).
    pub fn parse(url: &str) -> Result<NodeUrl, ClientError> {
        let bad = || ClientError::BadUrl(url.to_string());
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
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
        })
    }

    /// `http://host:port`.
    pub fn base(&self) -> String {
        format!("http://{}", self.authority)
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
    let mut stream = TcpStream::connect(&node.authority).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let _ = stream.set_nodelay(true);
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
    stream
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(io)?;
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
        for bad in [
            "https://a:1",
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
