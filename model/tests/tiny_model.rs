//! The engine on a tiny random-weight model that the tests make themselves: mechanics
//! (limits, determinism, concurrency, queueing, cancellation), not answers.

use std::time::Duration;

use veil_model::{
    tiny, CacheScope, ChatMessage, Engine, EngineConfig, EngineError, Event, EventStream,
    FinishReason, GenerateRequest, Generation, LlamaEngine, SamplingParams,
};

fn engine() -> LlamaEngine {
    LlamaEngine::load(&tiny::gguf(1), EngineConfig::small()).expect("tiny model loads")
}

fn greedy(prompt: &str, max_tokens: u32) -> GenerateRequest {
    let mut r = GenerateRequest::chat(vec![ChatMessage::user(prompt)]);
    r.params = SamplingParams::greedy(max_tokens);
    r
}

fn long(prompt: &str, max_tokens: u32) -> GenerateRequest {
    let mut r = greedy(prompt, max_tokens);
    r.params.ignore_eos = true;
    r
}

fn collect(mut stream: EventStream) -> (String, Event) {
    let mut text = String::new();
    while let Some(event) = stream.blocking_recv() {
        match event {
            Event::Text(t) => {
                assert!(!t.is_empty(), "no empty text events");
                text.push_str(&t);
            }
            end => return (text, end),
        }
    }
    panic!("the stream ended without Done")
}

fn same(a: &Generation, b: &Generation) -> bool {
    (&a.text, a.finish, a.usage) == (&b.text, b.finish, b.usage)
}

#[test]
fn bytes_that_are_not_gguf_do_not_load() {
    let err = LlamaEngine::load(b"not a model", EngineConfig::small()).expect_err("refused");
    assert!(matches!(err, EngineError::Load(_)), "{err}");
    let mut truncated = tiny::gguf(1);
    truncated.truncate(truncated.len() / 2);
    let err = LlamaEngine::load(&truncated, EngineConfig::small()).expect_err("refused");
    assert!(matches!(err, EngineError::Load(_)), "{err}");
}

#[test]
fn unusable_configurations_are_refused() {
    for config in [
        EngineConfig {
            parallel: 0,
            ..EngineConfig::small()
        },
        EngineConfig {
            queue: 0,
            ..EngineConfig::small()
        },
        EngineConfig {
            batch: 0,
            ..EngineConfig::small()
        },
    ] {
        let err = LlamaEngine::load(&tiny::gguf(1), config).expect_err("refused");
        assert!(matches!(err, EngineError::Config(_)), "{err}");
    }
}

#[test]
fn model_info_comes_from_the_gguf_and_the_config() {
    let e = engine();
    let info = e.info();
    assert_eq!(info.name, "veil-tiny");
    assert_eq!(info.context_length, 256);
    assert_eq!(info.parallel, 2);
    assert!(info.parameters > 10_000, "{info:?}");
    assert!(e.count_tokens("abc def") >= 2);
}

#[test]
fn max_tokens_is_honoured_and_usage_counted() {
    let e = engine();
    let out = e
        .generate_blocking(long("hello there", 5))
        .expect("generates");
    assert_eq!(out.finish, FinishReason::Length);
    assert_eq!(out.usage.completion_tokens, 5);
    assert!(out.usage.prompt_tokens > 5, "{:?}", out.usage);
    assert!(out.timings.generation <= out.timings.prompt + out.timings.generation);
    // Without ignore_eos the model may stop early, never late.
    let out = e
        .generate_blocking(greedy("hello there", 5))
        .expect("generates");
    assert!(out.usage.completion_tokens <= 5);
}

#[test]
fn raw_text_prompts_are_not_templated() {
    let e = engine();
    let mut r = GenerateRequest::text("abc");
    r.params = SamplingParams::greedy(3);
    r.params.ignore_eos = true;
    let raw = e.generate_blocking(r).expect("generates");
    let chat = e.generate_blocking(long("abc", 3)).expect("generates");
    assert!(
        raw.usage.prompt_tokens < chat.usage.prompt_tokens,
        "{raw:?} {chat:?}"
    );
}

#[test]
fn greedy_decoding_is_deterministic_and_seeds_reproduce() {
    let e = engine();
    let a = e.generate_blocking(long("abc", 12)).expect("a");
    let b = e.generate_blocking(long("abc", 12)).expect("b");
    assert!(same(&a, &b), "{a:?} {b:?}");
    let seeded = |seed| {
        let mut r = long("abc", 24);
        r.params.temperature = 1.5;
        r.params.top_k = 0;
        r.params.top_p = 1.0;
        r.params.seed = Some(seed);
        e.generate_blocking(r).expect("sampled")
    };
    let (x, y) = (seeded(42), seeded(42));
    assert!(same(&x, &y), "{x:?} {y:?}");
    let others: Vec<_> = (1..6).map(seeded).collect();
    assert!(
        others.iter().any(|o| o.text != x.text),
        "different seeds give different samples"
    );
}

