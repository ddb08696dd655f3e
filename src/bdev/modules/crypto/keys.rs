//! The accel framework's crypto keys, as SPDK keeps them (`lib/accel/accel.c`): named data
//! encryption keys created by `accel_crypto_key_create`, listed by `accel_crypto_keys_get`,
//! removed by `accel_crypto_key_destroy`, and saved in the `accel` subsystem of
//! `save_config`.
//!
//! As SPDK does, the listing and the saved configuration show the key material in hex: that
//! is what makes a saved configuration (and a disk encrypted under it) usable again, and
//! what SPDK's tools expect (docs/security.md). Logs never show it: [`CryptoKey`]'s `Debug`
//! leaves it out, and every error names the key, never its bytes. The hex strings, the
//! decoded bytes and the AES key schedules are zeroised when dropped.

use super::xts::Xts;
use crate::bdev::device::lock;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use thiserror::Error;
use zeroize::Zeroizing;

/// SPDK's `SPDK_ACCEL_CRYPTO_KEY_MAX_HEX_LENGTH`: a hex key must be shorter than this.
const MAX_HEX_LENGTH: usize = 256 + 1;

/// The only tweak mode SPDK's software accel module supports (and its default).
pub const SIMPLE_LBA: &str = "SIMPLE_LBA";

/// SPDK's tweak modes (`g_tweak_modes`): each is parsed, only `SIMPLE_LBA` is supported.
const TWEAK_MODES: &[&str] = &[SIMPLE_LBA, "JOIN_NEG_LBA_WITH_LBA", "INCR_512_FULL_LBA", "INCR_512_UPPER_LBA"];

/// SPDK's ciphers (`g_ciphers`): each is parsed, only AES_XTS is supported (as by SPDK's
/// software module).
const CIPHERS: &[&str] = &["AES_CBC", "AES_XTS"];

/// Why a key operation failed: SPDK's errno (its RPC says `rc -errno`) and the reason SPDK
/// logs. No variant carries key material.
#[derive(Debug, Error)]
pub enum KeyError {
    /// A parameter SPDK refuses with -EINVAL.
    #[error("{0}")]
    Invalid(String),
    /// A key of that name exists.
    #[error("a key named {0} already exists")]
    Exists(String),
    /// No key of that name.
    #[error("no key named {0}")]
    NotFound(String),
    /// The key encrypts bdevs that still exist.
    #[error("key {key} is used by crypto bdev(s) {bdevs}")]
    InUse {
        /// The key.
        key: String,
        /// The bdevs using it.
        bdevs: String,
    },
}

impl KeyError {
    /// The errno SPDK returns for it (positive).
    pub fn errno(&self) -> i32 {
        match self {
            KeyError::Invalid(_) => libc::EINVAL,
            KeyError::Exists(_) => libc::EEXIST,
            KeyError::NotFound(_) => libc::ENOENT,
            KeyError::InUse { .. } => libc::EBUSY,
        }
    }
}

/// What `accel_crypto_key_create` gives (SPDK's `spdk_accel_crypto_key_create_param`).
pub struct KeyParams {
    /// The key's name.
    pub name: String,
    /// `AES_XTS` (SPDK's names).
    pub cipher: String,
    /// Data key, hex.
    pub key: Zeroizing<String>,
    /// Tweak key, hex (required by AES_XTS).
    pub key2: Option<Zeroizing<String>>,
    /// SPDK's tweak mode name.
    pub tweak_mode: String,
}

/// One named key.
pub struct CryptoKey {
    name: String,
    cipher: String,
    hex_key: Zeroizing<String>,
    hex_key2: Zeroizing<String>,
    tweak_mode: String,
    xts: Xts,
    /// The crypto bdevs encrypting with it (destroying it then is refused).
    users: Mutex<Vec<String>>,
}

impl std::fmt::Debug for CryptoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material: this may end up in a log.
        f.debug_struct("CryptoKey").field("name", &self.name).field("cipher", &self.cipher).finish_non_exhaustive()
    }
}

