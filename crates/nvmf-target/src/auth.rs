//! In-band authentication (DH-HMAC-CHAP, NVMe Base "Authentication") on a
//! queue: the Fabrics Authentication Send and Receive commands.
//!
//! When the host's `[[subsystem.host]]` table has a `dhchap_key`, Connect
//! answers with the ATR bit set and the queue (admin or I/O: every queue
//! authenticates on its own) accepts nothing but Authentication Send and
//! Receive (and Disconnect) until a transaction succeeded; anything else gets
//! Authentication Required. The transaction itself is
//! [`nvmf_proto::auth::CtrlAuth`]; this module moves its messages in and out
//! of commands, as Linux nvmet does:
//! - Send and Receive complete with success whatever happens to the
//!   transaction; a failure is the Failure1 message the next Receive returns,
//!   after which the queue closes (the host cannot go on);
//! - a Negotiate on an authenticated queue starts a new transaction
//!   (re-authentication); the queue stays usable meanwhile only if it was
//!   authenticated before.
//!
//! An unauthenticated queue is on the engine's probation (evictable), and it
//! has `connect_timeout_ms` from accept to finish ([`crate::keepalive`]).
//!
//! Secure channel concatenation (Linux 6.15 nvmet): an admin queue accepts
//! SC_C NEWTLSPSK when it runs without TLS and REPLACETLSPSK when it runs over
//! TLS; I/O queues accept neither (AUTH_Failure1 "concatenation mismatch").
//! After Success the generated TLS PSK goes into the target's
//! [`GeneratedPsks`] (before the Success1 leaves), replacing the host's
//! previous one for that subsystem; I/O queues that connect over TLS with it
//! do not authenticate ([`crate::fabrics::connect`]).

use std::sync::Arc;

use nvmf_proto::auth::messages::{SC_C_NEW_TLS_PSK, SC_C_NONE, SC_C_REPLACE_TLS_PSK};
use nvmf_proto::auth::{
    tls_psk, Authenticated, CtrlAuth, CtrlConfig, CtrlStatus, AUTH_MESSAGE_LEN_MAX, SECP_DHCHAP, SPSP0_DHCHAP,
    SPSP1_DHCHAP,
};
use nvmf_proto::status::{cmd, generic, sct};
use nvmf_proto::{Sqe, Status};

use crate::action::Action;
use crate::generated_psk::GeneratedPsks;
use crate::slots::Work;
use crate::subsys::DhchapPolicy;
use crate::tcp::{c2h_sgl_ok, host_data, st, HostData, Phase, Queue};

/// Authentication state of one queue.
pub(crate) struct QueueAuth {
    policy: Arc<DhchapPolicy>,
    host_nqn: String,
    subsys_nqn: String,
    /// The transaction in progress or last finished.
    tx: Option<CtrlAuth>,
    /// A transaction succeeded on this queue.
    pub authenticated: bool,
    /// Admin queue: where generated PSKs go, and the SC_C it accepts.
    concat: Option<(Arc<GeneratedPsks>, u8)>,
}

impl QueueAuth {
    pub fn new(policy: Arc<DhchapPolicy>, host_nqn: &str, subsys_nqn: &str) -> QueueAuth {
        QueueAuth {
            policy,
            host_nqn: host_nqn.to_string(),
            subsys_nqn: subsys_nqn.to_string(),
            tx: None,
            authenticated: false,
            concat: None,
        }
    }

    /// Allow secure channel concatenation (admin queue: `psks` set) with the
    /// SC_C a queue with (`tls`) or without TLS takes.
    pub fn with_concat(mut self, psks: Option<Arc<GeneratedPsks>>, tls: bool) -> QueueAuth {
        let sc_c = if tls { SC_C_REPLACE_TLS_PSK } else { SC_C_NEW_TLS_PSK };
        self.concat = psks.map(|p| (p, sc_c));
        self
    }

    /// Keep the generated TLS PSK of a concatenation that succeeded.
    fn keep_generated_psk(&self, outcome: &Authenticated) -> Result<String, &'static str> {
        let Some((psks, _)) = &self.concat else { return Err("not an admin queue") };
        let generated = outcome.generated_psk().ok_or("no generated PSK (null DH group, or no C2)")?;
        let derived = tls_psk::derive_generated(outcome.hash, &generated, &self.host_nqn, &self.subsys_nqn)
            .map_err(|_| "the DH-HMAC-CHAP hash has no TLS suite (SHA-512)")?;
        let identity = derived.identity.clone();
        if !psks.insert(&self.host_nqn, &self.subsys_nqn, outcome.hash, derived) {
            return Err("the DH-HMAC-CHAP hash has no TLS suite (SHA-512)");
        }
        Ok(identity)
    }

    fn new_transaction(&self) -> CtrlAuth {
        let p = &self.policy;
        let mut c = CtrlConfig::new(self.host_nqn.clone(), self.subsys_nqn.clone(), p.host_key.clone());
        c.ctrl_key = p.ctrl_key.clone();
        c.hashes = p.hashes.clone();
        c.dh_groups = p.dh_groups.clone();
        c.concat_sc_c = self.concat.as_ref().map_or(SC_C_NONE, |(_, sc_c)| *sc_c);
        CtrlAuth::new(c)
    }
}

/// SECP, SPSP0 and SPSP1 of an Authentication Send or Receive (CDW10).
fn security_protocol(sqe: &Sqe) -> (u8, u8, u8) {
    ((sqe.cdw10 >> 24) as u8, (sqe.cdw10 >> 8) as u8, (sqe.cdw10 >> 16) as u8)
}

