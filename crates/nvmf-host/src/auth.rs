//! In-band authentication (DH-HMAC-CHAP) of one host queue, over the
//! Fabrics Authentication Send / Receive commands, sans-IO.
//!
//! [`QueueAuth`] turns the steps of [`nvmf_proto::auth::HostAuth`] into
//! [`Request`]s submitted on a [`HostQueue`] and takes their [`Completion`]s
//! back, so every driver runs the same exchange: the blocking
//! [`QueueConn`](crate::QueueConn) ([`QueueConn::authenticate`](crate::QueueConn::authenticate),
//! used by [`Controller`](crate::Controller) for its admin and I/O queues, by
//! discovery and by the multipath device), `nvmf perf`'s admin queue and its
//! engine-driven I/O queues.
//!
//! # Facts (Linux `drivers/nvme/host/auth.c`, `fabrics.c`, `include/linux/nvme.h`)
//!
//! - Connect response DW0: bits 15:0 CNTLID, bit 17 ATR (authentication
//!   transaction required), bit 18 ASCR (authentication and secure channel
//!   concatenation required). The admin queue and every I/O queue answer
//!   their own Connect and authenticate on their own, each transaction with
//!   its own T_ID (Linux counts per controller).
//! - AUTH_Send (FCTYPE 0x05) and AUTH_Receive (FCTYPE 0x06): SQE byte 40
//!   reserved, 41 SPSP0, 42 SPSP1, 43 SECP, so CDW10 = SECP << 24 |
//!   SPSP1 << 16 | SPSP0 << 8; CDW11 is TL (Send, the message length) or AL
//!   (Receive). Linux receives with AL = 4096 (CHAP_BUF_SIZE), enough for
//!   an ffdhe8192 message; so do we ([`AUTH_RECEIVE_LEN_BYTES`]).
//! - Order: Send Negotiate, Receive Challenge, Send Reply, Receive Success1,
//!   then Send Success2 when the host asked the controller to authenticate
//!   itself. One command at a time: NVMe does not order commands of a queue.
//! - A failure the controller saw comes back as AUTH_Failure1 in the next
//!   Receive (the commands themselves succeed); Linux then sends nothing. A
//!   failure the host sees is reported with AUTH_Failure2 (Send), then the
//!   queue is given up.
//!
//! # Our choices
//!
//! - ATR set and no host secret: error (Linux: `-ENOKEY`). ASCR without
//!   `concat`: error (as Linux); with `concat` the admin queue authenticates
//!   whatever the Connect response says.
//! - Secure channel concatenation ([`ConnectOptions::concat`](crate::ConnectOptions::concat),
//!   Linux 6.15): the admin queue's Negotiate carries SC_C NEWTLSPSK (plain
//!   queue) or REPLACETLSPSK (queue over TLS); after Success the exchange
//!   yields the generated TLS PSK and its `NVMe1G…` identity
//!   ([`QueueAuth::take_generated_psk`]). The null DH group or a SHA-512 hash
//!   leave none: the exchange fails ([`AuthFailure::Concat`]).
//! - ATR clear and a host secret only: no authentication (as Linux).
//! - ATR clear and a controller secret: we authenticate anyway. The user
//!   asked that the controller prove its key; a controller that does not ask
//!   for authentication must not get past that check by staying silent
//!   (Linux skips it).
//! - The whole exchange is bounded by one deadline, the queue's command
//!   timeout from [`QueueAuth::start`]: every command gets what is left of it
//!   as its own timeout, so the queue's `on_tick` ends a stuck exchange.

use std::fmt;

use nvmf_proto::auth::messages::SC_C_NONE;
use nvmf_proto::auth::tls_psk::{self, DerivedPsk};
use nvmf_proto::auth::{
    Authenticated, DhGroup, DhchapKey, FailureReason, HashId, HostAuth, HostConfig, HostStep, AUTH_MESSAGE_LEN_MAX,
    SECP_DHCHAP, SPSP0_DHCHAP, SPSP1_DHCHAP,
};
use nvmf_proto::opcodes::{admin, fctype};
use nvmf_proto::{Sqe, Status};

