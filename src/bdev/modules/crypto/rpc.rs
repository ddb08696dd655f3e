//! SPDK's `accel_crypto_key_*` and `bdev_crypto_*` methods, with SPDK's parameters, errors
//! (`lib/accel/accel_rpc.c`, `module/bdev/crypto/vbdev_crypto_rpc.c`) and, for a key, its
//! material zeroised once used.

use super::backend::{CryptoBackend, CryptoShared};
use super::keys::{self, KeyError, KeyParams, SIMPLE_LBA};
use crate::bdev::device::lock;
use crate::bdev::{registry, BdevError, BdevEvent, BdevProps};
use crate::rpc::error::{INTERNAL_ERROR, INVALID_PARAMS};
use crate::rpc::{parse, RpcError, RpcMethod};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use uuid::Uuid;
use zeroize::Zeroizing;

/// The module's RPC methods.
pub const METHODS: &[RpcMethod] = &[
    RpcMethod::runtime("accel_crypto_key_create", accel_crypto_key_create),
    RpcMethod::runtime("accel_crypto_key_destroy", accel_crypto_key_destroy),
    RpcMethod::runtime("accel_crypto_keys_get", accel_crypto_keys_get),
    RpcMethod::runtime("bdev_crypto_create", bdev_crypto_create),
    RpcMethod::runtime("bdev_crypto_delete", bdev_crypto_delete),
];

/// SPDK's `BDEV_CRYPTO_NAMESPACE_UUID`: a crypto bdev's uuid is the SHA-1 (version 5) uuid
/// of its base's uuid in this namespace, so it is the same in SPDK and Ferry, and stable.
const NAMESPACE: Uuid = Uuid::from_u128(0x078e3cf7_f4b4_4545_b2c3_d40045a64ae2);

/// Every crypto bdev, by name.
static CRYPTO: Mutex<Vec<Arc<CryptoShared>>> = Mutex::new(Vec::new());

/// A hex key parameter: moved out of the request (serde_json moves the string it parsed)
/// and zeroised when dropped, whatever happens to the call.
type Secret = Zeroizing<String>;

