//! A tiny llama-architecture GGUF with random weights, made in memory, so that engine,
//! server and end-to-end tests run in seconds without a real model.
//!
//! Vocabulary: `<unk>`, `<s>`, `</s>`, the 256 byte tokens (SentencePiece byte fallback,
//! so any text tokenizes), `▁` and the letters. The chat template is plain text.

/// Embedding width.
const EMBD: u64 = 64;
/// Feed-forward width.
const FF: u64 = 128;
/// Layers.
const LAYERS: u64 = 2;
/// Attention heads.
const HEADS: u32 = 4;
/// Key/value heads.
const KV_HEADS: u32 = 2;

/// The chat template of the tiny model.
pub const TEMPLATE: &str = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

struct Writer {
    out: Vec<u8>,
}

impl Writer {
    fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn string(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.out.extend_from_slice(s.as_bytes());
    }
    fn kv_u32(&mut self, k: &str, v: u32) {
        self.string(k);
        self.u32(4);
        self.u32(v);
    }
    fn kv_f32(&mut self, k: &str, v: f32) {
        self.string(k);
        self.u32(6);
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn kv_str(&mut self, k: &str, v: &str) {
        self.string(k);
        self.u32(8);
        self.string(v);
    }
}

fn vocab() -> Vec<(String, f32, i32)> {
    let mut v = vec![
        ("<unk>".to_owned(), 0.0, 2),
        ("<s>".to_owned(), 0.0, 3),
        ("</s>".to_owned(), 0.0, 3),
    ];
    for b in 0..=255u8 {
        v.push((format!("<0x{b:02X}>"), 0.0, 6));
    }
    v.push(("▁".to_owned(), -1.0, 1));
    for c in 'a'..='z' {
        v.push((c.to_string(), -2.0, 1));
        v.push((format!("▁{c}"), -1.5, 1));
    }
    v
}

/// The bytes of a tiny GGUF whose weights come from `seed`, with the chat template
/// [`TEMPLATE`].
pub fn gguf(seed: u64) -> Vec<u8> {
    gguf_with_template(seed, TEMPLATE)
}

/// A chat template in the Hermes convention (written for the tests): tools in a system
/// turn, calls as `<tool_call>` JSON, answers as `<tool_response>`.
pub const TOOLS_TEMPLATE: &str = include_str!("../tests/fixtures/tools.jinja");

/// The bytes of a tiny GGUF whose weights come from `seed`, with this chat template.
pub fn gguf_with_template(seed: u64, template: &str) -> Vec<u8> {
    build(seed, template, 512)
}

/// The bytes of a tiny GGUF trained (nominally) for `context_length` tokens: long
/// generations for tests that need a sequence to stay busy for a while.
pub fn gguf_with_context_length(seed: u64, context_length: u32) -> Vec<u8> {
    build(seed, TEMPLATE, context_length)
}

fn build(seed: u64, template: &str, context_length: u32) -> Vec<u8> {
    let vocab = vocab();
    let n_vocab = vocab.len() as u64;
    let kv_dim = EMBD / u64::from(HEADS) * u64::from(KV_HEADS);
    let mut tensors: Vec<(String, Vec<u64>, bool)> = vec![
        ("token_embd.weight".into(), vec![EMBD, n_vocab], false),
        ("output_norm.weight".into(), vec![EMBD], true),
        ("output.weight".into(), vec![EMBD, n_vocab], false),
    ];
    for l in 0..LAYERS {
        let t = |n: &str| format!("blk.{l}.{n}.weight");
        tensors.push((t("attn_norm"), vec![EMBD], true));
        tensors.push((t("attn_q"), vec![EMBD, EMBD], false));
        tensors.push((t("attn_k"), vec![EMBD, kv_dim], false));
        tensors.push((t("attn_v"), vec![EMBD, kv_dim], false));
        tensors.push((t("attn_output"), vec![EMBD, EMBD], false));
        tensors.push((t("ffn_norm"), vec![EMBD], true));
        tensors.push((t("ffn_gate"), vec![EMBD, FF], false));
        tensors.push((t("ffn_up"), vec![EMBD, FF], false));
        tensors.push((t("ffn_down"), vec![FF, EMBD], false));
    }

    let mut w = Writer { out: Vec::new() };
    w.out.extend_from_slice(b"GGUF");
    w.u32(3);
    w.u64(tensors.len() as u64);
    w.u64(17);
    w.kv_str("general.architecture", "llama");
    w.kv_str("general.name", "veil-tiny");
    w.kv_u32("llama.context_length", context_length);
    w.kv_u32("llama.embedding_length", EMBD as u32);
    w.kv_u32("llama.block_count", LAYERS as u32);
    w.kv_u32("llama.feed_forward_length", FF as u32);
    w.kv_u32("llama.attention.head_count", HEADS);
    w.kv_u32("llama.attention.head_count_kv", KV_HEADS);
    w.kv_u32(
        "llama.rope.dimension_count",
        (EMBD / u64::from(HEADS)) as u32,
    );
    w.kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5);
    w.kv_str("tokenizer.ggml.model", "llama");
    // tokens, scores, token types
    w.string("tokenizer.ggml.tokens");
    w.u32(9);
    w.u32(8);
    w.u64(n_vocab);
    for (t, _, _) in &vocab {
        w.string(t);
    }
    w.string("tokenizer.ggml.scores");
    w.u32(9);
    w.u32(6);
    w.u64(n_vocab);
    for (_, s, _) in &vocab {
        w.out.extend_from_slice(&s.to_le_bytes());
    }
    w.string("tokenizer.ggml.token_type");
    w.u32(9);
    w.u32(5);
    w.u64(n_vocab);
    for (_, _, ty) in &vocab {
        w.out.extend_from_slice(&ty.to_le_bytes());
    }
    w.kv_u32("tokenizer.ggml.bos_token_id", 1);
    w.kv_u32("tokenizer.ggml.eos_token_id", 2);
    w.kv_str("tokenizer.chat_template", template);

    // Tensor infos, with offsets aligned to 32 bytes.
    let mut offset = 0u64;
    let mut offsets = Vec::new();
    for (name, dims, _) in &tensors {
        w.string(name);
        w.u32(dims.len() as u32);
        for d in dims {
            w.u64(*d);
        }
        w.u32(0); // F32
        w.u64(offset);
        offsets.push(offset);
        offset += (dims.iter().product::<u64>() * 4).div_ceil(32) * 32;
    }
    while !w.out.len().is_multiple_of(32) {
        w.out.push(0);
    }
    let base = w.out.len();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for ((_, dims, norm), off) in tensors.iter().zip(offsets) {
        w.out.resize(base + off as usize, 0);
        for _ in 0..dims.iter().product::<u64>() {
            let v = if *norm {
                1.0f32
            } else {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
            };
            w.out.extend_from_slice(&v.to_le_bytes());
        }
    }
    w.out
}