use crate::queue::{Completion, Fate, HostQueue, Request};

/// Connect response DW0 bit 17 (ATR): the controller requires authentication.
/// One definition, in proto; re-exported under the spec's short name.
pub use nvmf_proto::fabrics::CONNECT_DW0_AUTH_REQUIRED as CONNECT_DW0_ATR;
/// Connect response DW0 bit 18 (ASCR): authentication and secure channel
/// concatenation (TLS) required.
pub use nvmf_proto::fabrics::CONNECT_DW0_SECURE_CONCAT_REQUIRED as CONNECT_DW0_ASCR;
/// AL of every AUTH_Receive (Linux CHAP_BUF_SIZE).
pub const AUTH_RECEIVE_LEN_BYTES: u32 = AUTH_MESSAGE_LEN_MAX as u32;
/// Tag of the authentication commands, so a driver tells their completions
/// from its own (other tags of the crate: 0 and small numbers for I/O,
/// `u64::MAX` and `u64::MAX - 1` for internal admin commands).
pub const AUTH_TAG: u64 = u64::MAX - 2;

/// The AUTH_Send SQE for a message of `len` bytes.
pub fn auth_send_sqe(len: u32) -> Sqe {
    let mut sqe = Sqe::new(admin::FABRICS, 0, fctype::AUTH_SEND as u32);
    sqe.cdw10 = auth_cdw10();
    sqe.cdw11 = len;
    sqe
}

/// The AUTH_Receive SQE with allocation length `len`.
pub fn auth_receive_sqe(len: u32) -> Sqe {
    let mut sqe = Sqe::new(admin::FABRICS, 0, fctype::AUTH_RECV as u32);
    sqe.cdw10 = auth_cdw10();
    sqe.cdw11 = len;
    sqe
}

fn auth_cdw10() -> u32 {
    (SECP_DHCHAP as u32) << 24 | (SPSP1_DHCHAP as u32) << 16 | (SPSP0_DHCHAP as u32) << 8
}

/// Whether a queue must authenticate after a Connect answered with
/// `connect_dw0`, given the host's secrets (see the module docs).
pub fn auth_required(
    qid: u16,
    connect_dw0: u32,
    host_key: Option<&DhchapKey>,
    ctrl_key: Option<&DhchapKey>,
) -> Result<bool, AuthFailure> {
    if connect_dw0 & CONNECT_DW0_ASCR != 0 {
        return Err(AuthFailure::ConcatRequired { qid });
    }
    let atr = connect_dw0 & CONNECT_DW0_ATR != 0;
    match (atr, host_key, ctrl_key) {
        (true, None, _) => Err(AuthFailure::KeyRequired { qid }),
        (_, None, Some(_)) => Err(AuthFailure::CtrlKeyWithoutHostKey { qid }),
        (true, Some(_), _) | (false, Some(_), Some(_)) => Ok(true),
        (false, _, None) => Ok(false),
    }
}

/// The protocol configuration of one queue's transaction.
pub fn host_config(
    host_nqn: &str,
    subsys_nqn: &str,
    host_key: &DhchapKey,
    ctrl_key: Option<&DhchapKey>,
    transaction_id: u16,
) -> HostConfig {
    let mut config = HostConfig::new(host_nqn, subsys_nqn, host_key.clone());
    config.ctrl_key = ctrl_key.cloned();
    config.transaction_id = transaction_id;
    config
}

/// What a successful exchange established (no key material).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthSummary {
    pub qid: u16,
    pub hash: HashId,
    pub dh_group: DhGroup,
    /// The controller proved its key too.
    pub bidirectional: bool,
}

