//! Membership: `foca` (the SWIM crate of Fly.io's corrosion) as
//! [`super::GossipNode`] runs it. Why foca and not the home-made SWIM of
//! [`super::membership`]: docs/ALGORITHMS.md, "Why this membership"
//! (`deorch bench membership` measures both).
//!
//! [`Members`] wraps one `Foca` and keeps it sans-IO like the rest of the
//! node: foca's datagrams are collected (the node wraps each in its
//! [`super::wire::Envelope`] as `Body::Foca`, so they travel inside the
//! authenticated channel like everything else), and foca's timers go into
//! a heap that [`Members::tick`] fires from the node's clock.
//!
//! foca speaks of identities ([`FocaId`]: node ID, gossip address,
//! generation); the node speaks of node IDs. [`Members`] turns foca's
//! notifications into one record per node ID: alive while any identity of
//! that ID is active (alive or suspect) in foca, its address the one the
//! channel last authenticated that node at (else the newest generation's),
//! dead once no identity is active. So a node that restarts (a new
//! generation, perhaps a new address) stays one member, and a false
//! identity gossiped for a node by someone else cannot make that node
//! look dead: only the real node can answer the probes of its identity
//! (see [`screen`]), and the false identity is declared down by itself.
//!
//! [`screen`] is what an inbound foca datagram passes before foca sees it:
//! its header must name the node that sent it (the envelope's sender,
//! which the channel authenticated), a node it asks to probe must be
//! admitted, and membership news about nodes that are not admitted is cut
//! out.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::convert::Infallible;
use std::num::{NonZeroU32, NonZeroU8, NonZeroUsize};
use std::time::Duration;

use foca::{
    Codec, Foca, Header, Identity, Member as FocaMember, Message, NoCustomBroadcast, Notification,
    PostcardCodec, Runtime,
};
use serde::{Deserialize, Serialize};

use super::membership::{Member, MemberEvent, SwimConfig};
use super::rng::Rng;
use super::wire::{MemberState, Millis, NodeAddr, NodeId};

/// foca's identity for a deorch node: its ID, its gossip address, and a
/// generation that a restart or a renewal raises (the node's start time,
/// in seconds). Two identities at the same address are the same member
/// for foca, and the higher generation wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FocaId {
    /// The node's ID (Bitcoin address).
    pub id: NodeId,
    /// Where its datagrams go.
    pub addr: NodeAddr,
    /// Raised on each renewal or restart.
    pub generation: u64,
}

impl Identity for FocaId {
    /// foca finds a member by a linear scan comparing `addr()`s, once per
    /// update applied, so `addr()` must be cheap: the ID itself (a
    /// `String`, cloned per member compared) made foca 10× slower at
    /// 1,000 members. The socket address is the key, as in corrosion; a
    /// node that comes back at another address is a second identity of
    /// the same node ID, which [`Members`] merges.
    type Addr = NodeAddr;

