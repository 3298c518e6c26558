//! Rate limits for log lines a peer can provoke.
//!
//! A peer that sends one bad command per packet must not be able to grow the
//! log at will, so warnings about peer behaviour go through a [`LogLimiter`]:
//! at most `lines_per_window` lines per `window_ms`, and the first line after
//! a quiet spell reports how many were suppressed. It is pure (time is an
//! input), so it fits the sans-IO state machines and is tested with a
//! virtual clock.

/// Default window: one second.
pub const LOG_WINDOW_MS: u64 = 1000;
/// Default lines per window (per limiter).
pub const LOG_LINES_PER_WINDOW: u32 = 5;

/// Admits at most `lines_per_window` log lines per `window_ms`.
#[derive(Debug, Clone)]
pub struct LogLimiter {
    window_ms: u64,
    lines_per_window: u32,
    window_start_ms: u64,
    lines_in_window: u32,
    suppressed: u64,
}

/// What [`LogLimiter::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Log the line; `suppressed` lines were dropped since the last one logged.
    Log { suppressed: u64 },
    /// Drop the line (it is counted).
    Drop,
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new(LOG_WINDOW_MS, LOG_LINES_PER_WINDOW)
    }
}

impl LogLimiter {
    pub const fn new(window_ms: u64, lines_per_window: u32) -> LogLimiter {
        assert!(window_ms > 0 && lines_per_window > 0);
        LogLimiter { window_ms, lines_per_window, window_start_ms: 0, lines_in_window: 0, suppressed: 0 }
    }

    /// Whether a line at `now_ms` may be logged.
    pub fn admit(&mut self, now_ms: u64) -> Admit {
        if now_ms.saturating_sub(self.window_start_ms) >= self.window_ms || now_ms < self.window_start_ms {
            self.window_start_ms = now_ms;
            self.lines_in_window = 0;
        }
        if self.lines_in_window >= self.lines_per_window {
            self.suppressed = self.suppressed.saturating_add(1);
            return Admit::Drop;
        }
        self.lines_in_window += 1;
        let suppressed = std::mem::take(&mut self.suppressed);
        Admit::Log { suppressed }
    }

    /// Lines dropped and not yet reported.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

/// Log through a limiter: `limited!(limiter, now_ms, warn, "text {}", x)`.
/// A line that follows suppressed ones says how many were dropped.
#[macro_export]
macro_rules! limited {
    ($limiter:expr, $now_ms:expr, $level:ident, $($arg:tt)+) => {
        if let $crate::log_limit::Admit::Log { suppressed } = $limiter.admit($now_ms) {
            if suppressed > 0 {
                tracing::$level!("{} ({} similar lines suppressed)", format_args!($($arg)+), suppressed);
            } else {
                tracing::$level!($($arg)+);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_a_burst_then_drops_and_reports() {
        let mut l = LogLimiter::new(1000, 3);
        assert_eq!(l.admit(0), Admit::Log { suppressed: 0 });
        assert_eq!(l.admit(1), Admit::Log { suppressed: 0 });
        assert_eq!(l.admit(2), Admit::Log { suppressed: 0 });
        for t in 3..500 {
            assert_eq!(l.admit(t), Admit::Drop);
        }
        assert_eq!(l.suppressed(), 497);
        assert_eq!(l.admit(1000), Admit::Log { suppressed: 497 });
        assert_eq!(l.admit(1001), Admit::Log { suppressed: 0 });
    }

    #[test]
    fn a_clock_going_back_opens_a_new_window() {
        let mut l = LogLimiter::new(1000, 1);
        assert_eq!(l.admit(5000), Admit::Log { suppressed: 0 });
        assert_eq!(l.admit(5001), Admit::Drop);
        assert_eq!(l.admit(10), Admit::Log { suppressed: 1 });
    }

    #[test]
    fn at_most_lines_per_window_over_a_long_flood() {
        let mut l = LogLimiter::default();
        let logged = (0..100_000u64).filter(|t| matches!(l.admit(t / 10), Admit::Log { .. })).count();
        // 10 s of virtual time at 5 lines a second.
        assert_eq!(logged, 50);
    }
}
