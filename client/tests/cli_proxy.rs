//! `veil proxy` with the real binaries on loopback, the mock TEE and the tiny model: plain
//! HTTP clients are served only by a verified server; when the server is replaced by one
//! whose evidence fails, the proxy answers 502 naming the check and forwards nothing; when a
//! good server comes back with a new TLS key, the proxy verifies it and forwards again.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use veil_attestation::mock::MockLaunch;
use veil_attestation::{Certificate, Policy};

struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn veil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(args)
        .output()
        .expect("veil runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Spawns a command and returns it with the first stdout line containing `marker`
/// (bounded wait).
fn spawn_until(cmd: &mut Command, marker: &'static str) -> (Guard, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let guard = Guard(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(marker) {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("no {marker:?} line within 60 s"));
    (guard, line)
}

fn server(dir: &Path, listen: &str, debug: bool) -> Guard {
    let exe = Path::new(env!("CARGO_BIN_EXE_veil")).with_file_name("veil-server");
    let mut cmd = Command::new(exe);
    cmd.arg("--model")
        .arg(dir.join("m.veil"))
        .args(["--tee", "mock", "--mock-platform"])
        .arg(dir.join("platform"))
        .args(["--listen", listen, "--parallel", "1", "--context", "256"]);
    if debug {
        cmd.arg("--mock-debug");
    }
    spawn_until(&mut cmd, "listening on").0
}

/// One plain HTTP/1.1 request; returns the status and the whole body as text.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the proxy");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    (status, raw)
}

fn metrics(url: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let target = veil_client::remote::Target::parse(url).expect("url");
        let mut s =
            veil_client::remote::Session::connect(&target, veil_client::pin::PinMode::Capture)
                .await
                .expect("connect");
        let (_, body) = s.fetch("GET", "/metrics", None).await.expect("metrics");
        String::from_utf8_lossy(&body).into_owned()
    })
}

#[test]
fn the_proxy_forwards_only_to_verified_servers_and_reverifies_a_new_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let s = |n: &str| dir.join(n).display().to_string();
    std::fs::write(dir.join("tiny.gguf"), veil_model::tiny::gguf(9)).expect("model");
    assert!(veil(&["mock-platform", "init", &s("platform")])
        .status
        .success());
    let o = veil(&[
        "seal",
        &s("tiny.gguf"),
        "-o",
        &s("m.veil"),
        "--key-out",
        &s("m.key"),
    ]);
    assert!(o.status.success(), "{}", text(&o));

    // A fixed port, so that a restarted server is found at the same URL.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("https://{listen}");
    let header = veil_sealing::read_header(&std::fs::File::open(dir.join("m.veil")).expect("m"))
        .expect("header");
    let exe = std::fs::read(Path::new(env!("CARGO_BIN_EXE_veil")).with_file_name("veil-server"))
        .expect("server exe");
    let launch = MockLaunch::server(&exe, &listen, &header.model_sha256);
    let root = Certificate::from_pem(&std::fs::read(dir.join("platform/ark.pem")).expect("root"))
        .expect("pem");
    let policy = Policy::mock(&root.fingerprint(), &[launch.measurement()]);
    std::fs::write(dir.join("policy.toml"), policy.to_toml()).expect("policy");
    let provision = || {
        let o = veil(&[
            "provision",
            &url,
            "--policy",
            &s("policy.toml"),
            "--key",
            &s("m.key"),
        ]);
        assert!(o.status.success(), "{}", text(&o));
    };

    let good = server(dir, &listen, false);
    provision();
    let (_proxy, banner) = spawn_until(
        Command::new(env!("CARGO_BIN_EXE_veil")).args([
            "proxy",
            "--upstream",
            &url,
            "--policy",
            &s("policy.toml"),
            "--listen",
            "127.0.0.1:0",
        ]),
        "listening on",
    );
    let addr: SocketAddr = banner
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .and_then(|a| a.trim_end_matches("/v1").parse().ok())
        .expect("proxy address in the banner");
    let chat = r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":4,"stream":true}"#;

    let (status, body) = http(addr, "GET", "/v1/models", "");
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(addr, "POST", "/v1/chat/completions", chat);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("data: [DONE]"), "streamed through: {body}");
    let (status, _) = http(addr, "GET", "/metrics", "");
    assert_eq!(status, 404, "only the OpenAI routes are forwarded");

    // The server is replaced by a debug launch: a new key, evidence that fails.
    drop(good);
    let bad = server(dir, &listen, true);
    let (status, body) = http(addr, "POST", "/v1/chat/completions", chat);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("attestation_rejected"), "{body}");
    assert!(body.contains("debug"), "the failed check is named: {body}");
    assert!(
        !metrics(&url).contains("route=\"/v1/chat/completions\""),
        "nothing was forwarded to the failing server"
    );
    drop(bad);

    // A good server again, with yet another TLS key: verified anew, then served.
    let _good = server(dir, &listen, false);
    provision();
    let (status, body) = http(addr, "POST", "/v1/chat/completions", chat);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("data: [DONE]"), "{body}");
}
