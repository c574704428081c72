//! `POST /v1/chat/completions` bodies as a stranger sends them: parsing and checking never
//! panic, and a request that passes is within every documented bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_openai::{content_cap, ChatRequest, MAX_REPETITION_PENALTY, MAX_STOP, MAX_TOP_K};

fuzz_target!(|data: &[u8]| {
    let Ok(request) = ChatRequest::from_json(data) else {
        return;
    };
    for context in [1u32, 256, 8192] {
        let Ok(chat) = request.clone().check("tiny", context) else {
            continue;
        };
        assert!(!chat.messages.is_empty() && chat.messages.len() <= context as usize);
        let content: usize = chat.messages.iter().map(|m| m.content.len()).sum();
        assert!(content <= content_cap(context));
        assert!(chat
            .messages
            .iter()
            .all(|m| matches!(m.role.as_str(), "system" | "user" | "assistant")));
        let s = &chat.sampling;
        assert!(s.temperature.is_none_or(|t| (0.0..=2.0).contains(&t)));
        assert!(s.top_p.is_none_or(|p| p > 0.0 && p <= 1.0));
        assert!(s.top_k.is_none_or(|k| k <= MAX_TOP_K));
        assert!(s.repetition_penalty.is_none_or(|r| r > 0.0 && r <= MAX_REPETITION_PENALTY));
        assert!(s.max_tokens.is_none_or(|m| m >= 1));
        assert!(s.stop.len() <= MAX_STOP);
    }
});
