//! The named checks of appraisal, and their outcomes.

use std::fmt;

use serde::Serialize;

/// One named check of appraisal. Names are stable: scripts and policies may rely on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Check {
    /// The evidence decodes and its report has the SNP layout.
    EvidenceFormat,
    /// The TEE kind is accepted by the policy.
    TeeKind,
    /// The report version is accepted by the policy.
    ReportVersion,
    /// SIGNATURE_ALGO is ECDSA P-384 with SHA-384.
    SignatureAlgorithm,
    /// KEY_INFO names a VCEK or VLEK that the policy accepts, and it matches the certificate.
    SigningKey,
    /// The root is a trusted anchor: a built-in AMD ARK or a mock root named by the policy.
    TrustAnchor,
    /// Root → intermediate → VEK signatures and names.
    CertificateChain,
    /// Every certificate is valid at the appraisal time.
    CertificateValidity,
    /// No certificate of the chain is revoked by a CRL the policy names.
    Revocation,
    /// The product is known, consistent across the chain and the report, and accepted.
    Product,
    /// The VEK signs the report bytes `0x000..0x2A0`.
    ReportSignature,
    /// REPORTED_TCB equals the TCB that the VCEK/VLEK certifies.
    ReportedTcbMatchesVek,
    /// CHIP_ID equals the VCEK's hardware id.
    ChipIdMatchesVek,
    /// Reserved fields of the report are zero.
    ReservedZero,
    /// MEASUREMENT is one the policy accepts.
    Measurement,
    /// Guest policy: debugging is not allowed (unless the policy allows it).
    Debug,
    /// Guest policy: no migration agent (unless the policy allows it).
    MigrationAgent,
    /// Guest policy: SMT allowed only if the policy allows it.
    Smt,
    /// Guest policy: reserved bits as the ABI requires.
    GuestPolicyBits,
    /// VMPL is one the policy accepts.
    Vmpl,
    /// REPORTED_TCB is at least the policy minimum.
    MinimumTcb,
    /// Firmware version and the guest's ABI are within the policy.
    Firmware,
    /// GUEST_SVN is at least the policy minimum.
    GuestSvn,
    /// CHIP_ID is on the policy allowlist.
    ChipId,
    /// HOST_DATA is on the policy allowlist.
    HostData,
    /// FAMILY_ID is on the policy allowlist.
    FamilyId,
    /// IMAGE_ID is on the policy allowlist.
    ImageId,
    /// ID_KEY_DIGEST is on the policy allowlist.
    IdKey,
    /// AUTHOR_KEY_DIGEST is on the policy allowlist.
    AuthorKey,
    /// PLATFORM_INFO reserved bits are zero.
    PlatformInfo,
    /// The model the evidence binds is on the policy allowlist.
    Model,
    /// REPORT_DATA equals the value the verifier expects (the binding).
    ReportData,
    /// az-snp-vtpm: the HCL report holds this SNP report, at VMPL 0, whose REPORT_DATA is
    /// the hash of the runtime claims; the claims hold one RSA attestation key.
    RuntimeClaims,
    /// az-snp-vtpm: the TPM quote parses and the attestation key signed it.
    VtpmQuote,
    /// az-snp-vtpm: the PCR values are the ones the quote's pcrDigest covers.
    PcrDigest,
    /// az-snp-vtpm: the quoted PCRs have the values the policy pins.
    Pcrs,
    /// az-snp-vtpm: the quote's extraData is what the verifier expects (the binding).
    QuoteNonce,
}

impl Check {
    /// The stable snake_case name of the check.
    pub fn name(self) -> &'static str {
        match self {
            Check::EvidenceFormat => "evidence_format",
            Check::TeeKind => "tee_kind",
            Check::ReportVersion => "report_version",
            Check::SignatureAlgorithm => "signature_algorithm",
            Check::SigningKey => "signing_key",
            Check::TrustAnchor => "trust_anchor",
            Check::CertificateChain => "certificate_chain",
            Check::CertificateValidity => "certificate_validity",
            Check::Revocation => "revocation",
            Check::Product => "product",
            Check::ReportSignature => "report_signature",
            Check::ReportedTcbMatchesVek => "reported_tcb_matches_vek",
            Check::ChipIdMatchesVek => "chip_id_matches_vek",
            Check::ReservedZero => "reserved_zero",
            Check::Measurement => "measurement",
            Check::Debug => "debug",
            Check::MigrationAgent => "migration_agent",
            Check::Smt => "smt",
            Check::GuestPolicyBits => "guest_policy_bits",
            Check::Vmpl => "vmpl",
            Check::MinimumTcb => "minimum_tcb",
            Check::Firmware => "firmware",
            Check::GuestSvn => "guest_svn",
            Check::ChipId => "chip_id",
            Check::HostData => "host_data",
            Check::FamilyId => "family_id",
            Check::ImageId => "image_id",
            Check::IdKey => "id_key",
            Check::AuthorKey => "author_key",
            Check::PlatformInfo => "platform_info",
            Check::Model => "model",
            Check::ReportData => "report_data",
            Check::RuntimeClaims => "runtime_claims",
            Check::VtpmQuote => "vtpm_quote",
            Check::PcrDigest => "pcr_digest",
            Check::Pcrs => "pcrs",
            Check::QuoteNonce => "quote_nonce",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a check passed, failed, or was not applicable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The check passed.
    Passed,
    /// The check failed: the evidence is rejected.
    Failed,
    /// Nothing to check (the policy does not constrain it, or an earlier failure hides it).
    Skipped,
}

/// The outcome of one check, with a human-readable detail naming the values involved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Which check.
    pub check: Check,
    /// Its status.
    pub status: Status,
    /// What was found (and expected).
    pub detail: String,
}

impl Outcome {
    /// Whether this outcome rejects the evidence.
    pub fn failed(&self) -> bool {
        self.status == Status::Failed
    }
}

/// Collects outcomes in order.
#[derive(Debug, Default)]
pub(crate) struct Outcomes(pub(crate) Vec<Outcome>);

impl Outcomes {
    pub(crate) fn record(&mut self, check: Check, passed: bool, detail: impl Into<String>) -> bool {
        let status = if passed {
            Status::Passed
        } else {
            Status::Failed
        };
        self.0.push(Outcome {
            check,
            status,
            detail: detail.into(),
        });
        passed
    }

    pub(crate) fn pass(&mut self, check: Check, detail: impl Into<String>) {
        self.record(check, true, detail);
    }

    pub(crate) fn fail(&mut self, check: Check, detail: impl Into<String>) {
        self.record(check, false, detail);
    }

    pub(crate) fn skip(&mut self, check: Check, detail: impl Into<String>) {
        self.0.push(Outcome {
            check,
            status: Status::Skipped,
            detail: detail.into(),
        });
    }

    pub(crate) fn any_failed(&self) -> bool {
        self.0.iter().any(Outcome::failed)
    }
}
