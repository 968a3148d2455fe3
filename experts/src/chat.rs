//! Chat templates: the Jinja template of `tokenizer_config.json`, rendered with minijinja
//! (with its Python-compatibility methods, which HF templates use).

use std::path::Path;

use minijinja::{Environment, context};
use serde::{Deserialize, Serialize};

use crate::error::{ExpertError, Result};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// A model's chat template.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

fn token_string(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

impl ChatTemplate {
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            bos_token: None,
            eos_token: None,
        }
    }

    /// Reads `chat_template` (and the bos/eos tokens) from `tokenizer_config.json`, if the
    /// file and the key exist.
    pub fn from_tokenizer_config(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join("tokenizer_config.json");
        if !path.exists() {
            return Ok(None);
        }
        let bytes = std::fs::read(&path).map_err(|e| ExpertError::io(&path, e))?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ExpertError::model(&path, format!("bad tokenizer_config.json: {e}")))?;
        let Some(source) = v.get("chat_template").and_then(|t| t.as_str()) else {
            return Ok(None);
        };
        let t = Self {
            source: source.to_string(),
            bos_token: token_string(v.get("bos_token")),
            eos_token: token_string(v.get("eos_token")),
        };
        // Fail at load, not at the first request.
        t.render(&[ChatMessage::user("check")], true)?;
        Ok(Some(t))
    }

    /// Renders messages into the prompt text.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_template("chat", &self.source)
            .map_err(|e| ExpertError::Template(e.to_string()))?;
        let tmpl = env
            .get_template("chat")
            .map_err(|e| ExpertError::Template(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        })
        .map_err(|e| ExpertError::Template(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_chatml_template() {
        let t = ChatTemplate::new(
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        );
        let s = t.render(&[ChatMessage::user(" hi ")], true).unwrap();
        assert_eq!(s, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn python_methods_work() {
        let t = ChatTemplate::new("{{ messages[0].content.strip().upper() }}");
        assert_eq!(t.render(&[ChatMessage::user(" a ")], false).unwrap(), "A");
    }

    #[test]
    fn broken_templates_are_errors() {
        let t = ChatTemplate::new("{% for m in messages %}");
        assert!(t.render(&[ChatMessage::user("x")], true).is_err());
    }
}
