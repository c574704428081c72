//! Sealing and unsealing the chunk stream.
//!
//! Chunk `i` is AES-256-GCM under the file's payload key with the STREAM nonce
//! `u88_be(i) ‖ last` (last = 1 for the final chunk), no AAD. Its tag is at
//! `header_len + 16·i`; its ciphertext at `data_offset + i·chunk_size`, the same length as
//! its plaintext, so every chunk opens independently and in place.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::header::{SealedHeader, DEFAULT_CHUNK, TAG_LEN};
use crate::key::ModelKey;
use crate::SealError;

/// The STREAM nonce of chunk `index`.
pub(crate) fn nonce(index: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::assume_unique_for_key(n)
}

fn aead_key(payload: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, payload).expect("32 bytes is an AES-256 key"))
}

/// How to seal.
#[derive(Debug, Clone)]
pub struct SealOptions {
    /// Plaintext bytes per chunk (power of two, 4 KiB ..= 16 MiB).
    pub chunk_size: u32,
    /// Metadata stored (authenticated, not encrypted) in the header, e.g. `name`.
    pub metadata: BTreeMap<String, String>,
    salt: Option<[u8; 32]>,
}

impl Default for SealOptions {
    fn default() -> Self {
        SealOptions {
            chunk_size: DEFAULT_CHUNK,
            metadata: BTreeMap::new(),
            salt: None,
        }
    }
}

impl SealOptions {
    /// Sets the chunk size.
    pub fn with_chunk_size(mut self, chunk_size: u32) -> Self {
        self.chunk_size = chunk_size;
        self
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: BTreeMap<String, String>) -> Self {
        self.metadata = metadata;
        self
    }

    /// Uses a fixed salt instead of a random one: only for reproducible test vectors.
    /// Two files sealed under one key with one salt share their payload key.
    pub fn danger_fixed_salt(mut self, salt: [u8; 32]) -> Self {
        self.salt = Some(salt);
        self
    }
}

/// Seals `input` (its whole length, from the start) into `output`.
///
/// Two passes over the input: one for its SHA-256 (which the header carries and the
/// payload key depends on), one to encrypt. `progress(done, total)` is called as it goes.
///
/// # Errors
/// [`SealError::Io`] or [`SealError::InvalidOptions`].
pub fn seal<R: Read + Seek, W: Write + Seek>(
    input: &mut R,
    output: &mut W,
    key: &ModelKey,
    options: &SealOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<SealedHeader, SealError> {
    let len = input.seek(SeekFrom::End(0))?;
    input.seek(SeekFrom::Start(0))?;
    let total = len.saturating_mul(2);
    let chunk = options.chunk_size as usize;
    let mut buf = Zeroizing::new(vec![0u8; chunk.clamp(4096, 16 << 20)]);

    // Pass 1: the model digest.
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut done = 0u64;
    while done < len {
        let n = read_up_to(input, &mut buf)?;
        if n == 0 {
            return Err(SealError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "input shrank while sealing",
            )));
        }
        ctx.update(&buf[..n]);
        done += n as u64;
        progress(done, total);
    }
    let mut model_sha256 = [0u8; 32];
    model_sha256.copy_from_slice(ctx.finish().as_ref());

    let salt = match options.salt {
        Some(s) => s,
        None => {
            let mut s = [0u8; 32];
            SystemRandom::new()
                .fill(&mut s)
                .expect("the system CSPRNG works");
            s
        }
    };
    let mut header = SealedHeader::new(
        key.id(),
        salt,
        options.chunk_size,
        len,
        model_sha256,
        options.metadata.clone(),
    )?;
    let keys = header.keys(key);
    let aead = aead_key(&keys.payload);

    // Header, then room for the tag table, then the ciphertext.
    output.seek(SeekFrom::Start(0))?;
    output.write_all(&header.encode(&keys))?;
    let table_len = (header.data_offset() - header.tag_table_offset()) as usize;
    output.write_all(&vec![0u8; table_len])?;

    // Pass 2: encrypt.
    input.seek(SeekFrom::Start(0))?;
    let mut tags = Vec::with_capacity((header.chunk_count * TAG_LEN) as usize);
    for i in 0..header.chunk_count {
        let n = header.chunk_len(i);
        input.read_exact(&mut buf[..n])?;
        let tag = aead
            .seal_in_place_separate_tag(
                nonce(i, i + 1 == header.chunk_count),
                Aad::empty(),
                &mut buf[..n],
            )
            .expect("chunks are far below the GCM length limit");
        output.write_all(&buf[..n])?;
        tags.extend_from_slice(tag.as_ref());
        progress(len + (i * u64::from(options.chunk_size) + n as u64), total);
    }
    output.seek(SeekFrom::Start(header.tag_table_offset()))?;
    output.write_all(&tags)?;
    output.seek(SeekFrom::Start(header.file_len()))?;
    output.flush()?;
    Ok(header)
}

fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Plaintext weights in memory, zeroized when dropped. Never written to a file.
pub struct Plaintext(Zeroizing<Vec<u8>>);

impl Plaintext {
    /// The plaintext bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plaintext({} bytes)", self.0.len())
    }
}

/// How to unseal.
#[derive(Debug, Default)]
pub struct UnsealOptions<'a> {
    /// Worker threads; 0 = one per available core.
    pub threads: usize,
    /// Re-hash the plaintext and compare with the header's SHA-256 (the AEAD under a
    /// header-bound key already proves it; this costs a single-threaded pass).
    pub verify_digest: bool,
    /// Refuse a file whose header names another model digest.
    pub expected_sha256: Option<[u8; 32]>,
    /// Plaintext bytes opened so far, for progress reports.
    pub progress: Option<&'a AtomicU64>,
}

/// Reads and parses the header of a sealed file (no key needed).
///
/// # Errors
/// [`SealError`] naming what is wrong.
pub fn read_header(file: &File) -> Result<SealedHeader, SealError> {
    let mut prefix = vec![0u8; SealedHeader::PREFIX_LEN];
    let n = read_at_up_to(file, &mut prefix, 0)?;
    let needed = SealedHeader::needed_len(&prefix[..n])?;
    let mut bytes = vec![0u8; needed];
    if read_at_up_to(file, &mut bytes, 0)? < needed {
        return Err(SealError::Truncated);
    }
    SealedHeader::from_bytes(&bytes)
}

