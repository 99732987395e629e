//! Keys, chunk ids and the key file.
//!
//! One random 256-bit master key per volume. Everything else is derived from it with
//! `blake3::derive_key` under fixed context strings, one subkey per purpose, so that no key is
//! ever used for two jobs:
//! - the **id key** keys blake3 for chunk ids: ids are a MAC of the content, so whoever holds the
//!   bucket but not the key cannot confirm a guess about what a chunk contains;
//! - the **data key** encrypts chunk blobs (AES-256-GCM, see `blob`);
//! - the **metadata key** encrypts metadata journal segments, checkpoints and heads;
//! - the **MAC key** authenticates the bucket's plaintext objects (`volume.toml`, `lease`), so
//!   that someone who can write the bucket but lacks the passphrase cannot forge or edit them.
//!
//! The master key is stored only wrapped: AES-256-GCM under a key derived from the passphrase
//! with argon2id (the key file, see [`wrap_master_key`]). Changing the passphrase rewraps the
//! same master key; nothing else changes.
//!
//! Key material is overwritten with zeros when dropped (best effort: copies the compiler made
//! on the stack are not reached).

use std::fmt;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use rand::RngCore;

use crate::error::{Error, Result};

// =============================================================================================
// DO NOT CHANGE: on-disk format. These strings and numbers define existing volumes' keys and
// key files; changing any of them makes every existing volume unreadable. Add new versions
// instead.
// =============================================================================================

/// blake3 `derive_key` context for the chunk id key.
pub const CONTEXT_ID_KEY: &str = "tiergate 2026-01 chunk id key v1";
/// blake3 `derive_key` context for the chunk data encryption key.
pub const CONTEXT_DATA_KEY: &str = "tiergate 2026-01 chunk data encryption key v1";
/// blake3 `derive_key` context for the metadata encryption key.
pub const CONTEXT_META_KEY: &str = "tiergate 2026-01 metadata encryption key v1";
/// blake3 `derive_key` context for the key that authenticates plaintext bucket objects.
pub const CONTEXT_MAC_KEY: &str = "tiergate 2026-12 bucket object mac key v1";

/// Key file magic, followed by a one-byte format version.
pub const KEYFILE_MAGIC: [u8; 8] = *b"TGKEYFIL";
/// Current key file format version.
pub const KEYFILE_VERSION: u8 = 1;
/// KDF identifier in the key file: argon2id, argon2 version 0x13.
pub const KDF_ARGON2ID_V13: u8 = 1;
/// Salt length in the key file.
pub const KEYFILE_SALT_LEN: usize = 16;
/// AES-GCM nonce length in the key file (and blobs).
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Length of the authenticated, plaintext part of a key file (everything before the ciphertext).
pub const KEYFILE_HEADER_LEN: usize = 8 + 1 + 1 + 2 + 4 + 4 + 4 + KEYFILE_SALT_LEN + NONCE_LEN;
/// Total key file length.
pub const KEYFILE_LEN: usize = KEYFILE_HEADER_LEN + 32 + TAG_LEN;

// ====================================== end of format ========================================

/// Upper bounds accepted when unwrapping, so that a damaged or hostile key file cannot make us
/// allocate terabytes or spin for hours before the tag check can reject it.
const MAX_M_COST_KIB: u32 = 4 * 1024 * 1024; // 4 GiB
const MAX_T_COST: u32 = 64;
const MAX_P_COST: u32 = 64;

/// Overwrites `bytes` with zeros in a way the optimiser does not remove.
fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: `b` is a valid, aligned, exclusive reference to a u8.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// The per-volume master key. Never stored in the clear; see [`wrap_master_key`].
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl MasterKey {
    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        MasterKey(k)
    }

    pub fn from_bytes(b: [u8; 32]) -> Self {
        MasterKey(b)
    }

    /// Derives the purpose-specific subkeys.
    pub fn subkeys(&self) -> Keys {
        Keys {
            id: blake3::derive_key(CONTEXT_ID_KEY, &self.0),
            data: blake3::derive_key(CONTEXT_DATA_KEY, &self.0),
            meta: blake3::derive_key(CONTEXT_META_KEY, &self.0),
            mac: blake3::derive_key(CONTEXT_MAC_KEY, &self.0),
        }
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// The subkeys derived from a [`MasterKey`].
#[derive(Clone)]
pub struct Keys {
    id: [u8; 32],
    data: [u8; 32],
    meta: [u8; 32],
    mac: [u8; 32],
}

impl Keys {
    /// The chunk id of `data`: blake3 keyed with the id subkey.
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.id, data).as_bytes())
    }

    /// AES-256-GCM key for chunk blobs.
    pub fn data_key(&self) -> &[u8; 32] {
        &self.data
    }

    /// AES-256-GCM key for metadata (journal segments, checkpoints).
    pub fn meta_key(&self) -> &[u8; 32] {
        &self.meta
    }

    /// MAC of `data` for one `purpose` (a fixed ASCII label, so a MAC made for one kind of
    /// object never verifies as another): keyed blake3 under the MAC subkey of
    /// `purpose || 0x00 || data`, 64 lowercase hex digits.
    pub fn mac_hex(&self, purpose: &str, data: &[u8]) -> String {
        let mut h = blake3::Hasher::new_keyed(&self.mac);
        h.update(purpose.as_bytes());
        h.update(&[0]);
        h.update(data);
        h.finalize().to_hex().to_string()
    }

    /// Whether `mac` (hex) is the MAC of `data` for `purpose`; compared in constant time.
    pub fn mac_ok(&self, purpose: &str, data: &[u8], mac: &str) -> bool {
        let Ok(given) = blake3::Hash::from_hex(mac.trim()) else {
            return false;
        };
        let want = blake3::Hash::from_hex(self.mac_hex(purpose, data)).expect("own hex");
        want == given
    }
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        wipe(&mut self.id);
        wipe(&mut self.data);
        wipe(&mut self.meta);
        wipe(&mut self.mac);
    }
}

