//! A per-object work queue, as in Kubernetes controllers:
//! - **de-duplication**: a key queued twice is processed once; a key that
//!   changes while being processed is processed again afterwards, never
//!   concurrently with itself;
//! - **exponential backoff** per key after failures (`base · 2^n`, capped),
//!   reset by a success;
//! - **requeue-after** for periodic checks;
//! - **parking** after a permanent failure: the key is not retried, nor
//!   revisited by the periodic resync, until it is added again (the object
//!   or something it depends on changed).
//!
//! Time comes from `tokio::time`, so tests run it under a paused clock.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::model::ObjectKey;

#[derive(Default)]
struct State {
    ready: VecDeque<ObjectKey>,
    queued: BTreeSet<ObjectKey>,
    processing: BTreeSet<ObjectKey>,
    dirty: BTreeSet<ObjectKey>,
    delayed: BTreeMap<(Instant, u64), ObjectKey>,
    deadline_of: HashMap<ObjectKey, (Instant, u64)>,
    failures: HashMap<ObjectKey, u32>,
    parked: BTreeSet<ObjectKey>,
    seq: u64,
    shut: bool,
}

/// The keys of a queue by state ([`WorkQueue::depth`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Ready to run.
    pub ready: usize,
    /// Waiting for a retry or a requeue.
    pub delayed: usize,
    /// Being reconciled.
    pub processing: usize,
    /// Parked after a permanent failure.
    pub parked: usize,
}

/// The queue.
pub struct WorkQueue {
    state: Mutex<State>,
    wake: Notify,
    base: Duration,
    max: Duration,
}

