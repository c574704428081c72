//! `veil proxy` with the real binaries on loopback, the mock TEE and the tiny model: plain
//! HTTP clients are served only by a verified server; when the server is replaced by one
//! whose evidence fails, the proxy answers 502 naming the check and forwards nothing; when a
//! good server comes back with a new TLS key, the proxy verifies it and forwards again.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use veil_tests::harness::{self, binary, measurement, text, veil, Fixture, START_TIMEOUT};

struct Proxy(Child);
impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server of `f`, provisioned by the owner under the good policy; and that policy's path.
fn provisioned(f: &Fixture) -> (harness::Server, String) {
    let (server, policy) = f.start_provisioned(&[]);
    (server, policy.display().to_string())
}

/// Starts `veil proxy` on an ephemeral loopback port; returns it and its address.
fn start_proxy(upstream: &str, policy: &str) -> (Proxy, SocketAddr) {
    let (proxy, addr, _) = start_proxy_with_stderr(upstream, policy);
    (proxy, addr)
}

/// [`start_proxy`], with the proxy's stderr lines as they come.
fn start_proxy_with_stderr(
    upstream: &str,
    policy: &str,
) -> (Proxy, SocketAddr, mpsc::Receiver<String>) {
    start_proxy_in(Command::new(binary("veil")), upstream, policy, &[])
}

/// [`start_proxy_with_stderr`] with `command` as the `veil` to run.
fn start_proxy_in(
    mut command: Command,
    upstream: &str,
    policy: &str,
    extra: &[&str],
) -> (Proxy, SocketAddr, mpsc::Receiver<String>) {
    let mut child = command
        .args(["proxy", "--upstream", upstream, "--policy", policy])
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("veil proxy starts");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let (err_tx, err_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = err_tx.send(line);
        }
    });
    let proxy = Proxy(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = tx.send(line);
            }
        }
    });
    let banner = rx
        .recv_timeout(START_TIMEOUT)
        .expect("the proxy verifies the server and listens");
    let addr = banner
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .and_then(|a| a.trim_end_matches("/v1").parse().ok())
        .expect("the proxy's address in its banner");
    (proxy, addr, err_rx)
}

/// Waits (bounded) for a stderr line of the proxy that contains `needle`.
fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line with {needle:?} from the proxy: {e}"),
        }
    }
}

fn sighup(proxy: &Proxy) {
    let o = harness::run(
        Command::new("kill").args(["-HUP", &proxy.0.id().to_string()]),
        harness::COMMAND_TIMEOUT,
    );
    assert!(o.status.success(), "{}", text(&o));
}

/// One plain HTTP/1.1 request, as an OpenAI client sends it; the status and the raw
/// response.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(
        addr,
        method,
        path,
        "Host: localhost\r\nContent-Type: application/json\r\n",
        body,
    )
}

/// [`http`] with these header lines (each ending in CRLF) in place of the usual ones.
fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    try_http_with(addr, method, path, headers, body).expect("an HTTP answer from the proxy")
}

/// [`http_with`], with the failure (connect, send, read, or no status line) returned.
fn try_http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {raw:?}")))?;
    Ok((status, raw))
}

