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
use zeroize::{Zeroize, Zeroizing};

use crate::header::{read_exact_or_truncated, SealedHeader, DEFAULT_CHUNK, TAG_LEN};
use crate::key::ModelKey;
use crate::SealError;

/// The STREAM nonce of chunk `index`: `u88_be(index) ‖ last`.
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
    /// Plaintext bytes per chunk (power of two, 4 KiB ..= 16 MiB; default 1 MiB).
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

    /// Sets the `name` metadata entry.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.metadata.insert("name".to_owned(), name.into());
        self
    }

    /// Uses a fixed salt instead of a random one: only for reproducible test vectors.
    ///
    /// # Security
    /// Two files sealed under one key with one salt and the same header fields share their
    /// payload key and nonces: never use this for real models.
    pub fn danger_fixed_salt(mut self, salt: [u8; 32]) -> Self {
        self.salt = Some(salt);
        self
    }
}

/// Seals `input` (its whole length, from the start) into `output`, in one pass.
///
/// The input length is learnt by seeking to its end; `output` gets zeros where the header
/// and tag table go, then the ciphertext, then (seeking back) the header and tag table,
/// so a seal that fails half-way never leaves a file that parses. The model's SHA-256 is
/// computed while encrypting. `progress(done, total)` reports plaintext bytes.
///
/// # Errors
/// [`SealError::InvalidOptions`] for a bad chunk size or metadata over 64 KiB;
/// [`SealError::Io`] if reading or writing fails or the input changes length meanwhile.
pub fn seal<R: Read + Seek, W: Write + Seek>(
    input: &mut R,
    output: &mut W,
    key: &ModelKey,
    options: &SealOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<SealedHeader, SealError> {
    let len = input.seek(SeekFrom::End(0))?;
    input.seek(SeekFrom::Start(0))?;
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
        key.key_id(),
        salt,
        options.chunk_size,
        len,
        [0; 32],
        options.metadata.clone(),
    )?;
    let keys = header.keys(key);
    let aead = aead_key(&keys.payload);

    output.seek(SeekFrom::Start(0))?;
    output.write_all(&vec![0u8; header.data_offset() as usize])?;

    let changed = || {
        SealError::Io(std::io::Error::other(
            "the input changed length while it was being sealed",
        ))
    };
    let mut buf = Zeroizing::new(vec![0u8; options.chunk_size as usize]);
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut tags = Vec::with_capacity((header.chunk_count * TAG_LEN) as usize);
    let mut done = 0u64;
    for i in 0..header.chunk_count {
        let n = header.chunk_len(i);
        read_exact_or_truncated(input, &mut buf[..n]).map_err(|e| match e {
            SealError::Truncated => changed(),
            e => e,
        })?;
        ctx.update(&buf[..n]);
        let tag = aead
            .seal_in_place_separate_tag(
                nonce(i, i + 1 == header.chunk_count),
                Aad::empty(),
                &mut buf[..n],
            )
            .expect("chunks are far below the GCM length limit");
        output.write_all(&buf[..n])?;
        tags.extend_from_slice(tag.as_ref());
        done += n as u64;
        progress(done, len);
    }
    if input.read(&mut [0u8; 1])? != 0 {
        return Err(changed());
    }
    let mut model_sha256 = [0u8; 32];
    model_sha256.copy_from_slice(ctx.finish().as_ref());
    header.set_model_sha256(model_sha256);

    output.seek(SeekFrom::Start(0))?;
    output.write_all(&header.encode(&keys))?;
    output.write_all(&tags)?;
    output.seek(SeekFrom::Start(header.file_len()))?;
    output.flush()?;
    Ok(header)
}

/// Plaintext weights in memory, zeroized when dropped. Never written to a file.
///
/// Holds the header it was opened under, so the caller can log its key id and digest.
pub struct Plaintext {
    bytes: Zeroizing<Vec<u8>>,
    header: SealedHeader,
}

impl Plaintext {
    /// The plaintext bytes (read them with `std::io::Cursor`).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The plaintext length.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the plaintext is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The authenticated header of the file this came from.
    pub fn header(&self) -> &SealedHeader {
        &self.header
    }
}

impl AsRef<[u8]> for Plaintext {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl std::fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plaintext({} bytes)", self.bytes.len())
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
    /// Refuse a file whose header names another model digest (checked before any chunk
    /// is read).
    pub expected_sha256: Option<[u8; 32]>,
    /// Plaintext bytes opened so far, for progress reports.
    pub progress: Option<&'a AtomicU64>,
}

