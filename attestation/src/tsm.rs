//! The configfs-tsm attester: SNP reports through `/sys/kernel/config/tsm/report` (Linux ≥ 6.7).
//!
//! The kernel ABI (`Documentation/ABI/testing/configfs-tsm-report`): `mkdir` of an entry
//! under the report directory creates its attributes; `inblob` takes the 64 bytes of
//! REPORT_DATA, `privlevel` the VMPL (decimal), and the report is made on the first read
//! of `outblob` (the 1184-byte SNP report) or `auxblob` (for the `sev_guest` provider,
//! the GHCB certificate table, [`crate::certtable`]) after a write. `generation` counts
//! the writes to the entry, so a reader can tell whether another writer changed the
//! request under it.
//!
//! The protocol runs over the small [`TsmFs`] trait: [`ConfigFsTsm`] is the real
//! configfs (`std::fs` under a root path); [`fake::FakeTsm`] is an in-memory fake with
//! the kernel's semantics that signs with the mock platform, so every path of the
//! protocol is tested without SNP hardware.
//!
//! This is the one place in this crate that touches files, and only under the root path
//! its caller gives to [`ConfigFsTsm::new`] (or the kernel's, [`ConfigFsTsm::system`]).
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::time::SystemTime;
//! use veil_attestation::tsm::{fake::FakeTsm, TsmAttester};
//! use veil_attestation::{Attester, MockLaunch, MockPlatform};
//!
//! let platform = MockPlatform::generate(SystemTime::now())?;
//! let launch = MockLaunch::new(b"server binary", BTreeMap::new());
//! let attester = TsmAttester::new(FakeTsm::new(platform, launch), 0)?;
//! let evidence = attester.report([7; 64])?;
//! assert_eq!(evidence.parsed_report()?.report_data(), [7; 64]);
//! assert_eq!(evidence.certificates.len(), 3); // VCEK, ASK, ARK from the auxblob
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::attester::{AttestError, Attester};
use crate::certtable::{CertTable, CertTableError};
use crate::evidence::{Evidence, TeeKind};
use crate::report::{Report, ReportError, SigningKey};

/// The kernel's configfs-tsm report directory.
pub const TSM_REPORT_ROOT: &str = "/sys/kernel/config/tsm/report";

/// The `provider` the `sev_guest` driver registers (the attribute reads `sev_guest\n`).
pub const SEV_GUEST_PROVIDER: &str = "sev_guest";

/// Linux errno values the protocol tells apart (`asm-generic/errno-base.h`, `errno.h`).
pub mod errno {
    /// No such file or directory.
    pub const ENOENT: i32 = 2;
    /// No such device or address: `mkdir` with no TSM provider registered.
    pub const ENXIO: i32 = 6;
    /// Try again.
    pub const EAGAIN: i32 = 11;
    /// Permission denied.
    pub const EACCES: i32 = 13;
    /// Device or resource busy.
    pub const EBUSY: i32 = 16;
    /// File exists.
    pub const EEXIST: i32 = 17;
    /// Invalid argument: e.g. reading `outblob` before `inblob` was written.
    pub const EINVAL: i32 = 22;
}

/// What the configfs-tsm protocol needs of a filesystem: entries under the report
/// directory, and their attributes.
pub trait TsmFs: Send + Sync {
    /// Whether the report directory exists (configfs mounted, `tsm` loaded).
    fn is_present(&self) -> bool;
    /// `mkdir` of the entry `name`.
    ///
    /// # Errors
    /// The OS error; ENXIO when no TSM provider is registered.
    fn create_dir(&self, name: &str) -> io::Result<()>;
    /// `rmdir` of the entry `name`.
    ///
    /// # Errors
    /// The OS error.
    fn remove_dir(&self, name: &str) -> io::Result<()>;
    /// Writes `data` to the attribute `attr` of entry `name`, in one write.
    ///
    /// # Errors
    /// The OS error.
    fn write(&self, name: &str, attr: &str, data: &[u8]) -> io::Result<()>;
    /// Reads the whole attribute `attr` of entry `name`.
    ///
    /// # Errors
    /// The OS error.
    fn read(&self, name: &str, attr: &str) -> io::Result<Vec<u8>>;
}

