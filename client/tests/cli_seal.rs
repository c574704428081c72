//! `veil seal` as a user runs it.

use std::os::unix::fs::PermissionsExt;

use veil_sealing::{unseal_file, ModelKey, UnsealOptions};
use veil_tests::harness::{text, veil};

#[test]
fn seal_writes_a_sealed_file_and_a_private_key_that_open_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = tmp.path().join("model.gguf");
    let plain: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&model, &plain).expect("write");
    let out = tmp.path().join("model.veil");
    let key = tmp.path().join("model.key");
    let (m, o, k) = (
        model.to_str().expect("utf8"),
        out.to_str().expect("utf8"),
        key.to_str().expect("utf8"),
    );

    let r = veil(&["seal", m, "-o", o, "--key-out", k, "--name", "test-model"]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    assert_eq!(
        std::fs::metadata(&key).expect("key").permissions().mode() & 0o777,
        0o600
    );
    let model_key =
        ModelKey::from_key_file(&std::fs::read_to_string(&key).expect("key")).expect("key file");
    assert!(
        text(&r).contains(&model_key.key_id().to_string()),
        "prints the key id"
    );
    assert!(
        !text(&r).contains(&hex::encode(model_key.expose_secret())),
        "never prints the key"
    );

    let p = unseal_file(
        &std::fs::File::open(&out).expect("open"),
        &model_key,
        &UnsealOptions::default(),
    )
    .expect("unseal");
    assert_eq!(p.as_bytes(), plain.as_slice());
    assert_eq!(p.header().metadata["name"], "test-model");

    // Refuses to overwrite; --inspect needs no key.
    assert_eq!(
        veil(&["seal", m, "-o", o, "--key-out", k]).status.code(),
        Some(1)
    );
    let r = veil(&["seal", "--inspect", o]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    assert!(
        text(&r).contains(&model_key.key_id().to_string()) && text(&r).contains("test-model"),
        "{}",
        text(&r)
    );

    // Reusing the key for another file: same key id, unrelated ciphertext.
    let out2 = tmp.path().join("again.veil");
    let r = veil(&["seal", m, "-o", out2.to_str().expect("utf8"), "--key", k]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    let a = std::fs::read(&out).expect("a");
    let b = std::fs::read(&out2).expect("b");
    assert_ne!(a[8192..8192 + 4096], b[8192..8192 + 4096]);
    unseal_file(
        &std::fs::File::open(&out2).expect("open"),
        &model_key,
        &UnsealOptions::default(),
    )
    .expect("opens with the reused key");
}

#[test]
fn inspect_names_a_file_that_is_not_sealed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let junk = tmp.path().join("junk.veil");
    std::fs::write(&junk, vec![7u8; 5000]).expect("write");
    let r = veil(&["seal", "--inspect", junk.to_str().expect("utf8")]);
    assert_eq!(r.status.code(), Some(1));
    assert!(text(&r).contains("magic"), "{}", text(&r));
}
