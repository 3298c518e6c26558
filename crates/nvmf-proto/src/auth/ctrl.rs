//! The controller side of one DH-HMAC-CHAP transaction on one queue.
//!
//! The target passes each AUTH_Send payload to [`CtrlAuth::on_send`] and
//! answers each AUTH_Receive with [`CtrlAuth::receive`]; both commands complete
//! with success status whatever happens to the transaction (Linux nvmet and
//! SPDK do the same: a failure is reported by the AUTH_Failure1 message the
//! next AUTH_Receive returns). The target then looks at [`CtrlAuth::status`].
//!
//! ```text
//! on_send(Negotiate)   hash and group chosen          (or Failure1 due)
//! receive()            -> Challenge (C1, S1, DH value)
//! on_send(Reply)       R1 checked, R2 computed if asked (or Failure1 due)
//! receive()            -> Success1 (R2 when asked)     Authenticated unless R2 was sent
//! on_send(Success2)    Authenticated                   (bidirectional)
//! ```
//!
//! Choices, following Linux nvmet (`drivers/nvme/target/fabrics-cmd-auth.c`)
//! and SPDK (`lib/nvmf/auth.c`):
//! - The first of our allowed hashes (and groups) that the host offers wins, so
//!   list them most preferred first (SPDK prefers the strongest).
//! - SC_C ≠ 0 and not [`CtrlConfig::concat_sc_c`] (the one value this queue
//!   accepts: Linux 6.15 nvmet takes NEWTLSPSK on an admin queue without TLS,
//!   REPLACETLSPSK on one with TLS, nothing on I/O queues): secure channel
//!   concatenation mismatch (0x03); no DH-HMAC-CHAP descriptor: not usable (0x02); no common
//!   hash: 0x04; no common group: 0x05; halen/dhlen above 30: incorrect
//!   payload (0x06, from the decoder).
//! - Reply: other T_ID, other `hl`, a DH value of the wrong size or with the
//!   null group: incorrect payload; a DH value out of range: DH group not usable
//!   (nvmet); wrong R1: failed (0x01); C2 without a controller key: failed.
//! - A Reply with C2 and S2 = 0 asks for no controller response, C2 only feeds
//!   the generated PSK (NVMe Base 2.2 "DH-HMAC-CHAP_Reply", nvmet).
//! - A message out of order: incorrect protocol message (0x07).
//! - AUTH_Failure2 from the host ends the transaction with its explanation.
//!
//! A Negotiate after the transaction ended is a new transaction (the host
//! re-authenticating): the target starts a new `CtrlAuth` for it.

use super::dh::DhKeyPair;
use super::messages::{AuthMessage, Challenge, Failure, Negotiate, Reply, Success1, AUTH_PROTOCOL_DHCHAP, SC_C_NONE};

use super::{
    chap, os_random, random_seqnum, AuthError, Authenticated, DhGroup, DhchapKey, FailureReason, HashId, RandomFill,
    Secret,
};

/// The controller's policy for one host.
#[derive(Debug, Clone)]
pub struct CtrlConfig {
    pub host_nqn: String,
    pub subsys_nqn: String,
    /// The host's secret: the host proves it knows it.
    pub host_key: DhchapKey,
    /// The controller's secret, needed when the host asks the controller to
    /// authenticate itself.
    pub ctrl_key: Option<DhchapKey>,
    /// Allowed hashes, most preferred first.
    pub hashes: Vec<HashId>,
    /// Allowed DH groups, most preferred first.
    pub dh_groups: Vec<DhGroup>,
    /// The SC_C ≠ 0 a Negotiate may carry on this queue ([`SC_C_NONE`]:
    /// secure channel concatenation refused).
    pub concat_sc_c: u8,
}

impl CtrlConfig {
    /// Allows everything, strongest first (SPDK's order).
    pub fn new(host_nqn: impl Into<String>, subsys_nqn: impl Into<String>, host_key: DhchapKey) -> CtrlConfig {
        CtrlConfig {
            host_nqn: host_nqn.into(),
            subsys_nqn: subsys_nqn.into(),
            host_key,
            ctrl_key: None,
            hashes: HashId::ALL.iter().rev().copied().collect(),
            dh_groups: DhGroup::ALL.iter().rev().copied().collect(),
            concat_sc_c: SC_C_NONE,
        }
    }
}

/// Where the transaction stands, for the target's access decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtrlStatus {
    InProgress,
    Authenticated,
    Failed(FailureReason),
}

/// The parameters the Negotiate settled.
#[derive(Clone, Copy)]
struct Selected {
    t_id: u16,
    hash: HashId,
    group: DhGroup,
    sc_c: u8,
}

