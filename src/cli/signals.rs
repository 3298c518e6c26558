//! SIGINT and SIGTERM for the long-running commands (`target`, `connect`):
//! blocked before any thread starts (threads inherit the mask), then taken
//! only by the main thread, synchronously, so no handler runs anywhere.

use anyhow::{bail, Result};

pub struct StopSignals {
    set: libc::sigset_t,
}

impl StopSignals {
    /// Block SIGINT and SIGTERM in this thread (call before spawning any).
    pub fn block() -> Result<StopSignals> {
        // SAFETY: sigset_t is plain data initialised by sigemptyset; the calls
        // only touch the local set and this thread's signal mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if r != 0 {
                bail!("cannot block SIGINT/SIGTERM: {}", std::io::Error::from_raw_os_error(r));
            }
            Ok(StopSignals { set })
        }
    }

    /// Wait for SIGINT or SIGTERM; returns the signal number.
    pub fn wait(&self) -> i32 {
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: set is a valid, initialised sigset_t.
            if unsafe { libc::sigwait(&self.set, &mut sig) } == 0 {
                return sig;
            }
        }
    }

    /// A pending SIGINT/SIGTERM, waiting `ms` at most.
    pub fn wait_ms(&self, ms: i64) -> Option<i32> {
        let ts = libc::timespec { tv_sec: ms / 1000, tv_nsec: (ms % 1000) * 1_000_000 };
        // SAFETY: valid set and timespec; no siginfo wanted.
        let r = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) };
        (r > 0).then_some(r)
    }
}

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}
