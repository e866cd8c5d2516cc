//! A cheap clock for bookkeeping that counts in milliseconds or more:
//! idle ages of pooled connections and of sessions. `Instant::now()` reads
//! the TSC through the vDSO (22 ns here, measured); the kernel's coarse
//! monotonic clock is the last timer tick's time, read from the same vDSO
//! page without it (2.6 ns), and a sticky request takes several such
//! readings. Its resolution is one kernel tick (1-10 ms), far below the
//! seconds these ages are compared against. Latencies and timers keep
//! `Instant`.

use std::time::Duration;

/// A reading of the coarse monotonic clock (same time base as `Instant`:
/// time since boot, never going back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Coarse(u64);

impl Coarse {
    /// Now, to within one kernel tick.
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    pub fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC_COARSE
        // exists on every Linux since 2.6.32 and cannot fail with it.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        Coarse(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
    }

    /// Now (elsewhere: from `Instant`, counted from the first reading).
    #[cfg(not(target_os = "linux"))]
    pub fn now() -> Self {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let origin = *ORIGIN.get_or_init(std::time::Instant::now);
        Coarse(origin.elapsed().as_nanos() as u64 + 1_000_000_000_000)
    }

    /// Time from `earlier` to this reading (zero if `earlier` is later).
    pub fn since(self, earlier: Coarse) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// Time since this reading.
    pub fn elapsed(self) -> Duration {
        Coarse::now().since(self)
    }

    /// This reading moved `d` into the past, if the clock reaches back
    /// that far.
    pub fn checked_sub(self, d: Duration) -> Option<Coarse> {
        let d = u64::try_from(d.as_nanos()).ok()?;
        self.0.checked_sub(d).map(Coarse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn it_follows_the_precise_clock_to_within_a_tick() {
        let (c0, i0) = (Coarse::now(), Instant::now());
        std::thread::sleep(Duration::from_millis(60));
        let (coarse, precise) = (c0.elapsed(), i0.elapsed());
        let gap = coarse.abs_diff(precise);
        assert!(
            gap <= Duration::from_millis(15),
            "{coarse:?} vs {precise:?}"
        );
        assert!(Coarse::now() >= c0, "never goes back");
        assert_eq!(c0.since(Coarse::now()), Duration::ZERO);
    }

    #[test]
    fn it_reaches_back_only_as_far_as_the_clock_runs() {
        let now = Coarse::now();
        let back = now.checked_sub(Duration::from_millis(5)).unwrap();
        assert_eq!(now.since(back), Duration::from_millis(5));
        assert_eq!(now.checked_sub(Duration::from_secs(u64::MAX)), None);
    }
}
