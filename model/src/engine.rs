//! The llama.cpp engine: the model is shared (read-only) by every thread; one worker thread
//! owns the one llama.cpp context, whose KV cache holds `parallel` sequences, and decodes
//! every active sequence in a single batch per step (continuous batching). Scheduling is
//! described in `docs/engine.md`.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use crate::memfd::ModelFile;
use crate::template::ChatTemplate;
use crate::text::{Step, TextStream};
use crate::{
    CacheScope, Embeddings, Engine, EngineConfig, EngineError, Event, EventStream, FinishReason,
    GenerateRequest, ModelInfo, Prompt, SamplingParams, Timings, TokenLogprob, Usage,
    MAX_EMBEDDING_INPUTS, MAX_TOP_LOGPROBS,
};
use llama_cpp_2::context::params::LlamaPoolingType;

/// Tokens of history that the repetition penalty looks at.
const PENALTY_WINDOW: i32 = 64;

/// llama.cpp's process-wide backend, initialised once.
fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp's own log lines (load progress, tensor counts) are dropped: they are
            // noisy and the engine reports failures itself.
            llama_cpp_2::send_logs_to_tracing(
                llama_cpp_2::LogOptions::default().with_logs_enabled(false),
            );
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Load(format!("llama.cpp backend: {e}")))
}

/// What every thread may read: the weights, the vocabulary and the chat template.
struct Shared {
    model: LlamaModel,
    template: ChatTemplate,
    info: ModelInfo,
    /// Whether the vocabulary wants a BOS token in front of every prompt.
    add_bos: bool,
    /// The BOS token's text, to avoid a second BOS when the template already writes one.
    bos_text: String,
    /// Every end-of-generation token (for `ignore_eos`).
    eog: Vec<LlamaToken>,
}

/// A checked, tokenized request waiting for a sequence.
struct Job {
    prompt: Vec<LlamaToken>,
    params: SamplingParams,
    scope: Option<CacheScope>,
    max_tokens: u32,
    submitted: Instant,
    events: UnboundedSender<Event>,
}

/// Requests waiting for a free sequence: a bounded FIFO shared by `submit` and the worker.
struct Queue {
    state: Mutex<QueueState>,
    /// Signalled when a job arrives or the engine is dropped.
    wake: Condvar,
    capacity: usize,
}

struct QueueState {
    jobs: VecDeque<Job>,
    /// The engine was dropped: the worker ends once it is idle.
    closed: bool,
    /// The engine was stopped ([`Engine::stop`]): the worker ends every request at once.
    aborted: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding this lock leaves the deque consistent; keep serving.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, job: Job) -> Result<(), EngineError> {
        let mut state = self.lock();
        if state.closed {
            return Err(EngineError::Stopped);
        }
        if state.jobs.len() >= self.capacity {
            // Requests whose client went away while waiting do not count.
            state.jobs.retain(|j| !j.events.is_closed());
        }
        if state.jobs.len() >= self.capacity {
            return Err(EngineError::Busy {
                queued: state.jobs.len(),
            });
        }
        state.jobs.push_back(job);
        drop(state);
        self.wake.notify_one();
        Ok(())
    }

    /// The next job; when `wait`, blocks until there is one. `None`: nothing now (or, when
    /// waiting, the engine is gone).
    fn pop(&self, wait: bool) -> Option<Job> {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                return Some(job);
            }
            if !wait || state.closed || state.aborted {
                return None;
            }
            state = self
                .wake
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }

    /// Closes the queue and ends every waiting request with [`EngineError::Stopped`]; the
    /// worker ends those it runs.
    fn abort(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.aborted = true;
        for job in state.jobs.drain(..) {
            let _ = job.events.send(Event::Error(EngineError::Stopped));
        }
        drop(state);
        self.wake.notify_all();
    }

    fn aborted(&self) -> bool {
        self.lock().aborted
    }
}

/// The llama.cpp engine. Share it behind an `Arc`; all methods take `&self`. Dropping it
/// lets the requests in flight finish, then stops the worker thread.
pub struct LlamaEngine {
    shared: Arc<Shared>,
    queue: Arc<Queue>,
    /// Held while an embedding context exists: one at a time.
    embedding: Mutex<()>,
    threads: i32,
    /// The in-memory model file, kept open for the engine's life (llama.cpp maps it): its
    /// seals stay checkable through `/proc/PID/fd`, and it costs no memory of its own.
    _file: ModelFile,
    /// The worker thread, joined by [`Engine::stop`].
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for LlamaEngine {
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl std::fmt::Debug for LlamaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaEngine")
            .field("info", &self.shared.info)
            .finish_non_exhaustive()
    }
}

