//! Multicast peer store, library level: several `MulticastStore`s in one
//! process talking over real loopback sockets (multicast group, unicast
//! UDP, TCP full-state transfer).
//!
//! Multicast on `lo`: Linux delivers it once the socket names 127.0.0.1 as
//! its interface, which the store does. Where it does not, the host needs
//! (as root) `ip link set lo multicast on` and `ip route add 224.0.0.0/4
//! dev lo`, which `scripts/test.sh` does; the tests never change the host
//! themselves. The multicast checks fail (never pass unseen) when a probe
//! shows loopback multicast does not work; the static-peer checks do not
//! need it.
mod common;

use common::{free_port, tempdir};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use stickgate::backend::AdminState;
use stickgate::config::raw::StoreSection;
use stickgate::config::StoreKind;
use stickgate::store::multicast::MulticastStore;
use stickgate::store::{Cached, SessionStore, StateChange};

const IDLE: Duration = Duration::from_secs(600);
/// Bound on every "eventually" in these tests.
const WITHIN: Duration = Duration::from_secs(10);
/// Most a claim may take to reach the other store (and simultaneous claims
/// to converge): one datagram each way, with room for a busy 2-core machine.
/// Figures are as fine as `eventually`'s 10 ms poll.
const CONVERGE: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

fn random_u64() -> u64 {
    rand::random()
}

/// A temp dir with a 0600 key file; returns (path, secret as the store
/// reads it).
fn key_file() -> (PathBuf, Vec<u8>) {
    use std::os::unix::fs::PermissionsExt;
    let path = tempdir().join("cluster.key");
    let secret = format!("{:016x}{:016x}", random_u64(), random_u64());
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (path, secret.into_bytes())
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn group(port: u16) -> SocketAddr {
    SocketAddr::from(([228, 0, 0, 5], port))
}

/// Store settings with fast heartbeats (drop after 800 ms).
fn section(
    listen: SocketAddr,
    group: SocketAddr,
    peers: &[SocketAddr],
    key: &Path,
) -> StoreSection {
    StoreSection {
        kind: StoreKind::Multicast,
        multicast_group: group,
        multicast_interface: IpAddr::V4(Ipv4Addr::LOCALHOST),
        replication_listen: listen,
        peers: peers.to_vec(),
        key_file: Some(key.to_path_buf()),
        heartbeat_interval: Duration::from_millis(100),
        drop_time: Duration::from_millis(800),
        // Longest wait of `fetch` during a restarted store's warm-up.
        timeout: Duration::from_secs(2),
        ..StoreSection::default()
    }
}

async fn start(cfg: &StoreSection) -> Arc<MulticastStore> {
    // A store just dropped releases its sockets when its tasks notice:
    // retry briefly for a restart on the same port.
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        match MulticastStore::start(cfg, IDLE, 100_000).await {
            Ok(s) => return s,
            Err(e) if Instant::now() < end => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("store did not start: {e}"),
        }
    }
}