#[test]
fn repetition_penalty_changes_greedy_output() {
    let e = engine();
    let plain = e.generate_blocking(long("aaaa aaaa", 24)).expect("plain");
    let mut r = long("aaaa aaaa", 24);
    r.params.repetition_penalty = 5.0;
    let penalised = e.generate_blocking(r).expect("penalised");
    assert_ne!(plain.text, penalised.text);
}

#[test]
fn a_stop_sequence_ends_generation_and_is_not_emitted() {
    let e = engine();
    let free = e.generate_blocking(long("stop test", 40)).expect("free");
    // Stop at a piece of the text that greedy decoding will produce anyway.
    let chars: Vec<char> = free.text.chars().collect();
    assert!(chars.len() >= 8, "{free:?}");
    let stop: String = chars[4..7].iter().collect();
    let mut r = long("stop test", 40);
    r.params.stop = vec![stop.clone()];
    let out = e.generate_blocking(r).expect("stops");
    assert_eq!(out.finish, FinishReason::Stop);
    let at = free.text.find(&stop).expect("the stop text occurs");
    assert_eq!(out.text, free.text[..at]);
}

#[test]
fn concurrent_requests_get_the_answers_they_would_get_alone() {
    let e = engine();
    let alone_a = e.generate_blocking(long("first prompt", 10)).expect("a");
    let alone_b = e
        .generate_blocking(long("second, different prompt", 14))
        .expect("b");
    let rx_a = e.submit(long("first prompt", 10)).expect("submit a");
    let rx_b = e
        .submit(long("second, different prompt", 14))
        .expect("submit b");
    let (ta, end_a) = collect(rx_a);
    let (tb, end_b) = collect(rx_b);
    assert_eq!(ta, alone_a.text);
    assert_eq!(tb, alone_b.text);
    assert!(matches!(end_a, Event::Done { usage, .. } if usage == alone_a.usage));
    assert!(matches!(end_b, Event::Done { usage, .. } if usage == alone_b.usage));
}

#[test]
fn many_threads_submitting_at_once_each_get_their_own_stream() {
    let e = LlamaEngine::load(
        &tiny::gguf(3),
        EngineConfig {
            queue: 16,
            ..EngineConfig::small()
        },
    )
    .expect("loads");
    let expected: Vec<_> = (0..6)
        .map(|i| {
            e.generate_blocking(long(&format!("prompt {i}"), 8 + i))
                .expect("alone")
                .text
        })
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..6u32)
            .map(|i| {
                let e = &e;
                s.spawn(move || {
                    collect(
                        e.submit(long(&format!("prompt {i}"), 8 + i))
                            .expect("submit"),
                    )
                    .0
                })
            })
            .collect();
        for (h, want) in handles.into_iter().zip(&expected) {
            assert_eq!(&h.join().expect("thread"), want);
        }
    });
}

#[test]
fn a_full_queue_says_busy_and_a_dropped_stream_frees_its_sequence() {
    // A long-context model, so that the first request holds the only sequence (tens of
    // thousands of tokens) until it is dropped, however fast the machine is.
    const CONTEXT: u32 = 32_768;
    let e = LlamaEngine::load(
        &tiny::gguf_with_context_length(2, CONTEXT),
        EngineConfig {
            parallel: 1,
            queue: 1,
            context_per_sequence: CONTEXT,
            ..EngineConfig::small()
        },
    )
    .expect("loads");
    let running = e.submit(long("one", CONTEXT - 64)).expect("first");
    // Wait until the worker has taken it from the queue into the sequence.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while e.queue_depth() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first request is never admitted"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let waiting = e.submit(long("two", CONTEXT - 64)).expect("queued");
    let busy = e
        .submit(long("three", 1))
        .expect_err("a full queue answers Busy");
    assert_eq!(busy, EngineError::Busy { queued: 1 });
    drop(running);
    drop(waiting);
    // Both requests are given up; a new one is served.
    let out = e
        .generate_blocking(long("four", 3))
        .expect("served after the others went away");
    assert_eq!(out.usage.completion_tokens, 3);
    assert_eq!(e.queue_depth(), 0);
}

