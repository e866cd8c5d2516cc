//! Node-level rules without a network: versions on local writes, touch
//! coalescing, remote records, claims.

use super::auth::Key;
use super::node::{Node, Parts};
use super::wire::Record;
use crate::store::{MemoryStore, SessionStore};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

struct Rig {
    node: Arc<Node>,
    out: mpsc::Receiver<Record>,
    _stop: watch::Sender<()>,
}

impl Rig {
    async fn new(idle: Duration) -> Rig {
        let ucast = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let (tx, out) = mpsc::channel(16);
        let (stop, stop_rx) = watch::channel(());
        let node = Arc::new(Node::new(Parts {
            id: 1,
            key: Key::new(b"0123456789abcdef").unwrap(),
            listen: ucast.local_addr().unwrap(),
            group: None,
            mcast: None,
            ucast,
            static_peers: vec![],
            mem: MemoryStore::new(idle, 100),
            outbox: tx,
            heartbeat: Duration::from_millis(100),
            drop_time: Duration::from_secs(1),
            max_sessions: 100,
            stop: stop_rx,
        }));
        Rig {
            node,
            out,
            _stop: stop,
        }
    }

    /// Records queued so far.
    fn sent(&mut self) -> Vec<(String, Option<String>, u64)> {
        let mut v = Vec::new();
        while let Ok(r) = self.out.try_recv() {
            v.push((r.id.to_string(), r.route.map(|r| r.to_string()), r.version));
        }
        v
    }
}

fn rec(id: &str, route: Option<&str>, version: u64, idle_ms: u32) -> Record {
    Record {
        id: id.into(),
        route: route.map(Arc::from),
        version,
        idle_ms,
    }
}

fn s(x: &str) -> Option<String> {
    Some(x.to_owned())
}

#[tokio::test]
async fn local_writes_bump_versions_and_replicate() {
    let mut r = Rig::new(Duration::from_secs(60)).await;
    let a: Arc<str> = "a".into();
    let b: Arc<str> = "b".into();
    r.node.bind("S", &a);
    r.node.bind("S", &a); // same route: a touch, coalesced away
    r.node.bind("S", &b);
    r.node.forget("S");
    r.node.forget("S"); // already gone: nothing to send
    r.node.forget("never-seen"); // unknown ids are not replicated
    assert_eq!(
        r.sent(),
        vec![
            ("S".into(), s("a"), 1),
            ("S".into(), s("b"), 2),
            ("S".into(), None, 3)
        ]
    );
    r.node.bind("S", &a);
    assert_eq!(r.sent(), vec![("S".into(), s("a"), 4)]);
}

#[tokio::test]
async fn lookups_refresh_peers_at_most_every_quarter_idle() {
    let mut r = Rig::new(Duration::from_millis(400)).await;
    let a: Arc<str> = "a".into();
    r.node.bind("S", &a);
    assert_eq!(r.sent().len(), 1);
    for _ in 0..10 {
        assert_eq!(r.node.lookup("S").as_deref(), Some("a"));
    }
    assert!(r.sent().is_empty(), "touches within idle/4 are coalesced");
    // Used every 30 ms (never idle locally), but the wire needs a refresh
    // every 100 ms: one per 100 ms, same version, idle 0.
    let t0 = std::time::Instant::now();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        r.node.lookup("S");
    }
    let most = t0.elapsed().as_millis() as usize / 100;
    let sent = r.sent();
    assert!(
        !sent.is_empty() && sent.len() <= most,
        "{} refreshes in {:?}",
        sent.len(),
        t0.elapsed()
    );
    assert!(
        sent.iter().all(|x| *x == ("S".into(), s("a"), 1)),
        "{sent:?}"
    );
}

#[tokio::test]
async fn remote_records_follow_versions() {
    let mut r = Rig::new(Duration::from_secs(60)).await;
    let n = r.node.clone();
    n.apply(rec("S", Some("a"), 1, 0));
    assert_eq!(n.lookup("S").as_deref(), Some("a"));
    n.apply(rec("S", Some("b"), 3, 0));
    assert_eq!(n.lookup("S").as_deref(), Some("b"));
    n.apply(rec("S", Some("c"), 2, 0)); // older: ignored
    assert_eq!(n.lookup("S").as_deref(), Some("b"));
    n.apply(rec("S", Some("a"), 3, 0)); // tie, "a" < "b": ignored
    assert_eq!(n.lookup("S").as_deref(), Some("b"));
    n.apply(rec("S", Some("c"), 3, 0)); // tie, "c" > "b": wins
    assert_eq!(n.lookup("S").as_deref(), Some("c"));
    n.apply(rec("S", None, 4, 0)); // tombstone
    assert_eq!(n.lookup("S"), None);
    n.apply(rec("S", Some("a"), 4, 0)); // loses to the tombstone
    assert_eq!(n.lookup("S"), None);
    // A local write continues from the highest version seen.
    n.bind("S", &Arc::from("d"));
    assert_eq!(r.sent(), vec![("S".into(), s("d"), 5)]);
    // Remote records are never echoed back.
    r.node.apply(rec("T", Some("a"), 1, 0));
    assert!(r.sent().is_empty());
    assert_eq!(r.node.mem.status().sessions, 2);
}