/// Poll `ok` every 10 ms; returns how long it took, panics after `WITHIN`.
async fn eventually(what: &str, mut ok: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < WITHIN {
        if ok() {
            return t0.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within {WITHIN:?}: {what}");
}

fn route(s: &dyn SessionStore, id: &str) -> Option<String> {
    match s.lookup(id) {
        Cached::Found(r) => Some(r.to_string()),
        _ => None,
    }
}

/// What the proxy does: `lookup`, and `fetch` when the answer is Unknown.
async fn resolve(s: &dyn SessionStore, id: &str) -> Option<String> {
    match s.lookup(id) {
        Cached::Found(r) => Some(r.to_string()),
        Cached::Absent => None,
        Cached::Unknown => s.fetch(id).await.map(|r| r.to_string()),
    }
}

fn has_all(s: &dyn SessionStore, sessions: &[(String, Arc<str>)]) -> bool {
    sessions
        .iter()
        .all(|(id, r)| route(s, id).as_deref() == Some(&**r))
}

fn count_of(s: &dyn SessionStore, r: &str) -> u64 {
    s.counts()
        .into_iter()
        .find(|(n, _)| &**n == r)
        .map_or(0, |(_, c)| c.current)
}

/// Fail the test, with what to do, unless multicast on loopback works here
/// (probed once per test process). A machine without it must not report
/// the multicast checks as passed.
fn require_loopback_multicast() {
    static OK: OnceLock<bool> = OnceLock::new();
    assert!(
        *OK.get_or_init(probe),
        "loopback multicast does not work on this machine: run `scripts/test.sh` \
         (as root it runs `ip link set lo multicast on` and \
         `ip route add 224.0.0.0/4 dev lo`), or those two commands yourself"
    );
}

/// Send one datagram to a fresh group port over lo and see it come back.
fn probe() -> bool {
    let try_it = || -> std::io::Result<bool> {
        let port = UdpSocket::bind("0.0.0.0:0")?.local_addr()?.port();
        let g = Ipv4Addr::new(228, 0, 0, 5);
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(true)?;
        s.bind(&SocketAddrV4::new(g, port).into())?;
        s.join_multicast_v4(&g, &Ipv4Addr::LOCALHOST)?;
        s.set_multicast_if_v4(&Ipv4Addr::LOCALHOST)?;
        s.set_multicast_loop_v4(true)?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        let s: UdpSocket = s.into();
        s.send_to(b"probe", (g, port))?;
        let mut buf = [0u8; 16];
        Ok(matches!(s.recv_from(&mut buf), Ok((5, _))))
    };
    try_it().unwrap_or(false)
}

// ---------------------------------------------------------------------------
// Hand-made messages, following the documented wire format:
// magic "SGMC" | version 1 | kind | node u64 | ts_ms u64 | nonce u64 |
// payload | HMAC-SHA256(header + payload).
// ---------------------------------------------------------------------------

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A signed `Records` datagram holding one binding.
fn records_datagram(
    secret: &[u8],
    node: u64,
    ts_ms: u64,
    id: &str,
    route: &str,
    version: u64,
) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(b"SGMC");
    m.push(1);
    m.push(2);
    m.extend_from_slice(&node.to_be_bytes());
    m.extend_from_slice(&ts_ms.to_be_bytes());
    m.extend_from_slice(&random_u64().to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.push(0);
    m.extend_from_slice(&version.to_be_bytes());
    m.extend_from_slice(&0u32.to_be_bytes());
    m.extend_from_slice(&(id.len() as u16).to_be_bytes());
    m.extend_from_slice(id.as_bytes());
    m.push(route.len() as u8);
    m.extend_from_slice(route.as_bytes());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(&m);
    m.extend_from_slice(&mac.finalize().into_bytes());
    m
}

/// A UDP socket that can send to the group over lo.
fn sender() -> UdpSocket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    s.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
    s.set_multicast_loop_v4(true).unwrap();
    s.into()
}

// ---------------------------------------------------------------------------
// Drills.
// ---------------------------------------------------------------------------

/// Three balancers on one multicast group share every binding, rebinding
/// and forget; one dies and its replacement on the same port gets the
/// whole state back from the survivors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_balancers_share_sessions_and_a_restart_gets_them_back() {
    require_loopback_multicast();
    let (key, _) = key_file();
    let g = group(free_port());
    let addrs: Vec<SocketAddr> = (0..3).map(|_| local(free_port())).collect();
    let cfgs: Vec<StoreSection> = addrs.iter().map(|a| section(*a, g, &[], &key)).collect();
    let mut stores = Vec::new();
    for c in &cfgs {
        stores.push(start(c).await);
    }
    let took = eventually("every store sees two peers", || {
        stores.iter().all(|s| s.status().peers.len() == 2)
    })
    .await;
    eprintln!("membership: 3 stores see each other after {took:?}");
    for s in &stores {
        assert!(s.status().healthy);
        assert!(s.stats().multicast);
        assert_eq!(s.status().kind, "multicast");
    }

    // 300 sessions bound on the first balancer, 30 on the second.
    let routes: Vec<Arc<str>> = ["node1", "node2", "node3"]
        .iter()
        .map(|r| Arc::from(*r))
        .collect();
    let mut sessions: Vec<(String, Arc<str>)> = Vec::new();
    for i in 0..300 {
        let id = format!("{:032X}", random_u64() as u128 * 7 + i);
        let r = routes[i as usize % 3].clone();
        stores[0].bind(&id, &r);
        sessions.push((id, r));
    }
    for i in 0..30 {
        let id = format!("B{i:031X}");
        stores[1].bind(&id, &routes[0]);
        sessions.push((id, routes[0].clone()));
    }
    let t0 = Instant::now();
    eventually("all three stores hold all 330 sessions", || {
        stores.iter().all(|s| has_all(&**s, &sessions))
    })
    .await;
    eprintln!(
        "replication: 330 sessions on all three stores after {:?}",
        t0.elapsed()
    );
    for s in &stores {
        assert_eq!(s.status().sessions, 330);
        assert_eq!(count_of(&**s, "node1"), 130);
        assert_eq!(count_of(&**s, "node2"), 100);
    }

    // A rebind and a forget on the third balancer reach the others.
    let (moved, _) = sessions[0].clone();
    let (gone, _) = sessions.pop().unwrap();
    stores[2].bind(&moved, &routes[2]);
    stores[2].forget(&gone);
    sessions[0].1 = routes[2].clone();
    eventually("rebind and forget replicated", || {
        stores.iter().all(|s| {
            route(&**s, &moved).as_deref() == Some("node3") && route(&**s, &gone).is_none()
        })
    })
    .await;

    // The third balancer dies; a new one starts on its port.
    let dead = stores.pop().unwrap();
    let dead_node = dead.node_id();
    drop(dead);
    let t0 = Instant::now();
    let reborn = start(&cfgs[2]).await;
    assert_ne!(reborn.node_id(), dead_node);
    eprintln!("restart: same port bound again after {:?}", t0.elapsed());
    // As the proxy asks: a miss during warm-up is Unknown, and `fetch`
    // waits for the full-state transfer. No polling here.
    for (id, r) in &sessions {
        assert_eq!(resolve(&*reborn, id).await.as_deref(), Some(&**r), "{id}");
    }
    let took = t0.elapsed();
    assert!(reborn.is_warm());
    assert!(has_all(&*reborn, &sessions));
    eprintln!(
        "full-state transfer: 329 sessions on the restarted store after {took:?} (since start)"
    );
    // Records are applied as frames arrive; the transfer counts as done
    // at its end frame.
    eventually("full-state transfer completed", || {
        reborn.stats().syncs >= 1
    })
    .await;
    assert_eq!(reborn.status().sessions, 329);
    // The survivors see it as a peer again (the old node id is replaced).
    eventually("survivors list the restarted peer", || {
        stores.iter().all(|s| {
            s.status().peers.contains(&addrs[2].to_string()) && s.status().peers.len() == 2
        })
    })
    .await;
    // New bindings flow to and from it.
    reborn.bind("AFTER-RESTART", &routes[1]);
    stores[0].bind("FROM-SURVIVOR", &routes[2]);
    eventually("writes flow both ways after the restart", || {
        stores
            .iter()
            .all(|s| route(&**s, "AFTER-RESTART").as_deref() == Some("node2"))
            && route(&*reborn, "FROM-SURVIVOR").as_deref() == Some("node3")
    })
    .await;
    for s in stores
        .iter()
        .map(|s| &**s as &dyn SessionStore)
        .chain([&*reborn as &dyn SessionStore])
    {
        assert_eq!(s.status().errors, 0, "{:?}", s.status());
    }

    // A store that stops for good is dropped from membership.
    drop(reborn);
    let took = eventually("dead peer dropped", || {
        stores.iter().all(|s| s.status().peers.len() == 1)
    })
    .await;
    eprintln!("drop: dead peer removed after {took:?} (drop_time 800ms)");
}