impl fmt::Display for AuthSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = if self.bidirectional { "bidirectional" } else { "host only" };
        write!(f, "qid {}: authenticated with hash {} dhgroup {} ({dir})", self.qid, self.hash, self.dh_group)
    }
}

/// The exchange step a command belonged to, for errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthCommand {
    Send,
    Receive,
}

impl fmt::Display for AuthCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthCommand::Send => "Authentication Send",
            AuthCommand::Receive => "Authentication Receive",
        })
    }
}

/// Why a queue could not authenticate. The text names no key material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// ATR set but no host secret configured.
    #[error(
        "qid {qid}: the controller requires DH-HMAC-CHAP authentication and no host secret (dhchap_secret) is set"
    )]
    KeyRequired { qid: u16 },
    /// A controller secret without a host secret.
    #[error("qid {qid}: a controller secret (dhchap_ctrl_secret) needs a host secret (dhchap_secret) too")]
    CtrlKeyWithoutHostKey { qid: u16 },
    /// ASCR set: secure channel concatenation (TLS) is not supported.
    #[error("qid {qid}: the controller requires secure channel concatenation (TLS), which is not supported")]
    ConcatRequired { qid: u16 },
    /// The controller ended the transaction with AUTH_Failure1.
    #[error("qid {qid}: the controller refused: {reason}{}", controller_hint(*reason))]
    RejectedByController { qid: u16, reason: FailureReason },
    /// The host ended the transaction (AUTH_Failure2 sent).
    #[error("qid {qid}: the host refused the controller: {reason}{}", host_hint(*reason))]
    RejectedByHost { qid: u16, reason: FailureReason },
    /// An authentication command completed with an error status.
    #[error("qid {qid}: {command} failed: NVMe status {status}")]
    Status { qid: u16, command: AuthCommand, status: Status },
    /// The queue failed (connection lost, refused submit) during the exchange.
    // Linux nvmet closes the connection on a wrong host response instead of
    // sending Failure1 first, so name the likely cause.
    #[error(
        "qid {qid}: the controller closed the connection during the exchange (wrong host secret for this host NQN?)"
    )]
    Transport { qid: u16 },
    /// The exchange did not end within its deadline.
    #[error("qid {qid}: no answer within {timeout_ms} ms")]
    Timeout { qid: u16, timeout_ms: u64 },
    /// Secure channel concatenation cannot go on.
    #[error("qid {qid}: {why}")]
    Concat { qid: u16, why: &'static str },
}

/// Why a concatenation gave no TLS PSK when the controller chose the null group.
pub const CONCAT_NEEDS_DH_GROUP: &str =
    "secure channel concatenation needs a DH group (the controller chose the null group: set a dhchap_dhgroup \
     other than null for this host)";

fn controller_hint(reason: FailureReason) -> &'static str {
    match reason {
        FailureReason::Failed => " (wrong host secret for this host NQN, or the controller has no secret for it?)",
        _ => "",
    }
}

fn host_hint(reason: FailureReason) -> &'static str {
    match reason {
        FailureReason::Failed => " (the controller's response did not verify: wrong controller secret?)",
        _ => "",
    }
}

/// Where an exchange stands after a call.
#[derive(Debug)]
pub enum AuthProgress {
    /// A command is outstanding: pass its completion (tag [`AUTH_TAG`]) to
    /// [`QueueAuth::on_completion`].
    Pending,
    Done(AuthSummary),
    Failed(AuthFailure),
}

/// What to report once the Send in flight completes.
#[derive(Debug)]
enum AfterSend {
    /// Receive the controller's next message.
    Receive,
    /// Success2 sent: done.
    Succeed(AuthSummary),
    /// Failure2 sent: report this.
    Fail(AuthFailure),
}

#[derive(Debug)]
enum State {
    Idle,
    Sending(AfterSend),
    Receiving,
    Finished,
}

