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

use veil_attestation::receipt::{self, Receipt, ReceiptSampling};

use crate::auth::Caller;
use crate::error::{ApiError, HashedJson, Json};
use crate::state::{AppState, Lifecycle};

/// The engine, or the 503 that says why there is none.
fn engine(state: &AppState) -> Result<Arc<dyn Engine>, ApiError> {
    match state.state() {
        Lifecycle::Ready(engine) => Ok(engine),
        Lifecycle::Locked => Err(match state.locked_for() {
            Some(reason) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                reason.code(),
                format!(
                    "the model is locked again, its weights wiped: {}",
                    reason.message()
                ),
            ),
            None => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "model_locked",
                "the model is locked: no key has been provisioned",
            ),
        }),
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
    body: HashedJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let HashedJson { value: req, sha256 } = body;
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
        route: "/v1/chat/completions",
        request_sha256: sha256,
    };
    let request = chat_request(chat, caller.as_ref().map(|c| &c.0));
    generate(state, engine, request, answer).await
}

/// `POST /v1/completions`: the prompt continued as it is (no chat template), or
/// server-sent events with `stream: true`.
pub(crate) async fn completions(
    State(state): State<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
    body: HashedJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let HashedJson { value: req, sha256 } = body;
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
        route: "/v1/completions",
        request_sha256: sha256,
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
    /// The route, as the receipt names it.
    route: &'static str,
    /// SHA-256 of the request body as received.
    request_sha256: [u8; 32],
}

/// What a receipt states of a finished answer.
struct Finished<'a> {
    id: &'a str,
    /// The text as generated (with tools, before the calls were parsed out).
    text: &'a str,
    tokens: &'a [u32],
    usage: &'a veil_model::Usage,
    finish: veil_model::FinishReason,
}

/// What a receipt states that is known before generation starts.
struct ReceiptPlan {
    route: &'static str,
    request_sha256: [u8; 32],
    measurement: [u8; 48],
    sampling: ReceiptSampling,
}

