//! The cost of confidentiality, end to end (issue 6), on a real GGUF:
//!
//! - generation through `veil proxy` and the attested TLS connection to a real
//!   `veil-server`, against the same engine called in-process with the same request;
//! - wall time of `veil verify` against the local server (the command as a user runs it),
//!   and of the verification alone in-process;
//! - time from provisioning to Ready against a plain load (read the GGUF, load it).
//!
//! Rounds are interleaved so that drift on a shared machine hits both sides; medians are
//! printed, then the ratios. `scripts/bench-e2e.sh` builds everything in release and runs it:
//!
//! `bench_e2e MODEL.gguf [THREADS] [ROUNDS]` (the `veil` and `veil-server` release binaries
//! are taken from the directory above this example).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use veil_client::kds::Collateral;

use serde_json::json;
use veil_client::http::serve;
use veil_client::proxy::Proxy;
use veil_client::remote::{attest, Target};
use veil_client::remote_cmd::release_key;
use veil_model::{ChatMessage, Engine, EngineConfig, Event, GenerateRequest, LlamaEngine};
use veil_sealing::ModelKey;

#[path = "bench_common/mod.rs"]
mod bench_common;
use bench_common::{bin, median, request_json, through_proxy, Bench, Gen, GEN_TOKENS, PROMPT};

/// Notes when text arrives (for the direct series).
struct Stamps {
    first: Option<Instant>,
    last: Option<Instant>,
    writes: u32,
}

