//! The old process's side: listen on the takeover socket, hand over to one
//! new process of the same user, then stop accepting, drain and report
//! the sessions learned meanwhile (see the module above for the order).

use super::conn::{unexpected, Conn};
use super::wire::{Batches, Frame, Kind, Session, State, VERSION};
use super::{TakeoverError, DELTA_EVERY};
use crate::proxy::Proxy;
use crate::server::{ListenerKind, Server};
use crate::store::{MemoryStore, SessionStore};
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UnixListener;
use tokio::sync::oneshot;

/// Longest wait for the new process to be ready (it builds its runtime,
/// loads certificates and runs its first health checks meanwhile).
const GO_WAIT: Duration = Duration::from_secs(120);

/// Sessions a delta repeats from before its start, for clock rounding.
const DELTA_OVERLAP_MS: u64 = 1000;

/// The takeover socket this process listens on.
pub struct Listening {
    listener: UnixListener,
    file: SocketFile,
}

/// The socket file this process created.
#[derive(Debug, Clone)]
pub struct SocketFile {
    path: PathBuf,
    /// Device and inode of the file we created: only that one is removed
    /// at exit, never a successor's socket at the same path.
    id: (u64, u64),
}

impl SocketFile {
    /// Remove the socket file if it is still ours (a successor may have
    /// replaced it with its own).
    pub fn remove(&self) {
        if let Ok(m) = std::fs::metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

impl Listening {
    /// Listen on `path`, mode 0600 from the start (the socket is created
    /// under umask 077 and renamed into place, replacing a stale file or
    /// the previous process's socket atomically).
    pub fn bind(path: &Path) -> Result<Listening, TakeoverError> {
        let err = |source| TakeoverError::Socket {
            path: path.to_owned(),
            source,
        };
        refuse_non_socket(path)?;
        let fresh = sibling(path);
        let _ = std::fs::remove_file(&fresh);
        let listener = bind_private(&fresh).map_err(err)?;
        let meta = std::fs::metadata(&fresh).map_err(err)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode != 0o600 {
            let _ = std::fs::remove_file(&fresh);
            return Err(TakeoverError::Mode {
                path: path.to_owned(),
                mode,
            });
        }
        std::fs::rename(&fresh, path).map_err(err)?;
        tracing::info!(path = %path.display(), "takeover socket listening (binary upgrade)");
        Ok(Listening {
            listener,
            file: SocketFile {
                path: path.to_owned(),
                id: (meta.dev(), meta.ino()),
            },
        })
    }
}

/// `path.new-<pid>`: where the socket is made before it is renamed.
fn sibling(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".new-{}", std::process::id()));
    PathBuf::from(s)
}