fn check_config(config: &EngineConfig) -> Result<(), EngineError> {
    if config.parallel == 0
        || config.queue == 0
        || config.batch == 0
        || config.context_per_sequence < 16
    {
        return Err(EngineError::Config(format!(
            "parallel ({}), queue ({}) and batch ({}) must be at least 1 and context_per_sequence ({}) at least 16",
            config.parallel, config.queue, config.batch, config.context_per_sequence
        )));
    }
    Ok(())
}

impl LlamaEngine {
    /// Loads a GGUF model from bytes in memory and starts the worker thread.
    ///
    /// The bytes are copied into an anonymous memfd ([`ModelFile`]) that llama.cpp maps
    /// through `/proc/self/fd/N`; the caller may drop (and zeroize) its buffer afterwards.
    ///
    /// # Errors
    /// [`EngineError::Config`] for an unusable configuration, [`EngineError::Load`] when the
    /// bytes are not a model llama.cpp can load or the context cannot be made,
    /// [`EngineError::Template`] when the model's chat template does not compile.
    ///
    /// # Security
    /// The plaintext never touches a file system backed by a disk: a memfd lives in
    /// anonymous memory. Like any of the process's memory it is readable by whoever may
    /// ptrace the process (and its `/proc/PID/fd`); inside a TEE that is nobody outside.
    pub fn load(gguf: &[u8], config: EngineConfig) -> Result<Self, EngineError> {
        check_config(&config)?;
        LlamaEngine::load_file(ModelFile::with_bytes(gguf)?, config)
    }

