//! Sans-IO multipath core: path selection, ANA, and the safe-retry rule.
//!
//! [`Multipath`] owns no sockets and reads no clock. It is told what happens
//! (an I/O was submitted, a path came up or went down, an ANA state changed,
//! an attempt completed, time passed) and answers with [`Action`]s: send this
//! I/O on that path, or complete it to the caller.
//!
//! # The retry rule (why writes wait)
//!
//! An I/O whose path failed before its completion arrived has an unknown
//! fate: the old controller may still hold it (a write's data can sit in a
//! socket buffer or a middlebox and reach the target later). Retrying such a
//! write on another path at once can let the old copy land *after* a newer
//! write to the same blocks, silently reverting it (spdk/spdk#3593,
//! ceph/ceph-nvmeof#193). So:
//!
//! * reads, and commands known not to have been sent or refused with a path
//!   status, are retried at once;
//! * a write (anything that is not a read) of unknown fate is *fenced*: it
//!   waits [`WriteRetry::Fenced`]`::fence_ms` from the moment the host stopped
//!   talking to the failed controller (the driver closes every connection of
//!   that controller before reporting the failure). The fence must cover the
//!   target's keep-alive expiry (the controller, and with it every queue that
//!   could still execute the write, is torn down no later than that) or the
//!   controller's Command Quiesce Time, plus a margin.
//!
//! [`WriteRetry::Immediate`] exists to demonstrate the hazard in tests; it is
//! unsafe and never the default.
//!
//! Every I/O completes to the caller exactly once: completions carry the
//! attempt number, and a completion of an attempt that is not the I/O's
//! current one is counted in [`Counters::stale_completions`] and dropped.
//!
//! Longer than the project's ~800 lines (half of it tests): the host
//! control-plane issue (#14) moves multipath onto controller sessions and
//! splits path selection from the retry rule then.

use std::collections::VecDeque;

use nvmf_proto::log::ana_state;
use nvmf_proto::status::{generic, path, sct};
use nvmf_proto::Status;

/// Default for [`MultipathConfig::queued_ios_max`].
pub const QUEUED_IOS_MAX_DEFAULT: usize = 4096;
/// Default for [`MultipathConfig::queue_timeout_ms`]: the ANA transition time
/// nvmf's target advertises (ANATT 10 s); an I/O waits no longer for a path.
pub const QUEUE_TIMEOUT_DEFAULT_MS: u64 = 10_000;
/// Longest wait for a path an ANATT may ask for (ANATT is one byte of seconds).
pub const QUEUE_TIMEOUT_MAX_MS: u64 = 255_000;
/// Default for [`MultipathConfig::attempts_max`].
pub const ATTEMPTS_MAX_DEFAULT: u32 = 32;
/// Least time added to the target's keep-alive expiry in [`fence_ms_for_kato`]
/// when the controller reports no Command Quiesce Time: the target's timer
/// granularity plus storage operations already submitted.
pub const FENCE_MARGIN_MS: u64 = 1_000;

/// The write fence for a controller connected with `kato_ms` that reports a
/// Command Quiesce Time of `cqt_ms` (Identify Controller bytes 386-387,
/// milliseconds; 0 = not reported).
///
/// The controller learns that the host is gone when its keep-alive timer
/// expires (nvmf's target 1.5 x KATO after the last command, Linux nvmet
/// within 2 x KATO: we assume the latter), then needs up to CQT to quiesce
/// what it was executing (TP 4129): `2 x KATO + max(CQT, margin)`.
pub fn fence_ms_for_kato(kato_ms: u64, cqt_ms: u64) -> u64 {
    assert!(kato_ms > 0, "without keep alive a controller that lost its host may run forever");
    2 * kato_ms + cqt_ms.max(FENCE_MARGIN_MS)
}

/// How I/O is spread over the usable paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoPolicy {
    /// Active-passive: one path carries everything until it fails. With
    /// `failback`, I/O returns to the first listed usable path when it is
    /// usable again; without, it stays where it moved.
    Failover { failback: bool },
    /// Rotate over the usable paths, one I/O each.
    RoundRobin,
    /// The usable path with the fewest outstanding I/Os.
    QueueDepth,
}

impl std::str::FromStr for IoPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<IoPolicy, String> {
        match s {
            "failover" => Ok(IoPolicy::Failover { failback: false }),
            "failover-failback" | "failback" => Ok(IoPolicy::Failover { failback: true }),
            "round-robin" => Ok(IoPolicy::RoundRobin),
            "queue-depth" => Ok(IoPolicy::QueueDepth),
            _ => Err(format!("unknown I/O policy {s:?} (failover, failover-failback, round-robin, queue-depth)")),
        }
    }
}

impl std::fmt::Display for IoPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoPolicy::Failover { failback: false } => "failover",
            IoPolicy::Failover { failback: true } => "failover-failback",
            IoPolicy::RoundRobin => "round-robin",
            IoPolicy::QueueDepth => "queue-depth",
        })
    }
}

