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
    /// configfs-tsm refused or returned something unusable.
    #[error(transparent)]
    Tsm(crate::tsm::TsmError),
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

    /// The interface that produces reports, for logs and `/ready` (`"mock platform"`,
    /// `"configfs-tsm"`, `"sev-guest ioctl"`).
    fn interface(&self) -> String {
        self.tee().to_string()
    }

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

    fn interface(&self) -> String {
        "mock platform".into()
    }

    fn report(&self, report_data: [u8; 64]) -> Result<Evidence, AttestError> {
        Ok(self.platform.attest(&self.launch, report_data))
    }
}

/// The real SEV-SNP attester: configfs-tsm when the kernel offers it
/// ([`crate::tsm::TSM_REPORT_ROOT`], Linux ≥ 6.7), else an extended report from
/// `/dev/sev-guest`; with whatever certificates the host supplies, possibly none (the
/// verifier completes the chain).
///
/// configfs-tsm needs no extra crate and is always built; the ioctl needs the `sev`
/// feature, and a build without it says so when configfs-tsm is absent.
pub struct SnpAttester {
    vmpl: u32,
    tsm: Box<dyn crate::tsm::TsmFs>,
}

impl std::fmt::Debug for SnpAttester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnpAttester")
            .field("vmpl", &self.vmpl)
            .field("tsm_present", &self.tsm.is_present())
            .finish()
    }
}

impl Default for SnpAttester {
    fn default() -> Self {
        Self::new(0)
    }
}

impl SnpAttester {
    /// An attester requesting reports at this VMPL (0 for a guest without an SVSM), over
    /// the kernel's configfs-tsm when present.
    pub fn new(vmpl: u32) -> Self {
        Self::with_tsm(vmpl, Box::new(crate::tsm::ConfigFsTsm::system()))
    }

    /// The same, over this configfs-tsm (tests pass a fake).
    pub fn with_tsm(vmpl: u32, tsm: Box<dyn crate::tsm::TsmFs>) -> Self {
        SnpAttester { vmpl, tsm }
    }

    /// Which interface a report would use now: `"configfs-tsm"`, `"sev-guest ioctl"`, or
    /// `"none"` (no configfs-tsm, and a build without the ioctl).
    pub fn interface(&self) -> &'static str {
        if self.tsm.is_present() {
            "configfs-tsm"
        } else if cfg!(feature = "sev") {
            "sev-guest ioctl"
        } else {
            "none"
        }
    }

    #[cfg(not(feature = "sev"))]
    fn ioctl_report(&self, _report_data: [u8; 64]) -> Result<Evidence, AttestError> {
        Err(AttestError::Device(format!(
            "{} is absent or has no provider, and this build has no /dev/sev-guest ioctl \
             (build with --features sev)",
            crate::tsm::TSM_REPORT_ROOT
        )))
    }

    #[cfg(feature = "sev")]
    fn ioctl_report(&self, report_data: [u8; 64]) -> Result<Evidence, AttestError> {
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
        let vlek = crate::report::Report::from_bytes(&report)
            .map(|r| r.signing_key() == crate::report::SigningKey::Vlek)
            .unwrap_or(false);
        let vek = if vlek {
            pick(CertType::VLEK)
        } else {
            pick(CertType::VCEK)
        };
        // Possibly none: upstream KVM hosts give no certificates.
        let mut certificates: Vec<Vec<u8>> = vek.into_iter().collect();
        certificates.extend(pick(CertType::ASK));
        certificates.extend(pick(CertType::ARK));
        Ok(Evidence {
            tee: TeeKind::Snp,
            report,
            certificates,
            binding: None,
            vtpm: None,
        })
    }
}

impl Attester for SnpAttester {
    fn tee(&self) -> TeeKind {
        TeeKind::Snp
    }

    fn interface(&self) -> String {
        SnpAttester::interface(self).into()
    }

    fn report(&self, report_data: [u8; 64]) -> Result<Evidence, AttestError> {
        if self.tsm.is_present() {
            let tsm = crate::tsm::TsmAttester::new(&*self.tsm, self.vmpl)?;
            match tsm.tsm_report(report_data) {
                // configfs without a provider: the ioctl may still work (or say why not).
                Err(crate::tsm::TsmError::NoProvider) => {}
                other => return Ok(other?),
            }
        }
        self.ioctl_report(report_data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsm::fake::{FakeMode, FakeTsm};

    fn fake(mode: FakeMode) -> FakeTsm {
        let platform = MockPlatform::generate(std::time::SystemTime::now()).expect("platform");
        FakeTsm::new(platform, MockLaunch::new(b"x", Default::default())).with_mode(mode)
    }

    #[test]
    fn snp_attester_uses_configfs_tsm_when_present() {
        let attester = SnpAttester::with_tsm(0, Box::new(fake(FakeMode::Normal)));
        assert_eq!(attester.interface(), "configfs-tsm");
        let evidence = attester.report([3; 64]).expect("evidence from the fake");
        // The fake's certificates are the mock platform's: labelled MOCK.
        assert_eq!(evidence.tee, TeeKind::Mock);
        assert_eq!(evidence.certificates.len(), 3);
    }

    #[test]
    fn snp_attester_falls_back_to_the_ioctl_without_configfs_or_provider() {
        let absent =
            SnpAttester::with_tsm(0, Box::new(crate::tsm::ConfigFsTsm::new("/nonexistent")));
        let expected = if cfg!(feature = "sev") {
            "sev-guest ioctl"
        } else {
            "none"
        };
        assert_eq!(absent.interface(), expected);
        let no_provider = SnpAttester::with_tsm(0, Box::new(fake(FakeMode::NoProvider)));
        // Without /dev/sev-guest (this machine), both end at the device.
        if !std::path::Path::new("/dev/sev-guest").exists() {
            for a in [absent, no_provider] {
                assert!(matches!(a.report([0; 64]), Err(AttestError::Device(_))));
            }
        }
    }

    #[test]
    fn snp_attester_does_not_fall_back_on_other_configfs_errors() {
        let attester = SnpAttester::with_tsm(0, Box::new(fake(FakeMode::RacingWriter)));
        assert!(matches!(
            attester.report([0; 64]),
            Err(AttestError::Tsm(
                crate::tsm::TsmError::GenerationRaced { .. }
            ))
        ));
    }
}