    /// Declared down while alive: come back at once as the next
    /// generation (foca announces it; the others rename).
    fn renew(&self) -> Option<Self> {
        Some(FocaId {
            generation: self.generation + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> NodeAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// Our seeded SplitMix64 as the `rand` generator foca wants, so that a
/// seed replays foca's choices too.
pub struct FocaRng(pub Rng);

impl rand::TryRng for FocaRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((self.0.next_u64() >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.0.next_u64())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let r = self.0.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        Ok(())
    }
}

/// Largest foca datagram: with the envelope (~60 B) and the channel's
/// 29 B it stays under a 1,500-byte MTU.
pub const MAX_FOCA_PACKET: usize = 1_300;

/// How often each update is sent: `mult × ⌈log10(n+1)⌉` (our rule; foca's
/// `new_lan` would round down).
pub fn transmissions(mult: u32, n: usize) -> u32 {
    mult * ((n as f64 + 1.0).log10().ceil().max(1.0) as u32)
}

/// foca's settings for `n` members: `Config::new_lan(n)` with our probe
/// period, ack timeout, suspicion timeout (not its `4 × log10(n)`
/// periods), indirect probes, transmissions and reconnect interval, and
/// [`MAX_FOCA_PACKET`]. Its other LAN extensions stay: gossip every
/// 200 ms to 3 members while it has updates, an announce to one member
/// every 30 s, telling a member it is down.
pub fn foca_config(n: usize, s: &SwimConfig) -> foca::Config {
    let mut c = foca::Config::new_lan(NonZeroU32::new(n.max(1) as u32).expect("n ≥ 1"));
    c.probe_period = Duration::from_millis(s.probe_interval_ms);
    c.probe_rtt = Duration::from_millis(s.ack_timeout_ms);
    c.suspect_to_down_after = Duration::from_millis(s.suspicion_timeout_ms);
    c.max_transmissions =
        NonZeroU8::new(transmissions(s.retransmit_mult, n).clamp(1, 255) as u8).expect("≥ 1");
    c.num_indirect_probes = NonZeroUsize::new(s.indirect_probes.max(1)).expect("≥ 1");
    c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: Duration::from_millis(s.reconnect_interval_ms),
        num_members: NonZeroUsize::MIN,
    });
    c.max_packet_size = NonZeroUsize::new(MAX_FOCA_PACKET).expect("> 0");
    c
}

type Timer = foca::Timer<FocaId>;

/// A notification, owned.
enum Note {
    Up(FocaId),
    Down(FocaId),
    Rename(FocaId, FocaId),
    /// This node came back as a new identity.
    Rejoin,
}

/// What one call into foca produced.
#[derive(Default)]
struct Io {
    sends: Vec<(NodeAddr, Vec<u8>)>,
    timers: Vec<(Duration, Timer)>,
    notes: Vec<Note>,
}

impl Runtime<FocaId> for Io {
    fn notify(&mut self, n: Notification<'_, FocaId>) {
        match n {
            Notification::MemberUp(m) => self.notes.push(Note::Up(m.clone())),
            Notification::MemberDown(m) => self.notes.push(Note::Down(m.clone())),
            Notification::Rename(a, b) => self.notes.push(Note::Rename(a.clone(), b.clone())),
            Notification::Rejoin(_) => self.notes.push(Note::Rejoin),
            // Active, Idle, Rejoin: this node's own standing; the node
            // sees its peers come and go through the others.
            _ => {}
        }
    }