impl<T: TsmFs + ?Sized> TsmFs for &T {
    fn is_present(&self) -> bool {
        (**self).is_present()
    }
    fn create_dir(&self, name: &str) -> io::Result<()> {
        (**self).create_dir(name)
    }
    fn remove_dir(&self, name: &str) -> io::Result<()> {
        (**self).remove_dir(name)
    }
    fn write(&self, name: &str, attr: &str, data: &[u8]) -> io::Result<()> {
        (**self).write(name, attr, data)
    }
    fn read(&self, name: &str, attr: &str) -> io::Result<Vec<u8>> {
        (**self).read(name, attr)
    }
}

/// The real configfs-tsm: `std::fs` under a report directory.
#[derive(Debug, Clone)]
pub struct ConfigFsTsm {
    root: PathBuf,
}

impl ConfigFsTsm {
    /// configfs-tsm under `root` (the directory that holds report entries).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ConfigFsTsm { root: root.into() }
    }

    /// The kernel's report directory, [`TSM_REPORT_ROOT`].
    pub fn system() -> Self {
        Self::new(TSM_REPORT_ROOT)
    }

    /// The report directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl TsmFs for ConfigFsTsm {
    fn is_present(&self) -> bool {
        self.root.is_dir()
    }
    fn create_dir(&self, name: &str) -> io::Result<()> {
        std::fs::create_dir(self.root.join(name))
    }
    fn remove_dir(&self, name: &str) -> io::Result<()> {
        std::fs::remove_dir(self.root.join(name))
    }
    fn write(&self, name: &str, attr: &str, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        // configfs attributes exist once the entry does: open them, never create. One
        // write call: configfs stores what a single write gives.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(self.root.join(name).join(attr))?;
        let n = file.write(data)?;
        if n != data.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("wrote {n} of {} bytes", data.len()),
            ));
        }
        Ok(())
    }
    fn read(&self, name: &str, attr: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.root.join(name).join(attr))
    }
}

/// Why the configfs-tsm protocol failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TsmError {
    /// `mkdir` failed with ENXIO.
    #[error("configfs-tsm: no TSM provider (is the sev-guest driver loaded?)")]
    NoProvider,
    /// The kernel said EBUSY or EAGAIN.
    #[error("configfs-tsm: busy during {op} {attr}; try again")]
    Busy {
        /// What was being done.
        op: &'static str,
        /// The entry attribute (or `entry`).
        attr: &'static str,
    },
    /// Any other OS error.
    #[error("configfs-tsm: {op} {attr}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The entry attribute (or `entry`).
        attr: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The provider is not the SEV-SNP guest driver.
    #[error("configfs-tsm: provider is {found:?}, not {SEV_GUEST_PROVIDER:?}")]
    WrongProvider {
        /// What `provider` said.
        found: String,
    },
    /// The VMPL cannot be requested.
    #[error("configfs-tsm: VMPL {vmpl} requested, but the platform allows {floor}..=3")]
    Privlevel {
        /// Requested.
        vmpl: u32,
        /// `privlevel_floor`, the lowest level this guest may ask for.
        floor: u32,
    },
    /// An attribute read back empty.
    #[error("configfs-tsm: {attr} read back empty")]
    EmptyRead {
        /// The attribute.
        attr: &'static str,
    },
    /// A numeric attribute (`generation`, `privlevel_floor`) is not a decimal number.
    #[error("configfs-tsm: {attr} is not a number: {text:?}")]
    NotANumber {
        /// The attribute.
        attr: &'static str,
        /// What it read.
        text: String,
    },
    /// `generation` moved by more than this attester's writes: another writer raced it,
    /// and the report may answer their request.
    #[error(
        "configfs-tsm: generation went from {before} to {after} across {writes} writes of ours: another writer raced"
    )]
    GenerationRaced {
        /// Before our writes.
        before: u64,
        /// After our reads.
        after: u64,
        /// The writes we made.
        writes: u64,
    },
    /// `outblob` is not an SNP report.
    #[error("configfs-tsm: outblob is not an SNP report: {0}")]
    NotAReport(#[source] ReportError),
    /// `auxblob` is not a certificate table.
    #[error("configfs-tsm: auxblob: {0}")]
    CertTable(#[from] CertTableError),
    /// The report's REPORT_DATA is not what was asked for.
    #[error("configfs-tsm: the report's REPORT_DATA is not the 64 bytes written to inblob")]
    ReportDataMismatch,
    /// The entry could not be removed after an otherwise good report.
    #[error("configfs-tsm: removing entry {name}: {source}")]
    Remove {
        /// The entry.
        name: String,
        /// The OS error.
        source: io::Error,
    },
}

impl TsmError {
    fn io(op: &'static str, attr: &'static str, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(errno::EBUSY | errno::EAGAIN) => TsmError::Busy { op, attr },
            Some(errno::ENXIO) if op == "create" => TsmError::NoProvider,
            _ => TsmError::Io { op, attr, source },
        }
    }
}

