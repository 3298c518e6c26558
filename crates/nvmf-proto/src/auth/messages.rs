//! The DH-HMAC-CHAP messages carried by AUTH_Send / AUTH_Receive (layouts in
//! the [module docs](super)), typed, with bounds-checked decoding.
//!
//! Decoding checks the structure only (lengths, flag bytes, bounds) and keeps
//! identifiers as raw bytes, so the state machines decide what an unknown hash
//! or group means. It reads the declared lengths and ignores anything after the
//! message: AUTH_Receive data is zero padded to the host's allocation length.
//! Nothing is allocated beyond [`HASH_LEN_MAX`], [`DH_VALUE_LEN_MAX`] and
//! [`AUTH_MESSAGE_LEN_MAX`] per field.

use super::{AuthError, DhGroup, FailureReason, HashId, AUTH_MESSAGE_LEN_MAX, DH_VALUE_LEN_MAX, HASH_LEN_MAX};

/// `auth_type` of the messages common to all protocols (Negotiate, Failures).
pub const AUTH_TYPE_COMMON: u8 = 0x00;
/// `auth_type` of the DH-HMAC-CHAP messages.
pub const AUTH_TYPE_DHCHAP: u8 = 0x01;

pub const AUTH_ID_NEGOTIATE: u8 = 0x00;
pub const AUTH_ID_CHALLENGE: u8 = 0x01;
pub const AUTH_ID_REPLY: u8 = 0x02;
pub const AUTH_ID_SUCCESS1: u8 = 0x03;
pub const AUTH_ID_SUCCESS2: u8 = 0x04;
pub const AUTH_ID_FAILURE2: u8 = 0xF0;
pub const AUTH_ID_FAILURE1: u8 = 0xF1;

/// `authid` of a DH-HMAC-CHAP protocol descriptor.
pub const AUTH_PROTOCOL_DHCHAP: u8 = 0x01;
/// Size of one protocol descriptor in a Negotiate message.
pub const DESCRIPTOR_LEN: usize = 64;
/// Slots for hash ids, and separately for DH group ids, in a descriptor.
pub const DESCRIPTOR_ID_SLOTS: usize = 30;

/// SC_C values of the Negotiate message (Linux `NVME_AUTH_SECP_*`).
/// No secure channel concatenation (NOSC).
pub const SC_C_NONE: u8 = 0x00;
/// Secure channel already set up (SC); no host asks for it.
pub const SC_C_SC: u8 = 0x01;
/// Generate a TLS PSK on a queue without TLS (NEWTLSPSK).
pub const SC_C_NEW_TLS_PSK: u8 = 0x02;
/// Replace the generated TLS PSK on a queue running over TLS (REPLACETLSPSK).
pub const SC_C_REPLACE_TLS_PSK: u8 = 0x03;

const NEGOTIATE_FIXED_LEN: usize = 8;
const DHCHAP_FIXED_LEN: usize = 16;
const FAILURE_LEN: usize = 8;

/// One authentication protocol the host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolDescriptor {
    pub auth_id: u8,
    /// At most [`DESCRIPTOR_ID_SLOTS`] hash ids.
    pub hash_ids: Vec<u8>,
    /// At most [`DESCRIPTOR_ID_SLOTS`] DH group ids.
    pub dh_group_ids: Vec<u8>,
}

impl ProtocolDescriptor {
    /// A DH-HMAC-CHAP descriptor listing `hashes` and `groups` in that order.
    pub fn dhchap(hashes: &[HashId], groups: &[DhGroup]) -> ProtocolDescriptor {
        ProtocolDescriptor {
            auth_id: AUTH_PROTOCOL_DHCHAP,
            hash_ids: hashes.iter().map(|h| h.id()).take(DESCRIPTOR_ID_SLOTS).collect(),
            dh_group_ids: groups.iter().map(|g| g.id()).take(DESCRIPTOR_ID_SLOTS).collect(),
        }
    }
}

