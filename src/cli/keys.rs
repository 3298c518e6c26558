//! `nvmf gen-dhchap-key | check-dhchap-key | gen-tls-key | check-tls-key`:
//! the key tools of nvme-cli 2.x, with its flags and its output.
//!
//! Facts (nvme-cli 2.x `nvme.c`, libnvme `linux.c`):
//! - `gen-dhchap-key` prints `DHHC-1:hh:<base64(T ‖ CRC-32(T))>:` where T is
//!   the secret transformed with the host NQN for hh ≠ 00 (the kernel
//!   transforms it once more; both ends do, so such keys interoperate).
//!   `-m` 1/2/3 ties the length to 32/48/64 bytes; `-m 0` takes any of them
//!   (32 by default). The NQN comes from `-n`, else `/etc/nvme/hostnqn`.
//! - `check-dhchap-key -k KEY` prints `Key is valid (HMAC h, length n, CRC
//!   xxxxxxxx)`; hh 01/02/03 must carry a 32/48/64-byte secret.
//! - `gen-tls-key` prints `NVMeTLSkey-1:hh:<base64>:` with hh 01 (32 bytes,
//!   the default) or 02 (48 bytes) and nothing else without `--insert`;
//!   excess `--secret` bytes are skipped with a warning.
//! - `check-tls-key -d KEY -n HOSTNQN -c SUBSYSNQN [-I 0|1] [-C]` prints the
//!   TLS PSK identity (never the PSK); `--compat` derives with the libnvme
//!   before 1.16 HKDF layout.
//! - nvme-cli's `-n/--hostnqn` and `-c/--subsysnqn` of the TLS tools are
//!   kept as they are (not `-q` / `-n` of the connect commands).
//!
//! Unlike nvme-cli, no message here repeats a key or a secret: an invalid one
//! is described, never echoed. Keyring insertion (`--insert`) is refused.

use anyhow::{bail, Context, Result};
use nvmf_proto::auth::tls_psk::{self, ConfiguredPsk, HkdfLabelLayout, IdentityVersion};
use nvmf_proto::auth::{os_random, DhchapKey, HashId, Secret};

#[derive(clap::Args, Debug)]
pub struct GenDhchapKeyArgs {
    /// Secret to use instead of a random one, in hexadecimal (as many bytes as the key length).
    #[arg(short = 's', long, value_name = "HEX")]
    pub secret: Option<SecretText>,
    /// Key length in bytes: 32, 48 or 64 (default: the HMAC's length, 32 with --hmac 0).
    #[arg(short = 'l', long, value_name = "BYTES")]
    pub key_length: Option<u32>,
    /// HMAC that transforms the key: 0 none, 1 SHA-256, 2 SHA-384, 3 SHA-512.
    #[arg(short = 'm', long, default_value_t = 0)]
    pub hmac: u32,
    /// Host NQN the key is transformed with (default: /etc/nvme/hostnqn).
    #[arg(short = 'n', long)]
    pub nqn: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct CheckDhchapKeyArgs {
    /// The key to check, DHHC-1:hh:<base64>:
    #[arg(short = 'k', long, value_name = "KEY")]
    pub key: SecretText,
}

#[derive(clap::Args, Debug)]
pub struct GenTlsKeyArgs {
    /// Secret to use instead of a random one, in hexadecimal (32 bytes with --hmac 1, 48 with 2).
    #[arg(short = 's', long, value_name = "HEX")]
    pub secret: Option<SecretText>,
    /// HMAC of the retained PSK: 1 SHA-256 (32-byte key), 2 SHA-384 (48-byte key).
    #[arg(short = 'm', long, default_value_t = 1)]
    pub hmac: u32,
    /// TLS PSK identity version: 0 (NVMe/TCP 1.0c) or 1 (NVMe/TCP 2.0); used with --insert only.
    #[arg(short = 'I', long, default_value_t = 0)]
    pub identity: u32,
    /// Host NQN of the retained key (with --insert only).
    #[arg(short = 'n', long)]
    pub hostnqn: Option<String>,
    /// Subsystem NQN of the retained key (with --insert only).
    #[arg(short = 'c', long)]
    pub subsysnqn: Option<String>,
    #[command(flatten)]
    pub keyring: KeyringArgs,
}

#[derive(clap::Args, Debug)]
pub struct CheckTlsKeyArgs {
    /// The TLS PSK to check, NVMeTLSkey-1:hh:<base64>:
    #[arg(short = 'd', long, value_name = "KEY")]
    pub keydata: Option<SecretText>,
    /// Host NQN of the identity (default: /etc/nvme/hostnqn).
    #[arg(short = 'n', long)]
    pub hostnqn: Option<String>,
    /// Subsystem NQN of the identity.
    #[arg(short = 'c', long)]
    pub subsysnqn: Option<String>,
    /// TLS PSK identity version: 0 (NVMe/TCP 1.0c) or 1 (NVMe/TCP 2.0, with the PSK digest).
    #[arg(short = 'I', long, default_value_t = 0)]
    pub identity: u32,
    #[command(flatten)]
    pub keyring: KeyringArgs,
}

/// nvme-cli's keyring flags, accepted so its command lines parse; inserting
/// into a kernel keyring is not supported.
#[derive(clap::Args, Debug)]
pub struct KeyringArgs {
    /// Derive with the libnvme before 1.16 (non RFC 8446) HKDF layout, for older peers.
    #[arg(short = 'C', long)]
    pub compat: bool,
    #[arg(short = 'i', long, hide = true)]
    pub insert: bool,
    #[arg(short = 'k', long, hide = true)]
    pub keyring: Option<String>,
    #[arg(short = 't', long, hide = true)]
    pub keytype: Option<String>,
    #[arg(short = 'f', long, hide = true)]
    pub keyfile: Option<String>,
}

impl KeyringArgs {
    fn refuse_insert(&self) -> Result<()> {
        if self.insert {
            bail!("--insert: inserting keys into a kernel keyring is not supported");
        }
        Ok(())
    }
}

/// A secret given on the command line: its `Debug` shows nothing of it, and
/// nothing here prints it back.
#[derive(Clone)]
pub struct SecretText(String);

impl SecretText {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretText(<redacted>)")
    }
}