impl From<TsmError> for AttestError {
    fn from(e: TsmError) -> Self {
        AttestError::Tsm(e)
    }
}

/// An SNP attester over configfs-tsm: one entry per report, removed on every path.
#[derive(Debug)]
pub struct TsmAttester<F: TsmFs> {
    fs: F,
    vmpl: u32,
}

/// Entries made by this process, for unique names.
static ENTRIES: AtomicU64 = AtomicU64::new(0);

impl<F: TsmFs> TsmAttester<F> {
    /// An attester requesting reports at `vmpl` (0 for a guest without an SVSM) through `fs`.
    ///
    /// # Errors
    /// [`TsmError::Privlevel`] if `vmpl` is above 3.
    pub fn new(fs: F, vmpl: u32) -> Result<Self, TsmError> {
        if vmpl > 3 {
            return Err(TsmError::Privlevel { vmpl, floor: 0 });
        }
        Ok(TsmAttester { fs, vmpl })
    }

    /// The filesystem it runs over.
    pub fn fs(&self) -> &F {
        &self.fs
    }

    /// One report over `report_data`, with the certificates of `auxblob` (possibly none).
    ///
    /// # Errors
    /// [`TsmError`] naming the step that failed. The entry is removed whatever happens.
    pub fn tsm_report(&self, report_data: [u8; 64]) -> Result<Evidence, TsmError> {
        let name = entry_name();
        self.fs
            .create_dir(&name)
            .map_err(|e| TsmError::io("create", "entry", e))?;
        let outcome = self.run(&name, &report_data);
        let removed = self.fs.remove_dir(&name);
        let evidence = outcome?;
        removed.map_err(|source| TsmError::Remove { name, source })?;
        Ok(evidence)
    }