impl CryptoKey {
    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cipher, ready to use.
    pub fn xts(&self) -> &Xts {
        &self.xts
    }

    /// SPDK's description of the key (`__accel_crypto_key_dump_param`): with its material.
    fn describe(&self) -> Value {
        json!({
            "name": self.name,
            "cipher": self.cipher,
            "key": self.hex_key.as_str() as &str,
            "key2": self.hex_key2.as_str() as &str,
            "tweak_mode": self.tweak_mode,
        })
    }

    /// Records that crypto bdev `bdev` encrypts with this key.
    pub fn add_user(&self, bdev: &str) {
        lock(&self.users).push(bdev.to_string());
    }

    /// Crypto bdev `bdev` no longer uses this key.
    pub fn remove_user(&self, bdev: &str) {
        lock(&self.users).retain(|b| b != bdev);
    }
}

static KEYRING: Mutex<Vec<Arc<CryptoKey>>> = Mutex::new(Vec::new());

/// Hex to bytes as SPDK's `spdk_unhexlify`: an even number of hex digits, either case.
fn unhex(hex: &str, which: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let bad = || KeyError::Invalid(format!("failed to unhexlify {which}: it must be an even number of hex digits"));
    if !hex.len().is_multiple_of(2) {
        return Err(bad());
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Zeroizing::new(Vec::with_capacity(hex.len() / 2));
    for pair in hex.as_bytes().chunks_exact(2) {
        match (digit(pair[0]), digit(pair[1])) {
            (Some(h), Some(l)) => out.push(h << 4 | l),
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

/// Checks a hex key's length as SPDK does (not empty, shorter than 257 digits).
fn check_hex_len(hex: &str, which: &str) -> Result<(), KeyError> {
    if hex.len() >= MAX_HEX_LENGTH {
        return Err(KeyError::Invalid(format!("{which} size exceeds max {MAX_HEX_LENGTH}")));
    }
    if hex.is_empty() {
        return Err(KeyError::Invalid(format!("{which} size cannot be 0")));
    }
    Ok(())
}

/// Whether two byte strings are equal, in time that depends only on their lengths (SPDK's
/// `accel_aes_xts_keys_equal`: no timing side channel on key material).
fn keys_equal(a: &[u8], b: &[u8]) -> bool {
    let mut x = a.len() ^ b.len();
    for (p, q) in a.iter().zip(b) {
        x |= (p ^ q) as usize;
    }
    std::hint::black_box(x) == 0
}

/// Creates a key with SPDK's checks, in SPDK's order; nothing is kept if one fails.
pub fn create(p: KeyParams) -> Result<Arc<CryptoKey>, KeyError> {
    if !CIPHERS.contains(&p.cipher.as_str()) {
        return Err(KeyError::Invalid(format!("failed to parse cipher {:?}", p.cipher)));
    }
    check_hex_len(&p.key, "key1")?;
    let key1 = unhex(&p.key, "key1")?;
    let key2 = match &p.key2 {
        Some(k2) => {
            check_hex_len(k2, "key2")?;
            Some(unhex(k2, "key2")?)
        }
        None => None,
    };
    if !TWEAK_MODES.contains(&p.tweak_mode.as_str()) {
        return Err(KeyError::Invalid(format!("failed to parse tweak mode {:?}", p.tweak_mode)));
    }
    if p.tweak_mode != SIMPLE_LBA {
        return Err(KeyError::Invalid(format!("module software doesn't support {} tweak mode", p.tweak_mode)));
    }
    // SPDK's software module: AES_XTS with 128- or 256-bit keys only.
    if p.cipher != "AES_XTS" || !matches!(key1.len(), 16 | 32) {
        return Err(KeyError::Invalid(format!(
            "module software doesn't support {} cipher with {} key size",
            p.cipher,
            key1.len()
        )));
    }
    let Some(key2) = key2 else {
        return Err(KeyError::Invalid("AES_XTS key2 is missing".into()));
    };
    if key1.len() != key2.len() {
        return Err(KeyError::Invalid(format!(
            "AES_XTS key size {} is not equal to key2 size {}",
            key1.len(),
            key2.len()
        )));
    }
    if keys_equal(&key1, &key2) {
        return Err(KeyError::Invalid("AES_XTS identical keys are not secure".into()));
    }
    let xts = Xts::new(&key1, &key2).ok_or_else(|| KeyError::Invalid("unusable AES_XTS key sizes".into()))?;
    let key = Arc::new(CryptoKey {
        name: p.name,
        cipher: p.cipher,
        hex_key: p.key,
        hex_key2: p.key2.unwrap_or_default(),
        tweak_mode: p.tweak_mode,
        xts,
        users: Mutex::new(Vec::new()),
    });
    let mut ring = lock(&KEYRING);
    if ring.iter().any(|k| k.name == key.name) {
        return Err(KeyError::Exists(key.name.clone()));
    }
    ring.push(key.clone());
    drop(ring);
    tracing::info!(key = %key.name, cipher = %key.cipher, "crypto key created");
    Ok(key)
}

/// The key named `name`.
pub fn get(name: &str) -> Option<Arc<CryptoKey>> {
    lock(&KEYRING).iter().find(|k| k.name == name).cloned()
}

/// Destroys key `name`, unless a crypto bdev still encrypts with it.
pub fn destroy(name: &str) -> Result<(), KeyError> {
    let mut ring = lock(&KEYRING);
    let pos = ring.iter().position(|k| k.name == name).ok_or_else(|| KeyError::NotFound(name.to_string()))?;
    let users = lock(&ring[pos].users).clone();
    if !users.is_empty() {
        return Err(KeyError::InUse { key: name.to_string(), bdevs: users.join(", ") });
    }
    ring.remove(pos);
    drop(ring);
    tracing::info!(key = name, "crypto key destroyed");
    Ok(())
}

/// SPDK's `accel_crypto_keys_get` answer: every key, or only `name`.
pub fn describe(name: Option<&str>) -> Option<Value> {
    let ring = lock(&KEYRING);
    let keys: Vec<Value> = ring.iter().filter(|k| name.is_none_or(|n| k.name == n)).map(|k| k.describe()).collect();
    if name.is_some() && keys.is_empty() {
        return None;
    }
    Some(Value::Array(keys))
}

/// The `accel` subsystem's configuration: one `accel_crypto_key_create` per key, in
/// creation order, with its material (as SPDK's `spdk_accel_write_config_json` writes it).
pub fn write_config() -> Vec<Value> {
    lock(&KEYRING).iter().map(|k| crate::app::config::entry("accel_crypto_key_create", k.describe())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_checked_as_spdk_does() {
        assert_eq!(*unhex("0aFf", "k").unwrap(), vec![0x0a, 0xff]);
        assert!(unhex("abc", "k").is_err(), "odd length");
        assert!(unhex("zz", "k").is_err(), "not hex");
        assert!(check_hex_len("", "k").is_err());
        assert!(check_hex_len(&"a".repeat(257), "k").is_err());
        assert!(check_hex_len(&"a".repeat(256), "k").is_ok());
    }

    #[test]
    fn equal_keys_compare_equal_and_lengths_count() {
        assert!(keys_equal(&[1, 2], &[1, 2]));
        assert!(!keys_equal(&[1, 2], &[1, 3]));
        assert!(!keys_equal(&[1, 2], &[1, 2, 0]));
        assert!(!keys_equal(&[0; 256], &[0; 0]), "a length difference of 256 still counts");
    }

    #[test]
    fn debug_never_shows_the_material() {
        let k = create(KeyParams {
            name: "dbg".into(),
            cipher: "AES_XTS".into(),
            key: Zeroizing::new("00112233445566778899aabbccddeeff".into()),
            key2: Some(Zeroizing::new("ffeeddccbbaa99887766554433221100".into())),
            tweak_mode: SIMPLE_LBA.into(),
        })
        .unwrap();
        let text = format!("{k:?}");
        assert!(!text.contains("0011") && !text.contains("ffee"), "{text}");
        destroy("dbg").unwrap();
    }
}
