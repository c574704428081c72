//! The sealed format: round trips, and every STREAM attack named.

use std::fs::File;
use std::io::{Cursor, Seek, SeekFrom, Write};

use veil_sealing::header::TAG_LEN;
use veil_sealing::{
    seal, unseal_file, unseal_reader, KeyId, ModelKey, SealError, SealOptions, SealedHeader,
    UnsealOptions,
};
use zeroize::Zeroizing;

const CHUNK: u32 = 4096;

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn sealed(plain: &[u8], key: &ModelKey, chunk: u32) -> (SealedHeader, Vec<u8>) {
    let mut out = Cursor::new(Vec::new());
    let opts = SealOptions::default().with_chunk_size(chunk);
    let h = seal(
        &mut Cursor::new(plain.to_vec()),
        &mut out,
        key,
        &opts,
        &mut |_, _| {},
    )
    .expect("seal");
    (h, out.into_inner())
}

fn file_of(bytes: &[u8]) -> File {
    let mut f = tempfile::tempfile().expect("tempfile");
    f.write_all(bytes).expect("write");
    f.seek(SeekFrom::Start(0)).expect("seek");
    f
}

fn open(bytes: &[u8], key: &ModelKey) -> Result<Vec<u8>, SealError> {
    let opts = UnsealOptions {
        threads: 2,
        verify_digest: true,
        ..UnsealOptions::default()
    };
    let from_file = unseal_file(&file_of(bytes), key, &opts).map(|p| p.as_bytes().to_vec());
    // The reader path must reach the same verdict.
    let from_reader =
        unseal_reader(&mut Cursor::new(bytes), key, &opts).map(|p| p.as_bytes().to_vec());
    assert_eq!(
        format!("{from_file:?}"),
        format!("{from_reader:?}"),
        "unseal_file and unseal_reader disagree"
    );
    from_file
}

#[test]
fn round_trips_at_the_edge_sizes() {
    let key = ModelKey::generate();
    let c = CHUNK as usize;
    for len in [0, 1, c - 1, c, c + 1, 7 * c + 5] {
        let plain = data(len, 3);
        let (h, bytes) = sealed(&plain, &key, CHUNK);
        assert_eq!(h.plaintext_len, len as u64);
        assert_eq!(bytes.len() as u64, h.file_len());
        assert_eq!(h.data_offset() % 4096, 0);
        assert_eq!(open(&bytes, &key).expect("opens"), plain, "len {len}");
    }
}

#[test]
fn thread_counts_give_the_same_plaintext() {
    let key = ModelKey::generate();
    let plain = data(13 * CHUNK as usize + 77, 9);
    let (_, bytes) = sealed(&plain, &key, CHUNK);
    for threads in [1, 2, 3, 8, 64] {
        let opts = UnsealOptions {
            threads,
            ..UnsealOptions::default()
        };
        let p = unseal_file(&file_of(&bytes), &key, &opts).expect("opens");
        assert_eq!(p.as_bytes(), plain.as_slice(), "{threads} threads");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
    #[test]
    fn round_trips_random_sizes(len in 0usize..70_000, shift in 12u32..15) {
        let key = ModelKey::generate();
        let plain = data(len, 1);
        let (_, bytes) = sealed(&plain, &key, 1 << shift);
        proptest::prop_assert_eq!(open(&bytes, &key).expect("opens"), plain);
    }
}

proptest::proptest! {
    #[test]
    fn header_parsing_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..9000)) {
        let from_slice = SealedHeader::from_bytes(&bytes);
        if let Ok(h) = &from_slice {
            let _ = (h.data_offset(), h.file_len());
        }
        let from_reader = SealedHeader::from_reader(&mut Cursor::new(&bytes));
        proptest::prop_assert_eq!(from_slice.is_ok(), from_reader.is_ok());
    }

    #[test]
    fn edited_length_fields_never_panic(len in proptest::num::u64::ANY, count in proptest::num::u64::ANY) {
        let key = ModelKey::generate();
        let (_, mut bytes) = sealed(b"model", &key, CHUNK);
        bytes[24..32].copy_from_slice(&len.to_le_bytes());
        bytes[32..40].copy_from_slice(&count.to_le_bytes());
        proptest::prop_assert!(open(&bytes, &key).is_err());
    }
}

#[test]
fn a_key_with_another_id_is_named() {
    let (_, bytes) = sealed(b"model", &ModelKey::generate(), CHUNK);
    assert!(matches!(
        open(&bytes, &ModelKey::generate()),
        Err(SealError::KeyIdMismatch { .. })
    ));
}

