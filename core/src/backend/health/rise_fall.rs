//! The rise/fall hysteresis of active health checks, as a pure value: no
//! atomics, no clock, so every rule is a plain unit test.

/// One health check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The check passed.
    Pass,
    /// The check failed.
    Fail,
}

/// Consecutive passes and failures. A verdict of one kind restarts the
/// other streak, so `rise` passes (or `fall` failures) must come in a row
/// before the backend's flag flips, and one flapping answer moves nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RiseFall {
    passes: u32,
    fails: u32,
}

impl RiseFall {
    /// Count `outcome` for a backend that is `up` now; returns the flag it
    /// should take, with the streak that decided it, when `rise` passes in
    /// a row bring a down backend up or `fall` failures in a row take an
    /// up one down. `None`: no change.
    pub fn observe(
        &mut self,
        outcome: Outcome,
        up: bool,
        rise: u32,
        fall: u32,
    ) -> Option<(bool, u32)> {
        match outcome {
            Outcome::Pass => {
                self.fails = 0;
                self.passes = self.passes.saturating_add(1);
                (!up && self.passes >= rise).then_some((true, self.passes))
            }
            Outcome::Fail => {
                self.passes = 0;
                self.fails = self.fails.saturating_add(1);
                (up && self.fails >= fall).then_some((false, self.fails))
            }
        }
    }

    /// Live traffic found the backend down: passes seen before do not
    /// count towards bringing it back.
    pub fn restart_rise(&mut self) {
        self.passes = 0;
    }

    /// A probe found the backend reachable again: failures seen before do
    /// not count towards taking it down.
    pub fn restart_fall(&mut self) {
        self.fails = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::{Fail, Pass};

    #[test]
    fn fall_failures_in_a_row_take_an_up_backend_down() {
        let mut c = RiseFall::default();
        assert_eq!(c.observe(Fail, true, 2, 3), None);
        assert_eq!(c.observe(Fail, true, 2, 3), None);
        assert_eq!(c.observe(Fail, true, 2, 3), Some((false, 3)));
    }

    #[test]
    fn rise_passes_in_a_row_bring_a_down_backend_up() {
        let mut c = RiseFall::default();
        assert_eq!(c.observe(Pass, false, 2, 3), None);
        assert_eq!(c.observe(Pass, false, 2, 3), Some((true, 2)));
    }

    #[test]
    fn the_opposite_outcome_restarts_the_streak() {
        let mut c = RiseFall::default();
        c.observe(Fail, true, 2, 3);
        c.observe(Fail, true, 2, 3);
        assert_eq!(c.observe(Pass, true, 2, 3), None);
        assert_eq!(
            c.observe(Fail, true, 2, 3),
            None,
            "one failure after a pass"
        );
        assert_eq!(c.observe(Fail, true, 2, 3), None);
        assert_eq!(c.observe(Fail, true, 2, 3), Some((false, 3)));
        assert_eq!(c.observe(Pass, false, 2, 3), None);
        assert_eq!(c.observe(Fail, false, 2, 3), None);
        assert_eq!(
            c.observe(Pass, false, 2, 3),
            None,
            "the pass streak restarted"
        );
        assert_eq!(c.observe(Pass, false, 2, 3), Some((true, 2)));
    }

    #[test]
    fn a_verdict_matching_the_flag_changes_nothing() {
        let mut c = RiseFall::default();
        for _ in 0..5 {
            assert_eq!(c.observe(Pass, true, 1, 1), None, "up and passing");
        }
        for _ in 0..5 {
            assert_eq!(c.observe(Fail, false, 1, 1), None, "down and failing");
        }
    }

    #[test]
    fn restarts_forget_only_their_own_streak() {
        let mut c = RiseFall::default();
        c.observe(Pass, false, 3, 3);
        c.observe(Pass, false, 3, 3);
        c.restart_rise();
        assert_eq!(c.observe(Pass, false, 3, 3), None, "counts from one again");
        let mut c = RiseFall::default();
        c.observe(Fail, true, 3, 3);
        c.observe(Fail, true, 3, 3);
        c.restart_fall();
        assert_eq!(c.observe(Fail, true, 3, 3), None, "counts from one again");
        c.restart_rise();
        assert_eq!(c.observe(Fail, true, 3, 3), None);
        assert_eq!(c.observe(Fail, true, 3, 3), Some((false, 3)), "fails kept");
    }

    #[test]
    fn edge_values() {
        let mut c = RiseFall::default();
        assert_eq!(c.observe(Fail, true, 1, 1), Some((false, 1)), "fall = 1");
        assert_eq!(c.observe(Pass, false, 1, 1), Some((true, 1)), "rise = 1");
        let mut c = RiseFall::default();
        assert_eq!(c.observe(Pass, false, 0, 0), Some((true, 1)), "0 acts as 1");
        let mut c = RiseFall {
            passes: 0,
            fails: u32::MAX - 1,
        };
        assert_eq!(c.observe(Fail, false, 1, 1), None);
        assert_eq!(c.observe(Fail, false, 1, 1), None, "saturates, no wrap");
        assert_eq!(c.fails, u32::MAX);
        assert_eq!(c.observe(Fail, true, 1, u32::MAX), Some((false, u32::MAX)));
    }
}
