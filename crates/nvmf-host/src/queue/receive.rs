//! Controller to host: the PDU receive loop, ICResp, CapsuleResp, C2HData
//! (whole, or piece by piece straight into the command's buffer, also
//! through the driver's direct receive) and C2HTermReq.

use nvmf_proto::copy::copy_bytes;
use nvmf_proto::digest::crc32c_append;
use nvmf_proto::pdu::{self, dgst, fes, flags, DataHdr, IcResp, PduError, TxConfig};
use nvmf_proto::status::{generic, sct};
use nvmf_proto::{Cqe, Decoded, FrameConfig, Pdu, Role, Status};

use super::{
    dgst_flags, pda_bytes, rx_pdu_len_max, DataDir, Fate, HostQueue, QueueError, State, MAXH2CDATA_MIN_BYTES, PDA_MAX,
    RECV_HINT_BYTES, SINK_MIN_BYTES,
};

/// Byte offsets inside received PDUs, used as FEI of "invalid header field".
pub(super) mod fei {
    pub const FLAGS: u32 = 1;
    pub const CCCID: u32 = 8;
    pub const DATAL: u32 = 16;
    pub const CQE_CID: u32 = 8 + 12;
    pub const IC_PFV: u32 = 8;
    pub const IC_PDA: u32 = 10;
    pub const IC_DGST: u32 = 11;
    pub const IC_MAXH2CDATA: u32 = 12;
}

/// The controller sent an invalid header field at byte `fei` of its PDU.
pub(super) fn invalid_field(fei: u32, reason: &'static str) -> PduError {
    PduError { fes: fes::INVALID_HEADER_FIELD, fei, reason }
}

/// The controller broke the protocol in a way no header field pinpoints (FEI 0).
pub(super) fn fatal(fes: u16, reason: &'static str) -> PduError {
    PduError { fes, fei: 0, reason }
}

/// A C2HData PDU taken piece by piece: its header was checked in full when it
/// arrived, each payload piece goes straight into the command's buffer (from
/// the receive buffer, or received there directly through
/// [`HostQueue::recv_sink`]), and the PDU completes when the last payload byte
/// and the data digest are in. Saves buffering a whole large PDU and copying
/// it once more.
#[derive(Clone, Copy, Debug)]
pub(super) struct C2hStream {
    slot: usize,
    flags: u8,
    /// Next buffer offset to fill, and the end of this PDU's data in the buffer.
    at: u32,
    end: u32,
    /// A data digest follows the payload; `crc` is the running CRC32C of the
    /// payload so far.
    ddgst: bool,
    crc: u32,
}

impl HostQueue {
    // ------------------------------------------------------------ receive

    /// Parse every whole PDU at the front of `rx` and return the number of
    /// bytes consumed. Completions become available through
    /// [`pop_completion`](Self::pop_completion); H2CData answering R2Ts goes to
    /// the output. On `Err` the queue has failed (an H2CTermReq may be in the
    /// output: send it, then close the connection).
    pub fn receive(&mut self, rx: &[u8]) -> Result<usize, QueueError> {
        if let State::Failed(e) = &self.state {
            return Err(e.clone());
        }
        let mut consumed = 0;
        loop {
            let buf = &rx[consumed..];
            if self.c2h.is_some() {
                match self.c2h_continue(buf) {
                    Ok(0) => return Ok(consumed),
                    Ok(n) => consumed += n,
                    Err(e) => return Err(e),
                }
                continue;
            }
            match pdu::decode(buf, &self.frame) {
                Ok(Decoded::NeedMore(_)) => {
                    // A data PDU not all here yet: take its header now and its
                    // payload as it comes.
                    match pdu::decode_data_start(buf, &self.frame) {
                        Ok(None) => return Ok(consumed),
                        Ok(Some(st)) => {
                            let hdr = &buf[..st.data_at.min(pdu::TERM_DATA_LEN_MAX)];
                            if let Err(e) = self.on_c2h_start(&st) {
                                return Err(self.protocol_error(e, hdr));
                            }
                            consumed += st.data_at;
                        }
                        Err(e) => {
                            let hdr = &buf[..buf.len().min(pdu::TERM_DATA_LEN_MAX)];
                            return Err(self.protocol_error(e, hdr));
                        }
                    }
                }
                Ok(Decoded::Pdu(p, n)) => {
                    let hdr = &buf[..n.min(pdu::TERM_DATA_LEN_MAX)];
                    if let Err(e) = self.handle(p) {
                        return Err(self.protocol_error(e, hdr));
                    }
                    if let State::Failed(e) = &self.state {
                        return Err(e.clone());
                    }
                    consumed += n;
                }
                Err(e) => {
                    let hdr = &buf[..buf.len().min(pdu::TERM_DATA_LEN_MAX)];
                    return Err(self.protocol_error(e, hdr));
                }
            }
        }
    }

