//! WebSockets (RFC 6455), the server side, as much as the console bridge
//! needs: the opening handshake, the frame codec, and [`bridge`], which
//! carries bytes between a websocket and a TCP stream. The browser's SPICE
//! client (spice-html5) speaks websockets only and QEMU's SPICE server
//! plain TCP only, so the node carries one to the other on its own HTTPS
//! origin (`console_page::spice_bridge`).
//!
//! What the codec holds a client to, each break a [`ProtocolError`] that
//! ends the connection with a close frame carrying its code: every frame
//! masked; no reserved bit (no extension is ever agreed) and no reserved
//! opcode; lengths in their shortest form; control frames whole and at
//! most 125 bytes; a close frame's code one a peer may send and its reason
//! UTF-8; a continuation only inside a fragmented message and no new
//! message inside one; no frame over the decoder's limit, refused from its
//! header before its payload is read. Messages are never assembled: SPICE
//! is a byte stream, so [`bridge`] forwards each frame's payload as it
//! comes and a fragmented message costs no memory. Text is delivered as
//! bytes, unchecked (the bridge refuses text with 1003).

use std::io;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What the server appends to the client's key before hashing it.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The largest frame payload the bridge takes from a client: spice-html5
/// sends each SPICE message as one frame, a few bytes to a few KiB.
pub const MAX_FRAME: usize = 256 << 10;
/// Bytes read from either side at once (one frame to the client each).
const READ: usize = 16 << 10;
/// How long a write to the client may take: one that stopped reading
/// ends the bridge instead of holding it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server waits for the client's close frame after sending
/// its own.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// `Sec-WebSocket-Accept` for the client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    BASE64.encode(h.finalize())
}

/// A handshake the server may answer with 101.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// `Sec-WebSocket-Accept`.
    pub accept: String,
    /// The subprotocol chosen among the client's, if it offered one the
    /// server speaks.
    pub protocol: Option<&'static str>,
}

/// Why a request is no websocket handshake the server takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// No `Upgrade: websocket` and `Connection: upgrade`.
    #[error("not a websocket handshake (Upgrade: websocket and Connection: upgrade)")]
    NotUpgrade,
    /// A version other than 13.
    #[error("websocket version {0:?}: only 13 is spoken")]
    Version(String),
    /// A missing key, or one that is not 16 bytes in base64.
    #[error("Sec-WebSocket-Key is not 16 bytes in base64")]
    Key,
    /// The client asks for subprotocols, none of them the server's.
    #[error("none of the subprotocols {0:?} is spoken here")]
    Protocol(String),
}

/// Whether header `name`'s comma-separated values hold `token`
/// (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Check a client's opening handshake (RFC 6455 4.2.1; the method, GET,
/// is the router's) and choose a subprotocol among `protocols`. A client
/// that offers none is served without one; one that offers only others is
/// refused, as a browser would fail the connection anyway.
pub fn handshake(
    headers: &HeaderMap,
    protocols: &[&'static str],
) -> Result<Accepted, HandshakeError> {
    if !has_token(headers, header::UPGRADE, "websocket")
        || !has_token(headers, header::CONNECTION, "upgrade")
    {
        return Err(HandshakeError::NotUpgrade);
    }
    let version = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    if version.trim() != "13" {
        return Err(HandshakeError::Version(crate::identity::session::bounded(
            &version,
        )));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .ok_or(HandshakeError::Key)?;
    match BASE64.decode(key) {
        Ok(k) if k.len() == 16 => {}
        _ => return Err(HandshakeError::Key),
    }
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let protocol = offered
        .iter()
        .find_map(|o| protocols.iter().find(|p| *p == o).copied());
    if protocol.is_none() && !offered.is_empty() {
        return Err(HandshakeError::Protocol(crate::identity::session::bounded(
            &offered.join(", "),
        )));
    }
    Ok(Accepted {
        accept: accept_key(key),
        protocol,
    })
}

/// The server's answer to an accepted handshake: 101 Switching Protocols.
pub fn switching_protocols(a: &Accepted) -> Response {
    let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&a.accept).expect("base64 is a valid header value"),
    );
    if let Some(p) = a.protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    r
}

/// A frame's opcode (RFC 6455 5.2; the others are reserved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// The next part of a fragmented message.
    Continuation,
    /// UTF-8 text.
    Text,
    /// Bytes.
    Binary,
    /// The closing handshake.
    Close,
    /// Asks for a pong with the same payload.
    Ping,
    /// A ping's answer (or a heartbeat nobody answers).
    Pong,
}

