//! The Azure vTPM parsers never panic: a TPM quote (`TPMS_ATTEST`), a `TPMT_SIGNATURE` and
//! an HCL report with its runtime claims. A parsed quote keeps exactly the bytes it was
//! given (what the signature covers), and its PCR digest is computable or refused.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_attestation::azure::{HclReport, Quote, TpmSignature};

fuzz_target!(|data: &[u8]| {
    if let Ok(quote) = Quote::from_bytes(data) {
        assert_eq!(quote.as_bytes(), data);
        assert!(quote.extra_data().len() <= 64);
        let _ = quote.digest_of(&[[0u8; 32]; 24]);
        let _ = quote.sha256_pcrs();
    }
    if let Ok((sig, used)) = TpmSignature::from_prefix(data) {
        assert!(used <= data.len());
        assert_eq!(used, 6 + sig.signature.len());
    }
    if let Ok(hcl) = HclReport::from_bytes(data) {
        assert_eq!(hcl.snp_report_bytes().len(), 1184);
        let _ = hcl.expected_report_data();
        if let Ok(claims) = hcl.runtime_claims() {
            let _ = claims.attestation_key();
        }
    }
});
