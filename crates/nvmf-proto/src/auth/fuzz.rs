//! Fuzz entry for authentication (`fuzz/fuzz_targets/auth_messages.rs`, replayed
//! by `tests/fuzz_corpus.rs`): every decoder and parser on the input, and both
//! state machines driven by it. Nothing here may panic, whatever the input.
//!
//! Input: one selector byte, then the rest.
//! - (selector & 0x7f) % 3 == 0: controller. The rest is a list of chunks (u16
//!   little-endian length, bytes); an empty chunk is an AUTH_Receive, any other
//!   an AUTH_Send payload.
//! - (selector & 0x7f) % 3 == 1: host. `start()`, then each chunk is AUTH_Receive data.
//! - (selector & 0x7f) % 3 == 2: a real host and controller talk; the rest is XORed
//!   into the messages in flight, so the checks after the decoders run.
//!
//! Selector bit 7 makes the host bidirectional. Randomness is a fixed
//! sequence, so a transcript recorded with [`seeds`] replays to the end.

use super::messages::AuthMessage;
use super::tls_psk::ConfiguredPsk;
use super::{
    CtrlAuth, CtrlConfig, CtrlStatus, DhGroup, DhchapKey, HashId, HostAuth, HostConfig, HostStep, RandomFill,
    AUTH_MESSAGE_LEN_MAX,
};

const HOST_NQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001";
const SUBSYS_NQN: &str = "nqn.2026-11.io.nvmf:fuzz";
/// State machine steps per input: a transaction needs at most five.
const STEPS_MAX: usize = 8;

pub fn auth_messages(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    decode_check(rest);
    if let Ok(text) = std::str::from_utf8(rest) {
        if let Ok(key) = DhchapKey::parse(text) {
            assert_eq!(DhchapKey::parse(&key.format()).map(|k| k.secret().len()), Ok(key.secret().len()));
        }
        if let Ok(psk) = ConfiguredPsk::parse(text) {
            assert!(ConfiguredPsk::parse(&psk.format()).is_ok());
        }
    }
    let bidirectional = selector & 0x80 != 0;
    match (selector & 0x7f) % 3 {
        0 => {
            drive_ctrl(rest);
        }
        1 => {
            drive_host(rest, bidirectional);
        }
        _ => drive_pair(rest, bidirectional),
    }
}

/// A decoded message re-encodes to bytes that decode to the same message.
fn decode_check(bytes: &[u8]) {
    if let Ok(message) = AuthMessage::decode(bytes) {
        let again = message.to_bytes();
        assert!(again.len() <= AUTH_MESSAGE_LEN_MAX);
        assert_eq!(AuthMessage::decode(&again).as_ref(), Ok(&message), "re-encoding changed the message");
    }
}

/// Fixed "random" bytes for reproducible transcripts.
fn fixed_rng(seed: u8) -> RandomFill {
    let mut n = seed;
    Box::new(move |buf: &mut [u8]| {
        for b in buf {
            n = n.wrapping_mul(167).wrapping_add(13);
            *b = n;
        }
    })
}

fn host_key() -> DhchapKey {
    DhchapKey::from_secret(Some(HashId::Sha256), &[0x5a; 32]).expect("valid length")
}

fn ctrl_key() -> DhchapKey {
    DhchapKey::from_secret(None, &[0xa5; 48]).expect("valid length")
}

/// The controller the fuzzer talks to.
pub fn fuzz_ctrl() -> CtrlAuth {
    let mut config = CtrlConfig::new(HOST_NQN, SUBSYS_NQN, host_key());
    config.ctrl_key = Some(ctrl_key());
    config.dh_groups = vec![DhGroup::Ffdhe2048, DhGroup::Null];
    CtrlAuth::with_rng(config, fixed_rng(1))
}

/// The host the fuzzer talks to.
pub fn fuzz_host(bidirectional: bool) -> HostAuth {
    let mut config = HostConfig::new(HOST_NQN, SUBSYS_NQN, host_key());
    config.ctrl_key = bidirectional.then(ctrl_key);
    config.dh_groups = vec![DhGroup::Null, DhGroup::Ffdhe2048];
    config.transaction_id = 7;
    HostAuth::with_rng(config, fixed_rng(2))
}

/// Split `data` into chunks, each a u16 LE length and that many bytes (cut at
/// the end of the input).
fn chunks(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if data.len() < 2 {
            return None;
        }
        let len = usize::from(u16::from_le_bytes([data[0], data[1]])).min(data.len() - 2);
        let (chunk, rest) = data[2..].split_at(len);
        data = rest;
        Some(chunk)
    })
    .take(STEPS_MAX)
}

/// Returns where the controller ended.
fn drive_ctrl(data: &[u8]) -> CtrlStatus {
    let mut ctrl = fuzz_ctrl();
    for chunk in chunks(data) {
        if chunk.is_empty() {
            let out = ctrl.receive();
            let message = AuthMessage::decode(&out).expect("the controller sends decodable messages");
            assert!(matches!(message, AuthMessage::Challenge(_) | AuthMessage::Success1(_) | AuthMessage::Failure1(_)));
        } else {
            ctrl.on_send(chunk);
        }
        assert_eq!(ctrl.status() == CtrlStatus::Authenticated, ctrl.authenticated().is_some());
    }
    ctrl.status()
}

