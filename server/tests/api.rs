//! Handlers without sockets (`Router::oneshot`), on the mock TEE and the tiny model.

mod common;

use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use veil_attestation::binding::{Purpose, Transcript};
use veil_attestation::{Evidence, Expected, KeyRelease, WrappingKey};
use veil_model::EngineConfig;
use veil_sealing::ModelKey;
use veil_server::api::ChannelBinding;
use veil_server::app;
use zeroize::Zeroizing;

use common::{fixture, fixture_custom, fixture_with_model, Fixture};

const EXPORTER: [u8; 32] = [0xE5; 32];

async fn call(f: &Fixture, req: Request<Body>) -> (StatusCode, Value) {
    call_on(f, EXPORTER, req).await
}

/// A request on the TLS connection whose exporter is `exporter` (one binding per
/// exporter, so that report data issued on it is remembered across requests, as on a real
/// connection).
async fn call_on(f: &Fixture, exporter: [u8; 32], req: Request<Body>) -> (StatusCode, Value) {
    static CONNECTIONS: std::sync::LazyLock<
        std::sync::Mutex<std::collections::HashMap<[u8; 32], ChannelBinding>>,
    > = std::sync::LazyLock::new(Default::default);
    let binding = CONNECTIONS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(exporter)
        .or_insert_with(|| ChannelBinding::new(exporter, None))
        .clone();
    let mut req = req;
    req.extensions_mut().insert(binding);
    let resp = app(f.state.clone()).oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned())),
    )
}

/// A response body as text.
async fn body_text(resp: axum::response::Response) -> String {
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf8")
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("request")
}

fn post(uri: &str, body: Value) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

fn chat(max_tokens: u32, stream: bool) -> Value {
    json!({ "model": "veil-tiny", "messages": [{ "role": "user", "content": "hello" }], "max_tokens": max_tokens, "temperature": 0, "stream": stream })
}

