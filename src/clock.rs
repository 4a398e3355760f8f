//! Wall-clock time as documents, statuses and state files carry it:
//! milliseconds since the Unix epoch. A clock set before 1970 reads 0
//! rather than failing: timestamps order events for people, while merges
//! order by generation, never by clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// `t` in milliseconds since the Unix epoch (file times, horizons).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Now, in nanoseconds since the Unix epoch: names that must differ
/// between two calls on one node.
pub fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn milliseconds_since_the_epoch_and_zero_before_it() {
        assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_millis(1234)), 1234);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        let (a, b) = (now_ms(), now_ms());
        assert!(b >= a && a > 1_700_000_000_000, "{a} {b}");
        assert!(now_nanos() / 1_000_000 >= u128::from(a));
    }
}
