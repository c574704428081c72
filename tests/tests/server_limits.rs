//! `veil-server` under load and abuse, with the real binaries on loopback and the mock TEE:
//! connection caps, the request-body and idle timeouts, oversized chat requests refused
//! off the async workers, attestation fair between peers, and the weights kept out of
//! core dumps. Clients that misbehave speak raw HTTP/1.1 over TLS (no verification: they
//! are the attackers), some from a second loopback address, 127.0.0.2, so that the server
//! sees two peers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use veil_tests::harness::{fetch, text, veil, Fixture, Server};

/// The owner's and users' address.
const HOME: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// The attacker's address: another peer on the same loopback interface.
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// The longest any single step below may take before the test calls it a hang.
const STEP: Duration = Duration::from_secs(30);

/// Accepts any certificate: these clients attack, they do not verify.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// The server's address.
fn addr(server: &Server) -> SocketAddr {
    server
        .url()
        .trim_start_matches("https://")
        .parse()
        .expect("https://IP:PORT")
}

/// A TCP connection to `to` from `from` (any port).
async fn tcp_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(from, 0))
        .unwrap_or_else(|e| panic!("cannot bind {from} (a loopback address): {e}"));
    tokio::time::timeout(STEP, socket.connect(to))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// A TLS connection to `to` from `from`, accepting any certificate.
///
/// # Errors
/// If the handshake fails (e.g. the server closed the connection at once).
async fn tls_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tcp_from(from, to).await;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
    tokio::time::timeout(
        STEP,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// An HTTP answer: status, lower-case header lines, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&self.body).into_owned())
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(':'))
                .map(str::trim)
        })
    }
}

/// Reads one answer with a `Content-Length` body.
async fn read_answer(io: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Answer> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[end + 4..].to_vec();
    while body.len() < len {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    let headers = head.lines().skip(1).collect::<Vec<_>>().join("\n");
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// Sends one request on a kept-alive connection and reads its answer.
async fn request(
    io: &mut (impl AsyncRead + AsyncWrite + Unpin),
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> std::io::Result<Answer> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\n");
    if let Some(body) = body {
        req.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    io.write_all(req.as_bytes()).await?;
    if let Some(body) = body {
        io.write_all(body).await?;
    }
    io.flush().await?;
    read_answer(io).await
}

/// Whether the peer closes `io` (EOF or an error) within `within`.
async fn closed_within(io: &mut (impl AsyncRead + Unpin), within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, io.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// One metric sample's value (0 when absent).
fn metric(server: &Server, sample: &str) -> u64 {
    server
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix(sample))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

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
    let o = veil(&[
        "provision",
        server.url(),
        "--policy",
        &policy,
        "--key",
        &f.key_arg(),
    ]);
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
    assert!(
        seals.contains(SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK),
        "{seals:?}"
    );
}