/// AUTH_Negotiate (host to controller, AUTH_Send).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiate {
    pub t_id: u16,
    pub sc_c: u8,
    pub protocols: Vec<ProtocolDescriptor>,
}

/// DH-HMAC-CHAP_Challenge (controller to host, AUTH_Receive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub t_id: u16,
    pub hash_id: u8,
    pub dh_group_id: u8,
    /// S1.
    pub seqnum: u32,
    /// C1; its length is `hl`.
    pub challenge: Vec<u8>,
    /// The controller's DH value (empty for the null group).
    pub dh_value: Vec<u8>,
}

/// DH-HMAC-CHAP_Reply (host to controller, AUTH_Send).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub t_id: u16,
    /// S2 (0 when the host does not ask the controller to authenticate).
    pub seqnum: u32,
    /// R1; its length is `hl`.
    pub response: Vec<u8>,
    /// C2 when CVALID is set (sent as `hl` zero bytes otherwise).
    pub challenge: Option<Vec<u8>>,
    /// The host's DH value (empty for the null group).
    pub dh_value: Vec<u8>,
}

/// DH-HMAC-CHAP_Success1 (controller to host, AUTH_Receive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Success1 {
    pub t_id: u16,
    pub hl: u8,
    /// R2 when RVALID is set (sent as `hl` zero bytes otherwise).
    pub response: Option<Vec<u8>>,
}

/// DH-HMAC-CHAP_Success2 (host to controller, AUTH_Send).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Success2 {
    pub t_id: u16,
}

/// AUTH_Failure1 (controller to host) and AUTH_Failure2 (host to controller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub t_id: u16,
    pub reason_code: u8,
    pub explanation: FailureReason,
}

impl Failure {
    /// A failure with the one defined reason code.
    pub fn new(t_id: u16, explanation: FailureReason) -> Failure {
        Failure { t_id, reason_code: FailureReason::REASON_CODE_FAILED, explanation }
    }
}

/// Any authentication message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMessage {
    Negotiate(Negotiate),
    Challenge(Challenge),
    Reply(Reply),
    Success1(Success1),
    Success2(Success2),
    Failure1(Failure),
    Failure2(Failure),
}

fn need(buf: &[u8], needed: usize) -> Result<(), AuthError> {
    if buf.len() < needed {
        return Err(AuthError::Truncated { len: buf.len(), needed });
    }
    Ok(())
}

fn le16(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([buf[at], buf[at + 1]])
}

fn le32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn flag(byte: u8, what: &'static str) -> Result<bool, AuthError> {
    match byte {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(AuthError::Malformed(what)),
    }
}

fn hash_len(byte: u8) -> Result<usize, AuthError> {
    let hl = usize::from(byte);
    if hl > HASH_LEN_MAX {
        return Err(AuthError::Malformed("hl larger than any hash"));
    }
    Ok(hl)
}

fn dh_value_len(buf: &[u8], at: usize) -> Result<usize, AuthError> {
    let len = usize::from(le16(buf, at));
    if len > DH_VALUE_LEN_MAX {
        return Err(AuthError::Malformed("dhvlen larger than any DH group"));
    }
    Ok(len)
}

