//! One connection: socket, handler, buffers, in-flight ops and the calls
//! into its handler.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use io_uring::opcode;
use nvmf_proto::log_limit::LogLimiter;

use crate::ctx::{ud, CoreCtx, K_CANCEL, K_RECV, K_SEND};
use crate::limits::ConnAdmission;
use crate::rx::RxBuf;
use crate::timer::ConnTimer;
use crate::tls::TlsConn;
use crate::tx::ExtSeg;
use crate::{ArmedSink, CloseReason, ConnInfo, ConnIo, Flow, Handler};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum State {
    Open,
    /// Handler asked to close after flush: no more recv.
    Draining(CloseReason),
    /// Socket shut down; waiting for in-flight ops before on_closed.
    Closing(CloseReason),
}

pub(crate) struct Conn {
    pub(crate) id: u64,
    pub(crate) fd: OwnedFd,
    pub(crate) info: ConnInfo,
    pub(crate) handler: Box<dyn Handler>,
    pub(crate) rx: RxBuf,
    pub(crate) tx_acc: Vec<u8>,
    /// Borrowed segments spliced into `tx_acc` (ConnIo::send_borrowed).
    pub(crate) ext_acc: Vec<ExtSeg>,
    pub(crate) tx_fly: Vec<u8>,
    pub(crate) ext_fly: Vec<ExtSeg>,
    /// Logical bytes of the in-flight batch (tx_fly + ext_fly) already sent.
    pub(crate) tx_off: usize,
    /// Logical size of the in-flight batch.
    pub(crate) tx_total: usize,
    /// ext_fly segments already reported through on_sent.
    pub(crate) ext_done: usize,
    pub(crate) iov: Vec<libc::iovec>,
    pub(crate) msg: Box<libc::msghdr>,
    pub(crate) recv_fly: bool,
    /// The receive in flight goes into the handler's armed sink, not `rx`.
    pub(crate) recv_sink_fly: bool,
    /// Bytes the receive in flight into `rx` was offered.
    pub(crate) recv_offered: usize,
    /// The receive in flight was cancelled to give an idle burst buffer
    /// back (its -ECANCELED is not a close).
    pub(crate) recv_reclaim: bool,
    /// `now_ms` of the last receive that returned data.
    pub(crate) rx_at_ms: u64,
    pub(crate) send_fly: bool,
    pub(crate) storage_fly: u32,
    pub(crate) state: State,
    pub(crate) dirty: bool,
    pub(crate) rerun_recv: bool,
    pub(crate) poisoned: bool,
    /// Poll mode: in `Core::hot` (received with direct non-blocking `recv`
    /// calls each spin instead of an armed io_uring `Recv`).
    pub(crate) hot: bool,
    /// Poll mode: the last receive returned data, so the next one may go hot.
    pub(crate) hot_eligible: bool,
    /// Consecutive empty direct receives while hot.
    pub(crate) hot_empty: u32,
    /// Tick epoch of the last receive that returned data (direct-receive gate).
    pub(crate) rx_epoch: u32,
    pub(crate) timer: ConnTimer,
    pub(crate) admission: ConnAdmission,
    /// Engine ms of the last batch above the retained send buffer size.
    pub(crate) tx_big_at_ms: u64,
    /// Listed in the core's send-buffer trim queue.
    pub(crate) tx_trim_listed: bool,
    /// TLS between the socket and the handler (`None`: plain TCP).
    pub(crate) tls: Option<Box<TlsConn>>,
}

impl Conn {
    pub(crate) fn new(
        id: u64,
        fd: OwnedFd,
        info: ConnInfo,
        handler: Box<dyn Handler>,
        rx: RxBuf,
        admission: ConnAdmission,
        tls: Option<Box<TlsConn>>,
    ) -> Conn {
        Conn {
            id,
            fd,
            info,
            handler,
            rx,
            tx_acc: Vec::new(),
            ext_acc: Vec::new(),
            tx_fly: Vec::new(),
            ext_fly: Vec::new(),
            tx_off: 0,
            tx_total: 0,
            ext_done: 0,
            iov: Vec::new(),
            // SAFETY: msghdr is plain data; all-zero is a valid empty header.
            msg: Box::new(unsafe { std::mem::zeroed() }),
            recv_fly: false,
            recv_sink_fly: false,
            recv_offered: 0,
            recv_reclaim: false,
            rx_at_ms: 0,
            send_fly: false,
            storage_fly: 0,
            state: State::Open,
            dirty: false,
            rerun_recv: false,
            poisoned: false,
            hot: false,
            hot_eligible: false,
            hot_empty: 0,
            rx_epoch: 0,
            timer: ConnTimer::default(),
            admission,
            tx_big_at_ms: 0,
            tx_trim_listed: false,
            tls,
        }
    }

