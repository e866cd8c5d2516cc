//! HTTP/2 streams run inside their connection's task.
//!
//! hyper's HTTP/2 server hands every stream (and every RFC 8441 tunnel's
//! data pump) to an executor. With `TokioExecutor` each stream is a tokio
//! task of its own: an allocation with cache-line alignment, a lock on the
//! runtime's task list, and a task switch every time a stream wakes the
//! connection to write its answer. On the per-core runtimes a stream never
//! leaves its connection's thread anyway, so [`Driven`] polls the streams
//! from the connection's own task: a stream costs one small allocation,
//! and the answers that become ready together are written by the same
//! poll that produced them.

use crate::lock::lock;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// A stream's future, as hyper hands it over.
type StreamTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor given to hyper's HTTP/2 server: it only queues the
/// streams for the [`Driven`] that owns the same queue. (hyper wants an
/// executor that is `Send` and `Clone`, hence the shared queue rather than
/// a reference to the stream set itself.)
#[derive(Clone, Default)]
pub struct StreamExec {
    queue: Arc<Queue>,
}

/// The streams hyper started and the [`Driven`] has not taken yet.
#[derive(Default)]
struct Queue {
    tasks: Mutex<Vec<StreamTask>>,
    /// Whether `tasks` may hold any: the connection is polled many times
    /// per stream, and most polls start none, so they skip the lock.
    filled: AtomicBool,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        lock(&self.queue.tasks).push(Box::pin(fut));
        self.queue.filled.store(true, Ordering::Release);
    }
}

impl StreamExec {
    fn take(&self) -> Vec<StreamTask> {
        if !self.queue.filled.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut *lock(&self.queue.tasks))
    }
}

/// Rounds of (streams, connection) in one poll of a [`Driven`] before it
/// yields to the other connections of its thread: a round only follows
/// when the connection read new requests, so a busy client cannot keep
/// the thread to itself.
const MAX_ROUNDS: usize = 8;

pin_project_lite::pin_project! {
    /// An HTTP/2 connection future and the streams it started. Ends when
    /// the connection ends; streams still running then are dropped (the
    /// client is gone or the connection was cut, as for an HTTP/1.1
    /// connection whose request is dropped with it).
    pub struct Driven<C> {
        #[pin]
        conn: C,
        exec: StreamExec,
        streams: FuturesUnordered<StreamTask>,
    }
}

impl<C> Driven<C> {
    /// Drive `conn`, whose server was built with `exec`.
    pub fn new(conn: C, exec: StreamExec) -> Self {
        Driven {
            conn,
            exec,
            streams: FuturesUnordered::new(),
        }
    }

    /// The connection itself (graceful shutdown).
    pub fn conn(self: Pin<&mut Self>) -> Pin<&mut C> {
        self.project().conn
    }
}

impl<C: Future> Future for Driven<C> {
    type Output = C::Output;

    /// Streams first (their answers get queued), then the connection
    /// (writes them, reads new requests); new streams get their first
    /// poll at once, and the connection is polled again to send what
    /// they answered without waiting.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        for _ in 0..MAX_ROUNDS {
            while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(cx) {}
            if let Poll::Ready(out) = this.conn.as_mut().poll(cx) {
                return Poll::Ready(out);
            }
            let new = this.exec.take();
            if new.is_empty() {
                return Poll::Pending;
            }
            this.streams.extend(new);
        }
        // A client that keeps sending requests gets its turn again after
        // the other tasks of this thread had theirs.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Waker;

    /// A stand-in connection: starts `per_poll` streams on each poll (each
    /// counts itself done when first polled) and ends once `end_after`
    /// polls were made.
    struct FakeConn {
        exec: StreamExec,
        polls: usize,
        per_poll: usize,
        end_after: usize,
        done: Arc<AtomicUsize>,
    }

    impl Future for FakeConn {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.polls >= self.end_after {
                return Poll::Ready(self.polls);
            }
            for _ in 0..self.per_poll {
                let done = self.done.clone();
                self.exec.execute(async move {
                    done.fetch_add(1, Ordering::Relaxed);
                });
            }
            Poll::Pending
        }
    }

    fn fake(per_poll: usize, end_after: usize) -> (Driven<FakeConn>, Arc<AtomicUsize>) {
        let exec = StreamExec::default();
        let done = Arc::new(AtomicUsize::new(0));
        let conn = FakeConn {
            exec: exec.clone(),
            polls: 0,
            per_poll,
            end_after,
            done: done.clone(),
        };
        (Driven::new(conn, exec), done)
    }

    #[test]
    fn streams_started_by_the_connection_run_in_the_same_poll() {
        let (driven, done) = fake(3, 3);
        let mut driven = std::pin::pin!(driven);
        let mut cx = Context::from_waker(Waker::noop());
        // Poll 1 starts three streams: they run, and the connection is
        // polled again (poll 2 starts three more, which run too); poll 3
        // ends the connection.
        assert_eq!(driven.as_mut().poll(&mut cx), Poll::Ready(3));
        assert_eq!(done.load(Ordering::Relaxed), 6);
        assert!(driven.streams.is_empty());
    }

    #[test]
    fn a_connection_that_keeps_starting_streams_yields_after_a_few_rounds() {
        let (driven, done) = fake(1, usize::MAX);
        let mut driven = std::pin::pin!(driven);
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(driven.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(driven.conn.polls, MAX_ROUNDS);
        // The streams of the last round wait for the next poll.
        assert_eq!(done.load(Ordering::Relaxed), MAX_ROUNDS - 1);
        assert_eq!(driven.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(done.load(Ordering::Relaxed), 2 * MAX_ROUNDS - 1);
    }
}
