//! The real `veil` and `veil-server` binaries on 127.0.0.1, with the mock TEE and the tiny
//! model: a sealed model and a mock platform in a temporary directory ([`Fixture`]), a
//! server that is killed when dropped ([`Server`]), policies, and reads of the server's
//! `/metrics` and `/ready` over TLS.
//!
//! Everything is bounded in time: commands are killed after [`COMMAND_TIMEOUT`], a server
//! that prints no banner within [`START_TIMEOUT`] is killed, and every request over TLS
//! gives up after [`REQUEST_TIMEOUT`]. Nothing leaves the loopback interface.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use veil_attestation::{Certificate, MockLaunch};
use veil_client::pin::PinMode;
use veil_client::remote::{danger, Target};

/// The longest a `veil` command may run before it is killed and the test fails.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest a server may take to print its banner.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest one request over TLS may take (connect, handshake, answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The listen address every test server is started with (port 0: the kernel picks one).
/// It is part of the mock launch measurement.
pub const LISTEN: &str = "127.0.0.1:0";
/// The seed of the tiny model's random weights.
pub const MODEL_SEED: u64 = 5;

/// The path of a binary of this workspace (`veil`, `veil-server`), beside the test
/// executable: `target/debug/deps/<test>` → `target/debug/<name>`.
///
/// # Panics
/// If the binary has not been built.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable is in target/<profile>/deps");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo test --workspace`, which builds the veil and veil-server binaries",
        path.display()
    );
    path
}

fn drain(mut reader: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = reader.read_to_end(&mut out);
        out
    })
}

/// Runs a command to completion with its output captured, killing it after `timeout`.
///
/// # Panics
/// If it cannot be started or runs past `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = drain(child.stdout.take().expect("stdout is piped"));
    let stderr = drain(child.stderr.take().expect("stderr is piped"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().expect("the stdout reader does not panic"),
        stderr: stderr.join().expect("the stderr reader does not panic"),
    }
}

/// Runs `veil ARGS…` (bounded by [`COMMAND_TIMEOUT`]).
pub fn veil(args: &[&str]) -> Output {
    run(Command::new(binary("veil")).args(args), COMMAND_TIMEOUT)
}