impl Queue {
    /// The queue is bound and must still authenticate.
    #[inline]
    pub(crate) fn auth_pending(&self) -> bool {
        self.conn.as_ref().and_then(|c| c.auth.as_ref()).is_some_and(|a| !a.authenticated)
    }

    /// Answer a command the queue may not run before authenticating.
    pub(crate) fn auth_required(&mut self, out: &mut Vec<u8>, cid: u16) {
        self.respond(out, cid, Status::new(sct::COMMAND_SPECIFIC, cmd::AUTH_REQUIRED).dnr(), 0, 0);
    }

    /// Authentication Send (`send`) or Receive.
    pub(crate) fn auth_command(&mut self, sqe: Sqe, data: &[u8], send: bool, out: &mut Vec<u8>) {
        let usable = self.conn.as_ref().is_some_and(|c| c.auth.is_some());
        if !usable || security_protocol(&sqe) != (SECP_DHCHAP, SPSP0_DHCHAP, SPSP1_DHCHAP) {
            // No key configured for this host, or another protocol.
            return self.respond(out, sqe.cid, st(sct::GENERIC, generic::INVALID_FIELD), 0, 0);
        }
        // TL (Send) or AL (Receive) must describe the transfer.
        let len = sqe.cdw11;
        if len == 0 || len as usize > AUTH_MESSAGE_LEN_MAX || sqe.sgl1.length != len {
            return self.respond(out, sqe.cid, st(sct::GENERIC, generic::INVALID_FIELD), 0, 0);
        }
        if !send {
            if let Err(s) = c2h_sgl_ok(&sqe, AUTH_MESSAGE_LEN_MAX as u32) {
                return self.respond(out, sqe.cid, s, 0, 0);
            }
            return self.auth_receive(&sqe, out);
        }
        match host_data(&sqe, data, AUTH_MESSAGE_LEN_MAX as u32) {
            Err(s) => self.respond(out, sqe.cid, s, 0, 0),
            Ok(HostData::None) => self.respond(out, sqe.cid, st(sct::GENERIC, generic::DATA_SGL_LENGTH_INVALID), 0, 0),
            Ok(HostData::Capsule(d)) => self.auth_send(&sqe, d, out),
            Ok(HostData::R2t(len)) => self.start_r2t(sqe, Work::AuthSend, None, len, len as usize, out),
        }
    }

    /// The message of an Authentication Send is in.
    pub(crate) fn auth_send(&mut self, sqe: &Sqe, message: &[u8], out: &mut Vec<u8>) {
        let Some(a) = self.conn.as_mut().and_then(|c| c.auth.as_mut()) else { return };
        // A Negotiate starts a transaction; so does one after the last ended.
        let ended = a.tx.as_ref().is_none_or(|t| t.status() != CtrlStatus::InProgress);
        if ended {
            a.tx = Some(a.new_transaction());
        }
        let tx = a.tx.as_mut().expect("a transaction");
        let status = tx.on_send(message);
        self.auth_progress(status);
        self.respond(out, sqe.cid, Status::SUCCESS, 0, 0);
    }

    /// Authentication Receive: the transaction's next message, padded with
    /// zeros to the allocation length.
    fn auth_receive(&mut self, sqe: &Sqe, out: &mut Vec<u8>) {
        let Some(a) = self.conn.as_mut().and_then(|c| c.auth.as_mut()) else { return };
        let Some(tx) = a.tx.as_mut() else {
            // Nothing negotiated yet.
            return self.respond(out, sqe.cid, st(sct::GENERIC, generic::COMMAND_SEQUENCE_ERROR), 0, 0);
        };
        let mut message = tx.receive();
        let status = tx.status();
        message.resize(sqe.sgl1.length as usize, 0);
        self.auth_progress(status);
        self.send_data_and_complete(out, sqe.cid, &message, 0);
        if matches!(status, CtrlStatus::Failed(_)) && self.auth_pending() {
            // The Failure1 is out; an unauthenticated queue cannot go on.
            self.phase = Phase::Closing;
        }
    }

    /// Act on where the transaction stands after a message.
    fn auth_progress(&mut self, status: CtrlStatus) {
        let now_us = self.now_us;
        let peer = self.peer;
        let Some(c) = self.conn.as_mut() else { return };
        let Some(a) = c.auth.as_mut() else { return };
        match status {
            CtrlStatus::Authenticated => {
                a.policy.authenticated.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let outcome = a.tx.as_ref().and_then(|t| t.authenticated());
                if let Some(o) = outcome.filter(|o| o.sc_c != SC_C_NONE) {
                    match a.keep_generated_psk(o) {
                        Ok(identity) => tracing::info!(
                            "ctrl {} queue {}: secure channel concatenation: generated TLS PSK for {identity:?}",
                            c.ctrl.cntlid,
                            c.qid
                        ),
                        Err(why) => tracing::warn!(
                            "ctrl {} queue {}: secure channel concatenation of host {}: {why}",
                            c.ctrl.cntlid,
                            c.qid,
                            a.host_nqn
                        ),
                    }
                }
                if !a.authenticated {
                    a.authenticated = true;
                    tracing::info!("ctrl {} queue {}: host {} authenticated", c.ctrl.cntlid, c.qid, a.host_nqn);
                    self.actions.push(Action::Established);
                }
            }
            CtrlStatus::Failed(reason) => {
                crate::peer_warn!(
                    now_us,
                    "ctrl {} queue {}: authentication of host {} from {peer} failed: {reason:?}",
                    c.ctrl.cntlid,
                    c.qid,
                    a.host_nqn
                );
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
