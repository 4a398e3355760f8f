//! The node-to-node channel: gossip datagrams authenticated and encrypted
//! with per-peer session keys, as a sans-IO layer between [`GossipNode`]
//! and the socket (or the simulated network).
//!
//! Each pair of nodes runs a Noise `XX` handshake (X25519, ChaCha20-Poly1305,
//! BLAKE2s; the `snow` crate) whose prologue names the cluster. A node's
//! Noise static key is made fresh at every start and bound to the node's
//! address by one signature of its secp256k1 node key
//! ([`crate::identity::node_sig`], domain [`BIND_DOMAIN`]), sent encrypted
//! inside the handshake; each side checks the other's binding and that
//! the address is an admitted member ([`Verifier::admits`]) before the
//! session exists. After that, a datagram costs one AEAD (29 bytes more),
//! not a signature.
//!
//! ```text
//! initiator                                   responder
//! HS1  [1][i]        -> e                     ─►
//!                                             ◄─  HS2 [2][i][r] <- e, ee, s, es + binding(r)
//! HS3  [3][r]        -> s, se + binding(i)    ─►
//! DATA [4][receiver's index][nonce u64][AEAD(datagram)]  both ways
//! ```
//!
//! Datagrams to a peer without a session wait (16 at most) while the
//! handshake runs; it is sent again after `retry_ms` and given up after
//! `attempts`. Received nonces pass a 64-wide replay window (as in
//! WireGuard). A datagram for a session this node does not know (it
//! restarted, or forgot an idle session) starts a handshake back, so a
//! restarted peer is reachable again after one round trip. Refusals (not
//! admitted, bad binding, failed decryption) are counted per sender for
//! the caller to log once per interval.
//!
//! [`GossipNode`]: super::GossipNode

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::rng::Rng;
use super::verify::Verifier;
use super::wire::{Millis, NodeAddr, NodeId};
use crate::identity::{node_sig, AddressType, PrivateKey};

/// The Noise protocol name.
pub const PATTERN: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// Signature domain of the binding of a Noise static key to a node.
pub const BIND_DOMAIN: &str = "deorch-noise-static/v1";

const HS1: u8 = 1;
const HS2: u8 = 2;
const HS3: u8 = 3;
const DATA: u8 = 4;
/// Bytes a DATA frame adds to a datagram: type, index, nonce, tag.
pub const OVERHEAD: usize = 1 + 4 + 8 + 16;

/// A node's identity on the channel for one run.
pub struct ChannelKey {
    id: NodeId,
    noise_private: Vec<u8>,
    binding: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Binding {
    address: String,
    sig: Vec<u8>,
}

impl ChannelKey {
    /// A fresh Noise static key, bound to `key`'s P2WPKH address for
    /// `cluster`.
    pub fn new(key: &PrivateKey, cluster: &str) -> ChannelKey {
        let address = key
            .address(AddressType::P2wpkh)
            .expect("node keys are compressed")
            .to_string();
        let kp = snow::Builder::new(PATTERN.parse().expect("a valid pattern"))
            .generate_keypair()
            .expect("the OS gives randomness");
        let sig = node_sig::sign(key, BIND_DOMAIN, cluster, &kp.public);
        let binding = postcard::to_allocvec(&Binding {
            address: address.clone(),
            sig,
        })
        .expect("in-memory encoding cannot fail");
        ChannelKey {
            id: NodeId(address),
            noise_private: kp.private,
            binding,
        }
    }

    /// The node this key speaks for.
    pub fn id(&self) -> &NodeId {
        &self.id
    }
}

impl ChannelKey {
    /// The Noise static private key (for other Noise sessions of this
    /// node, e.g. `relocate::tunnel`).
    pub(crate) fn noise_private(&self) -> &[u8] {
        &self.noise_private
    }

