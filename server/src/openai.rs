//! The OpenAI-compatible part of the API: `GET /v1/models` and
//! `POST /v1/chat/completions` (with `stream: true` as server-sent events), mapped onto the
//! engine, and engine errors mapped onto API errors.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Deserialize;
use serde_json::{json, Value};
use veil_model::{ChatMessage, Engine, EngineError, Event, GenerateRequest, SamplingParams};

use crate::error::{ApiError, Json};
use crate::state::{AppState, Lifecycle};

/// Content bytes allowed per token of the context: a chat whose messages' content is longer
/// than `context_length × MAX_CONTENT_BYTES_PER_TOKEN` bytes is refused before it is
/// rendered or tokenized (no tokenizer packs 32 bytes into a token of ordinary text).
pub const MAX_CONTENT_BYTES_PER_TOKEN: usize = 32;
/// The content cap never goes below this (small test contexts).
pub const MIN_CONTENT_BYTES: usize = 64 << 10;
/// Largest `top_k`.
pub const MAX_TOP_K: u32 = 1000;
/// Largest `repetition_penalty` (1 is off; beyond 2 the output degenerates).
pub const MAX_REPETITION_PENALTY: f32 = 2.0;

/// The engine, or the 503 that says why there is none.
fn engine(state: &AppState) -> Result<Arc<dyn Engine>, ApiError> {
    match state.state() {
        Lifecycle::Ready(engine) => Ok(engine),
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

/// `GET /v1/models`: the one model this server serves.
pub(crate) async fn models(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
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
    context_length: u32,
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
    // Cheap caps before any rendering or tokenizing: every message takes at least one
    // token of the context, and content beyond MAX_CONTENT_BYTES_PER_TOKEN bytes a token
    // cannot fit.
    let context = context_length as usize;
    if req.messages.len() > context {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "{} messages cannot fit a context of {context_length} tokens (at most {context} messages)",
                req.messages.len()
            ),
        ));
    }
    let content: usize = req.messages.iter().map(|m| m.content.len()).sum();
    let max_content = (context * MAX_CONTENT_BYTES_PER_TOKEN).max(MIN_CONTENT_BYTES);
    if content > max_content {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "{content} bytes of content cannot fit a context of {context_length} tokens (at most {max_content} bytes)"
            ),
        ));
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
        if k > MAX_TOP_K {
            return Err(ApiError::invalid(
                "top_k",
                format!("top_k must be between 0 and {MAX_TOP_K}"),
            ));
        }
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
        if !(r > 0.0 && r <= MAX_REPETITION_PENALTY) {
            return Err(ApiError::invalid(
                "repetition_penalty",
                format!("repetition_penalty must be in (0, {MAX_REPETITION_PENALTY}]"),
            ));
        }
        params.repetition_penalty = r;
    }
    // Accepted for compatibility and not applied; OpenAI's range still holds.
    for (name, value) in [
        ("frequency_penalty", req.frequency_penalty),
        ("presence_penalty", req.presence_penalty),
    ] {
        if value.is_some_and(|v| !(-2.0..=2.0).contains(&v)) {
            return Err(ApiError::invalid(
                name,
                format!("{name} must be between -2 and 2"),
            ));
        }
    }
    params.ignore_eos = req.ignore_eos.unwrap_or(false);
    let _ = req.user;
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

/// `POST /v1/chat/completions`: a completion, or server-sent events with `stream: true`.
pub(crate) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Json(req): Json<ChatRequest>,
) -> Result<Response, ApiError> {
    let engine = engine(&state)?;
    let model = engine.info().name.clone();
    let (request, stream, include_usage) = to_request(req, &model, engine.info().context_length)?;
    // Rendering the template and tokenizing are CPU work: on a blocking thread, a few at
    // a time, never on the async workers that answer health, attestation and provisioning.
    // The engine refuses a prompt whose tokens do not fit the context before queueing it.
    let permit = Arc::clone(&state.prepare)
        .acquire_owned()
        .await
        .map_err(|_| engine_error(EngineError::Stopped))?;
    let submitter = Arc::clone(&engine);
    let mut rx = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        submitter.submit(request)
    })
    .await
    .map_err(|_| engine_error(EngineError::Stopped))?
    .map_err(engine_error)?;
    let id = completion_id();
    let created = now_secs();
    if !stream {
        let mut text = String::new();
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Text(t) => text.push_str(&t),
                Event::Done { finish, usage, .. } => {
                    state
                        .metrics
                        .count_tokens(usage.prompt_tokens, usage.completion_tokens);
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
                            state
                                .metrics
                                .count_tokens(usage.prompt_tokens, usage.completion_tokens);
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
