//! Prints the worked example of `docs/sealed-format.md` (committed as
//! `docs/sealed-format.vector.txt`; the test `the_documented_test_vector` checks it).

use std::collections::BTreeMap;
use std::io::Cursor;

use veil_sealing::{seal, KeyId, ModelKey, SealOptions};
use zeroize::Zeroizing;

fn main() {
    let key = ModelKey::from_parts(KeyId([0x33; 16]), Zeroizing::new([0x11; 32]));
    let plain = b"Veil sealed-format test vector\n";
    let metadata = BTreeMap::from([("name".to_owned(), "vector".to_owned())]);
    let opts = SealOptions::default()
        .with_chunk_size(4096)
        .with_metadata(metadata)
        .danger_fixed_salt([0x22; 32]);
    let mut out = Cursor::new(Vec::new());
    seal(
        &mut Cursor::new(plain.to_vec()),
        &mut out,
        &key,
        &opts,
        &mut |_, _| {},
    )
    .expect("seal");
    let bytes = out.into_inner();
    println!(
        "expect: opens with key 11×32 (key_id 33×16) to {:?}",
        String::from_utf8_lossy(plain)
    );
    println!("header {}", hex::encode(&bytes[..124 + 17 + 32]));
    println!("body {}", hex::encode(&bytes[8192..]));
    println!("tag {}", hex::encode(&bytes[4096..4112]));
}
