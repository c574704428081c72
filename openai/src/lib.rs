//! The OpenAI chat-completion request as `veil-server` takes it: parsed ([`ChatRequest`])
//! and checked against the model and its context ([`ChatRequest::check`]) into a
//! [`Chat`] whose every value is within its documented bound, or refused with a
//! [`RequestError`] naming the field. No engine, no I/O: this is the part of the server
//! that reads what strangers send, kept apart so that it can be fuzzed on its own.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

pub mod grammar;

use serde::Deserialize;
use serde_json::Value;

/// Content bytes allowed per token of the context: a chat whose messages' content is
/// longer than `context_length × MAX_CONTENT_BYTES_PER_TOKEN` bytes is refused before it
/// is rendered or tokenized (no tokenizer packs 32 bytes into a token of ordinary text).
pub const MAX_CONTENT_BYTES_PER_TOKEN: usize = 32;
/// The content cap never goes below this (small test contexts).
pub const MIN_CONTENT_BYTES: usize = 64 << 10;
/// Largest `top_k`.
pub const MAX_TOP_K: u32 = 1000;
/// Largest `repetition_penalty` (1 is off; beyond 2 the output degenerates).
pub const MAX_REPETITION_PENALTY: f32 = 2.0;
/// Most `stop` sequences.
pub const MAX_STOP: usize = 4;

/// One message of a checked chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool` (OpenAI's `developer` is `system`).
    pub role: String,
    /// The text (text content parts joined by newlines).
    pub content: String,
    /// An assistant's tool calls as sent (an array), for the template.
    pub tool_calls: Option<Value>,
    /// A `tool` message's call id.
    pub tool_call_id: Option<String>,
}

/// A message as a client sends it: `content` a string, an array of content parts, or null
/// (an assistant turn); other fields (`name`, ...) are accepted and ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct RawMessage {
    role: String,
    #[serde(default)]
    content: Value,
    #[serde(default)]
    tool_calls: Option<Value>,
    #[serde(default)]
    tool_call_id: Option<String>,
}

/// Most names of ignored fields kept for the debug log, each cut to 32 characters.
pub const MAX_IGNORED_NAMES: usize = 8;

/// The OpenAI chat completion request. The fields Veil honours are parsed and checked;
/// those whose meaning it cannot honour are refused by name when they ask for it
/// (`n` > 1, a required tool call, audio); any
/// other field is accepted and ignored, as OpenAI's API and llama.cpp's server do
/// ([`ChatRequest::ignored`] names them).
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    model: Option<String>,
    messages: Vec<RawMessage>,
    stream: Option<bool>,
    stream_options: Option<Value>,
    n: Option<u32>,
    response_format: Option<Value>,
    logprobs: Option<bool>,
    top_logprobs: Option<u32>,
    tool_choice: Option<Value>,
    tools: Option<Value>,
    modalities: Option<Value>,
    audio: Option<Value>,
    /// Before `other`: serde hands a flattened struct its fields first.
    #[serde(flatten)]
    sampling: SamplingFields,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

/// The sampling fields that chat and text completions share.
#[derive(Debug, Clone, Default, Deserialize)]
struct SamplingFields {
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    min_p: Option<f32>,
    seed: Option<i64>,
    stop: Option<Value>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    logit_bias: Option<Value>,
    /// llama.cpp's extension: keep generating past end-of-generation tokens.
    ignore_eos: Option<bool>,
    /// OpenAI's prompt-cache key: which earlier requests' prompts this one may reuse.
    prompt_cache_key: Option<Value>,
}

/// Sampling as the request asked for it; `None` leaves the engine's default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sampling {
    /// In [0, 2].
    pub temperature: Option<f32>,
    /// In (0, 1].
    pub top_p: Option<f32>,
    /// In [0, [`MAX_TOP_K`]].
    pub top_k: Option<u32>,
    /// The low 32 bits of the request's seed.
    pub seed: Option<u32>,
    /// At least 1.
    pub max_tokens: Option<u32>,
    /// At most [`MAX_STOP`].
    pub stop: Vec<String>,
    /// In (0, [`MAX_REPETITION_PENALTY`]].
    pub repetition_penalty: Option<f32>,
    /// In [0, 1].
    pub min_p: Option<f32>,
    /// Token id → bias in [-100, 100], at most [`MAX_LOGIT_BIAS`] entries.
    pub logit_bias: Vec<(u32, f32)>,
    /// Never sample an end-of-generation token.
    pub ignore_eos: bool,
    /// A llama.cpp grammar (GBNF, start symbol `root`) the output must follow: from
    /// `response_format` `json_object` or `json_schema`.
    pub grammar: Option<String>,
    /// `prompt_cache_key` (not sampling, but shared by both kinds of request): requests
    /// with the same key (and, with API keys, the same caller) may reuse each other's
    /// prompt prefix. At most [`MAX_PROMPT_CACHE_KEY`] bytes.
    pub prompt_cache_key: Option<String>,
    /// Report each token's log-probability and this many alternatives (chat:
    /// `logprobs: true` with `top_logprobs`, at most [`MAX_TOP_LOGPROBS`]; completions:
    /// `logprobs: N`, at most [`MAX_COMPLETION_LOGPROBS`]).
    pub logprobs: Option<u32>,
}

/// Most `top_logprobs` of a chat completion (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// Most `logprobs` of a text completion (OpenAI's limit).
pub const MAX_COMPLETION_LOGPROBS: u32 = 5;

/// Longest `prompt_cache_key`, in bytes.
pub const MAX_PROMPT_CACHE_KEY: usize = 1024;

/// Most `logit_bias` entries (OpenAI's limit).
pub const MAX_LOGIT_BIAS: usize = 300;

/// A checked chat request.
#[derive(Debug, Clone, PartialEq)]
pub struct Chat {
    /// At least one, at most the context length, within the content cap, each of a known
    /// role.
    pub messages: Vec<Message>,
    /// The tools offered (OpenAI's array of function definitions, each checked), for the
    /// chat template; `None` when there are none or `tool_choice` is `none`.
    pub tools: Option<Value>,
    /// What `tool_choice` asks for.
    pub tool_choice: ToolChoice,
    /// Sampling, every value within its bound.
    pub sampling: Sampling,
    /// Whether to answer with server-sent events.
    pub stream: bool,
    /// With `stream`: whether a last chunk carries the usage.
    pub include_usage: bool,
}

/// What `tool_choice` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides (OpenAI's default when tools are offered).
    #[default]
    Auto,
    /// No call: the tools are not given to the template.
    None,
    /// Some call.
    Required,
    /// A call of this function.
    Function(String),
}

