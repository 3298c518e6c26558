//! Discovery: read a discovery controller's log page.

use std::net::ToSocketAddrs;

use nvmf_proto::log::{self, DiscoveryLogHeader, DISC_LOG_ENTRY_LEN, DISC_LOG_HDR_LEN};
use nvmf_proto::opcodes::lid;
use nvmf_proto::DISCOVERY_NQN;

pub use nvmf_proto::log::DiscoveryEntry;

use crate::controller::Controller;
use crate::error::{Error, Result};
use crate::options::ConnectOptions;

/// How many times the log is re-read when its generation counter moves
/// under us before giving up.
pub const DISCOVERY_RETRIES_MAX: u32 = 10;
/// Most records read (bounds the allocation: 1 KiB each).
pub const DISCOVERY_RECORDS_MAX: u64 = 4096;

/// A whole discovery log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryLog {
    pub genctr: u64,
    pub entries: Vec<DiscoveryEntry>,
}

/// Connect to the discovery controller at `addr` (NQN
/// `nqn.2014-08.org.nvmexpress.discovery` unless `opts.subnqn` names
/// another discovery subsystem), read the log (header first, then the whole
/// page, again while the generation counter changes, at most
/// [`DISCOVERY_RETRIES_MAX`] times), and disconnect.
///
/// ```no_run
/// # fn main() -> Result<(), nvmf_host::Error> {
/// let log = nvmf_host::discover("127.0.0.1:8009", nvmf_host::ConnectOptions::default())?;
/// for e in &log.entries {
///     println!("{} at {}:{}", e.subnqn, e.traddr, e.trsvcid);
/// }
/// # Ok(())
/// # }
/// ```
pub fn discover(addr: impl ToSocketAddrs, mut opts: ConnectOptions) -> Result<DiscoveryLog> {
    if opts.subnqn.is_empty() {
        opts.subnqn = DISCOVERY_NQN.to_string();
    }
    // A one-shot discovery needs no keep alive and no reconnects (as nvme-cli).
    opts.kato_s = 0;
    opts.ctrl_loss_tmo_s = 0;
    let mut ctrl = Controller::connect(addr, opts)?;
    let r = read_discovery_log(&mut ctrl);
    let _ = ctrl.disconnect();
    r
}

/// Read the discovery log of a connected discovery controller.
pub fn read_discovery_log(ctrl: &mut Controller) -> Result<DiscoveryLog> {
    for _ in 0..DISCOVERY_RETRIES_MAX {
        let h = header(ctrl)?;
        let numrec = h.numrec.min(DISCOVERY_RECORDS_MAX);
        let len = DISC_LOG_HDR_LEN as u64 + numrec * DISC_LOG_ENTRY_LEN as u64;
        let page = ctrl.get_log_page(lid::DISCOVERY, 0, 0, 0, len, false)?;
        let again =
            log::parse_discovery_header(&page).ok_or_else(|| Error::Controller("short discovery log".into()))?;
        if again.genctr != h.genctr {
            continue; // changed while we read: start over
        }
        let entries = log::parse_discovery_entries(&page, again.numrec.min(numrec));
        return Ok(DiscoveryLog { genctr: again.genctr, entries });
    }
    Err(Error::Controller(format!("discovery log kept changing ({DISCOVERY_RETRIES_MAX} reads)")))
}

fn header(ctrl: &mut Controller) -> Result<DiscoveryLogHeader> {
    let b = ctrl.get_log_page(lid::DISCOVERY, 0, 0, 0, DISC_LOG_HDR_LEN as u64, false)?;
    log::parse_discovery_header(&b).ok_or_else(|| Error::Controller("short discovery log header".into()))
}
