//! The pull flow with the real binaries on 127.0.0.1: `veil broker` holds the model key,
//! `veil-server --key-broker URL` asks it for the key with fresh evidence, and the broker
//! releases the key only to a launch that its policy accepts.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use veil_sealing::ModelKey;
use veil_tests::harness::{self, binary, fetch, keys_dir, text, veil, Broker, Fixture, Server};

/// How long a server may take to get its key from the broker and load the model.
const PULL_TIMEOUT: Duration = Duration::from_secs(60);

/// Polls `/ready` until `done` holds for its body, or fails after [`PULL_TIMEOUT`].
fn wait_ready(
    server: &Server,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    server.wait_ready(PULL_TIMEOUT, what, done)
}

/// Polls `/ready` until its `key_broker` status names `code`; returns the body.
fn wait_broker_status(server: &Server, code: &str) -> serde_json::Value {
    wait_ready(server, code, |r| {
        r["key_broker"].as_str().is_some_and(|s| s.contains(code))
    })
}

#[test]
fn a_server_pulls_its_key_from_a_broker_that_accepts_its_evidence() {
    let f = Fixture::new();
    let policy = f.good_policy();
    let broker = Broker::start(
        &policy,
        &keys_dir(&f, "owner", &f.key),
        &f.path("broker.log"),
    );
    let server = f.start(&["--key-broker", &broker.url]);
    wait_ready(&server, "pull", |r| r["state"] == "ready");

    // The key came by pull: nobody pushed it.
    assert!(server.provision_requests().is_empty());
    let key_id = ModelKey::read_key_file(&f.key)
        .expect("the key file reads")
        .key_id()
        .to_string();
    assert!(
        broker.log().contains(&format!("released key {key_id}")),
        "broker log:\n{}",
        broker.log()
    );

    // And the model answers a verified user.
    let o = veil(&[
        "ask",
        server.url(),
        "--policy",
        &policy.display().to_string(),
        "--max-tokens",
        "4",
        "Hello",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn a_broker_refuses_another_launch_and_the_owner_can_still_push() {
    let f = Fixture::new();
    let broker = Broker::start(
        &f.other_launch_policy(),
        &keys_dir(&f, "owner", &f.key),
        &f.path("broker.log"),
    );
    let server = f.start(&["--key-broker", &broker.url]);
    let ready = wait_broker_status(&server, "attestation_rejected");
    assert_eq!(ready["state"], "locked", "{ready}");
    let status = ready["key_broker"].as_str().unwrap_or_default();
    assert!(status.contains("measurement"), "{status}");
    assert!(
        broker.log().contains("refused key"),
        "broker log:\n{}",
        broker.log()
    );

    // The push flow is unaffected.
    let o = f.provision_with(&server, &["--wait", "60"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(server.ready()["state"], "ready");
}

#[test]
fn a_broker_without_the_models_key_releases_nothing_until_the_owner_adds_it() {
    let f = Fixture::new();
    let other = f.path("other.key");
    ModelKey::generate()
        .write_key_file(&other, false)
        .expect("a key file is written");
    let keys = keys_dir(&f, "other", &other);
    let broker = Broker::start(&f.good_policy(), &keys, &f.path("broker.log"));
    let server = f.start(&["--key-broker", &broker.url]);
    let ready = wait_broker_status(&server, "unknown_key");
    assert_eq!(ready["state"], "locked", "{ready}");

    // The owner adds the model's key and signals the broker: the server's next attempt
    // (it asks again every 10 s after a refusal) gets the key, without any restart.
    std::fs::copy(&f.key, keys.join("model.key")).expect("the key file is copied");
    let o = harness::run(
        Command::new("kill").args(["-HUP", &broker.pid().to_string()]),
        harness::COMMAND_TIMEOUT,
    );
    assert!(o.status.success(), "{}", text(&o));
    let ready = wait_ready(&server, "ready after the reload", |r| r["state"] == "ready");
    assert!(
        ready["key_broker"]
            .as_str()
            .is_some_and(|s| s.contains("released the key")),
        "{ready}"
    );
    let log = broker.log();
    assert!(log.contains("reloaded (0 CRLs), keys "), "{log}");
}

#[test]
fn evidence_a_server_gave_a_user_does_not_buy_the_key() {
    // An attacker fetches the genuine server's evidence (anyone may) and offers it to the
    // broker: with a nonce the broker never issued it is refused outright; with a fresh
    // nonce its report data does not match (another purpose, another nonce).
    let f = Fixture::new();
    let broker = Broker::start(
        &f.good_policy(),
        &keys_dir(&f, "owner", &f.key),
        &f.path("broker.log"),
    );
    let server = f.start(&[]);
    let (status, evidence) = fetch(
        server.url(),
        "GET",
        "/v1/attestation?nonce=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    );
    assert_eq!(status, 200);
    let evidence: serde_json::Value = serde_json::from_slice(&evidence).expect("evidence");
    let key_id = ModelKey::read_key_file(&f.key)
        .expect("the key file reads")
        .key_id()
        .to_string();
    let offer = |nonce: &str| {
        serde_json::json!({ "nonce": nonce, "key_id": key_id, "evidence": evidence }).to_string()
    };

    let (status, body) = broker.request(
        "POST",
        "/v1/key",
        &offer("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("unknown_nonce")),
        "{body}"
    );

    let (status, challenge) = broker.request("POST", "/v1/challenge", "");
    assert_eq!(status, 200, "{challenge}");
    let nonce = challenge["nonce"].as_str().expect("a nonce");
    let (status, body) = broker.request("POST", "/v1/key", &offer(nonce));
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "attestation_rejected", "{body}");
    let failed: Vec<&str> = body["error"]["checks"]
        .as_array()
        .expect("the failed checks")
        .iter()
        .filter_map(|c| c["check"].as_str())
        .collect();
    assert_eq!(failed, vec!["report_data"], "{body}");
    // The nonce was spent by that attempt.
    let (status, body) = broker.request("POST", "/v1/key", &offer(nonce));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("unknown_nonce")),
        "{body}"
    );
    assert!(!broker.log().contains("released"), "{}", broker.log());
}

#[test]
fn a_broker_out_of_descriptors_keeps_serving_once_they_are_freed() {
    // Under a 48-descriptor limit, 80 idle connections leave accept() failing with
    // "Too many open files"; the broker must log that at a bounded rate, wait, and go on
    // serving once the connections are closed, not exit.
    let f = Fixture::new();
    let broker = Broker::start_with_descriptor_limit(
        48,
        &f.good_policy(),
        &keys_dir(&f, "owner", &f.key),
        &f.path("broker.log"),
    );
    let addr = broker.url.trim_start_matches("http://").to_owned();
    let idle: Vec<TcpStream> = (0..80)
        .map(|_| TcpStream::connect(&addr).expect("the kernel completes the handshake"))
        .collect();
    // Long enough for the broker to run out and to retry a few times.
    std::thread::sleep(Duration::from_millis(1500));
    drop(idle);

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let alive = TcpStream::connect(&addr).is_ok();
        if alive {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broker no longer accepts; log:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = broker.request("GET", "/health", "");
    assert_eq!(status, 200, "{body}\n{}", broker.log());
    let (status, challenge) = broker.request("POST", "/v1/challenge", "");
    assert_eq!(status, 200, "{challenge}");
    assert!(challenge["nonce"].is_string(), "{challenge}");

    let log = broker.log();
    assert!(log.contains("open-descriptor limit 48"), "{log}");
    // The cap (48 less 16 kept free) refuses the rest before accept() runs out; either
    // way, at most one line a second over the ~1.5 s it lasted (plus the first).
    assert!(log.contains("at most 32 connections"), "{log}");
    let lines = log
        .lines()
        .filter(|l| l.contains("accepting a connection failed") || l.contains("refused"))
        .count();
    assert!((1..=3).contains(&lines), "{lines} lines:\n{log}");
}

/// Reads one HTTP/1.1 message (head and `Content-Length` body) from `from`, whole.
fn read_message(from: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                buf.truncate(end + 4 + len);
                return Ok(buf);
            }
        }
        let n = from.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A relay in front of a broker that passes everything through, except that it cuts the
/// first `cut` answers to `POST /v1/key` off half-way and closes the connection.
struct CuttingRelay {
    url: String,
    cut: Arc<AtomicUsize>,
}

impl CuttingRelay {
    fn start(broker: &str, cut: usize) -> CuttingRelay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bound");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let broker = broker.trim_start_matches("http://").to_owned();
        let done = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&done);
        std::thread::spawn(move || {
            // Bounded: a test needs a handful of connections.
            for client in listener.incoming().take(64) {
                let Ok(mut client) = client else { continue };
                let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
                let Ok(req) = read_message(&mut client) else {
                    continue;
                };
                let Ok(mut upstream) = TcpStream::connect(&broker) else {
                    continue;
                };
                let _ = upstream.set_read_timeout(Some(Duration::from_secs(30)));
                if upstream.write_all(&req).is_err() {
                    continue;
                }
                let Ok(answer) = read_message(&mut upstream) else {
                    continue;
                };
                let to_send = if req.starts_with(b"POST /v1/key ")
                    && counted.fetch_add(1, Ordering::SeqCst) < cut
                {
                    &answer[..answer.len() / 2]
                } else {
                    &answer[..]
                };
                let _ = client.write_all(to_send);
                // Dropping both closes them: mid-answer when cut.
            }
        });
        CuttingRelay { url, cut: done }
    }

    /// How many `POST /v1/key` requests it has relayed (cut or not).
    fn key_requests(&self) -> usize {
        self.cut.load(Ordering::SeqCst)
    }
}

#[test]
fn a_broker_whose_answer_breaks_off_leaves_the_server_locked_and_asking_again() {
    let f = Fixture::new();
    let broker = Broker::start(
        &f.good_policy(),
        &keys_dir(&f, "owner", &f.key),
        &f.path("broker.log"),
    );
    let relay = CuttingRelay::start(&broker.url, 2);
    let server = f.start(&["--key-broker", &relay.url]);
    // Locked, with the broken answer named at /ready...
    let ready = wait_broker_status(&server, "reading the answer");
    assert_eq!(ready["state"], "locked", "{ready}");
    assert!(
        ready["key_broker"]
            .as_str()
            .is_some_and(|s| s.contains("could not be reached")),
        "{ready}"
    );
    // ...then asking again until a whole answer comes.
    wait_ready(&server, "pull after broken answers", |r| {
        r["state"] == "ready"
    });
    assert_eq!(relay.key_requests(), 3, "two cut answers, then a whole one");
}

#[test]
fn a_broker_closes_connections_past_its_per_peer_cap_and_serves_another_peer() {
    let f = Fixture::new();
    let broker = Broker::start_in(
        Command::new(binary("veil")),
        &["--max-connections-per-peer", "4"],
        &f.good_policy(),
        &keys_dir(&f, "owner", &f.key),
        &f.path("broker.log"),
    );
    let addr: std::net::SocketAddr = broker
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("IP:PORT");
    let held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(addr).expect("accepted"))
        .collect();
    // Give the broker time to admit the four before the fifth comes.
    std::thread::sleep(Duration::from_millis(300));
    let mut fifth = TcpStream::connect(addr).expect("the kernel completes the handshake");
    fifth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout set");
    let mut byte = [0u8; 1];
    let started = Instant::now();
    let closed = matches!(fifth.read(&mut byte), Ok(0) | Err(_));
    assert!(
        closed && started.elapsed() < Duration::from_secs(4),
        "the fifth connection was not closed at once; log:\n{}",
        broker.log()
    );
    // Another address is still served while the four are held.
    let socket = socket_from([127, 0, 0, 2], addr);
    let (status, body) = request_on(socket, &addr.to_string(), "GET", "/health");
    assert_eq!(status, 200, "{body}");
    assert!(
        broker.log().contains("--max-connections-per-peer reached"),
        "{}",
        broker.log()
    );
    drop(held);
}

/// A TCP connection to `to` from the loopback address `from`.
fn socket_from(from: [u8; 4], to: std::net::SocketAddr) -> TcpStream {
    // std cannot bind before connecting; tokio's socket can.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().expect("a socket");
        s.bind((std::net::Ipv4Addr::from(from), 0).into())
            .expect("a loopback address");
        s.connect(to)
            .await
            .expect("connected")
            .into_std()
            .expect("a std stream")
    })
}

/// One request on `tcp` (`Connection: close`); the status and body.
fn request_on(mut tcp: TcpStream, host: &str, method: &str, path: &str) -> (u16, String) {
    tcp.set_nonblocking(false).expect("blocking");
    tcp.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout set");
    write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("sent");
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).expect("an answer");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}
