//! `veil-server --key-broker kbs://…` and `cdh://…` against loopback stand-ins written
//! here from the protocol as Trustee's KBS speaks it (RCAR 0.4.0, `docs/trustee.md`), not
//! from its code: a session cookie, a nonce, evidence whose report data is SHA-384 of the
//! JCS runtime data, a resource sealed as a flattened JWE (ECDH-ES+A256KW, A256GCM) to
//! the TEE's key, and RFC 7807 refusals. The same stand-in checks what a KBS would check
//! of the evidence: the nonce, the report data, and for `snp` the measurement.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use p256::elliptic_curve::sec1::{FromEncodedPoint as _, ToEncodedPoint as _};
use serde_json::{json, Value};
use veil_tests::harness::{self, text, veil, Fixture, Server};

/// How long a server may take to get its key and load the model.
const PULL_TIMEOUT: Duration = Duration::from_secs(60);
/// The resource path of the model key.
const RESOURCE: &str = "default/veil/model-key";

/// What the stand-in KBS does at each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Releases the resource to evidence that checks out.
    Release,
    /// The resource policy denies it (Trustee: 401 PolicyDeny).
    Deny,
    /// No such resource (404).
    Missing,
    /// Releases it with one byte of the ciphertext changed.
    ChangedByte,
    /// Releases it sealed to another TEE key than the one attested.
    OtherKey,
    /// The first session expires before its resource is asked for; later ones do not.
    ExpireFirstSession,
}

#[derive(Default)]
struct Session {
    nonce: String,
    tee: String,
    /// The TEE key that passed attestation.
    attested: Option<p256::PublicKey>,
}

struct KbsState {
    mode: Mode,
    resource: Vec<u8>,
    /// The measurement an `snp` report must carry.
    measurement: [u8; 48],
    sessions: HashMap<String, Session>,
    /// Each request's first line and every header value the client sent.
    seen: Vec<String>,
    expired_once: bool,
    released: usize,
}

/// The stand-in KBS on 127.0.0.1, one thread per connection.
struct Kbs {
    port: u16,
    state: Arc<Mutex<KbsState>>,
}

impl Kbs {
    fn start(mode: Mode, resource: Vec<u8>, measurement: [u8; 48]) -> Kbs {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let port = listener.local_addr().expect("bound").port();
        let state = Arc::new(Mutex::new(KbsState {
            mode,
            resource,
            measurement,
            sessions: HashMap::new(),
            seen: Vec::new(),
            expired_once: false,
            released: 0,
        }));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let _ = serve(stream, &state);
                });
            }
        });
        Kbs { port, state }
    }

    fn url(&self, query: &str) -> String {
        format!("kbs://127.0.0.1:{}/{RESOURCE}{query}", self.port)
    }

    fn set_mode(&self, mode: Mode) {
        self.state.lock().expect("kbs state").mode = mode;
    }

    fn released(&self) -> usize {
        self.state.lock().expect("kbs state").released
    }

    fn tees(&self) -> Vec<String> {
        let state = self.state.lock().expect("kbs state");
        state.sessions.values().map(|s| s.tee.clone()).collect()
    }

    /// Every session cookie the KBS handed out.
    fn cookies(&self) -> Vec<String> {
        let state = self.state.lock().expect("kbs state");
        state.sessions.keys().cloned().collect()
    }
}

/// An RFC 7807 body as Trustee's KBS answers.
fn problem(status: u16, kind: &str, detail: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let body = json!({
        "type": format!("https://github.com/confidential-containers/kbs/errors/{kind}"),
        "detail": detail,
    });
    (status, Vec::new(), body.to_string().into_bytes())
}

fn serve(stream: TcpStream, state: &Mutex<KbsState>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or_default().to_owned(),
        parts.next().unwrap_or_default().to_owned(),
    );
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    let (status, extra, answer) = {
        let mut state = state.lock().expect("kbs state");
        state.seen.push(line.trim_end().to_owned());
        state.seen.extend(headers.values().cloned());
        handle(&mut state, &method, &path, &headers, &body)
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        answer.len()
    )?;
    for (name, value) in extra {
        write!(out, "{name}: {value}\r\n")?;
    }
    out.write_all(b"\r\n")?;
    out.write_all(&answer)
}

fn session_of<'a>(
    state: &'a mut KbsState,
    headers: &HashMap<String, String>,
) -> Option<(String, &'a mut Session)> {
    let id = headers
        .get("cookie")?
        .split(';')
        .find_map(|c| c.trim().strip_prefix("kbs-session-id="))?
        .to_owned();
    let session = state.sessions.get_mut(&id)?;
    Some((id, session))
}