/// When a write of unknown fate may be sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteRetry {
    /// After `fence_ms` from the failure (see the module docs). Safe.
    Fenced { fence_ms: u64 },
    /// At once. UNSAFE: a late copy of the old write can overwrite newer
    /// data. Only for tests that show the hazard.
    Immediate,
}

/// Limits and policy of a multipath device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MultipathConfig {
    pub policy: IoPolicy,
    pub write_retry: WriteRetry,
    /// I/Os waiting for a usable path (or for their fence) at most; more are refused.
    pub queued_ios_max: usize,
    /// How long an I/O may wait for a usable path before it fails.
    pub queue_timeout_ms: u64,
    /// Attempts per I/O (path errors, ANA refusals, failovers) before it fails.
    pub attempts_max: u32,
    /// Outstanding I/Os per path (its queue size minus one).
    pub path_depth_max: u32,
}

impl Default for MultipathConfig {
    fn default() -> Self {
        MultipathConfig {
            policy: IoPolicy::Failover { failback: false },
            // The core does not know its controllers' KATO: fence for the
            // crate's default, which is at least as long as the multipath one.
            write_retry: WriteRetry::Fenced {
                fence_ms: fence_ms_for_kato(crate::options::KATO_DEFAULT_S as u64 * 1000, 0),
            },
            queued_ios_max: QUEUED_IOS_MAX_DEFAULT,
            queue_timeout_ms: QUEUE_TIMEOUT_DEFAULT_MS,
            attempts_max: ATTEMPTS_MAX_DEFAULT,
            // The default queue size minus one (a full NVMe queue leaves one entry empty).
            path_depth_max: crate::options::QUEUE_SIZE_DEFAULT as u32 - 1,
        }
    }
}

/// ANA state of the device's namespace as seen through one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnaState {
    Optimized,
    NonOptimized,
    Inaccessible,
    PersistentLoss,
    Change,
}

impl AnaState {
    /// From the ANA log's state byte (unknown values count as inaccessible).
    pub fn from_log(v: u8) -> AnaState {
        match v {
            ana_state::OPTIMIZED => AnaState::Optimized,
            ana_state::NON_OPTIMIZED => AnaState::NonOptimized,
            ana_state::PERSISTENT_LOSS => AnaState::PersistentLoss,
            ana_state::CHANGE => AnaState::Change,
            _ => AnaState::Inaccessible,
        }
    }
    /// The state an ANA status code (SCT 3) reports, if it is one.
    pub fn from_status(s: Status) -> Option<AnaState> {
        if s.sct != sct::PATH {
            return None;
        }
        match s.sc {
            path::ANA_PERSISTENT_LOSS => Some(AnaState::PersistentLoss),
            path::ANA_INACCESSIBLE => Some(AnaState::Inaccessible),
            path::ANA_TRANSITION => Some(AnaState::Change),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            AnaState::Optimized => "optimized",
            AnaState::NonOptimized => "non-optimized",
            AnaState::Inaccessible => "inaccessible",
            AnaState::PersistentLoss => "persistent-loss",
            AnaState::Change => "change",
        }
    }
}

/// Connection state of one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathHealth {
    /// Not connected (yet, or again).
    Down,
    Live,
}

/// Per-path counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathCounters {
    /// Attempts sent on this path.
    pub sent: u64,
    /// I/Os completed to the caller from this path (success or final error).
    pub completed: u64,
    pub read_ios: u64,
    pub write_ios: u64,
    /// Attempts that came back with an unknown fate (path failed under them).
    pub fate_unknown: u64,
    /// Attempts refused with an ANA or other path status.
    pub path_errors: u64,
    /// Times this path went down.
    pub downs: u64,
}

/// Device-wide counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Attempts sent again on a path (any reason).
    pub retries: u64,
    /// Writes that waited for the fence before their retry.
    pub fenced_writes: u64,
    /// Completions of attempts that were no longer current (dropped, never
    /// delivered twice).
    pub stale_completions: u64,
    /// I/Os failed because no path became usable within the queue timeout.
    pub no_path_failures: u64,
    /// Times the path carrying I/O changed (failover or failback).
    pub path_switches: u64,
}

/// One path failure and how long I/O stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailoverRecord {
    pub path: usize,
    /// When the failure was reported to the core.
    pub down_at_ms: u64,
    /// Last successful completion (any path) before that.
    pub last_ok_before_ms: Option<u64>,
    /// First successful completion on another path after it.
    pub resumed_at_ms: Option<u64>,
    pub resumed_on: Option<usize>,
}

impl FailoverRecord {
    /// Failure report to the first success elsewhere.
    pub fn failover_ms(&self) -> Option<u64> {
        Some(self.resumed_at_ms? - self.down_at_ms)
    }
    /// Longest gap between successful completions around the failure.
    pub fn pause_ms(&self) -> Option<u64> {
        Some(self.resumed_at_ms? - self.last_ok_before_ms.unwrap_or(self.down_at_ms))
    }
}

/// [`Multipath::submit`] refused an I/O: `queued_ios_max` already wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// Handle of an I/O inside the core (slot index).
pub type IoId = u32;