#[tokio::test]
async fn replicated_age_is_kept() {
    let r = Rig::new(Duration::from_millis(500)).await;
    let n = r.node.clone();
    // MemoryStore cannot date a session before its own start (its clock
    // starts at 0): let it run for an idle timeout first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Already idle 450 of 500 ms elsewhere: expires here soon too.
    n.apply(rec("S", Some("a"), 1, 450));
    // Idle beyond the timeout: not resurrected.
    n.apply(rec("T", Some("a"), 1, 600));
    assert_eq!(n.mem.status().sessions, 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(n.lookup("S"), None);
}

#[tokio::test]
async fn claim_keeps_a_move_already_made() {
    let mut r = Rig::new(Duration::from_secs(60)).await;
    let n = r.node.clone();
    n.apply(rec("S", Some("dead"), 1, 0));
    // Another balancer already moved it to n1 (replicated record).
    n.apply(rec("S", Some("n1"), 2, 0));
    assert_eq!(&*n.claim("S", Some("dead"), "n2".into()), "n1");
    assert!(r.sent().is_empty());
    // Orphan still on its dead route: we move it, one version up.
    n.apply(rec("O", Some("dead"), 7, 0));
    assert_eq!(&*n.claim("O", Some("dead"), "n2".into()), "n2");
    assert_eq!(&*n.claim("O", Some("dead"), "n3".into()), "n2");
    assert_eq!(r.sent(), vec![("O".into(), s("n2"), 8)]);
    // Unknown session: bound to the proposal.
    assert_eq!(&*n.claim("U", None, "n3".into()), "n3");
    assert_eq!(r.sent(), vec![("U".into(), s("n3"), 1)]);
}

#[tokio::test]
async fn full_queue_drops_and_counts() {
    let r = Rig::new(Duration::from_secs(60)).await;
    let a: Arc<str> = "a".into();
    for i in 0..40 {
        r.node.bind(&format!("S{i}"), &a);
    }
    // Queue of 16: the rest are dropped, the local state is complete.
    assert_eq!(super::diag::get(&r.node.stats.dropped), 24);
    assert_eq!(r.node.mem.status().sessions, 40);
}

#[tokio::test]
async fn snapshot_carries_versions() {
    let r = Rig::new(Duration::from_secs(60)).await;
    r.node.apply(rec("S", Some("a"), 5, 0));
    r.node.bind("T", &Arc::from("b"));
    let mut snap = r.node.snapshot();
    snap.sort_by(|x, y| x.id.cmp(&y.id));
    let got: Vec<(&str, Option<&str>, u64)> = snap
        .iter()
        .map(|r| (&*r.id, r.route.as_deref(), r.version))
        .collect();
    assert_eq!(got, vec![("S", Some("a"), 5), ("T", Some("b"), 1)]);
}

#[tokio::test]
async fn messages_are_authenticated_fresh_and_unique() {
    use super::auth::Reject;
    use super::wire::{seal, Body, MAX_DATAGRAM};
    let r = Rig::new(Duration::from_secs(60)).await;
    let n = &r.node;
    let body = Body::Records(vec![rec("S", Some("a"), 1, 0)]);
    let now = super::diag::unix_ms();
    let good = seal(&n.key, 2, now, 1, &body);
    assert!(matches!(n.accept(&good, MAX_DATAGRAM), Ok(Some(_))));
    assert_eq!(n.accept(&good, MAX_DATAGRAM).err(), Some(Reject::Replayed));
    // Same nonce from another node is not a replay.
    assert!(matches!(
        n.accept(&seal(&n.key, 3, now, 1, &body), MAX_DATAGRAM),
        Ok(Some(_))
    ));
    let stale = seal(&n.key, 2, now - 31_000, 2, &body);
    assert_eq!(n.accept(&stale, MAX_DATAGRAM).err(), Some(Reject::Stale));
    let future = seal(&n.key, 2, now + 31_000, 3, &body);
    assert_eq!(n.accept(&future, MAX_DATAGRAM).err(), Some(Reject::Future));
    let other = Key::new(b"fedcba9876543210").unwrap();
    let forged = seal(&other, 2, now, 4, &body);
    assert_eq!(
        n.accept(&forged, MAX_DATAGRAM).err(),
        Some(Reject::Unauthenticated)
    );
    let mut flipped = seal(&n.key, 2, now, 5, &body);
    flipped[20] ^= 4;
    assert_eq!(
        n.accept(&flipped, MAX_DATAGRAM).err(),
        Some(Reject::Unauthenticated)
    );
    // Our own multicast echo: ignored, not an error.
    assert!(matches!(
        n.accept(&seal(&n.key, n.id, now, 6, &body), MAX_DATAGRAM),
        Ok(None)
    ));
    // Counted through on_datagram.
    let from: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    for bad in [&good, &stale, &future, &forged, &flipped] {
        n.on_datagram(bad, from, true);
    }
    n.on_datagram(b"garbage", from, true);
    assert_eq!(super::diag::get(&n.stats.rejected), 6);
    assert_eq!(
        n.mem.status().sessions,
        0,
        "nothing applied from rejected datagrams"
    );
    // A sync frame is not accepted as a datagram.
    n.on_datagram(&seal(&n.key, 2, now, 7, &Body::SyncRequest), from, true);
    assert_eq!(super::diag::get(&n.stats.rejected), 7);
}

#[tokio::test]
async fn state_changes_merge_newest_and_refuse_bad_ones() {
    use super::wire::{seal, Body, StateRecord, MAX_DATAGRAM};
    use crate::admin_state::AdminState;
    use crate::store::StateChange;
    let r = Rig::new(Duration::from_secs(60)).await;
    let n = &r.node;
    let ch = |state, at_ms| StateChange { state, at_ms };
    let srec = |route: &str, state, at_ms| StateRecord {
        route: route.into(),
        change: ch(state, at_ms),
    };
    let now = super::diag::unix_ms();
    let from: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();

    // Local publish: known at once, due for three sends.
    n.publish_state("t1", ch(AdminState::Draining, now - 10));
    assert_eq!(n.states.get("t1"), Some(ch(AdminState::Draining, now - 10)));
    for _ in 0..3 {
        assert_eq!(n.take_due_states().len(), 1);
    }
    assert!(n.take_due_states().is_empty(), "repeats are bounded");
    // An older local publish changes nothing and sends nothing.
    n.publish_state("t1", ch(AdminState::Stopped, now - 20));
    assert!(n.take_due_states().is_empty());

    // From a peer: newer wins, older is ignored.
    let msg = |nonce, states| seal(&n.key, 2, now, nonce, &Body::States(states));
    n.on_datagram(
        &msg(1, vec![srec("t1", AdminState::Active, now - 30)]),
        from,
        true,
    );
    assert_eq!(n.states.get("t1"), Some(ch(AdminState::Draining, now - 10)));
    n.on_datagram(
        &msg(
            2,
            vec![
                srec("t1", AdminState::Stopped, now - 5),
                srec("t2", AdminState::Disabled, now - 5),
            ],
        ),
        from,
        true,
    );
    assert_eq!(n.states.get("t1"), Some(ch(AdminState::Stopped, now - 5)));
    assert_eq!(n.states.get("t2"), Some(ch(AdminState::Disabled, now - 5)));
    assert_eq!(super::diag::get(&n.stats.rejected), 0);

    // A change dated an hour ahead would outrank every later action:
    // refused and counted; the good one beside it still applies.
    n.on_datagram(
        &msg(
            3,
            vec![
                srec("t1", AdminState::Active, now + 3_600_000),
                srec("t3", AdminState::Draining, now),
            ],
        ),
        from,
        true,
    );
    assert_eq!(n.states.get("t1"), Some(ch(AdminState::Stopped, now - 5)));
    assert_eq!(n.states.get("t3"), Some(ch(AdminState::Draining, now)));
    assert_eq!(super::diag::get(&n.stats.rejected), 1);

    // Replayed, stale and forged state messages are dropped and counted.
    let good = msg(4, vec![srec("t4", AdminState::Stopped, now)]);
    n.on_datagram(&good, from, true);
    n.on_datagram(&good, from, true);
    let stale = seal(
        &n.key,
        2,
        now - 31_000,
        5,
        &Body::States(vec![srec("t5", AdminState::Stopped, now - 31_000)]),
    );
    n.on_datagram(&stale, from, true);
    let other = Key::new(b"fedcba9876543210").unwrap();
    let forged = seal(
        &other,
        2,
        now,
        6,
        &Body::States(vec![srec("t6", AdminState::Stopped, now)]),
    );
    n.on_datagram(&forged, from, true);
    // A full-state frame is not accepted as a datagram.
    let sync = seal(
        &n.key,
        2,
        now,
        7,
        &Body::SyncStates {
            request: 1,
            states: vec![srec("t7", AdminState::Stopped, now)],
        },
    );
    n.on_datagram(&sync, from, true);
    assert_eq!(super::diag::get(&n.stats.rejected), 5);
    let mut routes: Vec<String> = n
        .states
        .all()
        .into_iter()
        .map(|(r, _)| r.to_string())
        .collect();
    routes.sort();
    assert_eq!(routes, ["t1", "t2", "t3", "t4"]);
    assert!(n.accept(&good, MAX_DATAGRAM).is_err());
    assert_eq!(n.state_records().len(), 4);
}
