//! Host data fetched with R2T: the R2T, and H2CData PDUs taken piece by piece.
//!
//! A command whose data did not come in the capsule gets one R2T for its
//! whole transfer (the host splits it into H2CData PDUs of at most
//! MAXH2CDATA bytes). Each H2CData header is checked in full as soon as it is
//! buffered; its payload is then consumed as it arrives, so the queue never
//! needs a receive buffer as large as the PDU: the engine is only asked for a
//! larger one ([`crate::tcp::Queue::rx_wanted`]) to take the rest in fewer
//! receives, and in poll mode the rest may land straight in the command's
//! buffer ([`crate::tcp::Queue::recv_sink`]).
//!
//! Where a payload goes ([`Sink`]): into the command's [`DataBuf`] (file and
//! block namespaces, admin commands, Compare, Dataset Management ranges, and
//! memory namespaces when a data digest must be checked before the data may
//! be stored), or straight into a memory namespace piece by piece. A write is
//! acknowledged only once every piece is stored.

use std::sync::Arc;

use nvmf_proto::digest::crc32c_append;
use nvmf_proto::pdu::{self, encode_r2t, fes, DataHdr, PduType};
use nvmf_proto::status::{generic, media, sct};
use nvmf_proto::{PduError, Sqe, Status};

use crate::buf::DataBuf;
use crate::io_cmd::IoPlan;
use crate::slots::{Sink, Stage, Work};
use crate::stats::QueueCounters;
use crate::subsys::Namespace;
use crate::tcp::{fatal, Queue};

/// The H2CData PDU whose payload is arriving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2cStream {
    slot: usize,
    /// Offset in the command's data of the next payload byte.
    at: u32,
    /// Payload bytes of this PDU still to come.
    remaining: u32,
    /// A data digest follows the payload.
    ddgst: bool,
    crc: u32,
}

/// Smallest rest of a payload worth receiving straight into the buffer.
const SINK_MIN_BYTES: u32 = 4096;

impl Queue {
    /// Send the R2T for `sqe`'s `len` bytes of host data.
    pub(crate) fn start_r2t(
        &mut self,
        sqe: Sqe,
        work: Work,
        ns: Option<Arc<Namespace>>,
        len: u32,
        buf_len: usize,
        out: &mut Vec<u8>,
    ) {
        // A memory namespace takes the data where it belongs, unless a data
        // digest has to be checked before anything is stored.
        let memory = matches!(work, Work::Io(IoPlan::Write { .. }))
            && ns.as_ref().is_some_and(|n| n.backend.fd().is_none())
            && !self.frame.ddgst;
        let buf = if memory {
            None
        } else {
            match DataBuf::take(buf_len) {
                Some(b) => Some(b),
                None => {
                    tracing::error!(peer = %self.peer, "no memory for a {buf_len}-byte command buffer");
                    let s = Status::new(sct::GENERIC, generic::INTERNAL_ERROR);
                    return self.respond(out, sqe.cid, s, 0, 0);
                }
            }
        };
        let Some(i) = self.slots.alloc(&sqe, work, self.now_us) else { return self.no_slot(out, sqe.cid) };
        let s = self.slots.get_mut(i).expect("allocated slot");
        s.stage = Stage::AwaitData;
        s.ns = ns;
        s.xfer_len = len;
        s.sink = if memory { Sink::Memory } else { Sink::Buffer };
        s.buf = buf;
        self.slots.r2t_sent(i, self.now_us);
        let r2t = DataHdr { cccid: sqe.cid, ttag: i as u16, offset: 0, length: len };
        encode_r2t(out, &r2t, &self.tx);
    }

    /// Too many commands outstanding for the negotiated queue size.
    pub(crate) fn no_slot(&mut self, out: &mut Vec<u8>, cid: u16) {
        crate::peer_warn!(self.now_us, "host {} exceeded its queue size; failing command {cid}", self.peer);
        self.respond(out, cid, Status::new(sct::GENERIC, generic::INTERNAL_ERROR), 0, 0);
    }

