//! One namespace of a connected controller served as one ublk block device.
//!
//! libublk's `run_target` adds the device (`/dev/ublkcN` + `/dev/ublkbN`),
//! starts one thread per ublk queue and starts the device. Each queue thread
//! owns one NVMe I/O queue of the controller (ublk queue `i` = NVMe QID
//! `i + 1`) and runs, on libublk's io_uring loop, one async task per ublk tag
//! plus the NVMe receive task ([`crate::nvme_queue`]): the ublk queue depth is
//! the NVMe queue depth, so every tag can have its command in flight.
//!
//! The device stops when someone sends it STOP_DEV (`nvmf disconnect`, or
//! [`stop_device`] from the signal handler of `nvmf connect`): the queue
//! tasks see their fetch commands aborted, `run_target` returns and dropping
//! the control device deletes it.

use std::cell::{Cell, RefCell};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkQueue};
use libublk::{sys, BufDesc, UblkError, UblkFlags};
use nvmf_host::queue::{Fate, Request};
use nvmf_host::QueueConn;
use nvmf_proto::log_limit::{Admit, LogLimiter};

use crate::map::{dsm_range, map_request, DeviceLimits, Geometry, NvmeIo};
use crate::nvme_queue::NvmeQueue;

/// Seconds of no I/O after which libublk lets a queue go idle (frees the
/// pages of its buffers); it wakes on the next request.
const QUEUE_IDLE_S: u64 = 20;

/// What one device serves.
#[derive(Clone, Copy, Debug)]
pub struct DeviceConfig {
    pub nsid: u32,
    pub geometry: Geometry,
    pub limits: DeviceLimits,
}

/// The ublk parameters for these limits.
pub fn ublk_params(l: &DeviceLimits) -> sys::ublk_params {
    let mut attrs = 0;
    if l.volatile_cache {
        // Without a volatile cache the kernel sends neither flush nor FUA:
        // every write is already durable when the NVMe write completes.
        attrs |= sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA;
    }
    let mut p = sys::ublk_params {
        types: sys::UBLK_PARAM_TYPE_BASIC,
        basic: sys::ublk_param_basic {
            attrs,
            logical_bs_shift: l.logical_block_shift,
            physical_bs_shift: l.logical_block_shift,
            io_opt_shift: l.logical_block_shift,
            io_min_shift: l.logical_block_shift,
            max_sectors: l.io_sectors_max,
            dev_sectors: l.capacity_sectors,
            ..Default::default()
        },
        ..Default::default()
    };
    if l.discard_sectors_max > 0 || l.write_zeroes_sectors_max > 0 {
        p.types |= sys::UBLK_PARAM_TYPE_DISCARD;
        p.discard = sys::ublk_param_discard {
            discard_alignment: 0,
            discard_granularity: if l.discard_sectors_max > 0 { 1 << l.logical_block_shift } else { 0 },
            max_discard_sectors: l.discard_sectors_max,
            max_write_zeroes_sectors: l.write_zeroes_sectors_max,
            // One DSM range per command: a request is one contiguous extent.
            max_discard_segments: if l.discard_sectors_max > 0 { 1 } else { 0 },
            reserved0: 0,
        };
    }
    p
}

/// Stop (STOP_DEV) ublk device `dev_id`; its server then removes it.
pub fn stop_device(dev_id: u32) -> Result<(), UblkError> {
    UblkCtrl::new_simple(dev_id as i32)?.kill_dev().map(|_| ())
}

/// Delete ublk device `dev_id` (DEL_DEV): for a device whose server is gone.
pub fn delete_device(dev_id: u32) -> Result<(), UblkError> {
    UblkCtrl::new_simple(dev_id as i32)?.del_dev().map(|_| ())
}

