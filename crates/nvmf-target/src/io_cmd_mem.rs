//! I/O on memory namespaces (`ram`, `null`): executed within the call that
//! received the command. These are memory copies, not system calls (`ram`
//! gives pages back with `madvise` on Deallocate and Write Zeroes), so the
//! core never blocks here. Reads are built in place as C2HData PDUs: from
//! memory that never changes (`null`) the driver sends without copying
//! ([`crate::tcp::Queue::take_lent`]); otherwise the data is copied into the
//! output once.

use nvmf_proto::digest::crc32c;
use nvmf_proto::pdu::{encode_data_pdu_header, finish_data_pdu, flags, DataHdr};
use nvmf_proto::status::{generic, media, sct};
use nvmf_proto::{Sqe, Status};

use crate::io_cmd::{dsm_ranges, IoPlan};
use crate::subsys::Namespace;
use crate::tcp::Queue;

impl Queue {
    /// Run `plan` on memory namespace `ns`. Returns the status to send in a
    /// CapsuleResp, or `None` when the response already went out (a read
    /// whose last C2HData carried SUCCESS).
    pub(crate) fn mem_exec(
        &mut self,
        sqe: &Sqe,
        ns: &Namespace,
        plan: IoPlan,
        data: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) -> Option<Status> {
        debug_assert!(ns.backend.fd().is_none());
        let write_fault = Status::new(sct::MEDIA, media::WRITE_FAULT);
        let read_error = Status::new(sct::MEDIA, media::UNRECOVERED_READ);
        let internal = Status::new(sct::GENERIC, generic::INTERNAL_ERROR);
        let b = &ns.backend;
        match plan {
            IoPlan::Read { off, len } => match self.send_read_from_memory(out, sqe.cid, ns, off, len) {
                Ok(true) => None,
                Ok(false) => Some(Status::SUCCESS),
                Err(()) => Some(read_error),
            },
            IoPlan::Write { off, len, .. } => {
                let Some(d) = data else { return Some(internal) };
                debug_assert_eq!(d.len(), len as usize);
                match b.write_sync(off, d) {
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        tracing::warn!("nsid {}: write at {off} failed: {e}", ns.nsid);
                        return Some(write_fault);
                    }
                    None => return Some(internal),
                }
                // No volatile cache in memory: FUA holds already.
                self.counters.count_write(sqe.nsid, len as u64);
                Some(Status::SUCCESS)
            }
            IoPlan::Compare { off, len } => {
                let Some(d) = data else { return Some(internal) };
                let mut media_data = std::mem::take(&mut self.scratch);
                media_data.clear();
                media_data.resize(len as usize, 0);
                let r = match b.read_sync(off, &mut media_data) {
                    Some(Ok(())) if media_data[..] == d[..] => Status::SUCCESS,
                    Some(Ok(())) => Status::new(sct::MEDIA, media::COMPARE_FAILURE).dnr(),
                    _ => read_error,
                };
                media_data.clear();
                self.scratch = media_data;
                Some(r)
            }
            IoPlan::Flush { .. } => Some(if b.flush_sync().is_ok() { Status::SUCCESS } else { write_fault }),
            IoPlan::WriteZeroes { off, len } => Some(match b.write_zeroes(off, len) {
                Ok(()) => Status::SUCCESS,
                Err(e) => {
                    tracing::warn!("nsid {}: write zeroes failed: {e}", ns.nsid);
                    write_fault
                }
            }),
            IoPlan::Dsm { nr, deallocate } => {
                let Some(d) = data else { return Some(internal) };
                let ranges = match dsm_ranges(ns, d, nr) {
                    Ok(r) => r,
                    Err(s) => return Some(s),
                };
                if deallocate {
                    for (off, len) in ranges {
                        if let Err(e) = b.deallocate(off, len) {
                            tracing::warn!("nsid {}: deallocate failed: {e}", ns.nsid);
                            return Some(internal);
                        }
                    }
                }
                Some(Status::SUCCESS)
            }
        }
    }

    /// Read straight from a memory namespace into C2HData PDUs in `out`.
    /// `Ok(true)`: the SUCCESS flag completed the command; `Ok(false)`: a
    /// CapsuleResp must follow; `Err`: read error (nothing was written).
    fn send_read_from_memory(
        &mut self,
        out: &mut Vec<u8>,
        cid: u16,
        ns: &Namespace,
        off: u64,
        len: u32,
    ) -> Result<bool, ()> {
        let success_flag = self.success_flag_allowed();
        let chunk_max = self.limits.max_c2h_data_bytes;
        let start = out.len();
        let lent_before = self.lent.len();
        let mut done = 0u32;
        while done < len {
            let n = (len - done).min(chunk_max);
            let last = done + n == len;
            let mut f = 0;
            if last {
                f |= flags::LAST_PDU;
                if success_flag {
                    f |= flags::SUCCESS;
                }
            }
            let hdr = DataHdr { cccid: cid, ttag: 0, offset: done, length: n };
            encode_data_pdu_header(out, true, f, &hdr, &self.tx);
            let data_start = out.len();
            let ok = if let Some(r) = ns.backend.read_static(off + done as u64, n as usize) {
                // Unchanging memory: the driver sends it from where it is.
                match r {
                    Ok(data) => {
                        debug_assert_eq!(data.len(), n as usize);
                        self.lent.push((data_start, data));
                        if self.tx.ddgst {
                            finish_data_pdu(out, crc32c(data), &self.tx);
                        }
                        true
                    }
                    Err(_) => false,
                }
            } else {
                match ns.backend.read_append(off + done as u64, n as usize, out) {
                    Some(Ok(())) => {
                        debug_assert_eq!(out.len(), data_start + n as usize);
                        if self.tx.ddgst {
                            let crc = crc32c(&out[data_start..]);
                            finish_data_pdu(out, crc, &self.tx);
                        }
                        true
                    }
                    _ => false,
                }
            };
            if !ok {
                // Nothing of this command goes out.
                out.truncate(start);
                self.lent.truncate(lent_before);
                return Err(());
            }
            done += n;
        }
        self.counters.count_read(ns.nsid, len as u64);
        Ok(success_flag)
    }
}
