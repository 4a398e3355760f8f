//! SWIM membership: failure detection by probes (direct, then indirect
//! through `k` others), suspicion before death, incarnation numbers to
//! refute, and dissemination piggybacked on probes.
//!
//! ```text
//!            probe missed (no ack, direct or indirect)
//!   Alive ───────────────────────────────► Suspect ──(suspicion timeout)──► Dead
//!     ▲                                      │                              │
//!     └───── Alive with a higher incarnation ┴──────────────────────────────┘
//!            (only the member itself raises its incarnation, to refute)
//! ```
//!
//! A member that hears it is suspected or dead raises its incarnation
//! above the claim and spreads `Alive`. A node that receives a message
//! directly from a member it holds suspect or dead at an incarnation at
//! least the sender's tells the sender (a `Members` notice), so a healed
//! partition or a restarted node is recognised within a round trip.
//! Dead members are still pinged now and then (`reconnect_interval`), which
//! is how the two sides of a healed partition find each other.

use std::collections::HashMap;

use super::rng::Rng;
use super::wire::{Body, MemberState, MemberUpdate, Millis, NodeAddr, NodeId};

/// Timing and fan-out of the failure detector.
#[derive(Debug, Clone)]
pub struct SwimConfig {
    /// One probe per member per this period, round robin.
    pub probe_interval_ms: u64,
    /// Direct ack expected within this; then indirect probes.
    pub ack_timeout_ms: u64,
    /// Number of members asked to probe indirectly.
    pub indirect_probes: usize,
    /// A suspect not refuted within this is declared dead.
    pub suspicion_timeout_ms: u64,
    /// Ping one random dead member this often (partition heal, rejoin).
    pub reconnect_interval_ms: u64,
    /// Forget dead members after this.
    pub dead_gc_ms: u64,
    /// Each update is piggybacked `mult × ceil(log10(n + 1))` times.
    pub retransmit_mult: u32,
    /// At most this many updates per message.
    pub max_piggyback: usize,
}

impl Default for SwimConfig {
    fn default() -> Self {
        SwimConfig {
            probe_interval_ms: 1_000,
            ack_timeout_ms: 400,
            indirect_probes: 3,
            suspicion_timeout_ms: 4_000,
            reconnect_interval_ms: 2_000,
            dead_gc_ms: 3_600_000,
            retransmit_mult: 4,
            max_piggyback: 32,
        }
    }
}

/// What this node knows of a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Gossip address.
    pub addr: NodeAddr,
    /// Highest incarnation heard.
    pub incarnation: u64,
    /// State.
    pub state: MemberState,
    /// When it entered `state` (local time).
    pub since: Millis,
}

/// A membership change this node concluded or learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// A member is (again) alive.
    Up(NodeId, NodeAddr),
    /// A member is suspected.
    Suspect(NodeId),
    /// A member is declared dead.
    Down(NodeId),
}

#[derive(Debug)]
struct Probe {
    target: NodeId,
    seq: u64,
    sent: Millis,
    indirect: bool,
    acked: bool,
}

/// The SWIM state of one node.
#[derive(Debug)]
pub struct Membership {
    cfg: SwimConfig,
    me: NodeId,
    addr: NodeAddr,
    incarnation: u64,
    members: HashMap<NodeId, Member>,
    order: Vec<NodeId>,
    next: usize,
    probe: Option<Probe>,
    next_probe: Millis,
    next_reconnect: Millis,
    relays: HashMap<u64, (NodeAddr, u64, Millis)>,
    seq: u64,
    queue: Vec<(MemberUpdate, u32)>,
    events: Vec<MemberEvent>,
    suspects: std::collections::HashSet<NodeId>,
    /// No suspicion expires before this (skips the scan until then).
    next_expiry: Millis,
}

