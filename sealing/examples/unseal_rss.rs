//! Seals a synthetic model of N MiB (default 2048) into DIR, then, in a second process
//! run (`unseal`), unseals it and prints its size: `scripts/bench-unseal.sh` measures the
//! peak RSS of that second run.
//!
//! `cargo run --release -p veil-sealing --example unseal_rss -- seal DIR [MIB]`
//! `cargo run --release -p veil-sealing --example unseal_rss -- unseal DIR`

use std::io::{BufWriter, Read};

use veil_sealing::{seal, unseal_file, ModelKey, SealOptions, UnsealOptions};

/// A reader of `len` pseudo-random bytes that never holds them all.
struct Synthetic {
    left: u64,
    state: u64,
}

impl Read for Synthetic {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.left as usize);
        for b in &mut buf[..n] {
            self.state = self
                .state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (self.state >> 56) as u8;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(2).expect("usage: seal|unseal DIR [MIB]"));
    match args.get(1).map(String::as_str) {
        Some("seal") => {
            let mib: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(2048);
            let plain = dir.join("synthetic.bin");
            std::io::copy(
                &mut Synthetic {
                    left: mib << 20,
                    state: 1,
                },
                &mut BufWriter::new(std::fs::File::create(&plain).expect("create")),
            )
            .expect("write");
            let key = ModelKey::generate();
            let mut out =
                BufWriter::new(std::fs::File::create(dir.join("synthetic.veil")).expect("create"));
            let mut input = std::fs::File::open(&plain).expect("open");
            seal(
                &mut input,
                &mut out,
                &key,
                &SealOptions::default(),
                &mut |_, _| {},
            )
            .expect("seal");
            std::fs::remove_file(&plain).expect("remove plaintext");
            std::fs::write(dir.join("synthetic.key"), key.to_key_file().as_bytes()).expect("key");
        }
        Some("unseal") => {
            let key = ModelKey::from_key_file(
                &std::fs::read_to_string(dir.join("synthetic.key")).expect("key"),
            )
            .expect("key file");
            let file = std::fs::File::open(dir.join("synthetic.veil")).expect("open");
            let t = std::time::Instant::now();
            let p = unseal_file(&file, &key, &UnsealOptions::default()).expect("unseal");
            println!(
                "unsealed {} bytes in {:.2?}",
                p.as_bytes().len(),
                t.elapsed()
            );
        }
        _ => panic!("usage: seal|unseal DIR [MIB]"),
    }
}
