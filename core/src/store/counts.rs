//! Session count bookkeeping shared by the stores.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const MINUTES: usize = 5;

/// Highest value seen over the last five minutes, in one-minute buckets,
/// so "peak sessions" tells an operator about recent load, not about a
/// spike last week. Lock-free; a race can only under-report a peak that
/// happened in the same instant as a minute rollover.
#[derive(Debug, Default)]
pub struct PeakWindow {
    max: [AtomicU64; MINUTES],
    minute: [AtomicU64; MINUTES],
}

fn now_minute() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 60)
        .unwrap_or(0)
}

impl PeakWindow {
    /// Note a current value.
    pub fn record(&self, v: u64) {
        self.record_at(v, now_minute());
    }

    fn record_at(&self, v: u64, m: u64) {
        let i = (m % MINUTES as u64) as usize;
        if self.minute[i].swap(m, Ordering::Relaxed) != m {
            self.max[i].store(v, Ordering::Relaxed);
        } else {
            self.max[i].fetch_max(v, Ordering::Relaxed);
        }
    }

    /// The peak over the last five minutes, at least `current`.
    pub fn peak(&self, current: u64) -> u64 {
        self.peak_at(current, now_minute())
    }

    fn peak_at(&self, current: u64, m: u64) -> u64 {
        (0..MINUTES)
            .filter(|&i| m.saturating_sub(self.minute[i].load(Ordering::Relaxed)) < MINUTES as u64)
            .map(|i| self.max[i].load(Ordering::Relaxed))
            .fold(current, u64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_forgets_old_peaks() {
        let w = PeakWindow::default();
        w.record_at(50, 100);
        w.record_at(10, 102);
        assert_eq!(w.peak_at(3, 103), 50);
        assert_eq!(w.peak_at(3, 104), 50);
        assert_eq!(w.peak_at(3, 105), 10, "minute 100 is out of the window");
        w.record_at(7, 105);
        assert_eq!(w.peak_at(1, 106), 10);
        assert_eq!(w.peak_at(1, 107), 7, "minute 102 is out of the window");
        assert_eq!(w.peak_at(1, 110), 1);
        assert_eq!(w.peak_at(20, 200), 20);
    }
}