#[test]
fn the_proxy_forwards_only_to_verified_servers_and_reverifies_a_new_key() {
    let f = Fixture::new();
    // A fixed port, so that a restarted server is found at the same URL.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let m = measurement(&binary("veil-server"), &listen, &f.model_sha256, false);
    let policy = f.policy("proxy.toml", &[m]).display().to_string();
    let provision = |url: &str| {
        let o = veil(&["provision", url, "--policy", &policy, "--key", &f.key_arg()]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    };

    let good = f.start_at(&listen, &[]);
    provision(good.url());
    let (_proxy, addr) = start_proxy(good.url(), &policy);
    let chat = r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":4,"stream":true}"#;

    let (status, body) = http(addr, "GET", "/v1/models", "");
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(addr, "POST", "/v1/chat/completions", chat);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("data: [DONE]"), "streamed through: {body}");
    let (status, _) = http(addr, "GET", "/metrics", "");
    assert_eq!(status, 404, "only the OpenAI routes are forwarded");

    // The server is replaced by a debug launch at the same address: a new TLS key, and
    // evidence that fails.
    let url = good.url().to_owned();
    drop(good);
    let bad = f.start_at(&listen, &["--mock-debug"]);
    assert_eq!(bad.url(), url);
    let (status, body) = http(addr, "POST", "/v1/chat/completions", chat);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("attestation_rejected"), "{body}");
    assert!(body.contains("debug"), "the failed check is named: {body}");
    assert!(
        !bad.metrics().contains("route=\"/v1/chat/completions\""),
        "nothing was forwarded to the failing server"
    );
    drop(bad);

    // A good server again, with yet another TLS key: verified anew, then served.
    let good = f.start_at(&listen, &[]);
    provision(good.url());
    let (status, body) = http(addr, "POST", "/v1/chat/completions", chat);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("data: [DONE]"), "{body}");
}

