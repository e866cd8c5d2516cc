//! Message authentication: HMAC-SHA256 with the shared key, timestamp
//! freshness and replay detection.
//!
//! This gives integrity and origin (only holders of the key can speak), not
//! confidentiality: session ids cross the network in clear text, so the
//! replication network must be a trusted LAN (or the traffic must be
//! encrypted below us, e.g. WireGuard/IPsec).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::collections::{HashMap, HashSet, VecDeque};

type HmacSha256 = Hmac<Sha256>;

/// Length of the authentication tag that ends every message.
pub const TAG_LEN: usize = 32;

/// Messages whose timestamp is further than this from our clock are
/// refused (stale replays; badly skewed clocks).
pub const MAX_SKEW_MS: u64 = 30_000;

/// Nonces remembered per sender; older ones are covered by a timestamp
/// floor (see [`ReplayGuard`]).
const NONCES_PER_SENDER: usize = 4096;

/// Senders (node ids) remembered; the least recently heard is forgotten.
const MAX_SENDERS: usize = 256;

/// The shared secret, ready to sign and verify.
#[derive(Clone)]
pub struct Key {
    mac: HmacSha256,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A key from the shared secret (any length; `read_key_file` enforces
    /// at least 16 bytes).
    pub fn new(secret: &[u8]) -> Option<Key> {
        HmacSha256::new_from_slice(secret)
            .ok()
            .map(|mac| Key { mac })
    }

    /// The tag over `data`.
    pub fn tag(&self, data: &[u8]) -> [u8; TAG_LEN] {
        let mut m = self.mac.clone();
        m.update(data);
        let out = m.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&out[..TAG_LEN]);
        tag
    }

    /// Whether `tag` authenticates `data` (constant-time comparison).
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        let mut m = self.mac.clone();
        m.update(data);
        m.verify_slice(tag).is_ok()
    }
}

/// Why an incoming message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Could not be parsed (length, magic, version, kind, payload).
    Malformed,
    /// Authentication tag missing or wrong (wrong key or tampered).
    Unauthenticated,
    /// Timestamp more than [`MAX_SKEW_MS`] in the past.
    Stale,
    /// Timestamp more than [`MAX_SKEW_MS`] in the future.
    Future,
    /// Same sender and nonce seen before.
    Replayed,
    /// Authentic but not expected here (wrong kind for the channel, wrong
    /// request, out of order, over a limit).
    Unexpected,
}

impl Reject {
    /// The reason as the rejection warning prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed",
            Reject::Unauthenticated => "unauthenticated (wrong key or tampered)",
            Reject::Stale => "stale timestamp",
            Reject::Future => "timestamp in the future",
            Reject::Replayed => "replayed",
            Reject::Unexpected => "unexpected",
        }
    }
}

/// Refuse timestamps outside `now ± MAX_SKEW_MS`.
pub fn check_fresh(ts_ms: u64, now_ms: u64) -> Result<(), Reject> {
    if ts_ms.saturating_add(MAX_SKEW_MS) < now_ms {
        Err(Reject::Stale)
    } else if ts_ms > now_ms.saturating_add(MAX_SKEW_MS) {
        Err(Reject::Future)
    } else {
        Ok(())
    }
}

/// Recent nonces of one sender.
#[derive(Default)]
struct Window {
    seen: HashSet<u64>,
    order: VecDeque<(u64, u64)>,
    /// Highest timestamp among forgotten nonces: anything at or below it
    /// is refused, so forgetting a nonce never reopens a replay.
    floor_ts: u64,
    last_heard: u64,
}

/// Detects replayed messages with bounded memory.
///
/// Per sender it remembers the last [`NONCES_PER_SENDER`] nonces and the
/// highest timestamp among those it forgot; a message is new only if its
/// timestamp is above that floor and its nonce is not remembered. Only
/// authenticated messages reach it, so senders are real peers.
#[derive(Default)]
pub struct ReplayGuard {
    senders: HashMap<u64, Window>,
}

impl ReplayGuard {
    /// Record (node, nonce) or refuse it as a replay.
    pub fn check(&mut self, node: u64, ts_ms: u64, nonce: u64, now_ms: u64) -> Result<(), Reject> {
        if !self.senders.contains_key(&node) && self.senders.len() >= MAX_SENDERS {
            if let Some(oldest) = self
                .senders
                .iter()
                .min_by_key(|(_, w)| w.last_heard)
                .map(|(n, _)| *n)
            {
                self.senders.remove(&oldest);
            }
        }
        let w = self.senders.entry(node).or_default();
        if ts_ms <= w.floor_ts || w.seen.contains(&nonce) {
            return Err(Reject::Replayed);
        }
        w.last_heard = now_ms;
        w.seen.insert(nonce);
        w.order.push_back((nonce, ts_ms));
        while w.order.len() > NONCES_PER_SENDER {
            if let Some((n, ts)) = w.order.pop_front() {
                w.seen.remove(&n);
                w.floor_ts = w.floor_ts.max(ts);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_verify_only_with_the_same_key_and_data() {
        let k = Key::new(b"0123456789abcdef0123").unwrap();
        let other = Key::new(b"0123456789abcdef0124").unwrap();
        let tag = k.tag(b"hello");
        assert!(k.verify(b"hello", &tag));
        assert!(!other.verify(b"hello", &tag));
        assert!(!k.verify(b"hellp", &tag));
        assert!(!k.verify(b"hello", &tag[..31]));
        assert!(!k.verify(b"hello", &[]));
    }

    #[test]
    fn freshness_window() {
        let now = 1_000_000;
        assert_eq!(check_fresh(now, now), Ok(()));
        assert_eq!(check_fresh(now - MAX_SKEW_MS, now), Ok(()));
        assert_eq!(check_fresh(now - MAX_SKEW_MS - 1, now), Err(Reject::Stale));
        assert_eq!(check_fresh(now + MAX_SKEW_MS + 1, now), Err(Reject::Future));
        assert_eq!(check_fresh(0, now), Err(Reject::Stale));
        assert_eq!(check_fresh(u64::MAX, now), Err(Reject::Future));
    }

    #[test]
    fn replays_are_refused_and_memory_is_bounded() {
        let mut g = ReplayGuard::default();
        assert_eq!(g.check(1, 100, 7, 100), Ok(()));
        assert_eq!(g.check(1, 100, 7, 100), Err(Reject::Replayed));
        // Same nonce from another sender is fine.
        assert_eq!(g.check(2, 100, 7, 100), Ok(()));
        // Push nonce 7 of sender 1 out of the window: its timestamp becomes
        // the floor, so the replay is still refused.
        for n in 0..NONCES_PER_SENDER as u64 {
            assert_eq!(g.check(1, 200 + n, 1_000 + n, 200), Ok(()));
        }
        assert_eq!(g.senders[&1].seen.len(), NONCES_PER_SENDER);
        assert_eq!(g.check(1, 100, 7, 300), Err(Reject::Replayed));
        // Senders are bounded too.
        for node in 10..(10 + 2 * MAX_SENDERS as u64) {
            let _ = g.check(node, 500, 1, 500 + node);
        }
        assert!(g.senders.len() <= MAX_SENDERS);
    }
}
