//! `veil-server` under load and abuse, with the real binaries on loopback and the mock TEE:
//! connection caps, the request-body and idle timeouts, oversized chat requests refused
//! off the async workers, attestation fair between peers, and the weights kept out of
//! core dumps. Clients that misbehave speak raw HTTP/1.1 over TLS (no verification: they
//! are the attackers), some from a second loopback address, 127.0.0.2, so that the server
//! sees two peers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use tokio::io::AsyncWriteExt;
use veil_tests::harness::{fetch, text, veil, Fixture, Server};
use veil_tests::raw::{
    addr, closed_within, metric, read_answer, request, runtime, tls_from, HOME, OTHER, STEP,
};

/// A server of `f` started with `extra` and provisioned by the owner under the good policy.
fn provisioned(f: &Fixture, extra: &[&str]) -> Server {
    let (server, _) = f.start_provisioned(extra);
    let deadline = Instant::now() + STEP;
    while server.ready()["state"] != "ready" {
        assert!(Instant::now() < deadline, "not ready: {}", server.ready());
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

#[test]
fn connections_past_the_per_peer_cap_are_closed_at_once_while_another_peer_is_served() {
    let f = Fixture::new();
    let server = f.start(&["--max-connections-per-peer", "4", "--max-connections", "16"]);
    let to = addr(&server);
    let rt = runtime();
    let held = rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut tls = tls_from(OTHER, to).await.expect("under the cap");
            let a = request(&mut tls, "GET", "/health", None)
                .await
                .expect("health");
            assert_eq!(a.status, 200);
            held.push(tls);
        }
        // The fifth from the same address: accepted by the kernel, closed by the server
        // before any TLS byte, so the handshake fails at once.
        let started = Instant::now();
        let fifth = tls_from(OTHER, to).await;
        assert!(fifth.is_err(), "a fifth connection from {OTHER} was served");
        assert!(started.elapsed() < STEP);
        held
    });
    // Another peer is still served while the four are held.
    let (status, _) = fetch(server.url(), "GET", "/health");
    assert_eq!(status, 200);
    assert!(
        metric(&server, "veil_connections_refused_total{cap=\"per_peer\"} ") >= 1,
        "{}",
        server.metrics()
    );
    assert!(metric(&server, "veil_connections_open ") >= 4);
    drop(held);
}

#[test]
fn a_slow_body_is_cut_off_with_408_while_another_client_is_served() {
    let f = Fixture::new();
    let server = f.start(&["--body-timeout", "3"]);
    let to = addr(&server);
    let rt = runtime();
    let (answer, closed, took) = rt.block_on(async {
        let tls = tls_from(HOME, to).await.expect("a connection");
        let (mut rd, mut wr) = tokio::io::split(tls);
        let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{";
        wr.write_all(head.as_bytes()).await.expect("the header");
        wr.flush().await.expect("flush");
        let started = Instant::now();
        // One byte a second, for longer than the test waits.
        let trickle = tokio::spawn(async move {
            for _ in 0..60 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if wr.write_all(b" ").await.is_err() || wr.flush().await.is_err() {
                    return;
                }
            }
        });
        // While the body trickles, another client is answered at once.
        let mut other = tls_from(OTHER, to).await.expect("another connection");
        let health = tokio::time::timeout(
            Duration::from_secs(2),
            request(&mut other, "GET", "/health", None),
        )
        .await
        .expect("health answers while a body trickles")
        .expect("health");
        assert_eq!(health.status, 200);
        let answer = tokio::time::timeout(STEP, read_answer(&mut rd)).await;
        let took = started.elapsed();
        let closed = closed_within(&mut rd, Duration::from_secs(10)).await;
        trickle.abort();
        (answer, closed, took)
    });
    let answer = answer
        .unwrap_or_else(|_| panic!("the slow body was not cut off within {STEP:?}"))
        .expect("an answer");
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(
        answer.json()["error"]["code"],
        "request_timeout",
        "{answer:?}"
    );
    assert_eq!(answer.header("connection"), Some("close"), "{answer:?}");
    assert!(closed, "the connection stayed open after the 408");
    assert!(took < STEP, "took {took:?}");
    // After it, too.
    let (status, _) = fetch(server.url(), "GET", "/health");
    assert_eq!(status, 200);
    assert_eq!(metric(&server, "veil_request_body_timeouts_total "), 1);
}