/// Garbage and forged datagrams, to the group and to the unicast port,
/// are dropped and counted; a correctly signed one is applied once, its
/// replay and a stale one are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_garbage_stale_and_replayed_datagrams_are_dropped_and_counted() {
    require_loopback_multicast();
    let (key, secret) = key_file();
    let listen = local(free_port());
    let g = group(free_port());
    let store = start(&section(listen, g, &[], &key)).await;
    let sock = sender();
    let targets = [listen, g];
    let wrong: &[u8] = b"not-the-cluster-secret-0123456789";
    let node = random_u64();
    let mut expected = 0;
    for t in &targets {
        sock.send_to(b"hello, this is not a stickgate datagram", t)
            .unwrap();
        let mut noise = vec![0u8; 900];
        noise.iter_mut().for_each(|b| *b = rand::random());
        sock.send_to(&noise, t).unwrap();
        sock.send_to(&vec![0x53u8; 4000], t).unwrap(); // oversized
        sock.send_to(
            &records_datagram(wrong, node, unix_ms(), "FORGED", "evil", 99),
            t,
        )
        .unwrap();
        let mut flipped = records_datagram(&secret, node, unix_ms(), "FLIPPED", "evil", 99);
        let last = flipped.len() - 40;
        flipped[last] ^= 1;
        sock.send_to(&flipped, t).unwrap();
        expected += 5;
    }
    // Signed with the right key but 60 s old.
    let stale = records_datagram(&secret, node, unix_ms() - 60_000, "STALE", "evil", 99);
    sock.send_to(&stale, listen).unwrap();
    // Signed, fresh: applied; the same bytes again: a replay.
    let good = records_datagram(&secret, node, unix_ms(), "GENUINE", "node7", 1);
    sock.send_to(&good, listen).unwrap();
    eventually("genuine record applied", || {
        route(&*store, "GENUINE").as_deref() == Some("node7")
    })
    .await;
    sock.send_to(&good, listen).unwrap();
    expected += 2;
    let took = eventually("every bad datagram counted", || {
        store.stats().rejected >= expected
    })
    .await;
    eprintln!("rejections: {expected} bad datagrams counted after {took:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let st = store.stats();
    assert_eq!(st.rejected, expected, "{st:?}");
    assert_eq!(store.status().errors, expected);
    for id in ["FORGED", "FLIPPED", "STALE"] {
        assert_eq!(route(&*store, id), None, "{id} must not be applied");
    }
    assert_eq!(store.status().sessions, 1);
    // Still working afterwards.
    store.bind("LOCAL", &Arc::from("node1"));
    assert_eq!(route(&*store, "LOCAL").as_deref(), Some("node1"));
}

