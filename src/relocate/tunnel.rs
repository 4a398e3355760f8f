//! The authenticated, encrypted stream between two nodes that carries a
//! relocation's NBD and migration streams (and, later, zfs send): Noise
//! XX over TCP with the node's gossip key ([`ChannelKey`]: its static
//! key bound to its address by a signature), the peer checked against the
//! cluster's admitted nodes, then length-prefixed encrypted frames.
//!
//! ```text
//! sender's QEMU ──TCP 127.0.0.1──► sender node ══tunnel══► receiver node ──TCP 127.0.0.1──► receiver's QEMU
//! ```
//!
//! QEMU's streams never leave a node in the clear, and a node that is not
//! admitted (or not the peer the relocation named) gets nothing: the
//! handshake fails before any byte of the stream. The first frame after
//! the handshake is the opener's header (which stream it wants); the
//! acceptor decides whether to serve it.
//!
//! Frames: a 2-byte big-endian length, then a Noise transport message
//! (at most 65,535 bytes: 65,519 of payload and a 16-byte tag). TCP
//! keeps them in order, so Noise's counter nonces suffice.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a tunnel runs over: a TCP stream between nodes (or any byte
/// stream: the fuzz target uses an in-memory one).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

use crate::gossip::channel::{check_binding, ChannelKey};
use crate::gossip::{NodeId, Verifier};

/// The tunnels' Noise protocol: gossip's handshake with AES-256-GCM,
/// which AES-NI and carry-less multiply make the faster cipher for
/// bulk streams on the x86 CPUs nodes run on.
pub const TUNNEL_PATTERN: &str = "Noise_XX_25519_AESGCM_BLAKE2s";

/// Largest payload in one frame.
const CHUNK: usize = 65_535 - 16;

/// The largest message [`Tunnel::send`] takes.
pub const MAX_MESSAGE: usize = CHUNK;

/// A handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// This node's side of tunnels: its key, its cluster, who is admitted.
#[derive(Clone)]
pub struct TunnelKey {
    /// The node's channel key (shared with gossip).
    pub key: Arc<ChannelKey>,
    /// The cluster's name (in the prologue and the binding).
    pub cluster: String,
    /// Who is admitted.
    pub verifier: Arc<dyn Verifier>,
}

/// Why a tunnel failed.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The socket failed.
    #[error("tunnel: {0}")]
    Io(#[from] std::io::Error),
    /// The peer is not who it must be, or the handshake is malformed.
    #[error("tunnel refused: {0}")]
    Refused(String),
    /// The handshake took too long.
    #[error("tunnel: no handshake within {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
}

/// A byte rate shared by the tunnels of a node (token bucket; bursts up
/// to a tenth of a second's worth).
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_s: u64,
    state: std::sync::Mutex<(f64, tokio::time::Instant)>,
}

impl RateLimit {
    /// At most `bytes_per_s` (at least 64 KiB/s, so a frame always fits
    /// in a burst).
    pub fn new(bytes_per_s: u64) -> RateLimit {
        let bytes_per_s = bytes_per_s.max(64 << 10);
        RateLimit {
            bytes_per_s,
            state: std::sync::Mutex::new((0.0, tokio::time::Instant::now())),
        }
    }

    /// Wait until `n` bytes may be sent.
    pub async fn take(&self, n: u64) {
        let wait = {
            let mut st = self.state.lock().expect("not poisoned");
            let now = tokio::time::Instant::now();
            let rate = self.bytes_per_s as f64;
            let burst = (rate / 10.0).max(65_536.0);
            let tokens = (st.0 + now.duration_since(st.1).as_secs_f64() * rate).min(burst);
            st.0 = tokens - n as f64;
            st.1 = now;
            if st.0 >= 0.0 {
                None
            } else {
                Some(Duration::from_secs_f64(-st.0 / rate))
            }
        };
        if let Some(w) = wait {
            tokio::time::sleep(w).await;
        }
    }
}

/// An established tunnel.
pub struct Tunnel<S = TcpStream> {
    stream: S,
    transport: snow::TransportState,
    /// The node at the other end.
    pub peer: NodeId,
}

fn builder<'a>(key: &'a TunnelKey, prologue: &'a [u8]) -> snow::Builder<'a> {
    snow::Builder::new(TUNNEL_PATTERN.parse().expect("a valid pattern"))
        .local_private_key(key.key.noise_private())
        .expect("set once")
        .prologue(prologue)
        .expect("set once")
}

fn prologue(cluster: &str) -> Vec<u8> {
    format!("deorch-tunnel/v1 cluster={cluster}").into_bytes()
}

async fn write_frame<S: AsyncWrite + Unpin>(s: &mut S, b: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(2 + b.len());
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
    s.write_all(&out).await
}

