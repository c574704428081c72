//! Receipts end to end, with the real binaries on loopback, the mock TEE and the tiny
//! model: `veil ask --receipt` keeps a bundle that `veil receipt verify` accepts offline;
//! a changed request or response byte, another launch's evidence, a forged signature or
//! a policy that refuses the launch is refused, naming the check; a server started with
//! `--no-receipts` gives none and `veil ask --receipt` says so.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value;
use veil_tests::harness::{failed_checks, text, veil, Fixture};

/// `veil ask URL --policy P --max-tokens N --receipt OUT hello`.
fn ask(url: &str, policy: &Path, max_tokens: u32, out: &Path) -> std::process::Output {
    veil(&[
        "ask",
        url,
        "--policy",
        &policy.display().to_string(),
        "--max-tokens",
        &max_tokens.to_string(),
        "--receipt",
        &out.display().to_string(),
        "hello",
    ])
}

/// [`ask`] for 8 tokens, which must succeed; the printed answer.
fn ask_with_receipt(url: &str, policy: &Path, out: &Path) -> String {
    let o = ask(url, policy, 8, out);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("verified and written to"),
        "{}",
        text(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `veil receipt verify BUNDLE --policy P EXTRA…`.
fn verify(bundle: &Path, policy: &Path, extra: &[&str]) -> std::process::Output {
    let b = bundle.display().to_string();
    let p = policy.display().to_string();
    let mut args = vec!["receipt", "verify", &b, "--policy", &p];
    args.extend_from_slice(extra);
    veil(&args)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("the bundle is written")).expect("JSON")
}

fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(v).expect("JSON")).expect("written");
}

fn decode(v: &Value) -> Vec<u8> {
    STANDARD
        .decode(v.as_str().expect("a string"))
        .expect("base64")
}

