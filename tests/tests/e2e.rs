//! End to end with the real binaries on 127.0.0.1, the mock TEE and the tiny model:
//! seal → start → verify → provision → ask, and a provision that must send nothing.

use veil_tests::harness::{self, binary, failed_checks, text, veil, Fixture};

#[test]
fn seal_start_verify_provision_ask_and_a_refused_provision_sends_nothing() {
    let f = Fixture::new();
    let server = f.start(&[]);
    let good = f.good_policy().display().to_string();
    // A policy expecting another launch of the same executable.
    let other = f.other_launch_policy().display().to_string();
    let key = f.key_arg();
    let url = server.url();

    // Rejected, exit 3, and the key never leaves.
    let o = veil(&["provision", url, "--policy", &other, "--key", &key]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(failed_checks(&o), ["measurement"], "{}", text(&o));
    server.assert_never_provisioned();

    let o = veil(&["verify", url, "--policy", &good, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let verdict: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        (verdict["verified"].as_bool(), verdict["mock"].as_bool()),
        (Some(true), Some(true)),
        "{verdict:#}"
    );
    assert_eq!(
        verdict["model_sha256"],
        hex::encode(f.model_sha256),
        "{verdict:#}"
    );

    // Verified, but locked: no answer before the key is released.
    let o = veil(&["ask", url, "--policy", &good, "hello"]);
    assert_eq!(o.status.code(), Some(1), "locked: {}", text(&o));
    assert!(text(&o).contains("model_locked"), "{}", text(&o));

    let o = veil(&[
        "provision",
        url,
        "--policy",
        &good,
        "--key",
        &key,
        "--wait",
        "60",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(server.ready()["state"], "ready");

    let o = veil(&["ask", url, "--policy", &good, "--max-tokens", "8", "hello"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let answer = String::from_utf8_lossy(&o.stdout);
    assert!(
        !answer.trim().is_empty(),
        "the streamed answer is empty: {}",
        text(&o)
    );
    let metrics = server.metrics();
    let tokens_out: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("veil_tokens_out_total "))
        .and_then(|n| n.trim().parse().ok())
        .expect("veil_tokens_out_total");
    assert!(tokens_out > 0, "{metrics}");
    // Its log goes to a file here: plain text, no terminal colour codes.
    let log = server.log();
    assert!(log.contains("model unsealed and loaded"), "{log}");
    assert!(!log.contains('\x1b'), "ANSI escapes in a log file: {log:?}");
}

/// `veil_tokens_in_total` of a server.
fn tokens_in(server: &harness::Server) -> u64 {
    counter(server, "veil_tokens_in_total")
}

fn counter(server: &harness::Server, name: &str) -> u64 {
    server
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics"))
}

#[test]
fn chat_sends_the_whole_conversation_each_turn() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let f = Fixture::new();
    let server = f.start(&[]);
    let good = f.good_policy().display().to_string();
    let url = server.url();
    let o = veil(&["provision", url, "--policy", &good, "--key", &f.key_arg()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // One turn alone: the prompt tokens of "hello" with no history.
    let o = veil(&["ask", url, "--policy", &good, "--max-tokens", "4", "hello"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let single = tokens_in(&server);
    assert!(single > 0);

    // The same message twice in a chat: the second turn carries the first exchange.
    let mut child = Command::new(binary("veil"))
        .args(["chat", url, "--policy", &good, "--max-tokens", "4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("veil chat");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"hello\nhello\n/quit\n")
        .expect("write");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "veil chat did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().expect("output");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let chat = tokens_in(&server) - single;
    assert!(
        chat > 2 * single,
        "two turns of {single} prompt tokens each would be {}, the chat sent {chat}: no history",
        2 * single
    );
    // `ask` sends no prompt_cache_key: nothing was reused before the chat. The chat's
    // second turn reused the first turn's prompt (its conversation key).
    let cached = counter(&server, "veil_tokens_cached_total");
    assert!(cached > single / 2 && cached < chat, "{cached} of {chat}");
}

#[test]
fn a_server_started_from_its_launch_configuration_verifies_under_a_policy_pinning_its_host_data() {
    let f = Fixture::new();
    // The operator's side: the configuration file and the HOST_DATA to launch with.
    let conf = f.path("launch.conf");
    let o = veil(&[
        "measure",
        "host-data",
        "--tee",
        "mock",
        "--listen",
        harness::LISTEN,
        "--model",
        &f.model.display().to_string(),
        "-o",
        &conf.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let host_data = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    let parsed = veil_attestation::LaunchConfig::parse(
        &std::fs::read_to_string(&conf).expect("the configuration file"),
    )
    .expect("it parses");
    assert_eq!(hex::encode(parsed.host_data()), host_data);

    let server = f.start(&["--launch-config", &conf.display().to_string()]);
    // The owner pins (measurement, host_data): the same launch passes, another fails on
    // host_data alone.
    let pinned = |name: &str, value: &str| {
        let path = f.good_policy();
        let pinned = f.path(name);
        let toml = std::fs::read_to_string(&path).expect("policy");
        std::fs::write(&pinned, format!("{toml}host_data = [\"{value}\"]\n")).expect("written");
        pinned.display().to_string()
    };
    let o = veil(&[
        "verify",
        server.url(),
        "--policy",
        &pinned("bound.toml", &host_data),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = veil(&[
        "verify",
        server.url(),
        "--policy",
        &pinned("other.toml", &"00".repeat(32)),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(failed_checks(&o), ["host_data"], "{}", text(&o));

    // A flag that contradicts the file stops the server at start.
    let o = harness::run(
        std::process::Command::new(binary("veil-server")).args([
            "--model",
            &f.model.display().to_string(),
            "--mock-platform",
            &f.platform.display().to_string(),
            "--launch-config",
            &conf.display().to_string(),
            "--listen",
            "127.0.0.1:9",
        ]),
        std::time::Duration::from_secs(30),
    );
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("--listen 127.0.0.1:9 contradicts"),
        "{}",
        text(&o)
    );
}