impl ReceiptPlan {
    /// The plan for `request`, or `None` when the server signs no receipts. Fails closed:
    /// with receipts on, an answer that cannot carry one is not given.
    async fn new(
        state: &AppState,
        answer: &Answer,
        request: &GenerateRequest,
    ) -> Result<Option<Self>, ApiError> {
        if state.receipts.is_none() {
            return Ok(None);
        }
        let measurement = state.measurement().await.map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "attestation_failed",
                format!("no receipt can be signed: {e}"),
            )
        })?;
        let p = &request.params;
        Ok(Some(ReceiptPlan {
            route: answer.route,
            request_sha256: answer.request_sha256,
            measurement,
            sampling: ReceiptSampling {
                temperature: p.temperature,
                top_p: p.top_p,
                top_k: p.top_k,
                min_p: p.min_p,
                repetition_penalty: p.repetition_penalty,
                seed: p.seed,
                max_tokens: p.max_tokens,
                stop: p.stop.clone(),
                ignore_eos: p.ignore_eos,
                logit_bias: p.logit_bias.clone(),
                grammar_sha256: p.grammar.as_deref().map(|g| receipt::sha256(g.as_bytes())),
            },
        }))
    }

    /// The signed receipt of a finished answer, whose response bytes have `response_sha256`.
    fn sign(
        &self,
        state: &AppState,
        response_sha256: [u8; 32],
        done: Finished<'_>,
    ) -> Option<String> {
        let Finished {
            id,
            text,
            tokens,
            usage,
            finish,
        } = done;
        let signer = state.receipts.as_ref()?;
        let receipt = Receipt {
            version: receipt::VERSION,
            id: id.to_owned(),
            route: self.route.to_owned(),
            seq: signer.next_seq(),
            issued_at: now_secs(),
            request_sha256: self.request_sha256,
            response_sha256,
            text_sha256: receipt::sha256(text.as_bytes()),
            tokens_sha256: receipt::tokens_sha256(tokens),
            completion_tokens: usage.completion_tokens,
            prompt_tokens: usage.prompt_tokens,
            finish_reason: json!(finish).as_str().unwrap_or_default().to_owned(),
            model_sha256: state.header.model_sha256,
            key_id: state.header.key_id.0,
            measurement: self.measurement,
            sampling: self.sampling.clone(),
        };
        state
            .metrics
            .receipts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(signer.sign(&receipt))
    }
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
    let plan = ReceiptPlan::new(&state, &answer, &request).await?;
    let Answer {
        kind,
        model,
        stream,
        include_usage,
        tool_calls,
        ..
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
    if !stream {
        let mut text = String::new();
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Text(t) => text.push_str(&t),
                Event::Logprob(l) => logprobs.pending.push(l),
                Event::Done {
                    finish,
                    usage,
                    tokens,
                    ..
                } => {
                    state.metrics.count_tokens(
                        usage.prompt_tokens,
                        usage.completion_tokens,
                        usage.cached_tokens,
                    );
                    let generated = std::mem::take(&mut text);
                    let lp = logprobs.take();
                    let choice = match kind {
                        Kind::Chat if tool_calls => {
                            let (content, calls, finish) =
                                with_tool_calls(generated.clone(), json!(finish));
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
                            json!({ "index": 0, "message": { "role": "assistant", "content": generated }, "finish_reason": finish, "logprobs": lp })
                        }
                        Kind::Text => {
                            json!({ "index": 0, "text": generated, "finish_reason": finish, "logprobs": lp })
                        }
                    };
                    let body = json!({
                        "id": id, "object": object, "created": created, "model": model,
                        "choices": [choice], "usage": usage_json(&usage)
                    })
                    .to_string();
                    let signed = plan.as_ref().and_then(|p| {
                        let digest = receipt::sha256(body.as_bytes());
                        let done = Finished {
                            id: &id,
                            text: &generated,
                            tokens: &tokens,
                            usage: &usage,
                            finish,
                        };
                        p.sign(&state, digest, done)
                    });
                    let mut response = (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            axum::http::HeaderValue::from_static("application/json"),
                        )],
                        body,
                    )
                        .into_response();
                    if let Some(v) = signed.and_then(|s| axum::http::HeaderValue::from_str(&s).ok())
                    {
                        response.headers_mut().insert(receipt::HEADER, v);
                    }
                    return Ok(response);
                }
                Event::Error(e) => return Err(engine_error(e)),
            }
        }
        return Err(engine_error(EngineError::Stopped));
    }
    // Streaming: for a chat the role first, then text deltas, then the finish reason (and
    // usage if asked), then the receipt, then [DONE]. Dropping the stream (client gone)
    // drops `rx`: generation stops.
    let receipt_id = id.clone();
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
    // With tools, the text is held until the end, where it is parsed for calls.
    let held = tool_calls.then(String::new);
    let streamed = Streamed {
        rx,
        phase: Phase::Start,
        state,
        chunk,
        first,
        logprobs,
        held,
        signing: plan.map(|plan| Signing {
            plan,
            text: String::new(),
            id: receipt_id,
            sent: ring::digest::Context::new(&ring::digest::SHA256),
        }),
        include_usage,
    };
    let events = stream::unfold(streamed, |mut s| async move {
        let payloads = s.next().await?;
        Some((payloads, s))
    });
    let flat = futures_util::StreamExt::flat_map(events, |payloads| {
        stream::iter(
            payloads
                .into_iter()
                .map(|p| Ok::<_, Infallible>(SseEvent::default().data(p))),
        )
    });
    Ok(Sse::new(flat)
        .keep_alive(KeepAlive::default())
        .into_response())
}

enum Phase {
    Start,
    Streaming,
    Done,
}

/// A receipt in the making, for a streamed answer.
struct Signing {
    plan: ReceiptPlan,
    /// The text generated so far (with tools, `held` has it instead).
    text: String,
    id: String,
    /// SHA-256 over the `data:` payloads sent so far, each followed by `\n`.
    sent: ring::digest::Context,
}

/// A streamed answer: what is left to send.
struct Streamed<C> {
    rx: veil_model::EventStream,
    phase: Phase,
    state: Arc<AppState>,
    chunk: C,
    first: Option<Value>,
    logprobs: Logprobs,
    held: Option<String>,
    signing: Option<Signing>,
    include_usage: bool,
}