/// Most tools one request may offer.
pub const MAX_TOOLS: usize = 128;

/// What kind of refusal: the model named is not this one (404), or the request is not
/// valid (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// `model_not_found`.
    ModelNotFound,
    /// `invalid_request`.
    Invalid,
    /// `context_length_exceeded` (OpenAI's code): the chat cannot fit the context.
    ContextLengthExceeded,
}

/// Why a request was refused: the kind, the field at fault, and a message that quotes no
/// content of the request beyond the model name and a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    /// The kind.
    pub kind: ErrorKind,
    /// The field at fault.
    pub param: &'static str,
    /// What is wrong.
    pub message: String,
}

impl RequestError {
    fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        RequestError {
            kind: ErrorKind::Invalid,
            param,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.param, self.message)
    }
}

impl std::error::Error for RequestError {}

impl ChatRequest {
    /// Parses a request body.
    ///
    /// # Errors
    /// If it is not JSON of this shape.
    pub fn from_json(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }

    /// Checks the request for a server of `model` with a context of `context_length`
    /// tokens. The caps on message count and content bytes are cheap and come first, before
    /// anything renders or tokenizes the chat.
    ///
    /// # Errors
    /// [`RequestError`], naming the first field at fault.
    pub fn check(self, model: &str, context_length: u32) -> Result<Chat, RequestError> {
        check_model(self.model.as_deref(), model)?;
        let messages = messages(&self.messages, context_length)?;
        if self.n.is_some_and(|n| n != 1) {
            return Err(RequestError::invalid("n", "only n = 1 is supported"));
        }
        self.refuse_what_cannot_be_honoured()?;
        let (tools, tool_choice) = tools(self.tools.as_ref(), self.tool_choice.as_ref())?;
        let mut sampling = self.sampling.check()?;
        sampling.logprobs = match (self.logprobs, self.top_logprobs) {
            (Some(true), top) => {
                let top = top.unwrap_or(0);
                if top > MAX_TOP_LOGPROBS {
                    return Err(RequestError::invalid(
                        "top_logprobs",
                        format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}"),
                    ));
                }
                Some(top)
            }
            (_, Some(top)) if top > 0 => {
                return Err(RequestError::invalid(
                    "top_logprobs",
                    "top_logprobs needs logprobs: true",
                ))
            }
            _ => None,
        };
        sampling.grammar = response_format(self.response_format.as_ref())?;
        if sampling.grammar.is_some() && sampling.ignore_eos {
            return Err(RequestError::invalid(
                "ignore_eos",
                "ignore_eos cannot be combined with a JSON response_format (the answer ends when the JSON does)",
            ));
        }
        Ok(Chat {
            messages,
            tools,
            tool_choice,
            sampling,
            stream: self.stream.unwrap_or(false),
            include_usage: include_usage(self.stream_options.as_ref()),
        })
    }

    /// The names of the fields that were accepted and ignored (at most
    /// [`MAX_IGNORED_NAMES`], each at most 32 characters), for a debug log.
    pub fn ignored(&self) -> Vec<String> {
        ignored(&self.other)
    }

    /// Fields Veil knows and cannot honour, refused by name when they ask for something.
    fn refuse_what_cannot_be_honoured(&self) -> Result<(), RequestError> {
        let text_only = match &self.modalities {
            None | Some(Value::Null) => true,
            Some(Value::Array(m)) => m.iter().all(|v| v.as_str() == Some("text")),
            Some(_) => false,
        };
        if !text_only || self.audio.as_ref().is_some_and(|a| !a.is_null()) {
            return Err(RequestError::invalid(
                "modalities",
                "this model answers in text only",
            ));
        }
        Ok(())
    }
}

impl SamplingFields {
    /// The sampling asked for, each value within its bound.
    fn check(&self) -> Result<Sampling, RequestError> {
        let mut s = Sampling::default();
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(RequestError::invalid(
                    "temperature",
                    "temperature must be between 0 and 2",
                ));
            }
            s.temperature = Some(t);
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(RequestError::invalid("top_p", "top_p must be in (0, 1]"));
            }
            s.top_p = Some(p);
        }
        if let Some(k) = self.top_k {
            if k > MAX_TOP_K {
                return Err(RequestError::invalid(
                    "top_k",
                    format!("top_k must be between 0 and {MAX_TOP_K}"),
                ));
            }
            s.top_k = Some(k);
        }
        // OpenAI's seed is an integer of any size; the sampler takes 32 bits of it.
        s.seed = self.seed.map(|v| v as u32);
        if let Some(m) = self.max_completion_tokens.or(self.max_tokens) {
            if m == 0 {
                return Err(RequestError::invalid(
                    "max_tokens",
                    "max_tokens must be at least 1",
                ));
            }
            s.max_tokens = Some(m);
        }
        s.stop = match &self.stop {
            None | Some(Value::Null) => vec![],
            Some(Value::String(v)) => vec![v.clone()],
            Some(Value::Array(a)) if a.len() <= MAX_STOP && a.iter().all(Value::is_string) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Some(_) => {
                return Err(RequestError::invalid(
                    "stop",
                    format!("stop must be a string or up to {MAX_STOP} strings"),
                ))
            }
        };
        if let Some(r) = self.repetition_penalty {
            if !(r > 0.0 && r <= MAX_REPETITION_PENALTY) {
                return Err(RequestError::invalid(
                    "repetition_penalty",
                    format!("repetition_penalty must be in (0, {MAX_REPETITION_PENALTY}]"),
                ));
            }
            s.repetition_penalty = Some(r);
        }
        // Accepted for compatibility and not applied; OpenAI's range still holds.
        for (name, value) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if value.is_some_and(|v| !(-2.0..=2.0).contains(&v)) {
                return Err(RequestError::invalid(
                    name,
                    format!("{name} must be between -2 and 2"),
                ));
            }
        }
        if let Some(m) = self.min_p {
            if !(0.0..=1.0).contains(&m) {
                return Err(RequestError::invalid(
                    "min_p",
                    "min_p must be between 0 and 1",
                ));
            }
            s.min_p = Some(m);
        }
        s.logit_bias = logit_bias(self.logit_bias.as_ref())?;
        s.ignore_eos = self.ignore_eos.unwrap_or(false);
        s.prompt_cache_key = match &self.prompt_cache_key {
            None | Some(Value::Null) => None,
            Some(Value::String(k)) if k.len() <= MAX_PROMPT_CACHE_KEY => Some(k.clone()),
            Some(_) => {
                return Err(RequestError::invalid(
                    "prompt_cache_key",
                    format!(
                        "prompt_cache_key must be a string of at most {MAX_PROMPT_CACHE_KEY} bytes"
                    ),
                ))
            }
        };
        Ok(s)
    }
}

