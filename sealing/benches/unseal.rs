//! Unseal throughput against ring's raw AES-256-GCM and a plain memory copy, on the same
//! data in one run. `cargo bench -p veil-sealing --bench unseal [-- MIB]` (default 256 MiB;
//! `VEIL_BENCH_CHUNK_KIB` sets the chunk size, default 1024).
//!
//! Goals (issue 3): 1 thread ≥ 0.9 × raw; all cores ≥ 0.85 × cores × raw.
//!
//! "raw" opens ciphertext that is already where the plaintext goes; unsealing a file must
//! also bring the ciphertext there (a positional read: a copy out of the page cache). So
//! the line "copy + open bound" prints `1 / (1/raw + 1/memcpy)`, what one core can reach
//! doing both, as a second yardstick.

use std::io::{BufWriter, Cursor};
use std::time::{Duration, Instant};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use veil_sealing::{seal, unseal_file, unseal_into, ModelKey, SealOptions, UnsealOptions};

const REPS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn rate(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn main() {
    let mib: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(256);
    let len = mib << 20;
    let chunk: usize = std::env::var("VEIL_BENCH_CHUNK_KIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024usize)
        << 10;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761) as u8)
        .collect();

    // Raw ring AES-256-GCM open, one core, 1 MiB chunks in place.
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7; 32]).expect("key"));
    let mut buf = data.clone();
    let mut tags = Vec::new();
    for (i, c) in buf.chunks_mut(chunk).enumerate() {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&(i as u64).to_be_bytes());
        tags.push(
            key.seal_in_place_separate_tag(Nonce::assume_unique_for_key(n), Aad::empty(), c)
                .expect("seal"),
        );
    }
    let sealed_raw = buf.clone();
    let raw = median(
        (0..REPS)
            .map(|_| {
                buf.copy_from_slice(&sealed_raw);
                let t = Instant::now();
                for (i, c) in buf.chunks_mut(chunk).enumerate() {
                    let mut n = [0u8; 12];
                    n[4..].copy_from_slice(&(i as u64).to_be_bytes());
                    key.open_in_place_separate_tag(
                        Nonce::assume_unique_for_key(n),
                        Aad::empty(),
                        tags[i],
                        c,
                        0..,
                    )
                    .expect("open");
                }
                t.elapsed()
            })
            .collect(),
    );
    assert_eq!(buf, data);

    // The same raw open on all cores at once: what the machine allows in parallel.
    let per = len.div_ceil(chunk).div_ceil(cores) * chunk;
    let raw_all = median(
        (0..REPS)
            .map(|_| {
                buf.copy_from_slice(&sealed_raw);
                let t = Instant::now();
                std::thread::scope(|s| {
                    for (p, part) in buf.chunks_mut(per).enumerate() {
                        let (key, tags) = (&key, &tags);
                        s.spawn(move || {
                            for (j, c) in part.chunks_mut(chunk).enumerate() {
                                let i = p * per / chunk + j;
                                let mut n = [0u8; 12];
                                n[4..].copy_from_slice(&(i as u64).to_be_bytes());
                                key.open_in_place_separate_tag(
                                    Nonce::assume_unique_for_key(n),
                                    Aad::empty(),
                                    tags[i],
                                    c,
                                    0..,
                                )
                                .expect("open");
                            }
                        });
                    }
                });
                t.elapsed()
            })
            .collect(),
    );
    assert_eq!(buf, data);

    // memcpy of the same size.
    let mut dst = vec![0u8; len];
    let copy = median(
        (0..REPS)
            .map(|_| {
                let t = Instant::now();
                dst.copy_from_slice(&data);
                std::hint::black_box(&dst);
                t.elapsed()
            })
            .collect(),
    );
    drop(dst);

    // Veil: seal to a file (page cache hot), unseal with 1 thread and all cores.
    let model_key = ModelKey::generate();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bench.veil");
    {
        let mut out = BufWriter::new(std::fs::File::create(&path).expect("create"));
        seal(
            &mut Cursor::new(&data),
            &mut out,
            &model_key,
            &SealOptions::default().with_chunk_size(chunk as u32),
            &mut |_, _| {},
        )
        .expect("seal");
    }
    let file = std::fs::File::open(&path).expect("open");
    let run = |threads: usize| {
        median(
            (0..REPS)
                .map(|_| {
                    let t = Instant::now();
                    let p = unseal_file(
                        &file,
                        &model_key,
                        &UnsealOptions {
                            threads,
                            ..UnsealOptions::default()
                        },
                    )
                    .expect("unseal");
                    let d = t.elapsed();
                    assert_eq!(p.as_bytes().len(), len);
                    d
                })
                .collect(),
        )
    };
    let mut dest = vec![0u8; len];
    let mut run_into = |threads: usize| {
        median(
            (0..REPS)
                .map(|_| {
                    let t = Instant::now();
                    unseal_into(
                        &file,
                        &model_key,
                        &UnsealOptions {
                            threads,
                            ..UnsealOptions::default()
                        },
                        &mut dest,
                    )
                    .expect("unseal");
                    t.elapsed()
                })
                .collect(),
        )
    };
    let one = run_into(1);
    let all = run_into(cores);
    let one_alloc = run(1);
    let all_alloc = run(cores);

    let (r, o, a, c) = (
        rate(len, raw),
        rate(len, one),
        rate(len, all),
        rate(len, copy),
    );
    println!(
        "data: {mib} MiB, chunk {} KiB, {cores} cores, median of {REPS}",
        chunk >> 10
    );
    println!("ring AES-256-GCM open, 1 core   {r:6.2} GB/s");
    let ra = rate(len, raw_all);
    println!(
        "ring AES-256-GCM open, {cores} cores  {ra:6.2} GB/s   ({:.2} × raw: the machine's own parallel ceiling)",
        ra / r
    );
    println!(
        "veil unseal_into, 1 thread           {o:6.2} GB/s   ratio {:.2} × raw   (goal ≥ 0.90)",
        o / r
    );
    println!("veil unseal_into, {cores} threads          {a:6.2} GB/s   ratio {:.2} × cores × raw   (goal ≥ 0.85)", a / (r * cores as f64));
    println!(
        "with a fresh allocation (page faults): 1 thread {:.2} GB/s, {cores} threads {:.2} GB/s",
        rate(len, one_alloc),
        rate(len, all_alloc)
    );
    println!(
        "memcpy                          {c:6.2} GB/s   unseal(all) / memcpy {:.2}",
        a / c
    );
    let bound = 1.0 / (1.0 / r + 1.0 / c);
    println!(
        "copy + open bound, 1 core       {bound:6.2} GB/s   1 thread / bound {:.2}, {cores} threads / ({cores} × bound) {:.2}",
        o / bound,
        a / (bound * cores as f64)
    );
}