impl std::io::Write for Stamps {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !buf.is_empty() {
            let now = Instant::now();
            self.first.get_or_insert(now);
            self.last = Some(now);
            self.writes += 1;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The same request straight to the server on a pinned, attested TLS connection (what
/// `veil ask` does), without the proxy.
async fn direct(upstream: &veil_client::remote::Upstream) -> Gen {
    let mut session = upstream.connect().await.expect("connect").into_trusted();
    let started = Instant::now();
    let mut stamps = Stamps {
        first: None,
        last: None,
        writes: 0,
    };
    veil_client::remote_cmd::stream_chat(
        &mut session,
        &Default::default(),
        &request_json(),
        &mut stamps,
    )
    .await
    .expect("stream");
    let done = Instant::now();
    Gen {
        total: done - started,
        decode: stamps.last.unwrap_or(done) - stamps.first.unwrap_or(started),
        tokens: stamps.writes.max(1),
    }
}

/// The same request to the engine in-process.
fn in_process(engine: &LlamaEngine) -> Gen {
    let mut r = GenerateRequest::chat(vec![ChatMessage::new("user", PROMPT)]);
    r.params.max_tokens = GEN_TOKENS;
    r.params.temperature = 0.0;
    r.params.ignore_eos = true;
    let started = Instant::now();
    let mut stream = engine.submit(r).expect("submit");
    let (mut first, mut last, mut chunks) = (None, started, 0u32);
    while let Some(event) = stream.blocking_recv() {
        match event {
            Event::Text(t) if !t.is_empty() => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                chunks += 1;
            }
            Event::Text(_) | Event::Logprob(_) => {}
            Event::Done { .. } => break,
            Event::Error(e) => panic!("generation failed: {e}"),
        }
    }
    let done = Instant::now();
    Gen {
        total: done - started,
        decode: last - first.unwrap_or(started),
        tokens: chunks.max(1),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = PathBuf::from(
        args.get(1)
            .map_or("models/SmolLM2-135M-Instruct.Q4_1.gguf", String::as_str),
    );
    let threads: usize = args.get(2).and_then(|t| t.parse().ok()).unwrap_or(1);
    let rounds: usize = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(5);
    let config = EngineConfig {
        threads,
        ..EngineConfig::default()
    };

    let bench = Bench::new(&model);
    let (header, policy) = (&bench.header, &bench.policy);
    let p = |n: &str| bench.path(n);
    let s = |n: &str| p(n).display().to_string();
    std::fs::write(p("policy.toml"), policy.to_toml()).expect("policy");
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

    // A fresh server, provisioned; returns it and the time from provisioning to Ready.
    let fresh_server = || {
        let (srv, url) = bench.start_server(threads, &[]);
        let took = rt.block_on(async {
            let mut a = attest(
                &Target::parse(&url).expect("url"),
                policy,
                &Collateral::none(),
            )
            .await
            .expect("attest")
            .map_err(|_| "the server's evidence was rejected")
            .expect("verified");
            let key = ModelKey::read_key_file(&p("m.key")).expect("key");
            release_key(&mut a, key, None, Duration::from_secs(600))
                .await
                .map_err(|_| "provisioning failed")
                .expect("ready")
        });
        (srv, url, took)
    };
    let plain_load = || {
        let t = Instant::now();
        let bytes = std::fs::read(&model).expect("model");
        let engine = LlamaEngine::load(&bytes, config.clone()).expect("load");
        (engine, t.elapsed())
    };

    // Provisioning to Ready (a fresh server each round) against a plain load.
    let (mut provision, mut plain) = (Vec::new(), Vec::new());
    let mut server = None;
    for _ in 0..rounds.min(5) {
        drop(server.take());
        let (srv, url, took) = fresh_server();
        provision.push(took.as_secs_f64());
        server = Some((srv, url));
        plain.push(plain_load().1.as_secs_f64());
    }
    let (srv, url) = server.expect("a server");

    // `veil verify` as a user runs it, and the verification alone.
    let (mut verify_cmd, mut verify_lib) = (Vec::new(), Vec::new());
    for _ in 0..21 {
        let t = Instant::now();
        let o = Command::new(bin("veil"))
            .args(["verify", &url, "--policy", &s("policy.toml")])
            .output()
            .expect("veil verify");
        verify_cmd.push(t.elapsed().as_secs_f64());
        assert!(o.status.success(), "veil verify failed");
        let t = Instant::now();
        let a = rt
            .block_on(attest(
                &Target::parse(&url).expect("url"),
                policy,
                &Collateral::none(),
            ))
            .expect("attest");
        verify_lib.push(t.elapsed().as_secs_f64());
        assert!(a.is_ok());
    }
    drop(srv);

    // Generation: through the proxy and attested TLS, against in-process. Each round has a
    // fresh server and a fresh in-process engine (a model instance's memory layout moves
    // its speed by several per cent, for the whole life of the instance), one warm-up on
    // each side (the proxy verifies the new server then), and then the two back to back,
    // alternating which goes first. The ratio is taken per round.
    let proxy = Arc::new(Proxy::new(&url, policy.clone(), Collateral::none()).expect("proxy"));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    rt.spawn(serve(
        listener,
        Arc::clone(&proxy),
        veil_client::http::ListenLimits::default(),
        std::future::pending(),
    ));
    let upstream = veil_client::remote::Upstream::new(
        Target::parse(&url).expect("url"),
        policy.clone(),
        Collateral::none(),
    );
    let (mut via_total, mut via_decode, mut local_total, mut local_decode) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut pair_total, mut pair_decode, mut pair_direct) = (Vec::new(), Vec::new(), Vec::new());
    let mut direct_total = Vec::new();
    for round in 0..rounds {
        let (_srv, _, _) = fresh_server();
        let (engine, _) = plain_load();
        rt.block_on(through_proxy(addr));
        rt.block_on(direct(&upstream));
        in_process(&engine);
        let (mut via, mut local) = (None, None);
        for side in [round % 2, 1 - round % 2] {
            if side == 0 {
                via = Some(rt.block_on(through_proxy(addr)));
            } else {
                local = Some(in_process(&engine));
            }
        }
        let (via, local) = (via.expect("measured"), local.expect("measured"));
        let d = rt.block_on(direct(&upstream));
        direct_total.push(d.total_rate());
        pair_direct.push(d.total_rate() / local.total_rate());
        via_total.push(via.total_rate());
        via_decode.push(via.decode_rate());
        local_total.push(local.total_rate());
        local_decode.push(local.decode_rate());
        pair_total.push(via.total_rate() / local.total_rate());
        pair_decode.push(via.decode_rate() / local.decode_rate());
    }

    let ms = |v: Vec<f64>| median(v) * 1e3;
    let (prov, load) = (median(provision), median(plain));
    let (vc, vl) = (ms(verify_cmd), ms(verify_lib));
    let (vt, vd, lt, ld) = (
        median(via_total),
        median(via_decode),
        median(local_total),
        median(local_decode),
    );
    println!("\n== generation ({GEN_TOKENS} tokens, greedy, medians)");
    println!(
        "  through veil proxy + attested TLS  {vt:7.1} tok/s end to end, {vd:7.1} tok/s decoding"
    );
    println!(
        "  engine in-process                  {lt:7.1} tok/s end to end, {ld:7.1} tok/s decoding"
    );
    let (pt, pd) = (median(pair_total), median(pair_decode));
    let (dt, pdir) = (median(direct_total), median(pair_direct));
    println!("  attested TLS without the proxy      {dt:7.1} tok/s end to end ({pdir:.3}x in-process, for where the cost is)");
    println!(
        "  ratio (median of {rounds} paired runs)  {pt:.3}x end to end, {pd:.3}x decoding   (goal >= 0.97x)"
    );
    println!("\n== verification (median of 21)");
    println!("  `veil verify` command, wall time   {vc:7.2} ms   (goal <= 10 ms)");
    println!("  attest + appraise in-process       {vl:7.2} ms");
    println!("\n== provisioning to Ready (median of {})", rounds.min(5));
    println!("  provision -> Ready                 {:7.0} ms", prov * 1e3);
    println!("  plain load (read + load GGUF)      {:7.0} ms", load * 1e3);
    println!("  ratio  {:.3}x   (goal <= 1.2x)", prov / load);
    println!(
        "{}",
        json!({
            "proxy_tok_s": vt, "proxy_decode_tok_s": vd, "inprocess_tok_s": lt,
            "inprocess_decode_tok_s": ld, "proxy_ratio": pt, "decode_ratio": pd,
            "direct_tok_s": dt, "direct_ratio": pdir,
            "verify_cmd_ms": vc, "verify_lib_ms": vl,
            "provision_to_ready_ms": prov * 1e3, "plain_load_ms": load * 1e3,
            "provision_ratio": prov / load,
            "at": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        })
    );
}
