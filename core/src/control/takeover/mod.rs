//! Binary upgrade with state handover (`server.takeover_socket`): a new
//! `stickgate run` takes the listening sockets, the memory store's
//! sessions and the operators' backend states from the running process
//! instead of binding, so an upgrade loses no connection and no session.
//!
//! The conversation, over a Unix socket only the same user may use (mode
//! 0600, and the peer's uid checked with SO_PEERCRED):
//!
//! 1. new -> old `Hello` (magic, version, pid); old -> new every listening
//!    socket (each per-thread SO_REUSEPORT socket of every proxy and TLS
//!    address, and the admin socket) as a `Listener` frame plus the
//!    descriptor by SCM_RIGHTS, then one `States` frame, then the session
//!    table in `Sessions` batches and `Snapshot`. The old process keeps
//!    accepting all along: nothing changes for clients yet.
//! 2. The new process builds everything (listeners it was not given are
//!    bound, inherited ones no longer configured are closed, sessions go
//!    into its store, states onto its backends), waits for its first
//!    health checks, then sends `Go`. If it fails before, it exits 2 and
//!    the old process, seeing the connection end, keeps serving.
//! 3. On `Go` the old process stops its accept loops (the sockets stay
//!    open in the new process, so connections arriving now wait in the
//!    kernel's backlog), sends the sessions learned since the snapshot and
//!    `Stopped`. Only then does the new process accept: every session the
//!    old one learned before it stopped accepting is known to the new one
//!    before the new one serves a request (the "final delta" choice: the
//!    old process never stops learning, it reports what it learned).
//! 4. The old process drains its connections and WebSocket tunnels for
//!    up to `shutdown_timeout`, sending what its last requests taught it
//!    every 100 ms and once more at the end, then `Done`, and exits 0.
//!    Sessions created by a response on a draining connection are thus
//!    known to the new process within 100 ms.
//!
//! The new process then listens on the same path itself (it replaces the
//! file atomically), so the next upgrade works the same way. A stale file
//! with no process behind it is replaced at start.

mod conn;
mod serve;
mod take;
pub mod upgrade;
pub mod wire;

pub use serve::{Handover, Listening, SocketFile, Source};
pub use take::{Following, Taking};

use std::path::PathBuf;
use std::time::Duration;

/// How often a draining old process sends the sessions it learned.
pub const DELTA_EVERY: Duration = Duration::from_millis(100);

/// Why a takeover (either side) did not happen; the old process keeps
/// serving, the new one stops with this line.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("takeover socket {path}: {source} (check server.takeover_socket and that its directory exists and is writable)")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("takeover socket {path} exists and is not a socket; remove it or choose another server.takeover_socket")]
    NotASocket { path: PathBuf },
    #[error("takeover socket {path} was created with mode {mode:o}, not 0600; refusing to offer the listeners through it")]
    Mode { path: PathBuf, mode: u32 },
    #[error("takeover: {0}")]
    Io(std::io::Error),
    #[error("takeover: timed out {0} ({1:?})")]
    Timeout(&'static str, Duration),
    #[error("takeover: {0}")]
    Wire(#[from] wire::WireError),
    #[error("takeover: {0}")]
    Protocol(String),
    #[error("takeover refused by the running stickgate: {0}")]
    Refused(String),
}

impl TakeoverError {
    /// The line a new process that cannot take over ends with: what went
    /// wrong, and that the old one still serves.
    pub fn advice(&self) -> &'static str {
        "the running stickgate keeps serving; fix the problem and start the new one again"
    }
}