/// The receipt payload of a bundle, parsed (unchecked).
fn payload(bundle: &Value) -> Value {
    let compact = bundle["receipt"].as_str().expect("a compact receipt");
    let (p, _) = compact.split_once('.').expect("payload.signature");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(p)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON payload")
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

#[test]
fn an_asked_answer_keeps_a_receipt_that_verifies_offline_and_names_any_change() {
    let f = Fixture::new();
    let (server, policy) = f.start_provisioned(&[]);
    let bundle_path = f.path("answer.json");
    let answer = ask_with_receipt(server.url(), &policy, &bundle_path);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&bundle_path)
            .expect("bundle")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "a bundle holds the prompt and the answer"
        );
    }

    let o = verify(&bundle_path, &policy, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("RECEIPT VERIFIED (MOCK)"), "{out}");
    assert!(out.contains("MOCK evidence"), "{out}");

    // What the receipt states is what was asked and answered.
    let bundle = read_json(&bundle_path);
    let r = payload(&bundle);
    assert_eq!(r["model_sha256"], hex::encode(f.model_sha256), "{r:#}");
    assert_eq!(r["route"], "/v1/chat/completions", "{r:#}");
    assert_eq!(r["sampling"]["max_tokens"], 8, "{r:#}");
    let request = decode(&bundle["request"]);
    assert_eq!(r["request_sha256"], sha256_hex(&request), "{r:#}");
    let sent: Value = serde_json::from_slice(&request).expect("the request is JSON");
    let last = sent["messages"]
        .as_array()
        .and_then(|m| m.last())
        .expect("messages");
    assert_eq!(last["content"], "hello", "{sent:#}");
    // The streamed text is the concatenated deltas; `veil ask` printed exactly them.
    let response = decode(&bundle["response"]);
    let stream = veil_client::receipt::parse_stream(&response).expect("an SSE stream");
    assert_eq!(
        answer.trim_end(),
        stream.text.trim_end(),
        "printed = streamed"
    );
    assert_eq!(
        r["text_sha256"],
        sha256_hex(stream.text.as_bytes()),
        "{r:#}"
    );
    assert_eq!(
        stream.receipt.as_deref(),
        bundle["receipt"].as_str(),
        "the stream's last chunk carried the receipt"
    );
    assert!(
        String::from_utf8_lossy(&response)
            .trim_end()
            .ends_with("data: [DONE]"),
        "the receipt's chunk comes before [DONE]"
    );
    assert_eq!(
        server
            .metrics()
            .lines()
            .find(|l| l.starts_with("veil_receipts_total ")),
        Some("veil_receipts_total 1")
    );

    // A changed byte of the request, then of the response: the check that fails is named.
    let mut changed = request.clone();
    let at = changed.iter().position(|&b| b == b'h').expect("the prompt");
    changed[at] = b'j';
    std::fs::write(f.path("request.json"), &changed).expect("written");
    let o = verify(
        &bundle_path,
        &policy,
        &["--request", &f.path("request.json").display().to_string()],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(failed_checks(&o), ["request"], "{}", text(&o));

    let mut changed = response.clone();
    let text_at = changed
        .windows(11)
        .position(|w| w == b"\"content\":\"")
        .expect("a content delta")
        + 11;
    changed[text_at] ^= 0x01;
    std::fs::write(f.path("response.txt"), &changed).expect("written");
    let o = verify(
        &bundle_path,
        &policy,
        &["--response", &f.path("response.txt").display().to_string()],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(failed_checks(&o), ["response"], "{}", text(&o));
    // The bundle's own bytes, and the files holding them, still verify.
    std::fs::write(f.path("request.json"), &request).expect("written");
    std::fs::write(f.path("response.txt"), &response).expect("written");
    let o = verify(
        &bundle_path,
        &policy,
        &[
            "--request",
            &f.path("request.json").display().to_string(),
            "--response",
            &f.path("response.txt").display().to_string(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // A policy that does not accept this launch refuses the evidence (and so the rest).
    let o = verify(&bundle_path, &f.other_launch_policy(), &["--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON verdict");
    assert_eq!(v["verified"], false, "{v:#}");
    let failed: Vec<_> = v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["status"] == "failed")
        .map(|c| c["check"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(failed, ["evidence"], "{v:#}");
    assert!(
        v["checks"][1]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("measurement"),
        "{v:#}"
    );

    // A changed byte of the receipt's signature.
    let mut forged = bundle.clone();
    let compact = bundle["receipt"].as_str().expect("receipt").to_owned();
    let (p, s) = compact.split_once('.').expect("compact");
    let mut sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .expect("b64");
    sig[0] ^= 0x01;
    forged["receipt"] = format!(
        "{p}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig)
    )
    .into();
    write_json(&f.path("forged.json"), &forged);
    let o = verify(&f.path("forged.json"), &policy, &[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(failed_checks(&o), ["signature", "response"], "{}", text(&o));

    // The session values are the client's: another nonce fails the evidence's binding.
    let mut moved = bundle.clone();
    moved["session"]["nonce"] = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode([7u8; 32])
        .into();
    write_json(&f.path("moved.json"), &moved);
    let o = verify(&f.path("moved.json"), &policy, &[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(failed_checks(&o), ["evidence"], "{}", text(&o));
    assert!(text(&o).contains("report_data"), "{}", text(&o));

    // Not a bundle at all: an error that names the file, not a panic.
    std::fs::write(f.path("junk.json"), b"{\"format\":1}").expect("written");
    let o = verify(&f.path("junk.json"), &policy, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("junk.json"), "{}", text(&o));
}

#[test]
fn a_receipt_verifies_only_under_the_evidence_of_the_launch_that_signed_it() {
    let f = Fixture::new();
    let (a, policy) = f.start_provisioned(&[]);
    let (b, _) = f.start_provisioned(&[]);
    let (pa, pb) = (f.path("a.json"), f.path("b.json"));
    ask_with_receipt(a.url(), &policy, &pa);
    ask_with_receipt(b.url(), &policy, &pb);
    // Both launches are measured alike and both pass the policy; their receipt keys differ.
    let (ba, bb) = (read_json(&pa), read_json(&pb));
    assert_ne!(
        ba["evidence"]["binding"]["receipt_pk"], bb["evidence"]["binding"]["receipt_pk"],
        "each launch makes its own receipt key"
    );
    let mut swapped = ba.clone();
    swapped["evidence"] = bb["evidence"].clone();
    swapped["session"] = bb["session"].clone();
    write_json(&f.path("swapped.json"), &swapped);
    let o = verify(&f.path("swapped.json"), &policy, &[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(failed_checks(&o), ["signature"], "{}", text(&o));
    // The evidence alone, without its session, does not verify either.
    let mut half = ba.clone();
    half["evidence"] = bb["evidence"].clone();
    write_json(&f.path("half.json"), &half);
    let o = verify(&f.path("half.json"), &policy, &[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(failed_checks(&o), ["evidence"], "{}", text(&o));
}

#[test]
fn a_server_without_receipts_binds_none_and_ask_receipt_says_so() {
    let f = Fixture::new();
    let (server, policy) = f.start_provisioned(&["--no-receipts"]);
    let out = f.path("none.json");
    let o = ask(server.url(), &policy, 4, &out);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("no receipt"), "{}", text(&o));
    assert!(!out.exists(), "nothing written");
    // Without --receipt the same server answers as before.
    let o = veil(&[
        "ask",
        server.url(),
        "--policy",
        &policy.display().to_string(),
        "--max-tokens",
        "4",
        "hello",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = veil(&[
        "verify",
        server.url(),
        "--policy",
        &policy.display().to_string(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        !server.metrics().contains("veil_receipts_total 1"),
        "{}",
        server.metrics()
    );
}
