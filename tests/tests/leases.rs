//! Leases on the model key, with the real binaries on 127.0.0.1: `veil broker --lease`
//! releases the key for a few seconds at a time, `veil-server --key-broker URL` renews it
//! with fresh evidence, and stops serving (engine stopped, weights wiped) when the owner
//! revokes the key or the broker is gone past the grace; `veil provision --lease` does the
//! same for the push flow.

use std::path::Path;
use std::time::{Duration, Instant};

use veil_sealing::ModelKey;
use veil_tests::harness::{fetch, keys_dir, text, veil, Broker, Fixture, Server};
use veil_tests::raw::metric;

/// How long a server may take to get its key and load the model.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn key_id(f: &Fixture) -> String {
    ModelKey::read_key_file(&f.key)
        .expect("the key file reads")
        .key_id()
        .to_string()
}

fn plaintext_len(f: &Fixture) -> u64 {
    veil_sealing::read_header(&std::fs::File::open(&f.model).expect("sealed"))
        .expect("the sealed header parses")
        .plaintext_len
}

/// `veil ask` through appraisal under `policy`, streamed; its output.
fn ask(server: &Server, policy: &Path, max_tokens: &str) -> std::process::Output {
    veil(&[
        "ask",
        server.url(),
        "--policy",
        &policy.display().to_string(),
        "--max-tokens",
        max_tokens,
        "Hello",
    ])
}

/// Asserts that the server locked for `code` and wiped every byte of the weights, as its
/// own wipe counted them; that inference answers 503 with that code.
fn assert_locked_and_wiped(f: &Fixture, server: &Server, code: &str) {
    // Locked at once; the wipe follows once the engine has stopped.
    let ready = server.wait_ready(READY_TIMEOUT, "wiped", |r| r["weights_wiped"] == true);
    assert_eq!(ready["state"], "locked", "{ready}");
    assert_eq!(ready["reason"], code, "{ready}");
    assert!(ready.get("lease").is_none(), "no lease is held: {ready}");
    assert_eq!(
        metric(server, "veil_model_wiped_bytes"),
        plaintext_len(f),
        "every byte of the weights' memfd was overwritten"
    );
    assert_eq!(
        metric(server, "veil_model_wipe_nonzero_bytes"),
        0,
        "and read back as zeros"
    );
    assert_eq!(
        metric(
            server,
            &format!("veil_lease_locks_total{{reason=\"{code}\"}}")
        ),
        1
    );
    let (status, body) = fetch(server.url(), "GET", "/v1/models");
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(body["error"]["code"], code, "{body}");
    let log = server.log();
    assert!(log.contains("weights wiped"), "server log:\n{log}");
}

