//! The one policy for a poisoned lock: recover it and carry on, logging
//! once per process.
//!
//! A std `Mutex` is poisoned when a thread panics while holding it. Every
//! structure behind our locks (session shards, idle connection lists,
//! health history, state books) stays valid between statements, so its
//! data is still the best we have; refusing it would silently stop a
//! store shard from sweeping or a pool from pooling for the rest of the
//! process. So the guard is recovered, the poison cleared (later locks
//! take the fast path) and the event logged once, because the panic that
//! caused it has already been reported where it happened.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Set once the first poisoned lock was reported.
static REPORTED: AtomicBool = AtomicBool::new(false);

/// Lock `m`; a poisoned lock is recovered (see the module comment), never
/// refused.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(guard) => guard,
        Err(poisoned) => {
            let guard = poisoned.into_inner();
            m.clear_poison();
            report();
            guard
        }
    }
}

/// Log the first poisoned lock of the process.
fn report() {
    if !REPORTED.swap(true, Ordering::Relaxed) {
        tracing::error!(
            "a lock was poisoned by a panic in another task; its data is used as it was left (reported once per process)"
        );
    }
}

/// Whether a poisoned lock was seen (for tests).
#[cfg(test)]
fn reported() -> bool {
    REPORTED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn poison(m: &Arc<Mutex<Vec<u32>>>) {
        let m = m.clone();
        let r = std::thread::spawn(move || {
            let mut g = m.lock().unwrap();
            g.push(2);
            panic!("poison the lock on purpose");
        })
        .join();
        assert!(r.is_err(), "the thread panicked");
    }

    #[test]
    fn a_poisoned_lock_still_gives_its_guard_and_data() {
        let m = Arc::new(Mutex::new(vec![1]));
        poison(&m);
        assert!(m.is_poisoned());
        assert_eq!(
            *lock(&m),
            vec![1, 2],
            "the data as the panicking thread left it"
        );
        assert!(reported());
        assert!(!m.is_poisoned(), "recovered once, the lock is clean again");
        lock(&m).push(3);
        assert_eq!(*lock(&m), vec![1, 2, 3]);
    }
}
