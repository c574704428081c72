//! The authenticated header of a sealed model, and the key schedule.
//!
//! Layout (little-endian; see `docs/sealed-format.md`):
//!
//! | off | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `VEILSEAL` |
//! | 8 | 2 | format version = 1 |
//! | 10 | 2 | suite = 1 (AES-256-GCM, HKDF-SHA-256, HMAC-SHA-256) |
//! | 12 | 4 | header_len: bytes before the tag table, a multiple of 4096 |
//! | 16 | 4 | chunk_size: a power of two, 4 KiB ..= 16 MiB |
//! | 20 | 4 | reserved, zero |
//! | 24 | 8 | plaintext_len |
//! | 32 | 8 | chunk_count = max(1, ⌈plaintext_len / chunk_size⌉) |
//! | 40 | 16 | key_id |
//! | 56 | 32 | salt |
//! | 88 | 32 | model SHA-256 |
//! | 120 | 4 | meta_len (≤ 64 KiB) |
//! | 124 | meta_len | metadata: canonical JSON object of strings |
//! | 124 + meta_len | 32 | header MAC |
//! | … | | zero padding up to header_len |

use std::collections::BTreeMap;
use std::fmt;

use ring::{digest, hkdf, hmac};
use zeroize::Zeroizing;

use crate::key::{KeyId, ModelKey, KEY_ID_LEN};
use crate::SealError;

/// File magic.
pub const MAGIC: &[u8; 8] = b"VEILSEAL";
/// The only format version.
pub const VERSION: u16 = 1;
/// AES-256-GCM, HKDF-SHA-256, HMAC-SHA-256.
pub const SUITE_AES256GCM: u16 = 1;
/// Alignment of the header and of the ciphertext.
pub const ALIGN: u64 = 4096;
/// Smallest chunk size.
pub const MIN_CHUNK: u32 = 4096;
/// Largest chunk size.
pub const MAX_CHUNK: u32 = 16 << 20;
/// Default chunk size.
pub const DEFAULT_CHUNK: u32 = 1 << 20;
/// Largest metadata.
pub const MAX_META: u32 = 64 << 10;
/// AEAD tag length.
pub const TAG_LEN: u64 = 16;
const FIXED: usize = 124;
/// Offset of `model_sha256` in the header.
const DIGEST_AT: usize = 88;

/// The header of a sealed model: everything but the key and the ciphertext.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedHeader {
    /// Bytes before the tag table (multiple of 4096).
    pub header_len: u32,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Plaintext length.
    pub plaintext_len: u64,
    /// Number of chunks.
    pub chunk_count: u64,
    /// Which key seals this file.
    pub key_id: KeyId,
    /// Per-file random salt.
    pub salt: [u8; 32],
    /// SHA-256 of the plaintext.
    pub model_sha256: [u8; 32],
    /// Metadata (name, format, ...).
    pub metadata: BTreeMap<String, String>,
    /// HMAC-SHA-256 over the header fields, under a key derived from the model key.
    pub mac: [u8; 32],
    /// The authenticated bytes `0 .. 124 + meta_len`, as read or written.
    authenticated: Vec<u8>,
}

impl fmt::Debug for SealedHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedHeader")
            .field("key_id", &self.key_id)
            .field("plaintext_len", &self.plaintext_len)
            .field("chunk_size", &self.chunk_size)
            .field("chunk_count", &self.chunk_count)
            .field("model_sha256", &hex::encode(self.model_sha256))
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}

/// Keys derived for one file.
pub(crate) struct FileKeys {
    pub(crate) mac: hmac::Key,
    pub(crate) payload: Zeroizing<[u8; 32]>,
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// `read_exact`, with a short stream reported as [`SealError::Truncated`].
pub(crate) fn read_exact_or_truncated<R: std::io::Read>(
    reader: &mut R,
    buf: &mut [u8],
) -> Result<(), SealError> {
    reader.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => SealError::Truncated,
        _ => SealError::Io(e),
    })
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// `max(1, ⌈len / chunk⌉)`.
pub(crate) fn chunk_count(plaintext_len: u64, chunk_size: u32) -> u64 {
    plaintext_len.div_ceil(u64::from(chunk_size)).max(1)
}

fn align(n: u64) -> u64 {
    n.div_ceil(ALIGN).saturating_mul(ALIGN)
}

