//! Loading a Hugging Face model directory from local disk: `config.json`,
//! `model.safetensors` (or shards listed in `model.safetensors.index.json`),
//! `tokenizer.json`, and when present `generation_config.json` and the chat template of
//! `tokenizer_config.json`. Nothing is fetched from the network.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::chat::ChatTemplate;
use crate::config::ModelConfig;
use crate::error::{ExpertError, Result};
use crate::model::{Decoder, WeightFormat};
use crate::tokenizer::TextTokenizer;

/// Sampling defaults a checkpoint ships in `generation_config.json`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct GenerationDefaults {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f32>,
    pub max_new_tokens: Option<usize>,
    #[serde(default)]
    eos_token_id: Option<serde_json::Value>,
}

/// A loaded model: weights, tokenizer, chat template, defaults.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    pub name: String,
    pub dir: PathBuf,
    pub decoder: Decoder,
    pub tokenizer: TextTokenizer,
    pub chat_template: Option<ChatTemplate>,
    pub generation: GenerationDefaults,
    /// Token ids that end generation (config, generation config and tokenizer's EOS).
    pub eos_token_ids: Vec<u32>,
}

impl LoadedModel {
    /// The token ids of `prompt` as one user turn through the chat template, the assistant
    /// turn opened (the plain text when the model has no template): what an answer follows.
    pub fn user_prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        let text = match &self.chat_template {
            Some(t) => t.render(&[crate::chat::ChatMessage::user(prompt)], true)?,
            None => prompt.to_string(),
        };
        self.tokenizer.encode(&text)
    }

    /// The token ids of `answer` as a whole assistant turn: its text, then the end of turn.
    pub fn answer_ids(&self, answer: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(answer)?;
        ids.extend(self.eos_token_ids.first().copied());
        Ok(ids)
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ExpertError::model(
            path.parent().unwrap_or(path),
            format!(
                "{} is missing",
                path.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            ),
        ),
        _ => ExpertError::io(path, e),
    })
}

/// The safetensors files of a model directory, single or sharded.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return Err(ExpertError::model(
            dir,
            "neither model.safetensors nor model.safetensors.index.json is present",
        ));
    }
    #[derive(Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let idx: Index = serde_json::from_slice(&read(&index)?)
        .map_err(|e| ExpertError::model(&index, format!("bad index: {e}")))?;
    let files: BTreeSet<&String> = idx.weight_map.values().collect();
    files
        .into_iter()
        .map(|f| {
            let p = dir.join(f);
            if p.exists() {
                Ok(p)
            } else {
                Err(ExpertError::model(
                    dir,
                    format!("shard {f} listed in the index is missing"),
                ))
            }
        })
        .collect()
}

/// The model directory holding the weights of `dir`: `dir` itself, or for a LoRA adapter
/// directory ([`crate::lora`]) its base model.
pub fn weights_dir(dir: &Path) -> Result<PathBuf> {
    if crate::lora::is_adapter_dir(dir) {
        crate::lora::base_dir(dir)
    } else {
        Ok(dir.to_path_buf())
    }
}

/// Reads and validates `config.json` (the base model's, for an adapter directory).
pub fn load_config(dir: &Path) -> Result<ModelConfig> {
    let dir = &weights_dir(dir)?;
    let path = dir.join("config.json");
    let text = String::from_utf8(read(&path)?)
        .map_err(|_| ExpertError::model(&path, "config.json is not UTF-8"))?;
    ModelConfig::from_json(&text, dir)
}

/// Builds a var builder over the weight files, checking that each is a valid safetensors file
/// (candle memory-maps them; a truncated file must fail here, not crash later).
fn var_builder(dir: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    let files = weight_files(dir)?;
    let mut tensors = std::collections::HashMap::new();
    for f in &files {
        let loaded = candle_core::safetensors::load(f, device)
            .map_err(|e| ExpertError::model(f, format!("corrupt safetensors: {e}")))?;
        tensors.extend(loaded);
    }
    Ok(VarBuilder::from_tensors(tensors, dtype, device))
}

/// Loads the decoder alone; for an adapter directory, the base with the adapter merged.
pub fn load_decoder(dir: &Path, dtype: DType, device: &Device) -> Result<Decoder> {
    let base = weights_dir(dir)?;
    let config = load_config(&base)?;
    let vb = var_builder(&base, dtype, device)?;
    let mut decoder = Decoder::new(&config, vb).map_err(|e| match e {
        ExpertError::Candle(e) => {
            ExpertError::model(&base, format!("weights do not fit config.json: {e}"))
        }
        other => other,
    })?;
    if base != dir {
        crate::lora::merge(&mut decoder, dir)?;
    }
    Ok(decoder)
}

/// Loads a whole model directory.
pub fn load_model(dir: &Path, dtype: DType, device: &Device) -> Result<LoadedModel> {
    load_model_as(dir, dtype, device, WeightFormat::Dense)
}

/// Loads a whole model directory and requantizes its projections to `weights`
/// (see [`Decoder::quantize`]).
pub fn load_model_as(
    dir: &Path,
    dtype: DType,
    device: &Device,
    weights: WeightFormat,
) -> Result<LoadedModel> {
    let config = load_config(dir)?;
    let mut decoder = load_decoder(dir, dtype, device)?;
    decoder.quantize(weights)?;
    // An adapter directory takes its tokenizer, template and defaults from its base.
    let files = weights_dir(dir)?;
    let files = files.as_path();
    let tokenizer = TextTokenizer::from_file(&files.join("tokenizer.json"))?;
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(ExpertError::model(
            dir,
            format!(
                "tokenizer has {} tokens but the model's vocab_size is {}",
                tokenizer.vocab_size(),
                config.vocab_size
            ),
        ));
    }
    let gen_path = files.join("generation_config.json");
    let generation: GenerationDefaults = if gen_path.exists() {
        serde_json::from_slice(&read(&gen_path)?).map_err(|e| {
            ExpertError::model(&gen_path, format!("bad generation_config.json: {e}"))
        })?
    } else {
        GenerationDefaults::default()
    };
    let chat_template = ChatTemplate::from_tokenizer_config(files)?;
    let mut eos: Vec<u32> = config.eos_token_ids.clone();
    match &generation.eos_token_id {
        Some(serde_json::Value::Number(n)) => eos.extend(n.as_u64().map(|x| x as u32)),
        Some(serde_json::Value::Array(a)) => {
            eos.extend(a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)))
        }
        _ => {}
    }
    if let Some(t) = chat_template.as_ref().and_then(|c| c.eos_token.as_deref()) {
        eos.extend(tokenizer.token_id(t));
    }
    eos.sort_unstable();
    eos.dedup();
    let name = dir
        .file_name()
        .map_or_else(|| "model".to_string(), |n| n.to_string_lossy().into_owned());
    Ok(LoadedModel {
        name,
        dir: dir.to_path_buf(),
        decoder,
        tokenizer,
        chat_template,
        generation,
        eos_token_ids: eos,
    })
}
