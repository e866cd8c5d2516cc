//! Peer-to-peer session store for clusters without Redis, in the spirit of
//! Tomcat Tribes: every balancer holds every live session and tells its
//! peers about every change.
//!
//! * **Membership** (`membership`): each balancer sends a heartbeat every
//!   `heartbeat_interval` to the multicast group and, by unicast, to every
//!   static peer; a peer silent for `drop_time` is dropped.
//! * **Replication** (`node`, `transport`): `bind`, `forget` and
//!   `claim` change the local [`MemoryStore`] first and queue a record
//!   (id, route or tombstone, version, idle time) for a sender task that
//!   packs records into datagrams. The request path never waits. Activity
//!   is refreshed on the wire at most once per quarter idle timeout, so a
//!   session used on one balancer does not expire on the others; refreshes
//!   also repair a record lost in transit. Ids longer than 256 bytes and
//!   route names longer than 255 bytes are kept locally only.
//! * **Ordering** (`versions`): each record carries a per-session version;
//!   higher wins, ties are broken deterministically, so concurrent writers
//!   converge.
//! * **Backend states** (`node`): an operator's drain/disable/stop/enable
//!   made through one balancer is sent to every peer (repeated with the
//!   next heartbeats and every 10 s, since datagrams get lost); the newest
//!   change per route wins.
//! * **Full state** (`sync`): on first hearing a peer, a balancer asks it
//!   over TCP for its whole state (sessions and backend states); a restarted balancer gets every session
//!   back from any survivor, and a healed partition resynchronises. Peers
//!   answer a newcomer's first heartbeat with one of their own, so this
//!   starts within milliseconds. Until the first transfer arrives (or no
//!   peer answers within two heartbeats), a local miss is
//!   [`Cached::Unknown`] and `fetch` waits for the transfer, at most
//!   `store.timeout`.
//! * **Authentication** (`auth`, `wire`): every datagram and frame is
//!   signed with HMAC-SHA256 under the shared `key_file` secret; stale,
//!   future-dated, replayed, malformed or unsigned messages are dropped and
//!   counted in `status().errors`.
//!
//! # Security
//!
//! Session ids are credentials. The HMAC gives integrity and origin, not
//! confidentiality: ids cross the network in clear text, so the replication
//! network must be a trusted LAN (or be encrypted underneath, e.g.
//! WireGuard). Ids are never logged whole. Balancer clocks must agree
//! within 30 s (NTP), or messages are refused as stale.
//!
//! # Network
//!
//! UDP to the group port, UDP and TCP to each `replication_listen` port
//! must be allowed between balancers. Multicast TTL is 1 (one LAN). Where
//! multicast does not work, list the peers in `store.peers`: unicast alone
//! is enough. A balancer that only one side lists learns the way back from
//! its heartbeats.
//!
//! For several balancers on one host over loopback, Linux delivers
//! multicast on `lo` once the socket names 127.0.0.1 as its interface
//! (which `multicast_interface = "127.0.0.1"` does). Hosts where that does
//! not work need `ip link set lo multicast on` and
//! `ip route add 224.0.0.0/4 dev lo` (as root).

/// Public for fuzzing (`fuzz/`, `tests/fuzz_smoke.rs`): message
/// authentication, freshness and replay checks.
pub mod auth;
mod diag;
mod membership;
mod net;
mod node;
mod sync;
mod transport;
mod versions;
/// Public for fuzzing (`fuzz/`, `tests/fuzz_smoke.rs`): the datagram and
/// frame format, its encoder and its decoder.
pub mod wire;

use super::{
    read_key_file, Cached, MemoryStore, SessionCounts, SessionStore, StateChange, StoreError,
    StoreFuture, StoreStatus,
};
use crate::config::raw::StoreSection;
use crate::lock::lock;
use diag::get;
use node::{Node, Parts};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The multicast/unicast peer store (`kind = "multicast"`).
///
/// Its background tasks (receivers, sender, heartbeats, full-state
/// server) stop when it is dropped, which closes its sockets.
pub struct MulticastStore {
    node: Arc<Node>,
    /// Longest wait of a request for the warm-up (`store.timeout`).
    fetch_timeout: Duration,
    /// Dropping it cancels every background task.
    _stop: watch::Sender<()>,
}

