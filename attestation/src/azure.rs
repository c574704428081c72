//! Azure confidential VMs (`az-snp-vtpm`): the HCL report, its runtime claims, the vTPM
//! quote, and their appraisal.
//!
//! On an Azure CVM a paravisor (Microsoft's HCL, at VMPL 0) owns SEV-SNP. The guest never
//! asks the secure processor for a report; it reads the paravisor's HCL report from vTPM NV
//! index `0x01400001` ([`hcl`]): an SNP report whose REPORT_DATA commits to the runtime
//! claims, which hold the vTPM attestation key (AK). Freshness and the guest's own
//! measurements come from a TPM 2.0 quote ([`tpm`]) signed by that AK over the PCRs, with
//! the verifier's nonce in `extraData`. Trustee's evidence files read with [`trustee`];
//! [`AzureAttester`] makes the evidence inside a CVM, over a [`Tpm`].
//!
//! Appraisal ([`crate::Policy::appraise`]) runs the SNP checks on the report, then, instead
//! of comparing REPORT_DATA with the transcript, the checks `runtime_claims`, `vtpm_quote`,
//! `pcr_digest`, `pcrs` and `quote_nonce` (see `docs/protocol.md`). Veil's own evidence puts
//! SHA-256 of its 64-byte REPORT_DATA transcript in `extraData`.
//!
//! ```
//! use veil_attestation::azure::tpm::Quote;
//! // Truncated input is an error, never a panic.
//! assert!(Quote::from_bytes(&[0xff, 0x54, 0x43]).is_err());
//! ```

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::check::{Check, Outcomes};
use crate::evidence::VtpmEvidence;
use crate::report::{Report, ReportError};

pub mod attester;
pub mod hcl;
pub mod tpm;
pub mod trustee;

pub use attester::{AzureAttestError, AzureAttester, Tpm, TpmDevice};
pub use hcl::{AttestationKey, HclReport, RuntimeClaims};
pub use tpm::{ClockInfo, PcrSelection, Quote, TpmSignature};
pub use trustee::TrusteeEvidence;

/// Why Azure evidence (an HCL report, runtime claims, a TPM structure, a Trustee file)
/// cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AzureError {
    /// The input ends inside a field.
    #[error("{what}: truncated at offset {offset}: {need} more bytes needed, {len} in all")]
    Truncated {
        /// The structure being read.
        what: &'static str,
        /// Where the field starts.
        offset: usize,
        /// Its length.
        need: usize,
        /// The input's length.
        len: usize,
    },
    /// A field longer than the structure allows.
    #[error("{what}: {len} is more than the {max} allowed")]
    TooLong {
        /// The field.
        what: &'static str,
        /// Its length or count.
        len: usize,
        /// The most allowed.
        max: usize,
    },
    /// Bytes after the end of the structure.
    #[error("{what}: {extra} bytes after the end")]
    TrailingBytes {
        /// The structure.
        what: &'static str,
        /// How many.
        extra: usize,
    },
    /// The wrong magic number.
    #[error("{what}: magic {found:#010x} is wrong")]
    Magic {
        /// The structure.
        what: &'static str,
        /// The magic found (big-endian).
        found: u32,
    },
    /// A `TPMS_ATTEST` that is not a quote.
    #[error("TPMS_ATTEST type {found:#06x} is not TPM_ST_ATTEST_QUOTE (0x8018)")]
    AttestType {
        /// The type found.
        found: u16,
    },
    /// A signature scheme other than RSASSA.
    #[error("TPMT_SIGNATURE scheme {found:#06x} is not TPM_ALG_RSASSA (0x0014)")]
    SignatureScheme {
        /// The scheme found.
        found: u16,
    },
    /// The quote selects PCRs of a bank other than SHA-256.
    #[error(
        "the quote selects PCRs of bank {found:#06x}; only SHA-256 (0x000b) values are carried"
    )]
    PcrBank {
        /// The bank's algorithm.
        found: u16,
    },
    /// The quote selects a PCR beyond 23.
    #[error("the quote selects PCR {index}, beyond the 24 of a bank")]
    PcrIndex {
        /// The index.
        index: usize,
    },
    /// The evidence lacks a PCR the quote selects.
    #[error("the evidence carries no value for quoted PCR {index}")]
    PcrMissing {
        /// The index.
        index: usize,
    },
    /// An HCL report for another TEE.
    #[error("HCL report type {found} is not SNP (2)")]
    HclReportType {
        /// The type found.
        found: u32,
    },
    /// An unknown hash over the runtime claims.
    #[error("HCL user_data_hash_type {found} is not 1 (SHA-256), 2 (SHA-384) or 3 (SHA-512)")]
    ClaimsHashType {
        /// The type found.
        found: u32,
    },
    /// The SNP report inside is not one.
    #[error("HCL report: {0}")]
    Report(#[from] ReportError),
    /// The runtime claims are not the JSON Azure writes.
    #[error("runtime claims: {0}")]
    Claims(String),
    /// No usable attestation key in the runtime claims.
    #[error("runtime claims: attestation key: {0}")]
    AttestationKey(String),
    /// A Trustee evidence file that does not fit any of its formats.
    #[error("Trustee az-snp-vtpm evidence: {0}")]
    Trustee(String),
}