/// One queue's DH-HMAC-CHAP exchange over a [`HostQueue`]. See the module docs.
pub struct QueueAuth {
    qid: u16,
    auth: HostAuth,
    state: State,
    timeout_ms: u64,
    deadline_ms: u64,
    /// CID of the command in flight.
    cid: Option<u16>,
    /// The generated TLS PSK of a secure channel concatenation that succeeded.
    generated: Option<DerivedPsk>,
}

impl fmt::Debug for QueueAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueAuth").field("qid", &self.qid).field("state", &self.state).finish_non_exhaustive()
    }
}

impl QueueAuth {
    /// An exchange for queue `qid`, bounded by `timeout_ms` from
    /// [`start`](Self::start) (0: the queue's command timeout).
    pub fn new(qid: u16, config: HostConfig, timeout_ms: u64) -> QueueAuth {
        QueueAuth::with_auth(qid, HostAuth::new(config), timeout_ms)
    }

    /// With a prepared state machine (injected randomness in tests).
    pub fn with_auth(qid: u16, auth: HostAuth, timeout_ms: u64) -> QueueAuth {
        QueueAuth { qid, auth, state: State::Idle, timeout_ms, deadline_ms: u64::MAX, cid: None, generated: None }
    }

    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// The generated TLS PSK and identity, once a secure channel
    /// concatenation succeeded (taken once).
    pub fn take_generated_psk(&mut self) -> Option<DerivedPsk> {
        self.generated.take()
    }

    /// The generated PSK of a concatenation (`Ok(None)` without one).
    fn derive_generated(&self, outcome: &Authenticated) -> Result<Option<DerivedPsk>, AuthFailure> {
        let config = self.auth.config();
        if config.sc_c == SC_C_NONE {
            return Ok(None);
        }
        let concat = |why| AuthFailure::Concat { qid: self.qid, why };
        let generated = outcome.generated_psk().ok_or(concat(CONCAT_NEEDS_DH_GROUP))?;
        tls_psk::derive_generated(outcome.hash, &generated, &config.host_nqn, &config.subsys_nqn)
            .map(Some)
            .map_err(|_| concat("secure channel concatenation cannot use the SHA-512 hash (no TLS suite)"))
    }

    /// CID of the authentication command in flight, if any.
    pub fn outstanding_cid(&self) -> Option<u16> {
        self.cid
    }

    /// The exchange's deadline (queue milliseconds), once started.
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    /// Submit the Negotiate. The queue must be connected and idle.
    pub fn start(&mut self, queue: &mut HostQueue, now_ms: u64) -> AuthProgress {
        let timeout_ms = if self.timeout_ms == 0 { queue.config().command_timeout_ms } else { self.timeout_ms };
        self.timeout_ms = timeout_ms;
        self.deadline_ms = if timeout_ms == 0 { u64::MAX } else { now_ms.saturating_add(timeout_ms) };
        let negotiate = self.auth.start();
        self.send(queue, negotiate, AfterSend::Receive, now_ms)
    }

    /// Feed the completion of the command in flight (tag [`AUTH_TAG`]).
    pub fn on_completion(&mut self, queue: &mut HostQueue, c: Completion, now_ms: u64) -> AuthProgress {
        if self.cid != Some(c.cid) || c.tag != AUTH_TAG {
            debug_assert!(false, "completion of another command fed to QueueAuth");
            return AuthProgress::Pending;
        }
        self.cid = None;
        let (command, after) = match std::mem::replace(&mut self.state, State::Finished) {
            // The Failure2 went out (or not): the failure before it is the story.
            State::Sending(AfterSend::Fail(first)) => return self.finish_failed(first),
            State::Sending(after) => (AuthCommand::Send, Some(after)),
            State::Receiving => (AuthCommand::Receive, None),
            State::Idle | State::Finished => {
                debug_assert!(false, "authentication completion while no command is in flight");
                return AuthProgress::Pending;
            }
        };
        if c.fate == Fate::Unknown {
            let failure = if now_ms >= self.deadline_ms {
                AuthFailure::Timeout { qid: self.qid, timeout_ms: self.timeout_ms }
            } else {
                AuthFailure::Transport { qid: self.qid }
            };
            return self.finish_failed(failure);
        }
        if !c.cqe.status.is_success() {
            return self.finish_failed(AuthFailure::Status { qid: self.qid, command, status: c.cqe.status });
        }
        match after {
            Some(AfterSend::Receive) => self.receive(queue, now_ms),
            Some(AfterSend::Succeed(summary)) => AuthProgress::Done(summary),
            Some(AfterSend::Fail(_)) => unreachable!("returned above"),
            None => self.on_message(queue, &c.buf, now_ms),
        }
    }