/// `response_format`: `text` (or none) needs no grammar; `json_object` and `json_schema`
/// become one ([`grammar`]).
fn response_format(format: Option<&Value>) -> Result<Option<String>, RequestError> {
    let invalid = |m: String| RequestError::invalid("response_format", m);
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(grammar::json_object())),
        Some("json_schema") => {
            let Some(schema) = format.get("json_schema").and_then(|j| j.get("schema")) else {
                return Err(invalid(
                    "response_format json_schema needs json_schema.schema".into(),
                ));
            };
            grammar::json_schema(schema)
                .map(Some)
                .map_err(|e| invalid(format!("response_format json_schema: {e}")))
        }
        _ => Err(invalid(
            "response_format.type must be text, json_object or json_schema".into(),
        )),
    }
}

/// `model`, when given, must name this server's model (404 `model_not_found` otherwise).
fn check_model(requested: Option<&str>, model: &str) -> Result<(), RequestError> {
    match requested {
        Some(m) if m != model => {
            let m: String = m.chars().take(64).collect();
            Err(RequestError {
                kind: ErrorKind::ModelNotFound,
                param: "model",
                message: format!("model {m:?} does not exist; this server serves {model:?}"),
            })
        }
        _ => Ok(()),
    }
}

/// `max_tokens` of a text completion that does not say (OpenAI's default).
pub const COMPLETION_DEFAULT_MAX_TOKENS: u32 = 16;

/// OpenAI's text completion request (`POST /v1/completions`): a prompt the model
/// continues as it is, with no chat template (special tokens in it are read as such, as
/// llama.cpp's server does). The sampling fields are those of [`ChatRequest`]; `n`,
/// `best_of` above 1, `echo` and `suffix` are refused by name; other fields
/// are accepted and ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    model: Option<String>,
    prompt: Value,
    stream: Option<bool>,
    stream_options: Option<Value>,
    n: Option<u32>,
    best_of: Option<u32>,
    echo: Option<bool>,
    suffix: Option<Value>,
    logprobs: Option<Value>,
    #[serde(flatten)]
    sampling: SamplingFields,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

/// A checked text completion request.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The prompt, within the content cap.
    pub prompt: String,
    /// Sampling, every value within its bound; `max_tokens` is always set
    /// ([`COMPLETION_DEFAULT_MAX_TOKENS`] unless the request says).
    pub sampling: Sampling,
    /// Whether to answer with server-sent events.
    pub stream: bool,
    /// With `stream`: whether a last chunk carries the usage.
    pub include_usage: bool,
}

impl CompletionRequest {
    /// Parses a request body.
    ///
    /// # Errors
    /// If it is not JSON of this shape.
    pub fn from_json(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }

    /// Checks the request for a server of `model` with a context of `context_length`
    /// tokens.
    ///
    /// # Errors
    /// [`RequestError`], naming the first field at fault.
    pub fn check(self, model: &str, context_length: u32) -> Result<Completion, RequestError> {
        check_model(self.model.as_deref(), model)?;
        let prompt = match &self.prompt {
            Value::String(p) => p.clone(),
            Value::Array(a) if a.len() == 1 && a[0].is_string() => {
                a[0].as_str().unwrap_or_default().to_owned()
            }
            Value::Array(a) if a.len() > 1 && a.iter().all(Value::is_string) => {
                return Err(RequestError::invalid(
                    "prompt",
                    "only one prompt per request is supported",
                ))
            }
            _ => {
                return Err(RequestError::invalid(
                    "prompt",
                    "prompt must be a string (token-id prompts are not supported)",
                ))
            }
        };
        let cap = content_cap(context_length);
        if prompt.len() > cap {
            return Err(RequestError {
                kind: ErrorKind::ContextLengthExceeded,
                param: "prompt",
                message: format!(
                    "{} bytes of prompt cannot fit a context of {context_length} tokens (at most {cap} bytes)",
                    prompt.len()
                ),
            });
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(RequestError::invalid("n", "only n = 1 is supported"));
        }
        if self.best_of.is_some_and(|n| n != 1) {
            return Err(RequestError::invalid(
                "best_of",
                "only best_of = 1 is supported",
            ));
        }
        if self.echo == Some(true) {
            return Err(RequestError::invalid("echo", "echo is not supported"));
        }
        if self.suffix.as_ref().is_some_and(|s| !s.is_null()) {
            return Err(RequestError::invalid(
                "suffix",
                "suffix (insertion) is not supported",
            ));
        }
        let mut sampling = self.sampling.check()?;
        sampling.logprobs = match &self.logprobs {
            None | Some(Value::Null) => None,
            Some(n) => match n.as_u64() {
                Some(n) if n <= u64::from(MAX_COMPLETION_LOGPROBS) => Some(n as u32),
                _ => {
                    return Err(RequestError::invalid(
                        "logprobs",
                        format!(
                            "logprobs must be an integer between 0 and {MAX_COMPLETION_LOGPROBS}"
                        ),
                    ))
                }
            },
        };
        sampling.max_tokens = sampling.max_tokens.or(Some(COMPLETION_DEFAULT_MAX_TOKENS));
        Ok(Completion {
            prompt,
            sampling,
            stream: self.stream.unwrap_or(false),
            include_usage: include_usage(self.stream_options.as_ref()),
        })
    }

    /// The names of the fields that were accepted and ignored, as
    /// [`ChatRequest::ignored`].
    pub fn ignored(&self) -> Vec<String> {
        ignored(&self.other)
    }
}

/// OpenAI's embeddings request (`POST /v1/embeddings`): `input` is a string or an array of
/// strings (token-id inputs are refused by name); `encoding_format` `float` (the default)
/// or `base64`; `dimensions` is refused (the model's vectors have one size); other fields
/// are accepted and ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingRequest {
    model: Option<String>,
    input: Value,
    encoding_format: Option<String>,
    dimensions: Option<u32>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

/// A checked embeddings request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Embedding {
    /// At least one, within the content cap each.
    pub inputs: Vec<String>,
    /// Whether to answer each vector as base64 of little-endian `f32`s.
    pub base64: bool,
}

impl EmbeddingRequest {
    /// Parses a request body.
    ///
    /// # Errors
    /// If it is not JSON of this shape.
    pub fn from_json(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }

    /// Checks the request for a server of `model` with a context of `context_length`
    /// tokens (the engine refuses an input of more tokens, and more than its number of
    /// inputs).
    ///
    /// # Errors
    /// [`RequestError`], naming the first field at fault.
    pub fn check(self, model: &str, context_length: u32) -> Result<Embedding, RequestError> {
        check_model(self.model.as_deref(), model)?;
        let inputs = match &self.input {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_string) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => {
                return Err(RequestError::invalid(
                    "input",
                    "input must be a string or a non-empty array of strings (token-id inputs are not supported)",
                ))
            }
        };
        let cap = content_cap(context_length);
        if let Some((i, _)) = inputs.iter().enumerate().find(|(_, s)| s.len() > cap) {
            return Err(RequestError {
                kind: ErrorKind::ContextLengthExceeded,
                param: "input",
                message: format!(
                    "input {i} cannot fit a context of {context_length} tokens (at most {cap} bytes)"
                ),
            });
        }
        if inputs.iter().any(String::is_empty) {
            return Err(RequestError::invalid("input", "an input is empty"));
        }
        let base64 = match self.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(_) => {
                return Err(RequestError::invalid(
                    "encoding_format",
                    "encoding_format must be float or base64",
                ))
            }
        };
        if self.dimensions.is_some() {
            return Err(RequestError::invalid(
                "dimensions",
                "dimensions is not supported: the model's vectors have one size",
            ));
        }
        Ok(Embedding { inputs, base64 })
    }

    /// The names of the fields that were accepted and ignored, as
    /// [`ChatRequest::ignored`].
    pub fn ignored(&self) -> Vec<String> {
        ignored(&self.other)
    }
}

/// The checked `tools` and `tool_choice`: each tool a function with a name of at most 64
/// letters, digits, `_` or `-` and an object of `parameters`; a named choice among them.
fn tools(
    tools: Option<&Value>,
    choice: Option<&Value>,
) -> Result<(Option<Value>, ToolChoice), RequestError> {
    let invalid = |m: String| RequestError::invalid("tools", m);
    let offered = match tools {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) if a.len() <= MAX_TOOLS => a.clone(),
        Some(_) => {
            return Err(invalid(format!(
                "tools must be an array of at most {MAX_TOOLS} tools"
            )))
        }
    };
    let mut names = Vec::with_capacity(offered.len());
    for tool in &offered {
        let function = tool.get("function");
        let name = function.and_then(|f| f.get("name")).and_then(Value::as_str);
        let valid = |n: &str| {
            (1..=64).contains(&n.len())
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        match (tool.get("type").and_then(Value::as_str), name) {
            (Some("function"), Some(n)) if valid(n) => names.push(n.to_owned()),
            _ => {
                return Err(invalid(
                    "each tool must be {\"type\": \"function\", \"function\": {\"name\": NAME}} with a name of at most 64 letters, digits, _ or -".into(),
                ))
            }
        }
        if function
            .and_then(|f| f.get("parameters"))
            .is_some_and(|p| !p.is_object())
        {
            return Err(invalid(
                "a tool's parameters must be a JSON schema object".into(),
            ));
        }
    }
    let choice = match choice {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(c)) if c == "auto" => ToolChoice::Auto,
        Some(Value::String(c)) if c == "none" => ToolChoice::None,
        Some(Value::String(c)) if c == "required" => ToolChoice::Required,
        Some(c) => match c.get("function").and_then(|f| f.get("name")).and_then(Value::as_str) {
            Some(n) if c.get("type").and_then(Value::as_str) == Some("function") => {
                if !names.iter().any(|t| t == n) {
                    return Err(RequestError::invalid(
                        "tool_choice",
                        "tool_choice names a function that tools does not offer",
                    ));
                }
                ToolChoice::Function(n.to_owned())
            }
            _ => {
                return Err(RequestError::invalid(
                    "tool_choice",
                    "tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": NAME}}",
                ))
            }
        },
    };
    if offered.is_empty() && matches!(choice, ToolChoice::Required | ToolChoice::Function(_)) {
        return Err(RequestError::invalid(
            "tool_choice",
            "tool_choice requires tools",
        ));
    }
    let tools =
        (!offered.is_empty() && choice != ToolChoice::None).then_some(Value::Array(offered));
    Ok((tools, choice))
}

/// The grammar that makes the answer one `<tool_call>{"name": …, "arguments": …}</tool_call>`
/// of the tools `choice` allows (all for `Required`), each call's arguments under its own
/// `parameters` schema; `None` for `auto` and `none`.
///
/// # Errors
/// A tool's parameters that the grammar cannot enforce, named.
pub fn tool_call_grammar(
    tools: &Value,
    choice: &ToolChoice,
) -> Result<Option<String>, RequestError> {
    let wanted = |name: &str| match choice {
        ToolChoice::Required => true,
        ToolChoice::Function(n) => n == name,
        ToolChoice::Auto | ToolChoice::None => false,
    };
    let calls: Vec<Value> = tools
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let f = t.get("function")?;
            let name = f.get("name")?.as_str()?;
            wanted(name).then(|| {
                let parameters = f
                    .get("parameters")
                    .cloned()
                    .unwrap_or_else(|| serde_json::json!({ "type": "object" }));
                serde_json::json!({
                    "type": "object",
                    "properties": { "name": { "const": name }, "arguments": parameters },
                })
            })
        })
        .collect();
    if calls.is_empty() {
        return Ok(None);
    }
    let schema = serde_json::json!({ "anyOf": calls });
    let g = grammar::json_schema(&schema)
        .map_err(|e| RequestError::invalid("tools", format!("a tool's parameters: {e}")))?;
    let (root, rest) = g.split_once('\n').unwrap_or((g.as_str(), ""));
    let body = root.strip_prefix("root ::= ").unwrap_or(root);
    Ok(Some(format!(
        "root ::= \"<tool_call>\" ({body}) \"</tool_call>\"\n{rest}"
    )))
}

/// A tool call parsed from an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The function's name.
    pub name: String,
    /// Its arguments, as a JSON text (OpenAI's `arguments`).
    pub arguments: String,
}

