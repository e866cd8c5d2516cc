//! The relay of an upgraded WebSocket connection: two pumps (client to
//! backend, backend to client) that pass bytes through while following
//! frame boundaries, plus the idle watchdog.
//!
//! - Bytes are copied through untouched, never a whole frame at a time.
//! - With `ping_interval`, a direction with nothing written for that long
//!   gets a Ping at the next frame boundary (masked toward the backend,
//!   since the balancer speaks as a client there), and the matching Pongs
//!   are swallowed; every other frame passes byte-identical.
//! - The tunnel ends after `idle_timeout` with nothing received from either
//!   peer (answers to our Pings count as life).
//! - When one side ends, the other gets a Close 1001 ("going away") if its
//!   stream stands on a frame boundary and saw no Close yet, then a TCP
//!   shutdown; the survivor has a short grace to finish its side.
//! - When the balancer is about to stop (the shutdown deadline is near),
//!   both peers get a Close 1001 at their next frame boundary and the
//!   tunnel ends: clients reconnect instead of seeing a reset.

use super::frames::{self, Chunk, Parser, Violation};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Read buffer per direction; small so idle tunnels stay cheap.
const BUF: usize = 16 * 1024;
/// After one side ended, how long the other may take to finish.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Unanswered Pings remembered per peer (answers to older ones pass).
const MAX_OUTSTANDING: usize = 8;
/// Prefix of the balancer's Ping payloads.
const PING_PREFIX: &str = "stickgate-ping-";

/// Tunnel timing, from `[websocket]`.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Zero: never closed for idleness.
    pub idle_timeout: Duration,
    /// `None` or zero: no pings.
    pub ping_interval: Option<Duration>,
}

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides finished (Close handshake or TCP close).
    Closed,
    /// Nothing received from either peer for `idle_timeout`.
    Idle,
    /// A peer sent something that is not a WebSocket frame stream.
    Violation(Peer, Violation),
    /// One side ended and the other did not follow within the grace.
    Grace,
}

/// One peer of the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Client,
    Backend,
}

/// What the tunnel moved, for the log line.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub end: End,
    /// Bytes read from the client / from the backend.
    pub from_client: u64,
    pub from_backend: u64,
    /// Which side ended first, if one did.
    pub first_gone: Option<Peer>,
}

/// Pings sent to one peer and not yet answered.
#[derive(Debug, Default)]
pub struct Pings {
    next: u64,
    outstanding: VecDeque<Vec<u8>>,
}

impl Pings {
    /// A new Ping payload, remembered until answered.
    pub fn issue(&mut self) -> Vec<u8> {
        self.next += 1;
        let p = format!("{PING_PREFIX}{}", self.next).into_bytes();
        if self.outstanding.len() >= MAX_OUTSTANDING {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back(p.clone());
        p
    }

    /// Whether `payload` answers one of our Pings (then it and every older
    /// Ping count as answered: a peer may answer only the latest).
    pub fn answer(&mut self, payload: &[u8]) -> bool {
        match self.outstanding.iter().position(|p| p == payload) {
            Some(i) => {
                self.outstanding.drain(..=i);
                true
            }
            None => false,
        }
    }
}

/// State both pumps share.
struct Shared {
    start: Instant,
    /// Milliseconds after `start` at which bytes last arrived from a peer.
    last_rx: AtomicU64,
    to_client: Mutex<Pings>,
    to_backend: Mutex<Pings>,
}

impl Shared {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_rx.fetch_max(ms, Ordering::Relaxed);
    }

    fn last_rx(&self) -> Instant {
        self.start + Duration::from_millis(self.last_rx.load(Ordering::Relaxed))
    }

    /// Pings sent toward `side`.
    fn pings(&self, side: Peer) -> &Mutex<Pings> {
        match side {
            Peer::Client => &self.to_client,
            Peer::Backend => &self.to_backend,
        }
    }
}

/// How one pump ended.
#[derive(Debug)]
enum PumpEnd {
    /// Its source closed or failed (the peer is gone or done).
    SourceGone,
    /// Writing to the destination failed.
    SinkGone,
    Violation(Violation),
}

