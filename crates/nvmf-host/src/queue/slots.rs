//! Command slots: one per outstanding command, found by its CID.

use super::{Completion, DataDir, Fate, HostQueue, QUEUE_DEPTH_MAX, SINK_MIN_BYTES};
use nvmf_proto::Cqe;

/// Command identifiers: slot index in the low bits, a 4-bit generation in the
/// high bits (as Linux does), so a late PDU for a finished command that reused
/// its slot is recognised as unknown instead of corrupting the new command.
pub(super) const CID_INDEX_BITS: u32 = 12;
pub(super) const CID_INDEX_MASK: u16 = (1 << CID_INDEX_BITS) - 1;
const CID_GEN_MASK: u8 = 0xf;
const _: () = assert!(QUEUE_DEPTH_MAX as u32 <= 1 << CID_INDEX_BITS);

/// One command's state from submit to completion; `busy` while outstanding.
#[derive(Debug, Default)]
pub(super) struct Slot {
    pub(super) busy: bool,
    pub(super) gen: u8,
    pub(super) dir: DataDir,
    pub(super) buf: Vec<u8>,
    pub(super) tag: u64,
    /// Absolute deadline in the caller's milliseconds; `u64::MAX` = none.
    pub(super) deadline_ms: u64,
    pub(super) expired_reported: bool,
    /// Write sent in the capsule: an R2T for it is a protocol error.
    pub(super) in_capsule: bool,
    /// C2H bytes received so far (data must arrive in order).
    pub(super) received_len: u32,
    /// H2C bytes the controller asked for with R2Ts so far.
    pub(super) requested_len: u32,
    pub(super) data_digest_error: bool,
    /// H2CData payloads of this command lent to the driver and not yet
    /// confirmed sent: the buffer must not leave the queue before it is 0.
    pub(super) lent_pieces: u32,
    /// The command's completion, held back while `lent_pieces > 0`.
    pub(super) parked: Option<(Cqe, Fate)>,
}

impl HostQueue {
    /// The slot of a CID the controller names, if that command is outstanding.
    pub(super) fn lookup(&self, cid: u16) -> Option<usize> {
        let index = (cid & CID_INDEX_MASK) as usize;
        let s = self.slots.get(index)?;
        // A parked command already has its answer: a second one is not outstanding.
        (s.busy && s.parked.is_none() && make_cid(index as u16, s.gen) == cid).then_some(index)
    }

    /// Finish the command in slot `i` (exactly once) and free the slot for a
    /// new generation of its CID.
    pub(super) fn complete(&mut self, i: usize, mut cqe: Cqe, fate: Fate) {
        let s = &mut self.slots[i];
        debug_assert!(s.busy, "completing a free slot");
        if s.lent_pieces > 0 {
            // The driver still sends from this buffer: hand it back only after
            // output_sent / release_output.
            if s.parked.is_none() {
                s.parked = Some((cqe, fate));
            }
            return;
        }
        let cid = make_cid(i as u16, s.gen);
        cqe.cid = cid;
        if s.dir == DataDir::FromController && s.buf.len() >= SINK_MIN_BYTES {
            debug_assert!(self.large_reads > 0);
            self.large_reads -= 1;
        }
        let c = Completion { cid, tag: s.tag, cqe, fate, buf: std::mem::take(&mut s.buf) };
        s.busy = false;
        s.gen = (s.gen + 1) & CID_GEN_MASK;
        s.dir = DataDir::None;
        self.free.push(i as u16);
        debug_assert!(self.done.len() < self.slots.len(), "more completions than slots");
        self.done.push_back(c);
    }

    // ------------------------------------------------------------ time

    /// Report commands whose timeout passed at `now_ms`: their CIDs are
    /// appended to `expired`, each only once. The commands stay outstanding:
    /// the driver decides (Abort, then reset the controller and
    /// [`fail`](Self::fail) the queue). Returns how many were appended.
    pub fn on_tick(&mut self, now_ms: u64, expired: &mut Vec<u16>) -> usize {
        let before = expired.len();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.busy && s.parked.is_none() && !s.expired_reported && now_ms >= s.deadline_ms {
                s.expired_reported = true;
                expired.push(make_cid(i as u16, s.gen));
            }
        }
        expired.len() - before
    }
}

/// The CID of slot `index` in generation `gen`.
pub(super) fn make_cid(index: u16, gen: u8) -> u16 {
    index | ((gen as u16) << CID_INDEX_BITS)
}