/// A file at `path` that is not a socket is an operator's mistake; never
/// replace it.
fn refuse_non_socket(path: &Path) -> Result<(), TakeoverError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => Err(TakeoverError::NotASocket {
            path: path.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Bind with umask 077, so the socket never exists with wider rights. The
/// umask is process-wide: for this instant, files other threads create
/// get no group/other rights either (stricter, never looser).
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use rustix::fs::Mode;
    let old = rustix::process::umask(Mode::from_raw_mode(0o177));
    let r = UnixListener::bind(path);
    rustix::process::umask(old);
    r
}

/// Whether a peer of uid `peer` may take over a process running as `me`.
pub(super) fn same_user(peer: u32, me: u32) -> bool {
    peer == me
}

/// What this process hands over.
pub struct Source {
    /// The listeners (their sockets are handed over).
    pub server: Arc<Server>,
    /// The admin socket as configured, and a copy of it.
    pub admin: Option<(SocketAddr, std::net::TcpListener)>,
    /// The request path: its store's sessions and its backends' states.
    pub proxy: Arc<Proxy>,
}

/// An accepted takeover: the new process is ready and said `Go`.
pub struct Handover {
    conn: Conn,
    /// When the last batch of sessions was taken.
    since: Instant,
    pid: u32,
    failed: bool,
}

impl Listening {
    /// Serve takeover requests until one succeeds; its [`Handover`] is
    /// sent on the returned channel (with the socket file, to remove at
    /// exit). Peers of another user are refused and logged; a failed
    /// takeover is logged and this process serves on.
    pub fn serve(self, source: Source) -> (SocketFile, oneshot::Receiver<Handover>) {
        let (tx, rx) = oneshot::channel();
        let file = self.file.clone();
        tokio::spawn(async move {
            let me = rustix::process::getuid().as_raw();
            loop {
                let stream = match self.listener.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "takeover socket: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let mut conn = Conn::new(stream);
                let Some(pid) = admit(&conn, me) else {
                    continue;
                };
                match offer(&mut conn, &source).await {
                    Ok(since) => {
                        if pid != 0 {
                            crate::control::systemd::main_pid(pid);
                        }
                        let _ = tx.send(Handover {
                            conn,
                            since,
                            pid,
                            failed: false,
                        });
                        return;
                    }
                    Err(e) => tracing::warn!(
                        pid,
                        error = %e,
                        "takeover by a new process failed; this process keeps serving"
                    ),
                }
            }
        });
        (file, rx)
    }
}

/// The peer's pid when it runs as our user; otherwise refused and logged.
fn admit(conn: &Conn, me: u32) -> Option<u32> {
    match conn.peer_uid() {
        Ok((uid, pid)) if same_user(uid, me) => {
            Some(pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0))
        }
        Ok((uid, pid)) => {
            tracing::warn!(
                uid,
                pid,
                my_uid = me,
                "takeover refused: the peer runs as another user"
            );
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "takeover refused: cannot read the peer's credentials");
            None
        }
    }
}

/// One takeover conversation up to `Go`: the new process's hello, every
/// listening socket, the states, the session table. Returns when the
/// snapshot was taken.
async fn offer(conn: &mut Conn, source: &Source) -> Result<Instant, TakeoverError> {
    let pid = match conn.recv().await? {
        Frame::Hello { version, pid } if version == VERSION => pid,
        Frame::Hello { version, .. } => {
            let why = format!("takeover protocol {version}, this process speaks {VERSION}: stop it and start the new one instead");
            let _ = conn.send(&Frame::Refused(why.clone())).await;
            return Err(TakeoverError::Refused(why));
        }
        other => return Err(unexpected(&other, "hello")),
    };
    tracing::info!(
        pid,
        "takeover requested by a new process: handing over listeners, sessions and backend states"
    );
    send_listeners(conn, source).await?;
    conn.send(&Frame::States(states(&source.proxy))).await?;
    let since = Instant::now();
    let store = source.proxy.runtime().store.clone();
    send_sessions(conn, &*store, None).await?;
    conn.send(&Frame::Snapshot).await?;
    match conn.recv_within(GO_WAIT).await? {
        Frame::Go => Ok(since),
        other => Err(unexpected(&other, "go")),
    }
}

async fn send_listeners(conn: &mut Conn, source: &Source) -> Result<(), TakeoverError> {
    for (side, addr, sockets) in source.server.listening_sockets() {
        let kind = match side {
            ListenerKind::Plain => Kind::Plain,
            ListenerKind::Tls => Kind::Tls,
        };
        for s in sockets {
            conn.send(&Frame::Listener { kind, addr }).await?;
            conn.send_fd(&s).await?;
        }
    }
    if let Some((addr, l)) = &source.admin {
        conn.send(&Frame::Listener {
            kind: Kind::Admin,
            addr: *addr,
        })
        .await?;
        conn.send_fd(l).await?;
    }
    Ok(())
}

/// Every backend state an operator set (the config's own states have no
/// time and stay the new config's business).
fn states(proxy: &Proxy) -> Vec<State> {
    proxy
        .runtime()
        .table
        .backends
        .iter()
        .filter(|b| b.state_at_ms() > 0)
        .map(|b| State {
            route: b.route().to_owned(),
            state: b.state(),
            at_ms: b.state_at_ms(),
        })
        .collect()
}