/// Multicast unusable (an IPv6 group, which this store does not join):
/// static peers alone replicate, including the full-state transfer, and a
/// peer list naming the balancer itself is fine (one list for all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_peers_replicate_without_multicast() {
    let (key, _) = key_file();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| local(free_port())).collect();
    let no_multicast: SocketAddr = format!("[ff05::5]:{}", free_port()).parse().unwrap();
    let cfgs: Vec<StoreSection> = addrs
        .iter()
        .map(|a| section(*a, no_multicast, &addrs, &key))
        .collect();
    let mut stores = Vec::new();
    for c in &cfgs[..2] {
        stores.push(start(c).await);
    }
    for s in &stores {
        assert!(!s.stats().multicast);
    }
    let r: Arc<str> = "node2".into();
    let sessions: Vec<(String, Arc<str>)> =
        (0..50).map(|i| (format!("S{i:031}"), r.clone())).collect();
    for (id, r) in &sessions {
        stores[0].bind(id, r);
    }
    let took = eventually("second store has them", || has_all(&*stores[1], &sessions)).await;
    eprintln!("static peers: 50 sessions replicated after {took:?}");
    // A third store joins late: full state from the others.
    let late = start(&cfgs[2]).await;
    let took = eventually("late store has them", || has_all(&*late, &sessions)).await;
    eprintln!("static peers: late joiner got the full state after {took:?}");
    late.forget(&sessions[0].0);
    eventually("forget replicated", || {
        stores.iter().all(|s| route(&**s, &sessions[0].0).is_none())
    })
    .await;
    for s in stores.iter().chain([&late]) {
        assert_eq!(s.status().peers.len(), 2, "{:?}", s.status());
        assert!(s.status().healthy);
        assert_eq!(s.status().errors, 0, "{:?}", s.stats());
    }

    // One-sided configuration: only D lists E; E learns the way back from
    // D's unicast heartbeats.
    let d_addr = local(free_port());
    let e_addr = local(free_port());
    let d = start(&section(d_addr, no_multicast, &[e_addr], &key)).await;
    let e_cfg = section(e_addr, group(free_port()), &[], &key);
    // E needs multicast or a peer to start: give it a silent peer, so this
    // static-peer check does not depend on loopback multicast.
    let e_cfg = StoreSection {
        peers: vec![local(free_port())],
        ..e_cfg
    };
    let e = start(&e_cfg).await;
    e.bind("FROM-E", &Arc::from("node1"));
    d.bind("FROM-D", &Arc::from("node3"));
    let took = eventually("both directions with a one-sided peer list", || {
        route(&*d, "FROM-E").as_deref() == Some("node1")
            && route(&*e, "FROM-D").as_deref() == Some("node3")
    })
    .await;
    eprintln!("one-sided static peer: both directions after {took:?}");
}

