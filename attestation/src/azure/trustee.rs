//! Trustee's `az-snp-vtpm` evidence JSON (confidential-containers/trustee), in the three
//! shapes it has had, read into one type that becomes a Veil [`Evidence`]:
//!
//! ```text
//! v0:    {"quote": {"signature": [u8…], "message": [u8…], "pcrs": [[u8; 32]…]},
//!         "report": [u8…] (the HCL report), "vcek": "<PEM>"}
//! v1/v2: {"version": 1|2, "tpm_quote": {"signature": "<hex>", "message": "<hex>",
//!         "pcrs": ["<hex>"…]}, "hcl_report": "<base64url>", "vcek": "<base64url DER>"}
//! ```
//!
//! v2 has the shape of v1; its runtime claims also carry `user-data` (the nonce, hex).

use serde::Deserialize;

use super::hcl::HclReport;
use super::tpm::PCR_COUNT;
use super::AzureError;
use crate::chain::Certificate;
use crate::evidence::{Evidence, TeeKind, VtpmEvidence, MAX_EVIDENCE_LEN};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuoteV0 {
    signature: Vec<u8>,
    message: Vec<u8>,
    pcrs: Vec<Vec<u8>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EvidenceV0 {
    quote: QuoteV0,
    report: Vec<u8>,
    vcek: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuoteV1 {
    signature: String,
    message: String,
    pcrs: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EvidenceV1 {
    version: u32,
    tpm_quote: QuoteV1,
    hcl_report: String,
    vcek: String,
}

/// Trustee `az-snp-vtpm` evidence, whatever its version: the HCL report, the quote, its
/// signature, the SHA-256 PCRs, and the VCEK (with any other certificates it came with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrusteeEvidence {
    /// The evidence format: 0 (no `version` field), 1 or 2.
    pub version: u32,
    /// The HCL report.
    pub hcl_report: Vec<u8>,
    /// The quote (`TPMS_ATTEST`).
    pub quote: Vec<u8>,
    /// The quote's RSASSA-PKCS1-v1_5 SHA-256 signature.
    pub signature: Vec<u8>,
    /// PCRs 0.. of the SHA-256 bank.
    pub pcrs: Vec<[u8; 32]>,
    /// DER certificates: the VCEK first.
    pub certificates: Vec<Vec<u8>>,
}

fn pcrs<T: AsRef<[u8]>>(list: &[T]) -> Result<Vec<[u8; 32]>, AzureError> {
    if list.len() > PCR_COUNT {
        return Err(AzureError::TooLong {
            what: "pcrs",
            len: list.len(),
            max: PCR_COUNT,
        });
    }
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            p.as_ref()
                .try_into()
                .map_err(|_| AzureError::Trustee(format!("PCR {i} is not 32 bytes")))
        })
        .collect()
}

fn hex(field: &str, text: &str) -> Result<Vec<u8>, AzureError> {
    hex::decode(text.trim()).map_err(|e| AzureError::Trustee(format!("{field}: {e}")))
}

fn certificates(pem_or_der: &[u8]) -> Result<Vec<Vec<u8>>, AzureError> {
    let certs = Certificate::all_from_pem_or_der(pem_or_der)
        .map_err(|e| AzureError::Trustee(format!("vcek: {e}")))?;
    if certs.is_empty() {
        return Err(AzureError::Trustee("vcek holds no certificate".into()));
    }
    Ok(certs.iter().map(|c| c.as_der().to_vec()).collect())
}