    /// Loads a GGUF model from an in-memory file that the caller filled (for example by
    /// unsealing straight into it, without a second copy, then sealing it), and starts the
    /// worker thread. The file stays open as long as the engine; its pages are locked in
    /// memory if [`ModelFile::lock_in_memory`] asked for it and `RLIMIT_MEMLOCK` allows.
    ///
    /// # Errors
    /// As [`LlamaEngine::load`].
    pub fn load_file(file: ModelFile, config: EngineConfig) -> Result<Self, EngineError> {
        check_config(&config)?;
        let backend = backend()?;
        let params = LlamaModelParams::default().with_use_mlock(file.locks_in_memory());
        let model = LlamaModel::load_from_file(backend, file.path(), &params)
            .map_err(|e| EngineError::Load(e.to_string()))?;
        let shared = Arc::new(Shared::new(model, &config)?);

        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), EngineError>>();
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState {
                jobs: VecDeque::new(),
                closed: false,
                aborted: false,
            }),
            wake: Condvar::new(),
            capacity: config.queue,
        });
        let threads = thread_count(config.threads);
        let worker_shared = Arc::clone(&shared);
        let worker_queue = Arc::clone(&queue);
        let worker = std::thread::Builder::new()
            .name("veil-engine".into())
            .spawn(move || {
                // However the worker ends (even by a panic), later submits get `Stopped`.
                struct CloseOnExit(Arc<Queue>);
                impl Drop for CloseOnExit {
                    fn drop(&mut self) {
                        self.0.close();
                    }
                }
                let _close = CloseOnExit(Arc::clone(&worker_queue));
                match Worker::new(backend, &worker_shared, &config) {
                    Ok(mut worker) => {
                        let _ = ready_tx.send(Ok(()));
                        worker.run(&worker_queue);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| EngineError::Load(format!("cannot start the engine thread: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| EngineError::Load("the engine thread stopped while starting".into()))??;
        Ok(LlamaEngine {
            shared,
            queue,
            embedding: Mutex::new(()),
            threads,
            _file: file,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// The number of tokens `text` has in this model's vocabulary (no BOS, special-token
    /// text not parsed).
    pub fn count_tokens(&self, text: &str) -> usize {
        self.shared
            .model
            .vocab()
            .tokenize(text.as_bytes(), false, false)
            .len()
    }

    /// Renders and tokenizes a prompt.
    fn tokenize(
        &self,
        prompt: &Prompt,
        request_tools: Option<&serde_json::Value>,
    ) -> Result<Vec<LlamaToken>, EngineError> {
        let s = &self.shared;
        let vocab = s.model.vocab();
        Ok(match prompt {
            Prompt::Chat(messages) => {
                let text = s.template.render(messages, request_tools)?;
                let bos = s.add_bos && (s.bos_text.is_empty() || !text.starts_with(&s.bos_text));
                vocab.tokenize(text.as_bytes(), bos, true)
            }
            Prompt::Text(text) => vocab.tokenize(text.as_bytes(), s.add_bos, true),
        })
    }
}

impl Shared {
    fn new(model: LlamaModel, config: &EngineConfig) -> Result<Self, EngineError> {
        let vocab = model.vocab();
        let piece = |t: LlamaToken| {
            String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned()
        };
        let (bos, eos) = (vocab.bos(), vocab.eos());
        let bos_text = if bos.0 >= 0 {
            piece(bos)
        } else {
            String::new()
        };
        let eos_text = if eos.0 >= 0 {
            piece(eos)
        } else {
            String::new()
        };
        let template = ChatTemplate::new(
            model.meta_val_str("tokenizer.chat_template").ok(),
            bos_text.clone(),
            eos_text,
        )?;
        let eog = vocab.tokens().filter(|&t| vocab.is_eog(t)).collect();
        let add_bos = vocab.should_add_bos();
        let info = ModelInfo {
            name: model
                .meta_val_str("general.name")
                .unwrap_or_else(|_| "model".into()),
            context_length: config.context_per_sequence.min(model.n_ctx_train().max(16)),
            parameters: model.n_params(),
            size_bytes: model.size(),
            parallel: config.parallel,
            vocab_size: u32::try_from(vocab.n_tokens()).unwrap_or(0),
            tool_calls: template.tool_calls(),
        };
        Ok(Shared {
            model,
            template,
            info,
            add_bos,
            bos_text,
            eog,
        })
    }
}

impl Engine for LlamaEngine {
    fn info(&self) -> &ModelInfo {
        &self.shared.info
    }

    fn stop(&self) {
        self.queue.abort();
        // An embedding that is computing finishes; later ones see the abort.
        drop(
            self.embedding
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let worker = self
            .worker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(worker) = worker {
            // It ends within one decode step; a panic in it was already reported.
            let _ = worker.join();
        }
    }

    fn submit(&self, request: GenerateRequest) -> Result<EventStream, EngineError> {
        let submitted = Instant::now();
        let params = request.params;
        if params.max_tokens == 0 {
            return Err(EngineError::InvalidRequest(
                "max_tokens must be at least 1".into(),
            ));
        }
        let n_vocab = self.shared.model.vocab().n_tokens();
        if let Some((t, _)) = params
            .logit_bias
            .iter()
            .find(|(t, _)| i32::try_from(*t).map_or(true, |t| t >= n_vocab))
        {
            return Err(EngineError::InvalidParam {
                param: "logit_bias",
                message: format!(
                    "logit_bias names token {t}, but the model's vocabulary has {n_vocab} tokens"
                ),
            });
        }
        if params.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return Err(EngineError::InvalidParam {
                param: "top_logprobs",
                message: format!(
                    "at most {MAX_TOP_LOGPROBS} alternatives per token can be reported"
                ),
            });
        }
        if let Some(g) = &params.grammar {
            // Parsed here, where a bad one is a refusal, not a failed stream.
            grammar_sampler(&self.shared.model, g)?;
        }
        let prompt = self.tokenize(&request.prompt, request.tools.as_ref())?;
        if prompt.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        let context_length = self.shared.info.context_length;
        // At least one generated token must fit after the prompt.
        if prompt.len() >= context_length as usize {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: prompt.len(),
                context_length,
            });
        }
        let max_tokens = params.max_tokens.min(context_length - prompt.len() as u32);
        let (events, stream) = unbounded_channel();
        self.queue.push(Job {
            prompt,
            params,
            scope: request.cache_scope,
            max_tokens,
            submitted,
            events,
        })?;
        Ok(stream)
    }

    fn queue_depth(&self) -> usize {
        self.queue.lock().jobs.len()
    }

    fn embed(&self, inputs: &[String]) -> Result<Embeddings, EngineError> {
        let invalid = |m: String| Err(EngineError::InvalidRequest(m));
        if inputs.is_empty() || inputs.len() > MAX_EMBEDDING_INPUTS {
            return invalid(format!(
                "between 1 and {MAX_EMBEDDING_INPUTS} inputs can be embedded at once"
            ));
        }
        let s = &self.shared;
        let context_length = s.info.context_length;
        let mut tokenized = Vec::with_capacity(inputs.len());
        for (i, text) in inputs.iter().enumerate() {
            let tokens = s.model.vocab().tokenize(text.as_bytes(), s.add_bos, false);
            if text.is_empty() || tokens.is_empty() {
                return invalid(format!("input {i} is empty"));
            }
            if tokens.len() > context_length as usize {
                return Err(EngineError::PromptTooLong {
                    prompt_tokens: tokens.len(),
                    context_length,
                });
            }
            tokenized.push(tokens);
        }
        let longest = tokenized.iter().map(Vec::len).max().unwrap_or(1);
        // A KV cache for the longest input only (llama.cpp wants a whole input in one
        // micro-batch to pool it), rounded up to llama.cpp's padding.
        let n_ctx = u32::try_from(longest.next_multiple_of(256)).unwrap_or(context_length);
        let _one_at_a_time = self
            .embedding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.queue.aborted() {
            return Err(EngineError::Stopped);
        }
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_ctx)
            .with_n_ubatch(n_ctx)
            .with_n_seq_max(1)
            .with_embeddings(true)
            .with_pooling_type(LlamaPoolingType::Mean)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads);
        let mut ctx = s
            .model
            .new_context(backend()?, params)
            .map_err(|e| EngineError::Decode(format!("embedding context: {e}")))?;
        let mut batch = LlamaBatch::new(n_ctx as usize, 1);
        let mut vectors = Vec::with_capacity(tokenized.len());
        for tokens in &tokenized {
            ctx.clear_kv_cache();
            batch.clear();
            for (pos, &t) in tokens.iter().enumerate() {
                batch
                    .add(t, pos as i32, &[0], true)
                    .map_err(|e| EngineError::Decode(e.to_string()))?;
            }
            ctx.decode(&mut batch)
                .map_err(|e| EngineError::Decode(e.to_string()))?;
            let pooled = ctx
                .embeddings_seq_ith(0)
                .map_err(|e| EngineError::Decode(e.to_string()))?;
            let norm = pooled
                .iter()
                .map(|v| f64::from(*v) * f64::from(*v))
                .sum::<f64>()
                .sqrt();
            let scale = if norm > 0.0 { (1.0 / norm) as f32 } else { 0.0 };
            vectors.push(pooled.iter().map(|v| v * scale).collect());
        }
        Ok(Embeddings {
            vectors,
            prompt_tokens: tokenized.iter().map(|t| t.len() as u32).sum(),
        })
    }
}

/// llama.cpp's thread count for `configured` (0: every core).
fn thread_count(configured: usize) -> i32 {
    let threads = match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    i32::try_from(threads).unwrap_or(i32::MAX)
}

/// One active sequence (one request being served).
struct Sequence {
    /// The llama.cpp sequence id, which is also its KV-cache slot.
    id: i32,
    events: UnboundedSender<Event>,
    sampler: LlamaSampler,
    /// With a grammar: applied before `sampler`, kept apart from it because the prompt's
    /// tokens (which `sampler` reads for its repetition history) are not in the grammar.
    grammar: Option<LlamaSampler>,
    /// Greedy without a repetition penalty: argmax over the logits, no sampler chain
    /// (which would sort a candidate array of the whole vocabulary for every token).
    argmax: bool,
    ignore_eos: bool,
    /// Report log-probabilities with this many alternatives.
    logprobs: Option<u32>,
    prompt: Vec<LlamaToken>,
    /// Prompt tokens already decoded (reused ones included).
    prompt_done: usize,
    /// Prompt tokens whose cells were reused from this scope's earlier request.
    cached: u32,
    /// Who may reuse the cells this sequence leaves.
    scope: Option<CacheScope>,
    /// The tokens whose cells are in this sequence's KV cache, in position order.
    cells: Vec<LlamaToken>,
    /// Position of the next token fed to this sequence.
    pos: i32,
    /// The last sampled token, to be fed next (none while reading the prompt).
    next: Option<LlamaToken>,
    /// Index in the current batch of the logits to sample from, if any.
    logits_at: Option<i32>,
    generated: u32,
    /// The generated tokens' ids, in order (the ones `generated` counts).
    output: Vec<LlamaToken>,
    max_tokens: u32,
    text: TextStream,
    submitted: Instant,
    admitted: Instant,
    first_token: Option<Instant>,
}

impl Sequence {
    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt.len() as u32,
            completion_tokens: self.generated,
            cached_tokens: self.cached,
        }
    }

    fn timings(&self) -> Timings {
        let now = Instant::now();
        let first = self.first_token.unwrap_or(now);
        Timings {
            queued: self.admitted - self.submitted,
            prompt: first - self.admitted,
            generation: now - first,
        }
    }

    /// Sends the held-back text and the final event.
    fn finish(&mut self, finish: FinishReason, flush: bool) {
        if flush {
            let rest = self.text.finish();
            if !rest.is_empty() {
                let _ = self.events.send(Event::Text(rest));
            }
        }
        let _ = self.events.send(Event::Done {
            finish,
            usage: self.usage(),
            timings: self.timings(),
            tokens: std::mem::take(&mut self.output)
                .into_iter()
                .map(|t| t.0.unsigned_abs())
                .collect(),
        });
    }
}

struct Worker<'m> {
    shared: &'m Shared,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    batch_size: usize,
    /// Free sequence ids.
    free: Vec<i32>,
    active: Vec<Sequence>,
    /// What each sequence's KV cache holds while it is free, by sequence id.
    slots: Vec<Slot>,
    /// Counts releases, for least-recently-used eviction of cached prefixes.
    clock: u64,
}

