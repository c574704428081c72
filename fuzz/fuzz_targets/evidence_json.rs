//! Evidence decoding and appraisal never panic and never accept garbage.
#![no_main]
use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use veil_attestation::{Evidence, Offline, Policy};

fuzz_target!(|data: &[u8]| {
    if let Ok(evidence) = Evidence::from_json(data) {
        let result = Policy::genuine_snp().appraise_offline(&evidence, &Offline::report_data([0; 64], SystemTime::now()));
        assert!(result.is_err(), "fuzzed evidence must not pass appraisal");
    }
});