impl Opcode {
    fn from_bits(b: u8) -> Option<Opcode> {
        Some(match b {
            0 => Opcode::Continuation,
            1 => Opcode::Text,
            2 => Opcode::Binary,
            8 => Opcode::Close,
            9 => Opcode::Ping,
            10 => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0,
            Opcode::Text => 1,
            Opcode::Binary => 2,
            Opcode::Close => 8,
            Opcode::Ping => 9,
            Opcode::Pong => 10,
        }
    }

    /// Close, ping and pong.
    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// One frame, its payload unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The last frame of its message.
    pub fin: bool,
    /// What it carries.
    pub opcode: Opcode,
    /// The application data.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A close frame's status code, if it carries one.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == Opcode::Close && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// A client's break of the protocol; the connection ends with
/// [`ProtocolError::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// RSV1-3 set: no extension was agreed.
    #[error("reserved bits set (no extension was agreed)")]
    ReservedBits,
    /// Opcodes 3-7 and 11-15.
    #[error("reserved opcode {0}")]
    ReservedOpcode(u8),
    /// A client frame without a mask.
    #[error("a client frame without a mask")]
    Unmasked,
    /// A length in more bytes than it needs.
    #[error("a length of {0} not in its shortest form")]
    LongLength(u64),
    /// Over the decoder's limit.
    #[error("a frame of {len} bytes, over the limit of {max}")]
    TooBig {
        /// The frame's payload length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A control frame without FIN.
    #[error("a fragmented control frame")]
    FragmentedControl,
    /// A control frame over 125 bytes.
    #[error("a control frame of {0} bytes (at most 125)")]
    LongControl(usize),
    /// A continuation with no message to continue.
    #[error("a continuation frame outside a fragmented message")]
    StrayContinuation,
    /// A new message before the fragmented one ended.
    #[error("a new message inside a fragmented one")]
    UnfinishedMessage,
    /// A close payload of one byte, a code no peer may send, or a reason
    /// that is not UTF-8.
    #[error("a malformed close frame: {0}")]
    BadClose(&'static str),
}

impl ProtocolError {
    /// The status code of the server's close frame: 1009 (too big) or
    /// 1002 (protocol error).
    pub fn close_code(&self) -> u16 {
        match self {
            ProtocolError::TooBig { .. } => 1009,
            _ => 1002,
        }
    }
}

/// Whether a peer may send `code` in a close frame (RFC 6455 7.4; 1005,
/// 1006 and 1015 are never sent).
pub fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The payload of a close frame: `code` and `reason`.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// Append one frame to `out`: masked with `mask` (as a client sends it),
/// or not (as a server does). Lengths take their shortest form.
pub fn encode(out: &mut Vec<u8>, fin: bool, opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>) {
    out.push(if fin { 0x80 } else { 0 } | opcode.bits());
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(m | n as u8),
        n @ 126..=0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        None => out.extend_from_slice(payload),
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
    }
}

/// A frame's header: what it says, and its length in bytes.
struct Header {
    fin: bool,
    opcode: Opcode,
    len: usize,
    mask: [u8; 4],
    size: usize,
}

/// The header at the start of `b`, `None` until it is all there.
fn header(b: &[u8], max: usize) -> Result<Option<Header>, ProtocolError> {
    if b.len() < 2 {
        return Ok(None);
    }
    if b[0] & 0x70 != 0 {
        return Err(ProtocolError::ReservedBits);
    }
    let bits = b[0] & 0x0f;
    let opcode = Opcode::from_bits(bits).ok_or(ProtocolError::ReservedOpcode(bits))?;
    let fin = b[0] & 0x80 != 0;
    if b[1] & 0x80 == 0 {
        return Err(ProtocolError::Unmasked);
    }
    let (len, ext) = match b[1] & 0x7f {
        126 => match b.get(2..4) {
            None => return Ok(None),
            Some(l) => (u16::from_be_bytes([l[0], l[1]]) as u64, 2),
        },
        127 => match b.get(2..10) {
            None => return Ok(None),
            Some(l) => (u64::from_be_bytes(l.try_into().expect("8 bytes")), 8),
        },
        n => (n as u64, 0),
    };
    if (ext == 2 && len < 126) || (ext == 8 && len <= 0xffff) {
        return Err(ProtocolError::LongLength(len));
    }
    if opcode.is_control() {
        if !fin {
            return Err(ProtocolError::FragmentedControl);
        }
        if len > 125 {
            return Err(ProtocolError::LongControl(len as usize));
        }
    }
    if len > max as u64 {
        return Err(ProtocolError::TooBig { len, max });
    }
    let size = 2 + ext + 4;
    let Some(mask) = b.get(2 + ext..size) else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin,
        opcode,
        len: len as usize,
        mask: mask.try_into().expect("4 bytes"),
        size,
    }))
}