/// Serve `cfg.nsid` over `queues` (one ublk queue each) until the device is
/// stopped. `started(dev_id)` runs once the block device exists. Blocks.
pub fn serve(
    cfg: DeviceConfig,
    queues: Vec<QueueConn>,
    started: impl FnOnce(u32) + Send + Sync + 'static,
) -> Result<(), UblkError> {
    if queues.is_empty() {
        return Err(UblkError::OtherError(-libc::ENODEV));
    }
    let nr_queues = queues.len() as u16;
    let depth = queues.iter().map(|q| q.queue().config().queue_depth).min().unwrap_or(1);
    let ctrl = UblkCtrlBuilder::default()
        .name("nvmf")
        .id(-1)
        .nr_queues(nr_queues)
        .depth(depth)
        .io_buf_bytes(cfg.geometry.io_bytes_max)
        .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV)
        .build()?;
    let params = ublk_params(&cfg.limits);
    let capacity = cfg.geometry.capacity_bytes();
    let tgt_init = move |dev: &mut UblkDev| {
        dev.tgt.dev_size = capacity;
        dev.tgt.params = params;
        Ok(())
    };
    // Each queue thread takes its own connection (run_target's queue closure is cloned per thread).
    let conns: Arc<Mutex<Vec<Option<QueueConn>>>> = Arc::new(Mutex::new(queues.into_iter().map(Some).collect()));
    let q_fn = move |qid: u16, dev: &UblkDev| {
        let conn = conns.lock().unwrap_or_else(|p| p.into_inner()).get_mut(qid as usize).and_then(Option::take);
        match conn {
            Some(c) => queue_thread(qid, dev, c, cfg),
            None => tracing::error!(qid, "no NVMe I/O queue for this ublk queue"),
        }
    };
    let on_started = move |c: &UblkCtrl| started(c.dev_info().dev_id);
    ctrl.run_target(tgt_init, q_fn, on_started)?;
    Ok(())
}

/// What every tag task of one queue shares.
struct IoContext {
    cfg: DeviceConfig,
    qid: u16,
    errors: RefCell<LogLimiter>,
    epoch: Instant,
    /// Commands sent, by [`NvmeIo::kind_index`], and requests failed.
    sent: [Cell<u64>; NvmeIo::KINDS],
    failed: Cell<u64>,
}

fn queue_thread(qid: u16, dev: &UblkDev, conn: QueueConn, cfg: DeviceConfig) {
    let q = match UblkQueue::new(qid, dev) {
        Ok(q) => std::rc::Rc::new(q),
        Err(e) => {
            tracing::error!(qid, "ublk queue: {e}");
            return;
        }
    };
    let nq = NvmeQueue::new(conn, dev.dev_info.queue_depth as usize);
    let ctx = std::rc::Rc::new(IoContext {
        cfg,
        qid,
        errors: RefCell::new(LogLimiter::default()),
        epoch: Instant::now(),
        sent: Default::default(),
        failed: Cell::new(0),
    });
    let exe = std::rc::Rc::new(smol::LocalExecutor::new());
    let mut tasks = Vec::new();
    for tag in q.tags() {
        let (q, nq, ctx) = (q.clone(), nq.clone(), ctx.clone());
        tasks.push(exe.spawn(async move {
            match tag_task(&q, &nq, tag, &ctx).await {
                Err(UblkError::QueueIsDown) | Ok(()) => {}
                Err(e) => tracing::error!(qid, tag, "ublk tag task: {e}"),
            }
        }));
    }
    // Not among the tasks waited for: it only ends when the connection does.
    let _receiver = exe.spawn(nq.clone().receive_loop());
    let exe2 = exe.clone();
    smol::block_on(exe.run(async move {
        let run_ops = || while exe2.try_tick() {};
        let done = || tasks.iter().all(|t| t.is_finished());
        if let Err(e) = libublk::wait_and_handle_io_events(&q, Some(QUEUE_IDLE_S), run_ops, done).await {
            tracing::error!(qid, "ublk queue loop: {e}");
        }
    }));
    let n = |k: usize| ctx.sent[k].get();
    tracing::info!(
        "ublk queue {qid} (NVMe QID {}): {} read, {} write, {} flush, {} dataset management, {} write zeroes; \
         {} failed; most commands in flight at once: {}",
        qid + 1,
        n(0),
        n(1),
        n(2),
        n(3),
        n(4),
        ctx.failed.get(),
        nq.inflight_max()
    );
}