    /// Check an H2CData header against the transfer its TTAG names.
    fn h2c_check(&self, hdr: &DataHdr) -> Result<usize, PduError> {
        let i = hdr.ttag as usize;
        let Some(s) = self.slots.get(i).filter(|s| s.stage == Stage::AwaitData) else {
            return Err(fatal(fes::INVALID_HEADER_FIELD, 10, "H2CData with an unknown TTAG"));
        };
        if s.sqe.cid != hdr.cccid {
            return Err(fatal(fes::INVALID_HEADER_FIELD, 8, "H2CData CCCID does not match its TTAG"));
        }
        if hdr.length > self.limits.max_h2c_data_bytes {
            return Err(fatal(fes::DATA_LIMIT_EXCEEDED, 16, "H2CData over MAXH2CDATA"));
        }
        if hdr.offset != s.received || hdr.offset as u64 + hdr.length as u64 > s.xfer_len as u64 {
            return Err(fatal(fes::DATA_OUT_OF_RANGE, 12, "H2CData outside the R2T window"));
        }
        Ok(i)
    }

    /// A whole H2CData PDU.
    pub(crate) fn h2c_whole(
        &mut self,
        hdr: &DataHdr,
        data: &[u8],
        digest_ok: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), PduError> {
        let i = self.h2c_check(hdr)?;
        debug_assert_eq!(data.len(), hdr.length as usize);
        self.h2c_store(i, hdr.offset, data);
        self.h2c_end(i, hdr.length, digest_ok, out);
        Ok(())
    }

    /// `buf` starts with a partly received PDU: if it is an H2CData whose
    /// header is all there, check it and start taking its payload. Returns
    /// the header bytes consumed.
    pub(crate) fn h2c_try_start(&mut self, buf: &[u8]) -> Result<Option<usize>, PduError> {
        if buf.first() != Some(&(PduType::H2CData as u8)) || self.conn.is_none() {
            return Ok(None);
        }
        let Some(ds) = pdu::decode_data_start(buf, &self.frame)? else { return Ok(None) };
        let i = self.h2c_check(&ds.hdr)?;
        self.h2c = Some(H2cStream { slot: i, at: ds.hdr.offset, remaining: ds.hdr.length, ddgst: ds.ddgst, crc: 0 });
        Ok(Some(ds.data_at))
    }

    /// Feed received bytes to the payload in progress; returns the bytes
    /// taken. Ends the stream once payload and digest are in.
    pub(crate) fn h2c_feed(&mut self, buf: &[u8], out: &mut Vec<u8>) -> Result<usize, PduError> {
        let st = self.h2c.expect("h2c_feed without a stream");
        if st.remaining > 0 {
            let n = (st.remaining as usize).min(buf.len());
            if n > 0 {
                self.h2c_store(st.slot, st.at, &buf[..n]);
                self.h2c_advance(&buf[..n]);
            }
            self.h2c_want_rest();
            if self.h2c.is_some_and(|s| s.remaining == 0 && !s.ddgst) {
                self.h2c_finish(true, out);
            }
            return Ok(n);
        }
        debug_assert!(st.ddgst, "a finished stream without a digest is already closed");
        if buf.len() < pdu::DIGEST_LEN {
            self.rx_wanted = pdu::DIGEST_LEN;
            return Ok(0);
        }
        let want = u32::from_le_bytes(buf[..pdu::DIGEST_LEN].try_into().expect("4 bytes"));
        self.h2c_finish(want == st.crc, out);
        Ok(pdu::DIGEST_LEN)
    }

    /// Account `piece` (already stored) to the stream: digest and position.
    fn h2c_advance(&mut self, piece: &[u8]) {
        let st = self.h2c.as_mut().expect("stream");
        if st.ddgst {
            st.crc = crc32c_append(st.crc, piece);
        }
        st.at += piece.len() as u32;
        st.remaining -= piece.len() as u32;
    }

    /// Ask the engine for room for the rest of the payload (and its digest),
    /// so it comes in few receives.
    fn h2c_want_rest(&mut self) {
        if let Some(st) = self.h2c {
            let rest = st.remaining as usize + if st.ddgst { pdu::DIGEST_LEN } else { 0 };
            self.rx_wanted = rest + pdu::COMMON_HDR_LEN;
        }
    }

    fn h2c_finish(&mut self, digest_ok: bool, out: &mut Vec<u8>) {
        let st = self.h2c.take().expect("stream");
        let len = st.at - self.slots.get(st.slot).expect("slot").received;
        self.h2c_end(st.slot, len, digest_ok, out);
    }