impl UnsealOptions<'_> {
    fn threads(&self, chunks: u64) -> usize {
        let n = match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        n.min(usize::try_from(chunks).unwrap_or(usize::MAX)).max(1)
    }
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

/// Opens a sealed file into memory, in parallel: the header MAC first (a wrong key fails
/// before any chunk is read), then the file length, the tag-table padding, every chunk
/// (its index and last flag are in its nonce), and optionally the digest.
///
/// Each worker thread takes a contiguous run of chunks and, one chunk at a time, reads it
/// with a positional read straight into its place in the plaintext buffer and decrypts it
/// there: no other buffer, no temporary file.
///
/// # Errors
/// [`SealError::KeyIdMismatch`], [`SealError::WrongKey`], [`SealError::InvalidHeader`],
/// [`SealError::UnsupportedVersion`], [`SealError::Truncated`],
/// [`SealError::TrailingData`], [`SealError::ChunkAuthFailed`],
/// [`SealError::DigestMismatch`], [`SealError::Io`]. On any failure every decrypted byte
/// is zeroized.
pub fn unseal_file(
    file: &File,
    key: &ModelKey,
    options: &UnsealOptions<'_>,
) -> Result<Plaintext, SealError> {
    let header = checked_header(file, key, options)?;
    let len = usize::try_from(header.plaintext_len)
        .map_err(|_| SealError::InvalidHeader("plaintext_len"))?;
    let mut bytes = crate::memory::plaintext_buffer(len);
    open_file_chunks(file, key, &header, options, Target::Memory(&mut bytes))?;
    verify_digest(&header, options, &bytes)?;
    Ok(Plaintext { bytes, header })
}

/// Like [`unseal_file`], into a buffer the caller provides (e.g. a shared-memory mapping
/// the inference engine reads), which must be exactly `plaintext_len` bytes
/// ([`read_header`] tells). On any failure the buffer is zeroized.
///
/// # Errors
/// As [`unseal_file`], and [`SealError::InvalidOptions`] if `dest` has the wrong length.
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
    if let Err(e) = open_file_chunks(file, key, &header, options, Target::Memory(&mut *dest))
        .and_then(|()| verify_digest(&header, options, dest))
    {
        dest.zeroize();
        return Err(e);
    }
    Ok(header)
}

/// Opens a sealed stream from any reader (a pipe, a socket, a `Cursor`): the same checks
/// as [`unseal_file`], in the same order. The ciphertext is read sequentially, a window
/// of chunks at a time, straight into the plaintext buffer, and each window is decrypted
/// in place by `options.threads` threads.
///
/// # Errors
/// As [`unseal_file`].
pub fn unseal_reader<R: Read>(
    reader: &mut R,
    key: &ModelKey,
    options: &UnsealOptions<'_>,
) -> Result<Plaintext, SealError> {
    let header = SealedHeader::from_reader(reader)?;
    check_key_and_pin(&header, key, options)?;
    let mut table = vec![0u8; (header.data_offset() - header.tag_table_offset()) as usize];
    read_exact_or_truncated(reader, &mut table)?;
    let tags_len = (header.chunk_count * TAG_LEN) as usize;
    if table[tags_len..].iter().any(|&b| b != 0) {
        return Err(SealError::InvalidHeader("tag table padding"));
    }
    let len = usize::try_from(header.plaintext_len)
        .map_err(|_| SealError::InvalidHeader("plaintext_len"))?;
    let mut bytes = crate::memory::plaintext_buffer(len);
    let keys = header.keys(key);
    let aead = aead_key(&keys.payload);
    let threads = options.threads(header.chunk_count);
    let chunk = header.chunk_size as usize;
    let window = chunk * threads * 4;
    let mut first = 0u64;
    for win in bytes.chunks_mut(window.max(1)) {
        read_exact_or_truncated(reader, win)?;
        let per_thread = win.len().div_ceil(chunk).div_ceil(threads);
        let failure = AtomicU64::new(u64::MAX);
        std::thread::scope(|s| {
            for (t, part) in win.chunks_mut(per_thread * chunk).enumerate() {
                let from = first + (t * per_thread) as u64;
                let (header, aead, tags, failure) = (&header, &aead, &table, &failure);
                s.spawn(move || {
                    for (i, c) in (from..).zip(part.chunks_mut(chunk)) {
                        if open_chunk(aead, header, tags, i, c).is_err() {
                            failure.fetch_min(i, Ordering::Relaxed);
                            return;
                        }
                    }
                });
            }
        });
        let bad = failure.into_inner();
        if bad != u64::MAX {
            return Err(SealError::ChunkAuthFailed { index: bad });
        }
        first += win.len().div_ceil(chunk) as u64;
        if let Some(p) = options.progress {
            p.fetch_add(win.len() as u64, Ordering::Relaxed);
        }
    }
    if header.plaintext_len == 0 {
        // The one empty chunk still carries a tag.
        open_chunk(&aead, &header, &table, 0, &mut [])
            .map_err(|()| SealError::ChunkAuthFailed { index: 0 })?;
    }
    if reader.read(&mut [0u8; 1])? != 0 {
        return Err(SealError::TrailingData);
    }
    verify_digest(&header, options, &bytes)?;
    Ok(Plaintext { bytes, header })
}