    /// Where the driver may receive the next bytes of the stream directly,
    /// with nothing copied: the rest of a C2HData payload, in the command's
    /// buffer, while one is arriving in pieces and at least
    /// [`SINK_MIN_BYTES`] of it are left. Only valid while the driver has no
    /// unparsed received bytes (they come first); report what landed with
    /// [`sink_received`](Self::sink_received) before anything else.
    pub fn recv_sink(&mut self) -> Option<&mut [u8]> {
        let st = self.c2h.as_ref()?;
        if ((st.end - st.at) as usize) < SINK_MIN_BYTES || !matches!(self.state, State::Ready) {
            return None;
        }
        Some(&mut self.slots[st.slot].buf[st.at as usize..st.end as usize])
    }

    /// The most bytes the driver's next receive into its own buffer should
    /// take when that buffer holds nothing unparsed. While reads of
    /// [`SINK_MIN_BYTES`] or more are outstanding: the rest of the C2HData
    /// PDU in progress (if any) and [`RECV_HINT_BYTES`] more, so that the
    /// next large C2HData's header arrives with little of its payload and
    /// the rest of that payload can go straight to its buffer through
    /// [`recv_sink`](Self::recv_sink). Otherwise no limit.
    pub fn recv_len_hint(&self) -> usize {
        if self.large_reads == 0 {
            return usize::MAX;
        }
        let rest =
            self.c2h.as_ref().map_or(0, |st| (st.end - st.at) as usize + if st.ddgst { pdu::DIGEST_LEN } else { 0 });
        rest + RECV_HINT_BYTES
    }

    /// `n` bytes were received into the slice [`recv_sink`](Self::recv_sink)
    /// returned (its first `n` bytes).
    pub fn sink_received(&mut self, n: usize) -> Result<(), QueueError> {
        if let State::Failed(e) = &self.state {
            return Err(e.clone());
        }
        let st = self.c2h.as_ref().expect("sink_received without a sink");
        assert!(n <= (st.end - st.at) as usize, "sink_received({n}) beyond the sink");
        self.c2h_advance(n);
        Ok(())
    }

    /// `n` more payload bytes of the C2HData PDU in progress are in the
    /// command's buffer: digest them, and without a data digest to wait for,
    /// finish the PDU when its payload is complete.
    fn c2h_advance(&mut self, n: usize) {
        let st = self.c2h.as_mut().expect("c2h_advance without a stream");
        debug_assert!(self.slots[st.slot].busy, "a stream's command completes only through it or fail");
        let (at, end) = (st.at as usize, st.at as usize + n);
        if st.ddgst {
            st.crc = crc32c_append(st.crc, &self.slots[st.slot].buf[at..end]);
        }
        st.at = end as u32;
        if st.at == st.end && !st.ddgst {
            self.c2h_finish(true);
        }
    }

    /// Feed `buf` (received bytes after what was consumed) to the C2HData
    /// PDU in progress; returns the bytes taken (0: need more).
    fn c2h_continue(&mut self, buf: &[u8]) -> Result<usize, QueueError> {
        let st = self.c2h.as_ref().expect("c2h_continue without a stream");
        if st.at < st.end {
            let n = ((st.end - st.at) as usize).min(buf.len());
            if n == 0 {
                return Ok(0);
            }
            let at = st.at as usize;
            copy_bytes(&mut self.slots[st.slot].buf[at..at + n], &buf[..n]);
            self.c2h_advance(n);
            return Ok(n);
        }
        debug_assert!(st.ddgst, "a finished stream without a digest is already closed");
        if buf.len() < pdu::DIGEST_LEN {
            return Ok(0);
        }
        let want = u32::from_le_bytes(buf[..pdu::DIGEST_LEN].try_into().unwrap());
        let ok = want == st.crc;
        self.c2h_finish(ok);
        Ok(pdu::DIGEST_LEN)
    }

