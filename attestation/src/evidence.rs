//! The evidence bundle: what an attester sends and a verifier appraises (JSON).

use serde::{Deserialize, Serialize};

use crate::binding::Binding;
use crate::chain::Certificate;
use crate::report::{Report, ReportError};

/// Largest evidence document a verifier decodes.
pub const MAX_EVIDENCE_LEN: usize = 64 * 1024;

/// The kind of TEE that produced the evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeeKind {
    /// AMD SEV-SNP: AMD-signed reports, AMD roots.
    Snp,
    /// Veil's mock platform: the same report layout, a software signer, a root the verifier names.
    Mock,
    /// An Azure confidential VM: an SNP report from Microsoft's paravisor (AMD roots) that
    /// vouches for a vTPM attestation key, and a TPM quote by that key ([`crate::azure`]).
    #[serde(rename = "az-snp-vtpm")]
    AzSnpVtpm,
}

impl TeeKind {
    /// The name in evidence and policy files: `snp`, `mock`, `az-snp-vtpm`.
    pub fn name(self) -> &'static str {
        match self {
            TeeKind::Snp => "snp",
            TeeKind::Mock => "mock",
            TeeKind::AzSnpVtpm => "az-snp-vtpm",
        }
    }
}

impl std::fmt::Display for TeeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TeeKind::Mock => "MOCK",
            other => other.name(),
        })
    }
}

/// Why an evidence document cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// Larger than [`MAX_EVIDENCE_LEN`].
    #[error("evidence is {found} bytes, more than the {MAX_EVIDENCE_LEN} allowed")]
    TooLarge {
        /// Size received.
        found: usize,
    },
    /// Not the JSON shape of an evidence bundle.
    #[error("evidence is not a valid bundle: {0}")]
    Json(#[from] serde_json::Error),
    /// The report inside is not an SNP report.
    #[error("evidence report: {0}")]
    Report(#[from] ReportError),
    /// A certificate inside cannot be parsed.
    #[error("evidence certificate {index}: {reason}")]
    Certificate {
        /// Position in `certificates`.
        index: usize,
        /// What failed.
        reason: String,
    },
    /// No VCEK or VLEK in the bundle.
    #[error("evidence carries no certificates")]
    NoCertificates,
    /// `az-snp-vtpm` evidence without its `vtpm` part.
    #[error("az-snp-vtpm evidence lacks its vtpm part")]
    MissingVtpm,
    /// Evidence of another kind with a `vtpm` part.
    #[error("{tee} evidence must not carry a vtpm part")]
    UnexpectedVtpm {
        /// The evidence's TEE kind.
        tee: TeeKind,
    },
}

/// An evidence bundle: the TEE kind, the raw report, the signing certificate chain, and
/// the values that the report data binds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// Which kind of TEE produced this.
    pub tee: TeeKind,
    /// The raw 1184-byte report, base64.
    #[serde(with = "b64")]
    pub report: Vec<u8>,
    /// DER certificates, base64: the VCEK or VLEK first, then intermediates (ASK/ASVK),
    /// optionally the root. AMD roots are built into the verifier.
    #[serde(with = "b64_list")]
    pub certificates: Vec<Vec<u8>>,
    /// What REPORT_DATA binds, apart from what the verifier supplies itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<Binding>,
    /// For `az-snp-vtpm` only: the HCL report, the TPM quote, its signature and the PCRs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtpm: Option<VtpmEvidence>,
}

/// The vTPM part of `az-snp-vtpm` evidence (`docs/protocol.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VtpmEvidence {
    /// The HCL report from vTPM NV index `0x01400001`, base64: it holds the SNP report at
    /// `0x20..0x4C0` and the runtime claims with the attestation key.
    #[serde(with = "b64")]
    pub hcl_report: Vec<u8>,
    /// The `TPMS_ATTEST` quote the attestation key signed, base64.
    #[serde(with = "b64")]
    pub quote: Vec<u8>,
    /// The quote's RSASSA-PKCS1-v1_5 SHA-256 signature (the bytes of its `TPMT_SIGNATURE`), base64.
    #[serde(with = "b64")]
    pub signature: Vec<u8>,
    /// PCRs 0.. of the SHA-256 bank (at most 24), hex: `pcrs[i]` is PCR `i`.
    #[serde(with = "pcr_list")]
    pub pcrs: Vec<[u8; 32]>,
}

