//! The OpenAI-compatible part of the API: `GET /v1/models`, `GET /v1/models/{id}`,
//! `POST /v1/chat/completions` and `POST /v1/completions` (with `stream: true` as
//! server-sent events), mapped onto the engine, and engine errors mapped onto API errors.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::Engine as _;
use futures_util::stream;
use serde_json::{json, Value};
use veil_model::{
    CacheScope, ChatMessage, Engine, EngineError, Event, GenerateRequest, SamplingParams,
    TokenLogprob,
};
use veil_openai::{
    parse_tool_calls, tool_call_grammar, Chat, ChatRequest, CompletionRequest, Embedding,
    EmbeddingRequest, ErrorKind, RequestError, Sampling, ToolChoice,
};

use crate::auth::Caller;
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

/// The model object of OpenAI's `/v1/models`.
fn model_object(state: &AppState, engine: &dyn Engine) -> Value {
    json!({ "id": state.model_id(engine), "object": "model", "created": state.ready_at(), "owned_by": "veil" })
}

/// `GET /v1/models`: the one model this server serves.
pub(crate) async fn models(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let engine = engine(&state)?;
    Ok(
        Json(json!({ "object": "list", "data": [model_object(&state, engine.as_ref())] }))
            .into_response(),
    )
}

/// `GET /v1/models/{id}`: the model, when `id` names it.
pub(crate) async fn model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let engine = engine(&state)?;
    let served = state.model_id(engine.as_ref());
    if id != served {
        let id: String = id.chars().take(64).collect();
        return Err(ApiError {
            param: Some("model".into()),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "model_not_found",
                format!("model {id:?} does not exist; this server serves {served:?}"),
            )
        });
    }
    Ok(Json(model_object(&state, engine.as_ref())).into_response())
}

/// Checked sampling as the engine takes it: the request's values over the engine's
/// defaults.
fn sampling_params(s: Sampling) -> SamplingParams {
    let d = SamplingParams::default();
    SamplingParams {
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
        grammar: s.grammar,
        logprobs: s.logprobs,
    }
}

/// Whose cached prompt prefixes a request may reuse (`docs/threat-model.md`, "Prompt
/// reuse"): with API keys, the caller's own, narrowed by `prompt_cache_key` when given;
/// without, only those of requests that sent the same `prompt_cache_key`, a secret the
/// client picks per conversation (`veil chat` does); with neither, none.
fn cache_scope(caller: Option<&Caller>, prompt_cache_key: Option<&str>) -> Option<CacheScope> {
    let mut d = ring::digest::Context::new(&ring::digest::SHA256);
    d.update(b"veil prompt cache scope v1\0");
    match (caller, prompt_cache_key) {
        (None, None) => return None,
        (Some(caller), _) => {
            d.update(b"api key\0");
            d.update(&caller.digest);
        }
        (None, Some(_)) => d.update(b"no api key\0"),
    }
    if let Some(key) = prompt_cache_key {
        d.update(b"prompt_cache_key\0");
        d.update(key.as_bytes());
    }
    Some(CacheScope(
        d.finish().as_ref().try_into().expect("SHA-256 is 32 bytes"),
    ))
}

/// A checked chat as the engine takes it.
fn chat_request(chat: Chat, caller: Option<&Caller>) -> GenerateRequest {
    let messages = chat
        .messages
        .into_iter()
        .map(|m| ChatMessage {
            role: m.role,
            content: m.content,
            tool_calls: m.tool_calls,
            tool_call_id: m.tool_call_id,
        })
        .collect();
    let mut request = GenerateRequest::chat(messages);
    request.tools = chat.tools;
    request.cache_scope = cache_scope(caller, chat.sampling.prompt_cache_key.as_deref());
    request.params = sampling_params(chat.sampling);
    request
}