/// Failover claims agree: after replication, a second balancer claiming
/// the same orphan with another proposal gets the first one's answer; two
/// simultaneous claims with different proposals converge on one route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_agree_across_balancers() {
    let (key, _) = key_file();
    let a_addr = local(free_port());
    let b_addr = local(free_port());
    let g = group(free_port());
    let a = start(&section(a_addr, g, &[b_addr], &key)).await;
    let b = start(&section(b_addr, g, &[a_addr], &key)).await;
    let dead: Arc<str> = "dead".into();
    a.bind("ORPHAN", &dead);
    eventually("orphan replicated", || {
        route(&*b, "ORPHAN").as_deref() == Some("dead")
    })
    .await;

    let first = a.claim("ORPHAN", Some("dead"), "n1".into()).await;
    assert_eq!(&*first, "n1");
    let took = eventually("claim replicated", || {
        route(&*b, "ORPHAN").as_deref() == Some("n1")
    })
    .await;
    let second = b.claim("ORPHAN", Some("dead"), "n2".into()).await;
    assert_eq!(&*second, "n1", "the move already made wins");
    assert_eq!(&*a.claim("ORPHAN", Some("dead"), "n3".into()).await, "n1");
    eprintln!("claim: replicated after {took:?} (10 ms polls); both balancers answer n1");
    assert!(took < CONVERGE, "claim took {took:?} to replicate");

    // Same orphan claimed on both at once with different heirs: versions
    // tie, the greater route wins everywhere.
    a.bind("RACE", &dead);
    eventually("race orphan replicated", || {
        route(&*b, "RACE").as_deref() == Some("dead")
    })
    .await;
    let (x, y) = tokio::join!(
        a.claim("RACE", Some("dead"), "n1".into()),
        b.claim("RACE", Some("dead"), "n2".into())
    );
    eprintln!("simultaneous claims answered {x} and {y}");
    // If b heard a's claim before making its own, it answered n1 too;
    // otherwise versions tie and the greater route, n2, wins on both.
    let want = if x == y {
        x.to_string()
    } else {
        "n2".to_owned()
    };
    let took = eventually("simultaneous claims converge", || {
        route(&*a, "RACE").as_deref() == Some(&*want)
            && route(&*b, "RACE").as_deref() == Some(&*want)
    })
    .await;
    eprintln!("simultaneous claims converged on {want} after {took:?} (10 ms polls)");
    assert!(
        took < CONVERGE,
        "simultaneous claims took {took:?} to converge"
    );
    // Counts agree too.
    let on_n1 = if want == "n1" { 2 } else { 1 };
    for s in [&a, &b] {
        assert_eq!(count_of(&**s, "n1"), on_n1);
        assert_eq!(count_of(&**s, "n2"), 2 - on_n1);
        assert_eq!(count_of(&**s, "dead"), 0);
    }
}