impl std::str::FromStr for SecretText {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<SecretText, Self::Err> {
        Ok(SecretText(s.to_string()))
    }
}

impl Drop for SecretText {
    fn drop(&mut self) {
        // Best effort: the argument vector still holds a copy.
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.iter_mut().for_each(|b| *b = 0);
        std::hint::black_box(&bytes);
    }
}

/// Parse a DH-HMAC-CHAP secret given with `flag`; the error names the flag
/// and the problem, not the text.
pub fn parse_dhchap_secret(flag: &str, text: &SecretText) -> Result<DhchapKey> {
    DhchapKey::parse(text.as_str())
        .with_context(|| format!("{flag}: not a usable DH-HMAC-CHAP secret (DHHC-1:hh:<base64>:)"))
}

/// Hexadecimal secret bytes. `Err` says what is wrong without the text.
fn parse_hex(text: &str) -> Result<Secret> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        bail!("Invalid secret: odd number of hexadecimal digits");
    }
    let mut bytes = Vec::with_capacity(text.len() / 2);
    for pair in text.as_bytes().chunks(2) {
        let digits = std::str::from_utf8(pair).ok().filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()));
        let Some(byte) = digits.and_then(|d| u8::from_str_radix(d, 16).ok()) else {
            bytes.iter_mut().for_each(|b| *b = 0);
            bail!("Invalid secret: not hexadecimal");
        };
        bytes.push(byte);
    }
    Ok(Secret::new(bytes))
}

/// `/etc/nvme/hostnqn`, as nvme-cli reads it when no NQN is given.
fn hostnqn_from_file() -> Option<String> {
    let text = std::fs::read_to_string(nvmf_host::options::HOSTNQN_PATH).ok()?;
    let nqn = text.trim();
    (!nqn.is_empty()).then(|| nqn.to_string())
}

fn sha_name(hash: HashId) -> &'static str {
    match hash {
        HashId::Sha256 => "SHA(256)",
        HashId::Sha384 => "SHA(384)",
        HashId::Sha512 => "SHA(512)",
    }
}

/// The line `gen-dhchap-key` prints (without the newline).
pub fn gen_dhchap_key_text(a: &GenDhchapKeyArgs) -> Result<String> {
    if a.hmac > 3 {
        bail!("Invalid HMAC identifier {}", a.hmac);
    }
    let hash = HashId::from_id(a.hmac as u8);
    let key_len = match (hash, a.key_length) {
        (Some(h), Some(l)) if l as usize != h.digest_len() => bail!("Invalid key length {l} for {}", sha_name(h)),
        (Some(h), _) => h.digest_len(),
        (None, Some(l)) => l as usize,
        (None, None) => 32,
    };
    if !DhchapKey::SECRET_LENS.contains(&key_len) {
        bail!("Invalid key length {key_len}");
    }
    let key = match &a.secret {
        None => DhchapKey::generate(hash, key_len, &mut *os_random())?,
        Some(text) => {
            let secret = parse_hex(text.as_str())?;
            if secret.len() != key_len {
                bail!("Invalid key length ({} bytes)", secret.len());
            }
            DhchapKey::from_secret(hash, secret.as_bytes())?
        }
    };
    let key = match hash {
        // hh 00 is not transformed: no NQN needed.
        None => key,
        Some(_) => {
            let nqn =
                a.nqn.clone().or_else(hostnqn_from_file).context("Could not read host NQN (give one with -n/--nqn)")?;
            key.nvme_cli_representation(&nqn)
        }
    };
    Ok(key.format().to_string())
}