/// Replication figures beyond [`StoreStatus`] (admin API, tests).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MulticastStats {
    /// This process's node id (hex).
    pub node_id: String,
    /// The replication endpoint as bound.
    pub listen: String,
    /// Whether the multicast socket is up (else static peers only).
    pub multicast: bool,
    pub peers: usize,
    /// Messages dropped: malformed, unauthenticated, stale, replayed.
    pub rejected: u64,
    pub send_errors: u64,
    pub sync_errors: u64,
    pub dropped_writes: u64,
    /// Full-state transfers received.
    pub syncs: u64,
    /// Records applied from peers.
    pub applied: u64,
    /// Sessions and tombstones whose version is remembered.
    pub versions: usize,
}

impl MulticastStore {
    /// Bind the sockets and start replicating. Fails when the key file is
    /// missing or unsafe, the replication endpoint cannot be bound, or
    /// multicast cannot be set up and no static peers are configured.
    pub async fn start(
        cfg: &StoreSection,
        idle_timeout: Duration,
        max_sessions: usize,
    ) -> Result<Arc<Self>, StoreError> {
        let fail = StoreError::Multicast;
        let path = cfg.key_file.as_ref().ok_or_else(|| {
            fail("store.key_file is required: a file with a shared secret of at least 16 bytes, mode 0600".into())
        })?;
        let secret = read_key_file(path).map_err(fail)?;
        let key = auth::Key::new(&secret).ok_or_else(|| fail("unusable key".into()))?;

        let (ucast, tcp, listen) =
            net::bind_endpoint(cfg.replication_listen)
                .await
                .map_err(|e| {
                    fail(format!(
                        "cannot bind replication_listen {} (UDP and TCP): {e}",
                        cfg.replication_listen
                    ))
                })?;
        let mut static_peers: Vec<SocketAddr> = Vec::new();
        for p in &cfg.peers {
            if *p != listen && *p != cfg.replication_listen && !static_peers.contains(p) {
                static_peers.push(*p);
            }
        }
        let mcast = match net::multicast_socket(cfg.multicast_group, cfg.multicast_interface) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) if !static_peers.is_empty() => {
                tracing::warn!(group = %cfg.multicast_group, interface = %cfg.multicast_interface, error = %e,
                    "multicast store: multicast unavailable; replicating to static peers only");
                None
            }
            Err(e) => {
                return Err(fail(format!(
                    "cannot join multicast group {} on {}: {e} (fix the interface/route, e.g. `ip route add 224.0.0.0/4 dev <if>`, or list the other balancers in store.peers)",
                    cfg.multicast_group, cfg.multicast_interface
                )))
            }
        };

        let mem = MemoryStore::new(idle_timeout, max_sessions);
        mem.start_sweeper();
        let (out_tx, out_rx) = mpsc::channel(cfg.write_queue.max(16));
        let (stop_tx, stop_rx) = watch::channel(());
        let ucast = Arc::new(ucast);
        let node = Arc::new(Node::new(Parts {
            id: rand::random(),
            key,
            listen,
            group: mcast.as_ref().map(|_| cfg.multicast_group),
            mcast: mcast.clone(),
            ucast: ucast.clone(),
            static_peers,
            mem,
            outbox: out_tx,
            heartbeat: cfg.heartbeat_interval.max(Duration::from_millis(10)),
            drop_time: cfg.drop_time,
            max_sessions,
            stop: stop_rx,
        }));

        node.spawn(transport::receive(node.clone(), ucast, true));
        if let Some(m) = mcast {
            node.spawn(transport::receive(node.clone(), m, false));
        }
        node.spawn(transport::send_records(node.clone(), out_rx));
        node.spawn(transport::send_states(node.clone()));
        node.spawn(sync::serve(node.clone(), tcp));
        node.spawn(transport::heartbeats(node.clone()));

        tracing::info!(
            node = %format_args!("{:016x}", node.id),
            listen = %listen,
            group = ?node.group,
            peers = ?node.static_peers,
            "multicast session store started"
        );
        Ok(Arc::new(MulticastStore {
            node,
            fetch_timeout: cfg.timeout,
            _stop: stop_tx,
        }))
    }

    /// This process's random node id.
    pub fn node_id(&self) -> u64 {
        self.node.id
    }

    /// The replication endpoint as bound (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.node.listen
    }

    /// Whether the warm-up is over: the first full-state transfer arrived,
    /// or no peer answered within two heartbeats. Until then a local miss
    /// is [`Cached::Unknown`] and [`SessionStore::fetch`] waits for it.
    pub fn is_warm(&self) -> bool {
        self.node.is_warm()
    }

    /// Replication counters.
    pub fn stats(&self) -> MulticastStats {
        let s = &self.node.stats;
        MulticastStats {
            node_id: format!("{:016x}", self.node.id),
            listen: self.node.listen.to_string(),
            multicast: self.node.mcast.is_some(),
            peers: lock(&self.node.members).len(),
            rejected: get(&s.rejected),
            send_errors: get(&s.send_errors),
            sync_errors: get(&s.sync_errors),
            dropped_writes: get(&s.dropped),
            syncs: get(&s.syncs),
            applied: get(&s.applied),
            versions: self.node.versions.len(),
        }
    }
}

