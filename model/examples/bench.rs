//! Engine benchmark on a real GGUF, through Veil's engine API: prompt processing and
//! generation tok/s, time to first token, 4 concurrent streams against one, peak RSS.
//! `scripts/bench-model.sh` runs it beside llama.cpp's own `llama-bench` and prints ratios.
//!
//! `cargo run --release -p veil-model --example bench -- MODEL.gguf [THREADS] [REPS]`
//!
//! The last line of output is one JSON object with every figure (medians over REPS runs).

use std::time::{Duration, Instant};

use veil_model::{
    ChatMessage, Engine, EngineConfig, Event, GenerateRequest, LlamaEngine, SamplingParams,
};

/// Tokens of the prompt for prompt processing (as llama-bench's pp128).
const PROMPT_TOKENS: usize = 128;
/// Generated tokens (as llama-bench's tg128).
const GEN_TOKENS: u32 = 128;
/// Concurrent streams.
const STREAMS: usize = 4;

const PARAGRAPH: &str = "The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a \
    brass lantern and a notebook in which he recorded the weather, the ships that passed, and the \
    colour of the sea. Over forty years the notebooks filled three shelves of the small stone \
    cottage at the foot of the tower. Visitors who came to the island in summer often asked to read \
    them, and he let them, on the condition that they sat by the window and read aloud, so that he \
    could hear again the storms of 1961 and the long calm autumn of 1978, when the water lay flat \
    as a mirror for nineteen days and the fishing boats came home full every night. His daughter, \
    who later became an engineer, said that the notebooks taught her more about measurement than \
    any university course: the discipline of writing down what you see, at the same time every day, \
    whether or not anything seems to have happened.";

/// One request's view from the consumer's side.
struct Run {
    submitted: Instant,
    first: Instant,
    done: Instant,
    /// When each text event arrived.
    texts: Vec<Instant>,
    prompt_tokens: u32,
    completion_tokens: u32,
}

impl Run {
    fn ttft(&self) -> Duration {
        self.first - self.submitted
    }
}

fn run(engine: &LlamaEngine, request: GenerateRequest) -> Run {
    let submitted = Instant::now();
    let mut stream = engine.submit(request).expect("submit");
    let (mut first, mut texts) = (None, Vec::new());
    while let Some(event) = stream.blocking_recv() {
        let now = Instant::now();
        first.get_or_insert(now);
        match event {
            Event::Text(_) => texts.push(now),
            Event::Done { usage, .. } => {
                return Run {
                    submitted,
                    first: first.unwrap_or(now),
                    done: now,
                    texts,
                    prompt_tokens: usage.prompt_tokens,
                    completion_tokens: usage.completion_tokens,
                }
            }
            Event::Error(e) => panic!("request failed: {e}"),
            Event::Logprob(_) => {}
        }
    }
    panic!("the stream ended without Done")
}

/// A raw-text prompt of about `PROMPT_TOKENS` tokens, starting with `prefix`.
fn prompt(engine: &LlamaEngine, prefix: &str) -> String {
    let words: Vec<&str> = prefix
        .split_whitespace()
        .chain(PARAGRAPH.split_whitespace().cycle())
        .take(400)
        .collect();
    let mut n = words.len();
    while engine.count_tokens(&words[..n].join(" ")) > PROMPT_TOKENS {
        n -= 1;
    }
    words[..n].join(" ")
}

fn generate(text: &str, max_tokens: u32) -> GenerateRequest {
    let mut r = GenerateRequest::text(text);
    r.params = SamplingParams::greedy(max_tokens);
    r.params.ignore_eos = true;
    r
}

