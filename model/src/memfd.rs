//! Handing in-memory model bytes to llama.cpp without a file on disk: an anonymous memfd,
//! opened by llama.cpp as `/proc/self/fd/N`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use rustix::fs::{ftruncate, memfd_create, MemfdFlags};

use crate::EngineError;

/// An anonymous in-memory file for model bytes (a memfd: no disk, no name in any file
/// system), filled at chosen offsets, e.g. by parallel unsealing workers, and then handed
/// to [`LlamaEngine::load_file`](crate::LlamaEngine::load_file). Closed (and its pages
/// freed) when dropped.
pub struct ModelFile {
    fd: OwnedFd,
    len: u64,
}

impl std::fmt::Debug for ModelFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelFile").field("len", &self.len).finish()
    }
}

impl ModelFile {
    /// An empty (all zero) in-memory file of `len` bytes.
    ///
    /// # Errors
    /// [`EngineError::Load`] if the memfd cannot be created or sized.
    pub fn new(len: u64) -> Result<Self, EngineError> {
        let fd = memfd_create("veil-model", MemfdFlags::CLOEXEC)
            .map_err(|e| EngineError::Load(format!("memfd_create: {e}")))?;
        ftruncate(&fd, len)
            .map_err(|e| EngineError::Load(format!("sizing the in-memory model: {e}")))?;
        Ok(ModelFile { fd, len })
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
