//! The chat template: the Jinja template from the GGUF metadata
//! (`tokenizer.chat_template`), rendered with minijinja as llama.cpp's server renders it
//! (`--jinja`): `trim_blocks` and `lstrip_blocks` on, as Hugging Face's
//! `apply_chat_template` and llama.cpp's own Jinja engine have them, and a final assistant
//! message continued rather than closed (prefill). The unit tests compare the text with
//! prompts recorded from llama-server (`scripts/record-chat-templates.py`).

use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;

use crate::{ChatMessage, EngineError};

/// Used when a GGUF has no chat template: ChatML.
const CHATML: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

/// A compiled chat template.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    tool_calls: bool,
}

impl ChatTemplate {
    pub(crate) fn new(
        source: Option<String>,
        bos: String,
        eos: String,
    ) -> Result<Self, EngineError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_filter("tojson", tojson);
        let source = source.unwrap_or_else(|| CHATML.to_owned());
        let tool_calls = source.contains("tools") && source.contains("<tool_call>");
        env.add_template_owned("chat", source)
            .map_err(|e| EngineError::Template(e.to_string()))?;
        Ok(ChatTemplate {
            env,
            bos,
            eos,
            tool_calls,
        })
    }

    /// Whether the template renders `tools` and asks for `<tool_call>` answers.
    pub(crate) fn tool_calls(&self) -> bool {
        self.tool_calls
    }

    /// The prompt for `messages`, ending with the template's generation prompt; or, when
    /// the last message is the assistant's, the conversation before it with the
    /// generation prompt and that message's content, left open for the model to continue
    /// (as llama.cpp's server does; two assistant messages at the end are refused).
    pub(crate) fn render(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
    ) -> Result<String, EngineError> {
        match messages {
            [.., a, b] if a.role == "assistant" && b.role == "assistant" => {
                Err(EngineError::InvalidRequest(
                    "a conversation cannot end with two assistant messages".into(),
                ))
            }
            [rest @ .., last] if last.role == "assistant" && last.tool_calls.is_none() => {
                Ok(self.render_with_generation_prompt(rest, tools)? + &last.content)
            }
            _ => self.render_with_generation_prompt(messages, tools),
        }
    }

    fn render_with_generation_prompt(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
    ) -> Result<String, EngineError> {
        let messages: Vec<Message<'_>> = messages
            .iter()
            .map(|m| Message {
                role: &m.role,
                content: &m.content,
                tool_calls: m.tool_calls.as_ref(),
                tool_call_id: m.tool_call_id.as_deref(),
            })
            .collect();
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| EngineError::Template(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => true,
            tools => tools,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        })
        .map_err(|e| EngineError::Template(e.to_string()))
    }
}

/// `tojson` as Hugging Face's templates (and llama.cpp's engine) have it, Python's
/// `json.dumps`: keys in their order, `", "` and `": "` between items (with `indent`,
/// one item a line), non-ASCII text as it is and no HTML escaping (minijinja's own
/// `tojson` is compact, and escapes `<`, `>` and `&`: a tool's description would render
/// differently).
fn tojson(
    value: minijinja::Value,
    kwargs: minijinja::value::Kwargs,
) -> Result<minijinja::Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    write_json(&json, indent, 0, &mut out);
    Ok(minijinja::Value::from_safe_string(out))
}

