//! `deorch bench membership`: our SWIM ([`Membership`]) against `foca`
//! (the SWIM crate of Fly.io's corrosion), membership only, over the same
//! simulated network ([`SimNet`]: seeded loss, 1-20 ms delay, partitions,
//! kills, virtual clock) with the same seeds and comparable timings.
//!
//! Why it exists: to decide, with numbers, whether deorch keeps its own
//! failure detector or adopts foca (docs/ALGORITHMS.md, "Why this
//! membership"; figures in docs/PERFORMANCE.md).
//!
//! Each side is a [`Protocol`]: datagrams and timers in, datagrams,
//! timers and view changes ("member j is up/down") out. Ours is driven
//! the way [`super::GossipNode`] drives it (an [`Envelope`] around each
//! SWIM body, `direct` + `handle` per datagram, `tick` every `tick_ms`,
//! `Join` to the seeds until someone answers) without the document
//! gossip, so only membership traffic is counted. foca runs with an
//! identity carrying the node ID and its address, postcard encoding, and
//! its timers in the virtual clock.
//!
//! What "up" means is foca's "active": alive or suspect. A member is
//! "down" for an observer once the observer declared or learned it dead.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use foca::{Foca, Member, NoCustomBroadcast, Notification, PostcardCodec, Runtime};

use super::members::{foca_config, FocaId, FocaRng};
use super::membership::{MemberEvent, Membership, SwimConfig};
use super::rng::{mix64, Rng};
use super::sim::{sim_addr, NetConfig, SimNet, SIM_EPOCH};
use super::wire::{decode, encode, Body, Envelope, Millis, NodeAddr, NodeId};

/// The timings both sides run with, as a node derives them from
/// `--gossip-probe-interval` and `--gossip-suspect-timeout`
/// (`node/cluster.rs`, `gossip_config`).
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// Probe period (foca: `probe_period`).
    pub probe_ms: u64,
    /// Direct ack awaited this long before ping-req (foca: `probe_rtt`).
    pub ack_ms: u64,
    /// Suspect to dead (foca: `suspect_to_down_after`).
    pub suspect_ms: u64,
    /// One dead member pinged this often (foca:
    /// `periodic_announce_to_down_members`, one member).
    pub reconnect_ms: u64,
    /// Our node's timer granularity (foca schedules exact timers).
    pub tick_ms: u64,
}

impl Timings {
    /// What a node runs with for these two settings.
    pub fn from_node(probe_ms: u64, suspect_ms: u64) -> Self {
        Timings {
            probe_ms,
            ack_ms: (probe_ms * 2 / 5).max(5),
            suspect_ms,
            reconnect_ms: (probe_ms * 2).max(20),
            tick_ms: (probe_ms / 2).clamp(10, 200),
        }
    }
}

impl Default for Timings {
    /// The node's defaults: probe 1 s, suspect 4 s.
    fn default() -> Self {
        Timings::from_node(1_000, 4_000)
    }
}

/// Our SWIM's settings.
pub fn swim_config(t: &Timings) -> SwimConfig {
    SwimConfig {
        probe_interval_ms: t.probe_ms,
        ack_timeout_ms: t.ack_ms,
        suspicion_timeout_ms: t.suspect_ms,
        reconnect_interval_ms: t.reconnect_ms,
        ..SwimConfig::default()
    }
}

/// foca's settings: the node's ([`foca_config`]) for these timings.
pub fn foca_config_for(n: usize, t: &Timings) -> foca::Config {
    foca_config(n, &swim_config(t))
}

/// The ID of simulated node `i`: as long as a real one (a bech32
/// Bitcoin address, 42 characters), so that byte counts are realistic.
pub fn node_id(i: usize) -> NodeId {
    NodeId(format!("bc1qsim{i:035}"))
}

fn index_of(id: &NodeId) -> usize {
    id.0[7..].parse().expect("a simulated node ID")
}

/// A change in what one node thinks of another.
#[derive(Debug, Clone, Copy)]
enum View {
    Up(usize),
    Down(usize),
}

/// What one call into a protocol produced.
pub struct Io<T> {
    sends: Vec<(NodeAddr, Vec<u8>)>,
    timers: Vec<(u64, T)>,
    views: Vec<View>,
}