fn handle(
    state: &mut KbsState,
    method: &str,
    path: &str,
    headers: &HashMap<String, String>,
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    match (method, path) {
        ("POST", "/kbs/v0/auth") => {
            let Ok(request) = serde_json::from_slice::<Value>(body) else {
                return problem(400, "ParseRequest", "not JSON");
            };
            if request["version"] != "0.4.0" {
                let detail = format!(
                    "Attestation error: RCAR handshake Auth failed: KBS Client Protocol Version Mismatch: expect =0.4.0 while the request is {}",
                    request["version"].as_str().unwrap_or_default()
                );
                return problem(401, "AttestationError", &detail);
            }
            if request.get("extra-params").is_none() {
                return problem(
                    401,
                    "AttestationError",
                    "Attestation error: RCAR handshake Auth failed: deserialize Request",
                );
            }
            let id = hex::encode(random::<16>());
            let nonce = STANDARD.encode(random::<32>());
            state.sessions.insert(
                id.clone(),
                Session {
                    nonce: nonce.clone(),
                    tee: request["tee"].as_str().unwrap_or_default().to_owned(),
                    attested: None,
                },
            );
            let cookie = format!("kbs-session-id={id}; Max-Age=300");
            let challenge = json!({"nonce": nonce, "extra-params": ""});
            (
                200,
                vec![("Set-Cookie".into(), cookie)],
                challenge.to_string().into_bytes(),
            )
        }
        ("POST", "/kbs/v0/attest") => {
            let measurement = state.measurement;
            let Some((_, session)) = session_of(state, headers) else {
                return problem(401, "UnAuthenticatedCookie", "no such session");
            };
            let Ok(attestation) = serde_json::from_slice::<Value>(body) else {
                return problem(400, "ParseRequest", "not JSON");
            };
            match appraise(session, &attestation, &measurement) {
                Ok(key) => {
                    session.attested = Some(key);
                    (
                        200,
                        Vec::new(),
                        json!({"token": "e30.e30.c2ln"}).to_string().into_bytes(),
                    )
                }
                // Trustee gives no cause (the attestation service's is lost on the way);
                // the stand-in keeps it after the same words, for the tests' sake.
                Err(why) => problem(
                    401,
                    "AttestationError",
                    &format!("Attestation error: RCAR handshake Attest failed: {why}"),
                ),
            }
        }
        ("GET", p) if p.starts_with("/kbs/v0/resource/") => {
            let mode = state.mode;
            let expire = mode == Mode::ExpireFirstSession && !state.expired_once;
            let resource = state.resource.clone();
            let Some((id, session)) = session_of(state, headers) else {
                return problem(401, "UnAuthenticatedCookie", "no such session");
            };
            let Some(key) = session.attested else {
                return problem(401, "TokenNotFound", "Attestation Token not found");
            };
            if expire {
                state.sessions.remove(&id);
                state.expired_once = true;
                return problem(401, "ExpiredCookie", "The cookie is expired");
            }
            if p != format!("/kbs/v0/resource/{RESOURCE}") || mode == Mode::Missing {
                return problem(404, "ResourceNotFound", "Resource not found");
            }
            if mode == Mode::Deny {
                return problem(401, "PolicyDeny", "Access denied by policy");
            }
            let to = if mode == Mode::OtherKey {
                p256::SecretKey::random(&mut rand_core::OsRng).public_key()
            } else {
                key
            };
            let mut jwe = seal_jwe(&to, &resource);
            if mode == Mode::ChangedByte {
                let mut ciphertext = URL_SAFE_NO_PAD
                    .decode(jwe["ciphertext"].as_str().expect("ciphertext"))
                    .expect("base64url");
                ciphertext[3] ^= 1;
                jwe["ciphertext"] = json!(URL_SAFE_NO_PAD.encode(ciphertext));
            }
            state.released += 1;
            (200, Vec::new(), jwe.to_string().into_bytes())
        }
        _ => problem(404, "InvalidRequest", "no such route"),
    }
}

