//! Finite-field Diffie-Hellman over the RFC 7919 groups, with a constant-time
//! modular exponentiation (crypto-bigint).
//!
//! - Generator 2, primes from RFC 7919 (each `p = 2^b − 2^(b−64) +
//!   2^64·(⌊2^(b−130)·e⌋ + X) − 1`; the hex below was recomputed from that
//!   formula and checked to be a safe prime, and equals Linux `crypto/dh.c`).
//! - Private exponent: Linux (`crypto/dh.c` `dh_safe_prime_gen_privkey`, NIST
//!   SP 800-56A rev3 5.6.1.1.3) takes N = the power of two at or above twice the
//!   group's security strength: 256 bits for ffdhe2048 (112) and ffdhe3072
//!   (128), 512 bits for ffdhe4096 (152), ffdhe6144 (176) and ffdhe8192 (200).
//!   We draw N random bits (x = 0 becomes 1).
//! - Public values and the shared value are big-endian, left padded to the
//!   prime's size (Linux `mpi_write_to_sgl` pads; SPDK sets OpenSSL's DH
//!   padding).
//! - A peer value must be exactly the group size and satisfy 1 < y < p − 1.
//!   Linux checks 2 ≤ y < p outside FIPS mode and also rejects p − 1 in FIPS
//!   mode (its y^q check); we reject p − 1 always, the element of order 2.

use std::fmt;
use std::sync::OnceLock;

use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
use crypto_bigint::{BoxedUint, Odd};
use zeroize::{Zeroize, Zeroizing};

use super::{AuthError, DhGroup, Secret};

