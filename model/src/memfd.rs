//! Handing in-memory model bytes to llama.cpp without a file on disk: an anonymous memfd,
//! opened by llama.cpp as `/proc/self/fd/N`.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use rustix::fs::{memfd_create, MemfdFlags};

use crate::EngineError;

/// An anonymous in-memory file holding the model bytes; closed (and freed) on drop.
pub(crate) struct MemFile {
    fd: OwnedFd,
}

impl MemFile {
    pub(crate) fn with_bytes(bytes: &[u8]) -> Result<Self, EngineError> {
        let fd = memfd_create("veil-model", MemfdFlags::CLOEXEC)
            .map_err(|e| EngineError::Load(format!("memfd_create: {e}")))?;
        let mut file = std::fs::File::from(fd);
        file.write_all(bytes)
            .map_err(|e| EngineError::Load(format!("writing the in-memory model: {e}")))?;
        Ok(MemFile { fd: file.into() })
    }

    /// The path through which this process (only) can open it.
    pub(crate) fn path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}
