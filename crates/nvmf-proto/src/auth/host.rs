//! The host side of one DH-HMAC-CHAP transaction on one queue.
//!
//! ```text
//! start()                 -> Negotiate          AUTH_Send
//!                                               AUTH_Receive -> on_message(Challenge)
//! Send(Reply)                                   AUTH_Send
//!                                               AUTH_Receive -> on_message(Success1)
//! Done { send: Some(Success2) } (bidirectional) AUTH_Send
//! Done { send: None }           (host only)
//! ```
//!
//! Failures follow Linux (`drivers/nvme/host/auth.c`) and SPDK
//! (`lib/nvme/nvme_auth.c`): an AUTH_Failure1 from the controller ends the
//! transaction with its explanation and nothing is sent back; anything the host
//! rejects is answered with AUTH_Failure2 and ends it:
//! - unknown or unoffered hash, or `hl` not its length: hash not usable (0x04);
//! - unknown or unoffered DH group, or a DH group without a DH value: DH group
//!   not usable (0x05);
//! - a DH value with the null group, one of the wrong size or out of range, a
//!   Success1 without R2 when the host asked for it, an undecodable message:
//!   incorrect payload (0x06);
//! - another message than expected, or another transaction id: incorrect
//!   protocol message (0x07) (Linux sends nothing then; SPDK sends Failure2);
//! - a wrong controller response R2: failed (0x01).
//!
//! Secure channel concatenation ([`HostConfig::sc_c`] ≠ 0, Linux 6.15
//! `nvme_auth_set_dhchap_reply_data`): the host always sends C2 (it feeds the
//! generated PSK) with S2 = 0, so the controller does not authenticate itself
//! even with a controller key; a Challenge with the null DH group is refused
//! with DH group not usable (0x05): without Ks there is no generated PSK.
//! Otherwise S2 is a random nonzero number per transaction (Linux: a global
//! counter from a random start).

use super::dh::DhKeyPair;
use super::messages::{
    AuthMessage, Challenge, Failure, Negotiate, ProtocolDescriptor, Reply, Success1, Success2, SC_C_NONE,
};
use super::{
    chap, os_random, random_seqnum, AuthError, Authenticated, DhGroup, DhchapKey, FailureReason, HashId, RandomFill,
    Secret,
};

/// What the host authenticates with.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub host_nqn: String,
    pub subsys_nqn: String,
    /// The host's secret (`dhchap_secret`).
    pub host_key: DhchapKey,
    /// The controller's secret (`dhchap_ctrl_secret`): when set the host sends
    /// C2 and checks the controller's response (bidirectional authentication).
    pub ctrl_key: Option<DhchapKey>,
    /// Hashes offered, in order (at most 30).
    pub hashes: Vec<HashId>,
    /// DH groups offered, in order (at most 30).
    pub dh_groups: Vec<DhGroup>,
    /// T_ID of this transaction (Linux counts per controller).
    pub transaction_id: u16,
    /// SC_C of the Negotiate: [`SC_C_NONE`], or `SC_C_NEW_TLS_PSK` /
    /// `SC_C_REPLACE_TLS_PSK` for secure channel concatenation (admin queue).
    pub sc_c: u8,
}

impl HostConfig {
    /// Offers every hash and group, as the Linux host does.
    pub fn new(host_nqn: impl Into<String>, subsys_nqn: impl Into<String>, host_key: DhchapKey) -> HostConfig {
        HostConfig {
            host_nqn: host_nqn.into(),
            subsys_nqn: subsys_nqn.into(),
            host_key,
            ctrl_key: None,
            hashes: HashId::ALL.to_vec(),
            dh_groups: DhGroup::ALL.to_vec(),
            transaction_id: 0,
            sc_c: SC_C_NONE,
        }
    }
}

