//! The inference engine of Veil: a GGUF model held in memory, served by llama.cpp (through
//! `llama-cpp-2`), with the model's own tokenizer and chat template, sampling, incremental
//! UTF-8-safe streaming, and batched decoding of concurrent requests.
//!
//! What it does: load GGUF bytes (the caller's unsealed plaintext) through an anonymous
//! memfd, never a file on disk; render the chat template from the GGUF metadata
//! (`tokenizer.chat_template`) and tokenize with the model's own vocabulary; run one worker
//! thread that owns the llama.cpp context and decodes every active sequence in one batch per
//! step; stream text to each request's receiver. What it does not do: HTTP, attestation,
//! decryption, or reading models from disk (the caller hands it bytes). Scheduling and CPU
//! feature choice are described in `docs/engine.md`.
//!
//! ```
//! use veil_model::{tiny, ChatMessage, Engine, EngineConfig, FinishReason, GenerateRequest, LlamaEngine};
//!
//! // A tiny random-weight model that the tests make themselves (real models work the same).
//! let engine = LlamaEngine::load(&tiny::gguf(7), EngineConfig::small())?;
//! let mut request = GenerateRequest::chat(vec![ChatMessage::user("hello")]);
//! request.params.max_tokens = 4;
//! request.params.ignore_eos = true;
//! let out = engine.generate_blocking(request)?;
//! assert_eq!(out.usage.completion_tokens, 4);
//! assert_eq!(out.finish, FinishReason::Length);
//! # Ok::<(), veil_model::EngineError>(())
//! ```

// `unsafe` is denied everywhere but in `memfd`, whose one mapping wipes withdrawn weights
// (STYLE.md, Unsafe: each use justified beside it).
#![deny(unsafe_code)]

mod engine;
mod memfd;
mod template;
mod text;
pub mod tiny;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use engine::LlamaEngine;
pub use memfd::{ModelFile, ModelWipe, Wiped};

/// The receiving end of one request: [`Event::Text`] pieces, then one [`Event::Done`] or
/// [`Event::Error`]. Dropping it cancels the request.
pub type EventStream = tokio::sync::mpsc::UnboundedReceiver<Event>;

/// Why the engine failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The model bytes are not a GGUF that llama.cpp can load, or the context cannot be made.
    #[error("model cannot be loaded: {0}")]
    Load(String),
    /// The configuration cannot work (zero sequences, zero queue, ...).
    #[error("invalid engine configuration: {0}")]
    Config(String),
    /// The chat template cannot be compiled or rendered.
    #[error("chat template: {0}")]
    Template(String),
    /// The queue is full; try again later.
    #[error("the engine is busy: {queued} requests are already waiting")]
    Busy {
        /// Requests waiting for a sequence.
        queued: usize,
    },
    /// The prompt does not fit the context.
    #[error("the prompt is {prompt_tokens} tokens; a sequence holds at most {context_length}")]
    PromptTooLong {
        /// Tokens in the rendered prompt.
        prompt_tokens: usize,
        /// Context length per sequence.
        context_length: u32,
    },
    /// The request cannot be served as asked (e.g. `max_tokens` is 0, or the prompt is empty).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A sampling parameter cannot be honoured for this model (a `logit_bias` token id
    /// outside its vocabulary, too many alternatives asked for).
    #[error("invalid {param}: {message}")]
    InvalidParam {
        /// The parameter, by its OpenAI name.
        param: &'static str,
        /// Why.
        message: String,
    },
    /// The engine's worker has stopped.
    #[error("the engine has stopped")]
    Stopped,
    /// llama.cpp failed while decoding.
    #[error("decoding failed: {0}")]
    Decode(String),
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text.
    pub content: String,
    /// An assistant's tool calls, in OpenAI's shape (`[{id, type, function: {name,
    /// arguments}}]`), for the template to render.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// A `tool` message's answer to this call id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A message with this role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            tool_calls: None,
            tool_call_id: None,
        }
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// What the model continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// A conversation, rendered with the model's chat template (with the generation prompt).
    Chat(Vec<ChatMessage>),
    /// Raw text, tokenized as it is, with special-token text such as `<|im_start|>` read
    /// as those tokens (as llama.cpp's server does); for completions and benchmarks.
    Text(String),
}

/// Sampling parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 (or less) means greedy (argmax), and then `top_p`, `top_k` and
    /// `seed` do not matter.
    pub temperature: f32,
    /// Nucleus sampling threshold (1 = off).
    pub top_p: f32,
    /// Top-k (0 = off).
    pub top_k: u32,
    /// Min-p: drop tokens whose probability is below this fraction of the most likely
    /// one's (0 = off).
    pub min_p: f32,
    /// Added to the logits of these token ids before sampling (OpenAI's `logit_bias`);
    /// ids must be below the vocabulary size.
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed for reproducible sampling; random when `None`.
    pub seed: Option<u32>,
    /// Largest number of generated tokens (also bounded by the room left in the context).
    pub max_tokens: u32,
    /// Generation stops before any of these strings; they are never emitted, not even in part.
    pub stop: Vec<String>,
    /// Repetition penalty over the last 64 tokens, prompt included (1 = off).
    pub repetition_penalty: f32,
    /// Never sample an end-of-generation token (benchmarks): generation stops only at
    /// `max_tokens` or a stop sequence.
    pub ignore_eos: bool,
    /// A llama.cpp grammar (GBNF, start symbol `root`) that every sampled token must keep
    /// the output within (structured output); the request is refused if it does not parse.
    pub grammar: Option<String>,
    /// Report each generated token's log-probability ([`Event::Logprob`]) with this many
    /// likeliest alternatives (at most [`MAX_TOP_LOGPROBS`]); `None`: not reported.
    pub logprobs: Option<u32>,
}

