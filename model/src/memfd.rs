//! Handing in-memory model bytes to llama.cpp without a file on disk: an anonymous memfd,
//! opened by llama.cpp as `/proc/self/fd/N`.
//!
//! # Safety
//! The `unsafe` here is [`ModelWipe`]'s: one shared mapping of the memfd that this module
//! makes (`mmap`), marks out of core dumps (`madvise`), writes zeros through and reads back
//! (only behind `&mut self`), and unmaps once (`munmap` on drop). No reference into the
//! mapping ever leaves the module.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use rustix::fs::{
    fcntl_add_seals, fcntl_get_seals, ftruncate, memfd_create, MemfdFlags, SealFlags,
};

use crate::EngineError;

/// An anonymous in-memory file for model bytes (a memfd: no disk, no name in any file
/// system), filled at chosen offsets, e.g. by parallel unsealing workers, and then handed
/// to [`LlamaEngine::load_file`](crate::LlamaEngine::load_file). Closed (and its pages
/// freed) when dropped.
///
/// Once filled it can be sealed ([`ModelFile::seal`]): from then on nobody holding a
/// descriptor for it (this process, or one that opened `/proc/PID/fd/N`) can write, grow
/// or shrink it, except through the one [`ModelWipe`] taken before sealing, which can
/// only overwrite it with zeros.
pub struct ModelFile {
    fd: OwnedFd,
    len: u64,
    /// Whether the engine should lock the loaded model in memory (`mlock`).
    lock: bool,
}

impl std::fmt::Debug for ModelFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelFile").field("len", &self.len).finish()
    }
}

impl ModelFile {
    /// The memfd's name: its mappings show as `/memfd:veil-model` in `/proc/PID/maps`.
    pub const NAME: &'static str = "veil-model";

    /// An empty (all zero) in-memory file of `len` bytes.
    ///
    /// # Errors
    /// [`EngineError::Load`] if the memfd cannot be created or sized.
    pub fn new(len: u64) -> Result<Self, EngineError> {
        let fd = memfd_create(Self::NAME, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(|e| EngineError::Load(format!("memfd_create: {e}")))?;
        ftruncate(&fd, len)
            .map_err(|e| EngineError::Load(format!("sizing the in-memory model: {e}")))?;
        Ok(ModelFile {
            fd,
            len,
            lock: false,
        })
    }

    /// The seals [`ModelFile::seal`] adds: no new write (no `write`, no new writable
    /// mapping), no growth, no shrinking, and no change to the seals.
    pub const SEALS: SealFlags = SealFlags::FUTURE_WRITE
        .union(SealFlags::GROW)
        .union(SealFlags::SHRINK)
        .union(SealFlags::SEAL);

    /// Seals the filled file against writes, growth and shrinking (`F_SEAL_FUTURE_WRITE`,
    /// `F_SEAL_GROW`, `F_SEAL_SHRINK`, then `F_SEAL_SEAL`); [`ModelFile::write_at`] fails
    /// afterwards. `F_SEAL_FUTURE_WRITE` rather than `F_SEAL_WRITE`: it refuses every new
    /// write and writable mapping just the same, and leaves the mapping of a
    /// [`ModelWipe`] taken before, so that the weights can still be zeroed.
    ///
    /// # Errors
    /// [`EngineError::Load`] if the kernel refuses.
    pub fn seal(&self) -> Result<(), EngineError> {
        fcntl_add_seals(&self.fd, Self::SEALS)
            .map_err(|e| EngineError::Load(format!("sealing the in-memory model: {e}")))
    }

    /// A handle that can overwrite the whole file with zeros later, even once it is sealed
    /// and the engine holds it: a shared writable mapping of it, made now (before
    /// [`ModelFile::seal`], which then refuses any other). Take it before sealing.
    ///
    /// # Errors
    /// [`EngineError::Load`] if the mapping cannot be made (e.g. the file is sealed).
    pub fn wipe_handle(&self) -> Result<ModelWipe, EngineError> {
        ModelWipe::map(&self.fd, self.len)
    }

    /// Whether every seal of [`ModelFile::SEALS`] is in place (`F_GET_SEALS`).
    pub fn is_sealed(&self) -> bool {
        fcntl_get_seals(&self.fd).is_ok_and(|s| s.contains(Self::SEALS))
    }

    /// Asks the engine to lock the model's pages in memory (`mlock`) once it maps them, so
    /// that they are never swapped out. Where `RLIMIT_MEMLOCK` does not allow it, loading
    /// goes on unlocked (the caller can read `VmLck` to see which).
    pub fn lock_in_memory(&mut self, lock: bool) {
        self.lock = lock;
    }

    /// Whether [`ModelFile::lock_in_memory`] was asked for.
    pub fn locks_in_memory(&self) -> bool {
        self.lock
    }

    /// An in-memory file holding a copy of `bytes`.
    ///
    /// # Errors
    /// [`EngineError::Load`] if the memfd cannot be created or written.
    pub fn with_bytes(bytes: &[u8]) -> Result<Self, EngineError> {
        let file = ModelFile::new(bytes.len() as u64)?;
        file.write_at(0, bytes)
            .map_err(|e| EngineError::Load(format!("writing the in-memory model: {e}")))?;
        Ok(file)
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes `bytes` at `offset` (may be called from several threads at once, for
    /// disjoint ranges).
    ///
    /// # Errors
    /// If the range does not lie within the file, or the write fails.
    pub fn write_at(&self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        let end = offset.checked_add(bytes.len() as u64);
        if end.is_none_or(|end| end > self.len) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "write beyond the end of the in-memory model",
            ));
        }
        let (mut offset, mut rest) = (offset, bytes);
        while !rest.is_empty() {
            let n = rustix::io::pwrite(&self.fd, rest, offset)?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            rest = &rest[n..];
            offset += n as u64;
        }
        Ok(())
    }

