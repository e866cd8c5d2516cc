//! Who else is out there: peers announced by heartbeats, dropped when
//! silent for `drop_time`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One live peer.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its replication endpoint (UDP records, TCP full-state transfer).
    pub addr: SocketAddr,
    pub last_heard: Instant,
    /// Records it said it holds in its last heartbeat.
    pub records: u64,
    /// Heard by unicast: multicast may not reach it, so we unicast to it
    /// too (makes one-sided static `peers` lists work).
    pub unicast: bool,
}

/// What a heartbeat changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// Already known.
    Known,
    /// A node id not seen before (or seen again after being dropped):
    /// fetch its state. `replaced` is a previous node at the same address
    /// (a restarted balancer).
    New { replaced: Option<u64> },
}

/// The peer table.
#[derive(Debug)]
pub struct Membership {
    peers: HashMap<u64, Peer>,
    drop_after: Duration,
}

/// More peers than any home lab has; beyond it new node ids are ignored
/// until someone drops (bounded memory even with a leaked key).
const MAX_PEERS: usize = 128;

impl Membership {
    pub fn new(drop_after: Duration) -> Self {
        Membership {
            peers: HashMap::new(),
            drop_after,
        }
    }

    /// A heartbeat from `node`, reachable at `addr`.
    pub fn heard(
        &mut self,
        node: u64,
        addr: SocketAddr,
        records: u64,
        via_unicast: bool,
        now: Instant,
    ) -> Option<Heard> {
        if let Some(p) = self.peers.get_mut(&node) {
            p.last_heard = now;
            p.records = records;
            p.addr = addr;
            p.unicast |= via_unicast;
            return Some(Heard::Known);
        }
        let replaced = self
            .peers
            .iter()
            .find(|(_, p)| p.addr == addr)
            .map(|(n, _)| *n);
        if let Some(old) = replaced {
            self.peers.remove(&old);
        }
        if self.peers.len() >= MAX_PEERS {
            return None;
        }
        self.peers.insert(
            node,
            Peer {
                addr,
                last_heard: now,
                records,
                unicast: via_unicast,
            },
        );
        Some(Heard::New { replaced })
    }

    /// Remove and return peers silent for longer than the drop time.
    pub fn expire(&mut self, now: Instant) -> Vec<(u64, Peer)> {
        let dead: Vec<u64> = self
            .peers
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.last_heard) > self.drop_after)
            .map(|(n, _)| *n)
            .collect();
        dead.into_iter()
            .filter_map(|n| self.peers.remove(&n).map(|p| (n, p)))
            .collect()
    }

    /// Whether `node` is a live peer at `addr`.
    pub fn is(&self, node: u64, addr: SocketAddr) -> bool {
        self.peers.get(&node).is_some_and(|p| p.addr == addr)
    }

    /// Live peers' endpoints, sorted (status API).
    pub fn addrs(&self) -> Vec<String> {
        let mut v: Vec<String> = self.peers.values().map(|p| p.addr.to_string()).collect();
        v.sort();
        v
    }

    /// Peers heard by unicast.
    pub fn unicast_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.peers.values().filter(|p| p.unicast).map(|p| p.addr)
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn join_known_restart_and_drop() {
        let t0 = Instant::now();
        let mut m = Membership::new(Duration::from_secs(3));
        assert_eq!(
            m.heard(1, addr(1), 0, false, t0),
            Some(Heard::New { replaced: None })
        );
        assert_eq!(m.heard(1, addr(1), 5, false, t0), Some(Heard::Known));
        assert_eq!(
            m.heard(2, addr(2), 0, true, t0),
            Some(Heard::New { replaced: None })
        );
        assert_eq!(m.unicast_addrs().collect::<Vec<_>>(), vec![addr(2)]);
        // Node 3 restarts balancer 1 on the same address.
        assert_eq!(
            m.heard(3, addr(1), 0, false, t0),
            Some(Heard::New { replaced: Some(1) })
        );
        assert_eq!(m.len(), 2);
        let later = t0 + Duration::from_secs(2);
        m.heard(3, addr(1), 0, false, later);
        let dropped = m.expire(t0 + Duration::from_millis(3_500));
        assert_eq!(dropped.iter().map(|d| d.0).collect::<Vec<_>>(), vec![2]);
        assert_eq!(m.addrs(), vec![addr(1).to_string()]);
        // Heard again after the drop: new again, so state is fetched again.
        assert_eq!(
            m.heard(2, addr(2), 0, false, t0 + Duration::from_secs(4)),
            Some(Heard::New { replaced: None })
        );
    }

    #[test]
    fn bounded() {
        let t0 = Instant::now();
        let mut m = Membership::new(Duration::from_secs(3));
        for n in 0..(MAX_PEERS as u64 + 10) {
            m.heard(n, addr(n as u16 + 1), 0, false, t0);
        }
        assert_eq!(m.len(), MAX_PEERS);
    }
}