    /// Check a C2HData header whose payload will come in pieces, as
    /// [`on_c2h_data`](Self::on_c2h_data) checks a whole one, and start taking it.
    fn on_c2h_start(&mut self, st: &pdu::DataStart) -> Result<(), PduError> {
        debug_assert!(self.c2h.is_none());
        if self.state != State::Ready {
            return Err(fatal(fes::PDU_SEQUENCE_ERROR, "C2HData before ICResp"));
        }
        let i = self.check_c2h(&st.hdr, st.flags)?;
        self.c2h = Some(C2hStream {
            slot: i,
            flags: st.flags,
            at: st.hdr.offset,
            end: st.hdr.offset + st.hdr.length,
            ddgst: st.ddgst,
            crc: 0,
        });
        Ok(())
    }

    /// The C2HData PDU in progress is complete (payload in the buffer, digest
    /// checked): as the end of [`on_c2h_data`](Self::on_c2h_data).
    fn c2h_finish(&mut self, digest_ok: bool) {
        let st = self.c2h.take().expect("c2h_finish without a stream");
        debug_assert_eq!(st.at, st.end);
        if !digest_ok {
            // The bytes are in the buffer already; the command completes with
            // a transport error, so nobody reads them.
            self.slots[st.slot].data_digest_error = true;
        }
        self.c2h_received(st.slot, st.end, st.flags);
    }

    /// Queue an H2CTermReq with `e`'s FES and FEI carrying the offending
    /// header, then fail.
    fn protocol_error(&mut self, e: PduError, offending: &[u8]) -> QueueError {
        if self.error().is_none() {
            let n = offending.len().min(pdu::TERM_DATA_LEN_MAX);
            pdu::encode_term_req(&mut self.out, false, e.fes, e.fei, &offending[..n]);
        }
        self.fail_with(QueueError::Protocol(e))
    }

    fn handle(&mut self, p: Pdu<'_>) -> Result<(), PduError> {
        if self.state == State::AwaitIcResp {
            return match p {
                Pdu::IcResp(ic) => self.on_ic_resp(ic),
                Pdu::TermReq { fes, fei, .. } => {
                    self.fail_with(QueueError::TerminatedByController { fes, fei });
                    Ok(())
                }
                _ => Err(fatal(fes::PDU_SEQUENCE_ERROR, "PDU before ICResp")),
            };
        }
        match p {
            Pdu::CapsuleResp(cqe) => self.on_capsule_resp(cqe),
            Pdu::C2HData { hdr, flags, data, data_digest_ok } => self.on_c2h_data(hdr, flags, data, data_digest_ok),
            Pdu::R2T(hdr) => self.on_r2t(hdr),
            Pdu::TermReq { fes, fei, .. } => {
                self.fail_with(QueueError::TerminatedByController { fes, fei });
                Ok(())
            }
            Pdu::IcResp(_) => Err(fatal(fes::PDU_SEQUENCE_ERROR, "second ICResp")),
            // The framer rejects host-to-controller PDU types for Role::Host.
            Pdu::IcReq(_) | Pdu::CapsuleCmd { .. } | Pdu::H2CData { .. } => {
                Err(invalid_field(0, "PDU type not valid for a host"))
            }
        }
    }

    fn on_ic_resp(&mut self, ic: IcResp) -> Result<(), PduError> {
        if ic.pfv != 0 {
            return Err(invalid_field(fei::IC_PFV, "ICResp PFV is not 0"));
        }
        if ic.cpda > PDA_MAX {
            return Err(invalid_field(fei::IC_PDA, "ICResp CPDA over 31"));
        }
        let want = dgst_flags(&self.cfg);
        if ic.dgst & (dgst::HEADER | dgst::DATA) != want {
            return Err(invalid_field(fei::IC_DGST, "ICResp digests differ from the ICReq's"));
        }
        if ic.maxh2cdata < MAXH2CDATA_MIN_BYTES {
            return Err(invalid_field(fei::IC_MAXH2CDATA, "ICResp MAXH2CDATA under 4096"));
        }
        self.maxh2cdata = ic.maxh2cdata;
        self.cpda = ic.cpda;
        self.frame = FrameConfig {
            role: Role::Host,
            hdgst: self.cfg.hdr_digest,
            ddgst: self.cfg.data_digest,
            pdu_len_max: rx_pdu_len_max(&self.cfg) as u32,
            rx_data_align: pda_bytes(self.cfg.hpda),
        };
        self.tx = TxConfig { hdgst: self.cfg.hdr_digest, ddgst: self.cfg.data_digest, data_align: pda_bytes(ic.cpda) };
        self.state = State::Ready;
        Ok(())
    }