    fn send_to(&mut self, to: FocaId, data: &[u8]) {
        self.sends.push((to.addr, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer, after: Duration) {
        self.timers.push((after, event));
    }
}

/// One node ID as this node sees it.
#[derive(Debug)]
struct Record {
    /// foca identities of this ID, and whether each is active.
    idents: Vec<(FocaId, bool)>,
    state: MemberState,
    since: Millis,
    addr: NodeAddr,
    generation: u64,
}

/// Errors foca returned (malformed or unexpected datagrams, timers of a
/// past identity): counted, never fatal.
#[derive(Debug, Clone, Copy, Default)]
pub struct FocaErrors {
    /// Datagrams foca refused.
    pub data: u64,
    /// Timers foca refused.
    pub timers: u64,
}

/// The membership of one node: foca, its timers, and the per-ID view.
pub struct Members {
    cfg: SwimConfig,
    foca: Foca<FocaId, PostcardCodec, FocaRng, NoCustomBroadcast>,
    io: Io,
    timers: BinaryHeap<Reverse<(Millis, u64)>>,
    pending: HashMap<u64, Timer>,
    timer_seq: u64,
    records: HashMap<NodeId, Record>,
    alive: Vec<NodeId>,
    alive_pos: HashMap<NodeId, usize>,
    /// Where the channel last authenticated each node.
    heard: HashMap<NodeId, NodeAddr>,
    events: Vec<MemberEvent>,
    /// `⌈log10(n+1)⌉` foca's config was made for.
    sized_for: u32,
    next_gc: Millis,
    errors: FocaErrors,
}

impl Members {
    /// Only this node, as `generation` (start time: greater than any
    /// earlier run's); `seed` fixes foca's random choices.
    pub fn new(cfg: SwimConfig, me: NodeId, addr: NodeAddr, generation: u64, seed: u64) -> Self {
        let identity = FocaId {
            id: me,
            addr,
            generation,
        };
        Members {
            foca: Foca::new(
                identity,
                foca_config(1, &cfg),
                FocaRng(Rng::new(seed)),
                PostcardCodec,
            ),
            cfg,
            io: Io::default(),
            timers: BinaryHeap::new(),
            pending: HashMap::new(),
            timer_seq: 0,
            records: HashMap::new(),
            alive: Vec::new(),
            alive_pos: HashMap::new(),
            heard: HashMap::new(),
            events: Vec::new(),
            sized_for: 1,
            next_gc: 0,
            errors: FocaErrors::default(),
        }
    }

    /// This node's current identity (its generation rises if it was
    /// declared down while alive).
    pub fn identity(&self) -> &FocaId {
        self.foca.identity()
    }

    /// What this node knows of `id`.
    pub fn get(&self, id: &NodeId) -> Option<Member> {
        self.records.get(id).map(|r| Member {
            addr: r.addr,
            incarnation: r.generation,
            state: r.state,
            since: r.since,
        })
    }

    /// Members known (alive, suspect, or dead and not forgotten yet).
    pub fn known_count(&self) -> usize {
        self.records.len()
    }

    /// Members known by state: `[alive, suspect, dead]`.
    pub fn state_counts(&self) -> [usize; 3] {
        let mut n = [0; 3];
        for r in self.records.values() {
            n[match r.state {
                MemberState::Alive => 0,
                MemberState::Suspect => 1,
                MemberState::Dead => 2,
            }] += 1;
        }
        n
    }

    /// Members alive (foca: alive or suspect).
    pub fn alive_count(&self) -> usize {
        self.alive.len()
    }

    /// IDs of the members alive.
    pub fn alive_ids(&self) -> &[NodeId] {
        &self.alive
    }

    /// Whether a member alive is reached at `addr`.
    pub fn alive_at(&self, addr: NodeAddr) -> bool {
        self.alive
            .iter()
            .any(|id| self.records.get(id).is_some_and(|r| r.addr == addr))
    }

    /// Up to `k` distinct addresses of members this node holds dead, at
    /// random: whom a node left alone asks to take it back.
    pub fn sample_dead(&self, rng: &mut Rng, k: usize) -> Vec<NodeAddr> {
        let mut dead: Vec<NodeAddr> = self
            .records
            .values()
            .filter(|r| r.state == MemberState::Dead)
            .map(|r| r.addr)
            .collect();
        dead.sort();
        dead.dedup();
        rng.shuffle(&mut dead);
        dead.truncate(k);
        dead
    }

    /// Up to `k` distinct addresses of members alive, at random.
    pub fn sample_alive(&self, rng: &mut Rng, k: usize) -> Vec<NodeAddr> {
        let mut out = Vec::with_capacity(k);
        let n = self.alive.len();
        if n == 0 {
            return out;
        }
        for _ in 0..(8 * k + 16) {
            if out.len() == k.min(n) {
                break;
            }
            if let Some(r) = self.records.get(&self.alive[rng.below(n)]) {
                if !out.contains(&r.addr) {
                    out.push(r.addr);
                }
            }
        }
        out
    }

    /// foca's errors so far.
    pub fn errors(&self) -> FocaErrors {
        self.errors
    }

    /// Know `id` (generation 0) as alive without asking it (a simulation
    /// that starts converged).
    pub fn insert_alive(&mut self, id: NodeId, addr: NodeAddr, now: Millis) {
        let m = FocaMember::alive(FocaId {
            id,
            addr,
            generation: 0,
        });
        if self
            .foca
            .apply_many(std::iter::once(m), false, &mut self.io)
            .is_err()
        {
            self.errors.data += 1;
        }
        self.after(now);
    }

    /// Ask whoever listens at `seed` for its member list (foca's
    /// announce; [`screen`] lets the seed accept it whatever address it
    /// believes it has).
    pub fn announce(&mut self, seed: NodeAddr, now: Millis) {
        let dst = FocaId {
            id: NodeId(String::new()),
            addr: seed,
            generation: 0,
        };
        if self.foca.announce(dst, &mut self.io).is_err() {
            self.errors.data += 1;
        }
        self.after(now);
    }

    /// The channel authenticated a datagram of `id` from `addr`.
    pub fn heard_from(&mut self, id: &NodeId, addr: NodeAddr, now: Millis) {
        if self.heard.get(id) != Some(&addr) {
            if self.heard.len() > 4 * self.records.len() + 64 {
                self.heard.clear();
            }
            self.heard.insert(id.clone(), addr);
            if self.records.contains_key(id) {
                self.refresh(id, now);
            }
        }
    }

    /// One foca datagram (already [`screen`]ed).
    pub fn handle(&mut self, now: Millis, data: &[u8]) {
        if self.foca.handle_data(data, &mut self.io).is_err() {
            self.errors.data += 1;
        }
        self.after(now);
    }

    /// Time passes: fire the timers that are due.
    pub fn tick(&mut self, now: Millis) {
        while let Some(Reverse((at, seq))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if let Some(t) = self.pending.remove(&seq) {
                if self.foca.handle_timer(t, &mut self.io).is_err() {
                    self.errors.timers += 1;
                }
            }
        }
        self.after(now);
        if now >= self.next_gc {
            self.next_gc = now + 10_000;
            let horizon = self.cfg.dead_gc_ms;
            self.records.retain(|_, r| {
                r.state != MemberState::Dead || now < r.since.saturating_add(horizon)
            });
        }
    }

    /// Datagrams foca wants sent: (to, foca bytes).
    pub fn take_sends(&mut self) -> std::vec::Drain<'_, (NodeAddr, Vec<u8>)> {
        self.io.sends.drain(..)
    }

    /// Membership changes since the last call.
    pub fn take_events(&mut self) -> Vec<MemberEvent> {
        std::mem::take(&mut self.events)
    }

    /// After each call into foca: schedule its timers, apply its
    /// notifications, resize its config if the cluster grew by a decade.
    fn after(&mut self, now: Millis) {
        for (after, t) in self.io.timers.drain(..) {
            let at = now + after.as_millis() as Millis;
            self.timer_seq += 1;
            self.pending.insert(self.timer_seq, t);
            self.timers.push(Reverse((at, self.timer_seq)));
        }
        let notes = std::mem::take(&mut self.io.notes);
        let mut rejoined = false;
        for n in notes {
            match n {
                Note::Up(f) => {
                    let id = f.id.clone();
                    self.set_active(f, true, now);
                    self.refresh(&id, now);
                }
                Note::Down(f) => {
                    let id = f.id.clone();
                    self.set_active(f, false, now);
                    self.refresh(&id, now);
                }
                Note::Rejoin => rejoined = true,
                Note::Rename(a, b) => {
                    let was = self.records.get_mut(&a.id).and_then(|r| {
                        let i = r.idents.iter().position(|(x, _)| *x == a)?;
                        Some(r.idents.remove(i).1)
                    });
                    let (ia, ib) = (a.id.clone(), b.id.clone());
                    self.set_active(b, was.unwrap_or(false), now);
                    self.refresh(&ia, now);
                    self.refresh(&ib, now);
                }
            }
        }
        if rejoined {
            // foca's rejoin (a new identity after being declared down)
            // leaves it disconnected with its members still active: it
            // neither probes nor answers until its connection state is
            // looked at again, which only news about a member does. Two
            // nodes each holding the other's old identity then never
            // talk again (`gossip_sim` strict seeds under loss). An empty
            // update makes foca look now.
            if self
                .foca
                .apply_many(std::iter::empty(), false, &mut self.io)
                .is_err()
            {
                self.errors.timers += 1;
            }
            self.after(now);
            return;
        }
        let size = (self.alive.len() as f64 + 2.0).log10().ceil() as u32;
        if size != self.sized_for {
            self.sized_for = size;
            let cfg = foca_config(self.alive.len() + 1, &self.cfg);
            if self.foca.set_config(cfg).is_err() {
                self.errors.timers += 1;
            }
        }
    }

    fn set_active(&mut self, f: FocaId, active: bool, now: Millis) {
        if f.id.0.is_empty() || f.id == self.foca.identity().id {
            return;
        }
        let r = self.records.entry(f.id.clone()).or_insert_with(|| Record {
            idents: Vec::new(),
            state: MemberState::Dead,
            since: now,
            addr: f.addr,
            generation: f.generation,
        });
        match r.idents.iter_mut().find(|(x, _)| *x == f) {
            Some(x) => x.1 = active,
            None => r.idents.push((f, active)),
        }
    }

    /// Recompute `id`'s record from its identities; emit what changed.
    fn refresh(&mut self, id: &NodeId, now: Millis) {
        let heard = self.heard.get(id).copied();
        let Some(r) = self.records.get_mut(id) else {
            return;
        };
        // Identities that are down are forgotten unless they are all
        // that is left (the record keeps the last one's address).
        if r.idents.iter().any(|x| x.1) {
            r.idents.retain(|x| x.1);
        } else if r.idents.len() > 1 {
            let last = r.idents.iter().max_by_key(|x| x.0.generation).cloned();
            r.idents = last.into_iter().collect();
        }
        let best = r
            .idents
            .iter()
            .filter(|x| x.1)
            .max_by_key(|x| (Some(x.0.addr) == heard, x.0.generation))
            .map(|x| (x.0.addr, x.0.generation));
        let was_alive = r.state == MemberState::Alive;
        match best {
            Some((addr, generation)) => {
                let moved = r.addr != addr;
                r.addr = addr;
                r.generation = generation;
                if !was_alive {
                    r.state = MemberState::Alive;
                    r.since = now;
                }
                if !was_alive || moved {
                    self.events.push(MemberEvent::Up(id.clone(), addr));
                }
                if !was_alive {
                    self.alive_pos.insert(id.clone(), self.alive.len());
                    self.alive.push(id.clone());
                }
            }
            None if was_alive => {
                r.state = MemberState::Dead;
                r.since = now;
                self.events.push(MemberEvent::Down(id.clone()));
                if let Some(i) = self.alive_pos.remove(id) {
                    self.alive.swap_remove(i);
                    if let Some(moved) = self.alive.get(i) {
                        self.alive_pos.insert(moved.clone(), i);
                    }
                }
            }
            None => {}
        }
    }
}

/// Why [`screen`] dropped a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screened {
    /// Not a foca datagram.
    Malformed,
    /// Its header says it is from another node than the one that sent it.
    Impersonation,
    /// It asks to probe, or answers for, a node that is not admitted.
    NotAdmitted,
}

impl std::fmt::Display for Screened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Screened::Malformed => "malformed membership datagram",
            Screened::Impersonation => "membership datagram names another sender",
            Screened::NotAdmitted => "membership datagram names a node that is not admitted",
        })
    }
}