const FFDHE2048_P_HEX: &str = concat!(
    "ffffffffffffffffadf85458a2bb4a9aafdc5620273d3cf1d8b9c583ce2d3695a9e13641146433fbcc939dce249b3ef9",
    "7d2fe363630c75d8f681b202aec4617ad3df1ed5d5fd65612433f51f5f066ed0856365553ded1af3b557135e7f57c935",
    "984f0c70e0e68b77e2a689daf3efe8721df158a136ade73530acca4f483a797abc0ab182b324fb61d108a94bb2c8e3fb",
    "b96adab760d7f4681d4f42a3de394df4ae56ede76372bb190b07a7c8ee0a6d709e02fce1cdf7e2ecc03404cd28342f61",
    "9172fe9ce98583ff8e4f1232eef28183c3fe3b1b4c6fad733bb5fcbc2ec22005c58ef1837d1683b2c6f34a26c1b2effa",
    "886b423861285c97ffffffffffffffff",
);
const FFDHE3072_P_HEX: &str = concat!(
    "ffffffffffffffffadf85458a2bb4a9aafdc5620273d3cf1d8b9c583ce2d3695a9e13641146433fbcc939dce249b3ef9",
    "7d2fe363630c75d8f681b202aec4617ad3df1ed5d5fd65612433f51f5f066ed0856365553ded1af3b557135e7f57c935",
    "984f0c70e0e68b77e2a689daf3efe8721df158a136ade73530acca4f483a797abc0ab182b324fb61d108a94bb2c8e3fb",
    "b96adab760d7f4681d4f42a3de394df4ae56ede76372bb190b07a7c8ee0a6d709e02fce1cdf7e2ecc03404cd28342f61",
    "9172fe9ce98583ff8e4f1232eef28183c3fe3b1b4c6fad733bb5fcbc2ec22005c58ef1837d1683b2c6f34a26c1b2effa",
    "886b4238611fcfdcde355b3b6519035bbc34f4def99c023861b46fc9d6e6c9077ad91d2691f7f7ee598cb0fac186d91c",
    "aefe130985139270b4130c93bc437944f4fd4452e2d74dd364f2e21e71f54bff5cae82ab9c9df69ee86d2bc522363a0d",
    "abc521979b0deada1dbf9a42d5c4484e0abcd06bfa53ddef3c1b20ee3fd59d7c25e41d2b66c62e37ffffffffffffffff",
);
const FFDHE4096_P_HEX: &str = concat!(
    "ffffffffffffffffadf85458a2bb4a9aafdc5620273d3cf1d8b9c583ce2d3695a9e13641146433fbcc939dce249b3ef9",
    "7d2fe363630c75d8f681b202aec4617ad3df1ed5d5fd65612433f51f5f066ed0856365553ded1af3b557135e7f57c935",
    "984f0c70e0e68b77e2a689daf3efe8721df158a136ade73530acca4f483a797abc0ab182b324fb61d108a94bb2c8e3fb",
    "b96adab760d7f4681d4f42a3de394df4ae56ede76372bb190b07a7c8ee0a6d709e02fce1cdf7e2ecc03404cd28342f61",
    "9172fe9ce98583ff8e4f1232eef28183c3fe3b1b4c6fad733bb5fcbc2ec22005c58ef1837d1683b2c6f34a26c1b2effa",
    "886b4238611fcfdcde355b3b6519035bbc34f4def99c023861b46fc9d6e6c9077ad91d2691f7f7ee598cb0fac186d91c",
    "aefe130985139270b4130c93bc437944f4fd4452e2d74dd364f2e21e71f54bff5cae82ab9c9df69ee86d2bc522363a0d",
    "abc521979b0deada1dbf9a42d5c4484e0abcd06bfa53ddef3c1b20ee3fd59d7c25e41d2b669e1ef16e6f52c3164df4fb",
    "7930e9e4e58857b6ac7d5f42d69f6d187763cf1d5503400487f55ba57e31cc7a7135c886efb4318aed6a1e012d9e6832",
    "a907600a918130c46dc778f971ad0038092999a333cb8b7a1a1db93d7140003c2a4ecea9f98d0acc0a8291cdcec97dcf",
    "8ec9b55a7f88a46b4db5a851f44182e1c68a007e5e655f6affffffffffffffff",
);
const FFDHE6144_P_HEX: &str = concat!(
    "ffffffffffffffffadf85458a2bb4a9aafdc5620273d3cf1d8b9c583ce2d3695a9e13641146433fbcc939dce249b3ef9",
    "7d2fe363630c75d8f681b202aec4617ad3df1ed5d5fd65612433f51f5f066ed0856365553ded1af3b557135e7f57c935",
    "984f0c70e0e68b77e2a689daf3efe8721df158a136ade73530acca4f483a797abc0ab182b324fb61d108a94bb2c8e3fb",
    "b96adab760d7f4681d4f42a3de394df4ae56ede76372bb190b07a7c8ee0a6d709e02fce1cdf7e2ecc03404cd28342f61",
    "9172fe9ce98583ff8e4f1232eef28183c3fe3b1b4c6fad733bb5fcbc2ec22005c58ef1837d1683b2c6f34a26c1b2effa",
    "886b4238611fcfdcde355b3b6519035bbc34f4def99c023861b46fc9d6e6c9077ad91d2691f7f7ee598cb0fac186d91c",
    "aefe130985139270b4130c93bc437944f4fd4452e2d74dd364f2e21e71f54bff5cae82ab9c9df69ee86d2bc522363a0d",
    "abc521979b0deada1dbf9a42d5c4484e0abcd06bfa53ddef3c1b20ee3fd59d7c25e41d2b669e1ef16e6f52c3164df4fb",
    "7930e9e4e58857b6ac7d5f42d69f6d187763cf1d5503400487f55ba57e31cc7a7135c886efb4318aed6a1e012d9e6832",
    "a907600a918130c46dc778f971ad0038092999a333cb8b7a1a1db93d7140003c2a4ecea9f98d0acc0a8291cdcec97dcf",
    "8ec9b55a7f88a46b4db5a851f44182e1c68a007e5e0dd9020bfd64b645036c7a4e677d2c38532a3a23ba4442caf53ea6",
    "3bb454329b7624c8917bdd64b1c0fd4cb38e8c334c701c3acdad0657fccfec719b1f5c3e4e46041f388147fb4cfdb477",
    "a52471f7a9a96910b855322edb6340d8a00ef092350511e30abec1fff9e3a26e7fb29f8c183023c3587e38da0077d9b4",
    "763e4e4b94b2bbc194c6651e77caf992eeaac0232a281bf6b3a739c1226116820ae8db5847a67cbef9c9091b462d538c",
    "d72b03746ae77f5e62292c311562a846505dc82db854338ae49f5235c95b91178ccf2dd5cacef403ec9d1810c6272b04",
    "5b3b71f9dc6b80d63fdd4a8e9adb1e6962a69526d43161c1a41d570d7938dad4a40e329cd0e40e65ffffffffffffffff",
);
const FFDHE8192_P_HEX: &str = concat!(
    "ffffffffffffffffadf85458a2bb4a9aafdc5620273d3cf1d8b9c583ce2d3695a9e13641146433fbcc939dce249b3ef9",
    "7d2fe363630c75d8f681b202aec4617ad3df1ed5d5fd65612433f51f5f066ed0856365553ded1af3b557135e7f57c935",
    "984f0c70e0e68b77e2a689daf3efe8721df158a136ade73530acca4f483a797abc0ab182b324fb61d108a94bb2c8e3fb",
    "b96adab760d7f4681d4f42a3de394df4ae56ede76372bb190b07a7c8ee0a6d709e02fce1cdf7e2ecc03404cd28342f61",
    "9172fe9ce98583ff8e4f1232eef28183c3fe3b1b4c6fad733bb5fcbc2ec22005c58ef1837d1683b2c6f34a26c1b2effa",
    "886b4238611fcfdcde355b3b6519035bbc34f4def99c023861b46fc9d6e6c9077ad91d2691f7f7ee598cb0fac186d91c",
    "aefe130985139270b4130c93bc437944f4fd4452e2d74dd364f2e21e71f54bff5cae82ab9c9df69ee86d2bc522363a0d",
    "abc521979b0deada1dbf9a42d5c4484e0abcd06bfa53ddef3c1b20ee3fd59d7c25e41d2b669e1ef16e6f52c3164df4fb",
    "7930e9e4e58857b6ac7d5f42d69f6d187763cf1d5503400487f55ba57e31cc7a7135c886efb4318aed6a1e012d9e6832",
    "a907600a918130c46dc778f971ad0038092999a333cb8b7a1a1db93d7140003c2a4ecea9f98d0acc0a8291cdcec97dcf",
    "8ec9b55a7f88a46b4db5a851f44182e1c68a007e5e0dd9020bfd64b645036c7a4e677d2c38532a3a23ba4442caf53ea6",
    "3bb454329b7624c8917bdd64b1c0fd4cb38e8c334c701c3acdad0657fccfec719b1f5c3e4e46041f388147fb4cfdb477",
    "a52471f7a9a96910b855322edb6340d8a00ef092350511e30abec1fff9e3a26e7fb29f8c183023c3587e38da0077d9b4",
    "763e4e4b94b2bbc194c6651e77caf992eeaac0232a281bf6b3a739c1226116820ae8db5847a67cbef9c9091b462d538c",
    "d72b03746ae77f5e62292c311562a846505dc82db854338ae49f5235c95b91178ccf2dd5cacef403ec9d1810c6272b04",
    "5b3b71f9dc6b80d63fdd4a8e9adb1e6962a69526d43161c1a41d570d7938dad4a40e329ccff46aaa36ad004cf600c838",
    "1e425a31d951ae64fdb23fcec9509d43687feb69edd1cc5e0b8cc3bdf64b10ef86b63142a3ab8829555b2f747c932665",
    "cb2c0f1cc01bd70229388839d2af05e454504ac78b7582822846c0ba35c35f5c59160cc046fd8251541fc68c9c86b022",
    "bb7099876a460e7451a8a93109703fee1c217e6c3826e52c51aa691e0e423cfc99e9e31650c1217b624816cdad9a95f9",
    "d5b8019488d9c0a0a1fe3075a577e23183f81d4a3f2fa4571efc8ce0ba8a4fe8b6855dfe72b0a66eded2fbabfbe58a30",
    "fafabe1c5d71a87e2f741ef8c1fe86fea6bbfde530677f0d97d11d49f7a8443d0822e506a9f4614e011e2a94838ff88c",
    "d68c8bb7c5c6424cffffffffffffffff",
);

