//! The HTTP API: attestation, provisioning, OpenAI-compatible inference, health.

use std::convert::Infallible;
use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, MatchedPath, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures_util::stream;
use serde::Deserialize;
use serde_json::{json, Value};
use veil_attestation::binding::{Purpose, Transcript, MAX_NONCE, MIN_NONCE};
use veil_attestation::KeyRelease;
use veil_model::{
    ChatMessage, Engine, EngineError, Event, GenerateRequest, LlamaEngine, ModelFile,
    SamplingParams,
};
use veil_sealing::{ChunkSink, KeyId, ModelKey, UnsealOptions};
use zeroize::Zeroizing;

use crate::error::{ApiError, Json};
use crate::state::{AppState, Lifecycle};

/// The RFC 9266 exporter of the TLS connection a request came on (set per connection).
#[derive(Debug, Clone, Copy)]
pub struct ChannelBinding {
    /// `EXPORTER-Channel-Binding`, 32 bytes.
    pub exporter: [u8; 32],
}

/// The router, with every route and the request-counting middleware.
pub fn app(state: Arc<AppState>) -> Router {
    let max_body = state.max_body;
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/attestation", get(attestation))
        .route("/v1/provision", post(provision))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            count_requests,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn count_requests(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    state.count(&route, response.status().as_u16());
    response
}

async fn health() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let s = state.state();
    let mut body = json!({ "state": s.name() });
    match &s {
        Lifecycle::Failed(reason) => body["reason"] = json!(reason),
        Lifecycle::Unsealing => {
            body["unsealed_bytes"] = json!(state.metrics.unsealed_bytes.load(Ordering::Relaxed));
            body["total_bytes"] = json!(state.header.plaintext_len);
        }
        _ => {}
    }
    if let Some(pull) = state
        .key_broker
        .lock()
        .expect("no panics while holding it")
        .as_ref()
    {
        body["key_broker"] = json!(pull);
    }
    let status = if s == Lifecycle::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    use std::fmt::Write;
    let mut out = String::new();
    let m = &state.metrics;
    out.push_str("# HELP veil_requests_total HTTP requests by route and status.\n# TYPE veil_requests_total counter\n");
    for ((route, status), n) in m
        .requests
        .lock()
        .expect("no panics while holding it")
        .iter()
    {
        let _ = writeln!(
            out,
            "veil_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
        );
    }
    let s = state.state();
    let _ = writeln!(
        out,
        "# HELP veil_state Lifecycle state (1 for the current one).\n# TYPE veil_state gauge"
    );
    for name in ["locked", "unsealing", "ready", "failed"] {
        let _ = writeln!(
            out,
            "veil_state{{state=\"{name}\"}} {}",
            u8::from(s.name() == name)
        );
    }
    let queue = state.engine.get().map_or(0, |e| e.queue_depth());
    let _ = writeln!(
        out,
        "# TYPE veil_queue_depth gauge\nveil_queue_depth {queue}"
    );
    let _ = writeln!(
        out,
        "# TYPE veil_tokens_in_total counter\nveil_tokens_in_total {}",
        m.tokens_in.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# TYPE veil_tokens_out_total counter\nveil_tokens_out_total {}",
        m.tokens_out.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# TYPE veil_attestations_total counter\nveil_attestations_total {}",
        m.attestations.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# TYPE veil_unseal_seconds gauge\nveil_unseal_seconds {:.3}",
        m.unseal_ms.load(Ordering::Relaxed) as f64 / 1000.0
    );
    let _ = writeln!(
        out,
        "# TYPE veil_unsealed_bytes gauge\nveil_unsealed_bytes {}",
        m.unsealed_bytes.load(Ordering::Relaxed)
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

#[derive(Deserialize)]
struct AttestationQuery {
    nonce: Option<String>,
}

/// `GET /v1/attestation?nonce=<base64url>`: evidence bound to the nonce, this TLS key,
/// this connection's exporter, the wrapping key and the sealed model.
async fn attestation(
    State(state): State<Arc<AppState>>,
    binding: Option<Extension<ChannelBinding>>,
    Query(q): Query<AttestationQuery>,
) -> Result<Response, ApiError> {
    let nonce_text = q.nonce.ok_or_else(|| {
        ApiError::invalid("nonce", "nonce is required (base64url, 16 to 64 bytes)")
    })?;
    let nonce = URL_SAFE_NO_PAD
        .decode(nonce_text.trim_end_matches('=').as_bytes())
        .map_err(|_| ApiError::invalid("nonce", "nonce is not base64url"))?;
    if !(MIN_NONCE..=MAX_NONCE).contains(&nonce.len()) {
        return Err(ApiError::invalid(
            "nonce",
            format!(
                "nonce must be {MIN_NONCE} to {MAX_NONCE} bytes, got {}",
                nonce.len()
            ),
        ));
    }
    let Some(Extension(binding)) = binding else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "no_channel",
            "attestation is only served over TLS",
        ));
    };
    if !state.attest_limit.try_take() {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many attestation requests",
        )
        .retry_after(1));
    }
    let transcript = Transcript {
        purpose: Purpose::ClientSession,
        nonce: &nonce,
        spki_sha256: state.spki_sha256,
        exporter: Some(binding.exporter),
        wrap_pk: state.wrapping.public(),
        model_sha256: state.header.model_sha256,
    };
    let report_data = transcript
        .report_data()
        .map_err(|e| ApiError::invalid("nonce", e.to_string()))?;
    let attester_state = Arc::clone(&state);
    let evidence = tokio::task::spawn_blocking(move || attester_state.attester.attest(report_data))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "attestation_failed",
                "attestation failed",
            )
        })?
        .map_err(|e| {
            tracing::error!(error = %e, "attestation failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "attestation_failed",
                "the platform could not produce evidence",
            )
        })?;
    let mut evidence = evidence;
    evidence.binding = Some(transcript.binding());
    state.remember_issued(report_data, binding.exporter);
    state.metrics.attestations.fetch_add(1, Ordering::Relaxed);
    let body = serde_json::to_value(&evidence).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    })?;
    Ok(Json(body).into_response())
}