/// The calls in an answer written in the Hermes convention (`<tool_call>{"name": …,
/// "arguments": …}</tool_call>`, as many as there are) and the text before the first; or
/// `None` when it holds none, or one that is not such JSON (the answer is then text).
pub fn parse_tool_calls(text: &str) -> Option<(String, Vec<ToolCall>)> {
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    let first = text.find(OPEN)?;
    let mut calls = Vec::new();
    let mut rest = &text[first..];
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let end = after.find(CLOSE)?;
        let call: Value = serde_json::from_str(after[..end].trim()).ok()?;
        let name = call.get("name")?.as_str()?.to_owned();
        let arguments = match call.get("arguments") {
            Some(Value::String(s)) => s.clone(),
            Some(v @ Value::Object(_)) => v.to_string(),
            None => "{}".to_owned(),
            Some(_) => return None,
        };
        calls.push(ToolCall { name, arguments });
        rest = &after[end + CLOSE.len()..];
    }
    Some((text[..first].trim().to_owned(), calls))
}

/// `stream_options.include_usage`.
fn include_usage(options: Option<&Value>) -> bool {
    options
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// At most [`MAX_IGNORED_NAMES`] names, each at most 32 characters.
fn ignored(other: &BTreeMap<String, Value>) -> Vec<String> {
    other
        .keys()
        .take(MAX_IGNORED_NAMES)
        .map(|k| k.chars().take(32).collect())
        .collect()
}

/// A model id as OpenAI clients expect one: lower-case ASCII letters, digits, `.`, `-`
/// and `_`, every other run of characters one `-`, with a `.gguf` ending dropped
/// (`SmolLM2-135M-Instruct.Q4_1.gguf` → `smollm2-135m-instruct.q4_1`). `None` when
/// nothing is left.
pub fn model_slug(name: &str) -> Option<String> {
    let name = name.trim();
    let name = name
        .strip_suffix(".gguf")
        .or_else(|| name.strip_suffix(".GGUF"))
        .unwrap_or(name);
    let mut slug = String::with_capacity(name.len().min(64));
    for c in name.chars() {
        if slug.len() >= 64 {
            break;
        }
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug
        .trim_matches(|c| matches!(c, '-' | '.' | '_'))
        .to_owned();
    (!slug.is_empty()).then_some(slug)
}

/// OpenAI's `logit_bias`: an object of token ids (as strings) to biases in [-100, 100].
fn logit_bias(value: Option<&Value>) -> Result<Vec<(u32, f32)>, RequestError> {
    let invalid = || {
        RequestError::invalid(
            "logit_bias",
            format!("logit_bias must map up to {MAX_LOGIT_BIAS} token ids to numbers between -100 and 100"),
        )
    };
    let map = match value {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Object(map)) if map.len() <= MAX_LOGIT_BIAS => map,
        Some(_) => return Err(invalid()),
    };
    map.iter()
        .map(|(token, bias)| {
            let token: u32 = token.parse().map_err(|_| invalid())?;
            let bias = bias
                .as_f64()
                .filter(|b| (-100.0..=100.0).contains(b))
                .ok_or_else(invalid)?;
            Ok((token, bias as f32))
        })
        .collect()
}

/// A message's content as text: a string, null (an assistant turn that only called a
/// tool), or text content parts joined by newlines; any other part is refused by type.
fn content_text(content: &Value) -> Result<String, RequestError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => match part.get("text").and_then(Value::as_str) {
                        Some(t) => texts.push(t),
                        None => {
                            return Err(RequestError::invalid(
                                "messages",
                                "a text content part needs a text string",
                            ))
                        }
                    },
                    Some(kind) => {
                        let kind: String = kind.chars().take(32).collect();
                        return Err(RequestError::invalid(
                            "messages",
                            format!("content parts of type {kind:?} are not supported: this model reads text only"),
                        ));
                    }
                    None => {
                        return Err(RequestError::invalid(
                            "messages",
                            "each content part needs a type",
                        ))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err(RequestError::invalid(
            "messages",
            "content must be a string or an array of content parts",
        )),
    }
}

/// The checked messages: at least one, each takes at least a token of the context, the
/// content within [`MAX_CONTENT_BYTES_PER_TOKEN`] bytes a token, known roles
/// (`developer` becomes `system`).
fn messages(raw: &[RawMessage], context_length: u32) -> Result<Vec<Message>, RequestError> {
    if raw.is_empty() {
        return Err(RequestError::invalid(
            "messages",
            "messages must not be empty",
        ));
    }
    let context = context_length as usize;
    let too_long = |message: String| RequestError {
        kind: ErrorKind::ContextLengthExceeded,
        param: "messages",
        message,
    };
    if raw.len() > context {
        return Err(too_long(
            format!(
                "{} messages cannot fit a context of {context_length} tokens (at most {context} messages)",
                raw.len()
            ),
        ));
    }
    let mut messages = Vec::with_capacity(raw.len());
    for m in raw {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" => "tool",
            other => {
                let role: String = other.chars().take(32).collect();
                return Err(RequestError::invalid(
                    "messages",
                    format!("unknown role {role:?}"),
                ));
            }
        };
        let tool_calls = match &m.tool_calls {
            None | Some(Value::Null) => None,
            Some(calls @ Value::Array(a)) if role == "assistant" && a.len() <= MAX_TOOLS => {
                for call in a {
                    let function = call.get("function");
                    let named = function
                        .and_then(|f| f.get("name"))
                        .is_some_and(Value::is_string);
                    let arguments = function
                        .and_then(|f| f.get("arguments"))
                        .is_some_and(Value::is_string);
                    if !named || !arguments {
                        return Err(RequestError::invalid(
                            "messages",
                            "each tool call needs function.name and function.arguments strings",
                        ));
                    }
                }
                Some(calls.clone())
            }
            Some(_) => {
                return Err(RequestError::invalid(
                    "messages",
                    format!("tool_calls must be an assistant's array of at most {MAX_TOOLS} calls"),
                ))
            }
        };
        messages.push(Message {
            role: role.to_owned(),
            content: content_text(&m.content)?,
            tool_calls,
            tool_call_id: m
                .tool_call_id
                .as_ref()
                .map(|id| id.chars().take(256).collect()),
        });
    }
    let content: usize = messages
        .iter()
        .map(|m| m.content.len() + m.tool_calls.as_ref().map_or(0, |c| c.to_string().len()))
        .sum();
    let max_content = content_cap(context_length);
    if content > max_content {
        return Err(too_long(
            format!(
                "{content} bytes of content cannot fit a context of {context_length} tokens (at most {max_content} bytes)"
            ),
        ));
    }
    Ok(messages)
}

