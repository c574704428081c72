//! The sealed-model format of Veil: an authenticated header and a chunked AES-256-GCM
//! stream (age-style STREAM nonces), with the tags in a table before 4096-aligned
//! ciphertext so that every chunk opens independently, in place and in parallel.
//!
//! What it does: seal a model under a 32-byte [`ModelKey`]; parse a header without the
//! key; check a key against the header MAC cheaply; unseal into memory that is zeroized
//! when dropped. What it does not do: HTTP, TLS, attestation, or temporary files.
//! The format is specified in `docs/sealed-format.md`.
//!
//! ```
//! use std::io::Cursor;
//! use veil_sealing::{seal, unseal_file, ModelKey, SealError, SealOptions, UnsealOptions};
//!
//! let key = ModelKey::generate();
//! let mut sealed = tempfile::tempfile()?;
//! let options = SealOptions::default().with_name("tiny");
//! seal(&mut Cursor::new(b"weights".to_vec()), &mut sealed, &key, &options, &mut |_, _| {})?;
//!
//! let plaintext = unseal_file(&sealed, &key, &UnsealOptions::default())?;
//! assert_eq!(plaintext.as_bytes(), b"weights");
//! assert_eq!(plaintext.header().key_id, key.key_id());
//! assert_eq!(plaintext.header().name(), Some("tiny"));
//!
//! // Another key fails at the header, before any chunk is read.
//! let other = unseal_file(&sealed, &ModelKey::generate(), &UnsealOptions::default());
//! assert!(matches!(other, Err(SealError::KeyIdMismatch { .. })));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The server checks a released key against the header alone with
//! [`SealedHeader::check_key`], then calls [`unseal_file`]. `veil seal --inspect` reads
//! the header with [`read_header`] or [`SealedHeader::from_reader`], without a key.
//!
//! # Security
//! `ring` keeps its own copies of the derived keys (the HKDF PRK, the HMAC key, the
//! expanded AES key schedule) and does not zeroize them when dropped; the model key and
//! the derived payload key bytes held here are zeroized.

pub mod header;
pub mod key;
mod memory;
pub use memory::exclude_memfd_from_core_dumps;
pub mod stream;

pub use header::SealedHeader;
pub use key::{KeyId, ModelKey};
pub use stream::{
    read_header, seal, unseal_file, unseal_into, unseal_reader, unseal_to, ChunkSink, Plaintext,
    SealOptions, UnsealOptions,
};

/// Why sealing or unsealing failed. Coarse on purpose: no oracle beyond these reasons,
/// and never key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The key's id is not the one the file was sealed with.
    #[error("this file is sealed with key {file}, not with key {key}")]
    KeyIdMismatch {
        /// Key id in the file header.
        file: KeyId,
        /// Key id of the key given.
        key: KeyId,
    },
    /// The key has the right id but does not open the header MAC.
    #[error("wrong key for key id {key_id}")]
    WrongKey {
        /// Key id in the file header.
        key_id: KeyId,
    },
    /// The header is corrupt (the field is named).
    #[error("sealed header is corrupt: {0}")]
    InvalidHeader(&'static str),
    /// A format version this build does not read.
    #[error("sealed format version {found} is not supported (this build reads version 1)")]
    UnsupportedVersion {
        /// Version in the file.
        found: u16,
    },
    /// A chunk did not authenticate: modified, reordered, or spliced from another file.
    #[error("chunk {index} failed authentication")]
    ChunkAuthFailed {
        /// Index of the first failing chunk.
        index: u64,
    },
    /// The file is shorter than its header says.
    #[error("sealed file is truncated")]
    Truncated,
    /// Bytes follow the last chunk.
    #[error("sealed file has trailing data after the last chunk")]
    TrailingData,
    /// The plaintext digest is not the expected one.
    #[error("model digest does not match")]
    DigestMismatch,
    /// A key file is not valid (the field is named, the key never shown).
    #[error("invalid key file: {0}")]
    InvalidKeyFile(&'static str),
    /// A key file that its group or others may read, write or run: refused unless
    /// [`key::danger::allow_insecure_key_files`] was called.
    #[error("{path} is open to group or others (mode {mode:04o}): run `chmod 600 {path}` (or pass --allow-insecure-key-file)", path = path.display())]
    InsecureKeyFile {
        /// The key file.
        path: std::path::PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Options out of range.
    #[error("invalid seal options: {0}")]
    InvalidOptions(&'static str),
    /// Reading or writing failed (the OS error, as it is: no second copy of it in an
    /// error chain).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