/// Bits of the private exponent Linux uses for `group` (see the module docs).
pub fn private_exponent_bits(group: DhGroup) -> u32 {
    match group {
        DhGroup::Null => 0,
        DhGroup::Ffdhe2048 | DhGroup::Ffdhe3072 => 256,
        DhGroup::Ffdhe4096 | DhGroup::Ffdhe6144 | DhGroup::Ffdhe8192 => 512,
    }
}

/// The group's prime, big-endian (None for the null group).
pub fn prime(group: DhGroup) -> Option<&'static [u8]> {
    params(group).map(|p| &p.p[..])
}

struct GroupParams {
    p: Vec<u8>,
    p_minus_1: Vec<u8>,
    monty: BoxedMontyParams,
}

fn params(group: DhGroup) -> Option<&'static GroupParams> {
    static PARAMS: [OnceLock<GroupParams>; 5] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let (slot, hex) = match group {
        DhGroup::Null => return None,
        DhGroup::Ffdhe2048 => (0, FFDHE2048_P_HEX),
        DhGroup::Ffdhe3072 => (1, FFDHE3072_P_HEX),
        DhGroup::Ffdhe4096 => (2, FFDHE4096_P_HEX),
        DhGroup::Ffdhe6144 => (3, FFDHE6144_P_HEX),
        DhGroup::Ffdhe8192 => (4, FFDHE8192_P_HEX),
    };
    Some(PARAMS[slot].get_or_init(|| {
        let p = decode_hex(hex);
        debug_assert_eq!(p.len(), group.value_len());
        let mut p_minus_1 = p.clone();
        // p ends in 0xff, so p − 1 only touches the last byte.
        *p_minus_1.last_mut().expect("prime is not empty") -= 1;
        let modulus = BoxedUint::from_be_slice(&p, group.bits()).expect("prime fits its group size");
        let modulus = Odd::new(modulus).expect("a safe prime is odd");
        GroupParams { p, p_minus_1, monty: BoxedMontyParams::new_vartime(modulus) }
    }))
}