#[test]
fn an_oversized_prompt_or_zero_max_tokens_is_refused_at_submit() {
    let e = engine();
    let err = e
        .submit(greedy(&"z ".repeat(400), 5))
        .expect_err("too long");
    assert!(
        matches!(
            err,
            EngineError::PromptTooLong {
                context_length: 256,
                ..
            }
        ),
        "{err}"
    );
    let err = e.submit(greedy("hi", 0)).expect_err("zero");
    assert!(matches!(err, EngineError::InvalidRequest(_)), "{err}");
}

#[test]
fn generation_stops_where_the_context_ends() {
    let e = engine();
    let prompt = "x ".repeat(100);
    let out = e
        .generate_blocking(long(&prompt, 10_000))
        .expect("generates");
    assert_eq!(out.finish, FinishReason::Length);
    assert_eq!(out.usage.prompt_tokens + out.usage.completion_tokens, 256);
}

#[test]
fn a_broken_chat_template_is_reported() {
    let gguf = tiny::gguf_with_template(
        1,
        "{% for m in messages %}{{ raise_exception('no chats here') }}{% endfor %}",
    );
    let e = LlamaEngine::load(&gguf, EngineConfig::small()).expect("loads");
    let err = e.submit(greedy("hi", 3)).expect_err("template raises");
    assert!(
        matches!(&err, EngineError::Template(m) if m.contains("no chats here")),
        "{err}"
    );
}