/// The cells a free sequence kept for reuse: at most one cached prefix per sequence, so
/// `parallel` in all; the least recently used one of another scope is evicted first.
#[derive(Default)]
struct Slot {
    /// `None`: nothing reusable (its cells are cleared).
    scope: Option<CacheScope>,
    tokens: Vec<LlamaToken>,
    released: u64,
}

impl<'m> Worker<'m> {
    fn new(
        backend: &LlamaBackend,
        shared: &'m Shared,
        config: &EngineConfig,
    ) -> Result<Self, EngineError> {
        let threads = thread_count(config.threads);
        let n_ctx = shared.info.context_length.saturating_mul(config.parallel);
        let batch_size = config.batch.max(config.parallel);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(batch_size)
            .with_n_ubatch(batch_size)
            .with_n_seq_max(config.parallel)
            // A KV cache per sequence (llama.cpp's default): a sequence's attention never
            // sees the others' cells, so its output does not depend on what else is in
            // the batch (seeded sampling stays reproducible under load). llama.cpp then
            // puts sequences into one micro-batch only when their ids are consecutive in
            // the batch; `step` orders the batch by id and ids are reused lowest first.
            .with_kv_unified(false)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let ctx = shared
            .model
            .new_context(backend, params)
            .map_err(|e| EngineError::Load(format!("context: {e}")))?;
        let parallel = i32::try_from(config.parallel)
            .map_err(|_| EngineError::Config("parallel is too large".into()))?;
        Ok(Worker {
            shared,
            ctx,
            batch: LlamaBatch::new(batch_size as usize, parallel),
            batch_size: batch_size as usize,
            free: (0..parallel).collect(),
            active: Vec::new(),
            slots: (0..parallel).map(|_| Slot::default()).collect(),
            clock: 0,
        })
    }