impl WorkQueue {
    /// A queue whose backoff starts at `base` and stops growing at `max`.
    pub fn new(base: Duration, max: Duration) -> WorkQueue {
        WorkQueue {
            state: Mutex::default(),
            wake: Notify::new(),
            base,
            max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `key` now (a pending delayed run is brought forward; a parked
    /// key is unparked: it changed).
    pub fn add(&self, key: ObjectKey) {
        let mut s = self.lock();
        s.parked.remove(&key);
        if let Some(d) = s.deadline_of.remove(&key) {
            s.delayed.remove(&d);
        }
        Self::push(&mut s, key);
        drop(s);
        self.wake.notify_one();
    }

    fn push(s: &mut State, key: ObjectKey) {
        if s.processing.contains(&key) {
            s.dirty.insert(key);
        } else if s.queued.insert(key.clone()) {
            s.ready.push_back(key);
        }
    }

    /// Queue `key` after `delay` (keeps an earlier pending deadline).
    pub fn add_after(&self, key: ObjectKey, delay: Duration) {
        let at = Instant::now() + delay;
        let mut s = self.lock();
        if s.queued.contains(&key) {
            return;
        }
        if let Some(&(existing, seq)) = s.deadline_of.get(&key) {
            if existing <= at {
                return;
            }
            s.delayed.remove(&(existing, seq));
        }
        s.seq += 1;
        let seq = s.seq;
        s.delayed.insert((at, seq), key.clone());
        s.deadline_of.insert(key, (at, seq));
        drop(s);
        self.wake.notify_one();
    }

    /// Queue `key` now unless it is parked: the periodic resync, which
    /// must not retry what failed permanently.
    pub fn resync(&self, key: ObjectKey) {
        if !self.is_parked(&key) {
            self.add(key);
        }
    }

    /// Queue `key` after its backoff delay, and lengthen the next one
    /// (a transient failure). Returns the delay used.
    pub fn retry(&self, key: ObjectKey) -> Duration {
        let n = {
            let mut s = self.lock();
            s.parked.remove(&key);
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let delay = self.backoff(n);
        self.add_after(key, delay);
        delay
    }

    /// The backoff before retry number `n` (from 1).
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = 1u32
            .checked_shl(n.saturating_sub(1).min(31))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Forget `key`'s failures (after a success).
    pub fn forget(&self, key: &ObjectKey) {
        let mut s = self.lock();
        s.failures.remove(key);
        s.parked.remove(key);
    }

    /// Stop retrying `key` (a permanent failure): its backoff is reset, a
    /// pending delayed run dropped, and [`WorkQueue::resync`] skips it
    /// until [`WorkQueue::add`] brings it back.
    pub fn park(&self, key: &ObjectKey) {
        let mut s = self.lock();
        s.failures.remove(key);
        if let Some(d) = s.deadline_of.remove(key) {
            s.delayed.remove(&d);
        }
        s.parked.insert(key.clone());
    }

    /// Whether `key` is parked after a permanent failure.
    pub fn is_parked(&self, key: &ObjectKey) -> bool {
        self.lock().parked.contains(key)
    }

    /// Failures of `key` since its last success.
    pub fn failures(&self, key: &ObjectKey) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// The next key to process, waiting as long as needed; `None` once
    /// shut down. The caller must call [`WorkQueue::done`] afterwards.
    pub async fn next(&self) -> Option<ObjectKey> {
        loop {
            let notified = self.wake.notified();
            let sleep_until = {
                let mut s = self.lock();
                if s.shut {
                    return None;
                }
                let now = Instant::now();
                while let Some((&(at, seq), _)) = s.delayed.iter().next() {
                    if at > now {
                        break;
                    }
                    let key = s.delayed.remove(&(at, seq)).expect("first entry");
                    s.deadline_of.remove(&key);
                    Self::push(&mut s, key);
                }
                if let Some(key) = s.ready.pop_front() {
                    s.queued.remove(&key);
                    s.processing.insert(key.clone());
                    return Some(key);
                }
                s.delayed.keys().next().map(|(at, _)| *at)
            };
            match sleep_until {
                Some(at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Finish processing `key`; re-queue it if it changed meanwhile.
    pub fn done(&self, key: &ObjectKey) {
        let mut s = self.lock();
        s.processing.remove(key);
        if s.dirty.remove(key) {
            Self::push(&mut s, key.clone());
            drop(s);
            self.wake.notify_one();
        }
    }

    /// How many keys wait in each state now (metrics).
    pub fn depth(&self) -> QueueDepth {
        let s = self.lock();
        QueueDepth {
            ready: s.ready.len(),
            delayed: s.delayed.len(),
            processing: s.processing.len(),
            parked: s.parked.len(),
        }
    }

    /// Wake every waiter with `None` from now on.
    pub fn shutdown(&self) {
        self.lock().shut = true;
        self.wake.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;

    fn k(n: &str) -> ObjectKey {
        ObjectKey::new(Kind::VirtualMachine, None, n)
    }

    #[tokio::test(start_paused = true)]
    async fn duplicates_are_merged_and_changes_while_processing_rerun() {
        let q = WorkQueue::new(Duration::from_millis(100), Duration::from_secs(10));
        q.add(k("a"));
        q.add(k("a"));
        q.add(k("b"));
        assert_eq!(q.next().await, Some(k("a")));
        q.add(k("a")); // changed while processing
        assert_eq!(q.next().await, Some(k("b")));
        q.done(&k("b"));
        q.done(&k("a"));
        assert_eq!(q.next().await, Some(k("a")));
        q.done(&k("a"));
        let none = tokio::time::timeout(Duration::from_secs(60), q.next()).await;
        assert!(none.is_err(), "nothing else is queued");
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_up_to_the_cap_and_resets() {
        let q = WorkQueue::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<u128> = (0..6).map(|_| q.retry(k("a")).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
        q.forget(&k("a"));
        assert_eq!(q.retry(k("b")).as_millis(), 100);
        assert_eq!(q.failures(&k("a")), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_parked_key_waits_for_a_change_not_for_the_resync() {
        let q = WorkQueue::new(Duration::from_millis(100), Duration::from_secs(10));
        q.retry(k("a"));
        q.retry(k("a"));
        q.park(&k("a"));
        assert_eq!(q.failures(&k("a")), 0, "parking resets the backoff");
        q.resync(k("a"));
        q.resync(k("b"));
        assert_eq!(q.next().await, Some(k("b")));
        q.done(&k("b"));
        let none = tokio::time::timeout(Duration::from_secs(60), q.next()).await;
        assert!(
            none.is_err(),
            "the pending retry was dropped and resync skipped it"
        );
        q.add(k("a"));
        assert!(!q.is_parked(&k("a")), "a change unparks");
        assert_eq!(q.next().await, Some(k("a")));
        q.done(&k("a"));
        q.resync(k("a"));
        assert_eq!(q.next().await, Some(k("a")), "resync sees it again");
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_keys_come_back_at_their_time_and_add_brings_them_forward() {
        let q = WorkQueue::new(Duration::from_millis(100), Duration::from_secs(10));
        let t0 = Instant::now();
        q.add_after(k("late"), Duration::from_secs(5));
        q.add_after(k("early"), Duration::from_secs(2));
        assert_eq!(q.next().await, Some(k("early")));
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
        q.done(&k("early"));
        q.add(k("late"));
        assert_eq!(q.next().await, Some(k("late")));
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(2),
            "add brings a delayed key forward"
        );
        q.done(&k("late"));
        q.shutdown();
        assert_eq!(q.next().await, None);
    }
}