async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut b = vec![0; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut b).await?;
    Ok(Some(b))
}

fn refused(e: impl std::fmt::Display) -> TunnelError {
    TunnelError::Refused(e.to_string())
}

/// Read the handshake message carrying the peer's key binding: the
/// admitted node it proves to be.
async fn read_peer<S: Stream>(
    stream: &mut S,
    hs: &mut snow::HandshakeState,
    key: &TunnelKey,
) -> Result<NodeId, TunnelError> {
    let msg = read_frame(stream)
        .await?
        .ok_or_else(|| refused("closed during the handshake"))?;
    let mut payload = vec![0u8; 65_535];
    let n = hs.read_message(&msg, &mut payload).map_err(refused)?;
    check_binding(
        &key.cluster,
        &*key.verifier,
        &payload[..n],
        hs.get_remote_static(),
    )
    .map_err(TunnelError::Refused)
}

/// `f` within [`HANDSHAKE_TIMEOUT`].
async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, TunnelError>>,
) -> Result<T, TunnelError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, f)
        .await
        .map_err(|_| TunnelError::Timeout)?
}

/// Open a tunnel over `stream` to the node `expect` and ask it for
/// `header`.
pub async fn connect<S: Stream>(
    mut stream: S,
    key: &TunnelKey,
    expect: &NodeId,
    header: &[u8],
) -> Result<Tunnel<S>, TunnelError> {
    let p = prologue(&key.cluster);
    let handshake = async {
        let mut hs = builder(key, &p).build_initiator().map_err(refused)?;
        let mut buf = vec![0u8; 65_535];
        let n = hs.write_message(&[], &mut buf).map_err(refused)?;
        write_frame(&mut stream, &buf[..n]).await?;
        let peer = read_peer(&mut stream, &mut hs, key).await?;
        if peer != *expect {
            return Err(refused(format!("the peer is {peer}, not {expect}")));
        }
        let n = hs
            .write_message(key.key.binding(), &mut buf)
            .map_err(refused)?;
        write_frame(&mut stream, &buf[..n]).await?;
        Ok((hs.into_transport_mode().map_err(refused)?, peer))
    };
    let (transport, peer) = timed(handshake).await?;
    let mut t = Tunnel::new(stream, transport, peer);
    t.send(header).await?;
    Ok(t)
}

/// Accept a tunnel over `stream`: the admitted node that opened it, what
/// it asks for, and the tunnel.
pub async fn accept<S: Stream>(
    mut stream: S,
    key: &TunnelKey,
) -> Result<(Tunnel<S>, Vec<u8>), TunnelError> {
    let p = prologue(&key.cluster);
    let handshake = async {
        let mut hs = builder(key, &p).build_responder().map_err(refused)?;
        let mut buf = vec![0u8; 65_535];
        let msg = read_frame(&mut stream)
            .await?
            .ok_or_else(|| refused("closed during the handshake"))?;
        hs.read_message(&msg, &mut buf).map_err(refused)?;
        let n = hs
            .write_message(key.key.binding(), &mut buf)
            .map_err(refused)?;
        write_frame(&mut stream, &buf[..n]).await?;
        let peer = read_peer(&mut stream, &mut hs, key).await?;
        Ok((hs.into_transport_mode().map_err(refused)?, peer))
    };
    let (transport, peer) = timed(handshake).await?;
    let mut t = Tunnel::new(stream, transport, peer);
    let header = timed(t.recv())
        .await?
        .ok_or_else(|| refused("closed before its header"))?;
    Ok((t, header))
}

impl<S: Stream> Tunnel<S> {
    fn new(stream: S, transport: snow::TransportState, peer: NodeId) -> Self {
        Tunnel {
            stream,
            transport,
            peer,
        }
    }

    /// Send one message, in one frame (at most 64 KiB less the tag).
    pub async fn send(&mut self, data: &[u8]) -> Result<(), TunnelError> {
        let sealed = seal(&mut self.transport, data)?;
        write_frame(&mut self.stream, &sealed).await?;
        Ok(())
    }

    /// Receive one frame's message (`None`: the peer closed).
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, TunnelError> {
        match read_frame(&mut self.stream).await? {
            Some(msg) => open(&mut self.transport, &msg).map(Some),
            None => Ok(None),
        }
    }

    /// Messages both ways at once: a receiving and a sending half (each
    /// can wait in its own task; [`Tunnel::recv`] is not cancel-safe, so
    /// a loop that also sends cannot `select!` on it).
    pub fn split(self) -> (TunnelReceiver<S>, TunnelSender<S>) {
        let (r, w) = tokio::io::split(self.stream);
        let transport = Arc::new(std::sync::Mutex::new(self.transport));
        (
            TunnelReceiver {
                half: r,
                transport: transport.clone(),
                peer: self.peer,
            },
            TunnelSender { half: w, transport },
        )
    }

