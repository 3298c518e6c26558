//! Host to controller: command capsules (with in-capsule data when it fits),
//! H2CData answering R2Ts, and the output buffer with the payloads lent
//! from command buffers.

use nvmf_proto::copy::extend_bytes;
use nvmf_proto::digest::crc32c;
use nvmf_proto::opcodes::{admin, fctype};
use nvmf_proto::pdu::{self, fes, flags, DataHdr, PduError};
use nvmf_proto::Sgl;

use super::receive::{fatal, fei, invalid_field};
use super::slots::{make_cid, Slot, CID_INDEX_MASK};
use super::{
    DataDir, HostQueue, OutputPiece, Request, State, SubmitError, SubmitErrorKind, ADMIN_IN_CAPSULE_DATA_BYTES_MAX,
    LEND_MIN_BYTES, MAXH2CDATA_MIN_BYTES, SINK_MIN_BYTES,
};

/// An H2CData payload left in its command's buffer, spliced into the output
/// stream at byte `at` of `out`.
#[derive(Clone, Copy, Debug)]
pub(super) struct LentPiece {
    at: usize,
    slot: u16,
    offset: u32,
    len: u32,
}

impl HostQueue {
    // ------------------------------------------------------------ output

    /// Bytes waiting to be sent to the controller, in order. Not for queues
    /// with [`QueueConfig::h2c_data_borrowed`](super::QueueConfig::h2c_data_borrowed)
    /// (use [`take_output`](Self::take_output)).
    pub fn output(&self) -> &[u8] {
        assert!(self.out_lent.is_empty(), "output() on a queue with lent payloads: use take_output");
        &self.out
    }
    /// The first `n` bytes of [`output`](Self::output) were sent.
    pub fn consume_output(&mut self, n: usize) {
        assert!(n <= self.out.len());
        assert!(self.out_lent.is_empty(), "consume_output on a queue with lent payloads: use take_output");
        self.out.drain(..n);
    }
    /// All of the output was sent (lent payloads included: their loans end).
    pub fn clear_output(&mut self) {
        self.out.clear();
        for i in 0..self.out_lent.len() {
            let slot = self.out_lent[i].slot;
            self.output_sent(make_cid(slot, self.slots[slot as usize].gen) as u64);
        }
        self.out_lent.clear();
    }
    /// Move all pending output to the end of `tx` (swapping buffers when `tx`
    /// is empty, so no bytes are copied). Not for queues with lent payloads
    /// pending ([`has_lent_output`](Self::has_lent_output)).
    pub fn move_output_to(&mut self, tx: &mut Vec<u8>) {
        assert!(self.out_lent.is_empty(), "move_output_to on a queue with lent payloads: use take_output");
        if tx.is_empty() {
            std::mem::swap(tx, &mut self.out);
        } else {
            tx.append(&mut self.out);
        }
    }

    /// The output holds payloads lent from command buffers.
    pub fn has_lent_output(&self) -> bool {
        !self.out_lent.is_empty()
    }

