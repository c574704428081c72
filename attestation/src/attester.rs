//! Attesters: what produces evidence, written once for the mock platform and for SNP.

use crate::binding::Transcript;
use crate::evidence::{Evidence, TeeKind};
use crate::mock::{MockLaunch, MockPlatform};

/// Why evidence could not be produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The SEV-SNP guest device refused or is absent.
    #[error("SEV-SNP guest device: {0}")]
    Device(String),
    /// The platform returned no VCEK/VLEK certificate with the report.
    #[error(
        "the platform returned no VCEK or VLEK certificate; configure the host's certificate table"
    )]
    NoCertificates,
}

/// Produces evidence.
///
/// [`Attester::attest`] is the one way to issue evidence for a [`Transcript`]: the
/// REPORT_DATA it asks the platform for and the binding it states in the evidence come
/// from that same transcript, so the two cannot disagree. An implementation provides only
/// [`Attester::report`], the platform's raw report over 64 bytes.
pub trait Attester: Send + Sync {
    /// The TEE kind this attester speaks for.
    fn tee(&self) -> TeeKind;

    /// Evidence whose report carries exactly `report_data`, with no stated binding (for
    /// raw uses such as `veil mock-platform attest`; servers use [`Attester::attest`]).
    ///
    /// # Errors
    /// [`AttestError`] if the platform cannot produce a report.
    fn report(&self, report_data: [u8; 64]) -> Result<Evidence, AttestError>;

    /// Evidence for `transcript`: REPORT_DATA = SHA-512 of it, and its binding stated.
    ///
    /// # Errors
    /// [`AttestError`] if the platform cannot produce a report.
    fn attest(&self, transcript: &Transcript) -> Result<Evidence, AttestError> {
        bind(transcript, |rd| self.report(rd))
    }
}

/// Evidence for `transcript` from a raw `report` function: the report over its
/// REPORT_DATA, with its binding stated. The one place the two are put together.
pub(crate) fn bind<E>(
    transcript: &Transcript,
    report: impl FnOnce([u8; 64]) -> Result<Evidence, E>,
) -> Result<Evidence, E> {
    let mut evidence = report(transcript.report_data())?;
    evidence.binding = Some(transcript.binding());
    Ok(evidence)
}

/// The mock platform attesting a launch.
#[derive(Debug)]
pub struct MockAttester {
    platform: MockPlatform,
    launch: MockLaunch,
}

impl MockAttester {
    /// An attester that reports `launch` signed by `platform`.
    pub fn new(platform: MockPlatform, launch: MockLaunch) -> Self {
        MockAttester { platform, launch }
    }

    /// The launch it reports.
    pub fn launch(&self) -> &MockLaunch {
        &self.launch
    }
}

impl Attester for MockAttester {
    fn tee(&self) -> TeeKind {
        TeeKind::Mock
    }

    fn report(&self, report_data: [u8; 64]) -> Result<Evidence, AttestError> {
        Ok(self.platform.attest(&self.launch, report_data))
    }
}

/// The real SEV-SNP attester: an extended report from `/dev/sev-guest`, with the
/// certificates the host supplies.
#[cfg(feature = "sev")]
#[derive(Debug, Default)]
pub struct SnpAttester {
    vmpl: u32,
}

#[cfg(feature = "sev")]
impl SnpAttester {
    /// An attester requesting reports at this VMPL (0 for a guest without an SVSM).
    pub fn new(vmpl: u32) -> Self {
        SnpAttester { vmpl }
    }
}

#[cfg(feature = "sev")]
impl Attester for SnpAttester {
    fn tee(&self) -> TeeKind {
        TeeKind::Snp
    }

    fn report(&self, report_data: [u8; 64]) -> Result<Evidence, AttestError> {
        use sev::firmware::guest::Firmware;
        use sev::firmware::host::CertType;
        let mut fw = Firmware::open().map_err(|e| AttestError::Device(e.to_string()))?;
        let (report, certs) = fw
            .get_ext_report(None, Some(report_data), Some(self.vmpl))
            .map_err(|e| AttestError::Device(e.to_string()))?;
        let certs = certs.unwrap_or_default();
        let pick = |t: CertType| {
            certs
                .iter()
                .find(|c| c.cert_type == t)
                .map(|c| c.data.clone())
        };
        let vek = pick(CertType::VCEK)
            .or_else(|| pick(CertType::VLEK))
            .ok_or(AttestError::NoCertificates)?;
        let mut certificates = vec![vek];
        certificates.extend(pick(CertType::ASK));
        certificates.extend(pick(CertType::ARK));
        Ok(Evidence {
            tee: TeeKind::Snp,
            report,
            certificates,
            binding: None,
        })
    }
}
