//! CRL parsing never panics, and neither do the questions appraisal asks of a parsed one.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_attestation::{Certificate, Crl};

fuzz_target!(|data: &[u8]| {
    if let Ok(crl) = Crl::from_pem_or_der(data) {
        let _ = (crl.issuer_cn(), crl.this_update(), crl.next_update(), crl.revoked_count());
        let root = veil_attestation::chain::amd_roots(veil_attestation::Product::Milan)
            .map(|r| &r.ark);
        if let Some(ark) = root {
            let _: (bool, Option<String>) = (crl.is_signed_by(ark), crl.revocation_of(ark));
        }
        let _ = Certificate::from_der(data);
    }
});