fn check_key_and_pin(
    header: &SealedHeader,
    key: &ModelKey,
    options: &UnsealOptions<'_>,
) -> Result<(), SealError> {
    header.check_key(key)?;
    match options.expected_sha256 {
        Some(want) if want != header.model_sha256 => Err(SealError::DigestMismatch),
        _ => Ok(()),
    }
}

/// Where [`unseal_to`] puts each chunk once it has been authenticated.
pub trait ChunkSink: Sync {
    /// Stores `plaintext` at `offset` of the model. Called from several threads at once,
    /// for disjoint ranges, in no particular order.
    ///
    /// # Errors
    /// An I/O error ends the unsealing with [`SealError::Io`].
    fn write_at(&self, offset: u64, plaintext: &[u8]) -> std::io::Result<()>;
}

/// Like [`unseal_file`], handing each authenticated chunk to `sink` (e.g. the in-memory
/// file an inference engine maps) instead of building a plaintext buffer: one copy of
/// the weights fewer. Each worker decrypts into a chunk-sized scratch buffer that is
/// zeroized afterwards; nothing unauthenticated reaches the sink. On failure the sink may
/// hold some authenticated chunks: the caller discards it.
///
/// # Errors
/// As [`unseal_file`]; [`SealError::InvalidOptions`] if `verify_digest` is asked for (it
/// needs the whole plaintext in one buffer).
pub fn unseal_to(
    file: &File,
    key: &ModelKey,
    options: &UnsealOptions<'_>,
    sink: &dyn ChunkSink,
) -> Result<SealedHeader, SealError> {
    if options.verify_digest {
        return Err(SealError::InvalidOptions(
            "verify_digest needs the plaintext in memory (unseal_file or unseal_into)",
        ));
    }
    let header = checked_header(file, key, options)?;
    open_file_chunks(file, key, &header, options, Target::Sink(sink))?;
    Ok(header)
}

fn checked_header(
    file: &File,
    key: &ModelKey,
    options: &UnsealOptions<'_>,
) -> Result<SealedHeader, SealError> {
    let header = read_header(file)?;
    check_key_and_pin(&header, key, options)?;
    let actual = file.metadata()?.len();
    if actual < header.file_len() {
        return Err(SealError::Truncated);
    }
    if actual > header.file_len() {
        return Err(SealError::TrailingData);
    }
    let start = header.tag_table_offset() + header.chunk_count * TAG_LEN;
    let mut pad = vec![0u8; (header.data_offset() - start) as usize];
    file.read_exact_at(&mut pad, start)?;
    if pad.iter().any(|&b| b != 0) {
        return Err(SealError::InvalidHeader("tag table padding"));
    }
    Ok(header)
}

/// Opens chunk `i` in place; `tags` is the tag table.
fn open_chunk(
    aead: &LessSafeKey,
    header: &SealedHeader,
    tags: &[u8],
    i: u64,
    buf: &mut [u8],
) -> Result<(), ()> {
    let t = (i * TAG_LEN) as usize;
    let tag = Tag::from(<[u8; 16]>::try_from(&tags[t..t + 16]).expect("16 bytes"));
    let last = i + 1 == header.chunk_count;
    aead.open_in_place_separate_tag(nonce(i, last), Aad::empty(), tag, buf, 0..)
        .map(|_| ())
        .map_err(|_| ())
}

fn verify_digest(
    header: &SealedHeader,
    options: &UnsealOptions<'_>,
    out: &[u8],
) -> Result<(), SealError> {
    if options.verify_digest && digest::digest(&digest::SHA256, out).as_ref() != header.model_sha256
    {
        return Err(SealError::DigestMismatch);
    }
    Ok(())
}