/// The most content bytes a chat may carry for a context of `context_length` tokens.
pub fn content_cap(context_length: u32) -> usize {
    (context_length as usize * MAX_CONTENT_BYTES_PER_TOKEN).max(MIN_CONTENT_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(body: &str) -> Result<Chat, RequestError> {
        ChatRequest::from_json(body.as_bytes())
            .expect("JSON of the request's shape")
            .check("tiny", 256)
    }

    #[test]
    fn a_plain_request_keeps_its_messages_and_leaves_sampling_to_the_engine() {
        let chat = check(r#"{"messages":[{"role":"user","content":"Hi"}]}"#).expect("valid");
        assert_eq!(chat.messages.len(), 1);
        assert_eq!(chat.sampling, Sampling::default());
        assert!(!chat.stream && !chat.include_usage);
    }

    #[test]
    fn every_bound_is_refused_by_the_name_of_its_field() {
        let user = r#""messages":[{"role":"user","content":"Hi"}]"#;
        for (extra, param) in [
            (r#""model":"other""#, "model"),
            (r#""n":2"#, "n"),
            (r#""temperature":2.5"#, "temperature"),
            (r#""top_p":0"#, "top_p"),
            (r#""top_k":1001"#, "top_k"),
            (r#""max_tokens":0"#, "max_tokens"),
            (r#""stop":["a","b","c","d","e"]"#, "stop"),
            (r#""stop":7"#, "stop"),
            (r#""repetition_penalty":0"#, "repetition_penalty"),
            (r#""repetition_penalty":2.01"#, "repetition_penalty"),
            (r#""frequency_penalty":-2.5"#, "frequency_penalty"),
            (r#""presence_penalty":3"#, "presence_penalty"),
        ] {
            let e = check(&format!("{{{user},{extra}}}")).expect_err(extra);
            assert_eq!(e.param, param, "{extra}: {e}");
        }
        assert_eq!(
            check(&format!(r#"{{{user},"model":"other"}}"#))
                .expect_err("model")
                .kind,
            ErrorKind::ModelNotFound
        );
    }

    #[test]
    fn the_message_caps_come_before_anything_is_rendered() {
        assert_eq!(
            check(r#"{"messages":[]}"#).expect_err("empty").param,
            "messages"
        );
        let many: Vec<String> = (0..257)
            .map(|_| r#"{"role":"user","content":""}"#.to_owned())
            .collect();
        let e = check(&format!(r#"{{"messages":[{}]}}"#, many.join(","))).expect_err("257");
        assert!(e.message.contains("257 messages"), "{e}");
        assert_eq!(e.kind, ErrorKind::ContextLengthExceeded);
        let long = "x".repeat(content_cap(256) + 1);
        let e = check(&format!(
            r#"{{"messages":[{{"role":"user","content":"{long}"}}]}}"#
        ))
        .expect_err("too long");
        assert!(e.message.contains("bytes of content"), "{e}");
        let e = check(r#"{"messages":[{"role":"function","content":""}]}"#).expect_err("role");
        assert!(e.message.contains("\"function\""), "{e}");
    }

    #[test]
    fn unknown_fields_are_accepted_and_named_for_the_log() {
        let body = r#"{"messages":[{"role":"user","content":"Hi","name":"ann"}],
            "store":false,"metadata":{"a":"b"},"parallel_tool_calls":true,
            "tools":[{"type":"function","function":{"name":"f","parameters":{}}}],
            "tool_choice":"auto","response_format":{"type":"text"},"logprobs":false,
            "service_tier":"auto","user":"u1","temperature":0.5,"seed":3,"stop":"x"}"#;
        let req = ChatRequest::from_json(body.as_bytes()).expect("parses");
        assert_eq!(
            req.ignored(),
            [
                "metadata",
                "parallel_tool_calls",
                "service_tier",
                "store",
                "user"
            ]
        );
        let chat = req.check("tiny", 256).expect("valid");
        assert_eq!(chat.messages[0].content, "Hi");
        // The shared sampling fields reach the sampling, not the ignored ones.
        assert_eq!(
            (
                chat.sampling.temperature,
                chat.sampling.seed,
                chat.sampling.stop
            ),
            (Some(0.5), Some(3), vec!["x".to_owned()])
        );
    }

    #[test]
    fn tools_reach_the_chat_and_tool_messages_keep_their_calls() {
        let body = r#"{"messages":[
            {"role":"user","content":"Weather?"},
            {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
            {"role":"tool","tool_call_id":"c1","content":"sunny"}],
            "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}],
            "tool_choice":{"type":"function","function":{"name":"get_weather"}}}"#;
        let chat = check(body).expect("valid");
        assert_eq!(chat.tool_choice, ToolChoice::Function("get_weather".into()));
        assert_eq!(
            chat.tools.as_ref().and_then(Value::as_array).map(Vec::len),
            Some(1)
        );
        assert!(chat.messages[1].tool_calls.is_some());
        assert_eq!(chat.messages[2].role, "tool");
        assert_eq!(chat.messages[2].tool_call_id.as_deref(), Some("c1"));
        // `none` keeps the tools from the template.
        let none = check(&body.replace(
            r#"{"type":"function","function":{"name":"get_weather"}}"#,
            r#""none""#,
        ))
        .expect("valid");
        assert_eq!((none.tools, none.tool_choice), (None, ToolChoice::None));
        let g = tool_call_grammar(chat.tools.as_ref().expect("tools"), &chat.tool_choice)
            .expect("grammar")
            .expect("a grammar for a named call");
        assert!(g.starts_with(r#"root ::= "<tool_call>" ("#), "{g}");
        assert!(g.contains("get_weather"), "{g}");
        assert_eq!(
            tool_call_grammar(chat.tools.as_ref().expect("tools"), &ToolChoice::Auto).expect("ok"),
            None
        );
        let strict = serde_json::json!([{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"s":{"type":"string","minLength":3}}}}}]);
        let e = tool_call_grammar(&strict, &ToolChoice::Required).expect_err("minLength");
        assert_eq!(e.param, "tools");
    }

    #[test]
    fn tool_calls_are_parsed_from_hermes_style_answers_or_left_as_text() {
        let (text, calls) = parse_tool_calls(
            "Let me check. <tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}</tool_call>\n<tool_call>{\"name\":\"f\",\"arguments\":\"{}\"}</tool_call>",
        )
        .expect("two calls");
        assert_eq!(text, "Let me check.");
        assert_eq!(
            calls,
            [
                ToolCall {
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into()
                },
                ToolCall {
                    name: "f".into(),
                    arguments: "{}".into()
                },
            ]
        );
        for text in [
            "no call here",
            "<tool_call>not json</tool_call>",
            "<tool_call>{\"name\":\"f\"}",
            "<tool_call>{\"arguments\":{}}</tool_call>",
        ] {
            assert_eq!(parse_tool_calls(text), None, "{text}");
        }
    }

    #[test]
    fn logprobs_ask_for_the_chosen_tokens_and_up_to_20_alternatives() {
        let user = r#""messages":[{"role":"user","content":"Hi"}]"#;
        for (extra, want) in [
            (r#""logprobs":true,"top_logprobs":3"#, Some(3)),
            (r#""logprobs":true"#, Some(0)),
            (r#""logprobs":false,"top_logprobs":0"#, None),
            (r#""logprobs":null"#, None),
        ] {
            let chat = check(&format!("{{{user},{extra}}}")).expect(extra);
            assert_eq!(chat.sampling.logprobs, want, "{extra}");
        }
    }

    #[test]
    fn an_embeddings_request_takes_strings_and_refuses_what_it_cannot_honour() {
        let check = |body: &str| {
            EmbeddingRequest::from_json(body.as_bytes())
                .expect("parses")
                .check("tiny", 256)
        };
        let e = check(r#"{"input":"a","user":"u"}"#).expect("valid");
        assert_eq!((e.inputs, e.base64), (vec!["a".to_owned()], false));
        let e = check(r#"{"input":["a","b"],"encoding_format":"base64","model":"tiny"}"#)
            .expect("valid");
        assert_eq!((e.inputs.len(), e.base64), (2, true));
        for (body, param) in [
            (r#"{"input":[1,2]}"#, "input"),
            (r#"{"input":[]}"#, "input"),
            (r#"{"input":""}"#, "input"),
            (
                r#"{"input":"a","encoding_format":"int8"}"#,
                "encoding_format",
            ),
            (r#"{"input":"a","dimensions":8}"#, "dimensions"),
            (r#"{"input":"a","model":"other"}"#, "model"),
        ] {
            assert_eq!(check(body).expect_err(body).param, param, "{body}");
        }
    }

    #[test]
    fn a_prompt_cache_key_is_a_bounded_string_for_chats_and_completions() {
        let chat = |key: &str| {
            let body = format!(
                r#"{{"messages":[{{"role":"user","content":"Hi"}}],"prompt_cache_key":{key}}}"#
            );
            ChatRequest::from_json(body.as_bytes())
                .expect("parses")
                .check("tiny", 256)
        };
        let key = chat(r#""conv-1""#)
            .expect("valid")
            .sampling
            .prompt_cache_key;
        assert_eq!(key.as_deref(), Some("conv-1"));
        assert_eq!(chat("null").expect("valid").sampling.prompt_cache_key, None);
        for bad in [
            "3".to_owned(),
            format!("\"{}\"", "k".repeat(MAX_PROMPT_CACHE_KEY + 1)),
        ] {
            let e = chat(&bad).expect_err("refused");
            assert_eq!(e.param, "prompt_cache_key", "{bad}");
        }
        let completion = CompletionRequest::from_json(br#"{"prompt":"Hi","prompt_cache_key":"c"}"#)
            .expect("parses")
            .check("tiny", 256)
            .expect("valid");
        assert_eq!(completion.sampling.prompt_cache_key.as_deref(), Some("c"));
    }

    fn complete(body: &str) -> Result<Completion, RequestError> {
        CompletionRequest::from_json(body.as_bytes())
            .expect("JSON of the request's shape")
            .check("tiny", 256)
    }

    #[test]
    fn a_text_completion_takes_its_prompt_and_openais_default_length() {
        let c =
            complete(r#"{"model":"tiny","prompt":"Once upon","temperature":0}"#).expect("valid");
        assert_eq!(c.prompt, "Once upon");
        assert_eq!(c.sampling.max_tokens, Some(COMPLETION_DEFAULT_MAX_TOKENS));
        assert_eq!(c.sampling.temperature, Some(0.0));
        assert!(!c.stream);
        let c = complete(r#"{"prompt":["Hi"],"max_tokens":5,"stream":true,"stream_options":{"include_usage":true}}"#)
            .expect("one prompt in an array");
        assert_eq!((c.prompt.as_str(), c.sampling.max_tokens), ("Hi", Some(5)));
        assert!(c.stream && c.include_usage);
        let req = CompletionRequest::from_json(br#"{"prompt":"x","user":"u","top_k":3}"#)
            .expect("parses");
        assert_eq!(req.ignored(), ["user"]);
    }

    #[test]
    fn a_text_completion_refuses_what_it_cannot_honour_by_name() {
        for (body, param) in [
            (r#"{"prompt":"x","model":"other"}"#, "model"),
            (r#"{"prompt":["a","b"]}"#, "prompt"),
            (r#"{"prompt":[1,2,3]}"#, "prompt"),
            (r#"{"prompt":null}"#, "prompt"),
            (r#"{"prompt":"x","n":2}"#, "n"),
            (r#"{"prompt":"x","best_of":3}"#, "best_of"),
            (r#"{"prompt":"x","echo":true}"#, "echo"),
            (r#"{"prompt":"x","suffix":"y"}"#, "suffix"),
            (r#"{"prompt":"x","logprobs":6}"#, "logprobs"),
            (r#"{"prompt":"x","logprobs":true}"#, "logprobs"),
            (r#"{"prompt":"x","temperature":3}"#, "temperature"),
            (r#"{"prompt":"x","max_tokens":0}"#, "max_tokens"),
        ] {
            let e = complete(body).expect_err(body);
            assert_eq!(e.param, param, "{body}: {e}");
        }
        assert!(complete(
            r#"{"prompt":"x","logprobs":null,"echo":false,"suffix":null,"best_of":1}"#
        )
        .is_ok());
        let c = complete(r#"{"prompt":"x","logprobs":2}"#).expect("valid");
        assert_eq!(c.sampling.logprobs, Some(2));
        let long = "x".repeat(content_cap(256) + 1);
        let e = complete(&format!(r#"{{"prompt":"{long}"}}"#)).expect_err("too long");
        assert_eq!(e.kind, ErrorKind::ContextLengthExceeded);
    }

    #[test]
    fn model_ids_are_slugs_without_spaces() {
        for (name, slug) in [
            (
                "Smollm2 135M 8k Lc100K Mix1 Ep2",
                Some("smollm2-135m-8k-lc100k-mix1-ep2"),
            ),
            (
                "SmolLM2-135M-Instruct.Q4_1.gguf",
                Some("smollm2-135m-instruct.q4_1"),
            ),
            ("veil-tiny", Some("veil-tiny")),
            ("  Qwen/Qwen2.5 (0.5B)  ", Some("qwen-qwen2.5-0.5b")),
            ("*** ***", None),
            ("", None),
        ] {
            assert_eq!(model_slug(name).as_deref(), slug, "{name:?}");
        }
        assert!(model_slug(&"é".repeat(500)).is_none());
        assert!(model_slug(&"a".repeat(500)).is_some_and(|s| s.len() <= 64));
    }

    #[test]
    fn text_parts_are_joined_and_developer_is_system() {
        let chat = check(
            r#"{"messages":[{"role":"developer","content":"Be brief."},
                {"role":"user","content":[{"type":"text","text":"Hello"},{"type":"text","text":"there"}]},
                {"role":"assistant","content":null}]}"#,
        )
        .expect("valid");
        let roles_and_texts: Vec<(&str, &str)> = chat
            .messages
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str()))
            .collect();
        assert_eq!(
            roles_and_texts,
            [
                ("system", "Be brief."),
                ("user", "Hello\nthere"),
                ("assistant", "")
            ]
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        let user = r#""messages":[{"role":"user","content":"Hi"}]"#;
        for (extra, param, says) in [
            (
                r#""response_format":{"type":"json_schema","json_schema":{"name":"x"}}"#,
                "response_format",
                "json_schema.schema",
            ),
            (
                r#""response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"string","pattern":"a+"}}}"#,
                "response_format",
                "pattern",
            ),
            (
                r#""response_format":{"type":"json_object"},"ignore_eos":true"#,
                "ignore_eos",
                "ignore_eos",
            ),
            (
                r#""response_format":{"type":"yaml"}"#,
                "response_format",
                "must be",
            ),
            (r#""top_logprobs":3"#, "top_logprobs", "needs logprobs"),
            (
                r#""logprobs":true,"top_logprobs":21"#,
                "top_logprobs",
                "between 0 and 20",
            ),
            (
                r#""tool_choice":"required""#,
                "tool_choice",
                "requires tools",
            ),
            (
                r#""tool_choice":{"type":"function","function":{"name":"f"}}"#,
                "tool_choice",
                "does not offer",
            ),
            (
                r#""tools":[{"type":"function","function":{"name":"a b"}}]"#,
                "tools",
                "name",
            ),
            (r#""tools":{"name":"f"}"#, "tools", "array"),
            (
                r#""modalities":["text","audio"]"#,
                "modalities",
                "text only",
            ),
            (r#""logit_bias":{"abc":1}"#, "logit_bias", "token ids"),
            (r#""logit_bias":{"5":101}"#, "logit_bias", "token ids"),
            (r#""min_p":1.5"#, "min_p", "min_p"),
        ] {
            let e = check(&format!("{{{user},{extra}}}")).expect_err(extra);
            assert_eq!(e.param, param, "{extra}: {e}");
            assert!(e.message.contains(says), "{extra}: {e}");
        }
        for (content, says) in [
            (
                r#"[{"type":"image_url","image_url":{"url":"data:,"}}]"#,
                "\"image_url\"",
            ),
            (r#"[{"type":"text"}]"#, "text string"),
            (r#"[{"text":"x"}]"#, "needs a type"),
            ("42", "string or an array"),
        ] {
            let e = check(&format!(
                r#"{{"messages":[{{"role":"user","content":{content}}}]}}"#
            ))
            .expect_err(content);
            assert_eq!(e.param, "messages", "{content}: {e}");
            assert!(e.message.contains(says), "{content}: {e}");
        }
    }

    #[test]
    fn a_json_response_format_becomes_a_grammar() {
        let user = r#""messages":[{"role":"user","content":"Hi"}]"#;
        let chat = check(&format!(
            r#"{{{user},"response_format":{{"type":"json_object"}}}}"#
        ))
        .expect("json_object");
        assert_eq!(
            chat.sampling.grammar.as_deref(),
            Some(grammar::json_object().as_str())
        );
        let chat = check(&format!(
            r#"{{{user},"response_format":{{"type":"json_schema","json_schema":{{"name":"a","strict":true,"schema":{{"type":"object","properties":{{"ok":{{"type":"boolean"}}}},"required":["ok"],"additionalProperties":false}}}}}}}}"#
        ))
        .expect("json_schema");
        assert!(chat
            .sampling
            .grammar
            .is_some_and(|g| g.contains(r#""\"ok\"" ws ":" ws boolean"#)));
        for text in [
            r#""response_format":{"type":"text"}"#,
            r#""response_format":null"#,
        ] {
            let chat = check(&format!("{{{user},{text}}}")).expect(text);
            assert_eq!(chat.sampling.grammar, None);
        }
    }

    #[test]
    fn min_p_and_logit_bias_reach_the_sampling() {
        let chat = check(
            r#"{"messages":[{"role":"user","content":"Hi"}],"min_p":0.05,"logit_bias":{"7":-100,"12":2.5}}"#,
        )
        .expect("valid");
        assert_eq!(chat.sampling.min_p, Some(0.05));
        let mut bias = chat.sampling.logit_bias;
        bias.sort_by_key(|(t, _)| *t);
        assert_eq!(bias, [(7, -100.0), (12, 2.5)]);
    }

    #[test]
    fn an_unknown_role_is_quoted_at_most_32_characters_long() {
        let role = "r".repeat(10_000);
        let e = check(&format!(
            r#"{{"messages":[{{"role":"{role}","content":""}}]}}"#
        ))
        .expect_err("role");
        assert!(e.message.len() < 64, "{e}");
    }

    proptest! {
        /// Whatever numbers come, a checked request's sampling is within its bounds.
        #[test]
        fn a_checked_request_is_within_every_bound(
            t in proptest::num::f32::ANY,
            p in proptest::num::f32::ANY,
            r in proptest::num::f32::ANY,
            k in any::<u32>(),
        ) {
            let mut req = ChatRequest::from_json(br#"{"messages":[{"role":"user","content":"Hi"}]}"#)
                .expect("valid JSON");
            req.sampling.temperature = Some(t);
            req.sampling.top_p = Some(p);
            req.sampling.repetition_penalty = Some(r);
            req.sampling.top_k = Some(k);
            if let Ok(chat) = req.check("tiny", 256) {
                let s = chat.sampling;
                prop_assert!(s.temperature.is_some_and(|t| (0.0..=2.0).contains(&t)));
                prop_assert!(s.top_p.is_some_and(|p| p > 0.0 && p <= 1.0));
                prop_assert!(s.repetition_penalty.is_some_and(|r| r > 0.0 && r <= MAX_REPETITION_PENALTY));
                prop_assert!(s.top_k.is_some_and(|k| k <= MAX_TOP_K));
            }
        }
    }
}