    /// The signed binding of the static key to the node, sent in the
    /// handshake.
    pub(crate) fn binding(&self) -> &[u8] {
        &self.binding
    }
}

/// Check a peer's handshake payload: a binding of its Noise static key
/// `remote_static` to a node address, signed by that node's key for
/// `cluster`, and that node admitted by `verifier`. The node, or why not.
pub fn check_binding(
    cluster: &str,
    verifier: &dyn Verifier,
    payload: &[u8],
    remote_static: Option<&[u8]>,
) -> Result<NodeId, String> {
    let b: Binding =
        postcard::from_bytes(payload).map_err(|_| "malformed key binding".to_string())?;
    let s = remote_static.ok_or("no static key")?;
    if !node_sig::verify_str(&b.address, BIND_DOMAIN, cluster, s, &b.sig) {
        return Err(format!(
            "the channel key is not bound to {} by its signature",
            crate::identity::session::bounded(&b.address)
        ));
    }
    let id = NodeId(b.address);
    if !verifier.admits(&id) {
        return Err(format!("{id} is not an admitted node of this cluster"));
    }
    Ok(id)
}

/// Timings and bounds.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// Send a handshake again after this long without an answer.
    pub retry_ms: u64,
    /// Give a handshake up after this many sends.
    pub attempts: u32,
    /// Forget a session unused for this long (sessions cost ~1 KiB each
    /// and there is at most one per admitted peer; a new one costs a
    /// handshake).
    pub idle_ms: u64,
    /// Datagrams queued per peer while its handshake runs.
    pub max_queued: usize,
    /// Handshakes answered and not finished, kept at most.
    pub max_half_open: usize,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            retry_ms: 1_000,
            attempts: 3,
            idle_ms: 1_800_000,
            max_queued: 16,
            max_half_open: 256,
        }
    }
}

/// Counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChannelStats {
    /// Handshakes completed (either side).
    pub handshakes: u64,
    /// Handshakes given up (no answer).
    pub handshake_timeouts: u64,
    /// Peers refused (not admitted, bad binding, malformed handshake).
    pub refused: u64,
    /// Datagrams that did not decrypt, replays, unknown sessions.
    pub dropped: u64,
    /// Datagrams sealed.
    pub sealed: u64,
    /// Datagrams opened.
    pub opened: u64,
}

struct Session {
    peer: NodeId,
    addr: NodeAddr,
    remote_index: u32,
    transport: snow::StatelessTransportState,
    send_nonce: u64,
    recv_top: u64,
    recv_bits: u64,
    last_used: Millis,
}

impl Session {
    /// Replay window: accept each nonce once, and none older than 64
    /// behind the highest seen.
    fn fresh(&mut self, n: u64) -> bool {
        let n = n + 1; // 0 means "nothing seen"
        if n > self.recv_top {
            let shift = n - self.recv_top;
            self.recv_bits = if shift >= 64 {
                0
            } else {
                self.recv_bits << shift
            };
            self.recv_bits |= 1;
            self.recv_top = n;
            true
        } else {
            let back = self.recv_top - n;
            if back >= 64 || self.recv_bits & (1 << back) != 0 {
                false
            } else {
                self.recv_bits |= 1 << back;
                true
            }
        }
    }
}

struct Initiating {
    index: u32,
    /// My ephemeral key as sent in the first message (ties of two nodes
    /// starting handshakes to each other at once are broken by it).
    e: Vec<u8>,
    hs: snow::HandshakeState,
    sent_at: Millis,
    attempts: u32,
    queue: VecDeque<Vec<u8>>,
}

struct Responding {
    hs: snow::HandshakeState,
    /// Datagrams of a handshake this node gave up for this one (a tie),
    /// sent once it completes.
    queue: VecDeque<Vec<u8>>,
    addr: NodeAddr,
    initiator_index: u32,
    at: Millis,
}

/// One node's end of every channel.
pub struct Channel {
    cfg: ChannelConfig,
    key: Arc<ChannelKey>,
    cluster: String,
    prologue: Vec<u8>,
    verifier: Arc<dyn Verifier>,
    rng: Rng,
    sessions: HashMap<u32, Session>,
    current: HashMap<NodeAddr, u32>,
    initiating: HashMap<NodeAddr, Initiating>,
    responding: HashMap<u32, Responding>,
    stats: ChannelStats,
    refused: BTreeMap<NodeAddr, (u64, String)>,
    buf: Vec<u8>,
}