/// A store with nobody to learn from ends its warm-up after two
/// heartbeats: until then a miss is Unknown (and `fetch` waits), then
/// Absent.
#[tokio::test]
async fn a_lone_store_warms_up_after_two_heartbeats() {
    let (key, _) = key_file();
    let silent = local(free_port());
    let cfg = section(local(free_port()), group(free_port()), &[silent], &key);
    let t0 = Instant::now();
    let s = start(&cfg).await;
    assert_eq!(s.lookup("NOPE"), Cached::Unknown);
    assert_eq!(s.fetch("NOPE").await, None);
    let waited = t0.elapsed();
    assert!(s.is_warm());
    assert_eq!(s.lookup("NOPE"), Cached::Absent);
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    eprintln!("warm-up of a lone store: {waited:?} (heartbeat 100ms)");
    s.bind("YES", &Arc::from("n1"));
    assert_eq!(s.lookup("YES"), Cached::Found("n1".into()));
}

/// Start-up refuses what cannot work, with a message saying what to fix.
#[tokio::test]
async fn start_errors_are_explained() {
    let (key, _) = key_file();
    let listen = local(free_port());
    let no_multicast: SocketAddr = "[ff05::5]:45565".parse().unwrap();
    let err = |r: Result<Arc<MulticastStore>, stickgate::store::StoreError>| match r {
        Ok(_) => panic!("should not start"),
        Err(e) => e.to_string(),
    };
    // No way to reach anyone.
    let e = err(MulticastStore::start(&section(listen, no_multicast, &[], &key), IDLE, 10).await);
    assert!(e.contains("store.peers"), "{e}");
    // No key file; a world-readable one.
    let mut cfg = section(listen, group(free_port()), &[], &key);
    cfg.key_file = None;
    assert!(err(MulticastStore::start(&cfg, IDLE, 10).await).contains("key_file"));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e =
        err(MulticastStore::start(&section(listen, group(free_port()), &[], &key), IDLE, 10).await);
    assert!(e.contains("chmod 600"), "{e}");
    // Port taken.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let _taken = UdpSocket::bind(listen).unwrap();
    let e = err(
        MulticastStore::start(&section(listen, no_multicast, &[local(1)], &key), IDLE, 10).await,
    );
    assert!(e.contains("replication_listen"), "{e}");
}

/// A signed `States` datagram (kind 6) holding one backend state change:
/// `u16 count | route_len u8 | route | state u8 | at_ms u64`.
fn states_datagram(secret: &[u8], node: u64, route: &str, state: u8, at_ms: u64) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(b"SGMC");
    m.push(1);
    m.push(6);
    m.extend_from_slice(&node.to_be_bytes());
    m.extend_from_slice(&unix_ms().to_be_bytes());
    m.extend_from_slice(&random_u64().to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.push(route.len() as u8);
    m.extend_from_slice(route.as_bytes());
    m.push(state);
    m.extend_from_slice(&at_ms.to_be_bytes());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(&m);
    m.extend_from_slice(&mac.finalize().into_bytes());
    m
}

