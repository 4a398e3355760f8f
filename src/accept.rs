//! Accept loops that stay cheap when accepting fails.
//!
//! Out of file descriptors, `accept` fails at once, every time, for as
//! long as the condition lasts: a loop that logs and retries spins a core
//! and writes the log at disk speed. [`AcceptErrors`] backs off (10 ms,
//! doubling to 1 s, reset by the next success) and logs the first failure
//! and then at most one line per [`LOG_EVERY`], with how many it did not
//! log.

use std::time::{Duration, Instant};

use tracing::warn;

/// The least and the most a failed accept waits before the next.
pub const BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));
/// At most one log line per this period while failures go on.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The state of one accept loop's failures.
#[derive(Debug, Default)]
pub struct AcceptErrors {
    delay: Duration,
    suppressed: u64,
    last_log: Option<Instant>,
}

impl AcceptErrors {
    /// A connection was accepted: the next failure starts over.
    pub fn ok(&mut self) {
        self.delay = Duration::ZERO;
    }

    /// One failure at `now`: how long to wait, and whether to log it (with
    /// the number of failures not logged since the last line).
    pub fn next(&mut self, now: Instant) -> (Duration, Option<u64>) {
        self.delay = (self.delay * 2).clamp(BACKOFF.0, BACKOFF.1);
        let log = match self.last_log {
            Some(t) if now.duration_since(t) < LOG_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last_log = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        };
        (self.delay, log)
    }

    /// [`AcceptErrors::next`], logging and waiting.
    pub async fn failed(&mut self, what: &str, error: &std::io::Error) {
        let (wait, log) = self.next(Instant::now());
        if let Some(unlogged) = log {
            warn!(listener = what, error = %error, unlogged, backoff_ms = wait.as_millis() as u64, "accept failed; backing off");
        }
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_storm_backs_off_and_logs_once_per_period() {
        let mut e = AcceptErrors::default();
        let t0 = Instant::now();
        let mut logged = 0;
        let mut waited = Duration::ZERO;
        // 20 s of failures, as fast as the backoff lets them come.
        let mut now = t0;
        let mut n = 0;
        while now.duration_since(t0) < Duration::from_secs(20) {
            let (wait, log) = e.next(now);
            if log.is_some() {
                logged += 1;
            }
            waited += wait;
            now += wait;
            n += 1;
        }
        assert!(n < 40, "{n} accepts in 20 s: not backing off");
        assert_eq!(logged, 2, "one line per 10 s");
        let (_, log) = e.next(now + LOG_EVERY);
        assert!(log.unwrap() >= 5, "the line says how many were not logged");
        e.ok();
        assert_eq!(
            e.next(now + LOG_EVERY * 3).0,
            BACKOFF.0,
            "a success resets it"
        );
    }
}
