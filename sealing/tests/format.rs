//! The sealed format: round trips, and every STREAM attack named.

use std::fs::File;
use std::io::{Cursor, Seek, SeekFrom, Write};

use veil_sealing::header::TAG_LEN;
use veil_sealing::{
    seal, unseal, KeyId, ModelKey, SealError, SealOptions, SealedHeader, UnsealOptions,
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
    unseal(&file_of(bytes), key, &opts).map(|(_, p)| p.as_bytes().to_vec())
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
        let (_, p) = unseal(&file_of(&bytes), &key, &opts).expect("opens");
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
        if let Ok(h) = SealedHeader::from_bytes(&bytes) {
            let _ = (h.data_offset(), h.file_len());
        }
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
    let impostor = ModelKey::from_parts(key.id(), Zeroizing::new([0x55; 32]));
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
    unseal(&file_of(&bytes), &key, &ok).expect("pinned digest matches");
    let other = UnsealOptions {
        expected_sha256: Some([0; 32]),
        ..UnsealOptions::default()
    };
    assert!(matches!(
        unseal(&file_of(&bytes), &key, &other),
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

/// The worked example of `docs/sealed-format.md`.
#[test]
fn the_documented_test_vector() {
    let key = ModelKey::from_parts(KeyId([0x33; 16]), Zeroizing::new([0x11; 32]));
    let plain = b"Veil sealed-format test vector\n";
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert("name".to_owned(), "vector".to_owned());
    let opts = SealOptions::default()
        .with_chunk_size(4096)
        .with_metadata(metadata)
        .danger_fixed_salt([0x22; 32]);
    let mut out = Cursor::new(Vec::new());
    let h = seal(
        &mut Cursor::new(plain.to_vec()),
        &mut out,
        &key,
        &opts,
        &mut |_, _| {},
    )
    .expect("seal");
    let bytes = out.into_inner();
    assert_eq!(bytes.len(), 8192 + plain.len());
    assert_eq!(
        hex::encode(h.model_sha256),
        "4cbc6a87f9194964a866d67338c176ed1a4234c198b4667eafae2a7927ecd760"
    );
    let expected = include_str!("../../docs/sealed-format.vector.txt");
    let (head, rest) = expected
        .split_once("\nbody ")
        .expect("vector file has a body line");
    let header_line = head
        .lines()
        .find_map(|l| l.strip_prefix("header "))
        .expect("header line");
    assert_eq!(
        hex::encode(&bytes[..124 + 17 + 32]),
        header_line.trim(),
        "authenticated header and MAC"
    );
    let (tags_line, body) = rest
        .split_once("\ntag ")
        .map(|(b, t)| (t, b))
        .expect("tag line");
    assert_eq!(hex::encode(&bytes[8192..]), body.trim(), "ciphertext");
    assert_eq!(hex::encode(&bytes[4096..4112]), tags_line.trim(), "tag");
    assert_eq!(open(&bytes, &key).expect("opens"), plain);
}