/// Frames from a client's bytes: [`Decoder::feed`] what arrives, then
/// take [`Decoder::next`] until it answers `None`. After an error it
/// answers that error for good.
#[derive(Debug)]
pub struct Decoder {
    max_frame: usize,
    buf: Vec<u8>,
    /// Bytes at the start of `buf` already decoded.
    used: usize,
    /// The opcode of the fragmented message under way.
    message: Option<Opcode>,
    failed: Option<ProtocolError>,
}

impl Decoder {
    /// A decoder refusing frames over `max_frame` bytes.
    pub fn new(max_frame: usize) -> Decoder {
        Decoder {
            max_frame,
            buf: Vec::new(),
            used: 0,
            message: None,
            failed: None,
        }
    }

    /// Add bytes the client sent.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.used == self.buf.len() {
            self.buf.clear();
            self.used = 0;
        } else if self.used > self.buf.len() / 2 {
            self.buf.drain(..self.used);
            self.used = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes fed and not yet decoded (at most one frame's and one feed's).
    pub fn pending(&self) -> usize {
        self.buf.len() - self.used
    }

    /// Whether a fragmented message is under way.
    pub fn in_message(&self) -> bool {
        self.message.is_some()
    }

    fn fail(&mut self, e: ProtocolError) -> Result<Option<Frame>, ProtocolError> {
        self.failed = Some(e.clone());
        Err(e)
    }

    /// The next whole frame, `None` until one is all there, or the
    /// client's break of the protocol.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Frame>, ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let b = &self.buf[self.used..];
        let h = match header(b, self.max_frame) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(e) => return self.fail(e),
        };
        match (h.opcode, self.message) {
            (Opcode::Continuation, None) => return self.fail(ProtocolError::StrayContinuation),
            (Opcode::Text | Opcode::Binary, Some(_)) => {
                return self.fail(ProtocolError::UnfinishedMessage)
            }
            _ => {}
        }
        let Some(data) = b.get(h.size..h.size + h.len) else {
            return Ok(None);
        };
        let payload: Vec<u8> = data
            .iter()
            .enumerate()
            .map(|(i, x)| x ^ h.mask[i % 4])
            .collect();
        if h.opcode == Opcode::Close {
            if payload.len() == 1 {
                return self.fail(ProtocolError::BadClose("one byte"));
            }
            if payload.len() >= 2 {
                if !sendable_close_code(u16::from_be_bytes([payload[0], payload[1]])) {
                    return self.fail(ProtocolError::BadClose("a code no peer may send"));
                }
                if std::str::from_utf8(&payload[2..]).is_err() {
                    return self.fail(ProtocolError::BadClose("a reason that is not UTF-8"));
                }
            }
        }
        self.used += h.size + h.len;
        match h.opcode {
            Opcode::Text | Opcode::Binary if !h.fin => self.message = Some(h.opcode),
            Opcode::Continuation if h.fin => self.message = None,
            _ => {}
        }
        Ok(Some(Frame {
            fin: h.fin,
            opcode: h.opcode,
            payload,
        }))
    }
}

/// Why a bridge ended.
#[derive(Debug)]
pub enum End {
    /// The client sent a close frame (with its code, if any), answered.
    ClientClosed(Option<u16>),
    /// The client's connection ended without a close frame.
    ClientGone,
    /// The TCP side ended (QEMU closed the session, or stopped).
    ServerClosed,
    /// The client broke the protocol; closed with the error's code.
    Protocol(ProtocolError),
    /// The client sent text to a byte stream; closed with 1003.
    Text,
    /// Reading or writing one side failed.
    Io(&'static str, io::Error),
    /// The client read nothing for [`WRITE_TIMEOUT`].
    Stalled,
}

/// What a bridge carried, and why it ended.
#[derive(Debug)]
pub struct Bridged {
    /// Payload bytes from the client to the TCP side.
    pub to_server: u64,
    /// Bytes from the TCP side to the client.
    pub to_client: u64,
    /// Why it ended.
    pub end: End,
}

/// Write one server frame (unmasked) to the client, within
/// [`WRITE_TIMEOUT`].
async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    out: &mut Vec<u8>,
    opcode: Opcode,
    payload: &[u8],
) -> Result<(), End> {
    out.clear();
    encode(out, true, opcode, payload, None);
    match tokio::time::timeout(WRITE_TIMEOUT, async {
        w.write_all(out).await?;
        w.flush().await
    })
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(End::Io("client", e)),
        Err(_) => Err(End::Stalled),
    }
}

