//! One NVMe/TCP I/O queue driven from a ublk queue thread, with a command in
//! flight per ublk tag.
//!
//! The ublk queue thread runs libublk's io_uring loop and a `smol` local
//! executor: one async task per ublk tag, plus one receive task here. A tag
//! task submits its NVMe command ([`NvmeQueue::execute`]: the capsule is sent
//! at once on the queue's socket) and waits on its own completion slot. The
//! receive task waits for the socket to become readable through the same
//! io_uring (`IORING_OP_POLL_ADD`, so the thread never blocks outside the
//! ring), reads without waiting, feeds the sans-IO [`HostQueue`] (which also
//! answers R2Ts with H2CData) and hands each completion to its tag's slot,
//! waking that task. Everything is on one thread: `Rc`/`RefCell`, no locks.
//!
//! [`HostQueue`]: nvmf_host::HostQueue

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use nvmf_host::queue::{Completion, Request};
use nvmf_host::QueueConn;

/// Reads per readiness event at most before polling again: bounds the time
/// the receive task keeps the thread from the ublk ring under a flood.
const PUMPS_PER_WAKE_MAX: usize = 16;
/// Longest wait for the socket before the queue is read and its command
/// timeouts checked anyway.
const RECEIVE_TICK_S: u64 = 1;

#[derive(Default)]
struct Slot {
    done: Option<Completion>,
    waker: Option<Waker>,
}

/// The queue and one completion slot per ublk tag.
pub struct NvmeQueue {
    conn: RefCell<QueueConn>,
    slots: RefCell<Vec<Slot>>,
    inflight: Cell<usize>,
    /// Most commands ever in flight at once: shows that a deep ublk queue
    /// really reaches the NVMe queue (logged when the device stops).
    inflight_max: Cell<usize>,
}

impl NvmeQueue {
    /// `tags`: the ublk queue depth (tags are `0..tags`).
    pub fn new(conn: QueueConn, tags: usize) -> Rc<NvmeQueue> {
        let slots = (0..tags).map(|_| Slot::default()).collect();
        Rc::new(NvmeQueue {
            conn: RefCell::new(conn),
            slots: RefCell::new(slots),
            inflight: Cell::new(0),
            inflight_max: Cell::new(0),
        })
    }

    /// Most NVMe commands this queue had in flight at once.
    pub fn inflight_max(&self) -> usize {
        self.inflight_max.get()
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.conn.borrow().raw_fd()
    }

    /// Whether the connection failed (no command can be sent any more).
    pub fn failed(&self) -> bool {
        self.conn.borrow().queue().error().is_some()
    }

    /// Send `req` for ublk tag `tag` and wait for its completion. A request
    /// the queue refuses (failed connection) comes back as `Err` with its buffer.
    pub async fn execute(&self, tag: u16, req: Request) -> Result<Completion, Vec<u8>> {
        let submitted = self.conn.borrow_mut().submit(req.with_tag(tag as u64));
        if let Err(e) = submitted {
            return Err(e.buf);
        }
        self.inflight.set(self.inflight.get() + 1);
        self.inflight_max.set(self.inflight_max.get().max(self.inflight.get()));
        if self.failed() {
            // A send failure completed the command inside submit: deliver it
            // here, since the receive task may have stopped already.
            self.dispatch();
        }
        let c = CompletionWait { q: self, tag }.await;
        self.inflight.set(self.inflight.get() - 1);
        c
    }

    /// Move every completion the queue holds to its tag's slot.
    fn dispatch(&self) -> usize {
        let mut n = 0;
        let mut conn = self.conn.borrow_mut();
        let mut slots = self.slots.borrow_mut();
        while let Some(c) = conn.queue_mut().pop_completion() {
            n += 1;
            let Some(slot) = slots.get_mut(c.tag as usize) else {
                debug_assert!(false, "completion for tag {} beyond the queue depth", c.tag);
                continue;
            };
            slot.done = Some(c);
            if let Some(w) = slot.waker.take() {
                w.wake();
            }
        }
        n
    }

    /// The receive task: until the connection fails, wait for the socket to
    /// be readable on the ublk queue's ring, then read and dispatch. The wait
    /// is bounded ([`RECEIVE_TICK_S`]) so that command timeouts are checked
    /// on a silent connection too, and bytes a TLS session holds beyond what
    /// one read took are picked up even when the socket has nothing new.
    pub async fn receive_loop(self: Rc<Self>) {
        use io_uring::{opcode, squeue, types};
        use libublk::uring_async::ublk_submit_sqe_async;
        let fd = self.raw_fd();
        let tick = types::Timespec::new().sec(RECEIVE_TICK_S);
        let target_io = libublk::UblkUringData::Target as u64;
        loop {
            // PollAdd linked to a LinkTimeout: both are pushed before the
            // ring is next submitted (zip polls them in order), so they stay
            // adjacent. Either CQE may come first; both are awaited.
            let poll = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32).build().flags(squeue::Flags::IO_LINK);
            let timeout = opcode::LinkTimeout::new(&tick).build();
            let (r, _) =
                smol::future::zip(ublk_submit_sqe_async(poll, target_io), ublk_submit_sqe_async(timeout, target_io))
                    .await;
            // -ECANCELED: the tick ended the poll. Any other error would come
            // back at once every time: no busy loop, give the queue up.
            let refused = match r {
                Ok(res) if res >= 0 || res == -libc::ECANCELED => None,
                Ok(res) => Some(std::io::Error::from_raw_os_error(-res).to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = refused {
                tracing::warn!("ublk ring refused the socket poll: {e}");
                // Nothing would read the socket any more: fail the queue so
                // every command in flight completes (with an unknown fate).
                self.conn.borrow_mut().close("ublk ring refused the socket poll");
                self.dispatch();
                return;
            }
            for _ in 0..PUMPS_PER_WAKE_MAX {
                let pumped = self.conn.borrow_mut().pump(None);
                let n = self.dispatch();
                if let Err(e) = pumped {
                    tracing::warn!("NVMe I/O queue failed: {e}");
                    return;
                }
                if n == 0 {
                    break; // nothing (complete) read: wait for more bytes
                }
            }
        }
    }
}

/// Waits for the completion slot of one tag.
struct CompletionWait<'a> {
    q: &'a NvmeQueue,
    tag: u16,
}

impl Future for CompletionWait<'_> {
    type Output = Result<Completion, Vec<u8>>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slots = self.q.slots.borrow_mut();
        let slot = &mut slots[self.tag as usize];
        match slot.done.take() {
            Some(c) => Poll::Ready(Ok(c)),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