/// What a KBS checks of the attest request: the session's nonce, report data = SHA-384
/// of the JCS runtime data, and for `snp` the measurement. The TEE key on success.
fn appraise(
    session: &Session,
    attestation: &Value,
    measurement: &[u8; 48],
) -> Result<p256::PublicKey, String> {
    let runtime = &attestation["runtime-data"];
    if runtime["nonce"] != session.nonce.as_str() {
        return Err("the nonce is not this session's".into());
    }
    let jwk = &runtime["tee-pubkey"];
    if jwk["kty"] != "EC" || jwk["crv"] != "P-256" || jwk["alg"] != "ECDH-ES+A256KW" {
        return Err(format!("tee-pubkey {jwk}"));
    }
    let evidence = &attestation["tee-evidence"];
    let hashed = json!({
        "additional-evidence": evidence["additional_evidence"],
        "nonce": runtime["nonce"],
        "tee-pubkey": jwk,
    });
    let digest = ring::digest::digest(
        &ring::digest::SHA384,
        &serde_jcs::to_vec(&hashed).expect("jcs"),
    );
    let primary = &evidence["primary_evidence"];
    match session.tee.as_str() {
        "sample" => {
            if primary["report_data"] != STANDARD.encode(digest.as_ref()) {
                return Err("Report Data Mismatch".into());
            }
        }
        "snp" => {
            let report: sev::firmware::guest::AttestationReport =
                serde_json::from_value(primary["attestation_report"].clone())
                    .map_err(|e| format!("attestation_report: {e}"))?;
            let mut expected = [0u8; 64];
            expected[..48].copy_from_slice(digest.as_ref());
            if report.report_data != expected {
                return Err("Report Data Mismatch".into());
            }
            if &report.measurement != measurement {
                return Err("measurement".into());
            }
            let chain = primary["cert_chain"].as_array().ok_or("no cert_chain")?;
            if chain.first().map(|c| &c["cert_type"]) != Some(&json!("VCEK")) {
                return Err("no VCEK first".into());
            }
        }
        other => return Err(format!("tee {other}")),
    }
    let coordinate = |name: &str| -> Result<[u8; 32], String> {
        URL_SAFE_NO_PAD
            .decode(jwk[name].as_str().unwrap_or_default())
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(format!("tee-pubkey {name}"))
    };
    let point = p256::EncodedPoint::from_affine_coordinates(
        &coordinate("x")?.into(),
        &coordinate("y")?.into(),
        false,
    );
    Option::from(p256::PublicKey::from_encoded_point(&point)).ok_or("not a P-256 point".into())
}

/// A flattened JWE of `plaintext` to `to`: ECDH-ES+A256KW (Concat KDF with SHA-256, AES
/// key wrap of a random content key), A256GCM with the encoded protected header as AAD.
fn seal_jwe(to: &p256::PublicKey, plaintext: &[u8]) -> Value {
    let ephemeral = p256::SecretKey::random(&mut rand_core::OsRng);
    let epk = ephemeral.public_key().to_encoded_point(false);
    let protected = json!({
        "alg": "ECDH-ES+A256KW",
        "enc": "A256GCM",
        "epk": {
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(epk.x().expect("x")),
            "y": URL_SAFE_NO_PAD.encode(epk.y().expect("y")),
        },
    });
    let protected = URL_SAFE_NO_PAD.encode(protected.to_string());
    let shared = p256::ecdh::diffie_hellman(ephemeral.to_nonzero_scalar(), to.as_affine());
    let mut other_info = Vec::new();
    other_info.extend_from_slice(&14u32.to_be_bytes());
    other_info.extend_from_slice(b"ECDH-ES+A256KW");
    other_info.extend_from_slice(&[0; 8]);
    other_info.extend_from_slice(&256u32.to_be_bytes());
    let mut kek = [0u8; 32];
    concat_kdf::derive_key_into::<sha2::Sha256>(shared.raw_secret_bytes(), &other_info, &mut kek)
        .expect("kdf");
    let cek = random::<32>();
    let mut wrapped = [0u8; 40];
    aes_kw::KekAes256::from(kek)
        .wrap(&cek, &mut wrapped)
        .expect("wrap");
    let iv = random::<12>();
    let key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &cek).expect("key"),
    );
    let mut ciphertext = plaintext.to_vec();
    let tag = key
        .seal_in_place_separate_tag(
            ring::aead::Nonce::assume_unique_for_key(iv),
            ring::aead::Aad::from(protected.as_bytes()),
            &mut ciphertext,
        )
        .expect("seal");
    json!({
        "protected": protected,
        "encrypted_key": URL_SAFE_NO_PAD.encode(wrapped),
        "iv": URL_SAFE_NO_PAD.encode(iv),
        "ciphertext": URL_SAFE_NO_PAD.encode(ciphertext),
        "tag": URL_SAFE_NO_PAD.encode(tag.as_ref()),
    })
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut out).expect("random");
    out
}