/// Wraps a parsed hex key so that it is zeroised.
fn secret(s: Option<String>) -> Option<Secret> {
    s.map(Zeroizing::new)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyCreate {
    cipher: String,
    key: String,
    key2: Option<String>,
    tweak_mode: Option<String>,
    name: String,
}

fn key_failed(e: KeyError) -> RpcError {
    // SPDK answers "failed to create DEK, rc -N" and logs the reason; Ferry says both.
    RpcError::new(INVALID_PARAMS, format!("failed to create DEK, rc -{}: {e}", e.errno()))
}

fn accel_crypto_key_create(params: Option<Value>) -> Result<Value, RpcError> {
    let p: KeyCreate = parse(params)?;
    let tweak_mode = p.tweak_mode.unwrap_or_else(|| SIMPLE_LBA.to_string());
    let (key, key2) = (Zeroizing::new(p.key), secret(p.key2));
    keys::create(KeyParams { name: p.name, cipher: p.cipher, key, key2, tweak_mode }).map_err(key_failed)?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyName {
    key_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysGet {
    key_name: Option<String>,
}

fn accel_crypto_keys_get(params: Option<Value>) -> Result<Value, RpcError> {
    let p: KeysGet = parse(params)?;
    keys::describe(p.key_name.as_deref()).ok_or_else(|| RpcError::new(INVALID_PARAMS, "key was not found"))
}

fn accel_crypto_key_destroy(params: Option<Value>) -> Result<Value, RpcError> {
    let p: KeyName = parse(params)?;
    match keys::destroy(&p.key_name) {
        Ok(()) => Ok(json!(true)),
        Err(KeyError::NotFound(_)) => Err(RpcError::new(INVALID_PARAMS, "No key object found")),
        // SPDK leaves this to the user (and then uses freed memory); Ferry refuses.
        Err(e) => Err(RpcError::new(INVALID_PARAMS, format!("Failed to destroy key, rc -{}: {e}", e.errno()))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CryptoCreate {
    base_bdev_name: String,
    name: String,
    key_name: Option<String>,
    /// Obsolete in SPDK (a DPDK driver name): ignored, as SPDK does.
    crypto_pmd: Option<String>,
    /// Obsolete inline key, hex.
    key: Option<String>,
    /// Obsolete inline cipher.
    cipher: Option<String>,
    /// Obsolete inline second key, hex.
    key2: Option<String>,
}

fn bdev_crypto_create(params: Option<Value>) -> Result<Value, RpcError> {
    let p: CryptoCreate = parse(params)?;
    let (hex_key, hex_key2) = (secret(p.key), secret(p.key2));
    let (key, key_owner) = match &p.key_name {
        Some(key_name) => {
            let key = keys::get(key_name).ok_or_else(|| RpcError::new(INVALID_PARAMS, "Key was not found"))?;
            if hex_key.is_some() || p.cipher.is_some() || p.crypto_pmd.is_some() {
                tracing::info!(key = %key_name, "bdev_crypto_create: key name given, other key parameters are ignored");
            }
            (key, false)
        }
        None => {
            // SPDK's deprecated form: the key inline, kept under "<name>_<cipher>" (found
            // again when a configuration saved with it is replayed).
            if p.crypto_pmd.is_some() {
                tracing::warn!("bdev_crypto_create: \"crypto_pmd\" is obsolete and ignored");
            }
            let cipher = p.cipher.clone().unwrap_or_else(|| "AES_CBC".to_string());
            let key_name = format!("{}_{cipher}", p.name);
            match keys::get(&key_name) {
                Some(key) => (key, false),
                None => {
                    let Some(hex) = hex_key else {
                        return Err(RpcError::new(INTERNAL_ERROR, "No key was found"));
                    };
                    let params = KeyParams {
                        name: key_name,
                        cipher,
                        key: hex,
                        key2: hex_key2,
                        tweak_mode: SIMPLE_LBA.to_string(),
                    };
                    match keys::create(params) {
                        Ok(key) => (key, true),
                        Err(e) => {
                            tracing::error!(bdev = %p.name, error = %e, "bdev_crypto_create: no key was found or made");
                            return Err(RpcError::new(INTERNAL_ERROR, "No key was found"));
                        }
                    }
                }
            }
        }
    };
    match create(&p.name, &p.base_bdev_name, key.clone(), key_owner) {
        Ok(()) => Ok(json!(p.name)),
        Err(e) => {
            if key_owner {
                let _ = keys::destroy(key.name());
            }
            Err(RpcError::errno(e.errno(), e.to_string()))
        }
    }
}

/// Creates crypto bdev `name` on `base` with `key`: opens and claims the base, registers
/// the bdev. Nothing is left behind if a step fails.
pub fn create(name: &str, base: &str, key: Arc<keys::CryptoKey>, key_owner: bool) -> Result<(), BdevError> {
    registry::validate_name(name)?;
    if lock(&CRYPTO).iter().any(|c| c.name == name) || registry::get(name).is_some() {
        return Err(BdevError::AlreadyExists(name.to_string()));
    }
    let me = name.to_string();
    let mut desc = crate::bdev::open(base, true, Box::new(move |event, base| on_base_event(&me, event, base)))?;
    desc.claim("crypto")?;
    let base_bdev = desc.bdev().clone();
    let shared = Arc::new(CryptoShared {
        name: name.to_string(),
        base_name: base_bdev.name().to_string(),
        key: key.clone(),
        key_owner,
        desc: Mutex::new(Some(desc)),
    });
    let props = BdevProps {
        name: name.to_string(),
        uuid: Some(uuid_of(&base_bdev)),
        block_size: base_bdev.block_size(),
        num_blocks: base_bdev.num_blocks(),
    };
    key.add_user(name);
    lock(&CRYPTO).push(shared.clone());
    let backend = CryptoBackend { shared: shared.clone(), base: base_bdev };
    if let Err(e) = registry::register(props, Box::new(backend)) {
        lock(&CRYPTO).retain(|c| !Arc::ptr_eq(c, &shared));
        // Not the owned key here: the caller destroys it with the rest of its work.
        drop(lock(&shared.desc).take());
        key.remove_user(name);
        return Err(e);
    }
    tracing::info!(bdev = name, base, key = key.name(), "crypto bdev created");
    Ok(())
}

/// SPDK's uuid for a crypto bdev on `base`: version 5 of the base's uuid in [`NAMESPACE`].
fn uuid_of(base: &crate::bdev::Bdev) -> Uuid {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(NAMESPACE.as_bytes());
    h.update(base.uuid().as_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// The base of crypto bdev `name` went away or changed size.
fn on_base_event(name: &str, event: BdevEvent, base: &crate::bdev::Bdev) {
    match event {
        BdevEvent::Remove => {
            tracing::warn!(bdev = name, base = base.name(), "the base of a crypto bdev was removed: removing it");
            if let Err(e) = remove(name) {
                tracing::warn!(bdev = name, error = %e, "removing the crypto bdev");
            }
        }
        BdevEvent::Resize => {
            if let Some(me) = registry::get(name).filter(|b| b.module() == "crypto") {
                if let Err(e) = me.resize(base.num_blocks()) {
                    tracing::warn!(bdev = name, error = %e, "following the base's new size");
                }
            }
        }
    }
}

/// Unregisters crypto bdev `name` and releases its base and key.
fn remove(name: &str) -> Result<(), BdevError> {
    let shared = {
        let mut all = lock(&CRYPTO);
        let pos = all.iter().position(|c| c.name == name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
        all.remove(pos)
    };
    let r = registry::unregister(name, Some("crypto"));
    shared.close();
    r.map(|_| ())
}

fn bdev_crypto_delete(params: Option<Value>) -> Result<Value, RpcError> {
    let p: super::super::DeleteParams = parse(params)?;
    match remove(&p.name) {
        Ok(()) => Ok(json!(true)),
        Err(e) => Err(RpcError::errno(e.errno(), e.to_string())),
    }
}