/// Send the client a close frame with `code` (best effort: the bridge
/// ends either way) and end with `end`.
async fn close<W: AsyncWrite + Unpin>(w: &mut W, out: &mut Vec<u8>, code: u16, end: End) -> End {
    let _ = send(w, out, Opcode::Close, &close_payload(code, "")).await;
    end
}

/// Act on one client frame: its payload to the server (the bytes
/// forwarded), a ping answered, or why the bridge ends.
async fn on_frame<W, S>(frame: Frame, cw: &mut W, sw: &mut S, out: &mut Vec<u8>) -> Result<u64, End>
where
    W: AsyncWrite + Unpin,
    S: AsyncWrite + Unpin,
{
    match frame.opcode {
        Opcode::Binary | Opcode::Continuation => match sw.write_all(&frame.payload).await {
            Ok(()) => Ok(frame.payload.len() as u64),
            Err(e) => Err(close(cw, out, 1011, End::Io("server", e)).await),
        },
        Opcode::Text => Err(close(cw, out, 1003, End::Text).await),
        Opcode::Ping => send(cw, out, Opcode::Pong, &frame.payload)
            .await
            .map(|()| 0),
        Opcode::Pong => Ok(0),
        Opcode::Close => {
            // Its code echoed (RFC 6455 5.5.1), or none.
            let code = frame.close_code();
            let reply = code.map(|c| close_payload(c, "")).unwrap_or_default();
            let _ = send(cw, out, Opcode::Close, &reply).await;
            Err(End::ClientClosed(code))
        }
    }
}

/// After the server's close frame: the client's, briefly (what else it
/// sends is dropped).
async fn await_close<R: AsyncRead + Unpin>(r: &mut R, decoder: &mut Decoder, buf: &mut [u8]) {
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        loop {
            match decoder.next() {
                Ok(Some(f)) if f.opcode == Opcode::Close => return,
                Ok(Some(_)) => continue,
                Err(_) => return,
                Ok(None) => {}
            }
            match r.read(buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => decoder.feed(&buf[..n]),
            }
        }
    })
    .await;
}