/// Polls `/ready` until `done` holds for its body, or fails after [`PULL_TIMEOUT`].
fn wait_ready(server: &Server, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    server.wait_ready(PULL_TIMEOUT, what, done)
}

/// Waits for `/ready`'s `key_broker` to contain `text`, and checks the server is locked.
fn wait_refused(server: &Server, text: &str) -> Value {
    let ready = wait_ready(server, text, |r| {
        r["key_broker"].as_str().is_some_and(|s| s.contains(text))
    });
    assert_eq!(ready["state"], "locked", "{ready}");
    ready
}

fn key_file(f: &Fixture) -> Vec<u8> {
    std::fs::read(&f.key).expect("the key file reads")
}

fn ask(server: &Server, f: &Fixture) {
    let o = veil(&[
        "ask",
        server.url(),
        "--policy",
        &f.good_policy().display().to_string(),
        "--max-tokens",
        "4",
        "Hello",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn a_server_pulls_its_key_from_a_kbs_with_sample_evidence_and_answers_a_verified_user() {
    let f = Fixture::new();
    let kbs = Kbs::start(Mode::Release, key_file(&f), [0; 48]);
    let server = f.start(&["--key-broker", &kbs.url("")]);
    wait_ready(&server, "pull", |r| r["state"] == "ready");
    assert_eq!(kbs.released(), 1);
    assert_eq!(kbs.tees(), vec!["sample".to_owned()]);
    assert!(server.provision_requests().is_empty());
    let log = server.log();
    assert!(
        log.contains("MOCK"),
        "the sample evidence is not called MOCK:\n{log}"
    );
    // Neither the session cookie nor the token is logged.
    for cookie in kbs.cookies() {
        assert!(!log.contains(&cookie), "the session cookie is in the log");
    }
    assert!(!log.contains("e30.e30"), "the token is in the log");
    ask(&server, &f);
}

#[test]
fn a_server_pulls_its_key_from_a_kbs_with_snp_evidence() {
    let f = Fixture::new();
    let measurement = f.measurement_of(&harness::binary("veil-server"), false);
    let kbs = Kbs::start(Mode::Release, key_file(&f), measurement);
    let server = f.start(&["--key-broker", &kbs.url("?tee=snp")]);
    wait_ready(&server, "pull", |r| r["state"] == "ready");
    assert_eq!(kbs.tees(), vec!["snp".to_owned()]);
    ask(&server, &f);

    // Another launch's measurement is refused by the KBS: the server stays locked.
    let f2 = Fixture::new();
    let kbs = Kbs::start(Mode::Release, key_file(&f2), [9; 48]);
    let server = f2.start(&["--key-broker", &kbs.url("?tee=snp")]);
    wait_refused(&server, "POST /kbs/v0/attest: 401 AttestationError: Attestation error: RCAR handshake Attest failed: measurement");
    assert_eq!(kbs.released(), 0);
}

#[test]
fn every_kbs_refusal_leaves_the_server_locked_and_shows_the_kbs_error_type() {
    let f = Fixture::new();
    for (mode, shown) in [
        (
            Mode::Deny,
            "GET /kbs/v0/resource/default/veil/model-key: 401 PolicyDeny: Access denied by policy",
        ),
        (Mode::Missing, "404 ResourceNotFound"),
        (Mode::ChangedByte, "the content does not authenticate"),
        (Mode::OtherKey, "the content key does not unwrap"),
    ] {
        let kbs = Kbs::start(mode, key_file(&f), [0; 48]);
        let server = f.start(&["--key-broker", &kbs.url("")]);
        wait_refused(&server, shown);
        // It keeps asking; once the owner's KBS releases, it becomes ready.
        kbs.set_mode(Mode::Release);
        wait_ready(&server, "after the refusal", |r| r["state"] == "ready");
    }

    // A key file for another model's key is refused by its key id.
    let other = Fixture::new();
    let kbs = Kbs::start(Mode::Release, key_file(&other), [0; 48]);
    let server = f.start(&["--key-broker", &kbs.url("")]);
    wait_refused(&server, "the sealed model needs");

    // Something that is no key file at all.
    let kbs = Kbs::start(Mode::Release, b"not a key".to_vec(), [0; 48]);
    let server = f.start(&["--key-broker", &kbs.url("")]);
    wait_refused(&server, "is not a Veil key file");
}

#[test]
fn an_expired_session_is_started_again() {
    let f = Fixture::new();
    let kbs = Kbs::start(Mode::ExpireFirstSession, key_file(&f), [0; 48]);
    let server = f.start(&["--key-broker", &kbs.url("")]);
    wait_ready(&server, "after an expired session", |r| {
        r["state"] == "ready"
    });
    assert!(
        server.log().contains("401 ExpiredCookie"),
        "the expiry is not reported:\n{}",
        server.log()
    );
    assert_eq!(
        kbs.cookies().len(),
        1,
        "the expired session is forgotten, one new one"
    );
}

#[test]
fn a_kbs_that_speaks_another_version_or_is_down_never_unlocks() {
    // A KBS that wants another protocol version: 401 at auth, shown as such.
    let f = Fixture::new();
    let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = listener.local_addr().expect("bound").port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            // What an unmodified Trustee answered to a version it does not speak.
            let body = r#"{"type":"https://github.com/confidential-containers/kbs/errors/AttestationError","detail":"Attestation error: RCAR handshake Auth failed: KBS Client Protocol Version Mismatch: expect =0.5.0 while the request is 0.4.0"}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 401 Unauthorized\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let server = f.start(&[
        "--key-broker",
        &format!("kbs://127.0.0.1:{port}/{RESOURCE}"),
    ]);
    wait_refused(
        &server,
        "POST /kbs/v0/auth: 401 AttestationError: Attestation error: RCAR handshake Auth failed: KBS Client Protocol Version Mismatch",
    );

    // Nobody listening: unreachable, and still locked.
    let closed = TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = closed.local_addr().expect("bound").port();
    drop(closed);
    let server = f.start(&[
        "--key-broker",
        &format!("kbs://127.0.0.1:{port}/{RESOURCE}"),
    ]);
    wait_refused(&server, "could not be reached");
}

#[test]
fn a_bad_kbs_url_or_sample_on_real_hardware_stops_the_server_at_start() {
    let f = Fixture::new();
    for (url, said) in [
        ("kbs://127.0.0.1:1/a/b", "REPO/TYPE/TAG"),
        ("kbs://127.0.0.1:1/a/b/c?tee=tdx", "unknown query"),
        ("ftp://127.0.0.1:1/a/b/c", "expected http://"),
    ] {
        let o = harness::run(
            std::process::Command::new(harness::binary("veil-server"))
                .args(["--model", &f.model.display().to_string()])
                .args([
                    "--tee",
                    "mock",
                    "--mock-platform",
                    &f.platform.display().to_string(),
                ])
                .args(["--listen", "127.0.0.1:0", "--key-broker", url]),
            Duration::from_secs(30),
        );
        assert_ne!(o.status.code(), Some(0), "{url} accepted");
        assert!(text(&o).contains(said), "{url}: {}", text(&o));
    }
}

/// A pod's Confidential Data Hub on loopback: `GET /cdh/resource/REPO/TYPE/TAG` answers
/// the resource in plain (the pod's attestation agent did the attestation).
fn start_cdh(resource: Option<Vec<u8>>) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = listener.local_addr().expect("bound").port();
    let paths = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&paths);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let path = line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            seen.lock().expect("paths").push(path.clone());
            let (status, body) = match &resource {
                Some(r) if path == format!("/cdh/resource/{RESOURCE}") => ("200 OK", r.clone()),
                _ => ("404 Not Found", b"resource not found".to_vec()),
            };
            let mut out = stream;
            let _ = write!(
                out,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = out.write_all(&body);
        }
    });
    (port, paths)
}

#[test]
fn in_a_pod_the_server_takes_its_key_from_the_confidential_data_hub() {
    let f = Fixture::new();
    let (port, paths) = start_cdh(Some(key_file(&f)));
    let server = f.start(&[
        "--key-broker",
        &format!("cdh://127.0.0.1:{port}/{RESOURCE}"),
    ]);
    wait_ready(&server, "cdh", |r| r["state"] == "ready");
    assert_eq!(
        paths.lock().expect("paths").first().map(String::as_str),
        Some("/cdh/resource/default/veil/model-key")
    );
    ask(&server, &f);

    let (port, _) = start_cdh(None);
    let server = f.start(&[
        "--key-broker",
        &format!("cdh://127.0.0.1:{port}/{RESOURCE}"),
    ]);
    wait_refused(&server, "GET /cdh/resource/default/veil/model-key: 404");
}