/// Where opened chunks go.
enum Target<'a> {
    /// In place, in a buffer of exactly the plaintext length.
    Memory(&'a mut [u8]),
    /// Handed over chunk by chunk.
    Sink(&'a dyn ChunkSink),
}

fn open_file_chunks(
    file: &File,
    key: &ModelKey,
    header: &SealedHeader,
    options: &UnsealOptions<'_>,
    target: Target<'_>,
) -> Result<(), SealError> {
    let mut tags = vec![0u8; (header.chunk_count * TAG_LEN) as usize];
    file.read_exact_at(&mut tags, header.tag_table_offset())?;
    let keys = header.keys(key);
    let aead = aead_key(&keys.payload);
    let threads = options.threads(header.chunk_count);
    let chunk = header.chunk_size as usize;
    let per_thread = (header.chunk_count as usize).div_ceil(threads);
    let failed = AtomicBool::new(false);
    let first_failure = AtomicU64::new(u64::MAX);
    let io_error = std::sync::Mutex::new(None::<std::io::Error>);
    let (mut rest, sink): (&mut [u8], Option<&dyn ChunkSink>) = match target {
        Target::Memory(out) => (out, None),
        Target::Sink(sink) => (&mut [], Some(sink)),
    };

    std::thread::scope(|s| {
        // Thread t opens chunks [t·per_thread, (t+1)·per_thread): contiguous for the disk.
        for t in 0..threads {
            let first = (t * per_thread) as u64;
            if first >= header.chunk_count {
                break;
            }
            // In memory, each thread owns its run of the buffer and decrypts in place;
            // for a sink, it decrypts into a scratch buffer of one chunk.
            let mut dest: &mut [u8] = &mut [];
            let mut scratch = Zeroizing::new(Vec::new());
            if sink.is_some() {
                scratch.resize(chunk, 0);
            } else {
                let take = (per_thread * chunk).min(rest.len());
                let (mine, tail) = std::mem::take(&mut rest).split_at_mut(take);
                rest = tail;
                dest = mine;
            }
            let (aead, tags, failed, first_failure, io_error) =
                (&aead, &tags, &failed, &first_failure, &io_error);
            s.spawn(move || {
                let fail_io = |e: std::io::Error| {
                    failed.store(true, Ordering::Relaxed);
                    *io_error.lock().expect("no panics while holding it") = Some(e);
                };
                let end = (first + per_thread as u64).min(header.chunk_count);
                for i in first..end {
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let n = header.chunk_len(i);
                    let buf: &mut [u8] = if sink.is_some() {
                        &mut scratch[..n]
                    } else {
                        let (buf, tail) = std::mem::take(&mut dest).split_at_mut(n);
                        dest = tail;
                        buf
                    };
                    let offset = header.data_offset() + i * u64::from(header.chunk_size);
                    if let Err(e) = file.read_exact_at(buf, offset) {
                        return fail_io(e);
                    }
                    if open_chunk(aead, header, tags, i, buf).is_err() {
                        failed.store(true, Ordering::Relaxed);
                        first_failure.fetch_min(i, Ordering::Relaxed);
                        return;
                    }
                    if let Some(sink) = sink {
                        if let Err(e) = sink.write_at(i * u64::from(header.chunk_size), buf) {
                            return fail_io(e);
                        }
                    }
                    if let Some(p) = options.progress {
                        p.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            });
        }
    });

    let bad = first_failure.into_inner();
    if bad != u64::MAX {
        return Err(SealError::ChunkAuthFailed { index: bad });
    }
    if let Some(e) = io_error.into_inner().expect("no panics while holding it") {
        // The length was checked, so a short read means the file shrank meanwhile.
        return Err(match e.kind() {
            std::io::ErrorKind::UnexpectedEof => SealError::Truncated,
            _ => SealError::Io(e),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// Re-seals chunk `i` of a sealed file with the given last flag, as only the key
    /// holder could: the reader must still refuse it.
    fn reseal_chunk(bytes: &mut [u8], key: &ModelKey, i: u64, last: bool) {
        let header = SealedHeader::from_bytes(bytes).expect("parses");
        let aead = aead_key(&header.keys(key).payload);
        let start = (header.data_offset() + i * u64::from(header.chunk_size)) as usize;
        let t = (header.tag_table_offset() + i * TAG_LEN) as usize;
        let tag = Tag::from(<[u8; 16]>::try_from(&bytes[t..t + 16]).expect("16"));
        let chunk = &mut bytes[start..start + header.chunk_len(i)];
        let is_last = i + 1 == header.chunk_count;
        aead.open_in_place_separate_tag(nonce(i, is_last), Aad::empty(), tag, chunk, 0..)
            .expect("opens");
        let tag = aead
            .seal_in_place_separate_tag(nonce(i, last), Aad::empty(), chunk)
            .expect("seals");
        bytes[t..t + 16].copy_from_slice(tag.as_ref());
    }

    fn sealed(len: usize, key: &ModelKey) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        let opts = SealOptions::default().with_chunk_size(4096);
        seal(
            &mut Cursor::new(vec![7u8; len]),
            &mut out,
            key,
            &opts,
            &mut |_, _| {},
        )
        .expect("seals");
        out.into_inner()
    }

    fn open(bytes: &[u8], key: &ModelKey) -> Result<Plaintext, SealError> {
        unseal_reader(&mut Cursor::new(bytes), key, &UnsealOptions::default())
    }

    #[test]
    fn the_last_flag_is_checked_on_every_chunk() {
        let key = ModelKey::generate();
        let good = sealed(3 * 4096 + 5, &key);
        assert!(open(&good, &key).is_ok());

        let mut b = good.clone();
        reseal_chunk(&mut b, &key, 3, false);
        assert!(matches!(
            open(&b, &key),
            Err(SealError::ChunkAuthFailed { index: 3 })
        ));

        let mut b = good.clone();
        reseal_chunk(&mut b, &key, 1, true);
        assert!(matches!(
            open(&b, &key),
            Err(SealError::ChunkAuthFailed { index: 1 })
        ));
    }

    #[test]
    fn seal_reports_progress_up_to_the_plaintext_length() {
        let key = ModelKey::generate();
        let mut seen = Vec::new();
        let mut out = Cursor::new(Vec::new());
        let opts = SealOptions::default().with_chunk_size(4096);
        seal(
            &mut Cursor::new(vec![1u8; 10_000]),
            &mut out,
            &key,
            &opts,
            &mut |d, t| seen.push((d, t)),
        )
        .expect("seals");
        assert_eq!(seen, vec![(4096, 10_000), (8192, 10_000), (10_000, 10_000)]);
    }

    /// Collects what `unseal_to` hands over.
    #[derive(Default)]
    struct Collect(std::sync::Mutex<Vec<(u64, Vec<u8>)>>);

    impl ChunkSink for Collect {
        fn write_at(&self, offset: u64, plaintext: &[u8]) -> std::io::Result<()> {
            self.0
                .lock()
                .expect("not poisoned")
                .push((offset, plaintext.to_vec()));
            Ok(())
        }
    }

    #[test]
    fn unseal_to_hands_over_exactly_the_authenticated_chunks() {
        use std::io::Write as _;
        let key = ModelKey::generate();
        let plain: Vec<u8> = (0..3 * 4096 + 5).map(|i| (i % 251) as u8).collect();
        let mut sealed_bytes = Cursor::new(Vec::new());
        let opts = SealOptions::default().with_chunk_size(4096);
        seal(
            &mut Cursor::new(plain.clone()),
            &mut sealed_bytes,
            &key,
            &opts,
            &mut |_, _| {},
        )
        .expect("seals");
        let sealed_bytes = sealed_bytes.into_inner();
        let file_with = |bytes: &[u8]| {
            let mut f = tempfile::tempfile().expect("tempfile");
            f.write_all(bytes).expect("write");
            f
        };
        let options = UnsealOptions {
            threads: 2,
            ..UnsealOptions::default()
        };

        let sink = Collect::default();
        let header = unseal_to(&file_with(&sealed_bytes), &key, &options, &sink).expect("opens");
        let mut got = sink.0.into_inner().expect("not poisoned");
        got.sort();
        assert_eq!(got.len(), 4);
        let mut assembled = Vec::new();
        for (offset, bytes) in got {
            assert_eq!(offset, assembled.len() as u64);
            assembled.extend_from_slice(&bytes);
        }
        assert_eq!(assembled, plain);
        assert_eq!(header.plaintext_len, plain.len() as u64);

        // A flipped ciphertext byte in chunk 2: that chunk never reaches the sink.
        let mut tampered = sealed_bytes.clone();
        let at = (header.data_offset() + 2 * 4096 + 17) as usize;
        tampered[at] ^= 1;
        let sink = Collect::default();
        assert!(matches!(
            unseal_to(&file_with(&tampered), &key, &options, &sink),
            Err(SealError::ChunkAuthFailed { index: 2 })
        ));
        let seen = sink.0.into_inner().expect("not poisoned");
        assert!(
            seen.iter().all(|(offset, _)| *offset != 2 * 4096),
            "{:?}",
            seen.iter().map(|s| s.0).collect::<Vec<_>>()
        );

        let digest = UnsealOptions {
            verify_digest: true,
            ..UnsealOptions::default()
        };
        assert!(matches!(
            unseal_to(
                &file_with(&sealed_bytes),
                &key,
                &digest,
                &Collect::default()
            ),
            Err(SealError::InvalidOptions(_))
        ));
    }
}
