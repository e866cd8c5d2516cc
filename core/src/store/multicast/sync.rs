//! Full-state transfer over TCP, so a (re)started balancer learns every
//! live session from any survivor.
//!
//! The requester sends one `SyncRequest` frame; the answer is a series of
//! `SyncRecords` frames (numbered from 0, each naming the request's nonce)
//! and a `SyncEnd` with the total. Frames are length-prefixed (u32,
//! big-endian) and each is a signed message like a datagram. Sizes, counts
//! and time are bounded on both sides.
//!
//! After `SyncEnd` come `SyncStates` frames (operators' backend state
//! changes, so a restarted balancer learns those made while it was away),
//! then the connection closes. They follow the end marker so that a peer
//! built before they existed, which stops reading at `SyncEnd`, still gets
//! a complete transfer.

use super::auth::{self, Reject};
use super::diag::{bump, unix_ms, LOG_EVERY_MS};
use super::node::Node;
use super::node::MAX_ROUTE_NAMES;
use super::wire::{self, Body, FRAME_RECORD_BUDGET, FRAME_STATE_BUDGET, HEADER_LEN, MAX_FRAME};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for any single frame to be read or written.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest whole transfer.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(120);
/// Transfers served at once; more connections are closed (the requester
/// retries).
const MAX_SERVING: usize = 4;
/// Attempts to fetch a new peer's state.
const ATTEMPTS: u32 = 3;

#[derive(Debug)]
enum SyncError {
    Io(io::Error),
    Timeout,
    Rejected(Reject),
    TooMany,
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncError::Io(e) => write!(f, "{e}"),
            SyncError::Timeout => f.write_str("timed out"),
            SyncError::Rejected(r) => write!(f, "bad frame: {}", r.as_str()),
            SyncError::TooMany => f.write_str("more records than the store can hold"),
        }
    }
}

impl From<io::Error> for SyncError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::InvalidData {
            SyncError::Rejected(Reject::Malformed)
        } else {
            SyncError::Io(e)
        }
    }
}

impl From<Reject> for SyncError {
    fn from(r: Reject) -> Self {
        SyncError::Rejected(r)
    }
}

impl From<tokio::time::error::Elapsed> for SyncError {
    fn from(_: tokio::time::error::Elapsed) -> Self {
        SyncError::Timeout
    }
}

async fn write_frame(s: &mut TcpStream, frame: &[u8]) -> io::Result<()> {
    let len =
        u32::try_from(frame.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buf = Vec::with_capacity(4 + frame.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(frame);
    s.write_all(&buf).await
}

/// One frame; `Ok(None)` on a clean end of stream before its first byte.
async fn read_frame(s: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if !(HEADER_LEN + auth::TAG_LEN..=MAX_FRAME).contains(&len) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame size"));
    }
    let mut frame = vec![0u8; len];
    s.read_exact(&mut frame).await?;
    Ok(Some(frame))
}

impl Node {
    fn sync_failed(&self, peer: SocketAddr, e: &SyncError) {
        if let SyncError::Rejected(r) = e {
            self.reject(*r, peer);
            return;
        }
        let n = bump(&self.stats.sync_errors);
        if self.stats.sync_log.ready(unix_ms(), LOG_EVERY_MS) {
            tracing::warn!(peer = %peer, error = %e, sync_errors_total = n, "multicast store: full-state transfer failed");
        }
    }
}

/// Answer full-state requests until cancelled.
pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    let permits = Arc::new(Semaphore::new(MAX_SERVING));
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => {
                // Out of file descriptors and the like: back off.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let me = node.clone();
        node.spawn(async move {
            let _permit = permit;
            let result = match timeout(TRANSFER_TIMEOUT, answer(&me, stream)).await {
                Ok(r) => r,
                Err(e) => Err(e.into()),
            };
            match result {
                Ok(Some(n)) => {
                    tracing::debug!(peer = %from, records = n, "multicast store: sent full state")
                }
                Ok(None) => {}
                Err(e) => me.sync_failed(from, &e),
            }
        });
    }
}