    /// Carry `plain` (a local TCP stream, e.g. QEMU's) through the tunnel
    /// both ways until both sides close. Returns the bytes that crossed
    /// the network, both ways (frames included).
    pub async fn splice(self, plain: TcpStream) -> Result<u64, TunnelError> {
        self.splice_limited(plain, None).await
    }

    /// [`Tunnel::splice`], with what this end sends held to `limit` (a
    /// node's cap on relocation streams, shared by all its tunnels).
    pub async fn splice_limited(
        self,
        plain: TcpStream,
        limit: Option<Arc<RateLimit>>,
    ) -> Result<u64, TunnelError> {
        let Tunnel {
            stream, transport, ..
        } = self;
        let transport = Arc::new(std::sync::Mutex::new(transport));
        let (mut nr, mut nw) = tokio::io::split(stream);
        let (mut pr, mut pw) = plain.into_split();
        let t1 = transport.clone();
        let out = async move {
            let mut plain_buf = vec![0u8; CHUNK];
            // The frame is sealed in place after its 2-byte length.
            let mut frame = vec![0u8; 2 + 65_535];
            let mut sent = 0u64;
            loop {
                let n = pr.read(&mut plain_buf).await?;
                if n == 0 {
                    nw.shutdown().await?;
                    return Ok::<u64, TunnelError>(sent);
                }
                let m = t1
                    .lock()
                    .expect("not poisoned")
                    .write_message(&plain_buf[..n], &mut frame[2..])
                    .map_err(refused)?;
                frame[..2].copy_from_slice(&(m as u16).to_be_bytes());
                if let Some(l) = &limit {
                    l.take(2 + m as u64).await;
                }
                nw.write_all(&frame[..2 + m]).await?;
                sent += 2 + m as u64;
            }
        };
        let back = async move {
            let mut dec = vec![0u8; 65_535];
            let mut msg = vec![0u8; 65_535];
            let mut got = 0u64;
            loop {
                let mut len = [0u8; 2];
                match nr.read_exact(&mut len).await {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        pw.shutdown().await?;
                        return Ok::<u64, TunnelError>(got);
                    }
                    Err(e) => return Err(e.into()),
                }
                let msg = &mut msg[..u16::from_be_bytes(len) as usize];
                nr.read_exact(msg).await?;
                got += 2 + msg.len() as u64;
                let n = transport
                    .lock()
                    .expect("not poisoned")
                    .read_message(msg, &mut dec)
                    .map_err(refused)?;
                pw.write_all(&dec[..n]).await?;
            }
        };
        // The first error ends both directions (dropping closes them).
        let (a, b) = tokio::try_join!(out, back)?;
        Ok(a + b)
    }
}

/// Seal one message (at most [`MAX_MESSAGE`] bytes) into a frame's body.
fn seal(t: &mut snow::TransportState, data: &[u8]) -> Result<Vec<u8>, TunnelError> {
    // One message is one frame: what `recv` returns, and what bounds
    // what a peer can make this node hold.
    if data.len() > CHUNK {
        return Err(refused(format!(
            "a message of {} bytes (at most {CHUNK} in one frame)",
            data.len()
        )));
    }
    let mut buf = vec![0u8; data.len() + 16];
    let n = t.write_message(data, &mut buf).map_err(refused)?;
    buf.truncate(n);
    Ok(buf)
}

/// Open a frame's body.
fn open(t: &mut snow::TransportState, msg: &[u8]) -> Result<Vec<u8>, TunnelError> {
    let mut buf = vec![0u8; msg.len()];
    let n = t.read_message(msg, &mut buf).map_err(refused)?;
    buf.truncate(n);
    Ok(buf)
}

/// The receiving half of a [`Tunnel::split`].
pub struct TunnelReceiver<S = TcpStream> {
    half: tokio::io::ReadHalf<S>,
    transport: Arc<std::sync::Mutex<snow::TransportState>>,
    /// The node at the other end.
    pub peer: NodeId,
}

impl<S: Stream> TunnelReceiver<S> {
    /// Receive one frame's message (`None`: the peer closed).
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, TunnelError> {
        match read_frame(&mut self.half).await? {
            Some(msg) => open(&mut self.transport.lock().expect("not poisoned"), &msg).map(Some),
            None => Ok(None),
        }
    }
}

/// The sending half of a [`Tunnel::split`].
pub struct TunnelSender<S = TcpStream> {
    half: tokio::io::WriteHalf<S>,
    transport: Arc<std::sync::Mutex<snow::TransportState>>,
}