/// What the host does next.
#[derive(Debug)]
pub enum HostStep {
    /// AUTH_Send these bytes, then AUTH_Receive and pass the data to
    /// [`HostAuth::on_message`].
    Send(Vec<u8>),
    /// Authentication succeeded. AUTH_Send `send` (Success2) first when present.
    Done { send: Option<Vec<u8>>, outcome: Authenticated },
    /// Authentication failed. AUTH_Send `send` (Failure2) first when present.
    Failed { send: Option<Vec<u8>>, reason: FailureReason },
}

enum State {
    Idle,
    AwaitChallenge,
    AwaitSuccess1(Pending),
    Finished,
}

/// What the Reply committed to, kept to check Success1.
struct Pending {
    outcome: Authenticated,
    /// S2 when the host asked the controller to authenticate (C2 sent).
    ctrl_seqnum: Option<u32>,
}

/// One host transaction.
pub struct HostAuth {
    config: HostConfig,
    fill: RandomFill,
    state: State,
    /// The controller chose the null group for a concatenation.
    concat_without_dh: bool,
}

impl HostAuth {
    /// A transaction using the OS random number generator.
    pub fn new(config: HostConfig) -> HostAuth {
        HostAuth::with_rng(config, os_random())
    }

    /// A transaction with injected randomness (tests, fuzzing).
    pub fn with_rng(config: HostConfig, fill: RandomFill) -> HostAuth {
        HostAuth { config, fill, state: State::Idle, concat_without_dh: false }
    }

    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// The transaction failed because the controller chose the null DH group
    /// while the host asked for secure channel concatenation.
    pub fn concat_without_dh(&self) -> bool {
        self.concat_without_dh
    }

    /// The AUTH_Negotiate payload; (re)starts the transaction.
    pub fn start(&mut self) -> Vec<u8> {
        self.state = State::AwaitChallenge;
        self.concat_without_dh = false;
        AuthMessage::Negotiate(Negotiate {
            t_id: self.config.transaction_id,
            sc_c: self.config.sc_c,
            protocols: vec![ProtocolDescriptor::dhchap(&self.config.hashes, &self.config.dh_groups)],
        })
        .to_bytes()
    }

    /// Feed the data of an AUTH_Receive.
    pub fn on_message(&mut self, payload: &[u8]) -> HostStep {
        let message = AuthMessage::decode(payload);
        match std::mem::replace(&mut self.state, State::Finished) {
            State::AwaitChallenge => match message {
                Ok(AuthMessage::Challenge(c)) if c.t_id == self.config.transaction_id => match self.on_challenge(&c) {
                    Ok((reply, pending)) => {
                        self.state = State::AwaitSuccess1(pending);
                        HostStep::Send(reply)
                    }
                    Err(reason) => self.fail(reason),
                },
                other => self.unexpected(other),
            },
            State::AwaitSuccess1(pending) => match message {
                Ok(AuthMessage::Success1(s)) if s.t_id == self.config.transaction_id => self.on_success1(&s, pending),
                other => self.unexpected(other),
            },
            // Nothing is expected before start() or after the end.
            State::Idle | State::Finished => HostStep::Failed { send: None, reason: FailureReason::IncorrectMessage },
        }
    }

