//! The DH-HMAC-CHAP computations, byte for byte as Linux
//! (`drivers/nvme/host/auth.c` `nvme_auth_dhchap_setup_host_response` /
//! `_ctrl_response`, `drivers/nvme/target/auth.c` `nvmet_auth_host_hash` /
//! `nvmet_auth_ctrl_hash`, `drivers/nvme/common/auth.c`) and SPDK
//! (`lib/nvme/nvme_auth.c` `spdk_nvme_dhchap_calculate`) do them.
//!
//! The HMAC key of a response is the *transformed* key ([`DhchapKey::transform`]):
//! its length is the hash length of the secret's own hash, or the secret's
//! length when `hh` = 00. Kernels before "nvme-auth: use transformed key size
//! to create resp" (October 2023, so 6.12 has it) passed the secret's length
//! instead; the two agree whenever the secret is as long as its hash, which
//! nvme-cli enforces.
//!
//! Linux keeps the raw DH value `g^xy mod p` as its "session key" and uses it as
//! an HMAC key, which HMAC first hashes because it is longer than the hash's
//! block (256 bytes or more against 64 or 128): that is `Ks = H(g^xy mod p)`
//! exactly, so this module keeps `Ks` itself.
//!
//! [`DhchapKey::transform`]: super::DhchapKey::transform

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::{HashId, Secret};

/// "HostHost": the host response's role string (8 bytes, no NUL).
const ROLE_HOST: &[u8] = b"HostHost";
/// "Controller": the controller response's role string (10 bytes, no NUL).
const ROLE_CONTROLLER: &[u8] = b"Controller";

/// HMAC over the concatenation of `parts`.
pub fn hmac(hash: HashId, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }
    match hash {
        HashId::Sha256 => run::<Hmac<Sha256>>(key, parts),
        HashId::Sha384 => run::<Hmac<Sha384>>(key, parts),
        HashId::Sha512 => run::<Hmac<Sha512>>(key, parts),
    }
}

/// Plain hash of `data`.
pub fn digest(hash: HashId, data: &[u8]) -> Vec<u8> {
    match hash {
        HashId::Sha256 => Sha256::digest(data).to_vec(),
        HashId::Sha384 => Sha384::digest(data).to_vec(),
        HashId::Sha512 => Sha512::digest(data).to_vec(),
    }
}

/// The session key `Ks = H(g^xy mod p)` from the shared DH value.
pub fn session_key(hash: HashId, shared_value: &Secret) -> Secret {
    Secret::new(digest(hash, shared_value.as_bytes()))
}

/// The augmented challenge `Ca = HMAC(Ks, C)` used instead of C when a DH
/// group is in use.
pub fn augmented_challenge(hash: HashId, session_key: &Secret, challenge: &[u8]) -> Vec<u8> {
    hmac(hash, session_key.as_bytes(), &[challenge])
}

/// The inputs of one response that are not the key.
#[derive(Debug, Clone, Copy)]
pub struct ResponseInput<'a> {
    pub hash: HashId,
    /// C1 for the host response, C2 for the controller response.
    pub challenge: &'a [u8],
    /// `Ks` when a DH group is in use: the challenge is augmented with it.
    pub session_key: Option<&'a Secret>,
    /// S1 for the host response, S2 for the controller response.
    pub seqnum: u32,
    pub transaction_id: u16,
    /// The SC_C byte of the Negotiate message (0 without concatenation).
    pub sc_c: u8,
    pub host_nqn: &'a str,
    pub subsys_nqn: &'a str,
}

/// The host's response R1, keyed with the host key transformed with NQNh:
/// `HMAC(Kh, Ca ‖ S1 ‖ T_ID ‖ SC_C ‖ "HostHost" ‖ NQNh ‖ 00h ‖ NQNc)`.
pub fn host_response(transformed_host_key: &Secret, input: &ResponseInput<'_>) -> Vec<u8> {
    response(transformed_host_key, input, ROLE_HOST, input.host_nqn, input.subsys_nqn)
}

/// The controller's response R2, keyed with the controller key transformed
/// with NQNc: `HMAC(Kc, Ca ‖ S2 ‖ T_ID ‖ SC_C ‖ "Controller" ‖ NQNc ‖ 00h ‖ NQNh)`.
pub fn ctrl_response(transformed_ctrl_key: &Secret, input: &ResponseInput<'_>) -> Vec<u8> {
    response(transformed_ctrl_key, input, ROLE_CONTROLLER, input.subsys_nqn, input.host_nqn)
}

fn response(key: &Secret, input: &ResponseInput<'_>, role: &[u8], first_nqn: &str, second_nqn: &str) -> Vec<u8> {
    let augmented;
    let challenge = match input.session_key {
        Some(ks) => {
            augmented = augmented_challenge(input.hash, ks, input.challenge);
            &augmented[..]
        }
        None => input.challenge,
    };
    hmac(
        input.hash,
        key.as_bytes(),
        &[
            challenge,
            &input.seqnum.to_le_bytes(),
            &input.transaction_id.to_le_bytes(),
            &[input.sc_c],
            role,
            first_nqn.as_bytes(),
            &[0],
            second_nqn.as_bytes(),
        ],
    )
}

/// The generated PSK of secure channel concatenation, `HMAC(Ks, C1 ‖ C2)`
/// (NVMe Base 2.x "Generated PSK for TLS"; Linux `nvme_auth_generate_psk`).
pub fn generated_psk(hash: HashId, session_key: &Secret, c1: &[u8], c2: &[u8]) -> Secret {
    Secret::new(hmac(hash, session_key.as_bytes(), &[c1, c2]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2 (key "Jefe") for each SHA-2 length: the HMAC
    /// wrapper feeds the parts in order.
    #[test]
    fn hmac_rfc4231_case2() {
        let parts: [&[u8]; 2] = [b"what do ya want ", b"for nothing?"];
        assert_eq!(
            hex(&hmac(HashId::Sha256, b"Jefe", &parts)),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(&hmac(HashId::Sha384, b"Jefe", &parts)),
            "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649"
        );
        assert_eq!(
            hex(&hmac(HashId::Sha512, b"Jefe", &parts)),
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        );
    }

    /// The HMAC of a key longer than the hash's block equals the HMAC of its
    /// hash: the reason keeping `Ks = H(z)` matches Linux keeping `z`.
    #[test]
    fn long_key_hmac_is_hashed_key_hmac() {
        let z = Secret::new((0..=255u8).cycle().take(256).collect());
        for h in HashId::ALL {
            let ks = session_key(h, &z);
            assert_eq!(hmac(h, z.as_bytes(), &[b"challenge"]), augmented_challenge(h, &ks, b"challenge"));
            assert_eq!(hmac(h, z.as_bytes(), &[b"c1", b"c2"]), generated_psk(h, &ks, b"c1", b"c2").as_bytes());
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