impl AuthMessage {
    /// Decode one message from an AUTH_Send or AUTH_Receive payload.
    pub fn decode(buf: &[u8]) -> Result<AuthMessage, AuthError> {
        need(buf, 6)?;
        let (auth_type, auth_id, t_id) = (buf[0], buf[1], le16(buf, 4));
        match (auth_type, auth_id) {
            (AUTH_TYPE_COMMON, AUTH_ID_NEGOTIATE) => decode_negotiate(buf, t_id).map(AuthMessage::Negotiate),
            (AUTH_TYPE_COMMON, AUTH_ID_FAILURE1) => decode_failure(buf, t_id).map(AuthMessage::Failure1),
            (AUTH_TYPE_COMMON, AUTH_ID_FAILURE2) => decode_failure(buf, t_id).map(AuthMessage::Failure2),
            (AUTH_TYPE_DHCHAP, AUTH_ID_CHALLENGE) => decode_challenge(buf, t_id).map(AuthMessage::Challenge),
            (AUTH_TYPE_DHCHAP, AUTH_ID_REPLY) => decode_reply(buf, t_id).map(AuthMessage::Reply),
            (AUTH_TYPE_DHCHAP, AUTH_ID_SUCCESS1) => decode_success1(buf, t_id).map(AuthMessage::Success1),
            (AUTH_TYPE_DHCHAP, AUTH_ID_SUCCESS2) => {
                need(buf, DHCHAP_FIXED_LEN)?;
                Ok(AuthMessage::Success2(Success2 { t_id }))
            }
            _ => Err(AuthError::UnknownMessage { auth_type, auth_id }),
        }
    }

    /// Append the encoded message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            AuthMessage::Negotiate(m) => encode_negotiate(m, out),
            AuthMessage::Challenge(m) => {
                header(out, AUTH_TYPE_DHCHAP, AUTH_ID_CHALLENGE, m.t_id);
                let (hl, dhvlen) = (field_len(&m.challenge, HASH_LEN_MAX), field_len(&m.dh_value, DH_VALUE_LEN_MAX));
                out.extend_from_slice(&[hl as u8, 0, m.hash_id, m.dh_group_id]);
                out.extend_from_slice(&(dhvlen as u16).to_le_bytes());
                out.extend_from_slice(&m.seqnum.to_le_bytes());
                put_field(out, Some(&m.challenge), hl);
                put_field(out, Some(&m.dh_value), dhvlen);
            }
            AuthMessage::Reply(m) => {
                header(out, AUTH_TYPE_DHCHAP, AUTH_ID_REPLY, m.t_id);
                let (hl, dhvlen) = (field_len(&m.response, HASH_LEN_MAX), field_len(&m.dh_value, DH_VALUE_LEN_MAX));
                out.extend_from_slice(&[hl as u8, 0, u8::from(m.challenge.is_some()), 0]);
                out.extend_from_slice(&(dhvlen as u16).to_le_bytes());
                out.extend_from_slice(&m.seqnum.to_le_bytes());
                put_field(out, Some(&m.response), hl);
                put_field(out, m.challenge.as_deref(), hl);
                put_field(out, Some(&m.dh_value), dhvlen);
            }
            AuthMessage::Success1(m) => {
                header(out, AUTH_TYPE_DHCHAP, AUTH_ID_SUCCESS1, m.t_id);
                let hl = m.hl.min(HASH_LEN_MAX as u8);
                out.extend_from_slice(&[hl, 0, u8::from(m.response.is_some())]);
                out.extend_from_slice(&[0; 7]);
                // R2 is always sent, zeroed when RVALID is clear (NVMe Base;
                // Linux nvmet does so, SPDK sends 16 bytes then).
                put_field(out, m.response.as_deref(), usize::from(hl));
            }
            AuthMessage::Success2(m) => {
                header(out, AUTH_TYPE_DHCHAP, AUTH_ID_SUCCESS2, m.t_id);
                out.extend_from_slice(&[0; 10]);
            }
            AuthMessage::Failure1(m) => encode_failure(m, AUTH_ID_FAILURE1, out),
            AuthMessage::Failure2(m) => encode_failure(m, AUTH_ID_FAILURE2, out),
        }
    }

    /// The encoded message.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// The transaction id of the message.
    pub fn t_id(&self) -> u16 {
        match self {
            AuthMessage::Negotiate(m) => m.t_id,
            AuthMessage::Challenge(m) => m.t_id,
            AuthMessage::Reply(m) => m.t_id,
            AuthMessage::Success1(m) => m.t_id,
            AuthMessage::Success2(m) => m.t_id,
            AuthMessage::Failure1(m) | AuthMessage::Failure2(m) => m.t_id,
        }
    }

    /// The message's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            AuthMessage::Negotiate(_) => "AUTH_Negotiate",
            AuthMessage::Challenge(_) => "DH-HMAC-CHAP_Challenge",
            AuthMessage::Reply(_) => "DH-HMAC-CHAP_Reply",
            AuthMessage::Success1(_) => "DH-HMAC-CHAP_Success1",
            AuthMessage::Success2(_) => "DH-HMAC-CHAP_Success2",
            AuthMessage::Failure1(_) => "AUTH_Failure1",
            AuthMessage::Failure2(_) => "AUTH_Failure2",
        }
    }
}