/// Decodes base64 in either alphabet (standard or URL-safe), padded or not: Azure's JWKs
/// and Trustee's files use URL-safe, with and without padding.
pub(crate) fn base64_any(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode};
    use base64::{alphabet, Engine};
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let normalized: String = text
        .trim()
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    ENGINE.decode(normalized.as_bytes())
}

/// What appraisal of Azure evidence verified besides the SNP report: the quoted PCRs, the
/// quote's nonce and clock, and what the runtime claims say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VtpmClaims {
    pcrs: Vec<(usize, [u8; 32])>,
    extra_data: Vec<u8>,
    clock_info: ClockInfo,
    firmware_version: u64,
    user_data: Option<String>,
    ak_fingerprint: [u8; 32],
    hcl_version: u32,
}

impl VtpmClaims {
    /// The quoted SHA-256 PCRs, `(index, value)`, in selection order.
    pub fn pcrs(&self) -> &[(usize, [u8; 32])] {
        &self.pcrs
    }
    /// The value of quoted PCR `index`.
    pub fn pcr(&self, index: usize) -> Option<[u8; 32]> {
        self.pcrs.iter().find(|(i, _)| *i == index).map(|(_, v)| *v)
    }
    /// The quote's `extraData` (the nonce it binds).
    pub fn extra_data(&self) -> &[u8] {
        &self.extra_data
    }
    /// The TPM clock when it quoted.
    pub fn clock_info(&self) -> ClockInfo {
        self.clock_info
    }
    /// The TPM firmware version.
    pub fn firmware_version(&self) -> u64 {
        self.firmware_version
    }
    /// The runtime claims' `user-data`, if any.
    pub fn user_data(&self) -> Option<&str> {
        self.user_data.as_deref()
    }
    /// SHA-256 of the attestation key's modulus.
    pub fn ak_fingerprint(&self) -> [u8; 32] {
        self.ak_fingerprint
    }
    /// The HCL report's version.
    pub fn hcl_version(&self) -> u32 {
        self.hcl_version
    }
}

/// What `extraData` must equal: Veil's binding for its own evidence, or a verifier's nonce.
pub(crate) enum QuoteNonce {
    /// Offline, without an expected value.
    Unchecked,
    /// SHA-256 of this 64-byte REPORT_DATA transcript (Veil's evidence).
    ReportData([u8; 64]),
    /// These bytes exactly (a nonce given to the attester out of band, as Trustee's).
    Nonce(Vec<u8>),
}

/// The `extraData` Veil's attester asks the vTPM for: SHA-256 of its 64-byte REPORT_DATA.
pub fn extra_data_for(report_data: &[u8; 64]) -> [u8; 32] {
    Sha256::digest(report_data).into()
}