#[test]
fn a_grammar_confines_the_output_and_a_bad_one_is_refused_at_submit() {
    let e = engine();
    // Random weights would never say exactly this on their own; sampled, with several seeds.
    for seed in 1..=4 {
        let mut r = greedy("hello", 40);
        r.params.temperature = 1.0;
        r.params.seed = Some(seed);
        r.params.grammar = Some(r#"root ::= ("yes" | "no") " " [0-9] [0-9]?"#.into());
        let out = e.generate_blocking(r).expect("generates");
        let (word, number) = out.text.split_once(' ').expect("a word and a number");
        assert!(["yes", "no"].contains(&word), "{:?}", out.text);
        assert!(
            (1..=2).contains(&number.len()) && number.bytes().all(|b| b.is_ascii_digit()),
            "{:?}",
            out.text
        );
        assert_eq!(
            out.finish,
            FinishReason::Stop,
            "ends when the grammar does: {out:?}"
        );
    }
    // Greedy too (the argmax fast path is off under a grammar).
    let mut r = greedy("hello", 40);
    r.params.grammar = Some(r#"root ::= "ok""#.into());
    assert_eq!(e.generate_blocking(r).expect("generates").text, "ok");
    let mut r = greedy("hello", 4);
    r.params.grammar = Some("root ::= (".into());
    match e.submit(r) {
        Err(EngineError::InvalidRequest(m)) => assert!(m.contains("grammar"), "{m}"),
        other => panic!("a bad grammar must be refused: {other:?}"),
    }
}

fn scoped(mut request: GenerateRequest, scope: u8) -> GenerateRequest {
    request.cache_scope = Some(CacheScope([scope; 32]));
    request
}

fn text(prompt: &str, max_tokens: u32) -> GenerateRequest {
    let mut r = GenerateRequest::text(prompt);
    r.params = SamplingParams::greedy(max_tokens);
    r.params.ignore_eos = true;
    r
}

const SHARED: &str = "a prompt long enough to be worth keeping: one two three four five six";

#[test]
fn a_scope_reuses_its_own_prompt_prefix_and_never_another_scopes() {
    let e = engine();
    let alone = e.generate_blocking(text(SHARED, 8)).expect("generates");
    let n = alone.usage.prompt_tokens;
    assert!(n > 8, "{n}");
    let first = e
        .generate_blocking(scoped(text(SHARED, 8), 1))
        .expect("generates");
    assert_eq!(first.usage.cached_tokens, 0, "nothing to reuse yet");
    // No scope, or another one, never reuses scope 1's cells (in this order, so that each
    // takes the empty sequence rather than evict scope 1's).
    for request in [text(SHARED, 8), scoped(text(SHARED, 8), 2)] {
        let g = e.generate_blocking(request).expect("generates");
        assert_eq!(g.usage.cached_tokens, 0);
    }
    // The same prompt in the same scope: every prompt token but the last (which is decoded
    // again, for its logits) is reused, and the answer is the one computed from scratch.
    let again = e
        .generate_blocking(scoped(text(SHARED, 8), 1))
        .expect("generates");
    assert_eq!(again.usage.cached_tokens, n - 1);
    assert_eq!(
        (again.text.as_str(), again.usage.prompt_tokens),
        (alone.text.as_str(), n)
    );

    // A chat's next turn reuses the previous turn's prompt and answer.
    let mut chat = vec![ChatMessage::user(
        "the first question, about cached prefixes",
    )];
    let turn = |messages: &[ChatMessage], scope: Option<u8>| {
        let mut r = GenerateRequest::chat(messages.to_vec());
        r.params = SamplingParams::greedy(6);
        e.generate_blocking(match scope {
            Some(s) => scoped(r, s),
            None => r,
        })
        .expect("generates")
    };
    let one = turn(&chat, Some(3));
    chat.push(ChatMessage::assistant(one.text.clone()));
    chat.push(ChatMessage::user("and a second question"));
    let from_scratch = turn(&chat, None);
    let two = turn(&chat, Some(3));
    assert!(
        two.usage.cached_tokens >= one.usage.prompt_tokens / 2
            && two.usage.cached_tokens < two.usage.prompt_tokens,
        "{:?} after {:?}",
        two.usage,
        one.usage
    );
    assert_eq!(two.text, from_scratch.text);
}

#[test]
fn cached_prefixes_are_bounded_by_the_sequences_and_the_least_recent_is_evicted() {
    let e = engine(); // 2 sequences: 2 cached prefixes at most
    let n = e
        .generate_blocking(text(SHARED, 4))
        .expect("generates")
        .usage
        .prompt_tokens;
    let cached = |scope: u8| {
        e.generate_blocking(scoped(text(SHARED, 4), scope))
            .expect("generates")
            .usage
            .cached_tokens
    };
    assert_eq!([cached(1), cached(2), cached(3)], [0, 0, 0]);
    // Scope 3 took the sequence of scope 1, the least recently used.
    assert_eq!(cached(2), n - 1, "kept");
    assert_eq!(cached(1), 0, "evicted");

    // Two requests of one scope at once: one reuses the prefix, the other starts afresh on
    // the other sequence; both answer as alone, and the stream dropped halfway leaves
    // consistent cells behind.
    let alone = e.generate_blocking(text(SHARED, 8)).expect("generates");
    let a = e.submit(scoped(text(SHARED, 8), 1)).expect("queued");
    let b = e.submit(scoped(text(SHARED, 8), 1)).expect("queued");
    let (ta, ea) = collect(a);
    let (tb, eb) = collect(b);
    let cached_of = |e: &Event| match e {
        Event::Done { usage, .. } => usage.cached_tokens,
        other => panic!("{other:?}"),
    };
    let mut both = [cached_of(&ea), cached_of(&eb)];
    both.sort_unstable();
    assert_eq!(both, [0, n - 1]);
    assert_eq!(
        (ta.as_str(), tb.as_str()),
        (alone.text.as_str(), alone.text.as_str())
    );
    // The other sequence is kept busy, so that the next request waits for the cut one.
    let busy = e.submit(text(SHARED, 128)).expect("queued");
    let mut cut = e.submit(scoped(text(SHARED, 64), 4)).expect("queued");
    while let Some(event) = cut.blocking_recv() {
        if matches!(event, Event::Text(_)) {
            break;
        }
    }
    drop(cut);
    let after = e
        .generate_blocking(scoped(text(SHARED, 8), 4))
        .expect("generates");
    assert_eq!(after.usage.cached_tokens, n - 1);
    assert_eq!(after.text, alone.text);
    drop(busy);
}

#[test]
fn logprobs_come_with_every_generated_token_and_greedy_picks_the_likeliest() {
    let e = engine();
    let mut r = greedy("tell me about the weather", 12);
    r.params.logprobs = Some(3);
    let g = e.generate_blocking(r.clone()).expect("generates");
    assert_eq!(g.logprobs.len(), g.usage.completion_tokens as usize);
    assert!(!g.logprobs.is_empty());
    let mut bytes = Vec::new();
    for l in &g.logprobs {
        assert_eq!(l.top.len(), 3);
        assert!(l.top.windows(2).all(|w| w[0].1 >= w[1].1), "{l:?}");
        assert!(l.logprob <= 0.0 && l.logprob.is_finite(), "{l:?}");
        let mass: f32 = l.top.iter().map(|(_, lp)| lp.exp()).sum();
        assert!(mass <= 1.0 + 1e-4, "{mass}");
        // Greedy: the chosen token is the likeliest one.
        assert_eq!((&l.bytes, l.logprob), (&l.top[0].0, l.top[0].1));
        bytes.extend_from_slice(&l.bytes);
    }
    assert_eq!(String::from_utf8_lossy(&bytes), g.text);
    // Not asked for: none, and the same answer.
    r.params.logprobs = None;
    let plain = e.generate_blocking(r.clone()).expect("generates");
    assert!(plain.logprobs.is_empty());
    assert_eq!(plain.text, g.text);
    // Sampled at a high temperature, the chosen token is not always the likeliest, and its
    // reported log-probability is still the model's.
    r.params = SamplingParams {
        temperature: 1.5,
        top_k: 0,
        top_p: 1.0,
        seed: Some(7),
        max_tokens: 24,
        ignore_eos: true,
        logprobs: Some(1),
        ..SamplingParams::default()
    };
    let hot = e.generate_blocking(r.clone()).expect("generates");
    assert_eq!(hot.logprobs.len(), 24);
    assert!(hot
        .logprobs
        .iter()
        .all(|l| l.top.len() == 1 && l.logprob <= l.top[0].1));
    assert!(
        hot.logprobs.iter().any(|l| l.logprob < l.top[0].1),
        "a sampled token below the likeliest"
    );
    r.params.logprobs = Some(0);
    let bare = e.generate_blocking(r.clone()).expect("generates");
    assert!(bare.logprobs.iter().all(|l| l.top.is_empty()));
    r.params.logprobs = Some(21);
    assert!(matches!(
        e.submit(r).map(drop),
        Err(EngineError::InvalidParam {
            param: "top_logprobs",
            ..
        })
    ));
}

#[test]
fn embeddings_are_unit_vectors_one_per_input_and_repeatable() {
    let e = engine();
    let inputs: Vec<String> = ["the same words", "the same words", "other words entirely"]
        .map(String::from)
        .to_vec();
    let out = e.embed(&inputs).expect("embeds");
    assert_eq!(out.vectors.len(), 3);
    let dim = out.vectors[0].len();
    assert!(dim > 0);
    for v in &out.vectors {
        assert_eq!(v.len(), dim);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }
    assert_eq!(out.vectors[0], out.vectors[1]);
    assert_ne!(out.vectors[0], out.vectors[2]);
    let tokens: usize = inputs.iter().map(|t| e.count_tokens(t)).sum();
    assert!(
        out.prompt_tokens as usize >= tokens,
        "{} < {tokens}",
        out.prompt_tokens
    );
    // Alone, an input gets the vector it got among others.
    let alone = e.embed(&inputs[2..]).expect("embeds");
    assert_eq!(alone.vectors[0], out.vectors[2]);
    // Refused: nothing, an empty input, too many, too long.
    for bad in [
        vec![],
        vec![String::new()],
        vec!["x".to_owned(); veil_model::MAX_EMBEDDING_INPUTS + 1],
    ] {
        assert!(matches!(e.embed(&bad), Err(EngineError::InvalidRequest(_))));
    }
    let long = vec!["word ".repeat(400)];
    assert!(matches!(
        e.embed(&long),
        Err(EngineError::PromptTooLong { .. })
    ));
    // Generation goes on as before.
    assert!(e.generate_blocking(greedy("hello", 3)).is_ok());
}

#[test]
fn a_stopped_engine_ends_every_request_and_its_weights_can_then_be_wiped() {
    let gguf = tiny::gguf(1);
    let file = veil_model::ModelFile::with_bytes(&gguf).expect("memfd");
    let mut wipe = file.wipe_handle().expect("mapped before sealing");
    file.seal().expect("sealed");
    let config = EngineConfig {
        parallel: 1,
        queue: 2,
        ..EngineConfig::small()
    };
    let e = LlamaEngine::load_file(file, config).expect("loads from the sealed memfd");
    let running = e.submit(long("one", 200)).expect("first");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while e.queue_depth() > 0 {
        assert!(std::time::Instant::now() < deadline, "never admitted");
        std::thread::sleep(Duration::from_millis(5));
    }
    let waiting = e.submit(long("two", 200)).expect("queued");
    e.stop();
    // Both end with Stopped, however far they got; a new one is refused.
    for stream in [running, waiting] {
        let (_, end) = collect(stream);
        assert!(matches!(end, Event::Error(EngineError::Stopped)), "{end:?}");
    }
    assert!(matches!(
        e.submit(long("three", 3)),
        Err(EngineError::Stopped)
    ));
    assert!(matches!(e.embed(&["x".into()]), Err(EngineError::Stopped)));
    drop(e);
    let wiped = wipe.wipe();
    assert_eq!(wiped.bytes, gguf.len() as u64);
    assert_eq!(wiped.nonzero_after, 0);
}
