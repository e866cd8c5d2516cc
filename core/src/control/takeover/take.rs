//! The new process's side: find the running process on the takeover
//! socket, receive its listening sockets, sessions and states, say `Go`
//! when ready, and take the sessions it learns while it drains.

use super::conn::{unexpected, Conn};
use super::wire::{Frame, Kind, Session, State, VERSION};
use super::TakeoverError;
use crate::admin_state::AdminState;
use crate::proxy::Runtime;
use crate::store::{MemoryStore, SessionStore};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UnixStream;

/// Most listening sockets accepted from the old process (addresses times
/// threads, far above any real setup; a bound on descriptors taken).
const MAX_SOCKETS: usize = 8192;

/// A takeover in progress: the old process answered and handed over its
/// listening sockets.
pub struct Taking {
    conn: Conn,
    sockets: HashMap<(KindKey, SocketAddr), Vec<std::net::TcpListener>>,
    states: Vec<State>,
    /// Sessions received, and the ones this store could not take.
    loaded: (usize, usize),
}

/// [`Kind`] as a map key.
type KindKey = u8;

impl Taking {
    /// Ask the process on `path` to hand over. `None` when takeover is off
    /// (empty path) or nobody answers: a stale socket file is removed so
    /// this process can listen there later.
    pub async fn connect(path: &Path) -> Result<Option<Taking>, TakeoverError> {
        if path.as_os_str().is_empty() {
            return Ok(None);
        }
        let stream = match UnixStream::connect(path).await {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                remove_stale(path)?;
                return Ok(None);
            }
            Err(source) => {
                return Err(TakeoverError::Socket {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let mut conn = Conn::new(stream);
        conn.send(&Frame::Hello {
            version: VERSION,
            pid: std::process::id(),
        })
        .await?;
        let (sockets, states) = receive_listeners(&mut conn).await?;
        let n: usize = sockets.values().map(Vec::len).sum();
        tracing::info!(
            sockets = n,
            path = %path.display(),
            "taking over from the running stickgate"
        );
        Ok(Some(Taking {
            conn,
            sockets,
            states,
            loaded: (0, 0),
        }))
    }

    /// The old process's sockets for a proxy address, if it had them.
    pub fn group(&mut self, tls: bool, addr: SocketAddr) -> Option<crate::server::Group> {
        let kind = if tls { Kind::Tls } else { Kind::Plain };
        self.sockets.remove(&(kind as u8, addr))
    }

    /// The old process's admin socket for this address, if it had it.
    pub fn admin(&mut self, addr: SocketAddr) -> Option<std::net::TcpListener> {
        let mut v = self.sockets.remove(&(Kind::Admin as u8, addr))?;
        v.pop()
    }

    /// Close the sockets of addresses the new config no longer lists (the
    /// old process closes its copies when it exits).
    pub fn close_unused(&mut self) {
        for ((_, addr), _) in self.sockets.drain() {
            tracing::info!(addr = %addr, "address no longer configured: not listening there after the takeover");
        }
    }

    /// Load the old process's session table into `store`.
    pub async fn receive_sessions(
        &mut self,
        store: &dyn SessionStore,
    ) -> Result<(), TakeoverError> {
        loop {
            match self.conn.recv().await? {
                Frame::Sessions(list) => self.load(store, list),
                Frame::Snapshot => break,
                other => return Err(unexpected(&other, "sessions")),
            }
        }
        let (n, dropped) = self.loaded;
        tracing::info!(sessions = n, not_stored = dropped, "sessions taken over");
        Ok(())
    }

    fn load(&mut self, store: &dyn SessionStore, list: Vec<Session>) {
        let (n, dropped) = load(store, list);
        self.loaded.0 += n;
        self.loaded.1 += dropped;
    }

    /// Put the operators' states onto the backends of `rt` (a change newer
    /// than what the backend has; the config's own states have none).
    pub fn apply_states(&self, rt: &Runtime) {
        for s in &self.states {
            let Some(i) = rt.table.index_of(&s.route) else {
                continue;
            };
            let b = &rt.table.backends[i];
            if s.at_ms > b.state_at_ms() {
                b.set_state(s.state, s.at_ms);
                if s.state == AdminState::Stopped {
                    rt.store.route_down(b.route());
                }
                tracing::info!(backend = %s.route, state = %s.state, "state taken over");
            }
        }
    }

    /// Ready: tell the old process to stop accepting, and load what it
    /// learned since the snapshot. Returns once the new process may
    /// accept; a silent old process is waited for `conn::STEP` at most.
    pub async fn go(mut self, store: &dyn SessionStore) -> Following {
        let r = async {
            self.conn.send(&Frame::Go).await?;
            loop {
                match self.conn.recv().await? {
                    Frame::Sessions(list) => self.load(store, list),
                    Frame::Stopped => return Ok(()),
                    other => return Err(unexpected(&other, "stopped")),
                }
            }
        }
        .await;
        if let Err(e) = &r {
            tracing::warn!(error = %e, "the old process did not confirm it stopped accepting; accepting anyway");
        }
        Following {
            conn: r.is_ok().then_some(self.conn),
        }
    }
}

/// After `Go`: the old process drains and sends what it still learns.
pub struct Following {
    conn: Option<Conn>,
}

impl Following {
    /// Load the old process's last sessions in the background until it
    /// says `Done` (or `limit` passed: it drains for its own
    /// `shutdown_timeout`, so give this one's and a margin).
    pub fn spawn(self, store: Arc<dyn SessionStore>, limit: Duration) {
        let Some(mut conn) = self.conn else { return };
        tokio::spawn(async move {
            let end = Instant::now() + limit;
            let mut n = 0;
            loop {
                let left = end.saturating_duration_since(Instant::now());
                match conn.recv_within(left.max(Duration::from_millis(1))).await {
                    Ok(Frame::Sessions(list)) => n += load(&*store, list).0,
                    Ok(Frame::Done) => {
                        tracing::info!(
                            sessions = n,
                            "takeover complete: the old process drained and exits"
                        );
                        return;
                    }
                    Ok(other) => {
                        tracing::warn!(error = %unexpected(&other, "sessions"), "takeover: stopped following the old process");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "takeover: the old process ended without saying done");
                        return;
                    }
                }
            }
        });
    }
}

/// Listener frames with their sockets, up to the one `States` frame.
async fn receive_listeners(
    conn: &mut Conn,
) -> Result<
    (
        HashMap<(KindKey, SocketAddr), Vec<std::net::TcpListener>>,
        Vec<State>,
    ),
    TakeoverError,
> {
    let mut sockets: HashMap<_, Vec<_>> = HashMap::new();
    let mut n = 0;
    loop {
        match conn.recv().await? {
            Frame::Listener { kind, addr } => {
                n += 1;
                if n > MAX_SOCKETS {
                    return Err(TakeoverError::Protocol(format!(
                        "more than {MAX_SOCKETS} listening sockets offered"
                    )));
                }
                let l = std::net::TcpListener::from(conn.recv_fd().await?);
                l.set_nonblocking(true).map_err(TakeoverError::Io)?;
                sockets.entry((kind as u8, addr)).or_default().push(l);
            }
            Frame::States(states) => return Ok((sockets, states)),
            other => return Err(unexpected(&other, "listener or states")),
        }
    }
}

/// Put sessions into the store's embedded table (both tiers, keeping
/// their age); the count loaded and the count a full table refused. A
/// store with no embedded table takes none (its sessions are shared).
fn load(store: &dyn SessionStore, list: Vec<Session>) -> (usize, usize) {
    let Some(mem) = store.memory() else {
        return (0, list.len());
    };
    let full_before = mem.status().rejected_full;
    let mut routes: HashMap<String, Arc<str>> = HashMap::new();
    for s in &list {
        let route = routes
            .entry(s.route.clone())
            .or_insert_with(|| Arc::from(s.route.as_str()));
        let tier: Option<&MemoryStore> = if s.confirmed {
            Some(mem)
        } else {
            mem.unconfirmed_tier()
        };
        if let Some(t) = tier {
            t.bind_aged(&s.id, route, s.idle_ms);
        }
    }
    let refused = mem.status().rejected_full.saturating_sub(full_before) as usize;
    (list.len().saturating_sub(refused), refused)
}

/// A socket file nobody listens on: the previous process is gone. Only a
/// socket is removed; anything else there is the operator's.
fn remove_stale(path: &Path) -> Result<(), TakeoverError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            tracing::info!(path = %path.display(), "stale takeover socket (no process behind it): starting fresh");
            std::fs::remove_file(path).map_err(|source| TakeoverError::Socket {
                path: path.to_owned(),
                source,
            })
        }
        Ok(_) => Err(TakeoverError::NotASocket {
            path: path.to_owned(),
        }),
        Err(_) => Ok(()),
    }
}