/// `POST /v1/provision`: the model key, HPKE-sealed to the wrapping key for report data
/// this server issued on this same connection.
async fn provision(
    State(state): State<Arc<AppState>>,
    binding: Option<Extension<ChannelBinding>>,
    Json(msg): Json<KeyRelease>,
) -> Result<Response, ApiError> {
    let Some(Extension(binding)) = binding else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "no_channel",
            "provisioning is only accepted over TLS",
        ));
    };
    let report_data = msg
        .report_data()
        .map_err(|e| ApiError::invalid("report_data", e.to_string()))?;
    let key_id = KeyId::from_hex(&msg.key_id)
        .map_err(|_| ApiError::invalid("key_id", "key_id is not 32 hex digits"))?;
    if key_id != state.header.key_id {
        return Err(ApiError {
            param: Some("key_id".into()),
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                "wrong_key_id",
                format!(
                    "this server's model is sealed with key {}, not {key_id}",
                    state.header.key_id
                ),
            )
        });
    }
    if !state.take_issued(&report_data, &binding.exporter) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "unknown_report_data",
            "report_data was not issued on this connection (or was already used): attest again on the connection that provisions",
        ));
    }
    let secret = state.wrapping.open(&msg, &report_data).map_err(|_| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "key_release_refused",
            "the key-release message does not open with this server's wrapping key",
        )
    })?;
    match accept_key(&state, key_id, secret)? {
        Accepted::Repeat => Ok((
            StatusCode::OK,
            Json(json!({ "status": state.state().name(), "idempotent": true })),
        )
            .into_response()),
        Accepted::Unsealing => {
            Ok((StatusCode::ACCEPTED, Json(json!({ "status": "unsealing" }))).into_response())
        }
    }
}

/// What became of a model key that came out of a key-release message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// The weights are being unsealed with it.
    Unsealing,
    /// The same key had already been accepted; nothing changes.
    Repeat,
}

/// Takes a released model key (pushed by the owner or pulled from a key broker): checks
/// it against the sealed header, accepts it once, and starts unsealing in the background.
///
/// # Errors
/// 403 `wrong_key` if the sealed header does not open with it; 409 `already_provisioned`
/// if another key was accepted before.
pub fn accept_key(
    state: &Arc<AppState>,
    key_id: KeyId,
    secret: Zeroizing<[u8; 32]>,
) -> Result<Accepted, ApiError> {
    let digest = {
        let mut d = [0u8; 32];
        d.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, secret.as_ref()).as_ref());
        d
    };
    let key = ModelKey::from_parts(key_id, secret);
    if state.header.check_key(&key).is_err() {
        tracing::warn!(key_id = %key_id, "key refused: it does not open the sealed header");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong_key",
            format!("wrong key for key id {key_id}: the sealed header does not open"),
        ));
    }
    {
        let mut provisioned = state
            .provisioned
            .lock()
            .expect("no panics while holding it");
        match *provisioned {
            Some(d) if d == digest => return Ok(Accepted::Repeat),
            Some(_) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "already_provisioned",
                    "a different key was already provisioned",
                ));
            }
            None => *provisioned = Some(digest),
        }
    }
    state.set_state(Lifecycle::Unsealing);
    let worker = Arc::clone(state);
    tokio::task::spawn_blocking(move || unseal_and_load(&worker, key));
    Ok(Accepted::Unsealing)
}

/// Hands each authenticated chunk straight to the engine's in-memory file.
struct IntoModelFile<'a>(&'a ModelFile);