fn decode_negotiate(buf: &[u8], t_id: u16) -> Result<Negotiate, AuthError> {
    need(buf, NEGOTIATE_FIXED_LEN)?;
    let (sc_c, napd) = (buf[6], usize::from(buf[7]));
    let len = NEGOTIATE_FIXED_LEN + napd * DESCRIPTOR_LEN;
    if len > AUTH_MESSAGE_LEN_MAX {
        return Err(AuthError::Malformed("too many protocol descriptors"));
    }
    need(buf, len)?;
    let mut protocols = Vec::with_capacity(napd);
    for d in buf[NEGOTIATE_FIXED_LEN..len].chunks_exact(DESCRIPTOR_LEN) {
        let (halen, dhlen) = (usize::from(d[2]), usize::from(d[3]));
        if halen > DESCRIPTOR_ID_SLOTS || dhlen > DESCRIPTOR_ID_SLOTS {
            return Err(AuthError::Malformed("halen or dhlen above 30"));
        }
        let ids = &d[4..];
        protocols.push(ProtocolDescriptor {
            auth_id: d[0],
            hash_ids: ids[..halen].to_vec(),
            dh_group_ids: ids[DESCRIPTOR_ID_SLOTS..DESCRIPTOR_ID_SLOTS + dhlen].to_vec(),
        });
    }
    Ok(Negotiate { t_id, sc_c, protocols })
}

fn decode_challenge(buf: &[u8], t_id: u16) -> Result<Challenge, AuthError> {
    need(buf, DHCHAP_FIXED_LEN)?;
    let hl = hash_len(buf[6])?;
    let dhvlen = dh_value_len(buf, 10)?;
    need(buf, DHCHAP_FIXED_LEN + hl + dhvlen)?;
    let c1_end = DHCHAP_FIXED_LEN + hl;
    Ok(Challenge {
        t_id,
        hash_id: buf[8],
        dh_group_id: buf[9],
        seqnum: le32(buf, 12),
        challenge: buf[DHCHAP_FIXED_LEN..c1_end].to_vec(),
        dh_value: buf[c1_end..c1_end + dhvlen].to_vec(),
    })
}

fn decode_reply(buf: &[u8], t_id: u16) -> Result<Reply, AuthError> {
    need(buf, DHCHAP_FIXED_LEN)?;
    let hl = hash_len(buf[6])?;
    let cvalid = flag(buf[8], "cvalid is neither 0 nor 1")?;
    let dhvlen = dh_value_len(buf, 10)?;
    need(buf, DHCHAP_FIXED_LEN + 2 * hl + dhvlen)?;
    let r1 = DHCHAP_FIXED_LEN;
    let c2 = r1 + hl;
    let dh = c2 + hl;
    Ok(Reply {
        t_id,
        seqnum: le32(buf, 12),
        response: buf[r1..c2].to_vec(),
        challenge: cvalid.then(|| buf[c2..dh].to_vec()),
        dh_value: buf[dh..dh + dhvlen].to_vec(),
    })
}

fn decode_success1(buf: &[u8], t_id: u16) -> Result<Success1, AuthError> {
    need(buf, DHCHAP_FIXED_LEN)?;
    let hl = hash_len(buf[6])?;
    let rvalid = flag(buf[8], "rvalid is neither 0 nor 1")?;
    let response = if rvalid {
        need(buf, DHCHAP_FIXED_LEN + hl)?;
        Some(buf[DHCHAP_FIXED_LEN..DHCHAP_FIXED_LEN + hl].to_vec())
    } else {
        None
    };
    Ok(Success1 { t_id, hl: buf[6], response })
}