enum State {
    AwaitNegotiate,
    ChallengeDue(Selected),
    AwaitReply { selected: Selected, c1: Vec<u8>, s1: u32, pair: Option<DhKeyPair> },
    Success1Due { t_id: u16, outcome: Authenticated, r2: Option<Vec<u8>> },
    AwaitSuccess2 { t_id: u16, outcome: Authenticated },
    Failure1Due { t_id: u16, reason: FailureReason },
    Done(Authenticated),
    Failed(FailureReason),
}

/// One controller transaction.
pub struct CtrlAuth {
    config: CtrlConfig,
    fill: RandomFill,
    state: State,
    /// T_ID of the Negotiate, echoed in every answer.
    t_id: u16,
}

impl CtrlAuth {
    /// A transaction using the OS random number generator.
    pub fn new(config: CtrlConfig) -> CtrlAuth {
        CtrlAuth::with_rng(config, os_random())
    }

    /// A transaction with injected randomness (tests, fuzzing).
    pub fn with_rng(config: CtrlConfig, fill: RandomFill) -> CtrlAuth {
        CtrlAuth { config, fill, state: State::AwaitNegotiate, t_id: 0 }
    }

    pub fn config(&self) -> &CtrlConfig {
        &self.config
    }

    pub fn status(&self) -> CtrlStatus {
        match &self.state {
            State::Done(_) => CtrlStatus::Authenticated,
            State::Failed(reason) => CtrlStatus::Failed(*reason),
            _ => CtrlStatus::InProgress,
        }
    }

    /// What the transaction established, once it succeeded.
    pub fn authenticated(&self) -> Option<&Authenticated> {
        match &self.state {
            State::Done(outcome) => Some(outcome),
            _ => None,
        }
    }

    /// Feed the data of an AUTH_Send.
    pub fn on_send(&mut self, payload: &[u8]) -> CtrlStatus {
        let message = AuthMessage::decode(payload);
        if matches!(self.state, State::AwaitNegotiate) && payload.len() >= 6 {
            // Echo the host's T_ID even in the Failure1 for a Negotiate we
            // cannot decode (nvmet records it before checking).
            self.t_id = u16::from_le_bytes([payload[4], payload[5]]);
        }
        if let Ok(AuthMessage::Failure2(f)) = &message {
            if !matches!(self.state, State::Done(_) | State::Failed(_)) {
                self.state = State::Failed(f.explanation);
                return self.status();
            }
        }
        self.state = match (std::mem::replace(&mut self.state, State::Failed(FailureReason::Failed)), message) {
            (State::AwaitNegotiate, Ok(AuthMessage::Negotiate(n))) => {
                self.t_id = n.t_id;
                match self.select(&n) {
                    Ok(selected) => State::ChallengeDue(selected),
                    Err(reason) => State::Failure1Due { t_id: n.t_id, reason },
                }
            }
            (State::AwaitReply { selected, c1, s1, pair }, Ok(AuthMessage::Reply(r))) => {
                match self.check_reply(&r, selected, c1, s1, pair.as_ref()) {
                    Ok((outcome, r2)) => State::Success1Due { t_id: selected.t_id, outcome, r2 },
                    Err(reason) => State::Failure1Due { t_id: selected.t_id, reason },
                }
            }
            (State::AwaitSuccess2 { t_id, outcome }, Ok(AuthMessage::Success2(s))) if s.t_id == t_id => {
                State::Done(outcome)
            }
            (State::AwaitSuccess2 { t_id, .. }, Ok(AuthMessage::Success2(_))) => {
                State::Failure1Due { t_id, reason: FailureReason::IncorrectPayload }
            }
            // After the end nothing changes the outcome; a failure stays one.
            (done @ (State::Done(_) | State::Failed(_)), _) => done,
            (_, Err(AuthError::UnknownMessage { .. }) | Ok(_)) => {
                State::Failure1Due { t_id: self.t_id, reason: FailureReason::IncorrectMessage }
            }
            (_, Err(_)) => State::Failure1Due { t_id: self.t_id, reason: FailureReason::IncorrectPayload },
        };
        self.status()
    }