/// Returns whether the host authenticated.
fn drive_host(data: &[u8], bidirectional: bool) -> bool {
    let mut host = fuzz_host(bidirectional);
    let negotiate = host.start();
    assert!(matches!(AuthMessage::decode(&negotiate), Ok(AuthMessage::Negotiate(_))));
    for chunk in chunks(data) {
        let (send, done) = match host.on_message(chunk) {
            HostStep::Send(bytes) => {
                assert!(matches!(AuthMessage::decode(&bytes), Ok(AuthMessage::Reply(_))));
                continue;
            }
            HostStep::Done { send, .. } => (send, true),
            HostStep::Failed { send, .. } => (send, false),
        };
        if let Some(bytes) = send {
            assert!(AuthMessage::decode(&bytes).is_ok());
        }
        return done;
    }
    false
}

fn drive_pair(data: &[u8], bidirectional: bool) {
    let mut host = fuzz_host(bidirectional);
    let mut ctrl = fuzz_ctrl();
    let mut noise = data.iter().copied().cycle();
    let mut garble = |mut bytes: Vec<u8>| {
        if !data.is_empty() {
            for b in bytes.iter_mut() {
                *b ^= noise.next().unwrap_or(0);
            }
        }
        bytes
    };
    let mut to_ctrl = host.start();
    for _ in 0..STEPS_MAX {
        ctrl.on_send(&garble(to_ctrl));
        match host.on_message(&garble(ctrl.receive())) {
            HostStep::Send(bytes) => to_ctrl = bytes,
            HostStep::Done { send, .. } | HostStep::Failed { send, .. } => {
                if let Some(bytes) = send {
                    ctrl.on_send(&garble(bytes));
                }
                return;
            }
        }
    }
}

/// Seed inputs: recorded transactions for each mode, single messages and key
/// strings, named for the corpus directory.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    fn framed(selector: u8, chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![selector];
        for c in chunks {
            out.extend_from_slice(&(c.len() as u16).to_le_bytes());
            out.extend_from_slice(c);
        }
        out
    }
    let mut seeds = Vec::new();
    for (bidirectional, dh) in [(false, false), (true, false), (false, true), (true, true)] {
        // A host config offering only null, or only ffdhe2048, picks the group.
        let mut host = fuzz_host(bidirectional);
        if !dh {
            let mut config = host.config().clone();
            config.dh_groups = vec![DhGroup::Null];
            host = HostAuth::with_rng(config, fixed_rng(2));
        }
        let mut ctrl = fuzz_ctrl();
        let (mut sent, mut received) = (Vec::new(), Vec::new());
        let mut to_ctrl = host.start();
        loop {
            ctrl.on_send(&to_ctrl);
            sent.push(std::mem::take(&mut to_ctrl));
            sent.push(Vec::new());
            let reply = ctrl.receive();
            received.push(reply.clone());
            match host.on_message(&reply) {
                HostStep::Send(bytes) => to_ctrl = bytes,
                HostStep::Done { send, .. } | HostStep::Failed { send, .. } => {
                    if let Some(bytes) = send {
                        sent.push(bytes);
                    }
                    break;
                }
            }
        }
        let flag = if bidirectional { 0x80 } else { 0 };
        let name = format!("{}-{}", if dh { "ffdhe2048" } else { "null" }, if bidirectional { "bidi" } else { "uni" });
        seeds.push((format!("seed-ctrl-{name}"), framed(flag, &sent)));
        if dh {
            seeds.push((format!("seed-host-{name}"), framed(flag | 1, &received)));
        }
        seeds.push((format!("seed-pair-{name}"), vec![flag | 2, 0]));
        for (i, message) in sent.iter().chain(&received).filter(|m| !m.is_empty()).enumerate() {
            let mut single = vec![3];
            single.extend_from_slice(message);
            seeds.push((format!("seed-message-{name}-{i}"), single));
        }
    }
    for text in [
        "DHHC-1:00:ia6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2n:",
        "NVMeTLSkey-1:01:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:",
    ] {
        let mut input = vec![5];
        input.extend_from_slice(text.as_bytes());
        seeds.push((format!("seed-text-{}", &text[..4]), input));
    }
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The recorded transactions replay to success, so the fuzzer starts
    /// from inputs that reach every state.
    #[test]
    fn seeds_reach_the_end() {
        let seeds = seeds();
        for (name, data) in &seeds {
            if name.starts_with("seed-ctrl-") {
                assert_eq!(drive_ctrl(&data[1..]), CtrlStatus::Authenticated, "{name}");
            }
            if name.starts_with("seed-host-") {
                assert!(drive_host(&data[1..], data[0] & 0x80 != 0), "{name}");
            }
            auth_messages(data);
        }
        assert!(seeds.len() >= 20);
    }
}
