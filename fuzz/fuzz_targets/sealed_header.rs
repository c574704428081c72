//! Sealed-header parsing never panics, whatever the bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_sealing::SealedHeader;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = SealedHeader::from_bytes(data) {
        let _ = (h.data_offset(), h.file_len(), format!("{h:?}"));
    }
});
