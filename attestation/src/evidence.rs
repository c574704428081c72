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
}

impl std::fmt::Display for TeeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TeeKind::Snp => "snp",
            TeeKind::Mock => "MOCK",
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
        };
        assert!(matches!(
            e.decode(),
            Err(EvidenceError::Report(ReportError::Length { found: 3 }))
        ));
    }
}