    /// The path through which this process (only) can open it.
    pub(crate) fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

/// Zeroes a [`ModelFile`]'s bytes when the key that opened them is withdrawn: a shared
/// writable mapping of the whole file, made before it was sealed. Writing through it
/// reaches every mapping of the file (the engine's included) and the file's own pages.
/// Dropping it unmaps it and closes its descriptor.
pub struct ModelWipe {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    /// Its own descriptor for the file, so that the pages live until the wipe is done.
    _fd: OwnedFd,
}

// SAFETY: the mapping is owned by this value; `wipe` takes `&mut self`.
unsafe impl Send for ModelWipe {}

impl std::fmt::Debug for ModelWipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelWipe").field("len", &self.len).finish()
    }
}

/// What a wipe did, as the wipe itself counted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wiped {
    /// Bytes overwritten with zeros.
    pub bytes: u64,
    /// Bytes read back afterwards that are not zero (0 when the wipe held).
    pub nonzero_after: u64,
}

impl ModelWipe {
    fn map(fd: &OwnedFd, len: u64) -> Result<Self, EngineError> {
        let fd = fd
            .try_clone()
            .map_err(|e| EngineError::Load(format!("duplicating the in-memory model: {e}")))?;
        let len = usize::try_from(len)
            .map_err(|_| EngineError::Load("the in-memory model is too large to map".into()))?;
        if len == 0 {
            return Ok(ModelWipe {
                ptr: std::ptr::NonNull::dangling(),
                len,
                _fd: fd,
            });
        }
        // SAFETY: a fresh mapping at an address the kernel picks, of a file this value
        // keeps open; nothing else in this process refers to it.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .map_err(|e| EngineError::Load(format!("mapping the in-memory model: {e}")))?;
        let ptr = std::ptr::NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| EngineError::Load("mmap gave a null mapping".into()))?;
        // Keep the mapping out of core dumps, like the engine's.
        // SAFETY: the range is this value's own mapping.
        let _ = unsafe {
            rustix::mm::madvise(ptr.as_ptr().cast(), len, rustix::mm::Advice::LinuxDontDump)
        };
        Ok(ModelWipe { ptr, len, _fd: fd })
    }

    /// Overwrites every byte with zeros (volatile writes the compiler cannot drop), then
    /// reads them all back and counts those that are not zero.
    ///
    /// Call it once nothing computes with the weights any more (the engine stopped): a
    /// reader at the same time would see zeros part-way.
    pub fn wipe(&mut self) -> Wiped {
        if self.len == 0 {
            return Wiped {
                bytes: 0,
                nonzero_after: 0,
            };
        }
        // SAFETY: `ptr..ptr+len` is this value's own live mapping, and `&mut self` means
        // nobody else in Rust holds a reference into it.
        let bytes = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) };
        zeroize::Zeroize::zeroize(bytes);
        let nonzero_after = bytes
            .chunks(1 << 16)
            .map(|c| {
                // SAFETY: reads of this value's own mapping, volatile so that they are
                // not assumed from the writes above.
                c.iter()
                    .filter(|b| unsafe { std::ptr::read_volatile(*b) } != 0)
                    .count() as u64
            })
            .sum();
        Wiped {
            bytes: self.len as u64,
            nonzero_after,
        }
    }
}

impl Drop for ModelWipe {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: this value's own mapping, unmapped once.
            let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_model_file_refuses_writes_and_reports_its_seals() {
        let file = ModelFile::with_bytes(b"GGUF and weights").expect("memfd");
        assert!(!file.is_sealed());
        file.write_at(0, b"g").expect("writable before sealing");
        file.seal().expect("sealed");
        assert!(file.is_sealed());
        let seals = fcntl_get_seals(&file.fd).expect("F_GET_SEALS");
        assert!(seals.contains(SealFlags::FUTURE_WRITE | SealFlags::GROW | SealFlags::SHRINK));
        assert!(file.write_at(0, b"G").is_err(), "a write after sealing");
        assert!(ftruncate(&file.fd, 1).is_err(), "shrinking after sealing");
        assert!(
            ftruncate(&file.fd, 1 << 20).is_err(),
            "growing after sealing"
        );
    }

    #[test]
    fn a_wipe_taken_before_sealing_zeroes_the_sealed_file_and_counts_it() {
        let weights: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8 + 1).collect();
        let file = ModelFile::with_bytes(&weights).expect("memfd");
        let mut wipe = file.wipe_handle().expect("mapped");
        file.seal()
            .expect("sealed with the wipe's mapping in place");
        assert!(file.is_sealed());
        assert!(file.write_at(0, b"G").is_err(), "no write after sealing");
        assert!(
            file.wipe_handle().is_err(),
            "no new writable mapping after sealing"
        );
        let mut before = vec![0u8; weights.len()];
        rustix::io::pread(&file.fd, &mut before, 0).expect("read");
        assert_eq!(before, weights);
        let wiped = wipe.wipe();
        assert_eq!(
            wiped,
            Wiped {
                bytes: weights.len() as u64,
                nonzero_after: 0
            }
        );
        // The file itself (what any other mapping sees) is zeros now.
        let mut after = vec![1u8; weights.len()];
        rustix::io::pread(&file.fd, &mut after, 0).expect("read");
        assert!(after.iter().all(|&b| b == 0));
    }
}
