//! Fault injection against the real `veil-server` on loopback with the mock TEE: the
//! descriptors run out while it unseals, the sealed file is removed or shrunk after start,
//! and an owner's client goes away in the middle of provisioning. Each case must end in a
//! defined state that `/ready` names, within bounded time, never a hang. (A key broker
//! that closes mid-answer is in `broker.rs`, beside the other pull tests.)

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use veil_tests::harness::{binary, text, veil, Fixture, Server};
use veil_tests::raw::{addr, request, runtime, tls_from, HOME, STEP};

/// Polls `/ready` until its state is `state`; the body, or a panic after [`STEP`].
fn wait_state(server: &Server, state: &str) -> serde_json::Value {
    let deadline = Instant::now() + STEP;
    loop {
        let ready = server.ready();
        if ready["state"] == state {
            return ready;
        }
        assert!(
            Instant::now() < deadline,
            "still {ready} after {STEP:?}, not {state}; log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sets the soft open-descriptor limit of process `pid` (the hard one stays: raising it
/// back would need `CAP_SYS_RESOURCE`); the hard limit.
fn set_descriptor_limit(pid: u32, soft: Option<u64>) -> Option<u64> {
    use rustix::process::{prlimit, Pid, Resource, Rlimit};
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let hard = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse().ok());
    let pid = Pid::from_raw(i32::try_from(pid).expect("a pid")).expect("not 0");
    prlimit(
        Some(pid),
        Resource::Nofile,
        Rlimit {
            current: soft.or(hard),
            maximum: hard,
        },
    )
    .expect("prlimit on a child of this process");
    hard
}

#[test]
fn descriptors_running_out_while_unsealing_end_in_failed_with_the_reason_at_ready() {
    let f = Fixture::new();
    let server = f.start(&[]);
    let pid = server.pid();
    // The server's descriptors once they are settled (a probe's connection may still be
    // closing): two listings 200 ms apart that agree.
    let list = || -> Vec<u64> {
        let mut fds: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("/proc/PID/fd")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        fds.sort_unstable();
        fds
    };
    let mut fds = list();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        let again = list();
        if again == fds {
            break;
        }
        fds = again;
    }
    // The limit bounds descriptor numbers, not their count (an inherited descriptor may
    // sit far above the rest): below the second-lowest free number, exactly one is free.
    let limit = (0u64..)
        .filter(|n| !fds.contains(n))
        .nth(1)
        .expect("a second free number");
    // Room for the owner's one connection (attestation, provisioning and /ready all go
    // over it) and nothing more: the memfd the weights go into cannot be made.
    set_descriptor_limit(pid, Some(limit));
    let o = f.provision(&server);
    set_descriptor_limit(pid, None);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("the server failed") && text(&o).contains("Too many open files"),
        "{}",
        text(&o)
    );
    let ready = wait_state(&server, "failed");
    let reason = ready["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("Too many open files"), "{ready}");
    // Failed is final and says so: a second key is not taken.
    let again = f.provision(&server);
    assert_ne!(again.status.code(), Some(0), "{}", text(&again));
    assert_eq!(server.ready()["state"], "failed");
}

#[test]
fn a_sealed_file_removed_after_start_still_unseals_the_one_that_was_attested() {
    let f = Fixture::new();
    let copy = f.path("removed.veil");
    std::fs::copy(&f.model, &copy).expect("copied");
    let server = f.start_with(&binary("veil-server"), &copy, &[]);
    std::fs::remove_file(&copy).expect("removed");
    let o = f.provision(&server);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    wait_state(&server, "ready");
    let o = veil(&[
        "ask",
        server.url(),
        "--policy",
        &f.good_policy().display().to_string(),
        "--max-tokens",
        "2",
        "Hi",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn a_sealed_file_shrunk_after_start_ends_in_failed_with_the_reason_at_ready() {
    let f = Fixture::new();
    let copy = f.path("shrunk.veil");
    std::fs::copy(&f.model, &copy).expect("copied");
    let len = std::fs::metadata(&copy).expect("metadata").len();
    let server = f.start_with(&binary("veil-server"), &copy, &[]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&copy)
        .and_then(|file| file.set_len(len / 2))
        .expect("truncated");
    let o = f.provision(&server);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let ready = wait_state(&server, "failed");
    let reason = ready["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("unsealing failed") && reason.contains("truncated"),
        "{ready}"
    );
    assert!(text(&o).contains(reason), "{}", text(&o));
}

#[test]
fn an_owner_who_goes_away_mid_provisioning_leaves_the_server_locked_and_provisionable() {
    let f = Fixture::new();
    let server = f.start(&[]);
    let to = addr(&server);
    let rt = runtime();
    rt.block_on(async {
        // Evidence asked for, and the connection closed before the answer is read.
        let mut tls = tls_from(HOME, to).await.expect("a connection");
        tls.write_all(b"GET /v1/attestation?nonce=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .expect("sent");
        drop(tls);
        // A provisioning request whose body stops half-way, then the connection closes.
        let mut tls = tls_from(HOME, to).await.expect("a connection");
        tls.write_all(
            b"POST /v1/provision HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n{\"key_id\":\"00",
        )
        .await
        .expect("sent");
        tls.flush().await.expect("flushed");
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(tls);
        // The server still answers on a new connection.
        let mut tls = tls_from(HOME, to).await.expect("a connection");
        let a = request(&mut tls, "GET", "/ready", None)
            .await
            .expect("an answer");
        assert_eq!(a.json()["state"], "locked", "{a:?}");
    });
    assert_eq!(server.ready()["state"], "locked");
    let o = f.provision(&server);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    wait_state(&server, "ready");
}