/// Check a foca datagram that `sender` sent before foca sees it: the
/// header must be `sender`'s own, a node named by a probe must be
/// admitted, updates about nodes that are not admitted are cut out, and
/// an announce is addressed to `me` (a joiner knows only the seed's
/// address, which may be spelt differently from the one it binds).
/// Returns the datagram to hand to foca (the same bytes unless something
/// was cut or readdressed).
pub fn screen<'a>(
    data: &'a [u8],
    sender: &NodeId,
    me: &FocaId,
    admits: &dyn Fn(&NodeId) -> bool,
) -> Result<Cow<'a, [u8]>, Screened> {
    let mut codec = PostcardCodec;
    let mut rest = data;
    let mut header: Header<FocaId> = codec
        .decode_header(&mut rest)
        .map_err(|_| Screened::Malformed)?;
    if header.src.id != *sender {
        return Err(Screened::Impersonation);
    }
    let named = match &header.message {
        Message::PingReq { target, .. } | Message::IndirectAck { target, .. } => Some(target),
        Message::IndirectPing { origin, .. } | Message::ForwardedAck { origin, .. } => Some(origin),
        _ => None,
    };
    if named.is_some_and(|n| !admits(&n.id)) {
        return Err(Screened::NotAdmitted);
    }
    let mut changed = false;
    if header.message == Message::Announce && header.dst != *me {
        header.dst = me.clone();
        changed = true;
    }
    let mut updates = None;
    if rest.len() >= 2 && header.message != Message::Broadcast {
        let n = u16::from_be_bytes([rest[0], rest[1]]);
        rest = &rest[2..];
        let mut kept = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let m: FocaMember<FocaId> = codec
                .decode_member(&mut rest)
                .map_err(|_| Screened::Malformed)?;
            if admits(&m.id().id) {
                kept.push(m);
            } else {
                changed = true;
            }
        }
        updates = Some(kept);
    }
    if !changed {
        return Ok(Cow::Borrowed(data));
    }
    let mut out = Vec::with_capacity(data.len());
    codec
        .encode_header(&header, &mut out)
        .map_err(|_| Screened::Malformed)?;
    if let Some(kept) = updates {
        out.extend_from_slice(&(kept.len() as u16).to_be_bytes());
        for m in &kept {
            codec
                .encode_member(m, &mut out)
                .map_err(|_| Screened::Malformed)?;
        }
    }
    out.extend_from_slice(rest);
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u8) -> FocaId {
        FocaId {
            id: NodeId(format!("n{i}")),
            addr: format!("127.0.0.1:{}", 7000 + i as u16).parse().unwrap(),
            generation: 1,
        }
    }

    fn packet(src: &FocaId, dst: &FocaId, message: Message<FocaId>, ups: &[FocaId]) -> Vec<u8> {
        let mut c = PostcardCodec;
        let mut out = Vec::new();
        c.encode_header(
            &Header {
                src: src.clone(),
                src_incarnation: 0,
                dst: dst.clone(),
                message,
            },
            &mut out,
        )
        .unwrap();
        out.extend_from_slice(&(ups.len() as u16).to_be_bytes());
        for u in ups {
            c.encode_member(&FocaMember::alive(u.clone()), &mut out)
                .unwrap();
        }
        out
    }

    fn members_of(data: &[u8]) -> Vec<String> {
        let mut c = PostcardCodec;
        let mut rest = data;
        let _: Header<FocaId> = c.decode_header(&mut rest).unwrap();
        let n = u16::from_be_bytes([rest[0], rest[1]]);
        rest = &rest[2..];
        (0..n)
            .map(|_| {
                let m: FocaMember<FocaId> = c.decode_member(&mut rest).unwrap();
                m.id().id.0.clone()
            })
            .collect()
    }

    #[test]
    fn screen_cuts_news_of_outsiders_and_refuses_impersonation() {
        let admits = |n: &NodeId| n.0 != "n9";
        let p = packet(&id(1), &id(2), Message::Gossip, &[id(3), id(9), id(4)]);
        let out = screen(&p, &NodeId("n1".into()), &id(2), &admits).unwrap();
        assert_eq!(members_of(&out), ["n3", "n4"]);
        // Nothing to cut: the same bytes.
        let p = packet(&id(1), &id(2), Message::Gossip, &[id(3)]);
        assert!(matches!(
            screen(&p, &NodeId("n1".into()), &id(2), &admits),
            Ok(Cow::Borrowed(_))
        ));
        // The header names n1, the channel authenticated n5.
        assert_eq!(
            screen(&p, &NodeId("n5".into()), &id(2), &admits),
            Err(Screened::Impersonation)
        );
        let p = packet(
            &id(1),
            &id(2),
            Message::PingReq {
                target: id(9),
                probe_number: 1,
            },
            &[],
        );
        assert_eq!(
            screen(&p, &NodeId("n1".into()), &id(2), &admits),
            Err(Screened::NotAdmitted)
        );
        assert_eq!(
            screen(b"\xff\xff\xff", &NodeId("n1".into()), &id(2), &admits),
            Err(Screened::Malformed)
        );
    }

    #[test]
    fn an_announce_is_readdressed_to_the_receiver() {
        let mut c = PostcardCodec;
        let mut blank = id(2);
        blank.id = NodeId(String::new());
        let mut p = Vec::new();
        c.encode_header(
            &Header {
                src: id(1),
                src_incarnation: 0,
                dst: blank,
                message: Message::Announce,
            },
            &mut p,
        )
        .unwrap();
        let out = screen(&p, &NodeId("n1".into()), &id(2), &|_| true).unwrap();
        let mut rest = &out[..];
        let h: Header<FocaId> = c.decode_header(&mut rest).unwrap();
        assert_eq!(h.dst, id(2));
        assert!(rest.is_empty());
    }

    fn pump(nodes: &mut [Members], now: Millis) {
        // Deliver until quiet (no loss): addresses map to indices.
        for _ in 0..50 {
            let mut sent = Vec::new();
            for m in nodes.iter_mut() {
                let from = m.identity().id.clone();
                for (to, data) in m.take_sends() {
                    sent.push((from.clone(), to, data));
                }
            }
            if sent.is_empty() {
                return;
            }
            for (from, to, data) in sent {
                if let Some(n) = nodes.iter_mut().find(|n| n.identity().addr == to) {
                    let me = n.identity().clone();
                    if let Ok(d) = screen(&data, &from, &me, &|_| true) {
                        n.handle(now, &d);
                    }
                }
            }
        }
    }

    #[test]
    fn foca_takes_the_config_resized_as_the_cluster_grows() {
        let mut m = Members::new(SwimConfig::default(), NodeId("me".into()), id(1).addr, 1, 1);
        for i in 0..150u16 {
            let addr = format!("10.0.{}.{}:7946", i / 250, i % 250 + 1)
                .parse()
                .unwrap();
            m.insert_alive(NodeId(format!("m{i}")), addr, 0);
        }
        assert_eq!(m.alive_count(), 150);
        assert_eq!(m.sized_for, 3);
        assert_eq!(m.errors().timers, 0, "foca refused a resized config");
        assert_eq!(m.errors().data, 0);
        let cfg = foca_config(151, &SwimConfig::default());
        assert_eq!(cfg.max_transmissions.get(), 12);
    }

    #[test]
    fn a_node_that_restarts_at_another_address_stays_one_member() {
        let cfg = SwimConfig::default();
        let mut nodes = vec![
            Members::new(cfg.clone(), NodeId("n1".into()), id(1).addr, 1, 1),
            Members::new(cfg.clone(), NodeId("n2".into()), id(2).addr, 1, 2),
        ];
        nodes[1].announce(id(1).addr, 0);
        pump(&mut nodes, 0);
        assert_eq!(nodes[0].alive_ids(), [NodeId("n2".into())]);
        assert_eq!(
            nodes[0].take_events(),
            [MemberEvent::Up(NodeId("n2".into()), id(2).addr)]
        );
        // n2 comes back at a new port with a higher generation.
        let new_addr: NodeAddr = "127.0.0.1:7100".parse().unwrap();
        nodes[1] = Members::new(cfg.clone(), NodeId("n2".into()), new_addr, 2, 3);
        nodes[1].announce(id(1).addr, 1);
        pump(&mut nodes, 1);
        assert_eq!(nodes[0].alive_ids(), [NodeId("n2".into())]);
        assert_eq!(
            nodes[0].take_events(),
            [MemberEvent::Up(NodeId("n2".into()), new_addr)]
        );
        // The old identity is declared down after its probes fail; n2
        // stays alive.
        let mut now = 1;
        for _ in 0..200 {
            now += 100;
            for n in nodes.iter_mut() {
                n.tick(now);
            }
            pump(&mut nodes, now);
        }
        assert_eq!(nodes[0].alive_ids(), [NodeId("n2".into())]);
        assert_eq!(nodes[0].get(&NodeId("n2".into())).unwrap().addr, new_addr);
        assert!(nodes[0].take_events().is_empty());
    }
}