    /// Hand the whole output to `f` piece by piece, in stream order, and clear
    /// it. Every [`OutputPiece::Lent`] must later be confirmed with
    /// [`output_sent`](Self::output_sent) or [`release_output`](Self::release_output).
    pub fn take_output(&mut self, mut f: impl FnMut(OutputPiece<'_>)) {
        let mut pos = 0;
        for p in &self.out_lent {
            debug_assert!(p.at >= pos && p.at <= self.out.len(), "lent pieces out of order");
            if p.at > pos {
                f(OutputPiece::Bytes(&self.out[pos..p.at]));
                pos = p.at;
            }
            let s = &self.slots[p.slot as usize];
            debug_assert!(s.busy && s.lent_pieces > 0, "lent piece of an idle slot");
            let data = &s.buf[p.offset as usize..(p.offset + p.len) as usize];
            f(OutputPiece::Lent { data, token: make_cid(p.slot, s.gen) as u64 });
        }
        if pos < self.out.len() {
            f(OutputPiece::Bytes(&self.out[pos..]));
        }
        self.out.clear();
        self.out_lent.clear();
    }

    /// A lent payload (its `token`) was handed to the kernel: the driver no
    /// longer reads it. Unknown tokens are ignored (a bug in the driver, not
    /// a wire condition).
    pub fn output_sent(&mut self, token: u64) {
        let cid = token as u16;
        let index = (cid & CID_INDEX_MASK) as usize;
        let Some(s) = self.slots.get_mut(index) else { return };
        if !s.busy || make_cid(index as u16, s.gen) != cid || s.lent_pieces == 0 {
            debug_assert!(false, "output_sent for a token with nothing lent");
            return;
        }
        s.lent_pieces -= 1;
        if s.lent_pieces == 0 {
            if let Some((cqe, fate)) = s.parked.take() {
                self.complete(index, cqe, fate);
            }
        }
    }

    /// The connection is gone and the driver references no lent payload any
    /// more (after the engine's `on_closed`): drop every loan and release the
    /// completions that waited for them.
    pub fn release_output(&mut self) {
        self.out_lent.clear();
        for i in 0..self.slots.len() {
            let s = &mut self.slots[i];
            s.lent_pieces = 0;
            if let Some((cqe, fate)) = s.parked.take() {
                self.complete(i, cqe, fate);
            }
        }
    }

    // ------------------------------------------------------------ submit

    /// Queue a command (CapsuleCmd, with in-capsule data when it fits) in the
    /// output and return its CID. `now_ms` starts its timeout.
    pub fn submit(&mut self, req: Request, now_ms: u64) -> Result<u16, SubmitError> {
        let refuse = |kind, req: Request| Err(SubmitError { kind, buf: req.buf, tag: req.tag });
        match self.state {
            State::AwaitIcResp => return refuse(SubmitErrorKind::NotReady, req),
            State::Failed(_) => return refuse(SubmitErrorKind::Failed, req),
            State::Ready => {}
        }
        if req.dir != DataDir::None && req.buf.is_empty() {
            return refuse(SubmitErrorKind::EmptyBuffer, req);
        }
        let len = if req.dir == DataDir::None { 0 } else { req.buf.len() };
        if len > self.cfg.transfer_len_max_bytes as usize {
            return refuse(SubmitErrorKind::TooLarge, req);
        }
        let Some(index) = self.free.pop() else {
            return refuse(SubmitErrorKind::QueueFull, req);
        };
        if req.dir == DataDir::FromController && len >= SINK_MIN_BYTES {
            self.large_reads += 1;
        }
        let slot = &mut self.slots[index as usize];
        debug_assert!(!slot.busy, "free list holds a busy slot");
        let cid = make_cid(index, slot.gen);
        let is_connect = req.sqe.opcode == admin::FABRICS && req.sqe.fctype() == fctype::CONNECT;
        let in_capsule = req.dir == DataDir::ToController
            && (len <= self.cfg.in_capsule_data_max_bytes as usize
                || (is_connect && len <= ADMIN_IN_CAPSULE_DATA_BYTES_MAX as usize));
        let mut sqe = req.sqe;
        sqe.cid = cid;
        sqe.flags = (sqe.flags & 0x3f) | (nvmf_proto::sqe::sgl::PSDT_SGL_MPTR_CONTIG << 6);
        sqe.sgl1 = if in_capsule { Sgl::in_capsule(0, len as u32) } else { Sgl::transport(len as u32) };
        let timeout_ms = req.timeout_ms.unwrap_or(self.cfg.command_timeout_ms);
        *slot = Slot {
            busy: true,
            gen: slot.gen,
            dir: req.dir,
            buf: req.buf,
            tag: req.tag,
            deadline_ms: if timeout_ms == 0 { u64::MAX } else { now_ms.saturating_add(timeout_ms) },
            expired_reported: false,
            in_capsule,
            received_len: 0,
            requested_len: 0,
            data_digest_error: false,
            lent_pieces: 0,
            parked: None,
        };
        if in_capsule && self.cfg.h2c_data_borrowed && len >= LEND_MIN_BYTES {
            // Zero copy: the driver sends the in-capsule data from the buffer.
            pdu::encode_capsule_cmd_header(&mut self.out, &sqe, len, &self.tx);
            self.out_lent.push(LentPiece { at: self.out.len(), slot: index, offset: 0, len: len as u32 });
            slot.lent_pieces += 1;
            if self.tx.ddgst {
                pdu::finish_data_pdu(&mut self.out, crc32c(&slot.buf), &self.tx);
            }
        } else {
            let data: &[u8] = if in_capsule { &slot.buf } else { &[] };
            pdu::encode_capsule_cmd(&mut self.out, &sqe, data, &self.tx);
        }
        Ok(cid)
    }

    pub(super) fn on_r2t(&mut self, hdr: DataHdr) -> Result<(), PduError> {
        let Some(i) = self.lookup(hdr.cccid) else {
            return Err(invalid_field(fei::CCCID, "R2T for a CID not outstanding"));
        };
        let s = &mut self.slots[i];
        if s.dir != DataDir::ToController || s.in_capsule {
            return Err(invalid_field(fei::CCCID, "R2T for a command with no data to transfer"));
        }
        if hdr.length == 0 {
            return Err(invalid_field(fei::DATAL, "R2T of zero length"));
        }
        let end = hdr.offset as u64 + hdr.length as u64;
        if end > s.buf.len() as u64 {
            return Err(fatal(fes::DATA_OUT_OF_RANGE, "R2T beyond the command's data"));
        }
        if s.requested_len as u64 + hdr.length as u64 > s.buf.len() as u64 {
            return Err(fatal(fes::R2T_LIMIT_EXCEEDED, "R2Ts ask for more than the command's data"));
        }
        s.requested_len += hdr.length;
        // Answer at once, split at MAXH2CDATA; LAST_PDU ends this R2T's transfer.
        debug_assert!(self.maxh2cdata >= MAXH2CDATA_MIN_BYTES);
        let mut off = hdr.offset;
        while off < end as u32 {
            let n = (end as u32 - off).min(self.maxh2cdata);
            let last = off + n == end as u32;
            let h = DataHdr { cccid: hdr.cccid, ttag: hdr.ttag, offset: off, length: n };
            let chunk = &s.buf[off as usize..(off + n) as usize];
            pdu::encode_data_pdu_header(&mut self.out, false, if last { flags::LAST_PDU } else { 0 }, &h, &self.tx);
            if self.cfg.h2c_data_borrowed && n as usize >= LEND_MIN_BYTES {
                // Zero copy: the driver sends the payload from the command's buffer.
                self.out_lent.push(LentPiece { at: self.out.len(), slot: i as u16, offset: off, len: n });
                s.lent_pieces += 1;
            } else {
                extend_bytes(&mut self.out, chunk);
            }
            if self.tx.ddgst {
                pdu::finish_data_pdu(&mut self.out, crc32c(chunk), &self.tx);
            }
            off += n;
        }
        Ok(())
    }
}
