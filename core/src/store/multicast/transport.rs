//! The UDP side: the receive loops, the batching sender and the heartbeat
//! loop.

use super::diag::{bump, unix_ms, LOG_EVERY_MS};
use super::node::{NewPeer, Node};
use super::sync;
use super::wire::{
    state_batches, Body, Record, StateRecord, DATAGRAM_RECORD_BUDGET, DATAGRAM_STATE_BUDGET,
    MAX_DATAGRAM,
};
use crate::store::SessionStore;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

impl Node {
    /// Announce ourselves to the group and the unicast targets.
    pub async fn heartbeat_now(&self) {
        let records = self.mem.status().sessions;
        self.broadcast(&Body::Heartbeat {
            listen: self.listen,
            records,
        })
        .await;
    }

    /// Send one message to the group and to every unicast target. Each
    /// copy is sealed separately (its own nonce), so a peer reached both
    /// ways does not see the second copy as a replay.
    pub async fn broadcast(&self, body: &Body) {
        let mut failure: Option<io::Error> = None;
        if let (Some(sock), Some(group)) = (&self.mcast, self.group) {
            if let Err(e) = sock.send_to(&self.seal(body), group).await {
                failure = Some(e);
            }
        }
        for addr in self.unicast_targets() {
            if let Err(e) = self.ucast.send_to(&self.seal(body), addr).await {
                failure = Some(e);
            }
        }
        self.send_ok.store(failure.is_none(), Ordering::Relaxed);
        if let Some(e) = failure {
            let n = bump(&self.stats.send_errors);
            if self.stats.send_log.ready(unix_ms(), LOG_EVERY_MS) {
                tracing::warn!(error = %e, send_errors_total = n, "multicast store: cannot send to peers (multicast route/interface or firewall?)");
            }
        }
    }

    /// Send state changes to the group and the unicast targets, in as
    /// many datagrams as they need.
    pub async fn broadcast_states(&self, states: Vec<StateRecord>) {
        for batch in state_batches(states, DATAGRAM_STATE_BUDGET) {
            self.broadcast(&Body::States(batch)).await;
        }
    }
}

/// Receive datagrams until cancelled.
pub async fn receive(node: Arc<Node>, sock: Arc<UdpSocket>, via_unicast: bool) {
    // Larger than any valid datagram: a bigger one arrives truncated to
    // the buffer and is refused as oversized.
    let mut buf = vec![0u8; MAX_DATAGRAM * 2];
    let mut failures = 0u32;
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, from)) => {
                failures = 0;
                if let Some(peer) = node.on_datagram(&buf[..n], from, via_unicast) {
                    welcome(&node, peer);
                }
            }
            // ICMP errors for earlier sends to a peer that is down.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                ) => {}
            Err(e) => {
                failures += 1;
                if node.stats.send_log.ready(unix_ms(), LOG_EVERY_MS) {
                    tracing::warn!(error = %e, "multicast store: receive failed");
                }
                if failures > 10 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// A new (or restarted) peer: fetch its full state, and answer with a
/// heartbeat now rather than at the next tick, so it finds us and fetches
/// our state at once.
fn welcome(node: &Arc<Node>, peer: NewPeer) {
    node.spawn(sync::pull(node.clone(), peer.node, peer.addr));
    let me = node.clone();
    node.spawn(async move { me.heartbeat_now().await });
}

/// Drain the outgoing queue, packing records into datagrams.
pub async fn send_records(node: Arc<Node>, mut rx: mpsc::Receiver<Record>) {
    let mut carry: Option<Record> = None;
    loop {
        let first = match carry.take() {
            Some(r) => r,
            None => match rx.recv().await {
                Some(r) => r,
                None => return,
            },
        };
        let mut size = first.encoded_len();
        let mut batch = vec![first];
        while let Ok(r) = rx.try_recv() {
            let len = r.encoded_len();
            if size + len > DATAGRAM_RECORD_BUDGET {
                carry = Some(r);
                break;
            }
            size += len;
            batch.push(r);
        }
        node.broadcast(&Body::Records(batch)).await;
    }
}

/// Send operators' state changes as soon as they are published here.
pub async fn send_states(node: Arc<Node>) {
    loop {
        node.states_kick.notified().await;
        let due = node.take_due_states();
        node.broadcast_states(due).await;
    }
}

/// Every known state change is sent again this often, so a peer that
/// missed one (lost datagrams, a partition shorter than `drop_time`)
/// catches up without a full-state transfer.
const STATES_REFRESH: Duration = Duration::from_secs(10);

/// Longest warm-up, even while a full-state transfer is still running.
const WARMUP_LIMIT: Duration = Duration::from_secs(10);

/// Heartbeats, peer expiry, end of warm-up and version-table cleanup.
pub async fn heartbeats(node: Arc<Node>) {
    let mut tick = tokio::time::interval(node.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sweep_every = Duration::from_millis(node.touch_every_ms.clamp(1_000, 60_000));
    // Entries not refreshed for two idle timeouts belong to sessions that
    // expired everywhere.
    let max_age = node
        .mem
        .idle_ms()
        .saturating_mul(2)
        .saturating_add(node.touch_every_ms);
    let mut last_sweep = Instant::now();
    let mut last_states = Instant::now();
    loop {
        tick.tick().await;
        node.heartbeat_now().await;
        if last_states.elapsed() >= STATES_REFRESH {
            last_states = Instant::now();
            // Repeats are covered by sending everything.
            let _ = node.take_due_states();
            node.broadcast_states(node.state_records()).await;
        } else {
            let due = node.take_due_states();
            if !due.is_empty() {
                node.broadcast_states(due).await;
            }
        }
        node.expire_peers();
        if !node.is_warm() {
            // Nobody answered within two heartbeats (we are the first), or
            // every transfer failed, or one is taking too long: a miss is
            // a miss from now on.
            let waited = node.started.elapsed();
            let idle = node.pulls.load(Ordering::Relaxed) == 0;
            if (idle && waited >= 2 * node.heartbeat) || waited >= WARMUP_LIMIT {
                node.set_warm("deadline");
            }
        }
        if last_sweep.elapsed() >= sweep_every {
            last_sweep = Instant::now();
            let removed = node.versions.sweep(max_age);
            if removed > 0 {
                tracing::debug!(
                    removed,
                    "multicast store: forgot versions of expired sessions"
                );
            }
        }
    }
}
