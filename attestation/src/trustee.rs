//! Evidence in the formats of Confidential Containers' Trustee (its attestation service's
//! verifiers), for `veil-server --key-broker kbs://…`.
//!
//! - `snp`: `{"attestation_report": R, "cert_chain": [C…]}`, where `R` is the report as the
//!   `sev` crate's serde writes it and each `C` a `sev` certificate-table entry
//!   (`{"cert_type": "VCEK", "data": [bytes]}`): what Trustee's SNP verifier reads. It
//!   checks the signature under AMD's roots, so a mock platform's report is refused there
//!   (and accepted by a test KBS that only reads it).
//! - `sample`: `{"svn": "1", "report_data": B64}`: Trustee's sample verifier, which checks
//!   no signature at all. For trying the flow with the mock TEE only.
//!
//! The report data Trustee expects is its own digest of the runtime data (the KBS nonce and
//! the TEE's key), not Veil's transcript: see `server/src/kbs.rs`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::{CertTableEntry, CertType};
use sev::parser::ByteParser as _;

use crate::evidence::{Evidence, TeeKind};

/// Why evidence cannot be put in Trustee's format.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrusteeError {
    /// The report does not parse as an SEV-SNP report.
    #[error("the report is not an SEV-SNP report: {0}")]
    Report(String),
}

/// The `snp` evidence for Trustee: the report and its certificates. The first certificate
/// is the VCEK, or the VLEK when the report says a VLEK signed it; the next the ASK (ASVK),
/// the last, if there is a third, the ARK.
///
/// # Errors
/// [`TrusteeError::Report`] if the report does not parse.
pub fn snp_evidence(evidence: &Evidence) -> Result<serde_json::Value, TrusteeError> {
    let mut bytes = evidence.report.clone();
    if evidence.tee == TeeKind::Mock && bytes.len() > 0x18A {
        // The mock platform's reports name no CPUID, from which the sev crate tells the
        // report's layout: give them Genoa's (family 19h, model 11h). Their signature is
        // the mock platform's, which no real verifier accepts whatever they say.
        bytes[0x188] = 0x19;
        bytes[0x189] = 0x11;
    }
    let report =
        AttestationReport::from_bytes(&bytes).map_err(|e| TrusteeError::Report(e.to_string()))?;
    // KEY_INFO bits 2..=4: 0 the VCEK signed it, 1 the VLEK.
    let vlek = (evidence.report.get(0x48).copied().unwrap_or(0) >> 2) & 0b111 == 1;
    let chain: Vec<CertTableEntry> = evidence
        .certificates
        .iter()
        .enumerate()
        .map(|(i, der)| CertTableEntry {
            cert_type: match i {
                0 if vlek => CertType::VLEK,
                0 => CertType::VCEK,
                1 => CertType::ASK,
                _ => CertType::ARK,
            },
            data: der.clone(),
        })
        .collect();
    Ok(serde_json::json!({
        "attestation_report": report,
        "cert_chain": if chain.is_empty() { None } else { Some(chain) },
    }))
}

/// The `sample` evidence for Trustee: the report data, and no signature of any kind.
pub fn sample_evidence(report_data: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "svn": "1",
        "report_data": STANDARD.encode(report_data),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::{MockLaunch, MockPlatform};

    #[test]
    fn snp_evidence_carries_the_report_fields_and_names_the_certificates() {
        let platform = MockPlatform::generate(std::time::SystemTime::now()).expect("platform");
        let launch = MockLaunch::new(b"exe", Default::default());
        let mut rd = [0u8; 64];
        rd[..3].copy_from_slice(b"abc");
        let evidence = platform.attest(&launch, rd);
        let json = snp_evidence(&evidence).expect("a mock report parses");
        let report = &json["attestation_report"];
        let bytes = |v: &serde_json::Value| -> Vec<u8> {
            v.as_array()
                .expect("an array")
                .iter()
                .map(|b| u8::try_from(b.as_u64().expect("a number")).expect("a byte"))
                .collect()
        };
        assert_eq!(bytes(&report["report_data"]), rd.to_vec());
        assert_eq!(
            bytes(&report["measurement"]),
            evidence.report[0x90..0xC0].to_vec()
        );
        let chain = json["cert_chain"].as_array().expect("a chain");
        assert_eq!(chain.len(), evidence.certificates.len());
        assert_eq!(chain[0]["cert_type"], "VCEK");
        assert_eq!(bytes(&chain[0]["data"]), evidence.certificates[0]);
        // The sev crate reads back what it wrote: the same report.
        let back: AttestationReport =
            serde_json::from_value(report.clone()).expect("sev reads its own serde");
        assert_eq!(back.report_data, rd);

        let mut short = evidence.clone();
        short.report.truncate(100);
        assert!(snp_evidence(&short).is_err());
    }

    #[test]
    fn sample_evidence_is_the_report_data_in_standard_base64() {
        assert_eq!(
            sample_evidence(&[0xfb, 0xff]),
            serde_json::json!({"svn": "1", "report_data": "+/8="})
        );
    }
}