/// Most alternatives [`SamplingParams::logprobs`] may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// A generated token's log-probability and those of the likeliest tokens at its position,
/// under the model's own distribution (the softmax of its logits, before temperature,
/// penalties, biases or a grammar), as llama.cpp's server reports them by default.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's bytes: a piece of UTF-8 text, not always whole characters.
    pub bytes: Vec<u8>,
    /// Natural logarithm of its probability.
    pub logprob: f32,
    /// The likeliest tokens (bytes, log-probability), most likely first.
    pub top: Vec<(Vec<u8>, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.7,
            top_p: 0.95,
            top_k: 40,
            min_p: 0.0,
            logit_bias: vec![],
            seed: None,
            max_tokens: 256,
            stop: vec![],
            repetition_penalty: 1.0,
            ignore_eos: false,
            grammar: None,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding (temperature 0) of at most `max_tokens` tokens.
    pub fn greedy(max_tokens: u32) -> Self {
        SamplingParams {
            temperature: 0.0,
            max_tokens,
            ..Self::default()
        }
    }
}

/// A generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// What to continue.
    pub prompt: Prompt,
    /// How to sample.
    pub params: SamplingParams,
    /// Tools the chat template is given (`tools`, OpenAI's array of function
    /// definitions); `None`: none offered.
    pub tools: Option<serde_json::Value>,
    /// Who may reuse this request's KV cells, and whose cells it may reuse: a request
    /// continues the longest common token prefix left by an earlier request of the same
    /// scope (prompt reuse, as llama.cpp's `cache_prompt`), and never one of another scope,
    /// since a fast first token would tell one user about another's prompt. `None`: no
    /// reuse either way. The server derives it from the API key and `prompt_cache_key`.
    pub cache_scope: Option<CacheScope>,
}

/// An opaque prompt-cache scope (see [`GenerateRequest::cache_scope`]): equal scopes share
/// cached prefixes, different ones never do.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheScope(pub [u8; 32]);

impl std::fmt::Debug for CacheScope {
    // A scope may derive from a secret (an API key, a conversation's key): never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheScope(..)")
    }
}

impl GenerateRequest {
    /// A chat request with default sampling.
    pub fn chat(messages: Vec<ChatMessage>) -> Self {
        GenerateRequest {
            prompt: Prompt::Chat(messages),
            params: SamplingParams::default(),
            tools: None,
            cache_scope: None,
        }
    }

    /// A raw-text request with default sampling.
    pub fn text(text: impl Into<String>) -> Self {
        GenerateRequest {
            prompt: Prompt::Text(text.into()),
            params: SamplingParams::default(),
            tools: None,
            cache_scope: None,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-generation token or a stop sequence.
    Stop,
    /// `max_tokens` reached, or the sequence's context is full.
    Length,
}

/// Token counts, as OpenAI's `usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Tokens in the rendered prompt.
    pub prompt_tokens: u32,
    /// Tokens generated (an end-of-generation token is not counted).
    pub completion_tokens: u32,
    /// Prompt tokens whose KV cells were reused from an earlier request of the same cache
    /// scope rather than computed (OpenAI's `prompt_tokens_details.cached_tokens`).
    pub cached_tokens: u32,
}

/// Where a request's time went (for logs and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// From `submit` until a sequence was free.
    pub queued: Duration,
    /// From admission until the first token was sampled (prompt processing).
    pub prompt: Duration,
    /// From the first token until the last one.
    pub generation: Duration,
}

/// What a request's stream carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// More text: whole UTF-8 characters, never any part of a stop sequence.
    Text(String),
    /// With [`SamplingParams::logprobs`]: the next generated token's log-probability, sent
    /// before the text that holds it (that text may be held back, or never sent when it
    /// belongs to a stop sequence).
    Logprob(TokenLogprob),
    /// The end: why, and the counts. Nothing follows.
    Done {
        /// Why generation ended.
        finish: FinishReason,
        /// Token counts.
        usage: Usage,
        /// Where the time went.
        timings: Timings,
        /// The generated tokens' ids, in order (`usage.completion_tokens` of them; an
        /// end-of-generation token is not among them). A receipt hashes them.
        tokens: Vec<u32>,
    },
    /// The request failed. Nothing follows.
    Error(EngineError),
}