impl<T> Default for Io<T> {
    fn default() -> Self {
        Io {
            sends: Vec::new(),
            timers: Vec::new(),
            views: Vec::new(),
        }
    }
}

/// One member of a membership protocol, sans IO.
pub trait Protocol: Sized {
    /// A timer it asks for.
    type Timer;
    /// Node `i` of `n`.
    fn new(i: usize, n: usize, t: &Timings, seed: u64) -> Self;
    /// Begin: `seed` is the one member it knows (`None`: it is the seed).
    fn start(&mut self, seed: Option<usize>, t: &Timings, io: &mut Io<Self::Timer>);
    /// Know all `n` members alive from the start (as after a long
    /// uneventful run), without spreading it.
    fn preload(&mut self, n: usize, now: Millis, io: &mut Io<Self::Timer>);
    /// A timer fired.
    fn on_timer(&mut self, now: Millis, timer: Self::Timer, io: &mut Io<Self::Timer>);
    /// A datagram arrived.
    fn on_datagram(&mut self, now: Millis, from: NodeAddr, bytes: &[u8], io: &mut Io<Self::Timer>);
}

/// Our SWIM, driven as `GossipNode` drives it.
pub struct Swim {
    m: Membership,
    rng: Rng,
    me: NodeId,
    addr: NodeAddr,
    seeds: Vec<NodeAddr>,
    next_join: Millis,
    probe_ms: u64,
    tick_ms: u64,
}

impl Swim {
    fn send(&self, to: NodeAddr, body: Body, io: &mut Io<()>) {
        let bytes = encode(&Envelope {
            from: self.me.clone(),
            addr: self.addr,
            incarnation: self.m.incarnation(),
            body,
        });
        io.sends.push((to, bytes));
    }

    fn views(&mut self, io: &mut Io<()>) {
        for e in self.m.take_events() {
            match e {
                MemberEvent::Up(id, _) => io.views.push(View::Up(index_of(&id))),
                MemberEvent::Down(id) => io.views.push(View::Down(index_of(&id))),
                MemberEvent::Suspect(_) => {}
            }
        }
    }
}

impl Protocol for Swim {
    type Timer = ();

    fn new(i: usize, n: usize, t: &Timings, seed: u64) -> Self {
        let _ = n;
        Swim {
            m: Membership::new(swim_config(t), node_id(i), sim_addr(i), 0),
            rng: Rng::new(seed),
            me: node_id(i),
            addr: sim_addr(i),
            seeds: Vec::new(),
            next_join: 0,
            probe_ms: t.probe_ms,
            tick_ms: t.tick_ms,
        }
    }

    fn start(&mut self, seed: Option<usize>, _t: &Timings, io: &mut Io<()>) {
        self.seeds.extend(seed.map(sim_addr));
        io.timers.push((0, ()));
    }

    fn preload(&mut self, n: usize, now: Millis, _io: &mut Io<()>) {
        for j in 0..n {
            self.m.insert_alive(node_id(j), sim_addr(j), now);
        }
    }

    fn on_timer(&mut self, now: Millis, _: (), io: &mut Io<()>) {
        let mut msgs = Vec::new();
        self.m.tick(now, &mut self.rng, &mut msgs);
        if !self.seeds.is_empty() && now >= self.next_join && self.m.alive_count() == 0 {
            self.next_join = now + self.probe_ms;
            msgs.extend(self.seeds.iter().map(|s| (*s, Body::Join)));
        }
        for (to, body) in msgs {
            self.send(to, body, io);
        }
        io.timers.push((self.tick_ms, ()));
        self.views(io);
    }

    fn on_datagram(&mut self, now: Millis, from: NodeAddr, bytes: &[u8], io: &mut Io<()>) {
        let Ok(env) = decode(bytes) else { return };
        let mut replies = Vec::new();
        if let Some(notice) = self.m.direct(&env.from, env.addr, env.incarnation, now) {
            replies.push((env.addr, Body::Members(vec![notice])));
        }
        self.m.handle(from, &env.body, now, &mut replies);
        for (to, body) in replies {
            self.send(to, body, io);
        }
        self.views(io);
    }
}

type FocaTimer = foca::Timer<FocaId>;

