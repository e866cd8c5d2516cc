//! The request-path threads (`server.threads`): one single-threaded tokio
//! runtime per thread, so a connection, its requests and the upstream
//! connections they use stay on the core that accepted it (no work
//! stealing, no cross-core wake-ups). Admin, health checks, store
//! replication and reload run on the caller's runtime beside them.

use std::sync::Arc;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

pub use crate::thread_index::current;

/// A request-path thread could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start request thread {index}: {source}")]
pub struct WorkerError {
    pub index: usize,
    pub source: std::io::Error,
}

/// The running request-path threads.
pub struct Workers {
    handles: Arc<[Handle]>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Start `n` threads, each running its own current-thread runtime
    /// until [`Workers::stop`]; thread i is pinned to `cpus[i]` when given
    /// (see `server::affinity`).
    pub fn start(n: usize, cpus: Option<&[usize]>) -> Result<Self, WorkerError> {
        let mut handles = Vec::with_capacity(n);
        let mut stops = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for index in 0..n {
            let err = |source| WorkerError { index, source };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(err)?;
            handles.push(rt.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            let cpu = cpus.and_then(|c| c.get(index).copied());
            let thread = std::thread::Builder::new()
                .name(format!("stickgate-w{index}"))
                .spawn(move || {
                    crate::thread_index::set(index);
                    if let Some(cpu) = cpu {
                        if let Err(e) = super::affinity::pin_current(cpu) {
                            tracing::warn!(thread = index, cpu, error = %e, "cannot pin the request thread to its CPU; the scheduler places it (set server.cpu_affinity = \"off\" to silence this)");
                        }
                    }
                    // Tasks spawned onto this runtime run while it waits.
                    let _ = rt.block_on(stopped);
                })
                .map_err(err)?;
            threads.push(thread);
        }
        Ok(Workers {
            handles: handles.into(),
            stops,
            threads,
        })
    }

    /// One handle per thread, to spawn accept loops onto.
    pub fn handles(&self) -> Arc<[Handle]> {
        self.handles.clone()
    }

    /// End every thread: what still runs on them (connections past the
    /// shutdown deadline, tunnels) is dropped. Waits for the threads on a
    /// blocking thread, so it may be awaited on any runtime.
    pub async fn stop(self) {
        for s in self.stops {
            let _ = s.send(());
        }
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}