/// Evidence whose report and certificates parse.
#[derive(Debug, Clone)]
pub(crate) struct DecodedEvidence {
    pub(crate) report: Report,
    pub(crate) vek: Certificate,
    pub(crate) others: Vec<Certificate>,
}

impl Evidence {
    /// Decodes a JSON evidence bundle, refusing oversized input.
    ///
    /// # Errors
    /// [`EvidenceError`] naming what is malformed.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EvidenceError> {
        if bytes.len() > MAX_EVIDENCE_LEN {
            return Err(EvidenceError::TooLarge { found: bytes.len() });
        }
        Ok(serde_json::from_slice(bytes)?)
    }

    /// Encodes the bundle as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("evidence serializes")
    }

    /// Parses the report.
    ///
    /// # Errors
    /// [`EvidenceError::Report`].
    pub fn parsed_report(&self) -> Result<Report, EvidenceError> {
        Ok(Report::from_bytes(&self.report)?)
    }

    pub(crate) fn decode(&self) -> Result<DecodedEvidence, EvidenceError> {
        let report = self.parsed_report()?;
        match (self.tee, &self.vtpm) {
            (TeeKind::AzSnpVtpm, None) => return Err(EvidenceError::MissingVtpm),
            (TeeKind::Snp | TeeKind::Mock, Some(_)) => {
                return Err(EvidenceError::UnexpectedVtpm { tee: self.tee })
            }
            _ => {}
        }
        let mut certs = self.certificates.iter().enumerate().map(|(index, der)| {
            Certificate::from_der(der).map_err(|e| EvidenceError::Certificate {
                index,
                reason: e.to_string(),
            })
        });
        let vek = certs.next().ok_or(EvidenceError::NoCertificates)??;
        let others = certs.collect::<Result<Vec<_>, _>>()?;
        Ok(DecodedEvidence {
            report,
            vek,
            others,
        })
    }
}

mod b64 {
    use base64::{engine::general_purpose::STANDARD, Engine};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

mod b64_list {
    use base64::{engine::general_purpose::STANDARD, Engine};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|c| STANDARD.encode(c)))
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let list = Vec::<String>::deserialize(d)?;
        if list.len() > 8 {
            return Err(serde::de::Error::custom("more than 8 certificates"));
        }
        list.iter()
            .map(|t| {
                STANDARD
                    .decode(t.as_bytes())
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

mod pcr_list {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(hex::encode))
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        let list = Vec::<String>::deserialize(d)?;
        if list.len() > crate::azure::tpm::PCR_COUNT {
            return Err(serde::de::Error::custom("more than 24 PCRs"));
        }
        list.iter()
            .map(|t| {
                let mut out = [0u8; 32];
                hex::decode_to_slice(t.trim(), &mut out)
                    .map_err(|_| serde::de::Error::custom("a PCR is 64 hex digits"))?;
                Ok(out)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_oversized_evidence() {
        let big = vec![b' '; MAX_EVIDENCE_LEN + 1];
        assert!(matches!(
            Evidence::from_json(&big),
            Err(EvidenceError::TooLarge { .. })
        ));
    }

    #[test]
    fn rejects_unknown_fields_and_bad_base64() {
        assert!(
            Evidence::from_json(br#"{"tee":"snp","report":"AA==","certificates":[],"x":1}"#)
                .is_err()
        );
        assert!(Evidence::from_json(br#"{"tee":"snp","report":"!!","certificates":[]}"#).is_err());
        assert!(Evidence::from_json(br#"{"tee":"sgx","report":"","certificates":[]}"#).is_err());
    }

    #[test]
    fn names_what_is_missing() {
        let e = Evidence {
            tee: TeeKind::Snp,
            report: vec![0; 3],
            certificates: vec![],
            binding: None,
            vtpm: None,
        };
        assert!(matches!(
            e.decode(),
            Err(EvidenceError::Report(ReportError::Length { found: 3 }))
        ));
    }
}
