//! End to end with the real binaries on 127.0.0.1, the mock TEE and the tiny model:
//! seal → start → verify → provision → ask, and a provision that must send nothing.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

struct Server(Child);
impl Drop for Server {
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

fn server_exe() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_veil")).with_file_name("veil-server");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo test --workspace` (it builds veil-server)",
        p.display()
    );
    p
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
fn seal_start_verify_provision_ask_and_a_refused_provision_sends_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = |name: &str| tmp.path().join(name).display().to_string();
    std::fs::write(p("tiny.gguf"), veil_model::tiny::gguf(5)).expect("model");
    assert_eq!(
        veil(&["mock-platform", "init", &p("platform")])
            .status
            .code(),
        Some(0)
    );
    let o = veil(&[
        "seal",
        &p("tiny.gguf"),
        "-o",
        &p("m.veil"),
        "--key-out",
        &p("m.key"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    let exe = server_exe();
    let mut child = Command::new(&exe)
        .args([
            "--model",
            &p("m.veil"),
            "--tee",
            "mock",
            "--mock-platform",
            &p("platform"),
            "--listen",
            "127.0.0.1:0",
            "--parallel",
            "2",
            "--context",
            "256",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("server starts");
    let stdout = child.stdout.take().expect("stdout");
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("banner");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .expect("url in the banner")
        .to_owned();

    // The owner's policy: this mock root, the measurement of this executable and launch.
    let inspect = veil(&["seal", "--inspect", &p("m.veil"), "--json"]);
    let header: serde_json::Value = serde_json::from_slice(&inspect.stdout).expect("inspect json");
    let sha = header["model_sha256"]
        .as_str()
        .expect("model_sha256")
        .to_owned();
    let measure = |listen: &str| {
        let o = veil(&[
            "mock-platform",
            "measure",
            "--executable",
            &exe.display().to_string(),
            "--config",
            "veil.tee=mock",
            "--config",
            &format!("veil.listen={listen}"),
            "--config",
            &format!("veil.model_sha256={sha}"),
        ]);
        String::from_utf8(o.stdout).expect("utf8").trim().to_owned()
    };
    let root = veil_attestation::Certificate::from_pem(
        &std::fs::read(p("platform/ark.pem")).expect("root"),
    )
    .expect("pem");
    let policy = |m: &str| {
        format!(
            "tee = [\"mock\"]\nmock_roots = [\"{}\"]\nmeasurements = [\"{m}\"]\n",
            root.fingerprint()
        )
    };
    std::fs::write(p("good.toml"), policy(&measure("127.0.0.1:0"))).expect("policy");
    std::fs::write(p("other.toml"), policy(&measure("0.0.0.0:8443"))).expect("policy");

    // A policy expecting another launch: rejected, exit 3, and the key never leaves.
    let o = veil(&[
        "provision",
        &url,
        "--policy",
        &p("other.toml"),
        "--key",
        &p("m.key"),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("✗ measurement"), "{}", text(&o));
    assert!(
        !metrics(&url).contains("route=\"/v1/provision\""),
        "the server saw a provisioning request"
    );

    let o = veil(&["verify", &url, "--policy", &p("good.toml"), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let verdict: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        (verdict["verified"].as_bool(), verdict["mock"].as_bool()),
        (Some(true), Some(true))
    );

    let o = veil(&["ask", &url, "--policy", &p("good.toml"), "hello"]);
    assert_eq!(o.status.code(), Some(1), "locked: {}", text(&o));
    assert!(text(&o).contains("model_locked"), "{}", text(&o));

    let o = veil(&[
        "provision",
        &url,
        "--policy",
        &p("good.toml"),
        "--key",
        &p("m.key"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = veil(&[
        "ask",
        &url,
        "--policy",
        &p("good.toml"),
        "--max-tokens",
        "8",
        "hello",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    drop(server);
}