fn decode_failure(buf: &[u8], t_id: u16) -> Result<Failure, AuthError> {
    need(buf, FAILURE_LEN)?;
    Ok(Failure { t_id, reason_code: buf[6], explanation: FailureReason::from_code(buf[7]) })
}

fn header(out: &mut Vec<u8>, auth_type: u8, auth_id: u8, t_id: u16) {
    out.extend_from_slice(&[auth_type, auth_id, 0, 0]);
    out.extend_from_slice(&t_id.to_le_bytes());
}

/// The encoded length of a variable field: longer fields are cut to the
/// bound (a caller bug, never the case for decoded messages).
fn field_len(field: &[u8], max: usize) -> usize {
    field.len().min(max)
}

/// Write exactly `len` bytes: `value` cut or zero-filled, or zeros if None.
fn put_field(out: &mut Vec<u8>, value: Option<&[u8]>, len: usize) {
    let value = value.unwrap_or(&[]);
    let used = value.len().min(len);
    out.extend_from_slice(&value[..used]);
    out.resize(out.len() + (len - used), 0);
}

fn encode_negotiate(m: &Negotiate, out: &mut Vec<u8>) {
    header(out, AUTH_TYPE_COMMON, AUTH_ID_NEGOTIATE, m.t_id);
    let napd_max = (AUTH_MESSAGE_LEN_MAX - NEGOTIATE_FIXED_LEN) / DESCRIPTOR_LEN;
    let protocols = &m.protocols[..m.protocols.len().min(napd_max)];
    out.extend_from_slice(&[m.sc_c, protocols.len() as u8]);
    for p in protocols {
        let hashes = &p.hash_ids[..p.hash_ids.len().min(DESCRIPTOR_ID_SLOTS)];
        let groups = &p.dh_group_ids[..p.dh_group_ids.len().min(DESCRIPTOR_ID_SLOTS)];
        out.extend_from_slice(&[p.auth_id, 0, hashes.len() as u8, groups.len() as u8]);
        put_field(out, Some(hashes), DESCRIPTOR_ID_SLOTS);
        put_field(out, Some(groups), DESCRIPTOR_ID_SLOTS);
    }
}

