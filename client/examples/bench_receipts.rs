//! The cost of receipts (issue 18), on a real GGUF:
//!
//! - streamed generation on an attested TLS connection (what `veil ask` does) from a
//!   `veil-server` that signs receipts, against one started with `--no-receipts`: fresh
//!   servers each round, alternating which goes first, the ratio taken per round;
//! - signing one receipt, and verifying one bundle offline (what `veil receipt verify`
//!   does after reading the files), in-process.
//!
//! `scripts/bench-receipts.sh` builds everything in release and runs it:
//! `bench_receipts MODEL.gguf [THREADS] [ROUNDS]` (the `veil` and `veil-server` release
//! binaries are taken from the directory above this example).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use veil_client::kds::Collateral;
use veil_client::remote::{attest, Target, Upstream};
use veil_client::remote_cmd::{release_key, stream_chat_recorded};
use veil_sealing::ModelKey;

#[path = "bench_common/mod.rs"]
mod bench_common;
use bench_common::{median, Bench};

const PROMPT: &str = "Write a long story about a lighthouse keeper and the sea.";
const GEN_TOKENS: u32 = 128;

fn request() -> Value {
    json!({
        "messages": [{ "role": "user", "content": PROMPT }],
        "max_tokens": GEN_TOKENS,
        "temperature": 0,
        "ignore_eos": true,
        "stream": true,
    })
}

/// One streamed generation on a fresh attested connection: tokens per second end to end,
/// and what a receipt bundle needs of it.
async fn generate(upstream: &Upstream) -> (f64, veil_client::remote_cmd::StreamedAnswer, Vec<u8>) {
    let mut session = upstream.connect().await.expect("connect").into_trusted();
    let body = request().to_string().into_bytes();
    let started = Instant::now();
    let answer = stream_chat_recorded(
        &mut session,
        &Default::default(),
        body.clone(),
        &mut std::io::sink(),
    )
    .await
    .expect("stream");
    let took = started.elapsed().as_secs_f64();
    (f64::from(GEN_TOKENS) / took, answer, body)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = PathBuf::from(
        args.get(1)
            .map_or("models/SmolLM2-135M-Instruct.Q4_1.gguf", String::as_str),
    );
    let threads: usize = args.get(2).and_then(|t| t.parse().ok()).unwrap_or(1);
    let rounds: usize = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(6);

    let bench = Bench::new(&model);
    let (header, policy) = (&bench.header, &bench.policy);
    println!(
        "model {} ({} bytes), {threads} thread(s), {rounds} rounds, {GEN_TOKENS} tokens per generation",
        model.display(),
        header.plaintext_len
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let fresh = |receipts: bool| {
        let extra: &[&str] = if receipts { &[] } else { &["--no-receipts"] };
        let (srv, url) = bench.start_server(threads, extra);
        rt.block_on(async {
            let mut a = attest(
                &Target::parse(&url).expect("url"),
                policy,
                &Collateral::none(),
            )
            .await
            .expect("attest")
            .map_err(|_| "the server's evidence was rejected")
            .expect("verified");
            let key = ModelKey::read_key_file(&bench.path("m.key")).expect("key");
            release_key(&mut a, key, None, Duration::from_secs(600))
                .await
                .map_err(|_| "provisioning failed")
                .expect("ready");
        });
        (srv, url)
    };

    let (mut with, mut without, mut ratio) = (vec![], vec![], vec![]);
    let mut kept = None;
    for round in 0..rounds {
        let mut rates = [0.0f64; 2];
        for side in [round % 2, 1 - round % 2] {
            let receipts = side == 0;
            let (_srv, url) = fresh(receipts);
            let upstream = Upstream::new(
                Target::parse(&url).expect("url"),
                policy.clone(),
                Collateral::none(),
            );
            rt.block_on(generate(&upstream)); // warm-up: the first connection verifies
            let (rate, answer, body) = rt.block_on(generate(&upstream));
            assert_eq!(answer.receipt.is_some(), receipts, "receipts {receipts}");
            if receipts {
                let spki = upstream.pinned().expect("pinned").spki_sha256();
                kept = Some((
                    upstream.attested(&spki).expect("attested"),
                    answer,
                    body,
                    url,
                ));
            }
            rates[side] = rate;
        }
        with.push(rates[0]);
        without.push(rates[1]);
        ratio.push(rates[0] / rates[1]);
    }

    // Signing and offline verification, in-process.
    let signer = veil_attestation::receipt::ReceiptSigner::generate();
    let (attested, answer, body, url) = kept.expect("a receipt");
    let compact = answer.receipt.clone().expect("a receipt");
    let r = veil_attestation::SignedReceipt::parse(&compact)
        .expect("parses")
        .receipt()
        .clone();
    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(signer.sign(&r));
    }
    let sign_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let bundle = veil_client::receipt::Bundle::new(
        &compact,
        &url,
        "/v1/chat/completions",
        &attested,
        &body,
        &answer.body,
    );
    let mut verify = vec![];
    for _ in 0..51 {
        let t = Instant::now();
        let v = veil_client::receipt::verify(&bundle, &body, &answer.body, policy);
        verify.push(t.elapsed().as_secs_f64());
        assert!(v.verified(), "{v}");
    }

    let (w, wo, q) = (median(with), median(without), median(ratio));
    println!("\n== generation on attested TLS ({GEN_TOKENS} tokens, greedy, medians of {rounds})");
    println!("  with receipts                      {w:7.1} tok/s");
    println!("  --no-receipts                      {wo:7.1} tok/s");
    println!("  ratio (per round)  {q:.3}x   (goal >= 0.99x)");
    println!("\n== in-process");
    println!("  sign one receipt (Ed25519 + JSON)  {sign_us:7.1} µs (mean of {n})");
    println!(
        "  verify one bundle offline          {:7.2} ms (median of 51; evidence appraisal, signature, digests)",
        median(verify) * 1e3
    );
}