impl Runtime<FocaId> for Io<FocaTimer> {
    fn notify(&mut self, n: Notification<'_, FocaId>) {
        match n {
            Notification::MemberUp(m) => self.views.push(View::Up(index_of(&m.id))),
            Notification::MemberDown(m) => self.views.push(View::Down(index_of(&m.id))),
            _ => {}
        }
    }

    fn send_to(&mut self, to: FocaId, data: &[u8]) {
        self.sends.push((to.addr, data.to_vec()));
    }

    fn submit_after(&mut self, event: FocaTimer, after: Duration) {
        self.timers.push((after.as_millis() as u64, event));
    }
}

/// A foca member.
pub struct FocaMember {
    foca: Foca<FocaId, PostcardCodec, FocaRng, NoCustomBroadcast>,
    /// Datagrams or timers foca refused (malformed, too big, …).
    pub errors: u64,
}

fn foca_id(i: usize) -> FocaId {
    FocaId {
        id: node_id(i),
        addr: sim_addr(i),
        generation: 0,
    }
}

impl Protocol for FocaMember {
    type Timer = FocaTimer;

    fn new(i: usize, n: usize, t: &Timings, seed: u64) -> Self {
        FocaMember {
            foca: Foca::new(
                foca_id(i),
                foca_config_for(n, t),
                FocaRng(Rng::new(seed)),
                PostcardCodec,
            ),
            errors: 0,
        }
    }

    fn start(&mut self, seed: Option<usize>, _t: &Timings, io: &mut Io<FocaTimer>) {
        if let Some(s) = seed {
            if self.foca.announce(foca_id(s), io).is_err() {
                self.errors += 1;
            }
        }
    }

    fn preload(&mut self, n: usize, _now: Millis, io: &mut Io<FocaTimer>) {
        let me = self.foca.identity().id.clone();
        let all = (0..n)
            .map(foca_id)
            .filter(|f| f.id != me)
            .map(Member::alive);
        if self.foca.apply_many(all, false, io).is_err() {
            self.errors += 1;
        }
    }

    fn on_timer(&mut self, _now: Millis, timer: FocaTimer, io: &mut Io<FocaTimer>) {
        if self.foca.handle_timer(timer, io).is_err() {
            self.errors += 1;
        }
    }

    fn on_datagram(&mut self, _now: Millis, _from: NodeAddr, bytes: &[u8], io: &mut Io<FocaTimer>) {
        if self.foca.handle_data(bytes, io).is_err() {
            self.errors += 1;
        }
    }
}

struct Pending<T> {
    at: Millis,
    seq: u64,
    node: usize,
    timer: T,
}

impl<T> PartialEq for Pending<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl<T> Eq for Pending<T> {}
impl<T> PartialOrd for Pending<T> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Pending<T> {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// `n` members of one protocol over one simulated network, and what each
/// thinks of each other, kept incrementally (so that "has everyone seen
/// it?" costs O(1) per event, even at 1,000 members).
struct Sim<P: Protocol> {
    n: usize,
    net: SimNet,
    nodes: Vec<P>,
    timers: BinaryHeap<Reverse<Pending<P::Timer>>>,
    seq: u64,
    now: Millis,
    io: Io<P::Timer>,
    killed: Vec<bool>,
    n_killed: usize,
    /// `view[i * n + j]`: what i thinks of j.
    view: Vec<u8>,
    /// Members i holds up.
    up: Vec<u32>,
    /// Members that hold every other member up.
    full: usize,
    /// Members holding j down.
    down_by: Vec<u32>,
    /// When the last survivor saw killed member j down.
    detected: Vec<Option<Millis>>,
    n_detected: usize,
    /// Down declarations about members that were alive.
    fp_pairs: u64,
    fp_member: Vec<bool>,
    datagrams: u64,
}

impl<P: Protocol> Sim<P> {
    fn new(n: usize, loss: f64, seed: u64, t: &Timings, preload: bool) -> Self {
        let net = SimNet::new(
            n,
            NetConfig {
                loss,
                ..NetConfig::default()
            },
            mix64(seed ^ 0xA5A5),
        );
        let nodes = (0..n)
            .map(|i| P::new(i, n, t, mix64(seed ^ (i as u64).wrapping_mul(0x9E37))))
            .collect();
        let mut sim = Sim {
            n,
            net,
            nodes,
            timers: BinaryHeap::new(),
            seq: 0,
            now: SIM_EPOCH,
            io: Io::default(),
            killed: vec![false; n],
            n_killed: 0,
            view: vec![UNKNOWN; n * n],
            up: vec![0; n],
            full: 0,
            down_by: vec![0; n],
            detected: vec![None; n],
            n_detected: 0,
            fp_pairs: 0,
            fp_member: vec![false; n],
            datagrams: 0,
        };
        // Each member starts at its own phase within a probe period, as
        // real nodes would; node 0 is everyone's seed when not preloaded.
        let mut rng = Rng::new(mix64(seed));
        for i in 0..n {
            sim.set_now(SIM_EPOCH + rng.below(t.probe_ms as usize) as u64);
            if preload {
                for j in (0..n).filter(|j| *j != i) {
                    sim.see(i, j, true);
                }
                sim.nodes[i].preload(n, sim.now, &mut sim.io);
            }
            let seed = (!preload && i != 0).then_some(0);
            sim.nodes[i].start(seed, t, &mut sim.io);
            sim.flush(i);
        }
        sim.set_now(SIM_EPOCH);
        sim
    }