    /// Serves jobs until the engine is dropped and every active sequence has ended.
    fn run(&mut self, queue: &Queue) {
        loop {
            if queue.aborted() {
                for seq in self.active.drain(..) {
                    let _ = seq.events.send(Event::Error(EngineError::Stopped));
                }
                return;
            }
            // Admit waiting requests while sequences are free; block only when idle.
            while !self.free.is_empty() {
                match queue.pop(self.active.is_empty()) {
                    Some(job) => self.admit(job),
                    None if self.active.is_empty() => return, // the engine is gone
                    None => break,
                }
            }
            if !self.active.is_empty() {
                self.step();
            }
        }
    }

    fn admit(&mut self, job: Job) {
        if job.events.is_closed() {
            return; // the client went away while waiting
        }
        let (id, reused) = self.take_sequence(job.scope, &job.prompt);
        let mut sampler = sampler(&job.params, self.shared);
        let grammar = match job.params.grammar.as_deref() {
            None => None,
            Some(g) => match grammar_sampler(&self.shared.model, g) {
                Ok(g) => Some(g),
                Err(e) => {
                    // It parsed at submit: this is llama.cpp's own failure.
                    let _ = job.events.send(Event::Error(e));
                    self.forget(id);
                    self.return_free(id);
                    return;
                }
            },
        };
        let argmax = job.params.temperature <= 0.0
            && !penalised(&job.params)
            && job.params.logit_bias.is_empty()
            && grammar.is_none();
        if !argmax {
            sampler.accept_many(&job.prompt);
        }
        let mut cells = std::mem::take(&mut self.slots[id as usize]).tokens;
        cells.truncate(reused);
        self.active.push(Sequence {
            id,
            events: job.events,
            sampler,
            grammar,
            argmax,
            ignore_eos: job.params.ignore_eos,
            logprobs: job.params.logprobs,
            prompt: job.prompt,
            prompt_done: reused,
            cached: reused as u32,
            scope: job.scope,
            cells,
            pos: reused as i32,
            next: None,
            logits_at: None,
            generated: 0,
            output: Vec::new(),
            max_tokens: job.max_tokens,
            text: TextStream::new(job.params.stop),
            submitted: job.submitted,
            admitted: Instant::now(),
            first_token: None,
        });
    }

