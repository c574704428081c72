//! Pacing an accept loop while `accept()` fails.

use std::time::{Duration, Instant};

/// How an accept loop paces itself while `accept()` fails (most often "Too many open
/// files"): the pause grows from [`AcceptBackoff::FIRST_PAUSE`] to
/// [`AcceptBackoff::LONGEST_PAUSE`], and one line is logged per
/// [`AcceptBackoff::LOG_EVERY`] at most, counting the errors left out. The same pacing
/// serves for logging refused connections (ignore the pause).
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    pause: Option<Duration>,
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl AcceptBackoff {
    /// The pause after the first error of a run.
    pub const FIRST_PAUSE: Duration = Duration::from_millis(50);
    /// The longest pause, however long the errors last.
    pub const LONGEST_PAUSE: Duration = Duration::from_millis(800);
    /// At most one log line per this long.
    pub const LOG_EVERY: Duration = Duration::from_secs(1);

    /// Records an error at `now`: calls `log` with the number of errors not logged since
    /// the last line if a line is due, and returns how long to pause.
    pub fn failed(&mut self, now: Instant, log: impl FnOnce(u64)) -> Duration {
        let due = self
            .last_logged
            .is_none_or(|t| now.duration_since(t) >= Self::LOG_EVERY);
        if due {
            log(self.suppressed);
            self.last_logged = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        let pause = self
            .pause
            .map_or(Self::FIRST_PAUSE, |p| (p * 2).min(Self::LONGEST_PAUSE));
        self.pause = Some(pause);
        pause
    }

    /// Records an accepted connection: the next error starts from the first pause again.
    pub fn succeeded(&mut self) {
        self.pause = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_are_logged_once_a_second_and_the_pause_grows_to_a_bound() {
        let mut b = AcceptBackoff::default();
        let start = Instant::now();
        let mut logged = Vec::new();
        let mut pauses = Vec::new();
        for i in 0..40u32 {
            let now = start + Duration::from_millis(50) * i;
            pauses.push(b.failed(now, |n| logged.push(n)));
        }
        // 2 s of errors every 50 ms: one line at 0 s and one at 1 s, the second counting
        // the 19 in between.
        assert_eq!(logged, [0, 19]);
        assert_eq!(pauses[0], AcceptBackoff::FIRST_PAUSE);
        assert!(pauses[1] > pauses[0]);
        assert_eq!(pauses[39], AcceptBackoff::LONGEST_PAUSE);
        b.succeeded();
        assert_eq!(b.failed(start, |_| ()), AcceptBackoff::FIRST_PAUSE);
    }
}