    fn set_now(&mut self, now: Millis) {
        self.now = now;
        self.net.now = now;
    }

    fn flush(&mut self, i: usize) {
        for (to, bytes) in self.io.sends.drain(..) {
            self.datagrams += 1;
            self.net.send(sim_addr(i), to, &bytes);
        }
        for (after, timer) in std::mem::take(&mut self.io.timers) {
            self.seq += 1;
            self.timers.push(Reverse(Pending {
                at: self.now + after,
                seq: self.seq,
                node: i,
                timer,
            }));
        }
        for v in std::mem::take(&mut self.io.views) {
            match v {
                View::Up(j) => self.see(i, j, true),
                View::Down(j) => self.see(i, j, false),
            }
        }
    }

    fn see(&mut self, i: usize, j: usize, up: bool) {
        if i == j {
            return;
        }
        let k = i * self.n + j;
        let (old, new) = (self.view[k], if up { UP } else { DOWN });
        if old == new {
            return;
        }
        self.view[k] = new;
        let all = self.n as u32 - 1;
        match old {
            UP => {
                if self.up[i] == all {
                    self.full -= 1;
                }
                self.up[i] -= 1;
            }
            DOWN => self.down_by[j] -= 1,
            _ => {}
        }
        if up {
            self.up[i] += 1;
            if self.up[i] == all {
                self.full += 1;
            }
            return;
        }
        self.down_by[j] += 1;
        if !self.killed[j] {
            self.fp_pairs += 1;
            self.fp_member[j] = true;
        } else {
            self.check_detected(j);
        }
    }

    fn check_detected(&mut self, j: usize) {
        if self.detected[j].is_none() && self.down_by[j] as usize >= self.n - self.n_killed {
            self.detected[j] = Some(self.now);
            self.n_detected += 1;
        }
    }

    /// Run until `until` or until `done` holds; true if it did.
    fn run(&mut self, until: Millis, done: impl Fn(&Self) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            let timer_at = self.timers.peek().map(|r| r.0.at).unwrap_or(Millis::MAX);
            let net_at = self.net.next_at().unwrap_or(Millis::MAX);
            let at = timer_at.min(net_at);
            if at > until {
                break;
            }
            self.set_now(at);
            if net_at <= timer_at {
                if let Some(to) = self.net.deliver_next() {
                    while let Some((from, bytes)) = self.net.inbox[to].pop_front() {
                        self.nodes[to].on_datagram(at, from, &bytes, &mut self.io);
                        self.flush(to);
                    }
                }
            } else {
                let Reverse(p) = self.timers.pop().expect("peeked");
                if !self.killed[p.node] {
                    self.nodes[p.node].on_timer(at, p.timer, &mut self.io);
                    self.flush(p.node);
                }
            }
        }
        self.set_now(until);
        false
    }

    fn kill(&mut self, i: usize) {
        self.killed[i] = true;
        self.n_killed += 1;
        self.net.down[i] = true;
        self.net.inbox[i].clear();
    }

    fn partition(&mut self, halves: bool) {
        let half = self.n / 2;
        for (i, g) in self.net.group.iter_mut().enumerate() {
            *g = if halves { 1 + u32::from(i >= half) } else { 0 };
        }
    }