impl SealedHeader {
    /// Builds a header (the MAC is filled in by [`SealedHeader::encode`]).
    pub(crate) fn new(
        key_id: KeyId,
        salt: [u8; 32],
        chunk_size: u32,
        plaintext_len: u64,
        model_sha256: [u8; 32],
        metadata: BTreeMap<String, String>,
    ) -> Result<Self, SealError> {
        if !chunk_size.is_power_of_two() || !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk_size) {
            return Err(SealError::InvalidOptions(
                "chunk size must be a power of two from 4 KiB to 16 MiB",
            ));
        }
        let meta = serde_json::to_vec(&metadata).expect("string maps serialize");
        if meta.len() > MAX_META as usize {
            return Err(SealError::InvalidOptions("metadata larger than 64 KiB"));
        }
        let header_len = align((FIXED + meta.len() + 32) as u64) as u32;
        let mut h = SealedHeader {
            header_len,
            chunk_size,
            plaintext_len,
            chunk_count: chunk_count(plaintext_len, chunk_size),
            key_id,
            salt,
            model_sha256,
            metadata,
            mac: [0; 32],
            authenticated: Vec::new(),
        };
        h.authenticated = h.authenticated_bytes(&meta);
        Ok(h)
    }

    fn authenticated_bytes(&self, meta: &[u8]) -> Vec<u8> {
        let mut b = Vec::with_capacity(FIXED + meta.len());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&SUITE_AES256GCM.to_le_bytes());
        b.extend_from_slice(&self.header_len.to_le_bytes());
        b.extend_from_slice(&self.chunk_size.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&self.plaintext_len.to_le_bytes());
        b.extend_from_slice(&self.chunk_count.to_le_bytes());
        b.extend_from_slice(&self.key_id.0);
        b.extend_from_slice(&self.salt);
        b.extend_from_slice(&self.model_sha256);
        b.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        b.extend_from_slice(meta);
        b
    }

    /// Derives the header-MAC key and the payload key of this file from the model key.
    ///
    /// `PRK = HKDF-Extract(salt, K)`; `mac_key = Expand(PRK, "veil/v1/header-mac")`;
    /// `payload_key = Expand(PRK, "veil/v1/payload" ‖ H)` with
    /// `H = SHA-256(A[0..88] ‖ A[120..])`, `A` the authenticated header bytes.
    pub(crate) fn keys(&self, key: &ModelKey) -> FileKeys {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &self.salt).extract(key.expose_secret());
        let expand = |info: &[&[u8]]| {
            let mut out = Zeroizing::new([0u8; 32]);
            prk.expand(info, Len(32))
                .and_then(|okm| okm.fill(out.as_mut()))
                .expect("32 bytes is a valid HKDF-SHA256 output length");
            out
        };
        let mac_key = expand(&[b"veil/v1/header-mac"]);
        // H covers every authenticated byte except model_sha256 (offsets 88..120), so that
        // `seal` can encrypt while it hashes, in one pass over the model. The digest is
        // still covered by the header MAC, which every reader checks first.
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&self.authenticated[..DIGEST_AT]);
        ctx.update(&self.authenticated[DIGEST_AT + 32..]);
        let h = ctx.finish();
        FileKeys {
            mac: hmac::Key::new(hmac::HMAC_SHA256, mac_key.as_ref()),
            payload: expand(&[b"veil/v1/payload", h.as_ref()]),
        }
    }

    /// Sets the model digest (known only once `seal` has read the whole model).
    pub(crate) fn set_model_sha256(&mut self, model_sha256: [u8; 32]) {
        self.model_sha256 = model_sha256;
        self.authenticated[DIGEST_AT..DIGEST_AT + 32].copy_from_slice(&model_sha256);
    }

    /// Encodes the header (with its MAC under `key`), padded to `header_len`.
    pub(crate) fn encode(&mut self, keys: &FileKeys) -> Vec<u8> {
        let tag = hmac::sign(&keys.mac, &self.authenticated);
        self.mac.copy_from_slice(tag.as_ref());
        let mut out = self.authenticated.clone();
        out.extend_from_slice(&self.mac);
        out.resize(self.header_len as usize, 0);
        out
    }

    /// Checks the header MAC: whether `key` is the key this file was sealed with.
    /// Cheap: no chunk is read.
    ///
    /// # Errors
    /// [`SealError::KeyIdMismatch`] if the key has another id; [`SealError::WrongKey`] if
    /// the id matches but the key does not.
    pub fn check_key(&self, key: &ModelKey) -> Result<(), SealError> {
        if key.key_id() != self.key_id {
            return Err(SealError::KeyIdMismatch {
                file: self.key_id,
                key: key.key_id(),
            });
        }
        let keys = self.keys(key);
        hmac::verify(&keys.mac, &self.authenticated, &self.mac).map_err(|_| SealError::WrongKey {
            key_id: self.key_id,
        })
    }

    /// Offset of the tag table.
    pub fn tag_table_offset(&self) -> u64 {
        u64::from(self.header_len)
    }

    /// Offset of the first ciphertext byte (4096-aligned).
    pub fn data_offset(&self) -> u64 {
        align(u64::from(self.header_len).saturating_add(TAG_LEN.saturating_mul(self.chunk_count)))
    }

    /// Total length of a well-formed sealed file with this header.
    pub fn file_len(&self) -> u64 {
        self.data_offset().saturating_add(self.plaintext_len)
    }

    /// Plaintext length of chunk `i`.
    pub(crate) fn chunk_len(&self, i: u64) -> usize {
        let start = i * u64::from(self.chunk_size);
        (self.plaintext_len - start).min(u64::from(self.chunk_size)) as usize
    }

    /// Length of the fixed part of the header: enough for [`SealedHeader::needed_len`].
    pub const PREFIX_LEN: usize = FIXED;

    /// Parses a header from the start of a sealed file. Needs no key.
    ///
    /// `bytes` must hold at least the whole header (`header_len` bytes; call with the
    /// first 124 bytes to learn it from [`SealedHeader::needed_len`]).
    ///
    /// # Errors
    /// [`SealError::InvalidHeader`] naming the field, [`SealError::UnsupportedVersion`],
    /// or [`SealError::Truncated`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let needed = Self::needed_len(bytes)?;
        if bytes.len() < needed {
            return Err(SealError::Truncated);
        }
        let chunk_size = u32_at(bytes, 16);
        let header_len = u32_at(bytes, 12);
        let plaintext_len = u64_at(bytes, 24);
        let count = u64_at(bytes, 32);
        if !chunk_size.is_power_of_two() || !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk_size) {
            return Err(SealError::InvalidHeader("chunk_size"));
        }
        if u32_at(bytes, 20) != 0 {
            return Err(SealError::InvalidHeader("reserved"));
        }
        if count != chunk_count(plaintext_len, chunk_size) {
            return Err(SealError::InvalidHeader("chunk_count"));
        }
        let meta_len = u32_at(bytes, 120) as usize;
        let meta = &bytes[FIXED..FIXED + meta_len];
        let metadata: BTreeMap<String, String> =
            serde_json::from_slice(meta).map_err(|_| SealError::InvalidHeader("metadata"))?;
        if serde_json::to_vec(&metadata).map_err(|_| SealError::InvalidHeader("metadata"))? != meta
        {
            return Err(SealError::InvalidHeader("metadata is not canonical"));
        }
        let mac_end = FIXED + meta_len + 32;
        if bytes[mac_end..header_len as usize].iter().any(|&b| b != 0) {
            return Err(SealError::InvalidHeader("padding"));
        }
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&bytes[40..56]);
        let mut salt = [0u8; 32];
        salt.copy_from_slice(&bytes[56..88]);
        let mut model_sha256 = [0u8; 32];
        model_sha256.copy_from_slice(&bytes[88..120]);
        let mut mac = [0u8; 32];
        mac.copy_from_slice(&bytes[FIXED + meta_len..mac_end]);
        Ok(SealedHeader {
            header_len,
            chunk_size,
            plaintext_len,
            chunk_count: count,
            key_id: KeyId(key_id),
            salt,
            model_sha256,
            metadata,
            mac,
            authenticated: bytes[..FIXED + meta_len].to_vec(),
        })
    }

    /// Reads exactly one header (`header_len` bytes) from the start of a sealed stream,
    /// leaving `reader` at the tag table. Needs no key.
    ///
    /// # Errors
    /// As [`SealedHeader::from_bytes`]; [`SealError::Truncated`] if the stream ends first;
    /// [`SealError::Io`] if reading fails.
    pub fn from_reader<R: std::io::Read>(reader: &mut R) -> Result<Self, SealError> {
        let mut bytes = vec![0u8; FIXED];
        read_exact_or_truncated(reader, &mut bytes)?;
        let needed = Self::needed_len(&bytes)?;
        bytes.resize(needed, 0);
        read_exact_or_truncated(reader, &mut bytes[FIXED..])?;
        Self::from_bytes(&bytes)
    }

    /// The model name from the metadata, if any.
    pub fn name(&self) -> Option<&str> {
        self.metadata.get("name").map(String::as_str)
    }

    /// How many bytes [`SealedHeader::from_bytes`] needs, from the first 124 bytes.
    ///
    /// # Errors
    /// As [`SealError::InvalidHeader`], [`SealError::UnsupportedVersion`] or
    /// [`SealError::Truncated`] when fewer than 124 bytes are given.
    pub fn needed_len(prefix: &[u8]) -> Result<usize, SealError> {
        if prefix.len() < FIXED {
            return Err(if prefix.len() >= 8 && &prefix[..8] != MAGIC {
                SealError::InvalidHeader("magic")
            } else {
                SealError::Truncated
            });
        }
        if &prefix[..8] != MAGIC {
            return Err(SealError::InvalidHeader("magic"));
        }
        let version = u16_at(prefix, 8);
        if version != VERSION {
            return Err(SealError::UnsupportedVersion { found: version });
        }
        if u16_at(prefix, 10) != SUITE_AES256GCM {
            return Err(SealError::InvalidHeader("suite"));
        }
        let meta_len = u32_at(prefix, 120);
        if meta_len > MAX_META {
            return Err(SealError::InvalidHeader("meta_len"));
        }
        let header_len = u32_at(prefix, 12);
        let min = align((FIXED + meta_len as usize + 32) as u64);
        if u64::from(header_len) != min {
            return Err(SealError::InvalidHeader("header_len"));
        }
        Ok(header_len as usize)
    }
}