impl Membership {
    /// A membership with only this node in it.
    pub fn new(cfg: SwimConfig, me: NodeId, addr: NodeAddr, incarnation: u64) -> Self {
        Membership {
            cfg,
            me,
            addr,
            incarnation,
            members: HashMap::new(),
            order: Vec::new(),
            next: 0,
            probe: None,
            next_probe: 0,
            next_reconnect: 0,
            relays: HashMap::new(),
            seq: 0,
            queue: Vec::new(),
            events: Vec::new(),
            suspects: std::collections::HashSet::new(),
            next_expiry: Millis::MAX,
        }
    }

    /// My incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// What I know of `id`.
    pub fn get(&self, id: &NodeId) -> Option<&Member> {
        self.members.get(id)
    }

    /// Every known member except me.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &Member)> {
        self.members.iter()
    }

    /// Number of members I hold alive (me excluded).
    pub fn alive_count(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.state == MemberState::Alive)
            .count()
    }

    /// Add a member known to be alive without spreading it (start-up from
    /// a saved or given list).
    pub fn insert_alive(&mut self, id: NodeId, addr: NodeAddr, now: Millis) {
        if id == self.me {
            return;
        }
        self.members.insert(
            id.clone(),
            Member {
                addr,
                incarnation: 0,
                state: MemberState::Alive,
                since: now,
            },
        );
        // Not added to the probe order: the next round's shuffle takes it.
        // (Appending in a common order would have every node probe the
        // same member at the same time, and some only once a round.)
        self.next = self.order.len();
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<MemberEvent> {
        std::mem::take(&mut self.events)
    }

    fn transmits(&self) -> u32 {
        let n = self.members.len() as f64 + 1.0;
        self.cfg.retransmit_mult * (n.log10().ceil().max(1.0) as u32)
    }

    fn enqueue(&mut self, u: MemberUpdate) {
        let t = self.transmits();
        self.queue.retain(|(q, _)| q.id != u.id);
        self.queue.push((u, t));
    }

    /// Updates to piggyback on one outgoing message.
    pub fn piggyback(&mut self) -> Vec<MemberUpdate> {
        // Fresh updates first: they have the most transmissions left.
        let n = self.queue.len().min(self.cfg.max_piggyback);
        if n > 0 && n < self.queue.len() {
            self.queue
                .select_nth_unstable_by(n - 1, |a, b| b.1.cmp(&a.1));
        }
        let out = self.queue[..n].iter().map(|(u, _)| u.clone()).collect();
        for q in &mut self.queue[..n] {
            q.1 -= 1;
        }
        self.queue.retain(|q| q.1 > 0);
        out
    }

    /// Everything I know, as updates (answer to a join).
    pub fn snapshot(&self) -> Vec<MemberUpdate> {
        let mut v: Vec<MemberUpdate> = self
            .members
            .iter()
            .filter(|(_, m)| m.state != MemberState::Dead)
            .map(|(id, m)| MemberUpdate {
                id: id.clone(),
                addr: m.addr,
                incarnation: m.incarnation,
                state: m.state,
            })
            .collect();
        v.push(self.me_update());
        v
    }

    fn me_update(&self) -> MemberUpdate {
        MemberUpdate {
            id: self.me.clone(),
            addr: self.addr,
            incarnation: self.incarnation,
            state: MemberState::Alive,
        }
    }

    fn set_state(
        &mut self,
        id: &NodeId,
        state: MemberState,
        inc: u64,
        addr: NodeAddr,
        now: Millis,
    ) {
        let m = self.members.get_mut(id).expect("caller checked");
        let was = m.state;
        m.incarnation = inc;
        m.addr = addr;
        if was != state {
            if state == MemberState::Suspect {
                self.suspects.insert(id.clone());
                self.next_expiry = self.next_expiry.min(now + self.cfg.suspicion_timeout_ms);
            } else {
                self.suspects.remove(id);
            }
            m.state = state;
            m.since = now;
            self.events.push(match state {
                MemberState::Alive => MemberEvent::Up(id.clone(), addr),
                MemberState::Suspect => MemberEvent::Suspect(id.clone()),
                MemberState::Dead => MemberEvent::Down(id.clone()),
            });
        }
    }

    /// Apply a membership fact heard from anyone.
    pub fn apply(&mut self, u: &MemberUpdate, now: Millis) {
        if u.id == self.me {
            if u.state != MemberState::Alive && u.incarnation >= self.incarnation {
                self.incarnation = u.incarnation + 1;
                let me = self.me_update();
                self.enqueue(me);
            }
            return;
        }
        let Some(m) = self.members.get(&u.id) else {
            if u.state == MemberState::Dead {
                return;
            }
            self.members.insert(
                u.id.clone(),
                Member {
                    addr: u.addr,
                    incarnation: u.incarnation,
                    state: u.state,
                    since: now,
                },
            );
            self.order.push(u.id.clone());
            if u.state == MemberState::Suspect {
                self.suspects.insert(u.id.clone());
                self.next_expiry = self.next_expiry.min(now + self.cfg.suspicion_timeout_ms);
            }
            self.events.push(match u.state {
                MemberState::Suspect => MemberEvent::Suspect(u.id.clone()),
                _ => MemberEvent::Up(u.id.clone(), u.addr),
            });
            self.enqueue(u.clone());
            return;
        };
        let newer = match (u.state, m.state) {
            (MemberState::Alive, _) => u.incarnation > m.incarnation,
            (MemberState::Suspect, MemberState::Alive) => u.incarnation >= m.incarnation,
            (MemberState::Suspect, MemberState::Suspect) => u.incarnation > m.incarnation,
            (MemberState::Suspect, MemberState::Dead) => false,
            (MemberState::Dead, MemberState::Dead) => u.incarnation > m.incarnation,
            (MemberState::Dead, _) => u.incarnation >= m.incarnation,
        };
        if newer {
            self.set_state(&u.id, u.state, u.incarnation, u.addr, now);
            self.enqueue(u.clone());
        }
    }

    /// A message came straight from `id` at `incarnation`: evidence it is
    /// alive. Returns a notice to send back when I hold it suspect or dead
    /// at an incarnation it has not refuted yet.
    pub fn direct(
        &mut self,
        id: &NodeId,
        addr: NodeAddr,
        incarnation: u64,
        now: Millis,
    ) -> Option<MemberUpdate> {
        if *id == self.me {
            return None;
        }
        match self.members.get(id) {
            // Unknown, or known at an older incarnation: alive as it says.
            m if m.is_none_or(|m| incarnation > m.incarnation) => {
                self.apply(
                    &MemberUpdate {
                        id: id.clone(),
                        addr,
                        incarnation,
                        state: MemberState::Alive,
                    },
                    now,
                );
                None
            }
            None => None,
            Some(m) if m.state != MemberState::Alive => Some(MemberUpdate {
                id: id.clone(),
                addr: m.addr,
                incarnation: m.incarnation,
                state: m.state,
            }),
            Some(_) => None,
        }
    }

    /// Handle a SWIM message; returns replies.
    pub fn handle(
        &mut self,
        from: NodeAddr,
        body: &Body,
        now: Millis,
        out: &mut Vec<(NodeAddr, Body)>,
    ) {
        match body {
            Body::Ping { seq, updates } => {
                self.apply_all(updates, now);
                let updates = self.piggyback();
                out.push((from, Body::Ack { seq: *seq, updates }));
            }
            Body::Ack { seq, updates } => {
                self.apply_all(updates, now);
                if let Some(p) = &mut self.probe {
                    if p.seq == *seq {
                        p.acked = true;
                    }
                }
                if let Some((requester, their_seq, _)) = self.relays.remove(seq) {
                    let updates = self.piggyback();
                    out.push((
                        requester,
                        Body::Ack {
                            seq: their_seq,
                            updates,
                        },
                    ));
                }
            }
            Body::PingReq {
                seq,
                target,
                updates,
            } => {
                self.apply_all(updates, now);
                self.seq += 1;
                self.relays
                    .insert(self.seq, (from, *seq, now + self.cfg.probe_interval_ms));
                let updates = self.piggyback();
                out.push((
                    *target,
                    Body::Ping {
                        seq: self.seq,
                        updates,
                    },
                ));
            }
            Body::Join => {
                for chunk in self.snapshot().chunks(256) {
                    out.push((from, Body::Members(chunk.to_vec())));
                }
            }
            Body::Members(list) => self.apply_all(list, now),
            _ => {}
        }
    }

    fn apply_all(&mut self, updates: &[MemberUpdate], now: Millis) {
        for u in updates {
            self.apply(u, now);
        }
    }

    /// Advance timers: finish or escalate the current probe, start the
    /// next, expire suspicions, reconnect to a dead member, forget old
    /// dead ones.
    pub fn tick(&mut self, now: Millis, rng: &mut Rng, out: &mut Vec<(NodeAddr, Body)>) {
        if let Some(p) = &mut self.probe {
            if !p.acked && !p.indirect && now >= p.sent + self.cfg.ack_timeout_ms {
                p.indirect = true;
                let (target, seq) = (p.target.clone(), p.seq);
                if let Some(addr) = self.members.get(&target).map(|m| m.addr) {
                    for via in self.sample_alive(rng, self.cfg.indirect_probes, Some(&target)) {
                        let updates = self.piggyback();
                        out.push((
                            via,
                            Body::PingReq {
                                seq,
                                target: addr,
                                updates,
                            },
                        ));
                    }
                }
            }
        }
        if now >= self.next_probe {
            if let Some(p) = self.probe.take() {
                if !p.acked {
                    if let Some(m) = self.members.get(&p.target) {
                        if m.state == MemberState::Alive {
                            let u = MemberUpdate {
                                id: p.target.clone(),
                                addr: m.addr,
                                incarnation: m.incarnation,
                                state: MemberState::Suspect,
                            };
                            self.apply(&u, now);
                        }
                    }
                }
            }
            self.next_probe = now + self.cfg.probe_interval_ms;
            if let Some(target) = self.next_target(rng) {
                self.seq += 1;
                let addr = self.members[&target].addr;
                self.probe = Some(Probe {
                    target,
                    seq: self.seq,
                    sent: now,
                    indirect: false,
                    acked: false,
                });
                let updates = self.piggyback();
                out.push((
                    addr,
                    Body::Ping {
                        seq: self.seq,
                        updates,
                    },
                ));
            }
        }
        let mut expired: Vec<MemberUpdate> = Vec::new();
        if now >= self.next_expiry {
            self.next_expiry = self
                .suspects
                .iter()
                .filter_map(|id| self.members.get(id))
                .map(|m| m.since + self.cfg.suspicion_timeout_ms)
                .filter(|t| *t > now)
                .min()
                .unwrap_or(Millis::MAX);
            expired = self
                .suspects
                .iter()
                .filter_map(|id| self.members.get(id).map(|m| (id, m)))
                .filter(|(_, m)| now >= m.since + self.cfg.suspicion_timeout_ms)
                .map(|(id, m)| MemberUpdate {
                    id: id.clone(),
                    addr: m.addr,
                    incarnation: m.incarnation,
                    state: MemberState::Dead,
                })
                .collect();
        }
        expired.sort_by(|a, b| a.id.cmp(&b.id));
        for u in expired {
            self.apply(&u, now);
        }
        if now >= self.next_reconnect {
            self.next_reconnect = now + self.cfg.reconnect_interval_ms;
            let mut dead: Vec<(&NodeId, NodeAddr)> = self
                .members
                .iter()
                .filter(|(_, m)| m.state == MemberState::Dead)
                .map(|(id, m)| (id, m.addr))
                .collect();
            if !dead.is_empty() {
                dead.sort();
                let addr = dead[rng.below(dead.len())].1;
                self.seq += 1;
                out.push((
                    addr,
                    Body::Ping {
                        seq: self.seq,
                        updates: Vec::new(),
                    },
                ));
            }
            let gc = self.cfg.dead_gc_ms;
            self.members
                .retain(|_, m| !(m.state == MemberState::Dead && now >= m.since + gc));
        }
        self.relays.retain(|_, r| r.2 > now);
    }

    /// Up to `k` distinct random members I hold alive (never `except`),
    /// by rejection sampling over the member list: O(k), not O(n).
    pub fn sample_alive(&self, rng: &mut Rng, k: usize, except: Option<&NodeId>) -> Vec<NodeAddr> {
        let mut out = Vec::with_capacity(k);
        let n = self.order.len();
        if n == 0 {
            return out;
        }
        for _ in 0..(8 * k + 16) {
            if out.len() == k {
                break;
            }
            let id = &self.order[rng.below(n)];
            if Some(id) == except {
                continue;
            }
            if let Some(m) = self.members.get(id) {
                if m.state == MemberState::Alive && !out.contains(&m.addr) {
                    out.push(m.addr);
                }
            }
        }
        out
    }

    fn next_target(&mut self, rng: &mut Rng) -> Option<NodeId> {
        for _ in 0..2 {
            while self.next < self.order.len() {
                let id = self.order[self.next].clone();
                self.next += 1;
                match self.members.get(&id) {
                    Some(m) if m.state != MemberState::Dead => return Some(id),
                    _ => {}
                }
            }
            // One full round done: new random order (SWIM's round robin).
            let mut ids: Vec<NodeId> = self.members.keys().cloned().collect();
            ids.sort();
            rng.shuffle(&mut ids);
            self.order = ids;
            self.next = 0;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upd(id: &str, inc: u64, state: MemberState) -> MemberUpdate {
        MemberUpdate {
            id: NodeId(id.into()),
            addr: "10.0.0.1:1".parse().unwrap(),
            incarnation: inc,
            state,
        }
    }

    #[test]
    fn suspicion_is_refuted_only_by_a_higher_incarnation() {
        let mut m = Membership::new(
            SwimConfig::default(),
            NodeId("me".into()),
            "10.0.0.9:1".parse().unwrap(),
            0,
        );
        m.apply(&upd("a", 1, MemberState::Alive), 0);
        m.apply(&upd("a", 1, MemberState::Suspect), 0);
        assert_eq!(
            m.get(&NodeId("a".into())).unwrap().state,
            MemberState::Suspect
        );
        m.apply(&upd("a", 1, MemberState::Alive), 0);
        assert_eq!(
            m.get(&NodeId("a".into())).unwrap().state,
            MemberState::Suspect
        );
        m.apply(&upd("a", 2, MemberState::Alive), 0);
        assert_eq!(
            m.get(&NodeId("a".into())).unwrap().state,
            MemberState::Alive
        );
        m.apply(&upd("a", 2, MemberState::Dead), 0);
        m.apply(&upd("a", 2, MemberState::Suspect), 0);
        assert_eq!(m.get(&NodeId("a".into())).unwrap().state, MemberState::Dead);
    }

    #[test]
    fn hearing_myself_dead_raises_my_incarnation() {
        let mut m = Membership::new(
            SwimConfig::default(),
            NodeId("me".into()),
            "10.0.0.9:1".parse().unwrap(),
            5,
        );
        m.apply(&upd("me", 7, MemberState::Dead), 0);
        assert_eq!(m.incarnation(), 8);
        assert!(m
            .piggyback()
            .iter()
            .any(|u| u.id.0 == "me" && u.state == MemberState::Alive && u.incarnation == 8));
    }
}
