//! Counters and rate-limited logging for the peer store (session ids are
//! redacted with `routing::session::redact`, like everywhere else).

use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::store::unix_ms;

/// Lets one event through per period; the rest are only counted.
#[derive(Default)]
pub struct Every {
    /// `unix_ms()` of the last event let through, 0 if none yet.
    last: AtomicU64,
}

impl Every {
    /// True at most once per `period_ms`.
    pub fn ready(&self, now_ms: u64, period_ms: u64) -> bool {
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now_ms.saturating_sub(last) < period_ms {
            return false;
        }
        self.last
            .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// Everything the store counts; `errors` in the status is the sum of the
/// failure counters.
#[derive(Default)]
pub struct Stats {
    /// Datagrams and frames dropped as malformed, unauthenticated, stale,
    /// replayed or unexpected.
    pub rejected: AtomicU64,
    /// Datagrams the OS refused to send.
    pub send_errors: AtomicU64,
    /// Full-state transfers that failed (either direction).
    pub sync_errors: AtomicU64,
    /// Records not sent because the outgoing queue was full.
    pub dropped: AtomicU64,
    /// Full-state transfers received completely.
    pub syncs: AtomicU64,
    /// Records applied from peers (datagrams and full-state transfers).
    pub applied: AtomicU64,
    /// Rate limits for the warnings above.
    pub reject_log: Every,
    pub send_log: Every,
    pub sync_log: Every,
    pub drop_log: Every,
}

/// Warnings about the same problem are logged at most this often.
pub const LOG_EVERY_MS: u64 = 10_000;

pub fn bump(c: &AtomicU64) -> u64 {
    c.fetch_add(1, Ordering::Relaxed) + 1
}

pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limits() {
        let e = Every::default();
        assert!(e.ready(1_000, 10_000));
        assert!(!e.ready(5_000, 10_000));
        assert!(e.ready(11_000, 10_000));
    }
}