#[test]
fn an_idle_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let f = Fixture::new();
    let server = f.start(&["--idle-timeout", "2"]);
    let to = addr(&server);
    let rt = runtime();
    rt.block_on(async {
        let mut tls = tls_from(HOME, to).await.expect("a connection");
        let a = request(&mut tls, "GET", "/health", None)
            .await
            .expect("health");
        assert_eq!(a.status, 200);
        assert!(a.header("connection") != Some("close"), "{a:?}");
        // The default (30 s) would keep it open past this wait.
        assert!(
            closed_within(&mut tls, Duration::from_secs(15)).await,
            "an idle connection stayed open"
        );
    });
}

/// A chat request body of `n` short messages.
fn many_messages(n: usize) -> Vec<u8> {
    let messages: Vec<_> = (0..n)
        .map(|_| serde_json::json!({ "role": "user", "content": "hi" }))
        .collect();
    serde_json::to_vec(&serde_json::json!({ "messages": messages, "max_tokens": 1 })).expect("json")
}

#[test]
fn health_answers_within_a_second_while_oversized_chat_requests_are_refused() {
    let f = Fixture::new();
    let server = provisioned(&f, &[]);
    let to = addr(&server);
    let body = Arc::new(many_messages(20_000));
    assert!(body.len() < 1 << 20, "under the body limit: {}", body.len());
    let rt = runtime();
    rt.block_on(async {
        let done = Arc::new(AtomicBool::new(false));
        let mut big = Vec::new();
        for from in [HOME, OTHER] {
            let body = Arc::clone(&body);
            big.push(tokio::spawn(async move {
                let mut tls = tls_from(from, to).await.expect("a connection");
                tokio::time::timeout(
                    STEP,
                    request(&mut tls, "POST", "/v1/chat/completions", Some(&body)),
                )
                .await
                .expect("the oversized request is answered in time")
                .expect("an answer")
            }));
        }
        let probe = {
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let mut probes = 0;
                while probes < 3 || !done.load(Ordering::Relaxed) {
                    let mut tls = tls_from(HOME, to).await.expect("a connection");
                    let a = tokio::time::timeout(
                        Duration::from_secs(2),
                        request(&mut tls, "GET", "/health", None),
                    )
                    .await
                    .expect("/health answers within its bound while big requests are in flight")
                    .expect("health");
                    assert_eq!(a.status, 200);
                    probes += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        for task in big {
            let a = task.await.expect("the request task");
            assert_eq!(a.status, 400, "{a:?}");
            let e = &a.json()["error"];
            assert_eq!(e["param"], "messages", "{a:?}");
            assert!(
                e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("20000 messages cannot fit")),
                "{a:?}"
            );
        }
        done.store(true, Ordering::Relaxed);
        probe.await.expect("the probe");
    });
}

#[test]
fn one_flooding_peer_does_not_stop_another_peers_verification_and_provisioning() {
    let f = Fixture::new();
    let server = f.start(&[]);
    let to = addr(&server);
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, limited, retry_after) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let flood: Vec<_> = (0..4)
        .map(|i| {
            let (stop, ok, limited, retry_after) = (
                Arc::clone(&stop),
                Arc::clone(&ok),
                Arc::clone(&limited),
                Arc::clone(&retry_after),
            );
            rt.spawn(async move {
                let path = format!("/v1/attestation?nonce={}", URL_SAFE_NO_PAD.encode([i; 32]));
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let Ok(mut tls) = tls_from(OTHER, to).await else {
                        continue;
                    };
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let Ok(a) = request(&mut tls, "GET", &path, None).await else {
                            break;
                        };
                        match a.status {
                            200 => ok.fetch_add(1, Ordering::Relaxed),
                            429 => {
                                if a.header("retry-after")
                                    .is_some_and(|v| v.parse::<u32>().is_ok_and(|s| s >= 1))
                                {
                                    retry_after.fetch_add(1, Ordering::Relaxed);
                                }
                                limited.fetch_add(1, Ordering::Relaxed)
                            }
                            other => panic!("the flood got {other}: {a:?}"),
                        };
                    }
                }
            })
        })
        .collect();
    // Let the flood use up its own bucket first.
    std::thread::sleep(Duration::from_secs(2));
    let policy = f.good_policy().display().to_string();
    for _ in 0..3 {
        let o = veil(&["verify", server.url(), "--policy", &policy]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "verify under a flood: {}",
            text(&o)
        );
    }
    let o = f.provision(&server);
    assert_eq!(
        o.status.code(),
        Some(0),
        "provision under a flood: {}",
        text(&o)
    );
    stop.store(true, Ordering::Relaxed);
    for task in flood {
        rt.block_on(task).expect("a flood task");
    }
    let (ok, limited, retry_after) = (
        ok.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
        retry_after.load(Ordering::Relaxed),
    );
    assert!(
        ok > 0 && limited > 0,
        "flood: {ok} served, {limited} limited"
    );
    assert_eq!(retry_after, limited, "every 429 says Retry-After");
    assert!(
        metric(
            &server,
            "veil_attestation_rate_limited_total{limit=\"per_peer\"} "
        ) >= limited
    );
    assert_eq!(server.ready()["state"], "ready");
}

