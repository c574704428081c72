//! Certificate-table parsing never panics, and a parsed table rebuilds to bytes that parse
//! back to the same table.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_attestation::CertTable;

fuzz_target!(|data: &[u8]| {
    if let Ok(table) = CertTable::from_bytes(data) {
        let rebuilt = CertTable::new(table.entries().to_vec()).expect("a parsed table is valid");
        assert_eq!(rebuilt, table);
        let bytes = table.to_bytes();
        assert_eq!(CertTable::from_bytes(&bytes).as_ref(), Ok(&table));
        let _ = (table.evidence_certificates(false), table.evidence_certificates(true));
    }
});