    /// A free sequence for a prompt of `scope`, and how many of the prompt's tokens its KV
    /// cache already holds: the free sequence of the same scope with the longest common
    /// prefix (at least one prompt token is left to decode, for the logits); otherwise an
    /// empty one (lowest id first), or the least recently released one, whose cells are
    /// cleared. Cells of another scope are never reused.
    fn take_sequence(&mut self, scope: Option<CacheScope>, prompt: &[LlamaToken]) -> (i32, usize) {
        let limit = prompt.len().saturating_sub(1);
        let matching = scope.and_then(|scope| {
            self.free
                .iter()
                .map(|&id| {
                    let slot = &self.slots[id as usize];
                    let n = if slot.scope == Some(scope) {
                        common_prefix(&slot.tokens, prompt).min(limit)
                    } else {
                        0
                    };
                    (id, n)
                })
                .filter(|&(_, n)| n > 0)
                .max_by_key(|&(id, n)| (n, std::cmp::Reverse(id)))
        });
        if let Some((id, n)) = matching {
            self.free.retain(|&f| f != id);
            // The cells past the common prefix go; the prefix stays.
            if self
                .ctx
                .clear_kv_cache_seq(Some(id as u32), Some(n as u32), None)
                .unwrap_or(false)
            {
                return (id, n);
            }
            // A memory that cannot drop a suffix (not the case for transformers): start over.
            self.forget(id);
            return (id, 0);
        }
        let id = self
            .free
            .iter()
            .copied()
            .min_by_key(|&id| {
                let slot = &self.slots[id as usize];
                (slot.scope.is_some(), slot.released, id)
            })
            .expect("admit is called only with a free sequence");
        self.free.retain(|&f| f != id);
        self.forget(id);
        (id, 0)
    }

    /// Clears the KV cells of sequence `id` and what its slot remembers of them.
    fn forget(&mut self, id: i32) {
        let _ = self.ctx.clear_kv_cache_seq(Some(id as u32), None, None);
        self.slots[id as usize] = Slot::default();
    }

    /// `take_sequence` chooses among the free ids by their slots and ids, not by order.
    fn return_free(&mut self, id: i32) {
        self.free.push(id);
    }

    /// Frees the sequence at `i`, its id reused. With `keep` and a cache scope, its KV cells
    /// stay for a later request of that scope; otherwise they are cleared.
    fn release(&mut self, i: usize, keep: bool) {
        let seq = self.active.swap_remove(i);
        match seq.scope {
            Some(scope) if keep => {
                self.clock += 1;
                self.slots[seq.id as usize] = Slot {
                    scope: Some(scope),
                    tokens: seq.cells,
                    released: self.clock,
                };
            }
            _ => self.forget(seq.id),
        }
        self.return_free(seq.id);
    }