#[test]
fn a_wrong_key_with_the_right_id_fails_at_the_header() {
    let key = ModelKey::generate();
    let (h, bytes) = sealed(&data(5 * CHUNK as usize, 0), &key, CHUNK);
    let impostor = ModelKey::from_parts(key.key_id(), Box::new(Zeroizing::new([0x55; 32])));
    match open(&bytes, &impostor) {
        Err(SealError::WrongKey { key_id }) => assert_eq!(key_id, h.key_id),
        other => panic!("{other:?}"),
    }
    // The header alone is enough to tell.
    assert!(h.check_key(&impostor).is_err());
    assert!(h.check_key(&key).is_ok());
}

#[test]
fn every_header_byte_is_authenticated() {
    let key = ModelKey::generate();
    let (h, bytes) = sealed(&data(3 * CHUNK as usize, 7), &key, CHUNK);
    for i in 0..h.header_len as usize {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        let r = open(&b, &key);
        assert!(r.is_err(), "header byte {i} edited and still opened");
        assert!(
            !matches!(r, Err(SealError::ChunkAuthFailed { .. })),
            "byte {i}: caught at the header, not later"
        );
    }
}

/// Each header field, edited without the key, fails with the reason that names it; no
/// edit gets as far as the chunks.
#[test]
fn every_header_field_edited_is_named() {
    let key = ModelKey::generate();
    let (h, bytes) = sealed(&data(3 * CHUNK as usize + 100, 7), &key, CHUNK);
    let meta_len = u32::from_le_bytes(bytes[120..124].try_into().expect("4")) as usize;
    type Check = fn(&SealError) -> bool;
    let cases: Vec<(&str, usize, u8, Check)> = vec![
        ("magic", 0, 1, |e| {
            matches!(e, SealError::InvalidHeader("magic"))
        }),
        ("version", 8, 1, |e| {
            matches!(e, SealError::UnsupportedVersion { found: 0 })
        }),
        ("suite", 10, 2, |e| {
            matches!(e, SealError::InvalidHeader("suite"))
        }),
        ("header_len", 13, 0x20, |e| {
            matches!(e, SealError::InvalidHeader("header_len"))
        }),
        ("chunk_size", 16, 1, |e| {
            matches!(e, SealError::InvalidHeader("chunk_size"))
        }),
        // a power of two again (8 KiB), so the chunk count no longer matches
        ("chunk_size", 17, 0x30, |e| {
            matches!(e, SealError::InvalidHeader("chunk_count"))
        }),
        ("reserved", 20, 1, |e| {
            matches!(e, SealError::InvalidHeader("reserved"))
        }),
        ("plaintext_len", 25, 0x10, |e| {
            matches!(e, SealError::InvalidHeader("chunk_count"))
        }),
        // same chunk count, another last-chunk length: only the MAC can tell
        ("plaintext_len", 24, 0x01, |e| {
            matches!(e, SealError::WrongKey { .. })
        }),
        ("chunk_count", 32, 1, |e| {
            matches!(e, SealError::InvalidHeader("chunk_count"))
        }),
        ("key_id", 40, 1, |e| {
            matches!(e, SealError::KeyIdMismatch { .. })
        }),
        ("salt", 56, 1, |e| matches!(e, SealError::WrongKey { .. })),
        ("model_sha256", 88, 1, |e| {
            matches!(e, SealError::WrongKey { .. })
        }),
        ("meta_len", 120, 1, |e| {
            matches!(e, SealError::InvalidHeader(_))
        }),
        ("metadata", 124 + 10, 1, |e| {
            matches!(e, SealError::WrongKey { .. })
        }),
        ("metadata", 124, 0x20, |e| {
            matches!(e, SealError::InvalidHeader("metadata"))
        }),
        ("header_mac", 124 + meta_len, 1, |e| {
            matches!(e, SealError::WrongKey { .. })
        }),
        ("padding", 124 + meta_len + 32, 1, |e| {
            matches!(e, SealError::InvalidHeader("padding"))
        }),
        ("tag table padding", h.data_offset() as usize - 1, 1, |e| {
            matches!(e, SealError::InvalidHeader("tag table padding"))
        }),
    ];
    for (name, at, xor, check) in cases {
        let mut b = bytes.clone();
        b[at] ^= xor;
        match open(&b, &key) {
            Err(e) if check(&e) => {}
            other => panic!("{name} (byte {at} ^ {xor:#x}): {other:?}"),
        }
    }
}