#[test]
fn the_server_is_not_dumpable_and_the_model_memfd_is_sealed_after_provisioning() {
    let f = Fixture::new();
    let server = provisioned(&f, &[]);
    let pid = server.pid();
    // No core file, whatever happens.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let core: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("a core line")
        .split_whitespace()
        .collect();
    assert_eq!(&core[4..6], ["0", "0"], "{limits}");
    // Shared memory (the memfd's mapping) is out of any core dump.
    let filter = std::fs::read_to_string(format!("/proc/{pid}/coredump_filter")).expect("filter");
    let filter = u32::from_str_radix(filter.trim(), 16).expect("hex");
    assert_eq!(filter & 0b1_0100_1010, 0, "coredump_filter {filter:#x}");
    // PR_GET_DUMPABLE, as the server itself read it back.
    let metrics = server.metrics();
    for measure in [
        "not_dumpable",
        "core_limit_zero",
        "shared_memory_not_dumped",
        "model_sealed",
        "model_not_dumped",
    ] {
        assert!(
            metrics.contains(&format!("veil_hardening{{measure=\"{measure}\"}} 1\n")),
            "{measure}: {metrics}"
        );
    }
    assert!(
        metrics.contains("veil_hardening{measure=\"model_locked\"}"),
        "{metrics}"
    );
    // The memfd itself, opened through /proc (root, or CAP_SYS_PTRACE: the process is not
    // dumpable), carries the seals.
    let memfd = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the server's descriptors")
        .filter_map(Result::ok)
        .find(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|l| l.to_string_lossy().starts_with("/memfd:veil-model"))
        })
        .expect("the model memfd is open in the server");
    let file = std::fs::File::open(memfd.path()).expect("open the memfd");
    let seals = rustix::fs::fcntl_get_seals(&file).expect("F_GET_SEALS");
    use rustix::fs::SealFlags;
    // FUTURE_WRITE: no write and no new writable mapping, for anyone (the one mapping made
    // before sealing can only wipe the weights when a lease ends).
    assert!(
        seals.contains(SealFlags::FUTURE_WRITE | SealFlags::GROW | SealFlags::SHRINK),
        "{seals:?}"
    );
    let mut writable = std::fs::OpenOptions::new()
        .write(true)
        .open(memfd.path())
        .expect("open the memfd for writing");
    assert!(
        std::io::Write::write_all(&mut writable, b"GGUF").is_err(),
        "a write through /proc/PID/fd is refused"
    );
    // Every mapping of it is marked MADV_DONTDUMP ("dd" among its VmFlags).
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let mut mappings = 0;
    let mut lines = smaps.lines();
    while let Some(line) = lines.next() {
        if !line.contains("/memfd:veil-model") {
            continue;
        }
        mappings += 1;
        let flags = lines
            .by_ref()
            .find_map(|l| l.strip_prefix("VmFlags:"))
            .expect("the mapping's flags");
        assert!(
            flags.split_whitespace().any(|f| f == "dd"),
            "a model mapping without dd: VmFlags:{flags}"
        );
    }
    assert!(
        mappings > 0,
        "the model is not mapped from its memfd:\n{smaps}"
    );
}