/// Serve one request; `Ok(None)` if the connection closed without one.
async fn answer(node: &Arc<Node>, mut stream: TcpStream) -> Result<Option<u64>, SyncError> {
    let _ = stream.set_nodelay(true);
    let Some(frame) = timeout(IO_TIMEOUT, read_frame(&mut stream)).await?? else {
        return Ok(None);
    };
    let (h, body) = node.accept(&frame, MAX_FRAME)?.ok_or(Reject::Unexpected)?;
    if body != Body::SyncRequest {
        return Err(Reject::Unexpected.into());
    }
    let me = node.clone();
    let snapshot = tokio::task::spawn_blocking(move || me.snapshot())
        .await
        .map_err(|e| SyncError::Io(io::Error::other(e)))?;
    let mut total = 0u64;
    for (seq, records) in wire::batches(snapshot, FRAME_RECORD_BUDGET)
        .into_iter()
        .enumerate()
    {
        total += records.len() as u64;
        let frame = node.seal(&Body::SyncRecords {
            request: h.nonce,
            seq: seq as u32,
            records,
        });
        timeout(IO_TIMEOUT, write_frame(&mut stream, &frame)).await??;
    }
    let end = node.seal(&Body::SyncEnd {
        request: h.nonce,
        total,
    });
    timeout(IO_TIMEOUT, write_frame(&mut stream, &end)).await??;
    // A requester that predates state changes has stopped reading and may
    // have closed: a failure from here on is not a failed transfer.
    for states in wire::state_batches(node.state_records(), FRAME_STATE_BUDGET) {
        let frame = node.seal(&Body::SyncStates {
            request: h.nonce,
            states,
        });
        if !matches!(
            timeout(IO_TIMEOUT, write_frame(&mut stream, &frame)).await,
            Ok(Ok(()))
        ) {
            return Ok(Some(total));
        }
    }
    let _ = stream.shutdown().await;
    Ok(Some(total))
}

/// Fetch the full state of a peer that just appeared, with retries.
pub async fn pull(node: Arc<Node>, peer: u64, addr: SocketAddr) {
    node.pulls.fetch_add(1, Ordering::Relaxed);
    let _done = PullGuard(&node);
    let mut last = SyncError::Timeout;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
            if !crate::lock::lock(&node.members).is(peer, addr) {
                // Gone or restarted; a successor triggers its own pull.
                return;
            }
        }
        let result = match timeout(TRANSFER_TIMEOUT, fetch(&node, peer, addr)).await {
            Ok(r) => r,
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(n) => {
                bump(&node.stats.syncs);
                node.set_warm("full state received");
                tracing::info!(peer = %addr, records = n, "multicast store: full state received");
                return;
            }
            Err(e) => last = e,
        }
    }
    node.sync_failed(addr, &last);
}

/// Counts a transfer in flight until dropped (also when cancelled).
struct PullGuard<'a>(&'a Node);

impl Drop for PullGuard<'_> {
    fn drop(&mut self) {
        self.0.pulls.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn fetch(node: &Node, peer: u64, addr: SocketAddr) -> Result<u64, SyncError> {
    let mut stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await??;
    let _ = stream.set_nodelay(true);
    let request: u64 = rand::random();
    let frame = wire::seal(&node.key, node.id, unix_ms(), request, &Body::SyncRequest);
    timeout(IO_TIMEOUT, write_frame(&mut stream, &frame)).await??;
    let mut seq = 0u32;
    let mut count = 0u64;
    loop {
        let frame = timeout(IO_TIMEOUT, read_frame(&mut stream))
            .await??
            .ok_or_else(|| SyncError::Io(io::ErrorKind::UnexpectedEof.into()))?;
        let (h, body) = wire::open(&node.key, &frame, MAX_FRAME)?;
        // Bound to this peer and this request, in order: a frame replayed
        // from another transfer or reordered does not fit.
        if h.node != peer {
            return Err(Reject::Unexpected.into());
        }
        auth::check_fresh(h.ts_ms, unix_ms())?;
        match body {
            Body::SyncRecords {
                request: r,
                seq: s,
                records,
            } if r == request && s == seq && !records.is_empty() => {
                count += records.len() as u64;
                if count > node.max_records as u64 {
                    return Err(SyncError::TooMany);
                }
                seq = seq.wrapping_add(1);
                for rec in records {
                    node.apply(rec);
                }
            }
            Body::SyncEnd { request: r, total } if r == request && total == count => {
                fetch_states(node, &mut stream, peer, addr, request).await?;
                return Ok(count);
            }
            _ => return Err(Reject::Unexpected.into()),
        }
    }
}

/// The `SyncStates` frames after `SyncEnd`, until the peer closes (a peer
/// that predates them closes right away).
async fn fetch_states(
    node: &Node,
    stream: &mut TcpStream,
    peer: u64,
    addr: SocketAddr,
    request: u64,
) -> Result<(), SyncError> {
    let mut count = 0usize;
    while let Some(frame) = timeout(IO_TIMEOUT, read_frame(stream)).await?? {
        let (h, body) = wire::open(&node.key, &frame, MAX_FRAME)?;
        if h.node != peer {
            return Err(Reject::Unexpected.into());
        }
        auth::check_fresh(h.ts_ms, unix_ms())?;
        match body {
            Body::SyncStates { request: r, states } if r == request => {
                count += states.len();
                if count > MAX_ROUTE_NAMES {
                    return Err(SyncError::TooMany);
                }
                node.apply_states(states, addr);
            }
            _ => return Err(Reject::Unexpected.into()),
        }
    }
    Ok(())
}