#[test]
fn check_key_tells_a_wrong_key_from_the_header_alone() {
    let key = ModelKey::generate();
    let (_, bytes) = sealed(&data(2 * CHUNK as usize, 1), &key, CHUNK);
    let header = SealedHeader::from_reader(&mut Cursor::new(&bytes)).expect("parses");
    header.check_key(&key).expect("the right key");
    let impostor = ModelKey::from_parts(key.key_id(), Box::new(Zeroizing::new([0x55; 32])));
    assert!(matches!(
        header.check_key(&impostor),
        Err(SealError::WrongKey { key_id }) if key_id == key.key_id()
    ));
    assert!(matches!(
        header.check_key(&ModelKey::generate()),
        Err(SealError::KeyIdMismatch { .. })
    ));
    // The header alone is enough: the body may be missing.
    let only_header = &bytes[..header.header_len as usize];
    assert!(matches!(
        SealedHeader::from_bytes(only_header)
            .expect("parses")
            .check_key(&impostor),
        Err(SealError::WrongKey { .. })
    ));
    assert!(matches!(
        open(only_header, &impostor),
        Err(SealError::WrongKey { .. })
    ));
    assert!(matches!(
        SealedHeader::from_reader(&mut Cursor::new(&bytes[..header.header_len as usize - 1])),
        Err(SealError::Truncated)
    ));
}

#[test]
fn each_flipped_chunk_and_tag_is_named() {
    let key = ModelKey::generate();
    let (h, bytes) = sealed(&data(4 * CHUNK as usize + 10, 7), &key, CHUNK);
    for i in 0..h.chunk_count {
        let mut b = bytes.clone();
        b[(h.data_offset() + i * u64::from(CHUNK)) as usize] ^= 0x80;
        assert!(
            matches!(open(&b, &key), Err(SealError::ChunkAuthFailed { index }) if index == i),
            "chunk {i}"
        );
        let mut b = bytes.clone();
        b[(h.tag_table_offset() + i * TAG_LEN) as usize] ^= 0x80;
        assert!(
            matches!(open(&b, &key), Err(SealError::ChunkAuthFailed { index }) if index == i),
            "tag {i}"
        );
    }
}

#[test]
fn swapped_chunks_are_refused() {
    let key = ModelKey::generate();
    let (h, mut b) = sealed(&data(3 * CHUNK as usize, 7), &key, CHUNK);
    let (c, d, t) = (
        CHUNK as usize,
        h.data_offset() as usize,
        h.tag_table_offset() as usize,
    );
    let first: Vec<u8> = b[d..d + c].to_vec();
    b.copy_within(d + c..d + 2 * c, d);
    b[d + c..d + 2 * c].copy_from_slice(&first);
    let tag0: Vec<u8> = b[t..t + 16].to_vec();
    b.copy_within(t + 16..t + 32, t);
    b[t + 16..t + 32].copy_from_slice(&tag0);
    assert!(matches!(
        open(&b, &key),
        Err(SealError::ChunkAuthFailed { index: 0 })
    ));
}

#[test]
fn a_dropped_last_chunk_or_any_truncation_is_refused() {
    let key = ModelKey::generate();
    let (_, bytes) = sealed(&data(3 * CHUNK as usize, 7), &key, CHUNK);
    let without_last = &bytes[..bytes.len() - CHUNK as usize];
    assert!(matches!(
        open(without_last, &key),
        Err(SealError::Truncated)
    ));
    assert!(matches!(
        open(&bytes[..bytes.len() - 1], &key),
        Err(SealError::Truncated)
    ));
    assert!(matches!(
        open(&bytes[..100], &key),
        Err(SealError::Truncated)
    ));
    assert!(matches!(open(&[], &key), Err(SealError::Truncated)));
}

#[test]
fn appended_bytes_are_refused() {
    let key = ModelKey::generate();
    let (_, mut bytes) = sealed(&data(CHUNK as usize, 7), &key, CHUNK);
    bytes.push(0);
    assert!(matches!(open(&bytes, &key), Err(SealError::TrailingData)));
}

