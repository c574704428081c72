//! The chat template: the Jinja template from the GGUF metadata
//! (`tokenizer.chat_template`), rendered with minijinja.

use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;

use crate::{ChatMessage, EngineError};

/// Used when a GGUF has no chat template: ChatML.
const CHATML: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

/// A compiled chat template.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    pub(crate) fn new(
        source: Option<String>,
        bos: String,
        eos: String,
    ) -> Result<Self, EngineError> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.unwrap_or_else(|| CHATML.to_owned()))
            .map_err(|e| EngineError::Template(e.to_string()))?;
        Ok(ChatTemplate { env, bos, eos })
    }

    pub(crate) fn render(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        let messages: Vec<Message<'_>> = messages
            .iter()
            .map(|m| Message {
                role: &m.role,
                content: &m.content,
            })
            .collect();
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| EngineError::Template(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        })
        .map_err(|e| EngineError::Template(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_chatml_with_a_generation_prompt() {
        let t = ChatTemplate::new(None, String::new(), String::new()).expect("compiles");
        let out = t.render(&[ChatMessage::user("Hi")]).expect("renders");
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
        let out = t.render(&[ChatMessage::user("Hi")]).expect("renders");
        assert_eq!(out, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
        let out = t
            .render(&[ChatMessage::system("S"), ChatMessage::user("Hi")])
            .expect("renders");
        assert_eq!(out, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn bos_token_and_tojson_are_available() {
        let src = "{{ bos_token }}{{ messages[0].content | tojson }}{{ eos_token }}";
        let t =
            ChatTemplate::new(Some(src.to_owned()), "<s>".into(), "</s>".into()).expect("compiles");
        assert_eq!(
            t.render(&[ChatMessage::user("a\"b")]).expect("renders"),
            "<s>\"a\\\"b\"</s>"
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
            t.render(&[ChatMessage::user("  x  ")]).expect("renders"),
            "x"
        );
        let err = t
            .render(&[ChatMessage {
                role: "system".into(),
                content: "s".into(),
            }])
            .expect_err("raises");
        assert!(err.to_string().contains("first must be user"), "{err}");
    }
}