/// Send the memory store's sessions (both tiers) idle for at most
/// `max_idle_ms` (all of them with `None`); other stores have none to send.
async fn send_sessions(
    conn: &mut Conn,
    store: &dyn SessionStore,
    max_idle_ms: Option<u64>,
) -> Result<usize, TakeoverError> {
    let Some(mem) = store.memory() else {
        return Ok(0);
    };
    let mut batches = Batches::default();
    let mut n = 0;
    let mut add = |tier: &MemoryStore, confirmed: bool| {
        tier.for_each(|id, route, idle_ms| {
            if max_idle_ms.is_none_or(|max| idle_ms <= max) {
                n += 1;
                batches.push(Session {
                    id: id.to_owned(),
                    route: route.to_string(),
                    idle_ms,
                    confirmed,
                });
            }
        });
    };
    add(mem, true);
    if let Some(tier) = mem.unconfirmed_tier() {
        add(tier, false);
    }
    for f in batches.finish() {
        conn.send(&f).await?;
    }
    Ok(n)
}

impl Handover {
    /// Accepting has stopped: send what was learned since the snapshot,
    /// then `Stopped` (the new process accepts from now on).
    pub async fn stopped(&mut self, store: &dyn SessionStore) {
        let r = async {
            self.delta(store).await?;
            self.conn.send(&Frame::Stopped).await
        }
        .await;
        self.fail_on(r);
    }

    /// While draining: send newly learned sessions every [`DELTA_EVERY`].
    /// Never returns (run it beside the drain).
    pub async fn follow(&mut self, store: &dyn SessionStore) {
        loop {
            tokio::time::sleep(DELTA_EVERY).await;
            if !self.failed {
                let r = self.delta(store).await.map(drop);
                self.fail_on(r);
            }
        }
    }

    /// Drained: the last delta and `Done`.
    pub async fn done(mut self, store: &dyn SessionStore) {
        if !self.failed {
            let r = async {
                self.delta(store).await?;
                self.conn.send(&Frame::Done).await
            }
            .await;
            self.fail_on(r);
        }
        tracing::info!(pid = self.pid, "handed over to the new process; exiting");
    }

    /// Sessions touched since the last batch (with some overlap).
    async fn delta(&mut self, store: &dyn SessionStore) -> Result<usize, TakeoverError> {
        let window = self.since.elapsed().as_millis() as u64 + DELTA_OVERLAP_MS;
        self.since = Instant::now();
        send_sessions(&mut self.conn, store, Some(window)).await
    }

    fn fail_on(&mut self, r: Result<(), TakeoverError>) {
        if let Err(e) = r {
            if !self.failed {
                tracing::warn!(pid = self.pid, error = %e, "cannot send sessions to the new process; those learned while draining stay here");
            }
            self.failed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_user_may_take_over() {
        assert!(same_user(1000, 1000));
        assert!(
            !same_user(0, 1000),
            "not even root: it would run our sockets as another user"
        );
        assert!(!same_user(1001, 1000));
    }

    #[tokio::test]
    async fn the_socket_is_0600_replaces_a_stale_one_and_refuses_other_files() {
        let dir = std::env::temp_dir().join(format!("sg-takeover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.sock");
        // A stale socket (its process gone) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let l = Listening::bind(&path).unwrap().file;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!sibling(&path).exists(), "renamed into place");
        // A successor's socket at the same path survives our exit.
        let next = Listening::bind(&path).unwrap().file;
        l.remove();
        assert!(path.exists(), "the successor's socket was removed");
        next.remove();
        assert!(!path.exists());
        // A regular file is never replaced.
        std::fs::write(&path, "keep").unwrap();
        assert!(matches!(
            Listening::bind(&path),
            Err(TakeoverError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