/// Stdout and stderr of a command, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The names of the checks that a `veil verify|provision|ask` verdict table marks failed
/// (`  ✗ name  detail`), in order: on stdout (`verify`, `provision`) or stderr (`ask`,
/// `chat`, `proxy`, whose stdout is the answer).
pub fn failed_checks(o: &Output) -> Vec<String> {
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    out.lines()
        .chain(err.lines())
        .filter_map(|line| line.trim_start().strip_prefix("✗ "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The mock launch measurement of `veil-server` run as `exe`, listening on `listen`, for
/// the sealed model whose digest is `model_sha256`: what a policy's `measurements` lists.
pub fn measurement(exe: &Path, listen: &str, model_sha256: &[u8; 32], debug: bool) -> [u8; 48] {
    let bytes = std::fs::read(exe).unwrap_or_else(|e| panic!("cannot read {}: {e}", exe.display()));
    let mut launch = MockLaunch::server(&bytes, listen, model_sha256);
    launch.debug = debug;
    launch.measurement()
}

/// Creates a mock platform in `dir` with `veil mock-platform init` and returns the
/// fingerprint of its root (what a policy's `mock_roots` lists).
pub fn mock_platform(dir: &Path) -> String {
    let o = veil(&["mock-platform", "init", &dir.display().to_string()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let pem = std::fs::read(dir.join("ark.pem")).expect("the platform has a root");
    Certificate::from_pem(&pem)
        .expect("the root parses")
        .fingerprint()
}

/// A policy file for the mock TEE: these roots, these measurements, nothing else.
pub fn write_policy(path: &Path, mock_roots: &[&str], measurements: &[[u8; 48]]) {
    let quoted = |items: Vec<String>| {
        items
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let toml = format!(
        "tee = [\"mock\"]\nmock_roots = [{}]\nmeasurements = [{}]\n",
        quoted(mock_roots.iter().map(|s| (*s).to_owned()).collect()),
        quoted(measurements.iter().map(hex::encode).collect()),
    );
    std::fs::write(path, toml).expect("the policy is written");
}

/// One request over a fresh TLS connection that accepts any certificate (no appraisal):
/// for reading a server's health and metrics, or its evidence as an attacker would.
///
/// # Panics
/// If the server cannot be reached within [`REQUEST_TIMEOUT`].
pub fn fetch(url: &str, method: &str, path: &str) -> (u16, Vec<u8>) {
    let target = Target::parse(url).expect("a valid https URL");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        tokio::time::timeout(REQUEST_TIMEOUT, async {
            let mut session = danger::connect(&target, PinMode::Capture).await?;
            let (status, body) = session.fetch(method, path, None).await?;
            anyhow::Ok((status.as_u16(), body.to_vec()))
        })
        .await
        .unwrap_or_else(|_| panic!("{method} {url}{path}: no answer within {REQUEST_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{method} {url}{path}: {e:#}"))
    })
}

/// Starts `command` with its stderr in `log` and waits for the first line it prints on
/// stdout to name a URL starting with `scheme` (`https://`, `http://`); returns the child
/// and that URL. Stdout is read on to the end, so the child never writes into a closed pipe.
///
/// # Panics
/// If it cannot be started, or names no such URL within [`START_TIMEOUT`] (it is then
/// killed, and its log is in the message).
pub fn spawn_announced(command: &mut Command, scheme: &str, log: &Path) -> (Child, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("the log file is created"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let banner = rx.recv_timeout(START_TIMEOUT).unwrap_or_default();
    match banner.split_whitespace().find(|w| w.starts_with(scheme)) {
        Some(url) => (child, url.to_owned()),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command:?} printed no {scheme} URL within {START_TIMEOUT:?} (banner {banner:?}); log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        }
    }
}

/// A running `veil-server`, killed (and waited for) when dropped.
#[derive(Debug)]
pub struct Server {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Server {
    /// Starts `exe --model MODEL --tee mock --mock-platform PLATFORM --listen 127.0.0.1:0
    /// --parallel 2 --context 256 EXTRA…`, with its log (stderr) in `log`, and waits for its
    /// banner.
    ///
    /// # Panics
    /// If it does not print its URL within [`START_TIMEOUT`] (the log is in the message).
    pub fn start(exe: &Path, model: &Path, platform: &Path, extra: &[&str], log: &Path) -> Server {
        Server::start_at(exe, model, platform, LISTEN, extra, log)
    }

    /// As [`Server::start`], listening on `listen`.
    ///
    /// # Panics
    /// As [`Server::start`].
    pub fn start_at(
        exe: &Path,
        model: &Path,
        platform: &Path,
        listen: &str,
        extra: &[&str],
        log: &Path,
    ) -> Server {
        let mut command = Command::new(exe);
        command
            .arg("--model")
            .arg(model)
            .args(["--tee", "mock", "--mock-platform"])
            .arg(platform)
            .args(["--listen", listen, "--parallel", "2", "--context", "256"])
            .args(extra);
        let (child, url) = spawn_announced(&mut command, "https://", log);
        Server {
            child,
            url,
            log: log.to_owned(),
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /metrics` (Prometheus text).
    pub fn metrics(&self) -> String {
        let (status, body) = fetch(&self.url, "GET", "/metrics");
        assert_eq!(status, 200, "GET /metrics");
        String::from_utf8(body).expect("metrics are text")
    }

    /// The metrics lines counting requests to `POST /v1/provision` (none if no provisioning
    /// request ever reached the server, whatever its outcome).
    pub fn provision_requests(&self) -> Vec<String> {
        self.metrics()
            .lines()
            .filter(|l| l.contains("route=\"/v1/provision\""))
            .map(str::to_owned)
            .collect()
    }

    /// The body of `GET /ready`: `{"state": …}`, with `reason` when failed.
    pub fn ready(&self) -> serde_json::Value {
        let (_, body) = fetch(&self.url, "GET", "/ready");
        serde_json::from_slice(&body).expect("/ready answers JSON")
    }

    /// Polls `/ready` every 100 ms until `done` holds for its body, and returns it.
    ///
    /// # Panics
    /// If it does not within `timeout` (`what` and the server's log are in the message).
    pub fn wait_ready(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let ready = self.ready();
            if done(&ready) {
                return ready;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: /ready is still {ready} after {timeout:?}; server log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Asserts that no provisioning request reached this server and that it is still
    /// locked: the model key never arrived.
    ///
    /// # Panics
    /// If the server counted a request to `/v1/provision`, or is not locked.
    pub fn assert_never_provisioned(&self) {
        let seen = self.provision_requests();
        assert!(
            seen.is_empty(),
            "the server saw provisioning requests: {seen:?}"
        );
        assert_eq!(self.ready()["state"], "locked", "the server is not locked");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory holding the tiny model sealed with `veil seal`, its key file and a
/// mock platform; servers started from it log into it.
#[derive(Debug)]
pub struct Fixture {
    dir: tempfile::TempDir,
    /// The sealed model.
    pub model: PathBuf,
    /// Its key file.
    pub key: PathBuf,
    /// The mock platform directory.
    pub platform: PathBuf,
    /// The fingerprint of the mock platform's root.
    pub root: String,
    /// The sealed model's plaintext SHA-256, from its header.
    pub model_sha256: [u8; 32],
    servers: AtomicUsize,
}

impl Fixture {
    /// Seals the tiny model ([`MODEL_SEED`]) and creates a mock platform.
    ///
    /// # Panics
    /// If `veil seal` or `veil mock-platform init` fails.
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let plain = dir.path().join("tiny.gguf");
        std::fs::write(&plain, veil_model::tiny::gguf(MODEL_SEED)).expect("the model is written");
        let model = dir.path().join("tiny.veil");
        let key = dir.path().join("tiny.key");
        let o = veil(&[
            "seal",
            &plain.display().to_string(),
            "-o",
            &model.display().to_string(),
            "--key-out",
            &key.display().to_string(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let header = veil_sealing::read_header(&std::fs::File::open(&model).expect("sealed"))
            .expect("the sealed header parses");
        let platform = dir.path().join("platform");
        let root = mock_platform(&platform);
        Fixture {
            model,
            key,
            platform,
            root,
            model_sha256: header.model_sha256,
            servers: AtomicUsize::new(0),
            dir,
        }
    }

    /// A path inside the fixture's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts the workspace's `veil-server` on the fixture's model and platform.
    pub fn start(&self, extra: &[&str]) -> Server {
        self.start_with(&binary("veil-server"), &self.model, extra)
    }

    /// Starts `exe` (a `veil-server`) on `model` and the fixture's platform.
    pub fn start_with(&self, exe: &Path, model: &Path, extra: &[&str]) -> Server {
        let n = self.servers.fetch_add(1, Ordering::Relaxed);
        let log = self.path(&format!("server-{n}.log"));
        Server::start(exe, model, &self.platform, extra, &log)
    }

    /// Starts the workspace's `veil-server` listening on `listen` (e.g. a fixed port, so
    /// that a restarted server is found at the same URL).
    pub fn start_at(&self, listen: &str, extra: &[&str]) -> Server {
        let n = self.servers.fetch_add(1, Ordering::Relaxed);
        let log = self.path(&format!("server-{n}.log"));
        Server::start_at(
            &binary("veil-server"),
            &self.model,
            &self.platform,
            listen,
            extra,
            &log,
        )
    }

    /// The measurement of `exe` launched as the test servers are ([`LISTEN`], this model).
    pub fn measurement_of(&self, exe: &Path, debug: bool) -> [u8; 48] {
        measurement(exe, LISTEN, &self.model_sha256, debug)
    }

    /// Writes `NAME` in the fixture's directory: a policy trusting this platform's root and
    /// these measurements.
    pub fn policy(&self, name: &str, measurements: &[[u8; 48]]) -> PathBuf {
        let path = self.path(name);
        write_policy(&path, &[&self.root], measurements);
        path
    }

    /// The owner's policy: this root, and the workspace's `veil-server` launched as the
    /// test servers are, without debug.
    pub fn good_policy(&self) -> PathBuf {
        let m = self.measurement_of(&binary("veil-server"), false);
        self.policy("good.toml", &[m])
    }

    /// A policy for the workspace's `veil-server` launched with another configuration
    /// (`--listen 0.0.0.0:8443`) than the test servers: they fail its `measurement`.
    pub fn other_launch_policy(&self) -> PathBuf {
        let m = measurement(
            &binary("veil-server"),
            "0.0.0.0:8443",
            &self.model_sha256,
            false,
        );
        self.policy("other-launch.toml", &[m])
    }

    /// Starts the workspace's `veil-server` with `extra` and provisions it as the owner
    /// under [`Fixture::good_policy`] (`veil provision`, which waits for Ready); returns
    /// the server and the policy's path.
    ///
    /// # Panics
    /// If the server does not start or `veil provision` fails.
    pub fn start_provisioned(&self, extra: &[&str]) -> (Server, PathBuf) {
        let server = self.start(extra);
        let o = self.provision(&server);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        (server, self.good_policy())
    }

    /// `veil provision URL --policy GOOD --key KEY` against `server`, as the owner, within
    /// [`COMMAND_TIMEOUT`]: its output, whatever the outcome.
    pub fn provision(&self, server: &Server) -> Output {
        self.provision_with(server, &[])
    }

    /// `veil provision` as [`Fixture::provision`], with `extra` arguments (`--lease 3s`).
    pub fn provision_with(&self, server: &Server, extra: &[&str]) -> Output {
        let (policy, key) = (self.good_policy().display().to_string(), self.key_arg());
        let mut args = vec![
            "provision",
            server.url(),
            "--policy",
            &policy,
            "--key",
            &key,
        ];
        args.extend_from_slice(extra);
        veil(&args)
    }

    /// The key file as a string argument.
    pub fn key_arg(&self) -> String {
        self.key.display().to_string()
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture::new()
    }
}

/// A running `veil broker`, killed when dropped.
pub struct Broker {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    log: PathBuf,
}

impl Broker {
    /// `veil broker --policy POLICY --keys KEYS --listen 127.0.0.1:0`.
    pub fn start(policy: &Path, keys: &Path, log: &Path) -> Broker {
        Broker::start_in(Command::new(binary("veil")), &[], policy, keys, log)
    }

    /// `veil broker --policy POLICY --keys KEYS --listen 127.0.0.1:0 EXTRA…`.
    pub fn start_with(policy: &Path, keys: &Path, extra: &[&str], log: &Path) -> Broker {
        Broker::start_in(Command::new(binary("veil")), extra, policy, keys, log)
    }

    /// The same as [`Broker::start`], under a limit of `limit` open descriptors, soft and hard (so raising the
    /// soft limit to the hard one gains nothing).
    pub fn start_with_descriptor_limit(
        limit: u32,
        policy: &Path,
        keys: &Path,
        log: &Path,
    ) -> Broker {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
            .arg(binary("veil"));
        Broker::start_in(command, &[], policy, keys, log)
    }

    /// `command broker --policy POLICY --keys KEYS --listen 127.0.0.1:0 EXTRA…`.
    pub fn start_in(
        mut command: Command,
        extra: &[&str],
        policy: &Path,
        keys: &Path,
        log: &Path,
    ) -> Broker {
        command
            .arg("broker")
            .arg("--policy")
            .arg(policy)
            .arg("--keys")
            .arg(keys)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra);
        let (child, url) = spawn_announced(&mut command, "http://", log);
        Broker {
            child,
            url,
            log: log.to_owned(),
        }
    }

    /// Its process id (to signal it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it printed to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One plain HTTP/1.1 request; the status and body.
    pub fn request(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let addr = self.url.trim_start_matches("http://");
        let mut tcp = TcpStream::connect(addr).expect("the broker accepts");
        tcp.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout set");
        write!(
            tcp,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("the request is sent");
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).expect("an answer");
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let json = answer
            .split_once("\r\n\r\n")
            .and_then(|(_, b)| serde_json::from_str(b).ok())
            .unwrap_or(serde_json::Value::Null);
        (status, json)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory holding `key` as `NAME.key`.
pub fn keys_dir(f: &Fixture, name: &str, key: &Path) -> PathBuf {
    let dir = f.path(&format!("{name}-keys"));
    std::fs::create_dir(&dir).expect("the key directory is created");
    std::fs::copy(key, dir.join(format!("{name}.key"))).expect("the key file is copied");
    dir
}
