//! Handing in-memory model bytes to llama.cpp without a file on disk: an anonymous memfd,
//! opened by llama.cpp as `/proc/self/fd/N`.

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
/// or shrink it.
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

    /// The seals [`ModelFile::seal`] adds: no write, no growth, no shrinking, and no
    /// change to the seals.
    pub const SEALS: SealFlags = SealFlags::WRITE
        .union(SealFlags::GROW)
        .union(SealFlags::SHRINK)
        .union(SealFlags::SEAL);

    /// Seals the filled file against writes, growth and shrinking (`F_SEAL_WRITE`,
    /// `F_SEAL_GROW`, `F_SEAL_SHRINK`, then `F_SEAL_SEAL`); [`ModelFile::write_at`] fails
    /// afterwards.
    ///
    /// # Errors
    /// [`EngineError::Load`] if the kernel refuses (e.g. a writable mapping exists).
    pub fn seal(&self) -> Result<(), EngineError> {
        fcntl_add_seals(&self.fd, Self::SEALS)
            .map_err(|e| EngineError::Load(format!("sealing the in-memory model: {e}")))
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
        assert!(seals.contains(SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK));
        assert!(file.write_at(0, b"G").is_err(), "a write after sealing");
        assert!(ftruncate(&file.fd, 1).is_err(), "shrinking after sealing");
        assert!(
            ftruncate(&file.fd, 1 << 20).is_err(),
            "growing after sealing"
        );
    }
}