impl<C: Fn(Option<&str>, Value, Value) -> Value> Streamed<C> {
    /// The next events' payloads, or `None` after `[DONE]`.
    async fn next(&mut self) -> Option<Vec<String>> {
        let payloads = match self.phase {
            Phase::Start => {
                self.phase = Phase::Streaming;
                self.first
                    .take()
                    .map(|c| c.to_string())
                    .into_iter()
                    .collect()
            }
            Phase::Streaming => match self.rx.recv().await {
                // Held until the text that holds the token goes out.
                Some(Event::Logprob(l)) => {
                    self.logprobs.pending.push(l);
                    vec![]
                }
                Some(Event::Text(t)) if self.held.is_some() => {
                    self.held.get_or_insert_with(String::new).push_str(&t);
                    vec![]
                }
                Some(Event::Text(t)) => {
                    if let Some(s) = self.signing.as_mut() {
                        s.text.push_str(&t);
                    }
                    vec![(self.chunk)(Some(&t), Value::Null, self.logprobs.take()).to_string()]
                }
                Some(Event::Done {
                    finish,
                    usage,
                    tokens,
                    ..
                }) => {
                    self.phase = Phase::Done;
                    return Some(self.finish(finish, &usage, &tokens));
                }
                Some(Event::Error(e)) => {
                    self.phase = Phase::Done;
                    let err = engine_error(e);
                    let body = json!({ "error": { "message": err.message, "type": "server_error", "code": err.code } });
                    return Some(vec![body.to_string(), "[DONE]".to_owned()]);
                }
                None => {
                    self.phase = Phase::Done;
                    return Some(vec!["[DONE]".to_owned()]);
                }
            },
            Phase::Done => return None,
        };
        if let Some(s) = self.signing.as_mut() {
            for p in &payloads {
                s.sent.update(p.as_bytes());
                s.sent.update(b"\n");
            }
        }
        Some(payloads)
    }

    /// The last events: held text or tool calls, the finish reason, usage if asked, the
    /// receipt, `[DONE]`.
    fn finish(
        &mut self,
        finish: veil_model::FinishReason,
        usage: &veil_model::Usage,
        tokens: &[u32],
    ) -> Vec<String> {
        self.state.metrics.count_tokens(
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_tokens,
        );
        // The tokens of text never sent (a stop sequence's) end here.
        let lp = if self.logprobs.pending.is_empty() {
            Value::Null
        } else {
            self.logprobs.take()
        };
        let chunk = &self.chunk;
        let mut payloads = vec![];
        let engine_finish = finish;
        let mut finish = json!(finish);
        let held = self.held.take();
        if let Some(text) = held.clone() {
            let (content, calls, f) = with_tool_calls(text, finish);
            finish = f;
            if let Some(content) = content.as_str().filter(|c| !c.is_empty()) {
                payloads.push(chunk(Some(content), Value::Null, Value::Null).to_string());
            }
            if let Some(calls) = calls {
                let mut c = chunk(None, Value::Null, Value::Null);
                c["choices"][0]["delta"] = json!({ "tool_calls": calls });
                payloads.push(c.to_string());
            }
        }
        payloads.push(chunk(None, finish, lp).to_string());
        if self.include_usage {
            let mut u = chunk(None, Value::Null, Value::Null);
            u["choices"] = json!([]);
            u["usage"] = usage_json(usage);
            payloads.push(u.to_string());
        }
        if let Some(mut s) = self.signing.take() {
            for p in &payloads {
                s.sent.update(p.as_bytes());
                s.sent.update(b"\n");
            }
            let digest: [u8; 32] = s
                .sent
                .finish()
                .as_ref()
                .try_into()
                .expect("SHA-256 is 32 bytes");
            let text = held.as_deref().unwrap_or(&s.text);
            let done = Finished {
                id: &s.id,
                text,
                tokens,
                usage,
                finish: engine_finish,
            };
            let signed = s.plan.sign(&self.state, digest, done);
            if let Some(signed) = signed {
                // An empty chunk, as every OpenAI stream has, that SDKs read past; the
                // receipt is a field they keep as an extra.
                let mut c = chunk(None, Value::Null, Value::Null);
                c[receipt::CHUNK_FIELD] = json!(signed);
                payloads.push(c.to_string());
            }
        }
        payloads.push("[DONE]".to_owned());
        payloads
    }
}

fn usage_json(u: &veil_model::Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": u.cached_tokens },
    })
}
