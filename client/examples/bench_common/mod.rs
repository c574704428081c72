//! What the end-to-end benchmarks share: the release binaries beside the example, a
//! mock platform with the model sealed on it and the owner's policy for one launch
//! address, and servers started there.

#![allow(dead_code)] // each benchmark uses its part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use veil_attestation::mock::MockLaunch;
use veil_attestation::{Certificate, Policy};
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
        let mut child = Command::new(bin("veil-server"))
            .arg("--model")
            .arg(self.path("m.veil"))
            .args(["--tee", "mock", "--mock-platform"])
            .arg(self.path("platform"))
            .args(["--listen", &self.listen, "--threads", &threads.to_string()])
            .args(extra)
            .env("VEIL_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("veil-server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("banner");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("https://"))
            .expect("url")
            .to_owned();
        (Server(child), url)
    }
}
