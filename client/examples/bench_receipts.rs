//! The cost of receipts and of lease renewals (issue 18), on a real GGUF:
//!
//! - streamed generation through `veil proxy` (in-process, plain HTTP as an OpenAI client
//!   sends it, then attested TLS) from a `veil-server` that signs receipts, the proxy
//!   keeping each bundle on disk, against a server started with `--no-receipts` and a
//!   proxy that keeps none;
//! - the same with receipts and a lease: the server pulled its key from `veil broker
//!   --lease 2s`, so it renews with fresh evidence every second while it generates (a
//!   renewal period far shorter than any deployment's, to make its cost visible);
//! - fresh servers each round, alternating the order, the ratios taken per round;
//! - signing one receipt, and verifying one bundle offline (what `veil receipt verify`
//!   does after reading the files), in-process.
//!
//! `scripts/bench-receipts.sh` builds everything in release and runs it:
//! `bench_receipts MODEL.gguf [THREADS] [ROUNDS]` (the `veil` and `veil-server` release
//! binaries are taken from the directory above this example).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use veil_client::kds::Collateral;
use veil_client::remote::{attest, Target, Upstream};
use veil_client::remote_cmd::{release_key, stream_chat_recorded, wait_ready};
use veil_sealing::ModelKey;

#[path = "bench_common/mod.rs"]
mod bench_common;
use bench_common::{median, request_json, through_proxy, Bench, ProxyServer, GEN_TOKENS};

/// One streamed generation on a fresh attested connection (untimed): what a receipt
/// bundle needs of it.
async fn sample(upstream: &Upstream) -> (veil_client::remote_cmd::StreamedAnswer, Vec<u8>) {
    let mut session = upstream.connect().await.expect("connect").into_trusted();
    let body = request_json().to_string().into_bytes();
    let answer = stream_chat_recorded(
        &mut session,
        &Default::default(),
        body.clone(),
        &mut std::io::sink(),
    )
    .await
    .expect("stream");
    (answer, body)
}

/// The server's lease renewals so far (`/ready`), on a fresh attested connection.
async fn renewals(upstream: &Upstream) -> u64 {
    let mut session = upstream.connect().await.expect("connect").into_trusted();
    let (_, body) = session
        .session()
        .fetch("GET", "/ready", None)
        .await
        .expect("/ready");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    v["lease"]["renewals"].as_u64().unwrap_or(0)
}

/// What a round's server is.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Receipts,
    NoReceipts,
    Leased,
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
    let (_broker, broker_url) = bench.start_broker(&["--lease", "2s", "--lease-grace", "2s"]);
    let fresh = |side: Side| {
        let extra: Vec<&str> = match side {
            Side::Receipts => vec![],
            Side::NoReceipts => vec!["--no-receipts"],
            Side::Leased => vec!["--key-broker", broker_url.as_str()],
        };
        let (srv, url) = bench.start_server(threads, &extra);
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
            if side == Side::Leased {
                // It pulls the key from the broker itself.
                wait_ready(
                    a.trusted().session(),
                    Instant::now(),
                    Duration::from_secs(600),
                )
                .await
                .map_err(|_| "the server did not pull its key")
                .expect("ready");
            } else {
                let key = ModelKey::read_key_file(&bench.path("m.key")).expect("key");
                release_key(&mut a, key, None, Duration::from_secs(600))
                    .await
                    .map_err(|_| "provisioning failed")
                    .expect("ready");
            }
        });
        (srv, url)
    };

    let receipts_dir = bench.path("receipts");
    std::fs::create_dir(&receipts_dir).expect("receipts dir");
    let order = [Side::Receipts, Side::NoReceipts, Side::Leased];
    let (mut rates, mut ratio, mut lease_ratio) = ([vec![], vec![], vec![]], vec![], vec![]);
    let mut renewed = 0u64;
    let mut kept = None;
    for round in 0..rounds {
        let mut rate = [0.0f64; 3];
        for i in 0..3 {
            let side = order[(round + i) % 3];
            let (_srv, url) = fresh(side);
            let upstream = Upstream::new(
                Target::parse(&url).expect("url"),
                policy.clone(),
                Collateral::none(),
            );
            let keep = (side != Side::NoReceipts).then(|| receipts_dir.clone());
            let timed = rt.block_on(async {
                let proxy = ProxyServer::to(&url, policy, keep).await;
                through_proxy(proxy.addr).await; // warm-up: the proxy verifies the server
                let before = renewals(&upstream).await;
                let g = through_proxy(proxy.addr).await;
                if side == Side::Leased {
                    renewed += renewals(&upstream).await - before;
                }
                g
            });
            if side == Side::Receipts && kept.is_none() {
                let (answer, body) = rt.block_on(sample(&upstream));
                assert!(answer.receipt.is_some(), "a receipt");
                let spki = upstream.pinned().expect("pinned").spki_sha256();
                kept = Some((
                    upstream.attested(&spki).expect("attested"),
                    answer,
                    body,
                    url,
                ));
            }
            rate[side as usize] = timed.total_rate();
        }
        for (series, r) in rates.iter_mut().zip(rate) {
            series.push(r);
        }
        ratio.push(rate[0] / rate[1]);
        lease_ratio.push(rate[2] / rate[0]);
    }
    let bundles = std::fs::read_dir(&receipts_dir).expect("receipts").count();
    assert!(
        bundles >= 4 * rounds,
        "the proxy kept {bundles} receipt bundles for {rounds} rounds"
    );

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

    let [w, wo, l] = rates.map(median);
    let (q, lq) = (median(ratio), median(lease_ratio));
    println!("\n== generation through veil proxy + attested TLS ({GEN_TOKENS} tokens, greedy, medians of {rounds})");
    println!("  receipts (bundles kept by the proxy)  {w:7.1} tok/s");
    println!("  --no-receipts, no bundles             {wo:7.1} tok/s");
    println!("  receipts + a 2 s lease                {l:7.1} tok/s   ({renewed} renewals during the timed generations)");
    println!("  receipts / no receipts   {q:.3}x   (goal >= 0.99x)");
    println!("  leased / not leased      {lq:.3}x   (goal >= 0.99x)");
    println!("\n== in-process");
    println!("  sign one receipt (Ed25519 + JSON)  {sign_us:7.1} µs (mean of {n})");
    println!(
        "  verify one bundle offline          {:7.2} ms (median of 51; evidence appraisal, signature, digests)",
        median(verify) * 1e3
    );
}