impl Channel {
    /// A channel for the node `key` speaks for, in `cluster`; `verifier`
    /// says who is admitted.
    pub fn new(
        cfg: ChannelConfig,
        key: Arc<ChannelKey>,
        cluster: &str,
        verifier: Arc<dyn Verifier>,
        seed: u64,
    ) -> Channel {
        Channel {
            cfg,
            key,
            cluster: cluster.to_string(),
            prologue: format!("deorch-gossip/v1 cluster={cluster}").into_bytes(),
            verifier,
            rng: Rng::new(seed),
            sessions: HashMap::new(),
            current: HashMap::new(),
            initiating: HashMap::new(),
            responding: HashMap::new(),
            stats: ChannelStats::default(),
            refused: BTreeMap::new(),
            buf: vec![0; 65_535],
        }
    }

    /// Counters.
    pub fn stats(&self) -> ChannelStats {
        self.stats
    }

    /// Peers with a session now.
    pub fn peers(&self) -> Vec<(NodeAddr, NodeId)> {
        self.current
            .iter()
            .filter_map(|(a, i)| Some((*a, self.sessions.get(i)?.peer.clone())))
            .collect()
    }

    /// Senders refused since the last call: (address, datagrams, the last
    /// reason), for one log line per sender per interval.
    pub fn take_refused(&mut self) -> Vec<(NodeAddr, u64, String)> {
        std::mem::take(&mut self.refused)
            .into_iter()
            .map(|(a, (n, r))| (a, n, r))
            .collect()
    }

    fn refuse(&mut self, addr: NodeAddr, reason: String) {
        self.stats.refused += 1;
        if self.refused.len() < 1024 || self.refused.contains_key(&addr) {
            let e = self.refused.entry(addr).or_insert((0, String::new()));
            e.0 += 1;
            e.1 = reason;
        }
    }

    fn new_index(&mut self) -> u32 {
        loop {
            let i = self.rng.next_u64() as u32;
            if i != 0 && !self.sessions.contains_key(&i) && !self.responding.contains_key(&i) {
                return i;
            }
        }
    }

