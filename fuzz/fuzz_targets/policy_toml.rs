//! Policy parsing never panics; a parsed policy re-encodes and parses again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_attestation::Policy;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(policy) = Policy::from_toml(text) {
            Policy::from_toml(&policy.to_toml()).expect("a parsed policy round-trips");
        }
    }
});
