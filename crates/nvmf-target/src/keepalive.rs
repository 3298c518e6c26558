//! Every timeout of a queue: nothing a peer can start is held forever.
//!
//! | state the peer left the connection in | bound |
//! | --- | --- |
//! | before ICReq, or before Connect | `connect_timeout_ms` from accept |
//! | within a started PDU, whatever KATO says | `pdu_timeout_ms` from the PDU's first byte |
//! | a command waiting for its R2T data | `data_timeout_ms` from the R2T |
//! | a controller whose host set KATO > 0 | KATO × 1.5 without a command on the admin queue |
//! | a controller whose host set KATO 0 | `kato_default_ms` without a command on any of its queues |
//!
//! The queue reports the earliest of its deadlines ([`Queue::next_deadline_us`],
//! as quinn-proto's `poll_timeout`); the driver calls [`Queue::on_timeout`]
//! once the clock reaches it. A connection that misses the first four bounds
//! is closed; a controller that misses keep-alive is torn down with all its
//! queues ([`Action::Expire`]).

use std::sync::atomic::Ordering;

use crate::action::Action;
use crate::tcp::{Phase, Queue, QueueFlow};

/// Which deadline is earliest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    Connect,
    Pdu,
    Data,
    KeepAlive { kato_us: u64, zero: bool },
}

impl Queue {
    fn deadlines(&self) -> Option<(u64, Due)> {
        if self.phase == Phase::Closing {
            return None;
        }
        let mut best: Option<(u64, Due)> = None;
        let mut consider = |at: u64, why: Due| {
            if best.is_none_or(|(b, _)| at < b) {
                best = Some((at, why));
            }
        };
        // Connect, and authentication when the host must authenticate.
        if (self.conn.is_none() && self.connecting.is_none()) || self.auth_pending() {
            consider(self.created_us + self.limits.connect_timeout_us, Due::Connect);
        }
        if let Some(t) = self.pdu_started_us {
            consider(t + self.limits.pdu_timeout_us, Due::Pdu);
        }
        if let Some(t) = self.slots.oldest_r2t_us() {
            consider(t + self.limits.data_timeout_us, Due::Data);
        }
        if let Some(c) = self.conn.as_ref() {
            if let Some(a) = c.admin.as_ref() {
                let kato_us = c.ctrl.kato_ms.load(Ordering::Relaxed) as u64 * 1000;
                if kato_us > 0 {
                    // Hosts send Keep Alive every KATO/2; allow KATO plus half again.
                    consider(a.last_traffic_us + kato_us + kato_us / 2, Due::KeepAlive { kato_us, zero: false });
                } else {
                    let kato_us = self.limits.kato_zero_us;
                    consider(a.last_traffic_us + kato_us, Due::KeepAlive { kato_us, zero: true });
                }
            }
        }
        best
    }

    /// When [`Queue::on_timeout`] must run next (µs, the clock of `now_us`);
    /// `None`: nothing is pending.
    pub fn next_deadline_us(&self) -> Option<u64> {
        self.deadlines().map(|(at, _)| at)
    }

    /// The clock reached (or passed) [`Queue::next_deadline_us`].
    pub fn on_timeout(&mut self, now_us: u64, _out: &mut Vec<u8>) -> QueueFlow {
        self.now_us = now_us;
        loop {
            let Some((at, why)) = self.deadlines() else { return self.flow() };
            if at > now_us {
                return self.flow();
            }
            match why {
                Due::Connect => {
                    crate::peer_warn!(
                        now_us,
                        "no ICReq, Connect and authentication from {} within {} ms; closing",
                        self.peer,
                        self.limits.connect_timeout_us / 1000
                    );
                    return self.close_now();
                }
                Due::Pdu => {
                    crate::peer_warn!(
                        now_us,
                        "a PDU from {} took longer than {} ms; closing",
                        self.peer,
                        self.limits.pdu_timeout_us / 1000
                    );
                    return self.close_now();
                }
                Due::Data => {
                    crate::peer_warn!(
                        now_us,
                        "the data of an R2T to {} did not arrive within {} ms; closing",
                        self.peer,
                        self.limits.data_timeout_us / 1000
                    );
                    return self.close_now();
                }
                Due::KeepAlive { kato_us, zero } => {
                    let c = self.conn.as_mut().expect("keep-alive of a bound queue");
                    let a = c.admin.as_mut().expect("keep-alive of an admin queue");
                    if zero {
                        // KATO 0: I/O on the controller's other queues is life too.
                        let (r, w, _, _) = c.ctrl.io_totals();
                        if r + w != a.io_commands_seen {
                            a.io_commands_seen = r + w;
                            a.last_traffic_us = now_us;
                            continue;
                        }
                    }
                    tracing::warn!(
                        "ctrl {}: keep-alive timeout ({} ms without traffic, {} {} ms); tearing down",
                        c.ctrl.cntlid,
                        now_us.saturating_sub(a.last_traffic_us) / 1000,
                        if zero { "KATO 0, idle limit" } else { "KATO" },
                        kato_us / 1000
                    );
                    let ctrl = c.ctrl.clone();
                    self.actions.push(Action::Expire { ctrl });
                    return self.close_now();
                }
            }
        }
    }

    fn close_now(&mut self) -> QueueFlow {
        self.phase = Phase::Closing;
        self.h2c = None;
        QueueFlow::CloseNow
    }
}