fn encode_failure(m: &Failure, auth_id: u8, out: &mut Vec<u8>) {
    header(out, AUTH_TYPE_COMMON, auth_id, m.t_id);
    out.extend_from_slice(&[m.reason_code, m.explanation.code()]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Negotiate the Linux host sends (drivers/nvme/host/auth.c
    /// `nvme_auth_set_dhchap_negotiate_data`): one descriptor, hashes 1..=3 in
    /// slots 0..3, groups 0..=5 in slots 30..36, 72 bytes.
    #[test]
    fn negotiate_matches_linux_host_layout() {
        let m = AuthMessage::Negotiate(Negotiate {
            t_id: 0x1234,
            sc_c: 0,
            protocols: vec![ProtocolDescriptor::dhchap(&HashId::ALL, &DhGroup::ALL)],
        });
        let b = m.to_bytes();
        assert_eq!(b.len(), 72);
        assert_eq!(&b[..12], &[0x00, 0x00, 0, 0, 0x34, 0x12, 0x00, 0x01, 0x01, 0x00, 3, 6]);
        assert_eq!(&b[12..15], &[1, 2, 3]);
        assert!(b[15..42].iter().all(|&x| x == 0));
        assert_eq!(&b[42..48], &[0, 1, 2, 3, 4, 5]);
        assert!(b[48..].iter().all(|&x| x == 0));
        assert_eq!(AuthMessage::decode(&b).unwrap(), m);
    }

    #[test]
    fn fixed_offsets() {
        let c = AuthMessage::Challenge(Challenge {
            t_id: 7,
            hash_id: 2,
            dh_group_id: 1,
            seqnum: 0xa1b2c3d4,
            challenge: vec![0xcc; 48],
            dh_value: vec![0xdd; 256],
        });
        let b = c.to_bytes();
        assert_eq!(b.len(), 16 + 48 + 256);
        assert_eq!(&b[..16], &[1, 1, 0, 0, 7, 0, 48, 0, 2, 1, 0x00, 0x01, 0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(AuthMessage::decode(&b).unwrap(), c);

        let r = AuthMessage::Reply(Reply {
            t_id: 7,
            seqnum: 9,
            response: vec![0xaa; 32],
            challenge: None,
            dh_value: vec![],
        });
        let b = r.to_bytes();
        assert_eq!(b.len(), 16 + 64);
        assert_eq!(&b[..16], &[1, 2, 0, 0, 7, 0, 32, 0, 0, 0, 0, 0, 9, 0, 0, 0]);
        assert!(b[48..].iter().all(|&x| x == 0), "C2 is zeroed without CVALID");
        assert_eq!(AuthMessage::decode(&b).unwrap(), r);

        let s = AuthMessage::Success1(Success1 { t_id: 7, hl: 32, response: None });
        let b = s.to_bytes();
        assert_eq!(b.len(), 48);
        assert_eq!(&b[..9], &[1, 3, 0, 0, 7, 0, 32, 0, 0]);
        assert_eq!(AuthMessage::decode(&b).unwrap(), s);
        // SPDK's short form without R2.
        assert_eq!(AuthMessage::decode(&b[..16]).unwrap(), s);

        let f = AuthMessage::Failure1(Failure::new(7, FailureReason::HashUnusable));
        assert_eq!(f.to_bytes(), [0, 0xf1, 0, 0, 7, 0, 1, 4]);
        let f2 = AuthMessage::Failure2(Failure::new(7, FailureReason::Failed));
        assert_eq!(f2.to_bytes(), [0, 0xf0, 0, 0, 7, 0, 1, 1]);
        assert_eq!(
            AuthMessage::Success2(Success2 { t_id: 7 }).to_bytes(),
            [1, 4, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn trailing_padding_is_ignored() {
        let f = AuthMessage::Failure1(Failure::new(3, FailureReason::Failed));
        let mut b = f.to_bytes();
        b.resize(4096, 0);
        assert_eq!(AuthMessage::decode(&b).unwrap(), f);
    }

    #[test]
    fn rejects_bad_structure() {
        assert!(matches!(AuthMessage::decode(&[]), Err(AuthError::Truncated { .. })));
        assert!(matches!(AuthMessage::decode(&[1, 9, 0, 0, 0, 0]), Err(AuthError::UnknownMessage { .. })));
        let mut c = vec![1, 1, 0, 0, 0, 0, 65, 0, 1, 0, 0, 0, 1, 0, 0, 0];
        assert_eq!(AuthMessage::decode(&c), Err(AuthError::Malformed("hl larger than any hash")));
        c[6] = 32;
        c[10..12].copy_from_slice(&1025u16.to_le_bytes());
        assert_eq!(AuthMessage::decode(&c), Err(AuthError::Malformed("dhvlen larger than any DH group")));
        c[10..12].copy_from_slice(&256u16.to_le_bytes());
        assert!(matches!(AuthMessage::decode(&c), Err(AuthError::Truncated { needed: 304, .. })));
        let r = [1, 2, 0, 0, 0, 0, 32, 0, 2, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(AuthMessage::decode(&r), Err(AuthError::Malformed(_))));
        let mut n = vec![0u8; 8 + 64];
        n[7] = 1;
        n[10] = 31;
        assert!(matches!(AuthMessage::decode(&n), Err(AuthError::Malformed(_))));
        n[7] = 2;
        n[10] = 0;
        assert!(matches!(AuthMessage::decode(&n), Err(AuthError::Truncated { .. })));
    }
}