impl<S: Stream> TunnelSender<S> {
    /// Send one message, in one frame (at most [`MAX_MESSAGE`] bytes).
    pub async fn send(&mut self, data: &[u8]) -> Result<(), TunnelError> {
        let sealed = seal(&mut self.transport.lock().expect("not poisoned"), data)?;
        write_frame(&mut self.half, &sealed).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::trust::Members;
    use crate::gossip::verify::{AcceptAll, MembersOnly};
    use crate::identity::{AddressType, Network, PrivateKey};
    use std::collections::BTreeMap;
    use tokio::net::TcpListener;

    fn key(k: &PrivateKey, members: &Arc<Members>) -> TunnelKey {
        TunnelKey {
            key: Arc::new(ChannelKey::new(k, "C")),
            cluster: "C".into(),
            verifier: Arc::new(MembersOnly {
                members: members.clone(),
                documents: AcceptAll,
            }),
        }
    }

    fn id(k: &PrivateKey) -> NodeId {
        NodeId(k.address(AddressType::P2wpkh).unwrap().to_string())
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_holds_the_bytes_sent_to_its_rate() {
        // Virtual time: 10 MiB at 4 MiB/s take 2.5 s less the first burst.
        let l = RateLimit::new(4 << 20);
        let t0 = tokio::time::Instant::now();
        for _ in 0..160 {
            l.take(64 << 10).await;
        }
        let took = t0.elapsed().as_secs_f64();
        assert!(
            (2.3..=2.6).contains(&took),
            "{took} s for 10 MiB at 4 MiB/s"
        );
    }

    #[tokio::test]
    async fn admitted_nodes_carry_a_stream_and_others_get_nothing() {
        let (ka, kb, kc) = (
            PrivateKey::generate(Network::Mainnet),
            PrivateKey::generate(Network::Mainnet),
            PrivateKey::generate(Network::Mainnet),
        );
        let members = Arc::new(Members::new("C"));
        members.set(&BTreeMap::from([
            (id(&ka).0, "a".to_string()),
            (id(&kb).0, "b".to_string()),
        ]));
        let (a, b, c) = (key(&ka, &members), key(&kb, &members), key(&kc, &members));
        // b serves one tunnel: echoes the stream back through a local
        // "QEMU" (an echo server).
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_at = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = l.local_addr().unwrap();
        let bk = b.clone();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..3 {
                let (s, _) = l.accept().await.unwrap();
                match accept(s, &bk).await {
                    Ok((t, header)) => {
                        seen.push(Ok((t.peer.clone(), header)));
                        let plain = TcpStream::connect(echo_at).await.unwrap();
                        tokio::spawn(t.splice(plain));
                    }
                    Err(e) => seen.push(Err(e.to_string())),
                }
            }
            seen
        });
        // a → b: 1 MiB through and back.
        let t = connect(TcpStream::connect(at).await.unwrap(), &a, &id(&kb), b"nbd")
            .await
            .unwrap();
        let local = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local_at = local.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(local_at).await.unwrap();
            let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
            let (mut r, mut w) = s.split();
            let send = async {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut back = Vec::new();
            let recv = async {
                r.read_to_end(&mut back).await.unwrap();
            };
            tokio::join!(send, recv);
            assert!(back == data, "the stream came back different");
        });
        let (plain, _) = local.accept().await.unwrap();
        // a's end is capped at 2 MiB/s: the 1 MiB it sends takes at least
        // 0.4 s (after a 0.2 MiB burst).
        let t0 = std::time::Instant::now();
        let wire = t
            .splice_limited(plain, Some(Arc::new(RateLimit::new(2 << 20))))
            .await
            .unwrap();
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(380),
            "1 MiB at 2 MiB/s in {took:?}"
        );
        client.await.unwrap();
        assert!(wire >= 2 << 20, "{wire} bytes on the wire for 2 MiB");
        assert!(
            wire < (2 << 20) + 4096,
            "{wire} bytes on the wire for 2 MiB"
        );
        // c is not admitted: b refuses it at the handshake's last message
        // (c authenticates last in XX), so c never gets a byte.
        let r = connect(TcpStream::connect(at).await.unwrap(), &c, &id(&kb), b"nbd").await;
        if let Ok(mut t) = r {
            let got = t.recv().await;
            assert!(
                matches!(got, Ok(None) | Err(_)),
                "a node that is not admitted got data: {got:?}"
            );
        }
        // a expects c at b's address: refused by a.
        let e = connect(TcpStream::connect(at).await.unwrap(), &a, &id(&kc), b"nbd").await;
        assert!(
            matches!(&e, Err(TunnelError::Refused(m)) if m.contains("not")),
            "{:?}",
            e.as_ref().err()
        );
        let seen = server.await.unwrap();
        assert_eq!(seen[0].as_ref().unwrap(), &(id(&ka), b"nbd".to_vec()));
        assert!(seen[1].is_err(), "{:?}", seen[1]);
    }
}