    /// One decode: the next token of every generating sequence, then prompt tokens of the
    /// sequences still reading their prompt, up to the batch size; then one sampled token
    /// for every sequence whose logits came out.
    fn step(&mut self) {
        // Sequences whose consumer went away need no more work.
        for i in (0..self.active.len()).rev() {
            if self.active[i].events.is_closed() {
                self.release(i, true);
            }
        }
        if self.active.is_empty() {
            return;
        }
        // Sequence ids in increasing order: one micro-batch when they are consecutive.
        self.active.sort_unstable_by_key(|s| s.id);
        self.batch.clear();
        let mut budget = self.batch_size;
        for seq in &mut self.active {
            seq.logits_at = None;
            if let Some(t) = seq.next {
                self.batch
                    .add(t, seq.pos, &[seq.id], true)
                    .expect("the batch holds a token per sequence");
                seq.cells.push(t);
                seq.logits_at = Some(self.batch.n_tokens() - 1);
                seq.pos += 1;
                budget -= 1;
            }
        }
        for seq in &mut self.active {
            if seq.next.is_some() || budget == 0 {
                continue;
            }
            let take = (seq.prompt.len() - seq.prompt_done).min(budget);
            for i in 0..take {
                let last = seq.prompt_done + i + 1 == seq.prompt.len();
                let t = seq.prompt[seq.prompt_done + i];
                self.batch
                    .add(t, seq.pos, &[seq.id], last)
                    .expect("within the batch budget");
                seq.cells.push(t);
                seq.pos += 1;
                if last {
                    seq.logits_at = Some(self.batch.n_tokens() - 1);
                }
            }
            seq.prompt_done += take;
            budget -= take;
        }
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            // The KV cache is sized so that every admitted sequence fits; a failure here is
            // llama.cpp's own, and the state of the batch's sequences is unknown: end them.
            tracing::error!(error = %e, sequences = self.active.len(), "llama_decode failed");
            for i in (0..self.active.len()).rev() {
                if self.active[i].logits_at.is_some() || self.active[i].prompt_done > 0 {
                    let _ = self.active[i]
                        .events
                        .send(Event::Error(EngineError::Decode(e.to_string())));
                    self.release(i, false);
                }
            }
            return;
        }
        let vocab = self.shared.model.vocab();
        let mut ended = Vec::new();
        for (i, seq) in self.active.iter_mut().enumerate() {
            let Some(at) = seq.logits_at else { continue };
            let token = if seq.argmax {
                argmax(
                    self.ctx.get_logits_ith(at),
                    if seq.ignore_eos {
                        &self.shared.eog
                    } else {
                        &[]
                    },
                )
            } else if let Some(grammar) = &mut seq.grammar {
                match constrained(&self.ctx, at, grammar, &mut seq.sampler, &vocab) {
                    Some(t) => t,
                    None => {
                        // Nothing the grammar allows is left (it cannot happen while end
                        // of generation is allowed): end here rather than feed the grammar
                        // a token it refuses, which llama.cpp would abort on.
                        seq.finish(FinishReason::Stop, true);
                        ended.push(i);
                        continue;
                    }
                }
            } else {
                // `sample` also feeds the token to the sampler chain (repetition history).
                seq.sampler.sample(&self.ctx, at)
            };
            let now = Instant::now();
            seq.first_token.get_or_insert(now);
            if vocab.is_eog(token) {
                seq.finish(FinishReason::Stop, true);
                ended.push(i);
                continue;
            }
            seq.generated += 1;
            seq.output.push(token);
            let piece = vocab.token_to_piece(token, false, None);
            if let Some(top) = seq.logprobs {
                let logits = self.ctx.get_logits_ith(at);
                let event = Event::Logprob(token_logprob(logits, token, &piece, top, &vocab));
                if seq.events.send(event).is_err() {
                    ended.push(i); // the consumer went away
                    continue;
                }
            }
            let step = seq.text.push(&piece);
            let (out, stopped) = match step {
                Step::Continue(t) => (t, false),
                Step::Stop(t) => (t, true),
            };
            if !out.is_empty() && seq.events.send(Event::Text(out)).is_err() {
                ended.push(i); // the consumer went away
                continue;
            }
            if stopped {
                seq.finish(FinishReason::Stop, false);
                ended.push(i);
            } else if seq.generated >= seq.max_tokens {
                seq.finish(FinishReason::Length, true);
                ended.push(i);
            } else {
                seq.next = Some(token);
            }
        }
        for i in ended.into_iter().rev() {
            self.release(i, true);
        }
    }
}

/// The log-probability of `token` (whose text is `piece`) under the softmax of `logits`,
/// and the `top` likeliest tokens' (most likely first; ties by lower id).
fn token_logprob(
    logits: &[f32],
    token: LlamaToken,
    piece: &[u8],
    top: u32,
    vocab: &llama_cpp_2::vocab::LlamaVocab<'_>,
) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let log_z = f64::from(max) + sum.ln();
    let logprob = |l: f32| (f64::from(l) - log_z) as f32;
    let top = top as usize;
    let mut best: Vec<(usize, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if best.len() == top && best.last().is_some_and(|&(_, m)| l <= m) {
                continue;
            }
            let at = best.partition_point(|&(_, m)| m >= l);
            best.insert(at, (i, l));
            best.truncate(top);
        }
    }
    let bytes = |id: usize| {
        let id = i32::try_from(id).unwrap_or(i32::MAX);
        vocab.token_to_piece(LlamaToken(id), false, None)
    };
    TokenLogprob {
        bytes: piece.to_vec(),
        logprob: usize::try_from(token.0)
            .ok()
            .and_then(|t| logits.get(t))
            .map_or(f32::NEG_INFINITY, |&l| logprob(l)),
        top: best
            .into_iter()
            .map(|(i, l)| (bytes(i), logprob(l)))
            .collect(),
    }
}