/// A finished generation, as collected by [`Engine::generate_blocking`].
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The text.
    pub text: String,
    /// Why it ended.
    pub finish: FinishReason,
    /// Token counts.
    pub usage: Usage,
    /// Where the time went.
    pub timings: Timings,
    /// With [`SamplingParams::logprobs`]: each generated token's.
    pub logprobs: Vec<TokenLogprob>,
}

/// Most inputs of one [`Engine::embed`] call.
pub const MAX_EMBEDDING_INPUTS: usize = 64;

/// What [`Engine::embed`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One unit-length vector per input, in order, each of the model's embedding size.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens read, all inputs together.
    pub prompt_tokens: u32,
}

/// What the server needs to know about the loaded model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelInfo {
    /// The model's name (GGUF `general.name`).
    pub name: String,
    /// Context length of one sequence (prompt + completion).
    pub context_length: u32,
    /// Parameter count.
    pub parameters: u64,
    /// Size of the weights in bytes.
    pub size_bytes: u64,
    /// Requests decoded together.
    pub parallel: u32,
    /// Tokens in the vocabulary: token ids are below it.
    pub vocab_size: u32,
    /// Whether the chat template renders tools and asks for calls as
    /// `<tool_call>{"name", "arguments"}</tool_call>` (the Hermes convention of Qwen and
    /// others), so that calls can be parsed from the answer.
    pub tool_calls: bool,
}

/// Engine configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// CPU threads for llama.cpp (0 = all available cores).
    pub threads: usize,
    /// Sequences decoded together: how many requests are served at once.
    pub parallel: u32,
    /// Context length of each sequence (prompt + completion), at most the model's own.
    pub context_per_sequence: u32,
    /// Requests that may wait for a free sequence; more get [`EngineError::Busy`].
    pub queue: usize,
    /// Largest number of tokens in one decode call (prompt chunks plus generating sequences).
    pub batch: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            threads: 0,
            parallel: 4,
            context_per_sequence: 2048,
            queue: 16,
            batch: 512,
        }
    }
}

impl EngineConfig {
    /// A small configuration for tests: 1 thread, 2 sequences of 256 tokens, queue of 4.
    pub fn small() -> Self {
        EngineConfig {
            threads: 1,
            parallel: 2,
            context_per_sequence: 256,
            queue: 4,
            batch: 64,
        }
    }
}

/// An inference engine as the server sees it, independent of the backend.
pub trait Engine: Send + Sync {
    /// What is loaded.
    fn info(&self) -> &ModelInfo;

    /// Checks, renders and tokenizes a request, and queues it. Events arrive on the returned
    /// stream; dropping the stream stops the generation and frees its sequence.
    ///
    /// This does the template rendering and tokenization on the caller's thread (well under
    /// a millisecond for chat-sized prompts) and never blocks on the worker.
    ///
    /// # Errors
    /// [`EngineError::Busy`] when the queue is full; [`EngineError::PromptTooLong`],
    /// [`EngineError::InvalidRequest`] or [`EngineError::Template`] for a request that cannot
    /// be served; [`EngineError::Stopped`].
    fn submit(&self, request: GenerateRequest) -> Result<EventStream, EngineError>;

    /// Requests waiting for a free sequence.
    fn queue_depth(&self) -> usize;

    /// Stops for good: every request in flight or waiting ends with
    /// [`EngineError::Stopped`], later ones are refused the same way, and on return nothing
    /// computes with the weights any more (the worker has ended). Dropping the engine
    /// afterwards frees the model. Used when the key is withdrawn, before the weights are
    /// wiped. The default does nothing (engines that hold no weights).
    fn stop(&self) {}

    /// Pooled embeddings of `inputs` (at most [`MAX_EMBEDDING_INPUTS`], each at most the
    /// context length in tokens): the mean of the model's last hidden states over each
    /// input's tokens, scaled to unit length. One request at a time computes; others wait.
    ///
    /// # Errors
    /// [`EngineError::InvalidRequest`] for no input, too many or an empty one;
    /// [`EngineError::PromptTooLong`]; [`EngineError::Decode`] when llama.cpp fails.
    fn embed(&self, inputs: &[String]) -> Result<Embeddings, EngineError>;

    /// Runs a request to its end and collects the text (tests, CLIs, benchmarks).
    ///
    /// # Errors
    /// As [`Engine::submit`], or the error the request ended with.
    ///
    /// # Panics
    /// When called from within an async runtime (it blocks the thread); use
    /// [`Engine::submit`] there.
    fn generate_blocking(&self, request: GenerateRequest) -> Result<Generation, EngineError> {
        let mut stream = self.submit(request)?;
        let mut text = String::new();
        let mut logprobs = Vec::new();
        while let Some(event) = stream.blocking_recv() {
            match event {
                Event::Text(t) => text.push_str(&t),
                Event::Logprob(l) => logprobs.push(l),
                Event::Done {
                    finish,
                    usage,
                    timings,
                    ..
                } => {
                    return Ok(Generation {
                        text,
                        finish,
                        usage,
                        timings,
                        logprobs,
                    })
                }
                Event::Error(e) => return Err(e),
            }
        }
        Err(EngineError::Stopped)
    }
}
