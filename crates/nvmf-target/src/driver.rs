//! The control half of a driver: executes a queue's control-plane
//! [`Action`]s against the registry. The engine glue ([`crate::server`]) and
//! the in-memory test harnesses share it, so tests exercise the same effects
//! production runs; storage actions are the driver's own business (io_uring
//! in production, plain system calls or a recording in tests).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::action::Action;
use crate::ctrl::QueueWaker;
use crate::fabrics;
use crate::subsys::Target;
use crate::tcp::Queue;

/// What the driver must do besides what [`apply_control`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ControlOutcome {
    /// The queue passed its probation (Connect succeeded).
    pub established: bool,
}

/// Execute one control action for `q` (`waker` wakes `q` on its core).
/// Storage actions are not control actions: the caller handles them.
pub fn apply_control(
    target: &Target,
    q: &mut Queue,
    action: Action,
    waker: &dyn Fn() -> Arc<dyn QueueWaker>,
    now_us: u64,
    out: &mut Vec<u8>,
) -> ControlOutcome {
    let mut outcome = ControlOutcome::default();
    match action {
        Action::Storage(_) => unreachable!("storage actions are executed by the driver"),
        Action::Connect(req) => {
            let result = fabrics::connect(target, &req.port, req.tls_identity.as_deref(), &req.sqe, &req.data);
            q.on_connected(result, now_us, out);
        }
        Action::Bound { ctrl, qid, counters } => {
            ctrl.add_peer(qid, q.peer());
            if let Some(c) = counters {
                ctrl.register_counters(c);
            }
            ctrl.set_waker(qid, waker());
        }
        Action::Established => outcome.established = true,
        Action::Release { ctrl, qid, counters } => {
            ctrl.clear_waker(qid);
            ctrl.remove_peer(qid);
            if qid == 0 {
                ctrl.mark_dead();
                target.release_controller(&ctrl);
            } else {
                ctrl.release_qid(qid);
                if let Some(c) = counters {
                    ctrl.unregister_counters(&c);
                }
            }
        }
        Action::SetState { ctrl, state } => ctrl.set_state(state),
        Action::Expire { ctrl } => {
            ctrl.kill("keep-alive timeout");
            target.keep_alive_expiries.fetch_add(1, Ordering::Relaxed);
            target.release_controller(&ctrl);
        }
    }
    outcome
}