    fn on_message(&mut self, queue: &mut HostQueue, message: &[u8], now_ms: u64) -> AuthProgress {
        match self.auth.on_message(message) {
            HostStep::Send(reply) => self.send(queue, reply, AfterSend::Receive, now_ms),
            HostStep::Done { send, outcome } => {
                match self.derive_generated(&outcome) {
                    Ok(generated) => self.generated = generated,
                    Err(failure) => return self.finish_failed(failure),
                }
                let summary = AuthSummary {
                    qid: self.qid,
                    hash: outcome.hash,
                    dh_group: outcome.dh_group,
                    bidirectional: outcome.bidirectional,
                };
                match send {
                    Some(success2) => self.send(queue, success2, AfterSend::Succeed(summary), now_ms),
                    None => {
                        self.state = State::Finished;
                        AuthProgress::Done(summary)
                    }
                }
            }
            HostStep::Failed { send: None, reason } => {
                self.finish_failed(AuthFailure::RejectedByController { qid: self.qid, reason })
            }
            HostStep::Failed { send: Some(failure2), reason } => {
                let failure = if self.auth.concat_without_dh() {
                    AuthFailure::Concat { qid: self.qid, why: CONCAT_NEEDS_DH_GROUP }
                } else {
                    AuthFailure::RejectedByHost { qid: self.qid, reason }
                };
                self.send(queue, failure2, AfterSend::Fail(failure), now_ms)
            }
        }
    }

    fn send(&mut self, queue: &mut HostQueue, message: Vec<u8>, after: AfterSend, now_ms: u64) -> AuthProgress {
        let sqe = auth_send_sqe(message.len() as u32);
        let req = Request::write(sqe, message);
        match self.submit(queue, req, now_ms) {
            Ok(()) => {
                self.state = State::Sending(after);
                AuthProgress::Pending
            }
            Err(failure) => match after {
                AfterSend::Fail(first) => self.finish_failed(first),
                _ => self.finish_failed(failure),
            },
        }
    }

    fn receive(&mut self, queue: &mut HostQueue, now_ms: u64) -> AuthProgress {
        let req = Request::read(auth_receive_sqe(AUTH_RECEIVE_LEN_BYTES), vec![0; AUTH_RECEIVE_LEN_BYTES as usize]);
        match self.submit(queue, req, now_ms) {
            Ok(()) => {
                self.state = State::Receiving;
                AuthProgress::Pending
            }
            Err(failure) => self.finish_failed(failure),
        }
    }

    fn submit(&mut self, queue: &mut HostQueue, req: Request, now_ms: u64) -> Result<(), AuthFailure> {
        if now_ms >= self.deadline_ms {
            return Err(AuthFailure::Timeout { qid: self.qid, timeout_ms: self.timeout_ms });
        }
        // What is left of the exchange's deadline (never 0, which means "no timeout").
        let left_ms = if self.deadline_ms == u64::MAX { 0 } else { (self.deadline_ms - now_ms).max(1) };
        let req = req.with_tag(AUTH_TAG).with_timeout_ms(left_ms);
        match queue.submit(req, now_ms) {
            Ok(cid) => {
                self.cid = Some(cid);
                Ok(())
            }
            Err(_) => Err(AuthFailure::Transport { qid: self.qid }),
        }
    }