    fn on_capsule_resp(&mut self, mut cqe: Cqe) -> Result<(), PduError> {
        let Some(i) = self.lookup(cqe.cid) else {
            return Err(invalid_field(fei::CQE_CID, "CapsuleResp for a CID not outstanding"));
        };
        let s = &self.slots[i];
        if s.data_digest_error {
            cqe.status = Status::new(sct::GENERIC, generic::TRANSIENT_TRANSPORT_ERROR);
        } else if s.dir == DataDir::FromController && cqe.status.is_success() && s.received_len as usize != s.buf.len()
        {
            // Never report success for a read buffer the controller did not fill.
            cqe.status = Status::new(sct::GENERIC, generic::DATA_TRANSFER_ERROR);
        }
        self.complete(i, cqe, Fate::Known);
        Ok(())
    }

    fn on_c2h_data(&mut self, hdr: DataHdr, pflags: u8, data: &[u8], digest_ok: bool) -> Result<(), PduError> {
        // The framer checks DATAL against the payload; checked again because a
        // mismatch here would corrupt the buffer, not just fail an assertion.
        if hdr.length as usize != data.len() || data.is_empty() {
            return Err(invalid_field(fei::DATAL, "C2HData DATAL does not match its data"));
        }
        let i = self.check_c2h(&hdr, pflags)?;
        let end = hdr.offset + hdr.length;
        if digest_ok {
            copy_bytes(&mut self.slots[i].buf[hdr.offset as usize..end as usize], data);
        } else {
            // Keep receiving; the command completes with a transport error.
            self.slots[i].data_digest_error = true;
        }
        self.c2h_received(i, end, pflags);
        Ok(())
    }

    /// Everything a C2HData header must satisfy before its data may touch
    /// the command's buffer; returns the command's slot.
    fn check_c2h(&self, hdr: &DataHdr, pflags: u8) -> Result<usize, PduError> {
        let Some(i) = self.lookup(hdr.cccid) else {
            return Err(invalid_field(fei::CCCID, "C2HData for a CID not outstanding"));
        };
        let s = &self.slots[i];
        if s.dir != DataDir::FromController {
            return Err(invalid_field(fei::CCCID, "C2HData for a command without read data"));
        }
        if hdr.length == 0 {
            return Err(invalid_field(fei::DATAL, "C2HData DATAL does not match its data"));
        }
        let end = hdr.offset as u64 + hdr.length as u64;
        if end > s.buf.len() as u64 {
            return Err(fatal(fes::DATA_OUT_OF_RANGE, "C2HData beyond the command's buffer"));
        }
        if hdr.offset != s.received_len {
            return Err(fatal(fes::DATA_OUT_OF_RANGE, "C2HData offset not contiguous"));
        }
        if pflags & flags::SUCCESS != 0 && pflags & flags::LAST_PDU == 0 {
            return Err(invalid_field(fei::FLAGS, "C2HData SUCCESS without LAST_PDU"));
        }
        Ok(i)
    }

    /// A C2HData PDU's data up to `end` is in slot `i`'s buffer: account for
    /// it and complete the command when the PDU carries SUCCESS.
    fn c2h_received(&mut self, i: usize, end: u32, pflags: u8) {
        self.slots[i].received_len = end;
        if pflags & flags::SUCCESS != 0 {
            // complete() sets the CID from the slot.
            let mut cqe = Cqe::new(0, Status::SUCCESS);
            cqe.sqid = self.cfg.qid;
            let s = &self.slots[i];
            if s.data_digest_error {
                cqe.status = Status::new(sct::GENERIC, generic::TRANSIENT_TRANSPORT_ERROR);
            } else if s.received_len as usize != s.buf.len() {
                cqe.status = Status::new(sct::GENERIC, generic::DATA_TRANSFER_ERROR);
            }
            self.complete(i, cqe, Fate::Known);
        }
    }
}