fn write_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value;
    let (open, close, items): (char, char, Vec<(Option<&str>, &Value)>) = match v {
        Value::Array(a) => ('[', ']', a.iter().map(|v| (None, v)).collect()),
        Value::Object(m) => (
            '{',
            '}',
            m.iter().map(|(k, v)| (Some(k.as_str()), v)).collect(),
        ),
        scalar => {
            out.push_str(&scalar.to_string());
            return;
        }
    };
    out.push(open);
    if !items.is_empty() {
        for (i, (key, item)) in items.iter().enumerate() {
            match (indent, i) {
                (None, 0) => {}
                (None, _) => out.push_str(", "),
                (Some(n), _) => {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push('\n');
                    out.push_str(&" ".repeat(n * (depth + 1)));
                }
            }
            if let Some(k) = key {
                out.push_str(&Value::from(*k).to_string());
                out.push_str(": ");
            }
            write_json(item, indent, depth + 1, out);
        }
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    }
    out.push(close);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_chatml_with_a_generation_prompt() {
        let t = ChatTemplate::new(None, String::new(), String::new()).expect("compiles");
        let out = t.render(&[ChatMessage::user("Hi")], None).expect("renders");
        assert_eq!(
            out,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn renders_smollm2_template_with_its_default_system_prompt() {
        // tokenizer.chat_template of SmolLM2-135M-Instruct, as in its GGUF.
        let src = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let t = ChatTemplate::new(Some(src.to_owned()), String::new(), "<|im_end|>".into())
            .expect("compiles");
        let out = t.render(&[ChatMessage::user("Hi")], None).expect("renders");
        assert_eq!(out, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
        let out = t
            .render(&[ChatMessage::system("S"), ChatMessage::user("Hi")], None)
            .expect("renders");
        assert_eq!(out, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn bos_token_and_tojson_are_available() {
        let src = "{{ bos_token }}{{ messages[0].content | tojson }}{{ eos_token }}";
        let t =
            ChatTemplate::new(Some(src.to_owned()), "<s>".into(), "</s>".into()).expect("compiles");
        assert_eq!(
            t.render(&[ChatMessage::user("a\"b")], None)
                .expect("renders"),
            "<s>\"a\\\"b\"</s>"
        );
    }

    /// Prompts that llama.cpp's server (`--jinja`, its own Jinja engine) rendered for the
    /// default model's template and two more families (a header style with whitespace
    /// control and a namespace; a block style that relies on trim_blocks and
    /// lstrip_blocks), recorded by `scripts/record-chat-templates.py`.
    #[test]
    fn renders_exactly_what_llama_server_renders() {
        #[derive(serde::Deserialize)]
        struct Fixtures {
            templates: Vec<Fixture>,
        }
        #[derive(serde::Deserialize)]
        struct Fixture {
            name: String,
            template: String,
            bos_token: String,
            eos_token: String,
            cases: Vec<Case>,
        }
        #[derive(serde::Deserialize)]
        struct Case {
            /// As a client sends them (an assistant's `content` may be null).
            messages: Vec<serde_json::Value>,
            #[serde(default)]
            tools: Option<serde_json::Value>,
            prompt: Option<String>,
        }
        let fixtures: Fixtures =
            serde_json::from_str(include_str!("../tests/fixtures/chat-templates.json"))
                .expect("fixtures parse");
        assert_eq!(fixtures.templates.len(), 4);
        for f in fixtures.templates {
            let t = ChatTemplate::new(Some(f.template), f.bos_token, f.eos_token)
                .unwrap_or_else(|e| panic!("{}: {e}", f.name));
            for case in f.cases {
                let messages: Vec<ChatMessage> = case
                    .messages
                    .iter()
                    .map(|m| ChatMessage {
                        role: m["role"].as_str().unwrap_or_default().to_owned(),
                        content: m["content"].as_str().unwrap_or_default().to_owned(),
                        tool_calls: m.get("tool_calls").cloned(),
                        tool_call_id: m["tool_call_id"].as_str().map(str::to_owned),
                    })
                    .collect();
                let got = t.render(&messages, case.tools.as_ref());
                match case.prompt {
                    Some(want) => {
                        assert_eq!(got.as_deref().ok(), Some(want.as_str()), "{}", f.name)
                    }
                    None => assert!(got.is_err(), "{}: {got:?}", f.name),
                }
            }
        }
    }

    #[test]
    fn a_conversation_ending_with_two_assistant_messages_is_refused() {
        let t = ChatTemplate::new(None, String::new(), String::new()).expect("compiles");
        let err = t
            .render(
                &[
                    ChatMessage::user("a"),
                    ChatMessage::assistant("b"),
                    ChatMessage::assistant("c"),
                ],
                None,
            )
            .expect_err("refused");
        assert!(matches!(err, EngineError::InvalidRequest(_)), "{err}");
    }

    #[test]
    fn tojson_writes_what_pythons_json_dumps_writes() {
        let src =
            "{{ messages[0].tool_calls | tojson }}|{{ messages[0].tool_calls | tojson(indent=2) }}";
        let t = ChatTemplate::new(Some(src.to_owned()), String::new(), String::new())
            .expect("compiles");
        let value: serde_json::Value =
            serde_json::from_str(r#"{"b": 1, "a": [1, 2.5, "<x&y>", "é"], "e": [], "o": {}}"#)
                .expect("json");
        let message = ChatMessage {
            tool_calls: Some(value),
            ..ChatMessage::user("")
        };
        // json.dumps(v) and json.dumps(v, indent=2), ensure_ascii=False.
        assert_eq!(
            t.render(&[message], None).expect("renders"),
            "{\"b\": 1, \"a\": [1, 2.5, \"<x&y>\", \"é\"], \"e\": [], \"o\": {}}|{\n  \"b\": 1,\n  \"a\": [\n    1,\n    2.5,\n    \"<x&y>\",\n    \"é\"\n  ],\n  \"e\": [],\n  \"o\": {}\n}"
        );
    }

    #[test]
    fn a_template_that_does_not_compile_is_refused() {
        let err = ChatTemplate::new(Some("{% for %}".into()), String::new(), String::new())
            .err()
            .expect("refused");
        assert!(matches!(err, EngineError::Template(_)), "{err}");
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let src = "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ messages[0].content.strip() }}";
        let t = ChatTemplate::new(Some(src.to_owned()), String::new(), String::new())
            .expect("compiles");
        assert_eq!(
            t.render(&[ChatMessage::user("  x  ")], None)
                .expect("renders"),
            "x"
        );
        let err = t
            .render(&[ChatMessage::system("s")], None)
            .expect_err("raises");
        assert!(err.to_string().contains("first must be user"), "{err}");
    }

    #[test]
    fn tools_and_tool_messages_reach_a_template_that_renders_them() {
        let t = ChatTemplate::new(
            Some(crate::tiny::TOOLS_TEMPLATE.to_owned()),
            String::new(),
            String::new(),
        )
        .expect("compiles");
        assert!(t.tool_calls());
        assert!(!ChatTemplate::new(None, String::new(), String::new())
            .expect("compiles")
            .tool_calls());
        let tools = serde_json::json!([{ "type": "function", "function": { "name": "get_weather", "parameters": { "type": "object" } } }]);
        let call = serde_json::json!([{ "id": "call_1", "type": "function", "function": { "name": "get_weather", "arguments": "{\"city\":\"Paris\"}" } }]);
        let messages = [
            ChatMessage::user("Weather in Paris?"),
            ChatMessage {
                tool_calls: Some(call),
                ..ChatMessage::assistant("")
            },
            ChatMessage {
                tool_call_id: Some("call_1".into()),
                ..ChatMessage::new("tool", "sunny")
            },
        ];
        let out = t.render(&messages, Some(&tools)).expect("renders");
        assert!(out.contains(r#""name": "get_weather""#), "{out}");
        assert!(
            out.contains(
                r#"<tool_call>{"name": "get_weather", "arguments": {"city":"Paris"}}</tool_call>"#
            ),
            "{out}"
        );
        assert!(
            out.contains("<tool_response>sunny</tool_response>"),
            "{out}"
        );
        assert!(out.ends_with("<|im_start|>assistant\n"), "{out}");
        let without = t.render(&messages[..1], None).expect("renders");
        assert!(!without.contains("<tools>"), "{without}");
    }
}