impl ChunkSink for IntoModelFile<'_> {
    fn write_at(&self, offset: u64, plaintext: &[u8]) -> std::io::Result<()> {
        self.0.write_at(offset, plaintext)
    }
}

fn unseal_and_load(state: &AppState, key: ModelKey) {
    let started = Instant::now();
    let result = (|| -> Result<(), String> {
        let file = File::open(&state.sealed_path)
            .map_err(|e| format!("cannot open the sealed model: {e}"))?;
        let options = UnsealOptions {
            expected_sha256: Some(state.header.model_sha256),
            progress: Some(&state.metrics.unsealed_bytes),
            ..UnsealOptions::default()
        };
        // Unsealed straight into the memfd the engine maps: no plaintext buffer beside
        // it. If a chunk fails, the memfd (holding only authenticated chunks) is dropped.
        let model = ModelFile::new(state.header.plaintext_len)
            .map_err(|e| format!("model load failed: {e}"))?;
        veil_sealing::unseal_to(&file, &key, &options, &IntoModelFile(&model))
            .map_err(|e| format!("unsealing failed: {e}"))?;
        drop(key);
        let unsealed = started.elapsed();
        let engine = LlamaEngine::load_file(model, state.engine_config.clone())
            .map_err(|e| format!("model load failed: {e}"))?;
        let _ = state.engine.set(Arc::new(engine));
        tracing::info!(
            unseal_ms = unsealed.as_millis() as u64,
            load_ms = (started.elapsed() - unsealed).as_millis() as u64,
            "model unsealed and loaded"
        );
        Ok(())
    })();
    state
        .metrics
        .unseal_ms
        .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    match result {
        Ok(()) => state.set_state(Lifecycle::Ready),
        Err(reason) => {
            tracing::error!(%reason, "unsealing failed");
            state.set_state(Lifecycle::Failed(reason));
        }
    }
}

/// The engine, or the 503 that says why there is none.
fn engine(state: &AppState) -> Result<Arc<dyn Engine>, ApiError> {
    match state.state() {
        Lifecycle::Ready => state.engine.get().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unsealing",
                "the model is loading",
            )
            .retry_after(1)
        }),
        Lifecycle::Locked => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "model_locked",
            "the model is locked: no key has been provisioned",
        )),
        Lifecycle::Unsealing => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unsealing",
            "the model is being unsealed",
        )
        .retry_after(2)),
        Lifecycle::Failed(reason) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "failed",
            format!("failed: {reason}"),
        )),
    }
}

async fn models(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let engine = engine(&state)?;
    Ok(Json(json!({
        "object": "list",
        "data": [{ "id": engine.info().name, "object": "model", "created": 0, "owned_by": "veil" }]
    }))
    .into_response())
}

/// The OpenAI chat completion request (the fields Veil honours; others are refused).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    model: Option<String>,
    messages: Vec<ChatMessage>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    seed: Option<i64>,
    stop: Option<Value>,
    stream: Option<bool>,
    stream_options: Option<Value>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    n: Option<u32>,
    user: Option<String>,
    /// llama.cpp's extension: keep generating past end-of-generation tokens.
    ignore_eos: Option<bool>,
}

fn to_request(
    req: ChatRequest,
    model_name: &str,
) -> Result<(GenerateRequest, bool, bool), ApiError> {
    if let Some(m) = &req.model {
        if m != model_name {
            return Err(ApiError {
                param: Some("model".into()),
                ..ApiError::new(
                    StatusCode::NOT_FOUND,
                    "model_not_found",
                    format!("model {m:?} does not exist; this server serves {model_name:?}"),
                )
            });
        }
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    if let Some(m) = req
        .messages
        .iter()
        .find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant"))
    {
        return Err(ApiError::invalid(
            "messages",
            format!("unknown role {:?}", m.role),
        ));
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("n", "only n = 1 is supported"));
    }
    let mut params = SamplingParams::default();
    if let Some(t) = req.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::invalid(
                "temperature",
                "temperature must be between 0 and 2",
            ));
        }
        params.temperature = t;
    }
    if let Some(p) = req.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::invalid("top_p", "top_p must be in (0, 1]"));
        }
        params.top_p = p;
    }
    if let Some(k) = req.top_k {
        params.top_k = k;
    }
    if let Some(s) = req.seed {
        params.seed = Some(s as u32);
    }
    if let Some(m) = req.max_completion_tokens.or(req.max_tokens) {
        if m == 0 {
            return Err(ApiError::invalid(
                "max_tokens",
                "max_tokens must be at least 1",
            ));
        }
        params.max_tokens = m;
    }
    params.stop = match req.stop {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(a)) if a.len() <= 4 && a.iter().all(Value::is_string) => a
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "stop must be a string or up to 4 strings",
            ))
        }
    };
    if let Some(r) = req.repetition_penalty {
        if r <= 0.0 {
            return Err(ApiError::invalid(
                "repetition_penalty",
                "repetition_penalty must be positive",
            ));
        }
        params.repetition_penalty = r;
    }
    params.ignore_eos = req.ignore_eos.unwrap_or(false);
    let _ = (req.frequency_penalty, req.presence_penalty, req.user);
    let include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut request = GenerateRequest::chat(req.messages);
    request.params = params;
    Ok((request, req.stream.unwrap_or(false), include_usage))
}