impl SessionStore for MulticastStore {
    fn lookup(&self, id: &str) -> Cached {
        // Every balancer holds every live record, so a miss is a miss,
        // except while a (re)started balancer is still receiving them.
        match self.node.lookup(id) {
            Some(r) => Cached::Found(r),
            None if !self.node.is_warm() => Cached::Unknown,
            None => Cached::Absent,
        }
    }

    /// Only asked during warm-up: wait (at most `store.timeout`) for the
    /// first full-state transfer, then look again.
    fn fetch<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Arc<str>>> {
        Box::pin(async move {
            self.node.wait_warm(self.fetch_timeout).await;
            self.node.lookup(id)
        })
    }

    fn bind(&self, id: &str, route: &Arc<str>) {
        self.node.bind(id, route);
    }

    fn forget(&self, id: &str) {
        self.node.forget(id);
    }

    fn claim<'a>(
        &'a self,
        id: &'a str,
        from: Option<&'a str>,
        proposed: Arc<str>,
    ) -> StoreFuture<'a, Arc<str>> {
        Box::pin(std::future::ready(self.node.claim(id, from, proposed)))
    }

    /// Kept in the local memory store's unconfirmed tier only: no record
    /// goes to the peers for an id no backend confirmed.
    fn remember_unconfirmed(&self, id: &str, route: &Arc<str>) {
        self.node.mem.remember_unconfirmed(id, route);
    }

    fn lookup_unconfirmed(&self, id: &str) -> Option<Arc<str>> {
        self.node.mem.lookup_unconfirmed(id)
    }

    fn sessions(&self, route: &str) -> u64 {
        self.node.mem.sessions(route)
    }

    fn counts(&self) -> Vec<(Arc<str>, SessionCounts)> {
        self.node.mem.counts()
    }

    fn status(&self) -> StoreStatus {
        let s = &self.node.stats;
        StoreStatus {
            kind: "multicast",
            healthy: self.node.send_ok.load(Ordering::Relaxed),
            errors: get(&s.rejected) + get(&s.send_errors) + get(&s.sync_errors),
            dropped_writes: get(&s.dropped),
            peers: lock(&self.node.members).addrs(),
            ..self.node.mem.status()
        }
    }

    /// Remembered at once and sent to every peer (multicast and unicast)
    /// by a background task; never waits.
    fn publish_state(&self, route: &str, change: StateChange) {
        self.node.publish_state(route, change);
    }

    fn states(&self) -> Vec<(Arc<str>, StateChange)> {
        self.node.states.all()
    }

    // `set_routes`: nothing to do. Counts come from the memory store, which
    // counts every route it sees, and state changes are kept for any route
    // (bounded) so a backend added back by a reload keeps its last one.
}

#[cfg(test)]
mod tests;