    fn finish_failed(&mut self, failure: AuthFailure) -> AuthProgress {
        self.state = State::Finished;
        self.cid = None;
        AuthProgress::Failed(failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvmf_proto::auth::{CtrlAuth, CtrlConfig};
    use nvmf_proto::pdu::{self, IcResp, TxConfig};
    use nvmf_proto::{Cqe, Decoded, FrameConfig, Pdu, Role};

    use crate::queue::QueueConfig;

    const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-00000000abcd";
    const SUBNQN: &str = "nqn.2026-11.io.nvmf:auth-unit";

    fn key(hash: Option<HashId>, byte: u8, len: usize) -> DhchapKey {
        DhchapKey::from_secret(hash, &vec![byte; len]).unwrap()
    }

    fn ready_queue() -> HostQueue {
        let mut q = HostQueue::new(QueueConfig::admin());
        q.clear_output();
        let mut ic = Vec::new();
        pdu::encode_ic_resp(&mut ic, &IcResp { pfv: 0, cpda: 0, dgst: 0, maxh2cdata: 8192 });
        assert_eq!(q.receive(&ic).unwrap(), ic.len());
        assert!(q.is_ready());
        q
    }

    /// Plays the controller for every command the queue sent: AUTH_Send
    /// payloads go to `ctrl`, AUTH_Receive gets `ctrl.receive()` padded to AL.
    fn answer(q: &mut HostQueue, ctrl: &mut CtrlAuth, seen: &mut Vec<Sqe>) {
        let out = q.output().to_vec();
        q.clear_output();
        let frame = FrameConfig { pdu_len_max: 1 << 20, ..FrameConfig::before_ic(Role::Controller) };
        let mut at = 0;
        let mut replies = Vec::new();
        while at < out.len() {
            let Ok(Decoded::Pdu(p, n)) = pdu::decode(&out[at..], &frame) else { panic!("bad PDU from host") };
            at += n;
            let Pdu::CapsuleCmd { sqe, data, .. } = p else { panic!("not a command") };
            seen.push(sqe);
            let tx = TxConfig::default();
            match sqe.fctype() {
                fctype::AUTH_SEND => {
                    assert_eq!(data.len() as u32, sqe.cdw11, "TL is the message length");
                    assert!(sqe.sgl1.is_in_capsule());
                    ctrl.on_send(data);
                }
                fctype::AUTH_RECV => {
                    let mut msg = ctrl.receive();
                    msg.resize(sqe.cdw11 as usize, 0);
                    let h = pdu::DataHdr { cccid: sqe.cid, ttag: 0, offset: 0, length: msg.len() as u32 };
                    pdu::encode_data_pdu(&mut replies, true, pdu::flags::LAST_PDU, &h, &msg, &tx);
                }
                other => panic!("unexpected fctype {other:#x}"),
            }
            let cqe = Cqe { dw0: 0, dw1: 0, sqhd: 0, sqid: 0, cid: sqe.cid, status: Status::SUCCESS };
            pdu::encode_capsule_resp(&mut replies, &cqe, &tx);
        }
        assert_eq!(q.receive(&replies).unwrap(), replies.len());
    }

    fn run(host: HostConfig, ctrl_cfg: CtrlConfig) -> (AuthProgress, CtrlAuth, Vec<Sqe>) {
        let mut q = ready_queue();
        let mut ctrl = CtrlAuth::new(ctrl_cfg);
        let mut auth = QueueAuth::new(0, host, 0);
        let mut seen = Vec::new();
        let mut p = auth.start(&mut q, 0);
        for _ in 0..10 {
            if !matches!(p, AuthProgress::Pending) {
                break;
            }
            answer(&mut q, &mut ctrl, &mut seen);
            let c = q.pop_completion().expect("a completion");
            assert!(q.pop_completion().is_none(), "one command at a time");
            p = auth.on_completion(&mut q, c, 1);
        }
        (p, ctrl, seen)
    }

    #[test]
    fn sqe_layout_matches_linux() {
        let s = auth_send_sqe(72);
        let mut b = [0u8; 64];
        s.encode(&mut b);
        assert_eq!(b[0], 0x7f);
        assert_eq!(b[4], 0x05, "FCTYPE");
        assert_eq!(&b[40..44], &[0x00, 0x01, 0x01, 0xe9], "rsvd, SPSP0, SPSP1, SECP");
        assert_eq!(&b[44..48], &72u32.to_le_bytes(), "TL");
        let r = auth_receive_sqe(4096);
        r.encode(&mut b);
        assert_eq!(b[4], 0x06);
        assert_eq!(&b[44..48], &4096u32.to_le_bytes(), "AL");
    }

    #[test]
    fn unidirectional_and_bidirectional() {
        let host_key = key(Some(HashId::Sha256), 1, 32);
        let ctrl_key = key(Some(HashId::Sha512), 2, 64);
        let mut c = CtrlConfig::new(HOSTNQN, SUBNQN, host_key.clone());
        c.dh_groups = vec![DhGroup::Null];
        let (p, ctrl, seen) = run(host_config(HOSTNQN, SUBNQN, &host_key, None, 3), c.clone());
        let AuthProgress::Done(s) = p else { panic!("{p:?}") };
        assert_eq!((s.hash, s.dh_group, s.bidirectional), (HashId::Sha512, DhGroup::Null, false));
        assert!(ctrl.authenticated().is_some());
        assert_eq!(seen.len(), 4, "Send, Receive, Send, Receive");

        c.ctrl_key = Some(ctrl_key.clone());
        c.hashes = vec![HashId::Sha384];
        c.dh_groups = vec![DhGroup::Ffdhe2048];
        let (p, ctrl, seen) = run(host_config(HOSTNQN, SUBNQN, &host_key, Some(&ctrl_key), 4), c);
        let AuthProgress::Done(s) = p else { panic!("{p:?}") };
        assert_eq!((s.hash, s.dh_group, s.bidirectional), (HashId::Sha384, DhGroup::Ffdhe2048, true));
        assert!(ctrl.authenticated().is_some_and(|a| a.bidirectional), "Success2 reached the controller");
        assert_eq!(seen.len(), 5, "and Success2");
    }

    #[test]
    fn failures_are_reported_without_secrets() {
        let host_key = key(None, 1, 32);
        let other = key(None, 9, 32);
        let c = CtrlConfig::new(HOSTNQN, SUBNQN, other.clone());
        let (p, _, seen) = run(host_config(HOSTNQN, SUBNQN, &host_key, None, 0), c);
        let AuthProgress::Failed(f) = p else { panic!("{p:?}") };
        assert_eq!(f, AuthFailure::RejectedByController { qid: 0, reason: FailureReason::Failed });
        assert_eq!(seen.len(), 4, "no Failure2 after a Failure1");

        let mut c = CtrlConfig::new(HOSTNQN, SUBNQN, host_key.clone());
        c.ctrl_key = Some(other);
        let (p, ctrl, seen) = run(host_config(HOSTNQN, SUBNQN, &host_key, Some(&host_key), 0), c);
        let AuthProgress::Failed(f) = p else { panic!("{p:?}") };
        assert_eq!(f, AuthFailure::RejectedByHost { qid: 0, reason: FailureReason::Failed });
        assert_eq!(seen.len(), 5, "Failure2 sent");
        assert_eq!(ctrl.status(), nvmf_proto::auth::CtrlStatus::Failed(FailureReason::Failed));
        let text = format!("{f} {f:?}");
        assert!(text.contains("controller secret"), "{text}");
        assert!(!text.contains("DHHC"), "{text}");
    }

    #[test]
    fn error_status_and_lost_connection() {
        let host_key = key(None, 1, 32);
        let mut q = ready_queue();
        let mut auth = QueueAuth::new(2, host_config(HOSTNQN, SUBNQN, &host_key, None, 0), 500);
        assert!(matches!(auth.start(&mut q, 100), AuthProgress::Pending));
        assert_eq!(auth.deadline_ms(), 600);
        q.clear_output();
        let cid = auth.outstanding_cid().unwrap();
        let st = Status::new(nvmf_proto::status::sct::COMMAND_SPECIFIC, nvmf_proto::status::cmd::AUTH_REQUIRED).dnr();
        let mut b = Vec::new();
        pdu::encode_capsule_resp(
            &mut b,
            &Cqe { dw0: 0, dw1: 0, sqhd: 0, sqid: 0, cid, status: st },
            &Default::default(),
        );
        q.receive(&b).unwrap();
        let c = q_pop(&mut q);
        let p = auth.on_completion(&mut q, c, 200);
        let AuthProgress::Failed(AuthFailure::Status { qid: 2, command: AuthCommand::Send, .. }) = p else {
            panic!("{p:?}")
        };

        let mut auth = QueueAuth::new(2, host_config(HOSTNQN, SUBNQN, &host_key, None, 0), 500);
        assert!(matches!(auth.start(&mut q, 1000), AuthProgress::Pending));
        q.fail("test");
        let c = q_pop(&mut q);
        let p = auth.on_completion(&mut q, c, 1001);
        assert!(matches!(p, AuthProgress::Failed(AuthFailure::Transport { qid: 2 })), "{p:?}");
    }

    #[test]
    fn a_lost_failure2_keeps_the_first_failure() {
        let host_key = key(None, 1, 32);
        let mut c = CtrlConfig::new(HOSTNQN, SUBNQN, host_key.clone());
        c.ctrl_key = Some(key(None, 9, 32));
        c.dh_groups = vec![DhGroup::Null];
        let mut ctrl = CtrlAuth::new(c);
        let mut q = ready_queue();
        let mut auth = QueueAuth::new(0, host_config(HOSTNQN, SUBNQN, &host_key, Some(&host_key), 0), 0);
        let mut p = auth.start(&mut q, 0);
        let mut seen = Vec::new();
        // Negotiate, Challenge, Reply, Success1 (with an R2 the host rejects).
        for _ in 0..4 {
            assert!(matches!(p, AuthProgress::Pending), "{p:?}");
            answer(&mut q, &mut ctrl, &mut seen);
            let c = q_pop(&mut q);
            p = auth.on_completion(&mut q, c, 1);
        }
        assert!(matches!(p, AuthProgress::Pending), "Failure2 in flight: {p:?}");
        q.fail("connection lost");
        let c = q_pop(&mut q);
        let p = auth.on_completion(&mut q, c, 2);
        assert!(
            matches!(p, AuthProgress::Failed(AuthFailure::RejectedByHost { reason: FailureReason::Failed, .. })),
            "{p:?}"
        );
    }

    fn q_pop(q: &mut HostQueue) -> Completion {
        q.pop_completion().expect("completion")
    }

    #[test]
    fn when_to_authenticate() {
        let k = key(None, 1, 32);
        assert_eq!(auth_required(0, 1, None, None), Ok(false));
        assert_eq!(auth_required(0, 1, Some(&k), None), Ok(false), "no ATR, host key only: as Linux");
        assert_eq!(auth_required(0, 1 | CONNECT_DW0_ATR, Some(&k), None), Ok(true));
        assert_eq!(auth_required(1, CONNECT_DW0_ATR, None, None), Err(AuthFailure::KeyRequired { qid: 1 }));
        assert_eq!(auth_required(0, 0, Some(&k), Some(&k)), Ok(true), "the controller must prove its key");
        assert_eq!(auth_required(0, CONNECT_DW0_ASCR, Some(&k), None), Err(AuthFailure::ConcatRequired { qid: 0 }));
        assert!(auth_required(0, 0, None, Some(&k)).is_err());
    }
}