/// Names of ignored fields go to the debug log; never a value, which could be a secret
/// or a prompt.
fn log_ignored(route: &str, ignored: &[String]) {
    if !ignored.is_empty() {
        tracing::debug!(route, fields = ?ignored, "unknown request fields ignored");
    }
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
        EngineError::InvalidParam { param, message } => ApiError::invalid(param, message),
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

/// Log-probabilities received and not yet sent, in OpenAI's shapes.
struct Logprobs {
    kind: Kind,
    /// Whether the request asked for them (`null` in every answer otherwise).
    wanted: bool,
    pending: Vec<TokenLogprob>,
    /// Bytes of completion text before the pending tokens (`text_offset`).
    offset: usize,
}

impl Logprobs {
    /// The pending tokens' log-probabilities (chat: `{"content": [...]}`; completions:
    /// `tokens`, `token_logprobs`, `top_logprobs`, `text_offset`), or `null` when not
    /// asked for.
    fn take(&mut self) -> Value {
        if !self.wanted {
            return Value::Null;
        }
        let pending = std::mem::take(&mut self.pending);
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match self.kind {
            Kind::Chat => {
                let entry = |b: &[u8], logprob: f32| json!({ "token": text(b), "logprob": logprob, "bytes": b });
                let content: Vec<Value> = pending
                    .iter()
                    .map(|l| {
                        let mut e = entry(&l.bytes, l.logprob);
                        e["top_logprobs"] = l.top.iter().map(|(b, lp)| entry(b, *lp)).collect();
                        e
                    })
                    .collect();
                json!({ "content": content, "refusal": null })
            }
            Kind::Text => {
                let (mut tokens, mut logprobs, mut top, mut offsets) =
                    (vec![], vec![], vec![], vec![]);
                for l in &pending {
                    let t = text(&l.bytes);
                    offsets.push(self.offset);
                    self.offset += t.len();
                    tokens.push(t);
                    logprobs.push(l.logprob);
                    let alternatives: serde_json::Map<String, Value> =
                        l.top.iter().map(|(b, lp)| (text(b), json!(lp))).collect();
                    top.push(alternatives);
                }
                json!({ "tokens": tokens, "token_logprobs": logprobs, "top_logprobs": top, "text_offset": offsets })
            }
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn completion_id(prefix: &str) -> String {
    let mut b = [0u8; 12];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("the system CSPRNG works");
    format!("{prefix}-{}", hex::encode(b))
}

/// `POST /v1/chat/completions`: a completion, or server-sent events with `stream: true`.
pub(crate) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
    Json(req): Json<ChatRequest>,
) -> Result<Response, ApiError> {
    let engine = engine(&state)?;
    let model = state.model_id(engine.as_ref());
    log_ignored("/v1/chat/completions", &req.ignored());
    let mut chat = req.check(&model, engine.info().context_length)?;
    // Tools go to the template whatever it does with them; calls are asked for and parsed
    // back only where the template has them (the Hermes convention).
    let template_calls = engine.info().tool_calls;
    let required = matches!(
        chat.tool_choice,
        ToolChoice::Required | ToolChoice::Function(_)
    );
    if required && !template_calls {
        return Err(ApiError::invalid(
            "tool_choice",
            "this model's chat template has no tool calls: tool_choice may only be auto or none",
        ));
    }
    if let (Some(tools), true) = (&chat.tools, template_calls) {
        if let Some(g) = tool_call_grammar(tools, &chat.tool_choice)? {
            if chat.sampling.grammar.is_some() {
                return Err(ApiError::invalid(
                    "response_format",
                    "a JSON response_format cannot be combined with a required tool call",
                ));
            }
            chat.sampling.grammar = Some(g);
        }
    }
    let (stream, include_usage) = (chat.stream, chat.include_usage);
    let answer = Answer {
        kind: Kind::Chat,
        model,
        stream,
        include_usage,
        tool_calls: chat.tools.is_some() && template_calls,
    };
    let request = chat_request(chat, caller.as_ref().map(|c| &c.0));
    generate(state, engine, request, answer).await
}

/// `POST /v1/completions`: the prompt continued as it is (no chat template), or
/// server-sent events with `stream: true`.
pub(crate) async fn completions(
    State(state): State<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
    Json(req): Json<CompletionRequest>,
) -> Result<Response, ApiError> {
    let engine = engine(&state)?;
    let model = state.model_id(engine.as_ref());
    log_ignored("/v1/completions", &req.ignored());
    let completion = req.check(&model, engine.info().context_length)?;
    let answer = Answer {
        kind: Kind::Text,
        model,
        stream: completion.stream,
        include_usage: completion.include_usage,
        tool_calls: false,
    };
    let mut request = GenerateRequest::text(completion.prompt);
    request.cache_scope = cache_scope(
        caller.as_ref().map(|c| &c.0),
        completion.sampling.prompt_cache_key.as_deref(),
    );
    request.params = sampling_params(completion.sampling);
    generate(state, engine, request, answer).await
}

/// `POST /v1/embeddings`: the loaded model's pooled embeddings (mean over each input's
/// tokens, unit length), as floats or, when asked (the OpenAI SDKs' default), base64 of
/// little-endian `f32`s. Computed on a blocking thread, one request at a time.
pub(crate) async fn embeddings(
    State(state): State<Arc<AppState>>,
    Json(req): Json<EmbeddingRequest>,
) -> Result<Response, ApiError> {
    let engine = engine(&state)?;
    let model = state.model_id(engine.as_ref());
    log_ignored("/v1/embeddings", &req.ignored());
    let Embedding { inputs, base64 } = req.check(&model, engine.info().context_length)?;
    let out = prepared(&state, "input", move || engine.embed(&inputs)).await?;
    state.metrics.count_tokens(out.prompt_tokens, 0, 0);
    let data: Vec<Value> = out
        .vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    let tokens = out.prompt_tokens;
    Ok(Json(json!({
        "object": "list", "data": data, "model": model,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    }))
    .into_response())
}

/// Runs `work` (rendering, tokenizing, embedding: CPU work) on a blocking thread under one
/// of the `prepare` permits, never on the async workers that answer health, attestation
/// and provisioning. A refusal of the engine's that names `messages` names `input` (the
/// request's own field) instead.
async fn prepared<T: Send + 'static>(
    state: &AppState,
    input: &'static str,
    work: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, ApiError> {
    let permit = Arc::clone(&state.prepare)
        .acquire_owned()
        .await
        .map_err(|_| engine_error(EngineError::Stopped))?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
    .map_err(|_| engine_error(EngineError::Stopped))?
    .map_err(|e| {
        let mut err = engine_error(e);
        if err.param.as_deref() == Some("messages") {
            err.param = Some(input.into());
        }
        err
    })
}

/// Which OpenAI answer: a chat completion or a text completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

/// How to answer a request.
struct Answer {
    kind: Kind,
    model: String,
    stream: bool,
    include_usage: bool,
    /// Tools were offered to a template that calls them: the answer is parsed for calls
    /// (and, streamed, held until it ends).
    tool_calls: bool,
}

/// The answer's text as OpenAI's message: its calls when it holds some (then
/// `finish_reason` is `tool_calls`), or the text.
fn with_tool_calls(text: String, finish: Value) -> (Value, Option<Value>, Value) {
    match parse_tool_calls(&text) {
        Some((content, calls)) => {
            let calls: Vec<Value> = calls
                .into_iter()
                .enumerate()
                .map(|(index, c)| {
                    json!({ "index": index, "id": completion_id("call"), "type": "function",
                            "function": { "name": c.name, "arguments": c.arguments } })
                })
                .collect();
            let content = if content.is_empty() {
                Value::Null
            } else {
                json!(content)
            };
            (content, Some(json!(calls)), json!("tool_calls"))
        }
        None => (json!(text), None, finish),
    }
}

/// Submits `request` and answers with the whole completion, or with server-sent events.
async fn generate(
    state: Arc<AppState>,
    engine: Arc<dyn Engine>,
    request: GenerateRequest,
    answer: Answer,
) -> Result<Response, ApiError> {
    let Answer {
        kind,
        model,
        stream,
        include_usage,
        tool_calls,
    } = answer;
    let mut logprobs = Logprobs {
        kind,
        wanted: request.params.logprobs.is_some(),
        pending: Vec::new(),
        offset: 0,
    };
    // Rendering and tokenizing, on a blocking thread; the engine refuses a prompt whose
    // tokens do not fit the context before queueing it (for a text completion, the field
    // at fault is `prompt`).
    let input = match kind {
        Kind::Chat => "messages",
        Kind::Text => "prompt",
    };
    let mut rx = prepared(&state, input, move || engine.submit(request)).await?;

    let (id, object, chunk_object) = match kind {
        Kind::Chat => (
            completion_id("chatcmpl"),
            "chat.completion",
            "chat.completion.chunk",
        ),
        Kind::Text => (completion_id("cmpl"), "text_completion", "text_completion"),
    };
    let created = now_secs();
    let usage_json = |u: &veil_model::Usage| {
        json!({
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "prompt_tokens_details": { "cached_tokens": u.cached_tokens },
        })
    };
    if !stream {
        let mut text = String::new();
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Text(t) => text.push_str(&t),
                Event::Logprob(l) => logprobs.pending.push(l),
                Event::Done { finish, usage, .. } => {
                    state.metrics.count_tokens(
                        usage.prompt_tokens,
                        usage.completion_tokens,
                        usage.cached_tokens,
                    );
                    let lp = logprobs.take();
                    let choice = match kind {
                        Kind::Chat if tool_calls => {
                            let (content, calls, finish) = with_tool_calls(text, json!(finish));
                            let mut message = json!({ "role": "assistant", "content": content });
                            if let Some(mut calls) = calls {
                                // `index` belongs to streamed deltas only.
                                for c in calls.as_array_mut().into_iter().flatten() {
                                    if let Some(o) = c.as_object_mut() {
                                        o.remove("index");
                                    }
                                }
                                message["tool_calls"] = calls;
                            }
                            json!({ "index": 0, "message": message, "finish_reason": finish, "logprobs": lp })
                        }
                        Kind::Chat => {
                            json!({ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": finish, "logprobs": lp })
                        }
                        Kind::Text => {
                            json!({ "index": 0, "text": text, "finish_reason": finish, "logprobs": lp })
                        }
                    };
                    return Ok(Json(json!({
                        "id": id, "object": object, "created": created, "model": model,
                        "choices": [choice], "usage": usage_json(&usage)
                    }))
                    .into_response());
                }
                Event::Error(e) => return Err(engine_error(e)),
            }
        }
        return Err(engine_error(EngineError::Stopped));
    }
    // Streaming: for a chat the role first, then text deltas, then the finish reason (and
    // usage if asked), then [DONE]. Dropping the stream (client gone) drops `rx`:
    // generation stops.
    let chunk = move |text: Option<&str>, finish: Value, logprobs: Value| {
        let choice = match kind {
            Kind::Chat => {
                json!({ "index": 0, "delta": text.map_or(json!({}), |t| json!({ "content": t })), "finish_reason": finish, "logprobs": logprobs })
            }
            Kind::Text => {
                json!({ "index": 0, "text": text.unwrap_or_default(), "finish_reason": finish, "logprobs": logprobs })
            }
        };
        json!({ "id": id, "object": chunk_object, "created": created, "model": model, "choices": [choice] })
    };
    let first = match kind {
        Kind::Chat => {
            let mut c = chunk(Some(""), Value::Null, Value::Null);
            c["choices"][0]["delta"] = json!({ "role": "assistant", "content": "" });
            Some(c)
        }
        Kind::Text => None,
    };
    enum Phase {
        Start,
        Streaming,
        Done,
    }
    // With tools, the text is held until the end, where it is parsed for calls.
    let held = tool_calls.then(String::new);
    let events = stream::unfold(
        (rx, Phase::Start, state, chunk, first, logprobs, held),
        move |(mut rx, phase, state, chunk, first, mut logprobs, mut held)| async move {
            match phase {
                Phase::Start => {
                    let evs = first
                        .iter()
                        .map(|c| SseEvent::default().data(c.to_string()))
                        .collect();
                    Some((
                        evs,
                        (rx, Phase::Streaming, state, chunk, first, logprobs, held),
                    ))
                }
                Phase::Streaming => {
                    let out = match rx.recv().await {
                        // Held until the text that holds the token goes out.
                        Some(Event::Logprob(l)) => {
                            logprobs.pending.push(l);
                            (vec![], Phase::Streaming)
                        }
                        Some(Event::Text(t)) if held.is_some() => {
                            held.get_or_insert_with(String::new).push_str(&t);
                            (vec![], Phase::Streaming)
                        }
                        Some(Event::Text(t)) => (
                            vec![SseEvent::default()
                                .data(chunk(Some(&t), Value::Null, logprobs.take()).to_string())],
                            Phase::Streaming,
                        ),
                        Some(Event::Done { finish, usage, .. }) => {
                            state.metrics.count_tokens(
                                usage.prompt_tokens,
                                usage.completion_tokens,
                                usage.cached_tokens,
                            );
                            // The tokens of text never sent (a stop sequence's) end here.
                            let lp = if logprobs.pending.is_empty() {
                                Value::Null
                            } else {
                                logprobs.take()
                            };
                            let mut evs = vec![];
                            let mut finish = json!(finish);
                            if let Some(text) = held.take() {
                                let (content, calls, f) = with_tool_calls(text, finish);
                                finish = f;
                                if let Some(content) = content.as_str().filter(|c| !c.is_empty()) {
                                    let c = chunk(Some(content), Value::Null, Value::Null);
                                    evs.push(SseEvent::default().data(c.to_string()));
                                }
                                if let Some(calls) = calls {
                                    let mut c = chunk(None, Value::Null, Value::Null);
                                    c["choices"][0]["delta"] = json!({ "tool_calls": calls });
                                    evs.push(SseEvent::default().data(c.to_string()));
                                }
                            }
                            evs.push(SseEvent::default().data(chunk(None, finish, lp).to_string()));
                            if include_usage {
                                let mut u = chunk(None, Value::Null, Value::Null);
                                u["choices"] = json!([]);
                                u["usage"] = usage_json(&usage);
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
                    Some((out.0, (rx, out.1, state, chunk, first, logprobs, held)))
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
