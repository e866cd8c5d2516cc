//! Which request thread the caller runs on. A leaf value every layer may
//! read: per-core state (upstream pools, striped counters) picks its slot
//! with it, and only the server's request threads set it.

use std::cell::Cell;

thread_local! {
    /// This thread's request-thread number; `None` off the request path.
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The request-thread number of the calling thread (`0..threads`), or
/// `None` on any other thread (control plane, tests).
pub fn current() -> Option<usize> {
    INDEX.with(Cell::get)
}

/// Mark the calling thread as request thread `index` (the server does this
/// once per thread it starts; unit tests of per-thread state do too).
pub(crate) fn set(index: usize) {
    INDEX.with(|i| i.set(Some(index)));
}