impl TrusteeEvidence {
    /// Parses Trustee evidence JSON of format v0, v1 or v2.
    ///
    /// # Errors
    /// [`AzureError::Trustee`] naming what does not fit (unknown members are refused).
    pub fn from_json(bytes: &[u8]) -> Result<Self, AzureError> {
        if bytes.len() > MAX_EVIDENCE_LEN {
            return Err(AzureError::TooLong {
                what: "Trustee evidence",
                len: bytes.len(),
                max: MAX_EVIDENCE_LEN,
            });
        }
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| AzureError::Trustee(e.to_string()))?;
        let object = value
            .as_object()
            .ok_or_else(|| AzureError::Trustee("not a JSON object".into()))?;
        if !object.contains_key("version") {
            let v0: EvidenceV0 = serde_json::from_value(value)
                .map_err(|e| AzureError::Trustee(format!("v0: {e}")))?;
            return Ok(TrusteeEvidence {
                version: 0,
                hcl_report: v0.report,
                quote: v0.quote.message,
                signature: v0.quote.signature,
                pcrs: pcrs(&v0.quote.pcrs)?,
                certificates: certificates(v0.vcek.as_bytes())?,
            });
        }
        let v: EvidenceV1 = serde_json::from_value(value)
            .map_err(|e| AzureError::Trustee(format!("v1/v2: {e}")))?;
        if !matches!(v.version, 1 | 2) {
            return Err(AzureError::Trustee(format!(
                "evidence version {} (known: 0, 1, 2)",
                v.version
            )));
        }
        let pcr_bytes = v
            .tpm_quote
            .pcrs
            .iter()
            .enumerate()
            .map(|(i, p)| hex(&format!("pcrs[{i}]"), p))
            .collect::<Result<Vec<_>, _>>()?;
        let b64 = |field: &str, text: &str| {
            super::base64_any(text).map_err(|e| AzureError::Trustee(format!("{field}: {e}")))
        };
        Ok(TrusteeEvidence {
            version: v.version,
            hcl_report: b64("hcl_report", &v.hcl_report)?,
            quote: hex("message", &v.tpm_quote.message)?,
            signature: hex("signature", &v.tpm_quote.signature)?,
            pcrs: pcrs(&pcr_bytes)?,
            certificates: certificates(&b64("vcek", &v.vcek)?)?,
        })
    }

    /// Whether `bytes` look like Trustee evidence rather than a Veil bundle: a JSON object
    /// without `tee`, with Trustee's members.
    pub fn recognizes(bytes: &[u8]) -> bool {
        let Ok(serde_json::Value::Object(o)) = serde_json::from_slice(bytes) else {
            return false;
        };
        !o.contains_key("tee")
            && o.contains_key("vcek")
            && (o.contains_key("tpm_quote") || o.contains_key("quote"))
    }

    /// The Veil evidence bundle: tee `az-snp-vtpm`, the SNP report sliced from the HCL
    /// report, the certificates, and the vTPM part.
    ///
    /// # Errors
    /// [`AzureError`] if the HCL report is too short to hold an SNP report.
    pub fn to_evidence(&self) -> Result<Evidence, AzureError> {
        let hcl = HclReport::from_bytes(&self.hcl_report)?;
        Ok(Evidence {
            tee: TeeKind::AzSnpVtpm,
            report: hcl.snp_report_bytes().to_vec(),
            certificates: self.certificates.clone(),
            binding: None,
            vtpm: Some(VtpmEvidence {
                hcl_report: self.hcl_report.clone(),
                quote: self.quote.clone(),
                signature: self.signature.clone(),
                pcrs: self.pcrs.clone(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_trustee_evidence() {
        for bad in [
            &b"[]"[..],
            b"{\"version\":3,\"tpm_quote\":{\"signature\":\"\",\"message\":\"\",\"pcrs\":[]},\"hcl_report\":\"\",\"vcek\":\"\"}",
            b"{\"quote\":{\"signature\":[],\"message\":[],\"pcrs\":[]},\"report\":[],\"vcek\":\"\",\"x\":1}",
            b"{\"version\":1,\"tpm_quote\":{\"signature\":\"zz\",\"message\":\"\",\"pcrs\":[]},\"hcl_report\":\"\",\"vcek\":\"\"}",
            b"not json",
        ] {
            assert!(TrusteeEvidence::from_json(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(!TrusteeEvidence::recognizes(
            br#"{"tee":"snp","vcek":1,"quote":1}"#
        ));
        assert!(TrusteeEvidence::recognizes(br#"{"vcek":1,"quote":1}"#));
    }

    #[test]
    fn pcrs_must_be_32_bytes_and_at_most_24() {
        assert!(pcrs(&[vec![0u8; 31]]).is_err());
        assert!(pcrs(&vec![vec![0u8; 32]; 25]).is_err());
        assert_eq!(pcrs(&[vec![1u8; 32]]).expect("ok"), vec![[1u8; 32]]);
    }
}