/// Attests with a nonce, appraises like a client, and returns the appraisal.
async fn attest(f: &Fixture) -> veil_attestation::Appraisal {
    let nonce = [7u8; 32];
    let (status, body) = call(
        f,
        get(&format!("/v1/attestation?nonce={}", base64_url(&nonce))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let evidence: Evidence = serde_json::from_value(body).expect("evidence");
    let b = evidence.binding.clone().expect("binding");
    let expected = Transcript {
        purpose: Purpose::ClientSession,
        nonce: veil_attestation::Nonce::new(&nonce).expect("nonce"),
        spki_sha256: f.state.spki_sha256(),
        exporter: Some(EXPORTER),
        wrap_pk: b.wrap_pk,
        model_sha256: b.model_sha256,
        receipt_pk: f.state.receipt_pk(),
    };
    f.policy
        .appraise(&evidence, &Expected::new(&expected, SystemTime::now()))
        .expect("evidence verifies")
}

fn base64_url(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

async fn provision(f: &Fixture, key: &ModelKey, wrap_pk: Option<[u8; 32]>) -> (StatusCode, Value) {
    let appraisal = attest(f).await;
    let msg = match wrap_pk {
        None => KeyRelease::seal(&appraisal, &key.key_id().0, key.expose_secret()),
        // To another wrapping key than the one the evidence binds: only the danger path can.
        Some(pk) => veil_attestation::release::danger::seal_unappraised(
            &pk,
            appraisal.report_data(),
            &key.key_id().0,
            key.expose_secret(),
        ),
    }
    .expect("seal");
    call(
        f,
        post("/v1/provision", serde_json::to_value(msg).expect("json")),
    )
    .await
}

async fn wait_ready(f: &Fixture) {
    for _ in 0..200 {
        let (status, body) = call(f, get("/ready")).await;
        if status == StatusCode::OK {
            return;
        }
        assert_ne!(body["state"], "failed", "{body}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never became ready");
}

#[tokio::test]
async fn a_locked_server_answers_health_but_not_inference() {
    let f = fixture(EngineConfig::small());
    assert_eq!(call(&f, get("/health")).await.0, StatusCode::OK);
    let (status, body) = call(&f, get("/ready")).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("locked"))
    );
    let (status, body) = call(&f, post("/v1/chat/completions", chat(4, false))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "model_locked", "{body}");
    assert_eq!(
        call(&f, get("/v1/models")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn evidence_binds_the_nonce_tls_key_exporter_and_model() {
    let f = fixture(EngineConfig::small());
    let appraisal = attest(&f).await;
    assert!(appraisal.is_mock());
    assert_eq!(appraisal.report().host_data(), f.launch.host_data());
    // Bad nonces are refused with the field named.
    for q in [
        "",
        "?nonce=short",
        "?nonce=!!!!",
        &format!("?nonce={}", base64_url(&[0; 65])),
    ] {
        let (status, body) = call(&f, get(&format!("/v1/attestation{q}"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}: {body}");
        assert_eq!(body["error"]["param"], "nonce");
    }
}

#[tokio::test]
async fn attestation_needs_a_tls_channel() {
    let f = fixture(EngineConfig::small());
    let req = get(&format!("/v1/attestation?nonce={}", base64_url(&[1; 32])));
    let resp = app(f.state.clone()).oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn provisioning_with_the_right_key_unseals_and_serves() {
    let f = fixture(EngineConfig::small());
    let key = ModelKey::from_key_file(&f.key.to_key_file()).expect("copy");
    let (status, body) = provision(&f, &key, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    wait_ready(&f).await;
    let (status, body) = call(&f, get("/v1/models")).await;
    assert_eq!(
        (status, body["data"][0]["id"].as_str()),
        (StatusCode::OK, Some("veil-tiny"))
    );
    let (status, body) = call(&f, post("/v1/chat/completions", chat(4, false))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["usage"]["completion_tokens"].as_u64().expect("usage") <= 4);
    assert!(body["choices"][0]["message"]["content"].is_string());
    // The same key again: idempotent.
    let (status, body) = provision(&f, &key, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Streaming: SSE chunks ending in [DONE].
    let req = post(
        "/v1/chat/completions",
        json!({ "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 3, "stream": true, "temperature": 0 }),
    );
    let resp = app(f.state.clone()).oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let chunks = sse_chunks(resp).await;
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let last = chunks.last().expect("chunks");
    assert!(last["choices"][0]["finish_reason"].is_string(), "{last}");
    // Metrics count it.
    let resp = app(f.state.clone())
        .oneshot(get("/metrics"))
        .await
        .expect("infallible");
    let m = body_text(resp).await;
    assert!(m.contains("veil_state{state=\"ready\"} 1"), "{m}");
    assert!(
        m.contains("route=\"/v1/chat/completions\",status=\"200\""),
        "{m}"
    );
}

async fn provision_and_wait(f: &Fixture) {
    let key = ModelKey::from_key_file(&f.key.to_key_file()).expect("copy");
    let (status, body) = provision(f, &key, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    wait_ready(f).await;
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

#[tokio::test]
async fn the_model_id_is_the_seals_name_as_a_slug_or_the_alias() {
    let named = || veil_sealing::SealOptions::default().with_name("My Model v2.gguf");
    let f = fixture_custom(
        EngineConfig::small(),
        &veil_model::tiny::gguf(3),
        named(),
        |b| b,
    );
    let before = unix_now();
    provision_and_wait(&f).await;
    let (status, body) = call(&f, get("/v1/models")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let model = &body["data"][0];
    assert_eq!(model["id"], "my-model-v2", "{body}");
    let created = model["created"].as_u64().expect("created");
    assert!((before..=unix_now()).contains(&created), "{body}");
    let (status, one) = call(&f, get("/v1/models/my-model-v2")).await;
    assert_eq!((status, &one), (StatusCode::OK, model));
    let (status, body) = call(&f, get("/v1/models/veil-tiny")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found", "{body}");
    let mut req = chat(2, false);
    req["model"] = json!("my-model-v2");
    let (status, body) = call(&f, post("/v1/chat/completions", req.clone())).await;
    assert_eq!(
        (status, &body["model"]),
        (StatusCode::OK, &json!("my-model-v2")),
        "{body}"
    );
    req["model"] = json!("veil-tiny");
    let (status, body) = call(&f, post("/v1/chat/completions", req)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let f = fixture_custom(
        EngineConfig::small(),
        &veil_model::tiny::gguf(3),
        named(),
        |b| b.alias(Some("prod-llm".into())),
    );
    provision_and_wait(&f).await;
    let (_, body) = call(&f, get("/v1/models")).await;
    assert_eq!(body["data"][0]["id"], "prod-llm", "{body}");
}

#[tokio::test]
async fn a_text_completion_continues_the_prompt_whole_or_streamed() {
    let f = fixture(EngineConfig::small());
    provision_and_wait(&f).await;
    let req =
        json!({ "model": "veil-tiny", "prompt": "hello there", "max_tokens": 5, "temperature": 0 });
    let (status, body) = call(&f, post("/v1/completions", req.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "text_completion", "{body}");
    assert!(
        body["id"].as_str().is_some_and(|i| i.starts_with("cmpl-")),
        "{body}"
    );
    let text = body["choices"][0]["text"]
        .as_str()
        .expect("text")
        .to_owned();
    let usage = &body["usage"];
    assert!(
        usage["completion_tokens"]
            .as_u64()
            .is_some_and(|n| (1..=5).contains(&n)),
        "{body}"
    );
    assert!(body["choices"][0]["finish_reason"].is_string(), "{body}");
    // Without max_tokens: OpenAI's default of 16.
    let (_, body) = call(
        &f,
        post(
            "/v1/completions",
            json!({ "prompt": "hello", "ignore_eos": true }),
        ),
    )
    .await;
    assert_eq!(body["usage"]["completion_tokens"], 16, "{body}");
    // Streamed: text chunks whose concatenation is the same greedy text, then the finish
    // reason, the usage asked for, [DONE].
    let mut streamed = req;
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({ "include_usage": true });
    let resp = app(f.state.clone())
        .oneshot(post("/v1/completions", streamed))
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    let chunks = sse_chunks(resp).await;
    assert!(
        chunks.iter().all(|c| c["object"] == "text_completion"),
        "{chunks:?}"
    );
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(joined, text, "{chunks:?}");
    let usage_chunk = chunks.last().expect("usage chunk");
    assert_eq!(&usage_chunk["usage"], usage, "{chunks:?}");
    assert!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"].is_string(),
        "{chunks:?}"
    );
    // Refused by name.
    let (status, body) = call(&f, post("/v1/completions", json!({ "prompt": ["a", "b"] }))).await;
    assert_eq!(
        (status, &body["error"]["param"]),
        (StatusCode::BAD_REQUEST, &json!("prompt")),
        "{body}"
    );
    let (status, body) = call(
        &f,
        post(
            "/v1/completions",
            json!({ "prompt": "a", "logit_bias": { "999999": 1 } }),
        ),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["param"]),
        (StatusCode::BAD_REQUEST, &json!("logit_bias")),
        "{body}"
    );
}

#[tokio::test]
async fn a_json_response_format_gives_json_valid_under_the_schema() {
    let f = fixture(EngineConfig::small());
    provision_and_wait(&f).await;
    let schema = json!({
        "type": "object",
        "properties": {
            "ok": { "type": "boolean" },
            "n": { "type": "integer" },
            "kind": { "enum": ["a", "b"] },
            "maybe": { "anyOf": [{ "type": "null" }, { "type": "boolean" }] }
        },
        "required": ["ok", "n", "kind"],
        "additionalProperties": false
    });
    // Random weights, sampled: only the grammar makes this JSON.
    for seed in 1..=3 {
        let req = json!({
            "messages": [{ "role": "user", "content": "hello" }], "max_tokens": 120,
            "temperature": 1.0, "seed": seed,
            "response_format": { "type": "json_schema", "json_schema": { "name": "t", "strict": true, "schema": schema } }
        });
        let (status, body) = call(&f, post("/v1/chat/completions", req)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
        let text = body["choices"][0]["message"]["content"]
            .as_str()
            .expect("content");
        let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        assert!(v["ok"].is_boolean() && v["n"].is_i64(), "{text}");
        assert!(
            ["a", "b"].contains(&v["kind"].as_str().expect("kind")),
            "{text}"
        );
        assert!(v["maybe"].is_null() || v["maybe"].is_boolean(), "{text}");
    }
    let req = json!({
        "messages": [{ "role": "user", "content": "hello" }], "max_tokens": 200, "seed": 9, "temperature": 1.0,
        "response_format": { "type": "json_object" }
    });
    let (status, body) = call(&f, post("/v1/chat/completions", req)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let text = body["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    if body["choices"][0]["finish_reason"] == "stop" {
        let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        assert!(v.is_object(), "{text}");
    } else {
        assert!(text.starts_with('{'), "{text}");
    }
    // A constraint the grammar would not enforce is refused by name.
    let req = json!({
        "messages": [{ "role": "user", "content": "hello" }],
        "response_format": { "type": "json_schema", "json_schema": { "name": "t", "schema": { "type": "string", "maxLength": 3 } } }
    });
    let (status, body) = call(&f, post("/v1/chat/completions", req)).await;
    assert_eq!(
        (status, &body["error"]["param"]),
        (StatusCode::BAD_REQUEST, &json!("response_format")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("maxLength")),
        "{body}"
    );
}

#[tokio::test]
async fn api_keys_guard_the_models_routes_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("api-keys");
    let digest = |k: &str| hex::encode(ring::digest::digest(&ring::digest::SHA256, k.as_bytes()));
    std::fs::write(&path, format!("sha256:{} alice\n", digest("sk-alice"))).expect("write");
    let keys = std::sync::Arc::new(veil_server::auth::ApiKeys::load(&path).expect("keys"));
    let f = fixture_custom(
        EngineConfig::small(),
        &veil_model::tiny::gguf(3),
        veil_sealing::SealOptions::default(),
        |b| b.api_keys(Some(std::sync::Arc::clone(&keys))),
    );
    // Health, readiness, attestation and provisioning need no key.
    assert_eq!(call(&f, get("/health")).await.0, StatusCode::OK);
    assert_eq!(
        call(&f, get("/ready")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    provision_and_wait(&f).await;
    assert_eq!(call(&f, get("/metrics")).await.0, StatusCode::OK);
    let with = |req: Request<Body>, auth: Option<&str>| {
        let mut req = req;
        if let Some(a) = auth {
            req.headers_mut()
                .insert("authorization", a.parse().expect("header"));
        }
        req
    };
    for (auth, want) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("Bearer sk-mallory"), StatusCode::UNAUTHORIZED),
        (Some("Basic sk-alice"), StatusCode::UNAUTHORIZED),
        (Some("Bearer sk-alice"), StatusCode::OK),
    ] {
        for req in [
            get("/v1/models"),
            get("/v1/models/veil-tiny"),
            post("/v1/chat/completions", chat(2, false)),
            post(
                "/v1/completions",
                json!({ "prompt": "hi", "max_tokens": 2 }),
            ),
            post("/v1/embeddings", json!({ "input": "hi" })),
        ] {
            let uri = req.uri().to_string();
            let resp = app(f.state.clone())
                .oneshot(with(req, auth))
                .await
                .expect("infallible");
            assert_eq!(resp.status(), want, "{uri} with {auth:?}");
            if want == StatusCode::UNAUTHORIZED {
                assert_eq!(resp.headers()["www-authenticate"], "Bearer");
                let body: Value = serde_json::from_str(&body_text(resp).await).expect("json");
                assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
                assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
                assert!(!body.to_string().contains("sk-"), "{body}");
            }
        }
    }
    // A reload takes the new keys and drops the old.
    std::fs::write(&path, format!("sha256:{} bob\n", digest("sk-bob"))).expect("write");
    keys.reload().expect("reload");
    let resp = app(f.state.clone())
        .oneshot(with(get("/v1/models"), Some("Bearer sk-alice")))
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = app(f.state.clone())
        .oneshot(with(get("/v1/models"), Some("Bearer sk-bob")))
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_prompt_prefix_is_reused_only_by_the_same_key_and_prompt_cache_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("api-keys");
    let digest = |k: &str| hex::encode(ring::digest::digest(&ring::digest::SHA256, k.as_bytes()));
    std::fs::write(
        &path,
        format!(
            "sha256:{} alice\nsha256:{} bob\n",
            digest("sk-alice"),
            digest("sk-bob")
        ),
    )
    .expect("write");
    let keys = std::sync::Arc::new(veil_server::auth::ApiKeys::load(&path).expect("keys"));
    let f = fixture_custom(
        EngineConfig::small(), // 2 sequences: 2 cached prefixes
        &veil_model::tiny::gguf(3),
        veil_sealing::SealOptions::default(),
        |b| b.api_keys(Some(std::sync::Arc::clone(&keys))),
    );
    provision_and_wait(&f).await;
    // Usage of the same chat sent by `key` with `cache_key`: (prompt, cached) tokens.
    let usage = |key: &'static str, cache_key: Option<&'static str>| {
        let f = &f;
        async move {
            let mut body = chat(2, false);
            if let Some(c) = cache_key {
                body["prompt_cache_key"] = json!(c);
            }
            let mut req = post("/v1/chat/completions", body);
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {key}").parse().expect("header"),
            );
            let resp = app(f.state.clone()).oneshot(req).await.expect("infallible");
            assert_eq!(resp.status(), StatusCode::OK);
            let body: Value = serde_json::from_str(&body_text(resp).await).expect("json");
            let u = &body["usage"];
            (
                u["prompt_tokens"].as_u64().expect("prompt_tokens"),
                u["prompt_tokens_details"]["cached_tokens"]
                    .as_u64()
                    .expect("cached_tokens"),
            )
        }
    };
    let (n, cached) = usage("sk-alice", Some("c1")).await;
    assert_eq!(cached, 0);
    // Bob's requests never reuse Alice's prefix, whatever cache key he sends.
    assert_eq!(usage("sk-bob", Some("c1")).await, (n, 0));
    assert_eq!(usage("sk-alice", Some("c1")).await, (n, n - 1));
    // Without a prompt_cache_key, Alice's requests share her key's own scope.
    assert_eq!(usage("sk-alice", None).await, (n, 0));
    assert_eq!(usage("sk-alice", None).await, (n, n - 1));
}

#[tokio::test]
async fn without_api_keys_only_a_shared_prompt_cache_key_reuses_a_prefix() {
    let f = fixture(EngineConfig::small());
    provision_and_wait(&f).await;
    let cached = |cache_key: Option<&'static str>| {
        let f = &f;
        async move {
            let mut body =
                json!({ "prompt": "one two three four five six seven", "max_tokens": 2 });
            if let Some(c) = cache_key {
                body["prompt_cache_key"] = json!(c);
            }
            let (status, body) = call(f, post("/v1/completions", body)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .expect("cached_tokens")
        }
    };
    assert_eq!([cached(None).await, cached(None).await], [0, 0]);
    assert_eq!(cached(Some("conversation-1")).await, 0);
    assert!(cached(Some("conversation-1")).await > 0);
    assert_eq!(cached(Some("conversation-2")).await, 0);
}

#[tokio::test]
async fn embeddings_as_floats_or_base64_in_openais_shape() {
    let f = fixture(EngineConfig::small());
    // Locked: 503 like every model route.
    let (status, _) = call(&f, post("/v1/embeddings", json!({ "input": "x" }))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    provision_and_wait(&f).await;
    let input = json!(["the first text", "a second one"]);
    let (status, body) = call(&f, post("/v1/embeddings", json!({ "input": input }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "list", "{body}");
    let data = body["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    let floats: Vec<Vec<f32>> = data
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(
                (&d["object"], &d["index"]),
                (&json!("embedding"), &json!(i))
            );
            serde_json::from_value(d["embedding"].clone()).expect("floats")
        })
        .collect();
    assert!(floats[0].len() > 1 && floats[0].len() == floats[1].len());
    assert!(
        body["usage"]["prompt_tokens"]
            .as_u64()
            .is_some_and(|n| n >= 4),
        "{body}"
    );
    let (_, b64) = call(
        &f,
        post(
            "/v1/embeddings",
            json!({ "input": input, "encoding_format": "base64" }),
        ),
    )
    .await;
    use base64::Engine as _;
    let decoded: Vec<f32> = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().expect("base64"))
        .expect("decodes")
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    assert_eq!(decoded, floats[0]);
    for (bad, param) in [
        (json!({ "input": [1, 2] }), "input"),
        (json!({ "input": "x", "dimensions": 3 }), "dimensions"),
        (json!({ "input": "word ".repeat(300) }), "input"),
    ] {
        let (status, body) = call(&f, post("/v1/embeddings", bad)).await;
        assert_eq!(
            (status, &body["error"]["param"]),
            (StatusCode::BAD_REQUEST, &json!(param)),
            "{body}"
        );
    }
}

#[tokio::test]
async fn tools_reach_the_template_and_a_required_call_comes_back_as_tool_calls() {
    let tools = json!([{ "type": "function", "function": {
        "name": "get_weather",
        "parameters": { "type": "object", "properties": { "city": { "enum": ["Paris", "Rome"] } }, "required": ["city"] },
    } }]);
    let ask = |stream: bool| {
        json!({
            "messages": [{ "role": "user", "content": "What is the weather in Paris?" }],
            "tools": tools, "tool_choice": "required", "temperature": 0, "max_tokens": 200,
            "stream": stream,
        })
    };
    // A template without tool calls: a required call is refused by name.
    let plain = fixture(EngineConfig::small());
    provision_and_wait(&plain).await;
    let (status, body) = call(&plain, post("/v1/chat/completions", ask(false))).await;
    assert_eq!(
        (status, &body["error"]["param"]),
        (StatusCode::BAD_REQUEST, &json!("tool_choice")),
        "{body}"
    );

    // The tiny model's vocabulary spells most words letter by letter: the tools' system
    // turn needs more than the small configuration's 256 tokens.
    let f = fixture_with_model(
        EngineConfig {
            context_per_sequence: 512,
            ..EngineConfig::small()
        },
        &veil_model::tiny::gguf_with_template(3, veil_model::tiny::TOOLS_TEMPLATE),
    );
    provision_and_wait(&f).await;
    let (status, body) = call(&f, post("/v1/chat/completions", ask(false))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{body}");
    assert!(choice["message"]["content"].is_null(), "{body}");
    let call0 = &choice["message"]["tool_calls"][0];
    assert_eq!(call0["type"], "function", "{body}");
    assert!(
        call0.get("index").is_none(),
        "index is for streamed deltas: {body}"
    );
    assert_eq!(call0["function"]["name"], "get_weather", "{body}");
    let args: Value =
        serde_json::from_str(call0["function"]["arguments"].as_str().expect("arguments"))
            .expect("arguments are JSON");
    assert!(
        ["Paris", "Rome"].contains(&args["city"].as_str().expect("city")),
        "{args}"
    );
    let id = call0["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("call-"), "{id}");

    // Streamed: the same call in a tool_calls delta, then finish_reason tool_calls.
    let chunks = sse_chunks(
        app(f.state.clone())
            .oneshot(post("/v1/chat/completions", ask(true)))
            .await
            .expect("infallible"),
    )
    .await;
    let streamed: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(streamed.len(), 1, "{chunks:?}");
    assert_eq!(streamed[0]["function"], call0["function"]);
    assert_eq!(
        chunks.last().map(|c| &c["choices"][0]["finish_reason"]),
        Some(&json!("tool_calls"))
    );

    // The agent's next turn: the call and its result go back through the template.
    let next = json!({
        "messages": [
            { "role": "user", "content": "What is the weather in Paris?" },
            { "role": "assistant", "content": null, "tool_calls": [{ "id": id, "type": "function", "function": call0["function"] }] },
            { "role": "tool", "tool_call_id": id, "content": "sunny, 21 C" },
        ],
        "tools": tools, "temperature": 0, "max_tokens": 4,
    });
    let (status, body) = call(&f, post("/v1/chat/completions", next)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, first) = call(&f, post("/v1/chat/completions", ask(false))).await;
    assert!(
        body["usage"]["prompt_tokens"].as_u64() > first["usage"]["prompt_tokens"].as_u64(),
        "the call and its result are in the prompt: {body}"
    );
}

/// The `data:` payloads of an SSE body before `[DONE]`, parsed.
/// The chunks of a stream before its receipt's chunk (which must come last, just before
/// `[DONE]`).
async fn sse_chunks(resp: axum::response::Response) -> Vec<Value> {
    sse_chunks_and_receipt(resp).await.0
}

/// The chunks of a stream before its receipt; the receipt; and the SHA-256 the receipt
/// states of them (every `data:` payload before the receipt's, each followed by `\n`).
async fn sse_chunks_and_receipt(resp: axum::response::Response) -> (Vec<Value>, String, [u8; 32]) {
    let sse = body_text(resp).await;
    let datas: Vec<&str> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(datas.last(), Some(&"[DONE]"), "{sse}");
    let mut chunks: Vec<Value> = datas[..datas.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk"))
        .collect();
    let last = chunks.pop().expect("a receipt chunk");
    let receipt = last["veil_receipt"]
        .as_str()
        .expect("the receipt comes last")
        .to_owned();
    let choice = &last["choices"][0];
    assert!(
        choice["finish_reason"].is_null()
            && (choice["delta"] == json!({}) || choice["text"] == json!("")),
        "an empty chunk: {last}"
    );
    assert!(
        chunks.iter().all(|c| c.get("veil_receipt").is_none()),
        "one receipt"
    );
    let mut sent = Vec::new();
    for d in &datas[..datas.len() - 2] {
        sent.extend_from_slice(d.as_bytes());
        sent.push(b'\n');
    }
    (chunks, receipt, veil_attestation::receipt::sha256(&sent))
}

#[tokio::test]
async fn every_answer_carries_a_receipt_signed_by_the_key_its_evidence_binds() {
    use veil_attestation::receipt::{sha256, tokens_sha256, SignedReceipt, HEADER};
    let f = fixture(EngineConfig::small());
    provision_and_wait(&f).await;
    let appraisal = attest(&f).await;
    let pk = appraisal.binding().receipt_pk;
    assert_eq!(
        pk,
        f.state.receipt_pk(),
        "the evidence binds the receipt key"
    );
    assert_ne!(pk, [0; 32]);

    // Non-streamed: the header, over the exact request and response bytes.
    let body = br#"{ "messages": [{"role":"user","content":"hello"}], "max_tokens": 4, "temperature": 0, "seed": 9 }"#;
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(&body[..]))
        .expect("request");
    let resp = app(f.state.clone()).oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    let compact = resp.headers()[HEADER].to_str().expect("ascii").to_owned();
    let answer = resp.into_body().collect().await.expect("body").to_bytes();
    let r = SignedReceipt::parse(&compact).expect("parses");
    let r = r.verify(&pk).expect("signed by the bound key").clone();
    let v: Value = serde_json::from_slice(&answer).expect("json");
    assert_eq!(r.request_sha256, sha256(body));
    assert_eq!(r.response_sha256, sha256(&answer));
    assert_eq!(r.id, v["id"].as_str().expect("id"));
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("text");
    assert_eq!(r.text_sha256, sha256(text.as_bytes()));
    assert_eq!(
        u64::from(r.completion_tokens),
        v["usage"]["completion_tokens"]
    );
    assert_eq!(r.model_sha256, appraisal.binding().model_sha256);
    assert_eq!(r.measurement, appraisal.measurement());
    assert_eq!((r.sampling.max_tokens, r.sampling.seed), (4, Some(9)));
    assert_eq!(
        r.finish_reason,
        v["choices"][0]["finish_reason"].as_str().expect("finish")
    );

    // Streamed: the last chunk before [DONE], over the payloads sent before it.
    let resp = app(f.state.clone())
        .oneshot(post("/v1/chat/completions", chat(4, true)))
        .await
        .expect("infallible");
    let (chunks, compact2, sent) = sse_chunks_and_receipt(resp).await;
    let r2 = SignedReceipt::parse(&compact2).expect("parses");
    let r2 = r2.verify(&pk).expect("signed").clone();
    assert_eq!(r2.response_sha256, sent);
    assert_eq!(
        r2.request_sha256,
        sha256(chat(4, true).to_string().as_bytes())
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(r2.text_sha256, sha256(text.as_bytes()));
    assert_eq!(r2.route, "/v1/chat/completions");
    assert_eq!(r2.seq, r.seq + 1, "numbered in order");
    assert_eq!(r2.finish_reason, "length");
    assert_ne!(
        r2.tokens_sha256,
        tokens_sha256(&[]),
        "four tokens, not none"
    );
    // Each receipt is counted.
    let m = body_text(
        app(f.state.clone())
            .oneshot(get("/metrics"))
            .await
            .expect("infallible"),
    )
    .await;
    assert!(
        m.contains(&format!("veil_receipts_total {}", r2.seq)),
        "{m}"
    );
}

#[tokio::test]
async fn logprobs_in_openais_shapes_whole_and_streamed_for_chats_and_completions() {
    let f = fixture(EngineConfig::small());
    provision_and_wait(&f).await;
    let chat_req = json!({
        "messages": [{ "role": "user", "content": "hello" }],
        "max_tokens": 6, "temperature": 0, "ignore_eos": true,
        "logprobs": true, "top_logprobs": 2,
    });
    let (status, body) = call(&f, post("/v1/chat/completions", chat_req.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let content = body["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("logprobs.content")
        .clone();
    assert_eq!(content.len(), 6, "{body}");
    let mut joined = Vec::new();
    for entry in &content {
        let lp = entry["logprob"].as_f64().expect("logprob");
        let top = entry["top_logprobs"].as_array().expect("top_logprobs");
        assert_eq!(top.len(), 2, "{entry}");
        // Greedy: the chosen token is the first alternative.
        assert_eq!(
            (&entry["token"], lp),
            (&top[0]["token"], top[0]["logprob"].as_f64().expect("lp"))
        );
        assert!(
            lp <= 0.0 && top[1]["logprob"].as_f64() <= Some(lp),
            "{entry}"
        );
        let bytes: Vec<u8> = serde_json::from_value(entry["bytes"].clone()).expect("bytes");
        joined.extend(bytes);
    }
    assert_eq!(
        String::from_utf8_lossy(&joined),
        body["choices"][0]["message"]["content"]
            .as_str()
            .expect("content")
    );
    // Streamed: each chunk carries the entries of its tokens; together, the same ones.
    let mut streamed = chat_req;
    streamed["stream"] = json!(true);
    let chunks = sse_chunks(
        app(f.state.clone())
            .oneshot(post("/v1/chat/completions", streamed))
            .await
            .expect("infallible"),
    )
    .await;
    let from_stream: Vec<Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array())
        .flatten()
        .cloned()
        .collect();
    assert_eq!(from_stream, content);
    // Without asking: null.
    let (_, plain) = call(&f, post("/v1/chat/completions", chat(2, false))).await;
    assert!(plain["choices"][0]["logprobs"].is_null(), "{plain}");

    // A text completion: the legacy shape.
    let (status, body) = call(
        &f,
        post(
            "/v1/completions",
            json!({ "prompt": "hello there", "max_tokens": 5, "temperature": 0, "ignore_eos": true, "logprobs": 1 }),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let lp = &body["choices"][0]["logprobs"];
    let tokens: Vec<String> = serde_json::from_value(lp["tokens"].clone()).expect("tokens");
    let offsets: Vec<usize> = serde_json::from_value(lp["text_offset"].clone()).expect("offsets");
    assert_eq!((tokens.len(), offsets.len()), (5, 5), "{body}");
    assert_eq!(
        tokens.concat(),
        body["choices"][0]["text"].as_str().expect("text")
    );
    assert_eq!(offsets[0], 0);
    assert!(
        offsets
            .windows(2)
            .zip(&tokens)
            .all(|(w, t)| w[1] == w[0] + t.len()),
        "{lp}"
    );
    let top = lp["top_logprobs"].as_array().expect("top_logprobs");
    assert!(
        top.iter()
            .all(|t| t.as_object().is_some_and(|m| m.len() == 1)),
        "{lp}"
    );
    assert!(lp["token_logprobs"]
        .as_array()
        .is_some_and(|l| l.iter().all(|v| v.as_f64().is_some_and(|v| v <= 0.0))));
}

/// The answer's content for a chat request with `extra` fields.
async fn content(f: &Fixture, extra: Value) -> String {
    let mut req = json!({ "messages": [{ "role": "user", "content": "hello" }], "max_tokens": 4 });
    for (k, v) in extra.as_object().expect("object") {
        req[k] = v.clone();
    }
    let (status, body) = call(f, post("/v1/chat/completions", req)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_owned()
}

#[tokio::test]
async fn logit_bias_and_min_p_reach_the_sampler_and_unknown_fields_are_ignored() {
    let f = fixture(EngineConfig::small());
    let key = ModelKey::from_key_file(&f.key.to_key_file()).expect("copy");
    assert_eq!(provision(&f, &key, None).await.0, StatusCode::ACCEPTED);
    wait_ready(&f).await;
    let greedy = content(&f, json!({ "temperature": 0 })).await;
    // min_p = 1 keeps only the most likely token: sampling at temperature 1 is greedy.
    let min_p = content(
        &f,
        json!({ "temperature": 1, "min_p": 1.0, "top_k": 0, "top_p": 1 }),
    )
    .await;
    assert_eq!(min_p, greedy);
    // A bias of +100 makes one token the only choice, at every step.
    let mut forced = Vec::new();
    for t in [300, 301] {
        let text = content(
            &f,
            json!({ "temperature": 0, "logit_bias": { t.to_string(): 100 } }),
        )
        .await;
        assert!(!text.is_empty(), "token {t}");
        forced.push(text);
    }
    assert_ne!(forced[0], forced[1]);
    assert_ne!(forced[0], greedy);
    // Fields Veil does not use are accepted, as OpenAI's API does.
    let ignored = content(
        &f,
        json!({ "temperature": 0, "store": false, "metadata": { "a": "b" }, "parallel_tool_calls": true, "user": "u1" }),
    )
    .await;
    assert_eq!(ignored, greedy);
    // A token id outside the vocabulary is refused by name.
    let (status, body) = call(
        &f,
        post(
            "/v1/chat/completions",
            json!({ "messages": [{ "role": "user", "content": "x" }], "logit_bias": { "99999999": 5 } }),
        ),
    )
    .await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("logit_bias")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("vocabulary")),
        "{body}"
    );
}

#[tokio::test]
async fn a_wrong_key_is_refused_and_the_server_stays_locked() {
    let f = fixture(EngineConfig::small());
    let impostor = ModelKey::from_parts(f.key.key_id(), Box::new(Zeroizing::new([0x42; 32])));
    let (status, body) = provision(&f, &impostor, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "wrong_key");
    assert_eq!(call(&f, get("/ready")).await.1["state"], "locked");
    // Another key id is named.
    let (status, body) = provision(&f, &ModelKey::generate(), None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("wrong_key_id"))
    );
}

#[tokio::test]
async fn a_key_sealed_to_another_wrapping_key_is_refused() {
    let f = fixture(EngineConfig::small());
    let key = ModelKey::from_key_file(&f.key.to_key_file()).expect("copy");
    let (status, body) = provision(&f, &key, Some(WrappingKey::generate().public())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "key_release_refused");
    assert_eq!(call(&f, get("/ready")).await.1["state"], "locked");
}

#[tokio::test]
async fn bad_requests_get_the_right_4xx_in_openai_shape() {
    let f = fixture(EngineConfig::small());
    let key = ModelKey::from_key_file(&f.key.to_key_file()).expect("copy");
    assert_eq!(provision(&f, &key, None).await.0, StatusCode::ACCEPTED);
    wait_ready(&f).await;
    let raw = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from("{not json"))
        .expect("req");
    let (status, body) = call(&f, raw).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (status, body) = call(
        &f,
        post(
            "/v1/chat/completions",
            json!({ "model": "gpt-4", "messages": [{ "role": "user", "content": "x" }] }),
        ),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("model_not_found"))
    );
    let (status, body) = call(&f, post("/v1/chat/completions", json!({ "messages": [] }))).await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("messages"))
    );
    let (status, body) = call(
        &f,
        post(
            "/v1/chat/completions",
            json!({ "messages": [{ "role": "user", "content": "x" }], "temperature": 9 }),
        ),
    )
    .await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("temperature"))
    );
    // Sampling parameters out of their documented bounds (docs/protocol.md).
    for (field, value) in [
        ("repetition_penalty", json!(2.5)),
        ("repetition_penalty", json!(0)),
        ("top_k", json!(5000)),
        ("frequency_penalty", json!(3)),
        ("presence_penalty", json!(-2.5)),
    ] {
        let mut req = json!({ "messages": [{ "role": "user", "content": "x" }] });
        req[field] = value.clone();
        let (status, body) = call(&f, post("/v1/chat/completions", req)).await;
        assert_eq!(
            (status, body["error"]["param"].as_str()),
            (StatusCode::BAD_REQUEST, Some(field)),
            "{field} = {value}: {body}"
        );
    }
    // More messages than the context has tokens: refused before any rendering.
    let many: Vec<_> = (0..300)
        .map(|_| json!({ "role": "user", "content": "hi" }))
        .collect();
    let (status, body) = call(
        &f,
        post("/v1/chat/completions", json!({ "messages": many })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("300 messages cannot fit a context of 256 tokens")),
        "{body}"
    );
    assert_eq!(body["error"]["code"], "context_length_exceeded", "{body}");
    // Within the cheap caps but more tokens than the context: OpenAI's code too.
    let words = "the sky is blue ".repeat(200);
    let (status, body) = call(
        &f,
        post(
            "/v1/chat/completions",
            json!({ "messages": [{ "role": "user", "content": words }] }),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        (
            body["error"]["code"].as_str(),
            body["error"]["param"].as_str()
        ),
        (Some("context_length_exceeded"), Some("messages")),
        "{body}"
    );
    let big = json!({ "messages": [{ "role": "user", "content": "x".repeat(100_000) }] });
    let (status, body) = call(&f, post("/v1/chat/completions", big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "request_too_large");
}

#[tokio::test]
async fn a_full_queue_answers_429_and_a_dropped_stream_frees_its_slot() {
    // A model with a long context, so that the two streams below stay busy (tens of
    // thousands of tokens) until they are dropped, however fast the machine is.
    const CONTEXT: u32 = 32_768;
    let f = fixture_with_model(
        EngineConfig {
            parallel: 1,
            queue: 1,
            context_per_sequence: CONTEXT,
            ..EngineConfig::small()
        },
        &veil_model::tiny::gguf_with_context_length(3, CONTEXT),
    );
    let key = ModelKey::from_key_file(&f.key.to_key_file()).expect("copy");
    assert_eq!(provision(&f, &key, None).await.0, StatusCode::ACCEPTED);
    wait_ready(&f).await;
    let long = || {
        post(
            "/v1/chat/completions",
            json!({ "messages": [{ "role": "user", "content": "a" }], "max_tokens": CONTEXT - 64, "stream": true, "ignore_eos": true }),
        )
    };
    let busy = app(f.state.clone()).oneshot(long()).await.expect("first");
    assert_eq!(busy.status(), StatusCode::OK);
    // The second waits in the queue once the first holds the only sequence.
    let mut queued = None;
    for _ in 0..200 {
        let resp = app(f.state.clone()).oneshot(long()).await.expect("second");
        if resp.status() == StatusCode::OK {
            queued = Some(resp);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let queued = queued.expect("a second request is queued");
    let resp = app(f.state.clone()).oneshot(long()).await.expect("third");
    assert_eq!(
        resp.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "a full queue answers 429"
    );
    assert!(resp.headers().contains_key("retry-after"));
    drop(busy);
    drop(queued);
    let (status, body) = call(&f, post("/v1/chat/completions", chat(2, false))).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "served after the streams went away: {body}"
    );
}

#[tokio::test]
async fn provisioning_is_accepted_only_on_the_connection_that_attested() {
    let f = fixture(EngineConfig::small());
    let key = ModelKey::from_key_file(&f.key.to_key_file()).expect("copy");
    let appraisal = attest(&f).await;
    let msg = KeyRelease::seal(&appraisal, &key.key_id().0, key.expose_secret()).expect("seal");
    let body = serde_json::to_value(msg).expect("json");
    let (status, err) = call_on(&f, [0x0E; 32], post("/v1/provision", body.clone())).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("unknown_report_data")),
        "{err}"
    );
    let resp = app(f.state.clone())
        .oneshot(post("/v1/provision", body.clone()))
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "no TLS channel");
    let (status, body) = call(&f, post("/v1/provision", body)).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "the attesting connection: {body}"
    );
}