fn decode_hex(hex: &str) -> Vec<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => unreachable!("prime constants are lowercase hex"),
    };
    hex.as_bytes().chunks_exact(2).map(|pair| digit(pair[0]) << 4 | digit(pair[1])).collect()
}

/// Check a peer's DH value: exactly the group size, big-endian, 1 < y < p − 1.
pub fn check_peer_value(group: DhGroup, peer: &[u8]) -> Result<(), AuthError> {
    let params = params(group).ok_or(AuthError::InvalidDhValue("the null group has no DH values"))?;
    if peer.len() != params.p.len() {
        return Err(AuthError::InvalidDhValue("length is not the group size"));
    }
    // Same-length big-endian strings compare like the numbers. Public values
    // are public, so a variable-time comparison is fine.
    let (last, high) = peer.split_last().expect("group size is not zero");
    if high.iter().all(|&b| b == 0) && *last <= 1 {
        return Err(AuthError::InvalidDhValue("value is 0 or 1"));
    }
    if peer >= &params.p_minus_1[..] {
        return Err(AuthError::InvalidDhValue("value is p - 1 or larger"));
    }
    Ok(())
}

/// Private exponent, zeroed on drop.
struct PrivateExponent(BoxedUint);

impl Drop for PrivateExponent {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// One side's ephemeral key pair for one transaction.
pub struct DhKeyPair {
    group: DhGroup,
    private: PrivateExponent,
    public: Vec<u8>,
}

impl fmt::Debug for DhKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DhKeyPair").field("group", &self.group).field("private", &"<redacted>").finish()
    }
}

impl DhKeyPair {
    /// A fresh key pair; `fill` supplies the random bits of the exponent.
    pub fn generate(group: DhGroup, fill: &mut dyn FnMut(&mut [u8])) -> Result<DhKeyPair, AuthError> {
        let params = params(group).ok_or(AuthError::Unsupported("DH key pair for the null group"))?;
        let exponent_bits = private_exponent_bits(group);
        let mut random = Zeroizing::new(vec![0u8; exponent_bits as usize / 8]);
        fill(&mut random);
        if random.iter().all(|&b| b == 0) {
            // x = 0 would make the public value 1; the chance is 2^-256.
            *random.last_mut().expect("exponent is not empty") = 1;
        }
        let x = BoxedUint::from_be_slice(&random, exponent_bits).expect("exponent fits its size");
        let private = PrivateExponent(x);
        let two = BoxedUint::from_be_slice(&[2], group.bits()).expect("2 fits");
        let public = BoxedMontyForm::new(two, params.monty.clone())
            .pow_bounded_exp(&private.0, exponent_bits)
            .retrieve()
            .to_be_bytes()
            .into_vec();
        debug_assert_eq!(public.len(), group.value_len());
        Ok(DhKeyPair { group, private, public })
    }

    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// Our public value `g^x mod p`, big-endian, the group size.
    pub fn public_value(&self) -> &[u8] {
        &self.public
    }

