//! Sealed-header parsing never panics, whatever the bytes, from a slice or a reader.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_sealing::SealedHeader;

fuzz_target!(|data: &[u8]| {
    let from_slice = SealedHeader::from_bytes(data);
    if let Ok(h) = &from_slice {
        let _ = (h.data_offset(), h.file_len(), h.name(), format!("{h:?}"));
    }
    // The reader path reads exactly header_len bytes and must agree with the slice path.
    let from_reader = SealedHeader::from_reader(&mut std::io::Cursor::new(data));
    assert_eq!(from_slice.is_ok(), from_reader.is_ok());
    if let (Ok(a), Ok(b)) = (from_slice, from_reader) {
        assert_eq!(a, b);
    }
});