/// The aggregate generation rate of concurrent runs, two ways: over the window in which all
/// of them generate (from the last stream's first token to the first stream's last token:
/// the rate of `STREAMS` streams side by side, as llama-batched-bench's S_TG), and over the
/// whole span from the first token of any stream to the end of the last (which also counts
/// the steps that decode the later prompts while the first stream already generates).
fn aggregate(runs: &[Run]) -> (f64, f64) {
    let start = runs.iter().map(|r| r.first).min().expect("streams");
    let end = runs.iter().map(|r| r.done).max().expect("streams");
    let tokens: u32 = runs.iter().map(|r| r.completion_tokens - 1).sum();
    let window = f64::from(tokens) / (end - start).as_secs_f64();

    // Text events, one per token unless a character spans tokens: a lower bound.
    for r in runs {
        if r.texts.len() != r.completion_tokens as usize {
            eprintln!(
                "note: {} text events for {} tokens",
                r.texts.len(),
                r.completion_tokens
            );
        }
    }
    let all_in = runs.iter().map(|r| r.first).max().expect("streams");
    let first_out = runs
        .iter()
        .filter_map(|r| r.texts.last().copied())
        .min()
        .expect("streams");
    let inside: usize = runs
        .iter()
        .map(|r| {
            r.texts
                .iter()
                .filter(|t| **t > all_in && **t <= first_out)
                .count()
        })
        .sum();
    let steady = inside as f64 / (first_out - all_in).as_secs_f64();
    (window, steady)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .expect("usage: bench MODEL.gguf [THREADS] [REPS]");
    let threads: usize = args.get(2).and_then(|t| t.parse().ok()).unwrap_or(2);
    let reps: usize = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(5);

    let bytes = std::fs::read(path).expect("read the model");
    let t = Instant::now();
    let config = EngineConfig {
        threads,
        parallel: STREAMS as u32,
        ..EngineConfig::default()
    };
    let engine = LlamaEngine::load(&bytes, config).expect("load");
    let load = t.elapsed();
    drop(bytes);
    let rss_loaded = status_kib("VmRSS:");

    let text = prompt(&engine, "");
    let texts: Vec<String> = (0..STREAMS)
        .map(|i| prompt(&engine, &format!("Stream {i}:")))
        .collect();
    let chat = {
        let mut r =
            GenerateRequest::chat(vec![ChatMessage::user("What is the capital of France?")]);
        r.params = SamplingParams::greedy(16);
        r
    };
    // Warm-up (first-touch of the weights, thread pool start).
    run(&engine, generate(&text, 8));

    let (mut pp, mut ttft, mut tg, mut tg_internal, mut agg, mut agg_steady, mut chat_ttft) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut prompt_tokens = 0;
    for _ in 0..reps {
        // Prompt processing: one prompt, one token.
        let r = run(&engine, generate(&text, 1));
        prompt_tokens = r.prompt_tokens;
        pp.push(f64::from(r.prompt_tokens) / r.ttft().as_secs_f64());

        // Generation: 128 tokens after the prompt; the first comes from the prompt's logits.
        let submitted = Instant::now();
        let mut stream = engine.submit(generate(&text, GEN_TOKENS)).expect("submit");
        let (mut first, mut n, mut internal) = (None, 0, Duration::ZERO);
        while let Some(event) = stream.blocking_recv() {
            first.get_or_insert_with(Instant::now);
            if let Event::Done { usage, timings, .. } = event {
                n = usage.completion_tokens;
                internal = timings.generation;
                break;
            }
        }
        let first = first.expect("events came");
        assert_eq!(n, GEN_TOKENS, "ignore_eos generates max_tokens");
        ttft.push((first - submitted).as_secs_f64() * 1e3);
        tg.push(f64::from(n - 1) / first.elapsed().as_secs_f64());
        tg_internal.push(f64::from(n - 1) / internal.as_secs_f64());

        // Four concurrent streams, each 128 tokens after its own 128-token prompt.
        let runs: Vec<Run> = std::thread::scope(|s| {
            let handles: Vec<_> = texts
                .iter()
                .map(|t| s.spawn(|| run(&engine, generate(t, GEN_TOKENS))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("stream"))
                .collect()
        });
        let (window, steady) = aggregate(&runs);
        agg.push(window);
        agg_steady.push(steady);

        chat_ttft.push(run(&engine, chat.clone()).ttft().as_secs_f64() * 1e3);
    }
    let (pp, ttft, tg, tg_internal, agg, agg_steady, chat_ttft) = (
        median(pp),
        median(ttft),
        median(tg),
        median(tg_internal),
        median(agg),
        median(agg_steady),
        median(chat_ttft),
    );
    let peak = status_kib("VmHWM:");
    println!("veil engine, {threads} threads, {reps} reps (medians)");
    println!(
        "  load                   {:.0} ms",
        load.as_secs_f64() * 1e3
    );
    println!("  pp{prompt_tokens:<3}                  {pp:.1} tok/s");
    println!("  tg{GEN_TOKENS} (after the prompt)  {tg:.1} tok/s (engine-side {tg_internal:.1})");
    println!("  time to first token    {ttft:.1} ms ({prompt_tokens}-token prompt), {chat_ttft:.1} ms (chat question)");
    println!(
        "  {STREAMS} streams aggregate     {agg_steady:.1} tok/s = {:.2}x one stream while all {STREAMS} generate; {agg:.1} tok/s = {:.2}x from the first token to the last",
        agg_steady / tg,
        agg / tg
    );
    println!(
        "  RSS after load         {} MiB, peak {} MiB",
        rss_loaded / 1024,
        peak / 1024
    );
    println!(
        "{{\"threads\":{threads},\"reps\":{reps},\"load_ms\":{:.1},\"prompt_tokens\":{prompt_tokens},\"pp_tok_s\":{pp:.2},\"tg_tok_s\":{tg:.2},\"tg_engine_tok_s\":{tg_internal:.2},\"ttft_ms\":{ttft:.2},\"chat_ttft_ms\":{chat_ttft:.2},\"streams\":{STREAMS},\"aggregate_tok_s\":{agg:.2},\"aggregate_steady_tok_s\":{agg_steady:.2},\"rss_loaded_kib\":{rss_loaded},\"peak_rss_kib\":{peak}}}",
        load.as_secs_f64() * 1e3
    );
}