    /// (datagrams, bytes) so far.
    fn traffic(&self) -> (u64, u64) {
        (self.datagrams, self.net.bytes_sent)
    }
}

/// Which implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `gossip::membership`.
    Ours,
    /// `foca` 2.
    Foca,
}

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scenario {
    /// Everyone starts knowing only node 0: until each sees all n up.
    Join,
    /// Converged, then `k` members killed at once: until every survivor
    /// sees each of them down.
    Kill(usize),
    /// Converged, this datagram loss, this many virtual seconds:
    /// members declared down while alive.
    Loss(f64, u64),
    /// Converged, split into halves for 30 s, healed: until everyone
    /// sees all n up again.
    Partition,
}

impl Scenario {
    /// A short label for the table.
    pub fn label(&self) -> String {
        match self {
            Scenario::Join => "join via one seed".into(),
            Scenario::Kill(k) => format!("kill {k}"),
            Scenario::Loss(l, s) => format!("{:.0} % loss, {} min", l * 100.0, s / 60),
            Scenario::Partition => "halves 30 s, heal".into(),
        }
    }
}

/// The result of one run.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Join/partition: the time to (re)converge; kill: for each killed
    /// member, the time until every survivor saw it down.
    pub times_ms: Vec<u64>,
    /// Measurements that did not finish within the limit.
    pub missed: usize,
    /// Alive members declared down by anyone (partition: not counted).
    pub fp_members: usize,
    /// Declarations ("i holds alive j down") behind them.
    pub fp_pairs: u64,
    /// Datagrams per member per second, over the measured span.
    pub datagrams_per_s: f64,
    /// Bytes per member per second, over the measured span.
    pub bytes_per_s: f64,
    /// CPU time of the run (user + system; the simulation is one thread),
    /// or its wall-clock time where /proc is missing.
    pub cpu: Duration,
}

/// User + system CPU time of this process so far (/proc/self/stat, in
/// clock ticks of 10 ms).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Join/kill/heal limits: a measurement not done by then is "missed".
const LIMIT_MS: u64 = 120_000;

/// Run one scenario at `n` members with `seed`.
pub fn run(side: Side, scenario: Scenario, n: usize, seed: u64, t: &Timings) -> Outcome {
    match side {
        Side::Ours => run_side::<Swim>(scenario, n, seed, t),
        Side::Foca => run_side::<FocaMember>(scenario, n, seed, t),
    }
}

fn run_side<P: Protocol>(scenario: Scenario, n: usize, seed: u64, t: &Timings) -> Outcome {
    let (wall, cpu0) = (Instant::now(), cpu_time());
    let loss = match scenario {
        Scenario::Loss(l, _) => l,
        _ => 0.0,
    };
    let mut sim = Sim::<P>::new(n, loss, seed, t, scenario != Scenario::Join);
    let mut out = Outcome::default();
    let (t0, traffic0) = match scenario {
        Scenario::Join => {
            let t0 = sim.now;
            match sim.run(t0 + LIMIT_MS, |s| s.full == s.n) {
                true => out.times_ms.push(sim.now - t0),
                false => out.missed += 1,
            }
            (t0, (0, 0))
        }
        Scenario::Kill(k) => {
            sim.run(SIM_EPOCH + 5_000, |_| false);
            let (t0, traffic0) = (sim.now, sim.traffic());
            let mut rng = Rng::new(mix64(seed ^ 0x4B11));
            let mut victims: Vec<usize> = (0..n).collect();
            rng.shuffle(&mut victims);
            victims.truncate(k.min(n - 1));
            for &v in &victims {
                sim.kill(v);
            }
            for &v in &victims {
                sim.check_detected(v);
            }
            let k = victims.len();
            sim.run(t0 + LIMIT_MS, |s| s.n_detected == k);
            for &v in &victims {
                match sim.detected[v] {
                    Some(at) => out.times_ms.push(at - t0),
                    None => out.missed += 1,
                }
            }
            (t0, traffic0)
        }
        Scenario::Loss(_, secs) => {
            let t0 = sim.now;
            sim.run(t0 + secs * 1_000, |_| false);
            (t0, (0, 0))
        }
        Scenario::Partition => {
            sim.run(SIM_EPOCH + 5_000, |_| false);
            let (t0, traffic0) = (sim.now, sim.traffic());
            sim.partition(true);
            sim.run(t0 + 30_000, |_| false);
            sim.partition(false);
            let healed = sim.now;
            match sim.run(healed + LIMIT_MS, |s| s.full == s.n) {
                true => out.times_ms.push(sim.now - healed),
                false => out.missed += 1,
            }
            (t0, traffic0)
        }
    };
    if scenario != Scenario::Partition {
        out.fp_members = sim.fp_member.iter().filter(|f| **f).count();
        out.fp_pairs = sim.fp_pairs;
    }
    let span = (sim.now - t0).max(1) as f64 / 1000.0;
    let (d, b) = sim.traffic();
    out.datagrams_per_s = (d - traffic0.0) as f64 / n as f64 / span;
    out.bytes_per_s = (b - traffic0.1) as f64 / n as f64 / span;
    out.cpu = match (cpu0, cpu_time()) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => wall.elapsed(),
    };
    out
}