fn state_of(s: &dyn SessionStore, route: &str) -> Option<StateChange> {
    s.states()
        .into_iter()
        .find(|(r, _)| &**r == route)
        .map(|(_, c)| c)
}

/// An operator's state change made through one balancer reaches the
/// others at once, an older one never overrides a newer one, and a
/// balancer started later learns it with the full state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_states_reach_every_balancer_and_late_joiners() {
    let (key, secret) = key_file();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| local(free_port())).collect();
    let g = group(free_port());
    let cfgs: Vec<StoreSection> = addrs.iter().map(|a| section(*a, g, &addrs, &key)).collect();
    let a = start(&cfgs[0]).await;
    let b = start(&cfgs[1]).await;
    eventually("A and B see each other", || {
        a.status().peers.len() == 1 && b.status().peers.len() == 1
    })
    .await;

    let t = unix_ms();
    let drain = StateChange {
        state: AdminState::Draining,
        at_ms: t,
    };
    a.publish_state("tomcat1", drain);
    assert_eq!(state_of(&*a, "tomcat1"), Some(drain), "A knows at once");
    let took = eventually("B sees A's drain", || {
        state_of(&*b, "tomcat1") == Some(drain)
    })
    .await;
    eprintln!("multicast states: B saw A's change after {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");

    // Older, published later: ignored by B itself and by A.
    b.publish_state(
        "tomcat1",
        StateChange {
            state: AdminState::Active,
            at_ms: t - 5_000,
        },
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(state_of(&*a, "tomcat1"), Some(drain));
    assert_eq!(state_of(&*b, "tomcat1"), Some(drain));

    // Newer through B wins on A.
    let stop = StateChange {
        state: AdminState::Stopped,
        at_ms: t + 1,
    };
    b.publish_state("tomcat1", stop);
    let took = eventually("A sees B's stop", || state_of(&*a, "tomcat1") == Some(stop)).await;
    eprintln!("multicast states: A saw B's newer change after {took:?}");
    let disable = StateChange {
        state: AdminState::Disabled,
        at_ms: t + 2,
    };
    a.publish_state("tomcat2", disable);
    eventually("B sees A's disable", || {
        state_of(&*b, "tomcat2") == Some(disable)
    })
    .await;

    // A third balancer started now (the repeats are long over; the
    // periodic resend is 10 s away): the full-state transfer brings both.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let c = start(&cfgs[2]).await;
    let took = eventually("the late balancer learns both states", || {
        state_of(&*c, "tomcat1") == Some(stop) && state_of(&*c, "tomcat2") == Some(disable)
    })
    .await;
    eprintln!(
        "multicast states: a balancer started later had both states after {:?} (full sync)",
        started.elapsed()
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(c.stats().syncs >= 1, "{:?}", c.stats());

    // Hand-made datagrams to C: a signed one applies; forged or with an
    // unknown state number, dropped and counted.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let before = c.stats().rejected;
    let good = states_datagram(&secret, 77, "tomcat7", 3, unix_ms());
    sock.send_to(&good, c.local_addr()).unwrap();
    eventually("signed state applied", || {
        state_of(&*c, "tomcat7").map(|s| s.state) == Some(AdminState::Stopped)
    })
    .await;
    sock.send_to(&good, c.local_addr()).unwrap(); // replayed
    let forged = states_datagram(b"not-the-cluster-secret!!", 77, "tomcat8", 3, unix_ms());
    sock.send_to(&forged, c.local_addr()).unwrap();
    let unknown = states_datagram(&secret, 77, "tomcat8", 9, unix_ms());
    sock.send_to(&unknown, c.local_addr()).unwrap();
    eventually("three bad datagrams counted", || {
        c.stats().rejected >= before + 3
    })
    .await;
    assert_eq!(state_of(&*c, "tomcat8"), None);
    for s in [&a, &b] {
        assert_eq!(s.stats().rejected, 0, "{:?}", s.stats());
    }
}