/// How many tokens `a` and `b` share at their start.
fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The llama.cpp sampler chain for one request.
fn sampler(p: &SamplingParams, shared: &Shared) -> LlamaSampler {
    let n_vocab = shared.model.vocab().n_tokens();
    let mut chain = Vec::new();
    let mut bias: Vec<_> = p
        .logit_bias
        .iter()
        .filter_map(|&(t, b)| Some(LlamaLogitBias::new(LlamaToken(i32::try_from(t).ok()?), b)))
        .collect();
    if p.ignore_eos {
        bias.extend(
            shared
                .eog
                .iter()
                .map(|&t| LlamaLogitBias::new(t, f32::NEG_INFINITY)),
        );
    }
    if !bias.is_empty() {
        chain.push(LlamaSampler::logit_bias(n_vocab, &bias));
    }
    if penalised(p) {
        chain.push(LlamaSampler::penalties(
            n_vocab,
            PENALTY_WINDOW,
            p.repetition_penalty,
            0.0,
            0.0,
        ));
    }
    if p.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if p.top_k > 0 {
            chain.push(LlamaSampler::top_k(
                i32::try_from(p.top_k).unwrap_or(i32::MAX),
            ));
        }
        if p.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(p.top_p, 1));
        }
        if p.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(p.min_p, 1));
        }
        chain.push(LlamaSampler::temp(p.temperature));
        chain.push(LlamaSampler::dist(p.seed.unwrap_or_else(random_seed)));
    }
    LlamaSampler::chain_simple(chain)
}

/// A grammar sampler for `grammar` (GBNF, start symbol `root`).
fn grammar_sampler(model: &LlamaModel, grammar: &str) -> Result<LlamaSampler, EngineError> {
    LlamaSampler::grammar(model, grammar, "root").map_err(|e| {
        EngineError::InvalidRequest(format!("response_format: the grammar is not valid: {e}"))
    })
}

/// Samples from the logits at `at` among the tokens `grammar` allows, then feeds the token
/// to both samplers (not an end-of-generation token, which ends the sequence: the grammar
/// allows one only once it is complete). `None` when the grammar allows none.
fn constrained(
    ctx: &LlamaContext<'_>,
    at: i32,
    grammar: &mut LlamaSampler,
    chain: &mut LlamaSampler,
    vocab: &llama_cpp_2::vocab::LlamaVocab<'_>,
) -> Option<LlamaToken> {
    let mut candidates = ctx.token_data_array_ith(at);
    grammar.apply(&mut candidates);
    if !candidates.data.iter().any(|c| c.logit().is_finite()) {
        return None;
    }
    chain.apply(&mut candidates);
    let token = candidates.selected_token()?;
    let allowed = candidates
        .data
        .iter()
        .any(|c| c.id() == token && c.logit().is_finite());
    if !allowed {
        return None;
    }
    if !vocab.is_eog(token) {
        grammar.accept(token);
        chain.accept(token);
    }
    Some(token)
}

/// Whether the repetition penalty is on.
fn penalised(p: &SamplingParams) -> bool {
    p.repetition_penalty > 0.0 && (p.repetition_penalty - 1.0).abs() > f32::EPSILON
}

/// The token with the largest logit (the first on ties, as llama.cpp's greedy sampler),
/// never one of `excluded`.
fn argmax(logits: &[f32], excluded: &[LlamaToken]) -> LlamaToken {
    let mut best = (f32::NEG_INFINITY, 0usize);
    for (i, &l) in logits.iter().enumerate() {
        if l > best.0 && !excluded.iter().any(|t| usize::try_from(t.0) == Ok(i)) {
            best = (l, i);
        }
    }
    LlamaToken(i32::try_from(best.1).expect("vocabulary ids fit i32"))
}

/// A seed for requests that do not give one.
fn random_seed() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    // RandomState is keyed from the OS's randomness once per process, then per instance.
    RandomState::new().hash_one(Instant::now()) as u32
}