/// The line `check-dhchap-key` prints for a valid key.
pub fn check_dhchap_key_text(a: &CheckDhchapKeyArgs) -> Result<String> {
    let text = a.key.as_str().trim();
    let hmac = text
        .strip_prefix("DHHC-1:")
        .and_then(|rest| rest.get(..3))
        .filter(|hh| hh.ends_with(':'))
        .and_then(|hh| u8::from_str_radix(&hh[..2], 16).ok())
        .context("Invalid key header (expected DHHC-1:hh:)")?;
    if hmac > 3 {
        bail!("Invalid HMAC identifier {hmac}");
    }
    let key = DhchapKey::parse(text).context("Invalid key")?;
    if let Some(h) = key.hash() {
        if key.secret().len() != h.digest_len() {
            bail!("Invalid key length for {}", sha_name(h));
        }
    }
    Ok(key.check_summary())
}

/// The line `gen-tls-key` prints.
pub fn gen_tls_key_text(a: &GenTlsKeyArgs) -> Result<String> {
    let hash = match a.hmac {
        1 => HashId::Sha256,
        2 => HashId::Sha384,
        m => bail!("Invalid HMAC identifier {m}"),
    };
    if a.identity > 1 {
        bail!("Invalid TLS identity version {}", a.identity);
    }
    a.keyring.refuse_insert()?;
    let key_len = hash.digest_len();
    let psk = match &a.secret {
        None => ConfiguredPsk::generate(hash, &mut *os_random())?,
        Some(text) => {
            let mut secret = parse_hex(text.as_str())?;
            if secret.len() > key_len {
                eprintln!("Skipping excess secret bytes");
                secret = Secret::from_slice(&secret.as_bytes()[..key_len]);
            }
            if secret.len() != key_len {
                bail!("Invalid key length ({} bytes)", secret.len());
            }
            ConfiguredPsk::from_bytes(Some(hash), secret.as_bytes())?
        }
    };
    Ok(psk.format().to_string())
}

/// The identity `check-tls-key` prints.
pub fn check_tls_key_text(a: &CheckTlsKeyArgs) -> Result<String> {
    let Some(keydata) = &a.keydata else { bail!("No key data (give the key with -d/--keydata)") };
    let version = match a.identity {
        0 => IdentityVersion::V0,
        1 => IdentityVersion::V1,
        v => bail!("Invalid TLS identity version {v}"),
    };
    let psk = ConfiguredPsk::parse(keydata.as_str()).context("Key decoding failed")?;
    let Some(subsysnqn) = &a.subsysnqn else { bail!("Need to specify a subsystem NQN (-c/--subsysnqn)") };
    let hostnqn =
        a.hostnqn.clone().or_else(hostnqn_from_file).context("Failed to read host NQN (give one with -n/--hostnqn)")?;
    a.keyring.refuse_insert()?;
    let layout = if a.keyring.compat { HkdfLabelLayout::LibnvmeLegacy } else { HkdfLabelLayout::Rfc8446 };
    let derived = tls_psk::derive(&psk, &hostnqn, subsysnqn, version, layout).context("Failed to generate identity")?;
    Ok(derived.identity)
}

pub fn gen_dhchap_key(a: GenDhchapKeyArgs) -> Result<()> {
    println!("{}", gen_dhchap_key_text(&a)?);
    Ok(())
}

pub fn check_dhchap_key(a: CheckDhchapKeyArgs) -> Result<()> {
    println!("{}", check_dhchap_key_text(&a)?);
    Ok(())
}

pub fn gen_tls_key(a: GenTlsKeyArgs) -> Result<()> {
    println!("{}", gen_tls_key_text(&a)?);
    Ok(())
}

pub fn check_tls_key(a: CheckTlsKeyArgs) -> Result<()> {
    println!("{}", check_tls_key_text(&a)?);
    Ok(())
}