    fn builder(&self) -> snow::Builder<'_> {
        snow::Builder::new(PATTERN.parse().expect("a valid pattern"))
            .prologue(&self.prologue)
            .expect("prologue set once")
            .local_private_key(&self.key.noise_private)
            .expect("key set once")
    }

    /// Send `datagram` to `to`: sealed on the session, or queued while a
    /// handshake runs (started here if none is).
    pub fn seal(
        &mut self,
        now: Millis,
        to: NodeAddr,
        datagram: &[u8],
        out: &mut Vec<(NodeAddr, Vec<u8>)>,
    ) {
        if let Some(idx) = self.current.get(&to).copied() {
            if let Some(s) = self.sessions.get_mut(&idx) {
                let nonce = s.send_nonce;
                s.send_nonce += 1;
                s.last_used = now;
                let mut frame = Vec::with_capacity(datagram.len() + OVERHEAD);
                frame.push(DATA);
                frame.extend_from_slice(&s.remote_index.to_le_bytes());
                frame.extend_from_slice(&nonce.to_le_bytes());
                let start = frame.len();
                frame.resize(start + datagram.len() + 16, 0);
                match s
                    .transport
                    .write_message(nonce, datagram, &mut frame[start..])
                {
                    Ok(n) => {
                        frame.truncate(start + n);
                        self.stats.sealed += 1;
                        out.push((to, frame));
                    }
                    Err(_) => self.stats.dropped += 1,
                }
                return;
            }
        }
        if !self.initiating.contains_key(&to) {
            self.start_handshake(now, to, out, VecDeque::new());
        }
        if let Some(h) = self.initiating.get_mut(&to) {
            if h.queue.len() >= self.cfg.max_queued {
                h.queue.pop_front();
                self.stats.dropped += 1;
            }
            h.queue.push_back(datagram.to_vec());
        }
    }

    fn start_handshake(
        &mut self,
        now: Millis,
        to: NodeAddr,
        out: &mut Vec<(NodeAddr, Vec<u8>)>,
        queue: VecDeque<Vec<u8>>,
    ) {
        let index = self.new_index();
        let Ok(mut hs) = self.builder().build_initiator() else {
            return;
        };
        let mut frame = vec![HS1];
        frame.extend_from_slice(&index.to_le_bytes());
        let Ok(n) = hs.write_message(&[], &mut self.buf) else {
            return;
        };
        frame.extend_from_slice(&self.buf[..n]);
        let e = self.buf[..n.min(32)].to_vec();
        out.push((to, frame));
        let attempts = self.initiating.get(&to).map_or(0, |h| h.attempts) + 1;
        self.initiating.insert(
            to,
            Initiating {
                index,
                e,
                hs,
                sent_at: now,
                attempts,
                queue,
            },
        );
    }

    /// Time passes: handshakes sent again or given up, idle sessions and
    /// half-open handshakes forgotten.
    pub fn tick(&mut self, now: Millis, out: &mut Vec<(NodeAddr, Vec<u8>)>) {
        let due: Vec<NodeAddr> = self
            .initiating
            .iter()
            .filter(|(_, h)| now >= h.sent_at + self.cfg.retry_ms)
            .map(|(a, _)| *a)
            .collect();
        for a in due {
            let h = self.initiating.remove(&a).expect("listed");
            if h.attempts >= self.cfg.attempts {
                self.stats.handshake_timeouts += 1;
                self.stats.dropped += h.queue.len() as u64;
            } else {
                self.initiating.insert(a, h);
                let q = std::mem::take(&mut self.initiating.get_mut(&a).expect("put back").queue);
                self.start_handshake(now, a, out, q);
            }
        }
        let retry = self.cfg.retry_ms * u64::from(self.cfg.attempts);
        self.responding.retain(|_, r| now < r.at + retry);
        let idle = self.cfg.idle_ms;
        let gone: Vec<u32> = self
            .sessions
            .iter()
            .filter(|(_, s)| now >= s.last_used + idle)
            .map(|(i, _)| *i)
            .collect();
        for i in gone {
            if let Some(s) = self.sessions.remove(&i) {
                if self.current.get(&s.addr) == Some(&i) {
                    self.current.remove(&s.addr);
                }
            }
        }
        // Sessions of nodes no longer admitted end at once.
        let revoked: Vec<u32> = self
            .sessions
            .iter()
            .filter(|(_, s)| !self.verifier.admits(&s.peer))
            .map(|(i, _)| *i)
            .collect();
        for i in revoked {
            if let Some(s) = self.sessions.remove(&i) {
                if self.current.get(&s.addr) == Some(&i) {
                    self.current.remove(&s.addr);
                }
            }
        }
    }

    /// Check the peer's binding of `remote_static`: the node it names, if
    /// the signature holds and the node is admitted.
    fn check_binding(
        &self,
        payload: &[u8],
        remote_static: Option<&[u8]>,
    ) -> Result<NodeId, String> {
        check_binding(&self.cluster, &*self.verifier, payload, remote_static)
    }

    /// A datagram from `from`: a handshake step (answers go to `out`), or
    /// data, returned decrypted with the node that sent it.
    pub fn open(
        &mut self,
        now: Millis,
        from: NodeAddr,
        bytes: &[u8],
        out: &mut Vec<(NodeAddr, Vec<u8>)>,
    ) -> Option<(NodeId, Vec<u8>)> {
        let (&kind, rest) = bytes.split_first()?;
        let u32_at = |b: &[u8], at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
        };
        match kind {
            HS1 => {
                let initiator_index = u32_at(rest, 0)?;
                // Both ends started at once: the handshake whose first
                // ephemeral key is smaller goes on, the other end answers
                // it and sends what it queued once it completes.
                let mut queue = VecDeque::new();
                if let Some(mine) = self.initiating.get(&from) {
                    let theirs = rest.get(4..36)?;
                    if mine.e.as_slice() < theirs {
                        self.stats.dropped += 1;
                        return None;
                    }
                    queue = self.initiating.remove(&from).expect("checked").queue;
                }
                if self.responding.len() >= self.cfg.max_half_open {
                    // Drop the oldest half-open handshake (a flood of
                    // first messages costs the sender as much as us).
                    if let Some(k) = self
                        .responding
                        .iter()
                        .min_by_key(|(_, r)| r.at)
                        .map(|(k, _)| *k)
                    {
                        self.responding.remove(&k);
                    }
                }
                let mut hs = self.builder().build_responder().ok()?;
                if hs.read_message(&rest[4..], &mut self.buf).is_err() {
                    self.refuse(from, "malformed handshake".into());
                    return None;
                }
                let index = self.new_index();
                let n = hs.write_message(&self.key.binding, &mut self.buf).ok()?;
                let mut frame = vec![HS2];
                frame.extend_from_slice(&initiator_index.to_le_bytes());
                frame.extend_from_slice(&index.to_le_bytes());
                frame.extend_from_slice(&self.buf[..n]);
                out.push((from, frame));
                self.responding.insert(
                    index,
                    Responding {
                        hs,
                        queue,
                        addr: from,
                        initiator_index,
                        at: now,
                    },
                );
                None
            }
            HS2 => {
                let initiator_index = u32_at(rest, 0)?;
                let responder_index = u32_at(rest, 4)?;
                if self.initiating.get(&from).map(|h| h.index) != Some(initiator_index) {
                    self.stats.dropped += 1;
                    return None;
                }
                let mut h = self.initiating.remove(&from).expect("checked");
                let peer = match self.read_peer(&mut h.hs, &rest[8..]) {
                    Ok(p) => p,
                    Err(reason) => {
                        self.refuse(from, reason);
                        return None;
                    }
                };
                let n = h.hs.write_message(&self.key.binding, &mut self.buf).ok()?;
                let mut frame = vec![HS3];
                frame.extend_from_slice(&responder_index.to_le_bytes());
                frame.extend_from_slice(&self.buf[..n]);
                out.push((from, frame));
                let session = (h.index, responder_index);
                self.establish(now, session, peer, from, h.hs, h.queue, out);
                None
            }
            HS3 => {
                let index = u32_at(rest, 0)?;
                if self.responding.get(&index).map(|r| r.addr) != Some(from) {
                    self.stats.dropped += 1;
                    return None;
                }
                let mut r = self.responding.remove(&index).expect("checked");
                match self.read_peer(&mut r.hs, &rest[4..]) {
                    Ok(peer) => {
                        let session = (index, r.initiator_index);
                        self.establish(now, session, peer, from, r.hs, r.queue, out);
                    }
                    Err(reason) => self.refuse(from, reason),
                }
                None
            }
            DATA => {
                let index = u32_at(rest, 0)?;
                let nonce = u64::from_le_bytes(rest.get(4..12)?.try_into().ok()?);
                let ct = &rest[12..];
                let Some(s) = self.sessions.get_mut(&index).filter(|s| s.addr == from) else {
                    // A session this node does not hold (it restarted):
                    // handshake back, once at a time.
                    self.stats.dropped += 1;
                    if !self.initiating.contains_key(&from) {
                        self.start_handshake(now, from, out, VecDeque::new());
                    }
                    return None;
                };
                let Ok(n) = s.transport.read_message(nonce, ct, &mut self.buf) else {
                    self.stats.dropped += 1;
                    return None;
                };
                if !s.fresh(nonce) {
                    self.stats.dropped += 1;
                    return None;
                }
                s.last_used = now;
                let peer = s.peer.clone();
                if !self.verifier.admits(&peer) {
                    self.sessions.remove(&index);
                    self.current.retain(|_, i| *i != index);
                    self.refuse(from, format!("{peer} is no longer an admitted node"));
                    return None;
                }
                self.stats.opened += 1;
                Some((peer, self.buf[..n].to_vec()))
            }
            _ => {
                self.stats.dropped += 1;
                None
            }
        }
    }

    /// Read the peer's handshake message carrying its key binding: the
    /// node it is, or why not.
    fn read_peer(&self, hs: &mut snow::HandshakeState, msg: &[u8]) -> Result<NodeId, String> {
        let mut payload = vec![0; 1024];
        let n = hs
            .read_message(msg, &mut payload)
            .map_err(|_| "malformed handshake".to_string())?;
        self.check_binding(&payload[..n], hs.get_remote_static())
    }

    /// A finished handshake: the session `(mine, theirs)` indices, current
    /// for `addr`, and the datagrams that waited for it sent.
    #[allow(clippy::too_many_arguments)]
    fn establish(
        &mut self,
        now: Millis,
        (index, remote_index): (u32, u32),
        peer: NodeId,
        addr: NodeAddr,
        hs: snow::HandshakeState,
        queue: VecDeque<Vec<u8>>,
        out: &mut Vec<(NodeAddr, Vec<u8>)>,
    ) {
        let Ok(transport) = hs.into_stateless_transport_mode() else {
            self.stats.dropped += 1;
            return;
        };
        self.stats.handshakes += 1;
        self.sessions.insert(
            index,
            Session {
                peer,
                addr,
                remote_index,
                transport,
                send_nonce: 0,
                recv_top: 0,
                recv_bits: 0,
                last_used: now,
            },
        );
        self.current.insert(addr, index);
        for d in queue {
            self.seal(now, addr, &d, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::trust::Members;
    use crate::gossip::verify::{AcceptAll, MembersOnly};
    use crate::identity::Network;

    struct End {
        ch: Channel,
        addr: NodeAddr,
    }

    fn end(i: u16, key: &PrivateKey, members: &Arc<Members>) -> End {
        let v: Arc<dyn Verifier> = Arc::new(MembersOnly {
            members: members.clone(),
            documents: AcceptAll,
        });
        End {
            ch: Channel::new(
                ChannelConfig::default(),
                Arc::new(ChannelKey::new(key, "C")),
                "C",
                v,
                i as u64,
            ),
            addr: format!("127.0.0.1:{i}").parse().unwrap(),
        }
    }

    /// Two keys, both admitted.
    fn two_members() -> (PrivateKey, PrivateKey, Arc<Members>) {
        let ka = PrivateKey::generate(Network::Mainnet);
        let kb = PrivateKey::generate(Network::Mainnet);
        let addr = |k: &PrivateKey| k.address(AddressType::P2wpkh).unwrap().to_string();
        let members = Arc::new(Members::new("C"));
        members.set(&BTreeMap::from([
            (addr(&ka), "a".to_string()),
            (addr(&kb), "b".to_string()),
        ]));
        (ka, kb, members)
    }

    /// Deliver everything in flight until quiet; what each end opened.
    fn pump(
        a: &mut End,
        b: &mut End,
        mut wire: Vec<(NodeAddr, NodeAddr, Vec<u8>)>,
    ) -> Vec<(NodeAddr, NodeId, Vec<u8>)> {
        let mut got = Vec::new();
        for _ in 0..20 {
            if wire.is_empty() {
                break;
            }
            let mut next = Vec::new();
            for (src, dst, bytes) in wire.drain(..) {
                let e = if dst == a.addr { &mut *a } else { &mut *b };
                let mut out = Vec::new();
                if let Some((peer, d)) = e.ch.open(0, src, &bytes, &mut out) {
                    got.push((dst, peer, d));
                }
                next.extend(out.into_iter().map(|(to, x)| (dst, to, x)));
            }
            wire = next;
        }
        got
    }

    #[test]
    fn admitted_nodes_talk_privately_and_others_are_refused() {
        let (ka, kb, members) = two_members();
        let kx = PrivateKey::generate(Network::Mainnet);
        let addr = |k: &PrivateKey| k.address(AddressType::P2wpkh).unwrap().to_string();
        let mut a = end(1, &ka, &members);
        let mut b = end(2, &kb, &members);
        let (aa, ba) = (a.addr, b.addr);
        let mut out = Vec::new();
        a.ch.seal(0, b.addr, b"hello b", &mut out);
        a.ch.seal(0, b.addr, b"again", &mut out);
        let wire = out.into_iter().map(|(to, x)| (a.addr, to, x)).collect();
        let got = pump(&mut a, &mut b, wire);
        assert_eq!(
            got,
            vec![
                (b.addr, NodeId(addr(&ka)), b"hello b".to_vec()),
                (b.addr, NodeId(addr(&ka)), b"again".to_vec())
            ]
        );
        // Now both ways, sealed: the plaintext is not on the wire.
        let mut out = Vec::new();
        b.ch.seal(1, a.addr, b"secret reply", &mut out);
        assert_eq!(out.len(), 1);
        assert!(!out[0].1.windows(6).any(|w| w == b"secret"));
        let frame = out[0].1.clone();
        let got = pump(&mut a, &mut b, vec![(ba, aa, frame.clone())]);
        assert_eq!(got, vec![(aa, NodeId(addr(&kb)), b"secret reply".to_vec())]);
        // A replay is dropped; a flipped bit too.
        assert!(pump(&mut a, &mut b, vec![(ba, aa, frame.clone())]).is_empty());
        let mut flipped = frame;
        *flipped.last_mut().unwrap() ^= 1;
        assert!(pump(&mut a, &mut b, vec![(ba, aa, flipped)]).is_empty());

        // x is not admitted: a refuses it, whichever side starts.
        let mut x = end(3, &kx, &members);
        let mut out = Vec::new();
        x.ch.seal(0, a.addr, b"let me in", &mut out);
        let wire = out.into_iter().map(|(to, d)| (x.addr, to, d)).collect();
        assert!(pump(&mut a, &mut x, wire).is_empty());
        assert_eq!(a.ch.take_refused().len(), 1);
        let mut out = Vec::new();
        a.ch.seal(0, x.addr, b"for x", &mut out);
        let wire = out.into_iter().map(|(to, d)| (a.addr, to, d)).collect();
        assert!(pump(&mut a, &mut x, wire).is_empty());
        assert!(a.ch.peers().iter().all(|(ad, _)| *ad != x.addr));

        // Revoking b ends its session at a.
        members.set(&BTreeMap::from([(addr(&ka), "a".to_string())]));
        let mut out = Vec::new();
        b.ch.seal(2, a.addr, b"still here?", &mut out);
        let wire = out.into_iter().map(|(to, d)| (b.addr, to, d)).collect();
        assert!(pump(&mut a, &mut b, wire).is_empty());
        assert!(a.ch.peers().is_empty());
    }

    #[test]
    fn a_restarted_peer_gets_a_new_session() {
        let (ka, kb, members) = two_members();
        let addr = |k: &PrivateKey| k.address(AddressType::P2wpkh).unwrap().to_string();
        let mut a = end(1, &ka, &members);
        let mut b = end(2, &kb, &members);
        let mut out = Vec::new();
        a.ch.seal(0, b.addr, b"one", &mut out);
        let wire = out.into_iter().map(|(to, d)| (a.addr, to, d)).collect();
        assert_eq!(pump(&mut a, &mut b, wire).len(), 1);
        // b restarts: a fresh channel, same address.
        b = end(2, &kb, &members);
        let mut out = Vec::new();
        a.ch.seal(1, b.addr, b"lost", &mut out);
        let wire = out.into_iter().map(|(to, d)| (a.addr, to, d)).collect();
        assert!(
            pump(&mut a, &mut b, wire).is_empty(),
            "the old session is gone"
        );
        // b handshook back; the next datagram arrives.
        let mut out = Vec::new();
        a.ch.seal(2, b.addr, b"two", &mut out);
        let wire = out.into_iter().map(|(to, d)| (a.addr, to, d)).collect();
        let got = pump(&mut a, &mut b, wire);
        assert_eq!(got, vec![(b.addr, NodeId(addr(&ka)), b"two".to_vec())]);
    }

    #[test]
    fn two_ends_starting_at_once_make_one_session_and_lose_nothing() {
        let (ka, kb, members) = two_members();
        for round in 0..20 {
            let mut a = end(1, &ka, &members);
            let mut b = end(2, &kb, &members);
            let (aa, ba) = (a.addr, b.addr);
            let mut wire = Vec::new();
            let mut out = Vec::new();
            a.ch.seal(0, ba, b"from a", &mut out);
            wire.extend(out.drain(..).map(|(to, d)| (aa, to, d)));
            b.ch.seal(0, aa, b"from b", &mut out);
            wire.extend(out.drain(..).map(|(to, d)| (ba, to, d)));
            let got = pump(&mut a, &mut b, wire);
            assert_eq!(got.len(), 2, "round {round}: {got:?}");
            let handshakes = a.ch.stats().handshakes + b.ch.stats().handshakes;
            assert_eq!(
                handshakes, 2,
                "round {round}: one handshake, counted at both ends"
            );
        }
    }
}
