//! One balancer's replica: local state, the write rules, and what goes to
//! and comes from peers.
//!
//! Local writes (`bind`, `forget`, `claim`) change the memory store first
//! and then queue a record for the sender task without waiting; remote
//! records go through [`judge`] under the same per-session lock.
//!
//! Operators' backend state changes are kept per route in a [`StateBook`]
//! (newest `at_ms` wins), sent when made and repeated with the next
//! heartbeats (datagrams get lost), all of them every few seconds, and
//! handed to a joining peer with the full state.

use super::auth::{self, Key, Reject, ReplayGuard};
use super::diag::{bump, unix_ms, Stats, LOG_EVERY_MS};
use super::membership::{Heard, Membership};
use super::versions::{judge, Meta, Verdict, Versions};
use super::wire::{self, Body, Header, Record, StateRecord, MAX_DATAGRAM};
use crate::lock::lock;
use crate::redact::redact;
use crate::store::{MemoryStore, SessionStore, StateBook, StateChange};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch, Notify};

/// Distinct route names interned from the wire (more than any cluster has).
pub const MAX_ROUTE_NAMES: usize = 4096;

/// Times a state change is sent: when made and with the next heartbeats.
const STATE_SENDS: u8 = 3;

/// Everything the background tasks share.
pub struct Node {
    /// Random per process start.
    pub id: u64,
    pub key: Key,
    /// Our replication endpoint as bound (announced in heartbeats).
    pub listen: SocketAddr,
    /// The group, when the multicast socket is up.
    pub group: Option<SocketAddr>,
    pub mcast: Option<Arc<UdpSocket>>,
    pub ucast: Arc<UdpSocket>,
    /// Configured unicast peers (without ourselves).
    pub static_peers: Vec<SocketAddr>,
    pub mem: Arc<MemoryStore>,
    pub versions: Versions,
    routes: Mutex<HashSet<Arc<str>>>,
    /// Newest operator state change per route (own and peers').
    pub states: StateBook,
    /// Routes whose change is still to be sent, with the sends left.
    states_due: Mutex<HashMap<Arc<str>, u8>>,
    /// Wakes the state sender when a change is published here.
    pub states_kick: Notify,
    outbox: mpsc::Sender<Record>,
    pub members: Mutex<Membership>,
    replay: Mutex<ReplayGuard>,
    pub stats: Stats,
    /// A session's record is refreshed on the wire at most this often.
    pub touch_every_ms: u64,
    pub heartbeat: Duration,
    /// Upper bound on records accepted in one full-state transfer.
    pub max_records: usize,
    /// False while the last send round had a failure.
    pub send_ok: AtomicBool,
    /// Warm-up: until the first full-state transfer (or a short deadline),
    /// a local miss may be a session we have not received yet.
    pub warm: AtomicBool,
    warm_tx: watch::Sender<bool>,
    /// Full-state transfers being fetched right now.
    pub pulls: AtomicUsize,
    pub started: Instant,
    stop: watch::Receiver<()>,
}

/// A peer heard for the first time (or under a new id after a restart):
/// its state is to be fetched and it is to be greeted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewPeer {
    /// The peer's random per-process id.
    pub node: u64,
    /// Where its replication endpoint is reached.
    pub addr: SocketAddr,
}

/// What [`Node::new`] needs.
pub struct Parts {
    pub id: u64,
    pub key: Key,
    pub listen: SocketAddr,
    pub group: Option<SocketAddr>,
    pub mcast: Option<Arc<UdpSocket>>,
    pub ucast: Arc<UdpSocket>,
    pub static_peers: Vec<SocketAddr>,
    pub mem: Arc<MemoryStore>,
    pub outbox: mpsc::Sender<Record>,
    pub heartbeat: Duration,
    pub drop_time: Duration,
    pub max_sessions: usize,
    pub stop: watch::Receiver<()>,
}

impl Node {
    pub fn new(p: Parts) -> Node {
        let max_records = p.max_sessions.saturating_mul(2).saturating_add(1024);
        let idle = Duration::from_millis(p.mem.idle_ms());
        Node {
            id: p.id,
            key: p.key,
            listen: p.listen,
            group: p.group,
            mcast: p.mcast,
            ucast: p.ucast,
            static_peers: p.static_peers,
            touch_every_ms: (p.mem.idle_ms() / 4).max(1),
            mem: p.mem,
            versions: Versions::new(max_records, idle),
            routes: Mutex::new(HashSet::new()),
            states: StateBook::new(MAX_ROUTE_NAMES),
            states_due: Mutex::new(HashMap::new()),
            states_kick: Notify::new(),
            outbox: p.outbox,
            members: Mutex::new(Membership::new(p.drop_time)),
            replay: Mutex::new(ReplayGuard::default()),
            stats: Stats::default(),
            heartbeat: p.heartbeat,
            max_records,
            send_ok: AtomicBool::new(true),
            warm: AtomicBool::new(false),
            warm_tx: watch::channel(false).0,
            pulls: AtomicUsize::new(0),
            started: Instant::now(),
            stop: p.stop,
        }
    }