    fn on_challenge(&mut self, c: &Challenge) -> Result<(Vec<u8>, Pending), FailureReason> {
        let config = &self.config;
        let hash = HashId::from_id(c.hash_id)
            .filter(|h| config.hashes.contains(h) && h.digest_len() == c.challenge.len())
            .ok_or(FailureReason::HashUnusable)?;
        let group = DhGroup::from_id(c.dh_group_id)
            .filter(|g| config.dh_groups.contains(g))
            .ok_or(FailureReason::DhGroupUnusable)?;
        let concat = config.sc_c != SC_C_NONE;
        if concat && group == DhGroup::Null {
            self.concat_without_dh = true;
            return Err(FailureReason::DhGroupUnusable);
        }
        let (dh_value, session_key) = match group {
            DhGroup::Null if !c.dh_value.is_empty() => return Err(FailureReason::IncorrectPayload),
            DhGroup::Null => (Vec::new(), None),
            _ if c.dh_value.is_empty() => return Err(FailureReason::DhGroupUnusable),
            _ => {
                let pair = DhKeyPair::generate(group, &mut self.fill).map_err(|_| FailureReason::Failed)?;
                let shared = pair.shared_value(&c.dh_value).map_err(|_| FailureReason::IncorrectPayload)?;
                (pair.public_value().to_vec(), Some(chap::session_key(hash, &shared)))
            }
        };
        let input = chap::ResponseInput {
            hash,
            challenge: &c.challenge,
            session_key: session_key.as_ref(),
            seqnum: c.seqnum,
            transaction_id: config.transaction_id,
            sc_c: config.sc_c,
            host_nqn: &config.host_nqn,
            subsys_nqn: &config.subsys_nqn,
        };
        let response = chap::host_response(&config.host_key.transform(&config.host_nqn), &input);
        let new_c2 = |fill: &mut RandomFill| {
            let mut c2 = vec![0u8; hash.digest_len()];
            fill(&mut c2);
            c2
        };
        let (c2, ctrl_seqnum) = if concat {
            // C2 feeds the generated PSK; S2 = 0: no controller response.
            (Some(new_c2(&mut self.fill)), None)
        } else if config.ctrl_key.is_some() {
            (Some(new_c2(&mut self.fill)), Some(random_seqnum(&mut self.fill)))
        } else {
            (None, None)
        };
        let reply = AuthMessage::Reply(Reply {
            t_id: config.transaction_id,
            seqnum: ctrl_seqnum.unwrap_or(0),
            response,
            challenge: c2.clone(),
            dh_value,
        });
        let outcome = Authenticated {
            hash,
            dh_group: group,
            bidirectional: ctrl_seqnum.is_some(),
            session_key,
            c1: c.challenge.clone(),
            c2,
            sc_c: config.sc_c,
        };
        Ok((reply.to_bytes(), Pending { outcome, ctrl_seqnum }))
    }

    fn on_success1(&mut self, s: &Success1, pending: Pending) -> HostStep {
        let Pending { outcome, ctrl_seqnum } = pending;
        if usize::from(s.hl) != outcome.hash.digest_len() {
            return self.fail(FailureReason::HashUnusable);
        }
        let (Some(ctrl_key), Some(seqnum)) = (&self.config.ctrl_key, ctrl_seqnum) else {
            return HostStep::Done { send: None, outcome };
        };
        let Some(received) = &s.response else {
            return self.fail(FailureReason::IncorrectPayload);
        };
        let input = chap::ResponseInput {
            hash: outcome.hash,
            challenge: outcome.c2.as_deref().unwrap_or_default(),
            session_key: outcome.session_key.as_ref(),
            seqnum,
            transaction_id: self.config.transaction_id,
            sc_c: self.config.sc_c,
            host_nqn: &self.config.host_nqn,
            subsys_nqn: &self.config.subsys_nqn,
        };
        let expected = Secret::new(chap::ctrl_response(&ctrl_key.transform(&self.config.subsys_nqn), &input));
        if !expected.ct_eq(received) {
            return self.fail(FailureReason::Failed);
        }
        let send = AuthMessage::Success2(Success2 { t_id: self.config.transaction_id }).to_bytes();
        HostStep::Done { send: Some(send), outcome }
    }

    /// A Failure1 ends the transaction silently; anything else unexpected is
    /// answered with Failure2.
    fn unexpected(&mut self, message: Result<AuthMessage, AuthError>) -> HostStep {
        match message {
            Ok(AuthMessage::Failure1(f)) => HostStep::Failed { send: None, reason: f.explanation },
            Ok(_) | Err(AuthError::UnknownMessage { .. }) => self.fail(FailureReason::IncorrectMessage),
            Err(_) => self.fail(FailureReason::IncorrectPayload),
        }
    }

    fn fail(&mut self, reason: FailureReason) -> HostStep {
        self.state = State::Finished;
        let send = AuthMessage::Failure2(Failure::new(self.config.transaction_id, reason)).to_bytes();
        HostStep::Failed { send: Some(send), reason }
    }
}