fn quantile(v: &mut [u64], q: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn cell(scenario: Scenario, rs: &[Outcome]) -> String {
    let mut times: Vec<u64> = rs.iter().flat_map(|r| r.times_ms.clone()).collect();
    let missed: usize = rs.iter().map(|r| r.missed).sum();
    let secs = |ms: u64| format!("{:.1}", ms as f64 / 1000.0);
    let mut s = match scenario {
        Scenario::Loss(..) => {
            let members: usize = rs.iter().map(|r| r.fp_members).sum();
            let pairs: u64 = rs.iter().map(|r| r.fp_pairs).sum();
            return format!("{members} down ({pairs} views)");
        }
        _ if times.is_empty() => "—".to_string(),
        _ => format!(
            "{} / {} s",
            secs(quantile(&mut times, 0.5)),
            secs(quantile(&mut times, 1.0))
        ),
    };
    if missed > 0 {
        s += &format!(", {missed} > {} s", LIMIT_MS / 1000);
    }
    let fp: u64 = rs.iter().map(|r| r.fp_pairs).sum();
    if fp > 0 && scenario != Scenario::Partition {
        s += &format!(", {fp} false down");
    }
    s
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = v.collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Run the comparison and print a Markdown table.
pub fn bench(sizes: &[usize], seeds: u64, loss_minutes: u64) -> anyhow::Result<()> {
    let t = Timings::default();
    println!(
        "## Membership: ours against foca (virtual time, 1-20 ms one-way delay, {seeds} seeds each)\n"
    );
    println!(
        "timings: probe {} ms, ack timeout {} ms, suspect {} ms, reconnect {} ms, our tick {} ms\n",
        t.probe_ms, t.ack_ms, t.suspect_ms, t.reconnect_ms, t.tick_ms
    );
    println!("result: p50 / max seconds (join, kill, heal) or members declared down while alive (loss); traffic per member per second over the measured span; CPU: user + system seconds of all seeds' runs (one thread)\n");
    println!("| N | scenario | ours | dgram/s | B/s | CPU s | foca | dgram/s | B/s | CPU s |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &n in sizes {
        let mut scenarios = vec![Scenario::Join, Scenario::Kill(1)];
        if n / 10 > 1 {
            scenarios.push(Scenario::Kill(n / 10));
        }
        if loss_minutes > 0 {
            scenarios.extend([0.0, 0.05, 0.20].map(|l| Scenario::Loss(l, 60 * loss_minutes)));
        }
        scenarios.push(Scenario::Partition);
        for sc in scenarios {
            let mut row = format!("| {n} | {} |", sc.label());
            for side in [Side::Ours, Side::Foca] {
                let rs: Vec<Outcome> = (1..=seeds).map(|s| run(side, sc, n, s, &t)).collect();
                let cpu: f64 = rs.iter().map(|r| r.cpu.as_secs_f64()).sum();
                row += &format!(
                    " {} | {:.1} | {:.0} | {:.1} |",
                    cell(sc, &rs),
                    mean(rs.iter().map(|r| r.datagrams_per_s)),
                    mean(rs.iter().map(|r| r.bytes_per_s)),
                    cpu
                );
                eprintln!("  ({n} members, {}, {side:?}: {cpu:.1} s)", sc.label());
            }
            println!("{row}");
        }
    }
    Ok(())
}
