//! Warnings a peer can provoke, rate-limited per core: at most
//! [`crate::limits::PEER_LOG_LINES_PER_S`] lines a second, the next line
//! that gets through says how many were suppressed. One limiter per core
//! thread (queues live on one core), so no lock and no shared counter.

use std::cell::RefCell;

use nvmf_proto::log_limit::LogLimiter;

thread_local! {
    pub static PEER_LOG: RefCell<LogLimiter> =
        const { RefCell::new(LogLimiter::new(1000, crate::limits::PEER_LOG_LINES_PER_S)) };
}

/// `peer_warn!(now_us, "format", args…)`: a rate-limited WARN line.
#[macro_export]
macro_rules! peer_warn {
    ($now_us:expr, $($arg:tt)+) => {
        $crate::peerlog::PEER_LOG.with(|l| {
            let mut l = l.borrow_mut();
            nvmf_proto::limited!(l, ($now_us) / 1000, warn, $($arg)+);
        })
    };
}