/// What the driver must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send attempt `attempt` of I/O `io` on `path`.
    Send { io: IoId, attempt: u32, path: usize },
    /// Deliver I/O `io` (caller's `tag`) to the caller: exactly once.
    Complete { io: IoId, tag: u64, result: IoResult },
}

/// Final result of an I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoResult {
    /// The controller's status (success or a final error).
    Status(Status),
    /// No path became usable within the queue timeout.
    NoPath,
    /// Retried `attempts_max` times.
    TooManyAttempts,
}

/// How an attempt ended, as the driver saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The controller answered with this status.
    Status(Status),
    /// The path refused it before sending (queue failed, not connected).
    NotSent,
    /// Sent, then the path failed before an answer.
    FateUnknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Where {
    /// Waiting in `ready` for a usable path since the given time.
    Queued {
        since_ms: u64,
    },
    /// Waiting for its fence.
    Fenced {
        until_ms: u64,
    },
    OnPath {
        path: usize,
    },
}

#[derive(Debug, Clone, Copy)]
struct IoEntry {
    tag: u64,
    is_write: bool,
    attempt: u32,
    at: Where,
}

#[derive(Debug, Clone, Copy)]
struct PathEntry {
    health: PathHealth,
    ana: AnaState,
    outstanding: u32,
    counters: PathCounters,
    /// Longer fence this path's controller needs (it reports a CQT).
    fence_ms: Option<u64>,
}

/// The multipath state machine. See the [module docs](self).
#[derive(Debug)]
pub struct Multipath {
    cfg: MultipathConfig,
    paths: Vec<PathEntry>,
    ios: Vec<Option<IoEntry>>,
    free: Vec<IoId>,
    /// I/Os waiting for a path, oldest first.
    ready: VecDeque<IoId>,
    fenced: Vec<IoId>,
    actions: VecDeque<Action>,
    /// Path carrying I/O under the failover policy.
    active: Option<usize>,
    rr_next: usize,
    counters: Counters,
    last_ok_ms: Option<u64>,
    failovers: Vec<FailoverRecord>,
}

/// Failover records kept at most (oldest dropped).
pub const FAILOVER_RECORDS_MAX: usize = 1024;

impl Multipath {
    /// `paths` paths, all down until [`path_up`](Self::path_up).
    pub fn new(cfg: MultipathConfig, paths: usize) -> Multipath {
        assert!(paths > 0, "a multipath device needs at least one path");
        assert!(cfg.path_depth_max > 0 && cfg.attempts_max > 0);
        let p = PathEntry {
            health: PathHealth::Down,
            ana: AnaState::Inaccessible,
            outstanding: 0,
            counters: PathCounters::default(),
            fence_ms: None,
        };
        Multipath {
            cfg,
            paths: vec![p; paths],
            ios: Vec::new(),
            free: Vec::new(),
            ready: VecDeque::new(),
            fenced: Vec::new(),
            actions: VecDeque::new(),
            active: None,
            rr_next: 0,
            counters: Counters::default(),
            last_ok_ms: None,
            failovers: Vec::new(),
        }
    }

