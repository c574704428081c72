//! What the end-to-end benchmarks share: the release binaries beside the example, a
//! mock platform with the model sealed on it and the owner's policy for one launch
//! address, and servers started there.

#![allow(dead_code)] // each benchmark uses its part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use veil_attestation::mock::MockLaunch;
use veil_attestation::{Certificate, Policy};
use veil_client::kds::Collateral;
use veil_client::proxy::Proxy;
use veil_sealing::SealedHeader;

/// A running `veil-server`, killed when dropped.
pub(crate) struct Server(pub(crate) Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A binary of the target directory above this example.
pub(crate) fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name);
    assert!(p.is_file(), "{} is missing: build it first", p.display());
    p
}

/// Runs `veil ARGS`, which must succeed.
pub(crate) fn veil(args: &[&str]) {
    let o = Command::new(bin("veil")).args(args).output().expect("veil");
    assert!(
        o.status.success(),
        "veil {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A mock platform, `model` sealed on it (`m.veil`, `m.key`), one loopback address for
/// every server of the run, and the owner's policy for a launch there.
pub(crate) struct Bench {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) header: SealedHeader,
    pub(crate) listen: String,
    pub(crate) policy: Policy,
}

impl Bench {
    pub(crate) fn new(model: &Path) -> Bench {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = |n: &str| dir.path().join(n).display().to_string();
        veil(&["mock-platform", "init", &s("platform")]);
        veil(&[
            "seal",
            &model.display().to_string(),
            "-o",
            &s("m.veil"),
            "--key-out",
            &s("m.key"),
        ]);
        let header = veil_sealing::read_header(
            &std::fs::File::open(dir.path().join("m.veil")).expect("sealed"),
        )
        .expect("header");
        let exe = std::fs::read(bin("veil-server")).expect("server exe");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let listen = format!("127.0.0.1:{port}");
        let launch = MockLaunch::server(&exe, &listen, &header.model_sha256);
        let root = Certificate::from_pem(
            &std::fs::read(dir.path().join("platform/ark.pem")).expect("root"),
        )
        .expect("pem");
        let policy = Policy::mock(&root, &[launch.measurement()]);
        Bench {
            dir,
            header,
            listen,
            policy,
        }
    }

    /// A path in the bench's directory.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts a locked `veil-server` at the bench's address, with `extra` arguments;
    /// returns it and its URL.
    pub(crate) fn start_server(&self, threads: usize, extra: &[&str]) -> (Server, String) {
        let mut command = Command::new(bin("veil-server"));
        command
            .arg("--model")
            .arg(self.path("m.veil"))
            .args(["--tee", "mock", "--mock-platform"])
            .arg(self.path("platform"))
            .args(["--listen", &self.listen, "--threads", &threads.to_string()])
            .args(extra)
            .env("VEIL_LOG", "error");
        announced(command, "https://")
    }

    /// Starts `veil broker` on 127.0.0.1 for the bench's key (`m.key`) under its policy,
    /// with `extra` arguments (`--lease 2s`); returns it (killed when dropped) and its URL.
    pub(crate) fn start_broker(&self, extra: &[&str]) -> (Server, String) {
        let keys = self.path("keys");
        if !keys.is_dir() {
            std::fs::create_dir(&keys).expect("key directory");
            std::fs::copy(self.path("m.key"), keys.join("m.key")).expect("key copied");
            std::fs::write(self.path("policy.toml"), self.policy.to_toml()).expect("policy");
        }
        let mut command = Command::new(bin("veil"));
        command
            .arg("broker")
            .arg("--policy")
            .arg(self.path("policy.toml"))
            .arg("--keys")
            .arg(&keys)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra);
        announced(command, "http://")
    }
}

/// Spawns `command` and reads its banner: the process (killed when dropped) and the first
/// URL of `scheme` in the banner.
fn announced(mut command: Command, scheme: &str) -> (Server, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("banner");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with(scheme))
        .expect("url")
        .to_owned();
    (Server(child), url)
}

/// An in-process `veil proxy` on 127.0.0.1, served until dropped.
pub(crate) struct ProxyServer {
    pub(crate) addr: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl ProxyServer {
    /// Serves `proxy` on a free loopback port (call within a Tokio runtime).
    pub(crate) async fn start(proxy: Proxy) -> ProxyServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(veil_client::http::serve(
            listener,
            Arc::new(proxy),
            veil_client::http::ListenLimits::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        ProxyServer { addr, _stop: stop }
    }

    /// A proxy to `url` under the bench's policy, keeping receipts in `receipts`.
    pub(crate) async fn to(url: &str, policy: &Policy, receipts: Option<PathBuf>) -> ProxyServer {
        let proxy = Proxy::new(url, policy.clone(), Collateral::none())
            .expect("proxy")
            .receipts(receipts);
        ProxyServer::start(proxy).await
    }
}

pub(crate) const PROMPT: &str = "Write a long story about a lighthouse keeper and the sea.";
pub(crate) const GEN_TOKENS: u32 = 128;

/// One generation as the consumer saw it.
pub(crate) struct Gen {
    pub(crate) total: Duration,
    pub(crate) decode: Duration,
    pub(crate) tokens: u32,
}

impl Gen {
    pub(crate) fn total_rate(&self) -> f64 {
        f64::from(self.tokens) / self.total.as_secs_f64()
    }
    pub(crate) fn decode_rate(&self) -> f64 {
        f64::from(self.tokens.saturating_sub(1)) / self.decode.as_secs_f64()
    }
}

pub(crate) fn request_json() -> Value {
    json!({
        "messages": [{ "role": "user", "content": PROMPT }],
        "max_tokens": GEN_TOKENS,
        "temperature": 0,
        "ignore_eos": true,
        "stream": true,
    })
}

/// A streamed request through the proxy, over plain HTTP as an OpenAI client sends it.
pub(crate) async fn through_proxy(addr: std::net::SocketAddr) -> Gen {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("proxy");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("http");
    tokio::spawn(conn);
    let started = Instant::now();
    let req = hyper::Request::post("/v1/chat/completions")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(request_json().to_string())))
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert!(
        resp.status().is_success(),
        "proxy answered {}",
        resp.status()
    );
    let mut body = resp.into_body();
    let (mut first, mut last, mut chunks) = (None, started, 0u32);
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("stream");
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            let Some(payload) = text.trim().strip_prefix("data: ") else {
                continue;
            };
            if payload == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(payload).expect("chunk");
            if v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
            {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                chunks += 1;
            }
        }
    }
    let done = Instant::now();
    Gen {
        total: done - started,
        decode: last - first.unwrap_or(started),
        tokens: chunks.max(1),
    }
}