/// Relay between `client` and `backend` until the connection ends.
pub async fn run<C, B>(
    client: C,
    backend: B,
    s: Settings,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Report
where
    C: AsyncRead + AsyncWrite + Send,
    B: AsyncRead + AsyncWrite + Send,
{
    let (cr, cw) = tokio::io::split(client);
    let (br, bw) = tokio::io::split(backend);
    let shared = Shared {
        start: Instant::now(),
        last_rx: AtomicU64::new(0),
        to_client: Mutex::default(),
        to_backend: Mutex::default(),
    };
    let from_client = AtomicU64::new(0);
    let from_backend = AtomicU64::new(0);
    let idle = (!s.idle_timeout.is_zero()).then_some(s.idle_timeout);
    let ping = s.ping_interval.filter(|p| !p.is_zero());
    let up = pump(
        cr,
        bw,
        Peer::Client,
        &shared,
        ping,
        &from_client,
        stop.clone(),
    );
    let down = pump(br, cw, Peer::Backend, &shared, ping, &from_backend, stop);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    let mut grace: Option<Instant> = None;
    let mut first_gone = None;
    let end = loop {
        if up_done && down_done {
            break End::Closed;
        }
        let idle_at = idle.map(|i| shared.last_rx() + i);
        let wake = match (idle_at, grace) {
            (Some(i), Some(g)) => Some(i.min(g)),
            (i, g) => i.or(g),
        };
        let ended = tokio::select! {
            r = &mut up, if !up_done => { up_done = true; Some((Peer::Client, r)) }
            r = &mut down, if !down_done => { down_done = true; Some((Peer::Backend, r)) }
            _ = sleep_until_opt(wake) => None,
        };
        match ended {
            Some((side, PumpEnd::Violation(v))) => break End::Violation(side, v),
            Some((side, _)) => {
                first_gone.get_or_insert(side);
                grace.get_or_insert_with(|| Instant::now() + CLOSE_GRACE);
            }
            None => {
                let now = Instant::now();
                if idle.is_some_and(|i| now >= shared.last_rx() + i) {
                    break End::Idle;
                }
                if grace.is_some_and(|g| now >= g) {
                    break End::Grace;
                }
            }
        }
    };
    Report {
        end,
        from_client: from_client.load(Ordering::Relaxed),
        from_backend: from_backend.load(Ordering::Relaxed),
        first_gone,
    }
}

/// Copy frames from `from` (read through `src`) to the other side (`dst`).
async fn pump<R, W>(
    mut src: R,
    mut dst: W,
    from: Peer,
    shared: &Shared,
    ping_interval: Option<Duration>,
    count: &AtomicU64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> PumpEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let to = match from {
        Peer::Client => Peer::Backend,
        Peer::Backend => Peer::Client,
    };
    // Frames toward the backend are client frames: masked.
    let mask = || (to == Peer::Backend).then(rand::random::<[u8; 4]>);
    let mut buf = vec![0u8; BUF];
    let mut out: Vec<u8> = Vec::with_capacity(BUF + frames::MAX_HEADER);
    let mut parser = Parser::new();
    let mut last_tx = Instant::now();
    loop {
        let ping_at = ping_interval
            .filter(|_| parser.at_boundary() && !parser.closed())
            .map(|p| last_tx + p);
        let read = tokio::select! {
            biased;
            _ = going_away(&mut stop) => Ok(0),
            r = src.read(&mut buf) => r,
            _ = sleep_until_opt(ping_at) => {
                let payload = crate::lock::lock(shared.pings(to)).issue();
                let ping = frames::ping(&payload, mask());
                if dst.write_all(&ping).await.is_err() || dst.flush().await.is_err() {
                    return PumpEnd::SinkGone;
                }
                tracing::trace!(toward = ?to, "websocket: ping injected");
                last_tx = Instant::now();
                continue;
            }
        };
        let n = match read {
            Ok(0) | Err(_) => {
                if parser.at_boundary() && !parser.closed() {
                    let _ = dst
                        .write_all(&frames::close(frames::CLOSE_GOING_AWAY, mask()))
                        .await;
                }
                let _ = dst.shutdown().await;
                return PumpEnd::SourceGone;
            }
            Ok(n) => n,
        };
        shared.touch();
        count.fetch_add(n as u64, Ordering::Relaxed);
        out.clear();
        let mut off = 0;
        while off < n {
            let (used, chunk) = match parser.step(&buf[off..n]) {
                Ok(x) => x,
                Err(v) => return PumpEnd::Violation(v),
            };
            off += used;
            match chunk {
                Some(Chunk::Bytes(b)) => out.extend_from_slice(b),
                Some(Chunk::Pong { raw, payload }) => {
                    let ours = payload.starts_with(PING_PREFIX.as_bytes())
                        && crate::lock::lock(shared.pings(from)).answer(payload);
                    if ours {
                        tracing::trace!(from = ?from, "websocket: pong swallowed");
                    } else {
                        out.extend_from_slice(raw);
                    }
                }
                None => {}
            }
        }
        if out.is_empty() {
            continue;
        }
        if dst.write_all(&out).await.is_err() || dst.flush().await.is_err() {
            return PumpEnd::SinkGone;
        }
        last_tx = Instant::now();
    }
}

/// Resolves once the balancer says it is going away; never if it cannot
/// say so any more (the sender is gone with the proxy).
async fn going_away(stop: &mut tokio::sync::watch::Receiver<bool>) {
    if stop.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::frames::{apply_mask, parse_header, OP_PING, OP_PONG};
    use super::*;
    use tokio::io::{duplex, DuplexStream};

    use super::frames::test_frame as frame;

    /// Read one whole frame; returns (header, unmasked payload, raw bytes).
    async fn read_frame(s: &mut DuplexStream) -> (frames::Header, Vec<u8>, Vec<u8>) {
        let mut raw = Vec::new();
        let h = loop {
            if let Some(h) = parse_header(&raw).unwrap() {
                break h;
            }
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            raw.push(b[0]);
        };
        let mut payload = vec![0u8; h.len as usize];
        s.read_exact(&mut payload).await.unwrap();
        raw.extend_from_slice(&payload);
        if let Some(k) = h.mask {
            apply_mask(&mut payload, k);
        }
        (h, payload, raw)
    }

    /// A stop signal that never fires (its sender is gone).
    fn never() -> tokio::sync::watch::Receiver<bool> {
        tokio::sync::watch::channel(false).1
    }

    fn settings(idle: u64, ping: Option<u64>) -> Settings {
        Settings {
            idle_timeout: Duration::from_millis(idle),
            ping_interval: ping.map(Duration::from_millis),
        }
    }

    #[test]
    fn pings_answer_only_ours() {
        let mut p = Pings::default();
        let a = p.issue();
        let b = p.issue();
        assert_eq!(a, b"stickgate-ping-1");
        assert!(!p.answer(b"stickgate-ping-9"));
        assert!(!p.answer(b"app"));
        assert!(p.answer(&b), "answer to the latest");
        assert!(!p.answer(&a), "older ones were settled with it");
        for _ in 0..20 {
            p.issue();
        }
        assert_eq!(p.outstanding.len(), MAX_OUTSTANDING);
    }

    #[tokio::test]
    async fn relays_byte_identical_both_ways() {
        let (client, c_end) = duplex(4096);
        let (backend, b_end) = duplex(4096);
        let t = tokio::spawn(run(
            client,
            backend,
            settings(10_000, Some(60_000)),
            never(),
        ));
        let k = Some([3, 1, 4, 1]);
        let mut up = Vec::new();
        up.extend(frame(false, 0x1, b"frag-1", k));
        up.extend(frame(true, OP_PING, b"app", k));
        up.extend(frame(true, OP_PONG, b"stickgate-ping-1", k)); // not ours: none outstanding
        up.extend(frame(true, 0x0, &vec![5u8; 300_000], k));
        let mut down = Vec::new();
        down.extend(frame(true, 0x2, &vec![6u8; 200_000], None));
        down.extend(frame(true, OP_PONG, b"app", None));
        // All four directions at once: the pipes are small, so sequential
        // writes would deadlock.
        let (mut cr, mut cw) = tokio::io::split(c_end);
        let (mut br, mut bw) = tokio::io::split(b_end);
        let mut got_up = vec![0u8; up.len()];
        let mut got_down = vec![0u8; down.len()];
        let (a, b, c, d) = tokio::join!(
            cw.write_all(&up),
            bw.write_all(&down),
            br.read_exact(&mut got_up),
            cr.read_exact(&mut got_down)
        );
        a.unwrap();
        b.unwrap();
        c.unwrap();
        d.unwrap();
        assert!(got_up == up, "client to backend differs");
        assert!(got_down == down, "backend to client differs");
        let mut c_end = cr.unsplit(cw);
        let mut b_end = br.unsplit(bw);
        // Client sends Close, backend answers and closes: tunnel ends clean.
        let close_c = frame(true, 0x8, &1000u16.to_be_bytes(), k);
        c_end.write_all(&close_c).await.unwrap();
        let (h, _, raw) = read_frame(&mut b_end).await;
        assert_eq!((h.opcode, raw), (0x8, close_c));
        b_end
            .write_all(&frame(true, 0x8, &1000u16.to_be_bytes(), None))
            .await
            .unwrap();
        drop(b_end);
        let (h, _, _) = read_frame(&mut c_end).await;
        assert_eq!(h.opcode, 0x8);
        let mut rest = Vec::new();
        c_end.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "no extra Close after the peer's own");
        drop(c_end);
        let r = t.await.unwrap();
        assert_eq!(r.end, End::Closed);
        assert_eq!(r.first_gone, Some(Peer::Backend));
    }

    #[tokio::test(start_paused = true)]
    async fn pings_both_ways_when_idle_and_swallows_answers() {
        let (client, mut c_end) = duplex(4096);
        let (backend, mut b_end) = duplex(4096);
        let t = tokio::spawn(run(
            client,
            backend,
            settings(30_000, Some(20_000)),
            never(),
        ));
        for round in 1..=4u32 {
            // Toward the client: unmasked; toward the backend: masked.
            let (hc, pc, _) = read_frame(&mut c_end).await;
            assert_eq!((hc.opcode, hc.mask), (OP_PING, None));
            assert_eq!(pc, format!("stickgate-ping-{round}").into_bytes());
            let (hb, pb, _) = read_frame(&mut b_end).await;
            assert_eq!(hb.opcode, OP_PING);
            assert!(hb.mask.is_some());
            assert_eq!(pb, format!("stickgate-ping-{round}").into_bytes());
            // Answers come back and must not reach the other side.
            c_end
                .write_all(&frame(true, OP_PONG, &pc, Some([7, 7, 7, 7])))
                .await
                .unwrap();
            b_end
                .write_all(&frame(true, OP_PONG, &pb, None))
                .await
                .unwrap();
        }
        // Data still flows and the first thing each side sees is the data,
        // proving no pong leaked through.
        let msg = frame(true, 0x1, b"after", Some([1, 2, 3, 4]));
        c_end.write_all(&msg).await.unwrap();
        let (h, p, _) = read_frame(&mut b_end).await;
        assert_eq!((h.opcode, p), (0x1, b"after".to_vec()));
        drop(c_end);
        drop(b_end);
        let r = t.await.unwrap();
        assert_ne!(r.end, End::Idle, "pong answers keep the tunnel alive");
    }

    #[tokio::test(start_paused = true)]
    async fn ping_waits_for_a_frame_boundary() {
        let (client, mut c_end) = duplex(1 << 20);
        let (backend, mut b_end) = duplex(1 << 20);
        let t = tokio::spawn(run(
            client,
            backend,
            settings(300_000, Some(1_000)),
            never(),
        ));
        // Backend starts a 100-byte frame but sends only its header and
        // half the payload, then stalls past the ping interval.
        let f = frame(true, 0x2, &[9u8; 100], None);
        b_end.write_all(&f[..52]).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut got = vec![0u8; 52];
        c_end.read_exact(&mut got).await.unwrap();
        assert_eq!(got, f[..52]);
        b_end.write_all(&f[52..]).await.unwrap();
        // The rest of the frame arrives before any ping.
        let mut rest = vec![0u8; f.len() - 52];
        c_end.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, f[52..]);
        // Then, idle at a boundary, the ping comes.
        let (h, _, _) = read_frame(&mut c_end).await;
        assert_eq!(h.opcode, OP_PING);
        drop(c_end);
        drop(b_end);
        t.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn idle_without_pings_closes() {
        let (client, mut c_end) = duplex(4096);
        let (backend, _b_end) = duplex(4096);
        let start = Instant::now();
        let t = tokio::spawn(run(client, backend, settings(30_000, None), never()));
        let mut rest = Vec::new();
        c_end.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "no ping without ping_interval");
        let r = t.await.unwrap();
        assert_eq!(r.end, End::Idle);
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(30) && took < Duration::from_secs(31));
    }

    #[tokio::test(start_paused = true)]
    async fn unanswered_pings_do_not_keep_it_alive() {
        let (client, c_end) = duplex(4096);
        let (backend, b_end) = duplex(4096);
        let r = run(client, backend, settings(30_000, Some(10_000)), never()).await;
        assert_eq!(r.end, End::Idle);
        drop((c_end, b_end));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_settings_mean_never() {
        let (client, mut c_end) = duplex(4096);
        let (backend, b_end) = duplex(4096);
        let t = tokio::spawn(run(client, backend, settings(0, Some(0)), never()));
        let mut b = [0u8; 1];
        let quiet = tokio::time::timeout(Duration::from_secs(3600), c_end.read(&mut b)).await;
        assert!(quiet.is_err(), "no ping flood, no idle close");
        assert!(!t.is_finished());
        drop((c_end, b_end));
        assert_eq!(t.await.unwrap().end, End::Closed);
    }

    #[tokio::test]
    async fn backend_gone_sends_going_away_to_client() {
        let (client, mut c_end) = duplex(4096);
        let (backend, b_end) = duplex(4096);
        let t = tokio::spawn(run(client, backend, settings(30_000, None), never()));
        drop(b_end);
        let (h, p, _) = read_frame(&mut c_end).await;
        assert_eq!((h.opcode, h.mask, p), (0x8, None, vec![0x03, 0xE9]));
        let mut rest = Vec::new();
        c_end.read_to_end(&mut rest).await.unwrap();
        drop(c_end);
        let r = t.await.unwrap();
        assert_eq!(r.first_gone, Some(Peer::Backend));
    }

    #[tokio::test]
    async fn going_away_closes_both_sides_with_1001() {
        let (client, mut c_end) = duplex(4096);
        let (backend, mut b_end) = duplex(4096);
        let (stop, rx) = tokio::sync::watch::channel(false);
        let t = tokio::spawn(run(client, backend, settings(30_000, None), rx));
        c_end
            .write_all(&frame(true, 0x1, b"hi", Some([1, 2, 3, 4])))
            .await
            .unwrap();
        let (h, p, _) = read_frame(&mut b_end).await;
        assert_eq!((h.opcode, p), (0x1, b"hi".to_vec()));
        stop.send_replace(true);
        let soon = Duration::from_secs(2);
        let (h, p, _) = tokio::time::timeout(soon, read_frame(&mut c_end))
            .await
            .expect("no Close toward the client");
        assert_eq!((h.opcode, h.mask, p), (0x8, None, vec![0x03, 0xE9]));
        let (h, p, _) = tokio::time::timeout(soon, read_frame(&mut b_end))
            .await
            .expect("no Close toward the backend");
        assert_eq!(
            (h.opcode, h.mask.is_some(), p),
            (0x8, true, vec![0x03, 0xE9])
        );
        let r = tokio::time::timeout(Duration::from_secs(2), t).await;
        assert_eq!(r.expect("tunnel ended").unwrap().end, End::Closed);
    }

    #[tokio::test]
    async fn garbage_ends_the_tunnel() {
        let (client, mut c_end) = duplex(4096);
        let (backend, mut b_end) = duplex(4096);
        let t = tokio::spawn(run(client, backend, settings(30_000, None), never()));
        c_end.write_all(&[0x83, 0x80, 0, 0, 0, 0]).await.unwrap();
        let r = t.await.unwrap();
        assert_eq!(
            r.end,
            End::Violation(Peer::Client, Violation::ReservedOpcode(3))
        );
        let mut rest = Vec::new();
        b_end.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the bad frame never reached the backend");
    }
}