/// A chunk's identity: keyed blake3 of its plaintext.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// From exactly 32 bytes; `Error::Corrupt` otherwise (ids are read from stored records).
    pub fn from_slice(b: &[u8]) -> Result<Self> {
        <[u8; 32]>::try_from(b)
            .map(ChunkId)
            .map_err(|_| Error::Corrupt(format!("chunk id of {} bytes, expected 32", b.len())))
    }

    /// Full lowercase hex (64 characters).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    /// Short form for logs and assertion messages: the first 8 bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", hex::encode(&self.0[..8]))
    }
}

/// argon2id cost parameters for wrapping the master key. Stored in the key file, so a key file
/// made with one setting is always opened with that setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl KdfParams {
    /// 64 MiB, 3 passes, 1 lane (the parameters RFC 9106 suggests for memory-constrained use).
    pub fn interactive() -> Self {
        KdfParams {
            m_cost_kib: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
        }
    }

    /// Tiny and fast, for tests only: offers no protection against guessing.
    pub fn for_tests() -> Self {
        KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        }
    }

    /// argon2's own minimums plus our upper bounds (at most 4 GiB, 64 passes, 64 lanes).
    pub fn validate(&self) -> Result<()> {
        if self.m_cost_kib > MAX_M_COST_KIB || self.t_cost > MAX_T_COST || self.p_cost > MAX_P_COST
        {
            return Err(Error::Invalid(format!(
                "KDF parameters too large: {self:?}"
            )));
        }
        self.argon2().map(|_| ())
    }

    fn argon2(&self) -> Result<argon2::Argon2<'static>> {
        let p = argon2::Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(32))
            .map_err(|e| Error::Invalid(format!("KDF parameters {self:?}: {e}")))?;
        Ok(argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            p,
        ))
    }

    fn derive(&self, passphrase: &[u8], salt: &[u8]) -> Result<[u8; 32]> {
        let mut out = [0u8; 32];
        self.argon2()?
            .hash_password_into(passphrase, salt, &mut out)
            .map_err(|e| Error::Invalid(format!("argon2: {e}")))?;
        Ok(out)
    }
}

/// The key file: the master key encrypted under argon2id(passphrase). Layout (all integers
/// little-endian), [`KEYFILE_LEN`] = 100 bytes:
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | magic `TGKEYFIL` |
/// | 8 | 1 | version = 1 |
/// | 9 | 1 | KDF = 1 (argon2id v0x13) |
/// | 10 | 2 | reserved, 0 |
/// | 12 | 4 | m_cost (KiB) |
/// | 16 | 4 | t_cost |
/// | 20 | 4 | p_cost |
/// | 24 | 16 | salt |
/// | 40 | 12 | nonce |
/// | 52 | 32 | encrypted master key |
/// | 84 | 16 | GCM tag |
///
/// The first 52 bytes are the AAD, so the parameters cannot be altered without detection.
///
/// # Panics
/// If `params` fail [`KdfParams::validate`] (a programming or configuration error; check first).
pub fn wrap_master_key(master: &MasterKey, passphrase: &[u8], params: KdfParams) -> Vec<u8> {
    let mut salt = [0u8; KEYFILE_SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    wrap_with(master, passphrase, params, &salt, &nonce)
}

fn wrap_with(
    master: &MasterKey,
    passphrase: &[u8],
    params: KdfParams,
    salt: &[u8; KEYFILE_SALT_LEN],
    nonce: &[u8; NONCE_LEN],
) -> Vec<u8> {
    if let Err(e) = params.validate() {
        panic!("wrap_master_key: {e}");
    }
    let mut out = Vec::with_capacity(KEYFILE_LEN);
    out.extend_from_slice(&KEYFILE_MAGIC);
    out.push(KEYFILE_VERSION);
    out.push(KDF_ARGON2ID_V13);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&params.m_cost_kib.to_le_bytes());
    out.extend_from_slice(&params.t_cost.to_le_bytes());
    out.extend_from_slice(&params.p_cost.to_le_bytes());
    out.extend_from_slice(salt);
    out.extend_from_slice(nonce);
    debug_assert_eq!(out.len(), KEYFILE_HEADER_LEN);

    let mut kek = params
        .derive(passphrase, salt)
        .expect("validated KDF parameters");
    let cipher = Aes256Gcm::new(&kek.into());
    wipe(&mut kek);
    let sealed = cipher
        .encrypt(
            &Nonce::from(*nonce),
            Payload {
                msg: &master.0,
                aad: &out,
            },
        )
        .expect("AES-GCM encryption of 32 bytes cannot fail");
    out.extend_from_slice(&sealed);
    debug_assert_eq!(out.len(), KEYFILE_LEN);
    out
}

