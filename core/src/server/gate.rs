//! Polling a rarely-ready future only when it was woken.
//!
//! A connection's task waits on its connection, its timer and the drain
//! signal at once, and it is woken on every request by the connection.
//! `select!` then polls all three: a tokio `Sleep` re-registers its waker
//! and a watch `changed()` re-arms its notification on each poll, about
//! 1k instructions per request for futures that are ready once in a
//! connection's life. A [`Gate`] gives such a future a waker of its own
//! and polls it only when that waker fired (or when it is new), so a
//! request's wake-ups poll the connection alone.

use crate::lock::lock;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// What a gated future's waker shares with its [`Gate`].
#[derive(Default)]
struct Shared {
    /// The future's waker fired since its last poll.
    woken: AtomicBool,
    /// The task to wake on its behalf.
    task: Mutex<Option<Waker>>,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(task) = lock(&self.task).as_ref() {
            task.wake_by_ref();
        }
    }
}

/// One gated slot: reused for each future put in it (see [`Gate::arm`]),
/// so a connection allocates its waker once.
pub struct Gate {
    shared: Arc<Shared>,
    /// The waker the gated future registers: it notes the wake-up, then
    /// wakes the task.
    waker: Waker,
    /// The task waker last handed to `shared`, compared without a lock.
    task: Option<Waker>,
}

impl Default for Gate {
    fn default() -> Self {
        let shared = Arc::new(Shared::default());
        Gate {
            waker: Waker::from(shared.clone()),
            shared,
            task: None,
        }
    }
}

impl Gate {
    /// A new future goes in: its first poll must happen.
    pub fn arm(&mut self) {
        self.shared.woken.store(true, Ordering::Relaxed);
    }

    /// Poll `fut` if its waker fired since the last poll (or the gate was
    /// armed, or the task's waker changed); `Pending` without polling it
    /// otherwise.
    pub fn poll<F: Future + ?Sized>(
        &mut self,
        fut: Pin<&mut F>,
        cx: &mut Context<'_>,
    ) -> Poll<F::Output> {
        if !self.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            *lock(&self.shared.task) = Some(cx.waker().clone());
            self.task = Some(cx.waker().clone());
            self.shared.woken.store(true, Ordering::Relaxed);
        }
        // A plain load first: on most polls nothing woke the future, and
        // the read-modify-write is for the rare one that must poll.
        if !self.shared.woken.load(Ordering::Acquire)
            || !self.shared.woken.swap(false, Ordering::AcqRel)
        {
            return Poll::Pending;
        }
        fut.poll(&mut Context::from_waker(&self.waker))
    }

    /// `fut` as a future polled through this gate (for `select!`).
    pub fn wrap<'a, F: Future>(&'a mut self, fut: F) -> Gated<'a, F> {
        self.arm();
        Gated { gate: self, fut }
    }
}

pin_project_lite::pin_project! {
    /// A future polled through a [`Gate`].
    pub struct Gated<'a, F> {
        gate: &'a mut Gate,
        #[pin]
        fut: F,
    }
}

impl<F: Future> Future for Gated<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        this.gate.poll(this.fut, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `ready` is set, woken through the
    /// waker it kept.
    #[derive(Default)]
    struct Probe {
        polls: AtomicUsize,
        ready: AtomicBool,
        waker: Mutex<Option<Waker>>,
    }

    struct ProbeFut<'a>(&'a Probe);

    impl Future for ProbeFut<'_> {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.0.polls.fetch_add(1, Ordering::Relaxed);
            if self.0.ready.load(Ordering::Relaxed) {
                return Poll::Ready(());
            }
            *self.0.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// Counts the task's wake-ups.
    #[derive(Default)]
    struct Task(AtomicUsize);

    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_gated_future_is_polled_only_when_new_or_woken() {
        let probe = Probe::default();
        let task = Arc::new(Task::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        let mut gate = Gate::default();
        let fut = gate.wrap(ProbeFut(&probe));
        let mut fut = std::pin::pin!(fut);
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            probe.polls.load(Ordering::Relaxed),
            1,
            "a new future is polled"
        );
        for _ in 0..5 {
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(
            probe.polls.load(Ordering::Relaxed),
            1,
            "not woken: not polled"
        );
        probe.ready.store(true, Ordering::Relaxed);
        probe.waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(
            task.0.load(Ordering::Relaxed),
            1,
            "its wake-up wakes the task"
        );
        assert!(fut.as_mut().poll(&mut cx).is_ready());
        assert_eq!(probe.polls.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_new_task_waker_gets_a_poll_and_the_wake_ups() {
        let probe = Probe::default();
        let (a, b) = (Arc::new(Task::default()), Arc::new(Task::default()));
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        let mut gate = Gate::default();
        let fut = gate.wrap(ProbeFut(&probe));
        let mut fut = std::pin::pin!(fut);
        assert!(fut
            .as_mut()
            .poll(&mut Context::from_waker(&wa))
            .is_pending());
        assert!(fut
            .as_mut()
            .poll(&mut Context::from_waker(&wb))
            .is_pending());
        assert_eq!(
            probe.polls.load(Ordering::Relaxed),
            2,
            "polled again for the new task"
        );
        probe.waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(
            (a.0.load(Ordering::Relaxed), b.0.load(Ordering::Relaxed)),
            (0, 1),
            "the task that polled last is woken"
        );
    }

    #[test]
    fn a_gate_reused_for_the_next_future_polls_it_first() {
        let (p1, p2) = (Probe::default(), Probe::default());
        let task = Arc::new(Task::default());
        let waker = Waker::from(task);
        let mut cx = Context::from_waker(&waker);
        let mut gate = Gate::default();
        {
            let fut = gate.wrap(ProbeFut(&p1));
            let mut fut = std::pin::pin!(fut);
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
        let fut = gate.wrap(ProbeFut(&p2));
        let mut fut = std::pin::pin!(fut);
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(p2.polls.load(Ordering::Relaxed), 1);
    }
}