    fn run(&self, name: &str, report_data: &[u8; 64]) -> Result<Evidence, TsmError> {
        let provider = self.read(name, "provider")?;
        let provider = String::from_utf8_lossy(&provider).trim_end().to_owned();
        if provider != SEV_GUEST_PROVIDER {
            return Err(TsmError::WrongProvider { found: provider });
        }
        // privlevel_floor is absent on kernels older than the attribute: then 0.
        match self.fs.read(name, "privlevel_floor") {
            Ok(text) => {
                let floor = decimal("privlevel_floor", &text)?;
                if u64::from(self.vmpl) < floor {
                    return Err(TsmError::Privlevel {
                        vmpl: self.vmpl,
                        floor: u32::try_from(floor).unwrap_or(u32::MAX),
                    });
                }
            }
            Err(e) if e.raw_os_error() == Some(errno::ENOENT) => {}
            Err(e) => return Err(TsmError::io("read", "privlevel_floor", e)),
        }

        let before = decimal("generation", &self.read(name, "generation")?)?;
        self.write(name, "inblob", report_data)?;
        self.write(name, "privlevel", self.vmpl.to_string().as_bytes())?;
        let writes = 2;
        let outblob = self.read(name, "outblob")?;
        let auxblob = self
            .fs
            .read(name, "auxblob")
            .map_err(|e| TsmError::io("read", "auxblob", e))?;
        let after = decimal("generation", &self.read(name, "generation")?)?;
        if after != before + writes {
            return Err(TsmError::GenerationRaced {
                before,
                after,
                writes,
            });
        }

        let report = Report::from_bytes(&outblob).map_err(TsmError::NotAReport)?;
        if report.report_data() != *report_data {
            return Err(TsmError::ReportDataMismatch);
        }
        // An empty auxblob: the host gave no certificates (every upstream KVM host).
        let certificates = if auxblob.is_empty() {
            Vec::new()
        } else {
            CertTable::from_bytes(&auxblob)?
                .evidence_certificates(report.signing_key() == SigningKey::Vlek)
        };
        Ok(Evidence {
            tee: label(&certificates),
            report: outblob,
            certificates,
            binding: None,
            vtpm: None,
        })
    }

    /// Reads an attribute that must not be empty.
    fn read(&self, name: &str, attr: &'static str) -> Result<Vec<u8>, TsmError> {
        let bytes = self
            .fs
            .read(name, attr)
            .map_err(|e| TsmError::io("read", attr, e))?;
        if bytes.is_empty() {
            return Err(TsmError::EmptyRead { attr });
        }
        Ok(bytes)
    }

    fn write(&self, name: &str, attr: &'static str, data: &[u8]) -> Result<(), TsmError> {
        self.fs
            .write(name, attr, data)
            .map_err(|e| TsmError::io("write", attr, e))
    }
}

impl<F: TsmFs> Attester for TsmAttester<F> {
    fn tee(&self) -> TeeKind {
        TeeKind::Snp
    }

    fn report(&self, report_data: [u8; 64]) -> Result<Evidence, AttestError> {
        Ok(self.tsm_report(report_data)?)
    }
}

/// The TEE kind to state for evidence with these certificates: [`TeeKind::Mock`] when the
/// VEK is issued by the mock platform's `SEV-Mock` (as the fake in [`fake`] makes them),
/// else [`TeeKind::Snp`]. The label is a claim the verifier checks like any other: MOCK
/// evidence is appraised under mock roots only, and a host that slips mock certificates
/// into a real guest's table gets its evidence refused by every SNP policy.
pub(crate) fn label(certificates: &[Vec<u8>]) -> TeeKind {
    let mock = certificates
        .first()
        .and_then(|der| crate::chain::Certificate::from_der(der).ok())
        .and_then(|vek| vek.issuer_cn())
        .is_some_and(|cn| cn == crate::mock::MOCK_ASK_CN);
    if mock {
        TeeKind::Mock
    } else {
        TeeKind::Snp
    }
}

/// A name no other entry of this process, or of another, is likely to have.
fn entry_name() -> String {
    use ring::rand::SecureRandom;
    let mut tag = [0u8; 8];
    // A failing system RNG leaves the tag zero; pid and counter still make it unique here.
    let _ = ring::rand::SystemRandom::new().fill(&mut tag);
    format!(
        "veil-{}-{}-{}",
        std::process::id(),
        ENTRIES.fetch_add(1, Ordering::Relaxed),
        hex::encode(tag)
    )
}

fn decimal(attr: &'static str, text: &[u8]) -> Result<u64, TsmError> {
    let s = String::from_utf8_lossy(text);
    s.trim().parse().map_err(|_| TsmError::NotANumber {
        attr,
        text: s.into_owned(),
    })
}

pub mod fake;

#[cfg(test)]
mod tests;