    /// The shared value `y^x mod p` (big-endian, the group size) after
    /// checking the peer's value.
    pub fn shared_value(&self, peer: &[u8]) -> Result<Secret, AuthError> {
        check_peer_value(self.group, peer)?;
        let params = params(self.group).expect("key pairs exist only for real groups");
        let y = BoxedUint::from_be_slice(peer, self.group.bits())
            .map_err(|_| AuthError::InvalidDhValue("value does not fit the group"))?;
        let mut z = BoxedMontyForm::new(y, params.monty.clone())
            .pow_bounded_exp(&self.private.0, private_exponent_bits(self.group));
        let mut value = z.retrieve();
        z.zeroize();
        let shared = Secret::new(value.to_be_bytes().into_vec());
        value.zeroize();
        Ok(shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter_fill(seed: u8) -> impl FnMut(&mut [u8]) {
        let mut n = seed;
        move |buf: &mut [u8]| {
            for b in buf {
                n = n.wrapping_mul(31).wrapping_add(7);
                *b = n;
            }
        }
    }

    #[test]
    fn primes_have_rfc7919_shape() {
        for group in DhGroup::ALL.into_iter().skip(1) {
            let p = prime(group).unwrap();
            assert_eq!(p.len() * 8, group.bits() as usize);
            // High and low 64 bits all ones; then the bits of e (0xadf85458a2bb4a9a...).
            assert!(p[..8].iter().chain(&p[p.len() - 8..]).all(|&b| b == 0xff), "{group}");
            assert_eq!(&p[8..16], &[0xad, 0xf8, 0x54, 0x58, 0xa2, 0xbb, 0x4a, 0x9a], "{group}");
        }
        // The 64 bits just above the low ones differ per group (RFC 7919 appendix A).
        let tail = |g| {
            let p = prime(g).unwrap();
            u64::from_be_bytes(p[p.len() - 16..p.len() - 8].try_into().unwrap())
        };
        assert_eq!(tail(DhGroup::Ffdhe2048), 0x886b423861285c97);
        assert_eq!(tail(DhGroup::Ffdhe3072), 0x25e41d2b66c62e37);
        assert_eq!(tail(DhGroup::Ffdhe4096), 0xc68a007e5e655f6a);
        assert_eq!(tail(DhGroup::Ffdhe6144), 0xa40e329cd0e40e65);
        assert_eq!(tail(DhGroup::Ffdhe8192), 0xd68c8bb7c5c6424c);
    }

    #[test]
    fn agreement_ffdhe2048() {
        let a = DhKeyPair::generate(DhGroup::Ffdhe2048, &mut counter_fill(1)).unwrap();
        let b = DhKeyPair::generate(DhGroup::Ffdhe2048, &mut counter_fill(2)).unwrap();
        assert_eq!(a.public_value().len(), 256);
        let ab = a.shared_value(b.public_value()).unwrap();
        let ba = b.shared_value(a.public_value()).unwrap();
        assert_eq!(ab.as_bytes(), ba.as_bytes());
        assert_eq!(ab.len(), 256);
        assert!(!format!("{a:?}").contains("private: 0"));
    }

    #[test]
    fn exponent_one_gives_generator() {
        // All-zero randomness becomes x = 1, so the public value is g = 2.
        let a = DhKeyPair::generate(DhGroup::Ffdhe2048, &mut |b: &mut [u8]| b.fill(0)).unwrap();
        let mut two = vec![0u8; 256];
        two[255] = 2;
        assert_eq!(a.public_value(), &two[..]);
    }

    #[test]
    fn peer_value_range() {
        let g = DhGroup::Ffdhe2048;
        let p = prime(g).unwrap().to_vec();
        let mut v = vec![0u8; 256];
        assert!(check_peer_value(g, &v).is_err()); // 0
        v[255] = 1;
        assert!(check_peer_value(g, &v).is_err()); // 1
        v[255] = 2;
        assert!(check_peer_value(g, &v).is_ok()); // 2
        let mut pm1 = p.clone();
        pm1[255] -= 1;
        assert!(check_peer_value(g, &pm1).is_err()); // p - 1
        let mut pm2 = p.clone();
        pm2[255] -= 2;
        assert!(check_peer_value(g, &pm2).is_ok()); // p - 2
        assert!(check_peer_value(g, &p).is_err()); // p
        assert!(check_peer_value(g, &[0xff; 256]).is_err()); // > p
        assert!(check_peer_value(g, &v[1..]).is_err()); // short
        assert!(check_peer_value(DhGroup::Null, &[]).is_err());
        let a = DhKeyPair::generate(g, &mut counter_fill(3)).unwrap();
        assert!(a.shared_value(&pm1).is_err());
    }
}
