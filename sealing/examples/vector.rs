//! Prints the worked example of `docs/sealed-format.md`, committed as
//! `sealing/vectors/documented.vector`; the test `the_documented_test_vector` checks it.
//!
//! `cargo run -p veil-sealing --example vector > sealing/vectors/documented.vector`

use std::collections::BTreeMap;
use std::io::Cursor;

use veil_sealing::{seal, KeyId, ModelKey, SealOptions};
use zeroize::Zeroizing;

fn main() {
    let key = ModelKey::from_parts(KeyId([0x33; 16]), Box::new(Zeroizing::new([0x11; 32])));
    let plain = b"Veil sealed-format test vector\n";
    let metadata = BTreeMap::from([("name".to_owned(), "vector".to_owned())]);
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
    let mac_end = 124 + 17 + 32;
    let file_sha256 = ring::digest::digest(&ring::digest::SHA256, &bytes);
    println!("# Veil sealed-format v1 test vector: docs/sealed-format.md, \"Worked example\".");
    println!("# The file is `header`, zeros to 4096, `tag`, zeros to 8192, then `body`.");
    println!("expect: opens");
    println!("key {}", hex::encode(key.expose_secret()));
    println!("key_id {}", key.key_id());
    println!("salt {}", hex::encode([0x22; 32]));
    println!("chunk_size {}", h.chunk_size);
    println!("plaintext {}", hex::encode(plain));
    println!("model_sha256 {}", hex::encode(h.model_sha256));
    println!("file_len {}", bytes.len());
    println!("file_sha256 {}", hex::encode(file_sha256));
    println!("header {}", hex::encode(&bytes[..mac_end]));
    println!("tag {}", hex::encode(&bytes[4096..4112]));
    println!("body {}", hex::encode(&bytes[8192..]));
}