/// Carry bytes between a websocket `client` (after the handshake) and
/// `server` until either ends: each binary (or continuation) frame's
/// payload to the server as it comes, what the server sends to the client
/// as binary frames of up to 16 KiB; pings answered, pongs ignored, the
/// closing handshake done from either side. Frames over `max_frame`
/// bytes, text and any break of the protocol end it with a close frame
/// that says why.
pub async fn bridge<C, S>(client: C, server: S, max_frame: usize) -> Bridged
where
    C: AsyncRead + AsyncWrite,
    S: AsyncRead + AsyncWrite,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut sr, mut sw) = tokio::io::split(server);
    let mut decoder = Decoder::new(max_frame);
    let (mut cbuf, mut sbuf) = (vec![0u8; READ], vec![0u8; READ]);
    let mut out = Vec::with_capacity(READ + 16);
    let (mut to_server, mut to_client) = (0u64, 0u64);
    let end = 'pump: loop {
        tokio::select! {
            r = cr.read(&mut cbuf) => {
                match r {
                    Ok(0) => break End::ClientGone,
                    Ok(n) => decoder.feed(&cbuf[..n]),
                    Err(e) => break End::Io("client", e),
                }
                loop {
                    match decoder.next() {
                        Ok(Some(frame)) => match on_frame(frame, &mut cw, &mut sw, &mut out).await {
                            Ok(n) => to_server += n,
                            Err(end) => break 'pump end,
                        },
                        Ok(None) => break,
                        Err(e) => break 'pump close(&mut cw, &mut out, e.close_code(), End::Protocol(e)).await,
                    }
                }
            }
            r = sr.read(&mut sbuf) => match r {
                Ok(0) => {
                    if send(&mut cw, &mut out, Opcode::Close, &close_payload(1000, "")).await.is_ok() {
                        await_close(&mut cr, &mut decoder, &mut cbuf).await;
                    }
                    break End::ServerClosed;
                }
                Ok(n) => match send(&mut cw, &mut out, Opcode::Binary, &sbuf[..n]).await {
                    Ok(()) => to_client += n as u64,
                    Err(end) => break end,
                },
                Err(e) => break close(&mut cw, &mut out, 1011, End::Io("server", e)).await,
            },
        }
    };
    let _ = sw.shutdown().await;
    let _ = tokio::time::timeout(CLOSE_WAIT, cw.shutdown()).await;
    Bridged {
        to_server,
        to_client,
        end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn frame(fin: bool, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, fin, opcode, payload, Some(MASK));
        out
    }

    fn decode_all(bytes: &[u8], max: usize) -> (Vec<Frame>, Option<ProtocolError>) {
        let mut d = Decoder::new(max);
        d.feed(bytes);
        let mut frames = Vec::new();
        loop {
            match d.next() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => return (frames, None),
                Err(e) => return (frames, Some(e)),
            }
        }
    }

    #[test]
    fn the_rfc_example_key_is_accepted_as_the_rfc_says() {
        // RFC 6455 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        let a = handshake(&h, &["binary"]).unwrap();
        assert_eq!(a.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(a.protocol, None);
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat, binary"),
        );
        assert_eq!(handshake(&h, &["binary"]).unwrap().protocol, Some("binary"));
        let r = switching_protocols(&handshake(&h, &["binary"]).unwrap());
        assert_eq!(r.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(r.headers()[header::SEC_WEBSOCKET_PROTOCOL], "binary");
        assert_eq!(
            r.headers()[header::SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(r.headers()[header::UPGRADE], "websocket");
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat"),
        );
        assert!(matches!(
            handshake(&h, &["binary"]),
            Err(HandshakeError::Protocol(_))
        ));
    }

    #[test]
    fn handshakes_without_upgrade_version_13_or_a_good_key_are_refused() {
        let good = || {
            let mut h = HeaderMap::new();
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            h.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            h.insert(
                header::SEC_WEBSOCKET_KEY,
                HeaderValue::from_static("AQIDBAUGBwgJCgsMDQ4PEA=="),
            );
            h
        };
        assert!(handshake(&good(), &[]).is_ok());
        let mut h = good();
        h.remove(header::UPGRADE);
        assert_eq!(handshake(&h, &[]), Err(HandshakeError::NotUpgrade));
        let mut h = good();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        assert_eq!(handshake(&h, &[]), Err(HandshakeError::NotUpgrade));
        let mut h = good();
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(handshake(&h, &[]), Err(HandshakeError::Version("8".into())));
        for key in [
            "",
            "AQIDBAUGBwgJCgsMDQ4P",
            "not base64 at all!!!",
            "AQIDBAUGBwgJCgsMDQ4PEBE=",
        ] {
            let mut h = good();
            h.insert(
                header::SEC_WEBSOCKET_KEY,
                HeaderValue::from_str(key).unwrap(),
            );
            assert_eq!(handshake(&h, &[]), Err(HandshakeError::Key), "{key:?}");
        }
        let mut h = good();
        h.remove(header::SEC_WEBSOCKET_KEY);
        assert_eq!(handshake(&h, &[]), Err(HandshakeError::Key));
    }

    #[test]
    fn masked_frames_of_every_length_form_decode_to_their_payload() {
        for len in [0usize, 1, 125, 126, 127, 0xffff, 0x10000, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let bytes = frame(true, Opcode::Binary, &payload);
            let header = match len {
                0..=125 => 6,
                126..=0xffff => 8,
                _ => 14,
            };
            assert_eq!(bytes.len(), header + len, "{len}");
            // The payload on the wire is masked.
            if len > 4 {
                assert_ne!(&bytes[header..header + 4], &payload[..4]);
            }
            let (frames, err) = decode_all(&bytes, MAX_FRAME);
            assert_eq!(err, None, "{len}");
            assert_eq!(
                frames,
                vec![Frame {
                    fin: true,
                    opcode: Opcode::Binary,
                    payload
                }],
                "{len}"
            );
        }
    }

    #[test]
    fn frames_split_anywhere_decode_the_same() {
        let mut bytes = frame(false, Opcode::Binary, b"hello ");
        bytes.extend(frame(true, Opcode::Ping, b"p"));
        bytes.extend(frame(true, Opcode::Continuation, &[9u8; 300]));
        bytes.extend(frame(true, Opcode::Binary, b""));
        let (whole, err) = decode_all(&bytes, MAX_FRAME);
        assert_eq!(err, None);
        assert_eq!(whole.len(), 4);
        for step in [1, 2, 3, 5, 7, 13, 64] {
            let mut d = Decoder::new(MAX_FRAME);
            let mut got = Vec::new();
            for chunk in bytes.chunks(step) {
                d.feed(chunk);
                while let Some(f) = d.next().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, whole, "fed {step} bytes at a time");
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn fragmented_messages_keep_their_order_and_control_frames_interleave() {
        let mut bytes = frame(false, Opcode::Binary, b"a");
        bytes.extend(frame(false, Opcode::Continuation, b"b"));
        bytes.extend(frame(true, Opcode::Pong, b""));
        bytes.extend(frame(true, Opcode::Continuation, b"c"));
        let (frames, err) = decode_all(&bytes, MAX_FRAME);
        assert_eq!(err, None);
        let ops: Vec<_> = frames.iter().map(|f| (f.opcode, f.fin)).collect();
        assert_eq!(
            ops,
            [
                (Opcode::Binary, false),
                (Opcode::Continuation, false),
                (Opcode::Pong, true),
                (Opcode::Continuation, true)
            ]
        );
        // A continuation with nothing to continue; a new message inside one.
        let (_, err) = decode_all(&frame(true, Opcode::Continuation, b"x"), MAX_FRAME);
        assert_eq!(err, Some(ProtocolError::StrayContinuation));
        let mut bytes = frame(false, Opcode::Binary, b"a");
        bytes.extend(frame(true, Opcode::Binary, b"b"));
        let (frames, err) = decode_all(&bytes, MAX_FRAME);
        assert_eq!(
            (frames.len(), err),
            (1, Some(ProtocolError::UnfinishedMessage))
        );
    }

    #[test]
    fn bad_frames_are_refused_with_their_reason() {
        let unmasked = {
            let mut out = Vec::new();
            encode(&mut out, true, Opcode::Binary, b"hi", None);
            out
        };
        let mut rsv = frame(true, Opcode::Binary, b"hi");
        rsv[0] |= 0x40;
        let mut reserved = frame(true, Opcode::Binary, b"hi");
        reserved[0] = 0x83;
        // 5 in two bytes, 300 in eight.
        let long16 = [0x82, 0xfe, 0, 5, 1, 2, 3, 4];
        let long64 = [0x82, 0xff, 0, 0, 0, 0, 0, 0, 1, 44, 1, 2, 3, 4];
        let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
            (unmasked, ProtocolError::Unmasked),
            (rsv, ProtocolError::ReservedBits),
            (reserved, ProtocolError::ReservedOpcode(3)),
            (long16.to_vec(), ProtocolError::LongLength(5)),
            (long64.to_vec(), ProtocolError::LongLength(300)),
            (
                frame(false, Opcode::Ping, b""),
                ProtocolError::FragmentedControl,
            ),
            (
                frame(true, Opcode::Ping, &[0; 126]),
                ProtocolError::LongControl(126),
            ),
            (
                frame(true, Opcode::Close, &[3]),
                ProtocolError::BadClose("one byte"),
            ),
            (
                frame(true, Opcode::Close, &close_payload(1005, "")),
                ProtocolError::BadClose("a code no peer may send"),
            ),
            (
                frame(true, Opcode::Close, &[0x03, 0xe8, 0xff, 0xfe]),
                ProtocolError::BadClose("a reason that is not UTF-8"),
            ),
        ];
        for (bytes, want) in cases {
            let (frames, err) = decode_all(&bytes, MAX_FRAME);
            assert!(frames.is_empty());
            assert_eq!(err.as_ref(), Some(&want), "{bytes:02x?}");
            assert_eq!(want.close_code(), 1002);
        }
    }

    #[test]
    fn an_oversize_frame_is_refused_from_its_header_alone() {
        let bytes = frame(true, Opcode::Binary, &[0u8; 2000]);
        let mut d = Decoder::new(1000);
        // Only the header (and mask) has arrived.
        d.feed(&bytes[..8]);
        let e = d.next().unwrap_err();
        assert_eq!(
            e,
            ProtocolError::TooBig {
                len: 2000,
                max: 1000
            }
        );
        assert_eq!(e.close_code(), 1009);
        // And it stays refused.
        d.feed(&bytes[8..]);
        assert_eq!(d.next().unwrap_err(), e);
        // 2^63 and more: refused, no overflow.
        let huge = [0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert!(matches!(
            decode_all(&huge, MAX_FRAME).1,
            Some(ProtocolError::TooBig { .. })
        ));
        // Exactly at the limit passes.
        let (frames, err) = decode_all(&frame(true, Opcode::Binary, &[1; 1000]), 1000);
        assert_eq!((frames.len(), err), (1, None));
    }

    #[test]
    fn close_frames_carry_their_code_and_reason() {
        let (frames, err) = decode_all(
            &frame(true, Opcode::Close, &close_payload(1001, "bye")),
            125,
        );
        assert_eq!(err, None);
        assert_eq!(frames[0].close_code(), Some(1001));
        assert_eq!(&frames[0].payload[2..], b"bye");
        let (frames, _) = decode_all(&frame(true, Opcode::Close, b""), 125);
        assert_eq!(frames[0].close_code(), None);
        for code in [1000, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert!(sendable_close_code(code), "{code}");
        }
        for code in [0, 999, 1004, 1005, 1006, 1015, 2000, 2999, 5000] {
            assert!(!sendable_close_code(code), "{code}");
        }
    }

    /// A websocket client (masked frames) on one end of a bridge, a TCP
    /// server (echoing with a prefix) on the other.
    async fn bridged(
        max: usize,
    ) -> (
        Client,
        tokio::task::JoinHandle<Bridged>,
        tokio::task::JoinHandle<()>,
    ) {
        let (client, near) = duplex(1 << 20);
        let (far, mut server) = duplex(1 << 20);
        let pump = tokio::spawn(bridge(near, far, max));
        let echo = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            loop {
                match server.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let mut reply = b"echo:".to_vec();
                        reply.extend_from_slice(&buf[..n]);
                        if reply.ends_with(b"quit") {
                            return;
                        }
                        if server.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        (
            Client {
                io: client,
                buf: Vec::new(),
            },
            pump,
            echo,
        )
    }

    /// The client's end: what it read and has not parsed yet.
    struct Client {
        io: tokio::io::DuplexStream,
        buf: Vec<u8>,
    }

    impl Client {
        /// Server frames (unmasked, whole) until one of `want` arrives.
        async fn read_until(&mut self, want: Opcode) -> Vec<(Opcode, Vec<u8>)> {
            let mut got = Vec::new();
            loop {
                while self.buf.len() >= 2 {
                    let b = &self.buf;
                    assert_eq!(b[1] & 0x80, 0, "a server frame is masked");
                    assert_eq!(b[0] & 0x80, 0x80, "a server frame is whole");
                    let (len, at) = match b[1] & 0x7f {
                        126 if b.len() < 4 => break,
                        126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                        127 => unreachable!("frames of 16 KiB at most"),
                        n => (n as usize, 2),
                    };
                    if b.len() < at + len {
                        break;
                    }
                    let op = Opcode::from_bits(b[0] & 0x0f).unwrap();
                    got.push((op, b[at..at + len].to_vec()));
                    self.buf.drain(..at + len);
                    if op == want {
                        return got;
                    }
                }
                let mut chunk = [0u8; 4096];
                let n = tokio::time::timeout(Duration::from_secs(5), self.io.read(&mut chunk))
                    .await
                    .unwrap_or_else(|_| panic!("the bridge sent no {want:?}: {got:?}"))
                    .unwrap();
                assert!(n > 0, "the bridge closed before {want:?}: {got:?}");
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }

        async fn send(&mut self, bytes: &[u8]) {
            self.io.write_all(bytes).await.unwrap();
        }
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_pings_are_answered_and_a_close_is_echoed() {
        let (mut c, pump, _echo) = bridged(MAX_FRAME).await;
        let mut out = frame(false, Opcode::Binary, b"he");
        out.extend(frame(true, Opcode::Ping, b"are you there"));
        out.extend(frame(true, Opcode::Continuation, b"llo"));
        c.send(&out).await;
        let got = c.read_until(Opcode::Pong).await;
        assert_eq!(got.last().unwrap().1, b"are you there");
        // What the server echoes, in frames however its reads fell.
        let mut text: Vec<u8> = got
            .iter()
            .filter(|(op, _)| *op == Opcode::Binary)
            .flat_map(|(_, p)| p.clone())
            .collect();
        while !String::from_utf8_lossy(&text).ends_with("llo") {
            for (op, p) in c.read_until(Opcode::Binary).await {
                assert_eq!(op, Opcode::Binary);
                text.extend(p);
            }
        }
        let text = String::from_utf8(text).unwrap();
        assert!(text == "echo:hello" || text == "echo:heecho:llo", "{text}");
        c.send(&frame(true, Opcode::Close, &close_payload(1000, "done")))
            .await;
        let got = c.read_until(Opcode::Close).await;
        assert_eq!(got.last().unwrap().1, close_payload(1000, ""));
        let b = pump.await.unwrap();
        assert!(
            matches!(b.end, End::ClientClosed(Some(1000))),
            "{:?}",
            b.end
        );
        assert_eq!(b.to_server, 5);
        assert_eq!(b.to_client, text.len() as u64);
        // The bridge shut its side: the client reads the end.
        let mut rest = Vec::new();
        c.io.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:02x?}");
    }

    #[tokio::test]
    async fn a_protocol_break_closes_with_its_code() {
        let unmasked = {
            let mut out = Vec::new();
            encode(&mut out, true, Opcode::Binary, b"unmasked", None);
            out
        };
        for (bytes, code) in [
            (unmasked, 1002u16),
            (frame(true, Opcode::Binary, &[0u8; 600]), 1009),
            (frame(true, Opcode::Text, b"hello"), 1003),
        ] {
            let (mut c, pump, _echo) = bridged(512).await;
            c.send(&bytes).await;
            let got = c.read_until(Opcode::Close).await;
            assert_eq!(got.last().unwrap().1[..2], code.to_be_bytes());
            let b = pump.await.unwrap();
            assert_eq!(b.to_server, 0, "{:?}", b.end);
            match code {
                1003 => assert!(matches!(b.end, End::Text)),
                _ => assert!(
                    matches!(b.end, End::Protocol(ref e) if e.close_code() == code),
                    "{:?}",
                    b.end
                ),
            }
        }
    }

    #[tokio::test]
    async fn the_server_closing_sends_a_normal_close() {
        let (mut c, pump, echo) = bridged(MAX_FRAME).await;
        c.send(&frame(true, Opcode::Binary, b"quit")).await;
        echo.await.unwrap();
        let got = c.read_until(Opcode::Close).await;
        assert_eq!(got.last().unwrap().1, close_payload(1000, ""));
        c.send(&frame(true, Opcode::Close, &close_payload(1000, "")))
            .await;
        let b = pump.await.unwrap();
        assert!(matches!(b.end, End::ServerClosed), "{:?}", b.end);
    }

    #[tokio::test]
    async fn a_client_that_goes_away_ends_the_bridge() {
        let (c, pump, _echo) = bridged(MAX_FRAME).await;
        drop(c);
        let b = pump.await.unwrap();
        assert!(
            matches!(b.end, End::ClientGone | End::Io(..)),
            "{:?}",
            b.end
        );
    }

    #[test]
    fn the_fuzz_entry_holds_on_random_and_mutated_frames() {
        use proptest::prelude::*;
        crate::fuzzing::websocket(&crate::fuzzing::sample_websocket());
        let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
            cases: 2000,
            failure_persistence: None,
            ..Default::default()
        });
        runner
            .run(&proptest::collection::vec(any::<u8>(), 0..400), |data| {
                crate::fuzzing::websocket(&data);
                Ok(())
            })
            .unwrap();
        runner
            .run(
                &proptest::collection::vec((any::<usize>(), any::<u8>(), 0..3u8), 1..8),
                |edits| {
                    let mut data = crate::fuzzing::sample_websocket();
                    for (at, byte, op) in edits {
                        let i = if data.is_empty() { 0 } else { at % data.len() };
                        match op {
                            0 if !data.is_empty() => data[i] = byte,
                            1 => data.insert(i, byte),
                            _ if !data.is_empty() => {
                                data.remove(i);
                            }
                            _ => data.push(byte),
                        }
                    }
                    crate::fuzzing::websocket(&data);
                    Ok(())
                },
            )
            .unwrap();
        // The kept corpus; `DEORCH_BLESS=1` writes the seed into it.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/websocket");
        if std::env::var_os("DEORCH_BLESS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("seed"), crate::fuzzing::sample_websocket()).unwrap();
        }
        let mut n = 0;
        for f in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            crate::fuzzing::websocket(&std::fs::read(f.path()).unwrap());
            n += 1;
        }
        assert!(n > 0, "no corpus under {}", dir.display());
    }
}