    #[inline]
    pub(crate) fn tx_pending(&self) -> usize {
        (self.tx_total - self.tx_off) + self.tx_acc.len() + self.ext_acc.iter().map(|e| e.len).sum::<usize>()
    }
    #[inline]
    pub(crate) fn live(&self) -> bool {
        !matches!(self.state, State::Closing(_))
    }
    /// Run a handler callback, then ask the handler when it next wants a
    /// tick. A panicking handler poisons (and closes) only its own
    /// connection: `on_closed` is then not called on it.
    #[inline]
    pub(crate) fn call(
        &mut self,
        ctx: &mut CoreCtx,
        slot: u32,
        f: impl FnOnce(&mut dyn Handler, &mut ConnIo<'_>) -> Flow,
    ) -> Flow {
        let Conn {
            handler,
            rx,
            tx_acc,
            ext_acc,
            info,
            storage_fly,
            rerun_recv,
            id,
            poisoned,
            timer,
            admission,
            tls,
            ..
        } = self;
        let peer = info.peer;
        let id = *id;
        let mut io = ConnIo {
            rx,
            tx: tx_acc,
            tx_ext: ext_acc,
            info,
            ctx,
            slot,
            conn_id: id,
            storage_inflight: storage_fly,
            rerun_recv,
            admission,
            tls,
        };
        let r = guarded(poisoned, peer, || {
            let flow = f(handler.as_mut(), &mut io);
            (flow, handler.next_wakeup())
        });
        match r {
            Some((flow, wakeup)) => {
                ctx.timers.schedule(slot, id, timer, wakeup);
                flow
            }
            None => Flow::CloseNow,
        }
    }
    /// The handler's [`Handler::recv_sink`] as a raw slice (`Err` if the
    /// handler panicked: the connection is then poisoned).
    /// Without a sink, the second value is the handler's
    /// [`Handler::recv_len_hint`].
    pub(crate) fn sink(&mut self) -> Result<(Option<RawSlice>, usize), ()> {
        let Conn { handler, poisoned, info, .. } = self;
        guarded(poisoned, info.peer, || {
            match handler.recv_sink().filter(|s| !s.is_empty()).map(|s| (s.as_mut_ptr(), s.len())) {
                Some(sink) => (Some(sink), usize::MAX),
                None => (None, handler.recv_len_hint()),
            }
        })
        .ok_or(())
    }
    /// The handler's [`Handler::recv_sink_armed`] (`Err` if it panicked).
    pub(crate) fn armed_sink(&mut self) -> Result<Option<ArmedSink>, ()> {
        let Conn { handler, poisoned, info, .. } = self;
        guarded(poisoned, info.peer, || handler.recv_sink_armed().filter(|s| s.len > 0)).ok_or(())
    }
    /// Shut the socket down (in-flight recv/send complete promptly) and
    /// cancel them. From here on the connection no longer counts toward the
    /// admission limits.
    pub(crate) fn hard_close(&mut self, ctx: &mut CoreCtx, slot: u32, reason: CloseReason) {
        if !self.live() {
            return;
        }
        self.state = State::Closing(reason);
        ctx.limits.on_close(&mut self.admission);
        self.tx_acc = Vec::new();
        self.ext_acc = Vec::new();
        // SAFETY: plain syscall on an fd we own.
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) };
        if self.recv_fly {
            ctx.push(&opcode::AsyncCancel::new(ud(K_RECV, slot)).build().user_data(ud(K_CANCEL, slot)));
        }
        if self.send_fly {
            ctx.push(&opcode::AsyncCancel::new(ud(K_SEND, slot)).build().user_data(ud(K_CANCEL, slot)));
        }
    }
    pub(crate) fn apply(&mut self, ctx: &mut CoreCtx, slot: u32, flow: Flow) {
        match flow {
            Flow::Continue => {}
            Flow::CloseAfterFlush => {
                if self.state == State::Open {
                    self.state = State::Draining(CloseReason::Handler);
                }
            }
            Flow::CloseNow => self.hard_close(ctx, slot, CloseReason::Handler),
        }
    }
}

/// Run handler code; a panic poisons the connection (it is closed without
/// `on_closed`) and gives `None`, other connections are unaffected.
pub(crate) fn guarded<T>(poisoned: &mut bool, peer: SocketAddr, f: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(_) => {
            *poisoned = true;
            // A peer may be able to trigger the same bug on every connection
            // it opens: rate-limited.
            PANIC_LOG.with(|l| {
                let (epoch, limiter) = &mut *l.borrow_mut();
                nvmf_proto::limited!(
                    limiter,
                    epoch.elapsed().as_millis() as u64,
                    error,
                    "connection handler panicked; closing the connection (peer {peer})"
                );
            });
            None
        }
    }
}

thread_local! {
    /// Handler panics of this thread (a core).
    static PANIC_LOG: RefCell<(Instant, LogLimiter)> = RefCell::new((Instant::now(), LogLimiter::default()));
}

/// A handler-owned slice handed to a direct `recv` (pointer, length).
pub(crate) type RawSlice = (*mut u8, usize);

#[cfg(test)]
mod tests {
    #[test]
    fn a_connection_slot_stays_small() {
        // Every slot of the core's table costs this much for good (the table
        // keeps its peak size): keep it in check.
        let size = std::mem::size_of::<Option<super::Conn>>();
        assert!(size <= 512, "a connection slot grew to {size} bytes");
    }
}
