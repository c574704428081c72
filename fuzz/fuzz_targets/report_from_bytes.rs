//! Report parsing never panics, whatever the bytes; a parsed report reads every field.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_attestation::Report;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = Report::from_bytes_or_hex(data) {
        let _ = report.fields(None);
        let _ = report.nonzero_reserved();
        let _ = report.signing_key();
    }
});