#[test]
fn on_sighup_the_proxy_reloads_its_policy_and_crls_and_verifies_again() {
    let f = Fixture::new();
    let server = f.start(&[]);
    let policy = f.good_policy();
    let o = veil(&[
        "provision",
        server.url(),
        "--policy",
        &policy.display().to_string(),
        "--key",
        &f.key_arg(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // The policy names a CRL from the mock root; at first it revokes nothing.
    let crl = f.path("root.crl").display().to_string();
    let platform = f.platform.display().to_string();
    let issue = |revoke: bool| {
        let mut args = vec!["mock-platform", "crl", &platform, "-o", &crl, "--force"];
        if revoke {
            args.push("--revoke");
        }
        let o = veil(&args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    };
    issue(false);
    let text_of = std::fs::read_to_string(&policy).expect("policy");
    std::fs::write(&policy, format!("crls = [\"root.crl\"]\n{text_of}")).expect("write");
    let (proxy, addr, stderr) =
        start_proxy_with_stderr(server.url(), &policy.display().to_string());
    let (status, body) = http(addr, "GET", "/v1/models", "");
    assert_eq!(status, 200, "{body}");

    // The owner's new CRL revokes the platform's intermediate: after SIGHUP the proxy
    // verifies the same server again, and now refuses it.
    issue(true);
    sighup(&proxy);
    wait_for_line(&stderr, "reloaded (1 CRLs)");
    let (status, body) = http(addr, "GET", "/v1/models", "");
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("revocation"),
        "the failed check is named: {body}"
    );

    // A policy that no longer loads: the previous one (with the revoking CRL) stays.
    std::fs::write(f.path("root.crl"), b"not a CRL").expect("write");
    sighup(&proxy);
    let line = wait_for_line(&stderr, "not reloaded");
    assert!(line.contains("not an X.509 CRL"), "{line}");
    let (status, body) = http(addr, "GET", "/v1/models", "");
    assert_eq!(status, 502, "{body}");

    // A clean CRL again: served.
    issue(false);
    sighup(&proxy);
    wait_for_line(&stderr, "reloaded (1 CRLs)");
    let (status, body) = http(addr, "GET", "/v1/models", "");
    assert_eq!(status, 200, "{body}");
}

/// What the official `openai` Python SDK does through the proxy: list the models, one
/// completion, one stream, log-probabilities, a conversation's prompt reuse, embeddings,
/// structured output parsed by the SDK (a developer message and content parts on the way).
/// Prints one JSON line.
const SDK_SCRIPT: &str = r#"
import json, sys
from openai import OpenAI
c = OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0, timeout=60)
model = c.models.list().data[0].id
raw = c.chat.completions.with_raw_response.create(model=model, max_tokens=4, temperature=0,
        messages=[{"role": "user", "content": "hello"}])
r = raw.parse()
stream = list(c.chat.completions.create(
        model=model, max_tokens=4, temperature=0, stream=True,
        messages=[{"role": "user", "content": "hello"}]))
chunks = [ch.choices[0].delta.content or "" for ch in stream if ch.choices]
receipts = {"header": raw.headers.get("veil-receipt") is not None,
            "stream": sum(1 for ch in stream if (ch.model_extra or {}).get("veil_receipt"))}
lp = c.chat.completions.create(model=model, max_tokens=3, temperature=0, logprobs=True,
        top_logprobs=2, messages=[{"role": "user", "content": "hello"}]).choices[0].logprobs
cached = [c.chat.completions.create(model=model, max_tokens=2, temperature=0,
        extra_body={"prompt_cache_key": "sdk-conversation"},
        messages=[{"role": "user", "content": "hello again"}]).usage.prompt_tokens_details.cached_tokens
    for _ in range(2)]
emb = c.embeddings.create(model=model, input=["one text", "another"]).data
from typing import Literal
from pydantic import BaseModel
class Verdict(BaseModel):
    city: Literal["Paris", "Rome"]
    sure: bool
parsed = c.chat.completions.parse(model=model, max_tokens=180, temperature=0,
        messages=[{"role": "developer", "content": "Answer in JSON."},
                  {"role": "user", "content": [{"type": "text", "text": "Capital"},
                                               {"type": "text", "text": "of France?"}]}],
        response_format=Verdict).choices[0].message.parsed
print(json.dumps({"model": model, "text": r.choices[0].message.content,
                  "embeddings": [len(e.embedding) for e in emb],
                  "parsed": parsed.model_dump(),
                  "completion_tokens": r.usage.completion_tokens, "streamed": "".join(chunks),
                  "chunks": len(chunks), "logprobs": len(lp.content),
                  "top_logprobs": [len(t.top_logprobs) for t in lp.content], "cached": cached,
                  "receipts": receipts}))
"#;

#[test]
fn the_official_openai_python_sdk_works_through_the_proxy() {
    let has_sdk = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_sdk {
        assert!(
            std::env::var_os("VEIL_REQUIRE_OPENAI").is_none(),
            "VEIL_REQUIRE_OPENAI is set but python3 cannot import openai"
        );
        eprintln!("SKIPPED: python3 cannot import openai (python3 -m pip install openai)");
        return;
    }
    let f = Fixture::new();
    let (server, policy) = provisioned(&f);
    let (_proxy, addr) = start_proxy(server.url(), &policy);

    let o = harness::run(
        Command::new("python3").args(["-c", SDK_SCRIPT, &format!("http://{addr}/v1")]),
        harness::COMMAND_TIMEOUT,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("the script's JSON");
    // The seal's name (tiny.gguf) as a slug.
    assert_eq!(v["model"], "tiny", "{v}");
    assert!(
        v["completion_tokens"]
            .as_u64()
            .is_some_and(|n| (1..=4).contains(&n)),
        "{v}"
    );
    assert!(v["chunks"].as_u64().is_some_and(|n| n >= 1), "{v}");
    assert_eq!(
        v["streamed"], v["text"],
        "greedy: the stream and the completion agree: {v}"
    );
    assert!(
        v["logprobs"].as_u64().is_some_and(|n| (1..=3).contains(&n)),
        "{v}"
    );
    assert!(
        v["top_logprobs"]
            .as_array()
            .is_some_and(|t| t.iter().all(|n| n == 2)),
        "{v}"
    );
    // The SDK's own parsing of a json_schema answer into its model.
    assert!(
        ["Paris", "Rome"].contains(&v["parsed"]["city"].as_str().unwrap_or_default())
            && v["parsed"]["sure"].is_boolean(),
        "{v}"
    );
    // The SDK asks for base64 and decodes it.
    assert!(
        v["embeddings"]
            .as_array()
            .is_some_and(|e| e.len() == 2 && e[0].as_u64().is_some_and(|n| n > 1) && e[0] == e[1]),
        "{v}"
    );
    // The first request of the conversation reuses nothing; the second its prompt.
    assert_eq!(v["cached"][0], 0, "{v}");
    assert!(v["cached"][1].as_u64().is_some_and(|n| n > 0), "{v}");
    // Receipts reach the SDK without disturbing it: a header, and one extra field of the
    // stream's last chunk.
    assert_eq!(v["receipts"]["header"], true, "{v}");
    assert_eq!(v["receipts"]["stream"], 1, "{v}");
}

#[test]
fn the_proxy_keeps_one_verified_receipt_bundle_per_answer() {
    let f = Fixture::new();
    let (server, policy) = provisioned(&f);
    let dir = f.path("receipts");
    let (_proxy, addr, lines) = start_proxy_in(
        Command::new(binary("veil")),
        server.url(),
        &policy,
        &["--receipts", &dir.display().to_string()],
    );
    let plain = r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":4}"#;
    let (status, raw) = http(addr, "POST", "/v1/chat/completions", plain);
    assert_eq!(status, 200, "{raw}");
    assert!(
        raw.to_ascii_lowercase().contains("\r\nveil-receipt: "),
        "{raw}"
    );
    let streamed = r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":4,"stream":true,"stream_options":{"include_usage":true}}"#;
    let (status, raw) = http(addr, "POST", "/v1/chat/completions", streamed);
    assert_eq!(status, 200, "{raw}");
    assert!(raw.contains("\"veil_receipt\":"), "{raw}");
    let completion = r#"{"prompt":"Once upon","max_tokens":3}"#;
    let (status, raw) = http(addr, "POST", "/v1/completions", completion);
    assert_eq!(status, 200, "{raw}");
    // Not an answer: no receipt, no file.
    let (status, _) = http(addr, "GET", "/v1/models", "");
    assert_eq!(status, 200);

    // Each bundle is written when its answer has been forwarded: wait for three.
    let deadline = std::time::Instant::now() + harness::START_TIMEOUT;
    let bundles = loop {
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .expect("the receipts directory")
            .map(|e| e.expect("an entry").path())
            .collect();
        names.sort();
        if names.len() >= 3 || std::time::Instant::now() > deadline {
            break names;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let said: Vec<String> = lines.try_iter().collect();
    assert_eq!(bundles.len(), 3, "{bundles:?}\nthe proxy said: {said:#?}");
    let mut routes = vec![];
    for b in &bundles {
        let name = b.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        assert!(!name.starts_with("rejected-"), "{name}");
        let o = veil(&[
            "receipt",
            "verify",
            &b.display().to_string(),
            "--policy",
            &policy,
        ]);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", text(&o));
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(b).expect("bundle")).expect("JSON");
        routes.push(v["route"].as_str().unwrap_or_default().to_owned());
    }
    routes.sort();
    assert_eq!(
        routes,
        [
            "/v1/chat/completions",
            "/v1/chat/completions",
            "/v1/completions"
        ],
        "{bundles:?}"
    );
}

#[test]
fn a_proxy_out_of_descriptors_keeps_serving_once_they_are_freed() {
    // Under a 48-descriptor limit (soft and hard, so raising the soft one gains nothing),
    // the proxy caps itself at 16 connections (48 less 16 kept free, two descriptors each:
    // the client's and the upstream's), so 80 idle connections are refused past the cap
    // rather than leave accept() failing with "Too many open files"; the proxy must go on
    // serving once they are closed, not exit.
    let f = Fixture::new();
    let (server, policy) = provisioned(&f);
    let mut limited = Command::new("sh");
    limited
        .arg("-c")
        .arg("ulimit -n 48 && exec \"$0\" \"$@\"")
        .arg(binary("veil"));
    let (_proxy, addr, lines) = start_proxy_in(limited, server.url(), &policy, &[]);
    wait_for_line(&lines, "open-descriptor limit 48");
    wait_for_line(&lines, "at most 16 connections");

    let idle: Vec<TcpStream> = (0..80)
        .map(|_| TcpStream::connect(addr).expect("the kernel completes the handshake"))
        .collect();
    wait_for_line(&lines, "--max-connections reached");
    drop(idle);

    // The kernel completes handshakes whatever the proxy does, so only an answer shows
    // that it serves again: until it has seen the idle connections close, it is still at
    // its cap and closes new ones at once (a reset here), which is the cap working.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let headers = "Host: localhost\r\nContent-Type: application/json\r\n";
    let (status, body) = loop {
        match try_http_with(addr, "GET", "/v1/models", headers, "") {
            Ok(answer) => break answer,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "the proxy no longer serves 20 s after the idle connections closed: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 200, "{body}");
}

#[test]
fn the_proxy_refuses_web_pages_foreign_hosts_and_non_json_chat_requests() {
    let f = Fixture::new();
    let (server, policy) = provisioned(&f);
    let (_proxy, addr, _) = start_proxy_in(
        Command::new(binary("veil")),
        server.url(),
        &policy,
        &["--allow-origin", "https://app.example"],
    );
    let chat = r#"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":2}"#;
    let json = "Content-Type: application/json\r\n";
    let refused = |headers: &str, code: u16, name: &str| {
        let (status, body) = http_with(addr, "POST", "/v1/chat/completions", headers, chat);
        assert_eq!(status, code, "{headers:?}: {body}");
        assert!(body.contains(name), "{headers:?}: {body}");
        assert!(
            !body.contains("\"choices\""),
            "{headers:?} got a completion: {body}"
        );
    };
    // DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1.
    refused(
        &format!("Host: evil.example:{}\r\n{json}", addr.port()),
        403,
        "host_not_allowed",
    );
    refused(json, 403, "host_not_allowed"); // no Host at all
                                            // A cross-site page, even with the right Host.
    refused(
        &format!(
            "Host: 127.0.0.1:{}\r\nOrigin: https://evil.example\r\n{json}",
            addr.port()
        ),
        403,
        "origin_not_allowed",
    );
    // A "simple" request a browser sends without a preflight.
    refused(
        "Host: localhost\r\nContent-Type: text/plain\r\n",
        415,
        "unsupported_media_type",
    );
    // The user's own programs, and the page the user allowed, are served.
    for headers in [
        format!("Host: 127.0.0.1:{}\r\n{json}", addr.port()),
        format!("Host: localhost:{}\r\n{json}", addr.port()),
        format!("Host: localhost\r\nOrigin: https://app.example\r\n{json}"),
    ] {
        let (status, body) = http_with(addr, "POST", "/v1/chat/completions", &headers, chat);
        assert_eq!(status, 200, "{headers:?}: {body}");
        assert!(body.contains("\"choices\""), "{headers:?}: {body}");
    }
}

/// `veil api-key new` into the fixture: the key file's path and contents.
fn new_api_key(f: &Fixture, name: &str, keys: &std::path::Path) -> (String, String) {
    let key_out = f.path(&format!("{name}.key")).display().to_string();
    let o = veil(&[
        "api-key",
        "new",
        "--key-out",
        &key_out,
        "--name",
        name,
        "--keys",
        &keys.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let key = std::fs::read_to_string(&key_out).expect("key file");
    assert!(
        !text(&o).contains(key.trim()),
        "the key is never printed: {}",
        text(&o)
    );
    (key_out, key.trim().to_owned())
}

#[test]
fn api_keys_health_ready_and_every_openai_route_through_the_proxy_and_ask() {
    let f = Fixture::new();
    let keys = f.path("api-keys");
    let (alice_file, alice) = new_api_key(&f, "alice", &keys);
    let server = f.start(&["--api-keys", &keys.display().to_string()]);
    let policy = f.good_policy().display().to_string();
    let (_proxy, addr, lines) = start_proxy_with_stderr(server.url(), &policy);
    // One verdict line on stderr, saying MOCK.
    let verdict = wait_for_line(&lines, "VERIFIED");
    assert!(
        verdict.contains("VERIFIED (MOCK)") && verdict.contains(server.url()),
        "{verdict}"
    );
    // The proxy's own routes: alive at once, ready only once the upstream is.
    let (status, _) = http(addr, "GET", "/health", "");
    assert_eq!(status, 200);
    let (status, raw) = http(addr, "GET", "/ready", "");
    assert!(status == 503 && raw.contains("locked"), "{raw}");
    let o = f.provision(&server);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (status, raw) = http(addr, "GET", "/ready", "");
    assert!(status == 200 && raw.contains("\"ready\":true"), "{raw}");

    // The server wants a key; the proxy forwards the client's.
    let (status, raw) = http(addr, "GET", "/v1/models", "");
    assert!(status == 401 && raw.contains("invalid_api_key"), "{raw}");
    let auth = format!(
        "Host: localhost\r\nContent-Type: application/json\r\nAuthorization: Bearer {alice}\r\n"
    );
    let (status, raw) = http_with(addr, "GET", "/v1/models", &auth, "");
    assert_eq!(status, 200, "{raw}");
    let body: serde_json::Value =
        serde_json::from_str(raw.split("\r\n\r\n").nth(1).unwrap_or_default()).expect("JSON");
    let id = body["data"][0]["id"]
        .as_str()
        .expect("a model id")
        .to_owned();
    assert!(
        !id.contains(' ') && body["data"][0]["created"].as_u64() > Some(0),
        "{body}"
    );
    let (status, raw) = http_with(addr, "GET", &format!("/v1/models/{id}"), &auth, "");
    assert!(status == 200 && raw.contains(&id), "{raw}");
    let (status, raw) = http_with(
        addr,
        "POST",
        "/v1/completions",
        &auth,
        r#"{"prompt":"hello","max_tokens":3}"#,
    );
    assert!(status == 200 && raw.contains("text_completion"), "{raw}");

    // A proxy with its own key file sends that one instead of whatever the client sends.
    let (_keyed, keyed_addr, _) = start_proxy_in(
        Command::new(binary("veil")),
        server.url(),
        &policy,
        &["--api-key-file", &alice_file],
    );
    let unused =
        "Host: localhost\r\nContent-Type: application/json\r\nAuthorization: Bearer unused\r\n";
    let (status, raw) = http_with(keyed_addr, "GET", "/v1/models", unused, "");
    assert_eq!(status, 200, "{raw}");

    // `veil ask`: the key from a file, the verdict in one line on stderr (every check with
    // --verbose), the answer alone on stdout.
    let url = server.url();
    let ask = |key_file: &str, extra: &[&str]| {
        let mut args = vec!["ask", url, "--policy", &policy, "--api-key-file", key_file];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--max-tokens", "2", "hi"]);
        veil(&args)
    };
    let o = veil(&["ask", url, "--policy", &policy, "--max-tokens", "3", "hi"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("invalid_api_key"), "{}", text(&o));
    let o = ask(&alice_file, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains("VERIFIED (MOCK)"))
            .count(),
        1,
        "{stderr}"
    );
    assert!(
        !stderr.contains('✓') && !stdout.contains("VERIFIED"),
        "{}",
        text(&o)
    );
    let o = ask(&alice_file, &["--verbose"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains('✓'),
        "{}",
        text(&o)
    );

    // SIGHUP reloads the server's keys: a new file without alice, with bob.
    std::fs::remove_file(&keys).expect("remove");
    let (bob_file, _) = new_api_key(&f, "bob", &keys);
    let o = harness::run(
        Command::new("kill").args(["-HUP", &server.pid().to_string()]),
        harness::COMMAND_TIMEOUT,
    );
    assert!(o.status.success(), "{}", text(&o));
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    while !server.log().contains("API keys reloaded") {
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _) = http_with(addr, "GET", "/v1/models", &auth, "");
    assert_eq!(status, 401, "alice's key is gone");
    let o = ask(&bob_file, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!server.log().contains(&alice), "no key in the server's log");
}