    pub fn config(&self) -> &MultipathConfig {
        &self.cfg
    }
    pub fn path_count(&self) -> usize {
        self.paths.len()
    }
    pub fn path_health(&self, p: usize) -> PathHealth {
        self.paths[p].health
    }
    pub fn path_ana(&self, p: usize) -> AnaState {
        self.paths[p].ana
    }
    pub fn path_counters(&self, p: usize) -> PathCounters {
        self.paths[p].counters
    }
    pub fn path_outstanding(&self, p: usize) -> u32 {
        self.paths[p].outstanding
    }
    pub fn counters(&self) -> Counters {
        self.counters
    }
    pub fn failovers(&self) -> &[FailoverRecord] {
        &self.failovers
    }
    /// I/Os not yet completed to the caller.
    pub fn pending(&self) -> usize {
        self.ios.len() - self.free.len()
    }
    /// The caller's tag of a pending I/O.
    pub fn tag(&self, io: IoId) -> Option<u64> {
        self.ios.get(io as usize).and_then(|e| e.map(|e| e.tag))
    }
    pub fn next_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }
    /// Earliest time something is due (a fence ends or a queued I/O times out).
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let f = self.fenced.iter().filter_map(|&i| match self.ios[i as usize]?.at {
            Where::Fenced { until_ms } => Some(until_ms),
            _ => None,
        });
        let q = self.ready.iter().filter_map(|&i| match self.ios[i as usize]?.at {
            Where::Queued { since_ms } => Some(since_ms + self.cfg.queue_timeout_ms),
            _ => None,
        });
        f.chain(q).min()
    }

    /// A new I/O from the caller. `is_write`: anything that changes data
    /// (only plain reads are safe to retry at once). Refused when
    /// `queued_ios_max` I/Os already wait.
    pub fn submit(&mut self, tag: u64, is_write: bool, now_ms: u64) -> Result<IoId, QueueFull> {
        if self.ready.len() + self.fenced.len() >= self.cfg.queued_ios_max {
            return Err(QueueFull);
        }
        let e = IoEntry { tag, is_write, attempt: 0, at: Where::Queued { since_ms: now_ms } };
        let id = match self.free.pop() {
            Some(id) => {
                debug_assert!(self.ios[id as usize].is_none());
                self.ios[id as usize] = Some(e);
                id
            }
            None => {
                self.ios.push(Some(e));
                (self.ios.len() - 1) as IoId
            }
        };
        self.ready.push_back(id);
        self.dispatch(now_ms);
        Ok(id)
    }

    /// A path connected (or reconnected) with the namespace in state `ana`.
    pub fn path_up(&mut self, p: usize, ana: AnaState, now_ms: u64) {
        // Attempts sent just before the old session failed may still be
        // outstanding here: the path thread submits them on the new session
        // or refuses them, and reports their outcome either way.
        let e = &mut self.paths[p];
        e.health = PathHealth::Live;
        e.ana = ana;
        self.dispatch(now_ms);
    }

    /// Path `p`'s controller needs writes of unknown fate fenced for at least
    /// `fence_ms` (from its KATO and CQT); only ever lengthens the configured fence.
    pub fn set_path_fence_ms(&mut self, p: usize, fence_ms: u64) {
        self.paths[p].fence_ms = Some(fence_ms);
    }

    /// A controller reports an ANA Transition Time of `anatt_ms`: I/O waiting
    /// for a path may wait that long (only ever lengthens the configured
    /// `queue_timeout_ms`, and at most to [`QUEUE_TIMEOUT_MAX_MS`]).
    pub fn allow_queue_timeout_ms(&mut self, anatt_ms: u64) {
        self.cfg.queue_timeout_ms = self.cfg.queue_timeout_ms.max(anatt_ms.min(QUEUE_TIMEOUT_MAX_MS));
    }

    /// The ANA state seen through path `p` changed (log page read after an AEN).
    pub fn set_ana(&mut self, p: usize, ana: AnaState, now_ms: u64) {
        self.paths[p].ana = ana;
        self.dispatch(now_ms);
    }

    /// Path `p` failed. The driver has already closed every connection of its
    /// controller; attempts still outstanding on it must be reported with
    /// [`Outcome::FateUnknown`] (before or after this call).
    pub fn path_down(&mut self, p: usize, now_ms: u64) {
        let e = &mut self.paths[p];
        if e.health == PathHealth::Down {
            return;
        }
        e.health = PathHealth::Down;
        e.counters.downs += 1;
        if self.failovers.len() == FAILOVER_RECORDS_MAX {
            self.failovers.remove(0);
        }
        self.failovers.push(FailoverRecord {
            path: p,
            down_at_ms: now_ms,
            last_ok_before_ms: self.last_ok_ms,
            resumed_at_ms: None,
            resumed_on: None,
        });
        self.dispatch(now_ms);
    }

    /// Whether attempt `attempt` of `io` is the one in flight on `path`.
    pub fn is_current(&self, io: IoId, attempt: u32, p: usize) -> bool {
        self.ios
            .get(io as usize)
            .copied()
            .flatten()
            .is_some_and(|e| e.attempt == attempt && e.at == Where::OnPath { path: p })
    }

    /// Attempt `attempt` of `io` sent on `path` ended with `outcome`.
    pub fn on_outcome(&mut self, io: IoId, attempt: u32, p: usize, outcome: Outcome, now_ms: u64) {
        let current = self.ios.get(io as usize).copied().flatten();
        let Some(e) = current.filter(|e| e.attempt == attempt && e.at == Where::OnPath { path: p }) else {
            self.counters.stale_completions += 1;
            return;
        };
        let pe = &mut self.paths[p];
        debug_assert!(pe.outstanding > 0);
        pe.outstanding -= 1;
        match outcome {
            Outcome::Status(s) => {
                if let Some(ana) = AnaState::from_status(s) {
                    // The controller refused it without executing: retry now elsewhere.
                    pe.counters.path_errors += 1;
                    pe.ana = ana;
                    self.requeue(io, e, now_ms);
                } else if !s.dnr
                    && ((s.sct == sct::PATH && s.sc != path::ABORTED_BY_HOST)
                        || (s.sct == sct::GENERIC && s.sc == generic::TRANSIENT_TRANSPORT_ERROR))
                {
                    // Other path errors (controller/host pathing) and transient
                    // transport errors (e.g. a data digest mismatch): the
                    // controller reports it did not complete the command.
                    pe.counters.path_errors += 1;
                    self.requeue(io, e, now_ms);
                } else if s.sct == sct::PATH && s.sc == path::ABORTED_BY_HOST {
                    // A host-made status without a known fate: treat as unknown.
                    self.unknown_fate(io, e, p, now_ms);
                } else {
                    pe.counters.completed += 1;
                    if e.is_write {
                        pe.counters.write_ios += 1;
                    } else {
                        pe.counters.read_ios += 1;
                    }
                    if s.is_success() {
                        self.last_ok_ms = Some(now_ms);
                        for f in self.failovers.iter_mut().rev() {
                            if f.resumed_at_ms.is_some() {
                                break;
                            }
                            if f.path != p {
                                f.resumed_at_ms = Some(now_ms);
                                f.resumed_on = Some(p);
                            }
                        }
                    }
                    self.finish(io, e.tag, IoResult::Status(s));
                }
            }
            Outcome::NotSent => self.requeue(io, e, now_ms),
            Outcome::FateUnknown => self.unknown_fate(io, e, p, now_ms),
        }
        self.dispatch(now_ms);
    }

    /// Time passed: fences that ended release their writes, I/Os that waited
    /// too long for a path fail.
    pub fn on_tick(&mut self, now_ms: u64) {
        let mut i = 0;
        while i < self.fenced.len() {
            let id = self.fenced[i];
            let e = self.ios[id as usize].as_mut().expect("fenced I/O is pending");
            match e.at {
                Where::Fenced { until_ms } if now_ms >= until_ms => {
                    e.at = Where::Queued { since_ms: now_ms };
                    self.fenced.swap_remove(i);
                    self.ready.push_back(id);
                }
                _ => i += 1,
            }
        }
        while let Some(&id) = self.ready.front() {
            let e = self.ios[id as usize].expect("queued I/O is pending");
            match e.at {
                Where::Queued { since_ms } if now_ms.saturating_sub(since_ms) >= self.cfg.queue_timeout_ms => {
                    self.ready.pop_front();
                    self.counters.no_path_failures += 1;
                    self.finish(id, e.tag, IoResult::NoPath);
                }
                _ => break,
            }
        }
        self.dispatch(now_ms);
    }

    fn unknown_fate(&mut self, io: IoId, e: IoEntry, p: usize, now_ms: u64) {
        self.paths[p].counters.fate_unknown += 1;
        match (e.is_write, self.cfg.write_retry) {
            (true, WriteRetry::Fenced { fence_ms }) => {
                let fence_ms = fence_ms.max(self.paths[p].fence_ms.unwrap_or(0));
                self.counters.fenced_writes += 1;
                self.ios[io as usize] = Some(IoEntry { at: Where::Fenced { until_ms: now_ms + fence_ms }, ..e });
                self.fenced.push(io);
            }
            _ => self.requeue(io, e, now_ms),
        }
    }

    fn requeue(&mut self, io: IoId, e: IoEntry, now_ms: u64) {
        self.ios[io as usize] = Some(IoEntry { at: Where::Queued { since_ms: now_ms }, ..e });
        // Retries go first: they are the oldest I/Os.
        self.ready.push_front(io);
    }

    fn finish(&mut self, io: IoId, tag: u64, result: IoResult) {
        debug_assert!(self.ios[io as usize].is_some(), "I/O {io} completed twice");
        self.ios[io as usize] = None;
        self.free.push(io);
        self.actions.push_back(Action::Complete { io, tag, result });
    }

    fn usable(&self, p: usize, ana: AnaState) -> bool {
        let e = &self.paths[p];
        e.health == PathHealth::Live && e.ana == ana && e.outstanding < self.cfg.path_depth_max
    }

    /// The ANA tier I/O may use now: optimized paths while any is live, else non-optimized.
    fn tier(&self) -> Option<AnaState> {
        let live = |a| self.paths.iter().any(|e| e.health == PathHealth::Live && e.ana == a);
        if live(AnaState::Optimized) {
            Some(AnaState::Optimized)
        } else if live(AnaState::NonOptimized) {
            Some(AnaState::NonOptimized)
        } else {
            None
        }
    }

    /// The path for the next I/O, or `None` (wait).
    fn select(&mut self) -> Option<usize> {
        let tier = self.tier()?;
        let n = self.paths.len();
        match self.cfg.policy {
            IoPolicy::Failover { failback } => {
                let in_tier = |m: &Self, p: usize| m.paths[p].health == PathHealth::Live && m.paths[p].ana == tier;
                let keep = self.active.filter(|&a| in_tier(self, a));
                let first = (0..n).find(|&p| in_tier(self, p));
                let target = match keep {
                    Some(a) if !failback || first == Some(a) => Some(a),
                    _ => first,
                };
                if target != self.active {
                    if self.active.is_some() {
                        self.counters.path_switches += 1;
                    }
                    self.active = target;
                }
                // The active path alone carries I/O, even when its queue is full.
                target.filter(|&a| self.paths[a].outstanding < self.cfg.path_depth_max)
            }
            IoPolicy::RoundRobin => {
                let p = (0..n).map(|i| (self.rr_next + i) % n).find(|&p| self.usable(p, tier))?;
                self.rr_next = (p + 1) % n;
                Some(p)
            }
            IoPolicy::QueueDepth => {
                (0..n).filter(|&p| self.usable(p, tier)).min_by_key(|&p| (self.paths[p].outstanding, p))
            }
        }
    }

    fn dispatch(&mut self, _now_ms: u64) {
        while let Some(&id) = self.ready.front() {
            let Some(p) = self.select() else { break };
            self.ready.pop_front();
            let e = self.ios[id as usize].as_mut().expect("queued I/O is pending");
            if e.attempt >= self.cfg.attempts_max {
                let tag = e.tag;
                self.finish(id, tag, IoResult::TooManyAttempts);
                continue;
            }
            if e.attempt > 0 {
                self.counters.retries += 1;
            }
            e.attempt += 1;
            e.at = Where::OnPath { path: p };
            let attempt = e.attempt;
            let pe = &mut self.paths[p];
            pe.outstanding += 1;
            pe.counters.sent += 1;
            self.actions.push_back(Action::Send { io: id, attempt, path: p });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Outcome = Outcome::Status(Status::SUCCESS);

    fn cfg(policy: IoPolicy) -> MultipathConfig {
        MultipathConfig {
            policy,
            write_retry: WriteRetry::Fenced { fence_ms: 3_000 },
            queue_timeout_ms: 10_000,
            path_depth_max: 4,
            ..MultipathConfig::default()
        }
    }

    fn two_up(policy: IoPolicy) -> Multipath {
        let mut m = Multipath::new(cfg(policy), 2);
        m.path_up(0, AnaState::Optimized, 0);
        m.path_up(1, AnaState::Optimized, 0);
        m
    }

    fn sends(m: &mut Multipath) -> Vec<(IoId, u32, usize)> {
        let mut v = Vec::new();
        while let Some(a) = m.next_action() {
            match a {
                Action::Send { io, attempt, path } => v.push((io, attempt, path)),
                Action::Complete { .. } => {}
            }
        }
        v
    }

    fn completions(m: &mut Multipath) -> Vec<(u64, IoResult)> {
        let mut v = Vec::new();
        while let Some(a) = m.next_action() {
            if let Action::Complete { tag, result, .. } = a {
                v.push((tag, result));
            }
        }
        v
    }

    #[test]
    fn policies_pick_paths() {
        let mut m = two_up(IoPolicy::RoundRobin);
        for t in 0..4 {
            m.submit(t, false, 0).unwrap();
        }
        let p: Vec<usize> = sends(&mut m).iter().map(|s| s.2).collect();
        assert_eq!(p, vec![0, 1, 0, 1]);

        let mut m = two_up(IoPolicy::Failover { failback: false });
        for t in 0..3 {
            m.submit(t, false, 0).unwrap();
        }
        assert!(sends(&mut m).iter().all(|s| s.2 == 0));

        let mut m = two_up(IoPolicy::QueueDepth);
        m.submit(0, false, 0).unwrap();
        m.submit(1, false, 0).unwrap();
        let s = sends(&mut m);
        assert_eq!((s[0].2, s[1].2), (0, 1));
        m.on_outcome(s[0].0, s[0].1, 0, OK, 1);
        m.submit(2, false, 1).unwrap();
        assert_eq!(sends(&mut m)[0].2, 0, "path 0 has fewer outstanding");
    }

    #[test]
    fn optimized_paths_only_while_one_exists() {
        let mut m = Multipath::new(cfg(IoPolicy::RoundRobin), 3);
        m.path_up(0, AnaState::NonOptimized, 0);
        m.path_up(1, AnaState::Optimized, 0);
        m.path_up(2, AnaState::Inaccessible, 0);
        for t in 0..3 {
            m.submit(t, true, 0).unwrap();
        }
        assert!(sends(&mut m).iter().all(|s| s.2 == 1));
        m.set_ana(1, AnaState::Inaccessible, 1);
        m.submit(9, true, 1).unwrap();
        assert_eq!(sends(&mut m)[0].2, 0, "non-optimized once no optimized path is left");
    }

    #[test]
    fn ana_status_moves_io_at_once_and_updates_state() {
        let mut m = two_up(IoPolicy::Failover { failback: false });
        m.submit(7, true, 0).unwrap();
        let s = sends(&mut m);
        let inacc = Outcome::Status(Status::new(sct::PATH, path::ANA_INACCESSIBLE));
        m.on_outcome(s[0].0, s[0].1, 0, inacc, 5);
        assert_eq!(m.path_ana(0), AnaState::Inaccessible);
        let s2 = sends(&mut m);
        assert_eq!((s2[0].1, s2[0].2), (2, 1), "retried on the other path immediately, even a write");
        m.on_outcome(s2[0].0, s2[0].1, 1, OK, 6);
        assert_eq!(completions(&mut m), vec![(7, IoResult::Status(Status::SUCCESS))]);
        assert_eq!(m.counters().path_switches, 1);
    }

    #[test]
    fn ana_change_queues_until_a_path_is_usable_bounded_by_the_timeout() {
        let mut m = Multipath::new(cfg(IoPolicy::RoundRobin), 1);
        m.path_up(0, AnaState::Change, 0);
        m.submit(1, false, 0).unwrap();
        assert!(sends(&mut m).is_empty(), "no path usable during ANA change");
        m.set_ana(0, AnaState::Optimized, 500);
        assert_eq!(sends(&mut m).len(), 1);
        m.set_ana(0, AnaState::Change, 600);
        m.submit(2, false, 600).unwrap();
        m.on_tick(10_599);
        assert!(m.next_action().is_none());
        m.on_tick(10_600);
        assert_eq!(completions(&mut m), vec![(2, IoResult::NoPath)]);
        assert_eq!(m.counters().no_path_failures, 1);
    }

    #[test]
    fn anatt_lengthens_the_wait_for_a_path() {
        let mut m = Multipath::new(cfg(IoPolicy::RoundRobin), 1);
        m.allow_queue_timeout_ms(5_000);
        assert_eq!(m.config().queue_timeout_ms, 10_000, "never shortened");
        m.allow_queue_timeout_ms(30_000);
        m.path_up(0, AnaState::Change, 0);
        m.submit(1, false, 0).unwrap();
        m.on_tick(29_999);
        assert!(m.next_action().is_none());
        m.on_tick(30_000);
        assert_eq!(completions(&mut m), vec![(1, IoResult::NoPath)]);
        m.allow_queue_timeout_ms(u64::MAX);
        assert_eq!(m.config().queue_timeout_ms, QUEUE_TIMEOUT_MAX_MS);
    }

    #[test]
    fn queue_is_bounded() {
        let mut m = Multipath::new(MultipathConfig { queued_ios_max: 2, ..cfg(IoPolicy::RoundRobin) }, 1);
        m.submit(1, false, 0).unwrap();
        m.submit(2, false, 0).unwrap();
        assert!(m.submit(3, false, 0).is_err());
    }

    #[test]
    fn reads_retry_at_once_writes_wait_for_the_fence() {
        let mut m = two_up(IoPolicy::Failover { failback: false });
        m.submit(1, false, 0).unwrap();
        m.submit(2, true, 0).unwrap();
        let s = sends(&mut m);
        m.path_down(0, 100);
        m.on_outcome(s[0].0, s[0].1, 0, Outcome::FateUnknown, 100);
        m.on_outcome(s[1].0, s[1].1, 0, Outcome::FateUnknown, 100);
        let r = sends(&mut m);
        assert_eq!(r, vec![(s[0].0, 2, 1)], "only the read is retried now");
        assert_eq!(m.next_deadline_ms(), Some(3_100));
        m.on_tick(3_099);
        assert!(sends(&mut m).is_empty(), "the write waits the whole fence");
        m.on_tick(3_100);
        assert_eq!(sends(&mut m), vec![(s[1].0, 2, 1)]);
        assert_eq!(m.counters().fenced_writes, 1);
    }

    #[test]
    fn not_sent_writes_retry_at_once() {
        let mut m = two_up(IoPolicy::Failover { failback: false });
        m.submit(1, true, 0).unwrap();
        let s = sends(&mut m);
        m.path_down(0, 1);
        m.on_outcome(s[0].0, s[0].1, 0, Outcome::NotSent, 1);
        assert_eq!(sends(&mut m), vec![(s[0].0, 2, 1)]);
    }

    #[test]
    fn no_double_completion() {
        let mut m = two_up(IoPolicy::RoundRobin);
        m.submit(1, false, 0).unwrap();
        let s = sends(&mut m);
        m.path_down(0, 1);
        m.on_outcome(s[0].0, s[0].1, 0, Outcome::FateUnknown, 1);
        let r = sends(&mut m);
        m.on_outcome(r[0].0, r[0].1, 1, OK, 2);
        // A late answer of the first attempt (e.g. from a stash) is dropped.
        m.on_outcome(s[0].0, s[0].1, 0, OK, 3);
        m.on_outcome(r[0].0, r[0].1, 1, OK, 3);
        assert_eq!(completions(&mut m).len(), 1);
        assert_eq!(m.counters().stale_completions, 2);
        assert_eq!(m.pending(), 0);
    }

    #[test]
    fn failback_returns_to_the_first_path() {
        for failback in [false, true] {
            let mut m = two_up(IoPolicy::Failover { failback });
            m.path_down(0, 0);
            m.submit(1, false, 1).unwrap();
            assert_eq!(sends(&mut m)[0].2, 1);
            m.path_up(0, AnaState::Optimized, 2);
            m.submit(2, false, 3).unwrap();
            assert_eq!(sends(&mut m)[0].2, if failback { 0 } else { 1 });
        }
    }

    #[test]
    fn attempts_are_bounded() {
        let mut m = Multipath::new(MultipathConfig { attempts_max: 3, ..cfg(IoPolicy::RoundRobin) }, 1);
        m.path_up(0, AnaState::Optimized, 0);
        m.submit(1, false, 0).unwrap();
        for _ in 0..3 {
            let s = sends(&mut m);
            let path_err = Outcome::Status(Status::new(sct::PATH, path::CTRL_PATHING_ERROR));
            m.on_outcome(s[0].0, s[0].1, 0, path_err, 0);
        }
        assert_eq!(completions(&mut m), vec![(1, IoResult::TooManyAttempts)]);
    }

    #[test]
    fn transient_transport_errors_are_retried_unless_dnr() {
        let mut m = two_up(IoPolicy::RoundRobin);
        m.submit(1, false, 0).unwrap();
        let s = sends(&mut m);
        let t = Status::new(sct::GENERIC, generic::TRANSIENT_TRANSPORT_ERROR);
        m.on_outcome(s[0].0, s[0].1, s[0].2, Outcome::Status(t), 0);
        let r = sends(&mut m);
        assert_eq!(r.len(), 1);
        m.on_outcome(r[0].0, r[0].1, r[0].2, Outcome::Status(t.dnr()), 0);
        assert_eq!(completions(&mut m), vec![(1, IoResult::Status(t.dnr()))]);
    }

    #[test]
    fn final_errors_are_not_retried() {
        let mut m = two_up(IoPolicy::RoundRobin);
        m.submit(1, false, 0).unwrap();
        let s = sends(&mut m);
        let lba = Status::new(sct::GENERIC, generic::LBA_OUT_OF_RANGE);
        m.on_outcome(s[0].0, s[0].1, 0, Outcome::Status(lba), 0);
        assert_eq!(completions(&mut m), vec![(1, IoResult::Status(lba))]);
    }

    #[test]
    fn failover_record_measures_the_pause() {
        let mut m = two_up(IoPolicy::Failover { failback: false });
        m.submit(1, false, 0).unwrap();
        let s = sends(&mut m);
        m.on_outcome(s[0].0, s[0].1, 0, OK, 10);
        m.submit(2, false, 20).unwrap();
        let s = sends(&mut m);
        m.path_down(0, 400);
        m.on_outcome(s[0].0, s[0].1, 0, Outcome::FateUnknown, 400);
        let r = sends(&mut m);
        m.on_outcome(r[0].0, r[0].1, 1, OK, 405);
        let f = m.failovers()[0];
        assert_eq!((f.failover_ms(), f.pause_ms(), f.resumed_on), (Some(5), Some(395), Some(1)));
    }

    /// A model of the unsafe case: path A's controller still holds a write
    /// (data stuck in the network) and executes it whenever the data arrives,
    /// until the target tears the controller down at `kill_at_ms`. The late
    /// copy is delivered as late as possible. With an immediate retry the
    /// caller's newer write is overwritten; with the fence it survives.
    fn stale_write_model(write_retry: WriteRetry) -> u8 {
        let kill_at_ms = 100 + 1_500; // failure at 100, KATO 1 s, torn down at 1.5 x KATO
        let mut block = 0u8; // the target's copy of the block
        let mut m = Multipath::new(MultipathConfig { write_retry, ..cfg(IoPolicy::Failover { failback: false }) }, 2);
        m.path_up(0, AnaState::Optimized, 0);
        m.path_up(1, AnaState::Optimized, 0);
        // Write #1 (data 1) goes to path A and gets stuck.
        m.submit(1, true, 0).unwrap();
        let s = sends(&mut m);
        assert_eq!(s[0].2, 0);
        m.path_down(0, 100);
        m.on_outcome(s[0].0, s[0].1, 0, Outcome::FateUnknown, 100);
        let mut now = 100;
        let mut late_copy_pending = true;
        let mut wrote_second = false;
        while now < 10_000 {
            m.on_tick(now);
            while let Some(a) = m.next_action() {
                match a {
                    Action::Send { io, attempt, path } => {
                        assert_eq!(path, 1);
                        block = if m.tag(io) == Some(1) { 1 } else { 2 };
                        m.on_outcome(io, attempt, path, OK, now);
                    }
                    Action::Complete { tag: 1, .. } if !wrote_second => {
                        // The caller saw write #1 done: it writes newer data (2).
                        wrote_second = true;
                        m.submit(2, true, now).unwrap();
                    }
                    Action::Complete { .. } => {}
                }
            }
            // The stuck copy lands just before the old controller dies.
            if late_copy_pending && now + 1 == kill_at_ms {
                late_copy_pending = false;
                block = 1;
            }
            now += 1;
        }
        assert!(wrote_second && m.pending() == 0);
        block
    }

    #[test]
    fn immediate_write_retry_loses_the_newer_write_fenced_does_not() {
        assert_eq!(stale_write_model(WriteRetry::Immediate), 1, "the model must expose the hazard");
        assert_eq!(stale_write_model(WriteRetry::Fenced { fence_ms: fence_ms_for_kato(1_000, 0) }), 2);
    }

    #[test]
    fn a_path_reporting_cqt_lengthens_its_fence() {
        let mut m = two_up(IoPolicy::Failover { failback: false });
        m.set_path_fence_ms(0, 7_000);
        m.submit(1, true, 0).unwrap();
        let s = sends(&mut m);
        m.path_down(0, 0);
        m.on_outcome(s[0].0, s[0].1, 0, Outcome::FateUnknown, 0);
        m.on_tick(3_000);
        assert!(sends(&mut m).is_empty(), "the configured 3 s fence is not enough for this path");
        m.on_tick(7_000);
        assert_eq!(sends(&mut m).len(), 1);
    }

    #[test]
    fn fence_covers_keep_alive_and_cqt() {
        assert_eq!(fence_ms_for_kato(5_000, 0), 11_000);
        assert_eq!(fence_ms_for_kato(5_000, 2_500), 12_500);
        assert_eq!(fence_ms_for_kato(2_000, 100), 5_000);
        assert!(std::panic::catch_unwind(|| fence_ms_for_kato(0, 2_000)).is_err());
    }
}