/// A flood of `/v1/attestation` requests from this address on one TLS connection, every
/// 20 ms until it is stopped (or for a minute), counting the 429s it is answered.
struct Flood {
    stop: Arc<AtomicBool>,
    limited: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Flood {
    fn start(rt: &tokio::runtime::Runtime, to: std::net::SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let limited = Arc::new(AtomicU64::new(0));
        let task = {
            let (stop, limited) = (Arc::clone(&stop), Arc::clone(&limited));
            rt.spawn(async move {
                let path = format!(
                    "/v1/attestation?nonce={}",
                    URL_SAFE_NO_PAD.encode([9u8; 32])
                );
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut tls = tls_from(HOME, to).await.expect("a TLS connection");
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let a = request(&mut tls, "GET", &path, None)
                        .await
                        .expect("an answer");
                    if a.status == 429 {
                        limited.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        Self {
            stop,
            limited,
            task,
        }
    }

    fn limited(&self) -> u64 {
        self.limited.load(Ordering::Relaxed)
    }

    /// Stops the flood and waits for its last request: then [`Flood::limited`] is exact.
    fn stop(self, rt: &tokio::runtime::Runtime) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        rt.block_on(self.task).expect("the flood task");
        self.limited.load(Ordering::Relaxed)
    }
}

#[test]
fn a_rate_limited_verify_waits_out_retry_after_and_succeeds() {
    // A flood from the user's own address empties that address's bucket; `veil verify`
    // from it is answered 429 and must wait as Retry-After says, not fail. The server's
    // per-peer refusals then number more than the flood's own: the difference is verify's.
    // The bucket refills between the flood's requests, so verify's first request can find
    // a token (about one time in ten) and prove nothing: then the round is run again.
    let f = Fixture::new();
    let server = f.start(&[]);
    let to = addr(&server);
    let rt = runtime();
    let policy = f.good_policy().display().to_string();
    let per_peer = || {
        metric(
            &server,
            "veil_attestation_rate_limited_total{limit=\"per_peer\"} ",
        )
    };
    const ROUNDS: usize = 5;
    for round in 1..=ROUNDS {
        let before = per_peer();
        let flood = Flood::start(&rt, to);
        // Until the bucket is empty.
        let deadline = Instant::now() + STEP;
        while flood.limited() == 0 {
            assert!(Instant::now() < deadline, "the flood was never limited");
            std::thread::sleep(Duration::from_millis(10));
        }
        let verify = std::thread::spawn({
            let url = server.url().to_owned();
            let policy = policy.clone();
            move || veil(&["verify", &url, "--policy", &policy])
        });
        // The flood goes on until verify has surely been refused (however long the process
        // takes to start on a busy machine), or has finished, then stops so that verify's
        // retries can pass. The flood has one request in flight: at most one refusal it
        // has not counted yet.
        let deadline = Instant::now() + Duration::from_secs(60);
        while per_peer() - before <= flood.limited() + 1 && !verify.is_finished() {
            assert!(
                Instant::now() < deadline,
                "veil verify neither finished nor was refused in 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let flooded = flood.stop(&rt);
        let o = verify.join().expect("the verify thread");
        assert_eq!(o.status.code(), Some(0), "verify after 429s: {}", text(&o));
        let refused = per_peer() - before;
        assert!(
            refused >= flooded,
            "{refused} refusals, {flooded} seen by the flood"
        );
        if refused > flooded {
            return;
        }
        eprintln!("round {round}: verify found a token at once; again");
        // Let the bucket fill before the next round, so that it starts as this one did.
        std::thread::sleep(Duration::from_secs(3));
    }
    panic!("verify was never refused in {ROUNDS} rounds: the test proves nothing");
}