    /// Store a payload piece at `offset` of the command's data.
    fn h2c_store(&mut self, i: usize, offset: u32, data: &[u8]) {
        let s = self.slots.get_mut(i).expect("checked slot");
        match s.sink {
            Sink::Buffer => {
                let b = s.buf.as_mut().expect("a buffered transfer has a buffer");
                let o = offset as usize;
                nvmf_proto::copy::copy_bytes(&mut b.as_mut_slice(o + data.len())[o..], data);
            }
            Sink::Memory => {
                if let (Work::Io(IoPlan::Write { off, .. }), Some(ns)) = (s.work, s.ns.as_ref()) {
                    if !matches!(ns.backend.write_sync(off + offset as u64, data), Some(Ok(()))) {
                        s.error.get_or_insert(Status::new(sct::MEDIA, media::WRITE_FAULT));
                    }
                }
            }
        }
    }

    /// `len` payload bytes of a PDU for slot `i` are in; run the command once
    /// all of its data is.
    fn h2c_end(&mut self, i: usize, len: u32, digest_ok: bool, out: &mut Vec<u8>) {
        if !digest_ok {
            crate::peer_warn!(self.now_us, "data digest error in H2CData from {}", self.peer);
            QueueCounters::bump(&self.counters.io.digest_errors, 1);
        }
        let s = self.slots.get_mut(i).expect("checked slot");
        if !digest_ok {
            s.error.get_or_insert(Status::new(sct::GENERIC, generic::TRANSIENT_TRANSPORT_ERROR));
        }
        s.received += len;
        debug_assert!(s.received <= s.xfer_len);
        if s.received < s.xfer_len {
            return;
        }
        let sqe = s.sqe;
        if let Some(e) = s.error {
            self.free_slot(i);
            self.respond(out, sqe.cid, e, 0, 0);
            return;
        }
        match (s.work, s.sink) {
            (Work::Admin, _) => {
                let buf = s.buf.take().expect("admin data is buffered");
                let len = s.xfer_len as usize;
                self.free_slot(i);
                self.run_admin(&sqe, buf.as_slice(len), out);
            }
            (Work::AuthSend, _) => {
                let buf = s.buf.take().expect("an authentication message is buffered");
                let len = s.xfer_len as usize;
                self.free_slot(i);
                self.auth_send(&sqe, buf.as_slice(len), out);
            }
            (Work::Io(IoPlan::Write { len, .. }), Sink::Memory) => {
                // Memory namespaces have no volatile cache: FUA holds already.
                let nsid = sqe.nsid;
                self.free_slot(i);
                self.counters.count_write(nsid, len as u64);
                self.respond(out, sqe.cid, Status::SUCCESS, 0, 0);
            }
            (Work::Io(plan), Sink::Buffer) => self.exec_io_buffered(i, plan, out),
            (Work::Io(_), Sink::Memory) => unreachable!("only writes go straight to memory"),
        }
    }

    /// Where the rest of the payload in progress may be received directly
    /// (poll mode): the command's buffer, when at least [`SINK_MIN_BYTES`]
    /// of it are still to come.
    pub fn recv_sink(&mut self) -> Option<&mut [u8]> {
        let st = self.h2c?;
        if st.remaining < SINK_MIN_BYTES {
            return None;
        }
        let s = self.slots.get_mut(st.slot)?;
        if s.sink != Sink::Buffer {
            return None;
        }
        let b = s.buf.as_mut()?;
        let (at, end) = (st.at as usize, (st.at + st.remaining) as usize);
        Some(&mut b.as_mut_slice(end)[at..end])
    }

    /// `n` bytes were received into the front of the last [`Queue::recv_sink`].
    pub fn on_sink_recv(&mut self, n: usize, now_us: u64, out: &mut Vec<u8>) {
        self.now_us = now_us;
        let st = self.h2c.expect("on_sink_recv without a stream");
        assert!(n > 0 && n <= st.remaining as usize, "sink received {n} of {}", st.remaining);
        let (at, end) = (st.at as usize, st.at as usize + n);
        if st.ddgst {
            let s = self.slots.get(st.slot).expect("slot");
            let data = &s.buf.as_ref().expect("buffer").as_slice(end)[at..end];
            let crc = crc32c_append(st.crc, data);
            self.h2c.as_mut().expect("stream").crc = crc;
        }
        let st = self.h2c.as_mut().expect("stream");
        st.at += n as u32;
        st.remaining -= n as u32;
        self.h2c_want_rest();
        if self.h2c.is_some_and(|s| s.remaining == 0 && !s.ddgst) {
            self.h2c_finish(true, out);
        }
    }
}