/// Runs the az-snp-vtpm checks, in order: `runtime_claims`, `vtpm_quote`, `pcr_digest`,
/// `pcrs`, `quote_nonce`. Returns what they verified if all passed.
pub(crate) fn check_vtpm(
    pinned: &[(usize, [u8; 32])],
    report: &Report,
    vtpm: &VtpmEvidence,
    nonce: &QuoteNonce,
    out: &mut Outcomes,
) -> Option<VtpmClaims> {
    let before = out.0.len();
    // runtime_claims: the HCL report holds this very SNP report, whose REPORT_DATA is the
    // hash of the claims, at VMPL 0 (the paravisor's: a guest at VMPL > 0 could ask for a
    // report over claims of its own), and the claims hold one attestation key.
    let (hcl, ak, user_data) = match HclReport::from_bytes(&vtpm.hcl_report) {
        Err(e) => {
            out.fail(Check::RuntimeClaims, e.to_string());
            (None, None, None)
        }
        Ok(hcl) => {
            let mut problems = Vec::new();
            if hcl.snp_report_bytes() != report.as_bytes() {
                problems.push("the HCL report holds another SNP report than the evidence".into());
            }
            let want = hcl.expected_report_data();
            if !bool::from(want.ct_eq(&report.report_data())) {
                problems.push(format!(
                    "REPORT_DATA is not the {} of the runtime claims, zero-padded",
                    hcl.claims_hash()
                ));
            }
            if report.vmpl() != 0 {
                problems.push(format!(
                    "VMPL {}: only the paravisor's VMPL 0 report vouches for the claims",
                    report.vmpl()
                ));
            }
            let claims = hcl.runtime_claims();
            let ak = match claims
                .as_ref()
                .map_err(Clone::clone)
                .and_then(RuntimeClaims::attestation_key)
            {
                Ok(ak) => Some(ak),
                Err(e) => {
                    problems.push(e.to_string());
                    None
                }
            };
            let user_data = claims.ok().and_then(|c| c.user_data().map(str::to_owned));
            let detail = match (&ak, problems.is_empty()) {
                (Some(ak), true) => format!(
                    "REPORT_DATA = {} of the runtime claims; AK RSA-{} {}…",
                    hcl.claims_hash(),
                    ak.bits(),
                    hex::encode(&ak.fingerprint()[..8])
                ),
                _ => problems.join("; "),
            };
            out.record(Check::RuntimeClaims, problems.is_empty(), detail);
            (Some(hcl), ak, user_data)
        }
    };

    // vtpm_quote: a quote, signed by that AK.
    let quote = match Quote::from_bytes(&vtpm.quote) {
        Err(e) => {
            out.fail(Check::VtpmQuote, e.to_string());
            None
        }
        Ok(q) => {
            match &ak {
                None => out.fail(
                    Check::VtpmQuote,
                    "no attestation key from the runtime claims to check the signature",
                ),
                Some(ak) => {
                    let ok = ak.verifies(q.as_bytes(), &vtpm.signature);
                    out.record(
                        Check::VtpmQuote,
                        ok,
                        if ok {
                            "TPM2 quote signed by the AK (RSASSA-PKCS1-v1_5, SHA-256)"
                        } else {
                            "the AK did not sign this quote"
                        },
                    );
                }
            }
            Some(q)
        }
    };

    let Some(quote) = quote else {
        for check in [Check::PcrDigest, Check::Pcrs, Check::QuoteNonce] {
            out.fail(check, "no quote");
        }
        return None;
    };

    // pcr_digest: the PCR values are the quoted ones.
    let quoted = match quote.digest_of(&vtpm.pcrs) {
        Ok(digest) => {
            let ok = digest[..] == *quote.pcr_digest();
            out.record(
                Check::PcrDigest,
                ok,
                if ok {
                    format!(
                        "{} SHA-256 PCRs quoted",
                        quote.sha256_pcrs().map_or(0, |v| v.len())
                    )
                } else {
                    "the PCR values are not those the quote digests".to_owned()
                },
            );
            ok
        }
        Err(e) => {
            out.fail(Check::PcrDigest, e.to_string());
            false
        }
    };
    let indices = quote.sha256_pcrs().unwrap_or_default();

    // pcrs: the policy's pinned values.
    if pinned.is_empty() {
        out.skip(Check::Pcrs, "any (not constrained by the policy)");
    } else {
        let mut problems = Vec::new();
        for (index, want) in pinned {
            match vtpm.pcrs.get(*index) {
                _ if !indices.contains(index) => {
                    problems.push(format!("PCR {index} is not quoted"));
                }
                Some(found) if found == want => {}
                Some(found) => problems.push(format!(
                    "PCR {index} is {}, not {}",
                    hex::encode(found),
                    hex::encode(want)
                )),
                None => problems.push(format!("PCR {index} is missing")),
            }
        }
        let ok = problems.is_empty() && quoted;
        let list: Vec<String> = pinned.iter().map(|(i, _)| i.to_string()).collect();
        out.record(
            Check::Pcrs,
            ok,
            if ok {
                format!("PCRs {} as pinned", list.join(", "))
            } else if problems.is_empty() {
                "the PCR values are not the quoted ones".to_owned()
            } else {
                problems.join("; ")
            },
        );
    }

    // quote_nonce: freshness, and for Veil the whole transcript.
    let extra = quote.extra_data();
    match nonce {
        QuoteNonce::Unchecked => out.skip(
            Check::QuoteNonce,
            format!("not checked (offline); extraData {}", hex::encode(extra)),
        ),
        QuoteNonce::ReportData(rd) => {
            let ok = bool::from(extra.ct_eq(&extra_data_for(rd)[..]));
            out.record(
                Check::QuoteNonce,
                ok,
                if ok {
                    "extraData = SHA-256(REPORT_DATA): binds this verifier's nonce and channel"
                } else {
                    "extraData is not SHA-256 of this verifier's REPORT_DATA (nonce, TLS key, channel)"
                },
            );
        }
        QuoteNonce::Nonce(want) => {
            let ok = bool::from(extra.ct_eq(want.as_slice()));
            out.record(
                Check::QuoteNonce,
                ok,
                if ok {
                    format!("extraData is the expected nonce ({} bytes)", want.len())
                } else {
                    format!("extraData {} is not the expected nonce", hex::encode(extra))
                },
            );
        }
    }

    let all_passed = !out.0[before..].iter().any(|o| o.failed());
    let (hcl, ak) = (hcl?, ak?);
    all_passed.then(|| VtpmClaims {
        pcrs: indices
            .iter()
            .filter_map(|&i| vtpm.pcrs.get(i).map(|v| (i, *v)))
            .collect(),
        extra_data: extra.to_vec(),
        clock_info: quote.clock_info(),
        firmware_version: quote.firmware_version(),
        user_data,
        ak_fingerprint: ak.fingerprint(),
        hcl_version: hcl.version(),
    })
}
