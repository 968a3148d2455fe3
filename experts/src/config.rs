//! `config.json` of a Qwen2 / Llama-layout checkpoint, as Hugging Face writes it.
//!
//! Two things that trip loaders: recent `transformers` writes `rope_parameters.rope_theta`
//! instead of a top-level `rope_theta` (we read both, and fail rather than silently fall
//! back to 10,000 when neither is there for a Llama model), and Qwen2 puts biases on the
//! q/k/v projections while Llama does not (`attention_bias`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ExpertError, Result};

/// The decoder families this crate runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    Qwen2,
    Llama,
}

impl Architecture {
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Llama => "LlamaForCausalLM",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
}

/// The fields of `config.json` the decoder needs. Unknown fields are ignored (HF configs
/// carry many that do not affect inference).
#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: usize,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
    torch_dtype: Option<String>,
}

/// A validated model configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    /// Bias on the q/k/v projections (Qwen2: yes; Llama: `attention_bias`, usually no).
    pub qkv_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

fn token_ids(v: &Option<serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| x as u32).into_iter().collect(),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect(),
        _ => Vec::new(),
    }
}

impl ModelConfig {
    /// Parses and validates `config.json` text; `path` is used in messages.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text)
            .map_err(|e| ExpertError::model(path, format!("bad config.json: {e}")))?;
        let arch_name = raw
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .or_else(|| raw.model_type.clone())
            .unwrap_or_default();
        let architecture = match arch_name.as_str() {
            "Qwen2ForCausalLM" | "qwen2" => Architecture::Qwen2,
            "LlamaForCausalLM" | "llama" => Architecture::Llama,
            other => {
                return Err(ExpertError::UnsupportedArchitecture {
                    path: path.to_path_buf(),
                    arch: other.to_string(),
                });
            }
        };
        let rope_theta = raw
            .rope_theta
            .or_else(|| raw.rope_parameters.as_ref().and_then(|r| r.rope_theta))
            .ok_or_else(|| {
                ExpertError::model(
                    path,
                    "config.json has neither rope_theta nor rope_parameters.rope_theta",
                )
            })?;
        let heads = raw.num_attention_heads;
        let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        let bad = |m: String| Err(ExpertError::model(path, m));
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return bad(format!(
                "num_attention_heads ({heads}) must be a positive multiple of num_key_value_heads ({kv_heads})"
            ));
        }
        let head_dim = raw.head_dim.unwrap_or(raw.hidden_size / heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return bad(format!(
                "head dimension {head_dim} must be even and positive"
            ));
        }
        if raw.vocab_size == 0 || raw.num_hidden_layers == 0 || raw.intermediate_size == 0 {
            return bad(
                "vocab_size, num_hidden_layers and intermediate_size must be positive".into(),
            );
        }
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return bad(format!("rope_theta {rope_theta} must be positive"));
        }
        let _ = raw.torch_dtype;
        Ok(Self {
            architecture,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            max_position_embeddings: raw.max_position_embeddings,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias: match architecture {
                Architecture::Qwen2 => true,
                Architecture::Llama => raw.attention_bias.unwrap_or(false),
            },
            bos_token_id: token_ids(&raw.bos_token_id).first().copied(),
            eos_token_ids: token_ids(&raw.eos_token_id),
        })
    }

    /// The `config.json` Hugging Face `transformers` reads for this model.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "architectures": [self.architecture.hf_name()],
            "model_type": match self.architecture { Architecture::Qwen2 => "qwen2", Architecture::Llama => "llama" },
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
            "use_cache": true,
            "attention_dropout": 0.0,
            "use_sliding_window": false,
            "sliding_window": self.max_position_embeddings,
            "max_window_layers": self.num_hidden_layers,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids.first(),
        });
        if self.architecture == Architecture::Llama {
            v["attention_bias"] = self.qkv_bias.into();
            v["mlp_bias"] = false.into();
        }
        v
    }

    /// Bytes of KV cache per token (all layers, keys and values) at `dtype_bytes` per value.
    pub fn kv_bytes_per_token(&self, dtype_bytes: usize) -> usize {
        2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * dtype_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN: &str = r#"{"architectures":["Qwen2ForCausalLM"],"vocab_size":100,"hidden_size":32,
        "intermediate_size":64,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
        "max_position_embeddings":128,"rms_norm_eps":1e-6,"rope_theta":10000.0,"tie_word_embeddings":true,
        "eos_token_id":[1,2]}"#;

    #[test]
    fn parses_qwen2_with_bias_and_eos_list() {
        let c = ModelConfig::from_json(QWEN, Path::new("m")).unwrap();
        assert_eq!(c.architecture, Architecture::Qwen2);
        assert!(c.qkv_bias);
        assert_eq!(c.head_dim, 8);
        assert_eq!(c.eos_token_ids, vec![1, 2]);
    }

    #[test]
    fn reads_nested_rope_theta() {
        let text = QWEN.replace(
            r#""rope_theta":10000.0"#,
            r#""rope_parameters":{"rope_theta":100000.0,"rope_type":"default"}"#,
        );
        let c = ModelConfig::from_json(&text, Path::new("m")).unwrap();
        assert_eq!(c.rope_theta, 100000.0);
        let text = QWEN.replace(r#""rope_theta":10000.0,"#, "");
        assert!(ModelConfig::from_json(&text, Path::new("m")).is_err());
    }

    #[test]
    fn rejects_unknown_architecture_and_bad_shapes() {
        let e = ModelConfig::from_json(
            &QWEN.replace("Qwen2ForCausalLM", "GPT2LMHeadModel"),
            Path::new("m"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("GPT2LMHeadModel"), "{e}");
        let e = ModelConfig::from_json(
            &QWEN.replace(r#""num_key_value_heads":2"#, r#""num_key_value_heads":3"#),
            Path::new("m"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("num_key_value_heads"), "{e}");
        assert!(ModelConfig::from_json("{", Path::new("m")).is_err());
    }
}
