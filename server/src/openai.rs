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
use serde_json::{json, Value};
use veil_model::{ChatMessage, Engine, EngineError, Event, GenerateRequest, SamplingParams};
use veil_openai::{Chat, ChatRequest, ErrorKind, RequestError};

use crate::error::{ApiError, Json};
use crate::state::{AppState, Lifecycle};

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

/// A checked request as the engine takes it: the chat, sampling over the engine's
/// defaults.
fn to_request(chat: Chat) -> GenerateRequest {
    let s = chat.sampling;
    let d = SamplingParams::default();
    let params = SamplingParams {
        temperature: s.temperature.unwrap_or(d.temperature),
        top_p: s.top_p.unwrap_or(d.top_p),
        top_k: s.top_k.unwrap_or(d.top_k),
        min_p: s.min_p.unwrap_or(d.min_p),
        logit_bias: s.logit_bias,
        seed: s.seed,
        max_tokens: s.max_tokens.unwrap_or(d.max_tokens),
        stop: s.stop,
        repetition_penalty: s.repetition_penalty.unwrap_or(d.repetition_penalty),
        ignore_eos: s.ignore_eos,
    };
    let messages = chat
        .messages
        .into_iter()
        .map(|m| ChatMessage {
            role: m.role,
            content: m.content,
        })
        .collect();
    let mut request = GenerateRequest::chat(messages);
    request.params = params;
    request
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        let (status, code) = match e.kind {
            ErrorKind::ModelNotFound => (StatusCode::NOT_FOUND, "model_not_found"),
            ErrorKind::Invalid => (StatusCode::BAD_REQUEST, "invalid_request"),
            ErrorKind::ContextLengthExceeded => {
                (StatusCode::BAD_REQUEST, "context_length_exceeded")
            }
        };
        ApiError {
            param: Some(e.param.to_owned()),
            ..ApiError::new(status, code, e.message)
        }
    }
}

fn engine_error(e: EngineError) -> ApiError {
    match e {
        EngineError::Busy { .. } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "busy",
            "the server is busy; retry shortly",
        )
        .retry_after(1),
        EngineError::PromptTooLong { .. } => ApiError {
            code: "context_length_exceeded",
            ..ApiError::invalid("messages", e.to_string())
        },
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
    let ignored = req.ignored();
    if !ignored.is_empty() {
        // Names only, each cut short: never a value, which could be a secret or a prompt.
        tracing::debug!(fields = ?ignored, "chat request: unknown fields ignored");
    }
    let chat = req.check(&model, engine.info().context_length)?;
    let vocab = engine.info().vocab_size;
    if let Some((t, _)) = chat.sampling.logit_bias.iter().find(|(t, _)| *t >= vocab) {
        return Err(ApiError::invalid(
            "logit_bias",
            format!("logit_bias names token {t}, but the model's vocabulary has {vocab} tokens"),
        ));
    }
    let (stream, include_usage) = (chat.stream, chat.include_usage);
    let request = to_request(chat);
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