    /// The data to return for an AUTH_Receive.
    pub fn receive(&mut self) -> Vec<u8> {
        let (message, next) = match std::mem::replace(&mut self.state, State::Failed(FailureReason::Failed)) {
            State::ChallengeDue(selected) => match self.challenge(selected) {
                Ok((message, state)) => (message, state),
                Err(reason) => (failure1(selected.t_id, reason), State::Failed(reason)),
            },
            State::Success1Due { t_id, outcome, r2 } => {
                let hl = outcome.hash.digest_len() as u8;
                let bidirectional = r2.is_some();
                let message = AuthMessage::Success1(Success1 { t_id, hl, response: r2 });
                let next = if bidirectional { State::AwaitSuccess2 { t_id, outcome } } else { State::Done(outcome) };
                (message, next)
            }
            State::Failure1Due { t_id, reason } => (failure1(t_id, reason), State::Failed(reason)),
            // The host reads when it should send: the transaction is broken.
            _ => {
                let reason = FailureReason::IncorrectMessage;
                (failure1(self.t_id, reason), State::Failed(reason))
            }
        };
        self.state = next;
        message.to_bytes()
    }

    fn select(&self, n: &Negotiate) -> Result<Selected, FailureReason> {
        if n.sc_c != SC_C_NONE && n.sc_c != self.config.concat_sc_c {
            return Err(FailureReason::ConcatMismatch);
        }
        let desc = n.protocols.iter().find(|p| p.auth_id == AUTH_PROTOCOL_DHCHAP).ok_or(FailureReason::NotUsable)?;
        let hash = (self.config.hashes.iter().copied())
            .find(|h| desc.hash_ids.contains(&h.id()))
            .ok_or(FailureReason::HashUnusable)?;
        let group = (self.config.dh_groups.iter().copied())
            .find(|g| desc.dh_group_ids.contains(&g.id()))
            .ok_or(FailureReason::DhGroupUnusable)?;
        Ok(Selected { t_id: n.t_id, hash, group, sc_c: n.sc_c })
    }

    fn challenge(&mut self, selected: Selected) -> Result<(AuthMessage, State), FailureReason> {
        let mut c1 = vec![0u8; selected.hash.digest_len()];
        (self.fill)(&mut c1);
        let s1 = random_seqnum(&mut self.fill);
        let pair = match selected.group {
            DhGroup::Null => None,
            group => Some(DhKeyPair::generate(group, &mut self.fill).map_err(|_| FailureReason::Failed)?),
        };
        let message = AuthMessage::Challenge(Challenge {
            t_id: selected.t_id,
            hash_id: selected.hash.id(),
            dh_group_id: selected.group.id(),
            seqnum: s1,
            challenge: c1.clone(),
            dh_value: pair.as_ref().map(|p| p.public_value().to_vec()).unwrap_or_default(),
        });
        Ok((message, State::AwaitReply { selected, c1, s1, pair }))
    }

    fn check_reply(
        &self,
        r: &Reply,
        selected: Selected,
        c1: Vec<u8>,
        s1: u32,
        pair: Option<&DhKeyPair>,
    ) -> Result<(Authenticated, Option<Vec<u8>>), FailureReason> {
        let Selected { t_id, hash, group, sc_c } = selected;
        if r.t_id != t_id || r.response.len() != hash.digest_len() {
            return Err(FailureReason::IncorrectPayload);
        }
        let session_key = match pair {
            None if !r.dh_value.is_empty() => return Err(FailureReason::IncorrectPayload),
            None => None,
            Some(_) if r.dh_value.len() != group.value_len() => return Err(FailureReason::IncorrectPayload),
            Some(pair) => {
                let shared = pair.shared_value(&r.dh_value).map_err(|_| FailureReason::DhGroupUnusable)?;
                Some(chap::session_key(hash, &shared))
            }
        };
        let config = &self.config;
        let mut input = chap::ResponseInput {
            hash,
            challenge: &c1,
            session_key: session_key.as_ref(),
            seqnum: s1,
            transaction_id: t_id,
            sc_c,
            host_nqn: &config.host_nqn,
            subsys_nqn: &config.subsys_nqn,
        };
        let expected = Secret::new(chap::host_response(&config.host_key.transform(&config.host_nqn), &input));
        if !expected.ct_eq(&r.response) {
            return Err(FailureReason::Failed);
        }
        let r2 = match (&r.challenge, &config.ctrl_key) {
            (Some(_), _) if r.seqnum == 0 => None,
            (Some(_), None) => return Err(FailureReason::Failed),
            (Some(c2), Some(ctrl_key)) => {
                input.challenge = c2;
                input.seqnum = r.seqnum;
                Some(chap::ctrl_response(&ctrl_key.transform(&config.subsys_nqn), &input))
            }
            (None, _) => None,
        };
        let outcome = Authenticated {
            hash,
            dh_group: group,
            bidirectional: r2.is_some(),
            session_key,
            c1,
            c2: r.challenge.clone(),
            sc_c,
        };
        Ok((outcome, r2))
    }
}

fn failure1(t_id: u16, reason: FailureReason) -> AuthMessage {
    AuthMessage::Failure1(Failure::new(t_id, reason))
}
