//! `veil verify` against servers that never finish a step: each fails within its deadline
//! (`--timeout 2`), with exit 1 and a message naming the step, instead of hanging.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use veil_tests::harness::{binary, mock_platform, run, text, write_policy};

/// How long `veil verify --timeout 2` may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(20);

/// A policy that parses (what it accepts does not matter: no evidence ever arrives).
fn policy(dir: &tempfile::TempDir) -> PathBuf {
    let root = mock_platform(&dir.path().join("platform"));
    let path = dir.path().join("policy.toml");
    write_policy(&path, &[&root], &[[0u8; 48]]);
    path
}

/// Runs `veil verify URL --policy P --timeout 2`; checks it failed with exit 1, soon, with
/// `phase` in its message.
fn verify_fails_naming(url: &str, phase: &str) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let policy = policy(&dir);
    let started = Instant::now();
    let o = run(
        Command::new(binary("veil"))
            .args(["verify", url, "--policy"])
            .arg(&policy)
            .args(["--timeout", "2"]),
        HANG,
    );
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}: {}",
        text(&o)
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains(phase), "{phase:?} not in {}", text(&o));
    assert!(stderr.contains("within 2 s"), "{}", text(&o));
}

/// A listener whose connections are accepted and then held, each handled by `hold` on a
/// thread of its own; returns its address.
fn listener(hold: impl Fn(TcpStream) + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let addr = listener.local_addr().expect("an address").to_string();
    let hold = Arc::new(hold);
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let hold = Arc::clone(&hold);
            std::thread::spawn(move || hold(tcp));
        }
    });
    addr
}

#[test]
fn verify_gives_up_on_a_listener_that_never_speaks() {
    let addr = listener(|tcp| {
        std::thread::sleep(HANG);
        drop(tcp);
    });
    verify_fails_naming(
        &format!("https://{addr}"),
        &format!("TLS handshake with {addr}: no answer"),
    );
}

#[test]
fn verify_gives_up_on_a_server_that_reads_the_client_hello_and_never_answers() {
    let addr = listener(|mut tcp| {
        let mut hello = [0u8; 5];
        // The TLS record header of the ClientHello: a handshake record.
        if tcp.read_exact(&mut hello).is_ok() && hello[0] == 0x16 {
            std::thread::sleep(HANG);
        }
        drop(tcp);
    });
    verify_fails_naming(
        &format!("https://{addr}"),
        &format!("TLS handshake with {addr}: no answer"),
    );
}

/// How a TLS test server answers after the handshake.
#[derive(Clone, Copy)]
enum Answer {
    /// It reads the request and never answers.
    Nothing,
    /// It sends the headers of a 64 KiB body, then one byte every 200 ms.
    Trickle,
}

/// A TLS 1.3 server on a loopback port, with a fresh self-signed certificate, that
/// answers every request as `answer` says; returns its address.
fn tls_server(answer: Answer) -> String {
    let identity =
        veil_server::tls::generate(vec!["127.0.0.1".to_owned()]).expect("a TLS identity");
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let addr = listener.local_addr().expect("an address").to_string();
    listener.set_nonblocking(true).expect("non-blocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::from_std(listener).expect("a listener");
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut request = vec![0u8; 4096];
                    let _ = tls.read(&mut request).await;
                    match answer {
                        Answer::Nothing => tokio::time::sleep(HANG).await,
                        Answer::Trickle => {
                            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 65536\r\n\r\n{";
                            if tls.write_all(head.as_bytes()).await.is_err() {
                                return;
                            }
                            for _ in 0..100 {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                if tls.write_all(b" ").await.is_err() || tls.flush().await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
    });
    addr
}

#[test]
fn verify_gives_up_on_a_server_that_never_answers_the_request() {
    let addr = tls_server(Answer::Nothing);
    verify_fails_naming(
        &format!("https://{addr}"),
        &format!("GET /v1/attestation to {addr}: no answer"),
    );
}

#[test]
fn verify_gives_up_on_a_server_that_trickles_the_evidence() {
    let addr = tls_server(Answer::Trickle);
    verify_fails_naming(
        &format!("https://{addr}"),
        &format!("the body of the answer to GET /v1/attestation from {addr}: not complete"),
    );
}

#[test]
fn the_timeout_flag_is_refused_when_zero() {
    let o = run(
        Command::new(binary("veil")).args([
            "verify",
            "https://127.0.0.1:1",
            "--policy",
            "p.toml",
            "--timeout",
            "0",
        ]),
        HANG,
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}
