//! Asymmetric Namespace Access on the I/O path: which ANA groups a queue may
//! not use through its port, cached per queue and refreshed only when the
//! subsystem's ANA change count moves (one relaxed load per command in the
//! common case, where every group is optimized).

use std::sync::atomic::Ordering;

use nvmf_proto::log::ana_state;
use nvmf_proto::status::{path, sct};
use nvmf_proto::Status;

use crate::subsys::{NsTable, Subsystem};

/// Groups not accessible through one port, as of one ANA change count.
#[derive(Debug, Default)]
pub struct AnaCache {
    chgcnt: u64,
    /// (ANA group, state) for groups not accessible through the port; empty
    /// in the common case.
    unusable: Vec<(u32, u8)>,
}

impl AnaCache {
    /// The path status for a command to a namespace of `group` when that
    /// group is not accessible through port `port_id`, else `None`.
    #[inline]
    pub fn refusal(&mut self, sub: &Subsystem, port_id: u16, table: &NsTable, group: u32) -> Option<Status> {
        let chg = sub.ana_chgcnt.load(Ordering::Relaxed);
        if chg != self.chgcnt {
            self.chgcnt = chg;
            self.unusable.clear();
            for n in &table.list {
                let st = sub.ana_state(port_id, n.ana_group);
                let usable = matches!(st, ana_state::OPTIMIZED | ana_state::NON_OPTIMIZED);
                if !usable && !self.unusable.iter().any(|(g, _)| *g == n.ana_group) {
                    self.unusable.push((n.ana_group, st));
                }
            }
        }
        if self.unusable.is_empty() {
            return None;
        }
        let (_, st) = *self.unusable.iter().find(|(g, _)| *g == group)?;
        // No DNR: the host retries on another path.
        Some(Status::new(
            sct::PATH,
            match st {
                ana_state::INACCESSIBLE => path::ANA_INACCESSIBLE,
                ana_state::PERSISTENT_LOSS => path::ANA_PERSISTENT_LOSS,
                _ => path::ANA_TRANSITION,
            },
        ))
    }
}