/// Opens a key file made by [`wrap_master_key`].
///
/// `Error::WrongPassphrase` when the tag does not verify (wrong passphrase, or a key file whose
/// authenticated bytes were altered); `Error::Corrupt` for a wrong length, magic, version, KDF
/// or out-of-range parameters.
pub fn unwrap_master_key(bytes: &[u8], passphrase: &[u8]) -> Result<MasterKey> {
    let corrupt = |what: String| Error::Corrupt(format!("key file: {what}"));
    if bytes.len() < KEYFILE_MAGIC.len() + 1 || bytes[..8] != KEYFILE_MAGIC {
        return Err(corrupt("not a tiergate key file (bad magic)".into()));
    }
    if bytes[8] != KEYFILE_VERSION {
        return Err(corrupt(format!(
            "unsupported version {} (this build reads version {KEYFILE_VERSION})",
            bytes[8]
        )));
    }
    if bytes.len() != KEYFILE_LEN {
        return Err(corrupt(format!(
            "{} bytes, expected {KEYFILE_LEN}",
            bytes.len()
        )));
    }
    if bytes[9] != KDF_ARGON2ID_V13 {
        return Err(corrupt(format!("unknown KDF {}", bytes[9])));
    }
    if bytes[10..12] != [0, 0] {
        return Err(corrupt("reserved bytes are not zero".into()));
    }
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let params = KdfParams {
        m_cost_kib: u32_at(12),
        t_cost: u32_at(16),
        p_cost: u32_at(20),
    };
    params
        .validate()
        .map_err(|e| corrupt(format!("bad KDF parameters: {e}")))?;
    let salt = &bytes[24..24 + KEYFILE_SALT_LEN];
    let nonce = &bytes[40..40 + NONCE_LEN];
    let header = &bytes[..KEYFILE_HEADER_LEN];
    let sealed = &bytes[KEYFILE_HEADER_LEN..];

    let mut kek = params.derive(passphrase, salt)?;
    let cipher = Aes256Gcm::new(&kek.into());
    wipe(&mut kek);
    let mut plain = cipher
        .decrypt(
            &Nonce::try_from(nonce).expect("nonce slice of NONCE_LEN"),
            Payload {
                msg: sealed,
                aad: header,
            },
        )
        .map_err(|_| Error::WrongPassphrase)?;
    let key = <[u8; 32]>::try_from(plain.as_slice()).expect("32-byte plaintext");
    wipe(&mut plain);
    Ok(MasterKey(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden_master() -> MasterKey {
        let mut b = [0u8; 32];
        for (i, x) in b.iter_mut().enumerate() {
            *x = i as u8;
        }
        MasterKey::from_bytes(b)
    }

    #[test]
    fn subkeys_differ_and_are_deterministic() {
        let k = golden_master().subkeys();
        assert_ne!(k.data_key(), k.meta_key());
        assert_ne!(&k.id, k.data_key());
        assert_eq!(k.data_key(), golden_master().subkeys().data_key());
        let other = MasterKey::generate().subkeys();
        assert_ne!(k.chunk_id(b"x"), other.chunk_id(b"x"));
        // Keyed: the id is not the plain blake3 of the content.
        assert_ne!(k.chunk_id(b"x").0, *blake3::hash(b"x").as_bytes());
    }

    #[test]
    fn debug_output_redacts_keys() {
        let m = golden_master();
        assert_eq!(format!("{m:?}"), "MasterKey(<redacted>)");
        let dbg = format!("{:?}", m.subkeys());
        assert_eq!(dbg, "Keys(<redacted>)");
    }

    #[test]
    fn chunk_id_formatting_and_parsing() {
        let id = ChunkId([0xab; 32]);
        assert_eq!(id.to_string(), "ab".repeat(32));
        assert_eq!(id.to_hex(), id.to_string());
        assert_eq!(format!("{id:?}"), format!("ChunkId({})", "ab".repeat(8)));
        assert_eq!(ChunkId::from_slice(&[0xab; 32]).unwrap(), id);
        assert!(matches!(
            ChunkId::from_slice(&[0; 31]),
            Err(Error::Corrupt(_))
        ));
    }

    #[test]
    fn key_file_round_trip() {
        let m = MasterKey::generate();
        let file = wrap_master_key(&m, b"correct horse", KdfParams::for_tests());
        assert_eq!(file.len(), KEYFILE_LEN);
        let back = unwrap_master_key(&file, b"correct horse").unwrap();
        assert_eq!(back.0, m.0);
        // Fresh salt and nonce every time.
        assert_ne!(
            file,
            wrap_master_key(&m, b"correct horse", KdfParams::for_tests())
        );
    }

    #[test]
    fn wrong_passphrase_is_reported_as_such() {
        let file = wrap_master_key(&golden_master(), b"right", KdfParams::for_tests());
        assert!(matches!(
            unwrap_master_key(&file, b"wrong"),
            Err(Error::WrongPassphrase)
        ));
    }

    #[test]
    fn key_file_tampering_is_detected() {
        let file = wrap_master_key(&golden_master(), b"pw", KdfParams::for_tests());
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x01;
            let r = unwrap_master_key(&bad, b"pw");
            assert!(
                matches!(r, Err(Error::Corrupt(_)) | Err(Error::WrongPassphrase)),
                "flipped byte {i} accepted"
            );
        }
        assert!(matches!(
            unwrap_master_key(&file[..KEYFILE_LEN - 1], b"pw"),
            Err(Error::Corrupt(_))
        ));
        assert!(matches!(
            unwrap_master_key(b"hello", b"pw"),
            Err(Error::Corrupt(_))
        ));
        let mut v2 = file.clone();
        v2[8] = 2;
        let err = unwrap_master_key(&v2, b"pw").unwrap_err();
        assert!(err.to_string().contains("unsupported version 2"), "{err}");
    }

    #[test]
    fn absurd_kdf_parameters_are_rejected_before_running_argon2() {
        let mut file = wrap_master_key(&golden_master(), b"pw", KdfParams::for_tests());
        file[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            unwrap_master_key(&file, b"pw"),
            Err(Error::Corrupt(_))
        ));
        assert!(KdfParams {
            t_cost: 1000,
            ..KdfParams::interactive()
        }
        .validate()
        .is_err());
        KdfParams::interactive().validate().unwrap();
    }

    // ---------------------------------------------------------------------------------------
    // Golden vectors. Do not change: they pin key derivation and the key file format, so that
    // a later version still opens old volumes.
    // ---------------------------------------------------------------------------------------

    /// keyed-blake3 chunk id of b"tiergate golden chunk" under the subkeys of master 00 01 .. 1f.
    const GOLDEN_CHUNK_ID: &str =
        "4713729fe6d40f34002a69ad4607f24e0cd6f4b82762a3254d01720a60d6921a";
    /// A key file for master 00 01 .. 1f, passphrase "golden", KdfParams::for_tests().
    const GOLDEN_KEY_FILE: &str = concat!(
        "54474b455946494c010100004000000001000000010000005a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
        "a5a5a5a5a5a5a5a5a5a5a5a5f71b7fc0e0b0f2017c7c8ae79302ceba33d61e0a896f1a42e15bbdd8",
        "d1a7eee25ea7768218dfb644b6f0aef5636f8e76",
    );

    #[test]
    fn golden_chunk_id() {
        let id = golden_master().subkeys().chunk_id(b"tiergate golden chunk");
        assert_eq!(id.to_hex(), GOLDEN_CHUNK_ID);
    }

    #[test]
    fn golden_key_file_opens() {
        let bytes = hex::decode(GOLDEN_KEY_FILE).unwrap();
        let m = unwrap_master_key(&bytes, b"golden").unwrap();
        assert_eq!(m.0, golden_master().0);
        assert!(matches!(
            unwrap_master_key(&bytes, b"Golden"),
            Err(Error::WrongPassphrase)
        ));
    }

    #[test]
    #[ignore = "prints the golden key file; run once when creating the vectors"]
    fn print_golden_key_file() {
        let file = wrap_with(
            &golden_master(),
            b"golden",
            KdfParams::for_tests(),
            &[0x5a; KEYFILE_SALT_LEN],
            &[0xa5; NONCE_LEN],
        );
        println!("GOLDEN_KEY_FILE = {}", hex::encode(file));
    }
}