fn read_at_up_to(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Opens a sealed file into memory, in parallel, checking the header MAC first (a wrong
/// key fails before any chunk is read), then the file length, every chunk, and optionally
/// the digest.
///
/// # Errors
/// [`SealError`]: wrong key, corrupt header, truncated, trailing data, chunk `i` failed
/// authentication, digest mismatch, I/O.
pub fn unseal(
    file: &File,
    key: &ModelKey,
    options: &UnsealOptions<'_>,
) -> Result<(SealedHeader, Plaintext), SealError> {
    let header = checked_header(file, key, options)?;
    let len = usize::try_from(header.plaintext_len)
        .map_err(|_| SealError::InvalidHeader("plaintext_len"))?;
    let mut out = crate::memory::plaintext_buffer(len);
    open_chunks(file, key, &header, options, &mut out)?;
    Ok((header, Plaintext(out)))
}

/// Like [`unseal`], into a buffer the caller provides (e.g. a shared-memory mapping the
/// inference engine reads), which must be exactly `plaintext_len` bytes
/// ([`read_header`] tells). On any failure the buffer is zeroized.
///
/// # Errors
/// As [`unseal`], and [`SealError::InvalidOptions`] if `dest` has the wrong length.
pub fn unseal_into(
    file: &File,
    key: &ModelKey,
    options: &UnsealOptions<'_>,
    dest: &mut [u8],
) -> Result<SealedHeader, SealError> {
    let header = checked_header(file, key, options)?;
    if dest.len() as u64 != header.plaintext_len {
        return Err(SealError::InvalidOptions(
            "destination length differs from the plaintext length",
        ));
    }
    if let Err(e) = open_chunks(file, key, &header, options, dest) {
        zeroize::Zeroize::zeroize(dest);
        return Err(e);
    }
    Ok(header)
}

fn checked_header(
    file: &File,
    key: &ModelKey,
    options: &UnsealOptions<'_>,
) -> Result<SealedHeader, SealError> {
    let header = read_header(file)?;
    header.check_key(key)?;
    if let Some(want) = options.expected_sha256 {
        if want != header.model_sha256 {
            return Err(SealError::DigestMismatch);
        }
    }
    let actual = file.metadata()?.len();
    if actual < header.file_len() {
        return Err(SealError::Truncated);
    }
    if actual > header.file_len() {
        return Err(SealError::TrailingData);
    }
    if file_padding_nonzero(file, &header)? {
        return Err(SealError::InvalidHeader("tag table padding"));
    }
    Ok(header)
}

fn open_chunks(
    file: &File,
    key: &ModelKey,
    header: &SealedHeader,
    options: &UnsealOptions<'_>,
    out: &mut [u8],
) -> Result<(), SealError> {
    let mut tags = vec![0u8; (header.chunk_count * TAG_LEN) as usize];
    file.read_exact_at(&mut tags, header.tag_table_offset())?;
    let keys = header.keys(key);
    let aead = aead_key(&keys.payload);
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .min(header.chunk_count as usize)
    .max(1);
    let chunk = header.chunk_size as usize;
    let per_thread = (header.chunk_count as usize).div_ceil(threads);
    let failed = AtomicBool::new(false);
    let first_failure = AtomicU64::new(u64::MAX);
    let io_error = std::sync::Mutex::new(None::<std::io::Error>);

    std::thread::scope(|s| {
        // Thread t opens chunks [t·per_thread, (t+1)·per_thread): contiguous for the disk.
        let mut rest: &mut [u8] = out;
        for t in 0..threads {
            let first = (t * per_thread) as u64;
            if first >= header.chunk_count {
                break;
            }
            let take = (per_thread * chunk).min(rest.len());
            let (mine, tail) = std::mem::take(&mut rest).split_at_mut(take);
            rest = tail;
            let (header, aead, tags, failed, first_failure, io_error) =
                (&header, &aead, &tags, &failed, &first_failure, &io_error);
            s.spawn(move || {
                let last_chunk = (first + per_thread as u64).min(header.chunk_count);
                let mut dest = mine;
                for i in first..last_chunk {
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let n = header.chunk_len(i);
                    let (buf, tail) = std::mem::take(&mut dest).split_at_mut(n);
                    dest = tail;
                    let offset = header.data_offset() + i * u64::from(header.chunk_size);
                    if let Err(e) = file.read_exact_at(buf, offset) {
                        failed.store(true, Ordering::Relaxed);
                        *io_error.lock().expect("no panics while holding it") = Some(e);
                        return;
                    }
                    let t = (i * TAG_LEN) as usize;
                    let tag = Tag::from(<[u8; 16]>::try_from(&tags[t..t + 16]).expect("16 bytes"));
                    let last = i + 1 == header.chunk_count;
                    if aead
                        .open_in_place_separate_tag(nonce(i, last), Aad::empty(), tag, buf, 0..)
                        .is_err()
                    {
                        failed.store(true, Ordering::Relaxed);
                        first_failure.fetch_min(i, Ordering::Relaxed);
                        return;
                    }
                    if let Some(p) = options.progress {
                        p.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            });
        }
    });

    if let Some(e) = io_error.into_inner().expect("no panics while holding it") {
        return Err(SealError::Io(e));
    }
    let bad = first_failure.load(Ordering::Relaxed);
    if bad != u64::MAX {
        return Err(SealError::ChunkAuthFailed { index: bad });
    }
    if options.verify_digest && digest::digest(&digest::SHA256, out).as_ref() != header.model_sha256
    {
        return Err(SealError::DigestMismatch);
    }
    Ok(())
}

fn file_padding_nonzero(file: &File, header: &SealedHeader) -> Result<bool, SealError> {
    let start = header.tag_table_offset() + header.chunk_count * TAG_LEN;
    let mut pad = vec![0u8; (header.data_offset() - start) as usize];
    file.read_exact_at(&mut pad, start)?;
    Ok(pad.iter().any(|&b| b != 0))
}
