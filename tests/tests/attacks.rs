//! Attacks on a Veil deployment, run against the real binaries on 127.0.0.1 with the mock
//! TEE: each is refused with the failing check named, and the model key never leaves the
//! client (the real server counts no request to `/v1/provision` and stays locked; an
//! impostor in the path receives nothing but requests for evidence).

use std::convert::Infallible;
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use veil_attestation::binding::{Nonce, Purpose, Transcript};
use veil_attestation::{Check, Evidence, Expected, Policy};
use veil_client::pin::PinMode;
use veil_client::remote::{danger, Session, Target};
use veil_tests::harness::{
    self, binary, failed_checks, fetch, text, veil, Fixture, Server, REQUEST_TIMEOUT,
};

/// Asserts that `veil verify URL --policy POLICY --json` exits 3 with exactly `checks`
/// failed.
fn assert_verify_rejects(url: &str, policy: &Path, checks: &[&str]) {
    let o = veil(&[
        "verify",
        url,
        "--policy",
        &policy.display().to_string(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(3), "verify: {}", text(&o));
    let verdict: serde_json::Value = serde_json::from_slice(&o.stdout).expect("a JSON verdict");
    assert_eq!(verdict["verified"], false, "{verdict:#}");
    assert_eq!(verdict["failed"], serde_json::json!(checks), "{verdict:#}");
}

/// `veil provision URL --policy POLICY --key KEY`.
fn provision(url: &str, policy: &Path, f: &Fixture) -> Output {
    veil(&[
        "provision",
        url,
        "--policy",
        &policy.display().to_string(),
        "--key",
        &f.key_arg(),
        "--wait",
        "60",
    ])
}

/// Asserts that `veil provision` (or `ask`) exited 3 naming exactly `checks` as failed.
fn assert_provision_rejected(o: &Output, checks: &[&str]) {
    assert_eq!(o.status.code(), Some(3), "provision: {}", text(o));
    assert_eq!(failed_checks(o), checks, "provision: {}", text(o));
}

/// Asserts that `veil verify` and `veil provision` both refuse `server` under `policy`,
/// naming exactly `checks`, and that the key never reached it.
fn assert_refused(server: &Server, policy: &Path, f: &Fixture, checks: &[&str]) {
    assert_verify_rejects(server.url(), policy, checks);
    assert_provision_rejected(&provision(server.url(), policy, f), checks);
    server.assert_never_provisioned();
}

/// Asserts that `veil verify` with the owner's policy passes against `server`: the attack
/// is what makes the difference.
fn assert_genuine(server: &Server, policy: &Path) {
    let o = veil(&[
        "verify",
        server.url(),
        "--policy",
        &policy.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// What an impostor does with the requests it receives.
#[derive(Clone)]
enum Behaviour {
    /// Terminates TLS with its own certificate and relays every request, on one upstream
    /// TLS connection per client connection, to the real server.
    Relay(Target),
    /// Answers every `/v1/attestation` with these bytes (evidence recorded earlier).
    Replay(Bytes),
}

/// A TLS server on 127.0.0.1 with its own certificate, standing between a client and a
/// real server. It records every request it receives (`METHOD PATH`, body length).
struct Impostor {
    url: String,
    received: Arc<Mutex<Vec<(String, usize)>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Impostor {
    fn start(behaviour: Behaviour) -> Impostor {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let url = format!("https://{}", listener.local_addr().expect("bound"));
        let tls = veil_server::tls::generate(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("a TLS identity");
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config);
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let behaviour = behaviour.clone();
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let upstream = Arc::new(tokio::sync::Mutex::new(None));
                    let service = hyper::service::service_fn(move |req| {
                        let (behaviour, log, upstream) =
                            (behaviour.clone(), Arc::clone(&log), Arc::clone(&upstream));
                        async move {
                            Ok::<_, Infallible>(answer(req, &behaviour, &log, &upstream).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Impostor {
            url,
            received,
            runtime: Some(runtime),
        }
    }

    fn url(&self) -> &str {
        &self.url
    }

    /// Every request received so far: `METHOD PATH` and the body length.
    fn received(&self) -> Vec<(String, usize)> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asserts that the impostor was asked for evidence and for nothing else: no key, no
    /// prompt, no byte of any request body reached it.
    fn assert_only_asked_for_evidence(&self) {
        let received = self.received();
        assert!(!received.is_empty(), "the impostor was never contacted");
        for (request, body_len) in &received {
            assert!(
                request.starts_with("GET /v1/attestation?nonce="),
                "the impostor received {request}: {received:?}"
            );
            assert_eq!(*body_len, 0, "the impostor received a body: {received:?}");
        }
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn answer(
    req: Request<Incoming>,
    behaviour: &Behaviour,
    log: &Mutex<Vec<(String, usize)>>,
    upstream: &tokio::sync::Mutex<Option<Session>>,
) -> Response<Full<Bytes>> {
    let method = req.method().as_str().to_owned();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    log.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((format!("{method} {path}"), body.len()));
    let (status, bytes) = match behaviour {
        Behaviour::Relay(target) => {
            let relayed = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let mut session = upstream.lock().await;
                if session.is_none() {
                    *session = Some(danger::connect(target, PinMode::Capture).await?);
                }
                let session = session.as_mut().expect("connected just above");
                let body = (!body.is_empty()).then(|| body.to_vec());
                session.fetch(&method, &path, body).await
            })
            .await;
            match relayed {
                Ok(Ok((status, bytes))) => (status.as_u16(), bytes),
                Ok(Err(e)) => (502, Bytes::from(format!("relay failed: {e:#}"))),
                Err(_) => (504, Bytes::from("relay timed out")),
            }
        }
        Behaviour::Replay(evidence) if path.starts_with("/v1/attestation") => {
            (200, evidence.clone())
        }
        Behaviour::Replay(_) => (404, Bytes::from("{}")),
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(bytes))
        .expect("a valid response")
}

fn attestation_path(nonce: &[u8]) -> String {
    format!("/v1/attestation?nonce={}", URL_SAFE_NO_PAD.encode(nonce))
}

/// The real server's count of successful `/v1/attestation` requests.
fn attestations_served(server: &Server) -> u64 {
    server
        .metrics()
        .lines()
        .find_map(|l| {
            l.strip_prefix("veil_requests_total{route=\"/v1/attestation\",status=\"200\"} ")
        })
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

#[test]
fn a_tls_terminating_relay_is_refused_on_report_data_and_receives_no_key_or_prompt() {
    let f = Fixture::new();
    let server = f.start(&[]);
    let policy = f.good_policy();
    assert_genuine(&server, &policy);
    let before = attestations_served(&server);

    let mitm = Impostor::start(Behaviour::Relay(
        Target::parse(server.url()).expect("the server's URL"),
    ));
    assert_verify_rejects(mitm.url(), &policy, &["report_data"]);
    let o = provision(mitm.url(), &policy, &f);
    assert_provision_rejected(&o, &["report_data"]);
    let o = veil(&[
        "ask",
        mitm.url(),
        "--policy",
        &policy.display().to_string(),
        "a secret prompt",
    ]);
    assert_provision_rejected(&o, &["report_data"]);

    // The real server did attest for the relay (so its evidence is genuine in every other
    // respect), and received no provisioning request; the relay saw no key and no prompt.
    assert_eq!(attestations_served(&server), before + 3);
    mitm.assert_only_asked_for_evidence();
    server.assert_never_provisioned();
}

#[test]
fn evidence_replayed_from_an_earlier_nonce_is_refused_on_report_data() {
    let f = Fixture::new();
    let server = f.start(&[]);
    let policy = f.good_policy();
    let (status, recorded) = fetch(server.url(), "GET", &attestation_path(&[7; 32]));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&recorded));

    let replay = Impostor::start(Behaviour::Replay(Bytes::from(recorded)));
    assert_verify_rejects(replay.url(), &policy, &["report_data"]);
    let o = provision(replay.url(), &policy, &f);
    assert_provision_rejected(&o, &["report_data"]);

    replay.assert_only_asked_for_evidence();
    server.assert_never_provisioned();
}

#[test]
fn evidence_for_another_nonce_on_the_same_connection_fails_report_data_only() {
    let f = Fixture::new();
    let server = f.start(&[]);
    let policy = Policy::from_toml(&format!(
        "tee = [\"mock\"]\nmock_roots = [\"{}\"]\nmeasurements = [\"{}\"]",
        f.root,
        hex::encode(f.measurement_of(&binary("veil-server"), false))
    ))
    .expect("the policy parses");
    let (nonce_a, nonce_b) = ([0xA; 32], [0xB; 32]);
    let target = Target::parse(server.url()).expect("the server's URL");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (session, evidence) = rt.block_on(async {
        tokio::time::timeout(REQUEST_TIMEOUT, async {
            let mut session = danger::connect(&target, PinMode::Capture)
                .await
                .expect("connect");
            let (status, body) = session
                .fetch("GET", &attestation_path(&nonce_a), None)
                .await
                .expect("evidence");
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            (
                session,
                Evidence::from_json(&body).expect("evidence parses"),
            )
        })
        .await
        .expect("the server answers in time")
    });
    let binding = evidence
        .binding
        .clone()
        .expect("the evidence has a binding");
    // What a client computes (client/src/remote.rs, `attest`), for a given nonce.
    let expected = |nonce: &[u8]| {
        let transcript = Transcript {
            purpose: Purpose::ClientSession,
            nonce: Nonce::new(nonce).expect("a valid nonce"),
            spki_sha256: session.spki_sha256,
            exporter: Some(session.exporter),
            wrap_pk: binding.wrap_pk,
            model_sha256: binding.model_sha256,
            receipt_pk: binding.receipt_pk,
        };
        Expected::new(&transcript, SystemTime::now())
    };

    // For the nonce it was requested with, the evidence passes: the channel and keys match.
    policy
        .appraise(&evidence, &expected(&nonce_a))
        .expect("the evidence passes for its own nonce");
    // Presented to a verifier that asked with another nonce, only the binding fails.
    let rejection = policy
        .appraise(&evidence, &expected(&nonce_b))
        .expect_err("replayed evidence is rejected");
    let failed: Vec<Check> = rejection.failures().map(|o| o.check).collect();
    assert_eq!(failed, [Check::ReportData], "{rejection}");
    drop(session);
    server.assert_never_provisioned();
}

#[test]
fn a_server_launched_with_another_configuration_fails_measurement() {
    let f = Fixture::new();
    let server = f.start(&[]);
    // The owner expects the server to listen on 0.0.0.0:8443; this one was started with
    // --listen 127.0.0.1:0, which the launch measurement covers.
    let other = f.other_launch_policy();
    assert_refused(&server, &other, &f, &["measurement"]);
    assert_genuine(&server, &f.good_policy());
}

#[test]
fn a_different_server_executable_fails_measurement() {
    let f = Fixture::new();
    // The same server with one byte appended: it runs the same, but it is another
    // executable, so its launch measures differently.
    let modified = f.path("veil-server-modified");
    std::fs::copy(binary("veil-server"), &modified).expect("copy the server");
    let mut bytes = std::fs::OpenOptions::new()
        .append(true)
        .open(&modified)
        .expect("open the copy");
    std::io::Write::write_all(&mut bytes, &[0]).expect("append a byte");
    drop(bytes);
    let server = f.start_with(&modified, &f.model, &[]);

    let policy = f.good_policy();
    assert_refused(&server, &policy, &f, &["measurement"]);

    // A policy naming the modified executable accepts it: the executable is the difference.
    let m = f.measurement_of(&modified, false);
    assert_genuine(&server, &f.policy("modified.toml", &[m]));
}

#[test]
fn a_mock_root_the_policy_does_not_name_fails_trust_anchor() {
    let f = Fixture::new();
    let server = f.start(&[]);
    let other_root = harness::mock_platform(&f.path("other-platform"));
    assert_ne!(other_root, f.root);
    let policy = f.path("other-root.toml");
    harness::write_policy(
        &policy,
        &[&other_root],
        &[f.measurement_of(&binary("veil-server"), false)],
    );
    assert_refused(&server, &policy, &f, &["trust_anchor"]);
}

#[test]
fn a_debug_launch_fails_debug_even_when_its_measurement_is_accepted() {
    let f = Fixture::new();
    let server = f.start(&["--mock-debug"]);
    // The policy lists the debug launch's own measurement, so that only `debug` fails.
    let policy = f.policy(
        "debug-measurement.toml",
        &[f.measurement_of(&binary("veil-server"), true)],
    );
    assert_refused(&server, &policy, &f, &["debug"]);
}

#[test]
fn a_rejected_server_never_receives_the_key() {
    let f = Fixture::new();
    let server = f.start(&[]);
    let other = f.other_launch_policy();
    let o = provision(server.url(), &other, &f);
    assert_provision_rejected(&o, &["measurement"]);
    assert!(
        !text(&o).contains("key released"),
        "the client says it released the key: {}",
        text(&o)
    );
    server.assert_never_provisioned();

    // The same key, with the owner's policy, is released: so the server was waiting for it,
    // and a request that reached it would have been counted.
    let o = provision(server.url(), &f.good_policy(), &f);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        server.provision_requests(),
        ["veil_requests_total{route=\"/v1/provision\",status=\"202\"} 1"]
    );
    assert_eq!(server.ready()["state"], "ready");
}

#[test]
fn a_tampered_sealed_model_fails_to_unseal_and_names_the_chunk() {
    let f = Fixture::new();
    let header = veil_sealing::read_header(&std::fs::File::open(&f.model).expect("sealed"))
        .expect("the header parses");
    // Flip one ciphertext byte in the middle of the body; the header is untouched.
    let plaintext_at = header.plaintext_len / 2;
    let chunk = plaintext_at / u64::from(header.chunk_size);
    let mut sealed = std::fs::read(&f.model).expect("read the sealed model");
    let at = usize::try_from(header.data_offset() + plaintext_at).expect("small file");
    sealed[at] ^= 0x01;
    let tampered = f.path("tampered.veil");
    std::fs::write(&tampered, &sealed).expect("write the tampered model");
    veil_sealing::read_header(&std::fs::File::open(&tampered).expect("tampered"))
        .expect("the tampered file's header still parses");

    let server = f.start_with(&binary("veil-server"), &tampered, &[]);
    let o = provision(server.url(), &f.good_policy(), &f);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let reason = format!("chunk {chunk} failed authentication");
    assert!(text(&o).contains(&reason), "{}", text(&o));

    let ready = server.ready();
    assert_eq!(ready["state"], "failed", "{ready}");
    let said = ready["reason"].as_str().expect("a failure has a reason");
    assert!(said.contains(&reason), "{ready}");
    let (status, body) = fetch(server.url(), "GET", "/ready");
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
}