#[test]
fn a_short_lease_renews_under_load_revocation_locks_and_wipes_and_undoing_it_brings_it_back() {
    let f = Fixture::new();
    let policy = f.good_policy();
    let keys = keys_dir(&f, "owner", &f.key);
    let broker = Broker::start_with(
        &policy,
        &keys,
        &["--lease", "4s", "--lease-grace", "2s"],
        &f.path("broker.log"),
    );
    let server = f.start(&["--key-broker", &broker.url]);
    let ready = server.wait_ready(READY_TIMEOUT, "pull", |r| r["state"] == "ready");
    assert_eq!(ready["lease"]["ttl_s"], 4, "{ready}");
    assert_eq!(ready["lease"]["grace_s"], 2, "{ready}");

    // Streamed answers, two at a time, while the lease renews (every 2 s) at least twice:
    // none is cut.
    let started = Instant::now();
    let mut answered = 0;
    while metric(&server, "veil_lease_renewals_total") < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no two renewals; server log:\n{}",
            server.log()
        );
        let outputs = std::thread::scope(|s| {
            let a = s.spawn(|| ask(&server, &policy, "48"));
            let b = s.spawn(|| ask(&server, &policy, "48"));
            [a.join().expect("ask"), b.join().expect("ask")]
        });
        for o in outputs {
            assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        }
        answered += 2;
    }
    assert!(answered >= 2);
    assert_eq!(
        metric(&server, "veil_lease_locks_total{reason=\"lease_revoked\"}"),
        0
    );

    // The owner revokes the key: the server locks by its next renewal (every 2 s).
    let id = key_id(&f);
    let keys_arg = keys.display().to_string();
    let o = veil(&["broker", "revoke", &id, "--keys", &keys_arg]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let revoked = Instant::now();
    server.wait_ready(READY_TIMEOUT, "revoked", |r| r["state"] == "locked");
    let took = revoked.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "locked {took:?} after the revocation, more than a renewal period and a margin"
    );
    assert_locked_and_wiped(&f, &server, "lease_revoked");
    let o = ask(&server, &policy, "4");
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("lease_revoked"), "{}", text(&o));

    // Revoked keys are refused to a fresh pull too, naming why.
    let ready = server.wait_ready(READY_TIMEOUT, "refused", |r| {
        r["key_broker"]
            .as_str()
            .is_some_and(|s| s.contains("key_revoked"))
    });
    assert_eq!(ready["state"], "locked", "{ready}");

    // The owner takes the revocation back: the next pull brings the server back to Ready.
    let o = veil(&["broker", "revoke", &id, "--keys", &keys_arg, "--undo"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let ready = server.wait_ready(READY_TIMEOUT, "back", |r| r["state"] == "ready");
    assert_eq!(ready["lease"]["ttl_s"], 4, "{ready}");
    let o = ask(&server, &policy, "4");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn a_server_whose_broker_is_gone_past_the_grace_locks_with_lease_expired() {
    let f = Fixture::new();
    let keys = keys_dir(&f, "owner", &f.key);
    let broker = Broker::start_with(
        &f.good_policy(),
        &keys,
        &["--lease", "3s", "--lease-grace", "1s"],
        &f.path("broker.log"),
    );
    let server = f.start(&["--key-broker", &broker.url]);
    server.wait_ready(READY_TIMEOUT, "pull", |r| r["state"] == "ready");
    drop(broker);
    let gone = Instant::now();
    server.wait_ready(READY_TIMEOUT, "expired", |r| r["state"] == "locked");
    let took = gone.elapsed();
    // Renewed at most 1.5 s before the broker went: locked within ttl + grace of that.
    assert!(
        took <= Duration::from_secs(6),
        "locked {took:?} after the broker went"
    );
    assert_locked_and_wiped(&f, &server, "lease_expired");
    assert!(
        server.log().contains("lease not renewed"),
        "server log:\n{}",
        server.log()
    );
}

#[test]
fn a_pushed_lease_is_renewed_by_provisioning_again_and_expires_without() {
    let f = Fixture::new();
    let server = f.start(&[]);
    let provision = || {
        f.provision_with(
            &server,
            &["--lease", "3s", "--lease-grace", "1s", "--wait", "60"],
        )
    };
    let o = provision();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("key leased for 3 s"), "{}", text(&o));
    let ready = server.ready();
    assert_eq!(ready["state"], "ready", "{ready}");
    assert_eq!(ready["lease"]["ttl_s"], 3, "{ready}");
    let o = provision();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(server.ready()["lease"]["renewals"], 1);
    assert_eq!(metric(&server, "veil_lease_renewals_total"), 1);
    // Nobody provisions again: after 3 s and 1 s of grace the server locks.
    server.wait_ready(READY_TIMEOUT, "expired", |r| r["state"] == "locked");
    assert_locked_and_wiped(&f, &server, "lease_expired");
    // And a key for good brings it back.
    let o = f.provision(&server);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let ready = server.ready();
    assert_eq!(ready["state"], "ready", "{ready}");
    assert!(ready.get("lease").is_none(), "{ready}");
}