/// One ublk tag: fetch a request, run its NVMe command, commit the result, repeat.
async fn tag_task(q: &UblkQueue<'_>, nq: &NvmeQueue, tag: u16, ctx: &IoContext) -> Result<(), UblkError> {
    let mut buf = IoBuf::<u8>::new(q.dev.dev_info.max_io_buf_bytes as usize);
    q.submit_io_prep_cmd(tag, BufDesc::Slice(buf.as_slice()), 0, Some(&buf)).await?;
    // The NVMe request's own buffer, moved into each command and handed back.
    let mut data: Vec<u8> = Vec::with_capacity(ctx.cfg.geometry.io_bytes_max as usize);
    loop {
        let iod = *q.get_iod(tag);
        let res = serve_one(nq, tag, &iod, buf.as_mut_slice(), &mut data, ctx).await;
        q.submit_io_commit_cmd(tag, BufDesc::Slice(buf.as_slice()), res).await?;
    }
}

/// Run one ublk request as one NVMe command; the ublk result (bytes or -errno).
/// A write is answered only after its NVMe completion.
async fn serve_one(
    nq: &NvmeQueue,
    tag: u16,
    iod: &sys::ublksrv_io_desc,
    io_buf: &mut [u8],
    data: &mut Vec<u8>,
    ctx: &IoContext,
) -> i32 {
    let geo = &ctx.cfg.geometry;
    let io = match map_request(iod.op_flags, iod.start_sector, iod.nr_sectors, geo) {
        Ok(io) => io,
        Err(e) => {
            ctx.log_error(format_args!(
                "ublk op {} at sector {} (+{}) refused: {e:?}",
                iod.op_flags & 0xff,
                iod.start_sector,
                iod.nr_sectors
            ));
            return e.errno();
        }
    };
    let sqe = io.to_sqe(ctx.cfg.nsid);
    let mut d = std::mem::take(data);
    d.clear();
    let req = match io {
        NvmeIo::Read { .. } => {
            d.resize(io.data_in_bytes(geo), 0);
            Request::read(sqe, d)
        }
        NvmeIo::Write { .. } => {
            let n = io.data_out_bytes(geo);
            if n > io_buf.len() {
                *data = d;
                return -libc::EINVAL;
            }
            d.extend_from_slice(&io_buf[..n]);
            Request::write(sqe, d)
        }
        NvmeIo::Deallocate { slba, nlb } => {
            d.extend_from_slice(&dsm_range(slba, nlb));
            Request::write(sqe, d)
        }
        NvmeIo::Flush | NvmeIo::WriteZeroes { .. } => {
            *data = d;
            Request::new(sqe)
        }
    };
    let kind = &ctx.sent[io.kind_index()];
    kind.set(kind.get() + 1);
    let c = match nq.execute(tag, req).await {
        Ok(c) => c,
        Err(back) => {
            if back.capacity() > 0 {
                *data = back;
            }
            ctx.failed.set(ctx.failed.get() + 1);
            ctx.log_error(format_args!("{} not sent: the NVMe I/O queue has failed", io.name()));
            return -libc::EIO;
        }
    };
    let ok = c.is_success();
    let status = c.cqe.status;
    let fate = c.fate;
    if c.buf.capacity() > 0 {
        if ok {
            let n = io.data_in_bytes(geo);
            if n > 0 {
                io_buf[..n].copy_from_slice(&c.buf[..n]);
            }
        }
        *data = c.buf;
    }
    if ok {
        return io.ublk_result(geo);
    }
    ctx.failed.set(ctx.failed.get() + 1);
    match fate {
        Fate::Known => ctx.log_error(format_args!("{} {io:?}: NVMe status {status}", io.name())),
        Fate::Unknown => ctx.log_error(format_args!("{} {io:?}: connection lost, outcome unknown", io.name())),
    }
    -libc::EIO
}

impl IoContext {
    /// A warning, at most a few a second per queue (a dead target fails every request).
    fn log_error(&self, msg: std::fmt::Arguments<'_>) {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        if let Admit::Log { suppressed } = self.errors.borrow_mut().admit(now_ms) {
            tracing::warn!(qid = self.qid, nsid = self.cfg.nsid, suppressed, "{msg}");
        }
    }
}