    /// Run `fut` until it ends or the store is dropped.
    pub fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.changed() => {}
                _ = fut => {}
            }
        });
    }

    // ---- warm-up ----

    /// Whether a local miss is final (false during warm-up).
    pub fn is_warm(&self) -> bool {
        self.warm.load(Ordering::Relaxed)
    }

    /// End the warm-up (idempotent).
    pub fn set_warm(&self, why: &'static str) {
        if !self.warm.swap(true, Ordering::Relaxed) {
            self.warm_tx.send_replace(true);
            tracing::debug!(why, after = ?self.started.elapsed(), "multicast store: warm-up over");
        }
    }

    /// Wait (at most `limit`) for the warm-up to end.
    pub async fn wait_warm(&self, limit: Duration) {
        if self.is_warm() {
            return;
        }
        let mut rx = self.warm_tx.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|w| *w)).await;
    }

    // ---- local operations (hot path: never wait) ----

    /// The route of `id`, sending a refresh now and then so peers do not
    /// expire a session that is only used here. The memory store says when
    /// a refresh is due (at most once per quarter idle timeout, however
    /// often the session is hit), so the common hit costs no more than in
    /// the memory store; only then is the version table consulted, and the
    /// refresh skipped if a peer's record refreshed the session meanwhile.
    pub fn lookup(&self, id: &str) -> Option<Arc<str>> {
        let view = self.mem.get_shared(id, self.touch_every_ms, u64::MAX)?;
        if view.touch_due {
            self.touch(id, &view.route);
        }
        Some(view.route)
    }

    fn touch(&self, id: &str, route: &Arc<str>) {
        let now = self.versions.now();
        let mut slot = self.versions.slot(id);
        if let Some(mut m) = slot.get() {
            if m.route.as_deref() == Some(&**route)
                && now.saturating_sub(m.fresh_ms) >= self.touch_every_ms
            {
                m.fresh_ms = now;
                let version = m.version;
                slot.set(m);
                self.send(id, Some(route.clone()), version, 0);
            }
        }
    }

    pub fn bind(&self, id: &str, route: &Arc<str>) {
        let now = self.versions.now();
        let mut slot = self.versions.slot(id);
        self.mem.bind(id, route);
        match slot.get() {
            Some(mut m) if m.route.as_deref() == Some(&**route) => {
                if now.saturating_sub(m.fresh_ms) >= self.touch_every_ms {
                    m.fresh_ms = now;
                    let version = m.version;
                    slot.set(m);
                    self.send(id, Some(route.clone()), version, 0);
                }
            }
            old => {
                let version = old.map_or(0, |m| m.version).saturating_add(1);
                slot.set(Meta {
                    version,
                    route: Some(route.clone()),
                    fresh_ms: now,
                });
                self.send(id, Some(route.clone()), version, 0);
            }
        }
    }

    pub fn forget(&self, id: &str) {
        let now = self.versions.now();
        let mut slot = self.versions.slot(id);
        self.mem.forget(id);
        // Only sessions we know are replicated: ids are client-chosen, and
        // a tombstone for every unknown one would be free amplification.
        if let Some(mut m) = slot.get() {
            if m.route.is_some() {
                m.version = m.version.saturating_add(1);
                m.route = None;
                m.fresh_ms = now;
                let version = m.version;
                slot.set(m);
                self.send(id, None, version, 0);
            }
        }
    }

    /// See [`crate::store::SessionStore::claim`]: keep a move another
    /// balancer already made, else move to `proposed` with a new version.
    pub fn claim(&self, id: &str, from: Option<&str>, proposed: Arc<str>) -> Arc<str> {
        let now = self.versions.now();
        let mut slot = self.versions.slot(id);
        if let Some(current) = self.mem.get(id) {
            if current == proposed || Some(&*current) != from {
                return current;
            }
        }
        let version = slot.get().map_or(0, |m| m.version).saturating_add(1);
        self.mem.bind(id, &proposed);
        slot.set(Meta {
            version,
            route: Some(proposed.clone()),
            fresh_ms: now,
        });
        self.send(id, Some(proposed.clone()), version, 0);
        tracing::debug!(session = %redact(id), from = ?from, to = %proposed, version, "claimed orphaned session");
        proposed
    }

    /// Queue a record for the sender task; drop and count when full.
    fn send(&self, id: &str, route: Option<Arc<str>>, version: u64, idle_ms: u32) {
        let rec = Record {
            id: id.into(),
            route,
            version,
            idle_ms,
        };
        if !rec.fits() {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.outbox.try_send(rec) {
            let n = bump(&self.stats.dropped);
            if self.stats.drop_log.ready(unix_ms(), LOG_EVERY_MS) {
                tracing::warn!(dropped_total = n, "multicast store: send queue full, records dropped (peers catch up on the next refresh); raise store.write_queue");
            }
        }
    }

    // ---- remote records ----

    /// Apply a peer's record if it wins over ours.
    pub fn apply(&self, rec: Record) {
        let route = rec.route.map(|r| self.intern(r));
        let now = self.versions.now();
        let idle = u64::from(rec.idle_ms);
        let mut slot = self.versions.slot(&rec.id);
        let local = slot.get();
        let verdict = judge(
            rec.version,
            route.as_deref(),
            local.as_ref().map(|m| (m.version, m.route.as_deref())),
        );
        if verdict == Verdict::Ignore {
            return;
        }
        match &route {
            Some(r) if idle < self.mem.idle_ms() => {
                // Keep the younger of the two ages.
                let idle = self
                    .mem
                    .get_idle(&rec.id)
                    .map_or(idle, |(_, local)| local.min(idle));
                self.mem.bind_aged(&rec.id, r, idle);
            }
            _ if verdict == Verdict::Replace => self.mem.forget(&rec.id),
            _ => {}
        }
        let fresh_ms = now.saturating_sub(idle);
        match local {
            Some(mut m) if verdict == Verdict::Refresh => {
                m.fresh_ms = m.fresh_ms.max(fresh_ms);
                slot.set(m);
            }
            _ => {
                slot.set(Meta {
                    version: rec.version,
                    route,
                    fresh_ms,
                });
            }
        }
        bump(&self.stats.applied);
    }

    fn intern(&self, r: Arc<str>) -> Arc<str> {
        let mut names = lock(&self.routes);
        if let Some(known) = names.get(&*r) {
            return known.clone();
        }
        if names.len() < MAX_ROUTE_NAMES {
            names.insert(r.clone());
        }
        r
    }

    /// Every live session with its version, for a joining peer. Runs on a
    /// blocking thread: it walks the whole store.
    pub fn snapshot(&self) -> Vec<Record> {
        let mut live = Vec::new();
        self.mem.for_each(|id, route, idle| {
            if live.len() < self.max_records {
                live.push((Box::<str>::from(id), route.clone(), idle));
            }
        });
        live.into_iter()
            .filter_map(|(id, route, idle)| {
                let version = match self.versions.slot(&id).get() {
                    Some(m) if m.route.as_deref() == Some(&*route) => m.version,
                    // A write is in flight; its own record follows.
                    Some(_) => return None,
                    None => 0,
                };
                let rec = Record {
                    id,
                    route: Some(route),
                    version,
                    idle_ms: idle.min(u64::from(u32::MAX)) as u32,
                };
                rec.fits().then_some(rec)
            })
            .collect()
    }

    // ---- operators' state changes ----

    /// A change made through this balancer: remember it and have the
    /// sender tell every peer (now, and again with the next heartbeats).
    pub fn publish_state(&self, route: &str, change: StateChange) {
        let route = self.intern(route.into());
        let rec = StateRecord { route, change };
        if rec.fits() && self.states.merge(&rec.route, change) {
            lock(&self.states_due).insert(rec.route, STATE_SENDS);
            self.states_kick.notify_one();
        }
    }

    /// A peer's state change: kept if newer than what we know. A change
    /// dated further in the future than clocks may disagree would outrank
    /// every later action: refused (`false`).
    pub fn apply_state(&self, rec: StateRecord) -> bool {
        if rec.change.is_from_the_future(unix_ms()) {
            return false;
        }
        let route = self.intern(rec.route);
        if self.states.merge(&route, rec.change) {
            tracing::debug!(route = %route, state = %rec.change.state, at_ms = rec.change.at_ms, "multicast store: backend state from a peer");
        }
        true
    }

    /// Peers' state changes from one message; refused ones are counted
    /// (once per message) like other bad messages.
    pub fn apply_states(&self, states: Vec<StateRecord>, from: SocketAddr) {
        let mut refused = false;
        for s in states {
            refused |= !self.apply_state(s);
        }
        if refused {
            self.reject(Reject::Future, from);
        }
    }

    /// The changes still to be sent (each send counts down its repeats).
    pub fn take_due_states(&self) -> Vec<StateRecord> {
        let mut due = lock(&self.states_due);
        let mut out = Vec::with_capacity(due.len());
        due.retain(|route, left| {
            if let Some(change) = self.states.get(route) {
                out.push(StateRecord {
                    route: route.clone(),
                    change,
                });
            }
            *left = left.saturating_sub(1);
            *left > 0
        });
        out
    }

    /// Every known change (periodic refresh, full-state transfer).
    pub fn state_records(&self) -> Vec<StateRecord> {
        self.states
            .all()
            .into_iter()
            .map(|(route, change)| StateRecord { route, change })
            .collect()
    }

    // ---- messages ----

    /// Sign a message with a fresh timestamp and nonce.
    pub fn seal(&self, body: &Body) -> Vec<u8> {
        wire::seal(&self.key, self.id, unix_ms(), rand::random(), body)
    }

    /// Authenticate, check freshness and replays. `Ok(None)`: our own
    /// message (multicast loops back to us).
    pub fn accept(&self, bytes: &[u8], max_len: usize) -> Result<Option<(Header, Body)>, Reject> {
        let (h, body) = wire::open(&self.key, bytes, max_len)?;
        if h.node == self.id {
            return Ok(None);
        }
        let now = unix_ms();
        auth::check_fresh(h.ts_ms, now)?;
        lock(&self.replay).check(h.node, h.ts_ms, h.nonce, now)?;
        Ok(Some((h, body)))
    }

    /// Count a dropped message; log at most every 10 s.
    pub fn reject(&self, why: Reject, from: SocketAddr) {
        let n = bump(&self.stats.rejected);
        if self.stats.reject_log.ready(unix_ms(), LOG_EVERY_MS) {
            tracing::warn!(
                from = %from,
                reason = why.as_str(),
                rejected_total = n,
                "multicast store: dropped a message (check that every balancer uses the same key_file and synchronised clocks; further drops are counted and logged at most every 10s)"
            );
        }
    }

    /// A datagram from the group or the unicast socket. Returns the peer
    /// when it is one not heard before (or restarted): the receive loop
    /// then fetches its full state and greets it (see
    /// `transport::welcome`), so this module never starts a transfer.
    pub fn on_datagram(
        &self,
        bytes: &[u8],
        from: SocketAddr,
        via_unicast: bool,
    ) -> Option<NewPeer> {
        match self.accept(bytes, MAX_DATAGRAM) {
            Err(why) => self.reject(why, from),
            Ok(None) => {}
            Ok(Some((h, Body::Heartbeat { listen, records }))) => {
                return self.on_heartbeat(h.node, listen, records, from, via_unicast)
            }
            Ok(Some((_, Body::Records(records)))) => {
                for r in records {
                    self.apply(r);
                }
            }
            Ok(Some((_, Body::States(states)))) => self.apply_states(states, from),
            Ok(Some(_)) => self.reject(Reject::Unexpected, from),
        }
        None
    }

    fn on_heartbeat(
        &self,
        node: u64,
        listen: SocketAddr,
        records: u64,
        from: SocketAddr,
        via_unicast: bool,
    ) -> Option<NewPeer> {
        // A peer listening on 0.0.0.0 is reached at the address it sent from.
        let addr = if listen.ip().is_unspecified() {
            SocketAddr::new(from.ip(), listen.port())
        } else {
            listen
        };
        let heard = lock(&self.members).heard(node, addr, records, via_unicast, Instant::now());
        let Some(Heard::New { replaced }) = heard else {
            return None;
        };
        match replaced {
            Some(old) => {
                tracing::info!(peer = %addr, node = %format_args!("{node:016x}"), replaces = %format_args!("{old:016x}"), records, "multicast store: peer restarted")
            }
            None => {
                tracing::info!(peer = %addr, node = %format_args!("{node:016x}"), records, "multicast store: peer joined")
            }
        }
        Some(NewPeer { node, addr })
    }

    /// Drop silent peers (logged once each).
    pub fn expire_peers(&self) {
        for (node, p) in lock(&self.members).expire(Instant::now()) {
            tracing::info!(peer = %p.addr, node = %format_args!("{node:016x}"), "multicast store: peer dropped (no heartbeat within drop_time)");
        }
    }

    /// Where unicast copies go: static peers and peers heard by unicast.
    pub fn unicast_targets(&self) -> Vec<SocketAddr> {
        let mut v = self.static_peers.clone();
        for a in lock(&self.members).unicast_addrs() {
            if !v.contains(&a) && a != self.listen {
                v.push(a);
            }
        }
        v
    }
}
