//! Moving datagrams: the [`Transport`] trait, the UDP implementation, and
//! [`run_udp`], the loop that drives a [`GossipNode`] over it (the node
//! daemon's entry point).

use std::io;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::channel::Channel;
use super::node::{Event, GossipNode, Output};
use super::wire::{Document, Millis, NodeAddr, NodeStatus};

/// Best-effort datagrams to and from peers. Sending may silently lose the
/// datagram (the protocol copes); errors are local failures.
pub trait Transport {
    /// Where peers reach this node.
    fn local_addr(&self) -> NodeAddr;
    /// Send one datagram.
    fn send_to(&mut self, to: NodeAddr, bytes: &[u8]) -> io::Result<()>;
    /// One received datagram, if any is waiting (never blocks).
    fn try_recv(&mut self) -> io::Result<Option<(NodeAddr, Vec<u8>)>>;
}

/// Largest datagram accepted.
pub const MAX_DATAGRAM: usize = 65_507;

/// UDP on a tokio socket.
pub struct UdpTransport {
    socket: UdpSocket,
    addr: NodeAddr,
    buf: Vec<u8>,
}

impl UdpTransport {
    /// Bind `addr` (port 0 picks a free port).
    pub async fn bind(addr: NodeAddr) -> io::Result<Self> {
        let socket = UdpSocket::bind(addr).await?;
        let addr = socket.local_addr()?;
        Ok(UdpTransport {
            socket,
            addr,
            buf: vec![0; MAX_DATAGRAM],
        })
    }

    /// Wait until a datagram may be waiting.
    pub async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }
}

impl Transport for UdpTransport {
    fn local_addr(&self) -> NodeAddr {
        self.addr
    }

    fn send_to(&mut self, to: NodeAddr, bytes: &[u8]) -> io::Result<()> {
        match self.socket.try_send_to(bytes, to) {
            Ok(_) => Ok(()),
            // A full socket buffer is a lost datagram, like one lost on the wire.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn try_recv(&mut self) -> io::Result<Option<(NodeAddr, Vec<u8>)>> {
        match self.socket.try_recv_from(&mut self.buf) {
            Ok((n, from)) => Ok(Some((from, self.buf[..n].to_vec()))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            // ICMP port unreachable from an earlier send shows up here on Linux.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// What the owner of a running node asks of it.
#[derive(Debug, Clone)]
pub enum Command {
    /// Spread a local document.
    Publish(Document),
    /// Spread this node's new status.
    SetStatus(Box<NodeStatus>),
    /// Join through a member.
    Join(NodeAddr),
}

/// Unix time in ms.
pub fn unix_ms() -> Millis {
    crate::clock::now_ms() as Millis
}

/// Drive `node` over `transport` until `commands` closes: ticks every
/// `tick_ms`, datagrams as they come, events to `events`; through
/// `channel` when given (authenticated and encrypted, see
/// [`super::channel`]).
pub async fn run_udp(
    mut node: GossipNode,
    mut transport: UdpTransport,
    tick_ms: u64,
    mut channel: Option<Channel>,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::UnboundedSender<Event>,
) -> io::Result<()> {
    let mut interval = tokio::time::interval(Duration::from_millis(tick_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut wire = Vec::new();
    loop {
        tokio::select! {
            _ = interval.tick() => {
                node.handle_tick(unix_ms());
                if let Some(ch) = &mut channel {
                    ch.tick(unix_ms(), &mut wire);
                }
            }
            r = transport.readable() => {
                r?;
                while let Some((from, bytes)) = transport.try_recv()? {
                    match &mut channel {
                        Some(ch) => {
                            if let Some((peer, plain)) = ch.open(unix_ms(), from, &bytes, &mut wire) {
                                node.handle_authenticated(unix_ms(), from, &peer, &plain);
                            }
                        }
                        None => node.handle_datagram(unix_ms(), from, &bytes),
                    }
                }
            }
            c = commands.recv() => match c {
                None => return Ok(()),
                Some(Command::Publish(d)) => {
                    if let Err(reason) = node.publish(unix_ms(), d) {
                        tracing::warn!(%reason, "local document refused by the verifier");
                    }
                }
                Some(Command::SetStatus(s)) => node.set_status(unix_ms(), *s),
                Some(Command::Join(a)) => node.join(a),
            },
        }
        while let Some(o) = node.poll() {
            match o {
                Output::Send(to, bytes) => match &mut channel {
                    Some(ch) => ch.seal(unix_ms(), to, &bytes, &mut wire),
                    None => wire.push((to, bytes)),
                },
                Output::Event(e) => {
                    let _ = events.send(e);
                }
            }
        }
        for (to, bytes) in wire.drain(..) {
            if let Err(e) = transport.send_to(to, &bytes) {
                tracing::debug!(%to, error = %e, "gossip send failed");
            }
        }
    }
}