fn engine_error(e: EngineError) -> ApiError {
    match e {
        EngineError::Busy { .. } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "busy",
            "the server is busy; retry shortly",
        )
        .retry_after(1),
        EngineError::PromptTooLong { .. } => ApiError::invalid("messages", e.to_string()),
        EngineError::InvalidRequest(m) => ApiError::invalid("messages", m),
        EngineError::Stopped => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopped",
            "the engine has stopped",
        ),
        other => {
            tracing::error!(error = %other, "generation failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "generation_failed",
                "generation failed",
            )
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn completion_id() -> String {
    let mut b = [0u8; 12];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("the system CSPRNG works");
    format!("chatcmpl-{}", hex::encode(b))
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Json(req): Json<ChatRequest>,
) -> Result<Response, ApiError> {
    let engine = engine(&state)?;
    let model = engine.info().name.clone();
    let (request, stream, include_usage) = to_request(req, &model)?;
    let mut rx = engine.submit(request).map_err(engine_error)?;
    let id = completion_id();
    let created = now_secs();
    if !stream {
        let mut text = String::new();
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Text(t) => text.push_str(&t),
                Event::Done { finish, usage, .. } => {
                    state.count_tokens(usage.prompt_tokens, usage.completion_tokens);
                    return Ok(Json(json!({
                        "id": id, "object": "chat.completion", "created": created, "model": model,
                        "choices": [{ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": finish, "logprobs": null }],
                        "usage": { "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens, "total_tokens": usage.prompt_tokens + usage.completion_tokens }
                    }))
                    .into_response());
                }
                Event::Error(e) => return Err(engine_error(e)),
            }
        }
        return Err(engine_error(EngineError::Stopped));
    }
    // Streaming: the role first, then text deltas, then the finish reason (and usage if
    // asked), then [DONE]. Dropping the stream (client gone) drops `rx`: generation stops.
    let chunk = move |delta: Value, finish: Value| {
        json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{ "index": 0, "delta": delta, "finish_reason": finish, "logprobs": null }] })
    };
    let first = chunk(json!({ "role": "assistant", "content": "" }), Value::Null);
    enum Phase {
        Start,
        Streaming,
        Done,
    }
    let events = stream::unfold(
        (rx, Phase::Start, state, chunk, first),
        move |(mut rx, phase, state, chunk, first)| async move {
            match phase {
                Phase::Start => {
                    let ev = SseEvent::default().data(first.to_string());
                    Some((vec![ev], (rx, Phase::Streaming, state, chunk, first)))
                }
                Phase::Streaming => {
                    let out = match rx.recv().await {
                        Some(Event::Text(t)) => (
                            vec![SseEvent::default()
                                .data(chunk(json!({ "content": t }), Value::Null).to_string())],
                            Phase::Streaming,
                        ),
                        Some(Event::Done { finish, usage, .. }) => {
                            state.count_tokens(usage.prompt_tokens, usage.completion_tokens);
                            let mut evs = vec![SseEvent::default()
                                .data(chunk(json!({}), json!(finish)).to_string())];
                            if include_usage {
                                let mut u = chunk(json!({}), Value::Null);
                                u["choices"] = json!([]);
                                u["usage"] = json!({ "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens, "total_tokens": usage.prompt_tokens + usage.completion_tokens });
                                evs.push(SseEvent::default().data(u.to_string()));
                            }
                            evs.push(SseEvent::default().data("[DONE]"));
                            (evs, Phase::Done)
                        }
                        Some(Event::Error(e)) => {
                            let err = engine_error(e);
                            let body = json!({ "error": { "message": err.message, "type": "server_error", "code": err.code } });
                            (
                                vec![
                                    SseEvent::default().data(body.to_string()),
                                    SseEvent::default().data("[DONE]"),
                                ],
                                Phase::Done,
                            )
                        }
                        None => (vec![SseEvent::default().data("[DONE]")], Phase::Done),
                    };
                    Some((out.0, (rx, out.1, state, chunk, first)))
                }
                Phase::Done => None,
            }
        },
    );
    let flat = futures_util::StreamExt::flat_map(events, |evs| {
        stream::iter(evs.into_iter().map(Ok::<_, Infallible>))
    });
    Ok(Sse::new(flat)
        .keep_alive(KeepAlive::default())
        .into_response())
}
