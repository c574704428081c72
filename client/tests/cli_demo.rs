//! `veil demo` with the real binaries and the tiny model: the whole flow in one command,
//! and `--keep DIR` leaving a verifiable server running until interrupted.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use veil_tests::harness::{text, veil};

fn tiny_model(dir: &std::path::Path) -> String {
    let path = dir.join("tiny.gguf");
    std::fs::write(&path, veil_model::tiny::gguf(11)).expect("model");
    path.display().to_string()
}

/// Runs `veil demo` on the tiny model with the prompt "hi" and `extra` arguments, asserts
/// that it exits 0, and returns its output.
fn demo_succeeds(extra: &[&str]) -> String {
    let tmp = tempfile::tempdir().expect("tempdir");
    let o = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["demo", "--model", &tiny_model(tmp.path()), "--prompt", "hi"])
        .args(extra)
        .output()
        .expect("veil demo");
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    out
}

#[test]
fn the_demo_verifies_provisions_asks_and_stops_the_server() {
    let out = demo_succeeds(&[]);
    for expected in [
        "✓ measurement",
        "✓ model",
        "✓ report_data",
        "VERIFIED (MOCK)",
        "after the key was released",
        "> hi",
        "server stopped",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(!out.contains('✗'), "{out}");
}

#[test]
fn the_demo_with_pull_gets_the_key_from_the_owners_broker() {
    let out = demo_succeeds(&["--pull"]);
    for expected in [
        "the owner's key broker is at http://127.0.0.1:",
        "The server pulls the key from the owner's key broker",
        "the broker appraised the server's evidence and released the key",
        "> hi",
        "server stopped",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(!out.contains("after the key was released"), "{out}");
    assert!(!out.contains('✗'), "{out}");
}

#[test]
fn demo_keep_leaves_the_files_and_a_running_server_until_interrupted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("kept");
    let mut child = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["demo", "--model", &tiny_model(tmp.path()), "--keep"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("veil demo");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut url = None;
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the demo reaches its prompt");
        if let Some(rest) = line.strip_prefix("The server keeps running at ") {
            url = rest
                .split_whitespace()
                .next()
                .map(|u| u.trim_end_matches('.').to_owned());
        }
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    let url = url.expect("the URL is printed");
    for file in ["platform/ark.pem", "model.veil", "model.key", "policy.toml"] {
        assert!(dir.join(file).is_file(), "{file} kept");
    }
    let policy = dir.join("policy.toml").display().to_string();
    let verify = |url: &str| veil(&["verify", url, "--policy", &policy]);
    let o = verify(&url);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).expect("pid")).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("SIGINT");
    let mut status = None;
    for _ in 0..200 {
        if let Some(s) = child.try_wait().expect("wait") {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let Some(status) = status else {
        let _ = child.kill();
        panic!("the demo did not stop within 10 s of Ctrl-C");
    };
    assert!(status.success(), "{status}");
    let o = verify(&url);
    assert_eq!(o.status.code(), Some(1), "the server is gone: {}", text(&o));
    assert!(
        dir.join("model.veil").is_file(),
        "files stay after the demo"
    );
}