#[test]
fn a_chunk_spliced_from_another_file_is_refused() {
    let key = ModelKey::generate();
    let plain = data(3 * CHUNK as usize, 7);
    let (h, mut a) = sealed(&plain, &key, CHUNK);
    let (_, b) = sealed(&plain, &key, CHUNK);
    let (c, d, t) = (
        CHUNK as usize,
        h.data_offset() as usize,
        h.tag_table_offset() as usize,
    );
    a[d + c..d + 2 * c].copy_from_slice(&b[d + c..d + 2 * c]);
    a[t + 16..t + 32].copy_from_slice(&b[t + 16..t + 32]);
    assert!(matches!(
        open(&a, &key),
        Err(SealError::ChunkAuthFailed { index: 1 })
    ));
}

#[test]
fn one_key_sealing_two_files_gives_unrelated_ciphertext() {
    let key = ModelKey::generate();
    let plain = data(2 * CHUNK as usize, 7);
    let (h, a) = sealed(&plain, &key, CHUNK);
    let (_, b) = sealed(&plain, &key, CHUNK);
    let d = h.data_offset() as usize;
    let same = a[d..].iter().zip(&b[d..]).filter(|(x, y)| x == y).count();
    assert!(same < a.len() / 50, "{same} equal ciphertext bytes");
    assert_eq!(open(&a, &key).expect("a"), open(&b, &key).expect("b"));
}

#[test]
fn a_pinned_digest_must_match() {
    let key = ModelKey::generate();
    let (h, bytes) = sealed(b"model", &key, CHUNK);
    let ok = UnsealOptions {
        expected_sha256: Some(h.model_sha256),
        ..UnsealOptions::default()
    };
    unseal_file(&file_of(&bytes), &key, &ok).expect("pinned digest matches");
    let other = UnsealOptions {
        expected_sha256: Some([0; 32]),
        ..UnsealOptions::default()
    };
    assert!(matches!(
        unseal_file(&file_of(&bytes), &key, &other).map(|_| ()),
        Err(SealError::DigestMismatch)
    ));
}

#[test]
fn unknown_versions_and_non_sealed_files_are_named() {
    let key = ModelKey::generate();
    let (_, mut bytes) = sealed(b"model", &key, CHUNK);
    bytes[8] = 2;
    assert!(matches!(
        open(&bytes, &key),
        Err(SealError::UnsupportedVersion { found: 2 })
    ));
    assert!(matches!(
        open(&[b'G'; 5000], &key),
        Err(SealError::InvalidHeader("magic"))
    ));
}

/// The worked example of `docs/sealed-format.md` (`sealing/vectors/documented.vector`).
#[test]
fn the_documented_test_vector() {
    let text = include_str!("../vectors/documented.vector");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("vector has no {name} line"))
    };
    let hex_field = |name: &str| hex::decode(field(name)).expect("hex");
    assert_eq!(field("expect:"), "opens");

    // Rebuild the file from the vector alone, as a second implementation would.
    let mut file = hex_field("header");
    file.resize(4096, 0);
    file.extend_from_slice(&hex_field("tag"));
    file.resize(8192, 0);
    file.extend_from_slice(&hex_field("body"));
    assert_eq!(file.len(), field("file_len").parse::<usize>().expect("len"));
    assert_eq!(
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &file)),
        field("file_sha256")
    );

    // This implementation seals the same inputs to exactly these bytes...
    let key = ModelKey::from_parts(
        KeyId::from_hex(field("key_id")).expect("key id"),
        Box::new(Zeroizing::new(
            hex_field("key").try_into().expect("32 bytes"),
        )),
    );
    let plain = hex_field("plaintext");
    let opts = SealOptions::default()
        .with_chunk_size(field("chunk_size").parse().expect("chunk size"))
        .with_name("vector")
        .danger_fixed_salt(hex_field("salt").try_into().expect("32 bytes"));
    let mut out = Cursor::new(Vec::new());
    let h = seal(
        &mut Cursor::new(&plain),
        &mut out,
        &key,
        &opts,
        &mut |_, _| {},
    )
    .expect("seal");
    assert_eq!(hex::encode(h.model_sha256), field("model_sha256"));
    assert_eq!(
        out.into_inner(),
        file,
        "sealed bytes differ from the vector"
    );

    // ...and opens them, through a file and through a reader.
    assert_eq!(open(&file, &key).expect("opens"), plain);
    let p = unseal_reader(&mut Cursor::new(&file), &key, &UnsealOptions::default()).expect("opens");
    assert_eq!(p.as_bytes(), plain.as_slice());
    assert_eq!(p.header().name(), Some("vector"));
}
